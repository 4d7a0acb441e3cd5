//! The SNMP driver against net-snmp's real `snmpd` (started here on a
//! loopback port with a config this test writes): SNMPv2c and SNMPv3
//! authPriv (SHA/AES and SHA-256/AES), GET of scalars, GETBULK walks of
//! ifTable/ifXTable, and every failure named precisely; and the same walks
//! written with MIB names, labelled by ifName lookups, with enumerations
//! and addresses shown as `snmpwalk` shows them; and Counter64 values
//! above 2^63 (served by a `pass` script) stored bit-exact through a real
//! agent and collector.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, bail, ensure};
use tributary_agent::reading::Value;
use tributary_tests::peers::{
    self, SNMP_COMMUNITY, SNMP_SYS_DESCR, SNMP_SYS_LOCATION, SNMP_USER_SHA, SNMP_USER_SHA256,
    device_config, poll_once, snmp_mib_dirs, tool, value_of,
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
            // ifInOctets is a Counter32, ifHCInOctets a Counter64: both
            // i64 below 2^63 (the u64 kind only above it).
            assert!(
                matches!(r.value, Value::I64(n) if n >= 0),
                "{column}: {r:?}"
            );
        }
    }
    Ok(())
}

/// A device's walks go out together, several columns per GETBULK; here
/// snmpd answers at most 4 varbinds a request (`maxGetbulkResponses`), so
/// every answer is cut short of the 10 repetitions asked, and the columns
/// end at different rows (two tables). Each column still holds exactly
/// the rows `snmpwalk` shows, in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_walked_together_match_snmpwalk() -> Result<()> {
    let dir = TestDir::new("snmp-columns")?;
    let snmpd = peers::snmpd_with(&dir, "maxGetbulkResponses 4\n", &[]).await?;
    let addr = snmpd.addr;
    // Six columns in one request outnumber snmpd's 4 varbinds an answer:
    // it gives each 4 / 6 = 0 repetitions and answers with no varbinds at
    // all, so the walk must ask for fewer columns, not take every column
    // as ended.
    let columns = [
        ("if_descr", "1.3.6.1.2.1.2.2.1.2"),
        ("if_type", "1.3.6.1.2.1.2.2.1.3"),
        ("if_mtu", "1.3.6.1.2.1.2.2.1.4"),
        ("if_admin", "1.3.6.1.2.1.2.2.1.7"),
        ("if_oper", "1.3.6.1.2.1.2.2.1.8"),
        ("sys_or_descr", "1.3.6.1.2.1.1.9.1.3"),
    ];
    let walks: Vec<String> = columns
        .iter()
        .map(|(name, oid)| {
            format!("  {{ name = \"{name}\", oid = \"{oid}\", index_label = \"i\" }},")
        })
        .collect();
    let device = device_config(
        "switch-columns",
        &format!(
            "driver = \"snmp\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\nversion = \"2c\"\n\
             community = \"{SNMP_COMMUNITY}\"\nmax_repetitions = 10\nwalks = [\n{}\n]\n",
            walks.join("\n")
        ),
    )?;
    let samples = poll_once(&device)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", snmpd.log()))?;
    let mut lengths = Vec::new();
    for (name, oid) in columns {
        let want = snmpwalk(&addr.to_string(), oid, &format!(".{oid}"), &["-Oe"])?;
        let got: Vec<(String, String)> = samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| {
                let value = match &s.value {
                    Value::Str(v) => v.clone(),
                    Value::I64(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (s.labels.get("i").cloned().unwrap_or_default(), value)
            })
            .collect();
        ensure!(!want.is_empty(), "snmpwalk of {oid} found no rows");
        assert_eq!(got, want, "{name}: the agent's rows against snmpwalk's");
        lengths.push(want.len());
    }
    ensure!(
        lengths[5] > lengths[0],
        "sysORTable ({}) should outlast ifTable ({}): the columns end apart",
        lengths[5],
        lengths[0]
    );
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

/// `snmpwalk -v2c` of `oid` against `addr` with the test MIBs loaded, and
/// `extra` flags: (index suffix after `prefix`, value text) per row.
fn snmpwalk(addr: &str, oid: &str, prefix: &str, extra: &[&str]) -> Result<Vec<(String, String)>> {
    let dirs = snmp_mib_dirs()?;
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let out = std::process::Command::new(tool("TRIBUTARY_SNMPWALK", &["/usr/bin/snmpwalk"])?)
        .args([
            "-v2c",
            "-c",
            SNMP_COMMUNITY,
            "-M",
            &shown.join(":"),
            "-m",
            "ALL",
            "-On",
        ])
        .args(extra)
        .arg(addr)
        .arg(oid)
        .output()?;
    ensure!(out.status.success(), "snmpwalk {oid}: {out:?}");
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (name, value) = line.split_once(" = ").unwrap_or((line, ""));
        let index = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(|| anyhow::anyhow!("snmpwalk line {line:?} is not under {prefix}"))?;
        // `STRING: lo`, `INTEGER: up(1)`, `Hex-STRING: 52 54 00 ..`.
        let value = value.split_once(": ").map_or("", |(_, v)| v);
        rows.push((index.to_owned(), value.trim().trim_matches('"').to_owned()));
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mib_names_lookups_and_enums_against_snmpd() -> Result<()> {
    let dir = TestDir::new("snmp-names")?;
    let snmpd = peers::snmpd(&dir).await?;
    let addr = snmpd.addr.to_string();
    let dirs: Vec<String> = snmp_mib_dirs()?
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let text = format!(
        "id = \"drivers-test\"\ncollectors = [\"http://127.0.0.1:1\"]\nmib_dirs = [{}]\n\n\
         [[devices]]\nname = \"switch-1\"\ninterval = \"5s\"\ntimeout = \"3s\"\ndriver = \"snmp\"\n\
         address = \"{addr}\"\ncommunity = \"{SNMP_COMMUNITY}\"\n\
         metrics = [{{ oid = \"sysUpTime.0\" }}, {{ oid = \"SNMPv2-MIB::sysName.0\" }}]\n\
         walks = [\n  {{ oid = \"IF-MIB::ifHCInOctets\" }},\n  {{ oid = \"ifOperStatus\", enum_label = true }},\n\
           {{ oid = \"IF-MIB::ifPhysAddress\" }},\n  {{ name = \"if_type\", oid = \"IF-MIB::ifType\", index_label = \"ifIndex\" }},\n]\n\
         lookups = [{{ label = \"ifName\", oid = \"IF-MIB::ifName\" }}, {{ label = \"ifDescr\", oid = \"IF-MIB::ifDescr\" }}]\n\
         drop_index = true\n",
        dirs.join(", ")
    );
    let cfg = tributary_agent::config::parse(&text, std::path::Path::new("agent.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let samples = poll_once(&cfg.devices[0])
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", snmpd.log()))?;

    // Scalars by name.
    ensure!(
        matches!(value_of(&samples, "sysUpTime"), Some(Value::I64(t)) if *t >= 0),
        "{samples:?}"
    );
    let sys_name = snmpwalk(&addr, "SNMPv2-MIB::sysName", ".1.3.6.1.2.1.1.5", &[])?;
    ensure!(
        value_of(&samples, "sysName") == Some(&Value::Str(sys_name[0].1.clone())),
        "sysName: {:?} vs snmpwalk {sys_name:?}",
        value_of(&samples, "sysName")
    );

    // The ground truth: what snmpwalk shows for the same agent.
    let names: BTreeMap<String, String> =
        snmpwalk(&addr, "IF-MIB::ifName", ".1.3.6.1.2.1.31.1.1.1.1", &[])?
            .into_iter()
            .collect();
    let descrs: BTreeMap<String, String> =
        snmpwalk(&addr, "IF-MIB::ifDescr", ".1.3.6.1.2.1.2.2.1.2", &[])?
            .into_iter()
            .collect();
    ensure!(!names.is_empty(), "snmpwalk shows no ifName rows");
    let rows = |metric: &'static str| samples.iter().filter(move |s| s.metric == metric);

    // Every ifHCInOctets row is labelled with its interface's ifName and
    // ifDescr, and drop_index removed the index.
    let mut labelled = BTreeSet::new();
    for s in rows("ifHCInOctets") {
        ensure!(!s.labels.contains_key("index"), "drop_index: {s:?}");
        let name = s.labels.get("ifName").context("an ifName label")?;
        let index = names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| i)
            .context("a name snmpwalk shows")?;
        ensure!(
            s.labels.get("ifDescr") == descrs.get(index),
            "{s:?} vs {descrs:?}"
        );
        ensure!(
            matches!(s.value, Value::I64(n) if n >= 0),
            "Counter64: {s:?}"
        );
        labelled.insert(name.clone());
    }
    let want: BTreeSet<String> = names.values().cloned().collect();
    ensure!(
        labelled == want,
        "ifName labels {labelled:?}, snmpwalk {want:?}"
    );

    // ifOperStatus: the integer, and its name as configured.
    let status: BTreeMap<String, String> =
        snmpwalk(&addr, "IF-MIB::ifOperStatus", ".1.3.6.1.2.1.2.2.1.8", &[])?
            .into_iter()
            .collect();
    ensure!(rows("ifOperStatus").count() == status.len());
    for s in rows("ifOperStatus") {
        let name = s.labels.get("ifName").context("ifName")?;
        let index = names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| i)
            .context("index")?;
        let Value::I64(n) = s.value else {
            bail!("ifOperStatus is not an integer: {s:?}")
        };
        let label = s.labels.get("ifOperStatus").context("enum label")?;
        // snmpwalk: `up(1)`.
        ensure!(
            status.get(index) == Some(&format!("{label}({n})")),
            "{s:?} vs {status:?}"
        );
    }

    // ifPhysAddress: aa:bb:.. as snmpwalk's hex shows it.
    let macs: BTreeMap<String, String> = snmpwalk(
        &addr,
        "IF-MIB::ifPhysAddress",
        ".1.3.6.1.2.1.2.2.1.6",
        &["-Ox"],
    )?
    .into_iter()
    .collect();
    for s in rows("ifPhysAddress") {
        let name = s.labels.get("ifName").context("ifName")?;
        let index = names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| i)
            .context("index")?;
        let want = macs
            .get(index)
            .map(|h| {
                h.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(":")
                    .to_lowercase()
            })
            .unwrap_or_default();
        ensure!(s.value == Value::Str(want.clone()), "{s:?} vs {want:?}");
    }
    ensure!(rows("ifPhysAddress").count() == macs.len());

    // A configured name and index label: every row got an ifName, so
    // drop_index removed the configured index label too.
    ensure!(rows("if_type").count() == names.len());
    for s in rows("if_type") {
        ensure!(
            !s.labels.contains_key("ifIndex") && s.labels.contains_key("ifName"),
            "{s:?}"
        );
    }
    Ok(())
}

/// Where the `pass` script of [`counter64_above_2_63_arrives_bit_exact`]
/// serves its objects: NET-SNMP-MIB's netSnmpPlaypen (experiments) `.64`.
const PASS_BASE: &str = ".1.3.6.1.4.1.8072.9999.64";
/// What it serves: 2^64 - 1 at `.1`, 2^63 + 1 at `.2` (both lose bits as
/// doubles, and neither fits an i64).
const COUNTER64_VALUES: [u64; 2] = [u64::MAX, (1 << 63) + 1];

/// A net-snmp `pass` script (`-g OID` for GET, `-n OID` for GETNEXT: the
/// OID, the type and the value on three lines, nothing past the end) that
/// serves [`COUNTER64_VALUES`] as Counter64 objects under [`PASS_BASE`].
fn counter64_pass_script() -> String {
    let [max, above] = COUNTER64_VALUES;
    format!(
        "#!/bin/sh\nB={PASS_BASE}\ncase \"$1 $2\" in\n\
         \"-g $B.1\"|\"-n $B\"|\"-n $B.0\") printf '%s\\ncounter64\\n%s\\n' \"$B.1\" {max} ;;\n\
         \"-g $B.2\"|\"-n $B.1\") printf '%s\\ncounter64\\n%s\\n' \"$B.2\" {above} ;;\n\
         esac\n"
    )
}

/// A Counter64 set above 2^63 in snmpd arrives bit-exact through the
/// store: snmpd serves 2^64 - 1 and 2^63 + 1 through a `pass` script
/// (`snmpwalk` shows them, the ground truth); an agent GETs and walks them
/// into a collector; the SQLite store, Query/Range and the CLI (CSV and
/// JSON) all give back the exact integers. Where values are floats, the
/// nearest double: the collector's PromQL answers what Prometheus answers
/// for the same query over the samples its remote_write export sent there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter64_above_2_63_arrives_bit_exact() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    use tributary_collector::model::StoredValue;
    use tributary_proto::v1 as pb;
    use tributary_tests::cluster::{Agent, Collector, PATIENCE, stored_points};
    use tributary_tests::peers::receivers::{Kind, Receiver};
    use tributary_tests::process::{eventually, free_addr, run_bin};

    let dir = TestDir::new("snmp-counter64")?;
    let script = dir.join("counter64.sh");
    std::fs::write(&script, counter64_pass_script())?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let snmpd = peers::snmpd_with(
        &dir,
        &format!("pass {PASS_BASE} {}\n", script.display()),
        &[],
    )
    .await?;
    let addr = snmpd.addr.to_string();

    // net-snmp's own view of what it serves.
    let shown = snmpwalk(&addr, PASS_BASE, PASS_BASE, &[])?;
    let want: Vec<(String, String)> = vec![
        ("1".into(), COUNTER64_VALUES[0].to_string()),
        ("2".into(), COUNTER64_VALUES[1].to_string()),
    ];
    ensure!(shown == want, "snmpwalk shows {shown:?}\n{}", snmpd.log());

    let rx = Receiver::start(&dir, Kind::Prometheus, "receiver").await?;
    let export = dir.join("collector.toml");
    std::fs::write(
        &export,
        format!(
            "[[exports]]\nname = \"rx\"\nkind = \"remote_write\"\nurl = \"{}\"\n",
            rx.write_url()
        ),
    )?;
    let export = export.display().to_string();
    let collector = Collector::start_with(&dir, free_addr()?, &["--config", &export]).await?;
    let config = format!(
        "id = \"edge-c64\"\ncollectors = [\"{}\"]\n\n[[devices]]\nname = \"router\"\n\
         driver = \"snmp\"\ninterval = \"1s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\n\
         version = \"2c\"\ncommunity = \"{SNMP_COMMUNITY}\"\n\
         metrics = [{{ name = \"c64_max\", oid = \"{PASS_BASE}.1\" }}, {{ name = \"c64_above\", oid = \"{PASS_BASE}.2\" }}]\n\
         walks = [{{ name = \"c64_walked\", oid = \"{PASS_BASE}\" }}]\n",
        collector.url()
    );
    let mut agent = Agent::start(&dir, "edge-c64", &config, "")?;

    // The store: both GETs and both walked rows, as u64, every bit.
    let expected = [
        ("c64_above", None, COUNTER64_VALUES[1]),
        ("c64_max", None, COUNTER64_VALUES[0]),
        ("c64_walked", Some("1"), COUNTER64_VALUES[0]),
        ("c64_walked", Some("2"), COUNTER64_VALUES[1]),
    ];
    let db = collector.db.clone();
    let stored = eventually(PATIENCE, "the Counter64 readings stored", || {
        let db = db.clone();
        async move {
            let series = stored_points(&db, "edge-c64", "router", "").ok()?;
            let mut firsts: Vec<(String, Option<String>, StoredValue)> = series
                .into_iter()
                .filter(|(meta, _)| meta.key.metric != "up")
                .filter_map(|(meta, points)| {
                    let p = points.into_iter().next()?;
                    Some((
                        meta.key.metric,
                        meta.key.labels.get("index").cloned(),
                        p.value,
                    ))
                })
                .collect();
            firsts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            (firsts.len() == expected.len()).then_some(firsts)
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", agent.log(), collector.log()))?;
    for ((metric, index, value), (want_metric, want_index, want)) in stored.iter().zip(&expected) {
        ensure!(
            metric == want_metric && index.as_deref() == *want_index,
            "{stored:?}"
        );
        ensure!(
            *value == StoredValue::U64(*want),
            "{metric} {index:?}: {value:?}"
        );
    }

    // Query/Range: the u64 variant with the exact value.
    let mut query = pb::query_client::QueryClient::connect(collector.url()).await?;
    let mut chunks = query
        .range(pb::RangeRequest {
            filter: Some(pb::SeriesFilter {
                agent: "edge-c64".into(),
                device: "router".into(),
                metric: "c64_above".into(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut points = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        points.extend(chunk.points);
    }
    ensure!(!points.is_empty(), "Range gave no points");
    for p in &points {
        ensure!(
            p.value == Some(pb::point::Value::U64(COUNTER64_VALUES[1])),
            "Range point {p:?}"
        );
    }

    // The CLI prints the exact integer, in CSV and in JSON.
    let server = collector.url();
    let csv = run_bin(
        "tributary-collector",
        [
            "latest", "--server", &server, "--device", "router", "--format", "csv",
        ],
    )
    .await?;
    for (metric, index, want) in expected {
        if index.is_some() {
            continue;
        }
        let line = csv
            .lines()
            .find(|l| l.split(',').nth(2) == Some(metric))
            .with_context(|| format!("no {metric} line in {csv}"))?;
        ensure!(
            line.split(',').nth(4) == Some(want.to_string().as_str()),
            "{line}"
        );
    }
    let json = run_bin(
        "tributary-collector",
        [
            "query", "--server", &server, "--device", "router", "--metric", "c64_max", "--format",
            "json",
        ],
    )
    .await?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json)?;
    ensure!(!rows.is_empty(), "no JSON rows: {json}");
    for row in &rows {
        ensure!(
            row["value"].as_u64() == Some(COUNTER64_VALUES[0]),
            "JSON row {row}"
        );
    }

    // PromQL (the collector's) and remote_write (into Prometheus): floats.
    for (metric, value) in [
        ("c64_max", COUNTER64_VALUES[0]),
        ("c64_above", COUNTER64_VALUES[1]),
    ] {
        let want = value as f64;
        let sent = eventually(
            PATIENCE,
            "Prometheus has the remote-written samples",
            || async {
                let raw = rx.raw(metric).await.ok()?;
                let samples: Vec<f64> = raw.into_values().flatten().map(|(_, v)| v).collect();
                (!samples.is_empty()).then_some(samples)
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", collector.log(), rx.log()))?;
        ensure!(
            sent.iter().all(|v| *v == want),
            "{metric}: sent {sent:?}, want {want}"
        );
        let path = format!("/api/v1/query?query={metric}");
        let ours = instant_value(collector.http, &path).await?;
        let theirs = instant_value(rx.addr(), &path).await?;
        ensure!(ours.parse::<f64>()? == want, "{metric}: PromQL gave {ours}");
        ensure!(
            ours == theirs,
            "{metric}: PromQL {ours}, Prometheus {theirs}"
        );
    }
    agent.stop().await?;
    Ok(())
}

/// The value text of the one sample an instant query at `path` answers.
async fn instant_value(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let (status, body) = peers::prometheus::http_get(addr, path, None).await?;
    ensure!(status == 200, "{path}: {status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let result = v["data"]["result"].as_array().context("result")?;
    ensure!(result.len() == 1, "{path}: {body}");
    Ok(result[0]["value"][1].as_str().context("value")?.to_owned())
}
