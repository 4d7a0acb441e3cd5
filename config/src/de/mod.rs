//! Deserializing a spanned TOML table into a `Raw*` struct, with every
//! error located: [`deserialize_table`] and how to phrase its errors
//! ([`DeContext`]).
//!
//! The tree is walked by this module's own deserializer ([`value`]), whose
//! error type keeps serde's typed reports (unknown key with the struct's
//! field list, missing key, unknown enum value) and the exact key path and
//! span of each, so no message text is parsed and no path is guessed from a
//! byte offset.
//!
//! Owns: the deserializer (`value.rs`) and its error type (`error.rs`);
//! turning a `DeError` into a located `ConfigError` through the `Source`
//! it was given. May touch: toml's spanned tree and serde, and the
//! crate's `Source` and `ConfigError`; never what a key means.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::{ConfigError, Source};
use error::{DeError, DeErrorKind};
use value::ValueDe;

mod error;
mod value;

#[cfg(test)]
mod tests;

/// How to phrase deserialization errors of one table.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeContext<'a> {
    /// Keys the table may hold that the `Raw*` struct does not list (read
    /// elsewhere); named in "unknown key" hints.
    pub extra_keys: &'a [&'a str],
    /// Appended to "unknown key" and "missing key" messages about the table
    /// itself, e.g. " for driver http".
    pub what: &'a str,
}

/// Deserializes the table `table` (spanning `span` in `src`, at key path
/// `prefix`, empty for the top level) into `T`; any error names the file,
/// the line and the key path.
pub fn deserialize_table<'i, T: Deserialize<'i>>(
    src: &Source<'_>,
    table: DeTable<'i>,
    span: Range<usize>,
    prefix: &str,
    cx: &DeContext<'_>,
) -> Result<T, ConfigError> {
    T::deserialize(ValueDe::new(Spanned::new(
        span.clone(),
        DeValue::Table(table),
    )))
    .map_err(|e| located(src, e, span, prefix, cx))
}

/// Turns a [`DeError`] into a located [`ConfigError`].
fn located(
    src: &Source<'_>,
    e: DeError,
    fallback: Range<usize>,
    prefix: &str,
    cx: &DeContext<'_>,
) -> ConfigError {
    let span = e.span.clone().unwrap_or(fallback);
    let key = e.key_path(prefix);
    // `what` and `extra_keys` describe the table given, not its sub-tables.
    let (what, extra_keys) = if e.at_top() {
        (cx.what, cx.extra_keys)
    } else {
        ("", &[][..])
    };
    let message = match &e.kind {
        DeErrorKind::UnknownKey { key, expected } => {
            let keys: Vec<String> = extra_keys
                .iter()
                .chain(expected.iter())
                .map(|k| format!("`{k}`"))
                .collect();
            let hint = if keys.is_empty() {
                "no keys are allowed here".to_owned()
            } else {
                format!("expected one of {}", keys.join(", "))
            };
            format!("unknown key `{key}`{what} ({hint})")
        }
        DeErrorKind::MissingKey(name) => format!("missing key `{name}`{what}"),
        DeErrorKind::UnknownValue { .. } | DeErrorKind::Other(_) => e.to_string(),
    };
    src.error(span, key, message)
}
