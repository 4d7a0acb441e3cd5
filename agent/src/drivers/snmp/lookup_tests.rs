//! Index lookups against a fake v2c agent that answers GETBULK from a table
//! the test changes: rows labelled by the lookup columns, empty values and
//! duplicate names handled, and the columns walked again only after
//! `lookup_interval`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

const IF_NAME: [u32; 10] = [1, 3, 6, 1, 2, 1, 31, 1, 1, 1];

/// `IF_NAME` with the column and row.
fn cell(column: u32, row: u32) -> Vec<u32> {
    let mut oid = IF_NAME.to_vec();
    oid.extend([column, row]);
    oid
}

/// A v2c agent serving `table` (OID → encoded value); counts the GETBULKs
/// that start in column 1 (ifName).
struct Fake {
    addr: SocketAddr,
    table: Arc<Mutex<BTreeMap<Vec<u32>, Vec<u8>>>>,
    name_walks: Arc<AtomicUsize>,
}

async fn fake(table: BTreeMap<Vec<u32>, Vec<u8>>) -> Fake {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let table = Arc::new(Mutex::new(table));
    let name_walks = Arc::new(AtomicUsize::new(0));
    let (t, n) = (table.clone(), name_walks.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let Ok((_, community, pdu)) = ber::decode_v2c(&buf[..len]) else {
                continue;
            };
            let Some((start, _)) = pdu.varbinds.first() else {
                continue;
            };
            if start.starts_with(&cell(1, 0)[..11]) {
                n.fetch_add(1, Ordering::SeqCst);
            }
            // GETBULK (error-index is max-repetitions): repetition after
            // repetition, the next OID after each varbind's own.
            let mut cursors: Vec<Vec<u32>> = pdu.varbinds.iter().map(|(o, _)| o.clone()).collect();
            let mut varbinds = Vec::new();
            {
                let table = t.lock().expect("table");
                for _ in 0..pdu.error_index.max(1) {
                    for cursor in &mut cursors {
                        let next = table
                            .range::<Vec<u32>, _>((
                                std::ops::Bound::Excluded(cursor.clone()),
                                std::ops::Bound::Unbounded,
                            ))
                            .next();
                        let (oid, value) = match next {
                            Some((oid, value)) => (oid.clone(), value.clone()),
                            None => (cursor.clone(), ber::tlv(tag::END_OF_MIB_VIEW, &[])),
                        };
                        varbinds.push(ber::constructed(tag::SEQUENCE, &[&ber::oid(&oid), &value]));
                        *cursor = oid;
                    }
                }
            }
            let list = ber::tlv(tag::SEQUENCE, &varbinds.concat());
            let answer = ber::constructed(
                tag::RESPONSE,
                &[
                    &ber::int(i64::from(pdu.request_id)),
                    &ber::int(0),
                    &ber::int(0),
                    &list,
                ],
            );
            let _ = socket
                .send_to(&ber::encode_v2c(&community, &answer), peer)
                .await;
        }
    });
    Fake {
        addr,
        table,
        name_walks,
    }
}

fn at() -> config::At {
    config::At {
        file: "agent.toml".into(),
        line: 1,
        key: "devices[0].lookups".into(),
    }
}

fn config(addr: SocketAddr) -> SnmpConfig {
    SnmpConfig {
        address: addr.to_string(),
        security: SnmpSecurity::V2c {
            community: "public".into(),
        },
        metrics: vec![],
        walks: vec![SnmpWalk {
            name: "ifHCInOctets".into(),
            oid: IF_NAME.iter().copied().chain([6]).collect(),
            unit: String::new(),
            index_label: "index".into(),
            meaning: ValueMeaning::default(),
            index: None,
        }],
        max_repetitions: 10,
        retries: 0,
        lookups: vec![
            SnmpLookup {
                label: "ifName".into(),
                oid: IF_NAME.iter().copied().chain([1]).collect(),
                index: None,
                format: mib::Format::Text,
                at: at(),
            },
            SnmpLookup {
                label: "ifAlias".into(),
                oid: IF_NAME.iter().copied().chain([18]).collect(),
                index: None,
                format: mib::Format::Text,
                at: at(),
            },
        ],
        drop_index: true,
        lookup_interval: Duration::from_secs(3600),
        pending: vec![],
    }
}

/// Labels of every row, by the row's value (octets, a Counter64, or an
/// INTEGER).
fn rows(samples: &[Sample]) -> BTreeMap<u64, BTreeMap<String, String>> {
    samples
        .iter()
        .filter_map(|s| match s.value {
            Value::U64(n) => Some((n, s.labels.clone())),
            Value::I64(n) => Some((u64::try_from(n).ok()?, s.labels.clone())),
            _ => None,
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn lookups_label_rows_and_refresh_on_their_interval() {
    let mut table = BTreeMap::new();
    for (row, name, alias) in [
        (1, "lo", ""),
        (2, "eth0", "uplink"),
        (3, "eth1", ""),
        (4, "eth1", ""),
    ] {
        table.insert(cell(1, row), ber::octets(name.as_bytes()));
        table.insert(cell(18, row), ber::octets(alias.as_bytes()));
        table.insert(cell(6, row), ber::tlv(tag::COUNTER64, &[row as u8 * 10]));
    }
    let agent = fake(table).await;
    let mut driver = SnmpDriver::new(&config(agent.addr), Duration::from_secs(2));

    let samples = driver.poll().await.expect("poll");
    let want = BTreeMap::from([
        // An empty alias names nothing; the index is dropped.
        (10, labels(&[("ifName", "lo")])),
        (20, labels(&[("ifName", "eth0"), ("ifAlias", "uplink")])),
        // Two rows named eth1: both keep their index.
        (30, labels(&[("ifName", "eth1"), ("index", "3")])),
        (40, labels(&[("ifName", "eth1"), ("index", "4")])),
    ]);
    assert_eq!(rows(&samples), want);
    assert_eq!(agent.name_walks.load(Ordering::SeqCst), 1);

    // A rename is not seen before lookup_interval: no new lookup walk.
    agent
        .table
        .lock()
        .expect("table")
        .insert(cell(1, 1), ber::octets(b"loopback"));
    let samples = driver.poll().await.expect("poll");
    assert_eq!(rows(&samples), want);
    assert_eq!(agent.name_walks.load(Ordering::SeqCst), 1);

    // Once the interval has passed, the columns are walked again.
    if let Some(l) = driver.lookups.as_mut() {
        l.walked = Instant::now()
            .checked_sub(Duration::from_secs(3601))
            .expect("an hour ago");
    }
    let samples = driver.poll().await.expect("poll");
    assert_eq!(rows(&samples)[&10], labels(&[("ifName", "loopback")]));
    assert_eq!(agent.name_walks.load(Ordering::SeqCst), 2);
}

/// hrStorageUsed (HOST-RESOURCES-MIB), a column of another table.
const HR_STORAGE_USED: [u32; 11] = [1, 3, 6, 1, 2, 1, 25, 2, 3, 1, 6];

#[tokio::test]
async fn a_numeric_lookup_labels_only_walks_of_its_own_table() {
    let mut table = BTreeMap::new();
    for (row, name) in [(1, "lo"), (2, "eth0")] {
        table.insert(cell(1, row), ber::octets(name.as_bytes()));
        table.insert(cell(6, row), ber::tlv(tag::COUNTER64, &[row as u8 * 10]));
    }
    // Storage rows 1 and 2: the same index numbers as the interfaces.
    for row in [1u32, 2] {
        let mut oid = HR_STORAGE_USED.to_vec();
        oid.push(row);
        table.insert(oid, ber::int(i64::from(row) * 100));
    }
    let agent = fake(table).await;
    let mut cfg = config(agent.addr);
    cfg.lookups.truncate(1);
    cfg.walks.push(SnmpWalk {
        name: "hrStorageUsed".into(),
        oid: HR_STORAGE_USED.to_vec(),
        unit: String::new(),
        index_label: "index".into(),
        meaning: ValueMeaning::default(),
        index: None,
    });
    cfg.check_lookups().expect("ifName labels ifHCInOctets");
    let mut driver = SnmpDriver::new(&cfg, Duration::from_secs(2));
    let samples = driver.poll().await.expect("poll");
    assert_eq!(
        rows(&samples),
        BTreeMap::from([
            (10, labels(&[("ifName", "lo")])),
            (20, labels(&[("ifName", "eth0")])),
            // Not interfaces: no ifName, and their index stays.
            (100, labels(&[("index", "1")])),
            (200, labels(&[("index", "2")])),
        ])
    );
}

#[test]
fn lookups_that_label_nothing_or_clash_are_refused() {
    let addr: SocketAddr = "127.0.0.1:161".parse().expect("addr");
    // ifName against a walk of hrStorageUsed only.
    let mut cfg = config(addr);
    cfg.lookups.truncate(1);
    cfg.walks[0].oid = HR_STORAGE_USED.to_vec();
    let e = cfg.check_lookups().expect_err("labels no walk").to_string();
    assert!(
        e.contains("lookup \"ifName\" (1.3.6.1.2.1.31.1.1.1.1) labels no walk"),
        "{e}"
    );
    // Known INDEX objects decide, whatever the OIDs look like.
    let if_index = vec![vec![1, 3, 6, 1, 2, 1, 2, 2, 1, 1]];
    cfg.walks[0].index = Some(if_index.clone());
    cfg.lookups[0].index = Some(if_index);
    cfg.check_lookups().expect("same INDEX");

    // A label the walk's rows already carry.
    let mut cfg = config(addr);
    cfg.lookups[0].label = "index".into();
    let e = cfg.check_lookups().expect_err("index label").to_string();
    assert!(
        e.contains(
            "lookup label \"index\" is its index label on the rows of walk \"ifHCInOctets\""
        ),
        "{e}"
    );
    let mut cfg = config(addr);
    cfg.walks[0].meaning.enum_label = true;
    cfg.walks[0].name = "ifAlias".into();
    let e = cfg.check_lookups().expect_err("enum label").to_string();
    assert!(e.contains("is its enum_label label"), "{e}");
}

#[test]
fn build_refuses_unresolved_names() {
    let text = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n[[devices]]\nname = \"d\"\n\
                interval = \"1s\"\ndriver = \"snmp\"\naddress = \"127.0.0.1:161\"\n\
                walks = [{ name = \"w\", oid = \"1.3.6.1.2.1.2.2.1.10\" }]\n";
    let cfg = crate::config::parse(text, std::path::Path::new("agent.toml")).expect("config");
    let device = &cfg.devices[0];
    let crate::drivers::DriverConfig::Snmp(s) = &device.driver else {
        panic!("{device:?}")
    };
    SnmpDriver::build(s, device).expect("resolved");
    let mut s = s.clone();
    s.pending.push(config::PendingName {
        target: config::Target::Walk(0),
        module: Some("IF-MIB".into()),
        name: "ifInOctets".into(),
        suffix: vec![],
        at: at(),
        default_name: false,
        default_unit: false,
    });
    s.walks[0].oid.clear();
    let e = SnmpDriver::build(&s, device)
        .expect_err("pending")
        .to_string();
    assert!(
        e.contains("device d: MIB name ifInOctets") && e.contains("never resolved"),
        "{e}"
    );
}
