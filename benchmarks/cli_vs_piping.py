"""``relay send`` -> ``relay receive`` against piping-server with curl at both ends, in the same run (issue 12).

    python -m benchmarks.cli_vs_piping [--sizes-mib 1024,8192] [--receivers 3] [--attempts 1] [--json OUT]

For each size: one file of random bytes on disk; then, one after the other on fresh servers, (1) the relay CLI
sender and receiver, (2) curl PUT -> piping-server -> curl GET, each receiver writing to disk, and every received
file checked against the source's XXH3-128. Then the fan-out case: one ``relay send --receivers N`` to N
``relay receive`` (and piping-server's ``?n=N`` with N curls), each receiver's rate against the single-receiver
rate of the same tool.

Per client process (``os.wait4``: the kernel's rusage of the whole process): CPU seconds per GiB (user + system)
and peak RSS. Throughput is the file size over the time from the receiver's start (the sender is already waiting)
until every process exited. The client CPU includes the kernel's cost of writing the file into the page cache,
which on this machine varies from 0.2 to 3.7 CPU-s per GiB with the state of the page cache (``dd`` of the same
file measured alongside: ``floor_dd_write``), so compare tools within one run, not across runs.

Every run starts on equally warm memory (:func:`warm_memory`): on a VM whose balloon hands free memory back to
its host, the first write to a page freed seconds ago costs a host fault (docs/design/speed.md section 11), and
without this the order of the runs decided who paid: each tool wrote into the memory the run before it had just
freed, so curl's three receivers always found 3 GiB warm and the relay's found 1 GiB warm and 2 GiB cold.

piping-server is installed by the benchmarks' setup (``benchmarks.servers.ensure_piping_server``, npm into
``benchmarks/.cache``); ``--no-install`` refuses to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.clientproc import child_environment
from benchmarks.scenarios import file_digest, make_file
from benchmarks.servers import PipingServer, RelayServer, ServerUnavailable, relay_command

MIB = 1 << 20
GIB = 1 << 30
READY_TIMEOUT = 60.0
POLL = 0.005


def transfer_timeout(size: int) -> float:
    return 120.0 + size / (20 * MIB)


@dataclass
class Proc:
    """A finished client process: exit code, CPU seconds (user + sys), peak RSS, when it ended."""

    role: str
    returncode: int
    user_s: float
    sys_s: float
    peak_rss_mib: float
    ended: float


@dataclass
class Run:
    """One tool moving one file to ``receivers`` receivers."""

    tool: str
    size_mib: int
    receivers: int
    ok: bool = False
    error: str = ""
    mib_s: float = 0.0
    receiver_mib_s: list[float] = field(default_factory=list)
    sender_cpu_s_per_gib: float = 0.0
    receiver_cpu_s_per_gib: list[float] = field(default_factory=list)
    sender_user_s_per_gib: float = 0.0  # user space alone: the kernel's page-cache cost is in the system time
    receiver_user_s_per_gib: list[float] = field(default_factory=list)
    sender_peak_rss_mib: float = 0.0
    receiver_peak_rss_mib: list[float] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)  # 1, 5 and 15 minutes, when the run ended


class Child:
    """A client process whose stdout lines are read on demand and whose rusage is taken when it is reaped."""

    def __init__(self, role: str, command: list[str]) -> None:
        self.role = role
        self.proc = subprocess.Popen(command, env=child_environment(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def first_line(self, timeout: float) -> str:
        """The first line the process prints (the sender's ``Code: ...``), bounded in time."""
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline, data = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and b"\n" not in data:
            chunk = self.proc.stdout.read(4096)
            if chunk:
                data += chunk
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(POLL)
        return data.split(b"\n", 1)[0].decode(errors="replace")

    def try_reap(self) -> Proc | None:
        """The process's rusage if it has exited (reaping it), else ``None``."""
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if not pid:
            return None
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return Proc(self.role, self.proc.returncode, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024,
                    time.monotonic())

    def stderr_tail(self) -> str:
        try:
            assert self.proc.stderr is not None
            os.set_blocking(self.proc.stderr.fileno(), False)
            return (self.proc.stderr.read() or b"").decode(errors="replace")[-300:]
        except (OSError, ValueError):
            return ""

    def signal_kill(self) -> None:
        """SIGKILL the process group (a later ``try_reap`` collects it)."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Kill and reap, if still running (cleanup on every path)."""
        if self.proc.returncode is None:
            self.signal_kill()
            self.proc.wait(timeout=5)


def reap_all(children: list[Child], deadline: float) -> list[Proc]:
    """Wait for every child at once (each one's end time is when it exited), killing all at ``deadline``."""
    done: dict[int, Proc] = {}
    while len(done) < len(children):
        for index, child in enumerate(children):
            if index not in done and (proc := child.try_reap()) is not None:
                done[index] = proc
        if time.monotonic() > deadline:
            for child in children:
                child.signal_kill()
        time.sleep(POLL)
    return [done[index] for index in range(len(children))]


def _finish(run: Run, size: int, started: float, sender: Proc, receivers: list[Proc], outputs: list[Path],
            expected: str, errors: list[str]) -> Run:
    gib = size / GIB
    run.sender_cpu_s_per_gib = round((sender.user_s + sender.sys_s) / gib, 3)
    run.sender_peak_rss_mib = round(sender.peak_rss_mib, 1)
    run.receiver_cpu_s_per_gib = [round((r.user_s + r.sys_s) / gib, 3) for r in receivers]
    run.sender_user_s_per_gib = round(sender.user_s / gib, 3)
    run.receiver_user_s_per_gib = [round(r.user_s / gib, 3) for r in receivers]
    run.receiver_peak_rss_mib = [round(r.peak_rss_mib, 1) for r in receivers]
    run.receiver_mib_s = [round(size / MIB / max(r.ended - started, 1e-9), 1) for r in receivers]
    run.mib_s = round(size / MIB / max(max(p.ended for p in [sender, *receivers]) - started, 1e-9), 1)
    run.load_average = [round(load, 2) for load in os.getloadavg()]
    codes = [sender.returncode, *(r.returncode for r in receivers)]
    if any(codes):
        run.error = f"exit codes {codes}: {' | '.join(e for e in errors if e)[-300:]}"
    elif any(not out.exists() or file_digest(out) != expected for out in outputs):
        run.error = "a received file is missing or differs from the source"
    else:
        run.ok = True
    return run


def relay_run(source: Path, expected: str, work: Path, log_dir: Path, receivers: int) -> Run:
    """``relay send`` to ``receivers`` ``relay receive`` processes through a fresh relay."""
    size = source.stat().st_size
    run = Run("relay CLI", size // MIB, receivers)
    relay = relay_command()
    children: list[Child] = []
    try:
        with RelayServer(log_dir) as server:
            url = f"ws://127.0.0.1:{server.port}"
            command = [*relay, "send", str(source), "--relay", url, "--quiet"]
            if receivers > 1:
                command += ["--receivers", str(receivers)]
            sender = Child("sender", command)
            children.append(sender)
            line = sender.first_line(READY_TIMEOUT)
            if not line.startswith("Code: "):
                run.error = f"the sender printed no code: {line[:100]!r} {sender.stderr_tail()}"
                return run
            code = line.removeprefix("Code: ").strip()
            outputs = []
            started = time.monotonic()
            for k in range(receivers):
                out_dir = work / f"relay-out-{k}"
                out_dir.mkdir()
                outputs.append(out_dir / source.name)
                children.append(Child(f"receiver {k + 1}", [*relay, "receive", code, "--relay", url, "--output",
                                                            str(out_dir), "--yes", "--quiet"]))
            deadline = time.monotonic() + transfer_timeout(size)
            procs = reap_all(children, deadline)
            return _finish(run, size, started, procs[0], procs[1:], outputs, expected,
                           [child.stderr_tail() for child in children])
    except ServerUnavailable as exc:
        run.error = f"relay unavailable: {exc}"
        return run
    finally:
        for child in children:
            child.kill()


def piping_run(source: Path, expected: str, work: Path, log_dir: Path, receivers: int, install: bool) -> Run:
    """``curl -T`` to piping-server and ``receivers`` ``curl -o`` from it (``?n=N`` for several)."""
    size = source.stat().st_size
    run = Run("piping-server + curl", size // MIB, receivers)
    curl = shutil.which("curl")
    if curl is None:
        run.error = "curl is not installed"
        return run
    children: list[Child] = []
    try:
        with PipingServer(log_dir, install) as server:
            url = f"http://127.0.0.1:{server.port}/bench" + (f"?n={receivers}" if receivers > 1 else "")
            sender = Child("sender", [curl, "-sS", "-T", str(source), url])
            children.append(sender)
            outputs = []
            started = time.monotonic()
            for k in range(receivers):
                out = work / f"piping-out-{k}"
                outputs.append(out)
                children.append(Child(f"receiver {k + 1}", [curl, "-sS", "-o", str(out), url]))
            deadline = time.monotonic() + transfer_timeout(size)
            procs = reap_all(children, deadline)
            return _finish(run, size, started, procs[0], procs[1:], outputs, expected,
                           [child.stderr_tail() for child in children])
    except ServerUnavailable as exc:
        run.error = f"piping-server unavailable: {exc}"
        return run
    finally:
        for child in children:
            child.kill()


def dd_floor(source: Path, work: Path) -> dict[str, float]:
    """What the kernel alone charges for copying the file to a new file (``dd``, the write side's floor)."""
    target = work / "dd-floor"
    before = os.times()
    done = subprocess.run(["dd", f"if={source}", f"of={target}", "bs=1M"], capture_output=True, timeout=600)
    after = os.times()
    target.unlink(missing_ok=True)
    gib = source.stat().st_size / GIB
    return {"ok": done.returncode == 0,
            "cpu_s_per_gib": round((after.children_user - before.children_user
                                    + after.children_system - before.children_system) / gib, 3)}


def warm_memory(work: Path, size: int) -> None:
    """Write and delete ``size`` bytes, so that the next run's writers find that much memory freed just before.

    The kernel then hands the freed page-cache pages to the next writer before the balloon has reported them to
    the host (it reports memory free for a few seconds). Not measured: ``dd`` runs before the run's clock starts.
    """
    target = work / "warm-up"
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={-(-size // MIB)}"],
                   capture_output=True, timeout=600, check=True)
    target.unlink()


def _clean(work: Path) -> None:
    for path in work.iterdir():
        if path.name != "payload.bin":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_all(sizes_mib: list[int], receivers: int, attempts: int, install: bool, log_dir: Path) -> dict:
    """Every size 1:1 for both tools (best of ``attempts`` by throughput), then fan-out at the first size."""
    report: dict = {"runs": [], "floors": [], "summary": {}}
    work = Path(tempfile.mkdtemp(prefix="relay-cli-vs-piping-"))
    try:
        for size_mib in sizes_mib:
            source = work / "payload.bin"
            expected = make_file(source, size_mib * MIB)
            report["floors"].append({"size_mib": size_mib, "dd_write": dd_floor(source, work)})

            def one(tool: str, count: int, source: Path = source, expected: str = expected) -> Run:
                warm_memory(work, count * source.stat().st_size)
                if tool == "relay":
                    return relay_run(source, expected, work, log_dir, count)
                return piping_run(source, expected, work, log_dir, count, install)

            best: dict[str, Run] = {}
            for _ in range(attempts):
                for tool in ("relay", "piping"):
                    run = one(tool, 1)
                    _clean(work)
                    report["runs"].append(asdict(run))
                    print(json.dumps(asdict(run)), flush=True)
                    if run.ok and (run.tool not in best or run.mib_s > best[run.tool].mib_s):
                        best[run.tool] = run
            relay_best, piping_best = best.get("relay CLI"), best.get("piping-server + curl")
            if relay_best and piping_best:
                report["summary"][f"{size_mib} MiB"] = {
                    "relay_mib_s": relay_best.mib_s, "piping_mib_s": piping_best.mib_s,
                    "ratio_relay_over_piping": round(relay_best.mib_s / piping_best.mib_s, 2),
                    "relay_receiver_cpu_s_per_gib": relay_best.receiver_cpu_s_per_gib[0],
                    "relay_sender_cpu_s_per_gib": relay_best.sender_cpu_s_per_gib,
                    "relay_peak_rss_mib": {"sender": relay_best.sender_peak_rss_mib,
                                           "receiver": relay_best.receiver_peak_rss_mib[0]},
                }
            if size_mib == sizes_mib[0] and receivers > 1:
                for tool in ("relay", "piping"):
                    run = one(tool, receivers)
                    _clean(work)
                    report["runs"].append(asdict(run))
                    print(json.dumps(asdict(run)), flush=True)
                    single = best.get(run.tool)
                    if run.ok and single:
                        report["summary"][f"fan-out {receivers} ({run.tool})"] = {
                            "each_over_single": [round(rate / single.receiver_mib_s[0], 2)
                                                 for rate in run.receiver_mib_s]}
            source.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="1024", help="comma-separated file sizes in MiB (default 1024)")
    parser.add_argument("--receivers", type=int, default=3, help="receivers for the fan-out case (1: skip it)")
    parser.add_argument("--attempts", type=int, default=1, help="runs per tool and size; the best is kept")
    parser.add_argument("--no-install", action="store_true", help="do not npm-install piping-server")
    parser.add_argument("--json", type=Path, default=None, help="also write the whole report here")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "relay-cli-vs-piping-logs")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    if not sizes or any(s < 1 for s in sizes) or not 1 <= args.receivers <= 16 or not 1 <= args.attempts <= 5:
        parser.error("sizes >= 1 MiB, 1 to 16 receivers, 1 to 5 attempts")
    report = run_all(sizes, args.receivers, args.attempts, not args.no_install, args.log_dir)
    print(json.dumps({"floors": report["floors"], "summary": report["summary"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if all(run["ok"] for run in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
