//! The SQLite backend (`sqlite:PATH`, the embedded default): one file in
//! WAL mode, written by the merger's one connection, read by a read-only
//! connection per read call (a few kept between calls, see `read.rs`).
//!
//! Layout (`schema.sql`): each committed batch is one `head` row (an
//! append, whatever the series); compaction moves head points into
//! per-series `chunks` in device-time order; both hold columnar blobs.
//!
//! - `write.rs`: [`SqliteStore`], the write side (open, load, resolve
//!   series, commit, compaction steps); `retain.rs`: its retention.
//! - `compact.rs` (+ `compact/step.rs`): head → chunks, on the merger's
//!   thread; `layout.rs`: what compaction, retention and scans share
//!   (compaction marks, the full-chunk size, their error).
//! - `read.rs`: [`SqliteReader`], the read side; `scan.rs`: reading head
//!   and chunks so that each point is seen exactly once.
//! - `codec.rs` (+ `codec/`): the byte layout of a head row or chunk.
//!
//! Owns the file and its schema; uses the store contract (`super`), never
//! the PostgreSQL backend.

mod codec;
mod compact;
mod export_log;
mod layout;
mod read;
mod retain;
mod scan;
mod write;

#[cfg(test)]
pub(crate) mod tests;

pub use export_log::SqliteLog;
pub use read::SqliteReader;
pub use write::SqliteStore;
