//! `baton workflow ...`: workflow files. `validate FILE` parses and checks a
//! file offline with `baton_api::parse_workflow`, against the global policies
//! and limits of `--config FILE` (or the defaults a server starts with), and
//! prints `ok: NAME (N stages, entry STAGE)`, or every error as
//! `FILE:LINE:COLUMN: message` on stderr and exits 2. `apply FILE` checks
//! the file the same way first, then sends it (the server checks it again,
//! against its own policies, and its errors are printed alike) and prints
//! `applied NAME vN` or `unchanged NAME vN`; `show NAME [--version N]` prints
//! a stored version as a workflow file (`--json`: the API's view), and `list`
//! the latest version of each. The file format and its checks live in
//! baton-api.

use crate::output::Format;
use crate::task::ClientArgs;
use anyhow::Context;
use baton_api as api;
use baton_client::ErrorCode;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Check a workflow file offline: syntax, keys, durations, limits and the stage graph.
    Validate(ValidateArgs),
    /// Apply a workflow file to a server: a new version unless the latest has this definition.
    Apply {
        #[command(flatten)]
        client: ClientArgs,
        /// The workflow file (TOML).
        file: PathBuf,
        /// Check against this server configuration's [limits] and [policies] before sending.
        #[arg(long, env = "BATON_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a workflow version as a workflow file (the latest unless --version).
    Show {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        #[arg(long)]
        version: Option<u32>,
        /// Print the API's JSON view (stages with policies in milliseconds) instead.
        #[arg(long)]
        json: bool,
    },
    /// List workflows: the latest version of each.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Promote a stage's canary route: a new version whose `next` is the canary's stage.
    Promote {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        /// The stage whose canary route is promoted.
        #[arg(long)]
        stage: String,
    },
    /// Roll a stage's canary route back: a new version without it (`next` unchanged).
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        /// The stage whose canary route is removed.
        #[arg(long)]
        stage: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The workflow file (TOML; docs/reference/workflow-file.md).
    file: PathBuf,
    /// The server's configuration file: check against its [limits] and [policies]
    /// instead of the defaults.
    #[arg(long, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
}

/// A workflow file with errors, already printed on stderr: exit code 2.
#[derive(Debug)]
pub struct Invalid {
    pub file: PathBuf,
    pub errors: usize,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.errors == 1 { "" } else { "s" };
        write!(f, "{}: {} error{plural}; fix them and run again", self.file.display(), self.errors)
    }
}

impl std::error::Error for Invalid {}

pub async fn run(command: WorkflowCommand) -> anyhow::Result<()> {
    match command {
        WorkflowCommand::Validate(args) => validate(&args),
        WorkflowCommand::Apply { client, file, config } => apply(&client, &file, config.as_deref()).await,
        WorkflowCommand::Show { client, name, version, json } => {
            let view = client.connect()?.workflow(&name, version).await?;
            if json || client.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", view.source);
            }
            Ok(())
        }
        WorkflowCommand::Promote { client, name, stage } => canary(&client, &name, &stage, true).await,
        WorkflowCommand::Rollback { client, name, stage } => canary(&client, &name, &stage, false).await,
        WorkflowCommand::List { client } => {
            let all = client.connect()?.workflows().await?;
            if client.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&api::WorkflowList { workflows: all })?);
                return Ok(());
            }
            if all.is_empty() {
                println!("no workflows");
            }
            for wf in &all {
                let plural = if wf.stages.len() == 1 { "" } else { "s" };
                println!(
                    "{} v{}  entry {}  {} stage{plural}",
                    wf.name,
                    wf.version,
                    wf.entry,
                    wf.stages.len()
                );
            }
            Ok(())
        }
    }
}

/// Checks the file locally, then applies it; the server's own refusal of the
/// file is printed like a local one.
async fn apply(client: &ClientArgs, file: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let rules = crate::config::File::load(config)?.rules();
    load(file, &rules)?;
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the workflow file {}", file.display()))?;
    let applied = match client.connect()?.apply_workflow(&source).await {
        Ok(applied) => applied,
        Err(baton_client::Error::Refused { body, .. })
            if body.error_code() == Some(ErrorCode::InvalidWorkflow) =>
        {
            let errors: Vec<api::WorkflowFileError> =
                serde_json::from_value(body.details["errors"].clone()).unwrap_or_default();
            for error in &errors {
                eprintln!("{}:{error}", file.display());
            }
            eprintln!("the server refused the file: {}", body.message);
            return Err(Invalid { file: file.to_owned(), errors: errors.len().max(1) }.into());
        }
        Err(other) => return Err(other.into()),
    };
    if client.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&applied)?);
    } else {
        let verb = if applied.created { "applied" } else { "unchanged" };
        println!("{verb} {} v{}", applied.workflow.name, applied.workflow.version);
    }
    Ok(())
}

/// Promotes (its stage becomes `next`) or rolls back (removed) the canary
/// route of `stage` in the latest version of `name`, by applying a new
/// version: tasks already running keep the version they started on.
async fn canary(client: &ClientArgs, name: &str, stage: &str, promote: bool) -> anyhow::Result<()> {
    let api = client.connect()?;
    let view = api.workflow(name, None).await?;
    let rules = baton_core::Rules::default();
    let mut wf =
        baton_api::parse_workflow(&view.source, &rules.policies, &rules.limits).map_err(|errors| {
            anyhow::anyhow!(
                "the server's rendering of {name} v{} does not parse here: {errors:?}",
                view.version
            )
        })?;
    let def = wf
        .stages
        .get_mut(&baton_core::StageName::new(stage))
        .with_context(|| format!("{name} v{} has no stage {stage}", view.version))?;
    let Some(canary) = def.canary.take() else {
        anyhow::bail!("stage {stage} of {name} v{} has no canary route", view.version);
    };
    if promote {
        def.next = Some(canary.stage.clone());
    }
    let applied = api.apply_workflow(&baton_api::render_workflow(&wf)).await?;
    if client.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&applied)?);
    } else {
        let what = if promote { "promoted" } else { "rolled back" };
        println!(
            "{what} the canary {stage} -> {}: {} v{}",
            canary.stage, applied.workflow.name, applied.workflow.version
        );
    }
    Ok(())
}

fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let rules = crate::config::File::load(args.config.as_deref())?.rules();
    let workflow = load(&args.file, &rules)?;
    let plural = if workflow.stages.len() == 1 { "" } else { "s" };
    println!("ok: {} ({} stage{plural}, entry {})", workflow.name, workflow.stages.len(), workflow.entry);
    Ok(())
}

/// Reads and checks a workflow file; errors are printed and returned as `Invalid`.
fn load(path: &Path, rules: &baton_core::Rules) -> anyhow::Result<baton_core::Workflow> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workflow file {}", path.display()))?;
    baton_api::parse_workflow(&source, &rules.policies, &rules.limits).map_err(|errors| {
        for error in &errors {
            eprintln!("{}:{error}", path.display());
        }
        anyhow::Error::new(Invalid { file: path.to_owned(), errors: errors.len() })
    })
}
