//! The settings side of the driver contract: what a driver's settings
//! implement ([`Settings`]), what they are parsed from ([`DriverTable`], the
//! driver's keys of one `[[devices]]` table) and the checks several drivers
//! share (`host:port` addresses). Owns no driver's keys: those live in each
//! driver's `config.rs`.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeTable;

use crate::config::{ConfigError, DeContext, Source, deserialize_table};

/// A driver's validated settings, parsed from its keys of a device table.
pub(crate) trait Settings: Sized {
    /// The driver's keys that hold secrets: shown as `<redacted>` by
    /// `tributary-agent config`, and readable from a file through their
    /// `<key>_file` twin (the config engine does both).
    const SECRETS: &'static [&'static str] = &[];

    /// Deserializes and validates the driver's keys.
    fn parse(table: DriverTable<'_, '_>) -> Result<Self, ConfigError>;

    /// The shared endpoint this device's polls are paced on, if any.
    fn endpoint(&self) -> Option<EndpointLimits> {
        None
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

/// The driver-specific keys of one `[[devices]]` table (every key common to
/// all devices removed), with what is needed to locate an error in them.
pub(crate) struct DriverTable<'a, 'i> {
    pub src: &'a Source<'a>,
    /// The `driver = "..."` value, as written.
    pub driver: &'a Spanned<String>,
    /// The driver's keys; taken by [`DriverTable::deserialize`].
    pub table: DeTable<'i>,
    /// The whole device table.
    pub span: Range<usize>,
    /// The device's key path, e.g. `devices[2]`.
    pub key: &'a str,
    /// The keys every device has (allowed besides the driver's own, and
    /// named in an "unknown key" message).
    pub common_keys: &'a [&'a str],
}

impl<'i> DriverTable<'_, 'i> {
    /// Deserializes the driver's keys into its `Raw*` struct: an unknown
    /// key is an error naming the driver and the keys it takes.
    pub fn deserialize<T: Deserialize<'i>>(&mut self) -> Result<T, ConfigError> {
        let what = format!(" for driver {}", self.driver.get_ref());
        let cx = DeContext {
            extra_keys: self.common_keys,
            what: &what,
        };
        let table = std::mem::take(&mut self.table);
        deserialize_table(self.src, table, self.span.clone(), self.key, &cx)
    }

    /// The error for a `driver = "..."` that names no driver.
    pub fn unknown_driver(&self, drivers: &[&str]) -> ConfigError {
        self.src.error(
            self.driver.span(),
            format!("{}.driver", self.key),
            format!(
                "unknown driver \"{}\" (expected one of {})",
                self.driver.get_ref(),
                drivers.join(", ")
            ),
        )
    }
}

/// Checks a `host:port` address.
pub(crate) fn check_address(
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
