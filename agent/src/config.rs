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
//! `driver`, `interval`, `timeout`) are read first, and the remaining keys are
//! deserialized into the struct of the chosen driver, so an `url` on a sim
//! device is an unknown key. Adding a driver means adding a `Raw*` struct, a
//! [`DriverConfig`] variant and one arm in `parse_device`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use tracing::warn;

/// Default for [`AgentConfig::max_concurrency`].
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Default for [`AgentConfig::buffer_max_readings`].
pub const DEFAULT_BUFFER_MAX_READINGS: usize = 1_000_000;
/// Default for [`BatchConfig::max_readings`].
pub const DEFAULT_BATCH_MAX_READINGS: usize = 1000;
/// Default for [`BatchConfig::max_delay`].
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(100);
/// A device's poll timeout is the smaller of this and its interval unless set.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(1);

/// The drivers a device may name in `driver = "..."`.
pub const DRIVERS: &[&str] = &["sim", "http", "modbus"];

/// Keys every `[[devices]]` table may have, whatever its driver.
const DEVICE_COMMON_KEYS: &[&str] = &["name", "driver", "interval", "timeout"];

/// The validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The agent's identity, `[A-Za-z0-9._-]+`.
    pub id: String,
    /// Collector URLs, tried in order; at least one.
    pub collectors: Vec<String>,
    /// Maximum number of polls in flight for the whole agent.
    pub max_concurrency: usize,
    /// Unacknowledged readings kept in memory before the oldest are dropped.
    pub buffer_max_readings: usize,
    /// How readings are grouped before they are sent.
    pub batch: BatchConfig,
    /// The devices to poll, in file order.
    pub devices: Vec<DeviceConfig>,
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
    /// The protocol and its settings.
    pub driver: DriverConfig,
}

/// Protocol-specific settings of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverConfig {
    Sim(SimConfig),
    Http(HttpConfig),
    Modbus(ModbusConfig),
}

impl DriverConfig {
    /// The name used in `driver = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            DriverConfig::Sim(_) => "sim",
            DriverConfig::Http(_) => "http",
            DriverConfig::Modbus(_) => "modbus",
        }
    }
}

/// The simulated device: a counter plus optional synthetic gauges.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimConfig {
    /// Extra `gauge` series per poll, labelled `i = "0".."series-1"`.
    pub series: u32,
}

/// A device read with an HTTP GET.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// How the response body is read.
    pub format: HttpFormat,
    /// The values to extract; non-empty for [`HttpFormat::Json`], empty for
    /// [`HttpFormat::Prometheus`].
    pub metrics: Vec<JsonMetric>,
}

/// Body format of an HTTP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    /// A JSON document; values are picked by JSON pointer.
    Json,
    /// Prometheus text exposition format 0.0.4; every sample is kept.
    Prometheus,
}

/// One value picked out of a JSON document.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMetric {
    pub name: String,
    /// An RFC 6901 JSON pointer, e.g. `/power` (`""` is the whole document).
    pub pointer: String,
    /// Empty when not given.
    pub unit: String,
}

/// A Modbus TCP device (or a gateway in front of it).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// `host:port`.
    pub address: String,
    /// Modbus unit (slave) id; 1 unless set.
    pub unit_id: u8,
    /// Non-empty.
    pub metrics: Vec<ModbusMetric>,
}

/// One value decoded from one or two registers.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusMetric {
    pub name: String,
    /// Address of the first register (0-based, as on the wire).
    pub register: u16,
    pub kind: RegisterKind,
    pub data_type: RegisterType,
    pub word_order: WordOrder,
    /// The decoded value is multiplied by this; 1.0 unless set, never 0.
    pub scale: f64,
    /// Empty when not given.
    pub unit: String,
}

/// Which register table a metric is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Function code 3.
    Holding,
    /// Function code 4.
    Input,
}

/// How register words are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl RegisterKind {
    /// The name used in the config (`holding`, `input`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }
}

impl RegisterType {
    /// The name used in the config (`u16`, ..., `f32`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterType::U16 => "u16",
            RegisterType::I16 => "i16",
            RegisterType::U32 => "u32",
            RegisterType::I32 => "i32",
            RegisterType::F32 => "f32",
        }
    }

    /// How many 16-bit registers a value of this type spans.
    pub fn words(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
        }
    }
}

/// Order of the two registers of a 32-bit value (bytes within a register are
/// always big-endian, as Modbus specifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The first register holds the high word.
    #[default]
    Big,
    /// The first register holds the low word.
    Little,
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
pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, ConfigError> {
    let src = Source {
        text,
        file: origin.display().to_string(),
    };
    let doc = DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
    let root_span = doc.span();
    let mut root = doc.into_inner();
    let devices = root.remove("devices");

    let tree = DeValue::Table(root.clone());
    let raw = RawTop::deserialize(ValueDeserializer::from(Spanned::new(
        root_span.clone(),
        DeValue::Table(root),
    )))
    .map_err(|e| {
        src.de_error(
            &e,
            &tree,
            "",
            root_span.clone(),
            &DeContext {
                extra_keys: &["devices"],
                what: "",
            },
        )
    })?;
    let mut cfg = raw.validate(&src)?;

    if let Some(devices) = devices {
        let span = devices.span();
        let DeValue::Array(list) = devices.get_ref() else {
            return Err(src.error(
                span,
                "devices",
                format!(
                    "expected an array of tables ([[devices]]), found a {}",
                    devices.get_ref().type_str()
                ),
            ));
        };
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, device) in list.iter().enumerate() {
            let (name_span, dev) = parse_device(&src, i, device.clone())?;
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
    }
    if cfg.devices.is_empty() {
        warn!(config = %src.file, "no [[devices]] configured; the agent will poll nothing");
    }
    Ok(cfg)
}

/// The text being parsed and its name, for error messages.
struct Source<'a> {
    text: &'a str,
    file: String,
}

/// How to phrase deserialization errors of one table.
struct DeContext<'a> {
    /// Keys the table may hold that the `Raw*` struct does not list.
    extra_keys: &'a [&'a str],
    /// Appended to "unknown key" and "missing key" messages, e.g. " for driver http".
    what: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(
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
        let key = located.unwrap_or_else(|| prefix.to_owned());
        if let Some(name) = msg
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let what = if key == prefix { cx.what } else { "" };
            return self.error(span, key, format!("missing key `{name}`{what}"));
        }
        self.error(span, key, msg)
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

/// Deserializes a spanned table into `T`, locating errors below `prefix`.
fn deserialize_table<'i, T: Deserialize<'i>>(
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

    let driver = raw.driver.get_ref().as_str();
    let what = format!(" for driver {driver}");
    let cx = DeContext {
        extra_keys: DEVICE_COMMON_KEYS,
        what: &what,
    };
    let driver = match driver {
        "sim" => {
            let raw: RawSim = deserialize_table(src, rest, span.clone(), &key, &cx)?;
            DriverConfig::Sim(SimConfig {
                series: raw.series.unwrap_or(0),
            })
        }
        "http" => {
            let raw: RawHttp = deserialize_table(src, rest, span.clone(), &key, &cx)?;
            DriverConfig::Http(raw.validate(src, &key, span.clone())?)
        }
        "modbus" => {
            let raw: RawModbus = deserialize_table(src, rest, span.clone(), &key, &cx)?;
            DriverConfig::Modbus(raw.validate(src, &key)?)
        }
        other => {
            return Err(src.error(
                raw.driver.span(),
                format!("{key}.driver"),
                format!(
                    "unknown driver \"{other}\" (expected one of {})",
                    DRIVERS.join(", ")
                ),
            ));
        }
    };
    Ok((
        raw.name.span(),
        DeviceConfig {
            name: name.to_owned(),
            interval,
            timeout,
            driver,
        },
    ))
}

fn parse_duration(
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
fn check_http_url(
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
fn check_metric_name<'a>(
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
    buffer_max_readings: Option<Spanned<usize>>,
    batch: Option<RawBatch>,
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
        let buffer_max_readings = at_least_one(
            self.buffer_max_readings,
            "buffer_max_readings",
            DEFAULT_BUFFER_MAX_READINGS,
        )?;
        let mut batch = BatchConfig::default();
        if let Some(raw) = self.batch {
            batch.max_readings = at_least_one(
                raw.max_readings,
                "batch.max_readings",
                DEFAULT_BATCH_MAX_READINGS,
            )?;
            if let Some(d) = &raw.max_delay {
                batch.max_delay = parse_duration(src, d, "batch.max_delay")?;
            }
        }
        Ok(AgentConfig {
            id: id.clone(),
            collectors,
            max_concurrency,
            buffer_max_readings,
            batch,
            devices: Vec::new(),
        })
    }
}

/// The keys every device has; the rest go to the driver's struct.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    driver: Spanned<String>,
    interval: Spanned<String>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    series: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Spanned<String>,
    format: Option<HttpFormat>,
    metrics: Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonMetric {
    name: Spanned<String>,
    pointer: Spanned<String>,
    unit: Option<String>,
}

impl RawHttp {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
    ) -> Result<HttpConfig, ConfigError> {
        let url = check_http_url(src, &self.url, &format!("{key}.url"))?;
        let format = self.format.unwrap_or(HttpFormat::Json);
        let mut metrics = Vec::new();
        match (format, &self.metrics) {
            (HttpFormat::Prometheus, Some(m)) => {
                return Err(src.error(
                    m.span(),
                    format!("{key}.metrics"),
                    "`metrics` is not used with format \"prometheus\" (every sample is kept)",
                ));
            }
            (HttpFormat::Prometheus, None) => {}
            (HttpFormat::Json, None) => {
                return Err(src.error(
                    span,
                    key,
                    "missing key `metrics` for driver http with format \"json\"",
                ));
            }
            (HttpFormat::Json, Some(list)) => {
                if list.get_ref().is_empty() {
                    return Err(src.error(
                        list.span(),
                        format!("{key}.metrics"),
                        "at least one metric is required",
                    ));
                }
                let mut seen = HashMap::new();
                for (i, m) in list.get_ref().iter().enumerate() {
                    let m = m.get_ref();
                    let mkey = format!("{key}.metrics[{i}]");
                    check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
                    let pointer = m.pointer.get_ref();
                    if !pointer.is_empty() && !pointer.starts_with('/') {
                        return Err(src.error(
                            m.pointer.span(),
                            format!("{mkey}.pointer"),
                            format!(
                                "invalid json pointer \"{pointer}\" (expected \"\" or a path starting with /)"
                            ),
                        ));
                    }
                    metrics.push(JsonMetric {
                        name: m.name.get_ref().clone(),
                        pointer: pointer.clone(),
                        unit: m.unit.clone().unwrap_or_default(),
                    });
                }
            }
        }
        Ok(HttpConfig {
            url,
            format,
            metrics,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    address: Spanned<String>,
    unit_id: Option<u8>,
    metrics: Spanned<Vec<Spanned<RawModbusMetric>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbusMetric {
    name: Spanned<String>,
    register: Spanned<u16>,
    kind: Option<RegisterKind>,
    #[serde(rename = "type")]
    data_type: Option<RegisterType>,
    word_order: Option<WordOrder>,
    scale: Option<Spanned<f64>>,
    unit: Option<String>,
}

impl RawModbus {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<ModbusConfig, ConfigError> {
        let address = self.address.get_ref().trim();
        let valid_address = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_address {
            return Err(src.error(
                self.address.span(),
                format!("{key}.address"),
                format!("invalid address \"{address}\" (expected host:port)"),
            ));
        }
        if self.metrics.get_ref().is_empty() {
            return Err(src.error(
                self.metrics.span(),
                format!("{key}.metrics"),
                "at least one metric is required",
            ));
        }
        let mut metrics = Vec::new();
        let mut seen = HashMap::new();
        for (i, m) in self.metrics.get_ref().iter().enumerate() {
            let m = m.get_ref();
            let mkey = format!("{key}.metrics[{i}]");
            check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
            let data_type = m.data_type.unwrap_or(RegisterType::U16);
            let register = *m.register.get_ref();
            if u32::from(register) + u32::from(data_type.words()) > 0x1_0000 {
                return Err(src.error(
                    m.register.span(),
                    format!("{mkey}.register"),
                    format!("register {register} with a 32-bit type runs past register 65535"),
                ));
            }
            let scale = match &m.scale {
                None => 1.0,
                Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                    return Err(src.error(
                        s.span(),
                        format!("{mkey}.scale"),
                        format!(
                            "invalid scale {} (expected a finite non-zero number)",
                            s.get_ref()
                        ),
                    ));
                }
                Some(s) => *s.get_ref(),
            };
            metrics.push(ModbusMetric {
                name: m.name.get_ref().clone(),
                register,
                kind: m.kind.unwrap_or(RegisterKind::Holding),
                data_type,
                word_order: m.word_order.unwrap_or_default(),
                scale,
                unit: m.unit.clone().unwrap_or_default(),
            });
        }
        Ok(ModbusConfig {
            address: address.to_owned(),
            unit_id: self.unit_id.unwrap_or(1),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn full_example_parses() {
        let text = r#"
id = "edge-1"
collectors = ["http://127.0.0.1:7400", "https://c2.example:7400"]
max_concurrency = 64
buffer_max_readings = 5000

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
        assert_eq!(cfg.buffer_max_readings, 5000);
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
        assert_eq!(cfg.buffer_max_readings, DEFAULT_BUFFER_MAX_READINGS);
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
            e.starts_with("agent.toml:8: devices[0]: unknown key `url` for driver sim (expected one of `name`, `driver`, `interval`, `timeout`, `series`)"),
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
            e.starts_with("agent.toml:8: devices[0].metrics[0].type: unknown variant `f64`"),
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
