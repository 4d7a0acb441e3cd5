//! The two simulated processes, each started on its real code: the
//! collector (Ingest sessions and the merger over an SQLite file, served
//! on the simulated network) and the agent (the uplink and its spool
//! directory). A crash drops every task of the process and cuts its
//! connections; a restart opens the same files again, as a restarted
//! process would.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use tributary_agent::reading::Reading;
use tributary_agent::spool::{AfterWrite, FullPolicy, Spool, SpoolOptions};
use tributary_agent::uplink::{
    Collectors, Connector, Failpoint, Failpoints, Uplink, UplinkConfig, UplinkStats,
};
use tributary_collector::merger::{self, MergerOptions};
use tributary_collector::server::IngestService;
use tributary_collector::session::Limits;
use tributary_collector::store::{Durability, StoreUrl};
use tributary_proto::v1 as pb;

use super::check::{Id, id_of};
use super::net::{Net, SimIo, lock};

/// The agent id every run uses.
pub const AGENT: &str = "sim-agent";

/// The payload of the panic that stops the uplink at the spool's
/// failpoint (a crash there: nothing after the write runs).
pub struct SimCrash;

/// A running collector.
pub struct Collector {
    server: JoinHandle<()>,
    merger: JoinHandle<()>,
    shutdown: CancellationToken,
    /// Set by the `AfterCommit` failpoint when it stops the merger: only
    /// then is the merger's end a planned crash.
    fired: Arc<AtomicBool>,
}

impl Collector {
    /// Opens the store at `db` and serves Ingest on `net`. When `crash_at_commit`
    /// is set at a commit, the merger stops after that commit and before
    /// its acks, and the network loses the collector at that moment.
    pub fn start(db: &Path, net: &Net, crash_at_commit: Arc<AtomicBool>) -> Result<Collector> {
        let hook_net = net.clone();
        let fired = Arc::new(AtomicBool::new(false));
        let hook_fired = fired.clone();
        let after_commit: merger::AfterCommit = Box::new(move || {
            let crash = crash_at_commit.swap(false, Ordering::SeqCst);
            if crash {
                hook_fired.store(true, Ordering::SeqCst);
                hook_net.collector_down();
            }
            crash
        });
        let (handle, _outputs, run) = merger::start_inline(
            &StoreUrl::Sqlite(db.to_path_buf()),
            MergerOptions {
                name: Arc::from("sim-collector"),
                // A simulated crash is a process crash: what SQLite wrote
                // survives it without a WAL fsync per commit.
                durability: Durability::Normal,
                capacity: 64,
                retention: None,
                max_series_per_agent: 1_000,
                max_series_in_memory: 1_000,
                metrics: Arc::default(),
            },
            Some(after_commit),
        )
        .context("starting the merger")?;
        let merger = tokio::spawn(run);
        let shutdown = CancellationToken::new();
        let service = pb::ingest_server::IngestServer::new(IngestService::new(
            handle,
            Limits::default(),
            shutdown.clone(),
        ));
        let (tx, rx) = mpsc::channel::<SimIo>(16);
        net.listen(tx);
        let incoming = ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
        });
        Ok(Collector {
            server,
            merger,
            shutdown,
            fired,
        })
    }

    /// A task of the process ended on its own: the merger at the
    /// `crash_at_commit` failpoint (a planned crash), or anything else
    /// (a failure, which [`Collector::kill`] then reports).
    pub fn ended(&self) -> bool {
        self.merger.is_finished() || self.server.is_finished()
    }

    /// Drops every task of the process (sessions end once the network
    /// has cut their connections and the merger is gone). `Ok(true)` if
    /// the merger had stopped at the failpoint; `Err` if a task panicked,
    /// or ended on its own without the failpoint having fired (a real
    /// crash must not pass for a planned one).
    pub async fn kill(self, net: &Net) -> Result<bool> {
        net.collector_down();
        let server_ended = self.server.is_finished();
        let merger_ended = self.merger.is_finished();
        self.shutdown.cancel();
        self.server.abort();
        self.merger.abort();
        let server = self.server.await;
        let merger = self.merger.await;
        let fired = self.fired.load(Ordering::SeqCst);
        task_end("the collector's merger", merger, merger_ended && !fired)?;
        // The failpoint also closes the listener, which ends the server.
        task_end("the collector's server", server, server_ended && !fired)?;
        Ok(fired && merger_ended)
    }
}

/// `Err` if a task panicked, or (`unplanned`) ended by itself when only a
/// kill should have ended it.
fn task_end(what: &str, end: Result<(), tokio::task::JoinError>, unplanned: bool) -> Result<()> {
    match end {
        Err(e) if e.is_panic() => {
            anyhow::bail!("{what} panicked: {}", panic_text(&*e.into_panic()))
        }
        _ if unplanned => anyhow::bail!("{what} ended without a planned crash"),
        _ => Ok(()),
    }
}

/// How a crash between a spool record's write and its sync leaves the
/// record on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCrash {
    /// The process died, the page cache kept the bytes.
    Kept,
    /// The machine died: nothing of the unsynced write reached the disk.
    Lost,
    /// The machine died in the middle: the first `n` bytes reached it.
    Torn(u64),
}

/// A record's place, reported by the spool's failpoint.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// What the agent's hooks record for the run.
#[derive(Default)]
pub struct AgentTaps {
    /// Readings reported taken (`Failpoint::Spooled`).
    pub taken: Vec<Reading>,
    /// The ids of each record reported taken, by (epoch, seq).
    pub records: HashMap<(u64, u64), Vec<Id>>,
    /// Ids of the readings of taken records the spool gave up
    /// (`Failpoint::Dropped`).
    pub dropped: HashSet<Id>,
    /// Readings the spool reported counted as dropped, taken or not
    /// (`Failpoint::Dropped` and `Failpoint::NotSpooled`).
    pub dropped_count: u64,
    /// Records given up that were never reported taken (a record a crash
    /// kept on disk before its `Spooled`): their readings are counted,
    /// their ids unknown.
    pub dropped_unknown: u64,
    /// Set by the run to crash at the next record write.
    pub crash_at_write: bool,
    /// Where that crash happened.
    pub crashed_at: Option<Written>,
    /// The spool directory could not be copied at that crash.
    pub snapshot_failed: Option<String>,
}

pub type Taps = Arc<Mutex<AgentTaps>>;

/// A running agent: its uplink and the intake the simulated devices feed.
pub struct Agent {
    uplink: JoinHandle<()>,
    /// `None` once the devices have stopped (the uplink drains).
    pub intake: Option<mpsc::Sender<Vec<Reading>>>,
    /// The uplink's counters, as last published.
    stats: watch::Receiver<UplinkStats>,
}

impl Agent {
    /// Opens the spool in `dir` and starts the uplink towards `net`.
    /// `spool_bytes` bounds the spool (`[spool] max_bytes`; a small one
    /// makes an outage drop the oldest segments).
    pub fn start(
        dir: &Path,
        net: &Net,
        taps: &Taps,
        jitter_seed: u64,
        spool_bytes: u64,
    ) -> Result<Agent> {
        let (spool, _recovery) = Spool::open(SpoolOptions {
            dir: dir.to_path_buf(),
            max_bytes: spool_bytes,
            policy: FullPolicy::DropOldest,
            sync: true,
        })
        .context("opening the spool")?;
        let collectors =
            Collectors::new(vec!["http://collector.sim:7400".into()]).context("collector list")?;
        let mut config = UplinkConfig::new(AGENT.into(), collectors);
        config.batch_max_readings = 6;
        config.batch_max_delay = Duration::from_millis(150);
        config.shutdown_timeout = Duration::from_secs(3600);
        config.jitter_seed = Some(jitter_seed);
        // The seed's backlogs are small and its acks quick: a window of one
        // to a few batches (or, a quarter of the time, the agent's own,
        // which follows the acks) makes them wait beside live batches,
        // which then go ahead.
        config.backlog_window = match jitter_seed % 4 {
            0 => None,
            n => Some(1 << (4 * (n - 1))),
        };
        let connect_net = net.clone();
        config.connector = Some(Connector(Arc::new(move |_url: &str| {
            let net = connect_net.clone();
            Box::pin(async move { net.connect().map(|io| Box::new(io) as Box<_>) })
        })));
        let (tx, rx) = mpsc::channel(64);
        let (uplink, stats) = Uplink::new(config, rx, spool);
        let spooled = taps.clone();
        let at_write = taps.clone();
        let (snapshot_dir, snapshot_to) = (dir.to_path_buf(), crash_copy(dir));
        let uplink = uplink.with_failpoints(Failpoints {
            on: Arc::new(move |point| match point {
                Failpoint::Spooled {
                    epoch,
                    seq,
                    readings,
                } => {
                    let mut t = lock(&spooled);
                    t.taken.extend_from_slice(readings);
                    let ids = readings.iter().filter_map(id_of).collect();
                    t.records.insert((epoch, seq), ids);
                }
                Failpoint::Dropped {
                    epoch,
                    seq,
                    readings,
                } => {
                    let mut t = lock(&spooled);
                    t.dropped_count += u64::from(readings);
                    match t.records.get(&(epoch, seq)).cloned() {
                        Some(ids) => t.dropped.extend(ids),
                        None => t.dropped_unknown += 1,
                    }
                }
                Failpoint::NotSpooled { readings } => {
                    lock(&spooled).dropped_count += readings.len() as u64;
                }
            }),
            after_write: Some(AfterWrite(Arc::new(move |path, offset, len| {
                let mut t = lock(&at_write);
                if t.crash_at_write {
                    t.crash_at_write = false;
                    t.crashed_at = Some(Written {
                        path: path.to_path_buf(),
                        offset,
                        len,
                    });
                    drop(t);
                    // The directory as the crash leaves it: the unwinding
                    // below drops the spool, whose clean-close cleanup a
                    // crash would not run.
                    if let Err(e) = snapshot(&snapshot_dir, &snapshot_to) {
                        lock(&at_write).snapshot_failed = Some(format!("{e:#}"));
                    }
                    // Unwinds the uplink task from this line: nothing after
                    // the write runs, as after a kill -9.
                    std::panic::panic_any(SimCrash);
                }
            }))),
        });
        Ok(Agent {
            uplink: tokio::spawn(uplink.run()),
            intake: Some(tx),
            stats,
        })
    }

    /// Live batches this uplink sent while older backlog batches waited
    /// (out of order), and batches it sent in all.
    pub fn sent_ahead(&self) -> (u64, u64) {
        let s = self.stats.borrow();
        (
            s.live_batches_ahead,
            s.live_batches_sent + s.backlog_batches_sent,
        )
    }

    /// The uplink ended: everything acked after the intake closed, or
    /// the crash at a write.
    pub fn ended(&self) -> bool {
        self.uplink.is_finished()
    }

    /// Drops every task of the process and cuts its connections. The
    /// spool directory is kept as it was at the kill (dropping the uplink
    /// runs the spool's clean-close cleanup, which a crash would not).
    pub async fn kill(self, dir: &Path, net: &Net) -> Result<()> {
        let copy = crash_copy(dir);
        snapshot(dir, &copy)?;
        self.uplink.abort();
        net.cut_all();
        let _ = self.uplink.await;
        restore(&copy, dir)
    }

    /// Waits for the uplink to end; `Err` if it panicked for another reason
    /// than the simulation's crash. The agent stays, for its counters.
    pub async fn settle(&mut self) -> Result<()> {
        match (&mut self.uplink).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                if payload.is::<SimCrash>() {
                    Ok(())
                } else {
                    anyhow::bail!("the uplink panicked: {}", panic_text(&*payload))
                }
            }
            Err(e) => anyhow::bail!("the uplink task: {e}"),
        }
    }

    /// [`Agent::settle`], consuming the agent.
    pub async fn join(mut self) -> Result<()> {
        self.settle().await
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Applies `how` to the record the crash interrupted.
pub fn apply_write_crash(at: &Written, how: WriteCrash) -> Result<()> {
    let keep = match how {
        WriteCrash::Kept => return Ok(()),
        WriteCrash::Lost => at.offset,
        WriteCrash::Torn(n) => at.offset + n.min(at.len.saturating_sub(1)),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&at.path)
        .with_context(|| format!("open {}", at.path.display()))?;
    file.set_len(keep)
        .with_context(|| format!("cut {} to {keep}", at.path.display()))?;
    Ok(())
}

/// Where a crash's copy of the spool directory `dir` goes.
pub fn crash_copy(dir: &Path) -> PathBuf {
    dir.with_extension("at-crash")
}

/// Copies the files of `dir` (the spool has no subdirectories) to `to`.
pub fn snapshot(dir: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("remove {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Puts the copy `from` back as the spool directory `dir`.
pub fn restore(from: &Path, dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    std::fs::rename(from, dir)
        .with_context(|| format!("rename {} to {}", from.display(), dir.display()))
}
