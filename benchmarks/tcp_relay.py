"""Baseline: the smallest honest asyncio TCP relay, with the same chunking as the real one.

    python -m benchmarks.tcp_relay --port P --chunk 1048576

A client's first line names its role and room: ``S room\\n`` for the sender, ``R room\\n`` for the receiver.
Once both are in, the relay reads one chunk at a time from the sender and writes it to the receiver, waiting
for the receiver's buffer to drain before reading the next one (the same back-pressure rule as the relay).
No framing, no checksums: this is the floor of what relaying costs in asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import resource

HEADER_LIMIT = 256


class Rooms:
    """Senders waiting for their receiver, by room name."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.waiting: dict[str, asyncio.Future[asyncio.StreamWriter]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readuntil(b"\n")
            role, _, room = line.decode("ascii", "replace").strip().partition(" ")
            if role == "S":
                await self._send(room, reader)
            elif role == "R":
                self._receive(room, writer)
                return  # the sender's task writes to this writer and closes it
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        writer.close()

    def _receive(self, room: str, writer: asyncio.StreamWriter) -> None:
        future = self.waiting.pop(room, None)
        if future is None or future.done():
            writer.close()
            return
        future.set_result(writer)

    async def _send(self, room: str, reader: asyncio.StreamReader) -> None:
        future: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
        self.waiting[room] = future
        try:
            target = await future
        finally:
            self.waiting.pop(room, None)
        try:
            while True:
                try:
                    data = await reader.readexactly(self.chunk)
                except asyncio.IncompleteReadError as end:
                    if end.partial:
                        target.write(end.partial)
                    break
                target.write(data)
                await target.drain()
            await target.drain()
        finally:
            target.close()


async def serve(host: str, port: int, chunk: int) -> None:
    rooms = Rooms(chunk)
    server = await asyncio.start_server(rooms.handle, host, port, limit=max(chunk, 1 << 16), backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tcp_relay", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.host, args.port, args.chunk))


if __name__ == "__main__":
    main()
