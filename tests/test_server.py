"""The relay on the wire: a real uvicorn server driven by raw ``websockets`` peers speaking protocol 2.

The peers key for real (``tests.peers``, ``clients.crypto``) and seal real ciphertext; the relay only forwards
it, so these tests check what the relay does with frames: admission, forwarding byte for byte, its checks of
lengths, digests and counts, and how a room ends.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import quote

import httpx
import pytest
import websockets

from relay import protocol as p
from tests.peers import WAIT, KeyedRoom, RawPeer, b64, open_room_v2, send_sealed, start_v2

CHUNK = 64 * 1024


def single_file_offer(size: int, chunk_size: int = CHUNK) -> p.Offer:
    return p.Offer((p.FileEntry("file.bin", size),), (), chunk_size)


async def assert_room_gone(relay_server, code: str) -> None:
    for _ in range(200):  # the room is removed as its last socket finishes; give the server a moment
        if code not in relay_server.relay.rooms.by_code:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the room was not removed")


def nameplate(room: KeyedRoom) -> str:
    return room.code.split("-", 1)[0]


async def refused(url: str) -> tuple[int | None, list[str]]:
    """Connect to ``url`` and read until the relay closes: its close code and every text message it sent."""
    async with websockets.connect(url, compression=None, proxy=None, open_timeout=WAIT) as ws:
        seen: list[str] = []
        try:
            for _ in range(10):
                seen.append(str(await asyncio.wait_for(ws.recv(), WAIT)))
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else None), seen
    raise AssertionError("the relay kept the socket open")


async def test_healthz_answers(relay_server) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{relay_server.http_url}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# --- version 1 is gone -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws?role=send", "/ws?role=send&v=1", "/ws/42?role=receive",
                                  "/ws/42?role=receive&v=1", "/ws/actor-table-ocean?role=send&v=1",
                                  "/ws/actor-table-ocean?role=receive", "/ws?role=send&v=3"])
async def test_a_client_without_v_or_with_version_1_gets_unsupported_version_and_nothing_else(relay_server,
                                                                                           path) -> None:
    """Issue 10: version 1 goes away. An old page or client is told plainly, as the first and only message."""
    close, seen = await refused(relay_server.ws_url + path)
    assert close == 4001
    assert len(seen) == 1
    message = p.parse_message(seen[0])
    assert isinstance(message, p.Error) and message.code == "unsupported_version"
    assert "version 2" in message.message
    assert len(relay_server.relay.rooms.by_code) == 0


async def test_a_sender_that_names_a_room_is_a_bad_request(relay_server) -> None:
    close, seen = await refused(f"{relay_server.ws_url}/ws/some-room?role=send&v=2")
    assert close == 4000 and "chooses the nameplate" in p.parse_message(seen[0]).message  # type: ignore[attr-defined]


# --- a transfer ------------------------------------------------------------------------------------------


async def test_ciphertext_is_forwarded_byte_for_byte_and_the_room_completes(relay_server) -> None:
    data = os.urandom(3 * CHUNK + 123)
    offer = single_file_offer(len(data))
    room = await open_room_v2(relay_server.ws_url)
    (receiver,) = room.receivers
    sealer, plan = await start_v2(room, offer, CHUNK)
    sent = [sealer.seal_next(data[pos.offset : pos.offset + pos.length]) for pos in plan.positions()]
    for sealed in sent:
        await send_sealed(room.sender, sealed)
    await room.sender.send({"type": "end", "epoch": 0})
    got = []
    while True:
        message = await receiver.recv()
        if isinstance(message, bytes):
            got.append(message)
        elif message["type"] == "end":
            break
        else:
            assert message == {"type": "chunk", "epoch": 0, "size": len(sent[len(got)]),
                               "xxh3_64": p.chunk_digest(sent[len(got)])}
    assert got == sent
    await receiver.send({"type": "ack", "epoch": 0, "chunks": len(sent)})
    await receiver.send(p.Verified())
    assert await room.sender.expect("ack") == {"type": "ack", "epoch": 0, "chunks": len(sent), "peer": 1}
    assert (await room.sender.expect("verified"))["peer"] == 1
    await room.sender.expect("complete")
    assert (await room.sender.closed())[0] == 1000
    await receiver.expect("complete")
    assert (await receiver.closed())[0] == 1000
    await assert_room_gone(relay_server, nameplate(room))


async def test_one_sender_reaches_three_receivers_with_every_byte(relay_server) -> None:
    data = os.urandom(5 * CHUNK + 7)
    room = await open_room_v2(relay_server.ws_url, receivers=3)
    sealer, plan = await start_v2(room, single_file_offer(len(data)), CHUNK)

    async def drain(peer: RawPeer) -> list[bytes]:
        got = []
        while True:
            message = await peer.recv()
            if isinstance(message, bytes):
                got.append(message)
            elif message["type"] == "end":
                await peer.send(p.Verified())
                return got

    readers = [asyncio.create_task(drain(peer)) for peer in room.receivers]
    sent = [sealer.seal_next(data[pos.offset : pos.offset + pos.length]) for pos in plan.positions()]
    for sealed in sent:
        await send_sealed(room.sender, sealed)
    await room.sender.send({"type": "end", "epoch": 0})
    assert [await reader for reader in readers] == [sent] * 3
    peers = sorted([(await room.sender.expect("verified"))["peer"] for _ in range(3)])
    assert peers == [1, 2, 3]
    await room.sender.expect("complete")


async def test_two_rooms_at_once_never_mix_bytes(relay_server) -> None:
    async def transfer(fill: int) -> bytes:
        room = await open_room_v2(relay_server.ws_url)
        (receiver,) = room.receivers
        await start_v2(room, single_file_offer(8 * CHUNK), CHUNK)
        frames = [bytes([fill]) * (CHUNK + p.TAG_SIZE)] * 8  # the relay never opens a chunk: any bytes do

        async def sending() -> None:
            for frame in frames:
                await send_sealed(room.sender, frame)

        task = asyncio.create_task(sending())
        got = bytearray()
        while len(got) < sum(map(len, frames)):
            message = await receiver.recv()
            if isinstance(message, bytes):
                got += message
        await task
        await room.sender.close()
        return bytes(got)

    first, second = await asyncio.gather(transfer(0xAA), transfer(0x55))
    assert set(first) == {0xAA} and set(second) == {0x55}


# --- admission -------------------------------------------------------------------------------------------


async def test_a_receiver_for_an_unknown_room_gets_room_not_found_at_once(relay_server) -> None:
    peer = await RawPeer.connect_v2(relay_server.ws_url, "87654321", "receive")
    close, seen = await peer.closed()
    assert close == 4404 and seen[0]["code"] == "room_not_found"


async def test_a_receiver_beyond_the_expected_number_gets_room_full(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    extra = await RawPeer.connect_v2(relay_server.ws_url, nameplate(room), "receive")
    close, seen = await extra.closed()
    assert close == 4409 and seen[0]["code"] == "room_full"
    await room.sender.close()


async def test_a_missing_role_is_a_bad_request(relay_server) -> None:
    peer = await RawPeer.connect_v2(relay_server.ws_url, None, "spectator")
    close, seen = await peer.closed()
    assert close == 4000 and seen[0]["code"] == "bad_request"


@pytest.mark.parametrize("query", [{"receivers": "²"}, {"receivers": "٣"}, {"receivers": "3" * 5000},
                                   {"receivers": "+1"}, {"v": "١"}, {"v": "1" * 5000}])
async def test_query_numbers_that_are_not_short_ascii_digits_are_a_bad_request(relay_server, query) -> None:
    """Issue 9 item 3: '²' and 5,000 digits raised a ValueError (no error, a traceback); '٣' was taken as 3."""
    params = "&".join(f"{k}={quote(v)}" for k, v in {"role": "send", "v": "2", **query}.items())
    close, seen = await refused(f"{relay_server.ws_url}/ws?{params}")
    assert close == 4000 and len(seen) == 1 and p.parse_message(seen[0]).code == "bad_request"  # type: ignore[attr-defined]
    assert len(relay_server.relay.rooms.by_code) == 0


# --- broken frames end the room for everyone -------------------------------------------------------------


async def test_malformed_json_ends_the_room_for_everyone(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await room.sender.send("{not json")
    assert (await room.sender.closed())[0] == 4002
    close, seen = await room.receivers[0].closed()
    assert close == 4002 and seen[-1]["type"] == "error"
    await assert_room_gone(relay_server, nameplate(room))


async def test_an_unknown_message_type_is_refused(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await room.receivers[0].send({"type": "teleport"})
    close, seen = await room.receivers[0].closed()
    assert close == 4003 and seen[-1]["code"] == "unknown_type"
    assert (await room.sender.closed())[0] == 4003


@pytest.mark.parametrize("frame", [{"type": "file_done", "file": 0, "size": 1, "xxh3_128": "0" * 32},
                                   {"type": "done"}])
async def test_a_version_1_message_in_a_room_is_an_unknown_type(relay_server, frame) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await room.sender.send(frame)
    assert (await room.sender.closed())[0] == 4003


async def test_a_binary_frame_before_an_accepted_offer_is_unexpected(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await room.sender.send({"type": "offer", "to": 1, "total_size": 10, "files": 1, "data": b64(b"s" * 40)})
    await room.receivers[0].expect("offer")
    await room.sender.send(b"0123456789abcdef")
    close, seen = await room.sender.closed()
    assert close == 4004 and seen[-1]["code"] == "unexpected_message"
    assert (await room.receivers[0].closed())[0] == 4004


async def test_an_offer_before_pairing_is_unexpected(relay_server) -> None:
    sender = await RawPeer.connect_v2(relay_server.ws_url, None, "send")
    await sender.expect("hello")
    await sender.send({"type": "offer", "to": 1, "total_size": 10, "files": 1, "data": b64(b"s" * 40)})
    assert (await sender.closed())[0] == 4004


async def test_a_frame_over_the_size_limit_closes_with_1009(relay_factory) -> None:
    relay = relay_factory(max_message=64 * 1024)
    room = await open_room_v2(relay.ws_url)
    await room.sender.send(b"x" * (64 * 1024 + 1))
    assert (await room.sender.closed())[0] == 1009
    close, seen = await room.receivers[0].closed()
    assert close == 4030 and seen[-1]["type"] == "peer_left"


async def test_a_corrupted_chunk_is_caught_by_the_relay_and_never_forwarded(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    sealer, _ = await start_v2(room, single_file_offer(8), CHUNK)
    sealed = sealer.seal_next(b"original")
    await room.sender.send(p.SealedChunk(0, len(sealed), p.chunk_digest(sealed)))
    await room.sender.send(bytes([sealed[0] ^ 1]) + sealed[1:])
    assert (await room.sender.closed())[0] == 4020
    close, seen = await room.receivers[0].closed()
    assert close == 4020
    assert not any(isinstance(frame, bytes) for frame in seen)
    assert seen[-1]["code"] == "checksum_mismatch"


async def test_a_chunk_header_that_disagrees_with_its_payload_length_is_a_size_mismatch(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    sealer, _ = await start_v2(room, single_file_offer(8), CHUNK)
    sealed = sealer.seal_next(b"12345678")
    await room.sender.send(p.SealedChunk(0, len(sealed), p.chunk_digest(sealed)))
    await room.sender.send(sealed[:-4])
    assert (await room.sender.closed())[0] == 4021


async def test_an_end_before_every_declared_chunk_is_a_size_mismatch(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    sealer, _ = await start_v2(room, single_file_offer(2 * CHUNK), CHUNK)
    await send_sealed(room.sender, sealer.seal_next(b"\0" * CHUNK))
    await room.sender.send({"type": "end", "epoch": 0})
    assert (await room.sender.closed())[0] == 4021
    close, seen = await room.receivers[0].closed()
    assert close == 4021 and seen[-1]["code"] == "size_mismatch"


async def test_an_offer_over_the_transfer_limit_is_refused(relay_factory) -> None:
    relay = relay_factory(max_transfer_bytes=1000)
    room = await open_room_v2(relay.ws_url)
    await room.sender.send({"type": "offer", "to": 1, "total_size": 1001, "files": 1, "data": b64(b"s" * 40)})
    assert (await room.sender.closed())[0] == 4413
    assert (await room.receivers[0].closed())[0] == 4413


# --- ending ----------------------------------------------------------------------------------------------


async def test_a_decline_ends_the_room_for_everyone(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await room.sender.send({"type": "offer", "to": 1, "total_size": 5, "files": 1, "data": b64(b"s" * 40)})
    await room.receivers[0].expect("offer")
    sealed_reason = b64(b"r" * 30)
    await room.receivers[0].send({"type": "decline", "code": "declined", "data": sealed_reason})
    message = await room.sender.expect("decline")
    assert message == {"type": "decline", "code": "declined", "data": sealed_reason, "peer": 1}
    assert (await room.sender.closed())[0] == 4032
    assert (await room.receivers[0].closed())[0] == 4032


async def test_a_cancel_is_passed_on_with_its_sealed_reason(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    await start_v2(room, single_file_offer(5), CHUNK)
    sealed_reason = b64(b"r" * 30)
    await room.receivers[0].send({"type": "cancel", "data": sealed_reason})
    close, seen = await room.sender.closed()
    assert close == 4031 and seen[-1] == {"type": "cancel", "data": sealed_reason, "peer": 1}
    assert (await room.receivers[0].closed())[0] == 4031


async def test_a_sender_leaving_tells_every_receiver(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url, receivers=2)
    await room.sender.close()
    for receiver in room.receivers:
        close, seen = await receiver.closed()
        assert close == 4030 and seen[-1] == {"type": "peer_left", "peer": 0, "role": "send"}
    await assert_room_gone(relay_server, nameplate(room))


async def test_a_receiver_leaving_mid_transfer_tells_the_sender(relay_server) -> None:
    room = await open_room_v2(relay_server.ws_url)
    sealer, _ = await start_v2(room, single_file_offer(4 * CHUNK), CHUNK)
    await send_sealed(room.sender, sealer.seal_next(b"\0" * CHUNK))
    await room.receivers[0].close()
    close, seen = await room.sender.closed()
    assert close == 4030 and seen[-1] == {"type": "peer_left", "peer": 1, "role": "receive"}
    await assert_room_gone(relay_server, nameplate(room))


async def test_a_room_that_never_pairs_times_out(relay_factory) -> None:
    relay = relay_factory(pairing_timeout=0.5)
    sender = await RawPeer.connect_v2(relay.ws_url, None, "send")
    await sender.expect("hello")
    close, seen = await sender.closed()
    assert close == 4040 and seen[-1]["code"] == "pairing_timeout"


async def test_a_stalled_transfer_hits_the_idle_timeout(relay_factory) -> None:
    relay = relay_factory(idle_timeout=0.5)
    room = await open_room_v2(relay.ws_url)
    await start_v2(room, single_file_offer(10), CHUNK)
    assert (await room.sender.closed())[0] == 4041
    assert (await room.receivers[0].closed())[0] == 4041


async def test_an_offer_left_unanswered_is_not_ended_by_the_idle_timeout(relay_factory) -> None:
    """Issue 13: a person reading an offer lost the transfer to the idle timeout; now only offer_timeout ends it."""
    relay = relay_factory(idle_timeout=0.2, offer_timeout=1.5)
    room = await open_room_v2(relay.ws_url)
    await room.sender.send({"type": "offer", "to": 1, "total_size": 5, "files": 1, "data": b64(b"s" * 40)})
    await room.receivers[0].expect("offer")
    close, seen = await room.receivers[0].closed()  # bounded by RawPeer's own wait
    assert close == 4043 and seen[-1]["code"] == "offer_timeout"
    assert seen[-1]["message"] == "nobody answered the offer in time"
    assert (await room.sender.closed())[0] == 4043
