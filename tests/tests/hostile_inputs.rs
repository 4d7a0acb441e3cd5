//! Property tests of every parser and validator that reads input from the
//! network or from operators: the stable-toolchain twins of the cargo-fuzz
//! targets in `collector/fuzz` and `agent/fuzz` (which need nightly; run
//! them with `cargo xtask fuzz`). Each property feeds random and mutated
//! inputs and requires an answer (a value or an error) without a panic, plus
//! what can be said about the answer. Inputs a fuzzer found to crash belong
//! here as fixed regression cases.

use std::path::Path;

use proptest::prelude::*;
use prost::Message;

use tributary_agent::drivers::http::{JsonMetric, json, prometheus};
use tributary_agent::drivers::modbus::{self, RegisterType, WordOrder};
use tributary_agent::drivers::snmp::value::to_value;
use tributary_agent::drivers::snmp::{SnmpAuthProtocol, SnmpPrivProtocol, ber, usm, v3};
use tributary_collector::config::{self as collector_config, Flags};
use tributary_collector::roles::Roles;
use tributary_collector::session::{self, Limits, PeerAuth, StreamSeries};
use tributary_collector::tls;
use tributary_proto::v1 as pb;

/// A valid batch to mutate: two series, three readings.
fn sample_batch() -> pb::Batch {
    pb::Batch {
        seq: 3,
        series: vec![
            pb::SeriesDecl {
                id: 1,
                device: "meter".into(),
                metric: "power".into(),
                unit: "W".into(),
                labels: [("phase".to_owned(), "a".to_owned())].into(),
            },
            pb::SeriesDecl {
                id: 2,
                device: "meter".into(),
                metric: "state".into(),
                ..Default::default()
            },
        ],
        readings: vec![
            pb::Reading {
                series: 1,
                ts_ns: 1_700_000_000_000_000_000,
                value: Some(pb::reading::Value::F64(1.5)),
            },
            pb::Reading {
                series: 2,
                ts_ns: 1_700_000_000_000_000_001,
                value: Some(pb::reading::Value::Str("on".into())),
            },
            pb::Reading {
                series: 1,
                ts_ns: 1_700_000_000_000_000_002,
                value: Some(pb::reading::Value::Failure(pb::Failure {
                    status: pb::PollStatus::Timeout as i32,
                    message: "slow".into(),
                })),
            },
        ],
        columns: Some(pb::Columns {
            f64: Some(pb::FloatColumns {
                series_delta: vec![1, 0, 0],
                base_ts_ns: 1_700_000_000_000_000_000,
                ts_delta: vec![3, 1_000_000_000, 1_000_000_000],
                values: vec![1.0, 2.0, -3.5],
            }),
            i64: Some(pb::IntColumns {
                series_delta: vec![2, -1],
                base_ts_ns: 1_700_000_000_000_000_000,
                ts_delta: vec![0, 0],
                values: vec![7, -7],
            }),
            bool: Some(pb::BoolColumns {
                series_delta: vec![2],
                base_ts_ns: 1_700_000_000_000_000_000,
                ts_delta: vec![5],
                values: vec![true],
            }),
            u64: Some(pb::UintColumns {
                series_delta: vec![1],
                base_ts_ns: 1_700_000_000_000_000_000,
                ts_delta: vec![7],
                values: vec![u64::MAX],
            }),
        }),
        ..Default::default()
    }
}

/// Runs every check the session applies to a decoded frame.
fn check_frame(bytes: &[u8]) {
    let Ok(frame) = pb::AgentFrame::decode(bytes) else {
        return;
    };
    let limits = Limits::default();
    match frame.frame {
        Some(pb::agent_frame::Frame::Hello(hello)) => {
            let _ = session::check_hello(&hello, &limits);
            let _ = session::authorize(
                &hello.agent_id,
                &PeerAuth::Certificate("edge-1".into()),
                &Roles::default(),
            );
        }
        Some(pb::agent_frame::Frame::Batch(batch)) => {
            let _ = session::check_batch(&batch, "edge-1", 0, &StreamSeries::default(), &limits);
            let mut declared: StreamSeries = (0..4).map(|i| (i, i64::from(i))).collect();
            if let Ok(new) = session::check_batch(&batch, "edge-1", 1, &declared, &limits) {
                assert!(new.iter().all(|(id, _)| !declared.contains_key(id)));
                // A batch that passes converts whole: every reading of
                // both forms, each with a resolved series.
                declared.extend(new.iter().map(|(id, _)| (*id, 100 + i64::from(*id))));
                let total = batch.readings.len() + columns_len(batch.columns.as_ref());
                assert_eq!(session::batch_readings(batch, &declared).len(), total);
            }
        }
        None => {}
    }
}

/// Readings in the columns of a batch (the series id column's length).
fn columns_len(columns: Option<&pb::Columns>) -> usize {
    columns.map_or(0, |c| {
        c.f64.as_ref().map_or(0, |g| g.series_delta.len())
            + c.i64.as_ref().map_or(0, |g| g.series_delta.len())
            + c.bool.as_ref().map_or(0, |g| g.series_delta.len())
            + c.u64.as_ref().map_or(0, |g| g.series_delta.len())
    })
}

/// Prefix sums of `deltas` from `start`, exactly (no overflow in i128).
fn prefix_sums(start: i64, deltas: &[i64]) -> Vec<i128> {
    deltas
        .iter()
        .scan(i128::from(start), |acc, d| {
            *acc += i128::from(*d);
            Some(*acc)
        })
        .collect()
}

/// `bytes` with `edits` applied: (position, new byte) pairs, positions
/// taken modulo the length.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    let len = bytes.len();
    for &(at, b) in edits {
        bytes[at % len] = b;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ingest_frames_of_random_bytes_are_checked_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_frame(&bytes);
    }

    #[test]
    fn mutated_ingest_frames_are_checked_without_panic(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let frame = pb::AgentFrame { frame: Some(pb::agent_frame::Frame::Batch(sample_batch())) };
        let mut bytes = mutate(frame.encode_to_vec(), &edits);
        bytes.truncate(cut % (bytes.len() + 1));
        check_frame(&bytes);
    }

    #[test]
    fn a_batch_passes_exactly_when_its_references_are_declared(
        decl_ids in prop::collection::vec(0u32..16, 0..8),
        reading_ids in prop::collection::vec(0u32..16, 0..16),
        ts in prop::collection::vec(-2i64..i64::MAX, 16),
    ) {
        let batch = pb::Batch {
            seq: 1,
            series: decl_ids.iter().map(|&id| pb::SeriesDecl {
                id,
                device: "d".into(),
                metric: "m".into(),
                ..Default::default()
            }).collect(),
            readings: reading_ids.iter().zip(&ts).map(|(&series, &ts_ns)| pb::Reading {
                series,
                ts_ns,
                value: Some(pb::reading::Value::I64(1)),
            }).collect(),
            ..Default::default()
        };
        let unique = {
            let mut d = decl_ids.clone();
            d.sort_unstable();
            d.dedup();
            d.len() == decl_ids.len()
        };
        let referenced = reading_ids.iter().all(|id| decl_ids.contains(id));
        let timed = ts.iter().take(reading_ids.len()).all(|&t| t > 0);
        let result = session::check_batch(&batch, "a", 0, &StreamSeries::default(), &Limits::default());
        prop_assert_eq!(result.is_ok(), unique && referenced && timed, "{:?}", result.err());
    }

    #[test]
    fn a_columnar_batch_passes_exactly_when_lengths_ids_and_times_check(
        decl_ids in prop::collection::btree_set(0u32..6, 0..4),
        series_delta in prop::collection::vec(
            prop_oneof![4 => -3i64..4, 1 => Just(i64::MIN), 1 => Just(i64::MAX), 1 => Just(i64::from(u32::MAX))],
            0..10,
        ),
        base_ts_ns in prop_oneof![Just(1i64), -3i64..3, Just(i64::MAX - 2)],
        ts_delta in prop::collection::vec(
            prop_oneof![4 => -2i64..3, 1 => Just(i64::MAX), 1 => Just(i64::MIN), 1 => Just(1i64 << 62)],
            11,
        ),
        (extra_ts, extra_values) in (0usize..2, 0usize..2),
        kind in 0u8..3,
    ) {
        let n = series_delta.len();
        let ts_delta: Vec<i64> = ts_delta.into_iter().take(n + extra_ts).collect();
        let columns = match kind {
            0 => pb::Columns {
                f64: Some(pb::FloatColumns {
                    series_delta: series_delta.clone(),
                    base_ts_ns,
                    ts_delta: ts_delta.clone(),
                    values: vec![0.5; n + extra_values],
                }),
                ..Default::default()
            },
            1 => pb::Columns {
                i64: Some(pb::IntColumns {
                    series_delta: series_delta.clone(),
                    base_ts_ns,
                    ts_delta: ts_delta.clone(),
                    values: vec![-1; n + extra_values],
                }),
                ..Default::default()
            },
            _ => pb::Columns {
                bool: Some(pb::BoolColumns {
                    series_delta: series_delta.clone(),
                    base_ts_ns,
                    ts_delta: ts_delta.clone(),
                    values: vec![false; n + extra_values],
                }),
                ..Default::default()
            },
        };
        let batch = pb::Batch {
            seq: 1,
            series: decl_ids.iter().map(|&id| pb::SeriesDecl {
                id,
                device: "d".into(),
                metric: "m".into(),
                ..Default::default()
            }).collect(),
            columns: Some(columns),
            ..Default::default()
        };
        // The model: exact sums, each id declared, each time in 1..=i64::MAX.
        let lengths = ts_delta.len() == n && extra_values == 0;
        let ids_ok = prefix_sums(0, &series_delta)
            .iter()
            .all(|&id| u32::try_from(id).is_ok_and(|id| decl_ids.contains(&id)));
        let times_ok = prefix_sums(base_ts_ns, &ts_delta[..ts_delta.len().min(n)])
            .iter()
            .all(|&t| t > 0 && t <= i128::from(i64::MAX));
        let result = session::check_batch(&batch, "a", 0, &StreamSeries::default(), &Limits::default());
        prop_assert_eq!(result.is_ok(), lengths && ids_ok && times_ok, "{:?}", result.err());
        if let Ok(new) = result {
            // The stored readings are the model's: ids and times as summed.
            let resolved: StreamSeries = new.iter().map(|(id, _)| (*id, i64::from(*id) + 1000)).collect();
            let readings = session::batch_readings(batch, &resolved);
            let want: Vec<(i64, i64)> = prefix_sums(0, &series_delta)
                .into_iter()
                .zip(prefix_sums(base_ts_ns, &ts_delta))
                .map(|(id, t)| (id as i64 + 1000, t as i64))
                .collect();
            let got: Vec<(i64, i64)> = readings.iter().map(|r| (r.series_id, r.ts_ns)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn collector_config_text_gives_settings_or_a_located_error(text in "[a-z_\\[\\]=\" .0-9:\n]{0,200}") {
        if let Err(e) = collector_config::resolve_text(&text, Path::new("/nonexistent/c.toml"), &Flags::default()) {
            let e = e.to_string();
            prop_assert!(e.starts_with("/nonexistent/c.toml:") || e.starts_with("--listen"), "{}", e);
        }
    }

    #[test]
    fn mutated_collector_configs_give_settings_or_a_located_error(
        lines in prop::collection::vec(prop::sample::select(vec![
            "listen = \"127.0.0.1:7400\"", "listen = \"0.0.0.0:1\"", "listen = 7",
            "store = \"sqlite:x.db\"", "store = \"pg:x\"", "synchronous = \"normal\"",
            "allow_plaintext = true", "allowed_agents = [\"a\", \"b c\"]", "allowed_agents = []",
            "operators = [\"a\"]", "operators = [\"x y\"]", "operators = []",
            "allow_unauthenticated_agents = true", "query_requires_client_cert = false",
            "[tls]", "cert = \"c.pem\"", "key = \"k.pem\"", "client_ca = \"ca.pem\"",
            "[limits]", "max_connections = 0", "max_connections = 99999999999999",
            "keepalive_interval = \"1s\"", "handshake_timeout = \"0s\"", "max_clock_skew = \"x\"",
            "max_message_bytes = -1", "unknown = 1", "[", "\"", "",
        ]), 0..12),
    ) {
        let text = lines.join("\n");
        if let Err(e) = collector_config::resolve_text(&text, Path::new("/nonexistent/c.toml"), &Flags::default()) {
            let e = e.to_string();
            prop_assert!(e.starts_with("/nonexistent/c.toml:"), "{}", e);
        }
    }

    #[test]
    fn certificate_identities_of_random_bytes_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(tls::cert_identity(&bytes).is_err());
        let _ = tls::common_name(&bytes);
        let _ = tls::first_dns_name(&bytes);
    }

    #[test]
    fn mutated_certificates_give_a_name_or_an_error(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let der = certificate_der();
        let mutated = mutate(der, &edits);
        let _ = tls::cert_identity(&mutated);
        let _ = tls::first_dns_name(&mutated);
    }

    #[test]
    fn agent_config_text_gives_a_config_or_a_located_error(
        lines in prop::collection::vec(prop::sample::select(vec![
            "id = \"edge-1\"", "id = \"\"", "collectors = [\"http://127.0.0.1:7400\"]", "collectors = []",
            "[[devices]]", "name = \"d\"", "driver = \"sim\"", "driver = \"http\"", "driver = \"modbus\"",
            "interval = \"1s\"", "interval = \"0s\"", "url = \"http://x/\"", "format = \"json\"",
            "metrics = [{ name = \"m\", pointer = \"/a\" }]", "[tls]", "ca = \"ca.pem\"", "cert = \"c.pem\"",
            "[spool]", "max_bytes = \"1MiB\"", "[uplink]", "unknown = 1", "[", "",
        ]), 0..14),
    ) {
        let text = lines.join("\n");
        if let Err(e) = tributary_agent::config::parse(&text, Path::new("/nonexistent/a.toml")) {
            let e = e.to_string();
            prop_assert!(e.starts_with("/nonexistent/a.toml:"), "{}", e);
        }
    }

    #[test]
    fn prometheus_text_parses_or_names_an_existing_line(text in "[a-z_{}=\",# .0-9+\\-eE\n\\\\]{0,300}") {
        if let Err(e) = prometheus::parse(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.split('\n').count(), "{:?}", e);
        }
    }

    #[test]
    fn json_extraction_gives_one_sample_per_metric(
        body in "[\\[\\]{}\",:0-9a-z.\\-e ]{0,120}",
        pointer in "(/[a-z0-9~]{0,3}){0,3}",
    ) {
        if let Ok(doc) = json::parse_json(body.as_bytes()) {
            let metrics = [JsonMetric { name: "m".into(), pointer, unit: String::new() }];
            prop_assert_eq!(json::extract_json(&doc, &metrics).len(), 1);
        }
    }

    #[test]
    fn snmp_datagrams_decode_or_fail_and_values_convert(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_snmp(&bytes);
    }

    #[test]
    fn mutated_snmp_responses_decode_or_fail(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = mutate(snmp_response(), &edits);
        bytes.truncate(cut % (bytes.len() + 1));
        check_snmp(&bytes);
    }

    /// An authPriv answer with any byte changed is refused: every byte is
    /// under the MAC, so only the untouched message is believed.
    #[test]
    fn mutated_snmpv3_answers_are_believed_only_when_untouched(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let original = snmpv3_response();
        let mut bytes = mutate(original.clone(), &edits);
        bytes.truncate(cut % (bytes.len() + 1));
        check_snmp(&bytes);
        if check_snmpv3(&bytes) {
            prop_assert_eq!(bytes, original);
        }
    }

    #[test]
    fn modbus_registers_decode_or_report_a_short_response(
        pick in 0usize..6,
        little in any::<bool>(),
        scale in any::<f64>(),
        words in prop::collection::vec(any::<u16>(), 0..4),
    ) {
        let types = [RegisterType::U16, RegisterType::I16, RegisterType::U32, RegisterType::I32, RegisterType::F32, RegisterType::Bool];
        let order = if little { WordOrder::Little } else { WordOrder::Big };
        match modbus::decode_registers(&words, types[pick], order, scale) {
            Ok(_) => prop_assert!(words.len() >= usize::from(types[pick].words())),
            Err(e) => prop_assert!(e.got < e.need && e.got == words.len()),
        }
    }
}

/// Runs every SNMP decoder on `bytes`, converting what decodes.
fn check_snmp(bytes: &[u8]) {
    let _ = ber::message_version(bytes);
    if let Ok((_, _, pdu)) = ber::decode_v2c(bytes) {
        for (_, value) in &pdu.varbinds {
            let _ = to_value(value);
        }
    }
    let _ = usm::decode(bytes);
}

const V3_ENGINE: &[u8] = b"\x80\x00\x1f\x88\x80fuzz";

/// The keys of the SNMPv3 user of these tests, localized once (about a
/// million hash rounds).
fn v3_keys() -> &'static usm::Keys {
    static KEYS: std::sync::OnceLock<usm::Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        usm::Keys::new(
            (SnmpAuthProtocol::Sha256, "fuzz-auth-1"),
            Some((SnmpPrivProtocol::Aes128, "fuzz-priv-1")),
            V3_ENGINE,
        )
    })
}

/// Runs the SNMPv3 verification and decryption on `bytes` as the answer to
/// request 7 of user `fuzz`: whether it was believed as a Response.
fn check_snmpv3(bytes: &[u8]) -> bool {
    let Ok(m) = usm::decode(bytes) else {
        return false;
    };
    let _ = v3::open(&m, bytes, Some(v3_keys()));
    let mut engine = v3::Engine::discovered(V3_ENGINE.to_vec(), 0, 0, Some(v3_keys().clone()));
    matches!(
        v3::check(&mut engine, b"fuzz", b"", &m, bytes, 7),
        Ok(v3::Verified::Response(_))
    )
}

/// The PDU of [`snmp_response`] in an authPriv SNMPv3 message.
fn snmpv3_response() -> Vec<u8> {
    usm::encode(&usm::Outgoing {
        msg_id: 7,
        engine_id: V3_ENGINE,
        boots: 3,
        time: 100,
        user: b"fuzz",
        context: b"",
        context_engine: None,
        keys: Some(v3_keys()),
        salt: [1, 2, 3, 4, 5, 6, 7, 8],
        pdu: &snmp_pdu(),
    })
}

/// A well-formed v2c response with one value of each kind, built with the
/// driver's own BER encoder.
fn snmp_response() -> Vec<u8> {
    ber::encode_v2c(b"public", &snmp_pdu())
}

/// A Response PDU (request-id 7) with one value of each kind.
fn snmp_pdu() -> Vec<u8> {
    use ber::tag;
    let values: Vec<Vec<u8>> = vec![
        ber::int(-42),
        ber::octets(b"router-1"),
        ber::oid(&[1, 3, 6, 1, 4, 1, 9]),
        ber::tlv(tag::IP_ADDRESS, &[10, 0, 0, 1]),
        ber::tlv(tag::COUNTER32, &[0x00, 0xff, 0xff, 0xff, 0xff]),
        ber::tlv(tag::GAUGE32, &[0x64]),
        ber::tlv(tag::TIMETICKS, &[0x01, 0x00]),
        ber::tlv(
            tag::COUNTER64,
            &[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        ber::tlv(tag::OPAQUE, &[0x9f, 0x78, 0x04, 0x42, 0xf6, 0x00, 0x00]),
        ber::tlv(tag::NO_SUCH_OBJECT, &[]),
    ];
    let varbinds: Vec<Vec<u8>> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ber::constructed(
                tag::SEQUENCE,
                &[&ber::oid(&[1, 3, 6, 1, 2, 1, 1, i as u32 + 1, 0]), v],
            )
        })
        .collect();
    let list = ber::tlv(tag::SEQUENCE, &varbinds.concat());
    ber::constructed(
        tag::RESPONSE,
        &[&ber::int(7), &ber::int(0), &ber::int(0), &list],
    )
}

#[test]
fn the_snmpv3_sample_is_believed() {
    assert!(check_snmpv3(&snmpv3_response()));
}

#[test]
fn the_snmp_sample_decodes_with_every_value() {
    let (_, community, pdu) = ber::decode_v2c(&snmp_response()).expect("valid sample");
    assert_eq!(community, b"public");
    assert_eq!(pdu.varbinds.len(), 10);
    for (_, value) in &pdu.varbinds {
        let _ = to_value(value);
    }
}

/// A real client certificate for `edge-1` (DER).
fn certificate_der() -> Vec<u8> {
    use std::sync::OnceLock;
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["edge-1".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge-1");
        params.self_signed(&key).expect("cert").der().to_vec()
    })
    .clone()
}

#[test]
fn a_certificate_is_identified_by_its_dns_name() {
    assert_eq!(
        tls::cert_identity(&certificate_der()).as_deref(),
        Ok("edge-1")
    );
}

/// A self-signed certificate with these subject alternative names and
/// subject common name (DER).
fn certificate_with(sans: Vec<rcgen::SanType>, cn: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = sans;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn dns(name: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(name.try_into().expect("ascii"))
}

#[test]
fn with_subject_alternative_names_the_common_name_is_never_used() {
    // The first DNS name, not the CN.
    let der = certificate_with(vec![dns("edge-2")], "edge-1");
    assert_eq!(tls::cert_identity(&der).as_deref(), Ok("edge-2"));
    // Names, but none of them DNS: no identity, whatever the CN says.
    for sans in [
        vec![rcgen::SanType::IpAddress([10, 0, 0, 1].into())],
        vec![rcgen::SanType::Rfc822Name(
            "edge-1@example.com".try_into().expect("ascii"),
        )],
        vec![rcgen::SanType::URI(
            "spiffe://example/edge-1".try_into().expect("ascii"),
        )],
    ] {
        assert_eq!(
            tls::cert_identity(&certificate_with(sans.clone(), "edge-1")),
            Err(tls::IdentityError::NoDnsName),
            "{sans:?}"
        );
    }
}

#[test]
fn a_first_dns_name_that_is_not_an_agent_id_is_refused_not_skipped() {
    for first in ["bad name", "*.example.com", "edge/1", ""] {
        let der = certificate_with(vec![dns(first), dns("edge-1")], "edge-1");
        assert_eq!(
            tls::cert_identity(&der),
            Err(tls::IdentityError::NotAnAgentId(first.to_owned())),
            "{first}"
        );
    }
    // An IP address before the first DNS name does not count.
    let der = certificate_with(
        vec![
            rcgen::SanType::IpAddress([10, 0, 0, 1].into()),
            dns("edge-1"),
        ],
        "other",
    );
    assert_eq!(tls::cert_identity(&der).as_deref(), Ok("edge-1"));
}

#[test]
fn a_common_name_that_is_not_an_agent_id_is_refused() {
    let der = certificate_with(Vec::new(), "Edge Host 1");
    assert_eq!(
        tls::cert_identity(&der),
        Err(tls::IdentityError::NotAnAgentId("Edge Host 1".to_owned()))
    );
}

#[test]
fn a_certificate_without_dns_names_is_identified_by_its_common_name() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Tributary");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edge_7");
    let der = params.self_signed(&key).expect("cert").der().to_vec();
    assert_eq!(tls::cert_identity(&der).as_deref(), Ok("edge_7"));
}

/// The largest batch the limits allow validates in one pass: declaring
/// every series and referencing each must not cost quadratic time (it did:
/// a list scan per reading made such a batch take minutes).
#[test]
fn a_batch_at_the_limits_validates() {
    let limits = Limits::default();
    let n = limits
        .max_readings_per_batch
        .min(limits.max_series_per_stream) as u32;
    let batch = pb::Batch {
        seq: 1,
        series: (0..n)
            .map(|id| pb::SeriesDecl {
                id,
                device: "d".into(),
                metric: "m".into(),
                ..Default::default()
            })
            .collect(),
        readings: (0..n)
            .rev()
            .map(|series| pb::Reading {
                series,
                ts_ns: 1,
                value: Some(pb::reading::Value::Bool(true)),
            })
            .collect(),
        ..Default::default()
    };
    let new =
        session::check_batch(&batch, "a", 0, &StreamSeries::default(), &limits).expect("valid");
    assert_eq!(new.len(), n as usize);

    // The same in columns, ids in falling order (every delta -1).
    let columnar = pb::Batch {
        readings: Vec::new(),
        columns: Some(pb::Columns {
            bool: Some(pb::BoolColumns {
                series_delta: std::iter::once(i64::from(n) - 1)
                    .chain(std::iter::repeat_n(-1, n as usize - 1))
                    .collect(),
                base_ts_ns: 1,
                ts_delta: vec![0; n as usize],
                values: vec![true; n as usize],
            }),
            ..Default::default()
        }),
        ..batch
    };
    let new =
        session::check_batch(&columnar, "a", 0, &StreamSeries::default(), &limits).expect("valid");
    assert_eq!(new.len(), n as usize);
    let declared: StreamSeries = new.iter().map(|(id, _)| (*id, i64::from(*id))).collect();
    let readings = session::batch_readings(columnar, &declared);
    assert_eq!(readings.len(), n as usize);
    assert_eq!(readings.last().map(|r| r.series_id), Some(0));
}
