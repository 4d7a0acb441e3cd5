//! `tributary-collector exports`: each export's cursor, lag and totals,
//! read from the store (read-only), where every collector on it saves
//! them: position in the commit log, lag in readings and seconds, samples
//! sent, requests retried, samples dropped (a 4xx other than 429),
//! readings skipped (`max_lag`), the last error. With `--config`, the
//! destination of each export too.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::Format;
use super::writers::{write_csv, write_json_array, write_table};
use crate::store::StoreUrl;
use crate::store::export::CommitLog;

/// `exports` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportsArgs {
    /// The store the collector writes (SQLite or PostgreSQL).
    #[arg(long, value_name = "URL", default_value = crate::config::DEFAULT_STORE)]
    pub store: String,
    /// The collector's config, for each export's destination.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Prints every export's state.
pub async fn run(args: ExportsArgs) -> Result<()> {
    let url: StoreUrl = args
        .store
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--store: {e}"))?;
    if let StoreUrl::Sqlite(path) = &url {
        anyhow::ensure!(
            path.exists(),
            "--store {url}: {} does not exist",
            path.display()
        );
    }
    let destinations: Vec<(String, String)> = match &args.config {
        None => Vec::new(),
        Some(p) => crate::config::resolve(Some(p), &crate::config::Flags::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .server
            .exports
            .iter()
            .map(|e| {
                let url = crate::export::redact_url(&e.url);
                let dest = match &e.kind {
                    crate::config::exports::ExportKind::Nats(n) => {
                        format!("nats {url} stream {}", n.stream)
                    }
                    kind => format!("{} {url}", kind.name()),
                };
                (e.name.clone(), dest)
            })
            .collect(),
    };
    let rows = CommitLog::existing(&url)
        .with_context(|| format!("--store {url}"))?
        .status()
        .await
        .with_context(|| format!("read the export cursors in {url}"))?;
    let now = tributary_process::now_ns();
    let mut out = std::io::stdout().lock();
    let dest = |name: &str| {
        destinations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    };
    let lag_seconds = |oldest: Option<i64>| oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e9);
    match args.format {
        Format::Json => {
            let rows: Vec<_> = rows
                .iter()
                .map(|(c, p)| {
                    json!({
                        "name": c.name,
                        "destination": dest(&c.name),
                        "position": c.position,
                        "end": p.end,
                        "lag_readings": p.readings,
                        "lag_seconds": lag_seconds(p.oldest_received_ns),
                        "sent": c.sent,
                        "retried": c.retried,
                        "dropped": c.dropped,
                        "skipped": c.skipped,
                        "last_error": c.last_error,
                    })
                })
                .collect();
            write_json_array(&mut out, &rows)?;
        }
        Format::Csv | Format::Table => {
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|(c, p)| {
                    vec![
                        c.name.clone(),
                        dest(&c.name),
                        c.position.to_string(),
                        p.readings.to_string(),
                        format!("{:.1}", lag_seconds(p.oldest_received_ns)),
                        c.sent.to_string(),
                        c.retried.to_string(),
                        c.dropped.to_string(),
                        c.skipped.to_string(),
                        c.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            if args.format == Format::Csv {
                write_csv(
                    &mut out,
                    "name,destination,position,lag_readings,lag_seconds,sent,retried,dropped,\
                     skipped,last_error",
                    &rows,
                )?;
            } else {
                write_table(
                    &mut out,
                    &[
                        "NAME",
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
                    &rows,
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
