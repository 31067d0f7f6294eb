"""Where a page-to-page transfer's CPU goes: tests/web/page_once.py's transfer, with the CPU time of every thread
of Chromium and of this process (the relay runs in a thread of it) read before the receiver accepts and after it
verified. Prints one line per busy thread (process, thread name, CPU-ms per MiB), heaviest first. Run by path
like page_once.py, against whichever tree is on PYTHONPATH:

    PYTHONPATH=$PWD python3 tests/web/page_profile.py 256 [--js]

With --js it also prints, for each page's main thread, the JavaScript functions with the most self time (the
DevTools profiler, sampling every 0.2 ms: it slows the pages, so read it for proportions, not for speed).

Chromium names its threads: CrRendererMain is a tab's page thread, DedicatedWorker a worker's (the AES worker,
the tick worker), ServiceWorker the download stream's, NetworkService the browser's sockets.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

from tests.web import measure as m
from tests.web.cdp import Chromium
from tests.web.driver import sha256
from tests.web.page_once import ready_to_transfer


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def _process_label(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "python (relay + driver)"
    try:
        line = process.cmdline()
    except psutil.Error:
        return "?"
    kind = next((arg.split("=", 1)[1] for arg in line if arg.startswith("--type=")), "browser")
    sub = next((arg.split("=", 1)[1] for arg in line if arg.startswith("--utility-sub-type=")), "")
    kind += ":" + sub.split(".")[-1] if sub else ""
    return f"{kind}[{process.pid}]"


def snapshot(browser: Chromium) -> dict[tuple[str, int, str], float]:
    """CPU seconds (user + system) of each thread, keyed by (process label, thread id, thread name)."""
    root = psutil.Process(browser.process.pid)
    processes = [psutil.Process(), root, *root.children(recursive=True)]
    times: dict[tuple[str, int, str], float] = {}
    for process in processes:
        try:
            label = _process_label(process)
            for thread in process.threads():
                times[(label, thread.id, _thread_name(process.pid, thread.id))] = thread.user_time + thread.system_time
        except psutil.Error:
            continue
    return times


def js_self_times(profile: dict, top: int = 12) -> list[tuple[str, float]]:
    """The functions with the most self time in a Profiler.stop profile: (name url:line, ms), heaviest first."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    interval: dict[int, float] = defaultdict(float)
    deltas = profile.get("timeDeltas", [])
    for index, sample in enumerate(profile.get("samples", [])):
        interval[sample] += deltas[index + 1] / 1000 if index + 1 < len(deltas) else 0.0
    by_name: dict[str, float] = defaultdict(float)
    for node_id, ms in interval.items():
        frame = nodes[node_id]["callFrame"]
        name = f"{frame['functionName'] or '(anonymous)'} {frame['url'].rsplit('/', 1)[-1]}:{frame['lineNumber']}"
        by_name[name] += ms
    return sorted(by_name.items(), key=lambda item: -item[1])[:top]


def transfer(browser: Chromium, base: str, source: Path, downloads: Path,
             js: bool = False) -> tuple[float, bool, dict, dict]:
    """measure.browser_to_browser's single-file transfer, with a snapshot at the accept and one at the end; with
    `js`, each page's main thread is sampled by the DevTools profiler meanwhile (it slows the pages down)."""
    sender, receiver = m.offered_for_downloads(browser, base, source)
    if js:
        for page in (sender, receiver):
            page.call("Profiler.enable")
            page.call("Profiler.setSamplingInterval", {"interval": 200})
            page.call("Profiler.start")
    before = snapshot(browser)
    started = time.monotonic()
    receiver.click("#receive-accept")
    deadline = started + m.TIMEOUT_S
    while (shown := m.state(receiver, "#receive-status")) not in m.FINAL and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    after = snapshot(browser)
    if shown != "verified":
        print(f"  receiver ended {shown}: {m.status_text(receiver, 'receive-status')}; sender: "
              f"{m.status_text(sender, 'send-status')}", flush=True)
    if js:
        for name, page in (("sender", sender), ("receiver", receiver)):
            print(f"{name} page thread, self time:")
            for function, ms in js_self_times(page.call("Profiler.stop")["profile"]):
                print(f"  {ms * 1000 / source.stat().st_size * m.MiB / 1000:6.2f} ms/MiB  {function}")
    saved = m.wait_download(downloads, source.name, source.stat().st_size) if shown == "verified" else None
    ok = saved is not None and sha256(saved) == sha256(source)
    sender.close()
    receiver.close()
    return elapsed, ok, before, after


def main(size: int, js: bool) -> None:
    with ready_to_transfer(size) as (browser, url, source, downloads):
        elapsed, ok, before, after = transfer(browser, url, source, downloads, js)
    print(f"RESULT {size / elapsed:.1f} MiB/s {elapsed:.2f} s ok={ok}")
    per_thread: dict[tuple[str, str], float] = defaultdict(float)
    for key, seconds in after.items():
        label, tid, name = key
        per_thread[(label, f"{name}#{tid}")] += seconds - before.get(key, 0.0)
    total = 0.0
    for (label, name), seconds in sorted(per_thread.items(), key=lambda item: -item[1]):
        total += seconds
        if seconds * 1000 / size >= 0.2:
            print(f"{label:32} {name:32} {seconds * 1000 / size:7.2f} ms/MiB")
    print(f"{'all threads':65} {total * 1000 / size:7.2f} ms/MiB  (wall {elapsed * 1000 / size:.2f} ms/MiB)")
    roles = by_role(per_thread)
    print("by role: " + ", ".join(f"{role} {seconds * 1000 / size:.2f}" for role, seconds in roles.items()))


def by_role(per_thread: dict[tuple[str, str], float]) -> dict[str, float]:
    """CPU seconds per part of the transfer. The sending tab's renderer is the one with the most dedicated
    workers (the tick worker that times its waits for the send buffer, and in protocol 2 its AES worker); the
    receiving tab's is the busiest other renderer (one AES worker in protocol 2). The service worker runs in
    whichever renderer Chromium picks for it (usually the sender's), so it is a role of its own."""
    threads: dict[str, dict[str, float]] = defaultdict(dict)
    for (label, name), seconds in per_thread.items():
        threads[label][name] = seconds
    renderers = [label for label in threads if label.startswith("renderer")]

    def workers(label: str) -> int:
        return sum(name.startswith("DedicatedWorker") for name in threads[label])

    def main_thread(label: str) -> float:
        return sum(seconds for name, seconds in threads[label].items() if name.startswith("chromium"))

    sender = max(renderers, key=lambda label: (workers(label), main_thread(label)), default="")
    receiver = max((label for label in renderers if label != sender), key=main_thread, default="")
    roles: dict[str, float] = defaultdict(float)
    for label, names in threads.items():
        for name, seconds in names.items():
            if name.startswith("ServiceWorker"):
                role = "service worker"
            elif label in (sender, receiver):
                side = "sender" if label == sender else "receiver"
                if name.startswith("chromium") or name.startswith("python"):
                    role = f"{side} page"
                elif name.startswith("DedicatedWorker"):
                    role = f"{side} workers"
                else:
                    role = f"{side} renderer, other threads"
            elif label.startswith("python"):
                role = "relay (python)"
            elif label.startswith("browser") and name.startswith("chromium"):
                role = "browser UI thread"
            elif label.startswith("browser") or label.startswith("utility"):
                role = "browser, other threads (files, network)"
            else:
                role = "other processes"
            roles[role] += seconds
    return dict(sorted(roles.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256, "--js" in sys.argv)
