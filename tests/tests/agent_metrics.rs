//! The agent's `/metrics` against real Prometheus tools: a private
//! Prometheus scrapes a running agent and PromQL over what it stored agrees
//! with the ground truth in the collector's store (the sim counter rises by
//! exactly one per poll); `promtool check metrics` finds no problem; 1,000
//! concurrent scrapes and slowloris clients neither disturb polling nor
//! hold more connections than the cap.
//!
//! Needs the binaries built and Prometheus installed (`cargo xtask test
//! -p tributary-tests --test agent_metrics` does both).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tributary_tests::cluster::{
    self, Collector, PATIENCE, agent_sections, assert_exactly_once, sim_agent_config,
};
use tributary_tests::peers::prometheus::{
    Prometheus, http_get, http_get_retrying_unanswered, promtool_check_metrics,
};
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, wait_for_port};

/// What Prometheus 2.42 asks for.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The connection cap of the agent's metrics server
/// (`ServeLimits::default`).
const MAX_CONNECTIONS: usize = 32;

/// Starts `tributary-agent run` with `config` (plus the test sections) and
/// its metrics on `metrics`.
fn start_agent(dir: &TestDir, id: &str, config: &str, metrics: SocketAddr) -> Result<Proc> {
    let path = dir.join(format!("{id}.toml"));
    let spool = dir.join(format!("{id}-spool"));
    std::fs::write(
        &path,
        format!(
            "{config}{}\n[metrics]\nlisten = \"{metrics}\"\n",
            agent_sections(&spool, "")
        ),
    )?;
    Proc::builder("tributary-agent")?
        .args(["run", "--config"])
        .arg(&path)
        .log_to(dir.join(format!("{id}.log")))
        .spawn()
}

/// Seconds since the Unix epoch.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_agrees_with_the_store() -> Result<()> {
    let dir = TestDir::new("agent-metrics-prometheus")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let metrics = free_addr()?;
    let id = "edge-prom";
    let devices = 3;
    // Three counters, and a device whose port is closed (down).
    let dead = free_addr()?;
    let config = format!(
        "{}\n[[devices]]\nname = \"dead\"\ndriver = \"tcp\"\ninterval = \"200ms\"\naddress = \"{dead}\"\n",
        sim_agent_config(id, &[collector.url()], devices, "100ms")
    );
    let mut agent = start_agent(&dir, id, &config, metrics)?;
    wait_for_port(metrics, PATIENCE).await?;

    // The endpoint itself: promtool's lint, both formats, 404 elsewhere.
    let (status, text) = http_get(metrics, "/metrics", None).await?;
    ensure!(status == 200, "{status}: {text}");
    promtool_check_metrics(&text).await?;
    let (_, om) = http_get(metrics, "/metrics", Some(PROMETHEUS_ACCEPT)).await?;
    ensure!(om.ends_with("# EOF\n"), "not OpenMetrics: {om}");
    for path in ["/", "/metric", "/metrics/x", "/api/v1/query"] {
        let (status, _) = http_get(metrics, path, None).await?;
        ensure!(status == 404, "{path}: {status}");
    }

    let prometheus = Prometheus::start(&dir, &[("agent", metrics)]).await?;
    prometheus.wait_for("up{job=\"agent\"}", 1.0).await?;
    cluster::wait_for_counters(&collector.db, id, devices, 30).await?;
    // Everything below is evaluated at one past instant, so each query sees
    // the same scrape.
    let at = eventually(PATIENCE, "prometheus has scraped polls", || async {
        let at = now_secs() - 1.5;
        let probe =
            format!("tributary_agent_polls_total{{device=\"{id}-counter-0\",outcome=\"ok\"}}");
        one(&prometheus, &probe, at).await.ok().map(|_| at)
    })
    .await?;
    for i in 0..devices {
        let device = format!("{id}-counter-{i}");
        let series = format!("tributary_agent_polls_total{{device=\"{device}\",outcome=\"ok\"}}");
        let polls = one(&prometheus, &series, at).await?;
        let scraped_at = one(&prometheus, &format!("timestamp({series})"), at).await?;
        // The store's counter at the scrape: the sim counts its polls, and
        // a reading is stamped when its poll starts (so a poll in flight at
        // the scrape is stored and not yet counted: ± one poll).
        let stored = cluster::counters(&collector.db, id)?;
        let run = stored
            .get(&device)
            .with_context(|| format!("{device} stored nothing"))?;
        let scraped_ns = (scraped_at * 1e9) as i64;
        ensure!(
            run.last().is_some_and(|s| s.ts_ns > scraped_ns),
            "{device}: the store has no reading after the scrape yet"
        );
        let before = run.iter().filter(|s| s.ts_ns <= scraped_ns).count() as f64;
        ensure!(
            (polls - before).abs() <= 1.0,
            "{device}: prometheus says {polls} ok polls at {scraped_at}, the store has {before} readings by then"
        );
        ensure!(polls >= 10.0, "{device}: only {polls} polls scraped");
        let up = one(
            &prometheus,
            &format!("tributary_agent_device_up{{device=\"{device}\"}}"),
            at,
        )
        .await?;
        ensure!(up == 1.0, "{device}: up {up}");
    }
    // The dead device: down, its polls failed, it backs off.
    ensure!(
        one(
            &prometheus,
            "tributary_agent_device_up{device=\"dead\"}",
            at
        )
        .await?
            == 0.0
    );
    ensure!(
        one(
            &prometheus,
            "tributary_agent_polls_total{device=\"dead\",outcome=\"error\"}",
            at
        )
        .await?
            >= 1.0
    );
    ensure!(
        one(
            &prometheus,
            "tributary_agent_polls_total{device=\"dead\",outcome=\"ok\"}",
            at
        )
        .await?
            == 0.0
    );
    // Readings: a sim device hands over its counter and its up reading per
    // poll.
    let readings = one(
        &prometheus,
        &format!("tributary_agent_readings_total{{device=\"{id}-counter-0\"}}"),
        at,
    )
    .await?;
    let polls = one(
        &prometheus,
        &format!("tributary_agent_polls_total{{device=\"{id}-counter-0\",outcome=\"ok\"}}"),
        at,
    )
    .await?;
    // (A scrape may fall between a poll's count and its readings' count.)
    ensure!(
        readings == 2.0 * polls || readings == 2.0 * (polls - 1.0),
        "readings {readings}, polls {polls}"
    );
    // Poll duration by driver counts every poll of that driver.
    let sim_polls = one(
        &prometheus,
        "sum(tributary_agent_polls_total{device=~\"edge-prom-counter-.*\",outcome!=\"skipped\"})",
        at,
    )
    .await?;
    let sim_durations = one(
        &prometheus,
        "tributary_agent_poll_duration_seconds_count{driver=\"sim\"}",
        at,
    )
    .await?;
    ensure!(
        (sim_polls - sim_durations).abs() <= devices as f64,
        "{sim_polls} polls, {sim_durations} durations"
    );
    // The uplink streams to the collector and its batches are acked.
    ensure!(
        one(
            &prometheus,
            "tributary_agent_uplink_state{state=\"streaming\"}",
            at
        )
        .await?
            == 1.0
    );
    ensure!(
        one(
            &prometheus,
            &format!(
                "tributary_agent_uplink_collector{{url=\"{}\"}}",
                collector.url()
            ),
            at
        )
        .await?
            == 1.0
    );
    let sealed = one(&prometheus, "tributary_agent_batches_sealed_total", at).await?;
    let acked = one(&prometheus, "tributary_agent_batches_acked_total", at).await?;
    ensure!(
        sealed > 0.0 && acked > 0.0 && acked <= sealed,
        "sealed {sealed}, acked {acked}"
    );
    ensure!(
        one(&prometheus, "tributary_agent_ack_latency_seconds_count", at).await? == acked,
        "one ack latency per acked batch"
    );
    ensure!(
        one(&prometheus, "tributary_agent_spool_limit_bytes", at).await?
            == tributary_agent::config::DEFAULT_SPOOL_MAX_BYTES as f64
    );
    ensure!(one(&prometheus, "count(tributary_agent_build_info)", at).await? == 1.0);
    ensure!(one(&prometheus, "process_resident_memory_bytes", at).await? > 0.0);
    ensure!(one(&prometheus, "process_open_fds", at).await? > 0.0);

    let status = agent.terminate(PATIENCE).await?;
    ensure!(
        status.success(),
        "agent exited with {status}:\n{}",
        agent.log()
    );
    assert_exactly_once(&cluster::counters(&collector.db, id)?, devices)?;
    Ok(())
}

/// The one sample of `promql` at `at`.
async fn one(prometheus: &Prometheus, promql: &str, at: f64) -> Result<f64> {
    let samples = prometheus.query_at(promql, at).await?;
    match samples.as_slice() {
        [s] => Ok(s.value),
        _ => anyhow::bail!("{promql} at {at}: expected one sample, got {samples:?}"),
    }
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_scrapes_and_slowloris_clients_do_not_disturb_polling() -> Result<()> {
    let dir = TestDir::new("agent-metrics-storm")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let metrics = free_addr()?;
    let id = "edge-storm";
    let devices = 5;
    let config = sim_agent_config(id, &[collector.url()], devices, "20ms");
    let mut agent = start_agent(&dir, id, &config, metrics)?;
    wait_for_port(metrics, PATIENCE).await?;
    cluster::wait_for_counters(&collector.db, id, devices, 10).await?;
    let pid = agent.id().context("agent pid")?;
    let fds_before = open_fds(pid)?;

    // Slowloris: more clients than the cap, each sending its headers a byte
    // at a time; the server must cut them off (header read timeout).
    let mut slow = Vec::new();
    for _ in 0..(MAX_CONNECTIONS + 8) {
        slow.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(metrics).await?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").await?;
            // At most 60 bytes, one a second: past the 10 s deadline.
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if s.write_all(b"a").await.is_err() {
                    return Ok::<bool, anyhow::Error>(true);
                }
            }
            // Closed: reading gives end of file (or a 408), never metrics.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            Ok(!String::from_utf8_lossy(&rest).contains("200 OK"))
        }));
    }
    // 1,000 scrapes at once. A scrape closed without any answer is sent
    // again (at most twice more), as Prometheus's Go client does: with the
    // accept queue overflowing, its request may come by retransmission
    // after the header deadline (`http_get_retrying_unanswered`).
    let mut scrapes = Vec::new();
    for _ in 0..1000 {
        scrapes.push(tokio::spawn(async move {
            tokio::time::timeout(
                PATIENCE * 2,
                http_get_retrying_unanswered(metrics, "/metrics", None, 3),
            )
            .await
        }));
    }
    // Meanwhile the agent never holds more than the cap (plus the
    // connections being accepted).
    let mut max_fds = fds_before;
    while scrapes.iter().any(|s| !s.is_finished()) {
        max_fds = max_fds.max(open_fds(pid)?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ok = 0;
    let mut unanswered = 0;
    for s in scrapes {
        let ((status, body), closed) = s.await?.context("a scrape took too long")??;
        ensure!(
            status == 200 && body.contains("tributary_agent_polls_total"),
            "{status}"
        );
        ok += 1;
        unanswered += closed;
    }
    ensure!(ok == 1000);
    eprintln!("1,000 scrapes answered; {unanswered} attempts closed unanswered and sent again");
    for s in slow {
        ensure!(s.await??, "a slowloris client got metrics");
    }
    ensure!(
        max_fds <= fds_before + MAX_CONNECTIONS + 2,
        "the agent held {max_fds} files (from {fds_before}): more connections than {MAX_CONNECTIONS}"
    );

    // Polling went on: every counter value stored once, none missing.
    cluster::wait_for_counters(&collector.db, id, devices, 50).await?;
    let status = agent.terminate(PATIENCE).await?;
    ensure!(
        status.success(),
        "agent exited with {status}:\n{}",
        agent.log()
    );
    assert_exactly_once(&cluster::counters(&collector.db, id)?, devices)?;
    Ok(())
}

#[tokio::test]
async fn a_taken_metrics_port_is_a_startup_error_naming_address_and_key() -> Result<()> {
    let dir = TestDir::new("agent-metrics-taken")?;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = taken.local_addr()?;
    let path = dir.join("a.toml");
    std::fs::write(
        &path,
        format!(
            "{}{}",
            sim_agent_config("edge-taken", &["http://127.0.0.1:1".into()], 1, "1s"),
            agent_sections(&dir.join("spool"), "")
        ),
    )?;
    let out = tokio::process::Command::new(tributary_tests::process::bin_path("tributary-agent")?)
        .args(["run", "--metrics-listen", &addr.to_string(), "--config"])
        .arg(&path)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "started anyway: {stderr}");
    ensure!(
        stderr.contains(&format!("error: metrics.listen {addr}: cannot listen: ")),
        "{stderr}"
    );
    // A bad flag value is a usage error (2), naming the flag.
    let out = tokio::process::Command::new(tributary_tests::process::bin_path("tributary-agent")?)
        .args(["run", "--metrics-listen", "localhost", "--config"])
        .arg(&path)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "{:?}: {stderr}", out.status);
    ensure!(
        stderr.contains("--metrics-listen: invalid listen address \"localhost\""),
        "{stderr}"
    );
    drop(taken);
    Ok(())
}
