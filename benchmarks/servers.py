"""Starting and stopping the relays under test, each in its own process.

``RelayServer`` runs ``relay serve`` exactly as a person would; the baselines are the asyncio TCP relay in
``benchmarks.tcp_relay``, ``socat`` and ``piping-server`` (installed with npm into ``benchmarks/.cache``).
Every start waits, bounded in time, until the process listens on its port, found through psutil rather than
by probing (socat accepts exactly one connection per listening address, so a probe would use it up).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import time
from pathlib import Path

import psutil

from benchmarks.clientproc import child_environment

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
PIPING_BIN = CACHE_DIR / "node_modules" / "piping-server" / "dist" / "src" / "index.js"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
NPM_TIMEOUT = 180.0


class ServerUnavailable(Exception):
    """A server could not be started; the message says why, for the report."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_listening(pid: int, port: int) -> bool:
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                    return True
    except psutil.NoSuchProcess:
        return False
    return False


def wait_listening(proc: subprocess.Popen, port: int, timeout: float = START_TIMEOUT) -> None:
    """Return once ``proc`` listens on ``port``; raise ``ServerUnavailable`` if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"exited with code {proc.returncode} before listening on port {port}")
        if is_listening(proc.pid, port):
            return
        time.sleep(0.02)
    raise ServerUnavailable(f"not listening on port {port} after {timeout:.0f} s")


class Server:
    """A server process; a context manager that stops it (SIGTERM, then SIGKILL) on exit."""

    name = "server"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = free_port()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return child_environment()

    def start(self) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}.log", "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), start_new_session=True,
            )
        except OSError as exc:
            raise ServerUnavailable(f"cannot run {self.command()[0]}: {exc}") from exc
        finally:
            log.close()
        try:
            wait_listening(self.proc, self.port)
        except ServerUnavailable:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay_command() -> list[str]:
    """``relay``: the entry point this checkout's pyproject.toml declares, run with this Python.

    Not the installed console script: that one is generated from whichever checkout was installed last, and
    its entry point may not exist in the code under test (which comes first on ``PYTHONPATH``).
    """
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    module, _, function = pyproject["project"]["scripts"]["relay"].partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


# Every load client connects from 127.0.0.1, so the relay's per-address limits (meant for the public internet)
# are lifted; per-connection logs are off because they would be measured as relay cost with 5,000 rooms.
BENCH_SETTINGS = {
    "RELAY_LOG_LEVEL": "warning",
    "RELAY_MAX_CONNECTIONS_PER_IP": "1000000",
    "RELAY_MAX_JOINS_PER_MINUTE": "100000000",
    "RELAY_MAX_ROOMS": "100000",
    "RELAY_SHUTDOWN_GRACE": "2",
}


class RelayServer(Server):
    """The relay under test: ``relay serve --host 127.0.0.1 --port P`` with ``BENCH_SETTINGS``."""

    name = "relay"

    def command(self) -> list[str]:
        return [*relay_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return {**child_environment(), **BENCH_SETTINGS}


class TcpRelayServer(Server):
    """Baseline: ``benchmarks.tcp_relay`` with a given chunk size."""

    name = "tcp-relay"

    def __init__(self, log_dir: Path, chunk: int) -> None:
        super().__init__(log_dir)
        self.chunk = chunk

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.tcp_relay", "--port", str(self.port), "--chunk", str(self.chunk)]


class SocatServer(Server):
    """Baseline: socat joining one accepted connection on ``port`` to one on ``receiver_port``.

    socat opens its second address only after the first has a client, so the receiver must wait until
    ``receiver_port`` listens (``wait_receiver_port``).
    """

    name = "socat"

    def __init__(self, log_dir: Path, chunk: int) -> None:
        super().__init__(log_dir)
        self.chunk = chunk
        self.receiver_port = free_port()

    def command(self) -> list[str]:
        binary = shutil.which("socat")
        if binary is None:
            raise ServerUnavailable("socat is not installed (apt-get install socat)")
        return [
            binary, "-b", str(self.chunk),
            f"TCP4-LISTEN:{self.port},bind=127.0.0.1,reuseaddr",
            f"TCP4-LISTEN:{self.receiver_port},bind=127.0.0.1,reuseaddr",
        ]

    def start(self) -> Server:
        self.command()  # raises ServerUnavailable before spawning when socat is missing
        return super().start()

    def wait_receiver_port(self) -> None:
        assert self.proc is not None
        wait_listening(self.proc, self.receiver_port)


def ensure_piping_server(install: bool) -> Path:
    """Path of piping-server's entry script, installing it with npm into the cache if allowed."""
    if PIPING_BIN.exists():
        return PIPING_BIN
    if not install:
        raise ServerUnavailable("piping-server is not installed in benchmarks/.cache and installing was not allowed")
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ServerUnavailable("Node.js/npm not found")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE_DIR), "piping-server"],
            capture_output=True, text=True, timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerUnavailable(f"npm install piping-server timed out after {NPM_TIMEOUT:.0f} s") from exc
    if done.returncode != 0 or not PIPING_BIN.exists():
        raise ServerUnavailable(f"npm install piping-server failed: {done.stderr.strip()[-300:]}")
    return PIPING_BIN


class PipingServer(Server):
    """Baseline: piping-server on Node.js (HTTP PUT from the sender, GET from the receiver)."""

    name = "piping-server"

    def __init__(self, log_dir: Path, install: bool) -> None:
        super().__init__(log_dir)
        self.script = ensure_piping_server(install)

    def command(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise ServerUnavailable("node is not installed")
        return [node, str(self.script), "--host", "127.0.0.1", "--http-port", str(self.port)]

    def start(self) -> Server:
        self.command()
        return super().start()


def established_count(pid: int, port: int) -> int:
    """How many client connections the server process has accepted on ``port`` and still holds open."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return 0
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


def wait_established(pid: int, port: int, count: int, timeout: float) -> bool:
    """Wait (bounded) until the server holds ``count`` connections on ``port``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if established_count(pid, port) >= count:
            return True
        time.sleep(0.01)
    return False
