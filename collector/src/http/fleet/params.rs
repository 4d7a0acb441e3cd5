//! Query parameters of the fleet API, checked one by one: a bad or unknown
//! parameter is a 400 whose message names it, never a panic.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Longest chart window: the points are thinned, but the walk reads them all.
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

/// A refused request: 400 with a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{}\n", self.0)).into_response()
    }
}

/// The parameters of one request, with the names it accepts.
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// `values`, refusing any name not in `known`.
    pub fn new(values: BTreeMap<String, String>, known: &[&str]) -> Result<Params, BadRequest> {
        if let Some(name) = values.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(BadRequest(format!(
                "unknown parameter {name:?}; this path takes {}",
                known.join(", ")
            )));
        }
        Ok(Params { values })
    }

    /// A string parameter; absent is empty.
    pub fn text(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }

    /// A series id (a positive integer), if given.
    pub fn series_id(&self, name: &str) -> Result<Option<i64>, BadRequest> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(id) if id > 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(id)),
                _ => Err(BadRequest(format!("{name}: {v:?} is not a series id"))),
            },
        }
    }

    /// A time in ns since the Unix epoch, if given.
    pub fn time_ns(&self, name: &str) -> Result<Option<i64>, BadRequest> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                BadRequest(format!(
                    "{name}: {v:?} is not a time in ns since the Unix epoch"
                ))
            }),
        }
    }

    /// A window such as `5m` or `24h` (at most [`MAX_WINDOW`]), if given.
    pub fn window(&self, name: &str) -> Result<Option<Duration>, BadRequest> {
        let Some(v) = self.values.get(name) else {
            return Ok(None);
        };
        let d = tributary_config::parse_duration_arg(v)
            .map_err(|e| BadRequest(format!("{name}: {e}")))?;
        if d.is_zero() || d > MAX_WINDOW {
            return Err(BadRequest(format!(
                "{name}: {v:?} is not between 1ns and {}",
                humantime::format_duration(MAX_WINDOW)
            )));
        }
        Ok(Some(d))
    }
}
