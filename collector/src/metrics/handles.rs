//! The metrics their owners update as things happen: the sessions
//! ([`IngestMetrics`]), the merger ([`MergerMetrics`]) and the Query
//! service ([`QueryMetrics`]). Every update is a relaxed atomic add (a
//! `prometheus-client` counter or gauge, or the lock-free
//! [`Histogram`] of `tributary-process`); labelled ones are created once,
//! here, for their fixed set of label values, and kept in arrays, so no
//! update takes the lock of a `Family`. Nothing here is updated per
//! reading: per batch, per group, per step, per stream or per request.

use std::time::{Duration, Instant};

use tributary_process::metrics::Histogram;
use tributary_process::metrics::prometheus_client::metrics::counter::Counter;
use tributary_process::metrics::prometheus_client::metrics::family::Family;
use tributary_process::metrics::prometheus_client::metrics::gauge::Gauge;
use tributary_process::metrics::prometheus_client::registry::{Registry, Unit};

/// A label set of one fixed label.
type Label = [(&'static str, &'static str); 1];

/// One counter per value of a fixed label, registered as one family.
fn labelled_counters<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<Label, Counter>::default();
    let counters = values.map(|v| family.get_or_create_owned(&[(label, v)]));
    registry.register(name, help, family);
    counters
}

/// Why the collector refused or ended an agent's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The certificate does not allow streaming as that agent id (another
    /// identity, an operator's, none, or unusable).
    Identity,
    /// The agent id is not on `allowed_agents`.
    Allowlist,
    /// New series would take the agent past `max_series_per_agent`.
    SeriesLimit,
    /// A batch would take its epoch past `MAX_COMMITTED_RANGES` ranges.
    RangeLimit,
    /// A frame broke the protocol or a `[limits]` size (INVALID_ARGUMENT).
    InvalidFrame,
    /// No Hello within `hello_timeout`.
    HelloTimeout,
}

impl StreamRefusal {
    const ALL: [StreamRefusal; 6] = [
        StreamRefusal::Identity,
        StreamRefusal::Allowlist,
        StreamRefusal::SeriesLimit,
        StreamRefusal::RangeLimit,
        StreamRefusal::InvalidFrame,
        StreamRefusal::HelloTimeout,
    ];

    fn name(self) -> &'static str {
        match self {
            StreamRefusal::Identity => "identity",
            StreamRefusal::Allowlist => "allowlist",
            StreamRefusal::SeriesLimit => "series_limit",
            StreamRefusal::RangeLimit => "range_limit",
            StreamRefusal::InvalidFrame => "invalid_frame",
            StreamRefusal::HelloTimeout => "hello_timeout",
        }
    }
}

/// What the sessions count.
#[derive(Debug)]
pub struct IngestMetrics {
    /// Streams welcomed (a Hello accepted).
    pub streams_opened: Counter,
    /// Streams welcomed and not yet ended.
    pub streams_open: Gauge,
    refused: [Counter; StreamRefusal::ALL.len()],
}

impl IngestMetrics {
    fn new(registry: &mut Registry) -> Self {
        let streams_opened = Counter::default();
        let streams_open = Gauge::default();
        registry.register(
            "tributary_collector_streams_opened",
            "Agent streams welcomed (their Hello accepted)",
            streams_opened.clone(),
        );
        registry.register(
            "tributary_collector_streams_open",
            "Agent streams open now (welcomed, not ended)",
            streams_open.clone(),
        );
        let refused = labelled_counters(
            registry,
            "tributary_collector_streams_refused",
            "Agent streams refused or ended by the collector, by reason (TLS refusals are connections_refused)",
            "reason",
            StreamRefusal::ALL.map(StreamRefusal::name),
        );
        IngestMetrics {
            streams_opened,
            streams_open,
            refused,
        }
    }

    /// Counts one stream refused for `reason`.
    pub fn refused(&self, reason: StreamRefusal) {
        self.refused[reason as usize].inc();
    }
}

/// A store operation of the merger, for `store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Commit,
    LookupSeries,
    ResolveSeries,
    ReadEpoch,
    SeriesByIds,
    Compact,
    Retain,
}

impl StoreOp {
    const ALL: [StoreOp; 7] = [
        StoreOp::Commit,
        StoreOp::LookupSeries,
        StoreOp::ResolveSeries,
        StoreOp::ReadEpoch,
        StoreOp::SeriesByIds,
        StoreOp::Compact,
        StoreOp::Retain,
    ];

    /// The label value, and how the merger's log lines name it.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Commit => "commit",
            StoreOp::LookupSeries => "lookup_series",
            StoreOp::ResolveSeries => "resolve_series",
            StoreOp::ReadEpoch => "read_epoch",
            StoreOp::SeriesByIds => "series_by_ids",
            StoreOp::Compact => "compact",
            StoreOp::Retain => "retain",
        }
    }
}

/// Bounds of the group-size histogram in batches.
const GROUP_BATCHES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Bounds of the group-size histogram in readings (a group stops taking
/// batches at 100,000 readings).
const GROUP_READINGS: &[f64] = &[
    1.0, 10.0, 100.0, 1_000.0, 8_192.0, 16_384.0, 32_768.0, 65_536.0, 100_000.0, 131_072.0,
];

/// What the merger counts: per group, per upkeep step, per store error.
#[derive(Debug)]
pub struct MergerMetrics {
    /// Group commits that wrote something.
    pub commits: Counter,
    /// Time of a group's commit (with the retries of a failing store).
    pub commit_duration: Histogram,
    /// Batches and readings per committed group.
    pub group_batches: Histogram,
    pub group_readings: Histogram,
    store_errors: [Counter; StoreOp::ALL.len()],
    /// 1 while the merger retries a commit or a series resolve that the
    /// store refused (nothing is acked meanwhile).
    pub store_retrying: Gauge,
    pub compaction_steps: Counter,
    pub compaction_points: Counter,
    /// Points rewritten by merging small chunks (size tiers).
    pub compaction_merged_points: Counter,
    pub compaction_rounds: Counter,
    pub retention_passes: Counter,
    pub retention_removed: Counter,
}

impl MergerMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = MergerMetrics {
            commits: Counter::default(),
            commit_duration: Histogram::durations(),
            group_batches: Histogram::new(GROUP_BATCHES),
            group_readings: Histogram::new(GROUP_READINGS),
            store_errors: labelled_counters(
                registry,
                "tributary_collector_store_errors",
                "Store operations of the merger that failed, by operation (a failed commit or series resolve is retried until it succeeds)",
                "operation",
                StoreOp::ALL.map(StoreOp::name),
            ),
            store_retrying: Gauge::default(),
            compaction_steps: Counter::default(),
            compaction_points: Counter::default(),
            compaction_merged_points: Counter::default(),
            compaction_rounds: Counter::default(),
            retention_passes: Counter::default(),
            retention_removed: Counter::default(),
        };
        registry.register(
            "tributary_collector_commits",
            "Group commits of the merger that wrote to the store",
            m.commits.clone(),
        );
        registry.register_with_unit(
            "tributary_collector_commit_duration",
            "Time of one group commit, retries included",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        registry.register(
            "tributary_collector_commit_group_batches",
            "Batches written by one group commit",
            m.group_batches.clone(),
        );
        registry.register(
            "tributary_collector_commit_group_readings",
            "Readings written by one group commit",
            m.group_readings.clone(),
        );
        registry.register(
            "tributary_collector_store_retrying",
            "1 while the merger retries a commit or series resolve the store refused (nothing is acked meanwhile)",
            m.store_retrying.clone(),
        );
        registry.register(
            "tributary_collector_compaction_steps",
            "Compaction steps run by the merger (SQLite: head rows into per-series chunks)",
            m.compaction_steps.clone(),
        );
        registry.register(
            "tributary_collector_compaction_points",
            "Points moved from the head into chunks by compaction",
            m.compaction_points.clone(),
        );
        registry.register(
            "tributary_collector_compaction_merged_points",
            "Points rewritten by compaction when it merges a series' small chunks into larger ones",
            m.compaction_merged_points.clone(),
        );
        registry.register(
            "tributary_collector_compaction_rounds",
            "Compaction rounds finished",
            m.compaction_rounds.clone(),
        );
        registry.register(
            "tributary_collector_retention_passes",
            "Retention passes finished",
            m.retention_passes.clone(),
        );
        registry.register(
            "tributary_collector_retention_removed",
            "Readings removed by retention (TimescaleDB: chunks)",
            m.retention_removed.clone(),
        );
        m
    }

    /// Counts one failure of `op`.
    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].inc();
    }

    /// A group of `batches` and `readings` committed in `took`.
    pub fn committed(&self, batches: usize, readings: usize, took: Duration) {
        self.commits.inc();
        self.commit_duration.observe_duration(took);
        self.group_batches.observe(batches as f64);
        self.group_readings.observe(readings as f64);
    }
}

/// An RPC of the Query service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    ListAgents,
    ListSeries,
    Latest,
    Range,
    Tail,
    ListExports,
}

impl Rpc {
    const ALL: [Rpc; 6] = [
        Rpc::ListAgents,
        Rpc::ListSeries,
        Rpc::Latest,
        Rpc::Range,
        Rpc::Tail,
        Rpc::ListExports,
    ];

    fn name(self) -> &'static str {
        match self {
            Rpc::ListAgents => "ListAgents",
            Rpc::ListSeries => "ListSeries",
            Rpc::Latest => "Latest",
            Rpc::Range => "Range",
            Rpc::Tail => "Tail",
            Rpc::ListExports => "ListExports",
        }
    }
}

/// What the Query service counts, per RPC.
#[derive(Debug)]
pub struct QueryMetrics {
    requests: [Counter; Rpc::ALL.len()],
    errors: [Counter; Rpc::ALL.len()],
    duration: [Histogram; Rpc::ALL.len()],
}

impl QueryMetrics {
    fn new(registry: &mut Registry) -> Self {
        let names = Rpc::ALL.map(Rpc::name);
        let requests = labelled_counters(
            registry,
            "tributary_collector_queries",
            "Query RPCs received, by RPC",
            "rpc",
            names,
        );
        let errors = labelled_counters(
            registry,
            "tributary_collector_query_errors",
            "Query RPCs that ended with an error status, by RPC (refusals included)",
            "rpc",
            names,
        );
        let family = Family::<Label, Histogram, fn() -> Histogram>::new_with_constructor(
            Histogram::durations,
        );
        let duration = names.map(|rpc| family.get_or_create_owned(&[("rpc", rpc)]));
        registry.register_with_unit(
            "tributary_collector_query_duration",
            "Time to answer a Query RPC, by RPC (Range: until its last chunk is sent; Tail is not timed)",
            Unit::Seconds,
            family,
        );
        QueryMetrics {
            requests,
            errors,
            duration,
        }
    }

    /// Counts a request of `rpc`; [`QueryTimer::finish`] times it.
    pub fn start(&self, rpc: Rpc) -> QueryTimer {
        self.requests[rpc as usize].inc();
        QueryTimer {
            rpc,
            start: Instant::now(),
        }
    }

    /// `rpc` ended: its time since `timer` started, and whether it failed.
    pub fn finish(&self, timer: QueryTimer, ok: bool) {
        let i = timer.rpc as usize;
        if !ok {
            self.errors[i].inc();
        }
        if timer.rpc != Rpc::Tail {
            self.duration[i].observe_duration(timer.start.elapsed());
        }
    }
}

/// A request under way (see [`QueryMetrics::start`]).
#[derive(Debug)]
#[must_use = "finish it with QueryMetrics::finish"]
pub struct QueryTimer {
    rpc: Rpc,
    start: Instant,
}

/// Handles registered nowhere (a part built without the server's metrics,
/// as in tests, counts into these).
macro_rules! unregistered_default {
    ($($t:ident),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                $t::new(&mut Registry::default())
            }
        }
    )*};
}
unregistered_default!(IngestMetrics, MergerMetrics, QueryMetrics);

/// Every handle, registered in one registry.
pub(super) fn new(registry: &mut Registry) -> (IngestMetrics, MergerMetrics, QueryMetrics) {
    (
        IngestMetrics::new(registry),
        MergerMetrics::new(registry),
        QueryMetrics::new(registry),
    )
}

/// Why the HTTP listener refused a connection or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// A TLS handshake failed.
    TlsHandshakeFailed,
    /// A TLS handshake did not finish within `handshake_timeout`.
    TlsHandshakeTimeout,
    /// A fleet event stream was refused: every slot was taken (503).
    EventStreamsFull,
}

impl HttpRefusal {
    const ALL: [HttpRefusal; 3] = [
        HttpRefusal::TlsHandshakeFailed,
        HttpRefusal::TlsHandshakeTimeout,
        HttpRefusal::EventStreamsFull,
    ];

    fn name(self) -> &'static str {
        match self {
            HttpRefusal::TlsHandshakeFailed => "tls_handshake_failed",
            HttpRefusal::TlsHandshakeTimeout => "tls_handshake_timeout",
            HttpRefusal::EventStreamsFull => "event_streams_full",
        }
    }
}

/// What the HTTP listener and its routes count.
#[derive(Debug)]
pub struct HttpMetrics {
    refused: [Counter; HttpRefusal::ALL.len()],
}

impl HttpMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        HttpMetrics {
            refused: labelled_counters(
                registry,
                "tributary_collector_http_refused",
                "Connections and requests the HTTP listener refused, by reason (fleet event streams over their cap, TLS handshakes)",
                "reason",
                HttpRefusal::ALL.map(HttpRefusal::name),
            ),
        }
    }

    /// Counts one refusal for `reason`.
    pub fn refused(&self, reason: HttpRefusal) {
        self.refused[reason as usize].inc();
    }

    /// The refusals counted for `reason`.
    pub fn refusals(&self, reason: HttpRefusal) -> u64 {
        self.refused[reason as usize].get()
    }
}

unregistered_default!(HttpMetrics);
