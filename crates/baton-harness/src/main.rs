//! The `baton-harness` binary: `bench` (what `baton bench` runs: HB3 across
//! Baton, its same-run baselines and its peers), `bench-store` and
//! `bench-http` (the earlier store-level and HTTP benches), and `crash-child`
//! (the process the kill -9 test starts and kills), `serve-memory` (Baton's
//! HTTP server over the in-memory store, a bench row), `seed-anomaly` (an open
//! anomaly in a `baton dev` data directory, for the dashboard's browser
//! tests) and `seed-backlog` (a large backlog through the store, then the
//! stage gauges timed against their full recount). Figures and acknowledgements go to stdout or the
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
    /// HB3 across Baton (SQLite in process, over HTTP, PostgreSQL), its
    /// same-run baselines (fsync, raw SQLite, ideal writer, raw PostgreSQL)
    /// and peers (NATS JetStream, RabbitMQ), interleaved; then the open loop
    /// and the backlog series. What `baton bench` runs.
    Bench(BenchArgs),
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
    /// Baton's HTTP server over the in-memory store, for the bench row that
    /// measures HTTP and the engine without storage. Nothing is durable.
    ServeMemory {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Seeds a `baton dev` data directory (`DIR/baton.db`) with one open
    /// anomaly on the edge `intake -> pack`, through the store, for the
    /// dashboard's browser tests: raising one live takes minutes of traffic.
    SeedAnomaly {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Runs real clients over HTTP against a child `baton dev` while injecting
    /// a fault, then checks what they were told against the store
    /// (docs/reliability.md). Prints the report as JSON; exits non-zero unless
    /// the fault took effect and the checkers passed (for
    /// power-loss-lying-fsync: found losses). `all` is the long tier.
    Fault(FaultArgs),
    /// The retention soak: a child `baton dev` with a short `--retention`
    /// takes a constant rate of tasks while the database's size (main file
    /// plus WAL) is sampled; passes when it stays within 10% after the first
    /// retention period and every sampled task still answers (docs/reliability.md).
    Retention(RetentionArgs),
    /// Adds a backlog of ready tasks through the store (a `baton dev` data
    /// directory's `DIR/baton.db`, or a PostgreSQL schema), then times the
    /// stage gauges (counters) against their full recount, same run.
    SeedBacklog {
        /// A `baton dev` data directory (SQLite).
        #[arg(long, conflicts_with = "database_url")]
        data_dir: Option<PathBuf>,
        /// A PostgreSQL database instead, with --schema.
        #[arg(long, requires = "schema")]
        database_url: Option<String>,
        #[arg(long)]
        schema: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        tasks: usize,
        #[arg(long, default_value_t = 5)]
        stages: usize,
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 30)]
        rounds: usize,
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

/// `fault`'s options.
#[derive(clap::Args)]
struct FaultArgs {
    /// kill-9, power-loss, power-loss-lying-fsync, fsync-eio, clock-jump, soak,
    /// or all (the long tier: each with its own cycles, a results table at the end).
    scenario: String,
    /// Faults to inject (default 20; for `all`, each scenario's own).
    #[arg(long)]
    cycles: Option<usize>,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Load time before each fault, ms: MIN,MAX (default 500,1500; for `all`, each scenario's own).
    #[arg(long, value_delimiter = ',')]
    run_ms: Option<Vec<u64>>,
    /// Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// fsync-eio: every fsync/fdatasync of a thread fails from this call on.
    #[arg(long, default_value_t = 20)]
    eio_nth: u32,
    /// The `baton` binary; default: next to this binary.
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Directory for the run (data, logs, mount point); default: a new temporary one, removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report (for `all`: the list of reports) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the results table (Markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn fault_command(a: FaultArgs) -> Result<()> {
    use baton_harness::fault::{self, scenarios};
    let plan: Vec<(&str, usize, (u64, u64))> = if a.scenario == "all" {
        scenarios::LONG_TIER.to_vec()
    } else {
        let name = scenarios::NAMES.iter().find(|n| **n == a.scenario).with_context(|| {
            format!("unknown scenario {:?}; one of: {}, all", a.scenario, scenarios::NAMES.join(", "))
        })?;
        vec![(*name, 20, (500, 1_500))]
    };
    let run_ms = match a.run_ms.as_deref() {
        None => None,
        Some(&[min, max]) if min <= max => Some((min, max)),
        Some(_) => bail!("--run-ms takes MIN,MAX with MIN <= MAX"),
    };
    if a.cycles == Some(0) || a.clients == 0 {
        bail!("--cycles and --clients must be positive");
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            >> 1
    });
    let temp = tempfile::tempdir()?;
    let root = a.dir.unwrap_or_else(|| temp.path().to_owned());
    let baton = a.baton.map_or_else(bench::http::default_baton, |b| std::fs::canonicalize(&b).unwrap_or(b));
    let mut reports = Vec::new();
    for (name, cycles, default_ms) in plan {
        let mut scenario = scenarios::by_name(name, a.eio_nth).context("scenario by name")?;
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut config = fault::FaultConfig::small(&baton, &dir, seed);
        config.cycles = a.cycles.unwrap_or(cycles);
        config.run_ms = run_ms.unwrap_or(default_ms);
        config.load.clients = a.clients;
        eprintln!(
            "fault {name}: {} cycles, {} clients, seed {seed}, in {}",
            config.cycles,
            a.clients,
            dir.display()
        );
        let report = fault::run(scenario.as_mut(), &config)?;
        eprintln!("{}", serde_json::to_string_pretty(&report)?);
        reports.push(report);
    }
    if let Some(path) = &a.json {
        let json = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(&reports)?
        };
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    let table = fault::markdown(&reports);
    print!("{table}");
    if let Some(path) = &a.markdown {
        std::fs::write(path, &table).with_context(|| format!("write {}", path.display()))?;
    }
    let unexpected: Vec<&str> =
        reports.iter().filter(|r| !scenarios::as_expected(r)).map(|r| r.scenario.as_str()).collect();
    if !unexpected.is_empty() {
        bail!("not as expected (see the reports above): {}", unexpected.join(", "));
    }
    Ok(())
}

/// `retention`'s options.
#[derive(clap::Args)]
struct RetentionArgs {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 3_600)]
    duration_s: u64,
    /// The server's `--retention`, in seconds.
    #[arg(long, default_value_t = 300)]
    retention_s: u64,
    /// Tasks per second (submit, claim, complete each).
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds between two size samples.
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// Bytes of each task's payload.
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    /// The `baton` binary; default: next to this binary.
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Directory for the run; default: a new temporary one, removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn retention_command(a: RetentionArgs) -> Result<()> {
    use baton_harness::retention::{RetentionConfig, run};
    if a.duration_s <= a.retention_s || a.rate == 0 || a.sample_s == 0 {
        bail!("--duration-s must exceed --retention-s, and --rate and --sample-s must be positive");
    }
    let temp = tempfile::tempdir()?;
    let dir = a.dir.unwrap_or_else(|| temp.path().to_owned());
    let baton = a.baton.map_or_else(bench::http::default_baton, |b| std::fs::canonicalize(&b).unwrap_or(b));
    let config = RetentionConfig {
        baton,
        dir,
        duration: std::time::Duration::from_secs(a.duration_s),
        retention: std::time::Duration::from_secs(a.retention_s),
        rate: a.rate,
        sample: std::time::Duration::from_secs(a.sample_s),
        payload_bytes: a.payload_bytes,
    };
    let report = run(&config)?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &a.json {
        std::fs::write(path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    if !report.ok {
        bail!("the retention soak failed: {}", report.problems.join("; "));
    }
    Ok(())
}

/// `bench`'s options; `--smoke` shrinks every size for a run of seconds.
#[derive(clap::Args)]
struct BenchArgs {
    /// Tiny sizes for CI: K=4, N=90, one round, backlogs 300 and 1,000, no quiet wait.
    #[arg(long)]
    smoke: bool,
    /// Agent counts (HB3: 4, 16, 64).
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    agents: Vec<usize>,
    /// Tasks per run (3 handoffs each).
    #[arg(long, default_value_t = 5_000)]
    tasks: usize,
    /// Payload bytes (HB3: 200, 1024, 16384).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Systems, in round order; `restate` and `temporal` select latency anchors (see --anchors).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fsync,raw,ideal,baton,baton-http,baton-http-memory,raw-pg,baton-pg,nats,rabbitmq"
    )]
    systems: Vec<String>,
    /// Open loop at this fraction of each system's burn-down rate (0: skip it).
    #[arg(long, default_value_t = 0.5)]
    open_loop_fraction: f64,
    /// Backlog series sizes (none: skip it).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    backlogs: Vec<usize>,
    /// Tasks burned down at each backlog size.
    #[arg(long, default_value_t = 5_000)]
    backlog_sample: usize,
    /// Directory for the runs (each gets a fresh subdirectory, removed after).
    #[arg(long, default_value = "target/bench-runs")]
    dir: PathBuf,
    /// PostgreSQL for raw-pg and baton-pg (a schema per run, dropped after).
    #[arg(long, env = "BATON_BENCH_DATABASE_URL", default_value = bench::pg::DEFAULT_DATABASE_URL)]
    database_url: String,
    /// The `baton` binary for baton-http; default: next to this binary.
    #[arg(long)]
    baton: Option<PathBuf>,
    /// Write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here ("-": stdout).
    #[arg(long, default_value = "-")]
    markdown: PathBuf,
    /// Before each run, wait up to this many seconds for other processes to quiet down.
    #[arg(long, default_value_t = 30)]
    quiet_wait_s: u64,
    /// Also run the latency anchors (G4): Baton over HTTP, Restate and the Temporal dev server on a
    /// 3-step pipeline, installed on first use under $BATON_BENCH_CACHE (default ~/.cache).
    #[arg(long)]
    anchors: bool,
    /// Anchors: sequential pipelines per round.
    #[arg(long, default_value_t = 200)]
    anchor_samples: usize,
    /// Anchors: closed-loop callers of the throughput phase.
    #[arg(long, default_value_t = 16)]
    anchor_concurrency: usize,
    /// Anchors: pipelines of the throughput phase (fewer when --anchor-time-max-s ends it first).
    #[arg(long, default_value_t = 3_000)]
    anchor_pipelines: usize,
    #[arg(long, default_value_t = 15.0)]
    anchor_time_max_s: f64,
    /// Anchors: Baton's agents per stage in the throughput phase.
    #[arg(long, default_value_t = 6)]
    anchor_agents_per_stage: usize,
}

fn bench_suite(a: BenchArgs) -> Result<()> {
    use bench::anchors::{Anchor, AnchorsConfig};
    let (anchor_names, systems): (Vec<&String>, Vec<&String>) =
        a.systems.iter().partition(|s| Anchor::parse(s).is_some());
    let systems = systems
        .into_iter()
        .map(|s| bench::suite::Sys::parse(s).with_context(|| format!("unknown system {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    // Baton over HTTP is every anchor's reference, so it is always in the section.
    let mut anchors: Vec<Anchor> = if a.anchors { Anchor::ALL.to_vec() } else { Vec::new() };
    for anchor in anchor_names.into_iter().filter_map(|s| Anchor::parse(s)) {
        if anchors.is_empty() {
            anchors.push(Anchor::Baton);
        }
        if !anchors.contains(&anchor) {
            anchors.push(anchor);
        }
    }
    let mut config = bench::suite::SuiteConfig {
        agents: a.agents,
        tasks: a.tasks,
        payload_bytes: a.payload_bytes,
        runs: a.runs,
        systems,
        open_loop_fraction: a.open_loop_fraction,
        backlogs: a.backlogs.into_iter().filter(|&b| b > 0).collect(),
        backlog_sample: a.backlog_sample,
        fsyncs: 2_000,
        dir: a.dir,
        database_url: a.database_url,
        // `baton dev` runs in each run's directory: the path must not be relative.
        baton: a.baton.map_or_else(bench::http::default_baton, |b| std::fs::canonicalize(&b).unwrap_or(b)),
        harness: std::env::current_exe().ok(),
        quiet_wait_s: a.quiet_wait_s,
        anchors: None,
        install_into: (!a.smoke).then(AnchorsConfig::default_cache),
    };
    let mut anchors = (!anchors.is_empty()).then(|| AnchorsConfig {
        systems: anchors,
        samples: a.anchor_samples,
        warmup: 10,
        concurrency: a.anchor_concurrency,
        pipelines: a.anchor_pipelines,
        time_max_s: a.anchor_time_max_s,
        agents_per_stage: a.anchor_agents_per_stage,
        runs: config.runs,
        payload_bytes: config.payload_bytes,
        cache: AnchorsConfig::default_cache(),
        dir: config.dir.clone(),
        baton: config.baton.clone(),
        quiet_wait_s: config.quiet_wait_s,
    });
    if a.smoke {
        config.agents = vec![4];
        config.tasks = 90;
        config.runs = 1;
        config.backlogs = vec![300, 1_000];
        config.backlog_sample = 90;
        config.fsyncs = 100;
        config.quiet_wait_s = 0;
        if let Some(x) = anchors.as_mut() {
            (x.samples, x.warmup, x.pipelines, x.time_max_s, x.runs, x.quiet_wait_s) =
                (20, 3, 100, 10.0, 1, 0);
        }
    }
    if anchors.as_ref().is_some_and(|x| x.samples == 0 || x.concurrency == 0 || x.pipelines == 0) {
        bail!("--anchor-samples, --anchor-concurrency and --anchor-pipelines must be positive");
    }
    config.anchors = anchors;
    if config.agents.is_empty() || config.agents.contains(&0) || config.runs == 0 || config.tasks == 0 {
        bail!("--agents, --runs and --tasks must be positive");
    }
    let report = bench::suite::run(config)?;
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let md = bench::suite::markdown(&report);
    if a.markdown.as_os_str() == "-" {
        print!("{md}");
    } else {
        std::fs::write(&a.markdown, md).with_context(|| format!("write {}", a.markdown.display()))?;
    }
    Ok(())
}

fn seed_anomaly(data_dir: &std::path::Path) -> Result<()> {
    use baton_core::metrics::{Anomaly, RollupKey};
    use baton_core::{Clock as _, Op, StageName, Store as _};
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let store = baton_harness::store::open_sqlite(&data_dir.join("baton.db"))?;
    let now = baton_core::clock::SystemClock.now();
    let anomaly = Anomaly {
        key: RollupKey::Edge { from: StageName::new("intake"), to: StageName::new("pack") },
        metric: "accept_latency".to_owned(),
        window_start: now - 5 * 60_000,
        window_end: now,
        baseline: 30_000.0,
        observed: 61_000.0,
        message: "edge intake -> pack: mean accept latency 61.0 s over the window, baseline 30.0 s"
            .to_owned(),
        raised_at: now,
        acked: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime
        .block_on(store.execute(Op::RaiseAnomaly(anomaly), None))
        .map_err(|e| anyhow::anyhow!("the store refused the anomaly: {e:?}"))?;
    println!("seeded one open anomaly on intake -> pack in {}", data_dir.display());
    Ok(())
}

fn seed_backlog(
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    schema: Option<String>,
    config: &baton_harness::gauges::SeedConfig,
) -> Result<()> {
    let store: std::sync::Arc<dyn baton_core::Store> = match (data_dir, database_url, schema) {
        (Some(dir), None, _) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            baton_harness::store::open_sqlite(&dir.join("baton.db"))?
        }
        (None, Some(url), Some(schema)) => {
            let options = baton_postgres::PostgresOptions::new(&url).context("database URL")?.schema(schema);
            std::sync::Arc::new(
                baton_postgres::PostgresStore::open(options).context("open the PostgreSQL store")?,
            )
        }
        _ => bail!("name --data-dir, or --database-url with --schema"),
    };
    baton_harness::gauges::seed_and_time(store, config)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::SeedBacklog { data_dir, database_url, schema, tasks, stages, payload_bytes, rounds } => {
            let config = baton_harness::gauges::SeedConfig { tasks, stages, payload_bytes, rounds };
            seed_backlog(data_dir, database_url, schema, &config)
        }
        Command::Bench(args) => bench_suite(args),
        Command::SeedAnomaly { data_dir } => seed_anomaly(&data_dir),
        Command::ServeMemory { listen } => bench::memory_server::run(listen),
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
        Command::Fault(args) => fault_command(args),
        Command::Retention(args) => retention_command(args),
        Command::CrashChild { db, seed, threads, run_ms_max, ops_per_thread_max } => {
            crash::run_child(&ChildConfig { db, seed, threads, run_ms_max, ops_per_thread_max })
        }
    }
}
