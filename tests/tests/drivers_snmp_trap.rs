//! The SNMP notification receiver against net-snmp's own senders:
//! `snmptrap` (v1 and v2c) and `snmpinform` (v2c, which exits 0 only when
//! the inform was acknowledged). The OIDs are sent numerically and the
//! readings must carry the names IF-MIB and SNMPv2-MIB give them.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tributary_agent::drivers::Driver;
use tributary_agent::reading::{Polled, Reading, Value};
use tributary_tests::peers::{snmp_mib_dirs, tool};

/// A net-snmp command next to `snmpwalk` (Debian's `snmp` package).
fn netsnmp(name: &str) -> Result<std::path::PathBuf> {
    let walk = tool("TRIBUTARY_SNMPWALK", &["/usr/bin/snmpwalk"])?;
    Ok(walk.with_file_name(name))
}

fn run(cmd: &mut Command) -> Result<bool> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        eprintln!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.status.success())
}

fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

async fn poll(driver: &mut Driver) -> Result<Vec<Reading>> {
    match driver
        .poll_values()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        Polled::Readings(r) => Ok(r),
        Polled::Samples(s) => anyhow::bail!("samples, not readings: {s:?}"),
    }
}

/// (device, metric, snmpTrapOID, index or cause) of each reading, with its
/// value.
fn shown(readings: &[Reading]) -> Vec<(String, String, String, String, Value)> {
    readings
        .iter()
        .map(|r| {
            let l = |k: &str| r.series.labels.get(k).unwrap_or("").to_owned();
            (
                r.series.device.to_string(),
                r.series.metric.to_string(),
                l("snmpTrapOID"),
                l("index") + &l("cause"),
                r.value.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_and_informs_from_net_snmp() -> Result<()> {
    let dirs: Vec<String> = snmp_mib_dirs()?
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let port = free_udp_port()?;
    let target = format!("127.0.0.1:{port}");
    let text = format!(
        "id = \"trap-test\"\ncollectors = [\"http://127.0.0.1:1\"]\nmib_dirs = [{}]\n\n\
         [[devices]]\nname = \"traps\"\ndriver = \"snmp_trap\"\ninterval = \"1s\"\n\
         listen = \"{target}\"\ncommunities = [\"public\", \"other\"]\n\
         senders = [{{ address = \"127.0.0.1\", name = \"lab-switch\" }}]\n",
        dirs.join(", ")
    );
    let cfg = tributary_agent::config::parse(&text, std::path::Path::new("agent.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut driver = Driver::build(&cfg.devices[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let counts = poll(&mut driver).await?;
    ensure!(
        counts.len() == 9,
        "only the counts before any trap: {counts:?}"
    );

    let snmptrap = netsnmp("snmptrap")?;
    let snmpinform = netsnmp("snmpinform")?;
    // Numeric OIDs only: no MIB is needed on the sending side.
    let (if_index, if_descr, if_oper) = (
        "1.3.6.1.2.1.2.2.1.1.3",
        "1.3.6.1.2.1.2.2.1.2.3",
        "1.3.6.1.2.1.2.2.1.8.3",
    );
    // v2c linkDown.
    ensure!(run(Command::new(&snmptrap).args([
        "-v",
        "2c",
        "-c",
        "public",
        &target,
        "",
        "1.3.6.1.6.3.1.1.5.3",
        if_index,
        "i",
        "3",
        if_descr,
        "s",
        "eth3",
        if_oper,
        "i",
        "2",
    ]))?);
    // v1 linkDown (generic-trap 2) from an agent address of its own.
    ensure!(run(Command::new(&snmptrap).args([
        "-v",
        "1",
        "-c",
        "public",
        &target,
        "1.3.6.1.4.1.8072.3.2.10",
        "10.0.0.9",
        "2",
        "0",
        "",
        if_index,
        "i",
        "3",
    ]))?);
    // An inform with the wrong community: not acknowledged (snmpinform
    // gives up after its one try).
    ensure!(
        !run(Command::new(&snmpinform).args([
            "-v",
            "2c",
            "-c",
            "wrong",
            "-r",
            "0",
            "-t",
            "1",
            &target,
            "",
            "1.3.6.1.6.3.1.1.5.4",
            if_index,
            "i",
            "3",
        ]))?,
        "an inform with the wrong community was acknowledged"
    );
    // Not notifications: random bytes, and an SNMPv3 message from a user
    // this receiver does not have (net-snmp's own v3 GET).
    let junk = std::net::UdpSocket::bind("127.0.0.1:0")?;
    junk.send_to(b"\x30\x03\x02\x01", &target)?;
    ensure!(
        !run(Command::new(netsnmp("snmpget")?).args([
            "-v",
            "3",
            "-l",
            "noAuthNoPriv",
            "-u",
            "nobody",
            "-r",
            "0",
            "-t",
            "1",
            &target,
            "1.3.6.1.2.1.1.3.0",
        ]))?,
        "a v3 request was answered"
    );
    // linkUp as an inform: acknowledged (and, the datagrams being handled in
    // order, everything above is queued by then).
    ensure!(
        run(Command::new(&snmpinform).args([
            "-v",
            "2c",
            "-c",
            "public",
            "-r",
            "2",
            "-t",
            "3",
            &target,
            "",
            "1.3.6.1.6.3.1.1.5.4",
            if_index,
            "i",
            "3",
            if_oper,
            "i",
            "1",
        ]))?,
        "the inform was not acknowledged"
    );

    let readings = poll(&mut driver).await?;
    let s = |m: &str, t: &str, i: &str, v: Value| {
        (
            "lab-switch".to_owned(),
            m.to_owned(),
            t.to_owned(),
            i.to_owned(),
            v,
        )
    };
    let count = |m: &str, cause: &str, n: i64| {
        (
            "traps".to_owned(),
            m.to_owned(),
            String::new(),
            cause.to_owned(),
            Value::I64(n),
        )
    };
    assert_eq!(
        shown(&readings),
        vec![
            s("linkDown", "linkDown", "", Value::I64(1)),
            s("ifIndex", "linkDown", "3", Value::I64(3)),
            s("ifDescr", "linkDown", "3", Value::Str("eth3".into())),
            s("ifOperStatus", "linkDown", "3", Value::I64(2)),
            s("linkDown", "linkDown", "", Value::I64(1)),
            s("ifIndex", "linkDown", "3", Value::I64(3)),
            // The v1 trap's agent-addr (RFC 3584's snmpTrapAddress.0); the
            // device is still named after the UDP source.
            s(
                "snmpTrapAddress",
                "linkDown",
                "",
                Value::Str("10.0.0.9".into())
            ),
            s("linkUp", "linkUp", "", Value::I64(1)),
            s("ifIndex", "linkUp", "3", Value::I64(3)),
            s("ifOperStatus", "linkUp", "3", Value::I64(1)),
            count("snmp_trap_rejected_total", "community", 1),
            count("snmp_trap_rejected_total", "malformed", 1),
            count("snmp_trap_rejected_total", "version", 0),
            count("snmp_trap_rejected_total", "user", 1),
            count("snmp_trap_rejected_total", "auth", 0),
            count("snmp_trap_dropped_total", "rate", 0),
            count("snmp_trap_dropped_total", "queue", 0),
            count("snmp_trap_informs_repeated_total", "", 0),
            count("snmp_trap_discoveries_total", "", 0),
        ]
    );
    for r in &readings[..10] {
        assert!(r.ts_ns > 0, "stamped when it arrived");
    }
    // Nothing more arrived: the next poll has the counts only.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(poll(&mut driver).await?.len(), 9);
    // The communities are secrets: `tributary-agent config` shows neither.
    let dir = tributary_tests::process::TestDir::new("snmp-trap-config")?;
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text)?;
    let (_, shown) =
        tributary_agent::config::effective(&path, &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        shown.contains("communities = [\"<redacted>\", \"<redacted>\"]")
            && !shown.contains("other\""),
        "{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_a_poll_error_that_names_it() -> Result<()> {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let text = format!(
        "id = \"trap-test\"\ncollectors = [\"http://127.0.0.1:1\"]\n\n[[devices]]\nname = \"traps\"\n\
         driver = \"snmp_trap\"\ninterval = \"1s\"\nlisten = \"{addr}\"\ncommunity = \"public\"\nmibs = []\n"
    );
    let cfg = tributary_agent::config::parse(&text, std::path::Path::new("agent.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut driver = Driver::build(&cfg.devices[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = poll(&mut driver).await.expect_err("port taken").to_string();
    ensure!(e.contains(&format!("cannot listen on udp {addr}")), "{e}");
    Ok(())
}

/// Through a whole agent and collector: 40 informs from `snmpinform`, each
/// acknowledged, each stored exactly once (its `ifIndex` value is its
/// number), with the collector killed and started again half way (the
/// agent spools and sends again; the collector stores none twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_inform_is_stored_once() -> Result<()> {
    use tributary_collector::model::StoredValue;
    use tributary_tests::cluster::{self, Agent, Collector};
    use tributary_tests::process::{TestDir, eventually, free_addr};

    let dir = TestDir::new("snmp-trap-e2e")?;
    let addr = free_addr()?;
    let mut collector = Collector::start(&dir, addr).await?;
    let port = free_udp_port()?;
    let target = format!("127.0.0.1:{port}");
    let id = "trap-e2e";
    let dirs: Vec<String> = snmp_mib_dirs()?
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let config = format!(
        "id = \"{id}\"\ncollectors = [\"{}\"]\nmib_dirs = [{}]\n\n[[devices]]\nname = \"traps\"\n\
         driver = \"snmp_trap\"\ninterval = \"200ms\"\nlisten = \"{target}\"\ncommunity = \"public\"\n\
         senders = [{{ address = \"127.0.0.1\", name = \"edge-switch\" }}]\n",
        collector.url(),
        dirs.join(", ")
    );
    let mut agent = Agent::start(&dir, id, &config, "")?;
    let snmpinform = netsnmp("snmpinform")?;
    let n = 40;
    for i in 1..=n {
        if i == n / 2 {
            collector.proc.kill().await?;
            collector = Collector::start(&dir, addr).await?;
        }
        // The agent binds its port with its first poll: retried until then.
        eventually(cluster::PATIENCE, "the inform is acknowledged", || async {
            run(Command::new(&snmpinform).args([
                "-v",
                "2c",
                "-c",
                "public",
                "-r",
                "0",
                "-t",
                "1",
                &target,
                "",
                "1.3.6.1.6.3.1.1.5.3",
                "1.3.6.1.2.1.2.2.1.1.7",
                "i",
                &i.to_string(),
            ]))
            .ok()
            .filter(|ok| *ok)
        })
        .await?;
    }
    let db = collector.db.clone();
    let stored = || -> Vec<i64> {
        let mut v: Vec<i64> = cluster::stored_points(&db, id, "edge-switch", "ifIndex")
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, p)| p)
            .filter_map(|p| match p.value {
                StoredValue::I64(v) => Some(v),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    };
    eventually(cluster::PATIENCE, "every inform is stored", || async {
        (stored().len() >= n as usize).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log()))?;
    agent.stop().await?;
    assert_eq!(stored(), (1..=n).collect::<Vec<i64>>(), "each inform once");
    let events = cluster::stored_points(&db, id, "edge-switch", "linkDown")?;
    ensure!(
        events.iter().map(|(_, p)| p.len()).sum::<usize>() == n as usize,
        "one linkDown event per inform: {events:?}"
    );
    Ok(())
}

/// SNMPv3 traps from net-snmp's `snmptrap`: authPriv (SHA-256, AES) with
/// the configured user is stored; a wrong password, an unknown user and a
/// trap below the user's level are refused and counted by cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_traps_from_net_snmp() -> Result<()> {
    let dirs: Vec<String> = snmp_mib_dirs()?
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    let port = free_udp_port()?;
    let target = format!("127.0.0.1:{port}");
    let engine = "0x80001f8880c0ffee0001";
    let text = format!(
        "id = \"trap-test\"\ncollectors = [\"http://127.0.0.1:1\"]\nmib_dirs = [{}]\n\n\
         [[devices]]\nname = \"traps\"\ndriver = \"snmp_trap\"\ninterval = \"1s\"\n\
         listen = \"{target}\"\ncommunity = \"public\"\nuser = \"trapper\"\nauth_protocol = \"sha256\"\n\
         auth_password = \"auth-pass-1\"\npriv_protocol = \"aes\"\npriv_password = \"priv-pass-1\"\n",
        dirs.join(", ")
    );
    let cfg = tributary_agent::config::parse(&text, std::path::Path::new("agent.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut driver = Driver::build(&cfg.devices[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    poll(&mut driver).await?;
    let snmptrap = netsnmp("snmptrap")?;
    let v3 = |user: &str, level: &str, auth: &str, trap: &str| {
        let mut c = Command::new(&snmptrap);
        c.args(["-v", "3", "-e", engine, "-u", user, "-l", level]);
        if level != "noAuthNoPriv" {
            c.args(["-a", "SHA-256", "-A", auth]);
        }
        if level == "authPriv" {
            c.args(["-x", "AES", "-X", "priv-pass-1"]);
        }
        c.args([&target, "", trap, "1.3.6.1.2.1.2.2.1.1.9", "i", "9"]);
        c
    };
    // linkDown, as configured: stored.
    ensure!(run(&mut v3(
        "trapper",
        "authPriv",
        "auth-pass-1",
        "1.3.6.1.6.3.1.1.5.3"
    ))?);
    // Refused: a wrong password, an unknown user, below the user's level.
    ensure!(run(&mut v3(
        "trapper",
        "authPriv",
        "wrong-pass-1",
        "1.3.6.1.6.3.1.1.5.4"
    ))?);
    ensure!(run(&mut v3(
        "intruder",
        "authPriv",
        "auth-pass-1",
        "1.3.6.1.6.3.1.1.5.4"
    ))?);
    ensure!(run(&mut v3(
        "trapper",
        "noAuthNoPriv",
        "",
        "1.3.6.1.6.3.1.1.5.4"
    ))?);
    // coldStart, authPriv again: stored (the engine's clock moves forward).
    ensure!(run(&mut v3(
        "trapper",
        "authPriv",
        "auth-pass-1",
        "1.3.6.1.6.3.1.1.5.1"
    ))?);
    // A v2c inform, acknowledged once queued: everything above is handled.
    ensure!(run(Command::new(netsnmp("snmpinform")?).args([
        "-v",
        "2c",
        "-c",
        "public",
        "-r",
        "2",
        "-t",
        "3",
        &target,
        "",
        "1.3.6.1.6.3.1.1.5.4",
    ]))?);
    let readings = poll(&mut driver).await?;
    let events: Vec<String> = readings
        .iter()
        .filter(|r| r.series.labels.get("snmpTrapOID") == Some(&*r.series.metric))
        .map(|r| r.series.metric.to_string())
        .collect();
    assert_eq!(events, ["linkDown", "coldStart", "linkUp"]);
    let rejected = |cause: &str| {
        readings
            .iter()
            .find(|r| {
                &*r.series.metric == "snmp_trap_rejected_total"
                    && r.series.labels.get("cause") == Some(cause)
            })
            .map(|r| r.value.clone())
    };
    assert_eq!(
        rejected("auth"),
        Some(Value::I64(2)),
        "wrong password, noAuthNoPriv"
    );
    assert_eq!(rejected("user"), Some(Value::I64(1)), "unknown user");
    let index = readings
        .iter()
        .find(|r| &*r.series.metric == "ifIndex")
        .map(|r| r.value.clone());
    assert_eq!(index, Some(Value::I64(9)));
    Ok(())
}

/// SNMPv3 informs from net-snmp's `snmpinform`: the receiver is the
/// authoritative engine, so `snmpinform` discovers its engine id, boots and
/// time (a usmStatsUnknownEngineIDs Report), sends the inform authPriv
/// with keys localized to that id, and exits 0 only on an authenticated,
/// encrypted Response. Each of two users works; a wrong password is
/// counted as `auth` and not acknowledged. The engine's boots are kept in
/// the spool directory, one more at each start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_informs_from_net_snmp() -> Result<()> {
    let dir = tributary_tests::process::TestDir::new("snmp-trap-v3-inform")?;
    let port = free_udp_port()?;
    let target = format!("127.0.0.1:{port}");
    let text = format!(
        "id = \"inform-test\"\ncollectors = [\"http://127.0.0.1:1\"]\n\n[spool]\ndir = {:?}\n\n\
         [[devices]]\nname = \"informs\"\ndriver = \"snmp_trap\"\ninterval = \"1s\"\n\
         listen = \"{target}\"\nmibs = []\n\
         users = [{{ user = \"informer\", auth_protocol = \"sha\", auth_password = \"auth-pass-2\", \
         priv_protocol = \"aes\", priv_password = \"priv-pass-2\" }}, \
         {{ user = \"second\", auth_protocol = \"sha256\", auth_password = \"auth-pass-3\" }}]\n",
        dir.path().display().to_string()
    );
    let cfg = tributary_agent::config::parse(&text, &dir.path().join("agent.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut driver = Driver::build(&cfg.devices[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    poll(&mut driver).await?;
    let engine = tributary_agent::drivers::snmp_trap::own_engine_id("inform-test", "informs");
    let hex: String = engine.iter().map(|b| format!("{b:02x}")).collect();
    let boots_file = dir.path().join(format!("snmp_trap-{hex}.boots"));
    ensure!(
        std::fs::read_to_string(&boots_file)?.trim() == "1",
        "first start: boots 1"
    );

    let snmpinform = netsnmp("snmpinform")?;
    let netsnmp_state = dir.path().join("net-snmp");
    std::fs::create_dir_all(&netsnmp_state)?;
    let inform = |user: &str, level: &str, auth: (&str, &str), n: &str| {
        let mut c = Command::new(&snmpinform);
        // net-snmp keeps its own engine's state in a file; tests running
        // net-snmp commands at once would read each other's half-written
        // one (and then never send).
        c.env("SNMP_PERSISTENT_DIR", &netsnmp_state);
        c.args([
            "-v", "3", "-u", user, "-l", level, "-a", auth.0, "-A", auth.1,
        ]);
        if level == "authPriv" {
            c.args(["-x", "AES", "-X", "priv-pass-2"]);
        }
        c.args(["-r", "0", "-t", "3", &target, "", "1.3.6.1.6.3.1.1.5.3"]);
        c.args(["1.3.6.1.2.1.2.2.1.1.5", "i", n]);
        c
    };
    ensure!(
        run(&mut inform(
            "informer",
            "authPriv",
            ("SHA", "auth-pass-2"),
            "5"
        ))?,
        "the authPriv inform was not acknowledged"
    );
    ensure!(
        run(&mut inform(
            "second",
            "authNoPriv",
            ("SHA-256", "auth-pass-3"),
            "6"
        ))?,
        "the second user's authNoPriv inform was not acknowledged"
    );
    ensure!(
        !run(&mut inform(
            "informer",
            "authPriv",
            ("SHA", "wrong-pass-2"),
            "7"
        ))?,
        "an inform with the wrong password was acknowledged"
    );
    let readings = poll(&mut driver).await?;
    let index: Vec<Value> = readings
        .iter()
        .filter(|r| r.series.metric.ends_with("1.3.6.1.2.1.2.2.1.1.5"))
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(index, [Value::I64(5), Value::I64(6)], "each inform once");
    let count = |metric: &str, cause: &str| {
        readings
            .iter()
            .find(|r| &*r.series.metric == metric && r.series.labels.get("cause") == Some(cause))
            .map(|r| r.value.clone())
    };
    assert_eq!(
        count("snmp_trap_rejected_total", "auth"),
        Some(Value::I64(1)),
        "the wrong password"
    );
    assert_eq!(
        count("snmp_trap_rejected_total", "user"),
        Some(Value::I64(0))
    );
    assert_eq!(
        readings
            .iter()
            .find(|r| &*r.series.metric == "snmp_trap_informs_repeated_total")
            .map(|r| r.value.clone()),
        Some(Value::I64(0))
    );
    // Each snmpinform process discovered this receiver's engine first.
    assert_eq!(
        readings
            .iter()
            .find(|r| &*r.series.metric == "snmp_trap_discoveries_total")
            .map(|r| r.value.clone()),
        Some(Value::I64(3)),
        "one discovery per snmpinform"
    );
    // A restart (the device built again) counts one more boot, and informs
    // still work against the new boots.
    drop(driver);
    let mut driver = Driver::build(&cfg.devices[0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    eventually_bound(&mut driver).await?;
    ensure!(
        std::fs::read_to_string(&boots_file)?.trim() == "2",
        "second start: boots 2"
    );
    ensure!(run(&mut inform(
        "informer",
        "authPriv",
        ("SHA", "auth-pass-2"),
        "8"
    ))?);
    // The passwords are secrets, inside `users` too.
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text)?;
    let (_, shown) =
        tributary_agent::config::effective(&path, &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        !shown.contains("pass-2") && !shown.contains("pass-3") && shown.contains("informer"),
        "{shown}"
    );
    Ok(())
}

/// Polls until the socket is bound (the port of a dropped receiver is free
/// again at once, the task aborted).
async fn eventually_bound(driver: &mut Driver) -> Result<()> {
    for _ in 0..50 {
        if poll(driver).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the receiver never bound its port again")
}
