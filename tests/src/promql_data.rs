//! The data set of the PromQL differential test: a few hundred series
//! (counters with resets, integer and float gauges, gaps longer than the
//! lookback delta, booleans, a classic histogram with `_bucket` series and
//! `le` labels), generated deterministically at fixed historical times,
//! and written two ways: as OpenMetrics text for `promtool tsdb
//! create-blocks-from openmetrics`, and into a collector through Ingest.
//!
//! Names are chosen so that `prom_labels` maps every series to the same
//! label set as the OpenMetrics line: `__name__` = metric, `agent`,
//! `device`, and labels that need no renaming.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tributary_proto::v1 as pb;

/// The first sample's time (Unix seconds): 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000;
/// Seconds between samples of a series.
pub const INTERVAL: i64 = 15;
/// Samples per series (two hours).
pub const SAMPLES: i64 = 480;

/// One sample value as it is ingested.
#[derive(Debug, Clone, Copy)]
pub enum Val {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Val {
    fn text(self) -> String {
        match self {
            Val::Int(v) => v.to_string(),
            Val::Float(v) => format!("{v:?}"),
            Val::Bool(b) => u8::from(b).to_string(),
        }
    }
}

/// One generated series.
#[derive(Debug, Clone)]
pub struct GenSeries {
    pub metric: String,
    pub agent: String,
    pub device: String,
    pub labels: Vec<(String, String)>,
    /// `(unix ms, value)`, ascending.
    pub points: Vec<(i64, Val)>,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const AGENTS: [&str; 2] = ["edge-1", "edge-2"];
const DEVICES: usize = 10;
const BUCKETS: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];

/// The whole data set.
pub fn generate() -> Vec<GenSeries> {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut out = Vec::new();
    for agent in AGENTS {
        for d in 0..DEVICES {
            let device = format!("d{d:02}");
            // Each device samples at its own phase within the interval.
            let phase = (d as i64 * 1500 + if agent == "edge-2" { 700 } else { 0 }) % 15_000;
            let times = |skip: &dyn Fn(i64) -> bool| -> Vec<i64> {
                (0..SAMPLES)
                    .filter(|i| !skip(*i))
                    .map(|i| (T0 + i * INTERVAL) * 1000 + phase)
                    .collect()
            };
            let mk = |metric: &str, labels: &[(&str, &str)], points: Vec<(i64, Val)>| GenSeries {
                metric: metric.into(),
                agent: agent.into(),
                device: device.clone(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                points,
            };
            for (code, max_inc) in [("200", 20), ("500", 3)] {
                let mut v = rng.below(1000) as i64;
                let points = times(&|_| false)
                    .into_iter()
                    .map(|t| {
                        if rng.below(100) == 0 {
                            v = rng.below(5) as i64;
                        } else {
                            v += rng.below(max_inc + 1) as i64;
                        }
                        (t, Val::Int(v))
                    })
                    .collect();
                out.push(mk("tr_requests_total", &[("code", code)], points));
            }
            // Gauges; two devices stop reporting for 15 minutes.
            let gap = move |i: i64| (d == 3 || d == 7) && (100..160).contains(&i);
            let base = 15.0 + d as f64;
            let points = times(&gap)
                .into_iter()
                .map(|t| {
                    let x = (t / 1000 - T0) as f64 / 600.0;
                    (t, Val::Float(base + 5.0 * x.sin() + rng.unit() - 0.5))
                })
                .collect();
            out.push(mk("tr_temp_celsius", &[], points));
            let mut mem: i64 = 1_000_000_000 + rng.below(1_000_000) as i64;
            let points = times(&|i| d == 5 && i >= 400)
                .into_iter()
                .map(|t| {
                    mem += rng.below(2_000_001) as i64 - 1_000_000;
                    (t, Val::Int(mem))
                })
                .collect();
            out.push(mk("tr_mem_bytes", &[], points));
            let mut errors = 0i64;
            let points = times(&|_| false)
                .into_iter()
                .map(|t| {
                    if rng.below(150) == 0 {
                        errors = 0;
                    } else if rng.below(10) == 0 {
                        errors += 1 + rng.below(3) as i64;
                    }
                    (t, Val::Int(errors))
                })
                .collect();
            out.push(mk("tr_errors_total", &[], points));
            let points = times(&|_| false)
                .into_iter()
                .map(|t| (t, Val::Bool(rng.below(20) != 0)))
                .collect();
            out.push(mk("tr_up", &[], points));
            // A classic histogram: cumulative buckets, count and sum.
            let mut counts = [0i64; 6];
            let mut sum = 0.0;
            let mut bucket_points: Vec<Vec<(i64, Val)>> = vec![Vec::new(); 6];
            let mut count_points = Vec::new();
            let mut sum_points = Vec::new();
            for t in times(&|_| false) {
                for _ in 0..rng.below(8) {
                    let obs = rng.unit() * rng.unit() * 1.5;
                    sum += obs;
                    for (i, le) in BUCKETS.iter().enumerate() {
                        let bound: f64 = if *le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::INFINITY)
                        };
                        if obs <= bound {
                            counts[i] += 1;
                        }
                    }
                }
                for i in 0..6 {
                    bucket_points[i].push((t, Val::Int(counts[i])));
                }
                count_points.push((t, Val::Int(counts[5])));
                sum_points.push((t, Val::Float(sum)));
            }
            for (i, points) in bucket_points.into_iter().enumerate() {
                out.push(mk(
                    "tr_latency_seconds_bucket",
                    &[("le", BUCKETS[i])],
                    points,
                ));
            }
            out.push(mk("tr_latency_seconds_count", &[], count_points));
            out.push(mk("tr_latency_seconds_sum", &[], sum_points));
        }
    }
    out.extend(probes());
    out
}

/// A label value with every character Prometheus's JSON writes in a way of
/// its own: control characters (backspace and form feed among them), DEL,
/// `<` `>` `&`, U+2028 and U+2029, quotes, backslashes, a newline, a tab
/// and multi-byte characters.
pub const AWKWARD_LABEL: &str =
    "a\u{1}b\u{8}c\u{c}d\u{1f}e\u{7f}f<g>&h\u{2028}i\u{2029}j\"k\\l\tm\nn \u{e9}\u{20ac}\u{1f600}";

/// Series of agent `probe` (so that the other agents' counts stay as they
/// are), on devices `d00`.. (so that the device values do too):
///
/// - `tr_cancel`, three series whose values cancel in label order
///   (1e100, a small number, -1e100): Prometheus 2.42's `sum` adds plainly
///   and answers 0 where a compensated sum answers the small number; its
///   `avg` keeps a plain incremental mean;
/// - `tr_cancel_cycle`, one series cycling through those values, for the
///   compensated `*_over_time` functions;
/// - `tr_label_probe`, one series with [`AWKWARD_LABEL`] as a label value,
///   for the bytes of the JSON answers.
fn probes() -> Vec<GenSeries> {
    let times: Vec<i64> = (0..SAMPLES).map(|i| (T0 + i * INTERVAL) * 1000).collect();
    let mk = |metric: &str, device: &str, labels: &[(&str, &str)], value: &dyn Fn(i64) -> f64| {
        GenSeries {
            metric: metric.into(),
            agent: "probe".into(),
            device: device.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            points: times
                .iter()
                .enumerate()
                .map(|(i, &t)| (t, Val::Float(value(i as i64))))
                .collect(),
        }
    };
    let small = |i: i64| 1.0 + (i % 7) as f64 / 8.0;
    vec![
        mk("tr_cancel", "d00", &[], &|_| 1e100),
        mk("tr_cancel", "d01", &[], &small),
        mk("tr_cancel", "d02", &[], &|_| -1e100),
        mk("tr_cancel_cycle", "d00", &[], &|i| match i % 3 {
            0 => 1e100,
            1 => small(i),
            _ => -1e100,
        }),
        mk("tr_label_probe", "d00", &[("text", AWKWARD_LABEL)], &|_| {
            1.0
        }),
    ]
}

/// `n` counters named `m` over `samples` samples at [`INTERVAL`] from
/// `start` (Unix seconds), for the PromQL benchmark: `agents` agents,
/// each with `devices` devices, each device with as many series as it
/// takes (label `core`), every series at its own phase, with a rare
/// counter reset.
pub fn counters(
    n: usize,
    agents: usize,
    devices: usize,
    start: i64,
    samples: i64,
) -> Vec<GenSeries> {
    let mut rng = Rng(0x5EED_BE4C_0000_0002);
    let agents = agents.max(1);
    let devices = devices.max(1);
    (0..n)
        .map(|i| {
            let phase = (i as i64 * 7919) % (INTERVAL * 1000);
            let mut v = rng.below(1_000) as i64;
            let points = (0..samples)
                .map(|k| {
                    if rng.below(500) == 0 {
                        v = 0;
                    } else {
                        v += rng.below(100) as i64;
                    }
                    ((start + k * INTERVAL) * 1000 + phase, Val::Int(v))
                })
                .collect();
            GenSeries {
                metric: "m".into(),
                agent: format!("bench-{:02}", i % agents),
                device: format!("dev{:03}", (i / agents) % devices),
                labels: vec![("core".into(), (i / (agents * devices)).to_string())],
                points,
            }
        })
        .collect()
}

/// The data set as OpenMetrics text (timestamps in seconds), `# EOF`
/// at the end.
pub fn openmetrics(series: &[GenSeries]) -> String {
    let mut out = String::new();
    for s in series {
        write_series(&mut out, s);
    }
    out.push_str("# EOF\n");
    out
}

/// The data set as an OpenMetrics file for `promtool`, written series by
/// series (a large set never sits in memory as text).
pub fn write_openmetrics(series: &[GenSeries], path: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut text = String::new();
    for s in series {
        text.clear();
        write_series(&mut text, s);
        w.write_all(text.as_bytes())?;
    }
    w.write_all(b"# EOF\n")?;
    w.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// One series' samples as OpenMetrics lines.
fn write_series(out: &mut String, s: &GenSeries) {
    let mut labels = vec![
        ("agent".to_owned(), s.agent.clone()),
        ("device".to_owned(), s.device.clone()),
    ];
    labels.extend(s.labels.iter().cloned());
    // OpenMetrics escapes a backslash, a quote and a newline in a value.
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    let labels = labels.join(",");
    for (t, v) in &s.points {
        let _ = writeln!(
            out,
            "{}{{{labels}}} {} {}.{:03}",
            s.metric,
            v.text(),
            t / 1000,
            t % 1000
        );
    }
}

/// Sends the data set to the collector at `url` through Ingest, one
/// stream per agent, and waits until every batch is acknowledged (that
/// is, committed).
pub async fn ingest(url: &str, series: &[GenSeries]) -> Result<()> {
    let mut agents: Vec<&str> = Vec::new();
    for s in series {
        if !agents.contains(&s.agent.as_str()) {
            agents.push(&s.agent);
        }
    }
    for agent in agents {
        let mine: Vec<&GenSeries> = series.iter().filter(|s| s.agent == agent).collect();
        let mut client = pb::ingest_client::IngestClient::connect(url.to_owned())
            .await
            .with_context(|| format!("connect {url}"))?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: agent.into(),
                version: "promql-differential".into(),
                epoch: 7,
                agent_time_ns: now_ns(),
                dropped: 0,
                last_seq: 0,
                out_of_order: false,
            })),
        })
        .await?;
        let mut frames = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        // Every reading, each series declared in the batch of its first.
        let mut readings: Vec<(u32, i64, Val)> = Vec::new();
        for (id, s) in mine.iter().enumerate() {
            let id = u32::try_from(id + 1)?;
            readings.extend(s.points.iter().map(|&(t, v)| (id, t, v)));
        }
        readings.sort_by_key(|r| (r.1, r.0));
        let mut declared = vec![false; mine.len() + 1];
        let mut seq = 0u64;
        for chunk in readings.chunks(20_000) {
            seq += 1;
            let mut decls = Vec::new();
            for &(id, _, _) in chunk {
                let idx = id as usize;
                if !declared[idx] {
                    declared[idx] = true;
                    let s = mine[idx - 1];
                    decls.push(pb::SeriesDecl {
                        id,
                        device: s.device.clone(),
                        metric: s.metric.clone(),
                        labels: s.labels.iter().cloned().collect::<HashMap<_, _>>(),
                        unit: if s.metric.ends_with("_seconds_bucket") {
                            "s".into()
                        } else {
                            String::new()
                        },
                    });
                }
            }
            let rows = chunk
                .iter()
                .map(|&(id, t, v)| pb::Reading {
                    series: id,
                    ts_ns: t * 1_000_000,
                    value: Some(match v {
                        Val::Int(i) => pb::reading::Value::I64(i),
                        Val::Float(f) => pb::reading::Value::F64(f),
                        Val::Bool(b) => pb::reading::Value::Bool(b),
                    }),
                })
                .collect();
            tx.send(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
                    seq,
                    series: decls,
                    readings: rows,
                    dropped: 0,
                    resent: false,
                    last_seq: seq,
                    columns: None,
                    oldest_spooled: 0,
                })),
            })
            .await?;
        }
        // Acks arrive after commits; the last one covers everything.
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(120), frames.next())
                .await
                .context("no ack within 120 s")?;
            match frame {
                Some(Ok(pb::CollectorFrame {
                    frame: Some(pb::collector_frame::Frame::Ack(a)),
                })) if a.seq >= seq => break,
                Some(Ok(_)) => continue,
                Some(Err(status)) => bail!("ingest stream of {agent} failed: {status}"),
                None => bail!("ingest stream of {agent} ended before ack {seq}"),
            }
        }
    }
    Ok(())
}
