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

use anyhow::{Result, ensure};

use tributary_proto::v1 as pb;
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, run_bin};

use postgres_support::{
    Child, InProcess, PATIENCE, Proxy, TestSchema, assert_exactly_once, pg_addr, sim_agent_config,
    start_agent,
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
    let count = "SELECT count(*) FROM readings";
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
