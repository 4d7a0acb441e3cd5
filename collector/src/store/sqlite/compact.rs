//! Compaction of the SQLite store: readings go in as one `head` row per
//! committed batch (an append, whatever the series), and come out in
//! per-series `chunks` of up to [`CHUNK_POINTS`] points in device-time
//! order, which range queries find through the `(series_id, max_ts)` index.
//! Owned by [`super::SqliteStore`], so it runs on the merger's
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
//!   deleted by retention, which readers rely on (`scan.rs`).
//!
//! Owns: the pending points, the rounds and the tier counts (`compact/step.rs`:
//! the writes of one step). May touch: the SQLite write connection it is
//! handed, the blob codec (`codec.rs`), the marks and limits of `layout.rs`,
//! and the contract's `CompactStep`; nothing of the read side.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::codec::{Decoder, Encoder, Position};
use super::layout::{CHUNK_POINTS, LayoutError, Marks, bad};
use crate::model::IdMap;
use crate::store::CompactStep;

mod step;

use step::Work;

/// A round starts once this many points are pending...
const ROUND_POINTS: u64 = 1 << 22;

/// ...or once the oldest pending point has waited this long. Each round
/// writes every series it holds a chunk row, and each such row is later
/// deleted by a tier merge: SQLite's cost per row (two B-trees written on
/// insert and on delete) is most of what compaction costs for wide,
/// shallow data, so a longer round is fewer rows for the same points
/// (20 s against 10 s in `vs-prometheus`: BENCHMARKS.md). Its memory stays
/// that of about one round, as rows are cut down to their unread rest
/// while it goes on.
const ROUND_AGE: Duration = Duration::from_secs(20);

/// A head row of a round at least this large is cut down to its unread
/// rest once half of it is read. Tests cut every row (their rows are
/// small), so every compaction test reads through cut rows.
const SHRINK_FROM: usize = if cfg!(test) { 1 } else { 4096 };

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
/// ≈ 11 bytes a float reading), the unread rest of the round's rows (cut
/// down as the round reads them, so a round's memory shrinks while the
/// next one collects), one cursor per head row of the round under way,
/// and one chunk encoder; nothing per series but the small-chunk lists.
/// So a store with many series does not pay a buffer per series.
pub struct Compactor {
    /// Committed head rows not yet in a round, in id order.
    pending: Vec<HeadRow>,
    pending_points: u64,
    /// Points of the round under way not yet moved into chunks.
    round_left: u64,
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
    pub fn load(conn: &Connection) -> Result<Compactor, LayoutError> {
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
            round_left: 0,
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

    /// Committed points not yet moved into chunks: those waiting for a
    /// round and those of the round under way it has not moved yet. What
    /// grows while compaction falls behind, whatever round it is in.
    pub fn unmoved_points(&self) -> u64 {
        self.pending_points.saturating_add(self.round_left)
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
        self.round_left = self.pending_points;
        self.pending_points = 0;
        self.pending_since = None;
        self.pending_min_ts = i64::MAX;
    }

    /// One bounded step, in one transaction: starts a round if one is due,
    /// writes the next series of the round, and at its end deletes the
    /// covered head rows. Does nothing when nothing is due. After an error
    /// nothing of the step is stored, and steps pause for a moment.
    pub fn step(&mut self, conn: &mut Connection) -> Result<CompactStep, LayoutError> {
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

    fn step_in_round(&mut self, conn: &mut Connection) -> Result<CompactStep, LayoutError> {
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
            if c.next.is_none() {
                if !c.row.blob.is_empty() {
                    // Read to the end: free the memory now rather than at
                    // the round's end.
                    c.row.blob = Vec::new();
                }
            } else if c.row.blob.len() >= SHRINK_FROM
                && c.pos.unread_bytes() <= c.row.blob.len() / 2
            {
                // A row may hold points of many series (a batch of many
                // devices), which the round reads a little at each step:
                // keep only what is left, or such rows would stay in
                // memory whole to the round's end while the next one
                // collects. A copy of at most half a row, each time half
                // is read: the bytes copied stay below the row's size.
                match c.pos.keep_unread(&c.row.blob) {
                    Ok(rest) => c.row.blob = rest,
                    Err(e) => {
                        tracing::warn!(head_id = c.row.id, error = %e, "head row kept in memory: its unread rest could not be cut out; kept whole");
                    }
                }
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
        self.round_left = self.round_left.saturating_sub(step.points);
        if done {
            self.round = None;
            self.round_left = 0;
            step.round_done = true;
        }
        Ok(step)
    }
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
