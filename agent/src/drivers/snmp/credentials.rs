//! SNMPv3 USM credentials as written in a device table (`auth_protocol`,
//! `auth_password`, `priv_protocol`, `priv_password`), shared by the `snmp`
//! driver and the `snmp_trap` receiver.

use toml::Spanned;

use super::config::MIN_USM_PASSWORD;
use super::{SnmpAuthProtocol, SnmpPrivProtocol};
use crate::config::{ConfigError, Source};

/// Type of an optional spanned string key.
type Key = Option<Spanned<String>>;

/// An SNMPv3 user name (`user`), checked as both drivers check it: 1 to 32
/// octets (RFC 3414's securityName, an SnmpAdminString of 1..32).
pub(crate) fn usm_user(
    src: &Source<'_>,
    key: &str,
    user: &Spanned<String>,
) -> Result<String, ConfigError> {
    let name = user.get_ref();
    if name.is_empty() || name.len() > 32 {
        return Err(src.error(
            user.span(),
            format!("{key}.user"),
            "must be 1 to 32 characters (RFC 3414)",
        ));
    }
    Ok(name.clone())
}

/// SNMPv3 USM credentials from `auth_protocol`/`auth_password` and
/// `priv_protocol`/`priv_password` (shared by the `snmp` and `snmp_trap`
/// drivers): protocols named as net-snmp names them, passwords at least
/// [`MIN_USM_PASSWORD`] long, privacy only with authentication.
#[allow(clippy::type_complexity)]
pub(crate) fn usm_credentials(
    src: &Source<'_>,
    key: &str,
    (auth_protocol, auth_password): (&Key, &Key),
    (priv_protocol, priv_password): (&Key, &Key),
) -> Result<
    (
        Option<(SnmpAuthProtocol, String)>,
        Option<(SnmpPrivProtocol, String)>,
    ),
    ConfigError,
> {
    let password = |p: &Spanned<String>, name: &str| {
        if p.get_ref().len() < MIN_USM_PASSWORD {
            Err(src.error(
                p.span(),
                format!("{key}.{name}"),
                format!("must be at least {MIN_USM_PASSWORD} characters (RFC 3414)"),
            ))
        } else {
            Ok(p.get_ref().clone())
        }
    };
    let auth = match (auth_protocol, auth_password) {
        (None, None) => None,
        (Some(p), None) => {
            return Err(src.error(
                p.span(),
                format!("{key}.auth_protocol"),
                "`auth_protocol` needs `auth_password`",
            ));
        }
        (proto, Some(pw)) => {
            let protocol = match proto
                .as_ref()
                .map(|p| (p, p.get_ref().to_ascii_lowercase()))
            {
                None => SnmpAuthProtocol::Sha1,
                Some((_, p)) if p == "sha" || p == "sha1" => SnmpAuthProtocol::Sha1,
                Some((_, p)) if p == "sha256" || p == "sha-256" => SnmpAuthProtocol::Sha256,
                Some((_, p)) if p == "sha512" || p == "sha-512" => SnmpAuthProtocol::Sha512,
                Some((p, _)) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.auth_protocol"),
                        format!(
                            "unsupported auth protocol \"{}\" (expected sha, sha256 or sha512)",
                            p.get_ref()
                        ),
                    ));
                }
            };
            Some((protocol, password(pw, "auth_password")?))
        }
    };
    let privacy = match (priv_protocol, priv_password) {
        (None, None) => None,
        (Some(p), None) => {
            return Err(src.error(
                p.span(),
                format!("{key}.priv_protocol"),
                "`priv_protocol` needs `priv_password`",
            ));
        }
        (proto, Some(pw)) => {
            if auth.is_none() {
                return Err(src.error(
                    pw.span(),
                    format!("{key}.priv_password"),
                    "privacy needs authentication: set `auth_password` too",
                ));
            }
            let protocol = match proto
                .as_ref()
                .map(|p| (p, p.get_ref().to_ascii_lowercase()))
            {
                None => SnmpPrivProtocol::Aes128,
                Some((_, p)) if p == "aes" || p == "aes128" || p == "aes-128" => {
                    SnmpPrivProtocol::Aes128
                }
                Some((p, name)) if name.contains("des") => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.priv_protocol"),
                        format!(
                            "DES privacy (\"{}\") is not supported: DES is broken (56-bit keys) and not among this agent's ciphers; configure the device's user with AES (priv_protocol = \"aes\")",
                            p.get_ref()
                        ),
                    ));
                }
                Some((p, _)) => {
                    return Err(src.error(
                        p.span(),
                        format!("{key}.priv_protocol"),
                        format!(
                            "unsupported privacy protocol \"{}\" (expected aes)",
                            p.get_ref()
                        ),
                    ));
                }
            };
            Some((protocol, password(pw, "priv_password")?))
        }
    };
    Ok((auth, privacy))
}
