//! One `[[devices]]` table: the keys every device has (`name`, `driver`,
//! `interval`, `timeout`, `backoff_max`), their defaults and checks, and the
//! hand-over of the remaining keys to the driver's config.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use tracing::warn;

use super::{AgentConfig, ConfigError, DeContext, Source, deserialize_table, parse_duration};
use crate::drivers::DriverConfig;
use crate::drivers::settings::DriverTable;

/// A device's poll timeout is the smaller of this and its interval unless set.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys every `[[devices]]` table may have, whatever its driver.
pub(super) const DEVICE_COMMON_KEYS: &[&str] = &[
    "name",
    "driver",
    "interval",
    "timeout",
    "backoff_max",
    "labels",
];
/// Label names a device's `labels` may not use: the series → labels
/// mapping (PromQL, exports) sets them itself.
const RESERVED_LABELS: &[&str] = &["agent", "device"];

/// A failing device's backoff is capped at the larger of this and its
/// interval unless `backoff_max` is set.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

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
    /// Labels added to every series of the device (`[devices.labels]`, an
    /// inventory's `label.<k>` columns); a label the driver sets itself wins.
    pub labels: BTreeMap<String, String>,
    /// The protocol and its settings.
    pub driver: DriverConfig,
}

/// Validates the `devices` array of one (piece of a) document and appends
/// its devices to `cfg`; `names` holds the device names seen so far.
pub(super) fn add_devices(
    src: &Source<'_>,
    devices: Spanned<DeValue<'_>>,
    names: &mut HashMap<String, String>,
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
        if let Some(first) = names.insert(dev.name.clone(), src.place(name_span.start)) {
            return Err(src.error(
                name_span,
                format!("devices[{i}].name"),
                format!(
                    "duplicate device name \"{}\" (first defined at {first})",
                    dev.name
                ),
            ));
        }
        cfg.devices.push(dev);
    }
    Ok(())
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
                    config = %src.file(),
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
    let mut labels = BTreeMap::new();
    for (label, value) in raw.labels.unwrap_or_default() {
        let valid = label
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !label.starts_with("__")
            && !RESERVED_LABELS.contains(&label.as_str());
        if !valid {
            return Err(src.error(
                value.span(),
                format!("{key}.labels.{label}"),
                format!(
                    "invalid label name \"{label}\" (expected [A-Za-z_][A-Za-z0-9_]*, not starting with __, not {})",
                    RESERVED_LABELS.join(" or ")
                ),
            ));
        }
        labels.insert(label, value.into_inner());
    }
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
            labels,
            driver,
        },
    ))
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
    labels: Option<BTreeMap<String, Spanned<String>>>,
}
