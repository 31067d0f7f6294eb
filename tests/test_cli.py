"""The ``relay`` command as a person or a script uses it: real subprocesses, exit codes and one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay import protocol as p
from clients.cli import main as cli_main
from clients.cli import WEAK_CODE_BITS, JsonReporter, code_strength_bits, escape_for_terminal
from clients.connection import BadRelayUrl, parse_relay_url, proxy_for, quote_peer_text
from tests.conftest import free_port
from tests.peers import WORDS, RawPeer, key_as_sender, raw_sides

NO_ROOM = "98765432-no-such-room"  # a well-formed code whose nameplate has no room
WAIT = 120  # seconds a CLI run may take before the test fails


def serve_command() -> list[str]:
    """How to run ``relay serve``: the server package owns it (``relay/command.py``)."""
    return [sys.executable, "-m", "relay.command", "serve"]


def relay_command(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True,
                          timeout=WAIT, input=stdin, env=env, cwd=cwd)


def start_sender(relay_url: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_url, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process


def read_code(sender: subprocess.Popen[str]) -> str:
    """The ``Code: ...`` line, printed and flushed at once even though stdout is a pipe.

    It is the first line unless the sender first lists what it leaves out.
    """
    assert sender.stdout is not None
    lines = []
    for _ in range(50):
        lines.append(sender.stdout.readline())
        if lines[-1].startswith("Code: ") or not lines[-1]:
            break
    assert lines[-1].startswith("Code: "), lines
    return lines[-1].split()[1]


def finish(sender: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for a sender started by ``start_sender`` and return the rest of its stdout, and its stderr."""
    sender.wait(timeout=WAIT)  # its output is a few lines, so the pipes cannot fill up
    assert sender.stdout is not None and sender.stderr is not None
    return sender.stdout.read(), sender.stderr.read()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    source = tmp_path / "send"
    (source / "album" / "empty").mkdir(parents=True)
    (source / "album" / "one.jpg").write_bytes(os.urandom(2_500_000))
    (source / "notes.txt").write_text("hello")
    return source


def test_send_and_receive_move_a_folder_and_a_file(relay_server, files, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sender = start_sender(relay_server.http_url, str(files / "album"), str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--output", str(out), "--yes")
    stdout, stderr = finish(sender)
    assert received.returncode == 0, received.stderr
    assert sender.returncode == 0, stderr
    assert f"relay receive --relay {relay_server.http_url} {code}" in stdout
    assert "every receiver authenticated every file" in stdout
    assert "album/one.jpg" in received.stdout and "every file authenticated" in received.stdout
    assert sha(out / "album" / "one.jpg") == sha(files / "album" / "one.jpg")
    assert (out / "notes.txt").read_text() == "hello"
    assert (out / "album" / "empty").is_dir()


def test_the_relay_url_comes_from_the_environment(relay_server, files, tmp_path) -> None:
    env = {**os.environ, "RELAY_URL": relay_server.http_url}
    words = "env-" + secrets.token_hex(4)
    sender = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--code", words, "--quiet",
                               str(files / "notes.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    code = read_code(sender)
    assert code.split("-", 1)[1] == words and code.split("-", 1)[0].isdigit()
    received = relay_command("receive", "--yes", "--quiet", "--output", str(tmp_path),
                             env={**env, "RELAY_CODE": code})  # the code from the environment, not argv
    finish(sender)
    assert received.returncode == 0 and sender.returncode == 0
    assert received.stdout == ""  # --quiet: nothing but errors
    assert (tmp_path / "notes.txt").read_text() == "hello"


def test_chosen_words_and_a_typed_code_are_normalised(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, "--code", "My Code 42", str(files / "notes.txt"))
    nameplate, words = read_code(sender).split("-", 1)
    assert words == "my-code-42"
    received = relay_command("receive", f" {nameplate} MY_CODE_42 ", "--relay", relay_server.http_url, "--yes",
                             "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0 and sender.returncode == 0


def test_receiving_an_unknown_code_exits_1_with_one_line(relay_server, tmp_path) -> None:
    result = relay_command("receive", "98765432-no-such-room", "--relay", relay_server.http_url,
                           "--yes", "--output", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == "relay: error: no sender is waiting with this code"


def test_an_unreachable_relay_exits_3(tmp_path) -> None:
    result = relay_command("receive", "1-some-code", "--relay", f"http://127.0.0.1:{free_port()}", "--yes",
                           "--output", str(tmp_path))
    assert result.returncode == 3
    assert result.stderr.startswith("relay: error: cannot reach the relay") and result.stderr.count("\n") == 1


def test_an_existing_file_exits_4_and_is_untouched_and_the_sender_is_told(relay_server, files, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(tmp_path))
    _, sender_err = finish(sender)
    assert received.returncode == 4 and "use --overwrite" in received.stderr
    assert sender.returncode == 1
    # The receiver's words reach the sender quoted and attributed, never as the sender's own error line.
    first, said = sender_err.splitlines()[:2]
    assert first.startswith("relay: error: receiver 1 ") and said.startswith('  receiver 1 said: "')
    assert "files would be overwritten" in sender_err and "notes.txt" not in sender_err
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_overwrite_replaces_an_existing_file(relay_server, files, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("old")
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--overwrite",
                             "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0 and (tmp_path / "notes.txt").read_text() == "hello"


def test_sending_a_missing_path_exits_4_before_connecting(tmp_path) -> None:
    result = relay_command("send", str(tmp_path / "nope.txt"), "--relay", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 4 and "no such file or folder" in result.stderr


@pytest.mark.parametrize("args", [["receive", "bad/code"], ["receive", "ocean-table-actor"],
                                  ["send", "--code", "!!", "x"], ["send", "--receivers", "0", "x"]])
def test_bad_usage_exits_2(args: list[str], tmp_path) -> None:
    (tmp_path / "x").write_text("x")
    result = relay_command(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("relay: error:")


def test_serve_help_lists_every_setting_with_its_environment_variable() -> None:
    result = subprocess.run([*serve_command(), "--help"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--max-message", "--max-receivers", "--pairing-timeout", "--idle-timeout"):
        assert flag in result.stdout
    assert "RELAY_PORT" in result.stdout


def test_a_hostile_name_is_shown_escaped(relay_server, tmp_path) -> None:
    """Names are shown with control characters escaped (the relay refuses them anyway, but never echo raw)."""
    from clients.cli import describe_offer

    offer = p.Offer((p.FileEntry("fine.txt", 1),), ())
    object.__setattr__(offer.files[0], "path", "evil\x1b[2J.txt")
    assert "\x1b" not in describe_offer(offer)


def test_a_wrong_code_exits_5_on_both_sides_and_nothing_is_written(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    nameplate, _ = read_code(sender).split("-", 1)
    out = tmp_path / "out"
    out.mkdir()
    received = relay_command("receive", f"{nameplate}-wrong-guess-here", "--relay", relay_server.http_url, "--yes",
                             "--output", str(out))
    _, sender_err = finish(sender)
    told = "the code was wrong; nothing was sent; start again with a new code"
    assert received.returncode == 5 and told in received.stderr
    assert sender.returncode == 5 and told in sender_err
    assert list(out.iterdir()) == []


def test_help_says_argv_is_visible_and_lists_the_exit_codes() -> None:
    result = relay_command("receive", "--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert "visible to other users" in text and "RELAY_CODE" in text
    assert "5 the code was wrong" in text and "6 the data was altered" in text


def test_receive_without_a_code_on_a_non_terminal_exits_2() -> None:
    result = relay_command("receive", "--yes", stdin="", env={k: v for k, v in os.environ.items() if k != "RELAY_CODE"})
    assert result.returncode == 2 and "RELAY_CODE" in result.stderr


# --- a pseudo-terminal, for what only happens on a terminal (the prompt, Ctrl-C, the QR code) ---------------


class Terminal:
    """A CLI process whose stdin, stdout and stderr are a pty, read with bounded waits."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        self.master = master
        self.process = subprocess.Popen([sys.executable, "-m", "clients.cli", *args], stdin=slave, stdout=slave,
                                        stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{text!r} never appeared before the end:\n{self.output}")
                self.output += data.decode("utf-8", errors="replace")
        return self.output

    def wait(self, timeout: float = 15) -> int:
        """The exit code, draining the terminal so the process never blocks on a full pty."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.master, 65536).decode("utf-8", errors="replace")
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminals() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]

    yield open_terminal
    for terminal in opened:
        terminal.close()


def test_ctrl_c_at_the_accept_prompt_ends_the_receiver_at_once(relay_server, files, tmp_path, terminals) -> None:
    """Issue 9 item 13: the prompt was input() in a thread, and Ctrl-C waited for Enter."""
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    out = tmp_path / "made-for-it"
    receiver = terminals("receive", code, "--relay", relay_server.http_url, "--output", str(out))
    receiver.read_until("Accept? [y/N]")
    receiver.process.send_signal(signal.SIGINT)
    assert receiver.wait(timeout=15) == 130
    assert "relay: cancelled" in receiver.output
    _, sender_err = finish(sender)
    assert sender.returncode == 1 and "receiver" in sender_err
    assert not out.exists()  # the folder made for the transfer is gone with it


def test_answering_yes_at_the_prompt_receives(relay_server, files, tmp_path, terminals) -> None:
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    receiver = terminals("receive", code, "--relay", relay_server.http_url, "--output", str(tmp_path))
    receiver.read_until("Accept? [y/N]")
    os.write(receiver.master, b"y\n")
    assert receiver.wait(timeout=WAIT) == 0, receiver.output
    finish(sender)
    assert (tmp_path / "notes.txt").read_text() == "hello"


def test_a_sender_on_a_terminal_shows_the_receive_link_as_a_qr_code(relay_server, files, terminals) -> None:
    sender = terminals("send", "--relay", relay_server.http_url, str(files / "notes.txt"))
    shown = sender.read_until("\u2580", timeout=30)  # the QR code is drawn with half blocks
    code = shown.split("Code: ", 1)[1].split()[0]
    assert f"or open {relay_server.http_url}/#receive={code}" in shown
    sender.process.send_signal(signal.SIGINT)
    assert sender.wait() == 130


def test_a_sender_on_a_pipe_draws_no_qr_code(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(tmp_path))
    stdout, _ = finish(sender)
    assert f"{relay_server.http_url}/#receive={code}" in stdout
    assert "\u2580" not in stdout and "\u2588" not in stdout


# --- relay URLs (issue 9 item 14) ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ws://127.0.0.1:99999", "ws://127.0.0.1:59631x", "ftp://x", "ws://", "http://:80",
                                 "ws://127.0.0.1:0", "ws://user:secret@127.0.0.1:1", "ws://a b", "http://h/?x=1"])
@pytest.mark.parametrize("command", ["send", "receive"])
def test_a_malformed_relay_url_is_a_usage_error_in_one_line(url: str, command: str, tmp_path) -> None:
    (tmp_path / "x").write_text("x")
    args = ["send", "x"] if command == "send" else ["receive", "1-some-code", "--yes"]
    result = relay_command(*args, "--relay", url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("relay: error: not a relay URL") and result.stderr.count("\n") == 1
    assert "secret" not in result.stderr or "user:secret" in url  # shown as typed, but nothing else leaks


def test_a_malformed_relay_url_from_the_environment_is_a_usage_error(tmp_path) -> None:
    result = relay_command("receive", "1-some-code", "--yes", env={**os.environ, "RELAY_URL": "ws://h:70000"})
    assert result.returncode == 2 and "the port must be a number from 1 to 65535" in result.stderr


def test_relay_urls_are_parsed_into_a_websocket_base_and_a_receive_link() -> None:
    assert parse_relay_url("localhost:8000").websocket_base == "ws://localhost:8000"
    relay = parse_relay_url("https://relay.example.org/files/")
    assert relay.websocket_base == "wss://relay.example.org/files"
    assert relay.receive_link("a-b") == "https://relay.example.org/files/#receive=a-b"
    assert parse_relay_url("ws://[::1]:9/").receive_link("c") == "http://[::1]:9/#receive=c"
    with pytest.raises(BadRelayUrl, match="IPv6"):
        parse_relay_url("ws://[nonsense]:9")


# --- proxies ------------------------------------------------------------------------------------------------


class ConnectProxy:
    """A tiny HTTP CONNECT proxy on loopback that records each tunnel it opens."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.tunnels: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 8192:
                data = client.recv(4096)
                if not data:
                    return
                request += data
            target = request.split(b" ")[1].decode()
            self.tunnels.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pumps = [threading.Thread(target=_pump, args=pair, daemon=True)
                         for pair in ((client, upstream), (upstream, client))]
                for pump in pumps:
                    pump.start()
                for pump in pumps:
                    pump.join(timeout=WAIT)

    def close(self) -> None:
        self.server.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    proxy = ConnectProxy()
    yield proxy
    proxy.close()


def without_proxy_settings() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "ALL_PROXY"])
def test_the_proxy_from_the_environment_carries_the_transfer(relay_server, files, tmp_path, connect_proxy,
                                                             variable: str) -> None:
    env = {**without_proxy_settings(), variable: f"http://127.0.0.1:{connect_proxy.port}"}
    words = "proxied-" + secrets.token_hex(4)
    sender = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_server.http_url,
                               "--code", words, "--quiet", str(files / "notes.txt")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output",
                             str(tmp_path), env=env)
    finish(sender)
    assert received.returncode == 0 and sender.returncode == 0, received.stderr
    assert connect_proxy.tunnels == [f"127.0.0.1:{relay_server.port}"] * 2
    assert (tmp_path / "notes.txt").read_text() == "hello"


def test_no_proxy_bypasses_the_proxy(relay_server, tmp_path, connect_proxy) -> None:
    env = {**without_proxy_settings(), "ALL_PROXY": f"http://127.0.0.1:{connect_proxy.port}",
           "NO_PROXY": "127.0.0.1"}
    result = relay_command("receive", NO_ROOM, "--relay", relay_server.http_url, "--yes",
                           "--output", str(tmp_path), env=env)
    assert result.returncode == 1 and connect_proxy.tunnels == []


def test_an_unreachable_proxy_is_an_unreachable_relay(relay_server, tmp_path) -> None:
    env = {**without_proxy_settings(), "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}"}
    result = relay_command("receive", "1-some-code", "--relay", relay_server.http_url, "--yes", "--output",
                           str(tmp_path), env=env)
    assert result.returncode == 3 and "through the proxy http://127.0.0.1:" in result.stderr


def test_proxy_choice_follows_the_usual_variables() -> None:
    plain, secure = parse_relay_url("ws://relay:80"), parse_relay_url("wss://relay")
    assert proxy_for(secure, {"HTTPS_PROXY": "http://p:1"}) == "http://p:1"
    assert proxy_for(secure, {"HTTP_PROXY": "http://p:1"}) is None  # plain-HTTP proxy settings are for ws:// only
    assert proxy_for(plain, {"HTTP_PROXY": "http://p:1"}) == "http://p:1"
    assert proxy_for(plain, {"ALL_PROXY": "http://a:1"}) == "http://a:1"
    assert proxy_for(plain, {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"}) == "http://low:1"
    assert proxy_for(plain, {"ALL_PROXY": "http://a:1", "NO_PROXY": "other,relay"}) is None
    assert proxy_for(plain, {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}) is None  # CGI: "httpoxy"


# --- what the receiver checks before it joins, and what it says (issue 9 item 15) ---------------------------


def test_without_yes_a_non_terminal_receiver_refuses_before_joining(relay_server, tmp_path) -> None:
    """Before the fix it joined the room first (here: exit 1, "no sender is waiting")."""
    result = relay_command("receive", "98765432-no-room-" + secrets.token_hex(4), "--relay", relay_server.http_url,
                           "--output", str(tmp_path), stdin="")
    assert result.returncode == 2 and "pass --yes" in result.stderr


def test_an_output_that_is_a_file_is_named_as_such(tmp_path) -> None:
    (tmp_path / "some_file").write_text("x")
    result = relay_command("receive", "1-some-code", "--yes", "--output", str(tmp_path / "some_file"),
                           "--relay", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "is a file, not a folder" in result.stderr


def test_a_missing_output_folder_is_created_and_said_so(relay_server, files, tmp_path) -> None:
    out = tmp_path / "new" / "deeper"
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(out))
    finish(sender)
    assert received.returncode == 0, received.stderr
    assert f"Created the output folder {out}" in received.stdout
    assert (out / "notes.txt").read_text() == "hello"


def test_a_folder_created_for_a_failed_transfer_is_removed_again(relay_server, tmp_path) -> None:
    out = tmp_path / "new" / "deeper"
    result = relay_command("receive", NO_ROOM, "--relay", relay_server.http_url, "--yes",
                           "--output", str(out))
    assert result.returncode == 1 and not (tmp_path / "new").exists()


def test_a_receiver_waiting_for_the_other_receivers_says_so(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, "--receivers", "2", str(files / "notes.txt"))
    code = read_code(sender)
    first = subprocess.Popen([sys.executable, "-m", "clients.cli", "receive", code, "--relay", relay_server.http_url,
                              "--yes", "--output", str(tmp_path / "a")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        lines = [first.stdout.readline() for _ in range(2)]  # returns: the line is flushed at once
        assert lines[1].startswith("Waiting for 1 more receiver(s)"), lines
        second = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output",
                               str(tmp_path / "b"))
        assert first.wait(timeout=WAIT) == 0 and second.returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=WAIT)
    finish(sender)
    assert (tmp_path / "a" / "notes.txt").read_text() == (tmp_path / "b" / "notes.txt").read_text() == "hello"


async def test_what_the_sender_writes_is_quoted_and_attributed(relay_server, tmp_path) -> None:
    """A sender could make the receiver print "relay: error: YOUR DISK IS FULL" as if it were its own words.

    In protocol 2 a sender's cancel reason is sealed; the clear text a peer can still write is an error message.
    """
    sender = await RawPeer.connect_v2(relay_server.ws_url, None, "send", receivers=1)
    hello = await sender.expect("hello")
    code = f"{hello['nameplate']}-{WORDS}"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.cli", "receive", code, "--relay", relay_server.http_url, "--yes",
        "--output", str(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await sender.expect("peer_joined")
        send_, recv_ = raw_sides(sender)
        await key_as_sender(send_, recv_, code, 1)
        await sender.expect("paired")
        await sender.send({"type": "error", "code": "write_failed",
                           "message": 'relay: error: YOUR DISK IS FULL "\x1b[2J\nrelay: error: really'})
        _, stderr = await asyncio.wait_for(receiver.communicate(), WAIT)
    finally:
        if receiver.returncode is None:
            receiver.kill()
            await receiver.wait()
        await sender.close()
    lines = stderr.decode().splitlines()
    assert receiver.returncode == 1
    assert lines == ["relay: error: the sender stopped the transfer (write_failed)",
                     '  the sender said: "relay: error: YOUR DISK IS FULL \\"\\x1b[2J\\nrelay: error: really"']


def test_text_from_a_peer_is_escaped_within_its_quotes() -> None:
    assert quote_peer_text('a"b\\c\x1b\u202e\ud800') == '"a\\"b\\\\c\\x1b\\u202e\\ud800"'
    assert quote_peer_text("x" * 1000).endswith('"...') and len(quote_peer_text("x" * 1000)) < 320


# --- what croc and magic-wormhole users reach for (issue 9 item 16) -----------------------------------------


def test_version() -> None:
    result = relay_command("--version")
    assert result.returncode == 0 and result.stdout.startswith("relay ")


def test_a_transfer_does_not_import_what_only_a_proxy_needs() -> None:
    """Start-up is a fixed cost of every transfer (issue 12): urllib.request (for NO_PROXY) and websockets'
    asyncio client (for proxy tunnels) are imported only when used."""
    probe = ("import sys; from relay.command import main; import clients.cli, clients.transfer; "
             "clients.cli.build_parser(); "
             "print(' '.join(m for m in ('urllib.request', 'websockets.asyncio.client') "
             "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def _start_up_probe(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last line of output."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# What `relay send`/`relay receive` never need: the server, its settings and its web stack; ctypes.util
# (find_library runs `ldconfig -p` in a child process at every start); python-spake2, whose import computes
# parameters for 217 M instructions (clients.pake runs the same exchange on libsodium); websockets, whose package
# imports importlib.metadata and with it email, csv and zipfile (~10 ms: only a proxy needs websockets' code, and
# the C apply_mask is loaded from its file; docs/design/speed.md section 16).
NOT_AT_START = ("relay.config", "relay.server", "relay.service", "relay.rooms", "relay.transport", "relay.web",
                "fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client", "httptools", "ctypes.util",
                "spake2", "websockets", "importlib.metadata", "email")


def test_the_client_commands_import_nothing_they_do_not_use() -> None:
    """Start-up is a fixed cost of every transfer (issue 12, docs/design/speed.md section 15)."""
    probe = ("import sys\nfrom relay.command import main\n"
             "try:\n    main(['send', '--help'])\nexcept SystemExit:\n    pass\n"
             "import relay.tuning; relay.tuning.tune_allocator()\n"
             "from clients import crypto; crypto.Pake(crypto.Role.SENDER, '7-ocean-table')\n"
             "from clients import wsclient, wsframes\n"
             "wsclient.parse_websocket_url('ws://127.0.0.1:1/ws?role=receive'); wsframes.apply_mask(b'ab', b'1234')\n"
             "assert wsframes._apply_mask_c is not None\n"
             f"print(sorted(m for m in {NOT_AT_START!r} if m in sys.modules), 'clients.transfer' in sys.modules)")
    assert _start_up_probe(probe) == "[] True"


def test_the_program_imports_the_client_with_the_collector_paused_then_frozen() -> None:
    """``relay send``/``relay receive`` as a program: the objects of start-up go to the permanent generation and the
    collector is on again; a caller passing its own arguments (tests, another program) keeps its collector."""
    probe = ("import gc, sys\nfrom relay.command import main\nsys.argv = ['relay', '{args}']\n"
             "try:\n    main({argv})\nexcept SystemExit:\n    pass\n"
             "print(gc.get_freeze_count() > 10_000, gc.isenabled())")
    assert _start_up_probe(probe.format(args="send', '--help", argv="")) == "True True"
    assert _start_up_probe(probe.format(args="", argv="['send', '--help']")) == "False True"


def test_a_weak_chosen_code_gets_a_warning(tmp_path) -> None:
    (tmp_path / "x").write_text("x")
    unreachable = f"http://127.0.0.1:{free_port()}"
    weak = relay_command("send", "--code", "abc", "x", "--relay", unreachable, cwd=tmp_path)
    assert weak.returncode == 3 and weak.stderr.startswith("relay: warning: the words abc are easy to guess")
    strong = relay_command("send", "--code", "actor-table-ocean", "x", "--relay", unreachable, cwd=tmp_path)
    assert strong.returncode == 3 and "warning" not in strong.stderr


def test_code_strength_counts_words_of_the_list_and_characters() -> None:
    assert code_strength_bits("actor-table-ocean-ring") == pytest.approx(44)
    assert code_strength_bits("actor-table") == pytest.approx(22)
    assert code_strength_bits("1234") == pytest.approx(4 * math.log2(10))
    assert code_strength_bits("k3x9-q2m8-z7w1-p0") > WEAK_CODE_BITS


def test_a_text_is_sent_and_printed(relay_server, tmp_path) -> None:
    text = "Wi-Fi password: hunter2\nsecond line \u00e9"
    sender = start_sender(relay_server.http_url, "--text", text)
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0 and sender.returncode == 0, received.stderr
    assert "Offered: a text of" in received.stdout
    assert text in received.stdout and "Received a text" in received.stdout
    assert list(tmp_path.iterdir()) == []  # shown, not saved


def test_a_text_on_a_terminal_has_its_control_characters_escaped() -> None:
    assert escape_for_terminal("line\n\ttab\x1b[2J\u202e") == "line\n\ttab\\x1b[2J\\u202e"


def test_a_text_larger_than_1_mib_is_refused_before_connecting(capsys) -> None:
    # In-process: one argument of a real command line is limited to 128 KiB on Linux.
    big = "x" * (p.MAX_TEXT_OFFER + 1)
    assert cli_main(["send", "--text", big, "--relay", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "a text is at most" in capsys.readouterr().err


def test_piped_data_goes_to_standard_output_with_output_dash(relay_server, tmp_path) -> None:
    data = os.urandom(3_000_000) + b"\x00\n\x1b"
    sender = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_server.http_url, "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdin is not None and sender.stdout is not None
    sender.stdin.write(data)
    sender.stdin.close()
    code = sender.stdout.readline().decode().split()[1]
    received = subprocess.run([sys.executable, "-m", "clients.cli", "receive", code, "--relay", relay_server.http_url,
                               "--yes", "--output", "-"], capture_output=True, timeout=WAIT, cwd=tmp_path)
    sender.wait(timeout=WAIT)
    assert received.returncode == 0 and sender.returncode == 0, received.stderr
    assert received.stdout == data  # status lines went to stderr
    assert b"Offered: data the sender piped in" in received.stderr
    assert list(tmp_path.iterdir()) == []


def test_piped_data_is_saved_as_a_file_without_output_dash(relay_server, tmp_path) -> None:
    sender = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_server.http_url, "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sender.stdin is not None
    sender.stdin.write("piped\n")
    sender.stdin.close()
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0, received.stderr
    assert (tmp_path / "stdin").read_text() == "piped\n"


def test_files_are_not_written_to_standard_output(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", "-")
    finish(sender)
    assert received.returncode == 4 and "choose a folder with --output" in received.stderr
    assert received.stdout == ""


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_mode_prints_one_event_per_line(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, "--json", str(files / "album"))
    assert sender.stdout is not None
    first = json.loads(sender.stdout.readline())
    assert first["event"] == "code" and first["link"] == f"{relay_server.http_url}/#receive={first['code']}"
    received = relay_command("receive", str(first["code"]), "--relay", relay_server.http_url, "--yes", "--json",
                             "--output", str(tmp_path))
    stdout, _ = finish(sender)
    assert received.returncode == 0 and sender.returncode == 0, received.stderr
    sent_events = json_lines(stdout)
    assert [e["event"] for e in sent_events][:2] == ["peer_joined", "started"]
    assert sent_events[-2] == {"event": "progress", "done": 2_500_000, "total": 2_500_000}
    assert sent_events[-1]["event"] == "done"
    received_events = json_lines(received.stdout)
    kinds = [e["event"] for e in received_events]
    assert kinds[:3] == ["connected", "offer", "started"] and kinds[-1] == "done"
    offer = received_events[1]
    assert offer["files"] == [{"path": "album/one.jpg", "size": 2_500_000}] and offer["dirs"] == ["album/empty"]
    assert kinds.count("progress") <= 12  # at most ten a second, plus the last


def test_json_mode_reports_an_error_with_its_exit_code(relay_server, tmp_path) -> None:
    result = relay_command("receive", NO_ROOM, "--relay", relay_server.http_url, "--yes",
                           "--json", "--output", str(tmp_path))
    assert result.returncode == 1
    (event,) = json_lines(result.stdout)
    assert event == {"event": "error", "exit": 1, "code": "room_not_found",
                     "message": "no sender is waiting with this code"}


def test_json_progress_is_limited_to_ten_events_a_second() -> None:
    now = [0.0]
    reporter = JsonReporter(parse_relay_url("ws://r"), clock=lambda: now[0])
    lines: list[str] = []
    reporter.emit = lambda event, **fields: lines.append(event)  # type: ignore[method-assign]
    reporter.started(1000)
    for done in range(1000):
        now[0] = done / 1000  # 1,000 updates over one second
        reporter.advanced(done)
    assert 9 <= lines.count("progress") <= 11


def test_what_the_sender_leaves_out_is_listed(relay_server, files, tmp_path) -> None:
    (files / "album" / "elsewhere").symlink_to(files, target_is_directory=True)  # a link to a folder is left out
    sender = start_sender(relay_server.http_url, "--skip-unreadable", str(files / "album"))
    assert sender.stdout is not None
    before_code = [sender.stdout.readline() for _ in range(2)]  # the list comes before the code: before joining
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0 and sender.returncode == 0
    assert before_code[0] == "Left out 1 path(s):\n" and "album/elsewhere" in before_code[1], before_code


def test_piped_data_written_to_a_terminal_is_escaped(relay_server, terminals) -> None:
    """Bytes from the sender could move the cursor or rewrite the screen (croc's CVE-2023-43621)."""
    sender = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_server.http_url, "-"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdin is not None and sender.stdout is not None
    sender.stdin.write(b"abc\x1b[2Jdef\x07\n")
    sender.stdin.close()
    code = sender.stdout.readline().decode().split()[1]
    receiver = terminals("receive", code, "--relay", relay_server.http_url, "--yes", "--output", "-")
    assert receiver.wait(timeout=WAIT) == 0, receiver.output
    sender.wait(timeout=WAIT)
    assert "abc\\x1b[2Jdef\\x07" in receiver.output and "\x1b" not in receiver.output
