"""End-to-end encryption for protocol v2: codes, the PAKE, key confirmation, sealed control messages, the
encrypted chunk stream. No I/O: bytes in, bytes out, and a typed exception when something does not verify.

``docs/design/protocol-v2.md`` is the specification (key schedule, nonce layouts, what each message carries);
``clients/web/src/crypto.js`` implements the same thing for the page and ``tests/web/test_crypto_js.py`` checks
that the two agree byte for byte. The relay never imports this module: it only forwards what comes out of it.

How the pieces fit, for one sender and receiver ``k``::

    code "42-ocean-table-actor" --split_code--> nameplate "42" (the relay's room) + words (never leave the machine)
    Pake(SENDER, code)  <--- 33-byte SPAKE2 messages, relayed opaquely --->  Pake(RECEIVER, code)
          |  finish()                                                            |  finish()
          v                                                                      v
       PairKeys  --- confirmation(SENDER) -->  check_confirmation(SENDER)     PairKeys
                 <-- confirmation(RECEIVER) -- ...                     (a mismatch raises WrongCode)
       content key (random, one per transfer) --seal_content_key--> open_content_key
       ControlChannel (AES-256-GCM, one key per direction, counter nonces) for the offer and every party message
       data_key(content_key, epoch_salt) -> StreamSealer ... one ciphertext stream fans out ... StreamOpener

Exceptions::

    CryptoError                 base class
    ├── InvalidCode             local: what a person typed is not a code of the form <nameplate>-<words>
    ├── LimitExceeded           local: a counter or size past what the nonce layout allows (never in practice)
    ├── BadPakeMessage          remote: the peer's PAKE message is malformed, not a group element, or our own
    ├── WrongCode               remote: key confirmation failed, i.e. the other side typed another code (or
    │                           someone in between changed a PAKE message: indistinguishable, same outcome)
    └── Tampered                remote: a sealed control message or chunk did not authenticate where it was
        │                       expected (altered, reordered, replayed, spliced from another file or stream)
        └── Truncated           remote: a stream or file ended before its authenticated last chunk
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clients.pake import SIDE_A, SIDE_B, PakeError, Spake2
from relay.record import Record, set_field

LABEL = b"relay-v2"
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
EPOCH_SALT_SIZE = 32
PAKE_MESSAGE_SIZE = 33  # python-spake2's: one side byte ("A" or "B") and a 32-byte Ed25519 element (clients.pake)
CONFIRMATION_SIZE = 32
RESYNC_HALF_SIZE = 16
SEALED_CONTENT_KEY_SIZE = KEY_SIZE + TAG_SIZE

MAX_CODE_LENGTH = 128
MAX_FILES = 2**32  # file index: 4 bytes of the chunk nonce
MAX_CHUNKS_PER_FILE = 2**56  # chunk index: 7 bytes of the chunk nonce
MAX_OFFSET = 2**64 - 1  # chunk offset: 8 bytes of the chunk's associated data
MAX_CONTROL_MESSAGES = 2**64  # control counter: the last 8 bytes of the control nonce

CODE_RE = re.compile(r"(?P<nameplate>[0-9]{1,8})-(?P<words>[a-z0-9]+(?:-[a-z0-9]+)*)")
# The Unicode White_Space characters spelled out: Python's \s also matches U+001C..U+001F, JavaScript's also
# U+FEFF, and the two normalisations must agree (clients/web/src/crypto.js has the same class).
_SEPARATORS_RE = re.compile("[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000_.\\-]+")


class Role(StrEnum):
    """The two ends of a PAKE: the sender runs one exchange with each receiver."""

    SENDER = "sender"
    RECEIVER = "receiver"

    @property
    def other(self) -> Role:
        return Role.RECEIVER if self is Role.SENDER else Role.SENDER


class CryptoError(Exception):
    """Base class of everything this module raises on purpose."""


class InvalidCode(CryptoError, ValueError):
    """What a person typed is not ``<nameplate>-<words>`` (digits, then letters/digits words, at most 128)."""


class LimitExceeded(CryptoError):
    """A counter or offset beyond the nonce layout: refuse rather than ever reuse a nonce."""


class BadPakeMessage(CryptoError):
    """The peer's PAKE message is not one (wrong length or side, not a prime-order element, our own echoed)."""


class WrongCode(CryptoError):
    """Key confirmation failed: the other side used another code, or a PAKE message was changed in transit."""


ConfirmationFailed = WrongCode
"""The same failure under the name of the check that detects it."""


class Tampered(CryptoError):
    """A sealed message or chunk did not authenticate at the position it was expected in."""


class Truncated(Tampered):
    """A file or stream ended before its authenticated last chunk: the tail was dropped."""


# --- codes ---------------------------------------------------------------------------------------------------


def normalize_code(text: str) -> str:
    """Turn what a person typed into a code: NFKC, lower case, runs of spaces/``_``/``.``/``-`` become one ``-``.

    NFKC first, so full-width digits and letters from an input method become ASCII; the result is only checked by
    :func:`split_code`. ``clients/web/src/crypto.js`` ``normalizeCode`` does exactly the same.
    """
    folded = unicodedata.normalize("NFKC", text).lower()
    return _SEPARATORS_RE.sub("-", folded).strip("-")


def split_code(code: str) -> tuple[str, str]:
    """Split a normalised code into ``(nameplate, words)``; raise :class:`InvalidCode` if it has another form.

    The nameplate (1 to 8 digits) is allocated by the relay and names the room; the words are the secret and
    never reach the relay. A leading zero is kept as typed: ``"042"`` and ``"42"`` are different nameplates.
    """
    if len(code) > MAX_CODE_LENGTH:
        raise InvalidCode(f"a code has at most {MAX_CODE_LENGTH} characters")
    match = CODE_RE.fullmatch(code)
    if match is None:
        raise InvalidCode("a code looks like 42-ocean-table-actor: the room number, then the secret words")
    return match["nameplate"], match["words"]


def generate_words(wordlist: Sequence[str], count: int = 3) -> str:
    """Draw ``count`` words from ``wordlist`` with the OS CSPRNG (3 words of 2,048 are 33 bits), joined by ``-``."""
    if count < 1 or len(wordlist) < 2:
        raise ValueError("need at least one word and a list of at least two")
    return "-".join(secrets.choice(wordlist) for _ in range(count))


def pake_password(nameplate: str, words: str) -> bytes:
    """The PAKE password: a protocol label, the nameplate and the words, each length-prefixed.

    Binding the nameplate means a guess is only ever a guess for one room; the label keeps these passwords
    apart from any other protocol that might hash the same words.
    """
    return _lv(LABEL + b" code") + _lv(nameplate.encode("ascii")) + _lv(words.encode("ascii"))


# --- the PAKE ------------------------------------------------------------------------------------------------

SENDER_ID = LABEL + b" sender"
RECEIVER_ID = LABEL + b" receiver"


class Pake:
    """One side of one SPAKE2 exchange (python-spake2 0.9's, Ed25519 group, run by ``clients.pake``; side A is the
    sender).

    Construct it, send :attr:`outbound` to the peer through the relay, feed the peer's message to
    :meth:`finish`, then prove the key with :meth:`PairKeys.confirmation` before sending anything else.
    A Pake is single-use (a second ``finish`` is refused), as the one-guess-per-code rule needs.
    """

    def __init__(self, role: Role, code: str, entropy: Callable[[int], bytes] = os.urandom) -> None:
        self.role = role
        self.nameplate, words = split_code(code)
        password = pake_password(self.nameplate, words)
        side = SIDE_A if role is Role.SENDER else SIDE_B
        self._spake = Spake2(side, password, SENDER_ID, RECEIVER_ID, entropy)
        self.outbound: bytes = self._spake.start()

    def finish(self, inbound: bytes) -> PairKeys:
        """Combine the peer's message into the pair's keys; raise :class:`BadPakeMessage` if it is not one."""
        if not isinstance(inbound, bytes) or len(inbound) != PAKE_MESSAGE_SIZE:
            raise BadPakeMessage(f"a PAKE message is {PAKE_MESSAGE_SIZE} bytes")
        expected_side = b"B" if self.role is Role.SENDER else b"A"
        if inbound[:1] != expected_side:
            raise BadPakeMessage("the PAKE message comes from the wrong side")
        try:
            shared = self._spake.finish(inbound)
        except PakeError as error:
            raise BadPakeMessage("the PAKE message is not a valid group element") from error
        sender_msg, receiver_msg = (self.outbound, inbound) if self.role is Role.SENDER else (inbound, self.outbound)
        return PairKeys.derive(shared, transcript_hash(self.nameplate, sender_msg, receiver_msg))


def transcript_hash(nameplate: str, sender_message: bytes, receiver_message: bytes) -> bytes:
    """SHA-256 over the label, the nameplate and both PAKE messages (each length-prefixed)."""
    parts = (LABEL + b" transcript", nameplate.encode("ascii"), sender_message, receiver_message)
    return hashlib.sha256(b"".join(_lv(part) for part in parts)).digest()


class PairKeys(Record):
    """Every key one sender/receiver pair derives from its PAKE key (HKDF-SHA-256, salt = transcript hash).

    ``repr`` is suppressed so a key never lands in a log by accident.
    """

    __slots__ = ("transcript", "confirm_sender", "confirm_receiver", "control_sender_to_receiver",
                 "control_receiver_to_sender", "content_key_wrap", "resume_sender", "resume_receiver")
    transcript: bytes
    confirm_sender: bytes
    confirm_receiver: bytes
    control_sender_to_receiver: bytes
    control_receiver_to_sender: bytes
    content_key_wrap: bytes
    resume_sender: bytes
    resume_receiver: bytes

    def __init__(self, transcript: bytes, confirm_sender: bytes, confirm_receiver: bytes,
                 control_sender_to_receiver: bytes, control_receiver_to_sender: bytes, content_key_wrap: bytes,
                 resume_sender: bytes, resume_receiver: bytes) -> None:
        set_field(self, "transcript", transcript)
        set_field(self, "confirm_sender", confirm_sender)
        set_field(self, "confirm_receiver", confirm_receiver)
        set_field(self, "control_sender_to_receiver", control_sender_to_receiver)
        set_field(self, "control_receiver_to_sender", control_receiver_to_sender)
        set_field(self, "content_key_wrap", content_key_wrap)
        set_field(self, "resume_sender", resume_sender)
        set_field(self, "resume_receiver", resume_receiver)

    @classmethod
    def derive(cls, shared: bytes, transcript: bytes) -> PairKeys:
        def key(name: str) -> bytes:
            return hkdf(shared, transcript, LABEL + b" " + name.encode("ascii"))

        return cls(
            transcript=transcript,
            confirm_sender=key("confirm sender"),
            confirm_receiver=key("confirm receiver"),
            control_sender_to_receiver=key("control sender to receiver"),
            control_receiver_to_sender=key("control receiver to sender"),
            content_key_wrap=key("content key wrap"),
            resume_sender=key("resume sender"),
            resume_receiver=key("resume receiver"),
        )

    def __repr__(self) -> str:
        return "PairKeys(<secret>)"

    def confirmation(self, role: Role) -> bytes:
        """The key-confirmation MAC that ``role`` sends: HMAC-SHA-256 over the transcript with its own key."""
        key = self.confirm_sender if role is Role.SENDER else self.confirm_receiver
        return hmac.new(key, LABEL + b" confirm " + role.value.encode("ascii") + self.transcript, "sha256").digest()

    def check_confirmation(self, role: Role, mac: bytes) -> None:
        """Check (in constant time) the MAC that ``role`` sent; raise :class:`WrongCode` if it differs."""
        if not isinstance(mac, bytes) or not hmac.compare_digest(mac, self.confirmation(role)):
            raise WrongCode("the code was wrong; nothing was sent; start again with a new code")

    def control_channel(self, role: Role, resync: bytes = b"") -> ControlChannel:
        """The sealed party-to-party channel as seen by ``role`` (sends on its direction, opens the other).

        ``resync`` is empty on the first connection. After a reconnection (issue 11) it is the sender's 16 fresh
        random bytes followed by the receiver's (exchanged in clear): the new channel's keys are
        HKDF(direction key, salt = resync), so its counters restart at 0 without reusing a nonce, messages of the
        old connection cannot be replayed into it, and each side's sending key is fresh as long as its *own*
        random half is, whatever a relay replays or repeats.
        """
        s2r, r2s = self.control_sender_to_receiver, self.control_receiver_to_sender
        if resync:
            if len(resync) != 2 * RESYNC_HALF_SIZE:
                raise ValueError(f"resync is {2 * RESYNC_HALF_SIZE} bytes: the sender's half, then the receiver's")
            s2r, r2s = hkdf(s2r, resync, _RESYNC_INFO), hkdf(r2s, resync, _RESYNC_INFO)
        return ControlChannel(s2r, r2s) if role is Role.SENDER else ControlChannel(r2s, s2r)

    def seal_content_key(self, content_key: bytes) -> bytes:
        """Seal the transfer's content key to this receiver (AES-256-GCM; the wrap key is used exactly once)."""
        if len(content_key) != KEY_SIZE:
            raise ValueError("a content key is 32 bytes")
        return AESGCM(self.content_key_wrap).encrypt(bytes(NONCE_SIZE), content_key, _content_key_aad(self.transcript))

    def open_content_key(self, sealed: bytes) -> bytes:
        """Open the sender's sealed content key; raise :class:`Tampered` if it does not authenticate."""
        if not isinstance(sealed, bytes) or len(sealed) != SEALED_CONTENT_KEY_SIZE:
            raise Tampered(f"a sealed content key is {SEALED_CONTENT_KEY_SIZE} bytes")
        try:
            return AESGCM(self.content_key_wrap).decrypt(bytes(NONCE_SIZE), sealed, _content_key_aad(self.transcript))
        except InvalidTag as error:
            raise Tampered("the sealed content key did not authenticate") from error

    def resume_token(self, role: Role) -> bytes:
        """The secret ``role`` shows to come back into a parked room (issue 11); the relay keeps its SHA-256."""
        return self.resume_sender if role is Role.SENDER else self.resume_receiver


_RESYNC_INFO = LABEL + b" control resync"


def new_resync_half() -> bytes:
    """This party's fresh random half of a reconnection's ``resync`` salt (see :meth:`PairKeys.control_channel`)."""
    return secrets.token_bytes(RESYNC_HALF_SIZE)


def _content_key_aad(transcript: bytes) -> bytes:
    return LABEL + b" content key" + transcript


def new_content_key() -> bytes:
    """A fresh random content key: one per transfer, shared by every receiver, never derived from the code."""
    return secrets.token_bytes(KEY_SIZE)


# --- control messages ----------------------------------------------------------------------------------------


class ControlChannel:
    """AES-256-GCM for party-to-party messages: one key per direction, nonce = 4 zero bytes + a 64-bit counter.

    The counter is implicit (both ends count the messages of each direction), so a message that was dropped,
    replayed, reordered or taken from another pair or direction fails to open and raises :class:`Tampered`.
    After a failure the channel stays at the same position: the caller must end the transfer, not skip ahead.
    """

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self.sent = 0
        self.received = 0

    def seal(self, plaintext: bytes) -> bytes:
        """Seal the next outgoing message."""
        nonce = _control_nonce(self.sent)
        self.sent += 1
        return self._send.encrypt(nonce, plaintext, _CONTROL_AAD)

    def open(self, sealed: bytes) -> bytes:
        """Open the next incoming message; raise :class:`Tampered` if it is not the next one from the peer."""
        try:
            plaintext = self._receive.decrypt(_control_nonce(self.received), sealed, _CONTROL_AAD)
        except InvalidTag as error:
            raise Tampered(f"control message {self.received} did not authenticate") from error
        self.received += 1
        return plaintext


_CONTROL_AAD = LABEL + b" control"


def _control_nonce(counter: int) -> bytes:
    if counter >= MAX_CONTROL_MESSAGES:
        raise LimitExceeded("too many control messages on one key")
    return bytes(4) + counter.to_bytes(8, "big")


# --- the data stream -----------------------------------------------------------------------------------------


def new_epoch_salt() -> bytes:
    """A fresh random salt for one stream epoch (the first stream and every resumed one)."""
    return secrets.token_bytes(EPOCH_SALT_SIZE)


def data_key(content_key: bytes, epoch_salt: bytes) -> bytes:
    """The stream key of one epoch: HKDF-SHA-256(content key, salt = epoch salt, info = "relay-v2 data").

    A resumed stream draws a new salt, so it never encrypts under a (key, nonce) pair used before, even when it
    starts again at chunk 0 of a file whose bytes have changed.
    """
    if len(content_key) != KEY_SIZE or len(epoch_salt) != EPOCH_SALT_SIZE:
        raise ValueError("a content key and an epoch salt are 32 bytes each")
    return hkdf(content_key, epoch_salt, LABEL + b" data")


def chunk_nonce(file: int, chunk: int, last: bool) -> bytes:
    """STREAM nonce: file index (4 bytes, big-endian), chunk index in this epoch (7 bytes), last flag (1 byte)."""
    if not 0 <= file < MAX_FILES or not 0 <= chunk < MAX_CHUNKS_PER_FILE:
        raise LimitExceeded("file or chunk index beyond the nonce layout")
    return file.to_bytes(4, "big") + chunk.to_bytes(7, "big") + (b"\x01" if last else b"\x00")


def chunk_aad(file: int, offset: int, last: bool) -> bytes:
    """Associated data of a chunk: label, file index (4 bytes), byte offset in the file (8 bytes), last flag."""
    if not 0 <= offset <= MAX_OFFSET:
        raise LimitExceeded("offset beyond 64 bits")
    return _CHUNK_LABEL + file.to_bytes(4, "big") + offset.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


_CHUNK_LABEL = LABEL + b" chunk"


class ChunkCipher:
    """AES-256-GCM over single chunks at an explicit position; :class:`StreamSealer`/:class:`StreamOpener` track
    the position so callers cannot get it wrong."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, file: int, chunk: int, offset: int, last: bool, plaintext: bytes) -> bytes:
        return self._aead.encrypt(chunk_nonce(file, chunk, last), plaintext, chunk_aad(file, offset, last))

    def open(self, file: int, chunk: int, offset: int, last: bool, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(chunk_nonce(file, chunk, last), sealed, chunk_aad(file, offset, last))
        except InvalidTag as error:
            raise Tampered(f"chunk {chunk} of file {file} (offset {offset}) did not authenticate") from error


class Segment(Record):
    """Plaintext bytes ``[start, end)`` of file ``file`` that one epoch carries (``end`` is the file's size)."""

    __slots__ = ("file", "start", "end")
    file: int
    start: int
    end: int

    def __init__(self, file: int, start: int, end: int) -> None:
        set_field(self, "file", file)
        set_field(self, "start", start)
        set_field(self, "end", end)


class ChunkPosition(Record):
    """Where a chunk belongs: its file, its index within this epoch's part of the file, offset, length, last."""

    __slots__ = ("file", "chunk", "offset", "length", "last")
    file: int
    chunk: int
    offset: int
    length: int
    last: bool

    def __init__(self, file: int, chunk: int, offset: int, length: int, last: bool) -> None:
        set_field(self, "file", file)
        set_field(self, "chunk", chunk)
        set_field(self, "offset", offset)
        set_field(self, "length", length)
        set_field(self, "last", last)


class StreamPlan(Record):
    """What one epoch sends, in order: the segments and the chunk size (both inside the sealed offer/resume).

    A segment of ``n`` bytes is ``ceil(n / chunk_size)`` chunks, the last one short; an empty segment (an empty
    file) is one empty chunk, so that even an empty file ends with an authenticated last chunk.
    """

    __slots__ = ("segments", "chunk_size")
    segments: tuple[Segment, ...]
    chunk_size: int

    def __init__(self, segments: tuple[Segment, ...], chunk_size: int) -> None:
        set_field(self, "segments", segments)
        set_field(self, "chunk_size", chunk_size)
        if self.chunk_size < 1:
            raise ValueError("chunk size must be positive")
        files = [segment.file for segment in self.segments]
        if len(set(files)) != len(files):
            raise ValueError("a file appears twice in one epoch")
        for segment in self.segments:
            if not 0 <= segment.file < MAX_FILES or not 0 <= segment.start <= segment.end <= MAX_OFFSET:
                raise LimitExceeded("segment beyond the nonce layout")
            if -(-(segment.end - segment.start) // self.chunk_size) > MAX_CHUNKS_PER_FILE:
                raise LimitExceeded("too many chunks for one file")

    def positions(self) -> Iterator[ChunkPosition]:
        """Every chunk of the epoch, in stream order."""
        for segment in self.segments:
            offset, chunk = segment.start, 0
            while True:
                length = min(self.chunk_size, segment.end - offset)
                last = offset + length == segment.end
                yield ChunkPosition(segment.file, chunk, offset, length, last)
                if last:
                    break
                offset += length
                chunk += 1

    def chunk_count(self) -> int:
        """How many chunks the epoch sends (clear, for the relay's limits)."""
        return sum(max(1, -(-(s.end - s.start) // self.chunk_size)) for s in self.segments)

    def ciphertext_size(self) -> int:
        """How many ciphertext bytes the epoch sends (clear, for the relay's limits)."""
        return sum(s.end - s.start for s in self.segments) + TAG_SIZE * self.chunk_count()


class StreamSealer:
    """Encrypts one epoch's plaintext chunks in plan order; the caller supplies exactly the planned lengths."""

    def __init__(self, key: bytes, plan: StreamPlan) -> None:
        self._cipher = ChunkCipher(key)
        self._positions = plan.positions()
        self.position: ChunkPosition | None = next(self._positions, None)

    def seal_next(self, plaintext: bytes) -> bytes:
        """Seal the next chunk (its length must be the planned one)."""
        position = self.position
        if position is None:
            raise ValueError("the stream is complete")
        if len(plaintext) != position.length:
            raise ValueError(f"chunk {position.chunk} of file {position.file} is {position.length} bytes")
        sealed = self._cipher.seal(position.file, position.chunk, position.offset, position.last, plaintext)
        self.position = next(self._positions, None)
        return sealed

    @property
    def done(self) -> bool:
        return self.position is None


class OpenedChunk(Record):
    """An authenticated chunk: write ``plaintext`` at ``offset`` of ``file``; ``last`` means the file is whole."""

    __slots__ = ("file", "offset", "plaintext", "last")
    file: int
    offset: int
    plaintext: bytes
    last: bool

    def __init__(self, file: int, offset: int, plaintext: bytes, last: bool) -> None:
        set_field(self, "file", file)
        set_field(self, "offset", offset)
        set_field(self, "plaintext", plaintext)
        set_field(self, "last", last)


class StreamOpener:
    """Decrypts one epoch's chunks, expecting them at the planned positions, in order.

    Because each chunk is opened under the nonce and associated data of the position it *should* have, any
    reordering, replay, splice between files or epochs, or alteration raises :class:`Tampered`, and
    :meth:`finish` raises :class:`Truncated` if the stream stopped before the last chunk of its last file.
    A file is complete (may get its final name, once its digest also checks) only at an ``OpenedChunk`` with
    ``last`` set.
    """

    def __init__(self, key: bytes, plan: StreamPlan) -> None:
        self._cipher = ChunkCipher(key)
        self._positions = plan.positions()
        self.position: ChunkPosition | None = next(self._positions, None)

    def open_next(self, sealed: bytes) -> OpenedChunk:
        """Open the next chunk; raise :class:`Tampered` if it is not the expected one."""
        position = self.position
        if position is None:
            raise Tampered("a chunk after the end of the stream")
        if len(sealed) != position.length + TAG_SIZE:
            raise Tampered(f"chunk {position.chunk} of file {position.file} has the wrong length")
        plaintext = self._cipher.open(position.file, position.chunk, position.offset, position.last, sealed)
        self.position = next(self._positions, None)
        return OpenedChunk(position.file, position.offset, plaintext, position.last)

    @property
    def done(self) -> bool:
        return self.position is None

    def finish(self) -> None:
        """Call when the sender says the stream ended; raise :class:`Truncated` if chunks are missing."""
        if self.position is not None:
            raise Truncated(f"file {self.position.file} ended before its last chunk (offset {self.position.offset})")


# --- helpers -------------------------------------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA-256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _lv(data: bytes) -> bytes:
    """Length-prefix ``data`` (4 bytes, big-endian) so that concatenations cannot be re-split differently."""
    return len(data).to_bytes(4, "big") + data
