//! `cargo xtask`: the project's own automation. `ci` runs everything CI runs
//! (format check, clippy with warnings denied, the whole test suite under
//! nextest, tidy); `tidy` runs only the repository checks. The same tidy checks
//! also run as a test, so `cargo nextest run` alone enforces them.

mod tidy;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy::run(&tidy::root()).map_err(|problems| problems.join("\n")),
        _ => {
            eprintln!("usage: cargo xtask <ci|tidy>\n  ci    format check, clippy -D warnings, all tests (nextest), tidy\n  tidy  repository checks only");
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
