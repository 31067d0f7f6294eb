"""Access: the private relay's token and the browser origins allowed (cross-site WebSocket hijacking)."""

from __future__ import annotations

import pytest

from relay.access import bearer_token, client_key, origin_ok, parse_origins, token_ok
from tests.hardening.wire import refused_with

TOKEN = "correct-horse-battery-staple"


# --- pure decisions ----------------------------------------------------------------------------------------


def test_token_comparison() -> None:
    assert token_ok("", None) and token_ok("", "anything")
    assert token_ok(TOKEN, TOKEN)
    assert not token_ok(TOKEN, None)
    assert not token_ok(TOKEN, "")
    assert not token_ok(TOKEN, TOKEN[:-1])
    assert not token_ok(TOKEN, TOKEN + "x")
    assert not token_ok(TOKEN, "\udcff")  # a surrogate from a hostile header must not crash the comparison


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "relay.example", "", True),  # not a browser
        ("https://relay.example", "relay.example", "", True),  # same origin
        ("https://relay.example:443", "relay.example", "", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "", True),
        ("HTTPS://Relay.Example", "relay.example", "", True),
        ("https://evil.example", "relay.example", "", False),
        ("https://relay.example.evil.example", "relay.example", "", False),
        ("http://127.0.0.1:9999", "127.0.0.1:8000", "", False),  # another port is another origin
        ("null", "relay.example", "", False),
        ("file://", "relay.example", "", False),
        ("https://app.example", "relay.example", "https://app.example, https://other.example", True),
        ("https://evil.example", "relay.example", "https://app.example", False),
        ("https://evil.example", "relay.example", "*", True),
        ("https://relay.example", None, "", False),
    ],
)
def test_origin_decision(origin, host, allowed, ok) -> None:
    assert origin_ok(origin, host, parse_origins(allowed)) is ok


def test_client_keys_group_ipv6_by_64() -> None:
    assert client_key("203.0.113.9") == "203.0.113.9"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_key(None) == "unknown"


# --- on the wire -------------------------------------------------------------------------------------------


async def test_a_private_relay_refuses_a_missing_or_wrong_token_and_accepts_the_right_one(relay_factory, code) -> None:
    relay = relay_factory(token=TOKEN)
    assert await refused_with(relay.ws_url, code) == ("unauthorized", 4401)
    assert await refused_with(relay.ws_url, code, f"role=send&token={TOKEN}x") == ("unauthorized", 4401)
    assert await refused_with(relay.ws_url, code, "role=send",
                              additional_headers={"Authorization": "Bearer nope"}) == ("unauthorized", 4401)
    assert await refused_with(relay.ws_url, code, "role=send",
                              additional_headers={"Authorization": f"Basic {TOKEN}"}) == ("unauthorized", 4401)
    assert await refused_with(relay.ws_url, code, f"role=send&token={TOKEN}") == ("hello", None)
    assert await refused_with(relay.ws_url, code + "b", "role=send",
                              additional_headers={"Authorization": f"Bearer {TOKEN}"}) == ("hello", None)
    assert relay.relay.stats.join_failures["unauthorized"] == 4


async def test_a_public_relay_ignores_tokens(relay_factory, code) -> None:
    relay = relay_factory()
    assert await refused_with(relay.ws_url, code, "role=send&token=whatever") == ("hello", None)


async def test_a_page_from_another_site_is_refused_and_same_origin_is_allowed(relay_factory, code) -> None:
    relay = relay_factory()
    host = f"127.0.0.1:{relay.port}"
    assert await refused_with(relay.ws_url, code, origin="https://evil.example") == ("forbidden_origin", 4403)
    assert await refused_with(relay.ws_url, code, origin="null") == ("forbidden_origin", 4403)
    assert await refused_with(relay.ws_url, code, origin=f"http://{host}") == ("hello", None)
    assert await refused_with(relay.ws_url, code + "b") == ("hello", None)  # no Origin: the CLI, a script


async def test_listed_origins_are_allowed(relay_factory, code) -> None:
    relay = relay_factory(allowed_origins="https://app.example")
    assert await refused_with(relay.ws_url, code, origin="https://app.example") == ("hello", None)
    assert await refused_with(relay.ws_url, code + "b", origin="https://evil.example") == ("forbidden_origin", 4403)


async def test_the_cli_reaches_a_private_relay_with_relay_token(relay_factory, code, tmp_path, monkeypatch) -> None:
    from clients.errors import TransferRefused
    from clients.transfer import ReceiveOptions, receive

    relay = relay_factory(token=TOKEN)

    async def yes(offer) -> bool:
        return True

    monkeypatch.setenv("RELAY_TOKEN", "wrong")
    with pytest.raises(TransferRefused) as caught:
        await receive(ReceiveOptions(f"98765432-{code}", tmp_path, relay.ws_url), yes)
    assert caught.value.code.value == "unauthorized"
    monkeypatch.setenv("RELAY_TOKEN", TOKEN)
    with pytest.raises(TransferRefused) as caught:  # past the token: the room does not exist
        await receive(ReceiveOptions(f"98765432-{code}", tmp_path, relay.ws_url), yes)
    assert caught.value.code.value == "room_not_found"
