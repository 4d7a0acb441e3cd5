//! The merger's upkeep between groups: the store's compaction (SQLite:
//! head rows into per-series chunks) and retention passes, both in bounded
//! steps so neither ever holds a commit up for long.

use tracing::{debug, info, warn};

use super::{Merger, MergerSettings};
use crate::metrics::StoreOp;
use crate::model::now_ns;
use crate::store::CompactStep;

/// Most readings one retention step removes before the merger looks at its
/// queue again.
const RETAIN_STEP_ROWS: u64 = 20_000;

/// Work (points moved into chunks plus points rewritten by merges) one
/// group's compaction may do, per reading of the group: twice the most a
/// reading ever costs, one move and at most four rewrites (a small chunk
/// merges up through the four size tiers of `store/sqlite/compact.rs`,
/// each merge giving a higher tier, the last a full chunk). An estimate:
/// it leaves out per-chunk SQL and index walks, and with this bound alone
/// compaction fell behind in `bench ingest` (below), hence [`MOST_BACKLOG`].
const WORK_PER_READING: u64 = 2 * (1 + 4);

/// Unmoved points (waiting for a round, or in the round under way and not
/// moved yet: `compaction_backlog`) past which a group's compaction is bounded
/// by points moved only, as if [`WORK_PER_READING`] were not there: the
/// head's memory (≈ 11 bytes a reading) stays bounded while a long round
/// of tier merges runs under heavy ingest. In `bench ingest --duration
/// 60s` at 3.2 M readings/s the head reached 93 M readings (986 MiB)
/// with the work bound alone.
const MOST_BACKLOG: u64 = 16 << 20;

/// How much compaction a group of readings gets: steps go on until twice
/// the group's readings have moved from the head into chunks (the head
/// shrinks faster than commits grow it), or, while fewer than
/// [`MOST_BACKLOG`] points wait for a round, until the steps' work reaches
/// [`WORK_PER_READING`] per reading, whichever comes first. Without the
/// second bound, a round whose steps are mostly tier merges (thousands of
/// points rewritten per series for a few moved) held one group for
/// hundreds of steps, and ingest stalled for seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    readings: u64,
    moved: u64,
    work: u64,
    /// Work bounds the group's share (the backlog is under [`MOST_BACKLOG`]).
    bounded: bool,
}

impl Pace {
    /// For a group of `readings`, with `backlog` points waiting for a
    /// round.
    pub(crate) fn new(readings: usize, backlog: u64) -> Pace {
        Pace {
            readings: readings as u64,
            moved: 0,
            work: 0,
            bounded: backlog < MOST_BACKLOG,
        }
    }

    /// Counts `step`; true while the group's share is not done yet. An
    /// empty step (nothing due) ends it.
    pub(crate) fn go_on(&mut self, step: &CompactStep) -> bool {
        self.moved += step.points;
        self.work += step.points + step.merged_points;
        *step != CompactStep::default()
            && self.moved < 2 * self.readings
            && (!self.bounded || self.work < WORK_PER_READING * self.readings)
    }
}

/// A retention pass in progress.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retaining {
    cutoff_ns: i64,
    removed: u64,
}

impl Merger {
    /// Compaction after a group of `readings`: steps, while compaction is
    /// due, until [`Pace`] says the group's share is done (at least one
    /// step). While the store's unmoved points are under [`MOST_BACKLOG`]
    /// a group's share may be cut by work (compaction may fall behind for
    /// a while, through a round of tier merges); past it compaction moves
    /// twice what the group brought, and the next group waits, which is the
    /// backpressure that bounds the store's memory; but a group never waits
    /// for more than a bounded amount of work, even through a round whose
    /// steps mostly merge small chunks. An idle merger runs the rest from
    /// its loop.
    pub(super) fn compact_after(&mut self, readings: usize) {
        let mut pace = Pace::new(readings, self.store.compaction_backlog());
        while self.store.compaction_due() {
            let Some(step) = self.compact_step() else {
                return;
            };
            if !pace.go_on(&step) {
                return;
            }
        }
    }

    /// One bounded step of the store's compaction. A failed step is logged;
    /// the store pauses compaction for a moment, and commits go on (the
    /// head keeps every reading meanwhile).
    pub(super) fn compact_step(&mut self) -> Option<CompactStep> {
        match self.store.compact() {
            Ok(step) => {
                if step != CompactStep::default() {
                    self.metrics.compaction_steps.inc();
                    self.metrics.compaction_points.inc_by(step.points);
                    self.metrics
                        .compaction_merged_points
                        .inc_by(step.merged_points);
                }
                if step.round_done {
                    self.metrics.compaction_rounds.inc();
                    debug!("compaction round done");
                }
                Some(step)
            }
            Err(e) => {
                self.metrics.store_error(StoreOp::Compact);
                warn!(error = %e, "compaction step failed; trying again shortly");
                None
            }
        }
    }

    /// Starts a retention pass, unless one is under way or the last one
    /// started less than `check_every` ago.
    pub(super) fn start_retention(&mut self) {
        let Some(retention) = self.retention else {
            return;
        };
        if self.retaining.is_some() {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .last_retention
            .is_some_and(|last| now.duration_since(last) < retention.check_every)
        {
            return;
        }
        self.last_retention = Some(now);
        let keep = i64::try_from(retention.keep.as_nanos()).unwrap_or(i64::MAX);
        self.retaining = Some(Retaining {
            cutoff_ns: now_ns().saturating_sub(keep),
            removed: 0,
        });
    }

    /// A reload's settings: a new retention starts a pass at the next check
    /// (a pass under way goes on with its cutoff); a new series limit
    /// applies to the next resolve.
    pub(super) fn settings(&mut self, settings: MergerSettings) {
        if settings.retention != self.retention {
            let keep = settings.retention.map_or_else(
                || "forever".to_owned(),
                |r| humantime::format_duration(r.keep).to_string(),
            );
            info!(%keep, "retention reloaded");
            self.retention = settings.retention;
            self.last_retention = None;
        }
        if settings.max_series_per_agent != self.max_series_per_agent {
            info!(
                max_series_per_agent = settings.max_series_per_agent,
                "max_series_per_agent reloaded"
            );
            self.max_series_per_agent = settings.max_series_per_agent;
            // A refusal under the new limit is logged again.
            self.series_limit_logged.clear();
        }
    }

    /// One bounded step of the retention pass under way. A failed step is
    /// logged and the pass abandoned; the next tick starts a new one.
    pub(super) fn retain_step(&mut self) {
        let Some(mut pass) = self.retaining.take() else {
            return;
        };
        match self.store.retain(pass.cutoff_ns, RETAIN_STEP_ROWS) {
            Ok(step) => {
                pass.removed += step.removed;
                self.metrics.retention_removed.inc_by(step.removed);
                if step.done {
                    self.metrics.retention_passes.inc();
                    if pass.removed > 0 {
                        info!(
                            removed = pass.removed,
                            cutoff_ns = pass.cutoff_ns,
                            "retention: old readings removed"
                        );
                    }
                } else {
                    self.retaining = Some(pass);
                }
            }
            Err(e) => {
                self.metrics.store_error(StoreOp::Retain);
                warn!(error = %e, "retention step failed; trying again at the next tick")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(points: u64, merged_points: u64) -> CompactStep {
        CompactStep {
            points,
            merged_points,
            ..CompactStep::default()
        }
    }

    #[test]
    fn a_group_gets_twice_its_readings_moved_or_its_work_while_the_backlog_is_small() {
        // Steps that move 1 point and merge 72: work ends the share.
        let mut pace = Pace::new(10, 0);
        assert!(pace.go_on(&step(1, 72)));
        assert!(
            !pace.go_on(&step(1, 72)),
            "146 points of work for 10 readings"
        );
        // Steps that only move: twice the readings moved ends it.
        let mut pace = Pace::new(10, 0);
        assert!(pace.go_on(&step(19, 0)));
        assert!(!pace.go_on(&step(1, 0)));
        // A large backlog: moved points only, however much was merged.
        let mut pace = Pace::new(10, MOST_BACKLOG);
        for _ in 0..19 {
            assert!(pace.go_on(&step(1, 72)));
        }
        assert!(!pace.go_on(&step(1, 72)));
        // Nothing due: the share ends.
        assert!(!Pace::new(10, 0).go_on(&CompactStep::default()));
    }
}
