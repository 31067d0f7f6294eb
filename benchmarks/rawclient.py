"""Load clients for the baselines: plain TCP (the asyncio TCP relay, socat) and HTTP (piping-server).

    python -m benchmarks.rawclient send --kind tcp-relay --port P --room r --size N --chunk C
    python -m benchmarks.rawclient receive --kind piping --port P --room r --size N

Blocking sockets, one reusable payload buffer, ``sendall`` per chunk, ``recv_into`` one large buffer: as
cheap as the WebSocket load clients, so side-by-side numbers compare relays, not clients. Output is the
same JSON lines as ``benchmarks.loadclient`` (``ready``, then ``result`` with one room).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict

from benchmarks.loadclient import RoomResult

KINDS = ("tcp-relay", "socat", "piping")
HEAD_LIMIT = 64 * 1024
SENDER_DRAIN_LIMIT = 1 << 20


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_http_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return ``(head, first_body_bytes)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        if not more or len(data) > HEAD_LIMIT:
            raise ConnectionError("connection closed before the HTTP response head")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def send(kind: str, host: str, port: int, room: str, size: int, chunk: int, timeout: float) -> RoomResult:
    result = RoomResult(room, connect_at=time.monotonic())
    payload = os.urandom(min(chunk, size) or 1)
    sock = connect(host, port, timeout)
    with sock:
        if kind == "tcp-relay":
            sock.sendall(f"S {room}\n".encode())
        elif kind == "piping":
            sock.sendall(
                f"PUT /{room} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
        emit("ready", rooms=1)
        result.start_at = time.monotonic()
        full, tail = divmod(size, chunk)
        view = memoryview(payload)
        for _ in range(full):
            sock.sendall(view)
        if tail:
            sock.sendall(view[:tail])
        result.payload_bytes = size
        if kind == "piping":
            _drain_until(sock, b"[INFO] All receiver(s) was/were received successfully.", timeout)
        else:
            sock.shutdown(socket.SHUT_WR)
            _drain_until(sock, None, timeout)
    result.end_at = time.monotonic()
    result.ok = True
    return result


def _drain_until(sock: socket.socket, marker: bytes | None, timeout: float) -> None:
    """Read what the relay says back until ``marker`` (or EOF), so closing never resets unsent data."""
    sock.settimeout(timeout)
    seen = b""
    while len(seen) < SENDER_DRAIN_LIMIT:
        more = sock.recv(65536)
        if not more:
            return
        seen += more
        if marker is not None and marker in seen:
            return


def receive(kind: str, host: str, port: int, room: str, size: int, recv_size: int, timeout: float) -> RoomResult:
    result = RoomResult(room, connect_at=time.monotonic())
    buffer = bytearray(recv_size)
    received = 0
    sock = connect(host, port, timeout)
    with sock:
        if kind == "tcp-relay":
            sock.sendall(f"R {room}\n".encode())
        elif kind == "piping":
            sock.sendall(f"GET /{room} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head, rest = read_http_head(sock)
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
            if rest:
                result.first_byte_at = time.monotonic()
                received = len(rest)
        result.start_at = time.monotonic()
        while received < size:
            count = sock.recv_into(buffer)
            if count == 0:
                break
            if received == 0:
                result.first_byte_at = time.monotonic()
            received += count
        result.last_byte_at = time.monotonic()
    result.end_at = result.last_byte_at
    result.payload_bytes = received
    result.ok = received == size
    if not result.ok:
        result.error = f"received {received} of {size} bytes"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rawclient", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("send", "receive"))
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--room", default="bench")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--recv-size", type=int, default=1 << 20)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        if args.role == "send":
            result = send(args.kind, args.host, args.port, args.room, args.size, args.chunk, args.timeout)
        else:
            result = receive(args.kind, args.host, args.port, args.room, args.size, args.recv_size, args.timeout)
    except OSError as exc:
        result = RoomResult(args.room, error=f"{type(exc).__name__}: {exc}")
    emit("result", role=args.role, rooms=[asdict(result)])
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
