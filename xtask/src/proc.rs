//! Child processes for the demo, with std only: each is started with its
//! output in a log file, stopped with SIGTERM (sent by the `kill` utility, so
//! no libc or signal crate is needed) and killed when dropped, so an xtask
//! that fails half-way leaves nothing running. Also: loopback ports and
//! running a short command with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// How often waits look again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A running child process; killed (SIGKILL) if still running when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Child {
    /// Start `command` with stdin closed and stdout and stderr appended to
    /// `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let stderr = file
            .try_clone()
            .with_context(|| format!("open {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {name} ({})", crate::show(command)))?;
        Ok(Child {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("check on {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Send SIGTERM and wait up to `deadline` for it to exit; past that,
    /// SIGKILL it. Returns the exit status and whether it had to be killed.
    pub fn terminate(&mut self, deadline: Duration) -> Result<(ExitStatus, bool)> {
        if let Some(status) = self.exited()? {
            return Ok((status, false));
        }
        let pid = self.child.id().to_string();
        // An error here means it exited meanwhile; the wait below tells.
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(status) = self.exited()? {
                return Ok((status, false));
            }
            std::thread::sleep(POLL_EVERY);
        }
        self.child
            .kill()
            .with_context(|| format!("kill {}", self.name))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("wait for {}", self.name))?;
        self.status = Some(status);
        Ok((status, true))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("<cannot read {}: {e}>", self.log.display()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.exited(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `command` and collect its output; past `timeout` it is killed and
/// this is an error.
pub fn output_within(command: &mut Command, timeout: Duration) -> Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", crate::show(command)))?;
    let pid = child.id().to_string();
    // `wait_with_output` drains both pipes while it waits, so a chatty child
    // cannot block on a full pipe; it runs on a thread to allow a deadline.
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match result.recv_timeout(timeout) {
        Ok(output) => output.with_context(|| format!("run {}", crate::show(command))),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            bail!("{} took longer than {timeout:?}", crate::show(command))
        }
    }
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    listener
        .local_addr()
        .context("local address of 127.0.0.1:0")
}

/// `127.0.0.1:<preferred>` if that port is free, else any free port.
pub fn preferred_or_free_addr(preferred: u16) -> Result<SocketAddr> {
    match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(listener) => listener.local_addr().context("local address"),
        Err(_) => free_addr(),
    }
}

/// Wait until `addr` accepts TCP connections. Fails early, with the end of
/// its log, if `owner` exits meanwhile.
pub fn wait_for_port(addr: SocketAddr, owner: &mut Child, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = owner.exited()? {
            bail!(
                "{} exited ({status}) before listening on {addr}; its log ends with:\n{}",
                owner.name(),
                owner.log_tail(20)
            );
        }
        if Instant::now() >= until {
            bail!(
                "{} does not listen on {addr} after {timeout:?}; its log ends with:\n{}",
                owner.name(),
                owner.log_tail(20)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}
