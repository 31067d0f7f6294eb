"""benchmarks/report.py checks a run against issue 8's targets (no processes: rows made up for the purpose)."""

from __future__ import annotations

from benchmarks.plan import GIB, MIB, Measurement
from benchmarks.report import check_targets, markdown, tracked

KIB64 = 64 * 1024


def cost(system: str, chunk: int, cpu_s_per_gib: float, mib_s: float) -> Measurement:
    return Measurement("1 relay cost", system, chunk, ok=True, bytes=GIB, seconds=1024 / mib_s,
                       relay_cpu_s=cpu_s_per_gib, rss_idle=50 * MIB, rss_peak=50 * MIB)


def by_name(rows: list[Measurement]) -> dict[str, bool | None]:
    return {target.name: target.met for target in check_targets(rows)}


def test_the_cpu_and_throughput_targets_are_issue_8s() -> None:
    rows = [cost("relay", MIB, 0.45, 1200), cost("socat", MIB, 0.25, 1300), cost("piping-server", MIB, 1.5, 700),
            cost("relay", KIB64, 1.6, 900), cost("piping-server", KIB64, 1.2, 700)]
    met = by_name(rows)
    assert met["relay CPU per GiB at 1 MiB chunks <= 0.5 s"] is True
    assert met["relay CPU at 1 MiB chunks <= 1.6x socat's"] is False  # 0.45 / 0.25 = 1.8x
    assert met["relay CPU per GiB at 64 KiB chunks <= 1.5 s"] is False
    assert met["one room's throughput at 1 MiB chunks >= 1.5x piping-server's"] is True
    assert met["one room's throughput at 64 KiB chunks >= 1.5x piping-server's"] is False
    assert met["a waiting room <= 20 KiB"] is None  # scenario 7 not in this run


def test_the_memory_bound_allows_two_chunks_and_64_kib_per_receiver_per_room() -> None:
    fan_out = Measurement("3 fan-out 1->3", "relay", MIB, ok=True, rss_idle=50 * MIB,
                          rss_peak=50 * MIB + 2 * MIB + 3 * KIB64, extra={"receivers": 3})
    many = Measurement("4 many rooms (100)", "relay", MIB, ok=True, rss_idle=50 * MIB,
                       rss_peak=50 * MIB + 100 * (2 * MIB + KIB64) + 1, extra={"rooms": 100})
    targets = {t.name.split(":")[0]: t.met for t in check_targets([fan_out, many])}
    assert targets["memory 3 fan-out 1->3 1 MiB"] is True  # exactly at the bound
    assert targets["memory 4 many rooms (100) 1 MiB"] is False  # one byte over


def test_below_256_kib_chunks_the_memory_bound_counts_the_senders_batch_not_the_chunk() -> None:
    """A sender's connection reads up to 256 KiB at a time while its small chunks are forwarded (docs/protocol.md
    section 8): a room at 64 KiB chunks may hold 2 x 256 KiB + 64 KiB per receiver, not 2 x 64 KiB."""
    allowed = 2 * 256 * 1024 + KIB64
    at = Measurement("1 relay cost", "relay", KIB64, ok=True, rss_idle=50 * MIB, rss_peak=50 * MIB + allowed)
    over = Measurement("1 relay cost", "relay", KIB64, ok=True, rss_idle=50 * MIB, rss_peak=50 * MIB + allowed + 1)
    assert [t.met for t in check_targets([at]) if t.name.startswith("memory")] == [True]
    assert [t.met for t in check_targets([over]) if t.name.startswith("memory")] == [False]


def test_the_report_names_issue_8_and_keeps_issue_4s_other_targets() -> None:
    rows = [cost("relay", MIB, 0.45, 1200), cost("piping-server", MIB, 1.5, 700)]
    text = markdown(rows, {"date": "d", "cpu": "c", "cores": 2, "memory": "m", "kernel": "k", "python": "p",
                           "node": "n", "socat": "s", "commit": "x"}, quick=False)
    assert "## Targets (issue 8)" in text and "## Also tracked (issue 4)" in text
    assert {t.name for t in tracked(rows)} >= {"pairing latency p99 <= 10 ms", "end to end (CLI to disk) >= 1024 MiB/s"}
