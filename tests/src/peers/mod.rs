//! Real device peers that were not written here, for the driver tests:
//! net-snmp's `snmpd`, `prometheus-node-exporter`, a pymodbus Modbus TCP
//! server and Mosquitto (a private broker, plus `mosquitto_pub`); and, for
//! the metrics tests, a private Prometheus server and `promtool`
//! (`prometheus.rs`).
//!
//! Each program is found through the environment variable `cargo xtask
//! test` sets (it installs what is missing) or at its well-known path; a
//! missing program is an error that says to run `cargo xtask test`, never a
//! skipped test. Each peer runs on a free loopback port with a config the
//! test writes into its [`TestDir`], its output in a log file, and is killed
//! when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

use crate::process::{TestDir, free_addr, wait_for_port};

pub mod nats;
pub mod prometheus;
pub mod receivers;

/// `snmpd` (Debian package `snmpd`).
pub const SNMPD_ENV: &str = "TRIBUTARY_SNMPD";
/// `prometheus-node-exporter`.
pub const NODE_EXPORTER_ENV: &str = "TRIBUTARY_NODE_EXPORTER";
/// The python of the venv pymodbus is installed in.
pub const PYMODBUS_PYTHON_ENV: &str = "TRIBUTARY_PYMODBUS_PYTHON";
/// The `mosquitto` broker binary.
pub const MOSQUITTO_ENV: &str = "TRIBUTARY_MOSQUITTO";
/// `mosquitto_pub`.
pub const MOSQUITTO_PUB_ENV: &str = "TRIBUTARY_MOSQUITTO_PUB";

/// The shared broker this machine runs.
pub const SHARED_BROKER: &str = "127.0.0.1:1883";

/// How long a peer may take to start.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The path of a tool: `$env`, else the first of `well_known` that exists.
pub fn tool(env: &str, well_known: &[&str]) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{env}={} is not a file: run `cargo xtask test`, which installs it",
            path.display()
        );
    }
    for candidate in well_known {
        let path = crate::process::target_dir()
            .map(|t| resolve_well_known(candidate, &t))
            .unwrap_or_else(|_| PathBuf::from(candidate));
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{} not found (looked at ${env} and {}): run `cargo xtask test`, which installs the test peers",
        well_known.first().copied().unwrap_or(env),
        well_known.join(", ")
    )
}

/// `target/...` paths are relative to the target directory.
fn resolve_well_known(candidate: &str, target: &Path) -> PathBuf {
    match candidate.strip_prefix("target/") {
        Some(rest) => target.join(rest),
        None => PathBuf::from(candidate),
    }
}

/// A running peer process, killed when dropped.
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        dir: &TestDir,
        addr: SocketAddr,
    ) -> Result<Peer> {
        Self::spawn_env(name, program, args, &[], dir, addr)
    }

    fn spawn_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &TestDir,
        addr: SocketAddr,
    ) -> Result<Peer> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = file.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Peer {
            name: name.to_owned(),
            addr,
            child,
            log,
        })
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with its log if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log());
        }
        Ok(())
    }

    async fn wait_tcp(mut self) -> Result<Peer> {
        let ready = wait_for_port(self.addr, START_PATIENCE).await;
        self.check_running()?;
        ready.with_context(|| {
            format!(
                "{} did not listen on {}:\n{}",
                self.name,
                self.addr,
                self.log()
            )
        })?;
        Ok(self)
    }

    /// SIGKILL and reap it.
    pub async fn kill(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("kill {}", self.name))
    }
}

/// A free UDP port on 127.0.0.1.
fn free_udp_addr() -> Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

/// The SNMPv2c community [`snmpd`] answers.
pub const SNMP_COMMUNITY: &str = "tributary-ro";
/// SNMPv3 users of [`snmpd`]: (user, auth protocol, auth password, priv password).
pub const SNMP_USER_SHA: (&str, &str, &str, &str) =
    ("tuser", "SHA", "authpass-1234", "privpass-1234");
pub const SNMP_USER_SHA256: (&str, &str, &str, &str) =
    ("tuser256", "SHA-256", "authpass-5678", "privpass-5678");
/// What [`snmpd`] says for sysDescr.0, sysLocation.0, sysContact.0.
pub const SNMP_SYS_DESCR: &str = "tributary test agent";
pub const SNMP_SYS_LOCATION: &str = "rack-3";

/// net-snmp's agent on a free UDP port: community [`SNMP_COMMUNITY`] and
/// the SNMPv3 users above (authPriv with AES).
pub async fn snmpd(dir: &TestDir) -> Result<Peer> {
    snmpd_with(dir, "", &[]).await
}

/// [`snmpd`] with more lines in its config (`pass_persist ...`) and more
/// arguments (`-I -ifXTable` leaves a MIB module out).
pub async fn snmpd_with(dir: &TestDir, extra_conf: &str, extra_args: &[&str]) -> Result<Peer> {
    let program = tool(SNMPD_ENV, &["/usr/sbin/snmpd"])?;
    let addr = free_udp_addr()?;
    let persist = dir.join("snmp-persist");
    std::fs::create_dir_all(&persist)?;
    let conf = dir.join("snmpd.conf");
    let (u1, a1, ap1, pp1) = SNMP_USER_SHA;
    let (u2, a2, ap2, pp2) = SNMP_USER_SHA256;
    std::fs::write(
        &conf,
        format!(
            "agentAddress udp:{addr}\n\
             rocommunity {SNMP_COMMUNITY} 127.0.0.1\n\
             createUser {u1} {a1} \"{ap1}\" AES \"{pp1}\"\n\
             rouser {u1} priv\n\
             createUser {u2} {a2} \"{ap2}\" AES \"{pp2}\"\n\
             rouser {u2} priv\n\
             sysDescr {SNMP_SYS_DESCR}\n\
             sysLocation {SNMP_SYS_LOCATION}\n\
             sysContact ops@example.invalid\n\
             sysServices 72\n{extra_conf}"
        ),
    )?;
    let mut args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
    args.extend([
        "-f".into(),
        "-Lo".into(),
        "-C".into(),
        "-c".into(),
        conf.display().to_string(),
        "-p".into(),
        dir.join("snmpd.pid").display().to_string(),
    ]);
    let env = [
        ("SNMP_PERSISTENT_DIR", persist.display().to_string()),
        ("MIBS", String::new()),
    ];
    let mut peer = Peer::spawn_env("snmpd", &program, &args, &env, dir, addr)?;
    // snmpd logs this line once it listens.
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    while !peer.log().contains("NET-SNMP version") {
        peer.check_running()?;
        if tokio::time::Instant::now() > deadline {
            bail!("snmpd did not start:\n{}", peer.log());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(peer)
}

/// prometheus-node-exporter on a free port with a few collectors; with
/// `web_config` (the YAML of `--web.config.file`) for TLS or basic auth.
pub async fn node_exporter(dir: &TestDir, web_config: Option<&str>) -> Result<Peer> {
    let program = tool(NODE_EXPORTER_ENV, &["/usr/bin/prometheus-node-exporter"])?;
    let addr = free_addr()?;
    let mut args = vec![
        format!("--web.listen-address={addr}"),
        "--collector.disable-defaults".into(),
        "--collector.meminfo".into(),
        "--collector.loadavg".into(),
        "--collector.uname".into(),
    ];
    let name = if let Some(yaml) = web_config {
        let path = dir.join("node-exporter-web.yml");
        std::fs::write(&path, yaml)?;
        args.push(format!("--web.config.file={}", path.display()));
        "node-exporter-secured"
    } else {
        "node-exporter"
    };
    Peer::spawn(name, &program, &args, dir, addr)?
        .wait_tcp()
        .await
}

/// The pymodbus server of `peers/pymodbus_server.py` on a free port. Its
/// map (unit 1): holding 0 = u16 1234, 1 = i16 -2, 10..11 = u32 65538,
/// 20..21 = f32 21.5 (big), 30..31 = f32 21.5 (little); input 0 = 42,
/// 5..6 = i32 -100000; coils 0 = on, 1 = off, 2 = on; discrete 0 = off,
/// 3 = on; addresses 100 and up do not exist. Unit 2: holding 0 = 2222.
pub async fn pymodbus(dir: &TestDir) -> Result<Peer> {
    let python = tool(PYMODBUS_PYTHON_ENV, &["target/venv/bin/python"])?;
    let script = dir.join("pymodbus_server.py");
    std::fs::write(&script, include_str!("pymodbus_server.py"))?;
    let addr = free_addr()?;
    let args = vec![
        script.display().to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ];
    Peer::spawn("pymodbus", &python, &args, dir, addr)?
        .wait_tcp()
        .await
}

/// A private Mosquitto broker on a free port (anonymous clients allowed,
/// unless `anonymous` is false: then every client is refused as not
/// authorized). `port` reuses a port (to restart a broker in place).
pub async fn mosquitto(dir: &TestDir, anonymous: bool, port: Option<u16>) -> Result<Peer> {
    let program = tool(MOSQUITTO_ENV, &["/usr/sbin/mosquitto"])?;
    let addr = match port {
        Some(p) => SocketAddr::from(([127, 0, 0, 1], p)),
        None => free_addr()?,
    };
    let conf = dir.join(format!("mosquitto-{}.conf", addr.port()));
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\n",
            addr.port()
        ),
    )?;
    let args = vec!["-c".into(), conf.display().to_string()];
    Peer::spawn("mosquitto", &program, &args, dir, addr)?
        .wait_tcp()
        .await
}

/// Publishes one message with the real `mosquitto_pub` client.
pub async fn mqtt_publish(broker: &str, topic: &str, payload: &str, retain: bool) -> Result<()> {
    let program = tool(MOSQUITTO_PUB_ENV, &["/usr/bin/mosquitto_pub"])?;
    let (host, port) = broker.rsplit_once(':').context("broker is host:port")?;
    let mut cmd = Command::new(program);
    cmd.args([
        "-h", host, "-p", port, "-q", "1", "-t", topic, "-m", payload,
    ]);
    if retain {
        cmd.arg("-r");
    }
    let out = cmd.output().await.context("run mosquitto_pub")?;
    if !out.status.success() {
        bail!(
            "mosquitto_pub to {broker} {topic}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The device of a one-device agent config whose `[[devices]]` table is
/// `name = "<name>"` plus `body` (with `driver = ...`), validated exactly as
/// the agent does.
pub fn device_config(name: &str, body: &str) -> Result<tributary_agent::config::DeviceConfig> {
    let text = format!(
        "id = \"drivers-test\"\ncollectors = [\"http://127.0.0.1:1\"]\n\n[[devices]]\nname = \"{name}\"\n{body}"
    );
    let mut cfg = tributary_agent::config::parse(&text, Path::new("drivers-test.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.devices.pop().context("one device")
}

/// The MIB directories of the SNMP tests: the IETF modules of npm's
/// `net-snmp` (`cargo xtask test` installs them under `target/mibs`) and
/// net-snmp's own (Debian's `libsnmp-base`).
pub fn snmp_mib_dirs() -> Result<Vec<PathBuf>> {
    let ietf = tool(
        "TRIBUTARY_IETF_MIBS",
        &["target/mibs/node_modules/net-snmp/lib/mibs/IF-MIB.mib"],
    )?;
    let netsnmp = tool(
        "TRIBUTARY_NETSNMP_MIBS",
        &["/usr/share/snmp/mibs/NET-SNMP-MIB.txt"],
    )?;
    Ok([ietf, netsnmp]
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect())
}

/// Builds the device's driver and polls it once, under its timeout.
pub async fn poll_once(
    device: &tributary_agent::config::DeviceConfig,
) -> Result<Vec<tributary_agent::reading::Sample>, tributary_agent::drivers::PollError> {
    let result = tributary_agent::check::poll_device(device).await;
    result.outcome.map_err(|(_, e)| e)
}

/// The value of the first sample named `metric` (with `labels`, if any).
pub fn value_of<'a>(
    samples: &'a [tributary_agent::reading::Sample],
    metric: &str,
) -> Option<&'a tributary_agent::reading::Value> {
    samples
        .iter()
        .find(|s| s.metric == metric)
        .map(|s| &s.value)
}
