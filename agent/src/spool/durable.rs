//! The file operations that make the spool durable: small files written
//! atomically (`EPOCH`, `FORMAT`, `SEQ`, `DROPPED`, `ACKED`), directory syncs, and
//! cutting a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use tracing::warn;

use super::{SpoolError, io_err};

/// The number in the file `path` (`None` if there is no file, or it does
/// not hold a number: that is logged and ignored).
pub(super) fn read_number(path: &Path) -> Result<Option<u64>, SpoolError> {
    match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                warn!(path = %path.display(), "unreadable spool counter file ignored");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `name` in `dir` atomically: a temporary file, fsync, rename, fsync
/// of the directory.
pub(super) fn write_atomic(
    dir: &Path,
    name: &str,
    contents: impl AsRef<[u8]>,
) -> Result<(), SpoolError> {
    replace(dir, name, contents.as_ref(), true)
}

/// Replaces `name` in `dir` by a rename of a temporary file, made durable
/// (both fsyncs) only when `sync`: without them a crash may leave the old
/// contents, or none, never a mix of two.
pub(super) fn replace(
    dir: &Path,
    name: &str,
    contents: &[u8],
    sync: bool,
) -> Result<(), SpoolError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        if sync {
            f.sync_all().map_err(io_err(&tmp))?;
        }
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    if sync { sync_dir(dir) } else { Ok(()) }
}

/// Makes `dir`'s entries (a created or renamed file) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Cuts `path` to `len` bytes, durably (a torn tail found at open).
pub(super) fn truncate(path: &Path, len: u64) -> Result<(), SpoolError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}
