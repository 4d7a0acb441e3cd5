//! Compaction of the SQLite store: readings go in as one `head` row per
//! committed batch (an append, whatever the series), and come out in
//! per-series `chunks` of up to [`CHUNK_POINTS`] points in device-time
//! order, which range queries find through the `(series_id, max_ts)` index.
//! Owned by [`super::sqlite::SqliteStore`], so it runs on the merger's
//! thread, between groups: nothing else writes.
//!
//! - **Pending points.** After each commit the store hands the batches to
//!   [`Compactor::add`], which appends every reading to its series' chunk
//!   encoder in memory. So the head is never read back on the write path;
//!   it is the durable copy, replayed into memory by [`Compactor::load`]
//!   when the store opens.
//! - **Rounds.** Once [`ROUND_POINTS`] points are pending, or the oldest has
//!   waited [`ROUND_AGE`], a round *seals* them: the head rows up to the
//!   newest id (`upto`) are now covered by the sealed encoders, and new
//!   commits collect separately. The round writes the sealed encoders as
//!   chunks, series by series, in steps of bounded work, one transaction
//!   each; each step also sets `compacted.head_id = upto` of the series it
//!   wrote. A reader therefore takes a head point of series `s` from row `h`
//!   only if `h > compacted.head_id` of `s`: in every snapshot each point is
//!   in exactly one place. The last steps delete the head rows up to `upto`.
//! - **Tiers.** A round writes one chunk per series, as large as that
//!   series' share of the round. A quiet series would pile up tiny chunks,
//!   so chunks below [`CHUNK_POINTS`] ("small") are merged by size tier
//!   (log₈ of the count): when a series has [`TIER_FANOUT`] small chunks of
//!   one tier, they become one chunk of a higher tier (or full chunks and a
//!   remainder). A point is rewritten at most about four times, and a series
//!   has at most 4 × 7 small chunks. Full chunks are never rewritten, only
//!   deleted by retention, which readers rely on (`sqlite_read`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::codec::{CodecError, Decoder, Encoder, RawPoint, RawValue};
use super::{BatchWrite, CompactStep};

/// Points of a full chunk. Chunks with fewer are "small" and get merged;
/// `schema.sql`'s partial index `chunks_small` spells the same number.
pub const CHUNK_POINTS: usize = 4096;

/// A round starts once this many points are pending...
const ROUND_POINTS: u64 = 1 << 20;

/// ...or once the oldest pending point has waited this long.
const ROUND_AGE: Duration = Duration::from_secs(10);

/// Most points one step writes into chunks (a series is never split, so a
/// step may exceed it by one series' worth).
const STEP_POINTS: u64 = 65_536;

/// Most chunk rows one step writes or deletes (same caveat).
const STEP_ROWS: u64 = 1024;

/// Head rows one step deletes at the end of a round.
const STEP_HEAD_ROWS: u64 = 512;

/// Small chunks of one tier a series may have; one more and they merge.
const TIER_FANOUT: usize = 8;

/// Pause after a failed step (the merger keeps committing meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a step or the replay failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("bad {table} row {id}: {source}")]
    Blob {
        table: &'static str,
        id: i64,
        #[source]
        source: CodecError,
    },
}

fn bad(table: &'static str, id: i64) -> impl Fn(CodecError) -> CompactError {
    move |source| CompactError::Blob { table, id, source }
}

/// Hasher for series ids (small dense integers): one multiply, no SipHash
/// on the per-reading path.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type SeriesMap<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

/// Pending points of one series, as chunk encoders of at most
/// [`CHUNK_POINTS`] points each.
#[derive(Default)]
struct Pending {
    chunks: Vec<Encoder>,
}

impl Pending {
    #[inline]
    fn push(&mut self, ts_ns: i64, received_ns: i64, value: RawValue<'_>) {
        match self.chunks.last_mut() {
            Some(e) if e.len() < CHUNK_POINTS => e.push(0, ts_ns, received_ns, value),
            _ => {
                let mut e = Encoder::chunk();
                e.push(0, ts_ns, received_ns, value);
                self.chunks.push(e);
            }
        }
    }
}

/// A small chunk of a series, as the compactor remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Small {
    id: i64,
    count: usize,
}

/// log₈ of a small chunk's count: 1–7 → 0, 8–63 → 1, 64–511 → 2,
/// 512–4095 → 3. Merging [`TIER_FANOUT`] chunks of a tier always gives a
/// higher one.
fn tier(count: usize) -> u32 {
    count.max(1).ilog2() / 3
}

/// A round under way.
struct Round {
    /// Head rows up to this id are covered by `series` (or were compacted
    /// before).
    upto: i64,
    /// Sealed pending points, by series id.
    series: Vec<(i64, Pending)>,
    /// First entry of `series` not yet written.
    next: usize,
}

/// The compaction state. Not `Sync`; owned by the store, used by the merger.
pub struct Compactor {
    pending: SeriesMap<Pending>,
    pending_points: u64,
    pending_since: Option<Instant>,
    /// Oldest device time among the pending points.
    pending_min_ts: i64,
    round: Option<Round>,
    /// Small chunks per series, oldest first (ids grow).
    small: SeriesMap<Vec<Small>>,
    next_head_id: i64,
    next_chunk_id: i64,
    retry_at: Option<Instant>,
    /// Work of one step: points and chunk rows ([`STEP_POINTS`],
    /// [`STEP_ROWS`]; tests make them tiny).
    budget: (u64, u64),
}

impl Compactor {
    /// Reads the compaction state and replays the head: every head point
    /// not yet in a chunk is pending again.
    pub fn load(conn: &Connection) -> Result<Compactor, CompactError> {
        let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let max_head = one("SELECT COALESCE(MAX(id), 0) FROM head")?;
        let max_mark = one("SELECT COALESCE(MAX(head_id), 0) FROM compacted")?;
        let max_chunk = one("SELECT COALESCE(MAX(id), 0) FROM chunks")?;
        let noted_chunk: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'next_chunk_id'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut c = Compactor {
            pending: SeriesMap::default(),
            pending_points: 0,
            pending_since: None,
            pending_min_ts: i64::MAX,
            round: None,
            small: SeriesMap::default(),
            // Never reuse an id: a reader compares head ids with marks, and
            // fetches full chunks by id after its snapshot.
            next_head_id: max_head.max(max_mark) + 1,
            next_chunk_id: (max_chunk + 1).max(noted_chunk),
            retry_at: None,
            budget: (STEP_POINTS, STEP_ROWS),
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT series_id, id, count FROM chunks WHERE count < {CHUNK_POINTS} ORDER BY id"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let count = usize::try_from(r.get::<_, i64>(2)?).unwrap_or(0);
            c.small.entry(r.get(0)?).or_default().push(Small {
                id: r.get(1)?,
                count,
            });
        }
        let mut marks: SeriesMap<i64> = SeriesMap::default();
        let mut stmt = conn.prepare("SELECT series_id, head_id FROM compacted")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            marks.insert(r.get(0)?, r.get(1)?);
        }
        let mut stmt = conn.prepare("SELECT id, received_ns, data FROM head ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let received_ns: i64 = r.get(1)?;
            let blob: Vec<u8> = r.get(2)?;
            let mut d = Decoder::new(&blob, 0, received_ns).map_err(bad("head", id))?;
            while let Some(p) = d.next_point().map_err(bad("head", id))? {
                if id > marks.get(&p.series).copied().unwrap_or(0) {
                    c.pending
                        .entry(p.series)
                        .or_default()
                        .push(p.ts_ns, p.received_ns, p.value);
                    c.pending_points += 1;
                    c.pending_min_ts = c.pending_min_ts.min(p.ts_ns);
                }
            }
        }
        if c.pending_points > 0 {
            c.pending_since = Some(Instant::now());
        }
        Ok(c)
    }

    /// The id for the next head row (ids only grow, even across failed
    /// transactions).
    pub fn next_head_id(&mut self) -> i64 {
        let id = self.next_head_id;
        self.next_head_id += 1;
        id
    }

    /// Makes a committed batch's readings pending. Call only after the
    /// commit that stored its head row succeeded.
    pub fn add(&mut self, b: &BatchWrite) {
        for r in &b.readings {
            self.pending.entry(r.series_id).or_default().push(
                r.ts_ns,
                b.received_ns,
                RawValue::of(&r.value),
            );
            self.pending_min_ts = self.pending_min_ts.min(r.ts_ns);
        }
        if !b.readings.is_empty() {
            self.pending_points += b.readings.len() as u64;
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether a step has work: a round is under way or one is due.
    pub fn due(&self) -> bool {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        self.round.is_some()
            || self.pending_points >= ROUND_POINTS
            || self.pending_since.is_some_and(|t| t.elapsed() >= ROUND_AGE)
    }

    /// Starts a round now if anything is pending, due or not (tests, tools).
    pub fn start_round(&mut self) {
        if self.round.is_none() && self.pending_points > 0 {
            self.seal();
        }
    }

    /// Whether a round is under way.
    pub fn in_round(&self) -> bool {
        self.round.is_some()
    }

    /// Whether a pending point is older than `ts_ns` (device time).
    pub fn pending_before(&self, ts_ns: i64) -> bool {
        self.pending_points > 0 && self.pending_min_ts < ts_ns
    }

    /// A small chunk now holds `count` points (retention trimmed it).
    pub fn set_count(&mut self, series: i64, id: i64, count: usize) {
        if let Some(c) = self
            .small
            .get_mut(&series)
            .and_then(|list| list.iter_mut().find(|c| c.id == id))
        {
            c.count = count;
        }
    }

    /// Sets the work of one step (tests).
    #[cfg(test)]
    pub fn set_budget(&mut self, points: u64, rows: u64) {
        self.budget = (points, rows);
    }

    /// A small chunk was deleted (retention).
    pub fn forget(&mut self, series: i64, id: i64) {
        if let Some(list) = self.small.get_mut(&series) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                self.small.remove(&series);
            }
        }
    }

    fn seal(&mut self) {
        let mut series: Vec<(i64, Pending)> = self.pending.drain().collect();
        // By id: chunk index inserts land in order.
        series.sort_unstable_by_key(|(id, _)| *id);
        self.round = Some(Round {
            upto: self.next_head_id - 1,
            series,
            next: 0,
        });
        self.pending_points = 0;
        self.pending_since = None;
        self.pending_min_ts = i64::MAX;
    }

    /// One bounded step, in one transaction: starts a round if one is due,
    /// writes the next series of the round, and at its end deletes the
    /// covered head rows. Does nothing when nothing is due. After an error
    /// nothing of the step is stored, and steps pause for a moment.
    pub fn step(&mut self, conn: &mut Connection) -> Result<CompactStep, CompactError> {
        if self.round.is_none() {
            if !self.due() {
                return Ok(CompactStep::default());
            }
            self.seal();
        }
        let result = self.step_in_round(conn);
        self.retry_at = result.is_err().then(|| Instant::now() + RETRY_AFTER);
        result
    }

    fn step_in_round(&mut self, conn: &mut Connection) -> Result<CompactStep, CompactError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(CompactStep::default());
        };
        let start = round.next;
        let mut work = Work {
            budget: self.budget,
            next_chunk_id: self.next_chunk_id,
            changed: Vec::new(),
            step: CompactStep::default(),
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = work
            .run(&tx, round, &self.small, self.next_chunk_id)
            .and_then(|done| {
                tx.commit()?;
                Ok(done)
            });
        let done = match outcome {
            Ok(done) => done,
            Err(e) => {
                round.next = start;
                return Err(e);
            }
        };
        for (_, pending) in &mut round.series[start..round.next] {
            // Written: free the memory now rather than at the round's end.
            *pending = Pending::default();
        }
        for (series, list) in work.changed {
            if list.is_empty() {
                self.small.remove(&series);
            } else {
                self.small.insert(series, list);
            }
        }
        self.next_chunk_id = work.next_chunk_id;
        let mut step = work.step;
        if done {
            self.round = None;
            step.round_done = true;
        }
        Ok(step)
    }
}

/// One step's writes, applied to the compactor only after its commit.
struct Work {
    budget: (u64, u64),
    next_chunk_id: i64,
    /// New small-chunk lists of the series this step touched.
    changed: Vec<(i64, Vec<Small>)>,
    step: CompactStep,
}

impl Work {
    /// Writes series of `round` until the step's budget is spent; at the
    /// round's end, deletes covered head rows. True when the round is done.
    fn run(
        &mut self,
        tx: &Transaction<'_>,
        round: &mut Round,
        small: &SeriesMap<Vec<Small>>,
        noted_chunk_id: i64,
    ) -> Result<bool, CompactError> {
        let mut mark = tx.prepare_cached(
            "INSERT INTO compacted (series_id, head_id) VALUES (?1, ?2) \
             ON CONFLICT (series_id) DO UPDATE SET head_id = excluded.head_id",
        )?;
        while let Some((series, pending)) = round.series.get(round.next) {
            if self.step.points + self.step.merged_points >= self.budget.0
                || self.step.rows() >= self.budget.1
            {
                break;
            }
            let mut list = small.get(series).cloned().unwrap_or_default();
            for enc in &pending.chunks {
                self.write_pending(tx, *series, enc, &mut list)?;
            }
            self.merge_tiers(tx, *series, &mut list)?;
            mark.execute(params![series, round.upto])?;
            self.changed.push((*series, list));
            round.next += 1;
        }
        let mut done = false;
        if round.next == round.series.len() && self.step.rows() < self.budget.1 {
            let deleted = tx.execute(
                "DELETE FROM head WHERE id IN \
                 (SELECT id FROM head WHERE id <= ?1 ORDER BY id LIMIT ?2)",
                params![round.upto, STEP_HEAD_ROWS as i64],
            )? as u64;
            self.step.head_rows_deleted = deleted;
            done = deleted < STEP_HEAD_ROWS;
        }
        if self.next_chunk_id != noted_chunk_id {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('next_chunk_id', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [self.next_chunk_id.to_string()],
            )?;
        }
        Ok(done)
    }

    /// Writes one pending encoder as a chunk (sorted first if points came
    /// out of device-time order).
    fn write_pending(
        &mut self,
        tx: &Transaction<'_>,
        series: i64,
        enc: &Encoder,
        list: &mut Vec<Small>,
    ) -> Result<(), CompactError> {
        if enc.is_empty() {
            return Ok(());
        }
        let mut blob = enc.finish();
        if !enc.is_sorted() {
            // A late point: rare, so decode, sort and encode again.
            let mut points = Decoder::new(&blob, series, 0)
                .and_then(Decoder::collect_points)
                .map_err(bad("pending", series))?;
            points.sort_by_key(|p| p.ts_ns);
            blob = encode(&points);
        }
        let (min_ts, max_ts) = enc.ts_range();
        let id = self.insert(tx, series, min_ts, max_ts, enc.len(), &blob)?;
        if enc.len() < CHUNK_POINTS {
            list.push(Small {
                id,
                count: enc.len(),
            });
        }
        self.step.points += enc.len() as u64;
        Ok(())
    }

    /// Merges small chunks of `series` while one tier has too many.
    fn merge_tiers(
        &mut self,
        tx: &Transaction<'_>,
        series: i64,
        list: &mut Vec<Small>,
    ) -> Result<(), CompactError> {
        loop {
            let crowded =
                (0..4).find(|&t| list.iter().filter(|c| tier(c.count) == t).count() >= TIER_FANOUT);
            let Some(t) = crowded else {
                return Ok(());
            };
            let (merge, keep): (Vec<Small>, Vec<Small>) =
                list.iter().partition(|c| tier(c.count) == t);
            *list = keep;
            let mut blobs = Vec::with_capacity(merge.len());
            let mut get = tx.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
            for c in &merge {
                blobs.push((c.id, get.query_row([c.id], |r| r.get::<_, Vec<u8>>(0))?));
                del.execute([c.id])?;
            }
            let mut points: Vec<RawPoint<'_>> = Vec::new();
            for (id, blob) in &blobs {
                let mut d = Decoder::new(blob, series, 0).map_err(bad("chunks", *id))?;
                while let Some(p) = d.next_point().map_err(bad("chunks", *id))? {
                    points.push(p);
                }
            }
            // Stable: older chunks first among equal device times.
            points.sort_by_key(|p| p.ts_ns);
            for piece in points.chunks(CHUNK_POINTS) {
                let blob = encode(piece);
                let (min_ts, max_ts) = ts_range(piece);
                let id = self.insert(tx, series, min_ts, max_ts, piece.len(), &blob)?;
                if piece.len() < CHUNK_POINTS {
                    list.push(Small {
                        id,
                        count: piece.len(),
                    });
                }
            }
            self.step.merged_points += points.len() as u64;
            self.step.chunks_merged += merge.len() as u64;
        }
    }

    fn insert(
        &mut self,
        tx: &Transaction<'_>,
        series: i64,
        min_ts: i64,
        max_ts: i64,
        count: usize,
        blob: &[u8],
    ) -> Result<i64, CompactError> {
        let id = self.next_chunk_id;
        self.next_chunk_id += 1;
        tx.prepare_cached(
            "INSERT INTO chunks (id, series_id, min_ts, max_ts, count, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![id, series, min_ts, max_ts, count as i64, blob])?;
        self.step.chunks_written += 1;
        Ok(id)
    }
}

impl CompactStep {
    fn rows(&self) -> u64 {
        self.chunks_written + self.chunks_merged
    }
}

/// A chunk blob of `points` (of one series, in order).
pub(crate) fn encode(points: &[RawPoint<'_>]) -> Vec<u8> {
    let mut e = Encoder::chunk();
    for p in points {
        e.push(0, p.ts_ns, p.received_ns, p.value);
    }
    e.finish()
}

fn ts_range(points: &[RawPoint<'_>]) -> (i64, i64) {
    points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
        (lo.min(p.ts_ns), hi.max(p.ts_ns))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_grow_by_a_factor_of_the_fanout() {
        assert_eq!(
            [1, 7, 8, 63, 64, 511, 512, 4095].map(tier),
            [0, 0, 1, 1, 2, 2, 3, 3]
        );
        for t in 0..3 {
            let smallest = 1usize << (3 * t);
            assert!(tier(smallest * TIER_FANOUT) > t);
        }
        const { assert!(TIER_FANOUT * 512 >= CHUNK_POINTS) };
    }

    #[test]
    fn the_schema_marks_small_chunks_with_the_same_number() {
        assert!(super::super::sqlite::SCHEMA.contains(&format!("WHERE count < {CHUNK_POINTS}")));
    }
}
