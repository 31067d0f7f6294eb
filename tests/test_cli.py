"""The ``relay`` command as a person or a script uses it: real subprocesses, exit codes and one-line errors."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

WAIT = 120  # seconds a CLI run may take before the test fails


def relay_command(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True,
                          timeout=WAIT, input=stdin, env=env, cwd=cwd)


def start_sender(relay_url: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "clients.cli", "send", "--relay", relay_url, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process


def read_code(sender: subprocess.Popen[str]) -> str:
    """The first line is ``Code: ...``, printed and flushed at once even though stdout is a pipe."""
    assert sender.stdout is not None
    line = sender.stdout.readline()
    assert line.startswith("Code: "), line
    return line.split()[1]


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
    assert sender.returncode == 1 and "files would be overwritten" in sender_err and "notes.txt" not in sender_err
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_overwrite_replaces_an_existing_file(relay_server, files, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("old")
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--yes", "--overwrite",
                             "--output", str(tmp_path))
    finish(sender)
    assert received.returncode == 0 and (tmp_path / "notes.txt").read_text() == "hello"


def test_without_yes_a_non_terminal_receiver_refuses_rather_than_hang(relay_server, files, tmp_path) -> None:
    sender = start_sender(relay_server.http_url, str(files / "notes.txt"))
    code = read_code(sender)
    out = tmp_path / "out"
    out.mkdir()
    received = relay_command("receive", code, "--relay", relay_server.http_url, "--output", str(out), stdin="")
    finish(sender)
    assert received.returncode == 4 and "--yes" in received.stderr
    assert sender.returncode == 1
    assert list(out.iterdir()) == []


def test_sending_a_missing_path_exits_4_before_connecting(tmp_path) -> None:
    result = relay_command("send", str(tmp_path / "nope.txt"), "--relay", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 4 and "no such file or folder" in result.stderr


@pytest.mark.parametrize("args", [["receive", "bad/code"], ["receive", "ocean-table-actor"], ["receive"],
                                  ["send", "--code", "!!", "x"], ["send", "--receivers", "0", "x"]])
def test_bad_usage_exits_2(args: list[str], tmp_path) -> None:
    (tmp_path / "x").write_text("x")
    result = relay_command(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("relay: error:")


def test_serve_help_lists_every_setting_with_its_environment_variable() -> None:
    result = relay_command("serve", "--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--max-message", "--max-receivers", "--pairing-timeout", "--idle-timeout"):
        assert flag in result.stdout
    assert "RELAY_PORT" in result.stdout


def test_a_hostile_name_is_shown_escaped(relay_server, tmp_path) -> None:
    """Names are shown with control characters escaped (the relay refuses them anyway, but never echo raw)."""
    from clients.cli import describe_offer
    from relay import protocol as p

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
