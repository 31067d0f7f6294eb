"""Relay settings: one dataclass, filled from ``RELAY_*`` environment variables and then command-line flags.

Every value is checked against the bounds in its field's metadata when a ``Settings`` is made, so a bad flag
or variable (``--port 70000``, ``RELAY_IDLE_TIMEOUT=nan``) is one clear ``SettingsError`` before anything
listens, never a surprise later.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from relay.protocol import DEFAULT_MAX_MESSAGE, MAX_SAFE_INT

ENV_PREFIX = "RELAY_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# The most digits a number from a flag or variable may have (1 TiB is 13 digits; 2^53 is 16).
MAX_SETTING_DIGITS = 16
_ASCII_DIGITS = re.compile(r"[0-9]+")
_ASCII_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


class SettingsError(ValueError):
    """A setting (flag or environment variable) is malformed or out of range; the message names it."""


def parse_ascii_int(text: str, max_digits: int) -> int | None:
    """``text`` as a non-negative integer of at most ``max_digits`` ASCII digits, else ``None``.

    ``int()`` alone would take ``"٣"`` as 3, ``" 7"``, ``"1_0"`` and ``"+1"``, and raises on 5,000 digits.
    """
    if len(text) > max_digits or not _ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the relay. Each field is also a ``relay serve --flag`` and a ``RELAY_FIELD`` variable."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on", "min": 1, "max": 253})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on", "min": 1, "max": 65535})
    max_message: int = field(
        default=DEFAULT_MAX_MESSAGE,
        metadata={"help": "largest WebSocket message in bytes", "min": 4096, "max": 1 << 30},
    )
    max_receivers: int = field(
        default=8, metadata={"help": "most receivers one room may wait for", "min": 1, "max": 1000}
    )
    max_rooms: int = field(default=10_000, metadata={"help": "most rooms open at once", "min": 1, "max": 10**9})
    max_transfer_bytes: int = field(
        default=1 << 40,
        metadata={"help": "largest total size of one offer in bytes (default 1 TiB)", "min": 0, "max": MAX_SAFE_INT},
    )
    pairing_timeout: float = field(
        default=600.0, metadata={"help": "seconds a room waits for all its receivers", "min": 0.001, "max": 1e7}
    )
    idle_timeout: float = field(
        default=120.0, metadata={"help": "seconds a paired room may move no frame (not while an offer is open)",
                                 "min": 0.001, "max": 1e7}
    )
    offer_timeout: float = field(
        default=1800.0, metadata={"help": "seconds an offer may wait for every receiver's answer", "min": 0.001,
                                  "max": 1e7}
    )
    resume_window: float = field(
        default=300.0, metadata={"help": "seconds a transfer waits for a party whose connection dropped to come back "
                                         "(protocol 2 resume)", "min": 0.001, "max": 1e7}
    )
    max_connections_per_ip: int = field(
        default=32,
        metadata={"help": "most WebSockets open at once from one client address (IPv6: per /64); 0: no limit",
                  "min": 0, "max": 10**9},
    )
    max_joins_per_minute: int = field(
        default=60, metadata={"help": "join attempts one client address may make per minute (a burst of this many); "
                                   "0: no limit", "min": 0, "max": 10**9}
    )
    failed_join_cost: int = field(
        default=10, metadata={"help": "how many join attempts a failed join (unknown room, bad token) counts as",
                           "min": 0, "max": 10**9}
    )
    handshake_timeout: float = field(
        default=10.0, metadata={"help": "seconds a new TCP connection has to send its complete HTTP request",
                             "min": 0.001, "max": 1e7}
    )
    shutdown_grace: float = field(
        default=30.0, metadata={"help": "seconds running transfers may finish after SIGTERM before going_away",
                             "min": 0, "max": 1e7}
    )
    token: str = field(
        default="", repr=False,
        metadata={"help": "shared token a private relay requires (prefer the env var: argv is visible to others)",
                  "max": 1024},
    )
    allowed_origins: str = field(
        default="", metadata={"help": "comma-separated browser origins allowed besides the relay's own; * for any",
                              "max": 65536}
    )
    forwarded_allow_ips: str = field(
        default="", metadata={"help": "comma-separated proxy addresses whose X-Forwarded-For is trusted; * for any",
                              "max": 65536}
    )
    log_level: str = field(
        default="info", metadata={"help": "log level: debug, info, warning, error", "choices": LOG_LEVELS}
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            check_value(spec.name, getattr(self, spec.name), spec.metadata)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``RELAY_*`` variables, then apply ``overrides`` (flags) that are not ``None``."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(ENV_PREFIX + spec.name.upper())
            if raw is not None and raw != "":
                values[spec.name] = parse_setting(spec.type, raw, spec.name)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


def setting_name(name: str) -> str:
    """How a person sets a field: ``--idle-timeout`` (or ``RELAY_IDLE_TIMEOUT``)."""
    return f"--{name.replace('_', '-')} (or {ENV_PREFIX}{name.upper()})"


def check_value(name: str, value: object, bounds: Any) -> None:
    """Refuse a value outside its field's bounds (``min``/``max``: the number, or a string's length)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{setting_name(name)} has the wrong type {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{setting_name(name)} must be a finite number")
    if isinstance(value, str):
        if not _PRINTABLE.fullmatch(value) and name != "host":
            raise SettingsError(f"{setting_name(name)} may hold only printable ASCII characters")
        if name == "host" and not re.fullmatch(r"[A-Za-z0-9.:%\[\]-]*", value):
            raise SettingsError(f"{setting_name(name)} must be a host name or an IP address")
        measured: float = len(value)
    else:
        measured = value
    minimum, maximum = bounds.get("min"), bounds.get("max")
    if minimum is not None and measured < minimum or maximum is not None and measured > maximum:
        low = minimum if minimum is not None else 0
        if isinstance(value, str):  # never echoed: it may be the token
            raise SettingsError(f"{setting_name(name)} must be {low} to {maximum} characters long, not {len(value)}")
        raise SettingsError(f"{setting_name(name)} must have a value from {low} to {maximum}, not {value!r}")
    choices = bounds.get("choices")
    if choices is not None and value not in choices:
        raise SettingsError(f"{setting_name(name)} must be one of {', '.join(choices)}, not {str(value)[:40]!r}")


def parse_setting(kind: Any, raw: str, name: str) -> Any:
    """A flag's or variable's text as its field's type: ASCII digits only, bounded in length."""
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if kind_name == "int":
        value = parse_ascii_int(raw, MAX_SETTING_DIGITS)
        if value is None:
            raise SettingsError(f"{setting_name(name)} must be a whole number in ASCII digits, not {raw[:40]!r}")
        return value
    if kind_name == "float":
        if len(raw) > 2 * MAX_SETTING_DIGITS or not _ASCII_DECIMAL.fullmatch(raw):
            raise SettingsError(f"{setting_name(name)} must be a number of seconds in ASCII digits, not {raw[:40]!r}")
        return float(raw)
    return raw
