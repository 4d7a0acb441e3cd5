//! The exports' own tokio runtime, on threads the OS schedules after the
//! merger's and the gRPC runtime's: each of its threads (workers and
//! blocking pool, which runs the SQLite log's calls) lowers its own
//! scheduling priority to nice [`EXPORT_NICE`] when it starts. When the
//! CPU is short, ingest (receive, merge, commit, ack) runs first and the
//! exports fall behind instead (their lag shows it); when it is not, the
//! exports run as fast as before. A priority that cannot be lowered (a
//! sandbox that forbids it) is logged once and the exports run anyway.
//! `TRIBUTARY_EXPORT_NICE` (0 to 19) sets another nice value; 0 runs the
//! exports at ingest's priority (`cargo xtask bench export` compares).
//!
//! Owns the runtime's thread: [`ExportRuntime::stop`] ends it once the
//! export tasks have ended, and the runtime is dropped there, outside any
//! async context.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::nice::Priority;

/// The nice value of every export thread (the merger's threads keep the
/// process's, 0 by default; 19 is the lowest priority).
pub const EXPORT_NICE: Priority = Priority::Nice(10);
/// Overrides [`EXPORT_NICE`]: `idle` (`SCHED_IDLE`) or a nice value (0 to 19).
pub const NICE_ENV: &str = "TRIBUTARY_EXPORT_NICE";
/// Worker threads: as many as remote write shards need to encode and
/// compress side by side on a small machine.
const WORKERS: usize = 2;

/// The runtime the export tasks run on.
#[derive(Debug)]
pub struct ExportRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportRuntime {
    /// Starts the runtime and its thread; an error names a bad
    /// [`NICE_ENV`].
    pub fn start() -> std::io::Result<ExportRuntime> {
        let priority = crate::nice::from_env(NICE_ENV, EXPORT_NICE)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("tributary-export")
            .enable_all()
            .on_thread_start(move || {
                static WARNED: AtomicBool = AtomicBool::new(false);
                crate::nice::lower_priority(priority, &WARNED, "the exports");
            })
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tributary-exports".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still there were aborted by `Exports::shutdown`.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(ExportRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where export tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Ends the runtime (call once every export task has ended).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{EXPORT_NICE, ExportRuntime, Priority};

    #[tokio::test]
    async fn export_threads_run_at_a_lower_priority() {
        let rt = ExportRuntime::start().unwrap();
        let (mine, theirs) = rt
            .handle()
            .spawn(async {
                let theirs = crate::nice::current().unwrap();
                let blocking = tokio::task::spawn_blocking(|| crate::nice::current().unwrap())
                    .await
                    .unwrap();
                (blocking, theirs)
            })
            .await
            .unwrap();
        let here = crate::nice::current().unwrap();
        // Already at or past it (a niced test run), or set otherwise:
        // nothing to compare.
        if here == Priority::Nice(0) && std::env::var_os(super::NICE_ENV).is_none() {
            assert_eq!((mine, theirs), (EXPORT_NICE, EXPORT_NICE));
        }
        rt.stop().await;
    }
}
