//! [`PgStore`]'s retention: a plain `readings` table loses rows in
//! bounded deletes; a hypertable drops whole chunks older than the cutoff.

use tokio_postgres::Client;

use super::connection::Step;
use super::{Layout, PgStore};
use crate::store::{RetainStep, StoreError};

impl PgStore {
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
