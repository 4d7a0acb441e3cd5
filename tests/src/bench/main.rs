//! `tributary-bench`: the measuring side of `cargo xtask bench`.
//!
//! ```text
//! tributary-bench <ingest|poll|streams|wire|vs-prometheus|config|promql|export|metrics-cost|snmp|all|smoke>... [FLAGS]
//! ```
//!
//! Every scenario runs the real `tributary-collector` (and, where it says so,
//! `tributary-agent`) as processes built next to this binary, drives them
//! over loopback, and samples their CPU time and memory from `/proc`. Load
//! agents, device simulators, the counting proxy and the SQLite ceiling run
//! in this process. Each scenario is repeated `--runs` times and reports the
//! median of every number, next to the machine (cores, CPU model, load
//! average) and the configuration it ran with. Progress goes to stderr; the
//! table (or, with `--json`, one JSON object per scenario) to stdout.
//!
//! `smoke` runs every scenario at tiny sizes and fails (exit status 1) when
//! a scenario's numbers disagree with each other (readings acked ≠ readings
//! stored, ...). It makes no timed assertion; `cargo xtask test` runs it.
//!
//! The binary lives in `tributary-tests` because it reuses its simulators and
//! process helpers; its modules are its own (not part of the library), so the
//! test library stays free of benchmark code.

mod agent;
mod ceiling;
mod collector;
mod config;
mod counting_proxy;
mod export;
mod ingest;
mod load;
mod metrics_cost;
mod metrics_instr;
mod minutes;
mod options;
mod poll;
mod progress;
mod promql;
mod recovery;
mod report;
mod snmp;
mod snmp_instr;
mod snmp_traps;
mod streams;
mod sys;
mod vs_prometheus;
mod wire;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Result;

use options::{Options, Scenario};
use progress::Progress;
use report::Report;

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tributary-bench: {e:#}\n\n{}", options::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tributary-bench: start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tributary-bench: some numbers are inconsistent (see the checks above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tributary-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every scenario asked for; `Ok(false)` when a consistency check
/// failed.
async fn run(opts: &Options) -> Result<bool> {
    let progress = Progress::new();
    let mut consistent = true;
    for scenario in &opts.scenarios {
        let report = run_one(*scenario, opts, &progress).await?;
        consistent &= report.consistent();
        let mut stdout = std::io::stdout().lock();
        if opts.json {
            writeln!(stdout, "{}", report.to_json())?;
        } else {
            writeln!(stdout, "{}", report.to_table())?;
        }
        stdout.flush()?;
    }
    Ok(consistent)
}

async fn run_one(scenario: Scenario, opts: &Options, progress: &Progress) -> Result<Report> {
    progress.say(&format!(
        "{}: starting ({})",
        scenario.name(),
        if opts.smoke {
            "smoke sizes"
        } else {
            "full sizes"
        }
    ));
    match scenario {
        Scenario::Ingest => ingest::run(opts, progress).await,
        Scenario::Poll => poll::run(opts, progress).await,
        Scenario::Streams => streams::run(opts, progress).await,
        Scenario::Wire => wire::run(opts, progress).await,
        Scenario::VsPrometheus => vs_prometheus::run(opts, progress).await,
        Scenario::Config => config::run(opts, progress).await,
        Scenario::Export => export::run(opts, progress).await,
        Scenario::Promql => promql::run(opts, progress).await,
        Scenario::MetricsCost => metrics_instr::run(opts, progress).await,
        Scenario::Snmp => snmp::run(opts, progress).await,
        Scenario::Recovery => recovery::run(opts, progress).await,
    }
}
