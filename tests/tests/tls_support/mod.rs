//! Shared by the mutual TLS tests (`tls_identity.rs`, `tls_roles.rs`): a
//! test CA and the certificates it issues, a collector started from a
//! config file, client TLS settings, and a raw Ingest attempt that reports
//! the exact status it ended with.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use tributary_proto::v1 as pb;
use tributary_tests::cluster::PATIENCE;
use tributary_tests::process::{Proc, TestDir, wait_for_port};

/// A CA that signs certificates for the test.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca { params, key, pem })
    }

    /// A certificate for `name` (server or client), valid in `[from, until)`;
    /// written to `dir/<file>.pem` and `dir/<file>.key`.
    pub fn issue(
        &self,
        dir: &Path,
        file: &str,
        name: &str,
        server: bool,
        valid: (OffsetDateTime, OffsetDateTime),
    ) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = valid;
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key))?;
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// Every certificate the tests use, in one directory.
pub struct Pki {
    /// The CA that signed every certificate below except `foreign`.
    pub authority: Ca,
    pub ca: PathBuf,
    pub edge1: (PathBuf, PathBuf),
    pub edge2: (PathBuf, PathBuf),
    pub operator: (PathBuf, PathBuf),
    /// `edge-3`, signed by a CA the collector does not trust.
    pub foreign: (PathBuf, PathBuf),
    /// `edge-4`, signed by the right CA, expired.
    pub expired: (PathBuf, PathBuf),
}

impl Pki {
    pub fn new(dir: &Path) -> Result<Pki> {
        let now = OffsetDateTime::now_utc();
        let valid = (
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        );
        let ca = Ca::new("Tributary test CA")?;
        let other = Ca::new("Someone else's CA")?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, &ca.pem)?;
        // The collector's own certificate, for `collector.toml`.
        ca.issue(dir, "collector", "127.0.0.1", true, valid)?;
        Ok(Pki {
            ca: ca_path,
            edge1: ca.issue(dir, "edge-1", "edge-1", false, valid)?,
            edge2: ca.issue(dir, "edge-2", "edge-2", false, valid)?,
            operator: ca.issue(dir, "operator", "operator", false, valid)?,
            foreign: other.issue(dir, "foreign", "edge-3", false, valid)?,
            expired: ca.issue(
                dir,
                "expired",
                "edge-4",
                false,
                (
                    now - time::Duration::days(30),
                    now - time::Duration::days(1),
                ),
            )?,
            authority: ca,
        })
    }
}

/// A day of validity around now, for certificates that should just work.
pub fn valid_now() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
}

/// Starts `tributary-collector serve --config` with `config` (paths in it
/// are relative to `dir`).
pub async fn start_collector(dir: &TestDir, addr: SocketAddr, config: &str) -> Result<Proc> {
    let path = dir.join("collector.toml");
    // Tests run collectors side by side: HTTP only where a test asks.
    let http = if config.contains("http_listen") {
        ""
    } else {
        "http_listen = \"off\"\n"
    };
    std::fs::write(
        &path,
        format!("listen = \"{addr}\"\nstore = \"sqlite:collector.db\"\n{http}{config}"),
    )?;
    let proc = Proc::builder("tributary-collector")?
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .log_to(dir.join("collector.log"))
        .spawn()?;
    wait_for_port(addr, PATIENCE).await?;
    Ok(proc)
}

pub const MTLS: &str =
    "[tls]\ncert = \"collector.pem\"\nkey = \"collector.key\"\nclient_ca = \"ca.pem\"\n";

/// `[tls]` of an agent.
pub fn agent_tls(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> String {
    let mut s = format!("\n[tls]\nca = \"{}\"\n", ca.display());
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    s
}

/// Client TLS settings: trust `ca`, present `client` if given.
pub fn client_tls(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(tls)
}

/// Opens an Ingest stream as `agent` and says Hello; if a Welcome comes
/// back, sends one batch with one reading and waits for its ack. Returns the
/// status the attempt ended with (`Ok` only when the collector welcomed the
/// stream and stored the reading).
pub async fn try_ingest(
    url: &str,
    tls: ClientTlsConfig,
    agent: &str,
) -> Result<Result<(), tonic::Status>> {
    let endpoint = Endpoint::from_shared(url.to_owned())?.tls_config(tls)?;
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Ok(Err(tonic::Status::unavailable(error_chain(&e)))),
    };
    let mut client = pb::ingest_client::IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: agent.to_owned(),
            version: "test".into(),
            epoch: 7,
            agent_time_ns: now_ns(),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = match client.stream(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Err(with_chain(status))),
    };
    match tokio::time::timeout(PATIENCE, inbound.next()).await? {
        Some(Ok(pb::CollectorFrame {
            frame: Some(pb::collector_frame::Frame::Welcome(_)),
        })) => {}
        Some(Ok(other)) => bail!("expected a welcome or an error, got {other:?}"),
        Some(Err(status)) => return Ok(Err(with_chain(status))),
        None => bail!("stream ended without a status"),
    }
    // Welcomed: try to get something stored, so "0 rows" means something.
    tx.send(pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
            seq: 1,
            series: vec![pb::SeriesDecl {
                id: 1,
                device: "intruder".into(),
                metric: "counter".into(),
                ..Default::default()
            }],
            readings: vec![pb::Reading {
                series: 1,
                ts_ns: now_ns(),
                value: Some(pb::reading::Value::I64(1)),
            }],
            ..Default::default()
        })),
    })
    .await?;
    loop {
        match tokio::time::timeout(PATIENCE, inbound.next()).await? {
            Some(Ok(pb::CollectorFrame {
                frame: Some(pb::collector_frame::Frame::Ack(a)),
            })) if a.seq >= 1 => return Ok(Ok(())),
            Some(Ok(_)) => continue,
            Some(Err(status)) => bail!("welcomed, then the batch failed: {status:?}"),
            None => bail!("welcomed, then the stream ended before the ack"),
        }
    }
}

/// A Query client over TLS with `tls`.
pub async fn query_client(
    url: &str,
    tls: ClientTlsConfig,
) -> Result<pb::query_client::QueryClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(pb::query_client::QueryClient::new(channel))
}

/// A status whose message includes its source chain (TLS alerts hide there).
pub fn with_chain(status: tonic::Status) -> tonic::Status {
    let mut message = status.message().to_owned();
    if let Some(source) = std::error::Error::source(&status) {
        message.push_str(": ");
        message.push_str(&error_chain(source));
    }
    tonic::Status::new(status.code(), message)
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(1)
}
