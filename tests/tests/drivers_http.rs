//! The HTTP/Prometheus driver against the real `prometheus-node-exporter`
//! (plain, and with TLS from a private CA plus basic auth through its
//! `--web.config.file`), bearer auth against a header-checking server, and a
//! body that is not what the format says.

use std::io::Write as _;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tributary_agent::reading::Value;
use tributary_tests::http_sim::HttpSim;
use tributary_tests::peers::{self, device_config, poll_once, value_of};
use tributary_tests::process::TestDir;

/// bcrypt (cost 4) of "s3cret-pass", for the node exporter's basic auth.
const BCRYPT_S3CRET: &str = "$2b$04$KTiLGqMfKe8lnQxGdI9SfurTbGxGoejZd7gtH.iFC9blI/st8/dXW";

/// MemTotal from /proc/meminfo, in bytes: what node_memory_MemTotal_bytes
/// must say.
fn mem_total_bytes() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .context("MemTotal in /proc/meminfo")?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("MemTotal value")?
        .parse()?;
    Ok(kb * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_node_exporter() -> Result<()> {
    let dir = TestDir::new("http-node-exporter")?;
    let exporter = peers::node_exporter(&dir, None).await?;
    let device = device_config(
        "node-a",
        &format!(
            "driver = \"http\"\ninterval = \"10s\"\ntimeout = \"5s\"\nurl = \"http://{}/metrics\"\nformat = \"prometheus\"\n",
            exporter.addr
        ),
    )?;
    let samples = poll_once(&device)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", exporter.log()))?;
    assert_eq!(
        value_of(&samples, "node_memory_MemTotal_bytes"),
        Some(&Value::F64(mem_total_bytes()?)),
        "the exporter's own reading of /proc/meminfo"
    );
    let uname = samples
        .iter()
        .find(|s| s.metric == "node_uname_info")
        .context("node_uname_info")?;
    let sysname = std::fs::read_to_string("/proc/sys/kernel/ostype")?;
    assert_eq!(
        uname.labels.get("sysname").map(String::as_str),
        Some(sysname.trim())
    );
    assert!(samples.iter().any(|s| s.metric == "node_load1"));
    // `driver = "prometheus"` is the same scrape.
    let device = device_config(
        "node-b",
        &format!(
            "driver = \"prometheus\"\ninterval = \"10s\"\nurl = \"http://{}/metrics\"\n",
            exporter.addr
        ),
    )?;
    let again = poll_once(&device)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        again
            .iter()
            .any(|s| s.metric == "node_memory_MemTotal_bytes")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporter_with_tls_and_basic_auth() -> Result<()> {
    let dir = TestDir::new("http-node-exporter-tls")?;
    // A private CA and a server certificate for 127.0.0.1.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))?;
    let write = |name: &str, pem: String| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::File::create(&path)?.write_all(pem.as_bytes())?;
        Ok(path)
    };
    let ca_path = write("ca.pem", ca.pem())?;
    let cert_path = write("server.pem", cert.pem())?;
    let key_path = write("server-key.pem", key.serialize_pem())?;
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  scraper: {BCRYPT_S3CRET}\n",
        cert_path.display(),
        key_path.display()
    );
    let exporter = peers::node_exporter(&dir, Some(&web)).await?;
    let url = format!("https://{}/metrics", exporter.addr);
    let body = |auth: &str, ca: bool| {
        format!(
            "driver = \"prometheus\"\ninterval = \"10s\"\ntimeout = \"5s\"\nurl = \"{url}\"\n{auth}{}",
            if ca {
                format!("ca = \"{}\"\n", ca_path.display())
            } else {
                String::new()
            }
        )
    };

    let ok = device_config(
        "secure",
        &body("username = \"scraper\"\npassword = \"s3cret-pass\"\n", true),
    )?;
    let samples = poll_once(&ok)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", exporter.log()))?;
    assert_eq!(
        value_of(&samples, "node_memory_MemTotal_bytes"),
        Some(&Value::F64(mem_total_bytes()?))
    );

    let wrong = device_config(
        "secure",
        &body("username = \"scraper\"\npassword = \"nope\"\n", true),
    )?;
    let e = poll_once(&wrong).await.expect_err("wrong password");
    assert!(
        e.message.contains("401")
            && e.message
                .contains("authentication failure (basic auth rejected)"),
        "{e}"
    );

    let none = device_config("secure", &body("", true))?;
    let e = poll_once(&none).await.expect_err("no credentials");
    assert!(e.message.contains("no credentials configured"), "{e}");

    // Without the CA the certificate is not trusted, and the message says so.
    let untrusted = device_config(
        "secure",
        &body(
            "username = \"scraper\"\npassword = \"s3cret-pass\"\n",
            false,
        ),
    )?;
    let e = poll_once(&untrusted).await.expect_err("untrusted");
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_sent() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = sock.read(&mut buf).await else {
                    return;
                };
                let request = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let (status, body) = if request.contains("authorization: bearer t0ken-42") {
                    ("200 OK", "up_metric 1\n")
                } else {
                    ("401 Unauthorized", "")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    let body = |token: &str| {
        format!(
            "driver = \"prometheus\"\ninterval = \"1s\"\nurl = \"http://{addr}/metrics\"\nbearer_token = \"{token}\"\n"
        )
    };
    let samples = poll_once(&device_config("b", &body("t0ken-42"))?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(value_of(&samples, "up_metric"), Some(&Value::F64(1.0)));
    let e = poll_once(&device_config("b", &body("wrong"))?)
        .await
        .expect_err("rejected");
    assert!(e.message.contains("bearer token rejected"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_not_in_the_announced_format() -> Result<()> {
    let sim = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    // JSON served where Prometheus text is expected.
    let dev = device_config(
        "wrong-format",
        &format!(
            "driver = \"prometheus\"\ninterval = \"1s\"\nurl = \"{}\"\n",
            sim.url("/meter")
        ),
    )?;
    let e = poll_once(&dev).await.expect_err("not prometheus text");
    assert!(e.message.contains("line 1"), "names the line: {e}");
    // Garbage where JSON is expected.
    let dev = device_config(
        "garbage",
        &format!(
            "driver = \"http\"\ninterval = \"1s\"\nurl = \"{}\"\nmetrics = [{{ name = \"p\", pointer = \"/power\" }}]\n",
            sim.url("/garbage")
        ),
    )?;
    let e = poll_once(&dev).await.expect_err("not json");
    assert!(
        e.message.starts_with("invalid json at line 1 column"),
        "{e}"
    );
    sim.stop().await?;
    Ok(())
}
