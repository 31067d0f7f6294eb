"""What a sender offers (clients/offer.py): nothing unreadable is left out silently; mode and mtime travel.

Permission bits do not stop root, so when the tests run as root the walk over a mode-000 folder runs in a forked
child that has dropped to an unprivileged user (the tree is handed to that user first).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import protocol as p
from clients.errors import LocalFailure
from clients.offer import Unreadable, collect

NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="relay-offer-"))
    path.chmod(0o755)
    yield path
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path)


def collect_without_privileges(paths: list[Path], skip_unreadable: bool = False) -> dict[str, object]:
    """``collect`` as a user that permission bits apply to; returns what it offered, left out or refused."""

    def run() -> dict[str, object]:
        try:
            outgoing = collect(paths, skip_unreadable)  # type: ignore[arg-type]
        except Unreadable as exc:
            return {"unreadable": [path for path, _ in exc.paths], "message": str(exc)}
        return {
            "files": [f.entry.path for f in outgoing.files],
            "dirs": list(outgoing.dirs),
            "left_out": [path for path, _ in outgoing.left_out],
        }

    if os.geteuid() != 0:
        return run()
    for root in paths:
        for folder, subdirs, files in os.walk(root.parent):
            for name in [folder, *(os.path.join(folder, n) for n in subdirs + files)]:
                os.chown(name, NOBODY, NOBODY, follow_symlinks=False)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(reading)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(writing, json.dumps(run()).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        data = pipe.read()
    os.waitpid(child, 0)
    return json.loads(data)


def make_tree(base: Path) -> Path:
    udir = base / "udir"
    (udir / "inner").mkdir(parents=True)
    (udir / "inner" / "secret.txt").write_text("s")
    (udir / "ok.txt").write_text("ok")
    return udir


def test_an_unreadable_subfolder_stops_the_send_before_the_offer_and_is_named(shared_tmp: Path) -> None:
    udir = make_tree(shared_tmp)
    (udir / "inner").chmod(0o000)
    seen = collect_without_privileges([udir])
    assert seen["unreadable"] == [str(udir / "inner")]
    assert "udir/inner" in str(seen["message"]) and "--skip-unreadable" in str(seen["message"])


def test_an_unreadable_file_stops_the_send_before_the_offer(shared_tmp: Path) -> None:
    udir = make_tree(shared_tmp)
    (udir / "ok.txt").chmod(0o000)
    assert collect_without_privileges([udir])["unreadable"] == [str(udir / "ok.txt")]


def test_skip_unreadable_sends_the_rest_and_lists_what_it_skipped(shared_tmp: Path) -> None:
    udir = make_tree(shared_tmp)
    (udir / "inner").chmod(0o000)
    seen = collect_without_privileges([udir], skip_unreadable=True)
    assert seen["files"] == ["udir/ok.txt"]
    assert seen["left_out"] == [str(udir / "inner")]


def test_a_dangling_link_is_unreadable_too(tmp_path: Path) -> None:
    udir = make_tree(tmp_path)
    (udir / "gone").symlink_to(tmp_path / "missing")
    with pytest.raises(Unreadable) as caught:
        collect([udir])
    assert caught.value.paths[0][0] == str(udir / "gone")
    assert isinstance(caught.value, LocalFailure)  # the CLI maps it to exit 4


def test_links_to_folders_and_special_files_are_listed_as_left_out(tmp_path: Path) -> None:
    udir = make_tree(tmp_path)
    (udir / "loop").symlink_to(udir)
    os.mkfifo(udir / "pipe")
    outgoing = collect([udir])
    assert sorted(path for path, _ in outgoing.left_out) == [str(udir / "loop"), str(udir / "pipe")]
    assert sorted(f.entry.path for f in outgoing.files) == ["udir/inner/secret.txt", "udir/ok.txt"]


def test_names_only_windows_refuses_are_offered(tmp_path: Path) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    for name in ("aux.c", "a:b.txt", "what?.txt", "trailing."):
        (folder / name).write_text(name)
    assert sorted(f.entry.path for f in collect([folder]).files) == [
        "names/a:b.txt", "names/aux.c", "names/trailing.", "names/what?.txt"
    ]


def test_case_twins_on_a_case_sensitive_system_cannot_be_sent_together(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "Docs").mkdir()
    (tmp_path / "docs" / "a").write_text("a")
    (tmp_path / "Docs" / "b").write_text("b")
    with pytest.raises(LocalFailure, match="two names"):
        collect([tmp_path])


def test_the_executable_bit_and_mtime_are_offered(tmp_path: Path) -> None:
    script, data = tmp_path / "run.sh", tmp_path / "data.txt"
    script.write_text("#!/bin/sh\n")
    data.write_text("x")
    script.chmod(0o755)
    data.chmod(0o644)
    os.utime(script, (1_000_000_000, 1_000_000_000))
    entries = {f.entry.path: f.entry for f in collect([script, data]).files}
    assert entries["run.sh"] == p.FileEntry("run.sh", 10, 1_000_000_000, True)
    assert entries["data.txt"].exec is False and entries["data.txt"].mtime == int(data.stat().st_mtime)
