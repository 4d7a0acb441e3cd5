//! How a Tributary binary lives as a process, the same for the agent and
//! the collector: logs go to stderr through `tracing` (filtered by
//! `RUST_LOG`, text or JSON), the process stops on SIGINT or SIGTERM, an
//! error is told with each of its causes once, and the wall clock is read
//! in one unit ([`now_ns`]), and its self-metrics are served the same way
//! ([`metrics`]).
//!
//! Owns nothing at run time: each function is called once by a `main` (or,
//! for [`error_chain`], wherever an error from a library must become text,
//! and for [`now_ns`], wherever a time is stamped).
//!
//! May touch: `tokio`'s signal handling and `tracing-subscriber`; it imports
//! no Tributary crate, and nothing in it knows the agent from the collector.

#![forbid(unsafe_code)]

pub mod build;
pub mod metrics;

use std::error::Error;
use std::io::IsTerminal;

/// Resolves on SIGINT or SIGTERM (on non-Unix targets, on Ctrl-C only).
///
/// The handlers are installed when this is called (inside a runtime), not
/// when the future is first polled: call it before binding any port, so a
/// signal that arrives while the process starts up stops it cleanly
/// instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async fn recv(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Wall clock now, ns since the Unix epoch (0 if the clock is before 1970):
/// the one time unit both binaries stamp readings, receipts and the
/// Hello/Welcome clocks with.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Installs the process's log subscriber: stderr, `RUST_LOG` or `info`,
/// JSON lines when `format` is `"json"`, text otherwise, with colour only
/// when stderr is a terminal (`tracing-subscriber` would colour a log file
/// or a journal too).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `err` and its sources joined with `: `, skipping a source whose text the
/// previous levels already contain (some libraries, hyper and
/// tokio-postgres among them, repeat their source in their own message).
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Level(&'static str, Option<Box<Level>>);

    impl std::fmt::Display for Level {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Level {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn each_cause_is_told_once() {
        let err = Level(
            "transport error: tcp connect error",
            Some(Box::new(Level(
                "tcp connect error",
                Some(Box::new(Level("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&err),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(error_chain(&Level("alone", None)), "alone");
    }
}
