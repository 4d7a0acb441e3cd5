//! A headless Chromium that a test drives: Debian's `chromium`, started by
//! playwright-core under node (`browser/driver.cjs`) with `--headless
//! --no-sandbox --disable-gpu --disable-background-networking`. The test
//! sends one command at a time and waits for its answer; the driver records
//! every `alert` (dialog) and page error, which [`Browser::log`] returns.
//!
//! Both programs are found through the environment variables `cargo xtask
//! test` sets (it installs what is missing) or at their usual paths; a
//! missing one is an error saying to run `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::peers::tool;
use crate::process::TestDir;

/// Debian's Chromium.
pub const CHROMIUM_ENV: &str = "TRIBUTARY_CHROMIUM";
/// playwright-core's `cli.js` (the package is its directory).
pub const PLAYWRIGHT_CORE_ENV: &str = "TRIBUTARY_PLAYWRIGHT_CORE";

/// The driver script, written into the test directory at start.
const DRIVER: &str = include_str!("browser/driver.cjs");

/// Longest a single command may take (a page load, a screenshot).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running browser with one page. Killed when dropped. Its methods take
/// `&self` (one command at a time, in turn), so a test can poll the page
/// from `eventually`.
pub struct Browser {
    inner: Mutex<Driver>,
}

/// node and its pipes.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Driver {
    async fn read(&mut self) -> Result<Value> {
        let line = tokio::time::timeout(COMMAND_TIMEOUT, self.lines.next_line())
            .await
            .context("the browser driver did not answer in time")??;
        let Some(line) = line else {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("the browser driver exited; its log:\n{log}");
        };
        serde_json::from_str(&line).with_context(|| format!("browser driver said {line:?}"))
    }
}

/// What the page did that a test may want to refuse.
#[derive(Debug, Default)]
pub struct PageLog {
    /// Messages of `alert`, `confirm` and `prompt` calls.
    pub dialogs: Vec<String>,
    /// Uncaught exceptions and console errors.
    pub errors: Vec<String>,
}

impl Browser {
    /// Starts Chromium with a 1280×800 page; its output goes to
    /// `browser.log` in `dir`.
    pub async fn start(dir: &TestDir) -> Result<Browser> {
        let chromium = tool(CHROMIUM_ENV, &["/usr/bin/chromium"])?;
        let cli = tool(
            PLAYWRIGHT_CORE_ENV,
            &["target/playwright/node_modules/playwright-core/cli.js"],
        )?;
        let script = dir.join("driver.cjs");
        std::fs::write(&script, DRIVER).with_context(|| format!("write {}", script.display()))?;
        let log_path = dir.join("browser.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new("node")
            .arg(&script)
            .env("CHROMIUM", &chromium)
            .env("PLAYWRIGHT_CORE_CLI", &cli)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start node (needed for playwright-core)")?;
        let stdin = child.stdin.take().context("node's stdin")?;
        let stdout = child.stdout.take().context("node's stdout")?;
        let mut driver = Driver {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            log: log_path,
        };
        let hello = driver.read().await?;
        if hello.get("ready") != Some(&Value::Bool(true)) {
            bail!("the browser driver said {hello} instead of starting");
        }
        Ok(Browser {
            inner: Mutex::new(driver),
        })
    }

    /// Sends `command` and returns its `value`; a failed command is an
    /// error with the driver's message.
    pub async fn call(&self, command: Value) -> Result<Value> {
        let mut driver = self.inner.lock().await;
        let mut line = command.to_string();
        line.push('\n');
        driver.stdin.write_all(line.as_bytes()).await?;
        driver.stdin.flush().await?;
        let answer = driver.read().await?;
        if let Some(error) = answer.get("error") {
            bail!("browser: {command}: {}", error.as_str().unwrap_or_default());
        }
        Ok(answer.get("value").cloned().unwrap_or(Value::Null))
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(json!({"op": "goto", "url": url})).await.map(drop)
    }

    /// The value of the JavaScript expression `js` in the page (JSON).
    pub async fn eval(&self, js: &str) -> Result<Value> {
        self.call(json!({"op": "eval", "js": js})).await
    }

    /// Moves the keyboard focus to the element `selector` finds.
    pub async fn focus(&self, selector: &str) -> Result<()> {
        self.call(json!({"op": "focus", "selector": selector}))
            .await
            .map(drop)
    }

    /// Presses a key (`Enter`, `Tab`, ...) where the focus is.
    pub async fn press(&self, key: &str) -> Result<()> {
        self.call(json!({"op": "press", "key": key}))
            .await
            .map(drop)
    }

    pub async fn viewport(&self, width: u32, height: u32) -> Result<()> {
        self.call(json!({"op": "viewport", "width": width, "height": height}))
            .await
            .map(drop)
    }

    /// A PNG of the viewport (or the whole page) at `path`.
    pub async fn screenshot(&self, path: &Path, full_page: bool) -> Result<()> {
        self.call(json!({"op": "screenshot", "path": path, "full": full_page}))
            .await
            .map(drop)
    }

    /// Dialogs and errors the page produced so far.
    pub async fn log(&self) -> Result<PageLog> {
        let v = self.call(json!({"op": "log"})).await?;
        let list = |name: &str| -> Vec<String> {
            v[name]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(PageLog {
            dialogs: list("dialogs"),
            errors: list("errors"),
        })
    }

    /// Closes the browser and waits for node to exit.
    pub async fn close(self) -> Result<()> {
        self.call(json!({"op": "close"})).await?;
        let Driver {
            mut child, stdin, ..
        } = self.inner.into_inner();
        drop(stdin);
        tokio::time::timeout(COMMAND_TIMEOUT, child.wait())
            .await
            .context("node did not exit after closing the browser")??;
        Ok(())
    }
}
