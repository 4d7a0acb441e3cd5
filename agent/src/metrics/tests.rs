//! The agent's metrics as a scrape shows them, after known updates.

use std::time::Duration;

use tributary_process::metrics::{Format, encode};

use super::*;

fn scrape(m: &AgentMetrics) -> String {
    encode(&m.registry, Format::Text).expect("encodes")
}

/// The value of the sample line `series` (name and labels as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

#[test]
fn device_updates_show_under_their_labels() {
    let m = AgentMetrics::new("abc", &["http://c1:7400".into()], 1 << 20);
    let d = m.scheduler.device("plc-1", "modbus");
    for _ in 0..3 {
        d.polled(Outcome::Ok, Duration::from_millis(2));
    }
    d.polled(Outcome::Timeout, Duration::from_secs(1));
    d.skipped(2);
    d.late(Duration::from_millis(1));
    d.produced(10, 4);
    d.backoff(Duration::from_secs(3));
    let text = scrape(&m);
    let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in:\n{text}"));
    assert_eq!(
        v("tributary_agent_polls_total{device=\"plc-1\",outcome=\"ok\"}"),
        3.0
    );
    assert_eq!(
        v("tributary_agent_polls_total{device=\"plc-1\",outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        v("tributary_agent_polls_total{device=\"plc-1\",outcome=\"error\"}"),
        0.0
    );
    assert_eq!(
        v("tributary_agent_polls_total{device=\"plc-1\",outcome=\"skipped\"}"),
        2.0
    );
    // The last poll timed out.
    assert_eq!(v("tributary_agent_device_up{device=\"plc-1\"}"), 0.0);
    assert_eq!(
        v("tributary_agent_device_backoff_seconds{device=\"plc-1\"}"),
        3.0
    );
    assert_eq!(v("tributary_agent_readings_total{device=\"plc-1\"}"), 10.0);
    assert_eq!(
        v("tributary_agent_series_limit_dropped_readings_total"),
        4.0
    );
    assert_eq!(
        v("tributary_agent_poll_duration_seconds_count{driver=\"modbus\"}"),
        4.0
    );
    assert_eq!(
        v("tributary_agent_poll_duration_seconds_bucket{driver=\"modbus\",le=\"0.0025\"}"),
        3.0
    );
    assert_eq!(
        v("tributary_agent_poll_lateness_seconds_count{driver=\"modbus\"}"),
        1.0
    );
    assert_eq!(
        v("tributary_agent_build_info{version=\"0.1.0\",commit=\"abc\"}"),
        1.0
    );
    assert_eq!(v("tributary_agent_config_reloads_total"), 0.0);
    assert!(value(&text, "process_open_fds").is_some(), "{text}");
    // A second handle of the same device shares its counters.
    m.scheduler
        .device("plc-1", "modbus")
        .polled(Outcome::Error, Duration::ZERO);
    let text = scrape(&m);
    assert_eq!(
        value(
            &text,
            "tributary_agent_polls_total{device=\"plc-1\",outcome=\"error\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn uplink_updates_show_as_counters_gauges_and_latency() {
    let urls = ["http://c1:7400".to_owned(), "http://c2:7400".to_owned()];
    let mut m = AgentMetrics::new("unknown", &urls, 1 << 20);
    let u = &mut m.uplink;
    u.link(LinkState::Connecting, None);
    u.link(LinkState::Streaming, Some("http://c2:7400"));
    u.totals(5, 1, 7, 3);
    u.totals(6, 1, 7, 4);
    for seq in 1..=4 {
        u.sent(seq, seq == 4);
    }
    // A reconnect resends from 3: 3 and 4 are in flight once each.
    u.sent(3, false);
    u.sent(4, false);
    u.acked(&acked(3, &[]));
    u.reconnect(ReconnectCause::StreamError);
    u.spool(SpoolSample {
        bytes: 4096,
        segments: 2,
        unacked_batches: 1,
        last_seq: 4,
        first_unacked: Some(4),
        backlog_batches: 1,
        backlog_bytes: 100,
    });
    let text = scrape(&m);
    let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} missing in:\n{text}"));
    assert_eq!(v("tributary_agent_batches_sealed_total"), 6.0);
    assert_eq!(v("tributary_agent_batches_resent_total"), 1.0);
    assert_eq!(v("tributary_agent_spool_dropped_readings_total"), 7.0);
    assert_eq!(v("tributary_agent_batches_sent_total"), 6.0);
    assert_eq!(v("tributary_agent_batches_acked_total"), 3.0);
    assert_eq!(v("tributary_agent_ack_latency_seconds_count"), 3.0);
    assert_eq!(v("tributary_agent_uplink_state{state=\"streaming\"}"), 1.0);
    assert_eq!(v("tributary_agent_uplink_state{state=\"connecting\"}"), 0.0);
    assert_eq!(
        v("tributary_agent_uplink_collector{url=\"http://c2:7400\"}"),
        1.0
    );
    assert_eq!(
        v("tributary_agent_uplink_collector{url=\"http://c1:7400\"}"),
        0.0
    );
    assert_eq!(
        v("tributary_agent_uplink_reconnects_total{cause=\"stream_error\"}"),
        1.0
    );
    assert_eq!(
        v("tributary_agent_uplink_reconnects_total{cause=\"refused\"}"),
        0.0
    );
    assert_eq!(v("tributary_agent_spool_bytes"), 4096.0);
    assert_eq!(v("tributary_agent_spool_limit_bytes"), 1048576.0);
    assert_eq!(v("tributary_agent_spool_segments"), 2.0);
    assert_eq!(v("tributary_agent_spool_unacked_batches"), 1.0);
    assert_eq!(v("tributary_agent_spool_acked_set_unreadable"), 0.0);
    assert_eq!(v("tributary_agent_uplink_backlog_batches"), 1.0);
    assert_eq!(v("tributary_agent_uplink_backlog_bytes"), 100.0);
    assert_eq!(
        v("tributary_agent_uplink_lane_batches_sent_total{lane=\"live\"}"),
        1.0
    );
    assert_eq!(
        v("tributary_agent_uplink_lane_batches_sent_total{lane=\"backlog\"}"),
        5.0
    );
    m.uplink.set_acked_unreadable(true);
    assert_eq!(
        value(&scrape(&m), "tributary_agent_spool_acked_set_unreadable"),
        Some(1.0)
    );
    // Batch 4 is unacked: its age counts from when it was noted sealed.
    assert!(v("tributary_agent_spool_oldest_unacked_age_seconds") > 0.0);
    // Acked: no oldest batch, age 0 at once (not at the next sample).
    m.uplink.acked(&acked(4, &[]));
    let age = |m: &AgentMetrics| {
        value(
            &scrape(m),
            "tributary_agent_spool_oldest_unacked_age_seconds",
        )
    };
    assert_eq!(age(&m), Some(0.0));
    // A batch the spool dropped (drop_oldest) is not waited for either.
    m.uplink.totals(7, 1, 7, 5);
    assert!(age(&m).is_some_and(|a| a > 0.0));
    m.uplink.spool(SpoolSample {
        bytes: 0,
        segments: 1,
        unacked_batches: 0,
        last_seq: 5,
        first_unacked: None,
        backlog_batches: 0,
        backlog_bytes: 0,
    });
    assert_eq!(age(&m), Some(0.0));
}

/// Device names are label values: escaped once, when the device's handles
/// are made, and listed in name order with every outcome.
#[test]
fn device_labels_are_escaped_and_listed_in_order() {
    let m = AgentMetrics::new("abc", &[], 1 << 20);
    let b = m.scheduler.device("b \"quoted\" \\ name", "http");
    let a = m.scheduler.device("a", "http");
    b.polled(Outcome::Ok, Duration::from_millis(1));
    a.produced(4, 0);
    let text = scrape(&m);
    assert_eq!(
        value(
            &text,
            "tributary_agent_polls_total{device=\"b \\\"quoted\\\" \\\\ name\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "tributary_agent_readings_total{device=\"a\"}"),
        Some(4.0)
    );
    let polls: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tributary_agent_polls_total"))
        .collect();
    assert_eq!(polls.len(), 8, "{text}");
    assert!(
        polls[..4].iter().all(|l| l.contains("device=\"a\"")),
        "{text}"
    );
}

/// A device a reload removed leaves every family; one added again under
/// its name starts from zero.
#[test]
fn a_removed_device_leaves_the_scrape() {
    let m = AgentMetrics::new("abc", &[], 1 << 20);
    let gone = m.scheduler.device("gone", "sim");
    let kept = m.scheduler.device("kept", "sim");
    gone.polled(Outcome::Ok, Duration::from_millis(1));
    kept.polled(Outcome::Ok, Duration::from_millis(1));
    m.scheduler.remove_device("gone");
    // Its task's poll in flight still counts, into cells no scrape reads.
    gone.produced(3, 0);
    let text = scrape(&m);
    assert!(!text.contains("device=\"gone\""), "{text}");
    assert_eq!(
        value(&text, "tributary_agent_device_up{device=\"kept\"}"),
        Some(1.0),
        "{text}"
    );
    let again = m.scheduler.device("gone", "sim");
    again.produced(1, 0);
    let text = scrape(&m);
    assert_eq!(
        value(&text, "tributary_agent_readings_total{device=\"gone\"}"),
        Some(1.0),
        "{text}"
    );
}

/// An acked set of `mark` and `ranges`.
fn acked(mark: u64, ranges: &[(u64, u64)]) -> crate::spool::AckedSet {
    let mut set = crate::spool::AckedSet::default();
    set.add(mark, ranges, u64::MAX);
    set
}

#[test]
fn acks_out_of_order_answer_the_batches_in_their_ranges() {
    let mut m = AgentMetrics::new("unknown", &["http://c1:7400".to_owned()], 1 << 20);
    for seq in [10, 1, 2, 11] {
        m.uplink.sent(seq, seq >= 10);
    }
    // The live batches 10 and 11 are committed before the backlog.
    m.uplink.acked(&acked(0, &[(10, 11)]));
    let text = scrape(&m);
    assert_eq!(
        value(&text, "tributary_agent_batches_acked_total"),
        Some(2.0)
    );
    m.uplink.acked(&acked(11, &[]));
    let text = scrape(&m);
    assert_eq!(
        value(&text, "tributary_agent_batches_acked_total"),
        Some(4.0)
    );
    assert_eq!(
        value(&text, "tributary_agent_ack_latency_seconds_count"),
        Some(4.0)
    );
}
