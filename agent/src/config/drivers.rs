//! Per-driver settings of a `[[devices]]` table: the public types each
//! driver reads, the `Raw*` structs they are deserialized from, and their
//! validation. Adding a driver means adding a `Raw*` struct, a
//! [`DriverConfig`] variant and one arm in [`parse_driver`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use super::{
    ConfigError, DeContext, Source, check_http_url, check_metric_name, deserialize_table,
    parse_duration,
};

/// The drivers a device may name in `driver = "..."`.
pub const DRIVERS: &[&str] = &[
    "sim",
    "http",
    "prometheus",
    "modbus",
    "snmp",
    "mqtt",
    "tcp",
    "exec",
];

/// Protocol-specific settings of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverConfig {
    Sim(SimConfig),
    Http(HttpConfig),
    Modbus(ModbusConfig),
    Snmp(SnmpConfig),
    Mqtt(MqttConfig),
    Tcp(TcpConfig),
    Exec(ExecConfig),
}

impl DriverConfig {
    /// The name used in `driver = "..."` (`driver = "prometheus"` reads as
    /// `http` with `format = "prometheus"`).
    pub fn name(&self) -> &'static str {
        match self {
            DriverConfig::Sim(_) => "sim",
            DriverConfig::Http(_) => "http",
            DriverConfig::Modbus(_) => "modbus",
            DriverConfig::Snmp(_) => "snmp",
            DriverConfig::Mqtt(_) => "mqtt",
            DriverConfig::Tcp(_) => "tcp",
            DriverConfig::Exec(_) => "exec",
        }
    }

    /// The shared endpoint this device's polls are paced on, if any (a
    /// Modbus gateway serves many devices and wants few requests at once).
    pub fn endpoint(&self) -> Option<EndpointLimits> {
        match self {
            DriverConfig::Modbus(m) => Some(EndpointLimits {
                key: format!("modbus://{}", m.address),
                max_concurrency: m.max_concurrency,
                pause: m.request_pause,
            }),
            _ => None,
        }
    }
}

/// Pacing of one endpoint shared by several devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Devices with the same key share the limits, e.g. `modbus://10.0.0.5:502`.
    pub key: String,
    /// Polls in flight at once against the endpoint.
    pub max_concurrency: usize,
    /// Quiet time after each poll before the next may start.
    pub pause: Duration,
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
    /// Credentials sent with every request.
    pub auth: HttpAuth,
    /// A CA certificate (PEM) trusted besides the system roots, for devices
    /// with certificates of a private CA.
    pub ca: Option<PathBuf>,
}

/// HTTP credentials.
#[derive(Clone, PartialEq, Default)]
pub enum HttpAuth {
    #[default]
    None,
    /// `Authorization: Basic` (`username`, `password`).
    Basic { username: String, password: String },
    /// `Authorization: Bearer` (`bearer_token`).
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::None => f.write_str("None"),
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            HttpAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Body format of an HTTP device or an exec program's output.
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
    /// Polls in flight at once against this address, over every device that
    /// uses it (the smallest value any of them sets wins); 1 unless set.
    pub max_concurrency: usize,
    /// Wait after a new connection before the first request (some gateways
    /// drop requests sent too early); zero unless set.
    pub connect_delay: Duration,
    /// Quiet time between two requests to this address, within a poll and
    /// between polls of devices sharing it; zero unless set.
    pub request_pause: Duration,
}

/// One value decoded from one or two registers, or one bit.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusMetric {
    pub name: String,
    /// Address of the first register or bit (0-based, as on the wire).
    pub register: u16,
    pub kind: RegisterKind,
    pub data_type: RegisterType,
    pub word_order: WordOrder,
    /// The decoded value is multiplied by this; 1.0 unless set, never 0.
    pub scale: f64,
    /// Empty when not given.
    pub unit: String,
}

/// Which table a metric is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Function code 3.
    Holding,
    /// Function code 4.
    Input,
    /// Function code 1: read/write bits.
    Coil,
    /// Function code 2: read-only bits.
    Discrete,
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
    /// A coil or discrete input.
    Bool,
}

impl RegisterKind {
    /// The name used in the config (`holding`, `input`, `coil`, `discrete`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
        }
    }

    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
}

impl RegisterType {
    /// The name used in the config (`u16`, ..., `f32`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterType::U16 => "u16",
            RegisterType::I16 => "i16",
            RegisterType::U32 => "u32",
            RegisterType::I32 => "i32",
            RegisterType::F32 => "f32",
            RegisterType::Bool => "bool",
        }
    }

    /// How many registers (or bits) a value of this type spans.
    pub fn words(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 | RegisterType::Bool => 1,
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

/// An SNMP agent.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpConfig {
    /// `host:port` (UDP).
    pub address: String,
    pub security: SnmpSecurity,
    /// Scalars read with one GET per poll.
    pub metrics: Vec<SnmpMetric>,
    /// Table columns walked with GETBULK: one series per row.
    pub walks: Vec<SnmpWalk>,
    /// GETBULK max-repetitions; 10 unless set.
    pub max_repetitions: u32,
    /// Retransmissions of an unanswered request within the poll timeout; 1
    /// unless set.
    pub retries: u32,
}

/// SNMP version and credentials.
#[derive(Clone, PartialEq)]
pub enum SnmpSecurity {
    /// SNMPv2c with a community string.
    V2c { community: String },
    /// SNMPv3 with the user-based security model.
    V3(SnmpV3),
}

impl std::fmt::Debug for SnmpSecurity {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnmpSecurity::V2c { .. } => f.write_str("V2c(***)"),
            SnmpSecurity::V3(v3) => write!(
                f,
                "V3(user {}, auth {:?}, priv {:?})",
                v3.user,
                v3.auth.as_ref().map(|(p, _)| p),
                v3.privacy.as_ref().map(|(p, _)| p)
            ),
        }
    }
}

/// SNMPv3 USM credentials. `privacy` is only set when `auth` is.
#[derive(Clone, PartialEq)]
pub struct SnmpV3 {
    pub user: String,
    pub auth: Option<(SnmpAuthProtocol, String)>,
    pub privacy: Option<(SnmpPrivProtocol, String)>,
    /// SNMPv3 context name; empty unless set.
    pub context: String,
}

/// USM authentication protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpAuthProtocol {
    /// HMAC-SHA-96 (RFC 3414).
    Sha1,
    /// HMAC-SHA-256-192 (RFC 7860).
    Sha256,
    /// HMAC-SHA-512-384 (RFC 7860).
    Sha512,
}

/// USM privacy protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnmpPrivProtocol {
    /// AES-128 in CFB mode (RFC 3826).
    Aes128,
}

/// One scalar read with GET.
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpMetric {
    pub name: String,
    /// Numeric OID arcs, e.g. `[1, 3, 6, 1, 2, 1, 1, 3, 0]`.
    pub oid: Vec<u32>,
    pub unit: String,
}

/// One table column walked: every row below `oid` becomes a series whose
/// `index_label` is the row index (the OID suffix after `oid`).
#[derive(Debug, Clone, PartialEq)]
pub struct SnmpWalk {
    pub name: String,
    pub oid: Vec<u32>,
    pub unit: String,
    /// `index` unless set.
    pub index_label: String,
}

/// An MQTT broker connection; the devices it feeds are named by topic.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// `host:port` (plain TCP).
    pub broker: String,
    /// `tributary-<device>-<random>` unless set.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Subscription QoS, 0 or 1; 0 unless set.
    pub qos: u8,
    pub topics: Vec<MqttTopic>,
}

impl std::fmt::Debug for MqttConfig {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("qos", &self.qos)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// One subscription and how its messages become samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTopic {
    /// An MQTT topic filter, e.g. `plant/+/temp`.
    pub filter: String,
    /// Device name of the samples; `{name}` plus one `/{n}` per wildcard
    /// unless set (`plant/+/temp` on device `plant` gives `plant/{1}`).
    pub device: Template,
    /// Metric name; required for `number` and `json`, unused (the payload
    /// names its metrics) for `prometheus`.
    pub metric: Option<Template>,
    pub format: PayloadFormat,
    /// JSON pointer into the payload for `json`.
    pub pointer: String,
    pub unit: String,
}

/// How an MQTT payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A plain number (`21.5`), or `true`/`false`.
    #[default]
    Number,
    /// A JSON document; the value at `pointer`.
    Json,
    /// Prometheus text; every sample.
    Prometheus,
}

/// A name built from the topic a message arrived on: literal text with
/// `{name}` (the configured device name), `{topic}` (the whole topic) and
/// `{1}`, `{2}`, ... (the topic levels matched by the filter's `+` and `#`,
/// in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<TemplatePart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Name,
    Topic,
    Capture(usize),
}

impl Template {
    /// Parses `text`; `captures` is how many wildcards the filter has.
    pub fn parse(text: &str, captures: usize) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in \"{text}\""))?;
            let field = &after[..close];
            parts.push(match field {
                "name" => TemplatePart::Name,
                "topic" => TemplatePart::Topic,
                n => match n.parse::<usize>() {
                    Ok(i) if (1..=captures).contains(&i) => TemplatePart::Capture(i),
                    Ok(i) => {
                        return Err(format!(
                            "{{{i}}} in \"{text}\": the filter has {captures} wildcard level(s)"
                        ));
                    }
                    Err(_) => {
                        return Err(format!(
                            "unknown field {{{field}}} in \"{text}\" (expected {{name}}, {{topic}} or {{1}}, {{2}}, ...)"
                        ));
                    }
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Template(parts))
    }

    /// Fills in the fields; `captures[0]` is `{1}`.
    pub fn render(&self, name: &str, topic: &str, captures: &[&str]) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Name => out.push_str(name),
                TemplatePart::Topic => out.push_str(topic),
                TemplatePart::Capture(i) => {
                    out.push_str(captures.get(i - 1).copied().unwrap_or(""));
                }
            }
        }
        out
    }
}

/// A TCP connect probe, optionally sending a request and expecting a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpConfig {
    /// `host:port`.
    pub address: String,
    /// Bytes written after connecting (TOML escapes such as `\r\n` apply).
    pub send: Option<String>,
    /// Text the reply must contain; read until it appears, the peer closes
    /// or [`TCP_MAX_READ`] bytes.
    pub expect: Option<String>,
}

/// Most bytes a TCP probe reads while waiting for `expect`.
pub const TCP_MAX_READ: usize = 64 * 1024;

/// A program run on every poll (no shell), its stdout parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// The program: a path, or a name looked up in `PATH`.
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The program's whole environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    pub format: HttpFormat,
    /// As for [`HttpConfig::metrics`].
    pub metrics: Vec<JsonMetric>,
}

/// Parses the driver-specific keys of device `key` (`rest`, every common key
/// removed) for driver `driver`.
pub(super) fn parse_driver(
    src: &Source<'_>,
    driver: &Spanned<String>,
    rest: DeTable<'_>,
    span: Range<usize>,
    key: &str,
    common_keys: &[&str],
) -> Result<DriverConfig, ConfigError> {
    let name = driver.get_ref().as_str();
    let what = format!(" for driver {name}");
    let cx = DeContext {
        extra_keys: common_keys,
        what: &what,
    };
    Ok(match name {
        "sim" => {
            let raw: RawSim = deserialize_table(src, rest, span, key, &cx)?;
            DriverConfig::Sim(SimConfig {
                series: raw.series.unwrap_or(0),
            })
        }
        "http" => {
            let raw: RawHttp = deserialize_table(src, rest, span.clone(), key, &cx)?;
            DriverConfig::Http(raw.validate(src, key, span, None)?)
        }
        "prometheus" => {
            let raw: RawPrometheus = deserialize_table(src, rest, span.clone(), key, &cx)?;
            let raw = RawHttp {
                url: raw.url,
                format: None,
                metrics: None,
                username: raw.username,
                password: raw.password,
                bearer_token: raw.bearer_token,
                ca: raw.ca,
            };
            DriverConfig::Http(raw.validate(src, key, span, Some(HttpFormat::Prometheus))?)
        }
        "modbus" => {
            let raw: RawModbus = deserialize_table(src, rest, span, key, &cx)?;
            DriverConfig::Modbus(raw.validate(src, key)?)
        }
        "snmp" => {
            let raw: RawSnmp = deserialize_table(src, rest, span.clone(), key, &cx)?;
            DriverConfig::Snmp(raw.validate(src, key, span)?)
        }
        "mqtt" => {
            let raw: RawMqtt = deserialize_table(src, rest, span, key, &cx)?;
            DriverConfig::Mqtt(raw.validate(src, key)?)
        }
        "tcp" => {
            let raw: RawTcp = deserialize_table(src, rest, span, key, &cx)?;
            DriverConfig::Tcp(raw.validate(src, key)?)
        }
        "exec" => {
            let raw: RawExec = deserialize_table(src, rest, span.clone(), key, &cx)?;
            DriverConfig::Exec(raw.validate(src, key, span)?)
        }
        other => {
            return Err(src.error(
                driver.span(),
                format!("{key}.driver"),
                format!(
                    "unknown driver \"{other}\" (expected one of {})",
                    DRIVERS.join(", ")
                ),
            ));
        }
    })
}

/// Checks a `host:port` address.
fn check_address(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let address = value.get_ref().trim();
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(src.error(
            value.span(),
            key,
            format!("invalid address \"{address}\" (expected host:port)"),
        ));
    }
    Ok(address.to_owned())
}

/// A duration that may be zero.
fn optional_duration(
    src: &Source<'_>,
    value: &Option<Spanned<String>>,
    key: &str,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map(|v| parse_duration(src, v, key))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Parses a numeric OID such as `1.3.6.1.2.1.1.3.0` (a leading dot is allowed).
pub fn parse_oid(text: &str) -> Result<Vec<u32>, String> {
    let trimmed = text.trim().strip_prefix('.').unwrap_or(text.trim());
    if trimmed.is_empty() {
        return Err("empty".into());
    }
    let mut arcs = Vec::new();
    for (i, arc) in trimmed.split('.').enumerate() {
        let n: u32 = arc.parse().map_err(|_| {
            if arc.is_empty() {
                format!("empty arc at position {}", i + 1)
            } else if arc.chars().all(|c| c.is_ascii_digit()) {
                format!("arc {arc} is larger than 4294967295")
            } else {
                format!(
                    "\"{arc}\" is not a number (only numeric OIDs are supported, e.g. 1.3.6.1.2.1.1.3.0)"
                )
            }
        })?;
        arcs.push(n);
    }
    match arcs.as_slice() {
        [_] => Err("an OID has at least two arcs".into()),
        [first, ..] if *first > 2 => Err(format!("first arc {first} must be 0, 1 or 2")),
        [first, second, ..] if *first < 2 && *second >= 40 => Err(format!(
            "second arc {second} must be below 40 when the first is {first}"
        )),
        _ if arcs.len() > 128 => Err("more than 128 arcs".into()),
        _ => Ok(arcs),
    }
}

/// The OID in dotted form.
pub fn oid_string(oid: &[u32]) -> String {
    let parts: Vec<String> = oid.iter().map(u32::to_string).collect();
    parts.join(".")
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
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    bearer_token: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
}

/// `driver = "prometheus"`: an HTTP scrape without `format` or `metrics`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: Spanned<String>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    bearer_token: Option<Spanned<String>>,
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonMetric {
    name: Spanned<String>,
    pointer: Spanned<String>,
    unit: Option<String>,
}

/// Validates the `metrics` of a JSON/Prometheus body (http and exec).
fn json_metrics(
    src: &Source<'_>,
    key: &str,
    span: Range<usize>,
    driver: &str,
    format: HttpFormat,
    metrics: &Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
) -> Result<Vec<JsonMetric>, ConfigError> {
    let mut out = Vec::new();
    match (format, metrics) {
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
                format!("missing key `metrics` for driver {driver} with format \"json\""),
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
                let pointer = check_pointer(src, &m.pointer, &format!("{mkey}.pointer"))?;
                out.push(JsonMetric {
                    name: m.name.get_ref().clone(),
                    pointer,
                    unit: m.unit.clone().unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

fn check_pointer(
    src: &Source<'_>,
    pointer: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let p = pointer.get_ref();
    if !p.is_empty() && !p.starts_with('/') {
        return Err(src.error(
            pointer.span(),
            key,
            format!("invalid json pointer \"{p}\" (expected \"\" or a path starting with /)"),
        ));
    }
    Ok(p.clone())
}

impl RawHttp {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
        forced: Option<HttpFormat>,
    ) -> Result<HttpConfig, ConfigError> {
        let url = check_http_url(src, &self.url, &format!("{key}.url"))?;
        let format = forced.or(self.format).unwrap_or(HttpFormat::Json);
        let metrics = json_metrics(src, key, span, "http", format, &self.metrics)?;
        let auth = match (self.username, self.password, self.bearer_token) {
            (None, None, None) => HttpAuth::None,
            (Some(u), Some(p), None) => HttpAuth::Basic {
                username: u.into_inner(),
                password: p.into_inner(),
            },
            (Some(u), None, None) => {
                return Err(src.error(
                    u.span(),
                    format!("{key}.username"),
                    "basic auth needs `password` too",
                ));
            }
            (None, Some(p), _) => {
                return Err(src.error(
                    p.span(),
                    format!("{key}.password"),
                    "basic auth needs `username` too",
                ));
            }
            (None, None, Some(t)) if t.get_ref().is_empty() => {
                return Err(src.error(
                    t.span(),
                    format!("{key}.bearer_token"),
                    "bearer token must not be empty",
                ));
            }
            (None, None, Some(t)) => HttpAuth::Bearer(t.into_inner()),
            (Some(_), _, Some(t)) => {
                return Err(src.error(
                    t.span(),
                    format!("{key}.bearer_token"),
                    "use either `username`/`password` or `bearer_token`, not both",
                ));
            }
        };
        let ca = self
            .ca
            .as_ref()
            .map(|ca| src.path(ca, &format!("{key}.ca")))
            .transpose()?;
        if ca.is_some() && !url.starts_with("https://") {
            return Err(src.error(
                self.url.span(),
                format!("{key}.url"),
                "`ca` is set but the url is not https://",
            ));
        }
        Ok(HttpConfig {
            url,
            format,
            metrics,
            auth,
            ca,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    address: Spanned<String>,
    unit_id: Option<u8>,
    metrics: Spanned<Vec<Spanned<RawModbusMetric>>>,
    max_concurrency: Option<Spanned<usize>>,
    connect_delay: Option<Spanned<String>>,
    request_pause: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbusMetric {
    name: Spanned<String>,
    register: Spanned<u16>,
    kind: Option<RegisterKind>,
    #[serde(rename = "type")]
    data_type: Option<Spanned<RegisterType>>,
    word_order: Option<Spanned<WordOrder>>,
    scale: Option<Spanned<f64>>,
    unit: Option<String>,
}

impl RawModbus {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<ModbusConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
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
            let kind = m.kind.unwrap_or(RegisterKind::Holding);
            let data_type = match (&m.data_type, kind.is_bits()) {
                (None, true) => RegisterType::Bool,
                (None, false) => RegisterType::U16,
                (Some(t), bits) => {
                    let t_ref = *t.get_ref();
                    if bits != (t_ref == RegisterType::Bool) {
                        let hint = if bits {
                            "coils and discrete inputs are single bits: use type = \"bool\" or leave it out"
                        } else {
                            "bool is for kind = \"coil\" or \"discrete\"; registers are u16, i16, u32, i32 or f32"
                        };
                        return Err(src.error(
                            t.span(),
                            format!("{mkey}.type"),
                            format!(
                                "wrong register type {} for kind {} ({hint})",
                                t_ref.name(),
                                kind.name()
                            ),
                        ));
                    }
                    t_ref
                }
            };
            if data_type == RegisterType::Bool {
                let extra = [
                    ("word_order", m.word_order.as_ref().map(|w| w.span())),
                    ("scale", m.scale.as_ref().map(|s| s.span())),
                ];
                for (name, span) in extra {
                    if let Some(span) = span {
                        return Err(src.error(
                            span,
                            format!("{mkey}.{name}"),
                            format!("`{name}` does not apply to a {} bit", kind.name()),
                        ));
                    }
                }
            }
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
                kind,
                data_type,
                word_order: m
                    .word_order
                    .as_ref()
                    .map(|w| *w.get_ref())
                    .unwrap_or_default(),
                scale,
                unit: m.unit.clone().unwrap_or_default(),
            });
        }
        let max_concurrency = match &self.max_concurrency {
            None => 1,
            Some(n) if *n.get_ref() == 0 => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_concurrency"),
                    "must be at least 1",
                ));
            }
            Some(n) => *n.get_ref(),
        };
        Ok(ModbusConfig {
            address,
            unit_id: self.unit_id.unwrap_or(1),
            metrics,
            max_concurrency,
            connect_delay: optional_duration(
                src,
                &self.connect_delay,
                &format!("{key}.connect_delay"),
            )?,
            request_pause: optional_duration(
                src,
                &self.request_pause,
                &format!("{key}.request_pause"),
            )?,
        })
    }
}

/// `version = "2c"` or `version = 3`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmp {
    address: Spanned<String>,
    version: Option<Spanned<RawVersion>>,
    community: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    auth_protocol: Option<Spanned<String>>,
    auth_password: Option<Spanned<String>>,
    priv_protocol: Option<Spanned<String>>,
    priv_password: Option<Spanned<String>>,
    context: Option<Spanned<String>>,
    metrics: Option<Spanned<Vec<Spanned<RawSnmpMetric>>>>,
    walks: Option<Spanned<Vec<Spanned<RawSnmpWalk>>>>,
    max_repetitions: Option<Spanned<u32>>,
    retries: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpMetric {
    name: Spanned<String>,
    oid: Spanned<String>,
    unit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpWalk {
    name: Spanned<String>,
    oid: Spanned<String>,
    unit: Option<String>,
    index_label: Option<Spanned<String>>,
}

/// Smallest USM password net-snmp accepts (RFC 3414 recommends 8).
const MIN_USM_PASSWORD: usize = 8;

impl RawSnmp {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
    ) -> Result<SnmpConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
        let v3 = match &self.version {
            None => false,
            Some(v) => match v.get_ref() {
                RawVersion::Text(t) if t == "2c" => false,
                RawVersion::Text(t) if t == "3" => true,
                RawVersion::Int(3) => true,
                other => {
                    let shown = match other {
                        RawVersion::Int(n) => n.to_string(),
                        RawVersion::Text(t) => format!("\"{t}\""),
                    };
                    return Err(src.error(
                        v.span(),
                        format!("{key}.version"),
                        format!("unsupported SNMP version {shown} (expected \"2c\" or \"3\")"),
                    ));
                }
            },
        };
        let only = |value: &Option<Spanned<String>>, name: &str, version: &str| {
            value.as_ref().map_or(Ok(()), |v| {
                Err(src.error(
                    v.span(),
                    format!("{key}.{name}"),
                    format!("`{name}` is only used with version = \"{version}\""),
                ))
            })
        };
        let security = if v3 {
            only(&self.community, "community", "2c")?;
            let user = self.user.as_ref().ok_or_else(|| {
                src.error(
                    span.clone(),
                    key,
                    "missing key `user` for driver snmp with version \"3\"",
                )
            })?;
            if user.get_ref().is_empty() {
                return Err(src.error(user.span(), format!("{key}.user"), "must not be empty"));
            }
            let password = |p: &Spanned<String>, name: &str| {
                if p.get_ref().len() < MIN_USM_PASSWORD {
                    Err(src.error(
                        p.span(),
                        format!("{key}.{name}"),
                        format!("must be at least {MIN_USM_PASSWORD} characters (RFC 3414)"),
                    ))
                } else {
                    Ok(p.get_ref().clone())
                }
            };
            let auth = match (&self.auth_protocol, &self.auth_password) {
                (None, None) => None,
                (Some(p), None) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.auth_protocol"),
                        "`auth_protocol` needs `auth_password`",
                    ));
                }
                (proto, Some(pw)) => {
                    let protocol = match proto
                        .as_ref()
                        .map(|p| (p, p.get_ref().to_ascii_lowercase()))
                    {
                        None => SnmpAuthProtocol::Sha1,
                        Some((_, p)) if p == "sha" || p == "sha1" => SnmpAuthProtocol::Sha1,
                        Some((_, p)) if p == "sha256" || p == "sha-256" => SnmpAuthProtocol::Sha256,
                        Some((_, p)) if p == "sha512" || p == "sha-512" => SnmpAuthProtocol::Sha512,
                        Some((p, _)) => {
                            return Err(src.error(
                                p.span(),
                                format!("{key}.auth_protocol"),
                                format!(
                                    "unsupported auth protocol \"{}\" (expected sha, sha256 or sha512)",
                                    p.get_ref()
                                ),
                            ));
                        }
                    };
                    Some((protocol, password(pw, "auth_password")?))
                }
            };
            let privacy = match (&self.priv_protocol, &self.priv_password) {
                (None, None) => None,
                (Some(p), None) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.priv_protocol"),
                        "`priv_protocol` needs `priv_password`",
                    ));
                }
                (proto, Some(pw)) => {
                    if auth.is_none() {
                        return Err(src.error(
                            pw.span(),
                            format!("{key}.priv_password"),
                            "privacy needs authentication: set `auth_password` too",
                        ));
                    }
                    let protocol = match proto
                        .as_ref()
                        .map(|p| (p, p.get_ref().to_ascii_lowercase()))
                    {
                        None => SnmpPrivProtocol::Aes128,
                        Some((_, p)) if p == "aes" || p == "aes128" || p == "aes-128" => {
                            SnmpPrivProtocol::Aes128
                        }
                        Some((p, _)) => {
                            return Err(src.error(
                                p.span(),
                                format!("{key}.priv_protocol"),
                                format!(
                                    "unsupported privacy protocol \"{}\" (expected aes)",
                                    p.get_ref()
                                ),
                            ));
                        }
                    };
                    Some((protocol, password(pw, "priv_password")?))
                }
            };
            SnmpSecurity::V3(SnmpV3 {
                user: user.get_ref().clone(),
                auth,
                privacy,
                context: self
                    .context
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_default(),
            })
        } else {
            for (value, name) in [
                (&self.user, "user"),
                (&self.auth_protocol, "auth_protocol"),
                (&self.auth_password, "auth_password"),
                (&self.priv_protocol, "priv_protocol"),
                (&self.priv_password, "priv_password"),
                (&self.context, "context"),
            ] {
                only(value, name, "3")?;
            }
            SnmpSecurity::V2c {
                community: self
                    .community
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_else(|| "public".to_owned()),
            }
        };
        let oid = |value: &Spanned<String>, key: String| {
            parse_oid(value.get_ref()).map_err(|e| {
                src.error(
                    value.span(),
                    key,
                    format!("invalid oid \"{}\": {e}", value.get_ref()),
                )
            })
        };
        let mut seen = HashMap::new();
        let mut metrics = Vec::new();
        if let Some(list) = &self.metrics {
            for (i, m) in list.get_ref().iter().enumerate() {
                let m = m.get_ref();
                let mkey = format!("{key}.metrics[{i}]");
                check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
                metrics.push(SnmpMetric {
                    name: m.name.get_ref().clone(),
                    oid: oid(&m.oid, format!("{mkey}.oid"))?,
                    unit: m.unit.clone().unwrap_or_default(),
                });
            }
        }
        let mut walks = Vec::new();
        if let Some(list) = &self.walks {
            for (i, w) in list.get_ref().iter().enumerate() {
                let w = w.get_ref();
                let wkey = format!("{key}.walks[{i}]");
                check_metric_name(src, &mut seen, &w.name, &format!("{wkey}.name"))?;
                let index_label = match &w.index_label {
                    Some(l) if l.get_ref().is_empty() => {
                        return Err(src.error(
                            l.span(),
                            format!("{wkey}.index_label"),
                            "must not be empty",
                        ));
                    }
                    Some(l) => l.get_ref().clone(),
                    None => "index".to_owned(),
                };
                walks.push(SnmpWalk {
                    name: w.name.get_ref().clone(),
                    oid: oid(&w.oid, format!("{wkey}.oid"))?,
                    unit: w.unit.clone().unwrap_or_default(),
                    index_label,
                });
            }
        }
        if metrics.is_empty() && walks.is_empty() {
            return Err(src.error(
                span,
                key,
                "driver snmp needs at least one entry in `metrics` or `walks`",
            ));
        }
        let max_repetitions = match &self.max_repetitions {
            None => 10,
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1000 => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_repetitions"),
                    "must be between 1 and 1000",
                ));
            }
            Some(n) => *n.get_ref(),
        };
        Ok(SnmpConfig {
            address,
            security,
            metrics,
            walks,
            max_repetitions,
            retries: self.retries.unwrap_or(1),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    broker: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    qos: Option<Spanned<u8>>,
    topics: Spanned<Vec<Spanned<RawMqttTopic>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttTopic {
    filter: Spanned<String>,
    device: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    format: Option<PayloadFormat>,
    pointer: Option<Spanned<String>>,
    unit: Option<String>,
}

/// Checks an MQTT topic filter; returns how many wildcard levels it has.
pub fn check_topic_filter(filter: &str) -> Result<usize, String> {
    if filter.is_empty() {
        return Err("must not be empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut wildcards = 0;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => wildcards += 1,
            "#" if i + 1 == levels.len() => wildcards += 1,
            "#" => return Err("`#` must be the last level".into()),
            l if l.contains(['+', '#']) => {
                return Err(format!(
                    "level \"{l}\": `+` and `#` must stand alone in a level"
                ));
            }
            _ => {}
        }
    }
    Ok(wildcards)
}

impl RawMqtt {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<MqttConfig, ConfigError> {
        let broker = check_address(src, &self.broker, &format!("{key}.broker"))?;
        if self.topics.get_ref().is_empty() {
            return Err(src.error(
                self.topics.span(),
                format!("{key}.topics"),
                "at least one topic is required",
            ));
        }
        let qos = match &self.qos {
            None => 0,
            Some(q) if *q.get_ref() <= 1 => *q.get_ref(),
            Some(q) => {
                return Err(src.error(
                    q.span(),
                    format!("{key}.qos"),
                    format!("unsupported qos {} (expected 0 or 1)", q.get_ref()),
                ));
            }
        };
        if let (Some(p), None) = (&self.password, &self.username) {
            return Err(src.error(
                p.span(),
                format!("{key}.password"),
                "`password` needs `username`",
            ));
        }
        let mut topics = Vec::new();
        for (i, t) in self.topics.get_ref().iter().enumerate() {
            let t = t.get_ref();
            let tkey = format!("{key}.topics[{i}]");
            let captures = check_topic_filter(t.filter.get_ref()).map_err(|e| {
                src.error(
                    t.filter.span(),
                    format!("{tkey}.filter"),
                    format!("invalid topic filter \"{}\": {e}", t.filter.get_ref()),
                )
            })?;
            let template = |value: &Spanned<String>, name: &str| {
                Template::parse(value.get_ref(), captures)
                    .map_err(|e| src.error(value.span(), format!("{tkey}.{name}"), e))
            };
            let device = match &t.device {
                Some(d) => template(d, "device")?,
                None => {
                    let mut text = "{name}".to_owned();
                    for n in 1..=captures {
                        text.push_str(&format!("/{{{n}}}"));
                    }
                    Template::parse(&text, captures)
                        .map_err(|e| src.error(t.filter.span(), format!("{tkey}.device"), e))?
                }
            };
            let format = t.format.unwrap_or_default();
            let metric = match (&t.metric, format) {
                (Some(m), PayloadFormat::Prometheus) => {
                    return Err(src.error(
                        m.span(),
                        format!("{tkey}.metric"),
                        "`metric` is not used with format \"prometheus\" (the payload names its metrics)",
                    ));
                }
                (Some(m), _) => Some(template(m, "metric")?),
                (None, PayloadFormat::Prometheus) => None,
                (None, _) => {
                    return Err(src.error(
                        t.filter.span(),
                        tkey,
                        "missing key `metric` (the metric name, e.g. metric = \"temp\")",
                    ));
                }
            };
            let pointer = match (&t.pointer, format) {
                (Some(p), PayloadFormat::Json) => {
                    check_pointer(src, p, &format!("{tkey}.pointer"))?
                }
                (Some(p), _) => {
                    return Err(src.error(
                        p.span(),
                        format!("{tkey}.pointer"),
                        "`pointer` is only used with format \"json\"",
                    ));
                }
                (None, _) => String::new(),
            };
            topics.push(MqttTopic {
                filter: t.filter.get_ref().clone(),
                device,
                metric,
                format,
                pointer,
                unit: t.unit.clone().unwrap_or_default(),
            });
        }
        Ok(MqttConfig {
            broker,
            client_id: self.client_id.map(Spanned::into_inner),
            username: self.username.map(Spanned::into_inner),
            password: self.password.map(Spanned::into_inner),
            qos,
            topics,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    address: Spanned<String>,
    send: Option<String>,
    expect: Option<Spanned<String>>,
}

impl RawTcp {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<TcpConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
        if let Some(e) = &self.expect
            && e.get_ref().is_empty()
        {
            return Err(src.error(e.span(), format!("{key}.expect"), "must not be empty"));
        }
        Ok(TcpConfig {
            address,
            send: self.send,
            expect: self.expect.map(Spanned::into_inner),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Spanned<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    format: Option<HttpFormat>,
    metrics: Option<Spanned<Vec<Spanned<RawJsonMetric>>>>,
}

impl RawExec {
    fn validate(
        self,
        src: &Source<'_>,
        key: &str,
        span: Range<usize>,
    ) -> Result<ExecConfig, ConfigError> {
        let text = self.command.get_ref();
        if text.trim().is_empty() {
            return Err(src.error(
                self.command.span(),
                format!("{key}.command"),
                "must not be empty",
            ));
        }
        // A bare name is looked up in PATH; a path is relative to the file.
        let command = if text.contains('/') {
            src.path(&self.command, &format!("{key}.command"))?
        } else {
            PathBuf::from(text)
        };
        let format = self.format.unwrap_or(HttpFormat::Json);
        let metrics = json_metrics(src, key, span, "exec", format, &self.metrics)?;
        Ok(ExecConfig {
            command,
            args: self.args.unwrap_or_default(),
            env: self.env.unwrap_or_default(),
            format,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{AgentConfig, parse};

    const HEAD: &str = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

    fn device(body: &str) -> Result<DriverConfig, String> {
        let text = format!("{HEAD}[[devices]]\nname = \"d\"\ninterval = \"1s\"\n{body}");
        parse(&text, Path::new("conf/agent.toml"))
            .map(|c: AgentConfig| c.devices[0].driver.clone())
            .map_err(|e| e.to_string())
    }

    fn err(body: &str) -> String {
        match device(body) {
            Ok(d) => panic!("expected an error, got {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn snmp_v2c_and_v3() {
        let d = device(
            "driver = \"snmp\"\naddress = \"127.0.0.1:1161\"\nversion = \"2c\"\ncommunity = \"c1\"\n\
             metrics = [{ name = \"uptime\", oid = \".1.3.6.1.2.1.1.3.0\", unit = \"cs\" }]\n\
             walks = [{ name = \"if_in\", oid = \"1.3.6.1.2.1.2.2.1.10\", index_label = \"if\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Snmp(s) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            s.security,
            SnmpSecurity::V2c {
                community: "c1".into()
            }
        );
        assert_eq!(s.metrics[0].oid, vec![1, 3, 6, 1, 2, 1, 1, 3, 0]);
        assert_eq!(s.walks[0].index_label, "if");
        assert_eq!((s.max_repetitions, s.retries), (10, 1));

        let d = device(
            "driver = \"snmp\"\naddress = \"h:161\"\nversion = 3\nuser = \"u\"\nauth_protocol = \"SHA\"\n\
             auth_password = \"authpass1\"\npriv_password = \"privpass1\"\n\
             metrics = [{ name = \"a\", oid = \"1.3.6.1.2.1.1.3.0\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Snmp(s) = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            s.security,
            SnmpSecurity::V3(SnmpV3 {
                user: "u".into(),
                auth: Some((SnmpAuthProtocol::Sha1, "authpass1".into())),
                privacy: Some((SnmpPrivProtocol::Aes128, "privpass1".into())),
                context: String::new(),
            })
        );
    }

    #[test]
    fn snmp_errors_name_the_key() {
        let base = "driver = \"snmp\"\naddress = \"h:161\"\n";
        let e = err(&format!(
            "{base}metrics = [{{ name = \"a\", oid = \"1.3.6.x.1\" }}]\n"
        ));
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].oid: invalid oid \"1.3.6.x.1\": \"x\" is not a number"),
            "{e}"
        );
        let e = err(&format!(
            "{base}metrics = [{{ name = \"a\", oid = \"3.1\" }}]\n"
        ));
        assert!(e.contains("first arc 3 must be 0, 1 or 2"), "{e}");
        let e = err(&format!(
            "{base}version = \"1\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].version: unsupported SNMP version \"1\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}user = \"u\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.starts_with(
                "conf/agent.toml:8: devices[0].user: `user` is only used with version = \"3\""
            ),
            "{e}"
        );
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\nauth_password = \"short\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(
            e.contains("devices[0].auth_password: must be at least 8"),
            "{e}"
        );
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\nauth_password = \"longenough\"\nauth_protocol = \"md5\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(e.contains("unsupported auth protocol \"md5\""), "{e}");
        let e = err(&format!(
            "{base}version = \"3\"\nuser = \"u\"\npriv_password = \"longenough\"\nmetrics = [{{ name = \"a\", oid = \"1.3\" }}]\n"
        ));
        assert!(e.contains("privacy needs authentication"), "{e}");
        let e = err(base);
        assert!(
            e.contains("at least one entry in `metrics` or `walks`"),
            "{e}"
        );
    }

    #[test]
    fn modbus_bits_and_pacing() {
        let d = device(
            "driver = \"modbus\"\naddress = \"h:502\"\nunit_id = 3\nmax_concurrency = 2\n\
             connect_delay = \"50ms\"\nrequest_pause = \"10ms\"\n\
             metrics = [{ name = \"run\", register = 0, kind = \"coil\" },\n\
             { name = \"door\", register = 5, kind = \"discrete\", type = \"bool\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Modbus(m) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(m.metrics[0].data_type, RegisterType::Bool);
        assert_eq!(m.metrics[1].kind, RegisterKind::Discrete);
        assert_eq!(m.connect_delay, Duration::from_millis(50));
        assert_eq!(
            d.endpoint(),
            Some(EndpointLimits {
                key: "modbus://h:502".into(),
                max_concurrency: 2,
                pause: Duration::from_millis(10)
            })
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"run\", register = 0, kind = \"coil\", type = \"f32\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].type: wrong register type f32 for kind coil"),
            "{e}"
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"t\", register = 0, type = \"bool\" }]\n",
        );
        assert!(
            e.contains("wrong register type bool for kind holding"),
            "{e}"
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"t\", register = 0, kind = \"coils\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].kind: unknown value `coils`"),
            "{e}"
        );
    }

    #[test]
    fn mqtt_topics_and_templates() {
        let d = device(
            "driver = \"mqtt\"\nbroker = \"127.0.0.1:1883\"\n\
             topics = [{ filter = \"plant/+/temp\", metric = \"temp\", unit = \"C\" },\n\
             { filter = \"plant/+/state\", format = \"json\", pointer = \"/power\", metric = \"{1}_power\", device = \"boiler\" },\n\
             { filter = \"metrics/#\", format = \"prometheus\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Mqtt(m) = d else {
            panic!("{d:?}")
        };
        assert_eq!(m.qos, 0);
        let t = &m.topics[0];
        assert_eq!(
            t.device.render("d", "plant/boiler-1/temp", &["boiler-1"]),
            "d/boiler-1"
        );
        assert_eq!(
            t.metric.as_ref().map(|m| m.render("d", "x", &["a"])),
            Some("temp".into())
        );
        assert_eq!(
            m.topics[1]
                .metric
                .as_ref()
                .map(|m| m.render("d", "x", &["b2"])),
            Some("b2_power".into())
        );
        assert_eq!(m.topics[1].device.render("d", "x", &["b2"]), "boiler");
        assert_eq!(
            m.topics[2].device.render("d", "metrics/a/b", &["a/b"]),
            "d/a/b"
        );

        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/#/b\", metric = \"m\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].topics[0].filter: invalid topic filter \"a/#/b\": `#` must be the last level"),
            "{e}"
        );
        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/+\", metric = \"{2}\" }]\n",
        );
        assert!(
            e.contains("topics[0].metric: {2} in \"{2}\": the filter has 1"),
            "{e}"
        );
        let e = err("driver = \"mqtt\"\nbroker = \"h:1883\"\ntopics = [{ filter = \"a/+\" }]\n");
        assert!(e.contains("topics[0]: missing key `metric`"), "{e}");
        let e = err(
            "driver = \"mqtt\"\nbroker = \"h:1883\"\nqos = 2\ntopics = [{ filter = \"a\", metric = \"m\" }]\n",
        );
        assert!(e.contains("devices[0].qos: unsupported qos 2"), "{e}");
    }

    #[test]
    fn tcp_exec_http_extras() {
        let d = device("driver = \"tcp\"\naddress = \"127.0.0.1:22\"\nsend = \"PING\\r\\n\"\nexpect = \"PONG\"\n")
            .expect("valid");
        assert_eq!(
            d,
            DriverConfig::Tcp(TcpConfig {
                address: "127.0.0.1:22".into(),
                send: Some("PING\r\n".into()),
                expect: Some("PONG".into())
            })
        );
        let d = device(
            "driver = \"exec\"\ncommand = \"bin/probe\"\nargs = [\"-x\"]\nenv = { LANG = \"C\" }\nformat = \"prometheus\"\n",
        )
        .expect("valid");
        let DriverConfig::Exec(x) = d else {
            panic!("{d:?}")
        };
        assert_eq!(x.command, Path::new("conf/bin/probe"));
        assert_eq!(x.env.get("LANG").map(String::as_str), Some("C"));
        let d = device("driver = \"exec\"\ncommand = \"true\"\nformat = \"prometheus\"\n")
            .expect("valid");
        let DriverConfig::Exec(x) = d else {
            panic!("{d:?}")
        };
        assert_eq!(x.command, Path::new("true"));
        let e = err("driver = \"exec\"\ncommand = \"x\"\n");
        assert!(e.contains("missing key `metrics` for driver exec"), "{e}");

        let d = device(
            "driver = \"prometheus\"\nurl = \"https://h:9100/metrics\"\nusername = \"u\"\npassword = \"p\"\nca = \"ca.pem\"\n",
        )
        .expect("valid");
        let DriverConfig::Http(h) = d else {
            panic!("{d:?}")
        };
        assert_eq!(h.format, HttpFormat::Prometheus);
        assert_eq!(
            h.auth,
            HttpAuth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(h.ca.as_deref(), Some(Path::new("conf/ca.pem")));
        let e = err("driver = \"prometheus\"\nurl = \"http://h/\"\nformat = \"json\"\n");
        assert!(
            e.contains("unknown key `format` for driver prometheus"),
            "{e}"
        );
        let e = err(
            "driver = \"http\"\nurl = \"http://h/\"\nformat = \"prometheus\"\nusername = \"u\"\nbearer_token = \"t\"\n",
        );
        assert!(
            e.contains("devices[0].password: ") || e.contains("not both"),
            "{e}"
        );
        let e = err(
            "driver = \"http\"\nurl = \"http://h/\"\nformat = \"prometheus\"\nca = \"x.pem\"\n",
        );
        assert!(e.contains("not https://"), "{e}");
    }

    #[test]
    fn deploy_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut drivers = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("deploy/examples") {
            let path = entry.expect("entry").path();
            let collector = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("collector"));
            if path.extension().is_some_and(|e| e == "toml") && !collector {
                let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                drivers.extend(cfg.devices.iter().map(|d| d.driver.name()));
            }
        }
        for d in DRIVERS.iter().filter(|d| **d != "prometheus") {
            assert!(drivers.contains(d), "no example uses driver {d}");
        }
    }

    #[test]
    fn oids_and_filters() {
        assert_eq!(parse_oid("1.3.6.1"), Ok(vec![1, 3, 6, 1]));
        assert!(parse_oid("1").is_err());
        assert!(parse_oid("1..3").is_err());
        assert!(parse_oid("1.3.99999999999").is_err());
        assert!(parse_oid("1.40").is_err());
        assert_eq!(oid_string(&[1, 3, 6]), "1.3.6");
        assert_eq!(check_topic_filter("a/+/b/#"), Ok(2));
        assert!(check_topic_filter("a/b+").is_err());
        assert!(check_topic_filter("").is_err());
    }
}
