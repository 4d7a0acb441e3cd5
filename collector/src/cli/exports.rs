//! `tributary-collector exports`: each export's destination, cursor, lag
//! and totals: position in the commit log, lag in readings and seconds,
//! readings sent, requests retried, readings dropped (a 4xx other than
//! 429), readings skipped (`max_lag`), the last error. Asks a running
//! collector (`Query/ListExports`); with `--store`, reads the store
//! itself (read-only, the collector may be down), and with `--config`
//! the destinations from that config.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde_json::json;
use tributary_proto::v1 as pb;

use super::writers::{write_csv, write_json_array, write_table};
use super::{ConnArgs, Format};
use crate::export::{Configured, ExportRow};
use crate::store::StoreUrl;
use crate::store::export::CommitLog;

/// `exports` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Read the cursors from this store (SQLite or PostgreSQL URL) instead
    /// of asking a running collector
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// With --store: the collector's config, for each export's destination
    #[arg(long, value_name = "FILE", requires = "store")]
    pub config: Option<PathBuf>,
}

/// Prints every export's state.
pub async fn run(args: ExportsArgs) -> Result<()> {
    let rows = match &args.store {
        Some(store) => from_store(store, args.config.as_ref()).await?,
        None => {
            let server = &args.conn.server;
            super::commands::connect(&args.conn)
                .await?
                .list_exports(pb::ListExportsRequest {})
                .await
                .map_err(|s| super::commands::rpc_error(server, "list exports", &s))?
                .into_inner()
                .exports
                .into_iter()
                .map(crate::query::export_from_proto)
                .collect()
        }
    };
    let mut out = std::io::stdout().lock();
    write_rows(&mut out, args.conn.format, &rows)?;
    out.flush()?;
    Ok(())
}

/// The rows as the store holds them, with `config`'s destinations.
async fn from_store(store: &str, config: Option<&PathBuf>) -> Result<Vec<ExportRow>> {
    let url: StoreUrl = store
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--store: {e}"))?;
    if let StoreUrl::Sqlite(path) = &url {
        anyhow::ensure!(
            path.exists(),
            "--store {url}: {} does not exist",
            path.display()
        );
    }
    let configured: Vec<Configured> = match config {
        None => Vec::new(),
        Some(p) => crate::config::resolve(Some(p), &crate::config::Flags::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .server
            .exports
            .iter()
            .map(Configured::of)
            .collect(),
    };
    let status = CommitLog::existing(&url)
        .with_context(|| format!("--store {url}"))?
        .status()
        .await
        .with_context(|| format!("read the export cursors in {url}"))?;
    // Read straight from the store: no page in flight here to show.
    Ok(crate::export::rows(
        status,
        &configured,
        &Default::default(),
        tributary_process::now_ns(),
    ))
}

/// `rows` as a table, CSV or a JSON array.
fn write_rows(out: &mut impl Write, format: Format, rows: &[ExportRow]) -> Result<()> {
    match format {
        Format::Json => {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "kind": r.kind,
                        "destination": r.destination,
                        "position": r.position,
                        "end": r.end,
                        "lag_readings": r.lag_readings,
                        "lag_seconds": r.lag_seconds,
                        "sent": r.sent,
                        "retried": r.retried,
                        "dropped": r.dropped,
                        "skipped": r.skipped,
                        "last_error": r.last_error,
                    })
                })
                .collect();
            write_json_array(out, &rows)?;
        }
        Format::Csv | Format::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.kind.clone(),
                        r.destination.clone(),
                        r.position.to_string(),
                        r.lag_readings.to_string(),
                        format!("{:.1}", r.lag_seconds),
                        r.sent.to_string(),
                        r.retried.to_string(),
                        r.dropped.to_string(),
                        r.skipped.to_string(),
                        r.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            if format == Format::Csv {
                write_csv(
                    out,
                    "name,kind,destination,position,lag_readings,lag_seconds,sent,retried,\
                     dropped,skipped,last_error",
                    &cells,
                )?;
            } else {
                write_table(
                    out,
                    &[
                        "NAME",
                        "KIND",
                        "DESTINATION",
                        "POSITION",
                        "LAG READINGS",
                        "LAG SECONDS",
                        "SENT",
                        "RETRIED",
                        "DROPPED",
                        "SKIPPED",
                        "LAST ERROR",
                    ],
                    &cells,
                )?;
            }
        }
    }
    Ok(())
}
