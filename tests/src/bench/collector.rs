//! The collector under test as a real process, a work directory per run,
//! and the Query client that reads back what was stored (through the
//! protocol, so the numbers do not depend on the store's layout).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use tributary_proto::v1 as pb;
use tributary_tests::process::{Proc, free_addr, target_dir, wait_for_port};

use crate::sys::{self, ProcSample};

/// How long a process gets to start listening or to stop.
const PATIENCE: Duration = Duration::from_secs(30);

/// `target/bench/<label>-<pid>-<n>`, removed when dropped unless `keep`.
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    pub fn new(label: &str, keep: bool) -> Result<WorkDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = target_dir()?
            .join("bench")
            .join(format!("{label}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("remove old {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// How [`CollectorProc::spawn`] starts a collector; the default is the
/// work directory's `collector.db` on a free port, HTTP off.
struct Spawn<'a> {
    /// `[limits] max_connections`, when set.
    max_connections: Option<usize>,
    /// The HTTP listener; off when `None`.
    http: Option<SocketAddr>,
    /// A `postgres://` URL instead of `<stem>.db`.
    store: Option<&'a str>,
    /// The gRPC address; a free port when `None`.
    addr: Option<SocketAddr>,
    /// Names the SQLite file, the config and the log.
    stem: &'a str,
    /// Another build's binaries.
    bin_dir: Option<&'a Path>,
}

impl Default for Spawn<'_> {
    fn default() -> Self {
        Spawn {
            max_connections: None,
            http: None,
            store: None,
            addr: None,
            stem: "collector",
            bin_dir: None,
        }
    }
}

/// A running `tributary-collector serve` with default settings (SQLite,
/// `synchronous=full`), its log in the work directory.
pub struct CollectorProc {
    proc: Proc,
    pub addr: SocketAddr,
    pub url: String,
}

impl CollectorProc {
    pub async fn start(dir: &WorkDir) -> Result<CollectorProc> {
        Self::start_with(dir, None).await
    }

    /// With `[limits] max_connections` set, when given. Every load
    /// generator connects from loopback, so the per-address cap is lifted
    /// to `max_connections` (or a million, effectively none).
    pub async fn start_with(
        dir: &WorkDir,
        max_connections: Option<usize>,
    ) -> Result<CollectorProc> {
        Self::spawn(
            dir,
            Spawn {
                max_connections,
                ..Spawn::default()
            },
        )
        .await
    }

    /// Listening on `addr` (a restart of one at the same address keeps its
    /// store: the work directory's SQLite file).
    pub async fn start_at(dir: &WorkDir, addr: SocketAddr) -> Result<CollectorProc> {
        Self::spawn(
            dir,
            Spawn {
                addr: Some(addr),
                ..Spawn::default()
            },
        )
        .await
    }

    /// Storing in `store` (a `postgres://` URL) instead of the work
    /// directory's SQLite file.
    pub async fn start_with_store(dir: &WorkDir, store: &str) -> Result<CollectorProc> {
        Self::spawn(
            dir,
            Spawn {
                store: Some(store),
                ..Spawn::default()
            },
        )
        .await
    }

    /// With its HTTP listener (`/metrics`, ...) on `http`; it is off
    /// otherwise.
    pub async fn start_with_http(dir: &WorkDir, http: SocketAddr) -> Result<CollectorProc> {
        Self::spawn(
            dir,
            Spawn {
                http: Some(http),
                ..Spawn::default()
            },
        )
        .await
    }

    /// Another build's collector, `bin_dir/tributary-collector`, on the
    /// store `<stem>.db` of `dir` (its config and log named alike), its
    /// HTTP listener on `http`.
    pub async fn start_other(
        dir: &WorkDir,
        stem: &str,
        http: SocketAddr,
        bin_dir: &Path,
    ) -> Result<CollectorProc> {
        Self::spawn(
            dir,
            Spawn {
                http: Some(http),
                stem,
                bin_dir: Some(bin_dir),
                ..Spawn::default()
            },
        )
        .await
    }

    async fn spawn(dir: &WorkDir, how: Spawn<'_>) -> Result<CollectorProc> {
        let Spawn {
            max_connections,
            http,
            store,
            addr,
            stem,
            bin_dir,
        } = how;
        let addr = match addr {
            Some(a) => a,
            None => free_addr()?,
        };
        let store = store.map_or_else(
            || format!("sqlite:{}", dir.join(&format!("{stem}.db")).display()),
            str::to_owned,
        );
        // Two collectors may share a work directory (and a PostgreSQL
        // store): each its own config and log.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = dir.join(&format!("{stem}-{n}.toml"));
        let mut limits = format!(
            "[limits]\nmax_connections_per_address = {}\n",
            max_connections.unwrap_or(1_000_000)
        );
        if let Some(n) = max_connections {
            limits.push_str(&format!("max_connections = {n}\n"));
        }
        std::fs::write(&config, limits).with_context(|| format!("write {}", config.display()))?;
        let builder = match bin_dir {
            Some(d) => Proc::builder_at(
                "tributary-collector",
                d.join(format!(
                    "tributary-collector{}",
                    std::env::consts::EXE_SUFFIX
                )),
            ),
            None => Proc::builder("tributary-collector")?,
        };
        let builder = builder
            .args(["serve", "--listen", &addr.to_string(), "--store", &store])
            .args([
                "--http-listen",
                &http.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            ])
            .arg("--config")
            .arg(config);
        let mut proc = builder
            .env("RUST_LOG", "info")
            .log_to(dir.join(&format!("{stem}-{n}.log")))
            .spawn()?;
        if let Err(e) = wait_for_port(addr, PATIENCE).await {
            let status = proc.try_wait()?;
            bail!(
                "collector not listening ({e:#}; exit {status:?}):\n{}",
                tail(&proc.log(), 20)
            );
        }
        Ok(CollectorProc {
            proc,
            addr,
            url: format!("http://{addr}"),
        })
    }

    pub fn pid(&self) -> Result<u32> {
        self.proc.id().context("collector has exited")
    }

    pub fn sample(&self) -> Result<ProcSample> {
        sys::sample(self.pid()?)
    }

    /// SIGTERM, and wait for it to drain and exit.
    pub async fn stop(mut self) -> Result<()> {
        let status = self.proc.terminate(PATIENCE).await?;
        if !status.success() {
            bail!(
                "collector exited with {status}:\n{}",
                tail(&self.proc.log(), 20)
            );
        }
        Ok(())
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A Query client on its own connection.
pub struct QueryClient {
    client: pb::query_client::QueryClient<Channel>,
}

/// Points of one series from a Range call.
pub struct SeriesPoints {
    pub series: pb::SeriesInfo,
    pub points: Vec<pb::Point>,
}

impl QueryClient {
    pub async fn connect(url: &str) -> Result<QueryClient> {
        let channel = Channel::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        Ok(QueryClient {
            client: pb::query_client::QueryClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
        })
    }

    /// Every agent the collector knows, by id.
    pub async fn agents(&mut self) -> Result<HashMap<String, pb::AgentInfo>> {
        let resp = self
            .client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .context("Query/ListAgents")?;
        Ok(resp
            .into_inner()
            .agents
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect())
    }

    /// Readings stored from agents whose id starts with `prefix`.
    pub async fn stored(&mut self, prefix: &str) -> Result<u64> {
        Ok(self
            .agents()
            .await?
            .values()
            .filter(|a| a.id.starts_with(prefix))
            .map(|a| a.readings_stored)
            .sum())
    }

    /// Number of stored series (every page of ListSeries).
    pub async fn series_count(&mut self) -> Result<usize> {
        let mut request = pb::ListSeriesRequest::default();
        let mut count = 0;
        loop {
            let page = self
                .client
                .list_series(request.clone())
                .await
                .context("Query/ListSeries")?
                .into_inner();
            count += page.series.len();
            if page.next_page_token.is_empty() {
                return Ok(count);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// The newest stored time stamp of the series matching `filter`.
    /// Query/Tail of `filter`: every matching reading as it is committed,
    /// as (arrival time, the reading's own time stamp) in nanoseconds, sent
    /// on `out` until the stream or `out` ends.
    pub async fn tail_times(
        &mut self,
        filter: pb::SeriesFilter,
        out: tokio::sync::mpsc::UnboundedSender<(i64, i64)>,
    ) -> Result<()> {
        let mut stream = self
            .client
            .tail(filter)
            .await
            .context("Query/Tail")?
            .into_inner();
        while let Some(chunk) = stream.message().await.context("Query/Tail stream")? {
            let arrived = now_ns();
            for p in &chunk.points {
                if out.send((arrived, p.ts_ns)).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub async fn latest_ts(&mut self, filter: pb::SeriesFilter) -> Result<Option<i64>> {
        let resp = self
            .client
            .latest(filter)
            .await
            .context("Query/Latest")?
            .into_inner();
        Ok(resp
            .readings
            .iter()
            .filter_map(|r| r.point.as_ref().map(|p| p.ts_ns))
            .max())
    }

    /// Calls Range and reads the stream to its end; returns how many
    /// points came and how long that took.
    pub async fn range_count(
        &mut self,
        filter: pb::SeriesFilter,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<(u64, Duration)> {
        let start = Instant::now();
        let mut stream = self
            .client
            .range(pb::RangeRequest {
                filter: Some(filter),
                since_ns,
                until_ns,
            })
            .await
            .context("Query/Range")?
            .into_inner();
        let mut points = 0u64;
        while let Some(chunk) = stream.next().await {
            points += chunk.context("Query/Range stream")?.points.len() as u64;
        }
        Ok((points, start.elapsed()))
    }

    /// Every point of the matching series in the span, per series.
    pub async fn range_points(
        &mut self,
        filter: pb::SeriesFilter,
        since_ns: i64,
        until_ns: i64,
    ) -> Result<Vec<SeriesPoints>> {
        let mut stream = self
            .client
            .range(pb::RangeRequest {
                filter: Some(filter),
                since_ns,
                until_ns,
            })
            .await
            .context("Query/Range")?
            .into_inner();
        let mut out: Vec<SeriesPoints> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("Query/Range stream")?;
            let series = chunk.series.unwrap_or_default();
            match out.last_mut() {
                Some(last) if last.series.id == series.id => last.points.extend(chunk.points),
                _ => out.push(SeriesPoints {
                    series,
                    points: chunk.points,
                }),
            }
        }
        Ok(out)
    }
}

/// Wall clock now, ns since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
