//! `tributary-collector serve` settings: the optional TOML file given with
//! `--config`, the command-line flags (which win over the file), and the
//! checks that turn both into a [`ServerConfig`] before anything runs.
//!
//! The file mirrors the flags and adds what only a file holds:
//!
//! ```toml
//! name = "collector-1"                   # shown per agent (ListAgents, fleet page); default: host name
//! listen = "0.0.0.0:7400"
//! http_listen = "127.0.0.1:7401"         # Prometheus API, /metrics, fleet page; "off" disables
//! store = "sqlite:/var/lib/tributary/tributary.db"
//! synchronous = "full"
//! allowed_agents = ["edge-1", "edge-2"]   # optional allowlist
//! operators = ["operator"]                # who may query (mutual TLS)
//!
//! [tls]
//! cert = "collector.pem"
//! key = "collector.key"
//! client_ca = "ca.pem"                    # turns mutual TLS on
//!
//! [limits]
//! max_connections = 4096                 # default: 16384 (or the open-file limit - 64)
//! max_connections_per_address = 64      # default: max_connections / 8, at most 64
//! preface_timeout = "10s"
//! idle_timeout = "5m"                    # longer than keepalive_interval + keepalive_timeout
//!
//! [query]                                # PromQL on the HTTP listener (config/query.rs)
//! timeout = "2m"
//! lookback_delta = "5m"
//! ```
//!
//! Relative paths are relative to the file's directory. Every error names
//! the file, the line and the key (`collector.toml:7: tls.cert: ...`); `main`
//! exits with status 2 on any of them. Plaintext is served only on loopback
//! addresses unless `allow_plaintext = true` (or `--allow-plaintext`), and
//! TLS without `client_ca` (agent ids not authenticated) likewise unless
//! `allow_unauthenticated_agents = true` (or `--allow-unauthenticated-agents`).
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

pub use query::QueryFlags;
pub use tributary_config::ConfigError;

use crate::roles::{self, Roles};
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
    /// `--name`: this collector's name (`name`).
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    /// `--http-listen`: `Some(None)` is `off`.
    pub http_listen: Option<Option<SocketAddr>>,
    pub store: Option<String>,
    pub synchronous: Option<Durability>,
    /// `--retention`: delete readings older than this.
    pub retention: Option<Duration>,
    /// `--allow-plaintext` (can only turn it on).
    pub allow_plaintext: bool,
    /// `--allow-unauthenticated-agents` (can only turn it on).
    pub allow_unauthenticated_agents: bool,
    /// `--query-*`: what one PromQL query may use.
    pub query: QueryFlags,
}

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct Serve {
    pub listen: SocketAddr,
    /// The HTTP listener's address; `None`: off.
    pub http_listen: Option<SocketAddr>,
    pub server: ServerConfig,
    /// What was allowed explicitly and weakens security (plaintext, or TLS
    /// without `client_ca`, on a non-loopback address; Query without a
    /// client certificate); `main` logs each once tracing is up.
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    http_listen: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    /// The PostgreSQL password, read from this file into `store`'s URL.
    store_password_file: Option<Spanned<String>>,
    synchronous: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    allow_plaintext: Option<bool>,
    allow_unauthenticated_agents: Option<bool>,
    allowed_agents: Option<Spanned<Vec<Spanned<String>>>>,
    operators: Option<Spanned<Vec<Spanned<String>>>>,
    tls: Option<RawTls>,
    limits: Option<RawLimits>,
    exports: Option<Spanned<Vec<exports::RawExport>>>,
    query: Option<query::RawQuery>,
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
    max_connections_per_address: Option<Spanned<u64>>,
    preface_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
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

    let (http_listen, http_span) = match (flags.http_listen, &raw.http_listen) {
        (Some(addr), _) => (addr, None),
        (None, Some(v)) => {
            let addr = parse_http_listen(v.get_ref())
                .map_err(|e| err(Some(v.span()), "http_listen", "--http-listen", e))?;
            (addr, Some(v.span()))
        }
        (None, None) => (
            parse_http_listen(crate::http::DEFAULT_HTTP_LISTEN)
                .map_err(|e| ConfigError::flag("--http-listen", e))?,
            None,
        ),
    };

    let name = match (&flags.name, &raw.name) {
        (Some(n), _) => check_name(n).map_err(|e| ConfigError::flag("--name", e))?,
        (None, Some(v)) => {
            check_name(v.get_ref()).map_err(|e| err(Some(v.span()), "name", "--name", e))?
        }
        (None, None) => default_name(listen),
    };

    let (store, store_span) = match (&flags.store, &raw.store) {
        (Some(s), _) => (s.clone(), None),
        (None, Some(v)) => (v.get_ref().clone(), Some(v.span())),
        (None, None) => (DEFAULT_STORE.to_owned(), None),
    };
    let store = match (&raw.store_password_file, src) {
        (Some(file), Some(src)) => with_password_file(src, &store, file)?,
        _ => store,
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
    server.name = name;
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

    if let Some(src) = src {
        server.roles = Arc::new(parse_roles(src, &raw)?);
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
                | tls::TlsError::Pem { path, .. }
                | tls::TlsError::Unusable { path, .. } => {
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
        limits::apply(src, l, &mut server)?;
    }
    if let (Some(src), Some(list)) = (src, &raw.exports) {
        server.exports = exports::parse(src, list.get_ref(), list.span())?;
    }
    server.query_limits = query::resolve(src, raw.query.as_ref(), &flags.query)?;

    let allow_plaintext = flags.allow_plaintext || raw.allow_plaintext.unwrap_or(false);
    let allow_unauthenticated =
        flags.allow_unauthenticated_agents || raw.allow_unauthenticated_agents.unwrap_or(false);
    let mut warnings = Vec::new();
    if let Some(t) = &raw.tls
        && t.client_ca.is_some()
        && t.query_requires_client_cert == Some(false)
    {
        warnings.push(
            "query_requires_client_cert = false: connections without a client certificate may \
             call Query and read every agent's data"
                .to_owned(),
        );
    }
    let server_only_tls = server.tls.as_ref().is_some_and(|t| !t.mutual);
    if server_only_tls && !listen.ip().is_loopback() {
        if !allow_unauthenticated {
            return Err(err(
                listen_span,
                "listen",
                "--listen",
                format!(
                    "{listen} is not a loopback address and [tls] has no client_ca, so any \
                     client could stream as any agent id: set tls.client_ca (see README \
                     \"Mutual TLS\"), or allow it explicitly with \
                     allow_unauthenticated_agents = true or --allow-unauthenticated-agents"
                ),
            ));
        }
        warnings.push(format!(
            "serving TLS without client_ca on {listen}: agent ids are not authenticated, any \
             client may stream as any agent id"
        ));
    }
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
        warnings.push(format!(
            "serving plaintext on {listen}: traffic is readable and agent ids are not authenticated"
        ));
    }
    if let Some(addr) = http_listen
        && server.tls.is_none()
        && !addr.ip().is_loopback()
    {
        if !allow_plaintext {
            return Err(err(
                http_span,
                "http_listen",
                "--http-listen",
                format!(
                    "{addr} is not a loopback address: configure [tls] (see README \"Mutual TLS\"), \
                     or allow plaintext explicitly with allow_plaintext = true or --allow-plaintext"
                ),
            ));
        }
        warnings.push(format!(
            "serving plaintext HTTP on {addr}: anyone who reaches it reads every agent's data"
        ));
    }
    Ok(Serve {
        listen,
        http_listen,
        server,
        warnings,
    })
}

/// Longest collector `name`, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A collector `name`: not empty, at most [`MAX_NAME_CHARS`] characters,
/// none of them a control character (it is shown in tables, CSV and pages).
pub fn check_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("the collector name is empty".to_owned());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "the collector name has {chars} characters, more than {MAX_NAME_CHARS}"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the collector name {name:?} holds the control character {c:?}"
        ));
    }
    Ok(name.to_owned())
}

/// The default `name`: the host name (`/proc/sys/kernel/hostname`, or
/// `$HOSTNAME`), or the gRPC listen address when neither is a valid name.
pub fn default_name(listen: SocketAddr) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .and_then(|h| check_name(h.trim()).ok())
        .unwrap_or_else(|| listen.to_string())
}

/// An `http_listen` value: an address, or `off`.
pub fn parse_http_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{value:?}: {e} (expected e.g. 127.0.0.1:7401, or off)"))
}

/// `allowed_agents` and `operators`: valid ids, no identity in both.
fn parse_roles(src: &Source<'_>, raw: &RawFile) -> Result<Roles, ConfigError> {
    let mut roles = Roles::default();
    if let Some(list) = &raw.operators {
        // Empty is allowed: no certificate may call Query.
        roles.operators = id_set(src, list, "operators", "identity")?;
    }
    if let Some(list) = &raw.allowed_agents {
        let allowed = id_set(src, list, "allowed_agents", "agent id")?;
        if allowed.is_empty() {
            return Err(src.error(
                list.span(),
                "allowed_agents",
                "empty: no agent could connect (leave the key out to allow every agent)",
            ));
        }
        let mut ids = list.get_ref().iter().enumerate();
        if let Some((i, id)) = ids.find(|(_, id)| roles.is_operator(id.get_ref())) {
            return Err(src.error(
                id.span(),
                format!("allowed_agents[{i}]"),
                format!(
                    "{:?} is also an operator (`operators`, by default [\"operator\"]): an \
                     identity is an operator (Query) or an agent (Ingest), not both",
                    id.get_ref()
                ),
            ));
        }
        roles.allowed_agents = Some(allowed);
    }
    Ok(roles)
}

/// The ids of a list key, each checked with [`roles::is_valid_id`].
fn id_set(
    src: &Source<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    noun: &str,
) -> Result<HashSet<String>, ConfigError> {
    let mut ids = HashSet::new();
    for (i, id) in list.get_ref().iter().enumerate() {
        let value = id.get_ref();
        if !roles::is_valid_id(value) {
            return Err(src.error(
                id.span(),
                format!("{key}[{i}]"),
                format!(
                    "{value:?}: an {noun} has 1 to {} letters, digits, '.', '_' and '-'",
                    tributary_proto::limits::MAX_NAME_BYTES
                ),
            ));
        }
        ids.insert(value.clone());
    }
    Ok(ids)
}

pub mod exports;
mod limits;
mod query;
#[cfg(test)]
mod tests;

/// `store`, a `postgres://user@host/...` URL, with the password read from
/// the file `store_password_file` names (percent-encoded into the URL). The
/// error names the key, never the password.
fn with_password_file(
    src: &Source<'_>,
    store: &str,
    file: &Spanned<String>,
) -> Result<String, ConfigError> {
    let key = "store_password_file";
    let path = src.path(file, key)?;
    let password =
        tributary_config::read_secret_file(&path).map_err(|e| src.error(file.span(), key, e))?;
    let Some((scheme, rest)) = store
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "postgres" | "postgresql"))
    else {
        return Err(src.error(
            file.span(),
            key,
            "needs a postgres://user@host/... store URL",
        ));
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user, host)) = authority.rsplit_once('@') else {
        return Err(src.error(
            file.span(),
            key,
            "the store URL names no user (postgres://user@host/...)",
        ));
    };
    if user.contains(':') {
        return Err(src.error(
            file.span(),
            key,
            "the store URL has a password already: use either it or `store_password_file`",
        ));
    }
    let mut encoded = String::with_capacity(password.len());
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{scheme}://{user}:{encoded}@{host}{tail}"))
}
