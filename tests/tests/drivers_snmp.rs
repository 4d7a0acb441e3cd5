//! The SNMP driver against net-snmp's real `snmpd` (started here on a
//! loopback port with a config this test writes): SNMPv2c and SNMPv3
//! authPriv (SHA/AES and SHA-256/AES), GET of scalars, GETBULK walks of
//! ifTable/ifXTable, and every failure named precisely.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use tributary_agent::reading::Value;
use tributary_tests::peers::{
    self, SNMP_COMMUNITY, SNMP_SYS_DESCR, SNMP_SYS_LOCATION, SNMP_USER_SHA, SNMP_USER_SHA256,
    device_config, poll_once, value_of,
};
use tributary_tests::process::TestDir;

const SCALARS: &str = r#"metrics = [
  { name = "descr", oid = "1.3.6.1.2.1.1.1.0" },
  { name = "uptime", oid = "1.3.6.1.2.1.1.3.0", unit = "cs" },
  { name = "location", oid = "1.3.6.1.2.1.1.6.0" },
  { name = "services", oid = "1.3.6.1.2.1.1.7.0" },
]
"#;

/// Interface names the agent should list: this network namespace's.
fn local_interfaces() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string("/proc/net/dev")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2c_get_and_walk_against_snmpd() -> Result<()> {
    let dir = TestDir::new("snmp-v2c")?;
    let snmpd = peers::snmpd(&dir).await?;
    let addr = snmpd.addr;
    let device = device_config(
        "switch-3",
        &format!(
            "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\nversion = \"2c\"\n\
             community = \"{SNMP_COMMUNITY}\"\n{SCALARS}\
             walks = [\n  {{ name = \"if_descr\", oid = \"1.3.6.1.2.1.2.2.1.2\", index_label = \"ifIndex\" }},\n\
               {{ name = \"if_in_octets\", oid = \"1.3.6.1.2.1.2.2.1.10\" }},\n\
               {{ name = \"if_hc_in_octets\", oid = \"1.3.6.1.2.1.31.1.1.1.6\" }},\n]\n"
        ),
    )?;
    let samples = poll_once(&device)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", snmpd.log()))?;
    assert_eq!(
        value_of(&samples, "descr"),
        Some(&Value::Str(SNMP_SYS_DESCR.into()))
    );
    assert_eq!(
        value_of(&samples, "location"),
        Some(&Value::Str(SNMP_SYS_LOCATION.into()))
    );
    assert_eq!(value_of(&samples, "services"), Some(&Value::I64(72)));
    assert!(matches!(value_of(&samples, "uptime"), Some(Value::I64(t)) if *t >= 0));

    // One series per table row, the row index kept as a label, and the
    // rows are exactly this host's interfaces.
    let descr: Vec<_> = samples.iter().filter(|s| s.metric == "if_descr").collect();
    let names: BTreeSet<String> = descr
        .iter()
        .filter_map(|s| match &s.value {
            Value::Str(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names, local_interfaces()?, "ifDescr rows");
    let indexes: BTreeSet<&String> = descr
        .iter()
        .filter_map(|s| s.labels.get("ifIndex"))
        .collect();
    assert_eq!(indexes.len(), descr.len(), "one row per index");
    for column in ["if_in_octets", "if_hc_in_octets"] {
        let rows: Vec<_> = samples.iter().filter(|s| s.metric == column).collect();
        assert_eq!(rows.len(), descr.len(), "{column} has a row per interface");
        for r in rows {
            assert!(r.labels.contains_key("index"), "{r:?}");
            assert!(
                matches!(r.value, Value::I64(n) if n >= 0),
                "{column}: {r:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_auth_priv_sha_and_sha256_with_aes() -> Result<()> {
    let dir = TestDir::new("snmp-v3")?;
    let snmpd = peers::snmpd(&dir).await?;
    let addr = snmpd.addr;
    for (user, proto, auth, privacy) in [SNMP_USER_SHA, SNMP_USER_SHA256] {
        let proto = proto.replace('-', "").to_lowercase();
        let device = device_config(
            "switch-v3",
            &format!(
                "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\nversion = \"3\"\n\
                 user = \"{user}\"\nauth_protocol = \"{proto}\"\nauth_password = \"{auth}\"\n\
                 priv_protocol = \"aes\"\npriv_password = \"{privacy}\"\n{SCALARS}\
                 walks = [{{ name = \"if_descr\", oid = \"1.3.6.1.2.1.2.2.1.2\" }}]\n"
            ),
        )?;
        let samples = poll_once(&device)
            .await
            .map_err(|e| anyhow::anyhow!("user {user}: {e}\n{}", snmpd.log()))?;
        assert_eq!(
            value_of(&samples, "descr"),
            Some(&Value::Str(SNMP_SYS_DESCR.into())),
            "{user}"
        );
        ensure!(
            samples
                .iter()
                .any(|s| s.metric == "if_descr" && s.value == Value::Str("lo".into())),
            "{user}: walk over authPriv: {samples:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_exactly_why() -> Result<()> {
    let dir = TestDir::new("snmp-fail")?;
    let snmpd = peers::snmpd(&dir).await?;
    let addr = snmpd.addr;
    let v3 = |user: &str, auth: &str, privacy: &str| {
        device_config(
            "v3",
            &format!(
                "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"2s\"\naddress = \"{addr}\"\nversion = \"3\"\n\
                 user = \"{user}\"\nauth_password = \"{auth}\"\npriv_password = \"{privacy}\"\n\
                 metrics = [{{ name = \"descr\", oid = \"1.3.6.1.2.1.1.1.0\" }}]\n"
            ),
        )
    };
    let (user, _, auth, privacy) = SNMP_USER_SHA;

    // Wrong auth password: the agent reports usmStatsWrongDigests.
    let e = poll_once(&v3(user, "not-the-password", privacy)?)
        .await
        .expect_err("wrong auth");
    assert!(
        e.message.contains("authentication failure: wrong digest"),
        "{e}"
    );
    // Unknown user.
    let e = poll_once(&v3("nobody", auth, privacy)?)
        .await
        .expect_err("unknown user");
    assert!(e.message.contains("unknown user name \"nobody\""), "{e}");
    // Wrong priv password: net-snmp drops what it cannot decrypt; the
    // engine answered discovery, so the driver says what is likely wrong.
    let e = poll_once(&v3(user, auth, "not-the-priv-pass")?)
        .await
        .expect_err("wrong priv");
    assert!(e.message.contains("wrong priv_password"), "{e}");

    // Wrong community: snmpd stays silent.
    let dev = device_config(
        "v2",
        &format!(
            "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"600ms\"\naddress = \"{addr}\"\n\
             community = \"wrong\"\nmetrics = [{{ name = \"descr\", oid = \"1.3.6.1.2.1.1.1.0\" }}]\n"
        ),
    )?;
    let e = poll_once(&dev).await.expect_err("wrong community");
    assert!(
        e.message.contains("no answer after 2 tries") && e.message.contains("wrong community"),
        "{e}"
    );

    // Bad OIDs fail their metric (the others still read), and a walk of
    // nothing says so.
    let dev = device_config(
        "v2",
        &format!(
            "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"2s\"\naddress = \"{addr}\"\n\
             community = \"{SNMP_COMMUNITY}\"\nmetrics = [\n  {{ name = \"descr\", oid = \"1.3.6.1.2.1.1.1.0\" }},\n\
               {{ name = \"nope\", oid = \"1.3.6.1.2.1.1.99.0\" }},\n  {{ name = \"no_instance\", oid = \"1.3.6.1.2.1.1.1\" }},\n]\n\
             walks = [{{ name = \"void\", oid = \"1.3.6.1.2.1.4242\" }}]\n"
        ),
    )?;
    let samples = poll_once(&dev).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        value_of(&samples, "descr"),
        Some(&Value::Str(SNMP_SYS_DESCR.into()))
    );
    let msg = |m: &str| match value_of(&samples, m) {
        Some(Value::Failed { message, .. }) => message.clone(),
        other => panic!("{m}: expected a failure, got {other:?}"),
    };
    assert!(msg("nope").contains("bad OID"), "{}", msg("nope"));
    assert!(
        msg("no_instance").contains("bad OID"),
        "{}",
        msg("no_instance")
    );
    assert!(msg("void").contains("returned no rows"), "{}", msg("void"));

    // Nothing listens: refused, not a timeout.
    drop(snmpd);
    let e = poll_once(&dev).await.expect_err("refused");
    assert!(e.message.contains("connection refused"), "{e}");
    Ok(())
}
