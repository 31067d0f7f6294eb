"""What the relay's per-byte path costs in-process, stage by stage, and what a zero-copy path would cost.

    python -m benchmarks.framepath            # 1 MiB frames, 512 MiB through each path

The relay receives a masked binary frame in socket reads of up to 256 KiB (uvloop's read size), parses and
unmasks it with ``websockets``' sans-I/O layer, checks its XXH3-64, and writes it out through
``Frame.serialize``. This module replays exactly those library calls on one core, with no sockets, so the cost of
each copy is visible without the noise of a shared machine; ``proposed`` is the path of a ``BufferedProtocol``
that lets the kernel write each frame straight into one preallocated buffer and unmasks it in one pass.
CPU seconds per GiB, ``time.process_time``.
"""

from __future__ import annotations

import argparse
import os
import struct
import time

import xxhash
from websockets.protocol import State
from websockets.server import ServerProtocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from benchmarks.wsframes import client_frame

READ_SIZE = 256 * 1024  # uvloop hands data_received at most this much per read
GIB = 1 << 30


def _pieces(frame: bytes) -> list[bytes]:
    return [frame[i : i + READ_SIZE] for i in range(0, len(frame), READ_SIZE)]


def websockets_receive(frame: bytes, count: int) -> float:
    """``data_received`` pieces (new bytes objects, as uvloop makes them) through the sans-I/O parser."""
    protocol = ServerProtocol(max_size=8 << 20)
    protocol.state = State.OPEN
    started = time.process_time()
    for _ in range(count):
        for piece in _pieces(frame):  # slicing = the copy uvloop makes from its read buffer
            protocol.receive_data(piece)
        protocol.events_received()
    return time.process_time() - started


def websockets_send(payload: bytes, count: int) -> float:
    """uvicorn's send: ``send_binary``, ``data_to_send``, ``b"".join``."""
    protocol = ServerProtocol(max_size=8 << 20)
    protocol.state = State.OPEN
    started = time.process_time()
    for _ in range(count):
        protocol.send_binary(payload)
        b"".join(protocol.data_to_send())
    return time.process_time() - started


def digest(payload: bytes, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        xxhash.xxh3_64_hexdigest(payload)
    return time.process_time() - started


def proposed_receive(frame: bytes, count: int) -> float:
    """Kernel writes into one preallocated buffer (simulated with a copy into it, as ``recv_into`` does);
    the payload is unmasked into its final ``bytes`` in one pass; the header and payload go out as two
    ``transport.write`` calls with no join."""
    buffer = bytearray(len(frame))
    view = memoryview(buffer)
    header_size = _client_header_size(len(frame))
    started = time.process_time()
    for _ in range(count):
        for offset in range(0, len(frame), READ_SIZE):  # stands in for the kernel's copy (recv_into)
            end = min(offset + READ_SIZE, len(frame))
            view[offset:end] = frame[offset:end]
        mask = bytes(view[header_size - 4 : header_size])
        payload = apply_mask(view[header_size:], mask)
        struct.pack("!BBQ", 0x82, 127, len(payload))
    elapsed = time.process_time() - started
    kernel_stand_in = _copy_cost(frame, count)
    return max(0.0, elapsed - kernel_stand_in)


def _client_header_size(frame_size: int) -> int:
    """2 bytes, the extended length (0, 2 or 8 bytes) and the 4-byte mask of a masked client frame."""
    for extended in (0, 2, 8):
        payload = frame_size - 2 - extended - 4
        if (extended == 0 and payload < 126) or (extended == 2 and 126 <= payload < 1 << 16) or (
                extended == 8 and payload >= 1 << 16):
            return 2 + extended + 4
    raise ValueError("not a client frame size")


def _copy_cost(frame: bytes, count: int) -> float:
    buffer = bytearray(len(frame))
    view = memoryview(buffer)
    started = time.process_time()
    for _ in range(count):
        for offset in range(0, len(frame), READ_SIZE):
            end = min(offset + READ_SIZE, len(frame))
            view[offset:end] = frame[offset:end]
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.framepath", description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--total", type=int, default=512 << 20)
    args = parser.parse_args(argv)
    payload = os.urandom(args.chunk)
    frame = client_frame(0x2, payload, os.urandom(4))
    count = max(1, args.total // args.chunk)
    per_gib = GIB / (count * args.chunk)
    stages = {
        "receive: websockets parser (3 copies + unmask)": websockets_receive(frame, count),
        "check: xxh3_64": digest(payload, count),
        "send: Frame.serialize + join (1-2 copies)": websockets_send(payload, count),
        "proposed receive+send: one fused unmask copy, no join": proposed_receive(frame, count),
    }
    print(f"{args.chunk // 1024} KiB frames, in-process CPU seconds per GiB (user-space only; the relay's socket "
          f"reads and writes cost ~0.35 s/GiB more, like socat's whole cost):")
    for name, seconds in stages.items():
        print(f"  {seconds * per_gib:6.3f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
