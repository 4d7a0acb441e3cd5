//! Exports (README "Exports"): each `[[exports]]` entry is one task that
//! follows the commit log (`store::export`), what the merger committed in
//! commit order, from a durable cursor in the same store, and forwards it
//! to its destination (`remote_write.rs`: Prometheus remote write 1.0).
//!
//! - `runner.rs`: the task (a page of the log → the sink → the cursor).
//! - `runtime.rs`: the runtime the tasks run on, its threads at a lower
//!   OS scheduling priority than ingest's.
//! - `status.rs`: what operators see (`Query/ListExports`).
//! - `remote_write.rs`: samples, shards, requests, retries.
//! - `nats.rs`: JetStream messages with stable ids, PubAcks, retries
//!   (`nats/client.rs`: the NATS text protocol).
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

pub mod nats;
mod remote_write;
mod runner;
mod runtime;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use remote_write::{Outcome, SinkError, pb as remote_write_pb};
use runner::{Runner, Sink};
use status::FailingBoard;
pub use status::{Configured, ExportRow, ExportsView, FailingNow, destination, rows};

use crate::config::exports::{ExportConfig, ExportKind};
use crate::metrics::ExportMetrics;
use crate::store::StoreUrl;
use crate::store::export::CommitLog;
use crate::store::read::ReadError;

/// `url` as logs, the CLI and ListExports show it: user info
/// (credentials) replaced by `***`, and so is every query parameter's
/// value (`?api_key=…` is how some hosted receivers take a key); the
/// parameters' names stay.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let (tail, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((name, _)) => format!("{name}=***"),
                    None => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}{fragment}")
}

/// Series labels (or keys) an export task keeps at most; its cache starts
/// over past it.
pub(crate) const MAX_CACHED_SERIES: usize = 1 << 20;

/// The series ids of a page (`ids`, in any order, repeated or not) to look
/// up before sending it: those not in `cache`, or — when adding them would
/// take `cache` past `cap` — all of them, after clearing `cache`, so every
/// series of the page has its entry when the page is sent (a reading whose
/// series has none would be skipped).
pub(crate) fn series_to_look_up<V, S: std::hash::BuildHasher>(
    cache: &mut HashMap<i64, V, S>,
    ids: impl Iterator<Item = i64> + Clone,
    cap: usize,
) -> Vec<i64> {
    // Only the ids not cached are collected and sorted: a page whose
    // series are all known (the steady state) costs one lookup a reading.
    let mut missing: Vec<i64> = ids.clone().filter(|id| !cache.contains_key(id)).collect();
    if missing.is_empty() {
        return missing;
    }
    missing.sort_unstable();
    missing.dedup();
    if cache.len() + missing.len() > cap {
        cache.clear();
        let mut all: Vec<i64> = ids.collect();
        all.sort_unstable();
        all.dedup();
        return all;
    }
    missing
}

/// Why the exports could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exports: {0}")]
    Log(#[from] ReadError),
    #[error("export {name:?}: {cause}")]
    Sink { name: String, cause: SinkError },
    #[error("exports: start their runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running export tasks, by name. Owned by the server's reload task
/// (`server/reload.rs`), which applies a reload's `[[exports]]` with
/// [`Exports::prepare`] and [`Exports::apply`].
#[derive(Debug)]
pub struct Exports {
    url: StoreUrl,
    metrics: Arc<ExportMetrics>,
    running: HashMap<String, Running>,
    /// Parents of every task's tokens: shutdown cancels them all.
    stop: CancellationToken,
    abort: CancellationToken,
    /// The running exports' settings, for [`ExportsView`].
    configured: watch::Sender<Vec<Configured>>,
    /// The errors of pages failing now, for [`ExportsView`].
    failing: FailingBoard,
    /// Where the tasks run (`runtime.rs`).
    runtime: runtime::ExportRuntime,
}

/// One export's task.
#[derive(Debug)]
struct Running {
    config: ExportConfig,
    stop: CancellationToken,
    abort: CancellationToken,
    task: JoinHandle<()>,
}

/// A reload's `[[exports]]`, checked: the sinks of the added and changed
/// exports built, the commit log set up for the old and new names alike.
/// Nothing runs differently until [`Exports::apply`].
#[derive(Debug)]
pub struct Prepared {
    configs: Vec<ExportConfig>,
    start: Vec<(ExportConfig, Sink)>,
    log: Option<CommitLog>,
}

/// What a reload did to the exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportsDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl ExportsDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Sets up the commit log for `configs` (on SQLite, removing it when
/// there are none) and starts one task per export. Call before serving.
pub async fn start(
    url: &StoreUrl,
    configs: &[ExportConfig],
    metrics: &Arc<ExportMetrics>,
) -> Result<Exports, ExportError> {
    let mut exports = Exports {
        url: url.clone(),
        metrics: metrics.clone(),
        running: HashMap::new(),
        stop: CancellationToken::new(),
        abort: CancellationToken::new(),
        configured: watch::Sender::new(Vec::new()),
        failing: Arc::new(watch::Sender::new(Default::default())),
        runtime: runtime::ExportRuntime::start().map_err(ExportError::Runtime)?,
    };
    let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
    let log = setup(url, names).await?;
    for config in configs {
        let sink = sink(config)?;
        exports.spawn(config.clone(), sink, log.clone());
    }
    exports.publish();
    Ok(exports)
}

/// The commit log set up for `names`.
async fn setup(url: &StoreUrl, names: Vec<String>) -> Result<CommitLog, ExportError> {
    Ok(CommitLog::setup(url, &names).await?)
}

/// The destination of `config`.
fn sink(config: &ExportConfig) -> Result<Sink, ExportError> {
    Ok(match &config.kind {
        ExportKind::RemoteWrite(rw) => Sink::RemoteWrite(
            remote_write::RemoteWriteSink::new(&config.name, &config.url, rw, config.max_backoff)
                .map_err(|cause| ExportError::Sink {
                name: config.name.clone(),
                cause,
            })?,
        ),
        ExportKind::Nats(n) => Sink::Nats(
            nats::NatsSink::new(&config.name, n, &config.filter, config.max_backoff).map_err(
                |e| ExportError::Sink {
                    name: config.name.clone(),
                    cause: SinkError::Nats(e),
                },
            )?,
        ),
    })
}

impl Exports {
    /// What the Query service reads: every cursor in the store, with the
    /// settings of the exports running here (kept current by reloads).
    pub fn view(&self) -> ExportsView {
        ExportsView::new(
            self.url.clone(),
            self.configured.subscribe(),
            self.failing.subscribe(),
        )
    }

    /// Tells the views which exports run now.
    fn publish(&self) {
        let mut now: Vec<Configured> = self
            .running
            .values()
            .map(|r| Configured::of(&r.config))
            .collect();
        now.sort_by(|a, b| a.name.cmp(&b.name));
        self.configured.send_replace(now);
    }

    /// Starts the task of one export.
    fn spawn(&mut self, config: ExportConfig, sink: Sink, log: CommitLog) {
        let (stop, abort) = (self.stop.child_token(), self.abort.child_token());
        let mut metrics = self.metrics.handles(&config.name);
        metrics.failing = FailingNow::on(&self.failing, &config.name);
        let runner = Runner {
            config: config.clone(),
            sink,
            log,
            metrics,
        };
        let task = self
            .runtime
            .handle()
            .spawn(runner.run(stop.clone(), abort.clone()));
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                stop,
                abort,
                task,
            },
        );
    }

    /// Checks a reload's `configs` without changing what runs: builds the
    /// sinks of new and changed exports and sets the commit log up for
    /// every name old and new (cursors of new exports start at the log's
    /// end). An error leaves the running exports as they are.
    pub async fn prepare(&self, configs: &[ExportConfig]) -> Result<Prepared, ExportError> {
        let mut start = Vec::new();
        for config in configs {
            if self.running.get(&config.name).map(|r| &r.config) != Some(config) {
                start.push((config.clone(), sink(config)?));
            }
        }
        let mut names: Vec<String> = self.running.keys().cloned().collect();
        for config in configs {
            if !self.running.contains_key(&config.name) {
                names.push(config.name.clone());
            }
        }
        let log = if start.is_empty() {
            None
        } else {
            Some(setup(&self.url, names).await?)
        };
        Ok(Prepared {
            configs: configs.to_vec(),
            start,
            log,
        })
    }

    /// Applies what [`Exports::prepare`] checked: removed and changed
    /// exports stop (the page in flight, a nats export's pages in its
    /// pipeline, finish within `deadline`, else what is not acknowledged
    /// is sent again by the next task), added and changed ones start
    /// (a changed one resumes from its durable cursor), unchanged ones are
    /// not touched. The cursors of removed exports are deleted last.
    pub async fn apply(&mut self, prepared: Prepared, deadline: Duration) -> ExportsDiff {
        let mut diff = ExportsDiff::default();
        let keep: HashMap<&str, &ExportConfig> = prepared
            .configs
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let mut stopping = Vec::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let Some(running) = self.running.get(&name) else {
                continue;
            };
            match keep.get(name.as_str()) {
                Some(c) if **c == running.config => continue,
                Some(_) => diff.changed.push(name.clone()),
                None => diff.removed.push(name.clone()),
            }
            if let Some(running) = self.running.remove(&name) {
                running.stop.cancel();
                stopping.push(running);
            }
        }
        for running in stopping {
            let Running { abort, task, .. } = running;
            let mut task = task;
            if tokio::time::timeout(deadline, &mut task).await.is_err() {
                warn!(
                    ?deadline,
                    "export still sending at the reload deadline; its page goes again"
                );
                abort.cancel();
                let _ = task.await;
            }
        }
        if let Some(log) = prepared.log {
            for (config, sink) in prepared.start {
                if !diff.changed.contains(&config.name) {
                    diff.added.push(config.name.clone());
                }
                self.spawn(config, sink, log.clone());
            }
        }
        for name in diff.removed.iter().chain(&diff.changed) {
            FailingNow::on(&self.failing, name).clear();
        }
        for name in &diff.removed {
            self.metrics.remove(name);
        }
        self.publish();
        if !diff.removed.is_empty() {
            let names: Vec<String> = self.running.keys().cloned().collect();
            // Only the cursors of removed exports go (none: the log).
            if let Err(e) = setup(&self.url, names).await {
                warn!(error = %e, "removing the cursors of removed exports failed; retried at the next reload or start");
            }
        }
        diff
    }

    /// Stops reading new pages, lets the pages in flight finish within
    /// `deadline`, then abandons them (unsaved: sent again after restart).
    pub async fn shutdown(self, deadline: Duration) {
        self.stop.cancel();
        let runtime = self.runtime;
        let mut tasks: Vec<JoinHandle<()>> = self.running.into_values().map(|r| r.task).collect();
        // A task leaves the list once it has ended (a finished handle must
        // not be awaited again).
        let all = async {
            while let Some(task) = tasks.last_mut() {
                let _ = task.await;
                tasks.pop();
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!(
                ?deadline,
                "exports still sending at the shutdown deadline; the rest goes after the restart"
            );
            self.abort.cancel();
            for task in tasks {
                let _ = task.await;
            }
        }
        runtime.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{redact_url, series_to_look_up};

    #[test]
    fn a_full_series_cache_starts_over_with_every_series_of_the_page() {
        let cap = 8;
        let mut cache: HashMap<i64, ()> = (0..cap as i64).map(|id| (id, ())).collect();
        // 2 and 5 cached, 100 and 101 new: the cache would pass its cap.
        let page = [2, 100, 5, 2, 101, 100];
        let look_up = series_to_look_up(&mut cache, page.into_iter(), cap);
        assert_eq!(look_up, vec![2, 5, 100, 101]);
        assert!(cache.is_empty());
        cache.extend(look_up.into_iter().map(|id| (id, ())));
        assert!(page.iter().all(|id| cache.contains_key(id)));
        // Below the cap: only what is missing; nothing when all is cached.
        let look_up = series_to_look_up(&mut cache, [5, 7, 7].into_iter(), cap);
        assert_eq!(look_up, vec![7]);
        assert_eq!(cache.len(), 4);
        assert!(series_to_look_up(&mut cache, [2, 5].into_iter(), cap).is_empty());
    }

    #[test]
    fn credentials_in_a_url_are_not_shown() {
        assert_eq!(
            redact_url("https://u:p@vm:8428/api/v1/write?x=@"),
            "https://***@vm:8428/api/v1/write?x=***"
        );
        assert_eq!(
            redact_url("https://vm/api/v1/write?api_key=s3cret&extra_label=site%3Da&flag#f"),
            "https://vm/api/v1/write?api_key=***&extra_label=***&flag#f"
        );
        assert_eq!(redact_url("http://token@vm/w"), "http://***@vm/w");
        assert_eq!(redact_url("http://vm:8428/w"), "http://vm:8428/w");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
