//! The merger: the single owner of the store's write side and of all merge
//! state (series ids, committed sequences, agent counters, who is connected).
//!
//! Sessions talk to it only through [`MergerHandle`], over one bounded
//! channel. The merger takes everything waiting on that channel, writes it in
//! one transaction (group commit), records each agent's committed sequence in
//! the same transaction, commits, and only then acks the sessions. A batch at
//! or below the committed sequence of its (agent, epoch) is acked again and
//! not stored.
//!
//! It runs on its own OS thread because all its work is blocking store I/O
//! ([`Store`] is blocking for SQLite and PostgreSQL alike); it never awaits,
//! so no lock is needed anywhere around the store. Its committed-sequence
//! map is a cache of the store's: the store re-checks every batch under its
//! own lock (several collectors may share a PostgreSQL database) and reports
//! the batches it skipped, which are acked all the same.
//!
//! Retention runs here too, between groups: a timer task sends
//! [`Command::Retain`] through the same queue, and the merger deletes old
//! readings in bounded steps when its queue is empty, so retention never
//! races a commit. So does the store's compaction (SQLite: head rows into
//! per-series chunks): after each group, bounded steps that move at least
//! as many points as the group committed, and steps back to back while the
//! queue is empty; a timer sends [`Command::Compact`] so a quiet store
//! still compacts on age.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::model::{
    AgentLive, Committed, CommittedChunk, IdMap, LiveAgents, NewReading, Point, SeriesKey, now_ns,
};
use crate::store::{
    AgentWrite, BatchWrite, CompactStep, Durability, EpochRow, Retention, Store, StoreError,
    StoreUrl, WriteSet,
};

mod series;

use series::SeriesTable;

/// Most readings written in one transaction; the rest waits for the next.
const MAX_GROUP_READINGS: usize = 100_000;

/// Most readings one retention step removes before the merger looks at its
/// queue again.
const RETAIN_STEP_ROWS: u64 = 20_000;

/// How often an idle merger asks the store whether compaction is due (it
/// also asks after every group).
const COMPACT_CHECK: Duration = Duration::from_secs(1);

/// Longest wait between two attempts of a failing store call.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A batch that passed the session's validation.
#[derive(Debug)]
pub struct IncomingBatch {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
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
    /// Where to publish the highest committed sequence of this stream.
    pub ack: Arc<watch::Sender<u64>>,
}

/// Messages to the merger.
#[derive(Debug)]
pub enum Command {
    /// A stream said Hello: mark the agent connected, answer with the
    /// committed sequence of (agent, epoch).
    Hello {
        agent: Arc<str>,
        epoch: u64,
        /// Readings dropped and newest spooled sequence, as the agent says.
        dropped: u64,
        last_seq: u64,
        peer: String,
        session: u64,
        reply: oneshot::Sender<u64>,
    },
    /// Give global ids to series keys (new ones are stored with the next
    /// commit, before any reading that uses them).
    Resolve {
        keys: Vec<SeriesKey>,
        reply: oneshot::Sender<Vec<i64>>,
    },
    Batch(IncomingBatch),
    /// A stream ended.
    Goodbye {
        agent: Arc<str>,
        session: u64,
    },
    /// Time for a retention pass (sent by the merger's own timer task).
    Retain,
    /// Time to see whether compaction is due (sent by the merger's own
    /// timer task, so an idle merger wakes up for it).
    Compact,
}

/// The merger has stopped; the collector is shutting down or broken.
#[derive(Debug, thiserror::Error)]
#[error("merger is not running")]
pub struct MergerGone;

/// Cheap, cloneable way to talk to the merger.
#[derive(Clone, Debug)]
pub struct MergerHandle {
    tx: mpsc::Sender<Command>,
}

impl MergerHandle {
    /// Registers a stream and returns the committed sequence of its epoch.
    pub async fn hello(
        &self,
        agent: Arc<str>,
        epoch: u64,
        (dropped, last_seq): (u64, u64),
        peer: String,
        session: u64,
    ) -> Result<u64, MergerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Hello {
                agent,
                epoch,
                dropped,
                last_seq,
                peer,
                session,
                reply,
            })
            .await
            .map_err(|_| MergerGone)?;
        rx.await.map_err(|_| MergerGone)
    }

    /// Resolves series keys to global ids, in order.
    pub async fn resolve(&self, keys: Vec<SeriesKey>) -> Result<Vec<i64>, MergerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Resolve { keys, reply })
            .await
            .map_err(|_| MergerGone)?;
        rx.await.map_err(|_| MergerGone)
    }

    /// Hands a batch over; waits while the merger's queue is full (this is
    /// the backpressure that reaches agents through HTTP/2 flow control).
    pub async fn batch(&self, batch: IncomingBatch) -> Result<(), MergerGone> {
        self.tx
            .send(Command::Batch(batch))
            .await
            .map_err(|_| MergerGone)
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

/// Things the query side observes of the merger.
pub struct MergerOutputs {
    pub live: watch::Receiver<LiveAgents>,
    pub tail: broadcast::Sender<Committed>,
}

/// Per-agent in-memory state: what the next commit tells the store.
#[derive(Debug, Default)]
struct AgentState {
    /// Newest epoch, peer and last-seen time (absolute).
    epoch: u64,
    peer: String,
    last_seen_ns: i64,
    /// Counter increments since the last commit.
    batches_deduplicated: u64,
    batches_resent: u64,
    /// The session that owns the agent's live stream, if any.
    session: Option<u64>,
    dirty: bool,
}

/// How the merger runs.
#[derive(Debug, Clone)]
pub struct MergerOptions {
    pub durability: Durability,
    /// Capacity of the command queue.
    pub capacity: usize,
    /// Delete readings older than this, on a schedule; `None` keeps all.
    pub retention: Option<Retention>,
}

/// The merger's state. Owned by its thread; nobody else can see it.
pub struct Merger {
    store: Store,
    rx: mpsc::Receiver<Command>,
    /// Every series key the merger has seen and its global id (keys held
    /// once, interned: see `series`).
    series: SeriesTable,
    /// Delivery state per (agent, epoch) as last read from or committed to
    /// the store: never ahead of it.
    epochs: HashMap<(Arc<str>, u64), EpochRow>,
    agents: HashMap<Arc<str>, AgentState>,
    live_tx: watch::Sender<LiveAgents>,
    live_dirty: bool,
    tail: broadcast::Sender<Committed>,
    retention: Option<Retention>,
    /// Cutoff of a retention pass still under way.
    retaining: Option<Retaining>,
}

/// A retention pass in progress.
#[derive(Debug, Clone, Copy)]
struct Retaining {
    cutoff_ns: i64,
    removed: u64,
}

/// Why the merger could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("opening the store: {0}")]
    Open(#[source] StoreError),
    #[error("loading merge state: {0}")]
    Load(#[source] StoreError),
    #[error("starting the merger thread: {0}")]
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
    let retention = options.retention;
    let compacts = matches!(url, StoreUrl::Sqlite(_));
    // The store is opened, used and dropped on the merger's thread only:
    // a PostgreSQL store owns a runtime, which must not be dropped (nor
    // blocked on) from async code.
    let join = std::thread::Builder::new()
        .name("merger".into())
        .spawn(move || {
            let opened = Store::open(&url, options.durability)
                .map_err(SpawnError::Open)
                .and_then(|mut store| {
                    let loaded = store.load().map_err(SpawnError::Load)?;
                    Ok((store, loaded))
                });
            let (store, loaded) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut series = SeriesTable::with_capacity(loaded.series.len());
            for s in loaded.series {
                series.insert(&s.key, s.id);
            }
            let merger = Merger {
                store,
                rx,
                series,
                epochs: loaded.epochs,
                agents: HashMap::new(),
                live_tx,
                live_dirty: false,
                tail: tail_tx,
                retention,
                retaining: None,
            };
            let _ = ready_tx.send(Ok(()));
            merger.run();
        })?;
    ready_rx.await.map_err(|_| SpawnError::Died)??;
    if let Some(retention) = retention {
        spawn_timer(&tx, retention.check_every, || Command::Retain);
    }
    if compacts {
        spawn_timer(&tx, COMPACT_CHECK, || Command::Compact);
    }
    Ok((
        MergerHandle { tx },
        MergerOutputs {
            live: live_rx,
            tail,
        },
        join,
    ))
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

/// One group being assembled: what to write and whom to ack afterwards.
#[derive(Default)]
struct Group {
    set: WriteSet,
    readings: usize,
    /// (stream's ack channel, sequence to publish) after the commit.
    acks: Vec<(Arc<watch::Sender<u64>>, u64)>,
    /// (agent, epoch) → new delivery state, for the write set.
    epochs: HashMap<(Arc<str>, u64), EpochRow>,
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
            let first = if self.retaining.is_some() || self.store.compaction_due() {
                match self.rx.try_recv() {
                    Ok(cmd) => cmd,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if self.store.compaction_due() {
                            let _ = self.compact_step();
                        } else {
                            self.retain_step();
                        }
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                }
            };
            let mut group = Group::default();
            self.apply(first, &mut group);
            while group.readings < MAX_GROUP_READINGS {
                match self.rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut group),
                    Err(_) => break,
                }
            }
            let readings = group.readings;
            self.flush(group);
            self.compact_after(readings);
        }
        info!("merger stopped: every session has ended");
    }

    fn apply(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::Hello {
                agent,
                epoch,
                dropped,
                last_seq,
                peer,
                session,
                reply,
            } => {
                // Only what is durable: the store's row (another collector
                // may have advanced it), never the group being assembled,
                // which may still fail to commit; the agent drops what the
                // Welcome covers. Without the store, the cache is safe too:
                // it is never ahead of the store, and a low Welcome only
                // means resends, which are deduplicated.
                let key = (agent.clone(), epoch);
                match self.store.epoch(&agent, epoch) {
                    Ok(Some(row)) => {
                        let cached = self.epochs.entry(key.clone()).or_default();
                        *cached = cached.max(row);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(agent = %agent, epoch, error = %e, "reading the committed sequence failed; welcoming with the cached one");
                    }
                }
                let committed = self.epochs.get(&key).map(|e| e.committed_seq).unwrap_or(0);
                self.report(&agent, epoch, dropped, last_seq, group);
                let state = self.agents.entry(agent.clone()).or_default();
                state.epoch = epoch;
                state.peer = peer;
                state.last_seen_ns = now_ns();
                state.session = Some(session);
                state.dirty = true;
                self.live_dirty = true;
                let _ = reply.send(committed);
            }
            Command::Resolve { keys, reply } => {
                let ids = self.resolve(keys);
                let _ = reply.send(ids);
            }
            Command::Goodbye { agent, session } => {
                if let Some(state) = self.agents.get_mut(&agent)
                    && state.session == Some(session)
                {
                    state.session = None;
                    self.live_dirty = true;
                }
            }
            Command::Batch(b) => self.apply_batch(b, group),
            Command::Retain => self.start_retention(),
            // Nothing to do here: the loop asks the store after the group.
            Command::Compact => {}
        }
    }

    fn apply_batch(&mut self, b: IncomingBatch, group: &mut Group) {
        let committed = self.epoch_state(&b.agent, b.epoch, group).committed_seq;
        self.report(&b.agent, b.epoch, b.dropped, b.last_seq, group);
        let state = self.agents.entry(b.agent.clone()).or_default();
        state.last_seen_ns = state.last_seen_ns.max(b.received_ns);
        if b.resent {
            state.batches_resent += 1;
        }
        state.dirty = true;
        if b.seq <= committed {
            // A replay (resend after a lost ack, or a second stream of the
            // same agent): ack again, store nothing.
            state.batches_deduplicated += 1;
            debug!(agent = %b.agent, seq = b.seq, committed, "duplicate batch acked again");
            group.acks.push((b.ack, committed));
            return;
        }
        let mut epoch = self.epoch_state(&b.agent, b.epoch, group);
        epoch.committed_seq = b.seq;
        group.epochs.insert((b.agent.clone(), b.epoch), epoch);
        group.readings += b.readings.len();
        group.acks.push((b.ack, b.seq));
        group.set.batches.push(BatchWrite {
            agent: b.agent,
            epoch: b.epoch,
            seq: b.seq,
            received_ns: b.received_ns,
            readings: b.readings,
        });
    }

    /// The delivery state of (agent, epoch), counting the group being
    /// assembled (its batches commit together or not at all).
    fn epoch_state(&self, agent: &Arc<str>, epoch: u64, group: &Group) -> EpochRow {
        let key = (agent.clone(), epoch);
        group
            .epochs
            .get(&key)
            .or_else(|| self.epochs.get(&key))
            .copied()
            .unwrap_or_default()
    }

    /// Records what the agent reports about its spool: readings dropped
    /// and the newest spooled sequence (both only grow; readers sum the
    /// drops of every epoch).
    fn report(
        &mut self,
        agent: &Arc<str>,
        epoch: u64,
        dropped: u64,
        last_seq: u64,
        group: &mut Group,
    ) {
        let mut e = self.epoch_state(agent, epoch, group);
        if dropped <= e.dropped && last_seq <= e.last_seq {
            return;
        }
        e.dropped = e.dropped.max(dropped);
        e.last_seq = e.last_seq.max(last_seq);
        group.epochs.insert((agent.clone(), epoch), e);
    }

    /// Global ids of `keys`, asking the store (which assigns them, so
    /// collectors sharing a database agree) for the ones not cached.
    fn resolve(&mut self, keys: Vec<SeriesKey>) -> Vec<i64> {
        let mut missing: Vec<&SeriesKey> = keys
            .iter()
            .filter(|k| self.series.get(k).is_none())
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let missing: Vec<SeriesKey> = missing.into_iter().cloned().collect();
            let ids = self.retry("resolve series", |store| store.resolve_series(&missing));
            for (key, id) in missing.iter().zip(ids) {
                self.series.insert(key, id);
            }
            debug!(series = self.series.len(), "series resolved");
        }
        keys.iter()
            .map(|k| self.series.get(k).unwrap_or_default())
            .collect()
    }

    /// Calls `f` until the store takes it. Nothing is acked meanwhile:
    /// sessions wait, the queue fills, agents spool.
    fn retry<T>(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut Store) -> Result<T, StoreError>,
    ) -> T {
        let mut delay = Duration::from_millis(50);
        loop {
            match f(&mut self.store) {
                Ok(v) => return v,
                Err(e) => {
                    error!(error = %e, retry_in = ?delay, "{what} failed; nothing acked, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Commits the group (retrying until the store takes it), then acks and
    /// publishes.
    fn flush(&mut self, mut group: Group) {
        let mut epochs: Vec<_> = group
            .epochs
            .iter()
            .map(|((a, e), s)| (a.clone(), *e, *s))
            .collect();
        epochs.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        group.set.epochs = epochs;
        for (id, state) in self.agents.iter_mut() {
            if state.dirty {
                state.dirty = false;
                group.set.agents.push((
                    id.clone(),
                    AgentWrite {
                        epoch: state.epoch,
                        peer: state.peer.clone(),
                        last_seen_ns: state.last_seen_ns,
                        batches_deduplicated: std::mem::take(&mut state.batches_deduplicated),
                        batches_resent: std::mem::take(&mut state.batches_resent),
                    },
                ));
            }
        }
        let mut skipped = Vec::new();
        if !group.set.is_empty() {
            let set = &group.set;
            let report = self.retry("commit", |store| store.commit(set));
            for (agent, epoch, row) in report.epochs {
                let cached = self.epochs.entry((agent, epoch)).or_default();
                *cached = cached.max(row);
            }
            for &i in &report.skipped {
                if let Some(b) = group.set.batches.get(i) {
                    debug!(agent = %b.agent, epoch = b.epoch, seq = b.seq, "batch already stored (another collector); acked, not stored");
                }
            }
            skipped = report.skipped;
        }
        for (ack, seq) in group.acks {
            ack.send_if_modified(|cur| {
                if seq > *cur {
                    *cur = seq;
                    true
                } else {
                    false
                }
            });
        }
        if self.tail.receiver_count() > 0 && group.set.batches.len() > skipped.len() {
            let _ = self.tail.send(self.committed_chunks(&group.set, &skipped));
        }
        if self.live_dirty {
            self.live_dirty = false;
            let live: BTreeMap<String, AgentLive> = self
                .agents
                .iter()
                .map(|(id, s)| {
                    (
                        id.to_string(),
                        AgentLive {
                            connected: s.session.is_some(),
                            peer: s.peer.clone(),
                        },
                    )
                })
                .collect();
            self.live_tx.send_replace(Arc::new(live));
        }
    }

    /// Compaction after a group of `readings`: steps, while compaction is
    /// due, until twice as many points went from the head into chunks (at
    /// least one step). So compaction outpaces commits however busy the
    /// queue is, and a round ends before the next one is due: when it falls
    /// behind, the next group waits, which is the backpressure that bounds
    /// the store's memory. An idle merger runs the rest from its loop.
    fn compact_after(&mut self, readings: usize) {
        let mut moved = 0;
        while self.store.compaction_due() {
            let Some(step) = self.compact_step() else {
                return;
            };
            moved += step.points;
            if moved >= 2 * readings as u64 || step == CompactStep::default() {
                return;
            }
        }
    }

    /// One bounded step of the store's compaction. A failed step is logged;
    /// the store pauses compaction for a moment, and commits go on (the
    /// head keeps every reading meanwhile).
    fn compact_step(&mut self) -> Option<CompactStep> {
        match self.store.compact() {
            Ok(step) => {
                if step.round_done {
                    debug!("compaction round done");
                }
                Some(step)
            }
            Err(e) => {
                warn!(error = %e, "compaction step failed; trying again shortly");
                None
            }
        }
    }

    /// Starts a retention pass, unless one is under way.
    fn start_retention(&mut self) {
        let Some(retention) = self.retention else {
            return;
        };
        if self.retaining.is_some() {
            return;
        }
        let keep = i64::try_from(retention.keep.as_nanos()).unwrap_or(i64::MAX);
        self.retaining = Some(Retaining {
            cutoff_ns: now_ns().saturating_sub(keep),
            removed: 0,
        });
    }

    /// One bounded step of the retention pass under way. A failed step is
    /// logged and the pass abandoned; the next tick starts a new one.
    fn retain_step(&mut self) {
        let Some(mut pass) = self.retaining.take() else {
            return;
        };
        match self.store.retain(pass.cutoff_ns, RETAIN_STEP_ROWS) {
            Ok(step) => {
                pass.removed += step.removed;
                if step.done {
                    if pass.removed > 0 {
                        info!(
                            removed = pass.removed,
                            cutoff_ns = pass.cutoff_ns,
                            "retention: old readings removed"
                        );
                    }
                } else {
                    self.retaining = Some(pass);
                }
            }
            Err(e) => warn!(error = %e, "retention step failed; trying again at the next tick"),
        }
    }

    /// Groups the committed readings by series for `Query/Tail`, leaving
    /// out the batches the store skipped.
    fn committed_chunks(&self, set: &WriteSet, skipped: &[usize]) -> Committed {
        let mut chunks: Vec<CommittedChunk> = Vec::new();
        let mut index: IdMap<usize> = IdMap::default();
        for (_, b) in set
            .batches
            .iter()
            .enumerate()
            .filter(|(i, _)| !skipped.contains(i))
        {
            for r in &b.readings {
                let i = match index.get(&r.series_id) {
                    Some(&i) => i,
                    None => {
                        let Some(meta) = self.series.meta(r.series_id) else {
                            warn!(series = r.series_id, "committed reading of unknown series");
                            continue;
                        };
                        chunks.push(CommittedChunk {
                            series: Arc::new(meta),
                            points: Vec::new(),
                        });
                        index.insert(r.series_id, chunks.len() - 1);
                        chunks.len() - 1
                    }
                };
                chunks[i].points.push(Point {
                    ts_ns: r.ts_ns,
                    received_ns: b.received_ns,
                    value: r.value.clone(),
                });
            }
        }
        Arc::new(chunks)
    }
}
