"""Measuring a relay subprocess from outside."""

from __future__ import annotations

import threading


class PeakMemory:
    """Samples a relay process's RSS in a thread until stopped; ``peak`` is the largest seen."""

    def __init__(self, relay, interval: float = 0.05) -> None:
        self.relay = relay
        self.interval = interval
        self.peak = relay.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.relay.rss())
            except Exception:  # the process ended
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak
