//! TLS for the nats export (`tls://` servers or `[exports.tls]`): a rustls
//! client config built once from the export's settings (the CA to trust,
//! else the system's roots; a client certificate for servers that verify
//! clients), and the upgrade of a connection after the server's `INFO`,
//! as the NATS protocol does it (the server speaks first in plain text).

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::config::exports::ExportTls;

/// The TLS settings of one export, ready to connect with. Cheap to clone.
#[derive(Clone)]
pub struct NatsTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for NatsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsTls")
    }
}

impl NatsTls {
    /// Reads the files of `tls`; an error names the file and what is
    /// wrong with it.
    pub fn new(tls: &ExportTls) -> Result<NatsTls, String> {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                for cert in crate::tls::certs(ca, &pem).map_err(|e| e.to_string())? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system root rustls cannot use is skipped, as
                    // other TLS clients do.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(
                        "no CA certificates in the system's store: set [exports.tls] ca".to_owned(),
                    );
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
        let config = match &tls.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
                let chain = crate::tls::certs(cert, &pem).map_err(|e| e.to_string())?;
                let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
                let der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?
            }
        };
        Ok(NatsTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The TLS handshake over `tcp` with the server at `addr`
    /// (`host:port`; the host is the name its certificate must hold).
    pub async fn wrap(&self, addr: &str, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name: {e}"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }
}
