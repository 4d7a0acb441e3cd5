//! One session per agent stream: the gRPC edge of ingest.
//!
//! A session reads the agent's frames, checks them (Hello first, strictly
//! increasing sequence numbers, declared series, sane strings and
//! timestamps, in both forms a batch may carry readings in: rows and
//! columns), resolves the stream's interned series ids to global ids
//! through the merger, and forwards whole batches. It owns only the stream's
//! interning table and its last sequence; it holds no store handle. Acks come
//! back from the merger through a `watch` channel, which coalesces them and
//! never blocks the merger.
//!
//! A bad frame ends the stream with INVALID_ARGUMENT naming the field;
//! nothing of that batch is forwarded, and other streams are unaffected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use tributary_proto::{limits, v1 as pb};

use crate::merger::{IncomingBatch, MergerHandle};
use crate::model::{NewReading, SeriesKey, StoredValue, now_ns};

/// Limits a session enforces on what an agent sends.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest agent id, device, metric, label key or value, unit (bytes).
    pub max_name_len: usize,
    /// Longest string value or failure message (bytes).
    pub max_value_len: usize,
    /// Most series one stream may declare.
    pub max_series_per_stream: usize,
    /// Most labels on one series.
    pub max_labels: usize,
    /// Most readings in one batch.
    pub max_readings_per_batch: usize,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// How long a session waits, at shutdown, for its last batches' acks.
    pub drain_timeout: Duration,
    /// How far a reading's timestamp may be ahead of the collector's clock,
    /// and the agent's clock (in its Hello) off in either direction, before
    /// readings are flagged as skewed. They are stored all the same.
    pub max_clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: limits::MAX_NAME_BYTES,
            max_value_len: limits::MAX_VALUE_BYTES,
            max_series_per_stream: 1_000_000,
            max_labels: limits::MAX_LABELS,
            max_readings_per_batch: limits::MAX_READINGS_PER_BATCH,
            hello_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(300),
        }
    }
}

/// Who is on the other end of a stream, as far as TLS can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAuth {
    /// No client certificates are checked (plaintext, or TLS without a
    /// client CA): the agent id of the Hello is taken as it is.
    Unverified,
    /// Mutual TLS: the identity of the verified client certificate. A Hello
    /// claiming another agent id is refused with PERMISSION_DENIED.
    Certificate(Arc<str>),
    /// Mutual TLS, but the connection presented no certificate (possible
    /// only when Query does not require one): UNAUTHENTICATED.
    Missing,
    /// Mutual TLS, a verified certificate without a usable identity.
    Invalid(String),
}

/// Checks that a stream may speak for `agent_id`: the certificate identity
/// must be that id (mutual TLS), and the id must be on the allowlist when
/// there is one.
pub fn authorize(
    agent_id: &str,
    auth: &PeerAuth,
    allowed: Option<&HashSet<String>>,
) -> Result<(), Status> {
    match auth {
        PeerAuth::Unverified => {}
        PeerAuth::Certificate(identity) if **identity == *agent_id => {}
        PeerAuth::Certificate(identity) => {
            return Err(Status::permission_denied(format!(
                "hello.agent_id: {agent_id:?} does not match the client certificate identity {identity:?}"
            )));
        }
        PeerAuth::Missing => {
            return Err(Status::unauthenticated(
                "ingest requires a client certificate",
            ));
        }
        PeerAuth::Invalid(why) => return Err(Status::unauthenticated(why.clone())),
    }
    if let Some(allowed) = allowed
        && !allowed.contains(agent_id)
    {
        return Err(Status::permission_denied(format!(
            "hello.agent_id: {agent_id:?} is not an allowed agent"
        )));
    }
    Ok(())
}

/// Sessions get unique ids so the merger can tell an agent's old stream
/// from its new one.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Frames sent back to the agent.
pub type Outbound = mpsc::Sender<Result<pb::CollectorFrame, Status>>;

/// One agent stream.
pub struct Session {
    merger: MergerHandle,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    peer: String,
    auth: PeerAuth,
    allowed: Option<Arc<HashSet<String>>>,
}

/// Identity and progress of a stream after its Hello.
struct Stream {
    agent: Arc<str>,
    epoch: u64,
    last_seq: u64,
    /// Stream-local series id → global series id.
    series: StreamSeries,
    ack_tx: Arc<watch::Sender<u64>>,
    /// The agent's clock (in its Hello) was off by more than the limit:
    /// every reading of this stream counts as skewed.
    clock_skewed: bool,
    /// A skewed reading was already logged on this stream (log once).
    skew_logged: bool,
}

impl Session {
    pub fn new(
        merger: MergerHandle,
        limits: Arc<Limits>,
        shutdown: CancellationToken,
        peer: String,
    ) -> Self {
        Session {
            merger,
            limits,
            shutdown,
            peer,
            auth: PeerAuth::Unverified,
            allowed: None,
        }
    }

    /// Sets what TLS knows of the peer and the optional allowlist of agent
    /// ids; by default any agent id is accepted.
    pub fn with_auth(mut self, auth: PeerAuth, allowed: Option<Arc<HashSet<String>>>) -> Self {
        self.auth = auth;
        self.allowed = allowed;
        self
    }

    /// Runs the stream to its end. Errors are sent to the agent as the
    /// stream's final status.
    pub async fn run(self, inbound: Streaming<pb::AgentFrame>, out: Outbound) {
        let peer = self.peer.clone();
        if let Err(status) = self.serve(inbound, &out).await {
            if status.code() == tonic::Code::InvalidArgument {
                warn!(%peer, error = %status.message(), "stream rejected");
            } else {
                debug!(%peer, status = %status, "stream ended");
            }
            let _ = out.send(Err(status)).await;
        }
    }

    async fn serve(
        self,
        mut inbound: Streaming<pb::AgentFrame>,
        out: &Outbound,
    ) -> Result<(), Status> {
        let hello = tokio::select! {
            f = tokio::time::timeout(self.limits.hello_timeout, inbound.next()) => match f {
                Err(_) => return Err(Status::deadline_exceeded("no hello within the hello timeout")),
                Ok(None) => return Ok(()),
                Ok(Some(Err(status))) => return Err(status),
                Ok(Some(Ok(frame))) => frame,
            },
            _ = self.shutdown.cancelled() => {
                return Err(Status::unavailable("collector shutting down"));
            }
        };
        let hello = match hello.frame {
            Some(pb::agent_frame::Frame::Hello(h)) => h,
            Some(pb::agent_frame::Frame::Batch(_)) => {
                return Err(Status::invalid_argument("batch before hello"));
            }
            None => return Err(Status::invalid_argument("frame: empty, expected hello")),
        };
        check_hello(&hello, &self.limits)?;
        if let Err(status) = authorize(&hello.agent_id, &self.auth, self.allowed.as_deref()) {
            warn!(peer = %self.peer, agent = %hello.agent_id, error = %status.message(), "stream refused");
            return Err(status);
        }
        let clock_offset_ns = if hello.agent_time_ns > 0 {
            hello.agent_time_ns.saturating_sub(now_ns())
        } else {
            0
        };
        let clock_skewed = clock_offset_ns.unsigned_abs() > self.max_skew_ns();
        if clock_skewed {
            warn!(
                agent = %hello.agent_id,
                peer = %self.peer,
                offset = %format_offset(clock_offset_ns),
                max = ?self.limits.max_clock_skew,
                "agent clock is off: its readings are stored but counted as skewed"
            );
        }
        let agent: Arc<str> = Arc::from(hello.agent_id.as_str());
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let committed = self
            .merger
            .hello(
                agent.clone(),
                hello.epoch,
                (clamp_counter(hello.dropped), clamp_counter(hello.last_seq)),
                self.peer.clone(),
                session,
            )
            .await
            .map_err(unavailable)?;
        info!(agent = %agent, peer = %self.peer, epoch = hello.epoch, committed, "agent connected");
        let (ack_tx, mut ack_rx) = watch::channel(committed);
        let mut stream = Stream {
            agent: agent.clone(),
            epoch: hello.epoch,
            last_seq: 0,
            series: StreamSeries::default(),
            ack_tx: Arc::new(ack_tx),
            clock_skewed,
            skew_logged: clock_skewed,
        };
        let welcome = pb::CollectorFrame {
            frame: Some(pb::collector_frame::Frame::Welcome(pb::Welcome {
                committed_seq: committed,
                collector_time_ns: now_ns(),
            })),
        };
        if out.send(Ok(welcome)).await.is_err() {
            self.merger.goodbye(agent, session);
            return Ok(());
        }
        let result = self
            .stream_loop(&mut stream, &mut inbound, &mut ack_rx, out)
            .await;
        self.merger.goodbye(agent.clone(), session);
        info!(agent = %agent, peer = %self.peer, "agent stream ended");
        result
    }

    async fn stream_loop(
        &self,
        stream: &mut Stream,
        inbound: &mut Streaming<pb::AgentFrame>,
        ack_rx: &mut watch::Receiver<u64>,
        out: &Outbound,
    ) -> Result<(), Status> {
        let mut acked = *ack_rx.borrow_and_update();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    return self.drain(stream, ack_rx, out, acked).await;
                }
                changed = ack_rx.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("collector shutting down"));
                    }
                    let seq = *ack_rx.borrow_and_update();
                    if seq > acked {
                        acked = seq;
                        if out.send(Ok(ack_frame(seq))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                frame = inbound.next() => match frame {
                    // The agent half-closed: ack what is in flight, then end.
                    None => return self.drain(stream, ack_rx, out, acked).await,
                    // A frame that could not be decoded (too large, not
                    // protobuf) or a reset: end with that status, so an agent
                    // that is still listening learns why.
                    Some(Err(status)) => {
                        debug!(agent = %stream.agent, %status, "inbound stream error");
                        return Err(status);
                    }
                    Some(Ok(frame)) => self.handle_frame(stream, frame).await?,
                },
            }
        }
    }

    /// Waits (bounded) until everything forwarded is acked, sends the last
    /// ack and ends the stream.
    async fn drain(
        &self,
        stream: &Stream,
        ack_rx: &mut watch::Receiver<u64>,
        out: &Outbound,
        acked: u64,
    ) -> Result<(), Status> {
        let target = stream.last_seq;
        let reached = tokio::time::timeout(
            self.limits.drain_timeout,
            ack_rx.wait_for(|seq| *seq >= target),
        )
        .await
        .map(|r| r.is_ok());
        let seq = *ack_rx.borrow();
        if seq > acked {
            let _ = out.send(Ok(ack_frame(seq))).await;
        }
        if reached.is_err() {
            warn!(agent = %stream.agent, target, acked = seq, "drain deadline passed before every batch was acked");
        }
        if self.shutdown.is_cancelled() {
            Err(Status::unavailable("collector shutting down"))
        } else {
            Ok(())
        }
    }

    async fn handle_frame(&self, stream: &mut Stream, frame: pb::AgentFrame) -> Result<(), Status> {
        let batch = match frame.frame {
            Some(pb::agent_frame::Frame::Batch(b)) => b,
            Some(pb::agent_frame::Frame::Hello(_)) => {
                return Err(Status::invalid_argument("hello: sent twice on one stream"));
            }
            None => return Err(Status::invalid_argument("frame: empty")),
        };
        // Validate everything before touching any state, so a bad batch
        // leaves nothing behind.
        let new_series = check_batch(
            &batch,
            &stream.agent,
            stream.last_seq,
            &stream.series,
            &self.limits,
        )?;
        if !new_series.is_empty() {
            let (new_ids, new_keys): (Vec<u32>, Vec<SeriesKey>) = new_series.into_iter().unzip();
            let ids = self.merger.resolve(new_keys).await.map_err(unavailable)?;
            stream.series.extend(new_ids.into_iter().zip(ids));
        }
        let seq = batch.seq;
        let (dropped, last_seq, resent) = (batch.dropped, batch.last_seq, batch.resent);
        let readings = batch_readings(batch, &stream.series);
        let skewed_readings = self.count_skewed(stream, &readings);
        stream.last_seq = seq;
        self.merger
            .batch(IncomingBatch {
                agent: stream.agent.clone(),
                epoch: stream.epoch,
                seq,
                dropped: clamp_counter(dropped),
                last_seq: clamp_counter(last_seq),
                resent,
                skewed_readings,
                received_ns: now_ns(),
                readings,
                ack: stream.ack_tx.clone(),
            })
            .await
            .map_err(unavailable)
    }

    fn max_skew_ns(&self) -> u64 {
        u64::try_from(self.limits.max_clock_skew.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Readings of a batch whose time is not to be trusted: all of them when
    /// the agent's clock is off, else those too far in the future.
    fn count_skewed(&self, stream: &mut Stream, readings: &[NewReading]) -> u64 {
        if stream.clock_skewed {
            return readings.len() as u64;
        }
        let limit = now_ns().saturating_add(i64::try_from(self.max_skew_ns()).unwrap_or(i64::MAX));
        let ahead = readings.iter().filter(|r| r.ts_ns > limit);
        let n = ahead.clone().count() as u64;
        if n > 0 && !stream.skew_logged {
            stream.skew_logged = true;
            let max_ts = ahead.map(|r| r.ts_ns).max().unwrap_or(limit);
            warn!(
                agent = %stream.agent,
                ahead = %format_offset(max_ts.saturating_sub(now_ns())),
                "readings time-stamped in the future: stored but counted as skewed (logged once per stream)"
            );
        }
        n
    }
}

/// `+3m12s` / `-2h` style offset for logs.
fn format_offset(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let d = Duration::from_secs(ns.unsigned_abs() / 1_000_000_000);
    format!("{sign}{}", humantime::format_duration(d))
}

/// Checks a Hello's own fields (who it may speak for is [`authorize`]).
pub fn check_hello(hello: &pb::Hello, limits: &Limits) -> Result<(), Status> {
    check_name("hello.agent_id", &hello.agent_id, limits.max_name_len)?;
    if !hello
        .agent_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Status::invalid_argument(
            "hello.agent_id: only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// A stream's series: stream-local id → global id. Agents number their
/// series from 1 upwards, so ids up to a bound proportional to the number
/// declared live in a table indexed by id (one load per reading, which the
/// ingest profile showed matters: two SipHash lookups per reading were 16 %
/// of the collector's CPU); any other id, which the protocol allows, goes to
/// a map, so a hostile id costs no memory beyond its entry.
#[derive(Debug, Default, Clone)]
pub struct StreamSeries {
    dense: Vec<Option<i64>>,
    sparse: HashMap<u32, i64>,
    len: usize,
}

impl StreamSeries {
    /// Ids below this always go to the table.
    const DENSE_MIN: usize = 1024;

    /// The global id of stream-local `id`.
    pub fn get(&self, id: &u32) -> Option<&i64> {
        match self.dense.get(*id as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(id),
        }
    }

    /// Whether stream-local `id` is declared.
    pub fn contains_key(&self, id: &u32) -> bool {
        self.get(id).is_some()
    }

    /// Series declared so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no series is declared.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Declares `id` as `global` (a redeclaration replaces it; `check_batch`
    /// refuses those before this is called).
    pub fn insert(&mut self, id: u32, global: i64) {
        let index = id as usize;
        let bound = Self::DENSE_MIN.max(self.len.saturating_add(1).saturating_mul(4));
        if index >= self.dense.len() && index < bound {
            // Grow geometrically, so ids declared one by one move the map's
            // entries over only O(log n) times.
            let new_len = (index + 1)
                .max(self.dense.len().saturating_mul(2))
                .min(bound);
            self.dense.resize(new_len, None);
            // Ids the table now covers move over from the map.
            let moved: Vec<u32> = self
                .sparse
                .keys()
                .copied()
                .filter(|&k| (k as usize) < self.dense.len())
                .collect();
            for k in moved {
                if let Some(g) = self.sparse.remove(&k) {
                    self.dense[k as usize] = Some(g);
                }
            }
        }
        let previous = match self.dense.get_mut(index) {
            Some(slot) => slot.replace(global),
            None => self.sparse.insert(id, global),
        };
        if previous.is_none() {
            self.len += 1;
        }
    }
}

impl Extend<(u32, i64)> for StreamSeries {
    fn extend<I: IntoIterator<Item = (u32, i64)>>(&mut self, iter: I) {
        for (id, global) in iter {
            self.insert(id, global);
        }
    }
}

impl FromIterator<(u32, i64)> for StreamSeries {
    fn from_iter<I: IntoIterator<Item = (u32, i64)>>(iter: I) -> Self {
        let mut s = StreamSeries::default();
        s.extend(iter);
        s
    }
}

/// Checks a whole batch of `agent`'s stream, whose last sequence is
/// `last_seq` and whose declared series are `declared`, against `limits`.
/// Pure (no state is touched), so a bad batch leaves nothing behind, and so
/// it can be fuzzed. Returns the series the batch declares, in order.
pub fn check_batch(
    batch: &pb::Batch,
    agent: &str,
    last_seq: u64,
    declared: &StreamSeries,
    limits: &Limits,
) -> Result<Vec<(u32, SeriesKey)>, Status> {
    if batch.seq <= last_seq {
        return Err(Status::invalid_argument(format!(
            "batch.seq: {} does not increase (previous {last_seq})",
            batch.seq
        )));
    }
    if batch.seq > i64::MAX as u64 {
        return Err(Status::invalid_argument(format!(
            "batch.seq: {} is larger than 2^63-1",
            batch.seq
        )));
    }
    let groups = column_groups(batch.columns.as_ref());
    let mut in_columns = 0usize;
    for g in groups.iter().flatten() {
        let n = g.series_delta.len();
        if g.ts_delta.len() != n {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{}: {} timestamps for {n} series ids",
                g.name,
                g.ts_delta.len()
            )));
        }
        if g.values != n {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{}: {} values for {n} series ids",
                g.name, g.values
            )));
        }
        in_columns = in_columns.saturating_add(n);
    }
    let total = batch.readings.len().saturating_add(in_columns);
    if total > limits.max_readings_per_batch {
        return Err(Status::invalid_argument(format!(
            "batch.readings: {total} readings ({} rows, {in_columns} in columns), more than the limit of {}",
            batch.readings.len(),
            limits.max_readings_per_batch
        )));
    }
    if declared.len().saturating_add(batch.series.len()) > limits.max_series_per_stream {
        return Err(Status::invalid_argument(format!(
            "batch.series: more than {} series on one stream",
            limits.max_series_per_stream
        )));
    }
    // A set, not a scan: a batch may declare many series and carry many
    // readings, and a hostile one must not cost quadratic time.
    let mut new_ids = HashSet::with_capacity(batch.series.len());
    let mut new_series = Vec::with_capacity(batch.series.len());
    for (i, decl) in batch.series.iter().enumerate() {
        let key = check_decl(i, decl, agent, limits)?;
        if declared.contains_key(&decl.id) || !new_ids.insert(decl.id) {
            return Err(Status::invalid_argument(format!(
                "batch.series[{i}].id: {} declared twice on this stream",
                decl.id
            )));
        }
        new_series.push((decl.id, key));
    }
    for (i, r) in batch.readings.iter().enumerate() {
        if !declared.contains_key(&r.series) && (new_ids.is_empty() || !new_ids.contains(&r.series))
        {
            return Err(Status::invalid_argument(format!(
                "batch.readings[{i}].series: {} was never declared",
                r.series
            )));
        }
        if r.ts_ns <= 0 {
            return Err(Status::invalid_argument(format!(
                "batch.readings[{i}].ts_ns: {} is not a time after 1970",
                r.ts_ns
            )));
        }
        check_value(i, &r.value, limits.max_value_len)?;
    }
    let is_declared =
        |id: u32| declared.contains_key(&id) || (!new_ids.is_empty() && new_ids.contains(&id));
    for g in groups.iter().flatten() {
        check_group(g, is_declared)?;
    }
    Ok(new_series)
}

/// One value group of `Batch.columns`, seen through the shape all kinds
/// share (only the value column's type differs).
struct Group<'a> {
    /// Field name in errors: `f64`, `i64` or `bool`.
    name: &'static str,
    series_delta: &'a [i64],
    base_ts_ns: i64,
    ts_delta: &'a [i64],
    /// Length of the value column.
    values: usize,
}

fn column_groups(columns: Option<&pb::Columns>) -> [Option<Group<'_>>; 3] {
    let Some(c) = columns else {
        return [None, None, None];
    };
    [
        c.f64.as_ref().map(|g| Group {
            name: "f64",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
        c.i64.as_ref().map(|g| Group {
            name: "i64",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
        c.bool.as_ref().map(|g| Group {
            name: "bool",
            series_delta: &g.series_delta,
            base_ts_ns: g.base_ts_ns,
            ts_delta: &g.ts_delta,
            values: g.values.len(),
        }),
    ]
}

/// Checks that every series id of a group (with equal column lengths, see
/// [`check_batch`]) is declared and every timestamp is after 1970 and fits.
fn check_group(g: &Group<'_>, is_declared: impl Fn(u32) -> bool) -> Result<(), Status> {
    let name = g.name;
    let mut id = 0i64;
    let mut ts = g.base_ts_ns;
    for (i, (&ds, &dt)) in g.series_delta.iter().zip(g.ts_delta).enumerate() {
        let series = id
            .checked_add(ds)
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "batch.columns.{name}.series_delta[{i}]: {ds} after id {id} is not a series id"
                ))
            })?;
        if !is_declared(series) {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{name}.series_delta[{i}]: series {series} was never declared"
            )));
        }
        id = i64::from(series);
        ts = ts.checked_add(dt).ok_or_else(|| {
            Status::invalid_argument(format!(
                "batch.columns.{name}.ts_delta[{i}]: {dt} after {ts} overflows 64 bits"
            ))
        })?;
        if ts <= 0 {
            return Err(Status::invalid_argument(format!(
                "batch.columns.{name}.ts_delta[{i}]: ts_ns {ts} is not a time after 1970"
            )));
        }
    }
    Ok(())
}

/// Appends the readings of one value group that [`check_batch`] accepted
/// (so no sum overflows, every id fits and is in `series`); `keys` are its
/// `(series_delta, base_ts_ns, ts_delta)` columns.
fn extend_group<V: Copy>(
    out: &mut Vec<NewReading>,
    series: &StreamSeries,
    keys: (&[i64], i64, &[i64]),
    values: &[V],
    wrap: impl Fn(V) -> StoredValue,
) {
    let (series_delta, mut ts, ts_delta) = keys;
    let mut id = 0i64;
    for ((&ds, &dt), &v) in series_delta.iter().zip(ts_delta).zip(values) {
        id = id.wrapping_add(ds);
        ts = ts.wrapping_add(dt);
        if let Some(&series_id) = series.get(&(id as u32)) {
            out.push(NewReading {
                series_id,
                ts_ns: ts,
                value: wrap(v),
            });
        }
    }
}

/// The readings of a batch that [`check_batch`] accepted, rows first, then
/// the f64, i64 and bool columns, with stream ids resolved through `series`
/// (a reading of an id missing there is left out).
pub fn batch_readings(batch: pb::Batch, series: &StreamSeries) -> Vec<NewReading> {
    let columns = batch.columns.unwrap_or_default();
    let in_columns = columns.f64.as_ref().map_or(0, |g| g.values.len())
        + columns.i64.as_ref().map_or(0, |g| g.values.len())
        + columns.bool.as_ref().map_or(0, |g| g.values.len());
    let mut out = Vec::with_capacity(batch.readings.len() + in_columns);
    out.extend(batch.readings.into_iter().filter_map(|r| {
        Some(NewReading {
            series_id: *series.get(&r.series)?,
            ts_ns: r.ts_ns,
            value: convert_value(r.value?),
        })
    }));
    if let Some(g) = &columns.f64 {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::F64,
        );
    }
    if let Some(g) = &columns.i64 {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::I64,
        );
    }
    if let Some(g) = &columns.bool {
        extend_group(
            &mut out,
            series,
            (&g.series_delta, g.base_ts_ns, &g.ts_delta),
            &g.values,
            StoredValue::Bool,
        );
    }
    out
}

fn check_decl(
    i: usize,
    decl: &pb::SeriesDecl,
    agent: &str,
    limits: &Limits,
) -> Result<SeriesKey, Status> {
    let max = limits.max_name_len;
    check_name(&format!("batch.series[{i}].device"), &decl.device, max)?;
    check_name(&format!("batch.series[{i}].metric"), &decl.metric, max)?;
    if decl.unit.len() > max {
        return Err(too_long(&format!("batch.series[{i}].unit"), max));
    }
    if decl.labels.len() > limits.max_labels {
        return Err(Status::invalid_argument(format!(
            "batch.series[{i}].labels: {} labels, more than the limit of {}",
            decl.labels.len(),
            limits.max_labels
        )));
    }
    for (k, v) in &decl.labels {
        check_name(&format!("batch.series[{i}].labels key"), k, max)?;
        if v.len() > max {
            return Err(too_long(&format!("batch.series[{i}].labels[{k:?}]"), max));
        }
    }
    Ok(SeriesKey {
        agent: agent.to_string(),
        device: no_nul(decl.device.clone()),
        metric: no_nul(decl.metric.clone()),
        labels: decl
            .labels
            .iter()
            .map(|(k, v)| (no_nul(k.clone()), no_nul(v.clone())))
            .collect(),
        unit: no_nul(decl.unit.clone()),
    })
}

/// `s` with every NUL replaced by U+FFFD. PostgreSQL cannot store NUL in
/// text, and a commit that can never succeed would stop the merger for
/// everyone; valid protobuf strings may contain it, so it is replaced here.
fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// A counter reported by the agent, kept within what the stores hold
/// (signed 64 bit) and summable per agent without overflow.
fn clamp_counter(n: u64) -> u64 {
    n.min(i64::MAX as u64 / 1024)
}

fn ack_frame(seq: u64) -> pb::CollectorFrame {
    pb::CollectorFrame {
        frame: Some(pb::collector_frame::Frame::Ack(pb::Ack { seq })),
    }
}

fn unavailable(_: crate::merger::MergerGone) -> Status {
    Status::unavailable("collector shutting down: merger stopped")
}

fn too_long(field: &str, max: usize) -> Status {
    Status::invalid_argument(format!("{field}: longer than {max} bytes"))
}

fn check_name(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: empty")));
    }
    if value.len() > max {
        return Err(too_long(field, max));
    }
    Ok(())
}

fn check_value(i: usize, value: &Option<pb::reading::Value>, max: usize) -> Result<(), Status> {
    use pb::reading::Value as V;
    match value {
        None => Err(Status::invalid_argument(format!(
            "batch.readings[{i}].value: missing"
        ))),
        Some(V::Str(s)) if s.len() > max => Err(too_long(&format!("batch.readings[{i}].str"), max)),
        Some(V::Failure(f)) if f.message.len() > max => Err(too_long(
            &format!("batch.readings[{i}].failure.message"),
            max,
        )),
        Some(V::Failure(f))
            if pb::PollStatus::try_from(f.status).unwrap_or(pb::PollStatus::Unspecified)
                == pb::PollStatus::Unspecified =>
        {
            Err(Status::invalid_argument(format!(
                "batch.readings[{i}].failure.status: {} is not timeout or error",
                f.status
            )))
        }
        Some(_) => Ok(()),
    }
}

fn convert_value(value: pb::reading::Value) -> StoredValue {
    use pb::reading::Value as V;
    match value {
        V::F64(v) => StoredValue::F64(v),
        V::I64(v) => StoredValue::I64(v),
        V::Bool(v) => StoredValue::Bool(v),
        V::Str(v) => StoredValue::Str(no_nul(v)),
        V::Failure(f) => match pb::PollStatus::try_from(f.status) {
            Ok(pb::PollStatus::Timeout) => StoredValue::Timeout(no_nul(f.message)),
            _ => StoredValue::Error(no_nul(f.message)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::StreamSeries;

    #[test]
    fn stream_series_maps_dense_and_sparse_ids() {
        let mut s = StreamSeries::default();
        s.insert(u32::MAX, 7);
        s.insert(5_000, 8);
        for id in 1..=3_000u32 {
            s.insert(id, i64::from(id) + 100);
        }
        assert_eq!(s.len(), 3_002);
        assert_eq!(s.get(&u32::MAX), Some(&7));
        // 5,000 moved from the map into the table as the table grew.
        assert_eq!(s.get(&5_000), Some(&8));
        assert_eq!(s.get(&1), Some(&101));
        assert_eq!(s.get(&3_000), Some(&3_100));
        assert!(!s.contains_key(&0));
        assert!(!s.contains_key(&3_001));
        assert!(!s.contains_key(&(u32::MAX - 1)));
        s.insert(1, 55);
        assert_eq!((s.len(), s.get(&1)), (3_002, Some(&55)));
        let collected: StreamSeries = [(2u32, 3i64), (40_000_000, 4)].into_iter().collect();
        assert_eq!(
            (
                collected.get(&2),
                collected.get(&40_000_000),
                collected.len()
            ),
            (Some(&3), Some(&4), 2)
        );
    }
}
