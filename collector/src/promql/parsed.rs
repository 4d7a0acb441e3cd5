//! [`Parsed`]: the last queries parsed, by their text, so that asking the
//! same query again (a dashboard's refresh, an instant and a range query
//! of one panel) skips the parser.
//!
//! `promql-parser`'s generated parser deserializes its grammar tables at
//! every call, which made parsing about a tenth of a small query's time.
//! An expression depends only on its text, so a cached one is the parse
//! of that text; failures are not kept (they are cheap to find again and
//! their messages name the position).
//!
//! The keys are request text, so the map keeps std's randomly seeded
//! SipHash (unlike the query-local maps). Memory is bounded: at most
//! [`MAX_ENTRIES`] queries, none longer than [`MAX_QUERY_LEN`] bytes and
//! none with a regular-expression matcher (`=~`, `!~`: the parser compiles
//! each into a `Regex`, whose size does not follow the text's: a 14-byte
//! `\w{100}` holds megabytes), so an entry is about its text's size times
//! a small factor; the oldest entry goes first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use promql_parser::parser::Expr;

use super::{QueryError, parse};

/// Most queries kept.
pub const MAX_ENTRIES: usize = 256;
/// Longer queries are parsed every time, never kept.
pub const MAX_QUERY_LEN: usize = 4096;

/// The parse of recent query texts; shared by an engine's clones.
#[derive(Debug, Default)]
pub struct Parsed {
    /// A std Mutex: held for a lookup or an insert, never across a parse
    /// or an await.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_text: HashMap<Arc<str>, Arc<Expr>>,
    /// Texts in the order they were added: the oldest is evicted first.
    order: VecDeque<Arc<str>>,
}

impl Parsed {
    /// `query` parsed ([`parse`]), from the cache when it was parsed
    /// before.
    pub fn get(&self, query: &str) -> Result<Arc<Expr>, QueryError> {
        if let Some(expr) = self.lock().by_text.get(query) {
            return Ok(Arc::clone(expr));
        }
        let expr: Arc<Expr> = Arc::from(parse(query)?);
        if query.len() <= MAX_QUERY_LEN && !query.contains('~') {
            let mut inner = self.lock();
            let text: Arc<str> = Arc::from(query);
            if inner
                .by_text
                .insert(Arc::clone(&text), Arc::clone(&expr))
                .is_none()
            {
                inner.order.push_back(text);
            }
            while inner.order.len() > MAX_ENTRIES {
                if let Some(oldest) = inner.order.pop_front() {
                    inner.by_text.remove(&oldest);
                }
            }
        }
        Ok(expr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let inner = self.lock();
        assert_eq!(inner.by_text.len(), inner.order.len());
        inner.by_text.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_parsed_again_is_the_same_expression() {
        let cache = Parsed::default();
        let a = cache.get("sum by (device) (rate(m[5m]))").expect("parses");
        let b = cache.get("sum by (device) (rate(m[5m]))").expect("parses");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, *parse("sum by (device) (rate(m[5m]))").expect("parses"));
        let other = cache.get("sum by (agent) (rate(m[5m]))").expect("parses");
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn failures_and_long_texts_are_not_kept() {
        let cache = Parsed::default();
        let e = cache.get("sum(").expect_err("does not parse");
        assert!(matches!(e, QueryError::BadData(_)), "{e:?}");
        let long = format!("m{}", " + m".repeat(MAX_QUERY_LEN / 4));
        assert!(long.len() > MAX_QUERY_LEN);
        cache.get(&long).expect("parses");
        assert_eq!(cache.len(), 0);
        // Regular expressions are compiled by the parser: never kept.
        cache.get(r#"m{a=~"\\w{100}"}"#).expect("parses");
        cache.get(r#"m{a!~"x"}"#).expect("parses");
        assert_eq!(cache.len(), 0);
        cache.get(r#"m{a="~"}"#).expect("parses");
        assert_eq!(cache.len(), 0, "a ~ anywhere keeps it out (conservative)");
    }

    #[test]
    fn the_oldest_goes_first_beyond_the_bound() {
        let cache = Parsed::default();
        let first = cache.get("m0").expect("parses");
        for i in 1..=MAX_ENTRIES {
            cache.get(&format!("m{i}")).expect("parses");
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        // `m0` was evicted: parsed again, a new expression.
        let again = cache.get("m0").expect("parses");
        assert!(!Arc::ptr_eq(&first, &again));
        let newest = cache.get(&format!("m{MAX_ENTRIES}")).expect("parses");
        assert!(Arc::ptr_eq(
            &newest,
            &cache.get(&format!("m{MAX_ENTRIES}")).expect("parses")
        ));
    }
}
