//! BER encoding and decoding of the subset of ASN.1 that SNMP uses
//! (RFC 3416 PDUs, RFC 2578 application types), and SNMPv2c messages.
//!
//! Decoding never panics and never trusts a length: every read is checked
//! against what is left, and every error names the byte offset (from the
//! start of the datagram, or of the decrypted scoped PDU) and the field it
//! was reading, e.g. `at byte 17 (pdu.request-id): expected INTEGER (0x02),
//! found 0x04`.

/// Tags used by SNMP.
pub mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const IP_ADDRESS: u8 = 0x40;
    pub const COUNTER32: u8 = 0x41;
    pub const GAUGE32: u8 = 0x42;
    pub const TIMETICKS: u8 = 0x43;
    pub const OPAQUE: u8 = 0x44;
    pub const COUNTER64: u8 = 0x46;
    pub const NO_SUCH_OBJECT: u8 = 0x80;
    pub const NO_SUCH_INSTANCE: u8 = 0x81;
    pub const END_OF_MIB_VIEW: u8 = 0x82;
    pub const GET: u8 = 0xA0;
    pub const GET_NEXT: u8 = 0xA1;
    pub const RESPONSE: u8 = 0xA2;
    /// SNMPv1 Trap-PDU (RFC 1157), a different layout from the others.
    pub const TRAP_V1: u8 = 0xA4;
    pub const GET_BULK: u8 = 0xA5;
    pub const INFORM: u8 = 0xA6;
    pub const TRAP_V2: u8 = 0xA7;
    pub const REPORT: u8 = 0xA8;
}

/// A name for a tag in error messages.
fn tag_name(t: u8) -> String {
    let name = match t {
        tag::INTEGER => "INTEGER",
        tag::OCTET_STRING => "OCTET STRING",
        tag::NULL => "NULL",
        tag::OID => "OBJECT IDENTIFIER",
        tag::SEQUENCE => "SEQUENCE",
        tag::RESPONSE => "Response-PDU",
        tag::REPORT => "Report-PDU",
        _ => return format!("0x{t:02x}"),
    };
    format!("{name} (0x{t:02x})")
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset} ({field}): {reason}")]
pub struct DecodeError {
    /// Byte offset of the offending element.
    pub offset: usize,
    /// The field being read, e.g. `pdu.varbind[2].value`.
    pub field: String,
    pub reason: String,
}

impl DecodeError {
    /// What went wrong at byte `offset` while reading `field`.
    pub fn new(offset: usize, field: &str, reason: impl Into<String>) -> Self {
        DecodeError {
            offset,
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A value in a variable binding.
#[derive(Debug, Clone, PartialEq)]
pub enum SnmpValue {
    Int(i64),
    Octets(Vec<u8>),
    Null,
    Oid(Vec<u32>),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Opaque(Vec<u8>),
    Counter64(u64),
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
}

/// A decoded PDU.
#[derive(Debug, Clone, PartialEq)]
pub struct Pdu {
    /// The PDU tag ([`tag::RESPONSE`], [`tag::REPORT`], ...).
    pub kind: u8,
    pub request_id: i32,
    /// error-status; 0 is noError. For GETBULK requests: non-repeaters.
    pub error_status: i64,
    /// error-index (1-based); for GETBULK requests: max-repetitions.
    pub error_index: i64,
    pub varbinds: Vec<(Vec<u32>, SnmpValue)>,
}

/// RFC 3416 error-status names.
pub fn error_status_name(status: i64) -> &'static str {
    match status {
        0 => "noError",
        1 => "tooBig",
        2 => "noSuchName",
        3 => "badValue",
        4 => "readOnly",
        5 => "genErr",
        6 => "noAccess",
        7 => "wrongType",
        8 => "wrongLength",
        9 => "wrongEncoding",
        10 => "wrongValue",
        11 => "noCreation",
        12 => "inconsistentValue",
        13 => "resourceUnavailable",
        14 => "commitFailed",
        15 => "undoFailed",
        16 => "authorizationError",
        17 => "notWritable",
        18 => "inconsistentName",
        _ => "unknown error-status",
    }
}

// ---- encoding ----

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Length of the tag and length octets of an element with `len` content bytes.
pub fn header_len(len: usize) -> usize {
    let mut v = Vec::with_capacity(6);
    push_len(&mut v, len);
    1 + v.len()
}

/// One element: tag, length, content.
pub fn tlv(t: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(t);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// A constructed element of the concatenated `parts`.
pub fn constructed(t: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(t, &parts.concat())
}

/// An INTEGER, minimal two's complement.
pub fn int(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(tag::INTEGER, &bytes[start..])
}

pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(tag::OCTET_STRING, b)
}

pub fn null() -> Vec<u8> {
    tlv(tag::NULL, &[])
}

/// An OBJECT IDENTIFIER; `arcs` has at least two arcs (validated in config).
pub fn oid(arcs: &[u32]) -> Vec<u8> {
    let mut content = Vec::with_capacity(arcs.len() + 4);
    let (first, second) = match arcs {
        [a, b, ..] => (*a, *b),
        [a] => (*a, 0),
        [] => (0, 0),
    };
    push_subid(
        &mut content,
        u64::from(first.min(2)) * 40 + u64::from(second),
    );
    for &arc in arcs.iter().skip(2) {
        push_subid(&mut content, u64::from(arc));
    }
    tlv(tag::OID, &content)
}

fn push_subid(out: &mut Vec<u8>, v: u64) {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    let mut v = v;
    loop {
        tmp[n] = (v & 0x7F) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(tmp[i] | if i > 0 { 0x80 } else { 0 });
    }
}

/// A PDU asking for `oids` (each bound to NULL).
pub fn encode_pdu(kind: u8, request_id: i32, a: i64, b: i64, oids: &[&[u32]]) -> Vec<u8> {
    let varbinds: Vec<Vec<u8>> = oids
        .iter()
        .map(|o| constructed(tag::SEQUENCE, &[&oid(o), &null()]))
        .collect();
    let list = tlv(tag::SEQUENCE, &varbinds.concat());
    constructed(
        kind,
        &[&int(i64::from(request_id)), &int(a), &int(b), &list],
    )
}

/// An SNMPv2c message.
pub fn encode_v2c(community: &[u8], pdu: &[u8]) -> Vec<u8> {
    constructed(tag::SEQUENCE, &[&int(1), &octets(community), pdu])
}

// ---- decoding ----

/// A cursor over BER elements; offsets are absolute (`base` + position).
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], base: usize) -> Self {
        Reader { data, pos: 0, base }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Absolute offset of the next element.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn err(&self, at: usize, field: &str, reason: impl Into<String>) -> DecodeError {
        DecodeError::new(at, field, reason)
    }

    /// Reads any element: (tag, content, absolute offset of the tag).
    pub fn any(&mut self, field: &str) -> Result<(u8, Reader<'a>), DecodeError> {
        let start = self.offset();
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let Some((&t, after)) = rest.split_first() else {
            return Err(self.err(
                start,
                field,
                "truncated: expected an element, found the end",
            ));
        };
        let Some((&first, after)) = after.split_first() else {
            return Err(self.err(start, field, "truncated: the length is missing"));
        };
        let (len, len_bytes) = if first < 0x80 {
            (usize::from(first), 0)
        } else if first == 0x80 {
            return Err(self.err(start + 1, field, "indefinite length is not allowed"));
        } else {
            let n = usize::from(first & 0x7F);
            if n > 4 {
                return Err(self.err(start + 1, field, format!("length of {n} bytes is too long")));
            }
            let Some(bytes) = after.get(..n) else {
                return Err(self.err(start + 1, field, "truncated length"));
            };
            (
                bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
                n,
            )
        };
        let content_start = 2 + len_bytes;
        let available = rest.len().saturating_sub(content_start);
        if len > available {
            return Err(self.err(
                start,
                field,
                format!(
                    "truncated: {} says {len} bytes, {available} left",
                    tag_name(t)
                ),
            ));
        }
        let content = &rest[content_start..content_start + len];
        let reader = Reader::new(content, start + content_start);
        self.pos += content_start + len;
        Ok((t, reader))
    }

    /// Reads an element that must have tag `t`.
    pub fn expect(&mut self, t: u8, field: &str) -> Result<Reader<'a>, DecodeError> {
        let at = self.offset();
        let (found, content) = self.any(field)?;
        if found != t {
            return Err(self.err(
                at,
                field,
                format!("expected {}, found {}", tag_name(t), tag_name(found)),
            ));
        }
        Ok(content)
    }

    pub fn int(&mut self, field: &str) -> Result<i64, DecodeError> {
        let at = self.offset();
        let content = self.expect(tag::INTEGER, field)?;
        decode_int(content.data).ok_or_else(|| {
            self.err(
                at,
                field,
                format!(
                    "INTEGER of {} bytes does not fit 64 bits",
                    content.data.len()
                ),
            )
        })
    }

    pub fn octets(&mut self, field: &str) -> Result<&'a [u8], DecodeError> {
        Ok(self.expect(tag::OCTET_STRING, field)?.data)
    }

    pub fn oid(&mut self, field: &str) -> Result<Vec<u32>, DecodeError> {
        let at = self.offset();
        let content = self.expect(tag::OID, field)?;
        decode_oid(content.data).map_err(|reason| self.err(at, field, reason.to_string()))
    }

    /// The bytes of this reader's whole content.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    /// The tag of the next element, without reading it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest().first().copied()
    }
}

/// Signed big-endian two's complement, 1..=8 bytes.
fn decode_int(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut v: i64 = if negative { -1 } else { 0 };
    for &b in bytes {
        v = (v << 8) | i64::from(b);
    }
    Some(v)
}

/// Unsigned with at most `max_bits` bits (a leading zero byte is allowed).
fn decode_unsigned(bytes: &[u8], max_bits: u32) -> Option<u64> {
    let bytes = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    // A set high bit without a leading zero is a negative INTEGER; agents
    // still send it for counters, so read it as unsigned.
    let v = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    (max_bits == 64 || v >> max_bits == 0).then_some(v)
}

/// Why the content of an OBJECT IDENTIFIER is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum OidDecodeError {
    #[error("empty OBJECT IDENTIFIER")]
    Empty,
    #[error("sub-identifier does not fit 32 bits")]
    SubidTooLarge,
    #[error("truncated sub-identifier")]
    Truncated,
    #[error("{0} sub-identifiers (more than 128)")]
    TooMany(usize),
    #[error("second arc does not fit 32 bits")]
    SecondArcTooLarge,
}

/// The most sub-identifiers an OBJECT IDENTIFIER may have (RFC 2578 3.5).
const MAX_SUBIDS: usize = 128;

fn decode_oid(bytes: &[u8]) -> Result<Vec<u32>, OidDecodeError> {
    if bytes.is_empty() {
        return Err(OidDecodeError::Empty);
    }
    // Straight into the arcs (at most one per byte, plus the first
    // subidentifier's two): a walk decodes an OID per varbind. Errors are
    // reported in the order the checks below make them. The reservation
    // stops at the most arcs an accepted OID has (128 sub-identifiers, the
    // first giving two): sub-identifiers padded with 0x80 bytes make an
    // OID's encoding as long as a peer likes, and walk rows keep these
    // vectors.
    let mut arcs: Vec<u32> = Vec::with_capacity(bytes.len().min(MAX_SUBIDS) + 1);
    let mut subids = 0usize;
    let mut second_too_large = false;
    let mut later_too_large = false;
    let mut v: u64 = 0;
    let mut in_progress = false;
    for &b in bytes {
        v = (v << 7) | u64::from(b & 0x7F);
        if v > u64::from(u32::MAX) + 80 {
            return Err(OidDecodeError::SubidTooLarge);
        }
        in_progress = b & 0x80 != 0;
        if !in_progress {
            if subids == 0 {
                let (a, second) = match v {
                    0..=39 => (0, v),
                    40..=79 => (1, v - 40),
                    _ => (2, v - 80),
                };
                arcs.push(a);
                arcs.push(u32::try_from(second).unwrap_or_else(|_| {
                    second_too_large = true;
                    0
                }));
            } else {
                arcs.push(u32::try_from(v).unwrap_or_else(|_| {
                    later_too_large = true;
                    0
                }));
            }
            subids += 1;
            v = 0;
        }
    }
    if in_progress {
        return Err(OidDecodeError::Truncated);
    }
    if subids > MAX_SUBIDS {
        return Err(OidDecodeError::TooMany(subids));
    }
    if second_too_large {
        return Err(OidDecodeError::SecondArcTooLarge);
    }
    if later_too_large {
        return Err(OidDecodeError::SubidTooLarge);
    }
    Ok(arcs)
}

/// Decodes one varbind value of tag `t`.
fn decode_value(
    t: u8,
    content: &Reader<'_>,
    at: usize,
    field: &str,
) -> Result<SnmpValue, DecodeError> {
    let data = content.data;
    let err = |reason: String| DecodeError::new(at, field, reason);
    let unsigned32 = |name: &str| {
        decode_unsigned(data, 32).map(|v| v as u32).ok_or_else(|| {
            err(format!(
                "{name} of {} bytes does not fit 32 bits",
                data.len()
            ))
        })
    };
    Ok(match t {
        tag::INTEGER => SnmpValue::Int(decode_int(data).ok_or_else(|| {
            err(format!(
                "INTEGER of {} bytes does not fit 64 bits",
                data.len()
            ))
        })?),
        tag::OCTET_STRING => SnmpValue::Octets(data.to_vec()),
        tag::NULL => SnmpValue::Null,
        tag::OID => SnmpValue::Oid(decode_oid(data).map_err(|e| err(e.to_string()))?),
        tag::IP_ADDRESS => SnmpValue::IpAddress(
            <[u8; 4]>::try_from(data)
                .map_err(|_| err(format!("IpAddress of {} bytes (expected 4)", data.len())))?,
        ),
        tag::COUNTER32 => SnmpValue::Counter32(unsigned32("Counter32")?),
        tag::GAUGE32 => SnmpValue::Gauge32(unsigned32("Gauge32")?),
        tag::TIMETICKS => SnmpValue::TimeTicks(unsigned32("TimeTicks")?),
        tag::OPAQUE => SnmpValue::Opaque(data.to_vec()),
        tag::COUNTER64 => SnmpValue::Counter64(decode_unsigned(data, 64).ok_or_else(|| {
            err(format!(
                "Counter64 of {} bytes does not fit 64 bits",
                data.len()
            ))
        })?),
        tag::NO_SUCH_OBJECT => SnmpValue::NoSuchObject,
        tag::NO_SUCH_INSTANCE => SnmpValue::NoSuchInstance,
        tag::END_OF_MIB_VIEW => SnmpValue::EndOfMibView,
        other => return Err(err(format!("unsupported value type 0x{other:02x}"))),
    })
}

/// Decodes a PDU (any of the PDU tags).
pub fn decode_pdu(r: &mut Reader<'_>) -> Result<Pdu, DecodeError> {
    let at = r.offset();
    let (kind, mut body) = r.any("pdu")?;
    if !matches!(kind, 0xA0..=0xA8) {
        return Err(DecodeError::new(
            at,
            "pdu",
            format!("expected a PDU (0xa0..0xa8), found {}", tag_name(kind)),
        ));
    }
    let id_at = body.offset();
    let request_id = body.int("pdu.request-id")?;
    let request_id = i32::try_from(request_id).map_err(|_| {
        DecodeError::new(
            id_at,
            "pdu.request-id",
            format!("request-id {request_id} does not fit 32 bits"),
        )
    })?;
    let error_status = body.int("pdu.error-status")?;
    let error_index = body.int("pdu.error-index")?;
    let varbinds = decode_varbinds(&mut body, "pdu")?;
    Ok(Pdu {
        kind,
        request_id,
        error_status,
        error_index,
        varbinds,
    })
}

/// Decodes a varbind list (`SEQUENCE OF SEQUENCE { name, value }`), the
/// fields named under `pdu` (`pdu.varbind[2].value`).
pub fn decode_varbinds(
    r: &mut Reader<'_>,
    pdu: &str,
) -> Result<Vec<(Vec<u32>, SnmpValue)>, DecodeError> {
    // Field names are written only into an error: a walk decodes
    // thousands of varbinds a second, and formatting three names for each
    // cost more than decoding it.
    let named = |i: Option<usize>, part: &'static str| {
        move |mut e: DecodeError| {
            e.field = match i {
                Some(i) => format!("{pdu}.varbind[{i}]{part}"),
                None => format!("{pdu}.varbinds"),
            };
            e
        }
    };
    let mut list = r.expect(tag::SEQUENCE, "").map_err(named(None, ""))?;
    let mut varbinds = Vec::new();
    let mut i = 0;
    while !list.is_empty() {
        let mut vb = list.expect(tag::SEQUENCE, "").map_err(named(Some(i), ""))?;
        let name = vb.oid("").map_err(named(Some(i), ".name"))?;
        let vat = vb.offset();
        let (t, content) = vb.any("").map_err(named(Some(i), ".value"))?;
        let value = decode_value(t, &content, vat, "").map_err(named(Some(i), ".value"))?;
        varbinds.push((name, value));
        i += 1;
    }
    Ok(varbinds)
}

/// An SNMPv1 Trap-PDU (RFC 1157 §4.1.6).
#[derive(Debug, Clone, PartialEq)]
pub struct TrapV1 {
    pub enterprise: Vec<u32>,
    pub agent_addr: [u8; 4],
    pub generic: i64,
    pub specific: i64,
    pub time_stamp: u32,
    pub varbinds: Vec<(Vec<u32>, SnmpValue)>,
}

/// Decodes the content of a Trap-PDU (its tag already read).
pub fn decode_trap_v1(body: &mut Reader<'_>) -> Result<TrapV1, DecodeError> {
    let enterprise = body.oid("trap.enterprise")?;
    let at = body.offset();
    let addr = body.expect(tag::IP_ADDRESS, "trap.agent-addr")?;
    let agent_addr: [u8; 4] = addr.bytes().try_into().map_err(|_| {
        DecodeError::new(
            at,
            "trap.agent-addr",
            format!("an IpAddress of {} bytes (expected 4)", addr.bytes().len()),
        )
    })?;
    let generic = body.int("trap.generic-trap")?;
    let specific = body.int("trap.specific-trap")?;
    let at = body.offset();
    let ticks = body.expect(tag::TIMETICKS, "trap.time-stamp")?;
    let time_stamp = decode_unsigned(ticks.bytes(), 32)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| DecodeError::new(at, "trap.time-stamp", "TimeTicks does not fit 32 bits"))?;
    let varbinds = decode_varbinds(body, "trap")?;
    Ok(TrapV1 {
        enterprise,
        agent_addr,
        generic,
        specific,
        time_stamp,
        varbinds,
    })
}

/// Decodes an SNMPv1/v2c message: (version, community, PDU).
pub fn decode_v2c(bytes: &[u8]) -> Result<(i64, Vec<u8>, Pdu), DecodeError> {
    let mut top = Reader::new(bytes, 0);
    let mut msg = top.expect(tag::SEQUENCE, "message")?;
    let version = msg.int("message.version")?;
    let community = msg.octets("message.community")?.to_vec();
    let pdu = decode_pdu(&mut msg)?;
    Ok((version, community, pdu))
}

/// Peeks at the version field of a message (to tell v2c from v3).
pub fn message_version(bytes: &[u8]) -> Result<i64, DecodeError> {
    let mut top = Reader::new(bytes, 0);
    let mut msg = top.expect(tag::SEQUENCE, "message")?;
    msg.int("message.version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_minimally() {
        for v in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            -1,
            -128,
            -129,
            i64::MAX,
            i64::MIN,
            65535,
        ] {
            let enc = int(v);
            let mut r = Reader::new(&enc, 0);
            assert_eq!(r.int("x"), Ok(v), "{v}: {enc:02x?}");
        }
        assert_eq!(int(127), vec![2, 1, 0x7F]);
        assert_eq!(int(128), vec![2, 2, 0, 0x80]);
        assert_eq!(int(-1), vec![2, 1, 0xFF]);
    }

    #[test]
    fn oids_round_trip() {
        for arcs in [
            vec![1, 3, 6, 1, 2, 1, 1, 3, 0],
            vec![2, 999, 4294967295],
            vec![0, 39],
            vec![1, 3, 6, 1, 4, 1, 8072, 128, 16384],
        ] {
            let enc = oid(&arcs);
            let mut r = Reader::new(&enc, 0);
            assert_eq!(r.oid("x"), Ok(arcs.clone()), "{enc:02x?}");
        }
        assert_eq!(oid(&[1, 3, 6, 1]), vec![6, 3, 0x2B, 6, 1]);
    }

    #[test]
    fn bad_oids_say_why() {
        use OidDecodeError as E;
        assert_eq!(decode_oid(&[]), Err(E::Empty));
        assert_eq!(decode_oid(&[0x2B, 0x86]), Err(E::Truncated));
        // A later sub-identifier of 2^32: too large, found after the loop.
        assert_eq!(
            decode_oid(&[0x2B, 0x90, 0x80, 0x80, 0x80, 0x00]),
            Err(E::SubidTooLarge)
        );
        // Far too large: refused while reading.
        assert_eq!(
            decode_oid(&[0x2B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(E::SubidTooLarge)
        );
        let mut many = vec![0x2B];
        many.extend([1u8; 128]);
        assert_eq!(decode_oid(&many), Err(E::TooMany(129)));
        many.pop();
        assert_eq!(decode_oid(&many).map(|a| a.len()), Ok(129));
        // The first sub-identifier holds the first two arcs.
        assert_eq!(decode_oid(&[0x27]), Ok(vec![0, 39]));
        assert_eq!(decode_oid(&[0x4F, 0x05]), Ok(vec![1, 39, 5]));
        assert_eq!(decode_oid(&[0x88, 0x37]), Ok(vec![2, 999]));
    }

    #[test]
    fn varbind_errors_name_the_varbind() {
        let pdu = encode_pdu(tag::RESPONSE, 7, 0, 0, &[&[1, 3, 6, 1], &[1, 3, 6, 2]]);
        let msg = encode_v2c(b"public", &pdu);
        // The second varbind's value (its NULL, the last two bytes).
        let mut bad = msg.clone();
        let at = bad.len() - 2;
        bad[at] = 0x47;
        let e = decode_v2c(&bad).expect_err("unsupported type");
        assert_eq!(e.field, "pdu.varbind[1].value", "{e}");
        assert_eq!(e.offset, at);
        // The second varbind's name (OID tag 0x06, before 1.3.6.2).
        let mut bad = msg.clone();
        let at = bad.len() - 7;
        assert_eq!(bad[at], tag::OID);
        bad[at] = tag::INTEGER;
        let e = decode_v2c(&bad).expect_err("name not an OID");
        assert_eq!(e.field, "pdu.varbind[1].name", "{e}");
        // The list itself.
        let e = decode_v2c(&encode_v2c(
            b"public",
            &constructed(tag::RESPONSE, &[&int(7), &int(0), &int(0), &int(5)]),
        ))
        .expect_err("no list");
        assert_eq!(e.field, "pdu.varbinds", "{e}");
    }

    #[test]
    fn long_lengths() {
        let content = vec![7u8; 300];
        let enc = octets(&content);
        assert_eq!(&enc[..4], &[4, 0x82, 1, 44]);
        let mut r = Reader::new(&enc, 0);
        assert_eq!(r.octets("x"), Ok(&content[..]));
    }

    #[test]
    fn v2c_response_decodes() {
        // A Response with several value types, built by hand.
        let vbs = [
            constructed(
                tag::SEQUENCE,
                &[
                    &oid(&[1, 3, 6, 1, 2, 1, 1, 3, 0]),
                    &tlv(tag::TIMETICKS, &[0x00, 0xFF, 0xFF, 0xFF, 0xFF]),
                ],
            ),
            constructed(
                tag::SEQUENCE,
                &[&oid(&[1, 3, 6, 1, 2, 1, 1, 1, 0]), &octets(b"Linux")],
            ),
            constructed(
                tag::SEQUENCE,
                &[
                    &oid(&[1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6, 1]),
                    &tlv(
                        tag::COUNTER64,
                        &[0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                    ),
                ],
            ),
            constructed(
                tag::SEQUENCE,
                &[&oid(&[1, 3, 6, 1, 9]), &tlv(tag::NO_SUCH_OBJECT, &[])],
            ),
            constructed(
                tag::SEQUENCE,
                &[
                    &oid(&[1, 3, 6, 1, 4]),
                    &tlv(tag::IP_ADDRESS, &[127, 0, 0, 1]),
                ],
            ),
        ];
        let list = tlv(tag::SEQUENCE, &vbs.concat());
        let pdu = constructed(tag::RESPONSE, &[&int(42), &int(0), &int(0), &list]);
        let msg = encode_v2c(b"public", &pdu);
        let (version, community, pdu) = decode_v2c(&msg).expect("decodes");
        assert_eq!((version, community.as_slice()), (1, &b"public"[..]));
        assert_eq!(pdu.request_id, 42);
        assert_eq!(pdu.varbinds[0].1, SnmpValue::TimeTicks(u32::MAX));
        assert_eq!(pdu.varbinds[1].1, SnmpValue::Octets(b"Linux".to_vec()));
        assert_eq!(pdu.varbinds[2].1, SnmpValue::Counter64(u64::MAX));
        assert_eq!(pdu.varbinds[3].1, SnmpValue::NoSuchObject);
        assert_eq!(pdu.varbinds[4].1, SnmpValue::IpAddress([127, 0, 0, 1]));
    }

    #[test]
    fn errors_name_byte_and_field() {
        let pdu = encode_pdu(tag::RESPONSE, 7, 0, 0, &[&[1, 3, 6, 1]]);
        let msg = encode_v2c(b"public", &pdu);
        // Truncate inside the varbind.
        let e = decode_v2c(&msg[..msg.len() - 3]).expect_err("truncated");
        assert_eq!(e.offset, 0);
        assert!(
            e.reason.starts_with("truncated: SEQUENCE (0x30) says"),
            "{e}"
        );
        // Community is not an OCTET STRING.
        let mut bad = msg.clone();
        bad[5] = 0x02;
        let e = decode_v2c(&bad).expect_err("wrong tag");
        assert_eq!(
            e.to_string(),
            "at byte 5 (message.community): expected OCTET STRING (0x04), found INTEGER (0x02)"
        );
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let pdu = encode_pdu(
            tag::RESPONSE,
            7,
            0,
            0,
            &[&[1, 3, 6, 1, 2, 1, 1, 3, 0], &[1, 3, 6, 1]],
        );
        let valid = encode_v2c(b"public", &pdu);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..=valid.len() {
            let _ = decode_v2c(&valid[..i]);
        }
        for _ in 0..50_000 {
            let mut m = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..m.len());
                m[at] = rng.random();
            }
            let _ = decode_v2c(&m);
            let len = rng.random_range(0..40);
            let soup: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decode_v2c(&soup);
        }
    }

    #[test]
    fn a_padded_oid_reserves_no_more_than_the_longest_accepted_one() {
        // 1.3.6.1 with 60,000 padding bytes before its last sub-identifier.
        let mut bytes = vec![0x2b, 6];
        bytes.extend(std::iter::repeat_n(0x80, 60_000));
        bytes.push(1);
        let arcs = decode_oid(&bytes).expect("padding is still read");
        assert_eq!(arcs, vec![1, 3, 6, 1]);
        assert!(arcs.capacity() <= MAX_SUBIDS + 1, "{}", arcs.capacity());
    }
}
