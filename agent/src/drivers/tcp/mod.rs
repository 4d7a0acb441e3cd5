//! The TCP probe: connects (up/down and connect latency), optionally sends a
//! request and waits for a reply containing an expected text.
//!
//! Samples: `connect_seconds` always, `response_seconds` (from connect to
//! the expected text) when `expect` is set. Every poll opens a new
//! connection and closes it, so a cancelled poll leaves nothing behind.
//!
//! Owns: nothing between polls (`config.rs`: its settings). May touch:
//! `crate::reading` only.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod config;

pub use self::config::TcpConfig;

use super::{BuildError, PollError, Poller, connect_error, failed_metrics};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Sample, Value};

/// Most bytes a TCP probe reads while waiting for `expect`.
pub const MAX_READ: usize = 64 * 1024;

/// Metric names.
pub const CONNECT_METRIC: &str = "connect_seconds";
pub const RESPONSE_METRIC: &str = "response_seconds";

/// A TCP endpoint to probe.
#[derive(Debug)]
pub struct TcpDriver {
    cfg: TcpConfig,
}

impl TcpDriver {
    pub fn new(cfg: &TcpConfig) -> Self {
        TcpDriver { cfg: cfg.clone() }
    }

    /// (name, unit) of every metric a poll reports.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        std::iter::once((CONNECT_METRIC, "s"))
            .chain(self.cfg.expect.as_ref().map(|_| (RESPONSE_METRIC, "s")))
    }

    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        let address = &self.cfg.address;
        let start = Instant::now();
        let mut stream = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| connect_error(address, &e))?;
        let connected = start.elapsed();
        let seconds = |v: f64, name: &str| Sample {
            unit: "s".into(),
            ..Sample::new(name, Value::F64(v))
        };
        let mut out = vec![seconds(connected.as_secs_f64(), CONNECT_METRIC)];
        if let Some(send) = &self.cfg.send {
            stream.write_all(send.as_bytes()).await.map_err(|e| {
                PollError::error(format!("tcp {address}: sending the request: {e}"))
            })?;
        }
        if let Some(expect) = &self.cfg.expect {
            let reply = read_until(&mut stream, expect.as_bytes())
                .await
                .map_err(|e| PollError::error(format!("tcp {address}: reading the reply: {e}")))?;
            match reply {
                Reply::Found => {
                    out.push(seconds(
                        (start.elapsed() - connected).as_secs_f64(),
                        RESPONSE_METRIC,
                    ));
                }
                Reply::Missing { got, closed } => {
                    return Err(PollError::error(format!(
                        "tcp {address}: expected {expect:?} in the reply, got {} bytes{}: {:?}",
                        got.len(),
                        if closed {
                            " before the peer closed"
                        } else {
                            " (read limit)"
                        },
                        String::from_utf8_lossy(&got[..got.len().min(120)])
                    )));
                }
            }
        }
        Ok(out)
    }
}

enum Reply {
    Found,
    Missing { got: Vec<u8>, closed: bool },
}

async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> io::Result<Reply> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Reply::Missing { got, closed: true });
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(needle.len().max(1)).any(|w| w == needle) {
            return Ok(Reply::Found);
        }
        if got.len() >= MAX_READ {
            return Ok(Reply::Missing { got, closed: false });
        }
    }
}

impl Poller for TcpDriver {
    type Settings = TcpConfig;

    fn build(settings: &TcpConfig, _: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(TcpDriver::new(settings))
    }

    /// Boxed: the poll future is large (see [`super::Driver::poll_values`]).
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Samples(Box::pin(TcpDriver::poll(self)).await?))
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        failed_metrics(self.metrics(), kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn driver(address: String, send: Option<&str>, expect: Option<&str>) -> TcpDriver {
        TcpDriver::new(&TcpConfig {
            address,
            send: send.map(Into::into),
            expect: expect.map(Into::into),
        })
    }

    #[tokio::test]
    async fn connect_send_expect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf).await {
                        let reply: &[u8] = if &buf[..n] == b"PING\r\n" {
                            b"+PONG\r\n"
                        } else {
                            b"-ERR\r\n"
                        };
                        let _ = s.write_all(reply).await;
                    }
                });
            }
        });
        let samples = driver(addr.to_string(), None, None)
            .poll()
            .await
            .expect("connects");
        assert_eq!(samples.len(), 1);
        assert!(matches!(samples[0].value, Value::F64(v) if v >= 0.0));
        let samples = driver(addr.to_string(), Some("PING\r\n"), Some("PONG"))
            .poll()
            .await
            .expect("pong");
        assert_eq!(samples[1].metric, RESPONSE_METRIC);
        let e = driver(addr.to_string(), Some("HELLO\r\n"), Some("PONG"))
            .poll()
            .await
            .expect_err("no pong");
        assert!(
            e.message.contains(
                "expected \"PONG\" in the reply, got 6 bytes before the peer closed: \"-ERR\\r\\n\""
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refused_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = driver(addr.to_string(), None, None)
            .poll()
            .await
            .expect_err("refused");
        assert_eq!(e.message, format!("connection refused to {addr}"));
    }
}
