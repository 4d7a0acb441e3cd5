//! The fleet page: `/` on the collector's HTTP listener, for a person.
//!
//! It shows the agents (connected, last seen, lag, dropped, skew), each
//! agent's devices (up or down, the last poll's outcome and its cause), the
//! exports (destination, cursor, lag, counts, last error; read again every
//! few seconds) and a
//! chart of one series over a chosen window, kept live by server-sent events
//! from the merger's Tail broadcast. Everything it needs is in the binary:
//! the page, its script and its style sheet are embedded (`assets/`), so it
//! works without internet access, and its strict `Content-Security-Policy`
//! allows scripts, styles and connections to this origin only.
//!
//! Routes (all behind the listener's `authorize` layer):
//!
//! | path | what |
//! | --- | --- |
//! | `/` | the page (`assets/index.html`) |
//! | `/assets/{name}` | its script modules and style sheet |
//! | `/api/fleet` | agents (as ListAgents) and devices (as ListSeries groups them, with health from the `up` series) |
//! | `/api/fleet/series?agent=&device=` | a device's series, for the chart's picker |
//! | `/api/fleet/range?series=ID&window=5m` | the chart's points (as Range, thinned above [`api::MAX_POINTS`]) |
//! | `/api/fleet/exports` | each export's cursor: destination, position, lag, counts, last error (as ListExports) |
//! | `/api/fleet/events?series=ID` | server-sent events: devices, agents, the charted series' points, `resync`; at most [`events::MAX_SUBSCRIBERS`] at once, 503 beyond |
//!
//! Owns nothing mutable. May import: `crate::query` (the conversions and
//! `merge_agents`, so the page shows what ListAgents answers),
//! `crate::export::ExportsView` (what ListExports answers), the store's
//! read side, `crate::model`, and `super::HttpContext`; never the merger.
//! Handlers are bounded (series, points and queued events have caps) and
//! answer a bad query parameter with 400 naming it, never a panic.

mod api;
mod assets;
mod devices;
mod events;
pub use events::STREAM_LIFETIME;
mod json;
mod params;
mod thin;

#[cfg(test)]
mod tests;

use axum::routing::get;
use axum::{Extension, Router};

use super::HttpContext;

/// The fleet page's routes, merged into the listener's protected router.
pub fn routes() -> Router<HttpContext> {
    routes_with(events::MAX_SUBSCRIBERS, STREAM_LIFETIME)
}

/// The routes with room for `max_subscribers` event streams at once, each
/// ending itself after `lifetime`.
fn routes_with(max_subscribers: usize, lifetime: std::time::Duration) -> Router<HttpContext> {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/api/fleet", get(api::fleet))
        .route("/api/fleet/series", get(api::series))
        .route("/api/fleet/range", get(api::range))
        .route("/api/fleet/exports", get(api::exports))
        .route(
            "/api/fleet/events",
            get(events::events).layer(Extension(events::Subscribers::new(
                max_subscribers,
                lifetime,
            ))),
        )
}
