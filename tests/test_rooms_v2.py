"""The version 2 room as a pure state machine (no sockets, injected clock), and the v2 message parser.

The relay sees only opaque values: these tests use placeholder bytes of the right lengths, because checking
them cryptographically is the parties' business (tests/test_e2e.py runs the real thing).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay import protocol as p
from relay.config import Settings
from relay.rooms import (
    BinaryFrame, Close, Effect, Ended, FailedJoin, Joined, JoinRefused, JoinRequest, Room, Rooms, SendBytes, SendText,
    State, TextFrame, TimerFired,
)

SETTINGS = Settings(pairing_timeout=60, idle_timeout=30, offer_timeout=600, max_transfer_bytes=10_000,
                    max_message=64 * 1024)


def b64(size: int, fill: bytes = b"x") -> str:
    return base64.b64encode(fill * size).decode()


PAKE, CONFIRM, KEY, SEALED = b64(33), b64(32), b64(48), b64(40)


def text(peer: int, message: dict[str, Any], connection: int = 0) -> TextFrame:
    return TextFrame(peer, json.dumps(message), connection)


def sent(effects: list[Effect], peer: int) -> list[dict[str, Any] | bytes]:
    out: list[dict[str, Any] | bytes] = []
    for effect in effects:
        if isinstance(effect, SendText) and effect.peer == peer:
            out.append(json.loads(effect.text))
        elif isinstance(effect, SendBytes) and effect.peer == peer:
            out.append(effect.data)
        elif isinstance(effect, Close) and effect.peer == peer and effect.last is not None:
            out.append(json.loads(effect.last))
    return out


def ended(effects: list[Effect]) -> str | None:
    found = [e.outcome for e in effects if isinstance(e, Ended)]
    return found[0] if found else None


def new_room(receivers: int = 1) -> tuple[Rooms, Room]:
    rooms = Rooms(SETTINGS)
    room, sender = rooms.admit(JoinRequest("", "send", str(receivers), "2"), 0.0)
    hello = sent(room.handle(Joined(sender.peer), 0.0), 0)
    assert hello == [{"type": "hello", "version": 2, "role": "send", "peer": 0, "receivers": receivers,
                      "max_message": SETTINGS.max_message, "nameplate": room.code}]
    return rooms, room


def join(rooms: Rooms, room: Room) -> int:
    _, party = rooms.admit(JoinRequest(room.code, "receive", None, "2"), 0.0)
    room.handle(Joined(party.peer), 0.0)
    return party.peer


def key(room: Room, k: int) -> list[Effect]:
    """Run receiver k's keying with the sender to the end; return the effects of the sender's `key`."""
    assert sent(room.handle(text(0, {"type": "pake", "to": k, "data": PAKE}), 0.0), k) == [
        {"type": "pake", "data": PAKE}]
    assert sent(room.handle(text(k, {"type": "pake", "data": PAKE}), 0.0), 0) == [
        {"type": "pake", "data": PAKE, "peer": k}]
    room.handle(text(0, {"type": "confirm", "to": k, "data": CONFIRM}), 0.0)
    assert sent(room.handle(text(k, {"type": "confirm", "data": CONFIRM}), 0.0), 0) == [
        {"type": "confirm", "data": CONFIRM, "peer": k}]
    return room.handle(text(0, {"type": "key", "to": k, "data": KEY}), 0.0)


def paired_room(receivers: int = 1) -> Room:
    rooms, room = new_room(receivers)
    peers = [join(rooms, room) for _ in range(receivers)]
    for k in peers:
        key(room, k)
    assert room.state is State.PAIRED
    return room


def offer(k: int, total: int = 100, files: int = 2) -> dict[str, Any]:
    return {"type": "offer", "to": k, "total_size": total, "files": files, "data": SEALED}


def streaming_room(receivers: int = 1) -> Room:
    room = paired_room(receivers)
    for k in range(1, receivers + 1):
        room.handle(text(0, offer(k)), 0.0)
    for k in range(1, receivers + 1):
        room.handle(text(k, {"type": "accept", "data": SEALED}), 0.0)
    assert room.state is State.STREAMING
    return room


def stream(receivers: int, chunks: int = 2, size: int = 100 + 32) -> dict[str, Any]:
    return {"type": "stream", "epoch": 0, "to": list(range(1, receivers + 1)), "chunks": chunks, "bytes": size,
            "data": [SEALED] * receivers}


def chunk(room: Room, data: bytes) -> list[Effect]:
    room.handle(text(0, {"type": "chunk", "epoch": 0, "size": len(data), "xxh3_64": p.chunk_digest(data)}), 0.0)
    return room.handle(BinaryFrame(0, data, 0), 0.0)


# --- keying -------------------------------------------------------------------------------------------------


def test_paired_comes_only_once_every_receiver_is_in_and_keyed() -> None:
    rooms, room = new_room(2)
    first = join(rooms, room)
    assert room.state is State.WAITING
    assert [m["type"] for m in sent(key(room, first), 0)] == []  # receiver 2 is not even in yet
    second = join(rooms, room)
    assert room.state is State.KEYING
    effects = key(room, second)
    assert sent(effects, second) == [{"type": "key", "data": KEY}]
    assert sent(effects, 0) == [{"type": "paired", "receivers": 2}]
    assert room.state is State.PAIRED


@pytest.mark.parametrize("step", [
    {"type": "confirm", "to": 1, "data": CONFIRM},  # before either PAKE message
    {"type": "key", "to": 1, "data": KEY},  # before the confirmations
    {"type": "pake", "to": 2, "data": PAKE},  # to a receiver that is not in the room
    {"type": "pake", "data": PAKE},  # no `to`
])
def test_keying_out_of_order_or_misaddressed_ends_the_room(step: dict[str, Any]) -> None:
    rooms, room = new_room(1)
    join(rooms, room)
    effects = room.handle(text(0, step), 0.0)
    assert ended(effects) == "unexpected_message"


def test_a_receivers_confirmation_before_the_senders_is_refused() -> None:
    rooms, room = new_room(1)
    k = join(rooms, room)
    room.handle(text(0, {"type": "pake", "to": k, "data": PAKE}), 0.0)
    room.handle(text(k, {"type": "pake", "data": PAKE}), 0.0)
    assert ended(room.handle(text(k, {"type": "confirm", "data": CONFIRM}), 0.0)) == "unexpected_message"


def test_an_offer_before_keying_is_refused() -> None:
    rooms, room = new_room(1)
    join(rooms, room)
    assert ended(room.handle(text(0, offer(1)), 0.0)) == "unexpected_message"


@pytest.mark.parametrize("who", [0, 1])
def test_wrong_code_ends_the_room_for_everyone_and_charges_the_receiver(who: int) -> None:
    rooms, room = new_room(1)
    k = join(rooms, room)
    room.handle(text(0, {"type": "pake", "to": k, "data": PAKE}), 0.0)
    message = {"type": "wrong_code", "to": k} if who == 0 else {"type": "wrong_code"}
    effects = room.handle(text(who, message), 0.0)
    assert ended(effects) == "wrong_code"
    assert [e.peer for e in effects if isinstance(e, FailedJoin)] == [k]
    assert {e.peer: e.code for e in effects if isinstance(e, Close)} == {0: 4033, k: 4033}
    for peer in (0, k):
        assert sent(effects, peer)[-1]["message"] == (  # type: ignore[index]
            "the code was wrong; nothing was sent; start again with a new code")


def test_keying_has_the_pairing_deadline() -> None:
    rooms, room = new_room(1)
    join(rooms, room)
    assert room.state is State.KEYING
    assert ended(room.handle(TimerFired(), SETTINGS.pairing_timeout + 1)) == "pairing_timeout"


def test_a_v1_receiver_cannot_join_a_room() -> None:
    rooms, room = new_room(1)
    with pytest.raises(JoinRefused) as refused:
        rooms.admit(JoinRequest(room.code, "receive"), 0.0)
    assert refused.value.code is p.ErrorCode.UNSUPPORTED_VERSION and room.receivers == []


# --- the sealed offer ---------------------------------------------------------------------------------------


def test_each_receiver_gets_its_own_sealed_offer_without_to() -> None:
    room = paired_room(2)
    effects = room.handle(text(0, offer(2)), 0.0)
    assert sent(effects, 2) == [{"type": "offer", "total_size": 100, "files": 2, "data": SEALED}]
    assert sent(effects, 1) == []
    assert room.state is State.OFFERED


def test_offers_with_different_clear_totals_are_refused() -> None:
    room = paired_room(2)
    room.handle(text(0, offer(1)), 0.0)
    assert ended(room.handle(text(0, offer(2, total=99)), 0.0)) == "size_mismatch"


def test_an_offer_over_the_transfer_limit_is_refused() -> None:
    room = paired_room(1)
    assert ended(room.handle(text(0, offer(1, total=SETTINGS.max_transfer_bytes + 1)), 0.0)) == "transfer_too_large"


def test_start_comes_once_every_receiver_accepted() -> None:
    room = paired_room(2)
    room.handle(text(0, offer(1)), 0.0)
    room.handle(text(0, offer(2)), 0.0)
    assert sent(room.handle(text(1, {"type": "accept", "data": SEALED}), 0.0), 0) == [
        {"type": "accept", "data": SEALED, "peer": 1}]
    effects = room.handle(text(2, {"type": "accept"}), 0.0)
    assert sent(effects, 0) == [{"type": "accept", "peer": 2}, {"type": "start"}]


# --- the ciphertext stream ----------------------------------------------------------------------------------


def test_chunks_are_checked_counted_and_fanned_out_and_end_checks_the_totals() -> None:
    room = streaming_room(2)
    effects = room.handle(text(0, stream(2)), 0.0)
    assert sent(effects, 1) == [{"type": "stream", "epoch": 0, "chunks": 2, "bytes": 132, "data": SEALED}]
    first, second = b"a" * 66, b"b" * 66
    assert sent(chunk(room, first), 2)[1] == first
    chunk(room, second)
    effects = room.handle(text(0, {"type": "end", "epoch": 0}), 0.0)
    assert sent(effects, 1) == [{"type": "end", "epoch": 0}]
    assert room.state is State.DONE


def test_an_end_before_every_declared_chunk_is_refused() -> None:
    room = streaming_room(1)
    room.handle(text(0, stream(1)), 0.0)
    chunk(room, b"a" * 66)
    assert ended(room.handle(text(0, {"type": "end", "epoch": 0}), 0.0)) == "size_mismatch"


def test_more_chunks_than_declared_are_refused() -> None:
    room = streaming_room(1)
    room.handle(text(0, stream(1, chunks=1, size=116)), 0.0)
    chunk(room, b"a" * 116)
    chunk(room, b"a" * 16)  # its header already ends the room
    assert room.state is State.ENDED and room.outcome == "size_mismatch"


def test_a_bad_xxh3_of_the_ciphertext_is_refused() -> None:
    room = streaming_room(1)
    room.handle(text(0, stream(1)), 0.0)
    room.handle(text(0, {"type": "chunk", "epoch": 0, "size": 66, "xxh3_64": "0" * 16}), 0.0)
    assert ended(room.handle(BinaryFrame(0, b"a" * 66, 0), 0.0)) == "checksum_mismatch"


@pytest.mark.parametrize("chunks,size", [(1, 15), (2, 31), (103, 103 * 16), (2, 100 + 33)])
def test_stream_totals_that_cannot_carry_the_offer_are_refused(chunks: int, size: int) -> None:
    room = streaming_room(1)
    assert ended(room.handle(text(0, stream(1, chunks, size)), 0.0)) in ("size_mismatch", "malformed_message")


def test_one_epoch_for_every_receiver_in_this_version() -> None:
    room = streaming_room(2)
    assert ended(room.handle(text(0, stream(1)), 0.0)) == "unexpected_message"
    room = streaming_room(1)
    room.handle(text(0, stream(1)), 0.0)
    assert ended(room.handle(text(0, stream(1)), 0.0)) == "unexpected_message"


def test_sealed_messages_are_routed_by_to_and_peer() -> None:
    room = streaming_room(2)
    assert sent(room.handle(text(0, {"type": "sealed", "to": 2, "data": SEALED}), 0.0), 2) == [
        {"type": "sealed", "data": SEALED}]
    assert sent(room.handle(text(1, {"type": "sealed", "data": SEALED}), 0.0), 0) == [
        {"type": "sealed", "data": SEALED, "peer": 1}]


def test_a_receivers_sealed_cancel_reason_goes_to_the_sender_only() -> None:
    room = streaming_room(2)
    effects = room.handle(text(1, {"type": "cancel", "data": SEALED}), 0.0)
    assert sent(effects, 0) == [{"type": "cancel", "data": SEALED, "peer": 1}]
    assert sent(effects, 2) == [{"type": "cancel", "peer": 1}]
    assert ended(effects) == "cancelled"


# --- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    {"type": "pake", "data": b64(32)},  # one byte short
    {"type": "pake", "data": b64(34)},
    {"type": "confirm", "data": b64(33)},
    {"type": "key", "data": b64(47)},
    {"type": "pake", "data": "QUFB" * 11 + "="},  # not a multiple of 4
    {"type": "pake", "data": "!" * 44},
    {"type": "pake", "data": 7},
    {"type": "sealed", "data": b64(15)},  # shorter than a tag
    {"type": "sealed", "data": "A" * (8 * 1024 * 1024)},  # longer than any sealed value, refused before decoding
    {"type": "offer", "to": 1, "total_size": -1, "files": 1, "data": SEALED},
    {"type": "offer", "to": 1, "total_size": 1, "files": 0, "data": SEALED},
    {"type": "offer", "to": 1, "total_size": 1, "files": 100_001, "data": SEALED},
    {"type": "stream", "epoch": 0, "to": [1, 1], "chunks": 1, "bytes": 16, "data": [SEALED, SEALED]},
    {"type": "stream", "epoch": 0, "to": [1], "chunks": 1, "bytes": 16, "data": []},
    {"type": "stream", "epoch": 2**32, "to": [1], "chunks": 1, "bytes": 16, "data": [SEALED]},
    {"type": "chunk", "epoch": 0, "size": 15, "xxh3_64": "0" * 16},
    {"type": "wrong_code", "to": 0},
])
def test_v2_fields_are_bounded(message: dict[str, Any]) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(message), p.PROTOCOL_V2)


def test_v1_only_messages_are_unknown_in_v2() -> None:
    for kind in ("file_done", "done", "file_ok"):
        with pytest.raises(p.UnknownType):
            p.parse_message(json.dumps({"type": kind}), p.PROTOCOL_V2)
