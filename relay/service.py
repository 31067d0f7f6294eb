"""The relay service: runs one party's connection from admission to the end of its room.

The FastAPI route only parses the URL and headers and hands the socket here; ``Relay.serve`` checks the
client's limits and access, admits the party, and loops over its frames. Decide, then act: ``Relay.check``
and ``Rooms.admit`` decide who may join, and ``Room.handle`` decides everything about a room, with no I/O;
this module is the thin shell that carries out the effects the room returns (writes, farewells, the end) and
feeds back what it learns doing so (a send that failed, a socket that closed, an exception that is a bug).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from relay import protocol as p
from relay.access import Client, origin_ok, parse_origins, token_ok
from relay.config import Settings
from relay.limits import ConnectionCounter, JoinLimiter
from relay.logs import event
from relay.metrics import Stats, outcome_label
from relay.protocol import ErrorCode
from relay.rooms import (
    FAREWELL_TIMEOUT, BinaryFrame, Close, Crashed, Effect, Ended, Event, FailedJoin, Feed, Gone, Joined, JoinRefused,
    JoinRequest, Party, PeerGone, PeerSocket, Rejoined, Role, Room, Rooms, SendBytes, SendText, ShuttingDown, State,
    TextFrame, TimerFired,
)

log = logging.getLogger("relay")

SWEEP_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0  # how often the join limiter forgets refilled buckets
DRAIN_POLL = 0.1

# Refusals that look like guessing a secret (a room code, the token, a resume token): they cost
# ``failed_join_cost``.
GUESS_CODES = frozenset({ErrorCode.ROOM_NOT_FOUND, ErrorCode.UNAUTHORIZED, ErrorCode.RESUME_REFUSED})
# How long a ``resume=1`` socket has to send its ``resume`` message.
RESUME_READ_TIMEOUT = 10.0
# Refusals logged at debug only: under a flood they would be one log line per attempt.
QUIET_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_CONNECTIONS})


@runtime_checkable
class Buffered(Protocol):
    """A ``PeerSocket`` that can hand over, without waiting, what its peer sent that was not read yet."""

    def received(self) -> list[str | bytes]: ...


@runtime_checkable
class SendsChunks(Protocol):
    """A ``PeerSocket`` that writes a chunk's header and payload together (one system call, not two)."""

    async def send_chunk(self, text: str, data: bytes) -> None: ...


@runtime_checkable
class Polls(Protocol):
    """A ``PeerSocket`` that can hand over its next message without waiting when that is a binary one already
    here (a chunk's payload behind its header), so that the room checks the two in one call."""

    def next_binary(self) -> bytes | None: ...


class WriteFlag(Protocol):
    """A receiver's ``writable`` flag as ``ForwardsChunks.write_chunk_now`` returns it."""

    def is_set(self) -> bool: ...


@runtime_checkable
class ForwardsChunks(Protocol):
    """A ``PeerSocket`` whose connection can forward a sender's chunks from its read callback, with no task
    wake-up per chunk (``relay.sockets.DirectPeerSocket``; see ``ChunkForwarder``)."""

    def forward_with(self, forwarder: ChunkForwarder | None) -> None: ...

    def block_on(self, flags: list[Any]) -> None: ...

    def can_write_now(self) -> bool: ...

    def chunk_frames(self, text: str, data: bytes) -> tuple[bytes, bytes, bytes]: ...

    def write_now(self, parts: list[bytes], payload_bytes: int) -> WriteFlag | None: ...


@dataclass(slots=True, eq=False)
class Seat:
    """The shell's side of one party's connection: its socket, the task reading it, and its farewell once the room
    ends. ``connection`` is the room's number for it (``Party.connection``); every event read from or about this
    socket carries it, so that once the party resumed on another socket the room ignores this one."""

    socket: PeerSocket
    task: asyncio.Task[None] | None = None
    client_key: str = ""  # the address key its failed joins are counted under
    connection: int = 0
    farewell: asyncio.Future[None] | None = None
    send_chunk: Callable[[str, bytes], Awaitable[None]] | None = field(init=False)
    next_binary: Callable[[], bytes | None] | None = field(init=False)
    direct: ForwardsChunks | None = field(init=False)

    def __post_init__(self) -> None:
        self.send_chunk = self.socket.send_chunk if isinstance(self.socket, SendsChunks) else None
        self.next_binary = self.socket.next_binary if isinstance(self.socket, Polls) else None
        self.direct = self.socket if isinstance(self.socket, ForwardsChunks) else None


class ChunkForwarder:
    """Forwards a streaming sender's chunks from inside its connection's read callback (``transport.Forwarder``).

    The steady state of a transfer is one chunk after another, each checked and written to every receiver. Doing
    that in the sender's task costs a task wake-up per chunk, and the held payload fills the sender's buffer, so
    reading is paused and resumed per chunk (two ``epoll_ctl`` each time). So when the sender's task is idle and
    every receiver's transport can take a write at once (``ready``), the connection hands each chunk's header and
    payload here as soon as both are in: ``Room.chunk`` decides (the same rules as ``Room.handle``, every chunk's
    xxh3_64 checked before any byte of it leaves), and its sends are queued. ``flush``, which the connection calls
    before its read callback returns, writes the queue: one write per receiver for every chunk of that read (one
    read brings up to ``framebuffer.BATCH`` bytes, several 64 KiB chunks). A receiver whose transport kept part
    of it blocks reading the sender until it drained. Anything else (an error that ends the room, a bug) is
    carried out by a task, as ``_run`` would, after the chunks queued before it were written.
    """

    __slots__ = ("relay", "room", "party", "seat", "_queued", "_payload_bytes")

    def __init__(self, relay: Relay, room: Room, party: Party, seat: Seat) -> None:
        self.relay = relay
        self.room = room
        self.party = party
        self.seat = seat
        self._queued: dict[int, tuple[int, list[bytes]]] = {}  # peer -> (its connection, frames to write)
        self._payload_bytes = 0  # chunk payload bytes queued for each receiver

    def ready(self) -> bool:
        room = self.room
        if room.state is not State.STREAMING or not room.attached(self.party.peer, self.seat.connection):
            return False
        seats = self.relay.seats.get(room)
        if seats is None:
            return False
        for receiver in room.receivers:
            if receiver.closed:
                continue
            seat = seats.get(receiver.peer)
            if (seat is None or seat.connection != receiver.connection or seat.farewell is not None
                    or seat.direct is None or not seat.direct.can_write_now()):
                return False  # the task's path (``_apply``) sorts out a seat that is replaced or going
        return True

    def chunk(self, text: str, data: bytes) -> bool:
        """Hand one chunk to the room and queue the sends it decided; False once the room decided anything else
        (its end: the queue is written first, then the end is carried out by a task)."""
        relay, room = self.relay, self.room
        try:
            effects = room.chunk(self.party.peer, self.seat.connection, text, data, _now())
            sends = _chunk_sends(effects)
            if sends is None:
                self.flush()  # the chunks before this one leave first
                relay._later(relay._run(room, effects), room)  # not only the chunk's sends: the room ended
                return False
            queued = self._queued
            framed: tuple[bytes, bytes, bytes] | None = None
            for peer, connection, head, payload in sends:
                if framed is None:  # the same header and payload for every receiver: framed once
                    direct = self.seat.direct  # the sender's own connection frames as the receivers' do
                    assert direct is not None, "only a direct socket forwards from its read callback"
                    framed = direct.chunk_frames(head, payload)
                entry = queued.get(peer)
                if entry is None:
                    queued[peer] = (connection, list(framed))
                else:
                    entry[1].extend(framed)
            if sends:
                self._payload_bytes += len(data)
        except Exception as exc:  # noqa: BLE001 - a bug ends this room, never the sender's read callback
            self.flush()
            relay._later(relay._crash(room, exc), room)
            return False
        return True

    def flush(self) -> None:
        """Write every queued chunk: one ``write_now`` per receiver; block the sender on any that kept part."""
        queued = self._queued
        if not queued:
            return
        self._queued = {}
        payload_bytes, self._payload_bytes = self._payload_bytes, 0
        relay, room = self.relay, self.room
        blocked: list[WriteFlag] = []
        try:
            seats = relay.seats.get(room) or {}
            for peer, (connection, parts) in queued.items():
                seat = seats[peer]
                assert seat.connection == connection, "ready() said every receiver's seat is the room's connection"
                direct = seat.direct
                assert direct is not None, "ready() said every receiver's socket is direct"
                flag = direct.write_now(parts, payload_bytes)
                if flag is not None:
                    blocked.append(flag)
        except Exception as exc:  # noqa: BLE001 - a bug ends this room, never the sender's read callback
            relay._later(relay._crash(room, exc), room)
            return
        if blocked and self.seat.direct is not None:
            self.seat.direct.block_on(blocked)


def _chunk_sends(effects: list[Effect]) -> list[tuple[int, int, str, bytes]] | None:
    """``(peer, connection, header, payload)`` for each receiver if ``effects`` are only a chunk's sends
    (``Room.chunk``'s ``SendText`` then ``SendBytes`` to each receiver), else None."""
    sends: list[tuple[int, int, str, bytes]] = []
    for index in range(0, len(effects), 2):
        head = effects[index]
        payload = effects[index + 1] if index + 1 < len(effects) else None
        if (type(head) is not SendText or type(payload) is not SendBytes or head.peer != payload.peer
                or head.connection != payload.connection):
            return None
        sends.append((head.peer, head.connection, head.text, payload.data))
    return sends


class Relay:
    """All live rooms of one relay process, the per-client limits, and the loop that serves each party."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms = Rooms(settings)
        self.stats = Stats()
        self.joins = JoinLimiter(settings.max_joins_per_minute, settings.failed_join_cost)
        self.connections = ConnectionCounter(settings.max_connections_per_ip)
        self.allowed_origins = parse_origins(settings.allowed_origins)
        self.draining = False
        self.seats: dict[Room, dict[int, Seat]] = {}
        self._background: set[asyncio.Future[None]] = set()  # farewells started by routes that were cancelled
        self._settling: dict[Room, asyncio.Future[None]] = {}  # a room's work started by a ChunkForwarder
        self._last_prune = 0.0

    # --- what /metrics reads (relay.metrics.Observed) ---------------------------------------------------

    def rooms_by_state(self) -> Counter[str]:
        return Counter(room.state.value for room in list(self.rooms.by_code.values()))

    def open_connections(self) -> tuple[int, int]:
        return self.connections.total, len(self.connections)

    def limiter_keys(self) -> int:
        return len(self.joins)

    # --- admission -------------------------------------------------------------------------------------

    def check(self, request: JoinRequest, client: Client, now: float) -> JoinRefused | None:
        """Decide whether this client may try to join at all (before the room itself is looked at)."""
        if self.draining:
            return JoinRefused(ErrorCode.GOING_AWAY, "the relay is shutting down; try again in a moment")
        if not self.joins.allow(client.key, now):
            return JoinRefused(ErrorCode.RATE_LIMITED, "too many join attempts from your address; wait a minute")
        if not origin_ok(client.origin, client.host, self.allowed_origins):
            return JoinRefused(ErrorCode.FORBIDDEN_ORIGIN, "this relay does not accept pages from that origin")
        if not token_ok(self.settings.token, client.token):
            return JoinRefused(ErrorCode.UNAUTHORIZED, "this relay is private: a valid token is required")
        return None

    async def serve(self, socket: PeerSocket, request: JoinRequest, client: Client | None = None) -> None:
        """Serve one accepted WebSocket until its room ends or it leaves."""
        client = client or Client()
        if not self.connections.acquire(client.key):
            await self._refuse(socket, client, JoinRefused(
                ErrorCode.TOO_MANY_CONNECTIONS, "too many connections from your address; close some first"))
            return
        try:
            await self._serve(socket, request, client)
        finally:
            self.connections.release(client.key)

    async def _serve(self, socket: PeerSocket, request: JoinRequest, client: Client) -> None:
        now = _now()
        resuming = request.resume not in (None, "")
        refused = self.check(request, client, now)
        if refused is None:
            try:
                if resuming:
                    room, party = await self._resume_seat(socket, request)
                else:
                    room, party = self.rooms.admit(request, now)
            except JoinRefused as exc:
                refused = exc
            except PeerGone:
                return  # it left before saying which seat it wanted back
        if refused is not None:
            if refused.code in GUESS_CODES:
                self.joins.failed(client.key, _now())
            await self._refuse(socket, client, refused)
            return
        seat = Seat(socket, asyncio.current_task(), client.key, party.connection)
        self.seats.setdefault(room, {})[party.peer] = seat  # a resumed seat replaces its dropped socket's
        self.stats.joins[party.role.value] += 1
        if resuming and room.recreated is not None and len([q for q in room.parties if q.parked]) == room.expected:
            event("room_recreated", room=room.tag, peer=party.peer, receivers=room.expected)
        elif resuming:
            event("peer_resumed", room=room.tag, peer=party.peer)
        elif party.role is Role.SEND:
            event("room_opened", room=room.tag, receivers=room.expected)
        else:
            event("peer_joined", room=room.tag, peer=party.peer, joined=len(room.receivers), receivers=room.expected)
        if party.role is Role.SEND and seat.direct is not None:
            seat.direct.forward_with(ChunkForwarder(self, room, party, seat))
        try:
            await self._feed(room, Rejoined(party.peer, seat.connection) if resuming else Joined(party.peer))
            await self._read_frames(room, party, seat)
            await self._settled(room)
            if seat.farewell is not None:
                # Returning closes the socket at once: first let the room's last message to it go out.
                await seat.farewell
        except asyncio.CancelledError:
            if room.attached(party.peer, seat.connection):
                raise
            # The room cancelled this loop because the peer stopped reading; the route returns normally.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            if seat.direct is not None:
                seat.direct.forward_with(None)
            if room.attached(party.peer, seat.connection):
                self._left_unexpectedly(room, party.peer, seat)  # the room's end then finishes it
            elif room.state is State.ENDED:
                self.finish(room)

    async def _resume_seat(self, socket: PeerSocket, request: JoinRequest) -> tuple[Room, Party]:
        """A ``resume=1`` socket: read its ``resume`` message (bounded in time) and let ``Rooms.resume`` decide.

        Raises ``JoinRefused`` (a bad request, a first message that is not ``resume``, no parked seat, a wrong
        token) or ``PeerGone``.
        """
        if request.resume != "1" or request.version != str(p.PROTOCOL_V2) or not p.is_nameplate(request.code):
            raise JoinRefused(ErrorCode.BAD_REQUEST, "resume=1 needs v=2 and the nameplate in the URL")
        try:
            frame = await asyncio.wait_for(socket.receive(), RESUME_READ_TIMEOUT)
        except TimeoutError:
            raise JoinRefused(ErrorCode.RESUME_REFUSED, "no resume message in time") from None
        if not isinstance(frame, str):
            raise JoinRefused(ErrorCode.MALFORMED_MESSAGE, "the first message of a resume must be text")
        try:
            message = p.parse_message(frame, p.PROTOCOL_V2)
        except p.ProtocolError as exc:
            raise JoinRefused(exc.code, exc.message) from None
        if not isinstance(message, p.Resume):
            raise JoinRefused(ErrorCode.UNEXPECTED_MESSAGE, "the first message on a resume=1 socket is 'resume'")
        return self.rooms.resume(request.code, request.role, message, _now())

    def _left_unexpectedly(self, room: Room, peer: int, seat: Seat) -> None:
        """This connection's route is ending while its room still counts on it (the route was cancelled from
        outside, e.g. by the server): the room hears ``gone`` now, and the others are told in the background."""
        try:
            work = self._run(room, room.handle(Gone(peer, seat.connection), _now()))
        except Exception:
            log.exception("room %s: could not end it for a cancelled route", room.tag)
            work = self._abandon(room)
        self._later(work)

    def _later(self, work: Awaitable[None], room: Room | None = None) -> None:
        """Run ``work`` in a task of its own, kept until it is done (outside any route's task). With ``room``, it
        is the room's: each of its routes waits for it before returning (``_settled``), as they would have waited
        for the same work done in one of them."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if room is not None:
            self._settling[room] = task
            task.add_done_callback(lambda done: self._settling.pop(room, None) if self._settling.get(room) is done
                                   else None)

    async def _settled(self, room: Room) -> None:
        """Wait for the room's work started outside its routes (``ChunkForwarder``: the end the room decided on
        a chunk), so that no route returns, closing its socket, before the room's farewell to it is decided."""
        while (task := self._settling.get(room)) is not None:
            await asyncio.shield(task)  # a route cancelled meanwhile must not cancel the room's farewells

    async def _refuse(self, socket: PeerSocket, client: Client, refused: JoinRefused) -> None:
        self.stats.join_failures[refused.code.value] += 1
        level = logging.DEBUG if refused.code in QUIET_CODES else logging.INFO
        event("join_refused", level, code=refused.code.value, client=client.key)
        await refuse(socket, refused.code, str(refused))

    async def _read_frames(self, room: Room, party: Party, seat: Seat) -> None:
        """Feed this connection's frames to its room until the room is over for it, or the party took its seat
        back on another connection; any exception here is a bug."""
        peer, connection = party.peer, seat.connection
        try:
            while room.attached(peer, connection):
                try:
                    frame = await seat.socket.receive()
                except PeerGone as gone:
                    await self._feed(room, Gone(peer, connection, gone.left))
                    return
                if not room.attached(peer, connection):  # the room ended, or the seat moved, meanwhile
                    return
                if isinstance(frame, str):
                    # A chunk's header with its payload already behind it (the usual case while streaming):
                    # the room takes both in one call.
                    data = seat.next_binary() if seat.next_binary is not None else None
                    if data is None:
                        await self._feed(room, TextFrame(peer, frame, connection))
                    else:
                        await self._feed_chunk(room, peer, connection, frame, data)
                        data = None  # not alive while the next chunk is unmasked
                else:
                    await self._feed(room, BinaryFrame(peer, frame, connection))
        except Exception as exc:  # noqa: BLE001 - every bug ends this room, not the relay
            await self._crash(room, exc)

    # --- carrying out a room's decisions ---------------------------------------------------------------

    async def _feed(self, room: Room, room_event: Event) -> None:
        """Hand one event to the room and carry out what it decides; a bug on the way ends the room."""
        try:
            effects = room.handle(room_event, _now())
        except Exception as exc:  # noqa: BLE001
            await self._crash(room, exc)
            return
        if effects:  # most frames (a chunk's header) need nothing done
            await self._run(room, effects)

    async def _feed_chunk(self, room: Room, peer: int, connection: int, text: str, data: bytes) -> None:
        """``_feed`` for a text frame and the binary frame right behind it (``Room.chunk``)."""
        try:
            effects = room.chunk(peer, connection, text, data, _now())
        except Exception as exc:  # noqa: BLE001
            await self._crash(room, exc)
            return
        if effects:
            await self._run(room, effects)

    async def _run(self, room: Room, effects: list[Effect]) -> None:
        try:
            await self._apply(room, effects)
        except Exception as exc:  # noqa: BLE001
            await self._crash(room, exc)

    async def _apply(self, room: Room, effects: list[Effect]) -> None:
        """Carry out effects in order. A send that fails is fed back as ``Gone`` (after what that peer had already
        sent, ``_gone``) and the room's answer to it runs next; farewells run concurrently and are awaited at the
        end, each bounded by its timeout."""
        seats = self.seats.get(room) or {}
        farewells: list[asyncio.Future[None]] = []
        index = 0
        while index < len(effects):
            effect = effects[index]
            index += 1
            kind = type(effect)
            if kind is SendText or kind is SendBytes:
                assert isinstance(effect, SendText | SendBytes)
                seat = seats.get(effect.peer)
                if (seat is None or seat.connection != effect.connection or seat.farewell is not None
                        or not room.reachable(effect.peer, effect.connection)):
                    continue  # gone, replaced or already saying goodbye: what an earlier decision queued is moot
                try:
                    if isinstance(effect, SendBytes):
                        await seat.socket.send_bytes(effect.data)
                    elif (seat.send_chunk is not None and index < len(effects)
                          and type(payload := effects[index]) is SendBytes and payload.peer == effect.peer
                          and payload.connection == effect.connection):
                        index += 1  # a chunk's header and its payload to the same party: written together
                        await seat.send_chunk(effect.text, payload.data)
                    else:
                        await seat.socket.send_text(effect.text)
                except PeerGone:
                    effects[index:index] = self._gone(room, effect.peer, seat)
            elif isinstance(effect, Close):
                seat = seats.get(effect.peer)
                if seat is not None and seat.farewell is None:
                    seat.farewell = asyncio.ensure_future(_farewell(seat, effect.last, effect.code))
                    farewells.append(seat.farewell)
            elif isinstance(effect, FailedJoin):
                seat = seats.get(effect.peer)
                if seat is not None:
                    self.joins.failed(seat.client_key, _now())
            elif isinstance(effect, Feed):
                effects[index:index] = room.handle(effect.event, _now())
            elif isinstance(effect, Ended):
                self.finish(room)
        if farewells:
            await asyncio.gather(*farewells)

    def _gone(self, room: Room, peer: int, seat: Seat) -> list[Effect]:
        """A send to ``peer``'s connection failed: its socket is gone. What it sent before it went and the relay
        has not read yet (e.g. a page's ``error`` just before it closed) is read first, so that the room ends for
        the reason the peer gave and not with ``peer_left``; then the room hears ``Gone``. The peer's own reading
        loop then finds nothing left and feeds ``Gone`` again, which the room ignores. All of it names the
        connection: if the party has resumed on another one meanwhile, the room ignores all of it."""
        effects: list[Effect] = []
        connection = seat.connection
        if isinstance(seat.socket, Buffered):
            for frame in seat.socket.received():
                if room.state is State.ENDED:
                    break
                event = (TextFrame(peer, frame, connection) if isinstance(frame, str)
                         else BinaryFrame(peer, frame, connection))
                effects += room.handle(event, _now())
        return effects + room.handle(Gone(peer, connection), _now())

    async def _crash(self, room: Room, exc: BaseException) -> None:
        """A bug while serving this room: end it with ``internal_error``; if even that fails, close every socket."""
        log.error("room %s: internal error", room.tag, exc_info=exc)
        try:
            already_ended = room.state is State.ENDED
            await self._apply(room, room.handle(Crashed(type(exc).__name__), _now()))
            if already_ended:
                await self._abandon(room)  # the bug came while ending: make sure every socket gets closed
        except Exception:
            log.exception("room %s: ending it failed; closing every socket", room.tag)
            await self._abandon(room)

    async def _abandon(self, room: Room) -> None:
        """Close every socket of the room that has no farewell yet (1011), and forget the room."""
        room.abandon()
        farewells = []
        for seat in self.seats.get(room, {}).values():
            if seat.farewell is None:
                seat.farewell = asyncio.ensure_future(_farewell(seat, None, ErrorCode.INTERNAL_ERROR.close_code))
                farewells.append(seat.farewell)
        self.finish(room)
        await asyncio.gather(*farewells)

    def finish(self, room: Room) -> None:
        """Remove an ended room; the first call for a room records its outcome (metrics and one log line)."""
        if self.rooms.by_code.get(room.code) is not room:
            return
        self.rooms.remove(room)
        self.seats.pop(room, None)
        self.stats.room_ended(room.outcome)
        event("room_ended", room=room.tag, outcome=outcome_label(room.outcome), code=room.outcome or "-",
              seconds=_now() - room.created_at, bytes=room.check.bytes_done if room.check else 0,
              receivers=len(room.receivers))

    # --- expiry ----------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Tell every room the time (deadlines end some); now and then forget idle limiter entries."""
        now = _now()
        jobs: list[Awaitable[None]] = []
        for room in list(self.rooms.by_code.values()):
            try:
                effects = room.handle(TimerFired(), now)
            except Exception as exc:  # noqa: BLE001
                jobs.append(self._crash(room, exc))
                continue
            if effects:
                jobs.append(self._run(room, effects))
        await asyncio.gather(*jobs)
        if now - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = now
            self.joins.prune(now)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        """Run the expiry sweeper for as long as the context is open."""
        sweeper = asyncio.create_task(self._sweep_forever())
        try:
            yield self
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception:  # the sweeper must outlive any one room's failure
                log.exception("room sweep failed")

    # --- shutdown --------------------------------------------------------------------------------------

    async def drain(self, grace: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Stop admitting, let transfers under way finish for up to ``grace`` seconds, end the rest (1001).

        Rooms still waiting for receivers end at once: nothing is under way in them, and their sender can
        retry against a relay that is staying up. ``give_up`` (a second Ctrl-C) cuts the wait short.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        waiting = [room for room in self.rooms.by_code.values() if room.state is State.WAITING]
        event("draining", rooms=len(self.rooms), waiting=len(waiting), grace=grace)
        await self._going_away(waiting)
        deadline = loop.time() + grace
        # Polled: the end of the wait is a deadline, a callback and "no live room", not one event.
        while self._live_rooms() and loop.time() < deadline and not give_up():  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL)
        left = self._live_rooms()
        if left:
            event("grace_expired", rooms=len(left))
        await self._going_away(left)

    def _live_rooms(self) -> list[Room]:
        return [room for room in self.rooms.by_code.values() if room.state is not State.ENDED]

    async def _going_away(self, rooms: list[Room]) -> None:
        await asyncio.gather(*(self._feed(room, ShuttingDown()) for room in rooms))
        for room in rooms:
            self.finish(room)


def _now() -> float:
    """The room clock: ``time.monotonic``, the clock asyncio's loops use. Not ``get_running_loop().time()``: on
    Python 3.11 finding the running loop costs a ``getpid`` system call (fork detection), twice per chunk."""
    return time.monotonic()


async def _farewell(seat: Seat, text: str | None, close_code: int) -> None:
    """Send a party its last message and close it, whatever happens: a failure to send the message (a peer
    gone, text that cannot be encoded) still closes; a peer that does not drain in time has its reading loop
    stopped, so its route returns and the transport drops the socket."""
    try:
        async with asyncio.timeout(FAREWELL_TIMEOUT):
            if text is not None:
                try:
                    await seat.socket.send_text(text)
                except PeerGone:
                    return
                except Exception:  # noqa: BLE001 - the close below must still happen
                    log.exception("a farewell message could not be sent; closing anyway")
            await seat.socket.close(close_code)
    except PeerGone:
        pass
    except Exception as exc:  # noqa: BLE001 - TimeoutError, or a close that failed: drop the socket instead
        if not isinstance(exc, TimeoutError):
            log.error("closing a socket failed; dropping it", exc_info=exc)
        if seat.task is not None and seat.task is not asyncio.current_task():
            seat.task.cancel()


async def refuse(socket: PeerSocket, code: ErrorCode, message: str) -> None:
    """Tell a party why it was not admitted, then close with the code's close code."""
    try:
        await socket.send_text(p.Error(code.value, message).to_json())
        await socket.close(code.close_code)
    except PeerGone:
        pass
