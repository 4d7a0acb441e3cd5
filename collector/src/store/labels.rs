//! How a series is stored, the same in both backends: a `series` row of
//! `id, agent, device, metric, labels, unit`, its labels as canonical JSON
//! (keys sorted). The JSON text is part of the series' identity (the unique
//! key compares it), so it is written by one function that cannot fail,
//! and read back into a [`SeriesMeta`] by one function.

use std::collections::BTreeMap;

use crate::model::{SeriesKey, SeriesMeta};

/// The columns of a `series` row, in [`SeriesRow`] order.
pub(crate) const SERIES_COLUMNS: &str = "id, agent, device, metric, labels, unit";

/// A `series` row as read from either backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeriesRow {
    pub id: i64,
    pub agent: String,
    pub device: String,
    pub metric: String,
    /// Canonical JSON, as [`labels_json`] wrote it.
    pub labels: String,
    pub unit: String,
}

impl SeriesRow {
    /// The series the row stores; its labels must be a JSON object of
    /// strings.
    pub fn into_meta(self) -> Result<SeriesMeta, BadLabels> {
        let labels = serde_json::from_str(&self.labels).map_err(|cause| BadLabels {
            series: self.id,
            cause,
        })?;
        Ok(SeriesMeta {
            id: self.id,
            key: SeriesKey {
                agent: self.agent,
                device: self.device,
                metric: self.metric,
                labels,
                unit: self.unit,
            },
        })
    }
}

/// A stored `labels` cell that is not a JSON object of strings.
#[derive(Debug, thiserror::Error)]
#[error("bad stored labels of series {series}: {cause}")]
pub struct BadLabels {
    pub series: i64,
    pub cause: serde_json::Error,
}

/// Canonical JSON of a series' labels: an object, keys in byte order (it
/// is a `BTreeMap`), no spaces, strings escaped as serde_json escapes them
/// (so rows written before this function existed still match).
pub(crate) fn labels_json(key: &SeriesKey) -> String {
    json_object(&key.labels)
}

fn json_object(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(2 + labels.len() * 16);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, k);
        out.push(':');
        json_string(&mut out, v);
    }
    out.push('}');
    out
}

/// `s` as a JSON string: `"` and `\` escaped, control characters as
/// `\b \t \n \f \r` or `\u00xx`, everything else (DEL, non-ASCII) as it is.
fn json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => {
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_are_compact_sorted_json() {
        let labels = BTreeMap::from([
            ("zone".to_owned(), "x".to_owned()),
            ("room".to_owned(), "1 \"a\"\\\n\u{1}\u{7f}é".to_owned()),
        ]);
        assert_eq!(
            json_object(&labels),
            concat!(
                r#"{"room":"1 \"a\"\\\n\u0001"#,
                "\u{7f}",
                r#"é","zone":"x"}"#
            )
        );
        assert_eq!(json_object(&BTreeMap::new()), "{}");
    }

    proptest! {
        /// Stored identities do not change: the text is serde_json's, and
        /// it reads back as the same labels.
        #[test]
        fn labels_json_is_what_serde_json_writes(labels in prop::collection::btree_map(any::<String>(), any::<String>(), 0..6)) {
            let ours = json_object(&labels);
            prop_assert_eq!(&ours, &serde_json::to_string(&labels).unwrap());
            let back: BTreeMap<String, String> = serde_json::from_str(&ours).unwrap();
            prop_assert_eq!(back, labels);
        }
    }
}
