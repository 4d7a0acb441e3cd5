//! NATS JetStream for the export tests and the export bench: the machine's
//! `nats-server` (127.0.0.1:4222 with JetStream, which `cargo xtask test`
//! starts when it is not answering), a private three-node JetStream
//! cluster on free loopback ports with its own store directories (nodes
//! killed and restarted on the same ports and data), and a reader that
//! takes every message of a stream with its `Nats-Msg-Id` (an ephemeral
//! push consumer, no acks).
//!
//! Talks through the collector's own client
//! (`tributary_collector::export::nats::client`), which the export uses;
//! the server is the real peer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tributary_collector::export::nats::NatsTls;
use tributary_collector::export::nats::client::{Client, NatsAuth};

use super::{Peer, tool};
use crate::process::{TestDir, free_addr};

/// `nats-server`.
pub const NATS_SERVER_ENV: &str = "TRIBUTARY_NATS_SERVER";
/// The machine's JetStream server.
pub const SHARED_NATS: &str = "127.0.0.1:4222";

const PATIENCE: Duration = Duration::from_secs(60);

/// A message of a stream.
#[derive(Debug, Clone)]
pub struct StreamMsg {
    pub subject: String,
    pub msg_id: Option<String>,
    pub payload: Vec<u8>,
}

/// How a test reaches a server: credentials, and TLS when it speaks it.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub auth: NatsAuth,
    pub tls: Option<NatsTls>,
}

/// Connects to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Result<Client> {
    connect_with(addr, &Access::default()).await
}

/// Connects to `addr` (`host:port`) with `access`.
pub async fn connect_with(addr: &str, access: &Access) -> Result<Client> {
    Client::connect(
        addr,
        &access.auth,
        access.tls.as_ref(),
        Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("connect to nats at {addr}"))
}

/// A JetStream API call; the JSON answer or the API's error.
pub async fn js_api(addr: &str, subject: &str, body: &Value) -> Result<Value> {
    let mut c = connect(addr).await?;
    c.js_api(subject, body, Duration::from_secs(10))
        .await
        .with_context(|| format!("{subject} at {addr}"))
}

/// The stream's info (`state.messages`, ...), or `None` when it does not exist.
pub async fn stream_info(addr: &str, stream: &str) -> Result<Option<Value>> {
    stream_info_with(addr, stream, &Access::default()).await
}

async fn stream_info_with(addr: &str, stream: &str, access: &Access) -> Result<Option<Value>> {
    let mut c = connect_with(addr, access).await?;
    match c
        .js_api(
            &format!("$JS.API.STREAM.INFO.{stream}"),
            &json!({}),
            Duration::from_secs(10),
        )
        .await
    {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.to_string().contains("code 404") => Ok(None),
        Err(e) => Err(e).with_context(|| format!("stream info {stream} at {addr}")),
    }
}

/// Deletes a stream (best effort: missing is fine).
pub async fn delete_stream(addr: &str, stream: &str) -> Result<()> {
    if stream_info(addr, stream).await?.is_some() {
        js_api(addr, &format!("$JS.API.STREAM.DELETE.{stream}"), &json!({})).await?;
    }
    Ok(())
}

/// Every message of `stream`, in stream order.
pub async fn read_stream(addr: &str, stream: &str) -> Result<Vec<StreamMsg>> {
    read_stream_with(addr, stream, &Access::default()).await
}

/// Every message of `stream`, in stream order, reached with `access`.
pub async fn read_stream_with(addr: &str, stream: &str, access: &Access) -> Result<Vec<StreamMsg>> {
    let info = stream_info_with(addr, stream, access)
        .await?
        .with_context(|| format!("stream {stream} does not exist"))?;
    let count = info
        .pointer("/state/messages")
        .and_then(Value::as_u64)
        .context("stream info without state.messages")? as usize;
    let mut c = connect_with(addr, access).await?;
    let deliver = format!("{}.deliver", c.inbox());
    let sid = c.subscribe(&deliver).await?;
    c.js_api(
        &format!("$JS.API.CONSUMER.CREATE.{stream}"),
        &json!({
            "stream_name": stream,
            "config": {
                "deliver_subject": deliver,
                "deliver_policy": "all",
                "ack_policy": "none",
                "replay_policy": "instant",
                "inactive_threshold": 60_000_000_000u64,
            }
        }),
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("create a consumer on {stream}"))?;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let m = tokio::time::timeout(PATIENCE, c.next())
            .await
            .with_context(|| {
                format!(
                    "{stream}: {} of {count} messages read, then nothing for {PATIENCE:?}",
                    out.len()
                )
            })??;
        if m.sid != sid {
            continue;
        }
        if m.status().is_some() {
            continue; // idle heartbeat or flow control
        }
        out.push(StreamMsg {
            msg_id: m.header("Nats-Msg-Id").map(str::to_owned),
            subject: m.subject,
            payload: m.payload,
        });
    }
    Ok(out)
}

/// One `nats-server` with JetStream on a free loopback port, with
/// `extra` added to its config file (an `authorization` block of nkey
/// users, an `operator` with its `resolver`, ...).
pub async fn start_server(dir: &TestDir, name: &str, extra: &str) -> Result<Peer> {
    let program = tool(
        NATS_SERVER_ENV,
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    )?;
    let addr = free_addr()?;
    let store = dir.join(format!("{name}-js"));
    std::fs::create_dir_all(&store)?;
    let config = dir.join(format!("{name}.conf"));
    std::fs::write(
        &config,
        format!(
            "server_name: \"{name}\"\nlisten: \"{addr}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n{extra}\n",
            store.display()
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    Peer::spawn(
        name,
        &program,
        &["-c".to_owned(), config.display().to_string()],
        dir,
        addr,
    )?
    .wait_tcp()
    .await
}

/// One `nats-server` with JetStream that speaks only TLS (its
/// certificate `cert`/`key`; with `client_ca`, it verifies client
/// certificates too) and wants `token`.
pub struct TlsNats {
    pub peer: Peer,
}

impl TlsNats {
    pub async fn start(
        dir: &TestDir,
        name: &str,
        (cert, key): (&std::path::Path, &std::path::Path),
        client_ca: &std::path::Path,
        token: &str,
    ) -> Result<TlsNats> {
        let program = tool(
            NATS_SERVER_ENV,
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        let addr = free_addr()?;
        let store = dir.join(format!("{name}-js"));
        std::fs::create_dir_all(&store)?;
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: \"{name}\"\nlisten: \"{addr}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n\
                 tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n\
                 authorization {{\n  token: \"{token}\"\n}}\n",
                store.display(),
                cert.display(),
                key.display(),
                client_ca.display()
            ),
        )
        .with_context(|| format!("write {}", config.display()))?;
        let peer = Peer::spawn(
            name,
            &program,
            &["-c".to_owned(), config.display().to_string()],
            dir,
            addr,
        )?
        .wait_tcp()
        .await?;
        Ok(TlsNats { peer })
    }
}

/// A JetStream cluster of `nats-server` processes on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    name: String,
    program: PathBuf,
}

#[derive(Debug)]
struct Node {
    client: SocketAddr,
    config: PathBuf,
    peer: Option<Peer>,
}

impl NatsCluster {
    /// Starts `n` nodes, each with its store in `dir/<name>-<i>`.
    pub async fn start(dir: &TestDir, name: &str, n: usize) -> Result<NatsCluster> {
        let program = tool(
            NATS_SERVER_ENV,
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        let mut clients = Vec::new();
        let mut routes = Vec::new();
        for _ in 0..n {
            clients.push(free_addr()?);
            routes.push(free_addr()?);
        }
        let route_list: Vec<String> = routes
            .iter()
            .map(|r| format!("\"nats-route://{r}\""))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("{name}-{i}"));
            std::fs::create_dir_all(&store)?;
            let config = dir.join(format!("{name}-{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: \"{name}-{i}\"\nlisten: \"{}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n\
                     cluster {{\n  name: \"{name}\"\n  listen: \"{}\"\n  routes: [{}]\n}}\n",
                    clients[i],
                    store.display(),
                    routes[i],
                    route_list.join(", ")
                ),
            )
            .with_context(|| format!("write {}", config.display()))?;
            nodes.push(Node {
                client: clients[i],
                config,
                peer: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            name: name.to_owned(),
            program,
        };
        // Side by side: each waits for its routes only after all started.
        let mut started = Vec::new();
        for i in 0..n {
            started.push(cluster.spawn(dir, i)?);
        }
        for (i, peer) in started.into_iter().enumerate() {
            cluster.nodes[i].peer = Some(peer.wait_tcp().await?);
        }
        Ok(cluster)
    }

    fn spawn(&self, dir: &TestDir, i: usize) -> Result<Peer> {
        let node = &self.nodes[i];
        Peer::spawn(
            &format!("{}-{i}", self.name),
            &self.program,
            &["-c".to_owned(), node.config.display().to_string()],
            dir,
            node.client,
        )
    }

    /// `host:port` of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].client.to_string()
    }

    /// `nats://a,nats://b,...` of every node.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs node `i`.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        match self.nodes[i].peer.take() {
            Some(p) => p.kill().await,
            None => bail!("{} node {i} is not running", self.name),
        }
    }

    /// Starts node `i` again on its port and store.
    pub async fn restart(&mut self, dir: &TestDir, i: usize) -> Result<()> {
        let peer = self.spawn(dir, i)?.wait_tcp().await?;
        self.nodes[i].peer = Some(peer);
        Ok(())
    }

    /// Every running node's log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.peer.as_ref().map(Peer::log))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}
