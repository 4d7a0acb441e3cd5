//! [`PgStore`]'s writes and the reads the merger needs: `load` (delivery
//! state and series counts at start), `load_series`, `series_count`, `epoch`, `resolve_series` (ids, inserting
//! missing series) and `commit`: insert missing `epochs` rows, lock the
//! rows of every (agent, epoch) of the set in sorted order (`SELECT ... FOR
//! UPDATE`), skip batches whose sequence the locked committed set holds
//! (`committed_seq` and `committed_ranges`: [`Plan`]), write the rest with
//! binary COPY as `readings_chunks` rows (`chunks.rs`), store the grown sets, add
//! to the agent counters, append to the export log when exports exist
//! (`export_log.rs`), commit.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_stream::StreamExt;

use super::PgStore;
use super::chunks::{COPY_CHUNKS, chunks};
use super::connection::{Fail, Step};
use super::read::series_row;
use crate::model::SeriesKey;
use crate::store::labels::{SERIES_COLUMNS, SeriesRow, labels_json};
use crate::store::{CommitReport, EpochRow, Loaded, Plan, StoreError, StoredEpoch, WriteSet};

/// The ids of the keys given as five arrays (agent, device, metric, labels
/// JSON, unit): rows of (1-based position, id) for the keys stored.
const SERIES_IDS_OF_KEYS: &str = "SELECT u.i, s.id FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
       WITH ORDINALITY AS u(agent, device, metric, labels, unit, i) \
     JOIN series s ON s.agent = u.agent AND s.device = u.device \
       AND s.metric = u.metric AND md5(s.labels) = md5(u.labels) \
       AND s.labels = u.labels AND s.unit = u.unit";

/// Series keys as the five arrays [`SERIES_IDS_OF_KEYS`] and the insert
/// of `resolve_series` take.
struct KeyArrays<'a> {
    agents: Vec<&'a str>,
    devices: Vec<&'a str>,
    metrics: Vec<&'a str>,
    labels: Vec<String>,
    units: Vec<&'a str>,
}

impl<'a> KeyArrays<'a> {
    fn new(keys: &'a [SeriesKey]) -> Self {
        let col = |f: fn(&SeriesKey) -> &str| keys.iter().map(f).collect::<Vec<&str>>();
        KeyArrays {
            agents: col(|k| &k.agent),
            devices: col(|k| &k.device),
            metrics: col(|k| &k.metric),
            labels: keys.iter().map(labels_json).collect(),
            units: col(|k| &k.unit),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.agents,
            &self.devices,
            &self.metrics,
            &self.labels,
            &self.units,
        ]
    }
}

/// Rows of [`SERIES_IDS_OF_KEYS`] as the id of each of `n` keys, in order.
fn ids_in_order(n: usize, rows: &[tokio_postgres::Row]) -> Vec<Option<i64>> {
    let mut ids = vec![None; n];
    for r in rows {
        let i: i64 = r.get(0);
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| ids.get_mut(i)) {
            *slot = Some(r.get(1));
        }
    }
    ids
}

impl PgStore {
    /// Every series and every epoch's delivery state.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        self.call(async |c: &mut Client| {
            let mut loaded = Loaded::default();
            let rows = c
                .query("SELECT agent, count(*) FROM series GROUP BY agent", &[])
                .await
                .step("count series per agent")?;
            for r in rows {
                let (agent, n): (String, i64) = (r.get(0), r.get(1));
                loaded
                    .series_per_agent
                    .insert(Arc::from(agent), u64::try_from(n).unwrap_or(0));
            }
            let rows = c
                .query(
                    "SELECT agent, epoch, committed_seq, dropped, last_seq, committed_ranges \
                     FROM epochs",
                    &[],
                )
                .await
                .step("load epochs")?;
            for r in rows {
                let agent: String = r.get(0);
                let epoch = r.get::<_, i64>(1) as u64;
                match stored_epoch(&r, 2).decode(&agent, epoch) {
                    Ok(row) => {
                        loaded.epochs.insert((Arc::from(agent), epoch), row);
                    }
                    Err(m) => loaded.unreadable_epochs.push(m),
                }
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
                    "SELECT committed_seq, dropped, last_seq, committed_ranges FROM epochs \
                     WHERE agent = $1 AND epoch = $2",
                    &[&agent, &(epoch as i64)],
                )
                .await
                .step("read epoch")?;
            row.map(|r| epoch_row(&r, 0, agent, epoch)).transpose()
        })
    }

    /// Calls `each` with every series row (streamed from the server, so
    /// only one row is held at a time).
    pub(crate) fn load_series(
        &mut self,
        each: &mut dyn FnMut(SeriesRow),
    ) -> Result<(), StoreError> {
        self.call(async |c: &mut Client| {
            let rows = c
                .query_raw(
                    &format!("SELECT {SERIES_COLUMNS} FROM series"),
                    std::iter::empty::<i64>(),
                )
                .await
                .step("load series")?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                each(series_row(&row.step("load series")?));
            }
            Ok(())
        })
    }

    /// Series stored for `agent`, by any collector sharing the database.
    pub fn series_count(&mut self, agent: &str) -> Result<u64, StoreError> {
        self.call(async |c: &mut Client| {
            let row = c
                .query_one("SELECT count(*) FROM series WHERE agent = $1", &[&agent])
                .await
                .step("count series of an agent")?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    /// Ids of `keys` that are stored, without creating any.
    pub fn lookup_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<Option<i64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let arrays = KeyArrays::new(keys);
        self.call(async |c: &mut Client| {
            let params = arrays.params();
            let rows = c
                .query(SERIES_IDS_OF_KEYS, &params)
                .await
                .step("look up series ids")?;
            Ok(ids_in_order(keys.len(), &rows))
        })
    }

    /// The stored rows of the series `ids` (those that exist).
    pub(crate) fn series_by_ids(&mut self, ids: &[i64]) -> Result<Vec<SeriesRow>, StoreError> {
        self.call(async |c: &mut Client| {
            let rows = c
                .query(
                    &format!("SELECT {SERIES_COLUMNS} FROM series WHERE id = ANY($1)"),
                    &[&ids],
                )
                .await
                .step("read series by id")?;
            Ok(rows.iter().map(series_row).collect())
        })
    }

    /// Ids of `keys` in order, inserting the missing ones (autocommit: a
    /// series row without readings is harmless, and it is durable before
    /// any reading that uses it can commit).
    pub fn resolve_series(&mut self, keys: &[SeriesKey]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let arrays = KeyArrays::new(keys);
        let ids = self.call(async |c: &mut Client| {
            let params = arrays.params();
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
                .query(SERIES_IDS_OF_KEYS, &params)
                .await
                .step("read series ids")?;
            let ids = ids_in_order(keys.len(), &rows);
            match ids.iter().position(Option::is_none) {
                Some(i) => Err(Fail::Invalid(
                    "resolve series",
                    format!("series {:?} neither inserted nor found", keys[i]),
                )),
                None => Ok(ids.into_iter().flatten().collect()),
            }
        })?;
        Ok(ids)
    }

    /// Writes `set` in one transaction, under the row locks of its epochs.
    pub fn commit(&mut self, set: &WriteSet) -> Result<CommitReport, StoreError> {
        self.call(async |c: &mut Client| commit(c, set).await)
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
                "SELECT e.agent, e.epoch, e.committed_seq, e.dropped, e.last_seq, \
                   e.committed_ranges \
                 FROM epochs e JOIN unnest($1::text[], $2::bigint[]) AS k(agent, epoch) \
                   ON e.agent = k.agent AND e.epoch = k.epoch \
                 ORDER BY e.agent COLLATE \"C\", e.epoch FOR UPDATE OF e",
                &[&key_agents, &key_epochs],
            )
            .await
            .step("lock epochs")?;
        for r in rows {
            let agent: String = r.get(0);
            let epoch = r.get::<_, i64>(1) as u64;
            let row = epoch_row(&r, 2, &agent, epoch)?;
            stored.insert((Arc::from(agent), epoch), row);
        }
    }
    let plan = Plan::new(set, &stored);

    let readings = set
        .batches
        .iter()
        .zip(&plan.write)
        .filter(|(_, w)| **w)
        .flat_map(|(b, _)| b.readings.iter().map(move |r| (b.received_ns, r)));
    let chunks = chunks(readings);
    if !chunks.is_empty() {
        let sink = tx.copy_in(COPY_CHUNKS).await.step("start copy")?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::INT2_ARRAY,
                Type::FLOAT8_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
            ],
        );
        let mut writer = std::pin::pin!(writer);
        for c in &chunks {
            let (ts_min, ts_max) = c.span();
            writer
                .as_mut()
                .write(&[
                    &c.series_id,
                    &ts_min,
                    &ts_max,
                    &c.ts_ns,
                    &c.received_ns,
                    &c.kind,
                    &c.v_f64,
                    &c.v_i64,
                    &c.v_text,
                ])
                .await
                .step("copy reading chunks")?;
        }
        writer.finish().await.step("finish copy")?;
    }

    if !plan.report.epochs.is_empty() {
        let n = plan.report.epochs.len();
        let (mut agents, mut epochs, mut committed, mut dropped, mut last, mut ranges) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (a, e, row) in &plan.report.epochs {
            agents.push(a.as_ref());
            epochs.push(*e as i64);
            committed.push(row.committed.mark() as i64);
            dropped.push(row.dropped as i64);
            last.push(row.last_seq as i64);
            ranges.push(row.committed.encode_ranges());
        }
        tx.execute(
            "UPDATE epochs AS e SET committed_seq = u.c, dropped = u.d, last_seq = u.l, \
               committed_ranges = u.r \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
               $6::bytea[]) AS u(agent, epoch, c, d, l, r) \
             WHERE e.agent = u.agent AND e.epoch = u.epoch",
            &[&agents, &epochs, &committed, &dropped, &last, &ranges],
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
        let collectors: Vec<&str> = upserts
            .iter()
            .map(|(_, a, _)| a.collector.as_str())
            .collect();
        tx.execute(
            "INSERT INTO agents AS a (id, epoch, peer, last_seen_ns, readings_stored, \
               batches_deduplicated, batches_resent, collector) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], \
               $5::bigint[], $6::bigint[], $7::bigint[], $8::text[]) \
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
               peer = CASE excluded.peer WHEN '' THEN a.peer ELSE excluded.peer END, \
               collector = CASE WHEN excluded.collector = '' \
                 OR excluded.last_seen_ns < a.last_seen_ns THEN a.collector \
                 ELSE excluded.collector END, \
               last_seen_ns = GREATEST(a.last_seen_ns, excluded.last_seen_ns), \
               readings_stored = a.readings_stored + excluded.readings_stored, \
               batches_deduplicated = a.batches_deduplicated + excluded.batches_deduplicated, \
               batches_resent = a.batches_resent + excluded.batches_resent",
            &[
                &ids,
                &epochs,
                &peers,
                &seen,
                &stored,
                &dedup,
                &resent,
                &collectors,
            ],
        )
        .await
        .step("update agents")?;
    }
    // Last: it takes the export log's lock, held until the commit.
    let written = set
        .batches
        .iter()
        .zip(&plan.write)
        .filter(|(_, w)| **w)
        .map(|(b, _)| b);
    super::export_log::append(&tx, written).await?;
    tx.commit().await.step("commit")?;
    Ok(plan.report)
}

/// `committed_seq, dropped, last_seq, committed_ranges` from column
/// `first` on, of the row of (agent, epoch).
fn epoch_row(
    r: &tokio_postgres::Row,
    first: usize,
    agent: &str,
    epoch: u64,
) -> Result<EpochRow, Fail> {
    stored_epoch(r, first)
        .decode(agent, epoch)
        .map_err(|m| Fail::Invalid(StoredEpoch::DECODING, m))
}

/// `committed_seq, dropped, last_seq, committed_ranges` from column
/// `first` on, not decoded.
fn stored_epoch(r: &tokio_postgres::Row, first: usize) -> StoredEpoch {
    let get = |i: usize| r.get::<_, i64>(first + i) as u64;
    StoredEpoch {
        committed_seq: get(0),
        dropped: get(1),
        last_seq: get(2),
        ranges: r.get(first + 3),
    }
}
