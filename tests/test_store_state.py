"""The receiver's state file for resume by hand (clients/store.py, docs/protocol.md section 10.3): hostile input.

Whatever an earlier run, a crash or a stranger with write access to the folder left there, the state file is
read within a bound, checked field by field, and a bad one is refused whole (the receiver then warns and starts
from 0); the parts it names are opened only by their own pattern, relative to their folder, without following a
link, and only if they are regular files. Real files on disk throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from relay import protocol as p
from clients.errors import LocalFailure
from clients.store import MAX_STATE_BYTES, STATE_NAME, BadState, Destination, Held, State, parse_state
from clients.transfer import STATE_INTERVAL, STATE_PERIOD, STATE_SHARE, StatePacer

PART = ".relay-0123456789ab.part"
EARLIER = "01234567"  # the attempt that made PART


def state(*files: dict[str, Any], version: int = 2, attempt: Any = EARLIER) -> bytes:
    return json.dumps({"version": version, "attempt": attempt, "files": list(files)}).encode()


def entry(**fields: Any) -> dict[str, Any]:
    return {"path": "a/b.bin", "size": 10, "mtime": 1_700_000_000, "part": PART, "have": 4, **fields}


def test_a_good_state_file_is_read() -> None:
    assert parse_state(state(entry())) == State(EARLIER, [Held("a/b.bin", 10, 1_700_000_000, PART, 4)])
    assert parse_state(state(entry(mtime=None, have=0))).files == [Held("a/b.bin", 10, None, PART, 0)]


@pytest.mark.parametrize("raw", [
    b"not json",
    b"\xff\xfe",
    b"[]",
    state(version=1),
    state(version=3),
    state(attempt=None),
    state(attempt=12345678),
    state(attempt="0123456"),
    state(attempt="012345678"),
    state(attempt="0123456G"),
    state(attempt="ABCDEF01"),
    state(attempt="../../x1"),
    state(attempt="0123456\n"),
    state(attempt="\ud80001234567"),
    json.dumps({"version": 1, "files": {}}).encode(),
    state("not an object"),  # type: ignore[arg-type]
    state(entry(part="../../secret.txt")),
    state(entry(part="/etc/passwd")),
    state(entry(part=".relay-0123456789ab.part/../x")),
    state(entry(part=".relay-zz.part")),
    state(entry(part=7)),
    state(entry(path="../outside.bin")),
    state(entry(path="/abs.bin")),
    state(entry(path="a/\ud800.bin")),
    state(entry(path=None)),
    state(entry(have=11)),
    state(entry(have=-1)),
    state(entry(have=True)),
    state(entry(have=4.0)),
    state(entry(size=2**53)),
    state(entry(mtime=-5)),
    state(entry(mtime="yesterday")),
    b"[" * 100_000 + b"]" * 100_000,
    b" " * (MAX_STATE_BYTES + 1),
])
def test_a_state_file_that_cannot_be_trusted_is_refused_whole(raw: bytes) -> None:
    with pytest.raises(BadState):
        parse_state(raw)


def test_a_state_file_listing_too_many_files_is_refused() -> None:
    with pytest.raises(BadState):
        parse_state(json.dumps({"version": 2, "attempt": EARLIER, "files": [entry()] * (p.MAX_FILES + 1)}).encode())


def test_a_state_file_that_is_a_link_a_folder_or_a_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_bytes(state(entry()))
    (tmp_path / STATE_NAME).symlink_to(tmp_path / "elsewhere.json")
    destination = Destination(tmp_path)
    with pytest.raises(BadState):
        destination.load_state()
    (tmp_path / STATE_NAME).unlink()
    (tmp_path / STATE_NAME).mkdir()
    with pytest.raises(BadState):
        destination.load_state()
    (tmp_path / STATE_NAME).rmdir()
    os.mkfifo(tmp_path / STATE_NAME)
    with pytest.raises(BadState):  # opened without blocking, then refused: never a hang
        destination.load_state()


def test_no_state_file_is_nothing_held(tmp_path: Path) -> None:
    assert Destination(tmp_path).load_state() == []


def offer(size: int = 10, mtime: int | None = 1_700_000_000) -> p.Offer:
    return p.Offer((p.FileEntry("a/b.bin", size, mtime),))


def test_a_part_is_claimed_with_the_digest_of_its_first_bytes_read_again(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / PART).write_bytes(b"0123456789")
    destination = Destination(tmp_path)
    claims, changed = destination.claims(offer(), parse_state(state(entry())).files)
    assert [(c.file, c.have, c.sha256, c.part) for c in claims] == [(0, 4, hashlib.sha256(b"0123").hexdigest(), PART)]
    assert changed == []


def test_a_file_offered_with_another_size_or_mtime_is_changed_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / PART).write_bytes(b"0123456789")
    for changed_offer in (offer(size=11), offer(mtime=1_600_000_000)):
        claims, changed = Destination(tmp_path).claims(changed_offer, parse_state(state(entry())).files)
        assert claims == [] and changed == ["a/b.bin"]


def test_a_part_that_is_missing_short_or_a_link_is_not_claimed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    held = parse_state(state(entry())).files
    assert Destination(tmp_path).claims(offer(), held) == ([], [])  # missing
    (tmp_path / "a" / PART).write_bytes(b"012")
    assert Destination(tmp_path).claims(offer(), held) == ([], [])  # shorter than it says
    (tmp_path / "a" / PART).unlink()
    (tmp_path / "secret").write_bytes(b"0123456789")
    (tmp_path / "a" / PART).symlink_to(tmp_path / "secret")
    assert Destination(tmp_path).claims(offer(), held) == ([], [])  # a link: never followed
    (tmp_path / "a").rename(tmp_path / "real")
    (tmp_path / "a").symlink_to(tmp_path / "real")
    assert Destination(tmp_path).claims(offer(), held) == ([], [])  # a linked folder: never gone through


async def test_a_reopened_part_is_cut_to_what_the_sender_agreed_and_written_on(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / PART).write_bytes(b"0123xxxxxx")  # bytes past the recorded count are not trusted
    destination = Destination(tmp_path)
    destination.check(offer())
    part = await destination.reopen_part(offer().files[0], PART, 4)
    fd, _ = destination.part_fd(part)
    os.pwrite(fd, b"456789", 4)  # as the data path's writer thread does, at the agreed offset
    await destination.finish(part)
    destination.commit()
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"0123456789"
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin"]


async def test_a_part_that_is_a_link_or_badly_named_is_never_reopened(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "secret").write_bytes(b"keep me")
    (tmp_path / "a" / PART).symlink_to(tmp_path / "secret")
    destination = Destination(tmp_path)
    with pytest.raises(LocalFailure):
        await destination.reopen_part(offer().files[0], PART, 4)
    with pytest.raises(LocalFailure):
        await destination.reopen_part(offer().files[0], "../secret", 4)
    assert (tmp_path / "secret").read_bytes() == b"keep me"


async def test_the_state_file_follows_the_parts_and_is_gone_after_commit_or_discard(tmp_path: Path) -> None:
    for ending in ("commit", "discard"):
        root = tmp_path / ending
        root.mkdir()
        destination = Destination(root)
        destination.check(offer())
        part = await destination.open_part(offer().files[0])
        fd, _ = destination.part_fd(part)
        os.pwrite(fd, b"0123", 0)
        destination.checkpoint(part, 4)
        saved = parse_state((root / STATE_NAME).read_bytes())
        assert saved == State(destination.attempt, [Held("a/b.bin", 10, 1_700_000_000, part.part_name, 4)])
        assert (root / "a" / part.part_name).read_bytes() == b"0123"
        if ending == "commit":
            os.pwrite(fd, b"456789", 4)
            await destination.finish(part)
            destination.commit()
            assert sorted(os.listdir(root)) == ["a"]
        else:
            await destination.discard()
            assert sorted(os.listdir(root)) == []


# --- When the receiver records its state (clients.transfer.StatePacer): a pure rule, the time is passed in ---

MIB = 1024 * 1024


def test_the_state_is_not_recorded_before_a_mib_was_received_even_at_a_file_end() -> None:
    pacer = StatePacer(written=0, at=0.0)
    assert not pacer.due(STATE_INTERVAL - 1, now=100.0, file_ended=True)


def test_the_state_is_recorded_at_most_every_half_second_while_a_file_streams() -> None:
    """Recording drains the writer: once per 1 MiB chunk it stopped receiving while the disk caught up."""
    pacer = StatePacer(written=0, at=10.0)
    assert not pacer.due(64 * MIB, now=10.0 + STATE_PERIOD / 2, file_ended=False)
    assert pacer.due(64 * MIB, now=10.0 + STATE_PERIOD, file_ended=False)
    pacer.wrote(64 * MIB, now=10.0 + STATE_PERIOD, size=200)
    assert not pacer.due(128 * MIB, now=10.0 + 1.5 * STATE_PERIOD, file_ended=False)


def test_a_file_that_ends_is_recorded_at_once_so_a_stalled_receiver_has_recorded_it() -> None:
    pacer = StatePacer(written=0, at=10.0)
    assert pacer.due(3 * MIB, now=10.0, file_ended=True)


def test_many_small_files_are_recorded_after_sixteen_times_the_state_files_size() -> None:
    """A state file listing many parts is big: it is rewritten after at most 1/16 of its size in new bytes."""
    pacer = StatePacer(written=0, at=0.0)
    pacer.wrote(MIB, now=1.0, size=MIB)
    assert not pacer.due(MIB + STATE_SHARE * MIB - 1, now=100.0, file_ended=True)
    assert pacer.due(MIB + STATE_SHARE * MIB, now=100.0, file_ended=True)
