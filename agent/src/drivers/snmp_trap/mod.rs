//! The SNMP notification receiver (`driver = "snmp_trap"`): SNMPv1 traps,
//! SNMPv2c traps and informs on a UDP port, each turned into readings
//! stamped with the time it arrived, so a link-down between two polls is
//! stored when it happened.
//!
//! Devices push; the scheduler still polls. The first poll binds the
//! socket and starts a task that owns it: it decodes each datagram, checks
//! the community, queues the notification for the next poll (a bounded
//! channel: `max_pending`) and acknowledges an inform only once it is
//! queued, so an inform that finds the queue full is sent again by its
//! sender rather than lost here. A poll takes what is queued: no lock is
//! shared. The device is up while the socket is bound; a poll that cannot
//! bind fails with the reason (port taken, no privilege for port 162).
//!
//! Readings of one notification from `source` (the sender's IP address),
//! `trap` being the notification's MIB name (`linkDown`) or its numeric OID:
//! `snmp_trap{trap, source} = 1`, and one reading per varbind named by its
//! MIB object (`ifOperStatus{trap, source, index="3"} = 2`), or
//! `snmp_trap_varbind{trap, source, oid}` when no module of `mibs` names
//! it. Every poll also reports `snmp_trap_rejected_total` (datagrams that
//! are not a v1/v2c notification with the right community) and
//! `snmp_trap_dropped_total` (notifications that found the queue full).
//! SNMPv3 notifications are rejected (counted) for now.
//!
//! Owns: one UDP socket, its task and queue. May touch: the SNMP driver's
//! BER codec, value mapping and MIB loader, and `crate::reading`.

mod config;
mod decode;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use self::config::{DEFAULT_MAX_PENDING, DEFAULT_MIBS, OidName, OidNames, SnmpTrapConfig};
pub use self::decode::{Notification, decode, response};

use super::snmp::mib::Mibs;
use super::snmp::value::{to_value, to_value_as};
use super::snmp::{ValueMeaning, oid_string};
use super::{BuildError, PollError, Poller};
use crate::config::{ConfigError, DeviceConfig};
use crate::reading::{FailureKind, Polled, Reading, SeriesKey, Value, now_ns, series_with};

/// Largest datagram read (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// Series kept for reuse; beyond this the cache starts again (the
/// scheduler's series limit bounds what is stored).
const MAX_CACHED_SERIES: usize = 10_000;

/// Receives SNMP notifications for one device.
pub struct SnmpTrapDriver {
    cfg: Arc<SnmpTrapConfig>,
    device: String,
    receiver: Option<Receiver>,
    series: HashMap<(String, BTreeMap<String, String>), Arc<SeriesKey>>,
}

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
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Counts {
    rejected: AtomicU64,
    dropped: AtomicU64,
    /// A rejection was logged at warn level (later ones at debug).
    rejection_told: AtomicBool,
}

/// A notification and where and when it came from.
struct Received {
    ts_ns: i64,
    source: IpAddr,
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
            info!(device = %self.device, listen = %self.cfg.listen, "receiving SNMP notifications");
            let (tx, rx) = mpsc::channel(self.cfg.max_pending);
            let counts = Arc::new(Counts::default());
            let task = tokio::spawn(receive(socket, self.cfg.clone(), tx, counts.clone()));
            self.receiver = Some(Receiver { rx, counts, task });
        }
        let mut readings = Vec::new();
        let mut taken = Vec::new();
        if let Some(r) = &mut self.receiver {
            while taken.len() < self.cfg.max_pending {
                match r.rx.try_recv() {
                    Ok(received) => taken.push(received),
                    Err(_) => break,
                }
            }
        }
        for received in taken {
            self.readings_of(received, &mut readings);
        }
        if let Some(r) = &self.receiver {
            let rejected = r.counts.rejected.load(Ordering::Relaxed);
            let dropped = r.counts.dropped.load(Ordering::Relaxed);
            for (metric, n) in [
                ("snmp_trap_rejected_total", rejected),
                ("snmp_trap_dropped_total", dropped),
            ] {
                let series = self.series(metric, BTreeMap::new());
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
        let names = self.cfg.names.clone();
        let n = &r.notification;
        let trap = match names.find(&n.trap_oid) {
            Some((name, [])) => name.name.clone(),
            _ => oid_string(&n.trap_oid),
        };
        let mut labels = BTreeMap::new();
        labels.insert("trap".to_owned(), trap);
        labels.insert("source".to_owned(), r.source.to_string());
        out.push(Reading {
            series: self.series("snmp_trap", labels.clone()),
            ts_ns: r.ts_ns,
            value: Value::I64(1),
        });
        for (oid, value) in &n.varbinds {
            let mut labels = labels.clone();
            let (metric, value) = match names.find(oid) {
                Some((name, instance)) => {
                    if !instance.is_empty() {
                        labels.insert("index".to_owned(), oid_string(instance));
                    }
                    (
                        name.name.replace('-', "_"),
                        to_value_as(value, &name.meaning),
                    )
                }
                None => {
                    labels.insert("oid".to_owned(), oid_string(oid));
                    ("snmp_trap_varbind".to_owned(), to_value(value))
                }
            };
            out.push(Reading {
                series: self.series(&metric, labels),
                ts_ns: r.ts_ns,
                value,
            });
        }
    }

    fn series(&mut self, metric: &str, labels: BTreeMap<String, String>) -> Arc<SeriesKey> {
        if self.series.len() >= MAX_CACHED_SERIES {
            self.series.clear();
        }
        let key = (metric.to_owned(), labels);
        if let Some(s) = self.series.get(&key) {
            return s.clone();
        }
        let s = series_with(&self.device, metric, &key.1, "");
        self.series.insert(key, s.clone());
        s
    }
}

/// The receiving task: decode, check, queue, acknowledge informs.
async fn receive(
    socket: UdpSocket,
    cfg: Arc<SnmpTrapConfig>,
    tx: mpsc::Sender<Received>,
    counts: Arc<Counts>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                debug!(listen = %cfg.listen, error = %e, "snmp_trap: receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let ts_ns = now_ns();
        let notification = match decode(&buf[..len]) {
            Ok(n) if n.community == cfg.community.as_bytes() => n,
            Ok(_) => {
                reject(&counts, &cfg, from, "wrong community");
                continue;
            }
            Err(e) => {
                reject(&counts, &cfg, from, &e.to_string());
                continue;
            }
        };
        let ack = notification.inform.as_ref().map(|(id, varbinds)| {
            response(notification.version, &notification.community, *id, varbinds)
        });
        let received = Received {
            ts_ns,
            source: from.ip(),
            notification,
        };
        match tx.try_send(received) {
            Ok(()) => {
                if let Some(ack) = ack
                    && let Err(e) = socket.send_to(&ack, from).await
                {
                    debug!(to = %from, error = %e, "snmp_trap: inform acknowledgement not sent");
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Counts a rejected datagram; the first is logged at warn level, the rest
/// at debug (a flood must not flood the log).
fn reject(counts: &Counts, cfg: &SnmpTrapConfig, from: SocketAddr, why: &str) {
    counts.rejected.fetch_add(1, Ordering::Relaxed);
    if counts.rejection_told.swap(true, Ordering::Relaxed) {
        debug!(listen = %cfg.listen, %from, reason = why, "snmp_trap: datagram rejected");
    } else {
        warn!(listen = %cfg.listen, %from, reason = why, "snmp_trap: datagram rejected (further rejections are counted in snmp_trap_rejected_total and logged at debug level)");
    }
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
