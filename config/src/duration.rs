//! Durations: one syntax for config files (humantime's: `500ms`, `30s`,
//! `1h 30m`, `7d`) and, for command-line flags, the same plus plain seconds
//! and fractions (`20`, `0.5s`). Every duration is bounded by
//! [`MAX_DURATION`], so a deadline `now + duration` cannot overflow.

use std::time::Duration;

/// The longest duration accepted anywhere (100 years): far beyond any
/// interval or timeout, far below what overflows `Instant + Duration`.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Why a duration was refused. Each message names the text and says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Not humantime's syntax.
    #[error("invalid duration {text:?}: {error}")]
    Syntax {
        text: String,
        /// Named in the message, so not returned as `source()` too.
        error: humantime::DurationError,
    },
    /// A flag's number (plain seconds or a fraction) is not a number.
    #[error("invalid duration {text:?}: expected a number and a unit, e.g. 30s, 500ms, 2m")]
    Number { text: String },
    /// Longer than [`MAX_DURATION`].
    #[error(
        "invalid duration {text:?}: longer than the limit of {}",
        humantime::format_duration(MAX_DURATION)
    )]
    TooLong { text: String },
}

/// Parses a duration from a config file: humantime's syntax (`500ms`, `30s`,
/// `5m`, `1h 30m`, `7d`), surrounding blanks ignored, at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(text.trim()).map_err(|error| DurationError::Syntax {
        text: text.to_owned(),
        error,
    })?;
    bounded(text, d)
}

/// Parses a duration given on a command line: what [`parse_duration`]
/// takes, plus plain seconds (`20`) and a fraction of one unit (`0.5s`,
/// `1.5m`).
pub fn parse_duration_arg(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim();
    if !number.contains('.') && !unit.is_empty() {
        return parse_duration(text);
    }
    let invalid = || DurationError::Number {
        text: text.to_owned(),
    };
    let n: f64 = number.parse().map_err(|_| invalid())?;
    let one = if unit.is_empty() {
        Duration::from_secs(1)
    } else {
        parse_duration(&format!("1{unit}"))?
    };
    let d = Duration::try_from_secs_f64(one.as_secs_f64() * n).map_err(|_| invalid())?;
    bounded(text, d)
}

fn bounded(text: &str, d: Duration) -> Result<Duration, DurationError> {
    if d > MAX_DURATION {
        return Err(DurationError::TooLong {
            text: text.to_owned(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let e = parse_duration("5x").expect_err("bad unit");
        assert!(
            e.to_string().starts_with("invalid duration \"5x\": "),
            "{e}"
        );
        // A plain number is no config duration: it has no unit.
        assert!(parse_duration("20").is_err());
    }

    #[test]
    fn every_duration_is_bounded() {
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        let e = parse_duration("500000000000y").expect_err("too long");
        assert_eq!(
            e.to_string(),
            "invalid duration \"500000000000y\": longer than the limit of 100years"
        );
        assert!(matches!(
            parse_duration_arg("101y"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_duration_arg("4000000000"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(parse_duration_arg("1e300").is_err());
    }

    #[test]
    fn flag_durations_parse_with_and_without_units() {
        let cases = [
            ("20s", Duration::from_secs(20)),
            ("20", Duration::from_secs(20)),
            ("1500ms", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0.5s", Duration::from_millis(500)),
            ("0.5", Duration::from_millis(500)),
            ("1.5m", Duration::from_secs(90)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_arg(text), Ok(expected), "{text}");
        }
        for bad in ["5x", "s", "", "1.2.3s", ".", "0.5x"] {
            assert!(parse_duration_arg(bad).is_err(), "{bad}");
        }
    }
}
