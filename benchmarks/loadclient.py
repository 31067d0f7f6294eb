"""Cheap load clients that speak the relay protocol, one process per role, many rooms per process.

    python -m benchmarks.loadclient send --port P --rooms 10 --prefix r --size 20971520 --chunk 1048576
    python -m benchmarks.loadclient receive --port P --rooms 10 --prefix r

The sender masks one payload frame per chunk size once, computes its XXH3-64 once, and then only formats
and masks a ~100-byte header per chunk: the relay checks the digest of the unmasked payload, so every chunk
is the same bytes. The receiver counts payload bytes and answers ``accept`` / ``verified``.

Each process prints JSON lines on stdout: ``{"event": "ready"}`` once every room is open (the sender's signal
that receivers may connect), and one ``{"event": "result", ...}`` with per-room monotonic timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import xxhash

from benchmarks.wsconn import ConnectionClosed, WsConnection
from benchmarks.wsframes import OP_BINARY, OP_TEXT, client_frame

FILE_NAME = "bench.bin"
OPEN_CONCURRENCY = 64
SENDER_RECV_SIZE = 64 * 1024


class ChunkFrames:
    """Pre-masked binary frames and digests for a synthetic file made of one random chunk repeated."""

    def __init__(self, size: int, chunk: int) -> None:
        self.size = size
        self.chunk = chunk
        payload = os.urandom(min(chunk, size) or 1)
        mask = os.urandom(4)
        self.full_frame = client_frame(OP_BINARY, payload, mask)
        self.full_digest = xxhash.xxh3_64_hexdigest(payload)
        tail = size % chunk
        self.tail_frame = client_frame(OP_BINARY, payload[:tail], mask) if tail else b""
        self.tail_digest = xxhash.xxh3_64_hexdigest(payload[:tail]) if tail else ""
        file_hash = xxhash.xxh3_128()
        for _ in range(size // chunk):
            file_hash.update(payload)
        if tail:
            file_hash.update(payload[:tail])
        self.file_digest = file_hash.hexdigest()

    def frames(self):
        """Yield ``(header_frame, payload_frame)`` for each chunk in order."""
        offset = 0
        full_count = self.size // self.chunk
        for _ in range(full_count):
            yield self._header(offset, self.chunk, self.full_digest), self.full_frame
            offset += self.chunk
        if self.tail_frame:
            yield self._header(offset, self.size - offset, self.tail_digest), self.tail_frame

    @staticmethod
    def _header(offset: int, size: int, digest: str) -> bytes:
        text = '{"type":"chunk","file":0,"offset":%d,"size":%d,"xxh3_64":"%s"}' % (offset, size, digest)
        return client_frame(OP_TEXT, text.encode("ascii"))


@dataclass
class RoomResult:
    """What one party saw in one room; times are ``time.monotonic()`` (one clock for every process)."""

    room: str
    ok: bool = False
    error: str = ""
    connect_at: float = 0.0
    hello_at: float = 0.0
    offer_at: float = 0.0
    start_at: float = 0.0
    first_byte_at: float = 0.0
    last_byte_at: float = 0.0
    end_at: float = 0.0
    payload_bytes: int = 0


@dataclass
class Args:
    role: str
    host: str
    port: int
    rooms: int
    prefix: str
    size: int
    chunk: int
    receivers: int
    concurrency: int
    rate: float | None
    recv_size: int
    hold: bool
    timeout: float
    results: list[RoomResult] = field(default_factory=list)


def room_code(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


async def expect(conn: WsConnection, wanted: str, skip: tuple[str, ...]) -> dict:
    """Read messages until one of type ``wanted``; anything not in ``skip`` is a failure."""
    for _ in range(1_000_000):
        message = await conn.next_message()
        kind = message.get("type")
        if kind == wanted:
            return message
        if kind not in skip:
            raise RuntimeError(f"expected {wanted}, got {json.dumps(message)[:200]}")
    raise RuntimeError(f"no {wanted} within a million messages")


async def open_room(args: Args, code: str, query: str, result: RoomResult) -> WsConnection:
    result.connect_at = time.monotonic()
    # A sender only reads small control messages: a big buffer per room would cost gigabytes with 5,000 rooms.
    recv_size = min(args.recv_size, SENDER_RECV_SIZE) if args.role == "send" else args.recv_size
    conn = await WsConnection.open(args.host, args.port, f"/ws/{code}?{query}", recv_size=recv_size, rate=args.rate)
    await expect(conn, "hello", ())
    result.hello_at = time.monotonic()
    return conn


async def run_sender_room(args: Args, code: str, frames: ChunkFrames, ready: asyncio.Event,
                          opened: list[int], gate: asyncio.Semaphore) -> RoomResult:
    result = RoomResult(code)
    conn = None
    try:
        async with gate:
            conn = await open_room(args, code, f"role=send&receivers={args.receivers}", result)
        opened[0] += 1
        if opened[0] == args.rooms:
            ready.set()
        if args.hold:
            await conn.next_message()  # returns or raises only when the relay ends the room
            return result
        await expect(conn, "paired", ("peer_joined",))
        offer = {"type": "offer", "files": [{"path": FILE_NAME, "size": frames.size}], "dirs": [],
                 "chunk_size": frames.chunk}
        await conn.send_json(offer)
        await expect(conn, "start", ("accept",))
        result.start_at = time.monotonic()
        for header, payload in frames.frames():
            await conn.send_parts(header, payload)
        result.payload_bytes = frames.size
        await conn.send_json({"type": "file_done", "file": 0, "size": frames.size, "xxh3_128": frames.file_digest})
        await conn.send_json({"type": "done"})
        await expect(conn, "complete", ("ack", "file_ok", "verified"))
        result.end_at = time.monotonic()
        result.ok = True
    except (ConnectionClosed, RuntimeError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        ready.set()
    finally:
        if conn is not None:
            await conn.close()
    return result


async def run_receiver_room(args: Args, code: str, gate: asyncio.Semaphore) -> RoomResult:
    result = RoomResult(code)
    conn = None
    try:
        async with gate:
            conn = await open_room(args, code, "role=receive", result)
            await expect(conn, "offer", ())
            result.offer_at = time.monotonic()
            await conn.send_json({"type": "accept"})
            result.start_at = time.monotonic()
            if args.concurrency > 0:
                # Pairing-latency mode: hold the slot until the first payload byte is in.
                await conn.first_byte.wait()
        done = await expect(conn, "file_done", ())
        await conn.send_json({"type": "file_ok", "file": done["file"]})
        await expect(conn, "done", ())
        await conn.send_json({"type": "verified"})
        await expect(conn, "complete", ())
        result.end_at = time.monotonic()
        result.payload_bytes = conn.binary_bytes
        result.first_byte_at = conn.first_byte_at or 0.0
        result.last_byte_at = conn.last_byte_at or 0.0
        result.ok = conn.binary_bytes == args.size
        if not result.ok:
            result.error = f"received {conn.binary_bytes} of {args.size} bytes"
    except (ConnectionClosed, RuntimeError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            await conn.close()
    return result


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def wait_for_stdin_eof() -> None:
    """The harness closes our stdin to say 'finish now' (used by idle rooms)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def run(args: Args) -> list[RoomResult]:
    codes = [room_code(args.prefix, i) for i in range(args.rooms)]
    if args.role == "send":
        frames = ChunkFrames(args.size, args.chunk)
        ready = asyncio.Event()
        opened = [0]
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        tasks = [asyncio.create_task(run_sender_room(args, code, frames, ready, opened, gate)) for code in codes]
        await ready.wait()
        emit("ready", rooms=opened[0])
        if args.hold:
            await wait_for_stdin_eof()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return [RoomResult(code, ok=True) for code in codes]
        return list(await asyncio.gather(*tasks))
    gate = asyncio.Semaphore(args.concurrency if args.concurrency > 0 else OPEN_CONCURRENCY)
    tasks = [run_receiver_room(args, code, gate) for code in codes]
    return list(await asyncio.gather(*tasks))


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadclient", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per room")
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--receivers", type=int, default=1, help="receivers per room (sender)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="receiver: rooms joined at once, each held until its first payload byte (latency)")
    parser.add_argument("--rate", type=float, default=None, help="receiver: read at most this many bytes/s")
    parser.add_argument("--recv-size", type=int, default=1 << 20, help="bytes per recv() call")
    parser.add_argument("--hold", action="store_true", help="sender: open rooms and hold them until stdin closes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    ns = parser.parse_args(argv)
    return Args(ns.role, ns.host, ns.port, ns.rooms, ns.prefix, ns.size, ns.chunk, ns.receivers,
                ns.concurrency, ns.rate, ns.recv_size, ns.hold, ns.timeout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        emit("result", role=args.role, rooms=[], error=f"timed out after {args.timeout} s")
        return 2
    emit("result", role=args.role, rooms=[asdict(r) for r in results])
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
