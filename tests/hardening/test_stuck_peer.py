"""A receiver that stops reading: the relay's memory stays bounded, the idle timeout fires, the socket is dropped.

The stuck receiver is a raw TCP socket with a small receive buffer driven by websockets' sans-I/O client: it
opens the WebSocket, reads up to the offer, accepts, and never reads again. The relay runs as a subprocess so
its memory and its open connections are measured from outside.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from clients import crypto
from relay import protocol as p
from tests.hardening.measure import PeakMemory
from tests.peers import WORDS, b64, key_as_sender, seal_json, unb64
from tests.hardening.wire import WAIT, outcome

CHUNK = 1024 * 1024
FILE_SIZE = 256 * CHUNK  # what each sender tries to push through its stuck receiver
ROOMS = 3
MEMORY_BOUND = 64 * 1024 * 1024  # growth allowed for ROOMS rooms; each sender tries to push 256 MiB


class StuckReceiver:
    """Joins a room, accepts the offer, then never reads from its socket again."""

    def __init__(self, port: int, code: str) -> None:
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws/{code}?role=receive"))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def accept_offer(self) -> None:
        """Read (and answer pings) until the offer arrives, send accept, and stop reading for good."""
        for _ in range(100):
            data = self.sock.recv(65536)
            assert data, "the relay closed the socket before the offer"
            self.protocol.receive_data(data)
            self._flush()
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    if p.parse_message(event.data.decode()).TYPE == "offer":
                        self.protocol.send_text(p.Accept().to_json().encode())
                        self._flush()
                        return
        raise AssertionError("no offer arrived")

    def close(self) -> None:
        self.sock.close()


async def push(ws_url: str, code: str, started: asyncio.Event) -> tuple[list, int | None, int]:
    """A sender that streams as fast as the relay lets it; returns what the relay said, its close, bytes sent."""
    sent = 0
    async with websockets.connect(f"{ws_url}/ws/{code}?role=send", compression=None, proxy=None,
                                  max_size=2**23, write_limit=2**16) as ws:
        while p.parse_message(await asyncio.wait_for(ws.recv(), WAIT)).TYPE != "paired":
            pass
        await ws.send(p.Offer((p.FileEntry("big.bin", FILE_SIZE),), (), CHUNK).to_json())
        while p.parse_message(await asyncio.wait_for(ws.recv(), WAIT)).TYPE != "start":
            pass
        started.set()
        data = bytes(range(256)) * (CHUNK // 256)
        digest = p.chunk_digest(data)
        try:
            for offset in range(0, FILE_SIZE, CHUNK):
                await ws.send(p.Chunk(0, offset, CHUNK, digest).to_json())
                await ws.send(data)
                sent += CHUNK
        except websockets.ConnectionClosed:
            pass
        seen, close = await outcome(ws)
        return seen, close, sent


async def test_receivers_that_never_read_leave_relay_memory_bounded_and_are_dropped(relay_process) -> None:
    relay = relay_process("--idle-timeout", "3", "--max-connections-per-ip", "0", "--max-joins-per-minute", "0")
    baseline = relay.rss()
    memory = PeakMemory(relay)
    stuck: list[StuckReceiver] = []
    try:
        senders = []
        for index in range(ROOMS):
            code = f"stuck-{index}"
            started = asyncio.Event()
            senders.append((asyncio.create_task(push(relay.ws_url, code, started)), started))
            for _ in range(200):
                if relay.get("/healthz").json()["rooms"] > index:
                    break
                await asyncio.sleep(0.02)
            receiver = await asyncio.to_thread(StuckReceiver, relay.port, code)
            stuck.append(receiver)
            await asyncio.to_thread(receiver.accept_offer)
            await asyncio.wait_for(started.wait(), WAIT)
        results = await asyncio.wait_for(asyncio.gather(*(task for task, _ in senders)), 60)
    finally:
        peak = memory.stop()
    for seen, close, sent in results:
        assert close == 4041 and seen[-1]["code"] == "idle_timeout", (seen, close)
        assert sent < FILE_SIZE  # the sender was held back, not buffered without end
    print(f"relay RSS: baseline {baseline >> 20} MiB, peak {peak >> 20} MiB with {ROOMS} stuck receivers")
    assert peak - baseline < MEMORY_BOUND, f"relay grew by {(peak - baseline) >> 20} MiB"
    # The stuck sockets are really closed by the relay (not left waiting for a drain that never comes).
    deadline = time.monotonic() + 30
    while relay.established() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - another process's sockets
        await asyncio.sleep(0.2)
    assert relay.established() == 0, "the relay still holds the stuck receivers' sockets"
    assert relay.get("/healthz").json()["rooms"] == 0
    assert relay.metric("relay_connections") == 0
    assert relay.metric("relay_transfers_total", 'outcome="timed_out"') == ROOMS
    for receiver in stuck:
        receiver.close()


# --- the same bound in protocol 2: ciphertext chunks, one epoch ------------------------------------------------


class StuckReceiverV2(StuckReceiver):
    """A v2 receiver: keys with the sender (PAKE, confirmations, content key), accepts, then never reads again."""

    def __init__(self, port: int, nameplate: str, code: str) -> None:
        self.code = code
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws/{nameplate}?role=receive&v=2"))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(WAIT)
        self.sock.connect(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def _send(self, message: dict) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def accept_offer(self) -> None:
        pake = crypto.Pake(crypto.Role.RECEIVER, self.code)
        keys = channel = None
        for _ in range(100):
            data = self.sock.recv(65536)
            assert data, "the relay closed the socket before the offer"
            self.protocol.receive_data(data)
            self._flush()
            for event in self.protocol.events_received():
                if not (isinstance(event, Frame) and event.opcode is Opcode.TEXT):
                    continue
                message = json.loads(event.data)
                if message["type"] == "hello":
                    self._send({"type": "pake", "data": b64(pake.outbound)})
                elif message["type"] == "pake":
                    keys = pake.finish(unb64(message["data"]))
                elif message["type"] == "confirm" and keys is not None:
                    keys.check_confirmation(crypto.Role.SENDER, unb64(message["data"]))
                    self._send({"type": "confirm", "data": b64(keys.confirmation(crypto.Role.RECEIVER))})
                elif message["type"] == "key" and keys is not None:
                    channel = keys.control_channel(crypto.Role.RECEIVER)
                elif message["type"] == "offer" and channel is not None:
                    self._send({"type": "accept", "data": seal_json(channel, {})})
                    return
        raise AssertionError("no offer arrived")


async def push_v2(ws_url: str, nameplate: asyncio.Future[str], started: asyncio.Event) -> tuple[list, int | None, int]:
    """A v2 sender that keys, offers, opens one epoch and streams ciphertext-sized chunks as fast as it may."""
    sent = 0
    async with websockets.connect(f"{ws_url}/ws?role=send&v=2", compression=None, proxy=None,
                                  max_size=2**23, write_limit=2**16) as ws:

        async def recv() -> dict:
            return json.loads(await asyncio.wait_for(ws.recv(), WAIT))

        hello = await recv()
        nameplate.set_result(hello["nameplate"])
        while (await recv())["type"] != "peer_joined":
            pass
        channel, _ = await key_as_sender(ws.send, recv, f"{hello['nameplate']}-{WORDS}", 1)
        while (await recv())["type"] != "paired":
            pass
        offer = p.Offer((p.FileEntry("big.bin", FILE_SIZE),), (), CHUNK)
        await ws.send(json.dumps({"type": "offer", "to": 1, "total_size": FILE_SIZE, "files": 1,
                                  "data": b64(channel.seal(offer.to_json().encode()))}))
        while (await recv())["type"] != "start":
            pass
        chunks = FILE_SIZE // CHUNK
        await ws.send(json.dumps({"type": "stream", "epoch": 0, "to": [1], "chunks": chunks,
                                  "bytes": FILE_SIZE + 16 * chunks, "data": [seal_json(channel, {})]}))
        started.set()
        data = bytes(range(256)) * (CHUNK // 256) + bytes(16)  # the relay sees only the length and the xxh3
        header = p.SealedChunk(0, len(data), p.chunk_digest(data)).to_json()
        try:
            for _ in range(chunks):
                await ws.send(header)
                await ws.send(data)
                sent += CHUNK
        except websockets.ConnectionClosed:
            pass
        seen, close = await outcome(ws)
        return seen, close, sent


async def test_v2_receivers_that_never_read_leave_relay_memory_bounded_and_are_dropped(relay_process) -> None:
    relay = relay_process("--idle-timeout", "3", "--max-connections-per-ip", "0", "--max-joins-per-minute", "0")
    baseline = relay.rss()
    memory = PeakMemory(relay)
    stuck: list[StuckReceiver] = []
    try:
        senders = []
        for _ in range(ROOMS):
            nameplate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            started = asyncio.Event()
            senders.append(asyncio.create_task(push_v2(relay.ws_url, nameplate, started)))
            room = await asyncio.wait_for(nameplate, WAIT)
            receiver = await asyncio.to_thread(StuckReceiverV2, relay.port, room, f"{room}-{WORDS}")
            stuck.append(receiver)
            await asyncio.to_thread(receiver.accept_offer)
            await asyncio.wait_for(started.wait(), WAIT)
        results = await asyncio.wait_for(asyncio.gather(*senders), 60)
    finally:
        peak = memory.stop()
    for seen, close, sent in results:
        assert close == 4041 and seen[-1]["code"] == "idle_timeout", (seen, close)
        assert sent < FILE_SIZE
    print(f"relay RSS (v2): baseline {baseline >> 20} MiB, peak {peak >> 20} MiB with {ROOMS} stuck receivers")
    assert peak - baseline < MEMORY_BOUND, f"relay grew by {(peak - baseline) >> 20} MiB"
    deadline = time.monotonic() + 30
    while relay.established() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - another process's sockets
        await asyncio.sleep(0.2)
    assert relay.established() == 0
    assert relay.get("/healthz").json()["rooms"] == 0
    for receiver in stuck:
        receiver.close()
