"""A receiver that does not come back within the resume window is dropped and the rest finish (issue 11,
docs/protocol.md section 10): the room state machine, no sockets, injected clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay import protocol as p
from relay.rooms import AllVerified, BinaryFrame, Feed, JoinRefused, Rooms, State, TimerFired
from tests.test_resume_room import (
    connection, gone, messages, receiver_resume, rejoined, resume_room, said, sender_resume, with_shape,
)
from tests.test_rooms_v2 import SEALED, SETTINGS, ended, sent

WINDOW = SETTINGS.resume_window


def catch_up(receivers: list[int], epoch: int = 1) -> dict[str, object]:
    """The sender's next epoch for ``receivers``: one chunk of 4 plaintext bytes."""
    return {"type": "stream", "epoch": epoch, "to": receivers, "chunks": 1, "bytes": 4 + 16,
            "data": [SEALED] * len(receivers)}


def test_a_receiver_not_back_within_the_window_is_dropped_and_the_room_streams_on_for_the_others() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 2), 10.0)
    assert room.handle(TimerFired(), 10.0 + WINDOW - 1) == []
    effects = room.handle(TimerFired(), 10.0 + WINDOW)
    assert ended(effects) is None and room.state is State.STREAMING
    for k in (0, 1, 3):
        assert sent(effects, k) == [{"type": "dropped", "peers": [2]}]
    assert sent(effects, 2) == []  # its seat is closed: nothing is written to it
    party = room.party(2)
    assert party is not None and party.dropped and not party.parked and party.closed


def test_the_next_epoch_names_every_receiver_but_the_dropped_one() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(TimerFired(), WINDOW)
    everyone = room.handle(said(room, 0, catch_up([1, 2, 3])), WINDOW + 1)
    assert ended(everyone) == "unexpected_message"

    _, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(TimerFired(), WINDOW)
    effects = room.handle(said(room, 0, catch_up([1, 3])), WINDOW + 1)
    assert ended(effects) is None and room.state is State.STREAMING
    assert messages(effects, 1) == ["stream"] and messages(effects, 3) == ["stream"] and messages(effects, 2) == []


def test_complete_comes_once_every_receiver_still_in_the_room_verified() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 3), 0.0)
    room.handle(TimerFired(), WINDOW)
    room.handle(said(room, 0, catch_up([1, 2])), WINDOW)
    data = b"c" * 20
    header = {"type": "chunk", "epoch": 1, "size": len(data), "xxh3_64": p.chunk_digest(data)}
    room.handle(said(room, 0, header), WINDOW)
    room.handle(BinaryFrame(0, data, connection(room, 0)), WINDOW)
    room.handle(said(room, 0, {"type": "end", "epoch": 1}), WINDOW)
    assert room.state is State.DONE
    effects = room.handle(said(room, 1, {"type": "verified"}), WINDOW)
    assert not any(isinstance(e, Feed) for e in effects)  # receiver 2 has not verified yet
    effects = room.handle(said(room, 2, {"type": "verified"}), WINDOW)
    assert [e.event for e in effects if isinstance(e, Feed)] == [AllVerified()]  # receiver 3 is not waited for
    effects = room.handle(AllVerified(), WINDOW)
    assert ended(effects) == "complete" and sent(effects, 3) == []


def test_complete_follows_the_drop_at_once_when_the_others_verified_while_it_was_away() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 3), 0.0)
    for k in (1, 2):
        effects = room.handle(said(room, k, {"type": "verified"}), 1.0)
        assert sent(effects, 0) == [{"type": "verified", "peer": k}]
        assert not any(isinstance(e, Feed) for e in effects)  # receiver 3 is still waited for
    effects = room.handle(TimerFired(), WINDOW)
    assert ended(effects) == "complete" and room.state is State.ENDED
    assert sent(effects, 0) == [{"type": "dropped", "peers": [3]}, {"type": "complete"}]
    assert sent(effects, 3) == []


def test_a_receiver_that_verified_and_left_counts_as_still_there() -> None:
    """Receiver 1 verified and closed its socket (``gone_verified``); receiver 2 is away at the window's end with
    the sender there: receiver 2 is dropped and the transfer is complete (receiver 1 has every file)."""
    _, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    room.handle(said(room, 1, {"type": "verified"}), 1.0)
    room.handle(gone(room, 1), 2.0)
    effects = room.handle(TimerFired(), WINDOW)
    assert ended(effects) == "complete"
    assert sent(effects, 0) == [{"type": "dropped", "peers": [2]}, {"type": "complete"}]


def test_every_receiver_away_at_the_windows_end_ends_the_room_as_before() -> None:
    _, room = resume_room(2)
    room.handle(gone(room, 1), 0.0)
    room.handle(gone(room, 2), 1.0)
    effects = room.handle(TimerFired(), WINDOW)
    assert ended(effects) == "peer_left"
    assert "receiver 1, receiver 2 disconnected" in sent(effects, 0)[-1]["message"]


def test_the_sender_away_at_the_windows_end_ends_the_room_as_before() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(gone(room, 0), 1.0)
    effects = room.handle(TimerFired(), WINDOW)
    assert ended(effects) == "peer_left"
    assert "the sender, receiver 2 disconnected" in sent(effects, 1)[-1]["message"]


def test_two_receivers_away_are_dropped_together() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 1), 0.0)
    room.handle(gone(room, 3), 1.0)
    effects = room.handle(TimerFired(), WINDOW)
    assert ended(effects) is None and room.state is State.STREAMING
    assert sent(effects, 0) == [{"type": "dropped", "peers": [1, 3]}]
    assert sent(effects, 2) == [{"type": "dropped", "peers": [1, 3]}]


def test_a_room_parked_from_done_goes_back_to_done() -> None:
    _, room = resume_room(2)
    room.check.chunks_done = room.check.declared_chunks  # type: ignore[union-attr]
    room.check.bytes_done = room.check.declared_bytes  # type: ignore[union-attr]
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    assert room.state is State.DONE
    room.handle(gone(room, 2), 1.0)
    effects = room.handle(TimerFired(), 1.0 + WINDOW)
    assert ended(effects) is None and room.state is State.DONE


def test_a_dropped_receivers_resume_is_refused_with_dropped_and_nothing_changes() -> None:
    rooms, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(TimerFired(), WINDOW)
    before = connection(room, 2)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume(room.code, "receive", receiver_resume(2), WINDOW + 1)
    assert refused.value.code is p.ErrorCode.DROPPED and refused.value.code.close_code == 4035
    assert "receiver 2 did not come back within the resume window" in str(refused.value)
    assert connection(room, 2) == before and room.state is State.STREAMING


def test_a_dropped_receiver_is_told_dropped_after_its_room_ended_not_handed_a_recreated_room() -> None:
    rooms, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    room.handle(said(room, 1, {"type": "verified"}), 1.0)
    assert ended(room.handle(TimerFired(), WINDOW)) == "complete"
    rooms.remove(room)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume(room.code, "receive", with_shape(receiver_resume(2), {"receivers": 2, "total_size": 100,
                                                                          "files": 1}), WINDOW + 5)
    assert refused.value.code is p.ErrorCode.DROPPED and not rooms.by_code
    # Remembered for a window only: later, the nameplate is free again (and such a resume recreates a room).
    rooms.resume(room.code, "receive", with_shape(receiver_resume(2), {"receivers": 2, "total_size": 100,
                                                                       "files": 1}), 2 * WINDOW + 1)
    assert room.code in rooms.by_code and room.code not in rooms.dropped


def test_what_removed_rooms_remember_is_bounded_by_the_room_limit() -> None:
    rooms = Rooms(replace(SETTINGS, max_rooms=3))
    for n in range(5):
        _, room = resume_room(2)
        room.code = str(1000 + n)
        room.handle(gone(room, 2), 0.0)
        room.handle(TimerFired(), WINDOW)
        rooms.remove(room)
    assert sorted(rooms.dropped) == ["1002", "1003", "1004"]  # the oldest forgotten first


def test_events_of_a_dropped_seats_last_connection_are_moot() -> None:
    _, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(TimerFired(), WINDOW)
    assert room.handle(gone(room, 2), WINDOW + 1) == []  # the same drop, seen late: not parked again
    assert room.state is State.STREAMING and not room.party(2).parked  # type: ignore[union-attr]


def test_the_sender_resuming_after_a_drop_proves_the_pairs_still_in_the_room() -> None:
    rooms, room = resume_room(3)
    room.handle(gone(room, 2), 0.0)
    room.handle(TimerFired(), WINDOW)
    room.handle(gone(room, 0), WINDOW + 1)
    # Every pair: the one with the dropped receiver (a sender that has not heard of the drop) is not checked.
    rooms.resume(room.code, "send", sender_resume(3), WINDOW + 2)
    effects = room.handle(rejoined(room, 0), WINDOW + 2)
    assert room.state is State.STREAMING and sent(effects, 1) == [{"type": "resumed", "peer": 0, "parked": []}]
    # Every pair but the dropped one is enough; one that leaves out a receiver still in the room is not.
    room.handle(gone(room, 0), WINDOW + 3)
    tokens = sender_resume(3, 1).tokens
    with pytest.raises(JoinRefused) as refused:
        rooms.resume(room.code, "send", p.Resume(0, tuple(t for t in tokens if t[0] != 3)), WINDOW + 4)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED
    rooms.resume(room.code, "send", p.Resume(0, tuple(t for t in tokens if t[0] != 2)), WINDOW + 4)
    room.handle(rejoined(room, 0), WINDOW + 4)
    assert room.state is State.STREAMING


def test_the_dropped_message_is_checked_like_every_other() -> None:
    assert p.parse_message('{"type":"dropped","peers":[2,3]}') == p.Dropped((2, 3))
    assert p.Dropped((2,)).to_json() == '{"type":"dropped","peers":[2]}'
    for bad in ('{"type":"dropped"}', '{"type":"dropped","peers":[]}', '{"type":"dropped","peers":[0]}',
                '{"type":"dropped","peers":[1001]}', '{"type":"dropped","peers":[2,2]}',
                '{"type":"dropped","peers":"2"}', '{"type":"dropped","peers":[true]}',
                '{"type":"dropped","peers":[1.5]}', '{"type":"dropped","peers":[2],"x":"\\ud800"}'):
        with pytest.raises(p.MalformedMessage):
            p.parse_message(bad)


def test_a_party_cannot_send_dropped() -> None:
    _, room = resume_room(2)
    assert ended(room.handle(said(room, 1, {"type": "dropped", "peers": [2]}), 0.0)) == "unexpected_message"
