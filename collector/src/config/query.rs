//! The `[query]` table of the collector's config and the `--query-*`
//! flags of `serve` (the flags win): what one PromQL query on the HTTP
//! listener may use ([`crate::promql::Limits`]).
//!
//! ```toml
//! [query]
//! max_concurrent = 4            # queries evaluated at once; more wait for a slot
//! max_samples = 50000000        # samples one query may hold
//! max_points_per_series = 11000 # steps of a range query
//! timeout = "2m"
//! lookback_delta = "5m"         # how far back an instant selector looks
//! ```
//!
//! Every count is a whole number from 1 up; every duration longer than
//! zero. A bad value is a config error naming the key (or the flag).

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tributary_config::{ConfigError, Source};

use crate::promql::Limits;

/// Longest `timeout` and `lookback_delta` accepted (a year), so that no
/// deadline or window arithmetic can overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// `[query]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuery {
    max_concurrent: Option<Spanned<u64>>,
    max_samples: Option<Spanned<u64>>,
    max_points_per_series: Option<Spanned<u64>>,
    timeout: Option<Spanned<String>>,
    lookback_delta: Option<Spanned<String>>,
}

/// The `--query-*` flags of `serve`; `None` leaves the file's value (or
/// the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryFlags {
    pub max_concurrent: Option<u64>,
    pub max_samples: Option<u64>,
    pub max_points_per_series: Option<u64>,
    pub timeout: Option<Duration>,
    pub lookback_delta: Option<Duration>,
}

/// The limits from the defaults, then `raw` (from `src`), then `flags`.
pub(super) fn resolve(
    src: Option<&Source<'_>>,
    raw: Option<&RawQuery>,
    flags: &QueryFlags,
) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    let empty = RawQuery::default();
    let raw = raw.unwrap_or(&empty);
    // Where a value came from, for its error.
    let fail =
        |span: Option<Range<usize>>, key: &str, flag: &str, message: String| match (src, span) {
            (Some(src), Some(span)) => src.error(span, format!("query.{key}"), message),
            _ => ConfigError::flag(flag, message),
        };
    let count = |file: &Option<Spanned<u64>>,
                 flag_value: Option<u64>,
                 key: &str,
                 flag: &str,
                 max: u64|
     -> Result<Option<u64>, ConfigError> {
        let (n, span) = match (flag_value, file) {
            (Some(n), _) => (n, None),
            (None, Some(v)) => (*v.get_ref(), Some(v.span())),
            (None, None) => return Ok(None),
        };
        if n == 0 || n > max {
            return Err(fail(
                span,
                key,
                flag,
                format!("{n}: expected a whole number from 1 to {max}"),
            ));
        }
        Ok(Some(n))
    };
    let duration = |file: &Option<Spanned<String>>,
                    flag_value: Option<Duration>,
                    key: &str,
                    flag: &str|
     -> Result<Option<Duration>, ConfigError> {
        let (d, span) = match (flag_value, file, src) {
            (Some(d), _, _) => (d, None),
            (None, Some(v), Some(src)) => {
                (src.duration(v, &format!("query.{key}"))?, Some(v.span()))
            }
            _ => return Ok(None),
        };
        if d.is_zero() || d > MAX_DURATION {
            return Err(fail(
                span,
                key,
                flag,
                format!("{d:?}: expected a duration longer than zero and at most 366d"),
            ));
        }
        Ok(Some(d))
    };
    if let Some(n) = count(
        &raw.max_concurrent,
        flags.max_concurrent,
        "max_concurrent",
        "--query-max-concurrent",
        // Tokio's semaphore holds at most this many permits.
        1 << 20,
    )? {
        limits.max_concurrent = n as usize;
    }
    if let Some(n) = count(
        &raw.max_samples,
        flags.max_samples,
        "max_samples",
        "--query-max-samples",
        i64::MAX as u64,
    )? {
        limits.max_samples = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = count(
        &raw.max_points_per_series,
        flags.max_points_per_series,
        "max_points_per_series",
        "--query-max-points-per-series",
        i64::MAX as u64,
    )? {
        limits.max_points = n as i64;
    }
    if let Some(d) = duration(&raw.timeout, flags.timeout, "timeout", "--query-timeout")? {
        limits.timeout = d;
    }
    if let Some(d) = duration(
        &raw.lookback_delta,
        flags.lookback_delta,
        "lookback_delta",
        "--query-lookback-delta",
    )? {
        limits.lookback = d;
    }
    Ok(limits)
}
