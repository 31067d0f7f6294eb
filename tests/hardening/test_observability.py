"""Metrics, readiness and logs as an operator sees them from a ``relay serve`` process; codes never logged."""

from __future__ import annotations

import os
import re

from relay import protocol as p
from relay.rooms import code_tag
from tests.hardening.wire import connect, first, outcome
from tests.peers import WORDS, KeyedRoom, open_room_v2, send_sealed, start_v2

TOKEN = "tok-" + "5" * 20
CHUNK = 64 * 1024


def auth(query: str) -> str:
    return f"{query}&token={TOKEN}"


async def open_room(ws_url: str) -> KeyedRoom:
    return await open_room_v2(ws_url, token=TOKEN)


async def test_metrics_logs_and_health_after_a_mix_of_transfers(relay_process) -> None:
    relay = relay_process("--token", TOKEN, "--log-level", "info", "--max-joins-per-minute", "0")
    assert relay.get("/healthz").json()["status"] == "ok"
    assert relay.get("/readyz").json() == {"status": "ready"}
    missing = "98765432"

    # A completed transfer.
    data = os.urandom(3 * CHUNK + 5)
    offer = p.Offer((p.FileEntry("secret-name.bin", len(data)),), (), CHUNK)
    room = await open_room(relay.ws_url)
    good = room.code.split("-", 1)[0]
    (receiver,) = room.receivers
    sealer, plan = await start_v2(room, offer, CHUNK)
    sealed = [sealer.seal_next(data[pos.offset : pos.offset + pos.length]) for pos in plan.positions()]
    for chunk in sealed:
        await send_sealed(room.sender, chunk)
    await room.sender.send({"type": "end", "epoch": 0})
    for _ in range(20):
        message = await receiver.recv()
        if isinstance(message, dict) and message["type"] == "end":
            break
    await receiver.send(p.Verified())
    await room.sender.expect("verified")
    await room.sender.expect("complete")
    await receiver.expect("complete")

    # A corrupted chunk, caught by the relay.
    room = await open_room(relay.ws_url)
    bad = room.code.split("-", 1)[0]
    sealer, _ = await start_v2(room, p.Offer((p.FileEntry("f.bin", 10),), (), CHUNK), CHUNK)
    chunk = sealer.seal_next(b"0123456789")
    await room.sender.send(p.SealedChunk(0, len(chunk), p.chunk_digest(chunk)))
    await room.sender.send(chunk[::-1])
    assert (await room.sender.closed())[0] == 4020

    # A receiver for a room that does not exist, and one without the token.
    ws = await connect(relay.ws_url, missing, auth("role=receive"))
    assert (await first(ws))["code"] == "room_not_found"
    await outcome(ws)
    ws = await connect(relay.ws_url, missing, "role=receive")
    assert (await first(ws))["code"] == "unauthorized"
    await outcome(ws)

    assert relay.metric("relay_transfers_total", 'outcome="completed"') == 1
    assert relay.metric("relay_transfers_total", 'outcome="checksum_failed"') == 1
    assert relay.metric("relay_checksum_failures_total") == 1
    assert relay.metric("relay_join_failures_total", 'code="room_not_found"') == 1
    assert relay.metric("relay_join_failures_total", 'code="unauthorized"') == 1
    assert relay.metric("relay_joins_total", 'role="send"') == 2
    assert relay.metric("relay_joins_total", 'role="receive"') == 2
    assert relay.metric("relay_payload_relayed_bytes_total") == sum(map(len, sealed))
    assert relay.metric("relay_errors_total") == 0
    assert relay.metric("relay_connections") == 0
    assert relay.metric("process_resident_memory_bytes") > 0

    log = relay.log()
    rooms = [f"/ws/{nameplate}{end}" for nameplate in (good, bad) for end in ('"', "?", " ")]  # not a tag's prefix
    for secret in (*rooms, missing, TOKEN, WORDS, "secret-name"):
        assert secret not in log, f"{secret} appears in the log"
    # Tags are keyed per relay process, so the test reads each room's tag from its ending line.
    good_tag = re.search(r"event=room_ended room=([0-9a-f]{8}) outcome=completed", log).group(1)
    bad_tag = re.search(r"event=room_ended room=([0-9a-f]{8}) outcome=checksum_failed code=checksum_mismatch",
                        log).group(1)
    # A tag is stable per nameplate for the life of the process, and nameplates are reused after a room ends, so
    # the second room may have got the first one's nameplate (and tag) back.
    assert (good_tag == bad_tag) == (good == bad)
    assert code_tag(good) != good_tag  # not the same key as this test process
    assert f"event=room_opened room={good_tag} receivers=1" in log
    assert f"event=peer_joined room={good_tag} peer=1" in log
    assert "event=join_refused code=room_not_found" in log
    assert f'"WebSocket /ws/{good_tag}"' in log  # uvicorn's own line, redacted
    lifecycle = [line for line in log.splitlines() if f"room={good_tag}" in line]
    assert len(lifecycle) == (6 if good == bad else 3)  # one line per event: opened, joined, ended (per room)
