//! The spool's series dictionary against the real binaries: it counts
//! toward `[spool] max_bytes` and is compacted by epoch rollovers while
//! the agent runs, and readings cross the rollovers exactly once.
//!
//! The binaries must be built first (`cargo xtask test` does it).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use tributary_tests::cluster::{
    self, Agent, Collector, PATIENCE, agent_counters, assert_exactly_once, counters,
    sim_agent_config,
};
use tributary_tests::http_sim::{Endpoint, HttpSim};
use tributary_tests::process::{TestDir, eventually, free_addr};

/// The spool's bound in this test.
const MAX_BYTES: u64 = 1024 * 1024;
/// New series the Prometheus target brings every scrape.
const CHURN: u64 = 200;
/// The fewest bytes a dictionary entry of one of them takes: header 8,
/// device `churner` 4 + 7, metric `sim_churn_value` 4 + 15, empty unit 4,
/// label count 4, `i` 4 + 1 and its value 4 + 1, `scrape` 4 + 6 and its
/// value 4 + 1.
const MIN_ENTRY_BYTES: u64 = 71;
/// Sim devices beside the target: their counters are the ground truth.
const DEVICES: usize = 3;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `SERIES` and the whole spool (segments and `SERIES`), in bytes.
fn spool_sizes(spool: &Path) -> (u64, u64) {
    let series = file_len(&spool.join("SERIES"));
    let segments: u64 = std::fs::read_dir(spool)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| file_len(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    (series, series + segments)
}

/// A Prometheus target with 200 new series every scrape, beside sim
/// counters, behind an agent with a 1 MiB spool. Without compaction the
/// dictionary would pass the spool's bound after about 70 scrapes; the test
/// runs past twice that. Every time the spool is looked at, `SERIES` is
/// within `max_bytes`, and so is the whole spool at the end (the bound the
/// code enforces, sampled here); the agent rolled its epoch; and the
/// collector holds every counter value exactly once (1..=n, no gap, no
/// repeat) across the epochs, every churn sample once, and no drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_series_are_compacted_by_epoch_rollovers_and_nothing_is_lost_or_doubled()
-> Result<()> {
    let dir = TestDir::new("spool-epoch")?;
    let http = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let mut config = sim_agent_config("edge-epoch", &[collector.url()], DEVICES, "100ms");
    config.push_str(&format!(
        "\n[[devices]]\nname = \"churner\"\ndriver = \"prometheus\"\nurl = \"{}\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\n",
        http.url(&format!("/metrics?churn={CHURN}"))
    ));
    let mut agent = Agent::start(&dir, "edge-epoch", &config, "max_bytes = \"1MiB\"\n")?;
    let spool = agent.spool.clone();

    // Run until the target has served twice the spool's bound in new
    // dictionary entries, checking the bound at every look (`SERIES`
    // alone: the files of the whole spool cannot be read at one instant
    // while it runs, so their sum is checked at the end).
    let mut largest = 0u64;
    let mut over = None;
    eventually(PATIENCE * 2, "churn past twice the spool's bound", || {
        let (series, _) = spool_sizes(&spool);
        largest = largest.max(series);
        if series > MAX_BYTES && over.is_none() {
            over = Some(series);
        }
        let served = http.requests_to(Endpoint::Metrics) * CHURN * MIN_ENTRY_BYTES;
        let done = over.is_some() || served > 2 * MAX_BYTES;
        async move { done.then_some(()) }
    })
    .await?;
    ensure!(
        over.is_none(),
        "SERIES passed max_bytes ({MAX_BYTES}): {over:?} bytes"
    );
    agent.stop().await?;
    let (series, total) = spool_sizes(&spool);
    ensure!(
        total <= MAX_BYTES,
        "after the run: SERIES {series}, spool {total}"
    );
    let rollovers = agent
        .log()
        .matches("spool epoch rolled over to compact the series dictionary")
        .count();
    ensure!(rollovers >= 2, "{rollovers} rollovers:\n{}", agent.log());
    let stats = agent.uplink_stats()?;
    ensure!(
        stats.epoch_rollovers == rollovers as u64,
        "stats {} vs log {rollovers}",
        stats.epoch_rollovers
    );

    // Exactly once across the epochs.
    let db = collector.db.clone();
    let stored = counters(&db, "edge-epoch")?;
    let sim: BTreeMap<_, _> = stored
        .into_iter()
        .filter(|(device, _)| device != "churner")
        .collect();
    let counter_readings = assert_exactly_once(&sim, DEVICES)?;
    let churn = cluster::stored_points(&db, "edge-epoch", "churner", "sim_churn_value")?;
    let twice: Vec<_> = churn.iter().filter(|(_, p)| p.len() != 1).collect();
    ensure!(
        twice.is_empty(),
        "churn series stored other than once: {:?}",
        twice.first().map(|(s, p)| (&s.key.labels, p.len()))
    );
    let ups = cluster::stored_points(&db, "edge-epoch", "churner", "up")?;
    let scrapes_ok = ups
        .iter()
        .flat_map(|(_, p)| p.iter())
        .map(|p| cluster::stored_int(&p.value))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|&up| up == 1)
        .count() as u64;
    ensure!(
        churn.len() as u64 == scrapes_ok * CHURN,
        "{} churn series stored for {scrapes_ok} good scrapes",
        churn.len()
    );
    let c = agent_counters(&db, "edge-epoch")?;
    ensure!(c.dropped_at_agent == 0, "dropped: {c:?}");
    let conn = rusqlite::Connection::open(&db)?;
    let epochs: i64 = conn
        .query_row(
            "SELECT count(*) FROM epochs WHERE agent = 'edge-epoch'",
            [],
            |r| r.get(0),
        )
        .context("epochs of the agent")?;
    // Each epoch rolled over delivered batches; the last one did if a
    // batch was sealed in it before the stop.
    ensure!(
        (rollovers..=rollovers + 1).contains(&(epochs as usize)),
        "{epochs} epochs stored for {rollovers} rollovers"
    );
    println!(
        "spool epoch: {rollovers} rollovers, largest SERIES seen {largest} B of {MAX_BYTES}; \
         {counter_readings} counter readings and {} churn series stored once",
        churn.len()
    );
    Ok(())
}
