//! This receiver's own SNMPv3 engine, the authoritative one for the
//! informs sent to it (RFC 3414 §2.3, §3.2): its engine id, its
//! snmpEngineBoots (one more at each start, kept in a file beside the
//! spool) and snmpEngineTime (seconds since the start), the users' keys
//! localized to its id, the usmStats counters its Reports carry, and the
//! encoding of those Reports and of the Responses that acknowledge informs.
//!
//! Owns: the boots file `snmp_trap-<engine id in hex>.boots` in the state
//! directory (the spool's), written once per start. May touch: the SNMP
//! driver's USM codec (`drivers::snmp::usm`) and BER encoder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::warn;

use super::config::TrapUser;
use crate::drivers::snmp::ber::{self, tag};
use crate::drivers::snmp::usm::{self, Keys, Outgoing};
use crate::drivers::snmp::v3::TIME_WINDOW_SECS;
use crate::drivers::snmp::value::hex;

/// RFC 3414 §2.2.2: at this many boots an engine must be reconfigured;
/// nothing is timely.
pub const MAX_BOOTS: u32 = 2_147_483_647;

/// The usmStats counters (RFC 3414 §5, `usmStats` arcs 1 to 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsmStat {
    UnsupportedSecLevels = 1,
    NotInTimeWindows = 2,
    UnknownUserNames = 3,
    UnknownEngineIds = 4,
    WrongDigests = 5,
    DecryptionErrors = 6,
}

/// `usmStats` (1.3.6.1.6.3.15.1.1).
const USM_STATS: [u32; 9] = [1, 3, 6, 1, 6, 3, 15, 1, 1];

/// The authoritative engine.
pub struct OwnEngine {
    pub id: Vec<u8>,
    pub boots: u32,
    started: Instant,
    /// Each user's keys localized to `id` (by the index in the config's
    /// `users`), localized when first needed.
    keys: Vec<Option<Option<Keys>>>,
    /// usmStats counters, by [`UsmStat`] − 1 (32-bit: they wrap).
    stats: [u32; 6],
    /// The next AES salt (unique per message this engine encrypts).
    salt: u64,
}

/// Where the boots of engine `id` are kept in `dir`.
pub fn boots_path(dir: &Path, id: &[u8]) -> PathBuf {
    dir.join(format!("snmp_trap-{}.boots", hex(id, "")))
}

/// The boots of this start: one more than the file says (0 when there is
/// no file), written back. Without a directory, or when the file cannot be
/// written (logged), the boots are 1 or the count read: a restart may then
/// repeat a boots value, and a message recorded before it could be
/// replayed within the 150 s window. A file that cannot be read (other than
/// missing) or is not a number locks the engine at [`MAX_BOOTS`] (logged);
/// one unreadable is not written.
pub fn next_boots(dir: Option<&Path>, id: &[u8]) -> u32 {
    let Some(dir) = dir else {
        return 1;
    };
    let path = boots_path(dir, id);
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().unwrap_or_else(|_| {
            warn!(path = %path.display(), "snmp_trap: boots file is not a number; the engine's boots are set to the maximum, so no SNMPv3 inform is accepted (RFC 3414 §2.2.2): set a new `local_engine_id` and remove the file");
            MAX_BOOTS - 1
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            // The count is unknown: starting low could repeat a boots value
            // (replays), and writing would overwrite a good file.
            warn!(path = %path.display(), error = %e, "snmp_trap: cannot read the engine's boots; the engine's boots are set to the maximum, so no SNMPv3 inform is accepted (RFC 3414 §2.2.2) until the file can be read, and it is left as it is");
            return MAX_BOOTS;
        }
    };
    let boots = before.saturating_add(1).min(MAX_BOOTS);
    let tmp = path.with_extension("boots.tmp");
    let written = std::fs::write(&tmp, format!("{boots}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        warn!(path = %path.display(), error = %e, "snmp_trap: cannot keep the engine's boots; a restart may repeat them");
    }
    boots
}

impl OwnEngine {
    pub fn new(id: Vec<u8>, boots: u32, users: usize, now: Instant) -> Self {
        OwnEngine {
            id,
            boots,
            started: now,
            keys: vec![None; users],
            stats: [0; 6],
            salt: rand::random(),
        }
    }

    /// snmpEngineTime: seconds since this engine started.
    pub fn time(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.started).as_secs()).unwrap_or(u32::MAX)
    }

    /// User `index`'s keys localized to this engine (`None`: the user has
    /// no authentication).
    pub fn keys(&mut self, index: usize, user: &TrapUser) -> Option<&Keys> {
        let slot = self.keys.get_mut(index)?;
        slot.get_or_insert_with(|| {
            user.auth.as_ref().map(|(p, pw)| {
                Keys::new(
                    (*p, pw),
                    user.privacy.as_ref().map(|(pp, ppw)| (*pp, ppw.as_str())),
                    &self.id,
                )
            })
        })
        .as_ref()
    }

    /// RFC 3414 §3.2 step 7a: whether a message claiming `boots` and
    /// `time` is inside this engine's time window.
    pub fn timely(&self, boots: u32, time: u32, now: Instant) -> bool {
        let local = i64::from(self.time(now));
        self.boots != MAX_BOOTS
            && boots == self.boots
            && (i64::from(time) - local).unsigned_abs() <= TIME_WINDOW_SECS
    }

    /// Counts `stat` and encodes the Report that says so, answering the
    /// message `msg_id` (request `request_id`) of `user`: unauthenticated,
    /// or authenticated (never encrypted) with `keys`.
    pub fn report(
        &mut self,
        stat: UsmStat,
        msg_id: i32,
        request_id: i32,
        user: &[u8],
        keys: Option<&Keys>,
        now: Instant,
    ) -> Vec<u8> {
        let n = &mut self.stats[stat as usize - 1];
        *n = n.wrapping_add(1);
        let mut oid = USM_STATS.to_vec();
        oid.extend([stat as u32, 0]);
        let value = counter32(*n);
        let varbind = ber::constructed(tag::SEQUENCE, &[&ber::oid(&oid), &value]);
        let list = ber::tlv(tag::SEQUENCE, &varbind);
        let pdu = ber::constructed(
            tag::REPORT,
            &[
                &ber::int(i64::from(request_id)),
                &ber::int(0),
                &ber::int(0),
                &list,
            ],
        );
        let auth_only = keys.map(Keys::auth_only);
        self.encode(msg_id, user, (b"", b""), auth_only.as_ref(), &pdu, now)
    }

    /// The Response that acknowledges an inform (RFC 3416 §4.2.7: its
    /// request id and varbinds, its context engine and name), at the
    /// inform's level with `keys`.
    pub fn response(
        &mut self,
        msg_id: i32,
        user: &[u8],
        context: (&[u8], &[u8]),
        keys: Option<&Keys>,
        (request_id, varbinds): (i32, &[u8]),
        now: Instant,
    ) -> Vec<u8> {
        let pdu = ber::constructed(
            tag::RESPONSE,
            &[
                &ber::int(i64::from(request_id)),
                &ber::int(0),
                &ber::int(0),
                varbinds,
            ],
        );
        self.encode(msg_id, user, context, keys, &pdu, now)
    }

    /// A message from this engine to `user`; `context`: (contextEngineID,
    /// contextName), an empty contextEngineID meaning this engine's.
    fn encode(
        &mut self,
        msg_id: i32,
        user: &[u8],
        (context_engine, context): (&[u8], &[u8]),
        keys: Option<&Keys>,
        pdu: &[u8],
        now: Instant,
    ) -> Vec<u8> {
        self.salt = self.salt.wrapping_add(1);
        usm::encode(&Outgoing {
            msg_id,
            engine_id: &self.id,
            boots: self.boots,
            time: self.time(now),
            user,
            context,
            context_engine: (!context_engine.is_empty()).then_some(context_engine),
            keys,
            salt: self.salt.to_be_bytes(),
            pdu,
        })
    }
}

/// A Counter32 value.
fn counter32(n: u32) -> Vec<u8> {
    let mut v = ber::int(i64::from(n));
    if let Some(t) = v.first_mut() {
        *t = tag::COUNTER32;
    }
    v
}
