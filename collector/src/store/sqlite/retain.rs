//! Retention for the SQLite store: removing readings older than a cutoff
//! in bounded steps, oldest chunks first, on the merger's thread (it is a
//! write like any other). Full chunks are deleted whole or not at all
//! (readers rely on them never changing); small chunks may be trimmed.

use rusqlite::params;

use super::codec::Decoder;
use super::layout::{CHUNK_POINTS, LayoutError, bad, encode};
use super::write::{SqliteStore, begin, layout_err, sqlite_err};
use crate::store::{RetainStep, StoreError};

impl SqliteStore {
    /// Removes readings older than `cutoff_ns` (device time), about
    /// `max_rows` per call, walking the oldest chunks by id (compaction
    /// order, which follows device time closely; no time index is kept, it
    /// would cost every write). A chunk wholly older than the cutoff is
    /// deleted; a small chunk straddling it is rewritten without its old
    /// points; a full chunk straddling it stays until all of it is old
    /// (readers fetch full chunks after their snapshot and rely on them
    /// never changing, only going away), so up to one chunk per series
    /// more is kept. Readings still in the head are compacted first, in
    /// bounded steps; a pass that finds compaction under way ends there and
    /// the next pass goes on.
    pub fn retain(&mut self, cutoff_ns: i64, max_rows: u64) -> Result<RetainStep, StoreError> {
        if self.compactor.pending_before(cutoff_ns) {
            self.compactor.start_round();
        }
        if self.compactor.in_round() {
            self.compact()?;
            if self.compactor.in_round() {
                return Ok(RetainStep {
                    removed: 0,
                    done: true,
                });
            }
        }
        let window = (max_rows / 64).max(16);
        let err = sqlite_err(&self.path);
        let tx = begin(&mut self.conn, &self.path)?;
        let mut removed = 0u64;
        // (series, points before, points left) of small chunks changed, for
        // the compactor once committed.
        let mut changed: Vec<(i64, usize, usize)> = Vec::new();
        {
            let mut oldest = tx
                .prepare_cached(
                    "SELECT id, series_id, max_ts, count FROM chunks \
                     WHERE id IN (SELECT id FROM chunks ORDER BY id LIMIT ?2) AND min_ts < ?1 \
                     ORDER BY id",
                )
                .map_err(err)?;
            let candidates: Vec<(i64, i64, i64, i64)> = oldest
                .query_map(params![cutoff_ns, window as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let mut delete = tx
                .prepare_cached("DELETE FROM chunks WHERE id = ?1")
                .map_err(err)?;
            for (id, series, max_ts, count) in candidates {
                let count = usize::try_from(count).unwrap_or(0);
                let small = count < CHUNK_POINTS;
                if removed >= max_rows {
                    break;
                }
                if max_ts < cutoff_ns {
                    if removed > 0 && removed + count as u64 > max_rows {
                        break;
                    }
                    delete.execute([id]).map_err(err)?;
                    removed += count as u64;
                    if small {
                        changed.push((series, count, 0));
                    }
                } else if small {
                    let budget = usize::try_from(max_rows - removed).unwrap_or(usize::MAX);
                    let left = trim(&tx, id, series, cutoff_ns, budget)
                        .map_err(|e| layout_err(&self.path, e))?;
                    removed += (count - left) as u64;
                    changed.push((series, count, left));
                }
            }
        }
        tx.commit().map_err(err)?;
        for (series, before, left) in changed {
            self.compactor.resized(series, before, left);
        }
        Ok(RetainStep {
            removed,
            done: removed < max_rows,
        })
    }
}

/// Rewrites small chunk `id` without up to `budget` of its points older
/// than `cutoff_ns` (they are its first ones: a chunk is in time order).
/// Returns the points left.
fn trim(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    series: i64,
    cutoff_ns: i64,
    budget: usize,
) -> Result<usize, LayoutError> {
    let blob: Vec<u8> =
        tx.query_row("SELECT data FROM chunks WHERE id = ?1", [id], |r| r.get(0))?;
    let points = Decoder::new(&blob, series, 0)
        .and_then(Decoder::collect_points)
        .map_err(bad("chunks", id))?;
    let old = points.iter().take_while(|p| p.ts_ns < cutoff_ns).count();
    let keep = &points[old.min(budget)..];
    match (keep.first(), keep.last()) {
        (Some(first), Some(last)) => {
            tx.execute(
                "UPDATE chunks SET min_ts = ?2, max_ts = ?3, count = ?4, data = ?5 WHERE id = ?1",
                params![id, first.ts_ns, last.ts_ns, keep.len() as i64, encode(keep)],
            )?;
        }
        _ => {
            tx.execute("DELETE FROM chunks WHERE id = ?1", [id])?;
        }
    }
    Ok(keep.len())
}
