//! The HTTP/Prometheus driver against the real `prometheus-node-exporter`
//! (plain, and with TLS from a private CA plus basic auth through its
//! `--web.config.file`), bearer auth against a header-checking server, and a
//! body that is not what the format says.
//!
//! The plain `http://` path (the agent's own HTTP/1.1 connection per
//! device) against the HTTP simulator and scripted servers: keep-alive
//! reuse, chunked bodies, bodies until close, an idle connection the server
//! closed, a poll dropped midway, and answers it must refuse (garbage,
//! truncated, oversized, redirects, conflicting lengths).

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

// The plain `http://` path: the agent's own HTTP/1.1 connection per device.

use tributary_agent::drivers::Driver;
use tributary_agent::reading::Sample;
use tributary_tests::http_sim::MeterValues;

/// A JSON device on `url` reading `/a` (and the sim's `/power` and
/// `/count`), with `timeout`.
fn json_device(url: &str, timeout: &str) -> Result<tributary_agent::config::DeviceConfig> {
    device_config(
        "plain",
        &format!(
            "driver = \"http\"\ninterval = \"1s\"\ntimeout = \"{timeout}\"\nurl = \"{url}\"\n\
             metrics = [{{ name = \"a\", pointer = \"/a\" }}, {{ name = \"power\", pointer = \"/power\" }}, \
             {{ name = \"count\", pointer = \"/count\" }}]\n"
        ),
    )
}

fn value<'a>(samples: &'a [Sample], metric: &str) -> Option<&'a Value> {
    value_of(samples, metric)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_keeps_one_connection_and_reads_every_answer() -> Result<()> {
    let sim = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let device = json_device(&sim.url("/meter?device=7"), "5s")?;
    let mut driver = Driver::build(&device)?;
    for n in 1..=20u64 {
        let samples = driver
            .poll()
            .await
            .map_err(|e| anyhow::anyhow!("poll {n}: {e}"))?;
        let expected = MeterValues::nth(n);
        assert_eq!(value(&samples, "power"), Some(&Value::F64(expected.power)));
        assert_eq!(
            value(&samples, "count"),
            Some(&Value::I64(expected.count as i64))
        );
        assert!(
            matches!(value(&samples, "a"), Some(Value::Failed { message, .. }) if message == "pointer /a not found")
        );
    }
    assert_eq!(sim.requests(), 20);
    assert_eq!(
        sim.connections(),
        1,
        "keep-alive: one connection for 20 polls"
    );
    sim.stop().await?;
    Ok(())
}

/// What a scripted server answers to request `r` (from 0) on connection
/// `c` (from 0); `None` closes the connection instead.
type Script = fn(usize, usize) -> Option<Vec<u8>>;

/// Serves `script`; with `close`, each connection is closed after its
/// first answer. Returns the URL and the count of accepted connections.
async fn scripted(
    script: Script,
) -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    serve_script(script, false).await
}

async fn serve_script(
    script: Script,
    close: bool,
) -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let conn = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 4096];
                for request in 0.. {
                    // Read one request head.
                    loop {
                        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            break;
                        }
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let Some(reply) = script(conn, request) else {
                        return;
                    };
                    if sock.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Ok((format!("http://{addr}/data"), accepted))
}

fn connections(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_chunked_body_with_extensions_and_trailers() -> Result<()> {
    let (url, accepted) = scripted(|_, _| {
        Some(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\n{\"a\":\r\n4;ext=1\r\n 12}\r\n0\r\nX-Trailer: y\r\n\r\n"
                .to_vec(),
        )
    })
    .await?;
    let mut driver = Driver::build(&json_device(&url, "5s")?)?;
    for _ in 0..3 {
        let samples = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(value(&samples, "a"), Some(&Value::I64(12)));
    }
    assert_eq!(
        connections(&accepted),
        1,
        "chunked answers keep the connection"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_body_until_close_and_connection_close() -> Result<()> {
    // No length: the body ends with the connection.
    let (url, accepted) = serve_script(
        |_, _| Some(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": 1.5}".to_vec()),
        true,
    )
    .await?;
    let mut driver = Driver::build(&json_device(&url, "5s")?)?;
    for _ in 0..3 {
        let samples = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(value(&samples, "a"), Some(&Value::F64(1.5)));
    }
    assert_eq!(
        connections(&accepted),
        3,
        "a new connection after each close"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_reconnects_when_an_idle_connection_was_closed() -> Result<()> {
    // Each connection answers one request with keep-alive, then closes:
    // the next poll finds its reused connection closed and retries.
    let (url, accepted) = scripted(|_, request| {
        (request == 0).then(|| b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 2}".to_vec())
    })
    .await?;
    let mut driver = Driver::build(&json_device(&url, "5s")?)?;
    for _ in 0..4 {
        let samples = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(value(&samples, "a"), Some(&Value::I64(2)));
    }
    assert_eq!(connections(&accepted), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_bad_answers_are_errors_naming_the_cause() -> Result<()> {
    let cases: [(Script, &str); 7] = [
        (
            |_, _| Some(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
            "invalid http answer",
        ),
        (
            |_, _| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\"".to_vec()),
            // Then the connection closes (the script ends).
            "connection closed before the answer was complete",
        ),
        (
            |_, _| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n".to_vec()),
            "response body exceeds 16777216 bytes",
        ),
        (
            |_, _| {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                head.extend_from_slice(format!("X-Big: {}\r\n", "v".repeat(70_000)).as_bytes());
                Some(head)
            },
            "response head exceeds 65536 bytes",
        ),
        (
            |_, _| Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()),
            "invalid chunk size",
        ),
        (
            |_, _| {
                Some(
                    b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/x\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                )
            },
            "http 302 Found from GET",
        ),
        (
            |_, _| {
                Some(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                )
            },
            "conflicting content-length",
        ),
    ];
    for (script, needle) in cases {
        let (url, _) = serve_script(script, true).await?;
        let mut driver = Driver::build(&json_device(&url, "5s")?)?;
        let e = driver.poll().await.expect_err(needle);
        assert!(e.message.contains(needle), "{needle:?}: {e}");
        assert!(e.message.contains(&url), "names the url: {e}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_poll_cancelled_midway_leaves_no_half_read_connection() -> Result<()> {
    // The first connection sends half a body and stalls; later ones answer.
    let (url, accepted) = scripted(|conn, _| {
        Some(if conn == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\"".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 3}".to_vec()
        })
    })
    .await?;
    let mut driver = Driver::build(&json_device(&url, "5s")?)?;
    // Dropped midway, as the scheduler's timeout drops a poll.
    let first = tokio::time::timeout(std::time::Duration::from_millis(300), driver.poll()).await;
    assert!(
        first.is_err(),
        "the stalled body never completes: {first:?}"
    );
    for _ in 0..2 {
        let samples = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(value(&samples, "a"), Some(&Value::I64(3)));
    }
    assert_eq!(
        connections(&accepted),
        2,
        "the stalled connection is not reused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_prometheus_scrapes_resolve_series_once() -> Result<()> {
    let sim = HttpSim::new().bind("127.0.0.1:0".parse()?).await?;
    let device = device_config(
        "prom",
        &format!(
            "driver = \"prometheus\"\ninterval = \"1s\"\nurl = \"{}\"\n",
            sim.url("/metrics?extra=50")
        ),
    )?;
    let mut driver = Driver::build(&device)?;
    for n in 1..=3u64 {
        let samples = driver.poll().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = tributary_tests::http_sim::metrics_body_with(n, 50);
        let expected = tributary_agent::drivers::http::prometheus::parse(&text)?;
        assert_eq!(samples.len(), expected.len());
        for (s, e) in samples.iter().zip(&expected) {
            assert_eq!((&s.metric, &s.labels), (&e.name, &e.labels));
            assert_eq!(s.value, Value::F64(e.value), "{}", s.metric);
        }
    }
    assert_eq!(sim.connections(), 1);
    sim.stop().await?;
    Ok(())
}
