//! SNMPv3 notifications (RFC 3414 USM), from any of the configured users.
//! Which engine is authoritative decides everything:
//!
//! - **Traps** (unconfirmed, not reportable): the sender is authoritative,
//!   so a user's keys are localized to the sender's engine id (once per
//!   engine and user: at most one new localization a second, keys for at
//!   most [`MAX_ENGINES`] engines, or only the user's `sender_engine_id`;
//!   an engine's keys and clock are kept only once a message from it
//!   authenticated, and none for noAuthNoPriv users);
//!   the MAC is checked and the PDU decrypted with the code the SNMP driver
//!   trusts answers with (`drivers::snmp::v3::open`), and each engine's
//!   boots and time are learned from authenticated traps only, refusing
//!   one outside the 150 s window (a replay).
//! - **Informs** (and any reportable message): this receiver is
//!   authoritative ([`OwnEngine`]). A message for another engine id, or
//!   for none (discovery), is answered with a usmStatsUnknownEngineIDs
//!   Report carrying this engine's id, boots and time; one for this engine
//!   is checked as RFC 3414 §3.2 says (user, level, MAC, time window,
//!   decryption), each failure answered with its usmStats Report when the
//!   message asks for one, and an accepted inform is acknowledged with a
//!   Response at its own level (authenticated, and encrypted at authPriv).
//!
//! A message at another level than its user's is refused. With no user
//! configured nothing SNMPv3 is answered (not even discovery).

use std::collections::HashMap;
use std::time::Instant;

use super::config::{MAX_ENGINES, SnmpTrapConfig, TrapUser};
use super::decode::{Notification, from_v2_pdu, varbind_list};
use super::engine::{OwnEngine, UsmStat};
use super::{Bucket, Cause};
use crate::drivers::snmp::ber::{self, DecodeError, Reader, tag};
use crate::drivers::snmp::usm::{self, FLAG_AUTH, FLAG_PRIV, FLAG_REPORTABLE, Keys, ScopedData};
use crate::drivers::snmp::v3::{Engine, open};
use crate::drivers::snmp::value::hex;

/// A notification accepted, with the acknowledgement an inform needs.
pub(super) struct Accepted {
    pub notification: Notification,
    pub ack: Option<Vec<u8>>,
}

/// A datagram refused: why (`None`: not a refusal, an engine discovery),
/// and the Report to send back, if any.
pub(super) struct Refusal {
    pub cause: Option<Cause>,
    pub why: String,
    pub report: Option<Vec<u8>>,
}

impl Refusal {
    fn new(cause: Cause, why: impl Into<String>) -> Self {
        Refusal {
            cause: Some(cause),
            why: why.into(),
            report: None,
        }
    }

    fn reported(mut self, report: Option<Vec<u8>>) -> Self {
        self.report = report;
        self
    }
}

/// A sending engine, kept once a message from it authenticated: its clock
/// and each user's keys localized to it.
struct Sender {
    clock: Engine,
    /// By the user's index in the config's `users` (users with
    /// authentication only), each kept once a message authenticated.
    keys: HashMap<usize, Keys>,
}

/// The engines heard from, and this receiver's own.
pub(super) struct V3 {
    engines: HashMap<Vec<u8>, Sender>,
    /// Key localizations for senders (about a million hash rounds each).
    localize: Bucket,
    own: OwnEngine,
}

impl V3 {
    pub(super) fn new(own: OwnEngine, now: Instant) -> Self {
        V3 {
            engines: HashMap::new(),
            localize: Bucket::new(1, now),
            own,
        }
    }

    /// The notification an SNMPv3 datagram carries, or why it is refused.
    pub(super) fn open(
        &mut self,
        cfg: &SnmpTrapConfig,
        raw: &[u8],
        now: Instant,
    ) -> Result<Accepted, Refusal> {
        let m = usm::decode(raw).map_err(|e| Refusal::new(Cause::Malformed, e.to_string()))?;
        if cfg.users.is_empty() {
            return Err(Refusal::new(
                Cause::User,
                "SNMPv3, and no `user` is configured",
            ));
        }
        if m.flags & FLAG_PRIV != 0 && m.flags & FLAG_AUTH == 0 {
            return Err(Refusal::new(Cause::Malformed, "msgFlags priv without auth"));
        }
        let reportable = m.flags & FLAG_REPORTABLE != 0;
        if m.usm.engine_id == self.own.id {
            return self.authoritative(cfg, &m, raw, reportable, now);
        }
        if reportable {
            // RFC 3414 §3.2 step 3a: an inform (or a request) for an engine
            // id that is not this one: discovery, or a stale engine id.
            let request_id = plain_request_id(&m);
            let report = self.own.report(
                UsmStat::UnknownEngineIds,
                m.msg_id,
                request_id,
                &m.usm.user,
                None,
                now,
            );
            return Err(Refusal {
                cause: (!m.usm.engine_id.is_empty()).then_some(Cause::User),
                why: format!(
                    "a request for engine {}, not this receiver's {}",
                    hex(&m.usm.engine_id, ""),
                    hex(&self.own.id, "")
                ),
                report: Some(report),
            });
        }
        self.sent_by_sender(cfg, &m, raw, now)
    }

    /// A message for this engine (an inform, as RFC 3414 §3.2 checks it).
    fn authoritative(
        &mut self,
        cfg: &SnmpTrapConfig,
        m: &usm::V3Message,
        raw: &[u8],
        reportable: bool,
        now: Instant,
    ) -> Result<Accepted, Refusal> {
        let request_id = plain_request_id(m);
        // A Report when the message asks for one: unauthenticated unless
        // `keys` are given.
        let report = |own: &mut OwnEngine, stat, keys: Option<&Keys>| {
            reportable.then(|| own.report(stat, m.msg_id, request_id, &m.usm.user, keys, now))
        };
        let Some((index, user)) = find_user(cfg, &m.usm.user) else {
            let r = report(&mut self.own, UsmStat::UnknownUserNames, None);
            return Err(Refusal::new(Cause::User, unknown_user(&m.usm.user)).reported(r));
        };
        if level(m.flags) != user_level(user) {
            let r = report(&mut self.own, UsmStat::UnsupportedSecLevels, None);
            return Err(Refusal::new(Cause::Auth, wrong_level(m.flags, user)).reported(r));
        }
        let keys = self.own.keys(index, user).cloned();
        if let Some(keys) = &keys {
            if !keys.verify(raw, m.auth_offset, &m.usm.auth_params) {
                let r = report(&mut self.own, UsmStat::WrongDigests, None);
                return Err(Refusal::new(
                    Cause::Auth,
                    "authentication failure: wrong digest (wrong auth_password or auth_protocol?)",
                )
                .reported(r));
            }
            if !self.own.timely(m.usm.boots, m.usm.time, now) {
                // Authenticated, so the sender may believe the clock in it.
                let r = report(&mut self.own, UsmStat::NotInTimeWindows, Some(keys));
                return Err(Refusal::new(
                    Cause::Auth,
                    format!(
                        "outside the time window (boots {}, time {}; this engine is at boots {}, time {})",
                        m.usm.boots,
                        m.usm.time,
                        self.own.boots,
                        self.own.time(now)
                    ),
                )
                .reported(r));
            }
        }
        let plain;
        let scoped_bytes = match (&m.data, &keys) {
            (ScopedData::Plain(..), _) => scoped_of(raw)
                .ok_or_else(|| Refusal::new(Cause::Malformed, "no scoped PDU in the message"))?,
            (ScopedData::Encrypted(enc), Some(keys)) if keys.has_priv() => {
                plain = usm::decrypt_bytes(keys, &m.usm, enc).map_err(|e| {
                    let r = report(&mut self.own, UsmStat::DecryptionErrors, None);
                    Refusal::new(Cause::Auth, e.to_string()).reported(r)
                })?;
                &plain[..]
            }
            (ScopedData::Encrypted(_), _) => {
                return Err(Refusal::new(
                    Cause::Auth,
                    "encrypted, and the user has no priv_password",
                ));
            }
        };
        let scoped = Scoped::decode(scoped_bytes).map_err(|e| {
            let why = if m.flags & FLAG_PRIV != 0 {
                format!("decrypted scoped PDU is malformed (wrong priv_password?): {e}")
            } else {
                e.to_string()
            };
            let r = (m.flags & FLAG_PRIV != 0)
                .then(|| report(&mut self.own, UsmStat::DecryptionErrors, None))
                .flatten();
            Refusal::new(
                if m.flags & FLAG_PRIV != 0 {
                    Cause::Auth
                } else {
                    Cause::Malformed
                },
                why,
            )
            .reported(r)
        })?;
        let kind = scoped.pdu.kind;
        let request_id = scoped.pdu.request_id;
        let inform = (kind == tag::INFORM).then(|| (request_id, scoped.varbinds.to_vec()));
        let ack = inform.as_ref().map(|(id, varbinds)| {
            self.own.response(
                m.msg_id,
                &m.usm.user,
                (scoped.context_engine, scoped.context_name),
                keys.as_ref(),
                (*id, varbinds),
                now,
            )
        });
        match kind {
            tag::INFORM | tag::TRAP_V2 => {
                let notification = from_v2_pdu(3, m.usm.user.clone(), scoped.pdu, inform, 0)
                    .map_err(|e| Refusal::new(Cause::Malformed, e.to_string()))?;
                Ok(Accepted { notification, ack })
            }
            other => Err(not_a_notification(other)),
        }
    }

    /// A trap from the engine that sent it (authoritative itself).
    fn sent_by_sender(
        &mut self,
        cfg: &SnmpTrapConfig,
        m: &usm::V3Message,
        raw: &[u8],
        now: Instant,
    ) -> Result<Accepted, Refusal> {
        let Some((index, user)) = find_user(cfg, &m.usm.user) else {
            return Err(Refusal::new(Cause::User, unknown_user(&m.usm.user)));
        };
        if user
            .sender_engine_id
            .as_ref()
            .is_some_and(|id| *id != m.usm.engine_id)
        {
            return Err(Refusal::new(
                Cause::User,
                format!(
                    "engine id {} is not the user's sender_engine_id",
                    hex(&m.usm.engine_id, "")
                ),
            ));
        }
        if level(m.flags) != user_level(user) {
            return Err(Refusal::new(Cause::Auth, wrong_level(m.flags, user)));
        }
        let Some((auth, pw)) = &user.auth else {
            // noAuthNoPriv: nothing to localize, no clock to trust; no
            // engine state is kept for it.
            let opened =
                open(m, raw, None).map_err(|e| Refusal::new(Cause::Auth, e.to_string()))?;
            return trap_of(m, opened);
        };
        let id = &m.usm.engine_id;
        let known = self.engines.get(id);
        // Keys localized for this message, when none are kept yet for this
        // engine and user: kept only once the message authenticates, so a
        // spoofed engine id costs a localization (one a second at most) and
        // never a place in the table.
        let fresh = if known.is_some_and(|s| s.keys.contains_key(&index)) {
            None
        } else {
            if id.len() < 5 || id.len() > 32 {
                return Err(Refusal::new(
                    Cause::Malformed,
                    "engine id not 5 to 32 bytes",
                ));
            }
            if known.is_none() && self.engines.len() >= MAX_ENGINES {
                return Err(Refusal::new(
                    Cause::User,
                    format!("more than {MAX_ENGINES} engines"),
                ));
            }
            if !self.localize.take(now) {
                return Err(Refusal::new(
                    Cause::User,
                    "a new engine or user, over one key localization a second",
                ));
            }
            Some(Keys::new(
                (*auth, pw),
                user.privacy.as_ref().map(|(pp, ppw)| (*pp, ppw.as_str())),
                id,
            ))
        };
        let keys = match &fresh {
            Some(k) => Some(k),
            None => known.and_then(|s| s.keys.get(&index)),
        };
        let opened = open(m, raw, keys).map_err(|e| Refusal::new(Cause::Auth, e.to_string()))?;
        if !opened.authenticated {
            return Err(Refusal::new(
                Cause::Auth,
                "not authenticated, and the user has an auth_password",
            ));
        }
        let sender = self.engines.entry(id.clone()).or_insert_with(|| Sender {
            clock: Engine::discovered(id.clone(), 0, 0, None),
            keys: HashMap::new(),
        });
        if let Some(keys) = fresh {
            sender.keys.insert(index, keys);
        }
        sender
            .clock
            .observe(m.usm.boots, m.usm.time)
            .map_err(|e| Refusal::new(Cause::Auth, e.to_string()))?;
        trap_of(m, opened)
    }

    /// The engines whose keys and clocks are kept (tests).
    #[cfg(test)]
    pub(super) fn engines_kept(&self) -> usize {
        self.engines.len()
    }
}

/// The notification of an opened trap from its sending engine.
fn trap_of(
    m: &usm::V3Message,
    opened: crate::drivers::snmp::v3::Opened,
) -> Result<Accepted, Refusal> {
    match opened.pdu.kind {
        tag::TRAP_V2 => from_v2_pdu(3, m.usm.user.clone(), opened.pdu, None, 0)
            .map(|notification| Accepted {
                notification,
                ack: None,
            })
            .map_err(|e| Refusal::new(Cause::Malformed, e.to_string())),
        tag::INFORM => Err(Refusal::new(
            Cause::User,
            "an inform not marked reportable, for another engine than this receiver's",
        )),
        other => Err(not_a_notification(other)),
    }
}

fn find_user<'c>(cfg: &'c SnmpTrapConfig, name: &[u8]) -> Option<(usize, &'c TrapUser)> {
    cfg.users
        .iter()
        .enumerate()
        .find(|(_, u)| u.name.as_bytes() == name)
}

fn unknown_user(name: &[u8]) -> String {
    format!("unknown user \"{}\"", String::from_utf8_lossy(name))
}

/// (authenticated, encrypted) of a message's flags.
fn level(flags: u8) -> (bool, bool) {
    (flags & FLAG_AUTH != 0, flags & FLAG_PRIV != 0)
}

fn user_level(user: &TrapUser) -> (bool, bool) {
    (user.auth.is_some(), user.privacy.is_some())
}

fn wrong_level(flags: u8, user: &TrapUser) -> String {
    let name = |(auth, privacy): (bool, bool)| match (auth, privacy) {
        (false, _) => "noAuthNoPriv",
        (true, false) => "authNoPriv",
        (true, true) => "authPriv",
    };
    format!(
        "a {} message, and user \"{}\" is configured {}",
        name(level(flags)),
        user.name,
        name(user_level(user))
    )
}

fn not_a_notification(kind: u8) -> Refusal {
    Refusal::new(
        Cause::Malformed,
        format!("not a notification (PDU type 0x{kind:02x})"),
    )
}

/// The request id of a message in the clear (0 when encrypted: it cannot
/// be read before the message is authenticated).
fn plain_request_id(m: &usm::V3Message) -> i32 {
    match &m.data {
        ScopedData::Plain(pdu, _) => pdu.request_id,
        ScopedData::Encrypted(_) => 0,
    }
}

/// The scoped PDU of a message in the clear: the fourth element of its
/// sequence.
fn scoped_of(raw: &[u8]) -> Option<&[u8]> {
    let mut top = Reader::new(raw, 0);
    let mut msg = top.expect(tag::SEQUENCE, "message").ok()?;
    msg.int("message.version").ok()?;
    msg.any("message.header").ok()?;
    msg.any("message.securityParameters").ok()?;
    Some(msg.rest())
}

/// A scoped PDU read for the answer: its context name and the raw varbind
/// list besides the decoded PDU.
struct Scoped<'a> {
    context_engine: &'a [u8],
    context_name: &'a [u8],
    pdu: ber::Pdu,
    varbinds: &'a [u8],
}

impl<'a> Scoped<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Scoped<'a>, DecodeError> {
        let mut r = Reader::new(bytes, 0);
        let mut scoped = r.expect(tag::SEQUENCE, "scopedPDU")?;
        let context_engine = scoped.octets("scopedPDU.contextEngineID")?;
        let context_name = scoped.octets("scopedPDU.contextName")?;
        let raw_pdu = scoped.rest();
        let pdu = ber::decode_pdu(&mut scoped)?;
        let varbinds = varbind_list(raw_pdu).unwrap_or_default();
        Ok(Scoped {
            context_engine,
            context_name,
            pdu,
            varbinds,
        })
    }
}
