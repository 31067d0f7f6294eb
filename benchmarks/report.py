"""Turning measurements into the report: markdown tables, the raw JSON, a PNG chart, and the targets check."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

from benchmarks.plan import MIB, Measurement
from relay.framebuffer import BATCH

SYSTEMS = ("relay", "tcp-relay", "socat", "piping-server")


def machine_description() -> dict:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        memory = "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "socat": _version(["socat", "-V"], grep="socat version"),
        "commit": _version(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"]),
    }


def _version(command: list[str], grep: str | None = None) -> str:
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [line for line in out.splitlines() if grep is None or grep in line]
    return lines[0].strip() if lines else "?"


def _size(n: int) -> str:
    if n >= MIB:
        return f"{n // MIB} MiB"
    return f"{n // 1024} KiB"


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}"


def _cost_rows(rows: list[Measurement]) -> dict[tuple[int, str], Measurement]:
    return {(r.chunk, r.system): r for r in rows if r.scenario.startswith("1 ")}


@dataclass
class Target:
    name: str
    measured: str
    met: bool | None  # None: could not be measured
    margin: str


RECEIVER_ALLOWANCE = 64 * 1024  # the memory bound's per-receiver share: its socket's write buffer above one chunk


def room_bound(chunk: int, receivers: int) -> int:
    """docs/protocol.md section 8: 2 x max(chunk, 256 KiB) (the sender's buffer, read in batches of up to
    ``framebuffer.BATCH``, and the chunks forwarded from it) + 64 KiB per receiver."""
    return 2 * max(chunk, BATCH) + RECEIVER_ALLOWANCE * receivers


def check_targets(rows: list[Measurement]) -> list[Target]:
    """Issue 8's targets against this run; ``margin`` says by how much each is met or missed.

    Relay CPU at 1 MiB chunks <= 0.5 s/GiB and <= 1.6x socat's in the same run, at 64 KiB <= 1.5 s/GiB; one room
    >= 1.5x piping-server's throughput at 1 MiB and at 64 KiB; a waiting room <= 20 KiB; an active room's peak
    RSS <= idle + 2 x max(chunk, 256 KiB) + 64 KiB per receiver (docs/protocol.md section 8), 100 active rooms
    likewise.
    """
    cost = _cost_rows(rows)
    targets: list[Target] = []

    def ratio_target(name: str, value: float | None, limit: float, unit: str, at_most: bool) -> None:
        if value is None:
            targets.append(Target(name, "not measured", None, ""))
            return
        met = value <= limit if at_most else value >= limit
        margin = (value / limit - 1) * 100
        targets.append(Target(name, f"{value:.2f}{unit}", met, f"{margin:+.0f}% of the limit"))

    def usable(row: Measurement | None) -> bool:
        return row is not None and row.ok and row.cpu_s_per_gib > 0 and row.mib_s > 0

    def relay_at(chunk: int) -> Measurement | None:
        row = cost.get((chunk, "relay"))
        return row if usable(row) else None

    mib, kib64 = relay_at(MIB), relay_at(64 * 1024)
    socat, piping = cost.get((MIB, "socat")), cost.get((MIB, "piping-server"))
    piping64 = cost.get((64 * 1024, "piping-server"))
    ratio_target("relay CPU per GiB at 1 MiB chunks <= 0.5 s", mib.cpu_s_per_gib if mib else None, 0.5, " s", True)
    ratio_target("relay CPU at 1 MiB chunks <= 1.6x socat's", mib.cpu_s_per_gib / socat.cpu_s_per_gib
                 if mib and usable(socat) else None, 1.6, "x", True)
    ratio_target("relay CPU per GiB at 64 KiB chunks <= 1.5 s", kib64.cpu_s_per_gib if kib64 else None, 1.5, " s",
                 True)
    ratio_target("one room's throughput at 1 MiB chunks >= 1.5x piping-server's", mib.mib_s / piping.mib_s
                 if mib and usable(piping) else None, 1.5, "x", False)
    ratio_target("one room's throughput at 64 KiB chunks >= 1.5x piping-server's", kib64.mib_s / piping64.mib_s
                 if kib64 and usable(piping64) else None, 1.5, "x", False)
    idle = next((r for r in rows if r.scenario.startswith("7 ") and r.system == "relay" and r.ok), None)
    ratio_target("a waiting room <= 20 KiB", idle.extra.get("kib_per_room") if idle else None, 20, " KiB", True)
    for row in rows:
        if row.system != "relay" or not row.ok or row.scenario[0] not in "134":
            continue
        rooms = row.extra.get("rooms", 1)
        receivers = row.extra.get("receivers", 1)
        allowed = row.rss_idle + room_bound(row.chunk, receivers) * rooms
        targets.append(Target(
            f"memory {row.scenario} {_size(row.chunk)}: peak <= idle + (2 x max(chunk, 256 KiB) + 64 KiB x {receivers} "
            f"receiver(s)) x {rooms} room(s)",
            f"{_mib(row.rss_peak)} MiB (idle {_mib(row.rss_idle)}, limit {_mib(allowed)})",
            row.rss_peak <= allowed, f"{(row.rss_peak - allowed) / MIB:+.1f} MiB vs the limit"))
    return targets


def tracked(rows: list[Measurement]) -> list[Target]:
    """Issue 4's targets that issue 8 does not restate, still reported: CLI end to end, the slow receiver's
    flat RSS, pairing latency, CPU against piping-server's."""
    cost = _cost_rows(rows)
    relay, piping = cost.get((MIB, "relay")), cost.get((MIB, "piping-server"))
    targets: list[Target] = []
    if relay and relay.ok and piping and piping.ok and piping.cpu_s_per_gib > 0:
        value = relay.cpu_s_per_gib / piping.cpu_s_per_gib
        targets.append(Target("relay CPU at 1 MiB chunks <= 0.5x piping-server's", f"{value:.2f}x", value <= 0.5,
                              f"{(value / 0.5 - 1) * 100:+.0f}% of the limit"))
    e2e = next((r for r in rows if r.scenario.startswith("2 ") and r.ok), None)
    targets.append(Target("end to end (CLI to disk) >= 1024 MiB/s", f"{e2e.mib_s:.2f} MiB/s" if e2e else "not measured",
                          None if e2e is None else e2e.mib_s >= 1024, ""))
    slow = next((r for r in rows if r.scenario.startswith("5 ") and r.ok), None)
    growth = slow.extra.get("rss_growth_mib") if slow else None
    targets.append(Target("slow receiver: relay RSS flat (growth first -> last quarter < 1 chunk)",
                          f"{growth} MiB growth" if growth is not None else "not measured",
                          None if growth is None else growth < slow.chunk / MIB if slow else None, ""))
    pairing = next((r for r in rows if r.scenario.startswith("6 ") and r.ok), None)
    p99 = pairing.extra.get("p99_ms") if pairing else None
    targets.append(Target("pairing latency p99 <= 10 ms", f"{p99:.2f} ms" if p99 is not None else "not measured",
                          None if p99 is None else p99 <= 10, ""))
    return targets


def markdown(rows: list[Measurement], machine: dict, quick: bool) -> str:
    out = [f"# relay benchmarks{' (quick run: tiny sizes, not for comparison)' if quick else ''}", ""]
    out.append(f"{machine['date']} · {machine['cpu']} · {machine['cores']} cores · {machine['memory']} RAM · "
               f"Linux {machine['kernel']} · Python {machine['python']} · Node {machine['node']} · "
               f"{machine['socat']} · commit {machine['commit']}")
    out += ["", "Command: `python -m benchmarks" + (" --quick" if quick else "") + "`. Relay CPU and RSS are read "
            "from the OS (psutil) for the server process; throughput is payload bytes delivered over the time from "
            "the first receiver's connect to the last payload byte. \"other processes CPU\" is what the rest of "
            "the machine used meanwhile (this harness included, ~0.1 s/s): when it is large, the run was disturbed. "
            "Relay-cost rows are the best (least relay CPU) of the attempts listed in results.json.", ""]
    cost = _cost_rows(rows)
    if cost:
        size = next(iter(cost.values()))
        out += [f"## 1. Relay cost: one room, {size.bytes // MIB if size.ok else '?'} MiB, by chunk size", "",
                "| chunk | system | MiB/s | relay CPU s/GiB | relay RSS idle -> peak (MiB) | load clients CPU s | "
                "other processes CPU s | throughput vs piping-server | CPU vs socat | CPU vs piping-server |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for (chunk, system), row in sorted(cost.items(), key=lambda kv: (kv[0][0], SYSTEMS.index(kv[0][1]))):
            if not row.ok:
                out.append(f"| {_size(chunk)} | {system} | - | - | - | - | - | | | {row.error} |")
                continue
            piping = cost.get((chunk, "piping-server"))
            socat = cost.get((chunk, "socat"))
            vs_piping = _ratio(row.mib_s, piping.mib_s if piping and piping.ok else 0)
            cpu_socat = _ratio(row.cpu_s_per_gib, socat.cpu_s_per_gib if socat and socat.ok else 0)
            cpu_piping = _ratio(row.cpu_s_per_gib, piping.cpu_s_per_gib if piping and piping.ok else 0)
            out.append(f"| {_size(chunk)} | {system} | {row.mib_s:.0f} | {row.cpu_s_per_gib:.2f} | "
                       f"{_mib(row.rss_idle)} -> {_mib(row.rss_peak)} | {row.client_cpu_s:.2f} | "
                       f"{row.other_cpu_s:.2f} | {vs_piping} | "
                       f"{cpu_socat} | {cpu_piping} |")
        out.append("")
    others = [r for r in rows if not r.scenario.startswith("1 ")]
    if others:
        out += ["## 2-7. Scenarios", "",
                "| scenario | system | MiB/s | relay CPU s/GiB | relay CPU s | relay RSS idle -> peak (MiB) | "
                "clients CPU s | other processes CPU s | result |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in others:
            moved = row.seconds > 0 and row.bytes > 0
            rate = f"{row.mib_s:.0f}" if moved else "-"
            cost = f"{row.cpu_s_per_gib:.2f}" if moved else "-"
            out.append(f"| {row.scenario} | {row.system} | {rate} | {cost} | {row.relay_cpu_s:.2f} | "
                       f"{_mib(row.rss_idle)} -> {_mib(row.rss_peak)} | {row.client_cpu_s:.2f} | "
                       f"{row.other_cpu_s:.2f} | {_notes(row)} |")
        out.append("")
    for title, targets in (("## Targets (issue 8)", check_targets(rows)),
                           ("## Targets (issue 12, scenario 8)", check_cli_targets(rows)),
                           ("## Also tracked (issue 4)", tracked(rows))):
        if not targets:
            continue
        out += [title, "", "| target | measured | met | margin |", "|---|---|---|---|"]
        for target in targets:
            met = {True: "yes", False: "**no**", None: "n/a"}[target.met]
            out.append(f"| {target.name} | {target.measured} | {met} | {target.margin} |")
        out.append("")
    return "\n".join(out)


def check_cli_targets(rows: list[Measurement]) -> list[Target]:
    """Issue 12's targets from scenario 8's rows (the first size 1:1, and the fan-out); empty if it did not run."""
    cli = [r for r in rows if r.scenario.startswith("8 ") and r.ok]
    if not cli:
        return []
    single = [r for r in cli if r.extra["receivers"] == 1]
    size = single[0].extra["size_mib"] if single else None
    relay = next((r for r in single if r.system == "relay CLI" and r.extra["size_mib"] == size), None)
    piping = next((r for r in single if r.system == "piping+curl" and r.extra["size_mib"] == size), None)
    fan = next((r for r in cli if r.system == "relay CLI" and r.extra["receivers"] > 1), None)
    targets: list[Target] = []

    def target(name: str, value: float | None, limit: float, unit: str, at_most: bool) -> None:
        if value is None:
            targets.append(Target(name, "not measured", None, ""))
            return
        met = value <= limit if at_most else value >= limit
        targets.append(Target(name, f"{value:.2f}{unit}", met, f"{(value / limit - 1) * 100:+.0f}% of the limit"))

    target("CLI -> CLI >= 1.2x piping-server + curl", relay.mib_s / piping.mib_s if relay and piping else None,
           1.2, "x", False)
    target("CLI -> CLI >= 600 MiB/s", relay.mib_s if relay else None, 600, " MiB/s", False)
    target("receiver <= 1.0 CPU-s/GiB", relay.extra["receiver_cpu_s_per_gib"][0] if relay else None, 1.0, " s", True)
    target("sender <= 0.8 CPU-s/GiB", relay.extra["sender_cpu_s_per_gib"] if relay else None, 0.8, " s", True)
    if fan and relay:
        single_rate = relay.extra["receiver_mib_s"][0]
        target(f"each of {fan.extra['receivers']} receivers >= 0.8x the single rate",
               min(fan.extra["receiver_mib_s"]) / single_rate if single_rate else None, 0.8, "x", False)
    sizes = sorted({r.extra["size_mib"] for r in single if r.system == "relay CLI"})
    if len(sizes) > 1:
        small, large = (next(r for r in single if r.system == "relay CLI" and r.extra["size_mib"] == s)
                        for s in (sizes[0], sizes[-1]))
        peak_small = max(small.extra["receiver_peak_rss_mib"][0], small.extra["sender_peak_rss_mib"])
        peak_large = max(large.extra["receiver_peak_rss_mib"][0], large.extra["sender_peak_rss_mib"])
        target(f"client peak RSS flat: {sizes[-1]} MiB over {sizes[0]} MiB <= 1.1x", peak_large / peak_small,
               1.1, "x", True)
    return targets


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "n/a"


def _notes(row: Measurement) -> str:
    if not row.ok:
        return f"failed: {row.error}"
    extra = row.extra
    if "cli_vs_piping" in extra:
        receivers = " / ".join(f"{cpu:.2f}" for cpu in extra["receiver_cpu_s_per_gib"])
        rss = " / ".join(f"{mib:.0f}" for mib in extra["receiver_peak_rss_mib"])
        return (f"verified; CPU-s/GiB receiver {receivers}, sender {extra['sender_cpu_s_per_gib']:.2f}; peak RSS "
                f"receiver {rss}, sender {extra['sender_peak_rss_mib']:.0f} MiB; dd write floor "
                f"{extra['dd_write_cpu_s_per_gib']} CPU-s/GiB; load {extra['load_average'][0]}")
    if "p99_ms" in extra:
        return f"p50 {extra['p50_ms']:.2f} ms, p99 {extra['p99_ms']:.2f} ms, max {extra['max_ms']:.1f} ms"
    if "kib_per_room" in extra:
        return f"{extra['kib_per_room']:.1f} KiB per waiting room ({_mib(extra['rss_with_rooms'])} MiB held)"
    if "rss_growth_mib" in extra:
        return f"RSS growth first -> last quarter: {extra['rss_growth_mib']} MiB"
    if "receiver_cpu_s" in extra:
        return f"verified; CPU send {extra['sender_cpu_s']:.2f} s, receive {extra['receiver_cpu_s']:.2f} s"
    if "rooms" in extra:
        return f"{extra['rooms']} rooms"
    return "ok"


def chart(rows: list[Measurement], path: Path) -> str | None:
    """Throughput and relay CPU per GiB by chunk size, relay against the baselines; None if it was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    cost = _cost_rows(rows)
    chunks = sorted({chunk for chunk, _ in cost})
    systems = [s for s in SYSTEMS if any(system == s for _, system in cost)]
    if not chunks:
        return "no relay-cost rows to draw"
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs = [c + (i - (len(systems) - 1) / 2) * width for c in range(len(chunks))]
        rates = [cost[(ch, system)].mib_s if (ch, system) in cost and cost[(ch, system)].ok else 0 for ch in chunks]
        cpus = [cost[(ch, system)].cpu_s_per_gib if (ch, system) in cost and cost[(ch, system)].ok else 0
                for ch in chunks]
        left.bar(xs, rates, width, label=system)
        right.bar(xs, cpus, width, label=system)
    for axis, title in ((left, "throughput, one room (MiB/s, higher is better)"),
                        (right, "relay CPU per GiB (s, lower is better)")):
        axis.set_xticks(range(len(chunks)), [_size(c) for c in chunks])
        axis.set_xlabel("chunk size")
        axis.set_title(title, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    right.axhline(0.5, color="black", linestyle="--", linewidth=1, label="target 0.5 s")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_all(rows: list[Measurement], out_dir: Path, quick: bool) -> str:
    """Write results.md, results.json and chart.png into ``out_dir``; return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    text = markdown(rows, machine, quick)
    problem = chart(rows, out_dir / "chart.png")
    if problem:
        text += f"\nChart not drawn: {problem}\n"
    else:
        text += "\n![throughput and relay CPU per GiB by chunk size](chart.png)\n"
    (out_dir / "results.md").write_text(text)
    raw = {"machine": machine, "quick": quick, "rows": [row.to_dict() for row in rows],
           "targets": [vars(t) for t in check_targets(rows) + check_cli_targets(rows)],
           "tracked": [vars(t) for t in tracked(rows)]}
    (out_dir / "results.json").write_text(json.dumps(raw, indent=2) + "\n")
    return text
