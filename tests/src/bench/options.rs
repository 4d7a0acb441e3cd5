//! The command line: scenarios and flags, parsed and validated before
//! anything runs. Sizes left unset take each scenario's default (the
//! issue's numbers), or its tiny smoke size under `smoke`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tributary_config::parse_duration_arg;

pub const USAGE: &str = "usage: tributary-bench <SCENARIO>... [FLAGS]

scenarios:
  ingest          N load agents stream to a collector process; SQLite ceiling in the same run;
                  ack latency at a fixed rate; Query/Range of one day of one series
  poll            one agent process polls K HTTP simulators at a fixed interval
  streams         M concurrent idle-then-active streams on one collector
  wire            bytes on the wire per reading, counted at the socket
  vs-prometheus   agent + collector vs Prometheus scraping the same targets
  config          the agent loads K devices: a flat file vs a CSV inventory + template + includes
  promql          the Prometheus HTTP API vs Prometheus on the same data: the PromQL corpus,
                  sum by (device) (rate(m[5m])), ingest with and without queries
  export          remote_write to VictoriaMetrics and nats to JetStream: ingest with and without
                  each and both, export and catch-up rates, lag p99 of both at a fixed rate
  metrics-cost    the agent's metrics in instructions (callgrind): metrics off and on side by
                  side, 100 devices at 1 s and at 10 s intervals, scraped every 15 s (valgrind)
  snmp            one agent walks a 48 x 10 ifXTable on --devices through one snmpd, against
                  net-snmp's snmpbulkwalk CPU per varbind on the same walk; SNMPv2c trap ingest
                  at rising rates, traps stored per agent CPU-second
  recovery        agents of sim devices at --rate readings/s; the collector down for --outage, then
                  back: drain time, staleness of live data during the drain, collector CPU
  all             every scenario above but export and recovery, in that order
  smoke           every scenario but promql and export at tiny sizes (recovery: a 5 s outage);
                  exit 1 if any numbers disagree

flags (defaults are per scenario; see BENCHMARKS.md):
  --json                one JSON object per scenario instead of a table
  --duration D          measured time per run (e.g. 10s, 500ms); vs-prometheus reports windows of 5 min or
                        more also minute by minute
  --runs N              repetitions; every number is the median over runs
  --agents N            ingest: load agents                   (100)
  --series N            ingest: series per agent (100); wire: gauges per sim device (100)
  --batch N             ingest: readings per batch            (1000)
  --window N            ingest: unacked batches per agent     (4)
  --rate N              ingest: readings/s of the latency run (100000); snmp: top trap rate (40000)
  --ceiling-rows N      ingest: rows of the SQLite ceiling    (5000000)
  --range-points N      ingest: points of the Query/Range day series (86400)
  --store URL           ingest: postgres://USER@HOST/DB stores in PostgreSQL (a fresh schema per run), measured
                        against a binary-COPY ceiling in the same database, then with two collectors (sqlite)
  --devices K           poll: HTTP devices (10000); wire: sim devices (10); config: devices (10000);
                        metrics-cost: HTTP devices (100); snmp: SNMP devices (50)
  --targets K           vs-prometheus: HTTP targets           (2000)
  --samples N           vs-prometheus: samples per scrape     (105)
  --interval D          poll, vs-prometheus: poll interval    (1s); metrics-cost: one interval (1s and 10s);
                        snmp: walk interval (10s)
  --delay D             poll, metrics-cost: device answer delay (20ms); vs-prometheus (0ms)
  --format F            poll: json or prometheus              (json)
  --streams M           streams: concurrent streams           (10000)
  --max-connections N   streams: the collector's [limits] max_connections (its default)
  --prometheus PATH     vs-prometheus, promql: the prometheus binary (found on PATH)
  --query-series N      promql: counters `m` of the heavy query (10000)
  --hours N             promql: hours of `m` at a 15 s step   (6)
  --reps N              promql: repetitions of each query     (5); snmp: snmpbulkwalk runs of each kind (100)
  --corpus-only         promql: the corpus only (no heavy query, no ingest phases)
  --pairs N             promql: pairs of ingest phases of --duration, without and with the heavy query in a
                        loop, the order alternating (4); with --baseline, each pair on both collectors in turn
  --outage D            recovery: how long the collector is down (5m)
  --heavy-only          promql: only the heavy query (no corpus, no ingest phases), after one unmeasured ask per side
  --baseline DIR        promql: also ask the heavy query of DIR/tributary-collector (another build) on a copy of
                        the same store, in turn with the two others, and run the ingest pairs on it too
                        (before/after in one run)
  --only nats           export: only the phases without an export and with nats alone
  --only metrics-off    vs-prometheus: only Tributary's runs with metrics off (no metrics_cpu_ratio)
  --keep                keep the work directories under target/bench/";

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Ingest,
    Poll,
    Streams,
    Wire,
    VsPrometheus,
    Config,
    Export,
    Promql,
    MetricsCost,
    Snmp,
    Recovery,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Ingest,
        Scenario::Poll,
        Scenario::Streams,
        Scenario::Wire,
        Scenario::VsPrometheus,
        Scenario::Config,
        Scenario::Snmp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ingest => "ingest",
            Scenario::Poll => "poll",
            Scenario::Streams => "streams",
            Scenario::Wire => "wire",
            Scenario::VsPrometheus => "vs-prometheus",
            Scenario::Config => "config",
            Scenario::Export => "export",
            Scenario::Promql => "promql",
            Scenario::MetricsCost => "metrics-cost",
            Scenario::Snmp => "snmp",
            Scenario::Recovery => "recovery",
        }
    }
}

/// HTTP body format the poll scenario's devices serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Prometheus,
}

/// The validated command line.
#[derive(Debug, Default)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    pub smoke: bool,
    pub json: bool,
    pub keep: bool,
    pub heavy_only: bool,
    pub baseline: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub runs: Option<usize>,
    pub agents: Option<usize>,
    pub series: Option<usize>,
    pub batch: Option<usize>,
    pub window: Option<usize>,
    pub rate: Option<u64>,
    pub ceiling_rows: Option<u64>,
    pub range_points: Option<u64>,
    pub devices: Option<usize>,
    pub targets: Option<usize>,
    pub samples: Option<usize>,
    pub interval: Option<Duration>,
    pub delay: Option<Duration>,
    pub format: Option<Format>,
    pub streams: Option<usize>,
    pub max_connections: Option<usize>,
    pub prometheus: Option<PathBuf>,
    pub query_series: Option<usize>,
    pub hours: Option<usize>,
    pub reps: Option<usize>,
    pub corpus_only: bool,
    /// `--pairs`: promql's pairs of ingest phases.
    pub pairs: Option<usize>,
    /// `--store`: a PostgreSQL URL (ingest); SQLite when unset.
    pub store: Option<String>,
    /// `--outage`: recovery's collector downtime.
    pub outage: Option<Duration>,
    /// export: only the phases without an export and with nats.
    pub only_nats: bool,
    /// vs-prometheus: only Tributary's legs with metrics off (no
    /// `metrics_cpu_ratio`), for long windows.
    pub only_metrics_off: bool,
}

impl Options {
    /// `Ok(None)` for `--help`.
    pub fn parse(mut raw: impl Iterator<Item = String>) -> Result<Option<Options>> {
        let mut o = Options::default();
        while let Some(arg) = raw.next() {
            let mut value =
                |flag: &str| raw.next().with_context(|| format!("{flag} needs a value"));
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "ingest" => o.scenarios.push(Scenario::Ingest),
                "poll" => o.scenarios.push(Scenario::Poll),
                "streams" => o.scenarios.push(Scenario::Streams),
                "wire" => o.scenarios.push(Scenario::Wire),
                "vs-prometheus" => o.scenarios.push(Scenario::VsPrometheus),
                "config" => o.scenarios.push(Scenario::Config),
                "export" => o.scenarios.push(Scenario::Export),
                "promql" => o.scenarios.push(Scenario::Promql),
                "metrics-cost" => o.scenarios.push(Scenario::MetricsCost),
                "snmp" => o.scenarios.push(Scenario::Snmp),
                "recovery" => o.scenarios.push(Scenario::Recovery),
                "all" => {
                    o.scenarios.extend(Scenario::ALL);
                    o.scenarios.push(Scenario::Promql);
                }
                "smoke" => {
                    o.smoke = true;
                    o.scenarios.extend(Scenario::ALL);
                    o.scenarios.push(Scenario::Recovery);
                }
                "--json" => o.json = true,
                "--keep" => o.keep = true,
                "--corpus-only" => o.corpus_only = true,
                "--heavy-only" => o.heavy_only = true,
                "--baseline" => o.baseline = Some(PathBuf::from(value(&arg)?)),
                "--duration" => o.duration = Some(duration(&arg, &value(&arg)?)?),
                "--outage" => o.outage = Some(duration(&arg, &value(&arg)?)?),
                "--interval" => o.interval = Some(duration(&arg, &value(&arg)?)?),
                "--delay" => o.delay = Some(duration(&arg, &value(&arg)?)?),
                "--runs" => o.runs = Some(positive(&arg, &value(&arg)?)?),
                "--agents" => o.agents = Some(positive(&arg, &value(&arg)?)?),
                "--series" => o.series = Some(positive(&arg, &value(&arg)?)?),
                "--batch" => o.batch = Some(positive(&arg, &value(&arg)?)?),
                "--window" => o.window = Some(positive(&arg, &value(&arg)?)?),
                "--rate" => o.rate = Some(positive(&arg, &value(&arg)?)? as u64),
                "--ceiling-rows" => o.ceiling_rows = Some(positive(&arg, &value(&arg)?)? as u64),
                "--range-points" => o.range_points = Some(positive(&arg, &value(&arg)?)? as u64),
                "--devices" => o.devices = Some(positive(&arg, &value(&arg)?)?),
                "--targets" => o.targets = Some(positive(&arg, &value(&arg)?)?),
                "--samples" => o.samples = Some(positive(&arg, &value(&arg)?)?),
                "--streams" => o.streams = Some(positive(&arg, &value(&arg)?)?),
                "--max-connections" => {
                    o.max_connections = Some(positive(&arg, &value(&arg)?)?);
                }
                "--query-series" => o.query_series = Some(positive(&arg, &value(&arg)?)?),
                "--hours" => o.hours = Some(positive(&arg, &value(&arg)?)?),
                "--reps" => o.reps = Some(positive(&arg, &value(&arg)?)?),
                "--pairs" => o.pairs = Some(positive(&arg, &value(&arg)?)?),
                "--prometheus" => o.prometheus = Some(PathBuf::from(value(&arg)?)),
                "--store" => {
                    let url = value(&arg)?;
                    if url.starts_with("sqlite") {
                        o.store = None;
                    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                        url.parse::<tokio_postgres::Config>()
                            .with_context(|| format!("--store {url:?}: not a PostgreSQL URL"))?;
                        o.store = Some(url);
                    } else {
                        bail!("--store {url:?}: expected postgres://USER@HOST/DB or sqlite");
                    }
                }
                "--only" => match value(&arg)?.as_str() {
                    "nats" => o.only_nats = true,
                    "metrics-off" => o.only_metrics_off = true,
                    other => bail!("--only {other:?}: expected nats or metrics-off"),
                },
                "--format" => {
                    o.format = Some(match value(&arg)?.as_str() {
                        "json" => Format::Json,
                        "prometheus" => Format::Prometheus,
                        other => bail!("--format {other:?}: expected json or prometheus"),
                    })
                }
                other => bail!("unknown argument {other:?}"),
            }
        }
        if o.scenarios.is_empty() {
            bail!("no scenario given");
        }
        let mut seen = Vec::new();
        o.scenarios.retain(|s| {
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        Ok(Some(o))
    }

    /// `full` normally, `smoke` under `smoke`.
    pub fn size<T>(&self, full: T, smoke: T) -> T {
        if self.smoke { smoke } else { full }
    }

    /// Repetitions: `--runs`, else 3 (1 under `smoke`).
    pub fn runs(&self) -> usize {
        self.runs.unwrap_or(self.size(3, 1))
    }
}

fn positive(flag: &str, text: &str) -> Result<usize> {
    let n: usize = text
        .replace(['_', ','], "")
        .parse()
        .with_context(|| format!("{flag} {text:?}: not a number"))?;
    if n == 0 {
        bail!("{flag}: must be at least 1");
    }
    Ok(n)
}

/// A positive duration: `20s`, `1500ms`, `2m`, plain seconds or a fraction
/// (`tributary_config::parse_duration_arg`, the parser every Tributary flag uses).
pub fn duration(flag: &str, text: &str) -> Result<Duration> {
    let d = parse_duration_arg(text).with_context(|| flag.to_owned())?;
    if d.is_zero() {
        bail!("{flag}: must be more than zero");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        Options::parse(args.iter().map(|s| s.to_string()))?.context("help")
    }

    #[test]
    fn scenarios_and_flags_parse() -> Result<()> {
        let o = parse(&[
            "ingest",
            "wire",
            "--duration",
            "500ms",
            "--agents",
            "10",
            "--json",
        ])?;
        assert_eq!(o.scenarios, vec![Scenario::Ingest, Scenario::Wire]);
        assert_eq!(o.duration, Some(Duration::from_millis(500)));
        assert_eq!(o.agents, Some(10));
        assert!(o.json);
        let all = parse(&["all", "ingest"])?;
        let mut every = Scenario::ALL.to_vec();
        every.push(Scenario::Promql);
        assert_eq!(all.scenarios, every);
        assert!(parse(&[]).is_err());
        assert!(parse(&["ingest", "--agents", "0"]).is_err());
        assert!(parse(&["ingest", "--duration", "5x"]).is_err());
        assert!(parse(&["nope"]).is_err());
        assert!(parse(&["ingest", "--store", "mysql://x"]).is_err());
        let pg = parse(&["ingest", "--store", "postgres://root@127.0.0.1:5432/test"])?;
        assert_eq!(
            pg.store.as_deref(),
            Some("postgres://root@127.0.0.1:5432/test")
        );
        let off = parse(&["vs-prometheus", "--only", "metrics-off"])?;
        assert!(off.only_metrics_off && !off.only_nats);
        assert!(!parse(&["vs-prometheus"])?.only_metrics_off);
        assert!(parse(&["vs-prometheus", "--only", "metrics"]).is_err());
        Ok(())
    }
}
