//! `kind = "nats"`: committed readings published to a JetStream stream
//! (README "Exports").
//!
//! A page of the commit log becomes messages: each batch's readings that
//! pass the filter, grouped by subject (the template rendered per series,
//! groups in first-seen order), each group cut into parts of at most
//! `max_readings_per_message`; the parts of a batch are numbered from 0.
//! Each message carries `Nats-Msg-Id: <export>.<shape>.<agent>.<epoch>.<seq>.<part>`
//! (the agent batch's identity, which the delivery contract commits once:
//! the same batch gives the same ids on every replay, from a rewritten
//! log, a reset cursor or another collector sharing the store, as the
//! parts of one batch come out in the same order from the same content;
//! `shape` is a hash of the subject template, format, filter and part
//! size, so a config change never reuses an id for other contents) and `Nats-Expected-Stream`, and is
//! published with a reply subject; the page counts as sent when every
//! message has its PubAck.
//!
//! Pages are pipelined: the runner (`runner.rs` `nats_step`) reads,
//! saves and queues the next page here (`enqueue`, up to three pages held)
//! while `pump` publishes and takes PubAcks, so the window stays full
//! across page ends and the store, the encoding and nats-server work at
//! once. Each message carries its page's serial; the [`Ledger`] hands a
//! page back as done only when it and every older page have all their
//! PubAcks, so the cursor never passes an unacknowledged message whatever
//! order the PubAcks come in. Up to `max_in_flight` messages await theirs: the window
//! is filled once a quarter of it is free and flushed once, and every
//! PubAck already read is handled before the next publish. A message without a PubAck within `timeout`, a
//! broken connection, "no responders" or a JetStream error sends it again
//! (same id) after a capped backoff, over a new connection to the next
//! server of the list when the old one broke; JetStream drops the copies
//! that arrive within the stream's duplicate window.
//!
//! The client is ours (`nats/client.rs`, the text protocol: CONNECT, PING,
//! SUB, HPUB, MSG/HMSG; `nats/tls.rs`, TLS with rustls as remote_write has): `async-nats` would bring a second TLS stack
//! configuration, its own nkeys/ed25519 crates and a background connection
//! task for the five operations this needs (nkey and `.creds`
//! authentication here sign with ring's Ed25519, already in the tree
//! through rustls: `nats/nkey.rs`).
//!
//! The wire format is the Query API's `ReadingsChunk` inside
//! `tributary.v1.ExportMessage`: a series' `SeriesInfo` comes from
//! `query`'s conversion (encoded once per series), the rest is written by
//! hand (`nats/wire.rs`, whose tests compare it with prost's encoding).

pub mod client;
mod ledger;
pub mod nkey;
mod tls;
mod wire;

pub use tls::NatsTls;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use self::client::{Client, NatsError};
use self::ledger::Ledger;
use super::remote_write::Outcome;
use crate::config::exports::{Filter, Nats, NatsFormat};
use crate::metrics::ExportHandles;
use crate::model::{IdMap, SeriesKey, SeriesMeta, StoredValue};
use crate::store::export::{LogBatch, LogConn};
use crate::store::read::ReadError;

/// One message to publish until acknowledged.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    id: String,
    payload: Vec<u8>,
    readings: u64,
    /// The serial of its page in the [`Ledger`].
    page: u64,
    /// Its reply token when last published: the publish order.
    token: u64,
}

/// A series the export sends: its key, and (protobuf) its
/// `tributary.v1.SeriesInfo` encoded.
#[derive(Debug)]
struct Resolved {
    meta: SeriesMeta,
    info: Vec<u8>,
}

/// The JetStream client of one export; owned by its task.
#[derive(Debug)]
pub struct NatsSink {
    name: Arc<str>,
    cfg: Nats,
    filter: Filter,
    /// Hash of what shapes the messages (part of every id).
    shape: u32,
    /// Set: every connection is TLS.
    tls: Option<NatsTls>,
    max_backoff: Duration,
    conn: Option<Client>,
    /// The server to try next.
    next_server: usize,
    /// The stream was found (or created) over the current connection.
    stream_ready: bool,
    /// Series by id; `None`: filtered out.
    series: IdMap<Option<Arc<Resolved>>>,
    /// Messages of the pipeline's pages not published yet (or to publish
    /// again), in order.
    queue: VecDeque<Outgoing>,
    /// Published messages awaiting their PubAck, by reply subject.
    waiting: HashMap<String, Outgoing>,
    /// The last reply token used.
    token: u64,
    /// PubAcks saying "duplicate" since the pipeline was last empty.
    duplicates: u64,
    /// The wait before the next try after a failure.
    backoff: Duration,
    /// The pages in the pipeline and what each waits for.
    ledger: Ledger,
}

impl NatsSink {
    /// The sink of export `name`; an error when its TLS files cannot be
    /// used.
    pub fn new(
        name: &str,
        cfg: &Nats,
        filter: &Filter,
        max_backoff: Duration,
    ) -> Result<NatsSink, String> {
        let shape = format!("{}|{filter:?}", cfg.shape());
        let tls = cfg.tls.as_ref().map(NatsTls::new).transpose()?;
        Ok(NatsSink {
            tls,
            name: name.into(),
            cfg: cfg.clone(),
            filter: filter.clone(),
            shape: fnv1a(shape.as_bytes()),
            max_backoff,
            conn: None,
            next_server: 0,
            stream_ready: false,
            series: IdMap::default(),
            queue: VecDeque::new(),
            waiting: HashMap::new(),
            token: 0,
            duplicates: 0,
            backoff: Duration::from_millis(100).min(max_backoff),
            ledger: Ledger::default(),
        })
    }

    /// Pages in the pipeline (read and encoded, not all acknowledged yet).
    pub fn pages(&self) -> usize {
        self.ledger.open_pages()
    }

    /// Where the next page starts: after the youngest page in the
    /// pipeline; `None` when it is empty (the cursor's position).
    pub fn next_position(&self) -> Option<i64> {
        self.ledger.newest_last()
    }

    /// When the oldest page in the pipeline received its first batch.
    pub fn oldest_received(&self) -> Option<i64> {
        self.ledger.oldest_received()
    }

    /// The oldest page, once it and every page before it has all its
    /// PubAcks: its last position and what it came to.
    pub fn pop_done(&mut self) -> Option<(i64, Outcome)> {
        self.ledger.pop_done()
    }

    /// Adds the messages of `page` (one page of the log, read after the
    /// youngest in the pipeline) behind those queued; `Err` when its
    /// series could not be read.
    pub async fn enqueue(&mut self, log: &mut LogConn, page: &[LogBatch]) -> Result<(), ReadError> {
        let (Some(last), Some(first_received)) = (
            page.last().map(|b| b.position),
            page.first().map(|b| b.received_ns),
        ) else {
            return Ok(());
        };
        self.resolve(log, page).await?;
        let mut messages = Vec::new();
        for batch in page {
            self.messages(batch, &mut messages);
        }
        let serial = self.ledger.open(last, first_received, messages.len());
        for mut m in messages {
            m.page = serial;
            self.queue.push_back(m);
        }
        Ok(())
    }

    /// Readings of the pages in the pipeline that have their PubAck.
    pub fn acked_in_flight(&self) -> u64 {
        self.ledger.acked_readings()
    }

    /// Forgets every page in the pipeline and the connection (it may be
    /// mid-frame): the cursor has not passed them, so they are read and
    /// published again, with the same ids.
    pub fn abandon(&mut self) {
        self.conn = None;
        self.queue.clear();
        self.waiting.clear();
        self.ledger.clear();
    }

    /// Looks up the series of `page` not cached yet.
    async fn resolve(&mut self, log: &mut LogConn, page: &[LogBatch]) -> Result<(), ReadError> {
        let missing = super::series_to_look_up(
            &mut self.series,
            page.iter()
                .flat_map(|b| b.readings.iter().map(|r| r.series_id)),
            super::MAX_CACHED_SERIES,
        );
        if missing.is_empty() {
            return Ok(());
        }
        let keys = log.series(missing.clone()).await?;
        for id in missing {
            self.series.insert(id, None);
        }
        for (id, key) in keys {
            let pass =
                self.filter.is_all() || self.filter.matches(&key.agent, &key.device, &key.metric);
            self.series.insert(
                id,
                pass.then(|| {
                    let meta = SeriesMeta { id, key };
                    // Encoded once, copied into every message (`wire.rs`).
                    let info = match self.cfg.format {
                        NatsFormat::Protobuf => {
                            crate::query::series_to_proto(&meta).encode_to_vec()
                        }
                        NatsFormat::Json => Vec::new(),
                    };
                    Arc::new(Resolved { meta, info })
                }),
            );
        }
        Ok(())
    }

    /// The messages of one batch, in part order, onto `queue`.
    fn messages(&self, batch: &LogBatch, queue: &mut Vec<Outgoing>) {
        // Subjects in first-seen order, each with its readings (indexes
        // into batch.readings); a series' group is found once a batch, then
        // by its id (one lookup a reading, no subject copied).
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut by_subject: HashMap<String, usize> = HashMap::new();
        let mut group_of: IdMap<Option<usize>> = IdMap::default();
        let mut agent = None;
        for (i, r) in batch.readings.iter().enumerate() {
            let group = *group_of.entry(r.series_id).or_insert_with(|| {
                let Some(Some(s)) = self.series.get(&r.series_id) else {
                    return None;
                };
                agent.get_or_insert_with(|| s.meta.key.agent.clone());
                let k: &SeriesKey = &s.meta.key;
                let subject = self.cfg.subject.render(&k.agent, &k.device, &k.metric);
                Some(*by_subject.entry(subject).or_insert_with_key(|subject| {
                    groups.push((subject.clone(), Vec::new()));
                    groups.len() - 1
                }))
            });
            if let Some(g) = group {
                groups[g].1.push(i);
            }
        }
        // The batch's own agent; a row logged before identities were kept
        // has none, and takes its first reading's.
        let agent = match &batch.origin {
            Some(o) => o.agent.clone(),
            None => agent.unwrap_or_default(),
        };
        let mut part: u32 = 0;
        for (subject, indexes) in &groups {
            for chunk in indexes.chunks(self.cfg.max_readings_per_message) {
                let payload = self.encode(batch, &agent, part, chunk);
                let id = message_id(&self.name, self.shape, batch, part);
                part += 1;
                queue.push(Outgoing {
                    subject: subject.clone(),
                    id,
                    payload,
                    readings: chunk.len() as u64,
                    page: 0,
                    token: 0,
                });
            }
        }
    }

    /// One message's payload: the readings `chunk` of `batch`, by series.
    fn encode(&self, batch: &LogBatch, agent: &str, part: u32, chunk: &[usize]) -> Vec<u8> {
        // Series in first-seen order, each with its readings in order.
        let mut order: Vec<(&Resolved, Vec<usize>)> = Vec::new();
        let mut slot: IdMap<usize> = IdMap::default();
        for &i in chunk {
            let id = batch.readings[i].series_id;
            let at = match slot.get(&id) {
                Some(&at) => at,
                None => {
                    let Some(Some(meta)) = self.series.get(&id) else {
                        continue;
                    };
                    order.push((meta, Vec::new()));
                    slot.insert(id, order.len() - 1);
                    order.len() - 1
                }
            };
            order[at].1.push(i);
        }
        match self.cfg.format {
            NatsFormat::Protobuf => {
                let series: Vec<(&[u8], Vec<usize>)> = order
                    .into_iter()
                    .map(|(s, points)| (s.info.as_slice(), points))
                    .collect();
                let header = wire::Header {
                    agent,
                    position: u64::try_from(batch.position).unwrap_or(0),
                    part,
                    received_ns: batch.received_ns,
                    epoch: batch.origin.as_ref().map_or(0, |o| o.epoch),
                    seq: batch.origin.as_ref().map_or(0, |o| o.seq),
                };
                wire::export_message(&header, batch, &series)
            }
            NatsFormat::Json => {
                let series: Vec<Value> = order
                    .iter()
                    .map(|(s, points)| {
                        let meta = &s.meta;
                        json!({
                            "id": meta.id,
                            "agent": meta.key.agent,
                            "device": meta.key.device,
                            "metric": meta.key.metric,
                            "labels": meta.key.labels,
                            "unit": meta.key.unit,
                            "points": points.iter().map(|&i| json_point(&batch.readings[i].value, batch.readings[i].ts_ns)).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "agent": agent,
                    "epoch": batch.origin.as_ref().map_or(0, |o| o.epoch),
                    "seq": batch.origin.as_ref().map_or(0, |o| o.seq),
                    "position": batch.position,
                    "part": part,
                    "received_ns": batch.received_ns,
                    "series": series,
                })
                .to_string()
                .into_bytes()
            }
        }
    }

    /// Publishes the queued messages and handles their PubAcks until
    /// every one is acknowledged, or until `enough` is set (checked after
    /// each exchange with the server, so the connection is never left
    /// mid-frame): the task then reads and saves while the window stays
    /// full. Failures are retried here, after a backoff, with the same ids.
    pub async fn pump(&mut self, metrics: &ExportHandles, enough: &AtomicBool) {
        loop {
            if self.queue.is_empty() && self.waiting.is_empty() {
                if self.duplicates > 0 {
                    info!(export = %self.name, duplicates = self.duplicates, "nats messages already in the stream (a replay): JetStream's duplicate window dropped the copies");
                    self.duplicates = 0;
                }
                return;
            }
            let failure = match self.ready().await {
                Err(e) => Some(e),
                Ok(()) => match self.exchange().await {
                    Ok(progress) => {
                        if progress {
                            self.backoff = Duration::from_millis(100).min(self.max_backoff);
                        }
                        None
                    }
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failure {
                let message = e.to_string();
                metrics.failed.inc();
                metrics.failing.set(&message);
                warn!(export = %self.name, error = %message, waiting = self.waiting.len() + self.queue.len(), "nats publish failed; sending again");
                self.ledger.failed(&message);
                if matches!(e, Failure::Broken(_)) {
                    self.conn = None;
                }
                // Everything unacknowledged goes again, same ids, before
                // what was never published, in the order it was first
                // published, so the stream keeps the commit order as far
                // as it can (the ledger does not need it).
                let mut again: Vec<Outgoing> = self.waiting.drain().map(|(_, m)| m).collect();
                again.sort_unstable_by_key(|m| m.token);
                let resend = again.len() as u64;
                for m in again.into_iter().rev() {
                    self.ledger.retried(m.page);
                    self.queue.push_front(m);
                }
                if resend > 0 {
                    metrics.retried.inc_by(resend);
                }
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(self.max_backoff);
            }
            if enough.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// A connection with the stream in place.
    async fn ready(&mut self) -> Result<(), Failure> {
        if self.conn.is_none() {
            self.stream_ready = false;
            let servers = &self.cfg.servers;
            let addr = &servers[self.next_server % servers.len()];
            self.next_server = (self.next_server + 1) % servers.len();
            let mut c = Client::connect(addr, &self.cfg.auth, self.tls.as_ref(), self.cfg.timeout)
                .await
                .map_err(Failure::Broken)?;
            c.subscribe_inbox().await.map_err(Failure::Broken)?;
            info!(export = %self.name, server = %addr, "nats export connected");
            self.conn = Some(c);
        }
        if !self.stream_ready {
            self.ensure_stream().await?;
            self.stream_ready = true;
        }
        Ok(())
    }

    /// Finds the stream, or creates it when allowed.
    async fn ensure_stream(&mut self) -> Result<(), Failure> {
        let Some(c) = self.conn.as_mut() else {
            return Err(Failure::Broken(NatsError::Closed));
        };
        let stream = &self.cfg.stream;
        let timeout = self.cfg.timeout;
        let found = c
            .js_api(
                &format!("$JS.API.STREAM.INFO.{stream}"),
                &json!({}),
                timeout,
            )
            .await;
        let info = match found {
            Ok(v) => v,
            Err(NatsError::Server(e)) if e.contains("code 404") => {
                let Some(spec) = &self.cfg.create_stream else {
                    return Err(Failure::Refused(format!(
                        "stream {stream:?} does not exist: create it, or set create_stream = true"
                    )));
                };
                let mut config = json!({
                    "name": stream,
                    "subjects": spec.subjects,
                    "retention": "limits",
                    "storage": "file",
                    "discard": "old",
                    "num_replicas": spec.replicas,
                    "duplicate_window": spec.duplicate_window.as_nanos() as u64,
                });
                if let Some(age) = spec.max_age {
                    config["max_age"] = json!(age.as_nanos() as u64);
                }
                let created = c
                    .js_api(&format!("$JS.API.STREAM.CREATE.{stream}"), &config, timeout)
                    .await
                    .map_err(|e| match e {
                        NatsError::Server(m) => {
                            Failure::Refused(format!("create stream {stream:?}: {m}"))
                        }
                        other => Failure::Broken(other),
                    })?;
                info!(export = %self.name, stream = %stream, replicas = spec.replicas, subjects = ?spec.subjects, "nats export created its stream");
                created
            }
            Err(NatsError::Server(m)) => {
                return Err(Failure::Refused(format!("stream {stream:?}: {m}")));
            }
            Err(e) => return Err(Failure::Broken(e)),
        };
        let window_ns = info
            .pointer("/config/duplicate_window")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        info!(export = %self.name, stream = %stream, duplicate_window = ?Duration::from_nanos(window_ns), "nats export stream ready; a replay later than the duplicate window after the first publish would be stored twice");
        Ok(())
    }

    /// Publishes what the in-flight window allows (once a quarter of it is
    /// free, or the rest of the queue fits: a window per flush, not a
    /// message), then waits for one frame from the server and handles it
    /// and every frame already read after it. `Ok(true)` when a message
    /// was acknowledged.
    async fn exchange(&mut self) -> Result<bool, Failure> {
        let queue = &mut self.queue;
        let waiting = &mut self.waiting;
        let Some(c) = self.conn.as_mut() else {
            return Err(Failure::Broken(NatsError::Closed));
        };
        let max = c.max_payload();
        let window = self.cfg.max_in_flight;
        let free = window.saturating_sub(waiting.len());
        let mut published = false;
        if free > 0 && free >= (window / 4).max(1).min(queue.len()) {
            while waiting.len() < window {
                let Some(m) = queue.pop_front() else {
                    break;
                };
                let size = m.payload.len() + m.id.len() + self.cfg.stream.len() + 64;
                if size > max {
                    error!(export = %self.name, id = %m.id, bytes = size, max_payload = max, readings = m.readings, "nats message larger than the server's max_payload; its readings are dropped (lower max_readings_per_message)");
                    self.ledger.dropped(
                        m.page,
                        m.readings,
                        format!("message {} of {size} bytes is over max_payload {max}", m.id),
                    );
                    continue;
                }
                self.token += 1;
                let reply = format!("{}.{}", c.inbox(), self.token);
                let mut m = m;
                m.token = self.token;
                let sent = c
                    .publish(
                        &m.subject,
                        Some(&reply),
                        &[
                            ("Nats-Msg-Id", &m.id),
                            ("Nats-Expected-Stream", &self.cfg.stream),
                        ],
                        &m.payload,
                    )
                    .await;
                if let Err(e) = sent {
                    // Not lost: it goes again after the ones in flight
                    // (lower tokens, put back in front of it), or its page
                    // would never complete and the export would stall.
                    queue.push_front(m);
                    return Err(Failure::Broken(e));
                }
                waiting.insert(reply, m);
                published = true;
            }
        }
        if waiting.is_empty() {
            return Ok(false);
        }
        if published {
            c.flush().await.map_err(Failure::Broken)?;
        }
        let mut acked = false;
        loop {
            let msg = match tokio::time::timeout(self.cfg.timeout, c.next()).await {
                Err(_) => {
                    return Err(Failure::Broken(NatsError::Timeout(self.cfg.timeout)));
                }
                Ok(r) => r.map_err(Failure::Broken)?,
            };
            // A late answer to a message sent again since: nothing to do.
            if let Some(m) = waiting.remove(&msg.subject) {
                if msg.status() == Some(503) {
                    waiting.insert(msg.subject, m);
                    self.stream_ready = false;
                    return Err(Failure::Refused(
                        "no responders: the stream is not available".to_owned(),
                    ));
                }
                let ack: Value = match serde_json::from_slice(&msg.payload) {
                    Ok(v) => v,
                    Err(e) => {
                        waiting.insert(msg.subject, m);
                        return Err(Failure::Refused(format!("PubAck is not JSON: {e}")));
                    }
                };
                if let Some(e) = ack.get("error") {
                    waiting.insert(msg.subject, m);
                    return Err(Failure::Refused(client::api_error(e)));
                }
                if ack.get("duplicate").and_then(Value::as_bool) == Some(true) {
                    self.duplicates += 1;
                }
                // Counted in the metrics once its page is delivered.
                self.ledger.acked(m.page, m.readings);
                acked = true;
            }
            // Every answer already read is handled before publishing again.
            if waiting.is_empty() || !c.has_buffered() {
                return Ok(acked);
            }
        }
    }
}

/// The pipeline without a server, for the runner's tests.
#[cfg(test)]
impl NatsSink {
    /// Opens a page of `messages` messages ending at `last`; its serial.
    pub(crate) fn open_page(&mut self, last: i64, first_received: i64, messages: usize) -> u64 {
        self.ledger.open(last, first_received, messages)
    }

    /// A PubAck for a message of page `serial`.
    pub(crate) fn ack(&mut self, serial: u64, readings: u64) {
        self.ledger.acked(serial, readings);
    }
}

/// Why a publish round failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The connection is unusable (dropped; the next try connects again).
    #[error("{0}")]
    Broken(NatsError),
    /// JetStream answered with an error; the connection stays.
    #[error("{0}")]
    Refused(String),
}

/// A point as JSON: `{"ts_ns": .., "<kind>": value}` (README "Exports").
fn json_point(v: &StoredValue, ts_ns: i64) -> Value {
    match v {
        StoredValue::F64(x) if x.is_finite() => json!({"ts_ns": ts_ns, "f64": x}),
        StoredValue::F64(x) => {
            let text = if x.is_nan() {
                "NaN"
            } else if *x > 0.0 {
                "+Inf"
            } else {
                "-Inf"
            };
            json!({"ts_ns": ts_ns, "f64": text})
        }
        StoredValue::I64(x) => json!({"ts_ns": ts_ns, "i64": x}),
        // The exact decimal integer, as for i64 (serde_json writes u64
        // without going through f64).
        StoredValue::U64(x) => json!({"ts_ns": ts_ns, "u64": x}),
        StoredValue::Bool(x) => json!({"ts_ns": ts_ns, "bool": x}),
        StoredValue::Str(s) => json!({"ts_ns": ts_ns, "str": s}),
        StoredValue::Timeout(m) => {
            json!({"ts_ns": ts_ns, "failure": {"status": "timeout", "message": m}})
        }
        StoredValue::Error(m) => {
            json!({"ts_ns": ts_ns, "failure": {"status": "error", "message": m}})
        }
    }
}

/// The `Nats-Msg-Id` of part `part` of `batch`:
/// `<export>.<shape>.<agent>.<epoch>.<seq>.<part>`, the agent batch's
/// identity, the same on every replay and every collector sharing the
/// store (the agent id with every byte outside `[A-Za-z0-9_-]`
/// percent-encoded, so the id is one header token and ids of different
/// agents never meet). A batch logged before identities were kept has
/// `<export>.<shape>.<position>.<received_ns>.<part>` (a position of that
/// log).
fn message_id(export: &str, shape: u32, batch: &LogBatch, part: u32) -> String {
    match &batch.origin {
        Some(o) => {
            let mut agent = String::with_capacity(o.agent.len());
            for b in o.agent.bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    agent.push(char::from(b));
                } else {
                    agent.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{export}.{shape:08x}.{agent}.{}.{}.{part}", o.epoch, o.seq)
        }
        None => format!(
            "{export}.{shape:08x}.{}.{}.{part}",
            batch.position, batch.received_ns
        ),
    }
}

/// FNV-1a, 32 bits: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::{fnv1a, json_point, message_id};
    use crate::model::StoredValue;
    use crate::store::export::{LogBatch, Origin};

    #[test]
    fn message_ids_name_the_agent_batch_not_the_log_position() {
        let batch = |position, agent: &str| LogBatch {
            position,
            received_ns: position * 10,
            readings: Vec::new(),
            origin: Some(Origin {
                agent: agent.into(),
                epoch: 3,
                seq: 41,
            }),
        };
        // The same batch at another position (a rewritten log, another
        // collector's commit): the same id.
        assert_eq!(
            message_id("bus", 0xab, &batch(5, "edge-1"), 2),
            "bus.000000ab.edge-1.3.41.2"
        );
        assert_eq!(
            message_id("bus", 0xab, &batch(9, "edge-1"), 2),
            message_id("bus", 0xab, &batch(5, "edge-1"), 2)
        );
        // Separators and control bytes in an agent id stay inside its token.
        assert_eq!(
            message_id("bus", 0xab, &batch(5, "a.b\r\n"), 0),
            "bus.000000ab.a%2Eb%0D%0A.3.41.0"
        );
        assert_ne!(
            message_id("bus", 1, &batch(5, "a.3"), 0),
            message_id("bus", 1, &batch(5, "a"), 0)
        );
        // A row from before identities: its position.
        let old = LogBatch {
            origin: None,
            ..batch(5, "x")
        };
        assert_eq!(message_id("bus", 0xab, &old, 1), "bus.000000ab.5.50.1");
    }

    #[test]
    fn ids_hash_is_stable() {
        // Message ids must not change between builds: a replay after an
        // upgrade is still recognised.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn json_points_keep_every_kind() {
        use serde_json::json;
        assert_eq!(
            json_point(&StoredValue::F64(f64::NAN), 1),
            json!({"ts_ns": 1, "f64": "NaN"})
        );
        assert_eq!(
            json_point(&StoredValue::F64(-2.5), 1),
            json!({"ts_ns": 1, "f64": -2.5})
        );
        // Exact integers, not doubles: the text keeps every digit.
        assert_eq!(
            serde_json::to_string(&json_point(&StoredValue::U64(u64::MAX), 1)).unwrap(),
            r#"{"ts_ns":1,"u64":18446744073709551615}"#
        );
        assert_eq!(
            json_point(&StoredValue::Timeout("slow".into()), 2),
            json!({"ts_ns": 2, "failure": {"status": "timeout", "message": "slow"}})
        );
    }
}
