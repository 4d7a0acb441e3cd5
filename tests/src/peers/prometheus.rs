//! A private Prometheus server (Debian's `prometheus`) that scrapes the
//! targets a test gives it every second, and `promtool check metrics`, for
//! the metrics tests of both binaries.
//!
//! [`Prometheus::start`] writes a config with static targets into the
//! test's [`TestDir`], runs the server on a free loopback port with its
//! TSDB there too, and waits until it is ready; [`Prometheus::query`] runs
//! an instant PromQL query through the HTTP API (`/api/v1/query`) and
//! returns the samples. [`promtool_check_metrics`] lints a `/metrics` body.
//! [`http_get`] is the small HTTP/1.0 client the tests scrape with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Peer, tool};
use crate::process::{TestDir, eventually, free_addr};

/// The `prometheus` server binary.
pub const PROMETHEUS_ENV: &str = "TRIBUTARY_PROMETHEUS";
/// `promtool`.
pub const PROMTOOL_ENV: &str = "TRIBUTARY_PROMTOOL";

/// How long Prometheus may take to become ready, and a query to hold.
const PATIENCE: Duration = Duration::from_secs(60);

/// One sample of an instant vector: its labels (with `__name__`) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    peer: Peer,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job name, `host:port`) every
    /// second at `/metrics`, and waits until it is ready.
    pub async fn start(dir: &TestDir, targets: &[(&str, SocketAddr)]) -> Result<Prometheus> {
        let program = tool(PROMETHEUS_ENV, &["/usr/bin/prometheus"])?;
        let addr = free_addr()?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: '{job}'\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let args = vec![
            format!("--config.file={}", path.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ),
            format!("--web.listen-address={addr}"),
            "--storage.tsdb.retention.time=1h".into(),
        ];
        let mut peer = Peer::spawn("prometheus", &program, &args, dir, addr)?;
        let ready = eventually(PATIENCE, "prometheus is ready", || async {
            let (status, _) = http_get(addr, "/-/ready", None).await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        peer.check_running()?;
        ready.with_context(|| format!("prometheus did not start:\n{}", peer.log()))?;
        Ok(Prometheus { peer })
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.peer.addr
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.peer.log()
    }

    /// The samples of the instant query `promql` (evaluated now).
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        self.query_path(
            promql,
            format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .await
    }

    /// The samples of `promql` evaluated at `time` (seconds since the Unix
    /// epoch): two queries at one past time see the same scrapes.
    pub async fn query_at(&self, promql: &str, time: f64) -> Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}&time={time:.3}", url_encode(promql));
        self.query_path(promql, path).await
    }

    async fn query_path(&self, promql: &str, path: String) -> Result<Vec<Sample>> {
        let (status, body) = http_get(self.peer.addr, &path, None).await?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("query {promql}: not JSON ({status}): {body}"))?;
        ensure!(
            status == 200 && json["status"] == "success",
            "query {promql}: {status}: {body}"
        );
        let data = &json["data"];
        ensure!(
            data["resultType"] == "vector",
            "query {promql}: not a vector: {body}"
        );
        let mut out = Vec::new();
        for r in data["result"].as_array().into_iter().flatten() {
            let labels = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("query {promql}: a sample without a value: {r}"))?;
            out.push(Sample { labels, value });
        }
        Ok(out)
    }

    /// The one sample `promql` returns (an error if it returns none or
    /// several).
    pub async fn query_one(&self, promql: &str) -> Result<f64> {
        let samples = self.query(promql).await?;
        match samples.as_slice() {
            [one] => Ok(one.value),
            _ => bail!("query {promql}: expected one sample, got {samples:?}"),
        }
    }

    /// Waits until `promql` returns exactly one sample with value `want`
    /// (e.g. `up{job="agent"}` is 1 once a scrape succeeded).
    pub async fn wait_for(&self, promql: &str, want: f64) -> Result<()> {
        let waited = eventually(PATIENCE, &format!("{promql} == {want}"), || async {
            (self.query_one(promql).await.ok()? == want).then_some(())
        })
        .await;
        waited.with_context(|| format!("prometheus log:\n{}", self.log()))
    }
}

/// `promtool check metrics` over `body`: Ok with its output when it finds
/// no problem, an error with the problems otherwise.
pub async fn promtool_check_metrics(body: &str) -> Result<String> {
    let program = tool(PROMTOOL_ENV, &["/usr/bin/promtool"])?;
    let mut child = tokio::process::Command::new(&program)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    stdin.write_all(body.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics ({}): {text}",
        out.status
    );
    Ok(text)
}

/// GET `path` from `addr` over HTTP/1.0 (one request, the server closes),
/// with an optional `Accept`; the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<(u16, String)> {
    let raw = http_get_raw(addr, path, accept).await?;
    parse_response(addr, path, &raw)
}

/// [`http_get`], sent again (up to `attempts` times in all) when the server
/// closed the connection without a single byte of answer, as Go's
/// `net/http` (Prometheus's scraper) retries an idempotent request on a
/// connection closed before any response byte. Under a connection storm the
/// kernel's accept queue overflows: a request whose segments it dropped
/// arrives by TCP retransmission, whose backoff can outlast the server's
/// header deadline, and the server then closes the connection unanswered.
/// Also returns how many attempts were answered with nothing.
pub async fn http_get_retrying_unanswered(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    attempts: u32,
) -> Result<((u16, String), u32)> {
    let mut unanswered = 0;
    loop {
        let raw = http_get_raw(addr, path, accept).await?;
        if raw.is_empty() && unanswered + 1 < attempts {
            unanswered += 1;
            continue;
        }
        return Ok((parse_response(addr, path, &raw)?, unanswered));
    }
}

/// The raw bytes of the answer to one HTTP/1.0 GET.
async fn http_get_raw(addr: SocketAddr, path: &str, accept: Option<&str>) -> Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    Ok(raw)
}

/// The status code and the body of an HTTP answer.
fn parse_response(addr: SocketAddr, path: &str, raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path} from {addr}: no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} from {addr}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter (everything but RFC 3986's
/// unreserved characters).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
