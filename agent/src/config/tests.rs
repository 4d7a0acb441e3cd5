//! Tests of the agent's config: every key read, every default, and every
//! error at its file, line and key path.

use super::*;
use crate::drivers::DriverConfig;
use crate::drivers::http::{HttpAuth, HttpConfig, HttpFormat, JsonMetric};
use crate::drivers::modbus::{ModbusMetric, RegisterKind, RegisterType, WordOrder};
use crate::drivers::sim::SimConfig;

const HEAD: &str = "id = \"edge-1\"\ncollectors = [\"http://127.0.0.1:7400\"]\n";

fn parse_str(text: &str) -> Result<AgentConfig, ConfigError> {
    parse(text, Path::new("agent.toml"))
}

fn err(text: &str) -> String {
    match parse_str(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

/// A config with `n` devices of several kinds, comments and nested
/// tables of arrays.
fn many_devices(n: usize) -> String {
    let mut text = format!("{HEAD}max_concurrency = 8\n\n[spool]\nmax_bytes = \"1MiB\"\n");
    for i in 0..n {
        text.push_str(&match i % 3 {
            0 => format!("\n[[devices]] # sim {i}\nname = \"s{i}\"\ndriver = \"sim\"\ninterval = \"1s\"\nseries = {i}\n"),
            1 => format!(
                "\n  [[devices]]\nname = \"h{i}\"\ndriver = \"http\"\ninterval = \"1s\"\nurl = \"http://127.0.0.1:80/{i}\"\n\
                 [[devices.metrics]]\nname = \"a\"\npointer = \"/a\"\n[[devices.metrics]]\nname = \"b\"\npointer = \"/b\"\nunit = \"W\"\n"
            ),
            _ => format!(
                "\n[[devices]]\nname = \"m{i}\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\n\
                 metrics = [\n  {{ name = \"a\", register = {i} }},\n]\n"
            ),
        });
    }
    text
}

/// The whole-document parse (the reference the pieces must match).
fn parse_whole(text: &str) -> Result<AgentConfig, ConfigError> {
    parse_parts(&Layer::new(text, Path::new("agent.toml")), &[])
        .map(|cfg| cfg.expect("a whole parse always answers"))
}

#[test]
fn parsing_by_device_equals_parsing_the_whole_file() {
    let text = many_devices(30);
    let pieces = device_pieces(&Layer::new(&text, Path::new("agent.toml")));
    assert_eq!(
        pieces.len(),
        30,
        "every [[devices]] header is a split point"
    );
    let cfg = parse_str(&text).expect("valid");
    assert_eq!(cfg.devices.len(), 30);
    assert_eq!(cfg, parse_whole(&text).expect("valid"));
    let DriverConfig::Http(h) = &cfg.devices[1].driver else {
        panic!("http device: {:?}", cfg.devices[1]);
    };
    assert_eq!(h.metrics.len(), 2);
}

#[test]
fn errors_in_a_later_device_name_the_file_line() {
    let good = many_devices(10);
    // A bad interval in the last device, and a duplicate name.
    for (extra, needle) in [
        (
            "\n[[devices]]\nname = \"x\"\ndriver = \"sim\"\ninterval = \"soon\"\n",
            "interval",
        ),
        (
            "\n[[devices]]\nname = \"s0\"\ndriver = \"sim\"\ninterval = \"1s\"\n",
            "duplicate device name \"s0\"",
        ),
        ("\n[[devices]]\nname = = 1\n", "invalid toml"),
    ] {
        let text = format!("{good}{extra}");
        let e = parse_str(&text).expect_err("invalid");
        let whole = parse_whole(&text).expect_err("invalid");
        assert_eq!(e.to_string(), whole.to_string());
        assert!(e.to_string().contains(needle), "{e}");
        let ConfigError::Invalid { line, .. } = e else {
            panic!("{e}");
        };
        assert!(
            line > good.lines().count(),
            "line {line} is in the last device"
        );
    }
}

#[test]
fn a_table_after_the_devices_is_read_as_toml_says() {
    // `[batch]` after the devices is a top-level table: the last device's
    // piece ends before it, and it is read with the top level (the file
    // with the devices blanked out), not by parsing the whole file.
    let text = format!("{}\n[batch]\nmax_readings = 7\n", many_devices(4));
    let pieces = device_pieces(&Layer::new(&text, Path::new("agent.toml")));
    assert_eq!(pieces.len(), 4);
    let batch = text.find("[batch]").expect("written");
    assert_eq!(pieces[3].end, batch, "the last device ends at [batch]");
    let cfg = parse_str(&text).expect("valid");
    assert_eq!(cfg.batch.max_readings, 7);
    assert_eq!(cfg, parse_whole(&text).expect("valid"));
    // A `[[devices]]` header inside a multi-line string is no split point.
    let text = format!(
        "{HEAD}[[devices]]\nname = \"e\"\ndriver = \"exec\"\ninterval = \"1s\"\ncommand = \"\"\"\n[[devices]]\n\"\"\"\n"
    );
    assert_eq!(
        parse_str(&text).map_err(|e| e.to_string()),
        parse_whole(&text).map_err(|e| e.to_string())
    );
}

#[test]
fn only_keys_outside_comments_call_for_assembly() {
    use super::assemble::needs_assembly;
    // The `poll` bench's header: "defaults" in a comment only.
    let bench = format!(
        "# Only shutdown differs from the defaults\n{HEAD}\n  # include = [\"x.toml\"]\n[metrics]\nlisten = \"off\"\n"
    );
    assert!(!needs_assembly(&bench));
    for text in [
        format!("{HEAD}include = [\"more.toml\"]\n"),
        format!("{HEAD}[defaults]\ninterval = \"1s\"\n"),
        format!("{HEAD}[tls]\nkey_file = \"k\"\n"),
        // A `$` anywhere: this line of a multi-line string is no comment.
        format!("{HEAD}[[devices]]\ncommand = \"\"\"\n# ${{HOME}}\n\"\"\"\n"),
        // A `#` line that closes a multi-line string and goes on with a key.
        format!(
            "{HEAD}[[devices]]\nlabels = {{ n = \"\"\"\n#\"\"\", password_file = \"/run/pw\" }}\n"
        ),
    ] {
        assert!(needs_assembly(&text), "{text}");
    }
}

#[test]
fn tables_between_and_after_the_devices_parse_as_the_whole_file_does() {
    let sim =
        |n: usize| format!("\n[[devices]]\nname = \"s{n}\"\ndriver = \"sim\"\ninterval = \"1s\"\n");
    let cases = [
        // Between devices, and after them.
        format!(
            "{HEAD}{}\n[spool]\nmax_bytes = \"1MiB\"\n{}{}\n[metrics]\nlisten = \"off\"\n",
            sim(0),
            sim(1),
            sim(2)
        ),
        // A device's own table after another top-level table belongs to the
        // last device (TOML), which only a whole parse knows.
        format!(
            "{HEAD}{}\n[batch]\nmax_readings = 7\n[devices.labels]\nroom = \"a\"\n",
            sim(0)
        ),
        // Errors in such a table, and a table defined twice.
        format!("{HEAD}{}\n[metrics]\nlisten = 5\n", sim(0)),
        format!("{HEAD}{}\n[metrics]\nlisten = \"off\"\nbogus = 1\n", sim(0)),
        format!(
            "{HEAD}[metrics]\nlisten = \"off\"\n{}\n[metrics]\nlisten = \"off\"\n",
            sim(0)
        ),
        // A line in a multi-line array that looks like a table header.
        format!(
            "{HEAD}{}\n[batch]\nmax_readings = 7\n{}addresses = [\n[1, 2],\n]\n",
            sim(0),
            sim(1)
        ),
        // A multi-line string in another table that holds a device and a
        // header-like line: text, not a device (the pieces would read one).
        format!(
            "{HEAD}[tls]\nserver_name = \"\"\"\n[[devices]]\nname = \"ghost\"\ndriver = \"sim\"\ninterval = \"1s\"\n[x]\n\"\"\"\n"
        ),
        format!(
            "{HEAD}[tls]\nserver_name = '''\n[[devices]]\nname = \"ghost\"\ndriver = \"sim\"\ninterval = \"1s\"\n[x]\n'''\n"
        ),
        // Keys, quoted and dotted, and a header with a comment.
        format!(
            "{HEAD}{}\n[ \"metrics\" ] # served\nlisten = \"off\"\n{}\n[uplink . x]\n",
            sim(0),
            sim(1)
        ),
    ];
    for text in &cases {
        let piecewise = parse_str(text).map_err(|e| e.to_string());
        let whole = parse_whole(text).map_err(|e| e.to_string());
        assert_eq!(piecewise, whole, "{text}");
    }
    // The first case is read in pieces (the whole parse is not needed).
    let layer = Layer::new(&cases[0], Path::new("agent.toml"));
    let pieces = device_pieces(&layer);
    assert_eq!(pieces.len(), 3);
    assert!(matches!(parse_parts(&layer, &pieces), Ok(Some(_))));
    let cfg = parse_str(&cases[0]).expect("valid");
    assert_eq!(cfg.devices.len(), 3);
    assert_eq!(cfg.spool.max_bytes, 1 << 20);
    assert_eq!(cfg.metrics.listen, None);
    // The errors name the line they are on.
    let e = parse_str(&cases[2]).expect_err("invalid");
    assert!(e.to_string().contains("agent.toml:10"), "{e}");
}

#[test]
fn full_example_parses() {
    let text = r#"
id = "edge-1"
collectors = ["http://127.0.0.1:7400", "https://c2.example:7400"]
max_concurrency = 64

[batch]
max_readings = 500
max_delay = "50ms"

[[devices]]
name = "counter-1"
driver = "sim"
interval = "50ms"
series = 3

[[devices]]
name = "meter"
driver = "http"
interval = "5s"
url = "http://127.0.0.1:8080/meter"
format = "json"
metrics = [{ name = "power_w", pointer = "/power", unit = "W" }]

[[devices]]
name = "node"
driver = "http"
interval = "10s"
timeout = "2s"
url = "http://127.0.0.1:9100/metrics"
format = "prometheus"

[[devices]]
name = "plc"
driver = "modbus"
interval = "1s"
timeout = "300ms"
address = "127.0.0.1:5020"
metrics = [
  { name = "temp_c", register = 100, kind = "holding", type = "f32", word_order = "little", scale = 0.1, unit = "C" },
  { name = "count", register = 7, kind = "input" },
]
"#;
    let cfg = parse_str(text).expect("valid config");
    assert_eq!(cfg.id, "edge-1");
    assert_eq!(cfg.collectors.len(), 2);
    assert_eq!(cfg.max_concurrency, 64);
    assert_eq!(
        cfg.batch,
        BatchConfig {
            max_readings: 500,
            max_delay: Duration::from_millis(50)
        }
    );
    assert_eq!(cfg.devices.len(), 4);
    let sim = &cfg.devices[0];
    assert_eq!(sim.interval, Duration::from_millis(50));
    assert_eq!(sim.timeout, Duration::from_millis(50), "min(1s, interval)");
    assert_eq!(sim.driver, DriverConfig::Sim(SimConfig { series: 3 }));
    assert_eq!(cfg.devices[1].timeout, Duration::from_secs(1));
    assert_eq!(
        cfg.devices[1].driver,
        DriverConfig::Http(HttpConfig {
            url: "http://127.0.0.1:8080/meter".into(),
            format: HttpFormat::Json,
            metrics: vec![JsonMetric {
                name: "power_w".into(),
                pointer: "/power".into(),
                unit: "W".into()
            }],
            auth: HttpAuth::None,
            ca: None,
        })
    );
    assert_eq!(cfg.devices[2].timeout, Duration::from_secs(2));
    let DriverConfig::Modbus(m) = &cfg.devices[3].driver else {
        panic!("expected modbus, got {:?}", cfg.devices[3].driver);
    };
    assert_eq!(m.unit_id, 1);
    assert_eq!(m.address, "127.0.0.1:5020");
    assert_eq!(
        m.metrics[0],
        ModbusMetric {
            name: "temp_c".into(),
            register: 100,
            kind: RegisterKind::Holding,
            data_type: RegisterType::F32,
            word_order: WordOrder::Little,
            scale: 0.1,
            unit: "C".into(),
        }
    );
    assert_eq!(m.metrics[1].kind, RegisterKind::Input);
    assert_eq!(m.metrics[1].data_type, RegisterType::U16);
    assert_eq!(m.metrics[1].word_order, WordOrder::Big);
    assert_eq!(m.metrics[1].scale, 1.0);
}

#[test]
fn defaults_apply() {
    let cfg = parse_str(HEAD).expect("valid config");
    assert_eq!(cfg.max_concurrency, DEFAULT_MAX_CONCURRENCY);
    assert_eq!(cfg.max_series_per_device, DEFAULT_MAX_SERIES_PER_DEVICE);
    assert_eq!(cfg.batch, BatchConfig::default());
    assert!(cfg.devices.is_empty());
}

#[test]
fn metrics_listen_defaults_to_loopback_and_can_be_off() {
    let cfg = parse_str(HEAD).expect("valid config");
    assert_eq!(
        cfg.metrics.listen,
        Some("127.0.0.1:9465".parse().expect("address"))
    );
    let cfg = parse_str(&format!("{HEAD}[metrics]\nlisten = \"off\"\n")).expect("valid config");
    assert_eq!(cfg.metrics.listen, None);
    let cfg =
        parse_str(&format!("{HEAD}[metrics]\nlisten = \"[::1]:9999\"\n")).expect("valid config");
    assert_eq!(
        cfg.metrics.listen,
        Some("[::1]:9999".parse().expect("address"))
    );
    let e = err(&format!("{HEAD}[metrics]\nlisten = \"localhost:9465\"\n"));
    assert!(
        e.starts_with("agent.toml:4: metrics.listen: invalid listen address \"localhost:9465\""),
        "{e}"
    );
    let e = err(&format!("{HEAD}[metrics]\nport = 1\n"));
    assert!(
        e.starts_with("agent.toml:4: metrics: unknown key `port` (expected one of `listen`)"),
        "{e}"
    );
}

#[test]
fn max_series_per_device_is_read_and_at_least_two() {
    let cfg = parse_str(&format!("{HEAD}max_series_per_device = 7\n")).expect("valid config");
    assert_eq!(cfg.max_series_per_device, 7);
    let e = err(&format!("{HEAD}max_series_per_device = 1\n"));
    assert!(
        e.starts_with("agent.toml:3: max_series_per_device: must be at least 2"),
        "{e}"
    );
}

#[test]
fn unknown_top_level_key_names_line_and_key() {
    let e = err(&format!("{HEAD}intervall = 5\n"));
    assert!(
        e.starts_with("agent.toml:3: unknown key `intervall` (expected one of "),
        "{e}"
    );
    assert!(e.contains("`devices`") && e.contains("`collectors`"), "{e}");
}

#[test]
fn unknown_device_key_names_device_and_driver() {
    let text = format!(
        "{HEAD}\n[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\nurl = \"http://x\"\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:8: devices[0]: unknown key `url` for driver sim (expected one of `name`, `driver`, `interval`, `timeout`, `backoff_max`, `labels`, `series`)"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_inline_metric_table() {
    let text = format!(
        "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [\n  {{ name = \"a\", register = 1 }},\n  {{ name = \"b\", registr = 2 }},\n]\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:10: devices[0].metrics[1]: unknown key `registr`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_line_and_key() {
    let text = format!(
        "{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\n\n[[devices]]\nname = \"b\"\ndriver = \"sim\"\ninterval = \"5x\"\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:11: devices[1].interval: invalid duration \"5x\": "),
        "{e}"
    );
}

#[test]
fn wrong_type_is_located() {
    let text = format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = 5\n");
    let e = err(&text);
    assert!(e.starts_with("agent.toml:6: devices[0].interval: "), "{e}");
    let text = format!(
        "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [{{ name = \"a\", register = 1, type = \"f64\" }}]\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:8: devices[0].metrics[0].type: unknown value `f64`"),
        "{e}"
    );
}

#[test]
fn zero_interval_is_rejected() {
    let text = format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"0s\"\n");
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:6: devices[0].interval: interval must be greater than 0"),
        "{e}"
    );
}

#[test]
fn missing_url_names_device_and_key() {
    let text =
        format!("{HEAD}\n[[devices]]\nname = \"meter\"\ndriver = \"http\"\ninterval = \"1s\"\n");
    let e = err(&text);
    assert_eq!(
        e,
        "agent.toml:4: devices[0]: missing key `url` for driver http"
    );
}

#[test]
fn missing_key_in_inline_metric_table() {
    let text = format!(
        "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:502\"\nmetrics = [\n  {{ name = \"a\", register = 1 }},\n  {{ name = \"b\" }},\n]\n"
    );
    let e = err(&text);
    assert_eq!(
        e,
        "agent.toml:10: devices[0].metrics[1]: missing key `register`"
    );
}

#[test]
fn missing_required_top_level_key() {
    let e = err("id = \"a\"\n");
    assert_eq!(e, "agent.toml:1: missing key `collectors`");
}

#[test]
fn duplicate_device_names_are_rejected() {
    let dev = "[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"1s\"\n";
    let e = err(&format!("{HEAD}{dev}{dev}"));
    assert_eq!(
        e,
        "agent.toml:8: devices[1].name: duplicate device name \"a\" (first defined at agent.toml:4)"
    );
}

#[test]
fn unknown_driver_is_rejected() {
    let text = format!("{HEAD}[[devices]]\nname = \"a\"\ndriver = \"snmpx\"\ninterval = \"1s\"\n");
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:5: devices[0].driver: unknown driver \"snmpx\""),
        "{e}"
    );
}

#[test]
fn semantic_errors_are_located() {
    let e = err("id = \"a b\"\ncollectors = [\"http://x:1\"]\n");
    assert!(e.starts_with("agent.toml:1: id: invalid agent id"), "{e}");
    let e = err("id = \"a\"\ncollectors = []\n");
    assert!(
        e.starts_with("agent.toml:2: collectors: at least one"),
        "{e}"
    );
    let e = err("id = \"a\"\ncollectors = [\"http://x:1\",\n \"ftp://y\"]\n");
    assert!(
        e.starts_with("agent.toml:3: collectors[1]: invalid url"),
        "{e}"
    );
    let e = err(&format!("{HEAD}max_concurrency = 0\n"));
    assert_eq!(e, "agent.toml:3: max_concurrency: must be at least 1");
    let e = err(&format!("{HEAD}[batch]\nmax_delay = \"soon\"\n"));
    assert!(
        e.starts_with("agent.toml:4: batch.max_delay: invalid duration"),
        "{e}"
    );
    let text = format!(
        "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"nohost\"\nmetrics = [{{ name = \"a\", register = 1 }}]\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:7: devices[0].address: invalid address"),
        "{e}"
    );
    let text = format!(
        "{HEAD}[[devices]]\nname = \"m\"\ndriver = \"modbus\"\ninterval = \"1s\"\naddress = \"h:1\"\nmetrics = [{{ name = \"a\", register = 65535, type = \"u32\" }}]\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:8: devices[0].metrics[0].register: "),
        "{e}"
    );
    let text = format!(
        "{HEAD}[[devices]]\nname = \"j\"\ndriver = \"http\"\ninterval = \"1s\"\nurl = \"http://h/\"\nmetrics = [{{ name = \"a\", pointer = \"/a\" }},\n {{ name = \"a\", pointer = \"b\" }}]\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("agent.toml:9: devices[0].metrics[1].name: duplicate metric name"),
        "{e}"
    );
    let text = format!("{HEAD}[[devices]]\nname = \"\"\ndriver = \"sim\"\ninterval = \"1s\"\n");
    let e = err(&text);
    assert_eq!(
        e,
        "agent.toml:4: devices[0].name: device name must not be empty"
    );
}

#[test]
fn spool_tls_uplink_defaults() {
    let cfg = parse_str(HEAD).expect("valid config");
    assert_eq!(
        cfg.spool,
        SpoolConfig {
            dir: PathBuf::from("./tributary-spool/edge-1"),
            max_bytes: 256 * 1024 * 1024,
            policy: SpoolPolicy::DropOldest,
            sync: true,
        }
    );
    assert_eq!(cfg.tls, None);
    assert_eq!(cfg.uplink, UplinkSettings::default());
    assert_eq!(cfg.uplink.connect_timeout, Duration::from_secs(5));
}

#[test]
fn spool_tls_uplink_sections_parse() {
    let text = format!(
        "{HEAD}[spool]\ndir = \"/var/lib/tributary/spool\"\nmax_bytes = \"1GB\"\npolicy = \"block\"\nsync = false\n\
         [tls]\nca = \"ca.pem\"\ncert = \"/etc/t/edge-1.pem\"\nkey = \"edge-1-key.pem\"\nserver_name = \"localhost\"\n\
         [uplink]\nbacklog_share = 0.5\nkeepalive_interval = \"2s\"\nkeepalive_timeout = \"3s\"\nconnect_timeout = \"500ms\"\nbackoff_max = \"1m\"\nshutdown_timeout = \"20s\"\n"
    );
    let cfg = parse(&text, Path::new("/etc/tributary/agent.toml")).expect("valid config");
    assert_eq!(
        cfg.spool,
        SpoolConfig {
            dir: PathBuf::from("/var/lib/tributary/spool"),
            max_bytes: 1_000_000_000,
            policy: SpoolPolicy::Block,
            sync: false,
        }
    );
    assert_eq!(
        cfg.tls,
        Some(TlsConfig {
            ca: Some(PathBuf::from("/etc/tributary/ca.pem")),
            cert: Some(PathBuf::from("/etc/t/edge-1.pem")),
            key: Some(PathBuf::from("/etc/tributary/edge-1-key.pem")),
            server_name: Some("localhost".into()),
        })
    );
    assert_eq!(
        cfg.uplink,
        UplinkSettings {
            backlog_share: 0.5,
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(20),
        }
    );
    // Relative spool dir: against the config file's directory too.
    let cfg = parse(
        &format!("{HEAD}[spool]\ndir = \"spool\"\n[tls]\nca = \"ca.pem\"\n"),
        Path::new("conf/agent.toml"),
    )
    .expect("valid config");
    assert_eq!(cfg.spool.dir, PathBuf::from("conf/spool"));
    assert_eq!(
        cfg.tls.and_then(|t| t.ca),
        Some(PathBuf::from("conf/ca.pem"))
    );
}

#[test]
fn spool_tls_uplink_errors_are_located() {
    let e = err(&format!("{HEAD}[spool]\nmax_bytes = \"1KiB\"\n"));
    assert!(
        e.starts_with(
            "agent.toml:4: spool.max_bytes: spool size 1024 bytes is below the minimum of 64KiB"
        ),
        "{e}"
    );
    let e = err(&format!("{HEAD}[spool]\nmax_bytes = \"12 parsecs\"\n"));
    assert!(
        e.starts_with("agent.toml:4: spool.max_bytes: invalid size \"12 parsecs\": unknown unit"),
        "{e}"
    );
    let e = err(&format!("{HEAD}[spool]\npolicy = \"drop_newest\"\n"));
    assert!(
        e.starts_with("agent.toml:4: spool.policy: unknown value `drop_newest`"),
        "{e}"
    );
    let e = err(&format!("{HEAD}[spool]\nsize = 3\n"));
    assert!(
        e.starts_with("agent.toml:4: spool: unknown key `size`"),
        "{e}"
    );
    let e = err(&format!("{HEAD}[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n"));
    assert_eq!(
        e,
        "agent.toml:5: tls.cert: a client certificate needs its private key: `tls.key` is missing"
    );
    let e = err(&format!("{HEAD}[tls]\nkey = \"k.pem\"\n"));
    assert!(e.starts_with("agent.toml:4: tls.key: "), "{e}");
    let e = err(&format!("{HEAD}[tls]\nca = \"\"\n"));
    assert_eq!(e, "agent.toml:4: tls.ca: path must not be empty");
    let e = err(&format!("{HEAD}[uplink]\n\nbackoff_max = \"0s\"\n"));
    assert_eq!(
        e,
        "agent.toml:5: uplink.backoff_max: must be greater than 0"
    );
    let e = err(&format!("{HEAD}[uplink]\nconnect_timeout = \"fast\"\n"));
    assert!(
        e.starts_with("agent.toml:4: uplink.connect_timeout: invalid duration \"fast\""),
        "{e}"
    );
}

#[test]
fn toml_syntax_error_names_line() {
    let e = err(&format!("{HEAD}\nid = = 3\n"));
    assert!(e.starts_with("agent.toml:4: invalid toml: "), "{e}");
}

#[test]
fn load_names_missing_file() {
    let e = load(Path::new("/nonexistent/agent.toml")).expect_err("no such file");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/agent.toml: cannot read config file: "),
        "{e}"
    );
}

#[test]
fn durations_are_bounded() {
    let text = format!(
        "{HEAD}[[devices]]\nname = \"a\"\ndriver = \"sim\"\ninterval = \"500000000000y\"\n"
    );
    assert_eq!(
        err(&text),
        "agent.toml:6: devices[0].interval: invalid duration \"500000000000y\": longer than the limit of 100years"
    );
    let e = err(&format!("{HEAD}[uplink]\nshutdown_timeout = \"101y\"\n"));
    assert!(
        e.starts_with("agent.toml:4: uplink.shutdown_timeout: invalid duration \"101y\": longer than the limit of 100years"),
        "{e}"
    );
}

/// The assembled config holds its secrets in clear; its `Debug` (and that
/// of a layer of it) never shows them.
#[test]
fn debug_of_an_assembled_config_shows_no_secret() {
    let dir = std::env::temp_dir().join(format!(
        "tributary-debug-secret-{}-{}",
        std::process::id(),
        crate::reading::now_ns()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret = "s3cret-in-debug-4711";
    std::fs::write(dir.join("community"), format!("{secret}\n")).expect("write secret");
    let path = dir.join("agent.toml");
    let text = "id = \"a\"\ncollectors = [\"http://127.0.0.1:7400\"]\n\n[[devices]]\nname = \"r\"\ndriver = \"snmp\"\naddress = \"10.0.0.1:161\"\nmetrics = [{ name = \"up\", oid = \"1.3.6.1.2.1.1.3.0\" }]\ncommunity_file = \"community\"\n";
    let assembled =
        super::assemble::assemble(text, &path, &|_| None, &mut Vec::new()).expect("assembled");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(assembled.text.contains(secret), "the secret was read");
    let layer = tributary_config::Layer::new(&assembled.text, &path);
    let shown = format!("{assembled:?} {layer:?} {:?}", layer.source());
    assert!(!shown.contains(secret), "{shown}");
    let line = tributary_config::Line::new(
        format!("community = \"{secret}\""),
        tributary_config::Origin { file: 0, line: 1 },
    );
    let entry = tributary_config::Entry::Inline(line.clone());
    let shown = format!("{line:?} {entry:?}");
    assert!(!shown.contains(secret), "{shown}");
}

/// `labels` merge label by label across `[defaults]`, a template, a CSV
/// row's `label.<k>` columns and a device's own table: the later layer's
/// value wins, the other labels stay.
#[test]
fn labels_merge_across_layers() {
    let dir = std::env::temp_dir().join(format!(
        "tributary-labels-merge-{}-{}",
        std::process::id(),
        crate::reading::now_ns()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("sw.csv"), "name,label.site\ncsv-1,from-csv\n").expect("write csv");
    let text = "id = \"a\"\ncollectors = [\"http://127.0.0.1:7400\"]\n\n\
                [defaults]\ninterval = \"1s\"\nlabels = { rack = \"r1\", site = \"default\", \"zone\" = \"d\" }\n\n\
                [templates.t]\ndriver = \"sim\"\nlabels = { role = \"edge\", rack = \"r2\" }\n\n\
                [[inventories]]\nfile = \"sw.csv\"\ntemplate = \"t\"\n\n\
                [[devices]]\nname = \"own\"\ndriver = \"sim\"\n[devices.labels]\n\"zone\" = \"own\"\n";
    let cfg = super::parse_with(text, &dir.join("agent.toml"), &|_| None);
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = cfg.expect("valid");
    let labels = |name: &str| -> Vec<(String, String)> {
        cfg.devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.labels.clone().into_iter().collect())
            .unwrap_or_default()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        labels("csv-1"),
        pairs(&[
            ("rack", "r2"),
            ("role", "edge"),
            ("site", "from-csv"),
            ("zone", "d")
        ])
    );
    assert_eq!(
        labels("own"),
        pairs(&[("rack", "r1"), ("site", "default"), ("zone", "own")])
    );
}

#[test]
fn a_backlog_share_is_above_zero_and_at_most_one() {
    for bad in ["0", "0.0", "1.5", "-0.2", "nan"] {
        let e = err(&format!("{HEAD}[uplink]\nbacklog_share = {bad}\n"));
        assert!(
            e.starts_with("agent.toml:4: uplink.backlog_share: ")
                && e.contains("above 0 and at most 1"),
            "{bad}: {e}"
        );
    }
    let e = err(&format!("{HEAD}[uplink]\nbacklog_share = \"half\"\n"));
    assert!(e.contains("uplink.backlog_share"), "{e}");
    for (good, want) in [("1", 1.0), ("0.25", 0.25)] {
        let cfg =
            parse_str(&format!("{HEAD}[uplink]\nbacklog_share = {good}\n")).expect("valid config");
        assert_eq!(cfg.uplink.backlog_share, want);
    }
    let cfg = parse_str(HEAD).expect("valid config");
    assert_eq!(cfg.uplink.backlog_share, 0.8);
}
