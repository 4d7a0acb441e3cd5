//! `tributary-sim`: runs the device simulators of `tributary-tests` as a
//! process until SIGINT or SIGTERM, for the demo and for trying the agent by
//! hand.
//!
//! ```text
//! tributary-sim [--http ADDR] [--modbus ADDR] [--http-delay MILLIS]
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tributary_tests::{HttpSim, ModbusSim};

const USAGE: &str = "usage: tributary-sim [--http ADDR] [--modbus ADDR] [--http-delay MILLIS]

  --http ADDR          serve the HTTP device (/meter, /metrics, /error, /garbage) on ADDR
  --modbus ADDR        serve the Modbus TCP device on ADDR
  --http-delay MILLIS  hold every HTTP answer back this long (default 0)

At least one of --http and --modbus is required. Runs until SIGINT or SIGTERM.";

/// Validated command line.
#[derive(Debug, Default)]
struct Args {
    http: Option<SocketAddr>,
    modbus: Option<SocketAddr>,
    http_delay: Duration,
}

fn parse_args(mut raw: impl Iterator<Item = String>) -> Result<Args> {
    let mut args = Args::default();
    while let Some(flag) = raw.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = raw
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--http" => args.http = Some(parse_addr(&flag, &value)?),
            "--modbus" => args.modbus = Some(parse_addr(&flag, &value)?),
            "--http-delay" => {
                let ms = value.parse().with_context(|| {
                    format!("{flag}: {value:?} is not a number of milliseconds")
                })?;
                args.http_delay = Duration::from_millis(ms);
            }
            _ => bail!("unknown argument {flag:?}"),
        }
    }
    if args.http.is_none() && args.modbus.is_none() {
        bail!("nothing to serve: give --http ADDR and/or --modbus ADDR");
    }
    Ok(args)
}

fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("{flag}: {value:?} is not an address like 127.0.0.1:8080"))
}

#[tokio::main]
async fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tributary-sim: {e:#}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("tributary-sim: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    // Install the handlers before announcing anything, so a signal sent as
    // soon as the ports accept is handled.
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;

    let http = match args.http {
        Some(addr) => {
            let sim = HttpSim::new().delay(args.http_delay).bind(addr).await?;
            println!(
                "tributary-sim: http device on {} (/meter json, /metrics prometheus, /error, /garbage)",
                sim.url("")
            );
            Some(sim)
        }
        None => None,
    };
    let modbus = match args.modbus {
        Some(addr) => {
            let sim = ModbusSim::new().bind(addr).await?;
            println!(
                "tributary-sim: modbus device on {} (holding 100 f32, 110 u16, 120 u32, 122 i32; input 200 i16, 201 u16, 210 f32)",
                sim.addr
            );
            Some(sim)
        }
        None => None,
    };

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }

    if let Some(sim) = http {
        let requests = sim.requests();
        sim.stop().await?;
        println!("tributary-sim: http device stopped after {requests} requests");
    }
    if let Some(sim) = modbus {
        let requests = sim.requests();
        sim.stop().await?;
        println!("tributary-sim: modbus device stopped after {requests} requests");
    }
    Ok(())
}
