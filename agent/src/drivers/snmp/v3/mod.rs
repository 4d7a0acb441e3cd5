//! What an SNMPv3 answer must satisfy before the driver believes it: the
//! incoming half of RFC 3412 §7.2 and RFC 3414 §3.2 for a command generator
//! (the non-authoritative side).
//!
//! Owns the driver's view of the agent's engine ([`Engine`]: id, boots,
//! time, localized keys) and is the only code that changes it after
//! discovery. The rules, in the order they are applied:
//!
//! - msgFlags priv without auth is malformed;
//! - an authenticated message is believed only if its MAC verifies
//!   (compared in constant time), and a message with an authentication
//!   flag is refused when no auth key is configured;
//! - a Report is handed back as a report with whether it was authenticated:
//!   only an authenticated one may move the engine's boots and time, only
//!   during discovery is an unauthenticated one a source of anything (the
//!   engine id);
//! - anything else must be a Response to this request (PDU type and
//!   request-id), from the discovered engine, for the configured user, at
//!   the configured security level (authenticated, and encrypted for
//!   authPriv), and within the time window (RFC 3414 §3.2 step 7b); boots
//!   and time only move forward, and only on authenticated messages.
//!
//! May touch: the driver's BER codec (`super::ber`), its USM primitives
//! (`super::usm`: keys, MACs, decryption), `super::value::hex` for engine
//! ids in messages, and the monotonic clock (the engine's time window); no
//! socket: the driver sends and receives, this module only judges.

use tokio::time::Instant;

use super::ber::{Pdu, tag};
use super::usm::{self, Context, Keys, ScopedData, V3Message};
use super::value::hex;

/// RFC 3414 §2.2.3: a message more than this many seconds older than the
/// local notion of the engine's time is outside the time window.
pub const TIME_WINDOW_SECS: u64 = 150;

/// RFC 3414 §2.2.2: snmpEngineBoots at its maximum means the engine must be
/// reconfigured; nothing from it is timely.
const MAX_BOOTS: u32 = 2_147_483_647;

/// The security level a user is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    NoAuthNoPriv,
    AuthNoPriv,
    AuthPriv,
}

impl Level {
    /// The level `keys` give (no keys: noAuthNoPriv).
    pub fn of(keys: Option<&Keys>) -> Level {
        match keys {
            None => Level::NoAuthNoPriv,
            Some(k) if k.has_priv() => Level::AuthPriv,
            Some(_) => Level::AuthNoPriv,
        }
    }
}

/// What the driver knows of the agent's engine.
pub struct Engine {
    pub id: Vec<u8>,
    /// snmpEngineBoots as last learned from an authenticated message (or
    /// from discovery, for noAuthNoPriv users, where nothing is checked).
    pub boots: u32,
    /// snmpEngineTime at `at`.
    pub time: u32,
    /// RFC 3414's latestReceivedEngineTime.
    pub latest_received: u32,
    /// When `time` was learned.
    pub at: Instant,
    pub keys: Option<Keys>,
}

impl Engine {
    /// A freshly discovered engine. Discovery is unauthenticated, so its
    /// boots and time are taken only when nothing is checked anyway
    /// (noAuthNoPriv); otherwise they stay 0 until an authenticated message
    /// tells them: the first authenticated request goes out with 0/0 and is
    /// answered by an authenticated notInTimeWindow report (RFC 3414 §4).
    pub fn discovered(id: Vec<u8>, boots: u32, time: u32, keys: Option<Keys>) -> Engine {
        let trusted = keys.is_none();
        Engine {
            id,
            boots: if trusted { boots } else { 0 },
            time: if trusted { time } else { 0 },
            latest_received: if trusted { time } else { 0 },
            at: Instant::now(),
            keys,
        }
    }

    /// The local notion of the engine's time now.
    pub fn time_now(&self) -> u32 {
        let elapsed = u32::try_from(self.at.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.time.saturating_add(elapsed)
    }

    /// RFC 3414 §3.2 step 7b for an authenticated message claiming
    /// `boots`/`time`: moves the local notion forward if the message is
    /// newer, then checks the message is within the window.
    pub fn observe(&mut self, boots: u32, time: u32) -> Result<(), Refused> {
        if boots > self.boots || (boots == self.boots && time > self.latest_received) {
            self.boots = boots;
            self.time = time;
            self.latest_received = time;
            self.at = Instant::now();
        }
        let too_old =
            u64::from(time) + TIME_WINDOW_SECS < u64::from(self.time_now()) && boots == self.boots;
        if self.boots == MAX_BOOTS || boots < self.boots || too_old {
            return Err(Refused::NotInTimeWindow {
                boots,
                time,
                local_boots: self.boots,
                local_time: self.time_now(),
            });
        }
        Ok(())
    }
}

/// An answer that passed the checks.
#[derive(Debug)]
pub enum Verified {
    /// The Response to the request.
    Response(Pdu),
    /// A Report (its first varbind's OID), and whether it was authenticated.
    Report { oid: Vec<u32>, authenticated: bool },
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("answer has msgFlags priv without auth (0x{0:02x}): malformed")]
    PrivWithoutAuth(u8),
    #[error("authenticated answer to an unauthenticated request")]
    UnexpectedAuth,
    #[error(
        "authentication failure: the answer's digest does not match (wrong auth_password or auth_protocol?)"
    )]
    BadDigest,
    #[error("encrypted answer but no priv_password configured")]
    UnexpectedPriv,
    #[error("{0}")]
    Decrypt(usm::DecryptError),
    #[error(
        "answer is not authenticated (msgFlags 0x{0:02x}) but the user is configured with auth: refused"
    )]
    NotAuthenticated(u8),
    #[error(
        "answer is not encrypted (msgFlags 0x{0:02x}) but the user is configured with priv: refused"
    )]
    NotEncrypted(u8),
    #[error("answer is a PDU of type 0x{0:02x}, not a Response")]
    NotResponse(u8),
    #[error("answer's request-id {got} does not match the request's {sent}")]
    WrongRequestId { got: i32, sent: i32 },
    #[error("answer comes from engine {got}, not the discovered engine {expected}")]
    WrongEngine { got: String, expected: String },
    #[error("answer is for user \"{0}\", not the configured user")]
    WrongUser(String),
    #[error(
        "answer is in context (engine {engine}, name \"{name}\"), not the request's (engine {sent_engine}, name \"{sent_name}\")"
    )]
    WrongContext {
        engine: String,
        name: String,
        sent_engine: String,
        sent_name: String,
    },
    #[error(
        "answer is outside the time window (boots {boots}, time {time}; the engine was at boots {local_boots}, time {local_time})"
    )]
    NotInTimeWindow {
        boots: u32,
        time: u32,
        local_boots: u32,
        local_time: u32,
    },
}

/// Checks the MAC of `m` (the bytes `raw`) when it claims authentication,
/// and decrypts its scoped PDU: returns the PDU and whether the message was
/// authenticated and encrypted. Used for every answer, discovery included.
pub fn open(m: &V3Message, raw: &[u8], keys: Option<&Keys>) -> Result<Opened, Refused> {
    let auth = m.flags & usm::FLAG_AUTH != 0;
    let encrypted = m.flags & usm::FLAG_PRIV != 0;
    if encrypted && !auth {
        return Err(Refused::PrivWithoutAuth(m.flags));
    }
    if auth {
        let keys = keys.ok_or(Refused::UnexpectedAuth)?;
        if !keys.verify(raw, m.auth_offset, &m.usm.auth_params) {
            return Err(Refused::BadDigest);
        }
    }
    let (pdu, context) = match &m.data {
        ScopedData::Plain(pdu, context) => (pdu.clone(), context.clone()),
        ScopedData::Encrypted(enc) => {
            let keys = keys
                .filter(|k| k.has_priv())
                .ok_or(Refused::UnexpectedPriv)?;
            usm::decrypt(keys, &m.usm, enc).map_err(Refused::Decrypt)?
        }
    };
    Ok(Opened {
        pdu,
        context,
        authenticated: auth,
        encrypted,
    })
}

/// A message whose MAC (if any) verified and whose PDU is in the clear.
#[derive(Debug)]
pub struct Opened {
    pub pdu: Pdu,
    /// The scoped PDU's contextEngineID and contextName.
    pub context: Context,
    pub authenticated: bool,
    pub encrypted: bool,
}

/// Every check of an answer to the request `request_id` sent by `user` to
/// `engine` in the context named `context` (its contextEngineID being the
/// engine's id). A Report is returned for the caller to decide on (and,
/// when authenticated, has already moved the engine's time forward if
/// newer).
pub fn check(
    engine: &mut Engine,
    user: &[u8],
    context: &[u8],
    m: &V3Message,
    raw: &[u8],
    request_id: i32,
) -> Result<Verified, Refused> {
    let opened = open(m, raw, engine.keys.as_ref())?;
    let level = Level::of(engine.keys.as_ref());
    if opened.pdu.kind == tag::REPORT {
        let oid = opened
            .pdu
            .varbinds
            .first()
            .map(|(o, _)| o.clone())
            .unwrap_or_default();
        if opened.authenticated {
            if m.usm.engine_id != engine.id {
                return Err(wrong_engine(&m.usm.engine_id, &engine.id));
            }
            // A not-in-time-window report is how the time is learned: its
            // own timeliness is what it reports, so only its newer clock
            // counts, never an error.
            let _ = engine.observe(m.usm.boots, m.usm.time);
        }
        return Ok(Verified::Report {
            oid,
            authenticated: opened.authenticated,
        });
    }
    if level >= Level::AuthNoPriv && !opened.authenticated {
        return Err(Refused::NotAuthenticated(m.flags));
    }
    if level == Level::AuthPriv && !opened.encrypted {
        return Err(Refused::NotEncrypted(m.flags));
    }
    if opened.pdu.kind != tag::RESPONSE {
        return Err(Refused::NotResponse(opened.pdu.kind));
    }
    if opened.pdu.request_id != request_id {
        return Err(Refused::WrongRequestId {
            got: opened.pdu.request_id,
            sent: request_id,
        });
    }
    if m.usm.engine_id != engine.id {
        return Err(wrong_engine(&m.usm.engine_id, &engine.id));
    }
    if m.usm.user != user {
        return Err(Refused::WrongUser(
            String::from_utf8_lossy(&m.usm.user).into_owned(),
        ));
    }
    // RFC 3412 §7.2 step 12: a Response's contextEngineID and contextName
    // are its request's (net-snmp discards one that differs, too).
    if opened.context.engine_id != engine.id || opened.context.name != context {
        return Err(Refused::WrongContext {
            engine: hex(&opened.context.engine_id, ""),
            name: String::from_utf8_lossy(&opened.context.name).into_owned(),
            sent_engine: hex(&engine.id, ""),
            sent_name: String::from_utf8_lossy(context).into_owned(),
        });
    }
    if opened.authenticated {
        engine.observe(m.usm.boots, m.usm.time)?;
    }
    Ok(Verified::Response(opened.pdu))
}

fn wrong_engine(got: &[u8], expected: &[u8]) -> Refused {
    Refused::WrongEngine {
        got: hex(got, ""),
        expected: hex(expected, ""),
    }
}

#[cfg(test)]
mod tests;
