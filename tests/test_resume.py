"""Resume on the real relay (protocol 2, docs/protocol.md section 10): real sockets, real keying and ciphertext.

A receiver whose socket drops mid-transfer is parked; it comes back on a ``resume=1`` socket with its token, the
sender opens a new epoch under a fresh data key from what the receiver holds, and the bytes arrive; a stranger
with a wrong token is refused and charged a failed join; a party that never comes back ends the room after the
resume window with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from typing import Any

import pytest
import websockets

from clients import crypto as c
from relay import protocol as p
from tests.peers import WAIT, RawPeer, b64, offer_v2, open_room_v2, seal_json, send_sealed, start_v2

pytestmark = pytest.mark.asyncio


def verifier(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def drop(peer: RawPeer) -> None:
    """The connection ends without a close frame (what a network change looks like): the seat is parked. A socket
    the party closes itself is the party leaving (test_a_receiver_that_closes_its_socket_has_left)."""
    peer.ws.transport.abort()


async def register(room: Any) -> tuple[list[bytes], list[bytes]]:
    """Every seat registers a verifier of a fresh token; returns (sender tokens per pair, receiver tokens)."""
    sender_tokens = [secrets.token_bytes(32) for _ in room.receivers]
    receiver_tokens = [secrets.token_bytes(32) for _ in room.receivers]
    for k, (peer, mine, theirs) in enumerate(zip(room.receivers, receiver_tokens, sender_tokens, strict=True), 1):
        await peer.send({"type": "resume_id", "verifier": verifier(mine)})
        await room.sender.send({"type": "resume_id", "to": k, "verifier": verifier(theirs)})
    return sender_tokens, receiver_tokens


async def reconnect(ws_url: str, nameplate: str, peer: int, token: bytes, next_token: bytes) -> RawPeer:
    party = await RawPeer.connect_v2(ws_url, nameplate, "receive", resume=1)
    with contextlib.suppress(websockets.ConnectionClosed):  # a refusal before admission may close it first
        await party.send({"type": "resume", "peer": peer, "token": token.hex(), "next_verifier": verifier(next_token)})
    return party


async def open_epoch(room: Any, epoch: int, segments: list[tuple[int, int, int]], chunk: int
                     ) -> tuple[c.StreamSealer, c.StreamOpener, c.StreamPlan]:
    """The sender opens ``epoch`` for receiver 1 under a fresh salt; returns both ends' ciphers."""
    salt = c.new_epoch_salt()
    plan = c.StreamPlan(tuple(c.Segment(*segment) for segment in segments), chunk)
    plan_json = {"salt": b64(salt), "chunk_size": chunk, "segments": [list(segment) for segment in segments]}
    await room.sender.send({"type": "stream", "epoch": epoch, "to": [1], "chunks": plan.chunk_count(),
                            "bytes": plan.ciphertext_size(), "data": [seal_json(room.sender_channels[0], plan_json)]})
    key = c.data_key(room.content_key, salt)
    return c.StreamSealer(key, plan), c.StreamOpener(key, plan), plan


async def send_next(room: Any, sealer: c.StreamSealer, data: bytes, epoch: int) -> None:
    position = sealer.position
    assert position is not None
    await send_sealed(room.sender, sealer.seal_next(data[position.offset:position.offset + position.length]), epoch)


async def receive_next(peer: RawPeer, opener: c.StreamOpener, epoch: int) -> bytes:
    assert (await peer.expect("chunk"))["epoch"] == epoch
    frame = await peer.recv()
    assert isinstance(frame, bytes)
    return opener.open_next(frame).plaintext


async def test_a_dropped_receiver_comes_back_with_its_token_and_gets_the_rest_under_a_new_epoch(relay_server):
    data = bytes(range(256)) * 40  # 10,240 bytes in chunks of 1,000
    offer = p.Offer((p.FileEntry("a.bin", len(data)),), chunk_size=1000)
    room = await open_room_v2(relay_server.ws_url, receivers=1)
    _, receiver_tokens = await register(room)
    first = room.receivers[0]
    await offer_v2(room, offer)
    await first.send({"type": "accept", "data": seal_json(room.receiver_channels[0], {})})
    await room.sender.expect("accept")
    await room.sender.expect("start")
    sealer, opener, _ = await open_epoch(room, 0, [(0, 0, len(data))], 1000)
    await first.expect("stream")
    received = b""
    for _ in range(3):
        await send_next(room, sealer, data, 0)
        received += await receive_next(first, opener, 0)
    await send_next(room, sealer, data, 0)  # on its way while the receiver drops: never forwarded to anyone
    drop(first)
    assert (await room.sender.expect("reconnecting"))["peer"] == 1

    nameplate = room.code.split("-")[0]
    back = await reconnect(relay_server.ws_url, nameplate, 1, receiver_tokens[0], secrets.token_bytes(32))
    assert await back.expect("resumed") == {"type": "resumed", "peer": 1, "parked": []}
    assert await room.sender.expect("resumed") == {"type": "resumed", "peer": 1, "parked": []}

    # (The real parties resync their control channels here; this test keeps the old channels' counters.)
    sealer, opener, rest = await open_epoch(room, 1, [(0, len(received), len(data))], 1000)
    assert (await back.expect("stream"))["epoch"] == 1
    for _ in range(rest.chunk_count()):
        await send_next(room, sealer, data, 1)
        received += await receive_next(back, opener, 1)
    await room.sender.send({"type": "end", "epoch": 1})
    await back.expect("end")
    assert received == data
    await back.send({"type": "verified"})
    await room.sender.expect("verified")
    assert (await back.expect("complete")) == {"type": "complete"}


async def test_a_wrong_token_is_refused_with_4034_and_counted_as_a_failed_join(relay_factory):
    relay = relay_factory(max_joins_per_minute=20, failed_join_cost=20)
    room = await open_room_v2(relay.ws_url, receivers=1)
    _, receiver_tokens = await register(room)
    await start_v2(room, p.Offer((p.FileEntry("a", 10),), chunk_size=1000), 1000)
    drop(room.receivers[0])
    await room.sender.expect("reconnecting")
    nameplate = room.code.split("-")[0]

    stranger = await reconnect(relay.ws_url, nameplate, 1, secrets.token_bytes(32), secrets.token_bytes(32))
    code, seen = await stranger.closed()
    assert code == 4034 and seen[0]["code"] == "resume_refused"  # type: ignore[index]
    # The guess cost the address its join budget: even the right token must now wait.
    late = await reconnect(relay.ws_url, nameplate, 1, receiver_tokens[0], secrets.token_bytes(32))
    code, seen = await late.closed()
    assert code == 4431 and seen[0]["code"] == "rate_limited"  # type: ignore[index]


async def test_a_first_message_that_is_not_resume_is_refused(relay_server):
    room = await open_room_v2(relay_server.ws_url, receivers=1)
    nameplate = room.code.split("-")[0]
    party = await RawPeer.connect_v2(relay_server.ws_url, nameplate, "receive", resume=1)
    await party.send({"type": "verified"})
    code, seen = await party.closed()
    assert code == 4004 and seen[0]["code"] == "unexpected_message"  # type: ignore[index]
    assert room.sender.ws.state is websockets.protocol.State.OPEN


async def test_a_party_that_never_comes_back_ends_the_room_after_the_window(relay_factory):
    relay = relay_factory(resume_window=0.5)
    room = await open_room_v2(relay.ws_url, receivers=1)
    await register(room)
    await start_v2(room, p.Offer((p.FileEntry("a", 10),), chunk_size=1000), 1000)
    drop(room.receivers[0])
    await room.sender.expect("reconnecting")
    code, seen = await asyncio.wait_for(room.sender.closed(), WAIT)
    assert code == 4030
    last = seen[-1]
    assert isinstance(last, dict) and last["code"] == "peer_left"
    assert "receiver 1 disconnected and did not come back within the resume window" in last["message"]
    assert not relay.relay.rooms.by_code


async def test_a_receiver_that_closes_its_socket_mid_transfer_has_left_and_the_sender_hears_it_at_once(relay_server):
    """A close frame (here 1001, a tab closing) is the party leaving, not a drop: no ``reconnecting`` and no resume
    window (300 s by default) to wait out; the room ends with ``peer_left`` and the nameplate is free again."""
    room = await open_room_v2(relay_server.ws_url, receivers=1)
    await register(room)
    await start_v2(room, p.Offer((p.FileEntry("a", 10),), chunk_size=1000), 1000)
    await room.receivers[0].ws.close(1001)
    code, seen = await asyncio.wait_for(room.sender.closed(), WAIT)
    assert code == 4030 and seen == [{"type": "peer_left", "peer": 1, "role": "receive"}]
    assert room.code.split("-")[0] not in relay_server.relay.rooms.by_code
