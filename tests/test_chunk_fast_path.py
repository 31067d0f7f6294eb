"""The per-chunk fast path gives exactly what the general path gives.

A chunk header in its canonical form is read with a regular expression instead of the JSON decoder, and the
header forwarded to receivers is formatted directly; any other spelling takes ``parse_message`` as before.
On a real relay, a streaming sender's chunks are forwarded from its connection's read callback
(``ChunkForwarder``); what every party sees is the same as through the sender's task.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from benchmarks.wsframes import client_frame
from relay import framebuffer as fb
from relay import protocol as p
from relay.rooms import Room, chunk_json, parse_frame
from relay.service import ChunkForwarder
from tests.peers import KeyedRoom, RawPeer, open_room_v2, send_sealed, start_v2

DIGEST = "0123456789abcdef"


@pytest.mark.parametrize("header", [
    p.SealedChunk(0, 16, DIGEST),
    p.SealedChunk(7, 1 << 20, "ffffffffffffffff"),
    p.SealedChunk(p.MAX_EPOCH, 2**53 - 1, "0000000000000000"),
])
def test_the_forwarded_header_is_the_canonical_json(header: p.SealedChunk) -> None:
    assert chunk_json(header) == header.to_json()


@pytest.mark.parametrize("text", [
    p.SealedChunk(0, 16, DIGEST).to_json(),
    p.SealedChunk(3, 65552, DIGEST).to_json(),
    '{"type":"chunk","epoch":0,"size":65552,"xxh3_64":"' + DIGEST + '"}',
    '{"type": "chunk", "epoch": 0, "size": 65552, "xxh3_64": "' + DIGEST + '"}',  # spaces: the general path
    '{"size":65552,"type":"chunk","epoch":0,"xxh3_64":"' + DIGEST + '"}',  # another key order
    '{"type":"ack","epoch":0,"chunks":3}',
])
def test_a_well_formed_frame_parses_as_parse_message_parses_it(text: str) -> None:
    assert parse_frame(text) == p.parse_message(text, p.PROTOCOL_V2)


@pytest.mark.parametrize("text", [
    '{"type":"chunk","epoch":0,"size":15,"xxh3_64":"' + DIGEST + '"}',  # shorter than a tag
    '{"type":"chunk","epoch":4294967296,"size":16,"xxh3_64":"' + DIGEST + '"}',  # past MAX_EPOCH
    '{"type":"chunk","epoch":0,"size":99999999999999999,"xxh3_64":"' + DIGEST + '"}',  # past 2**53 - 1
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"0123456789ABCDEF"}',  # upper case
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"0123456789abcde"}',  # 15 digits
    '{"type":"chunk","epoch":01,"size":16,"xxh3_64":"' + DIGEST + '"}',  # not JSON
    '{"type":"chunk","epoch":0,"size":16.0,"xxh3_64":"' + DIGEST + '"}',  # not an integer
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"' + DIGEST + '"} ',  # trailing space: still JSON
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"' + DIGEST + '"}x',  # trailing garbage
])
def test_a_bad_header_is_refused_as_parse_message_refuses_it(text: str) -> None:
    try:
        expected: object = p.parse_message(text, p.PROTOCOL_V2)
    except p.ProtocolError as exc:
        expected = (type(exc), exc.code)
    try:
        got: object = parse_frame(text)
    except p.ProtocolError as exc:
        got = (type(exc), exc.code)
    assert got == expected


# --- the forwarding path on a real relay (relay.service.ChunkForwarder) ------------------------------------------
#
# While a room streams, a chunk's header and payload are forwarded from the sender's connection as they arrive,
# not through the sender's task. These run a keyed room on a real relay with raw parties and check what each
# party sees: every chunk through that path, a bad chunk ending the room with a close frame for everyone, and a
# header that was waiting for its payload still reaching the room when the sender goes.

CHUNK = 1024


async def streaming(relay_url: str, chunks: int) -> tuple[KeyedRoom, list[bytes]]:
    """A keyed room with its epoch open for ``chunks`` chunks of ``CHUNK`` plaintext bytes; their ciphertexts."""
    room = await open_room_v2(relay_url)
    plaintext = os.urandom(CHUNK * chunks)
    sealer, plan = await start_v2(room, p.Offer((p.FileEntry("f", len(plaintext)),), (), CHUNK), CHUNK)
    sealed = [sealer.seal_next(plaintext[pos.offset : pos.offset + pos.length]) for pos in plan.positions()]
    return room, sealed


async def receives_in_order(receiver: RawPeer, sealed: list[bytes]) -> None:
    """``receiver`` gets each of ``sealed`` in order, each behind its canonical header."""
    for data in sealed:
        assert await receiver.expect("chunk") == {"type": "chunk", "epoch": 0, "size": len(data),
                                                  "xxh3_64": p.chunk_digest(data)}
        assert await receiver.recv() == data


def test_a_streaming_senders_chunks_are_forwarded_from_its_connection(relay_factory, monkeypatch) -> None:
    relay = relay_factory()
    forwarded: list[int] = []
    original = ChunkForwarder.chunk

    def counted(self: ChunkForwarder, text: str, data: bytes) -> None:
        forwarded.append(len(data))
        original(self, text, data)

    monkeypatch.setattr(ChunkForwarder, "chunk", counted)

    async def run() -> None:
        room, sealed = await streaming(relay.ws_url, 50)
        receiver = room.receivers[0]
        for data in sealed:
            await send_sealed(room.sender, data)
        await receives_in_order(receiver, sealed)
        await room.sender.close()
        await receiver.close()

    asyncio.run(run())
    assert len(forwarded) == 50  # each chunk, none through the sender's task


def test_a_bad_chunk_after_forwarded_ones_ends_the_room_with_a_close_frame_for_everyone(relay_factory) -> None:
    relay = relay_factory()
    close = p.ErrorCode.CHECKSUM_MISMATCH.close_code

    async def run() -> None:
        room, sealed = await streaming(relay.ws_url, 4)
        for data in sealed[:2]:
            await send_sealed(room.sender, data)
        # the bad chunk and more frames right behind it, as a sender that does not wait would send them
        await room.sender.send(p.SealedChunk(0, len(sealed[2]), "0" * 16))
        await room.sender.send(sealed[2])
        await room.sender.send(p.End(0))
        for peer in (room.sender, *room.receivers):
            code, seen = await peer.closed()  # fails if a socket is dropped without a close frame
            assert code == close
            assert {"type": "error", "code": "checksum_mismatch",
                    "message": "chunk 2 failed its xxh3_64 check"} in seen

    for _ in range(5):  # the end is decided outside every route: each route must wait for it
        asyncio.run(run())


def test_a_header_waiting_for_its_payload_reaches_the_room_when_the_sender_goes(relay_factory) -> None:
    relay = relay_factory()

    async def run() -> None:
        room, sealed = await streaming(relay.ws_url, 2)
        await send_sealed(room.sender, sealed[0])
        assert await room.receivers[0].expect("chunk")
        await room.receivers[0].recv()
        # A short text frame and the first byte of a binary frame: the relay waits for the rest to forward the
        # two together; the sender then drops its connection. The text must still count.
        text = p.Error("disk_full", "no space left").to_json().encode()
        masked_text = bytes([0x81, 0x80 | len(text)]) + bytes(4) + text  # a zero mask leaves the payload as it is
        transport = room.sender.ws.transport
        transport.write(masked_text + b"\x82")  # one write: both reach the relay in one read
        transport.close()
        code, seen = await room.receivers[0].closed()
        assert seen == [{"type": "error", "code": "disk_full", "message": "no space left", "peer": 0}]
        assert code == p.ErrorCode.DISK_FULL.close_code

    asyncio.run(run())


def wire_chunk(data: bytes, digest: str | None = None) -> bytes:
    """A chunk's header and payload frames as a sender's socket carries them (masked), back to back."""
    text = p.SealedChunk(0, len(data), digest or p.chunk_digest(data)).to_json().encode()
    return client_frame(0x1, text) + client_frame(0x2, data)


def test_chunks_that_arrive_in_one_read_are_forwarded_in_one_pass_in_order_each_checked(relay_factory,
                                                                                         monkeypatch) -> None:
    relay = relay_factory()
    batches: list[int] = []  # chunks per write to the receiver
    checked: list[bytes] = []  # payloads the room checked
    flush, chunk = ChunkForwarder.flush, Room.chunk

    def counted_flush(self: ChunkForwarder) -> None:
        queued = list(self._queued.values())
        if queued:
            batches.append(len(queued[0][1]) // 3)
        flush(self)

    def counted_chunk(self: Room, peer: int, connection: int, text: str, data: bytes, now: float) -> list:
        checked.append(data)
        return chunk(self, peer, connection, text, data, now)

    monkeypatch.setattr(ChunkForwarder, "flush", counted_flush)
    monkeypatch.setattr(Room, "chunk", counted_chunk)

    async def run() -> None:
        room, sealed = await streaming(relay.ws_url, 21)
        receiver = room.receivers[0]
        await send_sealed(room.sender, sealed[0])  # from now on the sender's connection forwards as it reads
        assert await receiver.expect("chunk") and await receiver.recv() == sealed[0]
        room.sender.ws.transport.write(b"".join(map(wire_chunk, sealed[1:])))  # one write: one read at the relay
        await receives_in_order(receiver, sealed[1:])
        await room.sender.close()
        await receiver.close()

    asyncio.run(run())
    assert len(checked) == 21 and sum(batches) == 21 and max(batches) > 1


@pytest.mark.parametrize("chunk,batched", [(1024, False), (16 * 1024, True)])
def test_only_chunks_of_16_kib_or_more_are_read_in_batches_of_256_kib(relay_factory, chunk: int, batched: bool) -> None:
    """A sender of tiny chunks (no client sends them) keeps the small buffer: one read callback never checks
    thousands of them, and its room's memory stays where it was."""
    relay = relay_factory()

    async def run() -> None:
        room = await open_room_v2(relay.ws_url)
        plaintext = os.urandom(chunk * 4)
        sealer, plan = await start_v2(room, p.Offer((p.FileEntry("f", len(plaintext)),), (), chunk), chunk)
        sealed = [sealer.seal_next(plaintext[pos.offset : pos.offset + pos.length]) for pos in plan.positions()]
        receiver = room.receivers[0]
        for data in sealed[:2]:
            await send_sealed(room.sender, data)
            assert await receiver.expect("chunk") and await receiver.recv() == data
        (seats,) = relay.relay.seats.values()
        connection = seats[0].socket._connection
        pair = len(wire_chunk(sealed[1]))  # the wire bytes of one chunk's two frames
        assert connection.frames_in.floor == (fb.BATCH // pair * pair if batched else 0)
        await room.sender.close()
        await receiver.close()

    asyncio.run(run())


def test_a_bad_chunk_in_the_middle_of_a_read_ends_the_room_after_the_chunks_before_it(relay_factory) -> None:
    relay = relay_factory()
    close = p.ErrorCode.CHECKSUM_MISMATCH.close_code

    async def run() -> None:
        room, sealed = await streaming(relay.ws_url, 4)
        receiver = room.receivers[0]
        await send_sealed(room.sender, sealed[0])
        assert await receiver.expect("chunk") and await receiver.recv() == sealed[0]
        room.sender.ws.transport.write(wire_chunk(sealed[1]) + wire_chunk(sealed[2], "0" * 16)
                                       + wire_chunk(sealed[3]) + client_frame(0x1, p.End(0).to_json().encode()))
        assert await receiver.expect("chunk") and await receiver.recv() == sealed[1]
        for peer in (room.sender, receiver):
            code, seen = await peer.closed()
            assert code == close
            assert {"type": "error", "code": "checksum_mismatch", "message": "chunk 2 failed its xxh3_64 check"} in seen
            assert not any(isinstance(m, dict) and m.get("type") == "chunk" for m in seen)  # nothing after it

    asyncio.run(run())


def test_the_per_chunk_cost_benchmark_runs_every_stage(capsys) -> None:
    """``python -m benchmarks.chunkpath`` (docs/design/speed.md section 11) must not rot; no speed is asserted."""
    from benchmarks import chunkpath

    assert chunkpath.main(["--count", "8", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("frame buffer", "take_chunk", "handle(TextFrame)", "Room.chunk", "xxh3_64", "_apply", "wake-up",
                  "forwarding, 1 chunk per read", "forwarding, 3 chunks per read"):
        assert stage in out
