"""What a person does on the page, as functions: pick files and send, open a code and accept, read states."""

from __future__ import annotations

import hashlib
import secrets
import zipfile
from pathlib import Path

from playwright.sync_api import Download, Page

FINAL = ("verified", "failed", "cancelled")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def start_sending(page: Page, base_url: str, paths: list[Path]) -> str:
    """Open the send view, pick `paths`, press Send; return the code the page shows."""
    page.goto(base_url + "/")
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.click("#send-start")
    page.wait_for_selector("#send-share:not([hidden])")
    page.wait_for_selector('#send-status[data-state="waiting"]')
    return page.text_content("#send-code") or ""


def open_offer(page: Page, base_url: str, code: str) -> None:
    """Open the receive link, press Connect, and wait for the offer."""
    page.goto(f"{base_url}/#receive={code}")
    page.click("#receive-connect")
    page.wait_for_selector("#receive-offer:not([hidden])")


def accept_downloads(page: Page, count: int) -> list[Download]:
    """Accept into the downloads folder and return the `count` downloads once the page says verified."""
    downloads: list[Download] = []
    page.on("download", lambda download: downloads.append(download))
    page.check("#save-downloads")
    page.click("#receive-accept")
    wait_state(page, "#receive-status", "verified")
    for _ in range(200):
        if len(downloads) >= count:
            break
        page.wait_for_timeout(50)
    assert len(downloads) == count, f"expected {count} downloads, got {len(downloads)}"
    return downloads


def wait_state(page: Page, selector: str, state: str) -> str:
    """Wait until the status line reaches a final state; it must be `state`. Returns the shown text."""
    page.wait_for_selector(f"{selector}:is({', '.join(f'[data-state={s!r}]' for s in FINAL)})")
    shown = page.get_attribute(selector, "data-state")
    text = page.text_content(selector) or ""
    assert shown == state, f"expected {state!r}, page shows {shown!r}: {text}"
    return text


def saved_hashes(downloads: list[Download]) -> dict[str, str]:
    """suggested file name -> sha256 of the saved bytes."""
    return {download.suggested_filename: sha256(Path(download.path())) for download in downloads}


def zip_hashes(download: Download) -> dict[str, str]:
    """name -> sha256 of each file in a downloaded zip (folders as "name/": ""), after checking every CRC-32."""
    with zipfile.ZipFile(download.path()) as archive:
        assert archive.testzip() is None
        return {info.filename: "" if info.is_dir() else hashlib.sha256(archive.read(info)).hexdigest()
                for info in archive.infolist()}


def fresh_code() -> str:
    """A room code no other test uses."""
    return f"test-{secrets.token_hex(6)}"


# Every text a status line shows, in order, kept in `window.statusLines` (a "reconnecting" line lasts a moment
# only, so it is recorded as it happens rather than looked for afterwards).
_RECORD_STATUS = """(selector) => {
    const status = document.querySelector(selector);
    window.statusLines = [];
    new MutationObserver(() => {
        const line = status.dataset.state + ": " + status.textContent;
        if (window.statusLines.at(-1) !== line) window.statusLines.push(line);
    }).observe(status, { childList: true, characterData: true, subtree: true, attributes: true });
}"""


def record_status(page: Page, selector: str) -> None:
    """From now on, every `state: text` the status line at `selector` shows goes into `window.statusLines`."""
    page.evaluate(_RECORD_STATUS, selector)
