//! `tributary-agent`: `run` polls devices and streams readings to a
//! collector; `check` polls every device once and reports. Thin: parse,
//! validate the config, set up tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use tributary_agent::config::{self, AgentConfig, SpoolPolicy};
use tributary_agent::drivers::Driver;
use tributary_agent::scheduler::{self, PollStats};
use tributary_agent::spool::{FullPolicy, Spool, SpoolOptions};
use tributary_agent::uplink::{Collectors, Uplink, UplinkConfig, write_stats_file};

#[derive(Parser)]
#[command(
    name = "tributary-agent",
    version = tributary_process::build::VERSION_STRING,
    about = "Tributary agent: polls devices and streams readings to a collector"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Poll devices and stream readings until SIGINT or SIGTERM.
    Run {
        /// Agent config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Keep the uplink's counters (streams opened and ended, batches
        /// resent or confirmed by a welcome, ...) in this file, in
        /// Prometheus text format, rewritten as they change.
        #[arg(long)]
        stats_file: Option<PathBuf>,
    },
    /// Poll every device once, print what was read or why not; exit
    /// non-zero if any device failed.
    Check {
        /// Agent config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tributary_process::init_tracing(&cli.log_format);
    let (path, stats_file, is_check) = match &cli.command {
        Command::Run { config, stats_file } => (config.clone(), stats_file.clone(), false),
        Command::Check { config } => (config.clone(), None, true),
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if is_check {
        return if runtime.block_on(tributary_agent::check::run(&config)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match runtime.block_on(run(config, stats_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "agent failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut config: AgentConfig, stats_file: Option<PathBuf>) -> anyhow::Result<()> {
    // The device configs move into their tasks (no second copy kept here).
    let device_count = config.devices.len();
    let mut devices = Vec::with_capacity(device_count);
    for d in std::mem::take(&mut config.devices) {
        let driver = Driver::build(&d).map_err(|e| anyhow::anyhow!("device {}: {e}", d.name))?;
        devices.push((d, driver));
    }
    let collectors = Collectors::new(config.collectors.clone())?;
    let mut uplink_config = UplinkConfig::new(config.id.clone(), collectors);
    uplink_config.batch_max_readings = config.batch.max_readings;
    uplink_config.batch_max_delay = config.batch.max_delay;
    uplink_config.shutdown_timeout = config.uplink.shutdown_timeout;
    uplink_config.backoff_max = config.uplink.backoff_max;
    uplink_config.keepalive_interval = config.uplink.keepalive_interval;
    uplink_config.keepalive_timeout = config.uplink.keepalive_timeout;
    uplink_config.connect_timeout = config.uplink.connect_timeout;
    uplink_config.tls = config.tls.clone();

    let (spool, recovery) = Spool::open(SpoolOptions {
        dir: config.spool.dir.clone(),
        max_bytes: config.spool.max_bytes,
        policy: match config.spool.policy {
            SpoolPolicy::DropOldest => FullPolicy::DropOldest,
            SpoolPolicy::Block => FullPolicy::Block,
        },
        sync: config.spool.sync,
    })?;
    info!(
        dir = %config.spool.dir.display(),
        epoch = format!("{:016x}", spool.epoch()),
        records = recovery.records,
        readings = recovery.readings,
        cut_bytes = recovery.cut_bytes,
        dropped_so_far = spool.dropped(),
        "spool opened"
    );

    // Room for a few polls per device; when the uplink is slower than the
    // devices, polls wait here and are then recorded as skipped.
    let (tx, rx) = mpsc::channel(device_count.clamp(64, 65_536));
    let (uplink, stats_rx) = Uplink::new(uplink_config, rx, spool);
    let uplink = tokio::spawn(uplink.run());
    let stats_writer = stats_file.map(|path| tokio::spawn(write_stats_file(path, stats_rx)));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stats = Arc::new(PollStats::default());
    info!(agent = %config.id, devices = device_count, "agent started");
    scheduler::spawn_all(
        devices,
        config.max_concurrency,
        config.max_series_per_device,
        tx,
        stats.clone(),
        &tracker,
        shutdown.clone(),
    );
    tracker.close();

    tributary_process::shutdown_signal().await;
    info!("shutdown: finishing polls in flight, then flushing");
    shutdown.cancel();
    tracker.wait().await;
    let polls = stats.summary();
    let ms = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    info!(
        ok = polls.ok,
        timeout = polls.timeout,
        error = polls.error,
        skipped = polls.skipped,
        backed_off = polls.backed_off,
        series_dropped = polls.series_dropped,
        lateness_p50_ms = %ms(polls.lateness_p50),
        lateness_p99_ms = %ms(polls.lateness_p99),
        lateness_max_ms = %ms(polls.lateness_max),
        first_poll_lateness_p99_ms = %ms(polls.first_lateness_p99),
        first_poll_lateness_max_ms = %ms(polls.first_lateness_max),
        "poll stats"
    );
    // Device tasks have dropped their senders: the uplink seals what is
    // open, waits for acks up to its deadline, and returns.
    uplink.await?;
    if let Some(writer) = stats_writer {
        writer.await?;
    }
    info!("agent stopped");
    Ok(())
}
