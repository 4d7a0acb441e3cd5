//! The start of a stream: the Hello (checked, and authorized against the
//! peer's certificate and the allowlist), the agent's clock, the merger's
//! committed set, and the Welcome that carries it back (mark, lowest
//! ranges, and `out_of_order` to an agent whose Hello says it may send out
//! of order: this collector then takes its batches in any order).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use tracing::{info, warn};

use tributary_proto::v1 as pb;

use super::check::check_name;
use super::series::StreamSeries;
use super::{
    Limits, Outbound, Session, Stream, clamp_counter, format_offset, unavailable, wire_ranges,
};
use crate::merger::StreamAcks;
use crate::metrics::StreamRefusal;
use crate::model::now_ns;
use crate::roles::{PeerAuth, Roles, is_id_byte};

/// Checks that a stream may speak for `agent_id`: with mutual TLS, the
/// certificate identity must not be an operator's and must be that id; the
/// id must be on the allowlist when there is one.
pub fn authorize(agent_id: &str, auth: &PeerAuth, roles: &Roles) -> Result<(), Status> {
    check_identity(agent_id, auth, roles)?;
    check_allowlist(agent_id, roles)
}

/// What [`authorize`] checks of the certificate.
fn check_identity(agent_id: &str, auth: &PeerAuth, roles: &Roles) -> Result<(), Status> {
    match auth {
        PeerAuth::Unverified => {}
        PeerAuth::Certificate(identity) => {
            roles.authorize_stream(identity)?;
            if **identity != *agent_id {
                return Err(Status::permission_denied(format!(
                    "hello.agent_id: {agent_id:?} does not match the client certificate identity {identity:?}"
                )));
            }
        }
        PeerAuth::Missing => {
            return Err(Status::unauthenticated(
                "ingest requires a client certificate",
            ));
        }
        PeerAuth::Invalid(why) => return Err(Status::unauthenticated(why.clone())),
    }
    Ok(())
}

/// What [`authorize`] checks of the allowlist.
fn check_allowlist(agent_id: &str, roles: &Roles) -> Result<(), Status> {
    if !roles.is_allowed_agent(agent_id) {
        return Err(Status::permission_denied(format!(
            "hello.agent_id: {agent_id:?} is not an allowed agent"
        )));
    }
    Ok(())
}

/// Sessions get unique ids so the merger can tell an agent's old stream
/// from its new one.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// Reads and checks the Hello, registers the stream with the merger and
    /// sends the Welcome. `None` when the agent left before (an empty
    /// stream, or the Welcome could not be sent).
    pub(super) async fn handshake(
        &self,
        inbound: &mut Streaming<pb::AgentFrame>,
        out: &Outbound,
    ) -> Result<Option<(Stream, watch::Receiver<StreamAcks>)>, Status> {
        let hello = tokio::select! {
            f = tokio::time::timeout(self.limits.hello_timeout, inbound.next()) => match f {
                Err(_) => {
                    self.metrics.refused(StreamRefusal::HelloTimeout);
                    return Err(Status::deadline_exceeded("no hello within the hello timeout"));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(status))) => return Err(status),
                Ok(Some(Ok(frame))) => frame,
            },
            _ = self.shutdown.cancelled() => {
                return Err(Status::unavailable("collector shutting down"));
            }
        };
        let hello = match hello.frame {
            Some(pb::agent_frame::Frame::Hello(h)) => h,
            Some(pb::agent_frame::Frame::Batch(_)) => {
                return Err(Status::invalid_argument("batch before hello"));
            }
            None => return Err(Status::invalid_argument("frame: empty, expected hello")),
        };
        check_hello(&hello, &self.limits)?;
        let roles = self.roles.borrow().clone();
        let authorized = check_identity(&hello.agent_id, &self.auth, &roles)
            .map_err(|s| (StreamRefusal::Identity, s))
            .and_then(|()| {
                check_allowlist(&hello.agent_id, &roles).map_err(|s| (StreamRefusal::Allowlist, s))
            });
        if let Err((reason, status)) = authorized {
            self.metrics.refused(reason);
            warn!(peer = %self.peer, agent = %hello.agent_id, error = %status.message(), "stream refused");
            return Err(status);
        }
        let clock_offset_ns = if hello.agent_time_ns > 0 {
            hello.agent_time_ns.saturating_sub(now_ns())
        } else {
            0
        };
        let clock_skewed = clock_offset_ns.unsigned_abs() > self.max_skew_ns();
        if clock_skewed {
            warn!(
                agent = %hello.agent_id,
                peer = %self.peer,
                offset = %format_offset(clock_offset_ns),
                max = ?self.limits.max_clock_skew,
                "agent clock is off: its readings are stored but counted as skewed"
            );
        }
        let agent: Arc<str> = Arc::from(hello.agent_id.as_str());
        let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let welcomed = self
            .merger
            .hello(
                agent.clone(),
                hello.epoch,
                (clamp_counter(hello.dropped), clamp_counter(hello.last_seq)),
                self.peer.clone(),
                session,
            )
            .await
            .map_err(unavailable)?;
        let committed = welcomed.committed;
        info!(agent = %agent, peer = %self.peer, epoch = hello.epoch, committed = %committed, "agent connected");
        let welcome = pb::CollectorFrame {
            frame: Some(pb::collector_frame::Frame::Welcome(pb::Welcome {
                committed_seq: committed.mark(),
                collector_time_ns: now_ns(),
                committed_dropped: Some(welcomed.committed_dropped),
                committed_ranges: wire_ranges(&committed),
                out_of_order: hello.out_of_order,
            })),
        };
        let (ack_tx, ack_rx) = watch::channel(StreamAcks {
            committed,
            batches: 0,
            replays: 0,
            refused: None,
        });
        let stream = Stream {
            agent: agent.clone(),
            epoch: hello.epoch,
            session,
            out_of_order: hello.out_of_order,
            last_seq: 0,
            forwarded: 0,
            series: StreamSeries::default(),
            ack_tx: Arc::new(ack_tx),
            clock_skewed,
            skew_logged: clock_skewed,
        };
        if out.send(Ok(welcome)).await.is_err() {
            self.merger.goodbye(agent, session);
            return Ok(None);
        }
        Ok(Some((stream, ack_rx)))
    }
}

/// Checks a Hello's own fields (who it may speak for is [`authorize`]).
pub fn check_hello(hello: &pb::Hello, limits: &Limits) -> Result<(), Status> {
    check_name("hello.agent_id", &hello.agent_id, limits.max_name_len)?;
    if !hello.agent_id.bytes().all(is_id_byte) {
        return Err(Status::invalid_argument(
            "hello.agent_id: only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}
