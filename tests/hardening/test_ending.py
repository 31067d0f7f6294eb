"""Ending a room can fail halfway (issue 9 item 1): whatever fails, every socket of the room gets closed.

A lone surrogate (``"\\ud800"``) in a text field is valid JSON but cannot be encoded as UTF-8: the relay used to
crash forwarding it in a farewell and left the other party waiting forever. Refusing such strings at parse time
(``malformed_message``, relay/protocol.py) closes the hole at its source; these tests hold whichever layer
catches it to the same promise: the other parties hear a close, and the room is gone.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.hardening.wire import WAIT, first, outcome
from tests.peers import b64, open_room_v2

# Close codes a party may see: the parse-time refusal (4002), the message's own end (cancel 4031, error's code,
# decline 4032), or the relay's own failure to send it (1011). Never no close at all.
ACCEPTABLE = {1011, 4002, 4022, 4031, 4032}
LONE = "\\ud800"  # as it travels in JSON: an escape that decodes to an unpaired surrogate
CANCEL = '{"type":"cancel","reason":"' + LONE + '"}'
ERROR = '{"type":"error","code":"disk_full","message":"' + LONE + '"}'
DECLINE = '{"type":"decline","code":"declined","reason":"' + LONE + '"}'


async def open_room(relay):
    """A keyed room: the sender's and the receiver's sockets, and the room's nameplate."""
    room = await open_room_v2(relay.ws_url)
    return room.sender.ws, room.receivers[0].ws, room.code.split("-", 1)[0]


async def room_gone(relay, code: str) -> None:
    async with asyncio.timeout(WAIT):
        while code in relay.relay.rooms.by_code:  # noqa: ASYNC110 - another thread's state, polled with a bound
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("who,frame", [
    ("sender", CANCEL),
    ("receiver", CANCEL),
    ("receiver", ERROR),
])
async def test_an_unencodable_farewell_still_closes_every_socket(relay_factory, who: str, frame: str) -> None:
    relay = relay_factory()
    sender, receiver, code = await open_room(relay)
    await (sender if who == "sender" else receiver).send(frame)
    for ws in (sender, receiver):
        _, close = await outcome(ws)  # bounded: fails if the relay never closes it
        assert close in ACCEPTABLE, close
    await room_gone(relay, code)


async def test_an_unencodable_decline_reason_still_closes_every_socket(relay_factory) -> None:
    relay = relay_factory()
    sender, receiver, code = await open_room(relay)
    await sender.send(f'{{"type":"offer","to":1,"total_size":1,"files":1,"data":"{b64(b"s" * 40)}"}}')
    assert (await first(receiver))["type"] == "offer"
    await receiver.send(DECLINE)
    for ws in (sender, receiver):
        _, close = await outcome(ws)
        assert close in ACCEPTABLE, close
    await room_gone(relay, code)
