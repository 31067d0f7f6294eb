"""A peer that moves part of a transfer and then stalls until it is killed (used by the kill -9 tests).

usage: python stall_peer.py send|receive WS_URL CODE
  send:    CODE is the secret words; prints the whole code, keys with the receiver, offers one 8-chunk file,
           sends 3 sealed chunks, prints "stalled", sleeps
  receive: CODE is the whole code; keys, accepts, reads 2 payload frames, prints "stalled", stops reading, sleeps
"""

from __future__ import annotations

import asyncio
import json
import sys

import websockets

from relay import protocol as p
from tests.peers import b64, key_as_receiver, key_as_sender, seal_json
from clients import crypto as c

CHUNK = 64 * 1024
LIFETIME = 60.0  # the test kills it long before this


def sides(ws: websockets.ClientConnection):
    async def recv() -> dict:
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                message = json.loads(frame)
                if message["type"] not in ("peer_joined", "paired"):
                    return message

    return ws.send, recv


async def stall_sender(url: str, words: str) -> None:
    async with websockets.connect(f"{url}/ws?role=send&v=2", compression=None, proxy=None) as ws:
        hello = json.loads(await ws.recv())
        code = f"{hello['nameplate']}-{words}"
        print(code, flush=True)
        while json.loads(await ws.recv())["type"] != "peer_joined":
            pass
        send, recv = sides(ws)
        channel, content_key = await key_as_sender(send, recv, code, 1)
        offer = p.Offer((p.FileEntry("victim.bin", 8 * CHUNK),), (), CHUNK)
        await ws.send(json.dumps({"type": "offer", "to": 1, "total_size": 8 * CHUNK, "files": 1,
                                  "data": b64(channel.seal(offer.to_json().encode()))}))
        while p.parse_message(await ws.recv(), 2).TYPE != "start":
            pass
        salt = c.new_epoch_salt()
        plan = c.StreamPlan((c.Segment(0, 0, 8 * CHUNK),), CHUNK)
        plan_json = {"salt": b64(salt), "chunk_size": CHUNK, "segments": [[0, 0, 8 * CHUNK]]}
        await ws.send(json.dumps({"type": "stream", "epoch": 0, "to": [1], "chunks": plan.chunk_count(),
                                  "bytes": plan.ciphertext_size(), "data": [seal_json(channel, plan_json)]}))
        sealer = c.StreamSealer(c.data_key(content_key, salt), plan)
        for _ in range(3):
            sealed = sealer.seal_next(b"\x42" * CHUNK)
            await ws.send(p.SealedChunk(0, len(sealed), p.chunk_digest(sealed)).to_json())
            await ws.send(sealed)
        print("stalled", flush=True)
        await asyncio.sleep(LIFETIME)


async def stall_receiver(url: str, code: str) -> None:
    nameplate, _ = c.split_code(code)
    async with websockets.connect(f"{url}/ws/{nameplate}?role=receive&v=2", compression=None, proxy=None,
                                  max_size=2**23, max_queue=1) as ws:
        await ws.recv()  # hello
        send, recv = sides(ws)
        channel, _ = await key_as_receiver(send, recv, code)
        await recv()  # offer
        await ws.send(json.dumps({"type": "accept", "data": seal_json(channel, {})}))
        payloads = 0
        while payloads < 2:
            if isinstance(await ws.recv(), bytes):
                payloads += 1
        print("stalled", flush=True)
        await asyncio.sleep(LIFETIME)


if __name__ == "__main__":
    role, url, code = sys.argv[1:4]
    asyncio.run((stall_sender if role == "send" else stall_receiver)(url, code))
