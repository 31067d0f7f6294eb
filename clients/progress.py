"""A one-line terminal progress bar (bytes, rate, ETA), redrawn at most ten times a second."""

from __future__ import annotations

import time
from typing import TextIO

REDRAW_INTERVAL = 0.1
BAR_WIDTH = 24


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Draws ``done / total`` on ``stream``; the caller decides whether a bar is wanted at all."""

    def __init__(self, stream: TextIO, total: int, label: str = "") -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last_draw >= REDRAW_INTERVAL:
            self.last_draw = now
            self._draw(now)

    def close(self) -> None:
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        fraction = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        eta = human_duration((self.total - self.done) / rate) if rate > 0 and self.done < self.total else "0:00"
        line = (
            f"\r{self.label}[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
            f"{human_size(self.done)} / {human_size(self.total)}  {human_size(rate)}/s  ETA {eta}  "
        )
        self.stream.write(line)
        self.stream.flush()
