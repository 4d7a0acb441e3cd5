//! `tributary-collector`: `serve` runs the collector; the other subcommands
//! are clients of a running one. Thin: parse, validate, set up tracing, run.
//! On SIGHUP, `serve` reads its config again (same file, same flags, same
//! checks) and hands the result to the server's reload task
//! (`server/reload.rs`); a change of `listen` or `http_listen` is refused
//! here, since the sockets are bound here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tributary_collector::cli::ClientCommand;
use tributary_collector::config;
use tributary_collector::server::{self, Reload};
use tributary_collector::store::Durability;

#[derive(Parser)]
#[command(
    name = "tributary-collector",
    version = tributary_process::build::VERSION_STRING,
    about = "Tributary collector: merges agent streams and stores readings"
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
    /// Run the collector.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// TOML file with the settings below plus [tls], [limits],
    /// allowed_agents and operators; flags given on the command line win
    /// over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This collector's name, stored with the agents whose streams it
    /// accepts and shown by `agents` and the fleet page [default: the host
    /// name]
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on for gRPC (ingest, query, health, reflection)
    /// [default: 127.0.0.1:7400]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address for HTTP (Prometheus API, /metrics, fleet page), or `off`
    /// [default: 127.0.0.1:7401]
    #[arg(long, value_name = "ADDR|off", value_parser = http_listen)]
    http_listen: Option<HttpListen>,
    /// Where to store readings: sqlite:PATH, or postgres://USER@HOST/DB to
    /// share one database between collectors [default: sqlite:tributary.db]
    #[arg(long)]
    store: Option<String>,
    /// Delete readings older than this (e.g. 30d), on a schedule
    #[arg(long, value_parser = tributary_config::parse_duration)]
    retention: Option<std::time::Duration>,
    /// SQLite durability: full fsyncs every commit before acking; normal
    /// survives a collector crash but not power loss [default: full]
    #[arg(long)]
    synchronous: Option<Durability>,
    /// Serve plaintext on a non-loopback address (without TLS, agent ids are
    /// not authenticated and traffic is readable)
    #[arg(long)]
    allow_plaintext: bool,
    /// Serve TLS without client_ca on a non-loopback address (any client
    /// may then stream as any agent id)
    #[arg(long)]
    allow_unauthenticated_agents: bool,
    /// PromQL: queries evaluated at once; more wait [default: 4]
    #[arg(long, value_name = "N")]
    query_max_concurrent: Option<u64>,
    /// PromQL: most samples one query may hold [default: 50000000]
    #[arg(long, value_name = "N")]
    query_max_samples: Option<u64>,
    /// PromQL: most steps of a range query [default: 11000]
    #[arg(long, value_name = "N")]
    query_max_points_per_series: Option<u64>,
    /// PromQL: longest a query may run [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = tributary_config::parse_duration)]
    query_timeout: Option<std::time::Duration>,
    /// PromQL: how far back an instant selector looks for a sample [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = tributary_config::parse_duration)]
    query_lookback_delta: Option<std::time::Duration>,
}

/// `--http-listen`: an address, or `None` for `off` (a newtype, as clap
/// reads `Option<Option<_>>` as a flag with an optional value).
#[derive(Debug, Clone, Copy)]
struct HttpListen(Option<SocketAddr>);

fn http_listen(value: &str) -> Result<HttpListen, String> {
    config::parse_http_listen(value).map(HttpListen)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tributary_process::init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => match serve_config(&args) {
            Ok(settings) => {
                for warning in &settings.warnings {
                    tracing::warn!("{warning}");
                }
                let result = runtime.block_on(serve(args, settings));
                // A reload's reading thread may be blocked (a secret file
                // on a FIFO, a hung mount): do not wait for it.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                result
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        Command::Client(cmd) => runtime.block_on(tributary_collector::cli::run(cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve_config(args: &ServeArgs) -> Result<config::Serve, config::ConfigError> {
    let flags = config::Flags {
        name: args.name.clone(),
        listen: args.listen,
        http_listen: args.http_listen.map(|h| h.0),
        store: args.store.clone(),
        synchronous: args.synchronous,
        retention: args.retention,
        allow_plaintext: args.allow_plaintext,
        allow_unauthenticated_agents: args.allow_unauthenticated_agents,
        query: config::QueryFlags {
            max_concurrent: args.query_max_concurrent,
            max_samples: args.query_max_samples,
            max_points_per_series: args.query_max_points_per_series,
            timeout: args.query_timeout,
            lookback_delta: args.query_lookback_delta,
        },
    };
    config::resolve(args.config.as_deref(), &flags)
}

async fn serve(args: ServeArgs, settings: config::Serve) -> anyhow::Result<()> {
    // Before the ports: a SIGTERM from here on is a clean stop, and a
    // SIGHUP (which would end the process while no handler is installed)
    // is a reload.
    let stop = tributary_process::shutdown_signal();
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let (listen, http_listen) = (settings.listen, settings.http_listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let http = match http_listen {
        Some(addr) => Some(
            tributary_process::metrics::bind(addr)
                .with_context(|| format!("http_listen: listening on {addr}"))?,
        ),
        None => None,
    };
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(read_reloads(args, (listen, http_listen), hangup, reload_tx));
    let served = server::run_reloadable(listener, http, settings.server, reload_rx, stop).await;
    reader.abort();
    served?;
    Ok(())
}

/// On each SIGHUP, reads the config again as at start and sends the result
/// to the server; `listen` and `http_listen` must stay as bound.
async fn read_reloads(
    args: ServeArgs,
    bound: (SocketAddr, Option<SocketAddr>),
    mut hangup: tokio::signal::unix::Signal,
    reloads: tokio::sync::mpsc::Sender<Reload>,
) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        let args = args.clone();
        // Blocking file reads (secrets, TLS files) off the runtime.
        let read = tokio::task::spawn_blocking(move || serve_config(&args)).await;
        let (settings, warnings) = match read {
            Err(e) => (Err(format!("reading the config failed: {e}")), Vec::new()),
            Ok(Err(e)) => (Err(format!("{e:#}")), Vec::new()),
            Ok(Ok(new)) => (
                bound_addresses(bound, &new).map(|()| new.server),
                new.warnings,
            ),
        };
        if reloads.send(Reload { settings, warnings }).await.is_err() {
            return;
        }
    }
}

/// Refuses a reload that moves a listener: the sockets stay as bound.
fn bound_addresses(
    (listen, http_listen): (SocketAddr, Option<SocketAddr>),
    new: &config::Serve,
) -> Result<(), String> {
    let show = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let mut moved = Vec::new();
    if new.listen != listen {
        moved.push(format!("listen changed from {listen} to {}", new.listen));
    }
    if new.http_listen != http_listen {
        moved.push(format!(
            "http_listen changed from {} to {}",
            show(http_listen),
            show(new.http_listen)
        ));
    }
    if moved.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: a restart is needed to apply it; nothing was applied",
        moved.join(", ")
    ))
}
