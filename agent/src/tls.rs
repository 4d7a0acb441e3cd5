//! TLS towards the collector: turns a collector URL and the agent's `[tls]`
//! settings into a tonic [`Endpoint`].
//!
//! - `http://` without `[tls]`: plaintext.
//! - `https://`: TLS (rustls). The collector's certificate is verified
//!   against `tls.ca`, or the system's roots when `ca` is not set, for the
//!   URL's host or `tls.server_name`. With `tls.cert` and `tls.key` the agent
//!   presents a client certificate (mutual TLS); the collector then takes the
//!   agent's identity from it.
//! - `http://` with `[tls]`: refused, so a typo cannot silently turn TLS off.
//!
//! Files are read on every call, i.e. on every (re)connect: renewed
//! certificates are picked up without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tributary_process::error_chain;

use crate::config::TlsConfig;

/// How long a TLS handshake with the collector may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no endpoint could be built. Each cause is in the message, so no
/// variant has a `source()` (which would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid collector URL {url:?}: {}", error_chain(cause))]
    Url {
        url: String,
        cause: tonic::transport::Error,
    },
    #[error("{url}: [tls] is configured but the URL is not https://")]
    NotHttps { url: String },
    #[error("tls.{key} {}: cannot read: {cause}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("tls.{key} {}: no PEM {what} in the file", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{url}: tls setup: {}", error_chain(cause))]
    Config {
        url: String,
        cause: tonic::transport::Error,
    },
}

/// The endpoint for `url`, with TLS as `tls` and the URL's scheme say.
pub fn endpoint(url: &str, tls: Option<&TlsConfig>) -> Result<Endpoint, TlsError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|cause| TlsError::Url {
        url: url.to_owned(),
        cause,
    })?;
    let https = endpoint.uri().scheme_str() == Some("https");
    if !https {
        return match tls {
            Some(_) => Err(TlsError::NotHttps {
                url: url.to_owned(),
            }),
            None => Ok(endpoint),
        };
    }
    let config = client_config(tls)?;
    endpoint
        .tls_config(config)
        .map_err(|cause| TlsError::Config {
            url: url.to_owned(),
            cause,
        })
}

/// The rustls client settings of `[tls]` (or the defaults: system roots, no
/// client certificate).
pub fn client_config(tls: Option<&TlsConfig>) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    let default = TlsConfig::default();
    let tls = tls.unwrap_or(&default);
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read_pem(
            "ca",
            ca,
            "CERTIFICATE",
            "certificate",
        )?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        let cert = read_pem("cert", cert, "CERTIFICATE", "certificate")?;
        let key = read_pem("key", key, "PRIVATE KEY", "private key")?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// Reads a PEM file that must hold a block whose label ends with `label`
/// (`CERTIFICATE`; `PRIVATE KEY` also matches `RSA`/`EC PRIVATE KEY`).
fn read_pem(
    key: &'static str,
    path: &Path,
    label: &str,
    what: &'static str,
) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|cause| TlsError::Read {
        key,
        path: path.to_owned(),
        cause,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !found {
        return Err(TlsError::Pem {
            key,
            path: path.to_owned(),
            what,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_without_tls_is_plaintext() {
        let e = endpoint("http://127.0.0.1:7400", None).expect("valid");
        assert_eq!(e.uri().scheme_str(), Some("http"));
    }

    #[test]
    fn tls_settings_with_an_http_url_are_refused() {
        let tls = TlsConfig::default();
        let err = endpoint("http://127.0.0.1:7400", Some(&tls))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("http://127.0.0.1:7400: [tls] is configured but the URL is not https://")
        );
    }

    #[test]
    fn https_without_settings_uses_system_roots() {
        let e = endpoint("https://collector.example:7400", None).expect("valid");
        assert_eq!(e.uri().scheme_str(), Some("https"));
    }

    #[test]
    fn missing_and_wrong_files_name_their_key() {
        let tls = TlsConfig {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsConfig::default()
        };
        let err = endpoint("https://127.0.0.1:7400", Some(&tls))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("tls.ca /nonexistent/ca.pem: cannot read"),
            "{err}"
        );

        let dir = std::env::temp_dir().join(format!("tributary-agent-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let tls = TlsConfig {
            ca: Some(not_pem.clone()),
            ..TlsConfig::default()
        };
        let err = endpoint("https://127.0.0.1:7400", Some(&tls))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            format!(
                "tls.ca {}: no PEM certificate in the file",
                not_pem.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
