"""clients.wsclient against real servers on loopback: websockets' own server (an independent implementation of
RFC 6455), a CONNECT proxy, TLS with a throwaway certificate, and the relay itself."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from clients.wsclient import ConnectionClosed, HandshakeFailed, RecvInProgress, WebSocketClient

Handler = Callable[[ServerConnection], Awaitable[None]]
BOUND = 20.0


@asynccontextmanager
async def ws_server(handler: Handler, **kwargs: object) -> AsyncIterator[int]:
    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=4 << 20, **kwargs) as server:  # type: ignore[arg-type]
        yield server.sockets[0].getsockname()[1]


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
async def test_binary_frames_of_every_length_class_go_both_ways(size: int) -> None:
    payload = os.urandom(size)
    async with ws_server(echo) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", max_size=1 << 20)
        await client.send_binary(payload)
        got = await asyncio.wait_for(client.recv(), BOUND)
        assert isinstance(got, memoryview) and got == payload
        await client.send_text("done ✓")
        assert await asyncio.wait_for(client.recv(), BOUND) == "done ✓"
        await client.close()


async def test_a_long_stream_arrives_intact_through_one_fixed_buffer() -> None:
    frames = [os.urandom(n) for n in (1 << 20, 1, 700000, 1 << 20, 126, 65536)] * 20

    async def blast(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.send("end")

    async with ws_server(blast) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}", max_size=1 << 20)
        assert len(client._buffer) == 64 * 1024  # grows with the first large frame, once
        for expected in frames:
            got = await asyncio.wait_for(client.recv(), BOUND)
            assert got == expected
            # hold the frame while the loop reads on, until the buffer is full (reading paused) or the server is
            # done: bytes arriving meanwhile must not overwrite the frame we hold
            for _ in range(100):
                if client._reading_paused or b"end" in client._buffer[client._start:client._end]:
                    break
                await asyncio.sleep(0.001)
            assert got == expected
        assert await asyncio.wait_for(client.recv(), BOUND) == "end"
        assert 2 * (1 << 20) + 256 * 1024 < len(client._buffer) <= 2 * ((1 << 20) + 14) + 256 * 1024  # two frames
        # and a read behind them: the most a 1 MiB max_size allows
        await client.close()


async def test_fragmented_messages_are_reassembled() -> None:
    async def fragments(ws: ServerConnection) -> None:
        await ws.send(iter(["héllo ", "wörld"]))
        await ws.send(iter([b"ab", b"cd", b""]))

    async with ws_server(fragments) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}")
        assert await asyncio.wait_for(client.recv(), BOUND) == "héllo wörld"
        assert bytes(await asyncio.wait_for(client.recv(), BOUND)) == b"abcd"
        await client.close()


async def test_a_server_ping_is_answered_while_reading() -> None:
    async def pinger(ws: ServerConnection) -> None:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, BOUND)
        await ws.send("pong received")

    async with ws_server(pinger) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}")
        assert await asyncio.wait_for(client.recv(), BOUND) == "pong received"
        await client.close()


async def test_the_servers_close_code_and_reason_surface() -> None:
    async def closer(ws: ServerConnection) -> None:
        await ws.close(4001, "room not found")

    async with ws_server(closer) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}")
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(client.recv(), BOUND)
        assert (caught.value.code, caught.value.reason) == (4001, "room not found")
        with pytest.raises(ConnectionClosed):
            await client.send_binary(b"late")


async def test_an_oversized_frame_closes_with_1009_before_its_bytes_arrive() -> None:
    seen: list[int | None] = []

    async def big(ws: ServerConnection) -> None:
        await ws.send(bytes(70000))
        await ws.wait_closed()
        seen.append(ws.close_code)

    async with ws_server(big) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}", max_size=65536)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(client.recv(), BOUND)
        assert caught.value.code == 1009
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == [1009]


async def test_headers_reach_the_server_and_a_refusal_is_a_handshake_failure() -> None:
    def check(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != "Bearer s3cret":
            return Response(403, "Forbidden", Headers(), b"no")
        return None

    async with ws_server(echo, process_request=check) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/x?y=1",
                                               headers={"Authorization": "Bearer s3cret"})
        await client.send_text("hi")
        assert await asyncio.wait_for(client.recv(), BOUND) == "hi"
        await client.close()
        with pytest.raises(HandshakeFailed) as caught:
            await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        assert caught.value.status == 403
    with pytest.raises(ValueError):
        await WebSocketClient.connect("ws://127.0.0.1:9/", headers={"X": "a\r\nInjected: 1"})


async def test_an_http_connect_proxy_tunnels_the_connection() -> None:
    targets: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        targets.append(head.split(b"\r\n")[0])
        host, port = head.split(b" ")[1].rsplit(b":", 1)
        up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    async with proxy_server, ws_server(echo) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", proxy=f"http://127.0.0.1:{proxy_port}")
        await client.send_binary(b"through the tunnel")
        assert await asyncio.wait_for(client.recv(), BOUND) == b"through the tunnel"
        await client.close()
    assert targets == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_wss_checks_the_certificate_and_carries_frames(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    async with ws_server(echo, ssl=server_tls) as port:
        client = await WebSocketClient.connect(f"wss://127.0.0.1:{port}/", ssl=client_tls)
        payload = os.urandom(1 << 20)
        await client.send_binary(payload)
        assert await asyncio.wait_for(client.recv(), BOUND) == payload
        await client.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's roots do not know this certificate
            await WebSocketClient.connect(f"wss://127.0.0.1:{port}/")


async def test_the_relay_says_hello_to_this_client(relay_server) -> None:
    client = await WebSocketClient.connect(f"{relay_server.ws_url}/ws?role=send&v=2")
    hello = json.loads(await asyncio.wait_for(client.recv(), BOUND))
    assert hello["type"] == "hello" and hello["role"] == "send" and hello["nameplate"].isdigit()
    await client.close()


@asynccontextmanager
async def raw_server(reply: Callable[[bytes], bytes], then_close: bool = True) -> AsyncIterator[int]:
    """A server that answers the upgrade request with whatever ``reply(request_head)`` returns, in one write."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(reply(head))
        await writer.drain()
        if then_close:
            writer.close()
        else:
            await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def accept_for(head: bytes) -> bytes:
    import base64
    import hashlib

    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def upgrade(head: bytes, accept: bytes | None = None, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + (accept or accept_for(head)) + b"\r\n" + extra + b"\r\n")


async def test_frames_sent_with_the_101_in_one_packet_are_not_lost() -> None:
    async with raw_server(lambda head: upgrade(head) + b"\x81\x05hello\x82\x03abc", then_close=False) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        assert await asyncio.wait_for(client.recv(), BOUND) == "hello"
        assert await asyncio.wait_for(client.recv(), BOUND) == b"abc"
        client.abort()


@pytest.mark.parametrize("reply, why", [
    (lambda head: upgrade(head, accept=b"d3JvbmcgYWNjZXB0IGtleQ=="), "Accept"),
    (lambda head: upgrade(head, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extension"),
    (lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "200"),
    (lambda head: b"SSH-2.0-OpenSSH\r\n\r\n", "HTTP"),
    (lambda head: b"HTTP/1.1 101 OK\r\n" + b"X: " + b"a" * 20000, "too long"),
    (lambda head: b"HTTP/1.1 101 Swi", "closed during the upgrade"),
])
async def test_a_bad_upgrade_response_is_a_handshake_failure(reply: Callable[[bytes], bytes], why: str) -> None:
    async with raw_server(reply) as port:
        with pytest.raises(HandshakeFailed, match=why):
            await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", open_timeout=BOUND)


async def test_a_connection_cut_inside_a_frame_is_closed_1006() -> None:
    async with raw_server(lambda head: upgrade(head) + b"\x82\x7e\x10\x00" + b"x" * 100) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(client.recv(), BOUND)
        assert caught.value.code == 1006


async def test_a_second_concurrent_reader_is_refused_not_interleaved() -> None:
    async with raw_server(lambda head: upgrade(head), then_close=False) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        first = asyncio.ensure_future(client.recv())
        await asyncio.sleep(0)
        with pytest.raises(RecvInProgress):
            await client.recv()
        first.cancel()
        client.transport.abort()


async def test_a_close_is_answered_while_nobody_reads_and_the_reason_before_it_stays_queued() -> None:
    closed_at_server = asyncio.Event()

    async def say_why_then_close(ws: ServerConnection) -> None:
        await ws.send('{"type":"peer_left"}')
        await ws.close(4003, "peer left")  # completes only once the client answered the close
        closed_at_server.set()

    async with ws_server(say_why_then_close) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
        await asyncio.wait_for(closed_at_server.wait(), BOUND)  # no recv() was running meanwhile
        with pytest.raises(ConnectionClosed) as caught:
            await client.send_text("too late")
        assert caught.value.code == 4003
        assert await asyncio.wait_for(client.recv(), BOUND) == '{"type":"peer_left"}'
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(client.recv(), BOUND)
        assert (caught.value.code, caught.value.reason) == (4003, "peer left")


def test_it_runs_on_uvloop_as_the_cli_does() -> None:
    import uvloop  # a dependency of the project on every platform CI runs on

    async def main() -> None:
        async with ws_server(echo) as port:
            client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/")
            payload = os.urandom(3 << 20)
            for start in range(0, len(payload), 1 << 20):
                await client.send_binary(payload[start:start + (1 << 20)])
            for start in range(0, len(payload), 1 << 20):
                assert await asyncio.wait_for(client.recv(), BOUND) == payload[start:start + (1 << 20)]
            await client.close()

    uvloop.run(main())


async def test_a_frame_completed_by_a_read_that_compacts_the_buffer_still_wakes_the_reader() -> None:
    """Regression: the read that completes a frame may also move the unparsed bytes to the front of the buffer
    (the free tail got short); the waiting reader's target must move with them, or it waits forever (seen as a
    1-in-5 hang of a 64 MiB transfer)."""
    a, b, c = os.urandom(65000), os.urandom(65500), os.urandom(10000)

    def frame(payload: bytes) -> bytes:
        return b"\x82\x7e" + len(payload).to_bytes(2, "big") + payload

    rest = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(upgrade(head) + frame(a) + frame(b)[:1000])
        await rest.wait()
        writer.write(frame(b)[1000:] + frame(c))  # past the point where the free tail is shorter than MIN_READ
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}/", max_size=1 << 16)
        assert await asyncio.wait_for(client.recv(), BOUND) == a
        second = asyncio.ensure_future(client.recv())
        for _ in range(1000):  # until the reader waits for the rest of b
            if client._waiter is not None:
                break
            await asyncio.sleep(0)
        assert client._waiter is not None
        rest.set()
        assert await asyncio.wait_for(second, BOUND) == b
        assert await asyncio.wait_for(client.recv(), BOUND) == c
        client.abort()


async def test_a_server_ping_is_answered_while_nobody_reads() -> None:
    """The relay pings every 20 s and drops a peer that misses 60 s of pongs; a receiver waiting for a person to
    accept an offer reads nothing meanwhile, and must stay connected (as with websockets' background reader)."""
    answered = asyncio.Event()

    async def pinger(ws: ServerConnection) -> None:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, BOUND)
        answered.set()
        await ws.send("after the pong")

    async with ws_server(pinger) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}")
        await asyncio.wait_for(answered.wait(), BOUND)  # no recv() until the server saw the pong
        assert await asyncio.wait_for(client.recv(), BOUND) == "after the pong"
        await client.close()


async def test_a_connection_that_carries_only_control_messages_keeps_a_small_buffer() -> None:
    """Hundreds of rooms in one process (tests/hardening/test_load.py) must not cost 2 x max_size each."""
    async with ws_server(echo) as port:
        client = await WebSocketClient.connect(f"ws://127.0.0.1:{port}", max_size=4 << 20)
        for n in range(50):
            await client.send_text(json.dumps({"type": "ack", "chunks": n}))
            assert json.loads(await asyncio.wait_for(client.recv(), BOUND))["chunks"] == n
        assert len(client._buffer) == 64 * 1024
        await client.close()


# --- the URL, split without websockets (importing any of it imports importlib.metadata) -------------------------

SAME_AS_PARSE_URI = [
    "ws://127.0.0.1:8000/ws?role=send&v=2", "ws://127.0.0.1:8000/ws/42?role=receive&v=2&resume=1",
    "wss://relay.example/prefix/ws?role=send", "ws://relay.example", "wss://relay.example:443/", "ws://HOST.Example:80",
    "ws://[::1]:9/ws", "ws://[2001:db8::1]/", "wss://bücher.example/ws/über?name=é", "ws://h/a%20b?q=%C3%A9",
    "ws://h:0/", "ws://h:65535/x",
]


@pytest.mark.parametrize("url", SAME_AS_PARSE_URI)
def test_a_websocket_url_is_split_as_websockets_splits_it(url: str) -> None:
    from websockets.uri import parse_uri

    from clients.wsclient import parse_websocket_url

    theirs = parse_uri(url)
    assert parse_websocket_url(url) == (theirs.secure, theirs.host, theirs.port, theirs.resource_name)


@pytest.mark.parametrize("url", [
    "http://relay.example/ws", "relay.example:80", "ws://", "ws://:80/", "ws://h:65536/", "ws://h:-1/", "ws://h:x/",
    "ws://[::1/ws", "ws://h/ws#frag", "ws://h/ws#", "ws://user:pass@h/", "ws://user@h/", "wss://a..b\u00e9/",
    "ws://" + "\u00e9" * 64 + ".example/",
])
def test_anything_else_is_a_bad_websocket_url_before_any_socket(url: str) -> None:
    from clients.wsclient import BadWebSocketUrl, parse_websocket_url

    with pytest.raises(BadWebSocketUrl) as caught:
        parse_websocket_url(url)
    assert "is not a WebSocket URL" in str(caught.value) and isinstance(caught.value, ValueError)


async def test_a_proxy_setting_websockets_cannot_use_is_proxy_unusable() -> None:
    from clients.wsclient import ProxyUnusable

    with pytest.raises(ProxyUnusable):
        await WebSocketClient.connect("ws://127.0.0.1:9/", proxy="ftp://127.0.0.1:1", open_timeout=BOUND)


async def test_a_proxy_that_refuses_the_tunnel_is_proxy_failed() -> None:
    from clients.wsclient import ProxyFailed

    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    proxy_server = await asyncio.start_server(refusing, "127.0.0.1", 0)
    async with proxy_server:
        port = proxy_server.sockets[0].getsockname()[1]
        with pytest.raises(ProxyFailed):
            await WebSocketClient.connect("ws://127.0.0.1:9/", proxy=f"http://127.0.0.1:{port}", open_timeout=BOUND)
