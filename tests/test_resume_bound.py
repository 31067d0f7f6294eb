"""The parking bound (docs/protocol.md section 10): a party that never comes back. The real relay (with a short
resume window), the real ``relay`` command in processes of their own, one of which is killed with SIGKILL
mid-transfer: the party still there is told, within the window, in plain words, and exits non-zero; nothing is
stored under a final name.

The kill happens at a condition (a gate in front of the receiver holds a set number of chunks), not a time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import websockets

from tests.test_e2e import finish
from tests.test_resume_restart import CHUNK, WAIT, Gate, cli, make_files

pytestmark = pytest.mark.asyncio
WINDOW = 1.0


def final_names(output: Path) -> list[str]:
    """Every name under ``output`` that is not a temporary one (``.relay-*``)."""
    return sorted(str(path.relative_to(output)) for path in output.rglob("*")
                  if path.is_file() and not path.name.startswith(".relay-"))


@pytest.mark.parametrize("killed", ["sender", "receiver"])
async def test_a_party_that_never_comes_back_ends_the_transfer_after_the_window(relay_factory, tmp_path, killed):
    relay = relay_factory(resume_window=WINDOW)
    source = make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir()
    gate = Gate(relay.ws_url, 40)
    async with websockets.serve(gate.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
        gated = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        sender = await cli("send", "--relay", relay.ws_url, "--chunk-size", str(CHUNK), str(source))
        assert sender.stdout is not None
        line = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode()
        receiver = await cli("receive", "--relay", gated, "--yes", "--output", str(output), code=line.split()[1])
        await asyncio.wait_for(gate.holding.wait(), WAIT)
        victim, survivor = (sender, receiver) if killed == "sender" else (receiver, sender)
        victim.kill()
        await asyncio.wait_for(victim.wait(), WAIT)
        gate.release.set()
        run = await finish(survivor)
    assert run.returncode == 1, run.stdout + run.stderr
    who = "the sender" if killed == "sender" else "receiver 1"
    assert f"{who} disconnected and did not come back within the resume window" in run.stderr
    assert final_names(output) == []
    assert not relay.relay.rooms.by_code
