"""The room as a state machine: admission, every transition and every deadline, with no sockets and a fake clock.

Each test drives ``Room.handle`` with events and reads the effects it returns, the way a test of h11 reads
events: nothing here awaits, and time is whatever number the test passes.
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
    TRANSITIONS, TRANSITIONS_V2, AllVerified, BinaryFrame, Close, Crashed, Effect, Ended, Feed, Gone, Joined,
    JoinRefused,
    JoinRequest, Party, Role, Room, Rooms, SendBytes, SendText, ShuttingDown, State, TextFrame, TimerFired, code_tag,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(pairing_timeout=60, idle_timeout=30, offer_timeout=600, max_transfer_bytes=10_000,
                    max_message=64 * 1024)
DATA = b"0123456789abcdef"


# --- helpers: a room driven by hand ----------------------------------------------------------------------


def sent(effects: list[Effect], peer: int) -> list[dict[str, Any] | bytes]:
    """What the effects write to ``peer``, in order: parsed JSON messages, payload bytes, and farewell texts."""
    out: list[dict[str, Any] | bytes] = []
    for effect in effects:
        if isinstance(effect, SendText) and effect.peer == peer:
            out.append(json.loads(effect.text))
        elif isinstance(effect, SendBytes) and effect.peer == peer:
            out.append(effect.data)
        elif isinstance(effect, Close) and effect.peer == peer and effect.last is not None:
            out.append(json.loads(effect.last))
    return out


def types(effects: list[Effect], peer: int) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "binary" for m in sent(effects, peer)]


def closes(effects: list[Effect]) -> dict[int, int]:
    return {e.peer: e.code for e in effects if isinstance(e, Close)}


def ended(effects: list[Effect]) -> str | None:
    found = [e.outcome for e in effects if isinstance(e, Ended)]
    assert len(found) <= 1
    return found[0] if found else None


def text(peer: int, message: p.Message | dict[str, Any]) -> TextFrame:
    return TextFrame(peer, message.to_json() if isinstance(message, p.Message) else json.dumps(message))


def offer(size: int = len(DATA), chunk_size: int = 8) -> p.Offer:
    return p.Offer((p.FileEntry("file.bin", size),), (), chunk_size)


def open_room(receivers: int = 1, now: float = 0.0, settings: Settings = SETTINGS) -> Room:
    """A room whose sender and ``receivers`` receivers have all joined (PAIRED)."""
    rooms = Rooms(settings)
    room, sender = rooms.admit(JoinRequest("abc", "send", str(receivers)), now)
    room.handle(Joined(sender.peer), now)
    for _ in range(receivers):
        _, party = rooms.admit(JoinRequest("abc", "receive"), now)
        room.handle(Joined(party.peer), now)
    assert room.state is State.PAIRED
    return room


def offered_room(receivers: int = 1, now: float = 0.0) -> Room:
    room = open_room(receivers, now)
    room.handle(text(0, offer()), now)
    assert room.state is State.OFFERED
    return room


def streaming_room(receivers: int = 1, now: float = 0.0) -> Room:
    room = offered_room(receivers, now)
    for peer in range(1, receivers + 1):
        room.handle(text(peer, p.Accept()), now)
    assert room.state is State.STREAMING
    return room


def done_room(receivers: int = 1, now: float = 0.0) -> Room:
    room = streaming_room(receivers, now)
    for offset in (0, 8):
        piece = DATA[offset : offset + 8]
        room.handle(text(0, p.Chunk(0, offset, 8, p.chunk_digest(piece))), now)
        room.handle(BinaryFrame(0, piece), now)
    digest = p.FileDigest()
    digest.update(DATA)
    room.handle(text(0, p.FileDone(0, len(DATA), digest.hexdigest())), now)
    room.handle(text(0, p.Done()), now)
    assert room.state is State.DONE
    return room


def run(room: Room, effects: list[Effect], now: float = 0.0) -> list[Effect]:
    """Follow ``Feed`` effects as the service does: the fed event's effects take its place."""
    out: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Feed):
            out.extend(run(room, room.handle(effect.event, now), now))
        else:
            out.append(effect)
    return out


# --- admission ------------------------------------------------------------------------------------------


def refused(rooms: Rooms, request: JoinRequest) -> ErrorCode:
    with pytest.raises(JoinRefused) as caught:
        rooms.admit(request, now=0.0)
    return caught.value.code


def test_a_sender_opens_a_room_waiting_for_its_receivers() -> None:
    rooms = Rooms(Settings())
    room, party = rooms.admit(JoinRequest("abc", "send", "3"), now=0.0)
    assert party.peer == 0 and room.expected == 3 and room.state is State.WAITING and len(rooms) == 1


def test_receivers_are_numbered_in_join_order() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send", "2"), now=0.0)
    _, first = rooms.admit(JoinRequest("abc", "receive"), now=0.0)
    _, second = rooms.admit(JoinRequest("abc", "receive"), now=0.0)
    assert (first.peer, second.peer) == (1, 2)


def test_a_receiver_for_an_unknown_room_is_refused() -> None:
    assert refused(Rooms(Settings()), JoinRequest("nobody-here", "receive")) is ErrorCode.ROOM_NOT_FOUND


def test_a_receiver_beyond_the_expected_number_is_refused() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send"), now=0.0)
    rooms.admit(JoinRequest("abc", "receive"), now=0.0)
    assert refused(rooms, JoinRequest("abc", "receive")) is ErrorCode.ROOM_FULL


def test_a_second_sender_is_refused() -> None:
    rooms = Rooms(Settings())
    rooms.admit(JoinRequest("abc", "send"), now=0.0)
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
        JoinRequest("abc", "send", "²"),  # str.isdigit() says yes; int() raises
        JoinRequest("abc", "send", "٣"),  # Arabic-Indic three: int() would take it as 3
        JoinRequest("abc", "send", "3" * 5000),  # int() refuses over 4,300 digits
        JoinRequest("abc", "send", " 2"),
        JoinRequest("abc", "send", "+2"),
        JoinRequest("abc", "send", "1_0"),
        JoinRequest("abc", "send", "0000002"),
        JoinRequest("abc", "send", None, "٣"),
        JoinRequest("abc", "send", None, "1" * 5000),
        JoinRequest("abc", "receive", "2"),
        JoinRequest("Bad Code", "send"),
        JoinRequest("x" * 129, "send"),
    ],
)
def test_bad_requests_are_refused(request_: JoinRequest) -> None:
    assert refused(Rooms(Settings(max_receivers=8)), request_) is ErrorCode.BAD_REQUEST


def test_receivers_in_ascii_digits_are_read() -> None:
    room, _ = Rooms(Settings(max_receivers=8)).admit(JoinRequest("abc", "send", "08"), now=0.0)
    assert room.expected == 8


def test_an_unknown_protocol_version_is_refused() -> None:
    assert refused(Rooms(Settings()), JoinRequest("abc", "send", None, "3")) is ErrorCode.UNSUPPORTED_VERSION


def test_rooms_beyond_the_limit_are_refused() -> None:
    rooms = Rooms(Settings(max_rooms=1))
    rooms.admit(JoinRequest("one", "send"), now=0.0)
    assert refused(rooms, JoinRequest("two", "send")) is ErrorCode.TOO_MANY_ROOMS


def test_a_removed_room_frees_its_code() -> None:
    rooms = Rooms(Settings())
    room, _ = rooms.admit(JoinRequest("abc", "send"), now=0.0)
    rooms.remove(room)
    rooms.admit(JoinRequest("abc", "send"), now=0.0)
    assert len(rooms) == 1


def test_logs_name_rooms_by_a_short_hash_not_the_code() -> None:
    tag = code_tag("actor-table-ocean-ring")
    assert len(tag) == 8 and "actor" not in tag


# --- opening ---------------------------------------------------------------------------------------------


def test_each_party_is_greeted_and_the_sender_hears_of_each_receiver_then_paired() -> None:
    rooms = Rooms(SETTINGS)
    room, sender = rooms.admit(JoinRequest("abc", "send", "2"), 0.0)
    hello = sent(room.handle(Joined(0), 0.0), 0)
    assert hello == [{"type": "hello", "version": 1, "role": "send", "peer": 0, "receivers": 2,
                      "max_message": SETTINGS.max_message}]
    _, first = rooms.admit(JoinRequest("abc", "receive"), 0.0)
    effects = room.handle(Joined(first.peer), 0.0)
    assert types(effects, 1) == ["hello"] and sent(effects, 0) == [
        {"type": "peer_joined", "peer": 1, "joined": 1, "receivers": 2}]
    assert room.state is State.WAITING
    _, second = rooms.admit(JoinRequest("abc", "receive"), 0.0)
    effects = room.handle(Joined(second.peer), 0.0)
    assert types(effects, 0) == ["peer_joined", "paired"] and room.state is State.PAIRED


# --- offer, accept, decline ------------------------------------------------------------------------------


def test_an_offer_is_forwarded_to_every_receiver() -> None:
    room = open_room(receivers=2)
    effects = room.handle(text(0, offer()), 0.0)
    assert types(effects, 1) == types(effects, 2) == ["offer"] and room.state is State.OFFERED


def test_an_offer_over_the_transfer_limit_ends_the_room() -> None:
    room = open_room()
    effects = room.handle(text(0, offer(size=10_001)), 0.0)
    assert ended(effects) == "transfer_too_large" and closes(effects) == {0: 4413, 1: 4413}


def test_an_offer_with_chunks_over_max_message_is_malformed() -> None:
    room = open_room()
    assert ended(room.handle(text(0, offer(chunk_size=64 * 1024 + 1)), 0.0)) == "malformed_message"


def test_an_offer_before_paired_is_unexpected() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.admit(JoinRequest("abc", "send"), 0.0)
    room.handle(Joined(0), 0.0)
    effects = room.handle(text(0, offer()), 0.0)
    assert ended(effects) == "unexpected_message" and closes(effects) == {0: 4004}


def test_accepts_are_forwarded_and_the_last_one_starts_the_stream() -> None:
    room = offered_room(receivers=2)
    effects = room.handle(text(1, p.Accept()), 0.0)
    assert sent(effects, 0) == [{"type": "accept", "peer": 1}] and room.state is State.OFFERED
    effects = room.handle(text(2, p.Accept()), 0.0)
    assert sent(effects, 0) == [{"type": "accept", "peer": 2}, {"type": "start"}]
    assert room.state is State.STREAMING


def test_an_accept_sent_twice_is_unexpected() -> None:
    room = offered_room(receivers=2)
    room.handle(text(1, p.Accept()), 0.0)
    assert ended(room.handle(text(1, p.Accept()), 0.0)) == "unexpected_message"


def test_a_decline_is_forwarded_and_ends_the_room_for_everyone() -> None:
    room = offered_room(receivers=2)
    effects = room.handle(text(2, p.Decline("no room")), 0.0)
    assert sent(effects, 0)[0] == {"type": "decline", "reason": "no room", "peer": 2}
    assert ended(effects) == "declined" and closes(effects) == {0: 4032, 1: 4032, 2: 4032}


def test_an_accept_whose_forward_fails_ends_the_room() -> None:
    """Issue 8: the sender vanished as the last accept came; writing it to the sender failed (fed as Gone)."""
    room = offered_room()
    effects = room.handle(text(1, p.Accept()), 0.0)
    assert types(effects, 0) == ["accept", "start"]
    effects = room.handle(Gone(0), 0.0)  # what the service feeds when that write fails
    assert room.state is State.ENDED and room.outcome == "peer_left"
    assert sent(effects, 1) == [{"type": "peer_left", "peer": 0, "role": "send"}] and closes(effects) == {1: 4030}


# --- streaming -------------------------------------------------------------------------------------------


def test_a_checked_chunk_goes_to_every_receiver_header_first() -> None:
    room = streaming_room(receivers=2)
    header = p.Chunk(0, 0, 8, p.chunk_digest(DATA[:8]))
    assert room.handle(text(0, header), 0.0) == []
    effects = room.handle(BinaryFrame(0, DATA[:8]), 0.0)
    assert effects == [SendText(1, header.to_json()), SendBytes(1, DATA[:8]),
                       SendText(2, header.to_json()), SendBytes(2, DATA[:8])]


def test_a_payload_that_fails_its_digest_ends_the_room_with_checksum_mismatch() -> None:
    room = streaming_room()
    room.handle(text(0, p.Chunk(0, 0, 8, p.chunk_digest(b"something"))), 0.0)
    effects = room.handle(BinaryFrame(0, DATA[:8]), 0.0)
    assert ended(effects) == "checksum_mismatch" and closes(effects) == {0: 4020, 1: 4020}
    assert not any(isinstance(e, SendBytes) for e in effects)


def test_a_binary_frame_without_a_header_is_unexpected() -> None:
    assert ended(streaming_room().handle(BinaryFrame(0, DATA[:8]), 0.0)) == "unexpected_message"


def test_a_binary_frame_before_start_is_unexpected() -> None:
    assert ended(offered_room().handle(BinaryFrame(0, DATA[:8]), 0.0)) == "unexpected_message"


def test_a_receiver_may_not_send_binary_frames() -> None:
    assert ended(streaming_room().handle(BinaryFrame(1, DATA), 0.0)) == "unexpected_message"


def test_file_done_and_done_are_forwarded_and_done_moves_to_done() -> None:
    room = streaming_room(receivers=2)
    for offset in (0, 8):
        piece = DATA[offset : offset + 8]
        room.handle(text(0, p.Chunk(0, offset, 8, p.chunk_digest(piece))), 0.0)
        room.handle(BinaryFrame(0, piece), 0.0)
    digest = p.FileDigest()
    digest.update(DATA)
    file_done = p.FileDone(0, len(DATA), digest.hexdigest())
    effects = room.handle(text(0, file_done), 0.0)
    assert effects == [SendText(1, file_done.to_json()), SendText(2, file_done.to_json())]
    assert room.state is State.STREAMING
    effects = room.handle(text(0, p.Done()), 0.0)
    assert types(effects, 1) == types(effects, 2) == ["done"] and room.state is State.DONE


def test_a_file_done_before_the_file_is_complete_is_a_size_mismatch() -> None:
    room = streaming_room()
    assert ended(room.handle(text(0, p.FileDone(0, len(DATA), "0" * 32)), 0.0)) == "size_mismatch"


def test_done_before_every_file_is_unexpected() -> None:
    assert ended(streaming_room().handle(text(0, p.Done()), 0.0)) == "unexpected_message"


@pytest.mark.parametrize("room_of", [streaming_room, done_room])
def test_acks_and_file_oks_are_forwarded_to_the_sender_with_the_peer(room_of) -> None:
    room = room_of(receivers=2)
    effects = room.handle(text(2, p.Ack(0, 8)), 0.0)
    assert sent(effects, 0) == [{"type": "ack", "file": 0, "offset": 8, "peer": 2}]
    effects = room.handle(text(1, p.FileOk(0)), 0.0)
    assert sent(effects, 0) == [{"type": "file_ok", "file": 0, "peer": 1}]


def test_an_ack_before_start_is_unexpected() -> None:
    assert ended(offered_room().handle(text(1, p.Ack(0, 0)), 0.0)) == "unexpected_message"


def test_a_frame_the_role_may_not_send_is_unexpected() -> None:
    assert ended(open_room().handle(text(1, offer()), 0.0)) == "unexpected_message"
    assert ended(streaming_room().handle(text(0, p.Accept()), 0.0)) == "unexpected_message"


@pytest.mark.parametrize("frame,code", [("{not json", "malformed_message"), ('{"type":"teleport"}', "unknown_type")])
def test_a_frame_that_does_not_parse_ends_the_room_with_its_error(frame: str, code: str) -> None:
    room = streaming_room()
    effects = room.handle(TextFrame(1, frame), 0.0)
    assert ended(effects) == code and sent(effects, 0)[0]["code"] == code


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
    assert effects == [SendText(0, p.Verified(1).to_json()), Feed(AllVerified())]
    room.handle(Gone(0), 0.0)  # the service feeds this when that write fails, before it carries on
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
    effects = room.handle(text(1, p.Cancel("changed my mind")), 0.0)
    assert sent(effects, 0) == sent(effects, 2) == [{"type": "cancel", "reason": "changed my mind", "peer": 1}]
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
    effects = room.handle(Gone(2), 0.0)
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
    room.handle(text(0, p.Cancel()), 0.0)
    for event in (text(1, p.Ack(0, 0)), BinaryFrame(0, DATA), Gone(1), TimerFired(), Crashed("x"), ShuttingDown(),
                  AllVerified()):
        assert room.handle(event, 1e9) == []
    assert room.outcome == "cancelled"


def test_frames_after_the_end_do_not_reach_a_party_whose_farewell_is_decided() -> None:
    room = streaming_room()
    effects = room.handle(Gone(1), 0.0)
    assert [type(e) for e in effects] == [Close, Ended]


# --- deadlines (the clock is passed in) ------------------------------------------------------------------


def test_a_room_that_never_pairs_ends_after_the_pairing_timeout() -> None:
    rooms = Rooms(SETTINGS)
    room, _ = rooms.admit(JoinRequest("abc", "send"), 100.0)
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
    room.handle(text(1, p.Ack(0, 0)), 25.0)
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
    room.handle(text(1, p.Accept()), 500.0)
    assert ended(room.handle(TimerFired(), 600.0)) == "offer_timeout"


def test_the_idle_clock_starts_again_when_streaming_begins() -> None:
    room = offered_room(now=0.0)
    room.handle(text(1, p.Accept()), 500.0)
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
        for t in TRANSITIONS
    }
    documented = documented_rows()
    assert documented, "docs/rooms.md has no transition table"
    assert documented == coded, f"only in the docs: {documented - coded}; only in the code: {coded - documented}"


def test_docs_rooms_md_shows_exactly_the_version_2_table_of_the_code() -> None:
    coded = {
        (t.state.value.upper() if t.state else "any live", t.source, t.trigger,
         ", ".join(s.value.upper() for s in t.targets))
        for t in TRANSITIONS_V2
    }
    documented = documented_rows("| state (v2) | from | trigger | next |")
    assert documented, "docs/rooms.md has no version 2 transition table"
    assert documented == coded, f"only in the docs: {documented - coded}; only in the code: {coded - documented}"


def test_a_row_whose_action_leaves_its_targets_is_a_bug_not_a_silent_state(monkeypatch) -> None:
    from relay import rooms as module

    row = module.TABLE[(State.PAIRED, module.SENDER, "offer")]
    monkeypatch.setitem(module.TABLE, (State.PAIRED, module.SENDER, "offer"),
                        module.Transition(row.state, row.source, row.trigger, (State.PAIRED,), row.action))
    with pytest.raises(RuntimeError, match="led to offered"):
        open_room().handle(text(0, offer()), 0.0)


def test_a_party_joining_a_room_past_waiting_is_a_bug() -> None:
    room = open_room()
    room.seat(Party(5, Role.RECEIVE))  # admission would have refused it (room_full)
    with pytest.raises(RuntimeError, match="joined a room that is paired"):
        room.handle(Joined(5), 0.0)


def test_every_state_but_ended_has_a_deadline() -> None:
    timed = {t.state for t in TRANSITIONS if t.trigger == "timer"}
    assert timed == {s for s in State if s not in (State.ENDED, State.KEYING, State.PARKED)}  # v1 never keys or parks
    timed_v2 = {t.state for t in TRANSITIONS_V2 if t.trigger == "timer"}
    assert timed_v2 == {s for s in State if s is not State.ENDED}


def test_the_protocol_doc_links_the_room_table() -> None:
    section = (ROOT / "docs" / "protocol.md").read_text("utf-8").split("## 2.")[1].split("## 3.")[0]
    assert re.search(r"\(rooms\.md\)", section)
