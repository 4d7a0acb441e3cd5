//! What one query's evaluation keeps between its evaluation steps, so
//! that work depending only on the query (not on the step) is done once:
//! `label_replace`'s compiled regular expressions, and the inner
//! evaluations of each subquery's last window (the next step's window
//! overlaps it).
//!
//! Owned by the query's [`Evaluator`](super::eval::Evaluator), which
//! lives on one thread: hence `RefCell`s, never borrowed across a call
//! back into the evaluator.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::promql::FastMap;
use regex::Regex;

use super::types::Value;

/// The most inner evaluations kept per subquery node: Prometheus's limit
/// of points per series. An inner evaluation of a selector with no data
/// is cheap and adds no sample, so without a bound a subquery of a tiny
/// step over a long range (`x[1y:1ms]`) would grow the memo until the
/// deadline; past the bound the rest of the window is computed again.
pub const MAX_WINDOW_STEPS: usize = 11_000;

/// The caches of one query's evaluation; empty at its start.
#[derive(Default)]
pub struct Memo {
    /// Anchored regular expressions by their pattern as written.
    regexes: RefCell<FastMap<String, Regex>>,
    /// Per subquery node (its address in the query's tree, which outlives
    /// the evaluator), the inner evaluations of its last window by time.
    subqueries: RefCell<FastMap<usize, BTreeMap<i64, Value>>>,
}

impl Memo {
    /// `pattern` anchored (`^(?:pattern)$`) and compiled, once per query;
    /// the compiler's message when it is invalid (nothing kept then: the
    /// query fails).
    pub fn anchored_regex(&self, pattern: &str) -> Result<Regex, regex::Error> {
        if let Some(re) = self.regexes.borrow().get(pattern) {
            // A `Regex` clone shares the compiled program.
            return Ok(re.clone());
        }
        let re = Regex::new(&format!("^(?:{pattern})$"))?;
        self.regexes
            .borrow_mut()
            .insert(pattern.to_owned(), re.clone());
        Ok(re)
    }

    /// The inner evaluations kept for subquery `node` (from its previous
    /// window), taken out; empty the first time.
    pub fn take_window(&self, node: usize) -> BTreeMap<i64, Value> {
        self.subqueries
            .borrow_mut()
            .remove(&node)
            .unwrap_or_default()
    }

    /// Keeps `window` (inner evaluation time → value) for subquery `node`'s
    /// next window.
    pub fn keep_window(&self, node: usize, window: BTreeMap<i64, Value>) {
        self.subqueries.borrow_mut().insert(node, window);
    }

    /// Inner evaluations kept, over every subquery node.
    #[cfg(test)]
    pub fn kept_steps(&self) -> usize {
        self.subqueries.borrow().values().map(BTreeMap::len).sum()
    }
}
