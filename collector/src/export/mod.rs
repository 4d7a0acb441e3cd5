//! Exports (README "Exports"): each `[[exports]]` entry is one task that
//! follows the commit log (`store::export`), what the merger committed in
//! commit order, from a durable cursor in the same store, and forwards it
//! to its destination (`remote_write.rs`: Prometheus remote write 1.0).
//!
//! - `runner.rs`: the task (a page of the log → the sink → the cursor).
//! - `remote_write.rs`: samples, shards, requests, retries.
//!
//! Exports never slow ingest: the merger does not know they exist (the
//! store copies each committed batch into the log in the commit's
//! transaction: a trigger on SQLite, the commit's last statement on
//! PostgreSQL); each task reads through a connection of its own and falls
//! behind when its destination is slow or down. On PostgreSQL each task
//! first takes its export's advisory lock, so with several collectors on
//! one database each export runs in one of them (`runner.rs`).
//!
//! May import: `config::exports` (settings), `store::export` (the log),
//! `prom_labels` (the one series → labels mapping), `metrics` (its
//! handles), `model`. Owns each export's cursor, cache and client.

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

/// `url` as logs and the CLI show it: user info (credentials) replaced by
/// `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

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

/// Sets up the commit log for `configs` (on SQLite, removing it when
/// there are none) and starts one task per export. Call before serving.
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
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let log = CommitLog::setup(url, &names).await?;
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

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_a_url_are_not_shown() {
        assert_eq!(
            redact_url("https://u:p@vm:8428/api/v1/write?x=@"),
            "https://***@vm:8428/api/v1/write?x=@"
        );
        assert_eq!(redact_url("http://token@vm/w"), "http://***@vm/w");
        assert_eq!(redact_url("http://vm:8428/w"), "http://vm:8428/w");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
