"""Resume by hand (docs/protocol.md section 10.3): both ``relay`` processes killed with SIGKILL mid-transfer, then
``relay send`` of the same paths under a new code and ``relay receive`` into the same folder. The receiver proves
what its parts hold (SHA-256 of the bytes, read again from disk); the sender checks its own files and sends only
the rest; a file that changed in between is sent again from the start and both sides say so.

The kill happens at a condition (a gate in front of the receiver holds a set number of chunks), not a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
import websockets

from relay import protocol as p
from clients.offer import collect
from clients.store import STATE_NAME
from clients.transfer import Reporter, _agreed_starts
from tests.test_e2e import Run, everything_under, finish, sha
from tests.test_resume_restart import WAIT, Gate, cli

pytestmark = pytest.mark.asyncio
CHUNK = 64 * 1024
SIZE = 3 * 1024 * 1024 + 1000  # two files of 49 chunks each
HELD_CHUNKS = 70  # the first file and 21 chunks of the second reach the receiver before both are killed


def make_files(folder: Path) -> Path:
    folder.mkdir()
    for name, seed in (("one.bin", 7), ("two.bin", 11)):
        (folder / name).write_bytes(bytes((i * seed + i // 13) % 251 for i in range(SIZE)))
    return folder


async def first_attempt_killed(relay_url: str, source: Path, output: Path) -> int:
    """Run a transfer until the receiver holds HELD_CHUNKS chunks, then SIGKILL both; returns the bytes the
    receiver's state file says it holds."""
    gate = Gate(relay_url, HELD_CHUNKS)
    async with websockets.serve(gate.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
        gated = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        sender = await cli("send", "--relay", relay_url, "--chunk-size", str(CHUNK), str(source))
        assert sender.stdout is not None
        code = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode().split()[1]
        receiver = await cli("receive", "--relay", gated, "--yes", "--output", str(output), code=code)
        await asyncio.wait_for(gate.holding.wait(), WAIT)
        # The gate holds; the receiver works through what it already got and records it in its state file.
        await state_holds(output, SIZE)
        for process in (sender, receiver):
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)
    assert not (output / "src" / "one.bin").exists()  # nothing under a final name
    return recorded(output)  # what it recorded before it was killed (maybe a checkpoint more than waited for)


def recorded(output: Path) -> int:
    """The bytes the receiver's state file says it holds (0 while there is none, or it is being replaced)."""
    try:
        state = json.loads((output / STATE_NAME).read_text())
    except (OSError, ValueError):
        return 0
    return sum(entry["have"] for entry in state["files"])


async def state_holds(output: Path, at_least: int) -> None:
    """Wait until the state file records at least ``at_least`` bytes: polled (another process writes it, there
    is nothing to await), at most WAIT seconds."""
    for _ in range(WAIT * 50):
        if recorded(output) >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the receiver's state file never recorded {at_least} bytes")


async def second_attempt(relay_url: str, source: Path, output: Path) -> tuple[Run, Run]:
    sender = await cli("send", "--relay", relay_url, "--chunk-size", str(CHUNK), str(source))
    assert sender.stdout is not None
    code = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode().split()[1]
    run = await finish(await cli("receive", "--relay", relay_url, "--yes", "--output", str(output), code=code))
    return await finish(sender), run


async def test_both_killed_and_run_again_with_a_new_code_only_the_rest_is_sent(relay_server, tmp_path) -> None:
    source = make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir()
    held = await first_attempt_killed(relay_server.ws_url, source, output)
    sent, run = await second_attempt(relay_server.ws_url, source, output)
    assert sent.returncode == 0, sent.stderr + sent.stdout
    assert run.returncode == 0, run.stderr + run.stdout
    for name in ("one.bin", "two.bin"):
        assert sha(output / "src" / name) == sha(source / name)
    assert everything_under(output) == ["src", "src/one.bin", "src/two.bin"]  # no part, no state file left
    said = f"({held} bytes) were already there and are not sent again"
    assert said in sent.stdout and said in run.stdout
    assert "changed since the last attempt" not in sent.stdout + run.stdout


@pytest.mark.parametrize("change", ["content", "mtime"])
async def test_a_file_that_changed_in_between_is_sent_again_from_the_start(relay_server, tmp_path, change) -> None:
    source = make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir()
    await first_attempt_killed(relay_server.ws_url, source, output)
    one = source / "one.bin"
    status = one.stat()
    if change == "content":  # same size, same mtime: only the digest of the held bytes tells
        data = bytearray(one.read_bytes())
        data[5] ^= 0xFF
        one.write_bytes(bytes(data))
        os.utime(one, ns=(status.st_atime_ns, status.st_mtime_ns))
    else:
        os.utime(one, (status.st_atime, status.st_mtime - 3600))
    sent, run = await second_attempt(relay_server.ws_url, source, output)
    assert sent.returncode == 0, sent.stderr + sent.stdout
    assert run.returncode == 0, run.stderr + run.stdout
    for name in ("one.bin", "two.bin"):
        assert sha(output / "src" / name) == sha(source / name)
    assert everything_under(output) == ["src", "src/one.bin", "src/two.bin"], run.stdout
    said = "src/one.bin changed since the last attempt; sending it again from the start"
    assert said in run.stdout
    if change == "content":
        assert said in sent.stdout  # the sender found it by the digest (the receiver could not know)


async def test_a_state_file_that_cannot_be_trusted_is_ignored_with_a_warning(relay_server, tmp_path) -> None:
    source = make_files(tmp_path / "src")
    output = tmp_path / "out"
    output.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (output / STATE_NAME).write_text(json.dumps({"version": 1, "files": [
        {"path": "src/one.bin", "size": SIZE, "mtime": int(source.joinpath("one.bin").stat().st_mtime),
         "part": "../../secret.txt", "have": 9}]}))
    sent, run = await second_attempt(relay_server.ws_url, source, output)
    assert sent.returncode == 0 and run.returncode == 0, run.stderr + run.stdout
    assert f"warning: ignoring {STATE_NAME} in the output folder" in run.stdout
    assert "already there" not in sent.stdout
    assert outside.read_text() == "not yours"
    for name in ("one.bin", "two.bin"):
        assert sha(output / "src" / name) == sha(source / name)


# --- the sender's side of a claim, without sockets ---------------------------------------------------------


class Told(Reporter):
    def __init__(self) -> None:
        self.changed_paths: list[str] = []
        self.kept_bytes = -1

    def changed(self, path: str) -> None:
        self.changed_paths.append(path)

    def kept(self, count: int) -> None:
        self.kept_bytes = count


def claim_of(file: int, have: int, data: bytes) -> dict[str, object]:
    return {"have": [{"file": file, "have": have, "sha256": hashlib.sha256(data[:have]).hexdigest()}]}


async def test_the_sender_agrees_only_to_what_its_own_file_proves(tmp_path) -> None:
    source = make_files(tmp_path / "src")
    outgoing = collect([source])
    data = (source / "one.bin").read_bytes()
    told = Told()
    assert await _agreed_starts(outgoing, {1: claim_of(0, 1000, data)}, told) == {0: 1000}
    assert told.kept_bytes == 1000 and told.changed_paths == []
    told = Told()
    assert await _agreed_starts(outgoing, {1: claim_of(0, 1000, b"x" + data[1:])}, told) == {}
    assert told.changed_paths == ["src/one.bin"] and told.kept_bytes == 0


@pytest.mark.parametrize("claims", [
    {"have": [{"file": 2, "have": 1, "sha256": "00"}]},
    {"have": [{"file": -1, "have": 1, "sha256": "00"}]},
    {"have": [{"file": 0, "have": 0, "sha256": "00"}]},
    {"have": [{"file": 0, "have": SIZE + 1, "sha256": "00"}]},
    {"have": [{"file": 0, "have": True, "sha256": "00"}]},
    {"have": [{"file": 0, "have": 1, "sha256": 5}]},
    {"have": [{"file": 0, "have": 1, "sha256": "00"}, {"file": 0, "have": 2, "sha256": "00"}]},
    {"have": [{"file": 0, "have": 1, "sha256": "00"}] * 3},
    {"have": ["x"]},
])
async def test_a_claim_out_of_shape_or_range_is_a_protocol_error(tmp_path, claims) -> None:
    outgoing = collect([make_files(tmp_path / "src")])
    with pytest.raises(p.ProtocolError):
        await _agreed_starts(outgoing, {1: claims}, Told())


async def test_no_claim_is_nothing_agreed(tmp_path) -> None:
    outgoing = collect([make_files(tmp_path / "src")])
    assert await _agreed_starts(outgoing, {1: {}}, Told()) == {}
    assert await _agreed_starts(outgoing, {1: {"have": "all of it"}}, Told()) == {}
