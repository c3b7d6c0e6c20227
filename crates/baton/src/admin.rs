//! `baton agent|principal|token ...`: managing who may call a server with auth
//! on (`baton serve`), through the admin API, with an admin's token
//! (`--token` / `BATON_TOKEN`; `baton serve` prints the first one).
//!
//! Principals are created by `agent add` (an agent: stages and routes) or
//! `principal add` (any role); a token is then minted for an existing
//! principal by `token create --principal NAME`, which prints it once.
//! `token create --role ROLE` refuses unless the principal has that role, a
//! guard against handing out an admin's token by mistake.

use crate::output::Format;
use crate::task::ClientArgs;
use anyhow::bail;
use baton_api as api;
use baton_api::auth::Principal;
use serde::Serialize;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Create an agent: it claims from its stages and hands off along its routes.
    Add {
        /// The agent's name, also its agent id.
        name: String,
        /// Stages it claims from and reads, comma-separated; `*` for every stage.
        #[arg(long, value_delimiter = ',', required = true)]
        stages: Vec<String>,
        /// Routes it may hand off along, `FROM:TO`, comma-separated; left out,
        /// it hands off between its own stages only.
        #[arg(long, value_delimiter = ',')]
        routes: Vec<api::Route>,
    },
    /// List agents.
    List,
    /// Revoke an agent and every token it has.
    Revoke { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal of any role (agents: see `baton agent add`).
    Add {
        name: String,
        /// agent, submitter, operator or admin.
        #[arg(long)]
        role: api::Role,
        /// Stages (agents, operators), comma-separated; `*` for every stage.
        #[arg(long, value_delimiter = ',')]
        stages: Vec<String>,
        /// Routes (agents), `FROM:TO`, comma-separated.
        #[arg(long, value_delimiter = ',')]
        routes: Vec<api::Route>,
    },
    /// List every principal.
    List,
    /// Revoke a principal and every token it has.
    Revoke { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a token for an existing principal; it is printed once.
    Create {
        /// The principal the token names.
        #[arg(long)]
        principal: String,
        /// Refuse unless the principal has this role.
        #[arg(long)]
        role: Option<api::Role>,
    },
    /// List tokens: ids, principals and times (never secrets).
    List,
    /// Revoke a token by its id.
    Revoke { id: String },
}

pub async fn agent(args: &ClientArgs, command: AgentCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        AgentCommand::Add { name, stages, routes } => {
            let request = api::PrincipalRequest { name, role: api::Role::Agent, stages, routes };
            print_principal(args.output, &client.add_principal(&request).await?)
        }
        AgentCommand::List => {
            let agents: Vec<Principal> =
                client.principals().await?.into_iter().filter(|p| p.role == api::Role::Agent).collect();
            print_principals(args.output, &agents)
        }
        AgentCommand::Revoke { name } => {
            let principal = client.principals().await?.into_iter().find(|p| p.name == name);
            match principal {
                Some(p) if p.role != api::Role::Agent => {
                    bail!("{name} is not an agent but a {}; use `baton principal revoke {name}`", p.role)
                }
                _ => print_principal(args.output, &client.revoke_principal(&name).await?),
            }
        }
    }
}

pub async fn principal(args: &ClientArgs, command: PrincipalCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        PrincipalCommand::Add { name, role, stages, routes } => {
            let request = api::PrincipalRequest { name, role, stages, routes };
            print_principal(args.output, &client.add_principal(&request).await?)
        }
        PrincipalCommand::List => print_principals(args.output, &client.principals().await?),
        PrincipalCommand::Revoke { name } => {
            print_principal(args.output, &client.revoke_principal(&name).await?)
        }
    }
}

pub async fn token(args: &ClientArgs, command: TokenCommand) -> anyhow::Result<()> {
    let client = args.connect()?;
    match command {
        TokenCommand::Create { principal, role } => {
            if let Some(role) = role {
                let found = client.principals().await?.into_iter().find(|p| p.name == principal);
                match found {
                    None => bail!("no principal is named {principal}; create it with `baton principal add`"),
                    Some(p) if p.role != role => {
                        bail!("{principal} has role {}, not {role}; no token was created", p.role)
                    }
                    Some(_) => {}
                }
            }
            let created = client.create_token(&principal).await?;
            match args.output {
                Format::Json => print_json(&created)?,
                Format::Text => {
                    println!("{}", created.token);
                    eprintln!(
                        "token {} for {}: shown this once, it will not be shown again; store it now",
                        created.id, created.principal
                    );
                }
            }
            Ok(())
        }
        TokenCommand::List => {
            let tokens = client.tokens().await?;
            match args.output {
                Format::Json => print_json(&api::TokenList { tokens }),
                Format::Text => {
                    for t in &tokens {
                        let revoked = t.revoked_at.map(|at| format!("  revoked {at}")).unwrap_or_default();
                        println!("{}  {}  created {}{revoked}", t.id, t.principal, t.created_at);
                    }
                    Ok(())
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let token = client.revoke_token(&id).await?;
            match args.output {
                Format::Json => print_json(&token),
                Format::Text => {
                    println!("revoked token {} of {}", token.id, token.principal);
                    Ok(())
                }
            }
        }
    }
}

fn print_principal(format: Format, p: &Principal) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(p),
        Format::Text => {
            println!("{}", principal_text(p));
            Ok(())
        }
    }
}

fn print_principals(format: Format, all: &[Principal]) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&api::PrincipalList { principals: all.to_vec() }),
        Format::Text => {
            for p in all {
                println!("{}", principal_text(p));
            }
            Ok(())
        }
    }
}

fn principal_text(p: &Principal) -> String {
    let mut line = format!("{}  {}", p.name, p.role);
    if !p.stages.is_empty() {
        line.push_str(&format!("  stages {}", p.stages.join(",")));
    }
    if !p.routes.is_empty() {
        let routes: Vec<String> = p.routes.iter().map(ToString::to_string).collect();
        line.push_str(&format!("  routes {}", routes.join(",")));
    }
    if let Some(at) = p.revoked_at {
        line.push_str(&format!("  revoked {at}"));
    }
    line
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
