"""Holds many idle connections to the asyncio TCP relay baseline, each a sender waiting for its receiver.

    python -m benchmarks.idleclient --port P --rooms 5000

Prints ``{"event": "ready", "rooms": n}`` once every connection is open, holds them until stdin closes,
then prints ``{"event": "result", "rooms": []}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idleclient", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rooms", type=int, required=True)
    args = parser.parse_args(argv)
    held = []
    try:
        for index in range(args.rooms):
            sock = socket.create_connection((args.host, args.port), timeout=10)
            sock.sendall(f"S idle-{index}\n".encode())
            held.append(sock)
    except OSError as exc:
        sys.stderr.write(f"opened {len(held)} connections, then: {exc}\n")
    emit("ready", rooms=len(held))
    sys.stdin.read()
    for sock in held:
        sock.close()
    emit("result", rooms=[])
    return 0


if __name__ == "__main__":
    sys.exit(main())
