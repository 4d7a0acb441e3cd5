//! Reading points back out of the SQLite layout (`head` rows and per-series
//! `chunks`, see `compact.rs`) so that every stored point is seen
//! exactly once, although compaction moves points while queries run.
//!
//! - One **read transaction** per group of series takes everything that can
//!   move: the series' compaction marks, the head rows (a head point of
//!   series `s` in row `h` counts only if `h >` the mark of `s`),
//!   the small chunks (compaction may merge them), and the list of the full
//!   chunks overlapping the span. In that snapshot each point is in exactly
//!   one of those places.
//! - **Full chunks** are never rewritten (only deleted by retention), so
//!   they are fetched one at a time, later, by id, while the caller streams:
//!   no read snapshot is held while a slow client drains (that would keep
//!   the WAL from being checkpointed). A full chunk deleted meanwhile is
//!   skipped, like rows deleted during the old row-per-reading walk.
//! - [`Merge`] yields the points of one series in device-time order,
//!   loading a full chunk only when its first point is due, so memory stays
//!   at the head, small chunks and the full chunks overlapping one instant.
//! - What a point is decoded into is the reader's choice ([`Decoded`]):
//!   a whole [`Point`] (every reader but PromQL), or a [`Sample`]
//!   (PromQL's load: device time and value as a double, decoded straight
//!   from the blob; strings and failures are dropped as they are decoded,
//!   which leaves the order of the samples kept as it was, since the merge
//!   orders by device time and then by source alone).

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{CodecError, Decoder, RawPoint, RawValue};
use super::layout::{CHUNK_POINTS, LayoutError, Marks, bad};
use crate::model::{IdMap, Point};
use crate::store::read::Sample;

/// What a scan decodes each stored point into.
pub trait Decoded: Sized {
    /// The point's device time, by which the merge orders.
    fn ts_ns(&self) -> i64;
    /// The point as this reader keeps it; `None` drops it.
    fn decode(p: &RawPoint<'_>) -> Option<Self>;
}

impl Decoded for Point {
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }

    fn decode(p: &RawPoint<'_>) -> Option<Self> {
        Some(p.point())
    }
}

impl Decoded for Sample {
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }

    /// As `prom_labels::sample_value` on the stored value (a unit test
    /// holds them equal): numbers and bools are samples (bool as 0 or 1,
    /// integers to the nearest double), strings and failures are not.
    fn decode(p: &RawPoint<'_>) -> Option<Self> {
        let value = match p.value {
            RawValue::F64(v) => v,
            RawValue::I64(v) => v as f64,
            RawValue::U64(v) => v as f64,
            RawValue::Bool(b) => {
                if b {
                    1.0
                } else {
                    0.0
                }
            }
            RawValue::Str(_) | RawValue::Timeout(_) | RawValue::Error(_) => return None,
        };
        Some(Sample {
            ts_ns: p.ts_ns,
            value,
        })
    }
}

/// A full chunk to fetch later.
#[derive(Debug, Clone, Copy)]
struct FullRef {
    id: i64,
    min_ts: i64,
}

/// What one snapshot holds of one series within a span.
#[derive(Debug)]
pub struct SeriesScan<E> {
    /// Points of the head and the small chunks, in device-time order,
    /// reversed (`pop` gives the next).
    mem: Vec<E>,
    /// Full chunks overlapping the span, by first point.
    full: Vec<FullRef>,
}

impl<E> Default for SeriesScan<E> {
    fn default() -> Self {
        SeriesScan {
            mem: Vec::new(),
            full: Vec::new(),
        }
    }
}

/// Reads, in one transaction, what may move of `series` within
/// `[lo, hi]`, one [`SeriesScan`] per series in the same order.
pub fn snapshot<E: Decoded>(
    conn: &Connection,
    series: &[i64],
    lo: i64,
    hi: i64,
    received: Received,
) -> Result<Vec<SeriesScan<E>>, LayoutError> {
    let tx = conn.unchecked_transaction()?;
    let mut scans: Vec<SeriesScan<E>> = Vec::with_capacity(series.len());
    let marks = marks(&tx, series)?;
    {
        let mut metas = tx.prepare_cached(
            "SELECT id, min_ts, count FROM chunks \
             WHERE series_id = ?1 AND max_ts >= ?2 AND min_ts <= ?3",
        )?;
        let mut data = tx.prepare_cached("SELECT data FROM chunks WHERE id = ?1")?;
        for &s in series {
            let mut scan = SeriesScan::default();
            let mut small = Vec::new();
            let mut rows = metas.query(params![s, lo, hi])?;
            while let Some(r) = rows.next()? {
                let (id, min_ts, count): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if usize::try_from(count).is_ok_and(|c| c >= CHUNK_POINTS) {
                    scan.full.push(FullRef { id, min_ts });
                } else {
                    small.push(id);
                }
            }
            // Oldest first, so equal device times keep their order.
            small.sort_unstable();
            for id in small {
                let mut rows = data.query([id])?;
                if let Some(r) = rows.next()? {
                    let blob = blob(r.get_ref(0)?, "chunks", id)?;
                    decode_into(blob, s, id, (lo, hi), received, &mut scan.mem)?;
                }
            }
            scan.full.sort_unstable_by_key(|f| (f.min_ts, f.id));
            scans.push(scan);
        }
    }
    // Looked up for every head point: series ids, no SipHash.
    let slot: IdMap<usize> = series.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    head_points(&tx, series, lo, hi, |id, p| {
        if let Some(&i) = slot.get(&p.series)
            && id > marks[i]
            && let Some(e) = E::decode(&p)
        {
            scans[i].mem.push(e);
        }
    })?;
    drop(tx);
    for scan in &mut scans {
        // Stable: small chunks (oldest first), then the head, among equal
        // device times. Often in order already (one small chunk, no head
        // points): a check, then, instead of a sort.
        if !scan.mem.is_sorted_by_key(E::ts_ns) {
            scan.mem.sort_by_key(E::ts_ns);
        }
        scan.mem.reverse();
    }
    Ok(scans)
}

/// The newest point (by device time; the later arrival among equals) of
/// each of `series`, read in one transaction.
pub fn latest(conn: &Connection, series: &[i64]) -> Result<Vec<Option<Point>>, LayoutError> {
    let tx = conn.unchecked_transaction()?;
    let marks = marks(&tx, series)?;
    let mut out: Vec<Option<Point>> = Vec::with_capacity(series.len());
    {
        let mut newest = tx.prepare_cached(
            "SELECT id, max_ts, data FROM chunks WHERE series_id = ?1 ORDER BY max_ts DESC LIMIT 1",
        )?;
        for &s in series {
            let mut best = None;
            let mut rows = newest.query([s])?;
            if let Some(r) = rows.next()? {
                let (id, max_ts): (i64, i64) = (r.get(0)?, r.get(1)?);
                let mut d = Decoder::new(blob(r.get_ref(2)?, "chunks", id)?, s, 0)
                    .map_err(bad("chunks", id))?;
                // In time order: the newest are the last, at `max_ts`.
                d.skip_before(max_ts).map_err(bad("chunks", id))?;
                let mut last = None;
                while let Some(p) = d.next_point().map_err(bad("chunks", id))? {
                    last = Some(p);
                }
                // Every point left is at `max_ts`, and one is: else the row
                // and its blob disagree, and the answer would be some other
                // point (or none) without a word.
                match last {
                    Some(p) if p.ts_ns == max_ts => best = Some(p.point()),
                    _ => {
                        return Err(bad("chunks", id)(CodecError::MaxTs { series: s, max_ts }));
                    }
                }
            }
            out.push(best);
        }
    }
    // Looked up for every head point: series ids, no SipHash.
    let slot: IdMap<usize> = series.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    head_points(&tx, series, i64::MIN, i64::MAX, |id, p| {
        if let Some(&i) = slot.get(&p.series)
            && id > marks[i]
            && out[i].as_ref().is_none_or(|b| b.ts_ns <= p.ts_ns)
        {
            out[i] = Some(p.point());
        }
    })?;
    Ok(out)
}

/// Yields the points of one series in device-time order: the snapshot's
/// points merged with its full chunks, each fetched when due.
pub struct Merge<'c, E> {
    conn: &'c Connection,
    series: i64,
    lo: i64,
    hi: i64,
    scan: SeriesScan<E>,
    next_full: usize,
    /// Loaded full chunks still holding points, each reversed, oldest
    /// chunk first.
    open: Vec<Vec<E>>,
    received: Received,
}

/// Whether a read decodes the chunks' receive times: PromQL never uses
/// them (its points carry 0 as their receive time); every other reader
/// does. Head rows keep theirs either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Decode,
    Skip,
}

/// Where the next point comes from.
#[derive(Clone, Copy)]
enum Source {
    Open(usize),
    Mem,
}

impl<'c, E: Decoded> Merge<'c, E> {
    pub fn new(
        conn: &'c Connection,
        series: i64,
        (lo, hi): (i64, i64),
        scan: SeriesScan<E>,
        received: Received,
    ) -> Self {
        Merge {
            conn,
            series,
            lo,
            hi,
            scan,
            next_full: 0,
            open: Vec::new(),
            received,
        }
    }

    /// Moves the next points, in order, onto `out` until it holds `limit`
    /// or the series is done. False when nothing was left.
    pub fn next_points(&mut self, out: &mut Vec<E>, limit: usize) -> Result<bool, LayoutError> {
        let mut any = false;
        while out.len() < limit {
            let Some((from, bound)) = self.next_source()? else {
                break;
            };
            any = true;
            let source = match from {
                Source::Mem => &mut self.scan.mem,
                Source::Open(i) => &mut self.open[i],
            };
            // The chosen source's first point is next; so are the ones after
            // it that come strictly before every other source's next point
            // (ties go back to `next_source`, which orders them).
            if let Some(p) = source.pop() {
                out.push(p);
            }
            while out.len() < limit && source.last().is_some_and(|p| p.ts_ns() < bound) {
                if let Some(p) = source.pop() {
                    out.push(p);
                }
            }
            if let Source::Open(i) = from
                && self.open[i].is_empty()
            {
                self.open.remove(i);
            }
        }
        Ok(any)
    }

    /// Which source holds the next point, and the device time below which
    /// that source's following points are next too. Loads the full chunks
    /// that may hold the next point first.
    fn next_source(&mut self) -> Result<Option<(Source, i64)>, LayoutError> {
        loop {
            // Every source's next device time, in tie order: loaded full
            // chunks (oldest first), then the snapshot's points.
            let heads = self
                .open
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.last().map(|p| (p.ts_ns(), Source::Open(i))))
                .chain(self.scan.mem.last().map(|p| (p.ts_ns(), Source::Mem)));
            let mut best: Option<(i64, Source)> = None;
            let mut second = i64::MAX;
            for (ts, from) in heads {
                match best {
                    Some((b, _)) if ts >= b => second = second.min(ts),
                    _ => {
                        if let Some((b, _)) = best {
                            second = second.min(b);
                        }
                        best = Some((ts, from));
                    }
                }
            }
            let next_full = self.scan.full.get(self.next_full).copied();
            if let Some(f) = next_full
                && best.is_none_or(|(t, _)| f.min_ts <= t)
            {
                self.next_full += 1;
                self.load(f.id)?;
                continue;
            }
            let bound = next_full.map_or(second, |f| second.min(f.min_ts));
            return Ok(best.map(|(_, from)| (from, bound)));
        }
    }

    /// Fetches a full chunk (in its own short statement); gone means
    /// retention removed it.
    fn load(&mut self, id: i64) -> Result<(), LayoutError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM chunks WHERE id = ?1 AND series_id = ?2")?;
        let mut points = Vec::new();
        {
            let mut rows = stmt.query(params![id, self.series])?;
            if let Some(r) = rows.next()? {
                let b = blob(r.get_ref(0)?, "chunks", id)?;
                decode_into(
                    b,
                    self.series,
                    id,
                    (self.lo, self.hi),
                    self.received,
                    &mut points,
                )?;
            }
        }
        if !points.is_empty() {
            points.reverse();
            self.open.push(points);
        }
        Ok(())
    }
}

/// The compaction mark of each of `series` (0 when none; see
/// [`Marks`]).
fn marks(conn: &Connection, series: &[i64]) -> Result<Vec<i64>, LayoutError> {
    let spans = Marks::spans(conn)?;
    let mut stmt = conn.prepare_cached("SELECT head_id FROM compacted WHERE series_id = ?1")?;
    let mut out = Vec::with_capacity(series.len());
    for &s in series {
        let own = stmt.query_row([s], |r| r.get(0)).optional()?.unwrap_or(0);
        out.push(Marks::with_spans(&spans, s, own));
    }
    Ok(out)
}

/// Calls `f(row id, point)` for every point in the head rows that may hold
/// `series` within `[lo, hi]` (the caller filters by series and mark).
fn head_points(
    conn: &Connection,
    series: &[i64],
    lo: i64,
    hi: i64,
    mut f: impl FnMut(i64, RawPoint<'_>),
) -> Result<(), LayoutError> {
    let (Some(&smin), Some(&smax)) = (series.iter().min(), series.iter().max()) else {
        return Ok(());
    };
    // The index alone says which rows may hold the series; then each of
    // those, in id (commit) order.
    let mut ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM head INDEXED BY head_by_series \
             WHERE max_series >= ?1 AND min_series <= ?2 AND max_ts >= ?3 AND min_ts <= ?4",
        )?
        .query_map(params![smin, smax, lo, hi], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    let mut row = conn.prepare_cached("SELECT received_ns, data FROM head WHERE id = ?1")?;
    for id in ids {
        let mut rows = row.query([id])?;
        let Some(r) = rows.next()? else {
            continue;
        };
        let received_ns: i64 = r.get(0)?;
        let mut d = Decoder::new(blob(r.get_ref(1)?, "head", id)?, 0, received_ns)
            .map_err(bad("head", id))?;
        while let Some(p) = d.next_point().map_err(bad("head", id))? {
            if (lo..=hi).contains(&p.ts_ns) {
                f(id, p);
            }
        }
    }
    Ok(())
}

/// Decodes the points of chunk `id` within `[lo, hi]` onto `out` (those
/// `E` keeps). A chunk's
/// points are in device-time order (every writer sorts them: compaction's
/// rounds and merges, retention's trim), so the points before `lo` are
/// skipped without being handed out and decoding stops at the first point
/// after `hi`. A point older than the one before it, among those decoded,
/// is an error naming the chunk; a disorder or a corrupt tail in what is
/// stepped over or left after `hi` is not seen here (the writers keep the
/// order; ARCHITECTURE.md).
fn decode_into<E: Decoded>(
    blob: &[u8],
    series: i64,
    id: i64,
    (lo, hi): (i64, i64),
    received: Received,
    out: &mut Vec<E>,
) -> Result<(), LayoutError> {
    let mut d = Decoder::new(blob, series, 0).map_err(bad("chunks", id))?;
    if received == Received::Skip {
        d.without_received();
    }
    d.skip_before(lo).map_err(bad("chunks", id))?;
    out.reserve(d.remaining());
    let mut prev = lo;
    while let Some(p) = d.next_point().map_err(bad("chunks", id))? {
        if p.ts_ns < prev {
            return Err(bad("chunks", id)(CodecError::Order { series }));
        }
        if p.ts_ns > hi {
            break;
        }
        prev = p.ts_ns;
        if let Some(e) = E::decode(&p) {
            out.push(e);
        }
    }
    Ok(())
}

fn blob<'a>(v: ValueRef<'a>, table: &'static str, id: i64) -> Result<&'a [u8], LayoutError> {
    match v {
        ValueRef::Blob(b) => Ok(b),
        _ => Err(LayoutError::Blob {
            table,
            id,
            cause: CodecError::Header("data is not a blob"),
        }),
    }
}

impl RawPoint<'_> {
    fn point(&self) -> Point {
        Point {
            ts_ns: self.ts_ns,
            received_ns: self.received_ns,
            value: self.value.to_stored(),
        }
    }
}
