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
        Arc::new(HttpMetrics::default()),
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
        // Long enough for the HTTP/2 client's hello to be read first (else
        // the connection could close before it as one that never spoke).
        idle_timeout: Duration::from_secs(1),
        drain: Duration::from_millis(500),
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
/// whole time: it arrives whole, and the connection still answers the
/// request pipelined behind it (had the idle limit fired during the
/// stream, the connection would close after the first response).
#[tokio::test]
async fn a_streaming_response_is_not_idle() {
    let (addr, shutdown) = start(HttpLimits {
        idle_timeout: Duration::from_millis(250),
        drain: Duration::from_millis(500),
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Both at once, so the second is waiting when the first ends.
    s.write_all(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = String::from_utf8_lossy(&until_closed(&mut s, "two requests").await).into_owned();
    let Some((first, second)) = got.split_once("0\r\n\r\n") else {
        panic!("the streamed response did not end: {got}");
    };
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    for i in 0..8 {
        assert!(
            first.contains(&format!("chunk {i}\n")),
            "chunk {i} missing: {first}"
        );
    }
    assert!(
        second.starts_with("HTTP/1.1 200") && second.ends_with("hi"),
        "the pipelined request was not answered: {second}"
    );
    shutdown.cancel();
}

/// A response still streaming when the connection reaches its maximum age
/// gets `age_grace` to finish: it arrives whole (8 chunks over 800 ms,
/// with the age at 200 ms and `drain` far shorter than the stream), then
/// the connection closes.
#[tokio::test]
async fn a_request_in_flight_at_the_maximum_age_gets_the_age_grace() {
    let (addr, shutdown) = start(HttpLimits {
        max_connection_age: Duration::from_millis(200),
        drain: Duration::from_millis(50),
        age_grace: Duration::from_secs(15),
        ..HttpLimits::default()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&until_closed(&mut s, "slow response").await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.contains("chunk 7\n") && got.ends_with("0\r\n\r\n"),
        "cut before its end: {got}"
    );
    shutdown.cancel();
}

/// The watchdog with a zero idle limit does not call a busy connection
/// idle, and limits too far to be an `Instant` (`Duration::MAX`) are never
/// reached rather than a panic.
#[tokio::test]
async fn the_watchdog_handles_zero_and_endless_limits() {
    let activity = Arc::new(Activity::new());
    let guard = InFlight::begin(activity.clone());
    let why = tokio::time::timeout(
        PATIENCE,
        activity.ended(Duration::ZERO, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    assert_eq!(why, MAX_AGE);
    let endless = tokio::time::timeout(
        Duration::from_millis(300),
        activity.ended(Duration::MAX, Duration::MAX),
    )
    .await;
    assert!(endless.is_err(), "ended with {endless:?}");
    drop(guard);
    let idle = tokio::time::timeout(
        Duration::from_millis(300),
        activity.ended(Duration::MAX, Duration::MAX),
    )
    .await;
    assert!(idle.is_err(), "ended with {idle:?}");
    let why = tokio::time::timeout(PATIENCE, activity.ended(Duration::ZERO, Duration::MAX))
        .await
        .unwrap();
    assert_eq!(why, "idle_timeout");
}

/// A response that never ends holds its connection only until the
/// connection's maximum age (and the grace after it).
#[tokio::test]
async fn a_connection_ends_at_its_maximum_age_even_when_busy() {
    let (addr, shutdown) = start(HttpLimits {
        max_connection_age: Duration::from_millis(300),
        age_grace: Duration::from_millis(300),
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
