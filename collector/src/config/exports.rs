//! The `[[exports]]` tables of the collector's config (README "Exports"):
//! each checked into an [`ExportConfig`] before anything runs, every error
//! at its file, line and key (`collector.toml:12: exports[0].url: ...`).
//!
//! ```toml
//! [[exports]]
//! name = "vm"                                  # unique: names the cursor, metrics, logs
//! kind = "remote_write"
//! url = "http://127.0.0.1:8428/api/v1/write"
//! headers = { X-Scope-OrgID = "team-a" }
//! bearer_token_file = "/etc/tributary/vm.token" # or bearer_token, or basic_auth
//! basic_auth = { username = "u", password_file = "p.txt" }
//! shards = 4                                   # parallel requests; a series stays in one
//! max_samples_per_request = 2000
//! timeout = "30s"                              # one request
//! max_backoff = "30s"                          # retries wait 0.5 s, doubling up to this
//! max_lag = "7d"                               # older unsent readings may be skipped
//! match = { agent = "edge-*", device = "*", metric = "*" }
//! [exports.tls]
//! ca = "ca.pem"
//! cert = "client.pem"
//! key = "client.key"
//! ```
//!
//! `kind = "nats"` (JetStream) has its own keys: `exports/nats.rs`.
//!
//! Secrets given as `*_file` are read here, once, relative to the config
//! file; a missing or empty file is a located error. Says what the keys
//! mean; reading TOML is `tributary-config`'s.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use tributary_config::{ConfigError, Source};

mod nats;
pub use nats::{Nats, NatsAuth, NatsFormat, StreamSpec, SubjectPart, SubjectTemplate};

/// Longest export name.
pub const MAX_NAME_LEN: usize = 64;

/// One validated `[[exports]]` table (its Debug hides the URL's user info).
#[derive(Clone, PartialEq)]
pub struct ExportConfig {
    /// Unique among the exports; names the cursor in the store.
    pub name: String,
    /// Where the readings go.
    pub url: String,
    pub kind: ExportKind,
    /// Only readings of series that match every glob are exported.
    pub filter: Filter,
    /// Readings this long unsent may be skipped (counted and logged) so the
    /// store can let go of them; `None`: kept until sent.
    pub max_lag: Option<Duration>,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

/// What an export speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportKind {
    /// Prometheus remote write 1.0.
    RemoteWrite(RemoteWrite),
    /// A NATS JetStream stream (`config/exports/nats.rs`).
    Nats(Nats),
}

impl ExportKind {
    /// The `kind` key's value.
    pub fn name(&self) -> &'static str {
        match self {
            ExportKind::RemoteWrite(_) => "remote_write",
            ExportKind::Nats(_) => "nats",
        }
    }
}

/// `kind = "remote_write"` settings (their Debug shows header names only:
/// a header may carry a credential).
#[derive(Clone, PartialEq)]
pub struct RemoteWrite {
    /// Extra request headers (after the protocol's own, which they cannot
    /// replace).
    pub headers: Vec<(String, String)>,
    pub auth: Auth,
    /// Requests in flight at once; each series always goes to the same one.
    pub shards: usize,
    pub max_samples_per_request: usize,
    /// One request's time limit.
    pub timeout: Duration,
    pub tls: Option<ExportTls>,
}

/// Credentials sent with every request.
#[derive(Clone, PartialEq, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

impl std::fmt::Debug for ExportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportConfig")
            .field("name", &self.name)
            .field("url", &crate::export::redact_url(&self.url))
            .field("kind", &self.kind)
            .field("filter", &self.filter)
            .field("max_lag", &self.max_lag)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl std::fmt::Debug for RemoteWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, _)| format!("{k}: <redacted>"))
            .collect();
        f.debug_struct("RemoteWrite")
            .field("headers", &headers)
            .field("auth", &self.auth)
            .field("shards", &self.shards)
            .field("max_samples_per_request", &self.max_samples_per_request)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl std::fmt::Debug for Auth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <secret>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<secret>)"),
        }
    }
}

/// `[exports.tls]`: a CA to trust instead of the system's roots, and a
/// client certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTls {
    pub ca: Option<PathBuf>,
    /// Client certificate and key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `match`: globs (`*` any run, `?` one character) over a series' agent,
/// device and metric; a missing key matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub device: Option<String>,
    pub metric: Option<String>,
}

impl Filter {
    /// Whether a series passes.
    pub fn matches(&self, agent: &str, device: &str, metric: &str) -> bool {
        let ok = |glob: &Option<String>, s: &str| glob.as_deref().is_none_or(|g| glob_match(g, s));
        ok(&self.agent, agent) && ok(&self.device, device) && ok(&self.metric, metric)
    }

    /// Whether every series passes.
    pub fn is_all(&self) -> bool {
        self.agent.is_none() && self.device.is_none() && self.metric.is_none()
    }
}

/// `*` and `?` globbing over characters, iterative (no backtracking blow-up).
pub fn glob_match(glob: &str, s: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExport {
    name: Spanned<String>,
    kind: Spanned<String>,
    url: Spanned<String>,
    headers: Option<BTreeMap<String, Spanned<String>>>,
    basic_auth: Option<Spanned<RawBasicAuth>>,
    bearer_token: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<String>>,
    shards: Option<Spanned<u64>>,
    max_samples_per_request: Option<Spanned<u64>>,
    timeout: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    max_lag: Option<Spanned<String>>,
    #[serde(rename = "match")]
    filter: Option<RawFilter>,
    tls: Option<Spanned<RawTls>>,
    // kind = "nats" (config/exports/nats.rs)
    stream: Option<Spanned<String>>,
    create_stream: Option<Spanned<bool>>,
    subjects: Option<Spanned<Vec<String>>>,
    replicas: Option<Spanned<u64>>,
    max_age: Option<Spanned<String>>,
    duplicate_window: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    nkey_seed: Option<Spanned<String>>,
    nkey_seed_file: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
    max_readings_per_message: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    agent: Option<String>,
    device: Option<String>,
    metric: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

/// Checks every `[[exports]]` table.
pub(super) fn parse(
    src: &Source<'_>,
    raw: &[RawExport],
    list_span: std::ops::Range<usize>,
) -> Result<Vec<ExportConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let e = one(src, r, i)?;
        if !names.insert(e.name.clone()) {
            return Err(src.error(
                r.name.span(),
                format!("exports[{i}].name"),
                format!(
                    "{:?} is used by an earlier export: names must be unique",
                    e.name
                ),
            ));
        }
        out.push(e);
    }
    let _ = list_span;
    Ok(out)
}

fn one(src: &Source<'_>, r: &RawExport, i: usize) -> Result<ExportConfig, ConfigError> {
    let key = |k: &str| format!("exports[{i}].{k}");
    let name = r.name.get_ref();
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(src.error(
            r.name.span(),
            key("name"),
            format!("{name:?}: a name has 1 to {MAX_NAME_LEN} letters, digits, '.', '_' and '-'"),
        ));
    }
    let url = r.url.get_ref().clone();
    let duration = |v: &Option<Spanned<String>>, k: &str, default: Duration| match v {
        None => Ok(default),
        Some(v) => {
            let d = src.duration(v, &key(k))?;
            if d.is_zero() {
                return Err(src.error(v.span(), key(k), "must be longer than zero"));
            }
            Ok(d)
        }
    };
    let count = |v: &Option<Spanned<u64>>, k: &str, default: usize, max: usize| match v {
        None => Ok(default),
        Some(v) => {
            let n = *v.get_ref();
            if n == 0 || n > max as u64 {
                return Err(src.error(
                    v.span(),
                    key(k),
                    format!("{n}: expected a whole number from 1 to {max}"),
                ));
            }
            Ok(n as usize)
        }
    };
    let max_backoff = duration(&r.max_backoff, "max_backoff", Duration::from_secs(30))?;
    let max_lag = match &r.max_lag {
        None => None,
        Some(_) => Some(duration(&r.max_lag, "max_lag", Duration::ZERO)?),
    };
    let filter = r
        .filter
        .as_ref()
        .map(|f| Filter {
            agent: f.agent.clone(),
            device: f.device.clone(),
            metric: f.metric.clone(),
        })
        .unwrap_or_default();
    let kind = match r.kind.get_ref().as_str() {
        "nats" => ExportKind::Nats(nats::parse(src, r, i, &url)?),
        "remote_write" => {
            nats::refuse_other_keys(src, r, i, nats::NATS_KEYS)?;
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || reqwest_url_ok(&url).is_err()
            {
                return Err(src.error(
                    r.url.span(),
                    key("url"),
                    format!(
                        "{url:?}: expected an http:// or https:// URL, e.g. \
                         http://127.0.0.1:8428/api/v1/write"
                    ),
                ));
            }
            let mut headers = Vec::new();
            for (h, v) in r.headers.iter().flatten() {
                let lower = h.to_ascii_lowercase();
                if PROTOCOL_HEADERS.contains(&lower.as_str()) {
                    return Err(src.error(
                        v.span(),
                        key(&format!("headers.{h}")),
                        "set by the remote write protocol; it cannot be replaced",
                    ));
                }
                if !is_token(h) || v.get_ref().bytes().any(|b| b < 0x20 && b != b'\t') {
                    return Err(src.error(
                        v.span(),
                        key(&format!("headers.{h}")),
                        "not a valid HTTP header name and value",
                    ));
                }
                headers.push((h.clone(), v.get_ref().clone()));
            }
            let auth = auth(src, r, i)?;
            // Both would send two Authorization headers.
            if auth != Auth::None
                && let Some((h, v)) = r
                    .headers
                    .iter()
                    .flatten()
                    .find(|(h, _)| h.eq_ignore_ascii_case("authorization"))
            {
                return Err(src.error(
                    v.span(),
                    key(&format!("headers.{h}")),
                    "an Authorization header and basic_auth or bearer_token are both set: keep one",
                ));
            }
            if let Some(t) = &r.tls
                && url.starts_with("http://")
            {
                return Err(src.error(
                    t.span(),
                    key("tls"),
                    "the url is http://: use https:// with [exports.tls]",
                ));
            }
            let tls = tls(src, r, i)?;
            ExportKind::RemoteWrite(RemoteWrite {
                headers,
                auth,
                shards: count(&r.shards, "shards", 4, 64)?,
                max_samples_per_request: count(
                    &r.max_samples_per_request,
                    "max_samples_per_request",
                    2000,
                    100_000,
                )?,
                timeout: duration(&r.timeout, "timeout", Duration::from_secs(30))?,
                tls,
            })
        }
        other => {
            return Err(src.error(
                r.kind.span(),
                key("kind"),
                format!("{other:?}: expected \"remote_write\" or \"nats\""),
            ));
        }
    };
    Ok(ExportConfig {
        name: name.clone(),
        url,
        kind,
        filter,
        max_lag,
        max_backoff,
    })
}

/// Headers the remote write protocol sets itself.
const PROTOCOL_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "x-prometheus-remote-write-version",
    "user-agent",
    "host",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn reqwest_url_ok(url: &str) -> Result<(), ()> {
    // host present and no whitespace; the HTTP client checks the rest.
    let rest = url.split_once("://").map(|(_, r)| r).ok_or(())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(char::is_whitespace) {
        return Err(());
    }
    Ok(())
}

/// `basic_auth`, `bearer_token`, `bearer_token_file`: at most one way.
fn auth(src: &Source<'_>, r: &RawExport, i: usize) -> Result<Auth, ConfigError> {
    let key = |k: &str| format!("exports[{i}].{k}");
    let secret = |v: &Spanned<String>, k: &str| -> Result<String, ConfigError> {
        let path = src.path(v, &key(k))?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| src.error(v.span(), key(k), format!("{}: {e}", path.display())))?;
        let text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.is_empty() {
            return Err(src.error(v.span(), key(k), format!("{} is empty", path.display())));
        }
        Ok(text)
    };
    let bearer = match (&r.bearer_token, &r.bearer_token_file) {
        (Some(t), Some(_)) => {
            return Err(src.error(
                t.span(),
                key("bearer_token"),
                "set bearer_token or bearer_token_file, not both",
            ));
        }
        (Some(t), None) => Some(t.get_ref().clone()),
        (None, Some(f)) => Some(secret(f, "bearer_token_file")?),
        (None, None) => None,
    };
    let basic = match &r.basic_auth {
        None => None,
        Some(b) => {
            let inner = b.get_ref();
            let password = match (&inner.password, &inner.password_file) {
                (Some(p), None) => p.get_ref().clone(),
                (None, Some(f)) => secret(f, "basic_auth.password_file")?,
                _ => {
                    return Err(src.error(
                        b.span(),
                        key("basic_auth"),
                        "set one of password and password_file",
                    ));
                }
            };
            Some(Auth::Basic {
                username: inner.username.get_ref().clone(),
                password,
            })
        }
    };
    match (basic, bearer) {
        (Some(_), Some(_)) => Err(src.error(
            r.basic_auth.as_ref().map(|b| b.span()).unwrap_or(0..0),
            key("basic_auth"),
            "set basic_auth or a bearer token, not both",
        )),
        (Some(b), None) => Ok(b),
        (None, Some(t)) => Ok(Auth::Bearer(t)),
        (None, None) => Ok(Auth::None),
    }
}

/// `[exports.tls]`: the CA and client certificate files (both kinds).
pub(super) fn tls(
    src: &Source<'_>,
    r: &RawExport,
    i: usize,
) -> Result<Option<ExportTls>, ConfigError> {
    let key = |k: &str| format!("exports[{i}].{k}");
    let Some(t) = &r.tls else {
        return Ok(None);
    };
    let t = t.get_ref();
    let path = |v: &Option<Spanned<String>>, k: &str| {
        v.as_ref()
            .map(|v| src.path(v, &key(&format!("tls.{k}"))))
            .transpose()
    };
    let identity = match (path(&t.cert, "cert")?, path(&t.key, "key")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let span = t
                .cert
                .as_ref()
                .or(t.key.as_ref())
                .map(|v| v.span())
                .unwrap_or(0..0);
            return Err(src.error(
                span,
                key("tls"),
                "cert and key go together: set both or neither",
            ));
        }
    };
    Ok(Some(ExportTls {
        ca: path(&t.ca, "ca")?,
        identity,
    }))
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn an_authorization_header_beside_credentials_is_refused() {
        let text = "[[exports]]\nname = \"vm\"\nkind = \"remote_write\"\n\
                    url = \"http://x/w\"\nbearer_token = \"t\"\n\
                    headers = { authorization = \"Bearer u\" }\n";
        let got = crate::config::resolve_text(
            text,
            std::path::Path::new("/etc/tributary/collector.toml"),
            &crate::config::Flags::default(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        let want = "collector.toml:6: exports[0].headers.authorization: an Authorization header \
                    and basic_auth or bearer_token are both set";
        assert!(
            got.as_ref().is_err_and(|e| e.contains(want)),
            "got {got:?}, want {want}"
        );
    }

    #[test]
    fn globs_match_as_shells_do() {
        assert!(glob_match("edge-*", "edge-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-*-x", "a-b-c-x"));
        assert!(!glob_match("edge-*", "core-1"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }
}
