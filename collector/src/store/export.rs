//! The commit log as the exports see it: [`CommitLog`] picks the backend by
//! the store URL, and the types it answers in. An export reads what the
//! merger committed, in commit order, after its cursor (a position in the
//! log), and saves the cursor in the same store. Each export task holds
//! one [`LogConn`] of its own: the merger never waits for it.
//!
//! SQLite keeps the log (`sqlite/export_log.rs`); PostgreSQL stores have
//! no commit log yet, and a collector with exports on one is refused at
//! start with a message saying so (README "Exports").

use std::path::PathBuf;

use super::StoreUrl;
use super::read::ReadError;
use super::sqlite::SqliteLog;
use crate::model::{SeriesKey, StoredValue};

/// One reading of a committed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LogReading {
    pub series_id: i64,
    pub ts_ns: i64,
    pub value: StoredValue,
}

/// One committed batch, at its position in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    pub position: i64,
    pub received_ns: i64,
    pub readings: Vec<LogReading>,
}

/// An export's cursor and totals, as stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CursorRow {
    pub name: String,
    /// The last log position sent or skipped.
    pub position: i64,
    /// The last position of the page being sent (saved before it goes):
    /// after a crash the same page goes again, request for request, so a
    /// destination that refuses old samples (Prometheus) sees only
    /// requests it already took whole, or new ones.
    pub inflight: i64,
    /// Samples delivered.
    pub sent: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub retried: u64,
    pub last_error: Option<String>,
}

/// What is committed after a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pending {
    pub readings: u64,
    /// Receive time of the oldest batch not yet sent.
    pub oldest_received_ns: Option<i64>,
    /// The newest position in the log (the cursor's when nothing waits).
    pub end: i64,
}

/// The commit log of one store.
#[derive(Debug, Clone)]
pub enum CommitLog {
    Sqlite(SqliteLog),
}

impl CommitLog {
    /// Sets the log up for the exports `names` (blocking; the server calls
    /// it once at start, before serving). No names: removes the log.
    pub fn setup(url: &StoreUrl, names: &[String]) -> Result<CommitLog, ReadError> {
        match url {
            StoreUrl::Sqlite(path) => Ok(CommitLog::Sqlite(SqliteLog::setup(path, names)?)),
            StoreUrl::Postgres(_) if names.is_empty() => Err(ReadError::Setup {
                store: url.to_string(),
                message: "no commit log".to_owned(),
            }),
            StoreUrl::Postgres(_) => Err(ReadError::Setup {
                store: url.to_string(),
                message: "exports need an SQLite store in this version (PostgreSQL has no \
                          commit log yet; see README \"Exports\")"
                    .to_owned(),
            }),
        }
    }

    /// The log of an SQLite file as it is (read-only use).
    pub fn sqlite(path: PathBuf) -> CommitLog {
        CommitLog::Sqlite(SqliteLog::existing(&path))
    }

    /// A connection of its own for one export task.
    pub async fn connect(&self) -> Result<LogConn, ReadError> {
        let log = self.clone();
        let conn = blocking(move || match &log {
            CommitLog::Sqlite(l) => l.connect(),
        })
        .await?;
        Ok(LogConn {
            log: self.clone(),
            conn: Some(conn),
        })
    }

    /// Every export's cursor and what waits after it.
    pub async fn status(&self) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        let log = self.clone();
        blocking(move || match &log {
            CommitLog::Sqlite(l) => l.status(),
        })
        .await
    }
}

/// One export task's connection to the log.
#[derive(Debug)]
pub struct LogConn {
    log: CommitLog,
    /// Taken while a call runs on the blocking pool.
    conn: Option<rusqlite::Connection>,
}

impl LogConn {
    /// Runs `f` with the connection on the blocking pool.
    async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&CommitLog, &rusqlite::Connection) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let log = self.log.clone();
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match &log {
                CommitLog::Sqlite(l) => l.connect()?,
            },
        };
        let joined = tokio::task::spawn_blocking(move || {
            let r = f(&log, &conn);
            (conn, r)
        })
        .await;
        match joined {
            Ok((conn, r)) => {
                self.conn = Some(conn);
                r
            }
            Err(e) => Err(ReadError::Setup {
                store: "export log".to_owned(),
                message: format!("blocking task failed: {e}"),
            }),
        }
    }

    pub async fn cursor(&mut self, name: String) -> Result<CursorRow, ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.cursor(c, &name),
        })
        .await
    }

    pub async fn save(&mut self, row: CursorRow) -> Result<(), ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.save(c, &row),
        })
        .await
    }

    pub async fn read(
        &mut self,
        position: i64,
        max_readings: usize,
    ) -> Result<Vec<LogBatch>, ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.read(c, position, max_readings),
        })
        .await
    }

    pub async fn pending(&mut self, position: i64) -> Result<Pending, ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.pending(c, position),
        })
        .await
    }

    pub async fn older_than(
        &mut self,
        position: i64,
        before_ns: i64,
    ) -> Result<Option<(i64, u64)>, ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.older_than(c, position, before_ns),
        })
        .await
    }

    pub async fn series(&mut self, ids: Vec<i64>) -> Result<Vec<(i64, SeriesKey)>, ReadError> {
        self.call(move |log, c| match log {
            CommitLog::Sqlite(l) => l.series(c, &ids),
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReadError::Setup {
            store: "export log".to_owned(),
            message: format!("blocking task failed: {e}"),
        })?
}
