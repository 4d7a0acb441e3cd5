//! What operators see of the exports (`Query/ListExports`, the
//! `exports` subcommand, the fleet page): each export's cursor as the
//! store holds it, joined with this collector's settings for it
//! (its kind and destination, credentials redacted).
//!
//! Owns [`ExportsView`]: the store's URL and a `watch` of the configured
//! exports that [`super::Exports`] updates at start and at each reload,
//! and [`FailingNow`], the board of the errors of pages failing right now.
//! Reads through a connection of its own, kept between calls on
//! PostgreSQL (the fleet page polls every 5 s an open tab; one is made
//! again after an error); never touches a task.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::exports::{ExportConfig, ExportKind};
use crate::store::StoreUrl;
use crate::store::export::{CommitLog, CursorRow, Pending, StatusConn};
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

/// Export name → the error its page in flight keeps failing with.
pub type FailingBoard = Arc<watch::Sender<BTreeMap<String, String>>>;

/// One export's line on the board of failing pages. A cursor keeps its
/// `last_error` once a page is delivered, so a page that never goes
/// through (wrong credentials, a destination down) would show nothing:
/// the sink writes each failure here as it happens, the runner clears it
/// when a page is delivered, and the views show it first.
#[derive(Debug, Clone, Default)]
pub struct FailingNow {
    name: Arc<str>,
    /// `None`: nobody looks (tests, a detached handle).
    board: Option<FailingBoard>,
}

impl FailingNow {
    pub fn on(board: &FailingBoard, name: &str) -> FailingNow {
        FailingNow {
            name: name.into(),
            board: Some(board.clone()),
        }
    }

    /// The page in flight failed with `error`.
    pub fn set(&self, error: &str) {
        if let Some(b) = &self.board {
            b.send_if_modified(|m| {
                if m.get(&*self.name).is_some_and(|e| e == error) {
                    return false;
                }
                m.insert(self.name.to_string(), error.to_owned());
                true
            });
        }
    }

    /// A page was delivered (or the export stopped).
    pub fn clear(&self) {
        if let Some(b) = &self.board {
            b.send_if_modified(|m| m.remove(&*self.name).is_some());
        }
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
/// A page failing now in this collector (`failing`) shows its error, before
/// the one the cursor kept.
pub fn rows(
    status: Vec<(CursorRow, Pending)>,
    configured: &[Configured],
    failing: &BTreeMap<String, String>,
    now_ns: i64,
) -> Vec<ExportRow> {
    status
        .into_iter()
        .map(|(c, p)| {
            let mine = configured.iter().find(|e| e.name == c.name);
            let last_error = failing.get(&c.name).cloned().or(c.last_error);
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
                last_error,
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
    failing: watch::Receiver<BTreeMap<String, String>>,
    /// The store connection kept between calls (one call at a time):
    /// status reads only; the merger and the export tasks have their own
    /// connections and never wait for it.
    kept: Arc<tokio::sync::Mutex<StatusConn>>,
}

/// How long a status read waits for the one before it.
const KEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ExportsView {
    pub(super) fn new(
        url: StoreUrl,
        configured: watch::Receiver<Vec<Configured>>,
        failing: watch::Receiver<BTreeMap<String, String>>,
    ) -> Self {
        ExportsView {
            url,
            configured,
            failing,
            kept: Arc::default(),
        }
    }

    /// Every export's row, read from the store now.
    pub async fn list(&self) -> Result<Vec<ExportRow>, ReadError> {
        let status = {
            // One read at a time on the kept connection; a caller that waits
            // longer than one call may take (the store not answering) is told
            // so instead of queueing behind every earlier one.
            let mut kept = tokio::time::timeout(KEPT_WAIT, self.kept.lock())
                .await
                .map_err(|_| ReadError::Setup {
                    store: self.url.to_string(),
                    message: format!(
                        "the exports' status is still being read by an earlier call after {} s (the store is slow or not answering)",
                        KEPT_WAIT.as_secs()
                    ),
                })?;
            CommitLog::existing(&self.url)?
                .status_kept(&mut kept)
                .await?
        };
        let configured = self.configured.borrow().clone();
        let failing = self.failing.borrow().clone();
        Ok(rows(
            status,
            &configured,
            &failing,
            tributary_process::now_ns(),
        ))
    }
}
