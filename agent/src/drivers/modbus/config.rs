//! Settings of the Modbus driver (`driver = "modbus"`): the address and
//! unit, the registers and bits to read and how to decode them, and the
//! pacing of a gateway shared by several devices.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source, check_metric_name, parse_duration};
use crate::drivers::settings::{DriverTable, EndpointLimits, Settings, check_address};

/// A Modbus TCP device (or a gateway in front of it).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConfig {
    /// `host:port`.
    pub address: String,
    /// Modbus unit (slave) id; 1 unless set.
    pub unit_id: u8,
    /// Non-empty.
    pub metrics: Vec<ModbusMetric>,
    /// Polls in flight at once against this address, over every device that
    /// uses it (the smallest value any of them sets wins); 1 unless set.
    pub max_concurrency: usize,
    /// Wait after a new connection before the first request (some gateways
    /// drop requests sent too early); zero unless set.
    pub connect_delay: Duration,
    /// Quiet time between two requests to this address, within a poll and
    /// between polls of devices sharing it; zero unless set.
    pub request_pause: Duration,
}

/// One value decoded from one or two registers, or one bit.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusMetric {
    pub name: String,
    /// Address of the first register or bit (0-based, as on the wire).
    pub register: u16,
    pub kind: RegisterKind,
    pub data_type: RegisterType,
    pub word_order: WordOrder,
    /// The decoded value is multiplied by this; 1.0 unless set, never 0.
    pub scale: f64,
    /// Empty when not given.
    pub unit: String,
}

/// Which table a metric is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Function code 3.
    Holding,
    /// Function code 4.
    Input,
    /// Function code 1: read/write bits.
    Coil,
    /// Function code 2: read-only bits.
    Discrete,
}

/// How register words are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    U16,
    I16,
    U32,
    I32,
    F32,
    /// A coil or discrete input.
    Bool,
}

impl RegisterKind {
    /// The name used in the config (`holding`, `input`, `coil`, `discrete`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
        }
    }

    /// Whether the table holds single bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
}

impl RegisterType {
    /// The name used in the config (`u16`, ..., `f32`, `bool`).
    pub fn name(self) -> &'static str {
        match self {
            RegisterType::U16 => "u16",
            RegisterType::I16 => "i16",
            RegisterType::U32 => "u32",
            RegisterType::I32 => "i32",
            RegisterType::F32 => "f32",
            RegisterType::Bool => "bool",
        }
    }

    /// How many registers (or bits) a value of this type spans.
    pub fn words(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 | RegisterType::Bool => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
        }
    }
}

/// Order of the two registers of a 32-bit value (bytes within a register are
/// always big-endian, as Modbus specifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// The first register holds the high word.
    #[default]
    Big,
    /// The first register holds the low word.
    Little,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    address: Spanned<String>,
    unit_id: Option<u8>,
    metrics: Spanned<Vec<Spanned<RawModbusMetric>>>,
    max_concurrency: Option<Spanned<usize>>,
    connect_delay: Option<Spanned<String>>,
    request_pause: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbusMetric {
    name: Spanned<String>,
    register: Spanned<u16>,
    kind: Option<RegisterKind>,
    #[serde(rename = "type")]
    data_type: Option<Spanned<RegisterType>>,
    word_order: Option<Spanned<WordOrder>>,
    scale: Option<Spanned<f64>>,
    unit: Option<String>,
}

impl RawModbus {
    fn validate(self, src: &Source<'_>, key: &str) -> Result<ModbusConfig, ConfigError> {
        let address = check_address(src, &self.address, &format!("{key}.address"))?;
        if self.metrics.get_ref().is_empty() {
            return Err(src.error(
                self.metrics.span(),
                format!("{key}.metrics"),
                "at least one metric is required",
            ));
        }
        let mut metrics = Vec::new();
        let mut seen = HashMap::new();
        for (i, m) in self.metrics.get_ref().iter().enumerate() {
            let m = m.get_ref();
            let mkey = format!("{key}.metrics[{i}]");
            check_metric_name(src, &mut seen, &m.name, &format!("{mkey}.name"))?;
            let kind = m.kind.unwrap_or(RegisterKind::Holding);
            let data_type = match (&m.data_type, kind.is_bits()) {
                (None, true) => RegisterType::Bool,
                (None, false) => RegisterType::U16,
                (Some(t), bits) => {
                    let t_ref = *t.get_ref();
                    if bits != (t_ref == RegisterType::Bool) {
                        let hint = if bits {
                            "coils and discrete inputs are single bits: use type = \"bool\" or leave it out"
                        } else {
                            "bool is for kind = \"coil\" or \"discrete\"; registers are u16, i16, u32, i32 or f32"
                        };
                        return Err(src.error(
                            t.span(),
                            format!("{mkey}.type"),
                            format!(
                                "wrong register type {} for kind {} ({hint})",
                                t_ref.name(),
                                kind.name()
                            ),
                        ));
                    }
                    t_ref
                }
            };
            if data_type == RegisterType::Bool {
                let extra = [
                    ("word_order", m.word_order.as_ref().map(|w| w.span())),
                    ("scale", m.scale.as_ref().map(|s| s.span())),
                ];
                for (name, span) in extra {
                    if let Some(span) = span {
                        return Err(src.error(
                            span,
                            format!("{mkey}.{name}"),
                            format!("`{name}` does not apply to a {} bit", kind.name()),
                        ));
                    }
                }
            }
            let register = *m.register.get_ref();
            if u32::from(register) + u32::from(data_type.words()) > 0x1_0000 {
                return Err(src.error(
                    m.register.span(),
                    format!("{mkey}.register"),
                    format!("register {register} with a 32-bit type runs past register 65535"),
                ));
            }
            let scale = match &m.scale {
                None => 1.0,
                Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                    return Err(src.error(
                        s.span(),
                        format!("{mkey}.scale"),
                        format!(
                            "invalid scale {} (expected a finite non-zero number)",
                            s.get_ref()
                        ),
                    ));
                }
                Some(s) => *s.get_ref(),
            };
            metrics.push(ModbusMetric {
                name: m.name.get_ref().clone(),
                register,
                kind,
                data_type,
                word_order: m
                    .word_order
                    .as_ref()
                    .map(|w| *w.get_ref())
                    .unwrap_or_default(),
                scale,
                unit: m.unit.clone().unwrap_or_default(),
            });
        }
        let max_concurrency = match &self.max_concurrency {
            None => 1,
            Some(n) if *n.get_ref() == 0 => {
                return Err(src.error(
                    n.span(),
                    format!("{key}.max_concurrency"),
                    "must be at least 1",
                ));
            }
            Some(n) => *n.get_ref(),
        };
        Ok(ModbusConfig {
            address,
            unit_id: self.unit_id.unwrap_or(1),
            metrics,
            max_concurrency,
            connect_delay: optional_duration(
                src,
                &self.connect_delay,
                &format!("{key}.connect_delay"),
            )?,
            request_pause: optional_duration(
                src,
                &self.request_pause,
                &format!("{key}.request_pause"),
            )?,
        })
    }
}

/// A duration that may be zero.
fn optional_duration(
    src: &Source<'_>,
    value: &Option<Spanned<String>>,
    key: &str,
) -> Result<Duration, ConfigError> {
    value
        .as_ref()
        .map(|v| parse_duration(src, v, key))
        .transpose()
        .map(Option::unwrap_or_default)
}

impl Settings for ModbusConfig {
    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawModbus = table.deserialize()?;
        raw.validate(table.src, table.key)
    }

    /// Devices on one gateway address share its limits.
    fn endpoint(&self) -> Option<EndpointLimits> {
        Some(EndpointLimits {
            key: format!("modbus://{}", self.address),
            max_concurrency: self.max_concurrency,
            pause: self.request_pause,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverConfig;
    use crate::drivers::testing::{device, err};

    #[test]
    fn modbus_bits_and_pacing() {
        let d = device(
            "driver = \"modbus\"\naddress = \"h:502\"\nunit_id = 3\nmax_concurrency = 2\n\
             connect_delay = \"50ms\"\nrequest_pause = \"10ms\"\n\
             metrics = [{ name = \"run\", register = 0, kind = \"coil\" },\n\
             { name = \"door\", register = 5, kind = \"discrete\", type = \"bool\" }]\n",
        )
        .expect("valid");
        let DriverConfig::Modbus(m) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(m.metrics[0].data_type, RegisterType::Bool);
        assert_eq!(m.metrics[1].kind, RegisterKind::Discrete);
        assert_eq!(m.connect_delay, Duration::from_millis(50));
        assert_eq!(
            d.endpoint(),
            Some(EndpointLimits {
                key: "modbus://h:502".into(),
                max_concurrency: 2,
                pause: Duration::from_millis(10)
            })
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"run\", register = 0, kind = \"coil\", type = \"f32\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].type: wrong register type f32 for kind coil"),
            "{e}"
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"t\", register = 0, type = \"bool\" }]\n",
        );
        assert!(
            e.contains("wrong register type bool for kind holding"),
            "{e}"
        );
        let e = err(
            "driver = \"modbus\"\naddress = \"h:502\"\nmetrics = [{ name = \"t\", register = 0, kind = \"coils\" }]\n",
        );
        assert!(
            e.starts_with("conf/agent.toml:8: devices[0].metrics[0].kind: unknown value `coils`"),
            "{e}"
        );
    }
}
