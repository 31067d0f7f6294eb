"""Load: a few hundred rooms at once through one relay process, every byte checked, relay memory measured.

The relay runs as ``relay serve`` (its per-address limits off: every client here is 127.0.0.1); the senders
and receivers are the client library in this process, each room a sender and a receiver with their own small
files of different sizes. Every received file is compared byte for byte with its source.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from clients.transfer import ReceiveOptions, Reporter, SendOptions, receive, send
from tests.hardening.measure import PeakMemory

ROOMS = int(os.environ.get("RELAY_LOAD_ROOMS", "300"))
MAX_FILE = 1024 * 1024
CHUNK = 64 * 1024
WAIT = 240.0
MEMORY_BOUND = 256 * 1024 * 1024  # peak RSS allowed for the whole relay process


async def yes(offer) -> bool:
    return True


class RoomOpened(Reporter):
    """Sets ``opened`` once the sender is in its room, so the receiver never joins too early."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.code = ""

    def waiting(self, code: str, receivers: int) -> None:
        self.code = code  # the relay chose the nameplate: the receiver needs the whole code
        self.opened.set()


async def one_room(relay, index: int, root: Path, rng: random.Random) -> int:
    """Send 1-3 files of random sizes (0 .. 1 MiB) through room ``index``; return the bytes moved."""
    words = f"load-{index}"
    source = root / "src" / str(index)
    out = root / "out" / str(index)
    source.mkdir(parents=True)
    out.mkdir(parents=True)
    paths = []
    for number in range(rng.randint(1, 3)):
        path = source / f"f{number}.bin"
        sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1] + [rng.randint(2, MAX_FILE)] * 5
        path.write_bytes(rng.randbytes(rng.choice(sizes)))
        paths.append(path)
    reporter = RoomOpened()
    sending = asyncio.create_task(send(paths, SendOptions(words, relay.ws_url, 1, CHUNK), reporter))
    opened = asyncio.create_task(reporter.opened.wait())
    await asyncio.wait([sending, opened], return_when=asyncio.FIRST_COMPLETED)
    opened.cancel()
    await asyncio.gather(sending, receive(ReceiveOptions(reporter.code, out, relay.ws_url), yes))
    moved = 0
    for path in paths:
        got = (out / path.name).read_bytes()
        assert got == path.read_bytes(), f"room {index}: {path.name} differs"
        moved += len(got)
    return moved


async def test_hundreds_of_concurrent_rooms_lose_and_corrupt_nothing(relay_process, tmp_path) -> None:
    relay = relay_process("--max-connections-per-ip", "0", "--max-joins-per-minute", "0", "--log-level", "warning")
    baseline = relay.rss()
    memory = PeakMemory(relay)
    rng = random.Random(5)
    started = time.monotonic()
    try:
        async with asyncio.timeout(WAIT):
            moved = await asyncio.gather(*(one_room(relay, index, tmp_path, random.Random(rng.random()))
                                           for index in range(ROOMS)))
    finally:
        peak = memory.stop()
    elapsed = time.monotonic() - started
    total = sum(moved)
    end_rss = relay.rss()
    print(f"\nload: {ROOMS} rooms, {total} bytes in {elapsed:.1f} s, 0 errors; relay RSS baseline "
          f"{baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, at end {end_rss / 2**20:.0f} MiB")
    assert relay.metric("relay_transfers_total", 'outcome="completed"') == ROOMS
    # the relay carries ciphertext: each chunk (an empty file is one empty chunk) has a 16-byte tag
    relayed = relay.metric("relay_payload_relayed_bytes_total")
    assert relayed == relay.metric("relay_payload_received_bytes_total") and relayed > total
    assert relay.metric("relay_errors_total") == 0
    assert "relay_join_failures_total{" not in relay.get("/metrics").text  # not one join was refused
    assert relay.get("/healthz").json()["rooms"] == 0
    assert peak < MEMORY_BOUND, f"relay peak RSS {peak >> 20} MiB"
