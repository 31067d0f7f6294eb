"""The data path's WebSocket: ``picows`` when it is installed, else :class:`clients.wsclient.WebSocketClient`.

Why picows first (``python -m benchmarks.ws_client_choice``, 1 GiB in 1 MiB frames on loopback, client CPU-s per
GiB, two runs each on this 2-core machine)::

                    receiving (down)    sending (up, masked)
    websockets 17   0.85 / 1.44         0.61 / 1.19
    wsclient        0.27 / 0.27         0.46 / 0.44
    picows 2.3      0.10 / 0.17         0.23 / 0.31

picows (Cython, MIT, maintained, wheels for CPython 3.9+ on Linux x86-64/aarch64, macOS x86-64/arm64 and Windows)
also does what the CLI needs: ``wss://`` with an ``ssl`` context, extra headers (``Authorization``), HTTP and
SOCKS proxies. Where it is not installed (no wheel for the platform, PyPy...), the pure-Python
:class:`~clients.wsclient.WebSocketClient` speaks the same interface; ``RELAY_WEBSOCKET=wsclient`` forces it.

picows hands a frame to a callback with a view valid only during the callback, so :class:`PicowsSocket` copies
each payload into one of a few preallocated slots (0.03 CPU-s per GiB) and pauses reading while the slots are in
use: memory stays ``SLOTS * max_size`` whatever the file size. Both implementations raise the same
:class:`~clients.wsclient.HandshakeFailed` and :class:`~clients.wsclient.ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
from collections import deque
from typing import Any, Protocol

from clients.wsclient import ConnectionClosed, HandshakeFailed, WebSocketClient

try:
    import picows  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - exercised where picows has no wheel
    picows = None  # type: ignore[assignment]

SLOTS = 4
CLOSE_TIMEOUT = 5.0
IMPLEMENTATIONS = ("picows", "wsclient")


class DataSocket(Protocol):
    """What the data path uses: one reader task, any number of sending tasks."""

    async def recv(self) -> str | memoryview:
        """The next message; a binary one is a view valid until the next call."""
        ...

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None: ...

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def abort(self) -> None: ...


def available() -> tuple[str, ...]:
    """The implementations importable here, preferred first."""
    return IMPLEMENTATIONS if picows is not None else ("wsclient",)


def chosen(implementation: str | None = None) -> str:
    """Which implementation :func:`connect` uses: the argument, else ``RELAY_WEBSOCKET``, else the fastest."""
    name = implementation or os.environ.get("RELAY_WEBSOCKET") or available()[0]
    if name not in available():
        raise ValueError(f"WebSocket implementation {name!r} is not available here (have: {', '.join(available())})")
    return name


async def connect(url: str, *, headers: dict[str, str] | None = None, proxy: str | None = None,
                  max_size: int = 1 << 20, open_timeout: float = 15.0, ssl: ssl_module.SSLContext | None = None,
                  implementation: str | None = None) -> DataSocket:
    """Open the data path's WebSocket (same arguments and errors as :meth:`WebSocketClient.connect`)."""
    if chosen(implementation) == "picows":
        return await PicowsSocket.connect(url, headers=headers, proxy=proxy, max_size=max_size,
                                          open_timeout=open_timeout, ssl=ssl)
    return await WebSocketClient.connect(url, headers=headers, proxy=proxy, max_size=max_size,
                                         open_timeout=open_timeout, ssl=ssl)


class PicowsSocket:
    """picows behind the :class:`DataSocket` interface (see the module docstring for the slot scheme)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._free: deque[bytearray] = deque(bytearray(max_size) for _ in range(SLOTS))
        self._ready: deque[str | tuple[bytearray, int]] = deque()
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._held: bytearray | None = None
        self._fragments: bytearray | None = None
        self._fragment_text = False
        self._closed: ConnectionClosed | None = None
        self._reading_paused = False
        self._transport: Any = None

    @classmethod
    async def connect(cls, url: str, *, headers: dict[str, str] | None = None, proxy: str | None = None,
                      max_size: int = 1 << 20, open_timeout: float = 15.0,
                      ssl: ssl_module.SSLContext | None = None) -> PicowsSocket:
        assert picows is not None
        socket = cls(max_size)
        for name, value in (headers or {}).items():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError("a header name or value holds a line break")
        if url.startswith("wss:") and ssl is None:
            ssl = ssl_module.create_default_context()
        try:
            async with asyncio.timeout(open_timeout):
                transport, _ = await picows.ws_connect(
                    lambda: _Listener(socket), url, ssl_context=ssl, max_frame_size=max_size,
                    extra_headers=headers or None, proxy=proxy, max_redirects=0,
                    websocket_handshake_timeout=open_timeout, enable_auto_pong=True)
        except picows.WSInvalidStatusError as exc:
            response = getattr(exc, "response", None)
            raise HandshakeFailed(getattr(response, "status", None), str(exc)[:200]) from exc
        except picows.WSError as exc:
            raise HandshakeFailed(None, str(exc)[:200]) from exc
        socket._transport = transport
        return socket

    # --- called by picows ----------------------------------------------------------------------------------

    def _on_frame(self, frame: Any) -> None:
        kind = frame.msg_type
        types = picows.WSMsgType
        if kind == types.CLOSE:
            code = frame.get_close_code()
            message = frame.get_close_message() or b""
            self._closed = ConnectionClosed(int(code) if code else 1005, bytes(message).decode("utf-8", "replace"))
            if not self._transport.is_close_frame_sent:
                self._transport.send_close(code if code else picows.WSCloseCode.OK)
            self._transport.disconnect()
            self._arrived.set()
            return
        if kind in (types.PING, types.PONG):
            return  # pings are answered by picows (enable_auto_pong)
        if kind == types.CONTINUATION:
            if self._fragments is None:
                self._protocol_error("a continuation frame without a first fragment")
                return
            if len(self._fragments) + frame.payload_size > self.max_size:
                self._protocol_error("a fragmented message over the size limit", 1009)
                return
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                whole, self._fragments = self._fragments, None
                self._deliver(self._fragment_text, memoryview(whole))
            return
        if self._fragments is not None:
            self._protocol_error("a new message before the previous one's last fragment")
            return
        if not frame.fin:
            self._fragments, self._fragment_text = bytearray(frame.get_payload_as_memoryview()), kind == types.TEXT
            return
        self._deliver(kind == types.TEXT, frame.get_payload_as_memoryview())

    def _deliver(self, text: bool, payload: memoryview) -> None:
        if text:
            try:
                self._ready.append(str(payload, "utf-8"))
            except UnicodeDecodeError:
                self._protocol_error("a text message that is not UTF-8", 1007)
                return
        else:
            # a frame picows had already read when reading paused gets its own buffer: bounded by one read
            slot = self._free.popleft() if self._free else bytearray(len(payload))
            slot[:len(payload)] = payload
            self._ready.append((slot, len(payload)))
            if not self._free:
                self._pause_reading()
        self._arrived.set()

    def _protocol_error(self, why: str, code: int = 1002) -> None:
        self._closed = ConnectionClosed(code, why)
        self._transport.send_close(picows.WSCloseCode(code), why.encode()[:100])
        self._transport.disconnect()
        self._arrived.set()

    def _on_disconnected(self) -> None:
        if self._closed is None:
            self._closed = ConnectionClosed(1006, "the connection dropped without a close frame")
        self._arrived.set()
        self._writable.set()

    def _pause_reading(self) -> None:
        underlying = self._transport.underlying_transport
        if not self._reading_paused and not underlying.is_closing():
            underlying.pause_reading()
            self._reading_paused = True

    def _resume_reading(self) -> None:
        underlying = self._transport.underlying_transport
        if self._reading_paused and not underlying.is_closing():
            underlying.resume_reading()
            self._reading_paused = False

    # --- the DataSocket interface --------------------------------------------------------------------------

    async def recv(self) -> str | memoryview:
        if self._held is not None:
            if len(self._held) == self.max_size and len(self._free) < SLOTS:
                self._free.append(self._held)  # an overflow buffer (another size) is simply dropped
            self._held = None
            self._resume_reading()
        while not self._ready:
            if self._closed is not None:
                raise self._closed
            self._arrived.clear()
            await self._arrived.wait()
        item = self._ready.popleft()
        if isinstance(item, str):
            return item
        slot, length = item
        self._held = slot
        return memoryview(slot)[:length]

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(picows.WSMsgType.BINARY, data)

    async def send_text(self, text: str) -> None:
        await self._send(picows.WSMsgType.TEXT, text.encode("utf-8"))

    async def _send(self, kind: Any, data: bytes | bytearray | memoryview) -> None:
        if self._closed is not None:
            raise self._closed
        await self._writable.wait()
        if self._closed is not None:
            raise self._closed
        self._transport.send(kind, data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._transport.is_disconnected:
            return
        if not self._transport.is_close_frame_sent:
            self._transport.send_close(picows.WSCloseCode(code), reason.encode("utf-8")[:123])
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._transport.wait_disconnected()
        except TimeoutError:
            self._transport.disconnect(graceful=False)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    @property
    def closed(self) -> ConnectionClosed | None:
        return self._closed


if picows is not None:

    class _Listener(picows.WSListener):  # type: ignore[misc,name-defined,unused-ignore]
        def __init__(self, owner: PicowsSocket) -> None:
            super().__init__()
            self.owner = owner

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            self.owner._on_frame(frame)

        def on_ws_disconnected(self, transport: Any) -> None:
            self.owner._on_disconnected()

        def pause_writing(self) -> None:
            self.owner._writable.clear()

        def resume_writing(self) -> None:
            self.owner._writable.set()
