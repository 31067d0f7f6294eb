"""A whole transfer of a folder of many files under a low descriptor limit, in a process of its own.

usage: python many_files.py SOURCE_FOLDER OUTPUT_FOLDER NOFILE_LIMIT
Lowers RLIMIT_NOFILE to NOFILE_LIMIT, starts a relay on loopback, sends SOURCE_FOLDER and receives it into
OUTPUT_FOLDER; prints "received N file(s)" and exits 0, or prints the failure and exits 1.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import sys
from pathlib import Path

from relay.config import Settings
from clients.errors import TransferError
from clients.transfer import ReceiveOptions, Reporter, SendOptions, receive, send
from tests.conftest import TEST_LIMITS, start_relay

WAIT = 300.0


async def accept(offer: object) -> bool:
    return True


class ShowsCode(Reporter):
    def __init__(self) -> None:
        self.code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def waiting(self, code: str, receivers: int) -> None:
        self.code.set_result(code)


async def main(source: Path, output: Path) -> int:
    relay = start_relay(Settings(**TEST_LIMITS))  # type: ignore[arg-type]
    try:
        shows = ShowsCode()
        sending = asyncio.create_task(send([source], SendOptions("fd-" + secrets.token_hex(6), relay.ws_url), shows))
        await asyncio.wait([sending, shows.code], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        code = shows.code.result() if shows.code.done() else ""
        async with asyncio.timeout(WAIT):
            offer, _ = await asyncio.gather(receive(ReceiveOptions(code, output, relay.ws_url), accept), sending)
    except TransferError as exc:
        print(f"failed: {exc}")
        return 1
    finally:
        relay.stop()
    print(f"received {len(offer.files)} file(s)")
    return 0


if __name__ == "__main__":
    limit = int(sys.argv[3])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    sys.exit(asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]))))
