//! Shared by the `postgres_*` tests: a fresh schema per test on the
//! PostgreSQL of this machine, ground truth read back with `psql`,
//! collectors in process or as killable child processes, sim agents, and a
//! TCP proxy that can cut the collectors off the database.
//!
//! The database is `$TRIBUTARY_TEST_PG` (default
//! `postgres://root@127.0.0.1:5432/test`). Each test gets its own schema,
//! named after the test, dropped at the end unless the test failed.
//!
//! A child collector is this test executable run again with
//! `TRIBUTARY_CHILD_COLLECTOR` set, executing only [`child_collector`]:
//! a real process (so SIGKILL is a real crash) running the library's
//! `server::run` against the test's schema.

#![allow(dead_code)] // each test file uses a different part

pub mod raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use tributary_collector::server::{self, ServerConfig};
use tributary_collector::store::StoreUrl;
use tributary_tests::process::{Proc, TestDir, eventually, wait_for_port};

/// How long anything may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Every stored reading as rows of `readings`' columns (`series_id, ts_ns,
/// received_ns, kind, v_f64, v_i64, v_text`): the rows of `readings`
/// (written before migration 7) and the points of `readings_chunks`. A
/// subquery: `FROM ({READINGS}) r`.
pub const READINGS: &str = "SELECT series_id, ts_ns, received_ns, kind, v_f64, v_i64, v_text \
       FROM readings \
     UNION ALL \
     SELECT c.series_id, p.* FROM readings_chunks c CROSS JOIN LATERAL \
       unnest(c.ts_ns, c.received_ns, c.kind, c.v_f64, c.v_i64, c.v_text) \
       AS p(ts_ns, received_ns, kind, v_f64, v_i64, v_text)";

/// Environment variable that turns this executable into a child collector:
/// `LISTEN_ADDR STORE_URL`.
const CHILD_ENV: &str = "TRIBUTARY_CHILD_COLLECTOR";
/// The child collector's `name`, when set and not empty.
const CHILD_NAME_ENV: &str = "TRIBUTARY_CHILD_COLLECTOR_NAME";

/// The database every test schema lives in.
pub fn base_url() -> String {
    std::env::var("TRIBUTARY_TEST_PG")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Runs `sql` with psql against `url`; returns the rows, one per line,
/// columns separated by `|`.
pub async fn psql(url: &str, sql: &str) -> Result<String> {
    let out = tokio::process::Command::new("psql")
        .args([url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run psql (the postgresql client)")?;
    ensure!(
        out.status.success(),
        "psql {sql:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A schema of its own for one test, dropped when the test passes.
pub struct TestSchema {
    pub name: String,
    base: String,
}

impl TestSchema {
    pub async fn new(label: &str) -> Result<TestSchema> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{label}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let base = base_url();
        psql(
            &base,
            &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
        )
        .await
        .with_context(|| format!("create schema {name} in {base} (is PostgreSQL running?)"))?;
        Ok(TestSchema { name, base })
    }

    /// The database URL with this schema first on the search path.
    pub fn url(&self) -> String {
        self.url_via(&self.base)
    }

    /// Like [`url`](Self::url), but reaching the server at `addr` (a proxy).
    pub fn url_through(&self, addr: SocketAddr) -> String {
        let base = match self.base.split_once('@') {
            Some((user, rest)) => {
                let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
                format!("{user}@{addr}{path}")
            }
            None => self.base.clone(),
        };
        self.url_via(&base)
    }

    fn url_via(&self, base: &str) -> String {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{}", self.name)
    }

    pub fn store(&self) -> StoreUrl {
        StoreUrl::Postgres(self.url())
    }

    /// Counter values stored per device of `agent`, in device-time order.
    pub async fn counters(&self, agent: &str) -> Result<BTreeMap<String, Vec<i64>>> {
        let rows = psql(
            &self.url(),
            &format!(
                "SELECT s.device, r.v_i64 FROM ({READINGS}) r JOIN series s ON s.id = r.series_id \
                 WHERE s.agent = '{agent}' AND s.metric = 'counter' ORDER BY s.device, r.ts_ns"
            ),
        )
        .await?;
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for line in rows.lines().filter(|l| !l.is_empty()) {
            let (device, value) = line
                .split_once('|')
                .with_context(|| format!("bad row {line:?}"))?;
            out.entry(device.to_owned()).or_default().push(
                value
                    .parse()
                    .with_context(|| format!("bad value {line:?}"))?,
            );
        }
        Ok(out)
    }

    /// One number from `sql`.
    pub async fn number(&self, sql: &str) -> Result<i64> {
        let out = psql(&self.url(), sql).await?;
        out.trim()
            .parse()
            .with_context(|| format!("{sql:?} gave {out:?}"))
    }

    /// Waits until every one of `devices` devices of `agent` has at least
    /// `n` counter readings; returns the fewest per device.
    pub async fn wait_for_counters(&self, agent: &str, devices: usize, n: usize) -> Result<usize> {
        eventually(
            PATIENCE,
            &format!("{agent} has {n} readings per device"),
            || async {
                let c = self.counters(agent).await.ok()?;
                let least = c.values().map(Vec::len).min().unwrap_or(0);
                (c.len() == devices && least >= n).then_some(least)
            },
        )
        .await
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TRIBUTARY_KEEP_TMP").is_some() {
            eprintln!("schema {} kept for the post-mortem", self.name);
            return;
        }
        // Best effort, synchronously: a leftover schema only costs space.
        let _ = std::process::Command::new("psql")
            .args([
                &self.base,
                "-X",
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every device's counter must read exactly 1, 2, ..., n: no gap, no repeat.
/// Returns the number of readings.
pub fn assert_exactly_once(
    agent: &str,
    stored: &BTreeMap<String, Vec<i64>>,
    devices: usize,
) -> Result<u64> {
    ensure!(
        stored.len() == devices,
        "{agent}: expected {devices} devices, found {}",
        stored.len()
    );
    let mut total = 0;
    for (device, values) in stored {
        let expected: Vec<i64> = (1..=values.len() as i64).collect();
        if *values != expected {
            let dup = values.windows(2).find(|w| w[0] >= w[1]);
            let gap = values.windows(2).find(|w| w[1] > w[0] + 1);
            bail!(
                "{device}: {} values, first {:?}, duplicate/out of order at {dup:?}, gap at {gap:?}",
                values.len(),
                values.first()
            );
        }
        total += values.len() as u64;
    }
    Ok(total)
}

/// An agent config with `devices` sim counters polled every `interval`,
/// trying `collectors` in the given order.
pub fn sim_agent_config(id: &str, collectors: &[String], devices: usize, interval: &str) -> String {
    let list = collectors
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        "id = \"{id}\"\ncollectors = [{list}]\n\n[uplink]\nbackoff_max = \"500ms\"\nconnect_timeout = \"2s\"\n"
    );
    for i in 0..devices {
        s.push_str(&format!(
            "\n[[devices]]\nname = \"{id}-counter-{i}\"\ndriver = \"sim\"\ninterval = \"{interval}\"\n"
        ));
    }
    s
}

/// Starts a `tributary-agent` with `config`, its spool in `dir`.
pub fn start_agent(dir: &TestDir, name: &str, config: &str) -> Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    let spool = dir.join(format!("{name}-spool"));
    std::fs::write(
        &path,
        format!("{config}\n[spool]\ndir = \"{}\"\n", spool.display()),
    )?;
    Proc::builder("tributary-agent")?
        .arg("run")
        .args(["--metrics-listen", "off"])
        .arg("--config")
        .arg(&path)
        .log_to(dir.join(format!("{name}.log")))
        .spawn()
}

/// A collector running in this process; stops when dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub async fn start(store: StoreUrl) -> Result<InProcess> {
        Self::start_with(store, |_| {}).await
    }

    /// [`InProcess::start`] with settings changed by `configure`.
    pub async fn start_with(
        store: StoreUrl,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Result<InProcess> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = ServerConfig::new("unused.db".into());
        config.store = Some(store);
        configure(&mut config);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = server::run(listener, config, shutdown).await {
                panic!("collector failed: {e}");
            }
        });
        Ok(InProcess {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it gracefully and re-raises a panic of its task.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("collector task")?;
        Ok(())
    }
}

/// A collector in a child process (this test executable, run again).
pub struct Child {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Child {
    /// Starts it on `addr` with `store`, output in `log`.
    pub async fn start(addr: SocketAddr, store: &str, log: &Path) -> Result<Child> {
        Self::start_named(addr, store, log, None).await
    }

    /// [`Child::start`] with the collector's `name` set (else its default,
    /// the host name).
    pub async fn start_named(
        addr: SocketAddr,
        store: &str,
        log: &Path,
        name: Option<&str>,
    ) -> Result<Child> {
        let exe = std::env::current_exe().context("locate the test executable")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = tokio::process::Command::new(exe)
            .args([
                "postgres_support::child_collector",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{addr} {store}"))
            .env(CHILD_NAME_ENV, name.unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("spawn the child collector")?;
        wait_for_port(addr, PATIENCE).await?;
        Ok(Child {
            addr,
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL: no drain, no last ack, its database connection cut.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("kill the child collector")
    }

    /// Whether it is still running (it must not have crashed).
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Not a test: the body of a child collector (see [`Child`]). Without its
/// environment variable it does nothing.
#[test]
#[ignore = "run by the postgres tests as a child process"]
fn child_collector() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let Some((addr, store)) = spec.split_once(' ') else {
        panic!("{CHILD_ENV}={spec:?}: expected `ADDR STORE_URL`");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let mut config = ServerConfig::new("unused.db".into());
        config.store = Some(store.parse().expect("store URL"));
        if let Some(name) = std::env::var(CHILD_NAME_ENV).ok().filter(|n| !n.is_empty()) {
            config.name = name;
        }
        let shutdown = async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        };
        server::run(listener, config, shutdown)
            .await
            .expect("collector");
    });
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and
/// refuse new ones, then let them through again.
pub struct Proxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, open_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !*open_rx.borrow() {
                    // Cut: refuse by closing at once.
                    drop(client);
                    continue;
                }
                let mut open_rx = open_rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = open_rx.wait_for(|open| !*open) => {}
                    }
                    // Dropping both ends closes them: each side sees the
                    // connection end, as when a network path dies.
                });
            }
        });
        Ok(Proxy { addr, open, task })
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address of the database server of `base_url()` (host and port of
/// the URL's authority; 5432 when it names none).
pub fn pg_addr() -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let url = base_url();
    let rest = url.split_once("://").map(|x| x.1).unwrap_or(&url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map(|x| x.1).unwrap_or(authority);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    host.to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .next()
        .with_context(|| format!("{host}: no address"))
}
