//! A remote write destination that misbehaves, in front of a real
//! VictoriaMetrics: a proxy that answers some requests with 400 (dropped
//! for good), some with 500 or 429 + Retry-After (sent again), hangs on
//! some past the export's timeout (sent again), and forwards the rest.
//! Ground truth: the store holds every counter reading exactly once
//! (ingest did not notice), VictoriaMetrics holds exactly the stored
//! samples minus those of the 400 requests, and the export's dropped count
//! (in the store and in `/metrics`) is exactly the samples of those
//! requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use tributary_collector::export::remote_write_pb::WriteRequest;
use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, assert_exactly_once, counters, sim_agent_config, wait_for_counters,
};
use tributary_tests::peers::receivers::{Kind, Receiver};
use tributary_tests::process::{TestDir, eventually, free_addr, run_bin, run_grpcurl};

/// A counter sample: (agent, device, timestamp ms).
type Key = (String, String, i64);

/// What the proxy did.
#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    refused_400: AtomicU64,
    refused_5xx: AtomicU64,
    refused_429: AtomicU64,
    hung: AtomicU64,
    /// Every sample of the requests answered 400 (all series).
    dropped_samples: AtomicU64,
    /// The counter samples among them.
    dropped_counters: Mutex<BTreeSet<Key>>,
}

async fn read_request(s: &mut TcpStream) -> Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("request body cut short");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, buf[head_end..head_end + len].to_vec())))
}

async fn respond(s: &mut TcpStream, status: &str, extra: &str, body: &str) -> Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}

async fn serve_one(mut s: TcpStream, faults: Arc<Faults>, upstream: String) -> Result<()> {
    let Some((_head, body)) = read_request(&mut s).await? else {
        return Ok(());
    };
    let n = faults.requests.fetch_add(1, Ordering::Relaxed);
    match n % 10 {
        3 => {
            let raw = snap::raw::Decoder::new().decompress_vec(&body)?;
            let req = WriteRequest::decode(raw.as_slice())?;
            let mut samples = 0;
            let mut set = faults.dropped_counters.lock().await;
            for ts in &req.timeseries {
                samples += ts.samples.len() as u64;
                let label = |n: &str| {
                    ts.labels
                        .iter()
                        .find(|l| l.name == n)
                        .map(|l| l.value.clone())
                        .unwrap_or_default()
                };
                if label("__name__") == "counter" {
                    for s in &ts.samples {
                        set.insert((label("agent"), label("device"), s.timestamp));
                    }
                }
            }
            drop(set);
            faults.dropped_samples.fetch_add(samples, Ordering::Relaxed);
            faults.refused_400.fetch_add(1, Ordering::Relaxed);
            respond(
                &mut s,
                "400 Bad Request",
                "",
                "test proxy: refused for good",
            )
            .await
        }
        5 => {
            faults.refused_5xx.fetch_add(1, Ordering::Relaxed);
            respond(&mut s, "503 Service Unavailable", "", "test proxy: later").await
        }
        7 => {
            faults.refused_429.fetch_add(1, Ordering::Relaxed);
            respond(
                &mut s,
                "429 Too Many Requests",
                "Retry-After: 1\r\n",
                "slow down",
            )
            .await
        }
        9 if n < 40 => {
            // Past the export's 2 s timeout: it gives up and sends again.
            faults.hung.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok(())
        }
        _ => {
            let resp = reqwest::Client::new()
                .post(&upstream)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            respond(
                &mut s,
                &format!(
                    "{} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
                "",
                &text,
            )
            .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_retries_and_hangs_are_counted_exactly() -> Result<()> {
    let dir = TestDir::new("export-faults")?;
    let vm = Receiver::start(&dir, Kind::Victoria, "victoria").await?;
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy.local_addr()?;
    let faults = Arc::new(Faults::default());
    let upstream = vm.write_url();
    let f = faults.clone();
    let proxy_task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = proxy.accept().await else {
                break;
            };
            let (f, u) = (f.clone(), upstream.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_one(s, f, u).await {
                    eprintln!("proxy: {e:#}");
                }
            });
        }
    });
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"rx\"\nkind = \"remote_write\"\nurl = \"http://{proxy_addr}/api/v1/write\"\n\
             shards = 2\nmax_samples_per_request = 200\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n"
        ),
    )?;
    let config = config.display().to_string();
    let addr = free_addr()?;
    let collector = Collector::start_with(&dir, addr, &["--config", &config]).await?;
    let mut agent = Agent::start(
        &dir,
        "bad-0",
        &sim_agent_config("bad-0", &[collector.url()], 3, "20ms"),
        "",
    )?;
    wait_for_counters(&collector.db, "bad-0", 3, 300).await?;
    agent.stop().await?;

    // Ingest did not notice: every counter value once.
    let stored = counters(&collector.db, "bad-0")?;
    let total = assert_exactly_once(&stored, 3)?;
    let mut want: BTreeMap<Key, f64> = BTreeMap::new();
    for (device, points) in &stored {
        for p in points {
            want.insert(
                (
                    "bad-0".into(),
                    device.clone(),
                    p.ts_ns.div_euclid(1_000_000),
                ),
                p.value as f64,
            );
        }
    }
    // The export catches up: its lag falls to zero.
    let metrics_url = format!("{}/metrics", collector.http_url());
    let scrape = || async {
        let body = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        Some(body)
    };
    let value = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && l.contains("export=\"rx\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    eventually(PATIENCE, "the export has no lag", || async {
        let body = scrape().await?;
        let lag = value(&body, "tributary_export_lag_readings")?;
        // A lag of zero is only seen after a page went out completely.
        (lag == 0.0 && value(&body, "tributary_export_sent_readings_total")? > 0.0).then_some(())
    })
    .await?;
    let body = scrape().await.context("scrape /metrics")?;
    let dropped_metric = value(&body, "tributary_export_dropped_readings_total").unwrap_or(-1.0);
    let retried_metric = value(&body, "tributary_export_retried_requests_total").unwrap_or(-1.0);

    let raw = vm.raw("counter").await?;
    let mut got: BTreeMap<Key, f64> = BTreeMap::new();
    for (labels, samples) in &raw {
        for &(t, v) in samples {
            let key = (
                labels.get("agent").cloned().unwrap_or_default(),
                labels.get("device").cloned().unwrap_or_default(),
                t,
            );
            if let Some(old) = got.insert(key.clone(), v) {
                ensure!(old == v, "{key:?}: two values {old} and {v}");
            }
        }
    }
    let dropped = faults.dropped_counters.lock().await.clone();
    let mut expected = want.clone();
    expected.retain(|k, _| !dropped.contains(k));
    let missing: Vec<&Key> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&Key> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    ensure!(
        missing.is_empty() && extra.is_empty() && got == expected,
        "victoria holds {} counter samples, expected {} ({} stored, {} refused with 400): missing {:?}, extra {:?}",
        got.len(),
        expected.len(),
        want.len(),
        dropped.len(),
        &missing[..missing.len().min(5)],
        &extra[..extra.len().min(5)]
    );
    let f = &faults;
    let (r400, r5xx, r429, hung) = (
        f.refused_400.load(Ordering::Relaxed),
        f.refused_5xx.load(Ordering::Relaxed),
        f.refused_429.load(Ordering::Relaxed),
        f.hung.load(Ordering::Relaxed),
    );
    ensure!(
        r400 > 0 && r5xx > 0 && r429 > 0 && hung > 0,
        "not every fault happened: 400 {r400}, 5xx {r5xx}, 429 {r429}, hung {hung}"
    );
    let dropped_samples = f.dropped_samples.load(Ordering::Relaxed) as f64;
    ensure!(
        dropped_metric == dropped_samples,
        "the export counts {dropped_metric} dropped samples, the proxy refused {dropped_samples}"
    );
    ensure!(
        retried_metric == (r5xx + r429 + hung) as f64,
        "the export counts {retried_metric} retries; the proxy answered {r5xx} 5xx, {r429} 429 and hung {hung} times"
    );
    let log = collector.log();
    ensure!(
        log.contains("test proxy: refused for good"),
        "the 400's body is not in the log"
    );
    // Where operators look: `tributary-collector exports` reads the same
    // totals from the store.
    let json = run_bin(
        "tributary-collector",
        [
            "exports",
            &format!("--store=sqlite:{}", collector.db.display()),
            "--config",
            &config,
            "--format",
            "json",
        ],
    )
    .await?;
    let rows: serde_json::Value = serde_json::from_str(&json).context("exports --format json")?;
    let row = &rows[0];
    ensure!(
        row["name"] == "rx"
            && row["dropped"].as_f64() == Some(dropped_samples)
            && row["retried"].as_f64() == Some(retried_metric)
            && row["lag_readings"] == 0
            && row["destination"]
                .as_str()
                .is_some_and(|d| d.contains(&proxy_addr.to_string())),
        "exports shows {json}"
    );
    proxy_task.abort();
    println!(
        "export faults: {total} counter readings stored once; {} requests: {r400} x 400 ({dropped_samples} samples dropped, {} of them counter samples), {r5xx} x 503, {r429} x 429, {hung} hung, all retried; victoria holds exactly the rest ({})",
        f.requests.load(Ordering::Relaxed),
        dropped.len(),
        got.len()
    );
    Ok(())
}

/// A destination that is down for good, with `max_lag = "1s"`: the export
/// skips what waited longer, and counts exactly what it skipped (every
/// committed reading, as none could be sent), in the store and the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_lag_the_export_skips_and_counts_exactly() -> Result<()> {
    let dir = TestDir::new("export-max-lag")?;
    // Bound, then closed: nothing listens there.
    let down = free_addr()?;
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"gone\"\nkind = \"remote_write\"\nurl = \"http://{down}/api/v1/write\"\n\
             bearer_token = \"sekrit-token\"\nmax_lag = \"1s\"\nmax_backoff = \"200ms\"\n"
        ),
    )?;
    let config = config.display().to_string();
    let collector = Collector::start_with(&dir, free_addr()?, &["--config", &config]).await?;
    let mut agent = Agent::start(
        &dir,
        "lag-0",
        &sim_agent_config("lag-0", &[collector.url()], 3, "20ms"),
        "",
    )?;
    wait_for_counters(&collector.db, "lag-0", 3, 100).await?;
    agent.stop().await?;
    let stored = tributary_tests::cluster::agent_counters(&collector.db, "lag-0")?.readings_stored;
    let store = format!("--store=sqlite:{}", collector.db.display());
    let row = eventually(PATIENCE, "the export skipped everything", || async {
        let json = run_bin(
            "tributary-collector",
            ["exports", &store, "--format", "json"],
        )
        .await
        .ok()?;
        let rows: serde_json::Value = serde_json::from_str(&json).ok()?;
        let row = rows[0].clone();
        (row["lag_readings"] == 0 && row["skipped"].as_u64()? > 0).then_some(row)
    })
    .await?;
    ensure!(
        row["skipped"].as_u64() == Some(stored) && row["sent"] == 0,
        "stored {stored} readings; exports shows {row}"
    );
    ensure!(
        collector
            .log()
            .contains("export skipped committed readings older than max_lag"),
        "the skip is not logged"
    );
    // The running collector answers the same through `Query/ListExports`:
    // the CLI's default path, and grpcurl through reflection.
    let server = format!("--server=http://{}", collector.addr);
    let json = run_bin(
        "tributary-collector",
        ["exports", &server, "--format", "json"],
    )
    .await?;
    let rows: serde_json::Value = serde_json::from_str(&json).context("exports --format json")?;
    let via_rpc = &rows[0];
    let addr = collector.addr.to_string();
    let answer = run_grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "tributary.v1.Query/ListExports",
    ])
    .await?;
    let grpc: serde_json::Value = serde_json::from_str(&answer).context("grpcurl's answer")?;
    let via_grpcurl = &grpc["exports"][0];
    // grpcurl prints 64-bit integers as strings.
    let num = |v: &serde_json::Value| v.as_u64().or_else(|| v.as_str()?.parse().ok());
    for shown in [via_rpc, via_grpcurl] {
        let destination = shown["destination"].as_str().unwrap_or_default();
        ensure!(
            shown["name"] == "gone"
                && shown["kind"] == "remote_write"
                && destination.contains(&down.to_string())
                && num(&shown["position"]).is_some()
                && num(&shown["position"]) == num(&row["position"])
                && num(&shown["skipped"]) == Some(stored),
            "ListExports shows {shown}, the store {row}"
        );
    }
    ensure!(
        !json.contains("sekrit") && !answer.contains("sekrit"),
        "a credential in ListExports: {json} {answer}"
    );
    println!(
        "max_lag: {stored} readings committed, destination down: all {stored} skipped and counted; ListExports (CLI and grpcurl) shows the same"
    );
    Ok(())
}
