//! Compaction of the SQLite store: readings go in as one `head` row per
//! committed batch (an append, whatever the series), and come out in
//! per-series `chunks` of up to [`CHUNK_POINTS`] points in device-time
//! order, which range queries find through the `(series_id, max_ts)` index.
//! Owned by [`super::sqlite::SqliteStore`], so it runs on the merger's
//! thread, between groups: nothing else writes.
//!
//! - **Pending points.** The store writes each batch's head row with its
//!   points in series order (stable, so a series keeps its commit order)
//!   and, after the commit, hands the compactor that same blob
//!   ([`Compactor::add`]). So the head is never read back on the write
//!   path, and what waits for a round costs what the head does (a few bytes
//!   a point, nothing per series); the head is the durable copy, replayed
//!   into memory by [`Compactor::load`] when the store opens.
//! - **Rounds.** Once [`ROUND_POINTS`] points are pending, or the oldest has
//!   waited [`ROUND_AGE`], a round *seals* them: the head rows up to the
//!   newest id (`upto`) are now the round's, and new commits collect
//!   separately. The round writes chunks series by series, in increasing
//!   series order, taking each series' points from every sealed row in
//!   turn (a k-way merge over rows that are each in series order, so every
//!   row is read front to back once), in steps of bounded work, one
//!   transaction each; each step also records `upto` as the compaction
//!   mark of the run of series ids it wrote (one `compacted_span` row, see
//!   [`Marks`]). A reader therefore takes a head point of series `s` from
//!   row `h` only if `h >` the mark of `s`: in every snapshot each point is
//!   in exactly one place. The last steps delete the head rows up to `upto`
//!   and the round's marks.
//! - **Tiers.** A round writes one chunk per series, as large as that
//!   series' share of the round. A quiet series would pile up tiny chunks,
//!   so chunks below [`CHUNK_POINTS`] ("small") are merged by size tier
//!   (log₈ of the count): when a series has [`TIER_FANOUT`] small chunks of
//!   one tier, they become one chunk of a higher tier (or full chunks and a
//!   remainder). A point is rewritten at most about four times, and a series
//!   has at most 4 × 7 small chunks. Full chunks are never rewritten, only
//!   deleted by retention, which readers rely on (`sqlite_read`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::CompactStep;
use super::codec::{CodecError, Decoder, Encoder, Position, RawPoint};
use crate::model::IdMap;

/// Points of a full chunk. Chunks with fewer are "small" and get merged.
pub const CHUNK_POINTS: usize = 4096;

/// A round starts once this many points are pending...
const ROUND_POINTS: u64 = 1 << 21;

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

/// Why reading or writing the SQLite layout failed: the database, or a
/// head row or chunk whose blob does not decode. Compaction (steps and the
/// replay at open) and scans (`sqlite_scan`) fail the same two ways.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
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

/// Why a compaction step or the replay failed.
pub type CompactError = LayoutError;

fn bad(table: &'static str, id: i64) -> impl Fn(CodecError) -> CompactError {
    move |source| CompactError::Blob { table, id, source }
}

type SeriesMap<V> = IdMap<V>;

/// A committed head row, kept in memory as it was written (its points in
/// series order) until a round moves its points into chunks.
struct HeadRow {
    id: i64,
    received_ns: i64,
    blob: Vec<u8>,
}

/// A head row of a round and how far the round has read it. Its points
/// are in series order, so the round, which writes series in increasing
/// order, reads every row front to back once (a k-way merge).
struct Cursor {
    row: HeadRow,
    pos: Position,
    /// Series of the row's next point; `None` once all are read.
    next: Option<i64>,
}

/// How many small chunks a series has of each tier: all the compactor
/// keeps per series (four bytes). Which chunks they are is read from the
/// `chunks_by_series_ts` index when a tier is merged, once every
/// [`TIER_FANOUT`] rounds or more (see [`Work::merge_tiers`]).
type Tiers = [u8; 4];

/// log₈ of a small chunk's count: 1–7 → 0, 8–63 → 1, 64–511 → 2,
/// 512–4095 → 3. Merging [`TIER_FANOUT`] chunks of a tier always gives a
/// higher one.
fn tier(count: usize) -> usize {
    (count.max(1).ilog2() / 3).min(3) as usize
}

/// Counts a small chunk of `count` points in (`add`) or out of `tiers`.
fn count_small(tiers: &mut Tiers, count: usize, add: bool) {
    if count == 0 || count >= CHUNK_POINTS {
        return;
    }
    let t = &mut tiers[tier(count)];
    *t = if add {
        t.saturating_add(1)
    } else {
        t.saturating_sub(1)
    };
}

/// A round under way.
struct Round {
    /// Head rows up to this id are covered by `rows` (or were compacted
    /// before).
    upto: i64,
    /// The round's head rows, in id order; an exhausted one keeps its place
    /// (its index is its identity in `heap`) but not its blob.
    rows: Vec<Cursor>,
    /// (next series, row index) of every row with points left: the
    /// smallest series comes first, and among its rows the oldest.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

/// The compaction state. Not `Sync`; owned by the store, used by the merger.
///
/// Memory: the pending head rows as written (about the size of the head,
/// ≈ 11 bytes a float reading), one cursor per head row of the round under
/// way, and one chunk encoder; nothing per series but the small-chunk
/// lists. So a store with many series does not pay a buffer per series.
pub struct Compactor {
    /// Committed head rows not yet in a round, in id order.
    pending: Vec<HeadRow>,
    pending_points: u64,
    pending_since: Option<Instant>,
    /// Oldest device time among the pending points.
    pending_min_ts: i64,
    round: Option<Round>,
    /// Small chunks per series, counted by tier (series without any are
    /// left out).
    small: SeriesMap<Tiers>,
    next_head_id: i64,
    next_chunk_id: i64,
    retry_at: Option<Instant>,
    /// Work of one step: points and chunk rows ([`STEP_POINTS`],
    /// [`STEP_ROWS`]; tests make them tiny).
    budget: (u64, u64),
    /// Reused for every chunk a round writes.
    chunk: Encoder,
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
            pending: Vec::new(),
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
            chunk: Encoder::chunk(),
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT series_id, count FROM chunks WHERE count < {CHUNK_POINTS}"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let count = usize::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
            count_small(c.small.entry(r.get(0)?).or_default(), count, true);
        }
        let marks = Marks::load(conn)?;
        // Each head row again, without the points a chunk already holds,
        // in series order (rows written before that order was kept are
        // sorted here).
        let mut stmt = conn.prepare("SELECT id, received_ns, data FROM head ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut enc = Encoder::head();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let received_ns: i64 = r.get(1)?;
            let blob: Vec<u8> = r.get(2)?;
            let mut points = Decoder::new(&blob, 0, received_ns)
                .and_then(Decoder::collect_points)
                .map_err(bad("head", id))?;
            points.retain(|p| id > marks.of(p.series));
            if points.is_empty() {
                continue;
            }
            points.sort_by_key(|p| p.series);
            enc.clear();
            for p in &points {
                enc.push(p.series, p.ts_ns, 0, p.value);
            }
            c.add(id, received_ns, enc.len(), enc.ts_range().0, enc.finish());
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

    /// Makes the `points` points of head row `id` pending (`min_ts`: the
    /// oldest device time among them); `blob` is what the row holds, in
    /// series order. Call only after the commit that stored the row
    /// succeeded.
    pub fn add(&mut self, id: i64, received_ns: i64, points: usize, min_ts: i64, blob: Vec<u8>) {
        if points == 0 {
            return;
        }
        self.pending_points += points as u64;
        self.pending_min_ts = self.pending_min_ts.min(min_ts);
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending.push(HeadRow {
            id,
            received_ns,
            blob,
        });
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

    /// A small chunk of `series` that held `old` points now holds `new`
    /// (retention trimmed it; 0: deleted it).
    pub fn resized(&mut self, series: i64, old: usize, new: usize) {
        if let Some(tiers) = self.small.get_mut(&series) {
            count_small(tiers, old, false);
            count_small(tiers, new, true);
            if *tiers == Tiers::default() {
                self.small.remove(&series);
            }
        }
    }

    /// Sets the work of one step (tests).
    #[cfg(test)]
    pub fn set_budget(&mut self, points: u64, rows: u64) {
        self.budget = (points, rows);
    }

    fn seal(&mut self) {
        let mut rows = Vec::with_capacity(self.pending.len());
        let mut heap = BinaryHeap::with_capacity(self.pending.len());
        for row in std::mem::take(&mut self.pending) {
            // A blob this compactor encoded itself; one that does not even
            // start to decode has no points to give (reading it would fail
            // the same way at every step), and stays in the head.
            let d = match Decoder::new(&row.blob, 0, row.received_ns) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(head_id = row.id, error = %e, "head row kept in memory does not decode; its points are not compacted");
                    continue;
                }
            };
            let pos = d.position(&row.blob);
            let next = d.peek_series();
            if let Some(series) = next {
                heap.push(Reverse((series, rows.len())));
            }
            rows.push(Cursor { row, pos, next });
        }
        self.round = Some(Round {
            upto: self.next_head_id - 1,
            rows,
            heap,
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
        // Where the cursors stood, to go back there if the step fails.
        let saved_heap = round.heap.clone();
        let saved: Vec<(Position, Option<i64>)> =
            round.rows.iter().map(|c| (c.pos, c.next)).collect();
        let mut work = Work {
            budget: self.budget,
            next_chunk_id: self.next_chunk_id,
            changed: Vec::new(),
            step: CompactStep::default(),
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let outcome = work
            .run(&tx, round, &self.small, self.next_chunk_id, &mut self.chunk)
            .and_then(|done| {
                tx.commit()?;
                Ok(done)
            });
        let done = match outcome {
            Ok(done) => done,
            Err(e) => {
                round.heap = saved_heap;
                for (c, (pos, next)) in round.rows.iter_mut().zip(saved) {
                    c.pos = pos;
                    c.next = next;
                }
                return Err(e);
            }
        };
        for c in &mut round.rows {
            if c.next.is_none() && !c.row.blob.is_empty() {
                // Read to the end: free the memory now rather than at the
                // round's end.
                c.row.blob = Vec::new();
            }
        }
        for (series, tiers) in work.changed {
            if tiers == Tiers::default() {
                self.small.remove(&series);
            } else {
                self.small.insert(series, tiers);
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
    /// New small-chunk counts of the series this step touched.
    changed: Vec<(i64, Tiers)>,
    step: CompactStep,
}

impl Work {
    /// Writes series of `round` until the step's budget is spent; at the
    /// round's end, deletes covered head rows. True when the round is done.
    fn run(
        &mut self,
        tx: &Transaction<'_>,
        round: &mut Round,
        small: &SeriesMap<Tiers>,
        noted_chunk_id: i64,
        enc: &mut Encoder,
    ) -> Result<bool, CompactError> {
        // The run of series this step writes: [first, last].
        let mut span: Option<(i64, i64)> = None;
        while let Some(&Reverse((series, _))) = round.heap.peek() {
            if self.step.points + self.step.merged_points >= self.budget.0
                || self.step.rows() >= self.budget.1
            {
                break;
            }
            let mut list = small.get(&series).copied().unwrap_or_default();
            enc.clear();
            // Every row holding `series`, oldest first: its points in
            // commit order.
            while let Some(&Reverse((s, i))) = round.heap.peek() {
                if s != series {
                    break;
                }
                round.heap.pop();
                let Some(c) = round.rows.get_mut(i) else {
                    continue;
                };
                let id = c.row.id;
                let mut d = Decoder::resume(&c.row.blob, &c.pos).map_err(bad("head", id))?;
                while d.peek_series() == Some(series) {
                    let Some(p) = d.next_point().map_err(bad("head", id))? else {
                        break;
                    };
                    if enc.len() == CHUNK_POINTS {
                        self.write_pending(tx, series, enc, &mut list)?;
                        enc.clear();
                    }
                    enc.push(0, p.ts_ns, p.received_ns, p.value);
                }
                c.pos = d.position(&c.row.blob);
                c.next = d.peek_series();
                match c.next {
                    // Rows are kept in series order; one that is not would
                    // be read forever.
                    Some(next) if next <= series => {
                        return Err(bad("head", id)(CodecError::Header(
                            "points not in series order",
                        )));
                    }
                    Some(next) => round.heap.push(Reverse((next, i))),
                    // Checks that the row was used up exactly.
                    None => {
                        d.next_point().map_err(bad("head", id))?;
                    }
                }
            }
            self.write_pending(tx, series, enc, &mut list)?;
            self.merge_tiers(tx, series, &mut list)?;
            span = Some((span.map_or(series, |(first, _)| first), series));
            self.changed.push((series, list));
        }
        if let Some((first, last)) = span {
            // Series of the range that had no points in the round have
            // none in its head rows either: the mark covers them too.
            tx.prepare_cached(
                "INSERT INTO compacted_span (head_id, series_lo, series_hi) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![round.upto, first, last])?;
        }
        let mut done = false;
        if round.heap.is_empty() && self.step.rows() < self.budget.1 {
            let deleted = tx.execute(
                "DELETE FROM head WHERE id IN \
                 (SELECT id FROM head WHERE id <= ?1 ORDER BY id LIMIT ?2)",
                params![round.upto, STEP_HEAD_ROWS as i64],
            )? as u64;
            self.step.head_rows_deleted = deleted;
            done = deleted < STEP_HEAD_ROWS;
            if done {
                // No head row at or below `upto` is left: its marks say
                // nothing any more.
                tx.execute(
                    "DELETE FROM compacted_span WHERE head_id <= ?1",
                    [round.upto],
                )?;
            }
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

    /// Writes the points in `enc` as a chunk (sorted first if they came
    /// out of device-time order).
    fn write_pending(
        &mut self,
        tx: &Transaction<'_>,
        series: i64,
        enc: &Encoder,
        list: &mut Tiers,
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
        self.insert(tx, series, min_ts, max_ts, enc.len(), &blob)?;
        count_small(list, enc.len(), true);
        self.step.points += enc.len() as u64;
        Ok(())
    }

    /// Merges small chunks of `series` while one tier has too many.
    fn merge_tiers(
        &mut self,
        tx: &Transaction<'_>,
        series: i64,
        tiers: &mut Tiers,
    ) -> Result<(), CompactError> {
        loop {
            let Some(t) = (0..4).find(|&t| usize::from(tiers[t]) >= TIER_FANOUT) else {
                return Ok(());
            };
            // The series' small chunks of tier `t`, oldest first. Small
            // chunks hold a series' newest points (full ones are cut from
            // the oldest points of a merge), so the series' chunks are read
            // newest first until all the small ones the tiers count have
            // been seen: a few index entries, however many full chunks
            // the series has. Late points can put a small chunk further
            // back; the walk then goes on to it. A separate index of small
            // chunks cost a B-tree insert and delete for every chunk a
            // round writes and a merge removes.
            let ids: Vec<i64> = {
                let mut small = tiers.iter().map(|&n| usize::from(n)).sum::<usize>();
                let mut list = tx.prepare_cached(
                    "SELECT id, count FROM chunks INDEXED BY chunks_by_series_ts \
                     WHERE series_id = ?1 ORDER BY max_ts DESC",
                )?;
                let mut rows = list.query([series])?;
                let mut ids = Vec::with_capacity(TIER_FANOUT);
                while small > 0 {
                    let Some(row) = rows.next()? else { break };
                    let count = usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
                    if count >= CHUNK_POINTS {
                        continue;
                    }
                    small -= 1;
                    if tier(count) == t {
                        ids.push(row.get(0)?);
                    }
                }
                ids.sort_unstable();
                ids
            };
            let mut get = tx.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
            let mut blobs: Vec<(i64, Vec<u8>)> = Vec::with_capacity(ids.len());
            for id in ids {
                blobs.push((id, get.query_row([id], |r| r.get(0))?));
            }
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
            for (id, _) in &blobs {
                del.execute([id])?;
            }
            // What the chunks hold is the truth; the counts follow it.
            tiers[t] = 0;
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
                self.insert(tx, series, min_ts, max_ts, piece.len(), &blob)?;
                count_small(tiers, piece.len(), true);
            }
            self.step.merged_points += points.len() as u64;
            self.step.chunks_merged += blobs.len() as u64;
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

/// The compaction marks: head rows up to a series' mark are in chunks for
/// that series (their points of it must not be read from the head). The
/// mark of a series is the largest of its `compacted` row (written by
/// earlier versions) and of the `compacted_span` rows covering its id.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    per_series: SeriesMap<i64>,
    /// (head id, first series, last series).
    spans: Vec<(i64, i64, i64)>,
}

impl Marks {
    /// Every mark (the compactor's replay).
    pub fn load(conn: &Connection) -> rusqlite::Result<Marks> {
        let mut marks = Marks {
            spans: Marks::spans(conn)?,
            ..Marks::default()
        };
        let mut stmt = conn.prepare("SELECT series_id, head_id FROM compacted")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            marks.per_series.insert(r.get(0)?, r.get(1)?);
        }
        Ok(marks)
    }

    /// The span marks (a few rows; readers take them with the per-series
    /// marks of the series they read, in the same transaction).
    pub fn spans(conn: &Connection) -> rusqlite::Result<Vec<(i64, i64, i64)>> {
        conn.prepare_cached("SELECT head_id, series_lo, series_hi FROM compacted_span")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
    }

    /// The mark of `series` given its `compacted` row, if any.
    pub fn with_spans(spans: &[(i64, i64, i64)], series: i64, own: i64) -> i64 {
        spans
            .iter()
            .filter(|(_, lo, hi)| (*lo..=*hi).contains(&series))
            .fold(own, |m, (head, _, _)| m.max(*head))
    }

    /// The mark of `series` (0: none).
    pub fn of(&self, series: i64) -> i64 {
        let own = self.per_series.get(&series).copied().unwrap_or(0);
        Marks::with_spans(&self.spans, series, own)
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
}
