//! Self-metrics in the Prometheus formats, the same for both binaries:
//! what every process exposes (CPU, memory, open files, start time:
//! [`ProcessCollector`]), a `build_info` series ([`register_build_info`]),
//! a lock-free histogram for hot paths ([`Histogram`]), the encoding of a
//! [`Registry`] with content negotiation ([`encode`]: OpenMetrics when the
//! scraper asks for it, the Prometheus text format 0.0.4 otherwise), and
//! the HTTP side (`http.rs`: [`routes`], a router serving `GET /metrics`,
//! and [`serve`], a small HTTP/1 server with a connection cap and a
//! header-read timeout, for a binary that has no HTTP listener of its own).
//!
//! How a binary uses it: build one [`Registry`] at start (prefix its own
//! metrics with `tributary_agent_` or `tributary_collector_`), register
//! [`ProcessCollector`] and [`register_build_info`] into it, keep the
//! handles of its own metrics where their owners update them (atomics: a
//! counter's `inc` is one relaxed `fetch_add`), then put the registry in an
//! `Arc` and either [`serve`] [`routes`] on a listener of its own or merge
//! [`routes`] into an existing axum router.
//!
//! Owns nothing at run time but the connections [`serve`] accepts. May
//! touch: `prometheus-client` (re-exported as [`prometheus_client`], so
//! both binaries use one version), axum and hyper for HTTP, `/proc/self`
//! for the process metrics. Knows nothing of the agent or the collector.

mod histogram;
mod http;
mod process;
#[cfg(test)]
mod tests;

pub use prometheus_client;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use histogram::{DURATION_BUCKETS, Histogram};
pub use http::{LISTEN_BACKLOG, ServeLimits, bind, routes, serve};
pub use process::ProcessCollector;

/// `Content-Type` of the Prometheus text format (version 0.0.4).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `Content-Type` of the OpenMetrics text format (1.0.0).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The two text formats a scrape can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain`): what `curl` and most
    /// tools get.
    Text,
    /// OpenMetrics text 1.0.0, ending in `# EOF`: what Prometheus asks for.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0 and at least
    /// that of any text type it also accepts (`text/plain`, `text/*`,
    /// `*/*`); the Prometheus text format otherwise, and without a header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Everything in `registry`, in `format`. Fails only if a metric or
/// collector of the registry fails to encode itself (none of this crate's
/// do).
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut body = String::with_capacity(16 * 1024);
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, registry)?,
    }
    Ok(body)
}

/// Registers `<prefix>_build_info{version="…",commit="…"} 1`, the series
/// dashboards join on to show which build runs (`prefix` is the binary's,
/// e.g. `tributary_agent`). `version` is the crate's
/// (`env!("CARGO_PKG_VERSION")`), `commit` the git commit it was built from
/// (`"unknown"` when not known).
pub fn register_build_info(registry: &mut Registry, prefix: &str, version: &str, commit: &str) {
    let labels = vec![
        ("version".to_owned(), version.to_owned()),
        ("commit".to_owned(), commit.to_owned()),
    ];
    // An info metric: `_info` is added by the encoder.
    registry.register(
        format!("{prefix}_build"),
        "The build that runs: its version and git commit (always 1)",
        Info::new(labels),
    );
}
