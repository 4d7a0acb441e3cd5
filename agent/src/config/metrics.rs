//! `[metrics]`: where the agent serves its own metrics (`/metrics`), or
//! `off`. The same words work for `--metrics-listen` ([`parse_listen`]).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

/// Default of [`MetricsConfig::listen`]: loopback, the port the Prometheus
/// port allocations list leaves free next to the node exporter's.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";

/// `[metrics]`: the agent's own metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; `None` when `listen = "off"`. Default
    /// [`DEFAULT_METRICS_LISTEN`].
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: parse_listen(DEFAULT_METRICS_LISTEN).unwrap_or(None),
        }
    }
}

/// `off` → `None`; an IP address and port (`127.0.0.1:9465`,
/// `[::1]:9465`, `0.0.0.0:9465`) → that address. Names are not resolved:
/// a listen address is an address.
pub fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value.trim().parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("invalid listen address \"{value}\" (expected IP:PORT, e.g. {DEFAULT_METRICS_LISTEN}, or off)")
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<Spanned<String>>,
}

impl RawMetrics {
    pub(super) fn validate(self, src: &Source<'_>) -> Result<MetricsConfig, ConfigError> {
        let mut metrics = MetricsConfig::default();
        if let Some(listen) = &self.listen {
            metrics.listen = parse_listen(listen.get_ref())
                .map_err(|e| src.error(listen.span(), "metrics.listen", e))?;
        }
        Ok(metrics)
    }
}
