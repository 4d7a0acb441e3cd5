//! SIGHUP on the collector, with the real binaries and mutual TLS:
//!
//! - certificate rotation: the certificate and key files are replaced by a
//!   new certificate from the same CA (another key, so another
//!   certificate), SIGHUP; a new TLS connection to either listener (gRPC,
//!   HTTP) is served the new certificate, and the agent that streamed
//!   before keeps its one stream (no reconnect, no stream ended) while its
//!   readings keep arriving, each stored once;
//! - `client_ca`: a CA added to the bundle lets its agents in, a CA taken
//!   out keeps its agents out, from the next handshake;
//! - `allowed_agents`: an agent taken off the list has its open stream
//!   ended and its new streams refused (PERMISSION_DENIED), while the
//!   other agent's stream goes on;
//! - a file that does not load, a moved `listen` and a setting that needs
//!   a restart are refused, change nothing (the agent still allowed) and
//!   are counted in `/metrics`, as is the valid reload after them.

mod tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use tributary_tests::cluster::{
    Agent, PATIENCE, assert_exactly_once, counters, sim_agent_config, wait_for_counters,
};
use tributary_tests::process::{Proc, TestDir, eventually, free_addr, wait_for_port};

use tls_support::{MTLS, Pki, agent_tls, client_tls, start_collector, try_ingest, valid_now};

/// Writes the collector's config as `start_collector` does, for a reload.
fn write_config(dir: &TestDir, addr: SocketAddr, config: &str) -> Result<()> {
    let http = if config.contains("http_listen") {
        ""
    } else {
        "http_listen = \"off\"\n"
    };
    std::fs::write(
        dir.join("collector.toml"),
        format!("listen = \"{addr}\"\nstore = \"sqlite:collector.db\"\n{http}{config}"),
    )?;
    Ok(())
}

/// Occurrences of `needle` in the collector's log.
fn log_count(collector: &Proc, needle: &str) -> usize {
    collector.log().matches(needle).count()
}

/// Sends SIGHUP and waits until the collector logged one more reload
/// outcome (`config reloaded` or `config reload refused`).
async fn reload(collector: &Proc) -> Result<()> {
    let outcomes =
        |c: &Proc| log_count(c, "config reloaded") + log_count(c, "config reload refused");
    let before = outcomes(collector);
    collector.signal("HUP").await?;
    eventually(
        PATIENCE,
        "the collector logs the reload's outcome",
        || async { (outcomes(collector) > before).then_some(()) },
    )
    .await
}

/// The leaf certificate (DER) a new TLS connection to `addr` is served,
/// presenting `client`.
async fn served_certificate(
    addr: SocketAddr,
    ca: &Path,
    client: &(PathBuf, PathBuf),
) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        CertificateDer::pem_file_iter(&client.0)?.collect::<Result<Vec<_>, _>>()?,
        PrivateKeyDer::from_pem_file(&client.1)?,
    )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .context("TLS handshake with the collector")?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the collector presented no certificate")?;
    Ok(leaf.to_vec())
}

/// The first certificate of a PEM file, DER.
fn pem_certificate(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let cert = CertificateDer::pem_file_iter(path)?
        .next()
        .context("no certificate in the file")??;
    Ok(cert.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_streams_go_on() -> Result<()> {
    let dir = TestDir::new("reload-cert")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let http = free_addr()?;
    let config = format!("http_listen = \"{http}\"\n{MTLS}");
    let mut collector = start_collector(&dir, addr, &config).await?;
    wait_for_port(http, PATIENCE).await?;
    let db = dir.join("collector.db");
    let old = pem_certificate(&dir.join("collector.pem"))?;
    for listener in [addr, http] {
        ensure!(
            served_certificate(listener, &pki.ca, &pki.operator).await? == old,
            "before the reload, {listener} serves the first certificate"
        );
    }

    let config = sim_agent_config("edge-1", std::slice::from_ref(&url), 3, "20ms")
        + &agent_tls(&pki.ca, Some(&pki.edge1));
    let mut agent = Agent::start(&dir, "edge-1", &config, "")?;
    wait_for_counters(&db, "edge-1", 3, 10).await?;
    let before = agent.uplink_stats()?;
    ensure!(
        before.connects == 1 && before.streams_ended == 0,
        "{before:?}"
    );

    // A new certificate for the same address, from the same CA (a new key,
    // so a new serial), moved over the configured files.
    let (cert, key) =
        pki.authority
            .issue(dir.path(), "collector-next", "127.0.0.1", true, valid_now())?;
    let new = pem_certificate(&cert)?;
    ensure!(new != old);
    std::fs::rename(&key, dir.join("collector.key"))?;
    std::fs::rename(&cert, dir.join("collector.pem"))?;
    reload(&collector).await?;
    ensure!(
        log_count(&collector, "config reloaded") == 1,
        "{}",
        collector.log()
    );

    // Both listeners, gRPC and HTTP.
    for listener in [addr, http] {
        ensure!(
            served_certificate(listener, &pki.ca, &pki.operator).await? == new,
            "after the reload, a new connection to {listener} is served the new certificate"
        );
    }
    // A new agent stream handshakes with it too.
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge2))?, "edge-2")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-2 after the rotation: {s:?}"))?;

    // The stream opened before the reload goes on: more batches acked on it,
    // and still one connect and no stream ended.
    let acked = agent.uplink_stats()?.acked_seq;
    eventually(
        PATIENCE,
        "20 more batches acked on the old stream",
        || async {
            agent
                .uplink_stats()
                .ok()
                .filter(|s| s.acked_seq >= acked + 20)
                .map(drop)
        },
    )
    .await?;
    let after = agent.uplink_stats()?;
    ensure!(
        after.connects == 1 && after.streams_ended == 0 && after.connect_failures == 0,
        "the agent reconnected across the reload: {after:?}"
    );
    let log = collector.log();
    let connected = |id: &str| {
        log.lines()
            .filter(|l| l.contains("agent connected") && l.contains(&format!("agent={id} ")))
            .count()
    };
    ensure!(
        connected("edge-1") == 1 && connected("edge-2") == 1,
        "one stream of edge-1 and one of edge-2:\n{log}"
    );

    agent.stop().await?;
    assert_exactly_once(&counters(&db, "edge-1")?, 3)?;
    collector.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_taken_off_allowed_agents_is_closed_and_refused() -> Result<()> {
    let dir = TestDir::new("reload-allow")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let both = format!("allowed_agents = [\"edge-1\", \"edge-2\"]\n{MTLS}");
    let mut collector = start_collector(&dir, addr, &both).await?;
    let db = dir.join("collector.db");

    let mut agents = Vec::new();
    for (id, cert) in [("edge-1", &pki.edge1), ("edge-2", &pki.edge2)] {
        let config = sim_agent_config(id, std::slice::from_ref(&url), 2, "20ms")
            + &agent_tls(&pki.ca, Some(cert));
        agents.push(Agent::start(&dir, id, &config, "")?);
    }
    wait_for_counters(&db, "edge-1", 2, 5).await?;
    wait_for_counters(&db, "edge-2", 2, 5).await?;

    write_config(
        &dir,
        addr,
        &format!("allowed_agents = [\"edge-1\"]\n{MTLS}"),
    )?;
    reload(&collector).await?;
    ensure!(
        log_count(&collector, "config reloaded") == 1,
        "{}",
        collector.log()
    );

    // edge-2's open stream is ended by the collector...
    eventually(PATIENCE, "edge-2's stream ends", || async {
        agents[1]
            .uplink_stats()
            .ok()
            .filter(|s| s.streams_ended >= 1)
            .map(drop)
    })
    .await?;
    ensure!(
        log_count(&collector, "no longer in allowed_agents") == 1,
        "{}",
        collector.log()
    );
    // ...and a new one is refused at its Hello.
    let refused = try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge2))?, "edge-2")
        .await?
        .err()
        .context("edge-2 streamed after it was taken off allowed_agents")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied
            && refused.message().contains("not an allowed agent"),
        "{refused:?}"
    );

    // edge-1 is untouched: the same stream, still acked.
    let acked = agents[0].uplink_stats()?.acked_seq;
    eventually(PATIENCE, "edge-1 acked further", || async {
        agents[0]
            .uplink_stats()
            .ok()
            .filter(|s| s.acked_seq >= acked + 10)
            .map(drop)
    })
    .await?;
    let edge1 = agents[0].uplink_stats()?;
    ensure!(edge1.connects == 1 && edge1.streams_ended == 0, "{edge1:?}");

    for agent in &mut agents {
        agent.stop().await?;
    }
    // Whatever edge-2 got in before, it got in once.
    assert_exactly_once(&counters(&db, "edge-1")?, 2)?;
    assert_exactly_once(&counters(&db, "edge-2")?, 2)?;
    collector.kill().await?;
    Ok(())
}

/// `/metrics` of a mutual TLS collector, as the operator.
async fn scrape(http: SocketAddr, pki: &Pki) -> Result<String> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?;
    let mut pem = std::fs::read(&pki.operator.0)?;
    pem.extend(std::fs::read(&pki.operator.1)?);
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .identity(reqwest::Identity::from_pem(&pem)?)
        .build()?;
    let response = client.get(format!("https://{http}/metrics")).send().await?;
    ensure!(response.status() == 200, "/metrics: {}", response.status());
    Ok(response.text().await?)
}

/// The value of an unlabelled sample in a scrape.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reloads_change_nothing_and_are_counted() -> Result<()> {
    let dir = TestDir::new("reload-refused")?;
    let pki = Pki::new(dir.path())?;
    let (addr, http) = (free_addr()?, free_addr()?);
    let url = format!("https://{addr}");
    let base = format!("http_listen = \"{http}\"\n{MTLS}");
    let mut collector = start_collector(
        &dir,
        addr,
        &format!("allowed_agents = [\"edge-1\"]\n{base}"),
    )
    .await?;
    wait_for_port(http, PATIENCE).await?;
    let edge1 = || client_tls(&pki.ca, Some(&pki.edge1));

    // A file that does not load (and would have changed the allowlist).
    write_config(
        &dir,
        addr,
        &format!("allowed_agents = [\"edge-9\"]\n{base}\n[limits]\nmax_connections = 0\n"),
    )?;
    reload(&collector).await?;
    let log = collector.log();
    ensure!(
        log.contains("config reload refused")
            && log.contains("collector.toml:")
            && log.contains("limits.max_connections: 0: expected a whole number"),
        "{log}"
    );
    try_ingest(&url, edge1()?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-1 after a refused reload: {s:?}"))?;

    // A moved listener.
    let elsewhere = free_addr()?;
    std::fs::write(
        dir.join("collector.toml"),
        format!(
            "listen = \"{elsewhere}\"\nstore = \"sqlite:collector.db\"\nallowed_agents = [\"edge-9\"]\n{base}"
        ),
    )?;
    reload(&collector).await?;
    ensure!(
        collector.log().contains(&format!(
            "listen changed from {addr} to {elsewhere}: a restart is needed to apply it"
        )),
        "{}",
        collector.log()
    );

    // A setting fixed while the collector runs.
    write_config(
        &dir,
        addr,
        &format!("allowed_agents = [\"edge-9\"]\n{base}\n[limits]\nkeepalive_interval = \"20s\"\n"),
    )?;
    reload(&collector).await?;
    ensure!(
        collector
            .log()
            .contains("limits.keepalive_interval changed: a restart is needed to apply it"),
        "{}",
        collector.log()
    );
    try_ingest(&url, edge1()?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-1 after three refused reloads: {s:?}"))?;

    let metrics = scrape(http, &pki).await?;
    ensure!(
        sample(&metrics, "tributary_collector_config_reload_failures_total") == Some(3.0)
            && sample(&metrics, "tributary_collector_config_reloads_total") == Some(0.0),
        "{metrics}"
    );

    // A valid one applies.
    write_config(
        &dir,
        addr,
        &format!("allowed_agents = [\"edge-9\"]\n{base}"),
    )?;
    reload(&collector).await?;
    let refused = try_ingest(&url, edge1()?, "edge-1")
        .await?
        .err()
        .context("edge-1 streamed after it was taken off allowed_agents")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied,
        "{refused:?}"
    );
    let metrics = scrape(http, &pki).await?;
    ensure!(
        sample(&metrics, "tributary_collector_config_reload_failures_total") == Some(3.0)
            && sample(&metrics, "tributary_collector_config_reloads_total") == Some(1.0),
        "{metrics}"
    );
    collector.kill().await?;
    Ok(())
}

/// Exports by difference: added by a reload (from the end of the commit
/// log), changed (restarted from its cursor), removed (its cursor gone);
/// what VictoriaMetrics received is, per counter, one run without a gap
/// whose every value is the stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_added_restarted_and_removed_by_a_reload() -> Result<()> {
    use std::collections::BTreeMap;
    use tributary_tests::cluster::Collector;
    use tributary_tests::peers::receivers::{Kind, Receiver};

    let dir = TestDir::new("reload-exports")?;
    let rx = Receiver::start(&dir, Kind::Victoria, "victoria").await?;
    let path = dir.join("collector.toml");
    std::fs::write(&path, "")?;
    let config = path.display().to_string();
    let mut collector = Collector::start_with(&dir, free_addr()?, &["--config", &config]).await?;
    let agent_config = sim_agent_config("rw-0", &[collector.url()], 2, "20ms");
    let mut agent = Agent::start(&dir, "rw-0", &agent_config, "")?;
    wait_for_counters(&collector.db, "rw-0", 2, 10).await?;

    let export = |shards: u32| {
        format!(
            "[[exports]]\nname = \"rx\"\nkind = \"remote_write\"\nurl = \"{}\"\nshards = {shards}\n\
             max_backoff = \"1s\"\ntimeout = \"5s\"\n",
            rx.write_url()
        )
    };
    let received = || async {
        let raw = rx.raw("counter").await.ok()?;
        Some(raw.values().map(Vec::len).sum::<usize>())
    };
    for (file, outcome, more) in [
        (export(4), "added [\"rx\"]", true),
        (export(2), "restarted [\"rx\"]", true),
        (String::new(), "removed [\"rx\"]", false),
    ] {
        let before = received().await.unwrap_or(0);
        std::fs::write(&path, file)?;
        reload(&collector.proc).await?;
        ensure!(
            collector.log().contains(outcome),
            "expected {outcome}:\n{}",
            collector.log()
        );
        if more {
            eventually(PATIENCE, "the receiver gets 40 more samples", || async {
                received().await.filter(|&n| n >= before + 40).map(drop)
            })
            .await?;
        }
    }
    agent.stop().await?;

    let stored = counters(&collector.db, "rw-0")?;
    assert_exactly_once(&stored, 2)?;
    let raw = rx.raw("counter").await?;
    ensure!(raw.len() == 2, "{} series received", raw.len());
    for (labels, samples) in &raw {
        let device = labels.get("device").cloned().unwrap_or_default();
        let truth: BTreeMap<i64, f64> = stored
            .get(&device)
            .with_context(|| format!("{device}: received, not stored"))?
            .iter()
            .map(|p| (p.ts_ns.div_euclid(1_000_000), p.value as f64))
            .collect();
        let mut run: Vec<f64> = Vec::new();
        let mut last_ts = None;
        for &(ts, v) in samples {
            ensure!(
                truth.get(&ts) == Some(&v),
                "{device}: {v} at {ts} was not stored so"
            );
            if last_ts == Some(ts) {
                continue; // the page in flight at the restart, sent again
            }
            last_ts = Some(ts);
            run.push(v);
        }
        ensure!(run.len() >= 40, "{device}: only {} samples", run.len());
        ensure!(
            run.windows(2).all(|w| w[1] == w[0] + 1.0),
            "{device}: a gap or a repeat in what was exported: {run:?}"
        );
    }
    // The removed export's cursor is gone (with no export left, the log).
    let db = rusqlite::Connection::open(&collector.db)?;
    let cursors: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'export_cursors'",
        [],
        |r| r.get(0),
    )?;
    ensure!(cursors == 0, "export_cursors still there");
    collector.proc.kill().await?;
    Ok(())
}

/// `client_ca` is reloaded too: a CA added to the bundle lets its agents
/// in from the next handshake, a CA taken out keeps its agents out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_client_ca_bundle_applies_to_new_handshakes() -> Result<()> {
    let dir = TestDir::new("reload-client-ca")?;
    let pki = Pki::new(dir.path())?;
    // Another CA, with its own edge-1, in a directory of its own.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir)?;
    let other = Pki::new(&other_dir)?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let mut collector = start_collector(&dir, addr, MTLS).await?;
    // The client trusts the collector's CA and presents the other CA's
    // certificate.
    let stranger = || client_tls(&pki.ca, Some(&other.edge1));
    ensure!(
        try_ingest(&url, stranger()?, "edge-1").await?.is_err(),
        "a certificate of an untrusted CA streamed"
    );

    let mut both = std::fs::read(&pki.ca)?;
    both.extend(std::fs::read(&other.ca)?);
    std::fs::write(dir.join("both.pem"), both)?;
    let with = |ca: &str| MTLS.replace("client_ca = \"ca.pem\"", &format!("client_ca = \"{ca}\""));
    write_config(&dir, addr, &with("both.pem"))?;
    reload(&collector).await?;
    try_ingest(&url, stranger()?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("the added CA's edge-1 after the reload: {s:?}"))?;
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("the first CA's edge-1 after the reload: {s:?}"))?;

    write_config(&dir, addr, &with("other/ca.pem"))?;
    reload(&collector).await?;
    ensure!(
        log_count(&collector, "config reloaded") == 2,
        "{}",
        collector.log()
    );
    ensure!(
        try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
            .await?
            .is_err(),
        "the removed CA's certificate streamed"
    );
    try_ingest(&url, stranger()?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("the remaining CA's edge-1: {s:?}"))?;
    collector.kill().await?;
    Ok(())
}
