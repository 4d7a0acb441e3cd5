//! A small HTTP/1.1 client for plain `http://` devices: one keep-alive
//! connection per device, a request built once, answers framed with
//! `httparse`.
//!
//! A poll of a device that answers in time costs one `write`, one or two
//! `read`s and a parse, where a general client (reqwest/hyper) builds a
//! request, checks a connection out of a pool and runs a connection task per
//! request. What it covers: `Content-Length`, chunked and read-until-close
//! bodies, `Connection: close`, HTTP/1.0 answers, interim (1xx) answers, and
//! a retry on a fresh connection when a reused keep-alive connection turns
//! out to be closed before any byte of the answer. Redirects are not
//! followed (an error naming the `Location`). HTTPS, a URL with credentials
//! in it, and anything else it does not cover stay on reqwest
//! ([`PlainHttp::for_url`] says which).
//!
//! Cancellation: the connection is taken out of `self` before the request
//! and put back only after a complete, well-framed answer that allows
//! keep-alive, so a poll dropped at any await leaves no half-read
//! connection (see `drivers/mod.rs`).

use std::io;
use std::net::SocketAddr;

use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one response head.
const MAX_HEADERS: usize = 64;
/// First read buffer of a poll; grows when an answer is bigger. At most
/// 1 KiB, so glibc serves it from its per-thread cache.
const FIRST_READ: usize = 1024;

/// Where to connect.
#[derive(Debug, Clone)]
enum Target {
    /// An IP literal: no resolution on connect.
    Addr(SocketAddr),
    /// A host name, resolved on every (re)connect.
    Host(String, u16),
}

/// One device's plain HTTP endpoint and its idle keep-alive connection.
#[derive(Debug)]
pub struct PlainHttp {
    target: Target,
    /// The whole GET request, head only.
    request: Box<[u8]>,
    /// The keep-alive connection between polls.
    conn: Option<TcpStream>,
    /// Largest body accepted.
    max_body: usize,
}

/// A 2xx-or-not answer with its body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// `Location` of a 3xx answer, for the error message.
    pub location: Option<String>,
    pub body: Vec<u8>,
    /// Offset of the body within `body` (the head is read into the same
    /// buffer and not copied out).
    pub body_start: usize,
}

impl Response {
    pub fn body(&self) -> &[u8] {
        self.body.get(self.body_start..).unwrap_or_default()
    }
}

/// Why a request failed; the caller adds the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("connect to {target}: {cause}")]
    Connect { target: String, cause: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("invalid http answer: {0}")]
    Invalid(String),
    #[error("response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response body exceeds {0} bytes")]
    BodyTooLarge(usize),
}

impl PlainHttp {
    /// The plain client for `url`, or `None` when the URL needs the general
    /// client (not `http`, credentials in the URL, no host).
    /// `headers` are sent with every request (`Accept`, `Authorization`).
    pub fn for_url(
        url: &str,
        headers: &[(&str, &[u8])],
        user_agent: &str,
        max_body: usize,
    ) -> Option<PlainHttp> {
        let url = Url::parse(url).ok()?;
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let port = url.port_or_known_default()?;
        let host = url.host_str()?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let target = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Host(host.to_owned(), port),
        };
        let mut request = Vec::with_capacity(128);
        request.extend_from_slice(b"GET ");
        request.extend_from_slice(url.path().as_bytes());
        if let Some(q) = url.query() {
            request.push(b'?');
            request.extend_from_slice(q.as_bytes());
        }
        request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request.extend_from_slice(host.as_bytes());
        if let Some(p) = url.port() {
            request.extend_from_slice(format!(":{p}").as_bytes());
        }
        request.extend_from_slice(b"\r\nUser-Agent: ");
        request.extend_from_slice(user_agent.as_bytes());
        for (name, value) in headers {
            request.extend_from_slice(b"\r\n");
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value);
        }
        request.extend_from_slice(b"\r\n\r\n");
        Some(PlainHttp {
            target,
            request: request.into_boxed_slice(),
            conn: None,
            max_body,
        })
    }

    /// Sends the GET and reads the whole answer. A reused connection that
    /// fails before any byte of the answer arrived, or answers 408, is
    /// retried once on a fresh one (the server closed it while idle; a GET
    /// may be repeated).
    pub async fn get(&mut self) -> Result<Response, FetchError> {
        if let Some(conn) = self.conn.take() {
            match self.exchange(conn, true).await {
                Ok(r) => return Ok(r),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Stale(_)) => {}
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, false).await.map_err(|a| match a {
            Attempt::Stale(e) | Attempt::Failed(e) => e,
        })
    }

    async fn connect(&self) -> Result<TcpStream, FetchError> {
        let result = match &self.target {
            Target::Addr(a) => TcpStream::connect(*a).await,
            Target::Host(h, p) => TcpStream::connect((h.as_str(), *p)).await,
        };
        let stream = result.map_err(|cause| FetchError::Connect {
            target: match &self.target {
                Target::Addr(a) => a.to_string(),
                Target::Host(h, p) => format!("{h}:{p}"),
            },
            cause,
        })?;
        // One write per request: Nagle would only add latency.
        stream.set_nodelay(true).map_err(FetchError::Io)?;
        Ok(stream)
    }

    /// One request and its answer on `conn`; keeps `conn` for the next
    /// poll when the answer allows it.
    async fn exchange(&mut self, mut conn: TcpStream, reused: bool) -> Result<Response, Attempt> {
        if let Err(e) = conn.write_all(&self.request).await {
            return Err(Attempt::Stale(FetchError::Io(e)));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
        let mut received = false;
        let head = loop {
            if let Some(h) = parse_head(&buf)? {
                // Interim answers (100 Continue, 103 Early Hints) come
                // before the real one: drop them and parse on.
                if (100..200).contains(&h.status) && h.status != 101 {
                    buf.drain(..h.len);
                    continue;
                }
                break h;
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(FetchError::HeadTooLarge.into());
            }
            match read_more(&mut conn, &mut buf, FIRST_READ).await {
                Ok(0) if !received => return Err(Attempt::Stale(FetchError::Closed)),
                Ok(0) => return Err(FetchError::Closed.into()),
                Ok(_) => received = true,
                Err(e) if !received => return Err(Attempt::Stale(FetchError::Io(e))),
                Err(e) => return Err(FetchError::Io(e).into()),
            }
        };
        if reused && head.status == 408 {
            // A server that times an idle connection out may say so with a
            // 408 before closing it: that answers no request of ours.
            return Err(Attempt::Stale(FetchError::Closed));
        }
        if head.status == 101 {
            return Err(FetchError::Invalid("unexpected 101 switching protocols".into()).into());
        }
        let no_body = head.status == 204 || head.status == 304;
        let (body, body_start, reusable) = if no_body {
            let clean = buf.len() == head.len;
            (Vec::new(), 0, clean)
        } else if head.chunked {
            let (body, clean) = self.read_chunked(&mut conn, buf, head.len).await?;
            (body, 0, clean)
        } else if let Some(len) = head.content_length {
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= self.max_body)
                .ok_or(FetchError::BodyTooLarge(self.max_body))?;
            let end = head.len + len;
            while buf.len() < end {
                let want = end - buf.len();
                if read_more(&mut conn, &mut buf, want)
                    .await
                    .map_err(FetchError::Io)?
                    == 0
                {
                    return Err(FetchError::Closed.into());
                }
            }
            let clean = buf.len() == end;
            buf.truncate(end);
            (buf, head.len, clean)
        } else {
            // Neither length nor chunks: the body ends with the connection.
            loop {
                if buf.len() - head.len > self.max_body {
                    return Err(FetchError::BodyTooLarge(self.max_body).into());
                }
                if read_more(&mut conn, &mut buf, FIRST_READ)
                    .await
                    .map_err(FetchError::Io)?
                    == 0
                {
                    break;
                }
            }
            (buf, head.len, false)
        };
        if reusable && head.keep_alive {
            self.conn = Some(conn);
        }
        Ok(Response {
            status: head.status,
            location: head.location,
            body,
            body_start,
        })
    }

    /// Decodes a chunked body that starts at `buf[start..]`, reading more as
    /// needed; returns the body and whether the connection ended cleanly
    /// (nothing after the last chunk's trailers).
    async fn read_chunked(
        &self,
        conn: &mut TcpStream,
        mut buf: Vec<u8>,
        start: usize,
    ) -> Result<(Vec<u8>, bool), FetchError> {
        let mut body = Vec::new();
        let mut pos = start;
        let mut last_chunk = false;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            if last_chunk {
                // Trailer lines, then an empty line.
                match rest.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        pos += 2;
                        return Ok((body, pos == buf.len()));
                    }
                    Some(n) => {
                        pos += n + 2;
                        continue;
                    }
                    None if rest.len() > MAX_HEAD_BYTES => return Err(FetchError::HeadTooLarge),
                    None => {}
                }
            } else {
                match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((consumed, size))) => {
                        let size = usize::try_from(size)
                            .ok()
                            .filter(|&s| s <= self.max_body.saturating_sub(body.len()))
                            .ok_or(FetchError::BodyTooLarge(self.max_body))?;
                        if size == 0 {
                            pos += consumed;
                            last_chunk = true;
                            continue;
                        }
                        let data = pos + consumed;
                        if buf.len() >= data + size + 2 {
                            if buf.get(data + size..data + size + 2) != Some(b"\r\n") {
                                return Err(FetchError::Invalid(
                                    "chunk not followed by CRLF".into(),
                                ));
                            }
                            body.extend_from_slice(buf.get(data..data + size).unwrap_or_default());
                            pos = data + size + 2;
                            continue;
                        }
                    }
                    Ok(httparse::Status::Partial) if rest.len() > 1024 => {
                        return Err(FetchError::Invalid("chunk size line too long".into()));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(FetchError::Invalid("invalid chunk size".into())),
                }
            }
            // Need more: drop what is decoded, then read.
            buf.drain(..pos);
            pos = 0;
            if read_more(conn, &mut buf, FIRST_READ).await? == 0 {
                return Err(FetchError::Closed);
            }
        }
    }
}

/// What one attempt on a connection came to.
enum Attempt {
    /// Nothing of the answer arrived (a reused connection the server had
    /// closed while idle): worth one retry on a fresh connection.
    Stale(FetchError),
    Failed(FetchError),
}

impl From<FetchError> for Attempt {
    fn from(e: FetchError) -> Self {
        Attempt::Failed(e)
    }
}

/// What the answer's head says about framing.
#[derive(Debug)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    content_length: Option<u64>,
    chunked: bool,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with keep-alive.
    keep_alive: bool,
    location: Option<String>,
}

/// Parses a response head at the start of `buf`; `None` if incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, FetchError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(FetchError::Invalid(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        Err(e) => return Err(FetchError::Invalid(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut head = Head {
        status,
        len,
        content_length: None,
        chunked: false,
        keep_alive: http11,
        location: None,
    };
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).unwrap_or("").trim();
            let n: u64 = text
                .parse()
                .map_err(|_| FetchError::Invalid(format!("invalid content-length {text:?}")))?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err(FetchError::Invalid(
                    "conflicting content-length headers".into(),
                ));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the last coding; any other coding
            // means the body runs to the end of the connection.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            head.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !head.chunked {
                head.keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("location") {
            head.location = Some(String::from_utf8_lossy(h.value).into_owned());
        }
    }
    if head.chunked {
        // RFC 9112 6.3: transfer-encoding overrides content-length.
        head.content_length = None;
    }
    Ok(Some(head))
}

/// Reads once into the spare capacity of `buf` (growing it to room for at
/// least `want` more bytes, capped at 64 KiB a read); `Ok(0)` at end of
/// stream.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    if spare < want.min(64 * 1024) {
        buf.reserve(want.clamp(FIRST_READ, 64 * 1024).max(buf.len()));
    }
    conn.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_built_once_from_the_url() {
        let p = PlainHttp::for_url(
            "http://[::1]:8080/a/b?x=1&y=%20",
            &[("accept", b"application/json")],
            "ua/1",
            10,
        )
        .expect("plain http");
        assert_eq!(
            std::str::from_utf8(&p.request).expect("ascii"),
            "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: ua/1\r\naccept: application/json\r\n\r\n"
        );
        assert!(matches!(p.target, Target::Addr(a) if a.to_string() == "[::1]:8080"));
        let p = PlainHttp::for_url("http://meter.local/", &[], "ua", 10).expect("plain http");
        assert!(
            p.request
                .starts_with(b"GET / HTTP/1.1\r\nHost: meter.local\r\n")
        );
        assert!(matches!(&p.target, Target::Host(h, 80) if h == "meter.local"));
        // What it leaves to reqwest.
        for url in [
            "https://127.0.0.1/",
            "http://user:pw@127.0.0.1/",
            "ftp://x/",
            "not a url",
        ] {
            assert!(PlainHttp::for_url(url, &[], "ua", 10).is_none(), "{url}");
        }
    }

    #[test]
    fn heads_say_how_the_body_is_framed() {
        let head = |text: &str| {
            parse_head(text.as_bytes())
                .expect("valid")
                .expect("complete")
        };
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(
            (h.status, h.content_length, h.chunked, h.keep_alive),
            (200, Some(5), false, true)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(
            (h.content_length, h.chunked, h.keep_alive),
            (None, true, true)
        );
        let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(!h.chunked && !h.keep_alive, "body until close");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-")
                .expect("partial")
                .is_none()
        );
    }
}
