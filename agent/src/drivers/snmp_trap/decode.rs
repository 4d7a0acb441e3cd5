//! An SNMPv1 or v2c notification datagram: a v1 Trap-PDU, translated to
//! the v2 form as RFC 3584 §3.1 says, a v2 Trap or an InformRequest, whose
//! acknowledgement ([`response`]) echoes its request id and varbinds.

use crate::drivers::snmp::ber::{
    self, DecodeError, Pdu, Reader, SnmpValue, constructed, decode_pdu, decode_trap_v1, tag,
};

/// `sysUpTime.0`, the first varbind of a v2 notification.
pub const SYS_UPTIME_0: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
/// `snmpTrapOID.0`, the second.
pub const SNMP_TRAP_OID_0: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// `snmpTraps`: the generic traps of v1 are its arcs 1..=6.
const SNMP_TRAPS: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 5];
/// `snmpTrapAddress.0` (SNMP-COMMUNITY-MIB): a v1 trap's agent-addr, as
/// RFC 3584 §3.1 (4) appends it to the translated notification.
pub const SNMP_TRAP_ADDRESS_0: &[u32] = &[1, 3, 6, 1, 6, 3, 18, 1, 3, 0];

/// Varbinds a notification may carry besides `sysUpTime.0` and
/// `snmpTrapOID.0` (real ones carry a handful); more is refused as
/// malformed, so a queued notification's decoded size stays bounded.
pub const MAX_VARBINDS: usize = 256;

fn too_many(at: usize, n: usize) -> DecodeError {
    DecodeError::new(
        at,
        "pdu.varbinds",
        format!("{n} varbinds: more than the {MAX_VARBINDS} a notification may carry"),
    )
}

/// One notification as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// 0 for SNMPv1, 1 for v2c.
    pub version: i64,
    pub community: Vec<u8>,
    /// What happened (`snmpTrapOID.0`; a v1 trap's translation).
    pub trap_oid: Vec<u32>,
    /// The sender's `sysUpTime` when it sent it, in hundredths of a second.
    pub uptime: u32,
    /// The other varbinds.
    pub varbinds: Vec<(Vec<u32>, SnmpValue)>,
    /// An InformRequest: its request id and raw varbind list, for the
    /// acknowledgement.
    pub inform: Option<(i32, Vec<u8>)>,
}

/// Decodes a notification datagram; any other message is an error naming
/// what it is.
pub fn decode(bytes: &[u8]) -> Result<Notification, DecodeError> {
    let mut top = Reader::new(bytes, 0);
    let mut msg = top.expect(tag::SEQUENCE, "message")?;
    let version = msg.int("message.version")?;
    if version == 3 {
        return Err(DecodeError::new(
            0,
            "message.version",
            "an SNMPv3 message (opened with its user's keys, not decoded here)",
        ));
    }
    if version != 0 && version != 1 {
        return Err(DecodeError::new(
            0,
            "message.version",
            format!("unknown SNMP version {version}"),
        ));
    }
    let community = msg.octets("message.community")?.to_vec();
    let at = msg.offset();
    match msg.peek_tag() {
        Some(tag::TRAP_V1) => {
            let mut body = msg.expect(tag::TRAP_V1, "pdu")?;
            let trap = decode_trap_v1(&mut body)?;
            if trap.varbinds.len() > MAX_VARBINDS {
                return Err(too_many(at, trap.varbinds.len()));
            }
            let trap_oid = if (0..6).contains(&trap.generic) {
                let mut oid = SNMP_TRAPS.to_vec();
                oid.push(trap.generic as u32 + 1);
                oid
            } else {
                let specific = u32::try_from(trap.specific).map_err(|_| {
                    DecodeError::new(
                        at,
                        "trap.specific-trap",
                        format!("{} is not an OID arc", trap.specific),
                    )
                })?;
                let mut oid = trap.enterprise.clone();
                oid.extend([0, specific]);
                oid
            };
            // RFC 3584 §3.1 (4): the agent-addr field becomes a varbind
            // snmpTrapAddress.0 (unless the trap carries one), so the
            // address the trap names survives beside its UDP source (which
            // names the device; a relay's when the trap came through one).
            // snmpTrapCommunity.0 is not appended: a community is a secret.
            let mut varbinds = trap.varbinds;
            if !varbinds.iter().any(|(oid, _)| oid == SNMP_TRAP_ADDRESS_0) {
                varbinds.push((
                    SNMP_TRAP_ADDRESS_0.to_vec(),
                    SnmpValue::IpAddress(trap.agent_addr),
                ));
            }
            Ok(Notification {
                version,
                community,
                trap_oid,
                uptime: trap.time_stamp,
                varbinds,
                inform: None,
            })
        }
        Some(kind @ (tag::TRAP_V2 | tag::INFORM)) => {
            let raw = msg.rest();
            let pdu = decode_pdu(&mut msg)?;
            let inform = (kind == tag::INFORM)
                .then(|| varbind_list(raw).map(|list| (pdu.request_id, list.to_vec())))
                .flatten();
            from_v2_pdu(version, community, pdu, inform, at)
        }
        Some(other) => Err(DecodeError::new(
            at,
            "pdu",
            format!("not a notification (PDU type 0x{other:02x})"),
        )),
        None => Err(DecodeError::new(at, "pdu", "truncated: no PDU")),
    }
}

/// The notification a decoded v2 Trap or InformRequest PDU carries (also
/// an SNMPv3 one, once opened): `sysUpTime.0` and `snmpTrapOID.0` first.
pub fn from_v2_pdu(
    version: i64,
    community: Vec<u8>,
    pdu: Pdu,
    inform: Option<(i32, Vec<u8>)>,
    at: usize,
) -> Result<Notification, DecodeError> {
    if pdu.varbinds.len() > MAX_VARBINDS + 2 {
        return Err(too_many(at, pdu.varbinds.len() - 2));
    }
    let mut varbinds = pdu.varbinds.into_iter();
    let uptime = match varbinds.next() {
        Some((oid, SnmpValue::TimeTicks(t))) if oid == SYS_UPTIME_0 => t,
        _ => {
            return Err(DecodeError::new(
                at,
                "pdu.varbind[0]",
                "a notification starts with sysUpTime.0 (TimeTicks)",
            ));
        }
    };
    let trap_oid = match varbinds.next() {
        Some((oid, SnmpValue::Oid(t))) if oid == SNMP_TRAP_OID_0 => t,
        _ => {
            return Err(DecodeError::new(
                at,
                "pdu.varbind[1]",
                "a notification's second varbind is snmpTrapOID.0 (an OID)",
            ));
        }
    };
    Ok(Notification {
        version,
        community,
        trap_oid,
        uptime,
        varbinds: varbinds.collect(),
        inform,
    })
}

/// The raw varbind list of a PDU element (tag, length, three integers,
/// then the list).
pub(super) fn varbind_list(pdu: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(pdu, 0);
    let (_, mut body) = r.any("pdu").ok()?;
    for field in ["request-id", "error-status", "error-index"] {
        body.int(field).ok()?;
    }
    Some(body.rest())
}

/// The Response that acknowledges an InformRequest (RFC 3416 §4.2.7): the
/// same request id and varbinds, no error.
pub fn response(version: i64, community: &[u8], request_id: i32, varbinds: &[u8]) -> Vec<u8> {
    let pdu = constructed(
        tag::RESPONSE,
        &[
            &ber::int(i64::from(request_id)),
            &ber::int(0),
            &ber::int(0),
            varbinds,
        ],
    );
    constructed(
        tag::SEQUENCE,
        &[&ber::int(version), &ber::octets(community), &pdu],
    )
}
