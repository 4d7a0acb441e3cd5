//! `kind = "remote_write"`: Prometheus remote write 1.0. A page of the
//! commit log becomes samples (labels from `prom_labels`, the one
//! mapping; strings and failed readings are not samples), split over
//! `shards` by series, so a page's samples of one series go, sorted by
//! time and one per millisecond (`in_time_order`), in order in one request
//! stream; the shards' requests go out in parallel, each a
//! snappy-compressed protobuf `WriteRequest` with the protocol's headers.
//!
//! A request that fails with a connection error, a timeout, a 5xx or a 429
//! is sent again after a capped backoff (a `Retry-After` in seconds is
//! honoured, within the cap); a 4xx other than 429 drops the request,
//! counted, its response body in the log. A replay after a crash resends
//! identical (series, timestamp, value) samples, which Prometheus and
//! VictoriaMetrics treat as duplicates.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::exports::{Auth, RemoteWrite};
use crate::metrics::ExportHandles;
use crate::prom_labels;
use crate::store::export::LogReading;

/// The protocol's messages (prometheus/prompb `remote.proto`, `types.proto`),
/// only the fields remote write 1.0 sends.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// A series as the destination sees it: its labels, built once.
pub type SeriesLabels = Arc<[pb::Label]>;

/// The labels of a series key, from the one mapping.
pub fn series_labels(key: &crate::model::SeriesKey) -> SeriesLabels {
    prom_labels::labels(key)
        .into_iter()
        .map(|(name, value)| pb::Label { name, value })
        .collect()
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {cause}")]
    File { path: String, cause: std::io::Error },
    #[error("http client: {0}")]
    Client(String),
    #[error("nats client: {0}")]
    Nats(String),
}

/// What a page's requests came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Samples the destination accepted.
    pub sent: u64,
    /// Samples in requests refused for good.
    pub dropped: u64,
    /// Requests sent again.
    pub retried: u64,
    /// The last failure, if any request failed.
    pub last_error: Option<String>,
}

/// The remote write client of one export.
#[derive(Clone)]
pub struct RemoteWriteSink {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    auth: Auth,
    shards: usize,
    max_samples: usize,
    max_backoff: Duration,
    name: Arc<str>,
}

impl std::fmt::Debug for RemoteWriteSink {
    // No credentials: the URL's user info, header values and auth are out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriteSink")
            .field("name", &self.name)
            .field("url", &super::redact_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("auth", &self.auth)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl RemoteWriteSink {
    /// A client for `url` with `cfg`'s headers, credentials and TLS.
    pub fn new(
        name: &str,
        url: &str,
        cfg: &RemoteWrite,
        max_backoff: Duration,
    ) -> Result<Self, SinkError> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tributary-collector/", env!("CARGO_PKG_VERSION")));
        if let Some(tls) = &cfg.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|cause| SinkError::File {
                    path: p.display().to_string(),
                    cause,
                })
            };
            if let Some(ca) = &tls.ca {
                let pem = read(ca)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| SinkError::Client(format!("{}: {e}", ca.display())))?;
                builder = builder.tls_built_in_root_certs(false);
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            if let Some((cert, key)) = &tls.identity {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    SinkError::Client(format!("{} + {}: {e}", cert.display(), key.display()))
                })?;
                builder = builder.identity(id);
            }
        }
        let client = builder
            .build()
            .map_err(|e| SinkError::Client(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            reqwest::header::CONTENT_ENCODING,
            HeaderValue::from_static("snappy"),
        );
        headers.insert(
            HeaderName::from_static("x-prometheus-remote-write-version"),
            HeaderValue::from_static("0.1.0"),
        );
        for (k, v) in &cfg.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|e| SinkError::Client(format!("header {k}: {e}")))?;
            let mut value = HeaderValue::try_from(v.as_str())
                .map_err(|e| SinkError::Client(format!("header {k}: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(RemoteWriteSink {
            client,
            url: url.to_owned(),
            headers,
            auth: cfg.auth.clone(),
            shards: cfg.shards,
            max_samples: cfg.max_samples_per_request,
            max_backoff,
            name: name.into(),
        })
    }

    /// Sends the samples of `readings` (whose series have `labels`; a
    /// series without labels is filtered out), in order per series, over
    /// the shards. Returns once every request is accepted or dropped, or
    /// `None` when `cancel` fired or `give_up` passed first (nothing may be
    /// taken as sent).
    pub async fn send(
        &self,
        readings: &[LogReading],
        labels: &HashMap<i64, Option<SeriesLabels>>,
        metrics: &ExportHandles,
        cancel: &CancellationToken,
        give_up: Option<tokio::time::Instant>,
    ) -> Option<Outcome> {
        // Per shard: series in first-seen order, each with its samples.
        let mut shards: Vec<ShardPage> = (0..self.shards).map(|_| Default::default()).collect();
        for r in readings {
            let Some(Some(_)) = labels.get(&r.series_id) else {
                continue;
            };
            let Some(value) = prom_labels::sample_value(&r.value) else {
                continue;
            };
            let shard = &mut shards[shard_of(r.series_id, self.shards)];
            let samples = shard.1.entry(r.series_id).or_insert_with(|| {
                shard.0.push(r.series_id);
                Vec::new()
            });
            samples.push((r.ts_ns, value));
        }
        let mut tasks = Vec::new();
        for (order, mut by_series) in shards {
            if order.is_empty() {
                continue;
            }
            let mut requests = Vec::new();
            let mut current = pb::WriteRequest::default();
            let mut count = 0usize;
            for id in order {
                let Some(samples) = by_series.remove(&id) else {
                    continue;
                };
                let samples = in_time_order(samples);
                let Some(Some(l)) = labels.get(&id) else {
                    continue;
                };
                // A series' samples may span requests; they stay in order
                // because a shard sends its requests one after another.
                for part in samples.chunks(self.max_samples) {
                    if count + part.len() > self.max_samples && count > 0 {
                        requests.push((std::mem::take(&mut current), count));
                        count = 0;
                    }
                    current.timeseries.push(pb::TimeSeries {
                        labels: l.to_vec(),
                        samples: part.to_vec(),
                    });
                    count += part.len();
                }
            }
            if count > 0 {
                requests.push((current, count));
            }
            let sink = self.clone();
            let metrics = metrics.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Outcome::default();
                let all = async {
                    for (req, n) in requests {
                        sink.post(req, n as u64, &mut out, &metrics, &cancel)
                            .await?;
                    }
                    Some(())
                };
                let done = match give_up {
                    None => all.await,
                    Some(at) => tokio::time::timeout_at(at, all).await.ok().flatten(),
                };
                done.map(|()| out)
            }));
        }
        let mut total = Outcome::default();
        let mut complete = true;
        for t in tasks {
            match t.await {
                Ok(Some(o)) => {
                    total.sent += o.sent;
                    total.dropped += o.dropped;
                    total.retried += o.retried;
                    if o.last_error.is_some() {
                        total.last_error = o.last_error;
                    }
                }
                Ok(None) => complete = false,
                Err(e) => {
                    error!(export = %self.name, error = %e, "remote write shard task failed");
                    complete = false;
                }
            }
        }
        complete.then_some(total)
    }

    /// One request until accepted or refused for good; `None` if cancelled.
    async fn post(
        &self,
        req: pb::WriteRequest,
        samples: u64,
        out: &mut Outcome,
        metrics: &ExportHandles,
        cancel: &CancellationToken,
    ) -> Option<()> {
        let body = match snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()) {
            Ok(b) => b,
            Err(e) => {
                // Only an input over snappy's 4 GiB limit fails; requests
                // are bounded far below it.
                error!(export = %self.name, error = %e, samples, "remote write request not encodable; dropped");
                out.dropped += samples;
                metrics.dropped.inc_by(samples);
                return Some(());
            }
        };
        let mut backoff = Duration::from_millis(500).min(self.max_backoff);
        loop {
            let mut rb = self
                .client
                .post(&self.url)
                .headers(self.headers.clone())
                .body(body.clone());
            rb = match &self.auth {
                Auth::None => rb,
                Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
                Auth::Bearer(t) => rb.bearer_auth(t),
            };
            let sent = tokio::select! {
                r = rb.send() => r,
                _ = cancel.cancelled() => return None,
            };
            let wait = match sent {
                Ok(resp) if resp.status().is_success() => {
                    out.sent += samples;
                    metrics.sent.inc_by(samples);
                    return Some(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = body_start(resp).await;
                    metrics.failed.inc();
                    let message = format!("{status}: {}", text.trim());
                    metrics.failing.set(&message);
                    out.last_error = Some(message.clone());
                    if status.is_server_error() || status.as_u16() == 429 {
                        warn!(export = %self.name, status = %status, body = %text.trim(), "remote write refused for now; retrying");
                        retry_after.map(|d| d.min(self.max_backoff))
                    } else {
                        error!(export = %self.name, status = %status, body = %text.trim(), samples, "remote write request refused; its samples are dropped");
                        out.dropped += samples;
                        metrics.dropped.inc_by(samples);
                        return Some(());
                    }
                }
                Err(e) => {
                    metrics.failed.inc();
                    // Without the URL: it may carry credentials.
                    let message = tributary_process::error_chain(&e.without_url());
                    warn!(export = %self.name, error = %message, "remote write failed; retrying");
                    metrics.failing.set(&message);
                    out.last_error = Some(message);
                    None
                }
            };
            let pause = wait.unwrap_or(backoff);
            backoff = (backoff * 2).min(self.max_backoff);
            out.retried += 1;
            metrics.retried.inc();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }
}

/// Bytes of a refusal's body kept for the log and the cursor's last error.
const ERROR_BODY_BYTES: usize = 4096;

/// The start of a response body, at most [`ERROR_BODY_BYTES`] read (a
/// destination's error page may be large, or endless).
async fn body_start(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&buf).into_owned()
}

/// One shard's part of a page: series ids in first-seen order, and each
/// series' (timestamp ns, value) in commit order.
type ShardPage = (Vec<i64>, HashMap<i64, Vec<(i64, f64)>>);

/// One series' samples as a receiver accepts them: in time order, one per
/// millisecond. Prometheus-style receivers refuse a request (400, every
/// series in it lost) holding a sample older than one before it, or two
/// values at one timestamp. So: a stable sort by the reading's time (equal
/// times keep commit order), then, of the readings in one millisecond, the
/// latest stands, as PromQL over the store sees them (`promql/load.rs`).
/// Deterministic, so a replay after a crash sends identical samples.
fn in_time_order(mut samples: Vec<(i64, f64)>) -> Vec<pb::Sample> {
    samples.sort_by_key(|&(ts_ns, _)| ts_ns);
    let mut out: Vec<pb::Sample> = Vec::with_capacity(samples.len());
    for (ts_ns, value) in samples {
        let timestamp = ts_ns.div_euclid(1_000_000);
        match out.last_mut() {
            Some(last) if last.timestamp == timestamp => last.value = value,
            _ => out.push(pb::Sample { value, timestamp }),
        }
    }
    out
}

/// The shard of a series: stable, so a series always uses one.
fn shard_of(series: i64, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    series.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::{in_time_order, pb};

    fn samples(v: &[(i64, f64)]) -> Vec<pb::Sample> {
        v.iter()
            .map(|&(timestamp, value)| pb::Sample { value, timestamp })
            .collect()
    }

    #[test]
    fn samples_are_sorted_and_the_latest_reading_of_a_millisecond_stands() {
        let ms = 1_000_000;
        let got = in_time_order(vec![
            (5 * ms, 5.0),
            (2 * ms + 300, 2.3),
            (2 * ms + 900, 2.9),
            (2 * ms + 100, 2.1),
            (7 * ms, 7.0),
            (7 * ms, 7.5), // same instant: the later in commit order
            (-ms - 1, -1.0),
        ]);
        assert_eq!(got, samples(&[(-2, -1.0), (2, 2.9), (5, 5.0), (7, 7.5)]));
        assert!(in_time_order(Vec::new()).is_empty());
    }
}
