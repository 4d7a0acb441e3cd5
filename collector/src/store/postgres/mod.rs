//! The PostgreSQL backend (`postgres://...`), the scale-out path: several
//! collectors may share one database. The write side ([`PgStore`]) is one
//! connection, owned by the merger, shared by nothing; the read side
//! ([`PgReader`]) a small pool of read-only connections for Query.
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
//!   skips batches whose sequence the locked committed set (`committed_seq`
//!   and `committed_ranges`) holds, writes the rest with binary COPY (a
//!   `readings_chunks` row per series: `chunks.rs`), advances the
//!   sequences and adds to the agent counters, then commits.
//! - A call that fails on a broken connection drops it; the next call (the
//!   merger retries) connects again. Every call is bounded by a timeout.
//!
//! - `connection.rs`: the store's runtime and connection, [`PgStore`]'s
//!   `call` (connect if needed, bound by a timeout, drop a broken
//!   connection); `migrations.rs` (+ `migrations/NNNN_*.sql`): the schema;
//!   `write.rs`: load, resolve series, commit; `chunks.rs`: a commit's
//!   readings as `readings_chunks` rows; `retention.rs`: removing old
//!   readings; `read.rs`: [`PgReader`]; `export_log.rs`: the exports'
//!   commit log, appended by `commit`, read by [`PgLog`].
//!
//! Owns the database's schema; uses the store contract (`super`), never
//! the SQLite backend.

use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_postgres::{Client, Config};
use tracing::info;

use super::{Durability, StoreError, redact};

mod chunks;
mod connection;
mod export_log;
mod migrations;
mod read;
mod retention;
mod write;

#[cfg(test)]
mod tests;

pub use export_log::{PgLog, PgLogConn, VIEW_APPLICATION};
pub use migrations::Layout;
pub use read::PgReader;

use connection::CONNECT_TIMEOUT;
use migrations::migrate;

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
        let mut config: Config = url.parse().map_err(|cause| StoreError::Postgres {
            store: describe.clone(),
            what: "parse URL",
            cause,
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
            .map_err(|cause| StoreError::Runtime {
                store: describe.clone(),
                cause,
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
}
