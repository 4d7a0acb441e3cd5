//! The encoded metrics against what was counted: every family present,
//! per-agent series labelled by agent only, counters that add up, and a
//! body the Prometheus text format parser accepts (the integration test
//! `tests/tests/collector_metrics.rs` runs `promtool` and a real
//! Prometheus on it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tributary_process::metrics::{Format, encode};

use super::*;
use crate::model::AgentLive;

/// The value of the one sample line that starts with `series` (name and
/// labels exactly as encoded), if there is one.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn every_family_is_encoded_with_what_was_counted() {
    let mut metrics = CollectorMetrics::new();
    metrics.register_name("col \"a\"");
    let (ingest, merger, query, listener) = (
        metrics.ingest.clone(),
        metrics.merger.clone(),
        metrics.query.clone(),
        metrics.listener.clone(),
    );
    let http = metrics.http.clone();
    let stats = Arc::new(AgentStats::default());
    stats.committed(100);
    stats.committed(50);
    stats.saw(true, true, 2_000_000_000);
    stats.skewed(7);
    stats.dropped(3);
    stats.delivery(10, 12, 1);
    let live = BTreeMap::from([(
        "edge-1".to_string(),
        AgentLive {
            connected: true,
            peer: "127.0.0.1:1".into(),
            collector: "col \"a\"".into(),
            stats,
        },
    )]);
    let (_live_tx, live_rx) = watch::channel(Arc::new(live));
    let (tx, _rx) = mpsc::channel(8);
    let registry = metrics.into_registry(live_rx, QueueProbe::of(&tx));

    ingest.streams_opened.inc();
    ingest.streams_open.inc();
    ingest.refused(StreamRefusal::Allowlist);
    http.refused(HttpRefusal::EventStreamsFull);
    http.refused(HttpRefusal::EventStreamsFull);
    merger.committed(2, 150, Duration::from_millis(3));
    merger.store_error(StoreOp::Commit);
    let t = query.start(Rpc::Latest);
    query.finish(t, false);
    let open = crate::listener::OpenConnection::new(listener.clone());

    let body = encode(&registry, Format::Text).unwrap();
    let agent = |name: &str| sample(&body, &format!("{name}{{agent=\"edge-1\"}}"));
    assert_eq!(agent("tributary_collector_agent_connected"), Some(1.0));
    assert_eq!(
        agent("tributary_collector_agent_readings_committed_total"),
        Some(150.0)
    );
    assert_eq!(
        agent("tributary_collector_agent_batches_committed_total"),
        Some(2.0)
    );
    assert_eq!(
        agent("tributary_collector_agent_batches_deduplicated_total"),
        Some(1.0)
    );
    assert_eq!(
        agent("tributary_collector_agent_batches_resent_total"),
        Some(1.0)
    );
    assert_eq!(
        agent("tributary_collector_agent_skewed_readings_total"),
        Some(7.0)
    );
    assert_eq!(
        agent("tributary_collector_agent_dropped_readings_total"),
        Some(3.0)
    );
    assert_eq!(agent("tributary_collector_agent_lag_sequences"), Some(2.0));
    assert!(agent("tributary_collector_agent_lag_seconds").unwrap() > 0.0);
    assert_eq!(
        agent("tributary_collector_agent_last_seen_timestamp_seconds"),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_streams_opened_total"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "tributary_collector_streams_open"), Some(1.0));
    assert_eq!(
        sample(
            &body,
            "tributary_collector_http_refused_total{reason=\"event_streams_full\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_http_refused_total{reason=\"tls_handshake_timeout\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_streams_refused_total{reason=\"allowlist\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_streams_refused_total{reason=\"identity\"}"
        ),
        Some(0.0),
        "every reason is there from the start"
    );
    assert_eq!(
        sample(&body, "tributary_collector_commits_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_commit_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_commit_group_readings_sum"),
        Some(150.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_store_errors_total{operation=\"commit\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_queries_total{rpc=\"Latest\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_query_errors_total{rpc=\"Latest\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_connections_open"),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_connections_accepted_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "tributary_collector_connections_refused_total{reason=\"tls_handshake_failed\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_merger_queue_depth"),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "tributary_collector_merger_queue_capacity"),
        Some(8.0)
    );
    assert!(body.contains("tributary_collector_build_info{"), "{body}");
    assert_eq!(
        sample(&body, "tributary_collector_info{name=\"col \\\"a\\\"\"}"),
        Some(1.0)
    );
    drop(open);
    let body = encode(&registry, Format::Text).unwrap();
    assert_eq!(
        sample(&body, "tributary_collector_connections_open"),
        Some(0.0)
    );

    // Only `agent` is open-ended: no label names a device or a series.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            for pair in labels.split(',') {
                let key = pair.split('=').next().unwrap_or("");
                assert!(
                    [
                        "agent",
                        "reason",
                        "operation",
                        "rpc",
                        "le",
                        "version",
                        "commit",
                        "name"
                    ]
                    .contains(&key.trim()),
                    "unexpected label in {line}"
                );
            }
        }
    }
    // OpenMetrics too, ending as the format wants.
    let om = encode(&registry, Format::OpenMetrics).unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
}

#[test]
fn the_queue_is_gone_with_the_merger() {
    let metrics = CollectorMetrics::new();
    let (_live_tx, live_rx) = watch::channel(LiveAgents::default());
    let (tx, _rx) = mpsc::channel(4);
    let registry = metrics.into_registry(live_rx, QueueProbe::of(&tx));
    drop(tx);
    let body = encode(&registry, Format::Text).unwrap();
    assert!(!body.contains("merger_queue"), "{body}");
    assert!(!body.contains("agent="), "no agents, no per-agent series");
}

#[test]
fn lag_is_the_time_behind_and_zero_once_caught_up() {
    let stats = AgentStats::default();
    stats.delivery(5, 9, 1_000_000_000);
    // Still behind later: the clock keeps its start.
    stats.delivery(7, 9, 3_000_000_000);
    let c = stats.counts();
    assert_eq!(c.lag_sequences(), 2);
    assert_eq!(c.lag_seconds(4_000_000_000), 3.0);
    stats.delivery(9, 9, 5_000_000_000);
    let c = stats.counts();
    assert_eq!(c.lag_sequences(), 0);
    assert_eq!(c.lag_seconds(6_000_000_000), 0.0);
    // Behind again: a new start.
    stats.delivery(9, 10, 7_000_000_000);
    assert_eq!(stats.counts().lag_seconds(8_000_000_000), 1.0);
}
