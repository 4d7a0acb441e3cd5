//! [`PgStore`]'s retention: on plain tables, bounded deletes of the
//! `readings` rows older than the cutoff and of the `readings_chunks` rows
//! whose newest point is (a chunk straddling the cutoff stays until all of
//! it is old); on hypertables, every TimescaleDB chunk of either table
//! entirely older is dropped.

use tokio_postgres::Client;

use super::connection::Step;
use super::{Layout, PgStore};
use crate::store::{RetainStep, StoreError};

impl PgStore {
    /// Deletes (plain tables) up to `max_rows` rows older than `cutoff_ns`
    /// (old `readings` rows first, then chunk rows, each counting as one
    /// row; `removed` counts the readings they held), or drops (hypertables)
    /// every TimescaleDB chunk entirely older.
    pub fn retain(&mut self, cutoff_ns: i64, max_rows: u64) -> Result<RetainStep, StoreError> {
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        match self.layout {
            Layout::Table => self.call(async |c: &mut Client| {
                let old_rows = c
                    .execute(
                        "DELETE FROM readings WHERE ctid = ANY(ARRAY(\
                         SELECT ctid FROM readings WHERE ts_ns < $1 LIMIT $2))",
                        &[&cutoff_ns, &limit],
                    )
                    .await
                    .step("delete old readings")?;
                let (mut rows, mut removed) = (old_rows, old_rows);
                if rows < max_rows {
                    let left = limit - i64::try_from(rows).unwrap_or(limit);
                    let chunks = c
                        .query_one(
                            "WITH d AS (DELETE FROM readings_chunks WHERE ctid = ANY(ARRAY(\
                               SELECT ctid FROM readings_chunks WHERE ts_max < $1 LIMIT $2)) \
                               RETURNING cardinality(ts_ns) AS n) \
                             SELECT count(*), COALESCE(sum(n), 0)::bigint FROM d",
                            &[&cutoff_ns, &left],
                        )
                        .await
                        .step("delete old reading chunks")?;
                    rows += u64::try_from(chunks.get::<_, i64>(0)).unwrap_or(0);
                    removed += u64::try_from(chunks.get::<_, i64>(1)).unwrap_or(0);
                }
                Ok(RetainStep {
                    removed,
                    done: rows < max_rows,
                })
            }),
            Layout::Hypertable => self.call(async |c: &mut Client| {
                let mut dropped = 0;
                for table in ["readings", "readings_chunks"] {
                    let row = c
                        .query_one(
                            "SELECT count(*) FROM drop_chunks($1::text::regclass, older_than => $2::bigint)",
                            &[&table, &cutoff_ns],
                        )
                        .await
                        .step("drop old chunks")?;
                    dropped += row.get::<_, i64>(0);
                }
                Ok(RetainStep {
                    removed: dropped as u64,
                    done: true,
                })
            }),
        }
    }
}
