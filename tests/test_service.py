"""The service shell: it carries out a room's effects and feeds back what goes wrong on the sockets.

These tests run ``Relay.serve`` on in-memory sockets (a ``PeerSocket`` whose sends can be made to fail), which is
the one way to make a write fail at an exact moment: the send that forwards an accept, the farewell of one party.
The same flows over real sockets are in tests/test_server.py and tests/hardening.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
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
                 close_error: BaseException | None = None, wake: bool = True,
                 hold: Callable[[str | bytes], asyncio.Event | None] | None = None) -> None:
        self.inbox: asyncio.Queue[str | bytes | BaseException | None] = asyncio.Queue()
        self.sent: list[dict[str, Any] | bytes] = []
        self.close_code: int | None = None
        self.close_calls = 0
        self.fail = fail
        self.close_error = close_error
        self.wake = wake
        self.hold = hold  # a send of a frame for which it returns an event waits for that event first

    async def receive(self) -> str | bytes:
        item = await self.inbox.get()
        if item is None:
            raise PeerGone()
        if isinstance(item, BaseException):
            raise item
        return item

    async def send_text(self, text: str) -> None:
        await self._held(text)
        self._check(text)
        self.sent.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        await self._held(data)
        self._check(data)
        self.sent.append(data)

    async def _held(self, frame: str | bytes) -> None:
        gate = self.hold(frame) if self.hold else None
        if gate is not None:
            await gate.wait()

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


# --- a party that took its seat back on a new socket (resume): its old socket no longer speaks for it ----------


def token(seat: str) -> str:
    """A stand-in resume token (the real ones derive from the pair key: clients/crypto.py)."""
    return hashlib.sha256(seat.encode()).hexdigest()


def verifier(seat: str) -> str:
    return hashlib.sha256(bytes.fromhex(token(seat))).hexdigest()


def held_on(kind: str, gate: asyncio.Event) -> Callable[[str | bytes], asyncio.Event | None]:
    """Hold the first send of a frame of ``kind`` (a message type, or "binary") until ``gate`` is set."""
    state = {"done": False}

    def hold(frame: str | bytes) -> asyncio.Event | None:
        this = "binary" if isinstance(frame, bytes) else json.loads(frame).get("type")
        if not state["done"] and this == kind:
            state["done"] = True
            return gate
        return None

    return hold


async def streaming_with_verifiers(*receivers: MemorySocket, sender: MemorySocket | None = None) -> Room:
    """A room whose every pair registered its resume verifiers, streaming epoch 0."""
    room = await Room.open(sender, *receivers)
    for k, receiver in enumerate(room.receivers, start=1):
        receiver.push(p.ResumeId(verifier(f"r{k}")))
        room.sender.push(p.ResumeId(verifier(f"s{k}"), to=k))
    await room.offer_and_accept()
    await until(lambda: room.live is not None and all(r.verifier and r.sender_verifier for r in room.live.receivers),
                "every verifier")
    return room


async def resume_receiver(room: Room, k: int) -> MemorySocket:
    """Receiver k takes its parked seat back on a new socket; returns the socket once it heard ``resumed``."""
    new = MemorySocket()
    new.push({"type": "resume", "peer": k, "token": token(f"r{k}"), "next_verifier": verifier(f"r{k}+1")})
    room.tasks.append(asyncio.create_task(room.relay.serve(new, JoinRequest(room.code, "receive", None, "2", "1"))))
    await until(lambda: "resumed" in new.types(), "the resumed receiver's 'resumed'")
    return new


def heard(socket: MemorySocket, kind: str) -> int:
    return socket.types().count(kind)


async def test_the_old_socket_of_a_resumed_receiver_ending_its_route_late_does_not_park_it_again() -> None:
    """The old socket's route was still telling the sender ``reconnecting`` when the receiver came back; when it
    ended, it fed ``gone`` for the receiver (its ``finally``), which parked the resumed receiver again."""
    gate = asyncio.Event()
    room = await streaming_with_verifiers(MemorySocket(), sender=MemorySocket(hold=held_on("reconnecting", gate)))
    old = room.receivers[0]
    old_route = room.tasks[1]
    old.hang_up()  # the drop: the old route parks the seat and is held telling the sender
    await until(lambda: room.live is not None and room.live.state is State.PARKED, "the room to park")
    new = await resume_receiver(room, 1)
    gate.set()
    await asyncio.wait_for(old_route, WAIT)  # the old route has ended
    live = room.live
    assert live is not None and live.state is State.STREAMING and not live.receivers[0].parked
    assert heard(room.sender, "reconnecting") == 1 and heard(new, "reconnecting") == 0


async def test_a_send_to_the_old_socket_that_fails_after_the_receiver_resumed_does_not_park_it_again() -> None:
    """A chunk forward to the old socket was still pending when the receiver came back on a new one; its failure
    (then the frames the old socket still held) was taken for the resumed receiver's."""
    gate = asyncio.Event()
    old = MemorySocket(wake=False, hold=held_on("binary", gate),
                       fail=lambda frame: PeerGone() if isinstance(frame, bytes) else None)
    room = await streaming_with_verifiers(old)
    room.chunk(CHUNKS[0])  # the forward waits on the old socket
    await until(lambda: "chunk" in old.types(), "the chunk header on the old socket")
    old.hang_up()  # the old socket's reading side sees the drop first: parked
    await until(lambda: room.live is not None and room.live.state is State.PARKED, "the room to park")
    new = await resume_receiver(room, 1)
    gate.set()  # the pending send now fails
    room.sender.push(p.Sealed(SEALED, to=1))  # the sender's route reads on only once that forward is over
    await until(lambda: "sealed" in new.types(), "the next message to the resumed receiver")
    live = room.live
    assert live is not None and live.state is State.STREAMING and not live.receivers[0].parked
    assert heard(room.sender, "reconnecting") == 1 and "binary" not in new.types()


async def test_a_chunk_of_the_abandoned_epoch_never_reaches_a_receiver_that_resumed_on_a_new_socket() -> None:
    """A chunk decided for two receivers was still being written to the first when the second dropped and came
    back: the rest of that decision went to the second's new socket, an epoch it had left ('did not
    authenticate')."""
    gate = asyncio.Event()
    room = await streaming_with_verifiers(MemorySocket(hold=held_on("binary", gate)), MemorySocket())
    first, second = room.receivers
    room.chunk(CHUNKS[0])  # forwarded to receiver 1 first: held there
    await until(lambda: "chunk" in first.types(), "the chunk header to receiver 1")
    second.hang_up()
    await until(lambda: room.live is not None and room.live.state is State.PARKED, "the room to park")
    new = await resume_receiver(room, 2)
    gate.set()
    await until(lambda: "binary" in first.types(), "the chunk to receiver 1")
    room.sender.push(p.Sealed(SEALED, to=2))  # read only once the chunk's forward is over
    await until(lambda: "sealed" in new.types(), "the next message to the resumed receiver")
    assert "chunk" not in new.types() and "binary" not in new.types()
    live = room.live
    assert live is not None and live.state is State.STREAMING


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


# --- ChunkForwarder: the chunks of one read, checked one by one, written once per receiver ----------------------


class DirectSocket(MemorySocket):
    """A ``MemorySocket`` that also takes forwarded chunks as the relay's own connection does (``ForwardsChunks``):
    ``write_now`` records each write (``writes``: how many chunks each carried) and appends what it carried to
    ``sent`` (the party's timeline); with ``full`` set, its transport keeps part of a write, so it hands back its
    ``writable`` flag. ``blocked_on``: the flags a sender was told to wait for; ``forwarder``: its
    ``ChunkForwarder``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.forwarder: ChunkForwarder | None = None
        self.writes: list[int] = []
        self.full = False
        self.writable = asyncio.Event()
        self.blocked_on: list[Any] = []

    def forward_with(self, forwarder: ChunkForwarder | None) -> None:
        self.forwarder = forwarder

    def block_on(self, flags: list[Any]) -> None:
        self.blocked_on += flags

    def can_write_now(self) -> bool:
        return not self.full and self.close_code is None

    @staticmethod
    def chunk_frames(text: str, data: bytes) -> tuple[bytes, bytes, bytes]:
        return text.encode(), b"", data

    def write_now(self, parts: list[bytes], payload_bytes: int) -> asyncio.Event | None:
        assert len(parts) % 3 == 0 and payload_bytes == sum(len(part) for part in parts[2::3])
        self.writes.append(len(parts) // 3)
        for index in range(0, len(parts), 3):
            self.sent += [json.loads(parts[index]), parts[index + 2]]
        return self.writable if self.full else None


BATCH_CHUNKS = tuple(bytes([65 + k]) * 20 for k in range(4))  # a stream of 4 chunks: 4 plaintext bytes + a tag each


async def streaming_batches(receivers: int = 1) -> tuple[Room, ChunkForwarder]:
    """A room of direct sockets streaming epoch 0 (``BATCH_CHUNKS``), and the sender's forwarder."""
    room = await Room.open(DirectSocket(), *(DirectSocket() for _ in range(receivers)))
    room.offer()
    for receiver in room.receivers:
        await until(lambda r=receiver: "offer" in r.types(), "the offer")
        receiver.push({"type": "accept", "data": SEALED})
    await until(lambda: "start" in room.sender.types(), "start")
    room.sender.push({"type": "stream", "epoch": 0, "to": list(range(1, receivers + 1)), "chunks": 4,
                      "bytes": sum(map(len, BATCH_CHUNKS)), "data": [SEALED] * receivers})
    live = room.live
    await until(lambda: live.check is not None and live.check.epoch == 0, "the open stream")
    forwarder = room.sender.forwarder  # type: ignore[attr-defined]
    assert forwarder is not None and forwarder.ready()
    return room, forwarder


def header(data: bytes, digest: str | None = None) -> str:
    return p.SealedChunk(0, len(data), digest or p.chunk_digest(data)).to_json()


def chunks_sent(socket: MemorySocket) -> list[Any]:
    return [m for m in socket.sent if isinstance(m, bytes) or m["type"] == "chunk"]


async def test_the_chunks_of_one_read_are_each_checked_then_written_once_per_receiver_in_order() -> None:
    room, forwarder = await streaming_batches(receivers=2)
    for data in BATCH_CHUNKS[:3]:
        assert forwarder.chunk(header(data), data)
    assert all(receiver.writes == [] for receiver in room.receivers)  # nothing leaves before the read is done
    assert room.live.check.chunks_done == 3  # each one checked by the room as it came
    forwarder.flush()
    expected = [m for data in BATCH_CHUNKS[:3] for m in (json.loads(header(data)), data)]
    for receiver in room.receivers:
        assert receiver.writes == [3] and chunks_sent(receiver) == expected
    forwarder.flush()  # nothing queued: nothing written
    assert all(receiver.writes == [3] for receiver in room.receivers)
    assert room.sender.blocked_on == []  # every receiver took its write at once: the sender reads on


async def test_a_bad_chunk_in_the_middle_of_a_read_ends_the_room_after_the_chunks_before_it_left() -> None:
    room, forwarder = await streaming_batches()
    (receiver,) = room.receivers
    assert forwarder.chunk(header(BATCH_CHUNKS[0]), BATCH_CHUNKS[0])
    assert forwarder.chunk(header(BATCH_CHUNKS[1]), BATCH_CHUNKS[1])
    # a wrong digest: the room ends; the chunks before it are written first, it never is (nor anything after:
    # the connection stops handing chunks to a forwarder that said no)
    assert not forwarder.chunk(header(BATCH_CHUNKS[2], "0" * 16), BATCH_CHUNKS[2])
    assert receiver.writes == [2] and chunks_sent(receiver) == [
        json.loads(header(BATCH_CHUNKS[0])), BATCH_CHUNKS[0], json.loads(header(BATCH_CHUNKS[1])), BATCH_CHUNKS[1]]
    assert not forwarder.ready()
    await room.finished()
    error = {"type": "error", "code": "checksum_mismatch", "message": "chunk 2 failed its xxh3_64 check"}
    assert receiver.sent[-1] == error and receiver.close_code == p.ErrorCode.CHECKSUM_MISMATCH.close_code
    assert error in room.sender.sent and room.sender.close_code == p.ErrorCode.CHECKSUM_MISMATCH.close_code
    assert BATCH_CHUNKS[2] not in receiver.sent and receiver.writes == [2]


async def test_a_receiver_whose_transport_keeps_part_of_a_read_stops_the_sender_until_it_drained() -> None:
    room, forwarder = await streaming_batches(receivers=2)
    first, second = room.receivers
    for data in BATCH_CHUNKS[:2]:
        assert forwarder.chunk(header(data), data)
    second.full = True  # its socket takes only part of what is written to it
    forwarder.flush()
    assert first.writes == [2] and second.writes == [2]  # both got the whole read; the kernel has part of it
    assert room.sender.blocked_on == [second.writable]  # the sender's connection reads nothing until it drained
    assert not forwarder.ready()  # and the next chunk is not forwarded from the read callback meanwhile
    second.full = False
    assert forwarder.ready()
