"""The relay wire protocol (version 2, end to end encrypted): messages, validation and checksums, with no I/O.

Server and clients both import this module; ``docs/protocol.md`` is its specification. Everything here works
on already-received frames (``str`` for text, ``bytes`` for binary) and returns values or raises a
``ProtocolError`` subclass that names the error code to send back, so it is tested without sockets. The
relay sees only the clear messages of section 4 of the specification; ``Offer`` and its rules are what the
parties seal (section 5), checked by every receiver after opening it.

Exceptions::

    ProtocolError                 the peer broke the protocol; carries an ErrorCode (and so a close code)
    ├── MalformedMessage          not JSON / wrong field types
    ├── UnknownType               a ``type`` the protocol does not know
    ├── UnexpectedMessage         a known message at the wrong moment
    ├── UnsafePath                an offered path that could escape or confuse the receiver's folder
    ├── ChecksumMismatch          a chunk digest that does not match the bytes
    └── SizeMismatch              a length or count that disagrees with what was declared
"""

from __future__ import annotations

import base64
import json
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import xxhash

from relay.record import FrozenInstanceError as FrozenInstanceError, Record, set_field as _set_field

PROTOCOL_V2 = 2  # end-to-end encrypted; every client says ``v=2`` (version 1 is refused: unsupported_version)
VERSIONS = (PROTOCOL_V2,)
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
ACK_INTERVAL = 8 * 1024 * 1024
MAX_FILES = 100_000
MAX_TEXT = 1000
MAX_SAFE_INT = 2**53 - 1


class ErrorCode(StrEnum):
    """Machine-readable error codes; each maps to one WebSocket close code (docs/protocol.md section 7)."""

    GOING_AWAY = "going_away"
    MESSAGE_TOO_BIG = "message_too_big"
    INTERNAL_ERROR = "internal_error"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED_VERSION = "unsupported_version"
    MALFORMED_MESSAGE = "malformed_message"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNSAFE_PATH = "unsafe_path"
    ROOM_NOT_FOUND = "room_not_found"
    ROOM_FULL = "room_full"
    ROOM_TAKEN = "room_taken"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    DISK_FULL = "disk_full"
    FILE_EXISTS = "file_exists"
    WRITE_FAILED = "write_failed"
    PEER_LEFT = "peer_left"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    PAIRING_TIMEOUT = "pairing_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    OFFER_TIMEOUT = "offer_timeout"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    TOO_MANY_ROOMS = "too_many_rooms"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RATE_LIMITED = "rate_limited"
    TRANSFER_TOO_LARGE = "transfer_too_large"
    WRONG_CODE = "wrong_code"
    TAMPERED = "tampered"
    RESUME_REFUSED = "resume_refused"
    DROPPED = "dropped"

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self]

    @classmethod
    def from_close_code(cls, close_code: int | None) -> ErrorCode | None:
        return _BY_CLOSE_CODE.get(close_code) if close_code is not None else None


CLOSE_NORMAL = 1000
CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.GOING_AWAY: 1001,
    ErrorCode.MESSAGE_TOO_BIG: 1009,
    ErrorCode.INTERNAL_ERROR: 1011,
    ErrorCode.BAD_REQUEST: 4000,
    ErrorCode.UNSUPPORTED_VERSION: 4001,
    ErrorCode.MALFORMED_MESSAGE: 4002,
    ErrorCode.UNKNOWN_TYPE: 4003,
    ErrorCode.UNEXPECTED_MESSAGE: 4004,
    ErrorCode.UNSAFE_PATH: 4005,
    ErrorCode.ROOM_NOT_FOUND: 4404,
    ErrorCode.ROOM_FULL: 4409,
    ErrorCode.ROOM_TAKEN: 4410,
    ErrorCode.CHECKSUM_MISMATCH: 4020,
    ErrorCode.SIZE_MISMATCH: 4021,
    ErrorCode.DISK_FULL: 4022,
    ErrorCode.FILE_EXISTS: 4023,
    ErrorCode.WRITE_FAILED: 4024,
    ErrorCode.PEER_LEFT: 4030,
    ErrorCode.CANCELLED: 4031,
    ErrorCode.DECLINED: 4032,
    ErrorCode.PAIRING_TIMEOUT: 4040,
    ErrorCode.IDLE_TIMEOUT: 4041,
    ErrorCode.OFFER_TIMEOUT: 4043,
    ErrorCode.HANDSHAKE_TIMEOUT: 4042,
    ErrorCode.UNAUTHORIZED: 4401,
    ErrorCode.FORBIDDEN_ORIGIN: 4403,
    ErrorCode.TOO_MANY_ROOMS: 4429,
    ErrorCode.TOO_MANY_CONNECTIONS: 4430,
    ErrorCode.RATE_LIMITED: 4431,
    ErrorCode.TRANSFER_TOO_LARGE: 4413,
    ErrorCode.WRONG_CODE: 4033,
    ErrorCode.TAMPERED: 4025,
    ErrorCode.RESUME_REFUSED: 4034,
    ErrorCode.DROPPED: 4035,
}
_BY_CLOSE_CODE = {close: code for code, close in CLOSE_CODES.items()}


class ProtocolError(Exception):
    """The other side broke the protocol; ``code`` says which error to report and how to close."""

    code: ErrorCode = ErrorCode.MALFORMED_MESSAGE

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class MalformedMessage(ProtocolError):
    code = ErrorCode.MALFORMED_MESSAGE


class UnknownType(ProtocolError):
    code = ErrorCode.UNKNOWN_TYPE


class UnexpectedMessage(ProtocolError):
    code = ErrorCode.UNEXPECTED_MESSAGE


class UnsafePath(ProtocolError):
    code = ErrorCode.UNSAFE_PATH


class ChecksumMismatch(ProtocolError):
    code = ErrorCode.CHECKSUM_MISMATCH


class SizeMismatch(ProtocolError):
    code = ErrorCode.SIZE_MISMATCH


# --- checksums ---------------------------------------------------------------------------------------------


def chunk_digest(data: bytes | bytearray | memoryview) -> str:
    """XXH3-64 of one chunk's payload, as 16 lower-case hex digits."""
    return xxhash.xxh3_64_hexdigest(data)


# --- paths -------------------------------------------------------------------------------------------------

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in "\u2028\u2029"


def check_path(path: object) -> str:
    """Return ``path`` if it is a safe relative POSIX path for a receiver to create, else raise ``UnsafePath``.

    A sender's paths are hostile input: this refuses anything that could land outside the receiver's folder
    (traversal, absolute paths, separators or NUL inside a segment) or hide as something else on screen (control
    characters, text that is not Unicode). Names that only some file systems refuse (``aux.c``, ``a:b``,
    ``trailing.``) are legal on the wire: each receiver maps what its own file system cannot store
    (``clients.store.local_name``).
    """
    if not isinstance(path, str):
        raise MalformedMessage("a path must be a string")
    shown = escape_text(path)
    if not path:
        raise UnsafePath("an empty path was offered")
    if _has_surrogate(path):
        raise UnsafePath(f"path is not valid Unicode: {shown}")
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePath(f"path too long: {shown[:80]}...")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path refused: {shown}")
    for char in path:
        if _is_control(char):
            raise UnsafePath(f"control character in path refused: {shown}")
        if char == "\\":
            raise UnsafePath(f"backslash in path refused: {shown}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafePath(f"empty, '.' or '..' segment refused: {shown}")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UnsafePath(f"path segment too long: {shown[:80]}...")
    return path


def path_key(path: str) -> str:
    """The form two names are compared in: NFC after case folding, so ``é``/``e\u0301`` and ``docs``/``Docs``
    are one name, as they are on macOS and Windows file systems (docs/protocol.md section 5.1)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def _has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (U+D800 to U+DFFF): the only characters UTF-8 cannot encode."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(text: str) -> str:
    """Make wire text safe to print: control and bidi-override characters become visible escapes."""
    out = []
    for char in text:
        if _is_control(char) or unicodedata.category(char) == "Cf":
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def is_nameplate(text: str) -> bool:
    """A room name: 1 to 8 ASCII digits, allocated by the relay (the secret words never reach it)."""
    return len(text) <= 8 and _is_ascii_digits(text)


# The checks of text below are plain str methods, not regular expressions: the same rules, without compiling
# patterns at every start (docs/design/speed.md section 16); tests/test_protocol.py holds them to the patterns.
_DIGITS = "0123456789"
_HEX_DIGITS = "0123456789abcdef"
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _is_ascii_digits(text: str) -> bool:
    """``[0-9]+``: not ``str.isdigit``, which also takes other scripts' digits and superscripts."""
    return bool(text) and not text.strip(_DIGITS)


# --- messages ----------------------------------------------------------------------------------------------


def _int_field(value: object, name: str, minimum: int = 0, maximum: int = MAX_SAFE_INT) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise MalformedMessage(f"field {name!r} must be an integer from {minimum} to {maximum}")
    return value


def _str_field(value: object, name: str, maximum: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > maximum:
        raise MalformedMessage(f"field {name!r} must be a string of at most {maximum} characters")
    return value


def _hex_field(value: object, name: str, digits: int) -> str:
    if not isinstance(value, str) or len(value) != digits or value.strip(_HEX_DIGITS):
        raise MalformedMessage(f"field {name!r} must be {digits} lower-case hex digits")
    return value



class Message(Record):
    """Base of every control message; ``TYPE`` is its wire ``type``."""

    TYPE: ClassVar[str]
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.TYPE}
        name: str
        for name in self.__slots__:
            value = getattr(self, name)
            if value is None:
                continue
            data[name] = value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        raise NotImplementedError


class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    __slots__ = ("version", "role", "peer", "receivers", "max_message", "nameplate")
    version: int
    role: str
    peer: int
    receivers: int
    max_message: int
    nameplate: str | None  # to the sender: the room the relay allocated

    def __init__(self, version: int, role: str, peer: int, receivers: int, max_message: int,
                 nameplate: str | None = None) -> None:
        _set_field(self, "version", version)
        _set_field(self, "role", role)
        _set_field(self, "peer", peer)
        _set_field(self, "receivers", receivers)
        _set_field(self, "max_message", max_message)
        _set_field(self, "nameplate", nameplate)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hello:
        role = data.get("role")
        if role not in ("send", "receive"):
            raise MalformedMessage("field 'role' must be 'send' or 'receive'")
        nameplate = data.get("nameplate")
        if nameplate is not None and (not isinstance(nameplate, str) or not is_nameplate(nameplate)):
            raise MalformedMessage("field 'nameplate' must be 1 to 8 decimal digits")
        return cls(
            _int_field(data.get("version"), "version"),
            role,
            _int_field(data.get("peer"), "peer"),
            _int_field(data.get("receivers"), "receivers", 1),
            _int_field(data.get("max_message"), "max_message", 1),
            nameplate,
        )


class PeerJoined(Message):
    TYPE: ClassVar[str] = "peer_joined"
    __slots__ = ("peer", "joined", "receivers")
    peer: int
    joined: int
    receivers: int

    def __init__(self, peer: int, joined: int, receivers: int) -> None:
        _set_field(self, "peer", peer)
        _set_field(self, "joined", joined)
        _set_field(self, "receivers", receivers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerJoined:
        return cls(
            _int_field(data.get("peer"), "peer"),
            _int_field(data.get("joined"), "joined"),
            _int_field(data.get("receivers"), "receivers"),
        )


class Paired(Message):
    TYPE: ClassVar[str] = "paired"
    __slots__ = ("receivers",)
    receivers: int

    def __init__(self, receivers: int) -> None:
        _set_field(self, "receivers", receivers)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Paired:
        return cls(_int_field(data.get("receivers"), "receivers"))


MAX_MTIME = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second every platform's file times can hold
MAX_TEXT_OFFER = 1024 * 1024


class OfferKind(StrEnum):
    """What an offer carries: files to save (the default), a text to show, or bytes read from standard input."""

    FILES = "files"
    TEXT = "text"
    STDIN = "stdin"


class FileEntry(Record):
    """One offered file: its relative POSIX path and size in bytes, and optionally its mtime and executable bit.

    ``mtime`` is whole seconds since the epoch (0 to year 9999); ``exec`` is ``True`` when the file should be
    executable. Both are hints the receiver applies on commit; absent means "today" and "not executable".
    """

    __slots__ = ("path", "size", "mtime", "exec")
    path: str
    size: int
    mtime: int | None
    exec: bool

    def __init__(self, path: str, size: int, mtime: int | None = None, exec: bool = False) -> None:
        _set_field(self, "path", path)
        _set_field(self, "size", size)
        _set_field(self, "mtime", mtime)
        _set_field(self, "exec", exec)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size}
        if self.mtime is not None:
            data["mtime"] = self.mtime
        if self.exec:
            data["exec"] = True
        return data

    @classmethod
    def from_dict(cls, item: object) -> FileEntry:
        if not isinstance(item, dict):
            raise MalformedMessage("each entry of 'files' must be an object")
        mtime = item.get("mtime")
        executable = item.get("exec", False)
        if type(executable) is not bool:
            raise MalformedMessage("field 'exec' must be true or false")
        return cls(
            check_path(item.get("path")),
            _int_field(item.get("size"), "size"),
            None if mtime is None else _int_field(mtime, "mtime", 0, MAX_MTIME),
            executable,
        )


class Offer(Message):
    """The manifest: every file (by index) and every folder to create, the sender's chunk size, and its kind."""

    TYPE: ClassVar[str] = "offer"
    __slots__ = ("files", "dirs", "chunk_size", "kind")
    files: tuple[FileEntry, ...]
    dirs: tuple[str, ...]
    chunk_size: int
    kind: OfferKind

    def __init__(self, files: tuple[FileEntry, ...], dirs: tuple[str, ...] = (), chunk_size: int = DEFAULT_CHUNK_SIZE,
                 kind: OfferKind = OfferKind.FILES) -> None:
        _set_field(self, "files", files)
        _set_field(self, "dirs", dirs)
        _set_field(self, "chunk_size", chunk_size)
        _set_field(self, "kind", kind)

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.TYPE,
            "files": [entry.to_dict() for entry in self.files],
            "dirs": list(self.dirs),
            "chunk_size": self.chunk_size,
        }
        if self.kind is not OfferKind.FILES:
            data["kind"] = self.kind.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Offer:
        files = data.get("files")
        dirs = data.get("dirs", [])
        kind = data.get("kind", OfferKind.FILES.value)
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise MalformedMessage(f"field 'files' must be a list of at most {MAX_FILES} entries")
        if not isinstance(dirs, list) or len(dirs) > MAX_FILES:
            raise MalformedMessage(f"field 'dirs' must be a list of at most {MAX_FILES} entries")
        if kind not in OfferKind.__members__.values():
            raise MalformedMessage("field 'kind' must be 'files', 'text' or 'stdin'")
        offer = cls(
            tuple(FileEntry.from_dict(item) for item in files),
            tuple(check_path(d) for d in dirs),
            _int_field(data.get("chunk_size", DEFAULT_CHUNK_SIZE), "chunk_size", 1),
            OfferKind(kind),
        )
        offer.check_layout()
        return offer

    def check_layout(self) -> None:
        """Refuse an offer whose names cannot all exist side by side in one folder, on any file system.

        Names are compared by ``path_key`` (NFC, case-folded). Refused: a path offered twice (as files, as
        folders, or once as each), and a file that is also a folder above another entry. A ``text`` or
        ``stdin`` offer is exactly one file and no folder (a text at most 1 MiB).
        """
        if self.kind is not OfferKind.FILES:
            if len(self.files) != 1 or self.dirs:
                raise MalformedMessage(f"a {self.kind.value!r} offer holds exactly one file and no folder")
            if self.kind is OfferKind.TEXT and self.files[0].size > MAX_TEXT_OFFER:
                raise MalformedMessage(f"a text offer is at most {MAX_TEXT_OFFER} bytes")
        if self.total_size > MAX_SAFE_INT:
            raise MalformedMessage("total size too large")
        file_keys: dict[str, str] = {}
        for entry in self.files:
            key = path_key(entry.path)
            if key in file_keys:
                raise UnsafePath(f"path offered twice: {_twins(file_keys[key], entry.path)}")
            file_keys[key] = entry.path
        folder_keys: dict[str, str] = {}  # every folder the offer names or implies
        for path in self.dirs:
            key = path_key(path)
            if key in folder_keys:
                raise UnsafePath(f"folder offered twice: {_twins(folder_keys[key], path)}")
            folder_keys[key] = path
        for path in [entry.path for entry in self.files] + list(self.dirs):
            segments = path.split("/")
            for depth in range(1, len(segments)):
                folder = "/".join(segments[:depth])
                spelled = folder_keys.setdefault(path_key(folder), folder)
                if spelled != folder:  # ``docs/a`` and ``Docs/b``: one folder on macOS and Windows, two on Linux
                    raise UnsafePath(f"one folder offered under two names: {_twins(spelled, folder)}")
        for key, path in file_keys.items():
            if key in folder_keys:
                raise UnsafePath(f"a path is both a file and a folder: {_twins(path, folder_keys[key])}")


def _twins(first: str, second: str) -> str:
    shown = escape_text(first)
    return shown if first == second else f"{shown} and {escape_text(second)}"


class Start(Message):
    TYPE: ClassVar[str] = "start"
    __slots__ = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Start:
        return cls()


class Verified(Message):
    TYPE: ClassVar[str] = "verified"
    __slots__ = ("peer",)
    peer: int | None

    def __init__(self, peer: int | None = None) -> None:
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verified:
        return cls(_optional_peer(data))


class Complete(Message):
    TYPE: ClassVar[str] = "complete"
    __slots__ = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Complete:
        return cls()


class Error(Message):
    TYPE: ClassVar[str] = "error"
    __slots__ = ("code", "message", "peer")
    code: str
    message: str
    peer: int | None

    def __init__(self, code: str, message: str = "", peer: int | None = None) -> None:
        _set_field(self, "code", code)
        _set_field(self, "message", message)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Error:
        code = _str_field(data.get("code"), "code", 64)
        if code not in ErrorCode.__members__.values():
            raise MalformedMessage(f"unknown error code {escape_text(code)!r}")
        return cls(code, _str_field(data.get("message", ""), "message"), _optional_peer(data))

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode(self.code)

    @classmethod
    def of(cls, error: ProtocolError, peer: int | None = None) -> Error:
        return cls(error.code.value, error.message[:MAX_TEXT], peer)


class PeerLeft(Message):
    TYPE: ClassVar[str] = "peer_left"
    __slots__ = ("peer", "role")
    peer: int
    role: str

    def __init__(self, peer: int, role: str) -> None:
        _set_field(self, "peer", peer)
        _set_field(self, "role", role)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerLeft:
        role = data.get("role")
        if role not in ("send", "receive"):
            raise MalformedMessage("field 'role' must be 'send' or 'receive'")
        return cls(_int_field(data.get("peer"), "peer"), role)


def _optional_peer(data: dict[str, Any]) -> int | None:
    peer = data.get("peer")
    return None if peer is None else _int_field(peer, "peer")


# --- the messages of keying, the sealed offer and the stream (docs/protocol.md section 4) -------------------
#
# The relay forwards opaque base64 values whose decoded length it checks: it never sees a name, a word of the
# code or a byte of plaintext. ``to`` is how the sender addresses receiver k; the relay drops it and the
# receiver's messages reach the sender with ``peer``.

PAKE_SIZE = 33  # clients.crypto.PAKE_MESSAGE_SIZE
CONFIRM_SIZE = 32  # clients.crypto.CONFIRMATION_SIZE
SEALED_KEY_SIZE = 48  # clients.crypto.SEALED_CONTENT_KEY_SIZE
TAG_SIZE = 16  # AES-GCM tag: every sealed value and ciphertext chunk is at least this long
MAX_SEALED = DEFAULT_MAX_MESSAGE  # decoded bytes of one sealed value (the frame limit bounds it as well)
MAX_RECEIVERS_FIELD = 1000  # bound on a `to` list before the room compares it with its own receivers
MAX_EPOCH = 2**32 - 1
MAX_RESUMES = 64  # reconnections one transfer may make (each one may resend up to a chunk per file)


def _b64_field(value: object, name: str, size: int | None = None, minimum: int = TAG_SIZE,
               maximum: int = MAX_SEALED) -> str:
    """A standard base64 string (with padding) whose decoded length is ``size``, or within bounds; kept as text.

    The length is checked on the text before anything is decoded, so a huge value costs nothing.
    """
    low, high = (size, size) if size is not None else (minimum, maximum)
    if not isinstance(value, str) or len(value) > 4 * (-(-high // 3)) or len(value) % 4:
        raise MalformedMessage(f"field {name!r} must be base64 of {low} to {high} bytes")
    if not _is_padded_base64_text(value):
        raise MalformedMessage(f"field {name!r} must be standard base64 with padding")
    decoded = len(value) // 4 * 3 - value[-2:].count("=")
    if not low <= decoded <= high:
        raise MalformedMessage(f"field {name!r} must be base64 of {low} to {high} bytes")
    try:
        base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise MalformedMessage(f"field {name!r} is not valid base64") from exc
    return value


def _is_padded_base64_text(value: str) -> bool:
    """``[A-Za-z0-9+/]*={0,2}``: the base64 alphabet, then at most two ``=``."""
    body = value.rstrip("=")
    return len(value) - len(body) <= 2 and not body.strip(_B64_ALPHABET)


def _optional_to(data: dict[str, Any]) -> int | None:
    to = data.get("to")
    return None if to is None else _int_field(to, "to", 1, MAX_RECEIVERS_FIELD)


class Pake(Message):
    """One SPAKE2 message (33 bytes), relayed opaquely between the sender and receiver ``to``/``peer``."""

    TYPE: ClassVar[str] = "pake"
    __slots__ = ("data", "to", "peer")
    data: str
    to: int | None
    peer: int | None

    def __init__(self, data: str, to: int | None = None, peer: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "to", to)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pake:
        return cls(_b64_field(data.get("data"), "data", PAKE_SIZE), _optional_to(data), _optional_peer(data))


class Confirm(Message):
    """A key-confirmation MAC (32 bytes): the sender's first, then the receiver's."""

    TYPE: ClassVar[str] = "confirm"
    __slots__ = ("data", "to", "peer")
    data: str
    to: int | None
    peer: int | None

    def __init__(self, data: str, to: int | None = None, peer: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "to", to)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Confirm:
        return cls(_b64_field(data.get("data"), "data", CONFIRM_SIZE), _optional_to(data), _optional_peer(data))


class Key(Message):
    """The transfer's content key sealed to receiver ``to`` (48 bytes), after both confirmations."""

    TYPE: ClassVar[str] = "key"
    __slots__ = ("data", "to")
    data: str
    to: int | None

    def __init__(self, data: str, to: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "to", to)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Key:
        return cls(_b64_field(data.get("data"), "data", SEALED_KEY_SIZE), _optional_to(data))


class WrongCode(Message):
    """Key confirmation failed: the room ends for everyone with ``wrong_code`` (the sender names ``to``)."""

    TYPE: ClassVar[str] = "wrong_code"
    __slots__ = ("to",)
    to: int | None

    def __init__(self, to: int | None = None) -> None:
        _set_field(self, "to", to)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WrongCode:
        return cls(_optional_to(data))


class SealedOffer(Message):
    """The offer sealed to receiver ``to``; only its total size and file count are clear (for the limits)."""

    TYPE: ClassVar[str] = "offer"
    __slots__ = ("total_size", "files", "data", "to")
    total_size: int
    files: int
    data: str
    to: int | None

    def __init__(self, total_size: int, files: int, data: str, to: int | None = None) -> None:
        _set_field(self, "total_size", total_size)
        _set_field(self, "files", files)
        _set_field(self, "data", data)
        _set_field(self, "to", to)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedOffer:
        return cls(
            _int_field(data.get("total_size"), "total_size"),
            _int_field(data.get("files"), "files", 1, MAX_FILES),
            _b64_field(data.get("data"), "data"),
            _optional_to(data),
        )


class SealedAccept(Message):
    """A receiver accepts; ``data`` is sealed (what it already holds, once resume exists)."""

    TYPE: ClassVar[str] = "accept"
    __slots__ = ("data", "peer")
    data: str | None
    peer: int | None

    def __init__(self, data: str | None = None, peer: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedAccept:
        sealed = data.get("data")
        return cls(None if sealed is None else _b64_field(sealed, "data"), _optional_peer(data))


class SealedDecline(Message):
    """A receiver declines; ``code`` is an error code's value, any human reason is sealed in ``data``."""

    TYPE: ClassVar[str] = "decline"
    __slots__ = ("code", "data", "peer")
    code: str
    data: str | None
    peer: int | None

    def __init__(self, code: str = ErrorCode.DECLINED.value, data: str | None = None, peer: int | None = None) -> None:
        _set_field(self, "code", code)
        _set_field(self, "data", data)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedDecline:
        code = _str_field(data.get("code", ErrorCode.DECLINED.value), "code", 64)
        if code not in ErrorCode.__members__.values():
            raise MalformedMessage(f"unknown error code {escape_text(code)!r}")
        sealed = data.get("data")
        return cls(code, None if sealed is None else _b64_field(sealed, "data"), _optional_peer(data))


class Stream(Message):
    """Starts epoch ``epoch``: clear ``chunks``/``bytes`` for the relay's counts, one sealed plan per receiver.

    From the sender ``to`` lists the receivers and ``data`` holds their plans in the same order; the relay
    forwards to each receiver its own plan as a single string.
    """

    TYPE: ClassVar[str] = "stream"
    __slots__ = ("epoch", "chunks", "bytes", "data", "to")
    epoch: int
    chunks: int
    bytes: int
    data: tuple[str, ...] | str
    to: tuple[int, ...] | None

    def __init__(self, epoch: int, chunks: int, bytes: int, data: tuple[str, ...] | str,
                 to: tuple[int, ...] | None = None) -> None:
        _set_field(self, "epoch", epoch)
        _set_field(self, "chunks", chunks)
        _set_field(self, "bytes", bytes)
        _set_field(self, "data", data)
        _set_field(self, "to", to)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "epoch": self.epoch, "chunks": self.chunks, "bytes": self.bytes}
        if self.to is not None:
            out["to"] = list(self.to)
        out["data"] = self.data if isinstance(self.data, str) else list(self.data)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stream:
        epoch = _int_field(data.get("epoch"), "epoch", 0, MAX_EPOCH)
        chunks = _int_field(data.get("chunks"), "chunks", 1)
        size = _int_field(data.get("bytes"), "bytes", TAG_SIZE)
        to, plans = data.get("to"), data.get("data")
        if to is None:  # as a receiver gets it
            return cls(epoch, chunks, size, _b64_field(plans, "data"))
        if not isinstance(to, list) or not 1 <= len(to) <= MAX_RECEIVERS_FIELD:
            raise MalformedMessage(f"field 'to' must be a list of 1 to {MAX_RECEIVERS_FIELD} receivers")
        if not isinstance(plans, list) or len(plans) != len(to):
            raise MalformedMessage("field 'data' must hold one sealed plan per receiver in 'to'")
        receivers = tuple(_int_field(k, "to", 1, MAX_RECEIVERS_FIELD) for k in to)
        if len(set(receivers)) != len(receivers):
            raise MalformedMessage("field 'to' names a receiver twice")
        return cls(epoch, chunks, size, tuple(_b64_field(plan, "data") for plan in plans), receivers)


class SealedChunk(Message):
    """Header of the binary frame that follows: ciphertext of ``size`` bytes in epoch ``epoch``, and its XXH3-64.

    No file index, offset or name: the receiver knows each chunk's place from its sealed plan.
    """

    TYPE: ClassVar[str] = "chunk"
    __slots__ = ("epoch", "size", "xxh3_64")
    epoch: int
    size: int
    xxh3_64: str

    def __init__(self, epoch: int, size: int, xxh3_64: str) -> None:
        _set_field(self, "epoch", epoch)
        _set_field(self, "size", size)
        _set_field(self, "xxh3_64", xxh3_64)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedChunk:
        return cls(
            _int_field(data.get("epoch"), "epoch", 0, MAX_EPOCH),
            _int_field(data.get("size"), "size", TAG_SIZE),
            _hex_field(data.get("xxh3_64"), "xxh3_64", 16),
        )


class End(Message):
    """All of epoch ``epoch``'s chunks have been sent."""

    TYPE: ClassVar[str] = "end"
    __slots__ = ("epoch",)
    epoch: int

    def __init__(self, epoch: int) -> None:
        _set_field(self, "epoch", epoch)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> End:
        return cls(_int_field(data.get("epoch"), "epoch", 0, MAX_EPOCH))


class ChunkAck(Message):
    """Receiver progress: ``chunks`` chunks of epoch ``epoch`` authenticated and written (clear: the relay sees
    as much anyway)."""

    TYPE: ClassVar[str] = "ack"
    __slots__ = ("epoch", "chunks", "peer")
    epoch: int
    chunks: int
    peer: int | None

    def __init__(self, epoch: int, chunks: int, peer: int | None = None) -> None:
        _set_field(self, "epoch", epoch)
        _set_field(self, "chunks", chunks)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkAck:
        return cls(_int_field(data.get("epoch"), "epoch", 0, MAX_EPOCH), _int_field(data.get("chunks"), "chunks"),
                   _optional_peer(data))


class Sealed(Message):
    """Any other party-to-party message, sealed on the pair's control channel and forwarded opaquely."""

    TYPE: ClassVar[str] = "sealed"
    __slots__ = ("data", "to", "peer")
    data: str
    to: int | None
    peer: int | None

    def __init__(self, data: str, to: int | None = None, peer: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "to", to)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sealed:
        return cls(_b64_field(data.get("data"), "data"), _optional_to(data), _optional_peer(data))


class SealedCancel(Message):
    """A party gives up; a receiver may seal its reason for the sender in ``data``."""

    TYPE: ClassVar[str] = "cancel"
    __slots__ = ("data", "peer")
    data: str | None
    peer: int | None

    def __init__(self, data: str | None = None, peer: int | None = None) -> None:
        _set_field(self, "data", data)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealedCancel:
        sealed = data.get("data")
        return cls(None if sealed is None else _b64_field(sealed, "data"), _optional_peer(data))


# --- v2 resume (docs/protocol.md section 10): seats proved with tokens derived from the pair key -----------

VERIFIER_DIGITS = 64  # hex(SHA-256(token))
TOKEN_DIGITS = 64  # hex of a 32-byte resume token


class ResumeId(Message):
    """A party registers the verifier (SHA-256 of its resume token) of its seat; the sender names receiver ``to``.

    Only the digest reaches the relay: a relay (or its logs) cannot take a seat with it.
    """

    TYPE: ClassVar[str] = "resume_id"
    __slots__ = ("verifier", "to")
    verifier: str
    to: int | None

    def __init__(self, verifier: str, to: int | None = None) -> None:
        _set_field(self, "verifier", verifier)
        _set_field(self, "to", to)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResumeId:
        return cls(_hex_field(data.get("verifier"), "verifier", VERIFIER_DIGITS), _optional_to(data))


class SeatToken(Record):
    """One seat's proof: the current token, and the verifier of the next one (a token is good once)."""

    __slots__ = ("token", "next_verifier")
    token: str
    next_verifier: str

    def __init__(self, token: str, next_verifier: str) -> None:
        _set_field(self, "token", token)
        _set_field(self, "next_verifier", next_verifier)

    @classmethod
    def parse(cls, value: object, name: str) -> SeatToken:
        if not isinstance(value, dict):
            raise MalformedMessage(f"field {name!r} must be an object with 'token' and 'next_verifier'")
        return cls(_hex_field(value.get("token"), f"{name}.token", TOKEN_DIGITS),
                   _hex_field(value.get("next_verifier"), f"{name}.next_verifier", VERIFIER_DIGITS))


class RoomShape(Record):
    """What a relay that lost its rooms (a restart) needs to recreate one from a ``resume``: the number of
    receivers and the offer's clear totals (the only things it checks the stream against). Every party knows
    them: the sender chose them, a receiver got them in ``hello`` and in the sealed offer's clear fields."""

    __slots__ = ("receivers", "total_size", "files")
    receivers: int
    total_size: int
    files: int

    def __init__(self, receivers: int, total_size: int, files: int) -> None:
        _set_field(self, "receivers", receivers)
        _set_field(self, "total_size", total_size)
        _set_field(self, "files", files)

    def to_dict(self) -> dict[str, int]:
        return {"receivers": self.receivers, "total_size": self.total_size, "files": self.files}

    @classmethod
    def parse(cls, value: object) -> RoomShape:
        if not isinstance(value, dict):
            raise MalformedMessage("field 'room' must be an object with 'receivers', 'total_size' and 'files'")
        return cls(_int_field(value.get("receivers"), "room.receivers", 1, MAX_RECEIVERS_FIELD),
                   _int_field(value.get("total_size"), "room.total_size"),
                   _int_field(value.get("files"), "room.files", 1, MAX_FILES))


class Resume(Message):
    """The first message on a ``resume=1`` socket: party ``peer`` takes its seat back.

    A receiver sends ``{"peer":k,"token":...,"next_verifier":...}``; the sender (``peer`` 0) one token per pair,
    ``{"peer":0,"tokens":{"k":{"token":...,"next_verifier":...}}}``. ``tokens`` holds (receiver, SeatToken) pairs.
    ``room`` (optional) is the room's shape, from which a relay that has no room for the nameplate (it was
    restarted) recreates it (docs/protocol.md section 10.2). ``verified`` (the sender's, optional): the receivers
    whose ``verified`` it read before its connection dropped; a recreated room does not wait for their seats.
    ``dropped`` (the sender's, optional): the receivers the relay had dropped (``dropped``); a recreated room
    closes their seats at once instead of waiting out another window for them.
    """

    TYPE: ClassVar[str] = "resume"
    __slots__ = ("peer", "tokens", "room", "verified", "dropped")
    peer: int
    tokens: tuple[tuple[int, SeatToken], ...]
    room: RoomShape | None
    verified: tuple[int, ...]
    dropped: tuple[int, ...]

    def __init__(self, peer: int, tokens: tuple[tuple[int, SeatToken], ...], room: RoomShape | None = None,
                 verified: tuple[int, ...] = (), dropped: tuple[int, ...] = ()) -> None:
        _set_field(self, "peer", peer)
        _set_field(self, "tokens", tokens)
        _set_field(self, "room", room)
        _set_field(self, "verified", verified)
        _set_field(self, "dropped", dropped)

    def to_dict(self) -> dict[str, Any]:
        shape = {} if self.room is None else {"room": self.room.to_dict()}
        if self.peer != 0:
            (_, seat), = self.tokens
            return {"type": self.TYPE, "peer": self.peer, "token": seat.token, "next_verifier": seat.next_verifier,
                    **shape}
        done = {"verified": list(self.verified)} if self.verified else {}
        gone = {"dropped": list(self.dropped)} if self.dropped else {}
        return {"type": self.TYPE, "peer": 0, "tokens": {
            str(k): {"token": seat.token, "next_verifier": seat.next_verifier} for k, seat in self.tokens}, **shape,
            **done, **gone}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resume:
        peer = _int_field(data.get("peer"), "peer", 0, MAX_RECEIVERS_FIELD)
        room = None if data.get("room") is None else RoomShape.parse(data.get("room"))
        if peer != 0:
            if room is not None and peer > room.receivers:
                raise MalformedMessage(f"receiver {peer} of a room of {room.receivers}")
            if data.get("verified") is not None or data.get("dropped") is not None:
                raise MalformedMessage("only the sender's resume says which receivers verified or were dropped")
            return cls(peer, ((peer, SeatToken.parse(data, "resume")),), room)
        tokens = data.get("tokens")
        if not isinstance(tokens, dict) or not 1 <= len(tokens) <= MAX_RECEIVERS_FIELD:
            raise MalformedMessage(f"field 'tokens' must map 1 to {MAX_RECEIVERS_FIELD} receivers to their tokens")
        pairs = []
        for name, value in tokens.items():
            k = int(name) if isinstance(name, str) and _is_peer_key(name) else None
            if k is None or k > MAX_RECEIVERS_FIELD:
                raise MalformedMessage("the keys of 'tokens' must be receiver numbers in ASCII digits")
            pairs.append((k, SeatToken.parse(value, f"tokens.{k}")))
        if room is not None and sorted(k for k, _ in pairs) != list(range(1, room.receivers + 1)):
            raise MalformedMessage(f"the sender's 'tokens' must name receivers 1 to {room.receivers}")
        named = {k for k, _ in pairs}
        verified, dropped = _receivers_named(data, "verified", named), _receivers_named(data, "dropped", named)
        if set(verified) & set(dropped):
            raise MalformedMessage("a receiver cannot be both in 'verified' and in 'dropped'")
        return cls(0, tuple(sorted(pairs)), room, verified, dropped)


def _is_peer_key(name: str) -> bool:
    """``[1-9][0-9]{0,3}``: a receiver's number as a key of ``tokens``."""
    return len(name) <= 4 and _is_ascii_digits(name) and name[0] != "0"


def _receivers_named(data: dict[str, Any], name: str, named: set[int]) -> tuple[int, ...]:
    """Optional field ``name`` of a sender's ``resume``: distinct receivers it holds tokens for, sorted."""
    value = data.get(name)
    value = [] if value is None else value
    if (not isinstance(value, list) or len(value) > len(named)
            or any(type(k) is not int or k not in named for k in value) or len(set(value)) != len(value)):
        raise MalformedMessage(f"field '{name}' must list distinct receivers the sender holds tokens for")
    return tuple(sorted(value))


RESYNC_HALF_SIZE = 16  # clients.crypto.RESYNC_HALF_SIZE


class Resync(Message):
    """After a resume, each party of a pair sends its fresh random half of the new control keys' salt, in clear
    (the sender names receiver ``to``; the sender gets a receiver's with ``peer``)."""

    TYPE: ClassVar[str] = "resync"
    __slots__ = ("half", "to", "peer")
    half: str
    to: int | None
    peer: int | None

    def __init__(self, half: str, to: int | None = None, peer: int | None = None) -> None:
        _set_field(self, "half", half)
        _set_field(self, "to", to)
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resync:
        return cls(_b64_field(data.get("half"), "half", RESYNC_HALF_SIZE), _optional_to(data), _optional_peer(data))


class Reconnecting(Message):
    """Relay to the others: party ``peer``'s socket dropped; its seat is parked for the resume window."""

    TYPE: ClassVar[str] = "reconnecting"
    __slots__ = ("peer",)
    peer: int

    def __init__(self, peer: int) -> None:
        _set_field(self, "peer", peer)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reconnecting:
        return cls(_int_field(data.get("peer"), "peer", 0, MAX_RECEIVERS_FIELD))


class Resumed(Message):
    """Relay to everyone: party ``peer`` proved its seat and is back; ``parked`` lists the seats still away."""

    TYPE: ClassVar[str] = "resumed"
    __slots__ = ("peer", "parked")
    peer: int
    parked: tuple[int, ...]

    def __init__(self, peer: int, parked: tuple[int, ...] = ()) -> None:
        _set_field(self, "peer", peer)
        _set_field(self, "parked", parked)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "peer": self.peer, "parked": list(self.parked)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resumed:
        parked = data.get("parked", [])
        if not isinstance(parked, list) or len(parked) > MAX_RECEIVERS_FIELD + 1:
            raise MalformedMessage("field 'parked' must be a list of peers")
        return cls(_int_field(data.get("peer"), "peer", 0, MAX_RECEIVERS_FIELD),
                   tuple(_int_field(k, "parked", 0, MAX_RECEIVERS_FIELD) for k in parked))


class Dropped(Message):
    """Relay to everyone still there: the resume window ended with receivers ``peers`` still away while the sender
    and at least one receiver were there. Their seats are closed for good (a later ``resume`` for one is refused
    with ``dropped``), nobody is away any more, and the transfer goes on without them (docs/protocol.md
    section 10)."""

    TYPE: ClassVar[str] = "dropped"
    __slots__ = ("peers",)
    peers: tuple[int, ...]

    def __init__(self, peers: tuple[int, ...]) -> None:
        _set_field(self, "peers", peers)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, "peers": list(self.peers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Dropped:
        peers = data.get("peers")
        if not isinstance(peers, list) or not 1 <= len(peers) <= MAX_RECEIVERS_FIELD:
            raise MalformedMessage(f"field 'peers' must be a list of 1 to {MAX_RECEIVERS_FIELD} receivers")
        dropped = tuple(_int_field(k, "peers", 1, MAX_RECEIVERS_FIELD) for k in peers)
        if len(set(dropped)) != len(dropped):
            raise MalformedMessage("field 'peers' names a receiver twice")
        return cls(dropped)


MESSAGE_TYPES_V2: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, PeerJoined, Paired, Pake, Confirm, Key, WrongCode, SealedOffer, SealedAccept, SealedDecline, Start,
        Stream, SealedChunk, End, ChunkAck, Sealed, Verified, Complete, SealedCancel, Error, PeerLeft,
        ResumeId, Resume, Resync, Reconnecting, Resumed, Dropped,
    )
}
REGISTRIES: dict[int, dict[str, type[Message]]] = {PROTOCOL_V2: MESSAGE_TYPES_V2}


def parse_message(text: str | bytes, version: int = PROTOCOL_V2) -> Message:
    """Parse one text frame into its message, or raise ``MalformedMessage`` / ``UnknownType``.

    Any string in the frame (a value or a key, at any depth, even in a field the protocol ignores) that is not
    valid Unicode, such as a lone surrogate written as ``"\\ud800"``, makes the whole frame malformed: nothing
    downstream (forwarding, logging, printing, creating a file) can then fail to encode it.
    """
    data = _load_object(text)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("a control message needs a string field 'type'")
    cls = REGISTRIES[version].get(kind)
    if cls is None:
        raise UnknownType(f"unknown message type {escape_text(kind[:64])!r}")
    return cls.from_dict(data)


def parse_offer(text: str | bytes) -> Offer:
    """Parse the plaintext of a sealed offer (``{"type":"offer","files":[...],...}``, docs/protocol.md section
    5.1) with the rules of a frame: JSON, no lone surrogate, then ``Offer``'s own checks. The relay never calls
    this (it cannot open the offer); receivers and the page parity test do."""
    data = _load_object(text)
    if data.get("type") != Offer.TYPE:
        raise MalformedMessage("a sealed offer is an object of type 'offer'")
    return Offer.from_dict(data)


def _load_object(text: str | bytes) -> dict[str, Any]:
    """A JSON object from a text frame (UTF-8, every string valid Unicode), or ``MalformedMessage``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("text frame is not valid UTF-8") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("text frame is not valid JSON") from exc
    if _may_hold_surrogate(text) and not _encodable(data):
        raise MalformedMessage("text frame holds a string that is not valid Unicode (a lone surrogate)")
    if not isinstance(data, dict):
        raise MalformedMessage("a control message must be a JSON object")
    return data


def _may_hold_surrogate(text: str) -> bool:
    """A lone surrogate reaches a parsed string only through a ``\\u`` escape (``\\uD800`` to ``\\uDFFF``) or as
    itself (in a str a caller built): frames with neither skip the walk of ``_encodable``."""
    return "\\u" in text or _has_surrogate(text)


def _encodable(data: object) -> bool:
    """Whether every string in parsed JSON (keys included) is valid Unicode; iterative, so depth costs no stack."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


# --- the stream of one transfer ----------------------------------------------------------------------------


@dataclass(slots=True)
class StreamCheck:
    """Follows the ciphertext stream of one transfer, as the relay sees it (docs/protocol.md section 4.2).

    The relay knows only the clear totals of the offer (``total_size`` plaintext bytes in ``files`` files) and
    of each ``stream``; it checks every chunk's length and XXH3-64 and counts chunks and bytes, so that a sender
    can neither send more than it declared nor end an epoch early. One epoch per transfer in this version.
    """

    total_size: int
    files: int
    max_chunk: int = DEFAULT_MAX_MESSAGE
    epoch: int | None = None
    declared_chunks: int = 0
    declared_bytes: int = 0
    chunks_done: int = 0
    bytes_done: int = 0
    pending: SealedChunk | None = None
    finished: bool = False
    discarding: bool = False  # the pending header is an abandoned epoch's: its payload is dropped
    resumes: int = 0  # epochs reopened after a party came back (resume); at most MAX_RESUMES
    reopened: bool = False  # the open epoch was abandoned by a resume: the sender must open a new one
    earlier_bytes: int = 0  # bytes that passed in abandoned epochs (for the log's byte count)

    def stream(self, message: Stream) -> None:
        """Open the epoch if its clear totals can describe this offer: each chunk carries a 16-byte tag, at
        least one plaintext byte unless it is an empty file's only chunk, and no more plaintext than offered.

        One epoch per transfer, plus one more after each resume, numbered upwards (each under a fresh data key:
        the relay's check is only that an old epoch's frames cannot pass again)."""
        if self.pending is not None:
            raise UnexpectedMessage("a stream message arrived where a chunk's payload was expected")
        if self.epoch is not None and not self.reopened:
            raise UnexpectedMessage("the stream epoch is already open; a new one follows only a resume")
        if self.epoch is not None and message.epoch <= self.epoch:
            raise UnexpectedMessage(f"epoch {message.epoch} after epoch {self.epoch}: epochs only go up")
        overhead = TAG_SIZE * message.chunks
        if message.chunks > self.total_size + self.files or not overhead <= message.bytes <= self.total_size + overhead:
            raise SizeMismatch(f"a stream of {message.chunks} chunks and {message.bytes} bytes cannot carry "
                               f"{self.total_size} bytes in {self.files} file(s)")
        self.epoch, self.declared_chunks, self.declared_bytes = message.epoch, message.chunks, message.bytes
        self.earlier_bytes += self.bytes_done
        self.chunks_done = self.bytes_done = 0
        self.pending, self.finished, self.reopened = None, False, False

    def abandon(self, sender_gone: bool = False) -> None:
        """A party's socket dropped and the room parked: the open epoch (if any) is abandoned, and once everyone
        is back the sender opens the next one from what each receiver holds (frames of the old epoch still on
        their way are dropped). Bounded, so that a room cannot be kept streaming forever by reconnecting.

        When the sender is the one that dropped, a header whose payload was on its way is forgotten: that
        payload died with the sender's socket, and its next socket starts with the next epoch."""
        if self.resumes >= MAX_RESUMES:
            raise ProtocolError(f"more than {MAX_RESUMES} resumes in one transfer", ErrorCode.RESUME_REFUSED)
        self.resumes += 1
        if sender_gone:
            self.pending, self.discarding = None, False
        if self.epoch is not None:
            self.reopened = True
            self.discarding = self.pending is not None

    @property
    def total_bytes(self) -> int:
        """Ciphertext bytes that passed in every epoch of this transfer."""
        return self.earlier_bytes + self.bytes_done

    def chunk(self, header: SealedChunk) -> bool:
        """Check a chunk header; False if it belongs to the epoch a resume abandoned (its payload is dropped:
        it was on its way when the room parked)."""
        if self.pending is not None:
            raise UnexpectedMessage("a chunk header arrived where its payload was expected")
        if self.reopened and header.epoch == self.epoch:
            if header.size > self.max_chunk:
                raise SizeMismatch(f"chunk of {header.size} bytes is over this relay's max_message {self.max_chunk}")
            self.pending, self.discarding = header, True
            return False
        if self.epoch is None or self.finished or header.epoch != self.epoch:
            raise UnexpectedMessage(f"chunk for epoch {header.epoch}, which is not open")
        if header.size > self.max_chunk:
            raise SizeMismatch(f"chunk of {header.size} bytes is over this relay's max_message {self.max_chunk}")
        if self.chunks_done + 1 > self.declared_chunks or self.bytes_done + header.size > self.declared_bytes:
            raise SizeMismatch(f"chunk past the {self.declared_chunks} chunks and {self.declared_bytes} bytes "
                               "the stream declared")
        self.pending = header
        return True

    def payload(self, data: bytes | bytearray | memoryview) -> SealedChunk | None:
        """Check a payload against its header; None if it is one of an abandoned epoch's (drop it)."""
        header = self.pending
        if header is None:
            raise UnexpectedMessage("binary frame without a chunk header")
        if len(data) != header.size:
            raise SizeMismatch(f"payload of {len(data)} bytes, header said {header.size}")
        if self.discarding:
            self.pending, self.discarding = None, False
            return None
        if chunk_digest(data) != header.xxh3_64:
            raise ChecksumMismatch(f"chunk {self.chunks_done} failed its xxh3_64 check")
        self.pending = None
        self.chunks_done += 1
        self.bytes_done += header.size
        return header

    def end(self, message: End) -> bool:
        """Check the end of the epoch; False if it ends the epoch a resume abandoned (dropped)."""
        if self.reopened and self.pending is None and message.epoch == self.epoch:
            return False
        if self.pending is not None or self.epoch is None or self.finished or message.epoch != self.epoch:
            raise UnexpectedMessage(f"end of epoch {message.epoch}, which is not open")
        if self.chunks_done != self.declared_chunks or self.bytes_done != self.declared_bytes:
            raise SizeMismatch(f"epoch ended after {self.chunks_done} chunks and {self.bytes_done} bytes; "
                               f"the stream declared {self.declared_chunks} and {self.declared_bytes}")
        self.finished = True
        return True
