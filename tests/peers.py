"""Raw protocol peers for tests: a plain ``websockets`` client that sends exactly what a test tells it to.

Used for hostile cases the real client would never produce (bad digests, early frames, odd paths).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from relay import protocol as p

WAIT = 10.0  # seconds any single wait in a test may take before it fails


class RawPeer:
    def __init__(self, websocket: websockets.ClientConnection) -> None:
        self.ws = websocket

    @classmethod
    async def connect(cls, ws_url: str, code: str, role: str, **query: object) -> RawPeer:
        params = "&".join(f"{k}={v}" for k, v in {"role": role, **query}.items())
        websocket = await asyncio.wait_for(
            websockets.connect(f"{ws_url}/ws/{code}?{params}", compression=None, max_size=2**23, proxy=None), WAIT
        )
        return cls(websocket)

    async def send(self, message: p.Message | dict[str, Any] | str | bytes) -> None:
        if isinstance(message, p.Message):
            message = message.to_json()
        elif isinstance(message, dict):
            message = json.dumps(message)
        await self.ws.send(message)

    async def recv(self) -> dict[str, Any] | bytes:
        frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        return frame if isinstance(frame, bytes) else json.loads(frame)

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next message, which must be of type ``kind``."""
        message = await self.recv()
        assert isinstance(message, dict) and message["type"] == kind, f"expected {kind!r}, got {message!r}"
        return message

    async def closed(self) -> tuple[int | None, list[dict[str, Any] | bytes]]:
        """Read until the relay closes; return the close code and what arrived before it."""
        seen: list[dict[str, Any] | bytes] = []
        for _ in range(10_000):
            try:
                seen.append(await self.recv())
            except websockets.ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else None), seen
        raise AssertionError("the relay never closed the socket")

    async def close(self) -> None:
        await self.ws.close()


async def open_room(ws_url: str, code: str, receivers: int = 1) -> tuple[RawPeer, list[RawPeer]]:
    """A sender and ``receivers`` receivers, paired (the sender has read hello..paired)."""
    sender = await RawPeer.connect(ws_url, code, "send", receivers=receivers)
    await sender.expect("hello")
    peers = []
    for _ in range(receivers):
        peer = await RawPeer.connect(ws_url, code, "receive")
        await peer.expect("hello")
        await sender.expect("peer_joined")
        peers.append(peer)
    await sender.expect("paired")
    return sender, peers


async def start_transfer(sender: RawPeer, receivers: list[RawPeer], offer: p.Offer) -> None:
    """Offer, have every receiver accept, and read up to ``start`` on the sender."""
    await sender.send(offer)
    for peer in receivers:
        await peer.expect("offer")
        await peer.send({"type": "accept"})
        await sender.expect("accept")
    await sender.expect("start")


async def send_file(sender: RawPeer, index: int, data: bytes, chunk: int, file_digest: str | None = None) -> None:
    """Stream one file as chunks with correct digests, then ``file_done`` (with ``file_digest`` if given)."""
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        await sender.send(p.Chunk(index, offset, len(piece), p.chunk_digest(piece)))
        await sender.send(piece)
    digest = p.FileDigest()
    digest.update(data)
    await sender.send(p.FileDone(index, len(data), file_digest or digest.hexdigest()))
