//! The agent's TOML configuration: what its keys mean, their validation,
//! and the plain types the rest of the agent reads.
//!
//! Owns: the `Raw*` structs of the top level, `[batch]`, `[spool]`, `[tls]`,
//! `[uplink]`, `[metrics]` (`metrics.rs`) and the keys every `[[devices]]` table has, their defaults and
//! checks. May touch: `tributary-config` (the engine that reads TOML and
//! locates errors) and each driver's config (through the registry in
//! [`crate::drivers`]); nothing at run time.
//!
//! Parsing runs in two steps. The document is first parsed into toml's spanned
//! tree, so every table and value keeps its byte range in the file; then each
//! part is deserialized into a `Raw*` struct (unknown keys are errors
//! everywhere) by [`tributary_config::deserialize_table`] and validated into
//! the public types, which hold no toml types. Every error names the file,
//! the line and the key path, e.g.
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
use toml::de::DeTable;
use tracing::warn;
use tributary_config::{Layer, parse_size};

pub use tributary_config::ConfigError;
// The engine the drivers' config code reads its tables with.
pub(crate) use tributary_config::{DeContext, Source, deserialize_table};

mod assemble;
mod device;
mod metrics;
mod watch;
use device::add_devices;
pub use device::{DEFAULT_BACKOFF_MAX, DEFAULT_MAX_TIMEOUT, DeviceConfig};
pub use metrics::{DEFAULT_METRICS_LISTEN, MetricsConfig, parse_listen};
pub use watch::{ConfigWatcher, Watched};

#[cfg(test)]
mod tests;

/// Default for [`AgentConfig::max_concurrency`].
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Default for [`AgentConfig::max_series_per_device`].
pub const DEFAULT_MAX_SERIES_PER_DEVICE: usize = 100_000;
/// The smallest [`AgentConfig::max_series_per_device`]: the device's own
/// `up` and `series_dropped_total` series count toward it.
pub const MIN_SERIES_PER_DEVICE: usize = 2;
/// Default of `[uplink] backlog_share`: the backlog's part of the bytes
/// sent while live batches wait too.
pub const DEFAULT_BACKLOG_SHARE: f64 = 0.8;
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
/// Default for [`SpoolConfig::max_bytes`] (256 MiB).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// The smallest [`SpoolConfig::max_bytes`] accepted (64 KiB).
pub const MIN_SPOOL_MAX_BYTES: u64 = 64 << 10;

/// The validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The agent's identity, `[A-Za-z0-9._-]+`.
    pub id: String,
    /// Collector URLs, tried in order; at least one.
    pub collectors: Vec<String>,
    /// Maximum number of polls in flight for the whole agent.
    pub max_concurrency: usize,
    /// Most distinct series one device may bring while the agent runs, its
    /// own `up` and `series_dropped_total` included; readings of further new
    /// series are dropped and counted. At least [`MIN_SERIES_PER_DEVICE`],
    /// default [`DEFAULT_MAX_SERIES_PER_DEVICE`].
    pub max_series_per_device: usize,
    /// How readings are grouped before they are sent.
    pub batch: BatchConfig,
    /// The on-disk queue of readings not yet acknowledged (`[spool]`).
    pub spool: SpoolConfig,
    /// TLS towards the collectors (`[tls]`); `None` when the section is absent.
    pub tls: Option<TlsConfig>,
    /// Timers of the connection to the collector (`[uplink]`).
    pub uplink: UplinkSettings,
    /// The agent's own metrics endpoint (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The devices to poll, in file order.
    pub devices: Vec<DeviceConfig>,
    /// Where SNMP devices' MIB names are looked up (`mib_dirs`; default
    /// [`crate::drivers::snmp::mib::DEFAULT_MIB_DIRS`]).
    pub mib_dirs: Vec<PathBuf>,
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

/// `[uplink]`: timers of the connection to the collector (none is zero),
/// and how a backlog shares it with live batches.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkSettings {
    /// The backlog's part of the bytes sent while live batches wait too,
    /// to a collector that takes batches out of order (default 0.8;
    /// `0 < share <= 1`).
    pub backlog_share: f64,
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
            backlog_share: DEFAULT_BACKLOG_SHARE,
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

/// Reads and validates the configuration file at `path` (with its
/// includes, inventories and secret files; `${VAR}` from the environment).
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = tributary_config::read_file(path)?;
    parse(&text, path)
}

/// [`load`], and the files the config was read from, for `run --watch`.
pub fn load_watched(path: &Path) -> Result<(AgentConfig, Watched), ConfigError> {
    let text = tributary_config::read_file(path)?;
    let mut watched = Watched {
        files: vec![path.to_owned()],
        patterns: Vec::new(),
    };
    let cfg = parse_inner(
        &text,
        path,
        &tributary_config::env_lookup,
        Some(&mut watched),
    )?;
    Ok((cfg, watched))
}

/// Parses and validates a configuration whose main file, at `origin`,
/// holds `text`; `${VAR}` comes from the environment.
pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, ConfigError> {
    parse_with(text, origin, &tributary_config::env_lookup)
}

/// [`parse`] with the variables of `lookup`.
pub fn parse_with(
    text: &str,
    origin: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    parse_inner(text, origin, lookup, None)
}

fn parse_inner(
    text: &str,
    origin: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    watched: Option<&mut Watched>,
) -> Result<AgentConfig, ConfigError> {
    if !assemble::needs_assembly(text) {
        return parse_layer(&Layer::new(text, origin));
    }
    let mut patterns = Vec::new();
    let assembled = assemble::assemble(text, origin, lookup, &mut patterns)?;
    if let Some(w) = watched {
        w.files.clone_from(&assembled.files);
        w.patterns = patterns;
    }
    parse_layer(&Layer::assembled(
        &assembled.text,
        &assembled.files,
        assembled.origins,
    ))
}

/// The configuration at `path` as the agent will run it, written out in
/// full as TOML (every include, default, template and inventory row
/// applied, `${VAR}` expanded) with each secret shown as `<redacted>`,
/// after validating it.
pub fn effective(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(AgentConfig, String), ConfigError> {
    let text = tributary_config::read_file(path)?;
    let assembled = assemble::assemble(&text, path, lookup, &mut Vec::new())?;
    let cfg = parse_layer(&Layer::assembled(
        &assembled.text,
        &assembled.files,
        assembled.origins,
    ))?;
    Ok((cfg, assembled.shown))
}

/// Validates one layer (a file, or an assembled text).
///
/// A large file is parsed a `[[devices]]` table at a time, so memory holds
/// one device's TOML tree rather than the whole file's (tens of MB for
/// 10,000 devices: the `poll` bench's file, whose `[metrics]` table comes
/// after the devices, took the agent's start-up peak from 55 to 107 MiB
/// while it was parsed whole). When the pieces do not stand alone (a device's
/// table after another top-level table, an error anywhere) the whole
/// document is parsed instead, so results and error messages are those of a
/// whole parse.
fn parse_layer(layer: &Layer<'_>) -> Result<AgentConfig, ConfigError> {
    let pieces = device_pieces(layer);
    if !pieces.is_empty()
        && let Ok(Some(mut cfg)) = parse_parts(layer, &pieces)
    {
        crate::drivers::snmp_trap::place(&mut cfg)?;
        crate::drivers::snmp::resolve_names(&mut cfg)?;
        return Ok(cfg);
    }
    // Without pieces to split off, the whole document is one piece, which
    // always gives an answer.
    let mut cfg = parse_parts(layer, &[])?.ok_or_else(|| {
        layer
            .source()
            .error(0..0, "", "the file could not be parsed as a whole")
    })?;
    // SNMP MIB names and trap receivers' engines, once every device (and
    // `mib_dirs`, the agent id and the spool) is known.
    crate::drivers::snmp_trap::place(&mut cfg)?;
    crate::drivers::snmp::resolve_names(&mut cfg)?;
    Ok(cfg)
}

/// What a line that opens a table says about where the pieces split.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// Exactly `[[devices]]` (blanks and a comment around it allowed): a
    /// device's piece begins.
    Device,
    /// A table of another top-level key (`[metrics]`, `[[x.y]]`): the
    /// device's piece before it ends.
    Other,
}

/// Whether the line at the start of `line` opens a table, and of what. A
/// header of a device's own tables (`[[devices.metrics]]`), one this does
/// not read with certainty (a quoted key) and any other line is `None`: it
/// stays in the piece it is in, where a key other than `devices` makes the
/// pieces fall back to a whole parse. A line in a multi-line string or array
/// that looks like a header cuts a value in two, which fails to parse and
/// falls back too.
fn header(line: &str) -> Option<Header> {
    let line = line.split('\n').next().unwrap_or("");
    let line = line.trim_start_matches([' ', '\t']);
    if line
        .strip_prefix("[[devices]]")
        .map(|rest| rest.trim_start_matches([' ', '\t', '\r']))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
    {
        return Some(Header::Device);
    }
    let name = line.strip_prefix('[')?;
    let name = name.strip_prefix('[').unwrap_or(name);
    let name = name.trim_start_matches([' ', '\t']);
    let key_len = name
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(name.len());
    match &name[..key_len] {
        "" | "devices" => None,
        _ => Some(Header::Other),
    }
}

/// Byte ranges of the `[[devices]]` pieces: each from its header to the
/// next `[[devices]]` header or the next table of another top-level key.
/// The rest of the file is the top level.
fn device_pieces(layer: &Layer<'_>) -> Vec<Range<usize>> {
    let text = layer.text();
    let mut pieces = Vec::new();
    let mut open = None;
    for &start in layer.lines().starts() {
        match header(text.get(start..).unwrap_or("")) {
            Some(Header::Device) => {
                if let Some(begin) = open.replace(start) {
                    pieces.push(begin..start);
                }
            }
            Some(Header::Other) => {
                if let Some(begin) = open.take() {
                    pieces.push(begin..start);
                }
            }
            None => {}
        }
    }
    if let Some(begin) = open {
        pieces.push(begin..text.len());
    }
    pieces
}

/// Whether `pieces` follow each other up to the end of a text of `len`
/// bytes (no other table after the first device).
fn devices_run_to_end(pieces: &[Range<usize>], len: usize) -> bool {
    pieces.windows(2).all(|w| w[0].end == w[1].start) && pieces.last().is_none_or(|p| p.end == len)
}

/// Parses the top level (the file without the `pieces`), then each piece as
/// a document of its own. `None` when a piece holds anything besides
/// `devices`, or the top level holds `devices` (then only a whole parse can
/// say what the file means). With no pieces, parses the whole text.
fn parse_parts(
    layer: &Layer<'_>,
    pieces: &[Range<usize>],
) -> Result<Option<AgentConfig>, ConfigError> {
    let len = layer.text().len();
    // The top level is what precedes the first device when the devices run
    // to the end of the file; otherwise the file with the devices blanked
    // out (its other tables keep their offsets and lines).
    let blanked;
    let src = if devices_run_to_end(pieces, len) {
        layer.piece(0..pieces.first().map_or(len, |p| p.start))
    } else {
        // Lines are cut without knowing what is inside a multi-line
        // string: one in a table between or after the devices could hold
        // a `[[devices]]` line and a header-like line, which the pieces
        // would read as a device. Such a file is read whole.
        let text = layer.text();
        if text.contains("\"\"\"") || text.contains("'''") {
            return Ok(None);
        }
        blanked = layer.blank(pieces);
        layer.blanked(&blanked)
    };
    let doc = DeTable::parse(src.text).map_err(|e| src.syntax_error(&e))?;
    let root_span = doc.span();
    let mut root = doc.into_inner();
    let devices = root.remove("devices");
    if devices.is_some() && !pieces.is_empty() {
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

    let mut names: HashMap<String, String> = HashMap::new();
    if let Some(devices) = devices {
        add_devices(&src, devices, &mut names, &mut cfg)?;
    }
    for piece in pieces {
        let src = layer.piece(piece.clone());
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
        warn!(config = %src.file(), "no [[devices]] configured; the agent will poll nothing");
    }
    Ok(Some(cfg))
}

/// A duration at `key`, at most [`tributary_config::MAX_DURATION`].
pub(crate) fn parse_duration(
    src: &Source<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<Duration, ConfigError> {
    src.duration(value, key)
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
    max_series_per_device: Option<Spanned<usize>>,
    batch: Option<RawBatch>,
    spool: Option<RawSpool>,
    tls: Option<RawTls>,
    uplink: Option<RawUplink>,
    metrics: Option<metrics::RawMetrics>,
    mib_dirs: Option<Vec<Spanned<String>>>,
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
    backlog_share: Option<Spanned<f64>>,
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
        let max_series_per_device = match self.max_series_per_device {
            None => DEFAULT_MAX_SERIES_PER_DEVICE,
            Some(v) if *v.get_ref() < MIN_SERIES_PER_DEVICE => {
                return Err(src.error(
                    v.span(),
                    "max_series_per_device",
                    format!(
                        "must be at least {MIN_SERIES_PER_DEVICE} (the device's up and series_dropped_total series count)"
                    ),
                ));
            }
            Some(v) => v.into_inner(),
        };
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
        let metrics = match self.metrics {
            None => MetricsConfig::default(),
            Some(raw) => raw.validate(src)?,
        };
        Ok(AgentConfig {
            id: id.clone(),
            collectors,
            max_concurrency,
            max_series_per_device,
            batch,
            spool,
            tls,
            uplink,
            metrics,
            devices: Vec::new(),
            mib_dirs: match &self.mib_dirs {
                None => crate::drivers::snmp::mib::DEFAULT_MIB_DIRS
                    .iter()
                    .map(PathBuf::from)
                    .collect(),
                Some(dirs) => dirs
                    .iter()
                    .map(|d| src.path(d, "mib_dirs"))
                    .collect::<Result<_, _>>()?,
            },
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
        if let Some(share) = &self.backlog_share {
            let v = *share.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                return Err(src.error(
                    share.span(),
                    "uplink.backlog_share",
                    format!(
                        "{v} is not a share: it must be above 0 and at most 1 (the backlog's part of the bytes sent while live batches wait too)"
                    ),
                ));
            }
            out.backlog_share = v;
        }
        Ok(out)
    }
}
