"""Per-client limits, decided with no I/O and with time passed in: open sockets per address, join rate.

``JoinLimiter`` is a token bucket per client key: it holds up to ``per_minute`` tokens and refills at
``per_minute`` per minute. Every join attempt takes one token; a join that fails in a way that looks like
guessing (unknown room, wrong token) takes ``failed_cost`` in all, and the bucket may go below zero, so a
guesser is held to ``per_minute / failed_cost`` guesses a minute however it paces them. Memory is bounded:
full buckets are forgotten (they are the same as a new one) and at most ``max_tracked`` keys are kept.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class JoinLimiter:
    """Join attempts per client key per minute; ``per_minute <= 0`` turns the limit off."""

    def __init__(self, per_minute: int, failed_cost: int, max_tracked: int = 65_536) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.failed_cost = max(1, failed_cost)
        self.max_tracked = max_tracked
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> bool:
        """Take one token for a join attempt; ``False`` if the key has none left (refuse with rate_limited)."""
        if not self.enabled:
            return True
        bucket = self._refilled(key, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def failed(self, key: str, now: float) -> None:
        """The attempt ``allow`` let through failed like a guess: charge the rest of ``failed_cost``."""
        if not self.enabled:
            return
        bucket = self._refilled(key, now)
        # The debt is capped at one bucket, so a key is never locked out for more than two minutes.
        bucket.tokens = max(-self.capacity, bucket.tokens - (self.failed_cost - 1))

    def prune(self, now: float) -> None:
        """Forget keys whose bucket has refilled: they are indistinguishable from keys never seen."""
        full = [key for key, bucket in self._buckets.items() if self._level(bucket, now) >= self.capacity]
        for key in full:
            del self._buckets[key]

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_tracked:
                self.prune(now)
                while len(self._buckets) >= self.max_tracked:  # still full: drop the oldest entry
                    del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
            return bucket
        bucket.tokens = self._level(bucket, now)
        bucket.updated = now
        return bucket

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + max(0.0, now - bucket.updated) * self.rate)


class ConnectionCounter:
    """Open WebSockets per client key; ``limit <= 0`` turns the limit off (the sockets are still counted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self.total = 0

    def acquire(self, key: str) -> bool:
        """Count one more socket for ``key``; ``False`` (and nothing counted) if it is at its limit."""
        count = self._open.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._open[key] = count + 1
        self.total += 1
        return True

    def release(self, key: str) -> None:
        count = self._open.get(key, 0)
        if count <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = count - 1
        if count > 0:
            self.total -= 1

    def count(self, key: str) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)
