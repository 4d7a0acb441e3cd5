//! The SNMPv3 checks against a fake device on loopback that speaks real
//! BER: an honest engine (discovery, an authenticated time report, then
//! authPriv responses), and forgers that know no password or replay old
//! messages. Each forged case must fail the poll and leave the engine's
//! clock where authenticated messages put it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::super::SnmpDriver;
use super::super::ber::{self, tag};
use super::super::usm::{self, Keys, Outgoing, ScopedData};
use crate::drivers::snmp::{
    SnmpAuthProtocol, SnmpConfig, SnmpMetric, SnmpPrivProtocol, SnmpSecurity, SnmpV3,
};
use crate::reading::Value;

const ENGINE: &[u8] = b"\x80\x00\x1f\x88\x80fake-engine";
const BOOTS: u32 = 7;
const TIME: u32 = 5_000;
const USER: &str = "tuser";
const AUTH: &str = "authpass-1";
const PRIV: &str = "privpass-1";
const UPTIME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
const NOT_IN_TIME_WINDOW: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0];
const UNKNOWN_ENGINE_ID: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0];

/// How the fake device answers the GET once discovery and time
/// synchronization are done.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// authPriv Response, value 42, the request's ids.
    Honest,
    /// A device that knows no password: msgFlags without auth, a plaintext
    /// scoped PDU, the copied msgID and request-id 424242.
    ForgedPlain,
    /// As `ForgedPlain` but with the request's own request-id.
    ForgedPlainRightId,
    /// Authenticated and encrypted, but another request-id.
    WrongRequestId,
    /// Authenticated and encrypted, but a GET PDU instead of a Response.
    NotAResponse,
    /// Authenticated but not encrypted (authNoPriv to an authPriv user).
    NotEncrypted,
    /// An unauthenticated notInTimeWindow report claiming boots 1000.
    UnauthenticatedTimeReport,
    /// Authenticated, but from an earlier boot (a replay).
    OldBoots,
    /// Authenticated, but 151 s behind the engine's clock.
    OldTime,
    /// An unauthenticated unknownEngineID report the first time, then honest.
    UnknownEngineOnce,
    /// A forged plaintext answer, then the honest one.
    ForgedThenHonest,
    /// Authenticated and encrypted, in the context named "other".
    OtherContextName,
    /// Authenticated and encrypted, with another contextEngineID.
    OtherContextEngine,
}

struct Device {
    addr: SocketAddr,
    discoveries: Arc<AtomicUsize>,
    /// The engine's snmpEngineTime; a test may set it back to play an agent
    /// that lost its boot counter over a restart.
    time: Arc<AtomicU32>,
}

fn keys(privacy: bool) -> Keys {
    Keys::new(
        (SnmpAuthProtocol::Sha256, AUTH),
        privacy.then_some((SnmpPrivProtocol::Aes128, PRIV)),
        ENGINE,
    )
}

fn response_pdu(kind: u8, request_id: i32, value: i64) -> Vec<u8> {
    let vb = ber::constructed(tag::SEQUENCE, &[&ber::oid(UPTIME), &ber::int(value)]);
    let list = ber::tlv(tag::SEQUENCE, &vb);
    ber::constructed(
        kind,
        &[
            &ber::int(i64::from(request_id)),
            &ber::int(0),
            &ber::int(0),
            &list,
        ],
    )
}

fn report_pdu(request_id: i32, oid: &[u32]) -> Vec<u8> {
    let counter = ber::tlv(tag::COUNTER32, &[1]);
    let vb = ber::constructed(tag::SEQUENCE, &[&ber::oid(oid), &counter]);
    let list = ber::tlv(tag::SEQUENCE, &vb);
    ber::constructed(
        tag::REPORT,
        &[
            &ber::int(i64::from(request_id)),
            &ber::int(0),
            &ber::int(0),
            &list,
        ],
    )
}

struct Reply<'a> {
    msg_id: i32,
    engine: &'a [u8],
    boots: u32,
    time: u32,
    keys: Option<&'a Keys>,
    pdu: Vec<u8>,
    /// (contextEngineID when not `engine`, contextName).
    context: (Option<&'a [u8]>, &'a [u8]),
}

fn encode(r: Reply<'_>) -> Vec<u8> {
    usm::encode(&Outgoing {
        msg_id: r.msg_id,
        engine_id: r.engine,
        boots: r.boots,
        time: r.time,
        user: USER.as_bytes(),
        context: r.context.1,
        context_engine: r.context.0,
        keys: r.keys,
        salt: [9, 8, 7, 6, 5, 4, 3, 2],
        pdu: &r.pdu,
    })
}

/// Starts the fake device; it serves until the test's runtime ends.
async fn device(answer: Answer) -> Device {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let discoveries = Arc::new(AtomicUsize::new(0));
    let seen = discoveries.clone();
    let time = Arc::new(AtomicU32::new(TIME));
    let clock = time.clone();
    tokio::spawn(async move {
        let auth_priv = keys(true);
        let auth_only = keys(false);
        let mut buf = vec![0u8; 65_536];
        let mut unknown_sent = false;
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(m) = usm::decode(&buf[..n]) else {
                continue;
            };
            let now = clock.load(Ordering::SeqCst);
            let mut first: Option<Vec<u8>> = None;
            let reply = if m.usm.engine_id.is_empty() {
                seen.fetch_add(1, Ordering::SeqCst);
                encode(Reply {
                    msg_id: m.msg_id,
                    engine: ENGINE,
                    boots: BOOTS,
                    time: now,
                    keys: None,
                    pdu: report_pdu(0, UNKNOWN_ENGINE_ID),
                    context: (None, b""),
                })
            } else {
                let request = match &m.data {
                    ScopedData::Encrypted(enc) => match usm::decrypt(&auth_priv, &m.usm, enc) {
                        Ok((pdu, _)) => pdu,
                        Err(_) => continue,
                    },
                    ScopedData::Plain(pdu, _) => pdu.clone(),
                };
                let id = request.request_id;
                if m.usm.boots != BOOTS || m.usm.time.abs_diff(now) > 150 {
                    // RFC 3414: authenticated, at authNoPriv.
                    encode(Reply {
                        msg_id: m.msg_id,
                        engine: ENGINE,
                        boots: BOOTS,
                        time: now,
                        keys: Some(&auth_only),
                        pdu: report_pdu(id, NOT_IN_TIME_WINDOW),
                        context: (None, b""),
                    })
                } else {
                    let honest = |id| Reply {
                        msg_id: m.msg_id,
                        engine: ENGINE,
                        boots: BOOTS,
                        time: now,
                        keys: Some(&auth_priv),
                        pdu: response_pdu(tag::RESPONSE, id, 42),
                        context: (None, b""),
                    };
                    let reply = match answer {
                        Answer::Honest => honest(id),
                        Answer::ForgedPlain => Reply {
                            keys: None,
                            pdu: response_pdu(tag::RESPONSE, 424_242, 666),
                            ..honest(id)
                        },
                        Answer::ForgedPlainRightId => Reply {
                            keys: None,
                            pdu: response_pdu(tag::RESPONSE, id, 666),
                            ..honest(id)
                        },
                        Answer::WrongRequestId => honest(id.wrapping_add(1)),
                        Answer::NotAResponse => Reply {
                            pdu: response_pdu(tag::GET, id, 666),
                            ..honest(id)
                        },
                        Answer::NotEncrypted => Reply {
                            keys: Some(&auth_only),
                            ..honest(id)
                        },
                        Answer::UnauthenticatedTimeReport => Reply {
                            keys: None,
                            boots: 1000,
                            pdu: report_pdu(id, NOT_IN_TIME_WINDOW),
                            ..honest(id)
                        },
                        Answer::OldBoots => Reply {
                            boots: BOOTS - 1,
                            ..honest(id)
                        },
                        Answer::OldTime => Reply {
                            time: now - 151,
                            ..honest(id)
                        },
                        Answer::UnknownEngineOnce if !unknown_sent => {
                            unknown_sent = true;
                            Reply {
                                keys: None,
                                pdu: report_pdu(id, UNKNOWN_ENGINE_ID),
                                ..honest(id)
                            }
                        }
                        Answer::UnknownEngineOnce => honest(id),
                        Answer::OtherContextName => Reply {
                            context: (None, b"other"),
                            ..honest(id)
                        },
                        Answer::OtherContextEngine => Reply {
                            context: (Some(b"\x80\x00\x1f\x88\x80else"), b""),
                            ..honest(id)
                        },
                        Answer::ForgedThenHonest => {
                            first = Some(encode(Reply {
                                keys: None,
                                pdu: response_pdu(tag::RESPONSE, id, 666),
                                ..honest(id)
                            }));
                            honest(id)
                        }
                    };
                    encode(reply)
                }
            };
            if let Some(forged) = first {
                let _ = socket.send_to(&forged, peer).await;
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    Device {
        addr,
        discoveries,
        time,
    }
}

fn driver(addr: SocketAddr) -> SnmpDriver {
    SnmpDriver::new(
        &SnmpConfig {
            address: addr.to_string(),
            security: SnmpSecurity::V3(SnmpV3 {
                user: USER.into(),
                auth: Some((SnmpAuthProtocol::Sha256, AUTH.into())),
                privacy: Some((SnmpPrivProtocol::Aes128, PRIV.into())),
                context: String::new(),
            }),
            metrics: vec![SnmpMetric {
                name: "uptime".into(),
                oid: UPTIME.to_vec(),
                unit: String::new(),
                meaning: Default::default(),
            }],
            walks: vec![],
            max_repetitions: 10,
            retries: 0,
            lookups: vec![],
            drop_index: false,
            lookup_interval: crate::drivers::snmp::DEFAULT_LOOKUP_INTERVAL,
            pending: vec![],
        },
        Duration::from_secs(2),
    )
}

/// Polls once: the value read, or the poll's error message.
async fn poll(d: &mut SnmpDriver) -> Result<Value, String> {
    let samples = d.poll().await.map_err(|e| e.message)?;
    Ok(samples.into_iter().next().expect("one sample").value)
}

/// The engine clock the driver holds: (boots, time).
fn clock(d: &SnmpDriver) -> (u32, u32) {
    let e = d.engine.as_ref().expect("an engine");
    (e.boots, e.time)
}

#[tokio::test]
async fn an_honest_engine_is_read_after_an_authenticated_time_report() {
    let dev = device(Answer::Honest).await;
    let mut d = driver(dev.addr);
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    assert_eq!(clock(&d), (BOOTS, TIME));
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    assert_eq!(dev.discoveries.load(Ordering::SeqCst), 1);
}

/// The review's reproduction: flags 0x00, copied msgID, request-id 424242.
#[tokio::test]
async fn a_plaintext_answer_to_an_auth_priv_request_is_refused() {
    for answer in [Answer::ForgedPlain, Answer::ForgedPlainRightId] {
        let dev = device(answer).await;
        let e = poll(&mut driver(dev.addr)).await.expect_err("forged");
        assert!(
            e.ends_with(
                "GET 1.3.6.1.2.1.1.3.0: answer is not authenticated (msgFlags 0x00) but the user is configured with auth: refused"
            ),
            "{answer:?}: {e}"
        );
    }
}

#[tokio::test]
async fn an_authenticated_answer_must_be_the_response_to_this_request() {
    for (answer, expected) in [
        (Answer::WrongRequestId, "request-id"),
        (Answer::NotAResponse, "not a Response"),
        (
            Answer::NotEncrypted,
            "answer is not encrypted (msgFlags 0x01) but the user is configured with priv: refused",
        ),
    ] {
        let dev = device(answer).await;
        let e = poll(&mut driver(dev.addr)).await.expect_err("refused");
        assert!(e.contains(expected), "{answer:?}: {e}");
    }
}

/// RFC 3412 §7.2 step 12: a Response is in its request's context.
#[tokio::test]
async fn an_answer_in_another_context_is_refused() {
    for (answer, expected) in [
        (
            Answer::OtherContextName,
            "answer is in context (engine 80001f888066616b652d656e67696e65, name \"other\"), not the request's (engine 80001f888066616b652d656e67696e65, name \"\")",
        ),
        (
            Answer::OtherContextEngine,
            "answer is in context (engine 80001f8880656c7365, name \"\")",
        ),
    ] {
        let dev = device(answer).await;
        let e = poll(&mut driver(dev.addr)).await.expect_err("refused");
        assert!(e.contains(expected), "{answer:?}: {e}");
    }
}

#[tokio::test]
async fn an_unauthenticated_report_never_moves_the_clock() {
    let dev = device(Answer::UnauthenticatedTimeReport).await;
    let mut d = driver(dev.addr);
    let e = poll(&mut d).await.expect_err("refused");
    assert!(e.contains("refused as a source of time"), "{e}");
    assert_eq!(
        clock(&d),
        (BOOTS, TIME),
        "boots and time stay as authenticated"
    );
}

#[tokio::test]
async fn authenticated_answers_outside_the_time_window_are_refused() {
    for answer in [Answer::OldBoots, Answer::OldTime] {
        let dev = device(answer).await;
        let mut d = driver(dev.addr);
        let e = poll(&mut d).await.expect_err("stale");
        assert!(e.contains("outside the time window"), "{answer:?}: {e}");
        assert_eq!(
            clock(&d),
            (BOOTS, TIME),
            "{answer:?}: the clock never goes back"
        );
    }
}

#[tokio::test]
async fn an_unknown_engine_report_rediscovers_without_forgetting_the_clock() {
    let dev = device(Answer::UnknownEngineOnce).await;
    let mut d = driver(dev.addr);
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    assert_eq!(dev.discoveries.load(Ordering::SeqCst), 2);
    assert_eq!(clock(&d), (BOOTS, TIME));
}

#[test]
fn the_clock_moves_only_forward() {
    let mut e = super::Engine::discovered(ENGINE.to_vec(), 3, 1000, Some(keys(true)));
    assert_eq!(
        (e.boots, e.time),
        (0, 0),
        "discovery is not a source of time"
    );
    assert!(e.observe(3, 1000).is_ok());
    assert_eq!((e.boots, e.time), (3, 1000));
    assert!(e.observe(2, 10_000).is_err(), "an earlier boot");
    assert_eq!((e.boots, e.time), (3, 1000));
    assert!(e.observe(3, 1000 - 150).is_ok(), "within the window");
    assert!(e.observe(3, 1000 - 151).is_err(), "outside the window");
    assert!(e.observe(4, 1).is_ok(), "a reboot moves boots forward");
    assert_eq!((e.boots, e.time), (4, 1));
    let unauth = super::Engine::discovered(ENGINE.to_vec(), 3, 100, None);
    assert_eq!(
        (unauth.boots, unauth.time),
        (3, 100),
        "noAuthNoPriv takes discovery's clock"
    );
}

/// RFC 3414 §3.2 step 7: a forged answer is discarded and the wait goes on.
#[tokio::test]
async fn a_forged_answer_before_the_real_one_is_discarded() {
    let dev = device(Answer::ForgedThenHonest).await;
    let mut d = driver(dev.addr);
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
}

/// An agent that lost its boot counter over a restart comes back with the
/// same boots and an earlier time: the driver rediscovers it instead of
/// refusing it forever.
#[tokio::test]
async fn an_engine_whose_clock_went_back_is_discovered_again() {
    let dev = device(Answer::Honest).await;
    let mut d = driver(dev.addr);
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    dev.time.store(TIME - 1_000, Ordering::SeqCst);
    assert_eq!(poll(&mut d).await, Ok(Value::I64(42)));
    assert_eq!(clock(&d), (BOOTS, TIME - 1_000));
    assert_eq!(dev.discoveries.load(Ordering::SeqCst), 2);
}
