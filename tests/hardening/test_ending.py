"""Ending a room can fail halfway (issue 9 item 1): whatever fails, every socket of the room gets closed.

A lone surrogate (``"\\ud800"``) in a text field is valid JSON but cannot be encoded as UTF-8: the relay used to
crash forwarding it in a farewell and left the other party waiting forever. Refusing such strings at parse time
(``malformed_message``, relay/protocol.py) closes the hole at its source; these tests hold whichever layer
catches it to the same promise: the other parties hear a close, and the room is gone.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.hardening.wire import WAIT, connect, first, outcome

# Close codes a party may see: the parse-time refusal (4002), the message's own end (cancel 4031, error's code,
# decline 4032), or the relay's own failure to send it (1011). Never no close at all.
ACCEPTABLE = {1011, 4002, 4022, 4031, 4032}
LONE = "\\ud800"  # as it travels in JSON: an escape that decodes to an unpaired surrogate
CANCEL = '{"type":"cancel","reason":"' + LONE + '"}'
ERROR = '{"type":"error","code":"disk_full","message":"' + LONE + '"}'
DECLINE = '{"type":"decline","reason":"' + LONE + '"}'


async def open_room(relay, code: str):
    sender = await connect(relay.ws_url, code, "role=send")
    assert (await first(sender))["type"] == "hello"
    receiver = await connect(relay.ws_url, code, "role=receive")
    assert (await first(receiver))["type"] == "hello"
    for expected in ("peer_joined", "paired"):
        assert (await first(sender))["type"] == expected
    return sender, receiver


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
    code = f"lone-{who}-{len(frame)}"
    sender, receiver = await open_room(relay, code)
    await (sender if who == "sender" else receiver).send(frame)
    for ws in (sender, receiver):
        _, close = await outcome(ws)  # bounded: fails if the relay never closes it
        assert close in ACCEPTABLE, close
    await room_gone(relay, code)


async def test_an_unencodable_decline_reason_still_closes_every_socket(relay_factory) -> None:
    relay = relay_factory()
    code = "lone-decline"
    sender, receiver = await open_room(relay, code)
    await sender.send('{"type":"offer","files":[{"path":"a","size":1}],"chunk_size":1024}')
    assert (await first(receiver))["type"] == "offer"
    await receiver.send(DECLINE)
    for ws in (sender, receiver):
        _, close = await outcome(ws)
        assert close in ACCEPTABLE, close
    await room_gone(relay, code)
