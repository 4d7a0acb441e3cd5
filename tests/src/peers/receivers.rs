//! Remote write receivers for the export tests: Debian's `victoria-metrics`
//! (single node) and Debian's `prometheus` with
//! `--web.enable-remote-write-receiver`, each on a free loopback port with
//! its data in the test's directory, restartable on the same port and data
//! (a receiver that goes away and comes back), and each read back raw:
//! every sample of every series a selector matches, with its timestamp.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use super::prometheus::{PROMETHEUS_ENV, http_get};
use super::{Peer, tool};
use crate::process::{TestDir, eventually, free_addr};

/// `victoria-metrics`.
pub const VICTORIA_ENV: &str = "TRIBUTARY_VICTORIA_METRICS";

/// How long a receiver may take to become ready, or a read to hold.
const PATIENCE: Duration = Duration::from_secs(60);

/// A series' labels and its samples as (timestamp ms, value), in time order.
pub type RawSeries = BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>;

/// Counter values by (agent, device) and timestamp in ms, time order.
/// Remote write carries one sample per series and millisecond: two polls
/// of a device a late wake-up brought into one millisecond are stored
/// apart but sent as one sample (the later one, `in_time_order`) when one
/// page holds both, as two when two pages do.
pub type BySeries = BTreeMap<(String, String), BTreeMap<i64, Vec<f64>>>;

/// The receiver's counters with identical duplicates removed, and how
/// many there were.
pub fn received(raw: &RawSeries) -> (BySeries, usize) {
    let mut out = BySeries::new();
    let mut dups = 0;
    for (labels, samples) in raw {
        let key = (
            labels.get("agent").cloned().unwrap_or_default(),
            labels.get("device").cloned().unwrap_or_default(),
        );
        let series = out.entry(key).or_default();
        for &(t, v) in samples {
            let values = series.entry(t).or_default();
            if values.contains(&v) {
                dups += 1;
            } else {
                values.push(v);
            }
        }
    }
    (out, dups)
}

/// Per series of `want` that `got` does not match: how many stored
/// readings are missing and how many received samples were never stored.
/// At a millisecond holding one stored reading `got` must hold exactly it;
/// at one holding several, at least one of them and nothing else.
pub fn mismatches(want: &BySeries, got: &BySeries) -> Vec<String> {
    let mut out = Vec::new();
    let empty = BTreeMap::new();
    for key in want
        .keys()
        .chain(got.keys().filter(|k| !want.contains_key(*k)))
    {
        let (w, g) = (
            want.get(key).unwrap_or(&empty),
            got.get(key).unwrap_or(&empty),
        );
        let (mut missing, mut extra, mut merged) = (0, 0, 0);
        for (t, ws) in w {
            match g.get(t) {
                None => missing += ws.len(),
                Some(gs) if ws.len() == 1 => missing += usize::from(gs != ws),
                Some(gs) => merged += ws.iter().filter(|v| !gs.contains(v)).count(),
            }
        }
        for (t, gs) in g {
            let ws = w.get(t).map(Vec::as_slice).unwrap_or_default();
            extra += gs.iter().filter(|v| !ws.contains(v)).count();
        }
        if missing + extra > 0 {
            let stored: usize = w.values().map(Vec::len).sum();
            let received: usize = g.values().map(Vec::len).sum();
            out.push(format!(
                "{key:?}: stored {stored}, received {received}, missing {missing}, extra {extra} \
                 ({merged} sharing a millisecond with another reading)"
            ));
        }
    }
    out
}

/// Which receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Victoria,
    Prometheus,
}

/// A running receiver; killed when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub kind: Kind,
    peer: Option<Peer>,
    addr: SocketAddr,
    data: std::path::PathBuf,
    name: String,
}

impl Receiver {
    /// Starts `kind` with its data in `dir/<name>-data`.
    pub async fn start(dir: &TestDir, kind: Kind, name: &str) -> Result<Receiver> {
        let mut r = Receiver {
            kind,
            peer: None,
            addr: free_addr()?,
            data: dir.join(format!("{name}-data")),
            name: name.to_owned(),
        };
        r.spawn(dir).await?;
        Ok(r)
    }

    async fn spawn(&mut self, dir: &TestDir) -> Result<()> {
        let addr = self.addr;
        let (program, args) = match self.kind {
            Kind::Victoria => (
                tool(VICTORIA_ENV, &["/usr/bin/victoria-metrics"])?,
                vec![
                    format!("-httpListenAddr={addr}"),
                    format!("-storageDataPath={}", self.data.display()),
                    "-retentionPeriod=100y".to_owned(),
                    "-search.disableCache".to_owned(),
                    "-loggerLevel=WARN".to_owned(),
                ],
            ),
            Kind::Prometheus => {
                let config = dir.join(format!("{}.yml", self.name));
                std::fs::write(&config, "global:\n  scrape_interval: 1m\n")
                    .with_context(|| format!("write {}", config.display()))?;
                (
                    tool(PROMETHEUS_ENV, &["/usr/bin/prometheus"])?,
                    vec![
                        format!("--config.file={}", config.display()),
                        format!("--storage.tsdb.path={}", self.data.display()),
                        format!("--web.listen-address={addr}"),
                        "--web.enable-remote-write-receiver".to_owned(),
                        "--storage.tsdb.retention.time=1d".to_owned(),
                    ],
                )
            }
        };
        let mut peer = Peer::spawn(&self.name, &program, &args, dir, addr)?;
        let path = match self.kind {
            Kind::Victoria => "/health",
            Kind::Prometheus => "/-/ready",
        };
        let ready = eventually(PATIENCE, &format!("{} is ready", self.name), || async {
            let (status, _) = http_get(addr, path, None).await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        peer.check_running()?;
        ready.with_context(|| format!("{} did not start:\n{}", self.name, peer.log()))?;
        self.peer = Some(peer);
        Ok(())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL remote write goes to.
    pub fn write_url(&self) -> String {
        match self.kind {
            Kind::Victoria => format!("http://{}/api/v1/write", self.addr),
            Kind::Prometheus => format!("http://{}/api/v1/write", self.addr),
        }
    }

    /// SIGKILLs it (it stays down until [`Receiver::restart`]).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(p) = self.peer.take() {
            p.kill().await?;
        }
        Ok(())
    }

    /// Stops it with SIGTERM and waits for it to exit: what it accepted
    /// is on disk (VictoriaMetrics keeps the last second or so of accepted
    /// samples in memory, which a SIGKILL loses: the receiver's own
    /// durability, not the export's).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.peer.take() {
            if let Some(pid) = p.child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            let waited = tokio::time::timeout(PATIENCE, p.child.wait()).await;
            if waited.is_err() {
                p.kill().await?;
            }
        }
        Ok(())
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self, dir: &TestDir) -> Result<()> {
        self.stop().await?;
        self.spawn(dir).await
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.peer.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// Every raw sample of the series named `metric` (duplicates included,
    /// as the receiver keeps them).
    pub async fn raw(&self, metric: &str) -> Result<RawSeries> {
        match self.kind {
            Kind::Victoria => self.victoria_raw(metric).await,
            Kind::Prometheus => self.prometheus_raw(metric).await,
        }
    }

    async fn victoria_raw(&self, metric: &str) -> Result<RawSeries> {
        let (status, body) = http_get(self.addr, "/internal/force_flush", None).await?;
        ensure!(status == 200, "force_flush: {status}: {body}");
        let path = format!(
            "/api/v1/export?match[]={}&start=0",
            encode(&format!("{{__name__=\"{metric}\"}}"))
        );
        let (status, body) = http_get(self.addr, &path, None).await?;
        ensure!(status == 200, "export: {status}: {body}");
        let mut out = RawSeries::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("export line {line}"))?;
            let labels = labels_of(&v["metric"]);
            let ts = v["timestamps"].as_array().cloned().unwrap_or_default();
            let vals = v["values"].as_array().cloned().unwrap_or_default();
            ensure!(ts.len() == vals.len(), "export line {line}: lengths differ");
            let samples = out.entry(labels).or_default();
            for (t, x) in ts.iter().zip(&vals) {
                let t = t.as_i64().context("timestamp")?;
                let x = x
                    .as_f64()
                    .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                    .context("value")?;
                samples.push((t, x));
            }
            samples.sort_by_key(|s| s.0);
        }
        Ok(out)
    }

    async fn prometheus_raw(&self, metric: &str) -> Result<RawSeries> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
            + 60.0;
        let path = format!(
            "/api/v1/query?query={}&time={now:.3}",
            encode(&format!("{metric}[1d]"))
        );
        let (status, body) = http_get(self.addr, &path, None).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query: {status}: {body}"))?;
        ensure!(
            status == 200 && v["status"] == "success",
            "query: {status}: {body}"
        );
        let mut out = RawSeries::new();
        for r in v["data"]["result"].as_array().into_iter().flatten() {
            let samples = out.entry(labels_of(&r["metric"])).or_default();
            for p in r["values"].as_array().into_iter().flatten() {
                let t = p[0].as_f64().context("timestamp")?;
                let x: f64 = p[1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("value")?;
                samples.push(((t * 1000.0).round() as i64, x));
            }
        }
        Ok(out)
    }
}

fn labels_of(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The comparison the export test makes: a stored reading is missing
/// unless its millisecond holds it, or holds another reading stored in
/// that millisecond (remote write sends one sample per millisecond).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_sharing_a_millisecond_may_arrive_as_one_sample() {
        let series = |points: &[(i64, f64)]| {
            let mut s = BTreeMap::<i64, Vec<f64>>::new();
            for &(t, v) in points {
                s.entry(t).or_default().push(v);
            }
            BySeries::from([(("a".to_owned(), "d".to_owned()), s)])
        };
        let want = series(&[(1, 1.0), (21, 2.0), (21, 3.0), (40, 4.0)]);
        for ok in [
            series(&[(1, 1.0), (21, 3.0), (40, 4.0)]),
            series(&[(1, 1.0), (21, 2.0), (21, 3.0), (40, 4.0)]),
        ] {
            assert!(mismatches(&want, &ok).is_empty(), "{ok:?}");
        }
        for bad in [
            series(&[(1, 1.0), (40, 4.0)]),
            series(&[(1, 1.0), (21, 3.0)]),
            series(&[(1, 1.0), (21, 3.0), (21, 5.0), (40, 4.0)]),
            series(&[(1, 1.0), (21, 3.0), (40, 4.0), (60, 5.0)]),
            BySeries::new(),
        ] {
            assert_eq!(mismatches(&want, &bad).len(), 1, "{bad:?}");
        }
    }
}
