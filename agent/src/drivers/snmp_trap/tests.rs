//! Notifications built byte by byte: decoded, checked, acknowledged; and
//! the settings' errors. (Against net-snmp's `snmptrap`/`snmpinform`:
//! tests/tests/drivers_snmp_trap.rs.)

use super::decode::{SNMP_TRAP_OID_0, SYS_UPTIME_0};
use super::*;
use crate::drivers::DriverConfig;
use crate::drivers::snmp::ber::{self, SnmpValue, constructed, tag, tlv};
use crate::drivers::testing::device;

const LINK_DOWN: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 5, 3];
const IF_OPER_STATUS_3: &[u32] = &[1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 3];

fn varbind(oid: &[u32], value: &[u8]) -> Vec<u8> {
    constructed(tag::SEQUENCE, &[&ber::oid(oid), value])
}

fn v2_message(kind: u8, community: &[u8], varbinds: &[Vec<u8>]) -> Vec<u8> {
    let list = tlv(tag::SEQUENCE, &varbinds.concat());
    let pdu = constructed(kind, &[&ber::int(77), &ber::int(0), &ber::int(0), &list]);
    constructed(
        tag::SEQUENCE,
        &[&ber::int(1), &ber::octets(community), &pdu],
    )
}

fn link_down(kind: u8) -> Vec<u8> {
    v2_message(
        kind,
        b"public",
        &[
            varbind(SYS_UPTIME_0, &tlv(tag::TIMETICKS, &[0x01, 0x00])),
            varbind(SNMP_TRAP_OID_0, &ber::oid(LINK_DOWN)),
            varbind(IF_OPER_STATUS_3, &ber::int(2)),
        ],
    )
}

#[test]
fn a_v2c_trap_decodes_to_its_oid_and_varbinds() {
    let n = decode(&link_down(tag::TRAP_V2)).expect("a trap");
    assert_eq!(n.version, 1);
    assert_eq!(n.community, b"public");
    assert_eq!(n.trap_oid, LINK_DOWN);
    assert_eq!(n.uptime, 256);
    assert_eq!(
        n.varbinds,
        vec![(IF_OPER_STATUS_3.to_vec(), SnmpValue::Int(2))]
    );
    assert_eq!(n.inform, None);
}

#[test]
fn an_inform_is_acknowledged_with_its_id_and_varbinds() {
    let message = link_down(tag::INFORM);
    let n = decode(&message).expect("an inform");
    let (id, list) = n.inform.clone().expect("an inform");
    assert_eq!(id, 77);
    let ack = response(n.version, &n.community, id, &list);
    let (version, community, pdu) = ber::decode_v2c(&ack).expect("a response");
    assert_eq!((version, community.as_slice()), (1, b"public".as_slice()));
    assert_eq!(
        (pdu.kind, pdu.request_id, pdu.error_status),
        (tag::RESPONSE, 77, 0)
    );
    assert_eq!(pdu.varbinds.len(), 3, "every varbind echoed");
    assert_eq!(pdu.varbinds[1].1, SnmpValue::Oid(LINK_DOWN.to_vec()));
}

#[test]
fn a_v1_trap_is_translated_as_rfc_3584_says() {
    let v1 = |generic: i64, specific: i64| {
        let list = tlv(
            tag::SEQUENCE,
            &varbind(&[1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 3], &ber::int(3)),
        );
        let pdu = constructed(
            tag::TRAP_V1,
            &[
                &ber::oid(&[1, 3, 6, 1, 4, 1, 8072]),
                &tlv(tag::IP_ADDRESS, &[10, 0, 0, 9]),
                &ber::int(generic),
                &ber::int(specific),
                &tlv(tag::TIMETICKS, &[0x10]),
                &list,
            ],
        );
        constructed(tag::SEQUENCE, &[&ber::int(0), &ber::octets(b"c"), &pdu])
    };
    let n = decode(&v1(2, 0)).expect("linkDown");
    assert_eq!((n.version, n.uptime), (0, 16));
    assert_eq!(n.trap_oid, LINK_DOWN);
    // The varbind, then the agent-addr as snmpTrapAddress.0 (§3.1 (4)).
    assert_eq!(n.varbinds.len(), 2);
    assert_eq!(
        n.varbinds[1],
        (
            super::decode::SNMP_TRAP_ADDRESS_0.to_vec(),
            SnmpValue::IpAddress([10, 0, 0, 9])
        )
    );
    let n = decode(&v1(6, 42)).expect("enterprise specific");
    assert_eq!(n.trap_oid, [1, 3, 6, 1, 4, 1, 8072, 0, 42]);
}

#[test]
fn what_is_not_a_notification_says_what_it_is() {
    let get = constructed(
        tag::SEQUENCE,
        &[
            &ber::int(1),
            &ber::octets(b"public"),
            &ber::encode_pdu(tag::GET, 1, 0, 0, &[SYS_UPTIME_0]),
        ],
    );
    let e = decode(&get).expect_err("a get").to_string();
    assert!(e.contains("not a notification (PDU type 0xa0)"), "{e}");
    // The first two varbinds must be sysUpTime.0 and snmpTrapOID.0.
    let no_oid = v2_message(
        tag::TRAP_V2,
        b"public",
        &[varbind(SYS_UPTIME_0, &tlv(tag::TIMETICKS, &[1]))],
    );
    let e = decode(&no_oid).expect_err("no trap oid").to_string();
    assert!(e.contains("snmpTrapOID.0"), "{e}");
    let v3 = constructed(tag::SEQUENCE, &[&ber::int(3)]);
    let e = decode(&v3).expect_err("v3").to_string();
    assert!(e.contains("an SNMPv3 message"), "{e}");
    let many: Vec<Vec<u8>> = [
        varbind(SYS_UPTIME_0, &tlv(tag::TIMETICKS, &[1])),
        varbind(SNMP_TRAP_OID_0, &ber::oid(LINK_DOWN)),
    ]
    .into_iter()
    .chain((0..257).map(|_| varbind(IF_OPER_STATUS_3, &ber::null())))
    .collect();
    let e = decode(&v2_message(tag::TRAP_V2, b"public", &many))
        .expect_err("too many varbinds")
        .to_string();
    assert!(e.contains("257 varbinds: more than the 256"), "{e}");
    for cut in 0..link_down(tag::TRAP_V2).len() {
        assert!(
            decode(&link_down(tag::TRAP_V2)[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn settings_and_their_errors() {
    let d = device(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:9162\"\ncommunity = \"s3cret\"\n\
         communities = [\"other-s3cret\"]\nsenders = [{ address = \"10.0.0.5\", name = \"sw-5\" }]\n",
    )
    .expect("valid");
    let DriverConfig::SnmpTrap(t) = d else {
        panic!("not snmp_trap: {d:?}");
    };
    assert_eq!(t.listen, "127.0.0.1:9162".parse().expect("addr"));
    assert_eq!(t.communities, ["s3cret", "other-s3cret"]);
    assert_eq!(
        t.senders
            .get(&"10.0.0.5".parse().expect("ip"))
            .map(String::as_str),
        Some("sw-5")
    );
    let shown = format!("{t:?}");
    assert!(!shown.contains("s3cret"), "a community in Debug: {shown}");
    let d = device(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:9162\"\nuser = \"trapper\"\n\
         auth_protocol = \"sha256\"\nauth_password = \"auth-s3cret\"\npriv_password = \"priv-s3cret\"\n\
         sender_engine_id = \"0x8000000001020304\"\nlocal_engine_id = \"0x80000000050a0b0c\"\n\
         users = [{ user = \"ops\", auth_protocol = \"sha512\", auth_password = \"ops-auth-s3cret\" }, \
         { user = \"noc\", auth_password = \"noc-auth-s3cret\", priv_protocol = \"aes\", priv_password = \"noc-priv-s3cret\" }]\n",
    )
    .expect("valid");
    let DriverConfig::SnmpTrap(t) = d else {
        panic!("not snmp_trap: {d:?}");
    };
    let names: Vec<&str> = t.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["trapper", "ops", "noc"]);
    assert_eq!(
        t.local_engine_id.as_deref(),
        Some(&[0x80, 0, 0, 0, 5, 0x0a, 0x0b, 0x0c][..])
    );
    let u = &t.users[0];
    assert_eq!(
        u.sender_engine_id.as_deref(),
        Some(&[0x80, 0, 0, 0, 1, 2, 3, 4][..])
    );
    assert_eq!(
        t.users[1].auth.as_ref().map(|(p, _)| *p),
        Some(crate::drivers::snmp::SnmpAuthProtocol::Sha512)
    );
    assert!(t.users[1].privacy.is_none() && t.users[2].privacy.is_some());
    assert!(u.auth.is_some() && u.privacy.is_some() && t.communities.is_empty());
    let shown = format!("{t:?}");
    assert!(!shown.contains("s3cret"), "a password in Debug: {shown}");
    assert_eq!(t.mibs, DEFAULT_MIBS);
    assert!(!t.mibs_written);
    assert_eq!(t.max_pending, DEFAULT_MAX_PENDING);
    for (body, expected) in [
        (
            "listen = \"nowhere\"\ncommunity = \"c\"\n",
            "listen: invalid address \"nowhere\"",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"\"\n",
            "community: must not be empty",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"c\"\nmibs = [\"IF MIB\"]\n",
            "is not a MIB module name",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"c\"\nmax_pending = 0\n",
            "max_pending: 0 is out of range",
        ),
        (
            "listen = \"127.0.0.1:9162\"\n",
            "set `community` (or `community_file`), `communities`, or an SNMPv3 `user` or `users`",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"c\"\nauth_password = \"longenough\"\n",
            "auth_password: `auth_password` needs `user`",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nuser = \"u\"\nauth_password = \"short\"\n",
            "auth_password: must be at least 8 characters",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nuser = \"u\"\nauth_password = \"longenough\"\nlocal_engine_id = \"0x12\"\n",
            "local_engine_id: \"0x12\" is not an engine id",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nuser = \"u\"\nauth_password = \"longenough\"\nsender_engine_id = \"0x12\"\n",
            "sender_engine_id: \"0x12\" is not an engine id",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nusers = [{ user = \"u\", auth_password = \"short\" }]\n",
            "users[0].auth_password: must be at least 8 characters",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nusers = [{ user = \"u\", priv_password = \"longenough\" }]\n",
            "users[0].priv_password: privacy needs authentication",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nuser = \"u\"\nusers = [{ user = \"u\" }]\n",
            "users[0].user: user \"u\" is listed twice",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nusers = [{ user = \"u\", auth_pasword = \"longenough\" }]\n",
            "auth_pasword",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunities = [\"\"]\n",
            "communities: a community must not be empty",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"c\"\nsenders = [{ address = \"sw\", name = \"x\" }]\n",
            "senders.address: \"sw\" is not an IP address",
        ),
        (
            "listen = \"127.0.0.1:9162\"\ncommunity = \"c\"\nsenders = [{ address = \"10.0.0.1\", name = \"a\" }, { address = \"10.0.0.1\", name = \"b\" }]\n",
            "10.0.0.1 is listed twice (also as \"a\")",
        ),
        (
            "listen = \"127.0.0.1:9162\"\nuser = \"u\"\nauth_password = \"longenough\"\nusers = [{ user = \"v\", sender_engine_id = \"0x8000000001020304\" }]\nlocal_engine_id = \"0x8000000001020304\"\n",
            "local_engine_id: is user \"v\"'s `sender_engine_id`",
        ),
    ] {
        let e = device(&format!("driver = \"snmp_trap\"\n{body}"))
            .expect_err(body)
            .to_string();
        assert!(e.contains(expected), "{body}: {e}");
    }
}

/// `engine_id` once filtered the sender's engine; an old config must not
/// silently become this receiver's own engine id.
#[test]
fn a_device_level_engine_id_is_refused_naming_both_keys() {
    let e = device(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:9162\"\nuser = \"u\"\n\
         auth_password = \"longenough\"\nengine_id = \"0x8000000001020304\"\n",
    )
    .expect_err("engine_id is refused");
    assert!(
        e.contains("conf/agent.toml:10: devices[0].engine_id"),
        "file:line and key: {e}"
    );
    assert!(
        e.contains("`sender_engine_id`") && e.contains("`local_engine_id`"),
        "says which key to use: {e}"
    );
}

#[tokio::test]
async fn a_trap_becomes_readings_stamped_when_it_arrived() {
    let cfg = match device(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:0\"\ncommunity = \"public\"\nmibs = []\n",
    )
    .expect("valid")
    {
        DriverConfig::SnmpTrap(t) => t,
        other => panic!("{other:?}"),
    };
    // A free port (the driver reports no address it bound).
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let mut cfg = cfg;
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut d = SnmpTrapDriver::new(&cfg, "traps");
    let first = d.poll().await.expect("bound");
    assert_eq!(first.len(), 9, "the counts: {first:?}");
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("sender");
    let before = now_ns();
    sender
        .send_to(&link_down(tag::TRAP_V2), cfg.listen)
        .await
        .expect("sent");
    sender.send_to(b"garbage", cfg.listen).await.expect("sent");
    let mut wrong = link_down(tag::TRAP_V2);
    // "public" → "publiC": the community no longer matches.
    let at = wrong
        .windows(6)
        .position(|w| w == b"public")
        .expect("community");
    wrong[at + 5] = b'C';
    sender.send_to(&wrong, cfg.listen).await.expect("sent");
    sender
        .send_to(&link_down(tag::INFORM), cfg.listen)
        .await
        .expect("sent");
    let mut ack = [0u8; 512];
    let (n, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sender.recv_from(&mut ack),
    )
    .await
    .expect("an acknowledgement")
    .expect("received");
    let (_, _, pdu) = ber::decode_v2c(&ack[..n]).expect("a response");
    assert_eq!((pdu.kind, pdu.request_id), (tag::RESPONSE, 77));
    let readings = d.poll().await.expect("polled");
    let shown: Vec<(String, String, Option<String>, &Value)> = readings
        .iter()
        .map(|r| {
            (
                r.series.device.to_string(),
                r.series.metric.to_string(),
                r.series.labels.get("cause").map(str::to_owned),
                &r.value,
            )
        })
        .collect();
    let (sender, here) = ("127.0.0.1".to_owned(), "traps".to_owned());
    let (trap, varbind) = (
        "1.3.6.1.6.3.1.1.5.3".to_owned(),
        "1.3.6.1.2.1.2.2.1.8.3".to_owned(),
    );
    let cause = |c: &str| Some(c.to_owned());
    assert_eq!(
        shown,
        vec![
            (sender.clone(), trap.clone(), None, &Value::I64(1)),
            (sender.clone(), varbind.clone(), None, &Value::I64(2)),
            (sender.clone(), trap.clone(), None, &Value::I64(1)),
            (sender, varbind, None, &Value::I64(2)),
            (
                here.clone(),
                "snmp_trap_rejected_total".into(),
                cause("community"),
                &Value::I64(1)
            ),
            (
                here.clone(),
                "snmp_trap_rejected_total".into(),
                cause("malformed"),
                &Value::I64(1)
            ),
            (
                here.clone(),
                "snmp_trap_rejected_total".into(),
                cause("version"),
                &Value::I64(0)
            ),
            (
                here.clone(),
                "snmp_trap_rejected_total".into(),
                cause("user"),
                &Value::I64(0)
            ),
            (
                here.clone(),
                "snmp_trap_rejected_total".into(),
                cause("auth"),
                &Value::I64(0)
            ),
            (
                here.clone(),
                "snmp_trap_dropped_total".into(),
                cause("rate"),
                &Value::I64(0)
            ),
            (
                here.clone(),
                "snmp_trap_dropped_total".into(),
                cause("queue"),
                &Value::I64(0)
            ),
            (
                here.clone(),
                "snmp_trap_informs_repeated_total".into(),
                None,
                &Value::I64(0)
            ),
            (
                here,
                "snmp_trap_discoveries_total".into(),
                None,
                &Value::I64(0)
            ),
        ]
    );
    assert_eq!(
        readings[1].series.labels.get("snmpTrapOID"),
        Some(trap.as_str())
    );
    assert!(readings[0].ts_ns >= before, "stamped on arrival");
    assert_eq!(
        readings[4].ts_ns, 0,
        "the counts are stamped by the scheduler"
    );
}

/// A free loopback UDP address, and the driver listening there with
/// `extra` settings, bound by its first poll.
async fn listening(extra: &str) -> (SnmpTrapDriver, std::net::SocketAddr) {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let cfg = match device(&format!(
        "driver = \"snmp_trap\"\nlisten = \"{addr}\"\ncommunity = \"public\"\nmibs = []\n{extra}"
    ))
    .expect("valid")
    {
        DriverConfig::SnmpTrap(t) => t,
        other => panic!("{other:?}"),
    };
    let mut d = SnmpTrapDriver::new(&cfg, "traps");
    d.poll().await.expect("bound");
    (d, addr)
}

/// The value of the count `metric` (with `cause`, if any).
fn count_of(readings: &[Reading], metric: &str, cause: Option<&str>) -> i64 {
    match readings
        .iter()
        .find(|r| &*r.series.metric == metric && r.series.labels.get("cause") == cause)
        .map(|r| &r.value)
    {
        Some(Value::I64(n)) => *n,
        other => panic!("{metric} {cause:?}: {other:?} in {readings:?}"),
    }
}

/// An inform sent again with the same request id (its acknowledgement
/// lost): acknowledged both times, stored once.
#[tokio::test]
async fn an_inform_sent_again_is_acknowledged_again_and_queued_once() {
    let (mut d, addr) = listening("").await;
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("sender");
    let mut ack = [0u8; 512];
    for _ in 0..3 {
        sender
            .send_to(&link_down(tag::INFORM), addr)
            .await
            .expect("sent");
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            sender.recv_from(&mut ack),
        )
        .await
        .expect("an acknowledgement")
        .expect("received");
        let (_, _, pdu) = ber::decode_v2c(&ack[..n]).expect("a response");
        assert_eq!((pdu.kind, pdu.request_id), (tag::RESPONSE, 77));
    }
    let readings = d.poll().await.expect("polled");
    let events = readings
        .iter()
        .filter(|r| r.series.metric.starts_with("1.3.6.1.6"))
        .count();
    assert_eq!(events, 1, "stored once: {readings:?}");
    assert_eq!(
        count_of(&readings, "snmp_trap_informs_repeated_total", None),
        2
    );
}

/// Queued datagrams are bounded by bytes: what does not fit is dropped
/// and counted, what fits is kept.
#[tokio::test]
async fn the_queue_is_bounded_by_bytes_and_every_drop_counted() {
    let (mut d, addr) = listening("max_pending_bytes = \"64KiB\"\n").await;
    // A trap of about 1,000 bytes: a long string varbind.
    let big = v2_message(
        tag::TRAP_V2,
        b"public",
        &[
            varbind(SYS_UPTIME_0, &tlv(tag::TIMETICKS, &[1])),
            varbind(SNMP_TRAP_OID_0, &ber::oid(LINK_DOWN)),
            varbind(IF_OPER_STATUS_3, &ber::octets(&[b'x'; 1000])),
        ],
    );
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("sender");
    let sent = 100;
    let counts = d.receiver.as_ref().expect("bound").counts.clone();
    // In chunks of 10, each handled before the next goes (the socket's
    // buffer would drop a burst of 100 kB before the task sees it).
    for chunk in 1..=sent / 10 {
        for _ in 0..10 {
            sender.send_to(&big, addr).await.expect("sent");
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let queued = counts.pending_bytes.load(Ordering::Relaxed) / big.len();
                let dropped = counts.dropped_queue.load(Ordering::Relaxed) as usize;
                if queued + dropped >= chunk * 10 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the chunk handled");
    }
    let readings = d.poll().await.expect("polled");
    let queued = readings
        .iter()
        .filter(|r| &*r.series.device == "127.0.0.1" && r.series.metric.starts_with("1.3.6.1.6"))
        .count() as i64;
    let dropped = count_of(&readings, "snmp_trap_dropped_total", Some("queue"));
    assert_eq!(
        queued + dropped,
        sent as i64,
        "queued {queued}, dropped {dropped}"
    );
    assert!(
        queued * big.len() as i64 <= 64 * 1024,
        "{queued} of {} bytes queued",
        big.len()
    );
    assert!(queued > 0 && dropped > 0);
}

/// A sender over its rate is dropped before decoding, and counted: what
/// was sent is what was queued plus what was dropped.
#[tokio::test]
async fn a_flooding_sender_is_held_to_its_rate_and_every_drop_counted() {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let cfg = match device(&format!(
        "driver = \"snmp_trap\"\nlisten = \"127.0.0.1:{port}\"\ncommunity = \"public\"\nmibs = []\n\
         max_rate_per_sender = 1\n"
    ))
    .expect("valid")
    {
        DriverConfig::SnmpTrap(t) => t,
        other => panic!("{other:?}"),
    };
    let mut d = SnmpTrapDriver::new(&cfg, "traps");
    d.poll().await.expect("bound");
    let flood = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("flood");
    let sent = 50;
    for _ in 0..sent {
        flood
            .send_to(&link_down(tag::TRAP_V2), cfg.listen)
            .await
            .expect("sent");
    }
    // Another sender's inform, acknowledged once queued: everything the
    // flood sent before it has been handled by then.
    let other = tokio::net::UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("127.0.0.2");
    other
        .send_to(&link_down(tag::INFORM), cfg.listen)
        .await
        .expect("sent");
    let mut ack = [0u8; 512];
    tokio::time::timeout(std::time::Duration::from_secs(5), other.recv_from(&mut ack))
        .await
        .expect("an acknowledgement")
        .expect("received");
    let readings = d.poll().await.expect("polled");
    let from_flood = readings
        .iter()
        .filter(|r| &*r.series.device == "127.0.0.1" && r.series.metric.starts_with("1.3.6.1.6"))
        .count() as i64;
    let dropped = readings
        .iter()
        .find(|r| {
            &*r.series.metric == "snmp_trap_dropped_total"
                && r.series.labels.get("cause") == Some("rate")
        })
        .map(|r| r.value.clone());
    let Some(Value::I64(dropped)) = dropped else {
        panic!("no rate drop count: {readings:?}");
    };
    assert_eq!(
        from_flood + dropped,
        sent,
        "queued {from_flood}, dropped {dropped}"
    );
    assert!(
        dropped >= 1,
        "a burst of {sent} at a rate of 1/s all queued"
    );
}

/// The fuzz target's property (`agent/fuzz`, `snmp_notification`) on
/// stable: valid notifications with bytes flipped, cut or repeated decode
/// or fail, and an inform that decodes is acknowledged with a message that
/// decodes.
#[test]
fn mutated_notifications_decode_or_fail() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let seeds = [link_down(tag::TRAP_V2), link_down(tag::INFORM)];
    for round in 0..20_000 {
        let mut m = seeds[round % 2].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % m.len();
            match next() % 3 {
                0 => m[at] = next() as u8,
                1 => m.truncate(at.max(1)),
                _ => {
                    let b = m[at];
                    m.insert(at, b);
                }
            }
        }
        if let Ok(n) = decode(&m)
            && let Some((id, list)) = &n.inform
        {
            let ack = response(n.version, &n.community, *id, list);
            assert!(ber::decode_v2c(&ack).is_ok(), "round {round}: {m:02x?}");
        }
    }
}
