"""clients.diskio: one writer thread and one reader thread with fixed buffer pools, on real files."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from clients import diskio
from clients.diskio import (
    WRITE_PIECE, DiskError, FileReader, FileWriter, ReadFailed, Shrank, Target, WriteFailed, preallocate,
)

BOUND = 20.0


async def until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def test_chunks_land_at_their_offsets_in_any_order(tmp_path: Path) -> None:
    data = os.urandom(10 * 4096 + 123)
    path = tmp_path / "part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    writer = FileWriter(4096, depth=3)
    try:
        offsets = list(range(0, len(data), 4096))
        for offset in reversed(offsets):
            buffer = await asyncio.wait_for(writer.acquire(), BOUND)
            piece = data[offset:offset + 4096]
            buffer[:len(piece)] = piece
            writer.submit(Target(fd, str(path)), offset, buffer, len(piece))
        await asyncio.wait_for(writer.flush(), BOUND)
        assert writer.statistics() == {"in_flight": 0, "free": 3, "depth": 3}
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == data


async def test_a_one_mib_chunk_goes_to_the_disk_in_pieces_of_at_most_write_piece(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a VM that hands free memory back to its host, larger writes cost the receiver 2-4x the kernel time
    # (docs/design/speed.md sections 11 and 15): the piece is chosen for the machine (write_piece)
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def recording_pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(diskio.os, "pwrite", recording_pwrite)
    data = os.urandom((1 << 20) + 5)
    path = tmp_path / "part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    writer = FileWriter(len(data), depth=1)
    try:
        buffer = await asyncio.wait_for(writer.acquire(), BOUND)
        buffer[:] = data
        writer.submit(Target(fd, str(path)), 3, buffer, len(data))
        await asyncio.wait_for(writer.flush(), BOUND)
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == bytes(3) + data
    assert sum(sizes) == len(data) and max(sizes) <= WRITE_PIECE and len(sizes) == -(-len(data) // WRITE_PIECE)


def balloon(root: Path, *features: str) -> str:
    """A fake /sys/bus/virtio/drivers/virtio_balloon with one device per features string."""
    for index, bits in enumerate(features):
        (root / f"virtio{index}").mkdir(parents=True)
        (root / f"virtio{index}" / "features").write_text(bits + "\n")
    return str(root)


def test_small_pieces_only_where_free_memory_goes_back_to_the_host(tmp_path: Path) -> None:
    reporting = "0110010100000000000000000000000010000000000000000000000000000000"  # the benchmark VM's balloon
    assert diskio.free_pages_go_to_the_host(balloon(tmp_path / "a", reporting))
    assert diskio.free_pages_go_to_the_host(balloon(tmp_path / "b", "0000", reporting))
    assert not diskio.free_pages_go_to_the_host(balloon(tmp_path / "c", "0110000100"))  # a balloon, no reporting
    assert not diskio.free_pages_go_to_the_host(balloon(tmp_path / "d", "0110"))  # too short to say
    assert not diskio.free_pages_go_to_the_host(str(tmp_path / "no-balloon"))
    assert diskio.write_piece(True) == 16 * 1024 and diskio.write_piece(False) == 256 * 1024
    assert WRITE_PIECE == diskio.write_piece(diskio.free_pages_go_to_the_host())


async def test_memory_is_bounded_acquire_waits_while_every_buffer_is_in_flight(tmp_path: Path) -> None:
    writer = FileWriter(16, depth=2)
    try:
        first, second = await writer.acquire(), await writer.acquire()
        third = asyncio.ensure_future(writer.acquire())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not third.done()  # nothing came back: no buffer was written
        path = tmp_path / "f"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        first[:3] = b"abc"
        writer.submit(Target(fd, str(path)), 0, first, 3)
        assert await asyncio.wait_for(third, BOUND) is first  # the written buffer is the one handed out again
        await writer.flush()
        os.close(fd)
        assert path.read_bytes() == b"abc"
        del second
    finally:
        writer.close()


async def test_a_failed_write_surfaces_as_write_failed_with_the_path_and_errno(tmp_path: Path) -> None:
    path = tmp_path / "read-only-handle"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    writer = FileWriter(8, depth=2)
    try:
        buffer = await writer.acquire()
        writer.submit(Target(fd, str(path)), 0, buffer, 8)
        with pytest.raises(WriteFailed) as caught:
            await asyncio.wait_for(writer.flush(), BOUND)
        assert caught.value.errno == errno.EBADF and caught.value.filename == str(path)
        assert isinstance(caught.value, DiskError) and isinstance(caught.value, OSError)
        with pytest.raises(WriteFailed):  # and on every later call: the transfer cannot go on
            await writer.acquire()
    finally:
        writer.close()
        os.close(fd)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
async def test_a_full_disk_is_enospc() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    writer = FileWriter(4096, depth=2)
    try:
        buffer = await writer.acquire()
        writer.submit(Target(fd, "/dev/full"), 0, buffer, 4096)
        with pytest.raises(WriteFailed) as caught:
            await asyncio.wait_for(writer.flush(), BOUND)
        assert caught.value.errno == errno.ENOSPC
    finally:
        writer.close()
        os.close(fd)


async def read_all(reader: FileReader) -> list[bytes]:
    chunks = []
    while (chunk := await asyncio.wait_for(reader.next(), BOUND)) is not None:
        chunks.append(bytes(chunk))
    return chunks


@pytest.mark.parametrize("size, chunk", [(0, 10), (1, 10), (10, 10), (95, 10), (100000, 4096)])
async def test_the_reader_returns_the_planned_chunks(tmp_path: Path, size: int, chunk: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "source"
    path.write_bytes(data + b"tail that was not offered")
    reader = FileReader(path, size, chunk, depth=3)
    try:
        chunks = await read_all(reader)
    finally:
        reader.close()
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == ([0] if size == 0 else [min(chunk, size - i) for i in range(0, size, chunk)])
    assert await reader.next() is None


async def test_a_small_file_is_read_without_chunk_sized_buffers(tmp_path: Path) -> None:
    """One reader per file: a folder of small files must not cost depth x chunk_size bytes each."""
    path = tmp_path / "small"
    path.write_bytes(b"0123456789")
    tracemalloc.start()
    try:
        reader = FileReader(path, 10, 1 << 20, depth=4)
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    try:
        assert await read_all(reader) == [b"0123456789"]
    finally:
        reader.close()
    assert allocated < 64 * 1024


async def test_the_reader_reads_at_most_depth_chunks_ahead(tmp_path: Path) -> None:
    path = tmp_path / "source"
    path.write_bytes(os.urandom(64 * 1024))
    reader = FileReader(path, 64 * 1024, 1024, depth=4)
    try:
        first = await reader.next()
        assert first is not None
        await until(lambda: len(reader._ready) == 3, "the reader filled its other buffers")
        for _ in range(20):
            await asyncio.sleep(0.001)
        assert len(reader._ready) == 3  # one held by us, three ahead: it waits for a buffer
        assert len(await read_all(reader)) == 63
    finally:
        reader.close()


async def test_a_file_that_shrank_since_the_offer_is_a_read_failure(tmp_path: Path) -> None:
    path = tmp_path / "source"
    path.write_bytes(b"x" * 25)
    reader = FileReader(path, 40, 10, depth=2)
    try:
        with pytest.raises(Shrank, match="ended at 25 bytes"):
            await read_all(reader)
    finally:
        reader.close()


async def test_a_missing_file_is_a_read_failure(tmp_path: Path) -> None:
    with pytest.raises(ReadFailed) as caught:
        FileReader(tmp_path / "gone", 1, 1)
    assert caught.value.errno == errno.ENOENT


async def test_closing_a_reader_early_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "source"
    path.write_bytes(os.urandom(100000))
    reader = FileReader(path, 100000, 100, depth=2)
    assert await reader.next() is not None
    reader.close()
    assert reader._file.closed
    with pytest.raises(RuntimeError, match="closed"):  # rather than waiting forever for a chunk
        await reader.next()


async def test_a_reader_starts_mid_file_as_a_resumed_stream_does(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "source"
    path.write_bytes(data)
    reader = FileReader(path, 10_000 - 3_000, 4096, depth=2, start=3_000)
    try:
        assert b"".join(await read_all(reader)) == data[3_000:]
    finally:
        reader.close()


async def test_preallocate_reserves_the_blocks_and_keeps_the_size(tmp_path: Path) -> None:
    path = tmp_path / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"held", 0)
        if not preallocate(fd, 4, 8 << 20):
            pytest.skip("no fallocate on this platform or file system")
        assert os.fstat(fd).st_size == 4  # a part still says how much of the file it holds
        assert os.fstat(fd).st_blocks * 512 >= 8 << 20
        assert not preallocate(fd, 10, 10)  # nothing to reserve
    finally:
        os.close(fd)
    assert path.read_bytes() == b"held"


async def test_a_writer_skips_the_start_of_a_chunk_the_receiver_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    writer = FileWriter(100, depth=2)
    try:
        os.pwrite(fd, b"h" * 30, 0)  # held from before the resume
        buffer = await writer.acquire()
        buffer[:50] = b"x" * 30 + b"y" * 20  # a chunk from offset 0 whose first 30 bytes are held
        writer.submit(Target(fd, str(path)), 30, buffer, 50, first=30)
        await writer.flush()
        with pytest.raises(ValueError):
            writer.submit(Target(fd, str(path)), 0, await writer.acquire(), 10, first=11)
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == b"h" * 30 + b"y" * 20


async def test_a_hundred_readers_and_writers_share_one_thread_each(tmp_path: Path) -> None:
    """A process running hundreds of transfers (tests/hardening/test_load.py) must not run hundreds of threads
    competing with its event loop for the GIL."""
    before = threading.active_count()
    data = os.urandom(50_000)
    sources = []
    for index in range(100):
        sources.append(tmp_path / f"s{index}")
        sources[-1].write_bytes(data)
    readers = [FileReader(path, len(data), 4096, depth=2) for path in sources]
    writers = [FileWriter(4096, depth=2) for _ in range(100)]
    fds = [os.open(tmp_path / f"d{index}", os.O_WRONLY | os.O_CREAT, 0o600) for index in range(100)]
    try:
        async def copy(reader: FileReader, writer: FileWriter, fd: int) -> None:
            offset = 0
            while (chunk := await reader.next()) is not None:
                buffer = await writer.acquire()
                buffer[:len(chunk)] = chunk
                writer.submit(Target(fd, "d"), offset, buffer, len(chunk))
                offset += len(chunk)
            await writer.flush()

        await asyncio.wait_for(asyncio.gather(*map(copy, readers, writers, fds)), BOUND)
        assert threading.active_count() <= before + 2
    finally:
        for reader, writer, fd in zip(readers, writers, fds, strict=True):
            reader.close()
            writer.close()
            os.close(fd)
    assert all((tmp_path / f"d{index}").read_bytes() == data for index in range(100))
