"""Logging: one ``key=value`` line per room lifecycle event, and no room code or token in any log line.

Room codes and tokens are secrets. The relay's own lines carry a room's tag (``rooms.code_tag``, 8 hex digits
of a keyed HMAC-SHA-256), never its code. uvicorn logs every WebSocket and HTTP request with its path and query
string, which would print ``/ws/<code>?token=...``; ``RedactPaths`` rewrites those lines to show the tag and
drop the query string.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from relay.rooms import code_tag

events = logging.getLogger("relay.events")

_WS_PATH = re.compile(r"/ws/([^/?\s]*)")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]+")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one lifecycle event as ``event=NAME key=value ...`` (values quoted when they need it)."""
    if not events.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        text = str(value)
        parts.append(f"{key}={text if _SAFE_VALUE.fullmatch(text) else _quote(text)}")
    events.log(level, " ".join(parts))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def redact_path(path: str) -> str:
    """``/ws/actor-table?role=send&token=x`` -> ``/ws/<tag>``: the code hashed, the query string dropped."""
    path = path.split("?", 1)[0]
    return _WS_PATH.sub(lambda match: f"/ws/{code_tag(match.group(1))}", path)


class RedactPaths(logging.Filter):
    """Rewrites request paths in uvicorn's log records (access and WebSocket lines) with ``redact_path``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact_path(arg) if isinstance(arg, str) and arg.startswith("/") else arg for arg in record.args
            )
        elif isinstance(record.msg, str) and ("/ws/" in record.msg or "?" in record.msg):
            record.msg = redact_path(record.msg) if record.msg.startswith("/") else _WS_PATH.sub(
                lambda match: f"/ws/{code_tag(match.group(1))}", record.msg.split("?", 1)[0])
        return True


def install_redaction() -> None:
    """Attach ``RedactPaths`` to uvicorn's loggers (once per process)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactPaths) for existing in logger.filters):
            logger.addFilter(RedactPaths())


def configure(level: str) -> None:
    """Send the relay's log lines to stderr at ``level``.

    The room machine (``relay.rooms``) logs nothing; the service writes one ``relay.events`` line per
    lifecycle event. The ``relay.rooms`` logger stays quiet below ``debug`` for code that may log there later.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=numeric, format=FORMAT)
    logging.getLogger("relay").setLevel(numeric)
    logging.getLogger("relay.rooms").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    install_redaction()
