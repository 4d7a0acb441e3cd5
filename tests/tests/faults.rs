//! The fault suite: real processes, real crashes (SIGKILL), a proxy that
//! cuts or blackholes the network, a stalled store, a full spool and a
//! corrupt one. Each case compares what the sim counters generated with what
//! the collector stored: 0 lost, 0 duplicated, 0 spurious; and each crash
//! case shows that the recovery path really ran (a resend, dedup or
//! welcome-confirmation counter above zero).
//!
//! Sleeps here only pace the faults (how long a partition lasts); every
//! check awaits a condition. The uplink is observed through its counters
//! (the agent's `--stats-file`, read by `Agent::uplink_stats`), not its log.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};

use tributary_tests::cluster::{
    Agent, Collector, PATIENCE, agent_counters, assert_exactly_once, check_run, counters, rss_kib,
    sim_agent_config, spooled_counters, values, wait_for_counters,
};
use tributary_tests::process::{TestDir, eventually, free_addr};
use tributary_tests::proxy::{Mode, Proxy};

/// Case 1: SIGKILL the collector every ~2 s for 30 s while 20 agents
/// stream, then let it drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_every_two_seconds() -> Result<()> {
    let dir = TestDir::new("fault-collector-kills")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let mut agents = Vec::new();
    for a in 0..20 {
        let id = format!("kill-{a}");
        let config = sim_agent_config(&id, &[collector.url()], 3, "20ms");
        agents.push(Agent::start(&dir, &id, &config, "")?);
    }
    for a in &agents {
        wait_for_counters(&collector.db, &a.id, 3, 5).await?;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut kills = 0;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(2)).await;
        collector.proc.kill().await?;
        kills += 1;
        collector = Collector::start(&dir, addr).await?;
    }
    // Drain: every agent stops once all it spooled is acked.
    for a in &mut agents {
        a.stop().await?;
    }
    let mut recovered = 0;
    let mut checked = 0;
    for a in &agents {
        let total = assert_exactly_once(&counters(&collector.db, &a.id)?, 3)?;
        checked += total;
        ensure!(total >= 3 * 100, "{}: only {total} readings", a.id);
        let c = agent_counters(&collector.db, &a.id)?;
        recovered += c.batches_resent + c.batches_deduplicated;
    }
    ensure!(kills >= 10, "only {kills} kills");
    ensure!(recovered > 0, "no batch was resent or deduplicated");
    println!(
        "case 1: {kills} collector SIGKILLs, 20 agents x 3 devices: {checked} counter values exactly once, {recovered} batches resent or deduplicated"
    );
    Ok(())
}

/// Case 2: SIGKILL an agent while the collector is down (its spool holds
/// unacked data), restart it with the same spool: everything appended
/// before the kill arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_with_a_full_spool_resends_it_once() -> Result<()> {
    let dir = TestDir::new("fault-agent-kill")?;
    let addr = free_addr()?;
    let url = format!("http://{addr}");
    let config = sim_agent_config("spooler", &[url], 4, "20ms");
    let mut agent = Agent::start(&dir, "spooler", &config, "")?;
    // Nothing listens yet: readings pile up in the spool.
    let scratch = dir.join("scratch");
    eventually(
        PATIENCE,
        "the spool holds 20 readings per device",
        || async {
            let _ = std::fs::remove_dir_all(&scratch);
            let s = spooled_counters(&agent.spool, &scratch).ok()?;
            (s.len() == 4 && s.values().all(|v| v.len() >= 20)).then_some(())
        },
    )
    .await?;
    agent.proc.kill().await?;
    let _ = std::fs::remove_dir_all(&scratch);
    let spooled = spooled_counters(&agent.spool, &scratch)?;
    for (device, v) in &spooled {
        check_run(device, v)?;
    }

    let collector = Collector::start(&dir, addr).await?;
    agent.restart()?;
    let want: BTreeMap<String, usize> = spooled
        .iter()
        .map(|(d, v)| (d.clone(), v.len() + 10))
        .collect();
    eventually(
        PATIENCE,
        "the spool is delivered and new readings follow",
        || async {
            let c = counters(&collector.db, "spooler").ok()?;
            want.iter()
                .all(|(d, n)| c.get(d).is_some_and(|v| v.len() >= *n))
                .then_some(())
        },
    )
    .await?;
    agent.stop().await?;

    // In device time: first exactly what the first run spooled, then the
    // second run's counter from 1.
    let stored = counters(&collector.db, "spooler")?;
    ensure!(stored.len() == 4);
    for (device, readings) in &stored {
        let v = values(readings);
        let first = &spooled[device];
        ensure!(v.len() > first.len(), "{device}: {} stored", v.len());
        ensure!(v[..first.len()] == first[..], "{device}: first run differs");
        check_run(device, &v[first.len()..])?;
    }
    let c = agent_counters(&collector.db, "spooler")?;
    ensure!(c.batches_resent > 0, "restart resent nothing: {c:?}");
    let spooled_total: usize = spooled.values().map(Vec::len).sum();
    println!(
        "case 2: agent SIGKILLed with {spooled_total} counter readings spooled: all delivered once after restart, {} batches resent",
        c.batches_resent
    );
    Ok(())
}

/// Case 3: the network between agent and collector goes silent for 20 s (no
/// reset); HTTP/2 keepalive notices, and after the heal everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_is_noticed_and_healed() -> Result<()> {
    let dir = TestDir::new("fault-partition")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let proxy = Proxy::start(collector.addr).await?;
    let config = sim_agent_config("parted", &[format!("http://{}", proxy.addr)], 5, "20ms");
    let mut agent = Agent::start(&dir, "parted", &config, "")?;
    wait_for_counters(&collector.db, "parted", 5, 20).await?;
    let ended_before = agent.uplink_stats()?.streams_ended;
    proxy.set(Mode::Blackhole);
    let cut = tokio::time::Instant::now();
    // Keepalive is 1 s + 2 s here; the partition lasts 20 s, so noticing it
    // while it lasts shows keepalive (not the heal) ended the stream.
    eventually(
        Duration::from_secs(15),
        "the agent notices the dead stream",
        || async {
            let ended = agent.uplink_stats().ok()?.streams_ended;
            (ended > ended_before).then_some(())
        },
    )
    .await?;
    let noticed = cut.elapsed();
    tokio::time::sleep_until(cut + Duration::from_secs(20)).await;
    let before = counters(&collector.db, "parted")?;
    let n = before.values().map(Vec::len).max().unwrap_or(0);
    proxy.set(Mode::Forward);
    wait_for_counters(&collector.db, "parted", 5, n + 50).await?;
    agent.stop().await?;
    assert_exactly_once(&counters(&collector.db, "parted")?, 5)?;
    let c = agent_counters(&collector.db, "parted")?;
    ensure!(
        c.batches_resent > 0,
        "nothing sent into the dead stream was resent: {c:?}"
    );
    println!(
        "case 3: 20 s silent partition noticed by keepalive after {noticed:?}; {} batches resent, {} readings exactly once",
        c.batches_resent, c.readings_stored
    );
    Ok(())
}

/// Case 4: the collector commits but its replies are lost; on its next
/// stream the agent resends what it never heard acked (the collector acks
/// the replays without storing them) and skips what the Welcome confirms as
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_acks_are_recovered_without_duplicates() -> Result<()> {
    let dir = TestDir::new("fault-lost-acks")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let proxy = Proxy::start(collector.addr).await?;
    let config = sim_agent_config("deaf", &[format!("http://{}", proxy.addr)], 5, "20ms");
    let mut agent = Agent::start(&dir, "deaf", &config, "")?;
    wait_for_counters(&collector.db, "deaf", 5, 20).await?;
    let before = counters(&collector.db, "deaf")?;
    let n = before.values().map(Vec::len).max().unwrap_or(0);
    proxy.set(Mode::DropReplies);
    // The collector keeps committing what arrives; the agent hears nothing
    // and its keepalive gives up on the stream.
    let before = agent.uplink_stats()?;
    wait_for_counters(&collector.db, "deaf", 5, n + 10).await?;
    eventually(
        PATIENCE,
        "the agent gives up on the deaf stream",
        || async {
            let ended = agent.uplink_stats().ok()?.streams_ended;
            (ended > before.streams_ended).then_some(())
        },
    )
    .await?;
    ensure!(proxy.dropped_reply_bytes() > 0);
    proxy.set(Mode::Forward);
    let confirmed = eventually(
        PATIENCE,
        "a welcome confirms the unacked batches",
        || async {
            let confirmed = agent.uplink_stats().ok()?.confirmed_by_welcome;
            confirmed
                .checked_sub(before.confirmed_by_welcome)
                .filter(|c| *c > 0)
        },
    )
    .await?;
    ensure!(confirmed > 0);
    let now = counters(&collector.db, "deaf")?;
    let n = now.values().map(Vec::len).max().unwrap_or(0);
    wait_for_counters(&collector.db, "deaf", 5, n + 10).await?;
    agent.stop().await?;
    assert_exactly_once(&counters(&collector.db, "deaf")?, 5)?;
    // What the agent never heard acked came back either as replays the
    // collector acked again without storing (`batches_deduplicated`), or
    // was skipped because the Welcome said it was committed; which one wins
    // is a race between the agent's first resend and the Welcome, so only
    // the outcome is asserted: every value exactly once, above. (The
    // dedup of replays itself is asserted in collector_protocol's
    // `replayed_batches_are_acked_and_not_stored_twice`.)
    let c = agent_counters(&collector.db, "deaf")?;
    println!(
        "case 4: {} reply bytes dropped after commit; {} replayed batches deduplicated, {confirmed} confirmed by a welcome",
        proxy.dropped_reply_bytes(),
        c.batches_deduplicated
    );
    Ok(())
}

/// Case 5: the store stalls (another connection holds SQLite's write lock
/// for 10 s): collector memory stays bounded, agents spool, and everything
/// arrives afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_bounds_memory_and_loses_nothing() -> Result<()> {
    let dir = TestDir::new("fault-stall")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let mut agents = Vec::new();
    for a in 0..4 {
        let id = format!("stall-{a}");
        let config = sim_agent_config(&id, &[collector.url()], 5, "10ms");
        agents.push(Agent::start(&dir, &id, &config, "")?);
    }
    for a in &agents {
        wait_for_counters(&collector.db, &a.id, 5, 10).await?;
    }
    let pid = collector.proc.id().unwrap_or(0);
    let (_, peak_before) = rss_kib(pid)?;
    let lock = rusqlite::Connection::open(&collector.db)?;
    lock.execute_batch("BEGIN EXCLUSIVE")?;
    let held = tokio::time::Instant::now();
    let stored_at_lock = counters(&collector.db, "stall-0")?;
    tokio::time::sleep_until(held + Duration::from_secs(10)).await;
    let (_, peak_during) = rss_kib(pid)?;
    lock.execute_batch("COMMIT")?;
    drop(lock);
    let n = stored_at_lock.values().map(Vec::len).max().unwrap_or(0);
    // 10 s at 10 ms is ~1,000 polls per device; they all arrive.
    wait_for_counters(&collector.db, "stall-0", 5, n + 1000).await?;
    for a in &mut agents {
        a.stop().await?;
    }
    for a in &agents {
        assert_exactly_once(&counters(&collector.db, &a.id)?, 5)?;
    }
    ensure!(
        collector.log().contains("commit failed"),
        "the stall never reached the merger"
    );
    // Bounded: the stall did not make the collector buffer the world.
    ensure!(
        peak_during < peak_before + 64 * 1024,
        "collector peak RSS grew from {peak_before} KiB to {peak_during} KiB during the stall"
    );
    println!(
        "case 5: store stalled 10 s; collector peak RSS {peak_before} KiB before, {peak_during} KiB during; 4 agents x 5 devices exactly once"
    );
    Ok(())
}

/// Case 6: a small spool and no collector: the spool drops the oldest
/// readings, and the dropped count equals generated − stored exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_overflow_counts_every_dropped_reading() -> Result<()> {
    let dir = TestDir::new("fault-overflow")?;
    let addr = free_addr()?;
    let url = format!("http://{addr}");
    let mut config = sim_agent_config("tight", &[url], 4, "10ms");
    config = config.replace("interval = \"10ms\"\n", "interval = \"10ms\"\nseries = 4\n");
    let mut agent = Agent::start(&dir, "tight", &config, "max_bytes = \"64KiB\"\n")?;
    eventually(PATIENCE, "the spool overflows", || async {
        (agent.uplink_stats().ok()?.dropped_readings > 0).then_some(())
    })
    .await?;
    let collector = Collector::start(&dir, addr).await?;
    wait_for_counters(&collector.db, "tight", 4, 10).await?;
    agent.stop().await?;
    ensure!(agent.log().contains("everything acked"), "{}", agent.log());

    let stored = counters(&collector.db, "tight")?;
    let conn = rusqlite::Connection::open(&collector.db)?;
    let mut generated = 0u64;
    for (device, readings) in &stored {
        let v = values(readings);
        ensure!(
            v.windows(2).all(|w| w[0] < w[1]),
            "{device}: duplicate or out of order"
        );
        // Every poll of a device yields one reading per series (the
        // counter, 4 gauges, and whatever else the driver adds), and the
        // newest batch is never dropped, so the last counter value stored
        // is the number of polls.
        let series: i64 = conn.query_row(
            "SELECT count(*) FROM series WHERE agent = 'tight' AND device = ?1",
            [device],
            |r| r.get(0),
        )?;
        generated += *v.last().unwrap_or(&0) as u64 * series as u64;
    }
    let c = agent_counters(&collector.db, "tight")?;
    ensure!(c.dropped_at_agent > 0, "nothing was dropped: {c:?}");
    ensure!(
        c.dropped_at_agent == generated - c.readings_stored,
        "dropped {} != generated {generated} - stored {}",
        c.dropped_at_agent,
        c.readings_stored
    );
    println!(
        "case 6: 64 KiB spool overflowed: generated {generated}, stored {}, dropped {} (exactly the difference)",
        c.readings_stored, c.dropped_at_agent
    );
    Ok(())
}

/// Case 7: a torn and corrupt spool tail: the agent starts, logs what it
/// cut, and delivers the rest exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_tail_is_cut_and_the_rest_delivered() -> Result<()> {
    let dir = TestDir::new("fault-corrupt")?;
    let addr = free_addr()?;
    let url = format!("http://{addr}");
    let config = sim_agent_config("torn", &[url], 3, "10ms");
    let mut agent = Agent::start(&dir, "torn", &config, "")?;
    let scratch = dir.join("scratch");
    eventually(
        PATIENCE,
        "the spool holds 50 readings per device",
        || async {
            let _ = std::fs::remove_dir_all(&scratch);
            let s = spooled_counters(&agent.spool, &scratch).ok()?;
            (s.len() == 3 && s.values().all(|v| v.len() >= 50)).then_some(())
        },
    )
    .await?;
    agent.proc.kill().await?;
    // Truncate the newest segment mid-record, and flip bytes half-way in.
    let mut segments: Vec<_> = std::fs::read_dir(&agent.spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let newest = segments
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no segment"))?;
    let mut data = std::fs::read(&newest)?;
    let len = data.len();
    data.truncate(len - 7);
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&newest, &data)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let expected = spooled_counters(&agent.spool, &scratch)?;
    ensure!(
        expected.values().all(|v| !v.is_empty()),
        "corruption cut everything"
    );

    let collector = Collector::start(&dir, addr).await?;
    agent.restart()?;
    eventually(PATIENCE, "the rest of the spool is delivered", || async {
        let c = counters(&collector.db, "torn").ok()?;
        expected
            .iter()
            .all(|(d, v)| c.get(d).is_some_and(|s| s.len() >= v.len() + 10))
            .then_some(())
    })
    .await?;
    agent.stop().await?;
    ensure!(
        agent.log().contains("cut it off"),
        "no cut logged:\n{}",
        agent.log()
    );
    let stored = counters(&collector.db, "torn")?;
    let kept: usize = expected.values().map(Vec::len).sum();
    println!(
        "case 7: spool truncated mid-record and 4 bytes flipped: {kept} counter readings kept and delivered once"
    );
    for (device, readings) in &stored {
        let v = values(readings);
        let first = &expected[device];
        ensure!(
            v[..first.len()] == first[..],
            "{device}: delivered spool differs"
        );
        check_run(device, first)?;
        check_run(device, &v[first.len()..])?;
    }
    Ok(())
}

/// Case 8: SIGTERM under load on both sides: clean exits within the
/// deadline, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing() -> Result<()> {
    let dir = TestDir::new("fault-sigterm")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let mut agents = Vec::new();
    for a in 0..5 {
        let id = format!("term-{a}");
        let config = sim_agent_config(&id, &[collector.url()], 5, "10ms");
        agents.push(Agent::start(&dir, &id, &config, "")?);
    }
    for a in &agents {
        wait_for_counters(&collector.db, &a.id, 5, 20).await?;
    }
    let status = collector.proc.terminate(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "collector exited with {status}:\n{}",
        collector.log()
    );
    ensure!(collector.log().contains("collector stopped"));
    collector = Collector::start(&dir, addr).await?;
    for a in &agents {
        let n = counters(&collector.db, &a.id)?
            .values()
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        wait_for_counters(&collector.db, &a.id, 5, n + 20).await?;
    }
    for a in &mut agents {
        a.stop().await?;
        ensure!(a.log().contains("everything acked"), "{}", a.log());
    }
    for a in &agents {
        assert_exactly_once(&counters(&collector.db, &a.id)?, 5)?;
    }
    let status = collector.proc.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "collector exited with {status}");
    println!(
        "case 8: SIGTERM to the collector and 5 agents under load: all exited 0, every value exactly once"
    );
    Ok(())
}

/// Case 9 (issue 18): an outage, then a drain through a thin uplink during
/// which the collector is SIGKILLed twice. The backlog takes seconds on the
/// wire (the proxy passes 12,000 bytes/s toward the collector, about twice
/// the live rate), so each kill lands while the agent still waits for acks
/// of batches sealed before the collector came back (checked, not assumed):
/// 0 lost, 0 duplicated, and the crashes really cost resends or dedup. The
/// keepalive timeout is 30 s: its pings queue behind the backlog's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_two_collector_kills() -> Result<()> {
    const DEVICES: usize = 4;
    let dir = TestDir::new("fault-drain-kills")?;
    let addr = free_addr()?;
    let proxy = Proxy::start(addr).await?;
    let config = sim_agent_config(
        "drainer",
        &[format!("http://{}", proxy.addr)],
        DEVICES,
        "20ms",
    );
    let mut agent = Agent::start_keepalive(&dir, "drainer", &config, "", "30s")?;
    // The outage: nothing listens; readings pile up in the spool.
    let scratch = dir.join("scratch");
    eventually(
        PATIENCE,
        "the spool holds 500 readings per device",
        || async {
            let _ = std::fs::remove_dir_all(&scratch);
            let s = spooled_counters(&agent.spool, &scratch).ok()?;
            (s.len() == DEVICES && s.values().all(|v| v.len() >= 500)).then_some(())
        },
    )
    .await?;
    proxy.set(Mode::Throttle(12_000));
    let mut collector = Collector::start(&dir, addr).await?;
    // Sealed before the collector came back: the backlog. The drain is
    // over once the agent's committed mark (acked_seq, all acked below it)
    // reaches it.
    let backlog_end = agent.uplink_stats()?.sealed_batches;
    let mut acked_at_kills = Vec::new();
    for kill in 1..=2 {
        let before: usize = counters(&collector.db, "drainer")
            .map(|c| c.values().map(Vec::len).sum())
            .unwrap_or(0);
        eventually(
            PATIENCE,
            &format!("the drain makes progress before kill {kill}"),
            || async {
                let now: usize = counters(&collector.db, "drainer")
                    .ok()?
                    .values()
                    .map(Vec::len)
                    .sum();
                (now > before).then_some(())
            },
        )
        .await?;
        let acked = agent.uplink_stats()?.acked_seq;
        ensure!(
            acked < backlog_end,
            "kill {kill}: the backlog (through batch {backlog_end}) was already acked ({acked}): the drain was too quick to be interrupted"
        );
        acked_at_kills.push(acked);
        collector.proc.kill().await?;
        collector = Collector::start(&dir, addr).await?;
    }
    proxy.set(Mode::Forward);
    eventually(PATIENCE, "the backlog is acked", || async {
        (agent.uplink_stats().ok()?.acked_seq >= backlog_end).then_some(())
    })
    .await?;
    agent.stop().await?;
    let total = assert_exactly_once(&counters(&collector.db, "drainer")?, DEVICES)?;
    ensure!(
        total >= (DEVICES * 500) as u64,
        "only {total} readings stored"
    );
    let c = agent_counters(&collector.db, "drainer")?;
    let recovered = c.batches_resent + c.batches_deduplicated;
    ensure!(
        recovered > 0,
        "two kills mid-drain, yet no batch was resent or deduplicated: {c:?}"
    );
    println!(
        "case 9: outage of 500+ polls per device, drain through 12,000 B/s with 2 collector SIGKILLs (acked through batch {acked_at_kills:?} of the backlog's {backlog_end} at the kills): {total} counter values exactly once, {recovered} batches resent or deduplicated"
    );
    Ok(())
}
