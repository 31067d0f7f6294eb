"""End-to-end encryption as people use it: the real relay, the real ``relay`` command, real files, and a relay
that lies (a small WebSocket proxy on loopback between the clients and the real relay).

What must hold (issue 10): the relay never learns a name, a byte of plaintext or a word of the code; a wrong code
ends the room for everyone with exit 5 and nothing written; a relay that alters, reorders, replays, drops or
splices ciphertext chunks is caught by the receiver with exit 6 on both sides, and nothing gets a final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websockets

from relay import protocol as p
from relay.config import Settings
from relay.rooms import JoinRequest, Rooms

WAIT = 120.0  # seconds a CLI run may take before the test fails
CHUNK = 1000  # small chunks, so that a few kilobytes make several chunks per file


# --- the relay command as subprocesses ----------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def start_sender(relay_url: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``relay send`` and read the code it prints first."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.cli", "send", "--relay", relay_url, "--chunk-size", str(CHUNK), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode()
    assert line.startswith("Code: "), line
    return process, line.split()[1]


async def finish(process: asyncio.subprocess.Process) -> Run:
    stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


async def receive(relay_url: str, code: str, output: Path) -> Run:
    """``relay receive`` with the code in ``RELAY_CODE`` (not argv), accepting at once."""
    await asyncio.to_thread(output.mkdir, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.cli", "receive", "--relay", relay_url, "--yes", "--output", str(output),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "RELAY_CODE": code},
    )
    return await finish(process)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def everything_under(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


@pytest.fixture
def two_files(tmp_path: Path) -> Path:
    """Two files of three chunks each (1000 + 1000 + 500 bytes): chunks 0-2 are file 0's, 3-5 file 1's."""
    source = tmp_path / "send" / "quarterly-secret-plans"
    source.mkdir(parents=True)
    (source / "alpha-confidential.txt").write_bytes(b"PLAINTEXT-MARKER-" + os.urandom(2483))
    (source / "beta-confidential.txt").write_bytes(os.urandom(2500))
    return source


# --- a relay in the middle ----------------------------------------------------------------------------------

Frames = list[str | bytes]
Attack = Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]


@dataclass
class Proxy:
    """A WebSocket proxy on loopback in front of the real relay: it records every frame the clients send (what
    the relay receives) and the paths they ask for, and it may rewrite the ciphertext chunks going to receivers."""

    upstream: str
    attack: Attack | None = None
    received: Frames = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def handle(self, client: websockets.ServerConnection) -> None:
        assert client.request is not None
        path = client.request.path
        self.paths.append(path)
        async with websockets.connect(self.upstream + path, compression=None, max_size=2**23, proxy=None) as relay:
            toward_receiver = "role=receive" in path
            up = asyncio.ensure_future(self._pipe_up(client, relay))
            down = asyncio.ensure_future(self._pipe_down(relay, client, toward_receiver))
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await task
            with contextlib.suppress(websockets.ConnectionClosed):
                await relay.close()
                await client.close()

    async def _pipe_up(self, client: websockets.ServerConnection, relay: websockets.ClientConnection) -> None:
        async for frame in client:
            self.received.append(frame)
            await relay.send(frame)

    async def _pipe_down(self, relay: websockets.ClientConnection, client: websockets.ServerConnection,
                         toward_receiver: bool) -> None:
        """Relay to client. Toward a receiver under attack, hold every chunk (header and payload) until ``end``,
        then send them as the attack rewrites them."""
        held: list[tuple[str, bytes]] = []
        header: str | None = None
        async for frame in relay:
            if self.attack is None or not toward_receiver:
                await client.send(frame)
            elif isinstance(frame, bytes):
                assert header is not None
                held.append((header, frame))
                header = None
            elif json.loads(frame)["type"] == "chunk":
                header = frame
            elif json.loads(frame)["type"] == "end":
                for chunk_header, payload in self.attack(held):
                    await client.send(chunk_header)
                    await client.send(payload)
                await client.send(frame)
            else:
                await client.send(frame)


@contextlib.asynccontextmanager
async def proxy_in_front(relay, attack: Attack | None = None) -> AsyncIterator[tuple[str, Proxy]]:
    proxy = Proxy(relay.ws_url, attack)
    async with websockets.serve(proxy.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", proxy


def rehash(header: str, payload: bytes) -> tuple[str, bytes]:
    """A header whose XXH3-64 matches the (altered) payload: transport checksums are no defence."""
    fields = json.loads(header)
    fields["xxh3_64"] = p.chunk_digest(payload)
    fields["size"] = len(payload)
    return json.dumps(fields), payload


def flip_a_byte(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    header, payload = chunks[1]
    altered = bytearray(payload)
    altered[10] ^= 0x01
    return [chunks[0], rehash(header, bytes(altered)), *chunks[2:]]


def reorder(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [chunks[1], chunks[0], *chunks[2:]]


def replay(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [chunks[0], chunks[0], *chunks[1:]]


def drop_the_last_chunk_of_a_file(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [*chunks[:2], *chunks[3:]]


def drop_the_very_last_chunk(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return chunks[:-1]


def swap_between_files(chunks: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [chunks[3], *chunks[1:3], chunks[0], *chunks[4:]]


# --- tests --------------------------------------------------------------------------------------------------


async def test_cli_to_cli_through_a_recording_relay_leaks_no_name_no_plaintext_and_no_word(
        relay_server, two_files, tmp_path) -> None:
    async with proxy_in_front(relay_server) as (url, proxy):
        sender, code = await start_sender(url, "--code", "zebra-quartz-mango", str(two_files))
        received = await receive(url, code, tmp_path / "out")
        sent = await finish(sender)
    assert received.returncode == 0 and sent.returncode == 0, (received.stderr, sent.stderr)
    for name in ("alpha-confidential.txt", "beta-confidential.txt"):
        assert sha(tmp_path / "out" / "quarterly-secret-plans" / name) == sha(two_files / name)
    wire = b"".join(f.encode() if isinstance(f, str) else f for f in proxy.received) + "".join(proxy.paths).encode()
    nameplate, words = code.split("-", 1)
    assert len(proxy.received) > 10 and nameplate.encode() in "".join(proxy.paths).encode()
    for secret in (b"quarterly", b"confidential", b"PLAINTEXT-MARKER", b"zebra", b"quartz", b"mango",
                   (two_files / "beta-confidential.txt").read_bytes()[:64]):
        assert secret not in wire, f"the relay received {secret!r}"


async def test_one_sender_to_three_cli_receivers(relay_server, two_files, tmp_path) -> None:
    sender, code = await start_sender(relay_server.ws_url, "--receivers", "3", str(two_files))
    outputs = [tmp_path / f"out{k}" for k in range(3)]
    runs = await asyncio.gather(*(receive(relay_server.ws_url, code, out) for out in outputs))
    sent = await finish(sender)
    assert sent.returncode == 0, sent.stderr
    for run, out in zip(runs, outputs, strict=True):
        assert run.returncode == 0, run.stderr
        for name in ("alpha-confidential.txt", "beta-confidential.txt"):
            assert sha(out / "quarterly-secret-plans" / name) == sha(two_files / name)


async def test_a_wrong_code_ends_the_room_for_everyone_and_counts_as_a_failed_join(relay_factory, two_files,
                                                                                      tmp_path) -> None:
    # 2 joins cost 2 tokens; the wrong guess is charged the rest of a failed join: the bucket of 20 is empty
    relay = relay_factory(max_joins_per_minute=20, failed_join_cost=20)
    sender, code = await start_sender(relay.ws_url, str(two_files))
    nameplate = code.split("-", 1)[0]
    received = await receive(relay.ws_url, f"{nameplate}-not-the-words", tmp_path / "out")
    sent = await finish(sender)
    told = "the code was wrong; nothing was sent; start again with a new code"
    assert received.returncode == 5 and told in received.stderr
    assert sent.returncode == 5 and told in sent.stderr
    assert everything_under(tmp_path / "out") == []
    assert len(relay.relay.rooms) == 0  # the code is spent: its room is gone
    again = await receive(relay.ws_url, code, tmp_path / "out")
    assert again.returncode == 1 and "too many join attempts" in again.stderr


@pytest.mark.parametrize("attack", [flip_a_byte, reorder, replay, drop_the_last_chunk_of_a_file,
                                    drop_the_very_last_chunk, swap_between_files])
async def test_a_relay_that_tampers_with_chunks_is_caught_and_nothing_gets_a_final_name(
        relay_server, two_files, tmp_path, attack: Attack) -> None:
    async with proxy_in_front(relay_server, attack) as (url, _):
        sender, code = await start_sender(url, str(two_files))
        received = await receive(url, code, tmp_path / "out")
        sent = await finish(sender)
    assert received.returncode == 6, received.stderr
    assert sent.returncode == 6, sent.stderr
    assert "altered on the way" in received.stderr
    assert everything_under(tmp_path / "out") == []


async def test_the_relay_speaks_only_versions_1_and_2(relay_server) -> None:
    async with websockets.connect(f"{relay_server.ws_url}/ws?role=send&v=3", proxy=None) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert message["code"] == "unsupported_version"
    async with websockets.connect(f"{relay_server.ws_url}/ws/some-room?role=send&v=2", proxy=None) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert message["code"] == "bad_request" and "chooses the nameplate" in message["message"]


def test_nameplates_are_short_and_reused_after_their_room_ends() -> None:
    rooms = Rooms(Settings())
    first = lambda n: 0  # noqa: E731 - a chooser that always takes the first candidate
    room, _ = rooms._admit_sender(JoinRequest("", "send", None, "2"), 0.0, 2)
    assert len(room.code) == 1
    rooms.remove(room)
    assert rooms.allocate_nameplate(first) == "1"
    taken, _ = rooms._admit_sender(JoinRequest("", "send", None, "2"), 0.0, 2)
    rooms.by_code.setdefault("1", taken)
    assert rooms.allocate_nameplate(first) != "1"
    for n in range(1, 6):  # with more than half of 1-9 taken, nameplates get a second digit
        rooms.by_code.setdefault(str(n), taken)
    assert len(rooms.allocate_nameplate()) == 2
