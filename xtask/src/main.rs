//! `cargo xtask`: the project's own automation. `ci` runs everything CI runs
//! (format check, clippy with warnings denied, the whole test suite under
//! nextest, the dashboard's browser tests, tidy, the Python SDK); `tidy`
//! runs only the repository checks; `openapi` writes the API's OpenAPI
//! document to docs/api/openapi.json and regenerates the Python SDK's models
//! from it. The same tidy checks also run as a test, so `cargo nextest run` alone enforces them. `ci`
//! first checks that the PostgreSQL test database (`BATON_TEST_DATABASE_URL`,
//! by default the local `test` database) answers: its tests must run, so an unreachable database fails the run at
//! once with what to do, instead of 60 failing tests later. After the Rust
//! tests `ci` builds the `baton` binary and runs the Python SDK's checks and
//! tests (sdks/python) against it, with the interpreter `BATON_PYTHON`
//! names (`.ci/run` points it at a virtualenv with the SDK installed).

mod tidy;

use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// The variable naming the PostgreSQL database the tests use.
const DATABASE_VAR: &str = "BATON_TEST_DATABASE_URL";

/// The database the tests use when `BATON_TEST_DATABASE_URL` is unset: the
/// local PostgreSQL's `test` database, as on these machines and in CI.
const DATABASE_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The variable naming the Python interpreter that has the SDK and its test
/// extras installed; `python3` when unset.
const PYTHON_VAR: &str = "BATON_PYTHON";

/// How long the database check waits for a connection.
const DATABASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy::run(&tidy::root()).map_err(|problems| problems.join("\n")),
        Some("openapi") => openapi(),
        Some("python") => python(&tidy::root()),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|tidy|openapi|python>\n  \
                 ci       format check, clippy -D warnings, all tests (nextest), browser tests, tidy, python\n  \
                 tidy     repository checks only\n  \
                 python   the Python SDK's type check and tests (BATON_PYTHON, default python3)\n  \
                 openapi  write the API's OpenAPI document to {} (and the Python SDK's models)",
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
    // The Python SDK's models are generated from the document (stdlib-only
    // script) and CI fails when they are stale: regenerate them with it.
    let python = std::env::var(PYTHON_VAR).unwrap_or_else(|_| "python3".to_owned());
    let generator = tidy::root().join("sdks/python/tools/gen_models.py");
    let status = Command::new(&python)
        .arg(&generator)
        .status()
        .map_err(|e| format!("could not run {python} {} ({e}); run it by hand", generator.display()))?;
    if !status.success() {
        return Err(format!("{} failed", generator.display()));
    }
    eprintln!("xtask openapi: wrote sdks/python/src/baton/models.py");
    Ok(())
}

fn ci() -> Result<(), String> {
    let root = tidy::root();
    let url = std::env::var(DATABASE_VAR).unwrap_or_else(|_| DATABASE_DEFAULT.to_owned());
    eprintln!("xtask ci: PostgreSQL test database {DATABASE_VAR}={url}");
    database_reachable(&url)?;
    let steps: [(&str, &[&str]); 3] = [
        ("format check", &["fmt", "--all", "--", "--check"]),
        ("clippy", &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]),
        ("tests", &["nextest", "run", "--workspace", "--locked", "--no-fail-fast"]),
    ];
    for (name, args) in steps {
        eprintln!("xtask ci: {name}: cargo {}", args.join(" "));
        let status = Command::new(env!("CARGO"))
            .args(args)
            .env(DATABASE_VAR, &url)
            .current_dir(&root)
            .status()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("{name} failed"));
        }
    }
    browser_tests(&root)?;
    eprintln!("xtask ci: tidy");
    tidy::run(&root).map_err(|problems| problems.join("\n"))?;
    python(&root)?;
    eprintln!("xtask ci: all green");
    Ok(())
}

/// The dashboard's browser tests (crates/baton-server/ui-tests): builds the
/// workspace's binaries, `baton` and `baton-harness` among them (with the
/// tests' features and profile, so after the tests this builds nothing),
/// installs the test project's pinned npm packages when they are missing
/// (`npm ci`; .ci/run does it up front), and runs it with node
/// against those binaries in Debian's headless `chromium`. Screenshots of
/// every page go to target/ui-screenshots.
fn browser_tests(root: &std::path::Path) -> Result<(), String> {
    eprintln!("xtask ci: browser tests: cargo build --workspace --bins");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--bins", "--locked"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err("building the binaries for the browser tests failed".into());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from);
    let target = if target.is_absolute() { target } else { root.join(target) };
    let project = root.join(BROWSER_TESTS_DIR);
    if !project.join("node_modules").is_dir() {
        eprintln!("xtask ci: browser tests: npm ci in {BROWSER_TESTS_DIR}");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&project)
            .status()
            .map_err(|e| format!("could not run npm (install Node.js 18 or later): {e}"))?;
        if !status.success() {
            return Err(format!("npm ci failed in {BROWSER_TESTS_DIR}"));
        }
    }
    eprintln!("xtask ci: browser tests: node --test (headless chromium)");
    let status = Command::new("node")
        .args(["--test", "--test-concurrency=1", "dashboard.test.mjs"])
        .env("BATON_BIN", target.join("debug/baton"))
        .env("BATON_HARNESS_BIN", target.join("debug/baton-harness"))
        .env("BATON_SCREENSHOTS", root.join("target/ui-screenshots"))
        .current_dir(&project)
        .status()
        .map_err(|e| {
            format!("could not run node (install Node.js 18 or later, and Debian's chromium): {e}")
        })?;
    if !status.success() {
        return Err("the browser tests failed".into());
    }
    Ok(())
}

/// The dashboard's browser test project.
const BROWSER_TESTS_DIR: &str = "crates/baton-server/ui-tests";

/// The Python SDK: builds the `baton` binary the tests start, then strict
/// type checking (mypy) and the tests (pytest, which also check that the
/// generated models and the sync client are fresh) with `BATON_BIN` set.
fn python(root: &std::path::Path) -> Result<(), String> {
    let python = std::env::var(PYTHON_VAR).unwrap_or_else(|_| "python3".to_owned());
    let hint = format!(
        "set {PYTHON_VAR} to a Python 3.11+ with the SDK and its test extras installed \
         (`python3.11 -m venv VENV && VENV/bin/pip install -e './sdks/python[test]'`; .ci/run does this)"
    );
    let ready = Command::new(&python)
        .args(["-c", "import baton, mypy, pytest, langgraph, a2a, mcp"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run {python} ({e}); {hint}"))?;
    if !ready.success() {
        return Err(format!("{python} lacks the Python SDK or its test extras; {hint}"));
    }
    // The whole workspace's binaries, not `-p baton`: the same feature set
    // as the tests just built, so this is a no-op after them (`-p baton`
    // alone resolves features differently and rebuilds half the tree).
    eprintln!("xtask ci: python: cargo build --workspace --bins");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--bins", "--locked"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err("building baton for the Python tests failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let binary = target.join("debug").join("baton");
    let sdk = root.join("sdks").join("python");
    let steps: [(&str, &[&str]); 2] = [
        ("python type check", &["-m", "mypy"]),
        ("python tests", &["-m", "pytest", "-q", "-p", "no:cacheprovider"]),
    ];
    for (name, args) in steps {
        eprintln!("xtask ci: {name}: {python} {}", args.join(" "));
        let status = Command::new(&python)
            .args(args)
            .env("BATON_BIN", &binary)
            .env("MYPY_CACHE_DIR", target.join("mypy-cache"))
            .current_dir(&sdk)
            .status()
            .map_err(|e| format!("could not run {python} ({e}); {hint}"))?;
        if !status.success() {
            return Err(format!("{name} failed"));
        }
    }
    Ok(())
}

/// Checks that the test database's server accepts a connection (and a
/// query, when `psql` is installed).
fn database_reachable(url: &str) -> Result<(), String> {
    let hint = format!(
        "the baton-postgres tests need PostgreSQL: start it (e.g. `pg_ctlcluster --skip-systemctl-redirect \
         $(ls /etc/postgresql) main start`), or point {DATABASE_VAR} at another database (default \
         {DATABASE_DEFAULT}; .ci/run starts the local one)"
    );
    let (host, port) =
        host_port(url).ok_or_else(|| format!("{DATABASE_VAR}={url:?} names no host; {hint}"))?;
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port} from {DATABASE_VAR} ({e}); {hint}"))?
        .collect();
    if !addrs.iter().any(|a| TcpStream::connect_timeout(a, DATABASE_CONNECT_TIMEOUT).is_ok()) {
        return Err(format!("nothing answers at {host}:{port} ({DATABASE_VAR}); {hint}"));
    }
    let psql = Command::new("psql")
        .args([url, "-Atqc", "SELECT 1"])
        .stdin(Stdio::null())
        .env("PGCONNECT_TIMEOUT", DATABASE_CONNECT_TIMEOUT.as_secs().to_string())
        .output();
    match psql {
        // No psql here: the port answered, the tests will say the rest.
        Err(_) => Ok(()),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "PostgreSQL at {host}:{port} refused {DATABASE_VAR}: {}; {hint}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Host and port of a `postgres://[user[:password]@]host[:port][/db][?...]` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 5432),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Some((host.to_owned(), port))
}
