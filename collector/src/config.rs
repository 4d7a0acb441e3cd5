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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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

/// Why the settings are not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A problem at a place in the file.
    #[error("{file}:{line}: {}{message}", key_prefix(key))]
    Invalid {
        file: String,
        line: usize,
        /// Key path such as `tls.cert`; empty for the whole file.
        key: String,
        message: String,
    },
    /// A problem with a flag or a default.
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
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
    max_labels: Option<Spanned<u64>>,
    max_name_len: Option<Spanned<u64>>,
    max_value_len: Option<Spanned<u64>>,
    max_readings_per_batch: Option<Spanned<u64>>,
    max_clock_skew: Option<Spanned<String>>,
}

/// The file being read, for locating errors.
struct Source<'a> {
    text: &'a str,
    file: String,
    dir: PathBuf,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line(span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// A path from the file, relative to the file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

/// Reads `path` (when given), applies `flags` over it and checks the result.
pub fn resolve(path: Option<&Path>, flags: &Flags) -> Result<Serve, ConfigError> {
    match path {
        None => build(None, RawFile::default(), flags),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            resolve_text(&text, path, flags)
        }
    }
}

/// Like [`resolve`] for a file's text; `origin` names it in errors and
/// anchors its relative paths.
pub fn resolve_text(text: &str, origin: &Path, flags: &Flags) -> Result<Serve, ConfigError> {
    let src = Source {
        text,
        file: origin.display().to_string(),
        dir: origin.parent().map(Path::to_owned).unwrap_or_default(),
    };
    let raw = parse(&src)?;
    build(Some(&src), raw, flags)
}

/// Parses the TOML into the raw shape; syntax errors, unknown keys and
/// wrong types come out located.
fn parse(src: &Source<'_>) -> Result<RawFile, ConfigError> {
    let doc = DeTable::parse(src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, "", format!("invalid toml: {}", e.message()))
    })?;
    toml::from_str::<RawFile>(src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let tree = DeValue::Table(doc.get_ref().clone());
        let key = locate(&tree, span.start, "").unwrap_or_default();
        let message = e.message().trim().to_owned();
        // For an unknown key the located path is the key itself; name the
        // table it is in, as the message names the key.
        let key = if message.starts_with("unknown field") {
            key.rsplit_once('.')
                .map(|(t, _)| t.to_owned())
                .unwrap_or_default()
        } else {
            key
        };
        src.error(span, &key, message.replace("unknown field", "unknown key"))
    })
}

/// The deepest key path in `value` whose key or value covers `offset`.
fn locate(value: &DeValue<'_>, offset: usize, prefix: &str) -> Option<String> {
    match value {
        DeValue::Table(table) => table.iter().find_map(|(k, v)| {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            locate(v.get_ref(), offset, &path).or_else(|| {
                (k.span().contains(&offset) || v.span().contains(&offset)).then_some(path)
            })
        }),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let path = format!("{prefix}[{i}]");
            locate(v.get_ref(), offset, &path)
                .or_else(|| v.span().contains(&offset).then_some(path))
        }),
        _ => None,
    }
}

/// Turns file values, flags and defaults into [`Serve`].
fn build(src: Option<&Source<'_>>, raw: RawFile, flags: &Flags) -> Result<Serve, ConfigError> {
    // An error about a value from the file (located) or from a flag.
    let err = |span: Option<Range<usize>>, key: &str, flag: &str, message: String| match (src, span)
    {
        (Some(src), Some(span)) => src.error(span, key, message),
        _ => ConfigError::Flag {
            flag: flag.to_owned(),
            message,
        },
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
                .map_err(|_| flag_err("--listen", "bad default"))?,
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
            (Some(src), Some(_)) => src.path(&p.to_string_lossy()),
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
            humantime::parse_duration(v.get_ref()).map_err(|e| {
                err(
                    Some(v.span()),
                    "retention",
                    "--retention",
                    format!("{:?}: {e}", v.get_ref()),
                )
            })?,
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
                    &format!("allowed_agents[{i}]"),
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
            cert: src.path(t.cert.get_ref()),
            key: src.path(t.key.get_ref()),
            client_ca: t.client_ca.as_ref().map(|c| src.path(c.get_ref())),
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

fn flag_err(flag: &str, message: &str) -> ConfigError {
    ConfigError::Flag {
        flag: flag.to_owned(),
        message: message.to_owned(),
    }
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
                    &format!("limits.{key}"),
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
            let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
                src.error(
                    v.span(),
                    &format!("limits.{key}"),
                    format!("invalid duration {:?}: {e}", v.get_ref()),
                )
            })?;
            if d.is_zero() {
                return Err(src.error(
                    v.span(),
                    &format!("limits.{key}"),
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
mod tests {
    use super::*;

    fn resolve_str(text: &str) -> Result<Serve, ConfigError> {
        resolve_text(
            text,
            Path::new("/etc/tributary/collector.toml"),
            &Flags::default(),
        )
    }

    fn error(text: &str) -> String {
        match resolve_str(text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let s = resolve_str("").expect("valid");
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.server.sqlite_path, PathBuf::from("tributary.db"));
        assert!(s.server.tls.is_none());
        assert!(s.plaintext_warning.is_none());
    }

    #[test]
    fn values_are_read_and_paths_are_relative_to_the_file() {
        let s = resolve_str(
            "listen = \"127.0.0.2:7000\"\nstore = \"sqlite:data/t.db\"\nsynchronous = \"normal\"\n\
             allowed_agents = [\"edge-1\"]\n[limits]\nmax_connections = 3\nhandshake_timeout = \"2s\"\n\
             max_clock_skew = \"1m\"\n",
        )
        .expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.2:7000");
        assert_eq!(
            s.server.sqlite_path,
            PathBuf::from("/etc/tributary/data/t.db")
        );
        assert_eq!(s.server.durability, Durability::Normal);
        assert_eq!(s.server.max_connections, 3);
        assert_eq!(s.server.handshake_timeout, Duration::from_secs(2));
        assert_eq!(s.server.limits.max_clock_skew, Duration::from_secs(60));
        let allowed = s.server.allowed_agents.expect("allowlist");
        assert!(allowed.contains("edge-1"));
    }

    #[test]
    fn postgres_store_and_retention_from_the_file() {
        let s = resolve_text(
            "store = \"postgres://root@127.0.0.1/test\"\nretention = \"30d\"\n",
            Path::new("c.toml"),
            &Flags::default(),
        )
        .expect("valid");
        assert!(matches!(s.server.store, Some(StoreUrl::Postgres(_))));
        assert!(s.server.retention.is_some());
        let e = resolve_text(
            "retention = \"forever\"\n",
            Path::new("c.toml"),
            &Flags::default(),
        )
        .expect_err("bad retention");
        assert!(e.to_string().contains("c.toml:1: retention"), "{e}");
        let e = resolve_text(
            "store = \"mysql://x\"\n",
            Path::new("c.toml"),
            &Flags::default(),
        )
        .expect_err("bad store");
        assert!(e.to_string().contains("c.toml:1: store"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = Flags {
            listen: Some("127.0.0.1:9999".parse().expect("addr")),
            store: Some("sqlite:/tmp/x.db".into()),
            synchronous: Some(Durability::Full),
            retention: None,
            allow_plaintext: false,
        };
        let s = resolve_text(
            "listen = \"127.0.0.2:7000\"\nsynchronous = \"normal\"\n",
            Path::new("c.toml"),
            &flags,
        )
        .expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(s.server.sqlite_path, PathBuf::from("/tmp/x.db"));
        assert_eq!(s.server.durability, Durability::Full);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            error("\n\nlisten = \"nowhere\"\n"),
            "/etc/tributary/collector.toml:3: listen: \"nowhere\": invalid socket address syntax \
             (expected e.g. 0.0.0.0:7400)"
        );
        let e = error("[limits]\nmax_conections = 3\n");
        assert!(
            e.starts_with("/etc/tributary/collector.toml:2: limits: unknown key `max_conections`"),
            "{e}"
        );
        let e = error("[limits]\nmax_connections = 0\n");
        assert!(
            e.starts_with("/etc/tributary/collector.toml:2: limits.max_connections: 0: expected"),
            "{e}"
        );
        let e = error("[limits]\nkeepalive_interval = \"10 parsecs\"\n");
        assert!(
            e.starts_with(
                "/etc/tributary/collector.toml:2: limits.keepalive_interval: invalid duration"
            ),
            "{e}"
        );
        let e = error("allowed_agents = [\"ok\", \"not ok\"]\n");
        assert!(
            e.starts_with("/etc/tributary/collector.toml:1: allowed_agents[1]: \"not ok\""),
            "{e}"
        );
        let e = error("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n");
        assert!(
            e.starts_with(
                "/etc/tributary/collector.toml:2: tls.cert: /etc/tributary/missing.pem: cannot read"
            ),
            "{e}"
        );
        let e = error("synchronous = \"sometimes\"\n");
        assert!(
            e.starts_with("/etc/tributary/collector.toml:1: synchronous: unknown durability"),
            "{e}"
        );
        let e = error("listen = [\n");
        assert!(e.starts_with("/etc/tributary/collector.toml:"), "{e}");
        assert!(e.contains("invalid toml"), "{e}");
    }

    #[test]
    fn plaintext_off_loopback_needs_an_explicit_yes() {
        let e = error("listen = \"0.0.0.0:7400\"\n");
        assert!(
            e.starts_with(
                "/etc/tributary/collector.toml:1: listen: 0.0.0.0:7400 is not a loopback address"
            ),
            "{e}"
        );
        let s = resolve_str("listen = \"0.0.0.0:7400\"\nallow_plaintext = true\n").expect("valid");
        assert!(s.plaintext_warning.is_some());
        let flags = Flags {
            listen: Some("[::]:7400".parse().expect("addr")),
            ..Flags::default()
        };
        let e = resolve(None, &flags)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("--listen: [::]:7400 is not a loopback address"),
            "{e}"
        );
        let s = resolve_str("listen = \"[::1]:7400\"\n").expect("valid");
        assert!(s.plaintext_warning.is_none());
    }

    #[test]
    fn max_of_finds_the_type_bound() {
        assert_eq!(max_of::<u32>(), u64::from(u32::MAX));
        assert_eq!(max_of::<u64>(), u64::MAX);
    }
}
