//! `cargo xtask`: the project's own automation. `ci` runs everything CI runs
//! (format check, clippy with warnings denied, the whole test suite under
//! nextest, tidy); `tidy` runs only the repository checks; `openapi` writes
//! the API's OpenAPI document to docs/api/openapi.json. The same tidy checks
//! also run as a test, so `cargo nextest run` alone enforces them.

mod tidy;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy::run(&tidy::root()).map_err(|problems| problems.join("\n")),
        Some("openapi") => openapi(),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|tidy|openapi>\n  \
                 ci       format check, clippy -D warnings, all tests (nextest), tidy\n  \
                 tidy     repository checks only\n  \
                 openapi  write the API's OpenAPI document to {}",
                tidy::OPENAPI_FILE
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes docs/api/openapi.json from the server's handlers.
fn openapi() -> Result<(), String> {
    let path = tidy::root().join(tidy::OPENAPI_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, baton_server::openapi_json())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("xtask openapi: wrote {}", tidy::OPENAPI_FILE);
    Ok(())
}

fn ci() -> Result<(), String> {
    let root = tidy::root();
    let steps: [(&str, &[&str]); 3] = [
        ("format check", &["fmt", "--all", "--", "--check"]),
        ("clippy", &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]),
        ("tests", &["nextest", "run", "--workspace", "--locked", "--no-fail-fast"]),
    ];
    for (name, args) in steps {
        eprintln!("xtask ci: {name}: cargo {}", args.join(" "));
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&root)
            .status()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("{name} failed"));
        }
    }
    eprintln!("xtask ci: tidy");
    tidy::run(&root).map_err(|problems| problems.join("\n"))?;
    eprintln!("xtask ci: all green");
    Ok(())
}
