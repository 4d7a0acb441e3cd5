//! `tributary-agent run --watch` against a real collector: the agent
//! reloads when a file of its config changes, with no signal. A row added
//! to an inventory CSV becomes a device whose readings reach the store; a
//! new file an include pattern matches is read, and an inventory that only
//! this new file names is watched from then on (the watched set is
//! resolved again after each reload). The agent's own log and stats file,
//! written beside the config all along, cause no reload.

use std::path::Path;

use anyhow::{Result, ensure};
use tributary_tests::cluster::{Collector, PATIENCE, agent_sections, check_run, counters, values};
use tributary_tests::process::{Proc, TestDir, eventually, free_addr};

const ID: &str = "watch";

/// Waits until each of `devices` has at least `n` counter readings stored.
async fn wait_for(db: &Path, devices: &[&str], n: usize) -> Result<()> {
    eventually(
        PATIENCE,
        &format!("{devices:?} reach the collector"),
        || async {
            let stored = counters(db, ID).ok()?;
            devices
                .iter()
                .all(|d| stored.get(*d).is_some_and(|v| v.len() >= n))
                .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_inventory_row_becomes_a_device() -> Result<()> {
    let dir = TestDir::new("agent-watch")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    std::fs::create_dir_all(dir.join("conf.d"))?;
    std::fs::write(
        dir.join("conf.d/10-template.toml"),
        "[templates.counter]\ndriver = \"sim\"\ninterval = \"100ms\"\n",
    )?;
    std::fs::write(dir.join("devices.csv"), "name\nw-a\nw-b\n")?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"{ID}\"\ncollectors = [\"{}\"]\ninclude = [\"conf.d/*.toml\"]\n\n\
             [[inventories]]\nfile = \"devices.csv\"\ntemplate = \"counter\"\n{}",
            collector.url(),
            agent_sections(&dir.join("spool"), "")
        ),
    )?;
    let log = dir.join("agent.log");
    let mut agent = Proc::builder("tributary-agent")?
        .arg("run")
        .args(["--metrics-listen", "off", "--watch"])
        .arg("--config")
        .arg(&config)
        // Rewritten every 100 ms beside the config: must not count.
        .arg("--stats-file")
        .arg(dir.join("agent.stats.prom"))
        .log_to(&log)
        .spawn()?;
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let reloads = || {
        agent_log()
            .lines()
            .filter(|l| l.contains("config reloaded"))
            .count()
    };
    wait_for(&collector.db, &["w-a", "w-b"], 3).await?;
    ensure!(reloads() == 0, "reloads with no change:\n{}", agent_log());

    // 1. A row added to the inventory.
    std::fs::write(dir.join("devices.csv"), "name\nw-a\nw-b\nw-c\n")?;
    wait_for(&collector.db, &["w-c"], 3).await?;
    ensure!(
        agent_log().contains("added=1 removed=0 changed=0 unchanged=2"),
        "{}",
        agent_log()
    );

    // 2. A new included file, whose inventory is a file not read before.
    std::fs::write(dir.join("more.csv"), "name\nw-d\n")?;
    std::fs::write(
        dir.join("conf.d/20-more.toml"),
        "[[inventories]]\nfile = \"../more.csv\"\ntemplate = \"counter\"\n",
    )?;
    wait_for(&collector.db, &["w-d"], 3).await?;

    // 3. That inventory is watched now.
    std::fs::write(dir.join("more.csv"), "name\nw-d\nw-e\n")?;
    wait_for(&collector.db, &["w-e"], 3).await?;
    let done = reloads();
    // Each edit made one reload (or fewer, merged); the log and the stats
    // file made none.
    ensure!(
        (2..=3).contains(&done),
        "{done} reloads for 3 edits:\n{}",
        agent_log()
    );

    let status = agent.terminate(PATIENCE).await?;
    ensure!(status.success(), "agent exited {status}:\n{}", agent_log());
    // The untouched devices ran on without a restart, the added from 1.
    let stored = counters(&collector.db, ID)?;
    for d in ["w-a", "w-b", "w-c", "w-d", "w-e"] {
        let v = stored.get(d).map(|s| values(s)).unwrap_or_default();
        check_run(d, &v)?;
    }
    ensure!(stored.len() == 5, "{:?}", stored.keys());
    Ok(())
}
