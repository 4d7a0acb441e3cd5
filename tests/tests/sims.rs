//! The device simulators answer what their documentation promises: the HTTP
//! simulator over keep-alive connections as a polling client sees it, the
//! Modbus simulator through tokio-modbus's own client, and `tributary-sim`
//! as a process.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_modbus::prelude::*;
use tributary_tests::http_sim::{self, Endpoint, GARBAGE_BODY, MeterValues, Sample};
use tributary_tests::modbus_sim::{self, REGISTERS, Table};
use tributary_tests::process::{Proc, free_addr, wait_for_port};
use tributary_tests::{HttpSim, ModbusSim, TestDir};

/// A parsed HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// A minimal keep-alive HTTP/1.1 client: one connection, many requests.
struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(sim: &http_sim::HttpListening) -> Result<Client> {
        let stream = TcpStream::connect(sim.addr).await?;
        let (reader, writer) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(reader),
            writer,
        })
    }

    async fn get(&mut self, path: &str) -> Result<Response> {
        self.request(path, "").await
    }

    async fn request(&mut self, path: &str, extra_headers: &str) -> Result<Response> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: sim\r\nAccept: */*\r\n{extra_headers}\r\n");
        self.writer.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("status line {line:?}"))?
            .parse()?;
        let mut headers = HashMap::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("header {header:?}"))?;
            headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
        }
        let length: usize = headers
            .get("content-length")
            .context("no content-length")?
            .parse()?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8(body)?,
        })
    }

    /// True when the server closed the connection (EOF or reset).
    async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte).await, Ok(0) | Err(_))
    }
}

async fn http_sim() -> Result<http_sim::HttpListening> {
    HttpSim::new().bind("127.0.0.1:0".parse()?).await
}

#[tokio::test]
async fn meter_serves_the_values_of_each_request_on_one_connection() -> Result<()> {
    let sim = http_sim().await?;
    let mut client = Client::connect(&sim).await?;
    for n in 1..=3 {
        let response = client.get("/meter").await?;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&response.body)?;
        let expected = MeterValues::nth(n);
        assert_eq!(json["power"].as_f64(), Some(expected.power));
        assert_eq!(json["voltage"].as_f64(), Some(expected.voltage));
        assert_eq!(json["count"].as_u64(), Some(n));
        assert_eq!(json["ok"].as_bool(), Some(true));
        assert_eq!(json["name"].as_str(), Some(http_sim::METER_NAME));
    }
    assert_eq!(sim.requests_to(Endpoint::Meter), 3);
    assert_eq!(sim.requests(), 3);
    assert_eq!(sim.connections(), 1, "keep-alive reuses the connection");
    sim.stop().await
}

/// A sample as parsed back from the text: name, label pairs, value.
type Parsed = (String, Vec<(String, String)>, f64);

fn owned(sample: &Sample) -> Parsed {
    let labels = sample
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    (sample.name.to_owned(), labels, sample.value)
}

/// Prometheus text, parsed back.
#[derive(Debug, Default)]
struct Exposition {
    /// Names with a `# HELP` line.
    helps: Vec<String>,
    /// `# TYPE` by name.
    types: HashMap<String, String>,
    samples: Vec<Parsed>,
}

fn parse_prometheus(text: &str) -> Result<Exposition> {
    let Exposition {
        mut helps,
        mut types,
        mut samples,
    } = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.push(rest.split(' ').next().unwrap_or_default().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE line")?;
            types.insert(name.to_owned(), kind.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').context("sample line")?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').context("label pair")?;
                    Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect::<Result<Vec<_>>>()?;
            samples.push((name.to_owned(), labels, value.parse::<f64>()?));
        }
    }
    Ok(Exposition {
        helps,
        types,
        samples,
    })
}

#[tokio::test]
async fn metrics_serves_prometheus_text_of_each_scrape() -> Result<()> {
    let sim = http_sim().await?;
    let mut client = Client::connect(&sim).await?;
    for n in 1..=2 {
        let response = client.get("/metrics").await?;
        assert_eq!(response.status, 200);
        assert!(response.headers["content-type"].starts_with("text/plain; version=0.0.4"));
        let Exposition {
            helps,
            types,
            samples,
        } = parse_prometheus(&response.body)?;
        let expected: Vec<Parsed> = http_sim::metrics_samples(n).iter().map(owned).collect();
        assert_eq!(samples, expected);
        for (name, _, _) in &samples {
            assert!(helps.contains(name), "HELP for {name}");
            assert!(types.contains_key(name), "TYPE for {name}");
        }
        assert_eq!(types["sim_energy_joules_total"], "counter");
        assert_eq!(types["sim_power_watts"], "gauge");
    }
    assert_eq!(sim.requests_to(Endpoint::Metrics), 2);
    sim.stop().await
}

#[tokio::test]
async fn error_garbage_and_unknown_paths_answer_as_documented() -> Result<()> {
    let sim = http_sim().await?;
    let mut client = Client::connect(&sim).await?;

    assert_eq!(client.get("/error").await?.status, 500);

    let garbage = client.get("/garbage").await?;
    assert_eq!(garbage.status, 200);
    assert_eq!(garbage.body, GARBAGE_BODY);
    assert!(serde_json::from_str::<serde_json::Value>(&garbage.body).is_err());

    assert_eq!(client.get("/nothing-here").await?.status, 404);

    // The connection survived all of them, and the meter's own count did not
    // move.
    assert_eq!(client.get("/meter").await?.status, 200);
    assert_eq!(sim.requests_to(Endpoint::Meter), 1);
    assert_eq!(sim.requests(), 4);
    assert_eq!(sim.connections(), 1);
    sim.stop().await
}

#[tokio::test]
async fn connection_close_is_honoured() -> Result<()> {
    let sim = http_sim().await?;
    let mut client = Client::connect(&sim).await?;
    let response = client.request("/meter", "Connection: close\r\n").await?;
    assert_eq!(response.headers["connection"], "close");
    assert!(client.is_closed().await);
    sim.stop().await
}

#[tokio::test]
async fn a_delay_holds_the_answer_back_until_it_is_lifted() -> Result<()> {
    let sim = HttpSim::new()
        .delay(Duration::from_secs(600))
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let mut slow = Client::connect(&sim).await?;
    let waited = tokio::time::timeout(Duration::from_millis(200), slow.get("/meter")).await;
    assert!(waited.is_err(), "an answer came despite the delay");

    sim.set_delay(Duration::ZERO);
    let mut fast = Client::connect(&sim).await?;
    let response = fast.get("/meter").await?;
    // The delayed request took number 1; this is number 2.
    let json: serde_json::Value = serde_json::from_str(&response.body)?;
    assert_eq!(json["count"].as_u64(), Some(2));

    // A per-request delay overrides the simulator's.
    let per_request = tokio::time::timeout(
        Duration::from_millis(200),
        fast.get("/meter?delay_ms=600000"),
    )
    .await;
    assert!(per_request.is_err(), "an answer came despite ?delay_ms");
    sim.stop().await
}

#[tokio::test]
async fn stop_closes_open_connections_and_the_port() -> Result<()> {
    let sim = http_sim().await?;
    let addr = sim.addr;
    let mut client = Client::connect(&sim).await?;
    assert_eq!(client.get("/meter").await?.status, 200);
    sim.stop().await?;
    assert!(client.is_closed().await, "keep-alive connection still open");
    assert!(TcpStream::connect(addr).await.is_err(), "port still open");
    Ok(())
}

/// Decode `words` as the agent's modbus driver would.
fn decode(kind: &str, high_word_first: bool, words: &[u16]) -> Result<f64> {
    let pair = |words: &[u16]| -> Result<u32> {
        let [a, b] = words else {
            bail!("{kind} needs 2 words, got {}", words.len())
        };
        let (high, low) = if high_word_first { (a, b) } else { (b, a) };
        Ok((u32::from(*high) << 16) | u32::from(*low))
    };
    Ok(match kind {
        "u16" => f64::from(words[0]),
        "i16" => f64::from(words[0] as i16),
        "u32" => f64::from(pair(words)?),
        "i32" => f64::from(pair(words)? as i32),
        "f32" => f64::from(f32::from_bits(pair(words)?)),
        _ => bail!("unknown kind {kind}"),
    })
}

#[tokio::test]
async fn modbus_registers_decode_to_the_documented_values() -> Result<()> {
    let sim = ModbusSim::new().bind("127.0.0.1:0".parse()?).await?;
    let mut ctx = tcp::connect_slave(sim.addr, Slave(1)).await?;
    for register in REGISTERS {
        let quantity = u16::try_from(register.words.len())?;
        let words = match register.table {
            Table::Holding => {
                ctx.read_holding_registers(register.address, quantity)
                    .await??
            }
            Table::Input => {
                ctx.read_input_registers(register.address, quantity)
                    .await??
            }
        };
        assert_eq!(words, register.words, "{register:?}");
        let value = decode(register.kind, register.high_word_first, &words)?;
        assert_eq!(value, register.value, "{register:?}");
    }
    assert_eq!(sim.requests(), REGISTERS.len() as u64);
    assert_eq!(sim.exceptions(), 0);

    // The values the module documents by name.
    let words = ctx
        .read_holding_registers(modbus_sim::HOLDING_F32, 2)
        .await??;
    assert_eq!(decode("f32", true, &words)?, 21.5);
    let words = ctx.read_input_registers(modbus_sim::INPUT_I16, 1).await??;
    assert_eq!(decode("i16", true, &words)?, -5.0);
    sim.stop().await
}

#[tokio::test]
async fn modbus_answers_exceptions_for_what_it_does_not_have() -> Result<()> {
    let sim = ModbusSim::new().bind("127.0.0.1:0".parse()?).await?;
    let mut ctx = tcp::connect_slave(sim.addr, Slave(7)).await?;

    let unknown = ctx.read_holding_registers(5000, 1).await?;
    assert_eq!(unknown, Err(ExceptionCode::IllegalDataAddress));

    // 110 is known, 111 is not: the whole read fails.
    let straddling = ctx
        .read_holding_registers(modbus_sim::HOLDING_U16, 2)
        .await?;
    assert_eq!(straddling, Err(ExceptionCode::IllegalDataAddress));

    // A holding address is not an input address.
    let wrong_table = ctx.read_input_registers(modbus_sim::HOLDING_U16, 1).await?;
    assert_eq!(wrong_table, Err(ExceptionCode::IllegalDataAddress));

    let write = ctx
        .write_single_register(modbus_sim::HOLDING_U16, 1)
        .await?;
    assert_eq!(write, Err(ExceptionCode::IllegalFunction));

    // The connection still serves after exceptions.
    let words = ctx
        .read_holding_registers(modbus_sim::HOLDING_U16, 1)
        .await??;
    assert_eq!(words, vec![1234]);
    assert_eq!(sim.exceptions(), 4);
    sim.stop().await
}

#[tokio::test]
async fn tributary_sim_serves_both_devices_and_exits_on_sigterm() -> Result<()> {
    let http = free_addr()?;
    let modbus = free_addr()?;
    let dir = TestDir::new("tributary-sim")?;
    let mut sim = Proc::builder("tributary-sim")?
        .args(["--http", &http.to_string(), "--modbus", &modbus.to_string()])
        .log_to(dir.join("sim.log"))
        .spawn()?;
    wait_for_port(http, Duration::from_secs(10)).await?;
    wait_for_port(modbus, Duration::from_secs(10)).await?;

    let stream = TcpStream::connect(http).await?;
    let (reader, writer) = stream.into_split();
    let mut client = Client {
        reader: BufReader::new(reader),
        writer,
    };
    assert_eq!(client.get("/meter").await?.status, 200);

    let mut ctx = tcp::connect(modbus).await?;
    let words = ctx.read_input_registers(modbus_sim::INPUT_I16, 1).await??;
    assert_eq!(words, vec![0xFFFB]);

    let status = sim.terminate(Duration::from_secs(10)).await?;
    ensure!(
        status.success(),
        "tributary-sim exited with {status}:\n{}",
        sim.log()
    );
    assert!(sim.log().contains("http device stopped after 1 requests"));
    Ok(())
}
