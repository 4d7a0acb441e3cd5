//! Series cardinality against the real binaries: `ListSeries` in pages
//! (the CLI and a raw client follow the tokens), the collector's per-agent
//! series limit across streams, and the agent's per-device series limit
//! against a Prometheus target that brings new series every scrape, and the
//! merger's bounded series table (SQLite and PostgreSQL).
//!
//! The binaries must be built first (`cargo xtask test` does it).

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{self, Agent, Collector, PATIENCE};
use tributary_tests::http_sim::{Endpoint, HttpSim};
use tributary_tests::process::{TestDir, eventually, free_addr, run_bin};

mod postgres_support;
use postgres_support::{InProcess, TestSchema};

/// One agent stream, opened with a Hello and past its Welcome.
struct Ingest {
    tx: mpsc::Sender<pb::AgentFrame>,
    rx: Streaming<pb::CollectorFrame>,
}

impl Ingest {
    async fn open(url: &str, agent: &str, epoch: u64) -> Result<Self> {
        let mut client = pb::ingest_client::IngestClient::connect(url.to_string()).await?;
        let (tx, frames) = mpsc::channel(4);
        let hello = pb::Hello {
            agent_id: agent.into(),
            version: "test".into(),
            epoch,
            agent_time_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as i64,
            ..Default::default()
        };
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(hello)),
        })
        .await?;
        let mut rx = client
            .stream(ReceiverStream::new(frames))
            .await?
            .into_inner();
        match rx.next().await {
            Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Welcome(_)),
            })) => Ok(Ingest { tx, rx }),
            other => bail!("expected a welcome, got {other:?}"),
        }
    }

    /// Sends batch `seq` declaring stream ids `ids` (series `m{id}` of
    /// device `device`, with `labels`), one reading each; waits for its ack
    /// (`Ok`) or the status the stream ends with (`Err`).
    async fn declare(
        &mut self,
        seq: u64,
        device: &str,
        ids: std::ops::Range<u32>,
        labels: &HashMap<String, String>,
    ) -> Result<std::result::Result<(), tonic::Status>> {
        self.declare_with(seq, device, ids, &|_| labels.clone(), true)
            .await
    }

    /// Sends batch `seq` with one reading of each of `ids`, declared on
    /// this stream before; waits as [`Ingest::declare`] does.
    async fn readings(
        &mut self,
        seq: u64,
        ids: std::ops::Range<u32>,
    ) -> Result<std::result::Result<(), tonic::Status>> {
        self.declare_with(seq, "", ids, &|_| HashMap::new(), true)
            .await
    }

    /// [`Ingest::declare`] with the labels of each id, with or without the
    /// readings; an empty `device` declares nothing.
    async fn declare_with(
        &mut self,
        seq: u64,
        device: &str,
        ids: std::ops::Range<u32>,
        labels: &dyn Fn(u32) -> HashMap<String, String>,
        with_readings: bool,
    ) -> Result<std::result::Result<(), tonic::Status>> {
        let series = ids
            .clone()
            .filter(|_| !device.is_empty())
            .map(|id| pb::SeriesDecl {
                id,
                device: device.into(),
                metric: format!("m{id}"),
                labels: labels(id),
                unit: String::new(),
            })
            .collect();
        let readings = ids
            .filter(|_| with_readings)
            .map(|id| pb::Reading {
                series: id,
                ts_ns: 1_000_000 + i64::from(id),
                value: Some(pb::reading::Value::I64(i64::from(id))),
            })
            .collect();
        let batch = pb::Batch {
            seq,
            series,
            readings,
            last_seq: seq,
            ..Default::default()
        };
        self.tx
            .send(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(batch)),
            })
            .await
            .context("stream closed")?;
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.next()).await? {
                Some(Ok(pb::CollectorFrame {
                    frame: Some(pb::collector_frame::Frame::Ack(a)),
                })) if a.seq >= seq => return Ok(Ok(())),
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Ok(Err(status)),
                None => bail!("stream ended without an ack or a status"),
            }
        }
    }
}

async fn query(url: &str) -> Result<pb::query_client::QueryClient<tonic::transport::Channel>> {
    Ok(pb::query_client::QueryClient::connect(url.to_string()).await?)
}

/// Every series id a raw client lists with `page_size`, following the
/// tokens, and the number of pages.
async fn list_all(url: &str, page_size: u32) -> Result<(Vec<u64>, usize)> {
    list_of(url, "", page_size).await
}

/// [`list_all`] of the series of `agent` (all agents when empty).
async fn list_of(url: &str, agent: &str, page_size: u32) -> Result<(Vec<u64>, usize)> {
    let mut client = query(url).await?;
    let mut request = pb::ListSeriesRequest {
        agent: agent.into(),
        page_size,
        ..Default::default()
    };
    let (mut ids, mut pages) = (Vec::new(), 0);
    loop {
        let page = client.list_series(request.clone()).await?.into_inner();
        pages += 1;
        ensure!(pages < 1_000, "the tokens never end");
        ids.extend(page.series.iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            return Ok((ids, pages));
        }
        request.page_token = page.next_page_token;
    }
}

/// More series than fit one message a client accepts by default (4 MiB):
/// the CLI and a raw client both get every series exactly once, in pages
/// (by count and by size); a made-up token is `INVALID_ARGUMENT` naming
/// `page_token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_series_pages_through_more_than_one_message_holds() -> Result<()> {
    let dir = TestDir::new("series-pages")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let url = collector.url();
    // ≈ 560 bytes a series: 12,000 of them are ≈ 6.7 MB.
    let labels: HashMap<String, String> = [("a", 'x'), ("b", 'y')]
        .into_iter()
        .map(|(k, c)| (k.to_string(), c.to_string().repeat(250)))
        .collect();
    let total = 12_000u32;
    let mut ingest = Ingest::open(&url, "pager", 1).await?;
    for (seq, ids) in [(1, 1..6_001), (2, 6_001..total + 1)] {
        if let Err(status) = ingest.declare(seq, "dev", ids, &labels).await? {
            bail!("batch {seq} refused: {status}");
        }
    }
    let expected: Vec<u64> = (1..=u64::from(total)).collect();

    // A raw client: small pages by count, default pages cut by size.
    let (ids, pages) = list_all(&url, 1_000).await?;
    assert_eq!(ids, expected, "every series once, in id order");
    assert_eq!(pages, 12);
    let (ids, pages) = list_all(&url, 0).await?;
    assert_eq!(ids, expected);
    assert!(pages >= 4, "2 MiB pages of ≈ 560 B series: {pages} pages");

    // The CLI follows the tokens.
    let csv = run_bin(
        "tributary-collector",
        ["series", "--server", &url, "--format", "csv"],
    )
    .await?;
    let ids = csv
        .lines()
        .skip(1)
        .map(|row| row.split(',').next().unwrap_or("").parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .context("an id in the first column of every row")?;
    assert_eq!(ids, expected, "every series once, in id order");

    // grpcurl (reflection): a body without paging gets the first page; the
    // token it gives leads on.
    let grpcurl = std::env::var("TRIBUTARY_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let addr = collector.addr.to_string();
    let call = |body: String| {
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        async move {
            let out = tokio::process::Command::new(&grpcurl)
                .args(["-plaintext", "-d", &body, &addr])
                .arg("tributary.v1.Query/ListSeries")
                .output()
                .await
                .with_context(|| format!("run {grpcurl}"))?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(serde_json::from_slice::<serde_json::Value>(&out.stdout)?)
        }
    };
    let mut page = call(r#"{"agent": "pager"}"#.into()).await?;
    let mut listed = 0;
    loop {
        listed += page["series"].as_array().map_or(0, Vec::len);
        let Some(token) = page.get("nextPageToken").and_then(|t| t.as_str()) else {
            break;
        };
        page = call(format!(r#"{{"agent": "pager", "page_token": "{token}"}}"#)).await?;
    }
    assert_eq!(listed, total as usize);

    for token in ["nonsense", "-5", "0"] {
        let status = query(&url)
            .await?
            .list_series(pb::ListSeriesRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .expect_err("a made-up token is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("page_token:"), "{status:?}");
    }
    Ok(())
}

/// A Prometheus target bringing 20 new series every scrape, behind an
/// agent with `max_series_per_device = 50`: the collector stores at most 50
/// series of the device (48 of the target, `up`, `series_dropped_total`),
/// and every sample the target served either was stored or is counted in
/// `series_dropped_total`, exactly; the drop is logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stores_at_most_its_series_limit_and_counts_the_rest() -> Result<()> {
    const LIMIT: usize = 50;
    // 4 samples of fixed series and 20 of new ones per scrape.
    const PER_SCRAPE: i64 = 24;
    let dir = TestDir::new("device-series-limit")?;
    let http = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let config = format!(
        r#"id = "edge-churn"
collectors = ["{}"]
max_series_per_device = {LIMIT}

[[devices]]
name = "churner"
driver = "prometheus"
url = "{}"
interval = "100ms"
timeout = "5s"
"#,
        collector.url(),
        http.url("/metrics?churn=20"),
    );
    let mut agent = Agent::start(&dir, "edge-churn", &config, "")?;
    let db = collector.db.clone();
    // Scrapes 1-2 fit (24 + 20 = 44 of 48), scrape 3 fills the limit,
    // later ones only drop: wait for a few of those.
    eventually(PATIENCE, "ten scrapes stored", || async {
        let up = cluster::stored_points(&db, "edge-churn", "churner", "up").ok()?;
        (up.first().map_or(0, |(_, p)| p.len()) >= 10).then_some(())
    })
    .await?;
    agent.stop().await?;

    let stored = cluster::stored_points(&db, "edge-churn", "churner", "")?;
    assert_eq!(stored.len(), LIMIT, "series stored for the device");
    let points = |metric: &str| {
        stored
            .iter()
            .filter(|(s, _)| s.key.metric == metric)
            .flat_map(|(_, p)| p.iter().map(|p| p.value.clone()))
            .collect::<Vec<_>>()
    };
    let scrapes = points("up").len() as i64;
    let dropped = points("series_dropped_total")
        .iter()
        .map(cluster::stored_int)
        .collect::<Result<Vec<_>>>()?;
    let dropped_total = dropped.iter().copied().max().unwrap_or(0);
    let target_readings: i64 = stored
        .iter()
        .filter(|(s, _)| s.key.metric.starts_with("sim_"))
        .map(|(_, p)| p.len() as i64)
        .sum();
    assert!(scrapes as u64 <= http.requests_to(Endpoint::Metrics));
    assert_eq!(
        scrapes * PER_SCRAPE,
        target_readings + dropped_total,
        "every sample served was stored or counted as dropped"
    );
    assert_eq!(dropped_total, 16 + (scrapes - 3) * 20);
    let warned = agent.log().matches("reached max_series_per_device").count();
    assert_eq!(warned, 1, "logged once:\n{}", agent.log());
    Ok(())
}

/// `[limits] max_series_per_agent = 100`: an agent declaring series on
/// several streams, and after a collector restart, gets to exactly 100;
/// the batch that would pass it ends its stream with RESOURCE_EXHAUSTED
/// naming the agent and the limit, and nothing of it is stored. Known
/// series stay usable and another agent is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_held_to_its_series_limit_across_streams() -> Result<()> {
    let dir = TestDir::new("agent-series-limit")?;
    let config = dir.join("collector.toml");
    std::fs::write(&config, "[limits]\nmax_series_per_agent = 100\n")?;
    let config = config.display().to_string();
    let addr = free_addr()?;
    let mut collector = Collector::start_with(&dir, addr, &["--config", &config]).await?;
    let url = collector.url();
    let none = HashMap::new();
    let series_of = |agent: &'static str| {
        let url = url.clone();
        async move { Ok::<_, anyhow::Error>(list_of(&url, agent, 0).await?.0.len()) }
    };

    // Two streams of one epoch, then a new epoch: 60 + 30 series.
    let mut s = Ingest::open(&url, "edge", 1).await?;
    ensure!(s.declare(1, "d1", 1..61, &none).await?.is_ok());
    drop(s);
    let mut s = Ingest::open(&url, "edge", 1).await?;
    ensure!(s.declare(2, "d2", 1..31, &none).await?.is_ok());
    drop(s);
    let mut s = Ingest::open(&url, "edge", 2).await?;
    // 90 stored: 11 more would pass 100.
    let status = match s.declare(1, "d3", 1..12, &none).await? {
        Err(status) => status,
        Ok(()) => bail!("the 101st series was accepted"),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("edge")
            && status.message().contains("max_series_per_agent (100)"),
        "{status:?}"
    );
    assert_eq!(series_of("edge").await?, 90, "nothing of the refused batch");
    // Refused again on another stream, logged once.
    let mut s = Ingest::open(&url, "edge", 2).await?;
    ensure!(s.declare(1, "d3", 1..12, &none).await?.is_err());
    let warned = || {
        collector
            .log()
            .matches("reached max_series_per_agent")
            .count()
    };
    assert_eq!(warned(), 1, "logged once:\n{}", collector.log());

    // Another agent has its own count.
    let mut other = Ingest::open(&url, "other", 1).await?;
    ensure!(other.declare(1, "d", 1..51, &none).await?.is_ok());
    drop(other);

    // After a restart the count comes from the store: 10 more fit, then
    // not one; series already stored may be declared again.
    collector.proc.terminate(PATIENCE).await?;
    let collector = Collector::start_with(&dir, addr, &["--config", &config]).await?;
    let url = collector.url();
    let mut s = Ingest::open(&url, "edge", 3).await?;
    ensure!(s.declare(1, "d3", 1..11, &none).await?.is_ok());
    drop(s);
    let mut s = Ingest::open(&url, "edge", 4).await?;
    ensure!(s.declare(1, "d1", 1..61, &none).await?.is_ok());
    let status = match s.declare(2, "d4", 61..62, &none).await? {
        Err(status) => status,
        Ok(()) => bail!("the 101st series was accepted after a restart"),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(list_of(&url, "edge", 0).await?.0.len(), 100);
    assert_eq!(list_of(&url, "other", 0).await?.0.len(), 50);
    let warned = collector
        .log()
        .matches("reached max_series_per_agent")
        .count();
    assert_eq!(warned, 2, "logged once by each run:\n{}", collector.log());
    Ok(())
}

/// Not a test: what a series costs the collector's memory, as the slope of
/// its anonymous RSS (the file cache of the database left out) after a
/// restart (the series table loaded from the store) between 100,000 and
/// 300,000 series of unique keys (`m<id>`, no readings), with a label set
/// per 10,000 series and with a label set of its own per series. Run with
/// `--ignored --nocapture`; README "Limits" quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_collector_memory_per_series() -> Result<()> {
    let shared = |id: u32| HashMap::from([("i".to_string(), format!("{}", id / 10_000))]);
    let own = |id: u32| HashMap::from([("request".to_string(), format!("req-{id:08}"))]);
    for (what, labels) in [
        (
            "shared label sets",
            &shared as &dyn Fn(u32) -> HashMap<String, String>,
        ),
        ("a label set each", &own),
    ] {
        let per_series = memory_per_series(labels).await?;
        println!("{what}: ≈ {per_series:.0} bytes per series");
    }
    Ok(())
}

async fn memory_per_series(labels: &dyn Fn(u32) -> HashMap<String, String>) -> Result<f64> {
    let dir = TestDir::new("series-memory")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let (mut declared, mut seq, mut rss) = (0u32, 0u64, Vec::new());
    for target in [100_000u32, 300_000] {
        let mut s = Ingest::open(&collector.url(), "mem", 1).await?;
        while declared < target {
            let next = (declared + 10_000).min(target);
            seq += 1;
            if let Err(status) = s
                .declare_with(seq, "dev", declared + 1..next + 1, labels, false)
                .await?
            {
                bail!("refused: {status}");
            }
            declared = next;
        }
        drop(s);
        let pid = collector.proc.id().context("collector pid")?;
        println!("{declared} series, before the restart: {}", rss_text(pid)?);
        collector.proc.terminate(PATIENCE).await?;
        collector = Collector::start(&dir, addr).await?;
        // Loaded: the store answers once the merger has read it.
        query(&collector.url())
            .await?
            .list_series(pb::ListSeriesRequest {
                page_size: 1,
                ..Default::default()
            })
            .await?;
        let pid = collector.proc.id().context("collector pid")?;
        println!("{declared} series, loaded: {}", rss_text(pid)?);
        rss.push(rss_anon_kib(pid)?);
    }
    Ok((rss[1] as f64 - rss[0] as f64) * 1024.0 / 200_000.0)
}

/// Anonymous resident memory of a process (its heap, not the file cache).
fn rss_anon_kib(pid: u32) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("RssAnon in /proc/PID/status")
}

fn rss_text(pid: u32) -> Result<String> {
    let (rss, _) = cluster::rss_kib(pid)?;
    Ok(format!(
        "RSS {rss} KiB, anonymous {} KiB",
        rss_anon_kib(pid)?
    ))
}

/// `[limits] max_series_in_memory = 10`: the merger's series table keeps
/// at most 10 series and evicts the least recently used. An evicted series
/// is found again in the store when a stream declares it (same id, not
/// counted again against `max_series_per_agent`), and Tail still names the
/// series of a reading whose series was evicted after it was declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_series_are_read_back_from_the_store() -> Result<()> {
    let dir = TestDir::new("series-eviction")?;
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_series_in_memory = 10\nmax_series_per_agent = 30\n",
    )?;
    let config = config.display().to_string();
    let collector = Collector::start_with(&dir, free_addr()?, &["--config", &config]).await?;
    eviction_is_invisible(&collector.url()).await
}

/// The same against PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_series_are_read_back_from_postgres() -> Result<()> {
    let schema = TestSchema::new("series_eviction").await?;
    let collector = InProcess::start_with(schema.store(), |c| {
        c.limits.max_series_in_memory = 10;
        c.limits.max_series_per_agent = 30;
    })
    .await?;
    eviction_is_invisible(&collector.url()).await?;
    collector.stop().await
}

/// What `evicted_series_are_read_back_*` check, against a collector at
/// `url` holding 10 series in memory and 30 per agent in the store.
async fn eviction_is_invisible(url: &str) -> Result<()> {
    let none = HashMap::new();
    let mut tail = query(url)
        .await?
        .tail(pb::SeriesFilter {
            agent: "a".into(),
            ..Default::default()
        })
        .await?
        .into_inner();

    let mut a = Ingest::open(url, "a", 1).await?;
    ensure!(a.declare(1, "da", 1..11, &none).await?.is_ok());
    // 30 series of another agent push all of `a`'s out of the table.
    let mut b = Ingest::open(url, "b", 1).await?;
    ensure!(b.declare(1, "db", 1..31, &none).await?.is_ok());
    drop(b);
    // `a` goes on with the ids it declared: Tail still names its series.
    ensure!(a.readings(2, 1..11).await?.is_ok());
    let mut points = 0;
    while points < 20 {
        let chunk = tokio::time::timeout(PATIENCE, tail.next())
            .await?
            .context("tail ended")??;
        let series = chunk.series.context("chunk without series")?;
        for p in &chunk.points {
            let Some(pb::point::Value::I64(v)) = p.value else {
                bail!("unexpected point {p:?}");
            };
            assert_eq!(
                (series.device.as_str(), series.metric.clone()),
                ("da", format!("m{v}"))
            );
            points += 1;
        }
    }
    drop(a);

    // Declared again on new streams: the stored series, not new ones, and
    // not counted twice (`b` is at its limit of 30).
    let mut a = Ingest::open(url, "a", 2).await?;
    ensure!(a.declare(1, "da", 1..11, &none).await?.is_ok());
    let mut b = Ingest::open(url, "b", 2).await?;
    if let Err(status) = b.declare(1, "db", 1..31, &none).await? {
        bail!("series already stored refused: {status}");
    }
    let a_ids = list_of(url, "a", 0).await?.0;
    assert_eq!(a_ids.len(), 10);
    assert_eq!(list_of(url, "b", 0).await?.0.len(), 30);
    let mut range = query(url)
        .await?
        .range(pb::RangeRequest {
            filter: Some(pb::SeriesFilter {
                agent: "a".into(),
                device: "da".into(),
                metric: "m1".into(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut series, mut points) = (std::collections::BTreeSet::new(), 0);
    while let Some(chunk) = range.next().await {
        let chunk = chunk?;
        series.insert(chunk.series.context("chunk without series")?.id);
        points += chunk.points.len();
    }
    assert_eq!(
        (series.len(), points),
        (1, 3),
        "one series m1, three readings"
    );
    Ok(())
}
