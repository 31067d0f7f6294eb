"""A peer that moves part of a transfer and then stalls until it is killed (used by the kill -9 tests).

usage: python stall_peer.py send|receive WS_URL CODE
  send:    offers one 8-chunk file, sends 3 chunks, prints "stalled", sleeps
  receive: accepts, reads 2 payload frames, prints "stalled", stops reading, sleeps
"""

from __future__ import annotations

import asyncio
import sys

import websockets

from relay import protocol as p

CHUNK = 64 * 1024
LIFETIME = 60.0  # the test kills it long before this


async def stall_sender(url: str, code: str) -> None:
    async with websockets.connect(f"{url}/ws/{code}?role=send", compression=None, proxy=None) as ws:
        while p.parse_message(await ws.recv()).TYPE != "paired":
            pass
        await ws.send(p.Offer((p.FileEntry("victim.bin", 8 * CHUNK),), (), CHUNK).to_json())
        while p.parse_message(await ws.recv()).TYPE != "start":
            pass
        data = b"\x42" * CHUNK
        for index in range(3):
            await ws.send(p.Chunk(0, index * CHUNK, CHUNK, p.chunk_digest(data)).to_json())
            await ws.send(data)
        print("stalled", flush=True)
        await asyncio.sleep(LIFETIME)


async def stall_receiver(url: str, code: str) -> None:
    async with websockets.connect(f"{url}/ws/{code}?role=receive", compression=None, proxy=None,
                                  max_size=2**23, max_queue=1) as ws:
        await ws.recv()  # hello
        await ws.recv()  # offer
        await ws.send(p.Accept().to_json())
        payloads = 0
        while payloads < 2:
            if isinstance(await ws.recv(), bytes):
                payloads += 1
        print("stalled", flush=True)
        await asyncio.sleep(LIFETIME)


if __name__ == "__main__":
    role, url, code = sys.argv[1:4]
    asyncio.run((stall_sender if role == "send" else stall_receiver)(url, code))
