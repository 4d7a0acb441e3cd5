//! One export's task: follows the commit log from its cursor, page by
//! page, sends each page, and saves the cursor (with its totals) once the
//! page is delivered, so a crash resends at most the page in flight.
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
/// Wait when the log has nothing new.
const IDLE: Duration = Duration::from_millis(100);
/// How often the lag gauges and the `max_lag` check read the backlog.
const LAG_REFRESH: Duration = Duration::from_secs(2);
/// Wait between tries to take an export held by another collector.
const HOLD_RETRY: Duration = Duration::from_secs(2);
/// Wait after a failed read of the store.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// When the task next reads the backlog's size, and whether the last trim
/// left more to trim.
#[derive(Debug)]
struct Pace {
    measure_at: tokio::time::Instant,
    trim_more: bool,
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

/// One export, ready to run.
#[derive(Debug)]
pub struct Runner {
    pub config: ExportConfig,
    pub sink: Sink,
    pub log: CommitLog,
    pub metrics: ExportHandles,
}

impl Runner {
    /// Runs until `stop`, finishing the page in flight; `abort` (the
    /// shutdown deadline) ends that page too, unsaved, so it is sent
    /// again after the restart.
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
            };
            info!(export = %name, kind = self.config.kind.name(), url = %super::redact_url(&self.config.url), position = cursor.position, "export started");
            while !cancel.is_cancelled() {
                match self
                    .step(&mut conn, &mut cursor, &mut cache, &mut pace, &abort)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        if sleep_or_cancel(IDLE, &cancel).await {
                            break;
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
                        if sleep_or_cancel(STORE_RETRY, &cancel).await {
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
            if let Some(max_lag) = self.config.max_lag {
                let before = tributary_process::now_ns()
                    .saturating_sub(i64::try_from(max_lag.as_nanos()).unwrap_or(i64::MAX));
                if let Some((end, readings)) = conn.older_than(cursor.position, before).await? {
                    error!(export = %name, from = cursor.position + 1, to = end, readings, max_lag = ?max_lag, "export skipped committed readings older than max_lag; they were not sent");
                    cursor.position = end;
                    cursor.skipped += readings;
                    self.metrics.skipped.inc_by(readings);
                    conn.save(cursor.clone()).await?;
                }
            }
            let pending = conn.pending(cursor.position).await?;
            self.metrics.lag_readings.set(pending.readings as i64);
            self.metrics
                .lag_seconds
                .set(pending.oldest_received_ns.map_or(0.0, |t| {
                    (tributary_process::now_ns().saturating_sub(t)).max(0) as f64 / 1e9
                }));
        }
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
        let give_up = self.config.max_lag.map(|max_lag| {
            let age_ns = tributary_process::now_ns()
                .saturating_sub(first_received)
                .max(0);
            let left = max_lag.saturating_sub(Duration::from_nanos(age_ns as u64));
            tokio::time::Instant::now() + left
        });
        let outcome = match &mut self.sink {
            Sink::Nats(s) => s.send(conn, &page, &self.metrics, cancel, give_up).await?,
            Sink::RemoteWrite(_) => {
                self.remote_write(conn, page, cache, cancel, give_up)
                    .await?
            }
        };
        let Some(outcome) = outcome else {
            // Cancelled mid-page, or past max_lag: the cursor stays; the
            // page goes again, or is skipped by the next step (which checks
            // now).
            pace.measure_at = tokio::time::Instant::now();
            return Ok(!cancel.is_cancelled());
        };
        // Delivered: nothing is failing now (the cursor keeps the last error).
        self.metrics.failing.clear();
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
        conn.save(cursor.clone()).await?;
        Ok(true)
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
