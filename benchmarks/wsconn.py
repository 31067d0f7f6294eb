"""A WebSocket client connection for the load clients, as an asyncio ``BufferedProtocol``.

The socket stays registered with the event loop for its whole life: reads land in one reusable buffer
(``get_buffer``/``buffer_updated``) and go through ``FrameScanner``; writes go through the transport
(``writelines``: header and payload frames in one system call when the socket has room), paced by the
transport's own flow control (``pause_writing``/``resume_writing``). An earlier version awaited
``sock_recv_into``/``sock_sendall`` per read and write, which registers and unregisters the socket with the
selector every time it would block (two ``epoll_ctl`` calls and a future per read): at 64 KiB chunks the two
load clients then used more CPU than the relay they measure, on a 2-core machine where every process shares
the cores. Text messages are queued as parsed JSON, except chunk headers, which a load receiver has no use for
and which are only counted.
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


class WsConnection(asyncio.BufferedProtocol):
    """One client WebSocket. Create with ``await WsConnection.open(...)``."""

    def __init__(self, recv_size: int, rate: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.messages: asyncio.Queue[dict | ConnectionClosed] = asyncio.Queue()
        self.binary_bytes = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.chunk_headers = 0
        self.close_code: int | None = None
        self.first_byte = asyncio.Event()  # set at the first payload byte, or when the stream ends
        self._recv_buffer = bytearray(recv_size)
        self._view = memoryview(self._recv_buffer)
        self._rate = rate
        self._started = time.monotonic()
        self._scanner = FrameScanner(self._on_text, self._on_binary, self._on_control)
        self._head: bytearray | None = bytearray()  # the handshake response until it is complete, then None
        self._upgraded: asyncio.Future[None] = self.loop.create_future()
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self._replies: set[asyncio.Future[None]] = set()  # pongs and the close answer, kept until written

    @classmethod
    async def open(
        cls, host: str, port: int, target: str, *, recv_size: int = 1 << 20, rate: float | None = None
    ) -> WsConnection:
        """Connect and upgrade. ``rate`` (bytes/s) makes the reader pace itself like a slow receiver."""
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(lambda: cls(recv_size, rate), host, port)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(handshake_request(host, port, target))
        try:
            await conn._upgraded
        except BaseException:
            transport.abort()
            raise
        return conn

    # --- protocol callbacks -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._head is not None:
            self._handshake(nbytes)
            return
        self._scanner.feed(self._view[:nbytes])
        if self._rate is not None and self.transport is not None:
            ahead = self.binary_bytes / self._rate - (time.monotonic() - self._started)
            if ahead > 0:
                self.transport.pause_reading()
                self.loop.call_later(ahead, self._resume_reading)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a writer waiting for room finds the transport closing and gives up
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionClosed(None, "during the handshake"))
        if not self._closed.done():
            self._closed.set_result(None)
        self.first_byte.set()
        self.messages.put_nowait(ConnectionClosed(self.close_code))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _handshake(self, nbytes: int) -> None:
        assert self._head is not None
        self._head += self._view[:nbytes]
        parsed = split_handshake_response(bytes(self._head))
        if parsed is None:
            if len(self._head) > HANDSHAKE_LIMIT and self.transport is not None:
                self.transport.abort()
            return
        self._head = None
        if parsed[1]:
            self._scanner.feed(memoryview(parsed[1]))
        if not self._upgraded.done():
            self._upgraded.set_result(None)

    # --- the API the load clients use ---------------------------------------------------------------------

    async def send_parts(self, *parts: bytes) -> None:
        """Write complete frames in order (one ``writev`` when the socket has room); wait while the transport's
        buffer is above its high-water mark. Raises ``ConnectionResetError`` once the connection is closing."""
        if not self._writable.is_set():
            await self._writable.wait()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        transport.writelines(parts)

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
            await asyncio.wait_for(asyncio.shield(self._closed), wait)
        except (TimeoutError, OSError):
            pass
        finally:
            if self.transport is not None:
                self.transport.abort()

    # --- frames -------------------------------------------------------------------------------------------

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
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
        except OSError:
            pass
