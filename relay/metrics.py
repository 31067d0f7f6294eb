"""Prometheus metrics: plain counters updated on the hot path, turned into metric families only when scraped.

The relay counts with plain ``int`` attributes (a payload frame costs one addition, no lock, no label
lookup); ``RelayCollector`` reads them, and the live rooms and sockets, each time ``/metrics`` is scraped.
Each app gets its own ``CollectorRegistry``, so several relays in one process (the tests) do not collide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.protocol import ErrorCode

# How a room ended (``Room.outcome``: "complete" or an error code) -> the ``outcome`` label of transfers_total.
OUTCOMES: dict[str, str] = {
    "complete": "completed",
    ErrorCode.CANCELLED: "cancelled",
    ErrorCode.DECLINED: "declined",
    ErrorCode.PEER_LEFT: "peer_lost",
    ErrorCode.CHECKSUM_MISMATCH: "checksum_failed",
    ErrorCode.PAIRING_TIMEOUT: "timed_out",
    ErrorCode.IDLE_TIMEOUT: "timed_out",
    ErrorCode.OFFER_TIMEOUT: "timed_out",
    ErrorCode.TRANSFER_TOO_LARGE: "rejected_by_limit",
    ErrorCode.GOING_AWAY: "going_away",
    ErrorCode.INTERNAL_ERROR: "relay_error",
    ErrorCode.DISK_FULL: "receiver_failed",
    ErrorCode.FILE_EXISTS: "receiver_failed",
    ErrorCode.WRITE_FAILED: "receiver_failed",
    ErrorCode.MALFORMED_MESSAGE: "protocol_error",
    ErrorCode.UNKNOWN_TYPE: "protocol_error",
    ErrorCode.UNEXPECTED_MESSAGE: "protocol_error",
    ErrorCode.UNSAFE_PATH: "protocol_error",
    ErrorCode.SIZE_MISMATCH: "protocol_error",
}


def outcome_label(outcome: str) -> str:
    return OUTCOMES.get(outcome, "other")


class Stats:
    """The relay's running totals. Attributes are plain ints so the per-frame path stays one addition."""

    __slots__ = ("payload_bytes_in", "payload_bytes_out", "payload_frames", "transfers", "join_failures",
                 "joins", "checksum_failures", "relay_errors")

    def __init__(self) -> None:
        self.payload_bytes_in = 0  # binary payload read from senders
        self.payload_bytes_out = 0  # binary payload written to receivers (n receivers: n times each byte)
        self.payload_frames = 0
        self.transfers: Counter[str] = Counter()  # outcome label -> rooms ended that way
        self.join_failures: Counter[str] = Counter()  # error code -> refused joins
        self.joins: Counter[str] = Counter()  # role -> admitted parties
        self.checksum_failures = 0
        self.relay_errors = 0

    def room_ended(self, outcome: str) -> None:
        self.transfers[outcome_label(outcome)] += 1
        if outcome == ErrorCode.CHECKSUM_MISMATCH:
            self.checksum_failures += 1
        if outcome == ErrorCode.INTERNAL_ERROR:
            self.relay_errors += 1


class Observed(Protocol):
    """What the collector reads from a relay (``relay.service.Relay`` provides it; metrics imports no service)."""

    stats: Stats
    draining: bool

    def rooms_by_state(self) -> Counter[str]: ...

    def open_connections(self) -> tuple[int, int]: ...  # (WebSockets, client addresses)

    def limiter_keys(self) -> int: ...


ROOM_STATES = ("waiting", "paired", "offered", "streaming", "done", "ended")


class RelayCollector(Collector):
    """Reads a relay's ``Stats`` and live state at scrape time."""

    def __init__(self, relay: Observed) -> None:
        self.relay = relay

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        relay, stats = self.relay, self.relay.stats
        rooms = GaugeMetricFamily("relay_rooms", "Rooms open now, by state", labels=["state"])
        by_state = relay.rooms_by_state()
        for state in ROOM_STATES:
            rooms.add_metric([state], by_state.get(state, 0))
        yield rooms
        sockets, addresses = relay.open_connections()
        yield GaugeMetricFamily("relay_connections", "WebSockets open now", value=sockets)
        yield GaugeMetricFamily("relay_client_addresses", "Client addresses with a WebSocket open now",
                                value=addresses)
        yield GaugeMetricFamily("relay_draining", "1 while the relay is shutting down", value=int(relay.draining))

        yield CounterMetricFamily("relay_payload_received_bytes", "Payload bytes read from senders",
                                  value=stats.payload_bytes_in)
        yield CounterMetricFamily("relay_payload_relayed_bytes", "Payload bytes written to receivers",
                                  value=stats.payload_bytes_out)
        yield CounterMetricFamily("relay_payload_frames", "Payload frames read from senders",
                                  value=stats.payload_frames)
        transfers = CounterMetricFamily("relay_transfers", "Rooms ended, by outcome", labels=["outcome"])
        for label in sorted(set(OUTCOMES.values()) | {"other"}):
            transfers.add_metric([label], stats.transfers.get(label, 0))
        yield transfers
        yield CounterMetricFamily("relay_checksum_failures", "Rooms ended by a checksum mismatch",
                                  value=stats.checksum_failures)
        joins = CounterMetricFamily("relay_joins", "Parties admitted to a room, by role", labels=["role"])
        for role in ("send", "receive"):
            joins.add_metric([role], stats.joins.get(role, 0))
        yield joins
        failures = CounterMetricFamily("relay_join_failures", "Joins refused, by error code", labels=["code"])
        for code, count in sorted(stats.join_failures.items()):
            failures.add_metric([code], count)
        yield failures
        yield CounterMetricFamily("relay_errors", "Internal relay errors (bugs)", value=stats.relay_errors)
        yield GaugeMetricFamily("relay_join_limiter_keys", "Client addresses the join limiter remembers",
                                value=relay.limiter_keys())


def make_registry(relay: Observed) -> CollectorRegistry:
    """A registry with the relay's metrics and the process's CPU, memory and file descriptors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))
    ProcessCollector(registry=registry)
    return registry
