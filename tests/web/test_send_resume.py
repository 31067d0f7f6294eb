"""A sending page resumes (issue 11), in a real Chromium against the real relay: a receiver's connection drops and
comes back (the page answers its resync, takes every receiver's position and opens the next epoch), and the
page's own connection drops (it takes its seat back with one token per receiver; each receiver resyncs with it).
A loopback proxy drops the connection once, without a close frame.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from playwright.sync_api import BrowserContext

from tests.web.driver import record_status, sha256, start_sending, wait_state
from tests.web.proxy import prefix_proxy
from tests.web.test_folder_receive import CLI, PICK_INBOX, PROCESS_TIMEOUT, READ_INBOX_FILE, inbox


def test_a_sending_page_carries_on_when_its_receiver_drops_and_comes_back(context: BrowserContext, relay_server,
                                                                         files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    page = context.new_page()
    code = start_sending(page, relay_server.http_url, [files["big"], files["note"], files["empty"]])
    record_status(page, "#send-status")
    with prefix_proxy(relay_server.port, cut_after=2 * 1024 * 1024) as proxy:
        command = [*CLI, "receive", "--relay", proxy.url, "--output", str(out), "--yes", "--quiet"]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                                  env={**os.environ, "RELAY_CODE": code})
        assert finished.returncode == 0, finished.stderr
        assert proxy.cuts == 1
    text = wait_state(page, "#send-status", "verified")
    lines = page.evaluate("window.statusLines")
    assert "reconnecting: Receiver 1's connection was lost; waiting for it to come back." in lines, lines
    assert "transferring: Connection restored. Sending..." in lines, lines
    assert text.startswith("Done"), text
    for key in ("big", "note", "empty"):
        assert sha256(out / files[key].name) == sha256(files[key])


def test_a_sending_page_takes_its_seat_back_after_its_own_connection_drops(context: BrowserContext, relay_server,
                                                                          files):
    paths: list[Path] = [files["big"], files["note"]]
    with prefix_proxy(relay_server.port, cut_after=2 * 1024 * 1024, cut_upstream=True) as proxy:
        sender = context.new_page()
        code = start_sending(sender, proxy.url.rstrip("/"), paths)
        record_status(sender, "#send-status")
        receiver = context.new_page()
        receiver.goto(relay_server.http_url + "/#receive")
        receiver.evaluate(PICK_INBOX, {"saveAs": None})
        receiver.fill("#receive-code", code)
        receiver.click("#receive-connect")
        receiver.wait_for_selector("#receive-offer:not([hidden])")
        receiver.check("#save-folder")
        receiver.click("#receive-accept")
        wait_state(receiver, "#receive-status", "verified")
        text = wait_state(sender, "#send-status", "verified")
        assert proxy.cuts == 1
    lines = sender.evaluate("window.statusLines")
    assert "reconnecting: Connection lost, reconnecting (attempt 1)" in lines, lines
    assert text.startswith("Done"), text
    assert inbox(receiver) == {path.name: path.stat().st_size for path in paths}
    for path in paths:
        assert receiver.evaluate(READ_INBOX_FILE, path.name) == sha256(path), path.name
