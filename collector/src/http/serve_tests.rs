//! The listener's connection limits, with raw clients over loopback: idle
//! connections of either protocol give their slot back, busy ones are not
//! cut for being idle, and every connection ends at its maximum age.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Far longer than any limit below: reaching it means a limit did not work.
const PATIENCE: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// `/` answers at once; `/slow` streams `n` chunks 100 ms apart
/// (`/slow?forever` never ends).
fn router() -> Router {
    async fn slow(query: axum::extract::RawQuery) -> Body {
        let n = if query.0.as_deref() == Some("forever") {
            u64::MAX
        } else {
            8
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx
                    .send(Ok::<_, Infallible>(format!("chunk {i}\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
    Router::new()
        .route("/", get(|| async { "hi" }))
        .route("/slow", get(slow))
}

async fn start(limits: HttpLimits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        None,
        false,
        router(),
        limits,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Sends one HTTP/1.1 request and reads the answer to the end (the request
/// asks the server to close).
async fn get_closing(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads until the server closes; panics if it does not within PATIENCE.
async fn until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: the server kept the connection open"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    rest
}

/// The types of the HTTP/2 frames in `bytes` (9-byte headers).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// Three slots, held by an HTTP/2 client that said hello and nothing more,
/// a client that never sent a byte, and an HTTP/1.1 client after one
/// answered keep-alive request. The header deadline is far away, so only
/// the idle limit can free them: a fourth client is answered, and all three
/// are closed (the HTTP/2 one with a GOAWAY).
#[tokio::test]
async fn idle_connections_are_closed_and_their_slots_reused() {
    let (addr, shutdown) = start(HttpLimits {
        max_connections: 3,
        header_read_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    })
    .await;
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(H2_HELLO).await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 15];
    h1.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");

    let answered = tokio::time::timeout(PATIENCE, get_closing(addr, "/"))
        .await
        .expect("the fourth client was never answered: the idle connections kept their slots");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    let from_h2 = until_closed(&mut h2, "idle HTTP/2").await;
    let types = h2_frame_types(&from_h2);
    assert!(types.contains(&0x7), "no GOAWAY among the frames {types:?}");
    assert!(until_closed(&mut silent, "silent").await.is_empty());
    let rest = until_closed(&mut h1, "idle HTTP/1.1").await;
    assert!(
        String::from_utf8_lossy(&rest).ends_with("hi"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    shutdown.cancel();
}

/// A response that streams for longer than the idle limit is in flight the
/// whole time: it arrives whole, and the connection is still open for a
/// second request after it (had the idle limit fired during the stream,
/// the connection would close after its response).
#[tokio::test]
async fn a_streaming_response_is_not_idle() {
    let (addr, shutdown) = start(HttpLimits {
        idle_timeout: Duration::from_millis(250),
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 1024];
        while !first.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed during the stream: {}",
                String::from_utf8_lossy(&first)
            );
            first.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the streamed response did not end");
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    for i in 0..8 {
        assert!(
            first.contains(&format!("chunk {i}\n")),
            "chunk {i} missing: {first}"
        );
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let second =
        String::from_utf8_lossy(&until_closed(&mut s, "second request").await).into_owned();
    assert!(
        second.starts_with("HTTP/1.1 200") && second.ends_with("hi"),
        "{second}"
    );
    shutdown.cancel();
}

/// A response that never ends holds its connection only until the
/// connection's maximum age (and the drain after it).
#[tokio::test]
async fn a_connection_ends_at_its_maximum_age_even_when_busy() {
    let (addr, shutdown) = start(HttpLimits {
        max_connection_age: Duration::from_millis(300),
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow?forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s, "endless response").await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("chunk 1\n"),
        "{text}"
    );
    shutdown.cancel();
}
