//! Reads only the members of a JSON object that a device's pointers start
//! with, so a poll builds no tree for the rest of the document (the rest is
//! still read and checked for syntax, just not kept).
//!
//! Anything this does not cover (a pointer to the whole document, a body
//! that is not an object, invalid JSON) is left to the caller's full parse,
//! which then decides what the answer or the error is.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The top-level members some pointer needs.
#[derive(Debug, Clone)]
pub struct Wanted {
    keys: Box<[Box<str>]>,
}

impl Wanted {
    /// `None` when a pointer needs the whole document (the empty pointer).
    pub fn new<'a>(pointers: impl IntoIterator<Item = &'a str>) -> Option<Wanted> {
        let mut keys: Vec<Box<str>> = Vec::new();
        for p in pointers {
            if p.is_empty() {
                return None;
            }
            // A pointer not starting with `/` points at nothing in any
            // document: it needs no member.
            let Some(rest) = p.strip_prefix('/') else {
                continue;
            };
            let first = rest.split('/').next().unwrap_or("");
            let key = first.replace("~1", "/").replace("~0", "~");
            if !keys.iter().any(|k| **k == *key) {
                keys.push(key.into());
            }
        }
        Some(Wanted {
            keys: keys.into_boxed_slice(),
        })
    }

    /// The document as an object holding only the wanted members, or
    /// `None` if `body` is not one valid JSON object.
    pub fn parse(&self, body: &[u8]) -> Option<serde_json::Value> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let doc = self.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(doc)
    }
}

impl<'de> DeserializeSeed<'de> for &Wanted {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &Wanted {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if self.keys.iter().any(|k| **k == *key) {
                // A repeated member: the last one wins, as in a full parse.
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_same_values_as_a_full_parse() {
        let docs = [
            r#"{"power": 1500, "volt": 229.7, "on": true, "name": "m", "nested": {"a": [1, {"b": -2}]}, "n": null}"#,
            r#"{"a/b": 1, "m~n": 2, "esc\"aped": 3, "dup": 1, "dup": 2, "u\u00e9": 4}"#,
            r#"{}"#,
        ];
        let pointers = [
            "/power",
            "/volt",
            "/on",
            "/name",
            "/nested/a/1/b",
            "/nested",
            "/n",
            "/missing",
            "/a~1b",
            "/m~0n",
            "/esc\"aped",
            "/dup",
            "/ué",
            "nope",
            "/nested/a/9",
        ];
        let wanted = Wanted::new(pointers).expect("no whole-document pointer");
        for doc in docs {
            let full: serde_json::Value = serde_json::from_str(doc).expect("valid");
            let part = wanted.parse(doc.as_bytes()).expect("an object");
            for p in pointers {
                assert_eq!(part.pointer(p), full.pointer(p), "{doc} {p}");
            }
        }
    }

    #[test]
    fn leaves_what_it_does_not_cover_to_the_full_parse() {
        assert!(Wanted::new(["/a", ""]).is_none(), "whole document");
        let wanted = Wanted::new(["/a"]).expect("wanted");
        for body in [
            "[1, 2]",
            "1",
            "{\"a\": 1} trailing",
            "{\"a\": tru}",
            "{\"b\": [}",
            "{\"a\": 1",
            "",
        ] {
            assert!(wanted.parse(body.as_bytes()).is_none(), "{body:?}");
        }
    }
}
