//! Request parameters as Prometheus reads them: from the URL and, for a
//! form-encoded POST, the body too; times as Unix seconds (with a
//! fraction) or RFC 3339 (`Z` or an offset such as `+02:00`); durations as seconds or PromQL
//! durations (`15s`, `1m30s`).

use std::time::Duration;

use crate::promql::QueryError;

/// Every `name=value` pair of a request, URL first, then the form.
#[derive(Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (`match[]`).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A time parameter in Unix ms, `default` when absent.
    pub fn time(&self, name: &str, default: i64) -> Result<i64, QueryError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => parse_time(text).ok_or_else(|| {
                QueryError::BadData(format!(
                    "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid timestamp"
                ))
            }),
        }
    }

    /// A duration parameter in ms, if given.
    pub fn duration(&self, name: &str) -> Result<Option<i64>, QueryError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => parse_duration_ms(text).map(Some).ok_or_else(|| {
                QueryError::BadData(format!(
                    "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid duration"
                ))
            }),
        }
    }

    /// `limit`: a non-negative count, 0 or absent meaning none.
    pub fn limit(&self) -> Result<Option<usize>, QueryError> {
        match self.get("limit") {
            None => Ok(None),
            Some(text) => match text.parse::<usize>() {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(QueryError::BadData(format!(
                    "invalid parameter \"limit\": cannot parse \"{text}\" to a valid limit"
                ))),
            },
        }
    }
}

/// The earliest and latest times Prometheus accepts (what its clients
/// send for "unbounded").
const MIN_TIME_MS: i64 = -62_135_596_801_000;
const MAX_TIME_MS: i64 = 253_402_300_799_000;

/// Unix seconds (`1700000000.123`) or RFC 3339 (`...Z` or with an offset
/// `...+02:00`) → ms.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(secs) = text.parse::<f64>() {
        if !secs.is_finite() {
            return None;
        }
        let whole = secs.trunc();
        let frac = ((secs - whole) * 1000.0).round();
        let ms = whole * 1000.0 + frac;
        return Some(ms.clamp(MIN_TIME_MS as f64, MAX_TIME_MS as f64) as i64);
    }
    // A numeric offset `±HH:MM` at the end: the same local time in UTC,
    // moved back by the offset.
    let split = text
        .len()
        .checked_sub(6)
        .filter(|&i| text.is_char_boundary(i))
        .map(|i| text.split_at(i));
    let (local, offset_ms) = match split {
        Some((local, zone))
            if local.contains('T')
                && matches!(zone.as_bytes(), [b'+' | b'-', h1, h2, b':', m1, m2]
                    if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())) =>
        {
            let hours: i64 = zone[1..3].parse().ok()?;
            let minutes: i64 = zone[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (local, sign * (hours * 60 + minutes) * 60_000)
        }
        _ => (text, 0),
    };
    let t = if local.len() == text.len() {
        humantime::parse_rfc3339_weak(text).ok()?
    } else {
        humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?
    };
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_millis()).ok()?,
    };
    Some(ms - offset_ms)
}

/// Seconds (`15`, `0.5`) or a PromQL duration (`15s`, `1m30s`) → ms.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    if let Ok(secs) = text.parse::<f64>() {
        if !secs.is_finite() || secs * 1000.0 > i64::MAX as f64 / 2.0 {
            return None;
        }
        return Some((secs * 1000.0).round() as i64);
    }
    let d: Duration = promql_parser::util::parse_duration(text).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_as_prometheus_reads_them() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.123"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_time("yesterday"), None);
        // Offsets: 10:00 at +02:00 is 08:00 UTC.
        assert_eq!(
            parse_time("2026-12-05T10:00:00+02:00"),
            parse_time("2026-12-05T08:00:00Z")
        );
        assert_eq!(
            parse_time("2023-11-14T17:13:20.5-05:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20+00:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("2023-11-14T22:13:20+24:00"), None);
        assert_eq!(parse_time("2023-11-14T22:13:20+0200"), None);
        assert_eq!(parse_duration_ms("15"), Some(15_000));
        assert_eq!(parse_duration_ms("0.5"), Some(500));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("soon"), None);
    }
}
