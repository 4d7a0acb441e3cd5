//! The pages a nats export has in its pipeline, oldest first, and what
//! each still waits for: the messages of several pages are in flight at
//! once, and their PubAcks may complete a younger page before an older
//! one. A page is handed back as done only when it and every page before
//! it are acknowledged, so the cursor never passes a message without its
//! PubAck.
//!
//! Owned by the `NatsSink` of one export task; pure bookkeeping, no I/O.

use std::collections::VecDeque;

use super::super::Outcome;

/// One page of the commit log in the pipeline.
#[derive(Debug)]
struct Page {
    /// The log position of its last batch: where the cursor goes once it
    /// is done.
    last: i64,
    /// When its oldest batch was received (the `max_lag` deadline).
    first_received: i64,
    /// Messages without their PubAck (or drop) yet.
    left: usize,
    outcome: Outcome,
}

/// The pages in flight, by serial number (`first` is the oldest's).
#[derive(Debug, Default)]
pub struct Ledger {
    pages: VecDeque<Page>,
    first: u64,
}

impl Ledger {
    /// Opens a page of `messages` messages ending at log position `last`;
    /// returns the serial its messages carry.
    pub fn open(&mut self, last: i64, first_received: i64, messages: usize) -> u64 {
        self.pages.push_back(Page {
            last,
            first_received,
            left: messages,
            outcome: Outcome::default(),
        });
        self.first + self.pages.len() as u64 - 1
    }

    fn page(&mut self, serial: u64) -> Option<&mut Page> {
        let at = usize::try_from(serial.checked_sub(self.first)?).ok()?;
        self.pages.get_mut(at)
    }

    /// A message of page `serial` with `readings` readings has its PubAck.
    pub fn acked(&mut self, serial: u64, readings: u64) {
        if let Some(p) = self.page(serial) {
            p.left = p.left.saturating_sub(1);
            p.outcome.sent += readings;
        }
    }

    /// A message of page `serial` was dropped for good.
    pub fn dropped(&mut self, serial: u64, readings: u64, error: String) {
        if let Some(p) = self.page(serial) {
            p.left = p.left.saturating_sub(1);
            p.outcome.dropped += readings;
            p.outcome.last_error = Some(error);
        }
    }

    /// A message of page `serial` goes again.
    pub fn retried(&mut self, serial: u64) {
        if let Some(p) = self.page(serial) {
            p.outcome.retried += 1;
        }
    }

    /// A failure while every open page was in flight: each keeps it as
    /// its last error.
    pub fn failed(&mut self, error: &str) {
        for p in &mut self.pages {
            p.outcome.last_error = Some(error.to_owned());
        }
    }

    /// The oldest page, when it and so every page before it is done: its
    /// last position and outcome.
    pub fn pop_done(&mut self) -> Option<(i64, Outcome)> {
        if self.pages.front()?.left > 0 {
            return None;
        }
        let p = self.pages.pop_front()?;
        self.first += 1;
        Some((p.last, p.outcome))
    }

    /// Readings with their PubAck in the open pages.
    pub fn acked_readings(&self) -> u64 {
        self.pages.iter().map(|p| p.outcome.sent).sum()
    }

    /// Pages open (done ones not popped yet included).
    pub fn open_pages(&self) -> usize {
        self.pages.len()
    }

    /// The receive time of the oldest open page's first batch.
    pub fn oldest_received(&self) -> Option<i64> {
        self.pages.front().map(|p| p.first_received)
    }

    /// The last position of the youngest page: where the next read starts.
    pub fn newest_last(&self) -> Option<i64> {
        self.pages.back().map(|p| p.last)
    }

    /// Forgets every page (their messages are abandoned; the cursor has
    /// not passed them, so they go again).
    pub fn clear(&mut self) {
        self.first += self.pages.len() as u64;
        self.pages.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn a_younger_page_done_first_waits_for_the_older_one() {
        let mut l = Ledger::default();
        let a = l.open(10, 1, 2);
        let b = l.open(20, 2, 1);
        // Page b's one message is acknowledged before either of a's.
        l.acked(b, 100);
        assert_eq!(l.pop_done(), None, "the cursor must not pass page a");
        l.acked(a, 100);
        assert_eq!(l.pop_done(), None, "page a still waits for a message");
        l.acked(a, 50);
        let (last, out) = l.pop_done().expect("page a done");
        assert_eq!((last, out.sent), (10, 150));
        let (last, out) = l.pop_done().expect("page b done");
        assert_eq!((last, out.sent), (20, 100));
        assert_eq!(l.open_pages(), 0);
    }

    #[test]
    fn serials_after_a_clear_never_reach_new_pages() {
        let mut l = Ledger::default();
        let old = l.open(10, 1, 1);
        l.clear();
        let new = l.open(10, 1, 1);
        assert_ne!(old, new);
        // A late answer to an abandoned page's message counts nowhere.
        l.acked(old, 7);
        assert_eq!(l.pop_done(), None);
        l.retried(new);
        l.dropped(new, 3, "too large".into());
        let (_, out) = l.pop_done().expect("done");
        assert_eq!((out.sent, out.dropped, out.retried), (0, 3, 1));
    }

    #[test]
    fn an_empty_page_is_done_in_its_turn() {
        let mut l = Ledger::default();
        let a = l.open(5, 1, 1);
        l.open(6, 1, 0);
        assert_eq!(l.pop_done(), None);
        l.acked(a, 1);
        assert_eq!(l.pop_done().map(|d| d.0), Some(5));
        assert_eq!(l.pop_done().map(|d| d.0), Some(6));
        assert_eq!(l.pop_done(), None);
    }
}
