"""uvicorn protocol classes with what the relay needs below the ASGI layer.

1. **Forwarding at socket speed.** ``RelayWebSocketProtocol`` reads a room's frames straight into one buffer per
   connection (``relay.framebuffer``), unmasks each chunk once into the ``bytes`` that is forwarded, and gives
   the service a direct ``PeerSocket`` (``relay.sockets``) with no ASGI message per frame. Flow control is the
   transports' own: a send returns once the receiver's transport has handed the whole frame to the kernel (its
   write buffer is empty: its high-water mark is 0), which is at once while the receiver keeps up; the service
   reads the sender's next frame only after every send returned, so the previous chunk is freed before the next
   one is unmasked (a transport that still held a tail of it would keep the whole ``bytes`` alive: 3 chunks per
   room, not 2); the sender's socket is read until its buffer holds the waiting chunk and 16 KiB more, then
   paused. While a streaming sender's small chunks are forwarded from its read callback (``Forwarder``), one
   read brings up to ``framebuffer.BATCH`` bytes: every whole chunk in it is checked by the room, then they all
   leave in one write per receiver (docs/protocol.md section 8 counts that read in the room's memory bound).

2. **Handshake deadline.** uvicorn's HTTP protocols arm no timer until a first request has completed, so a
   TCP connection that sends nothing, or drips its request headers a byte at a time (slowloris), is held
   open forever. ``http_protocol_class(timeout)`` returns uvicorn's HTTP protocol with a deadline: every
   request's headers (and so the WebSocket upgrade) must be complete within ``timeout`` seconds of the
   connection opening or of the request's first byte, or the relay answers ``408`` and drops the connection.
   There is no WebSocket yet, so no close code can be sent. An upgrade whose request line or headers are too
   long for ``websockets`` gets its ``414``/``431`` and is closed at once (uvicorn left it unanswered and open).

3. **Sockets really dropped.** A peer that stops reading makes the socket's write buffer stop draining;
   a send then waits for ``writable`` forever, and asyncio's ``transport.close()`` waits for
   the buffer to drain before it closes, so the socket, its buffer (up to one chunk) and the task reading
   the sender would stay forever. ``RelayWebSocketProtocol`` aborts (RST, buffer discarded) any connection
   still open ``LINGER`` seconds after the application has finished with it, after a keep-alive ping went
   unanswered, or after a server shutdown asked it to close.

What this module uses of uvicorn's and websockets' internals is listed, and checked, in tests/test_transport.py;
pyproject.toml bounds both versions.
"""
from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State

from relay.framebuffer import MIN_READ, FrameBuffer, FrameHeader, NotFastPath
from relay.rooms import PeerGone

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseHttp

    _HTTPTOOLS = True
except ImportError:  # httptools is optional: fall back to the pure-Python h11 parser
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseHttp  # type: ignore[assignment]

    _HTTPTOOLS = False

# The key under which a connection's ``RelayWebSocketProtocol`` is in its ASGI scope's ``extensions``.
EXTENSION = "relay.websocket"
# Stop reading a peer while this much of what it sent waits in its inbox (besides one held binary frame).
INBOX_HIGH = 64 * 1024
# What one queued message counts for besides its length: a flood of empty frames fills the inbox too.
MESSAGE_COST = 64
# Seconds a connection may stay open after the app is done with it (the closing handshake takes a round trip).
LINGER = 5.0
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\n"
    b"connection: close\r\n\r\nrequest timeout\n"
)


# A text frame at most this long (a chunk header is about 90 bytes) may wait in the buffer for the binary frame
# behind it, so that the two are forwarded together.
WAIT_TEXT = 256
CHUNK_PREFIX = b'{"type":"chunk",'  # how every sender's chunk header begins (``SealedChunk.to_json``)
# The largest chunk payload forwarded from the read callback; larger ones go through the app's task, as before.
# Per-chunk costs matter at small chunks (16,384 per GiB at 64 KiB); at 4 MiB chunks, forwarding from the read
# callback held 3 to 5 chunks per room at once (peak RSS +12 to +24 MiB over idle; still +11 with one chunk per
# event-loop turn), past the memory bound of 2 chunks (docs/protocol.md section 8), for a cause not found yet.
# 64 KiB chunks showed no growth (peak = idle within 16 KiB).
FORWARDED_CHUNK = 64 * 1024 + 1024
# Chunks at least this large are read in batches (``framebuffer.BATCH`` per read, at most 16 chunks): smaller ones
# (no client sends them; a hostile sender could) keep the small buffer, or one read callback would check thousands.
BATCHED_CHUNK = 16 * 1024
# What ``RelayWebSocketProtocol._forward`` did with a text frame and the frame behind it.
_DONE, _WAIT, _NO, _FAILED = object(), object(), object(), object()


def binary_frame_header(length: int) -> bytes:
    """The header of one unmasked, final binary frame (RFC 6455 section 5.2) carrying ``length`` bytes."""
    if length < 126:
        return struct.pack("!BB", 0x82, length)
    if length < 1 << 16:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


class BufferedReader(asyncio.BufferedProtocol):
    """The transport's protocol once a connection is upgraded: it lets the loop read into the frame buffer.

    uvloop reads into a protocol's own buffer only if that protocol is not an ``asyncio.Protocol``, which
    uvicorn's WebSocket protocol is; so the transport gets this small object, which passes every callback on.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: RelayWebSocketProtocol) -> None:
        self._connection = connection

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._connection.frames_in.writable()

    def buffer_updated(self, nbytes: int) -> None:
        self._connection.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        self._connection.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self._connection.pause_writing()

    def resume_writing(self) -> None:
        self._connection.resume_writing()


class Flag:
    """The part of ``asyncio.Event`` uvicorn's protocol uses for ``writable``, without a deque per connection
    (an idle room's socket should cost little)."""

    __slots__ = ("_value", "_waiters", "_callbacks")

    def __init__(self) -> None:
        self._value = True
        self._waiters: list[asyncio.Future[bool]] | None = None
        self._callbacks: list[Callable[[], None]] | None = None

    def is_set(self) -> bool:
        return self._value

    @property
    def waiting(self) -> int:
        """How many ``wait`` calls are blocked: sends held back by the peer's flow control."""
        return len(self._waiters or ())

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback()

    def when_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once, with no argument) the next time the flag is set; at once if it is set."""
        if self._value:
            callback()
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _Discard:
    """Stands in for uvicorn's ASGI receive queue once the app has accepted: from then on messages go to the
    protocol's inbox, and the queue (three deques and an Event) would only hold memory and stray disconnects."""

    __slots__ = ()

    def put_nowait(self, item: object) -> None:
        pass

    def empty(self) -> bool:
        return True


_DISCARD = _Discard()


def chunk_frames(text: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """A chunk's header (text frame, whole) and payload (binary frame header, then ``data`` itself) as they are
    written to a receiver: built once per chunk, whatever the number of receivers."""
    size = len(data)
    header = _binary_headers.get(size)
    if header is None:
        if len(_binary_headers) >= 64:
            _binary_headers.clear()
        header = _binary_headers[size] = binary_frame_header(size)
    return text_frame(text.encode()), header, data


_binary_headers: dict[int, bytes] = {}  # by payload length: a transfer's chunks all have one or two lengths


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (already UTF-8), header and payload together."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class Forwarder(Protocol):
    """What forwards a sender's chunks from inside its connection's read callback (``relay.service``).

    ``ready`` says, without changing anything, whether a chunk could be forwarded now (the room is streaming and
    every receiver's transport can take a write at once); ``chunk`` hands the room a chunk's header and payload
    and queues what it decides, True if the next chunk may follow the same way (False: the room decided
    something else, e.g. its end, which the service carries out); ``flush`` writes what was queued, one write
    per receiver. The connection calls ``flush`` before its read callback returns, so the chunks of one read
    leave together and before anything read after them. Neither raises: the service turns any failure into
    the room's end.
    """

    def ready(self) -> bool: ...

    def chunk(self, text: str, data: bytes) -> bool: ...

    def flush(self) -> None: ...


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with a direct path for the room's frames.

    Receiving: once the connection is open, the event loop reads into one ``FrameBuffer`` per connection
    (``get_buffer``/``buffer_updated``). A complete binary frame is held there until ``next_message`` unmasks
    it into the one new ``bytes`` the relay forwards; every other frame (text, control, fragments, anything
    malformed) is handed whole to ``websockets``, which keeps its rules and close codes. Reading pauses only
    while a held frame leaves the buffer full, so the transports' own flow control paces a sender: the room
    takes the next frame only after every receiver's ``write_frames`` returned, and ``write_frames`` returns
    once that receiver's transport has handed the frame to the kernel.

    The app reaches this object through ``scope["extensions"][EXTENSION]`` (``relay.sockets.peer_socket``),
    which bypasses the ASGI message dicts; the ASGI ``receive``/``send`` keep working on the same inbox.

    It also answers an upgrade ``websockets`` refuses to parse (a request line or headers too long: 414/431),
    which uvicorn leaves unanswered and open, and drops connections that will not close.
    """

    # Slots, not the instance dict: uvicorn's ~35 attributes already fill a dict's 42-entry table; ten more would
    # double it (about 1 KiB per idle connection).
    __slots__ = ("frames_in", "inbox", "inbox_bytes", "gone", "fast", "asgi_open", "_waiter", "_reading_paused",
                 "reader", "forward", "_blocked", "_deferred")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames_in = FrameBuffer(self.config.ws_max_size)
        self.inbox: list[str | bytes] = []  # whole messages before the held frame, oldest first
        self.inbox_bytes = 0
        self.gone = False  # the peer closed, the connection was lost, or the relay sent its close
        self.fast = True  # False once every byte goes to ``websockets`` (closing, or a frame it must judge)
        self.asgi_open = False  # the app accepted: ASGI ``receive`` reads the inbox from now on
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.writable = Flag()  # type: ignore[assignment]
        self.reader = BufferedReader(self)
        self.forward: Forwarder | None = None  # set on a sender's connection: chunks forwarded as they arrive
        self._blocked = 0  # receivers whose transports still hold a chunk forwarded from here: read nothing more
        self._deferred = False  # a short text frame was left at the front for the forwarder while the app was busy

    # --- handshake ------------------------------------------------------------------------------------

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = self
        # Pause (clear ``writable``) whenever anything waits in the write buffer: see ``write_frames``.
        self.transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None and not self.close_sent:
            # websockets refused the request (e.g. a request line over 8 KiB: 414, headers: 431) and queued its
            # answer; uvicorn never writes it, so the client would get no reply and the socket would stay open.
            self.close_sent = True
            self.handshake_complete = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            self._abort_later()

    def _restart_frame_parser(self) -> None:
        """Drop the handshake request (and its headers) that websockets' parser generator keeps in its frame.

        ``ServerProtocol.parse`` reads the request and then runs ``Protocol.parse`` for frames, so the request
        stays alive as a local for as long as the connection. Once open with nothing buffered, the parser
        waits at a frame boundary: an equivalent fresh ``Protocol.parse`` can take over.
        """
        conn = self.conn
        if conn.state is State.OPEN and not conn.reader.buffer and conn.parser_exc is None:
            conn.parser = WsProtocol.parse(conn)
            next(conn.parser)

    # --- receiving ------------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames_in.writable()

    def buffer_updated(self, nbytes: int) -> None:
        if not self.frames_in.wrote(nbytes) and self.fast:
            return  # the frame at the front is still incomplete: nothing to do until it is whole
        if self.fast and (self.conn.state is not State.OPEN or self.close_sent):
            self.fast = False
        if not self.fast:
            self.data_received(self.frames_in.take_rest())
            return
        self._parse()

    def _parse(self) -> None:
        """Take the complete frames at the front of the buffer, up to a held binary frame or a full inbox; the
        chunks forwarded on the way leave at the end, in one write per receiver (``Forwarder.flush``)."""
        forward = self.forward
        if forward is None:
            self._parse_frames(None)
            return
        try:
            self._parse_frames(forward)
        finally:
            forward.flush()

    def _parse_frames(self, forward: Forwarder | None) -> None:
        frames = self.frames_in
        batch: bool | None = None  # whether chunks may be forwarded in this pass (asked once: ``ready``)
        while frames.held is None and self.inbox_bytes < INBOX_HIGH and not self._blocked:
            if (forward is not None and batch is not False and not self.inbox and not self.gone
                    and not self.conn.expect_continuation_frame and self._idle()):
                # The steady state of a transfer: the app waits, the room streams, and the buffer holds a
                # chunk's header and payload, often several chunks (one read brings up to ``BATCH`` bytes).
                if batch is None:
                    batch = forward.ready()
                if batch:
                    pair = frames.take_chunk(WAIT_TEXT, FORWARDED_CHUNK)
                    if pair is not None:
                        if len(pair[1]) >= BATCHED_CHUNK:
                            frames.batch_for(frames.pair)
                        batch = forward.chunk(*pair)
                        continue
            try:
                header = frames.next_frame()
            except NotFastPath:
                self._stop_fast()
                return
            if header is None:
                break
            if header.fast_binary and not self.conn.expect_continuation_frame:
                frames.hold(header)
                self._wake()
                break
            if header.fast_text and not self.conn.expect_continuation_frame:
                if (self.forward is not None and not self.inbox and not self._idle() and not self.gone
                        and header.length <= WAIT_TEXT and self.forward.ready()):
                    # The app is busy (this runs inside its read) and a chunk may be coming: leave the text for
                    # the forwarder, which looks again once the app waits (``next_message``). Otherwise a sender
                    # once on the app's path would stay there: each read would deliver the next header.
                    self._deferred = True
                    break
                if self.forward is not None and not self.inbox:
                    step = self._forward(header)
                    if step is _WAIT:
                        break  # the rest of the chunk's payload is on its way: forwarded once it is in
                    if step is not _NO:
                        if step is _FAILED:
                            return
                        continue
                try:
                    text = frames.take_payload(header).decode()
                except UnicodeDecodeError:
                    self._invalid_utf8()
                    return
                self._deliver(text)
                continue
            self.data_received(frames.take_raw(header))  # websockets judges it; a message lands in the inbox
            if self.conn.state is not State.OPEN or self.close_sent:
                self._stop_fast()
                return
        self._pace()

    def _idle(self) -> bool:
        """The app waits for this peer's next message, having handled every earlier one."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _forward(self, header: FrameHeader) -> object:
        """A whole text frame at the front (``header``), the app idle: if a whole binary frame follows it and the
        forwarder is ready, hand both over (``_DONE``) instead of delivering the text, holding the payload and
        waking the app. While that binary frame is still arriving, the text waits where it is (``_WAIT``; only a
        short one: a chunk header). Otherwise ``_NO``: the caller delivers the text. The payload is unmasked only
        once the forwarder is ready, so a chunk never waits unmasked beside another.

        This is where a streaming sender's chunks go in the steady state: no task wake-up per chunk, and the
        buffer is free again at once, so reading needs no pause and resume per chunk.
        """
        forward = self.forward
        if forward is None or not forward.ready():
            return _NO
        frames = self.frames_in
        try:
            binary = frames.frame_after(header)
        except NotFastPath:
            return _NO  # the loop meets it after the text and hands everything from there to websockets
        if binary is None:
            if frames.want and frames.want - frames.start > header.header_len + header.length + 14 + FORWARDED_CHUNK:
                return _NO  # its header says it is a large one: it goes through the app
            # Wait for the payload only when it is sure to come: its frame has begun, or the text is a chunk header.
            if header.length <= WAIT_TEXT and (frames.binary_follows(header) or (
                    frames.nothing_after(header) and frames.payload_starts_with(header, CHUNK_PREFIX))):
                return _WAIT
            return _NO
        if not binary.fast_binary or binary.length > FORWARDED_CHUNK:
            return _NO  # a large chunk goes through the app (see FORWARDED_CHUNK)
        try:
            text = frames.take_payload(header).decode()
        except UnicodeDecodeError:
            self._invalid_utf8()
            return _FAILED
        binary = frames.next_frame()
        assert binary is not None and binary.fast_binary, "the frame behind the text was whole"
        frames.hold(binary)
        if binary.length >= BATCHED_CHUNK:
            frames.batch_for(header.header_len + header.length + binary.header_len + binary.length)
        forward.chunk(text, frames.take_binary())
        return _DONE

    def _invalid_utf8(self) -> None:
        self.conn.send_close(1007, "invalid UTF-8")
        self.handle_parser_exception()
        self._stop_fast()

    def _flush_waiting_text(self) -> None:
        """The peer went while a text frame waited for the payload behind it (``_forward``): the app gets it."""
        self._deferred = False
        frames = self.frames_in
        if not self.fast or frames.held is not None or self.close_sent:
            return
        try:
            header = frames.next_frame()
        except NotFastPath:
            return
        if header is not None and header.fast_text and not self.conn.expect_continuation_frame:
            try:
                text = frames.take_payload(header).decode()
            except UnicodeDecodeError:
                return
            self._deliver(text)

    def block_on(self, flags: list[Flag]) -> None:
        """Read nothing more from this peer until every flag is set (each receiver's transport has handed what
        was forwarded to it to the kernel): the transports' own flow control, with no task in between."""
        self._blocked += len(flags)
        for flag in flags:
            flag.when_set(self._unblock_soon)
        self._pace()

    def _unblock_soon(self) -> None:
        self.loop.call_soon(self._unblock)  # not from inside the receiver's transport callback

    def _unblock(self) -> None:
        if self._blocked:
            self._blocked -= 1
            if not self._blocked and self.fast:
                self._parse()
            elif not self._blocked:
                self._pace()

    def _pace(self) -> None:
        """Read while there is room: pause while a held frame fills the buffer, the inbox is over its mark, or
        a receiver has not taken what was forwarded to it yet."""
        frames = self.frames_in
        pause = (frames.full or self.inbox_bytes >= INBOX_HIGH or self._blocked > 0
                 or (self._deferred and len(frames.buf) - frames.end < MIN_READ))  # whole frames wait behind a text
        if pause is self._reading_paused or self.transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _stop_fast(self) -> None:
        """From now on every byte goes to ``websockets`` (a held frame too: closing discards it)."""
        if not self.fast:
            return
        self.fast = False
        self.frames_in.held = None
        rest = self.frames_in.take_rest()
        if rest:
            self.data_received(rest)
        self._pace()

    def send_receive_event_to_app(self) -> None:
        """A message websockets assembled (text, or a fragmented binary message) goes to the inbox."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past our close: discard, keep reading until the peer's close arrives
        if self.curr_msg_data_type == "text":
            try:
                message: str | bytes = bytes(data).decode()
            except UnicodeDecodeError:
                self.conn.send_close(1007, "invalid UTF-8")
                self.handle_parser_exception()
                return
        else:
            message = bytes(data)
        self._deliver(message)
        if not self.fast:
            self._pace()

    def _deliver(self, message: str | bytes) -> None:
        self.inbox.append(message)
        self.inbox_bytes += len(message) + MESSAGE_COST
        self._wake()

    async def next_message(self) -> str | bytes:
        """The next whole message from the peer; raises ``PeerGone`` once it is gone and all were read."""
        while True:
            message = self._take()
            if message is not None:
                return message
            if self.gone:
                raise PeerGone()
            self.frames_in.release()  # nothing buffered while the app waits: an idle room keeps no chunk buffer
            self._waiter = waiter = self.loop.create_future()
            try:
                if self._deferred:
                    self._deferred = False
                    self._parse()  # a chunk left for the forwarder while the app was busy: forwarded now
                if not waiter.done():
                    await waiter
            finally:
                self._waiter = None

    def received(self) -> list[str | bytes]:
        """Every whole message the peer sent that is already here and not yet read, without waiting (what a
        peer sent just before it went: the service reads it before deciding the peer is gone)."""
        messages: list[str | bytes] = []
        while True:
            message = self._take()
            if message is None:
                if not self._deferred:
                    return messages
                self._flush_waiting_text()  # a text left for the forwarder is a message like any other here
                continue
            messages.append(message)

    def next_binary(self) -> bytes | None:
        """The next message if it is a whole binary message already here, else None, without waiting; nothing
        else is taken (a chunk's payload right behind its header: the room checks the two together). Only small
        ones (``FORWARDED_CHUNK``): a large one is read as before, after its header was handled."""
        inbox = self.inbox
        held = self.frames_in.held
        if ((inbox and type(inbox[0]) is bytes and len(inbox[0]) <= FORWARDED_CHUNK)
                or (not inbox and held is not None and held.length <= FORWARDED_CHUNK)):
            message = self._take()
            assert type(message) is bytes
            return message
        return None

    def _take(self) -> str | bytes | None:
        """The next whole message already received, or None."""
        if self.inbox:
            message = self.inbox.pop(0)
            self.inbox_bytes -= len(message) + MESSAGE_COST
            if self.inbox_bytes < INBOX_HIGH:
                if self.fast:
                    self._parse()
                else:
                    self._pace()
            return message
        if self.frames_in.held is not None:
            data = self.frames_in.take_binary()
            if self.fast:
                self._parse()
            return data
        return None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _gone(self) -> None:
        if not self.gone:
            self._flush_waiting_text()
        self.gone = True
        self._wake()

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)
        self._gone()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self._gone()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._gone()

    # --- sending --------------------------------------------------------------------------------------

    async def write_frames(self, *parts: bytes) -> None:
        """Write frames (header and payload as given) in one call; return once the transport has handed them
        to the kernel, which is at once while the peer keeps up (the write buffer's high-water mark is 0, so
        ``writable`` is cleared while anything waits in it). Raises ``PeerGone`` if the connection is gone."""
        if not self.writable.is_set():
            await self.writable.wait()
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise PeerGone()
        self.transport.writelines(parts)
        if self.transport.get_write_buffer_size() and not self.writable.is_set():
            await self.writable.wait()  # set again once drained, or when the connection is lost

    def can_write_now(self) -> bool:
        """A write would go to the transport at once: open, not closing, nothing waiting in its buffer."""
        return (self.writable.is_set() and not self.disconnected and not self.close_sent
                and self.conn.state is State.OPEN)

    def write_now(self, parts: list[bytes]) -> bool:
        """``write_frames`` without waiting, for a connection ``can_write_now`` said yes to (every part in one
        ``writev``); True if the transport handed everything to the kernel, False if it keeps some (``writable``
        is then clear until it drained)."""
        transport = self.transport
        transport.writelines(parts)
        return not transport.get_write_buffer_size()

    async def close_with(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; raises ``PeerGone`` if the connection is already gone."""
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except ClientDisconnected as exc:
            raise PeerGone() from exc

    # --- ASGI -----------------------------------------------------------------------------------------

    async def receive(self) -> Any:
        if not self.asgi_open:
            return await super().receive()
        try:
            message = await self.next_message()
        except PeerGone:
            received = self.conn.close_rcvd
            return {"type": "websocket.disconnect", "code": received.code if received else 1006}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Any) -> None:
        data = message.get("bytes") if message["type"] == "websocket.send" else None
        if data is not None and self.handshake_complete and not self.close_sent and self.initial_response is None:
            try:
                await self.write_frames(binary_frame_header(len(data)), data)
            except PeerGone as exc:
                raise ClientDisconnected() from exc
            return
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete and not self.asgi_open:
            self.asgi_open = True
            # The handshake's objects are done with; an idle room keeps only what it needs.
            self.queue = _DISCARD  # type: ignore[assignment]
            state = self.__dict__
            state.pop("request", None)
            state.pop("response", None)
            self.__dict__ = dict(state)  # a compact copy: uvicorn's attributes grew the dict past its fill
            self._restart_frame_parser()
        if self.close_sent and not self.gone:
            # Past our close nothing more is read by the app: drop what waits, read on until the peer's close.
            self.gone = True
            self.inbox.clear()
            self.inbox_bytes = 0
            self.forward = None
            self._blocked = 0  # its peer's close must be read whatever the receivers do
            self._stop_fast()
            self._pace()
            self._wake()

    # --- dropping connections that will not close -----------------------------------------------------

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
            self.transport.abort()  # connection_lost follows: the inbox reports gone, `writable` is set


def http_protocol_class(handshake_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline on every request's headers."""

    class RelayHttpProtocol(_BaseHttp):
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

        def handle_websocket_upgrade(self, *args: Any) -> None:
            super().handle_websocket_upgrade(*args)
            protocol = self.transport.get_protocol()
            if isinstance(protocol, RelayWebSocketProtocol) and not self.transport.is_closing():
                self.transport.set_protocol(protocol.reader)  # read straight into its frame buffer

        if _HTTPTOOLS:

            def on_message_begin(self) -> None:
                super().on_message_begin()
                self._arm()  # a later request on a kept-alive connection gets its own deadline

            def on_headers_complete(self) -> None:
                self._disarm()
                super().on_headers_complete()

        else:

            def handle_events(self) -> None:
                super().handle_events()  # type: ignore[misc]  # H11Protocol's, when httptools is missing
                if self.scope is not None:
                    self._disarm()

    return RelayHttpProtocol
