//! `kind = "nats"` settings (README "Exports"): a JetStream stream that
//! receives the committed readings.
//!
//! ```toml
//! [[exports]]
//! name = "bus"
//! kind = "nats"
//! url = "nats://127.0.0.1:4222"            # several: "nats://a:4222,nats://b:4222"
//! stream = "TRIBUTARY"
//! subject = "tributary.{agent}.{device}"   # {agent} {device} {metric}, sanitised
//! format = "protobuf"                      # or "json"
//! create_stream = true                     # else the stream must exist
//! subjects = ["tributary.>"]               # default: the subject, placeholders as *
//! replicas = 3
//! max_age = "7d"                           # default: kept until the stream's limits
//! duplicate_window = "10m"                 # default 2m (JetStream's)
//! user = "tributary"                       # with password / password_file,
//! password_file = "/etc/tributary/nats.pw" # or token / token_file, or
//! # nkey_seed / nkey_seed_file (SU...), or credentials_file (.creds: JWT + seed)
//! # TLS: tls:// servers, or [exports.tls] ca / cert / key (as remote_write)
//! max_readings_per_message = 1000
//! max_in_flight = 256                      # messages awaiting their PubAck
//! timeout = "5s"                           # connect, and a PubAck's wait
//! ```

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use tributary_config::{ConfigError, Source};

use super::{ExportTls, RawExport};
use crate::export::nats::nkey::{Credentials, KeyPair};

/// Keys only `kind = "nats"` has.
pub(super) const NATS_KEYS: &[&str] = &[
    "stream",
    "create_stream",
    "subjects",
    "replicas",
    "max_age",
    "duplicate_window",
    "subject",
    "format",
    "user",
    "password",
    "password_file",
    "token",
    "token_file",
    "nkey_seed",
    "nkey_seed_file",
    "credentials_file",
    "max_readings_per_message",
    "max_in_flight",
];

/// Keys only `kind = "remote_write"` has.
const REMOTE_WRITE_KEYS: &[&str] = &[
    "headers",
    "basic_auth",
    "bearer_token",
    "bearer_token_file",
    "shards",
    "max_samples_per_request",
];

/// `kind = "nats"` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Nats {
    /// `host:port` of each server, tried in turn.
    pub servers: Vec<String>,
    /// Set: every connection is TLS (`tls://` servers or `[exports.tls]`).
    pub tls: Option<ExportTls>,
    pub stream: String,
    /// Create the stream when it is missing, with these settings.
    pub create_stream: Option<StreamSpec>,
    pub subject: SubjectTemplate,
    pub format: NatsFormat,
    pub auth: NatsAuth,
    /// Connecting, and waiting for a PubAck (past it the connection is
    /// taken as broken and the messages go again).
    pub timeout: Duration,
    pub max_readings_per_message: usize,
    pub max_in_flight: usize,
}

impl Nats {
    /// What shapes the messages: a change makes new message ids, so a
    /// replay under another shape is never taken for a duplicate.
    pub fn shape(&self) -> String {
        format!(
            "{}|{:?}|{}",
            self.subject.text, self.format, self.max_readings_per_message
        )
    }
}

/// A stream to create when missing.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    pub subjects: Vec<String>,
    pub replicas: u8,
    /// `None`: no age limit.
    pub max_age: Option<Duration>,
    pub duplicate_window: Duration,
}

/// `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsFormat {
    /// `tributary.v1.ExportMessage`.
    Protobuf,
    /// One JSON object per message (README "Exports").
    Json,
}

/// Credentials sent in `CONNECT`.
#[derive(Clone, PartialEq, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// `nkey_seed`/`nkey_seed_file`: the user's public key and the
    /// server's nonce signed.
    Nkey(KeyPair),
    /// `credentials_file`: the user JWT and the nonce signed with the
    /// seed that goes with it.
    Credentials(Credentials),
}

impl std::fmt::Debug for NatsAuth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, <secret>)"),
            NatsAuth::Token(_) => f.write_str("Token(<secret>)"),
            NatsAuth::Nkey(k) => write!(f, "Nkey({k:?})"),
            NatsAuth::Credentials(c) => write!(f, "{c:?}"),
        }
    }
}

/// One piece of a subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectPart {
    Text(String),
    Agent,
    Device,
    Metric,
}

/// `subject`: literal text (subject tokens of letters, digits, `_` and
/// `-`, separated by `.`) and the placeholders `{agent}`, `{device}`,
/// `{metric}`, each replaced by its value sanitised into one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    pub text: String,
    pub parts: Vec<SubjectPart>,
}

impl SubjectTemplate {
    /// Parses a template, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<SubjectTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("{text:?}: a '{{' without its '}}'"));
            };
            let part = match &after[..close] {
                "agent" => SubjectPart::Agent,
                "device" => SubjectPart::Device,
                "metric" => SubjectPart::Metric,
                other => {
                    return Err(format!(
                        "{text:?}: unknown placeholder {{{other}}}: expected {{agent}}, \
                         {{device}} or {{metric}}"
                    ));
                }
            };
            if !literal.is_empty() {
                parts.push(SubjectPart::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(SubjectPart::Text(literal));
        }
        // Every token non-empty; literal text only of safe characters.
        let shape: String = parts
            .iter()
            .map(|p| match p {
                SubjectPart::Text(t) => t.clone(),
                _ => "x".to_owned(),
            })
            .collect();
        if shape.is_empty()
            || shape.split('.').any(str::is_empty)
            || !shape
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(format!(
                "{text:?}: a subject is tokens of letters, digits, '_' and '-' (or a \
                 placeholder) separated by single dots, e.g. \"tributary.{{agent}}.{{device}}\""
            ));
        }
        Ok(SubjectTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The subject of a series.
    pub fn render(&self, agent: &str, device: &str, metric: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for p in &self.parts {
            match p {
                SubjectPart::Text(t) => out.push_str(t),
                SubjectPart::Agent => push_token(&mut out, agent),
                SubjectPart::Device => push_token(&mut out, device),
                SubjectPart::Metric => push_token(&mut out, metric),
            }
        }
        out
    }

    /// The subjects this template can produce, as a filter: each token
    /// with a placeholder becomes `*`.
    pub fn wildcard(&self) -> String {
        let mut shape = String::new();
        for p in &self.parts {
            match p {
                SubjectPart::Text(t) => shape.push_str(t),
                _ => shape.push('\u{0}'),
            }
        }
        shape
            .split('.')
            .map(|t| if t.contains('\u{0}') { "*" } else { t })
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A value as one subject token: every character other than an ASCII
/// letter, digit, `_` or `-` becomes `_`; an empty value is `_`.
pub fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

/// The present keys of `r` among `keys`, with their spans.
fn present(r: &RawExport, keys: &[&str]) -> Option<(&'static str, Range<usize>)> {
    let all: [(&'static str, Option<Range<usize>>); 24] = [
        ("stream", r.stream.as_ref().map(Spanned::span)),
        ("create_stream", r.create_stream.as_ref().map(Spanned::span)),
        ("subjects", r.subjects.as_ref().map(Spanned::span)),
        ("replicas", r.replicas.as_ref().map(Spanned::span)),
        ("max_age", r.max_age.as_ref().map(Spanned::span)),
        (
            "duplicate_window",
            r.duplicate_window.as_ref().map(Spanned::span),
        ),
        ("subject", r.subject.as_ref().map(Spanned::span)),
        ("format", r.format.as_ref().map(Spanned::span)),
        ("user", r.user.as_ref().map(Spanned::span)),
        ("password", r.password.as_ref().map(Spanned::span)),
        ("password_file", r.password_file.as_ref().map(Spanned::span)),
        ("token", r.token.as_ref().map(Spanned::span)),
        ("token_file", r.token_file.as_ref().map(Spanned::span)),
        ("nkey_seed", r.nkey_seed.as_ref().map(Spanned::span)),
        (
            "nkey_seed_file",
            r.nkey_seed_file.as_ref().map(Spanned::span),
        ),
        (
            "credentials_file",
            r.credentials_file.as_ref().map(Spanned::span),
        ),
        (
            "max_readings_per_message",
            r.max_readings_per_message.as_ref().map(Spanned::span),
        ),
        ("max_in_flight", r.max_in_flight.as_ref().map(Spanned::span)),
        (
            "headers",
            r.headers
                .as_ref()
                .map(|h| h.values().next().map(Spanned::span).unwrap_or(0..0)),
        ),
        ("basic_auth", r.basic_auth.as_ref().map(Spanned::span)),
        ("bearer_token", r.bearer_token.as_ref().map(Spanned::span)),
        (
            "bearer_token_file",
            r.bearer_token_file.as_ref().map(Spanned::span),
        ),
        ("shards", r.shards.as_ref().map(Spanned::span)),
        (
            "max_samples_per_request",
            r.max_samples_per_request.as_ref().map(Spanned::span),
        ),
    ];
    all.into_iter().find_map(|(k, span)| {
        (keys.contains(&k))
            .then_some(span)
            .flatten()
            .map(|s| (k, s))
    })
}

/// A key of another kind is an error naming it.
pub(super) fn refuse_other_keys(
    src: &Source<'_>,
    r: &RawExport,
    i: usize,
    keys: &[&str],
) -> Result<(), ConfigError> {
    if let Some((k, span)) = present(r, keys) {
        return Err(src.error(
            span,
            format!("exports[{i}].{k}"),
            format!("not a key of kind = {:?}", r.kind.get_ref()),
        ));
    }
    Ok(())
}

/// Checks a `kind = "nats"` table.
pub(super) fn parse(
    src: &Source<'_>,
    r: &RawExport,
    i: usize,
    url: &str,
) -> Result<Nats, ConfigError> {
    let key = |k: &str| format!("exports[{i}].{k}");
    if let Some((k, span)) = present(r, REMOTE_WRITE_KEYS) {
        return Err(src.error(span, key(k), "not a key of kind = \"nats\""));
    }
    let (servers, tls_scheme) = servers(url).map_err(|e| src.error(r.url.span(), key("url"), e))?;
    // tls:// servers, or [exports.tls]: TLS (the system's roots unless a
    // CA is set).
    let tls = match super::tls(src, r, i)? {
        Some(t) => Some(t),
        None if tls_scheme => Some(ExportTls {
            ca: None,
            identity: None,
        }),
        None => None,
    };
    let stream = match &r.stream {
        None => {
            return Err(src.error(
                r.kind.span(),
                key("stream"),
                "kind = \"nats\" needs stream = \"<JetStream stream name>\"",
            ));
        }
        Some(s) => {
            let name = s.get_ref();
            if name.is_empty()
                || name.len() > 255
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
            {
                return Err(src.error(
                    s.span(),
                    key("stream"),
                    format!(
                        "{name:?}: a stream name is 1 to 255 characters without whitespace, \
                         '.', '*', '>', '/' or '\\'"
                    ),
                ));
            }
            name.clone()
        }
    };
    let subject = match &r.subject {
        None => SubjectTemplate::parse("tributary.{agent}.{device}").map_err(|e| {
            src.error(
                r.kind.span(),
                key("subject"),
                format!("default subject: {e}"),
            )
        })?,
        Some(s) => SubjectTemplate::parse(s.get_ref())
            .map_err(|e| src.error(s.span(), key("subject"), e))?,
    };
    let format = match r.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("protobuf", _)) => NatsFormat::Protobuf,
        Some(("json", _)) => NatsFormat::Json,
        Some((other, span)) => {
            return Err(src.error(
                span,
                key("format"),
                format!("{other:?}: expected \"protobuf\" or \"json\""),
            ));
        }
    };
    let duration =
        |v: &Option<Spanned<String>>, k: &str| -> Result<Option<Duration>, ConfigError> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let d = src.duration(v, &key(k))?;
                    if d.is_zero() {
                        return Err(src.error(v.span(), key(k), "must be longer than zero"));
                    }
                    Ok(Some(d))
                }
            }
        };
    let count = |v: &Option<Spanned<u64>>, k: &str, default: u64, max: u64| match v {
        None => Ok(default),
        Some(v) => {
            let n = *v.get_ref();
            if n == 0 || n > max {
                return Err(src.error(
                    v.span(),
                    key(k),
                    format!("{n}: expected a whole number from 1 to {max}"),
                ));
            }
            Ok(n)
        }
    };
    let create = r.create_stream.as_ref().map(|c| *c.get_ref()) == Some(true);
    let create_stream = if create {
        let subjects = match &r.subjects {
            Some(s) if s.get_ref().is_empty() => {
                return Err(src.error(s.span(), key("subjects"), "list at least one subject"));
            }
            Some(s) => {
                for subj in s.get_ref() {
                    if subj.is_empty()
                        || subj.split('.').any(str::is_empty)
                        || subj.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(src.error(
                            s.span(),
                            key("subjects"),
                            format!("{subj:?} is not a subject filter"),
                        ));
                    }
                }
                s.get_ref().clone()
            }
            None => vec![subject.wildcard()],
        };
        Some(StreamSpec {
            subjects,
            replicas: count(&r.replicas, "replicas", 1, 5)? as u8,
            max_age: duration(&r.max_age, "max_age")?,
            duplicate_window: duration(&r.duplicate_window, "duplicate_window")?
                .unwrap_or(Duration::from_secs(120)),
        })
    } else {
        // Settings of a stream this export does not create.
        for (k, span) in [
            ("subjects", r.subjects.as_ref().map(Spanned::span)),
            ("replicas", r.replicas.as_ref().map(Spanned::span)),
            ("max_age", r.max_age.as_ref().map(Spanned::span)),
            (
                "duplicate_window",
                r.duplicate_window.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                return Err(src.error(
                    span,
                    key(k),
                    "only used with create_stream = true (the stream's own settings apply)",
                ));
            }
        }
        None
    };
    let auth = auth(src, r, i)?;
    Ok(Nats {
        servers,
        tls,
        stream,
        create_stream,
        subject,
        format,
        auth,
        timeout: duration(&r.timeout, "timeout")?.unwrap_or(Duration::from_secs(5)),
        max_readings_per_message: count(
            &r.max_readings_per_message,
            "max_readings_per_message",
            1000,
            100_000,
        )? as usize,
        max_in_flight: count(&r.max_in_flight, "max_in_flight", 256, 65_536)? as usize,
    })
}

/// `url` as an error shows it: in each comma-separated server, whatever
/// comes before its last `@` (credentials) replaced by `***`.
fn redact_servers(url: &str) -> String {
    let one = |part: &str| {
        let part = part.trim();
        let (scheme, rest) = match part.split_once("://") {
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), part),
        };
        match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}***@{host}"),
            None => part.to_owned(),
        }
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

/// `nats://host:port[,nats://host:port...]` (or `tls://` each) →
/// `host:port` each, and whether the scheme is `tls://`.
fn servers(url: &str) -> Result<(Vec<String>, bool), String> {
    let shown = redact_servers(url);
    let bad = |what: &str| {
        format!(
            "{shown:?}: {what}; expected nats://host:port (or tls://host:port), or several \
             separated by commas, e.g. nats://127.0.0.1:4222"
        )
    };
    let mut out = Vec::new();
    let mut schemes = Vec::new();
    for one in url.split(',') {
        let one = one.trim();
        let (scheme, rest) = match one.split_once("://") {
            Some((s @ ("nats" | "tls"), rest)) => (s, rest),
            _ => {
                let one = redact_servers(one);
                return Err(bad(&format!(
                    "{one:?} does not start with nats:// or tls://"
                )));
            }
        };
        schemes.push(scheme);
        let host_port = rest.strip_suffix('/').unwrap_or(rest);
        if host_port.contains('@') {
            return Err(bad(
                "credentials go in user/password or token (and their *_file twins), not the url",
            ));
        }
        if host_port.is_empty()
            || host_port.contains(['/', '?', '#'])
            || host_port.contains(char::is_whitespace)
        {
            let one = redact_servers(one);
            return Err(bad(&format!("{one:?} is not nats://host:port")));
        }
        let with_port = match host_port.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
                if p.parse::<u16>().is_err() {
                    return Err(bad(&format!("{p:?} is not a port")));
                }
                host_port.to_owned()
            }
            _ => format!("{host_port}:4222"),
        };
        out.push(with_port);
    }
    let tls = schemes.contains(&"tls");
    if tls && schemes.contains(&"nats") {
        return Err(bad(
            "mixes nats:// and tls://: one export speaks TLS to every server or to none",
        ));
    }
    Ok((out, tls))
}

/// One way to authenticate at most: `user` + `password`/`password_file`,
/// `token`/`token_file`, `nkey_seed`/`nkey_seed_file`, or
/// `credentials_file` (a `.creds` file: user JWT and nkey seed).
fn auth(src: &Source<'_>, r: &RawExport, i: usize) -> Result<NatsAuth, ConfigError> {
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
    // The value and the span of `k` or `k_file`.
    let one_of = |a: &Option<Spanned<String>>,
                  b: &Option<Spanned<String>>,
                  k: &str|
     -> Result<Option<(String, Range<usize>, String)>, ConfigError> {
        match (a, b) {
            (Some(v), Some(_)) => {
                Err(src.error(v.span(), key(k), format!("set {k} or {k}_file, not both")))
            }
            (Some(v), None) => Ok(Some((v.get_ref().clone(), v.span(), k.to_owned()))),
            (None, Some(f)) => {
                let k = format!("{k}_file");
                Ok(Some((secret(f, &k)?, f.span(), k)))
            }
            (None, None) => Ok(None),
        }
    };
    let password = one_of(&r.password, &r.password_file, "password")?;
    let token = one_of(&r.token, &r.token_file, "token")?;
    let seed = one_of(&r.nkey_seed, &r.nkey_seed_file, "nkey_seed")?;
    let creds = r
        .credentials_file
        .as_ref()
        .map(|f| Ok::<_, ConfigError>((secret(f, "credentials_file")?, f.span())))
        .transpose()?;
    if let (Some(u), None) = (&r.user, &password) {
        return Err(src.error(
            u.span(),
            key("user"),
            "a user needs password or password_file",
        ));
    }
    if let (None, Some((_, span, k))) = (&r.user, &password) {
        return Err(src.error(span.clone(), key(k), "a password needs user"));
    }
    // Which ways are set, in the order of the keys.
    let mut ways: Vec<(&str, Range<usize>)> = Vec::new();
    if let (Some(u), Some(_)) = (&r.user, &password) {
        ways.push(("user and password", u.span()));
    }
    if let Some((_, span, _)) = &token {
        ways.push(("a token", span.clone()));
    }
    if let Some((_, span, _)) = &seed {
        ways.push(("an nkey seed", span.clone()));
    }
    if let Some((_, span)) = &creds {
        ways.push(("a credentials file", span.clone()));
    }
    if let [(first, _), (second, span), ..] = ways.as_slice() {
        return Err(src.error(
            span.clone(),
            key("auth"),
            format!("set one way to authenticate, not {first} and {second}"),
        ));
    }
    if let (Some(u), Some((p, _, _))) = (&r.user, password) {
        return Ok(NatsAuth::UserPassword {
            user: u.get_ref().clone(),
            password: p,
        });
    }
    if let Some((t, _, _)) = token {
        return Ok(NatsAuth::Token(t));
    }
    if let Some((text, span, k)) = seed {
        // The error says what is wrong with the seed, never the seed.
        let pair = KeyPair::user_seed(&text).map_err(|e| src.error(span, key(&k), e))?;
        return Ok(NatsAuth::Nkey(pair));
    }
    if let Some((text, span)) = creds {
        let c =
            Credentials::parse(&text).map_err(|e| src.error(span, key("credentials_file"), e))?;
        return Ok(NatsAuth::Credentials(c));
    }
    Ok(NatsAuth::None)
}

#[cfg(test)]
mod tests;
