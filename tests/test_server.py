"""The relay on the wire: a real uvicorn server driven by raw ``websockets`` peers."""

from __future__ import annotations

import asyncio
import os
import secrets
from urllib.parse import quote

import httpx
import pytest

from relay import protocol as p
from tests.peers import RawPeer, open_room, send_file, start_transfer

CHUNK = 64 * 1024


@pytest.fixture
def code() -> str:
    return "t-" + secrets.token_hex(6)


def single_file_offer(size: int, chunk_size: int = CHUNK) -> p.Offer:
    return p.Offer((p.FileEntry("file.bin", size),), (), chunk_size)


async def assert_room_gone(relay_server, code: str) -> None:
    for _ in range(200):  # the room is removed as its last socket finishes; give the server a moment
        if code not in relay_server.relay.rooms.by_code:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the room was not removed")


async def test_healthz_answers(relay_server) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{relay_server.http_url}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_a_file_is_forwarded_byte_for_byte_and_the_room_completes(relay_server, code) -> None:
    data = os.urandom(3 * CHUNK + 123)
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(len(data)))
    await send_file(sender, 0, data, CHUNK)
    await sender.send(p.Done())
    got = bytearray()
    while True:
        message = await receiver.recv()
        if isinstance(message, bytes):
            got += message
        elif message["type"] == "done":
            break
    assert bytes(got) == data
    await receiver.send(p.FileOk(0))
    await receiver.send(p.Verified())
    assert (await sender.expect("file_ok"))["peer"] == 1
    assert (await sender.expect("verified"))["peer"] == 1
    await sender.expect("complete")
    assert (await sender.closed())[0] == 1000
    await receiver.expect("complete")
    assert (await receiver.closed())[0] == 1000
    await assert_room_gone(relay_server, code)


async def test_a_receiver_for_an_unknown_room_gets_room_not_found_at_once(relay_server, code) -> None:
    peer = await RawPeer.connect(relay_server.ws_url, code, "receive")
    close, seen = await peer.closed()
    assert close == 4404 and seen[0]["code"] == "room_not_found"


async def test_a_receiver_beyond_the_expected_number_gets_room_full(relay_server, code) -> None:
    sender, _ = await open_room(relay_server.ws_url, code)
    extra = await RawPeer.connect(relay_server.ws_url, code, "receive")
    close, seen = await extra.closed()
    assert close == 4409 and seen[0]["code"] == "room_full"
    await sender.close()


async def test_a_second_sender_gets_room_taken(relay_server, code) -> None:
    first = await RawPeer.connect(relay_server.ws_url, code, "send")
    await first.expect("hello")
    second = await RawPeer.connect(relay_server.ws_url, code, "send")
    close, seen = await second.closed()
    assert close == 4410 and seen[0]["code"] == "room_taken"
    await first.close()


async def test_a_missing_role_is_a_bad_request(relay_server, code) -> None:
    peer = await RawPeer.connect(relay_server.ws_url, code, "spectator")
    close, seen = await peer.closed()
    assert close == 4000 and seen[0]["code"] == "bad_request"


async def test_malformed_json_ends_the_room_for_everyone(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await sender.send("{not json")
    assert (await sender.closed())[0] == 4002
    close, seen = await receiver.closed()
    assert close == 4002 and seen[-1]["type"] == "error"
    await assert_room_gone(relay_server, code)


async def test_an_unknown_message_type_is_refused(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await receiver.send({"type": "teleport"})
    close, seen = await receiver.closed()
    assert close == 4003 and seen[-1]["code"] == "unknown_type"
    assert (await sender.closed())[0] == 4003


async def test_a_binary_frame_before_an_accepted_offer_is_unexpected(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await sender.send(single_file_offer(10))
    await receiver.expect("offer")
    await sender.send(b"0123456789")
    close, seen = await sender.closed()
    assert close == 4004 and seen[-1]["code"] == "unexpected_message"
    assert (await receiver.closed())[0] == 4004


async def test_an_offer_before_pairing_is_unexpected(relay_server, code) -> None:
    sender = await RawPeer.connect(relay_server.ws_url, code, "send")
    await sender.expect("hello")
    await sender.send(single_file_offer(10))
    assert (await sender.closed())[0] == 4004


async def test_a_frame_over_the_size_limit_closes_with_1009(relay_factory, code) -> None:
    relay = relay_factory(max_message=64 * 1024)
    sender, (receiver,) = await open_room(relay.ws_url, code)
    await sender.send(b"x" * (64 * 1024 + 1))
    assert (await sender.closed())[0] == 1009
    close, seen = await receiver.closed()
    assert close == 4030 and seen[-1]["type"] == "peer_left"


async def test_a_corrupted_chunk_is_caught_by_the_relay_and_never_forwarded(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(8))
    await sender.send(p.Chunk(0, 0, 8, p.chunk_digest(b"original")))
    await sender.send(b"tampered")
    assert (await sender.closed())[0] == 4020
    close, seen = await receiver.closed()
    assert close == 4020
    assert not any(isinstance(frame, bytes) for frame in seen)
    assert seen[-1]["code"] == "checksum_mismatch"


async def test_a_chunk_header_that_disagrees_with_its_payload_length_is_a_size_mismatch(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(8))
    await sender.send(p.Chunk(0, 0, 8, p.chunk_digest(b"12345678")))
    await sender.send(b"1234")
    assert (await sender.closed())[0] == 4021


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../../x", "a/../../x", "a\\b", "nul\x00", "bad\x1bname", "a/./b", ".."]
)
async def test_the_relay_refuses_an_offer_with_a_hostile_path(relay_server, code, path) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await sender.send({"type": "offer", "files": [{"path": path, "size": 1}], "chunk_size": CHUNK})
    close, seen = await sender.closed()
    assert close == 4005 and seen[-1]["code"] == "unsafe_path"
    close, seen = await receiver.closed()
    assert close == 4005 and not any(m.get("type") == "offer" for m in seen if isinstance(m, dict))


async def test_an_offer_over_the_transfer_limit_is_refused(relay_factory, code) -> None:
    relay = relay_factory(max_transfer_bytes=1000)
    sender, (receiver,) = await open_room(relay.ws_url, code)
    await sender.send(single_file_offer(1001))
    assert (await sender.closed())[0] == 4413
    assert (await receiver.closed())[0] == 4413


async def test_a_decline_ends_the_room_for_everyone(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await sender.send(single_file_offer(5))
    await receiver.expect("offer")
    await receiver.send({"type": "decline", "reason": "no room"})
    message = await sender.expect("decline")
    assert message["reason"] == "no room" and message["peer"] == 1
    close, _ = await sender.closed()
    assert close == 4032
    assert (await receiver.closed())[0] == 4032


async def test_a_cancel_is_passed_on_with_its_reason(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(5))
    await receiver.send({"type": "cancel", "reason": "changed my mind"})
    close, seen = await sender.closed()
    assert close == 4031 and seen[-1] == {"type": "cancel", "reason": "changed my mind", "peer": 1}
    assert (await receiver.closed())[0] == 4031


async def test_a_sender_leaving_tells_every_receiver(relay_server, code) -> None:
    sender, receivers = await open_room(relay_server.ws_url, code, receivers=2)
    await sender.close()
    for receiver in receivers:
        close, seen = await receiver.closed()
        assert close == 4030 and seen[-1] == {"type": "peer_left", "peer": 0, "role": "send"}
    await assert_room_gone(relay_server, code)


async def test_a_receiver_leaving_mid_transfer_tells_the_sender(relay_server, code) -> None:
    sender, (receiver,) = await open_room(relay_server.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(4 * CHUNK))
    await sender.send(p.Chunk(0, 0, CHUNK, p.chunk_digest(b"\0" * CHUNK)))
    await sender.send(b"\0" * CHUNK)
    await receiver.close()
    close, seen = await sender.closed()
    assert close == 4030 and seen[-1] == {"type": "peer_left", "peer": 1, "role": "receive"}
    await assert_room_gone(relay_server, code)


async def test_one_sender_reaches_three_receivers_with_every_byte(relay_server, code) -> None:
    data = os.urandom(5 * CHUNK + 7)
    sender, receivers = await open_room(relay_server.ws_url, code, receivers=3)
    await start_transfer(sender, receivers, single_file_offer(len(data)))

    async def drain(peer: RawPeer) -> bytes:
        got = bytearray()
        while True:
            message = await peer.recv()
            if isinstance(message, bytes):
                got += message
            elif message["type"] == "done":
                await peer.send(p.Verified())
                return bytes(got)

    readers = [asyncio.create_task(drain(peer)) for peer in receivers]
    await send_file(sender, 0, data, CHUNK)
    await sender.send(p.Done())
    assert [await reader for reader in readers] == [data] * 3
    peers = sorted([(await sender.expect("verified"))["peer"] for _ in range(3)])
    assert peers == [1, 2, 3]
    await sender.expect("complete")


async def test_two_rooms_at_once_never_mix_bytes(relay_server) -> None:
    async def transfer(code: str, fill: int) -> bytes:
        data = bytes([fill]) * (8 * CHUNK)
        sender, (receiver,) = await open_room(relay_server.ws_url, code)
        await start_transfer(sender, [receiver], single_file_offer(len(data)))
        sending = asyncio.create_task(send_file(sender, 0, data, CHUNK))
        got = bytearray()
        while len(got) < len(data):
            message = await receiver.recv()
            if isinstance(message, bytes):
                got += message
        await sending
        await sender.close()
        return bytes(got)

    first, second = await asyncio.gather(transfer("room-a-" + secrets.token_hex(4), 0xAA),
                                         transfer("room-b-" + secrets.token_hex(4), 0x55))
    assert set(first) == {0xAA} and set(second) == {0x55}


async def test_a_room_that_never_pairs_times_out(relay_factory, code) -> None:
    relay = relay_factory(pairing_timeout=0.5)
    sender = await RawPeer.connect(relay.ws_url, code, "send")
    await sender.expect("hello")
    close, seen = await sender.closed()
    assert close == 4040 and seen[-1]["code"] == "pairing_timeout"


async def test_a_stalled_transfer_hits_the_idle_timeout(relay_factory, code) -> None:
    relay = relay_factory(idle_timeout=0.5)
    sender, (receiver,) = await open_room(relay.ws_url, code)
    await start_transfer(sender, [receiver], single_file_offer(10))
    assert (await sender.closed())[0] == 4041
    assert (await receiver.closed())[0] == 4041


@pytest.mark.parametrize("query", [{"receivers": "²"}, {"receivers": "٣"}, {"receivers": "3" * 5000},
                                   {"receivers": "+1"}, {"v": "١"}, {"v": "1" * 5000}])
async def test_query_numbers_that_are_not_short_ascii_digits_are_a_bad_request(relay_server, code, query) -> None:
    """Issue 9 item 3: '²' and 5,000 digits raised a ValueError (no error, a traceback); '٣' was taken as 3."""
    peer = await RawPeer.connect(relay_server.ws_url, code, "send", **{k: quote(v) for k, v in query.items()})
    close, seen = await peer.closed()
    assert close == 4000 and seen == [seen[0]] and seen[0]["code"] == "bad_request"
    assert code not in relay_server.relay.rooms.by_code


async def test_an_offer_left_unanswered_is_not_ended_by_the_idle_timeout(relay_factory, code) -> None:
    """Issue 13: a person reading an offer lost the transfer to the idle timeout; now only offer_timeout ends it."""
    relay = relay_factory(idle_timeout=0.2, offer_timeout=1.5)
    sender, (receiver,) = await open_room(relay.ws_url, code)
    await sender.send(single_file_offer(5))
    await receiver.expect("offer")
    close, seen = await receiver.closed()  # bounded by RawPeer's own wait
    assert close == 4043 and seen[-1]["code"] == "offer_timeout"
    assert seen[-1]["message"] == "nobody answered the offer in time"
    assert (await sender.closed())[0] == 4043
