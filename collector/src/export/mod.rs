//! Exports (README "Exports"): each `[[exports]]` entry is one task that
//! follows the commit log (`store::export`), what the merger committed in
//! commit order, from a durable cursor in the same store, and forwards it
//! to its destination (`remote_write.rs`: Prometheus remote write 1.0).
//!
//! - `runner.rs`: the task (a page of the log → the sink → the cursor).
//! - `remote_write.rs`: samples, shards, requests, retries.
//! - `nats.rs`: JetStream messages with stable ids, PubAcks, retries
//!   (`nats/client.rs`: the NATS text protocol).
//!
//! Exports never slow ingest: the merger does not know they exist (the
//! store's trigger copies each committed batch into the log in the
//! commit's transaction); each task reads through a connection of its own
//! and falls behind when its destination is slow or down.
//!
//! May import: `config::exports` (settings), `store::export` (the log),
//! `prom_labels` (the one series → labels mapping), `metrics` (its
//! handles), `model`. Owns each export's cursor, cache and client.

pub mod nats;
mod remote_write;
mod runner;

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use remote_write::{Outcome, SinkError, pb as remote_write_pb};
use runner::{Runner, Sink};

use crate::config::exports::{ExportConfig, ExportKind};
use crate::metrics::ExportMetrics;
use crate::store::StoreUrl;
use crate::store::export::CommitLog;
use crate::store::read::ReadError;

/// Why the exports could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exports: {0}")]
    Log(#[from] ReadError),
    #[error("export {name:?}: {cause}")]
    Sink { name: String, cause: SinkError },
}

/// The running export tasks.
#[derive(Debug)]
pub struct Exports {
    tasks: JoinSet<()>,
    stop: CancellationToken,
    abort: CancellationToken,
}

/// Sets up the commit log for `configs` (removing it when there are none)
/// and starts one task per export. Blocking store work: call before
/// serving.
pub async fn start(
    url: &StoreUrl,
    configs: &[ExportConfig],
    metrics: &ExportMetrics,
) -> Result<Exports, ExportError> {
    let mut exports = Exports {
        tasks: JoinSet::new(),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let sqlite = matches!(url, StoreUrl::Sqlite(_));
    if configs.is_empty() && !sqlite {
        return Ok(exports);
    }
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let url2 = url.clone();
    let log = tokio::task::spawn_blocking(move || CommitLog::setup(&url2, &names))
        .await
        .map_err(|e| {
            ExportError::Log(ReadError::Setup {
                store: url.to_string(),
                message: format!("setup task failed: {e}"),
            })
        })??;
    for config in configs {
        let sink = match &config.kind {
            ExportKind::RemoteWrite(rw) => Sink::RemoteWrite(
                remote_write::RemoteWriteSink::new(
                    &config.name,
                    &config.url,
                    rw,
                    config.max_backoff,
                )
                .map_err(|cause| ExportError::Sink {
                    name: config.name.clone(),
                    cause,
                })?,
            ),
            ExportKind::Nats(n) => Sink::Nats(nats::NatsSink::new(
                &config.name,
                n,
                &config.filter,
                config.max_backoff,
            )),
        };
        let runner = Runner {
            config: config.clone(),
            sink,
            log: log.clone(),
            metrics: metrics.handles(&config.name),
        };
        exports
            .tasks
            .spawn(runner.run(exports.stop.clone(), exports.abort.clone()));
    }
    Ok(exports)
}

impl Exports {
    /// Stops reading new pages, lets the pages in flight finish within
    /// `deadline`, then abandons them (unsaved: sent again after restart).
    pub async fn shutdown(mut self, deadline: Duration) {
        self.stop.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!(
                ?deadline,
                "exports still sending at the shutdown deadline; the rest goes after the restart"
            );
            self.abort.cancel();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}
