//! The SQLite store's write side: one connection, owned by the merger.
//!
//! `open` applies the schema and the durability setting and replays the
//! head into the compactor, `load` reads back what the merger needs to
//! resume (series ids, delivery state), `resolve_series` creates series
//! rows, and `commit` writes one group of batches with the new committed
//! sequences in a single `IMMEDIATE` transaction (the write lock is taken
//! before the committed sequences are read, so even a second process on the
//! same file could not store a batch twice). Each batch is one `head` row
//! (an append, however many series it touches); `compact` moves the head
//! into per-series chunks in bounded steps (`compact.rs`); `retain.rs`
//! removes old readings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::codec::{Encoder, RawValue};
use super::compact::Compactor;
use super::layout::LayoutError;
use super::read::series_row;
use crate::model::{NewReading, SeriesKey};
use crate::store::labels::{SERIES_COLUMNS, SeriesRow, labels_json};
use crate::store::{
    CommitReport, CompactStep, Durability, EpochRow, Loaded, Plan, StoreError, StoredEpoch,
    WriteSet,
};

/// The write connection. Not `Sync`: exactly one owner (the merger).
pub struct SqliteStore {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) compactor: Compactor,
    /// Reused for every head row.
    head: Encoder,
    /// Reused: the order of a batch's readings in its head row.
    order: Vec<u32>,
    durability: Durability,
    /// `synchronous` is NORMAL for compaction although the store is
    /// `Full`: restored before the next commit (see [`Self::compact`]).
    relaxed: bool,
}

/// The schema, applied on every open.
pub const SCHEMA: &str = include_str!("schema.sql");

/// Brings a file made by an older collector up to [`SCHEMA`]: columns
/// added since are added to the existing tables (with their defaults).
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let has_collector: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('agents') WHERE name = 'collector'",
        [],
        |r| r.get(0),
    )?;
    if !has_collector {
        conn.execute_batch("ALTER TABLE agents ADD COLUMN collector TEXT NOT NULL DEFAULT ''")?;
    }
    let has_ranges: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('epochs') WHERE name = 'committed_ranges'",
        [],
        |r| r.get(0),
    )?;
    if !has_ranges {
        // NULL in every existing row: no ranges, as before.
        conn.execute_batch("ALTER TABLE epochs ADD COLUMN committed_ranges BLOB")?;
    }
    upgrade_head(conn)
}

/// Adds the batch identity columns (`agent`, `epoch`, `seq`) to a `head`
/// made before them; the export log's trigger copies them
/// (`export_log.rs`).
pub(super) fn upgrade_head(conn: &Connection) -> rusqlite::Result<()> {
    let has_origin: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('head') WHERE name = 'seq'",
        [],
        |r| r.get(0),
    )?;
    if !has_origin {
        conn.execute_batch(
            "ALTER TABLE head ADD COLUMN agent TEXT; ALTER TABLE head ADD COLUMN epoch INTEGER; \
             ALTER TABLE head ADD COLUMN seq INTEGER;",
        )?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode with
    /// the given durability, and applies the schema.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let err = sqlite_err(path);
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
        upgrade(&conn).map_err(err)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')",
            [],
        )
        .map_err(err)?;
        let compactor = Compactor::load(&conn).map_err(|e| layout_err(path, e))?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            compactor,
            head: Encoder::head(),
            order: Vec::new(),
            durability,
            relaxed: false,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, cause: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path)(cause)
    }

    /// Reads everything the merger keeps in memory.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT agent, COUNT(*) FROM series GROUP BY agent")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (agent, n) = row.map_err(|e| self.err(e))?;
            loaded
                .series_per_agent
                .insert(Arc::from(agent), u64::try_from(n).unwrap_or(0));
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT agent, epoch, committed_seq, committed_ranges, dropped, last_seq \
                 FROM epochs",
            )
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
            let (agent, epoch, stored) = row.map_err(|e| self.err(e))?;
            match stored.decode(&agent, epoch) {
                Ok(state) => {
                    loaded.epochs.insert((Arc::from(agent), epoch), state);
                }
                Err(m) => loaded.unreadable_epochs.push(m),
            }
        }
        Ok(loaded)
    }

    fn invalid_epoch(&self, message: String) -> StoreError {
        invalid_epoch(&self.path, message)
    }

    /// The stored delivery state of (agent, epoch).
    pub fn epoch(&self, agent: &str, epoch: u64) -> Result<Option<EpochRow>, StoreError> {
        let stored = self
            .conn
            .query_row(
                "SELECT committed_seq, committed_ranges, dropped, last_seq FROM epochs \
                 WHERE agent = ?1 AND epoch = ?2",
                params![agent, epoch as i64],
                |r| epoch_row(r, 0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        stored
            .map(|s| s.decode(agent, epoch).map_err(|m| self.invalid_epoch(m)))
            .transpose()
    }

    /// Calls `each` with every series row, one at a time.
    pub(crate) fn load_series(&self, each: &mut dyn FnMut(SeriesRow)) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {SERIES_COLUMNS} FROM series"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], series_row).map_err(|e| self.err(e))?;
        for row in rows {
            each(row.map_err(|e| self.err(e))?);
        }
        Ok(())
    }

    /// Series stored for `agent` (the unique index starts with `agent`).
    pub fn series_count(&self, agent: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM series WHERE agent = ?1",
                params![agent],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| self.err(e))
    }

    /// Ids of `keys` that are stored, without creating any.
    pub fn lookup_series(&self, keys: &[SeriesKey]) -> Result<Vec<Option<i64>>, StoreError> {
        let mut get = self
            .conn
            .prepare_cached(
                "SELECT id FROM series WHERE agent = ?1 AND device = ?2 AND metric = ?3 \
                 AND labels = ?4 AND unit = ?5",
            )
            .map_err(|e| self.err(e))?;
        keys.iter()
            .map(|k| {
                let labels = labels_json(k);
                get.query_row(params![k.agent, k.device, k.metric, labels, k.unit], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
                .map_err(|e| self.err(e))
            })
            .collect()
    }

    /// The stored rows of the series `ids` (those that exist).
    pub(crate) fn series_by_ids(&self, ids: &[i64]) -> Result<Vec<SeriesRow>, StoreError> {
        let mut get = self
            .conn
            .prepare_cached(&format!(
                "SELECT {SERIES_COLUMNS} FROM series WHERE id = ?1"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = get
                .query_row(params![id], series_row)
                .optional()
                .map_err(|e| self.err(e))?
            {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Ids of `keys`, creating missing series rows in one transaction.
    pub fn resolve_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<i64>, StoreError> {
        let err = sqlite_err(&self.path);
        let tx = begin(&mut self.conn, &self.path)?;
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
        // Acks wait for this commit: it must be as durable as configured.
        self.restore_sync()?;
        let err = sqlite_err(&self.path);
        let tx = begin(&mut self.conn, &self.path)?;
        let plan = {
            let mut get = tx
                .prepare_cached(
                    "SELECT committed_seq, committed_ranges, dropped, last_seq FROM epochs \
                     WHERE agent = ?1 AND epoch = ?2",
                )
                .map_err(err)?;
            let mut stored = HashMap::new();
            for (agent, epoch) in Plan::keys(set) {
                let row = get
                    .query_row(params![agent.as_ref(), epoch as i64], |r| epoch_row(r, 0))
                    .optional()
                    .map_err(err)?;
                if let Some(row) = row {
                    let row = row
                        .decode(&agent, epoch)
                        .map_err(|m| invalid_epoch(&self.path, m))?;
                    stored.insert((agent, epoch), row);
                }
            }
            Plan::new(set, &stored)
        };
        // Head rows written: (id, received_ns, points, min_ts, blob), for
        // the compactor once committed.
        let mut rows = Vec::new();
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO head (id, received_ns, min_series, max_series, min_ts, max_ts, \
                     count, data, agent, epoch, seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            for (b, _) in set.batches.iter().zip(&plan.write).filter(|(_, w)| **w) {
                if b.readings.is_empty() {
                    continue;
                }
                // In series order: the compactor reads rows that way.
                let head = &mut self.head;
                head.clear();
                series_order(&b.readings, &mut self.order);
                if self.order.is_empty() {
                    for r in &b.readings {
                        head.push(r.series_id, r.ts_ns, 0, RawValue::of(&r.value));
                    }
                } else {
                    for &i in &self.order {
                        let r = &b.readings[i as usize];
                        head.push(r.series_id, r.ts_ns, 0, RawValue::of(&r.value));
                    }
                }
                let blob = head.finish();
                let (min_series, max_series) = head.series_range();
                let (min_ts, max_ts) = head.ts_range();
                let id = self.compactor.next_head_id();
                ins.execute(params![
                    id,
                    b.received_ns,
                    min_series,
                    max_series,
                    min_ts,
                    max_ts,
                    head.len() as i64,
                    &blob[..],
                    b.agent.as_ref(),
                    b.epoch as i64,
                    b.seq as i64
                ])
                .map_err(err)?;
                rows.push((id, b.received_ns, head.len(), min_ts, blob));
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO epochs (agent, epoch, committed_seq, dropped, last_seq, \
                     committed_ranges) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (agent, epoch) DO UPDATE SET \
                     committed_seq = excluded.committed_seq, dropped = excluded.dropped, \
                     last_seq = excluded.last_seq, committed_ranges = excluded.committed_ranges",
                )
                .map_err(err)?;
            for (agent, epoch, e) in &plan.report.epochs {
                up.execute(params![
                    agent.as_ref(),
                    *epoch as i64,
                    e.committed.mark() as i64,
                    e.dropped as i64,
                    e.last_seq as i64,
                    e.committed.encode_ranges()
                ])
                .map_err(err)?;
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO agents (id, epoch, peer, last_seen_ns, readings_stored, \
                     batches_deduplicated, batches_resent, collector) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
                     peer = CASE excluded.peer WHEN '' THEN peer ELSE excluded.peer END, \
                     collector = CASE WHEN excluded.collector = '' \
                     OR excluded.last_seen_ns < last_seen_ns THEN collector \
                     ELSE excluded.collector END, \
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
                    a.batches_resent as i64,
                    a.collector
                ])
                .map_err(err)?;
                dropped.execute(params![id.as_ref()]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        for (id, received_ns, points, min_ts, blob) in rows {
            self.compactor.add(id, received_ns, points, min_ts, blob);
        }
        Ok(plan.report)
    }

    /// Whether [`SqliteStore::compact`] has work now.
    pub fn compaction_due(&self) -> bool {
        self.compactor.due()
    }

    /// Committed points not yet moved into chunks (waiting for a round, or
    /// in the round under way and not moved yet).
    pub fn compaction_backlog(&self) -> u64 {
        self.compactor.unmoved_points()
    }

    /// One bounded step of compaction (a no-op when none is due).
    ///
    /// Its transaction commits without an fsync even when the store is
    /// `Full`: a step only moves points that are durable already (head rows
    /// into chunks, with the marks that say so, in one transaction), so
    /// losing it to a power cut loses no reading, and the WAL keeps commits
    /// in order: after a crash the database holds a prefix of them, and the
    /// next durable commit's fsync covers the steps before it. With about
    /// a thousand series per step and rounds over every series, an fsync
    /// per step was a large share of the merger's time (`cargo xtask bench
    /// vs-prometheus`, BENCHMARKS.md).
    pub fn compact(&mut self) -> Result<CompactStep, StoreError> {
        if !self.compactor.due() {
            return Ok(CompactStep::default());
        }
        if self.durability == Durability::Full && !self.relaxed {
            self.conn
                .execute_batch("PRAGMA synchronous=NORMAL")
                .map_err(|e| self.err(e))?;
            self.relaxed = true;
        }
        let step = self
            .compactor
            .step(&mut self.conn)
            .map_err(|e| layout_err(&self.path, e));
        // Back to FULL now if possible; `commit` makes sure of it anyway.
        let restored = self.restore_sync();
        let step = step?;
        restored?;
        Ok(step)
    }

    /// The connection's `synchronous` setting (0 OFF, 1 NORMAL, 2 FULL).
    #[cfg(test)]
    pub(crate) fn synchronous(&self) -> i64 {
        self.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap_or(-1)
    }

    /// Puts `synchronous` back to FULL after compaction relaxed it.
    fn restore_sync(&mut self) -> Result<(), StoreError> {
        if self.relaxed {
            self.conn
                .execute_batch("PRAGMA synchronous=FULL")
                .map_err(|e| self.err(e))?;
            self.relaxed = false;
        }
        Ok(())
    }

    /// Starts a compaction round now if anything is pending, due or not;
    /// `compact` then steps through it (tests and tools).
    pub fn start_round(&mut self) {
        self.compactor.start_round();
    }

    /// Compacts everything pending now, due or not (tests and tools). A
    /// round already under way covers only what was pending when it
    /// started, so rounds are started until nothing is left.
    pub fn compact_all(&mut self) -> Result<(), StoreError> {
        loop {
            self.compactor.start_round();
            if !self.compactor.in_round() {
                return Ok(());
            }
            while self.compactor.in_round() {
                if !self.compactor.due() {
                    return Err(StoreError::Invalid {
                        store: format!("sqlite {}", self.path.display()),
                        what: "compaction",
                        message: "paused after a failed step; try again shortly".into(),
                    });
                }
                self.compact()?;
            }
        }
    }

    /// Sets the work of one compaction step: points, chunk rows (tests).
    #[cfg(test)]
    pub(crate) fn set_step_budget(&mut self, points: u64, rows: u64) {
        self.compactor.set_budget(points, rows);
    }
}

/// The order in which a head row holds `readings`: their indexes sorted
/// by series id, stable (a series keeps its commit order), in `order`;
/// left empty when they already are in that order (the usual agent batch:
/// polls of whole devices, whose series were declared in that order), which
/// costs one pass.
fn series_order(readings: &[NewReading], order: &mut Vec<u32>) {
    order.clear();
    if readings.is_sorted_by_key(|r| r.series_id) {
        return;
    }
    // A batch holds far fewer than 2^32 readings (the session's limit).
    order.extend(0..readings.len() as u32);
    order.sort_by_key(|&i| readings[i as usize].series_id);
}

/// A [`StoreError::Sqlite`] for the database at `path`.
pub(super) fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |cause| StoreError::Sqlite {
        path: path.to_path_buf(),
        cause,
    }
}

/// Starts an `IMMEDIATE` transaction: the write lock is taken first, so
/// what the transaction reads cannot change before it commits.
pub(super) fn begin<'c>(
    conn: &'c mut Connection,
    path: &Path,
) -> Result<Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_err(path))
}

/// An `epochs` row whose committed ranges do not decode.
fn invalid_epoch(path: &Path, message: String) -> StoreError {
    StoreError::Invalid {
        store: format!("sqlite {}", path.display()),
        what: StoredEpoch::DECODING,
        message,
    }
}

/// A failure of compaction or retention as a [`StoreError`].
pub(super) fn layout_err(path: &Path, e: LayoutError) -> StoreError {
    match e {
        LayoutError::Sqlite(cause) => sqlite_err(path)(cause),
        e @ LayoutError::Blob { .. } => StoreError::Invalid {
            store: format!("sqlite {}", path.display()),
            what: "compaction",
            message: e.to_string(),
        },
    }
}

/// `committed_seq, committed_ranges, dropped, last_seq` from column
/// `first` on.
fn epoch_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StoredEpoch> {
    Ok(StoredEpoch {
        committed_seq: r.get::<_, i64>(first)? as u64,
        ranges: r.get(first + 1)?,
        dropped: r.get::<_, i64>(first + 2)? as u64,
        last_seq: r.get::<_, i64>(first + 3)? as u64,
    })
}
