"""The service shell: it carries out a room's effects and feeds back what goes wrong on the sockets.

These tests run ``Relay.serve`` on in-memory sockets (a ``PeerSocket`` whose sends can be made to fail), which is
the one way to make a write fail at an exact moment: the send that forwards an accept, the farewell of one party.
The same flows over real sockets are in tests/test_server.py and tests/hardening.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from relay import protocol as p
from relay.config import Settings
from relay.rooms import JoinRequest, PeerGone, State
from relay.service import ChunkForwarder, Relay

WAIT = 5.0
DATA = b"0123456789abcdef"  # the plaintext: 16 bytes in one file, two chunks of 8
CHUNKS = (b"c" * 24, b"d" * 24)  # its two sealed chunks as the relay sees them (the relay never opens them)
PAKE, CONFIRM, KEY, SEALED = (base64.b64encode(b"x" * n).decode() for n in (33, 32, 48, 40))


class MemorySocket:
    """A ``PeerSocket`` in memory. ``fail(frame)`` may return an exception for a send to raise; ``close_error``
    makes ``close`` raise. After ``hang_up`` the relay's next ``receive`` raises ``PeerGone``; so it does after
    ``close`` and after a send that raised ``PeerGone``, unless ``wake`` is False (a peer whose going away the
    relay's reading side has not noticed yet: the test then calls ``hang_up`` when it wants)."""

    def __init__(self, fail: Callable[[str | bytes], BaseException | None] | None = None,
                 close_error: BaseException | None = None, wake: bool = True) -> None:
        self.inbox: asyncio.Queue[str | bytes | BaseException | None] = asyncio.Queue()
        self.sent: list[dict[str, Any] | bytes] = []
        self.close_code: int | None = None
        self.close_calls = 0
        self.fail = fail
        self.close_error = close_error
        self.wake = wake

    async def receive(self) -> str | bytes:
        item = await self.inbox.get()
        if item is None:
            raise PeerGone()
        if isinstance(item, BaseException):
            raise item
        return item

    async def send_text(self, text: str) -> None:
        self._check(text)
        self.sent.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        self._check(data)
        self.sent.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        self.close_calls += 1
        if self.close_error is not None:
            raise self.close_error
        if self.close_code is None:
            self.close_code = code
            if self.wake:
                self.hang_up()

    def _check(self, frame: str | bytes) -> None:
        if self.close_code is not None:
            raise PeerGone()
        error = self.fail(frame) if self.fail else None
        if isinstance(error, PeerGone) and self.wake:
            self.hang_up()  # a socket that is gone for sending is gone for reading too
        if error is not None:
            raise error

    def push(self, frame: p.Message | dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, p.Message):
            frame = frame.to_json()
        elif isinstance(frame, dict):
            frame = json.dumps(frame)
        self.inbox.put_nowait(frame)

    def hang_up(self) -> None:
        self.inbox.put_nowait(None)

    def types(self) -> list[str]:
        return [m["type"] if isinstance(m, dict) else "binary" for m in self.sent]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` with a bound: the service runs on this loop, so yielding lets it make progress."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def fails_on(kind: str, error: BaseException) -> Callable[[str | bytes], BaseException | None]:
    """A send failure for the first text frame of type ``kind``."""
    state = {"done": False}

    def check(frame: str | bytes) -> BaseException | None:
        if not state["done"] and isinstance(frame, str) and json.loads(frame).get("type") == kind:
            state["done"] = True
            return error
        return None

    return check


class Room:
    """One sender and its receivers served by a real ``Relay`` over memory sockets."""

    def __init__(self, relay: Relay, sender: MemorySocket, receivers: list[MemorySocket]) -> None:
        self.relay, self.sender, self.receivers = relay, sender, receivers
        self.code = ""
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, sender: MemorySocket | None = None, *receivers: MemorySocket,
                   settings: Settings | None = None) -> Room:
        relay = Relay(settings or Settings(max_joins_per_minute=0, max_connections_per_ip=0))
        receivers = receivers or (MemorySocket(),)
        room = cls(relay, sender or MemorySocket(), list(receivers))
        room.tasks.append(asyncio.create_task(relay.serve(room.sender, JoinRequest("", "send", str(len(receivers)),
                                                                                   "2"))))
        await until(lambda: "hello" in room.sender.types(), "the sender's room")
        room.code = room.sender.sent[0]["nameplate"]  # type: ignore[index]
        for k, receiver in enumerate(receivers, start=1):
            room.tasks.append(asyncio.create_task(relay.serve(receiver, JoinRequest(room.code, "receive", None, "2"))))
            await until(lambda r=receiver: "hello" in r.types(), "the receiver's hello")
            await room.key(k, receiver)
        await until(lambda: "paired" in room.sender.types(), "paired")
        return room

    async def key(self, k: int, receiver: MemorySocket) -> None:
        """Relay receiver k's keying with the sender, step by step (placeholder bytes of the right lengths)."""
        def from_k(kind: str) -> bool:
            return any(isinstance(m, dict) and m["type"] == kind and m.get("peer") == k for m in self.sender.sent)

        self.sender.push({"type": "pake", "to": k, "data": PAKE})
        receiver.push({"type": "pake", "data": PAKE})
        await until(lambda: from_k("pake") and "pake" in receiver.types(), "both PAKE messages")
        self.sender.push({"type": "confirm", "to": k, "data": CONFIRM})
        await until(lambda: "confirm" in receiver.types(), "the sender's confirmation")
        receiver.push({"type": "confirm", "data": CONFIRM})
        await until(lambda: from_k("confirm"), "the receiver's confirmation")
        self.sender.push({"type": "key", "to": k, "data": KEY})
        await until(lambda: "key" in receiver.types(), "the content key")

    @property
    def live(self):
        return self.relay.rooms.by_code.get(self.code)

    def offer(self, size: int = len(DATA)) -> None:
        for k in range(1, len(self.receivers) + 1):
            self.sender.push({"type": "offer", "to": k, "total_size": size, "files": 1, "data": SEALED})

    async def offer_and_accept(self) -> None:
        self.offer()
        for receiver in self.receivers:
            await until(lambda r=receiver: "offer" in r.types(), "the offer")
            receiver.push({"type": "accept", "data": SEALED})
        await until(lambda: "start" in self.sender.types(), "start")
        self.sender.push({"type": "stream", "epoch": 0, "to": list(range(1, len(self.receivers) + 1)), "chunks": 2,
                          "bytes": sum(map(len, CHUNKS)), "data": [SEALED] * len(self.receivers)})

    def chunk(self, data: bytes) -> None:
        self.sender.push(p.SealedChunk(0, len(data), p.chunk_digest(data)))
        self.sender.push(data)

    async def finished(self) -> None:
        """Every route returned (bounded), and none raised."""
        done, pending = await asyncio.wait(self.tasks, timeout=WAIT)
        assert not pending, "a route did not return"
        for task in done:
            assert task.exception() is None, task.exception()


async def test_a_transfer_completes_over_memory_sockets() -> None:
    room = await Room.open()
    await room.offer_and_accept()
    for sealed in CHUNKS:
        room.chunk(sealed)
    room.sender.push({"type": "end", "epoch": 0})
    (receiver,) = room.receivers
    await until(lambda: "end" in receiver.types(), "end")
    receiver.push(p.Verified())
    await room.finished()
    assert [m for m in receiver.sent if isinstance(m, bytes)] == list(CHUNKS)
    assert room.sender.types()[-2:] == ["verified", "complete"] and room.sender.close_code == 1000
    assert receiver.close_code == 1000 and room.relay.stats.transfers["completed"] == 1


async def test_an_accept_whose_forward_to_the_sender_fails_ends_the_room() -> None:
    """Issue 8: the room was left STREAMING (its ENDED overwritten) and the receiver was never told."""
    room = await Room.open(MemorySocket(fail=fails_on("accept", PeerGone())), MemorySocket(wake=False))
    room.offer()
    (receiver,) = room.receivers
    await until(lambda: "offer" in receiver.types(), "the offer")
    room_state = room.live
    receiver.push({"type": "accept", "data": SEALED})
    await until(lambda: receiver.close_code is not None, "the receiver's farewell")
    await asyncio.sleep(0)  # let the route that handled the accept run on, as it did into the bug
    assert room_state is not None and room_state.state is State.ENDED and room_state.outcome == "peer_left"
    assert receiver.sent[-1] == {"type": "peer_left", "peer": 0, "role": "send"} and receiver.close_code == 4030
    receiver.hang_up()  # the receiver answers the close
    await room.finished()
    assert room.relay.stats.transfers == {"peer_lost": 1} and room.code not in room.relay.rooms.by_code


async def test_a_room_whose_last_verified_cannot_reach_the_sender_is_not_complete() -> None:
    """Issue 8: complete() overwrote a room that had just ended with peer_left, and metrics said completed."""
    room = await Room.open(MemorySocket(fail=fails_on("verified", PeerGone()), wake=False))
    await room.offer_and_accept()
    for sealed in CHUNKS:
        room.chunk(sealed)
    room.sender.push({"type": "end", "epoch": 0})
    (receiver,) = room.receivers
    await until(lambda: "end" in receiver.types(), "end")
    receiver.push(p.Verified())
    await until(lambda: room.code not in room.relay.rooms.by_code, "the room to end")
    assert room.relay.stats.transfers == {"peer_lost": 1}
    assert "complete" not in receiver.types() and receiver.close_code == 4030
    room.sender.hang_up()  # the sender's reading side notices it is gone
    await room.finished()


@pytest.mark.parametrize("error", [IndexError("boom"), AttributeError("boom"), LookupError("boom")])
async def test_any_unexpected_exception_ends_the_room_with_internal_error(error: Exception) -> None:
    """Issue 8: only a hand-picked list of exception types was caught; the others left the room alive."""
    room = await Room.open()
    room.sender.push(error)  # the sender's socket layer raises something no one expected
    await room.finished()
    (receiver,) = room.receivers
    assert receiver.sent[-1]["code"] == "internal_error" and receiver.close_code == 1011  # type: ignore[index]
    assert room.sender.close_code == 1011 and room.relay.stats.relay_errors == 1
    assert room.code not in room.relay.rooms.by_code


async def test_a_send_that_raises_something_else_ends_the_room_with_internal_error() -> None:
    room = await Room.open(MemorySocket(), MemorySocket(fail=fails_on("offer", RuntimeError("encoder broke"))))
    room.offer()
    await room.finished()
    assert room.sender.sent[-1]["code"] == "internal_error" and room.sender.close_code == 1011  # type: ignore[index]
    assert room.receivers[0].close_code == 1011


@pytest.mark.parametrize("error", [UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
                                   RuntimeError("send after close"), ValueError("boom")])
async def test_a_farewell_that_fails_still_closes_every_socket_of_the_room(error: Exception) -> None:
    """Issue 9 item 1: a failure while ending a room must still close every socket of it."""
    broken = MemorySocket(fail=fails_on("cancel", error))
    room = await Room.open(MemorySocket(), broken, MemorySocket(), settings=Settings(
        max_joins_per_minute=0, max_connections_per_ip=0))
    room.sender.push({"type": "cancel"})
    await room.finished()
    assert broken.close_code == 4031  # its farewell message failed, and it was closed anyway
    assert room.receivers[1].sent[-1] == {"type": "cancel", "peer": 0}
    assert room.receivers[1].close_code == 4031 and room.sender.close_code == 4031


async def test_a_close_that_raises_drops_that_socket_and_the_others_still_close() -> None:
    broken = MemorySocket(close_error=RuntimeError("close failed"))
    room = await Room.open(MemorySocket(), broken, MemorySocket())
    room.receivers[1].hang_up()
    await room.finished()  # the broken socket's route was stopped, so it returned and its socket is dropped
    assert broken.close_calls == 1 and room.sender.close_code == 4030


async def test_a_sender_that_leaves_while_a_chunk_is_forwarded_ends_the_room_once() -> None:
    receiver = MemorySocket(fail=lambda frame: PeerGone() if isinstance(frame, bytes) else None)
    room = await Room.open(MemorySocket(), receiver)
    await room.offer_and_accept()
    room.chunk(CHUNKS[0])
    await room.finished()
    assert room.sender.sent[-1] == {"type": "peer_left", "peer": 1, "role": "receive"}
    assert room.relay.stats.transfers == {"peer_lost": 1}


async def test_a_route_cancelled_from_outside_ends_its_room_and_the_others_are_told() -> None:
    room = await Room.open()
    sender_route = room.tasks[0]
    sender_route.cancel()  # e.g. the server cancelling its connection tasks
    (receiver,) = room.receivers
    await until(lambda: receiver.close_code is not None, "the receiver's close")
    assert receiver.sent[-1] == {"type": "peer_left", "peer": 0, "role": "send"} and receiver.close_code == 4030
    assert room.code not in room.relay.rooms.by_code
    room.tasks.remove(sender_route)
    await room.finished()


async def test_the_sweeper_ends_an_unanswered_offer_with_offer_timeout() -> None:
    room = await Room.open(settings=Settings(max_joins_per_minute=0, max_connections_per_ip=0,
                                             idle_timeout=0.001, offer_timeout=0.05))
    room.offer()
    (receiver,) = room.receivers
    await until(lambda: "offer" in receiver.types(), "the offer")
    live = room.live
    assert live is not None
    await until(lambda: asyncio.get_running_loop().time() - live.last_activity > 0.01, "the idle timeout to pass")
    await room.relay.sweep()
    assert live.state is State.OFFERED  # idle for longer than the idle timeout, but a person may be reading
    await until(lambda: asyncio.get_running_loop().time() - live.offered_at >= 0.05, "the offer timeout")
    await room.relay.sweep()
    await room.finished()
    assert receiver.sent[-1] == {"type": "error", "code": "offer_timeout",
                                 "message": "nobody answered the offer in time"}
    assert receiver.close_code == room.sender.close_code == 4043
    assert room.relay.stats.transfers == {"timed_out": 1}


class ForwardingSocket(MemorySocket):
    """A sender's socket that, like the relay's own connection (``RelayWebSocketProtocol.next_message``), may hand a
    chunk to the room's ``ChunkForwarder`` on its way to returning the next message: ``forward_first`` runs
    once, synchronously, in the sender's task. ``close`` records whether the route had already returned."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_first: Callable[[], None] | None = None
        self.route: asyncio.Task[None] | None = None
        self.closed_after_route: bool | None = None

    async def receive(self) -> str | bytes:
        message = await super().receive()
        hook, self.forward_first = self.forward_first, None
        if hook is not None:
            hook()
        return message

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed_after_route is None and self.route is not None:
            self.closed_after_route = self.route.done()
        await super().close(code, reason)


async def test_a_room_end_the_chunk_forwarder_decides_is_carried_out_before_any_route_returns() -> None:
    sender = ForwardingSocket()
    room = await Room.open(sender)
    sender.route = room.tasks[0]
    await room.offer_and_accept()
    live = room.live
    await until(lambda: live is not None and live.check is not None and live.check.epoch == 0, "the open stream")
    assert live is not None and live.sender is not None
    forwarder = ChunkForwarder(room.relay, live, live.sender, room.relay.seats[live][0])
    bad = p.SealedChunk(0, len(CHUNKS[0]), "0" * 16).to_json()
    # The sender's connection forwards a chunk with a wrong digest from inside its task and returns the sender's
    # next message at once: the sender's route finds its party closed and returns. It must first wait for the
    # room's farewell to its socket, or the server closes the socket without the error and the close frame.
    sender.forward_first = lambda: forwarder.chunk(bad, CHUNKS[0])
    sender.push({"type": "end", "epoch": 0})
    await room.finished()
    assert sender.closed_after_route is False
    assert sender.close_code == p.ErrorCode.CHECKSUM_MISMATCH.close_code
    assert {"type": "error", "code": "checksum_mismatch", "message": "chunk 0 failed its xxh3_64 check"} in sender.sent
    assert room.receivers[0].close_code == p.ErrorCode.CHECKSUM_MISMATCH.close_code
