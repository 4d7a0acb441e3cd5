//! Live first after an outage, with the real binaries (issue 18): the
//! collector is down while the agent spools, then comes back behind a thin
//! link (the test proxy's throttle), and readings sealed after the
//! reconnect must be stored while older backlog readings are still
//! missing, then everything exactly once.
//!
//! Ground truth is the sim device's counter, which rises by one per poll
//! and is stamped with the poll's wall-clock time: a stored counter value
//! stamped after the reconnect, with some smaller value not stored yet, is
//! a live reading that overtook the backlog. With batches in sequence
//! order (an agent or collector without out-of-order delivery) that can
//! never be seen, and the test fails as soon as the backlog has drained.

use std::time::Duration;

use anyhow::{Result, bail, ensure};

use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, assert_exactly_once, counters, sim_agent_config, wait_for_counters,
};
use tributary_tests::process::{TestDir, free_addr};
use tributary_tests::proxy::{Mode, Proxy};

/// The thin link after the outage, agent to collector. The agent spools
/// about 40 KB/s (a counter and 200 gauges every 50 ms), a sixth of it:
/// below the fifth `backlog_share = 0.8` leaves to live batches.
const LINK_BYTES_PER_SEC: u64 = 250_000;
/// How long the collector is down.
const OUTAGE: Duration = Duration::from_secs(20);

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_live_readings_are_stored_before_the_backlog_has_drained() -> Result<()> {
    let dir = TestDir::new("live-first")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let proxy = Proxy::start(addr).await?;
    let id = "live-1";
    let mut config = sim_agent_config(id, &[format!("http://{}", proxy.addr)], 1, "50ms");
    config.push_str("series = 200\n");
    let mut agent = Agent::start(&dir, id, &config, "")?;
    wait_for_counters(&collector.db, id, 1, 5).await?;

    // The outage: the agent spools the backlog.
    collector.proc.kill().await?;
    tokio::time::sleep(OUTAGE).await;
    proxy.set(Mode::Throttle(LINK_BYTES_PER_SEC));
    let reconnect_ns = now_ns();
    collector = Collector::start(&dir, addr).await?;

    // Watch the store until a reading stamped after the reconnect is there
    // while an older one is missing; the backlog draining first fails.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (live, missing) = loop {
        if tokio::time::Instant::now() >= deadline {
            bail!("no reading stamped after the reconnect was stored within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(stored) = counters(&collector.db, id) else {
            continue;
        };
        let Some(readings) = stored.values().next() else {
            continue;
        };
        let Some(live) = readings
            .iter()
            .filter(|s| s.ts_ns > reconnect_ns)
            .map(|s| s.value)
            .min()
        else {
            continue;
        };
        let older = readings.iter().filter(|s| s.value < live).count() as i64;
        let missing = live - 1 - older;
        ensure!(
            missing > 0,
            "the backlog drained before any reading sealed after the reconnect was stored \
             (the first, counter value {live}, came after all {older} older ones)"
        );
        break (live, missing);
    };
    eprintln!(
        "counter value {live}, stamped after the reconnect, stored while {missing} older ones were still in the backlog"
    );

    // Then everything, exactly once.
    agent.stop().await?;
    let stats = agent.uplink_stats()?;
    ensure!(
        stats.live_batches_sent > 0 && stats.backlog_batches_sent > 0,
        "{stats:?}"
    );
    let total = assert_exactly_once(&counters(&collector.db, id)?, 1)?;
    ensure!(total as i64 > live, "{total} readings, live {live}");
    eprintln!("{total} counter readings exactly once; {stats:?}");
    Ok(())
}
