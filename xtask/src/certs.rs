//! `cargo xtask certs`: a development PKI for mutual TLS, made with rcgen.
//!
//! ```text
//! cargo xtask certs --out DIR [--agents edge-1,edge-2] [--names localhost,127.0.0.1]
//!                   [--operators operator] [--days 825]
//! ```
//!
//! Writes into DIR (PEM, keys readable by the owner only):
//!
//! - `ca.pem`, `ca.key`: the development CA. Reused when DIR already has
//!   one, so adding an agent later keeps every earlier certificate valid.
//! - `collector.pem`, `collector.key`: the collector's server certificate for
//!   `--names` (DNS names and IP addresses; default localhost and 127.0.0.1).
//! - `<agent>.pem`, `<agent>.key` for each of `--agents`: client
//!   certificates whose DNS subject alternative name and common name are the
//!   agent id, which is the identity the collector checks.
//! - `<operator>.pem`, `<operator>.key` for each of `--operators` (default
//!   `operator`): client certificates for grpcurl and the collector CLI.
//!   The collector lets only the identities in its `operators` key call
//!   Query, and that key defaults to `["operator"]`: other names given here
//!   must be listed there.
//!
//! This is for development and tests; production certificates come from the
//! operator's own CA.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub const USAGE: &str = "certs --out DIR [--agents a,b] [--names localhost,127.0.0.1] \
[--operators operator] [--days 825]";

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    out: PathBuf,
    agents: Vec<String>,
    names: Vec<String>,
    operators: Vec<String>,
    days: i64,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut out = None;
    let mut agents = Vec::new();
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut operators = vec!["operator".to_owned()];
    let mut days = 825;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value (usage: cargo xtask {USAGE})"))
        };
        match flag {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--agents" => agents = list(&value()?),
            "--names" => names = list(&value()?),
            "--operators" => operators = list(&value()?),
            "--days" => {
                let v = value()?;
                days = v
                    .parse()
                    .ok()
                    .filter(|d| *d > 0)
                    .with_context(|| format!("--days {v:?}: expected a positive number"))?;
            }
            other => bail!("certs: unknown argument {other:?} (usage: cargo xtask {USAGE})"),
        }
    }
    let out =
        out.with_context(|| format!("certs: --out DIR is required (usage: cargo xtask {USAGE})"))?;
    if names.is_empty() {
        bail!("--names: at least one name is needed for the collector certificate");
    }
    for id in agents.iter().chain(&operators) {
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid || ["ca", "collector"].contains(&id.as_str()) {
            bail!(
                "{id:?}: an agent or operator id has only letters, digits, '.', '_' and '-' \
                 (and is not \"ca\" or \"collector\")"
            );
        }
    }
    Ok(Options {
        out,
        agents,
        names,
        operators,
        days,
    })
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `cargo xtask certs ARGS`.
pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("create {}", opts.out.display()))?;
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(opts.days);

    let (ca_params, ca_key, reused) = load_or_create_ca(&opts.out, not_before, now)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let mut written = Vec::new();
    let mut server = CertificateParams::new(opts.names.clone())
        .with_context(|| format!("--names {:?}", opts.names.join(",")))?;
    server
        .distinguished_name
        .push(DnType::CommonName, opts.names[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.not_before = not_before;
    server.not_after = not_after;
    written.push(issue(&opts.out, "collector", &server, &issuer)?);

    for id in opts.agents.iter().chain(&opts.operators) {
        let mut client = CertificateParams::new(vec![id.clone()])
            .with_context(|| format!("client certificate for {id:?}"))?;
        client
            .distinguished_name
            .push(DnType::CommonName, id.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.not_before = not_before;
        client.not_after = not_after;
        written.push(issue(&opts.out, id, &client, &issuer)?);
    }

    let dir = opts.out.display();
    println!(
        "xtask certs: {} CA {dir}/ca.pem",
        if reused {
            "reused the"
        } else {
            "created a new"
        }
    );
    for (name, cert) in &written {
        println!("xtask certs: wrote {} and its key ({name})", cert.display());
    }
    println!(
        "xtask certs: the collector certificate is valid for {}; client certificates' \
         identity is their name (see README \"Mutual TLS\")",
        opts.names.join(", ")
    );
    Ok(())
}

/// Subject common name of the development CA.
const CA_NAME: &str = "Tributary development CA";

/// The CA's parameters. Leaf certificates take their issuer name and
/// authority key id from these and the CA key, so rebuilding them from the
/// same key issues certificates that chain to an existing `ca.pem`.
fn ca_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// The CA in `dir` if there is one, else a new one written there.
fn load_or_create_ca(
    dir: &Path,
    not_before: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(CertificateParams, KeyPair, bool)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let params = ca_params(not_before, now + Duration::days(3650));
    if cert_path.is_file() && key_path.is_file() {
        let pem = read(&cert_path)?;
        // Only a CA made here can be rebuilt from its key (see `ca_params`).
        if !pem_contains(&pem, CA_NAME.as_bytes()) {
            bail!(
                "{} was not made by `cargo xtask certs`; use an empty --out directory",
                cert_path.display()
            );
        }
        let key = KeyPair::from_pem(&read(&key_path)?)
            .with_context(|| format!("{}: not a private key", key_path.display()))?;
        return Ok((params, key, true));
    }
    let key = KeyPair::generate().context("generate the CA key")?;
    let cert = params.self_signed(&key).context("self-sign the CA")?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((params, key, false))
}

/// Whether the DER inside the PEM text `pem` contains `needle`.
fn pem_contains(pem: &str, needle: &[u8]) -> bool {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    match decode_base64(&body) {
        Some(der) => der.windows(needle.len()).any(|w| w == needle),
        None => false,
    }
}

/// Standard base64 with padding, as in PEM.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Makes a key pair and a certificate signed by `issuer`; writes
/// `<name>.pem` and `<name>.key`.
fn issue(
    dir: &Path,
    name: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(String, PathBuf)> {
    let key = KeyPair::generate().with_context(|| format!("generate the key of {name}"))?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("sign the certificate of {name}"))?;
    let cert_path = dir.join(format!("{name}.pem"));
    write(&cert_path, &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    Ok((name.to_owned(), cert_path))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Writes `text`; a private key is readable by its owner only.
fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_have_defaults_and_lists_split_on_commas() {
        let o = parse(&args("--out d --agents edge-1,edge-2")).expect("valid");
        assert_eq!(o.out, PathBuf::from("d"));
        assert_eq!(o.agents, ["edge-1", "edge-2"]);
        assert_eq!(o.names, ["localhost", "127.0.0.1"]);
        assert_eq!(o.operators, ["operator"]);
        let o = parse(&args(
            "--out=d --names=collector.example,10.0.0.5 --days 30",
        ))
        .expect("valid");
        assert_eq!(o.names, ["collector.example", "10.0.0.5"]);
        assert_eq!(o.days, 30);
        assert!(o.agents.is_empty());
    }

    #[test]
    fn base64_decodes_like_pem() {
        assert_eq!(
            decode_base64("VHJpYnV0YXJ5").as_deref(),
            Some(&b"Tributary"[..])
        );
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("!"), None);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&args("--agents a")).is_err(), "no --out");
        assert!(parse(&args("--out d --agents bad/id")).is_err());
        assert!(parse(&args("--out d --agents ca")).is_err());
        assert!(parse(&args("--out d --days 0")).is_err());
        assert!(parse(&args("--out d --what")).is_err());
    }
}
