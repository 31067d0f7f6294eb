"""Rooms: admission, and the life of one room as a pure state machine.

Decide, then act. ``Rooms.admit`` decides who may join with no I/O. ``Room.handle(event, now)`` is the whole
life of a room: an event goes in (a party joined, a frame arrived from party k, party k's socket went away,
the timer fired, ...), the room checks it against ``TRANSITIONS_V2`` (a table, documented in docs/rooms.md),
updates its state, and returns a list of effects (send this text or these bytes to party k, close party k
with code c after its last message, the room ended). Nothing in this module awaits or touches a socket; the
clock is passed in. ``relay.service`` carries out the effects in order and feeds what it learns while doing
so (a send that failed) back in as events.

Data flows sender -> relay -> receivers, one chunk at a time: a binary frame from the sender becomes "send the
header, then the payload, to every receiver", and the service reads the sender's next frame only after every
receiver's socket took it, so a slow receiver slows the sender and the relay holds at most one chunk per room.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from relay import protocol as p
from relay.config import Settings, parse_ascii_int
from relay.protocol import ErrorCode, ProtocolError, UnexpectedMessage

# Give up writing a farewell message to a socket that does not drain within this many seconds.
FAREWELL_TIMEOUT = 2.0
# The longest `receivers` / `v` query value read at all: anything longer is refused before int() sees it.
MAX_QUERY_DIGITS = 6


class Role(StrEnum):
    SEND = "send"
    RECEIVE = "receive"


class State(StrEnum):
    WAITING = "waiting"  # sender in, receivers arriving (each one keys with the sender as it arrives)
    KEYING = "keying"  # all receivers in, not all of them confirmed and given the content key yet
    PAIRED = "paired"  # all receivers in and keyed, waiting for the offer
    OFFERED = "offered"  # offer forwarded, waiting for every accept
    STREAMING = "streaming"  # chunks flowing
    DONE = "done"  # sender sent `end`, waiting for every `verified`
    PARKED = "parked"  # a party's socket dropped mid-transfer; its seat waits the resume window for it
    ENDED = "ended"


LIVE_STATES = tuple(state for state in State if state is not State.ENDED)


class PeerGone(Exception):
    """The party's socket closed; raised by ``PeerSocket.receive`` and ``send_*``.

    ``left``: the party sent a close frame (it closed its socket on purpose: a tab closed, a client that quit),
    as opposed to a connection that ended without one (a network drop, a killed process): the first ends the
    room, only the second parks a seat (docs/protocol.md section 10)."""

    def __init__(self, left: bool = False) -> None:
        super().__init__("the party left" if left else "the connection dropped")
        self.left = left


class JoinRefused(Exception):
    """A join was refused before admission; ``code`` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerSocket(Protocol):
    """What the service needs from one party's WebSocket. Every method raises ``PeerGone`` once it is gone."""

    async def receive(self) -> str | bytes: ...

    async def send_text(self, text: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


# --- events: what happens to a room ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """Party ``peer`` was admitted (by ``Rooms.admit``) and its socket is open."""

    peer: int


@dataclass(frozen=True, slots=True)
class TextFrame:
    """A text frame arrived from party ``peer`` on its connection ``connection`` (``Party.connection``)."""

    peer: int
    text: str
    connection: int


@dataclass(frozen=True, slots=True)
class BinaryFrame:
    """A binary frame arrived from party ``peer`` on its connection ``connection``."""

    peer: int
    data: bytes
    connection: int


@dataclass(frozen=True, slots=True)
class Gone:
    """Party ``peer``'s connection ``connection`` closed, or a send to it failed. ``left``: it closed with a close
    frame (the table's ``left``: the party left on purpose, never parked); otherwise it dropped (``gone``)."""

    peer: int
    connection: int
    left: bool = False


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The sweeper's tick: deadlines are checked against the ``now`` given to ``handle``."""


@dataclass(frozen=True, slots=True)
class Crashed:
    """The shell hit an unexpected exception (a bug) while serving this room; ``what`` names it for the peers."""

    what: str


@dataclass(frozen=True, slots=True)
class ShuttingDown:
    """The relay is going away: the room ends with ``going_away``."""


@dataclass(frozen=True, slots=True)
class Rejoined:
    """Party ``peer`` proved its parked seat with its resume token (``Rooms.resume``) on a new socket, which
    ``Rooms.resume`` numbered ``connection``."""

    peer: int
    connection: int


@dataclass(frozen=True, slots=True)
class AllVerified:
    """Fed back by the room itself once every receiver's ``verified`` has been written to the sender."""


Event = Joined | TextFrame | BinaryFrame | Gone | TimerFired | Crashed | ShuttingDown | AllVerified | Rejoined
_PARTY_EVENTS = (Joined, TextFrame, BinaryFrame, Gone, Rejoined)
# Events that name the connection they come from: one from a connection the party has since replaced is moot.
_CONNECTION_EVENTS = (TextFrame, BinaryFrame, Gone, Rejoined)
# The table's name for each event that carries no message ("crash" and frames are named in Room._classify).
_TRIGGERS: dict[type, str] = {Joined: "joined", Gone: "gone", Rejoined: "rejoined", TimerFired: "timer",
                              ShuttingDown: "shutdown", AllVerified: "all_verified"}


# --- effects: what the service must do --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendText:
    """Write ``text`` to party ``peer``'s connection ``connection``: the one it had when the room decided. If the
    party has taken its seat back on a new connection since, the write is moot and skipped (the new connection
    must never get what was meant for the old one, e.g. a chunk of the epoch its drop abandoned)."""

    peer: int
    text: str
    connection: int


@dataclass(frozen=True, slots=True)
class SendBytes:
    """Write ``data`` to party ``peer``'s connection ``connection`` (as ``SendText``)."""

    peer: int
    data: bytes
    connection: int


@dataclass(frozen=True, slots=True)
class Close:
    """Send ``last`` (if any) and close with ``code``, bounded by ``FAREWELL_TIMEOUT``; farewells run at once."""

    peer: int
    code: int
    last: str | None = None


@dataclass(frozen=True, slots=True)
class FailedJoin:
    """Count a failed join against party ``peer``'s address (its guess of the code was wrong)."""

    peer: int


@dataclass(frozen=True, slots=True)
class Feed:
    """Once every effect before this one has been carried out, feed ``event`` back to the room."""

    event: Event


@dataclass(frozen=True, slots=True)
class Ended:
    """The room is over: ``outcome`` is "complete" or an error code. Remove it, count it, log it."""

    outcome: str


Effect = SendText | SendBytes | Close | FailedJoin | Feed | Ended


# --- the room -------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Party:
    """One party as the room sees it; its socket belongs to the service."""

    peer: int
    role: Role
    accepted: bool = False
    verified: bool = False
    closed: bool = False  # the room will write nothing more to it: its socket is gone or its farewell is decided
    gone: bool = False  # its socket closed or a send to it failed
    # keying with the sender, one step at a time (each message is relayed once, in this order)
    pake_to: bool = False  # the sender's PAKE message reached it
    pake_from: bool = False  # its PAKE message reached the sender
    confirm_to: bool = False  # the sender's confirmation reached it
    confirm_from: bool = False  # its confirmation reached the sender
    keyed: bool = False  # the sealed content key reached it
    offered: bool = False  # its sealed offer reached it
    # v2 resume: verifiers are SHA-256 digests (hex) of tokens only the parties can derive from the pair key
    verifier: str | None = None  # a receiver's seat: the verifier it registered
    sender_verifier: str | None = None  # on a receiver: the verifier the sender registered for this pair
    parked: bool = False  # its socket dropped mid-transfer and its seat waits for it (the room is PARKED)
    # A receiver still away when the resume window ended while the sender and another receiver were there: its
    # seat is closed for good (its resume is refused with ``dropped``) and the room goes on without it.
    dropped: bool = False
    # Which of its connections the room talks to: 0 the first, one more each time ``Rooms.resume`` gives the seat
    # back on a new socket. Frames, a close and a failed send of an older one are ignored (docs/rooms.md).
    connection: int = 0


# A key of this process's own: a reader of the logs cannot test guessed codes against the tags offline.
_TAG_KEY = secrets.token_bytes(16)


def code_tag(code: str) -> str:
    """A short keyed hash of a room code for logs: codes are secrets and never logged in clear.

    The tag is stable for the life of the process, so one room's lines can be followed.
    """
    return hmac.new(_TAG_KEY, code.encode(), hashlib.sha256).hexdigest()[:8]


# Who an event comes from, as written in the transition table.
SENDER, RECEIVER, PARTY, RELAY = "sender", "receiver", "party", "relay"
Action = Callable[["Room", "Party | None", object, float], None]


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the table: in ``state`` (``None``: any live state), ``trigger`` from ``source`` leads to one
    of ``targets`` by running ``action``."""

    state: State | None
    source: str
    trigger: str
    targets: tuple[State, ...]
    action: Action


class Room:
    """One sender, up to ``expected`` receivers, and the transfer between them: a pure state machine."""

    __slots__ = (
        "code", "expected", "settings", "sender", "receivers", "state", "check", "offer_totals",
        "created_at", "last_activity", "offered_at", "_next_peer", "outcome", "_out", "_by_peer", "parked_at",
        "parked_from", "recreated", "dropped_at",
    )

    def __init__(self, code: str, expected: int, settings: Settings, now: float) -> None:
        self.code = code
        self.offer_totals: tuple[int, int] | None = None  # the clear (total_size, files) every offer repeats
        self.expected = expected
        self.settings = settings
        self.sender: Party | None = None
        self.receivers: list[Party] = []
        self.state = State.WAITING
        self.check: p.StreamCheck | None = None
        self.created_at = now
        self.last_activity = now
        self.offered_at = now
        self._next_peer = 1
        # Why the room ended: "complete" or an ErrorCode value.
        self.outcome = ""
        self._out: list[Effect] = []
        self._by_peer: dict[int, Party] = {}
        self.parked_at = now  # v2 resume: when the room parked (its resume window counts from there)
        self.parked_from = State.STREAMING  # the state it goes back to once every parked seat is back
        self.recreated: p.RoomShape | None = None  # set when a resume recreated it after a relay restart
        self.dropped_at: float | None = None  # when the resume window's end dropped seats (``_parked_deadline``)

    @property
    def tag(self) -> str:
        return code_tag(self.code)

    @property
    def staying(self) -> list[Party]:
        """The receivers the transfer is still for: every one but those dropped (docs/protocol.md section 10)."""
        return [r for r in self.receivers if not r.dropped]

    @property
    def parties(self) -> list[Party]:
        return ([self.sender] if self.sender else []) + self.receivers

    def party(self, peer: int) -> Party | None:
        return self._by_peer.get(peer)

    def seat(self, party: Party) -> None:
        """Add an admitted party (``Rooms.admit`` does; the ``joined`` event then greets it)."""
        if party.role is Role.SEND:
            self.sender = party
        else:
            self.receivers.append(party)
        self._by_peer[party.peer] = party

    def reachable(self, peer: int, connection: int) -> bool:
        """Whether ``peer``'s connection ``connection`` is still there and still its own (the service skips
        sends to a party that is gone, and those meant for a connection it has since replaced)."""
        party = self.party(peer)
        return party is not None and party.connection == connection and not party.gone

    def attached(self, peer: int, connection: int) -> bool:
        """Whether the room still counts on ``peer``'s connection ``connection``: it is the party's current one
        and the room has not closed it. The service reads a socket only while this holds."""
        party = self.party(peer)
        return party is not None and party.connection == connection and not party.closed

    # --- the one entry point ---------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Apply one event at time ``now``; return what the service must do, in order.

        A peer that breaks the protocol ends the room with the error's code. Any other exception is a bug in
        the relay and propagates: the service then feeds ``Crashed``.
        """
        out: list[Effect] = []
        self._out = out
        party = self._by_peer.get(event.peer) if isinstance(event, _PARTY_EVENTS) else None
        if party is not None and isinstance(event, _CONNECTION_EVENTS) and (
                event.connection != party.connection or party.dropped):
            # From a connection the party has replaced by resuming: its last frames, its close, a send to it that
            # failed. The seat now belongs to the new connection; none of this is about it. Nor is anything about
            # a dropped seat's last connection: that seat is closed for good.
            return out
        if self.state is State.ENDED:
            if type(event) is Gone and party is not None:
                party.closed = party.gone = True
            return out
        try:
            source, trigger, payload = self._classify(event, party, now)
            transition = TABLE_V2.get((self.state, source, trigger)) or TABLE_V2.get((None, source, trigger))
            if transition is None:
                if type(event) is Joined:
                    raise RuntimeError(f"a party joined a room that is {self.state.value}")
                if source == RELAY:
                    return out  # e.g. AllVerified after the room changed: nothing to do
                raise UnexpectedMessage(f"{trigger!r} from the {source} is not allowed while the room is "
                                        f"{self.state.value}")
            transition.action(self, party, payload, now)
        except ProtocolError as error:
            self._end_with_error(error.code, error.message, culprit=party.peer if party else None)
            return out
        if self.state not in transition.targets:
            raise RuntimeError(f"{transition.trigger} in {transition.state} led to {self.state}, "
                               f"not one of {transition.targets}")
        return out

    def chunk(self, peer: int, connection: int, text: str, data: bytes, now: float) -> list[Effect]:
        """A chunk header and its payload from ``peer``'s connection ``connection``, read together: the same as
        ``handle(TextFrame(peer, text, connection), now)`` followed by ``handle(BinaryFrame(peer, data,
        connection), now)``, in one call.

        The sender's reading loop finds a chunk's two frames side by side, 16,384 times per GiB at 64 KiB. When
        the sender of a streaming room sends a header in its canonical form (``parse_frame``'s shortcut) and no
        resume has reopened the epoch, this runs what the table's ``chunk`` and ``binary`` rows run
        (``_sealed_chunk``, ``_ciphertext``: ``StreamCheck.chunk`` and ``payload``, the same effects, the same
        error on the same check) without building two events, classifying them and looking the rows up. Any
        other case takes ``handle`` twice; tests/test_rooms_chunk.py checks that both ways agree.
        """
        try:
            return self._chunk(peer, connection, text, data, now)
        finally:
            # The effects hold the payload: the room must not keep it (in ``_out``) once they are carried out,
            # or the next chunk would be unmasked while this one is still alive (3 chunks per room, not 2).
            self._out = []

    def _chunk(self, peer: int, connection: int, text: str, data: bytes, now: float) -> list[Effect]:
        check = self.check
        sender = self.sender
        match = _CHUNK_HEADER.fullmatch(text)
        if (match is None or self.state is not State.STREAMING or sender is None or sender.peer != peer
                or sender.connection != connection or check is None or check.pending is not None
                or check.reopened):
            return (self.handle(TextFrame(peer, text, connection), now)
                    + self.handle(BinaryFrame(peer, data, connection), now))
        out: list[Effect] = []
        self._out = out
        self.last_activity = now
        epoch_digits, size_digits, digest = match.groups()
        epoch, size = int(epoch_digits), int(size_digits)
        try:
            if epoch <= p.MAX_EPOCH and p.TAG_SIZE <= size <= p.MAX_SAFE_INT:  # what ``from_dict`` checks
                header = p.SealedChunk(epoch, size, digest)
            else:
                header = p.SealedChunk.from_dict({"epoch": epoch, "size": size, "xxh3_64": digest})  # raises
            check.chunk(header)
            checked = check.payload(data)
        except ProtocolError as error:
            self._end_with_error(error.code, error.message, culprit=peer)
            return out
        if checked is None:
            return out  # as ``_ciphertext``: a chunk of an epoch a resume abandoned goes to nobody
        # ``text`` matched the canonical form, the one spelling ``chunk_json(checked)`` gives: forwarded as it came.
        for receiver in self.receivers:
            if not receiver.closed:
                out.append(SendText(receiver.peer, text, receiver.connection))
                out.append(SendBytes(receiver.peer, data, receiver.connection))
        return out

    def _classify(self, event: Event, party: Party | None, now: float) -> tuple[str, str, object]:
        """Name an event as the table does: (source, trigger, payload). Frames count as activity."""
        if party is not None:
            source = SENDER if party.role is Role.SEND else RECEIVER
            if type(event) is BinaryFrame:
                self.last_activity = now
                return source, "binary", event.data
            if type(event) is TextFrame:
                self.last_activity = now
                message = parse_frame(event.text)
                return source, message.TYPE, message
            if type(event) is Gone and party.verified:
                return source, "gone_verified", None  # a receiver that has every file: nothing to wait for
            if type(event) is Gone and event.left:
                return source, "left", None
            return source, _TRIGGERS[type(event)], None
        if isinstance(event, _PARTY_EVENTS):
            raise RuntimeError(f"no party {event.peer} in this room")
        if type(event) is Crashed:
            return RELAY, "crash", event.what
        return RELAY, _TRIGGERS[type(event)], None

    def abandon(self) -> None:
        """The last resort after a bug while ending: the room is over (``internal_error`` unless it had already
        ended) and nothing more is written to anyone; the service then closes every socket itself."""
        if self.state is not State.ENDED:
            self.state = State.ENDED
            self.outcome = ErrorCode.INTERNAL_ERROR.value
        for party in self.parties:
            party.closed = True

    # --- effects ---------------------------------------------------------------------------------------

    def _send(self, party: Party, message: p.Message) -> None:
        if not party.closed:
            self._out.append(SendText(party.peer, message.to_json(), party.connection))

    def _to_receivers(self, message: p.Message) -> None:
        text = message.to_json()
        self._out.extend(SendText(r.peer, text, r.connection) for r in self.receivers if not r.closed)

    def _to_everyone_there(self, message: p.Message) -> None:
        """``message`` to every party whose connection the room has not closed, the sender included."""
        text = message.to_json()
        self._out.extend(SendText(q.peer, text, q.connection) for q in self.parties if not q.closed)

    def _end(self, outcome: str, farewells: list[tuple[Party, str | None, int]]) -> None:
        """Move to ENDED: each open party gets its last message and close, then ``Ended``."""
        self.state = State.ENDED
        self.outcome = outcome
        for party, text, close_code in farewells:
            if not party.closed:
                party.closed = True
                self._out.append(Close(party.peer, close_code, text))
        for party in self.parties:  # nothing more is ever written to anyone
            party.closed = True
        self._out.append(Ended(outcome))

    def _end_with_error(self, code: ErrorCode, message: str, culprit: int | None = None,
                        forward: bool = False) -> None:
        """End with an error: each party gets one ``error`` and the code's close code.

        ``culprit`` is the peer whose frame caused it; with ``forward`` the error was reported by that peer and
        is passed on to the others with its ``peer`` number instead of being echoed back.
        """
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
        self._end(code.value, farewells)

    # --- actions: one per row of the table (each may move only to its row's targets) -------------------

    def _greet(self, party: Party | None, _: object, __: float) -> None:
        assert party is not None
        nameplate = self.code if party.role is Role.SEND else None
        hello = p.Hello(p.PROTOCOL_V2, party.role.value, party.peer, self.expected, self.settings.max_message,
                        nameplate)
        self._send(party, hello)
        if party.role is Role.RECEIVE and self.sender is not None:
            self._send(self.sender, p.PeerJoined(party.peer, len(self.receivers), self.expected))
            if len(self.receivers) == self.expected:
                self.state = State.KEYING  # the last one to key with the sender has only just arrived

    def _verified(self, party: Party | None, _: object, __: float) -> None:
        assert party is not None and self.sender is not None
        if party.verified:
            raise UnexpectedMessage("verified sent twice")
        party.verified = True
        self._send(self.sender, p.Verified(party.peer))
        if all(r.verified for r in self.staying):
            # Complete only once the sender has been given every `verified`: if that write fails, the room
            # ends with peer_left first and this event finds it ended.
            self._out.append(Feed(AllVerified()))

    def _verified_left(self, party: Party | None, _: object, __: float) -> None:
        """A receiver that verified has every file authenticated and stored, and waits only for ``complete``:
        its connection ending (a drop or a close) costs nobody anything. Its seat is closed, not parked (it would
        have nothing to resume, and a room waiting for it would keep the others waiting out the window), and the
        room goes on for the others; ``complete`` still comes once every receiver verified."""
        assert party is not None
        party.closed = party.gone = True

    def _complete(self, _: Party | None, __: object, ___: float) -> None:
        text = p.Complete().to_json()
        self._end("complete", [(party, text, p.CLOSE_NORMAL) for party in self.parties])


    def _reported_error(self, party: Party | None, message: object, _: float) -> None:
        assert party is not None and isinstance(message, p.Error)
        self._end_with_error(message.error_code, message.message, culprit=party.peer, forward=True)

    def _gone(self, party: Party | None, _: object, __: float) -> None:
        assert party is not None
        party.closed = party.gone = True
        text = p.PeerLeft(party.peer, party.role.value).to_json()
        close = ErrorCode.PEER_LEFT.close_code
        self._end(ErrorCode.PEER_LEFT.value, [(other, text, close) for other in self.parties if other is not party])

    def _crash(self, _: Party | None, what: object, __: float) -> None:
        self._end_with_error(ErrorCode.INTERNAL_ERROR, f"internal relay error: {what}")

    def _shutdown(self, _: Party | None, __: object, ___: float) -> None:
        self._end_with_error(ErrorCode.GOING_AWAY, "the relay is shutting down")

    def _pairing_deadline(self, _: Party | None, __: object, now: float) -> None:
        if now - self.created_at >= self.settings.pairing_timeout:
            self._end_with_error(ErrorCode.PAIRING_TIMEOUT, "no receiver joined in time")

    def _offer_deadline(self, _: Party | None, __: object, now: float) -> None:
        # A person may be reading the offer: the idle timeout is off here, this longer deadline applies.
        if now - self.offered_at >= self.settings.offer_timeout:
            self._end_with_error(ErrorCode.OFFER_TIMEOUT, "nobody answered the offer in time")

    def _idle_deadline(self, _: Party | None, __: object, now: float) -> None:
        if now - self.last_activity >= self.settings.idle_timeout:
            self._end_with_error(ErrorCode.IDLE_TIMEOUT, "the transfer stalled")


    # --- keying, the sealed offer, the ciphertext stream (docs/protocol.md sections 4 and 5) -------------

    def _addressed(self, message: object) -> Party:
        """The receiver a sender's message names in ``to``; it must be in the room."""
        to = getattr(message, "to", None)
        party = self._by_peer.get(to) if isinstance(to, int) else None
        if party is None or party.role is not Role.RECEIVE:
            raise UnexpectedMessage(f"'to' must name a receiver of this room, not {to!r}")
        return party

    def _keying_from_sender(self, _: Party | None, message: object, now: float) -> None:
        """The sender's ``pake``, then ``confirm``, then ``key`` to receiver ``to``: each once, in that order."""
        receiver = self._addressed(message)
        if isinstance(message, p.Pake) and not receiver.pake_to:
            receiver.pake_to = True
            self._send(receiver, p.Pake(message.data))
        elif isinstance(message, p.Confirm) and receiver.pake_to and receiver.pake_from and not receiver.confirm_to:
            receiver.confirm_to = True
            self._send(receiver, p.Confirm(message.data))
        elif isinstance(message, p.Key) and receiver.confirm_from and not receiver.keyed:
            receiver.keyed = True
            self._send(receiver, p.Key(message.data))
            if len(self.receivers) == self.expected and all(r.keyed for r in self.receivers):
                assert self.sender is not None
                self.state = State.PAIRED
                self.last_activity = now
                self._send(self.sender, p.Paired(self.expected))
        else:
            raise UnexpectedMessage(f"{getattr(message, 'TYPE', '?')!r} out of order for receiver {receiver.peer}")

    def _keying_from_receiver(self, party: Party | None, message: object, _: float) -> None:
        """A receiver's ``pake`` (once), then its ``confirm`` (once, after the sender's): to the sender."""
        assert party is not None and self.sender is not None
        if isinstance(message, p.Pake) and not party.pake_from:
            party.pake_from = True
            self._send(self.sender, p.Pake(message.data, peer=party.peer))
        elif isinstance(message, p.Confirm) and party.confirm_to and not party.confirm_from:
            party.confirm_from = True
            self._send(self.sender, p.Confirm(message.data, peer=party.peer))
        else:
            raise UnexpectedMessage(f"{getattr(message, 'TYPE', '?')!r} out of order")

    def _wrong_code(self, party: Party | None, message: object, _: float) -> None:
        """A key confirmation failed: the code is spent, the room ends for everyone, and the receiver of the
        pair (the side that joined an existing room, so the one that guessed) is charged a failed join."""
        assert party is not None
        guesser = party if party.role is Role.RECEIVE else self._addressed(message)
        self._out.append(FailedJoin(guesser.peer))
        self._end_with_error(ErrorCode.WRONG_CODE, WRONG_CODE_MESSAGE)

    def _sealed_offer(self, _: Party | None, message: object, now: float) -> None:
        """One sealed offer per receiver; the clear totals are checked against the limits and must be equal."""
        assert isinstance(message, p.SealedOffer)
        receiver = self._addressed(message)
        if not receiver.keyed or receiver.offered:
            raise UnexpectedMessage(f"a second offer to receiver {receiver.peer}")
        if message.total_size > self.settings.max_transfer_bytes:
            raise ProtocolError(
                f"the offer is {message.total_size} bytes; this relay allows "
                f"{self.settings.max_transfer_bytes} per transfer",
                ErrorCode.TRANSFER_TOO_LARGE,
            )
        totals = (message.total_size, message.files)
        if self.offer_totals is None:
            self.offer_totals = totals
            self.check = p.StreamCheck(message.total_size, message.files, self.settings.max_message)
            self.offered_at = now
        elif totals != self.offer_totals:
            raise p.SizeMismatch("every receiver must be offered the same total size and number of files")
        receiver.offered = True
        self.state = State.OFFERED
        self._send(receiver, p.SealedOffer(message.total_size, message.files, message.data))

    def _sealed_accept(self, party: Party | None, message: object, now: float) -> None:
        assert party is not None and self.sender is not None and isinstance(message, p.SealedAccept)
        if not party.offered or party.accepted:
            raise UnexpectedMessage("accept without an offer, or sent twice")
        party.accepted = True
        self._send(self.sender, p.SealedAccept(message.data, party.peer))
        if len(self.receivers) == self.expected and all(r.accepted for r in self.receivers):
            self.state = State.STREAMING
            self.last_activity = now
            self._send(self.sender, p.Start())

    def _sealed_decline(self, party: Party | None, message: object, _: float) -> None:
        assert party is not None and self.sender is not None and isinstance(message, p.SealedDecline)
        self._send(self.sender, p.SealedDecline(message.code, message.data, party.peer))
        self._end_with_error(ErrorCode.DECLINED, f"receiver {party.peer} declined the offer", culprit=party.peer)

    def _stream(self, _: Party | None, message: object, __: float) -> None:
        """Open the epoch for every receiver (one epoch per transfer here) and give each its sealed plan."""
        assert isinstance(self.check, p.StreamCheck) and isinstance(message, p.Stream) and message.to is not None
        if sorted(message.to) != [r.peer for r in self.staying]:
            raise UnexpectedMessage("this relay runs one stream epoch for every receiver of the room (but those "
                                    "dropped)")
        self.check.stream(message)
        self.state = State.STREAMING  # from DONE: the catch-up epoch after a resume
        for peer, plan in zip(message.to, message.data, strict=True):
            receiver = self._by_peer[peer]
            self._send(receiver, p.Stream(message.epoch, message.chunks, message.bytes, plan))

    def _sealed_chunk(self, _: Party | None, message: object, __: float) -> None:
        assert isinstance(self.check, p.StreamCheck) and isinstance(message, p.SealedChunk)
        self.check.chunk(message)  # a chunk of an epoch a resume abandoned is let through to be dropped

    def _ciphertext(self, _: Party | None, data: object, __: float) -> None:
        assert isinstance(self.check, p.StreamCheck) and isinstance(data, bytes)
        header = self.check.payload(data)
        if header is None:
            return  # sent before the room parked, in the epoch the resume abandoned: nobody expects it
        text = chunk_json(header)
        for receiver in self.receivers:
            if not receiver.closed:
                self._out.append(SendText(receiver.peer, text, receiver.connection))
                self._out.append(SendBytes(receiver.peer, data, receiver.connection))

    def _end_epoch(self, _: Party | None, message: object, __: float) -> None:
        assert isinstance(self.check, p.StreamCheck) and isinstance(message, p.End)
        if not self.check.end(message):
            return  # the end of an abandoned epoch, on its way when the room parked
        self.state = State.DONE
        self._to_receivers(message)

    def _chunk_ack(self, party: Party | None, message: object, _: float) -> None:
        assert party is not None and self.sender is not None and isinstance(message, p.ChunkAck)
        self._send(self.sender, p.ChunkAck(message.epoch, message.chunks, party.peer))

    def _sealed(self, party: Party | None, message: object, _: float) -> None:
        """An opaque party-to-party message: the sender's to receiver ``to``, a receiver's to the sender."""
        assert party is not None and self.sender is not None and isinstance(message, p.Sealed)
        if party.role is Role.SEND:
            self._send(self._addressed(message), p.Sealed(message.data))
        else:
            self._send(self.sender, p.Sealed(message.data, peer=party.peer))

    def _sealed_cancel(self, party: Party | None, message: object, _: float) -> None:
        assert party is not None and isinstance(message, p.SealedCancel)
        text = p.SealedCancel(message.data, party.peer).to_json()
        close = ErrorCode.CANCELLED.close_code
        # A receiver's sealed reason is for the sender alone; the other receivers learn only that it cancelled.
        bare = p.SealedCancel(None, party.peer).to_json()
        self._end(ErrorCode.CANCELLED.value,
                  [(other, None if other is party else text if other.role is Role.SEND else bare, close)
                   for other in self.parties])

    # --- v2 resume: parking a dropped seat, taking it back (docs/protocol.md section 10) -----------------

    def _resume_id(self, party: Party | None, message: object, _: float) -> None:
        """Register a seat's verifier, once per seat and only after the pair is keyed (the token derives from
        the pair key). The sender registers one per receiver; only digests reach the relay."""
        assert party is not None and isinstance(message, p.ResumeId)
        if party.role is Role.SEND:
            receiver = self._addressed(message)
            if not receiver.keyed or receiver.sender_verifier is not None:
                raise UnexpectedMessage(f"resume_id for receiver {receiver.peer} before keying, or twice")
            receiver.sender_verifier = message.verifier
        else:
            if message.to is not None or not party.keyed or party.verifier is not None:
                raise UnexpectedMessage("resume_id before keying, twice, or with 'to'")
            party.verifier = message.verifier

    def resumable(self, party: Party) -> bool:
        """Whether ``party``'s seat can be proved again: it registered its verifier(s) (the sender: one per
        receiver). A party that registered none leaves as before (``peer_left``)."""
        if party.role is Role.RECEIVE:
            return party.verifier is not None
        return bool(self.receivers) and all(r.sender_verifier is not None for r in self.receivers)

    def _park(self, party: Party | None, _: object, now: float) -> None:
        """A socket dropped mid-transfer: park its seat for the resume window (nothing is held for it), tell
        the others, and abandon the open epoch (the sender opens a new one, under a new key, once all are back)."""
        assert party is not None
        if party.parked:
            return  # the same drop seen twice (a failed send, then the read loop): parked already
        if not self.resumable(party):
            self._gone(party, None, now)
            return
        party.closed = party.gone = party.parked = True
        assert isinstance(self.check, p.StreamCheck)
        if self.state is not State.PARKED:
            self.parked_from, self.parked_at = self.state, now
            self.state = State.PARKED
            self.check.abandon(party.role is Role.SEND)
        elif party.role is Role.SEND:
            self.check.pending, self.check.discarding = None, False  # its payload died with its socket
        self._to_everyone_there(p.Reconnecting(party.peer))

    def _rejoined(self, party: Party | None, _: object, now: float) -> None:
        """A parked seat was proved again (``Rooms.resume``): everyone hears ``resumed``; with nobody away any
        more the room goes back to where it was, and the sender opens the next epoch."""
        assert party is not None
        away = tuple(other.peer for other in self.parties if other.parked)
        self._to_everyone_there(p.Resumed(party.peer, away))
        if not away:
            self.state = self.parked_from
            self.last_activity = now

    def _parked_deadline(self, _: Party | None, __: object, now: float) -> None:
        """The resume window's end. With the sender there and at least one receiver still in the transfer
        (connected, or verified and done), the receivers still away are dropped: their seats close for good,
        everyone there hears ``dropped``, and the room goes back to where it parked from (``complete`` at once if
        every receiver left in it already verified). Otherwise (the sender away, or every receiver) it ends."""
        if now - self.parked_at < self.settings.resume_window:
            return
        away = [q for q in self.parties if q.parked]
        there = [r for r in self.receivers if not r.closed or r.verified]
        if self.sender is None or self.sender.parked or not there:
            named = ", ".join("the sender" if q.role is Role.SEND else f"receiver {q.peer}" for q in away)
            self._end_with_error(ErrorCode.PEER_LEFT, f"{named} disconnected and did not come back within the resume "
                                 f"window ({self.settings.resume_window:g} s); nothing was kept under a final name")
            return
        for seat in away:
            seat.parked, seat.dropped = False, True  # closed and gone already, since it parked
        self.dropped_at = now
        self._to_everyone_there(p.Dropped(tuple(seat.peer for seat in away)))
        self.state = self.parked_from
        self.last_activity = now
        if all(r.verified for r in there):
            self._complete(None, None, now)  # their `verified` reached the sender as each came

    def _resync(self, party: Party | None, message: object, _: float) -> None:
        """A pair's fresh halves of its new control keys' salt: the sender's to receiver ``to``, a receiver's to
        the sender with ``peer`` (dropped, like any message, for a party that is away)."""
        assert party is not None and self.sender is not None and isinstance(message, p.Resync)
        if party.role is Role.SEND:
            self._send(self._addressed(message), p.Resync(message.half))
        else:
            self._send(self.sender, p.Resync(message.half, peer=party.peer))

    def _drop(self, _: Party | None, __: object, ___: float) -> None:
        """A message that means nothing while the room is parked (progress of an abandoned epoch)."""


# --- the per-chunk fast path: the chunk header, the one control message that comes with every chunk ---------
#
# A chunk header as every sender writes it (``SealedChunk.to_json``: these keys in this order, no spaces) is read
# with one regular expression instead of the JSON decoder, and the header forwarded to receivers is formatted
# directly; both give exactly what ``parse_message`` / ``to_json`` give (tests/test_chunk_fast_path.py), and
# ``SealedChunk.from_dict`` still checks every field. Anything else takes the general path.
_CHUNK_HEADER = re.compile(r'\{"type":"chunk","epoch":(0|[1-9][0-9]{0,15}),"size":(0|[1-9][0-9]{0,15}),'
                           r'"xxh3_64":"([0-9a-f]{16})"\}')


def parse_frame(text: str) -> p.Message:
    """``p.parse_message(text, 2)``, with a shortcut for a chunk header in its canonical form."""
    match = _CHUNK_HEADER.fullmatch(text)
    if match is not None:
        return p.SealedChunk.from_dict({"epoch": int(match[1]), "size": int(match[2]), "xxh3_64": match[3]})
    return p.parse_message(text, p.PROTOCOL_V2)


def chunk_json(header: p.SealedChunk) -> str:
    """``header.to_json()``, formatted directly (a chunk header is forwarded once per chunk per receiver)."""
    return f'{{"type":"chunk","epoch":{header.epoch},"size":{header.size},"xxh3_64":"{header.xxh3_64}"}}'


WRONG_CODE_MESSAGE = "the code was wrong; nothing was sent; start again with a new code"

_KEYING_SENDER = tuple(
    Transition(state, SENDER, trigger, targets, Room._keying_from_sender)
    for state, targets in ((State.WAITING, (State.WAITING,)), (State.KEYING, (State.KEYING, State.PAIRED)))
    for trigger in ("pake", "confirm", "key")
)
_KEYING_RECEIVER = tuple(
    Transition(state, RECEIVER, trigger, (state,), Room._keying_from_receiver)
    for state in (State.WAITING, State.KEYING) for trigger in ("pake", "confirm")
)
_WRONG_CODE = tuple(
    Transition(state, source, "wrong_code", (State.ENDED,), Room._wrong_code)
    for state in (State.WAITING, State.KEYING) for source in (SENDER, RECEIVER)
)
_SEALED = tuple(
    Transition(state, source, "sealed", (state,), Room._sealed)
    for state in (State.PAIRED, State.OFFERED, State.STREAMING, State.DONE) for source in (SENDER, RECEIVER)
)
_RESUME_ID = tuple(
    Transition(state, source, "resume_id", (state,), Room._resume_id)
    for state in (State.WAITING, State.KEYING, State.PAIRED, State.OFFERED, State.STREAMING, State.DONE)
    for source in (SENDER, RECEIVER)
)
_RESYNC = tuple(
    Transition(state, source, "resync", (state,), Room._resync)
    for state in (State.STREAMING, State.DONE, State.PARKED) for source in (SENDER, RECEIVER)
)
_VERIFIED_LEFT = tuple(
    Transition(state, RECEIVER, "gone_verified", (state,), Room._verified_left)
    for state in (State.STREAMING, State.DONE, State.PARKED)
)
_PARKING = tuple(
    Transition(state, source, "gone", (State.PARKED, State.ENDED), Room._park)
    for state in (State.STREAMING, State.DONE, State.PARKED) for source in (SENDER, RECEIVER)
)
# The life of a room (docs/rooms.md shows this table; tests/test_rooms.py checks that the two agree): keying
# first, then a sealed offer per receiver and one ciphertext epoch. A state of None means every live state. A
# frame from a party that no row names is `unexpected_message`.
TRANSITIONS_V2: tuple[Transition, ...] = (
    Transition(State.WAITING, SENDER, "joined", (State.WAITING,), Room._greet),
    Transition(State.WAITING, RECEIVER, "joined", (State.WAITING, State.KEYING), Room._greet),
    Transition(State.WAITING, RELAY, "timer", (State.WAITING, State.ENDED), Room._pairing_deadline),
    *_KEYING_SENDER,
    *_KEYING_RECEIVER,
    *_WRONG_CODE,
    Transition(State.KEYING, RELAY, "timer", (State.KEYING, State.ENDED), Room._pairing_deadline),
    Transition(State.PAIRED, SENDER, "offer", (State.OFFERED,), Room._sealed_offer),
    Transition(State.PAIRED, RELAY, "timer", (State.PAIRED, State.ENDED), Room._idle_deadline),
    Transition(State.OFFERED, SENDER, "offer", (State.OFFERED,), Room._sealed_offer),
    Transition(State.OFFERED, RECEIVER, "accept", (State.OFFERED, State.STREAMING), Room._sealed_accept),
    Transition(State.OFFERED, RECEIVER, "decline", (State.ENDED,), Room._sealed_decline),
    Transition(State.OFFERED, RELAY, "timer", (State.OFFERED, State.ENDED), Room._offer_deadline),
    Transition(State.STREAMING, SENDER, "stream", (State.STREAMING,), Room._stream),
    Transition(State.STREAMING, SENDER, "chunk", (State.STREAMING,), Room._sealed_chunk),
    Transition(State.STREAMING, SENDER, "binary", (State.STREAMING,), Room._ciphertext),
    Transition(State.STREAMING, SENDER, "end", (State.DONE,), Room._end_epoch),
    Transition(State.STREAMING, RECEIVER, "ack", (State.STREAMING,), Room._chunk_ack),
    Transition(State.STREAMING, RELAY, "timer", (State.STREAMING, State.ENDED), Room._idle_deadline),
    *_SEALED,
    Transition(State.DONE, RECEIVER, "ack", (State.DONE,), Room._chunk_ack),
    Transition(State.DONE, RECEIVER, "verified", (State.DONE,), Room._verified),
    Transition(State.DONE, RELAY, "all_verified", (State.ENDED,), Room._complete),
    Transition(State.DONE, RELAY, "timer", (State.DONE, State.ENDED), Room._idle_deadline),
    *_RESUME_ID,
    *_PARKING,
    *_VERIFIED_LEFT,
    *_RESYNC,
    Transition(State.DONE, SENDER, "stream", (State.STREAMING,), Room._stream),
    Transition(State.PARKED, SENDER, "chunk", (State.PARKED,), Room._sealed_chunk),
    Transition(State.PARKED, SENDER, "binary", (State.PARKED,), Room._ciphertext),
    Transition(State.PARKED, SENDER, "end", (State.PARKED,), Room._end_epoch),
    Transition(State.PARKED, RECEIVER, "ack", (State.PARKED,), Room._drop),
    Transition(State.PARKED, SENDER, "sealed", (State.PARKED,), Room._sealed),
    Transition(State.PARKED, RECEIVER, "sealed", (State.PARKED,), Room._sealed),
    Transition(State.PARKED, RECEIVER, "verified", (State.PARKED,), Room._verified),
    Transition(State.PARKED, RELAY, "all_verified", (State.ENDED,), Room._complete),
    Transition(State.PARKED, SENDER, "rejoined", (State.PARKED, State.STREAMING, State.DONE), Room._rejoined),
    Transition(State.PARKED, RECEIVER, "rejoined", (State.PARKED, State.STREAMING, State.DONE), Room._rejoined),
    Transition(State.PARKED, RELAY, "timer", (State.PARKED, State.STREAMING, State.DONE, State.ENDED),
               Room._parked_deadline),
    Transition(None, SENDER, "cancel", (State.ENDED,), Room._sealed_cancel),
    Transition(None, RECEIVER, "cancel", (State.ENDED,), Room._sealed_cancel),
    Transition(None, SENDER, "error", (State.ENDED,), Room._reported_error),
    Transition(None, RECEIVER, "error", (State.ENDED,), Room._reported_error),
    Transition(None, SENDER, "gone", (State.ENDED,), Room._gone),
    Transition(None, RECEIVER, "gone", (State.ENDED,), Room._gone),
    Transition(None, SENDER, "left", (State.ENDED,), Room._gone),
    Transition(None, RECEIVER, "left", (State.ENDED,), Room._gone),
    Transition(None, RELAY, "crash", (State.ENDED,), Room._crash),
    Transition(None, RELAY, "shutdown", (State.ENDED,), Room._shutdown),
)
TABLE_V2: dict[tuple[State | None, str, str], Transition] = {
    (t.state, t.source, t.trigger): t for t in TRANSITIONS_V2
}
assert len(TABLE_V2) == len(TRANSITIONS_V2), "two rows of the v2 transition table share a (state, source, trigger)"


_SPOKEN_VERSIONS = (f"this relay speaks protocol version {', '.join(map(str, p.VERSIONS))} only; "
                    "update the client (version 1 is no longer served)")


# --- admission ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What a connecting party asked for, as parsed from the URL."""

    code: str
    role: str | None
    receivers: str | None = None
    version: str | None = None
    resume: str | None = None  # "1": a party taking back its parked seat; its first message is `resume`


class Rooms:
    """The registry of live rooms: admission decisions, no socket I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_code: dict[str, Room] = {}
        # Rooms gone since they dropped seats: nameplate -> (until when, the dropped receivers). A dropped
        # receiver that tries again after its room ended is told ``dropped``, not handed a recreated room.
        self.dropped: dict[str, tuple[float, frozenset[int]]] = {}

    def __len__(self) -> int:
        return len(self.by_code)

    def admit(self, request: JoinRequest, now: float) -> tuple[Room, Party]:
        """Decide whether a party may join; on success it is registered. Raises ``JoinRefused``.

        Every party says ``v=2``: a missing ``v`` or any other version (the retired version 1 included) is
        ``unsupported_version``, so an old client is told plainly instead of failing on a message it cannot
        parse. A sender names no room (the relay allocates a nameplate and says it in ``hello``), a receiver
        names the nameplate. The caller then feeds ``Joined(party.peer)`` to the room.
        """
        if request.version in (None, ""):
            raise JoinRefused(ErrorCode.UNSUPPORTED_VERSION, _SPOKEN_VERSIONS)
        version = parse_ascii_int(request.version, MAX_QUERY_DIGITS)
        if version is None:
            raise JoinRefused(ErrorCode.BAD_REQUEST, "'v' must be a whole number written in ASCII digits")
        if version not in p.VERSIONS:
            raise JoinRefused(ErrorCode.UNSUPPORTED_VERSION, _SPOKEN_VERSIONS)
        if request.role == Role.SEND and request.code:
            raise JoinRefused(ErrorCode.BAD_REQUEST, "the relay chooses the nameplate: a sender connects to /ws "
                              "without one")
        if request.role == Role.RECEIVE and not p.is_nameplate(request.code):
            raise JoinRefused(ErrorCode.BAD_REQUEST, "a nameplate is 1 to 8 digits")
        if request.role == Role.SEND:
            return self._admit_sender(request, now)
        if request.role == Role.RECEIVE:
            if request.receivers not in (None, ""):
                raise JoinRefused(ErrorCode.BAD_REQUEST, "only a sender may set 'receivers'")
            return self._admit_receiver(request)
        raise JoinRefused(ErrorCode.BAD_REQUEST, "query parameter 'role' must be 'send' or 'receive'")

    def _admit_sender(self, request: JoinRequest, now: float) -> tuple[Room, Party]:
        expected = parse_receivers(request.receivers, self.settings.max_receivers)
        if len(self.by_code) >= self.settings.max_rooms:
            raise JoinRefused(ErrorCode.TOO_MANY_ROOMS, "the relay has too many open rooms; try again later")
        code = self.allocate_nameplate()
        room = Room(code, expected, self.settings, now)
        room.seat(Party(0, Role.SEND))
        self.by_code[code] = room
        assert room.sender is not None
        return room, room.sender

    def allocate_nameplate(self, choose: Callable[[int], int] = secrets.randbelow) -> str:
        """A free nameplate, drawn at random among the free ones of the shortest length that has at least half
        of its values free (1-9, then 10-99, ...): short to type, and not the lowest free one, so that a stranger
        trying "1", "2", ... does not reliably land in live rooms (each such try burns that room's code)."""
        for digits in range(1, 9):
            low, high = (1 if digits == 1 else 10 ** (digits - 1)), 10**digits
            size = high - low
            used = sum(1 for code in self.by_code if len(code) == digits and code.isdigit() and code[0] != "0")
            if size - used < size / 2:
                continue
            for _ in range(64):  # at least half are free: 64 draws all miss with probability 2^-64
                candidate = str(low + choose(size))
                if candidate not in self.by_code:
                    return candidate
            free = [str(n) for n in range(low, high) if str(n) not in self.by_code]  # pragma: no cover
            return free[choose(len(free))]  # pragma: no cover
        raise JoinRefused(ErrorCode.TOO_MANY_ROOMS, "the relay has no free nameplate; try again later")

    def _admit_receiver(self, request: JoinRequest) -> tuple[Room, Party]:
        room = self.by_code.get(request.code)
        if room is None or room.state is State.ENDED:
            raise JoinRefused(ErrorCode.ROOM_NOT_FOUND, "no sender is waiting with this code")
        if len(room.receivers) >= room.expected or room.state is not State.WAITING:
            raise JoinRefused(ErrorCode.ROOM_FULL, "this room already has all its receivers")
        party = Party(room._next_peer, Role.RECEIVE)
        room._next_peer += 1
        room.seat(party)
        return room, party

    def resume(self, code: str, role: str | None, message: p.Resume, now: float = 0.0) -> tuple[Room, Party]:
        """Decide whether a ``resume=1`` socket may take back parked seat ``message.peer`` of room ``code``.

        The token's SHA-256 must equal the seat's verifier (compared in constant time; the sender proves every
        pair); the next verifier then replaces it, so each token is good once. Raises ``JoinRefused``:
        ``room_not_found`` (no such room, and the message gives no shape to recreate it from),
        ``resume_refused`` (no such parked seat, a wrong token, a shape that differs from the recreated room's),
        ``too_many_rooms``. The seat's next connection number is the party's ``connection`` from now on; the
        caller then feeds ``Rejoined(party.peer, party.connection)`` and reads the new socket as that connection.

        A relay restarted since keeps no rooms: a ``resume`` that carries the room's shape recreates the room,
        parked, with every other seat away and its verifier unknown (docs/protocol.md section 10.2).
        """
        room = self.by_code.get(code)
        wanted = Role.SEND if message.peer == 0 else Role.RECEIVE
        if role != wanted:
            raise JoinRefused(ErrorCode.RESUME_REFUSED, "that seat is not waiting to be resumed")
        if room is None or room.state is State.ENDED:
            self._forget_dropped(now)
            until, seats = self.dropped.get(code, (0.0, frozenset()))
            if message.peer in seats:
                raise JoinRefused(ErrorCode.DROPPED, dropped_message(message.peer, self.settings.resume_window))
            if message.room is None:
                raise JoinRefused(ErrorCode.ROOM_NOT_FOUND, "no transfer is waiting to be resumed with this code")
            room = self._recreate(code, message.room, now)
        elif room.recreated is not None and message.room != room.recreated:
            raise JoinRefused(ErrorCode.RESUME_REFUSED, "this room was recreated with another shape")
        party = room.party(message.peer)
        if party is not None and party.dropped:
            raise JoinRefused(ErrorCode.DROPPED, dropped_message(party.peer, self.settings.resume_window))
        if party is None or room.state is not State.PARKED or not party.parked:
            raise JoinRefused(ErrorCode.RESUME_REFUSED, "that seat is not waiting to be resumed")
        # In a recreated room, the receivers the sender says the relay had dropped before it restarted (still away)
        # are out of the transfer: closed once this claim is proved, and no proof is asked for their pairs.
        dropped_before = ([r for r in room.receivers if r.peer in message.dropped and r.parked]
                          if room.recreated is not None else [])
        if party.role is Role.RECEIVE:
            pairs = [(party, party.verifier, message.tokens[0][1])]
        else:
            # Every pair the transfer is still for; a token for a dropped receiver (a sender that has not heard
            # of the drop yet) is not checked: that pair is over.
            given = dict(message.tokens)
            staying = [r for r in room.staying if r not in dropped_before]
            if not {r.peer for r in staying} <= set(given) <= {r.peer for r in room.receivers}:
                raise JoinRefused(ErrorCode.RESUME_REFUSED, "the sender must prove its seat with every receiver")
            pairs = [(r, r.sender_verifier, given[r.peer]) for r in staying]
        # In a recreated room a seat's first claim records it (the verifier was lost with the old process); the
        # end-to-end resync then refuses anyone who does not hold the pair key.
        proved = [(verifier is None and room.recreated is not None) or (verifier is not None and hmac.compare_digest(
            hashlib.sha256(bytes.fromhex(seat.token)).hexdigest(), verifier)) for _, verifier, seat in pairs]
        if not all(proved):
            raise JoinRefused(ErrorCode.RESUME_REFUSED, "the resume token does not match this seat")
        for receiver, _, seat in pairs:
            if party.role is Role.RECEIVE:
                receiver.verifier = seat.next_verifier
            else:
                receiver.sender_verifier = seat.next_verifier
        if room.recreated is not None:
            # What the sender says of the seats still away (docs/protocol.md section 10.2), taken only from a
            # proved claim. Those it heard verified hold every file and will not come back: done, not waited for
            # (the old room would have closed them: ``gone_verified``). Those the relay had dropped close for good
            # (a resume of theirs is refused with ``dropped``, as before the restart).
            for receiver in room.receivers:
                if receiver.parked and receiver.peer in message.verified:
                    receiver.verified, receiver.parked = True, False
            for receiver in dropped_before:
                receiver.parked, receiver.dropped = False, True
                room.dropped_at = now
        party.parked = party.gone = party.closed = False
        party.connection += 1  # whatever the old socket still says or does from now on is moot
        return room, party

    def _recreate(self, code: str, shape: p.RoomShape, now: float) -> Room:
        """A room this process never had (the relay restarted): every seat parked, verifiers unknown, the stream
        check from the offer's clear totals, the resume window counted from now."""
        if shape.receivers > self.settings.max_receivers:
            raise JoinRefused(ErrorCode.RESUME_REFUSED, f"this relay allows at most {self.settings.max_receivers} "
                              "receivers per room")
        if shape.total_size > self.settings.max_transfer_bytes:
            raise JoinRefused(ErrorCode.TRANSFER_TOO_LARGE, f"the transfer is {shape.total_size} bytes; this relay "
                              f"allows {self.settings.max_transfer_bytes}")
        if len(self.by_code) >= self.settings.max_rooms:
            raise JoinRefused(ErrorCode.TOO_MANY_ROOMS, "the relay has too many open rooms; try again later")
        room = Room(code, shape.receivers, self.settings, now)
        room.recreated = shape
        room.offer_totals = (shape.total_size, shape.files)
        room.check = p.StreamCheck(shape.total_size, shape.files, self.settings.max_message)
        for peer in range(shape.receivers + 1):
            party = Party(peer, Role.SEND if peer == 0 else Role.RECEIVE, accepted=peer > 0, keyed=peer > 0,
                          offered=peer > 0, closed=True, gone=True, parked=True)
            room.seat(party)
        room._next_peer = shape.receivers + 1
        room.state, room.parked_from, room.parked_at = State.PARKED, State.STREAMING, now
        room.check.resumes = 1
        self.by_code[code] = room
        return room

    def remove(self, room: Room) -> None:
        if self.by_code.get(room.code) is room:
            del self.by_code[room.code]
        seats = frozenset(r.peer for r in room.receivers if r.dropped)
        if seats and room.dropped_at is not None:
            # Kept for the resume window from the room's last frame (or the drop): long enough for a dropped
            # client still trying within its own window, which began when it dropped, before the relay dropped it.
            self.dropped.pop(room.code, None)
            self.dropped[room.code] = (max(room.dropped_at, room.last_activity) + self.settings.resume_window, seats)
            while len(self.dropped) > max(1, self.settings.max_rooms):
                del self.dropped[next(iter(self.dropped))]  # the oldest first: bounded whatever happens

    def _forget_dropped(self, now: float) -> None:
        for code in [code for code, (until, _) in self.dropped.items() if until <= now]:
            del self.dropped[code]


def dropped_message(peer: int, window: float) -> str:
    """Why a dropped receiver's resume is refused (``dropped``, docs/protocol.md section 10)."""
    return (f"receiver {peer} did not come back within the resume window ({window:g} s) and was dropped; the others "
            "went on without it")


def parse_receivers(raw: str | None, maximum: int) -> int:
    """The ``receivers`` query value: ASCII digits only (not ``²`` or ``٣``), 1 to ``maximum``."""
    if raw in (None, ""):
        return 1
    value = parse_ascii_int(raw, MAX_QUERY_DIGITS)
    if value is None or not 1 <= value <= maximum:
        raise JoinRefused(ErrorCode.BAD_REQUEST, f"'receivers' must be a whole number from 1 to {maximum}")
    return value
