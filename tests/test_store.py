"""The receiver's folder (clients/store.py): name mapping, all-or-nothing commits, bounded descriptors, metadata.

Real files on disk throughout; failures are made real too (a folder planted where a file must go, a link planted
where a folder was), never by patching the os module.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.errors import LocalFailure
from clients.store import Destination, local_name, local_path

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (hidden ones included) mapped to its bytes, ``None`` for folders."""
    return {
        path.relative_to(root).as_posix(): (None if path.is_dir() else path.read_bytes())
        for path in sorted(root.rglob("*"))
    }


def offer_of(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> p.Offer:
    return p.Offer(tuple(p.FileEntry(path, len(data)) for path, data in files.items()), dirs)


async def receive_into(destination: Destination, offer: p.Offer, contents: list[bytes]) -> None:
    """What the receiver does between accepting and ``done``: every part written, verified and closed."""
    destination.check(offer)
    destination.make_dirs(offer.dirs)
    for entry, data in zip(offer.files, contents, strict=True):
        part = await destination.open_part(entry)
        if data:  # as the receiver's writer thread does: pwrite at offsets of the part's descriptor
            fd, _ = destination.part_fd(part)
            os.pwrite(fd, data, 0)
        await destination.finish(part)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, windows",
    [
        ("plain.txt", "plain.txt"),
        ("a:b.txt", "a_b.txt"),
        ("what?.txt", "what_.txt"),
        ('<>:"|?*', "_______"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("aux.c", "aux_.c"),
        ("Lpt9.tar.gz", "Lpt9_.tar.gz"),
        ("COM1 .txt", "COM1_ .txt"),
        ("com\u00b9", "com\u00b9_"),
        ("conout$", "conout$_"),
        ("trailing.", "trailing._"),
        ("trailing ", "trailing _"),
        ("nul.", "nul_._"),
        ("con-fig", "con-fig"),
        ("com0", "com0"),
        ("ünïcödé名前", "ünïcödé名前"),
    ],
)
def test_names_windows_refuses_are_mapped_by_the_documented_rule(name: str, windows: str) -> None:
    assert local_name(name, "win32") == windows
    assert local_name(name, "linux") == name
    assert local_name(name, "darwin") == name


def test_a_path_is_mapped_segment_by_segment() -> None:
    assert local_path("aux/a:b/trailing./x", "win32") == "aux_/a_b/trailing._/x"
    assert local_path("aux/a:b/trailing./x", "linux") == "aux/a:b/trailing./x"


async def test_mapped_names_are_written_and_listed(tmp_path: Path) -> None:
    destination = Destination(tmp_path, platform="win32")
    offer = offer_of({"d:x/aux.c": b"1", "ok.txt": b"2", "end.": b"3"}, ("e?",))
    await receive_into(destination, offer, [b"1", b"2", b"3"])
    destination.commit()
    assert tree(tmp_path) == {"d_x": None, "d_x/aux_.c": b"1", "e_": None, "end._": b"3", "ok.txt": b"2"}
    assert destination.mappings == [("d:x/aux.c", "d_x/aux_.c"), ("end.", "end._"), ("e?", "e_")]


async def test_on_linux_such_names_are_written_as_they_are(tmp_path: Path) -> None:
    destination = Destination(tmp_path, platform="linux")
    await receive_into(destination, offer_of({"aux.c": b"1", "a:b": b"2"}), [b"1", b"2"])
    destination.commit()
    assert tree(tmp_path) == {"a:b": b"2", "aux.c": b"1"} and destination.mappings == []


@pytest.mark.parametrize(
    "files", [{"a:b": b"1", "a_b": b"2"}, {"con": b"1", "CON_": b"2"}, {"x/a?": b"1", "x/A_": b"2"}]
)
def test_names_that_collide_once_mapped_are_refused_before_accepting(tmp_path: Path, files: dict[str, bytes]) -> None:
    with pytest.raises(LocalFailure) as failure:
        Destination(tmp_path, platform="win32").check(offer_of(files))
    assert failure.value.code is ErrorCode.UNSAFE_PATH
    assert tree(tmp_path) == {}


# --- all or nothing ------------------------------------------------------------------------------------------


async def test_a_commit_that_fails_halfway_leaves_no_final_name(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_bytes(b"mine")
    before = tree(tmp_path)
    files = {"a.txt": b"1", "new/b.txt": b"2", "new/deeper/c.txt": b"3", "d.txt": b"4", "e.txt": b"5"}
    destination = Destination(tmp_path)
    await receive_into(destination, offer_of(files), list(files.values()))
    (tmp_path / "d.txt").mkdir()  # the 4th rename now fails: a folder appeared under its name
    with pytest.raises(LocalFailure) as failure:
        destination.commit()
    assert failure.value.code is ErrorCode.FILE_EXISTS
    await destination.discard()
    assert tree(tmp_path) == {**before, "d.txt": None}


async def test_a_failed_commit_under_overwrite_puts_replaced_files_back(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"old a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"old b")
    before = tree(tmp_path)
    files = {"a.txt": b"new a", "sub/b.txt": b"new b", "sub/c.txt": b"new c", "z.txt": b"new z"}
    destination = Destination(tmp_path, overwrite=True)
    await receive_into(destination, offer_of(files), list(files.values()))
    (tmp_path / "z.txt").mkdir()
    (tmp_path / "z.txt" / "inside").write_bytes(b"")  # replacing a folder that is not empty fails
    with pytest.raises(LocalFailure):
        destination.commit()
    await destination.discard()
    assert tree(tmp_path) == {**before, "z.txt": None, "z.txt/inside": b""}


async def test_a_successful_overwrite_leaves_no_kept_copy(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"old")
    destination = Destination(tmp_path, overwrite=True)
    await receive_into(destination, offer_of({"a.txt": b"new"}), [b"new"])
    destination.commit()
    assert tree(tmp_path) == {"a.txt": b"new"}


async def test_a_discarded_transfer_removes_the_folders_it_made_and_only_those(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    before = tree(tmp_path)
    files = {f"old/new{i % 20}/deep/f{i}": b"x" for i in range(200)}
    destination = Destination(tmp_path)
    await receive_into(destination, offer_of(files, ("empty/one", "old/empty")), [b"x"] * 200)
    await destination.discard()
    assert tree(tmp_path) == before


async def test_a_folder_swapped_for_a_link_before_the_commit_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    destination = Destination(out)
    await receive_into(destination, offer_of({"a": b"1", "sub/b": b"2"}), [b"1", b"2"])
    destination.close()
    (out / "sub").rename(tmp_path / "moved")
    (out / "sub").symlink_to(elsewhere)
    with pytest.raises(LocalFailure) as failure:
        destination.commit()
    assert failure.value.code is ErrorCode.UNSAFE_PATH
    assert not (out / "a").exists() and tree(elsewhere) == {}


# --- descriptors ---------------------------------------------------------------------------------------------


def test_a_folder_of_1500_files_is_received_under_a_64_descriptor_limit(tmp_path: Path) -> None:
    source, output = tmp_path / "many", tmp_path / "out"
    for i in range(1500):
        path = source / f"d{i % 30:02d}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(i))
    output.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "many_files.py"), str(source), str(output), "64"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "received 1500 file(s)" in done.stdout
    assert sum(1 for path in output.rglob("*") if path.is_file()) == 1500


@pytest.mark.slow
async def test_20000_empty_files_use_a_constant_number_of_descriptors(tmp_path: Path) -> None:
    files = [p.FileEntry(f"d{i % 40}/sub{i % 7}/f{i}", 0) for i in range(20_000)]
    offer = p.Offer(tuple(files))
    destination = Destination(tmp_path)
    destination.check(offer)
    baseline = open_descriptors()
    most = baseline
    for index, entry in enumerate(offer.files):
        await destination.finish(await destination.open_part(entry))
        if index % 500 == 0:
            most = max(most, open_descriptors())
    destination.commit()
    assert most - baseline <= 4
    assert open_descriptors() <= baseline
    assert sum(len(names) for _, _, names in os.walk(tmp_path)) == 20_000


async def test_a_failure_among_many_files_leaves_nothing_behind(tmp_path: Path) -> None:
    offer = p.Offer(tuple(p.FileEntry(f"d{i % 20}/f{i}", 0) for i in range(5_000)))
    destination = Destination(tmp_path)
    destination.check(offer)
    for entry in offer.files[:4_000]:
        await destination.finish(await destination.open_part(entry))
    await destination.discard()
    assert tree(tmp_path) == {}


# --- metadata ------------------------------------------------------------------------------------------------


async def test_the_executable_bit_and_mtime_are_applied_on_commit(tmp_path: Path) -> None:
    offer = p.Offer((p.FileEntry("run.sh", 2, 1_000_000_000, True), p.FileEntry("data", 1, 2_000_000_000)))
    destination = Destination(tmp_path)
    await receive_into(destination, offer, [b"#!", b"x"])
    destination.commit()
    umask = os.umask(0o022)
    os.umask(umask)
    script, data = (tmp_path / "run.sh").stat(), (tmp_path / "data").stat()
    assert stat.S_IMODE(script.st_mode) == 0o755 & ~umask
    assert stat.S_IMODE(data.st_mode) == 0o644 & ~umask
    assert (script.st_mtime, data.st_mtime) == (1_000_000_000, 2_000_000_000)


async def test_without_an_mtime_a_file_is_dated_now_and_never_gets_special_bits(tmp_path: Path) -> None:
    destination = Destination(tmp_path)
    await receive_into(destination, p.Offer((p.FileEntry("a", 1, None, True),)), [b"x"])
    destination.commit()
    mode = (tmp_path / "a").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    assert abs((tmp_path / "a").stat().st_mtime - time.time()) < 3600
