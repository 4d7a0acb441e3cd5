//! A remote write export on PostgreSQL with two collectors sharing the
//! database (a schema of this test's own), against a real VictoriaMetrics.
//! Sim agents stream through both collectors while each collector is
//! SIGKILLed and restarted in turn. Ground truth:
//! - exactly one collector runs the export at any time: one session holds
//!   the export's advisory lock after every restart, and the export moved
//!   to the other collector when its holder died;
//! - every counter reading stored in PostgreSQL is in VictoriaMetrics,
//!   series by series, and duplicates only as identical samples (a page in
//!   flight when its holder died is sent again by the next holder);
//! - `Query/ListExports` answers what the store holds, over one session the
//!   collector keeps between calls (the fleet page polls it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use tributary_collector::store::postgres::VIEW_APPLICATION;
use tributary_proto::v1 as pb;
use tributary_tests::cluster::PATIENCE;
use tributary_tests::peers::receivers::{BySeries, Kind, Receiver, mismatches, received};
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, run_bin, wait_for_port};

mod postgres_support;
use postgres_support::{
    READINGS, TestSchema, assert_exactly_once, psql, sim_agent_config, start_agent,
};

const AGENTS: usize = 2;
const DEVICES: usize = 3;
const EXPORT: &str = "vm";

/// One collector process on the shared database; each start logs to a file
/// of its own.
struct Member {
    name: &'static str,
    addr: SocketAddr,
    proc: Option<Proc>,
    starts: usize,
}

impl Member {
    fn new(name: &'static str) -> Result<Member> {
        Ok(Member {
            name,
            addr: free_addr()?,
            proc: None,
            starts: 0,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn start(&mut self, dir: &TestDir, store: &str, config: &str) -> Result<()> {
        let log = dir.join(format!("{}-{}.log", self.name, self.starts));
        self.starts += 1;
        let proc = Proc::builder("tributary-collector")?
            .args(["serve", "--listen", &self.addr.to_string()])
            .args(["--http-listen", &free_addr()?.to_string()])
            .args(["--store", store, "--config", config])
            .log_to(log)
            .spawn()?;
        wait_for_port(self.addr, PATIENCE).await?;
        self.proc = Some(proc);
        Ok(())
    }

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill().await?;
        }
        Ok(())
    }

    /// Every log it wrote, oldest start first.
    fn log(&self, dir: &TestDir) -> String {
        (0..self.starts)
            .map(|i| {
                std::fs::read_to_string(dir.join(format!("{}-{i}.log", self.name)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

/// Sessions holding the export's advisory lock in this schema.
async fn holders(schema: &TestSchema) -> Result<i64> {
    let sql = format!(
        "WITH k AS (SELECT hashtextextended('tributary export ' || current_schema() || ' {EXPORT}', 0) AS key) \
         SELECT count(*) FROM pg_locks l, k WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.objsubid = 1 \
           AND l.classid::bigint = ((k.key >> 32) & 4294967295) \
           AND l.objid::bigint = (k.key & 4294967295)"
    );
    schema.number(&sql).await
}

/// Waits until exactly one session holds the export.
async fn one_holder(schema: &TestSchema, when: &str) -> Result<()> {
    eventually(
        PATIENCE,
        &format!("one holder of the export {when}"),
        || async { (holders(schema).await.ok()? == 1).then_some(()) },
    )
    .await
    .map(|_| ())
}

/// The store's counters, checked exactly once per device, as
/// (agent, device) → [(ts ms, value)].
async fn stored(schema: &TestSchema) -> Result<BySeries> {
    for a in 0..AGENTS {
        let agent = format!("pgx-{a}");
        assert_exactly_once(&agent, &schema.counters(&agent).await?, DEVICES)?;
    }
    let rows = psql(
        &schema.url(),
        &format!(
            "SELECT s.agent, s.device, r.ts_ns, r.v_i64 FROM ({READINGS}) r \
             JOIN series s ON s.id = r.series_id WHERE s.metric = 'counter' \
             ORDER BY s.agent, s.device, r.ts_ns"
        ),
    )
    .await?;
    let mut out = BySeries::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 4, "bad row {line:?}");
        let ts: i64 = f[2].parse().with_context(|| format!("bad row {line:?}"))?;
        let v: i64 = f[3].parse().with_context(|| format!("bad row {line:?}"))?;
        out.entry((f[0].to_owned(), f[1].to_owned()))
            .or_default()
            .entry(ts.div_euclid(1_000_000))
            .or_default()
            .push(v as f64);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_run_one_export_and_lose_nothing_across_kills() -> Result<()> {
    let dir = TestDir::new("export-postgres")?;
    let schema = TestSchema::new("export_pg").await?;
    let store = schema.url();
    let rx = Receiver::start(&dir, Kind::Victoria, "vm").await?;
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[exports]]\nname = \"{EXPORT}\"\nkind = \"remote_write\"\nurl = \"{}\"\nshards = 2\n\
             max_samples_per_request = 300\nmax_backoff = \"1s\"\ntimeout = \"5s\"\n",
            rx.write_url()
        ),
    )?;
    let config = config.display().to_string();
    let mut members = [Member::new("a")?, Member::new("b")?];
    for m in &mut members {
        m.start(&dir, &store, &config).await?;
    }
    let urls: Vec<String> = members.iter().map(Member::url).collect();
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let id = format!("pgx-{a}");
        // Each agent prefers another collector: both commit.
        let order: Vec<String> = if a % 2 == 0 {
            urls.clone()
        } else {
            urls.iter().rev().cloned().collect()
        };
        agents.push(start_agent(
            &dir,
            &id,
            &sim_agent_config(&id, &order, DEVICES, "20ms"),
        )?);
    }
    for a in 0..AGENTS {
        schema
            .wait_for_counters(&format!("pgx-{a}"), DEVICES, 20)
            .await?;
    }
    one_holder(&schema, "at start").await?;
    // Each collector dies in turn (twice round), mid-export.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = &mut members[round % 2];
        m.kill().await?;
        one_holder(&schema, &format!("with {} dead", m.name)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        m.start(&dir, &store, &config).await?;
        one_holder(&schema, &format!("after {} restarted", m.name)).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for a in &mut agents {
        a.terminate(Duration::from_secs(20)).await?;
    }
    let want = stored(&schema).await?;
    let total: usize = want.values().flat_map(BTreeMap::values).map(Vec::len).sum();
    ensure!(
        want.len() == AGENTS * DEVICES && total >= AGENTS * DEVICES * 50,
        "only {total} readings stored in {} series",
        want.len()
    );
    let caught_up = eventually(
        PATIENCE,
        "VictoriaMetrics has every stored reading",
        || async {
            let raw = rx.raw("counter").await.ok()?;
            mismatches(&want, &received(&raw).0)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let raw = rx.raw("counter").await?;
    let (got, dups) = received(&raw);
    let logs = || {
        members
            .iter()
            .map(|m| format!("collector {}:\n{}", m.name, m.log(&dir)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let wrong = mismatches(&want, &got);
    if caught_up.is_err() || !wrong.is_empty() {
        bail!(
            "VictoriaMetrics does not hold what was committed:\n{}\n{}",
            wrong.join("\n"),
            logs()
        );
    }
    // The export moved between collectors: started more than once, and
    // at least once by a collector that had waited for the other.
    let all = logs();
    let started = all.matches("export started").count();
    ensure!(
        started >= 2 && all.contains("export runs in another collector"),
        "the export started {started} times; no takeover seen\n{all}"
    );
    ensure!(
        dups < total / 2,
        "{dups} duplicates of {total}: the export did not resume from its cursor"
    );
    // Where operators look: the cursor in the shared database.
    let store_arg = format!("--store={store}");
    let row = eventually(PATIENCE, "the cursor is at the log's end", || async {
        let json = run_bin(
            "tributary-collector",
            ["exports", &store_arg, "--format", "json"],
        )
        .await
        .ok()?;
        let rows: serde_json::Value = serde_json::from_str(&json).ok()?;
        let row = rows[0].clone();
        (row["lag_readings"] == 0).then_some(row)
    })
    .await?;
    ensure!(
        row["name"] == EXPORT && row["dropped"] == 0 && row["sent"].as_u64() > Some(0),
        "exports shows {row}"
    );
    // ListExports answers the same, over one session the collector keeps:
    // after each of three calls there is one session of the view, the
    // same one (a connection a call would leave none behind).
    let mut query = pb::query_client::QueryClient::connect(members[0].url()).await?;
    let sessions = format!(
        "FROM pg_stat_activity WHERE application_name = '{VIEW_APPLICATION}' \
         AND datname = current_database()"
    );
    let mut pids = Vec::new();
    for call in 0..3 {
        let listed = query
            .list_exports(pb::ListExportsRequest {})
            .await?
            .into_inner()
            .exports;
        ensure!(
            matches!(listed.as_slice(), [e] if e.name == EXPORT && e.lag_readings == 0
                && e.sent == row["sent"].as_u64().unwrap_or(0)),
            "ListExports call {call}: {listed:?}, the store: {row}"
        );
        let count = schema
            .number(&format!("SELECT count(*) {sessions}"))
            .await?;
        let pid = schema
            .number(&format!("SELECT COALESCE(MIN(pid), 0) {sessions}"))
            .await?;
        ensure!(
            count == 1,
            "after ListExports call {call}: {count} sessions named {VIEW_APPLICATION:?}"
        );
        pids.push(pid);
    }
    ensure!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "ListExports' session changed between calls: pids {pids:?}"
    );
    // The holder trims what the cursor has passed (off the commits).
    eventually(PATIENCE, "the export log is trimmed", || async {
        let left = schema
            .number(
                "SELECT count(*) FROM export_log \
                 WHERE id <= (SELECT MIN(position) FROM export_cursors)",
            )
            .await
            .ok()?;
        (left == 0).then_some(())
    })
    .await?;
    for m in &mut members {
        if let Some(mut p) = m.proc.take() {
            let status = p.terminate(Duration::from_secs(20)).await?;
            ensure!(
                status.success(),
                "collector {} exited with {status}",
                m.name
            );
        }
    }
    println!(
        "export on postgres: {total} counter readings committed through 2 collectors, 4 SIGKILLs; all in VictoriaMetrics, {dups} identical duplicates, export started {started} times, one holder throughout"
    );
    Ok(())
}

/// A cursor removed by another collector's setup (started or reloaded
/// without the export) makes the holder's next save fail instead of
/// updating nothing: the trim no longer waits for that cursor, so sending
/// on would lose rows. The export connections ask the server for TCP
/// keepalives, so a holder whose host vanished loses its lock in about
/// 30 s (the client-side ones only notice a dead server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cursor_fails_the_save_and_export_sessions_keep_alive() -> Result<()> {
    use tributary_collector::store::postgres::{PgLog, PgStore};
    use tributary_collector::store::read::ReadError;

    let schema = TestSchema::new("export_pg_cursor").await?;
    let url = schema.url();
    let open = url.clone();
    tokio::task::spawn_blocking(move || {
        PgStore::open(&open, tributary_collector::store::Durability::Full).map(drop)
    })
    .await
    .context("store task")??;
    let log = PgLog::new(&url)?;
    log.setup(&["x".to_owned()]).await?;
    let mut conn = log.connect().await?;
    ensure!(conn.hold("x").await?, "nothing else holds export x");
    let mut cursor = conn.cursor("x").await?;
    cursor.sent = 7;
    conn.save(&cursor).await?;
    ensure!(conn.cursor("x").await?.sent == 7, "the save did not land");
    // Another collector, configured with y only, sets the log up.
    log.setup(&["y".to_owned()]).await?;
    match conn.save(&cursor).await {
        Err(ReadError::CursorRemoved { name }) => ensure!(name == "x"),
        other => bail!("save of a removed cursor: {other:?}"),
    }
    // The URL's own options (the search path) are kept beside them.
    ensure!(conn.setting("tcp_keepalives_idle").await? == "15");
    ensure!(conn.setting("tcp_keepalives_interval").await? == "5");
    ensure!(conn.setting("tcp_keepalives_count").await? == "3");
    ensure!(conn.setting("search_path").await? == schema.name);
    Ok(())
}
