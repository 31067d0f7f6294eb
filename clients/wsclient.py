"""A WebSocket client for the data path: frames land in one reusable receive buffer and reach the caller as
``memoryview`` slices of it, without a copy.

Why (measured in ``benchmarks/ws_client_choice.py``, numbers in ``docs/design/speed.md``): with ``websockets``
each 1 MiB frame arrives as four or five reads of up to 256 KiB, each copied into a stream buffer, then joined
into a ``bytes`` object and handed over through a queue (0.85-1.44 CPU-s per GiB received). Here the kernel
copies straight into the buffer (``BufferedProtocol``, reads as large as the free space), headers are parsed in
place (:mod:`clients.wsframes`), and the consumer is woken only when a whole frame is there (0.27).

What stays exactly as with ``websockets.connect`` (the CLI's control path still uses it): ``ws://`` and ``wss://``
(TLS through the event loop, certificate checked against the host name), an ``Authorization`` (or any other)
header on the upgrade request, and proxies from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` as
``clients.connection.proxy_for`` picks them: ``http://``/``https://`` proxies are tunnelled with ``CONNECT`` and
``socks*://`` ones through ``python-socks``, both by websockets' own helpers, so the proxy behaviour is one code.

Buffer life cycle (why the view from :meth:`WebSocketClient.recv` is valid until the next call only)::

    [ consumed | held frame (the caller's memoryview) | parsed-ahead bytes ... | free tail ]
    0          _held                                  _start                  _end        capacity

The event loop reads into the free tail. When it gets short, the unparsed bytes move to the front, but only
while no frame is held (else reading pauses until the next ``recv``), so a view handed out is never overwritten.
Memory is one buffer of about twice the largest frame, whatever the file size: it starts at 64 KiB (a control
connection stays there) and grows to twice the largest frame seen plus a read's worth, at most ``max_size``.

Exceptions: :class:`HandshakeFailed` (the server did not upgrade: status and a short reason),
:class:`ConnectionClosed` (close code and reason as received, 1006 when the connection dropped without one),
:class:`clients.wsframes.FrameError` is turned into a close with its code and a ``ConnectionClosed``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl as ssl_module
from typing import Any, NamedTuple, cast
from urllib.parse import quote, urlsplit

from clients import wsframes as wf
from clients.wsframes import FrameError, Opcode

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024  # the 101 response's status line and headers
MIN_READ = 256 * 1024  # keep at least this much free tail, so that one read can take a socket buffer's worth
INITIAL_CAPACITY = 64 * 1024  # a connection that only ever carries control messages stays this small
WRITE_HIGH_WATER = 4 * 1024 * 1024
CLOSE_TIMEOUT = 5.0
SMALL_FRAME = 16 * 1024  # below this, header and payload go out as one write (one segment)


class HandshakeFailed(Exception):
    """The server answered the upgrade request with something other than a valid ``101``."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"the WebSocket upgrade failed ({status or 'no status'}): {reason}")
        self.status = status
        self.reason = reason


class BadWebSocketUrl(ValueError):
    """Not a ``ws://`` or ``wss://`` URL with a host and a valid port (or it has a fragment): nothing was opened."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url[:200]} is not a WebSocket URL: {why}")
        self.url = url


class ProxyUnusable(ValueError):
    """The proxy setting cannot be used: not a proxy URL websockets can tunnel through (its ``InvalidProxy``)."""


class ProxyFailed(Exception):
    """The proxy did not open the tunnel (websockets' ``InvalidHandshake``: a refusal, a bad answer, a SOCKS error)."""


class ConnectionClosed(Exception):
    """The WebSocket is closed: ``code``/``reason`` from the server's close frame, 1006 if there was none."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class RecvInProgress(RuntimeError):
    """Another task is already waiting in :meth:`WebSocketClient.recv` (one reader at a time)."""


class WebSocketClient(asyncio.BufferedProtocol):
    """One client WebSocket: :meth:`connect`, then :meth:`recv`/:meth:`send_binary`/:meth:`send_text`/:meth:`close`.

    One task may call :meth:`recv` at a time; sends may come from any task (each frame is written whole).
    Pings are answered as soon as they are read, even while nobody is in :meth:`recv` (a person deciding on an
    offer); a data path that stops reading fills the buffer, reading pauses, and pings wait behind the data.
    """

    def __init__(self, request: bytes, key: bytes, max_size: int) -> None:
        self.max_size = max_size
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self._max_capacity = 2 * (max_size + wf.MAX_HEADER_SIZE) + MIN_READ
        capacity = min(INITIAL_CAPACITY, self._max_capacity)
        self._buffer = bytearray(capacity)
        self._view = memoryview(self._buffer)
        self._capacity = capacity
        self._min_read = min(MIN_READ, capacity // 4)
        self._start = self._end = 0
        self._holding = False
        self._need = 0  # wake the reader once _end reaches this
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writable: asyncio.Event = asyncio.Event()
        self._writable.set()
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed: ConnectionClosed | None = None
        self._close_sent = False
        self._fragments: bytearray | None = None
        self._receiving = False
        self._scan = 0  # the next frame header _scan_for_close has not looked at
        self._close_frame: ConnectionClosed | None = None  # the server's close, seen ahead of the reader
        self._fragment_opcode = Opcode.BINARY
        self.response_headers: dict[str, str] = {}

    # --- opening -------------------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, *, headers: dict[str, str] | None = None, proxy: str | None = None,
                      max_size: int = 1 << 20, open_timeout: float = 15.0,
                      ssl: ssl_module.SSLContext | None = None) -> WebSocketClient:
        """Open ``url`` (``ws://`` or ``wss://``), through ``proxy`` if given, and complete the upgrade.

        Raises :class:`BadWebSocketUrl` for a URL that is not one, ``OSError``/``TimeoutError`` when the server or
        proxy cannot be reached, :class:`ProxyUnusable`/:class:`ProxyFailed` for proxy trouble,
        :class:`HandshakeFailed` when the server refuses.
        """
        async with asyncio.timeout(open_timeout):
            return await cls._connect(url, headers or {}, proxy, max_size, ssl)

    @classmethod
    async def _connect(cls, url: str, headers: dict[str, str], proxy: str | None, max_size: int,
                       ssl: ssl_module.SSLContext | None) -> WebSocketClient:
        uri = parse_websocket_url(url)
        key = base64.b64encode(os.urandom(16))
        protocol = cls(_upgrade_request(uri.host, uri.port, uri.secure, uri.resource_name, key, headers), key,
                       max_size)
        loop = asyncio.get_running_loop()
        tls: ssl_module.SSLContext | None = None
        if uri.secure:
            tls = ssl or ssl_module.create_default_context()
        if proxy is None:
            await loop.create_connection(lambda: protocol, uri.host, uri.port, ssl=tls,
                                         server_hostname=uri.host if tls else None)
        else:
            await _through_proxy(loop, protocol, url, uri, proxy, tls)
        try:
            await protocol._handshake
        except BaseException:
            protocol.abort()
            raise
        return protocol

    # --- asyncio callbacks ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._transport.write(self._request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        if not self._handshake.done():
            self._read_response()
            if not self._handshake.done():
                if self._end - self._start > MAX_RESPONSE_HEAD:
                    self._fail_handshake(HandshakeFailed(None, "the response head is too long"))
                return
        self._scan_for_close()
        if self._capacity - self._end < self._min_read:
            if not self._holding:
                self._compact()
            if self._capacity - self._end < self._min_read:
                self._pause_reading()
        if self._waiter is not None and self._end >= self._need and not self._waiter.done():
            self._waiter.set_result(None)

    def _scan_for_close(self) -> None:
        """Walk the headers of the frames read but not yet received; answer a ping and a close frame at once.

        As websockets does: the server's keep-alive pings are answered and its close handshake completes even
        while the caller is busy elsewhere (for instance waiting for a person to accept; the relay drops a peer
        whose pong does not come within 60 s), and a send after a close fails at once with the close code. The
        frames before the close stay queued, so the message that says why (``peer_left``, ``error``) is still
        received in order. A header that does not parse is left for :meth:`recv` to report.
        """
        position = max(self._scan, self._start)
        while self._close_frame is None:
            try:
                header = wf.parse_header(self._buffer, position, self._end, self.max_size)
            except FrameError:
                break
            if header is None or header.end > self._end:
                break
            if header.opcode is Opcode.PING:
                self._send_pong(bytes(self._view[header.payload_start:header.end]))
            elif header.opcode is Opcode.CLOSE:
                try:
                    code, reason = wf.parse_close(bytes(self._view[header.payload_start:header.end]))
                except FrameError:
                    break
                self._close_frame = ConnectionClosed(code or 1005, reason)
                self._send_close_reply(code or 1000)
            position = header.end
        self._scan = position

    def _send_pong(self, payload: bytes) -> None:
        if not self._close_sent and self._transport is not None and not self._transport.is_closing():
            key = wf.new_mask_key()
            self._transport.write(wf.client_header(Opcode.PONG, len(payload), key) + wf.apply_mask(payload, key))

    def _send_close_reply(self, code: int) -> None:
        if not self._close_sent and self._transport is not None and not self._transport.is_closing():
            self._close_sent = True
            key = wf.new_mask_key()
            payload = wf.close_payload(code, "")
            self._transport.write(wf.client_header(Opcode.CLOSE, len(payload), key) + wf.apply_mask(payload, key))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is None:  # after a close frame seen ahead of the reader, the close is that one
            self._closed = self._close_frame or ConnectionClosed(1006, "the connection dropped without a close frame")
        if not self._handshake.done():
            self._fail_handshake(HandshakeFailed(None, "the connection closed during the upgrade"))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- receiving -----------------------------------------------------------------------------------------

    async def recv(self) -> str | memoryview:
        """The next message: ``str`` for text, a ``memoryview`` of the receive buffer for binary, valid only
        until the next call. Raises :class:`ConnectionClosed` once the server closed (after answering its close),
        and :class:`RecvInProgress` if another task is already receiving.
        """
        if self._receiving:
            raise RecvInProgress("another task is already receiving on this WebSocket")
        self._receiving = True
        try:
            return await self._recv()
        finally:
            self._receiving = False

    async def _recv(self) -> str | memoryview:
        self._holding = False
        while True:
            if self._closed is not None and self._end - self._start < 2:
                raise self._closed
            try:
                header = wf.parse_header(self._buffer, self._start, self._end, self.max_size)
            except FrameError as exc:
                await self._fail(exc)
                raise AssertionError("unreachable") from exc
            if header is None or header.end > self._end:
                if self._closed is not None:
                    raise self._closed
                # a header still incomplete: wake on any new byte; a payload: wake when the whole frame is there
                wanted = self._end - self._start + 1 if header is None else header.end - self._start
                if self._start + wanted > self._capacity or self._capacity - self._end < self._min_read:
                    self._compact()
                    if wanted + self._min_read > self._capacity:
                        self._grow(wanted)
                self._need = self._start + wanted
                self._resume_reading()
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            self._start = header.end
            payload = self._view[header.payload_start:header.end]
            message = await self._handle(header, payload)
            if message is not None:
                self._holding = isinstance(message, memoryview)
                if self._reading_paused and self._capacity - self._end >= self._min_read:
                    self._resume_reading()
                return message

    async def _handle(self, header: wf.FrameHeader, payload: memoryview) -> str | memoryview | None:
        opcode = header.opcode
        if opcode is Opcode.PING or opcode is Opcode.PONG:
            return None  # a ping was answered when it arrived (_scan_for_close)
        if opcode is Opcode.CLOSE:
            try:
                code, reason = wf.parse_close(bytes(payload))
            except FrameError as exc:
                await self._fail(exc)
                raise AssertionError("unreachable") from exc
            self._closed = ConnectionClosed(code or 1005, reason)
            await self._finish_close(code or 1000, "")
            raise self._closed
        if opcode is Opcode.CONTINUATION:
            if self._fragments is None:
                await self._fail(FrameError("a continuation frame without a first fragment"))
            assert self._fragments is not None
            if len(self._fragments) + len(payload) > self.max_size:
                await self._fail(FrameError("a fragmented message over the size limit", close_code=1009))
            self._fragments += payload
            if not header.fin:
                return None
            whole, self._fragments = bytes(self._fragments), None
            return await self._message(self._fragment_opcode, memoryview(whole))
        if self._fragments is not None:
            await self._fail(FrameError("a new message before the previous one's last fragment"))
        if not header.fin:
            self._fragments, self._fragment_opcode = bytearray(payload), opcode
            return None
        return await self._message(opcode, payload)

    async def _message(self, opcode: Opcode, payload: memoryview) -> str | memoryview:
        if opcode is Opcode.TEXT:
            try:
                return str(payload, "utf-8")
            except UnicodeDecodeError:
                await self._fail(FrameError("a text message that is not UTF-8", close_code=1007))
        return payload

    def _compact(self) -> None:
        """Move the unparsed bytes to the front (only while no frame is held by the caller)."""
        if self._holding or self._start == 0:
            return
        size = self._end - self._start
        self._buffer[:size] = self._view[self._start:self._end]
        self._scan = max(self._scan - self._start, 0)
        self._need = max(self._need - self._start, 0)  # a waiting reader's target moves with the bytes
        self._start, self._end = 0, size

    def _grow(self, wanted: int) -> None:
        """Move to a buffer that holds two frames of ``wanted`` bytes and a read's worth behind them (at most
        ``max_size`` frames: the limit was checked with the header). Called with the unparsed bytes at the front
        and no frame held, so nothing handed out points into the old buffer."""
        capacity = min(self._max_capacity, max(2 * self._capacity, 2 * wanted + MIN_READ))
        if capacity <= self._capacity:
            return
        size = self._end - self._start
        buffer = bytearray(capacity)
        buffer[:size] = self._view[self._start:self._end]
        self._scan = max(self._scan - self._start, 0)
        self._need = max(self._need - self._start, 0)
        self._buffer, self._view, self._capacity = buffer, memoryview(buffer), capacity
        self._min_read = min(MIN_READ, capacity // 4)
        self._start, self._end = 0, size

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
            self._reading_paused = True

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
            self._reading_paused = False

    # --- the upgrade ---------------------------------------------------------------------------------------

    def _read_response(self) -> None:
        head_end = self._buffer.find(b"\r\n\r\n", self._start, self._end)
        if head_end < 0:
            return
        head = bytes(self._view[self._start:head_end]).decode("latin-1")
        self._start = head_end + 4
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self._fail_handshake(HandshakeFailed(None, "the response is not HTTP/1.1"))
            return
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                self._fail_handshake(HandshakeFailed(status, "a malformed response header"))
                return
            headers[name.strip().lower()] = value.strip()
        self.response_headers = headers
        if status != 101:
            self._fail_handshake(HandshakeFailed(status, parts[2][:200] if len(parts) > 2 else ""))
        elif headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get(
                "connection", "").lower():
            self._fail_handshake(HandshakeFailed(status, "the response does not upgrade to a WebSocket"))
        elif headers.get("sec-websocket-accept", "").encode("ascii", "replace") != self._accept:
            self._fail_handshake(HandshakeFailed(status, "wrong Sec-WebSocket-Accept"))
        elif headers.get("sec-websocket-extensions"):
            self._fail_handshake(HandshakeFailed(status, "the server chose an extension we did not offer"))
        else:
            self._handshake.set_result(None)

    def _fail_handshake(self, exc: HandshakeFailed) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(exc)
        self.abort()

    # --- sending -------------------------------------------------------------------------------------------

    async def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send one binary message (masked with a fresh key); waits while the transport's buffer is full."""
        await self._send_frame(Opcode.BINARY, data)

    async def send_text(self, text: str) -> None:
        await self._send_frame(Opcode.TEXT, text.encode("utf-8"))

    async def _send_frame(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> None:
        if self._closed is not None:
            raise self._closed
        if self._close_frame is not None:
            raise self._close_frame
        if self._close_sent or self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(1006, "the connection is closing")
        await self._writable.wait()
        if self._closed is not None:
            raise self._closed
        key = wf.new_mask_key()
        header = wf.client_header(opcode, len(data), key)
        masked = wf.apply_mask(data, key)
        if len(masked) < SMALL_FRAME:
            self._transport.write(header + masked)
        else:  # not joined: the payload is not copied again for its 14-byte header
            self._transport.write(header)
            self._transport.write(masked)

    # --- closing -------------------------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once), wait for the server's (bounded), then close the transport."""
        if self._transport is None or self._transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            key = wf.new_mask_key()
            payload = wf.close_payload(code, reason)
            self._transport.write(wf.client_header(Opcode.CLOSE, len(payload), key) + wf.apply_mask(payload, key))
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while self._closed is None:
                    try:
                        await self.recv()
                    except (ConnectionClosed, FrameError, RecvInProgress):
                        break
        except TimeoutError:
            pass
        self.abort()

    async def _finish_close(self, code: int, reason: str) -> None:
        if not self._close_sent and self._transport is not None and not self._transport.is_closing():
            self._close_sent = True
            key = wf.new_mask_key()
            payload = wf.close_payload(code, reason)
            self._transport.write(wf.client_header(Opcode.CLOSE, len(payload), key) + wf.apply_mask(payload, key))
        if self._transport is not None:
            self._transport.close()

    async def _fail(self, exc: FrameError) -> None:
        """The server broke the protocol: close with the error's code and raise ``ConnectionClosed``."""
        self._closed = ConnectionClosed(exc.close_code, str(exc))
        await self._finish_close(exc.close_code, str(exc)[:100])
        raise self._closed from exc

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection ended, once it has."""
        return self._closed

    @property
    def transport(self) -> asyncio.Transport:
        """The underlying transport (``abort()`` it to drop the connection without a close handshake)."""
        assert self._transport is not None
        return self._transport


def _upgrade_request(host: str, port: int, secure: bool, resource: str, key: bytes,
                     headers: dict[str, str]) -> bytes:
    default_port = 443 if secure else 80
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port == default_port else f"{host_text}:{port}"
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode('ascii')}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError("a header name or value holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class WebSocketUrl(NamedTuple):
    """What opening a WebSocket needs from its URL: TLS or not, the host (IDNA), the port, the request target."""

    secure: bool
    host: str
    port: int
    resource_name: str


# RFC 3987's gen-delims and sub-delims: kept as they are when an IRI's path or query is made a URI
_DELIMS = ":/?#[]@!$&'()*+,;="


def parse_websocket_url(url: str) -> WebSocketUrl:
    """Split a ``ws://``/``wss://`` URL as websockets' ``parse_uri`` does (the default port, ``/`` for an empty
    path, a non-ASCII host in IDNA and a non-ASCII path or query percent-encoded), without importing websockets
    for it: importing any part of websockets imports ``importlib.metadata`` (docs/design/speed.md section 16).

    A user name or password is refused rather than ignored (a relay's token goes in ``RELAY_TOKEN``).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an unbalanced "[", a port that is not a number from 0 to 65535
        raise BadWebSocketUrl(url, str(exc)) from None
    if parts.scheme not in ("ws", "wss"):
        raise BadWebSocketUrl(url, "the scheme is not ws or wss")
    if not parts.hostname:
        raise BadWebSocketUrl(url, "there is no host")
    if parts.fragment or url.endswith("#"):
        raise BadWebSocketUrl(url, "a fragment means nothing to a WebSocket")
    if parts.username is not None or parts.password is not None:
        raise BadWebSocketUrl(url, "no user name or password in the URL")
    secure = parts.scheme == "wss"
    host, path, query = parts.hostname, parts.path, parts.query
    if not url.isascii():  # an IRI: made a URI
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadWebSocketUrl(url, f"the host is not a valid international name ({exc})") from None
        path, query = quote(path, safe=_DELIMS), quote(query, safe=_DELIMS)
    resource_name = (path or "/") + (f"?{query}" if query else "")
    return WebSocketUrl(secure, host, port or (443 if secure else 80), resource_name)


async def _through_proxy(loop: asyncio.AbstractEventLoop, protocol: WebSocketClient, url: str, uri: WebSocketUrl,
                         proxy: str, tls: ssl_module.SSLContext | None) -> None:
    """Open the tunnel with websockets' own helpers (``CONNECT``, or SOCKS with python-socks) and start the
    upgrade through it. websockets is imported here only: a connection without a proxy never needs it (about
    10 ms of every start, ``importlib.metadata`` included). Its exceptions become :class:`ProxyUnusable` and
    :class:`ProxyFailed`, so that callers need not import it either."""
    from websockets.asyncio.client import connect_http_proxy, connect_socks_proxy
    from websockets.exceptions import InvalidHandshake, InvalidProxy, InvalidURI
    from websockets.proxy import parse_proxy
    from websockets.uri import parse_uri

    try:
        parsed = parse_proxy(proxy)
        target = parse_uri(url)
        if parsed.scheme.startswith("socks"):
            sock = await connect_socks_proxy(parsed, target)
            await loop.create_connection(lambda: protocol, sock=sock, ssl=tls,
                                         server_hostname=uri.host if tls else None)
            return
        proxy_kwargs: dict[str, Any] = {"ssl": True} if parsed.scheme == "https" else {}
        transport = await connect_http_proxy(parsed, target, **proxy_kwargs)
    except InvalidProxy as exc:
        raise ProxyUnusable(str(exc)) from exc
    except InvalidURI as exc:
        raise BadWebSocketUrl(url, str(exc)) from exc
    except InvalidHandshake as exc:
        raise ProxyFailed(str(exc)) from exc
    transport.set_protocol(protocol)
    if tls is not None:
        started = await loop.start_tls(transport, protocol, tls, server_hostname=uri.host)
        assert started is not None
        transport = started
    protocol.connection_made(transport)
