//! Modbus TCP device simulator on tokio-modbus's server.
//!
//! It holds a fixed register map (see [`REGISTERS`]) with one value of every
//! type the agent's `modbus` driver decodes. Reading a range that touches any
//! register not in the map answers the exception *illegal data address*; a
//! quantity of 0 or above 125 answers *illegal data value*; any function other
//! than "read holding registers" (0x03) and "read input registers" (0x04)
//! answers *illegal function*. Every unit id is served alike.

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, anyhow};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

/// Which register table a register lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Read with function 0x03.
    Holding,
    /// Read with function 0x04.
    Input,
}

/// One value in the simulator's register map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    /// Register table.
    pub table: Table,
    /// First register address.
    pub address: u16,
    /// The register words, in the order they sit at `address`, `address + 1`.
    pub words: &'static [u16],
    /// What the words mean when decoded with the type and word order below.
    pub value: f64,
    /// Type as the agent config names it (`u16`, `i16`, `u32`, `i32`, `f32`).
    pub kind: &'static str,
    /// For 32-bit types: true when the high word comes first (big-endian
    /// word order, the Modbus convention).
    pub high_word_first: bool,
}

/// Holding 100..=101: `f32` 21.5, high word first.
pub const HOLDING_F32: u16 = 100;
/// Holding 102..=103: `f32` 21.5, low word first.
pub const HOLDING_F32_LOW_FIRST: u16 = 102;
/// Holding 110: `u16` 1234.
pub const HOLDING_U16: u16 = 110;
/// Holding 120..=121: `u32` 305419896 (0x1234_5678), high word first.
pub const HOLDING_U32: u16 = 120;
/// Holding 122..=123: `i32` -100000, high word first.
pub const HOLDING_I32: u16 = 122;
/// Input 200: `i16` -5.
pub const INPUT_I16: u16 = 200;
/// Input 201: `u16` 215 (21.5 with `scale = 0.1`).
pub const INPUT_U16_SCALED: u16 = 201;
/// Input 210..=211: `f32` -3.25, high word first.
pub const INPUT_F32: u16 = 210;

/// The simulator's register map: what it serves, and what each value means.
pub const REGISTERS: &[Register] = &[
    Register {
        table: Table::Holding,
        address: HOLDING_F32,
        words: &[0x41AC, 0x0000],
        value: 21.5,
        kind: "f32",
        high_word_first: true,
    },
    Register {
        table: Table::Holding,
        address: HOLDING_F32_LOW_FIRST,
        words: &[0x0000, 0x41AC],
        value: 21.5,
        kind: "f32",
        high_word_first: false,
    },
    Register {
        table: Table::Holding,
        address: HOLDING_U16,
        words: &[1234],
        value: 1234.0,
        kind: "u16",
        high_word_first: true,
    },
    Register {
        table: Table::Holding,
        address: HOLDING_U32,
        words: &[0x1234, 0x5678],
        value: 305_419_896.0,
        kind: "u32",
        high_word_first: true,
    },
    Register {
        table: Table::Holding,
        address: HOLDING_I32,
        words: &[0xFFFE, 0x7960],
        value: -100_000.0,
        kind: "i32",
        high_word_first: true,
    },
    Register {
        table: Table::Input,
        address: INPUT_I16,
        words: &[0xFFFB],
        value: -5.0,
        kind: "i16",
        high_word_first: true,
    },
    Register {
        table: Table::Input,
        address: INPUT_U16_SCALED,
        words: &[215],
        value: 215.0,
        kind: "u16",
        high_word_first: true,
    },
    Register {
        table: Table::Input,
        address: INPUT_F32,
        words: &[0xC050, 0x0000],
        value: -3.25,
        kind: "f32",
        high_word_first: true,
    },
];

/// Largest quantity one read request may ask for (Modbus spec).
const MAX_READ_QUANTITY: u16 = 125;

/// Word-level view of [`REGISTERS`]: (table, address) → word.
type WordMap = BTreeMap<(Table, u16), u16>;

fn word_map() -> WordMap {
    let mut map = WordMap::new();
    for register in REGISTERS {
        for (offset, word) in (0u16..).zip(register.words) {
            map.insert((register.table, register.address + offset), *word);
        }
    }
    map
}

/// The tokio-modbus service: answers reads from the word map and counts
/// requests. Shared by every connection through an `Arc`.
struct SimService {
    words: WordMap,
    requests: AtomicU64,
    exceptions: AtomicU64,
}

impl SimService {
    fn read(&self, table: Table, address: u16, quantity: u16) -> Result<Vec<u16>, ExceptionCode> {
        if quantity == 0 || quantity > MAX_READ_QUANTITY {
            return Err(ExceptionCode::IllegalDataValue);
        }
        (0..quantity)
            .map(|offset| {
                let address = address
                    .checked_add(offset)
                    .ok_or(ExceptionCode::IllegalDataAddress)?;
                self.words
                    .get(&(table, address))
                    .copied()
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }
}

impl Service for SimService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let response = match request {
            Request::ReadHoldingRegisters(address, quantity) => self
                .read(Table::Holding, address, quantity)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(address, quantity) => self
                .read(Table::Input, address, quantity)
                .map(Response::ReadInputRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        if response.is_err() {
            self.exceptions.fetch_add(1, Ordering::SeqCst);
        }
        ready(response)
    }
}

/// Builder for the Modbus TCP simulator.
#[derive(Debug, Clone, Default)]
pub struct ModbusSim {}

impl ModbusSim {
    /// A simulator serving [`REGISTERS`].
    pub fn new() -> Self {
        ModbusSim {}
    }

    /// Bind `addr` (use `127.0.0.1:0` in tests) and serve on it.
    pub async fn bind(self, addr: SocketAddr) -> Result<ModbusListening> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("modbus sim: bind {addr}"))?;
        self.spawn(listener)
    }

    /// Serve on `listener` in a task of the current tokio runtime.
    pub fn spawn(self, listener: TcpListener) -> Result<ModbusListening> {
        let addr = listener.local_addr().context("modbus sim: local address")?;
        let service = Arc::new(SimService {
            words: word_map(),
            requests: AtomicU64::new(0),
            exceptions: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(listener, Arc::clone(&service), shutdown.clone()));
        Ok(ModbusListening {
            addr,
            service,
            shutdown,
            task,
        })
    }
}

/// Serve until `shutdown`. Dropping tokio-modbus's `serve` future also ends
/// every connection task it spawned, so stopping closes all connections.
async fn run(
    listener: TcpListener,
    service: Arc<SimService>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = Server::new(listener);
    let new_service = move |_peer: SocketAddr| Ok(Some(Arc::clone(&service)));
    let on_connected = move |stream, peer| {
        let connection = accept_tcp_connection(stream, peer, &new_service);
        async move { connection }
    };
    let on_process_error = |e: std::io::Error| {
        tracing::debug!(error = %e, "modbus sim: connection closed");
    };
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        result = server.serve(&on_connected, on_process_error) => result,
    }
}

/// A running Modbus simulator. Dropping it stops the server too (without
/// waiting); [`ModbusListening::stop`] stops it and waits.
pub struct ModbusListening {
    /// The bound address.
    pub addr: SocketAddr,
    service: Arc<SimService>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl ModbusListening {
    /// Requests received (every function code, every connection).
    pub fn requests(&self) -> u64 {
        self.service.requests.load(Ordering::SeqCst)
    }

    /// Requests answered with a Modbus exception.
    pub fn exceptions(&self) -> u64 {
        self.service.exceptions.load(Ordering::SeqCst)
    }

    /// Stop serving, close every connection and wait for the server task;
    /// a panic in it is re-raised here.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match (&mut self.task).await {
            Ok(result) => result.context("modbus sim: serve"),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow!("modbus sim task: {e}")),
        }
    }
}

impl Drop for ModbusListening {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
