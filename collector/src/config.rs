//! `tributary-collector serve` settings: the optional TOML file given with
//! `--config`, the command-line flags (which win over the file), and the
//! checks that turn both into a [`ServerConfig`] before anything runs.
//!
//! The file mirrors the flags and adds what only a file holds:
//!
//! ```toml
//! listen = "0.0.0.0:7400"
//! store = "sqlite:/var/lib/tributary/tributary.db"
//! synchronous = "full"
//! allowed_agents = ["edge-1", "edge-2"]   # optional allowlist
//!
//! [tls]
//! cert = "collector.pem"
//! key = "collector.key"
//! client_ca = "ca.pem"                    # turns mutual TLS on
//!
//! [limits]
//! max_connections = 4096                 # default: 16384 (or the open-file limit - 64)
//! ```
//!
//! Relative paths are relative to the file's directory. Every error names
//! the file, the line and the key (`collector.toml:7: tls.cert: ...`); `main`
//! exits with status 2 on any of them. Plaintext is served only on loopback
//! addresses unless `allow_plaintext = true` (or `--allow-plaintext`).
//!
//! Reading TOML, locating errors and parsing durations is
//! `tributary-config`'s; this module says what the keys mean.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;
use tributary_config::{DeContext, Layer, Source, deserialize_table, parse_duration};

pub use tributary_config::ConfigError;

use crate::server::ServerConfig;
use crate::store::Durability;
use crate::store::{Retention, StoreUrl};
use crate::tls::{self, TlsFiles};

/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Default `store`.
pub const DEFAULT_STORE: &str = "sqlite:tributary.db";

/// What the command line says; `None` leaves the file's value (or the
/// default) in place.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub listen: Option<SocketAddr>,
    pub store: Option<String>,
    pub synchronous: Option<Durability>,
    /// `--retention`: delete readings older than this.
    pub retention: Option<Duration>,
    /// `--allow-plaintext` (can only turn it on).
    pub allow_plaintext: bool,
}

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct Serve {
    pub listen: SocketAddr,
    pub server: ServerConfig,
    /// Plaintext on a non-loopback address was allowed explicitly; `main`
    /// logs a warning once tracing is up.
    pub plaintext_warning: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    synchronous: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    allow_plaintext: Option<bool>,
    allowed_agents: Option<Spanned<Vec<Spanned<String>>>>,
    tls: Option<RawTls>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    query_requires_client_cert: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<u64>>,
    max_concurrent_streams: Option<Spanned<u64>>,
    max_message_bytes: Option<Spanned<u64>>,
    max_header_list_bytes: Option<Spanned<u64>>,
    max_local_error_resets: Option<Spanned<u64>>,
    handshake_timeout: Option<Spanned<String>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    hello_timeout: Option<Spanned<String>>,
    max_series_per_stream: Option<Spanned<u64>>,
    max_series_per_agent: Option<Spanned<u64>>,
    max_series_in_memory: Option<Spanned<u64>>,
    max_labels: Option<Spanned<u64>>,
    max_name_len: Option<Spanned<u64>>,
    max_value_len: Option<Spanned<u64>>,
    max_readings_per_batch: Option<Spanned<u64>>,
    max_clock_skew: Option<Spanned<String>>,
}

/// Reads `path` (when given), applies `flags` over it and checks the result.
pub fn resolve(path: Option<&Path>, flags: &Flags) -> Result<Serve, ConfigError> {
    match path {
        None => build(None, RawFile::default(), flags),
        Some(path) => {
            let text = tributary_config::read_file(path)?;
            resolve_text(&text, path, flags)
        }
    }
}

/// Like [`resolve`] for a file's text; `origin` names it in errors and
/// anchors its relative paths.
pub fn resolve_text(text: &str, origin: &Path, flags: &Flags) -> Result<Serve, ConfigError> {
    let layer = Layer::new(text, origin);
    let src = layer.source();
    let raw = parse(&src)?;
    build(Some(&src), raw, flags)
}

/// Parses the TOML into the raw shape; syntax errors, unknown keys and
/// wrong types come out located.
fn parse(src: &Source<'_>) -> Result<RawFile, ConfigError> {
    let doc = DeTable::parse(src.text).map_err(|e| src.syntax_error(&e))?;
    let span = doc.span();
    deserialize_table(src, doc.into_inner(), span, "", &DeContext::default())
}

/// Turns file values, flags and defaults into [`Serve`].
fn build(src: Option<&Source<'_>>, raw: RawFile, flags: &Flags) -> Result<Serve, ConfigError> {
    // An error about a value from the file (located) or from a flag.
    let err = |span: Option<Range<usize>>, key: &str, flag: &str, message: String| match (src, span)
    {
        (Some(src), Some(span)) => src.error(span, key, message),
        _ => ConfigError::flag(flag, message),
    };

    let (listen, listen_span) = match (flags.listen, &raw.listen) {
        (Some(addr), _) => (addr, None),
        (None, Some(v)) => {
            let addr = v.get_ref().parse::<SocketAddr>().map_err(|e| {
                err(
                    Some(v.span()),
                    "listen",
                    "--listen",
                    format!("{:?}: {e} (expected e.g. 0.0.0.0:7400)", v.get_ref()),
                )
            })?;
            (addr, Some(v.span()))
        }
        (None, None) => (
            DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::flag("--listen", "bad default"))?,
            None,
        ),
    };

    let (store, store_span) = match (&flags.store, &raw.store) {
        (Some(s), _) => (s.clone(), None),
        (None, Some(v)) => (v.get_ref().clone(), Some(v.span())),
        (None, None) => (DEFAULT_STORE.to_owned(), None),
    };
    let url: StoreUrl = store
        .parse()
        .map_err(|e: String| err(store_span.clone(), "store", "--store", e))?;
    let url = match url {
        // A path from the file is relative to the file, like the others.
        StoreUrl::Sqlite(p) => StoreUrl::Sqlite(match (src, &store_span) {
            (Some(src), Some(_)) => src.resolve(&p.to_string_lossy()),
            _ => p,
        }),
        pg => pg,
    };
    let mut server = ServerConfig::new(match &url {
        StoreUrl::Sqlite(p) => p.clone(),
        StoreUrl::Postgres(_) => PathBuf::new(),
    });
    server.store = Some(url);
    server.retention = match (flags.retention, &raw.retention) {
        (Some(d), _) => Some(Retention::new(d)),
        (None, Some(v)) => Some(Retention::new(
            parse_duration(v.get_ref())
                .map_err(|e| err(Some(v.span()), "retention", "--retention", e.to_string()))?,
        )),
        (None, None) => None,
    };
    server.durability = match (flags.synchronous, &raw.synchronous) {
        (Some(d), _) => d,
        (None, Some(v)) => v
            .get_ref()
            .parse()
            .map_err(|e: String| err(Some(v.span()), "synchronous", "--synchronous", e))?,
        (None, None) => Durability::Full,
    };

    if let (Some(src), Some(list)) = (src, &raw.allowed_agents) {
        let mut allowed = HashSet::new();
        for (i, id) in list.get_ref().iter().enumerate() {
            let value = id.get_ref();
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(src.error(
                    id.span(),
                    format!("allowed_agents[{i}]"),
                    format!("{value:?}: an agent id has only letters, digits, '.', '_' and '-'"),
                ));
            }
            allowed.insert(value.clone());
        }
        if allowed.is_empty() {
            return Err(src.error(
                list.span(),
                "allowed_agents",
                "empty: no agent could connect (leave the key out to allow every agent)",
            ));
        }
        server.allowed_agents = Some(Arc::new(allowed));
    }

    if let (Some(src), Some(t)) = (src, &raw.tls) {
        let files = TlsFiles {
            cert: src.resolve(t.cert.get_ref()),
            key: src.resolve(t.key.get_ref()),
            client_ca: t.client_ca.as_ref().map(|c| src.resolve(c.get_ref())),
            query_requires_client_cert: t.query_requires_client_cert.unwrap_or(true),
        };
        let loaded = tls::load(&files).map_err(|e| {
            let (span, key) = match &e {
                tls::TlsError::Read { path, .. }
                | tls::TlsError::NoCertificate { path }
                | tls::TlsError::NoKey { path }
                | tls::TlsError::Pem { path, .. } => {
                    if *path == files.key {
                        (t.key.span(), "tls.key")
                    } else if Some(path) == files.client_ca.as_ref() {
                        let span = t.client_ca.as_ref().map(|c| c.span()).unwrap_or(0..0);
                        (span, "tls.client_ca")
                    } else {
                        (t.cert.span(), "tls.cert")
                    }
                }
            };
            src.error(span, key, e.to_string())
        })?;
        server.tls = Some(loaded);
    }

    if let (Some(src), Some(l)) = (src, &raw.limits) {
        apply_limits(src, l, &mut server)?;
    }

    let allow_plaintext = flags.allow_plaintext || raw.allow_plaintext.unwrap_or(false);
    let mut plaintext_warning = None;
    if server.tls.is_none() && !listen.ip().is_loopback() {
        if !allow_plaintext {
            return Err(err(
                listen_span,
                "listen",
                "--listen",
                format!(
                    "{listen} is not a loopback address: configure [tls] (see README \"Mutual TLS\"), \
                     or allow plaintext explicitly with allow_plaintext = true or --allow-plaintext"
                ),
            ));
        }
        plaintext_warning = Some(format!(
            "serving plaintext on {listen}: traffic is readable and agent ids are not authenticated"
        ));
    }
    Ok(Serve {
        listen,
        server,
        plaintext_warning,
    })
}

fn apply_limits(
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
fn max_of<T: TryFrom<u64>>() -> u64 {
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

#[cfg(test)]
mod tests;
