//! Device drivers: each speaks one device protocol and turns one poll into
//! samples or a typed [`PollError`].
//!
//! Owns: one folder per driver (`sim/`, `http/`, `modbus/`, `snmp/`,
//! `snmp_trap/`, `mqtt/`, `tcp/`, `exec/`), each holding that driver's settings (its
//! `Raw*` TOML structs, their validation and the validated type), its
//! runtime and its tests; and the registry below, the one other place a
//! driver is named. May touch: `crate::config` for the generic TOML
//! machinery (located errors, durations, URLs, metric names) and
//! `crate::reading` for what a poll produces. Nothing else: the scheduler
//! and `check` call drivers through [`Driver`] only.
//!
//! [`Driver`] dispatches over an enum rather than a trait object, so `poll`
//! is a plain `async fn` with no boxing. The scheduler runs every poll under
//! `tokio::time::timeout` and may drop the poll future at any await point:
//! a driver that keeps a connection takes it out of `self` before a request
//! and puts it back only after a complete, well-framed answer, so a
//! cancelled request never leaves a half-read connection behind.
//!
//! Adding a driver: a folder `drivers/<name>/` whose settings implement
//! [`settings::Settings`] and whose driver implements [`Poller`], its
//! `mod` line, and one line in the `registry!` call below.

pub mod exec;
pub mod http;
pub mod modbus;
pub mod mqtt;
pub mod settings;
pub mod sim;
pub mod snmp;
pub mod snmp_trap;
pub mod tcp;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;

use self::settings::{DriverTable, EndpointLimits, Settings};
use crate::config::{ConfigError, DeviceConfig};
use crate::reading::{FailureKind, Polled, Sample, Value};

/// Declares the drivers: one line per driver,
/// `Variant(settings type, driver type) = "name", "alias", ...;`, the first
/// name being the one [`DriverConfig::name`] reports. From those lines it
/// builds [`DRIVERS`], [`DriverConfig`] and its `name`/`endpoint`,
/// [`parse_driver`]'s dispatch, and [`Driver`] with its `build`, `poll` and
/// `failed` dispatch.
macro_rules! registry {
    ($( $variant:ident($settings:ty, $driver:ty) = $name:literal $(, $alias:literal)*; )+) => {
        /// The drivers a device may name in `driver = "..."`.
        pub const DRIVERS: &[&str] = &[$( $name, $($alias,)* )+];

        /// Protocol-specific settings of a device.
        #[derive(Debug, Clone, PartialEq)]
        pub enum DriverConfig {
            $( $variant($settings), )+
        }

        impl DriverConfig {
            /// The name used in `driver = "..."` (`driver = "prometheus"`
            /// reads as `http` with `format = "prometheus"`).
            pub fn name(&self) -> &'static str {
                match self {
                    $( DriverConfig::$variant(_) => $name, )+
                }
            }

            /// The shared endpoint this device's polls are paced on, if any
            /// (a Modbus gateway serves many devices and wants few requests
            /// at once).
            pub fn endpoint(&self) -> Option<EndpointLimits> {
                match self {
                    $( DriverConfig::$variant(s) => Settings::endpoint(s), )+
                }
            }
        }

        /// Every key some driver declares secret ([`Settings::SECRETS`]).
        pub(crate) fn secret_keys() -> Vec<&'static str> {
            let mut keys: Vec<&'static str> = Vec::new();
            $( keys.extend(<$settings as Settings>::SECRETS); )+
            keys.sort_unstable();
            keys.dedup();
            keys
        }

        /// Parses the driver-specific keys of one device (every common key
        /// removed) for the driver `table.driver` names.
        pub(crate) fn parse_driver(table: DriverTable<'_, '_>) -> Result<DriverConfig, ConfigError> {
            Ok(match table.driver.get_ref().as_str() {
                $( $name $(| $alias)* => DriverConfig::$variant(<$settings as Settings>::parse(table)?), )+
                _ => return Err(table.unknown_driver(DRIVERS)),
            })
        }

        /// A device driver, ready to poll.
        #[derive(Debug)]
        pub enum Driver {
            $( $variant(Box<$driver>), )+
        }

        impl Driver {
            /// Builds the driver for one device. Connects to nothing:
            /// connections are made by the first poll.
            pub fn build(cfg: &DeviceConfig) -> Result<Driver, BuildError> {
                Ok(match &cfg.driver {
                    $( DriverConfig::$variant(s) => Driver::$variant(Box::new(<$driver as Poller>::build(s, cfg)?)), )+
                })
            }

            /// Polls the device once: values on the driver's own series
            /// where it resolves them (no names allocated per poll), samples
            /// otherwise.
            ///
            /// The device task boxes this future for the poll's duration
            /// (`scheduler/device.rs`), and holds the driver boxed too, so
            /// an idle device's task keeps neither inline: at 10,000
            /// devices each inline byte is 10 KB.
            pub async fn poll_values(&mut self) -> Result<Polled, PollError> {
                match self {
                    $( Driver::$variant(d) => Poller::poll(&mut **d).await, )+
                }
            }

            /// One failed value per metric of [`Driver::metric_names`], on
            /// the series each metric has when it succeeds (so a failure
            /// lands on the same series as the values).
            pub fn failed(&self, kind: FailureKind, message: &str) -> Polled {
                match self {
                    $( Driver::$variant(d) => Poller::failed(&**d, kind, message), )+
                }
            }
        }
    };
}

registry! {
    Sim(sim::SimConfig, sim::SimDriver) = "sim";
    Http(http::HttpConfig, http::HttpDriver) = "http", "prometheus";
    Modbus(modbus::ModbusConfig, modbus::ModbusDriver) = "modbus";
    Snmp(snmp::SnmpConfig, Box<snmp::SnmpDriver>) = "snmp";
    SnmpTrap(snmp_trap::SnmpTrapConfig, snmp_trap::SnmpTrapDriver) = "snmp_trap";
    Mqtt(mqtt::MqttConfig, mqtt::MqttDriver) = "mqtt";
    Tcp(tcp::TcpConfig, tcp::TcpDriver) = "tcp";
    Exec(exec::ExecConfig, exec::ExecDriver) = "exec";
}

/// What a driver does, as the registry calls it.
pub(crate) trait Poller: Sized {
    /// The driver's validated settings.
    type Settings;

    /// Builds the driver for `device` (whose `driver` field holds
    /// `settings`; its name and timeout are there too). Connects to nothing.
    fn build(settings: &Self::Settings, device: &DeviceConfig) -> Result<Self, BuildError>;

    /// Polls the device once. A driver whose future is large boxes it here
    /// (see [`Driver::poll_values`]).
    fn poll(&mut self) -> impl Future<Output = Result<Polled, PollError>> + Send;

    /// What a failed poll reports: one failed value per metric, on the
    /// series the metric has when it succeeds (see [`failed_metrics`]).
    fn failed(&self, kind: FailureKind, message: &str) -> Polled;
}

/// A boxed driver is a driver: a registry line may box a driver whose
/// state would make every [`Driver`] large.
impl<P: Poller> Poller for Box<P> {
    type Settings = P::Settings;

    fn build(settings: &Self::Settings, device: &DeviceConfig) -> Result<Self, BuildError> {
        P::build(settings, device).map(Box::new)
    }

    fn poll(&mut self) -> impl Future<Output = Result<Polled, PollError>> + Send {
        P::poll(self)
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        P::failed(self, kind, message)
    }
}

impl Driver {
    /// Polls the device once, as named samples (for `check` and tests).
    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        self.poll_values().await.map(Polled::into_samples)
    }

    /// The metrics a failed poll reports as failed (for a Prometheus scrape,
    /// whose metrics are unknown in advance, `scrape`; none for MQTT).
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in self.failure_samples(FailureKind::Error, "") {
            if !names.contains(&s.metric) {
                names.push(s.metric);
            }
        }
        names
    }

    /// [`Driver::failed`] as named samples.
    pub fn failure_samples(&self, kind: FailureKind, message: &str) -> Vec<Sample> {
        self.failed(kind, message).into_samples()
    }
}

/// One failed sample per `(metric, unit)`, for drivers that name their
/// metrics as samples.
pub(crate) fn failed_metrics<'a>(
    metrics: impl Iterator<Item = (&'a str, &'a str)>,
    kind: FailureKind,
    message: &str,
) -> Polled {
    Polled::Samples(
        metrics
            .map(|(metric, unit)| Sample {
                unit: unit.to_owned(),
                ..Sample::new(
                    metric,
                    Value::Failed {
                        kind,
                        message: message.to_owned(),
                    },
                )
            })
            .collect(),
    )
}

/// Why a whole poll produced no samples.
#[derive(Debug, Clone, PartialEq)]
pub struct PollError {
    pub kind: FailureKind,
    /// Exactly what went wrong, e.g. `connection refused to 127.0.0.1:5020`.
    pub message: String,
}

impl PollError {
    /// A failure of kind [`FailureKind::Error`].
    pub fn error(message: impl Into<String>) -> Self {
        PollError {
            kind: FailureKind::Error,
            message: message.into(),
        }
    }

    /// A failure of kind [`FailureKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        PollError {
            kind: FailureKind::Timeout,
            message: message.into(),
        }
    }
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PollError {}

/// A TCP connect to `target` that failed (modbus, tcp): `connection refused
/// to {target}` when nothing listens there, else the cause.
pub(crate) fn connect_error(target: &str, e: &std::io::Error) -> PollError {
    PollError::error(match e.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("connection refused to {target}"),
        _ => format!("cannot connect to {target}: {e}"),
    })
}

/// Why a driver could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be set up (the caller names the device).
    /// The cause is in the message (each of its own causes once), so there
    /// is no `source()`.
    #[error("cannot build http client: {}", tributary_process::error_chain(cause))]
    HttpClient {
        device: String,
        cause: reqwest::Error,
    },
    /// The CA certificate of an HTTPS device could not be read.
    #[error("cannot read ca certificate {}: {message}", path.display())]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
    /// Settings a driver cannot run with (a check the config load should
    /// have made, repeated where the driver is built).
    #[error("{0}")]
    Settings(String),
}
