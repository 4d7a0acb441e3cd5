//! Numbers the collector keeps anyway, read when Prometheus scrapes: the
//! gRPC listener's connection counters ([`ListenerCollector`], from
//! `listener::ListenerStats`) and the merger's queue ([`QueueCollector`],
//! from the free room of its channel). Nothing is updated for them.

use std::sync::Arc;

use tributary_process::metrics::prometheus_client::collector::Collector;
use tributary_process::metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use tributary_process::metrics::prometheus_client::metrics::counter::ConstCounter;
use tributary_process::metrics::prometheus_client::metrics::gauge::ConstGauge;

use crate::listener::{ListenerStats, Refusal};
use crate::merger::QueueProbe;

/// The gRPC listener's connections: open, accepted, refused or held back
/// by reason.
#[derive(Debug)]
pub struct ListenerCollector(pub Arc<ListenerStats>);

impl Collector for ListenerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let open = ConstGauge::new(stats.open_connections());
        open.encode(encoder.encode_descriptor(
            "tributary_collector_connections_open",
            "Connections to the gRPC listener open now (handshaking or served)",
            None,
            open.metric_type(),
        )?)?;
        let accepted = ConstCounter::new(stats.accepted_connections());
        accepted.encode(encoder.encode_descriptor(
            "tributary_collector_connections_accepted",
            "Connections admitted by the gRPC listener (within max_connections and max_connections_per_address)",
            None,
            accepted.metric_type(),
        )?)?;
        let mut refused = encoder.encode_descriptor(
            "tributary_collector_connections_refused",
            "Connections the gRPC listener closed or held back, by reason (tls_handshake_*: TLS; global_cap_wait: accepting paused at max_connections)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for reason in Refusal::ALL {
            let labels = [("reason", reason.name())];
            ConstCounter::new(stats.get(reason)).encode(refused.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The merger's command queue: how full it is, and its size.
#[derive(Debug)]
pub struct QueueCollector(pub QueueProbe);

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Nothing once the merger has stopped.
        let Some((depth, capacity)) = self.0.depth() else {
            return Ok(());
        };
        let gauges = [
            (
                "tributary_collector_merger_queue_depth",
                "Commands (batches, hellos, series resolves) waiting in the merger's queue",
                depth,
            ),
            (
                "tributary_collector_merger_queue_capacity",
                "Size of the merger's queue (merger_queue); when full, sessions wait and agents spool",
                capacity,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
