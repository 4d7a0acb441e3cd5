//! Tests of the scheduler: start slots, backoff, device health and the
//! pacing of a shared gateway, with real drivers against local peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::timing::{backoff_delay, first_slot_from, start_offset};
use super::*;
use crate::drivers::DriverConfig;
use crate::drivers::modbus::{ModbusConfig, ModbusMetric, RegisterKind, RegisterType, WordOrder};
use crate::drivers::sim::SimConfig;
use crate::drivers::tcp::TcpConfig;
use crate::reading::{Reading, Value};

#[test]
fn start_offsets_fall_on_slots_within_the_interval() {
    for (interval, slot) in [
        (Duration::from_secs(1), Duration::from_millis(10)),
        (Duration::from_millis(20), Duration::from_millis(1)),
        (Duration::from_micros(1500), Duration::from_millis(1)),
        (Duration::from_micros(500), Duration::from_millis(1)),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let offset = start_offset(interval);
            assert!(
                offset.is_zero() || offset < interval,
                "{offset:?} of {interval:?}"
            );
            assert_eq!(
                offset.as_nanos() % slot.as_nanos(),
                0,
                "{offset:?} of {interval:?}"
            );
            seen.insert(offset);
        }
        let slots = (interval.as_nanos() / slot.as_nanos()).clamp(1, 100) as usize;
        // Every slot drawn (5000 draws of at most 100 slots).
        assert_eq!(seen.len(), slots, "{interval:?}");
    }
}

#[test]
fn backoff_doubles_and_caps() {
    let s = Duration::from_secs(1);
    let max = Duration::from_secs(10);
    let waits: Vec<u64> = (0..7).map(|f| backoff_delay(s, f, max).as_secs()).collect();
    assert_eq!(waits, [1, 1, 2, 4, 8, 10, 10]);
    assert_eq!(backoff_delay(s, 1000, max), max);
    // A cap below the interval never shortens the interval.
    assert_eq!(backoff_delay(s, 5, Duration::from_millis(10)), s);
}

fn device(name: &str, interval_ms: u64, driver: DriverConfig) -> (DeviceConfig, Driver) {
    let config = DeviceConfig {
        name: name.into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(interval_ms),
        backoff_max: Duration::from_millis(interval_ms * 4),
        labels: Default::default(),
        driver,
    };
    let driver = Driver::build(&config).expect("driver");
    (config, driver)
}

/// Runs `devices` until `until` says stop, returning every reading.
async fn run_until(
    devices: Vec<(DeviceConfig, Driver)>,
    mut until: impl FnMut(&[Reading]) -> bool,
) -> (Vec<Reading>, Arc<PollStats>) {
    let (tx, mut rx) = mpsc::channel(64);
    let stats = Arc::new(PollStats::default());
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    // With metrics on, so every test also runs their updates.
    let metrics = crate::metrics::AgentMetrics::new("test", &[], 1);
    spawn_all(
        devices,
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        Report {
            stats: stats.clone(),
            metrics: Some(&metrics.scheduler),
        },
        &tracker,
        shutdown.clone(),
    );
    tracker.close();
    let mut all = Vec::new();
    while let Some(batch) = rx.recv().await {
        all.extend(batch);
        if until(&all) {
            break;
        }
    }
    shutdown.cancel();
    drop(rx);
    tracker.wait().await;
    (all, stats)
}

fn values(readings: &[Reading], device: &str, metric: &str) -> Vec<Value> {
    readings
        .iter()
        .filter(|r| &*r.series.device == device && &*r.series.metric == metric)
        .map(|r| r.value.clone())
        .collect()
}

#[tokio::test]
async fn up_series_follows_a_device_that_fails_and_recovers() {
    // A TCP endpoint that is closed at first, then listens.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let tcp = DriverConfig::Tcp(TcpConfig {
        address: addr.to_string(),
        send: None,
        expect: None,
    });
    let sim = DriverConfig::Sim(SimConfig { series: 0 });
    let mut listener = None;
    let (all, stats) = run_until(
        vec![device("gate", 20, tcp), device("sim", 20, sim)],
        |all| {
            let up = values(all, "gate", UP_METRIC);
            if up.len() == 4 && listener.is_none() {
                // Four failures in a row: now it comes back.
                listener = Some(std::net::TcpListener::bind(addr).expect("rebind"));
            }
            up.last() == Some(&Value::I64(1)) && up.len() >= 6
        },
    )
    .await;
    let up = values(&all, "gate", UP_METRIC);
    let first_up = up
        .iter()
        .position(|v| *v == Value::I64(1))
        .expect("recovered");
    assert!(first_up >= 4, "{up:?}");
    assert!(up[..first_up].iter().all(|v| *v == Value::I64(0)), "{up:?}");
    // The failed polls carry the cause on the device's metric.
    let connect = values(&all, "gate", "connect_seconds");
    assert!(
        matches!(&connect[0], Value::Failed { message, .. } if message.contains("connection refused")),
        "{connect:?}"
    );
    assert!(stats.backed_off.load(Ordering::Relaxed) > 0);
    // Every poll's lateness was recorded, the two first polls apart.
    let polls: u64 = [&stats.ok, &stats.error, &stats.timeout]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    assert_eq!(stats.first_lateness.count(), 2);
    assert_eq!(stats.lateness.count() + 2, polls);
    let summary = stats.summary();
    assert!(summary.lateness_p50 <= summary.lateness_p99);
    assert!(summary.lateness_p99 <= summary.lateness_max);
    // The healthy device is up on every poll.
    assert!(
        values(&all, "sim", UP_METRIC)
            .iter()
            .all(|v| *v == Value::I64(1))
    );
}

#[tokio::test]
async fn shared_gateway_sees_one_poll_at_a_time_with_pauses() {
    // A Modbus TCP "gateway" that records how many requests overlap and
    // the quiet time between them.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    // The test's fake gateway records timings from its own tasks; a
    // lock is fine here, outside the agent's data path.
    let last_end = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let min_gap = Arc::new(std::sync::Mutex::new(Duration::MAX));
    {
        let (active, max_active, last_end, min_gap) = (
            active.clone(),
            max_active.clone(),
            last_end.clone(),
            min_gap.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (active, max_active, last_end, min_gap) = (
                    active.clone(),
                    max_active.clone(),
                    last_end.clone(),
                    min_gap.clone(),
                );
                tokio::spawn(async move {
                    let mut head = [0u8; 12];
                    while sock.read_exact(&mut head).await.is_ok() {
                        let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                        max_active.fetch_max(n, Ordering::SeqCst);
                        if let Ok(mut last) = last_end.lock()
                            && let Some(t) = *last
                        {
                            let gap = t.elapsed();
                            if let Ok(mut g) = min_gap.lock() {
                                *g = (*g).min(gap);
                            }
                            *last = None;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let reply = [head[0], head[1], 0, 0, 0, 5, head[6], head[7], 2, 0, 42];
                        active.fetch_sub(1, Ordering::SeqCst);
                        if let Ok(mut last) = last_end.lock() {
                            *last = Some(std::time::Instant::now());
                        }
                        if sock.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    let modbus = |unit_id| {
        DriverConfig::Modbus(ModbusConfig {
            address: addr.to_string(),
            unit_id,
            metrics: vec![ModbusMetric {
                name: "v".into(),
                register: 0,
                kind: RegisterKind::Holding,
                data_type: RegisterType::U16,
                word_order: WordOrder::Big,
                scale: 1.0,
                unit: String::new(),
            }],
            max_concurrency: 1,
            connect_delay: Duration::from_millis(1),
            request_pause: Duration::from_millis(15),
        })
    };
    // A generous timeout: a poll cancelled mid-request would let the
    // next one start before the gateway answered the first.
    let devices = (1..=4u8)
        .map(|u| {
            let (mut config, driver) = device(&format!("m{u}"), 20, modbus(u));
            config.timeout = Duration::from_secs(5);
            (config, driver)
        })
        .collect();
    let (all, _) = run_until(devices, |all| {
        (1..=4).all(|u| values(all, &format!("m{u}"), "v").len() >= 3)
    })
    .await;
    for u in 1..=4 {
        assert!(values(&all, &format!("m{u}"), "v").contains(&Value::I64(42)));
    }
    assert_eq!(
        max_active.load(Ordering::SeqCst),
        1,
        "one request at a time"
    );
    let gap = *min_gap.lock().expect("lock");
    assert!(
        gap >= Duration::from_millis(15),
        "pause between requests: {gap:?}"
    );
}

#[tokio::test]
async fn device_labels_reach_every_series_of_the_device() {
    let sim = DriverConfig::Sim(SimConfig { series: 2 });
    let (mut labelled, driver) = device("pump", 10, sim.clone());
    labelled.labels = [("site", "paris"), ("i", "from-device")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (all, _) = run_until(vec![(labelled, driver), device("plain", 10, sim)], |all| {
        values(all, "pump", UP_METRIC).len() >= 2 && values(all, "plain", UP_METRIC).len() >= 2
    })
    .await;
    let mut seen = 0;
    for r in &all {
        let labels = r.series.labels.to_map();
        if &*r.series.device == "pump" {
            seen += 1;
            assert_eq!(
                labels.get("site").map(String::as_str),
                Some("paris"),
                "{r:?}"
            );
            // A label the driver sets itself (the sim gauges' `i`) wins.
            if &*r.series.metric == "gauge" {
                assert_ne!(labels.get("i").map(String::as_str), Some("from-device"));
            } else {
                assert_eq!(labels.get("i").map(String::as_str), Some("from-device"));
            }
        } else {
            assert!(!labels.contains_key("site"), "{r:?}");
        }
    }
    assert!(seen > 0);
}

/// The configs of `devices` (a reload builds the drivers it needs).
fn configs(devices: Vec<(DeviceConfig, Driver)>) -> Vec<DeviceConfig> {
    devices.into_iter().map(|(c, _)| c).collect()
}

/// The `counter` values of `device`, in the order they arrived.
fn counters(readings: &[Reading], device: &str) -> Vec<i64> {
    values(readings, device, "counter")
        .into_iter()
        .filter_map(|v| match v {
            Value::I64(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_reload_touches_only_the_devices_that_changed() {
    let sim = || DriverConfig::Sim(SimConfig { series: 0 });
    let (tx, mut rx) = mpsc::channel(1024);
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        vec![
            device("kept", 5, sim()),
            device("removed", 5, sim()),
            device("changed", 5, sim()),
        ],
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        Arc::new(PollStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    let mut all: Vec<Reading> = Vec::new();
    // Until every device has polled a few times.
    while ["kept", "removed", "changed"]
        .iter()
        .any(|d| counters(&all, d).len() < 3)
    {
        all.extend(rx.recv().await.expect("readings"));
    }
    let before = all.len();
    let mut changed = device("changed", 7, sim());
    changed.0.timeout = Duration::from_millis(6);
    let at = crate::reading::now_ns();
    let diff = fleet
        .apply(configs(vec![
            device("kept", 5, sim()),
            changed,
            device("added", 5, sim()),
        ]))
        .expect("the drivers build");
    assert_eq!(
        diff,
        FleetDiff {
            added: 1,
            removed: 1,
            changed: 1,
            unchanged: 1
        }
    );
    assert_eq!(fleet.len(), 3);
    while ["kept", "changed", "added"]
        .iter()
        .any(|d| counters(&all[before..], d).len() < 5)
    {
        all.extend(rx.recv().await.expect("readings"));
    }
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    while let Some(batch) = rx.recv().await {
        all.extend(batch);
    }
    tracker.wait().await;

    // The kept device never noticed: 1, 2, 3, ... with no gap or repeat.
    let kept = counters(&all, "kept");
    assert_eq!(kept, (1..=kept.len() as i64).collect::<Vec<_>>());
    // The added one starts from 1.
    let added = counters(&all, "added");
    assert_eq!(added, (1..=added.len() as i64).collect::<Vec<_>>());
    // The removed one stopped: at most the poll in flight came after.
    let late = all
        .iter()
        .filter(|r| &*r.series.device == "removed" && &*r.series.metric == "counter")
        .filter(|r| r.ts_ns > at)
        .count();
    assert!(
        late <= 1,
        "{late} polls of the removed device after the reload"
    );
    let removed = counters(&all, "removed");
    assert_eq!(removed, (1..=removed.len() as i64).collect::<Vec<_>>());
    // The changed one ran its old settings to their end, then restarted
    // with the new ones from 1: never both at once.
    let changed = counters(&all, "changed");
    let restart = changed
        .iter()
        .skip(1)
        .position(|&n| n == 1)
        .map(|p| p + 1)
        .expect("the changed device restarted");
    let (old, new) = changed.split_at(restart);
    assert_eq!(old, (1..=old.len() as i64).collect::<Vec<_>>().as_slice());
    assert_eq!(new, (1..=new.len() as i64).collect::<Vec<_>>().as_slice());
    assert!(new.len() >= 5);
}

#[test]
fn a_reloaded_schedule_begins_at_its_next_slot() {
    let t0 = tokio::time::Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(first_slot_from(t0 + ms(5), ms(10), t0), t0 + ms(5));
    assert_eq!(first_slot_from(t0, ms(10), t0 + ms(25)), t0 + ms(30));
    assert_eq!(first_slot_from(t0, ms(10), t0 + ms(30)), t0 + ms(30));
}

/// Devices a reload adds or changes, long after the agent started, do
/// not count the agent's uptime as lateness or skipped polls.
#[tokio::test]
async fn devices_a_reload_starts_skip_no_polls() {
    let sim = || DriverConfig::Sim(SimConfig { series: 0 });
    let (tx, mut rx) = mpsc::channel(1024);
    let stats = Arc::new(PollStats::default());
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        vec![device("changed", 200, sim())],
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        stats.clone(),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    let uptime = Duration::from_millis(1500);
    let deadline = tokio::time::Instant::now() + uptime;
    let mut all: Vec<Reading> = Vec::new();
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        all.extend(batch);
    }
    let skipped_before = stats.skipped.load(Ordering::Relaxed);
    let before = all.len();
    let mut changed = device("changed", 250, sim());
    changed.0.timeout = Duration::from_millis(100);
    let diff = fleet
        .apply(configs(vec![changed, device("added", 200, sim())]))
        .expect("the drivers build");
    assert_eq!((diff.added, diff.changed), (1, 1));
    while ["changed", "added"]
        .iter()
        .any(|d| counters(&all[before..], d).len() < 3)
    {
        all.extend(rx.recv().await.expect("readings"));
    }
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    tracker.wait().await;
    assert_eq!(
        stats.skipped.load(Ordering::Relaxed),
        skipped_before,
        "polls skipped by the devices the reload started"
    );
    // Their first polls were on time, not the uptime late.
    let late = stats.first_lateness.max().max(stats.lateness.max());
    assert!(late < uptime / 2, "lateness {late:?}");
}

/// A device removed by one reload and added again by the next starts only
/// once its old task has finished the poll it had in flight.
#[tokio::test]
async fn a_device_removed_and_added_again_never_polls_twice_at_once() {
    // A TCP peer that answers slowly and records overlapping requests.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    {
        let (active, max_active) = (active.clone(), max_active.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (active, max_active) = (active.clone(), max_active.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if sock.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                    max_active.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = sock.write_all(b"PONG\n").await;
                });
            }
        });
    }
    let probe = || {
        let (mut config, driver) = device(
            "probe",
            50,
            DriverConfig::Tcp(TcpConfig {
                address: addr.to_string(),
                send: Some("PING\n".into()),
                expect: Some("PONG".into()),
            }),
        );
        config.timeout = Duration::from_secs(5);
        (config, driver)
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        vec![probe()],
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        Arc::new(PollStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    // Until a request is in flight.
    while active.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        fleet
            .apply(configs(Vec::new()))
            .expect("the drivers build")
            .removed,
        1
    );
    assert_eq!(
        fleet
            .apply(configs(vec![probe()]))
            .expect("the drivers build")
            .added,
        1
    );
    let mut polls = 0;
    while polls < 3 {
        let batch = rx.recv().await.expect("readings");
        polls += values(&batch, "probe", UP_METRIC).len();
    }
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    tracker.wait().await;
    assert_eq!(
        max_active.load(Ordering::SeqCst),
        1,
        "the old and the new task of the device polled at once"
    );
}

/// New limits of a shared gateway apply on reload: the gateway gets new
/// permits and every device on it restarts to use them, even one whose own
/// settings did not change.
#[tokio::test]
async fn a_reload_applies_new_gateway_limits_to_every_device_on_it() {
    let modbus = |unit_id, max_concurrency, pause_ms| {
        DriverConfig::Modbus(ModbusConfig {
            address: "127.0.0.1:1".into(),
            unit_id,
            metrics: vec![ModbusMetric {
                name: "v".into(),
                register: 0,
                kind: RegisterKind::Holding,
                data_type: RegisterType::U16,
                word_order: WordOrder::Big,
                scale: 1.0,
                unit: String::new(),
            }],
            max_concurrency,
            connect_delay: Duration::from_millis(1),
            request_pause: Duration::from_millis(pause_ms),
        })
    };
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        vec![
            device("m1", 1000, modbus(1, 2, 0)),
            device("m2", 1000, modbus(2, 2, 0)),
        ],
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        Arc::new(PollStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    let key = "modbus://127.0.0.1:1";
    assert_eq!(fleet.endpoint_limits(key), Some((2, Duration::ZERO)));
    // The same limits: nothing restarts.
    let diff = fleet
        .apply(configs(vec![
            device("m1", 1000, modbus(1, 2, 0)),
            device("m2", 1000, modbus(2, 2, 0)),
        ]))
        .expect("the drivers build");
    assert_eq!((diff.changed, diff.unchanged), (0, 2));
    // m1 asks for one poll at a time and a pause: m2 restarts as well.
    let diff = fleet
        .apply(configs(vec![
            device("m1", 1000, modbus(1, 1, 20)),
            device("m2", 1000, modbus(2, 2, 0)),
        ]))
        .expect("the drivers build");
    assert_eq!((diff.changed, diff.unchanged), (2, 0));
    assert_eq!(
        fleet.endpoint_limits(key),
        Some((1, Duration::from_millis(20)))
    );
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    tracker.wait().await;
}

/// A reload from a few devices to many grows the room of the channel to
/// the uplink; polls wait there only within it.
#[tokio::test]
async fn a_reload_to_more_devices_grows_the_intake() {
    let sim = || DriverConfig::Sim(SimConfig { series: 0 });
    let (tx, room, mut rx) = intake(2);
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let mut fleet = Fleet::start(
        vec![device("a", 1000, sim()), device("b", 1000, sim())],
        8,
        crate::config::DEFAULT_MAX_SERIES_PER_DEVICE,
        tx,
        Arc::new(PollStats::default()),
        None,
        tracker.clone(),
        shutdown.clone(),
    );
    assert_eq!(fleet.intake_room(), MIN_ROOM);
    let many: Vec<_> = (0..500)
        .map(|i| device(&format!("d{i}"), 1000, sim()))
        .collect();
    let diff = fleet.apply(configs(many)).expect("the drivers build");
    assert_eq!((diff.added, diff.removed), (500, 2));
    assert_eq!(fleet.intake_room(), 500);
    // Back to two devices: the room stays.
    fleet
        .apply(configs(vec![device("a", 1000, sim())]))
        .expect("the drivers build");
    assert_eq!(fleet.intake_room(), 500);
    // Nobody takes the readings: at most the room's worth of polls wait
    // (the uplink gives a permit back per poll it takes).
    let first = rx.recv().await.expect("a poll");
    room.taken();
    assert!(!first.is_empty());
    shutdown.cancel();
    tracker.close();
    drop(fleet);
    while rx.recv().await.is_some() {
        room.taken();
    }
    tracker.wait().await;
}
