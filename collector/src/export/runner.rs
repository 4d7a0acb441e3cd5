//! One export's task: follows the commit log from its cursor, page by
//! page, sends each page, and saves the cursor (with its totals) once the
//! page is delivered, so a crash resends at most the page in flight. A
//! nats export pipelines its pages (`nats_step`): up to [`NATS_PAGES`] in
//! flight, the store work done while the PubAcks come back, the cursor
//! moved past a page only once it and every older page are acknowledged;
//! a crash resends at most those pages (same message ids).
//!
//! On PostgreSQL the task first takes its export's advisory lock on its
//! own connection and runs only while it holds it: a collector sharing the
//! database that holds it already makes this one wait, trying again every
//! [`HOLD_RETRY`], and take over when that holder's connection ends. A
//! lost connection (and so a lost lock) sends the task back to connect,
//! take the lock and read the cursor as stored.
//!
//! Owns: its log connection, its cursor, its series cache, its sink.
//! Never talks to the merger; a slow or dead destination only makes this
//! task fall behind (lag in readings and seconds, in its metrics), and it
//! catches up in pages as large as a request budget allows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::nats::NatsSink;
use super::remote_write::{RemoteWriteSink, SeriesLabels, series_labels};
use crate::config::exports::{ExportConfig, Filter};
use crate::metrics::ExportHandles;
use crate::store::export::{CommitLog, CursorRow, LogConn, LogReading, TRIM_ROWS};

/// Readings one page reads at most (a batch is never split).
const PAGE_READINGS: usize = 50_000;
/// Pages a nats export holds at most: read and encoded, published or
/// queued, not all acknowledged.
const NATS_PAGES: usize = 3;
/// Wait when the log has nothing new.
const IDLE: Duration = Duration::from_millis(100);
/// How often the lag gauges and the `max_lag` check read the backlog.
const LAG_REFRESH: Duration = Duration::from_secs(2);
/// Wait between tries to take an export held by another collector.
const HOLD_RETRY: Duration = Duration::from_secs(2);
/// Wait after a failed read of the store.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// When the task next reads the backlog's size, whether the last trim
/// left more to trim, and (nats) the pipeline's state towards the store.
#[derive(Debug)]
struct Pace {
    measure_at: tokio::time::Instant,
    trim_more: bool,
    /// The last read found nothing after the pipeline's youngest page:
    /// no read until the pipeline is empty.
    log_end: bool,
    /// The cursor moved (pages done) and is not saved yet.
    unsaved: bool,
}

/// The destination of one export.
// One per export task, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Sink {
    RemoteWrite(RemoteWriteSink),
    /// Keeps its own series cache and connection (`nats.rs`).
    Nats(NatsSink),
}

/// Trims the log, and every [`LAG_REFRESH`] reads the lag into the gauges
/// and (when `may_skip`: nothing in flight past the cursor) skips what is
/// older than `max_lag`.
async fn maintain(
    config: &ExportConfig,
    metrics: &ExportHandles,
    conn: &mut LogConn,
    cursor: &mut CursorRow,
    pace: &mut Pace,
    may_skip: bool,
) -> Result<(), crate::store::read::ReadError> {
    let name = &config.name;
    let now = tokio::time::Instant::now();
    let due = now >= pace.measure_at;
    // What every cursor has passed goes here, a bounded piece per step,
    // off the merger's commit (a failure only delays it).
    if due || pace.trim_more {
        match conn.trim().await {
            Ok(n) => pace.trim_more = n >= TRIM_ROWS as u64,
            Err(e) => {
                pace.trim_more = false;
                warn!(export = %name, error = %e, "export cannot trim the log; trying again later");
            }
        }
    }
    // The lag and the `max_lag` check sum over the backlog: every
    // LAG_REFRESH, not every page.
    if due {
        pace.measure_at = now + LAG_REFRESH;
        if let (Some(max_lag), true) = (config.max_lag, may_skip) {
            let before = tributary_process::now_ns()
                .saturating_sub(i64::try_from(max_lag.as_nanos()).unwrap_or(i64::MAX));
            if let Some((end, readings)) = conn.older_than(cursor.position, before).await? {
                error!(export = %name, from = cursor.position + 1, to = end, readings, max_lag = ?max_lag, "export skipped committed readings older than max_lag; they were not sent");
                cursor.position = end;
                cursor.skipped += readings;
                metrics.skipped.inc_by(readings);
                conn.save(cursor.clone()).await?;
            }
        }
        let pending = conn.pending(cursor.position).await?;
        metrics.lag_readings.set(pending.readings as i64);
        metrics
            .lag_seconds
            .set(pending.oldest_received_ns.map_or(0.0, |t| {
                (tributary_process::now_ns().saturating_sub(t)).max(0) as f64 / 1e9
            }));
    }
    Ok(())
}

/// How the sink's part of a nats round ended.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// At a frame boundary: the round's store work was done, or every
    /// message had its PubAck.
    Yes,
    /// The shutdown deadline passed.
    Aborted,
    /// The oldest page in flight passed `max_lag`.
    GaveUp,
}

/// A page delivered: the cursor moves to its `last` position with its
/// counts (the cursor keeps the last error; nothing is failing now).
fn delivered(
    name: &str,
    metrics: &ExportHandles,
    cursor: &mut CursorRow,
    last: i64,
    outcome: super::Outcome,
) {
    metrics.failing.clear();
    if outcome.dropped > 0 {
        warn!(export = %name, dropped = outcome.dropped, "export dropped readings the destination refused");
    }
    cursor.position = last;
    cursor.sent += outcome.sent;
    cursor.dropped += outcome.dropped;
    cursor.retried += outcome.retried;
    if outcome.last_error.is_some() {
        cursor.last_error = outcome.last_error;
    }
}

/// Moves the pages the nats sink has done (each and every older page
/// acknowledged) into the cursor, to be saved, and counts their readings
/// in the metrics: `sent` and `dropped` count delivered pages only, so a
/// page abandoned half acknowledged is never counted twice (sent, then
/// sent again or skipped).
fn take_done(
    sink: &mut NatsSink,
    name: &str,
    metrics: &ExportHandles,
    cursor: &mut CursorRow,
    pace: &mut Pace,
) {
    while let Some((last, outcome)) = sink.pop_done() {
        metrics.sent.inc_by(outcome.sent);
        metrics.dropped.inc_by(outcome.dropped);
        delivered(name, metrics, cursor, last, outcome);
        // Nothing of a nats page is pinned for a replay: a batch's
        // messages and ids are the same whatever page it comes in.
        cursor.inflight = last;
        pace.unsaved = true;
    }
}

/// A nats round that ended before its frame boundary (abort, or the
/// oldest page past `max_lag`): the pages done, also those whose last
/// PubAck came during the round, move the cursor (so a skip from it
/// never counts delivered pages); then every page in flight is
/// abandoned. Returns the readings of the abandoned pages that already
/// had their PubAck.
fn end_early(
    sink: &mut NatsSink,
    name: &str,
    metrics: &ExportHandles,
    cursor: &mut CursorRow,
    pace: &mut Pace,
) -> u64 {
    take_done(sink, name, metrics, cursor, pace);
    let acked = sink.acked_in_flight();
    sink.abandon();
    acked
}

/// With `max_lag`, a page is tried until its oldest batch (received at
/// `first_received`) is that old.
fn give_up_at(max_lag: Duration, first_received: i64) -> tokio::time::Instant {
    let age_ns = tributary_process::now_ns()
        .saturating_sub(first_received)
        .max(0);
    let left = max_lag.saturating_sub(Duration::from_nanos(age_ns as u64));
    tokio::time::Instant::now() + left
}

/// A deadline that never comes.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// One export, ready to run.
#[derive(Debug)]
pub struct Runner {
    pub config: ExportConfig,
    pub sink: Sink,
    pub log: CommitLog,
    pub metrics: ExportHandles,
}

impl Runner {
    /// Runs until `stop`, finishing the page in flight (nats: every page
    /// in its pipeline); `abort` (the shutdown deadline) ends those too:
    /// the cursor is saved past the pages already acknowledged, the rest
    /// is sent again after the restart.
    pub async fn run(mut self, stop: CancellationToken, abort: CancellationToken) {
        let cancel = stop;
        let name = self.config.name.clone();
        let mut cache: HashMap<i64, Option<SeriesLabels>> = HashMap::new();
        // Each round: a connection, the export's lock (PostgreSQL: one
        // collector runs it), the cursor as stored (another collector may
        // have moved it), then pages until the connection is lost.
        'connect: while !cancel.is_cancelled() {
            let mut conn = match self.log.connect().await {
                Ok(c) => c,
                Err(e) => {
                    error!(export = %name, error = %e, "export cannot open the store; retrying");
                    if sleep_or_cancel(STORE_RETRY, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let mut waiting = false;
            loop {
                match conn.hold(&name).await {
                    Ok(true) => break,
                    Ok(false) => {
                        if !waiting {
                            info!(export = %name, "export runs in another collector sharing the store; taking over if it stops");
                            waiting = true;
                        }
                    }
                    Err(e) => {
                        warn!(export = %name, error = %e, "export cannot take its lock; retrying");
                    }
                }
                if sleep_or_cancel(HOLD_RETRY, &cancel).await {
                    return;
                }
                if conn.lost() {
                    continue 'connect;
                }
            }
            let mut cursor = match conn.cursor(name.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    error!(export = %name, error = %e, "export cannot read its cursor; retrying");
                    if sleep_or_cancel(STORE_RETRY, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let mut pace = Pace {
                measure_at: tokio::time::Instant::now(),
                trim_more: true,
                log_end: false,
                unsaved: false,
            };
            // Pages still in a nats pipeline (a lost store connection)
            // start over from the cursor as stored.
            if let Sink::Nats(s) = &mut self.sink {
                s.abandon();
            }
            info!(export = %name, kind = self.config.kind.name(), url = %super::redact_url(&self.config.url), position = cursor.position, "export started");
            loop {
                // Stopping: no new page; the pages in flight finish.
                let stopping = cancel.is_cancelled();
                let step = match &self.sink {
                    Sink::Nats(s) if s.pages() > 0 || !stopping => {
                        self.nats_step(&mut conn, &mut cursor, &mut pace, &cancel, &abort)
                            .await
                    }
                    _ if stopping => break,
                    _ => {
                        self.step(&mut conn, &mut cursor, &mut cache, &mut pace, &abort)
                            .await
                    }
                };
                match step {
                    Ok(true) => {}
                    Ok(false) => {
                        // Stopping (or stopped during the wait): the check
                        // above ends the loop once nothing is in flight.
                        if !stopping {
                            sleep_or_cancel(IDLE, &cancel).await;
                        }
                    }
                    Err(e @ crate::store::read::ReadError::CursorRemoved { .. }) => {
                        // Its cursor is gone, so the trim no longer waits for
                        // it: sending on would skip rows. It runs again when
                        // configured again (reload or restart).
                        error!(export = %name, error = %e, "export stopped: its cursor was removed");
                        return;
                    }
                    Err(e) => {
                        error!(export = %name, error = %e, "export cannot read the store; retrying");
                        if stopping || sleep_or_cancel(STORE_RETRY, &cancel).await {
                            break;
                        }
                        if conn.lost() {
                            warn!(export = %name, "export lost its store connection (and its lock); connecting again");
                            continue 'connect;
                        }
                    }
                }
            }
            info!(export = %name, position = cursor.position, sent = cursor.sent, "export stopped");
            return;
        }
    }

    /// One page; `Ok(false)` when there was nothing to send.
    async fn step(
        &mut self,
        conn: &mut LogConn,
        cursor: &mut CursorRow,
        cache: &mut HashMap<i64, Option<SeriesLabels>>,
        pace: &mut Pace,
        cancel: &CancellationToken,
    ) -> Result<bool, crate::store::read::ReadError> {
        let name = self.config.name.clone();
        maintain(&self.config, &self.metrics, conn, cursor, pace, true).await?;
        let mut page = conn.read(cursor.position, PAGE_READINGS).await?;
        if cursor.inflight > cursor.position {
            // The page a crash interrupted, exactly as it was.
            page.retain(|b| b.position <= cursor.inflight);
        }
        let (Some(last), Some(first_received)) = (
            page.last().map(|b| b.position),
            page.first().map(|b| b.received_ns),
        ) else {
            // Caught up.
            self.metrics.lag_readings.set(0);
            self.metrics.lag_seconds.set(0.0);
            return Ok(false);
        };
        if cursor.inflight != last {
            cursor.inflight = last;
            conn.save(cursor.clone()).await?;
        }
        // With `max_lag`, a page is tried until its oldest batch is that
        // old; then the check above skips it.
        let give_up = self
            .config
            .max_lag
            .map(|max_lag| give_up_at(max_lag, first_received));
        let outcome = self
            .remote_write(conn, page, cache, cancel, give_up)
            .await?;
        let Some(outcome) = outcome else {
            // Cancelled mid-page, or past max_lag: the cursor stays; the
            // page goes again, or is skipped by the next step (which checks
            // now).
            pace.measure_at = tokio::time::Instant::now();
            return Ok(!cancel.is_cancelled());
        };
        delivered(&name, &self.metrics, cursor, last, outcome);
        conn.save(cursor.clone()).await?;
        Ok(true)
    }

    /// One round of a nats export's pipeline (`export/nats.rs`): the pages
    /// done moved into the cursor; then, while the sink goes on publishing
    /// and taking PubAcks (its window stays full across pages), the log
    /// trimmed, the cursor saved and the page after the pipeline's
    /// youngest read, up to [`NATS_PAGES`] pages; then that page queued.
    /// The cursor only passes pages whose messages, and those of every
    /// page before, have their PubAck. `Ok(false)` when the pipeline is
    /// empty and there was nothing to read (or the task is stopping).
    async fn nats_step(
        &mut self,
        conn: &mut LogConn,
        cursor: &mut CursorRow,
        pace: &mut Pace,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) -> Result<bool, crate::store::read::ReadError> {
        let Runner {
            config,
            sink,
            metrics,
            ..
        } = self;
        let Sink::Nats(sink) = sink else {
            return Ok(false);
        };
        let (config, metrics) = (&*config, &*metrics);
        take_done(sink, &config.name, metrics, cursor, pace);
        if sink.pages() == 0 {
            pace.log_end = false;
        }
        let want_read = !stop.is_cancelled() && !pace.log_end && sink.pages() < NATS_PAGES;
        let next = sink.next_position();
        let in_flight = sink.pages() > 0;
        let give_up = config
            .max_lag
            .zip(sink.oldest_received())
            .map(|(max_lag, first)| give_up_at(max_lag, first));
        // Set once the store work of this round is done: the sink then
        // returns at its next frame boundary.
        let enough = AtomicBool::new(false);
        let io = async {
            let r = async {
                if !(pace.unsaved || want_read) {
                    return Ok(None);
                }
                maintain(config, metrics, conn, cursor, pace, !in_flight).await?;
                if pace.unsaved {
                    conn.save(cursor.clone()).await?;
                    pace.unsaved = false;
                }
                if !want_read {
                    return Ok(None);
                }
                let start = next.unwrap_or(cursor.position);
                let mut page = conn.read(start, PAGE_READINGS).await?;
                if start == cursor.position && cursor.inflight > cursor.position {
                    // A page an older version pinned before a crash.
                    page.retain(|b| b.position <= cursor.inflight);
                }
                Ok(Some(page))
            }
            .await;
            enough.store(true, Ordering::Relaxed);
            r
        };
        let pump = async {
            let at = give_up.unwrap_or_else(far_future);
            tokio::select! {
                () = sink.pump(metrics, &enough) => Pumped::Yes,
                () = abort.cancelled() => Pumped::Aborted,
                () = tokio::time::sleep_until(at) => Pumped::GaveUp,
            }
        };
        let (read, pumped) = tokio::join!(io, pump);
        if pumped != Pumped::Yes || abort.is_cancelled() {
            // Aborted, or the oldest page is past max_lag: the pages whose
            // last PubAck came during the round move the cursor; every
            // other page goes again (or the next round's check skips it).
            let acked = end_early(sink, &config.name, metrics, cursor, pace);
            if acked > 0 {
                warn!(export = %config.name, readings = acked, "nats export abandoned pages in flight with some PubAcks: those readings are in the stream and go again (the copies dropped as duplicates), or a max_lag skip counts them with the rest");
            }
            pace.measure_at = tokio::time::Instant::now();
            if abort.is_cancelled() && pace.unsaved {
                // No next round: keep the progress made (before a failed
                // read's error, which would lose it).
                conn.save(cursor.clone()).await?;
                pace.unsaved = false;
            }
            read?;
            return Ok(pumped == Pumped::GaveUp && !abort.is_cancelled());
        }
        match read? {
            Some(page) if page.is_empty() => {
                if sink.pages() == 0 {
                    // Caught up.
                    metrics.lag_readings.set(0);
                    metrics.lag_seconds.set(0.0);
                } else {
                    pace.log_end = true;
                }
            }
            Some(page) => sink.enqueue(conn, &page).await?,
            None => {}
        }
        Ok(sink.pages() > 0)
    }

    /// A page to a remote write destination: series labels, then samples.
    async fn remote_write(
        &self,
        conn: &mut LogConn,
        page: Vec<crate::store::export::LogBatch>,
        cache: &mut HashMap<i64, Option<SeriesLabels>>,
        cancel: &CancellationToken,
        give_up: Option<tokio::time::Instant>,
    ) -> Result<Option<super::Outcome>, crate::store::read::ReadError> {
        let Sink::RemoteWrite(s) = &self.sink else {
            return Ok(None);
        };
        let readings: Vec<LogReading> = page.into_iter().flat_map(|b| b.readings).collect();
        let missing = super::series_to_look_up(
            cache,
            readings.iter().map(|r| r.series_id),
            super::MAX_CACHED_SERIES,
        );
        if !missing.is_empty() {
            let keys = conn.series(missing.clone()).await?;
            for id in missing {
                cache.insert(id, None);
            }
            for (id, key) in keys {
                let pass = passes(&self.config.filter, &key);
                cache.insert(id, pass.then(|| series_labels(&key)));
            }
        }
        Ok(s.send(&readings, cache, &self.metrics, cancel, give_up)
            .await)
    }
}

fn passes(filter: &Filter, key: &crate::model::SeriesKey) -> bool {
    filter.is_all() || filter.matches(&key.agent, &key.device, &key.metric)
}

/// Sleeps `d`; true when `cancel` fired first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}

#[cfg(test)]
mod tests;
