//! A serde `Deserializer` over toml's spanned tree ([`DeValue`]) whose
//! error is [`DeError`]: it follows toml's own `ValueDeserializer` (same
//! integers, floats, options, `Spanned` and string enums) but keeps serde's
//! typed errors and records the key path and span of each.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::value::CowStrDeserializer;
use serde::de::{self, Error as _, IntoDeserializer, Unexpected, Visitor};
use serde_spanned::de::SpannedDeserializer;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::{DeError, Segment};

/// Integer methods that read a decimal string as the integer it spells.
macro_rules! lenient_integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            if let DeValue::String(s) = &self.value {
                let span = self.span.clone();
                let t = s.trim();
                if let Ok(v) = t.parse::<i64>() {
                    return visitor.visit_i64(v).map_err(|e: DeError| e.at(span));
                }
                if let Ok(v) = t.parse::<u64>() {
                    return visitor.visit_u64(v).map_err(|e: DeError| e.at(span));
                }
            }
            self.deserialize_any(visitor)
        }
    )*};
}

/// Deserializes one value of the tree.
pub(crate) struct ValueDe<'de> {
    value: DeValue<'de>,
    span: Range<usize>,
}

impl<'de> ValueDe<'de> {
    pub(crate) fn new(value: Spanned<DeValue<'de>>) -> Self {
        let span = value.span();
        ValueDe {
            value: value.into_inner(),
            span,
        }
    }
}

impl<'de> IntoDeserializer<'de, DeError> for ValueDe<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// What serde calls the value in "invalid type" messages.
fn unexpected<'a>(value: &'a DeValue<'_>) -> Unexpected<'a> {
    match value {
        DeValue::String(s) => Unexpected::Str(s),
        DeValue::Boolean(b) => Unexpected::Bool(*b),
        DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(v) => Unexpected::Signed(v),
            Err(_) => Unexpected::Other("integer"),
        },
        DeValue::Float(f) => match f.as_str().parse() {
            Ok(v) => Unexpected::Float(v),
            Err(_) => Unexpected::Other("float"),
        },
        DeValue::Datetime(_) => Unexpected::Other("datetime"),
        DeValue::Array(_) => Unexpected::Seq,
        DeValue::Table(_) => Unexpected::Map,
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.span;
        match self.value {
            DeValue::String(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            DeValue::String(Cow::Owned(s)) => visitor.visit_string(s),
            DeValue::Integer(n) => {
                let (text, radix) = (n.as_str(), n.radix());
                if let Ok(v) = i64::from_str_radix(text, radix) {
                    visitor.visit_i64(v)
                } else if let Ok(v) = u64::from_str_radix(text, radix) {
                    visitor.visit_u64(v)
                } else if let Ok(v) = i128::from_str_radix(text, radix) {
                    visitor.visit_i128(v)
                } else if let Ok(v) = u128::from_str_radix(text, radix) {
                    visitor.visit_u128(v)
                } else {
                    Err(DeError::custom("integer number overflowed"))
                }
            }
            DeValue::Float(f) => {
                let text = f.as_str();
                match text.parse::<f64>() {
                    Ok(v) if v.is_finite() || text.contains("inf") || v.is_nan() => {
                        visitor.visit_f64(v)
                    }
                    _ => Err(DeError::custom("floating-point number overflowed")),
                }
            }
            DeValue::Boolean(b) => visitor.visit_bool(b),
            value @ DeValue::Datetime(_) => {
                Err(DeError::invalid_type(unexpected(&value), &visitor))
            }
            DeValue::Array(items) => visitor.visit_seq(SeqDe {
                items: items.into_iter(),
                index: 0,
            }),
            DeValue::Table(table) => visitor.visit_map(MapDe::new(table)),
        }
        .map_err(|e: DeError| e.at(span))
    }

    // A present value is `Some`; an absent key never reaches a deserializer.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.span.clone();
        visitor.visit_some(self).map_err(|e: DeError| e.at(span))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.span.clone();
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DeError| e.at(span))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if serde_spanned::de::is_spanned(name) {
            let span = self.span.clone();
            return visitor.visit_map(SpannedDeserializer::<'de, Self, DeError>::new(self, span));
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // Enums in config files are strings (`policy = "block"`).
        match self.value {
            DeValue::String(s) => visitor.visit_enum(CowStrDeserializer::new(s)),
            other => Err(DeError::invalid_type(unexpected(&other), &visitor)),
        }
        .map_err(|e| e.at(self.span))
    }

    // A number or boolean may be written as a string (`port = "${PORT}"`,
    // an inventory's CSV cell): where one is expected, a string is read as
    // TOML would read it unquoted.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            DeValue::String(s) if matches!(s.trim(), "true" | "false") => {
                let span = self.span.clone();
                visitor
                    .visit_bool(s.trim() == "true")
                    .map_err(|e: DeError| e.at(span))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            DeValue::String(s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
                let span = self.span.clone();
                let v = s.trim().parse::<f64>().unwrap_or_default();
                visitor.visit_f64(v).map_err(|e: DeError| e.at(span))
            }
            _ => self.deserialize_any(visitor),
        }
    }

    lenient_integers! {
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
    }

    serde::forward_to_deserialize_any! {
        char str string seq
        bytes byte_buf map unit ignored_any unit_struct tuple_struct tuple identifier
    }
}

/// The items of an array, each under its index.
struct SeqDe<'de> {
    items: std::vec::IntoIter<Spanned<DeValue<'de>>>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        let span = item.span();
        seed.deserialize(ValueDe::new(item))
            .map(Some)
            .map_err(|e| e.at(span).under(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a table, each value under its key.
struct MapDe<'de> {
    entries: toml::map::IntoIter<Spanned<DeString<'de>>, Spanned<DeValue<'de>>>,
    value: Option<(DeString<'de>, Spanned<DeValue<'de>>)>,
}

impl<'de> MapDe<'de> {
    fn new(table: DeTable<'de>) -> Self {
        MapDe {
            entries: table.into_iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let span = key.span();
        let key = key.into_inner();
        // An unknown key is an error of this table, at the key.
        let result = seed
            .deserialize(CowStrDeserializer::<DeError>::new(key.clone()))
            .map(Some)
            .map_err(|e: DeError| e.at(span));
        self.value = Some((key, value));
        result
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let Some((key, value)) = self.value.take() else {
            return Err(DeError::custom("a value was asked for before its key"));
        };
        let span = value.span();
        seed.deserialize(ValueDe::new(value))
            .map_err(|e| e.at(span).under(Segment::Key(key.into_owned())))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
