"""Relay settings: one dataclass, filled from ``RELAY_*`` environment variables and then command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from relay.protocol import DEFAULT_MAX_MESSAGE

ENV_PREFIX = "RELAY_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the relay. Each field is also a ``relay serve --flag`` and a ``RELAY_FIELD`` variable."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on"})
    max_message: int = field(default=DEFAULT_MAX_MESSAGE, metadata={"help": "largest WebSocket message in bytes"})
    max_receivers: int = field(default=8, metadata={"help": "most receivers one room may wait for"})
    max_rooms: int = field(default=10_000, metadata={"help": "most rooms open at once"})
    max_transfer_bytes: int = field(
        default=1 << 40, metadata={"help": "largest total size of one offer in bytes (default 1 TiB)"}
    )
    pairing_timeout: float = field(default=600.0, metadata={"help": "seconds a room waits for all its receivers"})
    idle_timeout: float = field(default=120.0, metadata={"help": "seconds a paired room may move no frame"})
    max_connections_per_ip: int = field(
        default=32, metadata={"help": "most WebSockets open at once from one client address (IPv6: per /64)"}
    )
    max_joins_per_minute: int = field(
        default=60, metadata={"help": "join attempts one client address may make per minute (a burst of this many)"}
    )
    failed_join_cost: int = field(
        default=10, metadata={"help": "how many join attempts a failed join (unknown room, bad token) counts as"}
    )
    handshake_timeout: float = field(
        default=10.0, metadata={"help": "seconds a new TCP connection has to send its complete HTTP request"}
    )
    shutdown_grace: float = field(
        default=30.0, metadata={"help": "seconds running transfers may finish after SIGTERM before going_away"}
    )
    token: str = field(
        default="", repr=False,
        metadata={"help": "shared token a private relay requires (prefer the env var: argv is visible to others)"},
    )
    allowed_origins: str = field(
        default="", metadata={"help": "comma-separated browser origins allowed besides the relay's own; * for any"}
    )
    forwarded_allow_ips: str = field(
        default="", metadata={"help": "comma-separated proxy addresses whose X-Forwarded-For is trusted; * for any"}
    )
    log_level: str = field(default="info", metadata={"help": "log level: debug, info, warning, error"})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``RELAY_*`` variables, then apply ``overrides`` (flags) that are not ``None``."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(ENV_PREFIX + spec.name.upper())
            if raw is not None and raw != "":
                values[spec.name] = _convert(spec.type, raw, spec.name)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


def _convert(kind: Any, raw: str, name: str) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "int":
            return int(raw)
        if kind_name == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a number") from exc
    return raw
