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
//! |         i64 as zigzag varint delta from the previous i64 or u64 of the blob;
//! |         u64 the same, on its bits as an i64 (kind 6, added later: a
//! |         blob without it reads as before);
//! |         bool as one byte; strings and failure messages as varint length + UTF-8
//! ```
//!
//! Deltas wrap (two's complement), so any i64 round-trips. Encoding appends
//! to vectors the encoder keeps (no allocation per reading once they have
//! grown); decoding borrows strings from the blob. A blob that does not
//! decode is an error, never a panic.
//!
//! Owns: the blob format (`encoder.rs` writes it, `decoder.rs` reads it,
//! `tests.rs`). May touch: `crate::model::StoredValue` only; no database,
//! so the SQLite backend is its only user and nothing above `sqlite/` sees
//! a blob.

use crate::model::StoredValue;

mod decoder;
mod encoder;
#[cfg(test)]
mod tests;

pub use decoder::{Decoder, Position};
pub use encoder::Encoder;

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
const KIND_U64: u8 = 6;

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
    #[error("points of series {series} are not in device-time order")]
    Order { series: i64 },
    #[error("{column} column has {bytes} bytes left after the last point")]
    Trailing { column: &'static str, bytes: usize },
    #[error("the newest points of series {series} are not at the row's max_ts {max_ts}")]
    MaxTs { series: i64, max_ts: i64 },
}

/// A value borrowed from a blob or from a `StoredValue`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
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
            StoredValue::U64(v) => RawValue::U64(*v),
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
            RawValue::U64(v) => StoredValue::U64(v),
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
            RawValue::U64(_) => KIND_U64,
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
    // Most are one byte (regular sampling, small deltas).
    if let Some((&b, rest)) = buf.split_first()
        && b < 0x80
    {
        *buf = rest;
        return Ok(u64::from(b));
    }
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
