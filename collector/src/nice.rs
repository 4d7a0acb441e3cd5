//! Lower scheduling priority for the collector's background threads (the
//! exports' runtime, the PromQL query runtime): a nice value read from an
//! environment variable, and each thread lowering its own priority when it
//! starts, so that when the CPU is short the merger and ingest run first.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// The nice value `var` names (0 to 19), or `default` when it is unset;
/// an error names the variable and its bad value.
pub fn from_env(var: &str, default: i32) -> std::io::Result<i32> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|n| (0..=19).contains(n))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{var}={v:?}: expected a nice value from 0 to 19"),
                )
            }),
    }
}

/// Lowers the calling thread's priority to `nice` (on Linux the nice
/// value is per thread: the thread id names it). A priority that cannot
/// be lowered (a sandbox that forbids it) is logged once per `warned`
/// flag, naming `what` runs at the collector's priority instead.
pub fn lower_priority(nice: i32, warned: &AtomicBool, what: &'static str) {
    let tid = rustix::thread::gettid();
    // Only ever lower it: a collector started niced past it stays there.
    if rustix::process::getpriority_process(Some(tid)).is_ok_and(|n| n >= nice) {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice)
        && !warned.swap(true, Ordering::Relaxed)
    {
        warn!(error = %e, nice, "cannot lower the scheduling priority of {what}; they run at the collector's");
    }
}
