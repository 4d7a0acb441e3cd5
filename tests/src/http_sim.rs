//! HTTP device simulator: a small hand-written HTTP/1.1 server on tokio.
//!
//! It serves what the agent's `http` driver polls:
//!
//! | path       | answer                                                        |
//! |------------|---------------------------------------------------------------|
//! | `/meter`   | 200, JSON [`MeterValues::nth`] of the n-th `/meter` request   |
//! | `/metrics` | 200, Prometheus text of [`metrics_samples`] of the n-th scrape; `?extra=N` adds N gauges ([`metrics_body_with`]), `?churn=N` N gauges on series new in every scrape ([`churn_body`]) |
//! | `/error`   | 500                                                           |
//! | `/garbage` | 200 with a body that is not valid JSON                        |
//! | other      | 404                                                           |
//!
//! Each endpoint counts its own requests from 1, and what it serves is a pure
//! function of that number, so a test can recompute every value that was
//! served and compare it with what the collector stored. A delay (for the
//! whole simulator via [`HttpSim::delay`] / [`HttpListening::set_delay`], or
//! per request with `?delay_ms=N`) holds the answer back, to provoke timeouts.
//!
//! Connections are kept alive (HTTP/1.1 default; reqwest reuses them), so the
//! parser handles several requests per connection. It understands only what a
//! polling client sends: a request line, headers and an optional
//! `Content-Length` body. Stopping the simulator closes every open connection,
//! like a device that is switched off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `name` field of every `/meter` answer.
pub const METER_NAME: &str = "meter-1";

/// Upper bound on a request's line plus headers; a longer head closes the
/// connection.
const MAX_HEAD_BYTES: u64 = 16 * 1024;

/// Upper bound on a request body the simulator reads (and discards).
const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// What `/meter` serves on its n-th request (n counts from 1).
///
/// Every value is exactly representable as an `f64`, so it survives JSON,
/// the wire and the store unchanged and can be compared with `==`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterValues {
    /// `/power`: `100 + n / 2`, strictly rising.
    pub power: f64,
    /// `/voltage`: `230 + (n mod 8) / 8`.
    pub voltage: f64,
    /// `/count`: `n`, an integer that rises by one per request.
    pub count: u64,
}

impl MeterValues {
    /// The values of the n-th `/meter` request.
    pub fn nth(n: u64) -> Self {
        MeterValues {
            power: 100.0 + n as f64 * 0.5,
            voltage: 230.0 + (n % 8) as f64 * 0.125,
            count: n,
        }
    }

    /// The JSON body served for these values.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "power": self.power,
            "voltage": self.voltage,
            "count": self.count,
            "ok": true,
            "name": METER_NAME,
        })
        .to_string()
    }
}

/// One sample of the Prometheus exposition served by `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `sim_power_watts`.
    pub name: &'static str,
    /// Label pairs in the order they are written.
    pub labels: Vec<(&'static str, &'static str)>,
    /// Sample value (exactly representable, see [`MeterValues`]).
    pub value: f64,
}

/// A metric family: its HELP and TYPE lines.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "sim_power_watts",
        kind: "gauge",
        help: "Power drawn per phase.",
    },
    Family {
        name: "sim_energy_joules_total",
        kind: "counter",
        help: "Energy delivered since the simulator started.",
    },
    Family {
        name: "sim_info",
        kind: "gauge",
        help: "Static facts about the simulated device.",
    },
];

/// The samples of the n-th `/metrics` scrape (n counts from 1), in the order
/// they are written.
pub fn metrics_samples(n: u64) -> Vec<Sample> {
    vec![
        Sample {
            name: "sim_power_watts",
            labels: vec![("phase", "L1")],
            value: 100.0 + n as f64 * 0.5,
        },
        Sample {
            name: "sim_power_watts",
            labels: vec![("phase", "L2")],
            value: 200.0 + n as f64 * 0.5,
        },
        Sample {
            name: "sim_energy_joules_total",
            labels: vec![],
            value: n as f64 * 10.0,
        },
        Sample {
            name: "sim_info",
            labels: vec![("model", "SIM-1"), ("site", "lab 7")],
            value: 1.0,
        },
    ]
}

/// The Prometheus text body of the n-th `/metrics` scrape: every family with
/// its `# HELP` and `# TYPE` lines, then its samples.
pub fn metrics_body(n: u64) -> String {
    let samples = metrics_samples(n);
    let mut body = String::new();
    for family in FAMILIES {
        body.push_str(&format!("# HELP {} {}\n", family.name, family.help));
        body.push_str(&format!("# TYPE {} {}\n", family.name, family.kind));
        for sample in samples.iter().filter(|s| s.name == family.name) {
            body.push_str(sample.name);
            if !sample.labels.is_empty() {
                let labels: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                body.push_str(&format!("{{{}}}", labels.join(",")));
            }
            body.push_str(&format!(" {}\n", sample.value));
        }
    }
    body
}

/// Most extra gauges `/metrics?extra=N` serves.
pub const MAX_EXTRA_SAMPLES: usize = 100_000;

/// [`metrics_body`] followed by `extra` more gauges,
/// `sim_extra_value{i="0"}` .. `{i="extra-1"}`, with value `(n + i) / 2`:
/// a target of any size for scrape benchmarks.
pub fn metrics_body_with(n: u64, extra: usize) -> String {
    let mut body = metrics_body(n);
    if extra > 0 {
        body.push_str("# HELP sim_extra_value Synthetic gauges for scrape benchmarks.\n");
        body.push_str("# TYPE sim_extra_value gauge\n");
        for i in 0..extra.min(MAX_EXTRA_SAMPLES) {
            let value = (n + i as u64) as f64 * 0.5;
            body.push_str(&format!("sim_extra_value{{i=\"{i}\"}} {value}\n"));
        }
    }
    body
}

/// `churn` gauges `sim_churn_value{scrape="n",i="0"}` .. `{i="churn-1"}`
/// of the n-th scrape, value `i`: every scrape brings `churn` series never
/// served before (a label holding a request id does this to a real target).
pub fn churn_body(n: u64, churn: usize) -> String {
    let mut body = String::new();
    if churn > 0 {
        body.push_str("# TYPE sim_churn_value gauge\n");
        for i in 0..churn.min(MAX_EXTRA_SAMPLES) {
            body.push_str(&format!(
                "sim_churn_value{{scrape=\"{n}\",i=\"{i}\"}} {i}\n"
            ));
        }
    }
    body
}

/// The body `/garbage` serves with status 200: JSON cut off in the middle.
pub const GARBAGE_BODY: &str = "{\"power\": 12.5, \"voltage\": ";

/// The paths the simulator answers, each with its own request counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/meter`: JSON.
    Meter,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/error`: status 500.
    Error,
    /// `/garbage`: status 200, invalid JSON.
    Garbage,
    /// Anything else: status 404.
    NotFound,
}

impl Endpoint {
    fn from_path(path: &str) -> Self {
        match path {
            "/meter" => Endpoint::Meter,
            "/metrics" => Endpoint::Metrics,
            "/error" => Endpoint::Error,
            "/garbage" => Endpoint::Garbage,
            _ => Endpoint::NotFound,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters and settings shared by the accept loop, every connection and the
/// handle. Atomics, because each is a single independent number.
#[derive(Default)]
struct State {
    /// Requests parsed, all paths.
    total: AtomicU64,
    /// Requests parsed, per [`Endpoint`].
    per_endpoint: [AtomicU64; 5],
    /// Connections accepted.
    connections: AtomicU64,
    /// Delay before every answer, in nanoseconds.
    delay_ns: AtomicU64,
}

impl State {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    fn set_delay(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay_ns.store(ns, Ordering::Relaxed);
    }
}

/// Builder for the HTTP simulator.
#[derive(Debug, Clone, Default)]
pub struct HttpSim {
    delay: Duration,
}

impl HttpSim {
    /// A simulator that answers at once.
    pub fn new() -> Self {
        HttpSim::default()
    }

    /// Hold every answer back by `delay` (changeable later with
    /// [`HttpListening::set_delay`]).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Bind `addr` (use `127.0.0.1:0` in tests) and serve on it.
    pub async fn bind(self, addr: SocketAddr) -> Result<HttpListening> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("http sim: bind {addr}"))?;
        self.spawn(listener)
    }

    /// Serve on `listener` in a task of the current tokio runtime.
    pub fn spawn(self, listener: TcpListener) -> Result<HttpListening> {
        let addr = listener.local_addr().context("http sim: local address")?;
        let state = Arc::new(State::default());
        state.set_delay(self.delay);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, Arc::clone(&state), shutdown.clone()));
        Ok(HttpListening {
            addr,
            state,
            shutdown,
            task,
        })
    }
}

/// A running HTTP simulator. Dropping it stops the server too (without
/// waiting); [`HttpListening::stop`] stops it and waits.
pub struct HttpListening {
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpListening {
    /// `http://ADDR/PATH` for `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received on all paths.
    pub fn requests(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests received on one endpoint; its n-th request served the values
    /// of `n` (e.g. [`MeterValues::nth`]).
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        self.state.per_endpoint[endpoint.index()].load(Ordering::SeqCst)
    }

    /// Connections accepted so far (one per client while keep-alive works).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Hold every later answer back by `delay` (zero: answer at once).
    pub fn set_delay(&self, delay: Duration) {
        self.state.set_delay(delay);
    }

    /// Stop accepting, close every connection and wait for the server task;
    /// a panic in it is re-raised here.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match (&mut self.task).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow!("http sim task: {e}")),
        }
    }
}

impl Drop for HttpListening {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The accept loop: one task per connection until `shutdown`, then wait for
/// the connection tasks (which watch `shutdown` too) to end.
async fn run(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&state);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = serve_connection(stream, &state) => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "http sim: connection closed");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning; the listener itself stays usable.
                tracing::warn!(error = %e, "http sim: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    /// `?delay_ms=N` of the request.
    delay: Option<Duration>,
    /// `?extra=N` of the request (extra `/metrics` gauges).
    extra: usize,
    /// `?churn=N` of the request (`/metrics` gauges on new series).
    churn: usize,
    keep_alive: bool,
}

/// Answer requests on one connection until the client closes it, asks to
/// close it, or sends something unparseable.
async fn serve_connection(stream: TcpStream, state: &State) -> std::io::Result<()> {
    // Small answers are written in one piece; do not let Nagle hold them.
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    while let Some(request) = read_request(&mut reader).await? {
        state.total.fetch_add(1, Ordering::SeqCst);
        let endpoint = Endpoint::from_path(&request.path);
        let n = state.per_endpoint[endpoint.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let delay = request.delay.unwrap_or_else(|| state.delay());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = respond(&request, endpoint, n);
        writer.write_all(&response).await?;
        writer.flush().await?;
        if !request.keep_alive {
            break;
        }
    }
    writer.shutdown().await
}

/// Read one request head and discard its body. `Ok(None)` when the client
/// closed the connection between requests.
async fn read_request<R>(reader: &mut R) -> std::io::Result<Option<Request>>
where
    R: AsyncBufRead + Unpin,
{
    let mut head = (&mut *reader).take(MAX_HEAD_BYTES);
    let mut line = String::new();
    // The request line; empty lines before it are allowed (RFC 9112 2.2).
    loop {
        line.clear();
        if head.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if !line.trim_end().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {:?}", line.trim_end())));
    };
    let method = method.to_owned();
    let http10 = version == "HTTP/1.0";
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.to_owned();
    let delay = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("delay_ms="))
        .find_map(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let extra = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("extra="))
        .find_map(|n| n.parse().ok())
        .unwrap_or(0);
    let churn = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("churn="))
        .find_map(|n| n.parse().ok())
        .unwrap_or(0);

    let mut content_length = 0u64;
    let mut connection = String::new();
    loop {
        line.clear();
        if head.read_line(&mut line).await? == 0 {
            return Err(if head.limit() == 0 {
                invalid("request head too large".to_owned())
            } else {
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
            });
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(invalid(format!("bad header line {header:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .map_err(|_| invalid(format!("bad content-length {value:?}")))?;
            }
            "transfer-encoding" => {
                return Err(invalid(format!(
                    "transfer-encoding {value:?} not supported"
                )));
            }
            "connection" => connection = value.to_ascii_lowercase(),
            _ => {}
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(invalid(format!("body of {content_length} bytes too large")));
    }
    let mut body = (&mut *reader).take(content_length);
    let discarded = tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
    if discarded < content_length {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    let keep_alive = if http10 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    Ok(Some(Request {
        method,
        path,
        delay,
        extra,
        churn,
        keep_alive,
    }))
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// The complete response (status line, headers, body) to `request`, the n-th
/// request to `endpoint`.
fn respond(request: &Request, endpoint: Endpoint, n: u64) -> Vec<u8> {
    const JSON: &str = "application/json";
    const TEXT: &str = "text/plain; charset=utf-8";
    const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

    let (status, content_type, body) = if request.method != "GET" && request.method != "HEAD" {
        (
            "405 Method Not Allowed",
            TEXT,
            "only GET and HEAD\n".to_owned(),
        )
    } else {
        match endpoint {
            Endpoint::Meter => ("200 OK", JSON, MeterValues::nth(n).to_json()),
            Endpoint::Metrics => {
                let mut body = metrics_body_with(n, request.extra);
                body.push_str(&churn_body(n, request.churn));
                ("200 OK", PROMETHEUS, body)
            }
            Endpoint::Error => (
                "500 Internal Server Error",
                TEXT,
                "simulated device failure\n".to_owned(),
            ),
            Endpoint::Garbage => ("200 OK", JSON, GARBAGE_BODY.to_owned()),
            Endpoint::NotFound => ("404 Not Found", TEXT, "no such path\n".to_owned()),
        }
    };
    let connection = if request.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\nServer: tributary-sim\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if request.method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}
