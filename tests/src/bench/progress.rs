//! The progress line on stderr: rewritten in place on a terminal, one line
//! every few seconds otherwise (CI logs, pipes).

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::load_average;

/// How often a non-terminal gets a status line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    tty: bool,
    /// When the last status line was printed (non-terminal only).
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    /// A line that stays.
    pub fn say(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "bench: {line}");
    }

    /// A line that the next one replaces.
    pub fn status(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[Kbench: {line}");
            let _ = err.flush();
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            *last = Some(Instant::now());
            let _ = writeln!(err, "bench: {line}");
        }
    }

    /// Waits `d`, showing a bar, `label` and whatever `extra` says.
    pub async fn wait(&self, d: Duration, label: &str, mut extra: impl FnMut() -> String) {
        let start = Instant::now();
        loop {
            let elapsed = start.elapsed();
            let done = (elapsed.as_secs_f64() / d.as_secs_f64()).min(1.0);
            let filled = (done * 20.0).round() as usize;
            let digits = if d < Duration::from_secs(10) { 1 } else { 0 };
            self.status(&format!(
                "{label} [{}{}] {:.digits$}/{:.digits$} s  {}  load {:.2}",
                "#".repeat(filled),
                ".".repeat(20 - filled),
                elapsed.as_secs_f64().min(d.as_secs_f64()),
                d.as_secs_f64(),
                extra(),
                load_average()[0],
            ));
            if elapsed >= d {
                break;
            }
            tokio::time::sleep((d - elapsed).min(Duration::from_millis(500))).await;
        }
    }

    /// Awaits `fut`, showing `label` and the seconds spent meanwhile.
    pub async fn during<T>(&self, label: &str, fut: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    self.status(&format!("{label} ({:.0} s)", start.elapsed().as_secs_f64()));
                }
            }
        }
    }
}
