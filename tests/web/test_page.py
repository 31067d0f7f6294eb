"""The page as people expect it (issue 13), in a real Chromium against a real relay: behind a proxy path prefix,
damaged links, names and folders never dropped without a word, one zip for many files, space warnings, refused
attempts that keep the selection, words at the end, keyboard focus, tab title and "Leave site?".
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from playwright.sync_api import BrowserContext, Page

from relay import protocol as p
from tests.peers import WAIT, seal_json, send_sealed
from tests.web.driver import accept_downloads, open_offer, sha256, start_sending, wait_state, zip_hashes
from tests.web.proxy import prefix_proxy
from tests.web.raw import RawSender, join_as_receiver

TiB = 1024**4


def pick(page: Page, paths: list[Path]) -> None:
    page.set_input_files("#file-input", [str(path) for path in paths])


# --- served under a path prefix --------------------------------------------------------------------------------


def test_page_works_behind_a_reverse_proxy_at_a_path_prefix(context: BrowserContext, relay_server, tmp_path):
    data = tmp_path / "through-proxy.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    with prefix_proxy(relay_server.port) as proxy:
        sender, receiver = context.new_page(), context.new_page()
        sender.goto(proxy.url)
        # The stylesheet loaded (relative URL): the page background is the style's, not the browser default.
        assert sender.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
        pick(sender, [data])
        sender.click("#send-start")
        sender.wait_for_selector('#send-status[data-state="waiting"]')
        code = sender.text_content("#send-code") or ""
        link = sender.get_attribute("#send-link", "href") or ""
        assert link == f"{proxy.url}#receive={code}"
        assert (sender.text_content("#send-cli") or "").endswith(f"--relay {proxy.url.rstrip('/')}")

        receiver.goto(link)
        receiver.click("#receive-connect")
        receiver.wait_for_selector("#receive-offer:not([hidden])")
        receiver.check("#save-downloads")
        # The download worker registered under the prefix: the file streams (no in-memory fallback).
        receiver.wait_for_selector("#save-note:has-text('streamed to your downloads folder')")
        download = accept_downloads(receiver, 1)[0]
        wait_state(sender, "#send-status", "verified")
        assert sha256(Path(download.path())) == sha256(data)
        # Everything went through the prefix: assets, the download worker and both WebSockets.
        targets = proxy.requests
        for asset in ("app.js", "style.css", "favicon.svg", "sw.js"):
            assert f"{proxy.prefix}{asset}" in targets, targets
        # The sender asked for a room without naming one; the receiver named the nameplate only.
        nameplate = code.split("-", 1)[0]
        assert sum(target.startswith(f"{proxy.prefix}ws?") for target in targets) == 1, targets
        assert sum(target.startswith(f"{proxy.prefix}ws/{nameplate}?") for target in targets) == 1, targets
        assert not [target for target in targets if not target.startswith(proxy.prefix)], targets


# --- links and names -------------------------------------------------------------------------------------------


def test_a_damaged_receive_link_says_so_in_the_receive_view(context: BrowserContext, relay_server):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{relay_server.http_url}/#receive=%E0%A4%A")
    assert page.is_visible("#receive-view") and page.is_hidden("#send-view")
    assert "link is damaged" in (page.text_content("#receive-status") or "")
    assert page.evaluate("document.activeElement.id") == "receive-code"
    assert errors == []


def test_a_second_file_with_the_same_name_is_renamed_not_dropped(context: BrowserContext, relay_server, tmp_path):
    (tmp_path / "dup1").mkdir()
    (tmp_path / "dup2").mkdir()
    first, second = tmp_path / "dup1" / "report.txt", tmp_path / "dup2" / "report.txt"
    first.write_text("first report\n")
    second.write_text("the second, longer report\n")
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    pick(page, [first])
    pick(page, [second])
    assert page.locator("#picked-list li .name").all_text_contents() == ["report.txt", "report (2).txt"]
    assert page.text_content("#picked-summary") == "2 files, 39 B in all"
    assert "this one is sent as report (2).txt" in (page.text_content("#pick-notes") or "")


def test_one_unsendable_name_leaves_the_rest_of_the_selection(context: BrowserContext, relay_server, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    bad = tmp_path / "bad\x01name.txt"
    bad.write_text("control character in the name\n")
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    pick(page, [good, bad])
    assert page.locator("#picked-list li .name").all_text_contents() == ["good.txt"]
    notes = page.text_content("#pick-notes") or ""
    assert "Left out bad\\x01name.txt" in notes and "The other files are selected." in notes
    assert page.text_content("#pick-error") == ""


def test_a_single_file_can_be_removed_from_the_selection(context: BrowserContext, relay_server, files):
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    pick(page, [files["big"], files["note"], files["empty"]])
    page.click("#picked-list li:nth-child(2) button.remove")
    assert page.locator("#picked-list li .name").all_text_contents() == ["big.bin", "empty.dat"]
    assert (page.text_content("#picked-summary") or "").startswith("2 files,")
    # The keyboard stays on the list: the next row's Remove button has the focus.
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove empty.dat"


def test_files_dropped_anywhere_on_the_page_are_selected(context: BrowserContext, relay_server):
    page = context.new_page()
    page.goto(f"{relay_server.http_url}/#receive")
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["dropped bytes"], "dropped.txt", { type: "text/plain" }));
        const target = document.querySelector("footer");
        target.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
        target.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    }""")
    page.wait_for_selector("#picked:not([hidden])")
    assert page.is_visible("#send-view")
    assert page.locator("#picked-list li .name").all_text_contents() == ["dropped.txt"]


def test_a_thousand_files_collapse_into_a_scrolling_list(context: BrowserContext, relay_server, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for index in range(1000):
        path = folder / f"file-{index:04d}.txt"
        path.write_text(str(index))
        paths.append(path)
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    pick(page, paths)
    assert page.locator("#picked-list li").count() == 1000
    assert page.text_content("#picked-summary") == "1,000 files, 2.82 KiB in all"
    box = page.locator("#send-start").bounding_box()
    assert box is not None and box["y"] < 1500, box  # Send stays near the list, not 40,000 pixels down


# --- folders and zips ------------------------------------------------------------------------------------------

# A real directory handle (the origin private file system) stands in for the folder a person would pick in the
# browser's dialog, which automation cannot click.
MAKE_TREE = """async ({ name, files, dirs }) => {
    const root = await navigator.storage.getDirectory();
    const top = await root.getDirectoryHandle(name, { create: true });
    const folderOf = async (parts) => {
        let folder = top;
        for (const part of parts) folder = await folder.getDirectoryHandle(part, { create: true });
        return folder;
    };
    for (const [path, text] of Object.entries(files)) {
        const parts = path.split("/");
        const handle = await (await folderOf(parts.slice(0, -1))).getFileHandle(parts.at(-1), { create: true });
        const writable = await handle.createWritable();
        await writable.write(text);
        await writable.close();
    }
    for (const dir of dirs) await folderOf(dir.split("/"));
    window.showDirectoryPicker = async () => top;
}"""


def test_a_chosen_folder_offers_its_empty_folders_and_they_arrive_in_the_zip(pages: tuple[Page, Page], relay_server):
    sender, receiver = pages
    sender.goto(relay_server.http_url + "/")
    sender.evaluate(MAKE_TREE, {"name": "tree", "files": {"a.txt": "alpha\n", "sub/b.txt": "beta\n"},
                                "dirs": ["emptydir", "sub/empty2"]})
    sender.click("#folder-pick")
    sender.wait_for_selector("#picked:not([hidden])")
    assert sender.text_content("#picked-summary") == "2 files and 2 empty folders, 11 B in all"
    sender.click("#send-start")
    sender.wait_for_selector('#send-status[data-state="waiting"]')
    code = sender.text_content("#send-code") or ""
    open_offer(receiver, relay_server.http_url, code)
    assert receiver.text_content("#offer-caption") == "2 files and 2 empty folders, 11 B in all"
    receiver.check("#save-downloads")
    assert "tree.zip" in (receiver.text_content("#save-note") or "")
    download = accept_downloads(receiver, 1)[0]
    assert download.suggested_filename == "tree.zip"
    assert zip_hashes(download) == {
        "tree/emptydir/": "", "tree/sub/empty2/": "",
        "tree/a.txt": hashlib.sha256(b"alpha\n").hexdigest(), "tree/sub/b.txt": hashlib.sha256(b"beta\n").hexdigest(),
    }
    assert (receiver.text_content("#receive-status") or "").startswith("Done: 2 files and 2 empty folders (11 B) saved")


def test_receiving_into_a_chosen_folder_creates_its_empty_folders(pages: tuple[Page, Page], relay_server, files):
    _, receiver = pages
    # Instead of the dialog, the receiver "picks" an empty folder of its private file system.
    receiver.goto(relay_server.http_url + "/#receive")
    receiver.evaluate(MAKE_TREE, {"name": "inbox", "files": {}, "dirs": []})
    # A raw sender with folders: the relay command or another page would offer the same.
    note = files["note"].read_bytes()
    box: list[str] = []

    async def folder_sender() -> None:
        sender = await RawSender.open(relay_server.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("tree/sub/note.txt", len(note)),), ("tree/emptydir",)))
        await sender.peer.expect("accept")
        await sender.peer.expect("start")
        sealer = await sender.stream([len(note)], p.DEFAULT_CHUNK_SIZE)
        await send_sealed(sender.peer, sealer.seal_next(note))
        await sender.peer.send({"type": "end", "epoch": 0})
        await sender.peer.closed()

    ready = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(asyncio.run, folder_sender())
        assert ready.wait(WAIT)
        receiver.fill("#receive-code", box[0])
        receiver.click("#receive-connect")
        receiver.wait_for_selector("#receive-offer:not([hidden])")
        receiver.check("#save-folder")
        receiver.click("#receive-accept")
        text = wait_state(receiver, "#receive-status", "verified")
        result.result(WAIT * 2)
    assert text.startswith('Done: 1 file and 1 empty folder (30 B) saved to the folder "inbox"'), text
    listing = receiver.evaluate("""async () => {
        const inbox = await (await navigator.storage.getDirectory()).getDirectoryHandle("inbox");
        const tree = await inbox.getDirectoryHandle("tree");
        const empty = [];
        for await (const name of (await tree.getDirectoryHandle("emptydir")).keys()) empty.push(name);
        const file = await (await (await tree.getDirectoryHandle("sub")).getFileHandle("note.txt")).getFile();
        return { empty, note: await file.text() };
    }""")
    assert listing == {"empty": [], "note": note.decode()}


# --- warnings, refusals and words ------------------------------------------------------------------------------


def test_a_huge_offer_warns_about_space(context: BrowserContext, relay_factory, in_thread):
    page = context.new_page()
    # A claimed 1 TiB file, or twice what this browser reports free if that is more (a machine with a big disk).
    relay = relay_factory(max_transfer_bytes=2**53 - 1)
    page.goto(relay.http_url + "/#receive")
    free = page.evaluate("navigator.storage.estimate().then((e) => e.quota - e.usage)")
    size = max(TiB, 2 * free)
    ready = threading.Event()
    box: list[str] = []

    async def huge_sender() -> None:
        sender = await RawSender.open(relay.ws_url)
        box.append(sender.code)
        ready.set()
        await sender.key()
        await sender.offer(p.Offer((p.FileEntry("disk-image.raw", size),)))
        await sender.peer.expect("decline")
        await sender.peer.closed()

    result = in_thread(huge_sender())
    assert ready.wait(WAIT)
    open_offer(page, relay.http_url, box[0])
    page.wait_for_selector("#space-note:not([hidden])")
    warning = page.text_content("#space-note") or ""
    assert warning.startswith("These files need "), warning
    assert "and this browser reports only about" in warning and "Make sure the disk you save to has room" in warning
    page.click("#receive-decline")
    result.result(WAIT * 2)


def test_a_refused_send_keeps_the_selection_and_can_try_again(context: BrowserContext, relay_factory, files, in_thread):
    relay = relay_factory(max_rooms=1)
    hold = threading.Event()

    async def room_holder() -> None:
        sender = await RawSender.open(relay.ws_url)
        await asyncio.get_running_loop().run_in_executor(None, hold.wait, WAIT * 4)
        await sender.peer.close()

    holder = in_thread(room_holder())
    page = context.new_page()
    page.goto(relay.http_url + "/")
    for _ in range(100):  # bounded: the holder's room is open within a moment
        if len(relay.relay.rooms) == 1:
            break
        page.wait_for_timeout(50)
    pick(page, [files["note"], files["empty"]])
    page.click("#send-start")
    text = wait_state(page, "#send-status", "failed")
    assert text.startswith("The relay is busy"), text
    assert "Nothing was delivered." in text and "Try again in a few minutes." in text
    assert page.evaluate("document.activeElement.id") == "send-retry"
    hold.set()
    holder.result(WAIT * 4)
    for _ in range(100):
        if len(relay.relay.rooms) == 0:
            break
        page.wait_for_timeout(50)
    page.click("#send-retry")  # the same two files, without picking them again
    page.wait_for_selector('#send-status[data-state="waiting"]')
    assert page.locator("#send-files li .name").all_text_contents() == ["note.txt", "empty.dat"]
    page.click("#send-cancel")
    wait_state(page, "#send-status", "cancelled")
    page.click("#send-edit")
    assert page.locator("#picked-list li .name").all_text_contents() == ["note.txt", "empty.dat"]


def test_an_unknown_code_suggests_checking_it(context: BrowserContext, relay_server):
    page = context.new_page()
    page.goto(f"{relay_server.http_url}/#receive=87654321-ocean-table-actor")
    page.click("#receive-connect")
    text = wait_state(page, "#receive-status", "failed")
    assert text.startswith("No transfer is waiting under this code. Nothing was saved. Check the code"), text
    assert page.evaluate("document.activeElement.id") == "receive-code"  # ready to check or retype it


def test_a_receivers_sealed_cancel_reason_is_a_quote_from_them(context: BrowserContext, relay_server, files, in_thread):
    page = context.new_page()
    code = start_sending(page, relay_server.http_url, [files["note"]])
    reason = "<b>wrong folder</b>, sorry"

    async def receiver() -> None:
        peer, channel, _ = await join_as_receiver(relay_server.ws_url, code)
        await peer.expect("offer")
        # The reason is sealed for the sender: the relay forwards it without reading it.
        await peer.send({"type": "cancel", "data": seal_json(channel, {"reason": reason})})
        await peer.closed()

    result = in_thread(receiver())
    text = wait_state(page, "#send-status", "cancelled")
    assert text.startswith("The receiver cancelled the transfer."), text
    assert page.text_content("#send-quote p") == "The receiver wrote:"
    assert page.text_content("#send-quote q") == reason
    assert page.locator("#send-quote b").count() == 0
    assert page.get_attribute("#send-status", "data-tone") == "neutral"
    result.result(WAIT * 2)


# --- keyboard, title, leaving ----------------------------------------------------------------------------------


def outline(page: Page, selector: str) -> str:
    return page.evaluate(f"getComputedStyle(document.querySelector({selector!r})).outlineStyle")


def test_the_focus_ring_is_on_the_focused_button(context: BrowserContext, relay_server):
    page = context.new_page()
    page.goto(relay_server.http_url + "/")
    page.focus("#tab-receive")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    assert outline(page, 'label[for="file-input"]') == "solid"
    assert outline(page, "#folder-pick") == "none"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "folder-pick"
    assert outline(page, "#folder-pick") == "solid"
    assert outline(page, 'label[for="file-input"]') == "none"


def test_focus_follows_the_views(pages: tuple[Page, Page], relay_server, files):
    sender, receiver = pages
    sender.goto(relay_server.http_url + "/")
    pick(sender, [files["note"]])
    sender.focus("#send-start")
    sender.keyboard.press("Enter")
    sender.wait_for_selector('#send-status[data-state="waiting"]')
    assert sender.evaluate("document.activeElement.id") == "send-status"  # not dropped to the body
    code = sender.text_content("#send-code") or ""

    receiver.goto(f"{relay_server.http_url}/#receive={code}")
    assert receiver.evaluate("document.activeElement.id") == "receive-connect"
    receiver.keyboard.press("Enter")  # the link's code, connected by the keyboard alone
    receiver.wait_for_selector("#receive-offer:not([hidden])")
    assert receiver.evaluate("document.activeElement.id") == "receive-accept"
    receiver.check("#save-downloads")
    receiver.focus("#receive-accept")
    receiver.keyboard.press("Enter")
    wait_state(receiver, "#receive-status", "verified")
    wait_state(sender, "#send-status", "verified")
    assert receiver.evaluate("document.activeElement.id") == "receive-again"
    assert sender.evaluate("document.activeElement.id") == "send-again"

    empty = sender.context.new_page()
    empty.goto(f"{relay_server.http_url}/#receive")
    assert empty.evaluate("document.activeElement.id") == "receive-code"
    empty.close()


def test_progress_in_the_title_and_a_leave_warning_while_sending(context: BrowserContext, relay_server, tmp_path,
                                                                 in_thread):
    big = tmp_path / "large.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))
    page = context.new_page()
    code = start_sending(page, relay_server.http_url, [big])
    release = threading.Event()

    async def receiver_that_stalls() -> None:
        peer, channel, _ = await join_as_receiver(relay_server.ws_url, code)
        await peer.expect("offer")
        await peer.send({"type": "accept", "data": seal_json(channel, {})})
        await peer.expect("stream")
        await peer.expect("chunk")
        await asyncio.get_running_loop().run_in_executor(None, release.wait, WAIT * 3)
        await peer.close()

    result = in_thread(receiver_that_stalls())
    page.wait_for_selector('#send-status[data-state="transferring"]')
    page.wait_for_function("/^\\d+% sent( · .+ left)? · relay$/.test(document.title)")
    dialogs: list[str] = []

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()  # stay on the page

    page.on("dialog", on_dialog)
    page.close(run_before_unload=True)
    for _ in range(100):
        if dialogs:
            break
        page.wait_for_timeout(50) if not page.is_closed() else None
    assert dialogs == ["beforeunload"]
    page.click("#send-cancel")
    wait_state(page, "#send-status", "cancelled")
    assert page.title() == "Stopped · relay"
    release.set()
    result.result(WAIT * 4)


# --- a text snippet --------------------------------------------------------------------------------------------

def test_a_text_snippet_arrives_as_text_to_copy(pages: tuple[Page, Page], relay_server):
    sender, receiver = pages
    text = "line one\nüñï <b>not bold</b> \u202e\n"
    sender.goto(relay_server.http_url + "/")
    sender.click("#text-pick summary")
    sender.fill("#text-input", text)
    sender.click("#text-send")
    sender.wait_for_selector('#send-status[data-state="waiting"]')
    code = sender.text_content("#send-code") or ""
    open_offer(receiver, relay_server.http_url, code)
    assert receiver.is_hidden("#save-choice")
    assert receiver.text_content("#receive-accept") == "Show the text"
    receiver.click("#receive-accept")
    assert wait_state(receiver, "#receive-status", "verified").startswith("Done: the sender's text")
    wait_state(sender, "#send-status", "verified")
    assert receiver.input_value("#received-text") == text
    assert receiver.evaluate("document.activeElement.id") == "copy-text"
