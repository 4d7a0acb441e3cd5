//! The SQLite store's write side: one connection, owned by the merger.
//!
//! `open` applies the schema and the durability setting, `load` reads back
//! what the merger needs to resume (series ids, delivery state),
//! `resolve_series` creates series rows, and `commit` writes one group of
//! batches with the new committed sequences in a single `IMMEDIATE`
//! transaction (the write lock is taken before the committed sequences are
//! read, so even a second process on the same file could not store a batch
//! twice).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::model::{SeriesKey, SeriesMeta, StoredValue};

use super::Plan;
pub use super::{
    AgentWrite, BatchWrite, CommitReport, Durability, EpochRow, Loaded, RetainStep, StoreError,
    WriteSet,
};

/// The write connection. Not `Sync`: exactly one owner (the merger).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

/// The schema, applied on every open.
pub const SCHEMA: &str = include_str!("schema.sql");

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// the given durability, and applies the schema.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=OFF;"
        ))
        .map_err(err)?;
        // A reader or an outside tool may hold a lock for a moment; wait for
        // it instead of failing the commit (the merger retries on error too).
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')",
            [],
        )
        .map_err(err)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads everything the merger keeps in memory.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT id, agent, device, metric, labels, unit FROM series")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, agent, device, metric, labels, unit) = row.map_err(|e| self.err(e))?;
            let labels = serde_json::from_str(&labels).map_err(|source| StoreError::Labels {
                store: format!("sqlite {}", self.path.display()),
                id,
                source,
            })?;
            loaded.series.push(Arc::new(SeriesMeta {
                id,
                key: SeriesKey {
                    agent,
                    device,
                    metric,
                    labels,
                    unit,
                },
            }));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT agent, epoch, committed_seq, dropped, last_seq FROM epochs")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    epoch_row(r, 2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (agent, epoch, state) = row.map_err(|e| self.err(e))?;
            loaded.epochs.insert((Arc::from(agent), epoch), state);
        }
        Ok(loaded)
    }

    /// The stored delivery state of (agent, epoch).
    pub fn epoch(&self, agent: &str, epoch: u64) -> Result<Option<EpochRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT committed_seq, dropped, last_seq FROM epochs WHERE agent = ?1 AND epoch = ?2",
                params![agent, epoch as i64],
                |r| epoch_row(r, 0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Ids of `keys`, creating missing series rows in one transaction.
    pub fn resolve_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<i64>, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut ids = Vec::with_capacity(keys.len());
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO series (agent, device, metric, labels, unit) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )
                .map_err(err)?;
            let mut get = tx
                .prepare_cached(
                    "SELECT id FROM series WHERE agent = ?1 AND device = ?2 AND metric = ?3 \
                     AND labels = ?4 AND unit = ?5",
                )
                .map_err(err)?;
            for k in keys {
                let labels = labels_json(k);
                let p = params![k.agent, k.device, k.metric, labels, k.unit];
                ins.execute(p).map_err(err)?;
                ids.push(get.query_row(p, |r| r.get::<_, i64>(0)).map_err(err)?);
            }
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    /// Writes `set` in one transaction. On error nothing of it is stored and
    /// the caller may retry with the same set.
    pub fn commit(&mut self, set: &WriteSet) -> Result<CommitReport, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let plan = {
            let mut get = tx
                .prepare_cached(
                    "SELECT committed_seq, dropped, last_seq FROM epochs WHERE agent = ?1 AND epoch = ?2",
                )
                .map_err(err)?;
            let mut stored = HashMap::new();
            for (agent, epoch) in Plan::keys(set) {
                let row = get
                    .query_row(params![agent.as_ref(), epoch as i64], |r| epoch_row(r, 0))
                    .optional()
                    .map_err(err)?;
                if let Some(row) = row {
                    stored.insert((agent, epoch), row);
                }
            }
            Plan::new(set, &stored)
        };
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO readings (series_id, ts_ns, received_ns, kind, value) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for (b, _) in set.batches.iter().zip(&plan.write).filter(|(_, w)| **w) {
                for r in &b.readings {
                    let kind = r.value.kind_code();
                    let res = match &r.value {
                        StoredValue::F64(v) => {
                            ins.execute(params![r.series_id, r.ts_ns, b.received_ns, kind, v])
                        }
                        StoredValue::I64(v) => {
                            ins.execute(params![r.series_id, r.ts_ns, b.received_ns, kind, v])
                        }
                        StoredValue::Bool(v) => ins.execute(params![
                            r.series_id,
                            r.ts_ns,
                            b.received_ns,
                            kind,
                            i64::from(*v)
                        ]),
                        StoredValue::Str(v) | StoredValue::Timeout(v) | StoredValue::Error(v) => {
                            ins.execute(params![r.series_id, r.ts_ns, b.received_ns, kind, v])
                        }
                    };
                    res.map_err(err)?;
                }
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO epochs (agent, epoch, committed_seq, dropped, last_seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (agent, epoch) DO UPDATE SET \
                     committed_seq = excluded.committed_seq, dropped = excluded.dropped, \
                     last_seq = excluded.last_seq",
                )
                .map_err(err)?;
            for (agent, epoch, e) in &plan.report.epochs {
                up.execute(params![
                    agent.as_ref(),
                    *epoch as i64,
                    e.committed_seq as i64,
                    e.dropped as i64,
                    e.last_seq as i64
                ])
                .map_err(err)?;
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO agents (id, epoch, peer, last_seen_ns, readings_stored, \
                     batches_deduplicated, batches_resent) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
                     peer = CASE excluded.peer WHEN '' THEN peer ELSE excluded.peer END, \
                     last_seen_ns = max(last_seen_ns, excluded.last_seen_ns), \
                     readings_stored = readings_stored + excluded.readings_stored, \
                     batches_deduplicated = batches_deduplicated + excluded.batches_deduplicated, \
                     batches_resent = batches_resent + excluded.batches_resent",
                )
                .map_err(err)?;
            // `dropped_at_agent` mirrors the sum of the epochs' reports, for
            // readers of the file (the Query service sums `epochs` itself).
            let mut dropped = tx
                .prepare_cached(
                    "UPDATE agents SET dropped_at_agent = \
                     (SELECT COALESCE(SUM(e.dropped), 0) FROM epochs e WHERE e.agent = ?1) \
                     WHERE id = ?1",
                )
                .map_err(err)?;
            for (id, a, stored) in plan.agents(set) {
                up.execute(params![
                    id.as_ref(),
                    a.epoch as i64,
                    a.peer,
                    a.last_seen_ns,
                    stored as i64,
                    a.batches_deduplicated as i64,
                    a.batches_resent as i64
                ])
                .map_err(err)?;
                dropped.execute(params![id.as_ref()]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(plan.report)
    }

    /// Deletes the readings older than `cutoff_ns` among the `max_rows`
    /// oldest by arrival (rowid). `readings` has no time index (it would
    /// slow every append), and device time follows arrival closely, so
    /// walking from the front costs one bounded window per step instead of
    /// a scan of the whole table. A reading that arrived late with an old
    /// timestamp, behind more than a window of younger ones, goes in a later
    /// pass, once those have aged out too.
    pub fn retain(&mut self, cutoff_ns: i64, max_rows: u64) -> Result<RetainStep, StoreError> {
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let removed = self
            .conn
            .execute(
                "DELETE FROM readings WHERE rowid IN \
                 (SELECT rowid FROM readings ORDER BY rowid LIMIT ?2) AND ts_ns < ?1",
                params![cutoff_ns, limit],
            )
            .map_err(|e| self.err(e))? as u64;
        Ok(RetainStep {
            removed,
            done: removed < max_rows,
        })
    }
}

/// Canonical JSON of a series' labels (keys sorted: it is a `BTreeMap`).
pub(crate) fn labels_json(key: &SeriesKey) -> String {
    serde_json::to_string(&key.labels).unwrap_or_else(|_| "{}".into())
}

/// `committed_seq, dropped, last_seq` from column `first` on.
fn epoch_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<EpochRow> {
    Ok(EpochRow {
        committed_seq: r.get::<_, i64>(first)? as u64,
        dropped: r.get::<_, i64>(first + 1)? as u64,
        last_seq: r.get::<_, i64>(first + 2)? as u64,
    })
}
