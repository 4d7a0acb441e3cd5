//! Settings of the TCP probe (`driver = "tcp"`): the address, and an
//! optional request and expected reply.

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};
use crate::drivers::settings::{DriverTable, Settings, check_address};

/// A TCP connect probe, optionally sending a request and expecting a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpConfig {
    /// `host:port`.
    pub address: String,
    /// Bytes written after connecting (TOML escapes such as `\r\n` apply).
    pub send: Option<String>,
    /// Text the reply must contain; read until it appears, the peer closes
    /// or [`super::MAX_READ`] bytes.
    pub expect: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    address: Spanned<String>,
    send: Option<String>,
    expect: Option<Spanned<String>>,
}

impl RawTcp {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<TcpConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
        if let Some(e) = &self.expect
            && e.get_ref().is_empty()
        {
            return Err(src.error(e.span(), format!("{key}.expect"), "must not be empty"));
        }
        Ok(TcpConfig {
            address,
            send: self.send,
            expect: self.expect.map(Spanned::into_inner),
        })
    }
}

impl Settings for TcpConfig {
    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawTcp = table.deserialize()?;
        raw.validate(table.src, table.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::testing::device;

    #[test]
    fn tcp_send_and_expect() {
        let d = device("driver = \"tcp\"\naddress = \"127.0.0.1:22\"\nsend = \"PING\\r\\n\"\nexpect = \"PONG\"\n")
            .expect("valid");
        assert_eq!(
            d,
            DriverConfig::Tcp(TcpConfig {
                address: "127.0.0.1:22".into(),
                send: Some("PING\r\n".into()),
                expect: Some("PONG".into())
            })
        );
    }
}
