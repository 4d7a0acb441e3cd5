//! The byte layout of readings in the SQLite store: one encoder and one
//! decoder for both kinds of blob.
//!
//! - A **head** row holds one committed batch: many series, in arrival
//!   order, all received at one moment (`received_ns` is a column of the row,
//!   not of the blob).
//! - A **chunk** holds points of one series in device-time order, each with
//!   its own receive time (the series id is a column of the row).
//!
//! A blob is columnar, so similar bytes sit together and every column is a
//! run of small integers:
//!
//! ```text
//! flags u8 (1 = series column, 2 = received column) | count varint
//! | len(series)? varint | len(ts) varint | len(received)? varint | len(kinds) varint
//! | series: zigzag varint delta from the previous series id
//! | ts: zigzag varint delta-of-delta (regular sampling costs one byte)
//! | received: zigzag varint delta from the previous receive time
//! | kinds: runs of (kind u8, length varint)
//! | values: f64 as 8 bytes LE (every bit kept: NaN payloads, -0.0, ±Inf);
//! |         i64 as zigzag varint delta from the previous i64 of the blob;
//! |         bool as one byte; strings and failure messages as varint length + UTF-8
//! ```
//!
//! Deltas wrap (two's complement), so any i64 round-trips. Encoding appends
//! to vectors the encoder keeps (no allocation per reading once they have
//! grown); decoding borrows strings from the blob. A blob that does not
//! decode is an error, never a panic.

use crate::model::StoredValue;

/// The blob has a series column (head rows).
const FLAG_SERIES: u8 = 1;
/// The blob has a received column (chunks).
const FLAG_RECEIVED: u8 = 2;

/// Kind codes, as `StoredValue::kind_code`.
const KIND_F64: u8 = 0;
const KIND_I64: u8 = 1;
const KIND_BOOL: u8 = 2;
const KIND_STR: u8 = 3;
const KIND_TIMEOUT: u8 = 4;
const KIND_ERROR: u8 = 5;

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("blob header: {0}")]
    Header(&'static str),
    #[error("{0} column is truncated")]
    Truncated(&'static str),
    #[error("{0} column has a varint longer than 10 bytes")]
    Varint(&'static str),
    #[error("unknown kind {kind} (series {series})")]
    Kind { kind: u8, series: i64 },
    #[error("bool value byte {byte} (series {series})")]
    Bool { byte: u8, series: i64 },
    #[error("text value of series {series} is not UTF-8")]
    Utf8 { series: i64 },
    #[error("{column} column has {bytes} bytes left after the last point")]
    Trailing { column: &'static str, bytes: usize },
}

/// A value borrowed from a blob or from a `StoredValue`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(&'a str),
    Timeout(&'a str),
    Error(&'a str),
}

impl<'a> RawValue<'a> {
    pub fn of(v: &'a StoredValue) -> Self {
        match v {
            StoredValue::F64(v) => RawValue::F64(*v),
            StoredValue::I64(v) => RawValue::I64(*v),
            StoredValue::Bool(v) => RawValue::Bool(*v),
            StoredValue::Str(s) => RawValue::Str(s),
            StoredValue::Timeout(s) => RawValue::Timeout(s),
            StoredValue::Error(s) => RawValue::Error(s),
        }
    }

    pub fn to_stored(self) -> StoredValue {
        match self {
            RawValue::F64(v) => StoredValue::F64(v),
            RawValue::I64(v) => StoredValue::I64(v),
            RawValue::Bool(v) => StoredValue::Bool(v),
            RawValue::Str(s) => StoredValue::Str(s.to_owned()),
            RawValue::Timeout(s) => StoredValue::Timeout(s.to_owned()),
            RawValue::Error(s) => StoredValue::Error(s.to_owned()),
        }
    }

    fn kind(self) -> u8 {
        match self {
            RawValue::F64(_) => KIND_F64,
            RawValue::I64(_) => KIND_I64,
            RawValue::Bool(_) => KIND_BOOL,
            RawValue::Str(_) => KIND_STR,
            RawValue::Timeout(_) => KIND_TIMEOUT,
            RawValue::Error(_) => KIND_ERROR,
        }
    }
}

/// One decoded point. `series` / `received_ns` come from the blob when it
/// has those columns, else from what the decoder was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawPoint<'a> {
    pub series: i64,
    pub ts_ns: i64,
    pub received_ns: i64,
    pub value: RawValue<'a>,
}

/// Builds one blob, a point at a time. Reusable: `clear` keeps the
/// capacity.
#[derive(Debug, Clone)]
pub struct Encoder {
    flags: u8,
    count: usize,
    /// Device times never went down (a chunk must be in time order).
    sorted: bool,
    min_ts: i64,
    max_ts: i64,
    min_series: i64,
    max_series: i64,
    prev_series: i64,
    prev_ts: i64,
    prev_delta: i64,
    prev_received: i64,
    prev_int: i64,
    series: Vec<u8>,
    ts: Vec<u8>,
    received: Vec<u8>,
    kinds: Vec<(u8, u64)>,
    values: Vec<u8>,
}

impl Encoder {
    fn new(flags: u8) -> Self {
        Encoder {
            flags,
            count: 0,
            sorted: true,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            min_series: i64::MAX,
            max_series: i64::MIN,
            prev_series: 0,
            prev_ts: 0,
            prev_delta: 0,
            prev_received: 0,
            prev_int: 0,
            series: Vec::new(),
            ts: Vec::new(),
            received: Vec::new(),
            kinds: Vec::new(),
            values: Vec::new(),
        }
    }

    /// For a head row: series ids kept, receive time left to the row.
    pub fn head() -> Self {
        Encoder::new(FLAG_SERIES)
    }

    /// For a chunk: one series (left to the row), receive time per point.
    pub fn chunk() -> Self {
        Encoder::new(FLAG_RECEIVED)
    }

    /// Forgets every point, keeping the buffers.
    pub fn clear(&mut self) {
        self.count = 0;
        self.sorted = true;
        self.min_ts = i64::MAX;
        self.max_ts = i64::MIN;
        self.min_series = i64::MAX;
        self.max_series = i64::MIN;
        self.prev_series = 0;
        self.prev_ts = 0;
        self.prev_delta = 0;
        self.prev_received = 0;
        self.prev_int = 0;
        self.series.clear();
        self.ts.clear();
        self.received.clear();
        self.kinds.clear();
        self.values.clear();
    }

    /// Appends a point. `series` is ignored by a chunk encoder,
    /// `received_ns` by a head encoder.
    #[inline]
    pub fn push(&mut self, series: i64, ts_ns: i64, received_ns: i64, value: RawValue<'_>) {
        if self.flags & FLAG_SERIES != 0 {
            put_signed(&mut self.series, series.wrapping_sub(self.prev_series));
            self.prev_series = series;
            self.min_series = self.min_series.min(series);
            self.max_series = self.max_series.max(series);
        }
        if self.count > 0 && ts_ns < self.prev_ts {
            self.sorted = false;
        }
        let delta = ts_ns.wrapping_sub(self.prev_ts);
        put_signed(&mut self.ts, delta.wrapping_sub(self.prev_delta));
        self.prev_ts = ts_ns;
        self.prev_delta = delta;
        self.min_ts = self.min_ts.min(ts_ns);
        self.max_ts = self.max_ts.max(ts_ns);
        if self.flags & FLAG_RECEIVED != 0 {
            put_signed(
                &mut self.received,
                received_ns.wrapping_sub(self.prev_received),
            );
            self.prev_received = received_ns;
        }
        let kind = value.kind();
        match self.kinds.last_mut() {
            Some((k, run)) if *k == kind => *run += 1,
            _ => self.kinds.push((kind, 1)),
        }
        match value {
            RawValue::F64(v) => self.values.extend_from_slice(&v.to_bits().to_le_bytes()),
            RawValue::I64(v) => {
                put_signed(&mut self.values, v.wrapping_sub(self.prev_int));
                self.prev_int = v;
            }
            RawValue::Bool(v) => self.values.push(u8::from(v)),
            RawValue::Str(s) | RawValue::Timeout(s) | RawValue::Error(s) => {
                put_varint(&mut self.values, s.len() as u64);
                self.values.extend_from_slice(s.as_bytes());
            }
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the device times arrived in order (ties allowed).
    pub fn is_sorted(&self) -> bool {
        self.sorted
    }

    /// Smallest and largest device time; `(i64::MAX, i64::MIN)` when empty.
    pub fn ts_range(&self) -> (i64, i64) {
        (self.min_ts, self.max_ts)
    }

    /// Smallest and largest series id (head encoders only).
    pub fn series_range(&self) -> (i64, i64) {
        (self.min_series, self.max_series)
    }

    /// Bytes the encoded points take (about what the blob will).
    pub fn encoded_bytes(&self) -> usize {
        self.series.len() + self.ts.len() + self.received.len() + self.values.len()
    }

    /// Appends the blob to `out`.
    pub fn finish_into(&self, out: &mut Vec<u8>) {
        let mut kinds = Vec::with_capacity(self.kinds.len() * 3);
        for &(kind, run) in &self.kinds {
            kinds.push(kind);
            put_varint(&mut kinds, run);
        }
        out.reserve(24 + self.encoded_bytes() + kinds.len());
        out.push(self.flags);
        put_varint(out, self.count as u64);
        if self.flags & FLAG_SERIES != 0 {
            put_varint(out, self.series.len() as u64);
        }
        put_varint(out, self.ts.len() as u64);
        if self.flags & FLAG_RECEIVED != 0 {
            put_varint(out, self.received.len() as u64);
        }
        put_varint(out, kinds.len() as u64);
        out.extend_from_slice(&self.series);
        out.extend_from_slice(&self.ts);
        out.extend_from_slice(&self.received);
        out.extend_from_slice(&kinds);
        out.extend_from_slice(&self.values);
    }

    /// The blob as a new vector.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }
}

/// A [`Decoder`]'s place in its blob, without the borrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    left: usize,
    series_default: i64,
    received_default: i64,
    has_series: bool,
    has_received: bool,
    /// Byte ranges left of the series, ts, received, kinds and values
    /// columns.
    columns: [(usize, usize); 5],
    prev: [i64; 5],
    run_kind: u8,
    run_left: u64,
}

/// Reads a blob point by point.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    left: usize,
    series_default: i64,
    received_default: i64,
    has_series: bool,
    has_received: bool,
    series: &'a [u8],
    ts: &'a [u8],
    received: &'a [u8],
    kinds: &'a [u8],
    values: &'a [u8],
    prev_series: i64,
    prev_ts: i64,
    prev_delta: i64,
    prev_received: i64,
    prev_int: i64,
    run_kind: u8,
    run_left: u64,
}

impl<'a> Decoder<'a> {
    /// A decoder for `blob`; `series` and `received_ns` stand in for the
    /// columns the blob does not have.
    pub fn new(blob: &'a [u8], series: i64, received_ns: i64) -> Result<Self, CodecError> {
        let mut rest = blob;
        let (&flags, tail) = rest.split_first().ok_or(CodecError::Header("empty blob"))?;
        rest = tail;
        if flags & !(FLAG_SERIES | FLAG_RECEIVED) != 0 {
            return Err(CodecError::Header("unknown flags"));
        }
        let has_series = flags & FLAG_SERIES != 0;
        let has_received = flags & FLAG_RECEIVED != 0;
        let count = get_varint(&mut rest, "header")?;
        let mut len = |present: bool| -> Result<usize, CodecError> {
            if !present {
                return Ok(0);
            }
            usize::try_from(get_varint(&mut rest, "header")?)
                .map_err(|_| CodecError::Header("column length"))
        };
        let series_len = len(has_series)?;
        let ts_len = len(true)?;
        let received_len = len(has_received)?;
        let kinds_len = len(true)?;
        let mut take = |n: usize, column: &'static str| -> Result<&'a [u8], CodecError> {
            if n > rest.len() {
                return Err(CodecError::Truncated(column));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let series_col = take(series_len, "series")?;
        let ts = take(ts_len, "ts")?;
        let received = take(received_len, "received")?;
        let kinds = take(kinds_len, "kinds")?;
        // Every point takes at least one byte of the ts column.
        let left = usize::try_from(count)
            .ok()
            .filter(|&n| n <= ts.len())
            .ok_or(CodecError::Header("count larger than the ts column"))?;
        Ok(Decoder {
            left,
            series_default: series,
            received_default: received_ns,
            has_series,
            has_received,
            series: series_col,
            ts,
            received,
            kinds,
            values: rest,
            prev_series: 0,
            prev_ts: 0,
            prev_delta: 0,
            prev_received: 0,
            prev_int: 0,
            run_kind: 0,
            run_left: 0,
        })
    }

    /// Points not yet read.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Where this decoder stands in `blob` (the blob it was made from), so
    /// that [`Decoder::resume`] can go on from here later: a cursor that is
    /// kept between calls without borrowing its blob.
    pub fn position(&self, blob: &[u8]) -> Position {
        let base = blob.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).wrapping_sub(base);
            (start, start.wrapping_add(s.len()))
        };
        Position {
            left: self.left,
            series_default: self.series_default,
            received_default: self.received_default,
            has_series: self.has_series,
            has_received: self.has_received,
            columns: [
                at(self.series),
                at(self.ts),
                at(self.received),
                at(self.kinds),
                at(self.values),
            ],
            prev: [
                self.prev_series,
                self.prev_ts,
                self.prev_delta,
                self.prev_received,
                self.prev_int,
            ],
            run_kind: self.run_kind,
            run_left: self.run_left,
        }
    }

    /// A decoder of `blob` standing at `pos` (taken from a decoder of the
    /// same blob). A position that does not fit the blob is an error.
    pub fn resume(blob: &'a [u8], pos: &Position) -> Result<Self, CodecError> {
        let col = |i: usize| -> Result<&'a [u8], CodecError> {
            let (start, end) = pos.columns[i];
            blob.get(start..end)
                .ok_or(CodecError::Header("position outside the blob"))
        };
        Ok(Decoder {
            left: pos.left,
            series_default: pos.series_default,
            received_default: pos.received_default,
            has_series: pos.has_series,
            has_received: pos.has_received,
            series: col(0)?,
            ts: col(1)?,
            received: col(2)?,
            kinds: col(3)?,
            values: col(4)?,
            prev_series: pos.prev[0],
            prev_ts: pos.prev[1],
            prev_delta: pos.prev[2],
            prev_received: pos.prev[3],
            prev_int: pos.prev[4],
            run_kind: pos.run_kind,
            run_left: pos.run_left,
        })
    }

    /// The series of the next point, without reading it; `None` after the
    /// last point (or if the series column is broken: reading the point
    /// then says why).
    #[inline]
    pub fn peek_series(&self) -> Option<i64> {
        if self.left == 0 {
            return None;
        }
        if !self.has_series {
            return Some(self.series_default);
        }
        let mut col = self.series;
        get_signed(&mut col, "series")
            .ok()
            .map(|d| self.prev_series.wrapping_add(d))
    }

    /// The next point, `None` after the last (having checked that every
    /// column was used up exactly).
    #[inline]
    pub fn next_point(&mut self) -> Result<Option<RawPoint<'a>>, CodecError> {
        if self.left == 0 {
            self.check_end()?;
            return Ok(None);
        }
        self.left -= 1;
        let series = if self.has_series {
            self.prev_series = self
                .prev_series
                .wrapping_add(get_signed(&mut self.series, "series")?);
            self.prev_series
        } else {
            self.series_default
        };
        let dd = get_signed(&mut self.ts, "ts")?;
        self.prev_delta = self.prev_delta.wrapping_add(dd);
        self.prev_ts = self.prev_ts.wrapping_add(self.prev_delta);
        let received_ns = if self.has_received {
            self.prev_received = self
                .prev_received
                .wrapping_add(get_signed(&mut self.received, "received")?);
            self.prev_received
        } else {
            self.received_default
        };
        while self.run_left == 0 {
            let (&kind, tail) = self
                .kinds
                .split_first()
                .ok_or(CodecError::Truncated("kinds"))?;
            self.kinds = tail;
            self.run_kind = kind;
            self.run_left = get_varint(&mut self.kinds, "kinds")?;
        }
        self.run_left -= 1;
        let value = match self.run_kind {
            KIND_F64 => {
                let bytes: [u8; 8] = self
                    .values
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(CodecError::Truncated("values"))?;
                self.values = &self.values[8..];
                RawValue::F64(f64::from_bits(u64::from_le_bytes(bytes)))
            }
            KIND_I64 => {
                self.prev_int = self
                    .prev_int
                    .wrapping_add(get_signed(&mut self.values, "values")?);
                RawValue::I64(self.prev_int)
            }
            KIND_BOOL => {
                let (&byte, tail) = self
                    .values
                    .split_first()
                    .ok_or(CodecError::Truncated("values"))?;
                self.values = tail;
                match byte {
                    0 => RawValue::Bool(false),
                    1 => RawValue::Bool(true),
                    byte => return Err(CodecError::Bool { byte, series }),
                }
            }
            kind @ (KIND_STR | KIND_TIMEOUT | KIND_ERROR) => {
                let n = usize::try_from(get_varint(&mut self.values, "values")?)
                    .ok()
                    .filter(|&n| n <= self.values.len())
                    .ok_or(CodecError::Truncated("values"))?;
                let (text, tail) = self.values.split_at(n);
                self.values = tail;
                let text = std::str::from_utf8(text).map_err(|_| CodecError::Utf8 { series })?;
                match kind {
                    KIND_STR => RawValue::Str(text),
                    KIND_TIMEOUT => RawValue::Timeout(text),
                    _ => RawValue::Error(text),
                }
            }
            kind => return Err(CodecError::Kind { kind, series }),
        };
        Ok(Some(RawPoint {
            series,
            ts_ns: self.prev_ts,
            received_ns,
            value,
        }))
    }

    fn check_end(&self) -> Result<(), CodecError> {
        for (column, rest) in [
            ("series", self.series),
            ("ts", self.ts),
            ("received", self.received),
            ("kinds", self.kinds),
            ("values", self.values),
        ] {
            if !rest.is_empty() {
                return Err(CodecError::Trailing {
                    column,
                    bytes: rest.len(),
                });
            }
        }
        if self.run_left != 0 {
            return Err(CodecError::Trailing {
                column: "kinds",
                bytes: 0,
            });
        }
        Ok(())
    }

    /// Every remaining point, in blob order.
    pub fn collect_points(mut self) -> Result<Vec<RawPoint<'a>>, CodecError> {
        let mut out = Vec::with_capacity(self.left);
        while let Some(p) = self.next_point()? {
            out.push(p);
        }
        Ok(out)
    }
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

#[inline]
fn get_varint(buf: &mut &[u8], column: &'static str) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(v);
        }
    }
    if buf.len() >= 10 {
        Err(CodecError::Varint(column))
    } else {
        Err(CodecError::Truncated(column))
    }
}

#[inline]
fn get_signed(buf: &mut &[u8], column: &'static str) -> Result<i64, CodecError> {
    let v = get_varint(buf, column)?;
    Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn owned(p: RawPoint<'_>) -> (i64, i64, i64, StoredValue) {
        (p.series, p.ts_ns, p.received_ns, p.value.to_stored())
    }

    /// Bitwise equality, so NaN payloads and -0.0 count.
    fn same(a: &StoredValue, b: &StoredValue) -> bool {
        match (a, b) {
            (StoredValue::F64(x), StoredValue::F64(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    fn every_kind() -> Vec<StoredValue> {
        vec![
            StoredValue::F64(1.5),
            StoredValue::F64(f64::NAN),
            StoredValue::F64(f64::from_bits(0x7ff8_dead_beef_0001)),
            StoredValue::F64(f64::INFINITY),
            StoredValue::F64(f64::NEG_INFINITY),
            StoredValue::F64(-0.0),
            StoredValue::I64(i64::MIN),
            StoredValue::I64(i64::MAX),
            StoredValue::I64(-7),
            StoredValue::Bool(true),
            StoredValue::Bool(false),
            StoredValue::Str(String::new()),
            StoredValue::Str("on, \"really\" ✓".into()),
            StoredValue::Timeout("no answer in 1s".into()),
            StoredValue::Error(String::new()),
            StoredValue::Error("connection refused".into()),
        ]
    }

    #[test]
    fn a_decoder_resumed_from_its_position_reads_on_where_it_stood() {
        let values = every_kind();
        let mut head = Encoder::head();
        for (i, v) in values.iter().enumerate() {
            head.push(i as i64 / 3, 1000 - i as i64 * 7, 0, RawValue::of(v));
        }
        let blob = head.finish();
        let all: Vec<_> = Decoder::new(&blob, 0, 5)
            .unwrap()
            .collect_points()
            .unwrap()
            .into_iter()
            .map(owned)
            .collect();
        // Read one point per fresh decoder, resuming each time.
        let mut pos = Decoder::new(&blob, 0, 5).unwrap().position(&blob);
        let mut got = Vec::new();
        loop {
            let mut d = Decoder::resume(&blob, &pos).unwrap();
            let peeked = d.peek_series();
            let Some(p) = d.next_point().unwrap() else {
                assert_eq!(peeked, None);
                break;
            };
            assert_eq!(peeked, Some(p.series));
            got.push(owned(p));
            pos = d.position(&blob);
        }
        assert_eq!(got.len(), all.len());
        for (a, b) in got.iter().zip(&all) {
            assert_eq!((a.0, a.1, a.2), (b.0, b.1, b.2));
            assert!(same(&a.3, &b.3));
        }
        // A position that does not fit the blob is an error, not a panic.
        let start = Decoder::new(&blob, 0, 5).unwrap().position(&blob);
        assert!(Decoder::resume(&blob[..blob.len() / 2], &start).is_err());
    }

    #[test]
    fn every_kind_round_trips_in_a_head_and_a_chunk() {
        let values = every_kind();
        // Timestamps jumping both ways, across the whole i64 range.
        let ts = [
            0,
            -5,
            i64::MIN,
            i64::MAX,
            1,
            1,
            -1_000_000_000,
            3,
            i64::MAX - 1,
            i64::MIN + 1,
            0,
            7,
            7,
            -7,
            100,
            99,
        ];
        let series = [
            3,
            1,
            i64::MAX,
            1,
            i64::MIN,
            2,
            2,
            2,
            9,
            0,
            -4,
            5,
            5,
            5,
            6,
            1,
        ];
        let mut head = Encoder::head();
        let mut chunk = Encoder::chunk();
        for (i, v) in values.iter().enumerate() {
            head.push(series[i], ts[i], 0, RawValue::of(v));
            chunk.push(0, ts[i], ts[i].wrapping_mul(3), RawValue::of(v));
        }
        assert!(!chunk.is_sorted());
        assert_eq!(head.series_range(), (i64::MIN, i64::MAX));
        assert_eq!(chunk.ts_range(), (i64::MIN, i64::MAX));
        let head_blob = head.finish();
        let chunk_blob = chunk.finish();
        let got = Decoder::new(&head_blob, 0, 42)
            .unwrap()
            .collect_points()
            .unwrap();
        assert_eq!(got.len(), values.len());
        for (i, p) in got.into_iter().map(owned).enumerate() {
            assert_eq!((p.0, p.1, p.2), (series[i], ts[i], 42), "head point {i}");
            assert!(same(&p.3, &values[i]), "head point {i}: {:?}", p.3);
        }
        let got = Decoder::new(&chunk_blob, 77, 0)
            .unwrap()
            .collect_points()
            .unwrap();
        for (i, p) in got.into_iter().map(owned).enumerate() {
            assert_eq!(
                (p.0, p.1, p.2),
                (77, ts[i], ts[i].wrapping_mul(3)),
                "chunk point {i}"
            );
            assert!(same(&p.3, &values[i]), "chunk point {i}: {:?}", p.3);
        }
    }

    #[test]
    fn empty_blobs_and_reuse() {
        let mut e = Encoder::chunk();
        let blob = e.finish();
        assert!(
            Decoder::new(&blob, 1, 1)
                .unwrap()
                .next_point()
                .unwrap()
                .is_none()
        );
        e.push(0, 5, 6, RawValue::I64(1));
        e.clear();
        assert!(e.is_empty() && e.is_sorted());
        e.push(0, 9, 10, RawValue::Bool(true));
        let blob = e.finish();
        let p = Decoder::new(&blob, 1, 0).unwrap().collect_points().unwrap();
        assert_eq!(
            p,
            [RawPoint {
                series: 1,
                ts_ns: 9,
                received_ns: 10,
                value: RawValue::Bool(true)
            }]
        );
    }

    #[test]
    fn regular_float_series_take_about_ten_bytes_a_point() {
        let mut e = Encoder::chunk();
        for i in 0..4096i64 {
            e.push(
                0,
                1_700_000_000_000_000_000 + i * 1_000_000_000,
                0,
                RawValue::F64(i as f64 * 0.5),
            );
        }
        let blob = e.finish();
        assert!(blob.len() < 4096 * 10 + 64, "{} bytes", blob.len());
    }

    #[test]
    fn damaged_blobs_are_errors() {
        let mut e = Encoder::head();
        e.push(9, 10, 0, RawValue::Str("hello"));
        e.push(9, 20, 0, RawValue::F64(2.0));
        let blob = e.finish();
        fn decode(b: &[u8]) -> Result<Vec<RawPoint<'_>>, CodecError> {
            Decoder::new(b, 0, 0)?.collect_points()
        }
        assert!(decode(&blob).is_ok());
        for cut in 0..blob.len() {
            assert!(decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(CodecError::Trailing {
                column: "values",
                ..
            })
        ));
        // Flip the kind of the first run to 17.
        let kinds_at = blob.len() - (1 + 5 + 8) - 4;
        let mut bad = blob.clone();
        assert_eq!(bad[kinds_at], KIND_STR);
        bad[kinds_at] = 17;
        let err = decode(&bad).unwrap_err();
        assert_eq!(
            err,
            CodecError::Kind {
                kind: 17,
                series: 9
            }
        );
        assert!(err.to_string().contains("unknown kind 17 (series 9)"));
        assert!(decode(&[0xff]).is_err());
        assert!(decode(&[]).is_err());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = StoredValue> {
            prop_oneof![
                any::<u64>().prop_map(|b| StoredValue::F64(f64::from_bits(b))),
                any::<f64>().prop_map(StoredValue::F64),
                any::<i64>().prop_map(StoredValue::I64),
                any::<bool>().prop_map(StoredValue::Bool),
                ".{0,12}".prop_map(StoredValue::Str),
                ".{0,12}".prop_map(StoredValue::Timeout),
                ".{0,12}".prop_map(StoredValue::Error),
            ]
        }

        proptest! {
            #[test]
            fn any_points_round_trip(
                points in proptest::collection::vec((any::<i64>(), any::<i64>(), any::<i64>(), value()), 0..64),
                head in any::<bool>(),
            ) {
                let mut e = if head { Encoder::head() } else { Encoder::chunk() };
                for (s, ts, rx, v) in &points {
                    e.push(*s, *ts, *rx, RawValue::of(v));
                }
                let blob = e.finish();
                let got = Decoder::new(&blob, -1, -2).unwrap().collect_points().unwrap();
                prop_assert_eq!(got.len(), points.len());
                for (p, (s, ts, rx, v)) in got.iter().zip(&points) {
                    prop_assert_eq!(p.series, if head { *s } else { -1 });
                    prop_assert_eq!(p.received_ns, if head { -2 } else { *rx });
                    prop_assert_eq!(p.ts_ns, *ts);
                    prop_assert!(same(&p.value.to_stored(), v));
                }
            }

            #[test]
            fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(d) = Decoder::new(&bytes, 0, 0) {
                    let _ = d.collect_points();
                }
            }
        }
    }
}
