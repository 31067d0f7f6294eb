"""Measure the web client: browser-to-browser and browser-to-CLI throughput, and the tabs' memory meanwhile.

Not a test (no assertions on speed): run `python -m tests.web.measure [MiB]` and copy the printed lines into the
issue note. Memory is read from the pages through the Chrome DevTools Protocol (Performance.getMetrics,
JSHeapUsedSize) and from the Chromium processes' resident sizes (psutil), sampled every half second. Set
RELAY_MEASURE_URL=http://127.0.0.1:PORT to measure against a relay in its own process (`relay serve`); by
default one runs in a thread of this process, which shares its interpreter with the Playwright driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from playwright.sync_api import Page, sync_playwright

from relay.config import Settings
from tests.conftest import start_relay
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.web.driver import open_offer, sha256, start_sending

MiB = 1024 * 1024
TIMEOUT_S = 900


def make_file(folder: Path, size: int) -> Path:
    path = folder / f"file-{size // MiB}MiB.bin"
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(block)
    return path


class Sampler:
    """Peak JS heap per page and peak resident memory of all Chromium processes."""

    def __init__(self, context, pages: list[Page], browser_pid: int | None) -> None:
        self.sessions = []
        for page in pages:
            session = context.new_cdp_session(page)
            session.send("Performance.enable")
            self.sessions.append(session)
        self.heap_peak = [0] * len(pages)
        self.rss_peak = 0
        self.browser_pid = browser_pid

    def sample(self) -> None:
        for index, session in enumerate(self.sessions):
            metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
            self.heap_peak[index] = max(self.heap_peak[index], int(metrics.get("JSHeapUsedSize", 0)))
        self.rss_peak = max(self.rss_peak, chromium_rss())

    def wait(self, page: Page, selector: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while page.get_attribute(selector, "data-state") not in ("verified", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError("transfer did not finish")
            self.sample()
            page.wait_for_timeout(500)
        self.sample()


def chromium_rss() -> int:
    total = 0
    for process in psutil.process_iter(["name", "memory_info"]):
        if process.info["name"] and "chromium" in process.info["name"] and process.info["memory_info"]:
            total += process.info["memory_info"].rss
    return total


def main(size_mib: int) -> None:
    # A relay in its own process (as in use) unless RELAY_MEASURE_URL names one already running.
    external = os.environ.get("RELAY_MEASURE_URL")
    relay = None if external else start_relay(Settings())
    base = external or relay.http_url
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        folder = Path(tmp)
        source = make_file(folder, size_mib * MiB)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True)
        context.set_default_timeout(TIMEOUT_S * 1000)
        sender, receiver = context.new_page(), context.new_page()
        rss_idle = chromium_rss()

        code = start_sending(sender, base, [source])
        open_offer(receiver, base, code)
        sampler = Sampler(context, [sender, receiver], None)
        receiver.check("#save-downloads")
        with receiver.expect_download(timeout=TIMEOUT_S * 1000) as info:
            started = time.monotonic()
            receiver.click("#receive-accept")
            sampler.wait(receiver, "#receive-status")
            elapsed = time.monotonic() - started
        ok = sha256(Path(info.value.path())) == sha256(source)
        print(f"browser -> browser (service-worker stream to downloads): {size_mib} MiB in {elapsed:.1f} s = "
              f"{size_mib / elapsed:.1f} MiB/s, bytes match: {ok}")
        print(f"  peak JS heap: sender tab {sampler.heap_peak[0] / MiB:.1f} MiB, receiver tab "
              f"{sampler.heap_peak[1] / MiB:.1f} MiB; Chromium RSS idle {rss_idle / MiB:.0f} MiB, "
              f"peak {sampler.rss_peak / MiB:.0f} MiB (all processes)")
        info.value.delete()

        page = context.new_page()
        code = start_sending(page, base, [source])
        out = folder / "out"
        out.mkdir()
        sampler = Sampler(context, [page], None)
        started = time.monotonic()
        process = subprocess.Popen([str(Path(sys.executable).with_name("relay")), "receive", code, "--relay", base,
                                    "--output", str(out), "--yes", "--quiet"])
        sampler.wait(page, "#send-status")
        process.wait(TIMEOUT_S)
        elapsed = time.monotonic() - started
        ok = sha256(out / source.name) == sha256(source)
        print(f"browser -> relay receive: {size_mib} MiB in {elapsed:.1f} s = {size_mib / elapsed:.1f} MiB/s, "
              f"bytes match: {ok}; peak JS heap of the sending tab {sampler.heap_peak[0] / MiB:.1f} MiB")
        browser.close()
    if relay is not None:
        relay.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256)
