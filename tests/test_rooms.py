"""The room as a state machine: admission, every transition and every deadline, with no sockets and a fake clock.

Each test drives ``Room.handle`` with events and reads the effects it returns, the way a test of h11 reads
events: nothing here awaits, and time is whatever number the test passes. The keying, sealed offer and
ciphertext rows have their own tests in ``tests/test_rooms_v2.py``, whose helpers these reuse; this file covers
admission and what every room shares (accepts, verification, ending, deadlines, the table itself).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from relay import protocol as p
from relay.config import Settings
from relay.protocol import ErrorCode
from relay.rooms import (
    TRANSITIONS_V2, AllVerified, BinaryFrame, Close, Crashed, Effect, Ended, Feed, Gone, Joined, JoinRefused,
    JoinRequest, Party, Role, Room, Rooms, SendText, ShuttingDown, State, TextFrame, TimerFired, code_tag,
)
from tests.test_rooms_v2 import SEALED, SETTINGS, chunk, new_room, offer, paired_room, sent, stream
from tests.test_rooms_v2 import streaming_room as accepted_room

ROOT = Path(__file__).resolve().parents[1]


# --- helpers: a room driven by hand ----------------------------------------------------------------------


def text(peer: int, message: p.Message | dict[str, Any], connection: int = 0) -> TextFrame:
    return TextFrame(peer, message.to_json() if isinstance(message, p.Message) else json.dumps(message), connection)


def types(effects: list[Effect], peer: int) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "binary" for m in sent(effects, peer)]


def closes(effects: list[Effect]) -> dict[int, int]:
    return {e.peer: e.code for e in effects if isinstance(e, Close)}


def ended(effects: list[Effect]) -> str | None:
    found = [e.outcome for e in effects if isinstance(e, Ended)]
    assert len(found) <= 1
    return found[0] if found else None


def at(room: Room, now: float) -> Room:
    """Move a room's clocks to ``now``, as if everything so far had happened then."""
    room.created_at = room.last_activity = room.offered_at = now
    return room


def open_room(receivers: int = 1, now: float = 0.0) -> Room:
    """A room whose sender and ``receivers`` receivers have all joined and keyed (PAIRED)."""
    return at(paired_room(receivers), now)


def offered_room(receivers: int = 1, now: float = 0.0) -> Room:
    room = paired_room(receivers)
    for k in range(1, receivers + 1):
        room.handle(text(0, offer(k)), 0.0)
    assert room.state is State.OFFERED
    return at(room, now)


def streaming_room(receivers: int = 1, now: float = 0.0) -> Room:
    """Every receiver accepted and the sender opened the epoch (two chunks, 132 bytes)."""
    room = accepted_room(receivers)
    room.handle(text(0, stream(receivers)), 0.0)
    return at(room, now)


def done_room(receivers: int = 1, now: float = 0.0) -> Room:
    room = streaming_room(receivers)
    chunk(room, b"a" * 66)
    chunk(room, b"b" * 66)
    room.handle(text(0, {"type": "end", "epoch": 0}), 0.0)
    assert room.state is State.DONE
    return at(room, now)


def run(room: Room, effects: list[Effect], now: float = 0.0) -> list[Effect]:
    """Follow ``Feed`` effects as the service does: the fed event's effects take its place."""
    out: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Feed):
            out.extend(run(room, room.handle(effect.event, now), now))
        else:
            out.append(effect)
    return out


def send(receivers: str | None = None) -> JoinRequest:
    return JoinRequest("", "send", receivers, "2")


def receive(nameplate: str) -> JoinRequest:
    return JoinRequest(nameplate, "receive", None, "2")


# --- admission ------------------------------------------------------------------------------------------


def refused(rooms: Rooms, request: JoinRequest) -> ErrorCode:
    with pytest.raises(JoinRefused) as caught:
        rooms.admit(request, now=0.0)
    return caught.value.code


def test_a_sender_opens_a_room_waiting_for_its_receivers() -> None:
    rooms = Rooms(Settings())
    room, party = rooms.admit(send("3"), now=0.0)
    assert party.peer == 0 and room.expected == 3 and room.state is State.WAITING and len(rooms) == 1
    assert p.is_nameplate(room.code)


def test_receivers_are_numbered_in_join_order() -> None:
    rooms = Rooms(Settings())
    room, _ = rooms.admit(send("2"), now=0.0)
    _, first = rooms.admit(receive(room.code), now=0.0)
    _, second = rooms.admit(receive(room.code), now=0.0)
    assert (first.peer, second.peer) == (1, 2)


def test_a_receiver_for_an_unknown_room_is_refused() -> None:
    assert refused(Rooms(Settings()), receive("12345")) is ErrorCode.ROOM_NOT_FOUND


def test_a_receiver_beyond_the_expected_number_is_refused() -> None:
    rooms = Rooms(Settings())
    room, _ = rooms.admit(send(), now=0.0)
    rooms.admit(receive(room.code), now=0.0)
    assert refused(rooms, receive(room.code)) is ErrorCode.ROOM_FULL


@pytest.mark.parametrize(
    "request_",
    [
        JoinRequest("", None, None, "2"),
        JoinRequest("", "spectate", None, "2"),
        JoinRequest("", "send", "0", "2"),
        JoinRequest("", "send", "-1", "2"),
        JoinRequest("", "send", "many", "2"),
        JoinRequest("", "send", "9", "2"),
        JoinRequest("", "send", "²", "2"),  # str.isdigit() says yes; int() raises
        JoinRequest("", "send", "٣", "2"),  # Arabic-Indic three: int() would take it as 3
        JoinRequest("", "send", "3" * 5000, "2"),  # int() refuses over 4,300 digits
        JoinRequest("", "send", " 2", "2"),
        JoinRequest("", "send", "+2", "2"),
        JoinRequest("", "send", "1_0", "2"),
        JoinRequest("", "send", "0000002", "2"),
        JoinRequest("", "send", None, "٢"),
        JoinRequest("", "send", None, "2" * 5000),
        JoinRequest("12", "receive", "2", "2"),
        JoinRequest("abc", "send", None, "2"),  # the relay chooses the nameplate
        JoinRequest("abc", "receive", None, "2"),  # a nameplate is digits
        JoinRequest("123456789", "receive", None, "2"),
    ],
)
def test_bad_requests_are_refused(request_: JoinRequest) -> None:
    assert refused(Rooms(Settings(max_receivers=8)), request_) is ErrorCode.BAD_REQUEST


def test_receivers_in_ascii_digits_are_read() -> None:
    room, _ = Rooms(Settings(max_receivers=8)).admit(send("08"), now=0.0)
    assert room.expected == 8


@pytest.mark.parametrize("version", [None, "", "1", "3", "0"])
@pytest.mark.parametrize("role,code", [("send", ""), ("receive", "12"), ("send", "actor-table-ocean")])
def test_any_version_but_2_is_refused_even_version_1(version: str | None, role: str, code: str) -> None:
    """Issue 10: version 1 goes away; a client that says nothing speaks version 1 and is told so."""
    rooms = Rooms(Settings())
    assert refused(rooms, JoinRequest(code, role, None, version)) is ErrorCode.UNSUPPORTED_VERSION
    assert len(rooms) == 0


def test_rooms_beyond_the_limit_are_refused() -> None:
    rooms = Rooms(Settings(max_rooms=1))
    rooms.admit(send(), now=0.0)
    assert refused(rooms, send()) is ErrorCode.TOO_MANY_ROOMS


def test_a_removed_room_frees_its_nameplate() -> None:
    rooms = Rooms(Settings())
    room, _ = rooms.admit(send(), now=0.0)
    rooms.remove(room)
    assert len(rooms) == 0 and refused(rooms, receive(room.code)) is ErrorCode.ROOM_NOT_FOUND


def test_logs_name_rooms_by_a_short_hash_not_the_code() -> None:
    tag = code_tag("actor-table-ocean-ring")
    assert len(tag) == 8 and "actor" not in tag


# --- opening ---------------------------------------------------------------------------------------------


def test_each_party_is_greeted_and_the_sender_hears_of_each_receiver() -> None:
    rooms, room = new_room(2)  # checks the sender's hello, with the nameplate
    _, first = rooms.admit(receive(room.code), 0.0)
    effects = room.handle(Joined(first.peer), 0.0)
    assert sent(effects, 1) == [{"type": "hello", "version": 2, "role": "receive", "peer": 1, "receivers": 2,
                                 "max_message": SETTINGS.max_message}]
    assert sent(effects, 0) == [{"type": "peer_joined", "peer": 1, "joined": 1, "receivers": 2}]
    assert room.state is State.WAITING
    _, second = rooms.admit(receive(room.code), 0.0)
    effects = room.handle(Joined(second.peer), 0.0)
    assert types(effects, 0) == ["peer_joined"] and room.state is State.KEYING  # paired once keyed


# --- offer, accept, decline (the sealed offer's own rows: tests/test_rooms_v2.py) ----------------------------


def test_an_offer_before_paired_is_unexpected() -> None:
    rooms, room = new_room(1)
    effects = room.handle(text(0, offer(1)), 0.0)
    assert ended(effects) == "unexpected_message" and closes(effects) == {0: 4004}


def test_an_accept_sent_twice_is_unexpected() -> None:
    room = offered_room(receivers=2)
    room.handle(text(1, {"type": "accept", "data": SEALED}), 0.0)
    assert ended(room.handle(text(1, {"type": "accept", "data": SEALED}), 0.0)) == "unexpected_message"


def test_a_decline_is_forwarded_and_ends_the_room_for_everyone() -> None:
    room = offered_room(receivers=2)
    effects = room.handle(text(2, {"type": "decline", "code": "disk_full", "data": SEALED}), 0.0)
    assert sent(effects, 0)[0] == {"type": "decline", "code": "disk_full", "data": SEALED, "peer": 2}
    assert ended(effects) == "declined" and closes(effects) == {0: 4032, 1: 4032, 2: 4032}


def test_an_accept_whose_forward_fails_ends_the_room() -> None:
    """Issue 8: the sender vanished as the last accept came; writing it to the sender failed (fed as Gone)."""
    room = offered_room()
    effects = room.handle(text(1, {"type": "accept", "data": SEALED}), 0.0)
    assert types(effects, 0) == ["accept", "start"]
    effects = room.handle(Gone(0, 0), 0.0)  # what the service feeds when that write fails
    assert room.state is State.ENDED and room.outcome == "peer_left"
    assert sent(effects, 1) == [{"type": "peer_left", "peer": 0, "role": "send"}] and closes(effects) == {1: 4030}


# --- streaming (the ciphertext rows: tests/test_rooms_v2.py) -----------------------------------------------


def test_a_checked_chunk_goes_to_every_receiver_header_first() -> None:
    room = streaming_room(receivers=2)
    data = b"c" * 66
    header = p.SealedChunk(0, len(data), p.chunk_digest(data))
    assert room.handle(text(0, header), 0.0) == []
    effects = room.handle(BinaryFrame(0, data, 0), 0.0)
    assert [(type(e).__name__, e.peer) for e in effects] == [("SendText", 1), ("SendBytes", 1), ("SendText", 2),
                                                              ("SendBytes", 2)]
    assert sent(effects, 1) == sent(effects, 2) == [header.to_dict(), data]


def test_a_binary_frame_without_a_header_is_unexpected() -> None:
    assert ended(streaming_room().handle(BinaryFrame(0, b"c" * 66, 0), 0.0)) == "unexpected_message"


def test_a_binary_frame_before_start_is_unexpected() -> None:
    assert ended(offered_room().handle(BinaryFrame(0, b"c" * 66, 0), 0.0)) == "unexpected_message"


def test_a_receiver_may_not_send_binary_frames() -> None:
    assert ended(streaming_room().handle(BinaryFrame(1, b"c" * 66, 0), 0.0)) == "unexpected_message"


@pytest.mark.parametrize("room_of", [streaming_room, done_room])
def test_acks_are_forwarded_to_the_sender_with_the_peer(room_of) -> None:
    room = room_of(receivers=2)
    effects = room.handle(text(2, {"type": "ack", "epoch": 0, "chunks": 1}), 0.0)
    assert sent(effects, 0) == [{"type": "ack", "epoch": 0, "chunks": 1, "peer": 2}]


def test_an_ack_before_start_is_unexpected() -> None:
    assert ended(offered_room().handle(text(1, {"type": "ack", "epoch": 0, "chunks": 0}), 0.0)) == "unexpected_message"


def test_a_frame_the_role_may_not_send_is_unexpected() -> None:
    assert ended(open_room().handle(text(1, offer(1)), 0.0)) == "unexpected_message"
    assert ended(streaming_room().handle(text(0, {"type": "accept"}), 0.0)) == "unexpected_message"
    assert ended(streaming_room().handle(text(1, stream(1)), 0.0)) == "unexpected_message"


@pytest.mark.parametrize("frame,code", [("{not json", "malformed_message"), ('{"type":"teleport"}', "unknown_type"),
                                        ('{"type":"done"}', "unknown_type")])
def test_a_frame_that_does_not_parse_ends_the_room_with_its_error(frame: str, code: str) -> None:
    room = streaming_room()
    effects = room.handle(TextFrame(1, frame, 0), 0.0)
    assert ended(effects) == code and sent(effects, 0)[0]["code"] == code  # type: ignore[index]


# --- verification and completion -------------------------------------------------------------------------


def test_each_verified_is_forwarded_and_the_last_completes_the_room() -> None:
    room = done_room(receivers=2)
    effects = run(room, room.handle(text(1, p.Verified()), 0.0))
    assert sent(effects, 0) == [{"type": "verified", "peer": 1}] and room.state is State.DONE
    effects = room.handle(text(2, p.Verified()), 0.0)
    assert effects[-1] == Feed(AllVerified())  # completion waits until the sender has been given the verified
    effects = run(room, effects)
    assert sent(effects, 0) == [{"type": "verified", "peer": 2}, {"type": "complete"}]
    assert closes(effects) == {0: 1000, 1: 1000, 2: 1000} and ended(effects) == "complete"


def test_a_room_that_ended_before_completion_is_not_recorded_as_complete() -> None:
    """Issue 8: the sender's socket failed as the last verified was forwarded; the room stays peer_left."""
    room = done_room()
    effects = room.handle(text(1, p.Verified()), 0.0)
    assert effects == [SendText(0, p.Verified(1).to_json(), 0), Feed(AllVerified())]
    room.handle(Gone(0, 0), 0.0)  # the service feeds this when that write fails, before it carries on
    assert room.handle(AllVerified(), 0.0) == []
    assert room.state is State.ENDED and room.outcome == "peer_left"


def test_verified_sent_twice_is_unexpected() -> None:
    room = done_room(receivers=2)
    room.handle(text(1, p.Verified()), 0.0)
    assert ended(room.handle(text(1, p.Verified()), 0.0)) == "unexpected_message"


# --- ending early ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("room_of", [open_room, offered_room, streaming_room, done_room])
def test_a_cancel_is_passed_on_with_the_peer_and_the_canceller_only_gets_its_close(room_of) -> None:
    room = room_of(receivers=2)
    effects = room.handle(text(1, {"type": "cancel"}), 0.0)
    assert sent(effects, 0) == sent(effects, 2) == [{"type": "cancel", "peer": 1}]
    assert sent(effects, 1) == [] and closes(effects) == {0: 4031, 1: 4031, 2: 4031}
    assert ended(effects) == "cancelled" and room.state is State.ENDED


@pytest.mark.parametrize("room_of", [open_room, offered_room, streaming_room, done_room])
def test_a_reported_error_is_passed_on_with_the_peer(room_of) -> None:
    room = room_of(receivers=2)
    effects = room.handle(text(2, p.Error("disk_full", "no space")), 0.0)
    assert sent(effects, 0) == [{"type": "error", "code": "disk_full", "message": "no space", "peer": 2}]
    assert sent(effects, 2) == [] and closes(effects)[2] == 4022 and ended(effects) == "disk_full"


@pytest.mark.parametrize("room_of", [open_room, offered_room, streaming_room, done_room])
def test_a_party_that_leaves_ends_the_room_and_the_others_are_told(room_of) -> None:
    room = room_of(receivers=2)
    effects = room.handle(Gone(2, 0), 0.0)
    assert sent(effects, 0) == sent(effects, 1) == [{"type": "peer_left", "peer": 2, "role": "receive"}]
    assert closes(effects) == {0: 4030, 1: 4030} and ended(effects) == "peer_left"


def test_a_crash_ends_the_room_with_internal_error() -> None:
    room = streaming_room()
    effects = room.handle(Crashed("IndexError"), 0.0)
    assert sent(effects, 0)[0] == {"type": "error", "code": "internal_error",
                                   "message": "internal relay error: IndexError"}
    assert closes(effects) == {0: 1011, 1: 1011} and ended(effects) == "internal_error"


def test_shutting_down_ends_the_room_with_going_away() -> None:
    effects = streaming_room().handle(ShuttingDown(), 0.0)
    assert closes(effects) == {0: 1001, 1: 1001} and ended(effects) == "going_away"


def test_an_ended_room_ignores_everything_after() -> None:
    room = streaming_room()
    room.handle(text(0, {"type": "cancel"}), 0.0)
    ack = text(1, {"type": "ack", "epoch": 0, "chunks": 0})
    for event in (ack, BinaryFrame(0, b"c" * 66, 0), Gone(1, 0), TimerFired(), Crashed("x"), ShuttingDown(),
                  AllVerified()):
        assert room.handle(event, 1e9) == []
    assert room.outcome == "cancelled"


def test_frames_after_the_end_do_not_reach_a_party_whose_farewell_is_decided() -> None:
    room = streaming_room()
    effects = room.handle(Gone(1, 0), 0.0)
    assert [type(e) for e in effects] == [Close, Ended]


# --- deadlines (the clock is passed in) ------------------------------------------------------------------


def test_a_room_that_never_pairs_ends_after_the_pairing_timeout() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.admit(send(), 100.0)
    room.handle(Joined(0), 100.0)
    assert room.handle(TimerFired(), 159.0) == []
    effects = room.handle(TimerFired(), 160.0)
    assert ended(effects) == "pairing_timeout" and closes(effects) == {0: 4040}


@pytest.mark.parametrize("room_of", [open_room, streaming_room, done_room])
def test_a_paired_room_ends_only_after_the_idle_timeout_since_its_last_frame(room_of) -> None:
    room = room_of(now=100.0)
    assert room.handle(TimerFired(), 129.0) == []
    effects = room.handle(TimerFired(), 130.0)
    assert ended(effects) == "idle_timeout" and closes(effects) == {0: 4041, 1: 4041}


def test_a_frame_resets_the_idle_clock() -> None:
    room = streaming_room(now=0.0)
    room.handle(text(1, {"type": "ack", "epoch": 0, "chunks": 0}), 25.0)
    assert room.handle(TimerFired(), 54.0) == []
    assert ended(room.handle(TimerFired(), 55.0)) == "idle_timeout"


def test_an_open_offer_is_not_idle_while_a_person_reads_it() -> None:
    """Issue 13: the idle timeout is off in OFFERED; the longer offer deadline applies instead."""
    room = offered_room(now=0.0)
    assert room.handle(TimerFired(), 599.0) == [] and room.state is State.OFFERED
    effects = room.handle(TimerFired(), 600.0)
    assert ended(effects) == "offer_timeout" and closes(effects) == {0: 4043, 1: 4043}
    assert sent(effects, 1) == [{"type": "error", "code": "offer_timeout",
                                 "message": "nobody answered the offer in time"}]


def test_an_accept_from_one_receiver_does_not_restart_the_offer_deadline() -> None:
    room = offered_room(receivers=2, now=0.0)
    room.handle(text(1, {"type": "accept", "data": SEALED}), 500.0)
    assert ended(room.handle(TimerFired(), 600.0)) == "offer_timeout"


def test_the_idle_clock_starts_again_when_streaming_begins() -> None:
    room = offered_room(now=0.0)
    room.handle(text(1, {"type": "accept", "data": SEALED}), 500.0)
    assert room.handle(TimerFired(), 529.0) == []
    assert ended(room.handle(TimerFired(), 530.0)) == "idle_timeout"


# --- the table is data, and docs/rooms.md shows the same table ---------------------------------------------


def documented_rows(header: str = "| state | from | trigger | next |") -> set[tuple[str, str, str, str]]:
    rows = set()
    in_table = False
    for line in (ROOT / "docs" / "rooms.md").read_text("utf-8").splitlines():
        if line.startswith(header):
            in_table = True
            continue
        if in_table and line.startswith("|---"):
            continue
        if in_table and line.startswith("|"):
            cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
            rows.add((cells[0], cells[1], cells[2], cells[3]))
        elif in_table:
            break
    return rows


def test_docs_rooms_md_shows_exactly_the_transition_table_of_the_code() -> None:
    coded = {
        (t.state.value.upper() if t.state else "any live", t.source, t.trigger,
         ", ".join(s.value.upper() for s in t.targets))
        for t in TRANSITIONS_V2
    }
    documented = documented_rows()
    assert documented, "docs/rooms.md has no transition table"
    assert documented == coded, f"only in the docs: {documented - coded}; only in the code: {coded - documented}"


def test_a_row_whose_action_leaves_its_targets_is_a_bug_not_a_silent_state(monkeypatch) -> None:
    from relay import rooms as module

    row = module.TABLE_V2[(State.PAIRED, module.SENDER, "offer")]
    monkeypatch.setitem(module.TABLE_V2, (State.PAIRED, module.SENDER, "offer"),
                        module.Transition(row.state, row.source, row.trigger, (State.PAIRED,), row.action))
    with pytest.raises(RuntimeError, match="led to offered"):
        open_room().handle(text(0, offer(1)), 0.0)


def test_a_party_joining_a_room_past_waiting_is_a_bug() -> None:
    room = open_room()
    room.seat(Party(5, Role.RECEIVE))  # admission would have refused it (room_full)
    with pytest.raises(RuntimeError, match="joined a room that is paired"):
        room.handle(Joined(5), 0.0)


def test_every_state_but_ended_has_a_deadline() -> None:
    timed = {t.state for t in TRANSITIONS_V2 if t.trigger == "timer"}
    assert timed == {s for s in State if s is not State.ENDED}


def test_the_protocol_doc_links_the_room_table() -> None:
    section = (ROOT / "docs" / "protocol.md").read_text("utf-8").split("## 3.")[1].split("## 4.")[0]
    assert re.search(r"\(rooms\.md\)", section)
