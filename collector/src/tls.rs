//! TLS for the collector: loading the server's certificate, key and client CA
//! ([`ServerTls`]), serving them through rustls configs whose certificate
//! and client verifier a reload replaces ([`LiveTls`], `live.rs`; the
//! listeners terminate TLS with them, `collector/src/listener/` and
//! `collector/src/http/serve.rs`), and reading an agent's identity from
//! the certificate it presented.
//!
//! The identity of a client certificate, exactly:
//!
//! - with a subject alternative name (SAN) extension, the first DNS name in
//!   it, and only that: the common name is never used, other kinds of names
//!   (IP addresses, e-mail, URIs) are skipped, and a certificate whose SANs
//!   hold no DNS name has no identity;
//! - without that extension, the subject's common name (CN); several CNs are
//!   ambiguous, and a certificate without one has no identity;
//! - either must be a valid agent id (1 to 256 ASCII letters, digits, '.',
//!   '_' and '-'; `crate::roles::is_valid_id`), else the certificate has no
//!   identity: a first DNS name that is not one is refused, never skipped
//!   for a later one.
//!
//! `cargo xtask certs` writes both, set to the agent id. A certificate
//! without an identity is refused (UNAUTHENTICATED) by Ingest and Query.
//! The chain itself is verified by rustls during the handshake (against
//! `client_ca`, with validity dates); this module only reads names from a
//! certificate that already passed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;

mod live;

pub use live::LiveTls;

/// Where the collector's TLS material is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The collector's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The collector's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. Setting it turns
    /// mutual TLS on.
    pub client_ca: Option<PathBuf>,
    /// With mutual TLS: whether a connection without a client certificate is
    /// refused during the handshake (true, the default) or let through to
    /// Query, health and reflection (false; Ingest still refuses it).
    pub query_requires_client_cert: bool,
}

/// TLS material read and checked: the certificate chain with its key and,
/// with mutual TLS, the verifier of client certificates. The listeners
/// serve it through a [`LiveTls`], which a reload gives the next one.
#[derive(Clone)]
pub struct ServerTls {
    key: Arc<CertifiedKey>,
    /// How client certificates are verified; `None`: they are not asked
    /// for.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Client certificates are verified (mutual TLS).
    pub mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The leaf certificate served (DER).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.key.cert.first()
    }
}

/// Why TLS material could not be loaded. Each message names the file and
/// the whole cause, and no variant has a `source()`: the config reports
/// the message as the problem of its `tls.*` key, and a `{:#}` chain
/// prints every cause once.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: no PEM certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in the file", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: invalid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    /// rustls refused the contents (a key that does not match the
    /// certificate, a CA certificate it cannot use as a trust anchor).
    #[error("{}: unusable: {message}", path.display())]
    Unusable { path: PathBuf, message: String },
}

/// Reads and checks the files: every one must exist and hold what its role
/// needs, so a typo fails at startup instead of at the first handshake.
pub fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
    let unusable = |path: &Path| {
        let path = path.to_owned();
        move |e: tokio_rustls::rustls::Error| TlsError::Unusable {
            path,
            message: e.to_string(),
        }
    };
    let chain = certs(&files.cert, &read(&files.cert)?)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => TlsError::Pem {
            path: files.key.clone(),
            message: other.to_string(),
        },
    })?;
    // The ring provider explicitly, as tonic's `tls-ring` uses it.
    let provider = live::provider();
    let verifier = match &files.client_ca {
        None => None,
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in certs(ca_path, &read(ca_path)?)? {
                roots.add(ca).map_err(unusable(ca_path))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if files.query_requires_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            Some(verifier.build().map_err(|e| TlsError::Unusable {
                path: ca_path.clone(),
                message: e.to_string(),
            })?)
        }
    };
    // Checks that the key is the certificate's, as `with_single_cert` does.
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(unusable(&files.key))?;
    Ok(ServerTls {
        key: Arc::new(key),
        mutual: verifier.is_some(),
        verifier,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// The certificates of a PEM file: at least one, and every PEM
/// certificate block decodes.
pub(crate) fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Why no identity could be read from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate: cannot parse: {0}")]
    Parse(String),
    #[error("client certificate: no subject alternative names and no common name")]
    NoName,
    #[error(
        "client certificate: subject alternative names without a DNS name (the common name is \
         not used when they are present)"
    )]
    NoDnsName,
    #[error(
        "client certificate: identity {0:?} is not a valid agent id (1 to 256 letters, digits, \
         '.', '_' and '-')"
    )]
    NotAnAgentId(String),
    #[error("client certificate: no DNS subject alternative name and more than one common name")]
    AmbiguousName,
    #[error("client certificate: common name is not a text string")]
    NotText,
}

/// The identity of the leaf certificate `der` (the rule is in the module
/// documentation).
pub fn cert_identity(der: &[u8]) -> Result<String, IdentityError> {
    let cert_der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&cert_der)
        .map_err(|e| IdentityError::Parse(format!("{e:?}")))?;
    let name = match first_dns_name(der)? {
        Some(name) => name,
        None => common_name(cert.subject())?.ok_or(IdentityError::NoName)?,
    };
    if !crate::roles::is_valid_id(&name) {
        return Err(IdentityError::NotAnAgentId(name));
    }
    Ok(name)
}

/// OID 2.5.29.17 (id-ce-subjectAltName), DER-encoded without tag and length.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The first DNS name in the subject alternative names of the certificate
/// `der` (a whole X.509 certificate): `None` without that extension,
/// [`IdentityError::NoDnsName`] when it holds no DNS name. The name is
/// returned as it is (not UTF-8: lossily), for the caller to judge.
///
/// Public so the fuzz targets and property tests can reach it.
pub fn first_dns_name(der: &[u8]) -> Result<Option<String>, IdentityError> {
    let bad = |what: &str| IdentityError::Parse(format!("certificate: {what}"));
    let (cert, _) = der_take(der, TAG_SEQUENCE).ok_or_else(|| bad("expected a SEQUENCE"))?;
    let (mut tbs, _) = der_take(cert, TAG_SEQUENCE).ok_or_else(|| bad("expected a SEQUENCE"))?;
    // tbsCertificate's fields up to `[3] extensions`, which comes last.
    let mut extensions = None;
    while let Some((tag, contents, rest)) = der_next(tbs) {
        if tag == TAG_EXTENSIONS {
            extensions = Some(contents);
        }
        tbs = rest;
    }
    let Some(extensions) = extensions else {
        return Ok(None);
    };
    let (mut list, _) =
        der_take(extensions, TAG_SEQUENCE).ok_or_else(|| bad("extensions: expected a SEQUENCE"))?;
    let mut names = None;
    while !list.is_empty() {
        let (ext, rest) =
            der_take(list, TAG_SEQUENCE).ok_or_else(|| bad("extension: expected a SEQUENCE"))?;
        list = rest;
        let (oid, mut value) =
            der_take(ext, TAG_OID).ok_or_else(|| bad("extension: expected an OID"))?;
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if let Some((_critical, rest)) = der_take(value, TAG_BOOLEAN) {
            value = rest;
        }
        let (octets, _) = der_take(value, TAG_OCTET_STRING)
            .ok_or_else(|| bad("subject alternative names: expected an OCTET STRING"))?;
        let (seq, _) = der_take(octets, TAG_SEQUENCE)
            .ok_or_else(|| bad("subject alternative names: expected a SEQUENCE"))?;
        if names.replace(seq).is_some() {
            return Err(bad("two subject alternative name extensions"));
        }
    }
    let Some(mut names) = names else {
        return Ok(None);
    };
    while let Some((tag, contents, rest)) = der_next(names) {
        if tag == TAG_DNS_NAME {
            return Ok(Some(String::from_utf8_lossy(contents).into_owned()));
        }
        names = rest;
    }
    if !names.is_empty() {
        return Err(bad("subject alternative names: bad entry"));
    }
    Err(IdentityError::NoDnsName)
}

/// OID 2.5.4.3 (id-at-commonName), DER-encoded without tag and length.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// DER tags used in names.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;
const TAG_BOOLEAN: u8 = 0x01;
const TAG_OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a tbsCertificate.
const TAG_EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IA5String` in GeneralNames.
const TAG_DNS_NAME: u8 = 0x82;

/// The common name in a DER-encoded X.501 `Name` given as the contents of
/// its outer SEQUENCE (what webpki's `subject()` returns): `None` when there
/// is none, an error when there are several or it is not a text string.
///
/// Public so the fuzz targets and property tests can reach it.
pub fn common_name(subject: &[u8]) -> Result<Option<String>, IdentityError> {
    let bad = |what: &str| IdentityError::Parse(format!("subject: {what}"));
    let mut found: Option<String> = None;
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (set, rest) = der_take(rdns, TAG_SET).ok_or_else(|| bad("expected a SET"))?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, rest) =
                der_take(atvs, TAG_SEQUENCE).ok_or_else(|| bad("expected a SEQUENCE"))?;
            atvs = rest;
            let (oid, value) = der_take(atv, TAG_OID).ok_or_else(|| bad("expected an OID"))?;
            if oid != OID_COMMON_NAME {
                continue;
            }
            let (&tag, _) = value.split_first().ok_or_else(|| bad("empty value"))?;
            let (text, trailing) = der_take(value, tag).ok_or_else(|| bad("bad value"))?;
            if !trailing.is_empty() {
                return Err(bad("trailing bytes after the common name"));
            }
            if !matches!(tag, TAG_UTF8_STRING | TAG_PRINTABLE_STRING | TAG_IA5_STRING) {
                return Err(IdentityError::NotText);
            }
            let text = std::str::from_utf8(text).map_err(|_| IdentityError::NotText)?;
            if found.replace(text.to_owned()).is_some() {
                return Err(IdentityError::AmbiguousName);
            }
        }
    }
    Ok(found)
}

/// Splits one DER element with tag `tag` off `input`: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = der_next(input)?;
    (t == tag).then_some((contents, rest))
}

/// Splits the next DER element off `input`: (tag, contents, rest). Only
/// one-byte tags and definite lengths of up to four bytes, as certificates
/// use.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if input.len() < len {
        return None;
    }
    let (contents, rest) = input.split_at(len);
    Some((t, contents, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `SET { SEQUENCE { OID, value } }` for one attribute.
    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut atv = vec![TAG_OID, oid.len() as u8];
        atv.extend_from_slice(oid);
        atv.extend_from_slice(&[tag, value.len() as u8]);
        atv.extend_from_slice(value);
        let mut seq = vec![TAG_SEQUENCE, atv.len() as u8];
        seq.extend(atv);
        let mut set = vec![TAG_SET, seq.len() as u8];
        set.extend(seq);
        set
    }

    const OID_ORG: &[u8] = &[0x55, 0x04, 0x0a];

    /// A directory of its own under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tributary-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(cert),
            key: dir.join(key),
            client_ca: None,
            query_requires_client_cert: true,
        }
    }

    /// The message, word for word, and as `main` prints it (`{:#}`): the
    /// same text, each cause once.
    fn message(files: &TlsFiles) -> String {
        let e = load(files).unwrap_err();
        assert!(std::error::Error::source(&e).is_none(), "{e:?}");
        let text = e.to_string();
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), text);
        text
    }

    #[test]
    fn bad_certificate_files_are_named_with_their_cause_once() {
        let dir = scratch("messages");
        std::fs::write(dir.join("notes.txt"), "not a certificate\n").unwrap();
        let missing = files(&dir, "missing.pem", "notes.txt");
        assert_eq!(
            message(&missing),
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                dir.join("missing.pem").display()
            )
        );
        let not_pem = files(&dir, "notes.txt", "notes.txt");
        assert_eq!(
            message(&not_pem),
            format!(
                "{}: no PEM certificate in the file",
                dir.join("notes.txt").display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn common_name_is_found_among_other_attributes() {
        let mut name = rdn(OID_ORG, TAG_UTF8_STRING, b"Tributary");
        name.extend(rdn(OID_COMMON_NAME, TAG_PRINTABLE_STRING, b"edge-1"));
        assert_eq!(common_name(&name), Ok(Some("edge-1".to_owned())));
    }

    #[test]
    fn no_common_name_is_none() {
        let name = rdn(OID_ORG, TAG_UTF8_STRING, b"Tributary");
        assert_eq!(common_name(&name), Ok(None));
        assert_eq!(common_name(&[]), Ok(None));
    }

    #[test]
    fn two_common_names_are_ambiguous() {
        let mut name = rdn(OID_COMMON_NAME, TAG_UTF8_STRING, b"edge-1");
        name.extend(rdn(OID_COMMON_NAME, TAG_UTF8_STRING, b"edge-2"));
        assert_eq!(common_name(&name), Err(IdentityError::AmbiguousName));
    }

    #[test]
    fn a_binary_common_name_is_refused() {
        let name = rdn(OID_COMMON_NAME, 0x04, b"edge-1");
        assert_eq!(common_name(&name), Err(IdentityError::NotText));
    }

    #[test]
    fn truncated_names_are_errors_not_panics() {
        let name = rdn(OID_COMMON_NAME, TAG_UTF8_STRING, b"edge-1");
        for cut in 1..name.len() {
            assert!(common_name(&name[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn long_form_lengths_are_read() {
        let value = vec![b'a'; 200];
        let mut atv = vec![TAG_OID, 3, 0x55, 0x04, 0x03, TAG_UTF8_STRING, 0x81, 200];
        atv.extend_from_slice(&value);
        let mut seq = vec![TAG_SEQUENCE, 0x81, atv.len() as u8];
        seq.extend(atv);
        let mut set = vec![TAG_SET, 0x81, seq.len() as u8];
        set.extend(seq);
        assert_eq!(common_name(&set), Ok(Some("a".repeat(200))));
    }
}
