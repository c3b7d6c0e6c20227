//! Tidy: the architecture invariants and house rules that a machine can check.
//! Each check returns the problems it found as sentences that say what to fix.
//! Run by `cargo xtask tidy`, by `cargo xtask ci`, and as a test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The committed OpenAPI document, relative to the root.
pub const OPENAPI_FILE: &str = "docs/api/openapi.json";

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Runs every check; `Err` lists every problem found.
pub fn run(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let sources = rust_sources(root);
    module_docs(root, &sources, &mut problems);
    no_ignored_tests(root, &sources, &mut problems);
    core_is_pure(root, &mut problems);
    layering(root, &mut problems);
    migrations_numbered(root, &mut problems);
    architecture_codemap(root, &mut problems);
    architecture_paths(root, &sources, &mut problems);
    one_sqlite(root, &mut problems);
    openapi_fresh(root, &mut problems);
    self_contained(root, &mut problems);
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

fn rust_sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in ["crates", "xtask"] {
        walk(&root.join(top), &mut out);
    }
    out.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && name != "node_modules" {
                walk(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// Every module opens with a `//!` paragraph.
fn module_docs(root: &Path, sources: &[PathBuf], problems: &mut Vec<String>) {
    for path in sources {
        let text = fs::read_to_string(path).unwrap_or_default();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{}: open the module with a `//!` paragraph saying what it owns",
                rel(root, path)
            ));
        }
    }
}

/// No test is switched off.
fn no_ignored_tests(root: &Path, sources: &[PathBuf], problems: &mut Vec<String>) {
    let needle = ["#[", "ignore"].concat();
    for path in sources {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.trim_start().starts_with(&needle)) {
            problems
                .push(format!("{}: remove the ignore attribute; fix or delete the test", rel(root, path)));
        }
    }
}

/// baton-core does no IO, has no runtime, database or HTTP dependency, and
/// never reads the clock outside `clock.rs`.
fn core_is_pure(root: &Path, problems: &mut Vec<String>) {
    let manifest = fs::read_to_string(root.join("crates/baton-core/Cargo.toml")).unwrap_or_default();
    let allowed = ["flate2", "serde", "serde_json", "sha2", "thiserror", "uuid"];
    for dep in dependencies(&manifest, "[dependencies]") {
        if !allowed.contains(&dep.as_str()) {
            problems.push(format!(
                "crates/baton-core/Cargo.toml: `{dep}` is not allowed in the pure core (allowed: {})",
                allowed.join(", ")
            ));
        }
    }
    let mut files = Vec::new();
    walk(&root.join("crates/baton-core/src"), &mut files);
    let forbidden =
        ["std::fs", "std::net", "std::thread", "std::process", "SystemTime", "Instant::now", "now_v7"];
    for path in files {
        if path.file_name().is_some_and(|n| n == "clock.rs") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        for word in forbidden {
            if text.contains(word) {
                problems.push(format!(
                    "{}: `{word}` does IO or reads the clock; pass it in instead",
                    rel(root, &path)
                ));
            }
        }
    }
}

/// Store crates never depend on each other; nothing above the stores names a
/// database crate except the binary, which picks the store.
fn layering(root: &Path, problems: &mut Vec<String>) {
    let rules: [(&str, &[&str]); 4] = [
        ("crates/baton-sqlite/Cargo.toml", &["baton-postgres", "tokio-postgres"]),
        ("crates/baton-postgres/Cargo.toml", &["baton-sqlite", "rusqlite"]),
        ("crates/baton-server/Cargo.toml", &["rusqlite", "tokio-postgres", "baton-sqlite", "baton-postgres"]),
        // baton-api may use the pure core (the workflow file parses into its model),
        // never a database or the HTTP stack.
        ("crates/baton-api/Cargo.toml", &["rusqlite", "tokio-postgres", "axum"]),
    ];
    for (file, banned) in rules {
        let Ok(manifest) = fs::read_to_string(root.join(file)) else { continue };
        let deps = dependencies(&manifest, "[dependencies]");
        for b in banned {
            if deps.iter().any(|d| d == b) {
                problems.push(format!("{file}: must not depend on `{b}` (see ARCHITECTURE.md invariants)"));
            }
        }
    }
}

/// Migrations are numbered 0001, 0002... without gaps, and backends that have
/// them use the same numbers.
fn migrations_numbered(root: &Path, problems: &mut Vec<String>) {
    let mut sets = Vec::new();
    for backend in ["baton-sqlite", "baton-postgres"] {
        let dir = root.join("crates").join(backend).join("migrations");
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        let mut numbers: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.get(..4)).and_then(|n| n.parse().ok()))
            .collect();
        numbers.sort();
        let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
        if numbers != expected {
            problems.push(format!("{}: migrations must be numbered 0001.. without gaps", rel(root, &dir)));
        }
        sets.push((backend, numbers));
    }
    if let [(a, na), (b, nb)] = sets.as_slice()
        && na != nb
    {
        problems.push(format!("{a} and {b} migrations must have matching numbers"));
    }
}

/// ARCHITECTURE.md names every crate in its codemap and states invariants.
fn architecture_codemap(root: &Path, problems: &mut Vec<String>) {
    let Ok(text) = fs::read_to_string(root.join("ARCHITECTURE.md")) else {
        problems.push("ARCHITECTURE.md is missing".into());
        return;
    };
    if !text.contains("Architecture Invariant:") {
        problems.push("ARCHITECTURE.md: state the invariants as `Architecture Invariant:` lines".into());
    }
    let Ok(entries) = fs::read_dir(root.join("crates")) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !text.contains(&format!("`{name}`")) {
            problems.push(format!("ARCHITECTURE.md: add `{name}` to the codemap"));
        }
    }
}

/// Every file ARCHITECTURE.md and the design chapters name in backticks
/// exists: a `name.rs` or `dir/name.rs` is the end of some source's path, a
/// path from the root (`crates/...`, `docs/...`, `deploy/...`) is there, so
/// they cannot point at code that moved.
fn architecture_paths(root: &Path, sources: &[PathBuf], problems: &mut Vec<String>) {
    for file in ["ARCHITECTURE.md", "docs/design.md", "docs/glossary.md"] {
        named_paths_exist(root, file, sources, problems);
    }
}

fn named_paths_exist(root: &Path, file: &str, sources: &[PathBuf], problems: &mut Vec<String>) {
    let Ok(text) = fs::read_to_string(root.join(file)) else { return };
    let sources: Vec<String> = sources.iter().map(|p| rel(root, p)).collect();
    for (i, token) in text.split('`').enumerate() {
        if i % 2 == 0 || token.contains(char::is_whitespace) {
            continue;
        }
        let from_root = ["crates/", "docs/", "deploy/", "sdks/", "examples/", "xtask/", "bench/"]
            .iter()
            .any(|top| token.starts_with(top));
        let missing = if from_root {
            !root.join(token.trim_end_matches('/')).exists()
        } else if token.ends_with(".rs") {
            !sources.iter().any(|s| s == token || s.ends_with(&format!("/{token}")))
        } else {
            false
        };
        if missing {
            problems.push(format!("{file} names `{token}`, which is not in the repository"));
        }
    }
}

/// Only one libsqlite3-sys may link (`links = "sqlite3"`).
fn one_sqlite(root: &Path, problems: &mut Vec<String>) {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree",
            "--workspace",
            "--offline",
            "-i",
            "libsqlite3-sys",
            "--prefix",
            "none",
            "-e",
            "normal,build",
        ])
        .current_dir(root)
        .output();
    let Ok(output) = output else {
        problems.push("could not run `cargo tree` to check libsqlite3-sys".into());
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut versions: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("libsqlite3-sys v"))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    versions.sort();
    versions.dedup();
    if versions.len() > 1 {
        problems.push(format!("more than one libsqlite3-sys links: {versions:?}; align the SQLite crates"));
    }
}

/// docs/api/openapi.json is what the server's handlers generate now. The
/// document is built in-process (no build, no server): cheap enough for tidy.
fn openapi_fresh(root: &Path, problems: &mut Vec<String>) {
    let committed = fs::read_to_string(root.join(OPENAPI_FILE)).unwrap_or_default();
    if committed != baton_server::openapi_json() {
        problems.push(format!(
            "{OPENAPI_FILE} is missing or stale (the API changed): run `cargo xtask openapi` and commit it"
        ));
    }
}

/// Text files that are part of the repository: every file under the root
/// except build output, virtualenvs, caches, VCS data and local Baton data.
fn repository_text_files(root: &Path) -> Vec<PathBuf> {
    const SKIP_DIRS: [&str; 8] =
        ["target", "node_modules", ".git", ".venv", "__pycache__", ".baton", ".mypy_cache", ".pytest_cache"];
    const TEXT: [&str; 14] =
        ["rs", "md", "toml", "py", "sql", "json", "yml", "yaml", "sh", "txt", "mjs", "service", "cfg", "ini"];
    fn go(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) && !name.ends_with(".egg-info") {
                    go(&path, out);
                }
            } else {
                let ext = path.extension().map(|e| e.to_string_lossy().to_string()).unwrap_or_default();
                let plain = ext.is_empty() || name == "Dockerfile" || name.starts_with("Containerfile");
                if (TEXT.contains(&ext.as_str()) || plain) && name != "Cargo.lock" {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    go(root, &mut out);
    out.sort();
    out
}

/// What a reference to a document outside the repository looks like: the
/// product and process documents it was planned from, the studies behind it, and
/// tracker numbers. The patterns are built at run time so that this file does
/// not match itself.
fn outside_reference(line: &str) -> Option<&'static str> {
    let spec = ["SP", "EC"].concat();
    let guide = ["GUI", "DE"].concat();
    let words = |needle: &str| {
        line.match_indices(needle).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + needle.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if words(&spec) {
        return Some("the product specification");
    }
    if words(&guide) {
        return Some("the build guide");
    }
    let lower = line.to_ascii_lowercase();
    let notes = ["notes", "/"].concat();
    if lower.contains(&notes) {
        return Some("a planning study");
    }
    for kind in ["reliability", "performance", "research"] {
        if lower.contains(&format!("{kind} {}", ["no", "te"].concat())) {
            return Some("a planning study");
        }
    }
    let issue = ["iss", "ue"].concat();
    for (i, _) in lower.match_indices(&issue) {
        let rest = &lower[i + issue.len()..];
        let rest = rest.strip_prefix('s').unwrap_or(rest).trim_start_matches(' ');
        let rest = rest.strip_prefix('#').unwrap_or(rest);
        if rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Some("an issue number");
        }
    }
    None
}

/// The repository explains itself: no file points to a document that is not
/// in it. Reasoning a maintainer needs belongs in docs/ (design.md,
/// glossary.md), in the project's own words.
fn self_contained(root: &Path, problems: &mut Vec<String>) {
    for path in repository_text_files(root) {
        let Ok(text) = fs::read_to_string(&path) else { continue };
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = outside_reference(line) {
                problems.push(format!(
                    "{}:{}: refers to {what}, which is not in the repository; say it here or in docs/ \
                     (design.md, glossary.md) in the project's own words",
                    rel(root, &path),
                    n + 1
                ));
            }
        }
    }
}

/// Dependency names listed under `section` of a Cargo manifest (a small
/// line-based reader: enough for our own hand-written manifests).
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        if inside && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The repository passes tidy, and each check can fail.

    use super::*;

    #[test]
    fn repository_is_tidy() {
        if let Err(problems) = run(&root()) {
            panic!("tidy found problems:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn checks_catch_what_they_claim() {
        let dir = std::env::temp_dir().join(format!("baton-tidy-{}", std::process::id()));
        let core = dir.join("crates/baton-core/src");
        fs::create_dir_all(&core).unwrap();
        fs::write(dir.join("crates/baton-core/Cargo.toml"), "[dependencies]\ntokio.workspace = true\n")
            .unwrap();
        fs::write(core.join("lib.rs"), "fn f() { std::time::SystemTime::now(); }\n").unwrap();
        let mig = dir.join("crates/baton-sqlite/migrations");
        fs::create_dir_all(&mig).unwrap();
        fs::write(mig.join("0002_x.sql"), "").unwrap();
        let outside = ["see ", "notes", "/performance.md and ", "iss", "ue 12"].concat();
        fs::write(dir.join("crates/baton-core/notes.md"), format!("{outside}\n")).unwrap();
        let mut problems = run(&dir).unwrap_err().join("\n");
        fs::write(
            dir.join("ARCHITECTURE.md"),
            "See `gone.rs` and `crates/gone/`.\nArchitecture Invariant: x\n",
        )
        .unwrap();
        problems.push('\n');
        problems.push_str(&run(&dir).unwrap_err().join("\n"));
        fs::remove_dir_all(&dir).unwrap();
        let expected = [
            "`//!`",
            "`tokio` is not allowed",
            "`SystemTime`",
            "without gaps",
            "ARCHITECTURE.md is missing",
            "run `cargo xtask openapi`",
            "notes.md:1: refers to a planning study",
            "names `gone.rs`",
            "names `crates/gone/`",
        ];
        for expected in expected {
            assert!(problems.contains(expected), "expected {expected:?} in:\n{problems}");
        }
    }

    #[test]
    fn outside_references_are_recognised() {
        let spec = ["SP", "EC"].concat();
        let found = [
            format!("see {spec} section 3"),
            format!("({spec}.md)"),
            ["the GUI", "DE says"].concat(),
            ["(notes", "/reliability.md T1)"].concat(),
            ["the reliability no", "te T13"].concat(),
            ["fixed in iss", "ue 17"].concat(),
            ["Iss", "ue #6"].concat(),
        ];
        for line in &found {
            assert!(outside_reference(line).is_some(), "{line:?} should be refused");
        }
        let fine = [
            "stage::SPECIALIST",
            "an issue with the lease",
            "issues are tracked elsewhere",
            "GUIDED tours",
            "see docs/glossary.md for T13",
        ];
        for line in fine {
            assert!(outside_reference(line).is_none(), "{line:?} should pass");
        }
    }
}
