"""Sending and receiving over the relay: the client side of protocol v1, with no terminal I/O.

``send`` and ``receive`` report what happens through a ``Reporter`` (the CLI draws progress bars from it; tests
record it) and raise a ``TransferError`` subclass with a one-line message when a transfer does not finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.connection import PeerRefused, RelayConnection, default_relay_url, peer_name
from clients.errors import LocalFailure, TransferError, TransferRefused
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


@dataclass(frozen=True, slots=True)
class SendOptions:
    code: str
    relay_url: str = ""
    receivers: int = 1
    chunk_size: int = p.DEFAULT_CHUNK_SIZE
    kind: p.OfferKind = p.OfferKind.FILES

    @property
    def url(self) -> str:
        return self.relay_url or default_relay_url()


@dataclass(frozen=True, slots=True)
class ReceiveOptions:
    code: str
    output: Path = Path(".")
    relay_url: str = ""
    overwrite: bool = False
    # Chooses the folder for an offer once it is known (the CLI receives a text, or piped data bound for its
    # stdout, into a temporary folder); it may raise LocalFailure to refuse the offer. None: always ``output``.
    output_for: Callable[[p.Offer], Path] | None = None

    @property
    def url(self) -> str:
        return self.relay_url or default_relay_url()


Confirm = Callable[[p.Offer], Awaitable[bool]]


# --- sending -----------------------------------------------------------------------------------------------


async def send(paths: list[str | os.PathLike[str]], options: SendOptions, reporter: Reporter | None = None) -> None:
    """Offer ``paths`` under ``options.code`` and stream them; returns once every receiver has verified."""
    reporter = reporter or Reporter()
    outgoing = collect(paths)
    if options.chunk_size > p.DEFAULT_MAX_MESSAGE or options.chunk_size < 1:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"chunk size must be 1 to {p.DEFAULT_MAX_MESSAGE} bytes")
    connection = await RelayConnection.open(options.url, options.code, "send", options.receivers)
    chunk_size = min(options.chunk_size, connection.hello.max_message)
    try:
        reporter.waiting(options.code, options.receivers)
        await _wait_until_paired(connection, reporter)
        await connection.send(dataclasses.replace(outgoing.offer(chunk_size), kind=options.kind))
        await _wait_until_started(connection)
        reporter.started(outgoing.total_size)
        watcher = asyncio.create_task(_watch_receivers(connection))
        try:
            await _stream(connection, outgoing, chunk_size, reporter, watcher)
            await connection.send(p.Done())
            await watcher
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransferError):
                await watcher
        reporter.finished()
    except LocalFailure as failure:
        await connection.abort(failure.code, str(failure))
        raise
    except TransferError:
        await connection.close()
        raise
    except asyncio.CancelledError:
        await connection.cancel("the sender stopped")
        raise
    await connection.close()


async def _wait_until_paired(connection: RelayConnection, reporter: Reporter) -> None:
    while True:
        message = await connection.receive()
        if isinstance(message, p.PeerJoined):
            reporter.joined(message.joined, message.receivers)
        elif isinstance(message, p.Paired):
            return
        else:
            raise _unexpected(message, "waiting for receivers")


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


async def _watch_receivers(connection: RelayConnection) -> None:
    """Read what the relay passes back while streaming, until ``complete``; ending messages raise."""
    while True:
        message = await connection.receive()
        if isinstance(message, p.Complete):
            return
        if not isinstance(message, (p.Ack, p.FileOk, p.Verified)):
            raise _unexpected(message, "streaming")


async def _stream(
    connection: RelayConnection, outgoing: Outgoing, chunk_size: int, reporter: Reporter, watcher: asyncio.Task[None]
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
            await _send_or_explain(connection, p.Chunk(index, offset, len(data), p.chunk_digest(data)), watcher)
            await _send_or_explain(connection, data, watcher)
            offset += len(data)
            sent += len(data)
            reporter.advanced(sent)
        await _send_or_explain(connection, p.FileDone(index, offset, digest.hexdigest()), watcher)


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


async def _send_or_explain(connection: RelayConnection, frame: p.Message | bytes, watcher: asyncio.Task[None]) -> None:
    """Send a frame; if the room ended meanwhile, raise the reason the relay gave rather than a bare close."""
    try:
        if isinstance(frame, bytes):
            await connection.send_payload(frame)
        else:
            await connection.send(frame)
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
    connection = await RelayConnection.open(options.url, options.code, "receive")
    destination = Destination(options.output, options.overwrite)
    try:
        reporter.connected(connection.hello.peer, connection.hello.receivers)
        offer = await connection.receive()
        if not isinstance(offer, p.Offer):
            raise _unexpected(offer, "waiting for the offer")
        reporter.offered(offer)
        if options.output_for is not None:
            destination.root = options.output_for(offer)
        destination.check(offer)
        if not await confirm(offer):
            await connection.send(p.Decline("the receiver declined"))
            await connection.close()
            raise TransferRefused(ErrorCode.DECLINED, "you declined the offer")
        destination.make_dirs(offer.dirs)
        await connection.send(p.Accept())
        reporter.started(offer.total_size)
        await _receive_stream(connection, offer, destination, reporter)
    except p.ProtocolError as error:
        await destination.discard()
        await connection.abort(error.code, error.message)
        raise TransferRefused(error.code, error.message) from error
    except LocalFailure as failure:
        await destination.discard()
        await connection.abort(failure.code, str(failure))
        raise
    except TransferError:
        await destination.discard()
        await connection.close()
        raise
    except asyncio.CancelledError:
        await destination.discard()
        await connection.cancel("the receiver stopped")
        raise
    reporter.finished()
    return offer


async def _receive_stream(
    connection: RelayConnection, offer: p.Offer, destination: Destination, reporter: Reporter
) -> None:
    check = p.TransferCheck(offer, connection.hello.max_message, hash_files=True)
    part = None
    next_ack = p.ACK_INTERVAL
    while True:
        frame = await connection.receive()
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
                await _wait_complete(connection)
                return
            case _:
                raise _unexpected(frame, "receiving")


async def _wait_complete(connection: RelayConnection) -> None:
    """After this receiver verified: wait for ``complete``; our files are stored whatever happens next."""
    with contextlib.suppress(TransferError):
        message = await connection.receive()
        if not isinstance(message, p.Complete):
            raise _unexpected(message, "waiting for the end")
    await connection.close()


def _unexpected(message: p.Message | bytes, when: str) -> TransferRefused:
    kind = "a binary frame" if isinstance(message, bytes) else repr(message.TYPE)
    return TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, f"the relay sent {kind} while {when}")
