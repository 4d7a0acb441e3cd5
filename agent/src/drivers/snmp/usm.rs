//! SNMPv3 messages and the user-based security model (RFC 3412, 3414, 3826,
//! 7860): key localization, HMAC authentication and AES-128-CFB privacy.
//!
//! Hashing and HMAC come from `ring` (already linked for TLS); AES from the
//! `aes` crate, with CFB-128 written out here (it is ten lines).

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use super::ber::{self, DecodeError, Pdu, Reader, tag};
use super::{SnmpAuthProtocol, SnmpPrivProtocol};

/// msgFlags bits.
pub const FLAG_AUTH: u8 = 0x01;
pub const FLAG_PRIV: u8 = 0x02;
pub const FLAG_REPORTABLE: u8 = 0x04;

/// USM security model number.
const USM: i64 = 3;

/// Largest message we accept (msgMaxSize).
pub const MAX_MESSAGE: i64 = 65_507;

/// The report OIDs of RFC 3414 (usmStats*) and what each means.
pub fn report_reason(oid: &[u32]) -> Option<&'static str> {
    const PREFIX: [u32; 9] = [1, 3, 6, 1, 6, 3, 15, 1, 1];
    let rest = oid.strip_prefix(&PREFIX[..])?;
    Some(match rest {
        [1, 0] => "unsupported security level (the user is not allowed this auth/priv combination)",
        [2, 0] => "not in time window",
        [3, 0] => "unknown user name",
        [4, 0] => "unknown engine id",
        [5, 0] => "authentication failure: wrong digest (check auth_password and auth_protocol)",
        [6, 0] => "decryption error (check priv_password and priv_protocol)",
        _ => return None,
    })
}

/// usmStatsNotInTimeWindows.0
pub fn is_not_in_time_window(oid: &[u32]) -> bool {
    oid == [1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0]
}

/// usmStatsUnknownEngineIDs.0
pub fn is_unknown_engine_id(oid: &[u32]) -> bool {
    oid == [1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0]
}

/// USM security parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsmParams {
    pub engine_id: Vec<u8>,
    pub boots: u32,
    pub time: u32,
    pub user: Vec<u8>,
    pub auth_params: Vec<u8>,
    pub priv_params: Vec<u8>,
}

/// A decoded SNMPv3 message.
#[derive(Debug, Clone, PartialEq)]
pub struct V3Message {
    pub msg_id: i32,
    pub flags: u8,
    pub usm: UsmParams,
    /// Byte offset of the msgAuthenticationParameters content.
    pub auth_offset: usize,
    pub data: ScopedData,
}

/// The scoped PDU, plain (with its context) or still encrypted.
#[derive(Debug, Clone, PartialEq)]
pub enum ScopedData {
    Plain(Pdu, Context),
    Encrypted(Vec<u8>),
}

/// A scoped PDU's context (RFC 3412 §6.8): whose MIB instances, and which
/// of them, the PDU is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub engine_id: Vec<u8>,
    pub name: Vec<u8>,
}

/// Localized keys of one user at one engine.
#[derive(Clone)]
pub struct Keys {
    pub auth: SnmpAuthProtocol,
    auth_key: Vec<u8>,
    priv_key: Option<[u8; 16]>,
}

fn digest_alg(p: SnmpAuthProtocol) -> &'static digest::Algorithm {
    match p {
        SnmpAuthProtocol::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        SnmpAuthProtocol::Sha256 => &digest::SHA256,
        SnmpAuthProtocol::Sha512 => &digest::SHA512,
    }
}

fn hmac_alg(p: SnmpAuthProtocol) -> hmac::Algorithm {
    match p {
        SnmpAuthProtocol::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        SnmpAuthProtocol::Sha256 => hmac::HMAC_SHA256,
        SnmpAuthProtocol::Sha512 => hmac::HMAC_SHA512,
    }
}

/// Length of the truncated MAC in msgAuthenticationParameters.
pub fn mac_len(p: SnmpAuthProtocol) -> usize {
    match p {
        SnmpAuthProtocol::Sha1 => 12,
        SnmpAuthProtocol::Sha256 => 24,
        SnmpAuthProtocol::Sha512 => 48,
    }
}

/// RFC 3414 A.2: hash of 1 MiB of the repeated password, localized to
/// `engine_id`.
pub fn localize(p: SnmpAuthProtocol, password: &[u8], engine_id: &[u8]) -> Vec<u8> {
    let alg = digest_alg(p);
    let mut ctx = digest::Context::new(alg);
    if !password.is_empty() {
        let mut block = [0u8; 64];
        let mut index = 0usize;
        for _ in 0..(1_048_576 / 64) {
            for b in block.iter_mut() {
                *b = password[index % password.len()];
                index += 1;
            }
            ctx.update(&block);
        }
    }
    let ku = ctx.finish();
    let mut ctx = digest::Context::new(alg);
    ctx.update(ku.as_ref());
    ctx.update(engine_id);
    ctx.update(ku.as_ref());
    ctx.finish().as_ref().to_vec()
}

impl Keys {
    /// Localizes the passwords to `engine_id` (about a million hash rounds:
    /// done once per engine).
    pub fn new(
        auth: (SnmpAuthProtocol, &str),
        privacy: Option<(SnmpPrivProtocol, &str)>,
        engine_id: &[u8],
    ) -> Keys {
        let auth_key = localize(auth.0, auth.1.as_bytes(), engine_id);
        let priv_key = privacy.map(|(SnmpPrivProtocol::Aes128, pw)| {
            let k = localize(auth.0, pw.as_bytes(), engine_id);
            let mut key = [0u8; 16];
            key.copy_from_slice(&k[..16]);
            key
        });
        Keys {
            auth: auth.0,
            auth_key,
            priv_key,
        }
    }

    pub fn has_priv(&self) -> bool {
        self.priv_key.is_some()
    }

    /// The same keys without privacy: for a message that must be
    /// authenticated and not encrypted (RFC 3414's notInTimeWindow report).
    pub fn auth_only(&self) -> Keys {
        Keys {
            auth: self.auth,
            auth_key: self.auth_key.clone(),
            priv_key: None,
        }
    }

    /// The truncated MAC of `message`, whose auth params are zeroed.
    fn mac(&self, message: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(hmac_alg(self.auth), &self.auth_key);
        let tag = hmac::sign(&key, message);
        tag.as_ref()[..mac_len(self.auth)].to_vec()
    }

    /// Checks the MAC of a received message.
    pub fn verify(&self, message: &[u8], auth_offset: usize, received: &[u8]) -> bool {
        let n = mac_len(self.auth);
        if received.len() != n || auth_offset + n > message.len() {
            return false;
        }
        let mut zeroed = message.to_vec();
        zeroed[auth_offset..auth_offset + n].fill(0);
        let expected = self.mac(&zeroed);
        // Constant time: how many leading bytes match must not show in the
        // time taken.
        bool::from(expected.as_slice().ct_eq(received))
    }

    fn aes_cfb(&self, iv: [u8; 16], data: &mut [u8], encrypt: bool) {
        let Some(key) = &self.priv_key else {
            return;
        };
        let cipher = aes::Aes128::new(&Array::from(*key));
        let mut feedback = iv;
        for chunk in data.chunks_mut(16) {
            let mut block = Array::from(feedback);
            cipher.encrypt_block(&mut block);
            let mut next = [0u8; 16];
            for (i, byte) in chunk.iter_mut().enumerate() {
                let cipher_byte = if encrypt {
                    *byte ^= block[i];
                    *byte
                } else {
                    let c = *byte;
                    *byte ^= block[i];
                    c
                };
                next[i] = cipher_byte;
            }
            feedback = next;
        }
    }
}

/// RFC 3826 IV: boots, time, salt.
fn aes_iv(boots: u32, time: u32, salt: &[u8]) -> Option<[u8; 16]> {
    let salt: [u8; 8] = salt.try_into().ok()?;
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&boots.to_be_bytes());
    iv[4..8].copy_from_slice(&time.to_be_bytes());
    iv[8..].copy_from_slice(&salt);
    Some(iv)
}

/// What goes into an outgoing message.
pub struct Outgoing<'a> {
    pub msg_id: i32,
    pub engine_id: &'a [u8],
    pub boots: u32,
    pub time: u32,
    pub user: &'a [u8],
    pub context: &'a [u8],
    /// The scoped PDU's contextEngineID when it is not `engine_id` (a
    /// Response echoes its request's).
    pub context_engine: Option<&'a [u8]>,
    /// `None`: noAuthNoPriv (engine discovery).
    pub keys: Option<&'a Keys>,
    /// 8 bytes, unique per message, when encrypting.
    pub salt: [u8; 8],
    /// The encoded PDU.
    pub pdu: &'a [u8],
}

/// Builds an SNMPv3 message, authenticated and encrypted as `keys` allow;
/// reportable unless its PDU is of the response or unconfirmed class (a
/// Response, Report or Trap: RFC 3412 §6.4), which nothing answers.
pub fn encode(out: &Outgoing<'_>) -> Vec<u8> {
    let unanswered = matches!(
        out.pdu.first(),
        Some(&(tag::RESPONSE | tag::REPORT | tag::TRAP_V2))
    );
    let mut flags = if unanswered { 0 } else { FLAG_REPORTABLE };
    let mut priv_params = Vec::new();
    let scoped = ber::constructed(
        tag::SEQUENCE,
        &[
            &ber::octets(out.context_engine.unwrap_or(out.engine_id)),
            &ber::octets(out.context),
            out.pdu,
        ],
    );
    let data = match out.keys {
        Some(keys) if keys.has_priv() => {
            flags |= FLAG_AUTH | FLAG_PRIV;
            priv_params = out.salt.to_vec();
            let mut enc = scoped;
            if let Some(iv) = aes_iv(out.boots, out.time, &out.salt) {
                keys.aes_cfb(iv, &mut enc, true);
            }
            ber::octets(&enc)
        }
        Some(_) => {
            flags |= FLAG_AUTH;
            scoped
        }
        None => scoped,
    };
    let mac_len = out.keys.map(|k| mac_len(k.auth)).unwrap_or(0);
    let version = ber::int(3);
    let global = ber::constructed(
        tag::SEQUENCE,
        &[
            &ber::int(i64::from(out.msg_id)),
            &ber::int(MAX_MESSAGE),
            &ber::octets(&[flags]),
            &ber::int(USM),
        ],
    );
    // The USM parameters with a zeroed MAC; its offset inside them is the
    // length of everything before it.
    let before_auth = [
        ber::octets(out.engine_id),
        ber::int(i64::from(out.boots)),
        ber::int(i64::from(out.time)),
        ber::octets(out.user),
    ]
    .concat();
    let auth_tlv = ber::octets(&vec![0u8; mac_len]);
    let usm_content = [
        before_auth.as_slice(),
        &auth_tlv,
        &ber::octets(&priv_params),
    ]
    .concat();
    let usm_seq = ber::tlv(tag::SEQUENCE, &usm_content);
    let security = ber::octets(&usm_seq);
    let body_len = version.len() + global.len() + security.len() + data.len();
    let mut msg = ber::tlv(
        tag::SEQUENCE,
        &[version.as_slice(), &global, &security, &data].concat(),
    );
    if let Some(keys) = out.keys {
        let auth_offset = ber::header_len(body_len)
            + version.len()
            + global.len()
            + ber::header_len(usm_seq.len())
            + ber::header_len(usm_content.len())
            + before_auth.len()
            + ber::header_len(mac_len);
        let mac = keys.mac(&msg);
        if let Some(slot) = msg.get_mut(auth_offset..auth_offset + mac.len()) {
            slot.copy_from_slice(&mac);
        }
    }
    msg
}

/// Decodes an SNMPv3 message (without checking its MAC or decrypting it).
pub fn decode(bytes: &[u8]) -> Result<V3Message, DecodeError> {
    let mut top = Reader::new(bytes, 0);
    let mut msg = top.expect(tag::SEQUENCE, "message")?;
    let at = msg.offset();
    let version = msg.int("message.version")?;
    if version != 3 {
        return Err(DecodeError::new(
            at,
            "message.version",
            format!("expected 3 (SNMPv3), found {version}"),
        ));
    }
    let mut global = msg.expect(tag::SEQUENCE, "message.header")?;
    let id_at = global.offset();
    let msg_id = global.int("message.header.msgID")?;
    let msg_id = i32::try_from(msg_id).map_err(|_| {
        DecodeError::new(
            id_at,
            "message.header.msgID",
            format!("msgID {msg_id} out of range"),
        )
    })?;
    global.int("message.header.msgMaxSize")?;
    let flags_at = global.offset();
    let flags = match global.octets("message.header.msgFlags")? {
        [f] => *f,
        other => {
            return Err(DecodeError::new(
                flags_at,
                "message.header.msgFlags",
                format!("expected 1 byte, found {}", other.len()),
            ));
        }
    };
    let model_at = global.offset();
    let model = global.int("message.header.msgSecurityModel")?;
    if model != USM {
        return Err(DecodeError::new(
            model_at,
            "message.header.msgSecurityModel",
            format!("expected 3 (USM), found {model}"),
        ));
    }
    let sec = msg.expect(tag::OCTET_STRING, "message.securityParameters")?;
    let mut sec = Reader::new(sec.bytes(), sec.offset());
    let mut usm = sec.expect(tag::SEQUENCE, "usm")?;
    let engine_id = usm.octets("usm.engineID")?.to_vec();
    let u32_field = |r: &mut Reader<'_>, field: &str| -> Result<u32, DecodeError> {
        let at = r.offset();
        let v = r.int(field)?;
        u32::try_from(v).map_err(|_| DecodeError::new(at, field, format!("{v} out of range")))
    };
    let boots = u32_field(&mut usm, "usm.engineBoots")?;
    let time = u32_field(&mut usm, "usm.engineTime")?;
    let user = usm.octets("usm.userName")?.to_vec();
    let auth = usm.expect(tag::OCTET_STRING, "usm.authParameters")?;
    let auth_offset = auth.offset();
    let auth_params = auth.bytes().to_vec();
    let priv_params = usm.octets("usm.privParameters")?.to_vec();
    let data = if flags & FLAG_PRIV != 0 {
        ScopedData::Encrypted(msg.octets("message.encryptedPDU")?.to_vec())
    } else {
        let (pdu, context) = decode_scoped(&mut msg)?;
        ScopedData::Plain(pdu, context)
    };
    Ok(V3Message {
        msg_id,
        flags,
        usm: UsmParams {
            engine_id,
            boots,
            time,
            user,
            auth_params,
            priv_params,
        },
        auth_offset,
        data,
    })
}

fn decode_scoped(r: &mut Reader<'_>) -> Result<(Pdu, Context), DecodeError> {
    let mut scoped = r.expect(tag::SEQUENCE, "scopedPDU")?;
    let engine_id = scoped.octets("scopedPDU.contextEngineID")?.to_vec();
    let name = scoped.octets("scopedPDU.contextName")?.to_vec();
    Ok((ber::decode_pdu(&mut scoped)?, Context { engine_id, name }))
}

/// Why an encrypted scoped PDU could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("privParameters of {0} bytes (expected an 8-byte salt)")]
    BadSalt(usize),
    /// The cause is in the message, so it has no `source()`.
    #[error("decrypted scoped PDU is malformed (wrong priv_password?): {0}")]
    Malformed(DecodeError),
}

/// Decrypts an encrypted scoped PDU of a message from the engine at
/// `boots`/`time` with salt `priv_params`. Offsets in errors count from the
/// start of the decrypted plaintext.
pub fn decrypt(
    keys: &Keys,
    usm: &UsmParams,
    encrypted: &[u8],
) -> Result<(Pdu, Context), DecryptError> {
    let plain = decrypt_bytes(keys, usm, encrypted)?;
    let mut r = Reader::new(&plain, 0);
    decode_scoped(&mut r).map_err(DecryptError::Malformed)
}

/// The plaintext of an encrypted scoped PDU (not checked to be one).
pub fn decrypt_bytes(
    keys: &Keys,
    usm: &UsmParams,
    encrypted: &[u8],
) -> Result<Vec<u8>, DecryptError> {
    let iv = aes_iv(usm.boots, usm.time, &usm.priv_params)
        .ok_or(DecryptError::BadSalt(usm.priv_params.len()))?;
    let mut plain = encrypted.to_vec();
    keys.aes_cfb(iv, &mut plain, false);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn rfc3414_key_localization_sha1() {
        // RFC 3414 A.3.2: password "maplesyrup", engine 000000000000000000000002.
        let engine = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let key = localize(SnmpAuthProtocol::Sha1, b"maplesyrup", &engine);
        assert_eq!(hex(&key), "6695febc9288e36282235fc7151f128497b38f3f");
    }

    #[test]
    fn messages_round_trip_with_auth_and_priv() {
        let engine = b"\x80\x00\x1f\x88\x80engine".to_vec();
        let keys = Keys::new(
            (SnmpAuthProtocol::Sha256, "authpass1"),
            Some((SnmpPrivProtocol::Aes128, "privpass1")),
            &engine,
        );
        let pdu = ber::encode_pdu(tag::GET, 99, 0, 0, &[&[1, 3, 6, 1, 2, 1, 1, 3, 0]]);
        let msg = encode(&Outgoing {
            msg_id: 5,
            engine_id: &engine,
            boots: 3,
            time: 1234,
            user: b"tuser",
            context: b"",
            context_engine: None,
            keys: Some(&keys),
            salt: [1, 2, 3, 4, 5, 6, 7, 8],
            pdu: &pdu,
        });
        let m = decode(&msg).expect("decodes");
        assert_eq!(m.msg_id, 5);
        assert_eq!(m.flags, FLAG_AUTH | FLAG_PRIV | FLAG_REPORTABLE);
        assert_eq!(m.usm.user, b"tuser");
        assert!(keys.verify(&msg, m.auth_offset, &m.usm.auth_params));
        let mut tampered = msg.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!keys.verify(&tampered, m.auth_offset, &m.usm.auth_params));
        let ScopedData::Encrypted(enc) = &m.data else {
            panic!("expected encrypted data")
        };
        let (pdu, _) = decrypt(&keys, &m.usm, enc).expect("decrypts");
        assert_eq!(pdu.request_id, 99);
        assert_eq!(pdu.varbinds[0].0, vec![1, 3, 6, 1, 2, 1, 1, 3, 0]);
        // The wrong key gives a clear error, not a panic.
        let other = Keys::new(
            (SnmpAuthProtocol::Sha256, "authpass1"),
            Some((SnmpPrivProtocol::Aes128, "wrongpass")),
            &engine,
        );
        let e = decrypt(&other, &m.usm, enc).expect_err("wrong key");
        assert!(e.to_string().contains("wrong priv_password"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let pdu = ber::encode_pdu(tag::GET, 1, 0, 0, &[&[1, 3, 6, 1]]);
        let valid = encode(&Outgoing {
            msg_id: 1,
            engine_id: b"",
            boots: 0,
            time: 0,
            user: b"",
            context: b"",
            context_engine: None,
            keys: None,
            salt: [0; 8],
            pdu: &pdu,
        });
        assert!(decode(&valid).is_ok());
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for i in 0..valid.len() {
            let _ = decode(&valid[..i]);
        }
        for _ in 0..20_000 {
            let mut m = valid.clone();
            let at = rng.random_range(0..m.len());
            m[at] = rng.random();
            let _ = decode(&m);
        }
    }
}
