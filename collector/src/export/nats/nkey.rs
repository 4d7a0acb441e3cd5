//! NATS nkeys (<https://docs.nats.io/running-a-nats-service/configuration/securing_nats/auth_intro/nkey_auth>)
//! and `.creds` files, for the nats export's `nkey_seed`/`nkey_seed_file`
//! and `credentials_file` (README "Exports").
//!
//! An nkey is an Ed25519 key in text: a prefix byte naming what the key
//! belongs to (`U` user, `A` account, `O` operator), the 32 key bytes and
//! a CRC-16 (XMODEM, little-endian) of both, in RFC 4648 base32 without
//! padding. A seed (the private half) has two prefix bytes, `S` and the
//! kind, so a user's seed reads `SU...`. The server sends a `nonce` in
//! its `INFO`; the client answers in `CONNECT` with its public key
//! (`nkey`) or its user JWT (`jwt`, from a `.creds` file) and the nonce
//! signed with the seed (`sig`, base64url without padding).
//!
//! Signing is ring's Ed25519 (ring is already in the tree through
//! rustls), the text codecs are the few lines below: no nkeys crate.
//! [`KeyPair`]'s `Debug` shows the public key only; the seed never reaches
//! a log line.

use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// The first byte of every seed: base32 `S`.
const PREFIX_SEED: u8 = 18 << 3;

/// What a key belongs to (its prefix byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `O`
    Operator,
    /// `A`
    Account,
    /// `U`
    User,
}

impl KeyKind {
    fn byte(self) -> u8 {
        match self {
            KeyKind::Operator => 14 << 3,
            KeyKind::Account => 0,
            KeyKind::User => 20 << 3,
        }
    }

    fn of(byte: u8) -> Option<KeyKind> {
        [KeyKind::Operator, KeyKind::Account, KeyKind::User]
            .into_iter()
            .find(|k| k.byte() == byte)
    }

    fn letter(self) -> char {
        match self {
            KeyKind::Operator => 'O',
            KeyKind::Account => 'A',
            KeyKind::User => 'U',
        }
    }
}

/// An Ed25519 key pair from an nkey seed. Holds the seed and its public
/// key; the key pair is derived when signing (once per connection). A
/// seed ring makes no pair of is refused when read ([`KeyPair::from_seed`]).
#[derive(Clone, PartialEq)]
pub struct KeyPair {
    kind: KeyKind,
    seed: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    // The seed is a secret: only the public key is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({}, <secret seed>)", self.public_key())
    }
}

impl KeyPair {
    /// The key pair of `seed`, or why ring makes none of it.
    fn from_raw(kind: KeyKind, seed: [u8; 32]) -> Result<KeyPair, String> {
        let mut pair = KeyPair {
            kind,
            seed,
            public: [0; 32],
        };
        let public = pair.pair()?.public_key().as_ref().try_into().map_err(|_| {
            format!("the {kind:?} nkey seed gives an Ed25519 public key that is not 32 bytes")
        })?;
        pair.public = public;
        Ok(pair)
    }

    /// The Ed25519 pair of the seed, or why ring would not make one (it
    /// takes any 32 bytes today; should a version refuse some, the error
    /// names the key's kind, never the seed).
    fn pair(&self) -> Result<Ed25519KeyPair, String> {
        Ed25519KeyPair::from_seed_unchecked(&self.seed).map_err(|e| {
            format!(
                "the {:?} nkey seed is not a usable Ed25519 seed: {e}",
                self.kind
            )
        })
    }

    /// A new random key pair of `kind` (tests make their operator,
    /// account and user keys with it).
    pub fn generate(kind: KeyKind) -> Result<KeyPair, String> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| "no random bytes from the system".to_owned())?;
        KeyPair::from_raw(kind, seed)
    }

    /// Reads a seed (`S` + kind + key + CRC in base32). The error says
    /// what is wrong without showing the text.
    pub fn from_seed(text: &str) -> Result<KeyPair, String> {
        let raw = base32_decode(text.trim())
            .ok_or("not an nkey seed: not base32 (expected SU... from `nk -gen user`)")?;
        if raw.len() != 36 {
            return Err(format!(
                "not an nkey seed: {} bytes where a seed has 36",
                raw.len()
            ));
        }
        let (body, crc) = raw.split_at(34);
        if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
            return Err("not an nkey seed: its checksum does not match (mistyped or cut?)".into());
        }
        if body[0] & 0b1111_1000 != PREFIX_SEED {
            return Err("not an nkey seed: it does not start with S".into());
        }
        let kind_byte = ((body[0] & 0b111) << 5) | (body[1] >> 3);
        let kind = KeyKind::of(kind_byte).ok_or("an nkey seed of an unknown kind")?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&body[2..34]);
        KeyPair::from_raw(kind, seed)
    }

    /// The seed of a user, or why not (it must be `SU...`).
    pub fn user_seed(text: &str) -> Result<KeyPair, String> {
        let pair = KeyPair::from_seed(text)?;
        if pair.kind != KeyKind::User {
            return Err(format!(
                "the nkey seed is an {:?} key's (S{}...); a client connects with a user's (SU...)",
                pair.kind,
                pair.kind.letter()
            ));
        }
        Ok(pair)
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The seed as text (`S` + kind letter ...).
    pub fn seed_text(&self) -> String {
        let kind = self.kind.byte();
        let mut raw = Vec::with_capacity(36);
        raw.push(PREFIX_SEED | (kind >> 5));
        raw.push((kind & 0b1_1111) << 3);
        raw.extend_from_slice(&self.seed);
        raw.extend_from_slice(&crc16(&raw).to_le_bytes());
        base32_encode(&raw)
    }

    /// The public key as text (`U...`, `A...`, `O...`).
    pub fn public_key(&self) -> String {
        let mut raw = Vec::with_capacity(35);
        raw.push(self.kind.byte());
        raw.extend_from_slice(&self.public);
        raw.extend_from_slice(&crc16(&raw).to_le_bytes());
        base32_encode(&raw)
    }

    /// The Ed25519 signature of `message`; an error when the seed gives no
    /// Ed25519 pair.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        Ok(self.pair()?.sign(message).as_ref().to_vec())
    }
}

/// A `.creds` file: the user's JWT and its nkey seed, each on the line
/// after a `-----BEGIN ...-----` line (the layout `nsc` writes).
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub jwt: String,
    pub key: KeyPair,
}

impl std::fmt::Debug for Credentials {
    // The JWT is a bearer of rights, the seed a secret: neither shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials(<jwt>, {:?})", self.key)
    }
}

impl Credentials {
    /// Reads the text of a `.creds` file; the error says what is missing
    /// without showing any of it.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let mut blocks = Vec::new();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line.starts_with("---")
                && line.ends_with("---")
                && line.contains("BEGIN")
                && let Some(item) = lines.by_ref().find(|l| !l.is_empty())
            {
                blocks.push(item);
            }
        }
        let [jwt, seed, ..] = blocks.as_slice() else {
            return Err(
                "not a .creds file: expected a -----BEGIN NATS USER JWT----- block and a \
                 -----BEGIN USER NKEY SEED----- block"
                    .to_owned(),
            );
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3
            || parts.iter().any(|p| {
                p.is_empty()
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
            })
        {
            return Err(
                "not a .creds file: its first block is not a JWT (three base64url parts)"
                    .to_owned(),
            );
        }
        let key = KeyPair::user_seed(seed).map_err(|e| format!("the seed block: {e}"))?;
        Ok(Credentials {
            jwt: (*jwt).to_owned(),
            key,
        })
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// RFC 4648 base32 (padding allowed, not needed); `None` on any other
/// character.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = BASE32.iter().position(|&a| a == c)? as u32;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// base64url without padding (JWT parts, nonce signatures).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys use it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_match_their_rfcs() {
        // RFC 4648 section 10.
        for (plain, b32) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), b32);
            assert_eq!(base32_decode(b32).unwrap(), plain.as_bytes());
        }
        assert_eq!(base32_decode("MZ1"), None);
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), b64);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        // CRC-16/XMODEM's check value.
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn seeds_round_trip_and_name_their_kind() {
        let user = KeyPair::generate(KeyKind::User).unwrap();
        let text = user.seed_text();
        assert!(text.starts_with("SU") && text.len() == 58, "{text}");
        let back = KeyPair::user_seed(&text).unwrap();
        assert_eq!(back.public_key(), user.public_key());
        assert!(user.public_key().starts_with('U') && user.public_key().len() == 56);
        let account = KeyPair::generate(KeyKind::Account).unwrap();
        assert!(account.seed_text().starts_with("SA"));
        assert!(account.public_key().starts_with('A'));
        let operator = KeyPair::generate(KeyKind::Operator).unwrap();
        assert!(operator.seed_text().starts_with("SO"));
        let e = KeyPair::user_seed(&account.seed_text()).unwrap_err();
        assert!(e.contains("Account") && e.contains("SU"), "{e}");
        // One character changed: the checksum catches it; the error does
        // not repeat the seed.
        let mut typo = text.clone().into_bytes();
        typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
        let e = KeyPair::user_seed(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(e.contains("checksum") && !e.contains(&text[2..]), "{e}");
        assert!(KeyPair::user_seed("hello").is_err());
        assert!(!format!("{user:?}").contains(&text[2..]));
        // A signature verifies with the public half.
        let sig = user.sign(b"nonce").unwrap();
        let public = user.pair().unwrap().public_key().as_ref().to_vec();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(b"nonce", &sig)
            .unwrap();
    }

    #[test]
    fn creds_files_give_the_jwt_and_the_seed() {
        let user = KeyPair::generate(KeyKind::User).unwrap();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\neyJh.eyJi.c2ln\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed_text()
        );
        let c = Credentials::parse(&text).unwrap();
        assert_eq!(c.jwt, "eyJh.eyJi.c2ln");
        assert_eq!(c.key.public_key(), user.public_key());
        let shown = format!("{c:?}");
        assert!(!shown.contains("eyJ") && !shown.contains(&user.seed_text()[2..]));
        assert!(Credentials::parse("eyJh.eyJi.c2ln").is_err());
        let e = Credentials::parse(&text.replace("eyJh.eyJi.c2ln", "not a jwt")).unwrap_err();
        assert!(e.contains("JWT"), "{e}");
    }
}
