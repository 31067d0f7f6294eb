"""A receiver that does not come back is dropped and the rest finish (issue 11, docs/protocol.md section 10): the
real relay with a short resume window, the real ``relay`` command as four processes, real files. One receiver of
three is cut mid-transfer and cannot reconnect until the relay has dropped its seat; the other two get every file,
the sender says so and exits 7, and the dropped receiver, told ``dropped`` when it gets through, exits 7 with its
partial files kept (nothing under a final name), from which ``relay receive`` into the same folder resumes by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from clients import transfer
from clients.cli import JsonReporter, TerminalReporter
from clients.errors import TransferRefused
from clients.connection import parse_relay_url
from clients.store import STATE_NAME
from clients.transfer import Reporter
from relay import protocol as p
from tests.test_e2e import WAIT, finish, start_sender
from tests.test_resume_cli import SIZE, Cutter, receive, same_files

RESUME_WINDOW = 2.0  # the relay's: short, so that the drop comes soon; the clients keep their default (300 s)
EXIT_DROPPED = 7


@dataclass
class Unreachable(Cutter):
    """Cuts its first connection after ``after`` binary frames from the relay, as ``Cutter`` does, and then fails
    every new connection (the client's attempts to resume) until ``reopen`` is set: a receiver that cannot get
    back in time."""

    reopen: asyncio.Event = field(default_factory=asyncio.Event)
    refused: int = 0

    async def handle(self, client: websockets.ServerConnection) -> None:
        if self.paths and not self.reopen.is_set():
            self.refused += 1
            client.transport.abort()
            return
        await super().handle(client)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """Two files of 300 chunks each (as tests/test_resume_cli.py's)."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name, seed in (("one.bin", 1), ("two.bin", 2)):
        (folder / name).write_bytes(bytes((i * seed + i // 7) % 251 for i in range(SIZE)))
    return folder


async def until(condition, what: str) -> None:
    """Wait for a condition of the in-process relay (nothing to await across threads): at most WAIT seconds."""
    for _ in range(int(WAIT * 50)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.asyncio
async def test_a_receiver_that_does_not_come_back_in_time_is_dropped_and_the_other_two_finish(
        relay_factory, sources, tmp_path) -> None:
    relay = relay_factory(resume_window=RESUME_WINDOW)
    rooms = relay.relay.rooms
    cutter = Unreachable(relay.ws_url, after=150)
    outputs = [tmp_path / f"out{k}" for k in range(3)]
    async with websockets.serve(cutter.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        sender, code = await start_sender(relay.ws_url, "--receivers", "3", str(sources))
        nameplate = code.split("-", 1)[0]
        runs = [asyncio.ensure_future(receive(relay.ws_url, code, outputs[0])),
                asyncio.ensure_future(receive(url, code, outputs[1])),
                asyncio.ensure_future(receive(relay.ws_url, code, outputs[2]))]

        def dropped() -> bool:  # the cut receiver's seat, in the live room or remembered once it ended
            room = rooms.by_code.get(nameplate)
            live = room is not None and any(r.dropped for r in room.receivers)
            return live or nameplate in rooms.dropped

        await until(lambda: cutter.cuts == 1, "the cut")
        await until(dropped, "the relay dropping the cut receiver")
        cutter.reopen.set()
        results = await asyncio.gather(*runs)
        sent = await finish(sender)
    assert cutter.refused >= 1  # it did try to come back, and could not in time

    for k in (0, 2):
        assert results[k].returncode == 0, results[k].stderr + results[k].stdout
        same_files(sources, outputs[k])

    said = re.findall(r"receiver (\d) did not come back within the resume window and was dropped; the others go on",
                      sent.stdout)
    assert len(said) == 1, sent.stdout
    assert sent.returncode == EXIT_DROPPED, sent.stderr + sent.stdout
    assert f"2 of 3 receivers got every file, authenticated; receiver {said[0]} did not come back" in sent.stderr

    cut = results[1]
    assert cut.returncode == EXIT_DROPPED, cut.stderr + cut.stdout
    assert f"receiver {said[0]} did not come back within the resume window" in cut.stderr
    assert "kept as partial files" in cut.stderr and len(cut.stderr.strip().splitlines()) == 1
    assert not (outputs[1] / "src" / "one.bin").exists() and not (outputs[1] / "src" / "two.bin").exists()
    assert (outputs[1] / STATE_NAME).is_file()
    assert list((outputs[1] / "src").glob(".relay-*.part"))

    # Later, by hand: the same paths sent again to it alone; it holds what it got before the cut.
    sender, code = await start_sender(relay.ws_url, str(sources))
    again = await receive(relay.ws_url, code, outputs[1])
    sent = await finish(sender)
    assert again.returncode == 0, again.stderr + again.stdout
    assert sent.returncode == 0, sent.stderr + sent.stdout
    assert "resuming an earlier attempt" in again.stdout
    same_files(sources, outputs[1])  # and nothing else: the parts and the state file went at the commit


# --- the sender's view of a drop, without sockets ------------------------------------------------------------------


class Said(Reporter):
    def __init__(self) -> None:
        self.dropped_peers: list[int] = []

    def dropped(self, peer: int) -> None:
        self.dropped_peers.append(peer)


def parking(receivers: int) -> tuple[transfer._Parking, Said]:
    """The sender's resume state with ``receivers`` receivers, while receiver 2 is away."""
    said = Said()
    peers = range(1, receivers + 1)
    room = transfer._Parking(channels=dict.fromkeys(peers), keys=dict.fromkeys(peers),  # type: ignore[arg-type]
                             reporter=said)
    room.park(2)
    return room, said


def test_once_a_receiver_is_dropped_the_next_epoch_waits_only_for_the_others_positions() -> None:
    room, said = parking(3)
    room.positions[1] = (0, 10)
    room.check_ready()
    assert not room.ready.is_set()  # receiver 2 is away, receiver 3 has not said where it is
    room.drop((2,))
    assert said.dropped_peers == [2] and 2 not in room.channels and not room.away
    assert not room.ready.is_set()
    room.positions[3] = (1, 0)
    room.check_ready()
    assert room.ready.is_set() and sorted(room.channels) == [1, 3]  # the next epoch names receivers 1 and 3


def test_the_senders_next_resume_names_the_dropped_receivers_for_a_relay_restarted_meanwhile() -> None:
    """The seat's sets are the room's (as ``send`` links them): a resume after a drop says who was dropped, and
    who verified among the others, so that a recreated room waits for neither (docs/protocol.md 10.2)."""
    room, _ = parking(3)
    seat = transfer.SeatTokens({k: bytes([k]) * 32 for k in (1, 2, 3)}, p.RoomShape(3, 10, 1))
    seat.verified, seat.dropped = room.verified, room.dropped
    room.verified.add(1)
    room.drop((2,))
    message = p.parse_message(seat.message(0).to_json(), p.PROTOCOL_V2)
    assert isinstance(message, p.Resume) and message.verified == (1,) and message.dropped == (2,)
    receiver = transfer.SeatTokens({3: bytes(32)}, p.RoomShape(3, 10, 1), dropped={2})
    assert receiver.message(3).dropped == () and "dropped" not in receiver.message(3).to_json()


def test_a_drop_heard_twice_is_said_once() -> None:
    room, said = parking(3)
    room.drop((2,))
    room.drop((2,))  # e.g. dropped again by a room recreated after a relay restart
    assert said.dropped_peers == [2] and room.dropped == {2}


def test_the_ack_window_no_longer_waits_for_a_dropped_receiver() -> None:
    room, _ = parking(2)
    room.start_epoch(1)
    room.acknowledged(1, 1, 10)
    assert room.ahead(100) == 0  # receiver 2 has not acked: the window does not apply yet
    room.acknowledged(2, 1, 5)
    assert room.ahead(100) == 95
    room.drop((2,))
    assert room.ahead(100) == 90  # the slowest receiver still in the transfer


def test_the_transfer_is_done_once_every_receiver_verified_or_was_dropped_and_one_verified() -> None:
    room, _ = parking(3)
    room.verified.add(1)
    assert not room.done(3)
    room.drop((2,))
    assert not room.done(3)
    room.verified.add(3)
    assert room.done(3)
    everyone, _ = parking(2)
    everyone.drop((1, 2))
    assert not everyone.done(2)  # a relay never drops every receiver: that ends the room


@pytest.mark.asyncio
async def test_complete_after_a_drop_is_success_for_the_rest_and_the_sender_says_who_was_dropped() -> None:
    class Relay:
        def __init__(self, frames: list[p.Message]) -> None:
            self.frames = frames

        async def receive(self) -> p.Message:
            return self.frames.pop(0)

    room, said = parking(3)
    await transfer._watch_receivers(Relay([p.Verified(1), p.Dropped((2,)), p.Verified(3), p.Complete()]),  # type: ignore[arg-type]
                                    3, room)
    assert said.dropped_peers == [2]
    error = transfer._dropped(room, 3)
    assert error.code is p.ErrorCode.DROPPED and error.peers == (2,)
    assert str(error) == ("2 of 3 receivers got every file, authenticated; receiver 2 did not come back within the "
                          "resume window and was dropped")
    room, _ = parking(3)
    with pytest.raises(TransferRefused, match="only 1 of 3"):  # complete with receiver 3 neither verified nor dropped
        await transfer._watch_receivers(Relay([p.Verified(1), p.Dropped((2,)), p.Complete()]), 3,  # type: ignore[arg-type]
                                        room)


def test_the_terminal_says_the_drop_in_one_line_and_json_as_an_event(capsys) -> None:
    terminal = TerminalReporter(sys.stdout, False, parse_relay_url("ws://r"))
    terminal.dropped(2)
    assert capsys.readouterr().out == ("receiver 2 did not come back within the resume window and was dropped; the "
                                       "others go on\n")
    JsonReporter(parse_relay_url("ws://r")).dropped(2)
    assert json.loads(capsys.readouterr().out) == {"event": "dropped", "peer": 2}
