//! The SQLite ceiling: how fast the embedded engine itself appends this
//! data, with nothing else in the way. One plain row per reading
//! `(series_id INTEGER, ts INTEGER, value REAL)`, no index, WAL,
//! `synchronous=FULL` (the collector's default), one prepared statement,
//! 10,000 rows per transaction. Ingest is reported as a fraction of this.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use rusqlite::{Connection, params};

/// Rows per transaction.
pub const ROWS_PER_TX: u64 = 10_000;

/// Writes `rows` rows cycling over `series` series into a new database at
/// `path`; returns rows per second.
pub fn measure(path: &Path, rows: u64, series: u64) -> Result<f64> {
    let _ = std::fs::remove_file(path);
    let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         CREATE TABLE readings (series_id INTEGER, ts INTEGER, value REAL);",
    )
    .context("set up the ceiling database")?;
    let series = series.max(1);
    let base: i64 = 1_700_000_000_000_000_000;
    let start = Instant::now();
    let mut done = 0u64;
    let mut conn = conn;
    while done < rows {
        let end = (done + ROWS_PER_TX).min(rows);
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (series_id, ts, value) VALUES (?1, ?2, ?3)",
            )?;
            for i in done..end {
                insert.execute(params![
                    (i % series) as i64,
                    base + (i / series) as i64 * 1_000_000_000,
                    230.0 + (i % 1000) as f64 * 0.125
                ])?;
            }
        }
        tx.commit().context("commit")?;
        done = end;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stored: i64 = conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?;
    anyhow::ensure!(
        stored as u64 == rows,
        "ceiling stored {stored} rows, wrote {rows}"
    );
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(rows as f64 / elapsed)
}
