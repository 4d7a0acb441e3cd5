//! The HTTP driver: one GET per poll, the body read as JSON (values picked
//! by JSON pointer) or as Prometheus text (every sample kept).
//!
//! Plain `http://` devices go through [`plain`]: one keep-alive
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
//!
//! Owns: one HTTP device's transport and series, and the body formats
//! (`json.rs`, `json_subset.rs`, `prometheus.rs`) that exec and mqtt reuse;
//! `config.rs`: its settings (and `driver = "prometheus"`). May touch:
//! `crate::reading`, reqwest and its own `plain.rs` client.

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

mod config;
pub mod json;
mod json_subset;
pub mod plain;
pub mod prometheus;

pub use self::config::{HttpAuth, HttpConfig, HttpFormat, JsonMetric};
pub(crate) use self::config::{RawJsonMetric, check_pointer, json_metrics};

use self::json::{json_value, parse_json};
use self::json_subset::Wanted;
use self::plain::PlainHttp;
use super::{BuildError, PollError, Poller};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Reading, SeriesKey, Value, series, series_with};
use tributary_process::error_chain;

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
        let client_error = |cause| BuildError::HttpClient {
            device: device.to_owned(),
            cause,
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
        builder.build().map_err(|cause| BuildError::HttpClient {
            device: device.to_owned(),
            cause,
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

fn plain_error(url: &str, e: &plain::FetchError) -> PollError {
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

impl Poller for HttpDriver {
    type Settings = HttpConfig;

    fn build(settings: &HttpConfig, device: &DeviceConfig) -> Result<Self, BuildError> {
        HttpDriver::new(settings, device.timeout, &device.name)
    }

    /// Inline: the HTTP poll is the most common one, and the largest
    /// future the registry does not box.
    async fn poll(&mut self) -> Result<Polled, PollError> {
        HttpDriver::poll(self).await
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        Polled::Readings(HttpDriver::failed(self, kind, message))
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
mod tests;
