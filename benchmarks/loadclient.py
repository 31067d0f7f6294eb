"""Cheap load clients that speak the relay protocol (version 2), one process per role, many rooms per process.

    python -m benchmarks.loadclient send --port P --rooms 10 --size 20971520 --chunk 1048576
    python -m benchmarks.loadclient receive --port P --nameplates 3,17,42,...

The relay never verifies the cryptography: it checks base64 lengths, clear counts and every ciphertext chunk's
length and XXH3-64. So these clients key, offer and stream with random bytes of the right lengths (a 33-byte
PAKE message, 32-byte confirmations, a 48-byte sealed key, a sealed offer and plan, and chunks of
``chunk + 16`` bytes), and the relay does exactly the work it does for real clients. The sender masks one
ciphertext frame per chunk size once, computes its XXH3-64 once, and then only formats and masks a short
header per chunk, so every chunk is the same bytes. The receiver counts ciphertext bytes and answers
``accept`` / ``verified``.

Each process prints JSON lines on stdout: ``{"event": "ready", "nameplates": [...]}`` once every room is open
(the sender's signal that receivers may connect, with the nameplates the relay allocated, in room order), and
one ``{"event": "result", ...}`` with per-room monotonic timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import xxhash

from benchmarks.wsconn import ConnectionClosed, WsConnection
from benchmarks.wsframes import OP_BINARY, OP_TEXT, client_frame

OPEN_CONCURRENCY = 64
SENDER_RECV_SIZE = 64 * 1024
TAG = 16  # every sealed value and ciphertext chunk carries a 16-byte AES-GCM tag
PAKE_SIZE, CONFIRM_SIZE, SEALED_KEY_SIZE = 33, 32, 48  # relay.protocol's lengths for the keying messages
SEALED_OFFER_SIZE, SEALED_PLAN_SIZE = 96, 96  # a one-file offer and its plan, as a real sender seals them
# The relay's default max_message: a ciphertext chunk (plaintext + tag) must fit in it, so a "4 MiB chunk" is
# 4 MiB - 16 bytes of plaintext, 4 MiB on the wire (as a real sender cuts it for this relay).
MAX_MESSAGE = 4 * 1024 * 1024


def opaque(size: int) -> str:
    """Base64 of ``size`` random bytes: what a sealed value looks like to the relay."""
    return base64.b64encode(os.urandom(size)).decode("ascii")


class ChunkFrames:
    """Pre-masked ciphertext frames and digests for a synthetic one-file transfer of ``size`` plaintext bytes.

    As the real sender cuts it: ``chunk`` plaintext bytes per chunk, the last one short, an empty file one
    empty chunk; each chunk is its plaintext plus the 16-byte tag on the wire.
    """

    def __init__(self, size: int, chunk: int) -> None:
        self.size = size
        self.chunk = chunk
        full, tail = divmod(size, chunk)
        self.full_count = full
        self.count = full + (1 if tail or not size else 0)
        self.wire_bytes = size + TAG * self.count
        payload = os.urandom(min(chunk, size) + TAG)
        mask = os.urandom(4)
        self.full_frame = client_frame(OP_BINARY, payload[: chunk + TAG], mask) if full else b""
        self.full_header = self._header(chunk + TAG, xxhash.xxh3_64_hexdigest(payload[: chunk + TAG]))
        short = payload[: tail + TAG]
        self.tail_frame = client_frame(OP_BINARY, short, mask) if self.count > full else b""
        self.tail_header = self._header(len(short), xxhash.xxh3_64_hexdigest(short))

    def frames(self):
        """Yield ``(header_frame, payload_frame)`` for each chunk in order."""
        for _ in range(self.full_count):
            yield self.full_header, self.full_frame
        if self.tail_frame:
            yield self.tail_header, self.tail_frame

    @staticmethod
    def _header(size: int, digest: str) -> bytes:
        text = f'{{"type":"chunk","epoch":0,"size":{size},"xxh3_64":"{digest}"}}'
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
    nameplates: list[str]
    size: int
    chunk: int
    receivers: int
    concurrency: int
    rate: float | None
    recv_size: int
    hold: bool
    timeout: float
    results: list[RoomResult] = field(default_factory=list)


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


async def open_room(args: Args, target: str, result: RoomResult) -> tuple[WsConnection, dict]:
    """Connect to ``target`` (``/ws?...`` for a sender, ``/ws/{nameplate}?...`` for a receiver); read ``hello``."""
    result.connect_at = time.monotonic()
    # A sender only reads small control messages: a big buffer per room would cost gigabytes with 5,000 rooms.
    recv_size = min(args.recv_size, SENDER_RECV_SIZE) if args.role == "send" else args.recv_size
    conn = await WsConnection.open(args.host, args.port, target, recv_size=recv_size, rate=args.rate)
    hello = await expect(conn, "hello", ())
    result.hello_at = time.monotonic()
    return conn, hello


async def key_receivers(conn: WsConnection, receivers: int) -> None:
    """The sender's side of keying, for the relay: per receiver a PAKE message, a confirmation once the
    receiver's PAKE message is in, the sealed content key once its confirmation is in; until ``paired``."""
    for _ in range(10 * receivers + 10):
        message = await conn.next_message()
        kind, peer = message.get("type"), message.get("peer")
        if kind == "peer_joined":
            await conn.send_json({"type": "pake", "to": peer, "data": opaque(PAKE_SIZE)})
        elif kind == "pake":
            await conn.send_json({"type": "confirm", "to": peer, "data": opaque(CONFIRM_SIZE)})
        elif kind == "confirm":
            await conn.send_json({"type": "key", "to": peer, "data": opaque(SEALED_KEY_SIZE)})
        elif kind == "paired":
            return
        else:
            raise RuntimeError(f"expected keying, got {json.dumps(message)[:200]}")
    raise RuntimeError("keying did not end in paired")


async def run_sender_room(args: Args, index: int, frames: ChunkFrames, ready: asyncio.Event,
                          opened: list[str], gate: asyncio.Semaphore) -> RoomResult:
    result = RoomResult(str(index))
    conn = None
    try:
        async with gate:
            conn, hello = await open_room(args, f"/ws?role=send&v=2&receivers={args.receivers}", result)
        result.room = hello["nameplate"]
        opened[index] = hello["nameplate"]
        if all(opened):
            ready.set()
        if args.hold:
            await conn.next_message()  # returns or raises only when the relay ends the room
            return result
        await key_receivers(conn, args.receivers)
        for k in range(1, args.receivers + 1):
            await conn.send_json({"type": "offer", "to": k, "total_size": frames.size, "files": 1,
                                  "data": opaque(SEALED_OFFER_SIZE)})
        await expect(conn, "start", ("accept",))
        result.start_at = time.monotonic()
        await conn.send_json({"type": "stream", "epoch": 0, "to": list(range(1, args.receivers + 1)),
                              "chunks": frames.count, "bytes": frames.wire_bytes,
                              "data": [opaque(SEALED_PLAN_SIZE) for _ in range(args.receivers)]})
        for header, payload in frames.frames():
            await conn.send_parts(header, payload)
        result.payload_bytes = frames.size
        await conn.send_json({"type": "end", "epoch": 0})
        await expect(conn, "complete", ("ack", "verified"))
        result.end_at = time.monotonic()
        result.ok = True
    except (ConnectionClosed, RuntimeError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        ready.set()
    finally:
        if conn is not None:
            await conn.close()
    return result


async def run_receiver_room(args: Args, nameplate: str, gate: asyncio.Semaphore) -> RoomResult:
    result = RoomResult(nameplate)
    conn = None
    try:
        async with gate:
            conn, _ = await open_room(args, f"/ws/{nameplate}?role=receive&v=2", result)
            await conn.send_json({"type": "pake", "data": opaque(PAKE_SIZE)})
            await expect(conn, "pake", ())
            await expect(conn, "confirm", ())
            await conn.send_json({"type": "confirm", "data": opaque(CONFIRM_SIZE)})
            await expect(conn, "key", ())
            await expect(conn, "offer", ())
            result.offer_at = time.monotonic()
            await conn.send_json({"type": "accept", "data": opaque(TAG)})
            result.start_at = time.monotonic()
            stream = await expect(conn, "stream", ())
            if args.concurrency > 0:
                # Pairing-latency mode: hold the slot until the first payload byte is in.
                await conn.first_byte.wait()
        await expect(conn, "end", ())
        await conn.send_json({"type": "ack", "epoch": 0, "chunks": stream["chunks"]})
        await conn.send_json({"type": "verified"})
        await expect(conn, "complete", ())
        result.end_at = time.monotonic()
        result.payload_bytes = conn.binary_bytes
        result.first_byte_at = conn.first_byte_at or 0.0
        result.last_byte_at = conn.last_byte_at or 0.0
        result.ok = conn.binary_bytes == stream["bytes"] and conn.chunk_headers == stream["chunks"]
        if not result.ok:
            result.error = (f"received {conn.binary_bytes} of {stream['bytes']} bytes in {conn.chunk_headers} of "
                            f"{stream['chunks']} chunks")
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
    if args.role == "send":
        frames = ChunkFrames(args.size, min(args.chunk, MAX_MESSAGE - TAG))
        ready = asyncio.Event()
        opened = [""] * args.rooms
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        tasks = [asyncio.create_task(run_sender_room(args, index, frames, ready, opened, gate))
                 for index in range(args.rooms)]
        await ready.wait()
        nameplates = [nameplate for nameplate in opened if nameplate]
        emit("ready", rooms=len(nameplates), nameplates=nameplates)
        if args.hold:
            await wait_for_stdin_eof()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return [RoomResult(nameplate, ok=True) for nameplate in nameplates]
        return list(await asyncio.gather(*tasks))
    gate = asyncio.Semaphore(args.concurrency if args.concurrency > 0 else OPEN_CONCURRENCY)
    tasks = [run_receiver_room(args, nameplate, gate) for nameplate in args.nameplates]
    return list(await asyncio.gather(*tasks))


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadclient", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rooms", type=int, default=1, help="sender: rooms to open")
    parser.add_argument("--nameplates", default="", help="receiver: the sender's nameplates, comma-separated")
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
    nameplates = [n for n in ns.nameplates.split(",") if n]
    if ns.role == "receive" and not nameplates:
        parser.error("a receiver needs --nameplates (the sender prints them in its ready event)")
    return Args(ns.role, ns.host, ns.port, len(nameplates) if ns.role == "receive" else ns.rooms, nameplates,
                ns.size, ns.chunk, ns.receivers,
                ns.concurrency, ns.rate, ns.recv_size, ns.hold, ns.timeout)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed (the relay's own loop): the clients should cost as little CPU as the relay's
    peers would, since they share the machine's cores with the relay under test."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results = runner.run(asyncio.wait_for(run(args), args.timeout))
    except TimeoutError:
        emit("result", role=args.role, rooms=[], error=f"timed out after {args.timeout} s")
        return 2
    emit("result", role=args.role, rooms=[asdict(r) for r in results])
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
