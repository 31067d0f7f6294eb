"""Measure the web client: browser-to-browser and browser-to-CLI throughput, and the tabs' memory meanwhile.

Not a test (no assertions on speed): run `python -m tests.web.measure [MiB] [runs]` and copy the printed lines into
the issue note. Chromium is driven through a bare DevTools client (tests/web/cdp.py), not Playwright: Playwright
turns on DevTools network reporting, which copies every WebSocket frame into a DevTools event and caps the page
at about 30 MiB/s, so it would measure itself rather than the page.

Memory is read from the pages through the DevTools Protocol (Performance.getMetrics, JSHeapUsedSize) and from
the resident sizes of this Chromium's processes (psutil), sampled every half second. Set
RELAY_MEASURE_URL=http://127.0.0.1:PORT to measure against a running `relay serve`; by default one runs in a
thread of this process.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from relay.config import Settings
from tests.conftest import start_relay
from tests.web.cdp import Chromium, Page
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.web.driver import sha256

MiB = 1024 * 1024
TIMEOUT_S = 900
FINAL = ("verified", "failed", "cancelled")


def make_file(folder: Path, size: int) -> Path:
    path = folder / f"file-{size // MiB}MiB.bin"
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(block)
    return path


def state(page: Page, selector: str) -> str:
    return page.evaluate(f"document.querySelector({selector!r}).dataset.state || ''")


def status_text(page: Page, element: str) -> str:
    return page.evaluate(f"document.getElementById({element!r}).textContent")


class Sampler:
    """Peak JS heap per page and peak resident memory of the Chromium processes."""

    def __init__(self, browser: Chromium, pages: list[Page]) -> None:
        self.browser = browser
        self.pages = pages
        self.heap_peak = [0] * len(pages)
        self.rss_peak = 0

    def sample(self) -> None:
        for index, page in enumerate(self.pages):
            self.heap_peak[index] = max(self.heap_peak[index], page.js_heap_used())
        self.rss_peak = max(self.rss_peak, self.browser.rss())

    def wait(self, page: Page, selector: str, gave_up=lambda: False) -> str:
        """Sample until the page shows a final state; `gave_up()` true ends the wait early (the other side died)."""
        deadline = time.monotonic() + TIMEOUT_S
        while (shown := state(page, selector)) not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError("transfer did not finish")
            if gave_up():
                return "failed"
            self.sample()
            time.sleep(0.5)
        self.sample()
        return shown


def start_sending(page: Page, base: str, source: Path | list[Path]) -> str:
    page.goto(base + "/")
    page.set_files("#file-input", source if isinstance(source, list) else [source])
    page.wait_for("!document.getElementById('picked').hidden", 30)
    page.click("#send-start")
    page.wait_for("document.getElementById('send-status').dataset.state === 'waiting'", 30)
    return page.evaluate("document.getElementById('send-code').textContent")


def wait_download(folder: Path, name: str, size: int) -> Path:
    """The finished download (Chromium writes a .crdownload file and renames it when done)."""
    path = folder / name
    deadline = time.monotonic() + 60
    while not (path.exists() and path.stat().st_size == size):
        if time.monotonic() > deadline:
            raise TimeoutError(f"download of {name} did not finish")
        time.sleep(0.1)
    return path


def wait_zip(folder: Path, name: str) -> Path:
    """The finished zip download: complete once its central directory (written last) can be read."""
    path = folder / name
    deadline = time.monotonic() + 60
    while True:
        try:
            with zipfile.ZipFile(path):
                return path
        except (OSError, zipfile.BadZipFile):
            if time.monotonic() > deadline:
                raise TimeoutError(f"download of {name} did not finish") from None
            time.sleep(0.1)


def offered_for_downloads(browser: Chromium, base: str, sources: Path | list[Path]) -> tuple[Page, Page]:
    """A sending page offering ``sources`` and a receiving page that opened the offer, set to save into the
    downloads folder and ready to accept: (sender, receiver)."""
    sender, receiver = browser.new_page("about:blank"), browser.new_page("about:blank")
    code = start_sending(sender, base, sources)
    receiver.goto(f"{base}/#receive={code}")
    receiver.click("#receive-connect")
    receiver.wait_for("!document.getElementById('receive-offer').hidden", 30)
    receiver.evaluate("(() => { const box = document.getElementById('save-downloads'); box.checked = true;"
                      " box.dispatchEvent(new Event('change', { bubbles: true })); })()")
    # Accept only once the page streams to the downloads folder through its service worker (until the worker is
    # ready the page offers the in-memory fallback, or blocks a file too big for it).
    receiver.wait_for("document.getElementById('save-note').textContent.includes('streamed to your downloads')"
                      " && !document.getElementById('receive-accept').disabled", 30)
    return sender, receiver


def browser_to_browser(browser: Chromium, base: str, source: Path, downloads: Path,
                       extra: Path | None = None) -> tuple[float, Sampler, bool]:
    """One file as itself, or with `extra` two files as one zip (the page computes each file's CRC-32)."""
    sender, receiver = offered_for_downloads(browser, base, [source, extra] if extra else source)
    sampler = Sampler(browser, [sender, receiver])
    started = time.monotonic()
    receiver.click("#receive-accept")
    shown = sampler.wait(receiver, "#receive-status")
    elapsed = time.monotonic() - started
    if shown != "verified":
        print(f"  receiver ended {shown}: {status_text(receiver, 'receive-status')}; sender: "
              f"{status_text(sender, 'send-status')}", flush=True)
    if extra is None:
        saved = wait_download(downloads, source.name, source.stat().st_size) if shown == "verified" else None
        ok = saved is not None and sha256(saved) == sha256(source)
        (downloads / source.name).unlink(missing_ok=True)
    else:
        ok = shown == "verified"
        if ok:
            with zipfile.ZipFile(wait_zip(downloads, "relay-files.zip")) as archive:
                ok = archive.testzip() is None and sorted(archive.namelist()) == sorted([source.name, extra.name])
        (downloads / "relay-files.zip").unlink(missing_ok=True)
    sender.close()
    receiver.close()
    return elapsed, sampler, ok


def browser_to_cli(browser: Chromium, base: str, source: Path, out: Path) -> tuple[float, Sampler, bool]:
    page = browser.new_page("about:blank")
    code = start_sending(page, base, source)
    sampler = Sampler(browser, [page])
    started = time.monotonic()
    process = subprocess.Popen([str(Path(sys.executable).with_name("relay")), "receive", code, "--relay", base,
                                "--output", str(out), "--yes", "--quiet"])
    # A receiving command that exits with an error (say, it cannot start) ends the wait at once.
    shown = sampler.wait(page, "#send-status", lambda: process.poll() not in (None, 0))
    process.wait(TIMEOUT_S)
    elapsed = time.monotonic() - started
    if shown != "verified":
        print(f"  sender ended {shown}: {status_text(page, 'send-status')}", flush=True)
    ok = shown == "verified" and sha256(out / source.name) == sha256(source)
    (out / source.name).unlink(missing_ok=True)
    page.close()
    return elapsed, sampler, ok


def main(size_mib: int, runs: int) -> None:
    external = os.environ.get("RELAY_MEASURE_URL")
    relay = None if external else start_relay(Settings())
    base = external or relay.http_url
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = make_file(folder, size_mib * MiB)
        downloads, out = folder / "downloads", folder / "out"
        downloads.mkdir()
        out.mkdir()
        browser = Chromium(CHROMIUM, CHROMIUM_ARGS)
        try:
            browser.allow_downloads(downloads)
            rss_idle = browser.rss()
            rates = []
            for run in range(runs):
                elapsed, sampler, ok = browser_to_browser(browser, base, source, downloads)
                rates.append(size_mib / elapsed)
                print(f"browser -> browser (service-worker stream to downloads), run {run + 1}: {size_mib} MiB in "
                      f"{elapsed:.1f} s = {size_mib / elapsed:.1f} MiB/s, bytes match: {ok}; peak JS heap: sender tab "
                      f"{sampler.heap_peak[0] / MiB:.1f} MiB, receiver tab {sampler.heap_peak[1] / MiB:.1f} MiB; "
                      f"Chromium RSS idle {rss_idle / MiB:.0f} MiB, peak {sampler.rss_peak / MiB:.0f} MiB",
                      flush=True)
            print(f"browser -> browser median: {statistics.median(rates):.1f} MiB/s", flush=True)
            extra = folder / "note.txt"
            extra.write_text("a second file, so the download is one zip\n")
            rates = []
            for run in range(runs):
                elapsed, sampler, ok = browser_to_browser(browser, base, source, downloads, extra)
                rates.append(size_mib / elapsed)
                print(f"browser -> browser (two files as one streamed zip), run {run + 1}: {size_mib} MiB in "
                      f"{elapsed:.1f} s = {size_mib / elapsed:.1f} MiB/s, zip checks: {ok}; peak JS heap: receiver tab "
                      f"{sampler.heap_peak[1] / MiB:.1f} MiB; Chromium RSS peak {sampler.rss_peak / MiB:.0f} MiB",
                      flush=True)
            print(f"browser -> browser zip median: {statistics.median(rates):.1f} MiB/s", flush=True)
            rates = []
            for run in range(runs):
                elapsed, sampler, ok = browser_to_cli(browser, base, source, out)
                rates.append(size_mib / elapsed)
                print(f"browser -> relay receive, run {run + 1}: {size_mib} MiB in {elapsed:.1f} s = "
                      f"{size_mib / elapsed:.1f} MiB/s, bytes match: {ok}; peak JS heap of the sending tab "
                      f"{sampler.heap_peak[0] / MiB:.1f} MiB; Chromium RSS peak {sampler.rss_peak / MiB:.0f} MiB",
                      flush=True)
            print(f"browser -> relay receive median: {statistics.median(rates):.1f} MiB/s", flush=True)
        finally:
            browser.close()
    if relay is not None:
        relay.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 256, int(sys.argv[2]) if len(sys.argv) > 2 else 1)
