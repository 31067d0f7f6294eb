"""clients.datasocket: the same contract from picows (when installed) and from the pure-Python wsclient, against
websockets' server, a CONNECT proxy, TLS and the relay."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from clients import datasocket
from clients.wsclient import ConnectionClosed, HandshakeFailed
from tests.test_wsclient import BOUND, echo, self_signed, ws_server

IMPLEMENTATIONS = pytest.mark.parametrize("implementation", datasocket.available())


def test_picows_is_preferred_when_installed_and_the_environment_can_force_the_fallback(monkeypatch) -> None:
    assert datasocket.available()[-1] == "wsclient"
    monkeypatch.setenv("RELAY_WEBSOCKET", "wsclient")
    assert datasocket.chosen() == "wsclient"
    monkeypatch.delenv("RELAY_WEBSOCKET")
    assert datasocket.chosen() == datasocket.available()[0]
    with pytest.raises(ValueError, match="not available"):
        datasocket.chosen("curl")


@IMPLEMENTATIONS
async def test_frames_go_both_ways_and_a_held_view_survives_later_frames(implementation: str) -> None:
    payloads = [os.urandom(n) for n in (0, 1, 126, 65536, 1 << 20)] * 3
    async with ws_server(echo) as port:
        sock = await datasocket.connect(f"ws://127.0.0.1:{port}/", max_size=1 << 20, implementation=implementation)
        for payload in payloads:
            await sock.send_binary(payload)
        for expected in payloads:
            got = await asyncio.wait_for(sock.recv(), BOUND)
            for _ in range(20):  # the loop reads on while we hold the view
                await asyncio.sleep(0.001)
            assert isinstance(got, memoryview) and got == expected
        await sock.send_text("fin ✓")
        assert await asyncio.wait_for(sock.recv(), BOUND) == "fin ✓"
        await sock.close()


@IMPLEMENTATIONS
async def test_fragments_pings_and_the_close_code(implementation: str) -> None:
    async def server(ws: ServerConnection) -> None:
        await ws.send(iter(["a", "b"]))
        await asyncio.wait_for(await ws.ping(b"x"), BOUND)
        await ws.send(iter([b"c", b"d"]))
        await ws.close(4004, "room not found")

    async with ws_server(server) as port:
        sock = await datasocket.connect(f"ws://127.0.0.1:{port}/", implementation=implementation)
        assert await asyncio.wait_for(sock.recv(), BOUND) == "ab"
        assert bytes(await asyncio.wait_for(sock.recv(), BOUND)) == b"cd"
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(sock.recv(), BOUND)
        assert (caught.value.code, caught.value.reason) == (4004, "room not found")


@IMPLEMENTATIONS
async def test_a_token_header_passes_and_a_refusal_is_a_handshake_failure(implementation: str) -> None:
    def check(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != "Bearer t":
            return Response(401, "Unauthorized", Headers(), b"")
        return None

    async with ws_server(echo, process_request=check) as port:
        sock = await datasocket.connect(f"ws://127.0.0.1:{port}/", headers={"Authorization": "Bearer t"},
                                        implementation=implementation)
        await sock.close()
        with pytest.raises(HandshakeFailed) as caught:
            await datasocket.connect(f"ws://127.0.0.1:{port}/", implementation=implementation)
        assert caught.value.status in (401, None)  # picows may not expose the status on every version
        assert "401" in str(caught.value)


@IMPLEMENTATIONS
async def test_wss_and_an_http_proxy(implementation: str, tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    connects: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head.split(b"\r\n")[0])
        host, port = head.split(b" ")[1].rsplit(b":", 1)
        up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    async with proxy_server, ws_server(echo, ssl=server_tls) as port:
        sock = await datasocket.connect(f"wss://127.0.0.1:{port}/", ssl=client_tls,
                                        proxy=f"http://127.0.0.1:{proxy_port}", implementation=implementation)
        payload = os.urandom(300000)
        await sock.send_binary(payload)
        assert await asyncio.wait_for(sock.recv(), BOUND) == payload
        await sock.close()
    assert connects == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]


@IMPLEMENTATIONS
async def test_the_relay_says_hello(implementation: str, relay_server) -> None:
    sock = await datasocket.connect(f"{relay_server.ws_url}/ws/speed-ds-{implementation}?role=send&v=1",
                                    implementation=implementation)
    assert json.loads(await asyncio.wait_for(sock.recv(), BOUND))["type"] == "hello"
    await sock.close()
