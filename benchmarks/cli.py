"""``python -m benchmarks``: run the scenarios of issue 4 and the baselines, print and save the report.

    python -m benchmarks                 # full run, about 6-9 minutes on 2 cores; results in benchmarks/results/
    python -m benchmarks --quick         # tiny sizes, under a minute; results in benchmarks/results/quick/
    python -m benchmarks --only 1,6      # some scenarios only
    python -m benchmarks --only 8 --cli-8gib   # the CLI against piping-server + curl, 1 GiB and 8 GiB
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.plan import MIB, Measurement, Plan
from benchmarks.report import write_all
from benchmarks.scenarios import all_scenarios

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def raise_fd_limit() -> int:
    """Idle capacity holds 5,000 rooms, 10,000 sockets: lift the soft file limit to the hard one (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def print_row(row: Measurement) -> None:
    status = "ok" if row.ok else f"FAILED: {row.error}"
    chunk = f"{row.chunk // 1024} KiB" if row.chunk else "-"
    print(f"  {row.scenario:<32} {row.system:<14} {chunk:>9} {row.mib_s:8.0f} MiB/s "
          f"{row.cpu_s_per_gib:6.2f} CPU-s/GiB  peak {row.rss_peak / MIB:6.0f} MiB  {status}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not the speed")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,6")
    parser.add_argument("--output", type=Path, default=None, help="folder for results.md/json and chart.png")
    parser.add_argument("--no-install", action="store_true", help="never npm-install piping-server")
    parser.add_argument("--cli-8gib", action="store_true",
                        help="scenario 8 also moves an 8 GiB file (client memory flat in the file size; ~2 minutes)")
    args = parser.parse_args(argv)
    plan = Plan.tiny() if args.quick else Plan.full()
    if args.no_install:
        plan = replace(plan, install_baselines=False)
    if args.cli_8gib:
        plan = replace(plan, cli_sizes=(*plan.cli_sizes, 8 * 1024 * MIB))
    out_dir = args.output or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    only = {part.strip() for part in args.only.split(",") if part.strip()} or None
    # On SIGTERM unwind normally, so every server and client this run started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    limit = raise_fd_limit()
    if limit < 2 * plan.idle_rooms + 1000:
        print(f"warning: only {limit} file descriptors; idle capacity may fail", file=sys.stderr)
    started = time.monotonic()
    print(f"relay benchmarks ({'quick' if args.quick else 'full'} run), results in {out_dir}", flush=True)
    rows = all_scenarios(plan, out_dir / "logs", only, print_row)
    text = write_all(rows, out_dir, args.quick)
    print()
    print(text)
    print(f"({time.monotonic() - started:.0f} s; {out_dir / 'results.md'}, results.json, chart.png)")
    return 0 if all(row.ok for row in rows) else 1
