//! `patient-intake`: runs the example against a running Baton (`baton dev`)
//! and prints the summary table. Exit codes: 0 every check passed, 1 a
//! check failed (the violations are listed), 2 the run could not be made
//! (server unreachable, workflow refused, bad options).

use clap::Parser;
use patient_intake::{Options, Timings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Patients through intake, triage, a specialist who never answers, a crashing
/// mailer, a late SMS gateway, billing and refunds; then every task checked.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The Baton server.
    #[arg(long, env = "BATON_ADDRESS", default_value = baton_client::DEFAULT_ADDRESS)]
    url: String,
    /// Patients to submit.
    #[arg(long, default_value_t = 20)]
    patients: usize,
    /// Email tasks the crashing mailer holds when it dies (0: no crash).
    #[arg(long, default_value_t = 3)]
    crashes: usize,
    /// Seconds to wait for every task to settle.
    #[arg(long, default_value_t = 45)]
    settle_secs: u64,
    /// The workflow file (default: the one next to this example, built in).
    #[arg(long)]
    workflow: Option<PathBuf>,
    /// Apply the file's own timings (minutes) instead of the demo clock (seconds).
    #[arg(long)]
    as_written: bool,
    /// Print only the summary, no progress.
    #[arg(long, short)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut options = Options {
        url: args.url,
        patients: args.patients,
        crashes: args.crashes,
        settle_within: Duration::from_secs(args.settle_secs),
        timings: if args.as_written { Timings::AsWritten } else { Timings::Demo },
        verbose: !args.quiet,
        ..Options::default()
    };
    if let Some(path) = &args.workflow {
        match std::fs::read_to_string(path) {
            Ok(text) => options.workflow_source = text,
            Err(error) => {
                eprintln!("error: read {}: {error}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    match patient_intake::run(&options).await {
        Ok(report) => {
            print!("{}", report.render());
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
