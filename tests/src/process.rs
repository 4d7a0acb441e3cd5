//! Helpers for end-to-end tests that run the real binaries.
//!
//! - [`bin_path`]: the built `tributary-collector`, `tributary-agent` and
//!   `tributary-sim` next to the running test executable
//!   (`target/debug/deps/x` → `target/debug/`). They are built by
//!   `cargo build --workspace --bins`, which `cargo xtask test` runs first.
//! - [`Proc`]: a spawned child with its output in a log file, killed when
//!   dropped; [`Proc::kill`] sends SIGKILL, [`Proc::terminate`] SIGTERM.
//! - [`TestDir`]: a fresh directory under `target/test-tmp/`, removed when
//!   dropped unless the test panicked (kept for the post-mortem) or
//!   `TRIBUTARY_KEEP_TMP` is set.
//! - [`free_addr`], [`wait_for_port`], [`eventually`]: ports and awaiting
//!   conditions without fixed sleeps.

use std::ffi::OsStr;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

/// Environment variable naming the directory of the built binaries; when
/// unset it is derived from the running executable.
pub const BIN_DIR_ENV: &str = "TRIBUTARY_BIN_DIR";

/// How often [`wait_for_port`] and [`eventually`] look again.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// The directory holding the workspace's binaries: `$TRIBUTARY_BIN_DIR`, or
/// the profile directory of the target dir this test executable was built in.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locate the running test executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    // Test executables live in `<profile>/deps/`; binaries one level up.
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir
            .parent()
            .with_context(|| format!("{} has no parent directory", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The path of the workspace binary `name`, which must have been built.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "binary {} not found: build it first with `cargo build --workspace --bins` \
             (`cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// The target directory (`target/`), parent of the profile directory.
pub fn target_dir() -> Result<PathBuf> {
    let bin_dir = bin_dir()?;
    let target = bin_dir
        .parent()
        .with_context(|| format!("{} has no parent directory", bin_dir.display()))?;
    Ok(target.to_path_buf())
}

/// A fresh, empty directory under `target/test-tmp/`.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Create `target/test-tmp/<label>-<pid>-<n>`, emptied if it exists.
    pub fn new(label: &str) -> Result<TestDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{label}-{}-{n}", std::process::id());
        let path = target_dir()?.join("test-tmp").join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("remove old {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TestDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TRIBUTARY_KEEP_TMP").is_some() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            // Best effort: a leftover directory only costs disk space.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A loopback address with a port that was free a moment ago (bound to port
/// 0, read back, released). Another process may take it before it is used;
/// on loopback in a test run that is rare enough.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    listener
        .local_addr()
        .context("local address of 127.0.0.1:0")
}

/// Wait until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("{addr} accepts connections"), || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// Call `check` until it returns `Some`, at most for `timeout`; the error
/// names `what` was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Builder for a [`Proc`].
#[derive(Debug)]
pub struct ProcBuilder {
    name: String,
    command: Command,
    log: Option<PathBuf>,
}

impl ProcBuilder {
    /// Append an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// Append arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Set an environment variable (e.g. `RUST_LOG`; the default is
    /// `info` unless the test process has one).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Send stdout and stderr to `path` (appending, without colour codes)
    /// instead of inheriting them; [`Proc::log`] reads it back.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.command.env("NO_COLOR", "1");
        self.log = Some(path.into());
        self
    }

    /// Start the process.
    pub fn spawn(mut self) -> Result<Proc> {
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open log {}", log.display()))?;
            let stderr = file
                .try_clone()
                .with_context(|| format!("clone log {}", log.display()))?;
            self.command.stdout(file).stderr(stderr);
        }
        let child = self
            .command
            .spawn()
            .with_context(|| format!("spawn {}", self.name))?;
        Ok(Proc {
            name: self.name,
            child,
            log: self.log,
        })
    }
}

/// A running child process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    /// Prepare to run the workspace binary `bin` (see [`bin_path`]).
    pub fn builder(bin: &str) -> Result<ProcBuilder> {
        Ok(Self::builder_at(bin, bin_path(bin)?))
    }

    /// Prepare to run the executable at `path`, called `name` in messages
    /// (another build's binary, for before/after comparisons).
    pub fn builder_at(name: &str, path: PathBuf) -> ProcBuilder {
        let mut command = Command::new(path);
        command.stdin(Stdio::null()).kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        ProcBuilder {
            name: name.to_owned(),
            command,
            log: None,
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("poll {}", self.name))
    }

    /// Wait for it to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .with_context(|| format!("wait for {}", self.name))
    }

    /// SIGKILL it and reap it: a crash without any chance to clean up.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.child
            .kill()
            .await
            .with_context(|| format!("kill {}", self.name))?;
        self.wait().await
    }

    /// Send SIGTERM and wait up to `deadline` for it to exit; past that it is
    /// killed and this is an error. A process that already exited is fine.
    pub async fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal("TERM").await?;
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("wait for {}", self.name)),
            Err(_) => {
                self.kill().await?;
                bail!("{} did not exit within {deadline:?} of SIGTERM", self.name)
            }
        }
    }

    /// Send SIGTERM or SIGINT (by the `kill` utility: no libc dependency).
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let Some(pid) = self.id() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .context("run kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} ({}): {status}", self.name);
        }
        Ok(())
    }

    /// Everything it wrote so far, if its output goes to a log file.
    pub fn log(&self) -> String {
        match &self.log {
            Some(path) => std::fs::read_to_string(path)
                .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display())),
            None => String::from("<output not captured>"),
        }
    }
}

/// Run a workspace binary to completion (a CLI client subcommand) and
/// return its stdout; a non-zero exit is an error carrying stderr.
/// Runs grpcurl (`$TRIBUTARY_GRPCURL`, set by `cargo xtask test`, or
/// `grpcurl` on PATH) with `args`; its stdout, or an error with its
/// stderr.
pub async fn run_grpcurl(args: &[&str]) -> Result<String> {
    let grpcurl = std::env::var("TRIBUTARY_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let out = Command::new(grpcurl)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running grpcurl (install it, or run `cargo xtask test`, which does)")?;
    if !out.status.success() {
        bail!(
            "grpcurl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn run_bin<I, S>(bin: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(bin_path(bin)?)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {bin}"))?;
    if !output.status.success() {
        bail!(
            "{bin} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{bin} printed invalid UTF-8"))
}
