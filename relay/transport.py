"""uvicorn protocol classes with the two guarantees the relay needs below the ASGI layer.

1. **Handshake deadline.** uvicorn's HTTP protocols arm no timer until a first request has completed, so a
   TCP connection that sends nothing, or drips its request headers a byte at a time (slowloris), is held
   open forever. ``http_protocol_class(timeout)`` returns uvicorn's HTTP protocol with a deadline: every
   request's headers (and so the WebSocket upgrade) must be complete within ``timeout`` seconds of the
   connection opening or of the request's first byte, or the relay answers ``408`` and drops the connection.
   There is no WebSocket yet, so no close code can be sent.

2. **Sockets really dropped.** A peer that stops reading makes the socket's write buffer stop draining;
   uvicorn's ``send`` then waits for ``writable`` forever, and asyncio's ``transport.close()`` waits for
   the buffer to drain before it closes, so the socket, its buffer (up to one chunk) and the task reading
   the sender would stay forever. ``RelayWebSocketProtocol`` aborts (RST, buffer discarded) any connection
   still open ``LINGER`` seconds after the application has finished with it, after a keep-alive ping went
   unanswered, or after a server shutdown asked it to close.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseHttp

    _HTTPTOOLS = True
except ImportError:  # httptools is optional: fall back to the pure-Python h11 parser
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseHttp  # type: ignore[assignment]

    _HTTPTOOLS = False

# Seconds a connection may stay open after the app is done with it (the closing handshake takes a round trip).
LINGER = 5.0
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\n"
    b"connection: close\r\n\r\nrequest timeout\n"
)


def binary_frame_header(length: int) -> bytes:
    """The header of one unmasked, final binary frame (RFC 6455 section 5.2) carrying ``length`` bytes."""
    if length < 126:
        return struct.pack("!BB", 0x82, length)
    if length < 1 << 16:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, plus a hard drop of connections that will not close.

    It also writes binary messages without copying them: uvicorn's path serializes each frame into a new
    buffer and joins it again (two copies of every chunk); here the header and the payload go to the
    transport as they are.
    """

    async def send(self, message: Any) -> None:
        data = message.get("bytes") if message["type"] == "websocket.send" else None
        if data is None or not self.handshake_complete or self.close_sent or self.initial_response is not None:
            await super().send(message)
            return
        await self.writable.wait()
        if self.disconnected or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(binary_frame_header(len(data)))
        self.transport.write(data)

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._abort_later()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_later(1.0)

    def shutdown(self) -> None:
        super().shutdown()
        self._abort_later(1.0)

    def _abort_later(self, delay: float = LINGER) -> None:
        if not self.disconnected:
            self.loop.call_later(delay, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self.disconnected and self.transport is not None:
            self.transport.abort()  # connection_lost follows: the queue gets a disconnect, `writable` is set


def http_protocol_class(handshake_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline on every request's headers."""

    class RelayHttpProtocol(_BaseHttp):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if handshake_timeout > 0 and self._deadline is None:
                self._deadline = self.loop.call_later(handshake_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            transport = self.transport
            if transport is None or transport.is_closing() or transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket (which has its own timeouts)
            transport.write(_TIMEOUT_RESPONSE)
            transport.close()
            self.loop.call_later(LINGER, transport.abort)  # a client that does not read the 408 either

        if _HTTPTOOLS:

            def on_message_begin(self) -> None:
                super().on_message_begin()
                self._arm()  # a later request on a kept-alive connection gets its own deadline

            def on_headers_complete(self) -> None:
                self._disarm()
                super().on_headers_complete()

        else:

            def handle_events(self) -> None:
                super().handle_events()
                if self.scope is not None:
                    self._disarm()

    return RelayHttpProtocol
