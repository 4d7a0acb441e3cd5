//! `tributary-agent`: `run` polls devices and streams readings to a
//! collector, serving its own metrics at `/metrics`; `check` polls every
//! device once and reports; `config` prints the effective config. Thin: parse, validate the config, set up
//! tracing, run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use tributary_agent::config::{
    self, AgentConfig, ConfigWatcher, DeviceConfig, SpoolPolicy, Watched,
};
use tributary_agent::drivers::Driver;
use tributary_agent::metrics::AgentMetrics;
use tributary_agent::scheduler::{self, Fleet, PollStats};
use tributary_agent::spool::{FullPolicy, Spool, SpoolOptions};
use tributary_agent::uplink::{Collectors, Uplink, UplinkConfig, UplinkUpdate, write_stats_file};

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
        /// Serve the agent's metrics at http://ADDR/metrics, or `off`
        /// (overrides `[metrics] listen`; default 127.0.0.1:9465).
        #[arg(long, value_name = "ADDR|off")]
        metrics_listen: Option<String>,
        /// Reload the config, as on SIGHUP, when the config file, a file it
        /// includes or an inventory CSV changes (or a new file matches an
        /// include pattern).
        #[arg(long)]
        watch: bool,
    },
    /// Poll every device once, print what was read or why not; exit
    /// non-zero if any device failed.
    Check {
        /// Agent config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the effective config (every include, default, template and
    /// inventory row applied, `${VAR}` expanded, secrets shown as
    /// `<redacted>`) after validating it; exit 2 if it is invalid.
    Config {
        /// Agent config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tributary_process::init_tracing(&cli.log_format);
    let (path, stats_file, metrics_listen, watch, is_check) = match &cli.command {
        Command::Run {
            config,
            stats_file,
            metrics_listen,
            watch,
        } => (
            config.clone(),
            stats_file.clone(),
            metrics_listen.clone(),
            *watch,
            false,
        ),
        Command::Check { config } => (config.clone(), None, None, false, true),
        Command::Config { config } => {
            return match config::effective(config, &tributary_config::env_lookup) {
                Ok((cfg, shown)) => {
                    print!("{shown}");
                    eprintln!(
                        "# {}: valid, {} device(s)",
                        config.display(),
                        cfg.devices.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    let (mut config, watched) = match config::load_watched(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // `--metrics-listen` overrides the file's `[metrics] listen`, at every
    // reload too.
    let mut metrics_override = None;
    if let Some(listen) = metrics_listen {
        match config::parse_listen(&listen) {
            Ok(addr) => {
                config.metrics.listen = addr;
                metrics_override = Some(addr);
            }
            Err(e) => {
                eprintln!("error: --metrics-listen: {e}");
                return ExitCode::from(2);
            }
        }
    }
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
    let watched = watch.then_some(watched);
    let result = runtime.block_on(run(config, path, stats_file, metrics_override, watched));
    // A reload dropped at shutdown may leave its reading thread blocked
    // (a FIFO, a hung mount): do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "agent failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    mut config: AgentConfig,
    path: PathBuf,
    stats_file: Option<PathBuf>,
    metrics_override: Option<Option<SocketAddr>>,
    watched: Option<Watched>,
) -> anyhow::Result<()> {
    // Before the metrics port and the spool: a SIGTERM from here on is a
    // clean stop, and a SIGHUP (which would end the process while no
    // handler is installed) waits for the reload loop.
    let stop = tributary_process::shutdown_signal();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut watcher = match watched {
        Some(set) => {
            let mut w = ConfigWatcher::new();
            w.watch(&set)
                .map_err(|e| anyhow::anyhow!("--watch: cannot watch the config's files: {e}"))?;
            info!(
                files = set.files.len(),
                patterns = set.patterns.len(),
                "--watch: the config reloads when its files change"
            );
            Some(w)
        }
        None => None,
    };
    // The device configs move into their tasks (no second copy kept here).
    let device_count = config.devices.len();
    let mut devices = Vec::with_capacity(device_count);
    for d in std::mem::take(&mut config.devices) {
        let driver = Driver::build(&d).map_err(|e| anyhow::anyhow!("device {}: {e}", d.name))?;
        devices.push((d, driver));
    }
    // Metrics are bound before anything starts, so a taken port is a
    // startup error rather than a log line.
    let metrics_shutdown = CancellationToken::new();
    let metrics = match config.metrics.listen {
        Some(addr) => Some(start_metrics(addr, &config, metrics_shutdown.clone()).await?),
        None => None,
    };
    let (scheduler_metrics, uplink_metrics, reloads) = match metrics {
        Some((s, u, r)) => (Some(s), Some(u), r),
        None => (None, None, ReloadCounters::default()),
    };
    let collectors = Collectors::new(config.collectors.clone())?;
    let mut uplink_config = UplinkConfig::new(config.id.clone(), collectors);
    uplink_config.batch_max_readings = config.batch.max_readings;
    uplink_config.batch_max_delay = config.batch.max_delay;
    uplink_config.shutdown_timeout = config.uplink.shutdown_timeout;
    uplink_config.backoff_max = config.uplink.backoff_max;
    uplink_config.keepalive_interval = config.uplink.keepalive_interval;
    uplink_config.keepalive_timeout = config.uplink.keepalive_timeout;
    uplink_config.connect_timeout = config.uplink.connect_timeout;
    uplink_config.backlog_share = config.uplink.backlog_share;
    uplink_config.tls = config.tls.clone();
    // The series in use are declared within the longest poll (see
    // uplink/epoch.rs): the dictionary's floor is measured after two.
    uplink_config.series_settle = series_settle(devices.iter().map(|(d, _)| d));
    let (updates, updates_rx) = watch::channel(UplinkUpdate {
        collectors: uplink_config.collectors.clone(),
        series_settle: uplink_config.series_settle,
        devices_started: false,
    });

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
        acked_set_loaded = recovery.acked_loaded,
        acked_set_unreadable = recovery.acked_unreadable,
        dropped_so_far = spool.dropped(),
        series = recovery.series,
        series_bytes = spool.series_bytes(),
        max_bytes = spool.max_bytes(),
        "spool opened"
    );

    // Room for a poll per device (grown by reloads); when the uplink is
    // slower than the devices, polls wait here and are then recorded as
    // skipped.
    let (tx, room, rx) = scheduler::intake(device_count);
    let (mut uplink, stats_rx) = Uplink::new(uplink_config, rx, spool);
    uplink = uplink.with_room(room).with_updates(updates_rx);
    if let Some(m) = uplink_metrics {
        m.set_acked_unreadable(recovery.acked_unreadable);
        uplink = uplink.with_metrics(m);
    }
    let uplink = tokio::spawn(uplink.run());
    let stats_writer = stats_file.map(|path| tokio::spawn(write_stats_file(path, stats_rx)));

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stats = Arc::new(PollStats::default());
    info!(agent = %config.id, devices = device_count, "agent started");
    let mut fleet = Fleet::start(
        devices,
        config.max_concurrency,
        config.max_series_per_device,
        tx,
        stats.clone(),
        scheduler_metrics,
        tracker.clone(),
        shutdown.clone(),
    );

    // SIGHUP (or a watched file's change): re-read the config and apply
    // its devices by difference.
    tokio::pin!(stop);
    loop {
        let cause = tokio::select! {
            _ = &mut stop => break,
            _ = hangup.recv() => "SIGHUP",
            () = watched_change(&mut watcher) => "a watched file changed",
        };
        let started = std::time::Instant::now();
        // Reading the new config may block (a `*_file` on a FIFO or a
        // hung mount): a stop meanwhile wins and drops the reload.
        let loaded = tokio::select! {
            biased;
            _ = &mut stop => {
                warn!("shutdown during a config reload: the reload is dropped");
                break;
            }
            loaded = load_reload(&path, &config, metrics_override) => loaded,
        };
        let applied = loaded.and_then(|(new, watched)| {
            let settle = series_settle(new.devices.iter());
            let collectors = Collectors::new(new.collectors)?;
            let diff = fleet.apply(new.devices)?;
            Ok((diff, collectors, settle, watched))
        });
        match applied {
            Ok((diff, collectors, series_settle, watched)) => {
                updates.send_replace(UplinkUpdate {
                    collectors,
                    series_settle,
                    devices_started: diff.added + diff.changed > 0,
                });
                if let Some(w) = &mut watcher
                    && let Err(e) = w.watch(&watched)
                {
                    warn!(error = %e, "--watch: cannot watch the reloaded config's files; the previous ones stay watched");
                }
                reloads.applied.inc();
                info!(
                    added = diff.added,
                    removed = diff.removed,
                    changed = diff.changed,
                    unchanged = diff.unchanged,
                    devices = fleet.len(),
                    took_ms = %format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                    cause,
                    "config reloaded"
                );
            }
            Err(e) => {
                reloads.failed.inc();
                error!(cause, error = %format!("{e:#}"), "config reload refused; the running config stays");
            }
        }
    }
    // The fleet holds a sender of the uplink's channel: the uplink ends
    // once every sender is gone.
    drop(fleet);
    tracker.close();
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
    metrics_shutdown.cancel();
    info!("agent stopped");
    Ok(())
}

/// The git commit the binary was built from, for `tributary_agent_build_info`.
const COMMIT: &str = tributary_process::build::COMMIT;

/// Binds `[metrics] listen` and serves the agent's metrics there until
/// `shutdown`; returns the handles for the device tasks and the uplink.
async fn start_metrics(
    addr: SocketAddr,
    config: &AgentConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Arc<tributary_agent::metrics::SchedulerMetrics>,
    tributary_agent::metrics::UplinkMetrics,
    ReloadCounters,
)> {
    let listener = tributary_process::metrics::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "metrics.listen {addr}: cannot listen: {e} (set [metrics] listen or --metrics-listen to a free address, or to off)"
        )
    })?;
    let AgentMetrics {
        registry,
        scheduler,
        uplink,
        config_reloads,
        config_reload_failures,
    } = AgentMetrics::new(COMMIT, &config.collectors, config.spool.max_bytes);
    if addr.ip().is_loopback() {
        info!(listen = %addr, "metrics served at http://{addr}/metrics");
    } else {
        warn!(listen = %addr, "metrics served on a non-loopback address: anyone who reaches it can read them (read-only)");
    }
    let router = tributary_process::metrics::routes(Arc::new(registry));
    tokio::spawn(tributary_process::metrics::serve(
        listener,
        router,
        tributary_process::metrics::ServeLimits::default(),
        shutdown,
    ));
    Ok((
        scheduler,
        uplink,
        ReloadCounters {
            applied: config_reloads,
            failed: config_reload_failures,
        },
    ))
}

/// The agent's reload counters, when metrics are on.
#[derive(Clone, Default)]
struct ReloadCounters {
    applied: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
}

/// Waits for a change of the watched files; never without `--watch`.
async fn watched_change(watcher: &mut Option<ConfigWatcher>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// How long after an epoch starts the series in use are declared: two of
/// the longest poll (interval + timeout) of `devices` (see uplink/epoch.rs).
fn series_settle<'a>(devices: impl Iterator<Item = &'a DeviceConfig>) -> std::time::Duration {
    devices
        .map(|d| d.interval.saturating_add(d.timeout))
        .max()
        .unwrap_or_default()
        .saturating_mul(2)
}

/// Re-reads the config at `path` (the devices to apply, and the files it
/// was read from); the running config stays on any error (returned, with
/// file:line). `id` and `[spool] dir` cannot change without a restart;
/// `collectors` apply at the uplink's next connect; other settings that
/// changed are named in a warning and wait for a restart.
async fn load_reload(
    path: &Path,
    running: &AgentConfig,
    metrics_override: Option<Option<SocketAddr>>,
) -> anyhow::Result<(AgentConfig, Watched)> {
    let p = path.to_owned();
    let (mut new, watched) = tokio::task::spawn_blocking(move || config::load_watched(&p))
        .await
        .map_err(|e| anyhow::anyhow!("reading the config failed: {e}"))??;
    if let Some(listen) = metrics_override {
        new.metrics.listen = listen;
    }
    if new.id != running.id {
        anyhow::bail!(
            "id changed from {:?} to {:?}: a restart is needed to apply it",
            running.id,
            new.id
        );
    }
    if new.spool.dir != running.spool.dir {
        anyhow::bail!(
            "[spool] dir changed from {} to {}: a restart is needed to apply it",
            running.spool.dir.display(),
            new.spool.dir.display()
        );
    }
    let mut kept = Vec::new();
    for (what, same) in [
        (
            "max_concurrency",
            new.max_concurrency == running.max_concurrency,
        ),
        (
            "max_series_per_device",
            new.max_series_per_device == running.max_series_per_device,
        ),
        ("[batch]", new.batch == running.batch),
        ("[spool]", new.spool == running.spool),
        ("[tls]", new.tls == running.tls),
        ("[uplink]", new.uplink == running.uplink),
        ("[metrics]", new.metrics == running.metrics),
    ] {
        if !same {
            kept.push(what);
        }
    }
    if !kept.is_empty() {
        warn!(
            settings = %kept.join(", "),
            "config reload: these settings changed but apply only at the next restart; the running values stay"
        );
    }
    Ok((new, watched))
}
