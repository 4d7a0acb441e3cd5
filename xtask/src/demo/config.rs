//! The two agents' TOML configurations for the demo, pointed at the
//! collector and simulators of this run. They double as examples of the
//! config format, so they are written out in full and kept in `target/demo/`.

use std::net::SocketAddr;

/// Addresses of this run.
pub struct Addrs {
    pub collector: SocketAddr,
    /// The collector's HTTP listener (the fleet page).
    pub page: SocketAddr,
    pub http: SocketAddr,
    pub modbus: SocketAddr,
}

/// `edge-1`: three sim counters (one with extra synthetic gauges), the HTTP
/// meter read as JSON, and the same device's Prometheus endpoint.
pub fn edge_1(addrs: &Addrs) -> String {
    format!(
        r#"# Demo agent edge-1: simulated counters and an HTTP meter (JSON and Prometheus).
id = "edge-1"
collectors = ["http://{collector}"]

[[devices]]
name = "counter-1"
driver = "sim"
interval = "100ms"
series = 4              # four synthetic gauges besides the counter

[[devices]]
name = "counter-2"
driver = "sim"
interval = "100ms"

[[devices]]
name = "counter-3"
driver = "sim"
interval = "250ms"

[[devices]]
name = "meter"
driver = "http"
url = "http://{http}/meter"
format = "json"
interval = "250ms"
metrics = [
  {{ name = "power_w", pointer = "/power", unit = "W" }},
  {{ name = "voltage_v", pointer = "/voltage", unit = "V" }},
  {{ name = "count", pointer = "/count" }},
]

[[devices]]
name = "meter-prom"
driver = "http"
url = "http://{http}/metrics"
format = "prometheus"
interval = "1s"
"#,
        collector = addrs.collector,
        http = addrs.http,
    )
}

/// `edge-2`: two sim counters and a Modbus TCP PLC.
pub fn edge_2(addrs: &Addrs) -> String {
    format!(
        r#"# Demo agent edge-2: simulated counters and a Modbus TCP PLC.
id = "edge-2"
collectors = ["http://{collector}"]

[[devices]]
name = "counter-1"
driver = "sim"
interval = "100ms"

[[devices]]
name = "counter-2"
driver = "sim"
interval = "100ms"

[[devices]]
name = "plc"
driver = "modbus"
address = "{modbus}"
unit_id = 1
interval = "500ms"
metrics = [
  {{ name = "temp_c", register = 100, kind = "holding", type = "f32", unit = "C" }},
  {{ name = "temp_c_swapped", register = 102, kind = "holding", type = "f32", word_order = "little", unit = "C" }},
  {{ name = "setpoint", register = 110, kind = "holding", type = "u16" }},
  {{ name = "flow", register = 200, kind = "input", type = "i16" }},
  {{ name = "temp_scaled_c", register = 201, kind = "input", type = "u16", scale = 0.1, unit = "C" }},
  {{ name = "pressure_bar", register = 210, kind = "input", type = "f32", unit = "bar" }},
]
"#,
        collector = addrs.collector,
        modbus = addrs.modbus,
    )
}
