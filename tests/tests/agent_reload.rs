//! Reloading an agent's config without a restart (SIGHUP), under load,
//! against a real collector: 2,000 sim devices polled every 100 ms; the new
//! config removes 100, adds 100 and changes 100. Ground truth from the
//! store: the 1,800 untouched devices' counters run 1, 2, 3, ... with no
//! gap and no repeat across the reload (so they missed no poll and were
//! not restarted); the added ones start from 1; the removed ones stop; the
//! changed ones run their old counter to its end and then a new one from 1;
//! every counter value is stored exactly once. A reload of an invalid file
//! changes nothing and is logged with its file and line.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, Stored, agent_sections, check_run, counters, values,
    wait_for_counters,
};
use tributary_tests::process::{TestDir, eventually, free_addr};

const ID: &str = "reload";
const DEVICES: usize = 2_000;
const CHANGED: std::ops::Range<usize> = 0..100;
const REMOVED: std::ops::Range<usize> = 100..200;

fn name(i: usize) -> String {
    format!("{ID}-counter-{i}")
}

/// The devices `names`, sim devices polled every 100 ms; `changed` get one
/// gauge more (a changed device table).
fn config(collector: &str, names: &[(String, bool)]) -> String {
    let mut s = format!("id = \"{ID}\"\ncollectors = [\"{collector}\"]\n");
    for (name, changed) in names {
        s.push_str(&format!(
            "\n[[devices]]\nname = \"{name}\"\ndriver = \"sim\"\ninterval = \"100ms\"\n"
        ));
        if *changed {
            s.push_str("series = 1\n");
        }
    }
    s
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_touches_only_what_changed() -> Result<()> {
    let dir = TestDir::new("agent-reload")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let before: Vec<(String, bool)> = (0..DEVICES).map(|i| (name(i), false)).collect();
    let mut agent = Agent::start(&dir, ID, &config(&collector.url(), &before), "")?;
    wait_for_counters(&collector.db, ID, DEVICES, 3).await?;

    // The new config: 100 removed, 100 changed, 100 added.
    let after: Vec<(String, bool)> = (0..DEVICES)
        .filter(|i| !REMOVED.contains(i))
        .map(|i| (name(i), CHANGED.contains(&i)))
        .chain((DEVICES..DEVICES + 100).map(|i| (name(i), false)))
        .collect();
    let path = dir.join(format!("{ID}.toml"));
    let sections = agent_sections(&agent.spool, "");
    std::fs::write(
        &path,
        format!("{}{sections}", config(&collector.url(), &after)),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the agent reloads", || async {
        agent.log().contains("config reloaded").then_some(())
    })
    .await?;
    let reloaded_ns = now_ns();
    ensure!(
        agent
            .log()
            .contains("added=100 removed=100 changed=100 unchanged=1800"),
        "the reload's counts:\n{}",
        agent.log()
    );

    // An invalid file changes nothing, and says where it is wrong.
    std::fs::write(
        &path,
        format!(
            "{}\n[[devices]]\nname = \"bad\"\ndriver = \"sim\"\ninterval = \"5x\"\n{sections}",
            config(&collector.url(), &after)
        ),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the agent refuses the invalid config", || async {
        agent.log().contains("config reload refused").then_some(())
    })
    .await?;
    let log = agent.log();
    let line = 1 + format!(
        "{}{}",
        config(&collector.url(), &after),
        "\n[[devices]]\nname = \"bad\"\ndriver = \"sim\"\n"
    )
    .lines()
    .count();
    ensure!(
        log.contains(&format!(
            "{}:{line}: devices[{}].interval",
            path.display(),
            after.len()
        )),
        "the refusal names the file and line {line}:\n{log}"
    );

    // Everyone in the new config polls on.
    let seen_at_reload = counters(&collector.db, ID)?;
    eventually(
        PATIENCE,
        "every device of the new config polls 5 more times",
        || async {
            let now = counters(&collector.db, ID).ok()?;
            after
                .iter()
                .all(|(n, _)| {
                    let was = seen_at_reload.get(n).map_or(0, Vec::len);
                    now.get(n).is_some_and(|v| v.len() >= was + 5)
                })
                .then_some(())
        },
    )
    .await?;
    agent.stop().await?;
    let stored = counters(&collector.db, ID)?;

    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..DEVICES + 100 {
        let device = name(i);
        let got: &[Stored] = stored.get(&device).map_or(&[], Vec::as_slice);
        let v = values(got);
        if CHANGED.contains(&i) {
            // The old run, then the new one from 1: each exactly once.
            let restart = v.iter().skip(1).position(|&n| n == 1).map(|p| p + 1);
            ensure!(restart.is_some(), "{device} did not restart: {v:?}");
            let (old, new) = v.split_at(restart.unwrap_or(0));
            check_run(&device, old)?;
            check_run(&device, new)?;
            *runs.entry("changed").or_default() += 1;
        } else if REMOVED.contains(&i) {
            check_run(&device, &v)?;
            // At most its poll in flight was stamped after the reload (+ one timeout).
            let late = got
                .iter()
                .filter(|s| s.ts_ns > reloaded_ns + 1_000_000_000)
                .count();
            ensure!(
                late == 0,
                "{device}: {late} readings long after its removal"
            );
            *runs.entry("removed").or_default() += 1;
        } else {
            // Untouched or added (from 1).
            check_run(&device, &v)?;
            ensure!(v.len() >= 5, "{device}: {} readings", v.len());
            *runs
                .entry(if i >= DEVICES { "added" } else { "untouched" })
                .or_default() += 1;
        }
    }
    ensure!(
        runs == BTreeMap::from([
            ("added", 100),
            ("changed", 100),
            ("removed", 100),
            ("untouched", 1_800)
        ]),
        "{runs:?}"
    );
    Ok(())
}

/// A reload that blocks reading the new config (a secret file that is a
/// FIFO nobody writes) does not hold up SIGTERM: the agent stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_blocked_reload_stops_the_agent() -> Result<()> {
    const ID: &str = "reload-fifo";
    let dir = TestDir::new("agent-reload-fifo")?;
    let collector = format!("http://{}", free_addr()?);
    let base = format!(
        "id = \"{ID}\"\ncollectors = [\"{collector}\"]\n\n[[devices]]\nname = \"sim\"\ndriver = \"sim\"\ninterval = \"100ms\"\n"
    );
    let mut agent = Agent::start(&dir, ID, &base, "")?;
    eventually(PATIENCE, "the agent starts", || async {
        agent.log().contains("agent started").then_some(())
    })
    .await?;
    let fifo = dir.join("token.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo {}", fifo.display());
    let path = dir.join(format!("{ID}.toml"));
    std::fs::write(
        &path,
        format!(
            "{base}\n[[devices]]\nname = \"web\"\ndriver = \"http\"\nurl = \"http://127.0.0.1:1/\"\nformat = \"prometheus\"\nbearer_token_file = \"{}\"\n{}",
            fifo.display(),
            agent_sections(&agent.spool, "")
        ),
    )?;
    agent.proc.signal("HUP").await?;
    // The reload is now blocked opening the FIFO (nothing to wait for in
    // the log: it says nothing until it ends). A stop must still work.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    agent.stop().await?;
    ensure!(
        agent.log().contains("agent stopped"),
        "the agent's log:\n{}",
        agent.log()
    );
    Ok(())
}

/// A reload that changes only devices warns of no pending setting: the
/// `--metrics-listen off` the agent runs with overrides the file's default
/// `[metrics] listen` at the reload too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listen_flag_is_no_pending_change_at_reload() -> Result<()> {
    const ID: &str = "reload-flag";
    let dir = TestDir::new("agent-reload-flag")?;
    let collector = format!("http://{}", free_addr()?);
    let device = |n: &str| {
        format!("\n[[devices]]\nname = \"{n}\"\ndriver = \"sim\"\ninterval = \"100ms\"\n")
    };
    let base = format!(
        "id = \"{ID}\"\ncollectors = [\"{collector}\"]\n{}",
        device("a")
    );
    let mut agent = Agent::start(&dir, ID, &base, "")?;
    eventually(PATIENCE, "the agent starts", || async {
        agent.log().contains("agent started").then_some(())
    })
    .await?;
    std::fs::write(
        dir.join(format!("{ID}.toml")),
        format!("{base}{}{}", device("b"), agent_sections(&agent.spool, "")),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the agent reloads", || async {
        agent.log().contains("config reloaded").then_some(())
    })
    .await?;
    let log = agent.log();
    ensure!(
        log.contains("added=1 removed=0 changed=0 unchanged=1"),
        "{log}"
    );
    ensure!(
        !log.contains("apply only at the next restart"),
        "a false pending change:\n{log}"
    );
    agent.stop().await?;
    Ok(())
}

/// A reload with a new `collectors` list keeps the stream it has (the
/// first collector keeps storing), and the next connect goes to the new
/// list: once the first collector is killed, the agent streams to the
/// second. Between them the two stores hold every counter value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_collector_list_applies_at_the_next_reconnect() -> Result<()> {
    const ID: &str = "reload-collectors";
    let dir = TestDir::new("agent-reload-collectors")?;
    let dir_b = TestDir::new("agent-reload-collectors-b")?;
    let mut first = Collector::start(&dir, free_addr()?).await?;
    let second = Collector::start(&dir_b, free_addr()?).await?;
    let device = "\n[[devices]]\nname = \"c\"\ndriver = \"sim\"\ninterval = \"100ms\"\n";
    let mut agent = Agent::start(
        &dir,
        ID,
        &format!(
            "id = \"{ID}\"\ncollectors = [\"{}\"]\n{device}",
            first.url()
        ),
        "",
    )?;
    wait_for_counters(&first.db, ID, 1, 3).await?;
    std::fs::write(
        dir.join(format!("{ID}.toml")),
        format!(
            "id = \"{ID}\"\ncollectors = [\"{}\"]\n{device}{}",
            second.url(),
            agent_sections(&agent.spool, "")
        ),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the agent reloads", || async {
        agent.log().contains("config reloaded").then_some(())
    })
    .await?;
    ensure!(
        agent.log().contains("new collector list"),
        "{}",
        agent.log()
    );
    // The stream to the first collector goes on.
    let at_reload = counters(&first.db, ID)?.get("c").map_or(0, Vec::len);
    eventually(PATIENCE, "the first collector keeps storing", || async {
        let now = counters(&first.db, ID).ok()?.get("c").map_or(0, Vec::len);
        (now >= at_reload + 5).then_some(())
    })
    .await?;
    ensure!(
        counters(&second.db, ID)?.is_empty(),
        "the second collector got readings before any reconnect"
    );
    // Killed, the first is not tried again: the next connect is to the second.
    first.proc.kill().await?;
    wait_for_counters(&second.db, ID, 1, 5).await?;
    agent.stop().await?;

    // Every value is in one store or the other (a batch committed by the
    // first collector but not acked before it died is resent to the
    // second, so a value may be in both).
    let mut all: Vec<i64> = [&first.db, &second.db]
        .iter()
        .map(|db| counters(db, ID))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flat_map(|c| c.get("c").map(|s| values(s)).unwrap_or_default())
        .collect();
    all.sort_unstable();
    all.dedup();
    check_run("c", &all)?;
    Ok(())
}

/// A reload that changes the agent's `id` or its `[spool] dir` is refused
/// with a message that a restart is needed; the agent polls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_id_or_spool_dir_needs_a_restart() -> Result<()> {
    const ID: &str = "reload-identity";
    let dir = TestDir::new("agent-reload-identity")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let device = "\n[[devices]]\nname = \"c\"\ndriver = \"sim\"\ninterval = \"100ms\"\n";
    let head = |id: &str| {
        format!(
            "id = \"{id}\"\ncollectors = [\"{}\"]\n{device}",
            collector.url()
        )
    };
    let mut agent = Agent::start(&dir, ID, &head(ID), "")?;
    wait_for_counters(&collector.db, ID, 1, 3).await?;
    let path = dir.join(format!("{ID}.toml"));
    let refusals = |log: &str| log.matches("config reload refused").count();

    std::fs::write(
        &path,
        format!("{}{}", head("another-id"), agent_sections(&agent.spool, "")),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the new id is refused", || async {
        (refusals(&agent.log()) == 1).then_some(())
    })
    .await?;
    ensure!(
        agent.log().contains(
            "id changed from \\\"reload-identity\\\" to \\\"another-id\\\": a restart is needed"
        ) || agent
            .log()
            .contains("id changed from \"reload-identity\" to \"another-id\": a restart is needed"),
        "{}",
        agent.log()
    );

    std::fs::write(
        &path,
        format!(
            "{}{}",
            head(ID),
            agent_sections(&dir.join("another-spool"), "")
        ),
    )?;
    agent.proc.signal("HUP").await?;
    eventually(PATIENCE, "the new spool dir is refused", || async {
        (refusals(&agent.log()) == 2).then_some(())
    })
    .await?;
    let log = agent.log();
    ensure!(
        log.contains("[spool] dir changed from") && log.contains("a restart is needed to apply it"),
        "{log}"
    );
    ensure!(!log.contains("config reloaded"), "{log}");
    // Still the same agent, polling on.
    let before = counters(&collector.db, ID)?.get("c").map_or(0, Vec::len);
    eventually(PATIENCE, "the device polls on", || async {
        let now = counters(&collector.db, ID)
            .ok()?
            .get("c")
            .map_or(0, Vec::len);
        (now >= before + 5).then_some(())
    })
    .await?;
    agent.stop().await?;
    check_run("c", &values(&counters(&collector.db, ID)?["c"]))?;
    Ok(())
}
