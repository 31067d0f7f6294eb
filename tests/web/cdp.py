"""A bare Chrome DevTools Protocol client for measurements: Chromium without Playwright attached.

Playwright enables the DevTools `Network` domain on every page it drives, and Chromium then copies every
WebSocket frame's payload (base64) into a DevTools event: with 1 MiB chunks that alone caps a page's WebSocket at
about 30 MiB/s on a 2-core machine, where the same page without DevTools attached moves 200+ MiB/s. So the
throughput measurement (tests/web/measure.py) drives Chromium through this client, which only uses the `Target`,
`DOM`, `Runtime`, `Performance` and `Browser` domains (none of them sees WebSocket frames). The tests keep using
Playwright: they assert on behaviour, never on speed.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from websockets.sync.client import connect

STARTUP_TIMEOUT_S = 30
CALL_TIMEOUT_S = 60


class Chromium:
    """A headless Chromium process with its browser-level DevTools socket."""

    def __init__(self, executable: str, args: list[str]) -> None:
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [executable, "--headless", *args, f"--user-data-dir={self.profile.name}", "--remote-debugging-port=0",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = None
        assert self.process.stderr is not None
        while url is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools socket")
            line = self.process.stderr.readline()
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            url = match.group(1) if match else None
        self.process.stderr.close()  # nothing reads it from now on; a full pipe must not block Chromium
        self.socket = connect(url, max_size=None, open_timeout=STARTUP_TIMEOUT_S)
        self.next_id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events arriving meanwhile are dropped)."""
        self.next_id += 1
        message: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method}")
            answer = json.loads(self.socket.recv(timeout=remaining))
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def new_page(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        page.call("Performance.enable")
        if url != "about:blank":
            page.goto(url)
        return page

    def allow_downloads(self, folder: Path) -> None:
        self.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})

    def rss(self) -> int:
        """Resident memory of this Chromium and all its child processes, in bytes."""
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.profile.cleanup()


class Page:
    """One tab, driven through a flat DevTools session."""

    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", 30)

    def wait_for(self, expression: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(f"Boolean({expression})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s} s for {expression}")
            time.sleep(0.05)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"files": [str(path) for path in paths], "nodeId": node})

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def js_heap_used(self) -> int:
        metrics = {m["name"]: m["value"] for m in self.call("Performance.getMetrics")["metrics"]}
        return int(metrics.get("JSHeapUsedSize", 0))
