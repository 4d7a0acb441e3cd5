//! A flood of SNMPv2c traps against a whole agent and collector: 10,000
//! traps a second for 10 seconds from ten sender addresses (127.0.0.2 to
//! 127.0.0.11, written here with plain UDP sockets: net-snmp's `snmptrap`
//! forks a process per trap). The receiver is held to its bounds, so the
//! agent's memory stays bounded, and every datagram is accounted for
//! exactly: stored, dropped by cause (`rate`, `queue`), rejected (every
//! 100th trap carries a wrong community), or dropped by the kernel before
//! the agent read it (the socket's `drops` in /proc/net/udp, reported).
//! Every stored trap is stored once (each carries its own number).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use tributary_collector::model::StoredValue;
use tributary_tests::cluster::{self, Agent, Collector};
use tributary_tests::process::{TestDir, eventually, free_addr};

const SENDERS: u32 = 10;
const RATE: u32 = 10_000;
const SECONDS: u32 = 10;
/// The receiver's bounds in this test: below the offered load, so both
/// kinds of drop happen.
const MAX_RATE_PER_SENDER: u32 = 800;
const MAX_PENDING: usize = 500;
const MAX_PENDING_BYTES: u64 = 4 << 20;
/// Growth of the agent's RSS allowed: the queue's bytes several times over
/// (a decoded notification takes a few times its datagram) plus room for
/// the spool's and the uplink's buffers and the allocator's slack. A
/// receiver that queued without bound would hold the whole flood (100,000
/// decoded traps, hundreds of MiB).
const RSS_GROWTH_BOUND: u64 = 8 * MAX_PENDING_BYTES + (48 << 20);

/// One v2c linkDown trap whose `ifIndex.1` varbind is `n`.
fn trap(community: &[u8], n: u32, buf: &mut Vec<u8>) {
    fn tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
    }
    fn varbind(oid: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let mut vb = Vec::new();
        tlv(0x06, oid, &mut vb);
        vb.extend_from_slice(value);
        tlv(0x30, &vb, out);
    }
    let mut list = Vec::new();
    // sysUpTime.0 = 1, snmpTrapOID.0 = linkDown, ifIndex.1 = n.
    varbind(&[0x2b, 6, 1, 2, 1, 1, 3, 0], &[0x43, 1, 1], &mut list);
    let mut link_down = Vec::new();
    tlv(0x06, &[0x2b, 6, 1, 6, 3, 1, 1, 5, 3], &mut link_down);
    varbind(&[0x2b, 6, 1, 6, 3, 1, 1, 4, 1, 0], &link_down, &mut list);
    // INTEGER content must be minimal and positive: a leading 0 keeps the
    // sign, so 5 bytes (0, then n's 4) are always valid.
    let value = [&[0x02, 5, 0][..], &n.to_be_bytes()].concat();
    varbind(&[0x2b, 6, 1, 2, 1, 2, 2, 1, 1, 1], &value, &mut list);
    let mut varbinds = Vec::new();
    tlv(0x30, &list, &mut varbinds);
    let mut pdu = vec![0x02, 1, 1, 0x02, 1, 0, 0x02, 1, 0];
    pdu.extend_from_slice(&varbinds);
    let mut body = vec![0x02, 1, 1];
    tlv(0x04, community, &mut body);
    tlv(0xa7, &pdu, &mut body);
    buf.clear();
    tlv(0x30, &body, buf);
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// The kernel's drop count of the UDP socket bound to `port` (the last
/// column of /proc/net/udp).
fn kernel_drops(port: u16) -> Result<u64> {
    let table = std::fs::read_to_string("/proc/net/udp")?;
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&local))
        })
        .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .context("the receiver's socket is not in /proc/net/udp")
}

/// The last stored value of each `cause` of `metric` on the receiver.
fn last_counts(db: &std::path::Path, id: &str, metric: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (series, points) in cluster::stored_points(db, id, "traps", metric).unwrap_or_default() {
        let last = points
            .iter()
            .max_by_key(|p| p.ts_ns)
            .and_then(|p| match p.value {
                StoredValue::I64(v) => Some(v),
                _ => None,
            });
        if let (Some(cause), Some(v)) = (series.key.labels.get("cause"), last) {
            out.insert(cause.clone(), v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_bounded_and_every_trap_accounted_for() -> Result<()> {
    let dir = TestDir::new("snmp-trap-flood")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let id = "trap-flood";
    let config = format!(
        "id = \"{id}\"\ncollectors = [\"{}\"]\n\n[[devices]]\nname = \"traps\"\n\
         driver = \"snmp_trap\"\ninterval = \"1s\"\nlisten = \"127.0.0.1:{port}\"\n\
         community = \"public\"\nmibs = []\nmax_rate_per_sender = {MAX_RATE_PER_SENDER}\n\
         max_pending = {MAX_PENDING}\nmax_pending_bytes = \"{MAX_PENDING_BYTES}B\"\n",
        collector.url()
    );
    let mut agent = Agent::start(&dir, id, &config, "")?;
    let pid = agent.proc.id().context("agent pid")?;
    // Bound once the first poll's counts are stored.
    let db = collector.db.clone();
    eventually(cluster::PATIENCE, "the receiver is listening", || async {
        (!last_counts(&db, id, "snmp_trap_dropped_total").is_empty()).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    let drops_before = kernel_drops(port)?;
    let rss_before = rss(pid)?;

    let target = format!("127.0.0.1:{port}");
    let sockets = (0..SENDERS)
        .map(|i| std::net::UdpSocket::bind(format!("127.0.0.{}:0", i + 2)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let total = RATE * SECONDS;
    let mut buf = Vec::with_capacity(128);
    let mut wrong = 0u64;
    let started = Instant::now();
    // Paced in bursts of a millisecond's worth: 10 traps, one per sender.
    for n in 0..total {
        let sender = n % SENDERS;
        let community: &[u8] = if n % 100 == 99 {
            wrong += 1;
            b"wrong"
        } else {
            b"public"
        };
        trap(community, n, &mut buf);
        sockets[sender as usize].send_to(&buf, &target)?;
        if sender == SENDERS - 1 {
            let due = Duration::from_micros(
                u64::from(n / SENDERS + 1) * 1_000_000 / u64::from(RATE / SENDERS),
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let sent_for = started.elapsed();
    let rss_after = rss(pid)?;

    // Every datagram: stored, dropped by cause, rejected, or dropped by
    // the kernel; once the counters the agent stores add up.
    let kernel = kernel_drops(port)? - drops_before;
    let stored_numbers = || -> Vec<i64> {
        cluster::stored_points(&db, id, "", "1.3.6.1.2.1.2.2.1.1.1")
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, p)| p)
            .filter_map(|p| match p.value {
                StoredValue::I64(v) => Some(v),
                _ => None,
            })
            .collect()
    };
    let accounted = || {
        let dropped = last_counts(&db, id, "snmp_trap_dropped_total");
        let rejected = last_counts(&db, id, "snmp_trap_rejected_total");
        let stored = stored_numbers().len() as u64;
        let d = |c: &str| dropped.get(c).copied().unwrap_or(0) as u64;
        let rejected_total: u64 = rejected.values().map(|v| *v as u64).sum();
        (stored, d("rate"), d("queue"), rejected_total, rejected)
    };
    let settled = eventually(cluster::PATIENCE, "every trap is accounted for", || async {
        let (stored, rate, queue, rejected, _) = accounted();
        (stored + rate + queue + rejected + kernel == u64::from(total)).then_some(())
    })
    .await;
    let (stored, rate, queue, rejected, by_cause) = accounted();
    eprintln!(
        "sent {total} in {sent_for:?}: stored {stored}, dropped rate {rate}, queue {queue}, \
         rejected {rejected} {by_cause:?}, kernel drops {kernel}; rss {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    settled.map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    // Every stored one once.
    let numbers = stored_numbers();
    let distinct: HashSet<i64> = numbers.iter().copied().collect();
    ensure!(distinct.len() == numbers.len(), "a trap stored twice");
    ensure!(
        numbers
            .iter()
            .all(|n| *n >= 0 && *n < i64::from(total) && n % 100 != 99),
        "a stored number never sent, or one with the wrong community"
    );
    // Both bounds were reached (the load is above each), and only wrong
    // communities were rejected.
    ensure!(rate > 0 && queue > 0, "rate {rate}, queue {queue}");
    ensure!(
        by_cause.get("community").copied().unwrap_or(0) as u64 == rejected && rejected <= wrong,
        "{by_cause:?}"
    );
    ensure!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND,
        "agent RSS grew from {} to {} bytes (bound {RSS_GROWTH_BOUND})",
        rss_before,
        rss_after
    );
    agent.stop().await?;
    Ok(())
}
