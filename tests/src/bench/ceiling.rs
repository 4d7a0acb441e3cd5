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

/// The PostgreSQL ceiling: binary COPY of `rows` rows, cycling over
/// `series` series, into a fresh unindexed table of the store's reading
/// columns `(series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text)`
/// in schema `schema` of the database at `url`, [`ROWS_PER_TX`] rows per
/// transaction (one COPY each), with the server's durability settings
/// (the collector's: `synchronous_commit` as configured); returns rows per
/// second. The table is dropped afterwards.
pub async fn measure_postgres(url: &str, schema: &str, rows: u64, series: u64) -> Result<f64> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};

    let mut client = pg_connect(url).await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             DROP TABLE IF EXISTS {schema}.ceiling; \
             CREATE TABLE {schema}.ceiling (series_id BIGINT NOT NULL, ts_ns BIGINT NOT NULL, \
               received_ns BIGINT NOT NULL, kind SMALLINT NOT NULL, v_f64 DOUBLE PRECISION, \
               v_i64 BIGINT, v_text TEXT);"
        ))
        .await
        .context("set up the PostgreSQL ceiling table")?;
    let types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT2,
        Type::FLOAT8,
        Type::INT8,
        Type::TEXT,
    ];
    let series = series.max(1);
    let base: i64 = 1_700_000_000_000_000_000;
    let start = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let end = (done + ROWS_PER_TX).min(rows);
        let tx = client.transaction().await.context("begin")?;
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.ceiling (series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text) \
                 FROM STDIN (FORMAT binary)"
            ))
            .await
            .context("COPY")?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        for i in done..end {
            let ts = base + (i / series) as i64 * 1_000_000_000;
            let value = 230.0 + (i % 1000) as f64 * 0.125;
            let row: [&(dyn ToSql + Sync); 7] = [
                &((i % series) as i64),
                &ts,
                &ts,
                &1i16,
                &Some(value),
                &None::<i64>,
                &None::<&str>,
            ];
            writer.as_mut().write(&row).await.context("COPY row")?;
        }
        writer.as_mut().finish().await.context("COPY end")?;
        tx.commit().await.context("commit")?;
        done = end;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stored: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.ceiling"), &[])
        .await?
        .get(0);
    anyhow::ensure!(
        stored as u64 == rows,
        "ceiling stored {stored} rows, wrote {rows}"
    );
    client
        .batch_execute(&format!("DROP TABLE {schema}.ceiling"))
        .await
        .context("drop the ceiling table")?;
    Ok(rows as f64 / elapsed)
}

/// A connection to `url` whose driver runs on this runtime.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench: PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}
