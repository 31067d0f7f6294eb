"""Small raw-socket helpers for the attack tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

WAIT = 10.0


async def connect(ws_url: str, code: str, query: str = "role=send", **options: Any) -> websockets.ClientConnection:
    """A raw protocol 2 WebSocket; ``options`` go to ``websockets.connect`` (headers, origin, local_addr...).

    A receiver joins the room ``code`` names (a nameplate, or anything a test wants the relay to judge); a sender
    names no room (the relay allocates its nameplate), so ``code`` is not sent for one. ``v=2`` is added unless
    ``query`` says which version it wants.
    """
    options.setdefault("compression", None)
    options.setdefault("max_size", 2**24)
    options.setdefault("proxy", None)
    params = query.split("&")
    room = "" if "role=send" in params else f"/{code}"
    if not any(param.startswith("v=") for param in params):
        query = f"{query}&v=2"
    return await asyncio.wait_for(websockets.connect(f"{ws_url}/ws{room}?{query}", **options), WAIT)


async def outcome(ws: websockets.ClientConnection) -> tuple[list[Any], int | None]:
    """Read until the relay closes the socket: every message it sent (JSON decoded) and the close code."""
    seen: list[Any] = []
    try:
        async with asyncio.timeout(WAIT):
            while True:
                frame = await ws.recv()
                seen.append(frame if isinstance(frame, bytes) else json.loads(frame))
    except websockets.ConnectionClosed as exc:
        return seen, (exc.rcvd.code if exc.rcvd else None)


async def first(ws: websockets.ClientConnection) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(frame, str), "expected a text frame"
    return json.loads(frame)


async def refused_with(ws_url: str, code: str, query: str = "role=send", **options: Any) -> tuple[str, int | None]:
    """Join, and return the error code of the relay's only message and the close code (or 'hello', None)."""
    ws = await connect(ws_url, code, query, **options)
    try:
        message = await first(ws)
        if message["type"] == "hello":
            return "hello", None
        assert message["type"] == "error", message
        _, close = await outcome(ws)
        return message["code"], close
    finally:
        await ws.close()
