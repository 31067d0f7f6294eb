"""Receiving into a chosen folder (File System Access), in a real Chromium against the real relay: all or nothing
(issue 10, as the terminal client: part files, final names only once every file authenticated) and resume after
a lost connection (issue 11: the page takes its seat back and the sender continues from what the page holds).

The folder a person would pick is a folder of the origin private file system (automation cannot click the
browser's dialog); it is a real directory handle with the same API.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from relay import protocol as p
from tests.peers import WAIT, RawPeer, key_as_receiver, raw_sides, seal_json, send_sealed
from tests.web.driver import open_offer, record_status, sha256, wait_state
from tests.web.proxy import prefix_proxy
from tests.web.raw import RawSender

CHUNK = 64 * 1024

# An empty folder "inbox" of the private file system stands in for the folder picked in the dialog; with
# `saveAs`, the save-as dialog (a single file) returns the file handle "inbox/<saveAs>".
PICK_INBOX = """async ({ saveAs }) => {
    const root = await navigator.storage.getDirectory();
    const inbox = await root.getDirectoryHandle("inbox", { create: true });
    window.showDirectoryPicker = async () => inbox;
    if (saveAs) window.showSaveFilePicker = async () => inbox.getFileHandle(saveAs, { create: true });
    else delete window.showSaveFilePicker;
}"""

# Every entry under "inbox", as "path" (files, with their size) and "path/" (folders).
LIST_INBOX = """async () => {
    const inbox = await (await navigator.storage.getDirectory()).getDirectoryHandle("inbox");
    const out = {};
    const walk = async (folder, prefix) => {
        for await (const [name, handle] of folder.entries()) {
            if (handle.kind === "directory") {
                out[prefix + name + "/"] = -1;
                await walk(handle, prefix + name + "/");
            } else {
                out[prefix + name] = (await handle.getFile()).size;
            }
        }
    };
    await walk(inbox, "");
    return out;
}"""

READ_INBOX_FILE = """async (path) => {
    let folder = await (await navigator.storage.getDirectory()).getDirectoryHandle("inbox");
    const parts = path.split("/");
    for (const part of parts.slice(0, -1)) folder = await folder.getDirectoryHandle(part);
    const file = await (await folder.getFileHandle(parts.at(-1))).getFile();
    return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", await file.arrayBuffer())),
                      (b) => b.toString(16).padStart(2, "0")).join("");
}"""


def inbox(page: Page) -> dict[str, int]:
    return page.evaluate(LIST_INBOX)


def connect_with_inbox(page: Page, code: str, base_url: str, save_as: str | None = None) -> None:
    """Open the receive view at `base_url`, pick the "inbox" folder (or, with `save_as`, that file name for a
    single file) and connect with `code`; the offer comes once every receiver is in."""
    page.goto(f"{base_url.rstrip('/')}/#receive")
    page.evaluate(PICK_INBOX, {"saveAs": save_as})
    page.fill("#receive-code", code)
    page.click("#receive-connect")


def accept_into_folder(page: Page) -> None:
    """Wait for the offer and accept it into the picked folder."""
    page.wait_for_selector("#receive-offer:not([hidden])")
    page.check("#save-folder")
    page.click("#receive-accept")


def accept_into_inbox(page: Page, code: str, base_url: str) -> None:
    connect_with_inbox(page, code, base_url)
    accept_into_folder(page)


# --- all or nothing ---------------------------------------------------------------------------------------------


async def _two_files_then(ws_url: str, first: bytes, second: bytes, ending: str, box: list[str],
                          ready: threading.Event) -> tuple[int | None, list[Any]]:
    """Offer "tree/one.bin" and "tree/two.bin", send the first whole, then end as `ending` says: "tampered" (the
    second file's last chunk altered on the way, its XXH3-64 fixed) or "left" (the sender's socket closes)."""
    sender = await RawSender.open(ws_url)
    box.append(sender.code)
    ready.set()
    await sender.key()
    await sender.offer(p.Offer((p.FileEntry("tree/one.bin", len(first)), p.FileEntry("tree/two.bin", len(second))),
                               chunk_size=CHUNK))
    await sender.peer.expect("accept")
    await sender.peer.expect("start")
    sealer = await sender.stream([len(first), len(second)], CHUNK)
    for data in (first, second):
        for at in range(0, max(len(data), 1), CHUNK):
            sealed = sealer.seal_next(data[at:at + CHUNK])
            if ending == "tampered" and data is second and sealer.done:
                sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
            if ending == "left" and data is second:
                # The page has stored and authenticated the whole first file (its ack says so), then we leave.
                for _ in range(100):
                    message = await sender.peer.recv()
                    if isinstance(message, dict) and message.get("type") == "ack":
                        break
                await sender.peer.close()
                return None, []
            await send_sealed(sender.peer, sealed)
    await sender.peer.send({"type": "end", "epoch": 0})
    return await sender.peer.closed()


@pytest.mark.parametrize("ending", ["tampered", "left"])
def test_a_failed_transfer_into_a_chosen_folder_leaves_nothing_under_a_final_name(context: BrowserContext,
                                                                                  relay_server, in_thread, ending):
    first, second = os.urandom(3 * CHUNK + 5), os.urandom(2 * CHUNK + 7)
    box: list[str] = []
    ready = threading.Event()
    result = in_thread(_two_files_then(relay_server.ws_url, first, second, ending, box, ready))
    assert ready.wait(WAIT)
    page = context.new_page()
    accept_into_inbox(page, box[0], relay_server.http_url)
    text = wait_state(page, "#receive-status", "failed")
    result.result(WAIT * 3)
    # The first file authenticated whole, yet it is not kept: no final name, no part file, no folder it made.
    assert inbox(page) == {}
    expected = ("Some data did not authenticate" if ending == "tampered"
                else "The sender left before the transfer finished.")
    assert text.startswith(expected), text
    assert ("Nothing was saved. The file that had arrived was removed again: the files are kept only when every "
            "one of them arrived and authenticated.") in text, text
    assert page.locator('#receive-files li[data-state="verified"]').count() == 0


def test_files_into_a_chosen_folder_get_their_names_only_at_the_end(context: BrowserContext, relay_server,
                                                                    in_thread):
    first, second = os.urandom(3 * CHUNK + 5), os.urandom(CHUNK)
    box: list[str] = []
    ready = threading.Event()
    release = threading.Event()
    seen: list[dict[str, int]] = []

    async def sender_that_pauses() -> None:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("one.bin", len(first)), p.FileEntry("two.bin", len(second))),
                                   chunk_size=CHUNK))
        await sender.peer.expect("accept")
        await sender.peer.expect("start")
        sealer = await sender.stream([len(first), len(second)], CHUNK)
        for at in range(0, len(first), CHUNK):
            await send_sealed(sender.peer, sealer.seal_next(first[at:at + CHUNK]))
        for _ in range(100):  # the page's ack after the first file's last chunk
            message = await sender.peer.recv()
            if isinstance(message, dict) and message.get("type") == "ack":
                break
        await asyncio.get_running_loop().run_in_executor(None, release.wait, WAIT * 2)
        await send_sealed(sender.peer, sealer.seal_next(second))
        await sender.peer.send({"type": "end", "epoch": 0})
        await sender.peer.closed()

    result = in_thread(sender_that_pauses())
    assert ready.wait(WAIT)
    page = context.new_page()
    accept_into_inbox(page, box[0], relay_server.http_url)
    for _ in range(100):  # the first file is closed under its part name (its swap file gone) once the page acked it
        seen = [inbox(page)]
        if list(seen[0].values()) == [len(first)]:
            break
        page.wait_for_timeout(50)
    release.set()
    assert list(seen[0].values()) == [len(first)] and all(
        name.startswith(".relay-") and name.endswith(".part") for name in seen[0]), seen
    text = wait_state(page, "#receive-status", "verified")
    result.result(WAIT * 2)
    assert text.startswith('Done: 2 files (') and 'saved to the folder "inbox"' in text, text
    assert inbox(page) == {"one.bin": len(first), "two.bin": len(second)}


# --- resume -----------------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "clients.cli"]
PROCESS_TIMEOUT = 90


def wait_received(page: Page, at_least: int) -> None:
    """Wait (bounded) until the receive progress shows at least `at_least` bytes."""
    for _ in range(int(WAIT * 20)):
        if page.evaluate("document.querySelector('#receive-total').value") >= at_least:
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"the page never received {at_least} bytes")


def _code_of(process: subprocess.Popen) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(PROCESS_TIMEOUT)
    assert box and box[0].startswith("Code: "), box
    return box[0].split()[1]


@contextmanager
def cli_sender(paths: list[Path], relay_url: str, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    command = [*CLI, "send", *map(str, paths), "--relay", relay_url, *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process, _code_of(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(PROCESS_TIMEOUT)


@pytest.mark.parametrize("how", ["folder", "save-as"])
def test_a_page_receiving_into_a_folder_resumes_after_its_connection_drops(context: BrowserContext, relay_server,
                                                                           files, how):
    paths = [files["big"], files["note"], files["empty"]] if how == "folder" else [files["big"]]
    with prefix_proxy(relay_server.port, cut_after=2 * 1024 * 1024) as proxy, \
            cli_sender(paths, relay_server.http_url) as (process, code):
        page = context.new_page()
        connect_with_inbox(page, code, proxy.url, save_as="big.bin" if how == "save-as" else None)
        record_status(page, "#receive-status")
        accept_into_folder(page)
        text = wait_state(page, "#receive-status", "verified")
        assert process.wait(PROCESS_TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
        assert proxy.cuts == 1
        assert "/relay/aead-worker.js" in proxy.requests  # the chunks were opened off the page's thread
    lines = page.evaluate("window.statusLines")
    assert "reconnecting: Connection lost, reconnecting (attempt 1)" in lines, lines
    assert any(line.startswith("transferring: Connection restored. Receiving into") for line in lines), lines
    assert text.startswith("Done: "), text
    assert inbox(page) == {path.name: path.stat().st_size for path in paths}
    for path in paths:
        assert page.evaluate(READ_INBOX_FILE, path.name) == sha256(path), path.name


def test_a_download_cannot_resume_and_says_so(context: BrowserContext, relay_server, files):
    with prefix_proxy(relay_server.port, cut_after=2 * 1024 * 1024) as proxy, \
            cli_sender([files["big"]], relay_server.http_url) as (process, code):
        page = context.new_page()
        downloads: list = []
        page.on("download", lambda download: downloads.append(download))
        open_offer(page, proxy.url.rstrip("/"), code)
        page.check("#save-downloads")
        page.click("#receive-accept")
        text = wait_state(page, "#receive-status", "failed")
        # The page registered no seat: the relay ends the room at once, and the sender says the receiver left.
        assert process.wait(PROCESS_TIMEOUT) == 1
        assert proxy.cuts == 1
    assert text.startswith("The connection to the relay was lost, and a download to your downloads folder cannot "
                           "continue where it stopped, so this transfer cannot be resumed."), text
    assert "save into a folder: a transfer into a folder resumes by itself" in text, text
    for download in downloads:
        assert download.failure() is not None  # the started download never completes


def test_a_page_carries_on_when_another_receiver_drops_and_comes_back(context: BrowserContext, relay_server, files,
                                                                       tmp_path):
    """One sender, two receivers: the page (direct) and `relay receive` through a proxy that drops its socket once.
    The page hears `reconnecting`, then `resumed`, tells the sender what it holds and takes the next epoch.

    The file is far larger than what can sit between the relay and the cut receiver (the relay's window per
    receiver, two kernel socket buffers and the proxy's: a few MiB), so the page cannot have verified every file
    before the cut, when it rightly ignores `reconnecting` (with 6 MiB and a cut at 2 MiB it had, once, under
    load: the test failed on the missing status line)."""
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(24 * 1024 * 1024 + 12345))
    paths = [large, files["note"]]
    out = tmp_path / "cli-out"
    out.mkdir()
    with prefix_proxy(relay_server.port, cut_after=1024 * 1024) as proxy, \
            cli_sender(paths, relay_server.http_url, "--receivers", "2") as (process, code):
        page = context.new_page()
        connect_with_inbox(page, code, relay_server.http_url)
        record_status(page, "#receive-status")
        command = [*CLI, "receive", "--relay", proxy.url, "--output", str(out), "--yes", "--quiet"]
        receiver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "RELAY_CODE": code})
        try:
            accept_into_folder(page)
            text = wait_state(page, "#receive-status", "verified")
            assert receiver.wait(PROCESS_TIMEOUT) == 0, receiver.stderr.read() if receiver.stderr else ""
        finally:
            if receiver.poll() is None:
                receiver.kill()
            receiver.wait(PROCESS_TIMEOUT)
        assert process.wait(PROCESS_TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
        assert proxy.cuts == 1
    lines = page.evaluate("window.statusLines")
    assert "reconnecting: Another receiver's connection was lost; waiting for it to come back." in lines, lines
    assert text.startswith("Done: 2 files"), text
    assert inbox(page) == {path.name: path.stat().st_size for path in paths}
    for path in paths:
        assert page.evaluate(READ_INBOX_FILE, path.name) == sha256(path), path.name
        assert sha256(out / path.name) == sha256(path)


def test_closing_a_receiving_page_mid_transfer_cancels_at_once(context: BrowserContext, relay_server, in_thread):
    """A page that saves into a folder holds a seat the relay would park for the resume window; closing the page
    sends `cancel` instead, so the sender learns at once (not `reconnecting`)."""
    data = os.urandom(8 * CHUNK)
    box: list[str] = []
    ready, sent = threading.Event(), threading.Event()

    async def sender_that_stops_halfway() -> list[Any]:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("large.bin", len(data)),), chunk_size=CHUNK))
        await sender.peer.expect("accept")
        await sender.peer.expect("start")
        sealer = await sender.stream([len(data)], CHUNK)
        for at in range(0, 2 * CHUNK, CHUNK):
            await send_sealed(sender.peer, sealer.seal_next(data[at:at + CHUNK]))
        sent.set()
        _, seen = await sender.peer.closed()
        return seen

    result = in_thread(sender_that_stops_halfway())
    assert ready.wait(WAIT)
    page = context.new_page()
    accept_into_inbox(page, box[0], relay_server.http_url)
    assert sent.wait(WAIT)
    wait_received(page, 2 * CHUNK)
    page.close()
    seen = result.result(WAIT)  # well within the 300 s resume window
    kinds = [message.get("type") for message in seen if isinstance(message, dict)]
    assert "cancel" in kinds and "reconnecting" not in kinds, seen


def test_a_page_that_verified_keeps_its_files_when_the_connection_then_drops(context: BrowserContext, relay_server,
                                                                              files, in_thread):
    """The page authenticated every file and gave each its name; another receiver has not finished, so the relay's
    `complete` has not come when the page's connection drops: the page says Done (its files are whole), as the
    terminal client does, rather than failed."""
    paths = [files["big"], files["note"]]
    stalled = threading.Event()
    release = threading.Event()

    async def raw_receiver_that_never_verifies(code: str) -> None:
        peer = await RawPeer.connect_v2(relay_server.ws_url, code.split("-", 1)[0], "receive")
        await peer.expect("hello")
        send, recv = raw_sides(peer)
        channel, _ = await key_as_receiver(send, recv, code)
        await peer.expect("offer")
        await peer.send({"type": "accept", "data": seal_json(channel, {})})
        for _ in range(10_000):  # every frame of the stream, read so the relay never waits on us
            message = await peer.recv()
            if isinstance(message, dict) and message.get("type") == "end":
                break
        stalled.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, WAIT * 2)
        await peer.close()

    with prefix_proxy(relay_server.port) as proxy, \
            cli_sender(paths, relay_server.http_url, "--receivers", "2") as (process, code):
        page = context.new_page()
        connect_with_inbox(page, code, proxy.url)
        other = in_thread(raw_receiver_that_never_verifies(code))
        accept_into_folder(page)
        page.wait_for_selector('#receive-status[data-state="verifying"]')
        assert stalled.wait(WAIT)
        proxy.cut_now()
        text = wait_state(page, "#receive-status", "verified")
        release.set()
        other.result(WAIT * 3)
    assert text.startswith("Done: 2 files"), text
    assert inbox(page) == {path.name: path.stat().st_size for path in paths}
    for path in paths:
        assert page.evaluate(READ_INBOX_FILE, path.name) == sha256(path), path.name
