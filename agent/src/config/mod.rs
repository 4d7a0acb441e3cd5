//! The agent's TOML configuration: parsing, validation and the plain types the
//! rest of the agent reads.
//!
//! Parsing runs in two steps. The document is first parsed into toml's spanned
//! tree, so every table and value keeps its byte range in the file; then each
//! part is deserialized into a `Raw*` struct (unknown keys are errors
//! everywhere) and validated into the public types, which hold no toml types.
//! Every error names the file, the line and the key path, e.g.
//! `agent.toml:7: devices[2].interval: invalid duration "5x": ...`.
//! Array indices in key paths count from 0.
//!
//! Device tables are split by driver: the keys every device has (`name`,
//! `driver`, `interval`, `timeout`, `backoff_max`) are read here, and the
//! remaining keys are deserialized into the struct of the chosen driver
//! (each driver's `config.rs`, reached through the registry in
//! [`crate::drivers`]), so an `url` on a sim device is an unknown key.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use tracing::warn;

use crate::drivers::DriverConfig;
use crate::drivers::settings::DriverTable;

/// Default for [`AgentConfig::max_concurrency`].
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Largest `batch.max_readings`: the collector's default limit.
pub const MAX_BATCH_READINGS: usize = tributary_proto::limits::MAX_READINGS_PER_BATCH;
/// Default for [`BatchConfig::max_readings`]: the OpenTelemetry
/// Collector's batch processor sends 8192 items a batch. Every batch costs
/// an fsync at each end (spool, collector commit) and a message, so at high
/// rates a larger batch is what keeps those costs small; at low rates
/// `max_delay` seals batches long before they fill.
pub const DEFAULT_BATCH_MAX_READINGS: usize = 8192;
/// Default for [`BatchConfig::max_delay`].
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(100);
/// A device's poll timeout is the smaller of this and its interval unless set.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`SpoolConfig::max_bytes`] (256 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// The smallest [`SpoolConfig::max_bytes`] accepted (64 KiB).
pub const MIN_SPOOL_MAX_BYTES: u64 = 64 << 10;

/// Keys every `[[devices]]` table may have, whatever its driver.
const DEVICE_COMMON_KEYS: &[&str] = &["name", "driver", "interval", "timeout", "backoff_max"];

/// A failing device's backoff is capped at the larger of this and its
/// interval unless `backoff_max` is set.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The agent's identity, `[A-Za-z0-9._-]+`.
    pub id: String,
    /// Collector URLs, tried in order; at least one.
    pub collectors: Vec<String>,
    /// Maximum number of polls in flight for the whole agent.
    pub max_concurrency: usize,
    /// How readings are grouped before they are sent.
    pub batch: BatchConfig,
    /// The on-disk queue of readings not yet acknowledged (`[spool]`).
    pub spool: SpoolConfig,
    /// TLS towards the collectors (`[tls]`); `None` when the section is absent.
    pub tls: Option<TlsConfig>,
    /// Timers of the connection to the collector (`[uplink]`).
    pub uplink: UplinkSettings,
    /// The devices to poll, in file order.
    pub devices: Vec<DeviceConfig>,
}

/// `[spool]`: where and how much the agent keeps on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// The spool directory. Default `./tributary-spool/<id>` (relative to the
    /// current directory); a relative `dir` in the file is resolved against
    /// the config file's directory.
    pub dir: PathBuf,
    /// Upper bound of the spool's size on disk; at least
    /// [`MIN_SPOOL_MAX_BYTES`], default [`DEFAULT_SPOOL_MAX_BYTES`].
    pub max_bytes: u64,
    /// What happens when the spool is full.
    pub policy: SpoolPolicy,
    /// fsync every appended batch (default true).
    pub sync: bool,
}

impl SpoolConfig {
    /// The defaults for an agent with this id.
    pub fn default_for(id: &str) -> Self {
        SpoolConfig {
            dir: Path::new(".").join("tributary-spool").join(id),
            max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            policy: SpoolPolicy::DropOldest,
            sync: true,
        }
    }
}

/// What a full spool does with new readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolPolicy {
    /// Drop the oldest unacknowledged readings (counted) to make room.
    #[default]
    DropOldest,
    /// Stop taking readings until there is room (polls are recorded as dropped).
    Block,
}

/// `[tls]`: how the agent verifies the collector and identifies itself.
/// Relative paths are resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    /// CA certificate(s) (PEM) that verify the collector; the system roots
    /// when `None`.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; set exactly when `key` is.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Overrides the name the collector's certificate is checked against.
    pub server_name: Option<String>,
}

/// `[uplink]`: timers of the connection to the collector. None is zero.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkSettings {
    /// HTTP/2 keepalive ping interval (default 10s).
    pub keepalive_interval: Duration,
    /// A ping unanswered this long drops the connection (default 10s).
    pub keepalive_timeout: Duration,
    /// Bound on one connection attempt (default 5s).
    pub connect_timeout: Duration,
    /// Cap of the reconnect backoff (default 5s).
    pub backoff_max: Duration,
    /// How long shutdown waits for outstanding acks (default 10s).
    pub shutdown_timeout: Duration,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        UplinkSettings {
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// How the uplink groups readings into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// A batch is sent once it holds this many readings...
    pub max_readings: usize,
    /// ...or once its oldest reading has waited this long.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_readings: DEFAULT_BATCH_MAX_READINGS,
            max_delay: DEFAULT_BATCH_MAX_DELAY,
        }
    }
}

/// One device to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Unique within the agent, never empty.
    pub name: String,
    /// Time between the starts of two polls; never zero.
    pub interval: Duration,
    /// How long one poll may take; never zero, may exceed the interval.
    pub timeout: Duration,
    /// Longest wait between two polls of a device that keeps failing; never
    /// below the interval. Default: the larger of the interval and
    /// [`DEFAULT_BACKOFF_MAX`].
    pub backoff_max: Duration,
    /// The protocol and its settings.
    pub driver: DriverConfig,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or not a valid configuration.
    #[error("{file}:{line}: {}{message}", key_prefix(key))]
    Invalid {
        /// The file as it was named.
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Key path such as `devices[2].interval`; empty for the top level.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates a configuration; `origin` only names the file in
/// error messages.
///
/// A large file is parsed a `[[devices]]` table at a time, so memory holds
/// one device's TOML tree rather than the whole file's (tens of MB for
/// 10,000 devices). When the pieces do not stand alone (a table header
/// after the devices, an error anywhere) the whole document is parsed
/// instead, so results and error messages are those of a whole parse.
pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, ConfigError> {
    let starts = line_starts(text);
    let headers = device_headers(text, &starts);
    if !headers.is_empty()
        && let Ok(Some(cfg)) = parse_parts(text, origin, &starts, &headers)
    {
        return Ok(cfg);
    }
    // Without headers to split at, the whole document is one piece, which
    // always gives an answer.
    parse_parts(text, origin, &starts, &[])?.ok_or_else(|| ConfigError::Invalid {
        file: origin.display().to_string(),
        line: 1,
        key: String::new(),
        message: "the file could not be parsed as a whole".into(),
    })
}

/// Byte offsets of the lines that are exactly a `[[devices]]` header
/// (blanks and a comment around it allowed).
fn device_headers(text: &str, starts: &[usize]) -> Vec<usize> {
    starts
        .iter()
        .copied()
        .filter(|&start| {
            let line = text.get(start..).unwrap_or("");
            let line = line.split('\n').next().unwrap_or("");
            line.trim_start_matches([' ', '\t'])
                .strip_prefix("[[devices]]")
                .map(|rest| rest.trim_start_matches([' ', '\t', '\r']))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
        })
        .collect()
}

/// Parses the text before `headers[0]` as the top level, then each piece
/// from one header to the next as a document of its own. `None` when a
/// piece holds anything besides `devices` (then only a whole parse can
/// say what the file means). With no headers, parses the whole text.
fn parse_parts(
    text: &str,
    origin: &Path,
    starts: &[usize],
    headers: &[usize],
) -> Result<Option<AgentConfig>, ConfigError> {
    let file = origin.display().to_string();
    let dir = origin.parent().map(Path::to_path_buf).unwrap_or_default();
    let source = |base: usize, end: usize| Source {
        text: text.get(base..end).unwrap_or(""),
        base,
        line_starts: starts,
        file: file.clone(),
        dir: dir.clone(),
    };
    let top_end = headers.first().copied().unwrap_or(text.len());
    let src = source(0, top_end);
    let doc = DeTable::parse(src.text).map_err(|e| src.syntax_error(&e))?;
    let root_span = doc.span();
    let mut root = doc.into_inner();
    let devices = root.remove("devices");
    if devices.is_some() && !headers.is_empty() {
        return Ok(None);
    }

    let raw: RawTop = deserialize_table(
        &src,
        root,
        root_span,
        "",
        &DeContext {
            extra_keys: &["devices"],
            what: "",
        },
    )?;
    let mut cfg = raw.validate(&src)?;

    let mut names: HashMap<String, usize> = HashMap::new();
    if let Some(devices) = devices {
        add_devices(&src, devices, &mut names, &mut cfg)?;
    }
    for (k, &base) in headers.iter().enumerate() {
        let end = headers.get(k + 1).copied().unwrap_or(text.len());
        let src = source(base, end);
        let doc = DeTable::parse(src.text).map_err(|e| src.syntax_error(&e))?;
        let mut root = doc.into_inner();
        let Some(devices) = root.remove("devices") else {
            return Ok(None);
        };
        if !root.is_empty() {
            return Ok(None);
        }
        add_devices(&src, devices, &mut names, &mut cfg)?;
    }
    if cfg.devices.is_empty() {
        warn!(config = %src.file, "no [[devices]] configured; the agent will poll nothing");
    }
    Ok(Some(cfg))
}

/// Validates the `devices` array of one (piece of a) document and appends
/// its devices to `cfg`; `names` holds the device names seen so far.
fn add_devices(
    src: &Source<'_>,
    devices: Spanned<DeValue<'_>>,
    names: &mut HashMap<String, usize>,
    cfg: &mut AgentConfig,
) -> Result<(), ConfigError> {
    let span = devices.span();
    let found = devices.get_ref().type_str();
    let DeValue::Array(list) = devices.into_inner() else {
        return Err(src.error(
            span,
            "devices",
            format!("expected an array of tables ([[devices]]), found a {found}"),
        ));
    };
    for device in list {
        let i = cfg.devices.len();
        let (name_span, dev) = parse_device(src, i, device)?;
        let line = src.line(name_span.start);
        if let Some(first) = names.insert(dev.name.clone(), line) {
            return Err(src.error(
                name_span,
                format!("devices[{i}].name"),
                format!(
                    "duplicate device name \"{}\" (first defined at line {first})",
                    dev.name
                ),
            ));
        }
        cfg.devices.push(dev);
    }
    Ok(())
}

/// The text being parsed and its name, for error messages.
pub(crate) struct Source<'a> {
    /// The part of the file being parsed; spans are relative to it.
    text: &'a str,
    /// Where `text` starts in the file.
    base: usize,
    /// Byte offset where each line of the file starts (built once: looking
    /// a line up is a binary search, so validating a large file stays
    /// linear).
    line_starts: &'a [usize],
    file: String,
    /// The config file's directory; relative paths in the file are resolved
    /// against it.
    dir: PathBuf,
}

/// Byte offsets of the starts of the lines of `text`.
fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

/// How to phrase deserialization errors of one table.
pub(crate) struct DeContext<'a> {
    /// Keys the table may hold that the `Raw*` struct does not list.
    pub(crate) extra_keys: &'a [&'a str],
    /// Appended to "unknown key" and "missing key" messages, e.g. " for driver http".
    pub(crate) what: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = self.base + offset.min(self.text.len());
        // Lines starting at or before `end`; line 1 starts at 0.
        self.line_starts.partition_point(|&start| start <= end)
    }

    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line(span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A non-empty path from the file, resolved against the file's directory.
    pub(crate) fn path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let text = value.get_ref();
        if text.trim().is_empty() {
            return Err(self.error(value.span(), key, "path must not be empty"));
        }
        Ok(self.dir.join(text))
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        self.error(span, "", format!("invalid toml: {}", e.message()))
    }

    /// Turns a serde error from deserializing the table `tree` (whose key
    /// path is `prefix`) into a located [`ConfigError`].
    fn de_error(
        &self,
        e: &toml::de::Error,
        tree: &DeValue<'_>,
        prefix: &str,
        fallback: Range<usize>,
        cx: &DeContext<'_>,
    ) -> ConfigError {
        let span = e.span().unwrap_or(fallback);
        let msg = e.message();
        // The key or table the error is about, and the table holding it.
        let located = locate(tree, span.start, prefix);
        if let Some((name, expected)) = parse_unknown_field(msg) {
            let table = located
                .as_deref()
                .map(parent_path)
                .unwrap_or(prefix)
                .to_owned();
            let mut keys: Vec<String> = Vec::new();
            let mut what = "";
            if table == prefix {
                keys.extend(cx.extra_keys.iter().map(|k| format!("`{k}`")));
                what = cx.what;
            }
            keys.extend(expected);
            let expected = if keys.is_empty() {
                "no keys are allowed here".to_owned()
            } else {
                format!("expected one of {}", keys.join(", "))
            };
            return self.error(
                span,
                table,
                format!("unknown key `{name}`{what} ({expected})"),
            );
        }
        if let Some(name) = msg
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            // The span is the table that lacks the key.
            let key = locate_table(tree, &span, prefix).unwrap_or_else(|| prefix.to_owned());
            let what = if key == prefix { cx.what } else { "" };
            return self.error(span, key, format!("missing key `{name}`{what}"));
        }
        let key = located.unwrap_or_else(|| prefix.to_owned());
        self.error(
            span,
            key,
            msg.replacen("unknown variant", "unknown value", 1),
        )
    }
}

/// `devices[0].metrics[1]` for `devices[0].metrics[1].register`.
fn parent_path(path: &str) -> &str {
    path.rsplit_once('.')
        .map(|(parent, _)| parent)
        .unwrap_or("")
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into the
/// field name and the backquoted expected names.
fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| format!("`{k}`"))
        .collect();
    Some((name.to_owned(), expected))
}

/// The deepest key path in `value` whose key or value covers byte `offset`.
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

/// The key path of the value in `value` whose span is exactly `span`.
fn locate_table(value: &DeValue<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    let children: Vec<(String, &Spanned<DeValue<'_>>)> = match value {
        DeValue::Table(table) => table
            .iter()
            .map(|(k, v)| {
                let path = if prefix.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                (path, v)
            })
            .collect(),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{prefix}[{i}]"), v))
            .collect(),
        _ => return None,
    };
    children.into_iter().find_map(|(path, v)| {
        if v.span() == *span {
            Some(path)
        } else {
            locate_table(v.get_ref(), span, &path)
        }
    })
}

/// Deserializes a spanned table into `T`, locating errors below `prefix`.
pub(crate) fn deserialize_table<'i, T: Deserialize<'i>>(
    src: &Source<'_>,
    table: DeTable<'i>,
    span: Range<usize>,
    prefix: &str,
    cx: &DeContext<'_>,
) -> Result<T, ConfigError> {
    let tree = DeValue::Table(table.clone());
    T::deserialize(ValueDeserializer::from(Spanned::new(
        span.clone(),
        DeValue::Table(table),
    )))
    .map_err(|e| src.de_error(&e, &tree, prefix, span, cx))
}

/// Parses `[[devices]]` number `index`; returns the span of its name too.
fn parse_device(
    src: &Source<'_>,
    index: usize,
    device: Spanned<DeValue<'_>>,
) -> Result<(Range<usize>, DeviceConfig), ConfigError> {
    let key = format!("devices[{index}]");
    let span = device.span();
    let DeValue::Table(mut rest) = device.into_inner() else {
        return Err(src.error(span, key, "expected a table"));
    };
    let mut common = DeTable::new();
    for k in DEVICE_COMMON_KEYS {
        if let Some((k, v)) = rest.remove_entry(*k) {
            common.insert(k, v);
        }
    }
    let raw: RawDevice = deserialize_table(
        src,
        common,
        span.clone(),
        &key,
        &DeContext {
            extra_keys: &[],
            what: "",
        },
    )?;

    let name = raw.name.get_ref().trim();
    if name.is_empty() {
        return Err(src.error(
            raw.name.span(),
            format!("{key}.name"),
            "device name must not be empty",
        ));
    }
    let interval = parse_duration(src, &raw.interval, &format!("{key}.interval"))?;
    if interval.is_zero() {
        return Err(src.error(
            raw.interval.span(),
            format!("{key}.interval"),
            "interval must be greater than 0",
        ));
    }
    let timeout = match &raw.timeout {
        None => interval.min(DEFAULT_MAX_TIMEOUT),
        Some(t) => {
            let timeout = parse_duration(src, t, &format!("{key}.timeout"))?;
            if timeout.is_zero() {
                return Err(src.error(
                    t.span(),
                    format!("{key}.timeout"),
                    "timeout must be greater than 0",
                ));
            }
            if timeout > interval {
                warn!(
                    config = %src.file,
                    device = %name,
                    timeout = %humantime::format_duration(timeout),
                    interval = %humantime::format_duration(interval),
                    "poll timeout is longer than the interval; slow polls will skip ticks"
                );
            }
            timeout
        }
    };

    let backoff_max = match &raw.backoff_max {
        None => interval.max(DEFAULT_BACKOFF_MAX),
        Some(b) => {
            let backoff_max = parse_duration(src, b, &format!("{key}.backoff_max"))?;
            if backoff_max < interval {
                return Err(src.error(
                    b.span(),
                    format!("{key}.backoff_max"),
                    format!(
                        "backoff_max {} is shorter than the interval {}",
                        humantime::format_duration(backoff_max),
                        humantime::format_duration(interval)
                    ),
                ));
            }
            backoff_max
        }
    };
    let driver = crate::drivers::parse_driver(DriverTable {
        src,
        driver: &raw.driver,
        table: rest,
        span,
        key: &key,
        common_keys: DEVICE_COMMON_KEYS,
    })?;
    Ok((
        raw.name.span(),
        DeviceConfig {
            name: name.to_owned(),
            interval,
            timeout,
            backoff_max,
            driver,
        },
    ))
}

pub(crate) fn parse_duration(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.get_ref().trim()).map_err(|e| {
        src.error(
            value.span(),
            key,
            format!("invalid duration \"{}\": {e}", value.get_ref()),
        )
    })
}

/// Checks that `value` is an absolute `http://` or `https://` URL.
pub(crate) fn check_http_url(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(value.get_ref()).map_err(|e| {
        src.error(
            value.span(),
            key,
            format!("invalid url \"{}\": {e}", value.get_ref()),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(src.error(
            value.span(),
            key,
            format!(
                "invalid url \"{}\": expected http://host... or https://host...",
                value.get_ref()
            ),
        ));
    }
    Ok(value.get_ref().clone())
}

/// Checks that a metric name is non-empty and unique within its device.
pub(crate) fn check_metric_name<'a>(
    src: &Source<'_>,
    seen: &mut HashMap<&'a str, usize>,
    name: &'a Spanned<String>,
    key: &str,
) -> Result<(), ConfigError> {
    if name.get_ref().is_empty() {
        return Err(src.error(name.span(), key, "metric name must not be empty"));
    }
    let line = src.line(name.span().start);
    if let Some(first) = seen.insert(name.get_ref(), line) {
        return Err(src.error(
            name.span(),
            key,
            format!(
                "duplicate metric name \"{}\" (first defined at line {first})",
                name.get_ref()
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    id: Spanned<String>,
    collectors: Spanned<Vec<Spanned<String>>>,
    max_concurrency: Option<Spanned<usize>>,
    batch: Option<RawBatch>,
    spool: Option<RawSpool>,
    tls: Option<RawTls>,
    uplink: Option<RawUplink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<Spanned<String>>,
    max_bytes: Option<Spanned<String>>,
    policy: Option<SpoolPolicy>,
    sync: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_readings: Option<Spanned<usize>>,
    max_delay: Option<Spanned<String>>,
}

impl RawTop {
    fn validate(self, src: &Source<'_>) -> Result<AgentConfig, ConfigError> {
        let id = self.id.get_ref();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(src.error(
                self.id.span(),
                "id",
                format!("invalid agent id \"{id}\" (expected a non-empty [A-Za-z0-9._-]+)"),
            ));
        }
        if self.collectors.get_ref().is_empty() {
            return Err(src.error(
                self.collectors.span(),
                "collectors",
                "at least one collector url is required",
            ));
        }
        let mut collectors = Vec::new();
        for (i, url) in self.collectors.get_ref().iter().enumerate() {
            collectors.push(check_http_url(src, url, &format!("collectors[{i}]"))?);
        }
        let at_least_one = |v: Option<Spanned<usize>>, key: &str, default: usize| match v {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => Err(src.error(v.span(), key, "must be at least 1")),
            Some(v) => Ok(v.into_inner()),
        };
        let max_concurrency = at_least_one(
            self.max_concurrency,
            "max_concurrency",
            DEFAULT_MAX_CONCURRENCY,
        )?;
        let mut batch = BatchConfig::default();
        if let Some(raw) = self.batch {
            if let Some(v) = raw
                .max_readings
                .as_ref()
                .filter(|v| *v.get_ref() > MAX_BATCH_READINGS)
            {
                return Err(src.error(
                    v.span(),
                    "batch.max_readings",
                    format!("at most {MAX_BATCH_READINGS} (the collector refuses larger batches)"),
                ));
            }
            batch.max_readings = at_least_one(
                raw.max_readings,
                "batch.max_readings",
                DEFAULT_BATCH_MAX_READINGS,
            )?;
            if let Some(d) = &raw.max_delay {
                batch.max_delay = parse_duration(src, d, "batch.max_delay")?;
            }
        }
        let spool = match self.spool {
            None => SpoolConfig::default_for(id),
            Some(raw) => raw.validate(src, id)?,
        };
        let tls = self.tls.map(|raw| raw.validate(src)).transpose()?;
        let uplink = match self.uplink {
            None => UplinkSettings::default(),
            Some(raw) => raw.validate(src)?,
        };
        Ok(AgentConfig {
            id: id.clone(),
            collectors,
            max_concurrency,
            batch,
            spool,
            tls,
            uplink,
            devices: Vec::new(),
        })
    }
}

impl RawSpool {
    fn validate(self, src: &Source<'_>, id: &str) -> Result<SpoolConfig, ConfigError> {
        let mut spool = SpoolConfig::default_for(id);
        if let Some(dir) = &self.dir {
            spool.dir = src.path(dir, "spool.dir")?;
        }
        if let Some(size) = &self.max_bytes {
            let bytes = parse_size(size.get_ref()).map_err(|e| {
                src.error(
                    size.span(),
                    "spool.max_bytes",
                    format!("invalid size \"{}\": {e}", size.get_ref()),
                )
            })?;
            if bytes < MIN_SPOOL_MAX_BYTES {
                return Err(src.error(
                    size.span(),
                    "spool.max_bytes",
                    format!(
                        "spool size {bytes} bytes is below the minimum of 64KiB ({MIN_SPOOL_MAX_BYTES} bytes)"
                    ),
                ));
            }
            spool.max_bytes = bytes;
        }
        if let Some(policy) = self.policy {
            spool.policy = policy;
        }
        if let Some(sync) = self.sync {
            spool.sync = sync;
        }
        Ok(spool)
    }
}

impl RawTls {
    fn validate(self, src: &Source<'_>) -> Result<TlsConfig, ConfigError> {
        let path = |v: &Option<Spanned<String>>, key: &str| {
            v.as_ref().map(|v| src.path(v, key)).transpose()
        };
        let tls = TlsConfig {
            ca: path(&self.ca, "tls.ca")?,
            cert: path(&self.cert, "tls.cert")?,
            key: path(&self.key, "tls.key")?,
            server_name: match &self.server_name {
                Some(name) if name.get_ref().trim().is_empty() => {
                    return Err(src.error(
                        name.span(),
                        "tls.server_name",
                        "server name must not be empty",
                    ));
                }
                Some(name) => Some(name.get_ref().trim().to_owned()),
                None => None,
            },
        };
        match (&self.cert, &self.key) {
            (Some(cert), None) => Err(src.error(
                cert.span(),
                "tls.cert",
                "a client certificate needs its private key: `tls.key` is missing",
            )),
            (None, Some(key)) => Err(src.error(
                key.span(),
                "tls.key",
                "a private key needs its client certificate: `tls.cert` is missing",
            )),
            _ => Ok(tls),
        }
    }
}

impl RawUplink {
    fn validate(self, src: &Source<'_>) -> Result<UplinkSettings, ConfigError> {
        let mut out = UplinkSettings::default();
        for (value, key, slot) in [
            (
                &self.keepalive_interval,
                "keepalive_interval",
                &mut out.keepalive_interval,
            ),
            (
                &self.keepalive_timeout,
                "keepalive_timeout",
                &mut out.keepalive_timeout,
            ),
            (
                &self.connect_timeout,
                "connect_timeout",
                &mut out.connect_timeout,
            ),
            (&self.backoff_max, "backoff_max", &mut out.backoff_max),
            (
                &self.shutdown_timeout,
                "shutdown_timeout",
                &mut out.shutdown_timeout,
            ),
        ] {
            if let Some(value) = value {
                let key = format!("uplink.{key}");
                let d = parse_duration(src, value, &key)?;
                if d.is_zero() {
                    return Err(src.error(value.span(), key, "must be greater than 0"));
                }
                *slot = d;
            }
        }
        Ok(out)
    }
}

/// Parses a size such as `256MiB`, `64 KiB`, `1GB` or `512B` into bytes.
/// `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("missing unit (expected one of B, KiB, MiB, GiB, KB, MB, GB)")?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("expected a number followed by a unit, e.g. 256MiB".into());
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("number {number} is too large"))?;
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit \"{other}\" (expected one of B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| "size does not fit in 64 bits".to_owned())
}

/// The keys every device has; the rest go to the driver's struct.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    driver: Spanned<String>,
    interval: Spanned<String>,
    timeout: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::http::{HttpAuth, HttpConfig, HttpFormat, JsonMetric};
    use crate::drivers::modbus::{ModbusMetric, RegisterKind, RegisterType, WordOrder};
    use crate::drivers::sim::SimConfig;

    const HEAD: &str = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

    fn parse_str(text: &str) -> Result<AgentConfig, ConfigError> {
        parse(text, Path::new("agent.toml"))
    }

    fn err(text: &str) -> String {
        match parse_str(text) {
            Ok(cfg) => panic!("expected an error, got {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A config with `n` devices of several kinds, comments and nested
    /// tables of arrays.
    fn many_devices(n: usize) -> String {
        let mut text = format!("{HEAD}max_concurrency = 8\n\n[spool]\nmax_bytes = \"1MiB\"\n");
        for i in 0..n {
            text.push_str(&match i % 3 {
                0 => format!("\n[[devices]] # sim {i}\nname = \"s{i}\"\ndriver = \"sim\"\ninterval = \"1s\"\nseries = {i}\n"),
                1 => format!(
                    "\n  [[devices]]\nname = \"h{i}\"\ndriver = \"http\"\ninterval = \"1s\"\nurl = \"http://127.0.0.1:80/{i}\"\n\
                     [[devices.metrics]]\nname = \"a\"\npointer = \"/a\"\n[[devices.metrics]]\nname = \"b\"\npointer = \"/b\"\nunit = \"W\"\n"
                ),
                _ => format!(
                    "\n[[devices]]\nname = \"m{i}\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\n\
                     metrics = [\n  {{ name = \"a\", register = {i} }},\n]\n"
                ),
            });
        }
        text
    }

    /// The whole-document parse (the reference the pieces must match).
    fn parse_whole(text: &str) -> Result<AgentConfig, ConfigError> {
        parse_parts(text, Path::new("agent.toml"), &line_starts(text), &[])
            .map(|cfg| cfg.expect("a whole parse always answers"))
    }

    #[test]
    fn line_numbers_match_counting_newlines() {
        let text = "a\n\nbc\nd";
        let starts = line_starts(text);
        let src = Source {
            text,
            base: 0,
            line_starts: &starts,
            file: String::new(),
            dir: PathBuf::new(),
        };
        for offset in 0..=text.len() + 2 {
            let counted = 1 + text.as_bytes()[..offset.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            assert_eq!(src.line(offset), counted, "offset {offset}");
        }
    }

    #[test]
    fn parsing_by_device_equals_parsing_the_whole_file() {
        let text = many_devices(30);
        let headers = device_headers(&text, &line_starts(&text));
        assert_eq!(
            headers.len(),
            30,
            "every [[devices]] header is a split point"
        );
        let cfg = parse_str(&text).expect("valid");
        assert_eq!(cfg.devices.len(), 30);
        assert_eq!(cfg, parse_whole(&text).expect("valid"));
        let DriverConfig::Http(h) = &cfg.devices[1].driver else {
            panic!("http device: {:?}", cfg.devices[1]);
        };
        assert_eq!(h.metrics.len(), 2);
    }

    #[test]
    fn errors_in_a_later_device_name_the_file_line() {
        let good = many_devices(10);
        // A bad interval in the last device, and a duplicate name.
        for (extra, needle) in [
            (
                "\n[[devices]]\nname = \"x\"\ndriver = \"sim\"\ninterval = \"soon\"\n",
                "interval",
            ),
            (
                "\n[[devices]]\nname = \"s0\"\ndriver = \"sim\"\ninterval = \"1s\"\n",
                "duplicate device name \"s0\"",
            ),
            ("\n[[devices]]\nname = = 1\n", "invalid toml"),
        ] {
            let text = format!("{good}{extra}");
            let e = parse_str(&text).expect_err("invalid");
            let whole = parse_whole(&text).expect_err("invalid");
            assert_eq!(e.to_string(), whole.to_string());
            assert!(e.to_string().contains(needle), "{e}");
            let ConfigError::Invalid { line, .. } = e else {
                panic!("{e}");
            };
            assert!(
                line > good.lines().count(),
                "line {line} is in the last device"
            );
        }
    }

    #[test]
    fn a_table_after_the_devices_is_read_as_toml_says() {
        // `[batch]` after the devices is a top-level table: the pieces do not
        // stand alone, and the whole document decides.
        let text = format!("{}\n[batch]\nmax_readings = 7\n", many_devices(4));
        let cfg = parse_str(&text).expect("valid");
        assert_eq!(cfg.batch.max_readings, 7);
        assert_eq!(cfg, parse_whole(&text).expect("valid"));
        // A `[[devices]]` header inside a multi-line string is no split point.
        let text = format!(
            "{HEAD}[[devices]]\nname = \"e\"\ndriver = \"exec\"\ninterval = \"1s\"\ncommand = \"\"\"\n[[devices]]\n\"\"\"\n"
        );
        assert_eq!(
            parse_str(&text).map_err(|e| e.to_string()),
            parse_whole(&text).map_err(|e| e.to_string())
        );
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
id = "edge-1"
collectors = ["http://127.0.0.1:7400", "https://c2.example:7400"]
max_concurrency = 64

[batch]
max_readings = 500
max_delay = "50ms"

[[devices]]
name = "counter-1"
driver = "sim"
interval = "50ms"
series = 3

[[devices]]
name = "meter"
driver = "http"
interval = "5s"
url = "http://127.0.0.1:8080/meter"
format = "json"
metrics = [{ name = "power_w", pointer = "/power", unit = "W" }]

[[devices]]
name = "node"
driver = "http"
interval = "10s"
timeout = "2s"
url = "http://127.0.0.1:9100/metrics"
format = "prometheus"

[[devices]]
name = "plc"
driver = "modbus"
interval = "1s"
timeout = "300ms"
address = "127.0.0.1:5020"
metrics = [
  { name = "temp_c", register = 100, kind = "holding", type = "f32", word_order = "little", scale = 0.1, unit = "C" },
  { name = "count", register = 7, kind = "input" },
]
"#;
        let cfg = parse_str(text).expect("valid config");
        assert_eq!(cfg.id, "edge-1");
        assert_eq!(cfg.collectors.len(), 2);
        assert_eq!(cfg.max_concurrency, 64);
        assert_eq!(
            cfg.batch,
            BatchConfig {
                max_readings: 500,
                max_delay: Duration::from_millis(50)
            }
        );
        assert_eq!(cfg.devices.len(), 4);
        let sim = &cfg.devices[0];
        assert_eq!(sim.interval, Duration::from_millis(50));
        assert_eq!(sim.timeout, Duration::from_millis(50), "min(1s, interval)");
        assert_eq!(sim.driver, DriverConfig::Sim(SimConfig { series: 3 }));
        assert_eq!(cfg.devices[1].timeout, Duration::from_secs(1));
        assert_eq!(
            cfg.devices[1].driver,
            DriverConfig::Http(HttpConfig {
                url: "http://127.0.0.1:8080/meter".into(),
                format: HttpFormat::Json,
                metrics: vec![JsonMetric {
                    name: "power_w".into(),
                    pointer: "/power".into(),
                    unit: "W".into()
                }],
                auth: HttpAuth::None,
                ca: None,
            })
        );
        assert_eq!(cfg.devices[2].timeout, Duration::from_secs(2));
        let DriverConfig::Modbus(m) = &cfg.devices[3].driver else {
            panic!("expected modbus, got {:?}", cfg.devices[3].driver);
        };
        assert_eq!(m.unit_id, 1);
        assert_eq!(m.address, "127.0.0.1:5020");
        assert_eq!(
            m.metrics[0],
            ModbusMetric {
                name: "temp_c".into(),
                register: 100,
                kind: RegisterKind::Holding,
                data_type: RegisterType::F32,
                word_order: WordOrder::Little,
                scale: 0.1,
                unit: "C".into(),
            }
        );
        assert_eq!(m.metrics[1].kind, RegisterKind::Input);
        assert_eq!(m.metrics[1].data_type, RegisterType::U16);
        assert_eq!(m.metrics[1].word_order, WordOrder::Big);
        assert_eq!(m.metrics[1].scale, 1.0);
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse_str(HEAD).expect("valid config");
        assert_eq!(cfg.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(cfg.batch, BatchConfig::default());
        assert!(cfg.devices.is_empty());
    }

    #[test]
    fn unknown_top_level_key_names_line_and_key() {
        let e = err(&format!("{HEAD}intervall = 5\n"));
        assert!(
            e.starts_with("agent.toml:3: unknown key `intervall` (expected one of "),
            "{e}"
        );
        assert!(e.contains("`devices`") && e.contains("`collectors`"), "{e}");
    }

    #[test]
    fn unknown_device_key_names_device_and_driver() {
        let text = format!(
            "{HEAD}\n[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\nurl = \"http://x\"\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:8: devices[0]: unknown key `url` for driver sim (expected one of `name`, `driver`, `interval`, `timeout`, `backoff_max`, `series`)"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_in_inline_metric_table() {
        let text = format!(
            "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [\n  {{ name = \"a\", register = 1 }},\n  {{ name = \"b\", registr = 2 }},\n]\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:10: devices[0].metrics[1]: unknown key `registr`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_line_and_key() {
        let text = format!(
            "{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\n\n[[devices]]\nname = \"b\"\ndriver = \"sim\"\ninterval = \"5x\"\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:11: devices[1].interval: invalid duration \"5x\": "),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_located() {
        let text = format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = 5\n");
        let e = err(&text);
        assert!(e.starts_with("agent.toml:6: devices[0].interval: "), "{e}");
        let text = format!(
            "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [{{ name = \"a\", register = 1, type = \"f64\" }}]\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:8: devices[0].metrics[0].type: unknown value `f64`"),
            "{e}"
        );
    }

    #[test]
    fn zero_interval_is_rejected() {
        let text =
            format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"0s\"\n");
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:6: devices[0].interval: interval must be greater than 0"),
            "{e}"
        );
    }

    #[test]
    fn missing_url_names_device_and_key() {
        let text = format!(
            "{HEAD}\n[[devices]]\nname = \"meter\"\ndriver = \"http\"\ninterval = \"1s\"\n"
        );
        let e = err(&text);
        assert_eq!(
            e,
            "agent.toml:4: devices[0]: missing key `url` for driver http"
        );
    }

    #[test]
    fn missing_key_in_inline_metric_table() {
        let text = format!(
            "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [\n  {{ name = \"a\", register = 1 }},\n  {{ name = \"b\" }},\n]\n"
        );
        let e = err(&text);
        assert_eq!(
            e,
            "agent.toml:10: devices[0].metrics[1]: missing key `register`"
        );
    }

    #[test]
    fn missing_required_top_level_key() {
        let e = err("id = \"a\"\n");
        assert_eq!(e, "agent.toml:1: missing key `collectors`");
    }

    #[test]
    fn duplicate_device_names_are_rejected() {
        let dev = "[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\n";
        let e = err(&format!("{HEAD}{dev}{dev}"));
        assert_eq!(
            e,
            "agent.toml:8: devices[1].name: duplicate device name \"a\" (first defined at line 4)"
        );
    }

    #[test]
    fn unknown_driver_is_rejected() {
        let text =
            format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"snmpx\"\ninterval = \"1s\"\n");
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:5: devices[0].driver: unknown driver \"snmpx\""),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = err("id = \"a b\"\ncollectors = [\"http://x:1\"]\n");
        assert!(e.starts_with("agent.toml:1: id: invalid agent id"), "{e}");
        let e = err("id = \"a\"\ncollectors = []\n");
        assert!(
            e.starts_with("agent.toml:2: collectors: at least one"),
            "{e}"
        );
        let e = err("id = \"a\"\ncollectors = [\"http://x:1\",\n \"ftp://y\"]\n");
        assert!(
            e.starts_with("agent.toml:3: collectors[1]: invalid url"),
            "{e}"
        );
        let e = err(&format!("{HEAD}max_concurrency = 0\n"));
        assert_eq!(e, "agent.toml:3: max_concurrency: must be at least 1");
        let e = err(&format!("{HEAD}[batch]\nmax_delay = \"soon\"\n"));
        assert!(
            e.starts_with("agent.toml:4: batch.max_delay: invalid duration"),
            "{e}"
        );
        let text = format!(
            "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"nohost\"\nmetrics = [{{ name = \"a\", register = 1 }}]\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:7: devices[0].address: invalid address"),
            "{e}"
        );
        let text = format!(
            "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:1\"\nmetrics = [{{ name = \"a\", register = 65535, type = \"u32\" }}]\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:8: devices[0].metrics[0].register: "),
            "{e}"
        );
        let text = format!(
            "{HEAD}[[devices]]\nname = \"j\"\ndriver = \"http\"\ninterval = \"1s\"\nurl = \"http://h/\"\nmetrics = [{{ name = \"a\", pointer = \"/a\" }},\n {{ name = \"a\", pointer = \"b\" }}]\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("agent.toml:9: devices[0].metrics[1].name: duplicate metric name"),
            "{e}"
        );
        let text = format!("{HEAD}[[devices]]\nname = \"\"\ndriver = \"sim\"\ninterval = \"1s\"\n");
        let e = err(&text);
        assert_eq!(
            e,
            "agent.toml:4: devices[0].name: device name must not be empty"
        );
    }

    #[test]
    fn spool_tls_uplink_defaults() {
        let cfg = parse_str(HEAD).expect("valid config");
        assert_eq!(
            cfg.spool,
            SpoolConfig {
                dir: PathBuf::from("./tributary-spool/edge-1"),
                max_bytes: 256 * 1024 * 1024,
                policy: SpoolPolicy::DropOldest,
                sync: true,
            }
        );
        assert_eq!(cfg.tls, None);
        assert_eq!(cfg.uplink, UplinkSettings::default());
        assert_eq!(cfg.uplink.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn spool_tls_uplink_sections_parse() {
        let text = format!(
            "{HEAD}[spool]\ndir = \"/var/lib/tributary/spool\"\nmax_bytes = \"1GB\"\npolicy = \"block\"\nsync = false\n\
             [tls]\nca = \"ca.pem\"\ncert = \"/etc/t/edge-1.pem\"\nkey = \"edge-1-key.pem\"\nserver_name = \"localhost\"\n\
             [uplink]\nkeepalive_interval = \"2s\"\nkeepalive_timeout = \"3s\"\nconnect_timeout = \"500ms\"\nbackoff_max = \"1m\"\nshutdown_timeout = \"20s\"\n"
        );
        let cfg = parse(&text, Path::new("/etc/tributary/agent.toml")).expect("valid config");
        assert_eq!(
            cfg.spool,
            SpoolConfig {
                dir: PathBuf::from("/var/lib/tributary/spool"),
                max_bytes: 1_000_000_000,
                policy: SpoolPolicy::Block,
                sync: false,
            }
        );
        assert_eq!(
            cfg.tls,
            Some(TlsConfig {
                ca: Some(PathBuf::from("/etc/tributary/ca.pem")),
                cert: Some(PathBuf::from("/etc/t/edge-1.pem")),
                key: Some(PathBuf::from("/etc/tributary/edge-1-key.pem")),
                server_name: Some("localhost".into()),
            })
        );
        assert_eq!(
            cfg.uplink,
            UplinkSettings {
                keepalive_interval: Duration::from_secs(2),
                keepalive_timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_millis(500),
                backoff_max: Duration::from_secs(60),
                shutdown_timeout: Duration::from_secs(20),
            }
        );
        // Relative spool dir: against the config file's directory too.
        let cfg = parse(
            &format!("{HEAD}[spool]\ndir = \"spool\"\n[tls]\nca = \"ca.pem\"\n"),
            Path::new("conf/agent.toml"),
        )
        .expect("valid config");
        assert_eq!(cfg.spool.dir, PathBuf::from("conf/spool"));
        assert_eq!(
            cfg.tls.and_then(|t| t.ca),
            Some(PathBuf::from("conf/ca.pem"))
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("5KB"), Ok(5000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert!(
            parse_size("100")
                .err()
                .unwrap_or_default()
                .contains("missing unit")
        );
        assert!(parse_size("MiB").is_err());
        assert!(
            parse_size("5 TB")
                .err()
                .unwrap_or_default()
                .contains("unknown unit \"TB\"")
        );
        assert!(parse_size("99999999999999999999B").is_err());
        assert!(
            parse_size("99999999999GiB")
                .err()
                .unwrap_or_default()
                .contains("64 bits")
        );
    }

    #[test]
    fn spool_tls_uplink_errors_are_located() {
        let e = err(&format!("{HEAD}[spool]\nmax_bytes = \"1KiB\"\n"));
        assert!(
            e.starts_with(
                "agent.toml:4: spool.max_bytes: spool size 1024 bytes is below the minimum of 64KiB"
            ),
            "{e}"
        );
        let e = err(&format!("{HEAD}[spool]\nmax_bytes = \"12 parsecs\"\n"));
        assert!(
            e.starts_with(
                "agent.toml:4: spool.max_bytes: invalid size \"12 parsecs\": unknown unit"
            ),
            "{e}"
        );
        let e = err(&format!("{HEAD}[spool]\npolicy = \"drop_newest\"\n"));
        assert!(
            e.starts_with("agent.toml:4: spool.policy: unknown value `drop_newest`"),
            "{e}"
        );
        let e = err(&format!("{HEAD}[spool]\nsize = 3\n"));
        assert!(
            e.starts_with("agent.toml:4: spool: unknown key `size`"),
            "{e}"
        );
        let e = err(&format!("{HEAD}[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n"));
        assert_eq!(
            e,
            "agent.toml:5: tls.cert: a client certificate needs its private key: `tls.key` is missing"
        );
        let e = err(&format!("{HEAD}[tls]\nkey = \"k.pem\"\n"));
        assert!(e.starts_with("agent.toml:4: tls.key: "), "{e}");
        let e = err(&format!("{HEAD}[tls]\nca = \"\"\n"));
        assert_eq!(e, "agent.toml:4: tls.ca: path must not be empty");
        let e = err(&format!("{HEAD}[uplink]\n\nbackoff_max = \"0s\"\n"));
        assert_eq!(
            e,
            "agent.toml:5: uplink.backoff_max: must be greater than 0"
        );
        let e = err(&format!("{HEAD}[uplink]\nconnect_timeout = \"fast\"\n"));
        assert!(
            e.starts_with("agent.toml:4: uplink.connect_timeout: invalid duration \"fast\""),
            "{e}"
        );
    }

    #[test]
    fn toml_syntax_error_names_line() {
        let e = err(&format!("{HEAD}\nid = = 3\n"));
        assert!(e.starts_with("agent.toml:4: invalid toml: "), "{e}");
    }

    #[test]
    fn load_names_missing_file() {
        let e = load(Path::new("/nonexistent/agent.toml")).expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/agent.toml: cannot read config file: "),
            "{e}"
        );
    }
}
