//! Sizes in bytes: `256MiB`, `64 KiB`, `1GB`, `512B`.

/// Why a size was refused; the caller names the key and the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("missing unit (expected one of {UNITS})")]
    MissingUnit,
    #[error("expected a number followed by a unit, e.g. 256MiB")]
    MissingNumber,
    #[error("number {number} is too large")]
    NumberTooLarge { number: String },
    #[error("unknown unit \"{unit}\" (expected one of {UNITS})")]
    UnknownUnit { unit: String },
    #[error("size does not fit in 64 bits")]
    Overflow,
}

const UNITS: &str = "B, KiB, MiB, GiB, KB, MB, GB";

/// Parses a size such as `256MiB`, `64 KiB`, `1GB` or `512B` into bytes.
/// `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(SizeError::MissingUnit)?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(SizeError::MissingNumber);
    }
    let number: u64 = number.parse().map_err(|_| SizeError::NumberTooLarge {
        number: number.to_owned(),
    })?;
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_owned(),
            });
        }
    };
    number.checked_mul(factor).ok_or(SizeError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        parse_size(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("5KB"), Ok(5000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        assert!(message("100").contains("missing unit"));
        assert!(parse_size("MiB").is_err());
        assert!(message("5 TB").contains("unknown unit \"TB\""));
        assert!(parse_size("99999999999999999999B").is_err());
        assert!(message("99999999999GiB").contains("64 bits"));
    }
}
