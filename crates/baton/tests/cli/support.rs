//! A `baton dev` process the end-to-end tests can SIGKILL and restart on the
//! same data directory and port: started in its own directory with a clean
//! environment, its logs appended to `server.log` there, ready once its port
//! accepts connections. Every wait is bounded.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
/// How long a start or a clean stop may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// Attempts to start when the port turns out to be taken by someone else.
const START_TRIES: usize = 3;

/// A `baton dev` on a fixed loopback port, restartable.
pub struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub address: String,
}

impl Server {
    /// Starts `baton dev` in `dir` (data in `dir/.baton/`) on a free port.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut server =
            Self { dir: dir.to_owned(), port, child: None, address: format!("http://127.0.0.1:{port}") };
        server.restart();
        server
    }

    /// The SQLite file `baton dev` keeps its data in.
    pub fn database(&self) -> PathBuf {
        self.dir.join(".baton/baton.db")
    }

    /// Starts the process again on the same port and directory; returns how
    /// long it took to accept connections.
    pub fn restart(&mut self) -> Duration {
        assert!(self.child.is_none(), "the server is already running");
        let started = Instant::now();
        for _ in 0..START_TRIES {
            let log = OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
            let mut command = Command::new(BATON);
            command
                .current_dir(&self.dir)
                .args(["dev", "--listen", &format!("127.0.0.1:{}", self.port)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            for var in ["BATON_ADDRESS", "BATON_AGENT", "BATON_LISTEN", "BATON_DATA_DIR", "DATABASE_URL"] {
                command.env_remove(var);
            }
            command.env("RUST_LOG", "warn");
            let mut child = command.spawn().expect("start baton dev");
            let deadline = Instant::now() + PATIENCE;
            let address = SocketAddr::from(([127, 0, 0, 1], self.port));
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!("baton dev exited at start ({status}); log:\n{}", self.log_tail());
                    break;
                }
                if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                    self.child = Some(child);
                    return started.elapsed();
                }
                assert!(Instant::now() < deadline, "baton dev did not listen within {PATIENCE:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("baton dev did not start in {START_TRIES} tries; log:\n{}", self.log_tail());
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL baton dev");
        child.wait().expect("reap baton dev");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "baton dev exits 0 after SIGTERM: {status}\n{}", self.log_tail());
                return;
            }
            assert!(Instant::now() < deadline, "baton dev did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// SplitMix64: the tests' seeded choices.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

/// The seed from `var`, or one from the clock; printed so a run can be repeated.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("seed: {seed} (set {var}={seed} to repeat the choices)");
    seed
}
