"""kill -9 of a real ``relay send`` or ``relay receive`` process mid-transfer.

The other side must be told, exit non-zero with a one-line reason, and leave no file under a final name.
SIGSTOP holds a receiver still so "mid-transfer" is a fact, not a race: with the receiver stopped, the
relay's and the kernel's buffers fill and the sender waits, part-way through its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from clients.store import STATE_NAME
from relay.rooms import State
from tests.relayproc import child_env, relay_command

FILE_SIZE = 256 * 1024 * 1024
WAIT = 30.0


def big_file(path: Path) -> Path:
    block = os.urandom(1024 * 1024)
    with path.open("wb") as handle:
        for _ in range(FILE_SIZE // len(block)):
            handle.write(block)
    return path


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(relay_command(*args), cwd=cwd, env=child_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def wait_streaming(relay, code: str) -> None:
    """Until the room streams and some bytes went through the relay (bounded)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        room = relay.relay.rooms.by_code.get(code)
        if room is not None and room.state is State.STREAMING and room.check and room.check.bytes_done > 0:
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the transfer never started streaming")


def read_code(sender: subprocess.Popen[str]) -> str:
    """The code line ``relay send`` prints first (also with --quiet): the relay's nameplate, then our words."""
    assert sender.stdout is not None
    line = sender.stdout.readline()
    assert line.startswith("Code: "), line
    return line.split()[1]


def nameplate(code: str) -> str:
    return code.split("-", 1)[0]


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the process did not exit: {err}") from exc
    return process.returncode, err


@dataclass
class Transfer:
    """A running ``relay send`` of ``source`` and ``relay receive`` of it into ``out``."""

    source: Path
    out: Path
    code: str  # nameplate-words, as the sender printed it
    sender: subprocess.Popen[str]
    receiver: subprocess.Popen[str]


@contextlib.asynccontextmanager
async def a_transfer(ws_url: str, code: str, tmp_path: Path, *receiver_flags: str) -> AsyncIterator[Transfer]:
    """Start ``relay send`` of a FILE_SIZE file, read its code, start ``relay receive`` with it; on the way out
    (whatever happened) continue and kill whichever of the two is still running."""
    source = big_file(tmp_path / "big.bin")
    out = tmp_path / "out"
    out.mkdir()
    sender = start("send", str(source), "--relay", ws_url, "--code", code, "--quiet", cwd=tmp_path)
    receiver = None
    try:
        code = await asyncio.wait_for(asyncio.to_thread(read_code, sender), WAIT)
        receiver = start("receive", code, "--relay", ws_url, "--output", str(out), "--yes", "--quiet",
                         *receiver_flags, cwd=tmp_path)
        yield Transfer(source, out, code, sender, receiver)
    finally:
        for process in (sender, receiver):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()


def final_names(folder: Path) -> list[str]:
    """Files under a final name: anything but the ``.relay-*.part`` temporaries and the receiver's resume state
    (``.relay-state.json``, written at checkpoints: a receiver killed after its first one leaves it, by design,
    so that a new ``relay receive`` can resume; whether the kill comes before or after that depends on speed)."""
    return [p.name for p in folder.iterdir()
            if not (p.name.startswith(".relay-") and p.name.endswith(".part")) and p.name != STATE_NAME]


async def test_kill_9_of_the_sender_process_mid_transfer(relay_factory, code, tmp_path) -> None:
    relay = relay_factory(resume_window=1.0)  # a killed process never comes back: the room ends after the window
    async with a_transfer(relay.ws_url, code, tmp_path) as transfer:
        sender, receiver, out, code = transfer.sender, transfer.receiver, transfer.out, transfer.code
        await wait_streaming(relay, nameplate(code))
        receiver.send_signal(signal.SIGSTOP)
        sender.send_signal(signal.SIGKILL)
        sender.wait(timeout=WAIT)
        receiver.send_signal(signal.SIGCONT)
        status, err = await asyncio.to_thread(finish, receiver)
    assert sender.returncode == -signal.SIGKILL
    assert status == 1, err
    assert "sender disconnected" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert final_names(out) == []
    assert list(out.iterdir()) == []  # the receiver also cleaned up its temporary file
    for _ in range(500):
        if nameplate(code) not in relay.relay.rooms.by_code:
            break
        await asyncio.sleep(0.01)
    assert nameplate(code) not in relay.relay.rooms.by_code
    assert relay.relay.stats.transfers["peer_lost"] == 1


async def test_kill_9_of_the_receiver_process_mid_transfer(relay_factory, code, tmp_path) -> None:
    relay = relay_factory(resume_window=1.0)  # a killed process never comes back: the room ends after the window
    async with a_transfer(relay.ws_url, code, tmp_path) as transfer:
        sender, receiver, out, code = transfer.sender, transfer.receiver, transfer.out, transfer.code
        await wait_streaming(relay, nameplate(code))
        receiver.send_signal(signal.SIGKILL)
        receiver.wait(timeout=WAIT)
        status, err = await asyncio.to_thread(finish, sender)
    assert receiver.returncode == -signal.SIGKILL
    assert status == 1, err
    assert "receiver 1 disconnected" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert final_names(out) == []  # a killed receiver cannot clean up its .part file, but never renames it
    assert relay.relay.stats.transfers["peer_lost"] == 1
