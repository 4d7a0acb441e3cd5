//! End to end on PostgreSQL: real agent processes streaming sim counters to
//! collectors that share one database (a schema of this test's own), and
//! the ground truth (every counter value exactly once) read back from the
//! database after each fault: a collector SIGKILLed under ten agents, and
//! the database out of reach for ten seconds. With two collectors, both
//! name the collector each agent streams to (ListAgents, `agents`), before
//! and after the agents fail over.
//!
//! The agent binaries must be built first (`cargo xtask test` does it).

mod postgres_support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use tributary_proto::v1 as pb;
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, run_bin};

use postgres_support::{
    Child, InProcess, PATIENCE, Proxy, READINGS, TestSchema, assert_exactly_once, pg_addr,
    sim_agent_config, start_agent,
};

/// SIGTERMs every agent (it drains: waits for the acks of what it sent)
/// and checks each exited cleanly.
async fn stop_agents(agents: &mut [(String, Proc)]) -> Result<()> {
    for (id, proc) in agents.iter_mut() {
        let status = proc.terminate(PATIENCE).await?;
        ensure!(
            status.success(),
            "{id} exited with {status}: {}",
            proc.log()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_store_every_counter_value_exactly_once() -> Result<()> {
    let dir = TestDir::new("pg-three-agents")?;
    let schema = TestSchema::new("three_agents").await?;
    let collector = InProcess::start(schema.store()).await?;
    let mut agents = Vec::new();
    for a in 0..3 {
        let id = format!("edge-{a}");
        let config = sim_agent_config(&id, &[collector.url()], 10, "20ms");
        agents.push((id.clone(), start_agent(&dir, &id, &config)?));
    }
    for (id, _) in &agents {
        schema.wait_for_counters(id, 10, 30).await?;
    }
    stop_agents(&mut agents).await?;
    for (id, _) in &agents {
        let total = assert_exactly_once(id, &schema.counters(id).await?, 10)?;
        ensure!(total >= 10 * 30, "{id}: only {total} readings");
    }

    // The Query service reads the same from PostgreSQL.
    let csv = run_bin(
        "tributary-collector",
        [
            "query",
            "--server",
            &collector.url(),
            "--device",
            "edge-1-counter-3",
            "--metric",
            "counter",
            "--format",
            "csv",
        ],
    )
    .await?;
    let values: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(4).unwrap_or_default().to_owned())
        .collect();
    let stored: Vec<String> = schema.counters("edge-1").await?["edge-1-counter-3"]
        .iter()
        .map(i64::to_string)
        .collect();
    assert_eq!(values, stored);
    collector.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_one_killed_agents_fail_over_and_store_every_value_once() -> Result<()> {
    let dir = TestDir::new("pg-failover")?;
    let schema = TestSchema::new("failover").await?;
    let mut a = Child::start_named(
        free_addr()?,
        &schema.url(),
        &dir.join("collector-a.log"),
        Some(COL_A),
    )
    .await?;
    let b = Child::start_named(
        free_addr()?,
        &schema.url(),
        &dir.join("collector-b.log"),
        Some(COL_B),
    )
    .await?;
    // Ten agents listing both collectors; each starts on the one its id
    // hashes to (edge-0, 2, 5, 6 and 8 on a), and moves on after a failure.
    let mut agents = Vec::new();
    for i in 0..10 {
        let id = format!("edge-{i}");
        let config = sim_agent_config(&id, &[a.url(), b.url()], 3, "20ms");
        agents.push((id.clone(), start_agent(&dir, &id, &config)?));
    }
    let mut least = Vec::new();
    for (id, _) in &agents {
        least.push(schema.wait_for_counters(id, 3, 10).await?);
    }

    // Which collector each agent is on: both collectors' ListAgents name
    // the one whose own session has it connected.
    let ids: Vec<String> = agents.iter().map(|(id, _)| id.clone()).collect();
    let (url_a, url_b) = (a.url(), b.url());
    let on = eventually(
        PATIENCE,
        "both collectors name each agent's collector",
        || names_agree(&ids, &url_a, &url_b),
    )
    .await?;
    let on_a = on.values().filter(|c| c.as_str() == COL_A).count();
    ensure!(
        on_a > 0 && on_a < ids.len(),
        "the agents should start on both collectors: {on:?}"
    );

    // Freeze a for a moment so its agents have batches in flight, then
    // crash it: they must resend those to b.
    let pid = a.id().map(|p| p.to_string()).unwrap_or_default();
    run_kill("-STOP", &pid).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().await?;

    // Every agent keeps making progress through b.
    for ((id, _), n) in agents.iter().zip(&least) {
        schema.wait_for_counters(id, 3, n + 20).await?;
    }
    // b names itself for every agent now, those that failed over included,
    // in ListAgents and in `tributary-collector agents`; and so does the
    // database: a third collector, which no agent streams to, reads b's
    // name for each from there.
    let c = Child::start_named(
        free_addr()?,
        &schema.url(),
        &dir.join("collector-c.log"),
        Some("collector-c"),
    )
    .await?;
    let url_c = c.url();
    eventually(
        PATIENCE,
        "b and the store name b for every agent",
        || async {
            let listed = list_agents(&url_b).await.ok()?;
            let stored = list_agents(&url_c).await.ok()?;
            (listed.len() == ids.len()
                && listed
                    .values()
                    .all(|(connected, c)| *connected && c == COL_B)
                && stored.len() == ids.len()
                && stored
                    .values()
                    .all(|(connected, c)| !*connected && c == COL_B))
            .then_some(())
        },
    )
    .await?;
    for format in ["json", "csv", "table"] {
        let out = run_bin(
            "tributary-collector",
            ["agents", "--server", &b.url(), "--format", format],
        )
        .await?;
        match format {
            "json" => {
                let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
                ensure!(rows.len() == ids.len(), "{out}");
                ensure!(rows.iter().all(|r| r["collector"] == COL_B), "{out}");
            }
            "csv" => {
                let mut lines = out.lines();
                let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
                let col = header.iter().position(|h| *h == "collector");
                let col = col.ok_or_else(|| anyhow::anyhow!("no collector column: {out}"))?;
                ensure!(lines.all(|l| l.split(',').nth(col) == Some(COL_B)), "{out}");
            }
            _ => ensure!(
                out.lines().next().is_some_and(|h| h.contains("COLLECTOR"))
                    && out.lines().skip(1).all(|l| l.contains(COL_B)),
                "{out}"
            ),
        }
    }
    stop_agents(&mut agents).await?;
    for (id, _) in &agents {
        assert_exactly_once(id, &schema.counters(id).await?, 3)?;
    }
    let resent = schema
        .number("SELECT sum(batches_resent) FROM agents")
        .await?;
    ensure!(resent > 0, "no batch was resent after the crash");
    drop(b);
    drop(c);
    Ok(())
}

/// The collectors' names in the failover test.
const COL_A: &str = "collector-a";
const COL_B: &str = "collector-b";

/// ListAgents of the collector at `url`: agent → (connected, collector).
async fn list_agents(url: &str) -> Result<BTreeMap<String, (bool, String)>> {
    let mut q = pb::query_client::QueryClient::connect(url.to_owned()).await?;
    let agents = q.list_agents(pb::ListAgentsRequest {}).await?.into_inner();
    Ok(agents
        .agents
        .into_iter()
        .map(|a| (a.id, (a.connected, a.collector)))
        .collect())
}

/// Agent → the collector it streams to, once every agent of `ids` is
/// connected to exactly one of a and b and both collectors' ListAgents
/// name that one.
async fn names_agree(ids: &[String], a: &str, b: &str) -> Option<BTreeMap<String, String>> {
    let (from_a, from_b) = (list_agents(a).await.ok()?, list_agents(b).await.ok()?);
    let mut on = BTreeMap::new();
    for id in ids {
        let (a_has, a_says) = from_a.get(id)?;
        let (b_has, b_says) = from_b.get(id)?;
        let truth = match (a_has, b_has) {
            (true, false) => COL_A,
            (false, true) => COL_B,
            _ => return None,
        };
        if a_says != truth || b_says != truth {
            return None;
        }
        on.insert(id.clone(), truth.to_owned());
    }
    Some(on)
}

/// `kill SIGNAL PID` with the system's kill.
async fn run_kill(signal: &str, pid: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .await?;
    ensure!(status.success(), "kill {signal} {pid}: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unreachable_for_10s_then_every_value_arrives_once() -> Result<()> {
    let dir = TestDir::new("pg-outage")?;
    let schema = TestSchema::new("outage").await?;
    let proxy = Proxy::start(pg_addr()?).await?;
    let mut collector = Child::start(
        free_addr()?,
        &schema.url_through(proxy.addr),
        &dir.join("collector.log"),
    )
    .await?;
    let mut agents = Vec::new();
    for i in 0..2 {
        let id = format!("edge-{i}");
        let config = sim_agent_config(&id, &[collector.url()], 3, "20ms");
        agents.push((id.clone(), start_agent(&dir, &id, &config)?));
    }
    let mut least = Vec::new();
    for (id, _) in &agents {
        least.push(schema.wait_for_counters(id, 3, 10).await?);
    }

    proxy.cut();
    // Nothing commits while the database is out of reach (read past the
    // proxy, straight from the server): once a commit in flight at the cut
    // has settled, the count stays put.
    let count = &format!("SELECT count(*) FROM ({READINGS}) r");
    let query = pb::query_client::QueryClient::connect(collector.url()).await?;
    let status = eventually(PATIENCE, "queries fail while the database is away", || {
        let mut query = query.clone();
        async move {
            query
                .list_agents(pb::ListAgentsRequest::default())
                .await
                .err()
        }
    })
    .await?;
    ensure!(
        status.code() == tonic::Code::Unavailable,
        "while cut: {status:?}"
    );
    let frozen = schema.number(count).await?;
    // The outage itself: ten seconds, as the premise of the test.
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        schema.number(count).await? == frozen,
        "readings were stored while the database was cut off"
    );
    ensure!(collector.running()?, "collector died: {}", collector.log());
    proxy.restore();

    for ((id, _), n) in agents.iter().zip(&least) {
        // 10 s at 50 polls/s per device were spooled meanwhile.
        schema.wait_for_counters(id, 3, n + 500).await?;
    }
    stop_agents(&mut agents).await?;
    for (id, _) in &agents {
        assert_exactly_once(id, &schema.counters(id).await?, 3)?;
    }
    let agents = query
        .clone()
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    ensure!(agents.len() == 2, "queries work again: {agents:?}");
    ensure!(collector.running()?, "collector died: {}", collector.log());
    Ok(())
}

/// A raw client's stream for the out-of-order failover: sends never wait
/// (the channel holds every batch), acks are read as they come.
struct OooStream {
    tx: tokio::sync::mpsc::Sender<pb::AgentFrame>,
    rx: tonic::Streaming<pb::CollectorFrame>,
    /// The Welcome's committed set: mark, ranges, out_of_order.
    welcome: (u64, Vec<(u64, u64)>, bool),
    declared: bool,
}

/// The sequences a Welcome or an Ack says are committed.
fn committed_seqs(seq: u64, ranges: &[(u64, u64)]) -> std::collections::BTreeSet<u64> {
    (1..=seq)
        .chain(ranges.iter().flat_map(|&(f, l)| f..=l))
        .collect()
}

impl OooStream {
    async fn open(url: &str, agent: &str, epoch: u64) -> Result<OooStream> {
        use tokio_stream::StreamExt;
        let mut client = pb::ingest_client::IngestClient::connect(url.to_string()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: agent.into(),
                version: "test".into(),
                epoch,
                agent_time_ns: 1,
                out_of_order: true,
                ..Default::default()
            })),
        })
        .await?;
        let mut rx = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = match tokio::time::timeout(PATIENCE, rx.next()).await? {
            Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Welcome(w)),
            })) => (
                w.committed_seq,
                w.committed_ranges
                    .iter()
                    .map(|r| (r.first, r.last))
                    .collect(),
                w.out_of_order,
            ),
            other => anyhow::bail!("expected a welcome, got {other:?}"),
        };
        Ok(OooStream {
            tx,
            rx,
            welcome,
            declared: false,
        })
    }

    /// Batch `seq`: counter value `seq` at device time `seq` ms.
    async fn send(&mut self, seq: u64) -> Result<()> {
        let declare = !std::mem::replace(&mut self.declared, true);
        let batch = pb::Batch {
            seq,
            series: if declare {
                vec![pb::SeriesDecl {
                    id: 1,
                    device: "dev".into(),
                    metric: "counter".into(),
                    labels: Default::default(),
                    unit: String::new(),
                }]
            } else {
                vec![]
            },
            readings: vec![pb::Reading {
                series: 1,
                ts_ns: 1_000_000_000 + seq as i64 * 1_000_000,
                value: Some(pb::reading::Value::I64(seq as i64)),
            }],
            last_seq: seq,
            ..Default::default()
        };
        self.tx
            .send(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(batch)),
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream closed"))
    }

    /// The next Ack within `wait`, as the sequences it says are committed;
    /// `None` when none came (or the stream ended).
    async fn ack(&mut self, wait: Duration) -> Result<Option<std::collections::BTreeSet<u64>>> {
        use tokio_stream::StreamExt;
        match tokio::time::timeout(wait, self.rx.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => Ok(None),
            Ok(Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Ack(a)),
            }))) => {
                let ranges: Vec<(u64, u64)> = a.ranges.iter().map(|r| (r.first, r.last)).collect();
                Ok(Some(committed_seqs(a.seq, &ranges)))
            }
            Ok(Some(Ok(other))) => anyhow::bail!("expected an ack, got {other:?}"),
        }
    }
}

/// The order a live-first agent sends in: the newest batches ahead, the
/// backlog (oldest first) beside them, shuffled a little within windows
/// of eight, so ranges open and close all the time.
fn live_first_order(seqs: &[u64], rng: &mut impl rand::Rng) -> Vec<u64> {
    use rand::seq::SliceRandom;
    let half = seqs.len() / 2;
    let (backlog, live) = seqs.split_at(half);
    let mut order = Vec::with_capacity(seqs.len());
    let (mut b, mut l) = (backlog.iter(), live.iter());
    loop {
        match (l.next(), b.next()) {
            (None, None) => break,
            (x, y) => order.extend(x.into_iter().chain(y)),
        }
    }
    for window in order.chunks_mut(8) {
        window.shuffle(rng);
    }
    order
}

/// Issue 18's fault: out-of-order acks across a failover between two
/// collectors on PostgreSQL. A raw client sends an epoch's batches out of
/// order (live first, backlog beside) to collector a, with batches in
/// flight when a is frozen and SIGKILLed; it continues on b from b's
/// Welcome, sending what the Welcome does not cover and again a few that
/// it does. Nothing a acked is missing from b's Welcome, nothing the
/// Welcome lists was not sent, and the database then holds every sequence
/// exactly once: 0 lost, 0 duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_across_a_failover_lose_and_duplicate_nothing() -> Result<()> {
    use rand::SeedableRng;
    use rand::seq::IndexedRandom;
    let seed: u64 = std::env::var("TRIBUTARY_OOO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (TRIBUTARY_OOO_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const N: u64 = 400;
    let dir = TestDir::new("pg-ooo-failover")?;
    let schema = TestSchema::new("ooo_failover").await?;
    let mut a = Child::start(free_addr()?, &schema.url(), &dir.join("collector-a.log")).await?;
    let b = Child::start(free_addr()?, &schema.url(), &dir.join("collector-b.log")).await?;

    let all: Vec<u64> = (1..=N).collect();
    let order = live_first_order(&all, &mut rng);
    let mut sa = OooStream::open(&a.url(), "edge-ooo", 11).await?;
    ensure!(
        sa.welcome == (0, vec![], true),
        "a new epoch: {:?}",
        sa.welcome
    );
    // The first 200 in order of sending, waiting until a has acked them
    // all; every ack only what was sent.
    let (first, rest) = order.split_at(200);
    let mut sent = std::collections::BTreeSet::new();
    let mut acked_by_a = std::collections::BTreeSet::new();
    for &seq in first {
        sa.send(seq).await?;
        sent.insert(seq);
    }
    while !sent.is_subset(&acked_by_a) {
        let ack = sa.ack(PATIENCE).await?.context("a stopped acking")?;
        ensure!(ack.is_subset(&sent), "a acked what was not sent");
        acked_by_a.extend(ack);
    }
    // 150 more; a freezes as soon as it has acked some of them (others
    // are then in flight, committed or not, their acks lost), and dies.
    for &seq in &rest[..150] {
        sa.send(seq).await?;
        sent.insert(seq);
    }
    let before = acked_by_a.len();
    while acked_by_a.len() == before {
        let ack = sa.ack(PATIENCE).await?.context("a stopped acking")?;
        ensure!(ack.is_subset(&sent), "a acked what was not sent");
        acked_by_a.extend(ack);
    }
    let pid = a.id().map(|p| p.to_string()).unwrap_or_default();
    run_kill("-STOP", &pid).await?;
    a.kill().await?;
    drop(sa);

    // b's Welcome comes from the database: it covers everything a acked
    // and lists nothing that was not sent.
    let mut sb = OooStream::open(&b.url(), "edge-ooo", 11).await?;
    let (mark, ranges, ooo) = sb.welcome.clone();
    ensure!(ooo, "b takes batches in any order");
    let welcomed = committed_seqs(mark, &ranges);
    ensure!(
        acked_by_a.is_subset(&welcomed),
        "acked by a but not in b's Welcome: {:?}",
        acked_by_a
            .difference(&welcomed)
            .take(10)
            .collect::<Vec<_>>()
    );
    ensure!(
        welcomed.is_subset(&sent),
        "b's Welcome lists unsent sequences"
    );
    ensure!(!ranges.is_empty(), "the backlog's gap shows as ranges");
    eprintln!(
        "sent to a {}, acked by a {}, b's Welcome: mark {mark}, {} ranges, {} sequences",
        sent.len(),
        acked_by_a.len(),
        ranges.len(),
        welcomed.len()
    );
    // Continue from the Welcome: first a few sequences it covers, above its
    // mark (in its ranges) and below, as a client that lost an ack would
    // resend them (replays to dedup while the mark is still below them),
    // then what it does not cover, in the same out-of-order fashion.
    let in_ranges: Vec<u64> = welcomed.iter().copied().filter(|&s| s > mark).collect();
    let below: Vec<u64> = (1..=mark).collect();
    let mut to_send: Vec<u64> = in_ranges.choose_multiple(&mut rng, 15).copied().collect();
    to_send.extend(below.choose_multiple(&mut rng, 5).copied());
    let missing: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| !welcomed.contains(s))
        .collect();
    to_send.extend(live_first_order(&missing, &mut rng));
    for &seq in &to_send {
        sb.send(seq).await?;
    }
    let everything: std::collections::BTreeSet<u64> = all.iter().copied().collect();
    loop {
        let ack = sb.ack(PATIENCE).await?.context("b stopped acking")?;
        if ack == everything {
            break;
        }
    }
    drop(sb);
    let stored = schema.counters("edge-ooo").await?;
    let total = assert_exactly_once("edge-ooo", &stored, 1)?;
    ensure!(total == N, "{total} of {N} stored");
    let row = schema
        .number("SELECT committed_seq FROM epochs WHERE agent = 'edge-ooo' AND epoch = 11")
        .await?;
    let no_ranges = schema
        .number("SELECT count(*) FROM epochs WHERE agent = 'edge-ooo' AND committed_ranges IS NULL")
        .await?;
    ensure!(
        (row, no_ranges) == (N as i64, 1),
        "epochs row: {row}, {no_ranges}"
    );
    let dedup = schema
        .number("SELECT batches_deduplicated FROM agents WHERE id = 'edge-ooo'")
        .await?;
    ensure!(dedup >= 20, "the replays were counted: {dedup}");
    drop(b);
    Ok(())
}
