"""Upgrades the relay will not accept, whatever their size or pace, are answered (414/431/408) or dropped within
the handshake deadline, on a real ``relay serve`` (uvloop, httptools), from raw sockets.

Before the fix a WebSocket upgrade whose request line was over 8 KiB (a 10 KB room code) got no reply at all and
the socket stayed open for good: uvicorn hands the upgrade to ``websockets``, which refuses it and queues a 414,
and nobody wrote that answer or closed the connection; the handshake deadline no longer applied (the HTTP
protocol had handed the connection over) and the per-address socket limit never saw it (no app was called).
"""

from __future__ import annotations

import asyncio
import time

import pytest

HANDSHAKE = 2.0
# Answered or dropped within the deadline, plus a margin for a loaded machine (and the LINGER abort).
BOUND = HANDSHAKE + 8.0
FLAGS = ("--handshake-timeout", str(HANDSHAKE), "--max-connections-per-ip", "4")


def upgrade(path: str, extra_headers: bytes = b"") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    ).encode() + extra_headers + b"\r\n"


async def answer(port: int, request: bytes, drip: bytes = b"", interval: float = 0.1) -> tuple[bytes, float]:
    """Send ``request`` (then ``drip`` every ``interval`` s while open); return what came back before the relay
    closed the connection, and how long that took. Fails if the connection is still open after ``BOUND``."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(request)
        async with asyncio.timeout(BOUND):
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), interval) if drip else await reader.read(65536)
                except TimeoutError:
                    writer.write(drip)
                    continue
                except ConnectionError:
                    break
                if not data:
                    break
                got += data
    except TimeoutError:
        pytest.fail(f"the relay kept the connection open for {BOUND} s; got {got[:200]!r}")
    finally:
        writer.close()
    return got, time.monotonic() - started


async def test_a_ten_kilobyte_room_code_gets_414_and_a_close(relay_process) -> None:
    relay = relay_process(*FLAGS)
    got, _ = await answer(relay.port, upgrade("/ws/" + "a" * 10_000 + "?role=send"))
    assert got.startswith(b"HTTP/1.1 414")
    assert relay.get("/healthz").json()["rooms"] == 0


async def test_a_hundred_kilobyte_header_gets_431_and_a_close(relay_process) -> None:
    relay = relay_process(*FLAGS)
    got, _ = await answer(relay.port, upgrade("/ws/big-header?role=send", b"X-Big: " + b"b" * 100_000 + b"\r\n"))
    assert got.startswith(b"HTTP/1.1 431")


async def test_a_hundred_kilobytes_of_small_headers_get_431_and_a_close(relay_process) -> None:
    relay = relay_process(*FLAGS)
    headers = b"".join(b"X-H%d: %s\r\n" % (index, b"h" * 90) for index in range(1000))
    got, _ = await answer(relay.port, upgrade("/ws/many-headers?role=send", headers))
    assert got.startswith(b"HTTP/1.1 431")


async def test_a_request_line_dripped_slowly_is_dropped_at_the_deadline(relay_process) -> None:
    relay = relay_process(*FLAGS)
    got, _ = await answer(relay.port, b"GET /ws/", drip=b"a", interval=0.1)
    assert got.startswith(b"HTTP/1.1 408")


async def test_two_hundred_long_upgrades_from_one_address_are_all_answered_and_closed(relay_process) -> None:
    relay = relay_process(*FLAGS)
    request = upgrade("/ws/" + "c" * 10_000 + "?role=send")
    results = await asyncio.gather(*(answer(relay.port, request) for _ in range(200)))
    assert all(got.startswith(b"HTTP/1.1 414") for got, _ in results)
    for _ in range(int(BOUND / 0.05)):  # the relay's side of each socket is gone too
        if relay.established() == 0:
            break
        await asyncio.sleep(0.05)
    assert relay.established() == 0
