//! `baton workflow validate FILE` as a user runs it, offline.
//!
//! Goal: a good file prints one `ok:` line and exits 0; a bad one prints each
//! error as `FILE:LINE:COLUMN: message` on stderr and exits 2; `--config`
//! checks against that file's limits. Method: the real binary on the
//! patient-intake example and on baton-api's bad fixture files, through the
//! crate's `check` helper.

use super::check;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn validate_accepts_the_example_and_points_at_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let example = repo().join("examples/patient-intake/workflow.toml");
    let example = example.to_str().unwrap();
    let (out, err) = check(dir, &["workflow", "validate", example], 0);
    assert_eq!(out, "ok: patient-intake (10 stages, entry intake)\n");
    assert_eq!(err, "");

    let bad = repo().join("crates/baton-api/tests/workflows/bad/route-unknown.toml");
    let bad = bad.to_str().unwrap();
    let (out, err) = check(dir, &["workflow", "validate", bad], 2);
    assert_eq!(out, "");
    let mut lines = err.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!("{bad}:6:21: route to unknown stage `triaj`: declare [stages.triaj] or remove the route")
                .as_str()
        )
    );
    assert_eq!(lines.next(), Some(format!("error: {bad}: 1 error; fix them and run again").as_str()));

    // Several mistakes, all reported, in file order, relative to the path given.
    std::fs::write(dir.join("two.toml"), "name = \"two\"\nentry = \"a\"\n\n[stages.a]\nlease = 30\n")
        .unwrap();
    let (_, err) = check(dir, &["workflow", "validate", "two.toml"], 2);
    assert!(err.starts_with("two.toml:5:9: `stages.a.lease`: a bare number (30) is not a duration"), "{err}");
    std::fs::write(dir.join("two.toml"), "name = \"two\"\n\n[stages.a]\nmax_attempts = 0\n").unwrap();
    let (_, err) = check(dir, &["workflow", "validate", "two.toml"], 2);
    let positions: Vec<&str> = err.lines().map(|l| l.split(": ").next().unwrap_or(l)).collect();
    assert_eq!(positions, ["two.toml:1:1", "two.toml:4:16", "error"], "{err}");

    // The server's configuration sets the limits checked against.
    std::fs::write(dir.join("baton.toml"), "[limits]\nlease_ttl_ms_max = 60000\n").unwrap();
    let (_, err) = check(dir, &["workflow", "validate", example, "--config", "baton.toml"], 2);
    assert!(
        err.starts_with(&format!("{example}:38:9: `lease` 10m is outside the lease limits 1s..=1m")),
        "{err}"
    );
    let (_, err) = check(dir, &["workflow", "validate", "missing.toml"], 1);
    assert!(err.contains("cannot read the workflow file missing.toml"), "{err}");
}
