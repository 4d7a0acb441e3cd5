//! `GET /api/fleet/events?series=ID`: server-sent events that keep the page
//! live without reloading it.
//!
//! | event | data | when |
//! | --- | --- | --- |
//! | `hello` | `{"now_ns": ...}` | first |
//! | `devices` | devices whose health a commit tells (`DeviceJson`, without `series`) | after each commit with `up` or failed readings |
//! | `points` | `{"series": ID, "points": [...]}` | after each commit holding points of the charted series |
//! | `agents` | every agent (as `/api/fleet` lists them) | when the list changed, checked every [`AGENTS_EVERY`] and when an agent connects or goes |
//! | `problem` | a message | the agents could not be read |
//! | `resync` | why | events were skipped: read `/api/fleet` and the range again |
//!
//! One task per client reads the merger's Tail broadcast and queues events
//! on a bounded channel. A client that falls behind the merger (the
//! broadcast lags) or does not drain its queue loses events rather than
//! slowing anyone down, and is told with `resync`. The stream ends when the
//! client goes, the collector shuts down (`HttpContext::shutdown`), or
//! after [`STREAM_LIFETIME`]: the browser's `EventSource` then reconnects
//! by itself and the page reads what it missed (its `hello` handler), and
//! the stream does not hold its connection open past the listener's
//! `max_connection_age` (the listener's grace after it is longer).
//!
//! At most [`MAX_SUBSCRIBERS`] streams are open at once (each holds a task,
//! a queue and a Tail subscription, and every commit is encoded once per
//! stream): one more is answered `503 Service Unavailable` with a body that
//! says so and a `Retry-After`, and the page tries again later.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::api::agents;
use super::devices::updates;
use super::json::PointJson;
use super::params::Params;
use crate::http::HttpContext;
use crate::metrics::HttpRefusal;
use crate::model::{Committed, now_ns};

/// Events queued for one client before it counts as behind.
const EVENT_BUFFER: usize = 64;

/// How often the agents are read again (lag, last seen and counters live
/// in the store) and, when nothing changed, a keep-alive comment is sent.
pub const AGENTS_EVERY: Duration = Duration::from_secs(2);

/// How long one event stream lasts before it ends itself (see the module
/// doc).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Event streams open at once on one collector; one more is refused with
/// 503 (see the module doc).
pub const MAX_SUBSCRIBERS: usize = 128;

/// Seconds a refused client is asked to wait (`Retry-After`).
const RETRY_AFTER_S: u64 = 10;

/// The open event streams' slots and their lifetime (a request extension,
/// one per router).
#[derive(Debug, Clone)]
pub struct Subscribers(Arc<Semaphore>, usize, Duration);

impl Subscribers {
    /// Room for `max` streams at once, each lasting `lifetime`.
    pub fn new(max: usize, lifetime: Duration) -> Subscribers {
        Subscribers(Arc::new(Semaphore::new(max)), max, lifetime)
    }
}

/// `GET /api/fleet/events`.
pub async fn events(
    State(ctx): State<HttpContext>,
    Extension(slots): Extension<Subscribers>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let series = match Params::new(query, &["series"]).and_then(|p| p.series_id("series")) {
        Ok(series) => series,
        Err(e) => return e.into_response(),
    };
    let Ok(slot) = slots.0.clone().try_acquire_owned() else {
        debug!(max = slots.1, "fleet events: refused, every slot taken");
        ctx.http_metrics.refused(HttpRefusal::EventStreamsFull);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, RETRY_AFTER_S.to_string())],
            format!(
                "too many live event streams: this collector serves at most {} at once (the fleet page's live updates); try again later\n",
                slots.1
            ),
        )
            .into_response();
    };
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    // Subscribe before answering, so no commit after the page's reads is
    // missed between them.
    let commits = ctx.tail.subscribe();
    tokio::spawn(feed(ctx, series, commits, tx, slot, slots.2));
    Sse::new(ReceiverStream::new(rx).map(Ok::<Event, Infallible>)).into_response()
}

/// The queue to one client, which notes when an event could not be queued.
struct Outbox {
    tx: mpsc::Sender<Event>,
    behind: bool,
}

impl Outbox {
    /// Queues `event`, after a `resync` if events were lost before it; a
    /// full queue loses the event and marks the client behind.
    fn send(&mut self, event: Event) {
        if self.behind {
            let resync = Event::default().event("resync").data("events skipped");
            if self.tx.try_send(resync).is_err() {
                return;
            }
            self.behind = false;
        }
        if self.tx.try_send(event).is_err() {
            self.behind = true;
        }
    }

    fn send_json(&mut self, name: &str, data: &impl Serialize) {
        match Event::default().event(name).json_data(data) {
            Ok(event) => self.send(event),
            Err(e) => debug!(error = %e, "fleet events: {name} not encoded"),
        }
    }
}

#[derive(Serialize)]
struct Points {
    series: i64,
    points: Vec<PointJson>,
}

/// Feeds one client until it goes, the broadcast closes, the collector
/// shuts down or `lifetime` has passed; dropping `tx` ends the response, dropping `_slot` frees the
/// client's slot.
async fn feed(
    ctx: HttpContext,
    series: Option<i64>,
    mut commits: broadcast::Receiver<Committed>,
    tx: mpsc::Sender<Event>,
    _slot: OwnedSemaphorePermit,
    lifetime: Duration,
) {
    let end = tokio::time::sleep(lifetime);
    tokio::pin!(end);
    let mut out = Outbox { tx, behind: false };
    out.send_json(
        "hello",
        &serde_json::json!({ "now_ns": now_ns().to_string() }),
    );
    let mut live = ctx.live.clone();
    let mut tick = tokio::time::interval(AGENTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_agents = String::new();
    loop {
        let refresh_agents = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            () = end.as_mut() => {
                debug!("fleet events: stream lifetime reached; the client reconnects");
                break;
            }
            () = out.tx.closed() => break,
            r = commits.recv() => match r {
                Ok(commit) => {
                    let devices = updates(&commit);
                    if !devices.is_empty() {
                        out.send_json("devices", &devices);
                    }
                    if let Some(id) = series {
                        let points: Vec<PointJson> = commit
                            .iter()
                            .filter(|c| c.series.id == id)
                            .flat_map(|c| c.points.iter().map(PointJson::from))
                            .collect();
                        if !points.is_empty() {
                            out.send_json("points", &Points { series: id, points });
                        }
                    }
                    false
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    debug!(skipped, "fleet events: client behind the merger");
                    out.behind = true;
                    false
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            changed = live.changed() => {
                if changed.is_err() {
                    break;
                }
                true
            }
            _ = tick.tick() => true,
        };
        if refresh_agents {
            match agents(&ctx).await {
                Ok(list) => match serde_json::to_string(&list) {
                    Ok(text) if text != last_agents => {
                        out.send(Event::default().event("agents").data(&text));
                        last_agents = text;
                    }
                    _ => out.send(Event::default().comment("")),
                },
                Err(e) => out.send(
                    Event::default()
                        .event("problem")
                        .data(format!("list agents: {e}")),
                ),
            }
        }
    }
}
