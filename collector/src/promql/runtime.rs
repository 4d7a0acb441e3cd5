//! The queries' own tokio runtime, on threads the OS schedules after the
//! merger's and the gRPC/HTTP runtime's: each of its threads (two workers
//! and the blocking pool) sets its own scheduling priority to
//! [`QUERY_PRIORITY`], Linux's `SCHED_IDLE`, when it starts. Everything a
//! query does after parsing, planning and taking its permit (the
//! catalogue's census, the store reads, the evaluation) runs as one call
//! on a thread of its blocking pool ([`blocking`]), so a heavy query only
//! ever takes CPU time nothing else wants: a merger that wakes for its
//! next batch takes the CPU from a query at once, and is placed on a core
//! that runs only query threads as if that core were free. At nice 10 (the
//! exports', and queries' until session 12) a query with a free core took
//! it, and the merger waking beside it waited for the rest of its time
//! slice: `cargo xtask bench promql` measured ingest 45 % slower under the
//! heavy query loop at nice 10, 3 % at `idle`, in the same run. The price:
//! while other work keeps every core busy, queries wait (their timeout
//! still answers). The caller's task (the HTTP runtime's) only waits: for
//! the permit, then for the answer; a query crosses between threads twice
//! in all (there and back), whatever it reads. The workers drive
//! PostgreSQL's connections, which a query's thread blocks on
//! (`load::Reads`).
//! `TRIBUTARY_QUERY_NICE` sets another priority: a nice value (0 to 19;
//! 0 runs queries at ingest's priority) or `idle`.
//!
//! One runtime for the process, started by [`start`] (the server calls it
//! before serving, so a bad `TRIBUTARY_QUERY_NICE` stops it there) or by
//! the first query; its threads live as long as the process (the blocking
//! pool's idle threads end after tokio's 10 s keep-alive). A query whose
//! caller goes away (a dropped HTTP request) is told so through the flag
//! it is given: its reads stop at their next chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::{Handle, Runtime};

use super::QueryError;
use crate::nice::Priority;

/// The priority of every query thread (the merger's threads keep the
/// process's, nice 0 by default).
pub const QUERY_PRIORITY: Priority = Priority::Idle;
/// Overrides [`QUERY_PRIORITY`]: `idle` (`SCHED_IDLE`) or a nice value (0 to 19).
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
    let priority = crate::nice::from_env(NICE_ENV, QUERY_PRIORITY)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("tributary-query")
        .enable_all()
        .on_thread_start(move || {
            static WARNED: AtomicBool = AtomicBool::new(false);
            crate::nice::lower_priority(priority, &WARNED, "PromQL queries");
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

/// Runs `query` on the query runtime's blocking pool, where it may block
/// on the store's reads, and waits for its answer. `query` is given a flag
/// set when the returned future is dropped (the request went away): its
/// reads stop at their next chunk (the work cannot be stopped from
/// outside). A panic answers [`QueryError::Execution`].
pub(super) async fn blocking<T, F>(query: F) -> Result<T, QueryError>
where
    T: Send + 'static,
    F: FnOnce(&Arc<AtomicBool>) -> Result<T, QueryError> + Send + 'static,
{
    let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = Arc::clone(&abandoned.0);
    let task = handle()?.spawn_blocking(move || query(&flag));
    match task.await {
        Ok(answer) => answer,
        Err(e) => Err(QueryError::Execution(format!(
            "query evaluation failed: {e}"
        ))),
    }
}

/// Sets its flag when dropped: tells a query on its blocking thread that
/// whoever awaited it is gone (on the normal path it is set after the
/// query has ended).
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::Ordering;

    use super::{NICE_ENV, Priority, QUERY_PRIORITY, QueryError, blocking, handle};

    fn nice_here() -> Result<Priority, QueryError> {
        crate::nice::current().map_err(|e| QueryError::Execution(e.to_string()))
    }

    #[tokio::test]
    async fn queries_run_at_a_lower_priority() {
        let on_blocking = blocking(|_| nice_here()).await.unwrap();
        let on_worker = handle()
            .unwrap()
            .spawn(async { nice_here() })
            .await
            .unwrap()
            .unwrap();
        let here = nice_here().unwrap();
        // The default, or what the environment sets; a test run started
        // niced or idle already: nothing to compare.
        let want = crate::nice::from_env(NICE_ENV, QUERY_PRIORITY).unwrap();
        if here == Priority::Nice(0)
            && want != Priority::Nice(0)
            && (want != Priority::Idle || crate::nice::idle_allowed())
        {
            assert_eq!((on_worker, on_blocking), (want, want));
        }
    }

    #[tokio::test]
    async fn a_dropped_query_is_told() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let query = blocking(move |abandoned| {
            // Never answers by itself: waits for its flag.
            while !abandoned.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = tx.send(());
            Ok(())
        });
        // Polled once, so that the work is started, then dropped.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), query).await;
        // The work saw its flag.
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn a_panic_is_an_execution_error() {
        let err = blocking::<(), _>(|_| panic!("boom")).await.unwrap_err();
        assert!(
            matches!(&err, QueryError::Execution(m) if m.contains("boom")),
            "{err:?}"
        );
    }

    /// The query's answer comes at its deadline whatever its blocking work
    /// is doing (`mod.rs` `within`), and the work is told it was abandoned.
    #[tokio::test]
    async fn the_deadline_answers_while_the_work_runs_on() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
        let query = blocking(move |abandoned| {
            // Runs until told otherwise (or far past any deadline).
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while !abandoned.load(Ordering::Relaxed) && std::time::Instant::now() < give_up {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = tx.send(());
            Ok(())
        });
        let answer = crate::promql::within(deadline, "the test's work", query).await;
        assert!(matches!(answer, Err(QueryError::Timeout(_))), "{answer:?}");
        assert!(rx.await.is_ok(), "the work saw its flag and ended");
    }
}
