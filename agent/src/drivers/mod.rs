//! Device drivers: each speaks one device protocol and turns one poll into
//! samples or a typed [`PollError`].
//!
//! [`Driver`] dispatches over an enum rather than a trait object, so `poll`
//! is a plain `async fn` with no boxing. The scheduler runs every poll under
//! `tokio::time::timeout` and may drop the poll future at any await point:
//! a driver that keeps a connection takes it out of `self` before a request
//! and puts it back only after a complete, well-framed answer, so a
//! cancelled request never leaves a half-read connection behind.

pub mod exec;
pub mod http;
pub mod http_plain;
mod json_subset;
pub mod modbus;
pub mod mqtt;
pub mod prometheus;
pub mod sim;
pub mod snmp;
pub mod tcp;

use std::fmt;

use crate::config::{DeviceConfig, DriverConfig};
use crate::reading::{FailureKind, Polled, Sample, Value};

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

/// Why a driver could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be set up (the caller names the device).
    #[error("cannot build http client: {source}")]
    HttpClient {
        device: String,
        #[source]
        source: reqwest::Error,
    },
    /// The CA certificate of an HTTPS device could not be read.
    #[error("cannot read ca certificate {}: {message}", path.display())]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
}

/// A device driver, ready to poll.
#[derive(Debug)]
pub enum Driver {
    Sim(sim::SimDriver),
    Http(http::HttpDriver),
    Modbus(modbus::ModbusDriver),
    Snmp(Box<snmp::SnmpDriver>),
    Mqtt(mqtt::MqttDriver),
    Tcp(tcp::TcpDriver),
    Exec(exec::ExecDriver),
}

impl Driver {
    /// Builds the driver for one device. Connects to nothing: connections
    /// are made by the first poll.
    pub fn build(cfg: &DeviceConfig) -> Result<Driver, BuildError> {
        Ok(match &cfg.driver {
            DriverConfig::Sim(c) => Driver::Sim(sim::SimDriver::new(c, &cfg.name)),
            DriverConfig::Http(c) => {
                Driver::Http(http::HttpDriver::new(c, cfg.timeout, &cfg.name)?)
            }
            DriverConfig::Modbus(c) => Driver::Modbus(modbus::ModbusDriver::new(c)),
            DriverConfig::Snmp(c) => Driver::Snmp(Box::new(snmp::SnmpDriver::new(c, cfg.timeout))),
            DriverConfig::Mqtt(c) => Driver::Mqtt(mqtt::MqttDriver::new(c, &cfg.name, cfg.timeout)),
            DriverConfig::Tcp(c) => Driver::Tcp(tcp::TcpDriver::new(c)),
            DriverConfig::Exec(c) => Driver::Exec(exec::ExecDriver::new(c)),
        })
    }

    /// Polls the device once: values on the driver's own series where it
    /// resolves them (no names allocated per poll), samples otherwise.
    ///
    /// The HTTP poll runs inline; the other drivers' poll futures are boxed
    /// (allocated for the duration of a poll), so this future, which is
    /// part of every idle device task's memory, stays the size of the HTTP
    /// one rather than of the largest driver's.
    pub async fn poll_values(&mut self) -> Result<Polled, PollError> {
        Ok(match self {
            Driver::Sim(d) => Polled::Readings(d.poll()),
            Driver::Http(d) => d.poll().await?,
            Driver::Modbus(d) => Polled::Samples(Box::pin(d.poll()).await?),
            Driver::Snmp(d) => Polled::Samples(Box::pin(d.poll()).await?),
            Driver::Mqtt(d) => Polled::Samples(Box::pin(d.poll()).await?),
            Driver::Tcp(d) => Polled::Samples(Box::pin(d.poll()).await?),
            Driver::Exec(d) => Polled::Samples(Box::pin(d.poll()).await?),
        })
    }

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

    /// One failed value per metric of [`Driver::metric_names`], on the
    /// series each metric has when it succeeds (so a failure lands on the
    /// same series as the values).
    pub fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        let failed = |metric: &str, unit: &str| Sample {
            unit: unit.to_owned(),
            ..Sample::new(
                metric,
                Value::Failed {
                    kind,
                    message: message.to_owned(),
                },
            )
        };
        Polled::Samples(match self {
            Driver::Sim(d) => return Polled::Readings(d.failed(kind, message)),
            Driver::Http(d) => return Polled::Readings(d.failed(kind, message)),
            Driver::Modbus(d) => d.metrics().map(|(name, unit)| failed(name, unit)).collect(),
            Driver::Snmp(d) => d.metrics().map(|(name, unit)| failed(name, unit)).collect(),
            // Its devices and metrics come from topics: the `up` series of
            // the subscription carries the failure.
            Driver::Mqtt(_) => Vec::new(),
            Driver::Tcp(d) => d.metrics().map(|(name, unit)| failed(name, unit)).collect(),
            Driver::Exec(d) => d.metrics().map(|(name, unit)| failed(name, unit)).collect(),
        })
    }

    /// [`Driver::failed`] as named samples.
    pub fn failure_samples(&self, kind: FailureKind, message: &str) -> Vec<Sample> {
        self.failed(kind, message).into_samples()
    }
}

/// `err` and its sources joined with `: `, skipping a source whose text the
/// previous level already contains (some libraries repeat their source).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
