//! The Modbus driver against a Modbus TCP server not written here (pymodbus,
//! from the venv `cargo xtask test` installs): every register type and word
//! order, coils, discrete inputs, unit ids, exceptions, and per-gateway
//! pacing; plus a truncated frame from a broken device.

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tributary_agent::reading::Value;
use tributary_tests::peers::{self, device_config, poll_once, value_of};
use tributary_tests::process::TestDir;

fn modbus(addr: &str, extra: &str, metrics: &str) -> String {
    format!(
        "driver = \"modbus\"\ninterval = \"1s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\n{extra}metrics = [\n{metrics}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_type_from_pymodbus() -> Result<()> {
    let dir = TestDir::new("modbus-pymodbus")?;
    let server = peers::pymodbus(&dir).await?;
    let addr = server.addr.to_string();
    let dev = device_config(
        "plc",
        &modbus(
            &addr,
            "connect_delay = \"20ms\"\nrequest_pause = \"5ms\"\n",
            r#"  { name = "u16", register = 0 },
  { name = "i16", register = 1, type = "i16" },
  { name = "u32", register = 10, type = "u32" },
  { name = "f32_big", register = 20, type = "f32" },
  { name = "f32_little", register = 30, type = "f32", word_order = "little" },
  { name = "scaled", register = 0, scale = 0.1, unit = "V" },
  { name = "in_u16", register = 0, kind = "input" },
  { name = "in_i32", register = 5, kind = "input", type = "i32" },
  { name = "run", register = 0, kind = "coil" },
  { name = "fault", register = 1, kind = "coil" },
  { name = "pump", register = 2, kind = "coil" },
  { name = "door", register = 0, kind = "discrete" },
  { name = "alarm", register = 3, kind = "discrete", type = "bool" },
"#,
        ),
    )?;
    let samples = poll_once(&dev)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", server.log()))?;
    let expect = [
        ("u16", Value::I64(1234)),
        ("i16", Value::I64(-2)),
        ("u32", Value::I64(65538)),
        ("f32_big", Value::F64(21.5)),
        ("f32_little", Value::F64(21.5)),
        ("scaled", Value::F64(1234.0 * 0.1)),
        ("in_u16", Value::I64(42)),
        ("in_i32", Value::I64(-100_000)),
        ("run", Value::Bool(true)),
        ("fault", Value::Bool(false)),
        ("pump", Value::Bool(true)),
        ("door", Value::Bool(false)),
        ("alarm", Value::Bool(true)),
    ];
    for (name, value) in expect {
        assert_eq!(value_of(&samples, name), Some(&value), "{name}");
    }

    // Another unit behind the same address.
    let unit2 = device_config(
        "plc-2",
        &modbus(&addr, "unit_id = 2\n", "{ name = \"v\", register = 0 },\n"),
    )?;
    let samples = poll_once(&unit2)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(value_of(&samples, "v"), Some(&Value::I64(2222)));

    // An address the device does not have: the exception, named.
    let missing = device_config(
        "plc",
        &modbus(&addr, "", "{ name = \"far\", register = 150 },\n"),
    )?;
    let e = poll_once(&missing).await.expect_err("illegal address");
    assert!(
        e.message.contains("modbus exception") && e.message.contains("holding register 150 (far)"),
        "{e}"
    );
    assert!(
        e.message.to_lowercase().contains("illegal data address"),
        "{e}"
    );
    server.kill().await?;
    // The server is gone: refused.
    let e = poll_once(&dev).await.expect_err("refused");
    assert_eq!(e.message, format!("connection refused to {addr}"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_register_type_is_a_config_error() -> Result<()> {
    let e = device_config(
        "plc",
        &modbus(
            "127.0.0.1:502",
            "",
            "{ name = \"run\", register = 0, kind = \"coil\", type = \"u32\" },\n",
        ),
    )
    .expect_err("coil as u32");
    let e = e.to_string();
    assert!(
        e.starts_with("drivers-test.toml:11: devices[0].metrics[0].type: wrong register type u32 for kind coil"),
        "{e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_is_a_failed_reading_with_the_cause() -> Result<()> {
    // A device that answers with an MBAP header announcing more bytes than
    // it sends, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut head = [0u8; 12];
            if sock.read_exact(&mut head).await.is_ok() {
                let _ = sock
                    .write_all(&[head[0], head[1], 0, 0, 0, 7, 1, 3, 4, 0])
                    .await;
            }
        }
    });
    let dev = device_config(
        "broken",
        &modbus(&addr.to_string(), "", "{ name = \"v\", register = 0 },\n"),
    )?;
    let e = poll_once(&dev).await.expect_err("truncated");
    assert!(
        e.message.starts_with(&format!(
            "modbus {addr} unit 1 reading holding register 0: "
        )),
        "{e}"
    );
    Ok(())
}
