//! Tests of the uplink's parts: series ids, the spooled encoding, stream
//! declarations, clipping, the collector list, backoff and the connect
//! error; `tests/order.rs`: the delivery order.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;

use tributary_proto::v1 as pb;

use std::time::Duration;

use super::backoff::Backoff;
use super::collectors::fnv1a64;
use super::connection::{Event, Link, connect};
use super::declared::Declared;
use super::decode::spooled_readings;
use super::encode::{clip, encode_batch, series_decl, wire_refusal};
use super::series_ids::SeriesIds;
use super::{Collectors, NoCollectors, UplinkConfig, UplinkStats};
use crate::reading::{FailureKind, Labels, Reading, SeriesKey, Value};
use crate::spool::Record;

mod order;

fn key(device: &str, metric: &str) -> Arc<SeriesKey> {
    Arc::new(SeriesKey {
        device: device.into(),
        metric: metric.into(),
        labels: Labels::from_map(&BTreeMap::from([("site".to_owned(), "x".to_owned())])),
        unit: "W".into(),
    })
}

/// `encode_batch`'s bytes, readings and highest series id.
fn encode(ids: &mut SeriesIds, readings: &[Reading]) -> (Vec<u8>, u32, u32) {
    let e = encode_batch(ids, readings);
    (e.bytes, e.readings, e.max_series)
}

fn record(seq: u64, bytes: Vec<u8>, readings: u32, series: u32) -> Record {
    Record {
        seq,
        readings,
        batch: bytes,
        series,
    }
}

#[test]
fn series_ids_are_stable_by_pointer_and_found_again_by_content() {
    let (a, b) = (key("d", "a"), key("d", "b"));
    let mut ids = SeriesIds::default();
    assert_eq!((ids.id(&a), ids.id(&b), ids.id(&a)), (1, 2, 1));
    // The guess of the next id is only taken when it is right.
    assert_eq!(
        (
            ids.id_after(1, &b),
            ids.id_after(1, &a),
            ids.id_after(2, &a)
        ),
        (2, 1, 1)
    );
    // After a restart the keys come from the dictionary, in other Arcs.
    let loaded: Vec<Arc<SeriesKey>> = ids.keys.iter().map(|k| Arc::new((**k).clone())).collect();
    let mut ids = SeriesIds::new(loaded);
    let b2 = key("d", "b");
    assert_eq!(ids.id(&b2), 2, "same content, same id");
    assert!(
        Arc::ptr_eq(ids.key(2).unwrap(), &b2),
        "the new Arc is the one kept"
    );
    assert_eq!(
        (ids.keys.len(), ids.by_key.len()),
        (2, 2),
        "one entry per id"
    );
    assert_eq!(ids.id(&key("d", "c")), 3);
    ids.truncate(2);
    assert_eq!(ids.len(), 2);
    assert_eq!((ids.keys.len(), ids.by_key.len()), (2, 2));
    assert_eq!(
        ids.id(&key("d", "other")),
        3,
        "a forgotten id is handed out again"
    );
}

/// The time of [`mixed_readings`]' first reading.
const MIXED_T: i64 = 1_700_000_000_000_000_000;

/// Four readings of four series, one of each older kind (f64, i64, bool,
/// string), and the key of the f64 one.
fn mixed_readings() -> (Vec<Reading>, Arc<SeriesKey>) {
    let volts = key("m", "volts");
    let t = MIXED_T;
    let readings = vec![
        Reading {
            series: volts.clone(),
            ts_ns: t,
            value: Value::F64(230.5),
        },
        Reading {
            series: key("m", "count"),
            ts_ns: t,
            value: Value::I64(-3),
        },
        Reading {
            series: key("m", "on"),
            ts_ns: t + 1,
            value: Value::Bool(true),
        },
        Reading {
            series: key("m", "state"),
            ts_ns: t + 2,
            value: Value::Str("idle".into()),
        },
    ];
    (readings, volts)
}

#[test]
fn a_spooled_batch_holds_every_reading_and_no_names() {
    let t = MIXED_T;
    let (mixed, volts) = mixed_readings();
    let mut readings = mixed.clone();
    readings.extend([
        Reading {
            series: volts.clone(),
            ts_ns: t + 1_000_000_000,
            value: Value::Failed {
                kind: FailureKind::Timeout,
                message: "slow".into(),
            },
        },
        Reading {
            series: volts.clone(),
            ts_ns: t + 2_000_000_000,
            value: Value::F64(f64::MIN),
        },
    ]);
    let mut ids = SeriesIds::default();
    let (bytes, count_n, max_series) = encode(&mut ids, &readings);
    assert_eq!((count_n, max_series), (6, 4));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("volts") && !text.contains("site"),
        "no names in records"
    );
    let mut back = spooled_readings(&record(1, bytes, 6, 4), &ids.keys).unwrap();
    // Columns come grouped by kind: compare as sets in a fixed order.
    let order = |r: &Reading| (r.ts_ns, r.series.metric.clone());
    back.sort_by_key(order);
    let mut want = readings;
    want.sort_by_key(order);
    assert_eq!(back, want);
}

#[test]
fn a_poll_of_floats_costs_at_most_eleven_bytes_a_reading() {
    // 100 gauges of one poll: consecutive ids, one timestamp.
    let keys: Vec<_> = (0..100).map(|i| key("dev", &format!("g{i}"))).collect();
    let mut ids = SeriesIds::default();
    let mut readings = Vec::new();
    for poll in 0..10i64 {
        for k in &keys {
            readings.push(Reading {
                series: k.clone(),
                ts_ns: 1_700_000_000_000_000_000 + poll * 100_000_000,
                value: Value::F64(poll as f64 * 0.1),
            });
        }
    }
    let (bytes, n, _) = encode(&mut ids, &readings);
    // 8 B value + 1 B series delta + 1 B time delta, plus the group's
    // few bytes of framing.
    assert!(
        bytes.len() <= 11 * n as usize,
        "{} bytes for {n} readings",
        bytes.len()
    );
}

#[test]
fn a_scrape_spools_about_ten_bytes_a_reading_without_names() {
    // The vs-prometheus shape: targets of 105 gauges plus `up`, each
    // scrape stamped once, 1,000 readings per batch. The previous
    // layout (a declaration per series in every record, rows) took
    // 67.4 bytes per reading for these very keys.
    let mut keys = Vec::new();
    for t in 0..10 {
        for i in 0..106 {
            keys.push(Arc::new(SeriesKey {
                device: format!("target-{t:04}").into(),
                metric: if i == 105 { "up" } else { "sim_extra_value" }.into(),
                labels: if i == 105 {
                    Labels::default()
                } else {
                    Labels::from_map(&BTreeMap::from([("i".to_owned(), i.to_string())]))
                },
                unit: "".into(),
            }));
        }
    }
    let readings: Vec<Reading> = keys
        .iter()
        .enumerate()
        .map(|(n, k)| Reading {
            series: k.clone(),
            ts_ns: 1_700_000_000_000_000_000 + (n / 106) as i64 * 500_000,
            value: if &*k.metric == "up" {
                Value::I64(1)
            } else {
                Value::F64((n as f64 + 7.0) / 2.0)
            },
        })
        .collect();
    let mut ids = SeriesIds::default();
    let (bytes, n, _) = encode(&mut ids, &readings[..1000]);
    let per_reading = bytes.len() as f64 / f64::from(n);
    println!("{per_reading:.2} bytes per reading spooled");
    assert!(per_reading < 10.5, "{per_reading:.2} bytes per reading");
}

#[test]
fn each_stream_declares_a_series_once_the_first_time_it_is_used() {
    let (a, b) = (key("d", "a"), key("d", "b"));
    let mut ids = SeriesIds::default();
    let r = |k: &Arc<SeriesKey>, v: f64| Reading {
        series: k.clone(),
        ts_ns: 5,
        value: Value::F64(v),
    };
    let (first, _, _) = encode(&mut ids, &[r(&a, 1.0), r(&a, 2.0)]);
    let (second, _, _) = encode(&mut ids, &[r(&b, 1.0), r(&a, 3.0)]);
    let first = pb::Batch::decode(first.as_slice()).unwrap();
    let second = pb::Batch::decode(second.as_slice()).unwrap();
    let declared_ids = |d: Vec<pb::SeriesDecl>| {
        d.iter()
            .map(|d| (d.id, d.metric.clone()))
            .collect::<Vec<_>>()
    };
    let mut stream = Declared::default();
    assert_eq!(
        declared_ids(stream.missing(&first, &ids).unwrap()),
        vec![(1, "a".to_owned())]
    );
    assert_eq!(
        declared_ids(stream.missing(&second, &ids).unwrap()),
        vec![(2, "b".to_owned())]
    );
    assert!(stream.missing(&second, &ids).unwrap().is_empty());
    // A new stream declares again what it uses.
    let mut stream = Declared::default();
    assert_eq!(stream.missing(&second, &ids).unwrap().len(), 2);
    // An unknown id declares nothing and leaves nothing marked.
    let mut stream = Declared::default();
    let mut bad = second.clone();
    bad.readings.push(pb::Reading {
        series: 9,
        ts_ns: 5,
        value: Some(pb::reading::Value::I64(1)),
    });
    assert_eq!(stream.missing(&bad, &ids), Err(9));
    assert_eq!(stream.missing(&second, &ids).unwrap().len(), 2);
}

#[test]
fn a_series_the_collector_would_refuse_is_spooled_as_a_failed_reading() {
    let named = |device: &str, metric: &str, label: &str| {
        Arc::new(SeriesKey {
            device: device.into(),
            metric: metric.into(),
            labels: Labels::from_map(&BTreeMap::from([(label.to_owned(), "v".to_owned())])),
            unit: "".into(),
        })
    };
    let good = named("plant", "temp", "site");
    let r = |series: &Arc<SeriesKey>, value: Value| Reading {
        series: series.clone(),
        ts_ns: 7,
        value,
    };
    let readings = [
        r(&good, Value::F64(1.0)),
        r(&named("plant", "", "site"), Value::F64(2.0)),
        r(&good, Value::F64(3.0)),
        r(&named("", "temp", "site"), Value::I64(4)),
        r(&named("plant", "temp", ""), Value::Str("x".into())),
        r(&named("plant", "", "site"), Value::F64(5.0)),
    ];
    let mut ids = SeriesIds::default();
    let e = encode_batch(&mut ids, &readings);
    assert_eq!((e.readings, e.invalid), (6, 4));
    // Only valid series got ids: the good one and two stand-ins.
    let keys: Vec<(&str, &str)> = ids.keys.iter().map(|k| (&*k.device, &*k.metric)).collect();
    assert_eq!(
        keys,
        [
            ("plant", "temp"),
            ("plant", "invalid_series"),
            ("invalid_series", "invalid_series")
        ]
    );
    for (i, key) in ids.keys.iter().enumerate() {
        assert_eq!(wire_refusal(key), None, "{key:?}");
        let decl = series_decl(i as u32 + 1, key);
        assert!(
            !decl.device.is_empty() && !decl.metric.is_empty(),
            "{decl:?}"
        );
    }
    let back = spooled_readings(&record(1, e.bytes, 6, e.max_series), &ids.keys).unwrap();
    let failure = |device: &str| {
        back.iter()
            .filter(|r| &*r.series.device == device && &*r.series.metric == "invalid_series")
            .map(|r| match &r.value {
                Value::Failed { kind, message } => {
                    assert_eq!(*kind, FailureKind::Error);
                    message.clone()
                }
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        failure("plant"),
        [
            "series refused before spooling, the metric name is empty: device \"plant\", metric \"\", labels {\"site\"=\"v\"}; its value 2 is not stored",
            "series refused before spooling, a label name is empty: device \"plant\", metric \"temp\", labels {\"\"=\"v\"}; its value \"x\" is not stored",
            "series refused before spooling, the metric name is empty: device \"plant\", metric \"\", labels {\"site\"=\"v\"}; its value 5 is not stored",
        ]
    );
    assert_eq!(
        failure("invalid_series"),
        [
            "series refused before spooling, the device name is empty: device \"\", metric \"temp\", labels {\"site\"=\"v\"}; its value 4 is not stored"
        ]
    );
    let good_values: Vec<&Value> = back
        .iter()
        .filter(|r| Arc::ptr_eq(&r.series, &ids.keys[0]))
        .map(|r| &r.value)
        .collect();
    assert_eq!(good_values, [&Value::F64(1.0), &Value::F64(3.0)]);
}

/// An uplink on a fresh spool in a temporary directory, sealing one
/// reading per batch, with `n` batches spooled (sequences `1..=n`).
fn uplink_with_batches(name: &str, n: usize) -> (super::Uplink, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "tributary-uplink-{name}-{}-{}",
        std::process::id(),
        crate::reading::now_ns()
    ));
    let (spool, _) = crate::spool::Spool::open(crate::spool::SpoolOptions {
        dir: dir.clone(),
        max_bytes: 1 << 20,
        policy: crate::spool::FullPolicy::DropOldest,
        sync: false,
    })
    .expect("spool");
    let mut config = UplinkConfig::new(
        "a".into(),
        Collectors::new(vec!["http://x".into()]).unwrap(),
    );
    config.batch_max_readings = 1;
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let (mut uplink, _) = super::Uplink::new(config, rx, spool);
    let k = key("d", "m");
    uplink.push(
        (0..n)
            .map(|i| Reading {
                series: k.clone(),
                ts_ns: 1 + i as i64,
                value: Value::I64(i as i64),
            })
            .collect(),
    );
    assert_eq!(uplink.spool.last_seq(), n as u64);
    (uplink, dir)
}

#[test]
fn a_refused_batch_is_found_alone_in_flight_before_it_is_dropped() {
    let (mut u, dir) = uplink_with_batches("refused", 3);
    let refusal = tonic::Status::invalid_argument("batch.series[0].metric: longer than 32 bytes");
    // A stream that sent `seqs` and was refused.
    let refused_after = |u: &mut super::Uplink, seqs: &[u64]| {
        u.spool.clear_in_flight();
        for &s in seqs {
            u.spool.sent(s);
        }
        u.rejected(&refusal);
    };
    // Batches 1 to 3 were in flight when the stream was refused, three
    // times: which one is not known, so none is dropped (the oldest, 1,
    // used to be, though the collector may well have refused 3).
    for _ in 0..3 {
        refused_after(&mut u, &[1, 2, 3]);
    }
    assert_eq!(u.spool.first_unacked(), Some(1));
    assert_eq!((u.stats.refused_batches, u.spool.dropped()), (0, 0));
    // One at a time now: 1 goes alone, 2 waits for its ack.
    u.spool.clear_in_flight();
    assert!(u.may_send(1));
    assert!(!u.may_send(2));
    u.spool.sent(1);
    assert!(!u.may_send(2));
    u.acked(1);
    assert!(u.may_send(2) && !u.may_send(3));
    u.spool.sent(2);
    u.acked(2);
    // 3 alone is refused: after the third time it is given up on, counted.
    for time in 1..=3 {
        refused_after(&mut u, &[3]);
        let expected = if time < 3 { Some(3) } else { None };
        assert_eq!(u.spool.first_unacked(), expected, "refusal {time}");
    }
    assert_eq!(
        (
            u.stats.refused_batches,
            u.stats.refused_readings,
            u.stats.dropped_readings
        ),
        (1, 1, 1)
    );
    // Everything that was in flight is dealt with: sending freely again.
    assert!(u.refusal.is_none());
    // Other ends of a stream are no refusal.
    let (mut u, dir2) = uplink_with_batches("not-refused", 1);
    u.spool.sent(1);
    for _ in 0..3 {
        u.rejected(&tonic::Status::unavailable("collector going away"));
        u.rejected(&tonic::Status::invalid_argument(
            "hello: sent twice on one stream",
        ));
    }
    assert!(u.refusal.is_none() && u.spool.first_unacked() == Some(1));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

#[test]
fn only_the_batches_in_flight_at_a_refusal_are_pinned_down() {
    // An out-of-order stream: backlog 1 and 2 and live 9 and 10 in flight,
    // 3 to 8 still waiting, when the collector refuses one of them.
    let (mut u, dir) = uplink_with_batches("refused-ooo", 10);
    let refusal = tonic::Status::invalid_argument("batch.series[0].metric: longer than 32 bytes");
    for s in [1, 2, 9, 10] {
        u.spool.sent(s);
    }
    u.rejected(&refusal);
    u.spool.clear_in_flight();
    // The suspects go one at a time; 3 to 8 are no suspects and do not
    // go one round trip each (they used to, up to the live tip).
    for s in [1, 2, 9] {
        assert!(u.may_send(s) && !u.may_send(3), "{s}");
        u.spool.sent(s);
        assert!(!u.may_send(10));
        u.acked_set(0, &[(s, s)]);
    }
    assert!(u.may_send(10) && !u.may_send(3));
    for _ in 0..3 {
        u.spool.clear_in_flight();
        u.spool.sent(10);
        u.rejected(&refusal);
    }
    assert_eq!(u.stats.refused_batches, 1);
    assert!(u.refusal.is_none());
    assert_eq!(u.spool.first_unacked(), Some(3));
    assert!(u.spool.is_acked(10) && u.spool.is_unacked(8));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn long_strings_are_cut_at_a_character_boundary() {
    assert_eq!(clip("abc", 5), "abc");
    assert_eq!(clip("abcdef", 4), "abcd");
    // 'é' is two bytes: never cut inside it.
    assert_eq!(clip("aé", 2), "a");
}

#[test]
fn agents_spread_over_collectors() {
    for n in [2u64, 3, 5] {
        let mut per = vec![0; n as usize];
        for i in 0..1000 {
            per[(fnv1a64(format!("edge-{i}").as_bytes()) % n) as usize] += 1;
        }
        // Each collector gets a fair share: 1000 / n, within 30 %
        // (more than 4 standard deviations for these sizes).
        for c in &per {
            assert!(*c * n > 700 && *c * n < 1300, "{n} collectors: {per:?}");
        }
    }
    // Stable across runs and platforms.
    assert_eq!(fnv1a64(b"edge-1"), fnv1a64(b"edge-1"));
}
/// A loopback URL nothing listens on (bound a moment ago, then closed).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn config_for(urls: Vec<String>) -> Arc<UplinkConfig> {
    let mut config = UplinkConfig::new("edge-1".into(), Collectors::new(urls).unwrap());
    config.backoff_min = Duration::from_millis(1);
    config.backoff_max = Duration::from_millis(2);
    Arc::new(config)
}

#[tokio::test]
async fn an_unreachable_collector_reads_each_cause_once() {
    let url = closed_port_url();
    let err = connect(
        url.clone(),
        pb::AgentFrame::default(),
        config_for(vec![url.clone()]),
    )
    .await
    .err()
    .unwrap();
    // tonic's chain is `transport error` → `tcp connect error` → `tcp
    // connect error` → the OS error; the repeated one is printed once.
    assert_eq!(
        err.to_string(),
        format!(
            "collector {url}: transport error: tcp connect error: Connection refused (os error 111)"
        )
    );
    assert!(
        std::error::Error::source(&err).is_none(),
        "causes are in the message"
    );
}

#[tokio::test]
async fn a_failed_connect_backs_off_and_moves_to_the_next_collector() {
    let urls = vec![closed_port_url(), closed_port_url()];
    let config = config_for(urls.clone());
    let first = config.collectors.start_for("edge-1");
    let mut link = Link::new(config);
    let mut tried = Vec::new();
    for attempt in 1..=3 {
        assert!(matches!(link.next_event(false).await, Event::RetryDue));
        link.connect_if_due(pb::AgentFrame::default);
        match link.next_event(false).await {
            Event::ConnectFailed { error, retry_in } => {
                assert!(retry_in <= Duration::from_millis(2), "attempt {attempt}");
                tried.push(error.to_string());
            }
            _ => panic!("attempt {attempt}: connected to a closed port"),
        }
        assert!(link.stream().is_none());
    }
    for (i, message) in tried.iter().enumerate() {
        let url = &urls[(first + i) % 2];
        assert!(
            message.starts_with(&format!("collector {url}: ")),
            "{message}"
        );
    }
    link.close();
}

#[test]
fn a_collector_list_cannot_be_empty() {
    assert_eq!(Collectors::new(Vec::new()), Err(NoCollectors));
    let one = Collectors::new(vec!["http://a".into()]).unwrap();
    assert_eq!(
        (one.at(0), one.at(7), one.start_for("any")),
        ("http://a", "http://a", 0)
    );
}

#[test]
fn backoff_doubles_up_to_its_bound_with_jitter_below_it() {
    let b = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    let ceilings: Vec<u128> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
    assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(b.ceiling(u32::MAX), b.max);
    for attempt in [0, 1, 3, 40] {
        for _ in 0..100 {
            let d = b.delay(attempt);
            assert!(d >= b.min && d <= b.ceiling(attempt), "{attempt}: {d:?}");
        }
    }
}

#[test]
fn stats_read_back_from_their_text() {
    let stats = UplinkStats {
        sealed_batches: 1,
        acked_seq: 2,
        dropped_readings: 3,
        connects: 4,
        connect_failures: 5,
        streams_ended: 6,
        resent_batches: 7,
        spool_errors: 8,
        confirmed_by_welcome: 9,
        invalid_series_readings: 10,
        refused_batches: 11,
        refused_readings: 12,
        epoch_rollovers: 13,
        series_dictionary_bytes: 14,
        live_batches_sent: 15,
        backlog_batches_sent: 16,
        live_batches_ahead: 17,
    };
    let text = stats.to_prometheus_text();
    assert!(
        text.contains("\ntributary_agent_uplink_streams_ended_total 6\n"),
        "{text}"
    );
    assert_eq!(UplinkStats::from_prometheus_text(&text), Some(stats));
    assert_eq!(UplinkStats::from_prometheus_text("garbage"), None);
}

/// A spooled batch as an agent from before the u64 kind wrote it
/// (`encode_batch` of `volts` 230.5 and `count` -3 at t, `on` true at
/// t + 1, `state` "idle" at t + 2, series ids 1 to 4 in that order).
const BATCH_BEFORE_U64: &[u8] = &[
    0x1a, 0x12, 0x08, 0x04, 0x10, 0x82, 0x80, 0xa8, 0xb1, 0xe3, 0x9f, 0xe7, 0xcb, 0x17, 0x32, 0x04,
    0x69, 0x64, 0x6c, 0x65, 0x3a, 0x46, 0x0a, 0x1a, 0x0a, 0x01, 0x02, 0x10, 0x80, 0x80, 0xa8, 0xb1,
    0xe3, 0x9f, 0xe7, 0xcb, 0x17, 0x1a, 0x01, 0x00, 0x22, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd0,
    0x6c, 0x40, 0x12, 0x13, 0x0a, 0x01, 0x04, 0x10, 0x80, 0x80, 0xa8, 0xb1, 0xe3, 0x9f, 0xe7, 0xcb,
    0x17, 0x1a, 0x01, 0x00, 0x22, 0x01, 0x05, 0x1a, 0x13, 0x0a, 0x01, 0x06, 0x10, 0x81, 0x80, 0xa8,
    0xb1, 0xe3, 0x9f, 0xe7, 0xcb, 0x17, 0x1a, 0x01, 0x00, 0x22, 0x01, 0x01,
];

/// Spool records survive the u64 kind: a record written before it reads
/// back the same through a reopened spool, and u64 readings (2^64 - 1,
/// 2^63 + 1) go in and come out of the spool with every bit.
#[test]
fn spooled_records_before_and_with_u64_read_back_exactly() {
    let dir = std::env::temp_dir().join(format!(
        "tributary-uplink-u64-{}-{}",
        std::process::id(),
        crate::reading::now_ns()
    ));
    let opts = || crate::spool::SpoolOptions {
        dir: dir.clone(),
        max_bytes: 1 << 20,
        policy: crate::spool::FullPolicy::DropOldest,
        sync: false,
    };
    let t = MIXED_T;
    let (old, volts) = mixed_readings();
    let mut ids = SeriesIds::default();
    for r in &old {
        ids.id(&r.series);
    }
    let octets = key("m", "octets");
    let new = vec![
        Reading {
            series: octets.clone(),
            ts_ns: t + 3,
            value: Value::U64(u64::MAX),
        },
        Reading {
            series: octets.clone(),
            ts_ns: t + 4,
            value: Value::U64((1 << 63) + 1),
        },
        Reading {
            series: volts.clone(),
            ts_ns: t + 4,
            value: Value::F64(1.0),
        },
    ];
    let (new_bytes, new_n, new_max) = encode(&mut ids, &new);
    assert_eq!((new_n, new_max), (3, 5));
    {
        let (mut spool, _) = crate::spool::Spool::open(opts()).expect("spool");
        let keys: Vec<&SeriesKey> = ids.keys.iter().map(|k| k.as_ref()).collect();
        spool
            .append_with_series(&keys, BATCH_BEFORE_U64, 4, 4)
            .expect("old record");
        spool
            .append(&new_bytes, new_n, new_max)
            .expect("new record");
    }
    let (mut spool, _) = crate::spool::Spool::open(opts()).expect("reopen");
    let dictionary = spool.take_series();
    let order = |r: &Reading| (r.ts_ns, r.series.metric.clone());
    for (seq, want) in [(1, old), (2, new)] {
        let record = spool.read_from(seq).expect("read").expect("a record");
        let mut back = spooled_readings(&record, &dictionary).expect("decode");
        back.sort_by_key(order);
        let mut want = want;
        want.sort_by_key(order);
        assert_eq!(back, want, "record {seq}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
