"""The receiver's parts with direct writes (clients/store.py ``Destination.target``, clients/diskio.py): which part
gets an ``O_DIRECT`` descriptor, that it is closed with the part, and that everything the store promises holds
with it (a part says what it holds, resume reads the part back, nothing under a final name unless verified).
Real files on disk throughout; the recording ``os.pwrite`` of tests/test_diskio_direct.py tells which descriptor
each write went through.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import sys
from pathlib import Path

import pytest

from relay import protocol as p
from clients import diskio
from clients.diskio import DIRECT_FROM, FileWriter, preallocate
from clients.store import STATE_NAME, Destination, Part
from tests.test_diskio_direct import BOUND, MIB, Recorder, check_direct_calls

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT as Linux does it")


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def direct_descriptors() -> list[int]:
    """The process's open descriptors that have O_DIRECT."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if is_direct(int(name)):
                found.append(int(name))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found


def refusing(name: str, flags: int) -> int:
    """An opener as on a file system without direct I/O."""
    raise OSError(errno.EINVAL, "Invalid argument", name)


def offer_of(*sizes: int) -> p.Offer:
    return p.Offer(tuple(p.FileEntry(f"d/f{index}.bin", size, mtime=1_700_000_000)
                         for index, size in enumerate(sizes)))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()
    monkeypatch.setattr(diskio.os, "pwrite", recording)
    return recording


def direct_or_skip(destination: Destination, part: Part) -> None:
    if not destination.target(part).writes_direct:
        pytest.skip(f"the file system of {destination.root} refuses O_DIRECT")


async def test_a_big_part_gets_an_o_direct_descriptor_that_closes_with_it(tmp_path: Path) -> None:
    for ending in ("finish", "discard", "keep"):
        root = tmp_path / ending
        root.mkdir()
        destination = Destination(root, direct=True)
        offer = offer_of(DIRECT_FROM, DIRECT_FROM - 1)
        destination.check(offer)
        big = await destination.open_part(offer.files[0])
        target = destination.target(big)
        if target.direct < 0:
            pytest.skip(f"the file system of {root} refuses O_DIRECT")
        assert is_direct(target.direct) and not is_direct(target.fd)
        assert os.path.samestat(os.fstat(target.direct), os.fstat(target.fd))
        assert destination.target(big) is target  # made once per part
        small = await destination.open_part(offer.files[1])
        assert destination.target(small).direct == -1  # too small to matter: the page cache only
        assert direct_descriptors() == [target.direct]
        if ending == "finish":
            await destination.finish(big)
            await destination.finish(small)
            destination.close()
        elif ending == "discard":
            await destination.discard()
        else:
            await destination.keep()
        assert direct_descriptors() == []  # the O_DIRECT descriptor went with its part
        assert target.direct == -1


async def test_no_o_direct_descriptor_where_the_machine_or_the_file_system_says_no(tmp_path: Path) -> None:
    offer = offer_of(DIRECT_FROM)
    for destination in (Destination(tmp_path / "off", direct=False),
                        Destination(tmp_path / "refused", direct=True, direct_opener=refusing)):
        destination.root.mkdir()
        destination.check(offer)
        part = await destination.open_part(offer.files[0])
        target = destination.target(part)
        assert target.direct == -1 and not target.writes_direct
        await destination.discard()


def test_the_choice_per_machine_is_read_when_a_destination_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for chosen in (True, False):
        monkeypatch.setattr(diskio, "DIRECT_WRITES", chosen)
        assert Destination(tmp_path).direct is chosen


async def write(destination: Destination, part: Part, data: bytes, start: int, end: int) -> None:
    """What the receiver's chunk loop does for bytes ``start`` to ``end`` of one file (1 MiB chunks from 0, the
    chunk holding ``start`` written from there)."""
    writer = FileWriter(MIB, depth=4)
    try:
        if part.entry.size >= MIB:
            preallocate(destination.part_fd(part)[0], start, part.entry.size)
        for offset in range(start - start % MIB, end, MIB):
            length = min(MIB, part.entry.size - offset)
            buffer = await asyncio.wait_for(writer.acquire(), BOUND)
            buffer[:length] = data[offset:offset + length]
            first = max(0, start - offset)
            writer.submit(destination.target(part), offset + first, buffer, min(length, end - offset), first)
        await asyncio.wait_for(writer.flush(), BOUND)
    finally:
        writer.close()


async def test_after_direct_writes_a_resume_reads_the_right_digest_and_writes_on_from_an_odd_count(
        tmp_path: Path, recorder: Recorder) -> None:
    data = os.urandom(2 * DIRECT_FROM + 4321)
    offer = offer_of(len(data))
    have = 5 * MIB + 1000  # the receiver was dropped with this much written (chunk by chunk, so mid-chunk here)

    first = Destination(tmp_path, direct=True)
    first.check(offer)
    part = await first.open_part(offer.files[0])
    direct_or_skip(first, part)
    await write(first, part, data, 0, have)
    first.checkpoint(part, have)
    part_path = tmp_path / "d" / part.part_name
    assert os.stat(part_path).st_size == have  # preallocated, written direct: the part says what it holds
    await first.keep()
    assert len(recorder.direct()) >= 5
    del first

    second = Destination(tmp_path, direct=True)
    held = second.load_state()
    second.check(offer)
    claims, changed = second.claims(offer, held)
    assert changed == [] and [(claim.have, claim.sha256) for claim in claims] == [
        (have, hashlib.sha256(data[:have]).hexdigest())]  # read back from disk after direct writes
    calls = len(recorder.calls)
    part = await second.reopen_part(offer.files[0], claims[0].part, have)
    assert second.target(part).writes_direct
    await write(second, part, data, have, len(data))
    assert len(recorder.direct()) > 5 and recorder.calls[calls].offset == have  # a buffered head first
    check_direct_calls(recorder.direct())
    assert not (tmp_path / "d" / "f0.bin").exists()  # nothing under its final name before it is verified
    await second.finish(part)
    second.commit()
    assert (tmp_path / "d" / "f0.bin").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "d")) == ["f0.bin"] and not (tmp_path / STATE_NAME).exists()
