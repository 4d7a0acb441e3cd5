//! The collector's HTTP listener (`http_listen`): what it serves, who may
//! call it under mutual TLS (the Query rule: operators only), and that a
//! client trickling its headers loses its connection slot instead of
//! holding it.

mod tls_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tributary_collector::http::HttpLimits;
use tributary_collector::server::{self, ServerConfig};
use tributary_tests::cluster::{Collector, PATIENCE};
use tributary_tests::process::{TestDir, free_addr, wait_for_port};

use tls_support::{MTLS, Pki, start_collector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_buildinfo_and_unknown_paths() -> Result<()> {
    let dir = TestDir::new("http-basics")?;
    let collector = Collector::start(&dir, free_addr()?).await?;
    let base = collector.http_url();
    let client = reqwest::Client::new();

    let healthy = client.get(format!("{base}/-/healthy")).send().await?;
    ensure!(healthy.status() == 200, "healthy: {}", healthy.status());
    ensure!(healthy.text().await?.contains("Healthy"));
    let ready = client.get(format!("{base}/-/ready")).send().await?;
    ensure!(ready.status() == 200, "ready: {}", ready.status());

    let text = client
        .get(format!("{base}/api/v1/status/buildinfo"))
        .send()
        .await?
        .text()
        .await?;
    // Prometheus's keys in Prometheus's order.
    ensure!(
        text.starts_with(r#"{"status":"success","data":{"version":""#)
            && text.contains(r#""buildUser":"","buildDate":"","goVersion":"""#),
        "{text}"
    );
    let info: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(info["status"] == "success", "{info}");
    ensure!(
        info["data"]["version"] == env!("CARGO_PKG_VERSION"),
        "{info}"
    );

    let missing = client.get(format!("{base}/no/such/page")).send().await?;
    ensure!(
        missing.status() == 404,
        "unknown path: {}",
        missing.status()
    );
    ensure!(missing.text().await?.contains("/no/such/page"));
    Ok(())
}

/// Under mutual TLS the HTTP API is the Query service's: an operator's
/// certificate is served, an agent's gets 403, none fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_operators_in_and_keeps_agents_out() -> Result<()> {
    let dir = TestDir::new("http-mtls")?;
    let pki = Pki::new(dir.path())?;
    let (addr, http) = (free_addr()?, free_addr()?);
    let mut collector =
        start_collector(&dir, addr, &format!("http_listen = \"{http}\"\n{MTLS}")).await?;
    wait_for_port(http, PATIENCE).await?;
    let url = format!("https://{http}/api/v1/status/buildinfo");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?;
    let client =
        |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| -> Result<reqwest::Client> {
            let mut b = reqwest::Client::builder()
                .add_root_certificate(ca.clone())
                .tls_built_in_root_certs(false);
            if let Some((cert, key)) = cert {
                let mut pem = std::fs::read(cert)?;
                pem.extend(std::fs::read(key)?);
                b = b.identity(reqwest::Identity::from_pem(&pem)?);
            }
            Ok(b.build()?)
        };

    let operator = client(Some(&pki.operator))?.get(&url).send().await?;
    ensure!(operator.status() == 200, "operator: {}", operator.status());

    let agent = client(Some(&pki.edge1))?.get(&url).send().await?;
    ensure!(agent.status() == 403, "agent: {}", agent.status());
    let why = agent.text().await?;
    ensure!(
        why.contains("\"edge-1\"") && why.contains("not an operator"),
        "{why}"
    );
    // Health reveals nothing: any certificate that passed the handshake.
    let health = client(Some(&pki.edge1))?
        .get(format!("https://{http}/-/healthy"))
        .send()
        .await?;
    ensure!(health.status() == 200, "health: {}", health.status());

    let anonymous = client(None)?.get(&url).send().await;
    ensure!(
        anonymous.is_err(),
        "no certificate, and query_requires_client_cert is on by default: {anonymous:?}"
    );
    collector.kill().await?;
    Ok(())
}

/// Two slots, both taken by clients that send half a request line and
/// stop: a third client is still answered once the header deadline frees
/// them, and the trickling connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_loses_its_slot() -> Result<()> {
    let dir = TestDir::new("http-slowloris")?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http.local_addr()?;
    let mut config = ServerConfig::new(dir.join("collector.db"));
    config.http_limits = HttpLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run_with_http(
        grpc,
        Some(http),
        config,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(http_addr).await?;
        s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")
            .await?;
        slow.push(s);
    }
    let answered = tokio::time::timeout(PATIENCE, async {
        let mut s = TcpStream::connect(http_addr).await?;
        s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    })
    .await
    .context("the third client was never answered")??;
    ensure!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    for mut s in slow {
        let mut rest = Vec::new();
        // Closed by the server (possibly after a 408): reading ends.
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
            .await
            .context("a trickling connection was kept open")??;
        let rest = String::from_utf8_lossy(&rest);
        ensure!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{rest}"
        );
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}
