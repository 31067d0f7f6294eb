"""A WebSocket client connection over a raw non-blocking socket, for the load clients.

Writes go straight to ``socket.sendmsg`` (header and payload frames in one system call, no copy); reads go
into one reusable buffer and through ``FrameScanner``. Text messages are queued as parsed JSON, except chunk
headers, which a load receiver has no use for and which are only counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Coroutine
from typing import Any

from benchmarks.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameScanner,
    client_close,
    client_frame,
    handshake_request,
    split_handshake_response,
)

_CHUNK_PREFIX = '{"type":"chunk"'
HANDSHAKE_LIMIT = 64 * 1024


class ConnectionClosed(Exception):
    """The relay closed the connection; ``code`` is its close code (None if the TCP stream just ended)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed with code {code} {reason}".strip())
        self.code = code


class WsConnection:
    """One client WebSocket. Create with ``await WsConnection.open(...)``; it starts its own reader task."""

    def __init__(self, sock: socket.socket, recv_size: int, rate: float | None) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue[dict | ConnectionClosed] = asyncio.Queue()
        self.binary_bytes = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.chunk_headers = 0
        self.close_code: int | None = None
        self.first_byte = asyncio.Event()  # set at the first payload byte, or when the stream ends
        self._write_lock = asyncio.Lock()
        self._recv_buffer = bytearray(recv_size)
        self._rate = rate
        self._scanner = FrameScanner(self._on_text, self._on_binary, self._on_control)
        self._reader: asyncio.Task | None = None
        self._replies: set[asyncio.Future[None]] = set()  # pongs and the close answer, kept until written

    @classmethod
    async def open(
        cls, host: str, port: int, target: str, *, recv_size: int = 1 << 20, rate: float | None = None
    ) -> WsConnection:
        """Connect and upgrade. ``rate`` (bytes/s) makes the reader pace itself like a slow receiver."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, handshake_request(host, port, target))
            head = b""
            parsed = None
            while parsed is None:
                data = await loop.sock_recv(sock, 4096)
                if not data or len(head) > HANDSHAKE_LIMIT:
                    raise ConnectionClosed(None, "during the handshake")
                head += data
                parsed = split_handshake_response(head)
        except BaseException:
            sock.close()
            raise
        conn = cls(sock, recv_size, rate)
        if parsed[1]:
            conn._scanner.feed(memoryview(parsed[1]))
        conn._reader = asyncio.create_task(conn._read_loop())
        return conn

    async def send_parts(self, *parts: bytes) -> None:
        """Write complete frames in order, with one ``sendmsg`` when the socket buffer has room."""
        async with self._write_lock:
            try:
                sent = self.sock.sendmsg(parts)
            except BlockingIOError:
                sent = 0
            for part in parts:
                size = len(part)
                if sent >= size:
                    sent -= size
                    continue
                await self.loop.sock_sendall(self.sock, memoryview(part)[sent:])
                sent = 0

    async def send_json(self, message: dict) -> None:
        await self.send_parts(client_frame(0x1, json.dumps(message, separators=(",", ":")).encode()))

    async def next_message(self) -> dict:
        """The next text message (chunk headers excluded); raises ``ConnectionClosed`` after the close."""
        item = await self.messages.get()
        if isinstance(item, ConnectionClosed):
            self.messages.put_nowait(item)
            raise item
        return item

    async def close(self, wait: float = 2.0) -> None:
        """Send a close frame, wait (at most ``wait`` seconds) for the relay to end the stream, release the socket."""
        try:
            if self.close_code is None:
                await asyncio.wait_for(self.send_parts(client_close(1000)), wait)
            if self._reader is not None:
                await asyncio.wait_for(asyncio.shield(self._reader), wait)
        except (TimeoutError, OSError):
            pass
        finally:
            if self._reader is not None:
                self._reader.cancel()
            self.sock.close()

    async def _read_loop(self) -> None:
        view = memoryview(self._recv_buffer)
        rate = self._rate
        started = time.monotonic()
        try:
            while True:
                size = await self.loop.sock_recv_into(self.sock, self._recv_buffer)
                if size == 0:
                    break
                self._scanner.feed(view[:size])
                if rate is not None:
                    ahead = self.binary_bytes / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        except OSError:
            pass
        finally:
            self.first_byte.set()
            self.messages.put_nowait(ConnectionClosed(self.close_code))

    def _on_text(self, text: str) -> None:
        if text.startswith(_CHUNK_PREFIX):
            self.chunk_headers += 1
            return
        message = json.loads(text)
        if message.get("type") == "chunk":
            self.chunk_headers += 1
            return
        self.messages.put_nowait(message)

    def _on_binary(self, size: int) -> None:
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
            self.first_byte.set()
        self.last_byte_at = now
        self.binary_bytes += size

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self._reply(self.send_parts(client_frame(OP_PONG, payload)))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._reply(self._answer_close())

    def _reply(self, sending: Coroutine[Any, Any, None]) -> None:
        future = asyncio.ensure_future(sending)
        self._replies.add(future)
        future.add_done_callback(self._replies.discard)

    async def _answer_close(self) -> None:
        try:
            await self.send_parts(client_close(1000))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
