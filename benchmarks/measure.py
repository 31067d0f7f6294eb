"""Measuring a process from the outside: CPU seconds and resident memory, read from the OS through psutil.

Nothing here asks the process under test anything; it may be the relay, socat or Node.js.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

SAMPLE_INTERVAL = 0.05
MAX_SAMPLES = 200_000  # ~2.7 hours at 50 ms: a bound, never reached by a run


def _family(pid: int) -> list[psutil.Process]:
    """The process and its children (a server may fork workers), skipping any that just exited."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children so far."""
    total = 0.0
    for proc in _family(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (/proc/PID/stat field 10): a sign of memory freshly mapped per chunk."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[7])


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy (not idle, not waiting for I/O) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) - getattr(
        times, "guest_nice", 0.0)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its live children."""
    total = 0
    for proc in _family(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class Window:
    """CPU and memory of one process over one measured interval."""

    cpu_s: float
    rss_start: int
    rss_peak: int
    rss_end: int
    samples: list[tuple[float, int]]
    minor_faults: int = 0
    machine_busy_s: float = 0.0  # every process on the machine, the measured ones included
    seconds: float = 0.0


class ProcessMonitor:
    """Samples a process's RSS every 50 ms in a thread; ``window()`` brackets one measured interval.

    Usage::

        with ProcessMonitor(pid) as monitor:
            with monitor.window() as w:
                ...   # the work
            w.result  # Window with CPU delta and RSS peak during the work
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self._samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> ProcessMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self._samples) < MAX_SAMPLES:
            sample = (time.monotonic(), rss_bytes(self.pid))
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(self.interval)

    def samples_since(self, start: float) -> list[tuple[float, int]]:
        with self._lock:
            return [s for s in self._samples if s[0] >= start]

    def window(self) -> _WindowContext:
        return _WindowContext(self)


class _WindowContext:
    def __init__(self, monitor: ProcessMonitor) -> None:
        self.monitor = monitor
        self.result: Window | None = None

    def __enter__(self) -> _WindowContext:
        self.started = time.monotonic()
        self.cpu_start = cpu_seconds(self.monitor.pid)
        self.rss_start = rss_bytes(self.monitor.pid)
        self.faults_start = minor_faults(self.monitor.pid)
        self.busy_start = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu_end = cpu_seconds(self.monitor.pid)
        rss_end = rss_bytes(self.monitor.pid)
        samples = self.monitor.samples_since(self.started)
        peak = max([rss for _, rss in samples] + [self.rss_start, rss_end])
        faults = minor_faults(self.monitor.pid) - self.faults_start
        busy = machine_busy_seconds() - self.busy_start
        self.result = Window(cpu_end - self.cpu_start, self.rss_start, peak, rss_end, samples, faults, busy,
                             time.monotonic() - self.started)
