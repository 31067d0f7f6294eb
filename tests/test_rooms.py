"""Room admission and expiry decisions, with no sockets and a fake clock."""

from __future__ import annotations

import pytest

from relay.config import Settings
from relay.protocol import ErrorCode
from relay.rooms import JoinRefused, JoinRequest, Rooms, State, code_tag


class NoSocket:
    """Admission never touches the socket; any use would be a bug."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"admission used socket.{name}")


def refused(rooms: Rooms, request: JoinRequest) -> ErrorCode:
    with pytest.raises(JoinRefused) as caught:
        rooms.admit(request, NoSocket(), now=0.0)
    return caught.value.code


def test_a_sender_opens_a_room_waiting_for_its_receivers() -> None:
    rooms = Rooms(Settings())
    room, party = rooms.admit(JoinRequest("abc", "send", "3"), NoSocket(), now=0.0)
    assert party.peer == 0 and room.expected == 3 and room.state is State.WAITING and len(rooms) == 1


def test_receivers_are_numbered_in_join_order() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send", "2"), NoSocket(), now=0.0)
    _, first = rooms.admit(JoinRequest("abc", "receive"), NoSocket(), now=0.0)
    _, second = rooms.admit(JoinRequest("abc", "receive"), NoSocket(), now=0.0)
    assert (first.peer, second.peer) == (1, 2)


def test_a_receiver_for_an_unknown_room_is_refused() -> None:
    assert refused(Rooms(Settings()), JoinRequest("nobody-here", "receive")) is ErrorCode.ROOM_NOT_FOUND


def test_a_receiver_beyond_the_expected_number_is_refused() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=0.0)
    rooms.admit(JoinRequest("abc", "receive"), NoSocket(), now=0.0)
    assert refused(rooms, JoinRequest("abc", "receive")) is ErrorCode.ROOM_FULL


def test_a_second_sender_is_refused() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=0.0)
    assert refused(rooms, JoinRequest("abc", "send")) is ErrorCode.ROOM_TAKEN


@pytest.mark.parametrize(
    "request_",
    [
        JoinRequest("abc", None),
        JoinRequest("abc", "spectate"),
        JoinRequest("abc", "send", "0"),
        JoinRequest("abc", "send", "-1"),
        JoinRequest("abc", "send", "many"),
        JoinRequest("abc", "send", "9"),
        JoinRequest("abc", "receive", "2"),
        JoinRequest("Bad Code", "send"),
        JoinRequest("x" * 129, "send"),
    ],
)
def test_bad_requests_are_refused(request_: JoinRequest) -> None:
    assert refused(Rooms(Settings(max_receivers=8)), request_) is ErrorCode.BAD_REQUEST


def test_an_unknown_protocol_version_is_refused() -> None:
    assert refused(Rooms(Settings()), JoinRequest("abc", "send", None, "2")) is ErrorCode.UNSUPPORTED_VERSION


def test_rooms_beyond_the_limit_are_refused() -> None:
    rooms = Rooms(Settings(max_rooms=1))
    rooms.admit(JoinRequest("one", "send"), NoSocket(), now=0.0)
    assert refused(rooms, JoinRequest("two", "send")) is ErrorCode.TOO_MANY_ROOMS


def test_a_room_that_never_pairs_expires_after_the_pairing_timeout() -> None:
    rooms = Rooms(Settings(pairing_timeout=60))
    room, _ = rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=100.0)
    assert rooms.expired(now=159.0) == []
    assert rooms.expired(now=160.0) == [(room, ErrorCode.PAIRING_TIMEOUT)]


def test_a_paired_room_expires_only_when_idle() -> None:
    rooms = Rooms(Settings(pairing_timeout=60, idle_timeout=30))
    room, _ = rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=0.0)
    room.state = State.STREAMING
    room.last_activity = 100.0
    assert rooms.expired(now=129.0) == []
    assert rooms.expired(now=130.0) == [(room, ErrorCode.IDLE_TIMEOUT)]


def test_a_removed_room_frees_its_code() -> None:
    rooms = Rooms(Settings())
    room, _ = rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=0.0)
    rooms.remove(room)
    rooms.admit(JoinRequest("abc", "send"), NoSocket(), now=0.0)
    assert len(rooms) == 1


def test_logs_name_rooms_by_a_short_hash_not_the_code() -> None:
    tag = code_tag("actor-table-ocean-ring")
    assert len(tag) == 8 and "actor" not in tag
