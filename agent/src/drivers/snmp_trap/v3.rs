//! SNMPv3 traps (RFC 3414 USM): the sender is the authoritative engine, so
//! the receiver localizes the configured user's keys to the sender's engine
//! id (once per engine: at most one new engine a second and
//! [`MAX_ENGINES`] in all, or only `engine_id` when it is set), checks the
//! MAC and decrypts with the same code the SNMP driver trusts answers with
//! (`drivers::snmp::v3::open`), and learns each engine's boots and time
//! from authenticated traps only, refusing one outside the 150 s window (a
//! replay). A message at a lower level than the user's is refused. Informs
//! over v3 need this agent to be the authoritative engine (discovery
//! reports, its own boots and time): not received yet.

use std::collections::HashMap;
use std::time::Instant;

use super::config::{MAX_ENGINES, SnmpTrapConfig};
use super::decode::{Notification, from_v2_pdu};
use super::{Bucket, Cause};
use crate::drivers::snmp::ber::tag;
use crate::drivers::snmp::usm::{self, Keys};
use crate::drivers::snmp::v3::{Engine, open};

/// The engines heard from, with their keys and clocks.
pub(super) struct V3 {
    engines: HashMap<Vec<u8>, Engine>,
    /// New engines' key localizations (about a million hash rounds each).
    localize: Bucket,
}

impl V3 {
    pub(super) fn new(now: Instant) -> Self {
        V3 {
            engines: HashMap::new(),
            localize: Bucket::new(1, now),
        }
    }

    /// The notification an SNMPv3 datagram carries, or why it is refused.
    pub(super) fn open(
        &mut self,
        cfg: &SnmpTrapConfig,
        raw: &[u8],
        now: Instant,
    ) -> Result<Notification, (Cause, String)> {
        let m = usm::decode(raw).map_err(|e| (Cause::Malformed, e.to_string()))?;
        let Some(user) = &cfg.user else {
            return Err((Cause::User, "SNMPv3, and no `user` is configured".into()));
        };
        if m.usm.user != user.name.as_bytes() {
            return Err((
                Cause::User,
                format!("unknown user \"{}\"", String::from_utf8_lossy(&m.usm.user)),
            ));
        }
        if user
            .engine_id
            .as_ref()
            .is_some_and(|id| *id != m.usm.engine_id)
        {
            return Err((Cause::User, "unknown engine id".into()));
        }
        if !self.engines.contains_key(&m.usm.engine_id) {
            if m.usm.engine_id.len() < 5 || m.usm.engine_id.len() > 32 {
                return Err((Cause::Malformed, "engine id not 5 to 32 bytes".into()));
            }
            if self.engines.len() >= MAX_ENGINES {
                return Err((Cause::User, format!("more than {MAX_ENGINES} engines")));
            }
            if !self.localize.take(now) {
                return Err((Cause::User, "a new engine, over one a second".into()));
            }
            let keys = user.auth.as_ref().map(|(p, pw)| {
                Keys::new(
                    (*p, pw),
                    user.privacy.as_ref().map(|(pp, ppw)| (*pp, ppw.as_str())),
                    &m.usm.engine_id,
                )
            });
            let engine = Engine::discovered(m.usm.engine_id.clone(), 0, 0, keys);
            self.engines.insert(m.usm.engine_id.clone(), engine);
        }
        let Some(engine) = self.engines.get_mut(&m.usm.engine_id) else {
            return Err((Cause::User, "unknown engine id".into()));
        };
        let opened =
            open(&m, raw, engine.keys.as_ref()).map_err(|e| (Cause::Auth, e.to_string()))?;
        if user.auth.is_some() && !opened.authenticated {
            return Err((Cause::Auth, "not authenticated, the user's level is".into()));
        }
        if user.privacy.is_some() && !opened.encrypted {
            return Err((Cause::Auth, "not encrypted, the user's level is".into()));
        }
        if opened.authenticated {
            engine
                .observe(m.usm.boots, m.usm.time)
                .map_err(|e| (Cause::Auth, e.to_string()))?;
        }
        match opened.pdu.kind {
            tag::TRAP_V2 => from_v2_pdu(3, Vec::new(), opened.pdu, None, 0)
                .map_err(|e| (Cause::Malformed, e.to_string())),
            tag::INFORM => Err((
                Cause::Version,
                "SNMPv3 informs are not received yet (v3 traps and v2c informs are)".into(),
            )),
            other => Err((
                Cause::Malformed,
                format!("not a notification (PDU type 0x{other:02x})"),
            )),
        }
    }
}
