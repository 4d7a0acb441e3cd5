//! The uplink's counters ([`UplinkStats`]), published through a `watch`
//! channel, and their text form: Prometheus text exposition format, which
//! `tributary-agent run --stats-file PATH` keeps up to date (for
//! node_exporter's textfile collector, or a test that observes the uplink
//! without reading its log).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

/// Counters the uplink exposes (for logs, the stats file and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UplinkStats {
    pub sealed_batches: u64,
    pub acked_seq: u64,
    pub dropped_readings: u64,
    /// Streams opened.
    pub connects: u64,
    /// Connects that failed (refused, unreachable, timed out, refused by the
    /// collector before the stream began).
    pub connect_failures: u64,
    /// Open streams that ended: with an error status (keepalive gave up,
    /// the collector went away), closed by the collector, or given up on
    /// after a failed send.
    pub streams_ended: u64,
    /// Batches sent again on a later stream (or after a restart).
    pub resent_batches: u64,
    /// Readings lost because the spool could not be written.
    pub spool_errors: u64,
    /// Unacked batches a Welcome reported as already committed (their ack
    /// was lost); they are not sent again.
    pub confirmed_by_welcome: u64,
    /// Readings whose series the collector would refuse to declare (an
    /// empty device, metric or label name), spooled as failed readings of
    /// their device's `invalid_series` series instead.
    pub invalid_series_readings: u64,
    /// Batches the collector refused, alone in flight, three times in a
    /// row, and that were given up on (their readings are in
    /// `dropped_readings` too).
    pub refused_batches: u64,
    /// Readings of those batches.
    pub refused_readings: u64,
    /// New spool epochs started while running, to compact the series
    /// dictionary.
    pub epoch_rollovers: u64,
    /// Bytes of the spool's series dictionary (`SERIES`), which count
    /// toward `[spool] max_bytes`.
    pub series_dictionary_bytes: u64,
    /// Batches sent that were sealed while their stream was open.
    pub live_batches_sent: u64,
    /// Batches sent that were unacked from before their stream opened
    /// (after an outage: what was spooled meanwhile).
    pub backlog_batches_sent: u64,
    /// Live batches sent while older backlog batches waited to be sent
    /// (out of order, to a collector that takes that).
    pub live_batches_ahead: u64,
}

/// How often the stats file is rewritten at most.
const STATS_FILE_EVERY: Duration = Duration::from_millis(100);

impl UplinkStats {
    /// Name, help and value of every counter, in a fixed order.
    fn fields(&self) -> [(&'static str, &'static str, u64); 17] {
        [
            (
                "sealed_batches_total",
                "batches sealed into the spool",
                self.sealed_batches,
            ),
            (
                "acked_seq",
                "highest sequence acked by a collector",
                self.acked_seq,
            ),
            (
                "dropped_readings_total",
                "readings dropped by the spool (full or lost): the epoch's at start, then every epoch's",
                self.dropped_readings,
            ),
            ("connects_total", "streams opened", self.connects),
            (
                "connect_failures_total",
                "connects that failed",
                self.connect_failures,
            ),
            (
                "streams_ended_total",
                "open streams that ended",
                self.streams_ended,
            ),
            (
                "resent_batches_total",
                "batches sent again on a later stream",
                self.resent_batches,
            ),
            (
                "spool_errors_total",
                "readings lost because the spool could not be written",
                self.spool_errors,
            ),
            (
                "confirmed_by_welcome_total",
                "unacked batches a welcome reported as committed",
                self.confirmed_by_welcome,
            ),
            (
                "invalid_series_readings_total",
                "readings of series the collector would refuse, spooled as invalid_series failures",
                self.invalid_series_readings,
            ),
            (
                "refused_batches_total",
                "batches the collector refused for good, dropped",
                self.refused_batches,
            ),
            (
                "refused_readings_total",
                "readings of the batches the collector refused for good",
                self.refused_readings,
            ),
            (
                "epoch_rollovers_total",
                "new spool epochs started while running, to compact the series dictionary",
                self.epoch_rollovers,
            ),
            (
                "series_dictionary_bytes",
                "bytes of the spool's series dictionary, counted in spool max_bytes",
                self.series_dictionary_bytes,
            ),
            (
                "live_batches_sent_total",
                "batches sent that were sealed while their stream was open",
                self.live_batches_sent,
            ),
            (
                "backlog_batches_sent_total",
                "batches sent that were unacked from before their stream opened",
                self.backlog_batches_sent,
            ),
            (
                "live_batches_ahead_total",
                "live batches sent while older backlog batches waited",
                self.live_batches_ahead,
            ),
        ]
    }

    /// The counters in Prometheus text exposition format, each named
    /// `tributary_agent_uplink_<field>` (counters end in `_total`).
    pub fn to_prometheus_text(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in self.fields() {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push_str(&format!(
                "# HELP tributary_agent_uplink_{name} {help}\n\
                 # TYPE tributary_agent_uplink_{name} {kind}\n\
                 tributary_agent_uplink_{name} {value}\n"
            ));
        }
        out
    }

    /// Reads back what [`UplinkStats::to_prometheus_text`] wrote; `None` if
    /// a counter is missing or not a number.
    pub fn from_prometheus_text(text: &str) -> Option<UplinkStats> {
        let value = |field: &str| {
            let name = format!("tributary_agent_uplink_{field}");
            text.lines().find_map(|line| {
                let (n, v) = line.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<u64>().ok())?
            })
        };
        Some(UplinkStats {
            sealed_batches: value("sealed_batches_total")?,
            acked_seq: value("acked_seq")?,
            dropped_readings: value("dropped_readings_total")?,
            connects: value("connects_total")?,
            connect_failures: value("connect_failures_total")?,
            streams_ended: value("streams_ended_total")?,
            resent_batches: value("resent_batches_total")?,
            spool_errors: value("spool_errors_total")?,
            confirmed_by_welcome: value("confirmed_by_welcome_total")?,
            invalid_series_readings: value("invalid_series_readings_total")?,
            refused_batches: value("refused_batches_total")?,
            refused_readings: value("refused_readings_total")?,
            epoch_rollovers: value("epoch_rollovers_total")?,
            series_dictionary_bytes: value("series_dictionary_bytes")?,
            live_batches_sent: value("live_batches_sent_total")?,
            backlog_batches_sent: value("backlog_batches_sent_total")?,
            live_batches_ahead: value("live_batches_ahead_total")?,
        })
    }
}

/// Keeps `path` holding the newest counters of `stats` (rewritten by
/// rename, at most every 100 ms) until the uplink is gone, then writes the
/// final ones. A failed write is logged and tried again at the next change.
pub async fn write_stats_file(path: PathBuf, mut stats: watch::Receiver<UplinkStats>) {
    let mut failing = false;
    loop {
        let now = stats.borrow_and_update().clone();
        write_logged(&path, &now, &mut failing);
        if stats.changed().await.is_err() {
            break;
        }
        tokio::time::sleep(STATS_FILE_EVERY).await;
    }
    let last = stats.borrow().clone();
    write_logged(&path, &last, &mut failing);
}

/// Writes `stats` to `path` by rename; logs a failure once per streak.
fn write_logged(path: &Path, stats: &UplinkStats, failing: &mut bool) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let result =
        std::fs::write(&tmp, stats.to_prometheus_text()).and_then(|()| std::fs::rename(&tmp, path));
    match result {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            warn!(path = %path.display(), error = %e, "cannot write the uplink stats file");
        }
        Err(_) => {}
    }
}
