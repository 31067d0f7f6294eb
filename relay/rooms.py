"""Rooms: admission, the per-room state machine, and forwarding between one sender and its receivers.

Decide, then act: ``Rooms.admit`` and ``Rooms.expired`` decide with no I/O and return plain results; the
``Room`` methods that act on sockets are short and go through ``PeerSocket``, so the FastAPI layer (or a
test) can supply any transport. Data flows sender -> relay -> receivers, one chunk at a time: the sender's
reading loop forwards a chunk to every receiver before it reads the next frame, so a slow receiver slows the
sender and the relay holds at most one chunk per room.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from relay import protocol as p
from relay.config import Settings
from relay.protocol import ErrorCode, ProtocolError, UnexpectedMessage

log = logging.getLogger("relay.rooms")

# Give up writing a farewell message to a socket that does not drain within this many seconds.
FAREWELL_TIMEOUT = 2.0


class Role(StrEnum):
    SEND = "send"
    RECEIVE = "receive"


class State(StrEnum):
    WAITING = "waiting"  # sender in, receivers arriving
    PAIRED = "paired"  # all receivers in, waiting for the offer
    OFFERED = "offered"  # offer forwarded, waiting for every accept
    STREAMING = "streaming"  # chunks flowing
    DONE = "done"  # sender sent `done`, waiting for every `verified`
    ENDED = "ended"


class PeerGone(Exception):
    """The party's socket closed; raised by ``PeerSocket.receive`` and ``send_*``."""


class JoinRefused(Exception):
    """A join was refused before admission; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerSocket(Protocol):
    """What a room needs from one party's WebSocket."""

    async def receive(self) -> str | bytes: ...

    async def send_text(self, text: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


@dataclass(slots=True, eq=False)
class Party:
    peer: int
    role: Role
    socket: PeerSocket
    accepted: bool = False
    verified: bool = False
    closed: bool = False
    task: asyncio.Task[None] | None = None
    farewell: asyncio.Future[None] | None = None  # its last message and close, once the room ends


# A key of this process's own: a reader of the logs cannot test guessed codes against the tags offline.
_TAG_KEY = secrets.token_bytes(16)


def code_tag(code: str) -> str:
    """A short keyed hash of a room code for logs: codes are secrets and never logged in clear.

    The tag is stable for the life of the process, so one room's lines can be followed.
    """
    return hmac.new(_TAG_KEY, code.encode(), hashlib.sha256).hexdigest()[:8]


class Room:
    """One sender, up to ``expected`` receivers, and the transfer between them."""

    __slots__ = (
        "code", "expected", "settings", "sender", "receivers", "state", "check",
        "created_at", "last_activity", "_next_peer", "outcome",
    )

    def __init__(self, code: str, expected: int, settings: Settings, now: float) -> None:
        self.code = code
        self.expected = expected
        self.settings = settings
        self.sender: Party | None = None
        self.receivers: list[Party] = []
        self.state = State.WAITING
        self.check: p.TransferCheck | None = None
        self.created_at = now
        self.last_activity = now
        self._next_peer = 1
        # Why the room ended: "complete" or an ErrorCode value; read by the service for metrics and logs.
        self.outcome = ""

    @property
    def tag(self) -> str:
        return code_tag(self.code)

    @property
    def parties(self) -> list[Party]:
        return ([self.sender] if self.sender else []) + self.receivers

    # --- opening ---------------------------------------------------------------------------------------

    async def greet(self, party: Party) -> None:
        """Send ``hello`` to a newly admitted party and tell the sender who arrived."""
        hello = p.Hello(p.PROTOCOL_VERSION, party.role.value, party.peer, self.expected, self.settings.max_message)
        await self._send(party, hello.to_json())
        if party.role is Role.RECEIVE and self.sender is not None:
            await self._send(self.sender, p.PeerJoined(party.peer, len(self.receivers), self.expected).to_json())
            if len(self.receivers) == self.expected and self.state is State.WAITING:
                self.state = State.PAIRED
                await self._send(self.sender, p.Paired(self.expected).to_json())

    # --- frames from the sender ------------------------------------------------------------------------

    async def from_sender(self, frame: str | bytes) -> None:
        """Handle one frame from the sender: check it, then forward it to every receiver."""
        if isinstance(frame, bytes):
            await self._forward_payload(frame)
            return
        message = p.parse_message(frame)
        match message:
            case p.Chunk():
                self._require(State.STREAMING, message)
                assert self.check is not None
                self.check.chunk(message)
            case p.Offer():
                self._require(State.PAIRED, message)
                if message.total_size > self.settings.max_transfer_bytes:
                    raise ProtocolError(
                        f"the offer is {message.total_size} bytes; this relay allows "
                        f"{self.settings.max_transfer_bytes} per transfer",
                        ErrorCode.TRANSFER_TOO_LARGE,
                    )
                if message.chunk_size > self.settings.max_message:
                    raise p.MalformedMessage(f"chunk_size is over this relay's max_message {self.settings.max_message}")
                self.check = p.TransferCheck(message, self.settings.max_message)
                self.state = State.OFFERED
                await self._to_receivers(message.to_json())
            case p.FileDone():
                self._require(State.STREAMING, message)
                assert self.check is not None
                self.check.file_done(message)
                await self._to_receivers(message.to_json())
            case p.Done():
                self._require(State.STREAMING, message)
                assert self.check is not None
                self.check.done()
                self.state = State.DONE
                await self._to_receivers(message.to_json())
            case p.Cancel():
                await self.end_cancelled(0, message.reason)
            case p.Error():
                await self.end(message.error_code, message.message, culprit=0, forward=True)
            case _:
                raise UnexpectedMessage(f"a sender may not send {message.TYPE!r}")

    async def _forward_payload(self, data: bytes) -> None:
        if self.state is not State.STREAMING or self.check is None:
            raise UnexpectedMessage("binary frame before the transfer started")
        header = self.check.payload(data)
        text = header.to_json()
        for receiver in self.receivers:
            await self._send(receiver, text)
            await self._send(receiver, data)

    # --- frames from a receiver ------------------------------------------------------------------------

    async def from_receiver(self, party: Party, frame: str | bytes) -> None:
        """Handle one frame from a receiver; forward what the sender needs to know, tagged with its peer."""
        if isinstance(frame, bytes):
            raise UnexpectedMessage("a receiver may not send binary frames")
        message = p.parse_message(frame)
        assert self.sender is not None
        match message:
            case p.Ack() | p.FileOk():
                if self.state not in (State.STREAMING, State.DONE):
                    raise UnexpectedMessage(f"{message.TYPE!r} before the transfer started")
                if isinstance(message, p.Ack):
                    forwarded = p.Ack(message.file, message.offset, party.peer)
                else:
                    forwarded = p.FileOk(message.file, party.peer)
                await self._send(self.sender, forwarded.to_json())
            case p.Accept():
                self._require(State.OFFERED, message)
                if party.accepted:
                    raise UnexpectedMessage("accept sent twice")
                party.accepted = True
                await self._send(self.sender, p.Accept(party.peer).to_json())
                if all(r.accepted for r in self.receivers):
                    self.state = State.STREAMING
                    await self._send(self.sender, p.Start().to_json())
            case p.Decline():
                self._require(State.OFFERED, message)
                await self._send(self.sender, p.Decline(message.reason, party.peer).to_json())
                await self.end(ErrorCode.DECLINED, f"receiver {party.peer} declined the offer", culprit=party.peer)
            case p.Verified():
                self._require(State.DONE, message)
                if party.verified:
                    raise UnexpectedMessage("verified sent twice")
                party.verified = True
                await self._send(self.sender, p.Verified(party.peer).to_json())
                if all(r.verified for r in self.receivers):
                    await self.complete()
            case p.Cancel():
                await self.end_cancelled(party.peer, message.reason)
            case p.Error():
                await self.end(message.error_code, message.message, culprit=party.peer, forward=True)
            case _:
                raise UnexpectedMessage(f"a receiver may not send {message.TYPE!r}")

    def _require(self, state: State, message: p.Message) -> None:
        if self.state is not state:
            raise UnexpectedMessage(f"{message.TYPE!r} is not allowed while the room is {self.state.value}")

    async def _to_receivers(self, text: str) -> None:
        for receiver in self.receivers:
            await self._send(receiver, text)

    async def _send(self, party: Party, frame: str | bytes) -> None:
        """Write one frame to a party; if its socket is gone, the room ends with ``peer_left``."""
        if party.closed:
            return
        try:
            if isinstance(frame, str):
                await party.socket.send_text(frame)
            else:
                await party.socket.send_bytes(frame)
        except PeerGone:
            await self.party_left(party)

    # --- ending ----------------------------------------------------------------------------------------

    async def complete(self) -> None:
        """Every receiver verified: tell everyone and close normally."""
        self.state = State.ENDED
        self.outcome = "complete"
        log.info("room %s complete: %d receiver(s), %d bytes", self.tag, len(self.receivers),
                 self.check.bytes_done if self.check else 0)
        text = p.Complete().to_json()
        await self._farewells([(party, text, p.CLOSE_NORMAL) for party in self.parties])

    async def end_cancelled(self, by: int, reason: str) -> None:
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.outcome = ErrorCode.CANCELLED.value
        log.info("room %s cancelled by peer %d", self.tag, by)
        text = p.Cancel(reason[: p.MAX_TEXT], by).to_json()
        close = ErrorCode.CANCELLED.close_code
        await self._farewells([(party, text if party.peer != by else None, close) for party in self.parties])

    async def party_left(self, party: Party) -> None:
        """A socket closed: if the room was still live, everyone else is told and the room ends."""
        party.closed = True
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.outcome = ErrorCode.PEER_LEFT.value
        log.info("room %s: peer %d (%s) left", self.tag, party.peer, party.role.value)
        text = p.PeerLeft(party.peer, party.role.value).to_json()
        close = ErrorCode.PEER_LEFT.close_code
        await self._farewells([(other, text, close) for other in self.parties if other is not party])

    async def end(self, code: ErrorCode, message: str, culprit: int | None = None, forward: bool = False) -> None:
        """End the room with an error: each party gets one ``error`` and the code's close code.

        ``culprit`` is the peer whose frame caused it; with ``forward`` the error was reported by that peer and
        is passed on to the others with its ``peer`` number instead of being echoed back.
        """
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.outcome = code.value
        log.info("room %s ended: %s (peer %s)", self.tag, code.value, culprit)
        message = message[: p.MAX_TEXT]
        farewells: list[tuple[Party, str | None, int]] = []
        for party in self.parties:
            if forward and party.peer == culprit:
                text = None
            elif forward:
                text = p.Error(code.value, message, culprit).to_json()
            else:
                text = p.Error(code.value, message).to_json()
            farewells.append((party, text, code.close_code))
        await self._farewells(farewells)

    async def _farewells(self, farewells: list[tuple[Party, str | None, int]]) -> None:
        """Send each party its last message and close, all at once; each party's route waits for its own."""
        tasks = []
        for party, text, close_code in farewells:
            if party.closed:
                continue
            party.closed = True
            party.farewell = asyncio.ensure_future(self._farewell(party, text, close_code))
            tasks.append(party.farewell)
        await asyncio.gather(*tasks)

    async def _farewell(self, party: Party, text: str | None, close_code: int) -> None:
        try:
            async with asyncio.timeout(FAREWELL_TIMEOUT):
                if text is not None:
                    await party.socket.send_text(text)
                await party.socket.close(close_code)
        except PeerGone:
            pass
        except TimeoutError:
            # The peer is not reading: stop its reading loop so the route returns and the socket is dropped.
            if party.task is not None:
                party.task.cancel()


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What a connecting party asked for, as parsed from the URL."""

    code: str
    role: str | None
    receivers: str | None = None
    version: str | None = None


class Rooms:
    """The registry of live rooms: admission decisions and expiry, no socket I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_code: dict[str, Room] = {}

    def __len__(self) -> int:
        return len(self.by_code)

    def admit(self, request: JoinRequest, socket: PeerSocket, now: float) -> tuple[Room, Party]:
        """Decide whether a party may join; on success it is registered. Raises ``JoinRefused``."""
        if request.version not in (None, "", str(p.PROTOCOL_VERSION)):
            raise JoinRefused(ErrorCode.UNSUPPORTED_VERSION, f"this relay speaks protocol version {p.PROTOCOL_VERSION}")
        if not p.is_valid_code(request.code):
            raise JoinRefused(ErrorCode.BAD_REQUEST, "a room code is 1-128 characters of a-z, 0-9 and '-'")
        if request.role == Role.SEND:
            return self._admit_sender(request, socket, now)
        if request.role == Role.RECEIVE:
            if request.receivers not in (None, ""):
                raise JoinRefused(ErrorCode.BAD_REQUEST, "only a sender may set 'receivers'")
            return self._admit_receiver(request, socket)
        raise JoinRefused(ErrorCode.BAD_REQUEST, "query parameter 'role' must be 'send' or 'receive'")

    def _admit_sender(self, request: JoinRequest, socket: PeerSocket, now: float) -> tuple[Room, Party]:
        expected = _parse_receivers(request.receivers, self.settings.max_receivers)
        if request.code in self.by_code:
            raise JoinRefused(ErrorCode.ROOM_TAKEN, "this room already has a sender; choose another code")
        if len(self.by_code) >= self.settings.max_rooms:
            raise JoinRefused(ErrorCode.TOO_MANY_ROOMS, "the relay has too many open rooms; try again later")
        room = Room(request.code, expected, self.settings, now)
        room.sender = Party(0, Role.SEND, socket)
        self.by_code[request.code] = room
        log.info("room %s opened for %d receiver(s)", room.tag, expected)
        return room, room.sender

    def _admit_receiver(self, request: JoinRequest, socket: PeerSocket) -> tuple[Room, Party]:
        room = self.by_code.get(request.code)
        if room is None or room.state is State.ENDED:
            raise JoinRefused(ErrorCode.ROOM_NOT_FOUND, "no sender is waiting with this code")
        if len(room.receivers) >= room.expected or room.state is not State.WAITING:
            raise JoinRefused(ErrorCode.ROOM_FULL, "this room already has all its receivers")
        party = Party(room._next_peer, Role.RECEIVE, socket)
        room._next_peer += 1
        room.receivers.append(party)
        return room, party

    def remove(self, room: Room) -> None:
        if self.by_code.get(room.code) is room:
            del self.by_code[room.code]

    def expired(self, now: float) -> list[tuple[Room, ErrorCode]]:
        """Rooms whose pairing or idle deadline has passed, with the error to end them with."""
        found = []
        for room in self.by_code.values():
            if room.state is State.ENDED:
                continue
            if room.state is State.WAITING:
                if now - room.created_at >= self.settings.pairing_timeout:
                    found.append((room, ErrorCode.PAIRING_TIMEOUT))
            elif now - room.last_activity >= self.settings.idle_timeout:
                found.append((room, ErrorCode.IDLE_TIMEOUT))
        return found


def _parse_receivers(raw: str | None, maximum: int) -> int:
    if raw in (None, ""):
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise JoinRefused(ErrorCode.BAD_REQUEST, f"'receivers' must be a whole number from 1 to {maximum}")
    return int(raw)
