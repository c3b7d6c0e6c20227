//! `baton stats`, `baton alerts` and `baton gate`: the handoff metrics of a
//! running server. `stats` prints each edge (stage to stage, agent to agent)
//! and each stage over a window as tables (`--json` for the API's JSON);
//! `alerts` lists anomalies (open ones, or `--all`) and `alerts ack ID`
//! acknowledges one; `gate` checks one edge's success rate over a window
//! against a target for rollout pipelines and says so by its exit code: 0 at
//! or above the target, 1 below it, 2 with fewer samples than asked for
//! (`GateExit`, which `main` turns into the code).

use crate::output::Format;
use crate::task::ClientArgs;
use baton_api as api;
use std::fmt::Write as _;

/// `baton stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How far back: 15m, 1h, 1d (the server's default, 1h, when left out).
    #[arg(long)]
    window: Option<String>,
    /// Only this edge, FROM:TO (stages, or agents for agent edges).
    #[arg(long)]
    edge: Option<String>,
    /// Only this stage (and the stage edges touching it).
    #[arg(long)]
    stage: Option<String>,
    /// Print the API's JSON (the same as `-o json`).
    #[arg(long)]
    json: bool,
}

/// `baton alerts [--all]` and `baton alerts ack ID`.
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Option<AlertsCommand>,
    /// Acknowledged anomalies too.
    #[arg(long)]
    all: bool,
    /// At most this many.
    #[arg(long)]
    limit: Option<u32>,
    /// Print the API's JSON (the same as `-o json`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum AlertsCommand {
    /// Acknowledge an anomaly by id.
    Ack { id: u64 },
}

/// `baton gate`.
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The edge, FROM:TO (a stage edge; an agent edge when no stage edge matches).
    #[arg(long)]
    edge: String,
    /// The success rate to reach, in percent (99.9).
    #[arg(long)]
    target: f64,
    /// How far back: 15m, 1h, 1d.
    #[arg(long, default_value = "1h")]
    window: String,
    /// Settled handoffs the window needs; fewer and the gate exits 2.
    #[arg(long, default_value_t = 1)]
    min_samples: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// The gate's verdict as an exit code (0, 1 or 2), after its figures are printed.
#[derive(Debug)]
pub struct GateExit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for GateExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GateExit {}

pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let query = api::StatsQuery { window: args.window, edge: args.edge, stage: args.stage };
    let stats = args.client.connect()?.stats(&query).await?;
    if args.json || args.client.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats_text(&stats));
    }
    Ok(())
}

pub async fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    let api = args.client.connect()?;
    let json = args.json || args.client.output == Format::Json;
    match args.command {
        Some(AlertsCommand::Ack { id }) => {
            let a = api.ack_alert(id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                println!("acknowledged anomaly {} ({} {})", a.id, a.metric, subject(&a));
            }
        }
        None => {
            let query = api::AlertQuery { all: args.all, after: 0, limit: args.limit };
            let list = api.alerts(&query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", alerts_text(&list));
            }
        }
    }
    Ok(())
}

pub async fn gate(args: GateArgs) -> anyhow::Result<()> {
    if !(0.0..=100.0).contains(&args.target) {
        anyhow::bail!("--target is a percentage from 0 to 100, not {}", args.target);
    }
    let query =
        api::StatsQuery { window: Some(args.window.clone()), edge: Some(args.edge.clone()), stage: None };
    let stats = args.client.connect()?.stats(&query).await?;
    let edge = stats.edges.first().or(stats.agent_edges.first());
    let samples = edge.map_or(0, |e| e.samples);
    let rate = edge.and_then(|e| e.success_rate);
    let p99 = edge.and_then(|e| e.accept_latency.p99_ms);
    let (code, verdict) = if samples < args.min_samples {
        (2, format!("too few samples: {samples} < {}", args.min_samples))
    } else if rate.is_some_and(|r| r * 100.0 + 1e-9 >= args.target) {
        (0, format!("pass: at or above {}%", args.target))
    } else {
        (1, format!("fail: below {}%", args.target))
    };
    let rate_text = rate.map_or("-".to_owned(), |r| format!("{:.3}%", r * 100.0));
    let p99_text = p99.map_or("-".to_owned(), |ms| format!("{ms} ms"));
    if args.json {
        let figures = serde_json::json!({
            "edge": args.edge, "window": args.window, "target": args.target, "success_rate": rate,
            "samples": samples, "min_samples": args.min_samples, "accept_p99_ms": p99, "pass": code == 0,
            "verdict": verdict,
        });
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        println!("edge {} over {}", args.edge, args.window);
        println!("success rate  {rate_text} (target {}%)", args.target);
        println!("samples       {samples} (minimum {})", args.min_samples);
        println!("accept p99    {p99_text}");
        println!("{verdict}");
    }
    if code == 0 {
        Ok(())
    } else {
        Err(GateExit { code, message: format!("gate {}: {verdict}", args.edge) }.into())
    }
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |ms| format!("{ms}"))
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

fn stats_text(stats: &api::Stats) -> String {
    let mut s = format!("window {} .. {} ({} ms)\n", stats.from, stats.to, stats.window_ms);
    for (title, edges) in [("STAGE EDGE", &stats.edges), ("AGENT EDGE", &stats.agent_edges)] {
        if edges.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "\n{title:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "HANDOFFS", "ACCEPTED", "P50_MS", "P95_MS", "P99_MS", "TIMEOUTS", "REROUTES", "ESCAL", "SUCCESS"
        );
        for e in edges {
            let _ = writeln!(
                s,
                "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                format!("{} -> {}", e.from, e.to),
                e.handoffs,
                e.accepted,
                ms(e.accept_latency.p50_ms),
                ms(e.accept_latency.p95_ms),
                ms(e.accept_latency.p99_ms),
                e.timeouts,
                e.reroutes,
                e.escalations,
                rate(e.success_rate)
            );
        }
    }
    if !stats.stages.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<24} {:>8} {:>12} {:>9} {:>8} {:>9} {:>8} {:>8}",
            "STAGE", "BACKLOG", "OLDEST_MS", "IN_FLIGHT", "CLAIMS", "COMPLETES", "EXPIRED", "TIMEOUTS"
        );
        for st in &stats.stages {
            let _ = writeln!(
                s,
                "{:<24} {:>8} {:>12} {:>9} {:>8} {:>9} {:>8} {:>8}",
                st.stage,
                st.backlog,
                ms(st.oldest_waiting_ms),
                st.in_flight,
                st.claims,
                st.completes,
                st.lease_expiries,
                st.timeouts
            );
        }
    }
    if stats.edges.is_empty() && stats.agent_edges.is_empty() && stats.stages.is_empty() {
        s.push_str("nothing in this window\n");
    }
    if stats.truncated {
        s.push_str("(not every rollup of the window was read: the figures are partial)\n");
    }
    s
}

fn subject(a: &api::Anomaly) -> String {
    match &a.to {
        Some(to) => format!("{} {} -> {to}", a.scope, a.from),
        None => format!("{} {}", a.scope, a.from),
    }
}

fn alerts_text(list: &api::AnomalyList) -> String {
    if list.anomalies.is_empty() {
        return "no anomalies\n".to_owned();
    }
    let mut s =
        format!("{:>5}  {:<24} {:<16} {:<32} {:<5}  MESSAGE\n", "ID", "RAISED", "METRIC", "SUBJECT", "ACKED");
    for a in &list.anomalies {
        let _ = writeln!(
            s,
            "{:>5}  {:<24} {:<16} {:<32} {:<5}  {}",
            a.id,
            a.raised_at.to_string(),
            a.metric,
            subject(a),
            if a.acked_by.is_some() { "yes" } else { "no" },
            a.message
        );
    }
    s
}
