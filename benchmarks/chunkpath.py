"""What one chunk costs the relay in Python, stage by stage, in-process and without sockets.

    python -m benchmarks.chunkpath                    # 64 KiB chunks
    python -m benchmarks.chunkpath --chunk 1048576

A chunk reaches the relay as two frames from the sender (its ``chunk`` header, text, then the payload,
binary) and leaves as the same two frames to each receiver. Between the socket reads and the socket writes
the relay runs, per chunk: the frame buffer (``relay.framebuffer``: two headers parsed, the text unmasked and
decoded, the payload unmasked into its ``bytes``), the room (``Room.handle`` twice, or ``Room.chunk`` once: the
header parsed and checked, the payload's length and XXH3-64 checked, the effects built), and the service's
``_apply`` (the effects turned into one ``writelines`` per receiver). This runs each stage on its own, on one
core, with the same library calls and a transport that only counts bytes, so a change to one stage can be
measured without the noise of a shared machine. Microseconds per chunk, ``time.process_time``, best of
``--repeat``.

The last stages run the forwarding path whole, as a streaming sender's connection runs it from its read
callback: the bytes of one read copied into the frame buffer, every whole chunk taken from it, checked by
``Room.chunk`` through ``ChunkForwarder`` and queued, then one ``writelines`` per receiver (``--batch`` chunks
per read, as ``framebuffer.BATCH`` gives at 64 KiB; and one chunk per read, as before it). The same file runs
against an older tree (``PYTHONPATH=<tree>``) that writes each chunk as it is checked, for a before/after.

What it cannot show is the event loop's part (``epoll``, ``read``/``writev``, a task switch per wake-up):
``perf stat``/``strace -c`` on the relay process under ``python -m benchmarks.ab`` shows that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from relay import protocol as p
from relay.config import Settings
from relay.framebuffer import FrameBuffer
from relay.rooms import BinaryFrame, Joined, JoinRequest, Room, Rooms, TextFrame
from relay.service import ChunkForwarder, Relay, Seat
from relay.sockets import DirectPeerSocket
from relay.transport import FORWARDED_CHUNK, WAIT_TEXT

from benchmarks.wsframes import client_frame

OP_TEXT, OP_BINARY = 0x1, 0x2


def streaming_room(chunk: int, chunks: int) -> tuple[Room, Rooms]:
    """A room with one sender and one receiver, its epoch open for ``chunks`` chunks of ``chunk`` bytes."""
    settings = Settings(max_message=max(chunk, 64 * 1024), max_transfer_bytes=2**53 - 1)
    rooms = Rooms(settings)
    room, sender = rooms.admit(JoinRequest("", "send", "1", "2"), 0.0)
    room.handle(Joined(sender.peer), 0.0)
    _, receiver = rooms.admit(JoinRequest(room.code, "receive", None, "2"), 0.0)
    room.handle(Joined(receiver.peer), 0.0)
    pake, confirm, key, sealed = (base64.b64encode(b"x" * size).decode() for size in (33, 32, 48, 40))
    script = [(0, {"type": "pake", "to": 1, "data": pake}), (1, {"type": "pake", "data": pake}),
              (0, {"type": "confirm", "to": 1, "data": confirm}), (1, {"type": "confirm", "data": confirm}),
              (0, {"type": "key", "to": 1, "data": key}),
              (0, {"type": "offer", "to": 1, "total_size": (chunk - p.TAG_SIZE) * chunks, "files": 1, "data": sealed}),
              (1, {"type": "accept", "data": sealed}),
              (0, {"type": "stream", "epoch": 0, "to": [1], "chunks": chunks, "bytes": chunk * chunks,
                   "data": [sealed]})]
    for peer, message in script:
        room.handle(TextFrame(peer, json.dumps(message), 0), 0.0)
    assert room.state.value == "streaming", room.state
    return room, rooms


class CountingTransport:
    """Stands in for a receiver's transport: takes every write at once."""

    def __init__(self) -> None:
        self.written = 0

    def writelines(self, parts: tuple[bytes, ...] | list[bytes]) -> None:
        self.written += sum(len(part) for part in parts)

    def get_write_buffer_size(self) -> int:
        return 0


def timed(label: str, count: int, repeat: int, run: Callable[[int], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run(count)
        best = min(best, time.process_time() - started)
    per_chunk = best / count * 1e6
    print(f"  {label:<44} {per_chunk:7.2f} µs/chunk", flush=True)
    return per_chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chunkpath", description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=3, help="chunks per read in the batched forwarding stage")
    args = parser.parse_args(argv)
    payload = os.urandom(args.chunk)
    digest = p.chunk_digest(payload)
    header_text = f'{{"type":"chunk","epoch":0,"size":{args.chunk},"xxh3_64":"{digest}"}}'
    wire = client_frame(OP_TEXT, header_text.encode()) + client_frame(OP_BINARY, payload)
    wire_view = memoryview(wire)
    print(f"{args.chunk // 1024} KiB chunks, {args.count} per run, best of {args.repeat}")

    def framebuffer(count: int) -> None:
        frames = FrameBuffer(args.chunk + 1024)
        for _ in range(count):
            offset = 0
            while offset < len(wire):  # as the kernel would fill the views it is given (recv_into)
                with frames.writable() as view:
                    count_in = min(len(view), len(wire) - offset)
                    view[:count_in] = wire_view[offset : offset + count_in]
                frames.wrote(count_in)
                offset += count_in
            text_header = frames.next_frame()
            assert text_header is not None
            frames.take_payload(text_header).decode()
            binary = frames.next_frame()
            assert binary is not None
            frames.hold(binary)
            frames.take_binary()

    def room_handle(count: int) -> None:
        room, _ = streaming_room(args.chunk, count)
        for _ in range(count):
            room.handle(TextFrame(0, header_text, 0), 0.0)
            room.handle(BinaryFrame(0, payload, 0), 0.0)

    def xxh3(count: int) -> None:
        for _ in range(count):
            p.chunk_digest(payload)

    room_chunk = getattr(Room, "chunk", None)

    def room_fast(count: int) -> None:
        room, _ = streaming_room(args.chunk, count)
        for _ in range(count):
            room_chunk(room, 0, 0, header_text, payload, 0.0)  # type: ignore[misc]

    def apply(count: int) -> None:
        relay = Relay(Settings())
        room, rooms = streaming_room(args.chunk, count)
        relay.rooms = rooms
        connection = _FakeConnection()
        relay.seats[room] = {1: Seat(DirectPeerSocket(connection, relay.stats))}  # type: ignore[arg-type]
        effects_one = room.handle(TextFrame(0, header_text, 0), 0.0) + room.handle(BinaryFrame(0, payload, 0), 0.0)
        room.check.pending = None  # type: ignore[union-attr]

        async def body() -> None:
            for _ in range(count):
                await relay._apply(room, list(effects_one))

        run_loop(body())

    def wakeup(count: int) -> None:
        async def body() -> None:
            loop = asyncio.get_running_loop()
            for _ in range(count):
                waiter = loop.create_future()
                loop.call_soon(waiter.set_result, None)
                await waiter

        run_loop(body())

    take_chunk = getattr(FrameBuffer, "take_chunk", None)

    def framebuffer_pair(count: int) -> None:
        frames = FrameBuffer(args.chunk + 1024)
        for _ in range(count):
            fill(frames, wire_view)
            take_chunk(frames, 256, args.chunk + 1024)  # type: ignore[misc]

    def forwarding(per_read: int) -> Callable[[int], None]:
        one_read = memoryview(wire * per_read)

        def run(count: int) -> None:
            relay = Relay(Settings())
            room, rooms = streaming_room(args.chunk, count)
            relay.rooms = rooms
            sender, receiver = _FakeConnection(), _FakeConnection()
            sender_socket = DirectPeerSocket(sender, relay.stats)  # type: ignore[arg-type]
            seats = {0: Seat(sender_socket), 1: Seat(DirectPeerSocket(receiver, relay.stats))}  # type: ignore[arg-type]
            relay.seats[room] = seats
            assert room.sender is not None
            sender_socket.forward_with(ChunkForwarder(relay, room, room.sender, seats[0]))
            frames = FrameBuffer(args.chunk + 1024)
            if "floor" in FrameBuffer.__slots__:  # an older tree reads one chunk (and 16 KiB) at a time
                frames.floor = len(one_read) + 16 * 1024
            flush = getattr(sender_socket, "flush", None)
            for _ in range(count // per_read):
                fill(frames, one_read)
                if take_chunk is not None:
                    while (pair := take_chunk(frames, WAIT_TEXT, FORWARDED_CHUNK)) is not None:
                        sender_socket.chunk(*pair)
                else:  # an older tree: frame by frame, each chunk written as it is checked
                    while (text := frames.next_frame()) is not None:
                        decoded = frames.take_payload(text).decode()
                        binary = frames.next_frame()
                        assert binary is not None
                        frames.hold(binary)
                        sender_socket.chunk(decoded, frames.take_binary())
                if flush is not None:
                    flush()
            assert receiver.transport.written >= len(one_read) * (count // per_read) * 0.99, "not forwarded"

        return run

    timed("frame buffer (2 frames parsed, unmasked)", args.count, args.repeat, framebuffer)
    if take_chunk is not None:
        timed("frame buffer: take_chunk (the pair in one call)", args.count, args.repeat, framebuffer_pair)
    timed("room: handle(TextFrame) + handle(BinaryFrame)", args.count, args.repeat, room_handle)
    if room_chunk is not None:
        timed("room: Room.chunk (header and payload)", args.count, args.repeat, room_fast)
    timed("  of which the payload's xxh3_64", args.count, args.repeat, xxh3)
    timed("service: _apply (1 receiver, no syscall)", args.count, args.repeat, apply)
    timed("one wake-up of a waiting task (uvloop)", args.count, args.repeat, wakeup)
    timed("forwarding, 1 chunk per read (buffer to write)", args.count, args.repeat, forwarding(1))
    timed(f"forwarding, {args.batch} chunks per read", args.count, args.repeat, forwarding(args.batch))
    return 0


def fill(frames: FrameBuffer, data: memoryview) -> None:
    """Copy ``data`` into the buffer as the kernel fills the views it is given (``recv_into``)."""
    offset = 0
    while offset < len(data):
        with frames.writable() as view:
            count = min(len(view), len(data) - offset)
            view[:count] = data[offset : offset + count]
        frames.wrote(count)
        offset += count


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop, the relay's event loop (asyncio's own if uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    uvloop.run(main)


class _FakeConnection:
    """The part of ``RelayWebSocketProtocol`` a ``DirectPeerSocket`` uses: its sends, and the forwarder's."""

    def __init__(self) -> None:
        self.transport = CountingTransport()
        self.forward: object = None

    async def write_frames(self, *parts: bytes) -> None:
        self.transport.writelines(parts)

    def can_write_now(self) -> bool:
        return True

    def write_now(self, *parts: Any) -> bool:
        # ``write_now(parts)`` here; ``write_now(*parts)`` in a tree from before batches
        self.transport.writelines(parts[0] if len(parts) == 1 and type(parts[0]) is list else parts)
        return True


if __name__ == "__main__":
    sys.exit(main())
