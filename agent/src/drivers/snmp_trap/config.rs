//! Settings of the SNMP notification receiver (`driver = "snmp_trap"`):
//! where it listens, the community a notification must carry, the MIB
//! modules its OIDs are named from and how many notifications wait for the
//! next poll.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};
use crate::drivers::settings::{DriverTable, Settings};
use crate::drivers::snmp::credentials::{usm_credentials, usm_user};
use crate::drivers::snmp::{At, SnmpAuthProtocol, SnmpPrivProtocol};

/// An engine id written in hex (`0x` optional): 5 to 32 bytes.
fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if !t.len().is_multiple_of(2) || !(10..=64).contains(&t.len()) {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Notifications kept between two polls unless `max_pending` says.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// Bytes of queued datagrams unless `max_pending_bytes` says (a typical
/// notification is 100 to 400 bytes).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// Notifications per second accepted from one sender unless
/// `max_rate_per_sender` says.
pub const DEFAULT_MAX_RATE_PER_SENDER: u32 = 1_000;

/// Notifications per second accepted in all unless `max_rate` says.
pub const DEFAULT_MAX_RATE: u32 = 20_000;

/// Modules whose names are used unless `mibs` says: the generic traps
/// (`coldStart`, `linkDown`, ...) and the interface objects they carry.
pub const DEFAULT_MIBS: &[&str] = &["SNMPv2-MIB", "IF-MIB"];

/// An SNMP notification receiver.
#[derive(Clone, PartialEq)]
pub struct SnmpTrapConfig {
    /// UDP address to receive on (`0.0.0.0:162` needs the privilege to
    /// bind a low port).
    pub listen: SocketAddr,
    /// The communities an SNMPv1/v2c notification may carry (`community`
    /// and `communities` together); others are counted and dropped (and an
    /// inform is not acknowledged).
    pub communities: Vec<String>,
    /// The SNMPv3 users notifications may come from (USM): `user` and
    /// its keys, then each of `users`.
    pub users: Vec<TrapUser>,
    /// This receiver's own SNMPv3 engine id (`local_engine_id`, hex), the
    /// authoritative engine of the informs sent to it; unset, derived from
    /// the agent id and the device name ([`own_engine_id`]). (A device-level
    /// `engine_id` is refused: it once meant the sender's engine.)
    pub local_engine_id: Option<Vec<u8>>,
    /// Device name by sender address; a sender not listed is named by its
    /// address.
    pub senders: BTreeMap<IpAddr, String>,
    /// MIB modules whose object and notification names label readings.
    pub mibs: Vec<String>,
    /// Notifications kept for the next poll; beyond that they are counted
    /// as dropped (an inform is then not acknowledged, so its sender
    /// retries).
    pub max_pending: usize,
    /// Bytes of queued datagrams kept between two polls at most (decoded,
    /// a notification takes several times its size).
    pub max_pending_bytes: usize,
    /// Notifications per second accepted from one sender, and in all;
    /// beyond them they are dropped and counted (a flood costs decoding,
    /// not memory or the uplink).
    pub max_rate_per_sender: u32,
    pub max_rate: u32,
    /// `mibs` was written (a module missing is then an error; the default
    /// modules are used when present).
    pub mibs_written: bool,
    /// Where the device's `listen` was written, for errors found later.
    pub at: At,
    /// Names of the OIDs of `mibs`, filled in when the whole config is
    /// read (`drivers::snmp::resolve_names`).
    pub names: OidNames,
    /// The agent's id and the directory its engine's boots are kept in
    /// (the spool's), filled in when the whole config is read
    /// ([`super::place`]); `None`: boots are not kept (tests).
    pub agent_id: String,
    pub state_dir: Option<PathBuf>,
}

/// The engine id of a receiver with no `local_engine_id`: RFC 3411's format
/// (first bit set, an enterprise number of 0, format 5: octets) followed by
/// the first 12 bytes of SHA-256 over the agent id and the device name, so
/// it stays the same across restarts and differs between receivers.
pub fn own_engine_id(agent_id: &str, device: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in ["tributary snmp_trap", agent_id, device] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let mut id = vec![0x80, 0, 0, 0, 5];
    id.extend_from_slice(&ctx.finish().as_ref()[..12]);
    id
}

/// What an OID is called and how its values read.
#[derive(Debug, Clone, PartialEq)]
pub struct OidName {
    pub name: String,
    pub meaning: crate::drivers::snmp::ValueMeaning,
}

/// OID → name, for the longest known prefix of an OID. Compared by
/// content; shown by size (it can hold thousands of names).
#[derive(Clone, PartialEq, Default)]
pub struct OidNames(pub Arc<BTreeMap<Vec<u32>, OidName>>);

impl std::fmt::Debug for OidNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OidNames({} names)", self.0.len())
    }
}

impl OidNames {
    /// The name of `oid` itself, or of its longest named prefix with the
    /// rest of `oid` (the instance: `3` of `ifOperStatus.3`).
    pub fn find<'a>(&'a self, oid: &'a [u32]) -> Option<(&'a OidName, &'a [u32])> {
        (1..=oid.len())
            .rev()
            .find_map(|n| self.0.get(&oid[..n]).map(|name| (name, &oid[n..])))
    }
}

/// An SNMPv3 user whose traps and informs are accepted. Its `Debug` shows
/// the name and the levels, never a password.
#[derive(Clone, PartialEq)]
pub struct TrapUser {
    pub name: String,
    pub auth: Option<(SnmpAuthProtocol, String)>,
    pub privacy: Option<(SnmpPrivProtocol, String)>,
    /// The sender's engine id (`sender_engine_id`, hex), when set: traps
    /// of other engines are refused. Unset, keys are localized for each
    /// engine that sends, at most one new engine a second and
    /// [`MAX_ENGINES`] in all.
    pub sender_engine_id: Option<Vec<u8>>,
}

impl std::fmt::Debug for TrapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrapUser")
            .field("name", &self.name)
            .field("auth", &self.auth.as_ref().map(|(p, _)| p))
            .field("privacy", &self.privacy.as_ref().map(|(p, _)| p))
            .field("sender_engine_id", &self.sender_engine_id)
            .finish()
    }
}

/// Engines a receiver keeps keys and clocks for.
pub const MAX_ENGINES: usize = 1_000;

impl std::fmt::Debug for SnmpTrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnmpTrapConfig")
            .field("listen", &self.listen)
            .field(
                "communities",
                &format!("<{} redacted>", self.communities.len()),
            )
            .field("users", &self.users)
            .field("local_engine_id", &self.local_engine_id)
            .field("senders", &self.senders)
            .field("mibs", &self.mibs)
            .field("max_pending", &self.max_pending)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_rate_per_sender", &self.max_rate_per_sender)
            .field("max_rate", &self.max_rate)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnmpTrap {
    listen: Spanned<String>,
    community: Option<Spanned<String>>,
    communities: Option<Spanned<Vec<String>>>,
    user: Option<Spanned<String>>,
    auth_protocol: Option<Spanned<String>>,
    auth_password: Option<Spanned<String>>,
    priv_protocol: Option<Spanned<String>>,
    priv_password: Option<Spanned<String>>,
    sender_engine_id: Option<Spanned<String>>,
    users: Option<Vec<Spanned<RawUser>>>,
    /// Refused (once the sender's engine filter; now ambiguous): read only
    /// to say which key is meant.
    engine_id: Option<Spanned<String>>,
    local_engine_id: Option<Spanned<String>>,
    senders: Option<Vec<Spanned<RawSender>>>,
    mibs: Option<Vec<Spanned<String>>>,
    max_pending: Option<Spanned<usize>>,
    max_pending_bytes: Option<Spanned<String>>,
    max_rate_per_sender: Option<Spanned<u32>>,
    max_rate: Option<Spanned<u32>>,
}

/// One of `users`: `{ user = "ops", auth_password = "...", ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    user: Spanned<String>,
    auth_protocol: Option<Spanned<String>>,
    auth_password: Option<Spanned<String>>,
    priv_protocol: Option<Spanned<String>>,
    priv_password: Option<Spanned<String>>,
    sender_engine_id: Option<Spanned<String>>,
}

impl RawUser {
    fn validate(&self, src: &Source<'_>, key: &str) -> Result<TrapUser, ConfigError> {
        let name = usm_user(src, key, &self.user)?;
        let (auth, privacy) = usm_credentials(
            src,
            key,
            (&self.auth_protocol, &self.auth_password),
            (&self.priv_protocol, &self.priv_password),
        )?;
        Ok(TrapUser {
            name,
            auth,
            privacy,
            sender_engine_id: engine_id(src, key, "sender_engine_id", &self.sender_engine_id)?,
        })
    }
}

/// An engine id setting, checked.
fn engine_id(
    src: &Source<'_>,
    key: &str,
    name: &str,
    value: &Option<Spanned<String>>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(e) = value else {
        return Ok(None);
    };
    parse_hex(e.get_ref()).map(Some).ok_or_else(|| {
        src.error(
            e.span(),
            format!("{key}.{name}"),
            format!(
                "\"{}\" is not an engine id (5 to 32 bytes in hex, e.g. 0x80001f8880...)",
                e.get_ref()
            ),
        )
    })
}

/// `{ address = "10.0.0.5", name = "sw-5" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSender {
    address: Spanned<String>,
    name: Spanned<String>,
}

impl RawSnmpTrap {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<SnmpTrapConfig, ConfigError> {
        let listen = self
            .listen
            .get_ref()
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| {
                src.error(
                    self.listen.span(),
                    format!("{key}.listen"),
                    format!(
                        "invalid address \"{}\" (expected ip:port, e.g. 0.0.0.0:162)",
                        self.listen.get_ref()
                    ),
                )
            })?;
        let mut communities = Vec::new();
        if let Some(c) = &self.community {
            if c.get_ref().is_empty() {
                return Err(src.error(c.span(), format!("{key}.community"), "must not be empty"));
            }
            communities.push(c.get_ref().clone());
        }
        if let Some(list) = &self.communities {
            if list.get_ref().iter().any(String::is_empty) {
                return Err(src.error(
                    list.span(),
                    format!("{key}.communities"),
                    "a community must not be empty",
                ));
            }
            communities.extend(list.get_ref().iter().cloned());
        }
        let mut users = Vec::new();
        match &self.user {
            None => {
                for (v, name) in [
                    (&self.auth_protocol, "auth_protocol"),
                    (&self.auth_password, "auth_password"),
                    (&self.priv_protocol, "priv_protocol"),
                    (&self.priv_password, "priv_password"),
                    (&self.sender_engine_id, "sender_engine_id"),
                ] {
                    if let Some(v) = v {
                        return Err(src.error(
                            v.span(),
                            format!("{key}.{name}"),
                            format!("`{name}` needs `user` (the SNMPv3 user)"),
                        ));
                    }
                }
            }
            Some(u) => {
                let flat = RawUser {
                    user: u.clone(),
                    auth_protocol: self.auth_protocol.clone(),
                    auth_password: self.auth_password.clone(),
                    priv_protocol: self.priv_protocol.clone(),
                    priv_password: self.priv_password.clone(),
                    sender_engine_id: self.sender_engine_id.clone(),
                };
                users.push(flat.validate(src, key)?);
            }
        }
        for (i, u) in self.users.iter().flatten().enumerate() {
            let user = u.get_ref().validate(src, &format!("{key}.users[{i}]"))?;
            if users.iter().any(|known: &TrapUser| known.name == user.name) {
                return Err(src.error(
                    u.get_ref().user.span(),
                    format!("{key}.users[{i}].user"),
                    format!("user \"{}\" is listed twice", user.name),
                ));
            }
            users.push(user);
        }
        if let Some(e) = &self.engine_id {
            return Err(src.error(
                e.span(),
                format!("{key}.engine_id"),
                "`engine_id` is ambiguous and no longer read: set `sender_engine_id` to accept traps from that sending engine only, or `local_engine_id` for this receiver's own engine id (informs)",
            ));
        }
        let own_engine_id = engine_id(src, key, "local_engine_id", &self.local_engine_id)?;
        if let (Some(own), Some(e)) = (&own_engine_id, &self.local_engine_id)
            && let Some(u) = users
                .iter()
                .find(|u| u.sender_engine_id.as_ref() == Some(own))
        {
            return Err(src.error(
                e.span(),
                format!("{key}.local_engine_id"),
                format!(
                    "is user \"{}\"'s `sender_engine_id`: this receiver's own engine id must differ from the engine that sends to it",
                    u.name
                ),
            ));
        }
        if communities.is_empty() && users.is_empty() {
            return Err(src.error(
                self.listen.span(),
                key.to_owned(),
                "set `community` (or `community_file`), `communities`, or an SNMPv3 `user` or `users`: who may send notifications",
            ));
        }
        let mut senders = BTreeMap::new();
        for s in self.senders.unwrap_or_default() {
            let s = s.into_inner();
            let address = s.address.get_ref().trim().parse::<IpAddr>().map_err(|_| {
                src.error(
                    s.address.span(),
                    format!("{key}.senders.address"),
                    format!("\"{}\" is not an IP address", s.address.get_ref()),
                )
            })?;
            let name = s.name.get_ref();
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(src.error(
                    s.name.span(),
                    format!("{key}.senders.name"),
                    "must be 1 to 256 printable characters",
                ));
            }
            if let Some(before) = senders.insert(address, name.clone()) {
                return Err(src.error(
                    s.address.span(),
                    format!("{key}.senders.address"),
                    format!("{address} is listed twice (also as \"{before}\")"),
                ));
            }
        }
        let mibs_written = self.mibs.is_some();
        let at = At {
            file: src.file().to_owned(),
            line: src.line(self.listen.span().start),
            key: format!("{key}.mibs"),
        };
        let mibs = match self.mibs {
            None => DEFAULT_MIBS.iter().map(|m| (*m).to_owned()).collect(),
            Some(list) => {
                let mut mibs = Vec::with_capacity(list.len());
                for m in list {
                    let name = m.get_ref();
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(src.error(
                            m.span(),
                            format!("{key}.mibs"),
                            format!("\"{name}\" is not a MIB module name (e.g. \"IF-MIB\")"),
                        ));
                    }
                    mibs.push(m.into_inner());
                }
                mibs
            }
        };
        let max_pending = match self.max_pending {
            None => DEFAULT_MAX_PENDING,
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => n.into_inner(),
            Some(n) => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_pending"),
                    format!("{} is out of range (1..=1000000)", n.get_ref()),
                ));
            }
        };
        let max_pending_bytes = match self.max_pending_bytes {
            None => DEFAULT_MAX_PENDING_BYTES,
            Some(b) => {
                let n = tributary_config::parse_size(b.get_ref()).map_err(|e| {
                    src.error(b.span(), format!("{key}.max_pending_bytes"), e.to_string())
                })?;
                usize::try_from(n)
                    .ok()
                    .filter(|n| (64 * 1024..=1 << 30).contains(n))
                    .ok_or_else(|| {
                        src.error(
                            b.span(),
                            format!("{key}.max_pending_bytes"),
                            format!("{} is out of range (64 KiB to 1 GiB)", b.get_ref()),
                        )
                    })?
            }
        };
        let rate = |v: Option<Spanned<u32>>, name: &str, default: u32| match v {
            None => Ok(default),
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => Ok(n.into_inner()),
            Some(n) => Err(src.error(
                n.span(),
                format!("{key}.{name}"),
                format!("{} is out of range (1..=1000000 per second)", n.get_ref()),
            )),
        };
        let max_rate_per_sender = rate(
            self.max_rate_per_sender,
            "max_rate_per_sender",
            DEFAULT_MAX_RATE_PER_SENDER,
        )?;
        let max_rate = rate(self.max_rate, "max_rate", DEFAULT_MAX_RATE)?;
        Ok(SnmpTrapConfig {
            listen,
            communities,
            users,
            local_engine_id: own_engine_id,
            senders,
            mibs,
            max_pending,
            max_pending_bytes,
            max_rate_per_sender,
            max_rate,
            mibs_written,
            at,
            names: OidNames::default(),
            agent_id: String::new(),
            state_dir: None,
        })
    }
}

impl Settings for SnmpTrapConfig {
    const SECRETS: &'static [&'static str] =
        &["community", "communities", "auth_password", "priv_password"];

    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawSnmpTrap = table.deserialize()?;
        raw.validate(table.src, table.key)
    }
}
