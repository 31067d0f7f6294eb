"""``PeerSocket`` implementations: what the room service reads from and writes to, one per party.

``DirectPeerSocket`` talks to the connection's ``RelayWebSocketProtocol`` (``relay.transport``) with no ASGI
message in between: a chunk is unmasked once into the ``bytes`` it returns, and ``send_bytes`` hands that same
object to the transport (every receiver's transport references it; nothing copies it again). A send returns
once the receiver's transport has handed it to the kernel (at once while the receiver keeps up), so the
service's loop (send to every receiver, then read the sender's next frame) is the flow control, and a chunk is
freed before the next one is unmasked.

``AsgiPeerSocket`` is the fallback for any other ASGI server (no ``relay.websocket`` extension in the scope).
``peer_socket`` picks one. Every method raises ``rooms.PeerGone`` once the socket is gone.
"""

from __future__ import annotations

from typing import cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from relay.metrics import Stats
from relay.rooms import PeerGone, PeerSocket
from relay.transport import (
    EXTENSION, Flag, Forwarder, RelayWebSocketProtocol, binary_frame_header, chunk_frames, text_frame,
)

ABNORMAL_CLOSURE = 1006  # what an ASGI server reports for a connection that ended without a close frame


class DirectPeerSocket:
    """``PeerSocket`` straight over the relay's WebSocket protocol object."""

    __slots__ = ("_connection", "_stats", "_forwarder")

    def __init__(self, connection: RelayWebSocketProtocol, stats: Stats) -> None:
        self._connection = connection
        self._stats = stats
        self._forwarder: Forwarder | None = None

    # --- forwarding from the read callback (``service.ForwardsChunks``) --------------------------------

    def forward_with(self, forwarder: Forwarder | None) -> None:
        """Let ``forwarder`` take this peer's chunks as they arrive (None: every message goes to ``receive``)."""
        self._forwarder = forwarder
        self._connection.forward = self if forwarder is not None else None

    def ready(self) -> bool:
        forwarder = self._forwarder
        return forwarder is not None and forwarder.ready()

    def chunk(self, text: str, data: bytes) -> bool:
        stats = self._stats
        stats.payload_bytes_in += len(data)
        stats.payload_frames += 1
        assert self._forwarder is not None
        return self._forwarder.chunk(text, data)

    def flush(self) -> None:
        if self._forwarder is not None:
            self._forwarder.flush()

    def block_on(self, flags: list[Flag]) -> None:
        """Read nothing more from this peer until every flag is set (``RelayWebSocketProtocol.block_on``)."""
        self._connection.block_on(flags)

    def can_write_now(self) -> bool:
        return self._connection.can_write_now()

    @staticmethod
    def chunk_frames(text: str, data: bytes) -> tuple[bytes, bytes, bytes]:
        """A chunk's frames as ``write_now`` takes them (``transport.chunk_frames``), built once per chunk."""
        return chunk_frames(text, data)

    def write_now(self, parts: list[bytes], payload_bytes: int) -> Flag | None:
        """Write ``parts`` (frames, e.g. several chunks' ``chunk_frames``) in one call without waiting, for a
        socket ``can_write_now`` said yes to; ``payload_bytes`` of chunk payload among them. Returns the
        connection's ``writable`` flag if its transport kept part of it (set again once that drained)."""
        connection = self._connection
        drained = connection.write_now(parts)
        self._stats.payload_bytes_out += payload_bytes
        return None if drained else cast(Flag, connection.writable)

    async def receive(self) -> str | bytes:
        try:
            message = await self._connection.next_message()
        except PeerGone:
            # with a close frame the peer left on purpose; without one its connection dropped (rooms.PeerGone)
            raise PeerGone(left=self._connection.conn.close_rcvd is not None) from None
        if type(message) is bytes:
            stats = self._stats
            stats.payload_bytes_in += len(message)
            stats.payload_frames += 1
        return message

    def received(self) -> list[str | bytes]:
        """What the peer sent that is here but not yet read (``service.Buffered``), without waiting."""
        messages = self._connection.received()
        stats = self._stats
        for message in messages:
            if type(message) is bytes:
                stats.payload_bytes_in += len(message)
                stats.payload_frames += 1
        return messages

    def next_binary(self) -> bytes | None:
        """The next message if it is a binary one already here, else None (``service.Polls``)."""
        message = self._connection.next_binary()
        if message is not None:
            stats = self._stats
            stats.payload_bytes_in += len(message)
            stats.payload_frames += 1
        return message

    async def send_text(self, text: str) -> None:
        await self._connection.write_frames(text_frame(text.encode()))

    async def send_bytes(self, data: bytes) -> None:
        await self._connection.write_frames(binary_frame_header(len(data)), data)
        self._stats.payload_bytes_out += len(data)

    async def send_chunk(self, text: str, data: bytes) -> None:
        """A chunk's header (text) and payload (binary) frames in one write (``service.SendsChunks``)."""
        await self._connection.write_frames(text_frame(text.encode()), binary_frame_header(len(data)), data)
        self._stats.payload_bytes_out += len(data)

    async def close(self, code: int, reason: str = "") -> None:
        await self._connection.close_with(code, reason)


class AsgiPeerSocket:
    """``PeerSocket`` over a Starlette WebSocket: every disconnect surfaces as ``PeerGone``."""

    __slots__ = ("_ws", "_stats")

    def __init__(self, websocket: WebSocket, stats: Stats) -> None:
        self._ws = websocket
        self._stats = stats

    async def receive(self) -> str | bytes:
        try:
            message = await self._ws.receive()
        except WebSocketDisconnected as exc:
            raise PeerGone() from exc
        if message["type"] == "websocket.disconnect":
            raise PeerGone(left=message.get("code", ABNORMAL_CLOSURE) != ABNORMAL_CLOSURE)
        data = message.get("bytes")
        if data is None:
            text: str = message["text"]
            return text
        stats = self._stats
        stats.payload_bytes_in += len(data)
        stats.payload_frames += 1
        return bytes(data)

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})
        self._stats.payload_bytes_out += len(data)

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _send(self, message: dict[str, object]) -> None:
        try:
            await self._ws.send(message)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            raise PeerGone() from exc


def peer_socket(websocket: WebSocket, stats: Stats | None = None) -> PeerSocket:
    """The cheapest ``PeerSocket`` for an accepted WebSocket: direct under ``RelayWebSocketProtocol``."""
    stats = stats if stats is not None else Stats()
    connection = websocket.scope.get("extensions", {}).get(EXTENSION)
    if isinstance(connection, RelayWebSocketProtocol):
        return DirectPeerSocket(connection, stats)
    return AsgiPeerSocket(websocket, stats)
