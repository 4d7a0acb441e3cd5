//! `--since` and `--until`: a duration ago or an RFC 3339 time, as
//! nanoseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Why a `--since`/`--until` value is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    #[error("{0:?} ago is too far back")]
    TooFarBack(String),
    #[error(
        "invalid time {text:?} ({reason}): expected a duration ago like 5m or an RFC 3339 \
         time like 2024-05-01T12:00:00Z"
    )]
    Invalid { text: String, reason: String },
    #[error("time {0:?} is out of range")]
    OutOfRange(String),
}

/// `--since`/`--until` relative to the wall clock now.
pub(super) fn parse_when_now(s: &str) -> Result<i64, WhenError> {
    parse_when(s, SystemTime::now())
}

/// A duration (`5m`, `2h 30m`: that long before `now`) or an RFC 3339 time
/// (`2024-05-01T12:00:00Z`, also without the `T` or the zone, read as UTC),
/// as ns since the Unix epoch.
pub fn parse_when(s: &str, now: SystemTime) -> Result<i64, WhenError> {
    let s = s.trim();
    let t = if let Ok(ago) = humantime::parse_duration(s) {
        now.checked_sub(ago)
            .ok_or_else(|| WhenError::TooFarBack(s.to_owned()))?
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|e| WhenError::Invalid {
            text: s.to_owned(),
            reason: e.to_string(),
        })?
    };
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok(),
        Err(before) => i64::try_from(before.duration().as_nanos()).ok().map(|n| -n),
    };
    ns.ok_or_else(|| WhenError::OutOfRange(s.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_accepts_durations_ago_and_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_when("5m", now).unwrap(),
            (1_000_000 - 300) * 1_000_000_000
        );
        assert_eq!(
            parse_when("1h 30m", now).unwrap(),
            (1_000_000 - 5400) * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01T12:00:00Z", now).unwrap(),
            1_714_564_800 * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01 12:00:00", now).unwrap(),
            1_714_564_800 * 1_000_000_000
        );
        assert_eq!(
            parse_when("2024-05-01T12:00:00.5Z", now).unwrap(),
            1_714_564_800 * 1_000_000_000 + 500_000_000
        );
        let err = parse_when("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("yesterday") && err.contains("5m"), "{err}");
        assert!(parse_when("", now).is_err());
    }
}
