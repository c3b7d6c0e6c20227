//! The `baton-harness` binary: `bench-store` (the store-level HB3 benchmark
//! with its same-run baselines) and `crash-child` (the process the kill -9
//! test starts and kills). Figures and acknowledgements go to stdout or the
//! named files; progress goes to stderr.

use anyhow::{Context as _, Result, bail};
use baton_harness::bench::{self, BenchConfig, System};
use baton_harness::crash::{self, ChildConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "baton-harness", about = "Baton's benchmarks and fault runners")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store-level HB3 burn-down: Baton's SQLite store against the raw
    /// single-commit and ideal batching-writer baselines, interleaved.
    BenchStore {
        /// Agent counts, one run group each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        agents: Vec<usize>,
        /// Tasks per run (3 handoffs each).
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Tasks per run at K = 1; default a quarter of --tasks (one fsync per handoff is slow).
        #[arg(long)]
        tasks_single: Option<usize>,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// Interleaved rounds per agent count.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Systems to run, in round order.
        #[arg(long, value_delimiter = ',', default_value = "raw,ideal,baton")]
        systems: Vec<String>,
        /// Directory for the runs' databases (each run gets a fresh subdirectory, removed after).
        #[arg(long)]
        dir: PathBuf,
        /// Also write every run and the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Print the Markdown table to stdout.
        #[arg(long)]
        markdown: bool,
        /// Before each run, wait up to this many seconds for other processes to quiet down.
        #[arg(long, default_value_t = 60)]
        quiet_wait_s: u64,
        /// Skip the unrecorded warm-up run of each system.
        #[arg(long)]
        no_warmup: bool,
    },
    /// HB3 over HTTP against a spawned `baton dev`, with the raw single-commit
    /// and ideal batching-writer baselines at the same K, interleaved.
    BenchHttp {
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        agents: Vec<usize>,
        /// Tasks per run (3 handoffs each).
        #[arg(long, default_value_t = 3_000)]
        tasks: usize,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Tasks of the low-load end-to-end measurement per round (0: skip it).
        #[arg(long, default_value_t = 200)]
        e2e_tasks: usize,
        /// The `baton` binary to run as `baton dev`; default: next to this binary.
        #[arg(long)]
        baton: Option<PathBuf>,
        /// Directory for the runs (each gets a fresh subdirectory, removed after).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        markdown: bool,
        #[arg(long, default_value_t = 60)]
        quiet_wait_s: u64,
    },
    /// The crash test's child: works the store and prints one line per
    /// acknowledged operation until killed.
    CrashChild {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Stop after this long if not killed first.
        #[arg(long, default_value_t = 10_000)]
        run_ms_max: u64,
        #[arg(long, default_value_t = 100_000)]
        ops_per_thread_max: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BenchStore {
            agents,
            tasks,
            tasks_single,
            payload_bytes,
            runs,
            systems,
            dir,
            json,
            markdown,
            quiet_wait_s,
            no_warmup,
        } => {
            let systems = systems
                .iter()
                .map(|s| {
                    System::parse(s).with_context(|| format!("unknown system {s:?} (raw, ideal, baton)"))
                })
                .collect::<Result<Vec<_>>>()?;
            if agents.is_empty() || agents.contains(&0) || runs == 0 || tasks == 0 {
                bail!("--agents, --runs and --tasks must be positive");
            }
            let config = BenchConfig {
                agents,
                tasks,
                tasks_single: tasks_single.unwrap_or((tasks / 4).max(1)),
                payload_bytes,
                runs,
                systems,
                dir,
                quiet_wait_s,
                warmup: !no_warmup,
            };
            let report = bench::run(config)?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            if markdown {
                print!("{}", bench::report::markdown(&report));
            }
            Ok(())
        }
        Command::BenchHttp {
            agents,
            tasks,
            payload_bytes,
            runs,
            e2e_tasks,
            baton,
            dir,
            json,
            markdown,
            quiet_wait_s,
        } => {
            if agents.is_empty() || agents.contains(&0) || runs == 0 || tasks == 0 {
                bail!("--agents, --runs and --tasks must be positive");
            }
            let config = bench::http::HttpConfig {
                agents,
                tasks,
                payload_bytes,
                runs,
                e2e_tasks,
                baton: baton.unwrap_or_else(bench::http::default_baton),
                dir,
                quiet_wait_s,
            };
            let report = bench::http::run(config)?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            if markdown {
                print!("{}", bench::http::markdown(&report));
            }
            Ok(())
        }
        Command::CrashChild { db, seed, threads, run_ms_max, ops_per_thread_max } => {
            crash::run_child(&ChildConfig { db, seed, threads, run_ms_max, ops_per_thread_max })
        }
    }
}
