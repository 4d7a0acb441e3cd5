//! What the processes' own metrics cost, measured the same way by `poll`
//! and `vs-prometheus`: runs with metrics off and on, interleaved (off, on,
//! on, off, off, on, ...: an "ABBA" order, so a drift of the machine's load
//! during the bench weighs on both sides alike), each scraped as a
//! Prometheus with its default `scrape_interval` (15 s) would, compared by
//! CPU time (`/proc`) per unit of completed work (a poll, a sample): the
//! ratio of the two medians, and each pair's own ratio for the spread.
//!
//! CPU per unit of work, not per second: on a machine that other work
//! shares, a run that got fewer cores does less work, and its CPU per
//! second says more about the neighbours than about the metrics.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::report::{Report, Target};
use crate::sys::percentile;

/// Prometheus's default `scrape_interval`.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);

/// What the issue allows metrics to add to the CPU.
pub const MAX_RATIO: f64 = 1.03;

/// Whether repetition `rep` (from 1) runs metrics on first: off then on
/// for odd repetitions, on then off for even ones.
pub fn order(rep: usize) -> [bool; 2] {
    if rep % 2 == 1 {
        [false, true]
    } else {
        [true, false]
    }
}

/// The scrape interval for a window of `window`: [`SCRAPE_INTERVAL`], or
/// the window itself when that is shorter (smoke runs), so every window
/// has at least one scrape.
pub fn scrape_interval(window: Duration) -> Duration {
    SCRAPE_INTERVAL.min(window)
}

/// Scrapes `http://addr/metrics` every `interval` until `stop`, the first
/// time half an interval after the start (so a window of n intervals holds
/// n scrapes, as a Prometheus's share of it would); fails on a scrape that
/// is not a 200 whose body names `expect`. Returns the number of scrapes.
pub async fn scrape(
    addr: SocketAddr,
    expect: &'static str,
    interval: Duration,
    stop: CancellationToken,
) -> Result<u64> {
    let mut scrapes = 0u64;
    let start = tokio::time::Instant::now() + interval / 2;
    let mut tick = tokio::time::interval_at(start, interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(scrapes),
            _ = tick.tick() => {}
        }
        let (status, body) =
            tributary_tests::peers::prometheus::http_get(addr, "/metrics", None).await?;
        anyhow::ensure!(
            status == 200 && body.contains(expect),
            "scrape of {addr}: status {status}, {} bytes without {expect}",
            body.len()
        );
        scrapes += 1;
    }
}

/// CPU per unit of work of the runs with metrics off and on.
#[derive(Debug, Default)]
pub struct OnOff {
    off: Vec<f64>,
    on: Vec<f64>,
}

impl OnOff {
    /// One run's CPU per unit.
    pub fn add(&mut self, metrics: bool, cpu_per_unit: f64) {
        if metrics {
            self.on.push(cpu_per_unit);
        } else {
            self.off.push(cpu_per_unit);
        }
    }

    /// Declares `<name>` (the ratio of the medians, with the target) and
    /// `<name>_pairs` (each repetition's on / off) in `report`.
    pub fn declare(report: &mut Report, name: &'static str, pairs: &'static str) {
        report.declare(name, "×", Some(Target::AtMost(MAX_RATIO)));
        report.declare(pairs, "×", None);
    }

    /// Records the ratio of the medians as `name`, each pair's ratio as
    /// `pairs`, and a note with both medians, the spread and the scrape
    /// interval `every`.
    pub fn record(
        &self,
        report: &mut Report,
        name: &'static str,
        pairs: &'static str,
        what: &str,
        every: Duration,
    ) {
        for (on, off) in self.on.iter().zip(&self.off) {
            report.record(pairs, on / off.max(f64::MIN_POSITIVE));
        }
        let (Some(off), Some(on)) = (median(&self.off), median(&self.on)) else {
            return;
        };
        report.record(name, on / off.max(f64::MIN_POSITIVE));
        let spread = |v: &[f64], m: f64| {
            let mut v = v.to_vec();
            let lo = percentile(&mut v, 0.0).unwrap_or(m);
            let hi = percentile(&mut v, 100.0).unwrap_or(m);
            (hi - lo) / m.max(f64::MIN_POSITIVE) * 100.0
        };
        report.note(format!(
            "{name}: {what} with metrics on (median {on:.3}, runs {}) over off (median {off:.3}, runs {}); the runs spread {:.1} % (on) and {:.1} % (off) of their medians; order off, on, on, off, ...; scraped every {} s",
            join(&self.on),
            join(&self.off),
            spread(&self.on, on),
            spread(&self.off, off),
            every.as_secs_f64()
        ));
    }
}

fn join(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Median (mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_alternate_abba() {
        let seq: Vec<bool> = (1..=4).flat_map(order).collect();
        assert_eq!(
            seq,
            [false, true, true, false, false, true, true, false].to_vec()
        );
    }

    #[test]
    fn ratio_of_medians_and_pairs() {
        let mut r = Report::new("t");
        OnOff::declare(&mut r, "ratio", "pairs");
        let mut m = OnOff::default();
        for (on, off) in [(10.0, 10.0), (12.0, 10.0), (11.0, 11.0)] {
            m.add(true, on);
            m.add(false, off);
        }
        m.record(&mut r, "ratio", "pairs", "µs per poll", SCRAPE_INTERVAL);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(json["ratio"], serde_json::json!(1.1));
        assert_eq!(
            json["metrics"]["pairs"]["runs"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(json["metrics"]["ratio"]["met"], serde_json::json!(false));
    }
}
