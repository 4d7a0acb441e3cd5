//! Group commit and dedup: the batches of one group are written in one
//! transaction with each (agent, epoch)'s new delivery state, and only
//! after the commit are the sessions acked. A batch whose sequence is in
//! the committed set of its (agent, epoch) (the mark and the ranges above
//! it) is a replay: acked again, not stored; any other is new, whatever its
//! position. Also the series ids (resolved through the store, cached in the
//! series table) and what `Query/Tail` sees of each commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use super::{AckSender, IncomingBatch, Merger, Refused, SeriesLimitExceeded};
use crate::metrics::StoreOp;
use crate::model::{Committed, CommittedChunk, IdMap, Point, SeriesKey};
use crate::store::{
    BatchWrite, CommitReport, CommittedSet, EpochRow, Store, StoreError, StoredEpoch, WriteSet,
};
use tributary_proto::limits::MAX_COMMITTED_RANGES;

/// The answer to one batch, to publish on its stream after the commit.
struct Answer {
    to: AckSender,
    /// The (agent, epoch) whose committed set the ack carries.
    key: (Arc<str>, u64),
    /// Its index among the group's batch writes; `None` for a replay
    /// (nothing to write). A batch the store reports as already stored
    /// (another collector wrote it) is a replay too.
    write: Option<usize>,
}

/// Longest wait between two attempts of a failing store call.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// One group being assembled: what to write and whom to ack afterwards.
#[derive(Default)]
pub(super) struct Group {
    pub(super) set: WriteSet,
    pub(super) readings: usize,
    /// The answer to each batch of the group, published after the commit.
    acks: Vec<Answer>,
    /// (agent, epoch) → new delivery state, for the write set: the
    /// cached state plus what the group adds (its sequences commit
    /// together or not at all).
    epochs: HashMap<(Arc<str>, u64), EpochRow>,
}

impl Group {
    /// Takes the batches of `key` out of the group (and its delivery
    /// state), answering each with `refused`.
    fn refuse(&mut self, key: &(Arc<str>, u64), refused: Refused) {
        // Old index → new index of each batch kept.
        let mut index: Vec<Option<usize>> = Vec::with_capacity(self.set.batches.len());
        let mut kept = Vec::with_capacity(self.set.batches.len());
        for b in std::mem::take(&mut self.set.batches) {
            if (&b.agent, b.epoch) == (&key.0, key.1) {
                self.readings -= b.readings.len();
                index.push(None);
            } else {
                index.push(Some(kept.len()));
                kept.push(b);
            }
        }
        self.set.batches = kept;
        self.set
            .epochs
            .retain(|(a, e, _)| (a, *e) != (&key.0, key.1));
        self.epochs.remove(key);
        self.acks.retain_mut(|answer| {
            if answer.key == *key {
                answer.to.send_modify(|acks| {
                    acks.batches += 1;
                    acks.refused.get_or_insert_with(|| refused.clone());
                });
                return false;
            }
            answer.write = answer.write.and_then(|i| index.get(i).copied().flatten());
            true
        });
    }
}

/// Whether `e` is an `epochs` row whose committed ranges do not decode.
fn bad_epoch_row(e: &StoreError) -> bool {
    matches!(e, StoreError::Invalid { what, .. } if *what == StoredEpoch::DECODING)
}

impl Merger {
    /// The committed set of (agent, epoch) for a Welcome: only what is
    /// durable, the store's row (another collector may have advanced it),
    /// never the group being assembled, which may still fail to commit; the
    /// agent drops what the Welcome covers. Without the store, the cache is
    /// safe too: it is never ahead of the store, and a low Welcome only
    /// means resends, which are deduplicated.
    pub(super) fn durable_committed(&mut self, agent: &Arc<str>, epoch: u64) -> EpochRow {
        match self.store.epoch(agent, epoch) {
            Ok(Some(row)) => self.merge_epoch(agent, epoch, &row),
            Ok(None) => {}
            Err(e) => {
                self.metrics.store_error(StoreOp::ReadEpoch);
                warn!(agent = %agent, epoch, error = %e, "reading the committed set failed; welcoming with the cached one");
            }
        }
        self.epochs
            .get(&(agent.clone(), epoch))
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn apply_batch(&mut self, b: IncomingBatch, group: &mut Group) {
        let key = (b.agent.clone(), b.epoch);
        let replay = self
            .epoch_state(&key, group)
            .is_some_and(|row| row.committed.contains(b.seq));
        self.report(&b.agent, b.epoch, b.dropped, b.last_seq, group);
        // A replay's readings are stored already: not counted again.
        let skewed = if replay { 0 } else { b.skewed_readings };
        self.saw_batch(&b.agent, b.received_ns, (b.resent, replay), skewed);
        if replay {
            // A replay (resend after a lost ack, or a second stream of the
            // same agent): ack again, store nothing.
            debug!(agent = %b.agent, seq = b.seq, "duplicate batch acked again");
            group.acks.push(Answer {
                to: b.ack,
                key,
                write: None,
            });
            return;
        }
        if let Some(refused) = self.too_many_ranges(&b, group) {
            debug!(agent = %b.agent, epoch = b.epoch, seq = b.seq, "{refused}");
            let refused = Refused::RangeLimit(Arc::from(refused));
            b.ack.send_modify(|acks| {
                acks.batches += 1;
                acks.refused.get_or_insert(refused);
            });
            return;
        }
        // Sequences the agent will never send close their holes. Taken from
        // new batches only (the store applies it with the batch, written or
        // skipped), so the cache never holds what the store does not.
        let committed = &mut self.group_epoch(&key, group).committed;
        committed.close_below(b.floor);
        committed.add_batch(b.seq, b.high_water);
        group.readings += b.readings.len();
        group.acks.push(Answer {
            to: b.ack,
            key,
            write: Some(group.set.batches.len()),
        });
        group.set.batches.push(BatchWrite {
            agent: b.agent,
            epoch: b.epoch,
            seq: b.seq,
            high_water: b.high_water,
            floor: b.floor,
            received_ns: b.received_ns,
            readings: b.readings,
        });
    }

    /// Why `b` (not a replay) is refused: it would take its (agent, epoch)
    /// past [`MAX_COMMITTED_RANGES`] ranges. Each batch opens at most one
    /// range, so only a set at the bound is copied to try it.
    fn too_many_ranges(&self, b: &IncomingBatch, group: &Group) -> Option<String> {
        let key = (b.agent.clone(), b.epoch);
        let row = self.epoch_state(&key, group)?;
        if row.committed.ranges().len() < MAX_COMMITTED_RANGES {
            return None;
        }
        let mut trial = row.committed.clone();
        trial.close_below(b.floor);
        trial.add_batch(b.seq, b.high_water);
        (trial.ranges().len() > MAX_COMMITTED_RANGES).then(|| {
            format!(
                "agent {:?}, epoch {}: batch {} would take the committed set past \
                 {MAX_COMMITTED_RANGES} ranges above sequence {} (4 x MAX_ACK_RANGES); \
                 send the backlog in sequence order, or say oldest_spooled to close holes",
                &*b.agent,
                b.epoch,
                b.seq,
                trial.mark()
            )
        })
    }

    /// The delivery state of (agent, epoch), counting the group being
    /// assembled (its batches commit together or not at all); `None` when
    /// nothing is known of it.
    fn epoch_state<'a>(&'a self, key: &(Arc<str>, u64), group: &'a Group) -> Option<&'a EpochRow> {
        group.epochs.get(key).or_else(|| self.epochs.get(key))
    }

    /// The group's delivery state of (agent, epoch), to change: the cached
    /// one, copied in at the group's first change of it.
    fn group_epoch<'g>(&self, key: &(Arc<str>, u64), group: &'g mut Group) -> &'g mut EpochRow {
        group
            .epochs
            .entry(key.clone())
            .or_insert_with(|| self.epochs.get(key).cloned().unwrap_or_default())
    }

    /// Records what the agent reports about its spool: readings dropped
    /// and the newest spooled sequence (both only grow; readers sum the
    /// drops of every epoch).
    pub(super) fn report(
        &mut self,
        agent: &Arc<str>,
        epoch: u64,
        dropped: u64,
        last_seq: u64,
        group: &mut Group,
    ) {
        let key = (agent.clone(), epoch);
        if let Some(e) = self.epoch_state(&key, group)
            && dropped <= e.dropped
            && last_seq <= e.last_seq
        {
            return;
        }
        let e = self.group_epoch(&key, group);
        e.dropped = e.dropped.max(dropped);
        e.last_seq = e.last_seq.max(last_seq);
    }

    /// Global ids of `keys`, asking the store (which assigns them, so
    /// collectors sharing a database agree) for the ones the series table
    /// does not hold: first whether it has them, then to create the rest.
    /// Refused, with nothing created, when the new ones would take their
    /// agent past `max_series_per_agent`.
    pub(super) fn resolve(
        &mut self,
        keys: Vec<SeriesKey>,
    ) -> Result<Vec<i64>, SeriesLimitExceeded> {
        let mut missing: Vec<&SeriesKey> = keys
            .iter()
            .filter(|k| self.series.get(k).is_none())
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let missing: Vec<SeriesKey> = missing.into_iter().cloned().collect();
            let stored = self.retry(StoreOp::LookupSeries, |store| store.lookup_series(&missing));
            let mut new = Vec::new();
            for (key, id) in missing.into_iter().zip(stored) {
                match id {
                    Some(id) => self.series.insert(&key, id),
                    None => new.push(key),
                }
            }
            if !new.is_empty() {
                self.check_series_limit(&new)?;
                let ids = self.retry(StoreOp::ResolveSeries, |store| store.resolve_series(&new));
                for (key, id) in new.iter().zip(ids) {
                    self.series.insert(key, id);
                }
                self.count_new_series(&new);
            }
            debug!(series = self.series.len(), "series resolved");
        }
        let ids = keys
            .iter()
            .map(|k| self.series.get(k).unwrap_or_default())
            .collect();
        // After the answer: what was just used is the newest.
        self.series.evict();
        Ok(ids)
    }

    /// Calls `f` until the store takes it. Nothing is acked meanwhile:
    /// sessions wait, the queue fills, agents spool.
    /// Each failure counts in `store_errors_total`; `store_retrying` is 1
    /// until it succeeds.
    fn retry<T>(&mut self, op: StoreOp, f: impl FnMut(&mut Store) -> Result<T, StoreError>) -> T {
        match self.retry_unless(op, f, |_| false) {
            Ok(v) => v,
            // `give_up` never says yes.
            Err(_) => unreachable!("retry gave up"),
        }
    }

    /// [`Self::retry`], but an error `give_up` says yes to is returned
    /// (counted, not retried).
    fn retry_unless<T>(
        &mut self,
        op: StoreOp,
        mut f: impl FnMut(&mut Store) -> Result<T, StoreError>,
        give_up: impl Fn(&StoreError) -> bool,
    ) -> Result<T, StoreError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match f(&mut self.store) {
                Ok(v) => {
                    if delay > Duration::from_millis(50) {
                        self.metrics.store_retrying.set(0);
                    }
                    return Ok(v);
                }
                Err(e) if give_up(&e) => {
                    self.metrics.store_error(op);
                    if delay > Duration::from_millis(50) {
                        self.metrics.store_retrying.set(0);
                    }
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.store_error(op);
                    self.metrics.store_retrying.set(1);
                    let what = op.name();
                    error!(error = %e, retry_in = ?delay, "{what} failed; nothing acked, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Commits the group (retrying until the store takes it), then acks and
    /// publishes. `false` when the simulation's `after_commit` stopped the
    /// merger after the commit, before the acks.
    pub(super) fn flush(&mut self, mut group: Group) -> bool {
        let mut epochs: Vec<_> = std::mem::take(&mut group.epochs)
            .into_iter()
            .map(|((a, e), s)| (a, e, s))
            .collect();
        epochs.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        group.set.epochs = epochs;
        self.agent_writes(&mut group.set);
        let mut skipped = Vec::new();
        let started = Instant::now();
        let mut report = CommitReport::default();
        while !group.set.is_empty() {
            let set = &group.set;
            match self.retry_unless(StoreOp::Commit, |store| store.commit(set), bad_epoch_row) {
                Ok(r) => {
                    report = r;
                    break;
                }
                Err(e) => self.refuse_bad_epochs(&mut group, &e),
            }
        }
        if !group.set.is_empty() {
            let set = &group.set;
            self.metrics.committed(
                set.batches.len() - report.skipped.len(),
                group.readings,
                started.elapsed(),
            );
            for (agent, epoch, row) in &report.epochs {
                self.merge_epoch(agent, *epoch, row);
            }
            self.count_committed(&group.set, &report.skipped);
            for &i in &report.skipped {
                if let Some(b) = group.set.batches.get(i) {
                    debug!(agent = %b.agent, epoch = b.epoch, seq = b.seq, "batch already stored (another collector); acked, not stored");
                }
            }
            skipped = report.skipped;
            if let Some(stop) = &mut self.after_commit
                && stop()
            {
                return false;
            }
        }
        // Each ack carries the whole committed set of its (agent, epoch) as
        // of this commit (the cache now holds it: never ahead of the store,
        // and never behind what any stream of it was told, since it only
        // grows); one copy per (agent, epoch), shared by its answers.
        let mut sets: HashMap<(Arc<str>, u64), Arc<CommittedSet>> = HashMap::new();
        for answer in group.acks {
            let replay = answer.write.is_none_or(|i| skipped.contains(&i));
            let set = match sets.get(&answer.key) {
                Some(set) => set.clone(),
                None => {
                    let set = Arc::new(
                        self.epochs
                            .get(&answer.key)
                            .map(|row| row.committed.clone())
                            .unwrap_or_default(),
                    );
                    sets.insert(answer.key, set.clone());
                    set
                }
            };
            // Always a change, so the session hears of every answer (a
            // replay's too, though the set may not grow).
            answer.to.send_modify(|acks| {
                acks.committed = if set.covers(&acks.committed) {
                    set
                } else {
                    // Not expected (see above), but an ack never shrinks.
                    let mut both = (*set).clone();
                    both.union(&acks.committed);
                    Arc::new(both)
                };
                acks.batches += 1;
                if replay {
                    acks.replays += 1;
                }
            });
        }
        if self.tail.receiver_count() > 0 && group.set.batches.len() > skipped.len() {
            let chunks = self.committed_chunks(&group.set, &skipped);
            let _ = self.tail.send(chunks);
        }
        self.publish_live();
        true
    }

    /// After a commit failed on an `epochs` row that does not decode
    /// (`e`): finds the (agent, epoch) rows of the group that do not, and
    /// takes their batches out of it, ending their streams with an error
    /// naming the row, so the other agents' batches commit. A row that
    /// reads again (repaired, or the failure passed) is left in.
    fn refuse_bad_epochs(&mut self, group: &mut Group, e: &StoreError) {
        let mut keys: Vec<(Arc<str>, u64)> = group
            .set
            .batches
            .iter()
            .map(|b| (b.agent.clone(), b.epoch))
            .chain(group.set.epochs.iter().map(|(a, e, _)| (a.clone(), *e)))
            .collect();
        keys.sort();
        keys.dedup();
        let mut found = false;
        for key in keys {
            let Err(bad) = self.store.epoch(&key.0, key.1) else {
                continue;
            };
            if !bad_epoch_row(&bad) {
                continue;
            }
            found = true;
            error!(agent = %key.0, epoch = key.1, error = %bad, "epochs row does not decode: the epoch's batches are refused until it is repaired");
            group.refuse(&key, Refused::BadEpochRow(Arc::from(bad.to_string())));
        }
        if !found {
            warn!(error = %e, "commit failed on an epochs row that now reads; retrying");
        }
    }

    /// Groups the committed readings by series for `Query/Tail`, leaving
    /// out the batches the store skipped. Series the table no longer holds
    /// are read back from the store first.
    fn committed_chunks(&mut self, set: &WriteSet, skipped: &[usize]) -> Committed {
        let kept = || {
            set.batches
                .iter()
                .enumerate()
                .filter(|(i, _)| !skipped.contains(i))
                .flat_map(|(_, b)| &b.readings)
        };
        let mut evicted: Vec<i64> = kept()
            .map(|r| r.series_id)
            .filter(|&id| !self.series.contains(id))
            .collect();
        if !evicted.is_empty() {
            evicted.sort_unstable();
            evicted.dedup();
            match self.store.series_by_ids(&evicted) {
                Ok(rows) => {
                    for row in &rows {
                        self.series.insert_row(row);
                    }
                }
                Err(e) => {
                    self.metrics.store_error(StoreOp::SeriesByIds);
                    warn!(error = %e, series = evicted.len(), "reading series back for tail failed")
                }
            }
        }
        let mut chunks: Vec<CommittedChunk> = Vec::new();
        let mut index: IdMap<usize> = IdMap::default();
        for (_, b) in set
            .batches
            .iter()
            .enumerate()
            .filter(|(i, _)| !skipped.contains(i))
        {
            for r in &b.readings {
                let i = match index.get(&r.series_id) {
                    Some(&i) => i,
                    None => {
                        let Some(meta) = self.series.meta(r.series_id) else {
                            warn!(series = r.series_id, "committed reading of unknown series");
                            continue;
                        };
                        chunks.push(CommittedChunk {
                            series: Arc::new(meta),
                            points: Vec::new(),
                        });
                        index.insert(r.series_id, chunks.len() - 1);
                        chunks.len() - 1
                    }
                };
                chunks[i].points.push(Point {
                    ts_ns: r.ts_ns,
                    received_ns: b.received_ns,
                    value: r.value.clone(),
                });
            }
        }
        self.series.evict();
        Arc::new(chunks)
    }
}
