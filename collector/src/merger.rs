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
//! It runs on its own OS thread because all its work is blocking SQLite I/O;
//! it never awaits, so no lock is needed anywhere around the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::model::{
    AgentLive, Committed, CommittedChunk, LiveAgents, NewReading, Point, SeriesKey, SeriesMeta,
    now_ns,
};
use crate::store::sqlite::{AgentRow, BatchWrite, SqliteStore, StoreError, WriteSet};

/// Most readings written in one transaction; the rest waits for the next.
const MAX_GROUP_READINGS: usize = 100_000;

/// A batch that passed the session's validation.
#[derive(Debug)]
pub struct IncomingBatch {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
    /// Readings the agent says it dropped so far in this epoch.
    pub dropped: u64,
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
        peer: String,
        session: u64,
    ) -> Result<u64, MergerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Hello {
                agent,
                epoch,
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

/// Per-agent in-memory state.
#[derive(Debug, Default)]
struct AgentState {
    row: AgentRow,
    /// The session that owns the agent's live stream, if any.
    session: Option<u64>,
    dirty: bool,
}

/// The merger's state. Owned by its thread; nobody else can see it.
pub struct Merger {
    store: SqliteStore,
    rx: mpsc::Receiver<Command>,
    by_key: HashMap<SeriesKey, i64>,
    by_id: HashMap<i64, Arc<SeriesMeta>>,
    next_series_id: i64,
    pending_series: Vec<Arc<SeriesMeta>>,
    committed: HashMap<(Arc<str>, u64), u64>,
    agents: HashMap<Arc<str>, AgentState>,
    live_tx: watch::Sender<LiveAgents>,
    live_dirty: bool,
    tail: broadcast::Sender<Committed>,
}

/// Why the merger could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("loading merge state: {0}")]
    Load(#[from] StoreError),
    #[error("starting the merger thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Loads the merger's state from `store` and starts it on its own thread.
/// `capacity` bounds the command queue.
pub fn spawn(
    store: SqliteStore,
    capacity: usize,
) -> Result<(MergerHandle, MergerOutputs, std::thread::JoinHandle<()>), SpawnError> {
    let loaded = store.load()?;
    let (tx, rx) = mpsc::channel(capacity);
    let mut by_key = HashMap::with_capacity(loaded.series.len());
    let mut by_id = HashMap::with_capacity(loaded.series.len());
    let mut next_series_id = 1;
    for s in loaded.series {
        next_series_id = next_series_id.max(s.id + 1);
        by_key.insert(s.key.clone(), s.id);
        by_id.insert(s.id, s);
    }
    let agents = loaded
        .agents
        .into_iter()
        .map(|(id, row)| {
            (
                id,
                AgentState {
                    row,
                    ..Default::default()
                },
            )
        })
        .collect();
    let (live_tx, live_rx) = watch::channel(LiveAgents::default());
    let (tail, _) = broadcast::channel(256);
    let merger = Merger {
        store,
        rx,
        by_key,
        by_id,
        next_series_id,
        pending_series: Vec::new(),
        committed: loaded.committed,
        agents,
        live_tx,
        live_dirty: false,
        tail: tail.clone(),
    };
    let join = std::thread::Builder::new()
        .name("merger".into())
        .spawn(move || merger.run())?;
    Ok((
        MergerHandle { tx },
        MergerOutputs {
            live: live_rx,
            tail,
        },
        join,
    ))
}

/// One group being assembled: what to write and whom to ack afterwards.
#[derive(Default)]
struct Group {
    set: WriteSet,
    readings: usize,
    /// (stream's ack channel, sequence to publish) after the commit.
    acks: Vec<(Arc<watch::Sender<u64>>, u64)>,
    /// (agent, epoch) → new committed seq, for the write set.
    committed: HashMap<(Arc<str>, u64), u64>,
}

impl Merger {
    /// The loop: wait for work, take all that is waiting, commit, ack.
    /// Ends when every handle is dropped and the queue is drained.
    fn run(mut self) {
        info!(path = %self.store.path().display(), "merger started");
        loop {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            let mut group = Group::default();
            self.apply(first, &mut group);
            while group.readings < MAX_GROUP_READINGS {
                match self.rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut group),
                    Err(_) => break,
                }
            }
            self.flush(group);
        }
        info!("merger stopped: every session has ended");
    }

    fn apply(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::Hello {
                agent,
                epoch,
                peer,
                session,
                reply,
            } => {
                // Only what is durable: the group being assembled may still
                // fail to commit, and the agent drops what the Welcome covers.
                let committed = self
                    .committed
                    .get(&(agent.clone(), epoch))
                    .copied()
                    .unwrap_or(0);
                let state = self.agents.entry(agent.clone()).or_default();
                state.row.epoch = epoch;
                state.row.peer = peer;
                state.row.last_seen_ns = now_ns();
                state.session = Some(session);
                state.dirty = true;
                self.live_dirty = true;
                let _ = reply.send(committed);
            }
            Command::Resolve { keys, reply } => {
                let ids = keys.into_iter().map(|k| self.series_id(k)).collect();
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
        }
    }

    fn apply_batch(&mut self, b: IncomingBatch, group: &mut Group) {
        let committed = self.committed_seq(&b.agent, b.epoch, group);
        let state = self.agents.entry(b.agent.clone()).or_default();
        state.row.last_seen_ns = b.received_ns;
        state.row.dropped_at_agent = state.row.dropped_at_agent.max(b.dropped);
        state.dirty = true;
        if b.seq <= committed {
            // A replay (resend after a lost ack, or a second stream of the
            // same agent): ack again, store nothing.
            state.row.batches_deduplicated += 1;
            debug!(agent = %b.agent, seq = b.seq, committed, "duplicate batch acked again");
            group.acks.push((b.ack, committed));
            return;
        }
        state.row.readings_stored += b.readings.len() as u64;
        group.committed.insert((b.agent.clone(), b.epoch), b.seq);
        group.readings += b.readings.len();
        group.acks.push((b.ack, b.seq));
        group.set.batches.push(BatchWrite {
            received_ns: b.received_ns,
            readings: b.readings,
        });
    }

    /// The committed sequence of (agent, epoch), counting the group being
    /// assembled (its batches commit together or not at all).
    fn committed_seq(&self, agent: &Arc<str>, epoch: u64, group: &Group) -> u64 {
        let key = (agent.clone(), epoch);
        group
            .committed
            .get(&key)
            .or_else(|| self.committed.get(&key))
            .copied()
            .unwrap_or(0)
    }

    fn series_id(&mut self, key: SeriesKey) -> i64 {
        if let Some(id) = self.by_key.get(&key) {
            return *id;
        }
        let id = self.next_series_id;
        self.next_series_id += 1;
        let meta = Arc::new(SeriesMeta {
            id,
            key: key.clone(),
        });
        self.by_key.insert(key, id);
        self.by_id.insert(id, meta.clone());
        self.pending_series.push(meta);
        id
    }

    /// Commits the group (retrying until the store takes it), then acks and
    /// publishes.
    fn flush(&mut self, mut group: Group) {
        group.set.new_series = std::mem::take(&mut self.pending_series);
        group.set.committed = group
            .committed
            .iter()
            .map(|((a, e), s)| (a.clone(), *e, *s))
            .collect();
        for (id, state) in self.agents.iter_mut() {
            if state.dirty {
                state.dirty = false;
                group.set.agents.push((id.clone(), state.row.clone()));
            }
        }
        if !group.set.is_empty() {
            let mut delay = Duration::from_millis(50);
            while let Err(e) = self.store.commit(&group.set) {
                // Nothing is acked until the commit succeeds; sessions wait,
                // the queue fills, agents buffer. Keep trying.
                error!(error = %e, retry_in = ?delay, "commit failed; nothing acked, retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        self.committed.extend(group.committed.drain());
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
        if self.tail.receiver_count() > 0 && !group.set.batches.is_empty() {
            let _ = self.tail.send(self.committed_chunks(&group.set));
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
                            peer: s.row.peer.clone(),
                        },
                    )
                })
                .collect();
            self.live_tx.send_replace(Arc::new(live));
        }
    }

    /// Groups the committed readings by series for `Query/Tail`.
    fn committed_chunks(&self, set: &WriteSet) -> Committed {
        let mut chunks: Vec<CommittedChunk> = Vec::new();
        let mut index: HashMap<i64, usize> = HashMap::new();
        for b in &set.batches {
            for r in &b.readings {
                let Some(meta) = self.by_id.get(&r.series_id) else {
                    warn!(series = r.series_id, "committed reading of unknown series");
                    continue;
                };
                let i = *index.entry(r.series_id).or_insert_with(|| {
                    chunks.push(CommittedChunk {
                        series: meta.clone(),
                        points: Vec::new(),
                    });
                    chunks.len() - 1
                });
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
