//! The PostgreSQL commit log the exports read (`migrations/0003_exports.sql`).
//!
//! Write side ([`append`], in the merger's commit): when any export has a
//! cursor, the readings a commit stores are encoded ([`encode`]) into one
//! `export_log` row. Its id comes from a sequence under a transaction-level
//! advisory lock ([`LOG_LOCK`], one per schema) taken as the commit's last statement, so
//! ids follow commit order across every collector sharing the database
//! (the holder commits, and so becomes visible, before the next one draws
//! an id): a reader that has seen id N has seen every committed row below
//! N. The lock is the last one any commit takes, so it cannot deadlock with
//! the `epochs` row locks; it serialises only the append and the commit.
//!
//! Read side ([`PgLog`], [`PgLogConn`]): each export task has a connection
//! of its own, on the gRPC runtime (async), and runs only while that
//! connection holds the export's session advisory lock ([`PgLogConn::hold`]):
//! one collector runs each export; the others try again every few seconds
//! and take over when the holder's connection ends (a crash closes it).
//! Cursor saves go through the same connection, so a collector that lost
//! the lock cannot save a cursor. The holder trims what every cursor has
//! passed, [`TRIM_ROWS`] per statement.
//!
//! Owns the `export_log` and `export_cursors` tables of a PostgreSQL store.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls, Transaction};
use tracing::{debug, warn};

mod codec;

use codec::{FORMAT, decode, encode, encode_batch};

use super::connection::{CONNECT_TIMEOUT, Fail, Step};
use super::read::series_row;
use crate::model::SeriesKey;
use crate::store::BatchWrite;
use crate::store::export::{CursorRow, LogBatch, Origin, Pending, TRIM_ROWS};
use crate::store::labels::SERIES_COLUMNS;
use crate::store::read::ReadError;
use crate::store::redact;

/// Takes the transaction-level advisory lock that orders log ids. Its key
/// names the schema: advisory locks are per database, and schemas of one
/// database are separate stores (PostgreSQL's `hashtextextended`, stable
/// across versions since hash partitioning depends on it).
const LOG_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('tributary export log ' || current_schema(), 0))";
/// Tries the session advisory lock of export `$1` in this schema.
const EXPORT_LOCK: &str = "SELECT pg_try_advisory_lock(\
     hashtextextended('tributary export ' || current_schema() || ' ' || $1, 0))";
/// Longest one log call may take before its connection is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Log rows fetched per query while filling a page.
const READ_ROWS: i64 = 64;

/// Appends what a commit stores to the log, when any export has a cursor:
/// call as the last statement before `COMMIT` (it takes [`LOG_LOCK`]).
/// One row per commit, each agent batch with its identity (`codec.rs`).
pub(super) async fn append<'a>(
    tx: &Transaction<'_>,
    batches: impl Iterator<Item = &'a BatchWrite>,
) -> Result<(), Fail> {
    let mut batches = batches.filter(|b| !b.readings.is_empty()).peekable();
    if batches.peek().is_none() {
        return Ok(());
    }
    let on: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM export_cursors)", &[])
        .await
        .step("look for exports")?
        .get(0);
    if !on {
        return Ok(());
    }
    let mut data = vec![FORMAT];
    let (mut count, mut received) = (0i64, i64::MAX);
    for b in batches {
        let origin = Origin {
            agent: b.agent.to_string(),
            epoch: b.epoch,
            seq: b.seq,
        };
        // A batch is bounded far below 4 G readings by the wire's limits.
        let n = u32::try_from(b.readings.len()).unwrap_or(u32::MAX);
        encode_batch(&mut data, &origin, b.received_ns, n);
        for r in b.readings.iter().take(n as usize) {
            encode(&mut data, r.series_id, r.ts_ns, &r.value);
        }
        count += i64::from(n);
        received = received.min(b.received_ns);
    }
    tx.execute(LOG_LOCK, &[])
        .await
        .step("take the export log lock")?;
    tx.execute(
        "INSERT INTO export_log (id, received_ns, count, data) \
         VALUES (nextval('export_log_id'), $1, $2, $3)",
        &[&received, &count, &data],
    )
    .await
    .step("append to the export log")?;
    Ok(())
}

/// The commit log of one PostgreSQL store, as the exports reach it.
#[derive(Debug, Clone)]
pub struct PgLog {
    config: std::sync::Arc<Config>,
    describe: String,
}

impl PgLog {
    /// The log of the database at `url` (nothing connects yet).
    pub fn new(url: &str) -> Result<PgLog, ReadError> {
        let describe = redact(url);
        let mut config: Config = url.parse().map_err(|cause| ReadError::Postgres {
            what: "parse URL",
            store: describe.clone(),
            cause,
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("tributary-collector export");
        // The server drops the session of a holder whose host vanished
        // without a FIN (and so its advisory lock) in about 30 s, not after
        // the OS default of hours: server-side keepalives. The client-side
        // ones below only notice a dead server.
        // Whatever options the URL has (a search_path), plus these.
        let keepalives = "-c tcp_keepalives_idle=15 -c tcp_keepalives_interval=5 \
                          -c tcp_keepalives_count=3";
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {keepalives}"),
            _ => keepalives.to_owned(),
        };
        config.options(&options);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        Ok(PgLog {
            config: std::sync::Arc::new(config),
            describe,
        })
    }

    fn err(&self, what: &'static str) -> impl Fn(tokio_postgres::Error) -> ReadError + '_ {
        move |cause| ReadError::Postgres {
            what,
            store: self.describe.clone(),
            cause,
        }
    }

    /// A connection of its own (its driver spawned on this runtime).
    pub async fn connect(&self) -> Result<PgLogConn, ReadError> {
        let connecting = self.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(CALL_TIMEOUT, connecting)
            .await
            .map_err(|_| ReadError::Setup {
                store: self.describe.clone(),
                message: format!("connect: no answer within {CALL_TIMEOUT:?}"),
            })?
            .map_err(self.err("connect for an export"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "export's postgres connection ended");
            }
        });
        Ok(PgLogConn {
            client,
            log: self.clone(),
            broken: false,
        })
    }

    /// Creates the cursors of `names` (at the log's end) and removes those
    /// of other names, logging each (collectors sharing a database are to
    /// share their `[[exports]]`). No names: touches nothing, as other
    /// collectors may run exports; warns when cursors exist.
    pub async fn setup(&self, names: &[String]) -> Result<(), ReadError> {
        let mut conn = self.connect().await?;
        let err = self.err("set up the export log");
        let client = &mut conn.client;
        if names.is_empty() {
            let rows = client
                .query(
                    "SELECT c.name, (SELECT COALESCE(SUM(count), 0)::bigint FROM export_log \
                     WHERE id > c.position) FROM export_cursors c ORDER BY c.name",
                    &[],
                )
                .await
                .map_err(&err)?;
            for r in rows {
                let (name, pending): (String, i64) = (r.get(0), r.get(1));
                warn!(export = %name, pending, store = %self.describe, "this database has an export cursor, but this collector has no [[exports]]: another collector sharing the database may run it; if none does, the export log keeps growing");
            }
            return Ok(());
        }
        let tx = client.transaction().await.map_err(&err)?;
        tx.execute(LOG_LOCK, &[]).await.map_err(&err)?;
        let removed = tx
            .query(
                "DELETE FROM export_cursors WHERE name <> ALL($1) RETURNING name, position",
                &[&names],
            )
            .await
            .map_err(&err)?;
        for r in removed {
            let (name, position): (String, i64) = (r.get(0), r.get(1));
            warn!(export = %name, position, "export no longer configured: its cursor is removed (a collector sharing this database with it configured creates it again at the log's end)");
        }
        let end: i64 = tx
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM export_log_id",
                &[],
            )
            .await
            .map_err(&err)?
            .get(0);
        tx.execute(
            "INSERT INTO export_cursors (name, position) SELECT n, $2 FROM unnest($1::text[]) n \
             ON CONFLICT (name) DO NOTHING",
            &[&names, &end],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(())
    }

    /// Every cursor, with what is pending after it (the `exports`
    /// subcommand; reads only), over a connection of its own.
    pub async fn status(&self) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        self.connect().await?.status().await
    }

    /// A connection for reading the cursors' status again and again
    /// (ListExports, the fleet page): named `tributary-collector exports
    /// view` in `pg_stat_activity`, apart from the export tasks'.
    pub async fn connect_view(&self) -> Result<PgLogConn, ReadError> {
        let mut view = self.clone();
        let mut config = (*self.config).clone();
        config.application_name(VIEW_APPLICATION);
        view.config = std::sync::Arc::new(config);
        view.connect().await
    }
}

/// `application_name` of [`PgLog::connect_view`]'s connection.
pub const VIEW_APPLICATION: &str = "tributary-collector exports view";

/// One export task's connection to a PostgreSQL log.
#[derive(Debug)]
pub struct PgLogConn {
    client: Client,
    log: PgLog,
    /// A call timed out: the connection may be wedged; connect again.
    broken: bool,
}

impl PgLogConn {
    /// Every cursor, with what is pending after it (reads only).
    pub async fn status(&mut self) -> Result<Vec<(CursorRow, Pending)>, ReadError> {
        let exists: bool = self
            .bounded("list export cursors", async |c| {
                c.query_one("SELECT to_regclass('export_cursors') IS NOT NULL", &[])
                    .await
            })
            .await?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = self
            .bounded("list export cursors", async |c| {
                c.query(
                    "SELECT name, position, inflight, sent, dropped, skipped, retried, last_error \
                     FROM export_cursors ORDER BY name",
                    &[],
                )
                .await
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let c = cursor_row(&r);
            let p = self.pending(c.position).await?;
            out.push((c, p));
        }
        Ok(out)
    }

    /// True when the connection is gone (and with it any lock it held).
    pub fn lost(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// Runs one call, bounded by [`CALL_TIMEOUT`].
    async fn bounded<T>(
        &mut self,
        what: &'static str,
        call: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, ReadError> {
        let answer = tokio::time::timeout(CALL_TIMEOUT, call(&self.client)).await;
        match answer {
            Ok(r) => r.map_err(self.log.err(what)),
            Err(_) => {
                self.broken = true;
                Err(ReadError::Setup {
                    store: self.log.describe.clone(),
                    message: format!("{what}: no answer within {CALL_TIMEOUT:?}"),
                })
            }
        }
    }

    /// The value of the server setting `name` on this connection (tests
    /// and diagnostics).
    pub async fn setting(&mut self, name: &str) -> Result<String, ReadError> {
        self.bounded("read a server setting", async |c| {
            Ok(c.query_one("SELECT current_setting($1)", &[&name])
                .await?
                .get(0))
        })
        .await
    }

    /// Tries to become the one runner of export `name` (a session advisory
    /// lock, released when this connection ends).
    pub async fn hold(&mut self, name: &str) -> Result<bool, ReadError> {
        self.bounded("take an export's lock", async |c| {
            Ok(c.query_one(EXPORT_LOCK, &[&name]).await?.get(0))
        })
        .await
    }

    pub async fn cursor(&mut self, name: &str) -> Result<CursorRow, ReadError> {
        let row = self
            .bounded("read an export cursor", async |c| {
                c.query_opt(
                    "SELECT name, position, inflight, sent, dropped, skipped, retried, \
                     last_error FROM export_cursors WHERE name = $1",
                    &[&name],
                )
                .await
            })
            .await?;
        row.map(|r| cursor_row(&r)).ok_or_else(|| ReadError::Setup {
            store: self.log.describe.clone(),
            message: format!("export {name:?} has no cursor"),
        })
    }

    /// Saves a cursor (position and counters); an error when its row is
    /// gone (`setup` without this export).
    pub async fn save(&mut self, c: &CursorRow) -> Result<(), ReadError> {
        let (sent, dropped, skipped, retried) = (
            c.sent as i64,
            c.dropped as i64,
            c.skipped as i64,
            c.retried as i64,
        );
        let n = self
            .bounded("save an export cursor", async |cl| {
                cl.execute(
                    "UPDATE export_cursors SET position = $2, sent = $3, dropped = $4, \
                 skipped = $5, retried = $6, last_error = $7, inflight = $8 WHERE name = $1",
                    &[
                        &c.name,
                        &c.position,
                        &sent,
                        &dropped,
                        &skipped,
                        &retried,
                        &c.last_error,
                        &c.inflight,
                    ],
                )
                .await
            })
            .await?;
        if n != 1 {
            return Err(ReadError::CursorRemoved {
                name: c.name.clone(),
            });
        }
        Ok(())
    }

    /// Committed rows after `position`, in commit order, up to about
    /// `max_readings` readings (at least one row).
    pub async fn read(
        &mut self,
        position: i64,
        max_readings: usize,
    ) -> Result<Vec<LogBatch>, ReadError> {
        let mut out = Vec::new();
        let (mut after, mut total) = (position, 0usize);
        while total < max_readings {
            let rows = self
                .bounded("read the export log", async |c| {
                    c.query(
                        "SELECT id, received_ns, data FROM export_log WHERE id > $1 \
                         ORDER BY id LIMIT $2",
                        &[&after, &READ_ROWS],
                    )
                    .await
                })
                .await?;
            let full = rows.len() as i64 == READ_ROWS;
            for r in rows {
                let (id, received_ns, data): (i64, i64, &[u8]) = (r.get(0), r.get(1), r.get(2));
                let groups = decode(data).map_err(|reason| ReadError::Setup {
                    store: self.log.describe.clone(),
                    message: format!("export_log row {id}: {reason}"),
                })?;
                after = id;
                // A row is one commit: each of its agent batches is a
                // `LogBatch` at the row's position.
                for g in groups {
                    total += g.readings.len();
                    out.push(LogBatch {
                        position: id,
                        received_ns: g.received_ns.unwrap_or(received_ns),
                        readings: g.readings,
                        origin: g.origin,
                    });
                }
                if total >= max_readings {
                    break;
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    pub async fn pending(&mut self, position: i64) -> Result<Pending, ReadError> {
        let r = self
            .bounded("measure export lag", async |c| {
                c.query_one(
                    "SELECT COALESCE(SUM(count), 0)::bigint, MIN(received_ns), \
                     COALESCE(MAX(id), $1) FROM export_log WHERE id > $1",
                    &[&position],
                )
                .await
            })
            .await?;
        Ok(Pending {
            readings: r.get::<_, i64>(0) as u64,
            oldest_received_ns: r.get(1),
            end: r.get(2),
        })
    }

    /// The rows after `position` up to the last one received before
    /// `before_ns`: that one's position and their readings (what `max_lag`
    /// skips).
    pub async fn older_than(
        &mut self,
        position: i64,
        before_ns: i64,
    ) -> Result<Option<(i64, u64)>, ReadError> {
        let r = self
            .bounded("find rows past max_lag", async |c| {
                c.query_one(
                    "WITH old AS (SELECT MAX(id) AS m FROM export_log \
                       WHERE id > $1 AND received_ns < $2) \
                     SELECT old.m, (SELECT COALESCE(SUM(count), 0)::bigint FROM export_log \
                       WHERE id > $1 AND id <= old.m) FROM old",
                    &[&position, &before_ns],
                )
                .await
            })
            .await?;
        let end: Option<i64> = r.get(0);
        let count: Option<i64> = r.get(1);
        Ok(end.map(|e| (e, count.unwrap_or(0) as u64)))
    }

    pub async fn series(&mut self, ids: &[i64]) -> Result<Vec<(i64, SeriesKey)>, ReadError> {
        let rows = self
            .bounded("read series for an export", async |c| {
                c.query(
                    &format!("SELECT {SERIES_COLUMNS} FROM series WHERE id = ANY($1)"),
                    &[&ids],
                )
                .await
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let meta = series_row(&r)
                .into_meta()
                .map_err(|labels| ReadError::Labels {
                    store: self.log.describe.clone(),
                    labels,
                })?;
            out.push((meta.id, meta.key));
        }
        Ok(out)
    }

    /// Deletes up to [`TRIM_ROWS`] rows every cursor has passed.
    pub async fn trim(&mut self) -> Result<u64, ReadError> {
        self.bounded("trim the export log", async |c| {
            c.execute(
                "DELETE FROM export_log WHERE id IN (SELECT id FROM export_log \
                 WHERE id <= (SELECT MIN(position) FROM export_cursors) ORDER BY id LIMIT $1)",
                &[&TRIM_ROWS],
            )
            .await
        })
        .await
    }
}

fn cursor_row(r: &tokio_postgres::Row) -> CursorRow {
    CursorRow {
        name: r.get(0),
        position: r.get(1),
        inflight: r.get(2),
        sent: r.get::<_, i64>(3) as u64,
        dropped: r.get::<_, i64>(4) as u64,
        skipped: r.get::<_, i64>(5) as u64,
        retried: r.get::<_, i64>(6) as u64,
        last_error: r.get(7),
    }
}
