"""A send that fails does not hide what its peer said last (issue 8 follow-up: the forward race).

A page that finds a chunk tampered sends ``error`` (``tampered``) and closes. If the relay's forward of the next
chunk to it fails on the closed socket before its reading loop has taken that ``error``, the room used to end with
``peer_left`` (4030), and the sender never learnt why. The relay now reads what a peer already sent before it
decides that the peer is gone.

The race is made certain here, not hoped for: the receiver's reading loop is held in a forward to a sender that
does not read (flow control), so its ``error`` waits in the relay while the sender's chunk is forwarded to it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import websockets

from clients import crypto as c
from relay import protocol as p
from tests.peers import (
    WAIT, KeyedRoom, RawPeer, b64, key_as_receiver, key_as_sender, raw_sides, send_sealed, start_v2,
)

CHUNK = 16 * 1024
SEALED_SIZE = 24 * 1024  # one receiver-to-sender opaque message (32 KiB of base64)
MAX_SEALED_MESSAGES = 4000  # far more than a 4 KiB receive buffer and the relay's write buffer can hold


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll the relay's state (it runs in another thread) with a bound."""
    deadline = time.monotonic() + WAIT
    while not condition():  # noqa: ASYNC110 - another thread's state, polled with a bound
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def slow_reading_sender(ws_url: str) -> RawPeer:
    """A sender whose socket has a 4 KiB receive buffer and whose client queues one message: once it stops
    reading, the relay's writes to it stop soon."""
    port = int(ws_url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT)
    websocket = await asyncio.wait_for(websockets.connect(
        f"{ws_url}/ws?role=send&v=2&receivers=1", sock=sock, max_queue=1, compression=None, max_size=2**23,
        proxy=None), WAIT)
    return RawPeer(websocket)


async def keyed_room(ws_url: str) -> KeyedRoom:
    sender = await slow_reading_sender(ws_url)
    hello = await sender.expect("hello")
    code = f"{hello['nameplate']}-ocean-table-actor"
    receiver = await RawPeer.connect_v2(ws_url, hello["nameplate"], "receive")
    await receiver.expect("hello")
    await sender.expect("peer_joined")
    content_key = c.new_content_key()
    (s_send, s_recv), (r_send, r_recv) = raw_sides(sender), raw_sides(receiver)
    keying = asyncio.ensure_future(key_as_sender(s_send, s_recv, code, 1, content_key))
    receiver_channel, _ = await key_as_receiver(r_send, r_recv, code)
    sender_channel, _ = await keying
    await sender.expect("paired")
    return KeyedRoom(code, sender, [receiver], [sender_channel], [receiver_channel], content_key)


async def test_an_error_a_receiver_sent_before_it_closed_ends_the_room_even_when_a_forward_to_it_fails_first(
        relay_factory) -> None:
    relay = relay_factory()
    room = await keyed_room(relay.ws_url)
    sender, (receiver,) = room.sender, room.receivers
    data = os.urandom(2 * CHUNK)
    sealer, _ = await start_v2(room, p.Offer((p.FileEntry("payload.bin", len(data)),), chunk_size=CHUNK), CHUNK)
    live = relay.relay.rooms.by_code[room.code.split("-", 1)[0]]
    seats = relay.relay.seats[live]
    to_sender = seats[live.sender.peer].socket._connection
    from_receiver = seats[live.receivers[0].peer].socket._connection

    # 1. The sender stops reading; the receiver's opaque messages to it fill every buffer on the way, until the
    #    relay's forward of one of them waits for the sender to read: the receiver's reading loop is held there.
    for _ in range(MAX_SEALED_MESSAGES):
        handled = live.last_activity
        await receiver.send({"type": "sealed", "data": b64(os.urandom(SEALED_SIZE))})
        # One at a time: at most one more waits in the relay once its forward is held (far below the inbox's
        # 64 KiB mark, so the relay goes on reading the receiver's socket).
        await until(lambda h=handled: to_sender.writable.waiting > 0 or live.last_activity != h, "the message handled")
        if to_sender.writable.waiting:
            break
    assert to_sender.writable.waiting, "the sender's buffers never filled"

    # 2. The receiver reports tampering and closes; the relay has read both, but not yet handled the error.
    await receiver.send({"type": "error", "code": "tampered", "message": "chunk 0 did not authenticate"})
    await asyncio.wait_for(receiver.ws.close(), WAIT)
    await until(lambda: from_receiver.gone and len(from_receiver.inbox) == 1, "the receiver's error, read")

    # 3. The sender's chunk is checked and forwarded to the receiver, whose socket is closed: that send fails.
    await send_sealed(sender, sealer.seal_next(data[:CHUNK]))
    await until(lambda: live.check is not None and live.check.chunks_done == 1, "the chunk forwarded")

    # 4. The sender reads again: it is told why the transfer failed, in the words of the receiver.
    close_code, seen = await sender.closed()
    errors = [m for m in seen if isinstance(m, dict) and m.get("type") == "error"]
    assert close_code == p.ErrorCode.TAMPERED.close_code, (close_code, [m for m in seen if isinstance(m, dict)
                                                                        and m.get("type") != "sealed"])
    assert errors and errors[-1]["code"] == "tampered" and errors[-1]["peer"] == 1, errors
    assert live.outcome == "tampered"
