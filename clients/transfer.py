"""Sending and receiving over the relay: the client side of protocol v2 (end-to-end encrypted), no terminal I/O.

``send`` and ``receive`` report what happens through a ``Reporter`` (the CLI draws progress bars from it; tests
record it) and raise a ``TransferError`` subclass with a one-line message when a transfer does not finish.

Every wait is bounded (``Deadlines``): a relay or a peer that goes silent ends the transfer with
``DeadlineExceeded`` naming what was awaited, never a hang. The sender reports success only after a ``verified``
from every receiver, counted by peer; a ``complete`` without them is a protocol error from the relay.

Encryption is always on (docs/protocol.md, ``clients.crypto``): the words of the code never leave this
machine; the sender and each receiver run a PAKE through the relay and confirm it before anything else; the
offer and every party-to-party message are sealed on the pair's control channel; every chunk is sealed with the
STREAM construction under one content key, so one ciphertext stream fans out to every receiver. A receiver
commits nothing under a final name unless every file's last chunk authenticated (and, with several receivers,
its sealed SHA-256 matched).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from relay import protocol as p
from relay.codes import wordlist
from relay.protocol import ErrorCode
from relay.record import Record, set_field
from clients import crypto as c
from clients.chunkcrypt import ChunkOpenerInto, ChunkSealerInto
from clients.diskio import FileReader, FileWriter, ReadFailed, Shrank, WriteFailed, preallocate
from clients.connection import ConnectionLost, PeerRefused, RelayConnection, default_relay_url, peer_name
from clients.errors import DeadlineExceeded, LocalFailure, RelayUnavailable, TransferError, TransferRefused
from clients.offer import Outgoing, collect
from clients.store import STATE_NAME, BadState, Claim, Destination, write_error


class Reporter:
    """What a transfer tells its user; every method is optional to override."""

    def connected(self, peer: int, receivers: int) -> None:
        """Receiver: admitted to the room as receiver ``peer`` of ``receivers``; the offer comes once all are in."""

    def waiting(self, code: str, receivers: int) -> None:
        """Sender: the room is open; ``code`` (nameplate and words) is what each receiver must type."""

    def joined(self, joined: int, expected: int) -> None:
        """Sender: ``joined`` of ``expected`` receivers are in."""

    def offered(self, offer: p.Offer) -> None:
        """Receiver: the sender offers this."""

    def started(self, total: int) -> None:
        """Bytes are about to flow; ``total`` bytes in all."""

    def advanced(self, done: int) -> None:
        """``done`` bytes of the total have been sent (sender) or written (receiver)."""

    def finished(self) -> None:
        """Every byte arrived and every checksum matched."""

    def skipped(self, left_out: list[tuple[str, str]]) -> None:
        """Sender, before offering: these local paths are not sent, each with the reason (unreadable, a link to a
        folder, not a regular file). Only called when the list is not empty."""

    def renamed(self, mappings: list[tuple[str, str]]) -> None:
        """Receiver, before accepting: these offered paths will be stored under another name on this system
        (``clients.store.local_name``), as ``(offered, stored as)``. Only called when the list is not empty."""

    def reconnecting(self, attempt: int) -> None:
        """The connection to the relay was lost (this party's or, ``attempt`` 0, another's): trying again."""

    def resent(self, count: int) -> None:
        """Sender, at the end: ``count`` bytes were sent again after reconnections (0: none)."""

    def kept(self, count: int) -> None:
        """Resume by hand, once the first epoch is planned: ``count`` bytes the receiver held from an earlier
        attempt (checked by digest) are not sent again (0: none)."""

    def changed(self, path: str) -> None:
        """Resume by hand: the receiver held part of ``path`` from an earlier attempt, but the file changed since
        (size, mtime or the digest of those bytes): it is sent again from the start."""

    def warning(self, text: str) -> None:
        """Something worth saying that does not stop the transfer (e.g. an untrustworthy state file, ignored)."""

    def dropped(self, peer: int) -> None:
        """Sender: receiver ``peer`` did not come back within the relay's resume window and was dropped; the
        transfer goes on for the others (docs/protocol.md section 10)."""


class Dropped(TransferRefused):
    """Receivers were dropped (docs/protocol.md section 10): on the sender, the others got every file and these
    did not (``peers``); on a receiver, this one came back too late and its resume was refused (its parts and
    state file are kept for resume by hand). Either way, fewer receivers than asked for got the files."""

    def __init__(self, message: str, peers: tuple[int, ...] = (), held: int = 0) -> None:
        super().__init__(ErrorCode.DROPPED, message)
        self.peers = peers
        self.held = held  # a dropped receiver: the bytes it holds (recorded in its state file)


class Deadlines(Record):
    """How long, in seconds, each wait may last before the transfer ends with ``DeadlineExceeded``.

    The defaults are generous and a bit longer than the relay's own limits, so that with a working relay its
    clear error arrives first: 10 minutes for pairing, 30 minutes for every receiver to answer an offer
    (``offer_timeout``), 2 minutes for an idle room.
    """

    __slots__ = ("connect", "receivers", "answer", "frame", "verified", "leave", "resume_window")
    connect: float  # the relay's ``hello`` after opening the WebSocket
    receivers: float  # sender: until every receiver joined; receiver: until the offer came
    answer: float  # sender: until every receiver accepted; receiver: until the first chunk after accepting
    frame: float  # while streaming: the next frame (receiver), or the relay taking a frame (sender)
    verified: float  # sender: after ``done``, until every ``verified`` and ``complete``
    leave: float  # telling the room why this party leaves (a relay that stopped reading never takes it)
    resume_window: float  # DEFAULT_RESUME_WINDOW: how long a lost connection is tried again; 0: never

    def __init__(self, connect: float = 60.0, receivers: float = 660.0, answer: float = 1860.0, frame: float = 300.0,
                 verified: float = 600.0, leave: float = 5.0, resume_window: float = 300.0) -> None:
        set_field(self, "connect", connect)
        set_field(self, "receivers", receivers)
        set_field(self, "answer", answer)
        set_field(self, "frame", frame)
        set_field(self, "verified", verified)
        set_field(self, "leave", leave)
        set_field(self, "resume_window", resume_window)


DEFAULT_DEADLINES = Deadlines()
DEFAULT_RESUME_WINDOW = 300.0  # the relay's default --resume-window
STATE_INTERVAL = 1024 * 1024  # a receiver records its progress in the state file after this many bytes,
STATE_SHARE = 16  # or 16 times the state file's size (many files): at most 1/16 more written,
STATE_PERIOD = 0.5  # and at most every half second unless a file just ended (each record drains the writer)
WORDS_PER_CODE = 3  # 33 bits from the 2,048-word list: one guess per code (a wrong guess ends the room)


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class StatePacer:
    """When a receiver rewrites its state file (docs/protocol.md section 10.3); pure, the caller passes the time.

    Each record first drains the data path's writer (the state never counts a byte not yet written), which stops
    the receive loop until the disk took every queued chunk: done once per 1 MiB chunk, receiving and writing
    never overlapped (docs/design/speed.md section 10: receiver user CPU 0.87 -> 0.61 s/GiB). So a record needs
    both enough new bytes (``STATE_INTERVAL``, or ``STATE_SHARE`` times the last state file's size when it
    lists many files) and either a file that just ended or ``STATE_PERIOD`` seconds since the last one: a
    killed receiver loses at most half a second of transfer, and a stalled one has recorded every file it
    finished.
    """

    written: int  # bytes counted by the last record (or when receiving started)
    at: float  # when it was written
    size: int = 0  # the state file's size then

    def due(self, written: int, now: float, file_ended: bool) -> bool:
        """Whether to record now, with ``written`` bytes received and flushed-to-be."""
        if written - self.written < max(STATE_INTERVAL, STATE_SHARE * self.size):
            return False
        return file_ended or now - self.at >= STATE_PERIOD

    def wrote(self, written: int, now: float, size: int) -> None:
        """A record of ``size`` bytes was written at ``now``, counting ``written`` bytes."""
        self.written, self.at, self.size = written, now, size


class SendOptions(Record):
    """``words`` are the secret part of the code (generated when empty); the relay adds the nameplate."""

    __slots__ = ("words", "relay_url", "receivers", "chunk_size", "skip_unreadable", "kind", "deadlines")
    words: str
    relay_url: str
    receivers: int
    chunk_size: int
    skip_unreadable: bool  # send what can be read and report the rest, instead of refusing to start
    kind: p.OfferKind
    deadlines: Deadlines

    def __init__(self, words: str = "", relay_url: str = "", receivers: int = 1, chunk_size: int = p.DEFAULT_CHUNK_SIZE,
                 skip_unreadable: bool = False, kind: p.OfferKind = p.OfferKind.FILES,
                 deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        set_field(self, "words", words)
        set_field(self, "relay_url", relay_url)
        set_field(self, "receivers", receivers)
        set_field(self, "chunk_size", chunk_size)
        set_field(self, "skip_unreadable", skip_unreadable)
        set_field(self, "kind", kind)
        set_field(self, "deadlines", deadlines)

    @property
    def url(self) -> str:
        return self.relay_url or default_relay_url()


class ReceiveOptions(Record):
    """``code`` is what the sender shows, ``<nameplate>-<words>`` (normalised by ``clients.crypto.normalize_code``)."""

    __slots__ = ("code", "output", "relay_url", "overwrite", "deadlines", "output_for")
    code: str
    output: Path
    relay_url: str
    overwrite: bool
    deadlines: Deadlines
    # Chooses the folder for an offer once it is known (the CLI receives a text, or piped data bound for its
    # stdout, into a temporary folder); it may raise LocalFailure to refuse the offer. None: always ``output``.
    output_for: Callable[[p.Offer], Path] | None

    def __init__(self, code: str, output: Path = Path("."), relay_url: str = "", overwrite: bool = False,
                 deadlines: Deadlines = DEFAULT_DEADLINES,
                 output_for: Callable[[p.Offer], Path] | None = None) -> None:
        set_field(self, "code", code)
        set_field(self, "output", output)
        set_field(self, "relay_url", relay_url)
        set_field(self, "overwrite", overwrite)
        set_field(self, "deadlines", deadlines)
        set_field(self, "output_for", output_for)

    @property
    def url(self) -> str:
        return self.relay_url or default_relay_url()


Confirm = Callable[[p.Offer], Awaitable[bool]]
T = TypeVar("T")

# What a receiver tells the room when it refuses an offer or fails on its own side: a neutral reason per error
# code. The local detail (file names, folder, "use --overwrite") stays in the receiver's own message.
PUBLIC_REASONS: dict[ErrorCode, str] = {
    ErrorCode.FILE_EXISTS: "the receiver's files would be overwritten",
    ErrorCode.DISK_FULL: "the receiver does not have enough free space",
    ErrorCode.UNSAFE_PATH: "the receiver cannot store a path of the offer safely",
    ErrorCode.WRITE_FAILED: "the receiver could not write the files",
    ErrorCode.DECLINED: "the receiver declined",
}
DECLINED_REASON = "the receiver declined"


def public_reason(failure: LocalFailure) -> str:
    """The short neutral reason a receiver sends for a failure on its own side."""
    return PUBLIC_REASONS.get(failure.code, "the receiver could not finish")


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} s"


async def _within(seconds: float, what: str, awaitable: Awaitable[T], code: ErrorCode = ErrorCode.IDLE_TIMEOUT) -> T:
    """Await ``awaitable`` for at most ``seconds``; past that raise ``DeadlineExceeded`` saying what was awaited."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise DeadlineExceeded(code, f"gave up after {_duration(seconds)} waiting for {what}") from None


async def _leave(connection: RelayConnection, ending: Awaitable[None], seconds: float) -> None:
    """Run an ending (abort, cancel, close) for at most ``seconds``, then drop the socket regardless.

    A relay that stopped reading leaves the socket's buffers full, so even a last ``error`` could wait forever.
    """
    try:
        async with asyncio.timeout(seconds):
            await ending
    except TimeoutError:
        connection.drop()


WRONG_CODE_MESSAGE = "the code was wrong; nothing was sent; start again with a new code"
TAMPERED_MESSAGE = "a sealed message or chunk did not authenticate: the data was altered on the way"


def wrong_code() -> TransferRefused:
    return TransferRefused(ErrorCode.WRONG_CODE, WRONG_CODE_MESSAGE)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode a base64 value the relay already checked for form (``relay.protocol``)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise c.Tampered("a sealed value is not base64") from exc


def _seal_json(channel: c.ControlChannel, value: object) -> str:
    return _b64(channel.seal(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")))


def _open_json(channel: c.ControlChannel, text: str) -> object:
    """Open a sealed JSON value; once it authenticated, a shape that does not parse is the sender's bug or attack."""
    plain = channel.open(_unb64(text))
    try:
        return json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise p.MalformedMessage("a sealed message is not JSON") from exc


def check_words(words: str) -> str:
    """Normalise the secret words a person chose (``--code``) and check their form; raise ``InvalidCode``."""
    normalized = c.normalize_code(words)
    c.split_code("1-" + normalized)
    return normalized


async def _open(options: SendOptions | ReceiveOptions, role: str, nameplate: str | None = None,
                receivers: int | None = None) -> RelayConnection:
    try:
        opening = RelayConnection.open(options.url, nameplate, role, receivers)
        return await _within(options.deadlines.connect, "the relay to answer", opening)
    except DeadlineExceeded as exc:
        raise RelayUnavailable(ErrorCode.BAD_REQUEST, f"the relay at {options.url} did not answer: {exc}") from None


# --- resume (docs/protocol.md section 10, design/protocol-v2.md section 7) ----------------------------------

RESUME_NEXT_INFO = c.LABEL + b" resume next"
MAX_RECONNECT_ATTEMPTS = 30
RECONNECT_BACKOFF = 0.2  # seconds before the first attempt, doubled each time up to MAX_BACKOFF
MAX_BACKOFF = 10.0
# Refusals worth another attempt: the relay may not have noticed the drop yet (the seat is not parked yet).
# ``room_not_found``: a relay restarting may answer before it has the room again.
RETRY_CODES = frozenset({ErrorCode.RESUME_REFUSED, ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_CONNECTIONS,
                         ErrorCode.ROOM_NOT_FOUND})


def verifier(token: bytes) -> str:
    """What the relay keeps of a resume token: its SHA-256, so that the relay cannot take a seat itself."""
    return hashlib.sha256(token).hexdigest()


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class SeatTokens:
    """This party's current resume token per pair (a receiver has one, for peer 0... keyed by its own number).

    Each token is good once: a resume shows it with the verifier of the next, ``HKDF(T, "", "relay-v2 resume
    next")``, and the next one replaces it once the relay accepted the resume. ``shape`` is the room's shape,
    sent with every resume so that a relay restarted meanwhile can recreate the room (protocol section 10.2)."""

    tokens: dict[int, bytes]
    shape: p.RoomShape | None = None
    verified: set[int] = field(default_factory=set)  # the sender's: receivers whose ``verified`` it has read
    dropped: set[int] = field(default_factory=set)  # the sender's: receivers the relay dropped (``dropped``)

    def message(self, peer: int) -> p.Resume:
        return p.Resume(peer, tuple((k, p.SeatToken(t.hex(), verifier(self.following(t))))
                                    for k, t in sorted(self.tokens.items())), self.shape,
                        tuple(sorted(self.verified - self.dropped)) if peer == 0 else (),
                        tuple(sorted(self.dropped)) if peer == 0 else ())

    @staticmethod
    def following(token: bytes) -> bytes:
        return c.hkdf(token, b"", RESUME_NEXT_INFO)

    def advance(self) -> None:
        self.tokens = {k: self.following(t) for k, t in self.tokens.items()}


async def _reconnect(url: str, nameplate: str, hello: p.Hello, seat: SeatTokens, window: float,
                     reporter: Reporter) -> RelayConnection:
    """Take this party's parked seat back: bounded attempts with backoff, for at most ``window`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    attempt = 0
    while attempt < MAX_RECONNECT_ATTEMPTS and loop.time() < deadline:
        attempt += 1
        reporter.reconnecting(attempt)
        await asyncio.sleep(min(RECONNECT_BACKOFF * 2 ** (attempt - 1), MAX_BACKOFF, deadline - loop.time()))
        try:
            async with asyncio.timeout(max(1.0, min(30.0, deadline - loop.time()))):
                connection = await RelayConnection.resume(url, nameplate, hello, seat.message(hello.peer))
        except (RelayUnavailable, ConnectionLost, TimeoutError):
            continue
        except TransferRefused as exc:
            if exc.code in RETRY_CODES:
                continue
            raise
        seat.advance()
        return connection
    raise ConnectionLost(f"the connection to the relay was lost and could not be restored within "
                         f"{_duration(window)} ({attempt} attempts)")


# --- sending -----------------------------------------------------------------------------------------------


async def send(paths: list[str | os.PathLike[str]], options: SendOptions, reporter: Reporter | None = None) -> None:
    """Offer ``paths`` under a fresh code and stream them encrypted; returns once every receiver has verified."""
    reporter = reporter or Reporter()
    outgoing = collect(paths, options.skip_unreadable)
    if options.chunk_size > p.DEFAULT_MAX_MESSAGE - c.TAG_SIZE or options.chunk_size < 1:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"chunk size must be 1 to {p.DEFAULT_MAX_MESSAGE - c.TAG_SIZE} bytes")
    try:
        words = check_words(options.words) if options.words else c.generate_words(wordlist(), WORDS_PER_CODE)
    except c.InvalidCode as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"the words of a code are letters and digits: {exc}") from exc
    try:
        outgoing.offer(options.chunk_size, options.kind).check_layout()
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"cannot send this as {options.kind.value!r}: {exc.message}") from exc
    if outgoing.left_out:
        reporter.skipped(list(outgoing.left_out))
    deadlines = options.deadlines
    connection = await _open(options, "send", receivers=options.receivers)
    chunk_size = min(options.chunk_size, connection.hello.max_message - c.TAG_SIZE)
    try:
        nameplate = connection.hello.nameplate
        if nameplate is None:
            raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay gave this room no nameplate")
        code = f"{nameplate}-{words}"
        offer = outgoing.offer(chunk_size, options.kind)
        offer_text = offer.to_json().encode("utf-8")
        sealed_size = 4 * (-(-(len(offer_text) + c.TAG_SIZE) // 3)) + 200  # base64 and the clear fields
        if sealed_size > connection.hello.max_message:
            raise LocalFailure(
                ErrorCode.MESSAGE_TOO_BIG,
                f"the list of {len(outgoing.files)} file(s) takes {sealed_size} bytes sealed, over the "
                f"{connection.hello.max_message} this relay takes in one message: send fewer files at once",
            )
        reporter.waiting(code, options.receivers)
        content_key = c.new_content_key()
        keys: dict[int, c.PairKeys] = {}
        channels = await _key_receivers(connection, code, options.receivers, content_key, reporter, deadlines.receivers,
                                        keys)
        seat = None
        if deadlines.resume_window > 0:
            seat = SeatTokens({k: pair.resume_token(c.Role.SENDER) for k, pair in sorted(keys.items())},
                              p.RoomShape(options.receivers, offer.total_size, len(offer.files)))
            for k, token in sorted(seat.tokens.items()):
                await connection.send(p.ResumeId(verifier(token), to=k))
        for peer, channel in sorted(channels.items()):
            sealed = _b64(channel.seal(offer_text))
            await connection.send(p.SealedOffer(offer.total_size, len(offer.files), sealed, to=peer))
        accepts = await _within(deadlines.answer, "every receiver to accept the offer",
                                _wait_until_started(connection, channels))
        starts = await _agreed_starts(outgoing, accepts, reporter) if options.receivers == 1 else {}
        room = _Parking(channels, keys, reporter)
        if seat is not None:
            # The same sets: a resume says who verified and who was dropped (a restarted relay needs both).
            seat.verified, seat.dropped = room.verified, room.dropped
        reporter.started(outgoing.total_size)
        link = _SenderLink(connection, room, options.receivers, options.url, nameplate, seat, deadlines.resume_window)
        try:
            await _stream_epochs(link, outgoing, content_key, chunk_size, room, reporter, deadlines, starts)
        finally:
            connection = link.connection
            await link.stop_watching()
        reporter.resent(room.resent)
        reporter.finished()
        if room.dropped:
            raise _dropped(room, options.receivers)
    except c.WrongCode:
        await _leave(connection, connection.close(), deadlines.leave)
        raise wrong_code() from None
    except c.CryptoError as exc:
        await _leave(connection, connection.abort(ErrorCode.TAMPERED, str(exc)), deadlines.leave)
        raise TransferRefused(ErrorCode.TAMPERED, f"{TAMPERED_MESSAGE} ({exc})") from exc
    except p.ProtocolError as error:
        await _leave(connection, connection.abort(error.code, error.message), deadlines.leave)
        raise TransferRefused(error.code, error.message) from error
    except LocalFailure as failure:
        await _leave(connection, connection.abort(failure.code, str(failure)), deadlines.leave)
        raise
    except DeadlineExceeded as exc:
        await _leave(connection, connection.abort(exc.code, str(exc)), deadlines.leave)
        raise
    except TransferError:
        await _leave(connection, connection.close(), deadlines.leave)
        raise
    except asyncio.CancelledError:
        await _leave(connection, connection.cancel(), deadlines.leave)
        raise
    await _leave(connection, connection.close(), deadlines.leave)


async def _key_receivers(
    connection: RelayConnection, code: str, expected: int, content_key: bytes, reporter: Reporter, seconds: float,
    keys: dict[int, c.PairKeys] | None = None,
) -> dict[int, c.ControlChannel]:
    """Run a PAKE with each receiver as it joins, confirm it both ways, and give it the sealed content key.

    Returns each receiver's control channel once the relay says ``paired`` (every receiver in and keyed). A
    confirmation that fails means the receiver typed another code: ``wrong_code`` ends the room for everyone.
    """
    pakes: dict[int, c.Pake] = {}
    keys = {} if keys is None else keys
    channels: dict[int, c.ControlChannel] = {}
    joined = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await connection.receive()
                if isinstance(message, p.PeerJoined) and message.peer not in pakes:
                    joined, expected = message.joined, message.receivers
                    reporter.joined(message.joined, message.receivers)
                    pakes[message.peer] = pake = c.Pake(c.Role.SENDER, code)
                    await connection.send(p.Pake(_b64(pake.outbound), to=message.peer))
                elif isinstance(message, p.Pake) and message.peer in pakes and message.peer not in keys:
                    try:
                        keys[message.peer] = pair = pakes[message.peer].finish(_unb64(message.data))
                    except (c.BadPakeMessage, c.Tampered):
                        await connection.send(p.WrongCode(to=message.peer))
                        raise c.WrongCode(WRONG_CODE_MESSAGE) from None
                    await connection.send(p.Confirm(_b64(pair.confirmation(c.Role.SENDER)), to=message.peer))
                elif isinstance(message, p.Confirm) and message.peer in keys and message.peer not in channels:
                    pair = keys[message.peer]
                    try:
                        pair.check_confirmation(c.Role.RECEIVER, _unb64(message.data))
                    except (c.WrongCode, c.Tampered):
                        await connection.send(p.WrongCode(to=message.peer))
                        raise c.WrongCode(WRONG_CODE_MESSAGE) from None
                    await connection.send(p.Key(_b64(pair.seal_content_key(content_key)), to=message.peer))
                    channels[message.peer] = pair.control_channel(c.Role.SENDER)
                elif isinstance(message, p.Paired) and len(channels) == expected:
                    return channels
                else:
                    raise _unexpected(message, "keying with the receivers")
    except TimeoutError:
        raise DeadlineExceeded(
            ErrorCode.PAIRING_TIMEOUT,
            f"gave up after {_duration(seconds)} waiting for the receivers to join ({joined} of {expected} joined)",
        ) from None


async def _wait_until_started(connection: RelayConnection, channels: dict[int, c.ControlChannel]
                              ) -> dict[int, object]:
    """Wait for ``start``; returns each receiver's opened sealed accept (what it holds from an earlier attempt)."""
    accepts: dict[int, object] = {}
    while True:
        message = await connection.receive()
        if isinstance(message, p.Start):
            return accepts
        if isinstance(message, p.SealedDecline):
            reason = ""
            if message.data is not None and message.peer in channels:
                opened = _open_json(channels[message.peer], message.data)
                if isinstance(opened, dict) and isinstance(opened.get("reason"), str):
                    reason = opened["reason"][: p.MAX_TEXT]
            who = peer_name(message.peer)
            raise PeerRefused(ErrorCode.DECLINED, f"{who} declined the offer", who, reason)
        if not isinstance(message, p.SealedAccept) or message.peer not in channels:
            raise _unexpected(message, "waiting for the receivers to accept")
        if message.data is not None:
            accepts[message.peer] = _open_json(channels[message.peer], message.data)



async def _agreed_starts(outgoing: Outgoing, accepts: dict[int, object], reporter: Reporter) -> dict[int, int]:
    """Resume by hand (protocol section 10.3): of what the one receiver says it holds, the byte counts this
    sender agrees to, per file: its file has the size and mtime it offers, and the SHA-256 of its own first n
    bytes equals the receiver's. Anything else starts again from 0 and the user is told. The claims are
    hostile input: checked for shape and bounds before any file is read."""
    claims = [value.get("have") for value in accepts.values() if isinstance(value, dict)]
    if len(claims) != 1 or not isinstance(claims[0], list):
        return {}
    if len(claims[0]) > len(outgoing.files):
        raise p.MalformedMessage("the receiver claims more files than were offered")
    starts: dict[int, int] = {}
    seen: set[int] = set()
    for claim in claims[0]:
        index = claim.get("file") if isinstance(claim, dict) else None
        have = claim.get("have") if isinstance(claim, dict) else None
        digest = claim.get("sha256") if isinstance(claim, dict) else None
        if (type(index) is not int or not 0 <= index < len(outgoing.files) or index in seen or type(have) is not int
                or not 0 < have <= outgoing.files[index].entry.size or not isinstance(digest, str)):
            raise p.MalformedMessage("the receiver's claim of what it holds is out of range")
        seen.add(index)
        local = outgoing.files[index]
        if await asyncio.to_thread(_same_start, local.source, local.entry, have, digest):
            starts[index] = have
        else:
            reporter.changed(local.entry.path)
    reporter.kept(sum(starts.values()))
    return starts


def _dropped(room: _Parking, receivers: int) -> Dropped:
    """The sender's end when receivers were dropped: how many got everything, and which did not."""
    peers = tuple(sorted(room.dropped))
    named = ", ".join(f"receiver {k}" for k in peers)
    return Dropped(f"{len(room.verified - room.dropped)} of {receivers} receivers got every file, authenticated; "
                   f"{named} did not come back within the resume window and {'was' if len(peers) == 1 else 'were'} "
                   "dropped", peers)


def _same_start(source: Path, entry: p.FileEntry, have: int, digest: str) -> bool:
    """Whether ``source`` still has the offered size and mtime and its first ``have`` bytes hash to ``digest``."""
    try:
        with open(source, "rb") as handle:
            status = os.fstat(handle.fileno())
            if status.st_size != entry.size or (entry.mtime is not None and int(status.st_mtime) != entry.mtime):
                return False
            sha256, left = hashlib.sha256(), have
            while left:
                block = handle.read(min(1024 * 1024, left))
                if not block:
                    return False
                sha256.update(block)
                left -= len(block)
    except OSError:
        return False
    return sha256.hexdigest() == digest


class _Parked(Exception):
    """The room parked (a party's connection dropped): the epoch under way is abandoned."""


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _Parking:
    """The sender's view of resume: who is away, each receiver's position once all are back, the resynced
    channels, and how far the stream got (to count what is sent again)."""

    channels: dict[int, c.ControlChannel]
    keys: dict[int, c.PairKeys]
    reporter: Reporter
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    away: set[int] = field(default_factory=set)
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    high: int = 0  # bytes of the offer (in file order) the stream has got through
    resent: int = 0
    epoch: int = 0  # the epoch being streamed: acks of earlier ones no longer count
    acked: dict[int, int] = field(default_factory=dict)  # receiver -> chunks of this epoch it acknowledged
    acks: asyncio.Event = field(default_factory=asyncio.Event)  # set at each ack of this epoch
    verified: set[int] = field(default_factory=set)  # receivers whose ``verified`` this sender has read
    dropped: set[int] = field(default_factory=set)  # receivers the relay dropped: the transfer is no longer theirs

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.acked.clear()
        self.parked.clear()

    def acknowledged(self, peer: int, epoch: int, chunks: int) -> None:
        if epoch == self.epoch and peer in self.channels:
            self.acked[peer] = max(self.acked.get(peer, 0), chunks)
            self.acks.set()

    def ahead(self, sent: int) -> int:
        """Chunks of this epoch sent beyond the slowest receiver's ack; 0 until every receiver has acked (acks
        are optional in the protocol: one that never acks is not waited for, as on the page)."""
        if len(self.acked) < len(self.channels):
            return 0
        return sent - min(self.acked.values())

    def park(self, peer: int) -> None:
        self.away.add(peer)
        self.parked.set()
        self.ready.clear()
        self.positions.clear()
        self.reporter.reconnecting(0)

    def check_ready(self) -> None:
        """Ready for the next epoch once nobody is away and every receiver that has not verified said where it
        is. One that verified holds every file and may have left (the relay no longer waits for it: docs/protocol.md
        section 10); a position it does send changes nothing, the epoch starts at the earliest one."""
        waiting_for = set(self.channels) - self.verified  # none: ``complete`` comes next, not an epoch
        if self.parked.is_set() and not self.away and waiting_for and set(self.positions) >= waiting_for:
            self.ready.set()

    def drop(self, peers: tuple[int, ...]) -> None:
        """The relay dropped these receivers at its resume window's end: no epoch names them any more, and
        nobody waits for their positions, acks or ``verified``. The others are all back (the relay drops only
        when nobody else is away); each says where it is, and the next epoch starts from there."""
        for peer in peers:
            if peer in self.keys and peer not in self.dropped:
                self.dropped.add(peer)
                self.channels.pop(peer, None)
                self.acked.pop(peer, None)
                self.positions.pop(peer, None)
                self.reporter.dropped(peer)
        self.away -= set(peers)
        self.acks.set()  # the slowest receiver may have been a dropped one
        self.check_ready()

    def done(self, receivers: int) -> bool:
        """Every receiver verified or was dropped, and at least one verified: nothing more to send."""
        return every_receiver_done(self.verified, self.dropped, receivers)

    def lost(self, away: set[int]) -> None:
        """This sender's own connection dropped and came back: every receiver resyncs and says its position;
        ``away`` are the seats the relay still waits for."""
        self.parked.set()
        self.ready.clear()
        self.positions.clear()
        self.away = set(away)


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _SenderLink:
    """The sender's current connection and the task reading it (``_watch_receivers``); both are replaced when a
    lost connection is resumed (``rejoin``)."""

    connection: RelayConnection
    room: _Parking
    receivers: int
    url: str
    nameplate: str
    seat: SeatTokens | None
    window: float
    watcher: asyncio.Task[None] = field(init=False)

    def __post_init__(self) -> None:
        self.watcher = asyncio.create_task(_watch_receivers(self.connection, self.receivers, self.room))

    async def stop_watching(self) -> None:
        self.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, TransferError):
            await self.watcher

    async def rejoin(self, lost: ConnectionLost) -> bool:
        """Take the sender's seat back (one token per pair), or raise ``lost`` when resume is off. True instead
        when every receiver already said it authenticated and stored every file: a connection lost then (before
        the relay's ``complete``) costs nothing, and taking the seat back would only find a finished room (or,
        after a relay restart, recreate an empty one and wait out the window)."""
        if self.room.done(self.receivers):
            return True
        if self.seat is None:
            raise lost
        await self.stop_watching()
        self.room.lost(set())
        self.connection = await _reconnect(self.url, self.nameplate, self.connection.hello, self.seat, self.window,
                                           self.room.reporter)
        resumed = self.connection.resumed
        self.room.lost(set(resumed.parked) if resumed is not None else set())
        self.watcher = asyncio.create_task(_watch_receivers(self.connection, self.receivers, self.room))
        return False


def every_receiver_done(verified: set[int], dropped: set[int], receivers: int) -> bool:
    """Each of ``receivers`` verified or was dropped by the relay, and at least one verified (a relay that
    dropped every receiver ends the room instead): what a sender needs before it believes ``complete``."""
    return len(verified | dropped) >= receivers and bool(verified - dropped)


async def _watch_receivers(connection: RelayConnection, receivers: int, room: _Parking | None = None) -> None:
    """Read what the relay passes back while streaming, until ``complete``; ending messages raise.

    ``complete`` counts only once every receiver (peers 1 to ``receivers``) has sent ``verified``: the relay
    saying so alone proves nothing. With ``room``, it also follows resume: ``reconnecting``, ``resumed``, each
    returning receiver's ``resync`` (answered with this side's fresh half and a sealed proof) and every
    receiver's sealed position.
    """
    verified: set[int] = room.verified if room is not None else set()
    dropped: set[int] = room.dropped if room is not None else set()
    while True:
        message = await connection.receive()
        if isinstance(message, p.Complete):
            if not every_receiver_done(verified, dropped, receivers):
                raise TransferRefused(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"the relay said the transfer was complete, but only {len(verified)} of {receivers} receiver(s) "
                    "confirmed their files",
                )
            return
        if isinstance(message, p.Verified):
            if message.peer is not None and 1 <= message.peer <= receivers:
                verified.add(message.peer)
                if room is not None:
                    room.check_ready()  # after a resume, a receiver that verified gives no position
        elif room is not None and isinstance(message, p.Reconnecting):
            room.park(message.peer)
        elif room is not None and isinstance(message, p.Resumed):
            room.away = set(message.parked)
            room.check_ready()
        elif room is not None and isinstance(message, p.Dropped):
            room.drop(message.peers)
        elif room is not None and isinstance(message, p.Resync) and message.peer in room.channels:
            half, theirs = c.new_resync_half(), _unb64(message.half)
            if len(theirs) != c.RESYNC_HALF_SIZE:
                raise c.Tampered("a receiver's resync half has the wrong length")
            old = room.channels[message.peer]
            channel = room.keys[message.peer].control_channel(c.Role.SENDER, half + theirs)
            room.channels[message.peer] = channel
            await connection.send(p.Resync(_b64(half), to=message.peer))
            await connection.send(p.Sealed(_seal_json(channel, {"received": old.received}), to=message.peer))
        elif room is not None and isinstance(message, p.Sealed) and message.peer in room.channels:
            note = _open_json(room.channels[message.peer], message.data)
            if not isinstance(note, dict) or type(note.get("file")) is not int or type(note.get("have")) is not int:
                raise p.UnexpectedMessage("a sealed message the sender does not expect")
            room.positions[message.peer] = (note["file"], note["have"])
            room.check_ready()
        elif isinstance(message, p.ChunkAck):
            if room is not None and message.peer is not None:
                room.acknowledged(message.peer, message.epoch, message.chunks)
        else:
            raise _unexpected(message, "streaming")


async def _stream_epochs(
    link: _SenderLink, outgoing: Outgoing, content_key: bytes, chunk_size: int, room: _Parking,
    reporter: Reporter, deadlines: Deadlines, starts: dict[int, int] | None = None,
) -> None:
    """Epoch 0 from the start; after each resume a new epoch (fresh salt, so a fresh data key) from the earliest
    position any receiver holds, until every receiver verified. A drop of this sender's own connection is
    resumed (``link.rejoin``) like a receiver's: every receiver resyncs and says what it holds."""
    sizes = [local.entry.size for local in outgoing.files]
    start, epoch = (0, 0), 0
    while True:
        try:
            if await _one_epoch(link, outgoing, content_key, chunk_size, room, reporter, deadlines, start, epoch,
                                starts if epoch == 0 else None):
                return
        except ConnectionLost as lost:
            if await link.rejoin(lost):
                return
        while True:  # until every seat is back and every receiver said where it is (or all verified meanwhile)
            try:
                await _within(deadlines.resume_window + deadlines.frame, "the receivers to come back",
                              asyncio.wait({link.watcher, asyncio.ensure_future(room.ready.wait())},
                                           return_when=asyncio.FIRST_COMPLETED))
                if link.watcher.done():
                    link.watcher.result()
                    return
                break
            except ConnectionLost as lost:
                if await link.rejoin(lost):
                    return
        for peer, (index, have) in room.positions.items():
            if not (0 <= index < len(sizes) and 0 <= have <= sizes[index] or index == len(sizes) and have == 0):
                raise p.UnexpectedMessage(f"receiver {peer} reported a position outside the offer")
        start, epoch = min(room.positions.values()), epoch + 1


async def _one_epoch(
    link: _SenderLink, outgoing: Outgoing, content_key: bytes, chunk_size: int, room: _Parking,
    reporter: Reporter, deadlines: Deadlines, start: tuple[int, int], epoch: int,
    starts: dict[int, int] | None = None,
) -> bool:
    """Open epoch ``epoch`` from ``start`` (file, offset) and stream it; True once every receiver verified,
    False when the room parked on the way (the epoch is abandoned). With ``starts`` (the first epoch of a resume
    by hand), every file instead, each from the bytes agreed the receiver holds."""
    sizes = [local.entry.size for local in outgoing.files]
    if start[0] >= len(sizes):  # every receiver holds every byte: resend the last file's last chunk
        last = len(sizes) - 1
        start = (last, max(0, (sizes[last] - 1) // chunk_size * chunk_size))
    first = c.Segment(start[0], start[1], sizes[start[0]])
    if starts:
        plan = c.StreamPlan(tuple(c.Segment(i, starts.get(i, 0), size) for i, size in enumerate(sizes)), chunk_size)
    else:
        plan = c.StreamPlan((first, *(c.Segment(i, 0, sizes[i]) for i in range(start[0] + 1, len(sizes)))),
                            chunk_size)
    base = sum(sizes[: start[0]]) + start[1]
    room.resent += max(0, room.high - base)
    salt = c.new_epoch_salt()
    plan_json = {"salt": _b64(salt), "chunk_size": chunk_size,
                 "segments": [[s.file, s.start, s.end] for s in plan.segments]}
    peers = tuple(sorted(room.channels))
    room.start_epoch(epoch)
    connection, watcher = link.connection, link.watcher
    await connection.send(p.Stream(epoch, plan.chunk_count(), plan.ciphertext_size(),
                                   tuple(_seal_json(room.channels[k], plan_json) for k in peers), to=peers))
    sealer = ChunkSealerInto(c.data_key(content_key, salt), plan)
    digests = room.channels if len(room.keys) > 1 else None  # receivers expect them by the room's size
    try:
        await _stream(connection, outgoing, sealer, chunk_size, digests, reporter, watcher, deadlines.frame,
                      room, base, plan.segments, epoch)
        await _send_or_explain(connection, p.End(epoch), watcher, deadlines.frame)
        parked = asyncio.ensure_future(room.parked.wait())
        try:
            await _within(deadlines.verified, "every receiver to confirm its files",
                          asyncio.wait({watcher, parked}, return_when=asyncio.FIRST_COMPLETED))
        finally:
            parked.cancel()
        if watcher.done():
            watcher.result()
            return True
    except _Parked:
        pass
    return False


async def _stream(
    connection: RelayConnection, outgoing: Outgoing, sealer: ChunkSealerInto, chunk_size: int,
    digests: dict[int, c.ControlChannel] | None, reporter: Reporter, watcher: asyncio.Task[None], seconds: float,
    room: _Parking, base: int, segments: tuple[c.Segment, ...], epoch: int,
) -> None:
    """Seal and send every chunk in plan order. With several receivers, each file's SHA-256 goes sealed to every
    receiver just before the file's last chunk (a receiver holds the content key and could forge chunks for
    the others; it cannot forge the pair channel).

    The data path (docs/design/speed.md): a reader thread ``readinto``s the file ahead into a fixed pool, each
    chunk is sealed into one reusable buffer and sent as header + binary frame without joining them; nothing
    waits for a round trip per chunk, only for the socket's buffer and the acknowledgement window
    (``ACK_WINDOW``, docs/protocol.md section 8).
    """
    sent = base
    out = bytearray(chunk_size + c.TAG_SIZE)
    window = max(1, ACK_WINDOW // chunk_size)
    chunks = 0
    for segment in segments:
        index, local = segment.file, outgoing.files[segment.file]
        sha256 = hashlib.sha256() if digests is not None else None
        if sha256 is not None and segment.start:
            async with _reading(local.source, 0, segment.start, chunk_size) as reader:
                while (data := await _read(reader)) is not None:
                    sha256.update(data)  # the file's digest covers the bytes the receivers already hold
        async with _reading(local.source, segment.start, local.entry.size, chunk_size) as reader:
            while (data := await _read(reader)) is not None:
                _check_room(room, watcher)
                if room.ahead(chunks) >= window:
                    await _wait_for_acks(room, chunks, window, watcher, seconds)
                    _check_room(room, watcher)
                position = sealer.position
                assert position is not None and position.file == index
                if sha256 is not None and digests is not None:
                    sha256.update(data)
                    if position.last:
                        for peer, channel in sorted(digests.items()):
                            note = _seal_json(channel, {"file": index, "sha256": sha256.hexdigest()})
                            await _send_or_explain(connection, p.Sealed(note, to=peer), watcher, seconds)
                sealed = sealer.seal_next_into(data, out)
                header = p.SealedChunk(epoch, len(sealed), p.chunk_digest(sealed))
                await _send_or_explain(connection, header, watcher, seconds)
                await _send_or_explain(connection, sealed, watcher, seconds)
                chunks += 1
                sent += len(data)
                room.high = max(room.high, sent)
                reporter.advanced(min(sent, outgoing.total_size))


def _check_room(room: _Parking, watcher: asyncio.Task[None]) -> None:
    """Stop streaming if the room parked (``_Parked``) or ended (the watcher's reason)."""
    if room.parked.is_set():
        raise _Parked()
    if watcher.done():
        watcher.result()  # re-raise what ended the room
        raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay ended the transfer early")


ACK_WINDOW = 64 * 1024 * 1024  # plaintext bytes beyond the slowest receiver's ack (as the page: ACK_WINDOW)


async def _wait_for_acks(room: _Parking, chunks: int, window: int, watcher: asyncio.Task[None],
                         seconds: float) -> None:
    """Wait until the slowest receiver's ack is within ``window`` chunks of ``chunks``, the room parked, or the
    watcher ended (the caller looks at both); at most ``seconds``."""
    waits = [asyncio.ensure_future(room.acks.wait()), asyncio.ensure_future(room.parked.wait())]
    try:
        while room.ahead(chunks) >= window and not room.parked.is_set() and not watcher.done():
            room.acks.clear()
            waits[0] = asyncio.ensure_future(room.acks.wait())
            await _within(seconds, "the receivers to acknowledge the data sent",
                          asyncio.wait({watcher, *waits}, return_when=asyncio.FIRST_COMPLETED))
    finally:
        for waiting in waits:
            waiting.cancel()


@contextlib.asynccontextmanager
async def _reading(source: Path, start: int, end: int, chunk_size: int) -> AsyncIterator[FileReader]:
    """Read ``source`` from ``start`` to ``end`` ahead of the caller in the plan's chunks (one empty chunk for an
    empty range); the reader thread stops when the block ends."""
    try:
        reader = FileReader(source, end - start, chunk_size, READ_AHEAD, start=start)
    except ReadFailed as exc:
        raise LocalFailure(ErrorCode.WRITE_FAILED, f"cannot read {source}: {exc.strerror or exc}") from exc
    try:
        yield reader
    finally:
        reader.close()


READ_AHEAD = 4  # chunks the reader thread reads ahead of the sealer


async def _read(reader: FileReader) -> memoryview | None:
    """The next chunk (valid until the next call), or ``None``. A file that shrank since it was offered is
    ``size_mismatch``; bytes it grew by are not sent (the offer said its size)."""
    try:
        return await reader.next()
    except Shrank as exc:
        raise LocalFailure(ErrorCode.SIZE_MISMATCH, f"{exc.filename} shrank while it was being sent") from exc
    except ReadFailed as exc:
        raise LocalFailure(ErrorCode.WRITE_FAILED, f"cannot read {exc.filename}: {exc.strerror or exc}") from exc


async def _send_or_explain(
    connection: RelayConnection, frame: p.Message | memoryview, watcher: asyncio.Task[None], seconds: float
) -> None:
    """Send a frame within ``seconds``; if the room ended meanwhile, raise the reason the relay gave (not a close)."""
    try:
        sending = connection.send_payload(frame) if isinstance(frame, memoryview) else connection.send(frame)
        await _within(seconds, "the relay to take the next chunk", sending)
    except DeadlineExceeded:
        raise
    except TransferError:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(watcher), timeout=2)
        if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
            raise watcher.exception() from None  # type: ignore[misc]
        raise


# --- receiving ---------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _Pair:
    """What a receiver holds after keying: the transfer's content key and its channel to the sender."""

    content_key: bytes
    channel: c.ControlChannel
    keys: c.PairKeys


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _Link:
    """The receiver's current connection, replaced when a lost one is resumed."""

    connection: RelayConnection


async def receive(options: ReceiveOptions, confirm: Confirm, reporter: Reporter | None = None) -> p.Offer:
    """Join the room of ``options.code``, accept if ``confirm`` says so, and store every authenticated file."""
    reporter = reporter or Reporter()
    deadlines = options.deadlines
    try:
        code = c.normalize_code(options.code)
        nameplate, _ = c.split_code(code)
    except c.InvalidCode as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, str(exc)) from exc
    link = _Link(await _open(options, "receive", nameplate))
    connection = link.connection
    destination = Destination(options.output, options.overwrite)
    try:
        reporter.connected(connection.hello.peer, connection.hello.receivers)
        pair = await _within(deadlines.receivers, "the sender to answer the key exchange",
                             _key_with_sender(connection, code))
        seat = SeatTokens({connection.hello.peer: pair.keys.resume_token(c.Role.RECEIVER)})
        if deadlines.resume_window > 0:
            await connection.send(p.ResumeId(verifier(seat.tokens[connection.hello.peer])))
        sealed_offer = await _within(
            deadlines.receivers, "the offer (the sender offers once every receiver has joined)", connection.receive()
        )
        if not isinstance(sealed_offer, p.SealedOffer):
            raise _unexpected(sealed_offer, "waiting for the offer")
        # the rules of a frame (JSON, no lone surrogate), as the page applies them: malformed_message
        offer = p.parse_offer(pair.channel.open(_unb64(sealed_offer.data)))
        if offer.total_size != sealed_offer.total_size or len(offer.files) != sealed_offer.files:
            raise c.Tampered("the offer's clear totals differ from the sealed offer")
        seat.shape = p.RoomShape(connection.hello.receivers, offer.total_size, len(offer.files))
        reporter.offered(offer)
        if options.output_for is not None:
            destination.root = options.output_for(offer)
        destination.check(offer)
        if destination.mappings:
            reporter.renamed(list(destination.mappings))
        if not await confirm(offer):
            await connection.send(p.SealedDecline(ErrorCode.DECLINED.value,
                                                  _seal_json(pair.channel, {"reason": DECLINED_REASON})))
            await _leave(connection, connection.close(), deadlines.leave)
            raise TransferRefused(ErrorCode.DECLINED, "you declined the offer")
        destination.make_dirs(offer.dirs)
        claims = await _earlier_attempt(destination, offer, connection.hello.receivers, reporter)
        accept = {"have": [{"file": x.file, "have": x.have, "sha256": x.sha256} for x in claims]} if claims else {}
        await connection.send(p.SealedAccept(_seal_json(pair.channel, accept)))
        reporter.started(offer.total_size)
        resume = _Resume(options.url, nameplate, seat, reporter) if deadlines.resume_window > 0 else None
        await _receive_stream(link, offer, pair, destination, reporter, deadlines, resume, claims)
    except c.WrongCode:
        await destination.discard()
        await _leave(link.connection, link.connection.close(), deadlines.leave)
        raise wrong_code() from None
    except c.CryptoError as exc:
        await destination.discard()
        await _leave(link.connection, link.connection.abort(ErrorCode.TAMPERED, str(exc)), deadlines.leave)
        raise TransferRefused(ErrorCode.TAMPERED, f"{TAMPERED_MESSAGE} ({exc})") from exc
    except p.ProtocolError as error:
        await destination.discard()
        await _leave(link.connection, link.connection.abort(error.code, error.message), deadlines.leave)
        raise TransferRefused(error.code, error.message) from error
    except LocalFailure as failure:
        await destination.discard()
        await _leave(link.connection, link.connection.abort(failure.code, public_reason(failure)), deadlines.leave)
        raise
    except DeadlineExceeded as exc:
        await destination.discard()
        await _leave(link.connection, link.connection.abort(exc.code, str(exc)), deadlines.leave)
        raise
    except Dropped as dropped:
        if destination.root != options.output:  # a temporary folder (a text, piped data for stdout): nothing to keep
            await destination.discard()
            raise
        await destination.keep()  # parts and state file stay: a later attempt resumes from them (section 10.3)
        raise Dropped(f"{dropped}; the {dropped.held} bytes this receiver holds are kept as partial files: when the "
                      "sender sends the same files again, relay receive into the same folder gets only the rest",
                      held=dropped.held) from None
    except TransferError:
        await destination.discard()
        await _leave(link.connection, link.connection.close(), deadlines.leave)
        raise
    except asyncio.CancelledError:
        try:
            # first: the others learn at once, however long cleaning up takes
            await _leave(link.connection, link.connection.cancel(), deadlines.leave)
        finally:
            await destination.discard()
        raise
    reporter.finished()
    return offer


async def _earlier_attempt(destination: Destination, offer: p.Offer, receivers: int, reporter: Reporter
                           ) -> list[Claim]:
    """What this receiver holds of ``offer`` from an earlier attempt into the same folder (its state file and
    parts; protocol section 10.3). Only with one receiver: several share one ciphertext stream, which starts every
    file at 0 (the state file is still read, so that what the earlier attempt left is removed and not orphaned).
    A state file that cannot be trusted is ignored with a warning."""
    try:
        held = destination.load_state()
    except BadState as exc:
        reporter.warning(f"ignoring {STATE_NAME} in the output folder: {exc}")
        return []
    except LocalFailure:
        return []
    if receivers != 1 or not held:
        return []
    claims, changed = await asyncio.to_thread(destination.claims, offer, held)
    for path in changed:
        reporter.changed(path)
    return claims


async def _key_with_sender(connection: RelayConnection, code: str) -> _Pair:
    """Run the PAKE with the sender, check its confirmation before sending ours, and open the content key."""
    pake = c.Pake(c.Role.RECEIVER, code)
    await connection.send(p.Pake(_b64(pake.outbound)))
    message = await connection.receive()
    if not isinstance(message, p.Pake):
        raise _unexpected(message, "waiting for the sender's key exchange")
    try:
        pair = pake.finish(_unb64(message.data))
    except (c.BadPakeMessage, c.Tampered):
        await connection.send(p.WrongCode())
        raise c.WrongCode(WRONG_CODE_MESSAGE) from None
    message = await connection.receive()
    if not isinstance(message, p.Confirm):
        raise _unexpected(message, "waiting for the sender's key confirmation")
    try:
        pair.check_confirmation(c.Role.SENDER, _unb64(message.data))
    except (c.WrongCode, c.Tampered):
        await connection.send(p.WrongCode())
        raise c.WrongCode(WRONG_CODE_MESSAGE) from None
    await connection.send(p.Confirm(_b64(pair.confirmation(c.Role.RECEIVER))))
    message = await connection.receive()
    if not isinstance(message, p.Key):
        raise _unexpected(message, "waiting for the sender's content key")
    return _Pair(pair.open_content_key(_unb64(message.data)), pair.control_channel(c.Role.RECEIVER), pair)


def _plan_of(opened: object, offer: p.Offer, stream: p.Stream, max_message: int,
             held: tuple[int, int] = (0, 0), claimed: dict[int, int] | None = None) -> tuple[bytes, c.StreamPlan]:
    """The sealed plan of the stream, checked against the offer: the offer's chunk size (so every epoch fits the
    receiver's buffers), every file in order from a start no later than ``held`` (file index, bytes of it this
    receiver holds; the first epoch starts at (0, 0)) to the end. With ``claimed`` (the first epoch after this
    receiver said what it holds from an earlier attempt), every file instead, each from 0 or from the bytes
    claimed of it (section 10.3)."""
    if not isinstance(opened, dict):
        raise p.MalformedMessage("the sealed plan is not an object")
    salt, chunk_size, segments = opened.get("salt"), opened.get("chunk_size"), opened.get("segments")
    first = segments[0] if isinstance(segments, list) and segments else None
    expected: list[list[int]] = []
    if claimed is not None:
        if isinstance(segments, list) and len(segments) == len(offer.files):
            for index, (entry, segment) in enumerate(zip(offer.files, segments, strict=True)):
                start = segment[1] if isinstance(segment, list) and len(segment) == 3 else None
                agreed = start if type(start) is int and start in (0, claimed.get(index, 0)) else 0
                expected.append([index, agreed, entry.size])
    elif (isinstance(first, list) and len(first) == 3 and all(type(v) is int for v in first)
            and 0 <= first[0] < len(offer.files) and 0 <= first[1] <= offer.files[first[0]].size
            and (first[0], first[1]) <= held):
        expected = [[first[0], first[1], offer.files[first[0]].size]]
        expected += [[index, 0, offer.files[index].size] for index in range(first[0] + 1, len(offer.files))]
    if (not isinstance(salt, str) or type(chunk_size) is not int or not 1 <= chunk_size <= max_message
            or chunk_size != offer.chunk_size or segments != expected):
        raise c.Tampered("the sealed plan does not match the offer")
    salt_bytes = _unb64(salt)
    if len(salt_bytes) != c.EPOCH_SALT_SIZE:
        raise c.Tampered("the sealed plan's salt has the wrong length")
    plan = c.StreamPlan(tuple(c.Segment(i, start, end) for i, start, end in expected), chunk_size)
    if plan.chunk_count() != stream.chunks or plan.ciphertext_size() != stream.bytes:
        raise c.Tampered("the stream's clear totals differ from its sealed plan")
    return salt_bytes, plan


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _Resume:
    """What a receiver needs to take its seat back after a lost connection, and its side of each resync."""

    url: str
    nameplate: str
    seat: SeatTokens
    reporter: Reporter
    half: bytes | None = None  # this receiver's resync half, sent and not yet answered by the sender

    async def again(self, link: _Link, window: float) -> None:
        """Reconnect; resync at once if the sender is there (else when it comes back: ``resumed`` with 0)."""
        link.connection = await _reconnect(self.url, self.nameplate, link.connection.hello, self.seat, window,
                                           self.reporter)
        self.half = None  # an answer to an earlier half, if any, was lost with the old connection
        resumed = link.connection.resumed
        if resumed is None or 0 not in resumed.parked:
            await self.resync(link.connection)

    async def resync(self, connection: RelayConnection) -> None:
        """Send a fresh half of the pair's next control keys (protocol section 10.1); the sender answers."""
        self.half = c.new_resync_half()
        await self.send(connection, p.Resync(_b64(self.half)))

    @staticmethod
    async def send(connection: RelayConnection, message: p.Message) -> None:
        """Send on a connection that may drop: a lost connection is noticed (and resumed) by the next receive,
        so a message lost with it is sent again after the resync (acks, positions, halves are all redone)."""
        with contextlib.suppress(ConnectionLost):
            await connection.send(message)

    async def answered(self, connection: RelayConnection, pair: _Pair, message: p.Resync,
                       held: tuple[int, int]) -> None:
        """The sender's half: switch to the new control channel and prove it with what we hold."""
        if self.half is None:
            raise p.UnexpectedMessage("a resync half this receiver did not ask for")
        sender_half = _unb64(message.half)
        if len(sender_half) != c.RESYNC_HALF_SIZE:
            raise c.Tampered("the sender's resync half has the wrong length")
        old = pair.channel
        pair.channel = pair.keys.control_channel(c.Role.RECEIVER, sender_half + self.half)
        self.half = None
        await self.send(connection, p.Sealed(_seal_json(pair.channel, {"received": old.received, "file": held[0],
                                                                       "have": held[1]})))


async def _receive_stream(
    link: _Link, offer: p.Offer, pair: _Pair, destination: Destination, reporter: Reporter,
    deadlines: Deadlines, resume: _Resume | None = None, claims: list[Claim] | None = None,
) -> None:
    """Receive every epoch's chunks until ``end``, store them, and commit the files.

    The data path (docs/design/speed.md): each frame is a view of the socket's receive buffer; it is
    authenticated and decrypted straight into a buffer of the writer's fixed pool, which one thread writes at its
    offset with ``pwrite`` (at most ``WRITE_DEPTH`` chunks queued: the receiver's backpressure).
    """
    connection = link.connection
    # every receiver must accept before the stream starts: as long as the relay's offer timeout
    what = "the transfer to start (every receiver must accept)"
    stream = await _within(deadlines.answer, what, connection.receive())
    if not isinstance(stream, p.Stream) or not isinstance(stream.data, str):
        raise _unexpected(stream, "waiting for the stream")
    claimed = {x.file: x.have for x in claims or ()}
    salt, plan = _plan_of(_open_json(pair.channel, stream.data), offer, stream, connection.hello.max_message,
                          claimed=claimed if claims else None)
    # resume by hand: where each file starts (what the sender agreed this receiver holds), and its part
    starts = {s.file: s.start for s in plan.segments if s.start} if claims else {}
    earlier = {x.file: x.part for x in claims or () if x.file in starts}
    for claim in claims or ():
        if claim.file not in starts:  # the sender's file differs from what we hold: from 0, in a new part
            destination.refused(offer.files[claim.file].path, claim.part)
            reporter.changed(offer.files[claim.file].path)
    if starts:
        reporter.kept(sum(starts.values()))
    opener = ChunkOpenerInto(c.data_key(pair.content_key, salt), plan)
    await _receive_chunks(link, offer, pair, destination, reporter, deadlines, resume, stream, opener, starts,
                          earlier)


WRITE_DEPTH = 8  # the receiver's writer pool: chunks decrypted and waiting for the disk
PREALLOCATE_FROM = 1 << 20  # a part this big gets its blocks reserved before its first write (diskio.preallocate)


async def _receive_chunks(
    link: _Link, offer: p.Offer, pair: _Pair, destination: Destination, reporter: Reporter, deadlines: Deadlines,
    resume: _Resume | None, stream: p.Stream, opener: ChunkOpenerInto, starts: dict[int, int],
    earlier: dict[int, str],
) -> None:
    writer = FileWriter(offer.chunk_size, WRITE_DEPTH)  # every plan has the offer's chunk size (_plan_of)
    try:
        await _chunk_loop(link, offer, pair, destination, reporter, deadlines, resume, stream, opener, writer,
                          starts, earlier)
    except WriteFailed as exc:
        raise write_error(exc.filename or "", exc) from exc
    finally:
        writer.close()  # before the caller closes or removes a part: no write may land after that


async def _chunk_loop(
    link: _Link, offer: p.Offer, pair: _Pair, destination: Destination, reporter: Reporter, deadlines: Deadlines,
    resume: _Resume | None, stream: p.Stream, opener: ChunkOpenerInto, writer: FileWriter,
    starts: dict[int, int], earlier: dict[int, str],
) -> None:
    """``starts``/``earlier``: resume by hand, where each file starts (what the sender agreed this receiver
    holds) and the part of an earlier attempt that holds it."""
    connection = link.connection
    several = connection.hello.receivers > 1
    digests: dict[int, str] = {}
    sha256 = hashlib.sha256()
    header: p.SealedChunk | None = None
    part = None
    written, chunks, streamed = sum(starts.values()), 0, 0
    next_ack = p.ACK_INTERVAL
    pacer = StatePacer(written, asyncio.get_running_loop().time())
    current, have = 0, starts.get(0, 0)  # the file in progress (files before it are finished), its bytes written
    while True:
        try:
            frame = await _within(deadlines.frame, "the next chunk from the sender", connection.receive())
        except ConnectionLost:
            if resume is None:
                raise
            try:
                await resume.again(link, deadlines.resume_window)
            except TransferRefused as refused:
                if refused.code is not ErrorCode.DROPPED:
                    raise
                # The others went on without us: what we hold stays, for resume by hand (section 10.3).
                await writer.flush()
                if part is not None:
                    destination.checkpoint(part, have)
                else:
                    destination.save_state()
                raise Dropped(str(refused), held=written) from None
            connection, header = link.connection, None
            continue
        if isinstance(frame, memoryview):
            if header is None:
                raise p.UnexpectedMessage("binary frame without a chunk header")
            if len(frame) != header.size or p.chunk_digest(frame) != header.xxh3_64:
                raise p.ChecksumMismatch(f"chunk {chunks} failed its xxh3_64 check")
            header = None
            buffer = await writer.acquire()
            try:
                placed = opener.open_next_into(frame, buffer)
            except BaseException:
                writer.give_back(buffer)
                raise
            chunks += 1
            streamed += placed.length
            end = placed.offset + placed.length
            # After a resume the epoch may start before what this receiver holds (another receiver was behind):
            # authenticated bytes it already has are skipped, never written twice.
            if placed.file < current or end <= have and not placed.last:
                writer.give_back(buffer)
            else:
                if placed.file != current or placed.offset > have:
                    writer.give_back(buffer)
                    raise c.Tampered(f"file {placed.file}: a chunk at {placed.offset} after only {have} bytes")
                if part is None:
                    if placed.file in earlier:
                        part = await destination.reopen_part(offer.files[placed.file], earlier[placed.file], have)
                    else:
                        part = await destination.open_part(offer.files[placed.file])
                        if part.entry.size >= STATE_INTERVAL:
                            destination.save_state()  # a big file's part is known to the next attempt from its start
                    if part.entry.size >= PREALLOCATE_FROM:
                        preallocate(destination.part_fd(part)[0], have, part.entry.size)
                first = have - placed.offset
                fresh = end - have
                if several:
                    sha256.update(memoryview(buffer)[first:placed.length])
                if fresh:
                    # the part's descriptors, with an O_DIRECT one where the store chose it (made once per part)
                    writer.submit(destination.target(part), have, buffer, placed.length, first)
                else:
                    writer.give_back(buffer)
                have += fresh
                written += fresh
                reporter.advanced(written)
                if placed.last:
                    if several and digests.pop(placed.file, None) != sha256.hexdigest():
                        raise c.Tampered(f"file {placed.file} does not match the sender's sealed SHA-256")
                    sha256 = hashlib.sha256()
                    await writer.flush()
                    await destination.finish(part)
                    part = None
                    current, have = current + 1, starts.get(current + 1, 0)
                now = asyncio.get_running_loop().time()
                if pacer.due(written, now, placed.last):  # the state file, for resume by hand once we are gone
                    await writer.flush()  # the state file never counts a byte not yet written
                    if part is not None:
                        size = destination.checkpoint(part, have)
                    else:
                        size = destination.save_state()
                    pacer.wrote(written, now, size)
            if streamed >= next_ack or placed.last:
                next_ack = streamed + p.ACK_INTERVAL
                ack = p.ChunkAck(stream.epoch, chunks)
                await (connection.send(ack) if resume is None else resume.send(connection, ack))
            continue
        match frame:
            case p.SealedChunk() if header is None and frame.epoch == stream.epoch:
                header = frame
            case p.Sealed():
                note = _open_json(pair.channel, frame.data)
                if isinstance(note, dict) and type(note.get("received")) is int:
                    continue  # the sender's proof that it holds the pair key, after a resync
                if not several or not isinstance(note, dict) or type(note.get("file")) is not int \
                        or not isinstance(note.get("sha256"), str):
                    raise p.UnexpectedMessage("a sealed message this receiver does not expect")
                digests[note["file"]] = note["sha256"]
            case p.Stream() if resume is not None and isinstance(frame.data, str) and frame.epoch > stream.epoch:
                stream = frame  # the sender's next epoch after a resume, from what every receiver holds
                salt, plan = _plan_of(_open_json(pair.channel, frame.data), offer, frame,
                                      connection.hello.max_message, (current, have))
                opener = ChunkOpenerInto(c.data_key(pair.content_key, salt), plan)
                chunks = streamed = 0
                next_ack = p.ACK_INTERVAL
            case p.Reconnecting():
                reporter.reconnecting(0)  # another party's connection dropped; the stream waits for it
            case p.Resumed() if resume is not None and frame.peer == 0:
                await resume.resync(connection)  # the sender came back: this pair resyncs (section 10.1)
            case p.Resync() if resume is not None:
                await resume.answered(connection, pair, frame, (current, have))
            case p.Resumed() | p.Dropped():
                # everyone is back (or dropped): the sender's next epoch starts from what we all hold (a pair that
                # is resyncing says it once the sender answered, on the new channel)
                if (isinstance(frame, p.Dropped) or not frame.parked) and (resume is None or resume.half is None):
                    position = p.Sealed(_seal_json(pair.channel, {"file": current, "have": have}))
                    await (connection.send(position) if resume is None else resume.send(connection, position))
            case p.End() if header is None and frame.epoch == stream.epoch:
                opener.finish()  # Truncated if the last file's last chunk never came
                await writer.flush()
                destination.commit()
                await connection.send(p.Verified())
                await _wait_complete(connection, deadlines)
                return
            case _:
                raise _unexpected(frame, "receiving")


async def _wait_complete(connection: RelayConnection, deadlines: Deadlines) -> None:
    """After this receiver verified: wait for ``complete``; our files are stored whatever happens next."""
    with contextlib.suppress(TransferError):
        message = await _within(deadlines.verified, "the other receivers to finish", connection.receive())
        if not isinstance(message, p.Complete):
            raise _unexpected(message, "waiting for the end")
    await _leave(connection, connection.close(), deadlines.leave)


def _unexpected(message: p.Message | memoryview, when: str) -> TransferRefused:
    kind = "a binary frame" if isinstance(message, memoryview) else repr(message.TYPE)
    return TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, f"the relay sent {kind} while {when}")
