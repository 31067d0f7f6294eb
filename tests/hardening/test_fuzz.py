"""Property-based attacks: arbitrary and mutated control messages and frame sequences thrown at a live relay.

Whatever arrives, the relay must answer only with well-formed protocol messages, end a room only with an
``error`` whose close code is the one section 7 documents for it (or a clean close), never with an internal
error, never forward a payload that does not match its header, remove the room afterwards, and keep
serving another room that is streaming at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import protocol as p
from tests.hardening.wire import WAIT
from tests.peers import RawPeer, b64, open_room_v2, send_sealed, start_v2

EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES", "150"))
DOCUMENTED_CLOSES = {p.CLOSE_NORMAL, *p.CLOSE_CODES.values()} - {p.ErrorCode.INTERNAL_ERROR.close_code}
CHUNK = 1024

# --- strategies --------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "..", "/etc/passwd", "a/../b", "CON", "x\x00y", "\u202eexe.txt", "a\\b", "0" * 16]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
hexes = st.one_of(st.text("0123456789abcdef", min_size=16, max_size=16), st.text(max_size=20))
paths = st.one_of(st.sampled_from(["a.txt", "dir/b.bin", "c"]), st.text(max_size=30))


def b64_of(sizes: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """Base64 of a random length (the relay checks form and length only), or text that is not base64 at all."""
    return st.one_of(sizes.map(lambda n: b64(os.urandom(n))), st.text(max_size=12))


def templates() -> st.SearchStrategy[dict[str, Any]]:
    """Every message type with plausible, and sometimes hostile, field values."""
    ints = st.one_of(st.integers(min_value=0, max_value=4 * CHUNK), st.integers(min_value=-5, max_value=2**60))
    peers = st.one_of(st.integers(min_value=0, max_value=3), ints)
    sealed = b64_of(st.integers(min_value=0, max_value=200))
    keying = b64_of(st.sampled_from([31, 32, 33, 34, 47, 48]))
    return st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["pake", "confirm", "key"]), "to": peers, "data": keying}),
        st.fixed_dictionaries({"type": st.just("wrong_code"), "to": peers}),
        st.fixed_dictionaries({"type": st.just("offer"), "to": peers, "total_size": ints, "files": ints,
                               "data": sealed}),
        st.fixed_dictionaries({"type": st.just("stream"), "epoch": ints, "to": st.lists(peers, max_size=3),
                               "chunks": ints, "bytes": ints, "data": st.lists(sealed, max_size=3)}),
        st.fixed_dictionaries({"type": st.just("chunk"), "epoch": ints, "size": ints, "xxh3_64": hexes}),
        st.fixed_dictionaries({"type": st.just("end"), "epoch": ints}),
        st.fixed_dictionaries({"type": st.just("ack"), "epoch": ints, "chunks": ints}),
        st.fixed_dictionaries({"type": st.sampled_from(["sealed", "accept", "cancel"]), "to": peers, "data": sealed}),
        st.fixed_dictionaries({"type": st.just("decline"),
                               "code": st.sampled_from([c.value for c in p.ErrorCode] + ["bogus"]), "data": sealed}),
        st.fixed_dictionaries({"type": st.just("error"),
                               "code": st.sampled_from([c.value for c in p.ErrorCode] + ["bogus"]),
                               "message": st.text(max_size=50)}),
        st.fixed_dictionaries({"type": st.sampled_from(list(p.MESSAGE_TYPES_V2) + ["", "HELLO", "nope"])}),
        # version 1's messages, which the relay no longer knows
        st.fixed_dictionaries({"type": st.sampled_from(["file_done", "done", "file_ok"]), "file": ints}),
        st.fixed_dictionaries({"type": st.just("offer"), "files": st.lists(
            st.fixed_dictionaries({"path": paths, "size": ints}), max_size=3), "chunk_size": ints}),
    )


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A template with a field replaced, removed or added."""
    message = dict(draw(templates()))
    action = draw(st.sampled_from(["keep", "replace", "drop", "add"]))
    keys = sorted(message)
    if action == "replace":
        message[draw(st.sampled_from(keys))] = draw(json_values)
    elif action == "drop" and len(keys) > 1:
        del message[draw(st.sampled_from([k for k in keys if k != "type"] or keys))]
    elif action == "add":
        message[draw(st.text(max_size=8))] = draw(json_values)
    return message


_ok_data = b"z" * CHUNK
_sealed = b64(b"s" * 40)
valid = st.sampled_from([
    p.SealedOffer(3, 2, _sealed, 1).to_json(), p.SealedOffer(10**9, 1, _sealed, 1).to_json(),
    p.SealedAccept(_sealed).to_json(), p.SealedDecline("declined", _sealed).to_json(),
    p.Stream(0, 2, 3 + 32, (_sealed,), (1,)).to_json(), p.Stream(0, 1, CHUNK, (_sealed,), (1,)).to_json(),
    p.SealedChunk(0, CHUNK, p.chunk_digest(_ok_data)).to_json(), p.End(0).to_json(), p.ChunkAck(0, 1).to_json(),
    p.Sealed(_sealed, to=1).to_json(), p.Sealed(_sealed).to_json(), p.Verified().to_json(),
    p.SealedCancel(_sealed).to_json(), p.SealedCancel().to_json(), p.Pake(b64(b"p" * 33), to=1).to_json(),
    p.Error("checksum_mismatch", "bad").to_json(), p.Error("disk_full").to_json(),
    p.Hello(2, "send", 0, 1, 10).to_json(), p.Complete().to_json(), p.Start().to_json(),
])
text_frames = st.one_of(
    valid, valid, valid,
    mutated().map(lambda m: json.dumps(m, ensure_ascii=False)),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.just("[" * 5000 + "]" * 5000),  # deep nesting
    st.just('{"type":"ack","epoch":0,"chunks":1e400}'),
    st.just('{"type":"chunk","type":"offer"}'),
)
frames = st.one_of(text_frames, st.sampled_from([b"abc", _ok_data]), st.binary(max_size=3 * CHUNK))
actions = st.lists(st.tuples(st.sampled_from(["send", "receive"]), frames), min_size=1, max_size=8)

# --- checks ------------------------------------------------------------------------------------------------


async def drain(peer: RawPeer) -> tuple[list[Any], int | None]:
    """Everything the relay sends until it closes the socket, each text frame checked against the protocol."""
    seen: list[Any] = []
    try:
        async with asyncio.timeout(WAIT):
            while True:
                frame = await peer.ws.recv()
                if isinstance(frame, str):
                    message = p.parse_message(frame)  # the relay itself must never send a malformed message
                    seen.append(message)
                else:
                    seen.append(frame)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "the relay dropped the socket without a close frame"
        return seen, exc.rcvd.code


CLOSES_SEEN: Counter[int | None] = Counter()


def check_ending(seen: list[Any], close: int | None) -> None:
    CLOSES_SEEN[close] += 1
    assert close in DOCUMENTED_CLOSES, f"undocumented close code {close}"
    errors = [m for m in seen if isinstance(m, p.Error)]
    for error in errors:
        assert error.code != p.ErrorCode.INTERNAL_ERROR, error
    if errors and errors[-1].peer is None:  # the relay's own verdict: its code decides the close code
        assert close == errors[-1].error_code.close_code, (errors[-1], close)


def check_forwarded_payloads(seen: list[Any]) -> None:
    """Every binary frame a receiver gets follows a chunk header whose size and digest it matches."""
    header: p.SealedChunk | None = None
    for item in seen:
        if isinstance(item, p.SealedChunk):
            header = item
        elif isinstance(item, bytes):
            assert header is not None and len(item) == header.size and p.chunk_digest(item) == header.xxh3_64
            header = None


class Control:
    """A room that streams a small chunk each round, to show fuzzed rooms do not disturb other rooms."""

    def __init__(self, sender: RawPeer, receiver: RawPeer) -> None:
        self.sender, self.receiver = sender, receiver

    @classmethod
    async def open(cls, ws_url: str) -> Control:
        room = await open_room_v2(ws_url)
        await start_v2(room, p.Offer((p.FileEntry("c.bin", 2**40),), (), CHUNK), CHUNK)
        return cls(room.sender, room.receivers[0])

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()

    async def round(self) -> None:
        data = os.urandom(CHUNK + p.TAG_SIZE)  # the relay never opens a chunk: random bytes of the right length
        await send_sealed(self.sender, data)
        header = await self.receiver.expect("chunk")
        assert header["size"] == len(data)
        assert await self.receiver.recv() == data


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


async def wait_rooms(relay, count: int) -> None:
    for _ in range(500):
        if len(relay.relay.rooms) <= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"rooms left behind: {len(relay.relay.rooms)}")


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def test_arbitrary_control_messages_and_frames_from_both_sides(relay_factory, loop) -> None:
    relay = relay_factory(max_message=64 * 1024)
    control = loop.run_until_complete(Control.open(relay.ws_url))

    @FUZZ_SETTINGS
    @given(actions=actions, paired_first=st.booleans())
    def run(actions: list[tuple[str, str | bytes]], paired_first: bool) -> None:
        loop.run_until_complete(example(actions, paired_first))

    async def example(actions: list[tuple[str, str | bytes]], paired_first: bool) -> None:
        if paired_first:
            room = await open_room_v2(relay.ws_url)
            sender, (receiver,) = room.sender, room.receivers
        else:
            sender = await RawPeer.connect_v2(relay.ws_url, None, "send")
            hello = await sender.expect("hello")
            receiver = await RawPeer.connect_v2(relay.ws_url, hello["nameplate"], "receive")
        peers = {"send": sender, "receive": receiver}
        for role, frame in actions:
            try:
                await peers[role].ws.send(frame)
            except websockets.ConnectionClosed:
                pass
        try:  # end the room for sure if the frames did not: a cancel is always allowed
            await sender.send(p.SealedCancel())
        except websockets.ConnectionClosed:
            pass
        for peer in peers.values():
            seen, close = await drain(peer)
            check_ending(seen, close)
            check_forwarded_payloads(seen)
        await wait_rooms(relay, 1)  # only the control room is left
        await control.round()

    CLOSES_SEEN.clear()
    try:
        run()
        loop.run_until_complete(control.round())
    finally:
        loop.run_until_complete(control.close())
    print("close codes seen:", dict(CLOSES_SEEN))
    assert relay.relay.stats.relay_errors == 0
    assert len(CLOSES_SEEN) >= 3  # the examples reached several different endings, not one refusal


chunk_ops = st.lists(
    st.one_of(
        st.tuples(st.just("chunk"), st.integers(-1, 2), st.integers(0, 2 * CHUNK),
                  st.sampled_from(["right", "wrong", "garbage"]), st.integers(0, 2 * CHUNK)),
        st.tuples(st.just("payload"), st.integers(0, 2 * CHUNK)),
        st.tuples(st.just("end"), st.integers(-1, 1)),
        st.tuples(st.just("stream"), st.integers(0, 8), st.integers(0, 8 * CHUNK)),
        st.tuples(st.just("next_chunk"), st.booleans()),  # the correct next chunk (or its payload corrupted)
        st.tuples(st.just("next_chunk"), st.just(False)),
    ),
    min_size=1, max_size=12,
)


def test_mutated_chunk_streams_never_get_a_bad_payload_forwarded(relay_factory, loop) -> None:
    relay = relay_factory(max_message=64 * 1024)
    control = loop.run_until_complete(Control.open(relay.ws_url))
    sizes = (2 * CHUNK + 7, 0, CHUNK)

    @FUZZ_SETTINGS
    @given(ops=chunk_ops)
    def run(ops: list[tuple[Any, ...]]) -> None:
        loop.run_until_complete(example(ops))

    async def example(ops: list[tuple[Any, ...]]) -> None:
        room = await open_room_v2(relay.ws_url)
        sender, (receiver,) = room.sender, room.receivers
        offer = p.Offer(tuple(p.FileEntry(f"f{i}", size) for i, size in enumerate(sizes)), (), CHUNK)
        sealer, plan = await start_v2(room, offer, CHUNK)  # opens the epoch with the plan's true totals
        positions = list(plan.positions())
        files = [os.urandom(size) for size in sizes]
        try:
            for op in ops:
                if op[0] == "chunk":
                    _, epoch, size, digest_kind, payload_size = op
                    data = os.urandom(payload_size)
                    digest = {"right": p.chunk_digest(data), "wrong": p.chunk_digest(data + b"x"),
                              "garbage": "zz"}[digest_kind]
                    await sender.send({"type": "chunk", "epoch": epoch, "size": size, "xxh3_64": digest})
                    await sender.send(data)
                elif op[0] == "payload":
                    await sender.send(os.urandom(op[1]))
                elif op[0] == "end":
                    await sender.send({"type": "end", "epoch": op[1]})
                elif op[0] == "stream":
                    await sender.send({"type": "stream", "epoch": 0, "to": [1], "chunks": op[1], "bytes": op[2],
                                       "data": [b64(b"s" * 40)]})
                elif positions:
                    pos = positions.pop(0)
                    sealed = sealer.seal_next(files[pos.file][pos.offset : pos.offset + pos.length])
                    if op[1]:
                        await sender.send(p.SealedChunk(0, len(sealed), p.chunk_digest(sealed)))
                        await sender.send(bytes([sealed[0] ^ 1]) + sealed[1:])
                    else:
                        await send_sealed(sender, sealed)
            await sender.send(p.SealedCancel())
        except websockets.ConnectionClosed:
            pass
        for peer in (sender, receiver):
            seen, close = await drain(peer)
            check_ending(seen, close)
            check_forwarded_payloads(seen)
        await wait_rooms(relay, 1)
        await control.round()

    CLOSES_SEEN.clear()
    try:
        run()
    finally:
        loop.run_until_complete(control.close())
    print("close codes seen:", dict(CLOSES_SEEN))
    assert relay.relay.stats.relay_errors == 0
    assert {4020, 4004} <= set(CLOSES_SEEN)  # bad digests and out-of-order frames were both reached
