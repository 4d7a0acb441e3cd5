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
/// each merge giving a higher tier, the last a full chunk). So over a run
/// of rounds compaction still does twice the work its readings bring.
const WORK_PER_READING: u64 = 2 * (1 + 4);

/// How much compaction a group of readings gets: steps go on until twice
/// the group's readings have moved from the head into chunks (the head
/// shrinks faster than commits grow it), or until the steps' work reaches
/// [`WORK_PER_READING`] per reading, whichever comes first. Without the
/// second bound, a round whose steps are mostly tier merges (thousands of
/// points rewritten per series for a few moved) held one group for
/// hundreds of steps, and ingest stalled for seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    readings: u64,
    moved: u64,
    work: u64,
}

impl Pace {
    pub(crate) fn new(readings: usize) -> Pace {
        Pace {
            readings: readings as u64,
            moved: 0,
            work: 0,
        }
    }

    /// Counts `step`; true while the group's share is not done yet. An
    /// empty step (nothing due) ends it.
    pub(crate) fn go_on(&mut self, step: &CompactStep) -> bool {
        self.moved += step.points;
        self.work += step.points + step.merged_points;
        *step != CompactStep::default()
            && self.moved < 2 * self.readings
            && self.work < WORK_PER_READING * self.readings
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
    /// step). So compaction outpaces commits however busy the queue is, and
    /// when it falls behind, the next group waits, which is the
    /// backpressure that bounds the store's memory; but a group never waits
    /// for more than a bounded amount of work, even through a round whose
    /// steps mostly merge small chunks. An idle merger runs the rest from
    /// its loop.
    pub(super) fn compact_after(&mut self, readings: usize) {
        let mut pace = Pace::new(readings);
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
