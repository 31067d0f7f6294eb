"""The relay service: runs one party's connection from admission to the end of its room.

The FastAPI route only parses the URL and hands the socket here; ``Relay.serve`` admits the party, greets it,
and loops over its frames, turning protocol errors into a documented error and close for the whole room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from relay import protocol as p
from relay.config import Settings
from relay.protocol import ErrorCode, ProtocolError
from relay.rooms import JoinRefused, JoinRequest, Party, PeerGone, PeerSocket, Role, Room, Rooms, State

log = logging.getLogger("relay")

SWEEP_INTERVAL = 1.0


class Relay:
    """All live rooms of one relay process, and the loop that serves each party."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms = Rooms(settings)

    async def serve(self, socket: PeerSocket, request: JoinRequest) -> None:
        """Serve one accepted WebSocket until its room ends or it leaves."""
        loop = asyncio.get_running_loop()
        try:
            room, party = self.rooms.admit(request, socket, loop.time())
        except JoinRefused as refused:
            log.info("join refused: %s", refused.code.value)
            await refuse(socket, refused.code, str(refused))
            return
        party.task = asyncio.current_task()
        try:
            await room.greet(party)
            await self._read_frames(room, party, loop)
        except asyncio.CancelledError:
            if not party.closed:
                raise
            # The room cancelled this loop because the peer stopped reading; the route returns normally.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            if room.state is State.ENDED:
                self.rooms.remove(room)

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
            log.info("room %s: peer %d broke the protocol: %s", room.tag, party.peer, error.code.value)
            await room.end(error.code, error.message, culprit=party.peer)
        except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
            log.exception("room %s: internal error", room.tag)
            await room.end(ErrorCode.INTERNAL_ERROR, f"internal relay error: {type(exc).__name__}")

    async def sweep(self) -> None:
        """End rooms whose pairing or idle deadline has passed."""
        now = asyncio.get_running_loop().time()
        for room, code in self.rooms.expired(now):
            message = (
                "no receiver joined in time" if code is ErrorCode.PAIRING_TIMEOUT else "the transfer stalled"
            )
            await room.end(code, message)
            self.rooms.remove(room)

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


async def refuse(socket: PeerSocket, code: ErrorCode, message: str) -> None:
    """Tell a party why it was not admitted, then close with the code's close code."""
    try:
        await socket.send_text(p.Error(code.value, message).to_json())
        await socket.close(code.close_code)
    except PeerGone:
        pass
