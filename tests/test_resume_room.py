"""Resume in the room state machine (protocol 2, docs/protocol.md section 10): parking a dropped seat, proving
it back with a token, the resume window, and the next epoch. No sockets, injected clock."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from relay import protocol as p
from relay.rooms import (
    AllVerified, BinaryFrame, Feed, Gone, JoinRefused, Rejoined, Room, Rooms, State, TextFrame, TimerFired,
)
from tests.test_rooms_v2 import SEALED, SETTINGS, chunk, ended, join, key, new_room, offer, sent, stream, text


def token(seat: str, n: int = 0) -> str:
    """A stand-in resume token (the real ones derive from the pair key: clients/crypto.py)."""
    return hashlib.sha256(f"{seat}/{n}".encode()).hexdigest()


def verifier(hex_token: str) -> str:
    return hashlib.sha256(bytes.fromhex(hex_token)).hexdigest()


def resume_room(receivers: int = 1, register: bool = True) -> tuple[Rooms, Room]:
    """A streaming room whose parties registered their verifiers, with epoch 0 open."""
    rooms, room = new_room(receivers)
    peers = [join(rooms, room) for _ in range(receivers)]
    for k in peers:
        key(room, k)
        if register:
            assert room.handle(said(room, k, {"type": "resume_id", "verifier": verifier(token(f"r{k}"))}), 0.0) == []
            assert room.handle(said(room, 0, {"type": "resume_id", "to": k, "verifier": verifier(token(f"s{k}"))}),
                               0.0) == []
    for k in peers:
        room.handle(said(room, 0, offer(k)), 0.0)
    for k in peers:
        room.handle(said(room, k, {"type": "accept", "data": SEALED}), 0.0)
    room.handle(said(room, 0, stream(receivers)), 0.0)
    assert room.state is State.STREAMING
    return rooms, room


def receiver_resume(k: int, n: int = 0, seat: str | None = None) -> p.Resume:
    message = {"type": "resume", "peer": k, "token": token(seat or f"r{k}", n),
               "next_verifier": verifier(token(seat or f"r{k}", n + 1))}
    resume = p.parse_message(json.dumps(message), p.PROTOCOL_V2)
    assert isinstance(resume, p.Resume)
    return resume


def sender_resume(receivers: int, n: int = 0) -> p.Resume:
    tokens = {str(k): {"token": token(f"s{k}", n), "next_verifier": verifier(token(f"s{k}", n + 1))}
              for k in range(1, receivers + 1)}
    resume = p.parse_message(json.dumps({"type": "resume", "peer": 0, "tokens": tokens}), p.PROTOCOL_V2)
    assert isinstance(resume, p.Resume)
    return resume


def connection(room: Room, k: int) -> int:
    """The number of party k's current connection: 0 at first, one more after each resume."""
    party = room.party(k)
    assert party is not None
    return party.connection


def gone(room: Room, k: int) -> Gone:
    return Gone(k, connection(room, k))


def rejoined(room: Room, k: int) -> Rejoined:
    return Rejoined(k, connection(room, k))


def said(room: Room, k: int, message: dict[str, Any]) -> TextFrame:
    """A text frame from party k on its current connection."""
    return text(k, message, connection(room, k))


def messages(effects: list[Any], peer: int) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "bytes" for m in sent(effects, peer)]


# --- parking -------------------------------------------------------------------------------------------------


def test_a_receiver_that_drops_mid_stream_parks_the_room_and_the_sender_hears_reconnecting() -> None:
    _, room = resume_room(2)
    effects = room.handle(gone(room, 2), 5.0)
    assert room.state is State.PARKED and ended(effects) is None
    assert sent(effects, 0) == [{"type": "reconnecting", "peer": 2}]
    assert sent(effects, 1) == [{"type": "reconnecting", "peer": 2}]
    assert sent(effects, 2) == []


def test_a_drop_seen_twice_parks_once() -> None:
    _, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    assert room.handle(gone(room, 2), 1.0) == []  # a failed send, then the read loop: one drop
    assert room.parked_at == 0.0


def test_nothing_is_forwarded_or_held_for_anyone_while_parked() -> None:
    _, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    effects = chunk(room, b"c" * 40)  # on its way when the room parked: dropped, for everyone
    assert effects == []
    assert room.handle(said(room, 1, {"type": "ack", "epoch": 0, "chunks": 1}), 0.0) == []
    assert room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0) == []
    assert room.state is State.PARKED


def test_a_party_without_a_verifier_leaves_as_before() -> None:
    _, room = resume_room(1, register=False)
    effects = room.handle(gone(room, 1), 0.0)
    assert ended(effects) == "peer_left" and room.state is State.ENDED


def test_a_drop_before_streaming_is_not_parked() -> None:
    rooms, room = new_room(1)
    k = join(rooms, room)
    key(room, k)
    room.handle(said(room, k, {"type": "resume_id", "verifier": verifier(token("r1"))}), 0.0)
    assert ended(room.handle(gone(room, k), 0.0)) == "peer_left"


def test_a_room_whose_only_receiver_is_not_back_within_the_resume_window_ends_with_a_clear_message() -> None:
    _, room = resume_room(1)
    room.handle(gone(room, 1), 10.0)
    assert room.handle(TimerFired(), 10.0 + SETTINGS.resume_window - 1) == []
    effects = room.handle(TimerFired(), 10.0 + SETTINGS.resume_window)
    assert ended(effects) == "peer_left"
    farewell = sent(effects, 0)[-1]
    assert isinstance(farewell, dict) and farewell["code"] == "peer_left"
    assert "receiver 1 disconnected and did not come back within the resume window" in farewell["message"]
    assert sent(effects, 1) == []  # its seat is gone: nothing is written to it


# --- proving a seat ------------------------------------------------------------------------------------------


def test_a_receiver_proves_its_seat_and_the_room_goes_back_to_streaming() -> None:
    rooms, room = resume_room(1)
    room.handle(gone(room, 1), 0.0)
    found, party = rooms.resume(room.code, "receive", receiver_resume(1))
    assert found is room and party.peer == 1 and not party.parked
    effects = room.handle(rejoined(room, 1), 3.0)
    assert room.state is State.STREAMING
    assert sent(effects, 0) == [{"type": "resumed", "peer": 1, "parked": []}]
    assert sent(effects, 1) == [{"type": "resumed", "peer": 1, "parked": []}]


def test_a_wrong_token_is_refused_and_the_seat_stays_parked() -> None:
    rooms, room = resume_room(1)
    room.handle(gone(room, 1), 0.0)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume(room.code, "receive", receiver_resume(1, seat="stranger"))
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED
    assert room.party(1).parked and room.state is State.PARKED  # type: ignore[union-attr]


def test_a_token_is_good_once_and_the_next_one_is_good_after_it() -> None:
    rooms, room = resume_room(1)
    room.handle(gone(room, 1), 0.0)
    rooms.resume(room.code, "receive", receiver_resume(1, 0))
    room.handle(rejoined(room, 1), 0.0)
    room.handle(gone(room, 1), 1.0)
    with pytest.raises(JoinRefused):
        rooms.resume(room.code, "receive", receiver_resume(1, 0))  # replayed
    rooms.resume(room.code, "receive", receiver_resume(1, 1))


def test_a_receivers_token_cannot_take_the_senders_seat_nor_the_reverse() -> None:
    rooms, room = resume_room(1)
    room.handle(gone(room, 0), 0.0)
    with pytest.raises(JoinRefused):
        rooms.resume(room.code, "receive", receiver_resume(1))  # seat 1 is not parked
    stolen = p.Resume(0, ((1, p.SeatToken(token("r1"), verifier(token("x")))),))
    with pytest.raises(JoinRefused):
        rooms.resume(room.code, "send", stolen)
    with pytest.raises(JoinRefused):
        rooms.resume(room.code, "receive", sender_resume(1))  # the sender's seat, asked for as a receiver


def test_the_sender_must_prove_every_pair() -> None:
    rooms, room = resume_room(2)
    room.handle(gone(room, 0), 0.0)
    half = p.Resume(0, ((1, p.SeatToken(token("s1"), verifier(token("s1", 1)))),))
    with pytest.raises(JoinRefused):
        rooms.resume(room.code, "send", half)
    rooms.resume(room.code, "send", sender_resume(2))
    assert room.handle(rejoined(room, 0), 0.0) and room.state is State.STREAMING


def test_an_unknown_nameplate_is_room_not_found() -> None:
    rooms, _ = resume_room(1)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("99999999", "receive", receiver_resume(1))
    assert refused.value.code is p.ErrorCode.ROOM_NOT_FOUND


def test_the_room_waits_for_every_parked_seat() -> None:
    rooms, room = resume_room(3)
    room.handle(gone(room, 1), 0.0)
    room.handle(gone(room, 3), 1.0)
    rooms.resume(room.code, "receive", receiver_resume(1))
    effects = room.handle(rejoined(room, 1), 2.0)
    assert room.state is State.PARKED
    assert sent(effects, 0) == [{"type": "resumed", "peer": 1, "parked": [3]}]
    rooms.resume(room.code, "receive", receiver_resume(3))
    room.handle(rejoined(room, 3), 3.0)
    assert room.state is State.STREAMING


# --- registering verifiers -------------------------------------------------------------------------------------


def test_a_verifier_before_keying_or_twice_is_unexpected() -> None:
    rooms, room = new_room(1)
    k = join(rooms, room)
    effects = room.handle(said(room, k, {"type": "resume_id", "verifier": "0" * 64}), 0.0)
    assert ended(effects) == "unexpected_message"
    _, room = resume_room(1)
    effects = room.handle(said(room, 1, {"type": "resume_id", "verifier": "0" * 64}), 0.0)
    assert ended(effects) == "unexpected_message"


@pytest.mark.parametrize("message", [
    {"type": "resume_id", "verifier": "A" * 64},
    {"type": "resume_id", "verifier": "0" * 63},
    {"type": "resume", "peer": 1, "token": "0" * 64},
    {"type": "resume", "peer": 0, "tokens": {}},
    {"type": "resume", "peer": 0, "tokens": {"01": {"token": "0" * 64, "next_verifier": "0" * 64}}},
    {"type": "resume", "peer": 0, "tokens": {"\u0661": {"token": "0" * 64, "next_verifier": "0" * 64}}},
    {"type": "resume", "peer": 0, "tokens": [1]},
    {"type": "resume", "peer": -1, "token": "0" * 64, "next_verifier": "0" * 64},
])
def test_resume_fields_are_bounded(message: dict[str, Any]) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(message), p.PROTOCOL_V2)


def test_resume_messages_round_trip() -> None:
    for resume in (receiver_resume(4), sender_resume(3)):
        assert p.parse_message(resume.to_json(), p.PROTOCOL_V2) == resume


# --- the next epoch ----------------------------------------------------------------------------------------------


def back(rooms: Rooms, room: Room, k: int = 1) -> None:
    room.handle(gone(room, k), 0.0)
    rooms.resume(room.code, "receive", receiver_resume(k))
    room.handle(rejoined(room, k), 0.0)


def test_after_a_resume_the_sender_opens_a_higher_epoch_and_old_frames_are_dropped() -> None:
    rooms, room = resume_room(1)
    header = p.SealedChunk(0, 40, p.chunk_digest(b"a" * 40))
    room.handle(said(room, 0, header.to_dict()), 0.0)  # header in, payload not yet: then the receiver drops
    back(rooms, room)
    # the abandoned epoch's payload: dropped
    assert room.handle(BinaryFrame(0, b"a" * 40, connection(room, 0)), 0.0) == []
    assert ended(room.handle(said(room, 0, {**stream(1), "epoch": 0}), 0.0)) == "unexpected_message"


def test_the_new_epoch_is_checked_and_forwarded_like_the_first() -> None:
    rooms, room = resume_room(1)
    back(rooms, room)
    effects = room.handle(said(room, 0, {**stream(1, chunks=1, size=66), "epoch": 1}), 0.0)
    assert messages(effects, 1) == ["stream"]
    data = b"d" * 66
    room.handle(said(room, 0, {"type": "chunk", "epoch": 1, "size": 66, "xxh3_64": p.chunk_digest(data)}), 0.0)
    assert messages(room.handle(BinaryFrame(0, data, connection(room, 0)), 0.0), 1) == ["chunk", "bytes"]
    assert messages(room.handle(said(room, 0, {"type": "end", "epoch": 1}), 0.0), 1) == ["end"]
    assert room.state is State.DONE


def test_a_drop_in_done_comes_back_to_done_and_may_open_a_catch_up_epoch() -> None:
    rooms, room = resume_room(1)
    for data in (b"a" * 66, b"b" * 66):
        chunk(room, data)
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    assert room.state is State.DONE
    back(rooms, room)
    assert room.state is State.DONE
    room.handle(said(room, 0, {**stream(1, chunks=1, size=66), "epoch": 1}), 0.0)
    assert room.state is State.STREAMING


def test_every_receiver_verified_while_the_sender_is_away_completes_the_room() -> None:
    _, room = resume_room(1)
    for data in (b"a" * 66, b"b" * 66):
        chunk(room, data)
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    room.handle(gone(room, 0), 0.0)
    assert room.handle(said(room, 1, {"type": "verified"}), 0.0) == [Feed(AllVerified())]
    effects = room.handle(AllVerified(), 0.0)
    assert ended(effects) == "complete"
    assert messages(effects, 1) == ["complete"]


def test_resumes_are_bounded_per_transfer() -> None:
    rooms, room = resume_room(1)
    for n in range(p.MAX_RESUMES):
        room.handle(gone(room, 1), 0.0)
        rooms.resume(room.code, "receive", receiver_resume(1, n))
        room.handle(rejoined(room, 1), 0.0)
    assert ended(room.handle(gone(room, 1), 0.0)) == "resume_refused"


def test_resync_halves_are_forwarded_between_the_pair() -> None:
    rooms, room = resume_room(2)
    back(rooms, room, 2)
    half = "A" * 22 + "=="  # 16 bytes
    effects = room.handle(said(room, 2, {"type": "resync", "half": half}), 0.0)
    assert sent(effects, 0) == [{"type": "resync", "half": half, "peer": 2}] and sent(effects, 1) == []
    effects = room.handle(said(room, 0, {"type": "resync", "to": 2, "half": half}), 0.0)
    assert sent(effects, 2) == [{"type": "resync", "half": half}] and sent(effects, 1) == []
    assert ended(room.handle(said(room, 0, {"type": "resync", "to": 2, "half": "AAAA"}), 0.0)) == "malformed_message"


# --- a relay restart: the room recreated from the first resume (docs/protocol.md section 10.2) -----------------

SHAPE = {"receivers": 2, "total_size": 10, "files": 1}


def with_shape(resume: p.Resume, shape: dict[str, int] | None = None) -> p.Resume:
    data = json.loads(resume.to_json())
    data["room"] = shape or SHAPE
    parsed = p.parse_message(json.dumps(data), p.PROTOCOL_V2)
    assert isinstance(parsed, p.Resume)
    return parsed


def test_a_resume_with_the_room_shape_recreates_a_room_the_relay_does_not_have() -> None:
    rooms = Rooms(SETTINGS)
    room, party = rooms.resume("42", "receive", with_shape(receiver_resume(2)), 7.0)
    assert rooms.by_code["42"] is room and party.peer == 2 and room.recreated is not None
    assert room.state is State.PARKED and room.expected == 2 and room.parked_at == 7.0
    assert [q.peer for q in room.parties if q.parked] == [0, 1]
    effects = room.handle(rejoined(room, 2), 7.0)
    assert sent(effects, 2) == [{"type": "resumed", "peer": 2, "parked": [0, 1]}]


def test_a_recreated_room_records_each_seats_first_claim_and_checks_the_next() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.resume("42", "send", with_shape(sender_resume(2)), 0.0)
    room.handle(rejoined(room, 0), 0.0)
    rooms.resume("42", "receive", with_shape(receiver_resume(1)), 1.0)
    room.handle(rejoined(room, 1), 1.0)
    rooms.resume("42", "receive", with_shape(receiver_resume(2)), 1.0)
    effects = room.handle(rejoined(room, 2), 1.0)
    assert room.state is State.STREAMING and sent(effects, 0) == [{"type": "resumed", "peer": 2, "parked": []}]
    # the recorded verifiers now guard the seats: a drop parks again, and only the next token takes it back
    room.handle(gone(room, 1), 2.0)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "receive", with_shape(receiver_resume(1, seat="stranger")), 3.0)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED
    rooms.resume("42", "receive", with_shape(receiver_resume(1, 1)), 3.0)


def test_the_next_epoch_of_a_recreated_room_is_checked_against_the_shape() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.resume("42", "send", with_shape(sender_resume(2)), 0.0)
    room.handle(rejoined(room, 0), 0.0)
    for k in (1, 2):
        rooms.resume("42", "receive", with_shape(receiver_resume(k)), 0.0)
        room.handle(rejoined(room, k), 0.0)
    too_big = {"type": "stream", "epoch": 5, "chunks": 1, "bytes": 11 + 16, "to": [1, 2], "data": [SEALED, SEALED]}
    assert ended(room.handle(said(room, 0, too_big), 1.0)) == "size_mismatch"
    rooms2 = Rooms(SETTINGS)
    room2, _ = rooms2.resume("42", "send", with_shape(sender_resume(2)), 0.0)
    room2.handle(rejoined(room2, 0), 0.0)
    for k in (1, 2):
        rooms2.resume("42", "receive", with_shape(receiver_resume(k)), 0.0)
        room2.handle(rejoined(room2, k), 0.0)
    fits = {"type": "stream", "epoch": 5, "chunks": 1, "bytes": 4 + 16, "to": [1, 2], "data": [SEALED, SEALED]}
    effects = room2.handle(said(room2, 0, fits), 1.0)
    assert ended(effects) is None and messages(effects, 1) == ["stream"] and room2.state is State.STREAMING


def test_a_resume_whose_shape_differs_from_the_recreated_room_is_refused() -> None:
    rooms = Rooms(SETTINGS)
    rooms.resume("42", "receive", with_shape(receiver_resume(1)), 0.0)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "send", with_shape(sender_resume(3), {**SHAPE, "receivers": 3}), 0.0)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED


def test_a_resume_with_a_shape_for_a_live_room_that_is_not_parked_is_refused() -> None:
    rooms, room = resume_room(1)  # a new transfer holds the nameplate now
    with pytest.raises(JoinRefused) as refused:
        rooms.resume(room.code, "receive", with_shape(receiver_resume(1), {**SHAPE, "receivers": 1}), 0.0)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED


def test_a_recreated_room_nobody_else_comes_back_to_ends_after_the_window() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.resume("42", "receive", with_shape(receiver_resume(1)), 0.0)
    room.handle(rejoined(room, 1), 0.0)
    assert ended(room.handle(TimerFired(), SETTINGS.resume_window - 1)) is None
    effects = room.handle(TimerFired(), SETTINGS.resume_window)
    assert ended(effects) == "peer_left"
    assert "the sender, receiver 2 disconnected and did not come back" in sent(effects, 1)[0]["message"]


def test_a_recreated_room_is_bounded_like_a_new_one() -> None:
    rooms = Rooms(SETTINGS)
    too_many = {**SHAPE, "receivers": SETTINGS.max_receivers + 1}
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "receive", with_shape(receiver_resume(1), too_many), 0.0)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED and not rooms.by_code
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "receive", with_shape(receiver_resume(1), {**SHAPE, "total_size": 10_001}), 0.0)
    assert refused.value.code is p.ErrorCode.TRANSFER_TOO_LARGE and not rooms.by_code


@pytest.mark.parametrize("shape", [
    {"receivers": 0, "total_size": 1, "files": 1},
    {"receivers": 1, "total_size": -1, "files": 1},
    {"receivers": 1, "total_size": 1, "files": 0},
    {"receivers": 1, "total_size": 1},
    [1, 1, 1],
    {"receivers": 1, "total_size": 1, "files": 1.5},
])
def test_a_bad_room_shape_is_malformed(shape: object) -> None:
    data = json.loads(receiver_resume(1).to_json())
    data["room"] = shape
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)


def test_a_shape_that_disagrees_with_the_seat_or_the_tokens_is_malformed() -> None:
    data = json.loads(receiver_resume(3).to_json()) | {"room": SHAPE}  # receiver 3 of a room of 2
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)
    data = json.loads(sender_resume(3).to_json()) | {"room": SHAPE}  # tokens for 3 receivers, shape says 2
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)


def test_the_room_shape_round_trips() -> None:
    resume = with_shape(sender_resume(2))
    assert p.parse_message(resume.to_json(), p.PROTOCOL_V2) == resume
    assert json.loads(resume.to_json())["room"] == SHAPE


def test_a_sender_that_drops_between_a_header_and_its_payload_can_open_the_next_epoch() -> None:
    rooms, room = resume_room(1)
    payload = b"p" * 66
    header = {"type": "chunk", "epoch": 0, "size": len(payload), "xxh3_64": p.chunk_digest(payload)}
    room.handle(said(room, 0, header), 0.0)
    room.handle(gone(room, 0), 1.0)  # the payload died with the sender's socket
    rooms.resume(room.code, "send", sender_resume(1))
    room.handle(rejoined(room, 0), 2.0)
    effects = room.handle(said(room, 0, {**stream(1), "epoch": 1}), 3.0)
    assert ended(effects) is None and messages(effects, 1) == ["stream"]
    effects = chunk_of_epoch(room, 1, payload)
    assert ended(effects) is None and messages(effects, 1) == ["chunk", "bytes"]


def chunk_of_epoch(room: Room, epoch: int, data: bytes) -> list[Any]:
    header = {"type": "chunk", "epoch": epoch, "size": len(data), "xxh3_64": p.chunk_digest(data)}
    room.handle(said(room, 0, header), 0.0)
    return room.handle(BinaryFrame(0, data, connection(room, 0)), 0.0)


# --- a replaced connection: once a seat is taken back, nothing of its old socket counts ----------------------


def test_the_old_connections_close_after_the_seat_was_taken_back_is_ignored() -> None:
    """The old socket's reading loop (or its route ending) reports the drop late: the seat is the new socket's."""
    rooms, room = resume_room(1)
    back(rooms, room)
    assert connection(room, 1) == 1
    assert room.handle(Gone(1, 0), 1.0) == []
    assert room.state is State.STREAMING and not room.party(1).parked  # type: ignore[union-attr]
    assert room.handle(Gone(1, 1), 2.0) != [] and room.state is State.PARKED  # the new one's drop still counts


def test_frames_still_queued_on_the_old_connection_are_ignored() -> None:
    """What the old socket held when a send to it failed is read as its party's: an old ``error`` or ``ack``
    must not end or steer the room the resumed party is back in."""
    rooms, room = resume_room(1)
    back(rooms, room)
    for stale in ({"type": "ack", "epoch": 0, "chunks": 3}, {"type": "error", "code": "tampered", "message": "x"},
                  {"type": "cancel"}):
        assert room.handle(text(1, stale, 0), 1.0) == []
    assert room.state is State.STREAMING


def test_the_old_senders_frames_after_it_took_its_seat_back_are_ignored() -> None:
    rooms, room = resume_room(1)
    room.handle(gone(room, 0), 0.0)
    rooms.resume(room.code, "send", sender_resume(1))
    room.handle(rejoined(room, 0), 0.0)
    data = b"o" * 66
    header = {"type": "chunk", "epoch": 0, "size": len(data), "xxh3_64": p.chunk_digest(data)}
    assert room.handle(text(0, header, 0), 1.0) == [] and room.handle(BinaryFrame(0, data, 0), 1.0) == []
    assert room.check is not None and room.check.pending is None  # nothing of it reached the stream check
    effects = room.handle(said(room, 0, {**stream(1), "epoch": 1}), 2.0)
    assert ended(effects) is None and messages(effects, 1) == ["stream"]


def test_what_the_room_decides_names_the_connection_it_is_for() -> None:
    """A chunk decided before a drop is for the receiver's old connection: once the receiver is back on a new
    one, the service finds that connection no longer reachable and skips it, so a chunk of the abandoned epoch
    never reaches the resumed receiver; what is decided after is for the new connection."""
    rooms, room = resume_room(1)
    before = chunk(room, b"c" * 66)
    assert {(type(e).__name__, e.peer, e.connection) for e in before} == {("SendText", 1, 0), ("SendBytes", 1, 0)}
    back(rooms, room)
    assert not room.reachable(1, 0) and room.reachable(1, 1)
    effects = room.handle(said(room, 0, {**stream(1), "epoch": 1}), 1.0)
    assert [(type(e).__name__, e.peer, e.connection) for e in effects] == [("SendText", 1, 1)]


def test_a_stale_rejoin_is_ignored() -> None:
    rooms, room = resume_room(1)
    back(rooms, room)
    assert room.handle(Rejoined(1, 0), 1.0) == []


# --- a party that closes its socket has left: only a drop parks (docs/protocol.md section 10) ----------------


def test_a_party_that_closes_its_socket_mid_stream_has_left_and_is_not_parked() -> None:
    """A tab closed (1001) or a client that quit (1000) mid-transfer: the others hear ``peer_left`` at once instead
    of waiting out the resume window for a party that is not coming back."""
    _, room = resume_room(2)
    effects = room.handle(Gone(2, 0, left=True), 5.0)
    assert ended(effects) == "peer_left" and room.state is State.ENDED
    assert sent(effects, 0) == [{"type": "peer_left", "peer": 2, "role": "receive"}]
    assert messages(effects, 1) == ["peer_left"] and sent(effects, 2) == []


def test_a_sender_that_closes_its_socket_in_done_has_left() -> None:
    _, room = resume_room(1)
    for data in (b"a" * 66, b"b" * 66):
        chunk(room, data)
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    effects = room.handle(Gone(0, 0, left=True), 1.0)
    assert ended(effects) == "peer_left" and sent(effects, 1) == [{"type": "peer_left", "peer": 0, "role": "send"}]


def test_a_close_seen_after_a_failed_send_parked_the_seat_ends_the_room() -> None:
    """The send to it failed first (parked), then its reading side found its close frame: it left after all."""
    _, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    assert room.state is State.PARKED
    effects = room.handle(Gone(2, 0, left=True), 1.0)
    assert ended(effects) == "peer_left" and messages(effects, 0) == ["peer_left"]


def test_a_party_that_leaves_while_another_is_parked_ends_the_room() -> None:
    _, room = resume_room(2)
    room.handle(gone(room, 2), 0.0)
    effects = room.handle(Gone(1, 0, left=True), 1.0)
    assert ended(effects) == "peer_left" and messages(effects, 0) == ["peer_left"]


# --- a receiver that verified has nothing to resume ------------------------------------------------------------


@pytest.mark.parametrize("left", [False, True], ids=["drop", "close"])
def test_a_receiver_that_verified_and_then_loses_its_connection_is_not_waited_for(left: bool) -> None:
    """It holds every file: neither parked (the others would wait out the window for a seat nobody will claim,
    the CLI and the page keep their files once they verified) nor a reason to end the room for the others."""
    _, room = resume_room(2)
    for data in (b"a" * 66, b"b" * 66):
        chunk(room, data)
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    room.handle(said(room, 1, {"type": "verified"}), 0.0)
    effects = room.handle(Gone(1, connection(room, 1), left), 0.0)
    assert effects == [] and room.state is State.DONE  # nobody hears `reconnecting` or `peer_left`
    assert room.handle(said(room, 2, {"type": "verified"}), 0.0)[-1] == Feed(AllVerified())
    effects = room.handle(AllVerified(), 0.0)
    assert ended(effects) == "complete"
    assert messages(effects, 0) == messages(effects, 2) == ["complete"] and messages(effects, 1) == []


def test_a_verified_receiver_dropping_while_another_catches_up_leaves_the_catch_up_alone() -> None:
    rooms, room = resume_room(2)
    for data in (b"a" * 66, b"b" * 66):
        chunk(room, data)
    room.handle(said(room, 0, {"type": "end", "epoch": 0}), 0.0)
    room.handle(said(room, 1, {"type": "verified"}), 0.0)
    room.handle(gone(room, 2), 0.0)  # receiver 2 drops before it verified: parked
    assert room.state is State.PARKED
    assert room.handle(gone(room, 1), 0.0) == [] and room.state is State.PARKED
    receiver_2 = room.party(2)
    rooms.resume(room.code, "receive", receiver_resume(2))
    assert receiver_2 is not None and not receiver_2.parked
    room.handle(rejoined(room, 2), 0.0)
    assert room.state is State.DONE  # back where it parked from; the sender opens receiver 2's catch-up epoch


# --- after a restart, receivers that had verified are not waited for --------------------------------------------


def with_listed(resume: p.Resume, **lists: object) -> p.Resume:
    """``resume`` with the room's shape and the sender's ``verified`` and/or ``dropped`` lists, parsed."""
    data = json.loads(with_shape(resume).to_json()) | lists
    parsed = p.parse_message(json.dumps(data), p.PROTOCOL_V2)
    assert isinstance(parsed, p.Resume)
    return parsed


def recreated_with_receiver_2_back(**lists: object) -> tuple[Rooms, Room, list[Any]]:
    """A relay restarted: receiver 2 takes its seat back first (recreating the room), then the sender, whose
    resume carries ``lists``; returns the rooms, the room and the effects of the sender's return."""
    rooms = Rooms(SETTINGS)
    room, _ = rooms.resume("42", "receive", with_shape(receiver_resume(2)), 0.0)
    room.handle(rejoined(room, 2), 0.0)
    rooms.resume("42", "send", with_listed(sender_resume(2), **lists), 1.0)
    effects = room.handle(rejoined(room, 0), 1.0)
    assert room.state is State.STREAMING  # nobody away: the sender opens receiver 2's catch-up epoch
    assert sent(effects, 2) == [{"type": "resumed", "peer": 0, "parked": []}]
    return rooms, room, effects


def catch_up_completes_for_receiver_2_alone(room: Room, to: list[int]) -> None:
    """The sender's catch-up epoch (its ``stream`` names ``to``) reaches receiver 2 only, and its ``verified``
    completes the room."""
    epoch = {"type": "stream", "epoch": 1, "chunks": 1, "bytes": 4 + 16, "to": to, "data": [SEALED] * len(to)}
    effects = room.handle(said(room, 0, epoch), 2.0)
    assert messages(effects, 2) == ["stream"] and messages(effects, 1) == []
    chunk_effects = room.handle(said(room, 0, {"type": "chunk", "epoch": 1, "size": 20,
                                               "xxh3_64": p.chunk_digest(b"q" * 20)}), 2.0)
    chunk_effects += room.handle(BinaryFrame(0, b"q" * 20, connection(room, 0)), 2.0)
    assert {e.peer for e in chunk_effects if hasattr(e, "peer")} == {2}
    room.handle(said(room, 0, {"type": "end", "epoch": 1}), 2.0)
    assert room.handle(said(room, 2, {"type": "verified"}), 3.0)[-1] == Feed(AllVerified())
    assert ended(room.handle(AllVerified(), 3.0)) == "complete"


def test_a_recreated_room_does_not_wait_for_a_receiver_the_sender_says_verified() -> None:
    """Receiver 1 verified before the relay died (its client ended with its files and never resumes); receiver
    2 had not. Without the sender's list the recreated room waited out the window for seat 1."""
    _, room, _ = recreated_with_receiver_2_back(verified=[1])
    receiver_1 = room.party(1)
    assert receiver_1 is not None and receiver_1.verified and receiver_1.closed and not receiver_1.parked
    catch_up_completes_for_receiver_2_alone(room, [1, 2])


def test_the_verified_list_is_ignored_by_a_room_that_was_not_recreated() -> None:
    rooms, room = resume_room(2)
    room.handle(gone(room, 0), 1.0)
    room.handle(gone(room, 1), 1.0)  # receiver 1 had not verified: it is parked and must be waited for
    rooms.resume(room.code, "send", with_listed(sender_resume(2), verified=[1]))
    receiver_1 = room.party(1)
    assert receiver_1 is not None and receiver_1.parked and not receiver_1.verified


@pytest.mark.parametrize("field", ["verified", "dropped"])
@pytest.mark.parametrize("listed", [[3], [1, 1], ["1"], [True], 1, {"1": True}, [1, 2, 3]])
def test_a_bad_verified_or_dropped_list_is_malformed(field: str, listed: object) -> None:
    data = json.loads(with_shape(sender_resume(2)).to_json()) | {field: listed}
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)


@pytest.mark.parametrize("field", ["verified", "dropped"])
def test_only_the_sender_says_who_verified_or_was_dropped(field: str) -> None:
    data = json.loads(with_shape(receiver_resume(1)).to_json()) | {field: [2]}
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)


def test_a_receiver_is_not_both_verified_and_dropped() -> None:
    data = json.loads(with_shape(sender_resume(2)).to_json()) | {"verified": [1], "dropped": [1]}
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data), p.PROTOCOL_V2)


def test_the_verified_and_dropped_lists_round_trip_and_are_left_out_when_empty() -> None:
    resume = with_listed(sender_resume(2), verified=[2, 1])
    assert resume.verified == (1, 2) and p.parse_message(resume.to_json(), p.PROTOCOL_V2) == resume
    resume = with_listed(sender_resume(2), dropped=[2, 1])
    assert resume.dropped == (1, 2) and p.parse_message(resume.to_json(), p.PROTOCOL_V2) == resume
    plain = json.loads(with_shape(sender_resume(2)).to_json())
    assert "verified" not in plain and "dropped" not in plain


# --- after a restart, receivers the relay had dropped are not waited for again ----------------------------------


def test_a_recreated_room_closes_the_seats_of_receivers_the_sender_says_were_dropped() -> None:
    """Receiver 1 had been dropped (it did not come back within the window) and receiver 2 was mid-transfer when
    the relay died. Without the sender's list the recreated room waited out a whole new window for seat 1 and
    dropped it again; now seat 1 is closed at once, its resume is refused with ``dropped``, and the transfer goes
    on for receiver 2 alone."""
    rooms, room, _ = recreated_with_receiver_2_back(dropped=[1])
    receiver_1 = room.party(1)
    assert receiver_1 is not None and receiver_1.dropped and not receiver_1.parked and room.staying == [room.party(2)]
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "receive", with_shape(receiver_resume(1)), 2.0)
    assert refused.value.code is p.ErrorCode.DROPPED
    catch_up_completes_for_receiver_2_alone(room, [2])


def test_a_sender_claim_that_fails_its_proof_drops_nobody() -> None:
    """The list is taken only from a proved claim: a resume of the sender's seat with a wrong token (here after
    the sender's own claim recorded its verifiers) is refused and leaves every seat as it was."""
    rooms = Rooms(SETTINGS)
    room, _ = rooms.resume("42", "receive", with_shape(receiver_resume(2)), 0.0)
    room.handle(rejoined(room, 2), 0.0)
    rooms.resume("42", "send", with_shape(sender_resume(2)), 1.0)  # receiver 1 is still away
    room.handle(rejoined(room, 0), 1.0)
    room.handle(gone(room, 0), 2.0)
    with pytest.raises(JoinRefused) as refused:
        rooms.resume("42", "send", with_listed(sender_resume(2, n=5), dropped=[1]), 3.0)
    assert refused.value.code is p.ErrorCode.RESUME_REFUSED
    receiver_1 = room.party(1)
    assert receiver_1 is not None and receiver_1.parked and not receiver_1.dropped and room.dropped_at is None


def test_the_dropped_list_is_ignored_by_a_room_that_was_not_recreated() -> None:
    """A live room knows whom it dropped; a sender's list cannot close a seat that is still waited for there."""
    rooms, room = resume_room(2)
    room.handle(gone(room, 0), 1.0)
    room.handle(gone(room, 1), 1.0)
    rooms.resume(room.code, "send", with_listed(sender_resume(2), dropped=[1]))
    receiver_1 = room.party(1)
    assert receiver_1 is not None and receiver_1.parked and not receiver_1.dropped
