//! The commit log as the exports see it: [`CommitLog`] picks the backend by
//! the store URL, and the types it answers in. An export reads what the
//! merger committed, in commit order, after its cursor (a position in the
//! log), and saves the cursor in the same store. Each export task holds
//! one [`LogConn`] of its own: the merger never waits for it.
//!
//! SQLite keeps the log in `sqlite/export_log.rs` (a trigger on `head`),
//! PostgreSQL in `postgres/export_log.rs` (appended by the commit, ids in
//! commit order across collectors). On PostgreSQL an export task runs only
//! while its connection holds the export's advisory lock ([`LogConn::hold`]):
//! with several collectors on one database, each export runs once.

use super::StoreUrl;
use super::postgres::{PgLog, PgLogConn};
use super::read::ReadError;
use super::sqlite::SqliteLog;
use crate::model::{SeriesKey, StoredValue};

/// Log rows one trim deletes at most: one short write transaction, taken
/// by an export task, never by the merger's commit.
pub const TRIM_ROWS: i64 = 2_000;

/// One reading of a committed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LogReading {
    pub series_id: i64,
    pub ts_ns: i64,
    pub value: StoredValue,
}

/// One committed batch, at its position in the log. A log row holds one
/// batch on SQLite and one commit (several batches, each a `LogBatch` of
/// the same position) on PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    pub position: i64,
    pub received_ns: i64,
    pub readings: Vec<LogReading>,
    /// The agent batch these readings came in; `None` for rows logged
    /// before the log kept it.
    pub origin: Option<Origin>,
}

/// The identity of an agent batch: the same on every collector and every
/// replay (the delivery contract commits it once).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub agent: String,
    pub epoch: u64,
    pub seq: u64,
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
    Postgres(PgLog),
}

impl CommitLog {
    /// Sets the log up for the exports `names` (the server calls it once
    /// at start, before serving). No names: SQLite removes the log (saying
    /// what was pending); PostgreSQL leaves it to the collectors that
    /// share the database.
    pub async fn setup(url: &StoreUrl, names: &[String]) -> Result<CommitLog, ReadError> {
        match url {
            StoreUrl::Sqlite(path) => {
                let (path, names) = (path.clone(), names.to_vec());
                let log = blocking(move || SqliteLog::setup(&path, &names)).await?;
                Ok(CommitLog::Sqlite(log))
            }
            StoreUrl::Postgres(u) => {
                let log = PgLog::new(u)?;
                log.setup(names).await?;
                Ok(CommitLog::Postgres(log))
            }
        }
    }

    /// The log of an SQLite file as it is (read-only use).
    pub fn sqlite(path: std::path::PathBuf) -> CommitLog {
        CommitLog::Sqlite(SqliteLog::existing(&path))
    }

    /// The log of a store as it is (read-only use: the `exports`
    /// subcommand).
    pub fn existing(url: &StoreUrl) -> Result<CommitLog, ReadError> {
        Ok(match url {
            StoreUrl::Sqlite(path) => CommitLog::Sqlite(SqliteLog::existing(path)),
            StoreUrl::Postgres(u) => CommitLog::Postgres(PgLog::new(u)?),
        })
    }

    /// A connection of its own for one export task.
    pub async fn connect(&self) -> Result<LogConn, ReadError> {
        Ok(match self {
            CommitLog::Sqlite(l) => {
                let l2 = l.clone();
                let conn = blocking(move || l2.connect()).await?;
                LogConn::Sqlite {
                    log: l.clone(),
                    conn: Some(conn),
                }
            }
            CommitLog::Postgres(l) => LogConn::Postgres(Box::new(l.connect().await?)),
        })
    }

    /// Every export's cursor and what waits after it.
    pub async fn status(&self) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        match self {
            CommitLog::Sqlite(l) => {
                let l = l.clone();
                blocking(move || l.status()).await
            }
            CommitLog::Postgres(l) => l.status().await,
        }
    }

    /// [`CommitLog::status`] over the connection `kept` holds, made (or
    /// made again, when it was lost or its last call failed) as needed:
    /// for a caller that asks again and again (ListExports, the fleet page
    /// polling every few seconds). SQLite opens its file each call.
    pub async fn status_kept(
        &self,
        kept: &mut StatusConn,
    ) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        match self {
            CommitLog::Sqlite(_) => self.status().await,
            CommitLog::Postgres(l) => {
                let mut conn = match kept.0.take() {
                    Some(c) if !c.lost() => c,
                    _ => l.connect_view().await?,
                };
                let status = conn.status().await;
                if status.is_ok() {
                    kept.0 = Some(conn);
                }
                status
            }
        }
    }
}

/// The connection [`CommitLog::status_kept`] keeps between calls (none
/// yet, or PostgreSQL's).
#[derive(Debug, Default)]
pub struct StatusConn(Option<PgLogConn>);

/// One export task's connection to the log.
#[derive(Debug)]
pub enum LogConn {
    Sqlite {
        log: SqliteLog,
        /// Taken while a call runs on the blocking pool.
        conn: Option<rusqlite::Connection>,
    },
    Postgres(Box<PgLogConn>),
}

/// Runs `$sqlite` (a blocking call given `(log, conn)`) on the blocking
/// pool, or `$pg` (given the PostgreSQL connection) in place.
macro_rules! on_log {
    ($self:ident, |$l:ident, $c:ident| $sqlite:expr, |$p:ident| $pg:expr) => {
        match $self {
            LogConn::Sqlite { log, conn } => {
                let $l = log.clone();
                let $c = match conn.take() {
                    Some(c) => c,
                    None => $l.connect()?,
                };
                let joined = tokio::task::spawn_blocking(move || {
                    let r = $sqlite;
                    ($c, r)
                })
                .await;
                match joined {
                    Ok((c, r)) => {
                        *conn = Some(c);
                        r
                    }
                    Err(e) => Err(ReadError::Setup {
                        store: "export log".to_owned(),
                        message: format!("blocking task failed: {e}"),
                    }),
                }
            }
            LogConn::Postgres($p) => $pg,
        }
    };
}

impl LogConn {
    /// Tries to become the one runner of export `name`: always on SQLite
    /// (one collector per file); on PostgreSQL, while this connection
    /// holds the export's advisory lock.
    pub async fn hold(&mut self, name: &str) -> Result<bool, ReadError> {
        match self {
            LogConn::Sqlite { .. } => Ok(true),
            LogConn::Postgres(p) => p.hold(name).await,
        }
    }

    /// True when the connection is gone, and with it the export's lock:
    /// connect and hold again before anything else.
    pub fn lost(&self) -> bool {
        match self {
            LogConn::Sqlite { .. } => false,
            LogConn::Postgres(p) => p.lost(),
        }
    }

    pub async fn cursor(&mut self, name: String) -> Result<CursorRow, ReadError> {
        on_log!(self, |l, c| l.cursor(&c, &name), |p| p.cursor(&name).await)
    }

    pub async fn save(&mut self, row: CursorRow) -> Result<(), ReadError> {
        on_log!(self, |l, c| l.save(&c, &row), |p| p.save(&row).await)
    }

    pub async fn read(
        &mut self,
        position: i64,
        max_readings: usize,
    ) -> Result<Vec<LogBatch>, ReadError> {
        on_log!(self, |l, c| l.read(&c, position, max_readings), |p| p
            .read(position, max_readings)
            .await)
    }

    /// Deletes one bounded piece of what every cursor has passed; returns
    /// the rows deleted.
    pub async fn trim(&mut self) -> Result<u64, ReadError> {
        on_log!(self, |l, c| l.trim(&c), |p| p.trim().await)
    }

    pub async fn pending(&mut self, position: i64) -> Result<Pending, ReadError> {
        on_log!(self, |l, c| l.pending(&c, position), |p| p
            .pending(position)
            .await)
    }

    pub async fn older_than(
        &mut self,
        position: i64,
        before_ns: i64,
    ) -> Result<Option<(i64, u64)>, ReadError> {
        on_log!(self, |l, c| l.older_than(&c, position, before_ns), |p| p
            .older_than(position, before_ns)
            .await)
    }

    pub async fn series(&mut self, ids: Vec<i64>) -> Result<Vec<(i64, SeriesKey)>, ReadError> {
        on_log!(self, |l, c| l.series(&c, &ids), |p| p.series(&ids).await)
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
