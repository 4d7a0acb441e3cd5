//! One compaction step's writes ([`Work`]): the next series of the round
//! into chunks, merges of small chunks by tier, and at the round's end the
//! deletion of the covered head rows. Run in one transaction by
//! [`super::Compactor::step`]; applied to the compactor only after commit.

use std::cmp::Reverse;

use rusqlite::{Transaction, params};

use super::super::codec::{CodecError, Decoder, Encoder, RawPoint};
use super::super::layout::{CHUNK_POINTS, LayoutError, bad, encode};
use super::{Round, STEP_HEAD_ROWS, SeriesMap, TIER_FANOUT, Tiers, count_small, tier};
use crate::store::CompactStep;

/// One step's writes, applied to the compactor only after its commit.
pub(super) struct Work {
    pub budget: (u64, u64),
    pub next_chunk_id: i64,
    /// New small-chunk counts of the series this step touched.
    pub changed: Vec<(i64, Tiers)>,
    pub step: CompactStep,
}

impl Work {
    /// Writes series of `round` until the step's budget is spent; at the
    /// round's end, deletes covered head rows. True when the round is done.
    pub fn run(
        &mut self,
        tx: &Transaction<'_>,
        round: &mut Round,
        small: &SeriesMap<Tiers>,
        noted_chunk_id: i64,
        enc: &mut Encoder,
    ) -> Result<bool, LayoutError> {
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
    ) -> Result<(), LayoutError> {
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
    ) -> Result<(), LayoutError> {
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
    ) -> Result<i64, LayoutError> {
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

fn ts_range(points: &[RawPoint<'_>]) -> (i64, i64) {
    points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| {
        (lo.min(p.ts_ns), hi.max(p.ts_ns))
    })
}
