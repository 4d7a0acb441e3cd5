//! Roles under mutual TLS, with the real collector binary: an agent's
//! certificate may stream as its agent and may not call Query; an
//! operator's certificate (`operators`, by default the `operator` identity
//! `cargo xtask certs` writes) may call Query and may not stream. And TLS
//! without `client_ca` on a non-loopback address, where agent ids are not
//! authenticated: refused unless allowed explicitly, with a warning when it
//! is.

mod tls_support;

use anyhow::{Context, Result, ensure};
use tonic::transport::Channel;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{self, PATIENCE};
use tributary_tests::process::{Proc, TestDir, bin_path, free_addr, wait_for_port};

use tls_support::{MTLS, Pki, client_tls, query_client, start_collector, try_ingest, valid_now};

/// Calls every Query RPC once; the status of each (`Ok(())` when the call
/// was answered), named.
async fn every_query(
    client: &mut pb::query_client::QueryClient<Channel>,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let filter = pb::SeriesFilter::default();
    vec![
        (
            "ListAgents",
            client
                .list_agents(pb::ListAgentsRequest::default())
                .await
                .map(drop),
        ),
        (
            "ListSeries",
            client
                .list_series(pb::ListSeriesRequest::default())
                .await
                .map(drop),
        ),
        ("Latest", client.latest(filter.clone()).await.map(drop)),
        (
            "Range",
            client
                .range(pb::RangeRequest {
                    filter: Some(filter.clone()),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        ("Tail", client.tail(filter).await.map(drop)),
        (
            "ListExports",
            client
                .list_exports(pb::ListExportsRequest {})
                .await
                .map(drop),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_may_not_query_and_the_operator_may_not_stream() -> Result<()> {
    let dir = TestDir::new("tls-roles")?;
    let pki = Pki::new(dir.path())?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let mut collector = start_collector(&dir, addr, MTLS).await?;

    // edge-1 streams as itself (something to read)...
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.edge1))?, "edge-1")
        .await?
        .map_err(|s| anyhow::anyhow!("edge-1 as itself refused: {s:?}"))?;
    // ...and reads nothing.
    let mut agent = query_client(&url, client_tls(&pki.ca, Some(&pki.edge1))?).await?;
    for (rpc, result) in every_query(&mut agent).await {
        let status = result
            .err()
            .with_context(|| format!("{rpc} with edge-1's certificate was answered"))?;
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{rpc}: {status:?}"
        );
        assert_eq!(
            status.message(),
            "query: the client certificate identity \"edge-1\" is not an operator: \
             only the identities in `operators` may call Query",
            "{rpc}"
        );
    }

    // The operator reads everything...
    let mut operator = query_client(&url, client_tls(&pki.ca, Some(&pki.operator))?).await?;
    for (rpc, result) in every_query(&mut operator).await {
        result.map_err(|s| anyhow::anyhow!("{rpc} with the operator certificate: {s:?}"))?;
    }
    let agents = operator
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner()
        .agents;
    ensure!(
        agents.iter().any(|a| a.id == "edge-1"),
        "operator: {agents:?}"
    );

    // ...and may not stream, as itself or as an agent.
    for id in ["operator", "edge-2"] {
        let status = try_ingest(&url, client_tls(&pki.ca, Some(&pki.operator))?, id)
            .await?
            .err()
            .with_context(|| format!("the operator certificate streaming as {id} was welcomed"))?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            "hello: the client certificate identity \"operator\" is an operator: \
             the identities in `operators` may not stream",
            "as {id}"
        );
    }
    collector.terminate(PATIENCE).await?;
    let log = collector.log();
    ensure!(
        log.contains("query refused") && log.contains("stream refused"),
        "refusals are logged: {log}"
    );
    let db = dir.join("collector.db");
    for id in ["operator", "edge-2"] {
        assert_eq!(cluster::stored_count(&db, id)?, 0, "{id} got rows stored");
    }
    Ok(())
}

/// `operators` names who may query; everyone else (the `operator`
/// certificate included, once it is not listed) is an agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_key_names_who_may_query() -> Result<()> {
    let dir = TestDir::new("tls-roles-key")?;
    let pki = Pki::new(dir.path())?;
    let ops = pki
        .authority
        .issue(dir.path(), "ops-1", "ops-1", false, valid_now())?;
    let addr = free_addr()?;
    let url = format!("https://{addr}");
    let _collector =
        start_collector(&dir, addr, &format!("operators = [\"ops-1\"]\n{MTLS}")).await?;

    query_client(&url, client_tls(&pki.ca, Some(&ops))?)
        .await?
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .context("ops-1 is an operator")?;
    let status = query_client(&url, client_tls(&pki.ca, Some(&pki.operator))?)
        .await?
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .err()
        .context("the operator certificate is not listed, yet it could query")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    try_ingest(&url, client_tls(&pki.ca, Some(&pki.operator))?, "operator")
        .await?
        .map_err(|s| anyhow::anyhow!("\"operator\" is an agent here, yet refused: {s:?}"))?;
    let status = try_ingest(&url, client_tls(&pki.ca, Some(&ops))?, "ops-1")
        .await?
        .err()
        .context("ops-1 streamed")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    Ok(())
}

/// A collector started with `config` (its `listen` included) and `args`,
/// its output in `log` (appended to: give each run its own).
fn spawn_collector(dir: &TestDir, config: &str, args: &[&str], log: &str) -> Result<Proc> {
    let path = dir.join("collector.toml");
    std::fs::write(&path, config)?;
    Proc::builder("tributary-collector")?
        .args(["serve", "--http-listen", "off"])
        .arg("--config")
        .arg(&path)
        .args(args)
        .log_to(dir.join(log))
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_ca_off_loopback_needs_an_explicit_yes() -> Result<()> {
    let dir = TestDir::new("tls-no-client-ca")?;
    let pki = Pki::new(dir.path())?;
    let port = free_addr()?.port();
    let listen = format!("0.0.0.0:{port}");
    let base = format!(
        "listen = \"{listen}\"\nstore = \"sqlite:collector.db\"\n\
         [tls]\ncert = \"collector.pem\"\nkey = \"collector.key\"\n"
    );
    let path = dir.join("collector.toml");

    // Refused before it listens: status 2 and one located line.
    std::fs::write(&path, &base)?;
    let run = tokio::process::Command::new(bin_path("tributary-collector")?)
        .args(["serve", "--http-listen", "off", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .context("the collector started instead of refusing its config")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: {}:1: listen: {listen} is not a loopback address and [tls] has no \
             client_ca, so any client could stream as any agent id: set tls.client_ca (see \
             README \"Mutual TLS\"), or allow it explicitly with \
             allow_unauthenticated_agents = true or --allow-unauthenticated-agents\n",
            path.display()
        )
    );

    // Allowed by the key, or by the flag: it serves, says so once, and any
    // client may stream as any agent id.
    let allowed_by_key = base.replacen("[tls]", "allow_unauthenticated_agents = true\n[tls]", 1);
    let cases = [
        (
            allowed_by_key.as_str(),
            &["--allow-unauthenticated-agents"][..0],
        ),
        (base.as_str(), &["--allow-unauthenticated-agents"][..]),
    ];
    for (i, (config, args)) in cases.into_iter().enumerate() {
        let mut collector = spawn_collector(&dir, config, args, &format!("collector-{i}.log"))?;
        let addr = format!("127.0.0.1:{port}").parse()?;
        wait_for_port(addr, PATIENCE).await?;
        let url = format!("https://{addr}");
        try_ingest(&url, client_tls(&pki.ca, None)?, "anyone")
            .await?
            .map_err(|s| anyhow::anyhow!("an unauthenticated stream was refused: {s:?}"))?;
        collector.terminate(PATIENCE).await?;
        let log = collector.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("without client_ca"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning with {args:?}: {log}");
        ensure!(
            warnings[0].contains(&format!(
                "serving TLS without client_ca on {listen}: agent ids are not authenticated, \
                 any client may stream as any agent id"
            )),
            "{log}"
        );
    }
    Ok(())
}
