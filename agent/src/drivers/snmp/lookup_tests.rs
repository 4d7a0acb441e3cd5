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
            let mut varbinds = Vec::new();
            {
                let table = t.lock().expect("table");
                let mut next = table.range::<Vec<u32>, _>((
                    std::ops::Bound::Excluded(start.clone()),
                    std::ops::Bound::Unbounded,
                ));
                // For GETBULK, error-index is max-repetitions.
                for _ in 0..pdu.error_index.max(1) {
                    match next.next() {
                        Some((oid, value)) => {
                            varbinds.push(ber::constructed(tag::SEQUENCE, &[&ber::oid(oid), value]))
                        }
                        None => {
                            varbinds.push(ber::constructed(
                                tag::SEQUENCE,
                                &[&ber::oid(start), &ber::tlv(tag::END_OF_MIB_VIEW, &[])],
                            ));
                            break;
                        }
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
            },
            SnmpLookup {
                label: "ifAlias".into(),
                oid: IF_NAME.iter().copied().chain([18]).collect(),
                index: None,
                format: mib::Format::Text,
            },
        ],
        drop_index: true,
        lookup_interval: Duration::from_secs(3600),
        pending: vec![],
    }
}

/// Labels of every row, by the row's octets value.
fn rows(samples: &[Sample]) -> BTreeMap<i64, BTreeMap<String, String>> {
    samples
        .iter()
        .filter_map(|s| match s.value {
            Value::I64(n) => Some((n, s.labels.clone())),
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
