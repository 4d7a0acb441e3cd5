//! Who may do what: what TLS tells about a peer ([`PeerAuth`]), and the
//! roles of certificate identities ([`Roles`]).
//!
//! With mutual TLS every connection has an identity (its certificate's,
//! `crate::tls::cert_identity`), and an identity has one role:
//!
//! - an **operator** (listed in `operators`, by default `operator`, the
//!   identity `cargo xtask certs` gives the operator certificate) may call
//!   Query (and the HTTP API) and may not stream;
//! - an **agent** (any other identity; only those in `allowed_agents` when
//!   that is set) may stream as its own agent id and gets
//!   `PERMISSION_DENIED` on every Query RPC.
//!
//! Without mutual TLS there are no identities: any client may stream as any
//! agent id and call Query (`serve` allows that off loopback only when told
//! to). With `query_requires_client_cert = false`, a connection without a
//! certificate may call Query, as that key says; a certificate it presents
//! is held to its role. Health and reflection are open to every connection
//! that completed the TLS handshake. Who may speak for which agent id is
//! decided in `session::authorize` alone, which asks [`Roles`].

use std::collections::HashSet;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::{Request, Status};

use tributary_proto::limits::MAX_NAME_BYTES;

use crate::tls;

/// The identity `cargo xtask certs` gives the operator certificate: the
/// default of `operators`.
pub const DEFAULT_OPERATOR: &str = "operator";

/// Whether `id` can be an agent id or a certificate identity: 1 to 256
/// bytes of ASCII letters, digits, '.', '_' and '-'.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NAME_BYTES && id.bytes().all(is_id_byte)
}

/// A byte an agent id may hold: an ASCII letter or digit, '.', '_', '-'.
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

/// Who is on the other end of a call, as far as TLS can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAuth {
    /// No client certificates are checked (plaintext, or TLS without a
    /// client CA): there is no identity, the agent id of a Hello is taken
    /// as it is.
    Unverified,
    /// Mutual TLS: the identity of the verified client certificate.
    Certificate(Arc<str>),
    /// Mutual TLS, but the connection presented no certificate (possible
    /// only when `query_requires_client_cert = false`).
    Missing,
    /// Mutual TLS, a verified certificate without a usable identity.
    Invalid(String),
}

impl PeerAuth {
    /// What TLS tells about the peer of `request`; `mutual` says whether
    /// client certificates are verified at all.
    pub fn of<T>(request: &Request<T>, mutual: bool) -> PeerAuth {
        let certs = request.peer_certs();
        PeerAuth::from_certs(certs.as_deref().map(Vec::as_slice), mutual)
    }

    /// What the certificates a connection presented tell (`None`: it
    /// presented none); `mutual` says whether they are verified at all.
    pub fn from_certs(certs: Option<&[CertificateDer<'_>]>, mutual: bool) -> PeerAuth {
        if !mutual {
            return PeerAuth::Unverified;
        }
        match certs.and_then(|c| c.first()).map(|c| tls::cert_identity(c)) {
            Some(Ok(identity)) => PeerAuth::Certificate(Arc::from(identity)),
            Some(Err(e)) => PeerAuth::Invalid(e.to_string()),
            None => PeerAuth::Missing,
        }
    }
}

/// The roles of certificate identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// Identities that may call Query and may not stream.
    pub operators: HashSet<String>,
    /// When set, only these agent ids may stream.
    pub allowed_agents: Option<HashSet<String>>,
}

impl Default for Roles {
    /// `operators = ["operator"]`, every other agent id may stream.
    fn default() -> Self {
        Roles {
            operators: HashSet::from([DEFAULT_OPERATOR.to_owned()]),
            allowed_agents: None,
        }
    }
}

impl Roles {
    pub fn is_operator(&self, identity: &str) -> bool {
        self.operators.contains(identity)
    }

    /// May the peer call Query?
    pub fn authorize_query(&self, auth: &PeerAuth) -> Result<(), Status> {
        match auth {
            PeerAuth::Unverified | PeerAuth::Missing => Ok(()),
            PeerAuth::Certificate(identity) if self.is_operator(identity) => Ok(()),
            PeerAuth::Certificate(identity) => Err(Status::permission_denied(format!(
                "query: the client certificate identity {identity:?} is not an operator: \
                 only the identities in `operators` may call Query"
            ))),
            PeerAuth::Invalid(why) => Err(Status::unauthenticated(format!("query: {why}"))),
        }
    }

    /// May a certificate with `identity` stream at all? (That it may speak
    /// only for its own agent id is `session::authorize`'s check.)
    pub fn authorize_stream(&self, identity: &str) -> Result<(), Status> {
        if self.is_operator(identity) {
            return Err(Status::permission_denied(format!(
                "hello: the client certificate identity {identity:?} is an operator: \
                 the identities in `operators` may not stream"
            )));
        }
        Ok(())
    }

    /// Is `agent_id` on the allowlist (or is there none)?
    pub fn is_allowed_agent(&self, agent_id: &str) -> bool {
        self.allowed_agents
            .as_ref()
            .is_none_or(|allowed| allowed.contains(agent_id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_letters_digits_dots_underscores_and_dashes() {
        for ok in ["edge-1", "a", "host.example_2", &"x".repeat(MAX_NAME_BYTES)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "*.example",
            "edge/1",
            "é",
            &"x".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn query_is_for_operators_and_for_peers_without_identities() {
        let roles = Roles::default();
        let cert = |id: &str| PeerAuth::Certificate(Arc::from(id));
        assert!(roles.authorize_query(&cert("operator")).is_ok());
        assert!(roles.authorize_query(&PeerAuth::Unverified).is_ok());
        assert!(roles.authorize_query(&PeerAuth::Missing).is_ok());
        let denied = roles.authorize_query(&cert("edge-1")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let invalid = roles
            .authorize_query(&PeerAuth::Invalid("no name".into()))
            .unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            roles.authorize_stream("operator").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(roles.authorize_stream("edge-1").is_ok());
    }
}
