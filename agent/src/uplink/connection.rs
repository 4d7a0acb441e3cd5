//! The uplink's connection to a collector, as a state machine.
//!
//! ```text
//!   Disconnected { retry_at, attempt } --retry_at passed--> Connecting { task, attempt }
//!   Connecting --stream open--> Streaming(Stream)
//!   Connecting --failed--> Disconnected { attempt + 1, next collector }
//!   Streaming --ended, closed or a failed send--> Disconnected { attempt: 1, same collector }
//!   any --new spool epoch--> Disconnected { retry_at: now, attempt: 0 }
//! ```
//!
//! A reload's new collector list ([`Link::set_collectors`]) changes no
//! state: the next connect, whenever the current stream ends, uses it.
//!
//! Each state holds only its own data: there is no stream while
//! disconnected and no retry time while streaming. The connect runs in its
//! own task so intake and sealing never stop while a collector is
//! unreachable. [`Link::next_event`] waits for whatever the current state
//! waits for and makes the transitions the connection decides by itself;
//! the uplink makes the others ([`Link::connect_if_due`], [`Link::lost`]).

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use tributary_proto::v1 as pb;

use tributary_process::error_chain;

use super::UplinkConfig;
use super::backoff::Backoff;
use super::collectors::Collectors;
use super::declared::Declared;
use super::order::Lanes;
use crate::metrics::{LinkState, ReconnectCause};

/// Largest collector frame the agent decodes.
const MAX_COLLECTOR_FRAME: usize = 16 * 1024 * 1024;

/// An open stream to one collector.
pub(super) struct Stream {
    pub(super) url: String,
    out: mpsc::Sender<pb::AgentFrame>,
    inbound: Streaming<pb::CollectorFrame>,
    /// What was sent on this stream, and which batch goes next
    /// (`order.rs`).
    pub(super) lanes: Lanes,
    /// Series ids declared on this stream.
    pub(super) declared: Declared,
}

/// Where the connection is.
enum Connection {
    /// No stream: the next connect starts at `retry_at`. `attempt` is the
    /// number of the backoff that set it (failed connects in a row; 1 after
    /// a stream ended, 0 at start).
    Disconnected { retry_at: Instant, attempt: u32 },
    /// A task opens a stream and says Hello.
    Connecting {
        task: JoinHandle<Result<Stream, ConnectError>>,
        attempt: u32,
    },
    /// A stream is open (boxed: it is much larger than the other states).
    Streaming(Box<Stream>),
}

/// What [`Link::next_event`] saw.
pub(super) enum Event {
    /// The retry time passed: the next [`Link::connect_if_due`] connects.
    RetryDue,
    /// A stream opened (the state is now `Streaming`).
    Connected,
    /// The connect failed (the state is `Disconnected` for `retry_in`; the
    /// next connect goes to the next collector of the list).
    ConnectFailed {
        error: ConnectError,
        retry_in: Duration,
    },
    /// Room for one frame on the stream.
    Room(mpsc::OwnedPermit<pb::AgentFrame>),
    /// A frame from the collector.
    Frame(pb::CollectorFrame),
    /// The stream cannot take frames any more (the state is now
    /// `Disconnected`).
    SendClosed,
    /// The stream ended with an error status, or was closed (`None`) (the
    /// state is now `Disconnected`).
    Ended(Option<tonic::Status>),
}

/// Why no stream could be opened. Each message names the collector and
/// every cause once; none has a `source()` (the causes are in the message).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or the TLS settings do not make an endpoint.
    #[error("collector {url}: {cause}")]
    Endpoint { url: String, cause: String },
    /// No connection (refused, unreachable, TLS handshake failed).
    #[error("collector {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("collector {url}: stream closed before hello")]
    ClosedBeforeHello { url: String },
    /// The collector answered the stream with an error status.
    #[error("collector {url}: {code}: {message}")]
    Refused {
        url: String,
        code: String,
        message: String,
    },
    #[error("collector {url}: no welcome within {limit:?}")]
    Timeout { url: String, limit: Duration },
    #[error("connect task failed: {0}")]
    Task(String),
}

impl ConnectError {
    /// The cause the metrics count this failure under.
    pub(super) fn cause(&self) -> ReconnectCause {
        match self {
            ConnectError::Refused { .. } => ReconnectCause::Refused,
            ConnectError::Timeout { .. } => ReconnectCause::Timeout,
            _ => ReconnectCause::ConnectFailed,
        }
    }
}

/// The connection, the rotation through the collectors and the backoff.
pub(super) struct Link {
    state: Connection,
    /// The collectors to connect to: the config's, or a reload's
    /// ([`Link::set_collectors`]).
    collectors: Collectors,
    /// Position in the collector list of the next connect.
    next_collector: usize,
    backoff: Backoff,
    /// The jitter's source when `UplinkConfig::jitter_seed` is set (the
    /// simulation); the OS's otherwise.
    jitter: Option<StdRng>,
    config: Arc<UplinkConfig>,
}

impl Link {
    /// Disconnected, due at once, starting at this agent's collector.
    pub(super) fn new(config: Arc<UplinkConfig>) -> Link {
        Link {
            state: Connection::Disconnected {
                retry_at: Instant::now(),
                attempt: 0,
            },
            collectors: config.collectors.clone(),
            next_collector: config.collectors.start_for(&config.agent_id),
            backoff: Backoff {
                min: config.backoff_min,
                max: config.backoff_max,
            },
            jitter: config.jitter_seed.map(StdRng::seed_from_u64),
            config,
        }
    }

    /// Which state the connection is in (for the metrics).
    pub(super) fn state(&self) -> LinkState {
        match &self.state {
            Connection::Disconnected { .. } => LinkState::Disconnected,
            Connection::Connecting { .. } => LinkState::Connecting,
            Connection::Streaming(_) => LinkState::Streaming,
        }
    }

    /// The open stream, if any.
    pub(super) fn stream(&self) -> Option<&Stream> {
        match &self.state {
            Connection::Streaming(s) => Some(s),
            _ => None,
        }
    }

    /// The open stream, if any.
    pub(super) fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.state {
            Connection::Streaming(s) => Some(s),
            _ => None,
        }
    }

    /// Starts connecting (with the Hello `hello` makes) when disconnected and
    /// the retry time has passed.
    pub(super) fn connect_if_due(&mut self, hello: impl FnOnce() -> pb::AgentFrame) {
        let Connection::Disconnected { retry_at, attempt } = self.state else {
            return;
        };
        if Instant::now() < retry_at {
            return;
        }
        let url = self.collectors.at(self.next_collector).to_owned();
        let config = self.config.clone();
        let hello = hello();
        // The whole handshake is bounded: a collector behind a dead network
        // may accept TCP and then never answer.
        let limit = config
            .connect_timeout
            .saturating_add(config.keepalive_interval)
            .saturating_add(config.keepalive_timeout);
        let task = tokio::spawn(async move {
            match tokio::time::timeout(limit, connect(url.clone(), hello, config)).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout { url, limit }),
            }
        });
        self.state = Connection::Connecting { task, attempt };
    }

    /// A reload changed the collector list: the next connect uses it,
    /// starting at this agent's place in it; a stream (or a connect) in
    /// progress goes on. `false` when the list is the same.
    pub(super) fn set_collectors(&mut self, collectors: Collectors) -> bool {
        if collectors == self.collectors {
            return false;
        }
        self.next_collector = collectors.start_for(&self.config.agent_id);
        self.collectors = collectors;
        true
    }

    /// The collectors the next connect chooses from.
    pub(super) fn collectors(&self) -> &Collectors {
        &self.collectors
    }

    /// The stream was given up on (a failed send or a spool error): back to
    /// `Disconnected`, retrying the same collector after one backoff.
    pub(super) fn lost(&mut self) {
        self.state = Connection::Disconnected {
            retry_at: Instant::now() + self.backoff_delay(1),
            attempt: 1,
        };
    }

    /// Drops the stream (or a connect in progress, whose Hello is stale) and
    /// connects again at once: the spool started a new epoch, and a stream
    /// carries one epoch only.
    pub(super) fn restart(&mut self) {
        if let Connection::Connecting { task, .. } = &self.state {
            task.abort();
        }
        self.state = Connection::Disconnected {
            retry_at: Instant::now(),
            attempt: 0,
        };
    }

    /// Waits for what the current state waits for: the retry time, the
    /// connect task, or (streaming) a frame from the collector and, when
    /// `want_send`, room for a frame to it. Cancel-safe: dropped before it
    /// returns, it has changed nothing.
    pub(super) async fn next_event(&mut self, want_send: bool) -> Event {
        match &mut self.state {
            Connection::Disconnected { retry_at, .. } => {
                tokio::time::sleep_until(*retry_at).await;
                Event::RetryDue
            }
            Connection::Connecting { task, attempt } => {
                let attempt = *attempt;
                let result = task
                    .await
                    .unwrap_or_else(|e| Err(ConnectError::Task(e.to_string())));
                match result {
                    Ok(stream) => {
                        self.state = Connection::Streaming(Box::new(stream));
                        Event::Connected
                    }
                    Err(error) => {
                        let attempt = attempt + 1;
                        let retry_in = self.backoff_delay(attempt);
                        self.next_collector = self.next_collector.wrapping_add(1);
                        self.state = Connection::Disconnected {
                            retry_at: Instant::now() + retry_in,
                            attempt,
                        };
                        Event::ConnectFailed { error, retry_in }
                    }
                }
            }
            Connection::Streaming(stream) => {
                let out = want_send.then(|| stream.out.clone());
                let end = tokio::select! {
                    permit = reserve(out) => match permit {
                        Ok(permit) => return Event::Room(permit),
                        Err(_) => Event::SendClosed,
                    },
                    frame = stream.inbound.next() => match frame {
                        Some(Ok(frame)) => return Event::Frame(frame),
                        Some(Err(status)) => Event::Ended(Some(status)),
                        None => Event::Ended(None),
                    },
                };
                self.lost();
                end
            }
        }
    }

    /// The wait before attempt `attempt`.
    fn backoff_delay(&mut self, attempt: u32) -> Duration {
        match &mut self.jitter {
            Some(rng) => self.backoff.delay_from(attempt, rng),
            None => self.backoff.delay(attempt),
        }
    }

    /// Stops a connect in progress (the uplink is stopping).
    pub(super) fn close(self) {
        if let Connection::Connecting { task, .. } = self.state {
            task.abort();
        }
    }
}

/// Reserves room for one frame on the stream, or waits forever when there
/// is nothing to send.
async fn reserve(
    sender: Option<mpsc::Sender<pb::AgentFrame>>,
) -> Result<mpsc::OwnedPermit<pb::AgentFrame>, mpsc::error::SendError<()>> {
    match sender {
        Some(tx) => tx.reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// Opens a stream to `url`, sends `hello`, and waits for the response to
/// begin (the Welcome follows on the stream).
pub(super) async fn connect(
    url: String,
    hello: pb::AgentFrame,
    config: Arc<UplinkConfig>,
) -> Result<Stream, ConnectError> {
    let endpoint = match crate::tls::endpoint(&url, config.tls.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            return Err(ConnectError::Endpoint {
                cause: e.to_string(),
                url,
            });
        }
    };
    let endpoint = endpoint
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let connected = match &config.connector {
        Some(connector) => {
            endpoint
                .connect_with_connector(super::seams::ConnectorService {
                    connector: connector.clone(),
                    url: url.clone(),
                })
                .await
        }
        None => endpoint.connect().await,
    };
    let channel = match connected {
        Ok(c) => c,
        Err(e) => {
            return Err(ConnectError::Unreachable {
                cause: error_chain(&e),
                url,
            });
        }
    };
    let mut client = pb::ingest_client::IngestClient::new(channel)
        .max_decoding_message_size(MAX_COLLECTOR_FRAME);
    // Frames encoded ahead of the stream. Two keep it busy; each may be a
    // batch of thousands of readings with their series declarations (the
    // first batches after a start declare every series: megabytes), so
    // more would only raise the agent's peak memory.
    let (tx, rx) = mpsc::channel(2);
    if tx.send(hello).await.is_err() {
        return Err(ConnectError::ClosedBeforeHello { url });
    }
    let response = match client.stream(ReceiverStream::new(rx)).await {
        Ok(r) => r,
        Err(s) => {
            return Err(ConnectError::Refused {
                code: code_name(s.code()),
                message: s.message().to_owned(),
                url,
            });
        }
    };
    Ok(Stream {
        url,
        out: tx,
        inbound: response.into_inner(),
        lanes: Lanes::default(),
        declared: Declared::default(),
    })
}

/// A gRPC status code as a lowercase word (`unavailable`).
pub(super) fn code_name(code: tonic::Code) -> String {
    format!("{code:?}").to_lowercase()
}
