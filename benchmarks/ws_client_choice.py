"""Which WebSocket client for the data path: client CPU per GiB received and sent, on loopback.

    python -m benchmarks.ws_client_choice [--mib 1024] [--frame-kib 1024] [--clients websockets,wsclient,picows]

A minimal server (a separate process, so that its CPU is not counted) upgrades the connection and then either
sends N binary frames of one prebuilt unmasked frame ("down": what a receiver does) or reads and discards N
masked frames without unmasking them ("up": what a sender does). Each client runs in its own process and reports
its own CPU time (``resource.getrusage``), wall time and peak RSS. A client only touches each received frame
(its length); a real receiver then decrypts it in place, measured separately (``benchmarks/ws_client_choice.py``
is about the WebSocket layer alone).

picows is optional: it is measured when importable (``pip install picows``), else reported as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MIB = 1 << 20
CLIENTS = ("websockets", "wsclient", "picows")
RUN_TIMEOUT = 300.0


# --- the server ----------------------------------------------------------------------------------------------


def _serve(port_file: str) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    with open(port_file, "w") as out:
        out.write(str(sock.getsockname()[1]))
    asyncio.run(_serve_on(sock))


async def _serve_on(sock: socket.socket) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        first = await reader.readexactly(2)  # the client's command: a small masked text frame
        length = first[1] & 0x7F
        mask = await reader.readexactly(4)
        command = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length))).decode()
        direction, count, frame_size = command.split()
        n, size = int(count), int(frame_size)
        if direction == "down":
            frame = bytes([0x82, 127]) + size.to_bytes(8, "big") + os.urandom(size)
            for _ in range(n):
                writer.write(frame)
                await writer.drain()
        else:
            header = 14 if size >= 1 << 16 else 8 if size >= 126 else 6
            await _discard(reader, n * (header + size))
        writer.write(b"\x81\x04done")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


async def _discard(reader: asyncio.StreamReader, total: int) -> None:
    left = total
    while left > 0:
        data = await reader.read(min(left, 1 << 20))
        if not data:
            raise ConnectionError("the client stopped early")
        left -= len(data)


# --- the clients ---------------------------------------------------------------------------------------------


async def _run_websockets(url: str, direction: str, n: int, size: int) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, max_size=size + 1024, write_limit=4 * MIB) as ws:
        await ws.send(f"{direction} {n} {size}")
        if direction == "down":
            for _ in range(n):
                frame = await ws.recv()
                assert len(frame) == size
        else:
            payload = os.urandom(size)
            for _ in range(n):
                await ws.send(payload)
        assert await ws.recv() == "done"


async def _run_wsclient(url: str, direction: str, n: int, size: int) -> None:
    from clients.wsclient import WebSocketClient

    ws = await WebSocketClient.connect(url, max_size=size + 1024)
    await ws.send_text(f"{direction} {n} {size}")
    if direction == "down":
        for _ in range(n):
            frame = await ws.recv()
            assert len(frame) == size
    else:
        payload = os.urandom(size)
        for _ in range(n):
            await ws.send_binary(payload)
    assert await ws.recv() == "done"
    ws.abort()


async def _run_picows(url: str, direction: str, n: int, size: int) -> None:
    from picows import WSListener, WSMsgType, ws_connect  # type: ignore[import-not-found,unused-ignore]

    done = asyncio.get_running_loop().create_future()
    writable = asyncio.Event()
    writable.set()

    class Listener(WSListener):  # type: ignore[misc]
        received = 0

        def pause_writing(self) -> None:
            writable.clear()

        def resume_writing(self) -> None:
            writable.set()

        def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
            if frame.msg_type == WSMsgType.BINARY:
                assert len(frame.get_payload_as_memoryview()) == size
                self.received += 1
            elif frame.msg_type == WSMsgType.TEXT and not done.done():
                done.set_result(frame.get_payload_as_ascii_text())

    transport, _ = await ws_connect(Listener, url, max_frame_size=size + 1024)
    transport.send(WSMsgType.TEXT, f"{direction} {n} {size}".encode())
    if direction == "up":
        payload = os.urandom(size)
        for _ in range(n):
            transport.send(WSMsgType.BINARY, payload)
            await writable.wait()
    assert await done == "done"
    transport.disconnect()


def _client_main(name: str, url: str, direction: str, n: int, size: int) -> None:
    runner = {"websockets": _run_websockets, "wsclient": _run_wsclient, "picows": _run_picows}[name]
    __import__({"websockets": "websockets.asyncio.client", "wsclient": "clients.wsclient", "picows": "picows"}[name])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    asyncio.run(runner(url, direction, n, size))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "wall_s": wall, "peak_rss_kib": after.ru_maxrss,
    }))


# --- the driver ----------------------------------------------------------------------------------------------


def measure(name: str, direction: str, mib: int, frame_kib: int) -> dict:
    """One client run against a fresh server; CPU per GiB, MiB/s and peak RSS, or ``error``."""
    port_file = f"/tmp/ws-client-choice-{os.getpid()}-{name}-{direction}.port"
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.ws_client_choice", "--serve", port_file])
    try:
        for _ in range(500):
            if os.path.exists(port_file) and open(port_file).read():
                break
            time.sleep(0.01)
        port = int(open(port_file).read())
        size = frame_kib * 1024
        n = mib * MIB // size
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.ws_client_choice", "--client", name, f"ws://127.0.0.1:{port}/",
             direction, str(n), str(size)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if done.returncode != 0:
            return {"client": name, "direction": direction, "error": done.stderr.strip().splitlines()[-1][:200]}
        result = json.loads(done.stdout.strip().splitlines()[-1])
        gib = n * size / (1 << 30)
        return {"client": name, "direction": direction,
                "cpu_s_per_gib": round((result["user_s"] + result["sys_s"]) / gib, 3),
                "user_s_per_gib": round(result["user_s"] / gib, 3), "sys_s_per_gib": round(result["sys_s"] / gib, 3),
                "mib_s": round(n * size / MIB / result["wall_s"]), "peak_rss_mib": round(result["peak_rss_kib"] / 1024)}
    finally:
        server.kill()
        server.wait()
        if os.path.exists(port_file):
            os.unlink(port_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="PORT_FILE")
    parser.add_argument("--client", nargs=5, metavar=("NAME", "URL", "DIRECTION", "N", "SIZE"))
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--frame-kib", type=int, default=1024)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    if args.client:
        name, url, direction, n, size = args.client
        _client_main(name, url, direction, int(n), int(size))
        return 0
    for direction in ("down", "up"):
        for name in args.clients.split(","):
            for _ in range(args.repeat):
                print(json.dumps(measure(name, direction, args.mib, args.frame_kib)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
