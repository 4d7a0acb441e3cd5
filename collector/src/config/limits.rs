//! The `[limits]` table of the collector's config: each key checked (a
//! positive count that fits, a non-zero duration) and applied over the
//! defaults of [`ServerConfig`].

use std::time::Duration;

use toml::Spanned;
use tributary_config::{ConfigError, Source};

use super::RawLimits;
use crate::server::ServerConfig;

/// Applies the `[limits]` table over the defaults in `server`.
pub(super) fn apply(
    src: &Source<'_>,
    l: &RawLimits,
    server: &mut ServerConfig,
) -> Result<(), ConfigError> {
    // A positive count that fits `T`.
    fn count<T: TryFrom<u64>>(
        src: &Source<'_>,
        v: &Option<Spanned<u64>>,
        key: &str,
        target: &mut T,
    ) -> Result<(), ConfigError> {
        if let Some(v) = v {
            let n = *v.get_ref();
            let fits = T::try_from(n).ok().filter(|_| n > 0);
            *target = fits.ok_or_else(|| {
                src.error(
                    v.span(),
                    format!("limits.{key}"),
                    format!("{n}: expected a whole number from 1 to {}", max_of::<T>()),
                )
            })?;
        }
        Ok(())
    }
    fn duration(
        src: &Source<'_>,
        v: &Option<Spanned<String>>,
        key: &str,
        target: &mut Duration,
    ) -> Result<(), ConfigError> {
        if let Some(v) = v {
            let d = src.duration(v, &format!("limits.{key}"))?;
            if d.is_zero() {
                return Err(src.error(
                    v.span(),
                    format!("limits.{key}"),
                    "must be longer than zero",
                ));
            }
            *target = d;
        }
        Ok(())
    }
    count(
        src,
        &l.max_connections,
        "max_connections",
        &mut server.max_connections,
    )?;
    if l.max_connections_per_address.is_some() {
        let mut n = 0usize;
        count(
            src,
            &l.max_connections_per_address,
            "max_connections_per_address",
            &mut n,
        )?;
        server.max_connections_per_address = Some(n);
    }
    duration(
        src,
        &l.preface_timeout,
        "preface_timeout",
        &mut server.preface_timeout,
    )?;
    duration(
        src,
        &l.idle_timeout,
        "idle_timeout",
        &mut server.idle_timeout,
    )?;
    count(
        src,
        &l.max_concurrent_streams,
        "max_concurrent_streams",
        &mut server.max_concurrent_streams,
    )?;
    count(
        src,
        &l.max_message_bytes,
        "max_message_bytes",
        &mut server.max_message_bytes,
    )?;
    count(
        src,
        &l.max_header_list_bytes,
        "max_header_list_bytes",
        &mut server.max_header_list_bytes,
    )?;
    count(
        src,
        &l.max_local_error_resets,
        "max_local_error_resets",
        &mut server.max_local_error_resets,
    )?;
    duration(
        src,
        &l.handshake_timeout,
        "handshake_timeout",
        &mut server.handshake_timeout,
    )?;
    duration(
        src,
        &l.keepalive_interval,
        "keepalive_interval",
        &mut server.keepalive_interval,
    )?;
    duration(
        src,
        &l.keepalive_timeout,
        "keepalive_timeout",
        &mut server.keepalive_timeout,
    )?;
    // A live peer answers the server's pings: something is read from it at
    // least once per keepalive_interval + keepalive_timeout.
    let pinged = server.keepalive_interval + server.keepalive_timeout;
    if server.idle_timeout <= pinged {
        let keys = [
            ("idle_timeout", &l.idle_timeout),
            ("keepalive_interval", &l.keepalive_interval),
            ("keepalive_timeout", &l.keepalive_timeout),
        ];
        if let Some((key, Some(v))) = keys.into_iter().find(|(_, v)| v.is_some()) {
            return Err(src.error(
                v.span(),
                format!("limits.{key}"),
                format!(
                    "idle_timeout ({}) must be longer than keepalive_interval + keepalive_timeout \
                     ({}), or healthy connections that only answer pings are closed",
                    humantime::format_duration(server.idle_timeout),
                    humantime::format_duration(pinged)
                ),
            ));
        }
    }
    let limits = &mut server.limits;
    duration(
        src,
        &l.hello_timeout,
        "hello_timeout",
        &mut limits.hello_timeout,
    )?;
    duration(
        src,
        &l.max_clock_skew,
        "max_clock_skew",
        &mut limits.max_clock_skew,
    )?;
    count(
        src,
        &l.max_series_per_stream,
        "max_series_per_stream",
        &mut limits.max_series_per_stream,
    )?;
    count(
        src,
        &l.max_series_per_agent,
        "max_series_per_agent",
        &mut limits.max_series_per_agent,
    )?;
    count(
        src,
        &l.max_series_in_memory,
        "max_series_in_memory",
        &mut limits.max_series_in_memory,
    )?;
    count(src, &l.max_labels, "max_labels", &mut limits.max_labels)?;
    count(
        src,
        &l.max_name_len,
        "max_name_len",
        &mut limits.max_name_len,
    )?;
    count(
        src,
        &l.max_value_len,
        "max_value_len",
        &mut limits.max_value_len,
    )?;
    count(
        src,
        &l.max_readings_per_batch,
        "max_readings_per_batch",
        &mut limits.max_readings_per_batch,
    )?;
    Ok(())
}

/// The largest value of an unsigned `T` that fits in a u64, for messages.
pub(super) fn max_of<T: TryFrom<u64>>() -> u64 {
    // Binary search for the largest n with T::try_from(n) ok.
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if T::try_from(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}
