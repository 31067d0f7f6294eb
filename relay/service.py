"""The relay service: runs one party's connection from admission to the end of its room.

The FastAPI route only parses the URL and headers and hands the socket here; ``Relay.serve`` checks the
client's limits and access, admits the party, greets it, and loops over its frames, turning protocol errors
into a documented error and close for the whole room. Decide, then act: ``Relay.check`` decides who may
join with no I/O; ``serve`` then refuses or admits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from relay import protocol as p
from relay.access import Client, origin_ok, parse_origins, token_ok
from relay.config import Settings
from relay.limits import ConnectionCounter, JoinLimiter
from relay.logs import event
from relay.metrics import Stats, outcome_label
from relay.protocol import ErrorCode, ProtocolError
from relay.rooms import JoinRefused, JoinRequest, Party, PeerGone, PeerSocket, Role, Room, Rooms, State

log = logging.getLogger("relay")

SWEEP_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0  # how often the join limiter forgets refilled buckets
DRAIN_POLL = 0.1

# Refusals that look like guessing a secret (a room code or the token): they cost ``failed_join_cost``.
GUESS_CODES = frozenset({ErrorCode.ROOM_NOT_FOUND, ErrorCode.UNAUTHORIZED})
# Refusals logged at debug only: under a flood they would be one log line per attempt.
QUIET_CODES = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_CONNECTIONS})


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
        self._last_prune = 0.0

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
        loop = asyncio.get_running_loop()
        now = loop.time()
        refused = self.check(request, client, now)
        if refused is None:
            try:
                room, party = self.rooms.admit(request, socket, now)
            except JoinRefused as exc:
                refused = exc
        if refused is not None:
            if refused.code in GUESS_CODES:
                self.joins.failed(client.key, now)
            await self._refuse(socket, client, refused)
            return
        party.task = asyncio.current_task()
        self.stats.joins[party.role.value] += 1
        if party.role is Role.SEND:
            event("room_opened", room=room.tag, receivers=room.expected)
        else:
            event("peer_joined", room=room.tag, peer=party.peer, joined=len(room.receivers), receivers=room.expected)
        try:
            await room.greet(party)
            await self._read_frames(room, party, loop)
            if party.farewell is not None:
                # Returning closes the socket at once: first let the room's last message to it go out.
                await party.farewell
        except asyncio.CancelledError:
            if not party.closed:
                raise
            # The room cancelled this loop because the peer stopped reading; the route returns normally.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            if room.state is State.ENDED:
                self.finish(room)

    async def _refuse(self, socket: PeerSocket, client: Client, refused: JoinRefused) -> None:
        self.stats.join_failures[refused.code.value] += 1
        level = logging.DEBUG if refused.code in QUIET_CODES else logging.INFO
        event("join_refused", level, code=refused.code.value, client=client.key)
        await refuse(socket, refused.code, str(refused))

    async def _read_frames(self, room: Room, party: Party, loop: asyncio.AbstractEventLoop) -> None:
        socket = party.socket
        try:
            while room.state is not State.ENDED:
                frame = await socket.receive()
                room.last_activity = loop.time()
                if room.state is State.ENDED:
                    break
                if party.role is Role.SEND:
                    await room.from_sender(frame)
                else:
                    await room.from_receiver(party, frame)
        except PeerGone:
            await room.party_left(party)
        except ProtocolError as error:
            log.debug("room %s: peer %d broke the protocol: %s", room.tag, party.peer, error.code.value)
            await room.end(error.code, error.message, culprit=party.peer)
        except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
            log.exception("room %s: internal error", room.tag)
            await room.end(ErrorCode.INTERNAL_ERROR, f"internal relay error: {type(exc).__name__}")

    def finish(self, room: Room) -> None:
        """Remove an ended room; the first call for a room records its outcome (metrics and one log line)."""
        if self.rooms.by_code.get(room.code) is not room:
            return
        self.rooms.remove(room)
        self.stats.room_ended(room.outcome)
        now = asyncio.get_running_loop().time()
        event("room_ended", room=room.tag, outcome=outcome_label(room.outcome), code=room.outcome or "-",
              seconds=now - room.created_at, bytes=room.check.bytes_done if room.check else 0,
              receivers=len(room.receivers))

    # --- expiry ----------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """End rooms whose pairing or idle deadline has passed; now and then forget idle limiter entries."""
        now = asyncio.get_running_loop().time()
        for room, code in self.rooms.expired(now):
            message = (
                "no receiver joined in time" if code is ErrorCode.PAIRING_TIMEOUT else "the transfer stalled"
            )
            await room.end(code, message)
            self.finish(room)
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
        while self._live_rooms() and loop.time() < deadline and not give_up():
            await asyncio.sleep(DRAIN_POLL)
        left = self._live_rooms()
        if left:
            event("grace_expired", rooms=len(left))
        await self._going_away(left)

    def _live_rooms(self) -> list[Room]:
        return [room for room in self.rooms.by_code.values() if room.state is not State.ENDED]

    async def _going_away(self, rooms: list[Room]) -> None:
        await asyncio.gather(*(room.end(ErrorCode.GOING_AWAY, "the relay is shutting down") for room in rooms))
        for room in rooms:
            self.finish(room)


async def refuse(socket: PeerSocket, code: ErrorCode, message: str) -> None:
    """Tell a party why it was not admitted, then close with the code's close code."""
    try:
        await socket.send_text(p.Error(code.value, message).to_json())
        await socket.close(code.close_code)
    except PeerGone:
        pass
