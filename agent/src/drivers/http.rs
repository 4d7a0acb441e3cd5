//! The HTTP driver: one GET per poll, the body read as JSON (values picked
//! by JSON pointer) or as Prometheus text (every sample kept).
//!
//! Plain `http://` devices go through [`http_plain`]: one keep-alive
//! connection per device and a request built once. HTTPS, a device's own CA
//! and URLs with credentials in them go through reqwest, which keeps idle
//! keep-alive connections in its pool and discards a connection whose
//! request was dropped midway. Either way a poll cancelled by the
//! scheduler's timeout needs no cleanup here. Redirects are not followed on
//! either path (a 3xx is an error naming the `Location`). Bodies are read up
//! to [`MAX_BODY_BYTES`] so a misbehaving device cannot exhaust memory.
//!
//! Series are resolved once: a JSON device's metrics when the driver is
//! built, a Prometheus target's series the first time a line names them
//! (a per-device [`prometheus::SeriesCache`]), so a poll allocates no names.

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::http_plain::{self, PlainHttp};
use super::json_subset::Wanted;
use super::{BuildError, PollError, error_chain, prometheus};
use crate::config::{HttpAuth, HttpConfig, HttpFormat, JsonMetric};
use crate::reading::{FailureKind, Polled, Reading, Sample, SeriesKey, Value, series, series_with};

/// Largest response body a poll reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Metric name a failed Prometheus scrape is reported under.
pub const SCRAPE_METRIC: &str = "scrape";

/// How a device's requests travel.
#[derive(Debug)]
enum Transport {
    /// `http://`: the driver's own connection.
    Plain(PlainHttp),
    /// Everything else: reqwest, with the request's headers prebuilt.
    Client(reqwest::Client, reqwest::header::HeaderMap),
}

/// What the body means, with the series it feeds.
#[derive(Debug)]
enum Format {
    /// One series per configured metric, in order, and its JSON pointer;
    /// the members those pointers need (`None`: the whole document).
    Json(Vec<(Arc<SeriesKey>, Box<str>)>, Option<Wanted>),
    Prometheus {
        /// The series a failed scrape is reported on.
        scrape: Arc<SeriesKey>,
        cache: prometheus::SeriesCache<Arc<SeriesKey>>,
        /// Samples of the last scrape, to size the next one's `Vec`.
        last_len: usize,
    },
}

/// An HTTP device.
#[derive(Debug)]
pub struct HttpDriver {
    transport: Transport,
    timeout: Duration,
    url: Box<str>,
    format: Format,
    /// Which credentials are configured, for the 401/403 message.
    auth: AuthKind,
}

#[derive(Debug, Clone, Copy)]
enum AuthKind {
    None,
    Basic,
    Bearer,
}

impl HttpDriver {
    /// Builds the client (reading the CA file, if any). `timeout` bounds a
    /// reqwest request; a plain HTTP poll relies on its caller's timeout
    /// (the scheduler and `check` both run every poll under one).
    pub fn new(cfg: &HttpConfig, timeout: Duration, device: &str) -> Result<Self, BuildError> {
        let client_error = |source| BuildError::HttpClient {
            device: device.to_owned(),
            source,
        };
        // The shared client builds the request once, so the headers (auth
        // encoded as reqwest encodes it) are the same on both paths.
        let shared = shared_client().map_err(client_error)?;
        let accept = match cfg.format {
            HttpFormat::Json => "application/json",
            HttpFormat::Prometheus => "text/plain;version=0.0.4",
        };
        let mut request = shared.get(&cfg.url).header(reqwest::header::ACCEPT, accept);
        request = match &cfg.auth {
            HttpAuth::None => request,
            HttpAuth::Basic { username, password } => request.basic_auth(username, Some(password)),
            HttpAuth::Bearer(token) => request.bearer_auth(token),
        };
        let headers = request.build().map_err(client_error)?.headers().clone();
        let plain = match &cfg.ca {
            Some(_) => None,
            None => {
                let pairs: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes()))
                    .collect();
                PlainHttp::for_url(&cfg.url, &pairs, USER_AGENT, MAX_BODY_BYTES)
            }
        };
        let transport = match plain {
            Some(p) => Transport::Plain(p),
            // Devices without a CA of their own share one client (and its
            // connection pool): thousands of HTTPS devices must not mean
            // thousands of TLS configurations in memory.
            None if cfg.ca.is_none() => Transport::Client(shared, headers),
            None => Transport::Client(Self::own_client(cfg, device)?, headers),
        };
        let format = match cfg.format {
            HttpFormat::Json => Format::Json(
                cfg.metrics
                    .iter()
                    .map(|m| (series(device, &m.name, &m.unit), m.pointer.as_str().into()))
                    .collect(),
                Wanted::new(cfg.metrics.iter().map(|m| m.pointer.as_str())),
            ),
            HttpFormat::Prometheus => Format::Prometheus {
                scrape: series(device, SCRAPE_METRIC, ""),
                cache: prometheus::SeriesCache::default(),
                last_len: 0,
            },
        };
        Ok(HttpDriver {
            transport,
            timeout,
            url: cfg.url.as_str().into(),
            format,
            auth: match cfg.auth {
                HttpAuth::None => AuthKind::None,
                HttpAuth::Basic { .. } => AuthKind::Basic,
                HttpAuth::Bearer(_) => AuthKind::Bearer,
            },
        })
    }

    /// Whether polls use the driver's own plain HTTP connection.
    pub fn is_plain(&self) -> bool {
        matches!(self.transport, Transport::Plain(_))
    }

    /// One failed reading per series a failed poll reports: each JSON
    /// metric, or `scrape` for a Prometheus target.
    pub fn failed(&self, kind: FailureKind, message: &str) -> Vec<Reading> {
        let failed = || Value::Failed {
            kind,
            message: message.to_owned(),
        };
        match &self.format {
            Format::Json(metrics, _) => {
                let mut out = Vec::with_capacity(metrics.len() + 1);
                out.extend(metrics.iter().map(|(s, _)| Reading::unstamped(s, failed())));
                out
            }
            Format::Prometheus { scrape, .. } => {
                let mut out = Vec::with_capacity(2);
                out.push(Reading::unstamped(scrape, failed()));
                out
            }
        }
    }

    pub async fn poll(&mut self) -> Result<Polled, PollError> {
        let (body, start) = self.fetch().await?;
        let body = body.get(start..).unwrap_or_default();
        match &mut self.format {
            Format::Json(metrics, wanted) => {
                // Only the members the pointers need; whatever that does not
                // cover (and every error) is decided by the full parse.
                let doc = match wanted.as_ref().and_then(|w| w.parse(body)) {
                    Some(doc) => doc,
                    None => parse_json(body)?,
                };
                let mut out = Vec::with_capacity(metrics.len() + 1);
                out.extend(
                    metrics
                        .iter()
                        .map(|(s, pointer)| Reading::unstamped(s, json_value(&doc, pointer))),
                );
                Ok(Polled::Readings(out))
            }
            Format::Prometheus {
                scrape,
                cache,
                last_len,
            } => {
                let text = std::str::from_utf8(body)
                    .map_err(|e| PollError::error(format!("prometheus text is not utf-8: {e}")))?;
                let device = &scrape.device;
                let mut out = Vec::with_capacity(*last_len + 1);
                cache
                    .parse(
                        text,
                        |name, labels| series_with(device, name, &labels, ""),
                        |s, v| out.push(Reading::unstamped(s, Value::F64(v))),
                    )
                    .map_err(|e| PollError::error(e.to_string()))?;
                *last_len = out.len();
                Ok(Polled::Readings(out))
            }
        }
    }

    /// A client trusting the device's own CA (in addition to the system's).
    fn own_client(cfg: &HttpConfig, device: &str) -> Result<reqwest::Client, BuildError> {
        let mut builder = client_builder();
        if let Some(path) = &cfg.ca {
            let ca_error = |message: String| BuildError::Ca {
                path: path.clone(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ca_error(format!("not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(|source| BuildError::HttpClient {
            device: device.to_owned(),
            source,
        })
    }

    /// GETs the url; returns the buffer holding the body of a 2xx answer
    /// and where the body starts in it.
    async fn fetch(&mut self) -> Result<(Vec<u8>, usize), PollError> {
        let (status, location, body, start) = match &mut self.transport {
            Transport::Plain(plain) => {
                // No timer of its own: every caller (the scheduler, `check`)
                // runs the poll under the device's timeout already.
                let resp = plain.get().await.map_err(|e| plain_error(&self.url, &e))?;
                (resp.status, resp.location, resp.body, resp.body_start)
            }
            Transport::Client(client, headers) => {
                let mut resp = client
                    .get(&*self.url)
                    .timeout(self.timeout)
                    .headers(headers.clone())
                    .send()
                    .await
                    .map_err(|e| request_error(&self.url, self.timeout, &e))?;
                let status = resp.status().as_u16();
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let mut body = Vec::new();
                if (200..300).contains(&status) {
                    while let Some(chunk) = resp
                        .chunk()
                        .await
                        .map_err(|e| request_error(&self.url, self.timeout, &e))?
                    {
                        if body.len() + chunk.len() > MAX_BODY_BYTES {
                            return Err(PollError::error(format!(
                                "response body of GET {} exceeds {MAX_BODY_BYTES} bytes",
                                self.url
                            )));
                        }
                        body.extend_from_slice(&chunk);
                    }
                }
                (status, location, body, 0)
            }
        };
        self.check_status(status, location.as_deref())?;
        debug!(url = %self.url, bytes = body.len() - start, "http poll answered");
        Ok((body, start))
    }

    /// `Ok` for a 2xx status; the error says what the others mean.
    fn check_status(&self, status: u16, location: Option<&str>) -> Result<(), PollError> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = reqwest::StatusCode::from_u16(status)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| status.to_string());
        let url = &self.url;
        Err(PollError::error(match status {
            401 | 403 => {
                let sent = match self.auth {
                    AuthKind::None => "no credentials configured",
                    AuthKind::Basic => "basic auth rejected",
                    AuthKind::Bearer => "bearer token rejected",
                };
                format!("http {text} from GET {url}: authentication failure ({sent})")
            }
            300..=399 => format!(
                "http {text} from GET {url}: redirect to {} not followed (configure the final url)",
                location.unwrap_or("(no location)")
            ),
            _ => format!("http {text} from GET {url}"),
        }))
    }
}

/// The user agent of every request.
const USER_AGENT: &str = concat!("tributary-agent/", env!("CARGO_PKG_VERSION"));

fn timeout_error(url: &str, timeout: Duration) -> PollError {
    // Said the way the scheduler says it, whichever timer fired first.
    PollError::timeout(format!(
        "timeout after {}: no answer to GET {url}",
        humantime::format_duration(timeout)
    ))
}

fn plain_error(url: &str, e: &http_plain::FetchError) -> PollError {
    PollError::error(format!("GET {url}: {}", error_chain(e)))
}

fn request_error(url: &str, timeout: Duration, e: &reqwest::Error) -> PollError {
    if e.is_timeout() {
        return timeout_error(url, timeout);
    }
    let kind = FailureKind::Error;
    let chain = error_chain(e);
    let message = if chain.contains(url) {
        chain
    } else {
        format!("GET {url}: {chain}")
    };
    PollError { kind, message }
}

/// Parses a JSON body; the error names line and column.
pub fn parse_json(body: &[u8]) -> Result<serde_json::Value, PollError> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let cause = text.strip_suffix(&suffix).unwrap_or(&text);
        PollError::error(format!(
            "invalid json at line {} column {}: {cause}",
            e.line(),
            e.column()
        ))
    })
}

/// Picks each metric out of `doc`. A metric whose pointer is missing, or
/// points at null, an object or an array, becomes a failed sample; the
/// others still get their values.
pub fn extract_json(doc: &serde_json::Value, metrics: &[JsonMetric]) -> Vec<Sample> {
    metrics
        .iter()
        .map(|m| Sample {
            unit: m.unit.clone(),
            ..Sample::new(m.name.clone(), json_value(doc, &m.pointer))
        })
        .collect()
}

/// The value `pointer` picks out of `doc`, or why there is none.
fn json_value(doc: &serde_json::Value, pointer: &str) -> Value {
    match doc.pointer(pointer) {
        None => failed(format!("pointer {pointer} not found")),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::I64(i),
            None => n
                .as_f64()
                .map(Value::F64)
                .unwrap_or_else(|| failed(format!("pointer {pointer}: number {n} out of range"))),
        },
        Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
        Some(serde_json::Value::String(s)) => Value::Str(s.clone()),
        Some(serde_json::Value::Null) => {
            failed(format!("pointer {pointer} not found (value is null)"))
        }
        Some(serde_json::Value::Object(_)) => failed(format!(
            "pointer {pointer} not found (value is an object, not a number, bool or string)"
        )),
        Some(serde_json::Value::Array(_)) => failed(format!(
            "pointer {pointer} not found (value is an array, not a number, bool or string)"
        )),
    }
}

fn failed(message: String) -> Value {
    Value::Failed {
        kind: FailureKind::Error,
        message,
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
}

/// The client every device without its own CA uses. Built once; a clone
/// shares the pool.
fn shared_client() -> Result<reqwest::Client, reqwest::Error> {
    static SHARED: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = SHARED.get() {
        return Ok(c.clone());
    }
    let client = client_builder().build()?;
    Ok(SHARED.get_or_init(|| client).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    impl HttpDriver {
        /// One poll as named samples.
        async fn poll_samples(&mut self) -> Result<Vec<Sample>, PollError> {
            self.poll().await.map(Polled::into_samples)
        }
    }

    fn metric(name: &str, pointer: &str) -> JsonMetric {
        JsonMetric {
            name: name.into(),
            pointer: pointer.into(),
            unit: String::new(),
        }
    }

    #[test]
    fn json_values_by_type() {
        let doc: serde_json::Value = serde_json::from_str(
            r#"{"power": 1500, "volt": 229.7, "on": true, "state": "ok",
                "big": 18446744073709551615, "nested": {"a": [1, {"b": -2}]},
                "null": null, "obj": {}, "arr": []}"#,
        )
        .expect("valid json");
        let metrics = [
            JsonMetric {
                unit: "W".into(),
                ..metric("power_w", "/power")
            },
            metric("volt", "/volt"),
            metric("on", "/on"),
            metric("state", "/state"),
            metric("big", "/big"),
            metric("deep", "/nested/a/1/b"),
            metric("missing", "/nope"),
            metric("null", "/null"),
            metric("obj", "/obj"),
            metric("arr", "/arr"),
        ];
        let samples = extract_json(&doc, &metrics);
        assert_eq!(samples[0].value, Value::I64(1500));
        assert_eq!(samples[0].unit, "W");
        assert_eq!(samples[0].metric, "power_w");
        assert_eq!(samples[1].value, Value::F64(229.7));
        assert_eq!(samples[2].value, Value::Bool(true));
        assert_eq!(samples[3].value, Value::Str("ok".into()));
        assert_eq!(samples[4].value, Value::F64(18446744073709551615.0));
        assert_eq!(samples[5].value, Value::I64(-2));
        assert_eq!(
            samples[6].value,
            Value::Failed {
                kind: FailureKind::Error,
                message: "pointer /nope not found".into()
            }
        );
        for s in &samples[7..] {
            assert!(
                matches!(&s.value, Value::Failed { kind: FailureKind::Error, message } if message.starts_with(&format!("pointer /{} not found", s.metric))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn invalid_json_names_position() {
        let e = parse_json(b"{\"a\": tru}").expect_err("invalid json");
        assert_eq!(e.kind, FailureKind::Error);
        assert!(
            e.message
                .starts_with("invalid json at line 1 column 10: expected ident"),
            "{e}"
        );
    }

    /// Serves `response` verbatim to every connection on 127.0.0.1:0.
    async fn serve(response: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    // Read the request head, then answer and close.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        format!("http://{addr}/data")
    }

    fn response(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn driver(url: String, format: HttpFormat, metrics: Vec<JsonMetric>) -> HttpDriver {
        HttpDriver::new(
            &HttpConfig {
                url,
                format,
                metrics,
                auth: HttpAuth::None,
                ca: None,
            },
            Duration::from_secs(5),
            "test",
        )
        .expect("client")
    }

    #[test]
    fn plain_connection_only_for_plain_http_urls() {
        for (url, plain) in [
            ("http://127.0.0.1:1/x", true),
            ("http://dev.local:8080/x?q=1", true),
            ("https://127.0.0.1:1/x", false),
            ("http://u:p@127.0.0.1/x", false),
        ] {
            let d = driver(url.into(), HttpFormat::Json, vec![]);
            assert_eq!(d.is_plain(), plain, "{url}");
        }
    }

    #[tokio::test]
    async fn json_device_end_to_end() {
        let url = serve(response(
            "200 OK",
            "application/json",
            r#"{"power": 12.5, "count": 3}"#,
        ))
        .await;
        let mut d = driver(
            url,
            HttpFormat::Json,
            vec![
                metric("power", "/power"),
                metric("count", "/count"),
                metric("x", "/x"),
            ],
        );
        let samples = d.poll_samples().await.expect("poll");
        assert_eq!(samples[0].value, Value::F64(12.5));
        assert_eq!(samples[1].value, Value::I64(3));
        assert!(matches!(samples[2].value, Value::Failed { .. }));
        // A second poll works too (fresh connection after `Connection: close`).
        assert_eq!(d.poll_samples().await.expect("poll").len(), 3);
    }

    #[tokio::test]
    async fn prometheus_device_end_to_end() {
        let url = serve(response(
            "200 OK",
            "text/plain; version=0.0.4",
            "# TYPE up gauge\nup{job=\"a\"} 1\nload 0.5 1700000000000\n",
        ))
        .await;
        let mut d = driver(url, HttpFormat::Prometheus, vec![]);
        let samples = d.poll_samples().await.expect("poll");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].metric, "up");
        assert_eq!(samples[0].labels.get("job").map(String::as_str), Some("a"));
        assert_eq!(samples[1].value, Value::F64(0.5));
        let failed = Polled::Readings(d.failed(FailureKind::Error, "x")).into_samples();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].metric, SCRAPE_METRIC);
    }

    #[tokio::test]
    async fn bad_answers_are_poll_errors() {
        let url = serve(response("500 Internal Server Error", "text/plain", "boom")).await;
        let e = driver(url.clone(), HttpFormat::Json, vec![metric("a", "/a")])
            .poll_samples()
            .await
            .expect_err("500");
        assert_eq!(
            e.message,
            format!("http 500 Internal Server Error from GET {url}")
        );

        let url = serve(response("200 OK", "application/json", "{\"a\": ")).await;
        let e = driver(url, HttpFormat::Json, vec![metric("a", "/a")])
            .poll_samples()
            .await
            .expect_err("truncated json");
        assert!(
            e.message.starts_with("invalid json at line 1 column 6"),
            "{e}"
        );

        let url = serve(response("200 OK", "text/plain", "ok 1\nbad line\n")).await;
        let e = driver(url, HttpFormat::Prometheus, vec![])
            .poll_samples()
            .await
            .expect_err("bad text");
        assert!(e.message.starts_with("prometheus text line 2: "), "{e}");
    }

    #[tokio::test]
    async fn connection_refused_names_the_cause() {
        // Bound but not listening: connections are refused, and no other
        // test can take the port meanwhile.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("local addr");
        let e = driver(
            format!("http://{addr}/"),
            HttpFormat::Json,
            vec![metric("a", "/a")],
        )
        .poll_samples()
        .await
        .expect_err("refused");
        assert_eq!(e.kind, FailureKind::Error);
        assert!(e.message.contains(&addr.to_string()), "{e}");
        assert!(e.message.to_lowercase().contains("refused"), "{e}");
    }
}
