"""A small reverse proxy on loopback that serves a relay under a path prefix, as nginx or Caddy would.

``GET /relay/app.js`` goes to the relay as ``GET /app.js``; a WebSocket upgrade to ``/relay/ws/CODE`` goes to
``/ws/CODE`` and then carries the socket's bytes both ways. Each connection carries one request (the proxy asks
the relay to close after it), so only the first request line of a connection needs rewriting. The client's
``Host`` header is passed on unchanged (nginx: ``proxy_set_header Host $host``), so the relay's same-origin check
sees the proxy's address, as it would in production. Paths outside the prefix get 404; the bare prefix without
its slash is redirected to it, as the nginx snippet in docs/operations.md does.

It also records what the relay receives: every WebSocket message a page sends through it (``received``, each
as ``(target, text or bytes)``, unmasked and reassembled), so a test can look for what must never reach the relay.

With ``cut_after=n`` it drops one WebSocket connection, once: the first whose relay-to-page bytes (with
``cut_upstream``, page-to-relay bytes) pass ``n`` is aborted both ways (no close frame, as a Wi-Fi change or a
proxy's idle timeout would), so a test can watch a page resume; ``cuts`` counts the connections it dropped.
With ``shut_after_cut`` too, every WebSocket upgrade after the cut gets ``502`` until ``reopen()``: a page that
cannot get back in time (``refused`` counts them).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HEAD_LIMIT = 64 * 1024
PIPE_BLOCK = 256 * 1024
START_TIMEOUT_S = 10


class PrefixProxy:
    def __init__(self, upstream_port: int, prefix: str = "/relay/", cut_after: int | None = None,
                 cut_upstream: bool = False, shut_after_cut: bool = False) -> None:
        assert prefix.startswith("/") and prefix.endswith("/")
        self.shut_after_cut = shut_after_cut
        self.reopened = threading.Event()
        self.refused = 0
        self.upstream_port = upstream_port
        self.prefix = prefix
        self.cut_after = cut_after
        self.cut_upstream = cut_upstream
        self.cuts = 0
        self.downstream = 0  # WebSocket bytes carried from the relay to the pages, for a test to wait on
        self.sockets: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []  # open WebSocket connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.requests: list[str] = []  # request targets as the browser sent them, for the test to look at
        self.received: list[tuple[str, str | bytes]] = []  # WebSocket messages from the pages, as the relay gets them

    @property
    def url(self) -> str:
        """The page's address through the proxy, with the prefix."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def serve(self, ready: threading.Event, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=HEAD_LIMIT)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await stop.wait()
        # End the connections still open (a page's WebSocket) before the loop closes.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        self.requests.append(target)
        if target == self.prefix.rstrip("/"):
            await self._answer(writer, "301 Moved Permanently", f"Location: {self.prefix}\r\n")
            return
        if not target.startswith(self.prefix):
            await self._answer(writer, "404 Not Found", "")
            return
        headers = [line for line in header_lines if line.split(":", 1)[0].strip().lower() != "connection"]
        upgrade = any(line.split(":", 1)[0].strip().lower() == "upgrade" for line in headers)
        if upgrade and self.shut_after_cut and self.cuts and not self.reopened.is_set():
            self.refused += 1
            await self._answer(writer, "502 Bad Gateway", "")
            return
        headers.append("Connection: Upgrade" if upgrade else "Connection: close")
        headers.append("X-Forwarded-For: 127.0.0.1")
        rewritten = "\r\n".join([f"{method} /{target[len(self.prefix):]} {version}", *headers]) + "\r\n\r\n"
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            await self._answer(writer, "502 Bad Gateway", "")
            return
        up_writer.write(rewritten.encode("latin-1"))
        frames = _FrameReader(target, self.received) if upgrade else None
        cut = (lambda: self._cut(writer, up_writer)) if upgrade and self.cut_after is not None else None
        up_cut, down_cut = (cut, None) if self.cut_upstream else (None, cut)
        if upgrade:
            self.sockets.append((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, frames, up_cut),
                             self._pipe(up_reader, writer, cut=down_cut, upgrade=upgrade))

    def reopen(self) -> None:
        """Carry new WebSocket connections again (``shut_after_cut``); from any thread."""
        self.reopened.set()

    def cut_now(self) -> None:
        """Drop every WebSocket connection open now, both ways and without a close frame (from any thread)."""
        def cut() -> None:
            for writer, up_writer in self.sockets:
                writer.transport.abort()
                up_writer.transport.abort()
            self.cuts += len(self.sockets)
            self.sockets.clear()

        assert self.loop is not None
        self.loop.call_soon_threadsafe(cut)

    def _cut(self, writer: asyncio.StreamWriter, up_writer: asyncio.StreamWriter) -> bool:
        """Drop this connection both ways if it is the first to pass ``cut_after``; whether it was dropped."""
        if self.cuts:
            return False
        self.cuts += 1
        writer.transport.abort()
        up_writer.transport.abort()
        return True

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    frames: _FrameReader | None = None, cut: Callable[[], bool] | None = None,
                    upgrade: bool = False) -> None:
        carried = 0
        try:
            while block := await source.read(PIPE_BLOCK):
                if frames is not None:
                    frames.feed(block)
                carried += len(block)
                if frames is None and upgrade:
                    self.downstream += len(block)
                if cut is not None and self.cut_after is not None and carried > self.cut_after and cut():
                    return
                sink.write(block)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: str, extra: str) -> None:
        writer.write(f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        try:
            await writer.drain()
        finally:
            writer.close()


class _FrameReader:
    """Parses the client-to-server half of a WebSocket (RFC 6455: masked frames, maybe fragmented) into messages."""

    def __init__(self, target: str, out: list[tuple[str, str | bytes]]) -> None:
        self.target = target
        self.out = out
        self.buffer = bytearray()
        self.message = bytearray()
        self.opcode = 0

    def feed(self, block: bytes) -> None:
        self.buffer += block
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode in (1, 2):
                self.opcode, self.message = opcode, bytearray(payload)
            elif opcode == 0:
                self.message += payload
            else:
                continue  # close, ping, pong
            if fin:
                data = bytes(self.message)
                self.out.append((self.target, data.decode("utf-8", "replace") if self.opcode == 1 else data))

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        fin, opcode, length, at = bool(buffer[0] & 0x80), buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            length, at = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            length, at = int.from_bytes(buffer[2:10], "big"), 10
        masked = bool(buffer[1] & 0x80)
        key_end = at + (4 if masked else 0)
        if len(buffer) < key_end + length:
            return None
        payload = bytes(buffer[key_end:key_end + length])
        if masked:
            key = buffer[at:key_end]
            payload = _unmask(payload, bytes(key))
        del buffer[:key_end + length]
        return fin, opcode, payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, fast enough for megabyte frames."""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


@contextmanager
def prefix_proxy(upstream_port: int, prefix: str = "/relay/", cut_after: int | None = None,
                 cut_upstream: bool = False, shut_after_cut: bool = False) -> Iterator[PrefixProxy]:
    """Run a PrefixProxy in a thread of its own for the duration of the block."""
    proxy = PrefixProxy(upstream_port, prefix, cut_after, cut_upstream, shut_after_cut)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(proxy.serve(ready, stop)), daemon=True)
    thread.start()
    assert ready.wait(START_TIMEOUT_S), "the test proxy did not start"
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(START_TIMEOUT_S)
        loop.close()
