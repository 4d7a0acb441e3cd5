//! One SNMP request on the wire: send a datagram, wait for the one that
//! answers it, send again after each share of the poll's time budget.
//!
//! Owns nothing between requests. What counts as the answer is the
//! caller's `hear`: a datagram for an earlier request is skipped, one that
//! fails a check is discarded and the wait goes on (its reason becomes the
//! error only if nothing valid arrives). May touch `ber` (decode errors)
//! and the driver's `PollError`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::debug;

use super::ber;
use crate::drivers::PollError;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// The tries of one request.
pub(super) struct Budget {
    pub(super) address: String,
    pub(super) tries: u32,
    pub(super) per_try: Duration,
}

/// What `send_and_wait`'s `hear` made of a datagram.
pub(super) enum Heard<T> {
    /// The answer to this request, checked.
    Answer(T),
    /// An answer to an earlier request (a poll the scheduler cancelled).
    Stale(i32),
    /// Malformed, or an answer that failed a check: discarded, and the
    /// reason is the error if nothing valid arrives.
    Refused(String),
}

pub(super) fn malformed(bytes: &[u8], e: &ber::DecodeError) -> String {
    format!("malformed SNMP answer of {} bytes: {e}", bytes.len())
}

/// Sends `msg` and waits for the datagram `hear` takes as the answer,
/// sending again after each share of the time budget.
pub(super) async fn send_and_wait<T>(
    socket: &UdpSocket,
    addr: SocketAddr,
    budget: &Budget,
    msg: &[u8],
    what: &(dyn std::fmt::Display + Sync),
    mut hear: impl FnMut(&[u8]) -> Heard<T>,
) -> Result<T, PollError> {
    let address = &budget.address;
    let mut refused: Option<String> = None;
    // Room for the largest datagram, not zeroed: a walk sends a request
    // per max-repetitions varbinds, and zeroing 64 KiB each time cost more
    // than decoding the answer.
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
    for _ in 0..budget.tries {
        socket
            .send(msg)
            .await
            .map_err(|e| io_error(address, addr, what, &e))?;
        let deadline = Instant::now() + budget.per_try;
        loop {
            buf.clear();
            let n = match tokio::time::timeout_at(deadline, socket.recv_buf(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(io_error(address, addr, what, &e)),
                Ok(Ok(n)) => n,
            };
            match hear(&buf[..n]) {
                Heard::Answer(answer) => return Ok(answer),
                Heard::Stale(got) => {
                    debug!(address = %address, got, "ignoring a stale snmp answer");
                }
                Heard::Refused(reason) => {
                    debug!(address = %address, reason = %reason, "discarding an snmp answer");
                    refused = Some(reason);
                }
            }
        }
    }
    if let Some(reason) = refused {
        return Err(PollError::error(format!(
            "snmp {address}: {what}: {reason}"
        )));
    }
    Err(PollError::timeout(format!(
        "snmp {address}: {what}: no answer after {} tr{} of {}",
        budget.tries,
        if budget.tries == 1 { "y" } else { "ies" },
        humantime::format_duration(Duration::from_millis(budget.per_try.as_millis() as u64))
    )))
}

fn io_error(
    address: &str,
    addr: SocketAddr,
    what: &(dyn std::fmt::Display + Sync),
    e: &io::Error,
) -> PollError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        PollError::error(format!(
            "snmp {address}: {what}: connection refused (nothing listens on udp {addr})"
        ))
    } else {
        PollError::error(format!("snmp {address}: {what}: {e}"))
    }
}
