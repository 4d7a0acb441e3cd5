//! Lower scheduling priority for the collector's background threads (the
//! exports' runtime, the PromQL query runtime): a [`Priority`] read from an
//! environment variable, and each thread lowering its own priority when it
//! starts, so that when the CPU is short the merger and ingest run first.
//!
//! Two kinds: a nice value (0 to 19), which still shares the CPU with
//! ingest by weight (nice 10 gets about a tenth of what a nice-0 thread
//! gets when both want it), and `idle` (Linux `SCHED_IDLE`), which runs
//! only where nothing else wants the CPU: any other thread that wakes takes
//! the CPU from it at once, and the kernel places a waking thread on a CPU
//! that runs only idle threads as if that CPU were free. With a free core
//! a niced thread takes it, and the merger, waking for its next batch,
//! can wait behind it for the rest of its time slice; behind an idle
//! thread it barely waits.

use std::sync::atomic::{AtomicBool, Ordering};

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
};
use tracing::warn;

/// How a background thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The normal policy at this nice value (0 to 19).
    Nice(i32),
    /// `SCHED_IDLE`: only CPU time no other thread wants.
    Idle,
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Nice(n) => write!(f, "nice {n}"),
            Priority::Idle => f.write_str("idle"),
        }
    }
}

/// The priority `var` names (`idle`, or a nice value from 0 to 19), or
/// `default` when it is unset; an error names the variable and its bad
/// value.
pub fn from_env(var: &str, default: Priority) -> std::io::Result<Priority> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(v)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{var}={v:?}: expected `idle` or a nice value from 0 to 19"),
        )),
        Ok(v) => parse(&v).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{var}={v:?}: expected `idle` or a nice value from 0 to 19"),
            )
        }),
    }
}

fn parse(v: &str) -> Option<Priority> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("idle") {
        return Some(Priority::Idle);
    }
    v.parse::<i32>()
        .ok()
        .filter(|n| (0..=19).contains(n))
        .map(Priority::Nice)
}

/// Lowers the calling thread's priority to `priority` (on Linux both the
/// nice value and the policy are per thread). A priority that cannot be
/// lowered (a sandbox that forbids it) is logged once per `warned` flag,
/// naming `what` runs at the collector's priority instead.
pub fn lower_priority(priority: Priority, warned: &AtomicBool, what: &'static str) {
    let outcome = match priority {
        Priority::Nice(nice) => lower_nice(nice),
        Priority::Idle => to_idle(),
    };
    if let Err(e) = outcome
        && !warned.swap(true, Ordering::Relaxed)
    {
        warn!(error = %e, %priority, "cannot lower the scheduling priority of {what}; they run at the collector's");
    }
}

fn lower_nice(nice: i32) -> Result<(), String> {
    let tid = rustix::thread::gettid();
    // Only ever lower it: a collector started niced past it stays there.
    if rustix::process::getpriority_process(Some(tid)).is_ok_and(|n| n >= nice) {
        return Ok(());
    }
    rustix::process::setpriority_process(Some(tid), nice).map_err(|e| e.to_string())
}

fn to_idle() -> Result<(), String> {
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // Sets the policy, then the nice value to 0 (the only one `SCHED_IDLE`
    // takes, and meaningless under it): that second step fails in a
    // collector started niced, without privilege to raise it back, once
    // the policy is set already; the policy is what counts.
    let set = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
    match thread_schedule_policy() {
        Ok(policy) if policy == idle => Ok(()),
        _ => Err(match set {
            Err(e) => format!("{e:?}"),
            Ok(()) => "the policy did not change".to_owned(),
        }),
    }
}

/// Whether this process may put a thread under `SCHED_IDLE` (tried on a
/// thread of its own): tests skip their checks where a sandbox forbids it.
#[cfg(test)]
pub fn idle_allowed() -> bool {
    std::thread::spawn(|| {
        let warned = AtomicBool::new(false);
        lower_priority(Priority::Idle, &warned, "the probe");
        current().is_ok_and(|p| p == Priority::Idle)
    })
    .join()
    .unwrap_or(false)
}

/// The calling thread's priority as the kernel has it, for tests and
/// start-up logs: `Idle` under `SCHED_IDLE`, else its nice value.
pub fn current() -> std::io::Result<Priority> {
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if thread_schedule_policy().is_ok_and(|p| p == idle) {
        return Ok(Priority::Idle);
    }
    rustix::process::getpriority_process(Some(rustix::thread::gettid()))
        .map(Priority::Nice)
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_idle_and_nice_values_and_names_a_bad_one() {
        assert_eq!(parse("idle"), Some(Priority::Idle));
        assert_eq!(parse(" IDLE "), Some(Priority::Idle));
        assert_eq!(parse("0"), Some(Priority::Nice(0)));
        assert_eq!(parse("19"), Some(Priority::Nice(19)));
        assert_eq!(parse("20"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("low"), None);
    }

    #[test]
    fn a_thread_goes_idle_and_the_others_do_not() {
        let before = current().unwrap();
        let warned = AtomicBool::new(false);
        let on_thread = std::thread::spawn(move || {
            lower_priority(Priority::Idle, &warned, "the test's thread");
            (current().unwrap(), warned.load(Ordering::Relaxed))
        })
        .join()
        .unwrap();
        if on_thread.1 {
            // A sandbox that forbids the policy: warned, nothing to check.
            return;
        }
        assert_eq!(on_thread, (Priority::Idle, false));
        // Per thread: this one is as it was.
        assert_eq!(current().unwrap(), before);
    }
}
