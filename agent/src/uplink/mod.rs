//! The uplink: owns the agent's spool and its one stream to a collector.
//!
//! One task ([`Uplink::run`]) owns the open batch, the agent-wide series ids,
//! the spool and the connection. It may touch the spool (its only caller)
//! and the network towards the collectors, nothing else; others reach it
//! only through the intake channel (readings in) and the `watch` of
//! [`UplinkStats`] (counters out). Files: `connection.rs` (the connection
//! state machine, connect and its errors), `collectors.rs`
//! (the non-empty collector list), `backoff.rs`, `delivery.rs` (what goes
//! out on a stream and what the collector answers), `seal.rs` (the open
//! batch into the spool), `series_ids.rs`, `declared.rs` (per-stream
//! declarations), `epoch.rs` (when and how a new spool epoch compacts the
//! series dictionary), `encode.rs` / `decode.rs` (the spooled batch
//! format), `stats.rs` (the counters and their stats file).
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
//! Series ids are agent-wide for the spool's epoch (`SeriesIds`): the
//! first time the uplink sees a series it gives it the next id and adds its
//! key to the spool's dictionary (durable before any record uses the id).
//! Spooled records hold only ids, timestamps and values, in the columnar
//! form of `tributary.v1.Batch` (strings and failures as rows), so a float
//! reading costs about 10 bytes in the spool and on the wire. The same ids
//! are the stream-local ids on every stream: each stream only remembers
//! which ids it has declared, and a batch declares the ones it uses for the
//! first time on that stream. The dictionary counts toward the spool's
//! `max_bytes`; when it has grown well past the series in use and every
//! record is acked, the uplink starts a new epoch (`epoch.rs`): ids and
//! dictionary start empty, and the stream is opened again with a Hello of
//! the new epoch.
//!
//! Which batch goes next is `order.rs`'s: to a collector whose Welcome says
//! `out_of_order` (it keeps a committed set, a mark plus ranges), batches
//! sealed while the stream is open go ahead of the backlog, which gets
//! `backlog_share` of the bytes while both wait; to an older collector,
//! strictly in sequence order, as its committed sequence is a high-water
//! mark.

mod backoff;
mod collectors;
mod connection;
mod declared;
mod decode;
mod delivery;
mod encode;
mod epoch;
mod order;
mod seal;
mod seams;
mod series_ids;
mod stats;
#[cfg(test)]
mod tests;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{SpoolSample, UplinkMetrics};
use crate::reading::Reading;
use crate::scheduler::Room;
use crate::spool::{OnDrop, Spool};

pub use collectors::{Collectors, NoCollectors};
pub use connection::ConnectError;
pub use decode::{DecodeError, spooled_readings};
pub use seams::{Connecting, Connector, Failpoint, Failpoints, Io};
pub use stats::{UplinkStats, write_stats_file};

use connection::Link;
use epoch::Compaction;
use series_ids::SeriesIds;

/// Settings of the uplink.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub agent_id: String,
    /// Collector URLs, tried in order, moving on after a failure.
    pub collectors: Collectors,
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
    /// How long after an epoch starts the series in use are taken to be
    /// declared (2 × the longest device interval + timeout): what the
    /// dictionary gained by then is its floor (see `epoch.rs`).
    pub series_settle: Duration,
    /// Streams over this instead of TCP (the delivery simulation's
    /// network); `None` in the agent.
    pub connector: Option<Connector>,
    /// Draw the reconnect jitter from this seed instead of the OS's random
    /// numbers (the simulation, so a seed replays); `None` in the agent.
    pub jitter_seed: Option<u64>,
    /// The backlog's part of the bytes sent while live batches wait too
    /// (`0 < share <= 1`; see `order.rs`).
    pub backlog_share: f64,
    /// A fixed window of backlog bytes in flight instead of the one that
    /// follows the ack rate (`window.rs`): the delivery simulation's small
    /// backlogs then wait beside live batches. `None` in the agent.
    pub backlog_window: Option<u64>,
}

impl UplinkConfig {
    /// The defaults, streaming to `collectors`.
    pub fn new(agent_id: String, collectors: Collectors) -> Self {
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
            series_settle: Duration::from_secs(60),
            connector: None,
            jitter_seed: None,
            backlog_share: crate::config::DEFAULT_BACKLOG_SHARE,
            backlog_window: None,
        }
    }
}

/// What a config reload changes in a running uplink (sent through the
/// `watch` given to [`Uplink::with_updates`]).
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkUpdate {
    /// The collectors of the next connect (the stream in progress goes on).
    pub collectors: Collectors,
    /// The new fleet's `series_settle` (see [`UplinkConfig::series_settle`]).
    pub series_settle: Duration,
    /// Devices started (added or changed): the dictionary's floor is
    /// measured again.
    pub devices_started: bool,
}

/// Whether the uplink still takes readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    Open,
    /// The scheduler stopped: seal what is open, wait for the last acks
    /// until `give_up_at`, then stop.
    Draining {
        give_up_at: Instant,
    },
}

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
    /// The sequences that may have been sent before: every one spooled
    /// when the process started (an earlier process may have sent it), and
    /// each this process sent, on any stream. A batch in it goes out
    /// marked `resent`; one sent on the current stream is never sent on it
    /// again, so the set needs no per-stream part. A few ranges: each
    /// stream sends runs of the backlog and of the live batches, and the
    /// mark follows the oldest unacked record.
    sent: crate::spool::AckedSet,
    /// Highest sequence sent on the current (or last) stream.
    sent_on_stream: u64,
    /// After the collector refused a batch: batches go one at a time until
    /// the refused one is known (see `delivery.rs`).
    refusal: Option<delivery::Refusal>,
    /// The last Welcome said `out_of_order`: the next stream waits for its
    /// Welcome (and the acked set it tells) before sending (`order.rs`).
    expect_out_of_order: bool,
    /// When to roll the spool's epoch to compact its dictionary.
    compaction: Compaction,
    /// Drops of the epochs this process rolled over (for the stats).
    dropped_before_epoch: u64,
    /// The newest batch sent, and the epoch's drop count it carried.
    dropped_sent: (u64, u64),
    /// The drop count of the epoch the collector has acked (a batch
    /// carrying it is acked).
    dropped_acked: u64,
    stats: UplinkStats,
    stats_tx: watch::Sender<UplinkStats>,
    /// The uplink's and the spool's metrics, when metrics are on.
    metrics: Option<UplinkMetrics>,
    /// The intake's room, given back for each poll taken (when the
    /// scheduler's channel has one, see `scheduler/intake.rs`).
    room: Option<Room>,
    /// Config reloads.
    updates: Option<watch::Receiver<UplinkUpdate>>,
    /// The delivery simulation's hooks; `None` in the agent.
    failpoints: Option<Failpoints>,
}

/// How often the spool's gauges are sampled, and its acked set written
/// (when it changed: `ACKED`, see the spool's `acked_file.rs`), at most.
const SPOOL_SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Uplink {
    /// `intake` receives one `Vec` per poll from the scheduler; `spool` is
    /// the opened spool.
    pub fn new(
        config: UplinkConfig,
        intake: mpsc::Receiver<Vec<Reading>>,
        mut spool: Spool,
    ) -> (Self, watch::Receiver<UplinkStats>) {
        let ids = SeriesIds::new(spool.take_series());
        let (stats_tx, stats_rx) = watch::channel(UplinkStats::default());
        let mut sent = crate::spool::AckedSet::default();
        sent.reset_to(spool.last_seq());
        let stats = UplinkStats {
            dropped_readings: spool.dropped(),
            series_dictionary_bytes: spool.series_bytes(),
            ..Default::default()
        };
        let compaction = Compaction::new(config.series_settle, spool.series_bytes());
        (
            Uplink {
                config: Arc::new(config),
                intake,
                spool,
                open: Vec::new(),
                ids,
                open_since: None,
                blocked: false,
                sent,
                sent_on_stream: 0,
                refusal: None,
                expect_out_of_order: false,
                compaction,
                dropped_before_epoch: 0,
                dropped_sent: (0, 0),
                dropped_acked: 0,
                stats,
                stats_tx,
                metrics: None,
                room: None,
                updates: None,
                failpoints: None,
            },
            stats_rx,
        )
    }

    /// Keeps `metrics` up to date while it runs.
    pub fn with_metrics(mut self, metrics: UplinkMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Gives a permit back to `room` for each poll taken off the intake.
    pub fn with_room(mut self, room: Room) -> Self {
        self.room = Some(room);
        self
    }

    /// Reports to (and may be stopped by) the simulation's `failpoints`.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.spool.set_after_write(failpoints.after_write.clone());
        let on = failpoints.on.clone();
        self.spool
            .set_on_drop(Some(OnDrop(Arc::new(move |epoch, seq, readings| {
                on(Failpoint::Dropped {
                    epoch,
                    seq,
                    readings,
                })
            }))));
        self.failpoints = Some(failpoints);
        self
    }

    /// Applies what a config reload sends on `updates`.
    pub fn with_updates(mut self, updates: watch::Receiver<UplinkUpdate>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Runs until the intake closes (the scheduler stopped) and everything is
    /// acked, or `shutdown_timeout` after the intake closed.
    pub async fn run(mut self) {
        let mut link = Link::new(self.config.clone());
        let mut intake = Intake::Open;
        let flush_tick = self.config.batch_max_delay.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(flush_tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut spool_sampled: Option<Instant> = None;

        loop {
            if let Intake::Draining { give_up_at } = intake {
                self.seal();
                if self.open.is_empty() && self.spool.first_unacked().is_none() {
                    info!("uplink: everything acked; stopping");
                    break;
                }
                if Instant::now() >= give_up_at {
                    warn!(
                        unacked_batches = self.spool.pending(),
                        open_readings = self.open.len(),
                        "uplink: shutdown deadline passed; unacked batches stay in the spool"
                    );
                    break;
                }
            }
            if link.stream().is_none() {
                // Nothing is in flight without a stream: every unacked
                // record may be dropped to make room again.
                self.spool.clear_in_flight();
            }
            link.connect_if_due(|| self.hello());
            let want_send = link
                .stream()
                .is_some_and(|s| self.next_batch(&s.lanes).is_some());

            tokio::select! {
                readings = self.intake.recv(), if intake == Intake::Open && !self.blocked => match readings {
                    Some(r) => {
                        if let Some(room) = &self.room {
                            room.taken();
                        }
                        self.push(r);
                    }
                    None => {
                        intake = Intake::Draining {
                            give_up_at: Instant::now() + self.config.shutdown_timeout,
                        };
                    }
                },
                _ = ticker.tick() => {
                    self.compaction.tick(self.spool.series_bytes(), self.spool.max_bytes());
                    if self.blocked
                        || self.open_since.is_some_and(|t| t.elapsed() >= self.config.batch_max_delay)
                    {
                        self.seal();
                    }
                    if spool_sampled.is_none_or(|t| t.elapsed() >= SPOOL_SAMPLE_EVERY) {
                        spool_sampled = Some(Instant::now());
                        self.sample_spool(link.stream().map(|s| s.lanes.live_from));
                        // Two fsyncs with `[spool] sync` on: off the
                        // workers, as a seal's are.
                        if let Err(e) = seal::off_the_workers(|| self.spool.persist_acked()) {
                            warn!(error = %e, "spool: writing the acked set failed; retried in a second");
                        }
                    }
                }
                _ = sleep_until_deadline(intake) => {}
                update = next_update(&mut self.updates) => self.apply_update(&mut link, update),
                event = link.next_event(want_send) => self.on_event(&mut link, event),
            }
            // Most turns (a poll's readings taken) change no counter:
            // watchers are told only of changes.
            self.stats_tx.send_if_modified(|published| {
                let changed = *published != self.stats;
                if changed {
                    published.clone_from(&self.stats);
                    if let Some(m) = &mut self.metrics {
                        let s = &self.stats;
                        m.totals(
                            s.sealed_batches,
                            s.resent_batches,
                            s.dropped_readings,
                            self.spool.last_seq(),
                        );
                    }
                }
                changed
            });
            if let Some(m) = &mut self.metrics {
                m.link(link.state(), link.stream().map(|s| s.url.as_str()));
            }
        }
        link.close();
        self.stats_tx.send_replace(self.stats.clone());
    }
}

impl Uplink {
    /// Sets the spool's gauges; `live_from` is where the open stream's
    /// live batches begin (without a stream, every unacked batch waits).
    fn sample_spool(&mut self, live_from: Option<u64>) {
        if let Some(m) = &mut self.metrics {
            let (backlog_batches, backlog_bytes) =
                self.spool.waiting_below(live_from.unwrap_or(u64::MAX));
            m.spool(SpoolSample {
                backlog_batches,
                backlog_bytes,
                bytes: self.spool.bytes(),
                segments: self.spool.segments(),
                unacked_batches: self.spool.pending() as u64,
                last_seq: self.spool.last_seq(),
                first_unacked: self.spool.first_unacked(),
            });
        }
    }
}

impl Uplink {
    /// A reload's new settings.
    fn apply_update(&mut self, link: &mut Link, update: UplinkUpdate) {
        if link.set_collectors(update.collectors) {
            info!(
                collectors = %link.collectors().urls().join(", "),
                "uplink: new collector list; it applies at the next connect"
            );
            if let Some(m) = &mut self.metrics {
                m.set_collectors(link.collectors().urls());
            }
        }
        if update.devices_started {
            self.compaction.resettle(update.series_settle);
        }
    }
}

/// The next update of `updates`; never, without updates or once their
/// sender is gone (the agent is stopping).
async fn next_update(updates: &mut Option<watch::Receiver<UplinkUpdate>>) -> UplinkUpdate {
    if let Some(rx) = updates {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
        *updates = None;
    }
    std::future::pending().await
}

/// Sleeps until the shutdown deadline, or forever while the intake is open.
async fn sleep_until_deadline(intake: Intake) {
    match intake {
        Intake::Draining { give_up_at } => tokio::time::sleep_until(give_up_at).await,
        Intake::Open => std::future::pending().await,
    }
}
