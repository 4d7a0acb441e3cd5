//! Opening a spool: the epoch (a new one for a new or wiped directory), the
//! layout version, the series dictionary, and the scan of every segment that
//! cuts torn or corrupt tails. Opening never fails because of the contents
//! of a segment; only because the directory cannot be read or written, or
//! holds a layout this agent does not write.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::reading::SeriesKey;

use super::acked_file::{self, Persisted};
use super::dictionary::load_series;
use super::durable::{read_number, sync_dir, write_atomic};
use super::epoch::{new_epoch_id, read_dropped, write_dropped, write_epoch};
use super::segment::{Segment, scan_segment};
use super::{AckedSet, Spool, SpoolError, SpoolOptions, io_err};

/// The layout version in `FORMAT`.
const FORMAT: u64 = 2;

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The spool directory had no epoch: a new spool was started.
    pub new_epoch: bool,
    /// Records kept.
    pub records: usize,
    /// Readings in the records kept.
    pub readings: u64,
    /// Bytes cut off (torn or corrupt tails), over all segments.
    pub cut_bytes: u64,
    /// Segments that had a tail cut off.
    pub cut_segments: usize,
    /// Series in the dictionary.
    pub series: usize,
    /// Bytes cut off the dictionary's tail (torn or corrupt entries).
    pub cut_series_bytes: u64,
    /// Readings of valid records that used series the dictionary lost;
    /// they were cut and counted as dropped.
    pub lost_readings: u64,
    /// `ACKED` held this epoch's acked set, which the spool starts with.
    pub acked_loaded: bool,
    /// `ACKED` did not read (torn or corrupt; logged): the acked set
    /// starts empty until the Welcome, so records already committed may be
    /// sent again, or, dropped to make room before it, counted as dropped.
    pub acked_unreadable: bool,
}

/// The dictionary as found at open.
struct Dictionary {
    keys: Vec<Arc<SeriesKey>>,
    /// Append handle of `SERIES`.
    file: File,
    bytes: u64,
}

/// The segments kept at open.
struct Segments {
    segments: VecDeque<Segment>,
    last_seq: u64,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `opts.dir`, cutting off any torn or
    /// corrupt tails. Never fails because of the contents of a segment; only
    /// because the directory cannot be read or written.
    pub fn open(opts: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut recovery = Recovery::default();
        let mut seg_paths = list_segments(&dir)?;
        let epoch = match read_epoch(&dir)? {
            Some(e) => e,
            None => {
                // No epoch: whatever segments exist cannot be attributed to
                // a sequence space any more.
                for p in std::mem::take(&mut seg_paths) {
                    warn!(path = %p.display(), "segment without an epoch removed");
                    fs::remove_file(&p).map_err(io_err(&p))?;
                }
                recovery.new_epoch = true;
                start_epoch(&dir)?
            }
        };
        check_format(&dir, seg_paths.is_empty())?;
        let reserved = read_number(&dir.join("SEQ"))?.unwrap_or(0);
        let mut dropped = read_dropped(&dir, epoch)?;
        let dictionary = open_dictionary(&dir, opts.sync, &mut recovery)?;
        let series_count = u32::try_from(dictionary.keys.len()).unwrap_or(u32::MAX);
        let kept = scan_segments(seg_paths, series_count, &mut recovery)?;
        if recovery.lost_readings > 0 {
            dropped += recovery.lost_readings;
            write_dropped(&dir, dropped, epoch)?;
        }
        // Resume above everything that may have been handed out before.
        let next_seq = reserved.max(kept.last_seq) + 1;
        let segment_bytes = (opts.max_bytes / 8).clamp(16 * 1024, 16 * 1024 * 1024);
        let mut spool = Spool {
            opts,
            epoch,
            segments: kept.segments,
            tail: None,
            total_bytes: kept.bytes,
            segment_bytes,
            next_seq,
            reserved_to: next_seq - 1,
            acked: AckedSet::default(),
            acked_dirty: false,
            acked_written: None,
            in_flight: BTreeSet::new(),
            dropped,
            series_file: dictionary.file,
            series_bytes: dictionary.bytes,
            series_count,
            loaded_series: dictionary.keys,
            epoch_unsynced: false,
            after_write: None,
            on_drop: None,
        };
        spool.reserve(next_seq)?;
        spool.load_acked(&mut recovery)?;
        if recovery.cut_bytes > 0 {
            warn!(
                cut_bytes = recovery.cut_bytes,
                segments = recovery.cut_segments,
                kept_records = recovery.records,
                "spool recovered with data cut off"
            );
        }
        Ok((spool, recovery))
    }
}

impl Spool {
    /// Starts with the acked set `ACKED` holds for the epoch, if any (see
    /// `acked_file.rs`), and deletes the segments it shows fully acked; a
    /// file that does not read is logged and ignored.
    fn load_acked(&mut self, recovery: &mut Recovery) -> Result<(), SpoolError> {
        match acked_file::read(&self.opts.dir, self.epoch)? {
            Persisted::Nothing => {}
            Persisted::Set(mark, ranges) => {
                self.acked.add(mark, &ranges, self.last_seq());
                self.acked_written = Some((self.epoch, self.acked.clone()));
                recovery.acked_loaded = true;
                // Nothing is open for appending yet (the next append starts
                // a segment), so the reason to keep an acked tail
                // (`ACKED_TAIL_KEEP`) does not hold: every fully acked
                // segment goes now, off the disk and the gauges, as at a
                // clean close, not at the next ack.
                while self.delete_acked_segment(0)? {}
            }
            Persisted::Unreadable(why) => {
                let path = self.opts.dir.join("ACKED");
                let path = path.display();
                // Without `[spool] sync` the file is not fsynced: after a
                // power loss an empty or torn one is expected.
                if self.opts.sync {
                    error!(
                        path = %path,
                        why,
                        "spool acked set does not read; ignored (until the collector's Welcome, \
                         committed records may be sent again, or counted as dropped if the spool \
                         fills)"
                    );
                } else {
                    warn!(
                        path = %path,
                        why,
                        "spool acked set does not read (expected after a power loss without \
                         [spool] sync); ignored (until the collector's Welcome, committed records \
                         may be sent again, or counted as dropped if the spool fills)"
                    );
                }
                recovery.acked_unreadable = true;
            }
        }
        Ok(())
    }
}

/// The segment files of `dir` (`<first-seq>.seg`), oldest first.
fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut seg_paths: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            seg_paths.push((first, path));
        }
    }
    seg_paths.sort();
    Ok(seg_paths.into_iter().map(|(_, p)| p).collect())
}

/// The epoch in `EPOCH`; `None` if there is none or it is corrupt.
fn read_epoch(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let epoch_path = dir.join("EPOCH");
    match fs::read_to_string(&epoch_path) {
        Ok(s) => match u64::from_str_radix(s.trim(), 16) {
            Ok(e) => Ok(Some(e)),
            Err(_) => {
                error!(path = %epoch_path.display(), "spool epoch file is corrupt; starting a new spool");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&epoch_path)(e)),
    }
}

/// Starts a new epoch in `dir` (whose segments are gone): forgets the old
/// reservation, drop count and dictionary, writes `FORMAT` and a random
/// `EPOCH`, and returns it.
fn start_epoch(dir: &Path) -> Result<u64, SpoolError> {
    let _ = fs::remove_file(dir.join("SEQ"));
    let _ = fs::remove_file(dir.join("DROPPED"));
    let _ = fs::remove_file(dir.join("SERIES"));
    let _ = fs::remove_file(dir.join("ACKED"));
    write_atomic(dir, "FORMAT", format!("{FORMAT}\n"))?;
    let e = new_epoch_id(None);
    write_epoch(dir, e)?;
    info!(dir = %dir.display(), epoch = format!("{e:016x}"), "new spool");
    Ok(e)
}

/// Checks the layout version in `FORMAT`; a version 1 spool without
/// records (`no_segments`) simply becomes a current one.
fn check_format(dir: &Path, no_segments: bool) -> Result<(), SpoolError> {
    match read_number(&dir.join("FORMAT"))? {
        Some(FORMAT) => Ok(()),
        Some(other) => Err(SpoolError::Invalid {
            path: dir.to_path_buf(),
            message: format!(
                "layout version {other} is not the one this agent writes ({FORMAT}); \
                 run the agent version that wrote it, or remove the directory to start \
                 a new spool (its unacked readings are lost)"
            ),
        }),
        // An older agent's spool. Without records there is nothing to
        // read, so it simply becomes a version 2 spool.
        None if no_segments => {
            let _ = fs::remove_file(dir.join("SERIES"));
            write_atomic(dir, "FORMAT", format!("{FORMAT}\n"))
        }
        None => Err(SpoolError::Invalid {
            path: dir.to_path_buf(),
            message: "written by an older agent (layout version 1, series names in \
                      every record), which this agent cannot read: let the older agent \
                      deliver it, or remove the directory to start a new spool (its \
                      unacked readings are lost)"
                .into(),
        }),
    }
}

/// Loads `SERIES` (cutting a torn tail) and opens it for appending.
fn open_dictionary(
    dir: &Path,
    sync: bool,
    recovery: &mut Recovery,
) -> Result<Dictionary, SpoolError> {
    let series_path = dir.join("SERIES");
    let (keys, bytes, cut_series) = load_series(&series_path)?;
    if cut_series > 0 {
        warn!(
            path = %series_path.display(),
            cut_bytes = cut_series,
            kept = keys.len(),
            "spool series dictionary had a torn or corrupt tail; cut it off"
        );
    }
    recovery.series = keys.len();
    recovery.cut_series_bytes = cut_series;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&series_path)
        .map_err(io_err(&series_path))?;
    if sync {
        // The file may be new: its directory entry must be durable
        // before a record relies on its entries.
        sync_dir(dir)?;
    }
    Ok(Dictionary { keys, file, bytes })
}

/// Scans every segment in order, cutting torn or corrupt tails and records
/// whose series the dictionary lost; empty segments are deleted.
fn scan_segments(
    seg_paths: Vec<PathBuf>,
    series_count: u32,
    recovery: &mut Recovery,
) -> Result<Segments, SpoolError> {
    let mut kept = Segments {
        segments: VecDeque::new(),
        last_seq: 0,
        bytes: 0,
    };
    for path in seg_paths {
        let (seg, cut, lost) = scan_segment(&path, kept.last_seq, series_count)?;
        if lost > 0 {
            error!(
                path = %path.display(),
                readings = lost,
                "spool records use series the dictionary lost; cut them (counted as dropped)"
            );
            recovery.lost_readings += lost;
        }
        if cut > 0 {
            recovery.cut_bytes += cut;
            recovery.cut_segments += 1;
            warn!(
                path = %path.display(),
                cut_bytes = cut,
                kept_records = seg.records.len(),
                "spool segment had a torn or corrupt tail; cut it off"
            );
        }
        if let Some(r) = seg.records.back() {
            kept.last_seq = r.seq;
        }
        recovery.records += seg.records.len();
        recovery.readings += seg
            .records
            .iter()
            .map(|r| u64::from(r.readings))
            .sum::<u64>();
        if seg.records.is_empty() {
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        kept.bytes += seg.size;
        kept.segments.push_back(seg);
    }
    Ok(kept)
}
