"""Just enough RFC 6455 for load clients that cost almost nothing: a handshake, masked frames, a frame scanner.

The load clients must leave the CPU to the relay under test, so nothing here runs per byte in Python:
payload frames are masked once per chunk size and then sent again and again, and the scanner that reads the
relay's (unmasked) frames only looks at frame headers; payload bytes are counted, not copied.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

try:  # the C implementation; the pure-Python fallback costs seconds per GiB
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def handshake_request(host: str, port: int, target: str) -> bytes:
    """The HTTP/1.1 upgrade request for ``ws://host:port{target}`` (no compression extension offered)."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


class HandshakeFailed(Exception):
    """The server answered the upgrade request with something other than 101."""


def split_handshake_response(data: bytes) -> tuple[bytes, bytes] | None:
    """Return ``(status_line, rest_after_headers)`` once ``data`` holds the whole response head, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    status_line = data.split(b"\r\n", 1)[0]
    if b" 101 " not in status_line + b" ":
        raise HandshakeFailed(status_line.decode("latin-1", "replace"))
    return status_line, data[end + 4 :]


def _header(opcode: int, length: int, mask_key: bytes | None) -> bytes:
    first = 0x80 | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    return head + (mask_key or b"")


def client_frame(opcode: int, payload: bytes, mask_key: bytes | None = None) -> bytes:
    """One complete, masked client frame (a fresh random mask unless ``mask_key`` is given)."""
    key = mask_key if mask_key is not None else os.urandom(4)
    return _header(opcode, len(payload), key) + apply_mask(payload, key)


def client_text(message: dict) -> bytes:
    """A masked text frame carrying ``message`` as compact JSON."""
    return client_frame(OP_TEXT, json.dumps(message, separators=(",", ":")).encode("utf-8"))


def client_close(code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, struct.pack("!H", code))


@dataclass
class FrameScanner:
    """Reads a server's unmasked frame stream incrementally, calling back per message.

    ``on_text(text)`` gets each complete text message; ``on_binary(nbytes)`` gets the size of each piece of
    binary payload as it arrives (one binary message may be reported in several pieces), so binary payload
    is never copied; ``on_control(opcode, payload)`` gets close, ping and pong frames.
    """

    on_text: Callable[[str], None]
    on_binary: Callable[[int], None]
    on_control: Callable[[int, bytes], None]
    _head: bytearray = field(default_factory=bytearray)
    _remaining: int = 0
    _opcode: int = 0
    _message_opcode: int = 0
    _collect: bytearray = field(default_factory=bytearray)
    _control: bytearray = field(default_factory=bytearray)
    _in_frame: bool = False
    _fin: bool = True

    def feed(self, data: memoryview) -> None:
        """Consume ``data`` (any slice of the stream)."""
        pos = 0
        end = len(data)
        while pos < end:
            if not self._in_frame:
                pos = self._read_head(data, pos, end)
                continue
            take = min(self._remaining, end - pos)
            if self._opcode == OP_BINARY:
                self.on_binary(take)
            elif self._opcode == OP_TEXT:
                self._collect += data[pos : pos + take]
            else:
                self._control += data[pos : pos + take]
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._finish_frame()

    def _read_head(self, data: memoryview, pos: int, end: int) -> int:
        head = self._head
        while pos < end:
            head.append(data[pos])
            pos += 1
            need = self._head_size()
            if need is not None and len(head) >= need:
                self._start_frame()
                return pos
        return pos

    def _head_size(self) -> int | None:
        head = self._head
        if len(head) < 2:
            return None
        if head[1] & 0x80:
            raise ValueError("server frames must not be masked")
        short = head[1] & 0x7F
        return 2 + (2 if short == 126 else 8 if short == 127 else 0)

    def _start_frame(self) -> None:
        head = self._head
        first = head[0]
        opcode = first & 0x0F
        short = head[1] & 0x7F
        if short == 126:
            length = struct.unpack_from("!H", head, 2)[0]
        elif short == 127:
            length = struct.unpack_from("!Q", head, 2)[0]
        else:
            length = short
        head.clear()
        if opcode == OP_CONTINUATION:
            opcode = self._message_opcode
        elif opcode < 0x8:
            self._message_opcode = opcode
        if opcode < 0x8:
            self._fin = bool(first & 0x80)
        self._opcode = opcode
        self._remaining = length
        self._in_frame = True
        if length == 0:
            self._finish_frame()

    def _finish_frame(self) -> None:
        self._in_frame = False
        opcode = self._opcode
        if opcode == OP_BINARY:
            return
        if opcode == OP_TEXT:
            if self._fin:
                text = self._collect.decode("utf-8")
                self._collect.clear()
                self.on_text(text)
            return
        payload = bytes(self._control)
        self._control.clear()
        self.on_control(opcode, payload)
