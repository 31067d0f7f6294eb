"""Interleaved A/B of the relay's cost: one room, this checkout against another commit, on a shared machine.

    python -m benchmarks.ab --base 0512546 --chunk 65536 --size 536870912 --repeat 3

A single run on a machine shared with other work says little (their load moves throughput and, through caches
and frequency, CPU per GiB). This runs scenario 1's measurement (``scenarios.ws_transfer`` after a warm-up, the
relay's CPU from psutil) alternately on a relay started from ``--base`` (a ``git archive`` of that commit,
run with it as working directory and first on ``PYTHONPATH``) and on this checkout, with the same load
clients (this checkout's), and prints one line per attempt with the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from benchmarks.plan import MIB, Measurement
from benchmarks.scenarios import on_server, warmed, ws_transfer
from benchmarks.servers import RelayServer

ROOT = Path(__file__).resolve().parent.parent


class RelayAt(RelayServer):
    """``relay serve`` from the code in ``root`` (``python -c`` puts the working directory first on sys.path)."""

    def __init__(self, log_dir: Path, root: Path) -> None:
        super().__init__(log_dir)
        self.root = root

    def command(self) -> list[str]:
        return ["env", "-C", str(self.root), *super().command()]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(self.root) + os.pathsep + env.get("PYTHONPATH", "")
        return env


def export(commit: str, into: Path) -> Path:
    """The tree of ``commit`` unpacked into ``into``."""
    archive = into / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit], check=True, timeout=60)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def attempt(root: Path, log_dir: Path, chunk: int, size: int) -> Measurement:
    row = Measurement("ab", root.name, chunk)
    return on_server(lambda: RelayAt(log_dir, root), row, warmed(
        lambda server, monitor: ws_transfer(server, monitor, row, rooms=1, size=size, chunk=chunk)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare this checkout with")
    parser.add_argument("--chunk", type=int, default=MIB)
    parser.add_argument("--size", type=int, default=512 * MIB)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="relay-ab-") as scratch:
        base = export(args.base, Path(scratch))
        for _ in range(args.repeat):
            for label, root in ((f"base {args.base}", base), ("this checkout", ROOT)):
                row = attempt(root, Path(scratch) / "logs", args.chunk, args.size)
                result = (f"{row.mib_s:6.0f} MiB/s  relay {row.cpu_s_per_gib:.2f} CPU-s/GiB  load clients "
                          f"{row.client_cpu_s:.2f} s" if row.ok else f"failed: {row.error}")
                print(f"{label:>20}  {args.chunk // 1024} KiB chunks  {result}  load {os.getloadavg()[0]:.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
