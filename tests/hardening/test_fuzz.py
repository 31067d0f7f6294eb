"""Property-based attacks: arbitrary and mutated control messages and frame sequences thrown at a live relay.

Whatever arrives, the relay must answer only with well-formed protocol messages, end a room only with an
``error`` whose close code is the one section 5 documents for it (or a clean close), never with an internal
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
from tests.peers import RawPeer, open_room, start_transfer

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


def templates() -> st.SearchStrategy[dict[str, Any]]:
    """Every message type with plausible, and sometimes hostile, field values."""
    ints = st.one_of(st.integers(min_value=0, max_value=4 * CHUNK), st.integers(min_value=-5, max_value=2**60))
    entry = st.fixed_dictionaries({"path": paths, "size": ints})
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("offer"), "files": st.lists(entry, max_size=3),
                               "dirs": st.lists(paths, max_size=2), "chunk_size": ints}),
        st.fixed_dictionaries({"type": st.just("chunk"), "file": ints, "offset": ints, "size": ints,
                               "xxh3_64": hexes}),
        st.fixed_dictionaries({"type": st.just("file_done"), "file": ints, "size": ints, "xxh3_128": hexes}),
        st.fixed_dictionaries({"type": st.just("ack"), "file": ints, "offset": ints}),
        st.fixed_dictionaries({"type": st.just("file_ok"), "file": ints}),
        st.fixed_dictionaries({"type": st.just("error"),
                               "code": st.sampled_from([c.value for c in p.ErrorCode] + ["bogus"]),
                               "message": st.text(max_size=50)}),
        st.fixed_dictionaries({"type": st.sampled_from(list(p.MESSAGE_TYPES) + ["", "HELLO", "nope"])}),
        st.fixed_dictionaries({"type": st.sampled_from(["decline", "cancel"]), "reason": st.text(max_size=2000)}),
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
valid = st.sampled_from([
    p.Offer((p.FileEntry("a.txt", 3), p.FileEntry("d/b.bin", 0)), ("empty",), CHUNK).to_json(),
    p.Offer((p.FileEntry("big.bin", 10**9),), (), CHUNK).to_json(),
    p.Accept().to_json(), p.Decline("no thanks").to_json(), p.Done().to_json(), p.Verified().to_json(),
    p.FileOk(0).to_json(), p.Ack(0, 3).to_json(), p.Cancel("bye").to_json(),
    p.Chunk(0, 0, 3, p.chunk_digest(b"abc")).to_json(), p.FileDone(0, 3, "0" * 32).to_json(),
    p.Error("checksum_mismatch", "bad").to_json(), p.Error("disk_full").to_json(),
    p.Hello(1, "send", 0, 1, 10).to_json(), p.Complete().to_json(), p.Start().to_json(),
])
text_frames = st.one_of(
    valid, valid, valid,
    mutated().map(lambda m: json.dumps(m, ensure_ascii=False)),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.just("[" * 5000 + "]" * 5000),  # deep nesting
    st.just('{"type":"ack","file":1e400}'),
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
    header: p.Chunk | None = None
    for item in seen:
        if isinstance(item, p.Chunk):
            header = item
        elif isinstance(item, bytes):
            assert header is not None and len(item) == header.size and p.chunk_digest(item) == header.xxh3_64
            header = None


class Control:
    """A room that streams a small chunk each round, to show fuzzed rooms do not disturb other rooms."""

    def __init__(self, sender: RawPeer, receiver: RawPeer) -> None:
        self.sender, self.receiver, self.offset = sender, receiver, 0

    @classmethod
    async def open(cls, ws_url: str) -> Control:
        sender, (receiver,) = await open_room(ws_url, "fuzz-control")
        await start_transfer(sender, [receiver], p.Offer((p.FileEntry("c.bin", 2**40),), (), CHUNK))
        return cls(sender, receiver)

    async def close(self) -> None:
        await self.sender.close()
        await self.receiver.close()

    async def round(self) -> None:
        data = os.urandom(CHUNK)
        await self.sender.send(p.Chunk(0, self.offset, CHUNK, p.chunk_digest(data)))
        await self.sender.send(data)
        self.offset += CHUNK
        header = await self.receiver.expect("chunk")
        assert header["offset"] == self.offset - CHUNK
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
    counter = iter(range(10**6))

    @FUZZ_SETTINGS
    @given(actions=actions, paired_first=st.booleans())
    def run(actions: list[tuple[str, str | bytes]], paired_first: bool) -> None:
        loop.run_until_complete(example(actions, paired_first))

    async def example(actions: list[tuple[str, str | bytes]], paired_first: bool) -> None:
        code = f"fuzz-{next(counter)}"
        if paired_first:
            sender, (receiver,) = await open_room(relay.ws_url, code)
        else:
            sender = await RawPeer.connect(relay.ws_url, code, "send")
            await sender.expect("hello")
            receiver = await RawPeer.connect(relay.ws_url, code, "receive")
        peers = {"send": sender, "receive": receiver}
        for role, frame in actions:
            try:
                await peers[role].ws.send(frame)
            except websockets.ConnectionClosed:
                pass
        try:  # end the room for sure if the frames did not: a cancel is always allowed
            await sender.send(p.Cancel("end of example"))
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
        st.tuples(st.just("chunk"), st.integers(0, 2), st.integers(-1, 3 * CHUNK), st.integers(0, 2 * CHUNK),
                  st.sampled_from(["right", "wrong", "garbage"]), st.integers(0, 2 * CHUNK)),
        st.tuples(st.just("payload"), st.integers(0, 2 * CHUNK)),
        st.tuples(st.just("file_done"), st.integers(0, 2), st.integers(0, 3 * CHUNK)),
        st.tuples(st.just("done")),
        st.tuples(st.just("next_chunk"), st.booleans()),  # the correct next chunk (or its payload corrupted)
        st.tuples(st.just("next_chunk"), st.just(False)),
    ),
    min_size=1, max_size=12,
)


def test_mutated_chunk_streams_never_get_a_bad_payload_forwarded(relay_factory, loop) -> None:
    relay = relay_factory(max_message=64 * 1024)
    control = loop.run_until_complete(Control.open(relay.ws_url))
    counter = iter(range(10**6))
    sizes = (2 * CHUNK + 7, 0, CHUNK)

    @FUZZ_SETTINGS
    @given(ops=chunk_ops)
    def run(ops: list[tuple[Any, ...]]) -> None:
        loop.run_until_complete(example(ops))

    async def example(ops: list[tuple[Any, ...]]) -> None:
        sender, (receiver,) = await open_room(relay.ws_url, f"stream-{next(counter)}")
        offer = p.Offer(tuple(p.FileEntry(f"f{i}", size) for i, size in enumerate(sizes)), (), CHUNK)
        await start_transfer(sender, [receiver], offer)
        file_index, offset = 0, 0
        try:
            for op in ops:
                if op[0] == "chunk":
                    _, index, at, size, digest_kind, payload_size = op
                    data = os.urandom(payload_size)
                    digest = {"right": p.chunk_digest(data), "wrong": p.chunk_digest(data + b"x"),
                              "garbage": "zz"}[digest_kind]
                    await sender.send({"type": "chunk", "file": index, "offset": at, "size": size, "xxh3_64": digest})
                    await sender.send(data)
                elif op[0] == "payload":
                    await sender.send(os.urandom(op[1]))
                elif op[0] == "file_done":
                    await sender.send(p.FileDone(op[1], op[2], "0" * 32))
                elif op[0] == "done":
                    await sender.send(p.Done())
                elif file_index < len(sizes):
                    size = min(CHUNK, sizes[file_index] - offset)
                    if size == 0:
                        await sender.send(p.FileDone(file_index, sizes[file_index], "0" * 32))
                        file_index, offset = file_index + 1, 0
                    else:
                        data = os.urandom(size)
                        await sender.send(p.Chunk(file_index, offset, size, p.chunk_digest(data)))
                        await sender.send(bytes([data[0] ^ 1]) + data[1:] if op[1] else data)
                        offset += size
            await sender.send(p.Cancel("end of example"))
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
