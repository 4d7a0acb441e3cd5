//! [`DeError`]: the deserializer's own error type. serde reports an unknown
//! key, a missing key or an unknown enum value through typed calls
//! (`unknown_field(name, FIELDS)`); this type keeps them typed, with the
//! span and the key path filled in on the way up, so nothing downstream
//! reads serde's message text.

use std::fmt;
use std::ops::Range;

/// What went wrong, as serde said it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeErrorKind {
    /// A key the struct does not have; `expected` are its fields.
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
    },
    /// A required key is absent.
    MissingKey(&'static str),
    /// A string that is none of an enum's values.
    UnknownValue {
        value: String,
        expected: &'static [&'static str],
    },
    /// Anything else (wrong type, out of range, a custom check).
    Other(String),
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// A deserialization error with where it happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeError {
    pub(crate) kind: DeErrorKind,
    /// The key or value the error is about; set by the innermost place that
    /// knows it.
    pub(crate) span: Option<Range<usize>>,
    /// The path below the deserialized table, innermost step first.
    path: Vec<Segment>,
}

impl DeError {
    fn new(kind: DeErrorKind) -> Self {
        DeError {
            kind,
            span: None,
            path: Vec::new(),
        }
    }

    /// Sets the span unless a deeper place set it already.
    pub(crate) fn at(mut self, span: Range<usize>) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        self
    }

    /// The error happened below `segment`.
    pub(crate) fn under(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    /// True when the error is about the deserialized table itself.
    pub(crate) fn at_top(&self) -> bool {
        self.path.is_empty()
    }

    /// The key path below `prefix`, e.g. `devices[0]` + `metrics[1].register`.
    pub(crate) fn key_path(&self, prefix: &str) -> String {
        let mut out = prefix.to_owned();
        for segment in self.path.iter().rev() {
            match segment {
                Segment::Key(k) if out.is_empty() => out.push_str(k),
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` ``, as serde phrases lists.
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DeErrorKind::UnknownKey { key, expected } => {
                write!(f, "unknown key `{key}`, expected {}", one_of(expected))
            }
            DeErrorKind::MissingKey(key) => write!(f, "missing key `{key}`"),
            DeErrorKind::UnknownValue { value, expected } => {
                write!(f, "unknown value `{value}`, expected {}", one_of(expected))
            }
            DeErrorKind::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl serde::de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(DeErrorKind::Other(msg.to_string()))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownKey {
            key: field.to_owned(),
            expected,
        })
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::MissingKey(field))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownValue {
            value: variant.to_owned(),
            expected,
        })
    }
}
