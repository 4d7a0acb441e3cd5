//! Services the tests talk to over the network: PostgreSQL on
//! 127.0.0.1:5432, the Mosquitto broker on 127.0.0.1:1883 and NATS with
//! JetStream on 127.0.0.1:4222 (the nats export tests). This kind of
//! machine starts both before a session or CI run; if one is down anyway,
//! `cargo xtask test` starts it with the machine's own command and says so.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::run_checked;

/// A service: where it listens and how to start it.
struct Service {
    name: &'static str,
    addr: &'static str,
    /// Shell command that starts it (as root).
    start: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        addr: "127.0.0.1:5432",
        start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    },
    Service {
        name: "Mosquitto",
        addr: "127.0.0.1:1883",
        start: "mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    },
    Service {
        name: "NATS (JetStream)",
        addr: "127.0.0.1:4222",
        start: "mkdir -p /var/lib/nats-server && nohup /usr/sbin/nats-server -a 127.0.0.1 -p 4222 -js \
                -sd /var/lib/nats-server -l /var/log/nats-server.log >/dev/null 2>&1 &",
    },
];

/// Makes sure every service accepts connections, starting those that do not.
pub fn ensure_all() -> Result<()> {
    for s in SERVICES {
        let addr: SocketAddr = s.addr.parse()?;
        if accepts(addr) {
            println!("xtask: {} is up on {}", s.name, s.addr);
            continue;
        }
        println!(
            "xtask: {} is not answering on {}; starting it: {}",
            s.name, s.addr, s.start
        );
        run_checked(Command::new("sh").args(["-c", s.start]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepts(addr) {
            if Instant::now() > deadline {
                bail!("{} did not come up on {} within 30 s", s.name, s.addr);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("xtask: {} is up on {}", s.name, s.addr);
    }
    Ok(())
}

fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}
