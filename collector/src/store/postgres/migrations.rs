//! The PostgreSQL schema: versioned migrations (`migrations/NNNN_*.sql`),
//! applied in order, each once, in one transaction under an advisory lock
//! (so two collectors starting together do not race); the first one makes
//! `readings` a TimescaleDB hypertable when the extension can be had, the
//! seventh makes `readings_chunks` one on `ts_max` when `readings` is one.

use tokio_postgres::Client;
use tracing::{info, warn};

use super::connection::{Fail, Step};

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial schema",
        include_str!("migrations/0001_init.sql"),
    ),
    (
        2,
        "the tributary_readings view for SQL tools",
        include_str!("migrations/0002_grafana_view.sql"),
    ),
    (
        3,
        "the commit log and cursors of the exports",
        include_str!("migrations/0003_exports.sql"),
    ),
    (
        4,
        "agents.collector: the collector of each agent's newest stream",
        include_str!("migrations/0004_collector_name.sql"),
    ),
    (
        5,
        "u64 readings: kind 6, and the tributary_readings view reads them",
        include_str!("migrations/0005_u64.sql"),
    ),
    (
        6,
        "epochs.committed_ranges: the committed sequences above committed_seq",
        include_str!("migrations/0006_committed_ranges.sql"),
    ),
    (
        7,
        "readings_chunks: a row per series and commit, the points as arrays",
        include_str!("migrations/0007_readings_chunks.sql"),
    ),
];

/// Key of the advisory lock held while migrating ("trib").
const MIGRATION_LOCK: i64 = 0x7472_6962;
/// TimescaleDB chunk size for `readings` and `readings_chunks`: one day of
/// device time, in ns.
const CHUNK_NS: i64 = 86_400_000_000_000;

/// How `readings` is laid out, decided by the first migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A plain table; retention deletes rows.
    Table,
    /// A TimescaleDB hypertable; retention drops whole chunks.
    Hypertable,
}

/// Applies pending migrations in one transaction under an advisory lock and
/// returns the layout of `readings`.
pub(super) async fn migrate(c: &mut Client) -> Result<Layout, Fail> {
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
    // Each migration is applied unless recorded (not "every one above the
    // newest recorded"), so a number filled in later is applied too.
    let applied: Vec<i32> = tx
        .query("SELECT version FROM tributary_migrations", &[])
        .await
        .step("read schema version")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let current = applied.iter().copied().max().unwrap_or(0);
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        return Err(Fail::Invalid(
            "migrate",
            format!(
                "the database is at schema version {current}, newer than this collector's {latest}"
            ),
        ));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
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
        if *version == 7 {
            chunks_time_layout(&tx).await?;
            if current > 0 {
                // An upgrade: dashboards written for the view before it may
                // filter its ts_ns, which no longer reaches an index for
                // new readings.
                warn!(
                    "readings are now stored as a row per series and commit (schema 7):                      a filter on tributary_readings.ts_ns no longer uses an index for new                      readings; Grafana panels over a time range should read                      tributary_readings_between($__unixEpochNanoFrom(), $__unixEpochNanoTo())                      (README \"Grafana over PostgreSQL\")"
                );
            }
        }
        tx.execute(
            "INSERT INTO tributary_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .step("record the migration")?;
        info!(version, name, "applied postgres migration");
    }
    let layout = stored_layout(&tx).await?;
    tx.commit().await.step("commit migration")?;
    Ok(match layout.as_deref() {
        Some("hypertable") => Layout::Hypertable,
        _ => Layout::Table,
    })
}

/// `tributary_meta.readings_layout`, as migration 1 recorded it.
async fn stored_layout(tx: &tokio_postgres::Transaction<'_>) -> Result<Option<String>, Fail> {
    Ok(tx
        .query_opt(
            "SELECT value FROM tributary_meta WHERE key = 'readings_layout'",
            &[],
        )
        .await
        .step("read the layout")?
        .map(|r| r.get(0)))
}

/// Gives `readings_chunks` the time layout `readings` has: a hypertable on
/// `ts_max` (retention drops whole TimescaleDB chunks, each holding the rows
/// whose newest point falls in its day) next to a `readings` hypertable, a
/// BRIN index on `ts_max` (for retention's deletes) next to a plain table.
/// Untested here: TimescaleDB is not installed on the test machine.
async fn chunks_time_layout(tx: &tokio_postgres::Transaction<'_>) -> Result<(), Fail> {
    let layout = stored_layout(tx).await?;
    let sql = if layout.as_deref() == Some("hypertable") {
        format!(
            "SELECT create_hypertable('readings_chunks', 'ts_max', \
             chunk_time_interval => {CHUNK_NS}::bigint)"
        )
    } else {
        "CREATE INDEX readings_chunks_ts ON readings_chunks USING brin (ts_max)".to_owned()
    };
    tx.batch_execute(&sql)
        .await
        .step("give readings_chunks its time layout")
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
