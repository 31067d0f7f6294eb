"""A sending page resumes (issue 11), in a real Chromium against the real relay: a receiver's connection drops and
comes back (the page answers its resync, takes every receiver's position and opens the next epoch), and the
page's own connection drops (it takes its seat back with one token per receiver; each receiver resyncs with it).
A loopback proxy drops the connection once, without a close frame. A receiver that does not come back within the
relay's resume window is dropped and the rest finish: a sending page says so, and a receiving page that was
dropped says so.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
from playwright.sync_api import BrowserContext, Page

from tests.test_resume_cli import HeldCutter
from tests.test_resume_dropped_cli import Unreachable
from tests.web.driver import record_status, sha256, start_sending, wait_state
from tests.web.proxy import prefix_proxy
from tests.web.test_folder_receive import (
    CLI, PROCESS_TIMEOUT, READ_INBOX_FILE, accept_into_folder, accept_into_inbox, connect_with_inbox, inbox,
)


def send_to_two(page: Page, base_url: str, source: Path) -> str:
    """The sending page offers ``source`` to two receivers; returns the code once it waits for them."""
    page.goto(base_url + "/")
    page.set_input_files("#file-input", [str(source)])
    page.fill("#receivers", "2")
    page.click("#send-start")
    page.wait_for_selector('#send-status[data-state="waiting"]')
    return page.text_content("#send-code") or ""


def two_terminal_receivers(code: str, direct_url: str, other_url: str, tmp_path: Path
                           ) -> tuple[list[subprocess.Popen[str]], list[Path]]:
    """`relay receive` straight to the relay and another through ``other_url``, each into a folder of its own."""
    outs = [tmp_path / "out1", tmp_path / "out2"]
    receivers = []
    for url, out in zip((direct_url, other_url), outs, strict=True):
        out.mkdir()
        receivers.append(subprocess.Popen([*CLI, "receive", "--relay", url, "--output", str(out), "--yes", "--quiet"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "RELAY_CODE": code}))
    return receivers, outs


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the in-process relay's rooms) every 10 ms for at most PROCESS_TIMEOUT seconds."""
    for _ in range(PROCESS_TIMEOUT * 100):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(what)


def dropped(relay: Any, nameplate: str) -> bool:
    """The relay dropped a receiver of room ``nameplate`` (the room may have ended since: its dropped seats)."""
    rooms = relay.relay.rooms
    room = rooms.by_code.get(nameplate)
    return (room is not None and any(r.dropped for r in room.receivers)) or nameplate in rooms.dropped


def kill_if_running(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(PROCESS_TIMEOUT)


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
        accept_into_inbox(receiver, code, relay_server.http_url)
        wait_state(receiver, "#receive-status", "verified")
        text = wait_state(sender, "#send-status", "verified")
        assert proxy.cuts == 1
    lines = sender.evaluate("window.statusLines")
    assert "reconnecting: Connection lost, reconnecting (attempt 1)" in lines, lines
    assert text.startswith("Done"), text
    assert inbox(receiver) == {path.name: path.stat().st_size for path in paths}
    for path in paths:
        assert receiver.evaluate(READ_INBOX_FILE, path.name) == sha256(path), path.name


async def _serve_cutter(cutter: HeldCutter | Unreachable, go_on: asyncio.Event, ready: queue.Queue,
                        signal: threading.Event, stop: threading.Event) -> None:
    """``cutter`` (tests/test_resume_cli.py's HeldCutter: holds its first connection after some binary frames, then
    cuts it once ``go_on`` is set; tests/test_resume_dropped_cli.py's Unreachable: cuts it and refuses every new
    one until ``go_on``) on its own loop: puts its ws:// URL on ``ready``, sets ``go_on`` once the test sets
    ``signal``, serves until ``stop`` (both bounded)."""
    async with websockets.serve(cutter.handle, "127.0.0.1", 0, compression=None, max_size=2**23) as server:
        ready.put(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await asyncio.to_thread(signal.wait, 2 * PROCESS_TIMEOUT)
        go_on.set()
        await asyncio.to_thread(stop.wait, 2 * PROCESS_TIMEOUT)


def test_a_sending_page_does_not_wait_for_a_receiver_that_verified_before_another_dropped(
        context: BrowserContext, relay_server, in_thread, tmp_path):
    """Receiver 1 (the terminal) verified and waits for `complete` when receiver 2's connection drops; it hears
    `reconnecting` and leaves with its files. The page must open receiver 2's catch-up epoch without waiting for a
    position from receiver 1. Before the fix it waited out the resume window."""
    source = tmp_path / "one.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    page = context.new_page()
    code = send_to_two(page, relay_server.http_url, source)
    nameplate = code.split("-", 1)[0]
    ready: queue.Queue = queue.Queue()
    release, done = threading.Event(), threading.Event()
    held = HeldCutter(relay_server.ws_url, 2)
    cutter = in_thread(_serve_cutter(held, held.release, ready, release, done))
    try:
        receivers, outs = two_terminal_receivers(code, relay_server.ws_url, ready.get(timeout=PROCESS_TIMEOUT),
                                                 tmp_path)
        try:
            rooms = relay_server.relay.rooms.by_code
            wait_for(lambda: nameplate in rooms and any(r.verified for r in rooms[nameplate].receivers),
                     "no receiver verified while the other was held")
            release.set()
            for process in receivers:
                assert process.wait(PROCESS_TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
        finally:
            kill_if_running(*receivers)
        text = wait_state(page, "#send-status", "verified")
    finally:
        release.set()
        done.set()
        cutter.result(timeout=PROCESS_TIMEOUT)
    assert text.startswith("Done"), text
    for out in outs:
        assert sha256(out / source.name) == sha256(source)


def test_a_sending_page_goes_on_without_a_receiver_the_relay_dropped_and_says_so(
        context: BrowserContext, relay_factory, in_thread, tmp_path):
    """Two terminal receivers; the second is cut mid-transfer and kept out until the relay (a 2 s resume window)
    dropped its seat. The page stops waiting for it, streams the catch-up to the first, and ends saying in plain
    words that 1 of 2 receivers got the files and the other was dropped. Before the fix the page failed on the
    relay's 'dropped' (and before the relay's change the whole room ended)."""
    relay = relay_factory(resume_window=2)
    source = tmp_path / "one.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    page = context.new_page()
    code = send_to_two(page, relay.http_url, source)
    record_status(page, "#send-status")
    nameplate = code.split("-", 1)[0]
    ready: queue.Queue = queue.Queue()
    reopen, done = threading.Event(), threading.Event()
    unreachable = Unreachable(relay.ws_url, 2)
    cutter = in_thread(_serve_cutter(unreachable, unreachable.reopen, ready, reopen, done))
    try:
        (first, second), outs = two_terminal_receivers(code, relay.ws_url, ready.get(timeout=PROCESS_TIMEOUT),
                                                       tmp_path)
        try:
            wait_for(lambda: dropped(relay, nameplate), "the relay never dropped the cut receiver")
            reopen.set()
            assert first.wait(PROCESS_TIMEOUT) == 0, first.stderr.read() if first.stderr else ""
            assert second.wait(PROCESS_TIMEOUT) == 7, second.stderr.read() if second.stderr else ""
        finally:
            kill_if_running(first, second)
        text = wait_state(page, "#send-status", "verified")
    finally:
        reopen.set()
        done.set()
        cutter.result(timeout=PROCESS_TIMEOUT)
    assert text.startswith("Done") and "reached 1 of 2 receivers" in text, text
    assert "did not come back within the relay's resume window, so it was dropped and did not get the files" in text
    lines = page.evaluate("window.statusLines")
    assert any("did not come back within the resume window and was dropped; the others go on." in line
               for line in lines), lines
    assert sha256(outs[0] / source.name) == sha256(source)
    assert not (outs[1] / source.name).exists()


def test_a_receiving_page_the_relay_dropped_says_so_and_the_others_finish(context: BrowserContext, relay_factory,
                                                                          tmp_path):
    """`relay send` to a terminal receiver and a page saving into a folder; the page's connection is cut and it
    cannot get back until the relay (a 2 s resume window) dropped its seat. The terminal receiver gets the file,
    the sender exits 7, and the page, refused with `dropped` when it gets through, says so in plain words."""
    relay = relay_factory(resume_window=2)
    source = tmp_path / "one.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    out = tmp_path / "out"
    out.mkdir()
    sender = subprocess.Popen([*CLI, "send", "--receivers", "2", "--chunk-size", str(64 * 1024), str(source),
                               "--relay", relay.http_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = sender.stdout.readline() if sender.stdout else ""
        assert line.startswith("Code: "), line
        code = line.split()[1]
        nameplate = code.split("-", 1)[0]
        with prefix_proxy(relay.port, cut_after=256 * 1024, shut_after_cut=True) as proxy:
            page = context.new_page()
            connect_with_inbox(page, code, proxy.url)
            record_status(page, "#receive-status")
            terminal = subprocess.Popen([*CLI, "receive", "--relay", relay.ws_url, "--output", str(out), "--yes",
                                         "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "RELAY_CODE": code})
            try:
                accept_into_folder(page)
                wait_for(lambda: dropped(relay, nameplate), "the relay never dropped the page")
                proxy.reopen()
                text = wait_state(page, "#receive-status", "failed")
                assert terminal.wait(PROCESS_TIMEOUT) == 0, terminal.stderr.read() if terminal.stderr else ""
            finally:
                kill_if_running(terminal)
            assert proxy.cuts == 1 and proxy.refused >= 1
        assert sender.wait(PROCESS_TIMEOUT) == 7, sender.stderr.read() if sender.stderr else ""
    finally:
        kill_if_running(sender)
    assert text.startswith("The connection to the relay was lost for longer than the relay waits for a party to "
                           "come back, so the sender went on without this page."), text
    assert sha256(out / source.name) == sha256(source)
    assert source.name not in inbox(page)  # nothing under a final name in the page's folder
