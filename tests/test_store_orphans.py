"""No orphan left by a killed attempt (clients/store.py, docs/protocol.md section 10.3, issue 11).

An attempt names every temporary file it makes (parts, backups, the state file's temporaries) from its attempt
id, and the state file names the attempt before its first part exists. So whatever the moment a receiver is
killed, the next attempt into the same folder finds what it left by that id and removes what it does not take
back; and it removes nothing else: files of another attempt (even one writing into the folder right now) stay.

The first attempt runs in its own Python process and is killed with SIGKILL at the chosen point: real kills,
real files, no sockets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay import protocol as p
from clients.store import STATE_NAME, Destination, made_by, parse_state
from clients.transfer import Reporter, _earlier_attempt

ROOT = Path(__file__).resolve().parents[1]
ONE, TWO = b"first file", b"the second file"
OFFER = p.Offer((p.FileEntry("a/one.bin", len(ONE)), p.FileEntry("a/two.bin", len(TWO))))

# The first attempt: receives a/one.bin whole and records it (``one``), or not (``none``), then creates the part
# of the next file, writes some of it and is killed before any other record.
KILLED = """
import asyncio, os, signal, sys
from pathlib import Path
from relay import protocol as p
from clients.store import Destination

async def main() -> None:
    offer = p.Offer((p.FileEntry("a/one.bin", 10), p.FileEntry("a/two.bin", 15)))
    destination = Destination(Path(sys.argv[1]))
    destination.check(offer)
    destination.load_state()
    files = list(offer.files)
    if sys.argv[2] == "one":
        part = await destination.open_part(files.pop(0))
        os.pwrite(destination.part_fd(part)[0], b"first file", 0)
        await destination.finish(part)
        destination.save_state()
    part = await destination.open_part(files.pop(0))
    os.pwrite(destination.part_fd(part)[0], b"the", 0)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def killed_attempt(root: Path, received: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED, str(root), received], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def temporaries(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob(".relay-*"))


def recorded_attempt(root: Path) -> str:
    return parse_state((root / STATE_NAME).read_bytes()).attempt


class Warned(Reporter):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)


async def next_attempt(root: Path, receivers: int = 1, reporter: Reporter | None = None) -> Destination:
    """A later ``relay receive`` into ``root``, as the receive loop does it: reads the state file, takes back what
    the sender agrees to (here: every claim), receives the rest and commits."""
    destination = Destination(root)
    destination.check(OFFER)
    destination.make_dirs(OFFER.dirs)
    claims = await _earlier_attempt(destination, OFFER, receivers, reporter or Reporter())
    kept = {claim.file: claim for claim in claims}
    for index, (entry, data) in enumerate(zip(OFFER.files, (ONE, TWO), strict=True)):
        if index in kept:
            part = await destination.reopen_part(entry, kept[index].part, kept[index].have)
        else:
            part = await destination.open_part(entry)
        os.pwrite(destination.part_fd(part)[0], data[part.have:], part.have)
        await destination.finish(part)
    destination.commit()
    return destination


def received(root: Path) -> None:
    assert (root / "a" / "one.bin").read_bytes() == ONE
    assert (root / "a" / "two.bin").read_bytes() == TWO


async def test_a_part_made_before_any_record_is_removed_by_the_next_attempt(tmp_path: Path) -> None:
    killed_attempt(tmp_path, "none")
    assert len(temporaries(tmp_path / "a")) == 1  # the part it was writing, listed in no state file
    await next_attempt(tmp_path)
    received(tmp_path)
    assert temporaries(tmp_path) == []


async def test_the_next_attempt_takes_back_what_was_recorded_and_removes_the_part_that_was_not(tmp_path) -> None:
    """The flaky case of issue 11: a small file ends and is recorded, the next one's part is created, kill."""
    killed_attempt(tmp_path, "one")
    assert len(temporaries(tmp_path / "a")) == 2
    await next_attempt(tmp_path)
    received(tmp_path)
    assert temporaries(tmp_path) == []


async def test_with_several_receivers_nothing_is_taken_back_and_nothing_is_left(tmp_path: Path) -> None:
    killed_attempt(tmp_path, "one")
    await next_attempt(tmp_path, receivers=2)
    received(tmp_path)
    assert temporaries(tmp_path) == []


async def test_a_state_temporary_left_by_a_kill_before_its_rename_is_removed(tmp_path: Path) -> None:
    killed_attempt(tmp_path, "one")
    attempt = recorded_attempt(tmp_path)
    (tmp_path / f".relay-state-{attempt}.tmp").write_bytes(b'{"version":2,"att')  # killed halfway through
    await next_attempt(tmp_path)
    received(tmp_path)
    assert temporaries(tmp_path) == []


async def test_an_attempt_killed_in_its_first_record_leaves_a_temporary_the_next_one_finds(tmp_path) -> None:
    """The first record of an attempt is written under a name of the attempt the state file still names."""
    killed_attempt(tmp_path, "one")
    first = recorded_attempt(tmp_path)
    second = Destination(tmp_path)
    second.check(OFFER)
    second.load_state()
    second.save_state()  # a record as the second attempt would write it ...
    state = (tmp_path / STATE_NAME).read_bytes()
    (tmp_path / STATE_NAME).write_bytes(json.dumps({**json.loads(state), "attempt": first}).encode())
    (tmp_path / f".relay-state-{first}.tmp").write_bytes(state[:20])  # ... had it been killed before its rename
    del second
    await next_attempt(tmp_path)
    assert temporaries(tmp_path) == []


async def test_files_of_another_attempt_or_of_no_recorded_one_are_never_removed(tmp_path: Path) -> None:
    killed_attempt(tmp_path, "none")
    attempt = recorded_attempt(tmp_path)
    strangers = {
        "a/.relay-89abcdef0000.part": b"another attempt's part",
        "a/.relay-0123456789ab.part": b"a part no state file names",
        "a/.relay-89abcdef0001.old": b"another attempt's backup",
        ".relay-state-89abcdef.tmp": b"another attempt's state, being written",
        f"a/.relay-{attempt}.part": b"not a name an attempt makes",
        f"a/.relay-{attempt}0000.part.keep": b"nor this",
        f"a/.relay-{attempt}0000000000.part": b"nor this (too long)",
        f"a/{attempt}0000.part": b"the user's own",
    }
    for name, data in strangers.items():
        (tmp_path / name).write_bytes(data)
    await next_attempt(tmp_path)
    received(tmp_path)
    for name, data in strangers.items():
        assert (tmp_path / name).read_bytes() == data
    assert len(temporaries(tmp_path)) == len(strangers) - 1  # the killed attempt's own part is gone


async def test_an_attempt_writing_into_the_same_folder_now_keeps_its_part_and_its_state(tmp_path: Path) -> None:
    """Two ``relay receive`` into one folder at once: the later one neither reads nor writes the state file."""
    other = Destination(tmp_path)
    other.check(p.Offer((p.FileEntry("a/other.bin", 5),)))
    other.load_state()
    part = await other.open_part(p.FileEntry("a/other.bin", 5))
    os.pwrite(other.part_fd(part)[0], b"other", 0)
    state = (tmp_path / STATE_NAME).read_bytes()
    await next_attempt(tmp_path)
    received(tmp_path)
    assert (tmp_path / STATE_NAME).read_bytes() == state
    assert (tmp_path / "a" / part.part_name).read_bytes() == b"other"
    await other.finish(part)
    other.commit()
    assert (tmp_path / "a" / "other.bin").read_bytes() == b"other"
    assert temporaries(tmp_path) == []


async def test_an_attempt_that_ends_before_reading_the_state_file_leaves_it_and_its_parts(tmp_path: Path) -> None:
    """A wrong code (or a declined offer) ends an attempt before it looks at the state file: the earlier
    attempt's record and parts stay, to be resumed by the next one."""
    killed_attempt(tmp_path, "one")
    before = {name: (tmp_path / name).read_bytes() for name in temporaries(tmp_path)}
    wrong = Destination(tmp_path)
    wrong.check(OFFER)
    await wrong.discard()
    assert {name: (tmp_path / name).read_bytes() for name in temporaries(tmp_path)} == before
    assert (tmp_path / STATE_NAME).exists()


@pytest.mark.parametrize("attempt", ["0123456", "0123456G", "ABCDEF01", "../../ab", 12345678, None, "\ud800abcdefg"])
async def test_a_state_file_with_a_malformed_attempt_id_is_ignored_with_the_warning(tmp_path, attempt) -> None:
    killed_attempt(tmp_path, "one")
    state = json.loads((tmp_path / STATE_NAME).read_bytes())
    (tmp_path / STATE_NAME).write_bytes(json.dumps({**state, "attempt": attempt}).encode())
    parts = temporaries(tmp_path / "a")
    warned = Warned()
    await next_attempt(tmp_path, reporter=warned)
    received(tmp_path)
    assert warned.warnings == [f"ignoring {STATE_NAME} in the output folder: it has a bad attempt id"]
    assert temporaries(tmp_path / "a") == parts  # nothing named from an id it cannot trust is removed
    assert not (tmp_path / STATE_NAME).exists()  # the untrusted state file itself goes, as before


def test_the_names_an_attempt_makes_are_told_apart_from_every_other_name() -> None:
    assert made_by("0123abcd", ".relay-0123abcd0000.part")
    assert made_by("0123abcd", ".relay-0123abcd186a0.part")
    assert made_by("0123abcd", ".relay-0123abcd0001.old")
    assert made_by("0123abcd", ".relay-state-0123abcd.tmp")
    for name in (".relay-0123abcd.part", ".relay-0123abcd000.part", ".relay-0123abcd000000000.part",
                 ".relay-0123abce0000.part", ".relay-0123abcd0000.tmp", ".relay-0123abcd00G0.part",
                 ".relay-state-0123abce.tmp", ".relay-state.json", "0123abcd0000.part", ".relay-0123abcd0000.part/"):
        assert not made_by("0123abcd", name), name
    with pytest.raises(ValueError):
        made_by("../..", ".relay-../..0000.part")



async def test_a_thousand_small_files_cost_one_state_record_not_one_each(tmp_path: Path) -> None:
    """The id is recorded once, before the first part: a part created later adds no write of the state file
    (each record is a new file renamed over the last: the same inode means no record)."""
    offer = p.Offer(tuple(p.FileEntry(f"many/{i}.txt", 1) for i in range(1000)))
    destination = Destination(tmp_path)
    destination.check(offer)
    destination.load_state()
    recorded = None
    for entry in offer.files:
        part = await destination.open_part(entry)
        os.pwrite(destination.part_fd(part)[0], b"x", 0)
        await destination.finish(part)
        recorded = recorded or (tmp_path / STATE_NAME).stat().st_ino
    assert (tmp_path / STATE_NAME).stat().st_ino == recorded
    assert parse_state((tmp_path / STATE_NAME).read_bytes()).files == []
    destination.commit()
    assert temporaries(tmp_path) == [] and len(os.listdir(tmp_path / "many")) == 1000
