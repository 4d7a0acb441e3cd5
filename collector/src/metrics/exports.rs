//! The exports' metrics (README "Exports"): one series per export and
//! metric, labelled `export` (the configured names, a fixed set). Each
//! export task takes its [`ExportHandles`] once at start and adds per page
//! of the log, never per reading.

use std::sync::atomic::AtomicU64;

use tributary_process::metrics::prometheus_client::metrics::counter::Counter;
use tributary_process::metrics::prometheus_client::metrics::family::Family;
use tributary_process::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_process::metrics::prometheus_client::registry::Registry;

/// `export="<name>"`.
type ExportLabel = [(&'static str, String); 1];

/// The families, registered once.
#[derive(Debug, Default)]
pub struct ExportMetrics {
    sent: Family<ExportLabel, Counter>,
    dropped: Family<ExportLabel, Counter>,
    skipped: Family<ExportLabel, Counter>,
    retried: Family<ExportLabel, Counter>,
    failed: Family<ExportLabel, Counter>,
    lag_readings: Family<ExportLabel, Gauge>,
    lag_seconds: Family<ExportLabel, Gauge<f64, AtomicU64>>,
}

/// One export's handles.
#[derive(Debug, Clone)]
pub struct ExportHandles {
    /// Readings the destination accepted.
    pub sent: Counter,
    /// Readings the destination refused for good (a 4xx other than 429).
    pub dropped: Counter,
    /// Readings passed over because they waited longer than `max_lag`.
    pub skipped: Counter,
    /// Requests sent again after a retryable failure.
    pub retried: Counter,
    /// Requests that failed (each retry counts).
    pub failed: Counter,
    /// Committed readings not yet sent.
    pub lag_readings: Gauge,
    /// Age of the oldest committed batch not yet sent.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// The error of the page failing now, for ListExports and the fleet
    /// page (detached until the export's owner attaches it).
    pub failing: crate::export::FailingNow,
}

impl ExportMetrics {
    /// The families, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = ExportMetrics::default();
        registry.register(
            "tributary_export_sent_readings",
            "Readings an export delivered",
            m.sent.clone(),
        );
        registry.register(
            "tributary_export_dropped_readings",
            "Readings a destination refused for good (4xx other than 429)",
            m.dropped.clone(),
        );
        registry.register(
            "tributary_export_skipped_readings",
            "Readings an export passed over because they were older than max_lag",
            m.skipped.clone(),
        );
        registry.register(
            "tributary_export_retried_requests",
            "Export requests sent again after a retryable failure",
            m.retried.clone(),
        );
        registry.register(
            "tributary_export_failed_requests",
            "Export requests that failed",
            m.failed.clone(),
        );
        registry.register(
            "tributary_export_lag_readings",
            "Committed readings an export has not sent yet",
            m.lag_readings.clone(),
        );
        registry.register(
            "tributary_export_lag_seconds",
            "Age of the oldest committed batch an export has not sent yet",
            m.lag_seconds.clone(),
        );
        m
    }

    /// Drops the series of export `name` (a reload removed it).
    pub fn remove(&self, name: &str) {
        let l: ExportLabel = [("export", name.to_owned())];
        self.sent.remove(&l);
        self.dropped.remove(&l);
        self.skipped.remove(&l);
        self.retried.remove(&l);
        self.failed.remove(&l);
        self.lag_readings.remove(&l);
        self.lag_seconds.remove(&l);
    }

    /// The handles of export `name`.
    pub fn handles(&self, name: &str) -> ExportHandles {
        let l: ExportLabel = [("export", name.to_owned())];
        ExportHandles {
            sent: self.sent.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            skipped: self.skipped.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
            lag_readings: self.lag_readings.get_or_create(&l).clone(),
            lag_seconds: self.lag_seconds.get_or_create(&l).clone(),
            failing: crate::export::FailingNow::default(),
        }
    }
}
