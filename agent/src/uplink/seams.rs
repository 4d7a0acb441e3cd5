//! The two places the delivery simulation (`tests/tests/sim_delivery/`) plugs
//! into a real uplink: the transport a stream runs over ([`Connector`]) and
//! the failpoints it observes or crashes at ([`Failpoints`]). Neither
//! replaces any logic: the spool, the batches, the stream and its gRPC are
//! the agent's own. Both are unset in the agent, where each costs one
//! `Option` test (per connect, per sealed batch, per spool append).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codegen::Service;
use tonic::codegen::http::Uri;

use crate::reading::Reading;
use crate::spool::AfterWrite;

/// A byte stream a simulated network hands out.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What [`Connector`] returns: a connection, or why there is none.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>>;

/// Opens the connection of a stream to the collector at the given URL
/// instead of TCP (and instead of TLS: a connector's streams are plaintext
/// HTTP/2). Set in [`super::UplinkConfig::connector`].
#[derive(Clone)]
pub struct Connector(pub Arc<dyn Fn(&str) -> Connecting + Send + Sync>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}

/// The connector as tonic's `connect_with_connector` wants it.
pub(super) struct ConnectorService {
    pub(super) connector: Connector,
    pub(super) url: String,
}

impl Service<Uri> for ConnectorService {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let connecting = (self.connector.0)(&self.url);
        Box::pin(async move { connecting.await.map(TokioIo::new) })
    }
}

/// What a failpoint reports.
#[derive(Debug)]
pub enum Failpoint<'a> {
    /// A batch was appended to the spool and is durable: from here on its
    /// readings are taken (the simulation's ground truth of what must be
    /// stored or counted as dropped).
    Spooled {
        epoch: u64,
        seq: u64,
        readings: &'a [Reading],
    },
    /// A spooled record was given up (dropped to make room, or refused for
    /// good) and its readings counted as dropped.
    Dropped { epoch: u64, seq: u64, readings: u32 },
    /// A sealed batch was counted as dropped without being spooled (no
    /// room for it, or the append failed).
    NotSpooled { readings: &'a [Reading] },
}

/// The simulation's hooks ([`super::Uplink::with_failpoints`]).
#[derive(Clone)]
pub struct Failpoints {
    /// Every [`Failpoint`] the uplink passes.
    pub on: Arc<dyn Fn(Failpoint<'_>) + Send + Sync>,
    /// The spool's failpoint between a record's write and its sync.
    pub after_write: Option<AfterWrite>,
}

impl fmt::Debug for Failpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Failpoints")
    }
}
