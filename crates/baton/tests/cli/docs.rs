//! The docs are true. Goal: every shell command in docs/ runs as written
//! against a real `baton dev`; every relative link and anchor in docs/ and the
//! README resolves; the CLI reference is what the binary prints; the error
//! table names every code; the deployment files parse and use flags this
//! binary accepts and the health paths it serves.
//!
//! Method: each page's fenced blocks are read in order. ```` ```sh ```` blocks
//! run in one bash session per page (`set -euo pipefail`), in a fresh
//! directory (with the repository's top-level entries linked into it), with this build's `baton` first on PATH and `BATON_ADDRESS`
//! pointing at the page's server; ```` ```sh server ```` is the command that
//! starts that server (run in the background, on a free port: `7707` in
//! the page's blocks is rewritten to it); ```` ```sh not-run (why) ```` blocks
//! need something CI lacks (Docker, systemd, a server of your own) and are
//! counted, never run. ```` ```python run ```` blocks run in the same session
//! with the interpreter `BATON_PYTHON` names (the one with the SDK installed,
//! as for the SDK's own tests; `python3` when unset); other ```` ```python ````
//! blocks are fragments and are not run. The deployment files are parsed with PyYAML (the
//! system's `python3-yaml`) and their `baton` commands run with `--help`
//! appended, so the flags are parsed and nothing starts. The CLI reference is
//! regenerated from `--help` output; `BATON_BLESS=1` rewrites it.

use super::BATON;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one page's commands may run.
const PAGE_PATIENCE: Duration = Duration::from_secs(120);
/// The CLI reference, relative to the workspace root.
const CLI_REFERENCE: &str = "docs/reference/cli.md";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[derive(Debug)]
struct Block {
    info: String,
    body: String,
    line: usize,
}

/// Fenced code blocks (``` at any indentation), with their info strings.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, usize, Vec<String>)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((indent, info.trim().to_owned(), n + 1, Vec::new()));
                }
            }
            Some((fence_indent, info, start, body)) => {
                if trimmed.starts_with("```") {
                    out.push(Block { info: info.clone(), body: body.join("\n"), line: *start });
                    open = None;
                } else {
                    let cut = line.len().min(*fence_indent);
                    body.push(line.get(cut..).unwrap_or(line).to_owned());
                }
            }
        }
    }
    out
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs one page's `sh` blocks; returns how many ran.
fn run_page(page: &Path, blocks: &[&Block], server: Option<&Block>) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // The repository's files, by symlink, so paths like examples/... resolve
    // as they do for a reader in a checkout, while data lands in the temp dir.
    for entry in std::fs::read_dir(root()).unwrap().flatten() {
        let name = entry.file_name();
        if !matches!(name.to_str(), Some("target" | ".git" | ".baton")) {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
        }
    }
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let bin = Path::new(BATON).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let shell = |script: &str| {
        let mut c = Command::new("bash");
        c.args(["-c", script]).current_dir(dir.path()).env("PATH", &path);
        for var in
            ["BATON_AGENT", "BATON_TOKEN", "BATON_DATA_DIR", "DATABASE_URL", "BATON_CONFIG", "RUST_LOG"]
        {
            c.env_remove(var);
        }
        c.env("BATON_LISTEN", &address).env("BATON_ADDRESS", format!("http://{address}"));
        c.env("BATON_DOCS_PYTHON", std::env::var("BATON_PYTHON").unwrap_or_else(|_| "python3".into()));
        c
    };
    let mut server_child = server.map(|block| {
        let command = block.body.trim();
        assert!(
            command.starts_with("baton ") && !command.contains('\n'),
            "{}:{}: a `sh server` block is one baton command",
            page.display(),
            block.line
        );
        let mut child =
            shell(&format!("exec {command}")).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("the server printed its URLs").unwrap();
            if line.contains("API:") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        child
    });
    let mut script = String::from("set -euo pipefail\n");
    for block in blocks {
        let body = block.body.replace("localhost:7707", &address).replace("127.0.0.1:7707", &address);
        script.push_str(&format!("echo '### {}:{}' >&2\n", page.display(), block.line));
        if block.info.starts_with("python") {
            script
                .push_str(&format!("\"$BATON_DOCS_PYTHON\" - <<'BATON_DOCS_EOF'\n{body}\nBATON_DOCS_EOF\n"));
        } else {
            script.push_str(&format!("{body}\n"));
        }
    }
    let mut child = shell(&script).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + PAGE_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    if let Some(server) = &mut server_child {
        let _ = server.kill();
        let _ = server.wait();
    }
    let ok = status.is_some_and(|s| s.success());
    assert!(
        ok,
        "{}: its commands failed ({status:?})\nstdout:\n{}\nstderr:\n{}",
        page.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    blocks.len()
}

#[test]
fn every_shell_block_in_the_docs_runs() {
    let root = root();
    let mut pages = Vec::new();
    markdown_files(&root.join("docs"), &mut pages);
    let (mut ran, mut skipped) = (0, BTreeMap::new());
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let all = blocks(&text);
        let mut runnable = Vec::new();
        let mut server = None;
        for block in &all {
            if block.info == "python run" {
                runnable.push(block);
                continue;
            }
            let mut words = block.info.splitn(2, ' ');
            if words.next() != Some("sh") {
                continue;
            }
            match words.next().map(str::trim) {
                None | Some("") => runnable.push(block),
                Some("server") => {
                    assert!(server.is_none(), "{}: one `sh server` block per page", page.display());
                    server = Some(block);
                }
                Some(rest) if rest.starts_with("not-run (") && rest.ends_with(')') => {
                    *skipped.entry(rest.to_owned()).or_insert(0) += 1;
                }
                Some(other) => panic!(
                    "{}:{}: unknown block marker `sh {other}`: use `sh`, `sh server` or `sh not-run (why)`",
                    page.display(),
                    block.line
                ),
            }
        }
        if !runnable.is_empty() {
            ran += run_page(page, &runnable, server);
        }
    }
    let not_run: usize = skipped.values().sum();
    eprintln!("docs: {ran} sh blocks ran, {not_run} not run here:");
    for (why, n) in &skipped {
        eprintln!("  {n} x {why}");
    }
    assert!(ran >= 15, "the docs' commands ran ({ran})");
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Link targets outside fenced blocks and inline code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn links_and_anchors_resolve() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut files);
    let mut external = BTreeSet::new();
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                external.insert(target);
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let here = format!("{}:{line}: {target}", file.strip_prefix(&root).unwrap().display());
            if !resolved.exists() {
                broken.push(format!("{here} (no such file)"));
                continue;
            }
            if !anchor.is_empty() {
                let body = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&body).contains(anchor) {
                    broken.push(format!("{here} (no heading with this anchor)"));
                }
            }
        }
    }
    eprintln!("external links (listed, not fetched): {}", external.len());
    for link in &external {
        eprintln!("  {link}");
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `baton ... --help` for a command path.
fn help(path: &[&str]) -> String {
    // A clean environment: clap prints the values of the env vars a flag reads.
    let output =
        Command::new(BATON).args(path).arg("--help").env_clear().env("COLUMNS", "100").output().unwrap();
    assert!(output.status.success(), "baton {path:?} --help");
    String::from_utf8(output.stdout).unwrap()
}

/// Subcommands listed under `Commands:` in a help text.
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line == "Commands:" {
            inside = true;
            continue;
        }
        if inside {
            if line.is_empty() || !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or("");
            // A name starts its line at two spaces; wrapped descriptions are deeper.
            if line.starts_with("  ") && !line.starts_with("   ") && name != "help" {
                out.push(name.to_owned());
            }
        }
    }
    out
}

fn reference(path: &mut Vec<String>, out: &mut String) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let text = help(&args);
    let title = if path.is_empty() { "baton".to_owned() } else { format!("baton {}", path.join(" ")) };
    out.push_str(&format!("## {title}\n\n```text\n{}\n```\n\n", text.trim_end()));
    for sub in subcommands(&text) {
        // `bench` hands its arguments to the harness: its help is the harness's.
        if sub == "bench" {
            continue;
        }
        path.push(sub);
        reference(path, out);
        path.pop();
    }
}

#[test]
fn cli_reference_is_what_the_binary_prints() {
    let mut generated = String::from(
        "# The command line\n\nGenerated from the command definitions (`baton ... --help`); the docs test \
         fails when it is stale, and `BATON_BLESS=1 cargo nextest run -p baton cli_reference` rewrites it. \
         `baton bench --help` prints the benchmark harness's own options.\n\n",
    );
    reference(&mut Vec::new(), &mut generated);
    let file = root().join(CLI_REFERENCE);
    if std::env::var_os("BATON_BLESS").is_some() {
        std::fs::write(&file, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "{CLI_REFERENCE} is stale: run `BATON_BLESS=1 cargo nextest run -p baton cli_reference` and commit it"
    );
}

#[test]
fn the_error_table_names_every_code() {
    let table = std::fs::read_to_string(root().join("docs/reference/errors.md")).unwrap();
    for code in baton_api::ErrorCode::ALL {
        assert!(
            table.contains(&format!("| `{}` |", code.as_str())),
            "docs/reference/errors.md lacks `{code}`"
        );
    }
}

/// YAML files as JSON, through PyYAML.
fn yaml(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let output = Command::new("python3").args(["-c", script]).arg(path).output().expect("python3 runs");
    assert!(
        output.status.success(),
        "{} does not parse as YAML (needs python3-yaml): {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// Runs `baton ARGS --help`: the flags parse (values included) and nothing starts.
fn flags_parse(origin: &str, args: &[String]) {
    let output = Command::new(BATON).args(args).arg("--help").output().unwrap();
    assert!(
        output.status.success(),
        "{origin}: `baton {}` is not accepted by this build: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn deployment_files_parse_and_match_this_build() {
    let deploy = root().join("deploy");
    let mut invocations = 0;

    let unit = std::fs::read_to_string(deploy.join("baton.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert!(words.next().unwrap().ends_with("/baton"));
    flags_parse("baton.service", &words.map(str::to_owned).collect::<Vec<_>>());
    invocations += 1;

    let containerfile = std::fs::read_to_string(deploy.join("Containerfile")).unwrap();
    let cmd = containerfile.lines().find_map(|l| l.strip_prefix("CMD ")).expect("CMD");
    flags_parse("Containerfile", &strings(&serde_json::from_str(cmd).unwrap()));
    invocations += 1;

    let compose = &yaml(&deploy.join("compose.yaml"))[0];
    let services = compose["services"].as_object().unwrap();
    assert!(services.contains_key("db"), "compose has PostgreSQL");
    for (name, service) in services.iter().filter(|(name, _)| name.starts_with("baton")) {
        flags_parse(&format!("compose.yaml {name}"), &strings(&service["command"]));
        invocations += 1;
    }
    assert!(invocations >= 4, "compose runs two replicas");

    let mut probes = BTreeMap::new();
    for doc in yaml(&deploy.join("kubernetes.yaml")) {
        if doc["kind"] != "Deployment" {
            continue;
        }
        for container in doc["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            flags_parse("kubernetes.yaml", &strings(&container["args"]));
            invocations += 1;
            for probe in ["livenessProbe", "readinessProbe"] {
                probes.insert(probe, container[probe]["httpGet"]["path"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    assert_eq!(probes["livenessProbe"], "/healthz");
    assert_eq!(probes["readinessProbe"], "/readyz");
    eprintln!("deploy: {invocations} baton invocations checked");
}
