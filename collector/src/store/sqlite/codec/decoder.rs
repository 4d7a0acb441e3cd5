//! [`Decoder`]: reads a head-row or chunk blob point by point, borrowing
//! strings from it; [`Position`] is where it stands, without the borrow.

use super::{
    CodecError, FLAG_RECEIVED, FLAG_SERIES, KIND_BOOL, KIND_ERROR, KIND_F64, KIND_I64, KIND_STR,
    KIND_TIMEOUT, KIND_U64, RawPoint, RawValue, get_signed, get_varint,
};

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

impl Position {
    /// Bytes of its blob not yet read (every column's rest).
    pub fn unread_bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|&(start, end)| end.saturating_sub(start))
            .sum()
    }

    /// The bytes of `blob` not yet read, as a new, smaller buffer that this
    /// position now stands at the start of: what a cursor keeps once much
    /// of a large blob is read (the header and the points behind it are
    /// not needed again). A position that does not fit `blob` (one taken
    /// from another blob) is an error, and stays as it was.
    pub fn keep_unread(&mut self, blob: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(self.unread_bytes());
        let mut columns = self.columns;
        for (start, end) in &mut columns {
            let bytes = blob
                .get(*start..*end)
                .ok_or(CodecError::Header("position outside the blob"))?;
            *start = out.len();
            out.extend_from_slice(bytes);
            *end = out.len();
        }
        self.columns = columns;
        Ok(out)
    }
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
        let value = self.next_value(series)?;
        Ok(Some(RawPoint {
            series,
            ts_ns: self.prev_ts,
            received_ns,
            value,
        }))
    }

    /// Leaves the receive times unread: every point from here on carries
    /// the decoder's stand-in receive time instead, and the column is not
    /// checked at the end. For a reader that never uses them (PromQL): a
    /// varint per point less to decode.
    pub fn without_received(&mut self) {
        self.has_received = false;
        // Used up, but still inside the blob (a saved position stays valid).
        self.received = &self.received[self.received.len()..];
    }

    /// Skips the points before device time `lo` without handing them out,
    /// so that the next point read is the first at or after `lo`. Only for
    /// a blob whose points are in device-time order (a chunk): in one that
    /// is not, points before `lo` may follow and are read as usual. Returns
    /// how many points it skipped.
    ///
    /// Column by column rather than point by point: the ts column alone
    /// says how many points go, then each other column steps over that
    /// many at once (a run of floats or bools is one jump; only varints
    /// whose sum is needed later, the receive times and the integers, are
    /// read one by one).
    pub fn skip_before(&mut self, lo: i64) -> Result<usize, CodecError> {
        let mut ts = self.ts;
        let (mut prev_ts, mut prev_delta) = (self.prev_ts, self.prev_delta);
        let mut k = 0;
        while k < self.left {
            // The next point's device time, without taking it yet.
            let mut col = ts;
            let delta = prev_delta.wrapping_add(get_signed(&mut col, "ts")?);
            let next = prev_ts.wrapping_add(delta);
            if next >= lo {
                break;
            }
            ts = col;
            prev_delta = delta;
            prev_ts = next;
            k += 1;
        }
        if self.has_series {
            // A head blob: each skipped value's series is named if it
            // fails, so these go point by point.
            for _ in 0..k {
                self.prev_series = self
                    .prev_series
                    .wrapping_add(get_signed(&mut self.series, "series")?);
                self.skip_values(1, self.prev_series)?;
            }
        } else {
            self.skip_values(k, self.series_default)?;
        }
        if self.has_received {
            let mut received = self.prev_received;
            for _ in 0..k {
                received = received.wrapping_add(get_signed(&mut self.received, "received")?);
            }
            self.prev_received = received;
        }
        self.left -= k;
        self.ts = ts;
        self.prev_ts = prev_ts;
        self.prev_delta = prev_delta;
        Ok(k)
    }

    /// Steps over the values of the next `n` points: what
    /// [`next_value`](Self::next_value) reads, without making values of
    /// them (a text is not checked for UTF-8; it is never handed out). A
    /// run of fixed-size values is stepped over in one jump.
    fn skip_values(&mut self, mut n: usize, series: i64) -> Result<(), CodecError> {
        while n > 0 {
            self.next_run()?;
            // At most `n`, so it fits a usize.
            let take = usize::try_from(self.run_left).map_or(n, |r| r.min(n));
            let fixed = |size: usize| {
                take.checked_mul(size)
                    .ok_or(CodecError::Truncated("values"))
            };
            let bytes = match self.run_kind {
                KIND_F64 => fixed(8)?,
                KIND_BOOL => fixed(1)?,
                KIND_I64 | KIND_U64 => {
                    let mut int = self.prev_int;
                    for _ in 0..take {
                        int = int.wrapping_add(get_signed(&mut self.values, "values")?);
                    }
                    self.prev_int = int;
                    0
                }
                KIND_STR | KIND_TIMEOUT | KIND_ERROR => {
                    for _ in 0..take {
                        let len = usize::try_from(get_varint(&mut self.values, "values")?)
                            .map_err(|_| CodecError::Truncated("values"))?;
                        self.values = self
                            .values
                            .get(len..)
                            .ok_or(CodecError::Truncated("values"))?;
                    }
                    0
                }
                kind => return Err(CodecError::Kind { kind, series }),
            };
            self.values = self
                .values
                .get(bytes..)
                .ok_or(CodecError::Truncated("values"))?;
            self.run_left -= take as u64;
            n -= take;
        }
        Ok(())
    }

    /// Reads the kinds column on to a run with points left, unless the
    /// current one has some (a run of 0 points is stepped over).
    #[inline(always)]
    fn next_run(&mut self) -> Result<(), CodecError> {
        while self.run_left == 0 {
            let (&kind, tail) = self
                .kinds
                .split_first()
                .ok_or(CodecError::Truncated("kinds"))?;
            self.kinds = tail;
            self.run_kind = kind;
            self.run_left = get_varint(&mut self.kinds, "kinds")?;
        }
        Ok(())
    }

    /// The value of the point being read (its kind from the kinds column).
    #[inline(always)]
    fn next_value(&mut self, series: i64) -> Result<RawValue<'a>, CodecError> {
        self.next_run()?;
        self.run_left -= 1;
        Ok(match self.run_kind {
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
            KIND_U64 => {
                self.prev_int = self
                    .prev_int
                    .wrapping_add(get_signed(&mut self.values, "values")?);
                RawValue::U64(self.prev_int as u64)
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
        })
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
