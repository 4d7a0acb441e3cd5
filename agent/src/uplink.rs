//! The uplink: owns the agent's spool and its one stream to a collector.
//!
//! Readings from the scheduler are appended to an open batch in memory; a
//! batch is sealed when it is full or old enough and appended to the spool,
//! which assigns its sequence number and makes it durable. From then on the
//! readings count as taken. Batches stay in the spool until the collector
//! acks them. On every (re)connect the agent says Hello and resends from the
//! oldest unacked batch at once; the Welcome then says what the collector
//! has committed for this spool's epoch, and the spool drops that (a batch
//! the collector already has is acked again, not stored). Connection
//! attempts run in their own task so intake never stops while a collector
//! is unreachable.
//!
//! Series ids are agent-wide for the spool's epoch ([`SeriesIds`]): the
//! first time the uplink sees a series it gives it the next id and adds its
//! key to the spool's dictionary (durable before any record uses the id).
//! Spooled records hold only ids, timestamps and values, in the columnar
//! form of `tributary.v1.Batch` (strings and failures as rows), so a float
//! reading costs about 10 bytes in the spool and on the wire. The same ids
//! are the stream-local ids on every stream: each stream only remembers
//! which ids it has declared, and a batch declares the ones it uses for the
//! first time on that stream.
//!
//! Batches go out strictly in sequence order: the collector's committed
//! sequence is a high-water mark, so a newer batch must never overtake an
//! older one. After an outage the backlog therefore drains first, as fast as
//! the collector commits it, while new readings keep being spooled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{debug, error, info, warn};

use tributary_proto::v1 as pb;

use crate::reading::{FailureKind, Reading, SeriesKey, Value, now_ns};
use crate::spool::{Appended, Record, Spool, SpoolError};

/// Settings of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub agent_id: String,
    /// Collector URLs, tried in order, moving on after a failure.
    pub collectors: Vec<String>,
    pub batch_max_readings: usize,
    pub batch_max_delay: Duration,
    /// How long to wait for the last acks at shutdown.
    pub shutdown_timeout: Duration,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// HTTP/2 keepalive: ping interval and how long to wait for the answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS towards the collector (`https://` URLs).
    pub tls: Option<crate::config::TlsConfig>,
}

impl UplinkConfig {
    pub fn new(agent_id: String, collectors: Vec<String>) -> Self {
        UplinkConfig {
            agent_id,
            collectors,
            batch_max_readings: crate::config::DEFAULT_BATCH_MAX_READINGS,
            batch_max_delay: crate::config::DEFAULT_BATCH_MAX_DELAY,
            shutdown_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Counters the uplink exposes (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UplinkStats {
    pub sealed_batches: u64,
    pub acked_seq: u64,
    pub dropped_readings: u64,
    pub connects: u64,
    /// Batches sent again on a later stream (or after a restart).
    pub resent_batches: u64,
    /// Readings lost because the spool could not be written.
    pub spool_errors: u64,
    /// Unacked batches a Welcome reported as already committed (their ack
    /// was lost); they are not sent again.
    pub confirmed_by_welcome: u64,
}

/// An open stream to one collector.
struct Conn {
    url: String,
    out: mpsc::Sender<pb::AgentFrame>,
    inbound: Streaming<pb::CollectorFrame>,
    /// Sequence of the next batch to send on this stream.
    next_send: u64,
    /// Series ids declared on this stream.
    declared: Declared,
}

/// The series ids declared on one stream (bit `id`).
#[derive(Debug, Default)]
struct Declared(Vec<u64>);

impl Declared {
    /// Marks `id` declared; true if it was not yet.
    fn declare(&mut self, id: u32) -> bool {
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    fn undeclare(&mut self, id: u32) {
        if let Some(word) = self.0.get_mut(id as usize / 64) {
            *word &= !(1u64 << (id % 64));
        }
    }

    /// Declarations of the series `batch` uses that are not declared yet,
    /// which are then marked declared. `Err(id)` (and nothing marked) if
    /// `batch` uses an id `ids` does not know.
    fn missing(&mut self, batch: &pb::Batch, ids: &SeriesIds) -> Result<Vec<pb::SeriesDecl>, u32> {
        let mut decls = Vec::new();
        let mut broken = None;
        for_each_series(batch, |id| {
            if broken.is_some() {
                return;
            }
            // Known ids only: a bit per id, so an unknown (huge) id must not
            // grow the set.
            match ids.key(id) {
                Some(key) if self.declare(id) => decls.push(series_decl(id, key)),
                Some(_) => {}
                None => broken = Some(id),
            }
        });
        match broken {
            None => Ok(decls),
            Some(id) => {
                for d in &decls {
                    self.undeclare(d.id);
                }
                Err(id)
            }
        }
    }
}

/// The agent-wide series ids of the spool's epoch: id `n` is `keys[n - 1]`,
/// and the spool's dictionary holds the same keys in the same order.
///
/// Looking up a reading's series must be cheap (it happens per reading): a
/// poll brings its series in the same order every time, so
/// [`SeriesIds::id_after`] first tries the id after the previous reading's
/// (a pointer comparison); only the first reading of a poll, or a series
/// that moved, is looked up by content in `by_key`. A series arriving in
/// another `Arc` (after a restart, the keys come from the dictionary) is
/// found by content, and its new `Arc` replaces the old one, so the next
/// poll takes the pointer path again. One map per id keeps memory at a few
/// words per series (there used to be a second map by address).
#[derive(Debug, Default)]
struct SeriesIds {
    keys: Vec<Arc<SeriesKey>>,
    by_key: HashMap<Arc<SeriesKey>, u32>,
}

impl SeriesIds {
    fn new(keys: Vec<Arc<SeriesKey>>) -> Self {
        let mut ids = SeriesIds::default();
        ids.by_key.reserve(keys.len());
        for (i, key) in keys.iter().enumerate() {
            ids.by_key.entry(key.clone()).or_insert(i as u32 + 1);
        }
        ids.keys = keys;
        ids
    }

    /// Ids handed out: `1..=len()`.
    fn len(&self) -> u32 {
        self.keys.len() as u32
    }

    /// The key of `id`.
    fn key(&self, id: u32) -> Option<&Arc<SeriesKey>> {
        self.keys.get((id as usize).checked_sub(1)?)
    }

    /// The id of `key`, handing out the next one if it is new (the caller
    /// adds new keys to the spool's dictionary, or [`SeriesIds::truncate`]s).
    fn id(&mut self, key: &Arc<SeriesKey>) -> u32 {
        if let Some(&id) = self.by_key.get(key) {
            let slot = &mut self.keys[id as usize - 1];
            if !Arc::ptr_eq(slot, key) {
                // The same series in a new `Arc`: keep the one in use, so
                // the pointer path finds it (and the old one can be freed).
                *slot = key.clone();
                self.by_key.remove(key);
                self.by_key.insert(key.clone(), id);
            }
            return id;
        }
        self.keys.push(key.clone());
        let id = self.len();
        self.by_key.insert(key.clone(), id);
        id
    }

    /// The id of `key` when the previous reading was of series `prev`: a
    /// poll brings its series in the same order every time, and ids were
    /// handed out in that order, so the next id is the likely answer. That
    /// guess costs a pointer comparison in a sequential array; the map
    /// lookup it saves is a cache miss or two once there are more series
    /// than fit in the cache (measured: about 9 % of the agent's CPU with
    /// 212,000 series).
    fn id_after(&mut self, prev: u32, key: &Arc<SeriesKey>) -> u32 {
        match self.keys.get(prev as usize) {
            Some(next) if Arc::ptr_eq(next, key) => prev + 1,
            _ => self.id(key),
        }
    }

    /// Forgets the ids above `len` (their keys could not be made durable).
    fn truncate(&mut self, len: u32) {
        for (i, key) in self.keys.drain(len as usize..).enumerate() {
            let id = len + 1 + i as u32;
            if self.by_key.get(&key) == Some(&id) {
                self.by_key.remove(&key);
            }
        }
    }
}

/// Runs `f`, which blocks on the disk, without holding up the other tasks
/// of the current tokio worker: through [`tokio::task::block_in_place`] on a
/// multi-threaded runtime (the agent's), inline elsewhere (a current-thread
/// runtime, as in tests, has no other worker to hand its tasks to, and
/// `block_in_place` would panic there).
fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

type Connecting = JoinHandle<Result<Conn, String>>;

/// The uplink actor. Create with [`Uplink::new`], run with [`Uplink::run`].
pub struct Uplink {
    config: Arc<UplinkConfig>,
    intake: mpsc::Receiver<Vec<Reading>>,
    spool: Spool,
    /// The batch being filled (not yet taken).
    open: Vec<Reading>,
    /// Agent-wide series ids of the spool's epoch.
    ids: SeriesIds,
    open_since: Option<Instant>,
    /// The spool is full under the `block` policy: intake pauses.
    blocked: bool,
    /// Records at or below this were sent by an earlier process or stream.
    sent_before: u64,
    /// Highest sequence sent on any stream by this process.
    max_sent: u64,
    /// Oldest unacked sequence when streams ended as INVALID_ARGUMENT or
    /// OUT_OF_RANGE, and how many times in a row.
    rejections: Option<(u64, u32)>,
    stats: UplinkStats,
    stats_tx: tokio::sync::watch::Sender<UplinkStats>,
}

impl Uplink {
    /// `intake` receives one `Vec` per poll from the scheduler; `spool` is
    /// the opened spool.
    pub fn new(
        config: UplinkConfig,
        intake: mpsc::Receiver<Vec<Reading>>,
        mut spool: Spool,
    ) -> (Self, tokio::sync::watch::Receiver<UplinkStats>) {
        let ids = SeriesIds::new(spool.take_series());
        let (stats_tx, stats_rx) = tokio::sync::watch::channel(UplinkStats::default());
        let sent_before = spool.last_seq();
        let stats = UplinkStats {
            dropped_readings: spool.dropped(),
            ..Default::default()
        };
        (
            Uplink {
                config: Arc::new(config),
                intake,
                spool,
                open: Vec::new(),
                ids,
                open_since: None,
                blocked: false,
                sent_before,
                max_sent: 0,
                rejections: None,
                stats,
                stats_tx,
            },
            stats_rx,
        )
    }

    /// Runs until the intake closes (the scheduler stopped) and everything is
    /// acked, or `shutdown_timeout` after the intake closed.
    pub async fn run(mut self) {
        let mut conn: Option<Conn> = None;
        let mut connecting: Option<Connecting> = None;
        let mut attempt: u32 = 0;
        // Agents spread over the collectors by a stable hash of their id,
        // and come back to the same one after a restart; on failure they
        // move on down the list.
        let mut url_index = (fnv1a64(self.config.agent_id.as_bytes())
            % self.config.collectors.len().max(1) as u64) as usize;
        let mut retry_at = Instant::now();
        let mut intake_open = true;
        let mut give_up_at: Option<Instant> = None;
        let flush_tick = self.config.batch_max_delay.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(flush_tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if !intake_open {
                self.seal();
                if self.open.is_empty() && self.spool.first_unacked().is_none() {
                    info!("uplink: everything acked; stopping");
                    break;
                }
                if give_up_at.is_some_and(|t| Instant::now() >= t) {
                    warn!(
                        unacked_batches = self.spool.pending(),
                        open_readings = self.open.len(),
                        "uplink: shutdown deadline passed; unacked batches stay in the spool"
                    );
                    break;
                }
            }
            if conn.is_none() {
                // Nothing is in flight without a stream: every unacked
                // record may be dropped to make room again.
                self.spool.set_in_flight(0);
            }
            if conn.is_none() && connecting.is_none() && Instant::now() >= retry_at {
                let url = self.config.collectors[url_index % self.config.collectors.len()].clone();
                let config = self.config.clone();
                let hello = self.hello();
                // The whole handshake is bounded: a collector behind a dead
                // network may accept TCP and then never answer.
                let limit =
                    config.connect_timeout + config.keepalive_interval + config.keepalive_timeout;
                connecting = Some(tokio::spawn(async move {
                    match tokio::time::timeout(limit, connect(url.clone(), hello, config)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("collector {url}: no welcome within {limit:?}")),
                    }
                }));
            }
            let can_send = conn
                .as_ref()
                .is_some_and(|c| self.spool.last_seq() >= c.next_send);
            let sender = conn.as_ref().filter(|_| can_send).map(|c| c.out.clone());

            tokio::select! {
                readings = self.intake.recv(), if intake_open && !self.blocked => match readings {
                    Some(r) => self.push(r),
                    None => {
                        intake_open = false;
                        give_up_at = Some(Instant::now() + self.config.shutdown_timeout);
                    }
                },
                _ = ticker.tick() => {
                    if self.blocked
                        || self.open_since.is_some_and(|t| t.elapsed() >= self.config.batch_max_delay)
                    {
                        self.seal();
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if conn.is_none() && connecting.is_none() => {}
                _ = tokio::time::sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {}
                done = await_connect(&mut connecting) => {
                    connecting = None;
                    let result = done.unwrap_or_else(|e| Err(format!("connect task failed: {e}")));
                    match result {
                        Ok(mut c) => {
                            // Resend from the oldest unacked batch at once,
                            // without waiting for the Welcome: it saves a
                            // round trip, and whatever the collector already
                            // has is acked again, not stored.
                            debug!(url = %c.url, "stream open");
                            c.next_send = self
                                .spool
                                .first_unacked()
                                .unwrap_or(self.spool.last_seq() + 1);
                            self.spool.set_in_flight(0);
                            self.sent_before = self.sent_before.max(self.max_sent);
                            self.stats.connects += 1;
                            attempt = 0;
                            conn = Some(c);
                        }
                        Err(e) => {
                            attempt += 1;
                            url_index += 1;
                            let delay = backoff(&self.config, attempt);
                            warn!(error = %e, retry_in = ?delay, "cannot reach collector");
                            retry_at = Instant::now() + delay;
                        }
                    }
                }
                permit = reserve(sender) => {
                    let sent = match (permit, conn.as_mut()) {
                        (Ok(permit), Some(c)) => match self.encode_next(c) {
                            Ok(Some(frame)) => {
                                permit.send(frame);
                                true
                            }
                            Ok(None) => true,
                            Err(e) => {
                                error!(error = %e, "spool read failed; reconnecting to resend");
                                false
                            }
                        },
                        _ => {
                            warn!("collector stream closed while sending");
                            false
                        }
                    };
                    if !sent {
                        conn = None;
                        attempt = 1;
                        retry_at = Instant::now() + backoff(&self.config, attempt);
                    }
                }
                frame = next_frame(&mut conn) => {
                    match frame {
                        Some(Ok(pb::CollectorFrame { frame: Some(pb::collector_frame::Frame::Ack(a)) })) => {
                            self.acked(a.seq);
                        }
                        Some(Ok(pb::CollectorFrame { frame: Some(pb::collector_frame::Frame::Welcome(w)) })) => {
                            if let Some(c) = conn.as_mut() {
                                self.welcome(c, w.committed_seq);
                            }
                        }
                        Some(Ok(other)) => debug!(frame = ?other, "unexpected collector frame ignored"),
                        Some(Err(status)) => {
                            warn!(code = %code_name(status.code()), message = %status.message(), "collector stream ended");
                            self.rejected(&status);
                            conn = None;
                            attempt = 1;
                            retry_at = Instant::now() + backoff(&self.config, attempt);
                        }
                        None => {
                            warn!("collector closed the stream");
                            conn = None;
                            attempt = 1;
                            retry_at = Instant::now() + backoff(&self.config, attempt);
                        }
                    }
                }
            }
            // Most turns (a poll's readings taken) change no counter:
            // watchers are told only of changes.
            self.stats_tx.send_if_modified(|published| {
                let changed = *published != self.stats;
                if changed {
                    published.clone_from(&self.stats);
                }
                changed
            });
        }
        if let Some(c) = connecting {
            c.abort();
        }
        self.stats_tx.send_replace(self.stats.clone());
    }

    fn push(&mut self, readings: Vec<Reading>) {
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.extend(readings);
        if self.open.len() >= self.config.batch_max_readings {
            self.seal();
        }
    }

    /// Appends the open batch to the spool: from here on it is taken.
    ///
    /// A durable append waits for the disk (`fdatasync`, sometimes a
    /// directory sync), which can take hundreds of milliseconds on a busy
    /// disk. The uplink must wait for it (nothing is sent or acked before it
    /// is durable, and the dictionary goes before the records that use it),
    /// but the scheduler's tasks must not: on the agent's multi-threaded
    /// runtime the wait runs in [`tokio::task::block_in_place`], which hands
    /// this worker's other tasks to another thread first. Ordering stays as
    /// it was, since the uplink itself still does one thing at a time.
    fn seal(&mut self) {
        if self.open.is_empty() {
            self.open_since = None;
            self.blocked = false;
            self.stats.dropped_readings = self.spool.dropped();
            return;
        }
        if self.spool.syncs() {
            off_the_workers(|| self.seal_now());
        } else {
            self.seal_now();
        }
    }

    fn seal_now(&mut self) {
        // A poll can bring more readings than a batch may hold (a large
        // scrape): seal them as several batches, so the collector never
        // sees a batch over its limit.
        while !self.open.is_empty() {
            let n = self.open.len().min(self.config.batch_max_readings.max(1));
            let known = self.ids.len();
            let (bytes, count, max_series) = encode_batch(&mut self.ids, &self.open[..n]);
            // New series go to the dictionary first, durable before the
            // record that uses them.
            let appended = self
                .add_new_series(known)
                .and_then(|()| self.spool.append(&bytes, count, max_series));
            match appended {
                Ok(Appended::Stored(_)) => {
                    self.stats.sealed_batches += 1;
                }
                // The spool counted them as dropped.
                Ok(Appended::Dropped) => {}
                // `block`: keep the readings and stop taking more until acks
                // make room; the scheduler's polls wait meanwhile.
                Ok(Appended::Full) => {
                    if !self.blocked {
                        warn!(
                            readings = self.open.len(),
                            "spool full: intake paused until the collector acks"
                        );
                    }
                    self.blocked = true;
                    self.stats.dropped_readings = self.spool.dropped();
                    return;
                }
                Err(e) => {
                    error!(error = %e, readings = count, "spool append failed; readings lost (counted as dropped)");
                    self.stats.spool_errors += u64::from(count);
                    if let Err(e) = self.spool.count_lost(u64::from(count)) {
                        error!(error = %e, "cannot record the loss in the spool either");
                    }
                }
            }
            self.open.drain(..n);
        }
        self.open_since = None;
        self.blocked = false;
        self.stats.dropped_readings = self.spool.dropped();
    }

    /// Adds the series that got ids above `known` to the spool's
    /// dictionary; if that fails, they are forgotten again.
    fn add_new_series(&mut self, known: u32) -> Result<(), SpoolError> {
        if self.ids.len() == known {
            return Ok(());
        }
        let new: Vec<&SeriesKey> = self.ids.keys[known as usize..]
            .iter()
            .map(|k| &**k)
            .collect();
        let result = self.spool.add_series(&new);
        if result.is_err() {
            self.ids.truncate(known);
        }
        result
    }

    fn acked(&mut self, seq: u64) {
        self.stats.acked_seq = self.stats.acked_seq.max(seq);
        if let Err(e) = self.spool.ack(seq) {
            error!(error = %e, seq, "spool truncation failed");
        }
        if self.blocked {
            self.seal();
        }
    }

    /// The stream ended with `code`. A batch the collector refuses as
    /// invalid would be resent forever and hold up everything after it
    /// (batches go in order): when the stream ends that way three times in a
    /// row with the same oldest unacked batch, that batch is given up on and
    /// its readings are counted as dropped.
    fn rejected(&mut self, status: &tonic::Status) {
        // Only a refusal of a batch's content counts (the collector names
        // the field, `batch.…`), or a frame too large to decode.
        let refused = match status.code() {
            tonic::Code::InvalidArgument => status.message().starts_with("batch"),
            tonic::Code::OutOfRange => true,
            _ => false,
        };
        if !refused {
            self.rejections = None;
            return;
        }
        let Some(front) = self.spool.first_unacked() else {
            return;
        };
        let count = match self.rejections {
            Some((seq, n)) if seq == front => n + 1,
            _ => 1,
        };
        self.rejections = Some((front, count));
        if count >= 3 {
            match self.spool.drop_front(front) {
                Ok(readings) => error!(
                    seq = front,
                    readings, "the collector refuses this batch for good; dropped it (counted)"
                ),
                Err(e) => error!(seq = front, error = %e, "cannot drop a refused batch"),
            }
            self.rejections = None;
            self.stats.dropped_readings = self.spool.dropped();
        }
    }

    /// The collector's Welcome: it has committed everything up to
    /// `committed` for this epoch.
    fn welcome(&mut self, c: &mut Conn, committed: u64) {
        // Batches sent earlier whose ack never came but which the collector
        // did commit: the Welcome acks them.
        let confirmed = self.spool.unacked_through(committed);
        self.stats.confirmed_by_welcome += confirmed;
        info!(url = %c.url, committed, confirmed, "connected to collector");
        if committed > self.spool.last_seq() {
            warn!(
                committed,
                last_seq = self.spool.last_seq(),
                "collector has committed sequences this spool does not remember; numbering continues above them"
            );
            self.spool.advance_past(committed);
        }
        self.acked(committed);
        c.next_send = c.next_send.max(committed.saturating_add(1));
    }

    fn hello(&self) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: self.config.agent_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: self.spool.epoch(),
                agent_time_ns: now_ns(),
                dropped: self.spool.dropped(),
                last_seq: self.spool.last_seq(),
            })),
        }
    }

    /// Reads the next unsent batch for `c` from the spool, re-interns its
    /// series for this stream, and advances the stream's cursor.
    fn encode_next(&mut self, c: &mut Conn) -> Result<Option<pb::AgentFrame>, SpoolError> {
        let Some(record) = self.spool.read_from(c.next_send)? else {
            c.next_send = self.spool.last_seq() + 1;
            return Ok(None);
        };
        c.next_send = record.seq + 1;
        self.spool.set_in_flight(record.seq);
        let resent = record.seq <= self.sent_before;
        if resent {
            self.stats.resent_batches += 1;
        }
        self.max_sent = self.max_sent.max(record.seq);
        let mut batch = match pb::Batch::decode(record.batch.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                // The CRC matched, so this is a bug, not a disk error; skip
                // the record rather than wedge the stream.
                error!(seq = record.seq, error = %e, "spooled batch does not decode; skipped");
                return Ok(None);
            }
        };
        // Declare on this stream the series it has not seen yet.
        let decls = match c.declared.missing(&batch, &self.ids) {
            Ok(decls) => decls,
            Err(id) => {
                // The spool checks every record's ids against its
                // dictionary, so this is a bug, not a disk error: skip the
                // record rather than wedge the stream.
                error!(
                    seq = record.seq,
                    series = id,
                    "spooled batch uses an unknown series; skipped"
                );
                return Ok(None);
            }
        };
        batch.series = decls;
        batch.seq = record.seq;
        batch.resent = resent;
        batch.dropped = self.spool.dropped();
        batch.last_seq = self.spool.last_seq();
        Ok(Some(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Batch(batch)),
        }))
    }
}

/// Columns of one value kind being filled: series ids and timestamps as
/// deltas to the previous reading of the group.
#[derive(Debug, Default)]
struct KeyColumns {
    series_delta: Vec<i64>,
    base_ts_ns: i64,
    ts_delta: Vec<i64>,
    prev: (i64, i64),
}

impl KeyColumns {
    fn push(&mut self, id: u32, ts_ns: i64) {
        if self.series_delta.is_empty() {
            self.base_ts_ns = ts_ns;
            self.prev = (0, ts_ns);
        }
        self.series_delta.push(i64::from(id) - self.prev.0);
        // Timestamps of honest readings are after 1970, so the difference
        // of two fits; the collector refuses the others either way.
        self.ts_delta.push(ts_ns.wrapping_sub(self.prev.1));
        self.prev = (i64::from(id), ts_ns);
    }
}

/// Encodes readings as a spooled batch: agent-wide series ids, floats,
/// integers and booleans as columns, strings and failures as rows. Gives
/// the bytes, the number of readings and the highest series id used; new
/// series get their ids in `ids`.
fn encode_batch(ids: &mut SeriesIds, readings: &[Reading]) -> (Vec<u8>, u32, u32) {
    let (mut f64_keys, mut f64_values) = (KeyColumns::default(), Vec::new());
    let (mut i64_keys, mut i64_values) = (KeyColumns::default(), Vec::new());
    let (mut bool_keys, mut bool_values) = (KeyColumns::default(), Vec::new());
    let mut rows = Vec::new();
    let (mut max_series, mut prev) = (0, 0);
    for r in readings {
        let id = ids.id_after(prev, &r.series);
        prev = id;
        max_series = max_series.max(id);
        match &r.value {
            Value::F64(v) => {
                f64_keys.push(id, r.ts_ns);
                f64_values.push(*v);
            }
            Value::I64(v) => {
                i64_keys.push(id, r.ts_ns);
                i64_values.push(*v);
            }
            Value::Bool(v) => {
                bool_keys.push(id, r.ts_ns);
                bool_values.push(*v);
            }
            other => rows.push(pb::Reading {
                series: id,
                ts_ns: r.ts_ns,
                value: Some(encode_value(other)),
            }),
        }
    }
    let columns = pb::Columns {
        f64: (!f64_values.is_empty()).then_some(pb::FloatColumns {
            series_delta: f64_keys.series_delta,
            base_ts_ns: f64_keys.base_ts_ns,
            ts_delta: f64_keys.ts_delta,
            values: f64_values,
        }),
        i64: (!i64_values.is_empty()).then_some(pb::IntColumns {
            series_delta: i64_keys.series_delta,
            base_ts_ns: i64_keys.base_ts_ns,
            ts_delta: i64_keys.ts_delta,
            values: i64_values,
        }),
        bool: (!bool_values.is_empty()).then_some(pb::BoolColumns {
            series_delta: bool_keys.series_delta,
            base_ts_ns: bool_keys.base_ts_ns,
            ts_delta: bool_keys.ts_delta,
            values: bool_values,
        }),
    };
    let batch = pb::Batch {
        readings: rows,
        columns: Some(columns),
        ..Default::default()
    };
    (batch.encode_to_vec(), readings.len() as u32, max_series)
}

/// Calls `f` with the series id of every reading of `batch`, rows and
/// columns, in order (ids repeat).
fn for_each_series(batch: &pb::Batch, mut f: impl FnMut(u32)) {
    for r in &batch.readings {
        f(r.series);
    }
    let Some(c) = &batch.columns else {
        return;
    };
    let groups = [
        c.f64.as_ref().map(|g| &g.series_delta),
        c.i64.as_ref().map(|g| &g.series_delta),
        c.bool.as_ref().map(|g| &g.series_delta),
    ];
    for deltas in groups.into_iter().flatten() {
        let mut id = 0i64;
        for d in deltas {
            id = id.wrapping_add(*d);
            f(id as u32);
        }
    }
}

/// The declaration of series `id` on a stream.
fn series_decl(id: u32, key: &SeriesKey) -> pb::SeriesDecl {
    pb::SeriesDecl {
        id,
        device: clip(&key.device, MAX_NAME_BYTES),
        metric: clip(&key.metric, MAX_NAME_BYTES),
        labels: key
            .labels
            .iter()
            .take(MAX_LABELS)
            .map(|(k, v)| (clip(k, MAX_NAME_BYTES), clip(v, MAX_NAME_BYTES)))
            .collect(),
        unit: clip(&key.unit, MAX_NAME_BYTES),
    }
}

/// The readings of a spooled record, with their series from the spool's
/// dictionary (`series[n - 1]` is series `n`, see [`Spool::take_series`]):
/// what a test or tool needs to look into a spool.
pub fn spooled_readings(
    record: &Record,
    series: &[Arc<SeriesKey>],
) -> Result<Vec<Reading>, String> {
    let batch = pb::Batch::decode(record.batch.as_slice())
        .map_err(|e| format!("spooled batch {}: {e}", record.seq))?;
    let key = |id: u32| {
        (id as usize)
            .checked_sub(1)
            .and_then(|i| series.get(i))
            .cloned()
            .ok_or_else(|| format!("spooled batch {}: unknown series {id}", record.seq))
    };
    let mut out = Vec::with_capacity(record.readings as usize);
    for r in &batch.readings {
        let value = match &r.value {
            Some(pb::reading::Value::Str(s)) => Value::Str(s.clone()),
            Some(pb::reading::Value::Failure(f)) => Value::Failed {
                kind: if f.status == pb::PollStatus::Timeout as i32 {
                    FailureKind::Timeout
                } else {
                    FailureKind::Error
                },
                message: f.message.clone(),
            },
            Some(pb::reading::Value::F64(v)) => Value::F64(*v),
            Some(pb::reading::Value::I64(v)) => Value::I64(*v),
            Some(pb::reading::Value::Bool(v)) => Value::Bool(*v),
            None => {
                return Err(format!(
                    "spooled batch {}: a row without a value",
                    record.seq
                ));
            }
        };
        out.push(Reading {
            series: key(r.series)?,
            ts_ns: r.ts_ns,
            value,
        });
    }
    let c = batch.columns.unwrap_or_default();
    let mut group = |deltas: &[i64], base: i64, ts_delta: &[i64], values: Vec<Value>| {
        let (mut id, mut ts) = (0i64, base);
        for ((ds, dt), value) in deltas.iter().zip(ts_delta).zip(values) {
            id = id.wrapping_add(*ds);
            ts = ts.wrapping_add(*dt);
            out.push(Reading {
                series: key(id as u32)?,
                ts_ns: ts,
                value,
            });
        }
        Ok::<(), String>(())
    };
    if let Some(g) = &c.f64 {
        let values = g.values.iter().map(|v| Value::F64(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    if let Some(g) = &c.i64 {
        let values = g.values.iter().map(|v| Value::I64(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    if let Some(g) = &c.bool {
        let values = g.values.iter().map(|v| Value::Bool(*v)).collect();
        group(&g.series_delta, g.base_ts_ns, &g.ts_delta, values)?;
    }
    Ok(out)
}

/// Waits for the connect task, or forever when there is none.
async fn await_connect(
    connecting: &mut Option<Connecting>,
) -> Result<Result<Conn, String>, tokio::task::JoinError> {
    match connecting.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Reserves room for one frame on the stream, or waits forever when there
/// is nothing to send.
async fn reserve(
    sender: Option<mpsc::Sender<pb::AgentFrame>>,
) -> Result<mpsc::OwnedPermit<pb::AgentFrame>, mpsc::error::SendError<()>> {
    match sender {
        Some(tx) => tx.reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// The next frame from the collector, or waits forever when not connected.
async fn next_frame(conn: &mut Option<Conn>) -> Option<Result<pb::CollectorFrame, tonic::Status>> {
    match conn.as_mut() {
        Some(c) => c.inbound.next().await,
        None => std::future::pending().await,
    }
}

fn encode_value(v: &Value) -> pb::reading::Value {
    use pb::reading::Value as V;
    match v {
        Value::F64(x) => V::F64(*x),
        Value::I64(x) => V::I64(*x),
        Value::Bool(x) => V::Bool(*x),
        Value::Str(x) => V::Str(clip(x, MAX_VALUE_BYTES)),
        Value::Failed { kind, message } => V::Failure(pb::Failure {
            status: match kind {
                FailureKind::Timeout => pb::PollStatus::Timeout as i32,
                FailureKind::Error => pb::PollStatus::Error as i32,
            },
            message: clip(message, MAX_VALUE_BYTES),
        }),
    }
}

use tributary_proto::limits::{MAX_LABELS, MAX_NAME_BYTES, MAX_VALUE_BYTES};

/// `s`, cut at a character boundary to at most `max` bytes. The collector
/// rejects a batch with a longer string, and a batch it rejects would be
/// resent forever, so the agent cuts before it spools.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// FNV-1a, 64 bit, followed by the MurmurHash3 finalizer: a hash that stays
/// the same across Rust versions and platforms (unlike `DefaultHasher`).
/// Without the finalizer the low bits of FNV-1a follow the last byte's (ids
/// `edge-0`, `edge-2`, ... would all pick the same collector of two).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Exponential backoff with full jitter, between the configured bounds.
fn backoff(config: &UplinkConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_min
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.backoff_max);
    let jittered = rand::rng().random_range(
        config.backoff_min.as_nanos()..=exp.as_nanos().max(config.backoff_min.as_nanos()),
    );
    Duration::from_nanos(jittered.min(u64::MAX as u128) as u64)
}

/// Opens a stream to `url`, sends `hello`, and waits for the Welcome.
async fn connect(
    url: String,
    hello: pb::AgentFrame,
    config: Arc<UplinkConfig>,
) -> Result<Conn, String> {
    let endpoint = crate::tls::endpoint(&url, config.tls.as_ref())
        .map_err(|e| format!("collector {url}: {e}"))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("collector {url}: {}", error_chain(&e)))?;
    let mut client =
        pb::ingest_client::IngestClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    // Frames encoded ahead of the stream. Two keep it busy; each may be a
    // batch of thousands of readings with their series declarations (the
    // first batches after a start declare every series: megabytes), so
    // more would only raise the agent's peak memory.
    let (tx, rx) = mpsc::channel(2);
    tx.send(hello)
        .await
        .map_err(|_| format!("collector {url}: stream closed before hello"))?;
    let response = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("collector {url}: {}: {}", code_name(s.code()), s.message()))?;
    Ok(Conn {
        url,
        out: tx,
        inbound: response.into_inner(),
        next_send: 0,
        declared: Declared::default(),
    })
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").to_lowercase()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::reading::Labels;

    fn key(device: &str, metric: &str) -> Arc<SeriesKey> {
        Arc::new(SeriesKey {
            device: device.into(),
            metric: metric.into(),
            labels: Labels::from_map(&BTreeMap::from([("site".to_owned(), "x".to_owned())])),
            unit: "W".into(),
        })
    }

    fn record(seq: u64, bytes: Vec<u8>, readings: u32, series: u32) -> Record {
        Record {
            seq,
            readings,
            batch: bytes,
            series,
        }
    }

    #[test]
    fn series_ids_are_stable_by_pointer_and_found_again_by_content() {
        let (a, b) = (key("d", "a"), key("d", "b"));
        let mut ids = SeriesIds::default();
        assert_eq!((ids.id(&a), ids.id(&b), ids.id(&a)), (1, 2, 1));
        // The guess of the next id is only taken when it is right.
        assert_eq!(
            (
                ids.id_after(1, &b),
                ids.id_after(1, &a),
                ids.id_after(2, &a)
            ),
            (2, 1, 1)
        );
        // After a restart the keys come from the dictionary, in other Arcs.
        let loaded: Vec<Arc<SeriesKey>> =
            ids.keys.iter().map(|k| Arc::new((**k).clone())).collect();
        let mut ids = SeriesIds::new(loaded);
        let b2 = key("d", "b");
        assert_eq!(ids.id(&b2), 2, "same content, same id");
        assert!(
            Arc::ptr_eq(ids.key(2).unwrap(), &b2),
            "the new Arc is the one kept"
        );
        assert_eq!(
            (ids.keys.len(), ids.by_key.len()),
            (2, 2),
            "one entry per id"
        );
        assert_eq!(ids.id(&key("d", "c")), 3);
        ids.truncate(2);
        assert_eq!(ids.len(), 2);
        assert_eq!((ids.keys.len(), ids.by_key.len()), (2, 2));
        assert_eq!(
            ids.id(&key("d", "other")),
            3,
            "a forgotten id is handed out again"
        );
    }

    #[test]
    fn a_spooled_batch_holds_every_reading_and_no_names() {
        let (volts, count, on, state) = (
            key("m", "volts"),
            key("m", "count"),
            key("m", "on"),
            key("m", "state"),
        );
        let t = 1_700_000_000_000_000_000;
        let readings = vec![
            Reading {
                series: volts.clone(),
                ts_ns: t,
                value: Value::F64(230.5),
            },
            Reading {
                series: count.clone(),
                ts_ns: t,
                value: Value::I64(-3),
            },
            Reading {
                series: on.clone(),
                ts_ns: t + 1,
                value: Value::Bool(true),
            },
            Reading {
                series: state.clone(),
                ts_ns: t + 2,
                value: Value::Str("idle".into()),
            },
            Reading {
                series: volts.clone(),
                ts_ns: t + 1_000_000_000,
                value: Value::Failed {
                    kind: FailureKind::Timeout,
                    message: "slow".into(),
                },
            },
            Reading {
                series: volts.clone(),
                ts_ns: t + 2_000_000_000,
                value: Value::F64(f64::MIN),
            },
        ];
        let mut ids = SeriesIds::default();
        let (bytes, count_n, max_series) = encode_batch(&mut ids, &readings);
        assert_eq!((count_n, max_series), (6, 4));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("volts") && !text.contains("site"),
            "no names in records"
        );
        let mut back = spooled_readings(&record(1, bytes, 6, 4), &ids.keys).unwrap();
        // Columns come grouped by kind: compare as sets in a fixed order.
        let order = |r: &Reading| (r.ts_ns, r.series.metric.clone());
        back.sort_by_key(order);
        let mut want = readings;
        want.sort_by_key(order);
        assert_eq!(back, want);
    }

    #[test]
    fn a_poll_of_floats_costs_at_most_eleven_bytes_a_reading() {
        // 100 gauges of one poll: consecutive ids, one timestamp.
        let keys: Vec<_> = (0..100).map(|i| key("dev", &format!("g{i}"))).collect();
        let mut ids = SeriesIds::default();
        let mut readings = Vec::new();
        for poll in 0..10i64 {
            for k in &keys {
                readings.push(Reading {
                    series: k.clone(),
                    ts_ns: 1_700_000_000_000_000_000 + poll * 100_000_000,
                    value: Value::F64(poll as f64 * 0.1),
                });
            }
        }
        let (bytes, n, _) = encode_batch(&mut ids, &readings);
        // 8 B value + 1 B series delta + 1 B time delta, plus the group's
        // few bytes of framing.
        assert!(
            bytes.len() <= 11 * n as usize,
            "{} bytes for {n} readings",
            bytes.len()
        );
    }

    #[test]
    fn a_scrape_spools_about_ten_bytes_a_reading_without_names() {
        // The vs-prometheus shape: targets of 105 gauges plus `up`, each
        // scrape stamped once, 1,000 readings per batch. The previous
        // layout (a declaration per series in every record, rows) took
        // 67.4 bytes per reading for these very keys.
        let mut keys = Vec::new();
        for t in 0..10 {
            for i in 0..106 {
                keys.push(Arc::new(SeriesKey {
                    device: format!("target-{t:04}").into(),
                    metric: if i == 105 { "up" } else { "sim_extra_value" }.into(),
                    labels: if i == 105 {
                        Labels::default()
                    } else {
                        Labels::from_map(&BTreeMap::from([("i".to_owned(), i.to_string())]))
                    },
                    unit: "".into(),
                }));
            }
        }
        let readings: Vec<Reading> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| Reading {
                series: k.clone(),
                ts_ns: 1_700_000_000_000_000_000 + (n / 106) as i64 * 500_000,
                value: if &*k.metric == "up" {
                    Value::I64(1)
                } else {
                    Value::F64((n as f64 + 7.0) / 2.0)
                },
            })
            .collect();
        let mut ids = SeriesIds::default();
        let (bytes, n, _) = encode_batch(&mut ids, &readings[..1000]);
        let per_reading = bytes.len() as f64 / f64::from(n);
        println!("{per_reading:.2} bytes per reading spooled");
        assert!(per_reading < 10.5, "{per_reading:.2} bytes per reading");
    }

    #[test]
    fn each_stream_declares_a_series_once_the_first_time_it_is_used() {
        let (a, b) = (key("d", "a"), key("d", "b"));
        let mut ids = SeriesIds::default();
        let r = |k: &Arc<SeriesKey>, v: f64| Reading {
            series: k.clone(),
            ts_ns: 5,
            value: Value::F64(v),
        };
        let (first, _, _) = encode_batch(&mut ids, &[r(&a, 1.0), r(&a, 2.0)]);
        let (second, _, _) = encode_batch(&mut ids, &[r(&b, 1.0), r(&a, 3.0)]);
        let first = pb::Batch::decode(first.as_slice()).unwrap();
        let second = pb::Batch::decode(second.as_slice()).unwrap();
        let declared_ids = |d: Vec<pb::SeriesDecl>| {
            d.iter()
                .map(|d| (d.id, d.metric.clone()))
                .collect::<Vec<_>>()
        };
        let mut stream = Declared::default();
        assert_eq!(
            declared_ids(stream.missing(&first, &ids).unwrap()),
            vec![(1, "a".to_owned())]
        );
        assert_eq!(
            declared_ids(stream.missing(&second, &ids).unwrap()),
            vec![(2, "b".to_owned())]
        );
        assert!(stream.missing(&second, &ids).unwrap().is_empty());
        // A new stream declares again what it uses.
        let mut stream = Declared::default();
        assert_eq!(stream.missing(&second, &ids).unwrap().len(), 2);
        // An unknown id declares nothing and leaves nothing marked.
        let mut stream = Declared::default();
        let mut bad = second.clone();
        bad.readings.push(pb::Reading {
            series: 9,
            ts_ns: 5,
            value: Some(pb::reading::Value::I64(1)),
        });
        assert_eq!(stream.missing(&bad, &ids), Err(9));
        assert_eq!(stream.missing(&second, &ids).unwrap().len(), 2);
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        assert_eq!(super::clip("abc", 5), "abc");
        assert_eq!(super::clip("abcdef", 4), "abcd");
        // 'é' is two bytes: never cut inside it.
        assert_eq!(super::clip("aé", 2), "a");
    }

    #[test]
    fn agents_spread_over_collectors() {
        for n in [2u64, 3, 5] {
            let mut per = vec![0; n as usize];
            for i in 0..1000 {
                per[(fnv1a64(format!("edge-{i}").as_bytes()) % n) as usize] += 1;
            }
            // Each collector gets a fair share: 1000 / n, within 30 %
            // (more than 4 standard deviations for these sizes).
            for c in &per {
                assert!(*c * n > 700 && *c * n < 1300, "{n} collectors: {per:?}");
            }
        }
        // Stable across runs and platforms.
        assert_eq!(fnv1a64(b"edge-1"), fnv1a64(b"edge-1"));
    }
}
