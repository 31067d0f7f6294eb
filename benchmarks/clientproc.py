"""Running load-client processes: start, wait for their ``ready`` line, collect their result and CPU use.

Each client prints JSON lines (see ``benchmarks.loadclient``). A thread per process reads them into a queue,
so waiting is always bounded by a timeout; the child's CPU time comes from ``os.wait4`` (the kernel's rusage).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

POLL_INTERVAL = 0.01


class ClientFailed(Exception):
    """A load client did not report as expected."""


@dataclass
class ClientOutcome:
    """A finished client: its JSON result, its exit code and the CPU seconds it used."""

    result: dict
    returncode: int
    cpu_s: float
    rooms: list[dict] = field(default_factory=list)


class ClientProcess:
    """One client process: ``python -m benchmarks.loadclient ...``, or any ``command`` (plain lines become
    ``{"event": "line", "text": ...}``)."""

    def __init__(self, args: list[str], *, module: str = "benchmarks.loadclient", command: list[str] | None = None,
                 stdin_pipe: bool = False) -> None:
        self.command = command if command is not None else [sys.executable, "-m", module, *args]
        self.lines: queue.Queue[dict | None] = queue.Queue()
        self.stderr_tail = b""
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command, env=child_environment(),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                line = None
            if not isinstance(line, dict):
                # A plain line (e.g. the code line of `relay send`): report it as a "line" event.
                line = {"event": "line", "text": raw.decode(errors="replace").rstrip("\n")}
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + raw)[-2000:]

    def wait_event(self, name: str, timeout: float) -> dict:
        """Block until the client prints ``{"event": name}``; raise ``ClientFailed`` on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientFailed(f"no {name!r} from {self.command[-1]} after {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise ClientFailed(f"client exited before {name!r}: {self.stderr_tail.decode(errors='replace')[-500:]}")
            if line.get("event") == name:
                return line

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def finish(self, timeout: float) -> ClientOutcome:
        """Wait for the result line and the exit (killing the client after ``timeout``); return the outcome."""
        try:
            result = self.wait_event("result", timeout)
        except ClientFailed:
            self.kill()
            raise
        returncode, cpu = self.wait_exit(timeout=10.0)
        return ClientOutcome(result, returncode, cpu, result.get("rooms", []))

    def wait_exit(self, timeout: float) -> tuple[int, float]:
        """Reap the process (killing it after ``timeout``); return its exit code and CPU seconds (rusage)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode, usage.ru_utime + usage.ru_stime
            time.sleep(POLL_INTERVAL)
        self.kill()
        return -signal.SIGKILL, 0.0

    def kill(self) -> None:
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def child_environment() -> dict[str, str]:
    """The environment for client processes: ours, with this repository importable as ``benchmarks``.

    Bytecode is cached (under ``benchmarks/.cache/pycache``, not beside the sources) even where the caller's
    environment says ``PYTHONDONTWRITEBYTECODE``: an installed ``relay`` has its ``.pyc`` files, and compiling
    every module again was about a quarter of each client's start-up (callgrind: 1,123 against 862 million
    instructions for ``relay send --help``).
    """
    root = Path(__file__).resolve().parent.parent
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": str(root) + (os.pathsep + path if path else "")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(root / "benchmarks" / ".cache" / "pycache"))
    return env


def loadclient_args(role: str, port: int, **options: object) -> list[str]:
    """Command-line arguments for ``benchmarks.loadclient`` from keyword options (``recv_size`` -> ``--recv-size``)."""
    args = [role, "--port", str(port)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args
