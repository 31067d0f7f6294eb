"""Raw protocol peers for tests: a plain ``websockets`` client that sends exactly what a test tells it to.

Used for hostile cases the real client would never produce (bad digests, early frames, odd paths).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets

from clients import crypto as c
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

    @classmethod
    async def connect_v2(cls, ws_url: str, nameplate: str | None, role: str, **query: object) -> RawPeer:
        """Protocol 2: a sender names no room (``nameplate`` None), a receiver names the nameplate."""
        params = "&".join(f"{k}={v}" for k, v in {"role": role, "v": 2, **query}.items())
        room = f"/{nameplate}" if nameplate else ""
        websocket = await asyncio.wait_for(
            websockets.connect(f"{ws_url}/ws{room}?{params}", compression=None, max_size=2**23, proxy=None), WAIT
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


# --- protocol v2: raw parties that key with clients.crypto ----------------------------------------------------
#
# A RawPeer speaks through the real relay; the "sides" below also let a fake relay (a test's own WebSocket
# server) stand in for the sender or a receiver, holding the real keys, so that it can seal what it sends.

WORDS = "ocean-table-actor"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def seal_json(channel: c.ControlChannel, value: object) -> str:
    return b64(channel.seal(json.dumps(value).encode("utf-8")))


def open_json(channel: c.ControlChannel, text: str) -> Any:
    return json.loads(channel.open(unb64(text)))


Send = Callable[[str], Awaitable[None]]
Recv = Callable[[], Awaitable[dict[str, Any]]]


async def key_as_sender(send: Send, recv: Recv, code: str, peer: int | None = 1, content_key: bytes | None = None
                        ) -> tuple[c.ControlChannel, bytes]:
    """The sender's side of keying with one receiver; ``peer`` is None when talking to a receiving client directly
    (a fake relay), which sees neither ``to`` nor ``peer``. Returns the control channel and the content key."""
    content_key = content_key or c.new_content_key()
    pake = c.Pake(c.Role.SENDER, code)
    to = {} if peer is None else {"to": peer}
    await send(json.dumps({"type": "pake", "data": b64(pake.outbound), **to}))
    message = await recv()
    assert message["type"] == "pake", message
    keys = pake.finish(unb64(message["data"]))
    await send(json.dumps({"type": "confirm", "data": b64(keys.confirmation(c.Role.SENDER)), **to}))
    message = await recv()
    assert message["type"] == "confirm", message
    keys.check_confirmation(c.Role.RECEIVER, unb64(message["data"]))
    await send(json.dumps({"type": "key", "data": b64(keys.seal_content_key(content_key)), **to}))
    return keys.control_channel(c.Role.SENDER), content_key


async def key_as_receiver(send: Send, recv: Recv, code: str, peer: int | None = None
                          ) -> tuple[c.ControlChannel, bytes]:
    """A receiver's side of keying with the sender; a fake relay talking to a sending client passes ``peer``."""
    pake = c.Pake(c.Role.RECEIVER, code)
    tag = {} if peer is None else {"peer": peer}
    await send(json.dumps({"type": "pake", "data": b64(pake.outbound), **tag}))
    message = await recv()
    assert message["type"] == "pake", message
    keys = pake.finish(unb64(message["data"]))
    message = await recv()
    assert message["type"] == "confirm", message
    keys.check_confirmation(c.Role.SENDER, unb64(message["data"]))
    await send(json.dumps({"type": "confirm", "data": b64(keys.confirmation(c.Role.RECEIVER)), **tag}))
    message = await recv()
    assert message["type"] == "key", message
    return keys.control_channel(c.Role.RECEIVER), keys.open_content_key(unb64(message["data"]))


def raw_sides(peer: RawPeer) -> tuple[Send, Recv]:
    async def recv() -> dict[str, Any]:
        message = await peer.recv()
        assert isinstance(message, dict), "a binary frame during keying"
        return message

    return peer.ws.send, recv


@dataclass
class KeyedRoom:
    """A v2 room on the real relay: a raw sender and raw receivers, keyed, with their channels and content key."""

    code: str
    sender: RawPeer
    receivers: list[RawPeer]
    sender_channels: list[c.ControlChannel]
    receiver_channels: list[c.ControlChannel]
    content_key: bytes


async def open_room_v2(ws_url: str, receivers: int = 1, words: str = WORDS) -> KeyedRoom:
    """A sender and ``receivers`` receivers on the real relay, each keyed with the sender; the sender has read
    ``paired``."""
    sender = await RawPeer.connect_v2(ws_url, None, "send", receivers=receivers)
    hello = await sender.expect("hello")
    code = f"{hello['nameplate']}-{words}"
    content_key = c.new_content_key()
    peers, sender_channels, receiver_channels = [], [], []
    for k in range(1, receivers + 1):
        peer = await RawPeer.connect_v2(ws_url, hello["nameplate"], "receive")
        await peer.expect("hello")
        await sender.expect("peer_joined")
        (s_send, s_recv), (r_send, r_recv) = raw_sides(sender), raw_sides(peer)
        s_task = asyncio.ensure_future(key_as_sender(s_send, s_recv, code, k, content_key))
        channel, _ = await key_as_receiver(r_send, r_recv, code)
        sender_channel, _ = await s_task
        peers.append(peer)
        sender_channels.append(sender_channel)
        receiver_channels.append(channel)
    await sender.expect("paired")
    return KeyedRoom(code, sender, peers, sender_channels, receiver_channels, content_key)


async def offer_v2(room: KeyedRoom, offer: p.Offer) -> None:
    """The sender seals ``offer`` to every receiver; each reads it."""
    for k, channel in enumerate(room.sender_channels, start=1):
        await room.sender.send({"type": "offer", "to": k, "total_size": offer.total_size, "files": len(offer.files),
                                "data": b64(channel.seal(offer.to_json().encode()))})
    for peer in room.receivers:
        await peer.expect("offer")


async def start_v2(room: KeyedRoom, offer: p.Offer, chunk_size: int) -> tuple[c.StreamSealer, c.StreamPlan]:
    """Offer, have every receiver accept, read ``start``, and open epoch 0 for everyone; return the sealer."""
    await offer_v2(room, offer)
    for peer, channel in zip(room.receivers, room.receiver_channels, strict=True):
        await peer.send({"type": "accept", "data": seal_json(channel, {})})
        await room.sender.expect("accept")
    await room.sender.expect("start")
    salt = c.new_epoch_salt()
    plan = c.StreamPlan(tuple(c.Segment(i, 0, f.size) for i, f in enumerate(offer.files)), chunk_size)
    segments = [[s.file, s.start, s.end] for s in plan.segments]
    plan_json = {"salt": b64(salt), "chunk_size": chunk_size, "segments": segments}
    await room.sender.send({"type": "stream", "epoch": 0, "to": list(range(1, len(room.receivers) + 1)),
                            "chunks": plan.chunk_count(), "bytes": plan.ciphertext_size(),
                            "data": [seal_json(ch, plan_json) for ch in room.sender_channels]})
    for peer in room.receivers:
        await peer.expect("stream")
    return c.StreamSealer(c.data_key(room.content_key, salt), plan), plan


async def send_sealed(sender: RawPeer, sealed: bytes, epoch: int = 0) -> None:
    """One ciphertext chunk: the header with its XXH3-64, then the binary frame."""
    await sender.send(p.SealedChunk(epoch, len(sealed), p.chunk_digest(sealed)))
    await sender.send(sealed)
