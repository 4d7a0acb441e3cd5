//! What operators see of the exports (`Query/ListExports`, the
//! `exports` subcommand, the fleet page): each export's cursor as the
//! store holds it, joined with this collector's settings for it
//! (its kind and destination, credentials redacted).
//!
//! Owns [`ExportsView`]: the store's URL and a `watch` of the configured
//! exports that [`super::Exports`] updates at start and at each reload.
//! Reads through a connection of its own per call; never touches a task.

use tokio::sync::watch;

use crate::config::exports::{ExportConfig, ExportKind};
use crate::store::StoreUrl;
use crate::store::export::{CommitLog, CursorRow, Pending};
use crate::store::read::ReadError;

/// One export as this collector configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub name: String,
    /// `remote_write` or `nats`.
    pub kind: &'static str,
    /// Where it sends, credentials redacted ([`destination`]).
    pub destination: String,
}

impl Configured {
    pub fn of(config: &ExportConfig) -> Configured {
        Configured {
            name: config.name.clone(),
            kind: config.kind.name(),
            destination: destination(config),
        }
    }
}

/// Where `config` sends, as logs and operators see it: the URL with any
/// user info replaced by `***`; for NATS the servers and the stream.
pub fn destination(config: &ExportConfig) -> String {
    let url = super::redact_url(&config.url);
    match &config.kind {
        ExportKind::Nats(n) => format!("{url} stream {}", n.stream),
        ExportKind::RemoteWrite(_) => url,
    }
}

/// One export's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    pub name: String,
    /// Empty when this collector does not configure the export.
    pub kind: String,
    pub destination: String,
    pub position: i64,
    pub end: i64,
    pub lag_readings: u64,
    pub lag_seconds: f64,
    pub sent: u64,
    pub retried: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub last_error: Option<String>,
}

/// The rows of every cursor (by name, as the store lists them), with the
/// settings of those `configured` here; lag seconds as of `now_ns`.
pub fn rows(
    status: Vec<(CursorRow, Pending)>,
    configured: &[Configured],
    now_ns: i64,
) -> Vec<ExportRow> {
    status
        .into_iter()
        .map(|(c, p)| {
            let mine = configured.iter().find(|e| e.name == c.name);
            ExportRow {
                kind: mine.map(|e| e.kind.to_owned()).unwrap_or_default(),
                destination: mine.map(|e| e.destination.clone()).unwrap_or_default(),
                position: c.position,
                end: p.end,
                lag_readings: p.readings,
                lag_seconds: p
                    .oldest_received_ns
                    .map_or(0.0, |t| now_ns.saturating_sub(t).max(0) as f64 / 1e9),
                sent: c.sent,
                retried: c.retried,
                dropped: c.dropped,
                skipped: c.skipped,
                last_error: c.last_error,
                name: c.name,
            }
        })
        .collect()
}

/// The exports as the Query service reads them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExportsView {
    url: StoreUrl,
    configured: watch::Receiver<Vec<Configured>>,
}

impl ExportsView {
    pub(super) fn new(url: StoreUrl, configured: watch::Receiver<Vec<Configured>>) -> Self {
        ExportsView { url, configured }
    }

    /// Every export's row, read from the store now.
    pub async fn list(&self) -> Result<Vec<ExportRow>, ReadError> {
        let status = CommitLog::existing(&self.url)?.status().await?;
        let configured = self.configured.borrow().clone();
        Ok(rows(status, &configured, tributary_process::now_ns()))
    }
}
