//! The agent's own metrics: what they are called, their labels, and the
//! handles their owners update; served at `/metrics` by `main.rs` through
//! `tributary_process::metrics` (which also adds the process metrics and
//! `tributary_agent_build_info`).
//!
//! Every metric is an atomic that one task updates and the HTTP handler
//! only reads. Device tasks get their handles once, at start
//! ([`SchedulerMetrics::device`]: one `Family` look-up per label set, the
//! returned clone kept), so a poll costs a few relaxed atomic adds and no
//! lock or allocation. The uplink owns [`UplinkMetrics`] outright (`&mut
//! self`: its bookkeeping of send times and seal times needs no sharing)
//! and samples the spool on its flush tick. Labels are per device, per
//! driver, per outcome or cause, per collector of the config: bounded by
//! the config, never by the data.
//!
//! Files: `device.rs` (the scheduler's metrics), `uplink.rs` (the
//! uplink's and the spool's), `tests.rs`.
//!
//! Owns: the agent's [`Registry`] until it is served. May touch:
//! `tributary-process`'s metrics module and `prometheus-client`; it imports
//! no other module of the agent (the scheduler and the uplink call it, not
//! the other way round).

mod device;
#[cfg(test)]
mod tests;
mod uplink;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tributary_process::metrics::{ProcessCollector, register_build_info};

pub use device::{DeviceMetrics, Outcome, SchedulerMetrics};
pub use uplink::{LinkState, ReconnectCause, SpoolSample, UplinkMetrics};

/// The prefix of every agent metric.
pub const PREFIX: &str = "tributary_agent";

/// The agent's metrics: the registry to serve and the handles to hand out.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Everything to serve; give it to `tributary_process::metrics::routes`.
    pub registry: Registry,
    /// For the device tasks (shared: each takes its own handles).
    pub scheduler: std::sync::Arc<SchedulerMetrics>,
    /// For the uplink (moved into it).
    pub uplink: UplinkMetrics,
    /// Configuration reloads applied (SIGHUP).
    pub config_reloads: Counter,
    /// Configuration reloads refused (invalid config, or a change that
    /// needs a restart); the running config stays.
    pub config_reload_failures: Counter,
}

impl AgentMetrics {
    /// Registers every agent metric, the process metrics and the build
    /// info (`commit`: the git commit the binary was built from, or
    /// `"unknown"`). `collectors` are the URLs of the config (the label
    /// values of `tributary_agent_uplink_collector`); `spool_limit_bytes`
    /// is `[spool] max_bytes`.
    pub fn new(commit: &str, collectors: &[String], spool_limit_bytes: u64) -> AgentMetrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        register_build_info(&mut registry, PREFIX, env!("CARGO_PKG_VERSION"), commit);
        let agent = registry.sub_registry_with_prefix(PREFIX);
        let scheduler = std::sync::Arc::new(SchedulerMetrics::register(agent));
        let uplink = UplinkMetrics::register(agent, collectors, spool_limit_bytes);
        let config_reloads = Counter::default();
        agent.register(
            "config_reloads",
            "Configuration reloads applied since the agent started",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        agent.register(
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stays)",
            config_reload_failures.clone(),
        );
        AgentMetrics {
            registry,
            scheduler,
            uplink,
            config_reloads,
            config_reload_failures,
        }
    }
}
