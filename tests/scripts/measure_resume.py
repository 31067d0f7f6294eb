"""Measure a short drop healing: a transfer of SIZE_MIB MiB whose receiver's connection is cut at about half.

usage: python -m tests.scripts.measure_resume SIZE_MIB WORK_FOLDER [--restart]

With ``--restart`` the relay process itself is killed (SIGKILL) once about half of the chunks reached the
receiver, and started again on the same port: the clients reconnect and the new process recreates the room
(docs/protocol.md section 10.2). Printed: the bytes sent again, the time from the kill to the first chunk of the
new epoch at the receiver, and the new relay process's RSS right after it started and at its peak while the
room waited for its parties.
Starts ``relay serve`` on a free loopback port (a process of its own, so its RSS can be read), a proxy in front of
it for the receiver that cuts the receiver's first connection (no close frame) after half of the chunks, then
``relay send`` and ``relay receive`` (1 MiB chunks). Prints the bytes sent again, the time from the cut to the
first chunk of the new epoch, the relay's RSS before the transfer, at the cut and at its peak while parked, and
whether the received file is byte for byte the sent one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path

import websockets

from tests.conftest import free_port
from tests.relayproc import RelayProcess, child_env, relay_command
from tests.test_resume_cli import Cutter

CHUNK = 1024 * 1024


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) if match else -1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class TimedCutter(Cutter):
    """The cutter, noting when it cut and when the first payload of the resumed connection passed."""

    cut_at: float = 0.0
    resumed_at: float = 0.0

    async def _pipe(self, source, sink, cut):  # type: ignore[no-untyped-def]
        binaries = 0
        async for frame in source:
            if isinstance(frame, bytes):
                binaries += 1
                if cut is not None and binaries > cut:
                    self.cut_at = time.monotonic()
                    return
                if cut is None and len(self.paths) > 1 and not self.resumed_at and self.cut_at:
                    self.resumed_at = time.monotonic()
            await sink.send(frame)


def prepare(size_mib: int, work: Path) -> tuple[Path, Path]:
    """The source file (random bytes, kept between runs) and an empty output folder."""
    work.mkdir(parents=True, exist_ok=True)
    source = work / "big.bin"
    if not source.exists() or source.stat().st_size != size_mib * CHUNK:
        with source.open("wb") as handle:
            for _ in range(size_mib):
                handle.write(os.urandom(CHUNK))
    out = work / "out"
    out.mkdir(exist_ok=True)
    for leftover in out.iterdir():
        leftover.unlink()
    return source, out


def start_relay(port: int) -> RelayProcess:
    return RelayProcess(port, flags=("--log-level", "warning")).start()


async def start_clients(url: str, proxy: str, source: Path, out: Path) -> tuple[Process, Process]:
    """``relay send`` of ``source`` on ``url``, then ``relay receive`` into ``out`` through ``proxy``."""
    env = child_env()
    sender = await asyncio.create_subprocess_exec(
        *relay_command("send", "--relay", url, str(source)), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert sender.stdout is not None
    first = (await asyncio.wait_for(sender.stdout.readline(), 60)).decode()
    print(f"sender: {first.strip()}", file=sys.stderr, flush=True)
    receiver = await asyncio.create_subprocess_exec(
        *relay_command("receive", "--relay", proxy, "--yes", "--output", str(out)),
        env={**env, "RELAY_CODE": first.split()[1]}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return sender, receiver


async def outcome(sender: Process, receiver: Process, source: Path, out: Path) -> tuple[bool, str]:
    """Wait for both clients (the sender at most 60 s after the receiver); print their exits and what they said.
    Returns whether both succeeded with the file byte for byte, and the bytes the sender says it sent again."""
    received_out, received_err = await receiver.communicate()
    try:
        sent_out, sent_err = await asyncio.wait_for(sender.communicate(), 60)
    except TimeoutError:
        sender.kill()
        sent_out, sent_err = await sender.communicate()
    sent_text = sent_out.decode()
    resent = re.search(r"\((\d+) bytes\) sent again", sent_text)
    received = out / source.name
    same = received.exists() and _sha256(source) == _sha256(received)
    print(f"exit codes: sender {sender.returncode}, receiver {receiver.returncode}; byte for byte: {same}")
    print(f"bytes sent again: {resent.group(1) if resent else 0}")
    print(f"receiver said: {received_out.decode().strip()!r} {received_err.decode().strip()!r}")
    print(f"sender said: {sent_text.strip()!r} {sent_err.decode().strip()!r}")
    return same and sender.returncode == 0 and receiver.returncode == 0, resent.group(1) if resent else "0"


async def main(size_mib: int, source: Path, out: Path) -> int:
    relay = await asyncio.to_thread(start_relay, free_port())
    try:
        idle = rss_kib(relay.pid)
        print(f"relay up on {relay.port}, pid {relay.pid}", file=sys.stderr, flush=True)
        cutter = TimedCutter(relay.ws_url, size_mib // 2)
        async with websockets.serve(cutter.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
            proxy = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            sender, receiver = await start_clients(relay.ws_url, proxy, source, out)
            started = time.monotonic()
            at_cut = peak = 0
            while receiver.returncode is None and time.monotonic() - started < 600:
                if cutter.cut_at and not cutter.resumed_at:
                    now = rss_kib(relay.pid)
                    at_cut = at_cut or now
                    peak = max(peak, now)
                try:
                    await asyncio.wait_for(receiver.wait(), 0.02)
                except TimeoutError:
                    pass
            print(f"size: {size_mib} MiB in 1 MiB chunks; cut after {size_mib // 2} chunks reached the receiver")
            ok, _ = await outcome(sender, receiver, source, out)
        print(f"time from the cut to the first chunk of the new epoch: {cutter.resumed_at - cutter.cut_at:.3f} s")
        print(f"relay RSS: idle {idle} KiB, at the cut {at_cut} KiB, peak while parked {peak} KiB")
        return 0 if ok else 1
    finally:
        await asyncio.to_thread(relay.stop)

class Counter(Cutter):
    """A pipe in front of the receiver that cuts nothing: it counts the chunks of its first connection (``seen``
    is set at ``after``) and notes when the first chunk of a later connection passed."""

    resumed_at: float = 0.0

    def __init__(self, upstream: str, after: int) -> None:
        super().__init__(upstream, after)
        self.seen = asyncio.Event()

    async def handle(self, client):  # type: ignore[no-untyped-def]
        assert client.request is not None
        self.paths.append(client.request.path)
        first = len(self.paths) == 1
        try:
            async with websockets.connect(self.upstream + client.request.path, compression=None, max_size=2**23,
                                          proxy=None) as relay:
                up = asyncio.ensure_future(self._pass(client, relay, False))
                down = asyncio.ensure_future(self._pass(relay, client, first))
                await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
                for task in (up, down):
                    task.cancel()
        except (OSError, websockets.WebSocketException):
            pass
        client.transport.abort()

    async def _pass(self, source, sink, counting: bool) -> None:  # type: ignore[no-untyped-def]
        binaries = 0
        try:
            async for frame in source:
                await sink.send(frame)
                if isinstance(frame, bytes):
                    binaries += 1
                    if counting and binaries == self.after:
                        self.seen.set()
                    if not counting and source is not None and len(self.paths) > 1 and not self.resumed_at \
                            and self.seen.is_set() and sink is not None and self._is_down(sink):
                        self.resumed_at = time.monotonic()
        except websockets.ConnectionClosed:
            pass

    def _is_down(self, sink) -> bool:  # type: ignore[no-untyped-def]
        return isinstance(sink, websockets.ServerConnection)


async def restart(size_mib: int, source: Path, out: Path) -> int:
    """Kill the relay at about half of the transfer and start it again on the same port."""
    relay = await asyncio.to_thread(start_relay, free_port())
    counter = Counter(relay.ws_url, size_mib // 2)
    try:
        async with websockets.serve(counter.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
            proxy = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            sender, receiver = await start_clients(relay.ws_url, proxy, source, out)
            await asyncio.wait_for(counter.seen.wait(), 600)
            killed_at = time.monotonic()
            await asyncio.to_thread(relay.kill)
            await asyncio.to_thread(relay.start)
            started_at = time.monotonic()
            fresh = peak = rss_kib(relay.pid)
            while receiver.returncode is None and time.monotonic() - killed_at < 600:
                if not counter.resumed_at:
                    peak = max(peak, rss_kib(relay.pid))
                try:
                    await asyncio.wait_for(receiver.wait(), 0.02)
                except TimeoutError:
                    pass
            print(f"size: {size_mib} MiB in 1 MiB chunks; relay killed (SIGKILL) once {size_mib // 2} chunks "
                  "reached the receiver, started again on the same port")
            ok, _ = await outcome(sender, receiver, source, out)
        print(f"time from the kill to the first chunk of the new epoch: {counter.resumed_at - killed_at:.3f} s "
              f"(of which the new relay process took {started_at - killed_at:.3f} s to answer /healthz)")
        print(f"new relay RSS: right after it started {fresh} KiB, peak while the room waited {peak} KiB")
        return 0 if ok else 1
    finally:
        await asyncio.to_thread(relay.stop)

if __name__ == "__main__":
    size = int(sys.argv[1])
    run = restart if "--restart" in sys.argv[3:] else main
    sys.exit(asyncio.run(run(size, *prepare(size, Path(sys.argv[2])))))
