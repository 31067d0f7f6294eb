"""End-to-end encryption on the page (issue 10), in a real Chromium against the real relay and the real `relay`
command: page to page through a relay that records everything it receives, the page and the CLI both ways, one
sending page to three receivers mixing pages and the CLI, a wrong code typed into the page, and a relay that
alters, swaps or replays ciphertext chunks (fixing the XXH3-64 it can see).

What must hold: the relay never receives a file name, a byte of plaintext or a word of the code; a wrong code
ends the room on both sides with the same plain words and nothing saved; a chunk that does not authenticate
stops the transfer with nothing saved.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from clients import crypto as c
from relay import protocol as p
from tests.peers import WAIT, RawPeer, b64, key_as_sender, raw_sides, seal_json, send_sealed
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.web.driver import accept_downloads, open_offer, sha256, start_sending, wait_state, zip_hashes
from tests.web.proxy import prefix_proxy

PROCESS_TIMEOUT = 60
WRONG_CODE = "The code was wrong; nothing was sent; start again with a new code."
CLI = [sys.executable, "-m", "clients.cli"]


def words_of(code: str) -> list[str]:
    return code.split("-")[1:]


def protocol_words_removed(message: object) -> str:
    """``message`` as JSON with what the protocol itself spells removed (keys, and the ``type`` of a message), so
    that a code word that is also a protocol word ("type", "chunk", about 1 code in 300) is looked for only where a
    leak could be: in the values."""
    if isinstance(message, dict):
        return " ".join(protocol_words_removed(value) for key, value in message.items() if key != "type")
    if isinstance(message, list):
        return " ".join(protocol_words_removed(value) for value in message)
    return json.dumps(message)


def url_words_removed(target: str) -> str:
    """A request target without the relay's own path (``/relay/ws``) and query keys: what is left is the
    nameplate and the query values."""
    path, _, query = target.partition("?")
    values = [pair.partition("=")[2] for pair in query.split("&")]
    return " ".join([path.removeprefix("/relay").removeprefix("/ws"), *values])


def other_words(code: str) -> str:
    """The same nameplate with other words: what a person who mistyped or guessed would send."""
    nameplate, *words = code.split("-")
    wrong = ["zoo" if word != "zoo" else "abandon" for word in words]
    return "-".join([nameplate, *wrong])


# --- what the relay receives ------------------------------------------------------------------------------------


def test_page_to_page_through_a_recording_relay_reveals_no_name_plaintext_or_word(context: BrowserContext,
                                                                                  relay_server, tmp_path):
    secret = tmp_path / "quarterly-secret-plans.txt"
    marker = b"PLAINTEXT-MARKER-"
    secret.write_bytes(marker + os.urandom(2 * 1024 * 1024) + marker)
    with prefix_proxy(relay_server.port) as proxy:
        sender, receiver = context.new_page(), context.new_page()
        code = start_sending(sender, proxy.url.rstrip("/"), [secret])
        link = sender.get_attribute("#send-link", "href") or ""
        receiver.goto(link)
        assert receiver.evaluate("window.location.hash") == "#receive"  # the code left the address bar at once
        receiver.click("#receive-connect")
        receiver.wait_for_selector("#receive-offer:not([hidden])")
        download = accept_downloads(receiver, 1)[0]
        wait_state(sender, "#send-status", "verified")
        received = list(proxy.received)
        targets = list(proxy.requests)
    assert sha256(Path(download.path())) == sha256(secret)

    nameplate, words = code.split("-", 1)
    assert nameplate.isdigit() and len(words.split("-")) == 3
    # Only the nameplate is in a URL: the sender names no room, the receiver names the nameplate.
    sockets = [target for target in targets if "/ws" in target]
    assert len(sockets) == 2, sockets
    assert any(target.startswith("/relay/ws?") for target in sockets)
    assert any(target.startswith(f"/relay/ws/{nameplate}?") for target in sockets)
    for target in targets:
        assert not any(word in url_words_removed(target) for word in words_of(code)), target

    texts = [data for _, data in received if isinstance(data, str)]
    binaries = [data for _, data in received if isinstance(data, bytes)]
    assert len(binaries) >= 3 and texts  # the stream went through the proxy
    opaque: list[bytes] = []
    for text in texts:
        message = json.loads(text)
        values = message.pop("data", None)
        for value in values if isinstance(values, list) else [values] if values else []:
            opaque.append(base64.b64decode(value))
        clear = json.dumps(message)
        assert "quarterly" not in clear and "secret-plans" not in clear and "PLAINTEXT" not in clear, clear
        assert not any(word in protocol_words_removed(message) for word in words_of(code)), clear
    for blob in binaries + opaque:
        assert marker not in blob and b"quarterly-secret-plans" not in blob and words.encode() not in blob


# --- the page and the `relay` command ---------------------------------------------------------------------------


def test_relay_send_to_a_page(context: BrowserContext, relay_server, files, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "inner.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 1))
    command = [*CLI, "send", str(files["big"]), str(folder), str(files["empty"]), "--relay", relay_server.http_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(process, PROCESS_TIMEOUT)
        assert line.startswith("Code: "), line
        code = line.split()[1]
        page = context.new_page()
        open_offer(page, relay_server.http_url, code)
        downloads = accept_downloads(page, 1)
        assert process.wait(PROCESS_TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(PROCESS_TIMEOUT)
    assert zip_hashes(downloads[0]) == {"big.bin": sha256(files["big"]), "empty.dat": sha256(files["empty"]),
                                        "folder/sub/inner.bin": sha256(folder / "sub" / "inner.bin")}


def test_a_page_sends_to_relay_receive(context: BrowserContext, relay_server, files, tmp_path):
    page = context.new_page()
    code = start_sending(page, relay_server.http_url, [files["big"], files["note"], files["empty"]])
    out = tmp_path / "received"
    out.mkdir()
    command = [*CLI, "receive", "--relay", relay_server.http_url, "--output", str(out), "--yes", "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                              env={**os.environ, "RELAY_CODE": code})
    assert finished.returncode == 0, finished.stderr
    wait_state(page, "#send-status", "verified")
    for name, key in (("big.bin", "big"), ("note.txt", "note"), ("empty.dat", "empty")):
        assert sha256(out / name) == sha256(files[key])


def test_one_page_sends_to_three_receivers_mixing_pages_and_the_cli(context: BrowserContext, relay_server, files,
                                                                    tmp_path):
    sender, first, third = context.new_page(), context.new_page(), context.new_page()
    sender.goto(relay_server.http_url + "/")
    sender.set_input_files("#file-input", [str(files["big"]), str(files["note"])])
    sender.fill("#receivers", "3")
    sender.click("#send-start")
    sender.wait_for_selector('#send-status[data-state="waiting"]')
    code = sender.text_content("#send-code") or ""
    # The offer comes once all three are in and keyed: each page connects without waiting for it.
    first.goto(f"{relay_server.http_url}/#receive={code}")
    first.click("#receive-connect")
    out = tmp_path / "cli"
    out.mkdir()
    command = [*CLI, "receive", "--relay", relay_server.http_url, "--output", str(out), "--yes", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RELAY_CODE": code})
    try:
        open_offer(third, relay_server.http_url, code)
        first.wait_for_selector("#receive-offer:not([hidden])")
        first_downloads: list = []
        first.on("download", lambda download: first_downloads.append(download))
        first.check("#save-downloads")
        first.click("#receive-accept")
        third_downloads = accept_downloads(third, 1)
        wait_state(first, "#receive-status", "verified")
        assert process.wait(PROCESS_TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(PROCESS_TIMEOUT)
    text = wait_state(sender, "#send-status", "verified")
    assert "reached all 3 receivers" in text, text
    expected = {"big.bin": sha256(files["big"]), "note.txt": sha256(files["note"])}
    for _ in range(100):
        if first_downloads:
            break
        first.wait_for_timeout(50)
    assert zip_hashes(first_downloads[0]) == expected
    assert zip_hashes(third_downloads[0]) == expected
    assert {name: sha256(out / name) for name in expected} == expected


# --- a wrong code -----------------------------------------------------------------------------------------------


def test_a_wrong_code_from_the_page_tells_both_pages_and_saves_nothing(pages: tuple[Page, Page], relay_server, files):
    sender, receiver = pages
    code = start_sending(sender, relay_server.http_url, [files["note"]])
    downloads: list = []
    receiver.on("download", lambda download: downloads.append(download))
    receiver.goto(f"{relay_server.http_url}/#receive")
    receiver.fill("#receive-code", other_words(code))
    receiver.click("#receive-connect")
    text = wait_state(receiver, "#receive-status", "failed")
    assert text == f"{WRONG_CODE} Ask the sender for a new code, then type it here.", text
    assert receiver.evaluate("document.activeElement.id") == "receive-code"  # ready for the new code
    assert receiver.is_hidden("#receive-offer")  # nothing about the files reached this page
    text = wait_state(sender, "#send-status", "failed")
    assert text == f"{WRONG_CODE} Press Try again to send with a new code.", text
    assert sender.evaluate("document.activeElement.id") == "send-retry"
    assert downloads == []


def test_a_wrong_code_from_the_page_ends_relay_send_with_exit_5(context: BrowserContext, relay_server, files):
    process = subprocess.Popen([*CLI, "send", str(files["note"]), "--relay", relay_server.http_url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code = _read_line(process, PROCESS_TIMEOUT).split()[1]
        page = context.new_page()
        page.goto(f"{relay_server.http_url}/#receive={other_words(code)}")
        page.click("#receive-connect")
        assert wait_state(page, "#receive-status", "failed").startswith(WRONG_CODE)
        assert process.wait(PROCESS_TIMEOUT) == 5
        assert "the code was wrong" in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(PROCESS_TIMEOUT)


# --- a relay that changes ciphertext -----------------------------------------------------------------------------

CHUNK = 64 * 1024


def _attacked(chunks: list[bytes], attack: str) -> list[bytes]:
    """What a relay in the middle forwards instead of the sealed chunks; the count and sizes stay plausible."""
    out = list(chunks)
    if attack == "altered":
        out[1] = out[1][:100] + bytes([out[1][100] ^ 1]) + out[1][101:]
    elif attack == "swapped":
        out[0], out[1] = out[1], out[0]
    elif attack == "replayed":
        out[1] = out[0]
    return out


async def _sender_through_a_lying_relay(ws_url: str, data: bytes, attack: str, box: list[str],
                                        ready: threading.Event) -> tuple[int | None, list]:
    """A real key exchange and real sealing, then chunks changed as `attack` says, each with a fixed XXH3-64."""
    peer = await RawPeer.connect_v2(ws_url, None, "send", receivers=1)
    hello = await peer.expect("hello")
    code = f"{hello['nameplate']}-ocean-table-actor"
    box.append(code)
    ready.set()
    await peer.expect("peer_joined")
    send, recv = raw_sides(peer)
    channel, content_key = await key_as_sender(send, recv, code, 1)
    await peer.expect("paired")
    offer = p.Offer((p.FileEntry("payload.bin", len(data)),), chunk_size=CHUNK)
    await peer.send({"type": "offer", "to": 1, "total_size": len(data), "files": 1,
                     "data": b64(channel.seal(offer.to_json().encode()))})
    await peer.expect("accept")
    await peer.expect("start")
    salt = c.new_epoch_salt()
    plan = c.StreamPlan((c.Segment(0, 0, len(data)),), CHUNK)
    sealed_plan = seal_json(channel, {"salt": b64(salt), "chunk_size": CHUNK, "segments": [[0, 0, len(data)]]})
    await peer.send({"type": "stream", "epoch": 0, "to": [1], "chunks": plan.chunk_count(),
                     "bytes": plan.ciphertext_size(), "data": [sealed_plan]})
    sealer = c.StreamSealer(c.data_key(content_key, salt), plan)
    chunks = [sealer.seal_next(data[at:at + CHUNK]) for at in range(0, len(data), CHUNK)]
    for sealed in _attacked(chunks, attack):
        await send_sealed(peer, sealed)
    await peer.send({"type": "end", "epoch": 0})
    return await peer.closed()


@pytest.mark.parametrize("attack", ["altered", "swapped", "replayed"])
def test_ciphertext_changed_on_the_way_stops_the_page_with_nothing_saved(context: BrowserContext, relay_server,
                                                                         in_thread, attack):
    data = os.urandom(4 * CHUNK)
    box: list[str] = []
    ready = threading.Event()
    result = in_thread(_sender_through_a_lying_relay(relay_server.ws_url, data, attack, box, ready))
    assert ready.wait(WAIT)
    page = context.new_page()
    downloads: list = []
    page.on("download", lambda download: downloads.append(download))
    open_offer(page, relay_server.http_url, box[0])
    page.check("#save-downloads")
    page.click("#receive-accept")
    text = wait_state(page, "#receive-status", "failed")
    assert text.startswith("Some data did not authenticate: it was changed on the way"), text
    assert "Nothing was saved." in text
    assert page.locator('#receive-files li[data-state="verified"]').count() == 0
    close_code, seen = result.result(WAIT * 3)
    # The page sends `error` tampered and closes at once; the relay reads it even when its forward of a chunk to the
    # page fails first (tests/hardening/test_send_failure.py), so the sender hears why, never `peer_left`.
    assert close_code == p.ErrorCode.TAMPERED.close_code, (close_code, seen)
    assert any(isinstance(m, dict) and m.get("code") == "tampered" for m in seen), seen
    assert not any(isinstance(m, dict) and m.get("type") == "complete" for m in seen), seen
    for download in downloads:  # a streamed download that had started must not complete
        assert download.failure() is not None


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """The process's first stdout line, waiting at most `timeout` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, "the relay command printed no code line"
    return box[0]


# --- a plain-http origin: no WebCrypto ---------------------------------------------------------------------------


def test_a_plain_http_origin_encrypts_in_javascript_and_says_so(browser, relay_server, files):
    """On http:// other than localhost the browser has no WebCrypto: the page says encryption is slower here, and
    the same protocol runs on @noble/ciphers (test_crypto_js.py checks its bytes against Python's)."""
    resolver = "--host-resolver-rules=MAP relay.test 127.0.0.1"
    other = browser.browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, resolver], timeout=30_000)
    try:
        context = other.new_context(accept_downloads=True)
        context.set_default_timeout(20_000)
        base = f"http://relay.test:{relay_server.port}"
        page = context.new_page()
        page.goto(base + "/")
        assert page.evaluate("window.isSecureContext") is False
        page.wait_for_selector("#crypto-note:not([hidden])")
        assert "encryption runs in JavaScript here and is slower" in (page.text_content("#crypto-note") or "")
        page.set_input_files("#file-input", [str(files["note"])])
        page.click("#send-start")
        page.wait_for_selector('#send-status[data-state="waiting"]')
        code = page.text_content("#send-code") or ""
        receiver = context.new_page()
        open_offer(receiver, base, code)
        assert "in memory" in (receiver.text_content("#save-note") or "")  # no service worker either
        downloads = accept_downloads(receiver, 1)
        wait_state(page, "#send-status", "verified")
        assert sha256(Path(downloads[0].path())) == sha256(files["note"])
        context.close()
    finally:
        other.close()

    secure = browser.new_page()
    secure.goto(relay_server.http_url + "/")  # 127.0.0.1 is a secure context: WebCrypto, and no note
    assert secure.is_hidden("#crypto-note")
    secure.close()
