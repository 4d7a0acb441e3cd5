//! The merger: the single owner of the store's write side and of all merge
//! state (series ids, committed sequences, agent counters, who is connected).
//!
//! Sessions talk to it only through [`MergerHandle`], over one bounded
//! channel. The merger takes everything waiting on that channel, writes it in
//! one transaction (group commit), records each agent's committed sequence in
//! the same transaction, commits, and only then acks the sessions. What an
//! (agent, epoch) has committed is a set ([`CommittedSet`]: a mark plus
//! ranges above it), so batches may come in any order; a batch whose
//! sequence is in the set is acked again and not stored; the session gives
//! each such replay an Ack frame of its own ([`StreamAcks`]).
//!
//! It runs on its own OS thread because all its work is blocking store I/O
//! ([`Store`] is blocking for SQLite and PostgreSQL alike); it never awaits,
//! so no lock is needed anywhere around the store. (The delivery simulation
//! runs the same loop as a task of its one thread: [`start_inline`].) Its
//! committed-sequence map is a cache of the store's: the store re-checks
//! every batch under its own lock (several collectors may share a
//! PostgreSQL database) and reports the batches it skipped, which are acked
//! all the same.
//!
//! Retention runs here too, between groups: a timer task sends
//! [`Command::Retain`] through the same queue every second, the merger
//! starts a pass when `check_every` has passed since the last one, and
//! deletes old readings in bounded steps when its queue is empty, so
//! retention never races a commit. A reload changes the retention and
//! `max_series_per_agent` with [`Command::Settings`] ([`SettingsHandle`]). So does the store's compaction (SQLite: head rows into
//! per-series chunks): after each group, bounded steps that move at least
//! as many points as the group committed, and steps back to back while the
//! queue is empty; a timer sends [`Command::Compact`] so a quiet store
//! still compacts on age.
//!
//! What it may touch: the store's write side (it owns the [`Store`]), the
//! ack channel of each stream, the live-agents `watch` and the Tail
//! broadcast, and its metrics (`crate::metrics`: atomics it adds to per
//! group, per batch and per step, and each agent's `AgentStats`). Files: this one is the handle, the command enum, startup and
//! the run loop; `commit` group commit, dedup and acks; `agents` what it
//! knows of each agent; `upkeep` compaction and retention; `series` the
//! series table; `cardinality` the per-agent series limit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::info;

use crate::metrics::MergerMetrics;
use crate::model::{Committed, LiveAgents, NewReading, SeriesKey};
use crate::store::{CommittedSet, Durability, EpochRow, Retention, Store, StoreError, StoreUrl};

mod agents;
mod cardinality;
mod commit;
mod open;
mod series;
mod upkeep;

#[cfg(test)]
pub(crate) use upkeep::Pace;

use agents::AgentState;
pub use cardinality::SeriesLimitExceeded;
use commit::Group;
use series::SeriesTable;
use upkeep::Retaining;

/// Most readings written in one transaction; the rest waits for the next.
const MAX_GROUP_READINGS: usize = 100_000;

/// How often an idle merger asks the store whether compaction is due (it
/// also asks after every group).
const COMPACT_CHECK: Duration = Duration::from_secs(1);

/// How often the merger is asked whether a retention pass is due (a pass
/// starts once the retention's `check_every` has passed since the last).
const RETAIN_CHECK: Duration = Duration::from_secs(1);

/// A batch that passed the session's validation.
#[derive(Debug)]
pub struct IncomingBatch {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    /// The batch stands for every sequence up to `seq` (its stream's agent
    /// sends in sequence order and reads no ranges: `BatchWrite::high_water`).
    pub high_water: bool,
    /// Every sequence below this one will never be sent (the agent's
    /// `Batch.oldest_spooled`, at most `seq`; 0 says nothing).
    pub floor: u64,
    /// Readings the agent says it dropped so far in this epoch.
    pub dropped: u64,
    /// Newest sequence the agent says it has spooled.
    pub last_seq: u64,
    /// The agent sent this batch before, on an earlier stream.
    pub resent: bool,
    /// Readings of this batch whose timestamps are not to be trusted (too
    /// far ahead of the collector clock, or from an agent whose clock is
    /// off); they are stored all the same. Counted by the session.
    pub skewed_readings: u64,
    pub received_ns: i64,
    pub readings: Vec<NewReading>,
    /// Where to publish the answer to this batch (the stream's acks).
    pub ack: AckSender,
}

/// What the merger has answered on one stream, published after each
/// commit through a `watch` channel, so the merger never waits for a slow
/// session. The session turns it into Ack frames: one per replay, since an
/// agent (or any client) that resends what is committed waits for the ack
/// of each, even though the acked set does not grow; and one whenever the
/// set grows, several commits coalescing into one frame (each carries the
/// whole set, which only grows within an epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamAcks {
    /// The committed set of the stream's (agent, epoch): what the Welcome
    /// said, then as of each commit that answered a batch of the stream.
    /// Shared by the answers of one commit.
    pub committed: Arc<CommittedSet>,
    /// Batches of this stream answered so far: committed, found already
    /// stored, or replays.
    pub batches: u64,
    /// Of those, replays: batches whose sequence was committed already.
    pub replays: u64,
    /// Why a batch of this stream was refused: the session ends the stream
    /// with it. The refused batch counts in `batches` (answered).
    pub refused: Option<Refused>,
}

/// Why the merger refused a batch (the message names the agent and epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It would take its epoch past
    /// [`MAX_COMMITTED_RANGES`](tributary_proto::limits::MAX_COMMITTED_RANGES)
    /// ranges (RESOURCE_EXHAUSTED).
    RangeLimit(Arc<str>),
    /// Its epoch's stored row does not decode: the store cannot tell what
    /// is committed, so none of the epoch's batches is taken until the row
    /// is repaired; other agents' are (INTERNAL).
    BadEpochRow(Arc<str>),
}

/// The merger's end of a stream's acks.
pub type AckSender = Arc<watch::Sender<StreamAcks>>;

/// A stream's Hello, as the merger takes it.
#[derive(Debug)]
pub struct Hello {
    pub agent: Arc<str>,
    pub epoch: u64,
    /// Readings dropped and newest spooled sequence, as the agent says.
    pub dropped: u64,
    pub last_seq: u64,
    pub peer: String,
    /// The stream's id, unique in the process.
    pub session: u64,
}

/// Messages to the merger.
#[derive(Debug)]
pub enum Command {
    /// A stream said Hello: mark the agent connected, answer with the
    /// committed sequence of (agent, epoch).
    Hello {
        hello: Hello,
        reply: oneshot::Sender<Welcomed>,
    },
    /// Give global ids to series keys (new ones are stored with the next
    /// commit, before any reading that uses them).
    Resolve {
        keys: Vec<SeriesKey>,
        reply: oneshot::Sender<Result<Vec<i64>, SeriesLimitExceeded>>,
    },
    Batch(IncomingBatch),
    /// A stream ended.
    Goodbye {
        agent: Arc<str>,
        session: u64,
    },
    /// Time to see whether a retention pass is due (sent by the merger's
    /// own timer task).
    Retain,
    /// A reload's new settings.
    Settings(MergerSettings),
    /// Time to see whether compaction is due (sent by the merger's own
    /// timer task, so an idle merger wakes up for it).
    Compact,
}

/// What a reload may change in the merger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergerSettings {
    /// Delete readings older than this; `None` keeps all.
    pub retention: Option<Retention>,
    /// Most series one agent may have in the store (new series past it are
    /// refused from now on; what is stored stays).
    pub max_series_per_agent: u64,
}

/// Sends a reload's settings to the merger. Holds a weak sender, so it
/// does not keep the merger alive at shutdown.
#[derive(Debug, Clone)]
pub struct SettingsHandle {
    tx: mpsc::WeakSender<Command>,
}

impl SettingsHandle {
    /// Queues `settings` behind what is waiting; they apply from the next
    /// command on.
    pub async fn send(&self, settings: MergerSettings) -> Result<(), MergerGone> {
        let tx = self.tx.upgrade().ok_or(MergerGone)?;
        tx.send(Command::Settings(settings))
            .await
            .map_err(|_| MergerGone)
    }
}

/// The merger has stopped; the collector is shutting down or broken.
#[derive(Debug, thiserror::Error)]
#[error("merger is not running")]
pub struct MergerGone;

/// Why series could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Gone(#[from] MergerGone),
    #[error(transparent)]
    SeriesLimit(#[from] SeriesLimitExceeded),
}

/// What the store holds of an epoch when a stream says Hello, for its
/// Welcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Welcomed {
    /// The committed set (the mark and the ranges above it).
    pub committed: Arc<CommittedSet>,
    /// The drop count the store holds for the epoch (durable, unlike the
    /// Hello's own, which commits with the next group).
    pub committed_dropped: u64,
}

/// Cheap, cloneable way to talk to the merger.
#[derive(Clone, Debug)]
pub struct MergerHandle {
    tx: mpsc::Sender<Command>,
}

impl MergerHandle {
    /// Registers a stream and returns the committed set and drop count of
    /// its epoch.
    pub async fn hello(
        &self,
        agent: Arc<str>,
        epoch: u64,
        (dropped, last_seq): (u64, u64),
        peer: String,
        session: u64,
    ) -> Result<Welcomed, MergerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Hello {
                hello: Hello {
                    agent,
                    epoch,
                    dropped,
                    last_seq,
                    peer,
                    session,
                },
                reply,
            })
            .await
            .map_err(|_| MergerGone)?;
        rx.await.map_err(|_| MergerGone)
    }

    /// Resolves series keys to global ids, in order; refused when new
    /// series would take their agent past `max_series_per_agent`.
    pub async fn resolve(&self, keys: Vec<SeriesKey>) -> Result<Vec<i64>, ResolveError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Resolve { keys, reply })
            .await
            .map_err(|_| MergerGone)?;
        Ok(rx.await.map_err(|_| MergerGone)??)
    }

    /// Hands a batch over; waits while the merger's queue is full (this is
    /// the backpressure that reaches agents through HTTP/2 flow control).
    pub async fn batch(&self, batch: IncomingBatch) -> Result<(), MergerGone> {
        self.tx
            .send(Command::Batch(batch))
            .await
            .map_err(|_| MergerGone)
    }

    /// Where a reload sends the merger's new settings (it does not keep
    /// the merger alive).
    pub fn settings_handle(&self) -> SettingsHandle {
        SettingsHandle {
            tx: self.tx.downgrade(),
        }
    }

    /// What `/metrics` reads of the queue (it does not keep the merger
    /// alive).
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe {
            tx: self.tx.downgrade(),
        }
    }

    /// Tells the merger a stream ended. Best effort: never waits.
    pub fn goodbye(&self, agent: Arc<str>, session: u64) {
        let tx = self.tx.clone();
        // try_send first; if the queue is full, hand it to a task so a
        // closing session never blocks on a busy merger.
        if let Err(mpsc::error::TrySendError::Full(cmd)) =
            tx.try_send(Command::Goodbye { agent, session })
        {
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

/// How full the merger's queue is, read at scrape time.
#[derive(Debug, Clone)]
pub struct QueueProbe {
    tx: mpsc::WeakSender<Command>,
}

impl QueueProbe {
    /// Commands waiting and the queue's size; `None` once the merger is
    /// gone.
    pub fn depth(&self) -> Option<(usize, usize)> {
        let tx = self.tx.upgrade()?;
        Some((tx.max_capacity() - tx.capacity(), tx.max_capacity()))
    }
}

#[cfg(test)]
impl QueueProbe {
    /// A probe of any command channel.
    pub(crate) fn of(tx: &mpsc::Sender<Command>) -> QueueProbe {
        QueueProbe { tx: tx.downgrade() }
    }
}

/// Things the query side observes of the merger.
pub struct MergerOutputs {
    pub live: watch::Receiver<LiveAgents>,
    pub tail: broadcast::Sender<Committed>,
}

/// How the merger runs.
#[derive(Debug, Clone)]
pub struct MergerOptions {
    /// This collector's name, stored with each agent whose stream it
    /// accepted.
    pub name: Arc<str>,
    pub durability: Durability,
    /// Capacity of the command queue.
    pub capacity: usize,
    /// Delete readings older than this, on a schedule; `None` keeps all.
    pub retention: Option<Retention>,
    /// Most series one agent may have in the store, across its streams.
    pub max_series_per_agent: u64,
    /// Most series the series table holds; the least recently used go
    /// beyond it (and are read from the store again when needed).
    pub max_series_in_memory: usize,
    /// What the merger counts for `/metrics`.
    pub metrics: Arc<MergerMetrics>,
}

/// The merger's state. Owned by its thread; nobody else can see it.
pub struct Merger {
    store: Store,
    rx: mpsc::Receiver<Command>,
    /// The series keys the merger used last and their global ids (keys
    /// held once, interned, at most `max_series_in_memory`: see `series`).
    series: SeriesTable,
    /// Series in the store per agent (see `cardinality`).
    series_per_agent: HashMap<Arc<str>, u64>,
    max_series_per_agent: u64,
    /// Agents whose refusal by the series limit has been logged.
    series_limit_logged: HashSet<Arc<str>>,
    /// Delivery state per (agent, epoch) as last read from or committed to
    /// the store: never ahead of it.
    epochs: HashMap<(Arc<str>, u64), EpochRow>,
    agents: HashMap<Arc<str>, AgentState>,
    /// This collector's name (`MergerOptions::name`).
    name: Arc<str>,
    live_tx: watch::Sender<LiveAgents>,
    live_dirty: bool,
    tail: broadcast::Sender<Committed>,
    retention: Option<Retention>,
    /// When the last retention pass started (`None`: none yet with the
    /// current retention).
    last_retention: Option<std::time::Instant>,
    /// Cutoff of a retention pass still under way.
    retaining: Option<Retaining>,
    metrics: Arc<MergerMetrics>,
    /// The simulation's failpoint between commit and acks ([`start_inline`]);
    /// `None` otherwise.
    after_commit: Option<AfterCommit>,
}

/// Why the merger could not start. The message says what failed; the
/// cause is the `source()`, so a `{:#}` chain prints it once.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening the store")]
    Open(#[source] StoreError),
    #[error("loading merge state")]
    Load(#[source] StoreError),
    #[error("starting the merger thread")]
    Thread(#[from] std::io::Error),
    #[error("the merger thread ended while starting")]
    Died,
}

/// Opens the store at `url` on a new thread, loads the merger's state from
/// it and runs the merger there. Returns once the store is open (or failed
/// to open). Spawns the retention timer on the current runtime.
pub async fn start(
    url: &StoreUrl,
    options: MergerOptions,
) -> Result<(MergerHandle, MergerOutputs, std::thread::JoinHandle<()>), SpawnError> {
    let (tx, rx) = mpsc::channel(options.capacity);
    let (live_tx, live_rx) = watch::channel(LiveAgents::default());
    let (tail, _) = broadcast::channel(256);
    let (ready_tx, ready_rx) = oneshot::channel();
    let url = url.clone();
    let tail_tx = tail.clone();
    let compacts = matches!(url, StoreUrl::Sqlite(_));
    // The store is opened, used and dropped on the merger's thread only:
    // a PostgreSQL store owns a runtime, which must not be dropped (nor
    // blocked on) from async code.
    let join = std::thread::Builder::new()
        .name("merger".into())
        .spawn(move || {
            match Merger::open(&url, options, rx, live_tx, tail_tx) {
                Ok(merger) => {
                    let _ = ready_tx.send(Ok(()));
                    merger.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            };
        })?;
    ready_rx.await.map_err(|_| SpawnError::Died)??;
    Ok(started(tx, live_rx, tail, compacts, join))
}

/// The handle and outputs of a merger reading `rx`, whose timers are
/// spawned here.
fn started<J>(
    tx: mpsc::Sender<Command>,
    live: watch::Receiver<LiveAgents>,
    tail: broadcast::Sender<Committed>,
    compacts: bool,
    join: J,
) -> (MergerHandle, MergerOutputs, J) {
    // Always: a reload may turn retention on.
    spawn_timer(&tx, RETAIN_CHECK, || Command::Retain);
    if compacts {
        spawn_timer(&tx, COMPACT_CHECK, || Command::Compact);
    }
    (MergerHandle { tx }, MergerOutputs { live, tail }, join)
}

/// Called by a merger started with [`start_inline`] after each commit,
/// before the commit's acks are published; `true` stops the merger there
/// (the simulation's collector crash between commit and ack).
pub type AfterCommit = Box<dyn FnMut() -> bool + Send>;

/// The merger as a task of the current runtime instead of a thread of its
/// own, for the deterministic delivery simulation (`tests/tests/sim_delivery/`):
/// on a current-thread runtime with a paused clock, everything then runs on
/// one thread, and the clock cannot move while a commit is under way (a
/// thread's commit would let it jump to the next timer). Same state, same
/// loop and the same commit as [`start`]; the store's blocking calls run
/// inline, which a collector must not do (they would hold up its
/// sessions), so only the simulation uses it. SQLite stores only (a
/// PostgreSQL store owns a runtime, which must not be dropped inside
/// another). The returned future is the merger: it ends when every handle
/// is dropped, or when `after_commit` says stop.
pub fn start_inline(
    url: &StoreUrl,
    options: MergerOptions,
    after_commit: Option<AfterCommit>,
) -> Result<
    (
        MergerHandle,
        MergerOutputs,
        impl Future<Output = ()> + Send + use<>,
    ),
    SpawnError,
> {
    let StoreUrl::Sqlite(_) = url else {
        return Err(SpawnError::Open(StoreError::Invalid {
            store: url.to_string(),
            what: "starting an inline merger",
            message: "the simulation's inline merger runs on SQLite only".into(),
        }));
    };
    let (tx, rx) = mpsc::channel(options.capacity);
    let (live_tx, live_rx) = watch::channel(LiveAgents::default());
    let (tail, _) = broadcast::channel(256);
    let mut merger = Merger::open(url, options, rx, live_tx, tail.clone())?;
    merger.after_commit = after_commit;
    Ok(started(tx, live_rx, tail, true, merger.run_inline()))
}

/// Sends `command()` to the merger every `every`. Holds only a weak sender
/// between ticks, so the merger still ends when the last session handle is
/// dropped.
fn spawn_timer(tx: &mpsc::Sender<Command>, every: Duration, command: fn() -> Command) {
    let weak = tx.downgrade();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(tx) = weak.upgrade() else { break };
            if tx.send(command()).await.is_err() {
                break;
            }
        }
    });
}

/// What the merger's queue has for it (see [`Merger::waiting`]).
enum Waiting {
    Command(Command),
    /// Nothing waited, so a step of compaction or retention ran.
    Stepped,
    /// Nothing waits and nothing else is due: wait for the queue.
    Empty,
    /// Every handle is gone and the queue is drained.
    Closed,
}

impl Merger {
    /// The loop: wait for work, take all that is waiting, commit, ack.
    /// While compaction or a retention pass is under way and the queue is
    /// empty, one step of it runs instead of waiting (compaction first).
    /// After each group, compaction keeps pace with it (`compact_after`),
    /// so a merger that never idles still keeps the head and its memory
    /// bounded; steps are bounded work, and the group's acks are already
    /// out. Ends when every handle is dropped and the queue is drained.
    fn run(mut self) {
        info!(store = %self.store.describe(), "merger started");
        loop {
            let first = match self.waiting() {
                Waiting::Command(cmd) => cmd,
                Waiting::Stepped => continue,
                Waiting::Empty => match self.rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
                Waiting::Closed => break,
            };
            // `false` only with an `after_commit` hook, which only
            // `start_inline` sets.
            let went_on = self.turn(first);
            debug_assert!(went_on, "a threaded merger has no after_commit hook");
        }
        info!("merger stopped: every session has ended");
    }

    /// [`Merger::run`] as a task ([`start_inline`]): the same turns, the
    /// queue awaited instead of blocked on, and a yield after each step so
    /// the other tasks of its thread run between them.
    async fn run_inline(mut self) {
        loop {
            let first = match self.waiting() {
                Waiting::Command(cmd) => cmd,
                Waiting::Stepped => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Waiting::Empty => match self.rx.recv().await {
                    Some(cmd) => cmd,
                    None => break,
                },
                Waiting::Closed => break,
            };
            if !self.turn(first) {
                // `after_commit` stopped it: a crash, nothing more runs.
                return;
            }
        }
    }

    /// While compaction or a retention pass is under way and the queue is
    /// empty, one step of it runs instead of waiting (compaction first).
    fn waiting(&mut self) -> Waiting {
        if self.retaining.is_none() && !self.store.compaction_due() {
            return Waiting::Empty;
        }
        match self.rx.try_recv() {
            Ok(cmd) => Waiting::Command(cmd),
            Err(mpsc::error::TryRecvError::Empty) => {
                if self.store.compaction_due() {
                    let _ = self.compact_step();
                } else {
                    self.retain_step();
                }
                Waiting::Stepped
            }
            Err(mpsc::error::TryRecvError::Disconnected) => Waiting::Closed,
        }
    }

    /// One group: `first` and all that waits behind it, committed and
    /// acked, then compaction keeping pace. `false` when `after_commit`
    /// stopped the merger between the commit and its acks.
    fn turn(&mut self, first: Command) -> bool {
        let mut group = Group::default();
        self.apply(first, &mut group);
        while group.readings < MAX_GROUP_READINGS {
            match self.rx.try_recv() {
                Ok(cmd) => self.apply(cmd, &mut group),
                Err(_) => break,
            }
        }
        let readings = group.readings;
        if !self.flush(group) {
            return false;
        }
        self.compact_after(readings);
        true
    }

    fn apply(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::Hello { hello, reply } => {
                let welcomed = self.hello(hello, group);
                let _ = reply.send(welcomed);
            }
            Command::Resolve { keys, reply } => {
                let ids = self.resolve(keys);
                let _ = reply.send(ids);
            }
            Command::Goodbye { agent, session } => self.goodbye(&agent, session),
            Command::Batch(b) => self.apply_batch(b, group),
            Command::Retain => self.start_retention(),
            Command::Settings(settings) => self.settings(settings),
            // Nothing to do here: the loop asks the store after the group.
            Command::Compact => {}
        }
    }
}

#[cfg(test)]
mod tests;
