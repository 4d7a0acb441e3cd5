//! The series dictionary (`SERIES`): entry `n` (from 1) is the key of
//! agent-wide series id `n`, `[len: u32 le][crc32c: u32 le][key]`, appended
//! and made durable before the first record that uses its id. Its bytes
//! count toward the spool's `max_bytes` (room is made in `queue.rs`); it is
//! emptied by an epoch rollover (`epoch.rs`).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::reading::{Labels, SeriesKey, intern};

use super::durable::truncate;
use super::segment::{CRC, HEADER};
use super::{Spool, SpoolError, io_err};

impl Spool {
    /// Appends `keys` to the dictionary as ids `series_count() + 1 ..`
    /// without making room for them (tests; the uplink goes through
    /// [`Spool::append_with_series`], which does).
    #[cfg(test)]
    pub(super) fn add_series(&mut self, keys: &[&SeriesKey]) -> Result<(), SpoolError> {
        let (buf, n) = encode_series_entries(keys);
        self.write_series(&buf, n)
    }

    /// Appends `buf`, `n` encoded entries, to the dictionary as ids
    /// `series_count() + 1 ..`, in one write, durable (with `sync`) before
    /// this returns, so a record appended afterwards may use them. On
    /// failure nothing was added.
    pub(super) fn write_series(&mut self, buf: &[u8], n: usize) -> Result<(), SpoolError> {
        if n == 0 {
            return Ok(());
        }
        let path = self.opts.dir.join("SERIES");
        let count = u32::try_from(n)
            .ok()
            .and_then(|n| self.series_count.checked_add(n))
            .ok_or_else(|| SpoolError::Invalid {
                path: path.clone(),
                message: format!("more than {} series in one epoch", u32::MAX),
            })?;
        let before = self.series_bytes;
        let sync = self.opts.sync;
        if let Err(e) = self.series_file.write_all(buf).and_then(|()| {
            if sync {
                self.series_file.sync_data()
            } else {
                Ok(())
            }
        }) {
            // Cut a partial write so the next entry starts on a boundary.
            let _ = self.series_file.set_len(before);
            return Err(io_err(&path)(e));
        }
        self.series_bytes += buf.len() as u64;
        self.series_count = count;
        Ok(())
    }
}

/// The dictionary entries of `keys`, one after the other, and their number.
pub(super) fn encode_series_entries(keys: &[&SeriesKey]) -> (Vec<u8>, usize) {
    let mut buf = Vec::with_capacity(keys.len() * 64);
    for key in keys {
        encode_series_entry(&mut buf, key);
    }
    (buf, keys.len())
}

/// Appends the dictionary entry of `key` to `buf`.
fn encode_series_entry(buf: &mut Vec<u8>, key: &SeriesKey) {
    fn put(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    put(buf, &key.device);
    put(buf, &key.metric);
    put(buf, &key.unit);
    buf.extend_from_slice(&(key.labels.len() as u32).to_le_bytes());
    for (k, v) in key.labels.iter() {
        put(buf, k);
        put(buf, v);
    }
    let len = (buf.len() - start - HEADER) as u32;
    let crc = CRC.checksum(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the dictionary entry at the start of `buf`: the key and the
/// entry's length. `None` if it is torn, fails its CRC or does not parse.
fn decode_series_entry(buf: &[u8]) -> Option<(SeriesKey, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let payload = buf.get(HEADER..HEADER.checked_add(len)?)?;
    if CRC.checksum(payload) != crc {
        return None;
    }
    fn number(rest: &mut &[u8]) -> Option<u32> {
        let (n, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(u32::from_le_bytes(*n))
    }
    fn string(rest: &mut &[u8]) -> Option<Arc<str>> {
        let n = number(rest)? as usize;
        let bytes = rest.get(..n)?;
        *rest = &rest[n..];
        std::str::from_utf8(bytes).ok().map(intern)
    }
    let mut rest = payload;
    let device = string(&mut rest)?;
    let metric = string(&mut rest)?;
    let unit = string(&mut rest)?;
    let mut labels = Vec::new();
    for _ in 0..number(&mut rest)? {
        let k = string(&mut rest)?;
        let v = string(&mut rest)?;
        labels.push((k, v));
    }
    let labels = Labels::from_pairs(labels);
    if !rest.is_empty() {
        return None;
    }
    Some((
        SeriesKey {
            device,
            metric,
            labels,
            unit,
        },
        HEADER + len,
    ))
}

/// Reads the dictionary at `path` (none: empty), cutting it at the first
/// entry that is torn, corrupt or does not parse. Returns the keys, the
/// bytes kept and the bytes cut.
pub(super) fn load_series(path: &Path) -> Result<(Vec<Arc<SeriesKey>>, u64, u64), SpoolError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0, 0)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut keys = Vec::new();
    let mut pos = 0usize;
    while let Some((key, len)) = data.get(pos..).and_then(decode_series_entry) {
        keys.push(Arc::new(key));
        pos += len;
    }
    let cut = (data.len() - pos) as u64;
    if cut > 0 {
        truncate(path, pos as u64)?;
    }
    Ok((keys, pos as u64, cut))
}
