"""clients.diskio's direct writes: the aligned middle of each chunk through an ``O_DIRECT`` descriptor of the part,
the rest through the page cache, on real files.

Which descriptor a write went through is read from the descriptor itself (``fcntl(F_GETFL)`` in a recording
``os.pwrite``); a file system that refuses ``O_DIRECT`` is played by that recorder answering ``EINVAL``, as the
kernel does (the only thing faked: the kernel's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import diskio
from clients.diskio import ALIGN, FileWriter, Target, WriteFailed, open_direct

BOUND = 20.0
MIB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT as Linux does it")


@dataclass(frozen=True)
class Call:
    """One ``os.pwrite``: through an O_DIRECT descriptor or not, where in the file, how long, where in memory."""

    direct: bool
    offset: int
    length: int
    address: int


class Recorder:
    """Stands in for ``os.pwrite``: records each call, then writes for real (or, for an O_DIRECT descriptor, says
    ``refuse`` as a file system without direct I/O or a full disk would)."""

    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[Call] = []
        self.refuse = refuse
        self._real = os.pwrite

    def __call__(self, fd: int, data: memoryview, offset: int) -> int:
        import fcntl  # Linux only, as the module

        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        view = memoryview(data)
        address = ctypes.addressof(ctypes.c_char.from_buffer(view)) if direct else 0
        self.calls.append(Call(direct, offset, len(view), address))
        if direct and self.refuse is not None:
            raise OSError(self.refuse, os.strerror(self.refuse))
        return self._real(fd, data, offset)

    def direct(self) -> list[Call]:
        return [call for call in self.calls if call.direct]

    def buffered_bytes(self) -> int:
        return sum(call.length for call in self.calls if not call.direct)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recording = Recorder()
    monkeypatch.setattr(diskio.os, "pwrite", recording)
    yield recording


def part(path: Path) -> tuple[int, int]:
    """A part as the store opens it, and its O_DIRECT descriptor (the test is skipped where the file system here
    refuses one: then there is nothing direct to check)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    direct = open_direct(fd)
    if direct < 0:
        os.close(fd)
        pytest.skip(f"the file system of {path.parent} refuses O_DIRECT")
    return fd, direct


@contextlib.contextmanager
def writing(path: Path, buffer_size: int, depth: int) -> Iterator[tuple[FileWriter, int, int]]:
    """A new part at ``path`` (:func:`part`) and a writer for it; the writer closed, then both descriptors."""
    fd, direct = part(path)
    writer = FileWriter(buffer_size, depth=depth)
    try:
        yield writer, fd, direct
    finally:
        writer.close()
        os.close(direct)
        os.close(fd)


async def write_chunks(writer: FileWriter, target: Target, data: bytes, chunk: int, start: int = 0) -> None:
    """Write ``data[start:]`` in the plan's chunks of ``chunk`` bytes from offset 0, as the receiver does: the chunk
    that holds ``start`` is written from ``start`` on (``first``), as after a resume from an odd count."""
    for offset in range(start - start % chunk, len(data), chunk):
        piece = data[offset:offset + chunk]
        buffer = await asyncio.wait_for(writer.acquire(), BOUND)
        buffer[:len(piece)] = piece
        first = max(0, start - offset)
        writer.submit(target, offset + first, buffer, len(piece), first)
    await asyncio.wait_for(writer.flush(), BOUND)


def check_direct_calls(calls: list[Call]) -> None:
    for call in calls:
        assert call.offset % ALIGN == 0 and call.length % ALIGN == 0 and call.address % ALIGN == 0, call


async def test_the_aligned_bytes_go_through_the_o_direct_descriptor_and_the_tail_through_the_page_cache(
        tmp_path: Path, recorder: Recorder) -> None:
    data = os.urandom(3 * MIB + 5000)  # three whole chunks and a tail that is not a multiple of 4096
    path = tmp_path / "part"
    with writing(path, MIB, 4) as (writer, fd, direct):
        target = Target(fd, str(path), direct)
        await write_chunks(writer, target, data, MIB)
    assert path.read_bytes() == data
    check_direct_calls(recorder.direct())
    assert sum(call.length for call in recorder.direct()) == 3 * MIB + 4096  # all but the last 904 bytes
    assert recorder.buffered_bytes() == 904
    assert not target.refused


@pytest.mark.parametrize("chunk, start", [
    (MIB, 0),
    (MIB, 5 * 4096 + 100),  # a resume from an odd count: a buffered head, then direct again
    (4096, 3),  # a resume 3 bytes in: the rest of that chunk buffered, then direct
    (MIB + 1, 0),  # odd chunk sizes: offset and address aligned together only at offset 0, the rest buffered
    (3 * 4096 + 17, 0),
    (5000, 0),
])
async def test_odd_chunk_sizes_and_resumed_starts_land_byte_for_byte(
        tmp_path: Path, recorder: Recorder, chunk: int, start: int) -> None:
    data = os.urandom(2 * MIB + 12345)
    path = tmp_path / "part"
    with writing(path, chunk, 3) as (writer, fd, direct):
        os.pwrite(fd, data[:start], 0)  # held from the earlier attempt
        await write_chunks(writer, Target(fd, str(path), direct), data, chunk, start)
    assert path.read_bytes() == data
    check_direct_calls(recorder.direct())
    if chunk % ALIGN == 0:  # every aligned page from the first after ``start`` to the last whole one went direct
        assert sum(call.length for call in recorder.direct()) == len(data) // ALIGN * ALIGN - -(-start // ALIGN) * ALIGN


async def test_a_write_the_file_system_refuses_is_done_buffered_and_the_rest_of_the_file_too(
        tmp_path: Path, recorder: Recorder) -> None:
    recorder.refuse = errno.EINVAL  # as a file system without direct I/O answers the first direct write
    data = os.urandom(4 * MIB + 77)
    path = tmp_path / "part"
    with writing(path, MIB, 2) as (writer, fd, direct):
        target = Target(fd, str(path), direct)
        await write_chunks(writer, target, data, MIB)
    assert path.read_bytes() == data  # nothing lost, silently
    assert target.refused and not target.writes_direct
    assert len(recorder.direct()) == 1  # asked once; every later chunk went straight to the page cache
    assert recorder.buffered_bytes() == len(data)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
async def test_a_full_disk_or_an_io_error_on_a_direct_write_is_write_failed_as_before(
        tmp_path: Path, recorder: Recorder, error: int) -> None:
    recorder.refuse = error
    path = tmp_path / "part"
    with writing(path, MIB, 2) as (writer, fd, direct):
        target = Target(fd, "offered/name.bin", direct)
        buffer = await writer.acquire()
        writer.submit(target, 0, buffer, MIB)
        with pytest.raises(WriteFailed) as caught:
            await asyncio.wait_for(writer.flush(), BOUND)
    assert caught.value.errno == error and caught.value.filename == "offered/name.bin"
    assert caught.value.strerror == os.strerror(error)
    assert not target.refused  # not a refusal of direct I/O: the transfer fails, as it did with buffered writes


async def test_a_buffer_from_elsewhere_is_never_written_direct(tmp_path: Path, recorder: Recorder) -> None:
    """Only the pool's buffers are known to be aligned in memory."""
    path = tmp_path / "part"
    with writing(path, MIB, 1) as (writer, fd, direct):
        foreign = memoryview(bytearray(os.urandom(MIB)))
        writer.submit(Target(fd, str(path), direct), 0, foreign, MIB)
        await asyncio.wait_for(writer.flush(), BOUND)
    assert path.read_bytes() == foreign and recorder.direct() == []


def resident() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_the_pool_is_page_aligned_memory_that_is_not_touched_up_front() -> None:
    before = resident()
    big = FileWriter(MIB, depth=32)  # 32 MiB of buffers: zeroed bytearrays would all be resident now
    assert resident() - before < 8 * MIB
    big.close()
    writer = FileWriter(MIB + 1, depth=3)
    try:
        buffers = [await writer.acquire() for _ in range(3)]
        for buffer in buffers:
            assert len(buffer) == MIB + 1 and not buffer.readonly
            assert ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % ALIGN == 0
        assert all(byte == 0 for byte in buffers[2][-4096:])  # anonymous memory: zero when first read
    finally:
        writer.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_direct_reopens_the_same_file_or_gives_minus_one(tmp_path: Path) -> None:
    path = tmp_path / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def refusing(name: str, flags: int) -> int:
            raise OSError(errno.EINVAL, "Invalid argument", name)

        def elsewhere(name: str, flags: int) -> int:  # a descriptor of another file: never written through
            return os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT, 0o644)

        before = open_descriptors()
        assert open_direct(fd, refusing) == -1
        assert open_direct(fd, elsewhere) == -1
        assert open_descriptors() == before  # the wrong one was closed again
        direct = open_direct(fd)
        if direct < 0:
            pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
        try:
            import fcntl

            assert fcntl.fcntl(direct, fcntl.F_GETFL) & os.O_DIRECT
            assert os.path.samestat(os.fstat(direct), os.fstat(fd))
        finally:
            os.close(direct)
    finally:
        os.close(fd)


def test_direct_writes_only_on_linux_where_free_memory_goes_back_to_the_host() -> None:
    assert diskio.direct_writes(True, "linux")
    assert not diskio.direct_writes(False, "linux")  # the page cache absorbs a burst faster than a slow disk
    assert not diskio.direct_writes(True, "darwin") and not diskio.direct_writes(True, "win32")
    assert diskio.DIRECT_WRITES == diskio.direct_writes(diskio.free_pages_go_to_the_host())
