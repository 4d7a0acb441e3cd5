//! TLS that a reload can change without a restart: the rustls configs of
//! both listeners (gRPC: ALPN `h2`; HTTP: `h2` and `http/1.1`) are built
//! once, with a certificate resolver and a client verifier that read the
//! current [`ServerTls`] from a `watch` at each handshake. [`LiveTls`]
//! owns the sending side; the reload task (`server/reload.rs`) holds it
//! and gives it the material a reload loaded. A handshake under way
//! finishes with what it started with; connections already open keep
//! their session (TLS is not renegotiated), so open streams go on.
//!
//! The certificate request names no CA (the hint list is empty, which
//! RFC 8446 §4.2.4 allows: a client then sends its certificate whatever
//! its issuer), so a `client_ca` bundle can change on reload too. Turning
//! mutual TLS on or off needs a restart: the services decide who may call
//! them by it (`crate::roles`).

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};

use super::ServerTls;

/// The crypto provider of every collector TLS config: ring, as tonic's
/// `tls-ring` uses it.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

/// The TLS both listeners serve, replaceable while they run.
pub struct LiveTls {
    current: watch::Sender<ServerTls>,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    mutual: bool,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

/// A reload that would turn mutual TLS on or off.
#[derive(Debug, thiserror::Error)]
#[error("tls.client_ca was {} and is {}: turning mutual TLS on or off needs a restart", on_off(*.was), on_off(*.is))]
pub struct MutualChanged {
    pub was: bool,
    pub is: bool,
}

fn on_off(set: bool) -> &'static str {
    if set { "set" } else { "unset" }
}

impl LiveTls {
    /// Serves `tls` until [`LiveTls::replace`] gives the next material.
    pub fn new(tls: ServerTls) -> Result<LiveTls, Error> {
        let mutual = tls.mutual;
        let (current, rx) = watch::channel(tls);
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if mutual {
            builder.with_client_cert_verifier(Arc::new(Verifier {
                current: rx.clone(),
                provider,
            }))
        } else {
            builder.with_no_client_auth()
        };
        let mut grpc = builder.with_cert_resolver(Arc::new(Resolver(rx)));
        // gRPC is HTTP/2 only; a client offering other protocols alone is
        // refused during the handshake.
        let mut http = grpc.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(LiveTls {
            current,
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            mutual,
        })
    }

    /// Client certificates are verified (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// What the gRPC listener runs each TLS handshake with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.grpc.clone())
    }

    /// What the HTTP listener runs each TLS handshake with: the same
    /// certificate and client verifier, ALPN `h2` and `http/1.1`.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }

    /// New handshakes use `tls` from now on; refused (nothing changes)
    /// when it would turn mutual TLS on or off.
    pub fn replace(&self, tls: ServerTls) -> Result<(), MutualChanged> {
        if tls.mutual != self.mutual {
            return Err(MutualChanged {
                was: self.mutual,
                is: tls.mutual,
            });
        }
        self.current.send_replace(tls);
        Ok(())
    }
}

/// The current certificate chain and key, read at each handshake.
#[derive(Debug)]
struct Resolver(watch::Receiver<ServerTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().key.clone())
    }
}

/// The current client verifier, read at each step of a handshake that
/// needs it.
#[derive(Debug)]
struct Verifier {
    current: watch::Receiver<ServerTls>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        self.current
            .borrow()
            .verifier
            .clone()
            .ok_or_else(|| Error::General("no client CA configured".to_owned()))
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().is_ok_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Empty: the bundle may change on reload (module documentation).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
