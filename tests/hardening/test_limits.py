"""The per-client and per-room limits, attacked on a real relay from loopback addresses.

127.0.0.2 is a second loopback address on Linux: it stands for "another client" in the per-address tests.
"""

from __future__ import annotations

import asyncio
import secrets
import socket

import pytest
import websockets

from relay import protocol as p
from relay.limits import ConnectionCounter, JoinLimiter
from tests.hardening.wire import WAIT, connect, first, outcome, refused_with
from tests.peers import b64, open_room_v2

OTHER = {"local_addr": ("127.0.0.2", 0)}


def new_code() -> str:
    """A nameplate no room has (the relay allocates from the shortest free ones; these are 8 digits)."""
    return str(10_000_000 + secrets.randbelow(90_000_000))


# --- pure decisions ----------------------------------------------------------------------------------------


def test_the_join_bucket_holds_a_guesser_to_rate_over_cost() -> None:
    limiter = JoinLimiter(per_minute=60, failed_cost=10)
    guesses = 0
    for second in range(600):  # ten minutes of one guess attempt per second
        if limiter.allow("a", float(second)):
            guesses += 1
            limiter.failed("a", float(second))
    assert 55 <= guesses <= 66  # 60 tokens/min / 10 per guess = 6 a minute, plus the first burst
    assert limiter.allow("b", 0.0)  # another key is untouched


def test_successful_joins_cost_one() -> None:
    limiter = JoinLimiter(per_minute=10, failed_cost=10)
    assert all(limiter.allow("a", 0.0) for _ in range(10))
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("a", 6.0)  # refilled one token in 6 s


def test_the_limiter_forgets_refilled_keys_and_stays_bounded() -> None:
    limiter = JoinLimiter(per_minute=10, failed_cost=2, max_tracked=100)
    for index in range(1000):
        limiter.allow(f"k{index}", 0.0)
    assert len(limiter) <= 100
    limiter.prune(3600.0)
    assert len(limiter) == 0


def test_a_limit_of_zero_turns_the_limiter_off() -> None:
    limiter = JoinLimiter(per_minute=0, failed_cost=10)
    assert all(limiter.allow("a", 0.0) for _ in range(1000)) and len(limiter) == 0
    counter = ConnectionCounter(0)
    assert all(counter.acquire("a") for _ in range(1000)) and counter.total == 1000


def test_the_connection_counter_counts_per_key() -> None:
    counter = ConnectionCounter(2)
    assert counter.acquire("a") and counter.acquire("a") and not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(3):
        counter.release("a")
    counter.release("b")
    assert counter.total == 0 and len(counter) == 0


# --- code guessing and socket floods -----------------------------------------------------------------------


async def test_a_code_guessing_loop_hits_the_join_limit(relay_factory) -> None:
    relay = relay_factory(max_joins_per_minute=30, failed_join_cost=10)
    results = []
    for _ in range(40):  # bounded: a guesser would go on forever
        results.append(await refused_with(relay.ws_url, new_code(), "role=receive"))
        if results[-1][0] == "rate_limited":
            break
    assert results[-1] == ("rate_limited", 4431), results
    guesses = [result for result in results if result[0] == "room_not_found"]
    assert all(close == 4404 for _, close in guesses)
    assert 3 <= len(guesses) <= 4  # 30 tokens, 10 per failed guess (4 only if a token refilled meanwhile)
    # The guesser's address is now refused even for a legitimate join; another address is not affected.
    assert (await refused_with(relay.ws_url, new_code()))[0] == "rate_limited"
    assert await refused_with(relay.ws_url, new_code(), **OTHER) == ("hello", None)
    assert relay.relay.stats.join_failures["rate_limited"] >= 2


async def test_legitimate_joins_are_not_starved_by_the_join_limit(relay_factory) -> None:
    relay = relay_factory(max_joins_per_minute=30, failed_join_cost=10)
    for _ in range(25):  # 25 successful joins cost 25 of the 30 tokens
        assert await refused_with(relay.ws_url, new_code()) == ("hello", None)


async def test_a_socket_flood_hits_the_per_address_limit(relay_factory) -> None:
    relay = relay_factory(max_connections_per_ip=5)
    held = []
    try:
        for _ in range(5):
            ws = await connect(relay.ws_url, new_code())
            assert (await first(ws))["type"] == "hello"
            held.append(ws)
        refusals = [await refused_with(relay.ws_url, new_code()) for _ in range(20)]
        assert set(refusals) == {("too_many_connections", 4430)}
        assert await refused_with(relay.ws_url, new_code(), **OTHER) == ("hello", None)
        await held.pop().close()
        for _ in range(200):  # the relay counts the socket out as its route returns
            if relay.relay.connections.count("127.0.0.1") < 5:
                break
            await asyncio.sleep(0.02)
        assert await refused_with(relay.ws_url, new_code()) == ("hello", None)
    finally:
        for ws in held:
            await ws.close()


async def test_x_forwarded_for_is_ignored_unless_the_proxy_is_trusted(relay_factory) -> None:
    untrusting = relay_factory(max_connections_per_ip=1)
    trusting = relay_factory(max_connections_per_ip=1, forwarded_allow_ips="127.0.0.1")
    for relay, spoof_helps in ((untrusting, False), (trusting, True)):
        ws = await connect(relay.ws_url, new_code(), additional_headers={"X-Forwarded-For": "203.0.113.1"})
        try:
            assert (await first(ws))["type"] == "hello"
            result = await refused_with(relay.ws_url, new_code(), additional_headers={"X-Forwarded-For": "203.0.113.2"})
            assert result == (("hello", None) if spoof_helps else ("too_many_connections", 4430))
            if spoof_helps:  # the same forwarded client is held to its limit
                result = await refused_with(relay.ws_url, new_code(),
                                            additional_headers={"X-Forwarded-For": "203.0.113.1"})
                assert result == ("too_many_connections", 4430)
        finally:
            await ws.close()


async def test_the_room_limit(relay_factory) -> None:
    relay = relay_factory(max_rooms=3)
    held = []
    try:
        for _ in range(3):
            ws = await connect(relay.ws_url, new_code())
            assert (await first(ws))["type"] == "hello"
            held.append(ws)
        assert await refused_with(relay.ws_url, new_code()) == ("too_many_rooms", 4429)
    finally:
        for ws in held:
            await ws.close()


async def test_the_receiver_limit(relay_factory) -> None:
    relay = relay_factory(max_receivers=4)
    assert await refused_with(relay.ws_url, new_code(), "role=send&receivers=5") == ("bad_request", 4000)
    assert await refused_with(relay.ws_url, new_code(), "role=send&receivers=4") == ("hello", None)


async def test_the_transfer_size_limit(relay_factory) -> None:
    relay = relay_factory(max_transfer_bytes=1000)
    room = await open_room_v2(relay.ws_url)
    await room.sender.send(p.SealedOffer(1001, 2, b64(b"s" * 80), 1))
    close, seen = await room.sender.closed()
    assert close == 4413 and seen[-1]["code"] == "transfer_too_large"
    close, _ = await room.receivers[0].closed()
    assert close == 4413


# --- message size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("extra", [1, 60 * 1024 * 1024])
async def test_a_message_over_max_message_closes_with_1009(relay_factory, kind, extra) -> None:
    relay = relay_factory()
    limit = relay.settings.max_message
    ws = await connect(relay.ws_url, new_code())
    assert (await first(ws))["type"] == "hello"
    frame = ("x" * (limit + extra)) if kind == "text" else bytes(limit + extra)
    with pytest.raises(websockets.ConnectionClosed):  # the relay may close before the frame is all written
        await asyncio.wait_for(ws.send(frame), WAIT)
        await asyncio.wait_for(ws.recv(), WAIT)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009
    assert await refused_with(relay.ws_url, new_code()) == ("hello", None)  # the relay still serves


async def test_a_fragmented_message_over_max_message_closes_with_1009(relay_factory) -> None:
    relay = relay_factory(max_message=256 * 1024)
    ws = await connect(relay.ws_url, new_code())
    assert (await first(ws))["type"] == "hello"
    fragments = [bytes(64 * 1024)] * 5  # every fragment is small; together they are over the limit
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.send(fragments), WAIT)
        await asyncio.wait_for(ws.recv(), WAIT)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1009


async def test_a_message_of_exactly_max_message_is_read_and_judged_by_the_protocol(relay_factory) -> None:
    relay = relay_factory(max_message=256 * 1024)
    ws = await connect(relay.ws_url, new_code())
    assert (await first(ws))["type"] == "hello"
    await ws.send(bytes(256 * 1024))
    seen, close = await outcome(ws)
    assert close == 4004 and seen[-1]["code"] == "unexpected_message"  # not 1009: the size was allowed


# --- sockets that never speak ------------------------------------------------------------------------------


def _read_until_closed(port: int, prelude: bytes, drip: bytes, interval: float, rounds: int) -> bytes:
    """Open TCP, send ``prelude``, then ``drip`` every ``interval`` s; return what came back before the close."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(prelude)
        sock.settimeout(interval)
        for _ in range(rounds):
            try:
                data = sock.recv(4096)
            except TimeoutError:
                try:
                    sock.sendall(drip)
                except OSError:
                    return got
                continue
            except OSError:
                return got
            if not data:
                return got
            got += data
    raise AssertionError(f"the relay kept the connection open for {rounds} rounds; got {got!r}")


async def test_a_connection_that_never_sends_a_request_is_dropped(relay_factory) -> None:
    relay = relay_factory(handshake_timeout=0.5)
    got = await asyncio.to_thread(_read_until_closed, relay.port, b"", b"", 0.2, 100)
    assert got.startswith(b"HTTP/1.1 408")


async def test_a_slowloris_upgrade_is_dropped(relay_factory) -> None:
    relay = relay_factory(handshake_timeout=1.0)
    prelude = b"GET /ws/slow?role=send HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    got = await asyncio.to_thread(_read_until_closed, relay.port, prelude, b"X", 0.1, 200)
    assert got.startswith(b"HTTP/1.1 408")
    assert len(relay.relay.rooms) == 0


async def test_a_sender_that_never_gets_a_receiver_hits_the_pairing_timeout(relay_factory) -> None:
    relay = relay_factory(pairing_timeout=0.5)
    ws = await connect(relay.ws_url, new_code())
    seen, close = await outcome(ws)
    assert seen[0]["type"] == "hello" and seen[-1]["code"] == "pairing_timeout" and close == 4040


async def test_paired_peers_that_never_speak_hit_the_idle_timeout(relay_factory) -> None:
    relay = relay_factory(idle_timeout=0.5)
    room = await open_room_v2(relay.ws_url)
    close, seen = await room.sender.closed()
    assert close == 4041 and seen[-1]["code"] == "idle_timeout"
    close, _ = await room.receivers[0].closed()
    assert close == 4041
