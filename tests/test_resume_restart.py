"""Resume across a relay restart (docs/protocol.md section 10.2): ``relay serve`` in a process of its own, killed
with SIGKILL mid-transfer and started again on the same port; the real ``relay send`` and ``relay receive``
reconnect, the restarted relay recreates the room from the first ``resume`` that carries its shape, every pair
resyncs end to end, and the transfer completes byte for byte from what each receiver holds.

The moment of the kill is a condition, not a time: a gate in front of every receiver forwards a set number of
chunks, then stops reading from the relay; once every gate holds and its receiver acknowledged its first file,
the relay is killed. Every receiver is gated: the relay may well have written the whole stream into a held
gate's socket buffers by then (1.5 MiB), so a receiver straight on the relay could finish, verify and exit before
the kill, and the recreated room would wait the whole resume window for a seat nobody takes back (about 1 run in
6 failed that way). When the test kills the relay it cuts every gate's first connection at once, as the kernel
cuts a killed process's sockets: a gate that stopped reading would otherwise learn of the death only from its
keepalive (~40 s later, and past the bounded waits on a busy machine). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from tests.conftest import free_port
from tests.relayproc import RelayProcess
from tests.test_e2e import Run, everything_under, finish, sha
from tests.test_resume_dropped_cli import EXIT_DROPPED, RESUME_WINDOW, Unreachable

pytestmark = pytest.mark.asyncio
CHUNK = 16 * 1024
SIZE = 2 * 1024 * 1024  # two files of 128 chunks each
HELD_CHUNKS = 160  # the gate forwards the first file and 32 chunks of the second, then holds
FILE_CHUNKS = SIZE // CHUNK
WAIT = 60


@dataclass
class Gate:
    """Pipes a receiver to the relay. Its first connection forwards ``after`` binary frames, then stops reading
    from the relay and sets ``holding``; when the relay dies, the receiver's socket is cut without a close frame.
    Later connections (the resume) pass through."""

    upstream: str
    after: int
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    acked: asyncio.Event = field(default_factory=asyncio.Event)  # the receiver acknowledged a file: it wrote it
    verified: asyncio.Event = field(default_factory=asyncio.Event)  # a `verified` passed (either way)
    cut: asyncio.Event = field(default_factory=asyncio.Event)  # the relay was killed: drop the first connection
    paths: list[str] = field(default_factory=list)

    async def handle(self, client: websockets.ServerConnection) -> None:
        assert client.request is not None
        self.paths.append(client.request.path)
        first = len(self.paths) == 1
        try:
            async with websockets.connect(self.upstream + client.request.path, compression=None, max_size=2**23,
                                          proxy=None) as relay:
                up = asyncio.ensure_future(self._pipe(client, relay, None))
                down = asyncio.ensure_future(self._pipe(relay, client, self.after if first else None))
                cut = asyncio.ensure_future(self.cut.wait() if first else asyncio.Event().wait())
                await asyncio.wait([up, down, cut], return_when=asyncio.FIRST_COMPLETED)
                if cut.done():  # no closing handshake with a dead relay (it would wait out close_timeout)
                    relay.transport.abort()
                    client.transport.abort()
                for task in (up, down, cut):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await task
        except (OSError, websockets.WebSocketException):
            pass
        client.transport.abort()  # the relay's side is gone: the receiver's dies the same way, no close frame

    async def _pipe(self, source: websockets.ServerConnection | websockets.ClientConnection,
                    sink: websockets.ServerConnection | websockets.ClientConnection, after: int | None) -> None:
        binaries = 0
        async for frame in source:
            await sink.send(frame)
            if isinstance(frame, str) and '"type":"ack"' in frame:
                self.acked.set()
            if isinstance(frame, str) and '"type":"verified"' in frame:
                self.verified.set()
            if isinstance(frame, bytes):
                binaries += 1
                if after is not None and binaries == after:
                    self.holding.set()
                    await source.wait_closed()  # read nothing more; returns when the relay dies
                    return


@contextlib.asynccontextmanager
async def relay_and_gates(after: int, count: int, *flags: str
                          ) -> AsyncIterator[tuple[RelayProcess, list[tuple[str, Gate]]]]:
    """The relay (``relay serve`` with ``flags``), and ``count`` gates in front of it (one per receiver): each
    gate's URL and the gate."""
    relay = RelayProcess(free_port(), flags=("--log-level", "warning", *flags))
    await asyncio.to_thread(relay.start)
    try:
        async with contextlib.AsyncExitStack() as stack:
            gates = []
            for _ in range(count):
                gate = Gate(relay.ws_url, after)
                server = await stack.enter_async_context(
                    websockets.serve(gate.handle, "127.0.0.1", 0, compression=None, max_size=2**23))
                gates.append((f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", gate))
            yield relay, gates
    finally:
        await asyncio.to_thread(relay.kill)


async def restart(relay: RelayProcess, gates: list[tuple[str, Gate]]) -> None:
    """SIGKILL the relay, cut what every gate had open to it, and start it again on the same port."""
    await asyncio.to_thread(relay.kill)
    for _, gate in gates:
        gate.cut.set()
    await asyncio.to_thread(relay.start)  # the same port: the clients' next attempts find the new process


def assert_everyone_got_everything(sent: Run, runs: list[Run], outputs: list[Path], source: Path) -> None:
    """The sender and every receiver succeeded, and each output holds both files byte for byte and nothing else."""
    assert sent.returncode == 0, sent.stderr + sent.stdout
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, run.stderr + run.stdout
        assert everything_under(output) == ["src", "src/one.bin", "src/two.bin"]
        for name in ("one.bin", "two.bin"):
            assert sha(output / "src" / name) == sha(source / name)


def make_files(folder: Path) -> Path:
    folder.mkdir()
    for name, seed in (("one.bin", 3), ("two.bin", 5)):
        (folder / name).write_bytes(bytes((i * seed + i // 11) % 251 for i in range(SIZE)))
    return folder


async def cli(*args: str, code: str | None = None) -> asyncio.subprocess.Process:
    env = {**os.environ, **({"RELAY_CODE": code} if code else {})}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "clients.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.mark.parametrize("receivers", [1, 3])
async def test_a_relay_killed_mid_transfer_and_started_again_the_transfer_completes(tmp_path, receivers) -> None:
    source = make_files(tmp_path / "src")
    outputs = [tmp_path / f"out{k}" for k in range(receivers)]
    for output in outputs:
        output.mkdir()
    async with relay_and_gates(HELD_CHUNKS, receivers) as (relay, gates):
        sender = await cli("send", "--relay", relay.ws_url, "--chunk-size", str(CHUNK), "--receivers", str(receivers),
                           str(source))
        assert sender.stdout is not None
        line = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode()
        assert line.startswith("Code: "), line
        code = line.split()[1]
        receiving = [await cli("receive", "--relay", gated, "--yes", "--output", str(output), code=code)
                     for (gated, _), output in zip(gates, outputs, strict=True)]
        for _, gate in gates:
            await asyncio.wait_for(gate.holding.wait(), WAIT)
            await asyncio.wait_for(gate.acked.wait(), WAIT)  # it wrote the first file (what it read later may be lost)
        await restart(relay, gates)
        runs: list[Run] = list(await asyncio.gather(*(finish(process) for process in receiving)))
        sent = await finish(sender)
    assert_everyone_got_everything(sent, runs, outputs, source)
    for run in runs:
        assert "connection lost, reconnecting" in run.stdout
    assert all("resume=1" in gate.paths[-1] for _, gate in gates)
    # The next epoch starts from what the receivers hold (each at least the first file, which it
    # acknowledged), so what is sent again is only what it had not written when the relay died: at most the second
    # file. Starting again from 0 would resend at least the HELD_CHUNKS chunks the sender had sent, which is more.
    match = re.search(r"\((\d+) bytes\) sent again", sent.stdout)
    resent = int(match.group(1)) if match else 0  # 0 (not said): the sender had sent nothing beyond the gate yet
    assert resent <= 2 * SIZE - FILE_CHUNKS * CHUNK < HELD_CHUNKS * CHUNK


async def test_a_receiver_that_verified_before_the_restart_is_not_waited_for(tmp_path) -> None:
    """Receiver A verified (it waits for ``complete``) and receiver B is mid-transfer when the relay dies. A ends
    with its files and never comes back; the sender's resume says A verified, so the recreated room does not wait
    for A's seat, and B gets its catch-up epoch. Before, the recreated room waited out the window for A and the
    transfer failed for B and the sender."""
    source = make_files(tmp_path / "src")
    outputs = [tmp_path / "out-a", tmp_path / "out-b"]
    for output in outputs:
        output.mkdir()
    total_chunks = 2 * FILE_CHUNKS
    async with relay_and_gates(total_chunks - 16, 3) as (relay, gates):
        (free_url, free), (held_url, held), (sender_url, sender_gate) = gates
        free.after = sender_gate.after = 10**9  # A's gate and the sender's pass everything
        sender = await cli("send", "--relay", sender_url, "--chunk-size", str(CHUNK), "--receivers", "2",
                           "--resume-window", "60", str(source))
        assert sender.stdout is not None
        line = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode()
        code = line.split()[1]
        receiving = [await cli("receive", "--relay", free_url, "--yes", "--output", str(outputs[0]), code=code),
                     await cli("receive", "--relay", held_url, "--yes", "--output", str(outputs[1]), code=code)]
        await asyncio.wait_for(held.holding.wait(), WAIT)
        await asyncio.wait_for(free.verified.wait(), WAIT)  # A holds every file; the relay dies before `complete`
        await asyncio.wait_for(sender_gate.verified.wait(), WAIT)  # and the sender was told so before the kill
        await restart(relay, gates)
        runs: list[Run] = list(await asyncio.gather(*(finish(process) for process in receiving)))
        sent = await finish(sender)
    assert_everyone_got_everything(sent, runs, outputs, source)
    assert len(free.paths) == 1 and "resume=1" in held.paths[-1]  # A never came back; B resumed


async def test_a_receiver_dropped_before_the_restart_is_not_waited_for_again(tmp_path) -> None:
    """The relay (a 2 s window) drops receiver B, which cannot get back; receiver A is held mid-transfer when the
    relay is killed, and the new process has a 600 s window. The sender's resume says B was dropped, so the
    recreated room closes B's seat at once and A gets its catch-up epoch; the sender exits 7 (one receiver
    dropped). Before, the recreated room waited the whole new window for B (past every bound here)."""
    source = make_files(tmp_path / "src")
    outputs = [tmp_path / "out-a", tmp_path / "out-b"]
    for output in outputs:
        output.mkdir()
    async with relay_and_gates(HELD_CHUNKS, 1, "--resume-window", str(RESUME_WINDOW)) as (relay, gates):
        (held_url, held), = gates
        unreachable = Unreachable(relay.ws_url, 20)
        async with websockets.serve(unreachable.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as cut:
            cut_url = f"ws://127.0.0.1:{cut.sockets[0].getsockname()[1]}"
            sender = await cli("send", "--relay", relay.ws_url, "--chunk-size", str(CHUNK), "--receivers", "2",
                               str(source))
            assert sender.stdout is not None
            code = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode().split()[1]
            a = await cli("receive", "--relay", held_url, "--yes", "--output", str(outputs[0]), code=code)
            b = await cli("receive", "--relay", cut_url, "--yes", "--output", str(outputs[1]), code=code)
            try:
                await asyncio.wait_for(held.holding.wait(), WAIT)
                said: list[str] = []
                while not any("was dropped" in line for line in said):  # the sender heard `dropped`
                    line = (await asyncio.wait_for(sender.stdout.readline(), WAIT)).decode()
                    assert line, said
                    said.append(line)
                relay.flags = ("--log-level", "warning", "--resume-window", "600")
                await restart(relay, gates)
                run = await finish(a)
                sent = await finish(sender)
            finally:
                if b.returncode is None:
                    b.kill()  # it keeps trying to get back through the cutter that refuses it
                await b.wait()
    assert run.returncode == 0, run.stderr + run.stdout
    assert everything_under(outputs[0]) == ["src", "src/one.bin", "src/two.bin"]
    for name in ("one.bin", "two.bin"):
        assert sha(outputs[0] / "src" / name) == sha(source / name)
    assert sent.returncode == EXIT_DROPPED, sent.stderr + sent.stdout
    assert "1 of 2 receivers got every file" in sent.stdout + sent.stderr
    assert not (outputs[1] / "src" / "one.bin").exists() and "resume=1" in held.paths[-1]
