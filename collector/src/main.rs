//! `tributary-collector`: `serve` runs the collector; the other subcommands
//! are clients of a running one. Thin: parse, validate, set up tracing, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use tributary_collector::cli::ClientCommand;
use tributary_collector::config;
use tributary_collector::server::{self, ServerConfig};
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

#[derive(clap::Args)]
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
                runtime.block_on(serve(
                    settings.listen,
                    settings.http_listen,
                    settings.server,
                ))
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

async fn serve(
    listen: SocketAddr,
    http_listen: Option<SocketAddr>,
    config: ServerConfig,
) -> anyhow::Result<()> {
    // Before the ports: a SIGTERM from here on is a clean stop.
    let stop = tributary_process::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let http = match http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("http_listen: listening on {addr}"))?,
        ),
        None => None,
    };
    server::run_with_http(listener, http, config, stop).await?;
    Ok(())
}
