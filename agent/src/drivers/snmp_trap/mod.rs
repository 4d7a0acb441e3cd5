//! The SNMP notification receiver (`driver = "snmp_trap"`): SNMPv1 traps,
//! SNMPv2c and SNMPv3 traps and informs on a UDP port (v3: `v3.rs`, the
//! receiver's own engine for informs in `engine.rs`), each turned into readings
//! stamped with the time it arrived, so a link-down between two polls is
//! stored when it happened.
//!
//! Devices push; the scheduler still polls. The first poll binds the
//! socket and starts a task that owns it: it decodes each datagram, checks
//! the community, queues the notification for the next poll (a bounded
//! channel: `max_pending`) and acknowledges an inform only once it is
//! queued, so an inform that finds the queue full is sent again by its
//! sender rather than lost here; a resend of an inform already queued (same
//! sender, community or user and request id within 150 s, SNMPv3's time
//! window) is acknowledged again,
//! not queued twice. The queue is bounded by count and by datagram bytes.
//! Between the acknowledgement and the next poll an inform is only in
//! memory (a crash or the device's stop loses it; the stop logs how many). A poll takes what is queued: no lock is
//! shared. The device is up while the socket is bound; a poll that cannot
//! bind fails with the reason (port taken, no privilege for port 162).
//!
//! Readings of one notification, on the device named after its sender
//! (`senders` maps an address to a name; otherwise the address itself):
//! one reading named after the notification (`linkDown`, from the MIBs of
//! `mibs`, or its numeric OID) with the value 1, and one per varbind named
//! after its MIB object (`ifOperStatus`, the instance in `index`) or its
//! numeric OID; each carries the notification as the label `snmpTrapOID`.
//! Every poll also reports, on the receiving device itself,
//! `snmp_trap_rejected_total{cause}` (`community`: no configured community;
//! `malformed`: not a well-formed notification; `user`: an SNMPv3 user or
//! engine not accepted; `auth`: an SNMPv3 MAC, level, time window or
//! decryption failed; `version`: an unknown SNMP version) and
//! `snmp_trap_dropped_total{cause}`
//! (`rate`: beyond `max_rate_per_sender` or `max_rate`, token buckets of
//! one second's worth; `queue`: the queue was full). A rejected sender is
//! logged at most once a minute.
//!
//! Owns: one UDP socket, its task and queue. May touch: the SNMP driver's
//! BER codec, value mapping and MIB loader, and `crate::reading`.

mod config;
mod decode;
mod engine;
#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;
mod v3;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use self::config::{
    DEFAULT_MAX_PENDING, DEFAULT_MIBS, OidName, OidNames, SnmpTrapConfig, own_engine_id,
};
pub use self::decode::{Notification, decode, response};

use super::snmp::ber;
use super::snmp::mib::Mibs;
use super::snmp::value::{to_value, to_value_as};
use super::snmp::{ValueMeaning, oid_string};
use super::{BuildError, PollError, Poller};
use crate::config::{AgentConfig, ConfigError, DeviceConfig};
use crate::drivers::DriverConfig;
use crate::reading::{FailureKind, Polled, Reading, SeriesKey, Value, now_ns, series_with};

/// Largest datagram read (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// How often one sender's rejections are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Senders remembered for that (beyond, the others are not logged).
const MAX_TOLD: usize = 10_000;

/// Senders with a rate bucket of their own.
const MAX_SENDERS: usize = 10_000;

/// How long a queued inform is remembered, to recognise its resends: as
/// long as SNMPv3's time window (RFC 3414 §2.2.3), inside which a replayed
/// inform still authenticates and would otherwise be queued again.
const INFORM_MEMORY: Duration = Duration::from_secs(crate::drivers::snmp::v3::TIME_WINDOW_SECS);

/// Informs remembered at most.
const MAX_INFORMS: usize = 100_000;

/// Series kept for reuse; beyond this the cache starts again (the
/// scheduler's series limit bounds what is stored).
const MAX_CACHED_SERIES: usize = 10_000;

/// Receives SNMP notifications for one device.
pub struct SnmpTrapDriver {
    cfg: Arc<SnmpTrapConfig>,
    device: String,
    receiver: Option<Receiver>,
    series: HashMap<SeriesName, Arc<SeriesKey>>,
}

/// (device, metric, labels).
type SeriesName = (String, String, BTreeMap<String, String>);

impl std::fmt::Debug for SnmpTrapDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnmpTrapDriver")
            .field("listen", &self.cfg.listen)
            .field("device", &self.device)
            .field("listening", &self.receiver.is_some())
            .finish_non_exhaustive()
    }
}

/// The receiving task, as the driver sees it; dropping it stops the task.
struct Receiver {
    rx: mpsc::Receiver<Received>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    /// The device stopped (a reload removed or changed it, or the agent is
    /// stopping): what is queued and not polled yet is lost, and said so.
    fn drop(&mut self) {
        self.task.abort();
        let queued = self.rx.len();
        if queued > 0 {
            warn!(
                queued,
                "snmp_trap: the device stopped with notifications not yet polled; they are lost (informs among them were acknowledged)"
            );
        }
    }
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Community,
    Malformed,
    Version,
    User,
    Auth,
}

impl Cause {
    const ALL: [Cause; 5] = [
        Cause::Community,
        Cause::Malformed,
        Cause::Version,
        Cause::User,
        Cause::Auth,
    ];

    fn label(self) -> &'static str {
        match self {
            Cause::Community => "community",
            Cause::Malformed => "malformed",
            Cause::Version => "version",
            Cause::User => "user",
            Cause::Auth => "auth",
        }
    }
}

#[derive(Default)]
struct Counts {
    rejected: [AtomicU64; 5],
    /// By cause: over a rate, the queue full.
    dropped_rate: AtomicU64,
    dropped_queue: AtomicU64,
    /// Informs sent again and acknowledged again, not queued twice.
    repeated: AtomicU64,
    /// SNMPv3 engine discoveries answered (a usmStatsUnknownEngineIDs
    /// Report to a request for no engine id): a sender learning this
    /// receiver's engine before its inform, not a rejection.
    discoveries: AtomicU64,
    /// Bytes of the datagrams queued and not yet taken by a poll.
    pending_bytes: AtomicUsize,
}

/// A notification and where and when it came from.
struct Received {
    ts_ns: i64,
    source: IpAddr,
    /// The datagram's size, counted in [`Counts::pending_bytes`] while
    /// queued.
    bytes: usize,
    notification: Notification,
}

impl SnmpTrapDriver {
    pub fn new(cfg: &SnmpTrapConfig, device: &str) -> Self {
        SnmpTrapDriver {
            cfg: Arc::new(cfg.clone()),
            device: device.to_owned(),
            receiver: None,
            series: HashMap::new(),
        }
    }

    /// Binds the socket on the first poll, then takes every queued
    /// notification's readings and the two counts.
    pub async fn poll(&mut self) -> Result<Vec<Reading>, PollError> {
        if self.receiver.is_none() {
            let socket = UdpSocket::bind(self.cfg.listen).await.map_err(|e| {
                PollError::error(format!(
                    "snmp_trap: cannot listen on udp {}: {e}",
                    self.cfg.listen
                ))
            })?;
            // Reading and fsyncing the boots file blocks: off the runtime.
            let (cfg, device) = (self.cfg.clone(), self.device.clone());
            let own = tokio::task::spawn_blocking(move || own_engine(&cfg, &device))
                .await
                .map_err(|e| PollError::error(format!("snmp_trap: engine start failed: {e}")))?;
            info!(
                device = %self.device,
                listen = %self.cfg.listen,
                local_engine_id = %format!("0x{}", super::snmp::value::hex(&own.id, "")),
                engine_boots = own.boots,
                "receiving SNMP notifications"
            );
            let (tx, rx) = mpsc::channel(self.cfg.max_pending);
            let counts = Arc::new(Counts::default());
            let task = tokio::spawn(receive(socket, self.cfg.clone(), tx, counts.clone(), own));
            self.receiver = Some(Receiver { rx, counts, task });
        }
        let mut readings = Vec::new();
        let mut taken = Vec::new();
        if let Some(r) = &mut self.receiver {
            while taken.len() < self.cfg.max_pending {
                match r.rx.try_recv() {
                    Ok(received) => {
                        r.counts
                            .pending_bytes
                            .fetch_sub(received.bytes, Ordering::Relaxed);
                        taken.push(received);
                    }
                    Err(_) => break,
                }
            }
        }
        for received in taken {
            self.readings_of(received, &mut readings);
        }
        if let Some(r) = &self.receiver {
            let mut counts: Vec<(&str, BTreeMap<String, String>, u64)> = Cause::ALL
                .iter()
                .map(|&c| {
                    let labels = BTreeMap::from([("cause".to_owned(), c.label().to_owned())]);
                    let n = r.counts.rejected[c as usize].load(Ordering::Relaxed);
                    ("snmp_trap_rejected_total", labels, n)
                })
                .collect();
            for (cause, n) in [
                ("rate", &r.counts.dropped_rate),
                ("queue", &r.counts.dropped_queue),
            ] {
                let labels = BTreeMap::from([("cause".to_owned(), cause.to_owned())]);
                counts.push(("snmp_trap_dropped_total", labels, n.load(Ordering::Relaxed)));
            }
            counts.push((
                "snmp_trap_informs_repeated_total",
                BTreeMap::new(),
                r.counts.repeated.load(Ordering::Relaxed),
            ));
            counts.push((
                "snmp_trap_discoveries_total",
                BTreeMap::new(),
                r.counts.discoveries.load(Ordering::Relaxed),
            ));
            let device = self.device.clone();
            for (metric, labels, n) in counts {
                let series = self.series(&device, metric, labels);
                readings.push(Reading {
                    series,
                    // Stamped by the scheduler with the poll's time.
                    ts_ns: 0,
                    value: Value::I64(i64::try_from(n).unwrap_or(i64::MAX)),
                });
            }
        }
        Ok(readings)
    }

    /// The readings of one notification, stamped when it arrived.
    fn readings_of(&mut self, r: Received, out: &mut Vec<Reading>) {
        let cfg = self.cfg.clone();
        let names = &cfg.names;
        let n = &r.notification;
        let device = cfg
            .senders
            .get(&r.source)
            .cloned()
            .unwrap_or_else(|| r.source.to_string());
        let trap = match names.find(&n.trap_oid) {
            Some((name, [])) => name.name.clone(),
            _ => oid_string(&n.trap_oid),
        };
        let labels = BTreeMap::from([("snmpTrapOID".to_owned(), trap.clone())]);
        out.push(Reading {
            series: self.series(&device, &trap, labels.clone()),
            ts_ns: r.ts_ns,
            value: Value::I64(1),
        });
        for (oid, value) in &n.varbinds {
            let mut labels = labels.clone();
            let (metric, value) = match names.find(oid) {
                // A v1 trap's agent-addr (appended by `decode`): named so
                // whether SNMP-COMMUNITY-MIB is loaded or not.
                _ if oid == decode::SNMP_TRAP_ADDRESS_0 => {
                    ("snmpTrapAddress".to_owned(), to_value(value))
                }
                Some((name, instance)) => {
                    if !instance.is_empty() {
                        labels.insert("index".to_owned(), oid_string(instance));
                    }
                    (
                        name.name.replace('-', "_"),
                        to_value_as(value, &name.meaning),
                    )
                }
                None => (oid_string(oid), to_value(value)),
            };
            out.push(Reading {
                series: self.series(&device, &metric, labels),
                ts_ns: r.ts_ns,
                value,
            });
        }
    }

    fn series(
        &mut self,
        device: &str,
        metric: &str,
        labels: BTreeMap<String, String>,
    ) -> Arc<SeriesKey> {
        if self.series.len() >= MAX_CACHED_SERIES {
            self.series.clear();
        }
        let key = (device.to_owned(), metric.to_owned(), labels);
        if let Some(s) = self.series.get(&key) {
            return s.clone();
        }
        let s = series_with(device, metric, &key.2, "");
        self.series.insert(key, s.clone());
        s
    }
}

/// The SNMPv3 engine of the receiver `device`, started: its id
/// (configured, or derived from the agent id and the device name) and the
/// next boots (kept beside the spool; blocking file I/O). Without SNMPv3
/// users it answers nothing, and no boots are counted.
fn own_engine(cfg: &SnmpTrapConfig, device: &str) -> engine::OwnEngine {
    let id = cfg
        .local_engine_id
        .clone()
        .unwrap_or_else(|| own_engine_id(&cfg.agent_id, device));
    let boots = if cfg.users.is_empty() {
        1
    } else {
        engine::next_boots(cfg.state_dir.as_deref(), &id)
    };
    engine::OwnEngine::new(id, boots, cfg.users.len(), Instant::now())
}

/// The receiving task: decode, check, queue, acknowledge informs.
async fn receive(
    socket: UdpSocket,
    cfg: Arc<SnmpTrapConfig>,
    tx: mpsc::Sender<Received>,
    counts: Arc<Counts>,
    own: engine::OwnEngine,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut told = Told::default();
    let mut total = Bucket::new(cfg.max_rate, Instant::now());
    let mut per_sender: HashMap<IpAddr, Bucket> = HashMap::new();
    let mut informs = Informs::default();
    let mut v3 = v3::V3::new(own, Instant::now());
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!(listen = %cfg.listen, error = %e, "snmp_trap: receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let ts_ns = now_ns();
        // Rates first: a flood is dropped before it costs decoding.
        let now = Instant::now();
        if per_sender.len() >= MAX_SENDERS {
            per_sender.retain(|_, b| !b.full(now));
        }
        let busy = per_sender.len() >= MAX_SENDERS;
        let sender_ok = match per_sender.entry(from.ip()) {
            std::collections::hash_map::Entry::Occupied(mut b) => b.get_mut().take(now),
            // Past MAX_SENDERS busy senders, new ones share the total only.
            std::collections::hash_map::Entry::Vacant(_) if busy => true,
            std::collections::hash_map::Entry::Vacant(v) => v
                .insert(Bucket::new(cfg.max_rate_per_sender, now))
                .take(now),
        };
        if !sender_ok || !total.take(now) {
            counts.dropped_rate.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let raw = &buf[..len];
        let opened = if ber::message_version(raw).ok() == Some(3) {
            v3.open(&cfg, raw, now)
        } else {
            open_community(&cfg, raw)
        };
        let v3::Accepted { notification, ack } = match opened {
            Ok(accepted) => accepted,
            Err(refusal) => {
                if let Some(report) = &refusal.report {
                    send_ack(&socket, report, from).await;
                }
                match refusal.cause {
                    Some(cause) => told.reject(&counts, &cfg, from, cause, &refusal.why),
                    None => {
                        counts.discoveries.fetch_add(1, Ordering::Relaxed);
                        debug!(%from, reason = refusal.why, "snmp_trap: SNMPv3 engine discovery answered")
                    }
                }
                continue;
            }
        };
        // (sender, community or SNMPv3 user, request id) names an inform.
        let inform = notification
            .inform
            .as_ref()
            .zip(ack)
            .map(|((id, _), ack)| ((from.ip(), notification.community.clone(), *id), ack));
        // An inform sent again (its acknowledgement lost or late) that was
        // queued already: acknowledged again, not queued twice.
        if let Some((key, ack)) = &inform
            && informs.seen(key, now)
        {
            counts.repeated.fetch_add(1, Ordering::Relaxed);
            send_ack(&socket, ack, from).await;
            continue;
        }
        // Memory is bounded by bytes as well as by count.
        if counts.pending_bytes.load(Ordering::Relaxed) + len > cfg.max_pending_bytes {
            counts.dropped_queue.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let received = Received {
            ts_ns,
            source: from.ip(),
            bytes: len,
            notification,
        };
        counts.pending_bytes.fetch_add(len, Ordering::Relaxed);
        match tx.try_send(received) {
            Ok(()) => {
                if let Some((key, ack)) = inform {
                    informs.remember(key, now);
                    send_ack(&socket, &ack, from).await;
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                counts.pending_bytes.fetch_sub(len, Ordering::Relaxed);
                counts.dropped_queue.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// An SNMPv1/v2c datagram, checked against the communities.
fn open_community(cfg: &SnmpTrapConfig, raw: &[u8]) -> Result<v3::Accepted, v3::Refusal> {
    let refused = |cause, why: String| v3::Refusal {
        cause: Some(cause),
        why,
        report: None,
    };
    match decode(raw) {
        Ok(n) if cfg.communities.iter().any(|c| c.as_bytes() == n.community) => {
            let ack = n
                .inform
                .as_ref()
                .map(|(id, varbinds)| response(n.version, &n.community, *id, varbinds));
            Ok(v3::Accepted {
                notification: n,
                ack,
            })
        }
        Ok(_) => Err(refused(
            Cause::Community,
            "no configured community".to_owned(),
        )),
        Err(e) if e.field == "message.version" && e.reason.contains("SNMP") => {
            Err(refused(Cause::Version, e.to_string()))
        }
        Err(e) => Err(refused(Cause::Malformed, e.to_string())),
    }
}

async fn send_ack(socket: &UdpSocket, ack: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(ack, to).await {
        debug!(%to, error = %e, "snmp_trap: inform acknowledgement not sent");
    }
}

/// (sender, community, request id) of an inform.
type InformKey = (IpAddr, Vec<u8>, i32);

/// The informs queued in the last [`INFORM_MEMORY`], so that a resend is
/// recognised (senders retry after about a second, a few times).
#[derive(Default)]
struct Informs {
    seen: HashMap<InformKey, Instant>,
}

impl Informs {
    fn seen(&mut self, key: &InformKey, now: Instant) -> bool {
        self.seen
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < INFORM_MEMORY)
    }

    fn remember(&mut self, key: InformKey, now: Instant) {
        if self.seen.len() >= MAX_INFORMS {
            self.seen
                .retain(|_, at| now.duration_since(*at) < INFORM_MEMORY);
        }
        // Still full of recent ones (a flood): forgotten all at once, and
        // a resend of one of those may then be queued twice.
        if self.seen.len() >= MAX_INFORMS {
            self.seen.clear();
        }
        self.seen.insert(key, now);
    }
}

/// A token bucket: `rate` tokens a second, at most one second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it is back to full (its sender idle): forgettable.
    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
    }
}

/// When each sender was last logged as rejected.
#[derive(Default)]
struct Told(HashMap<IpAddr, Instant>);

impl Told {
    /// Counts a rejected datagram and logs it, at most once a minute per
    /// sender (a flood must not flood the log; the counts say how many).
    fn reject(
        &mut self,
        counts: &Counts,
        cfg: &SnmpTrapConfig,
        from: SocketAddr,
        cause: Cause,
        why: &str,
    ) {
        counts.rejected[cause as usize].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self.0.len() >= MAX_TOLD {
            self.0.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        let due = self
            .0
            .get(&from.ip())
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due && self.0.len() < MAX_TOLD {
            self.0.insert(from.ip(), now);
            warn!(listen = %cfg.listen, %from, cause = cause.label(), reason = why, "snmp_trap: datagram rejected (counted in snmp_trap_rejected_total; this sender is logged again in a minute at the earliest)");
        }
    }
}

/// Tells every receiver of `cfg` the agent's id (its engine id is derived
/// from it unless `local_engine_id` is set) and where to keep its engine's
/// boots (the spool directory). Two receivers with the same own engine id
/// (configured or derived) are an error: they would share a boots file
/// and the keys localized to it.
pub fn place(cfg: &mut AgentConfig) -> Result<(), ConfigError> {
    let mut seen: HashMap<Vec<u8>, String> = HashMap::new();
    for device in &mut cfg.devices {
        if let DriverConfig::SnmpTrap(t) = &mut device.driver {
            t.agent_id.clone_from(&cfg.id);
            t.state_dir = Some(cfg.spool.dir.clone());
            let id = t
                .local_engine_id
                .clone()
                .unwrap_or_else(|| own_engine_id(&cfg.id, &device.name));
            if let Some(first) = seen.insert(id.clone(), device.name.clone()) {
                let device_key = t.at.key.strip_suffix(".mibs").unwrap_or(&t.at.key);
                let at = super::snmp::At {
                    file: t.at.file.clone(),
                    line: t.at.line,
                    key: format!("{device_key}.local_engine_id"),
                };
                return Err(at.error(format!(
                    "devices \"{first}\" and \"{}\" have the same own SNMPv3 engine id 0x{} (configured or derived): they would share a boots file and localized keys; give one a different `local_engine_id`",
                    device.name,
                    super::snmp::value::hex(&id, "")
                )));
            }
        }
    }
    Ok(())
}

/// Fills `cfg.names` from its `mibs` with `mibs_loader`: every object and
/// notification those modules define. A module that `mibs` names and
/// cannot be read is an error; a default one that is missing is skipped
/// (its OIDs stay numeric).
pub fn resolve_trap_names(
    mibs_loader: &mut Mibs,
    cfg: &mut SnmpTrapConfig,
) -> Result<(), ConfigError> {
    let mut names = BTreeMap::new();
    for module in &cfg.mibs {
        let defined = match mibs_loader.defined_names(module) {
            Ok(d) => d,
            Err(e) if cfg.mibs_written => {
                return Err(cfg
                    .at
                    .error(format!("cannot read MIB module {module}: {e}")));
            }
            Err(e) => {
                info!(module, error = %e, "snmp_trap: default MIB module not loaded; its OIDs stay numeric");
                continue;
            }
        };
        for (name, _) in defined {
            // A name that does not resolve (an import missing) is left out.
            if let Ok(object) = mibs_loader.object(module, &name) {
                names.entry(object.oid).or_insert(OidName {
                    name: object.name,
                    meaning: ValueMeaning {
                        format: object.format,
                        enums: object.enums,
                        enum_label: false,
                    },
                });
            }
        }
    }
    cfg.names = OidNames(Arc::new(names));
    Ok(())
}

impl Poller for SnmpTrapDriver {
    type Settings = SnmpTrapConfig;

    fn build(settings: &SnmpTrapConfig, device: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(SnmpTrapDriver::new(settings, &device.name))
    }

    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Readings(SnmpTrapDriver::poll(self).await?))
    }

    /// Its series come from the notifications: the `up` series carries the
    /// failure (the socket could not be bound).
    fn failed(&self, _: FailureKind, _: &str) -> Polled {
        Polled::Samples(Vec::new())
    }
}
