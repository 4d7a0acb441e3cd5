//! Mutual TLS and agent identity, with the real collector and agent
//! binaries: a collector with `[tls] client_ca`, a good agent streaming
//! throughout, and agents that must be refused (no certificate, a
//! certificate from another CA, an expired one, and a valid `edge-1`
//! certificate claiming to be `edge-2`). Each refusal is checked twice: the
//! exact status a raw client gets, and a real agent process that never gets
//! a row stored. The good agent's counters must still be 1..n.
//!
//! Also: grpcurl and the CLI with the operator certificate (and refused
//! without it, or with an agent's), Query without client certificates when
//! the collector allows it (Ingest still refuses, an agent's certificate
//! still may not query), the allowlist, and `cargo xtask certs`. The roles
//! themselves are `tls_roles.rs`.

mod tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use time::OffsetDateTime;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{
    self, Agent, PATIENCE, assert_exactly_once, counters, sim_agent_config, wait_for_counters,
};
use tributary_tests::process::{TestDir, free_addr, run_bin};

use tls_support::{
    Ca, MTLS, Pki, agent_tls, client_tls, query_client, start_collector, try_ingest,
};

/// A raw TLS handshake with the collector, then a read: the TLS alert the
/// collector answers a bad client certificate with, as text. (In TLS 1.3
/// the client finishes its side before the server has judged its
/// certificate, so the verdict arrives as an alert on the first read; what a
/// gRPC client reports instead depends on what it was doing at the time.)
async fn tls_refusal(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Ok(e.to_string()),
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PATIENCE, tls.read(&mut buf)).await? {
        Err(e) => Ok(e.to_string()),
        Ok(n) => bail!("the collector accepted the handshake (read {n} bytes)"),
    }
}

/// Readings stored for `agent` (any metric).
fn rows_of(db: &Path, agent: &str) -> Result<i64> {
    Ok(cluster::stored_count(db, agent)? as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_bad_certificates_and_keeps_the_good_agent_exactly_once() -> Result<()> {
    let dir = TestDir::new("tls-identity")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let mut collector = start_collector(&dir, addr, MTLS).await?;
    let db = dir.join("collector.db");

    // The good agent streams before, during and after every refusal.
    let good = sim_agent_config("edge-2", std::slice::from_ref(&url), 2, "20ms")
        + &agent_tls(&pki.ca, Some(&pki.edge2));
    let mut good = Agent::start(&dir, "edge-2", &good, "")?;
    wait_for_counters(&db, "edge-2", 2, 5).await?;

    // Real agents that must never get a row in: no certificate, another
    // CA's certificate, an expired certificate, and edge-1's certificate in
    // an agent that says it is edge-2 (with edge-2's device names: any of
    // its readings stored would break edge-2's exactly-once check).
    let bad_agents = [
        ("no-cert", "edge-5", agent_tls(&pki.ca, None)),
        ("foreign", "edge-3", agent_tls(&pki.ca, Some(&pki.foreign))),
        ("expired", "edge-4", agent_tls(&pki.ca, Some(&pki.expired))),
        ("liar", "edge-2", agent_tls(&pki.ca, Some(&pki.edge1))),
    ];
    let mut running = Vec::new();
    for (file, id, tls) in &bad_agents {
        let config = sim_agent_config(id, std::slice::from_ref(&url), 1, "20ms") + tls;
        running.push(Agent::start(&dir, file, &config, "")?);
    }

    // The same refusals at the TLS layer, for the exact alert...
    let cases = [
        ("no certificate", None, "CertificateRequired"),
        ("another CA", Some(&pki.foreign), "UnknownCA"),
        ("expired", Some(&pki.expired), "CertificateExpired"),
    ];
    for (what, client, alert) in cases {
        let refusal = tls_refusal(addr, &pki.ca, client).await?;
        ensure!(
            refusal.contains(&format!("received fatal alert: {alert}")),
            "{what}: expected alert {alert}, got {refusal:?}"
        );
    }
    // ...and through gRPC, where the call fails before Ingest sees it.
    for (what, client, agent) in [
        ("no certificate", None, "edge-5"),
        ("another CA", Some(&pki.foreign), "edge-3"),
        ("expired", Some(&pki.expired), "edge-4"),
    ] {
        let status = try_ingest(&url, client_tls(&pki.ca, client)?, agent)
            .await?
            .err()
            .with_context(|| format!("{what}: the collector welcomed the stream"))?;
        ensure!(
            !matches!(
                status.code(),
                tonic::Code::Ok | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "{what}: expected a transport failure, got {status:?}"
        );
    }
    let status = try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-2")
        .await?
        .err()
        .context("edge-1 claiming edge-2 was welcomed")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("\"edge-2\" does not match the client certificate identity \"edge-1\""),
        "{status:?}"
    );
    // edge-1 speaking as itself is fine (no allowlist here).
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-1 as itself refused: {s:?}"))?;

    // The real edge-1-cert agent was told why.
    let liar = &running[3];
    cluster_eventually("the agent claiming edge-2 logs the refusal", || {
        liar.log()
            .contains("does not match the client certificate identity \\\"edge-1\\\"")
            || liar
                .log()
                .contains("does not match the client certificate identity \"edge-1\"")
    })
    .await
    .with_context(|| liar.log())?;

    // The good agent kept streaming throughout.
    let before = counters(&db, "edge-2")?
        .values()
        .map(Vec::len)
        .min()
        .unwrap_or(0);
    wait_for_counters(&db, "edge-2", 2, before + 10).await?;
    good.stop().await?;
    for agent in &mut running {
        agent.proc.kill().await?;
    }
    collector.terminate(PATIENCE).await?;

    for id in ["edge-3", "edge-4", "edge-5"] {
        assert_eq!(rows_of(&db, id)?, 0, "{id} got rows stored");
    }
    assert_eq!(rows_of(&db, "edge-1")?, 1, "edge-1's own test batch");
    let total = assert_exactly_once(&counters(&db, "edge-2")?, 2)?;
    ensure!(
        total >= 2 * (before as u64 + 10),
        "edge-2: only {total} readings"
    );
    Ok(())
}

/// [`tributary_tests::process::eventually`] for a plain condition.
async fn cluster_eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    tributary_tests::process::eventually(PATIENCE, what, || {
        let ok = check();
        async move { ok.then_some(()) }
    })
    .await
}

fn grpcurl() -> Result<PathBuf> {
    let path = std::env::var_os("TRIBUTARY_GRPCURL")
        .map(PathBuf::from)
        .context("TRIBUTARY_GRPCURL is not set: run the tests with `cargo xtask test`")?;
    ensure!(path.is_file(), "{} is not a file", path.display());
    Ok(path)
}

async fn run_grpcurl(args: &[&str]) -> Result<std::process::Output> {
    Ok(tokio::process::Command::new(grpcurl()?)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_certificate_opens_query_to_grpcurl_and_the_cli() -> Result<()> {
    let dir = TestDir::new("tls-operator")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let _collector = start_collector(&dir, addr, MTLS).await?;
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.operator.0.display().to_string(),
        pki.operator.1.display().to_string(),
    );
    let target = addr.to_string();

    let out = run_grpcurl(&[
        "-cacert", &ca, "-cert", &cert, "-key", &key, &target, "list",
    ])
    .await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "grpcurl list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "tributary.v1.Query",
        "tributary.v1.Ingest",
        "grpc.health.v1.Health",
    ] {
        ensure!(
            listed.lines().any(|l| l == service),
            "{service} not listed: {listed}"
        );
    }
    let out = run_grpcurl(&[
        "-cacert",
        &ca,
        "-cert",
        &cert,
        "-key",
        &key,
        &target,
        "tributary.v1.Query/ListAgents",
    ])
    .await?;
    ensure!(
        out.status.success(),
        "grpcurl ListAgents: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent's certificate reaches reflection and health, not Query.
    let (agent_cert, agent_key) = (
        pki.edge1.0.display().to_string(),
        pki.edge1.1.display().to_string(),
    );
    let as_agent = [
        "-cacert",
        &ca,
        "-cert",
        &agent_cert,
        "-key",
        &agent_key,
        &target,
    ];
    let out = run_grpcurl(&[&as_agent[..], &["list"]].concat()).await?;
    ensure!(
        out.status.success(),
        "grpcurl list with an agent certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_grpcurl(&[&as_agent[..], &["grpc.health.v1.Health/Check"]].concat()).await?;
    ensure!(
        out.status.success(),
        "health with an agent certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_grpcurl(&[&as_agent[..], &["tributary.v1.Query/ListAgents"]].concat()).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("PermissionDenied") && stderr.contains("edge-1"),
        "ListAgents with an agent certificate: {stderr}"
    );

    // Without a client certificate the handshake is refused.
    let out = run_grpcurl(&["-cacert", &ca, &target, "list"]).await?;
    ensure!(
        !out.status.success(),
        "grpcurl without a certificate succeeded"
    );
    let out = run_grpcurl(&["-cacert", &ca, &target, "tributary.v1.Query/ListAgents"]).await?;
    ensure!(
        !out.status.success(),
        "ListAgents without a certificate succeeded"
    );

    // The CLI takes the same files.
    let server = format!("https://{addr}");
    let csv = run_bin(
        "tributary-collector",
        [
            "agents", "--server", &server, "--ca", &ca, "--cert", &cert, "--key", &key, "--format",
            "csv",
        ],
    )
    .await?;
    ensure!(csv.starts_with("id,"), "{csv}");
    let refused = run_bin(
        "tributary-collector",
        ["agents", "--server", &server, "--ca", &ca],
    )
    .await;
    ensure!(
        refused.is_err(),
        "the CLI without a certificate got {refused:?}"
    );
    let refused = run_bin(
        "tributary-collector",
        [
            "agents",
            "--server",
            &server,
            "--ca",
            &ca,
            "--cert",
            &agent_cert,
            "--key",
            &agent_key,
        ],
    )
    .await
    .err()
    .context("the CLI with an agent certificate listed the agents")?;
    ensure!(
        format!("{refused:#}").contains("is not an operator"),
        "{refused:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_required_client_certs_query_is_open_but_ingest_is_not() -> Result<()> {
    let dir = TestDir::new("tls-optional")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let config = format!("{MTLS}query_requires_client_cert = false\n");
    let _collector = start_collector(&dir, addr, &config).await?;
    let url = format!("https://{addr}");

    let status = try_ingest(&url, client_tls(&pki.ca, None)?, "edge-1")
        .await?
        .err()
        .context("ingest without a certificate was welcomed")?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    query_client(&url, client_tls(&pki.ca, None)?)
        .await?
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .context("Query without a certificate")?;
    // A certificate is still held to its role: an agent's may not query.
    let status = query_client(&url, client_tls(&pki.ca, Some(&pki.edge1))?)
        .await?
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .err()
        .context("Query with an agent certificate")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A certificate still sets the identity.
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-1 refused: {s:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_refuses_other_agent_ids() -> Result<()> {
    let dir = TestDir::new("tls-allowlist")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let config = format!("allowed_agents = [\"edge-2\"]\n{MTLS}");
    let _collector = start_collector(&dir, addr, &config).await?;
    let url = format!("https://{addr}");

    // edge-1 has a valid certificate and claims its own id: not on the list.
    let status = try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
        .await?
        .err()
        .context("edge-1 was welcomed")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("not an allowed agent"),
        "{status:?}"
    );
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge2))?, "edge-2")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-2 refused: {s:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtask_certs_make_a_pki_that_agents_and_grpcurl_use() -> Result<()> {
    let dir = TestDir::new("tls-xtask-certs")?;
    let pki = dir.join("pki");
    run_bin(
        "xtask",
        [
            "certs",
            "--out",
            &pki.display().to_string(),
            "--agents",
            "edge-1,edge-2",
        ],
    )
    .await
    .context("xtask certs (the xtask binary is built by `cargo xtask`)")?;
    let addr = free_addr()?;
    let config = "allowed_agents = [\"edge-1\", \"edge-2\"]\n[tls]\ncert = \"pki/collector.pem\"\n\
                  key = \"pki/collector.key\"\nclient_ca = \"pki/ca.pem\"\n";
    let mut collector = start_collector(&dir, addr, config).await?;
    let db = dir.join("collector.db");
    // The README's agent config, with `localhost` (a name in the collector
    // certificate) in the URL.
    let url = format!("https://localhost:{}", addr.port());
    let tls = |id: &str| {
        format!(
            "\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/{id}.pem\"\nkey = \"{p}/{id}.key\"\n",
            p = pki.display()
        )
    };
    let mut agents = Vec::new();
    for id in ["edge-1", "edge-2"] {
        let config = sim_agent_config(id, std::slice::from_ref(&url), 1, "20ms") + &tls(id);
        agents.push(Agent::start(&dir, id, &config, "")?);
    }
    for id in ["edge-1", "edge-2"] {
        wait_for_counters(&db, id, 1, 5).await?;
    }
    let p = |f: &str| pki.join(f).display().to_string();
    let out = run_grpcurl(&[
        "-cacert",
        &p("ca.pem"),
        "-cert",
        &p("operator.pem"),
        "-key",
        &p("operator.key"),
        &format!("localhost:{}", addr.port()),
        "tributary.v1.Query/ListAgents",
    ])
    .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "grpcurl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(text.contains("edge-1") && text.contains("edge-2"), "{text}");
    for agent in &mut agents {
        agent.stop().await?;
    }
    collector.terminate(PATIENCE).await?;
    for id in ["edge-1", "edge-2"] {
        assert_exactly_once(&cluster::counters(&db, id)?, 1)?;
    }
    Ok(())
}

/// A bad `[tls]` file stops the collector before it listens: exit status 2
/// and one line naming the config file, line and key, the file, and the
/// cause, each once (word for word).
#[tokio::test]
async fn a_bad_certificate_file_is_one_line_naming_the_key_and_the_cause() -> Result<()> {
    let dir = TestDir::new("tls-bad-files")?;
    let now = OffsetDateTime::now_utc();
    let valid = (
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    let (cert, _) =
        Ca::new("Tributary test CA")?.issue(dir.path(), "collector", "127.0.0.1", true, valid)?;
    // Two files, so each case names one key (the config tells the keys
    // apart by path).
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "not a certificate\n")?;
    let other = dir.join("other.txt");
    std::fs::write(&other, "not a key either\n")?;
    let missing = dir.join("missing.pem");
    let config = dir.join("collector.toml");
    let cases = [
        (
            &missing,
            &other,
            format!(
                "5: tls.cert: {}: cannot read: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            &notes,
            &other,
            format!(
                "5: tls.cert: {}: no PEM certificate in the file",
                notes.display()
            ),
        ),
        (
            &cert,
            &notes,
            format!(
                "6: tls.key: {}: no PEM private key in the file",
                notes.display()
            ),
        ),
    ];
    for (cert, key, problem) in cases {
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstore = \"sqlite:collector.db\"\n\n[tls]\n\
                 cert = {cert:?}\nkey = {key:?}\n"
            ),
        )?;
        let out = tokio::process::Command::new(tributary_tests::process::bin_path(
            "tributary-collector",
        )?)
        .args(["serve", "--http-listen", "off", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr, format!("error: {}:{problem}\n", config.display()));
    }
    Ok(())
}
