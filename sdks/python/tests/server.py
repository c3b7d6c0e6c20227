"""A real Baton server for the tests: the `baton` binary as a subprocess on
127.0.0.1 with a free port and a temporary data directory.

`baton dev` runs with auth off; `baton serve` with auth on, and on its empty
database prints the admin token once, which `start` reads from stdout. The
binary comes from `BATON_BIN` (set by `cargo xtask ci`); without it the
tests build it with `cargo build -p baton` and use the debug binary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[3]

#: Seconds a server may take to start answering.
START_TIMEOUT = 30.0


def baton_binary() -> str:
    found = os.environ.get("BATON_BIN")
    if found:
        if not Path(found).is_file():
            raise RuntimeError(f"BATON_BIN={found} is not a file")
        return found
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(["cargo", "build", "-q", "-p", "baton"], cwd=REPO, check=True)
    return str(target / "debug" / "baton")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One `baton dev` or `baton serve`, restartable on the same port and data."""

    def __init__(self, binary: str, mode: str, data_dir: Path, config: str | None = None) -> None:
        assert mode in ("dev", "serve")
        self.binary = binary
        self.mode = mode
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = data_dir / "baton.toml"
            self.config_path.write_text(config)
        self.admin_token: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.log = open(data_dir / f"baton-{mode}.log", "a")

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        args = [self.binary, self.mode, "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_") and k != "DATABASE_URL"}
        env["RUST_LOG"] = env.get("RUST_LOG", "warn")
        self.lines = []
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True, env=env
        )
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.kill()
            raise RuntimeError(f"baton {self.mode} did not start: {self.lines}")
        for i, line in enumerate(self.lines):
            if line.startswith("Created the admin principal") and i + 1 < len(self.lines):
                self.admin_token = self.lines[i + 1].strip()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{self.address}/readyz", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"baton {self.mode} never became ready")

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.log.write(line)
            self.log.flush()
            if line.startswith("Press Ctrl-C"):
                ready.set()
        ready.set()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush beyond what was fsync'd."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
