//! The `baton` command: `baton dev` and `baton serve` run the coordinator
//! (embedded SQLite, the HTTP API, the timers); `baton task ...` talks to a
//! running one through `baton-client`; `baton agent|principal|token ...`
//! manage who may call a server with auth on; `baton workflow validate`
//! checks a workflow file offline and `workflow apply|show|list` manage them
//! on a server; `baton inbox list|claim|resolve` and `baton stuck` are the
//! operators' (`inbox.rs`); `baton stats`, `alerts` and `gate` read the
//! handoff metrics (`metrics.rs`; the gate exits 0 at or above its target, 1
//! below, 2 with too few samples); `baton audit verify` checks every task's history
//! on a database; `baton mcp` serves the MCP tools on stdio (`mcp.rs`, a
//! relay to the server's `/mcp`); `baton version`. Flags mirror
//! environment variables (`BATON_ADDRESS`, `BATON_AGENT`, `BATON_TOKEN`,
//! `DATABASE_URL`, `BATON_LISTEN`); data goes to stdout, logs to stderr (`RUST_LOG` filters,
//! `--log-format json` for JSON lines). Exit codes: 0 success, 1 refused or
//! failed, 2 usage error or an invalid workflow file, 3 the server could not
//! be reached or is unavailable.

mod admin;
mod audit;
mod config;
mod db;
mod demo;
mod duration;
mod handoff;
mod inbox;
mod mcp;
mod metrics;
mod output;
mod server;
mod task;
mod webhook;
mod workflow;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "baton", version, about = "Baton: a durable handoff coordinator for multi-agent systems")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Baton for development: SQLite in ./.baton/, 127.0.0.1:7707, authentication off.
    Dev(server::DevArgs),
    /// Run Baton on a database with authentication on (bearer tokens).
    Serve(server::ServeArgs),
    /// Migrate or check a database's schema, or back up a SQLite database (`baton db migrate|check|backup`).
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
    },
    /// Verify every task's hash-chained history on a database (`baton audit verify`).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Submit, claim, inspect and finish tasks on a running server.
    Task {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Show handoffs and their outcomes on a running server.
    Handoff {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: handoff::HandoffCommand,
    },
    /// Create, list and revoke agents (admins, with auth on).
    Agent {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: admin::AgentCommand,
    },
    /// Create, list and revoke principals of any role (admins, with auth on).
    Principal {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: admin::PrincipalCommand,
    },
    /// Create, list and revoke API tokens (admins, with auth on).
    Token {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: admin::TokenCommand,
    },
    /// Check workflow files offline, apply them to a server, show and list them.
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// The human inbox: list, claim and resolve escalated tasks (operators).
    Inbox {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: inbox::InboxCommand,
    },
    /// List stuck work: overdue timers, escalated tasks, passed deadlines (operators).
    Stuck(inbox::StuckArgs),
    /// Handoff edge and stage metrics over a window (operators).
    Stats(metrics::StatsArgs),
    /// List anomalies (`--all` for acknowledged ones too); `alerts ack ID` acknowledges one.
    Alerts(metrics::AlertsArgs),
    /// Check an edge's success rate against a target: exit 0 at or above,
    /// 1 below, 2 with too few samples.
    Gate(metrics::GateArgs),
    /// List webhook delivery attempts (operators and admins; webhooks are
    /// configured in the server's --config file).
    Webhook {
        #[command(flatten)]
        client: task::ClientArgs,
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
    /// Benchmarks: HB3 against same-run baselines and peers (docs/benchmarks.md).
    /// Runs `baton-harness bench` from beside this binary (or $BATON_HARNESS)
    /// with these arguments; `baton bench --help` lists them.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Watch naive point-to-point handoffs lose work that Baton keeps: the
    /// same arrivals and faults side by side, then a tally (under a minute).
    Demo(demo::DemoArgs),
    /// Serve Baton's tools to an MCP client over stdio (Claude Desktop, IDEs):
    /// relays to the server's /mcp with --token, or --agent while auth is off.
    Mcp(mcp::McpArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// What `baton` alone prints: the commands a newcomer runs first.
const FIRST_STEPS: &str = "\
Baton: a durable handoff coordinator for multi-agent systems.

Start here:
  baton demo      watch naive handoffs lose work that Baton keeps (a minute, nothing to set up)
  baton dev       run Baton on this machine: SQLite in ./.baton/, http://127.0.0.1:7707, no auth
then, with `baton dev` running:
  baton task submit --stage intake --payload '{\"patient\":\"p-1\"}'
  baton task claim --stage intake --agent intake-bot
  baton --help    every command; `baton COMMAND --help` for one

The docs start at docs/README.md (quickstart, concepts, how-to, reference).
";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        print!("{FIRST_STEPS}");
        return ExitCode::SUCCESS;
    };
    let server = matches!(command, Command::Dev(_) | Command::Serve(_));
    init_logs(cli.log_format, if server { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => server::dev(args).await,
        Command::Serve(args) => server::serve(args).await,
        Command::Db { command } => db::run(command).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Task { client, command } => task::run(&client, command).await,
        Command::Handoff { client, command } => handoff::run(&client, command).await,
        Command::Agent { client, command } => admin::agent(&client, command).await,
        Command::Principal { client, command } => admin::principal(&client, command).await,
        Command::Token { client, command } => admin::token(&client, command).await,
        Command::Workflow { command } => workflow::run(command).await,
        Command::Inbox { client, command } => inbox::inbox(&client, command).await,
        Command::Stuck(args) => inbox::stuck(args).await,
        Command::Webhook { client, command } => webhook::run(&client, command).await,
        Command::Stats(args) => metrics::stats(args).await,
        Command::Alerts(args) => metrics::alerts(args).await,
        Command::Gate(args) => metrics::gate(args).await,
        Command::Bench { args } => bench(&args),
        Command::Demo(args) => demo::run(args).await,
        Command::Mcp(args) => mcp::run(args).await,
        Command::Version => {
            println!("baton {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// Prints an error for people and picks the exit code.
/// `baton bench`: the harness is a binary of its own, so its peer clients
/// (NATS, RabbitMQ) stay out of this one's build; this runs it.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let harness = std::env::var_os("BATON_HARNESS").map_or_else(
        || {
            let exe = std::env::current_exe().unwrap_or_default();
            exe.with_file_name("baton-harness")
        },
        std::path::PathBuf::from,
    );
    let status = std::process::Command::new(&harness).arg("bench").args(args).status().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {} ({e}); build it: cargo build --release -p baton-harness",
            harness.display()
        )
    })?;
    anyhow::ensure!(status.success(), "baton-harness bench failed ({status})");
    Ok(())
}

fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(invalid) = error.downcast_ref::<workflow::Invalid>() {
        // Its errors are on stderr already, one per line.
        eprintln!("error: {invalid}");
        return ExitCode::from(2);
    }
    if let Some(gate) = error.downcast_ref::<metrics::GateExit>() {
        // The figures are on stdout already.
        eprintln!("{gate}");
        return ExitCode::from(gate.code);
    }
    let Some(client_error) = error.downcast_ref::<baton_client::Error>() else {
        eprintln!("error: {error:#}");
        return ExitCode::from(1);
    };
    use baton_client::Error as E;
    match client_error {
        E::Transport { .. } => {
            eprintln!("error: {client_error}");
            eprintln!(
                "hint: is Baton running? Start it with `baton dev`, or point --address / BATON_ADDRESS at it"
            );
            ExitCode::from(3)
        }
        E::Unavailable { .. } => {
            eprintln!("error: unavailable: {client_error}");
            ExitCode::from(3)
        }
        _ => {
            match client_error.code() {
                Some(code) => eprintln!("error: {code}: {client_error}"),
                None => eprintln!("error: {client_error}"),
            }
            if let E::LeaseLost { .. } = client_error {
                eprintln!("hint: another agent may hold the task now; stop working on it");
            }
            if client_error.code() == Some(baton_client::ErrorCode::Unauthenticated) {
                eprintln!("hint: this server has auth on: pass --token or set BATON_TOKEN");
            }
            ExitCode::from(1)
        }
    }
}

fn init_logs(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
