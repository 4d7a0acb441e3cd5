//! The MQTT driver: subscribes to topics on a broker and turns each message
//! into samples of the device and metric its topic names.
//!
//! Devices push; the scheduler still polls. A background task (started by
//! the first poll, stopped when the driver is dropped) owns the connection:
//! it drives rumqttc's event loop, subscribes again after every (re)connect
//! and keeps the latest sample of every series received since the last
//! poll. A poll takes those samples, so each message is stored once, stamped
//! with the poll time; a series that received nothing since the last poll
//! has no reading. The device is up while the broker connection is, and a
//! poll while it is down fails with the reason (refused, auth, timeout).
//!
//! The latest samples sit behind a `std::sync::Mutex` rather than in the
//! task alone, because the event loop must keep being polled (keepalives)
//! and the lock is only held to insert or swap a map, never across an await.
//! Besides the string interner it is the agent's only lock (ARCHITECTURE.md,
//! "The agent has two locks"): one per MQTT device, shared by that device's
//! task and its poll alone.
//!
//! Owns: one broker subscription (its task, the latest samples, the link
//! state), topic templates (`template.rs`) and settings (`config.rs`). May
//! touch: `crate::reading`, rumqttc, and the HTTP driver's body formats
//! (`drivers::http::{json, prometheus}`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info};

mod config;
mod template;

pub use self::config::{
    MqttConfig, MqttTopic, PayloadFormat, TopicFilterError, check_topic_filter,
};
pub use self::template::{Template, TemplateError};

use super::http::{JsonMetric, json, prometheus};
use super::{BuildError, PollError, Poller};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, INVALID_SERIES_METRIC, Polled, Sample, Value};

/// Largest message accepted from the broker.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Longest wait between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Metric a payload failure is reported under for `format = "prometheus"`.
pub const PAYLOAD_METRIC: &str = "payload";

/// An MQTT subscription feeding one or more devices.
pub struct MqttDriver {
    cfg: Arc<MqttConfig>,
    device: String,
    timeout: Duration,
    link: Option<Link>,
}

impl std::fmt::Debug for MqttDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttDriver")
            .field("broker", &self.cfg.broker)
            .field("device", &self.device)
            .field("running", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

/// The running subscription task, as seen from the driver.
struct Link {
    shared: Arc<Shared>,
    state: watch::Receiver<LinkState>,
    /// Whether a poll has returned since the subscription started.
    polled: bool,
    _stop: DropGuard,
}

/// What the task and the driver share.
#[derive(Default)]
struct Shared {
    latest: Mutex<Latest>,
    /// Signalled on every message.
    arrived: Notify,
}

#[derive(Default)]
struct Latest {
    samples: BTreeMap<(String, String, BTreeMap<String, String>), Sample>,
    /// Messages received per topic entry, since the start.
    per_topic: Vec<u64>,
}

/// The broker connection as the task last saw it.
#[derive(Debug, Clone, PartialEq)]
enum LinkState {
    Connecting,
    /// Connected and every subscription acknowledged.
    Up,
    Down(String),
}

impl MqttDriver {
    pub fn new(cfg: &MqttConfig, device: &str, timeout: Duration) -> Self {
        MqttDriver {
            cfg: Arc::new(cfg.clone()),
            device: device.to_owned(),
            timeout,
            link: None,
        }
    }

    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        let start = Instant::now();
        // Leave a margin inside the scheduler's timeout for a precise error.
        let deadline = start + self.timeout.mul_f64(0.9);
        let link = match &mut self.link {
            Some(link) => link,
            None => self.link.insert(start_link(&self.cfg, &self.device)),
        };
        let state = loop {
            let state = link.state.borrow_and_update().clone();
            if state != LinkState::Connecting {
                break state;
            }
            match tokio::time::timeout_at(deadline, link.state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break LinkState::Down("mqtt task stopped".into()),
                Err(_) => {
                    return Err(PollError::timeout(format!(
                        "mqtt broker {}: not connected and subscribed after {}",
                        self.cfg.broker,
                        humantime::format_duration(start.elapsed())
                    )));
                }
            }
        };
        if let LinkState::Down(reason) = state {
            return Err(PollError::error(reason));
        }
        if !link.polled {
            // The first poll waits a little for every topic to speak (and
            // for retained messages), so `check` shows values.
            let first_deadline = start + self.timeout.mul_f64(0.8);
            loop {
                let notified = link.shared.arrived.notified();
                let all_seen = lock(&link.shared.latest).per_topic.iter().all(|&n| n > 0);
                if all_seen
                    || tokio::time::timeout_at(first_deadline, notified)
                        .await
                        .is_err()
                {
                    break;
                }
            }
            link.polled = true;
        }
        let taken = std::mem::take(&mut lock(&link.shared.latest).samples);
        Ok(taken.into_values().collect())
    }
}

fn lock(m: &Mutex<Latest>) -> std::sync::MutexGuard<'_, Latest> {
    // A panic while holding the lock cannot leave the map inconsistent
    // (inserts and swaps only), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_link(cfg: &Arc<MqttConfig>, device: &str) -> Link {
    let shared = Arc::new(Shared::default());
    lock(&shared.latest).per_topic = vec![0; cfg.topics.len()];
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
    let stop = CancellationToken::new();
    let task = Task {
        cfg: cfg.clone(),
        device: device.to_owned(),
        shared: shared.clone(),
        state: state_tx,
    };
    tokio::spawn(task.run(stop.clone()));
    Link {
        shared,
        state: state_rx,
        polled: false,
        _stop: stop.drop_guard(),
    }
}

/// The subscription task.
struct Task {
    cfg: Arc<MqttConfig>,
    device: String,
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
}

impl Task {
    async fn run(self, stop: CancellationToken) {
        let broker = &self.cfg.broker;
        let (host, port) = match broker.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((h, Ok(p))) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            _ => {
                self.state
                    .send_replace(LinkState::Down(format!("invalid broker address {broker}")));
                return;
            }
        };
        let client_id = self.cfg.client_id.clone().unwrap_or_else(|| {
            let name: String = self
                .device
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("tributary-{name}-{:08x}", rand::rng().random::<u32>())
        });
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(MAX_PAYLOAD + 1024, 64 * 1024);
        if let Some(user) = &self.cfg.username {
            opts.set_credentials(user.clone(), self.cfg.password.clone().unwrap_or_default());
        }
        let qos = if self.cfg.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let (client, mut events) = AsyncClient::new(opts, 16);
        let mut backoff = Duration::from_millis(100);
        let mut was_up = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(100);
                    let filters = self
                        .cfg
                        .topics
                        .iter()
                        .map(|t| SubscribeFilter::new(t.filter.clone(), qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        self.state.send_replace(LinkState::Down(format!(
                            "mqtt broker {broker}: cannot subscribe: {e}"
                        )));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(&self.cfg.topics)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, t)| t.filter.as_str())
                        .collect();
                    if refused.is_empty() {
                        if !was_up {
                            info!(broker = %broker, device = %self.device, "mqtt connected and subscribed");
                        }
                        was_up = true;
                        self.state.send_replace(LinkState::Up);
                    } else {
                        self.state.send_replace(LinkState::Down(format!(
                            "mqtt broker {broker} refused the subscription to {}",
                            refused.join(", ")
                        )));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let samples = self.samples_of(&p.topic, &p.payload);
                    let mut latest = lock(&self.shared.latest);
                    for (i, s) in samples {
                        if let Some(n) = latest.per_topic.get_mut(i) {
                            *n += 1;
                        }
                        let key = (
                            s.device.clone().unwrap_or_default(),
                            s.metric.clone(),
                            s.labels.clone(),
                        );
                        latest.samples.insert(key, s);
                    }
                    drop(latest);
                    self.shared.arrived.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => {
                    let reason = connection_error(broker, &e);
                    if was_up {
                        info!(broker = %broker, device = %self.device, error = %reason, "mqtt connection lost; reconnecting");
                    }
                    debug!(broker = %broker, error = %reason, retry_in = ?backoff, "mqtt connection failed");
                    was_up = false;
                    self.state.send_replace(LinkState::Down(reason));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    /// The samples of one message: (index of the topic entry, sample).
    fn samples_of(&self, topic: &str, payload: &[u8]) -> Vec<(usize, Sample)> {
        let mut out = Vec::new();
        for (i, t) in self.cfg.topics.iter().enumerate() {
            let Some(captures) = match_topic(&t.filter, topic) else {
                continue;
            };
            let device = t.device.render(&self.device, topic, &captures);
            for mut s in payload_samples(t, &self.device, topic, &captures, payload) {
                s.device = Some(device.clone());
                out.push((i, valid_names(s, t, &self.device, topic)));
            }
        }
        out
    }
}

/// `s`, or, when a template rendered an empty device or metric name (`{1}`
/// on the empty level of `plant//temp`), a failed reading of the device's
/// [`INVALID_SERIES_METRIC`] series naming the template: the collector
/// refuses an empty name, and a sample under it must not reach the uplink.
/// An empty device name falls back to the configured device's.
fn valid_names(s: Sample, t: &MqttTopic, configured: &str, topic: &str) -> Sample {
    let device = s.device.as_deref().unwrap_or(configured);
    let (field, template) = if device.is_empty() {
        ("device", t.device.to_string())
    } else if s.metric.is_empty() {
        let template = t.metric.as_ref().map(ToString::to_string);
        ("metric", template.unwrap_or_default())
    } else {
        return s;
    };
    Sample {
        device: Some(
            if device.is_empty() {
                configured
            } else {
                device
            }
            .to_owned(),
        ),
        ..Sample::new(
            INVALID_SERIES_METRIC,
            Value::Failed {
                kind: FailureKind::Error,
                message: format!(
                    "payload on {topic}: the {field} template \"{template}\" renders an empty name"
                ),
            },
        )
    }
}

/// Why the connection failed, for the poll error and the log.
fn connection_error(broker: &str, e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("mqtt broker {broker}: connection refused")
        }
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => {
                    "bad user name or password (auth failure)"
                }
                ConnectReturnCode::NotAuthorized => "not authorized (auth failure)",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::RefusedProtocolVersion => "protocol version refused",
                ConnectReturnCode::Success => "refused",
            };
            format!("mqtt broker {broker} refused the connection: {why}")
        }
        ConnectionError::NetworkTimeout => format!("mqtt broker {broker}: timeout connecting"),
        other => format!("mqtt broker {broker}: {other}"),
    }
}

/// The levels of `topic` matched by the wildcards of `filter`, or `None`
/// when the topic does not match. `#` captures the rest (possibly empty).
pub fn match_topic<'t>(filter: &str, topic: &'t str) -> Option<Vec<&'t str>> {
    // Wildcards do not match topics starting with `$` (broker internals).
    if topic.starts_with('$') && matches!(filter.chars().next(), Some('+' | '#')) {
        return None;
    }
    let mut captures = Vec::new();
    let mut rest = Some(topic);
    for level in filter.split('/') {
        if level == "#" {
            captures.push(rest.unwrap_or(""));
            return Some(captures);
        }
        let current = rest?;
        let (head, tail) = match current.split_once('/') {
            Some((h, t)) => (h, Some(t)),
            None => (current, None),
        };
        if level == "+" {
            captures.push(head);
        } else if level != head {
            return None;
        }
        rest = tail;
    }
    rest.is_none().then_some(captures)
}

/// Parses one payload as the topic entry says.
pub fn payload_samples(
    t: &MqttTopic,
    device: &str,
    topic: &str,
    captures: &[&str],
    payload: &[u8],
) -> Vec<Sample> {
    let metric = t
        .metric
        .as_ref()
        .map(|m| m.render(device, topic, captures))
        .unwrap_or_else(|| PAYLOAD_METRIC.to_owned());
    let one = |value: Value| {
        vec![Sample {
            unit: t.unit.clone(),
            ..Sample::new(metric.clone(), value)
        }]
    };
    let bad = |why: String| Value::Failed {
        kind: FailureKind::Error,
        message: format!("payload on {topic}: {why}"),
    };
    match t.format {
        PayloadFormat::Number => one(match std::str::from_utf8(payload) {
            Err(e) => bad(format!("not utf-8 ({e})")),
            Ok(text) => parse_number(text.trim())
                .unwrap_or_else(|| bad(format!("not a number: \"{}\"", preview(text)))),
        }),
        PayloadFormat::Json => match json::parse_json(payload) {
            Err(e) => one(bad(e.message)),
            Ok(doc) => {
                let m = JsonMetric {
                    name: metric.clone(),
                    pointer: t.pointer.clone(),
                    unit: t.unit.clone(),
                };
                json::extract_json(&doc, std::slice::from_ref(&m))
                    .into_iter()
                    .map(|mut s| {
                        if let Value::Failed { message, .. } = &mut s.value {
                            *message = format!("payload on {topic}: {message}");
                        }
                        s
                    })
                    .collect()
            }
        },
        PayloadFormat::Prometheus => {
            let parsed = std::str::from_utf8(payload)
                .map_err(|e| format!("prometheus text is not utf-8: {e}"))
                .and_then(|text| prometheus::parse(text).map_err(|e| e.to_string()));
            match parsed {
                Err(e) => one(bad(e)),
                Ok(samples) => samples
                    .into_iter()
                    .map(|s| Sample {
                        labels: s.labels,
                        unit: t.unit.clone(),
                        ..Sample::new(s.name, Value::F64(s.value))
                    })
                    .collect(),
            }
        }
    }
}

/// An integer, a float, or `true`/`false`.
fn parse_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::I64(i));
    }
    match text {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        _ => {}
    }
    text.parse::<f64>().ok().map(Value::F64)
}

/// At most 64 characters of `text`, for error messages.
fn preview(text: &str) -> String {
    let mut out: String = text.chars().take(64).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

impl Poller for MqttDriver {
    type Settings = MqttConfig;

    fn build(settings: &MqttConfig, device: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(MqttDriver::new(settings, &device.name, device.timeout))
    }

    /// Boxed: the poll future is large (see [`super::Driver::poll_values`]).
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Samples(Box::pin(MqttDriver::poll(self)).await?))
    }

    /// Its devices and metrics come from topics: the `up` series of the
    /// subscription carries the failure.
    fn failed(&self, _: FailureKind, _: &str) -> Polled {
        Polled::Samples(Vec::new())
    }
}

#[cfg(test)]
mod tests;
