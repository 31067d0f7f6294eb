"""A page across a relay restart (issue 11): `relay serve` in a process of its own is killed (SIGKILL: no close
frames, no state kept) mid-transfer and started again on the same port; the receiving page (saving into a file it
picked) and `relay send` reconnect, the restarted relay recreates the room from the first `resume` that carries
its shape (docs/protocol.md section 10.2), and the file arrives byte for byte.

The moment of the kill is a condition, not a time: the page reaches the relay through a loopback proxy that
counts the bytes it carried to the page.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from playwright.sync_api import BrowserContext

from tests.conftest import free_port
from tests.relayproc import RelayProcess
from tests.web.driver import record_status, sha256, wait_state
from tests.web.proxy import prefix_proxy
from tests.web.test_folder_receive import CLI, READ_INBOX_FILE, accept_into_folder, connect_with_inbox, inbox

WAIT = 60
MiB = 1024 * 1024


def test_a_receiving_page_and_relay_send_carry_on_across_a_relay_restart(context: BrowserContext, tmp_path: Path):
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(96 * MiB))
    relay = RelayProcess(free_port(), flags=("--log-level", "warning")).start()
    sender = subprocess.Popen([*CLI, "send", str(source), "--relay", relay.http_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = sender.stdout.readline() if sender.stdout else ""
        assert line.startswith("Code: "), line
        with prefix_proxy(relay.port) as proxy:
            page = context.new_page()
            connect_with_inbox(page, line.split()[1], proxy.url, save_as="large.bin")
            record_status(page, "#receive-status")
            accept_into_folder(page)
            for _ in range(WAIT * 100):  # the page has 8 MiB of the file
                if proxy.downstream >= 8 * MiB:
                    break
                time.sleep(0.01)
            relay.kill()
            relay.start()
            text = wait_state(page, "#receive-status", "verified")
            assert sender.wait(WAIT) == 0, sender.stderr.read() if sender.stderr else ""
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(WAIT)
        relay.kill()
    lines = page.evaluate("window.statusLines")
    assert any(line.startswith("reconnecting: Connection lost, reconnecting (attempt") for line in lines), lines
    assert text.startswith("Done: "), text
    assert inbox(page) == {"large.bin": source.stat().st_size}
    assert page.evaluate(READ_INBOX_FILE, "large.bin") == sha256(source)
