//! The docs are true. Goal: every command in docs/ runs as written against a
//! real server; every relative link and anchor in docs/ and the README
//! resolves; the CLI reference is what the binary prints; the error table
//! names every code; the deployment files parse and use flags this binary
//! accepts and the health paths it serves; every Rust block is compiled.
//!
//! Method: each page's fenced blocks are read in order and run, in order, in
//! one bash session per page (`set -euo pipefail`), in a fresh directory
//! (with the repository's top-level entries linked into it), with this
//! build's `baton` first on PATH. The markers (docs/README.md lists them for
//! writers):
//!
//! - ```` ```sh ````: run.
//! - ```` ```sh server ````: one command line that starts a server (`baton
//!   dev`, `baton serve`): started in the background at its place, waited for
//!   until it prints its URLs, stopped when the page ends. When it prints the
//!   first admin's token, the session exports it as `BATON_TOKEN`, as the
//!   page tells the reader to.
//! - ```` ```python ````: run with the interpreter `BATON_PYTHON` names (the
//!   one with the SDK installed, as for the SDK's own tests; `python3` when
//!   unset), which is also `python` and `python3` on the session's PATH.
//! - ```` ```LANG file=NAME ````: written to NAME at its place (a config file,
//!   a script a later block runs).
//! - ```` ```sh not-run (why) ```` and ```` ```python not-run (why) ````:
//!   counted, never run; `why` must start with one of [`NOT_RUN_REASONS`]
//!   (what CI cannot do here, or does elsewhere), so a page cannot quietly
//!   opt out.
//! - ```` ```rust ````: not run here; its text must be part of an example of
//!   baton-client ([`RUST_EXAMPLES`]), which CI compiles (nextest and clippy
//!   build examples), so the block compiles as shown.
//!
//! Ports and databases are the page's own: `7707`, `7708` and `9000` (with
//! host `localhost`, `127.0.0.1` or `0.0.0.0`) become free loopback ports
//! (`BATON_LISTEN` and `BATON_ADDRESS` name the first), and
//! `postgres://baton@db:5432/NAME` becomes a database `docs_<pid>_<n>_NAME`
//! on the server of `BATON_TEST_DATABASE_URL`; a name other than `baton` is
//! renamed wherever it appears as a word (`createdb ... baton_restored`). The
//! test creates the `..._baton` database (the reader's own) before the page
//! runs and drops all of the page's databases after it.
//!
//! Each page's time is printed; `BATON_DOCS_VERBOSE=1` also prints its
//! session's output and its servers' logs (as a failure does).
//!
//! The deployment files are parsed with PyYAML (the system's `python3-yaml`)
//! and their `baton` commands run with `--help` appended, so the flags are
//! parsed and nothing starts. The CLI reference is regenerated from `--help`
//! output; `BATON_BLESS=1` rewrites it.

use super::BATON;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest one page's commands may run.
const PAGE_PATIENCE: Duration = Duration::from_secs(120);
/// The CLI reference, relative to the workspace root.
const CLI_REFERENCE: &str = "docs/reference/cli.md";
/// How a `not-run` reason may start: what CI cannot do on its machine, or
/// does in a step of its own.
const NOT_RUN_REASONS: &[&str] =
    &["needs Docker", "needs a Kubernetes cluster", "needs systemd", "builds", "installs", "benchmarks"];
/// The ports pages use, each replaced by a free loopback port per page: the
/// server, a second replica, a webhook receiver.
const DOC_PORTS: [u16; 3] = [7707, 7708, 9000];
/// The hosts written before a doc port.
const DOC_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "0.0.0.0"];
/// The PostgreSQL server pages name (`postgres://baton@db:5432/NAME`).
const DOC_POSTGRES: &str = "postgres://baton@db:5432/";
/// The test PostgreSQL server's variable, and its default.
const DATABASE_VAR: &str = "BATON_TEST_DATABASE_URL";
const DATABASE_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Where the Rust blocks' text must appear, relative to the workspace root.
const RUST_EXAMPLES: &str = "crates/baton-client/examples";

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

/// What a fenced block is to this test (its info string: a language, then a marker).
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `sh`: run.
    Run,
    /// `python`: run with the SDK's interpreter.
    Python,
    /// `sh server`: started in the background, stopped when the page ends.
    Server,
    /// `LANG file=NAME`: written to NAME.
    File(String),
    /// `sh|python not-run (why)`: counted.
    NotRun(String),
    /// `rust`: part of an example that CI compiles.
    Rust,
    /// Output, data, configuration shown: nothing to run.
    Shown,
}

fn kind(info: &str) -> Result<Kind, String> {
    let (language, marker) = info.split_once(' ').map_or((info, ""), |(l, m)| (l, m.trim()));
    if let Some(name) = marker.strip_prefix("file=") {
        return Ok(Kind::File(name.to_owned()));
    }
    match (language, marker) {
        ("sh", "") => Ok(Kind::Run),
        ("sh", "server") => Ok(Kind::Server),
        ("python", "") => Ok(Kind::Python),
        ("rust", "") => Ok(Kind::Rust),
        ("sh" | "python", m) if m.starts_with("not-run (") && m.ends_with(')') => {
            let why = &m["not-run (".len()..m.len() - 1];
            if NOT_RUN_REASONS.iter().any(|r| why.starts_with(r)) {
                Ok(Kind::NotRun(m.to_owned()))
            } else {
                Err(format!(
                    "`{m}`: a reason starts with one of {NOT_RUN_REASONS:?}; anything else runs here"
                ))
            }
        }
        ("sh" | "python" | "rust", m) => Err(format!(
            "unknown marker `{language} {m}`: use `sh`, `sh server`, `python`, `LANG file=NAME`, \
             `sh not-run (why)` or `python not-run (why)`"
        )),
        _ => Ok(Kind::Shown),
    }
}

/// `from` replaced where it stands as a whole word (no letter, digit or `_` beside it).
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices(from) {
        let before = text[..i].chars().next_back();
        let after = text[i + from.len()..].chars().next();
        if !word(before) && !word(after) {
            out.push_str(&text[last..i]);
            out.push_str(to);
            last = i + from.len();
        }
    }
    out.push_str(&text[last..]);
    out
}

/// A page's ports and databases, and how its text names them.
struct Rewrite {
    ports: Vec<(u16, u16)>,
    databases: Vec<(String, String)>,
    server: String,
}

impl Rewrite {
    fn new(texts: &[&str], prefix: &str) -> Self {
        let ports = DOC_PORTS.iter().map(|&p| (p, free_port())).collect();
        let url = std::env::var(DATABASE_VAR).unwrap_or_else(|_| DATABASE_DEFAULT.to_owned());
        let server =
            url[..url.rfind('/').filter(|&i| i > "postgres://".len()).unwrap_or(url.len())].to_owned();
        let mut names = BTreeSet::new();
        for text in texts {
            for (i, _) in text.match_indices(DOC_POSTGRES) {
                let name: String = text[i + DOC_POSTGRES.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
        let databases = names
            .into_iter()
            .map(|n| {
                let real = if n == "postgres" { n.clone() } else { format!("{prefix}{n}") };
                (n, real)
            })
            .collect();
        Self { ports, databases, server }
    }

    fn apply(&self, text: &str) -> String {
        // Through placeholders, so a new port is never taken for an old one.
        let mut out = text.to_owned();
        for (i, (from, _)) in self.ports.iter().enumerate() {
            for host in DOC_HOSTS {
                out = out.replace(&format!("{host}:{from}"), &format!("\u{1}{i}\u{1}"));
            }
        }
        for (i, (_, to)) in self.ports.iter().enumerate() {
            out = out.replace(&format!("\u{1}{i}\u{1}"), &format!("127.0.0.1:{to}"));
        }
        for (name, real) in &self.databases {
            out = replace_word(&out, &format!("{DOC_POSTGRES}{name}"), &format!("{}/{real}", self.server));
        }
        for (name, real) in &self.databases {
            if name != "baton" && name != "postgres" {
                out = replace_word(&out, name, real);
            }
        }
        out
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0].1)
    }
}

/// The first column of the rows `sql` returns on the database `url`.
fn postgres(url: &str, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let rows = client.simple_query(sql).await?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect())
    })
}

/// A page's PostgreSQL databases: `..._baton` created for it, all dropped after it.
struct Databases {
    admin: String,
    prefix: String,
}

impl Databases {
    fn create(rewrite: &Rewrite, prefix: &str) -> Option<Self> {
        let (_, main) = rewrite.databases.iter().find(|(name, _)| name == "baton")?;
        let admin = format!("{}/postgres", rewrite.server);
        let this = Self { admin, prefix: prefix.to_owned() };
        this.drop_all();
        if let Err(e) = postgres(&this.admin, &format!("CREATE DATABASE {main}")) {
            panic!(
                "the docs' PostgreSQL pages need a server: {DATABASE_VAR} ({}) refused `CREATE DATABASE`: {e}",
                this.admin
            );
        }
        Some(this)
    }

    fn drop_all(&self) {
        let like = format!("SELECT datname FROM pg_database WHERE datname LIKE '{}%'", self.prefix);
        for name in postgres(&self.admin, &like).unwrap_or_default() {
            if let Err(e) = postgres(&self.admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")) {
                eprintln!("could not drop database {name}: {e}");
            }
        }
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        self.drop_all();
    }
}

/// The session's helpers: waiting for a server, and its first admin's token.
const PRELUDE: &str = r#"set -euo pipefail
baton_docs_server() { # LOG PID: wait until the server prints its URLs; export the first admin's token
  local log=$1 pid=$2 token
  for _ in $(seq 1200); do
    if grep -q 'API:' "$log"; then
      token=$(sed -n '/shown this once/{n;s/^ *//;p;}' "$log")
      if [ -n "$token" ]; then export BATON_TOKEN=$token; fi
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then echo "the server stopped:" >&2; cat "$log" >&2; return 1; fi
    sleep 0.05
  done
  echo "the server did not start in 60 s:" >&2; cat "$log" >&2; return 1
}
"#;

/// Kills every process of the group `pgid`: the page's session and the
/// servers and scripts it started (their data is the page's, thrown away).
fn kill_group(pgid: u32) {
    let _ =
        Command::new("bash").args(["-c", &format!("kill -KILL -- -{pgid}")]).stderr(Stdio::null()).status();
}

/// Runs one page's blocks in order; returns how many ran.
fn run_page(index: usize, page: &Path, blocks: &[(&Block, Kind)]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // The repository's files, by symlink, so paths like examples/... resolve
    // as they do for a reader in a checkout, while data lands in the temp dir.
    for entry in std::fs::read_dir(root()).unwrap().flatten() {
        let name = entry.file_name();
        if !matches!(name.to_str(), Some("target" | ".git" | ".baton")) {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
        }
    }
    let logs = tempfile::tempdir().unwrap();
    // `python` and `python3` are the SDK's interpreter, as for a reader who installed it.
    let shims = logs.path().join("bin");
    std::fs::create_dir(&shims).unwrap();
    if let Ok(python) = std::env::var("BATON_PYTHON") {
        // A script, not a symlink: a virtualenv's interpreter finds its
        // packages from the path it is started by.
        for name in ["python", "python3"] {
            let shim = shims.join(name);
            std::fs::write(&shim, format!("#!/bin/sh\nexec '{python}' \"$@\"\n")).unwrap();
            std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
    }
    let prefix = format!("docs_{}_{index}_", std::process::id());
    let texts: Vec<&str> = blocks.iter().map(|(b, _)| b.body.as_str()).collect();
    let rewrite = Rewrite::new(&texts, &prefix);
    let _databases = Databases::create(&rewrite, &prefix);

    let mut script = String::from(PRELUDE);
    for (block, kind) in blocks {
        let body = rewrite.apply(&block.body);
        script.push_str(&format!("echo \"### {}:{} $(date +%T.%N)\" >&2\n", page.display(), block.line));
        match kind {
            Kind::Run => script.push_str(&format!("{body}\n")),
            Kind::Python => {
                script.push_str(&format!("python3 - <<'BATON_DOCS_EOF'\n{body}\nBATON_DOCS_EOF\n"))
            }
            Kind::File(name) => {
                script.push_str(&format!("cat > '{name}' <<'BATON_DOCS_EOF'\n{body}\nBATON_DOCS_EOF\n"))
            }
            Kind::Server => {
                let command = body.trim();
                assert!(
                    command.contains("baton ") && !command.contains('\n'),
                    "{}:{}: a `sh server` block is one command line that starts baton",
                    page.display(),
                    block.line
                );
                let log = logs.path().join(format!("server-{}.log", block.line));
                let log = log.display();
                script.push_str(&format!("( {command}\n) >'{log}' 2>&1 &\nbaton_docs_server '{log}' $!\n"));
            }
            Kind::NotRun(_) | Kind::Rust | Kind::Shown => unreachable!("only what runs is passed"),
        }
    }

    script.push_str("echo \"### end $(date +%T.%N)\" >&2\n");
    let address = rewrite.address();
    let bin = Path::new(BATON).parent().unwrap();
    let path = format!("{}:{}:{}", bin.display(), shims.display(), std::env::var("PATH").unwrap_or_default());
    let (stdout, stderr) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut command = Command::new("bash");
    command.args(["-c", &script]).current_dir(dir.path()).env("PATH", &path).process_group(0);
    for var in [
        "BATON_AGENT",
        "BATON_TOKEN",
        "BATON_DATA_DIR",
        "BATON_DATABASE_URL",
        "BATON_DATABASE_SCHEMA",
        "DATABASE_URL",
        "BATON_CONFIG",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.env("BATON_LISTEN", &address).env("BATON_ADDRESS", format!("http://{address}"));
    // Output to files: the servers a page starts keep them open until they stop.
    command.stdin(Stdio::null());
    command.stdout(std::fs::File::create(&stdout).unwrap()).stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + PAGE_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    kill_group(child.id());
    let _ = child.wait();
    let ok = status.is_some_and(|s| s.success());
    if !ok || std::env::var_os("BATON_DOCS_VERBOSE").is_some() {
        let mut report = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(logs.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let mut text = String::new();
            let _ = std::fs::File::open(&file).and_then(|mut f| f.read_to_string(&mut text));
            report.push_str(&format!("--- {}:\n{text}\n", file.file_name().unwrap().to_string_lossy()));
        }
        assert!(ok, "{}: its commands failed ({status:?})\n{report}", page.display());
        eprintln!("{report}");
    }
    blocks.len()
}

#[test]
fn every_command_in_the_docs_runs() {
    let started = Instant::now();
    let root = root();
    let mut pages = Vec::new();
    markdown_files(&root.join("docs"), &mut pages);
    let (mut ran, mut ran_pages, mut skipped) = (0, 0, BTreeMap::new());
    let mut problems = Vec::new();
    for (index, page) in pages.iter().enumerate() {
        let text = std::fs::read_to_string(page).unwrap();
        let all = blocks(&text);
        let mut runnable = Vec::new();
        for block in &all {
            match kind(&block.info) {
                Ok(Kind::NotRun(why)) => *skipped.entry(why).or_insert(0) += 1,
                Ok(Kind::Rust | Kind::Shown) => {}
                Ok(kind) => runnable.push((block, kind)),
                Err(e) => problems.push(format!("{}:{}: {e}", page.display(), block.line)),
            }
        }
        if !runnable.is_empty() && problems.is_empty() {
            let began = Instant::now();
            ran += run_page(index, page, &runnable);
            ran_pages += 1;
            let name = page.strip_prefix(&root).unwrap().display();
            eprintln!("docs: {name}: {} blocks in {:.1} s", runnable.len(), began.elapsed().as_secs_f64());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let not_run: usize = skipped.values().sum();
    eprintln!(
        "docs: {ran} blocks ran on {ran_pages} pages in {:.1} s; {not_run} not run here:",
        started.elapsed().as_secs_f64()
    );
    for (why, n) in &skipped {
        eprintln!("  {n} x {why}");
    }
    assert!(ran >= 40, "the docs' commands ran ({ran})");
}

#[test]
fn not_run_reasons_are_the_allowed_ones() {
    assert!(matches!(kind("sh not-run (needs Docker)"), Ok(Kind::NotRun(_))));
    assert!(matches!(kind("python not-run (installs the SDK)"), Ok(Kind::NotRun(_))));
    assert!(kind("sh not-run (needs a server of your own)").is_err());
    assert!(kind("sh no-run (needs Docker)").is_err());
    assert_eq!(kind("toml file=baton.toml"), Ok(Kind::File("baton.toml".into())));
    assert_eq!(kind("text"), Ok(Kind::Shown));
}

#[test]
fn page_rewrites_keep_words_apart() {
    let text = "pg_dump postgres://baton@db:5432/baton; createdb --maintenance-db=postgres://baton@db:5432/postgres \
                baton_restored\npg_restore --dbname=postgres://baton@db:5432/baton_restored; baton serve \
                --listen 0.0.0.0:7708 --address http://localhost:7707";
    let rewrite = Rewrite::new(&[text], "docs_1_2_");
    let out = rewrite.apply(text);
    let server = &rewrite.server;
    let (a, b) = (rewrite.ports[0].1, rewrite.ports[1].1);
    assert_eq!(
        out,
        format!(
            "pg_dump {server}/docs_1_2_baton; createdb --maintenance-db={server}/postgres docs_1_2_baton_restored\n\
             pg_restore --dbname={server}/docs_1_2_baton_restored; baton serve --listen 127.0.0.1:{b} \
             --address http://127.0.0.1:{a}"
        )
    );
}

/// `text` with every run of white space one space (rustfmt aligns and indents).
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every ```` ```rust ```` block is text of an example CI compiles.
#[test]
fn every_rust_block_is_a_compiled_example() {
    let root = root();
    let mut examples = Vec::new();
    for entry in std::fs::read_dir(root.join(RUST_EXAMPLES)).unwrap().flatten() {
        examples.push((entry.path(), std::fs::read_to_string(entry.path()).unwrap()));
    }
    let mut pages = Vec::new();
    markdown_files(&root.join("docs"), &mut pages);
    let (mut found, mut missing) = (0, Vec::new());
    for page in &pages {
        for block in blocks(&std::fs::read_to_string(page).unwrap()) {
            if kind(&block.info) != Ok(Kind::Rust) {
                continue;
            }
            let body = words(&block.body);
            match examples.iter().find(|(_, text)| words(text).contains(&body)) {
                Some(_) => found += 1,
                None => {
                    missing.push(format!("{}:{}", page.strip_prefix(&root).unwrap().display(), block.line))
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these rust blocks are in no file of {RUST_EXAMPLES}: put each into one (as it is, \
         white space aside, in a complete program), so CI compiles it:\n{}",
        missing.join("\n")
    );
    assert!(found >= 3, "the rust blocks were found ({found})");
    eprintln!("docs: {found} rust blocks are in compiled examples");
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
