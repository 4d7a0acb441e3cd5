//! [`Encoder`]: builds a head-row or chunk blob a point at a time (the
//! layout is described in `codec.rs`).

use super::{FLAG_RECEIVED, FLAG_SERIES, RawValue, put_signed, put_varint};

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
            // The same delta column as i64, on the value's bits: a counter
            // that grows by little costs one or two bytes either way.
            RawValue::U64(v) => {
                let bits = v as i64;
                put_signed(&mut self.values, bits.wrapping_sub(self.prev_int));
                self.prev_int = bits;
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
