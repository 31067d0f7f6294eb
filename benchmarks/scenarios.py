"""The seven scenarios of issue 4 and the baselines, each on a freshly started server process.

Every function returns ``Measurement`` rows. A server that cannot start, or a client that fails, gives a row
with ``ok=False`` and the reason, and the run goes on.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

from benchmarks.clientproc import ClientFailed, ClientOutcome, ClientProcess, loadclient_args
from benchmarks.measure import ProcessMonitor, Window
from benchmarks.plan import GIB, MIB, Measurement, Plan
from benchmarks.servers import (
    PipingServer,
    RelayServer,
    Server,
    ServerUnavailable,
    SocatServer,
    TcpRelayServer,
    relay_command,
)

READY_TIMEOUT = 120.0
SETTLE_SECONDS = 1.0
WARMUP_SIZE = 256 * 1024


def transfer_timeout(total_bytes: int) -> float:
    """A generous bound for a transfer: 60 s plus 20 MiB/s."""
    return 60.0 + total_bytes / (20 * MIB)


def record_window(row: Measurement, window: Window) -> None:
    row.relay_cpu_s = window.cpu_s
    row.rss_idle = window.rss_start
    row.rss_peak = window.rss_peak
    row.machine_busy_s = window.machine_busy_s
    row.window_s = window.seconds


def fill(row: Measurement, window: Window, outcomes: list[ClientOutcome], receiver_rooms: list[dict]) -> None:
    """Fill a row from the relay's measured window and the receivers' per-room timestamps."""
    record_window(row, window)
    row.client_cpu_s = sum(o.cpu_s for o in outcomes)
    failed = [r for r in receiver_rooms if not r.get("ok")]
    failed += [r for o in outcomes for r in o.rooms if not r.get("ok")]
    row.bytes = sum(r["payload_bytes"] for r in receiver_rooms)
    if receiver_rooms and all(r.get("last_byte_at") for r in receiver_rooms):
        row.seconds = max(r["last_byte_at"] for r in receiver_rooms) - min(r["connect_at"] for r in receiver_rooms)
    row.ok = not failed and bool(receiver_rooms) and all(o.returncode == 0 for o in outcomes)
    if failed:
        row.error = f"{len(failed)} room(s) failed, first: {failed[0].get('error', '')}"[:300]
    elif not row.ok:
        row.error = "a client exited with an error: " + ", ".join(str(o.returncode) for o in outcomes)


def on_server(server_factory: Callable[[], Server], row: Measurement,
              body: Callable[[Server, ProcessMonitor], None]) -> Measurement:
    """Start a server, run ``body`` with a monitor on it, stop it; errors become the row's ``error``."""
    try:
        with server_factory() as server, ProcessMonitor(server.pid) as monitor:
            body(server, monitor)
    except ServerUnavailable as exc:
        row.error = f"{row.system} could not start: {exc}"
    except (ClientFailed, OSError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"[:300]
    return row


def ws_transfer(server: Server, monitor: ProcessMonitor, row: Measurement, *, rooms: int, size: int, chunk: int,
                receivers: int = 1, rate: int | None = None, recv_size: int = MIB) -> None:
    """One sender process for ``rooms`` rooms, ``receivers`` receiver processes; fill ``row``."""
    timeout = 60.0 + size / rate * 2 if rate else transfer_timeout(size * rooms * receivers)
    with monitor.window() as window:
        sender = ClientProcess(loadclient_args(
            "send", server.port, rooms=rooms, size=size, chunk=chunk, receivers=receivers, timeout=timeout))
        clients = [sender]
        try:
            nameplates = ",".join(sender.wait_event("ready", READY_TIMEOUT)["nameplates"])
            for _ in range(receivers):
                clients.append(ClientProcess(loadclient_args(
                    "receive", server.port, nameplates=nameplates, size=size, rate=rate,
                    recv_size=recv_size, timeout=timeout)))
            outcomes = [client.finish(timeout) for client in clients[1:]] + [sender.finish(timeout)]
        finally:
            for client in clients:
                client.kill()
    fill(row, window.result, outcomes, [room for o in outcomes[:-1] for room in o.rooms])
    row.extra["rss_samples"] = len(window.result.samples)
    row.extra["relay_minor_faults"] = window.result.minor_faults


def warmed(body: Callable[[Server, ProcessMonitor], None]) -> Callable[[Server, ProcessMonitor], None]:
    """``body`` preceded by ``warm_up``: the relay's idle RSS is then that of a relay that has served a room."""

    def run(server: Server, monitor: ProcessMonitor) -> None:
        warm_up(server)
        body(server, monitor)

    return run


def warm_up(server: Server) -> None:
    """One small transfer, so lazily imported code and first-use allocations are in the idle figure."""
    sender = ClientProcess(loadclient_args("send", server.port, rooms=1, size=WARMUP_SIZE, chunk=WARMUP_SIZE,
                                           timeout=30))
    try:
        nameplates = ",".join(sender.wait_event("ready", 30)["nameplates"])
        receiver = ClientProcess(loadclient_args("receive", server.port, nameplates=nameplates, size=WARMUP_SIZE,
                                                 timeout=30))
        receiver.finish(30)
        sender.finish(30)
    finally:
        sender.kill()


# --- 1. relay cost by chunk size, and the baselines ----------------------------------------------------------


def relay_cost(plan: Plan, log_dir: Path, chunk: int) -> Measurement:
    row = Measurement("1 relay cost", "relay", chunk)
    return on_server(lambda: RelayServer(log_dir), row, warmed(lambda server, monitor: ws_transfer(
        server, monitor, row, rooms=1, size=plan.cost_size, chunk=chunk)))


def raw_transfer(server: Server, monitor: ProcessMonitor, row: Measurement, kind: str, size: int, chunk: int) -> None:
    """One baseline transfer: a raw sender process, then a raw receiver process; fill ``row``."""
    timeout = transfer_timeout(size)
    common = ["--kind", kind, "--size", str(size), "--chunk", str(chunk), "--timeout", str(timeout)]
    with monitor.window() as window:
        sender = ClientProcess(["send", "--port", str(server.port), *common], module="benchmarks.rawclient")
        clients = [sender]
        try:
            sender.wait_event("ready", READY_TIMEOUT)
            port = server.port
            if isinstance(server, SocatServer):
                server.wait_receiver_port()
                port = server.receiver_port
            receiver = ClientProcess(["receive", "--port", str(port), *common], module="benchmarks.rawclient")
            clients.append(receiver)
            outcomes = [receiver.finish(timeout), sender.finish(timeout)]
        finally:
            for client in clients:
                client.kill()
    fill(row, window.result, outcomes, outcomes[0].rooms)


def baseline_cost(plan: Plan, log_dir: Path, system: str, chunk: int) -> Measurement:
    row = Measurement("1 relay cost", system, chunk)
    factories: dict[str, tuple[Callable[[], Server], str]] = {
        "tcp-relay": (lambda: TcpRelayServer(log_dir, chunk), "tcp-relay"),
        "socat": (lambda: SocatServer(log_dir, chunk), "socat"),
        "piping-server": (lambda: PipingServer(log_dir, plan.install_baselines), "piping"),
    }
    factory, kind = factories[system]
    return on_server(factory, row, lambda server, monitor: raw_transfer(
        server, monitor, row, kind, plan.cost_size, chunk))


BASELINES = ("tcp-relay", "socat", "piping-server")


# --- 2. end to end: relay send -> relay receive ---------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random-looking bytes to ``path``; return their XXH3-128."""
    block = os.urandom(4 * MIB)
    digest = xxhash.xxh3_128()
    with open(path, "wb") as out:
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as source:
        for _ in range(1 << 24):
            block = source.read(4 * MIB)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def end_to_end(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement("2 end to end (CLI, disk)", "relay", plan.chunk)
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    try:
        source = work / "payload.bin"
        expected = make_file(source, plan.e2e_size)
        output = work / "out"
        output.mkdir()
        on_server(lambda: RelayServer(log_dir), row, lambda server, monitor: _cli_transfer(
            server, monitor, row, source, output, expected, plan.e2e_size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def _cli_transfer(server: Server, monitor: ProcessMonitor, row: Measurement, source: Path, output: Path,
                  expected: str, size: int) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    timeout = transfer_timeout(size)
    relay = relay_command()
    with monitor.window() as window:
        sender = ClientProcess([], command=[*relay, "send", str(source), "--relay", url, "--quiet"])
        clients = [sender]
        try:
            # protocol v2: the relay picks the nameplate, so the code is known once the sender prints it
            code = sender.wait_event("line", READY_TIMEOUT)["text"].removeprefix("Code: ").strip()
            started = time.monotonic()
            receiver = ClientProcess([], command=[*relay, "receive", code, "--relay", url, "--output", str(output),
                                                  "--yes", "--quiet"])
            clients.append(receiver)
            codes, cpu = [], []
            for client in (receiver, sender):
                returncode, used = client.wait_exit(timeout)
                codes.append(returncode)
                cpu.append(used)
            finished = time.monotonic()
        finally:
            for client in clients:
                client.kill()
    result = window.result
    record_window(row, result)
    row.client_cpu_s = sum(cpu)
    row.seconds = finished - started
    row.extra.update(receiver_cpu_s=round(cpu[0], 3), sender_cpu_s=round(cpu[1], 3),
                     timing="receiver process start -> both processes exited")
    received = output / source.name
    if codes != [0, 0]:
        tail = receiver.stderr_tail.decode(errors="replace")[-200:]
        row.error = f"exit codes receive={codes[0]} send={codes[1]}: {tail}"
        return
    if not received.exists() or file_digest(received) != expected:
        row.error = "the received file is missing or differs from the source"
        return
    row.bytes = size
    row.ok = True


# --- 3-5. fan-out, many rooms, slow receiver -----------------------------------------------------------------


def fan_out(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement(f"3 fan-out 1->{plan.fanout_receivers}", "relay", plan.chunk)
    row.extra["receivers"] = plan.fanout_receivers
    return on_server(lambda: RelayServer(log_dir), row, warmed(lambda server, monitor: ws_transfer(
        server, monitor, row, rooms=1, size=plan.fanout_size, chunk=plan.chunk, receivers=plan.fanout_receivers)))


def many_rooms(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement(f"4 many rooms ({plan.many_rooms})", "relay", plan.chunk)
    row.extra["rooms"] = plan.many_rooms
    return on_server(lambda: RelayServer(log_dir), row, warmed(lambda server, monitor: ws_transfer(
        server, monitor, row, rooms=plan.many_rooms, size=plan.many_size, chunk=plan.chunk,
        recv_size=256 * 1024)))


def slow_receiver(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement(f"5 slow receiver ({plan.slow_rate // MIB} MiB/s)", "relay", plan.chunk)

    def body(server: Server, monitor: ProcessMonitor) -> None:
        with monitor.window() as outer:
            ws_transfer(server, monitor, row, rooms=1, size=plan.slow_size, chunk=plan.chunk,
                        rate=plan.slow_rate, recv_size=64 * 1024)
        row.extra.update(memory_trend(outer.result.samples))

    return on_server(lambda: RelayServer(log_dir), row, warmed(body))


def memory_trend(samples: list[tuple[float, int]]) -> dict:
    """Peak RSS in the first and the last quarter of a window, and the growth between them (MiB)."""
    if len(samples) < 8:
        return {"rss_growth_mib": None}
    quarter = len(samples) // 4
    first = max(rss for _, rss in samples[:quarter])
    last = max(rss for _, rss in samples[-quarter:])
    return {"rss_first_quarter_mib": round(first / MIB, 1), "rss_last_quarter_mib": round(last / MIB, 1),
            "rss_growth_mib": round((last - first) / MIB, 1)}


# --- 6. pairing latency ---------------------------------------------------------------------------------------


def pairing_latency(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement(f"6 pairing latency ({plan.pairing_rooms} rooms)", "relay", 64 * 1024)

    def body(server: Server, monitor: ProcessMonitor) -> None:
        size = 64 * 1024
        timeout = 60.0 + plan.pairing_rooms * 0.2
        with monitor.window() as window:
            sender = ClientProcess(loadclient_args("send", server.port, rooms=plan.pairing_rooms, size=size,
                                                   chunk=size, timeout=timeout))
            clients = [sender]
            try:
                nameplates = ",".join(sender.wait_event("ready", READY_TIMEOUT)["nameplates"])
                receiver = ClientProcess(loadclient_args("receive", server.port, nameplates=nameplates, size=size,
                                                         concurrency=1, recv_size=size, timeout=timeout))
                clients.append(receiver)
                outcomes = [receiver.finish(timeout), sender.finish(timeout)]
            finally:
                for client in clients:
                    client.kill()
        fill(row, window.result, outcomes, outcomes[0].rooms)
        row.seconds = 0.0  # throughput means nothing here; the latencies below are the result
        in_order = [(r["first_byte_at"] - r["connect_at"]) * 1000 for r in outcomes[0].rooms if r["ok"]]
        row.extra["latencies_ms"] = [round(ms, 3) for ms in in_order]
        latencies = sorted(in_order)
        if latencies:
            row.extra.update(p50_ms=round(statistics.median(latencies), 3),
                             p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
                             max_ms=round(latencies[-1], 3), samples=len(latencies))

    return on_server(lambda: RelayServer(log_dir), row, warmed(body))


# --- 7. idle capacity -----------------------------------------------------------------------------------------


def idle_capacity(plan: Plan, log_dir: Path) -> Measurement:
    row = Measurement(f"7 idle rooms ({plan.idle_rooms})", "relay", 0)

    def body(server: Server, monitor: ProcessMonitor) -> None:
        with monitor.window() as window:
            holder = ClientProcess(loadclient_args("send", server.port, rooms=plan.idle_rooms,
                                                   hold=True, timeout=READY_TIMEOUT + 60), stdin_pipe=True)
            try:
                ready = holder.wait_event("ready", READY_TIMEOUT)
                time.sleep(SETTLE_SECONDS)
                held = max(rss for _, rss in monitor.samples_since(time.monotonic() - SETTLE_SECONDS / 2))
                holder.close_stdin()
                outcome = holder.finish(60)
            finally:
                holder.kill()
        result = window.result
        record_window(row, result)
        row.client_cpu_s = outcome.cpu_s
        failed = [r for r in outcome.rooms if not r["ok"]]
        row.ok = ready.get("rooms") == plan.idle_rooms and not failed
        if not row.ok:
            row.error = f"{ready.get('rooms')} of {plan.idle_rooms} rooms opened"
        row.extra.update(rooms=plan.idle_rooms, rss_with_rooms=held,
                         kib_per_room=round((held - result.rss_start) / 1024 / plan.idle_rooms, 2))

    return on_server(lambda: RelayServer(log_dir), row, warmed(body))


def idle_capacity_tcp(plan: Plan, log_dir: Path) -> Measurement:
    """The same idle measurement for the asyncio TCP relay: what an idle asyncio socket costs at the floor."""
    row = Measurement(f"7 idle rooms ({plan.idle_rooms})", "tcp-relay", 0)

    def body(server: Server, monitor: ProcessMonitor) -> None:
        with monitor.window() as window:
            holder = ClientProcess(["--port", str(server.port), "--rooms", str(plan.idle_rooms)],
                                   module="benchmarks.idleclient", stdin_pipe=True)
            try:
                ready = holder.wait_event("ready", READY_TIMEOUT)
                time.sleep(SETTLE_SECONDS)
                held = max(rss for _, rss in monitor.samples_since(time.monotonic() - SETTLE_SECONDS / 2))
                holder.close_stdin()
                outcome = holder.finish(60)
            finally:
                holder.kill()
        result = window.result
        record_window(row, result)
        row.client_cpu_s = outcome.cpu_s
        row.ok = ready.get("rooms") == plan.idle_rooms
        row.extra.update(rooms=plan.idle_rooms, rss_with_rooms=held,
                         kib_per_room=round((held - result.rss_start) / 1024 / plan.idle_rooms, 2))

    return on_server(lambda: TcpRelayServer(log_dir, plan.chunk), row, body)


def cli_vs_piping(plan: Plan, log_dir: Path) -> list[Measurement]:
    """Scenario 8 (issue 12): ``relay send`` -> ``relay receive`` (encrypted, verified, to disk) against curl ->
    piping-server -> curl in the same run, per size, then the fan-out to ``cli_receivers`` receivers. The numbers
    that matter are per client process (CPU-s per GiB, peak RSS), in ``extra``; relay CPU is not measured here."""
    from benchmarks import cli_vs_piping as cvp  # it imports make_file/file_digest from this module

    report = cvp.run_all([size // MIB for size in plan.cli_sizes], plan.cli_receivers, 1, plan.install_baselines,
                         log_dir / "cli-vs-piping")
    rows = []
    for run in report["runs"]:
        fan = f", {run['receivers']} receivers" if run["receivers"] > 1 else ""
        row = Measurement(f"8 CLI to disk, {_size_text(run['size_mib'] * MIB)}{fan}",
                          "relay CLI" if run["tool"] == "relay CLI" else "piping+curl", plan.chunk, run["ok"],
                          run["error"])
        gib = run["size_mib"] * MIB / GIB
        if run["ok"] and run["mib_s"] > 0:
            row.bytes = run["size_mib"] * MIB * run["receivers"]
            row.seconds = run["size_mib"] / run["mib_s"]
            row.client_cpu_s = round((run["sender_cpu_s_per_gib"] + sum(run["receiver_cpu_s_per_gib"])) * gib, 2)
        row.extra = {"cli_vs_piping": True, **{key: run[key] for key in (
            "size_mib", "receivers", "receiver_mib_s", "sender_cpu_s_per_gib", "receiver_cpu_s_per_gib",
            "sender_user_s_per_gib", "receiver_user_s_per_gib", "sender_peak_rss_mib", "receiver_peak_rss_mib",
            "load_average")}}
        rows.append(row)
    floors = {floor["size_mib"]: floor["dd_write"].get("cpu_s_per_gib") for floor in report["floors"]}
    for row in rows:
        row.extra["dd_write_cpu_s_per_gib"] = floors.get(row.extra["size_mib"])
    return rows


def _size_text(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


def best_of(attempts: int, measure: Callable[[], Measurement]) -> Measurement:
    """Run ``measure`` ``attempts`` times; keep the attempt with the least relay CPU per GiB.

    The machine is shared and noisy; noise only ever adds CPU time, so the least is the best estimate. Every
    attempt's figures stay in ``extra["attempts"]``.
    """
    rows = [measure() for _ in range(max(1, attempts))]
    good = [row for row in rows if row.ok] or rows
    best = min(good, key=lambda row: row.cpu_s_per_gib if row.ok else float("inf"))
    best.extra["attempts"] = [{"mib_s": round(r.mib_s, 1), "cpu_s_per_gib": round(r.cpu_s_per_gib, 3),
                               "other_cpu_s": round(r.other_cpu_s, 2), "ok": r.ok} for r in rows]
    return best


def all_scenarios(plan: Plan, log_dir: Path, only: set[str] | None = None,
                  progress: Callable[[Measurement], None] = lambda row: None) -> list[Measurement]:
    """Run every scenario (or those whose number is in ``only``), reporting each row as it is measured."""
    steps: list[tuple[str, Callable[[], Measurement | list[Measurement]]]] = []
    for chunk in plan.cost_chunks:
        steps.append(("1", lambda chunk=chunk: best_of(plan.cost_repeat, lambda: relay_cost(plan, log_dir, chunk))))
        for system in BASELINES:
            steps.append(("1", lambda chunk=chunk, system=system: best_of(
                plan.cost_repeat, lambda: baseline_cost(plan, log_dir, system, chunk))))
    steps += [
        ("2", lambda: end_to_end(plan, log_dir)),
        ("3", lambda: fan_out(plan, log_dir)),
        ("4", lambda: many_rooms(plan, log_dir)),
        ("5", lambda: slow_receiver(plan, log_dir)),
        ("6", lambda: pairing_latency(plan, log_dir)),
        ("7", lambda: idle_capacity(plan, log_dir)),
        ("7", lambda: idle_capacity_tcp(plan, log_dir)),
        ("8", lambda: cli_vs_piping(plan, log_dir)),
    ]
    rows = []
    for number, step in steps:
        if only and number not in only:
            continue
        result = step()
        for row in result if isinstance(result, list) else [result]:
            progress(row)
            rows.append(row)
    return rows


__all__ = ["all_scenarios", "GIB"]
