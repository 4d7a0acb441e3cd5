//! The MQTT driver against real Mosquitto brokers: the machine's broker on
//! 127.0.0.1:1883 with messages published by the real `mosquitto_pub`, and
//! private brokers this test starts, stops and restarts (reconnect and
//! resubscribe, refused, not authorized), and one publisher's bad topic
//! against a whole agent and collector.

use std::time::Duration;

use anyhow::{Context, Result};
use rand::Rng;
use tributary_agent::config::DeviceConfig;
use tributary_agent::drivers::Driver;
use tributary_agent::reading::{Sample, Value};
use tributary_collector::model::StoredValue;
use tributary_tests::cluster::{self, Agent, Collector, assert_exactly_once};
use tributary_tests::peers::{self, SHARED_BROKER, device_config, mqtt_publish, poll_once};
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, wait_for_port};

const PATIENCE: Duration = Duration::from_secs(30);

/// A topic prefix no other test run uses.
fn prefix() -> String {
    format!("tributary-test-{:08x}", rand::rng().random::<u32>())
}

fn plant(broker: &str, p: &str) -> Result<DeviceConfig> {
    device_config(
        "plant",
        &format!(
            r#"driver = "mqtt"
interval = "1s"
timeout = "2s"
broker = "{broker}"
qos = 1
topics = [
  {{ filter = "{p}/+/temp", metric = "temp", unit = "C" }},
  {{ filter = "{p}/+/state", format = "json", pointer = "/power", metric = "power" }},
  {{ filter = "{p}/+/metrics", format = "prometheus" }},
]
"#
        ),
    )
}

fn find<'a>(samples: &'a [Sample], device: &str, metric: &str) -> Option<&'a Value> {
    samples
        .iter()
        .find(|s| s.device.as_deref() == Some(device) && s.metric == metric)
        .map(|s| &s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_name_devices_and_payloads_parse() -> Result<()> {
    let p = prefix();
    // Retained messages are there when the driver subscribes: the first
    // poll (as `check` does it) shows them.
    mqtt_publish(SHARED_BROKER, &format!("{p}/boiler-1/temp"), "21.5", true).await?;
    mqtt_publish(
        SHARED_BROKER,
        &format!("{p}/boiler-1/state"),
        r#"{"power": 1500}"#,
        true,
    )
    .await?;
    mqtt_publish(
        SHARED_BROKER,
        &format!("{p}/boiler-2/metrics"),
        "pressure_bar{loop=\"a\"} 1.25\n",
        true,
    )
    .await?;
    let cfg = plant(SHARED_BROKER, &p)?;
    let samples = poll_once(&cfg).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        find(&samples, "plant/boiler-1", "temp"),
        Some(&Value::F64(21.5))
    );
    assert_eq!(
        find(&samples, "plant/boiler-1", "power"),
        Some(&Value::I64(1500))
    );
    let pressure = samples
        .iter()
        .find(|s| s.metric == "pressure_bar")
        .context("prometheus payload")?;
    assert_eq!(pressure.device.as_deref(), Some("plant/boiler-2"));
    assert_eq!(pressure.labels.get("loop").map(String::as_str), Some("a"));

    // Live messages, and payloads that do not parse: a failed reading with
    // the cause, on that series only.
    let mut driver = Driver::build(&cfg)?;
    driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    mqtt_publish(SHARED_BROKER, &format!("{p}/boiler-3/temp"), "hot", false).await?;
    mqtt_publish(
        SHARED_BROKER,
        &format!("{p}/boiler-3/state"),
        "{\"power\": ",
        false,
    )
    .await?;
    mqtt_publish(SHARED_BROKER, &format!("{p}/boiler-4/temp"), "19", false).await?;
    let mut seen: Vec<Sample> = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !(find(&seen, "plant/boiler-3", "temp").is_some()
        && find(&seen, "plant/boiler-3", "power").is_some()
        && find(&seen, "plant/boiler-4", "temp").is_some())
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "messages not received: {seen:?}"
        );
        seen.extend(driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(find(&seen, "plant/boiler-4", "temp"), Some(&Value::I64(19)));
    let failed = |metric: &str| match find(&seen, "plant/boiler-3", metric) {
        Some(Value::Failed { message, .. }) => message.clone(),
        other => panic!("{metric}: expected a failure, got {other:?}"),
    };
    assert_eq!(
        failed("temp"),
        format!("payload on {p}/boiler-3/temp: not a number: \"hot\"")
    );
    assert!(
        failed("power").starts_with(&format!(
            "payload on {p}/boiler-3/state: invalid json at line 1 column 10"
        )),
        "{}",
        failed("power")
    );
    // Each message is taken once.
    let again = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        find(&again, "plant/boiler-4", "temp").is_none(),
        "{again:?}"
    );

    // Clear the retained messages.
    for t in ["boiler-1/temp", "boiler-1/state", "boiler-2/metrics"] {
        mqtt_publish(SHARED_BROKER, &format!("{p}/{t}"), "", true).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_a_broker_restart() -> Result<()> {
    let dir = TestDir::new("mqtt-restart")?;
    let broker = peers::mosquitto(&dir, true, None).await?;
    let port = broker.addr.port();
    let address = broker.addr.to_string();
    let p = prefix();
    let mut driver = Driver::build(&plant(&address, &p)?)?;
    driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    broker.kill().await?;
    // Down: the poll fails with the reason.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let e = loop {
        match driver.poll().await {
            Err(e) => break e,
            Ok(_) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "still up after the kill"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        e.message.starts_with(&format!("mqtt broker {address}: ")),
        "{e}"
    );

    // Back on the same port: the driver reconnects and subscribes again.
    let _broker = peers::mosquitto(&dir, true, Some(port)).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no message after the restart"
        );
        if driver.poll().await.is_ok() {
            mqtt_publish(&address, &format!("{p}/b/temp"), "7", false).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(samples) = driver.poll().await
                && find(&samples, "plant/b", "temp") == Some(&Value::I64(7))
            {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unauthorized_are_named() -> Result<()> {
    let dir = TestDir::new("mqtt-refused")?;
    let closed = tributary_tests::process::free_addr()?.to_string();
    let e = poll_once(&plant(&closed, "x")?).await.expect_err("refused");
    assert_eq!(
        e.message,
        format!("mqtt broker {closed}: connection refused")
    );

    let broker = peers::mosquitto(&dir, false, None).await?;
    let address = broker.addr.to_string();
    let e = poll_once(&plant(&address, "x")?)
        .await
        .expect_err("not authorized");
    assert!(e.message.contains("auth failure"), "{e}");
    Ok(())
}

/// The stored values of `device`'s `metric` on agent `agent`.
fn stored(db: &std::path::Path, agent: &str, device: &str, metric: &str) -> Vec<StoredValue> {
    cluster::stored_points(db, agent, device, metric)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, points)| points.into_iter().map(|p| p.value))
        .collect()
}

/// The `[[devices]]` table of MQTT device `plant`, subscribed to
/// `<p>/+/temp`, whose metric is the topic's level `{1}`.
fn plant_device(p: &str) -> String {
    format!(
        r#"
[[devices]]
name = "plant"
driver = "mqtt"
interval = "100ms"
broker = "{SHARED_BROKER}"
qos = 1
topics = [{{ filter = "{p}/+/temp", device = "{{name}}", metric = "{{1}}" }}]
"#
    )
}

/// Publishes on `<p>/first/temp` until agent `id`'s device `plant` has
/// that value stored: the agent is subscribed and delivering.
async fn first_value_stored(db: &std::path::Path, id: &str, p: &str) -> Result<()> {
    eventually(
        cluster::PATIENCE,
        "the first good value is stored",
        || async {
            mqtt_publish(SHARED_BROKER, &format!("{p}/first/temp"), "1", false)
                .await
                .ok()?;
            (!stored(db, id, "plant", "first").is_empty()).then_some(())
        },
    )
    .await
}

/// A message on `plant//temp` with a `{1}` metric template names an empty
/// metric. It used to make the collector refuse the batch it was in, and
/// the agent dropped that batch whole after three refusals, with the
/// readings of every other device in it. Now it is a failed reading that
/// says why, and the sim counter on the same agent arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_topic_level_fails_one_reading_not_the_agents_batch() -> Result<()> {
    let dir = TestDir::new("mqtt-empty-level")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let p = prefix();
    let id = "mqtt-edge";
    let mut config = cluster::sim_agent_config(id, &[collector.url()], 1, "50ms");
    config.push_str(&plant_device(&p));
    let mut agent = Agent::start(&dir, id, &config, "")?;
    let db = collector.db.clone();

    first_value_stored(&db, id, &p).await?;
    mqtt_publish(SHARED_BROKER, &format!("{p}//temp"), "2", false).await?;
    // Counter values polled after the bad message, so the batch that held
    // it is well behind.
    let seen = cluster::counters(&db, id)?
        .values()
        .map(Vec::len)
        .sum::<usize>();
    cluster::wait_for_counters(&db, id, 1, seen + 40).await?;
    mqtt_publish(SHARED_BROKER, &format!("{p}/good/temp"), "3", false).await?;
    eventually(
        cluster::PATIENCE,
        "the value after the bad one is stored",
        || {
            let db = db.clone();
            async move { (!stored(&db, id, "plant", "good").is_empty()).then_some(()) }
        },
    )
    .await?;
    agent.stop().await?;

    // Ground truth: every counter value once, none lost.
    let total = assert_exactly_once(&cluster::counters(&db, id)?, 1)
        .with_context(|| format!("counter values of {id}; its log:\n{}", agent.log()))?;
    assert!(total as usize >= seen + 40, "{total}");
    assert_eq!(stored(&db, id, "plant", "good"), [StoredValue::I64(3)]);
    // The bad message: a failed reading of the device that names the cause.
    let invalid = stored(&db, id, "plant", "invalid_series");
    assert_eq!(
        invalid,
        [StoredValue::Error(format!(
            "payload on {p}//temp: the metric template \"{{1}}\" renders an empty name"
        ))],
        "{}",
        agent.log()
    );
    let stats = agent.uplink_stats()?;
    assert_eq!(stats.dropped_readings, 0, "{stats:?}");
    Ok(())
}

/// A collector configured with tighter `[limits]` than the wire's refuses
/// a batch the agent built (a 40-byte metric name, `max_name_len = 32`).
/// One reading per batch, so many batches are in flight when the refusal
/// ends the stream: the agent must find the refused one (one at a time)
/// and drop exactly it, not the oldest unacked batch. Ground truth: the
/// sim counter arrives exactly once, and exactly one reading is counted as
/// refused and dropped, on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_tighter_limits_loses_only_the_batch_it_refuses() -> Result<()> {
    let dir = TestDir::new("mqtt-tight-limits")?;
    let addr = free_addr()?;
    let db = dir.join("collector.db");
    let conf = dir.join("collector.toml");
    std::fs::write(&conf, "[limits]\nmax_name_len = 32\n")?;
    let _collector = Proc::builder("tributary-collector")?
        .args([
            "serve",
            "--http-listen",
            "off",
            "--listen",
            &addr.to_string(),
            "--config",
        ])
        .arg(&conf)
        .arg(format!("--store=sqlite:{}", db.display()))
        .log_to(dir.join("collector.log"))
        .spawn()?;
    wait_for_port(addr, cluster::PATIENCE).await?;
    let p = prefix();
    let id = "tight";
    let config = format!(
        r#"id = "{id}"
collectors = ["http://{addr}"]

[batch]
max_readings = 1

[[devices]]
name = "{id}-counter-0"
driver = "sim"
interval = "20ms"
"#
    ) + &plant_device(&p);
    let mut agent = Agent::start(&dir, id, &config, "")?;
    first_value_stored(&db, id, &p).await?;
    let long = "m".repeat(40);
    mqtt_publish(SHARED_BROKER, &format!("{p}/{long}/temp"), "2", false).await?;
    eventually(
        cluster::PATIENCE,
        "the refused batch is dropped",
        || async {
            let stats = agent.uplink_stats().ok()?;
            (stats.refused_batches > 0).then_some(())
        },
    )
    .await
    .with_context(|| agent.log())?;
    let seen = cluster::counters(&db, id)?
        .values()
        .map(Vec::len)
        .sum::<usize>();
    cluster::wait_for_counters(&db, id, 1, seen + 20).await?;
    agent.stop().await?;

    assert_exactly_once(&cluster::counters(&db, id)?, 1)
        .with_context(|| format!("counter values of {id}; its log:\n{}", agent.log()))?;
    assert!(stored(&db, id, "plant", &long).is_empty());
    let stats = agent.uplink_stats()?;
    assert_eq!(
        (
            stats.refused_batches,
            stats.refused_readings,
            stats.dropped_readings
        ),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(cluster::agent_counters(&db, id)?.dropped_at_agent, 1);
    Ok(())
}
