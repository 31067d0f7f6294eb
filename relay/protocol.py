"""The relay wire protocol, version 1: messages, validation and checksums, with no I/O.

Server and clients both import this module; ``docs/protocol.md`` is its specification. Everything here works
on already-received frames (``str`` for text, ``bytes`` for binary) and returns values or raises a
``ProtocolError`` subclass that names the error code to send back, so it is tested without sockets.

Exceptions::

    ProtocolError                 the peer broke the protocol; carries an ErrorCode (and so a close code)
    ├── MalformedMessage          not JSON / wrong field types
    ├── UnknownType               a ``type`` this version does not know
    ├── UnexpectedMessage         a known message at the wrong moment
    ├── UnsafePath                an offered path that could escape or confuse the receiver's folder
    ├── ChecksumMismatch          a chunk or file digest that does not match the bytes
    └── SizeMismatch              a length or offset that disagrees with the offer
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

import xxhash

PROTOCOL_VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
ACK_INTERVAL = 8 * 1024 * 1024
MAX_FILES = 100_000
MAX_TEXT = 1000
MAX_SAFE_INT = 2**53 - 1
ROOM_CODE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


class ErrorCode(StrEnum):
    """Machine-readable error codes; each maps to one WebSocket close code (docs/protocol.md section 5)."""

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
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    TOO_MANY_ROOMS = "too_many_rooms"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RATE_LIMITED = "rate_limited"
    TRANSFER_TOO_LARGE = "transfer_too_large"

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
    ErrorCode.HANDSHAKE_TIMEOUT: 4042,
    ErrorCode.UNAUTHORIZED: 4401,
    ErrorCode.FORBIDDEN_ORIGIN: 4403,
    ErrorCode.TOO_MANY_ROOMS: 4429,
    ErrorCode.TOO_MANY_CONNECTIONS: 4430,
    ErrorCode.RATE_LIMITED: 4431,
    ErrorCode.TRANSFER_TOO_LARGE: 4413,
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


class FileDigest:
    """Running XXH3-128 of a whole file, fed chunk by chunk in order."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_128()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# --- paths -------------------------------------------------------------------------------------------------

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
_WINDOWS_FORBIDDEN_CHARS = set('<>:"|?*\\')


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in "\u2028\u2029"


def check_path(path: object) -> str:
    """Return ``path`` if it is a safe relative POSIX path for a receiver to create, else raise ``UnsafePath``.

    A sender's paths are hostile input: this refuses anything that could land outside the receiver's folder,
    hide as something else on screen, or mean something special on Windows.
    """
    if not isinstance(path, str):
        raise MalformedMessage("a path must be a string")
    shown = escape_text(path)
    if not path:
        raise UnsafePath("an empty path was offered")
    if len(path.encode("utf-8", "surrogatepass")) > 4096:
        raise UnsafePath(f"path too long: {shown[:80]}...")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path refused: {shown}")
    for char in path:
        if _is_control(char):
            raise UnsafePath(f"control character in path refused: {shown}")
        if char in _WINDOWS_FORBIDDEN_CHARS:
            raise UnsafePath(f"character {char!r} in path refused: {shown}")
        if "\ud800" <= char <= "\udfff":
            raise UnsafePath(f"path is not valid Unicode: {shown}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafePath(f"empty, '.' or '..' segment refused: {shown}")
        if len(segment.encode("utf-8")) > 255:
            raise UnsafePath(f"path segment too long: {shown[:80]}...")
        if segment[-1] in ". ":
            raise UnsafePath(f"segment ending in a dot or space refused: {shown}")
        if segment.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
            raise UnsafePath(f"Windows-reserved name refused: {shown}")
    return path


def escape_text(text: str) -> str:
    """Make wire text safe to print: control and bidi-override characters become visible escapes."""
    out = []
    for char in text:
        if _is_control(char) or unicodedata.category(char) == "Cf":
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def normalize_code(text: str) -> str:
    """Turn what a person typed into a room code: lower case, separators unified to ``-``."""
    code = re.sub(r"[\s_.]+", "-", text.strip().lower()).strip("-")
    return code


def is_valid_code(code: str) -> bool:
    return ROOM_CODE_RE.fullmatch(code) is not None


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
    if not isinstance(value, str) or len(value) != digits or not _HEX.fullmatch(value):
        raise MalformedMessage(f"field {name!r} must be {digits} lower-case hex digits")
    return value


_HEX = re.compile(r"[0-9a-f]+")


class Message:
    """Base of every control message; ``TYPE`` is its wire ``type``."""

    TYPE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.TYPE}
        for spec in fields(self):  # type: ignore[arg-type]
            value = getattr(self, spec.name)
            if value is None:
                continue
            data[spec.name] = value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    version: int
    role: str
    peer: int
    receivers: int
    max_message: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hello:
        role = data.get("role")
        if role not in ("send", "receive"):
            raise MalformedMessage("field 'role' must be 'send' or 'receive'")
        return cls(
            _int_field(data.get("version"), "version"),
            role,
            _int_field(data.get("peer"), "peer"),
            _int_field(data.get("receivers"), "receivers", 1),
            _int_field(data.get("max_message"), "max_message", 1),
        )


@dataclass(frozen=True, slots=True)
class PeerJoined(Message):
    TYPE: ClassVar[str] = "peer_joined"
    peer: int
    joined: int
    receivers: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerJoined:
        return cls(
            _int_field(data.get("peer"), "peer"),
            _int_field(data.get("joined"), "joined"),
            _int_field(data.get("receivers"), "receivers"),
        )


@dataclass(frozen=True, slots=True)
class Paired(Message):
    TYPE: ClassVar[str] = "paired"
    receivers: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Paired:
        return cls(_int_field(data.get("receivers"), "receivers"))


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One offered file: its relative POSIX path and size in bytes."""

    path: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size}


MAX_TEXT_OFFER = 1024 * 1024


class OfferKind(StrEnum):
    """What an offer carries: files to save (the default), a text to show, or bytes read from standard input."""

    FILES = "files"
    TEXT = "text"
    STDIN = "stdin"


@dataclass(frozen=True, slots=True)
class Offer(Message):
    """The manifest: every file (by index) and every folder to create, and the sender's chunk size."""

    TYPE: ClassVar[str] = "offer"
    files: tuple[FileEntry, ...]
    dirs: tuple[str, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    kind: OfferKind = OfferKind.FILES  # left out on the wire when FILES

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "files": [entry.to_dict() for entry in self.files],
            "dirs": list(self.dirs),
            "chunk_size": self.chunk_size,
            **({} if self.kind is OfferKind.FILES else {"kind": self.kind.value}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Offer:
        files = data.get("files")
        dirs = data.get("dirs", [])
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise MalformedMessage(f"field 'files' must be a list of at most {MAX_FILES} entries")
        if not isinstance(dirs, list) or len(dirs) > MAX_FILES:
            raise MalformedMessage(f"field 'dirs' must be a list of at most {MAX_FILES} entries")
        entries = []
        for item in files:
            if not isinstance(item, dict):
                raise MalformedMessage("each entry of 'files' must be an object")
            entries.append(FileEntry(check_path(item.get("path")), _int_field(item.get("size"), "size")))
        offer = cls(
            tuple(entries),
            tuple(check_path(d) for d in dirs),
            _int_field(data.get("chunk_size", DEFAULT_CHUNK_SIZE), "chunk_size", 1),
            _kind_field(data.get("kind", OfferKind.FILES.value)),
        )
        offer.check_layout()
        return offer

    def check_layout(self) -> None:
        """Refuse duplicate paths and a file that is also a parent folder of another entry."""
        if self.kind is not OfferKind.FILES and (len(self.files) != 1 or self.dirs):
            raise MalformedMessage(f"a {self.kind.value!r} offer holds exactly one file and no folder")
        if self.kind is OfferKind.TEXT and self.files[0].size > MAX_TEXT_OFFER:
            raise MalformedMessage(f"a text offer is at most {MAX_TEXT_OFFER} bytes")
        file_paths: set[str] = set()
        for entry in self.files:
            key = entry.path.casefold()
            if key in file_paths:
                raise UnsafePath(f"path offered twice: {escape_text(entry.path)}")
            file_paths.add(key)
        if self.total_size > MAX_SAFE_INT:
            raise MalformedMessage("total size too large")
        for path in [entry.path for entry in self.files] + list(self.dirs):
            parts = path.casefold().split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in file_paths:
                    raise UnsafePath(f"a file is also used as a folder: {escape_text(path)}")


@dataclass(frozen=True, slots=True)
class Accept(Message):
    TYPE: ClassVar[str] = "accept"
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Accept:
        return cls(_optional_peer(data))


@dataclass(frozen=True, slots=True)
class Decline(Message):
    TYPE: ClassVar[str] = "decline"
    reason: str = ""
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decline:
        return cls(_str_field(data.get("reason", ""), "reason"), _optional_peer(data))


@dataclass(frozen=True, slots=True)
class Start(Message):
    TYPE: ClassVar[str] = "start"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Start:
        return cls()


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    """Header of the binary frame that follows it."""

    TYPE: ClassVar[str] = "chunk"
    file: int
    offset: int
    size: int
    xxh3_64: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        return cls(
            _int_field(data.get("file"), "file"),
            _int_field(data.get("offset"), "offset"),
            _int_field(data.get("size"), "size", 1),
            _hex_field(data.get("xxh3_64"), "xxh3_64", 16),
        )


@dataclass(frozen=True, slots=True)
class FileDone(Message):
    TYPE: ClassVar[str] = "file_done"
    file: int
    size: int
    xxh3_128: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileDone:
        return cls(
            _int_field(data.get("file"), "file"),
            _int_field(data.get("size"), "size"),
            _hex_field(data.get("xxh3_128"), "xxh3_128", 32),
        )


@dataclass(frozen=True, slots=True)
class Done(Message):
    TYPE: ClassVar[str] = "done"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Done:
        return cls()


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    file: int
    offset: int
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ack:
        return cls(_int_field(data.get("file"), "file"), _int_field(data.get("offset"), "offset"), _optional_peer(data))


@dataclass(frozen=True, slots=True)
class FileOk(Message):
    TYPE: ClassVar[str] = "file_ok"
    file: int
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileOk:
        return cls(_int_field(data.get("file"), "file"), _optional_peer(data))


@dataclass(frozen=True, slots=True)
class Verified(Message):
    TYPE: ClassVar[str] = "verified"
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verified:
        return cls(_optional_peer(data))


@dataclass(frozen=True, slots=True)
class Complete(Message):
    TYPE: ClassVar[str] = "complete"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Complete:
        return cls()


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "cancel"
    reason: str = ""
    peer: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cancel:
        return cls(_str_field(data.get("reason", ""), "reason"), _optional_peer(data))


@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str = ""
    peer: int | None = None

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


@dataclass(frozen=True, slots=True)
class PeerLeft(Message):
    TYPE: ClassVar[str] = "peer_left"
    peer: int
    role: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerLeft:
        role = data.get("role")
        if role not in ("send", "receive"):
            raise MalformedMessage("field 'role' must be 'send' or 'receive'")
        return cls(_int_field(data.get("peer"), "peer"), role)


def _kind_field(value: object) -> OfferKind:
    if not isinstance(value, str) or value not in OfferKind.__members__.values():
        raise MalformedMessage("field 'kind' must be 'files', 'text' or 'stdin'")
    return OfferKind(value)


def _optional_peer(data: dict[str, Any]) -> int | None:
    peer = data.get("peer")
    return None if peer is None else _int_field(peer, "peer")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, PeerJoined, Paired, Offer, Accept, Decline, Start, Chunk, FileDone, Done,
        Ack, FileOk, Verified, Complete, Cancel, Error, PeerLeft,
    )
}


def parse_message(text: str | bytes) -> Message:
    """Parse one text frame into its message, or raise ``MalformedMessage`` / ``UnknownType`` / ``UnsafePath``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage("text frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("a control message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("a control message needs a string field 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise UnknownType(f"unknown message type {escape_text(kind[:64])!r}")
    return cls.from_dict(data)


# --- the stream of one transfer ----------------------------------------------------------------------------


@dataclass(slots=True)
class TransferCheck:
    """Follows the chunk stream of one offer and refuses anything that breaks section 3's rules.

    Used by the relay (which checks every chunk before forwarding it) and by receivers (which also check the
    whole-file digests). Feed it ``chunk(header)``, then ``payload(data)``, ``file_done(msg)`` and ``done()``
    in wire order.
    """

    offer: Offer
    max_chunk: int = DEFAULT_MAX_MESSAGE
    file_index: int = 0
    offset: int = 0
    pending: Chunk | None = None
    finished: bool = False
    bytes_done: int = 0
    hash_files: bool = False
    _file_digest: FileDigest | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.hash_files:
            self._file_digest = FileDigest()

    def chunk(self, header: Chunk) -> None:
        """Accept a chunk header if it is the next expected piece of the current file."""
        if self.pending is not None:
            raise UnexpectedMessage("a chunk header arrived where its payload was expected")
        self._check_open()
        if header.file != self.file_index:
            raise UnexpectedMessage(f"chunk for file {header.file} while file {self.file_index} is being sent")
        if header.offset != self.offset:
            raise UnexpectedMessage(f"chunk at offset {header.offset}, expected {self.offset}")
        limit = min(self.offer.chunk_size, self.max_chunk)
        if header.size > limit:
            raise SizeMismatch(f"chunk of {header.size} bytes is over the chunk size {limit}")
        if header.offset + header.size > self.offer.files[self.file_index].size:
            raise SizeMismatch(f"chunk runs past the end of file {self.file_index}")
        self.pending = header

    def payload(self, data: bytes | bytearray | memoryview) -> Chunk:
        """Check a binary frame against its header; return the header it belongs to."""
        header = self.pending
        if header is None:
            raise UnexpectedMessage("binary frame without a chunk header")
        if len(data) != header.size:
            raise SizeMismatch(f"payload of {len(data)} bytes, header said {header.size}")
        if chunk_digest(data) != header.xxh3_64:
            raise ChecksumMismatch(f"chunk at offset {header.offset} of file {header.file} failed its xxh3_64 check")
        if self._file_digest is not None:
            self._file_digest.update(data)
        self.pending = None
        self.offset += header.size
        self.bytes_done += header.size
        return header

    def file_done(self, message: FileDone) -> None:
        """Close the current file; with ``hash_files`` also check its whole-file digest."""
        if self.pending is not None:
            raise UnexpectedMessage("file_done arrived where a payload was expected")
        self._check_open()
        if message.file != self.file_index:
            raise UnexpectedMessage(f"file_done for file {message.file} while file {self.file_index} is open")
        size = self.offer.files[self.file_index].size
        if message.size != size or self.offset != size:
            raise SizeMismatch(f"file {self.file_index} ended at {self.offset} bytes, offer said {size}")
        if self._file_digest is not None:
            if self._file_digest.hexdigest() != message.xxh3_128:
                raise ChecksumMismatch(f"file {escape_text(self.offer.files[self.file_index].path)} failed its xxh3_128 check")
            self._file_digest = FileDigest()
        self.file_index += 1
        self.offset = 0

    def done(self) -> None:
        if self.pending is not None or self.file_index != len(self.offer.files):
            raise UnexpectedMessage("done arrived before every file was finished")
        self.finished = True

    def _check_open(self) -> None:
        if self.file_index >= len(self.offer.files):
            raise UnexpectedMessage("data after the last offered file")
