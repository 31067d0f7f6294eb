"""Sending and receiving over the relay: the client side of protocol v1, with no terminal I/O.

``send`` and ``receive`` report what happens through a ``Reporter`` (the CLI draws progress bars from it; tests
record it) and raise a ``TransferError`` subclass with a one-line message when a transfer does not finish.

Every wait is bounded (``Deadlines``): a relay or a peer that goes silent ends the transfer with
``DeadlineExceeded`` naming what was awaited, never a hang. The sender reports success only after a ``verified``
from every receiver, counted by peer; a ``complete`` without them is a protocol error from the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiofiles

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.connection import PeerRefused, RelayConnection, default_relay_url, peer_name
from clients.errors import DeadlineExceeded, LocalFailure, RelayUnavailable, TransferError, TransferRefused
from clients.offer import Outgoing, collect
from clients.store import Destination


class Reporter:
    """What a transfer tells its user; every method is optional to override."""

    def connected(self, peer: int, receivers: int) -> None:
        """Receiver: admitted to the room as receiver ``peer`` of ``receivers``; the offer comes once all are in."""

    def waiting(self, code: str, receivers: int) -> None:
        """Sender: the room is open under ``code``; waiting for receivers."""

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


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long, in seconds, each wait may last before the transfer ends with ``DeadlineExceeded``.

    The defaults are generous and a bit longer than the relay's own limits, so that with a working relay its
    clear error arrives first: 10 minutes for pairing, 30 minutes for every receiver to answer an offer
    (``offer_timeout``), 2 minutes for an idle room.
    """

    connect: float = 60.0  # the relay's ``hello`` after opening the WebSocket
    receivers: float = 660.0  # sender: until every receiver joined; receiver: until the offer came
    answer: float = 1860.0  # sender: until every receiver accepted; receiver: until the first chunk after accepting
    frame: float = 300.0  # while streaming: the next frame (receiver), or the relay taking a frame (sender)
    verified: float = 600.0  # sender: after ``done``, until every ``verified`` and ``complete``
    leave: float = 5.0  # telling the room why this party leaves (a relay that stopped reading never takes it)


@dataclass(frozen=True, slots=True)
class SendOptions:
    code: str
    relay_url: str = ""
    receivers: int = 1
    chunk_size: int = p.DEFAULT_CHUNK_SIZE
    skip_unreadable: bool = False  # send what can be read and report the rest, instead of refusing to start
    kind: p.OfferKind = p.OfferKind.FILES
    deadlines: Deadlines = field(default_factory=Deadlines)

    @property
    def url(self) -> str:
        return self.relay_url or default_relay_url()


@dataclass(frozen=True, slots=True)
class ReceiveOptions:
    code: str
    output: Path = Path(".")
    relay_url: str = ""
    overwrite: bool = False
    deadlines: Deadlines = field(default_factory=Deadlines)
    # Chooses the folder for an offer once it is known (the CLI receives a text, or piped data bound for its
    # stdout, into a temporary folder); it may raise LocalFailure to refuse the offer. None: always ``output``.
    output_for: Callable[[p.Offer], Path] | None = None

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
RECEIVER_CANCELLED = "the receiver cancelled"
SENDER_CANCELLED = "the sender cancelled"


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
        connection.websocket.transport.abort()


async def _open(options: SendOptions | ReceiveOptions, role: str, receivers: int | None = None) -> RelayConnection:
    try:
        opening = RelayConnection.open(options.url, options.code, role, receivers)
        return await _within(options.deadlines.connect, "the relay to answer", opening)
    except DeadlineExceeded as exc:
        raise RelayUnavailable(ErrorCode.BAD_REQUEST, f"the relay at {options.url} did not answer: {exc}") from None


# --- sending -----------------------------------------------------------------------------------------------


async def send(paths: list[str | os.PathLike[str]], options: SendOptions, reporter: Reporter | None = None) -> None:
    """Offer ``paths`` under ``options.code`` and stream them; returns once every receiver has verified."""
    reporter = reporter or Reporter()
    outgoing = collect(paths, options.skip_unreadable)
    if options.chunk_size > p.DEFAULT_MAX_MESSAGE or options.chunk_size < 1:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"chunk size must be 1 to {p.DEFAULT_MAX_MESSAGE} bytes")
    try:
        outgoing.offer(options.chunk_size, options.kind).check_layout()
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"cannot send this as {options.kind.value!r}: {exc.message}") from exc
    if outgoing.left_out:
        reporter.skipped(list(outgoing.left_out))
    deadlines = options.deadlines
    connection = await _open(options, "send", options.receivers)
    chunk_size = min(options.chunk_size, connection.hello.max_message)
    try:
        offer = outgoing.offer(chunk_size, options.kind)
        offer_bytes = len(offer.to_json().encode("utf-8"))
        if offer_bytes > connection.hello.max_message:
            raise LocalFailure(
                ErrorCode.MESSAGE_TOO_BIG,
                f"the list of {len(outgoing.files)} file(s) takes {offer_bytes} bytes, over the "
                f"{connection.hello.max_message} this relay takes in one message: send fewer files at once",
            )
        reporter.waiting(options.code, options.receivers)
        await _wait_until_paired(connection, reporter, deadlines.receivers)
        await connection.send(offer)
        await _within(deadlines.answer, "every receiver to accept the offer", _wait_until_started(connection))
        reporter.started(outgoing.total_size)
        watcher = asyncio.create_task(_watch_receivers(connection, options.receivers))
        try:
            await _stream(connection, outgoing, chunk_size, reporter, watcher, deadlines.frame)
            await _send_or_explain(connection, p.Done(), watcher, deadlines.frame)
            await _within(deadlines.verified, "every receiver to confirm its checksums", asyncio.shield(watcher))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransferError):
                await watcher
        reporter.finished()
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
        await _leave(connection, connection.cancel(SENDER_CANCELLED), deadlines.leave)
        raise
    await _leave(connection, connection.close(), deadlines.leave)


async def _wait_until_paired(connection: RelayConnection, reporter: Reporter, seconds: float) -> None:
    joined = 0
    expected = connection.hello.receivers
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await connection.receive()
                if isinstance(message, p.PeerJoined):
                    joined, expected = message.joined, message.receivers
                    reporter.joined(message.joined, message.receivers)
                elif isinstance(message, p.Paired):
                    return
                else:
                    raise _unexpected(message, "waiting for receivers")
    except TimeoutError:
        raise DeadlineExceeded(
            ErrorCode.PAIRING_TIMEOUT,
            f"gave up after {_duration(seconds)} waiting for the receivers to join ({joined} of {expected} joined)",
        ) from None


async def _wait_until_started(connection: RelayConnection) -> None:
    while True:
        message = await connection.receive()
        if isinstance(message, p.Start):
            return
        if isinstance(message, p.Decline):
            who = peer_name(message.peer)
            raise PeerRefused(ErrorCode.DECLINED, f"{who} declined the offer", who, message.reason)
        if not isinstance(message, p.Accept):
            raise _unexpected(message, "waiting for the receivers to accept")


async def _watch_receivers(connection: RelayConnection, receivers: int) -> None:
    """Read what the relay passes back while streaming, until ``complete``; ending messages raise.

    ``complete`` counts only once every receiver (peers 1 to ``receivers``) has sent ``verified``: the relay
    saying so alone proves nothing.
    """
    verified: set[int] = set()
    while True:
        message = await connection.receive()
        if isinstance(message, p.Complete):
            if len(verified) < receivers:
                raise TransferRefused(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"the relay said the transfer was complete, but only {len(verified)} of {receivers} receiver(s) "
                    "confirmed their checksums",
                )
            return
        if isinstance(message, p.Verified):
            if message.peer is not None and 1 <= message.peer <= receivers:
                verified.add(message.peer)
        elif not isinstance(message, (p.Ack, p.FileOk)):
            raise _unexpected(message, "streaming")


async def _stream(
    connection: RelayConnection, outgoing: Outgoing, chunk_size: int, reporter: Reporter, watcher: asyncio.Task[None],
    seconds: float,
) -> None:
    sent = 0
    for index, local in enumerate(outgoing.files):
        digest = p.FileDigest()
        offset = 0
        async for data in _read_chunks(local.source, local.entry.size, chunk_size):
            digest.update(data)
            if watcher.done():
                watcher.result()  # re-raise what ended the room
                raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay ended the transfer early")
            header = p.Chunk(index, offset, len(data), p.chunk_digest(data))
            await _send_or_explain(connection, header, watcher, seconds)
            await _send_or_explain(connection, data, watcher, seconds)
            offset += len(data)
            sent += len(data)
            reporter.advanced(sent)
        await _send_or_explain(connection, p.FileDone(index, offset, digest.hexdigest()), watcher, seconds)


async def _read_chunks(source: Path, size: int, chunk_size: int) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``source`` in chunks, reading one chunk ahead of the caller.

    The read-ahead lets the disk and the network work at the same time. A file that shrank since it was
    offered is an error; bytes it grew by are not sent (the offer said ``size``).
    """
    try:
        async with aiofiles.open(source, "rb") as handle:
            offset = 0
            reading = asyncio.ensure_future(handle.read(min(chunk_size, size)))
            try:
                while offset < size:
                    data = await reading
                    if not data:
                        raise LocalFailure(ErrorCode.SIZE_MISMATCH, f"{source} shrank while it was being sent")
                    offset += len(data)
                    if offset < size:
                        reading = asyncio.ensure_future(handle.read(min(chunk_size, size - offset)))
                    yield data
            finally:
                with contextlib.suppress(OSError, ValueError, LocalFailure):
                    await reading  # let the read ahead finish before its file is closed
    except OSError as exc:
        raise LocalFailure(ErrorCode.WRITE_FAILED, f"cannot read {source}: {exc.strerror or exc}") from exc


async def _send_or_explain(
    connection: RelayConnection, frame: p.Message | bytes, watcher: asyncio.Task[None], seconds: float
) -> None:
    """Send a frame within ``seconds``; if the room ended meanwhile, raise the reason the relay gave (not a close)."""
    try:
        sending = connection.send_payload(frame) if isinstance(frame, bytes) else connection.send(frame)
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


async def receive(options: ReceiveOptions, confirm: Confirm, reporter: Reporter | None = None) -> p.Offer:
    """Join the room of ``options.code``, accept if ``confirm`` says so, and store every verified file."""
    reporter = reporter or Reporter()
    deadlines = options.deadlines
    connection = await _open(options, "receive")
    destination = Destination(options.output, options.overwrite)
    try:
        reporter.connected(connection.hello.peer, connection.hello.receivers)
        offer = await _within(
            deadlines.receivers, "the offer (the sender offers once every receiver has joined)", connection.receive()
        )
        if not isinstance(offer, p.Offer):
            raise _unexpected(offer, "waiting for the offer")
        reporter.offered(offer)
        if options.output_for is not None:
            destination.root = options.output_for(offer)
        destination.check(offer)
        if destination.mappings:
            reporter.renamed(list(destination.mappings))
        if not await confirm(offer):
            await connection.send(p.Decline(DECLINED_REASON))
            await _leave(connection, connection.close(), deadlines.leave)
            raise TransferRefused(ErrorCode.DECLINED, "you declined the offer")
        destination.make_dirs(offer.dirs)
        await connection.send(p.Accept())
        reporter.started(offer.total_size)
        await _receive_stream(connection, offer, destination, reporter, deadlines)
    except p.ProtocolError as error:
        await destination.discard()
        await _leave(connection, connection.abort(error.code, error.message), deadlines.leave)
        raise TransferRefused(error.code, error.message) from error
    except LocalFailure as failure:
        await destination.discard()
        await _leave(connection, connection.abort(failure.code, public_reason(failure)), deadlines.leave)
        raise
    except DeadlineExceeded as exc:
        await destination.discard()
        await _leave(connection, connection.abort(exc.code, str(exc)), deadlines.leave)
        raise
    except TransferError:
        await destination.discard()
        await _leave(connection, connection.close(), deadlines.leave)
        raise
    except asyncio.CancelledError:
        try:
            # first: the others learn at once, however long cleaning up takes
            await _leave(connection, connection.cancel(RECEIVER_CANCELLED), deadlines.leave)
        finally:
            await destination.discard()
        raise
    reporter.finished()
    return offer


async def _receive_stream(
    connection: RelayConnection, offer: p.Offer, destination: Destination, reporter: Reporter, deadlines: Deadlines
) -> None:
    check = p.TransferCheck(offer, connection.hello.max_message, hash_files=True)
    part = None
    next_ack = p.ACK_INTERVAL
    started = False
    while True:
        if started:
            frame = await _within(deadlines.frame, "the next chunk from the sender", connection.receive())
        else:  # every receiver must accept before the first chunk: as long as the relay's offer timeout
            what = "the transfer to start (every receiver must accept)"
            frame = await _within(deadlines.answer, what, connection.receive())
            started = True
        if isinstance(frame, bytes):
            header = check.payload(frame)
            if part is None:
                part = await destination.open_part(offer.files[header.file])
            await destination.write(part, frame)
            reporter.advanced(check.bytes_done)
            if check.bytes_done >= next_ack:
                next_ack = check.bytes_done + p.ACK_INTERVAL
                await connection.send(p.Ack(header.file, check.offset))
            continue
        match frame:
            case p.Chunk():
                check.chunk(frame)
            case p.FileDone():
                check.file_done(frame)  # verifies the whole-file xxh3_128
                if part is None:  # an empty file has no chunks
                    part = await destination.open_part(offer.files[frame.file])
                await destination.finish(part)
                part = None
                await connection.send(p.Ack(frame.file, frame.size))
                await connection.send(p.FileOk(frame.file))
            case p.Done():
                check.done()
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


def _unexpected(message: p.Message | bytes, when: str) -> TransferRefused:
    kind = "a binary frame" if isinstance(message, bytes) else repr(message.TYPE)
    return TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, f"the relay sent {kind} while {when}")
