//! The receiver's SNMPv3 engine state: its own engine's boots and time
//! window, and the sending engines it keeps keys and clocks for (only once
//! they authenticated). (Messages built with the SNMP driver's USM codec.)

use std::time::{Duration, Instant};

use super::decode::{SNMP_TRAP_OID_0, SYS_UPTIME_0};
use super::*;
use crate::drivers::DriverConfig;
use crate::drivers::snmp::ber::{self, constructed, tag, tlv};
use crate::drivers::snmp::usm::{self, Keys, Outgoing};
use crate::drivers::testing::device;

fn trap_config(body: &str) -> SnmpTrapConfig {
    match device(&format!(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:0\"\nmibs = []\n{body}"
    )) {
        Ok(DriverConfig::SnmpTrap(t)) => t,
        other => panic!("{other:?}"),
    }
}

/// A v3 trap from `engine` by `user`, authenticated with `password` (at
/// the user's protocol) or not at all.
fn v3_trap(cfg: &SnmpTrapConfig, engine: &[u8], user: &str, password: Option<&str>) -> Vec<u8> {
    let list = tlv(
        tag::SEQUENCE,
        &[
            constructed(
                tag::SEQUENCE,
                &[&ber::oid(SYS_UPTIME_0), &tlv(tag::TIMETICKS, &[1])],
            ),
            constructed(
                tag::SEQUENCE,
                &[
                    &ber::oid(SNMP_TRAP_OID_0),
                    &ber::oid(&[1, 3, 6, 1, 6, 3, 1, 1, 5, 3]),
                ],
            ),
        ]
        .concat(),
    );
    let pdu = constructed(
        tag::TRAP_V2,
        &[&ber::int(5), &ber::int(0), &ber::int(0), &list],
    );
    let protocol = cfg
        .users
        .iter()
        .find_map(|u| u.auth.as_ref().map(|(p, _)| *p))
        .expect("a user with auth");
    let keys = password.map(|pw| Keys::new((protocol, pw), None, engine));
    usm::encode(&Outgoing {
        msg_id: 9,
        engine_id: engine,
        boots: 3,
        time: 100,
        user: user.as_bytes(),
        context: b"",
        context_engine: None,
        keys: keys.as_ref(),
        salt: [0; 8],
        pdu: &pdu,
    })
}

#[test]
fn spoofed_engines_take_no_place_and_localize_at_most_once_a_second() {
    let cfg = trap_config(
        "user = \"u\"\nauth_password = \"longenough\"\nusers = [{ user = \"open\" }]\n",
    );
    let start = Instant::now();
    let own = engine::OwnEngine::new(own_engine_id("a", "d"), 1, cfg.users.len(), start);
    let mut v3 = v3::V3::new(own, start);
    let spoofed = v3_trap(
        &cfg,
        &[0x80, 0, 0, 0, 5, 1, 1],
        "u",
        Some("not-the-password"),
    );
    assert!(v3.open(&cfg, &spoofed, start).is_err(), "a wrong digest");
    assert_eq!(v3.engines_kept(), 0, "an engine that never authenticated");
    let genuine = v3_trap(&cfg, &[0x80, 0, 0, 0, 5, 2, 2], "u", Some("longenough"));
    let refused = v3
        .open(&cfg, &genuine, start)
        .err()
        .expect("over the limit");
    assert!(
        refused.why.contains("one key localization a second"),
        "{}",
        refused.why
    );
    assert_eq!(v3.engines_kept(), 0);
    let later = start + Duration::from_millis(1_100);
    let accepted = v3.open(&cfg, &genuine, later).ok().expect("authenticated");
    assert_eq!(accepted.notification.version, 3);
    assert_eq!(v3.engines_kept(), 1, "kept once authenticated");
    assert!(
        v3.open(&cfg, &genuine, later).is_ok(),
        "a known engine needs no new localization"
    );
    let open = v3_trap(&cfg, &[0x80, 0, 0, 0, 5, 3, 3], "open", None);
    assert!(v3.open(&cfg, &open, later).is_ok(), "noAuthNoPriv");
    assert_eq!(v3.engines_kept(), 1, "noAuth users keep no engine state");
}

#[test]
fn the_own_engine_keeps_its_boots_and_its_time_window() {
    let id = own_engine_id("agent-1", "traps");
    assert_eq!(id, own_engine_id("agent-1", "traps"), "stable");
    assert_ne!(id, own_engine_id("agent-1", "traps-2"), "per device");
    assert_eq!(&id[..5], &[0x80, 0, 0, 0, 5], "RFC 3411 format 5");
    assert_eq!(id.len(), 17);
    let dir = std::env::temp_dir().join(format!("tributary-trap-boots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    assert_eq!(engine::next_boots(Some(&dir), &id), 1);
    assert_eq!(engine::next_boots(Some(&dir), &id), 2);
    std::fs::write(engine::boots_path(&dir, &id), "garbage").expect("write");
    assert_eq!(
        engine::next_boots(Some(&dir), &id),
        engine::MAX_BOOTS,
        "a corrupt file: the maximum, never a boots value used before"
    );
    assert_eq!(engine::next_boots(None, &id), 1);
    // A read error other than a missing file: locked at the maximum, and
    // the file left alone (a directory where the file should be).
    let other = own_engine_id("agent-1", "unreadable");
    let path = engine::boots_path(&dir, &other);
    std::fs::create_dir_all(path.join("kept")).expect("a directory in its place");
    assert_eq!(engine::next_boots(Some(&dir), &other), engine::MAX_BOOTS);
    assert!(
        path.join("kept").is_dir(),
        "an unreadable boots file is not overwritten"
    );
    assert!(
        !path.with_extension("boots.tmp").exists(),
        "nothing written"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let start = Instant::now();
    let own = engine::OwnEngine::new(id, 7, 1, start);
    let later = start + Duration::from_secs(1_000);
    assert!(own.timely(7, 1_000, later));
    assert!(own.timely(7, 1_150, later) && own.timely(7, 850, later));
    assert!(!own.timely(7, 849, later), "older than the window");
    assert!(!own.timely(7, 1_151, later), "ahead of the window");
    assert!(!own.timely(6, 1_000, later), "another boot");
    let maxed = engine::OwnEngine::new(vec![0x80, 0, 0, 0, 5, 1], engine::MAX_BOOTS, 0, start);
    assert!(
        !maxed.timely(engine::MAX_BOOTS, 0, start),
        "boots at the maximum"
    );
}

/// Two receivers with one own engine id would share its boots file (and
/// `.boots.tmp`) and the keys localized to it.
#[test]
fn two_receivers_may_not_share_an_own_engine_id() {
    let head = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";
    let receiver = |name: &str, port: u16, engine: &str| {
        format!(
            "[[devices]]\nname = \"{name}\"\ninterval = \"1s\"\ndriver = \"snmp_trap\"\n\
             listen = \"127.0.0.1:{port}\"\nuser = \"u\"\nauth_password = \"longenough\"\n{engine}"
        )
    };
    let parse = |text: String| {
        crate::config::parse(&text, std::path::Path::new("conf/agent.toml"))
            .map_err(|e| e.to_string())
    };
    let same = "local_engine_id = \"0x80000000050a0b0c\"\n";
    let e = parse(format!(
        "{head}{}{}",
        receiver("traps-a", 9162, same),
        receiver("traps-b", 9163, same)
    ))
    .expect_err("one engine id twice");
    assert!(
        e.contains("\"traps-a\"") && e.contains("\"traps-b\"") && e.contains("conf/agent.toml:"),
        "names both devices and where: {e}"
    );
    // A configured id equal to another receiver's derived one.
    let derived = crate::drivers::snmp::value::hex(&own_engine_id("edge-1", "traps-a"), "");
    let e = parse(format!(
        "{head}{}{}",
        receiver("traps-a", 9162, ""),
        receiver(
            "traps-b",
            9163,
            &format!("local_engine_id = \"0x{derived}\"\n")
        )
    ))
    .expect_err("a configured id equal to a derived one");
    assert!(e.contains("\"traps-a\" and \"traps-b\""), "{e}");
    assert!(
        parse(format!(
            "{head}{}{}",
            receiver("traps-a", 9162, ""),
            receiver("traps-b", 9163, "")
        ))
        .is_ok(),
        "derived ids differ by device"
    );
}
