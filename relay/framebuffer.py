"""One receive buffer per WebSocket connection, and the frame headers read from it (no I/O).

The relay's WebSocket connections are read as ``asyncio.BufferedProtocol`` (``relay.transport``): the event
loop's ``recv_into`` writes socket bytes straight into ``FrameBuffer.writable()``, so a chunk is never a new
``bytes`` per read nor appended to a parser's own buffer. ``next_frame`` reads the header of the frame at the
front. A complete binary frame stays where it is (``hold``) until ``take_binary`` unmasks it, in one pass, into
the one new ``bytes`` the relay forwards (immutable, so a transport may keep a reference to it for as long as it
likes, and the receive buffer can be reused at once). A whole text frame is unmasked the same way
(``take_payload``). Every other complete frame (control frames, fragments) is handed over raw (``take_raw``) to
the ``websockets`` protocol, which keeps the rules for those; so is everything after a frame this buffer does
not judge (``NotFastPath``: unmasked, RSV bits, longer than ``max_frame``), which ``websockets`` then refuses
with the right close code.

``take_chunk`` is the forwarding path's shortcut: a chunk's header (text) and payload (binary) frames at the
front, both whole, parsed and unmasked in one call with no header object, so that the frames of one read are
forwarded in one pass (``relay.transport``).

Memory: the buffer starts at ``SMALL`` bytes (an idle connection holds no more), grows to hold the largest
frame seen plus ``SLACK`` (never past ``max_frame`` plus a header and ``SLACK``: a sender's connection holds the
chunk being forwarded and the start of the next one) and is given back (``release``) when it holds nothing.
While a sender's small chunks are forwarded from its read callback, ``floor`` (``batch_for``: as many whole
chunks as fit in ``BATCH``) keeps it at least that large and is what one read brings in: several chunks, ending
on a chunk boundary (docs/protocol.md section 8).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is built for every platform websockets ships wheels for
    from websockets.utils import apply_mask

SMALL = 4 * 1024  # an idle connection's buffer: pings, pongs and the opening messages fit
SLACK = 16 * 1024  # room past the largest frame, for the next frame's header and small messages
MIN_READ = 2 * 1024  # compact (or pause reading) rather than offer the kernel less than this
MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask)
# The least capacity of a buffer whose chunks are forwarded in batches (``floor``): about four 64 KiB chunks per
# read, as the asyncio TCP relay reads (benchmarks/tcp_relay.py); the kernel's read and write are then paid once
# per batch, not once per chunk (docs/design/speed.md section 14).
BATCH = 256 * 1024

OP_TEXT = 0x1
OP_BINARY = 0x2
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


@dataclass(slots=True)
class FrameHeader:
    """The header of the complete frame at the front of the buffer (not frozen: two are made per chunk, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``)."""

    fin: bool
    opcode: int
    header_len: int
    length: int
    mask: bytes

    @property
    def fast_binary(self) -> bool:
        """A whole binary message in one frame: the kind the relay forwards without websockets' parser."""
        return self.fin and self.opcode == OP_BINARY

    @property
    def fast_text(self) -> bool:
        """A whole text message in one frame (a chunk header, an ack...): decoded here, not by websockets."""
        return self.fin and self.opcode == OP_TEXT


class NotFastPath(Exception):
    """The bytes at the front are not a frame this buffer parses (unmasked, RSV bits, too long): give every
    byte from here on to ``websockets``, which fails the connection with the right close code."""


class FrameBuffer:
    """Socket bytes in, whole frames out; ``start``..``end`` is the unparsed data in ``buf``."""

    __slots__ = ("buf", "start", "end", "want", "max_frame", "held", "floor", "pair")

    def __init__(self, max_frame: int) -> None:
        self.buf = bytearray()
        self.start = 0
        self.end = 0
        self.want = 0  # where the incomplete frame at ``start`` ends, once its header said so (else 0)
        self.max_frame = max_frame
        self.held: FrameHeader | None = None  # a complete binary frame at ``start``, waiting for ``take_binary``
        self.floor = 0  # bytes per read while chunks are forwarded in batches (``batch_for``: at most ``BATCH``)
        self.pair = 0  # wire bytes of the last header and payload ``take_chunk`` took

    def __len__(self) -> int:
        return self.end - self.start

    # --- socket side ----------------------------------------------------------------------------------

    def writable(self) -> memoryview:
        """Where the next read goes: the free end of the buffer, grown or compacted first when the frame at the
        front needs it (or fewer than ``MIN_READ`` bytes are free).

        The caller should not read while ``full`` (a held frame fills the buffer): that is when reading pauses.
        """
        need = self._needed()
        size = len(self.buf)
        # Chunks forwarded in batches: room for several per read (held is None: not while the app's path holds one).
        floor = self.floor if self.held is None else 0
        target = floor if size < floor else size
        if size - self.start < need or target != size:
            self._move(target if target >= need else SMALL if need <= SMALL else max(need + SLACK, floor))
        elif self.start > 0 and self.held is None and (size - self.end < MIN_READ or size - self.start < floor):
            self._move(size)  # the partial frame at the end goes to the front, the read gets the rest
        if len(self.buf) == self.end:  # a held frame fills the buffer: only if read while ``full``
            self._move(len(self.buf) + SMALL)
        if floor:
            # In batches, a read ends ``floor`` bytes past the frame at the front: when ``floor`` is a whole number
            # of the sender's chunks (``batch_for``), a full read ends on a chunk boundary and nothing is left to move.
            limit = self.start + max(floor, need)
            if limit - self.end >= MIN_READ and limit <= len(self.buf):
                return memoryview(self.buf)[self.end : limit]
        return memoryview(self.buf)[self.end :]

    def batch_for(self, pair: int) -> None:
        """Read in batches of whole chunks whose header and payload frames take ``pair`` bytes on the wire: as many
        as fit in ``BATCH`` (at least one), so that a full read ends where a chunk does."""
        self.floor = max(BATCH // pair, 1) * pair

    def wrote(self, count: int) -> bool:
        """``count`` bytes were read into the view ``writable`` returned; False while the frame at the front
        is known to be still incomplete (then there is nothing to parse: a large frame takes many reads)."""
        self.end += count
        return self.end >= self.want

    @property
    def full(self) -> bool:
        """A held frame leaves less than ``MIN_READ`` free: stop reading until it is taken."""
        return self.held is not None and len(self.buf) - self.end < MIN_READ

    # --- protocol side --------------------------------------------------------------------------------

    def next_frame(self) -> FrameHeader | None:
        """The header of the complete frame at the front, or None while it is incomplete.

        Raises ``NotFastPath`` for a frame that must go to ``websockets`` with everything after it.
        """
        if self.held is not None:
            return self.held
        return self._frame_at(self.start)

    def frame_after(self, header: FrameHeader) -> FrameHeader | None:
        """The header of the complete frame right behind ``header``'s (the frame at the front, not taken), or
        None while that one is incomplete; as ``next_frame``, it raises ``NotFastPath`` for a frame this buffer
        does not judge. Until the second frame is whole, ``writable`` makes room for both."""
        return self._frame_at(self.start + header.header_len + header.length)

    def binary_follows(self, header: FrameHeader) -> bool:
        """The frame behind ``header``'s has begun to arrive and is a whole binary message (FIN, no RSV bits)."""
        after = self.start + header.header_len + header.length
        return after < self.end and self.buf[after] == 0x80 | OP_BINARY

    def nothing_after(self, header: FrameHeader) -> bool:
        """No byte of a frame behind ``header``'s has arrived yet."""
        return self.start + header.header_len + header.length == self.end

    def payload_starts_with(self, header: FrameHeader, prefix: bytes) -> bool:
        """The (unmasked) payload of the frame at the front begins with ``prefix``; nothing is taken."""
        if header.length < len(prefix):
            return False
        begin = self.start + header.header_len
        with memoryview(self.buf) as view:
            return apply_mask(view[begin : begin + len(prefix)], header.mask) == prefix

    def _frame_at(self, start: int) -> FrameHeader | None:
        buf = self.buf
        available = self.end - start
        if available < 2:
            return None
        first, second = buf[start], buf[start + 1]
        if first & 0x70 or not second & 0x80:  # RSV bits (no extension is negotiated), or an unmasked frame
            raise NotFastPath()
        length = second & 0x7F
        header_len = 6
        if length == 126:
            header_len = 8
            if available < header_len:
                return None
            length = _U16.unpack_from(buf, start + 2)[0]
        elif length == 127:
            header_len = 14
            if available < header_len:
                return None
            length = _U64.unpack_from(buf, start + 2)[0]
        if length > self.max_frame:
            raise NotFastPath()
        if available < header_len + length:
            self.want = start + header_len + length
            return None
        self.want = 0
        mask = bytes(buf[start + header_len - 4 : start + header_len])
        return FrameHeader(bool(first & 0x80), first & 0x0F, header_len, length, mask)

    def take_chunk(self, max_text: int, max_binary: int) -> tuple[str, bytes] | None:
        """A whole text frame (at most ``max_text`` bytes, valid UTF-8) and the whole binary frame right behind it
        (at most ``max_binary`` bytes), both single-frame messages: their payloads, unmasked and taken. Otherwise
        None, with nothing taken: the caller reads the front frame by frame (``next_frame``), which judges
        everything else (an incomplete frame, RSV bits, an unmasked or oversized frame, invalid UTF-8).

        The same result as ``next_frame``, ``take_payload``, ``next_frame``, ``hold`` and ``take_binary`` in a row,
        without the two header objects: a sender's chunk header and payload, 16,384 times per GiB at 64 KiB.
        """
        buf, start, end = self.buf, self.start, self.end
        if end - start < 2 or self.held is not None or buf[start] != 0x81:  # FIN, no RSV bits, text
            return None
        length = buf[start + 1]
        if length & 0x80 == 0:
            return None  # unmasked
        length &= 0x7F
        if length < 126:
            text_at = start + 6
        elif length == 126 and end - start >= 4:
            length = _U16.unpack_from(buf, start + 2)[0]
            text_at = start + 8
        else:
            return None
        binary = text_at + length  # where the binary frame begins
        if length > max_text or end - binary < 2 or buf[binary] != 0x82:  # FIN, no RSV bits, binary
            return None
        size = buf[binary + 1]
        if size & 0x80 == 0:
            return None
        size &= 0x7F
        if size < 126:
            data_at = binary + 6
        elif size == 126 and end - binary >= 4:
            size = _U16.unpack_from(buf, binary + 2)[0]
            data_at = binary + 8
        elif size == 127 and end - binary >= 10:
            size = _U64.unpack_from(buf, binary + 2)[0]
            data_at = binary + 14
        else:
            return None
        if size > max_binary or size > self.max_frame or data_at + size > end:
            return None
        with memoryview(buf) as view:
            try:
                text = apply_mask(view[text_at:binary], buf[text_at - 4 : text_at]).decode()
            except UnicodeDecodeError:
                return None
            data = apply_mask(view[data_at : data_at + size], buf[data_at - 4 : data_at])
        self.pair = data_at + size - start
        self._consumed(data_at + size)
        return text, data

    def hold(self, header: FrameHeader) -> None:
        """Keep the binary frame ``header`` describes in place until ``take_binary``."""
        self.held = header

    def take_binary(self) -> bytes:
        """The held frame's payload, unmasked into a new ``bytes`` (the one copy); its space is free again."""
        header = self.held
        assert header is not None, "take_binary without a held frame"
        self.held = None
        begin = self.start + header.header_len
        with memoryview(self.buf) as view:
            data = apply_mask(view[begin : begin + header.length], header.mask)
        self._consumed(begin + header.length)
        return data

    def take_payload(self, header: FrameHeader) -> bytes:
        """The payload of the frame ``header`` describes (not held), unmasked."""
        begin = self.start + header.header_len
        with memoryview(self.buf) as view:
            data = apply_mask(view[begin : begin + header.length], header.mask)
        self._consumed(begin + header.length)
        return data

    def take_raw(self, header: FrameHeader) -> bytes:
        """The whole frame ``header`` describes, as it came from the socket (for ``websockets`` to parse)."""
        end = self.start + header.header_len + header.length
        raw = bytes(self.buf[self.start : end])
        self._consumed(end)
        return raw

    def take_rest(self) -> bytes:
        """Every unparsed byte (after ``NotFastPath``)."""
        rest = bytes(self.buf[self.start : self.end])
        self._consumed(self.end)
        return rest

    def release(self) -> bool:
        """Give back a grown buffer that holds nothing (the next read allocates ``SMALL`` bytes again)."""
        self.floor = 0  # the connection's app waits: batches start again with the next forwarded chunk
        if self.end or self.held is not None or len(self.buf) <= SMALL:
            return False
        self.buf = bytearray()
        return True

    # --- internals ------------------------------------------------------------------------------------

    def _needed(self) -> int:
        """Bytes the frame at ``start`` needs in all (header included), as far as its header says yet."""
        if self.want:
            return max(self.want - self.start, MIN_READ)
        buf, start, available = self.buf, self.start, self.end - self.start
        if available < 2 or self.held is not None:
            return MIN_READ
        length = buf[start + 1] & 0x7F
        if length == 126 and available >= 4:
            length = _U16.unpack_from(buf, start + 2)[0] + 8
        elif length == 127 and available >= 10:
            length = _U64.unpack_from(buf, start + 2)[0] + 14
        elif length >= 126:
            return MIN_READ
        else:
            length += 6
        return max(min(length, self.max_frame + MAX_HEADER), MIN_READ)

    def _consumed(self, position: int) -> None:
        self.start = position
        self.want = 0
        if self.start == self.end:
            self.start = self.end = 0

    def _move(self, capacity: int) -> None:
        """Move the unparsed bytes to the front of a buffer of ``capacity`` bytes (the same one if it fits)."""
        size = self.end - self.start
        if capacity == len(self.buf):
            if self.start:
                with memoryview(self.buf) as view:
                    view[:size] = view[self.start : self.end]
        else:
            grown = bytearray(capacity)
            grown[:size] = memoryview(self.buf)[self.start : self.end]
            self.buf = grown
        if self.want:
            self.want -= self.start
        self.start, self.end = 0, size
