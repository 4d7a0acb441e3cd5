//! Client subcommands against a running collector's Query service:
//! `agents`, `series`, `latest`, `query` and `tail`, each printing a table,
//! CSV or JSON.
//!
//! Responses are converted to the collector's model at the edge
//! (`query::*_from_proto`), so the formatting works on `SeriesMeta` and
//! `Point`. Output goes to stdout; a closed pipe (`| head`) ends quietly.
//!
//! What it may touch: a Query client it connects itself, and stdout. It
//! shares no state with the server side. Files: this one holds the clap
//! definitions and `run`; `commands` connects and runs each subcommand;
//! `render` turns agents, series and readings into rows; `writers` writes
//! rows as an aligned table, CSV or JSON; `when` parses `--since` and
//! `--until`.

use std::path::PathBuf;

use anyhow::Result;
use tributary_proto::v1 as pb;

mod commands;
mod exports;
mod render;
mod when;
mod writers;

pub use exports::ExportsArgs;
pub use render::{labels_text, write_agents, write_readings, write_series, write_tail_chunk};
pub use when::{WhenError, parse_when};
pub use writers::csv_field;

use when::parse_when_now;

/// Where the collector listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";

/// The exact CSV header of readings (`query`, `latest`, `tail`).
pub const READINGS_CSV_HEADER: &str = "agent,device,metric,ts_ns,value,status";

/// Subcommands that talk to a running collector.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// List every agent the collector has seen, with delivery counters
    Agents(AgentsArgs),
    /// List stored series
    Series(FilterArgs),
    /// Show the newest reading of every matching series
    Latest(FilterArgs),
    /// Print stored readings of a device in a time span, in time order
    Query(QueryArgs),
    /// Print readings as they are committed, until Ctrl-C
    Tail(FilterArgs),
    /// Show each export's destination, cursor, lag and totals
    Exports(ExportsArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    #[default]
    Table,
    /// Comma-separated values with a header
    Csv,
    /// A JSON array (JSON lines for `tail`)
    Json,
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Collector Query endpoint
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// CA certificate (PEM) that verifies an https:// collector; the system
    /// roots when not given
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for a collector with mutual TLS (an
    /// operator certificate); needs --key
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Series filter; an option left out matches everything.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only series of this agent
    #[arg(long)]
    pub agent: Option<String>,
    /// Only series of this device
    #[arg(long)]
    pub device: Option<String>,
    /// Only series of this metric
    #[arg(long)]
    pub metric: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> pb::SeriesFilter {
        pb::SeriesFilter {
            agent: self.agent.clone().unwrap_or_default(),
            device: self.device.clone().unwrap_or_default(),
            metric: self.metric.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only series of this agent
    #[arg(long)]
    pub agent: Option<String>,
    /// The device whose readings to print
    #[arg(long)]
    pub device: String,
    /// Only this metric
    #[arg(long)]
    pub metric: Option<String>,
    /// Start (inclusive): a duration ago like `5m`, or an RFC 3339 time;
    /// default: the oldest reading
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_when_now)]
    pub since: Option<i64>,
    /// End (exclusive): a duration ago like `1m`, or an RFC 3339 time;
    /// default: now and later
    #[arg(long, value_name = "DURATION|RFC3339", value_parser = parse_when_now)]
    pub until: Option<i64>,
}

/// Runs a client subcommand, printing to stdout.
pub async fn run(cmd: ClientCommand) -> Result<()> {
    commands::run(cmd).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::{CommandFactory, Parser};
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: ClientCommand,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "x", "query", "--device", "d", "--since", "5m", "--format", "csv",
        ])
        .unwrap();
        match cli.cmd {
            ClientCommand::Query(q) => {
                assert_eq!(q.conn.server, DEFAULT_SERVER);
                assert_eq!(q.conn.format, Format::Csv);
                assert!(q.since.is_some() && q.until.is_none());
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["x", "query"]).is_err(),
            "--device is required"
        );
    }
}
