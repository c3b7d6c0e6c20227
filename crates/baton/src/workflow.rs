//! `baton workflow ...`: workflow files. `validate FILE` parses and checks a
//! file offline with `baton_api::parse_workflow`, against the global policies
//! and limits of `--config FILE` (or the defaults a server starts with), and
//! prints `ok: NAME (N stages, entry STAGE)`, or every error as
//! `FILE:LINE:COLUMN: message` on stderr and exits 2. Commands that talk to a
//! server (`apply`, `show`) are further `WorkflowCommand` variants taking the
//! client flags; the file format and its checks live in baton-api.

use anyhow::Context;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Check a workflow file offline: syntax, keys, durations, limits and the stage graph.
    Validate(ValidateArgs),
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
    }
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
