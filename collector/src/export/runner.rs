//! One export's task: follows the commit log from its cursor, page by
//! page, sends each page, and saves the cursor (with its totals) once the
//! page is delivered, so a crash resends at most the page in flight.
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
use crate::store::export::{CommitLog, CursorRow, LogConn, LogReading};

/// Readings one page reads at most (a batch is never split).
const PAGE_READINGS: usize = 50_000;
/// Wait when the log has nothing new.
const IDLE: Duration = Duration::from_millis(100);
/// Wait after a failed read of the store.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Series labels kept at most; the cache starts over past it.
const MAX_CACHED_SERIES: usize = 1 << 20;

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
        let mut conn = loop {
            match self.log.connect().await {
                Ok(c) => break c,
                Err(e) => {
                    error!(export = %name, error = %e, "export cannot open the store; retrying");
                    if sleep_or_cancel(STORE_RETRY, &cancel).await {
                        return;
                    }
                }
            }
        };
        let mut cursor = loop {
            match conn.cursor(name.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    error!(export = %name, error = %e, "export cannot read its cursor; retrying");
                    if sleep_or_cancel(STORE_RETRY, &cancel).await {
                        return;
                    }
                }
            }
        };
        info!(export = %name, kind = self.config.kind.name(), url = %self.config.url, position = cursor.position, "export started");
        let mut cache: HashMap<i64, Option<SeriesLabels>> = HashMap::new();
        while !cancel.is_cancelled() {
            match self.step(&mut conn, &mut cursor, &mut cache, &abort).await {
                Ok(true) => {}
                Ok(false) => {
                    if sleep_or_cancel(IDLE, &cancel).await {
                        break;
                    }
                }
                Err(e) => {
                    error!(export = %name, error = %e, "export cannot read the store; retrying");
                    if sleep_or_cancel(STORE_RETRY, &cancel).await {
                        break;
                    }
                }
            }
        }
        info!(export = %name, position = cursor.position, sent = cursor.sent, "export stopped");
    }

    /// One page; `Ok(false)` when there was nothing to send.
    async fn step(
        &mut self,
        conn: &mut LogConn,
        cursor: &mut CursorRow,
        cache: &mut HashMap<i64, Option<SeriesLabels>>,
        cancel: &CancellationToken,
    ) -> Result<bool, crate::store::read::ReadError> {
        let name = self.config.name.clone();
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
        if pending.readings == 0 && pending.end == cursor.position {
            return Ok(false);
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
            // page goes again, or is skipped by the next step.
            return Ok(!cancel.is_cancelled());
        };
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
        let missing: Vec<i64> = {
            let mut ids: Vec<i64> = readings
                .iter()
                .map(|r| r.series_id)
                .filter(|id| !cache.contains_key(id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        if !missing.is_empty() {
            if cache.len() + missing.len() > MAX_CACHED_SERIES {
                cache.clear();
            }
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
