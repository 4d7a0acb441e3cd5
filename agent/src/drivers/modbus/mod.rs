//! The Modbus TCP driver: reads holding and input registers (decoded into
//! typed values), coils and discrete inputs (booleans).
//!
//! Metrics on adjacent or overlapping registers of the same kind are read in
//! one request ([`plan_reads`]); decoding is a pure function
//! ([`decode_registers`]). For gateways shared by many devices the driver
//! waits `connect_delay` after connecting and `request_pause` between its
//! requests; the scheduler limits polls per gateway address. The driver keeps one connection, taken out of
//! `self` for the length of a poll and put back only after every request got
//! a well-framed answer: a poll dropped by the scheduler's timeout, or one
//! that failed on the wire, leaves no connection behind, and the next poll
//! connects afresh instead of reading the stale answer of the cancelled one.
//!
//! Owns: one device's connection, read plan and decoding (`config.rs`: its
//! settings, including the gateway pacing the scheduler applies). May
//! touch: `crate::reading`, tokio-modbus.

use std::fmt;
use std::time::Duration;

use tokio_modbus::client::{Client, Context, tcp};
use tokio_modbus::{Request, Response, Slave};
use tracing::debug;

mod config;

pub use self::config::{ModbusConfig, ModbusMetric, RegisterKind, RegisterType, WordOrder};

use super::{BuildError, PollError, Poller, connect_error, failed_metrics};
use crate::config::DeviceConfig;
use crate::reading::{FailureKind, Polled, Sample, Value};
use tributary_process::error_chain;

/// Most registers one read request may ask for (Modbus application
/// protocol, function codes 3 and 4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;

/// Most bits one read request may ask for (function codes 1 and 2).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// The largest request a block of `kind` may be.
fn max_per_read(kind: RegisterKind) -> u16 {
    if kind.is_bits() {
        MAX_BITS_PER_READ
    } else {
        MAX_REGISTERS_PER_READ
    }
}

/// A Modbus TCP device.
pub struct ModbusDriver {
    address: String,
    unit_id: u8,
    metrics: Vec<ModbusMetric>,
    plan: Vec<ReadBlock>,
    connect_delay: Duration,
    request_pause: Duration,
    /// The idle connection between polls; `None` before the first poll and
    /// after a failed or cancelled one.
    conn: Option<Context>,
}

impl fmt::Debug for ModbusDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModbusDriver")
            .field("address", &self.address)
            .field("unit_id", &self.unit_id)
            .field("metrics", &self.metrics)
            .field("plan", &self.plan)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// One read request covering one or more metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Indices into the metric list.
    pub metrics: Vec<usize>,
}

impl fmt::Display for ReadBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = u32::from(self.start) + u32::from(self.count).max(1) - 1;
        let (one, many) = match self.kind {
            RegisterKind::Holding | RegisterKind::Input => ("register", "registers"),
            RegisterKind::Coil => ("", "s"),
            RegisterKind::Discrete => (" input", " inputs"),
        };
        if self.kind.is_bits() {
            if self.count <= 1 {
                write!(f, "{}{one} {}", self.kind.name(), self.start)
            } else {
                write!(f, "{}{many} {}..={last}", self.kind.name(), self.start)
            }
        } else if self.count <= 1 {
            write!(f, "{} {one} {}", self.kind.name(), self.start)
        } else {
            write!(f, "{} {many} {}..={last}", self.kind.name(), self.start)
        }
    }
}

/// Groups metrics into read requests: same kind, adjacent or overlapping
/// registers, at most [`MAX_REGISTERS_PER_READ`] registers (or
/// [`MAX_BITS_PER_READ`] bits) per request.
pub fn plan_reads(metrics: &[ModbusMetric]) -> Vec<ReadBlock> {
    let rank = |k: RegisterKind| match k {
        RegisterKind::Holding => 0,
        RegisterKind::Input => 1,
        RegisterKind::Coil => 2,
        RegisterKind::Discrete => 3,
    };
    let mut order: Vec<usize> = (0..metrics.len()).collect();
    order.sort_by_key(|&i| (rank(metrics[i].kind), metrics[i].register));
    let mut blocks: Vec<ReadBlock> = Vec::new();
    for i in order {
        let m = &metrics[i];
        let start = u32::from(m.register);
        let end = start + u32::from(m.data_type.words());
        if let Some(b) = blocks.last_mut() {
            let b_start = u32::from(b.start);
            let b_end = b_start + u32::from(b.count);
            let new_end = b_end.max(end);
            let max = max_per_read(m.kind);
            if b.kind == m.kind && start <= b_end && new_end - b_start <= u32::from(max) {
                // Fits: new_end - b_start <= max.
                b.count = u16::try_from(new_end - b_start).unwrap_or(max);
                b.metrics.push(i);
                continue;
            }
        }
        blocks.push(ReadBlock {
            kind: m.kind,
            start: m.register,
            count: m.data_type.words(),
            metrics: vec![i],
        });
    }
    blocks
}

/// Why registers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("short modbus response: {data_type} needs {need} registers, got {got}")]
pub struct DecodeError {
    pub data_type: &'static str,
    pub need: usize,
    pub got: usize,
}

/// Decodes the value at the start of `words` (extra words are ignored) and
/// multiplies it by `scale`. Integer types with a scale of exactly 1 stay
/// integers; everything else is a float.
pub fn decode_registers(
    words: &[u16],
    data_type: RegisterType,
    word_order: WordOrder,
    scale: f64,
) -> Result<Value, DecodeError> {
    let need = usize::from(data_type.words());
    let short = || DecodeError {
        data_type: data_type.name(),
        need,
        got: words.len(),
    };
    let raw32 = || -> Result<u32, DecodeError> {
        let [a, b] = words
            .get(..2)
            .and_then(|w| <[u16; 2]>::try_from(w).ok())
            .ok_or_else(short)?;
        let (hi, lo) = match word_order {
            WordOrder::Big => (a, b),
            WordOrder::Little => (b, a),
        };
        Ok((u32::from(hi) << 16) | u32::from(lo))
    };
    let first = || words.first().copied().ok_or_else(short);
    let int = |v: i64| {
        if scale == 1.0 {
            Value::I64(v)
        } else {
            Value::F64(v as f64 * scale)
        }
    };
    Ok(match data_type {
        RegisterType::U16 => int(i64::from(first()?)),
        RegisterType::I16 => int(i64::from(first()? as i16)),
        RegisterType::U32 => int(i64::from(raw32()?)),
        RegisterType::I32 => int(i64::from(raw32()? as i32)),
        RegisterType::F32 => Value::F64(f64::from(f32::from_bits(raw32()?)) * scale),
        // Bits are decoded by `read_all`; a register read as a bit is its
        // lowest bit.
        RegisterType::Bool => Value::Bool(first()? & 1 == 1),
    })
}

impl ModbusDriver {
    pub fn new(cfg: &ModbusConfig) -> Self {
        ModbusDriver {
            address: cfg.address.clone(),
            unit_id: cfg.unit_id,
            plan: plan_reads(&cfg.metrics),
            metrics: cfg.metrics.clone(),
            connect_delay: cfg.connect_delay,
            request_pause: cfg.request_pause,
            conn: None,
        }
    }

    /// (name, unit) of every metric, in config order.
    pub fn metrics(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.metrics
            .iter()
            .map(|m| (m.name.as_str(), m.unit.as_str()))
    }

    pub async fn poll(&mut self) -> Result<Vec<Sample>, PollError> {
        // Taken out for the whole poll: see the module doc.
        let (conn, reused) = match self.conn.take() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        match self.read_all(conn).await {
            // Devices and gateways close idle connections; a connection kept
            // from the last poll gets one retry on a fresh one.
            Err(Failure::Transport(e)) if reused => {
                debug!(address = %self.address, error = %e, "modbus connection went stale; reconnecting");
                let conn = self.connect().await?;
                self.read_all(conn).await.map_err(Failure::into_inner)
            }
            result => result.map_err(Failure::into_inner),
        }
    }

    /// A new connection, after `connect_delay`. Not an `async fn` on
    /// `&self`: see [`connect`].
    fn connect(&self) -> impl Future<Output = Result<Context, PollError>> + Send + 'static {
        let (address, unit_id, delay) = (self.address.clone(), self.unit_id, self.connect_delay);
        async move {
            let conn = connect(&address, unit_id).await?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(conn)
        }
    }

    /// Reads every block on `conn`, which goes back into `self` only after
    /// well-framed answers.
    async fn read_all(&mut self, mut conn: Context) -> Result<Vec<Sample>, Failure> {
        let mut values: Vec<Option<Value>> = vec![None; self.metrics.len()];
        for (n, block) in self.plan.iter().enumerate() {
            if n > 0 && !self.request_pause.is_zero() {
                tokio::time::sleep(self.request_pause).await;
            }
            let request = match block.kind {
                RegisterKind::Holding => Request::ReadHoldingRegisters(block.start, block.count),
                RegisterKind::Input => Request::ReadInputRegisters(block.start, block.count),
                RegisterKind::Coil => Request::ReadCoils(block.start, block.count),
                RegisterKind::Discrete => Request::ReadDiscreteInputs(block.start, block.count),
            };
            let data = match conn.call(request).await {
                Ok(Ok(Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w)))
                    if !block.kind.is_bits() =>
                {
                    Data::Words(w)
                }
                Ok(Ok(Response::ReadCoils(b) | Response::ReadDiscreteInputs(b)))
                    if block.kind.is_bits() =>
                {
                    Data::Bits(b)
                }
                Ok(Ok(other)) => {
                    return Err(Failure::Device(PollError::error(format!(
                        "modbus {} unit {} answered a read of {block} with {other:?}",
                        self.address, self.unit_id
                    ))));
                }
                Ok(Err(exception)) => {
                    // A well-framed answer: the connection is still good.
                    self.conn = Some(conn);
                    return Err(Failure::Device(PollError::error(format!(
                        "modbus exception from {} unit {} reading {block} ({}): {exception}",
                        self.address,
                        self.unit_id,
                        self.block_metric_names(block)
                    ))));
                }
                Err(e) => {
                    return Err(Failure::Transport(PollError::error(format!(
                        "modbus {} unit {} reading {block}: {}",
                        self.address,
                        self.unit_id,
                        error_chain(&e)
                    ))));
                }
            };
            let got = match &data {
                Data::Words(w) => w.len(),
                Data::Bits(b) => b.len(),
            };
            if got < usize::from(block.count) {
                return Err(Failure::Device(PollError::error(format!(
                    "short modbus response: {} unit {} answered {got} of {} {} reading {block} ({})",
                    self.address,
                    self.unit_id,
                    block.count,
                    if block.kind.is_bits() {
                        "bits"
                    } else {
                        "registers"
                    },
                    self.block_metric_names(block)
                ))));
            }
            for &i in &block.metrics {
                let Some(m) = self.metrics.get(i) else {
                    continue;
                };
                let offset = usize::from(m.register.saturating_sub(block.start));
                let value = match &data {
                    Data::Bits(bits) => {
                        bits.get(offset)
                            .map(|b| Value::Bool(*b))
                            .ok_or(DecodeError {
                                data_type: "bool",
                                need: offset + 1,
                                got: bits.len(),
                            })
                    }
                    Data::Words(words) => decode_registers(
                        words.get(offset..).unwrap_or(&[]),
                        m.data_type,
                        m.word_order,
                        m.scale,
                    ),
                }
                .map_err(|e| {
                    Failure::Device(PollError::error(format!(
                        "{e} for {} at {} register {}",
                        m.name,
                        m.kind.name(),
                        m.register
                    )))
                })?;
                if let Some(slot) = values.get_mut(i) {
                    *slot = Some(value);
                }
            }
        }
        self.conn = Some(conn);
        Ok(self
            .metrics
            .iter()
            .zip(values)
            .filter_map(|(m, v)| {
                v.map(|value| Sample {
                    unit: m.unit.clone(),
                    ..Sample::new(m.name.clone(), value)
                })
            })
            .collect())
    }

    fn block_metric_names(&self, block: &ReadBlock) -> String {
        block
            .metrics
            .iter()
            .filter_map(|&i| self.metrics.get(i).map(|m| m.name.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The payload of one read answer.
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// How a read failed, which decides whether a retry on a new connection
/// can help.
enum Failure {
    /// The connection broke (reset, closed, garbled frame).
    Transport(PollError),
    /// The device answered, but not with the values.
    Device(PollError),
}

impl Failure {
    fn into_inner(self) -> PollError {
        match self {
            Failure::Transport(e) | Failure::Device(e) => e,
        }
    }
}

/// Connects to the first address `address` resolves to that accepts.
///
/// A free function rather than a method: `ModbusDriver` is not `Sync` (the
/// connection is not), so no `&ModbusDriver` may live across an await.
async fn connect(address: &str, unit_id: u8) -> Result<Context, PollError> {
    let addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|e| PollError::error(format!("cannot resolve {address}: {e}")))?;
    let mut last_error = None;
    for addr in addrs {
        match tcp::connect_slave(addr, Slave(unit_id)).await {
            Ok(conn) => {
                debug!(address, %addr, unit_id, "modbus connected");
                return Ok(conn);
            }
            Err(e) => last_error = Some((addr, e)),
        }
    }
    let Some((addr, e)) = last_error else {
        return Err(PollError::error(format!(
            "{address} resolved to no address"
        )));
    };
    let target = if addr.to_string() == address {
        address.to_owned()
    } else {
        format!("{address} ({addr})")
    };
    Err(connect_error(&target, &e))
}

impl Poller for ModbusDriver {
    type Settings = ModbusConfig;

    fn build(settings: &ModbusConfig, _: &DeviceConfig) -> Result<Self, BuildError> {
        Ok(ModbusDriver::new(settings))
    }

    /// Boxed: the poll future is large (see [`super::Driver::poll_values`]).
    async fn poll(&mut self) -> Result<Polled, PollError> {
        Ok(Polled::Samples(Box::pin(ModbusDriver::poll(self)).await?))
    }

    fn failed(&self, kind: FailureKind, message: &str) -> Polled {
        failed_metrics(self.metrics(), kind, message)
    }
}

#[cfg(test)]
mod tests;
