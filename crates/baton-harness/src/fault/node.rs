//! The server under test: `baton dev` (or what `Launch::args` says) as a child process on a fixed loopback
//! port and data directory, so restarts come back where clients expect them.
//! A `Launch` says how to start it: the binary, an optional wrapper in front
//! (`strace ...`) and extra environment (`LD_PRELOAD` for libfaketime).
//! Every start gets its own stderr log beside the data directory.

use anyhow::{Context as _, Result, bail};
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start `baton dev`.
#[derive(Debug, Clone)]
pub struct Launch {
    pub baton: PathBuf,
    /// Program and arguments put in front of `baton` (empty: none).
    pub wrapper: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Arguments after `baton`; empty means `dev --listen 127.0.0.1:PORT
    /// --data-dir DATA` (a scenario on `baton serve` sets its own).
    pub args: Vec<String>,
    /// The data directory (`--data-dir`): `baton.db` lives in it.
    pub data_dir: PathBuf,
    /// Where stderr logs go, one per start.
    pub log_dir: PathBuf,
    pub port: u16,
}

impl Launch {
    /// A launch of `baton` on a free port, with data and logs under `dir`.
    pub fn new(baton: &Path, dir: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Self {
            baton: baton.to_owned(),
            wrapper: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            data_dir: dir.join("data"),
            log_dir: dir.to_owned(),
            port,
        })
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A running `baton dev`; SIGKILLed on drop if still running.
pub struct Node {
    child: Child,
    reaped: bool,
    /// The admin token `baton serve` printed on an empty database, if it did.
    pub admin_token: Option<String>,
    pub log: PathBuf,
    pub started: Instant,
}

impl Node {
    /// Starts the server and waits until its banner ends (it listens then),
    /// keeping the admin token the banner shows on an empty database.
    pub fn start(launch: &Launch, nth: usize) -> Result<Self> {
        std::fs::create_dir_all(&launch.data_dir)?;
        let log = launch.log_dir.join(format!("baton-{nth}.log"));
        let (program, args): (&str, Vec<String>) = match launch.wrapper.split_first() {
            Some((p, rest)) => {
                (p, rest.iter().cloned().chain([launch.baton.display().to_string()]).collect())
            }
            None => (launch.baton.to_str().context("baton path")?, Vec::new()),
        };
        let started = Instant::now();
        let baton_args = if launch.args.is_empty() {
            let listen = format!("127.0.0.1:{}", launch.port);
            ["dev", "--listen", &listen, "--data-dir"]
                .map(String::from)
                .into_iter()
                .chain([launch.data_dir.display().to_string()])
                .collect()
        } else {
            launch.args.clone()
        };
        let mut child = Command::new(program)
            .args(args)
            .args(baton_args)
            .env_remove("BATON_LISTEN")
            .env_remove("BATON_DATA_DIR")
            .env_remove("BATON_CONFIG")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            // Its own process group, so a kill reaches a wrapper's child too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {program}"))?;
        let stdout = child.stdout.take().context("baton dev stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut token = None;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let line = line.trim();
                if line.starts_with("baton_") {
                    token = Some(line.to_owned());
                }
                if line.starts_with("Press Ctrl-C") {
                    let _ = tx.send(token.take());
                }
            }
        });
        let mut node = Self { child, reaped: false, admin_token: None, log, started };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(token) => {
                node.admin_token = token;
                Ok(node)
            }
            Err(_) => {
                node.kill();
                let tail = std::fs::read_to_string(&node.log).unwrap_or_default();
                bail!("baton dev did not start within {START_TIMEOUT:?}; its log:\n{}", tail_of(&tail, 2_000))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the process group (no destructor, no flush, no
    /// checkpoint), then reap; the status the process ended with.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if !self.reaped {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
            let _ = self.child.kill();
        }
        self.reaped = true;
        self.child.wait().ok()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Whatever the wrapper left in the group goes too.
                let group = format!("-{}", self.child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
                self.reaped = true;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size (KiB) and open descriptors of the process, from /proc.
    pub fn rss_and_fds(&self) -> Option<(u64, u64)> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").trim();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some((rss.parse().ok()?, fds))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of `s`, on a char boundary.
pub fn tail_of(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
