//! The HTTP driver: one GET per poll, the body read as JSON (values picked
//! by JSON pointer) or as Prometheus text (every sample kept).
//!
//! reqwest keeps idle keep-alive connections in its pool and discards a
//! connection whose request was dropped midway, so a poll cancelled by the
//! scheduler's timeout needs no cleanup here. Bodies are read up to
//! [`MAX_BODY_BYTES`] so a misbehaving device cannot exhaust memory.

use std::time::Duration;

use tracing::debug;

use super::{BuildError, PollError, error_chain, prometheus};
use crate::config::{HttpAuth, HttpConfig, HttpFormat, JsonMetric};
use crate::reading::{FailureKind, Sample, Value};

/// Largest response body a poll reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Metric name a failed Prometheus scrape is reported under.
pub const SCRAPE_METRIC: &str = "scrape";

/// An HTTP device.
#[derive(Debug)]
pub struct HttpDriver {
    client: reqwest::Client,
    timeout: Duration,
    url: String,
    format: HttpFormat,
    metrics: Vec<JsonMetric>,
    auth: HttpAuth,
}

impl HttpDriver {
    /// Builds the client (reading the CA file, if any); `timeout` bounds a
    /// request even outside the scheduler (as in `check`).
    pub fn new(cfg: &HttpConfig, timeout: Duration, device: &str) -> Result<Self, BuildError> {
        let client = match &cfg.ca {
            // Devices without a CA of their own share one client (and its
            // connection pool): thousands of HTTP devices must not mean
            // thousands of TLS configurations in memory.
            None => shared_client().map_err(|source| BuildError::HttpClient {
                device: device.to_owned(),
                source,
            })?,
            Some(_) => Self::own_client(cfg, device)?,
        };
        Ok(HttpDriver {
            client,
            timeout,
            url: cfg.url.clone(),
            format: cfg.format,
            metrics: cfg.metrics.clone(),
            auth: cfg.auth.clone(),
        })
    }

    /// (name, unit) of every metric a poll reports.
    pub fn metrics(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        match self.format {
            HttpFormat::Json => Box::new(
                self.metrics
                    .iter()
                    .map(|m| (m.name.as_str(), m.unit.as_str())),
            ),
            HttpFormat::Prometheus => Box::new(std::iter::once((SCRAPE_METRIC, ""))),
        }
    }

    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        let body = self.fetch().await?;
        match self.format {
            HttpFormat::Json => {
                let doc = parse_json(&body)?;
                Ok(extract_json(&doc, &self.metrics))
            }
            HttpFormat::Prometheus => {
                let text = std::str::from_utf8(&body)
                    .map_err(|e| PollError::error(format!("prometheus text is not utf-8: {e}")))?;
                let samples =
                    prometheus::parse(text).map_err(|e| PollError::error(e.to_string()))?;
                Ok(samples
                    .into_iter()
                    .map(|s| Sample {
                        labels: s.labels,
                        ..Sample::new(s.name, Value::F64(s.value))
                    })
                    .collect())
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

    /// GETs the url and returns the body of a 2xx answer.
    async fn fetch(&self) -> Result<Vec<u8>, PollError> {
        let accept = match self.format {
            HttpFormat::Json => "application/json",
            HttpFormat::Prometheus => "text/plain;version=0.0.4",
        };
        let mut request = self
            .client
            .get(&self.url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, accept);
        request = match &self.auth {
            HttpAuth::None => request,
            HttpAuth::Basic { username, password } => request.basic_auth(username, Some(password)),
            HttpAuth::Bearer(token) => request.bearer_auth(token),
        };
        let mut resp = request
            .send()
            .await
            .map_err(|e| request_error(&self.url, self.timeout, &e))?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) {
            let sent = match &self.auth {
                HttpAuth::None => "no credentials configured",
                HttpAuth::Basic { .. } => "basic auth rejected",
                HttpAuth::Bearer(_) => "bearer token rejected",
            };
            return Err(PollError::error(format!(
                "http {status} from GET {}: authentication failure ({sent})",
                self.url
            )));
        }
        if !status.is_success() {
            return Err(PollError::error(format!(
                "http {status} from GET {}",
                self.url
            )));
        }
        let mut body = Vec::new();
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
        debug!(url = %self.url, bytes = body.len(), "http poll answered");
        Ok(body)
    }
}

fn request_error(url: &str, timeout: Duration, e: &reqwest::Error) -> PollError {
    if e.is_timeout() {
        // Said the way the scheduler says it, whichever timer fired first.
        return PollError::timeout(format!(
            "timeout after {}: no answer to GET {url}",
            humantime::format_duration(timeout)
        ));
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
        .map(|m| {
            let value = match doc.pointer(&m.pointer) {
                None => failed(format!("pointer {} not found", m.pointer)),
                Some(serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => Value::I64(i),
                    None => n.as_f64().map(Value::F64).unwrap_or_else(|| {
                        failed(format!("pointer {}: number {n} out of range", m.pointer))
                    }),
                },
                Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
                Some(serde_json::Value::String(s)) => Value::Str(s.clone()),
                Some(serde_json::Value::Null) => {
                    failed(format!("pointer {} not found (value is null)", m.pointer))
                }
                Some(serde_json::Value::Object(_)) => failed(format!(
                    "pointer {} not found (value is an object, not a number, bool or string)",
                    m.pointer
                )),
                Some(serde_json::Value::Array(_)) => failed(format!(
                    "pointer {} not found (value is an array, not a number, bool or string)",
                    m.pointer
                )),
            };
            Sample {
                unit: m.unit.clone(),
                ..Sample::new(m.name.clone(), value)
            }
        })
        .collect()
}

fn failed(message: String) -> Value {
    Value::Failed {
        kind: FailureKind::Error,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        let samples = d.poll().await.expect("poll");
        assert_eq!(samples[0].value, Value::F64(12.5));
        assert_eq!(samples[1].value, Value::I64(3));
        assert!(matches!(samples[2].value, Value::Failed { .. }));
        // A second poll works too (fresh connection after `Connection: close`).
        assert_eq!(d.poll().await.expect("poll").len(), 3);
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
        let samples = d.poll().await.expect("poll");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].metric, "up");
        assert_eq!(samples[0].labels.get("job").map(String::as_str), Some("a"));
        assert_eq!(samples[1].value, Value::F64(0.5));
        assert_eq!(d.metrics().collect::<Vec<_>>(), vec![("scrape", "")]);
    }

    #[tokio::test]
    async fn bad_answers_are_poll_errors() {
        let url = serve(response("500 Internal Server Error", "text/plain", "boom")).await;
        let e = driver(url.clone(), HttpFormat::Json, vec![metric("a", "/a")])
            .poll()
            .await
            .expect_err("500");
        assert_eq!(
            e.message,
            format!("http 500 Internal Server Error from GET {url}")
        );

        let url = serve(response("200 OK", "application/json", "{\"a\": ")).await;
        let e = driver(url, HttpFormat::Json, vec![metric("a", "/a")])
            .poll()
            .await
            .expect_err("truncated json");
        assert!(
            e.message.starts_with("invalid json at line 1 column 6"),
            "{e}"
        );

        let url = serve(response("200 OK", "text/plain", "ok 1\nbad line\n")).await;
        let e = driver(url, HttpFormat::Prometheus, vec![])
            .poll()
            .await
            .expect_err("bad text");
        assert!(e.message.starts_with("prometheus text line 2: "), "{e}");
    }

    #[tokio::test]
    async fn connection_refused_names_the_cause() {
        // Bind then drop, so the port is (almost certainly) closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let e = driver(
            format!("http://{addr}/"),
            HttpFormat::Json,
            vec![metric("a", "/a")],
        )
        .poll()
        .await
        .expect_err("refused");
        assert_eq!(e.kind, FailureKind::Error);
        assert!(e.message.contains(&addr.to_string()), "{e}");
        assert!(e.message.to_lowercase().contains("refused"), "{e}");
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(concat!("tributary-agent/", env!("CARGO_PKG_VERSION")))
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
