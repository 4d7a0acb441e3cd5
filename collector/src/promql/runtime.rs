//! The queries' own tokio runtime, on threads the OS schedules after the
//! merger's and the gRPC/HTTP runtime's, as the exports' are
//! (`export/runtime.rs`): each of its threads (two workers and the
//! blocking pool, which runs the SQLite reads and the evaluation) lowers
//! its own scheduling priority to nice [`QUERY_NICE`] when it starts.
//! Everything a query does after parsing (waiting for its permit, the
//! catalogue's census, the store reads, the evaluation) runs here, so a
//! heavy query cannot take the CPU ingest needs when it is short; when it
//! is not, queries run as fast as before. `TRIBUTARY_QUERY_NICE` (0 to 19)
//! sets another nice value; 0 runs queries at ingest's priority (`cargo
//! xtask bench promql` with and without it compares).
//!
//! One runtime for the process, started by [`start`] (the server calls it
//! before serving, so a bad `TRIBUTARY_QUERY_NICE` stops it there) or by
//! the first query; its threads live as long as the process (the blocking
//! pool's idle threads end after tokio's 10 s keep-alive). A query whose
//! caller goes away (a dropped HTTP request) is aborted on it.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use super::QueryError;

/// The nice value of every query thread (the merger's threads keep the
/// process's, 0 by default; 19 is the lowest priority).
pub const QUERY_NICE: i32 = 10;
/// Overrides [`QUERY_NICE`] (0 to 19).
pub const NICE_ENV: &str = "TRIBUTARY_QUERY_NICE";
/// Worker threads: the store's PostgreSQL reads and the glue between the
/// blocking calls (SQLite reads and evaluation run on the blocking pool).
const WORKERS: usize = 2;

/// Never dropped: a static outlives every query.
static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Starts the query runtime unless it runs already; an error names a bad
/// [`NICE_ENV`] or why the threads did not start.
pub fn start() -> std::io::Result<()> {
    match RUNTIME.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::other(e.clone())),
    }
}

fn build() -> std::io::Result<Runtime> {
    let nice = crate::nice::from_env(NICE_ENV, QUERY_NICE)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("tributary-query")
        .enable_all()
        .on_thread_start(move || {
            static WARNED: AtomicBool = AtomicBool::new(false);
            crate::nice::lower_priority(nice, &WARNED, "PromQL queries");
        })
        .build()
}

fn handle() -> Result<Handle, QueryError> {
    match RUNTIME.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(QueryError::Unavailable(format!(
            "the query runtime did not start: {e}"
        ))),
    }
}

/// Runs `query` on the query runtime and waits for its answer; dropping
/// the returned future aborts it there.
pub(super) async fn run<T, F>(query: F) -> Result<T, QueryError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, QueryError>> + Send + 'static,
{
    let mut task = AbortOnDrop(handle()?.spawn(query));
    match (&mut task.0).await {
        Ok(answer) => answer,
        Err(e) => Err(QueryError::Execution(format!(
            "query evaluation failed: {e}"
        ))),
    }
}

/// Aborts the task when its caller stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{NICE_ENV, QUERY_NICE, run};

    #[tokio::test]
    async fn queries_run_at_a_lower_priority() {
        let (worker, blocking) = run(async {
            let worker = rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .map_err(|e| super::QueryError::Execution(e.to_string()))?;
            let blocking = tokio::task::spawn_blocking(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid()))
            })
            .await
            .map_err(|e| super::QueryError::Execution(e.to_string()))?
            .map_err(|e| super::QueryError::Execution(e.to_string()))?;
            Ok((worker, blocking))
        })
        .await
        .unwrap();
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        // Already at or past it (a niced test run), or set otherwise:
        // nothing to compare.
        if here < QUERY_NICE && std::env::var_os(NICE_ENV).is_none() {
            assert_eq!((worker, blocking), (QUERY_NICE, QUERY_NICE));
        }
    }

    #[tokio::test]
    async fn a_dropped_query_is_aborted() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let query = run(async move {
            // Holds `tx` until aborted: never answers by itself.
            let _tx = tx;
            std::future::pending::<Result<(), super::QueryError>>().await
        });
        // Polled once, so that the task is spawned, then dropped.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), query).await;
        // The aborted task drops `tx`: `rx` ends with an error.
        assert!(rx.await.is_err());
    }
}
