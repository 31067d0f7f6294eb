"""Fixtures for the attack tests: relays run as real ``relay serve`` processes, and raw sockets to hit them with.

A relay in its own process can be measured from outside (``psutil``: memory, open connections), killed and
sent signals, and its log read back, as an operator would see it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
START_WAIT = 15.0


def relay_command(*args: str) -> list[str]:
    """The ``relay`` command, run with this interpreter so the tests use the checked-out code."""
    return [sys.executable, "-m", "relay.command", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class RelayProcess:
    """A ``relay serve`` subprocess on 127.0.0.1; its stderr goes to ``log_path``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def established(self) -> int:
        """TCP connections the relay holds open on its port (not counting the listening socket)."""
        return sum(
            1 for conn in self.ps.net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == self.port and conn.status != psutil.CONN_LISTEN
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.http_url + path, timeout=5.0)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of ``/metrics``, e.g. ``metric("relay_transfers_total", 'outcome="completed"')``."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {wanted}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_relay_process(log_dir: Path, *flags: str, env: dict[str, str] | None = None) -> RelayProcess:
    port = free_port()
    log_path = log_dir / f"relay-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            relay_command("serve", "--host", "127.0.0.1", "--port", str(port), *flags),
            stdout=log_file, stderr=subprocess.STDOUT, env=env or child_env(), cwd=ROOT,
        )
    running = RelayProcess(process, port, log_path)
    deadline = time.monotonic() + START_WAIT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"relay serve exited with {process.returncode}: {running.log()[-2000:]}")
        try:
            if running.get("/healthz").status_code == 200:
                return running
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("relay serve did not start")
        time.sleep(0.05)


@pytest.fixture
def relay_process(tmp_path) -> Iterator[Callable[..., RelayProcess]]:
    """Start ``relay serve`` subprocesses with the given flags; each is stopped (SIGTERM, then kill) after."""
    started: list[RelayProcess] = []

    def make(*flags: str, env: dict[str, str] | None = None) -> RelayProcess:
        running = start_relay_process(tmp_path, *flags, env=env)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def code() -> str:
    return "h-" + secrets.token_hex(6)
