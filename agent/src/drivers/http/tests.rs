//! Tests of the HTTP driver against local TCP servers that answer with
//! canned responses.

use super::*;
use crate::reading::Sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

impl HttpDriver {
    /// One poll as named samples.
    async fn poll_samples(&mut self) -> Result<Vec<Sample>, PollError> {
        self.poll().await.map(Polled::into_samples)
    }
}

fn metric(name: &str, pointer: &str) -> JsonMetric {
    JsonMetric {
        name: name.into(),
        pointer: pointer.into(),
        unit: String::new(),
    }
}

/// Serves `response` verbatim to every connection on 127.0.0.1:0.
async fn serve(response: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                // Read the request head, then answer and close.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/data")
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn driver(url: String, format: HttpFormat, metrics: Vec<JsonMetric>) -> HttpDriver {
    HttpDriver::new(
        &HttpConfig {
            url,
            format,
            metrics,
            auth: HttpAuth::None,
            ca: None,
        },
        Duration::from_secs(5),
        "test",
    )
    .expect("client")
}

#[test]
fn plain_connection_only_for_plain_http_urls() {
    for (url, plain) in [
        ("http://127.0.0.1:1/x", true),
        ("http://dev.local:8080/x?q=1", true),
        ("https://127.0.0.1:1/x", false),
        ("http://u:p@127.0.0.1/x", false),
    ] {
        let d = driver(url.into(), HttpFormat::Json, vec![]);
        assert_eq!(d.is_plain(), plain, "{url}");
    }
}

#[tokio::test]
async fn json_device_end_to_end() {
    let url = serve(response(
        "200 OK",
        "application/json",
        r#"{"power": 12.5, "count": 3}"#,
    ))
    .await;
    let mut d = driver(
        url,
        HttpFormat::Json,
        vec![
            metric("power", "/power"),
            metric("count", "/count"),
            metric("x", "/x"),
        ],
    );
    let samples = d.poll_samples().await.expect("poll");
    assert_eq!(samples[0].value, Value::F64(12.5));
    assert_eq!(samples[1].value, Value::I64(3));
    assert!(matches!(samples[2].value, Value::Failed { .. }));
    // A second poll works too (fresh connection after `Connection: close`).
    assert_eq!(d.poll_samples().await.expect("poll").len(), 3);
}

#[tokio::test]
async fn prometheus_device_end_to_end() {
    let url = serve(response(
        "200 OK",
        "text/plain; version=0.0.4",
        "# TYPE up gauge\nup{job=\"a\"} 1\nload 0.5 1700000000000\n",
    ))
    .await;
    let mut d = driver(url, HttpFormat::Prometheus, vec![]);
    let samples = d.poll_samples().await.expect("poll");
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].metric, "up");
    assert_eq!(samples[0].labels.get("job").map(String::as_str), Some("a"));
    assert_eq!(samples[1].value, Value::F64(0.5));
    let failed = Polled::Readings(d.failed(FailureKind::Error, "x")).into_samples();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].metric, SCRAPE_METRIC);
}

#[tokio::test]
async fn bad_answers_are_poll_errors() {
    let url = serve(response("500 Internal Server Error", "text/plain", "boom")).await;
    let e = driver(url.clone(), HttpFormat::Json, vec![metric("a", "/a")])
        .poll_samples()
        .await
        .expect_err("500");
    assert_eq!(
        e.message,
        format!("http 500 Internal Server Error from GET {url}")
    );

    let url = serve(response("200 OK", "application/json", "{\"a\": ")).await;
    let e = driver(url, HttpFormat::Json, vec![metric("a", "/a")])
        .poll_samples()
        .await
        .expect_err("truncated json");
    assert!(
        e.message.starts_with("invalid json at line 1 column 6"),
        "{e}"
    );

    let url = serve(response("200 OK", "text/plain", "ok 1\nbad line\n")).await;
    let e = driver(url, HttpFormat::Prometheus, vec![])
        .poll_samples()
        .await
        .expect_err("bad text");
    assert!(e.message.starts_with("prometheus text line 2: "), "{e}");
}

#[tokio::test]
async fn connection_refused_names_the_cause() {
    // Bound but not listening: connections are refused, and no other
    // test can take the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let e = driver(
        format!("http://{addr}/"),
        HttpFormat::Json,
        vec![metric("a", "/a")],
    )
    .poll_samples()
    .await
    .expect_err("refused");
    assert_eq!(e.kind, FailureKind::Error);
    assert!(e.message.contains(&addr.to_string()), "{e}");
    assert!(e.message.to_lowercase().contains("refused"), "{e}");
}
