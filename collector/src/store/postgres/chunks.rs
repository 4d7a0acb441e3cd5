//! The rows of `readings_chunks` (migration 7): a commit's readings grouped
//! per series into chunks of at most [`CHUNK_POINTS`] points sorted by
//! device time, each column an array (`write.rs` sends them with binary
//! COPY; tokio-postgres writes the array format: dimensions, a has-nulls
//! flag, the element type, then each element length-prefixed, -1 for NULL).

use crate::model::{NewReading, StoredValue};

/// Most points in one chunk row: a commit holding many batches of one
/// series (a spool replay) is cut, so a read of a short window never has to
/// take a very long row.
pub(super) const CHUNK_POINTS: usize = 512;

/// Every row's points lie within one aligned interval of this many
/// nanoseconds of device time (a minute), so `ts_max - ts_min <
/// CHUNK_SPAN_NS`: a read of `[lo, hi]` takes the rows with `ts_max` in
/// `[lo, hi + CHUNK_SPAN_NS)`, a bounded range of the `(series_id, ts_max)`
/// index, instead of every row after `lo`. Part of the schema's contract:
/// `tributary_readings_between` (migration 7) has the same number.
pub(super) const CHUNK_SPAN_NS: i64 = 60_000_000_000;

/// The largest `ts_max` a row holding a point at or before `hi` can have
/// (saturating).
pub(super) fn ts_max_bound(hi: i64) -> i64 {
    hi.saturating_add(CHUNK_SPAN_NS - 1)
}

/// The columns `COPY readings_chunks` takes, in order.
pub(super) const COPY_CHUNKS: &str = "COPY readings_chunks \
     (series_id, ts_min, ts_max, ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
     FROM STDIN (FORMAT binary)";

/// One row of `readings_chunks`, its points sorted by device time. A value
/// array is `None` when no point uses it, and otherwise holds an element
/// per point, NULL where the point's kind does not use it.
#[derive(Debug, PartialEq)]
pub(super) struct Chunk<'a> {
    pub series_id: i64,
    pub ts_ns: Vec<i64>,
    pub received_ns: Vec<i64>,
    pub kind: Vec<i16>,
    pub v_f64: Option<Vec<Option<f64>>>,
    pub v_i64: Option<Vec<Option<i64>>>,
    pub v_text: Option<Vec<Option<&'a str>>>,
}

impl<'a> Chunk<'a> {
    fn new(series_id: i64, n: usize) -> Self {
        Chunk {
            series_id,
            ts_ns: Vec::with_capacity(n),
            received_ns: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            v_f64: None,
            v_i64: None,
            v_text: None,
        }
    }

    /// Appends a point (after every point already held, by device time).
    fn push(&mut self, received_ns: i64, r: &'a NewReading) {
        let i = self.ts_ns.len();
        self.ts_ns.push(r.ts_ns);
        self.received_ns.push(received_ns);
        self.kind.push(r.value.kind_code() as i16);
        match &r.value {
            StoredValue::F64(v) => put(&mut self.v_f64, i, *v),
            StoredValue::I64(v) => put(&mut self.v_i64, i, *v),
            // The bits as a bigint (kind 6 tells them apart).
            StoredValue::U64(v) => put(&mut self.v_i64, i, *v as i64),
            StoredValue::Bool(v) => put(&mut self.v_i64, i, i64::from(*v)),
            StoredValue::Str(v) | StoredValue::Timeout(v) | StoredValue::Error(v) => {
                put(&mut self.v_text, i, v.as_str())
            }
        }
    }

    /// The first and last device time (`ts_min`, `ts_max`); a chunk is
    /// never empty.
    pub fn span(&self) -> (i64, i64) {
        let first = self.ts_ns.first().copied().unwrap_or_default();
        let last = self.ts_ns.last().copied().unwrap_or_default();
        (first, last)
    }
}

/// Sets element `i` of a value array, creating it (NULL up to `i`) and
/// padding it with NULLs as needed.
fn put<T>(array: &mut Option<Vec<Option<T>>>, i: usize, v: T) {
    let a = array.get_or_insert_with(Vec::new);
    a.resize_with(i, || None);
    a.push(Some(v));
}

/// The chunks of `readings` (each with its batch's receive time): per
/// series, in series id order, the points sorted by device time (points of
/// equal time in the order given), cut every [`CHUNK_POINTS`] and wherever
/// the time enters the next [`CHUNK_SPAN_NS`] interval.
pub(super) fn chunks<'a>(readings: impl Iterator<Item = (i64, &'a NewReading)>) -> Vec<Chunk<'a>> {
    let mut all: Vec<(i64, &NewReading)> = readings.collect();
    // Stable: equal (series, time) keep their arrival order.
    all.sort_by_key(|(_, r)| (r.series_id, r.ts_ns));
    let mut out: Vec<Chunk> = Vec::new();
    let interval = |r: &NewReading| r.ts_ns.div_euclid(CHUNK_SPAN_NS);
    for run in all.chunk_by(|a, b| a.1.series_id == b.1.series_id && interval(a.1) == interval(b.1))
    {
        for part in run.chunks(CHUNK_POINTS) {
            let mut chunk = Chunk::new(part[0].1.series_id, part.len());
            for (received_ns, r) in part {
                chunk.push(*received_ns, r);
            }
            // Value arrays as long as the others.
            let n = chunk.ts_ns.len();
            pad(&mut chunk.v_f64, n);
            pad(&mut chunk.v_i64, n);
            pad(&mut chunk.v_text, n);
            out.push(chunk);
        }
    }
    out
}

fn pad<T>(array: &mut Option<Vec<Option<T>>>, n: usize) {
    if let Some(a) = array {
        a.resize_with(n, || None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(series_id: i64, ts_ns: i64, value: StoredValue) -> NewReading {
        NewReading {
            series_id,
            ts_ns,
            value,
        }
    }

    #[test]
    fn chunks_group_by_series_sorted_by_time_with_sparse_value_arrays() {
        let readings = [
            reading(2, 30, StoredValue::F64(f64::NAN)),
            reading(1, 20, StoredValue::Str("on".into())),
            reading(2, 10, StoredValue::U64(u64::MAX)),
            reading(1, 20, StoredValue::I64(-7)),
            reading(2, 20, StoredValue::Bool(true)),
        ];
        let got = chunks(
            readings
                .iter()
                .enumerate()
                .map(|(i, r)| (100 + i as i64, r)),
        );
        assert_eq!(got.len(), 2);
        let one = &got[0];
        assert_eq!(one.series_id, 1);
        assert_eq!(one.ts_ns, [20, 20]);
        // Equal times keep their order.
        assert_eq!(one.received_ns, [101, 103]);
        assert_eq!(one.kind, [3, 1]);
        assert_eq!(one.v_f64, None);
        assert_eq!(one.v_i64, Some(vec![None, Some(-7)]));
        assert_eq!(one.v_text, Some(vec![Some("on"), None]));
        assert_eq!(one.span(), (20, 20));
        let two = &got[1];
        assert_eq!(two.series_id, 2);
        assert_eq!(two.ts_ns, [10, 20, 30]);
        assert_eq!(two.received_ns, [102, 104, 100]);
        assert_eq!(two.kind, [6, 2, 0]);
        assert_eq!(two.v_i64, Some(vec![Some(-1), Some(1), None]));
        let f = two
            .v_f64
            .as_ref()
            .map(|a| a.iter().map(|v| v.map(f64::is_nan)).collect());
        assert_eq!(f, Some(vec![None, None, Some(true)]));
        assert_eq!(two.v_text, None);
        assert_eq!(two.span(), (10, 30));
    }

    #[test]
    fn a_long_series_is_cut_every_chunk_points() {
        let readings: Vec<NewReading> = (0..CHUNK_POINTS as i64 * 2 + 1)
            .rev()
            .map(|t| reading(5, t, StoredValue::I64(t)))
            .collect();
        let got = chunks(readings.iter().map(|r| (0, r)));
        let sizes: Vec<usize> = got.iter().map(|c| c.ts_ns.len()).collect();
        assert_eq!(sizes, [CHUNK_POINTS, CHUNK_POINTS, 1]);
        let n = CHUNK_POINTS as i64;
        assert_eq!(got[0].span(), (0, n - 1));
        assert_eq!(got[1].span(), (n, 2 * n - 1));
        assert_eq!(got[2].span(), (2 * n, 2 * n));
    }

    #[test]
    fn rows_are_cut_where_time_enters_the_next_span_interval() {
        let m = CHUNK_SPAN_NS;
        let times = [-m - 1, -1, 0, 5, m - 1, m, 3 * m + 7, 3 * m + 8];
        let readings: Vec<NewReading> = times
            .iter()
            .map(|&t| reading(9, t, StoredValue::F64(1.0)))
            .collect();
        let got = chunks(readings.iter().map(|r| (0, r)));
        let spans: Vec<(i64, i64)> = got.iter().map(Chunk::span).collect();
        assert_eq!(
            spans,
            [
                (-m - 1, -m - 1),
                (-1, -1),
                (0, m - 1),
                (m, m),
                (3 * m + 7, 3 * m + 8)
            ]
        );
        for (lo, hi) in spans {
            assert!(hi - lo < CHUNK_SPAN_NS && ts_max_bound(lo) >= hi);
        }
        assert_eq!(ts_max_bound(i64::MAX), i64::MAX);
    }
}
