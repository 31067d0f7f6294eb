"""``relay serve`` in a process of its own, for the tests that watch the relay from outside (memory, open
connections, its log, as an operator sees it), send it signals, kill it outright (SIGKILL: no close frames, no
state kept) or start it again on the same port.

The in-process relay of ``tests/conftest.py`` (uvicorn in a thread) serves every other test: it is quicker to
start and lets a test look inside the ``Relay``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.conftest import OnLoopback, free_port

ROOT = Path(__file__).resolve().parents[1]
START_WAIT = 20.0
STOP_WAIT = 20.0


def relay_command(*args: str) -> list[str]:
    """The ``relay`` command, run with this interpreter so the tests use the checked-out code."""
    return [sys.executable, "-m", "relay.command", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``RELAY_*`` setting, with the checked-out code first on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class RelayProcess(OnLoopback):
    """``relay serve --host 127.0.0.1 --port <port> <flags>``; its output goes to ``log_path`` (or nowhere).

    ``start()`` may be called again after ``kill()``: the same port, a new process, nothing of the old one's rooms.
    """

    port: int
    log_path: Path | None = None
    flags: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the relay was not started"
        return self.process.pid

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def established(self) -> int:
        """TCP connections the relay holds open on its port (not counting the listening socket)."""
        return sum(
            1 for conn in self.ps.net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == self.port and conn.status != psutil.CONN_LISTEN
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path is not None else ""

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.http_url + path, timeout=5.0)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of ``/metrics``, e.g. ``metric("relay_transfers_total", 'outcome="completed"')``."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {wanted}")

    def start(self) -> RelayProcess:
        """Start the process and return once it answers ``/healthz`` (at most ``START_WAIT`` seconds)."""
        command = relay_command("serve", "--host", "127.0.0.1", "--port", str(self.port), *self.flags)
        if self.log_path is None:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            env=self.env or child_env(), cwd=ROOT)
        else:
            with self.log_path.open("ab") as log_file:
                self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                                env=self.env or child_env(), cwd=ROOT)
        deadline = time.monotonic() + START_WAIT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"relay serve exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                if self.get("/healthz").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(STOP_WAIT)
                raise RuntimeError(f"relay serve did not answer /healthz on port {self.port} in {START_WAIT} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no ``going_away``, no close frames; the kernel resets every socket."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_WAIT)

    def stop(self) -> int | None:
        """SIGTERM (the relay's graceful shutdown), then SIGKILL if it is still there after ``STOP_WAIT``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_relay_process(log_dir: Path | None, *flags: str, env: dict[str, str] | None = None,
                        port: int | None = None) -> RelayProcess:
    """A started ``relay serve`` on ``port`` (a free one if not given), logging to ``log_dir`` if given."""
    port = port or free_port()
    log_path = log_dir / f"relay-{port}.log" if log_dir is not None else None
    return RelayProcess(port, log_path, flags, env).start()
