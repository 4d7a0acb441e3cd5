//! The SQLite store's write side: one connection, owned by the merger.
//!
//! `open` applies the schema and the durability setting, `load` reads back
//! what the merger needs to resume (series ids, committed sequences, agent
//! counters) and `commit` writes one group of batches, the series they
//! introduced and the new committed sequences in a single transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::model::{NewReading, SeriesKey, SeriesMeta, StoredValue};

/// How hard a commit is pushed to disk before it is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit. An acked
    /// reading survives power loss. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced at checkpoints only. An acked
    /// reading survives a collector crash but not an OS crash or power loss.
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!(
                "unknown durability {other:?} (expected full or normal)"
            )),
        }
    }
}

/// Errors of the SQLite store, with the database path for context.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("sqlite {path}: bad stored labels for series {id}: {source}")]
    Labels {
        path: PathBuf,
        id: i64,
        #[source]
        source: serde_json::Error,
    },
}

/// Per-agent counters as persisted in the `agents` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRow {
    pub epoch: u64,
    pub peer: String,
    pub last_seen_ns: i64,
    pub readings_stored: u64,
    pub batches_deduplicated: u64,
    pub dropped_at_agent: u64,
}

/// What the merger needs to resume after a restart.
#[derive(Debug, Default)]
pub struct Loaded {
    pub series: Vec<Arc<SeriesMeta>>,
    pub committed: HashMap<(Arc<str>, u64), u64>,
    pub agents: HashMap<Arc<str>, AgentRow>,
}

/// Readings of one batch, all received at the same moment.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub received_ns: i64,
    pub readings: Vec<NewReading>,
}

/// One transaction's worth of changes.
#[derive(Debug, Default)]
pub struct WriteSet {
    pub new_series: Vec<Arc<SeriesMeta>>,
    pub batches: Vec<BatchWrite>,
    /// New committed sequence per (agent, epoch).
    pub committed: Vec<(Arc<str>, u64, u64)>,
    /// Agents whose counters changed, with their absolute values.
    pub agents: Vec<(Arc<str>, AgentRow)>,
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.new_series.is_empty()
            && self.batches.is_empty()
            && self.committed.is_empty()
            && self.agents.is_empty()
    }
}

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
                path: self.path.clone(),
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
            .prepare("SELECT agent, epoch, committed_seq FROM epochs")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (agent, epoch, seq) = row.map_err(|e| self.err(e))?;
            loaded
                .committed
                .insert((Arc::from(agent), epoch as u64), seq as u64);
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, epoch, peer, last_seen_ns, readings_stored, batches_deduplicated, \
                 dropped_at_agent FROM agents",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    AgentRow {
                        epoch: r.get::<_, i64>(1)? as u64,
                        peer: r.get(2)?,
                        last_seen_ns: r.get(3)?,
                        readings_stored: r.get::<_, i64>(4)? as u64,
                        batches_deduplicated: r.get::<_, i64>(5)? as u64,
                        dropped_at_agent: r.get::<_, i64>(6)? as u64,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, agent) = row.map_err(|e| self.err(e))?;
            loaded.agents.insert(Arc::from(id), agent);
        }
        Ok(loaded)
    }

    /// Writes `set` in one transaction. On error nothing of it is stored and
    /// the caller may retry with the same set.
    pub fn commit(&mut self, set: &WriteSet) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO series (id, agent, device, metric, labels, unit) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            for s in &set.new_series {
                let labels = serde_json::to_string(&s.key.labels).unwrap_or_else(|_| "{}".into());
                ins.execute(params![
                    s.id,
                    s.key.agent,
                    s.key.device,
                    s.key.metric,
                    labels,
                    s.key.unit
                ])
                .map_err(err)?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO readings (series_id, ts_ns, received_ns, kind, value) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for b in &set.batches {
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
                    "INSERT INTO epochs (agent, epoch, committed_seq) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (agent, epoch) DO UPDATE SET committed_seq = excluded.committed_seq",
                )
                .map_err(err)?;
            for (agent, epoch, seq) in &set.committed {
                up.execute(params![agent.as_ref(), *epoch as i64, *seq as i64])
                    .map_err(err)?;
            }
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO agents (id, epoch, peer, last_seen_ns, readings_stored, \
                     batches_deduplicated, dropped_at_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, peer = excluded.peer, \
                     last_seen_ns = excluded.last_seen_ns, readings_stored = excluded.readings_stored, \
                     batches_deduplicated = excluded.batches_deduplicated, \
                     dropped_at_agent = excluded.dropped_at_agent",
                )
                .map_err(err)?;
            for (id, a) in &set.agents {
                up.execute(params![
                    id.as_ref(),
                    a.epoch as i64,
                    a.peer,
                    a.last_seen_ns,
                    a.readings_stored as i64,
                    a.batches_deduplicated as i64,
                    a.dropped_at_agent as i64
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}
