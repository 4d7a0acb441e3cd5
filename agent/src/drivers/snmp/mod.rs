//! The SNMP driver: GET of scalars and GETBULK walks of table columns over
//! SNMPv2c or SNMPv3 (USM, SHA/AES), on one connected UDP socket per device.
//!
//! Every request has a fresh request id; an answer with another id (a late
//! answer to a poll the scheduler cancelled) is ignored, so cancellation
//! needs no cleanup. An unanswered request is sent again `retries` times,
//! each try waiting its share of the poll timeout. SNMPv3 discovers the
//! agent's engine id on the first poll (and again when the agent reports
//! an unknown engine id), localizes the keys once per engine, and learns
//! boots and time only from authenticated messages; [`v3`] holds every
//! check an SNMPv3 answer must pass before it is believed.
//!
//! OIDs may be written as MIB names (`IF-MIB::ifName`, `sysUpTime.0`):
//! `names.rs` resolves them when the configuration loads, with the MIB
//! modules `mib/` reads, so a poll only ever sees numeric OIDs. Index
//! lookups (`lookups`) walk their columns every `lookup_interval` and label
//! the rows of the walks that share the lookup's index.
//!
//! Values: INTEGER, Counter32, Gauge32 and TimeTicks become integers,
//! Counter64 an integer with every bit kept (`Value::I64` below 2^63,
//! `Value::U64` from there on),
//! OCTET STRING a string (hex `aa:bb:..` when it
//! is not printable UTF-8, or as the MIB's textual convention says:
//! DisplayString text, PhysAddress `aa:bb:..`, DateAndTime RFC 3339),
//! IpAddress and OBJECT IDENTIFIER strings; an enumerated INTEGER stays the
//! integer, its name a label when `enum_label = true`.
//! noSuchObject, noSuchInstance and endOfMibView fail that metric with the
//! reason.
//!
//! Owns: one agent's UDP socket, request ids and v3 engine state (the
//! exchange of one request: `exchange.rs`); the BER
//! codec (`ber.rs`), USM (`usm.rs`), value mapping (`value.rs`) and
//! settings (`config.rs`). May touch: `crate::reading` only.

pub mod ber;
mod exchange;
pub mod mib;
mod names;
mod oid;
mod series;
mod transport;
pub mod usm;
pub mod v3;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

pub(crate) mod config;
pub(crate) mod credentials;
pub mod value;

pub use self::config::{
    At, DEFAULT_LOOKUP_INTERVAL, OidError, OidRef, SnmpAuthProtocol, SnmpConfig, SnmpLookup,
    SnmpMetric, SnmpPrivProtocol, SnmpSecurity, SnmpV3, SnmpWalk, ValueMeaning, oid_string,
    parse_oid, parse_oid_ref,
};
pub use self::names::{resolve_device, resolve_names};

use self::ber::{Pdu, SnmpValue, tag};
use self::series::{PlainWalk, SeriesCache};
use self::transport::{Budget, Heard, malformed, send_and_wait};
use self::v3::Engine;
use self::value::{enum_label, failed, to_value_as};
use super::{BuildError, PollError, Poller, failed_metrics};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Reading, Sample, Value};

/// Most varbinds in one GET (larger lists are split).
const MAX_GET_VARBINDS: usize = 32;

/// Most rows one walk may return before it is cut off as runaway.
pub const MAX_WALK_ROWS: usize = 100_000;

/// Most varbinds one GETBULK asks for (columns walked together ×
/// `max_repetitions`): net-snmp's snmpd answers at most 100 by default
/// (`maxGetbulkResponses`), and an answer cut short costs a request more.
const MAX_BULK_VARBINDS: usize = 100;

/// The error-status values a walk answers by asking for fewer columns.
const TOO_BIG: i64 = 1;
const GEN_ERR: i64 = 5;

/// An SNMP agent.
pub struct SnmpDriver {
    cfg: SnmpConfig,
    /// Bound to the whole poll; split across retries.
    timeout: Duration,
    socket: Option<(UdpSocket, SocketAddr)>,
    /// End of the current poll's own time budget (a little inside the
    /// scheduler's timeout, so the driver's precise error wins).
    deadline: Instant,
    engine: Option<Engine>,
    /// The engine forgotten when the agent reported an unknown engine id
    /// (unauthenticated by nature): if rediscovery finds the same id, it
    /// comes back whole, keys and authenticated clock included, so a forged
    /// report costs a round trip, not a key localization.
    stale_engine: Option<Engine>,
    next_id: i32,
    salt: u64,
    /// The lookup columns as last walked.
    lookups: Option<Lookups>,
    /// For each walk, the lookups that label its rows.
    applies: Vec<Vec<usize>>,
    /// The device's name, which its series carry.
    device: String,
    /// The series of its readings, built once.
    series: SeriesCache,
    /// Readings of the last poll (the next one's room).
    last_len: usize,
}

/// The values of the lookup columns, by row index.
struct Lookups {
    walked: Instant,
    /// One map per [`SnmpConfig::lookups`] entry: index suffix → value.
    tables: Vec<HashMap<Vec<u32>, String>>,
}

impl std::fmt::Debug for SnmpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnmpDriver")
            .field("address", &self.cfg.address)
            .field("security", &self.cfg.security)
            .field("connected", &self.socket.is_some())
            .finish_non_exhaustive()
    }
}

/// A request to send: PDU type and its fields.
struct Request<'a> {
    kind: u8,
    a: i64,
    b: i64,
    oids: &'a [&'a [u32]],
    what: What<'a>,
}

/// What a request asks, for its errors; written out only when one is (a
/// walk sends a request per `max_repetitions` rows).
enum What<'a> {
    Get(&'a [&'a [u32]]),
    /// A walk of `columns` columns at once, the first `root` at `at`.
    Walk {
        root: &'a [u32],
        at: &'a [u32],
        columns: usize,
    },
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Get([oid]) => write!(f, "GET {}", oid_string(oid)),
            What::Get(oids) => write!(f, "GET of {} OIDs", oids.len()),
            What::Walk { root, at, columns } => {
                write!(
                    f,
                    "GETBULK walk of {} at {}",
                    oid_string(root),
                    oid_string(at)
                )?;
                match columns {
                    0 | 1 => Ok(()),
                    2 => write!(f, " (and 1 more column)"),
                    n => write!(f, " (and {} more columns)", n - 1),
                }
            }
        }
    }
}

impl SnmpDriver {
    pub fn new(cfg: &SnmpConfig, timeout: Duration) -> Self {
        let mut rng = rand::rng();
        SnmpDriver {
            cfg: cfg.clone(),
            timeout,
            socket: None,
            deadline: Instant::now(),
            engine: None,
            stale_engine: None,
            next_id: rng.random_range(1..i32::MAX / 2),
            salt: rng.random(),
            lookups: None,
            applies: cfg.lookups_by_walk(),
            device: String::new(),
            series: SeriesCache::default(),
            last_len: 0,
        }
    }

    /// [`SnmpDriver::new`] for the device named `device`.
    pub fn for_device(cfg: &SnmpConfig, timeout: Duration, device: &str) -> Self {
        SnmpDriver {
            device: device.to_owned(),
            ..SnmpDriver::new(cfg, timeout)
        }
    }

    /// (name, unit) of every metric and walk.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.cfg
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.unit.as_str()))
            .chain(
                self.cfg
                    .walks
                    .iter()
                    .map(|w| (w.name.as_str(), w.unit.as_str())),
            )
    }

    /// One poll as samples (for tests and `check`; the scheduler takes
    /// [`SnmpDriver::poll_readings`]).
    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        Ok(self
            .poll_readings()
            .await?
            .into_iter()
            .map(Sample::of_reading)
            .collect())
    }

    /// One poll: every metric's reading, then every walk's rows, on the
    /// device's series (built on first sight, then shared).
    pub async fn poll_readings(&mut self) -> Result<Vec<Reading>, PollError> {
        self.deadline = Instant::now() + self.timeout.mul_f64(0.9);
        // Room for the scheduler's `up` too.
        let mut readings = Vec::with_capacity(self.last_len + 1);
        for start in (0..self.cfg.metrics.len()).step_by(MAX_GET_VARBINDS) {
            let end = (start + MAX_GET_VARBINDS).min(self.cfg.metrics.len());
            let oids: Vec<Vec<u32>> = self.cfg.metrics[start..end]
                .iter()
                .map(|m| m.oid.clone())
                .collect();
            let oids: Vec<&[u32]> = oids.iter().map(Vec::as_slice).collect();
            let pdu = self
                .request(Request {
                    kind: tag::GET,
                    a: 0,
                    b: 0,
                    oids: &oids,
                    what: What::Get(&oids),
                })
                .await?;
            for (i, m) in self.cfg.metrics[start..end].iter().enumerate() {
                let mut labels = BTreeMap::new();
                let value = match pdu.varbinds.get(i) {
                    Some((oid, v)) if *oid == m.oid => {
                        if let Some(name) = enum_label(v, &m.meaning) {
                            labels.insert(m.name.clone(), name);
                        }
                        to_value_as(v, &m.meaning)
                    }
                    Some((oid, _)) => failed(format!(
                        "agent answered OID {} for {}",
                        oid_string(oid),
                        oid_string(&m.oid)
                    )),
                    None => failed(format!(
                        "agent answered {} varbinds for {} OIDs",
                        pdu.varbinds.len(),
                        oids.len()
                    )),
                };
                let series = self.series.named(&self.device, &m.name, labels, &m.unit);
                readings.push(Reading::unstamped(&series, value));
            }
        }
        self.refresh_lookups().await?;
        let roots: Vec<Vec<u32>> = self.cfg.walks.iter().map(|w| w.oid.clone()).collect();
        let roots: Vec<&[u32]> = roots.iter().map(Vec::as_slice).collect();
        let walked = self.walk_columns(&roots).await?;
        for (wi, rows) in walked.into_iter().enumerate() {
            let w = &self.cfg.walks[wi];
            if rows.is_empty() {
                let series = self
                    .series
                    .named(&self.device, &w.name, BTreeMap::new(), &w.unit);
                readings.push(Reading::unstamped(
                    &series,
                    failed(format!(
                        "walk of {} returned no rows (no such table or column: bad OID?)",
                        oid_string(&w.oid)
                    )),
                ));
            }
            // The lookup labels of each row (empty values name nothing),
            // from the lookups that share this walk's index (see
            // `SnmpLookup::applies_to`); none without lookups.
            let applies = self.applies.get(wi).map_or(&[][..], Vec::as_slice);
            if applies.is_empty() && !w.meaning.enum_label {
                // Rows labelled by their index alone: a series per index.
                let plain = PlainWalk {
                    index: wi,
                    device: &self.device,
                    metric: &w.name,
                    index_label: &w.index_label,
                    unit: &w.unit,
                };
                self.series.prepare(wi, rows.len());
                for (position, (suffix, v)) in rows.iter().enumerate() {
                    let series = self.series.row_at(&plain, position, suffix);
                    readings.push(Reading::unstamped(&series, to_value_as(v, &w.meaning)));
                }
                continue;
            }
            let named: Vec<Vec<(&str, &str)>> = match &self.lookups {
                Some(lookups) if !applies.is_empty() => rows
                    .iter()
                    .map(|(suffix, _)| {
                        applies
                            .iter()
                            .filter_map(|&i| {
                                let value = lookups.tables.get(i)?.get(suffix)?;
                                (!value.is_empty())
                                    .then(|| (self.cfg.lookups[i].label.as_str(), value.as_str()))
                            })
                            .collect()
                    })
                    .collect(),
                _ => vec![Vec::new(); rows.len()],
            };
            // drop_index keeps the index of rows whose lookup labels are
            // not unique (two interfaces with one name): their series
            // would be one otherwise.
            let mut seen: HashMap<&[(&str, &str)], usize> = HashMap::new();
            if !applies.is_empty() {
                for n in &named {
                    *seen.entry(n.as_slice()).or_default() += 1;
                }
            }
            for ((suffix, v), names) in rows.iter().zip(&named) {
                let mut labels = BTreeMap::new();
                let unique = !names.is_empty() && seen.get(names.as_slice()) == Some(&1);
                if !(unique && self.cfg.drop_index) {
                    labels.insert(w.index_label.clone(), oid_string(suffix));
                }
                for (label, value) in names {
                    labels.insert((*label).to_owned(), (*value).to_owned());
                }
                if let Some(name) = enum_label(v, &w.meaning) {
                    labels.insert(w.name.clone(), name);
                }
                let series = self.series.named(&self.device, &w.name, labels, &w.unit);
                readings.push(Reading::unstamped(&series, to_value_as(v, &w.meaning)));
            }
        }
        self.last_len = readings.len();
        Ok(readings)
    }

    /// Walks the lookup columns again when they are older than
    /// `lookup_interval`. When that fails, the previous values stay (stale
    /// names beat a failed poll) and the walk is tried on the next poll;
    /// with no previous values the poll fails.
    async fn refresh_lookups(&mut self) -> Result<(), PollError> {
        if self.cfg.lookups.is_empty()
            || self
                .lookups
                .as_ref()
                .is_some_and(|l| l.walked.elapsed() < self.cfg.lookup_interval)
        {
            return Ok(());
        }
        let mut tables = Vec::with_capacity(self.cfg.lookups.len());
        let lookups = self.cfg.lookups.clone();
        let roots: Vec<&[u32]> = lookups.iter().map(|l| l.oid.as_slice()).collect();
        let walked = match self.walk_columns(&roots).await {
            Ok(walked) => walked,
            Err(e) if self.lookups.is_some() => {
                let labels: Vec<&str> = lookups.iter().map(|l| l.label.as_str()).collect();
                warn!(device = %self.cfg.address, lookups = ?labels, error = %e.message, "lookup walk failed; keeping the previous values");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for (l, rows) in lookups.iter().zip(walked) {
            let meaning = ValueMeaning {
                format: l.format,
                ..ValueMeaning::default()
            };
            let table = rows
                .into_iter()
                .filter_map(|(suffix, v)| match to_value_as(&v, &meaning) {
                    Value::Str(s) => Some((suffix, s)),
                    Value::I64(n) => Some((suffix, n.to_string())),
                    Value::U64(n) => Some((suffix, n.to_string())),
                    Value::F64(n) => Some((suffix, n.to_string())),
                    _ => None,
                })
                .collect();
            tables.push(table);
        }
        self.lookups = Some(Lookups {
            walked: Instant::now(),
            tables,
        });
        Ok(())
    }

    /// Walks the subtrees under `roots` (table columns) with GETBULK, all
    /// at once: each request asks for the next rows of several columns (as
    /// net-snmp's `snmptable` does), so a table of ten columns costs a tenth
    /// of the requests of ten walks. Returns each root's rows: (index
    /// suffix, value). A column ends where its OIDs leave its root (or at
    /// endOfMibView) and is asked no more; one an answer cut short left out
    /// is asked again from where it was.
    async fn walk_columns(&mut self, roots: &[&[u32]]) -> Result<Vec<Rows>, PollError> {
        let mut rows: Vec<Rows> = roots.iter().map(|_| Vec::new()).collect();
        let mut cursors: Vec<Vec<u32>> = roots.iter().map(|r| r.to_vec()).collect();
        let repetitions = usize::try_from(self.cfg.max_repetitions.max(1)).unwrap_or(1);
        // Columns asked together; halved when an agent cannot answer that
        // many (below).
        let mut per_request = (MAX_BULK_VARBINDS / repetitions).max(1);
        let mut active: Vec<usize> = (0..roots.len()).collect();
        let mut asked = Vec::with_capacity(per_request.min(roots.len()));
        let mut done = Vec::with_capacity(per_request.min(roots.len()));
        let mut firsts = Vec::with_capacity(per_request.min(roots.len()));
        while !active.is_empty() {
            asked.clear();
            asked.extend(active.iter().take(per_request).copied());
            let pdu = {
                let oids: Vec<&[u32]> = asked.iter().map(|&c| cursors[c].as_slice()).collect();
                let req = Request {
                    kind: tag::GET_BULK,
                    a: 0,
                    b: i64::from(self.cfg.max_repetitions),
                    oids: &oids,
                    what: What::Walk {
                        root: roots[asked[0]],
                        at: &cursors[asked[0]],
                        columns: asked.len(),
                    },
                };
                let pdu = self.request_any_status(&req).await?;
                // An agent that cannot fit the columns asked answers with
                // no varbinds at all (net-snmp gives each column
                // `maxGetbulkResponses / columns` repetitions, 0 when the
                // columns outnumber it; RFC 3416 4.2.3 allows it) or, some
                // embedded ones, tooBig or genErr: ask for half as many
                // columns, down to one, which then answers for itself.
                let cannot_fit = match pdu.error_status {
                    0 => pdu.varbinds.is_empty(),
                    TOO_BIG | GEN_ERR => true,
                    _ => false,
                };
                if cannot_fit && asked.len() > 1 {
                    per_request = asked.len() / 2;
                    continue;
                }
                if pdu.error_status != 0 {
                    return Err(self.status_error(&req, &pdu));
                }
                pdu
            };
            done.clear();
            // Nothing at all for one column: it has ended.
            done.resize(asked.len(), pdu.varbinds.is_empty());
            firsts.clear();
            firsts.extend(asked.iter().map(|&c| rows[c].len()));
            // Varbind i answers column i % asked.len() (repetition after
            // repetition). Each OID must follow the one before it in its
            // column; the rows keep the OIDs' own vectors, cut to the index
            // (no copy per varbind), and a column's cursor is its last one.
            for (i, (mut oid, value)) in pdu.varbinds.into_iter().enumerate() {
                let k = i % asked.len();
                if done[k] {
                    continue;
                }
                let c = asked[k];
                let root = roots[c];
                if value == SnmpValue::EndOfMibView
                    || !oid.starts_with(root)
                    || oid.len() == root.len()
                {
                    done[k] = true;
                    continue;
                }
                let column = &mut rows[c];
                let previous = match column.len() {
                    n if n > firsts[k] => Previous::Row(&column[n - 1].0),
                    _ => Previous::Cursor(&cursors[c]),
                };
                if !previous.before(root, &oid) {
                    return Err(PollError::error(format!(
                        "snmp {}: walk of {} went backwards ({} after {}): agent bug",
                        self.cfg.address,
                        oid_string(root),
                        oid_string(&oid),
                        previous.shown(root)
                    )));
                }
                if column.len() >= MAX_WALK_ROWS {
                    return Err(PollError::error(format!(
                        "snmp {}: walk of {} exceeds {MAX_WALK_ROWS} rows",
                        self.cfg.address,
                        oid_string(root)
                    )));
                }
                oid.drain(..root.len());
                column.push((oid, value));
            }
            for (k, &c) in asked.iter().enumerate() {
                if !done[k]
                    && rows[c].len() > firsts[k]
                    && let Some((suffix, _)) = rows[c].last()
                {
                    let cursor = &mut cursors[c];
                    cursor.truncate(roots[c].len());
                    cursor.extend_from_slice(suffix);
                }
            }
            let ended: Vec<usize> = asked
                .iter()
                .zip(&done)
                .filter_map(|(&c, &d)| d.then_some(c))
                .collect();
            if !ended.is_empty() {
                active.retain(|c| !ended.contains(c));
            }
        }
        Ok(rows)
    }
}

/// One walked column: (index suffix under its root, value) per row.
type Rows = Vec<(Vec<u32>, SnmpValue)>;

/// What a walk's next OID must come after: the request's cursor (a full
/// OID), or the row before it in the same answer (its index under `root`).
enum Previous<'a> {
    Cursor(&'a [u32]),
    Row(&'a [u32]),
}

impl Previous<'_> {
    /// Whether `oid` (under `root`) comes after it.
    fn before(&self, root: &[u32], oid: &[u32]) -> bool {
        match self {
            Previous::Cursor(c) => oid > *c,
            Previous::Row(suffix) => oid[root.len()..] > **suffix,
        }
    }

    fn shown(&self, root: &[u32]) -> String {
        match self {
            Previous::Cursor(c) => oid_string(c),
            Previous::Row(suffix) => oid_string(&[root, suffix].concat()),
        }
    }
}

impl Poller for SnmpDriver {
    type Settings = SnmpConfig;

    fn build(settings: &SnmpConfig, device: &DeviceConfig) -> Result<Self, BuildError> {
        // Both checks belong to the config load; a driver built from
        // settings that skipped it must not walk `[]` (the whole view).
        if let Some(p) = settings.pending.first() {
            return Err(BuildError::Settings(format!(
                "device {}: MIB name {} ({}) was never resolved to an OID",
                device.name, p.name, p.at.key
            )));
        }
        settings
            .check_lookups()
            .map_err(|e| BuildError::Settings(format!("device {}: {e}", device.name)))?;
        Ok(SnmpDriver::for_device(
            settings,
            device.timeout,
            &device.name,
        ))
    }

    /// Boxed: the poll future is large (see [`super::Driver::poll_values`]).
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Readings(
            Box::pin(SnmpDriver::poll_readings(self)).await?,
        ))
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        failed_metrics(self.metrics(), kind, message)
    }
}

#[cfg(test)]
mod lookup_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(addr: SocketAddr) -> SnmpDriver {
        SnmpDriver::new(
            &SnmpConfig {
                address: addr.to_string(),
                security: SnmpSecurity::V2c {
                    community: "public".into(),
                },
                metrics: vec![SnmpMetric {
                    name: "uptime".into(),
                    oid: vec![1, 3, 6, 1, 2, 1, 1, 3, 0],
                    unit: String::new(),
                    meaning: ValueMeaning::default(),
                }],
                walks: vec![],
                max_repetitions: 10,
                retries: 0,
                lookups: vec![],
                drop_index: false,
                lookup_interval: DEFAULT_LOOKUP_INTERVAL,
                pending: vec![],
            },
            Duration::from_millis(300),
        )
    }

    #[tokio::test]
    async fn malformed_answer_names_the_byte() {
        let agent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = agent.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            if let Ok((_, peer)) = agent.recv_from(&mut buf).await {
                // A SEQUENCE claiming 40 bytes, holding 3.
                let _ = agent.send_to(&[0x30, 40, 2, 1, 1], peer).await;
            }
        });
        let e = driver(addr).poll().await.expect_err("malformed");
        assert!(
            e.message
                .contains("malformed SNMP answer of 5 bytes: at byte 0 (message): truncated"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refused_and_timeout_are_told_apart() {
        // Nothing listens: ICMP port unreachable.
        let free = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let e = driver(addr).poll().await.expect_err("refused");
        assert!(e.message.contains("connection refused"), "{e}");
        // Something listens but never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let e = driver(silent.local_addr().expect("addr"))
            .poll()
            .await
            .expect_err("timeout");
        assert_eq!(e.kind, FailureKind::Timeout);
        assert!(e.message.contains("no answer after 1 try"), "{e}");
        assert!(e.message.contains("wrong community"), "{e}");
    }
}
