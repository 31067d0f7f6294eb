"""Profile the relay under the single-room load of scenario 1 with py-spy, from outside the process.

    python -m benchmarks.profile                      # 2 GiB at 1 MiB chunks
    python -m benchmarks.profile --chunk 65536 --size 536870912

Writes ``profile-<chunk>.svg`` (flame graph) and ``profile-<chunk>.txt`` (the functions with the most samples,
by own time and by total time) into ``benchmarks/results/profile/``, and prints the text.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.measure import ProcessMonitor
from benchmarks.plan import GIB, MIB, Measurement
from benchmarks.scenarios import on_server, warm_up, ws_transfer
from benchmarks.servers import RelayServer

OUT_DIR = Path(__file__).resolve().parent / "results" / "profile"
TOP = 25


def summarize(collapsed: Path, top: int = TOP) -> str:
    """Own-time and total-time tables from py-spy's collapsed stacks (``frame;frame;... count`` per line)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total time (including callees):"]
    lines += [f"  {100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=MIB)
    parser.add_argument("--size", type=int, default=2 * GIB)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    parser.add_argument("--output", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    name = f"profile-{args.chunk}" + ("-native" if args.native else "")
    svg = args.output / f"{name}.svg"
    raw = args.output / f"{name}.collapsed"
    row = Measurement("profile", "relay", args.chunk)
    spies: list[subprocess.Popen] = []

    def body(server: RelayServer, monitor: ProcessMonitor) -> None:
        warm_up(server)
        common = [py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate)]
        # Native unwinding needs the process paused while sampled; Python-only sampling does not.
        common.append("--native" if args.native else "--nonblocking")
        spies.append(subprocess.Popen([*common, "--format", "flamegraph", "-o", str(svg)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        spies.append(subprocess.Popen([*common, "--format", "raw", "-o", str(raw)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            ws_transfer(server, monitor, row, rooms=1, size=args.size, chunk=args.chunk)
        finally:
            server.stop()  # py-spy writes its output when the process it follows exits
            for spy in spies:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()

    on_server(lambda: RelayServer(args.output / "logs"), row, body)
    if not row.ok:
        print(f"transfer failed: {row.error}", file=sys.stderr)
        return 1
    header = (f"relay, one room, {args.size // MIB} MiB at {args.chunk // 1024} KiB chunks, under py-spy "
              f"(two samplers at {args.rate} Hz{', native' if args.native else ''}): "
              f"{row.mib_s:.0f} MiB/s, {row.cpu_s_per_gib:.2f} CPU-s/GiB\n")
    text = header + "\n" + (summarize(raw) if raw.exists() else "py-spy wrote no samples")
    (args.output / f"{name}.txt").write_text(text + "\n")
    print(text)
    print(f"\nflame graph: {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
