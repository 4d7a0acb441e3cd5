//! The uplink's and the spool's metrics: batches sealed, sent, acked and
//! resent, the ack latency, readings dropped by the spool, the spool's size
//! and its oldest unacked batch, the state of the connection, which
//! collector it streams to, and why it reconnected.
//!
//! [`UplinkMetrics`] belongs to the uplink task (`&mut self` methods): it
//! keeps when each batch in flight was sent (for the ack latency) and when
//! sequences were first seen sealed (for the age of the oldest unacked
//! batch), both bounded by what is unacked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use tributary_process::metrics::Histogram;
use tributary_process::now_ns;

use crate::spool::AckedSet;

/// The state of the connection to a collector (the `state` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Disconnected,
    Connecting,
    Streaming,
}

impl LinkState {
    const ALL: [LinkState; 3] = [
        LinkState::Disconnected,
        LinkState::Connecting,
        LinkState::Streaming,
    ];

    fn label(self) -> &'static str {
        match self {
            LinkState::Disconnected => "disconnected",
            LinkState::Connecting => "connecting",
            LinkState::Streaming => "streaming",
        }
    }
}

/// Why the uplink had to connect again (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectCause {
    /// A connect failed: no connection, TLS failed, bad endpoint.
    ConnectFailed,
    /// The collector refused the stream (an error status before it began).
    Refused,
    /// No Welcome within the handshake's time.
    Timeout,
    /// An open stream ended with an error status.
    StreamError,
    /// The collector closed an open stream.
    StreamClosed,
    /// The stream could not take a frame any more.
    SendFailed,
    /// The spool could not be read to send the next batch.
    SpoolError,
}

impl ReconnectCause {
    const ALL: [ReconnectCause; 7] = [
        ReconnectCause::ConnectFailed,
        ReconnectCause::Refused,
        ReconnectCause::Timeout,
        ReconnectCause::StreamError,
        ReconnectCause::StreamClosed,
        ReconnectCause::SendFailed,
        ReconnectCause::SpoolError,
    ];

    fn label(self) -> &'static str {
        match self {
            ReconnectCause::ConnectFailed => "connect_failed",
            ReconnectCause::Refused => "refused",
            ReconnectCause::Timeout => "timeout",
            ReconnectCause::StreamError => "stream_error",
            ReconnectCause::StreamClosed => "stream_closed",
            ReconnectCause::SendFailed => "send_failed",
            ReconnectCause::SpoolError => "spool_error",
        }
    }
}

/// What the uplink reads off its spool for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolSample {
    pub bytes: u64,
    pub segments: usize,
    pub unacked_batches: u64,
    pub last_seq: u64,
    pub first_unacked: Option<u64>,
    /// Unacked batches from before the open stream (all of them without
    /// one) not yet sent on it, and their bytes.
    pub backlog_batches: u64,
    pub backlog_bytes: u64,
}

/// The age of the oldest unacked batch, computed at each scrape from the
/// wall-clock time it was sealed (0 when everything is acked).
#[derive(Debug, Clone, Default)]
struct OldestUnacked {
    /// Wall clock, ns since the Unix epoch; 0 when nothing is unacked.
    sealed_ns: Arc<AtomicI64>,
}

impl TypedMetric for OldestUnacked {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for OldestUnacked {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let sealed = self.sealed_ns.load(Ordering::Relaxed);
        let age = if sealed == 0 {
            0.0
        } else {
            (now_ns().saturating_sub(sealed)).max(0) as f64 / 1e9
        };
        encoder.encode_gauge(&age)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct UplinkMetrics {
    sealed: Counter,
    sent: Counter,
    acked: Counter,
    resent: Counter,
    spool_dropped: Counter,
    /// The uplink's counters as last seen by [`UplinkMetrics::totals`]:
    /// sealed, resent, dropped.
    last_totals: (u64, u64, u64),
    ack_latency: Histogram,
    /// Batches sent and not yet acked: sequence and when it was sent.
    in_flight: BTreeMap<u64, Instant>,
    /// Batches sent by lane: live, backlog.
    lanes: [Counter; 2],
    backlog_batches: Gauge,
    backlog_bytes: Gauge,
    spool_bytes: Gauge,
    spool_segments: Gauge,
    spool_unacked: Gauge,
    acked_unreadable: Gauge,
    oldest: OldestUnacked,
    /// (sequence, wall ns): by that time the spool held sequences up to
    /// that one (noted whenever the uplink's counters change, so at every
    /// seal). Only entries at or above the first unacked are kept: the
    /// front's time is when the oldest unacked batch was sealed, or a
    /// moment after.
    seal_marks: VecDeque<(u64, i64)>,
    states: [Gauge; 3],
    state_now: Option<LinkState>,
    /// A gauge per configured collector URL.
    collectors: Vec<(String, Gauge)>,
    collectors_family: Family<[(&'static str, String); 1], Gauge>,
    /// The index in `collectors` streamed to now.
    current: Option<usize>,
    reconnects: [Counter; 7],
}

impl UplinkMetrics {
    pub(super) fn register(
        registry: &mut Registry,
        collectors: &[String],
        spool_limit_bytes: u64,
    ) -> UplinkMetrics {
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let sealed = counter(registry, "batches_sealed", "Batches sealed into the spool");
        let sent = counter(
            registry,
            "batches_sent",
            "Batches sent to a collector (resends included)",
        );
        let acked = counter(
            registry,
            "batches_acked",
            "Batches this process sent that a collector acknowledged",
        );
        let resent = counter(
            registry,
            "batches_resent",
            "Batches sent again on a later stream or after a restart",
        );
        let spool_dropped = counter(
            registry,
            "spool_dropped_readings",
            "Readings the spool dropped (full under drop_oldest, not writable, or refused by the collector for good), over the spool's life",
        );
        let ack_latency = Histogram::durations();
        registry.register_with_unit(
            "ack_latency",
            "From sending a batch to the collector's ack of it",
            Unit::Seconds,
            ack_latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let g: Gauge = Gauge::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, g.clone()),
                None => registry.register(name, help, g.clone()),
            }
            g
        };
        let spool_bytes = gauge(
            registry,
            "spool",
            "Bytes of the spool's segments on disk",
            Some(Unit::Bytes),
        );
        let spool_limit = gauge(
            registry,
            "spool_limit",
            "The spool's bound ([spool] max_bytes)",
            Some(Unit::Bytes),
        );
        spool_limit.set(i64::try_from(spool_limit_bytes).unwrap_or(i64::MAX));
        let spool_segments = gauge(
            registry,
            "spool_segments",
            "Segment files of the spool",
            None,
        );
        let spool_unacked = gauge(
            registry,
            "spool_unacked_batches",
            "Batches in the spool that no collector has acknowledged",
            None,
        );
        let acked_unreadable = gauge(
            registry,
            "spool_acked_set_unreadable",
            "1 when the spool's ACKED file did not read at this run's start (torn, corrupt, too long; the log says why): already acked batches may be sent again (deduplicated) and drops overcounted",
            None,
        );
        let backlog_batches = gauge(
            registry,
            "uplink_backlog_batches",
            "Unacked batches from before the open stream (all of them while disconnected) not yet sent on it: the backlog still waiting",
            None,
        );
        let backlog_bytes = gauge(
            registry,
            "uplink_backlog",
            "Bytes of the backlog still waiting (see uplink_backlog_batches)",
            Some(Unit::Bytes),
        );
        let lanes_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "uplink_lane_batches_sent",
            "Batches sent by lane: live (sealed while the stream was open) or backlog (unacked from before it)",
            lanes_family.clone(),
        );
        let lanes = ["live", "backlog"].map(|l| lanes_family.get_or_create_owned(&[("lane", l)]));
        let oldest = OldestUnacked::default();
        registry.register_with_unit(
            "spool_oldest_unacked_age",
            "Age of the oldest unacknowledged batch (0 when none; for batches left by an earlier run, counted from this run's start)",
            Unit::Seconds,
            oldest.clone(),
        );
        let states_family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        registry.register(
            "uplink_state",
            "The connection to the collectors: 1 for the state it is in (disconnected, connecting, streaming)",
            states_family.clone(),
        );
        let states =
            LinkState::ALL.map(|s| states_family.get_or_create_owned(&[("state", s.label())]));
        let collectors_family = Family::<[(&'static str, String); 1], Gauge>::default();
        registry.register(
            "uplink_collector",
            "1 for the collector the agent streams to, 0 for the others of its list",
            collectors_family.clone(),
        );
        let collectors = collectors
            .iter()
            .map(|url| {
                let g = collectors_family.get_or_create_owned(&[("url", url.clone())]);
                (url.clone(), g)
            })
            .collect();
        let reconnects_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "uplink_reconnects",
            "Times the uplink had to connect again, by cause",
            reconnects_family.clone(),
        );
        let reconnects = ReconnectCause::ALL
            .map(|c| reconnects_family.get_or_create_owned(&[("cause", c.label())]));
        UplinkMetrics {
            sealed,
            sent,
            acked,
            resent,
            spool_dropped,
            last_totals: (0, 0, 0),
            ack_latency,
            in_flight: BTreeMap::new(),
            lanes,
            backlog_batches,
            backlog_bytes,
            spool_bytes,
            spool_segments,
            spool_unacked,
            acked_unreadable,
            oldest,
            seal_marks: VecDeque::new(),
            states,
            state_now: None,
            collectors,
            collectors_family,
            current: None,
            reconnects,
        }
    }

    /// What opening the spool found: whether its ACKED file was unreadable.
    pub fn set_acked_unreadable(&self, unreadable: bool) {
        self.acked_unreadable.set(i64::from(unreadable));
    }

    /// A reload changed the collector list: a gauge per URL of `urls`,
    /// those of URLs no longer listed removed.
    pub fn set_collectors(&mut self, urls: &[String]) {
        let current = self.current.map(|i| self.collectors[i].0.clone());
        for (url, _) in &self.collectors {
            if !urls.contains(url) {
                self.collectors_family.remove(&[("url", url.clone())]);
            }
        }
        self.collectors = urls
            .iter()
            .map(|url| {
                let g = self
                    .collectors_family
                    .get_or_create_owned(&[("url", url.clone())]);
                (url.clone(), g)
            })
            .collect();
        self.current = current.and_then(|u| self.collectors.iter().position(|(c, _)| *c == u));
    }

    /// The uplink's own counters changed: batches sealed and resent, and
    /// readings the spool dropped, all since their start (the dropped ones
    /// over the spool's life); `last_seq` is the spool's newest sequence.
    pub fn totals(&mut self, sealed: u64, resent: u64, dropped: u64, last_seq: u64) {
        self.mark_sealed(last_seq);
        let (s, r, d) = self.last_totals;
        self.sealed.inc_by(sealed.saturating_sub(s));
        self.resent.inc_by(resent.saturating_sub(r));
        self.spool_dropped.inc_by(dropped.saturating_sub(d));
        self.last_totals = (sealed.max(s), resent.max(r), dropped.max(d));
    }

    /// Batch `seq` went out, `live` or from the backlog (a resend
    /// replaces its earlier sending).
    pub fn sent(&mut self, seq: u64, live: bool) {
        self.in_flight.insert(seq, Instant::now());
        self.sent.inc();
        self.lanes[usize::from(!live)].inc();
    }

    /// Notes that sequences up to `last_seq` are sealed by now.
    fn mark_sealed(&mut self, last_seq: u64) {
        if last_seq > 0
            && self
                .seal_marks
                .back()
                .is_none_or(|(seq, _)| *seq < last_seq)
        {
            let now = now_ns();
            if self.seal_marks.is_empty() {
                self.oldest.sealed_ns.store(now, Ordering::Relaxed);
            }
            self.seal_marks.push_back((last_seq, now));
        }
    }

    /// Forgets the seal marks below `first_unacked` (`None`: everything is
    /// acked) and publishes the oldest remaining one.
    fn forget_sealed_below(&mut self, first_unacked: Option<u64>) {
        let first = first_unacked.unwrap_or(u64::MAX);
        while self.seal_marks.front().is_some_and(|(seq, _)| *seq < first) {
            self.seal_marks.pop_front();
        }
        let sealed = self.seal_marks.front().map_or(0, |&(_, at)| at);
        self.oldest.sealed_ns.store(sealed, Ordering::Relaxed);
    }

    /// The collector has acked `set` (its mark and ranges).
    pub fn acked(&mut self, set: &AckedSet) {
        let mark = set.mark();
        self.forget_sealed_below(Some(mark.saturating_add(1)));
        let now = Instant::now();
        let above = self.in_flight.split_off(&mark.saturating_add(1));
        let below = std::mem::replace(&mut self.in_flight, above);
        let mut answered: Vec<Instant> = below.into_values().collect();
        for &(first, last) in set.ranges() {
            let keys: Vec<u64> = self
                .in_flight
                .range(first..=last)
                .map(|(s, _)| *s)
                .collect();
            answered.extend(keys.iter().filter_map(|s| self.in_flight.remove(s)));
        }
        for at in answered {
            self.acked.inc();
            self.ack_latency
                .observe_duration(now.saturating_duration_since(at));
        }
    }

    /// The uplink had to connect again because of `cause`.
    pub fn reconnect(&mut self, cause: ReconnectCause) {
        self.reconnects[cause as usize].inc();
    }

    /// The connection is in `state`, streaming to `url` if any (cheap when
    /// nothing changed: called after every turn of the uplink).
    pub fn link(&mut self, state: LinkState, url: Option<&str>) {
        if self.state_now != Some(state) {
            if let Some(old) = self.state_now {
                self.states[old as usize].set(0);
            }
            self.states[state as usize].set(1);
            self.state_now = Some(state);
        }
        let current = self.current.map(|i| self.collectors[i].0.as_str());
        if current != url {
            if let Some(i) = self.current {
                self.collectors[i].1.set(0);
            }
            self.current = url.and_then(|u| self.collectors.iter().position(|(c, _)| c == u));
            if let Some(i) = self.current {
                self.collectors[i].1.set(1);
            }
        }
    }

    /// The spool's size and position now.
    pub fn spool(&mut self, s: SpoolSample) {
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.spool_bytes, s.bytes);
        gauge(&self.spool_segments, s.segments as u64);
        gauge(&self.spool_unacked, s.unacked_batches);
        gauge(&self.backlog_batches, s.backlog_batches);
        gauge(&self.backlog_bytes, s.backlog_bytes);
        // Batches below the first unacked one that are still here were
        // dropped, never acked.
        let first = s.first_unacked.unwrap_or(u64::MAX);
        while self
            .in_flight
            .first_key_value()
            .is_some_and(|(seq, _)| *seq < first)
        {
            self.in_flight.pop_first();
        }
        self.mark_sealed(s.last_seq);
        self.forget_sealed_below(s.first_unacked);
    }
}
