//! Tests of `runner.rs`: how a nats round that ends early settles the
//! pipeline against the cursor and the metrics.

use std::path::Path;
use std::time::Duration;

use tributary_process::metrics::prometheus_client::registry::Registry;

use super::{Pace, end_early, take_done};
use crate::config::exports::ExportKind;
use crate::config::{Flags, resolve_text};
use crate::export::nats::NatsSink;
use crate::metrics::ExportMetrics;
use crate::store::export::CursorRow;

fn sink() -> NatsSink {
    let text = "[[exports]]\nname = \"bus\"\nkind = \"nats\"\nstream = \"T\"\nurl = \"nats://127.0.0.1:1\"\nmax_lag = \"1m\"\n";
    let serve = resolve_text(
        text,
        Path::new("/etc/tributary/collector.toml"),
        &Flags::default(),
    )
    .expect("valid config");
    let e = &serve.server.exports[0];
    let ExportKind::Nats(n) = &e.kind else {
        panic!("not nats: {:?}", e.kind)
    };
    NatsSink::new(&e.name, n, &e.filter, Duration::from_secs(1)).expect("sink")
}

fn pace() -> Pace {
    Pace {
        measure_at: tokio::time::Instant::now(),
        trim_more: false,
        log_end: false,
        unsaved: false,
    }
}

/// The round's start found nothing done; during the round page a's last
/// PubAck and one of page b's came back; then page a crossed `max_lag`.
/// Page a is in the stream: the cursor passes it (so the skip that
/// follows starts after it) and it counts as sent once; page b's one
/// acknowledged message counts nowhere until b is delivered or skipped.
#[tokio::test]
async fn a_page_acknowledged_during_a_round_that_gives_up_is_delivered_not_skipped() {
    let mut sink = sink();
    let metrics = ExportMetrics::new(&mut Registry::default()).handles("bus");
    let mut cursor = CursorRow {
        name: "bus".into(),
        position: 4,
        inflight: 4,
        ..CursorRow::default()
    };
    let mut pace = pace();
    let a = sink.open_page(10, 1, 2);
    let b = sink.open_page(20, 2, 2);
    sink.ack(a, 30);
    // The round starts: page a still waits for a PubAck.
    take_done(&mut sink, "bus", &metrics, &mut cursor, &mut pace);
    assert_eq!((cursor.position, pace.unsaved), (4, false));
    // During the round.
    sink.ack(a, 20);
    sink.ack(b, 7);
    // max_lag fires.
    let acked = end_early(&mut sink, "bus", &metrics, &mut cursor, &mut pace);
    assert_eq!(
        (cursor.position, cursor.inflight, cursor.sent),
        (10, 10, 50),
        "page a delivered"
    );
    assert!(pace.unsaved, "the moved cursor is saved by the next round");
    assert_eq!(
        metrics.sent.get(),
        50,
        "page a counted once, page b not yet"
    );
    assert_eq!(acked, 7, "page b's acknowledged readings are reported");
    assert_eq!(sink.pages(), 0, "page b abandoned");
    assert_eq!(metrics.skipped.get(), 0);
}

/// Only whole pages count: a page given up half acknowledged and then
/// delivered after the replay counts its readings once.
#[tokio::test]
async fn a_page_sent_again_after_a_give_up_counts_once() {
    let mut sink = sink();
    let metrics = ExportMetrics::new(&mut Registry::default()).handles("bus");
    let mut cursor = CursorRow::default();
    let mut pace = pace();
    let a = sink.open_page(10, 1, 2);
    sink.ack(a, 5);
    assert_eq!(
        end_early(&mut sink, "bus", &metrics, &mut cursor, &mut pace),
        5
    );
    assert_eq!((cursor.position, metrics.sent.get()), (0, 0));
    // The replay: both messages acknowledged (one as a duplicate).
    let a = sink.open_page(10, 1, 2);
    sink.ack(a, 5);
    sink.ack(a, 5);
    take_done(&mut sink, "bus", &metrics, &mut cursor, &mut pace);
    assert_eq!(
        (cursor.position, cursor.sent, metrics.sent.get()),
        (10, 10, 10)
    );
}
