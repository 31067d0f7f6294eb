"""clients.connection against a real WebSocket server on loopback: what a party's connection does with the frames
the relay sent before the connection dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.connection import ConnectionLost, RelayConnection
from clients.errors import TransferRefused

BOUND = 20.0
HELLO = p.Hello(p.PROTOCOL_V2, "receive", 1, 1, p.DEFAULT_MAX_MESSAGE)
# What a receiver has queued when its connection drops mid-stream: far more frames than a send that fails would
# ever look through for a reason (64), headers and payloads in turn.
QUEUED: list[str | bytes] = [frame for k in range(100)
                             for frame in (p.SealedChunk(0, 16, p.chunk_digest(bytes([k]) * 16)).to_json(),
                                           bytes([k]) * 16)]


@asynccontextmanager
async def relay_that(frames: list[str | bytes], ending: str) -> AsyncIterator[str]:
    """A fake relay: ``hello``, then ``frames``, then either a TCP close without a close frame (``ending`` is
    "drop": a network drop, as far as the client can tell) or the relay's ``peer_left`` and close 4030 ("close")."""
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(HELLO.to_json())
        for frame in frames:
            await ws.send(frame)
        if ending == "drop":
            ws.transport.close()  # FIN once everything above was written: the frames arrive, then the end
        else:
            await ws.send(p.PeerLeft(0, "send").to_json())
            await ws.close(ErrorCode.PEER_LEFT.close_code)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            done.set()


async def closed(connection: RelayConnection) -> None:
    """Wait (bounded) until the client has seen its connection end, with everything before the end queued."""
    deadline = time.monotonic() + BOUND
    while connection.websocket.closed is None:
        assert time.monotonic() < deadline, "the connection never ended"
        await asyncio.sleep(0.01)


async def test_a_send_on_a_dropped_connection_keeps_every_frame_that_came_before_the_drop() -> None:
    """A receiver's acknowledgement meets a dead socket while it still has chunks to open: the send says the
    connection was lost (resumable) and the chunks are still there, in order, for the next receives. Before the fix
    the failed send read 64 frames ahead looking for the relay's reason and threw them away, and the receiver took
    a later chunk for its next one ("did not authenticate")."""
    async with relay_that(QUEUED, "drop") as url:
        connection = await asyncio.wait_for(RelayConnection.open(url, "7", "receive"), BOUND)
        await closed(connection)
        with pytest.raises(ConnectionLost):
            await connection.send(p.ChunkAck(0, 1))
        got: list[str | bytes] = []
        for _ in QUEUED:
            frame = await asyncio.wait_for(connection.receive(), BOUND)
            got.append(bytes(frame) if isinstance(frame, memoryview) else frame.to_json())
        assert got == QUEUED
        with pytest.raises(ConnectionLost):
            await connection.receive()


async def test_a_send_after_the_relay_closed_still_reports_the_reason_it_gave() -> None:
    """After a close frame (the room ended) nothing queued matters but why: the failed send finds ``peer_left``
    behind the chunks."""
    async with relay_that(QUEUED[:10], "close") as url:
        connection = await asyncio.wait_for(RelayConnection.open(url, "7", "receive"), BOUND)
        await closed(connection)
        with pytest.raises(TransferRefused) as caught:
            await connection.send(p.ChunkAck(0, 1))
    assert caught.value.code is ErrorCode.PEER_LEFT and not isinstance(caught.value, ConnectionLost)
    assert str(caught.value) == "the sender disconnected before the transfer finished"
