//! The PostgreSQL store's write side: one connection, owned by the merger,
//! shared by nothing. Several collectors may write to one database at once.
//!
//! The merger's thread is blocking, so `PgStore` is a blocking facade: it
//! owns a small current-thread tokio runtime that drives its tokio-postgres
//! connection only while a call is in [`Runtime::block_on`]. The database's
//! I/O never runs on (or waits for) the gRPC runtime's workers, and the
//! merger stays a plain thread that owns everything it touches.
//!
//! - `open` connects and migrates: one transaction under an advisory lock
//!   (so two collectors starting together do not race) applies every
//!   migration newer than `tributary_migrations` says, and on the first one
//!   turns `readings` into a TimescaleDB hypertable when the extension is
//!   available (a plain table with a BRIN time index otherwise).
//! - `commit` inserts missing `epochs` rows, locks the rows of every
//!   (agent, epoch) of the set in sorted order (`SELECT ... FOR UPDATE`),
//!   skips batches at or below the locked `committed_seq`, writes the rest
//!   with binary COPY, advances the sequences and adds to the agent
//!   counters, then commits.
//! - A call that fails on a broken connection drops it; the next call (the
//!   merger retries) connects again. Every call is bounded by a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, info, warn};

use crate::model::{SeriesKey, SeriesMeta, StoredValue};

use super::sqlite::labels_json;
use super::{
    CommitReport, Durability, EpochRow, Loaded, Plan, RetainStep, StoreError, WriteSet, redact,
};

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "initial schema", include_str!("postgres/0001_init.sql"))];

/// Key of the advisory lock held while migrating ("trib").
const MIGRATION_LOCK: i64 = 0x7472_6962;

/// Longest a single store call (a commit, a resolve) may take before the
/// connection is given up and the call fails (the merger then retries).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two connection attempts.
const RECONNECT_QUIET: Duration = Duration::from_millis(500);

/// TimescaleDB chunk size for `readings`: one day of device time, in ns.
const CHUNK_NS: i64 = 86_400_000_000_000;

/// How `readings` is laid out, decided by the first migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A plain table; retention deletes rows.
    Table,
    /// A TimescaleDB hypertable; retention drops whole chunks.
    Hypertable,
}

/// Why one operation failed, before the store's name is attached.
#[derive(Debug)]
enum Fail {
    Db(&'static str, tokio_postgres::Error),
    Invalid(&'static str, String),
}

/// `?` on a tokio-postgres result inside an operation, naming the step.
trait Step<T> {
    fn step(self, what: &'static str) -> Result<T, Fail>;
}

impl<T> Step<T> for Result<T, tokio_postgres::Error> {
    fn step(self, what: &'static str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Db(what, e))
    }
}

/// The write connection and the runtime that drives it.
pub struct PgStore {
    rt: Runtime,
    config: Config,
    durability: Durability,
    /// The URL without its password.
    describe: String,
    /// `None` until connected, and again after a connection broke.
    client: Option<Client>,
    /// After a failed connection attempt: no new attempt before this
    /// instant, so a burst of calls (a Hello per reconnecting agent) fails
    /// fast instead of each waiting out a connect timeout.
    quiet_until: Option<(std::time::Instant, String)>,
    layout: Layout,
}

impl PgStore {
    /// Connects to `url` and creates or migrates the schema.
    pub fn open(url: &str, durability: Durability) -> Result<Self, StoreError> {
        let describe = redact(url);
        let mut config: Config = url.parse().map_err(|e| StoreError::Postgres {
            store: describe.clone(),
            what: "parse URL",
            source: e,
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tributary-collector");
        }
        // A peer that vanished without a FIN is noticed, not waited on.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::Runtime {
                store: describe.clone(),
                source,
            })?;
        let mut store = PgStore {
            rt,
            config,
            durability,
            describe,
            client: None,
            quiet_until: None,
            layout: Layout::Table,
        };
        store.layout = store.call(async |c: &mut Client| migrate(c).await)?;
        info!(store = %store.describe, layout = ?store.layout, "postgres schema ready");
        Ok(store)
    }

    /// The URL without its password.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// How `readings` is laid out in this database.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Runs one operation on the connection (connecting first if needed),
    /// bounded by [`CALL_TIMEOUT`].
    fn call<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if let Some((until, why)) = &self.quiet_until
                && std::time::Instant::now() < *until
            {
                return Err(self.invalid("connect", format!("unreachable: {why}")));
            }
            match self.connect() {
                Ok(client) => {
                    self.quiet_until = None;
                    self.client = Some(client);
                }
                Err(e) => {
                    self.quiet_until =
                        Some((std::time::Instant::now() + RECONNECT_QUIET, e.to_string()));
                    return Err(e);
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(self.invalid("connect", "no connection".into()));
        };
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, op(client)).await });
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(fail)) => {
                if client.is_closed() {
                    self.client = None;
                }
                Err(match fail {
                    Fail::Db(what, source) => StoreError::Postgres {
                        store: self.describe.clone(),
                        what,
                        source,
                    },
                    Fail::Invalid(what, message) => self.invalid(what, message),
                })
            }
            Err(_) => {
                // The connection may be wedged mid-transaction; dropping it
                // makes the server roll back whatever it had not committed.
                self.client = None;
                Err(StoreError::Timeout {
                    store: self.describe.clone(),
                    what: "store call",
                    after: CALL_TIMEOUT,
                })
            }
        }
    }

    fn invalid(&self, what: &'static str, message: String) -> StoreError {
        StoreError::Invalid {
            store: self.describe.clone(),
            what,
            message,
        }
    }

    /// A new connection, its driver spawned on the store's runtime.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let durability = self.durability;
        let connected = self.rt.block_on(async move {
            let connecting = async {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %e, "postgres connection ended");
                    }
                });
                if durability == Durability::Normal {
                    client.batch_execute("SET synchronous_commit = off").await?;
                }
                Ok::<_, tokio_postgres::Error>(client)
            };
            tokio::time::timeout(CALL_TIMEOUT, connecting).await
        });
        match connected {
            Ok(Ok(client)) => {
                debug!(store = %self.describe, "connected");
                Ok(client)
            }
            Ok(Err(source)) => Err(StoreError::Postgres {
                store: self.describe.clone(),
                what: "connect",
                source,
            }),
            Err(_) => Err(StoreError::Timeout {
                store: self.describe.clone(),
                what: "connect",
                after: CALL_TIMEOUT,
            }),
        }
    }

    /// Every series and every epoch's delivery state.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        self.call(async |c: &mut Client| {
            let mut loaded = Loaded::default();
            let rows = c
                .query(
                    "SELECT id, agent, device, metric, labels, unit FROM series",
                    &[],
                )
                .await
                .step("load series")?;
            for r in rows {
                let id: i64 = r.get(0);
                let labels: String = r.get(4);
                let labels = serde_json::from_str(&labels).map_err(|e| {
                    Fail::Invalid("load series", format!("bad labels of series {id}: {e}"))
                })?;
                loaded.series.push(Arc::new(SeriesMeta {
                    id,
                    key: SeriesKey {
                        agent: r.get(1),
                        device: r.get(2),
                        metric: r.get(3),
                        labels,
                        unit: r.get(5),
                    },
                }));
            }
            let rows = c
                .query(
                    "SELECT agent, epoch, committed_seq, dropped, last_seq FROM epochs",
                    &[],
                )
                .await
                .step("load epochs")?;
            for r in rows {
                let agent: String = r.get(0);
                let epoch: i64 = r.get(1);
                loaded
                    .epochs
                    .insert((Arc::from(agent), epoch as u64), epoch_row(&r, 2));
            }
            Ok(loaded)
        })
    }

    /// The stored delivery state of (agent, epoch): what a Welcome tells,
    /// since another collector may have advanced it.
    pub fn epoch(&mut self, agent: &str, epoch: u64) -> Result<Option<EpochRow>, StoreError> {
        self.call(async |c: &mut Client| {
            let row = c
                .query_opt(
                    "SELECT committed_seq, dropped, last_seq FROM epochs \
                     WHERE agent = $1 AND epoch = $2",
                    &[&agent, &(epoch as i64)],
                )
                .await
                .step("read epoch")?;
            Ok(row.map(|r| epoch_row(&r, 0)))
        })
    }

    /// Ids of `keys` in order, inserting the missing ones (autocommit: a
    /// series row without readings is harmless, and it is durable before
    /// any reading that uses it can commit).
    pub fn resolve_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let labels: Vec<String> = keys.iter().map(labels_json).collect();
        let col = |f: fn(&SeriesKey) -> &str| keys.iter().map(f).collect::<Vec<&str>>();
        let (agents, devices, metrics, units) = (
            col(|k| &k.agent),
            col(|k| &k.device),
            col(|k| &k.metric),
            col(|k| &k.unit),
        );
        let ids = self.call(async |c: &mut Client| {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&agents, &devices, &metrics, &labels, &units];
            c.execute(
                "INSERT INTO series (agent, device, metric, labels, unit) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 ON CONFLICT (agent, device, metric, md5(labels), unit) DO NOTHING",
                &params,
            )
            .await
            .step("insert series")?;
            // A second statement: a row another collector inserted while
            // this INSERT waited is visible to it, not to the INSERT.
            let rows = c
                .query(
                    "SELECT u.i, s.id FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                       WITH ORDINALITY AS u(agent, device, metric, labels, unit, i) \
                     JOIN series s ON s.agent = u.agent AND s.device = u.device \
                       AND s.metric = u.metric AND md5(s.labels) = md5(u.labels) \
                       AND s.labels = u.labels AND s.unit = u.unit",
                    &params,
                )
                .await
                .step("read series ids")?;
            let mut ids = vec![0i64; keys.len()];
            for r in rows {
                let i: i64 = r.get(0);
                if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| ids.get_mut(i)) {
                    *slot = r.get(1);
                }
            }
            match ids.iter().position(|id| *id == 0) {
                Some(i) => Err(Fail::Invalid(
                    "resolve series",
                    format!("series {:?} neither inserted nor found", keys[i]),
                )),
                None => Ok(ids),
            }
        })?;
        Ok(ids)
    }

    /// Writes `set` in one transaction, under the row locks of its epochs.
    pub fn commit(&mut self, set: &WriteSet) -> Result<CommitReport, StoreError> {
        self.call(async |c: &mut Client| commit(c, set).await)
    }

    /// Deletes (plain table) up to `max_rows` readings older than
    /// `cutoff_ns`, or drops (hypertable) every chunk entirely older.
    pub fn retain(&mut self, cutoff_ns: i64, max_rows: u64) -> Result<RetainStep, StoreError> {
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        match self.layout {
            Layout::Table => self.call(async |c: &mut Client| {
                let removed = c
                    .execute(
                        "DELETE FROM readings WHERE ctid = ANY(ARRAY(\
                         SELECT ctid FROM readings WHERE ts_ns < $1 LIMIT $2))",
                        &[&cutoff_ns, &limit],
                    )
                    .await
                    .step("delete old readings")?;
                Ok(RetainStep {
                    removed,
                    done: removed < max_rows,
                })
            }),
            Layout::Hypertable => self.call(async |c: &mut Client| {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM drop_chunks('readings', older_than => $1::bigint)",
                        &[&cutoff_ns],
                    )
                    .await
                    .step("drop old chunks")?;
                let dropped: i64 = row.get(0);
                Ok(RetainStep {
                    removed: dropped as u64,
                    done: true,
                })
            }),
        }
    }
}

/// Applies pending migrations in one transaction under an advisory lock and
/// returns the layout of `readings`.
async fn migrate(c: &mut Client) -> Result<Layout, Fail> {
    let tx = c.transaction().await.step("begin migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .step("take the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tributary_migrations (\
           version    INTEGER PRIMARY KEY, \
           name       TEXT NOT NULL, \
           applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .step("create tributary_migrations")?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM tributary_migrations",
            &[],
        )
        .await
        .step("read schema version")?
        .get(0);
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(Fail::Invalid(
            "migrate",
            format!(
                "the database is at schema version {current}, newer than this collector's {latest}"
            ),
        ));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.step("apply migration")?;
        if *version == 1 {
            let layout = if hypertable(&tx).await? {
                Layout::Hypertable
            } else {
                tx.batch_execute("CREATE INDEX readings_ts ON readings USING brin (ts_ns)")
                    .await
                    .step("create the time index")?;
                Layout::Table
            };
            let value = match layout {
                Layout::Table => "table",
                Layout::Hypertable => "hypertable",
            };
            tx.execute(
                "INSERT INTO tributary_meta (key, value) VALUES ('readings_layout', $1)",
                &[&value],
            )
            .await
            .step("record the layout")?;
        }
        tx.execute(
            "INSERT INTO tributary_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .step("record the migration")?;
        info!(version, name, "applied postgres migration");
    }
    let layout: Option<String> = tx
        .query_opt(
            "SELECT value FROM tributary_meta WHERE key = 'readings_layout'",
            &[],
        )
        .await
        .step("read the layout")?
        .map(|r| r.get(0));
    tx.commit().await.step("commit migration")?;
    Ok(match layout.as_deref() {
        Some("hypertable") => Layout::Hypertable,
        _ => Layout::Table,
    })
}

/// Makes `readings` a TimescaleDB hypertable if the extension can be had;
/// false (with a log line) when it cannot, leaving the transaction usable.
async fn hypertable(tx: &tokio_postgres::Transaction<'_>) -> Result<bool, Fail> {
    let available = tx
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .step("look for timescaledb")?
        .is_some();
    if !available {
        info!("timescaledb is not available: readings is a plain table with a BRIN time index");
        return Ok(false);
    }
    let sql = format!(
        "CREATE EXTENSION IF NOT EXISTS timescaledb; \
         SELECT create_hypertable('readings', 'ts_ns', chunk_time_interval => {CHUNK_NS}::bigint);"
    );
    // A savepoint, so a failure (no privilege, library not preloaded) does
    // not abort the migration.
    tx.batch_execute("SAVEPOINT timescale")
        .await
        .step("savepoint")?;
    match tx.batch_execute(&sql).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT timescale")
                .await
                .step("release savepoint")?;
            info!("readings is a timescaledb hypertable (1-day chunks)");
            Ok(true)
        }
        Err(e) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT timescale")
                .await
                .step("roll back to savepoint")?;
            warn!(error = %e, "timescaledb is available but could not be used; readings is a plain table");
            Ok(false)
        }
    }
}

/// One commit: lock, plan, COPY, advance, count, commit.
async fn commit(c: &mut Client, set: &WriteSet) -> Result<CommitReport, Fail> {
    let keys = Plan::keys(set);
    let key_agents: Vec<&str> = keys.iter().map(|(a, _)| a.as_ref()).collect();
    let key_epochs: Vec<i64> = keys.iter().map(|(_, e)| *e as i64).collect();
    let tx = c.transaction().await.step("begin")?;
    let mut stored = HashMap::new();
    if !keys.is_empty() {
        // Rows must exist to be locked; a concurrent insert of the same key
        // makes this wait for the other transaction, then do nothing.
        tx.execute(
            "INSERT INTO epochs (agent, epoch) \
             SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
            &[&key_agents, &key_epochs],
        )
        .await
        .step("insert epochs")?;
        let rows = tx
            .query(
                "SELECT e.agent, e.epoch, e.committed_seq, e.dropped, e.last_seq \
                 FROM epochs e JOIN unnest($1::text[], $2::bigint[]) AS k(agent, epoch) \
                   ON e.agent = k.agent AND e.epoch = k.epoch \
                 ORDER BY e.agent COLLATE \"C\", e.epoch FOR UPDATE OF e",
                &[&key_agents, &key_epochs],
            )
            .await
            .step("lock epochs")?;
        for r in rows {
            let agent: String = r.get(0);
            let epoch: i64 = r.get(1);
            stored.insert((Arc::from(agent), epoch as u64), epoch_row(&r, 2));
        }
    }
    let plan = Plan::new(set, &stored);

    let mut rows = set
        .batches
        .iter()
        .zip(&plan.write)
        .filter(|(_, w)| **w)
        .flat_map(|(b, _)| b.readings.iter().map(move |r| (b.received_ns, r)))
        .peekable();
    if rows.peek().is_some() {
        let sink = tx
            .copy_in(
                "COPY readings (series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .step("start copy")?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT2,
                Type::FLOAT8,
                Type::INT8,
                Type::TEXT,
            ],
        );
        let mut writer = std::pin::pin!(writer);
        for (received_ns, r) in rows {
            let kind = r.value.kind_code() as i16;
            let (f, i, t): (Option<f64>, Option<i64>, Option<&str>) = match &r.value {
                StoredValue::F64(v) => (Some(*v), None, None),
                StoredValue::I64(v) => (None, Some(*v), None),
                StoredValue::Bool(v) => (None, Some(i64::from(*v)), None),
                StoredValue::Str(v) | StoredValue::Timeout(v) | StoredValue::Error(v) => {
                    (None, None, Some(v.as_str()))
                }
            };
            writer
                .as_mut()
                .write(&[&r.series_id, &r.ts_ns, &received_ns, &kind, &f, &i, &t])
                .await
                .step("copy readings")?;
        }
        writer.finish().await.step("finish copy")?;
    }

    if !plan.report.epochs.is_empty() {
        let n = plan.report.epochs.len();
        let (mut agents, mut epochs, mut committed, mut dropped, mut last) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (a, e, row) in &plan.report.epochs {
            agents.push(a.as_ref());
            epochs.push(*e as i64);
            committed.push(row.committed_seq as i64);
            dropped.push(row.dropped as i64);
            last.push(row.last_seq as i64);
        }
        tx.execute(
            "UPDATE epochs AS e SET committed_seq = u.c, dropped = u.d, last_seq = u.l \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) \
               AS u(agent, epoch, c, d, l) \
             WHERE e.agent = u.agent AND e.epoch = u.epoch",
            &[&agents, &epochs, &committed, &dropped, &last],
        )
        .await
        .step("advance epochs")?;
    }

    let upserts = plan.agents(set);
    if !upserts.is_empty() {
        let ids: Vec<&str> = upserts.iter().map(|(id, _, _)| id.as_ref()).collect();
        let epochs: Vec<i64> = upserts.iter().map(|(_, a, _)| a.epoch as i64).collect();
        let peers: Vec<&str> = upserts.iter().map(|(_, a, _)| a.peer.as_str()).collect();
        let seen: Vec<i64> = upserts.iter().map(|(_, a, _)| a.last_seen_ns).collect();
        let stored: Vec<i64> = upserts.iter().map(|(_, _, n)| *n as i64).collect();
        let dedup: Vec<i64> = upserts
            .iter()
            .map(|(_, a, _)| a.batches_deduplicated as i64)
            .collect();
        let resent: Vec<i64> = upserts
            .iter()
            .map(|(_, a, _)| a.batches_resent as i64)
            .collect();
        tx.execute(
            "INSERT INTO agents AS a (id, epoch, peer, last_seen_ns, readings_stored, \
               batches_deduplicated, batches_resent) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::bigint[], $7::bigint[]) \
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
               peer = CASE excluded.peer WHEN '' THEN a.peer ELSE excluded.peer END, \
               last_seen_ns = GREATEST(a.last_seen_ns, excluded.last_seen_ns), \
               readings_stored = a.readings_stored + excluded.readings_stored, \
               batches_deduplicated = a.batches_deduplicated + excluded.batches_deduplicated, \
               batches_resent = a.batches_resent + excluded.batches_resent",
            &[&ids, &epochs, &peers, &seen, &stored, &dedup, &resent],
        )
        .await
        .step("update agents")?;
    }
    tx.commit().await.step("commit")?;
    Ok(plan.report)
}

/// `committed_seq, dropped, last_seq` from column `first` on.
fn epoch_row(r: &tokio_postgres::Row, first: usize) -> EpochRow {
    let get = |i: usize| r.get::<_, i64>(first + i) as u64;
    EpochRow {
        committed_seq: get(0),
        dropped: get(1),
        last_seq: get(2),
    }
}
