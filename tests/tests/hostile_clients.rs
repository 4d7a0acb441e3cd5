//! A collector under hostile clients, with a well-behaved agent streaming
//! throughout: 200 connections that open streams and send nothing, one
//! connection opening 10,000 streams, oversized frames (HTTP/2 and gRPC),
//! and a flood of malformed frames (garbage instead of HTTP/2, broken HPACK,
//! gRPC messages that are not protobuf). The collector must stay up with a
//! bounded resident set, refuse each abuse the way the limits say, and the
//! agent's counters must come out exactly 1..n.
//!
//! The hostile side speaks raw HTTP/2 (a few frame builders below) because
//! a proper client library would not break the rules.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use tributary_proto::v1 as pb;
use tributary_tests::cluster::{
    Agent, PATIENCE, assert_exactly_once, counters, rss_kib, sim_agent_config, wait_for_counters,
};
use tributary_tests::process::{Proc, TestDir, free_addr, wait_for_port};

/// The collector's limits in these tests (the defaults, written out, so the
/// assertions below can name them).
const MAX_CONCURRENT_STREAMS: usize = 16;
const MAX_LOCAL_ERROR_RESETS: usize = 256;
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// The resident set the collector must stay under: a resource bound, far
/// above what it needs, far below what unbounded buffering would take.
const MAX_RSS_KIB: u64 = 512 * 1024;

async fn start_collector(dir: &TestDir, addr: SocketAddr) -> Result<Proc> {
    // 200 idle connections from loopback below: past the per-address cap.
    start_collector_with(dir, addr, "", "max_connections_per_address = 1000\n").await
}

/// A collector with `tls` (a `[tls]` section or nothing) and `limits`
/// added to the `[limits]` above.
async fn start_collector_with(
    dir: &TestDir,
    addr: SocketAddr,
    tls: &str,
    limits: &str,
) -> Result<Proc> {
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{addr}\"\nstore = \"sqlite:collector.db\"\n{tls}\n[limits]\n\
             max_concurrent_streams = {MAX_CONCURRENT_STREAMS}\n\
             max_local_error_resets = {MAX_LOCAL_ERROR_RESETS}\n\
             max_message_bytes = {MAX_MESSAGE_BYTES}\nhandshake_timeout = \"5s\"\n{limits}"
        ),
    )?;
    let proc = Proc::builder("tributary-collector")?
        .args(["serve", "--http-listen", "off"])
        .arg("--config")
        .arg(&path)
        .log_to(dir.join("collector.log"))
        .spawn()?;
    wait_for_port(addr, PATIENCE).await?;
    Ok(proc)
}

/// Minimal HTTP/2 framing (RFC 9113) and HPACK literals (RFC 7541), enough
/// to misbehave on purpose.
mod h2 {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// "Literal header field without indexing, new name", no Huffman.
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }

    /// HEADERS of a gRPC call to `path`.
    pub fn grpc_headers(stream: u32, path: &str, end_stream: bool) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "collector"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            literal(&mut block, name, value);
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block)
    }

    /// A gRPC length-prefixed message (uncompressed).
    pub fn grpc_message(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What a connection received, in summary.
    #[derive(Debug, Default, Clone)]
    pub struct Seen {
        /// RST_STREAM frames.
        pub resets: usize,
        /// HEADERS frames with END_STREAM: streams the server finished
        /// (trailers-only responses and trailers).
        pub ended: usize,
        /// (last stream id, error code) of a GOAWAY.
        pub goaway: Option<(u32, u32)>,
        /// PING acknowledgements.
        pub pongs: usize,
        /// The server closed the connection.
        pub closed: bool,
    }

    /// A raw connection: handshake done, a reader task tallying frames.
    pub struct Conn {
        pub write: tokio::net::tcp::OwnedWriteHalf,
        pub seen: tokio::sync::watch::Receiver<Seen>,
    }

    impl Conn {
        /// Connects, sends the preface and empty SETTINGS, waits for the
        /// server's SETTINGS and acknowledges them.
        pub async fn open(addr: SocketAddr) -> Result<Conn> {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(PREFACE).await?;
            tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
            loop {
                let (kind, flags, _, _) = read_frame(&mut tcp)
                    .await?
                    .context("closed during the handshake")?;
                if kind == SETTINGS && flags & ACK == 0 {
                    break;
                }
            }
            tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
            let (mut read, write) = tcp.into_split();
            let (tx, seen) = tokio::sync::watch::channel(Seen::default());
            tokio::spawn(async move {
                loop {
                    match read_frame(&mut read).await {
                        Ok(Some((kind, flags, _stream, payload))) => {
                            tx.send_modify(|s| match kind {
                                RST_STREAM => s.resets += 1,
                                PING if flags & ACK != 0 => s.pongs += 1,
                                HEADERS if flags & END_STREAM != 0 => s.ended += 1,
                                GOAWAY if payload.len() >= 8 => {
                                    let last = u32::from_be_bytes([
                                        payload[0], payload[1], payload[2], payload[3],
                                    ]);
                                    let code = u32::from_be_bytes([
                                        payload[4], payload[5], payload[6], payload[7],
                                    ]);
                                    s.goaway = Some((last & 0x7fff_ffff, code));
                                }
                                _ => {}
                            })
                        }
                        _ => {
                            tx.send_modify(|s| s.closed = true);
                            return;
                        }
                    }
                }
            });
            Ok(Conn { write, seen })
        }

        /// Waits until `done` holds for what was seen.
        pub async fn wait(&mut self, what: &str, done: impl Fn(&Seen) -> bool) -> Result<Seen> {
            let waited = tokio::time::timeout(PATIENCE, self.seen.wait_for(|s| done(s)))
                .await
                .map(|r| r.map(|s| s.clone()));
            match waited {
                Ok(Ok(seen)) => Ok(seen),
                Ok(Err(_)) => bail!("reader gone before {what}"),
                Err(_) => bail!("timed out waiting until {what}: {:?}", *self.seen.borrow()),
            }
        }
    }

    /// One frame: (type, flags, stream, payload); `None` at end of stream.
    pub async fn read_frame<R: AsyncReadExt + Unpin>(
        r: &mut R,
    ) -> Result<Option<(u8, u8, u32, Vec<u8>)>> {
        let mut head = [0u8; 9];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload).await?;
        Ok(Some((head[3], head[4], stream, payload)))
    }
}

const INGEST: &str = "/tributary.v1.Ingest/Stream";

/// The collector's peak resident set so far (VmHWM), KiB.
fn peak_rss(proc: &Proc) -> Result<u64> {
    let pid = proc.id().context("collector exited")?;
    Ok(rss_kib(pid)?.1)
}

/// The collector is still running and answering gRPC.
async fn assert_alive(proc: &mut Proc, addr: SocketAddr) -> Result<()> {
    ensure!(
        proc.try_wait()?.is_none(),
        "collector exited:\n{}",
        proc.log()
    );
    let mut query = pb::query_client::QueryClient::connect(format!("http://{addr}")).await?;
    query
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .context("ListAgents")?;
    Ok(())
}

/// Waits until every device of the good agent has `more` readings beyond
/// what it had: proof it kept streaming.
async fn agent_progresses(db: &std::path::Path, more: usize) -> Result<()> {
    let now = counters(db, "edge-1")?
        .values()
        .map(Vec::len)
        .min()
        .unwrap_or(0);
    wait_for_counters(db, "edge-1", 2, now + more).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_leave_the_collector_up_and_a_good_agent_complete() -> Result<()> {
    let dir = TestDir::new("hostile-clients")?;
    let addr = free_addr()?;
    let mut collector = start_collector(&dir, addr).await?;
    let db = dir.join("collector.db");
    let url = format!("http://{addr}");
    let mut agent = Agent::start(
        &dir,
        "edge-1",
        &sim_agent_config("edge-1", std::slice::from_ref(&url), 2, "20ms"),
        "",
    )?;
    wait_for_counters(&db, "edge-1", 2, 5).await?;

    // 1. 200 connections, each opening an Ingest stream and sending nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut client = pb::ingest_client::IngestClient::connect(url.clone()).await?;
        let (tx, rx) = mpsc::channel::<pb::AgentFrame>(1);
        let response = client.stream(ReceiverStream::new(rx)).await?;
        idle.push((client, tx, response));
    }
    agent_progresses(&db, 10)
        .await
        .context("while 200 streams idle")?;
    assert_alive(&mut collector, addr).await?;

    // 2. One connection opening 10,000 streams: past the concurrency limit
    // every stream is refused, and past the cap on such resets the
    // connection is closed with ENHANCE_YOUR_CALM.
    let mut conn = h2::Conn::open(addr).await?;
    let mut burst = Vec::new();
    for i in 0..10_000u32 {
        burst.extend(h2::grpc_headers(1 + 2 * i, INGEST, false));
    }
    // The server may close before it has read everything.
    let _ = conn.write.write_all(&burst).await;
    let seen = conn
        .wait("the stream flood is cut off", |s| s.closed)
        .await?;
    eprintln!("10,000 streams on one connection: {seen:?}");
    assert_eq!(
        seen.goaway.map(|(_, code)| code),
        Some(h2::ENHANCE_YOUR_CALM),
        "{seen:?}"
    );
    ensure!(
        seen.resets <= MAX_LOCAL_ERROR_RESETS + MAX_CONCURRENT_STREAMS,
        "more resets than the cap allows: {seen:?}"
    );
    assert_alive(&mut collector, addr).await?;

    // 3. Oversized frames. An HTTP/2 frame longer than the 16 KiB the server
    // advertised is a connection error...
    let mut conn = h2::Conn::open(addr).await?;
    conn.write
        .write_all(&h2::grpc_headers(1, INGEST, false))
        .await?;
    // Only the 9-byte header: the length alone is the offence.
    let mut big = h2::frame(h2::DATA, 0, 1, &[]);
    big[..3].copy_from_slice(&[0x10, 0, 0]); // claims 1 MiB
    let _ = conn.write.write_all(&big).await;
    let seen = conn
        .wait("the oversized frame is refused", |s| s.closed)
        .await?;
    assert_eq!(
        seen.goaway.map(|(_, c)| c),
        Some(h2::FRAME_SIZE_ERROR),
        "{seen:?}"
    );
    // ...and a gRPC message over max_message_bytes ends its call with
    // OUT_OF_RANGE before the collector buffers it.
    let mut client = pb::ingest_client::IngestClient::connect(url.clone())
        .await?
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: "x".repeat(MAX_MESSAGE_BYTES + 1),
            ..Default::default()
        })),
    })
    .await?;
    let status = match client.stream(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status,
            other => bail!("oversized hello: expected an error, got {other:?}"),
        },
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_alive(&mut collector, addr).await?;

    // 4. Malformed frames, many times over.
    // Garbage where the HTTP/2 preface belongs:
    for i in 0..100u8 {
        let mut tcp = TcpStream::connect(addr).await?;
        let garbage: Vec<u8> = (0..64u8)
            .map(|b| b.wrapping_mul(31).wrapping_add(i))
            .collect();
        let _ = tcp.write_all(&garbage).await;
        let mut sink = Vec::new();
        // The server hangs up (an EOF or a reset both end the read).
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut sink))
            .await
            .context("a garbage connection was not closed")?;
    }
    // A header block that is not HPACK:
    for _ in 0..50 {
        let mut conn = h2::Conn::open(addr).await?;
        let bad = h2::frame(
            h2::HEADERS,
            h2::END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0x7f],
        );
        conn.write.write_all(&bad).await?;
        let seen = conn.wait("broken HPACK is refused", |s| s.closed).await?;
        // h2 reports some HPACK decoding errors as PROTOCOL_ERROR.
        ensure!(
            matches!(
                seen.goaway,
                Some((_, h2::COMPRESSION_ERROR | h2::PROTOCOL_ERROR))
            ),
            "{seen:?}"
        );
    }
    // gRPC messages that are not protobuf (0xff...: a varint that never
    // ends), in waves of half the stream limit (so a stream the server has
    // answered but not yet released cannot push a wave over the limit):
    // each call must be answered with an error status and ended.
    let wave_size = MAX_CONCURRENT_STREAMS / 2;
    for _ in 0..10 {
        let mut conn = h2::Conn::open(addr).await?;
        let mut next_id = 1u32;
        for wave in 1..=20usize {
            let mut frames = Vec::new();
            for _ in 0..wave_size {
                frames.extend(h2::grpc_headers(next_id, INGEST, false));
                let body = h2::grpc_message(&[0xff; 32]);
                frames.extend(h2::frame(h2::DATA, h2::END_STREAM, next_id, &body));
                next_id += 2;
            }
            conn.write.write_all(&frames).await?;
            let want = wave * wave_size;
            conn.wait("every malformed call is answered", |s| {
                s.ended + s.resets >= want || s.closed
            })
            .await?;
        }
        let seen = conn.seen.borrow().clone();
        ensure!(
            !seen.closed && seen.resets == 0 && seen.ended == 20 * wave_size,
            "{seen:?}"
        );
    }
    assert_alive(&mut collector, addr).await?;

    // Through all of it: bounded memory, and the agent kept streaming.
    let peak = peak_rss(&collector)?;
    eprintln!("collector peak RSS: {peak} KiB");
    ensure!(peak < MAX_RSS_KIB, "collector peak RSS {peak} KiB");
    agent_progresses(&db, 10)
        .await
        .context("after the floods")?;
    drop(idle);
    agent.stop().await?;
    collector.terminate(PATIENCE).await?;
    let total = assert_exactly_once(&counters(&db, "edge-1")?, 2)?;
    ensure!(total >= 2 * 25, "edge-1: only {total} readings");
    Ok(())
}

/// Nanoseconds since the Unix epoch, now.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}

/// Says Hello as `agent` with `agent_time_ns`, sends one batch of one
/// counter reading stamped `ts_ns`, and waits for its ack.
async fn send_one(url: &str, agent: &str, agent_time_ns: i64, ts_ns: i64) -> Result<()> {
    let mut client = pb::ingest_client::IngestClient::connect(url.to_owned()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: agent.to_owned(),
            epoch: 1,
            agent_time_ns,
            ..Default::default()
        })),
    })
    .await?;
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
            seq: 1,
            series: vec![pb::SeriesDecl {
                id: 1,
                device: "clock".into(),
                metric: "counter".into(),
                ..Default::default()
            }],
            readings: vec![pb::Reading {
                series: 1,
                ts_ns,
                value: Some(pb::reading::Value::I64(1)),
            }],
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    loop {
        match tokio::time::timeout(PATIENCE, inbound.next()).await? {
            Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Ack(a)),
            })) if a.seq >= 1 => return Ok(()),
            Some(Ok(_)) => continue,
            other => bail!("{agent}: expected an ack, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_far_from_the_collector_clock_are_stored_and_flagged() -> Result<()> {
    let dir = TestDir::new("hostile-clock")?;
    let addr = free_addr()?;
    let mut collector = start_collector(&dir, addr).await?;
    let url = format!("http://{addr}");
    let hour = 3_600_000_000_000i64;
    // A reading an hour in the future, from an agent whose clock is right...
    send_one(&url, "ahead", now_ns(), now_ns() + hour).await?;
    // ...and a reading from an agent whose clock is two hours behind.
    send_one(&url, "behind", now_ns() - 2 * hour, now_ns() - 2 * hour).await?;
    collector.terminate(PATIENCE).await?;
    let db = dir.join("collector.db");
    for agent in ["ahead", "behind"] {
        assert_eq!(
            counters(&db, agent)?.values().map(Vec::len).sum::<usize>(),
            1,
            "{agent}: the reading must be stored"
        );
    }
    let log = collector.log();
    let logged = |what: &str, agent: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(what) && l.contains(agent))
    };
    ensure!(
        logged("readings time-stamped in the future", "agent=ahead"),
        "{log}"
    );
    ensure!(logged("agent clock is off", "agent=behind"), "{log}");
    Ok(())
}

/// Reads until the server closes the connection (end of stream, or an
/// error: a reset, or TLS closed without close_notify); an error if it is
/// still open after [`PATIENCE`].
async fn closed_by_server<R: AsyncReadExt + Unpin>(r: &mut R, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => bail!("{what}: still open after {PATIENCE:?}"),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// One counter from the "listener totals" line the collector logs at
/// shutdown (`refusals=preface_timeout=4 bad_preface=0 ...`).
fn refusals(log: &str, name: &str) -> Result<u64> {
    let line = log
        .lines()
        .find(|l| l.contains("listener totals"))
        .with_context(|| format!("no listener totals logged:\n{log}"))?;
    let key = format!("{name}=");
    line.split_whitespace()
        .map(|t| t.strip_prefix("refusals=").unwrap_or(t))
        .find_map(|t| t.strip_prefix(key.as_str()))
        .with_context(|| format!("no {name} in {line}"))?
        .parse()
        .with_context(|| format!("{name} in {line}"))
}

/// The collector logged `message` as a warning.
fn warned(log: &str, message: &str) -> bool {
    log.lines()
        .any(|l| l.contains("WARN") && l.contains(message))
}

/// A self-signed certificate for 127.0.0.1 as `server.pem` and
/// `server.key` in `dir`; returns the certificate's PEM.
fn server_cert(dir: &TestDir) -> Result<String> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server.key"), signing_key.serialize_pem())?;
    Ok(cert.pem())
}

/// A raw TLS client trusting `pem`, offering HTTP/2 like a gRPC client.
fn tls_connector(pem: &str) -> Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// ListAgents on a new connection (over TLS trusting `pem`, when given).
async fn list_agents(addr: SocketAddr, pem: Option<&str>) -> Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let channel = match pem {
        None => Endpoint::from_shared(format!("http://{addr}"))?,
        Some(pem) => Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?,
    }
    .connect()
    .await?;
    pb::query_client::QueryClient::new(channel)
        .list_agents(pb::ListAgentsRequest::default())
        .await?;
    Ok(())
}

/// Four connections hold every slot (`max_connections = 4`) without ever
/// sending the HTTP/2 preface: one byte in plaintext, a finished TLS
/// handshake and silence with TLS. The preface deadline closes them, so a
/// Query is answered and each of them sees the server hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_http2_give_their_slots_back() -> Result<()> {
    for tls in [false, true] {
        let mode = if tls { "tls" } else { "plaintext" };
        let dir = TestDir::new(&format!("hostile-preface-{mode}"))?;
        let pem = server_cert(&dir)?;
        let addr = free_addr()?;
        let section = if tls {
            "\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n"
        } else {
            ""
        };
        let mut collector = start_collector_with(
            &dir,
            addr,
            section,
            "max_connections = 4\nmax_connections_per_address = 16\npreface_timeout = \"1s\"\n",
        )
        .await?;
        let mut held: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = Vec::new();
        for _ in 0..4 {
            let mut tcp = TcpStream::connect(addr).await?;
            if tls {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let stream = tls_connector(&pem)?
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                held.push(Box::new(stream));
            } else {
                tcp.write_all(&h2::PREFACE[..1]).await?;
                held.push(Box::new(tcp));
            }
        }
        tokio::time::timeout(PATIENCE, list_agents(addr, tls.then_some(pem.as_str())))
            .await
            .with_context(|| {
                format!("{mode}: Query not answered while 4 connections hold every slot")
            })??;
        for (i, conn) in held.iter_mut().enumerate() {
            closed_by_server(conn, &format!("{mode}: silent connection {i}")).await?;
        }
        collector.terminate(PATIENCE).await?;
        let log = collector.log();
        assert_eq!(refusals(&log, "preface_timeout")?, 4, "{mode}:\n{log}");
        ensure!(
            warned(&log, "no HTTP/2 preface in time"),
            "{mode}: no warning:\n{log}"
        );
    }
    Ok(())
}

/// With `max_connections_per_address = 3`, a fourth connection from
/// 127.0.0.1 is closed at once while the three stay open and answer pings;
/// when one of them closes, its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_no_more_than_its_connections() -> Result<()> {
    let dir = TestDir::new("hostile-per-address")?;
    let addr = free_addr()?;
    // Deadlines far beyond PATIENCE: a connection closed within it was
    // refused for its address.
    let mut collector = start_collector_with(
        &dir,
        addr,
        "",
        "max_connections_per_address = 3\npreface_timeout = \"1h\"\nidle_timeout = \"1h\"\n",
    )
    .await?;
    // (wait_for_port's probe may hold a place for a moment: retry.)
    let mut three =
        tributary_tests::process::eventually(PATIENCE, "three connections open", || async {
            let mut conns = Vec::new();
            for _ in 0..3 {
                conns.push(h2::Conn::open(addr).await.ok()?);
            }
            Some(conns)
        })
        .await?;
    let mut fourth = TcpStream::connect(addr).await?;
    let _ = fourth.write_all(h2::PREFACE).await;
    closed_by_server(&mut fourth, "the fourth connection from 127.0.0.1").await?;
    for conn in &mut three {
        conn.write
            .write_all(&h2::frame(h2::PING, 0, 0, &[7; 8]))
            .await?;
        let seen = conn
            .wait("a ping is answered", |s| s.pongs > 0 || s.closed)
            .await?;
        ensure!(!seen.closed && seen.pongs == 1, "{seen:?}");
    }
    drop(three.pop());
    tributary_tests::process::eventually(PATIENCE, "a Query gets the freed place", || async {
        list_agents(addr, None).await.ok()
    })
    .await?;
    collector.terminate(PATIENCE).await?;
    let log = collector.log();
    ensure!(refusals(&log, "per_address_cap")? >= 1, "{log}");
    ensure!(
        warned(&log, "too many connections from this address"),
        "{log}"
    );
    Ok(())
}

/// An agent that polls every 5 s and never pings (its keepalive is an
/// hour) is quiet for longer than the collector's `idle_timeout` (2 s)
/// between batches; the collector's own pings, answered, are reads, so the
/// stream lives on: one connect, no stream ended, no idle timeout, every
/// value once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_agent_keeps_its_stream_past_the_idle_timeout() -> Result<()> {
    let dir = TestDir::new("hostile-idle")?;
    let addr = free_addr()?;
    let mut collector = start_collector_with(
        &dir,
        addr,
        "",
        "keepalive_interval = \"500ms\"\nkeepalive_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    )
    .await?;
    let config = dir.join("quiet.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[spool]\ndir = \"{}\"\n[uplink]\nkeepalive_interval = \"1h\"\n\
             keepalive_timeout = \"10s\"\nbackoff_max = \"500ms\"\n",
            sim_agent_config("quiet", &[format!("http://{addr}")], 1, "5s"),
            dir.join("quiet-spool").display()
        ),
    )?;
    let stats = dir.join("quiet.stats.prom");
    let mut agent = Proc::builder("tributary-agent")?
        .arg("run")
        .args(["--metrics-listen", "off"])
        .arg("--config")
        .arg(&config)
        .arg("--stats-file")
        .arg(&stats)
        .log_to(dir.join("quiet.log"))
        .spawn()?;
    let db = dir.join("collector.db");
    // Three polls: at least two gaps of 5 s.
    wait_for_counters(&db, "quiet", 1, 3).await?;
    let text = std::fs::read_to_string(&stats)?;
    let uplink = tributary_agent::uplink::UplinkStats::from_prometheus_text(&text)
        .with_context(|| format!("stats file:\n{text}"))?;
    let status = agent.terminate(PATIENCE).await?;
    ensure!(
        status.success(),
        "agent exited with {status}:\n{}",
        agent.log()
    );
    collector.terminate(PATIENCE).await?;
    let log = collector.log();
    ensure!(
        uplink.connects == 1 && uplink.streams_ended == 0,
        "the stream was cut: {uplink:?}\n{log}"
    );
    assert_eq!(refusals(&log, "idle_timeout")?, 0, "{log}");
    let total = assert_exactly_once(&counters(&db, "quiet")?, 1)?;
    ensure!(total >= 3, "only {total} readings");
    Ok(())
}
