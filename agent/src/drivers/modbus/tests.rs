//! Tests of the Modbus driver: read planning, decoding, and polls against
//! a scripted Modbus TCP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::reading::FailureKind;

fn metric(name: &str, register: u16, data_type: RegisterType) -> ModbusMetric {
    ModbusMetric {
        name: name.into(),
        register,
        kind: RegisterKind::Holding,
        data_type,
        word_order: WordOrder::Big,
        scale: 1.0,
        unit: String::new(),
    }
}

#[test]
fn decodes_every_type_and_word_order() {
    use RegisterType::*;
    use WordOrder::*;
    assert_eq!(
        decode_registers(&[0xFFFF], U16, Big, 1.0),
        Ok(Value::I64(65535))
    );
    assert_eq!(
        decode_registers(&[0xFFFF], I16, Big, 1.0),
        Ok(Value::I64(-1))
    );
    assert_eq!(
        decode_registers(&[0x0001, 0x0002], U32, Big, 1.0),
        Ok(Value::I64(0x0001_0002))
    );
    assert_eq!(
        decode_registers(&[0x0001, 0x0002], U32, Little, 1.0),
        Ok(Value::I64(0x0002_0001))
    );
    assert_eq!(
        decode_registers(&[0xFFFF, 0xFFFE], I32, Big, 1.0),
        Ok(Value::I64(-2))
    );
    assert_eq!(
        decode_registers(&[0xFFFE, 0xFFFF], I32, Little, 1.0),
        Ok(Value::I64(-2))
    );
    // 21.5f32 = 0x41AC0000
    assert_eq!(
        decode_registers(&[0x41AC, 0x0000], F32, Big, 1.0),
        Ok(Value::F64(21.5))
    );
    assert_eq!(
        decode_registers(&[0x0000, 0x41AC], F32, Little, 1.0),
        Ok(Value::F64(21.5))
    );
    // Extra words are ignored.
    assert_eq!(
        decode_registers(&[7, 8, 9], U16, Big, 1.0),
        Ok(Value::I64(7))
    );
}

#[test]
fn scale_makes_floats() {
    use RegisterType::*;
    assert_eq!(
        decode_registers(&[215], U16, WordOrder::Big, 0.1),
        Ok(Value::F64(215.0 * 0.1))
    );
    assert_eq!(
        decode_registers(&[0xFFF6], I16, WordOrder::Big, 0.5),
        Ok(Value::F64(-5.0))
    );
    assert_eq!(
        decode_registers(&[0x41AC, 0], F32, WordOrder::Big, 2.0),
        Ok(Value::F64(43.0))
    );
}

#[test]
fn short_input_is_an_error() {
    for ty in [RegisterType::U32, RegisterType::I32, RegisterType::F32] {
        let e = decode_registers(&[1], ty, WordOrder::Big, 1.0).expect_err("short");
        assert_eq!((e.need, e.got), (2, 1));
        assert!(e.to_string().starts_with("short modbus response: "), "{e}");
    }
    assert!(decode_registers(&[], RegisterType::U16, WordOrder::Little, 1.0).is_err());
}

#[test]
fn plan_groups_adjacent_registers_of_one_kind() {
    let mut input = metric("in", 101, RegisterType::U16);
    input.kind = RegisterKind::Input;
    let metrics = vec![
        metric("c", 104, RegisterType::U16), // adjacent to b's end (104)
        metric("a", 100, RegisterType::F32), // 100..=101
        metric("b", 102, RegisterType::U32), // 102..=103
        metric("far", 300, RegisterType::U16), // own block
        input,                               // other kind
        metric("overlap", 101, RegisterType::U16), // inside a
    ];
    let plan = plan_reads(&metrics);
    assert_eq!(
        plan,
        vec![
            ReadBlock {
                kind: RegisterKind::Holding,
                start: 100,
                count: 5,
                metrics: vec![1, 5, 2, 0]
            },
            ReadBlock {
                kind: RegisterKind::Holding,
                start: 300,
                count: 1,
                metrics: vec![3]
            },
            ReadBlock {
                kind: RegisterKind::Input,
                start: 101,
                count: 1,
                metrics: vec![4]
            },
        ]
    );
}

#[test]
fn plan_splits_at_the_request_limit() {
    let metrics: Vec<_> = (0..200u16)
        .map(|r| metric(&format!("m{r}"), r, RegisterType::U16))
        .collect();
    let plan = plan_reads(&metrics);
    assert_eq!(plan.len(), 2);
    assert_eq!((plan[0].start, plan[0].count), (0, 125));
    assert_eq!((plan[1].start, plan[1].count), (125, 75));
}

/// What the fake device does with one request: answer with a PDU, or
/// never answer.
type Answer = dyn Fn(u8, u16, u16) -> Option<Vec<u8>> + Send + Sync;

/// A minimal Modbus TCP device on 127.0.0.1:0 speaking raw frames.
/// Returns its address and the number of connections accepted.
async fn fake_device(answer: Arc<Answer>) -> (SocketAddr, Arc<AtomicUsize>) {
    fake_device_with(answer, false).await
}

/// Like [`fake_device`]; with `close_after_answer` every connection is
/// closed after its first answer, as a gateway closing idle links.
async fn fake_device_with(
    answer: Arc<Answer>,
    close_after_answer: bool,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = [0u8; 7];
                    if sock.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if sock.read_exact(&mut pdu).await.is_err() || pdu.len() < 5 {
                        return;
                    }
                    let addr = u16::from_be_bytes([pdu[1], pdu[2]]);
                    let cnt = u16::from_be_bytes([pdu[3], pdu[4]]);
                    let Some(reply) = answer(pdu[0], addr, cnt) else {
                        // Never answer; keep the socket open.
                        std::future::pending::<()>().await;
                        return;
                    };
                    let mut frame = vec![head[0], head[1], 0, 0];
                    frame.extend_from_slice(
                        &u16::try_from(reply.len() + 1).unwrap_or(0).to_be_bytes(),
                    );
                    frame.push(head[6]);
                    frame.extend_from_slice(&reply);
                    if sock.write_all(&frame).await.is_err() || close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Registers whose value is their own address.
fn registers(fc: u8, addr: u16, cnt: u16, short_by: u16) -> Vec<u8> {
    let n = cnt.saturating_sub(short_by);
    let mut pdu = vec![fc, u8::try_from(n * 2).unwrap_or(0)];
    for r in addr..addr + n {
        pdu.extend_from_slice(&r.to_be_bytes());
    }
    pdu
}

fn driver(addr: SocketAddr, metrics: Vec<ModbusMetric>) -> ModbusDriver {
    ModbusDriver::new(&ModbusConfig {
        address: addr.to_string(),
        unit_id: 1,
        metrics,
        max_concurrency: 1,
        connect_delay: Duration::ZERO,
        request_pause: Duration::ZERO,
    })
}

#[tokio::test]
async fn reads_and_reuses_the_connection() {
    let (addr, accepted) = fake_device(Arc::new(|fc, a, c| Some(registers(fc, a, c, 0)))).await;
    let mut scaled = metric("scaled", 11, RegisterType::U16);
    scaled.scale = 0.5;
    scaled.unit = "C".into();
    let mut d = driver(
        addr,
        vec![
            metric("a", 10, RegisterType::U16),
            scaled,
            metric("wide", 20, RegisterType::U32),
        ],
    );
    for _ in 0..3 {
        let samples = d.poll().await.expect("poll");
        let values: Vec<_> = samples
            .iter()
            .map(|s| (s.metric.as_str(), s.value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("a", Value::I64(10)),
                ("scaled", Value::F64(5.5)),
                ("wide", Value::I64((20 << 16) | 21)),
            ]
        );
        assert_eq!(samples[1].unit, "C");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stale_connection_is_replaced_within_the_poll() {
    let (addr, accepted) =
        fake_device_with(Arc::new(|fc, a, c| Some(registers(fc, a, c, 0))), true).await;
    let mut d = driver(addr, vec![metric("a", 3, RegisterType::U16)]);
    for n in 1..=3 {
        let samples = d.poll().await.expect("poll");
        assert_eq!(samples[0].value, Value::I64(3));
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn cancelled_poll_drops_the_connection() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (addr, accepted) = fake_device(Arc::new(move |fc, a, c| {
        // The first request is never answered.
        (seen.fetch_add(1, Ordering::SeqCst) > 0).then(|| registers(fc, a, c, 0))
    }))
    .await;
    let mut d = driver(addr, vec![metric("a", 1, RegisterType::U16)]);
    let first = tokio::time::timeout(Duration::from_millis(100), d.poll()).await;
    assert!(first.is_err(), "the first poll must time out");
    let samples = d.poll().await.expect("second poll");
    assert_eq!(samples[0].value, Value::I64(1));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a fresh connection after the cancelled poll"
    );
}

#[tokio::test]
async fn exception_names_register_and_cause() {
    let (addr, _) = fake_device(Arc::new(|fc, _, _| Some(vec![fc | 0x80, 0x02]))).await;
    let mut d = driver(addr, vec![metric("temp", 100, RegisterType::F32)]);
    let e = d.poll().await.expect_err("exception");
    assert_eq!(e.kind, FailureKind::Error);
    assert!(
        e.message.contains("holding registers 100..=101 (temp)"),
        "{e}"
    );
    assert!(e.message.contains("Illegal data address"), "{e}");
}

#[tokio::test]
async fn short_response_is_an_error() {
    let (addr, _) = fake_device(Arc::new(|fc, a, c| Some(registers(fc, a, c, 1)))).await;
    let mut d = driver(addr, vec![metric("x", 5, RegisterType::U32)]);
    let e = d.poll().await.expect_err("short");
    assert!(e.message.starts_with("short modbus response: "), "{e}");
    assert!(
        e.message
            .contains("answered 1 of 2 registers reading holding registers 5..=6 (x)"),
        "{e}"
    );
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let e = driver(addr, vec![metric("a", 1, RegisterType::U16)])
        .poll()
        .await
        .expect_err("refused");
    assert_eq!(e.message, format!("connection refused to {addr}"));
}
