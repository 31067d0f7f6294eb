"""RFC 6455 framing for the client's data path, without I/O: parse a server's frame header in place, build a
client's frame header, mask a payload.

Why not ``websockets`` here: its reader copies every frame through a ``bytearray`` stream and yields ``bytes``
objects, which costs a copy and several Python calls per 64 KiB read. Parsing headers directly in the one receive
buffer of :class:`clients.wsclient.WebSocketClient` lets a 1 MiB binary frame reach the decryptor as a
``memoryview`` of that buffer, without a copy.

Rules (client side of RFC 6455 section 5): frames from the server are never masked (a masked one is a protocol
error); frames we send are always masked with a fresh random key (section 5.3: the key must be unpredictable, so
never a constant or a zero key); no extension is negotiated, so the three RSV bits must be clear; control frames
carry at most 125 bytes and are never fragmented. Every length is checked against ``max_size`` before anything
is allocated for it.
"""

from __future__ import annotations

import os
import struct
import sys
from enum import IntEnum

from collections.abc import Callable

from relay.record import Record, set_field

MaskFunction = Callable[[bytes | bytearray | memoryview, bytes], bytes]


def _load_c_apply_mask() -> MaskFunction | None:
    """The C ``apply_mask`` websockets ships (wheels on Linux, macOS and Windows): ~0.03 CPU-s per GiB.

    Loaded from its file without running ``websockets/__init__.py`` when websockets is not imported yet: that
    imports ``websockets.version``, which imports ``importlib.metadata`` (with ``email``, ``zipfile``, ``csv``...),
    about 10 ms of every client's start for a version string (docs/design/speed.md section 16). The extension
    itself imports nothing of websockets. Anything unexpected falls back to the ordinary import.
    """
    loaded = sys.modules.get("websockets.speedups")
    if loaded is None and "websockets" not in sys.modules:
        try:
            from importlib.machinery import ExtensionFileLoader, PathFinder
            from importlib.util import module_from_spec

            package = PathFinder.find_spec("websockets")
            where = package.submodule_search_locations if package is not None else None
            spec = PathFinder.find_spec("websockets.speedups", list(where)) if where is not None else None
            if spec is not None and isinstance(spec.loader, ExtensionFileLoader):
                loaded = module_from_spec(spec)
                spec.loader.exec_module(loaded)
                # CPython lists a single-phase extension in sys.modules as it loads it: taken out again, so that
                # websockets, if imported later, imports its submodule as usual (and names it on the package)
                sys.modules.pop("websockets.speedups", None)
        except (ImportError, OSError):  # pragma: no cover - then as websockets itself imports it
            loaded = None
    if loaded is None:
        try:
            from websockets import speedups
        except ImportError:  # pragma: no cover - a websockets without its compiled extension
            return None
        loaded = speedups
    function: MaskFunction = loaded.apply_mask
    return function


_apply_mask_c = _load_c_apply_mask()

MAX_CONTROL_PAYLOAD = 125
MAX_HEADER_SIZE = 14  # 2 bytes, 8 bytes of extended length, 4 bytes of mask key


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
_CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})


class FrameError(Exception):
    """The server broke RFC 6455 framing; ``close_code`` is what we send back (1002 protocol error, 1009 too big)."""

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class FrameHeader(Record):
    """A parsed header: the payload is ``buffer[payload_start:payload_start + length]``."""

    __slots__ = ("fin", "opcode", "payload_start", "length")
    fin: bool
    opcode: Opcode
    payload_start: int
    length: int

    def __init__(self, fin: bool, opcode: Opcode, payload_start: int, length: int) -> None:
        set_field(self, "fin", fin)
        set_field(self, "opcode", opcode)
        set_field(self, "payload_start", payload_start)
        set_field(self, "length", length)

    @property
    def end(self) -> int:
        return self.payload_start + self.length


def parse_header(buffer: bytes | bytearray | memoryview, start: int, end: int, max_size: int) -> FrameHeader | None:
    """Parse the frame header at ``buffer[start:end]``; ``None`` if the header is not complete yet.

    Raises :class:`FrameError` for a masked frame, reserved bits, an unknown opcode, an oversized or fragmented
    control frame, or a payload longer than ``max_size`` (close code 1009): checked from the header alone, so a
    hostile length never makes us wait for or allocate its bytes.
    """
    available = end - start
    if available < 2:
        return None
    first, second = buffer[start], buffer[start + 1]
    if first & 0x70:
        raise FrameError("reserved bits set without a negotiated extension")
    try:
        opcode = Opcode(first & 0x0F)
    except ValueError:
        raise FrameError(f"unknown opcode {first & 0x0F}") from None
    fin = bool(first & 0x80)
    if second & 0x80:
        raise FrameError("a server must not mask its frames")
    length = second & 0x7F
    header_size = 2
    if length == 126:
        header_size = 4
        if available < header_size:
            return None
        (length,) = struct.unpack_from("!H", buffer, start + 2)
    elif length == 127:
        header_size = 10
        if available < header_size:
            return None
        (length,) = struct.unpack_from("!Q", buffer, start + 2)
        if length >> 63:
            raise FrameError("payload length with the most significant bit set")
    if opcode in _CONTROL_OPCODES and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise FrameError("a control frame longer than 125 bytes or fragmented")
    if length > max_size:
        raise FrameError(f"a frame of {length} bytes is over the limit of {max_size}", close_code=1009)
    return FrameHeader(fin, opcode, start + header_size, length)


def client_header(opcode: Opcode, length: int, mask_key: bytes, fin: bool = True) -> bytes:
    """The header of a masked client frame carrying ``length`` bytes (the mask key is its last 4 bytes)."""
    if len(mask_key) != 4:
        raise ValueError("a mask key is 4 bytes")
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + mask_key
    if length < 1 << 16:
        return struct.pack("!BBH", first, 0x80 | 126, length) + mask_key
    return struct.pack("!BBQ", first, 0x80 | 127, length) + mask_key


def new_mask_key() -> bytes:
    """A fresh unpredictable mask key (RFC 6455 section 5.3), from the OS CSPRNG."""
    return os.urandom(4)


def apply_mask(data: bytes | bytearray | memoryview, mask_key: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte key (masking and unmasking are the same operation)."""
    if _apply_mask_c is not None:
        return _apply_mask_c(data, mask_key)
    return apply_mask_python(data, mask_key)


def apply_mask_python(data: bytes | bytearray | memoryview, mask_key: bytes) -> bytes:
    """The fallback without a C extension: one big-integer XOR (about 0.6 CPU-s per GiB, 20x the C helper)."""
    size = len(data)
    if size == 0:
        return b""
    repeated = (mask_key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the 2-byte code and a UTF-8 reason cut to fit in 125 bytes."""
    encoded = reason.encode("utf-8", "replace")[: MAX_CONTROL_PAYLOAD - 2]
    while encoded:  # never cut a UTF-8 sequence in half
        try:
            encoded.decode("utf-8")
            break
        except UnicodeDecodeError:
            encoded = encoded[:-1]
    return struct.pack("!H", code) + encoded


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a received close frame; 1005 (no code) when empty. Raises :class:`FrameError`."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError("a close frame with a one-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006) or 3000 <= code <= 4999):
        raise FrameError(f"close code {code} is not allowed on the wire")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("a close reason that is not UTF-8") from None
