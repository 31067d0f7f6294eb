"""A receiver that does not come back is dropped and the rest finish (issue 11, docs/protocol.md section 10): the
real relay with a short resume window, the real ``relay`` command as four processes, real files. One receiver of
three is cut mid-transfer and cannot reconnect until the relay has dropped its seat; the other two get every file,
the sender says so and exits 7, and the dropped receiver, told ``dropped`` when it gets through, exits 7 with its
partial files kept (nothing under a final name), from which ``relay receive`` into the same folder resumes by hand.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from clients.store import STATE_NAME
from tests.test_e2e import WAIT, finish, start_sender
from tests.test_resume_cli import SIZE, Cutter, receive, same_files

pytestmark = pytest.mark.asyncio
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
