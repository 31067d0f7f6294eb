"""The web client in a real Chromium: browser to browser, links, cancel, hostile peers (protocol version 2).

The page and the `relay` command, wrong codes and altered ciphertext are in test_e2e_page.py.

Every wait is bounded (Playwright's default timeout, `WAIT` for raw peers, `timeout=` for processes); nothing
asserts on timing. Received bytes are compared by hash.
"""

from __future__ import annotations

import asyncio
import os
import threading

from playwright.sync_api import BrowserContext, Page

from relay import protocol as p
from tests.peers import WAIT, RawPeer, send_sealed, seal_json
from tests.web.driver import accept_downloads, open_offer, saved_hashes, sha256, start_sending, wait_state, zip_hashes
from tests.web.raw import RawSender, join_as_receiver


# --- browser to browser ------------------------------------------------------------------------------------


def test_browser_to_browser_streams_files_to_downloads_as_one_zip(pages: tuple[Page, Page], relay_server, files,
                                                                  artifacts):
    sender, receiver = pages
    code = start_sending(sender, relay_server.http_url, [files["big"], files["note"], files["empty"]])
    assert sender.locator("#send-qr svg").count() == 1
    assert sender.get_attribute("#send-link", "href") == f"{relay_server.http_url}/#receive={code}"
    sender.screenshot(path=str(artifacts / "send-view.png"), full_page=True)

    open_offer(receiver, relay_server.http_url, code)
    offer_text = receiver.text_content("#offer-files") or ""
    assert "big.bin" in offer_text and "note.txt" in offer_text and "6.01 MiB" in offer_text
    receiver.screenshot(path=str(artifacts / "receive-view.png"), full_page=True)

    receiver.check("#save-downloads")
    assert "one zip file, relay-files.zip" in (receiver.text_content("#save-note") or "")
    downloads = accept_downloads(receiver, 1)
    wait_state(sender, "#send-status", "verified")
    assert downloads[0].suggested_filename == "relay-files.zip"
    assert zip_hashes(downloads[0]) == {name: sha256(files[key]) for name, key in
                                        (("big.bin", "big"), ("note.txt", "note"), ("empty.dat", "empty"))}
    assert receiver.locator('#receive-files li[data-state="verified"]').count() == 3
    assert sender.locator('#send-files li[data-state="verified"]').count() == 3
    # The end says what happened, how long it took and how fast, with proper plurals.
    done = receiver.text_content("#receive-status") or ""
    assert done.startswith("Done: 3 files (6.01 MiB) saved to your downloads folder as relay-files.zip"), done
    assert "on average" in done and "(s)" not in done
    assert (sender.text_content("#send-status") or "").startswith("Done: 3 files (6.01 MiB) reached the receiver")
    sender.screenshot(path=str(artifacts / "send-finished.png"), full_page=True)
    receiver.screenshot(path=str(artifacts / "receive-finished.png"), full_page=True)


def test_browser_without_service_worker_saves_small_files_from_memory(no_sw_context: BrowserContext, relay_server,
                                                                      files):
    sender, receiver = no_sw_context.new_page(), no_sw_context.new_page()
    code = start_sending(sender, relay_server.http_url, [files["big"], files["note"]])
    open_offer(receiver, relay_server.http_url, code)
    receiver.check("#save-downloads")
    assert "in memory" in (receiver.text_content("#save-note") or "")
    downloads = accept_downloads(receiver, 2)
    wait_state(sender, "#send-status", "verified")
    assert saved_hashes(downloads) == {"big.bin": sha256(files["big"]), "note.txt": sha256(files["note"])}


def test_receive_link_prefills_the_code_and_does_not_join(context: BrowserContext, relay_server, in_thread):
    opened, named = threading.Event(), threading.Event()
    box: list[str] = []

    async def first_receiver_is_still_free() -> int:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        named.set()
        await asyncio.get_running_loop().run_in_executor(None, opened.wait, WAIT)
        receiver = await RawPeer.connect_v2(relay_server.ws_url, sender.nameplate, "receive")
        hello = await receiver.expect("hello")
        await sender.peer.close()
        await receiver.close()
        return hello["peer"]

    result = in_thread(first_receiver_is_still_free())
    assert named.wait(WAIT)
    code = box[0]
    page = context.new_page()
    page.goto(f"{relay_server.http_url}/#receive={code.upper()}")
    assert page.is_visible("#receive-view")
    assert page.input_value("#receive-code") == code
    assert page.evaluate("window.location.hash") == "#receive"  # the code does not stay in the address bar
    opened.set()
    # Opening the link did not take the room's only receiver place.
    assert result.result(WAIT * 2) == 1


def test_a_bare_code_fragment_is_read_and_removed_from_the_address_bar(context: BrowserContext, relay_server):
    page = context.new_page()
    page.goto(f"{relay_server.http_url}/#42-Ocean-Table-Actor")
    assert page.is_visible("#receive-view")
    assert page.input_value("#receive-code") == "42-ocean-table-actor"
    assert page.evaluate("window.location.hash") == "#receive"
    assert "ocean" not in page.url


def test_sender_cancel_reaches_the_receiving_page(pages: tuple[Page, Page], relay_server, files):
    sender, receiver = pages
    code = start_sending(sender, relay_server.http_url, [files["note"]])
    open_offer(receiver, relay_server.http_url, code)
    sender.click("#send-cancel")
    wait_state(sender, "#send-status", "cancelled")
    text = wait_state(receiver, "#receive-status", "cancelled")
    assert text.startswith("The sender cancelled the transfer. Nothing was saved.")
    assert receiver.is_hidden("#receive-quote")  # the page's own default reason is not quoted back


def test_receiver_decline_shows_on_the_sending_page(pages: tuple[Page, Page], relay_server, files):
    sender, receiver = pages
    code = start_sending(sender, relay_server.http_url, [files["note"]])
    open_offer(receiver, relay_server.http_url, code)
    receiver.click("#receive-decline")
    assert wait_state(receiver, "#receive-status", "cancelled") == "You declined the offer. Nothing was saved."
    text = wait_state(sender, "#send-status", "cancelled")
    assert text.startswith("The receiver declined the files. Nothing was delivered.")
    # A decline is not a failure: not in the failure colour, and the selection stays for another try.
    assert sender.get_attribute("#send-status", "data-tone") == "neutral"
    assert sender.is_visible("#send-retry")


# --- cancel in the middle of a transfer, against raw peers that stop reading --------------------------------


def test_sending_page_cancel_mid_transfer_tells_the_receiver(context: BrowserContext, relay_server, tmp_path,
                                                             in_thread):
    big = tmp_path / "large.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))
    page = context.new_page()
    code = start_sending(page, relay_server.http_url, [big])
    cancelled, streaming = threading.Event(), threading.Event()

    async def receiver_that_stalls() -> tuple[int | None, list]:
        peer, channel, _ = await join_as_receiver(relay_server.ws_url, code)
        await peer.expect("offer")
        await peer.send({"type": "accept", "data": seal_json(channel, {})})
        await peer.expect("stream")
        await peer.expect("chunk")
        assert isinstance(await peer.recv(), bytes)
        streaming.set()
        # Stop reading: the relay, and so the page, cannot get far ahead. Resume once the page has cancelled.
        await asyncio.get_running_loop().run_in_executor(None, cancelled.wait, WAIT * 3)
        return await peer.closed()

    result = in_thread(receiver_that_stalls())
    assert streaming.wait(WAIT)  # the first chunk arrived: the page is in the middle of the stream
    page.click("#send-cancel")
    cancelled.set()
    wait_state(page, "#send-status", "cancelled")
    close_code, seen = result.result(WAIT * 6)
    messages = [frame for frame in seen if isinstance(frame, dict)]
    assert {"type": "cancel", "peer": 0} in messages  # no reason in clear: it could name a file
    assert close_code == p.ErrorCode.CANCELLED.close_code


def test_receiving_page_cancel_mid_transfer_tells_the_sender(context: BrowserContext, relay_server, in_thread):
    page = context.new_page()
    ready = threading.Event()
    box: list[str] = []
    size = 8 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)

    async def sender_that_waits() -> tuple[int | None, list]:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("slow.bin", size),)))
        await sender.peer.expect("accept")
        await sender.peer.expect("start")
        sealer = await sender.stream([size], len(chunk))
        await send_sealed(sender.peer, sealer.seal_next(chunk))
        return await sender.peer.closed()  # sends nothing more: the page waits until its person cancels

    result = in_thread(sender_that_waits())
    assert ready.wait(WAIT)
    open_offer(page, relay_server.http_url, box[0])
    page.check("#save-downloads")
    page.click("#receive-accept")
    page.wait_for_selector('#receive-total[value="1048576"]')
    page.click("#receive-cancel")
    wait_state(page, "#receive-status", "cancelled")
    close_code, seen = result.result(WAIT * 3)
    assert {"type": "cancel", "peer": 1} in seen
    assert close_code == p.ErrorCode.CANCELLED.close_code


# --- hostile sender ----------------------------------------------------------------------------------------


def test_a_chunk_whose_checksum_does_not_match_is_stopped_by_the_relay(context: BrowserContext, relay_server,
                                                                      in_thread):
    page = context.new_page()
    ready = threading.Event()
    box: list[str] = []
    data = os.urandom(300_000)

    async def hostile_sender() -> tuple[int | None, list]:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("payload.bin", len(data)),)))
        await sender.peer.expect("accept")
        await sender.peer.expect("start")
        sealed = (await sender.stream([len(data)], len(data))).seal_next(data)
        await sender.peer.send(p.SealedChunk(0, len(sealed), f"{int(p.chunk_digest(sealed), 16) ^ 1:016x}"))
        await sender.peer.send(sealed)
        return await sender.peer.closed()

    result = in_thread(hostile_sender())
    assert ready.wait(WAIT)
    downloads = []
    page.on("download", lambda download: downloads.append(download))
    open_offer(page, relay_server.http_url, box[0])
    page.check("#save-downloads")
    page.click("#receive-accept")
    text = wait_state(page, "#receive-status", "failed")
    assert text.startswith("Some data arrived damaged (a checksum did not match)"), text
    assert "Nothing was saved." in text
    assert page.locator('#receive-files li[data-state="verified"]').count() == 0
    close_code, _ = result.result(WAIT * 3)
    assert close_code == p.ErrorCode.CHECKSUM_MISMATCH.close_code
    for download in downloads:  # a streamed download that had started must not complete
        assert download.failure() is not None


def test_hostile_file_names_are_shown_escaped(context: BrowserContext, relay_server, in_thread):
    page = context.new_page()
    ready = threading.Event()
    box: list[str] = []
    names = ["evil\u202etxt.exe", "dir/&lt;b&gt;bold&lt;/b&gt;.txt"]

    async def sender() -> None:
        raw = await RawSender.open(relay_server.ws_url)
        box.append(raw.code)
        ready.set()
        await raw.key()
        await raw.offer(p.Offer(tuple(p.FileEntry(name, 1) for name in names)))
        await raw.peer.expect("decline")
        await raw.peer.closed()

    result = in_thread(sender())
    assert ready.wait(WAIT)
    open_offer(page, relay_server.http_url, box[0])
    cells = page.locator("#offer-files td:first-child").all_text_contents()
    assert cells == ["evil\\u202etxt.exe", "dir/&lt;b&gt;bold&lt;/b&gt;.txt"]
    assert page.locator("#offer-files b").count() == 0
    page.click("#receive-decline")
    result.result(WAIT * 2)
