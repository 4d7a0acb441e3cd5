//! The SQLite commit log the exports read (`export.sql`): a trigger on
//! `head` copies each committed batch into `export_log` inside the
//! merger's own transaction, so the log holds exactly what committed, in
//! commit order (one writer; `AUTOINCREMENT` ids are never reused, unlike
//! head ids, which compaction frees). The export tasks trim the rows every
//! export's cursor has passed, [`TRIM_ROWS`] per transaction ([`SqliteLog::trim`]),
//! never the merger's commit: a cursor that jumps past a large backlog
//! (`max_lag`, a removed export) must not make one commit delete it all
//! under the write lock. Compaction and retention never touch the log:
//! what an export has not sent stays until it is sent or the export skips
//! it (`max_lag`, counted by the export).
//!
//! The export tasks open their own connections here: reads never block the
//! merger (WAL), and a cursor save is one short write transaction, taken
//! with the merger's busy timeout, a few per second at most.
//!
//! Owns the log and cursor tables; uses the blob codec to read head blobs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::warn;

use super::codec::Decoder;
use crate::model::SeriesKey;
use crate::store::export::{CursorRow, LogBatch, LogReading, Origin, Pending, TRIM_ROWS};
use crate::store::labels::{SERIES_COLUMNS, SeriesRow};
use crate::store::read::ReadError;

/// How long a statement waits for the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The log's tables and trigger (idempotent).
const SCHEMA: &str = include_str!("export.sql");

/// The commit log of one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteLog {
    path: PathBuf,
}

impl SqliteLog {
    /// Sets the log up for the exports `names` (tables, trigger; cursors of
    /// other names removed, a new name starting at the log's end). With no
    /// names, removes the log and its trigger, so nothing is copied.
    pub fn setup(path: &Path, names: &[String]) -> Result<SqliteLog, ReadError> {
        let log = SqliteLog {
            path: path.to_owned(),
        };
        let mut conn = log.open(false)?;
        let err = log.err("set up the export log");
        if names.is_empty() {
            // Said, not silent: what the removed exports had not sent.
            for (c, p) in log.status()? {
                warn!(export = %c.name, position = c.position, pending = p.readings, "no [[exports]] configured: the export's cursor and the commit log are removed; what it had not sent will not be sent");
            }
            conn.execute_batch(
                "DROP TRIGGER IF EXISTS export_log_append; DROP TABLE IF EXISTS export_log; \
                 DROP TABLE IF EXISTS export_cursors;",
            )
            .map_err(err)?;
            return Ok(SqliteLog {
                path: path.to_owned(),
            });
        }
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        // A head and a log from before batch identities get their columns
        // first: the trigger copies them.
        super::write::upgrade_head(&tx).map_err(&err)?;
        let has_origin: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('export_log') WHERE name = 'seq'",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let has_log: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'export_log'",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        if has_log && !has_origin {
            tx.execute_batch(
                "ALTER TABLE export_log ADD COLUMN agent TEXT; \
                 ALTER TABLE export_log ADD COLUMN epoch INTEGER; \
                 ALTER TABLE export_log ADD COLUMN seq INTEGER;",
            )
            .map_err(&err)?;
        }
        tx.execute_batch(SCHEMA).map_err(&err)?;
        let end: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'export_log'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let mut keep = String::from("DELETE FROM export_cursors WHERE name NOT IN (");
        for (i, _) in names.iter().enumerate() {
            keep.push_str(if i == 0 { "?" } else { ", ?" });
        }
        keep.push(')');
        {
            let mut gone =
                String::from("SELECT name, position FROM export_cursors WHERE name NOT IN (");
            gone.push_str(&keep[keep.find('(').map_or(0, |i| i + 1)..]);
            let mut stmt = tx.prepare(&gone).map_err(&err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(names.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(&err)?;
            for row in rows {
                let (name, position) = row.map_err(&err)?;
                warn!(export = %name, position, "export no longer configured: its cursor is removed");
            }
        }
        tx.execute(&keep, rusqlite::params_from_iter(names.iter()))
            .map_err(&err)?;
        for name in names {
            tx.execute(
                "INSERT INTO export_cursors (name, position) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO NOTHING",
                params![name, end],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        drop(err);
        Ok(log)
    }

    /// A log reader that sets nothing up (the `exports` subcommand).
    pub fn existing(path: &Path) -> SqliteLog {
        SqliteLog {
            path: path.to_owned(),
        }
    }

    fn open(&self, read_only: bool) -> Result<Connection, ReadError> {
        let open_err = |cause| ReadError::Open {
            path: self.path.clone(),
            cause,
        };
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&self.path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        Ok(conn)
    }

    fn err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ReadError + '_ {
        move |cause| ReadError::Query {
            what,
            path: self.path.clone(),
            cause,
        }
    }

    /// A connection for one export task (reads and cursor saves).
    pub fn connect(&self) -> Result<Connection, ReadError> {
        self.open(false)
    }

    /// The cursor of `name`.
    pub fn cursor(&self, conn: &Connection, name: &str) -> Result<CursorRow, ReadError> {
        let err = self.err("read an export cursor");
        conn.query_row(
            "SELECT name, position, inflight, sent, dropped, skipped, retried, last_error \
             FROM export_cursors WHERE name = ?1",
            params![name],
            cursor_row,
        )
        .optional()
        .map_err(err)?
        .ok_or_else(|| ReadError::Setup {
            store: self.path.display().to_string(),
            message: format!("export {name:?} has no cursor"),
        })
    }

    /// Saves a cursor (position and counters); an error when its row is
    /// gone (`setup` without this export).
    pub fn save(&self, conn: &Connection, c: &CursorRow) -> Result<(), ReadError> {
        let n = conn
            .execute(
                "UPDATE export_cursors SET position = ?2, sent = ?3, dropped = ?4, skipped = ?5, \
             retried = ?6, last_error = ?7, inflight = ?8 WHERE name = ?1",
                params![
                    c.name,
                    c.position,
                    c.sent as i64,
                    c.dropped as i64,
                    c.skipped as i64,
                    c.retried as i64,
                    c.last_error,
                    c.inflight
                ],
            )
            .map_err(self.err("save an export cursor"))?;
        if n != 1 {
            return Err(ReadError::CursorRemoved {
                name: c.name.clone(),
            });
        }
        Ok(())
    }

    /// Deletes up to [`TRIM_ROWS`] log rows that every cursor has passed,
    /// oldest first, in one transaction; returns how many went (fewer than
    /// [`TRIM_ROWS`]: nothing more to trim for now).
    pub fn trim(&self, conn: &Connection) -> Result<u64, ReadError> {
        let n = conn
            .execute(
                "DELETE FROM export_log WHERE id IN (SELECT id FROM export_log \
                 WHERE id <= (SELECT MIN(position) FROM export_cursors) ORDER BY id LIMIT ?1)",
                params![TRIM_ROWS],
            )
            .map_err(self.err("trim the export log"))?;
        Ok(n as u64)
    }

    /// Committed batches after `position`, in commit order, up to about
    /// `max_readings` readings (at least one batch).
    pub fn read(
        &self,
        conn: &Connection,
        position: i64,
        max_readings: usize,
    ) -> Result<Vec<LogBatch>, ReadError> {
        let err = self.err("read the export log");
        let tx = conn.unchecked_transaction().map_err(&err)?;
        let mut out = Vec::new();
        let mut total = 0usize;
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, received_ns, data, agent, epoch, seq FROM export_log \
                     WHERE id > ?1 ORDER BY id",
                )
                .map_err(&err)?;
            let mut rows = stmt.query(params![position]).map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                let id: i64 = row.get(0).map_err(&err)?;
                let received_ns: i64 = row.get(1).map_err(&err)?;
                let blob = row.get_ref(2).map_err(&err)?.as_blob().map_err(|e| {
                    err(rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    ))
                })?;
                let blob_err = |cause| ReadError::Blob {
                    what: "read the export log",
                    path: self.path.clone(),
                    table: "export_log",
                    id,
                    cause: Box::new(cause),
                };
                let points = Decoder::new(blob, 0, received_ns)
                    .and_then(|d| d.collect_points())
                    .map_err(blob_err)?;
                let readings: Vec<LogReading> = points
                    .into_iter()
                    .map(|p| LogReading {
                        series_id: p.series,
                        ts_ns: p.ts_ns,
                        value: p.value.to_stored(),
                    })
                    .collect();
                let agent: Option<String> = row.get(3).map_err(&err)?;
                let epoch: Option<i64> = row.get(4).map_err(&err)?;
                let seq: Option<i64> = row.get(5).map_err(&err)?;
                let origin = match (agent, epoch, seq) {
                    (Some(agent), Some(epoch), Some(seq)) => Some(Origin {
                        agent,
                        epoch: epoch as u64,
                        seq: seq as u64,
                    }),
                    _ => None,
                };
                total += readings.len();
                out.push(LogBatch {
                    position: id,
                    received_ns,
                    readings,
                    origin,
                });
                if total >= max_readings {
                    break;
                }
            }
        }
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// What is committed after `position`: readings, and the oldest
    /// batch's receive time.
    pub fn pending(&self, conn: &Connection, position: i64) -> Result<Pending, ReadError> {
        conn.query_row(
            "SELECT COALESCE(SUM(count), 0), MIN(received_ns), COALESCE(MAX(id), ?1) \
             FROM export_log WHERE id > ?1",
            params![position],
            |r| {
                Ok(Pending {
                    readings: r.get::<_, i64>(0)? as u64,
                    oldest_received_ns: r.get(1)?,
                    end: r.get(2)?,
                })
            },
        )
        .map_err(self.err("measure export lag"))
    }

    /// The batches after `position` up to the last one received before
    /// `before_ns`: its position and the readings of them all (what
    /// `max_lag` skips; a later-received batch committed before it is
    /// skipped and counted with them).
    pub fn older_than(
        &self,
        conn: &Connection,
        position: i64,
        before_ns: i64,
    ) -> Result<Option<(i64, u64)>, ReadError> {
        let (end, count): (Option<i64>, i64) = conn
            .query_row(
                "WITH old AS (SELECT MAX(id) AS m FROM export_log \
                   WHERE id > ?1 AND received_ns < ?2) \
                 SELECT old.m, (SELECT COALESCE(SUM(count), 0) FROM export_log \
                   WHERE id > ?1 AND id <= old.m) FROM old",
                params![position, before_ns],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.err("find batches past max_lag"))?;
        Ok(end.map(|e| (e, count as u64)))
    }

    /// The keys of series `ids`.
    pub fn series(
        &self,
        conn: &Connection,
        ids: &[i64],
    ) -> Result<Vec<(i64, SeriesKey)>, ReadError> {
        let err = self.err("read series for an export");
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SERIES_COLUMNS} FROM series WHERE id = ?1"
            ))
            .map_err(&err)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let row = stmt
                .query_row(params![id], |r| {
                    Ok(SeriesRow {
                        id: r.get(0)?,
                        agent: r.get(1)?,
                        device: r.get(2)?,
                        metric: r.get(3)?,
                        labels: r.get(4)?,
                        unit: r.get(5)?,
                    })
                })
                .optional()
                .map_err(&err)?;
            if let Some(row) = row {
                let meta = row.into_meta().map_err(|labels| ReadError::Labels {
                    store: self.path.display().to_string(),
                    labels,
                })?;
                out.push((meta.id, meta.key));
            }
        }
        Ok(out)
    }

    /// Every cursor, with what is pending after it (the `exports`
    /// subcommand; read-only).
    pub fn status(&self) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        let conn = self.open(true)?;
        let err = self.err("list export cursors");
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'export_cursors')",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        if !exists {
            return Ok(Vec::new());
        }
        let cursors = {
            let mut stmt = conn
                .prepare(
                    "SELECT name, position, inflight, sent, dropped, skipped, retried, last_error \
                     FROM export_cursors ORDER BY name",
                )
                .map_err(&err)?;
            let rows = stmt.query_map([], cursor_row).map_err(&err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(&err)?
        };
        let mut out = Vec::with_capacity(cursors.len());
        for c in cursors {
            let p = self.pending(&conn, c.position)?;
            out.push((c, p));
        }
        Ok(out)
    }
}

fn cursor_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CursorRow> {
    Ok(CursorRow {
        name: r.get(0)?,
        position: r.get(1)?,
        inflight: r.get(2)?,
        sent: r.get::<_, i64>(3)? as u64,
        dropped: r.get::<_, i64>(4)? as u64,
        skipped: r.get::<_, i64>(5)? as u64,
        retried: r.get::<_, i64>(6)? as u64,
        last_error: r.get(7)?,
    })
}

#[cfg(test)]
mod tests;
