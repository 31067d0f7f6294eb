"""The step-1 pieces composed into the v2 data path, without the CLI around them: what a receiver and a sender
will cost once ``clients/transfer.py`` uses them (issue 12).

    python -m benchmarks.fast_path [--mib 1024] [--chunk-kib 1024] [--depth 8] [--repeat 1]

A peer process plays the relay's side of the wire as protocol v2 has it (docs/design/protocol-v2.md section 5):
for each chunk a text frame ``{"type":"chunk","epoch":0,"size":n,"xxh3_64":"..."}`` then the ciphertext as one
binary frame; ``{"type":"end","epoch":0}`` at the end. Two measured client processes, each timing its own CPU
(``resource.getrusage``, imports excluded) and peak RSS:

- receive: ``WebSocketClient.recv`` (a view of its buffer) -> parse the header -> XXH3-64 of the ciphertext
  view -> ``ChunkSink.put`` (``ChunkOpenerInto`` decrypting into a ``FileWriter`` buffer, ``os.pwrite`` on the
  writer thread) -> ``finish``; then the file's SHA-256 is compared with the source's by the driver (not timed);
- send: ``ChunkSource.next`` (``FileReader`` read-ahead, ``ChunkSealerInto`` into one buffer) -> XXH3-64 ->
  header text frame + binary frame through ``WebSocketClient``; the peer only counts bytes.
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
import tempfile
import time
from pathlib import Path

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MIB = 1 << 20
KEY = bytes(range(32))
RUN_TIMEOUT = 600.0


def plan_for(size: int, chunk: int):  # type: ignore[no-untyped-def]
    from clients import crypto as c

    return c.StreamPlan((c.Segment(0, 0, size),), chunk)


# --- the peer (plays the relay): serves prebuilt frames, or swallows them -----------------------------------


def _peer(port_file: str, source: str, chunk: int) -> None:
    import xxhash

    from clients import crypto as c

    sock = socket.create_server(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    size = os.path.getsize(source)
    plan = plan_for(size, chunk)
    source_file = open(source, "rb")  # opened here: the peer is not measured, but its loop should not block on it

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + base64.b64encode(hashlib.sha1(key + GUID).digest()) + b"\r\n\r\n")
        mode = head.split(b" ")[1].decode()
        if mode == "/down":
            sealer = c.StreamSealer(KEY, plan)
            source_file.seek(0)
            while not sealer.done:
                assert sealer.position is not None
                sealed = sealer.seal_next(source_file.read(sealer.position.length))
                text = json.dumps({"type": "chunk", "epoch": 0, "size": len(sealed),
                                   "xxh3_64": xxhash.xxh3_64_hexdigest(sealed)}).encode()
                writer.write(bytes([0x81, len(text)]) + text)
                writer.write(bytes([0x82, 127]) + len(sealed).to_bytes(8, "big") + sealed)
                await writer.drain()
            end = b'{"type":"end","epoch":0}'
            writer.write(bytes([0x81, len(end)]) + end)
            await writer.drain()
            await reader.read(1)  # until the client closes
        else:
            left = plan.ciphertext_size()
            while left > 0:  # swallow: headers and masked payloads, counted by the payload bytes only
                first = await reader.readexactly(2)
                length = first[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                await reader.readexactly(4)
                await _skip(reader, length)
                if first[0] & 0x0F == 2:
                    left -= length
            writer.write(b"\x81\x04done")
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=sock, limit=1 << 22)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _skip(reader: asyncio.StreamReader, count: int) -> None:
    while count > 0:
        data = await reader.read(min(count, 1 << 20))
        if not data:
            raise ConnectionError("early end")
        count -= len(data)


# --- the measured clients -----------------------------------------------------------------------------------


async def _receive(url: str, output: str, size: int, chunk: int, depth: int) -> None:
    import xxhash

    from clients import crypto as c
    from clients.datapath import ChunkSink
    from clients.wsclient import WebSocketClient

    sock = await WebSocketClient.connect(url + "/down", max_size=chunk + c.TAG_SIZE + 1024)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sink = ChunkSink(KEY, plan_for(size, chunk), lambda index: (fd, output), depth)
    try:
        while True:
            message = await sock.recv()
            assert isinstance(message, str)
            header = json.loads(message)
            if header["type"] == "end":
                await sink.finish()
                break
            payload = await sock.recv()
            assert isinstance(payload, memoryview) and len(payload) == header["size"]
            if xxhash.xxh3_64_hexdigest(payload) != header["xxh3_64"]:
                raise ValueError("transport checksum")
            await sink.put(payload)
    finally:
        sink.close()
        os.close(fd)
    sock.abort()


async def _send(url: str, source: str, size: int, chunk: int, depth: int) -> None:
    import xxhash

    from clients.datapath import ChunkSource
    from clients.wsclient import WebSocketClient

    sock = await WebSocketClient.connect(url + "/up", max_size=1 << 16)
    chunks = ChunkSource(KEY, plan_for(size, chunk), [source], depth)
    try:
        while (sealed := await chunks.next()) is not None:
            await sock.send_text(json.dumps({"type": "chunk", "epoch": 0, "size": len(sealed),
                                             "xxh3_64": xxhash.xxh3_64_hexdigest(sealed)}))
            await sock.send_binary(sealed)
        assert await sock.recv() == "done"
    finally:
        chunks.close()
    sock.abort()


def _client(role: str, url: str, path: str, size: int, chunk: int, depth: int) -> None:
    import xxhash  # noqa: F401  (imports before the measurement)

    import clients.datapath  # noqa: F401
    import clients.wsclient  # noqa: F401

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    runner = _receive if role == "receive" else _send
    asyncio.run(runner(url, path, size, chunk, depth))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
                      "wall_s": wall, "peak_rss_kib": after.ru_maxrss}))


# --- the driver ----------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def measure(role: str, source: Path, work: Path, chunk: int, depth: int) -> dict:
    port_file = work / f"{role}.port"
    peer = subprocess.Popen([sys.executable, "-m", "benchmarks.fast_path", "--peer", str(port_file), str(source),
                             str(chunk)])
    try:
        for _ in range(1000):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.01)
        url = f"ws://127.0.0.1:{int(port_file.read_text())}"
        size = source.stat().st_size
        path = str(work / "received") if role == "receive" else str(source)
        done = subprocess.run([sys.executable, "-m", "benchmarks.fast_path", "--client", role, url, path, str(size),
                               str(chunk), str(depth)], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        if done.returncode != 0:
            return {"role": role, "error": done.stderr.strip()[-400:]}
        result = json.loads(done.stdout.strip().splitlines()[-1])
        gib = size / (1 << 30)
        row = {"role": role, "mib": size // MIB,
               "cpu_s_per_gib": round((result["user_s"] + result["sys_s"]) / gib, 3),
               "user_s_per_gib": round(result["user_s"] / gib, 3), "sys_s_per_gib": round(result["sys_s"] / gib, 3),
               "mib_s": round(size / MIB / result["wall_s"]), "peak_rss_mib": round(result["peak_rss_kib"] / 1024)}
        if role == "receive":
            row["verified"] = _sha256(work / "received") == _sha256(source)
            (work / "received").unlink()
        return row
    finally:
        peer.kill()
        peer.wait()
        port_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", nargs=3, metavar=("PORT_FILE", "SOURCE", "CHUNK"))
    parser.add_argument("--client", nargs=6, metavar=("ROLE", "URL", "PATH", "SIZE", "CHUNK", "DEPTH"))
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if args.peer:
        _peer(args.peer[0], args.peer[1], int(args.peer[2]))
        return 0
    if args.client:
        role, url, path, size, chunk, depth = args.client
        _client(role, url, path, int(size), int(chunk), int(depth))
        return 0
    work = Path(tempfile.mkdtemp(prefix="relay-fast-path-"))
    try:
        source = work / "source"
        block = os.urandom(4 * MIB)
        with open(source, "wb") as out:
            for _ in range(args.mib // 4):
                out.write(block)
        ok = True
        for role in ("receive", "send"):
            for _ in range(args.repeat):
                row = measure(role, source, work, args.chunk_kib * 1024, args.depth)
                ok = ok and "error" not in row and row.get("verified", True)
                print(json.dumps(row), flush=True)
        return 0 if ok else 1
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


if __name__ == "__main__":
    sys.exit(main())
