"""``Room.chunk`` (a chunk header and its payload in one call) decides exactly what ``Room.handle`` decides for
the two frames one after the other: the same effects, the same state, the same stream counts, the same error.

Each case runs on two rooms brought to the same point; one is given the frames through ``chunk``, the other
through ``handle(TextFrame)`` then ``handle(BinaryFrame)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from relay import protocol as p
from relay.rooms import BinaryFrame, Effect, Gone, Rejoined, Room, SendBytes, SendText, State, TextFrame
from tests.test_rooms_v2 import stream, streaming_room, text

PAYLOAD = b"c" * 66  # a stream of 2 chunks of 66 bytes: 132 bytes, as `stream` declares


def header(data: bytes = PAYLOAD, epoch: int = 0, size: int | None = None, digest: str | None = None) -> str:
    """A chunk header in the canonical form every sender writes."""
    return p.SealedChunk(epoch, len(data) if size is None else size, digest or p.chunk_digest(data)).to_json()


def opened(receivers: int = 1) -> Room:
    room = streaming_room(receivers)
    room.handle(text(0, stream(receivers)), 0.0)
    return room


def snapshot(room: Room) -> dict[str, Any]:
    """What a room's decisions change: its state, its outcome, its stream counts, each party's flags."""
    return {"state": room.state, "outcome": room.outcome, "last_activity": room.last_activity,
            "check": dataclasses.asdict(room.check) if room.check else None,
            "parties": [dataclasses.asdict(party) for party in room.parties]}


def both_ways(prepare: Callable[[], Room], peer: int, frame_text: str, data: bytes, now: float = 5.0,
              connection: int = 0) -> tuple[list[Effect], Room]:
    """Run the two frames through ``chunk`` and through ``handle`` twice; assert they agree; return one result."""
    fast, general = prepare(), prepare()
    got = fast.chunk(peer, connection, frame_text, data, now)
    expected = (general.handle(TextFrame(peer, frame_text, connection), now)
                + general.handle(BinaryFrame(peer, data, connection), now))
    assert got == expected
    assert snapshot(fast) == snapshot(general)
    return got, fast


def test_a_chunk_is_checked_counted_and_forwarded_to_every_receiver() -> None:
    effects, room = both_ways(lambda: opened(2), 0, header(), PAYLOAD)
    forwarded = p.SealedChunk(0, 66, p.chunk_digest(PAYLOAD)).to_json()
    assert effects == [SendText(1, forwarded, 0), SendBytes(1, PAYLOAD, 0), SendText(2, forwarded, 0),
                       SendBytes(2, PAYLOAD, 0)]
    assert room.check is not None and (room.check.chunks_done, room.check.bytes_done) == (1, 66)
    assert room.last_activity == 5.0


def test_a_chunk_is_not_forwarded_to_a_receiver_that_is_gone() -> None:
    def prepare() -> Room:
        room = opened(2)
        room.receivers[0].closed = room.receivers[0].gone = True  # as after its farewell was decided
        return room

    effects, _ = both_ways(prepare, 0, header(), PAYLOAD)
    assert {effect.peer for effect in effects if isinstance(effect, SendText | SendBytes)} == {2}


@pytest.mark.parametrize("case,frame_text,data,outcome", [
    ("checksum", header(digest="0" * 16), PAYLOAD, "checksum_mismatch"),
    ("payload longer than its header", header(size=66), PAYLOAD + b"x", "size_mismatch"),
    ("past the declared bytes", header(b"c" * 200), b"c" * 200, "size_mismatch"),
    ("an epoch that is not open", header(epoch=1), PAYLOAD, "unexpected_message"),
    ("shorter than a tag", header(b"c" * 15), b"c" * 15, "malformed_message"),
    ("a header with spaces (the general parser)", header().replace(",", ", "), PAYLOAD, None),
    ("not a chunk header", '{"type":"end","epoch":0}', PAYLOAD, "size_mismatch"),
    ("not JSON", '{"type":"chunk"', PAYLOAD, "malformed_message"),
])
def test_a_bad_chunk_ends_the_room_as_handle_ends_it(case: str, frame_text: str, data: bytes,
                                                    outcome: str | None) -> None:
    _, room = both_ways(opened, 0, frame_text, data)
    assert room.outcome == (outcome or "")


def test_a_receiver_may_not_send_chunks() -> None:
    _, room = both_ways(opened, 1, header(), PAYLOAD)
    assert room.state is State.ENDED and room.outcome == "unexpected_message"


def test_a_chunk_before_the_stream_opens_is_refused() -> None:
    _, room = both_ways(streaming_room, 0, header(), PAYLOAD)
    assert room.outcome == "unexpected_message"


def test_a_chunk_when_a_header_is_already_pending_is_refused() -> None:
    def prepare() -> Room:
        room = opened()
        room.handle(TextFrame(0, header(), 0), 0.0)
        return room

    _, room = both_ways(prepare, 0, header(), PAYLOAD)
    assert room.outcome == "unexpected_message"


def test_in_a_parked_room_the_general_rules_apply() -> None:
    def prepare() -> Room:
        room = opened(2)
        for party in room.parties:  # every seat registered its verifier: a drop parks the room
            party.verifier = party.sender_verifier = "0" * 64
        room.handle(Gone(2, 0), 1.0)
        assert room.state is State.PARKED
        return room

    effects, room = both_ways(prepare, 0, header(), PAYLOAD)
    assert room.state is State.PARKED and effects == []  # the reopened epoch's chunk is dropped


def test_a_chunk_of_the_last_epoch_after_a_resume_is_dropped_until_the_new_stream() -> None:
    def prepare() -> Room:
        room = opened(1)
        for party in room.parties:
            party.verifier = party.sender_verifier = "0" * 64
        room.handle(Gone(1, 0), 1.0)
        room.receivers[0].parked = room.receivers[0].gone = room.receivers[0].closed = False
        room.receivers[0].connection = 1  # as Rooms.resume numbers the new socket
        room.handle(Rejoined(1, 1), 2.0)
        assert room.state is State.STREAMING and room.check is not None and room.check.reopened
        return room

    effects, room = both_ways(prepare, 0, header(), PAYLOAD)
    assert effects == [] and room.state is State.STREAMING


def test_a_chunk_in_an_ended_room_does_nothing() -> None:
    def prepare() -> Room:
        room = opened()
        room.handle(Gone(1, 0), 1.0)
        return room

    effects, room = both_ways(prepare, 0, header(), PAYLOAD)
    assert effects == [] and room.outcome == "peer_left"


def test_a_chunk_from_a_sender_connection_replaced_by_a_resume_is_moot() -> None:
    def prepare() -> Room:
        room = opened(2)
        room.parties[0].connection = 1  # the sender took its seat back on a new socket
        return room

    effects, room = both_ways(prepare, 0, header(), PAYLOAD, connection=0)
    assert effects == [] and room.state is State.STREAMING
    assert room.check is not None and room.check.chunks_done == 0


def test_a_chunk_goes_to_each_receiver_s_current_connection() -> None:
    def prepare() -> Room:
        room = opened(2)
        room.receivers[1].connection = 3  # receiver 2 resumed three times
        return room

    effects, _ = both_ways(prepare, 0, header(), PAYLOAD)
    assert [(e.peer, e.connection) for e in effects if isinstance(e, SendText)] == [(1, 0), (2, 3)]
