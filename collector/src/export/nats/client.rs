//! A small client of the NATS text protocol (<https://docs.nats.io/reference/reference-protocols/nats-protocol>),
//! only what the JetStream export and its tests need: `CONNECT` (user and
//! password, a token, an nkey or a user JWT with the server's nonce
//! signed, `nkey.rs`; over TLS when asked or when the server requires
//! it, `tls.rs`), `PING`/`PONG`, `SUB`, `PUB`/`HPUB` (headers, for
//! `Nats-Msg-Id`), and incoming `MSG`/`HMSG`; JetStream's API is requests
//! on `$JS.API.*` with JSON bodies, made with [`Client::request`].
//!
//! One owner: the export task (or a test) holds the client and drives it;
//! there is no background task. Writes are buffered until [`Client::flush`];
//! reads wait for the next frame. A broken connection is an error the
//! owner answers by connecting again (messages not acknowledged are
//! published again; JetStream's duplicate window drops the copies).
//!
//! Why not `async-nats`: see `nats.rs` (README "Exports").

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
    ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;

use super::tls::NatsTls;
pub use crate::config::exports::NatsAuth;

/// A connection's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

type Stream = Box<dyn Io>;

/// Longest protocol line read (an `INFO` with many cluster URLs fits).
const MAX_LINE: usize = 64 * 1024;
/// Largest message body accepted from the server.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("{addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// `-ERR` in answer to `CONNECT`: mostly credentials.
    #[error("{addr} refused the connection: {message} (check the credentials and TLS settings)")]
    Rejected { addr: String, message: String },
    #[error("the server closed the connection")]
    Closed,
    #[error("the server said: {0}")]
    Server(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A message delivered to one of our subscriptions.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    /// The header block as sent (`NATS/1.0[ status]\r\nK: V\r\n...\r\n`).
    pub headers: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Msg {
    /// The status code of the header line (`NATS/1.0 503` → 503).
    pub fn status(&self) -> Option<u16> {
        let line = self.headers.split(|&b| b == b'\r').next()?;
        let line = std::str::from_utf8(line).ok()?;
        line.strip_prefix("NATS/1.0")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let text = std::str::from_utf8(&self.headers).ok()?;
        text.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A connection to one NATS server.
pub struct Client {
    reader: BufReader<ReadHalf<Stream>>,
    writer: BufWriter<WriteHalf<Stream>>,
    /// Largest payload (headers included) the server accepts.
    max_payload: usize,
    /// `_INBOX.<random>`: replies to this client's requests.
    inbox: String,
    inbox_sid: Option<u64>,
    next_sid: u64,
    next_request: u64,
    /// Messages read while waiting for a request's reply.
    queued: VecDeque<Msg>,
    line: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("inbox", &self.inbox)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

/// A random token for inbox names.
fn nuid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(tributary_process::now_ns());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl Client {
    /// Connects to `addr` (`host:port`), upgrades to TLS after the
    /// server's `INFO` when `tls` is given (a server that requires TLS
    /// without it is refused, naming the settings), sends `CONNECT` with
    /// `auth`, and waits for the server's `PONG` (or its refusal), all
    /// within `timeout`.
    pub async fn connect(
        addr: &str,
        auth: &NatsAuth,
        tls: Option<&NatsTls>,
        timeout: Duration,
    ) -> Result<Client, NatsError> {
        let io = |cause| NatsError::Connect {
            addr: addr.to_owned(),
            cause,
        };
        let connecting =
            async {
                let stream = TcpStream::connect(addr).await.map_err(io)?;
                stream.set_nodelay(true).map_err(io)?;
                // The server's INFO comes in plain text, before any TLS; it
                // sends nothing more until the client speaks.
                let mut plain = BufReader::new(stream);
                let mut first = Vec::new();
                let n = (&mut plain)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut first)
                    .await?;
                if n == 0 {
                    return Err(NatsError::Closed);
                }
                let line = String::from_utf8_lossy(&first).trim_end().to_owned();
                let Some(info) = line.strip_prefix("INFO ") else {
                    return Err(NatsError::Protocol(format!(
                        "expected INFO first, got {:?}",
                        line.chars().take(80).collect::<String>()
                    )));
                };
                let info: Value = serde_json::from_str(info)
                    .map_err(|e| NatsError::Protocol(format!("INFO: {e}")))?;
                if !plain.buffer().is_empty() {
                    return Err(NatsError::Protocol(
                        "the server sent more than INFO before CONNECT".to_owned(),
                    ));
                }
                let tcp = plain.into_inner();
                let stream: Stream =
                    match tls {
                        Some(tls) => Box::new(tls.wrap(addr, tcp).await.map_err(|cause| {
                            NatsError::Connect {
                                addr: addr.to_owned(),
                                cause: std::io::Error::new(cause.kind(), format!("tls: {cause}")),
                            }
                        })?),
                        None => {
                            if info.get("tls_required").and_then(Value::as_bool) == Some(true) {
                                return Err(NatsError::Protocol(
                                    "the server requires TLS: use tls:// servers or [exports.tls]"
                                        .to_owned(),
                                ));
                            }
                            Box::new(tcp)
                        }
                    };
                let (r, w) = tokio::io::split(stream);
                let mut c = Client {
                    reader: BufReader::with_capacity(256 * 1024, r),
                    writer: BufWriter::with_capacity(256 * 1024, w),
                    max_payload: 1024 * 1024,
                    inbox: format!("_INBOX.{}", nuid()),
                    inbox_sid: None,
                    next_sid: 1,
                    next_request: 0,
                    queued: VecDeque::new(),
                    line: Vec::new(),
                };
                if info.get("headers").and_then(Value::as_bool) != Some(true) {
                    return Err(NatsError::Protocol(
                        "the server does not support headers (NATS 2.2 or later is needed)"
                            .to_owned(),
                    ));
                }
                if let Some(m) = info.get("max_payload").and_then(Value::as_u64) {
                    c.max_payload = usize::try_from(m).unwrap_or(usize::MAX);
                }
                let mut connect = json!({
                    "verbose": false,
                    "pedantic": false,
                    "lang": "rust",
                    "version": env!("CARGO_PKG_VERSION"),
                    "name": "tributary-collector",
                    "protocol": 1,
                    "headers": true,
                    "no_responders": true,
                });
                match auth {
                    NatsAuth::None => {}
                    NatsAuth::UserPassword { user, password } => {
                        connect["user"] = json!(user);
                        connect["pass"] = json!(password);
                    }
                    NatsAuth::Token(t) => connect["auth_token"] = json!(t),
                    // The server's nonce, signed: proof of the seed, which
                    // never leaves this process.
                    NatsAuth::Nkey(key) => {
                        connect["nkey"] = json!(key.public_key());
                        connect["sig"] = json!(signed_nonce(&info, key)?);
                    }
                    NatsAuth::Credentials(c) => {
                        connect["jwt"] = json!(c.jwt);
                        connect["sig"] = json!(signed_nonce(&info, &c.key)?);
                    }
                }
                let text = format!("CONNECT {connect}\r\nPING\r\n");
                c.writer.write_all(text.as_bytes()).await?;
                c.writer.flush().await?;
                loop {
                    c.read_line().await?;
                    match c.line.as_slice() {
                        b"PONG" => break,
                        b"+OK" => {}
                        b"PING" => c.writer.write_all(b"PONG\r\n").await?,
                        l if l.starts_with(b"INFO ") => {}
                        l if l.starts_with(b"-ERR") => {
                            return Err(NatsError::Rejected {
                                addr: addr.to_owned(),
                                message: String::from_utf8_lossy(&l[4..]).trim().to_owned(),
                            });
                        }
                        l => {
                            return Err(NatsError::Protocol(format!(
                                "unexpected {:?} after CONNECT",
                                String::from_utf8_lossy(l)
                            )));
                        }
                    }
                }
                Ok(c)
            };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| NatsError::Timeout(timeout))?
    }

    /// Largest message (headers and payload) the server takes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// This client's reply prefix; replies arrive on `<inbox>.<token>`.
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Subscribes to `subject`; returns the subscription id.
    pub async fn subscribe(&mut self, subject: &str) -> Result<u64, NatsError> {
        let sid = self.next_sid;
        self.next_sid += 1;
        let text = format!("SUB {subject} {sid}\r\n");
        self.writer.write_all(text.as_bytes()).await?;
        Ok(sid)
    }

    /// Subscribes to this client's inbox (once).
    pub async fn subscribe_inbox(&mut self) -> Result<u64, NatsError> {
        if let Some(sid) = self.inbox_sid {
            return Ok(sid);
        }
        let subject = format!("{}.*", self.inbox);
        let sid = self.subscribe(&subject).await?;
        self.inbox_sid = Some(sid);
        Ok(sid)
    }

    /// Buffers a publish of `payload` to `subject`, with `headers` (each
    /// name and value free of CR and LF) and a `reply` subject.
    pub async fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), NatsError> {
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        if headers.is_empty() {
            let line = format!("PUB {subject}{reply} {}\r\n", payload.len());
            self.writer.write_all(line.as_bytes()).await?;
        } else {
            let mut block = String::from("NATS/1.0\r\n");
            for (k, v) in headers {
                block.push_str(k);
                block.push_str(": ");
                block.push_str(v);
                block.push_str("\r\n");
            }
            block.push_str("\r\n");
            let line = format!(
                "HPUB {subject}{reply} {} {}\r\n",
                block.len(),
                block.len() + payload.len()
            );
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.write_all(block.as_bytes()).await?;
        }
        self.writer.write_all(payload).await?;
        self.writer.write_all(b"\r\n").await?;
        Ok(())
    }

    /// Something was read and not handled yet: [`Client::next`] answers
    /// without waiting on the network (or only for the rest of a frame
    /// already arriving).
    pub fn has_buffered(&self) -> bool {
        !self.queued.is_empty() || !self.reader.buffer().is_empty()
    }

    /// Sends what is buffered.
    pub async fn flush(&mut self) -> Result<(), NatsError> {
        self.writer.flush().await?;
        Ok(())
    }

    /// The next message for one of our subscriptions (answering the
    /// server's `PING`s on the way). Not cancel-safe: after a timeout or a
    /// cancellation around it, drop the client.
    pub async fn next(&mut self) -> Result<Msg, NatsError> {
        if let Some(m) = self.queued.pop_front() {
            return Ok(m);
        }
        loop {
            self.read_line().await?;
            let line = std::mem::take(&mut self.line);
            let result = self.frame(&line).await;
            self.line = line;
            if let Some(m) = result? {
                return Ok(m);
            }
        }
    }

    /// One frame whose line is `line`; `Some` for a message.
    async fn frame(&mut self, line: &[u8]) -> Result<Option<Msg>, NatsError> {
        let text = std::str::from_utf8(line)
            .map_err(|_| NatsError::Protocol("a line that is not UTF-8".to_owned()))?;
        let mut words = text.split_ascii_whitespace();
        let op = words.next().unwrap_or("");
        match op.to_ascii_uppercase().as_str() {
            "PING" => {
                self.writer.write_all(b"PONG\r\n").await?;
                self.writer.flush().await?;
                Ok(None)
            }
            "PONG" | "+OK" | "INFO" => Ok(None),
            "-ERR" => Err(NatsError::Server(text[4..].trim().to_owned())),
            "MSG" | "HMSG" => {
                let args: Vec<&str> = words.collect();
                let with_headers = op.eq_ignore_ascii_case("HMSG");
                let sizes = if with_headers { 2 } else { 1 };
                if args.len() < 2 + sizes || args.len() > 3 + sizes {
                    return Err(NatsError::Protocol(format!("malformed {text:?}")));
                }
                let num = |s: &str| {
                    s.parse::<usize>()
                        .map_err(|_| NatsError::Protocol(format!("malformed {text:?}")))
                };
                let total = num(args[args.len() - 1])?;
                let header_len = if with_headers {
                    num(args[args.len() - 2])?
                } else {
                    0
                };
                if total > MAX_BODY || header_len > total {
                    return Err(NatsError::Protocol(format!("message too large: {text:?}")));
                }
                let mut body = vec![0u8; total + 2];
                self.reader.read_exact(&mut body).await?;
                body.truncate(total);
                let payload = body.split_off(header_len);
                Ok(Some(Msg {
                    subject: args[0].to_owned(),
                    sid: num(args[1])? as u64,
                    reply: (args.len() == 3 + sizes).then(|| args[2].to_owned()),
                    headers: body,
                    payload,
                }))
            }
            _ => Err(NatsError::Protocol(format!(
                "unknown operation {:?}",
                text.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// A request: publishes `body` to `subject` with a reply subject of
    /// this client's inbox and waits (at most `timeout`) for the answer.
    /// Other messages that arrive meanwhile are kept for [`Client::next`].
    pub async fn request(
        &mut self,
        subject: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Msg, NatsError> {
        let sid = self.subscribe_inbox().await?;
        self.next_request += 1;
        let reply = format!("{}.r{}", self.inbox, self.next_request);
        self.publish(subject, Some(&reply), &[], body).await?;
        self.flush().await?;
        let waiting = async {
            loop {
                self.read_line().await?;
                let line = std::mem::take(&mut self.line);
                let result = self.frame(&line).await;
                self.line = line;
                match result? {
                    Some(m) if m.sid == sid && m.subject == reply => return Ok(m),
                    Some(m) if m.sid == sid => {} // a late answer to an earlier request
                    Some(m) => self.queued.push_back(m),
                    None => {}
                }
            }
        };
        tokio::time::timeout(timeout, waiting)
            .await
            .map_err(|_| NatsError::Timeout(timeout))?
    }

    /// A JetStream API request with a JSON body; the JSON answer, or the
    /// API's error (`{"error": {...}}`) as [`NatsError::Server`].
    pub async fn js_api(
        &mut self,
        subject: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, NatsError> {
        let m = self
            .request(subject, body.to_string().as_bytes(), timeout)
            .await?;
        if m.status() == Some(503) {
            return Err(NatsError::Server(
                "no responders: JetStream is not enabled or not available".to_owned(),
            ));
        }
        let v: Value = serde_json::from_slice(&m.payload)
            .map_err(|e| NatsError::Protocol(format!("{subject}: answer is not JSON: {e}")))?;
        if let Some(e) = v.get("error") {
            return Err(NatsError::Server(api_error(e)));
        }
        Ok(v)
    }

    /// Reads one line (without its CRLF) into `self.line`.
    async fn read_line(&mut self) -> Result<(), NatsError> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .await?;
        if n == 0 {
            return Err(NatsError::Closed);
        }
        if self.line.last() != Some(&b'\n') {
            return Err(NatsError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        while matches!(self.line.last(), Some(b'\n' | b'\r')) {
            self.line.pop();
        }
        Ok(())
    }
}

/// The `nonce` of the server's `INFO`, signed with `key`, in base64url;
/// a server without a nonce does not take nkeys or JWTs.
fn signed_nonce(info: &Value, key: &super::nkey::KeyPair) -> Result<String, NatsError> {
    let nonce = info.get("nonce").and_then(Value::as_str).ok_or_else(|| {
        NatsError::Protocol(
            "the server sent no nonce, so it does not take nkey or JWT (.creds) \
             authentication: check its authorization settings"
                .to_owned(),
        )
    })?;
    let sig = key.sign(nonce.as_bytes()).map_err(NatsError::Protocol)?;
    Ok(super::nkey::base64url(&sig))
}

/// A JetStream API error object as one line: `description (code, err_code)`.
pub fn api_error(e: &Value) -> String {
    let desc = e
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    let code = e.get("code").and_then(Value::as_u64).unwrap_or(0);
    let err_code = e.get("err_code").and_then(Value::as_u64).unwrap_or(0);
    format!("{desc} (code {code}, err_code {err_code})")
}

#[cfg(test)]
mod tests {
    use super::Msg;

    #[test]
    fn header_block_is_read() {
        let m = Msg {
            headers: b"NATS/1.0 503\r\nNats-Msg-Id: a.1\r\n\r\n".to_vec(),
            ..Msg::default()
        };
        assert_eq!(m.status(), Some(503));
        assert_eq!(m.header("nats-msg-id"), Some("a.1"));
        assert_eq!(m.header("x"), None);
        let plain = Msg {
            headers: b"NATS/1.0\r\n\r\n".to_vec(),
            ..Msg::default()
        };
        assert_eq!(plain.status(), None);
    }
}
