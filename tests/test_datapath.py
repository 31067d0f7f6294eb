"""clients.datapath: sealed chunks from files on disk (ChunkSource) to part files on disk (ChunkSink), as the
CLI's data path will move them, with real files and the writer and reader threads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from clients import crypto as c
from clients.datapath import ChunkSink, ChunkSource
from clients.diskio import ReadFailed, WriteFailed

KEY = os.urandom(32)
CHUNK = 4096


class Parts:
    """The store's role: one part file per file index, opened when the stream reaches it."""

    def __init__(self, folder: Path, flags: int = os.O_WRONLY | os.O_CREAT) -> None:
        self.folder = folder
        self.flags = flags
        self.fds: dict[int, int] = {}

    def __call__(self, index: int) -> tuple[int, str]:
        path = self.folder / f"part-{index}"
        if index not in self.fds:
            self.fds[index] = os.open(path, self.flags, 0o600)
        return self.fds[index], str(path)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def sources(tmp_path: Path) -> list[Path]:
    contents = [os.urandom(3 * CHUNK + 17), b"", os.urandom(CHUNK)]
    paths = []
    for index, data in enumerate(contents):
        path = tmp_path / f"source-{index}"
        path.write_bytes(data)
        paths.append(path)
    return paths


async def stream(source: ChunkSource) -> list[bytes]:
    sealed = []
    while (view := await source.next()) is not None:
        sealed.append(bytes(view))  # what the socket sends (it copies while masking)
    source.close()
    return sealed


async def test_files_go_from_sources_to_parts_through_sealed_chunks(tmp_path: Path) -> None:
    paths = sources(tmp_path)
    # file 0 is resumed from 2 chunks in: only its tail is in this epoch
    plan = c.StreamPlan((c.Segment(0, 2 * CHUNK, paths[0].stat().st_size), c.Segment(1, 0, 0),
                         c.Segment(2, 0, CHUNK)), CHUNK)
    source = ChunkSource(KEY, plan, paths, depth=2)
    sealed = await stream(source)
    assert len(sealed) == plan.chunk_count() and sum(map(len, sealed)) == plan.ciphertext_size()
    out = tmp_path / "out"
    out.mkdir()
    parts = Parts(out)
    sink = ChunkSink(KEY, plan, parts, depth=2)
    try:
        for chunk in sealed:
            await sink.put(memoryview(chunk))
        await sink.finish()
    finally:
        sink.close()
        parts.close()
    assert sink.done and sink.completed == [0, 1, 2]
    assert sink.received == source.sent == plan.ciphertext_size() - c.TAG_SIZE * plan.chunk_count()
    assert (out / "part-0").read_bytes()[2 * CHUNK:] == paths[0].read_bytes()[2 * CHUNK:]
    assert (out / "part-1").read_bytes() == b""
    assert (out / "part-2").read_bytes() == paths[2].read_bytes()


async def test_an_altered_chunk_is_tampered_and_nothing_of_it_is_written(tmp_path: Path) -> None:
    paths = sources(tmp_path)
    plan = c.StreamPlan((c.Segment(2, 0, CHUNK),), CHUNK)
    sealed = await stream(ChunkSource(KEY, plan, paths))
    altered = bytearray(sealed[0])
    altered[100] ^= 0x40
    parts = Parts(tmp_path)
    sink = ChunkSink(KEY, plan, parts, depth=2)
    try:
        with pytest.raises(c.Tampered):
            await sink.put(altered)
        await sink.flush()
        assert sink._writer.statistics()["free"] == 2  # the buffer came back
        assert parts.fds == {}  # no part was even opened
        await sink.put(sealed[0])  # the genuine chunk still opens at the same position
        with pytest.raises(c.Tampered, match="after the end"):
            await sink.put(sealed[0])
    finally:
        sink.close()
        parts.close()


async def test_a_stream_that_stops_early_is_truncated(tmp_path: Path) -> None:
    paths = sources(tmp_path)
    plan = c.StreamPlan((c.Segment(0, 0, paths[0].stat().st_size),), CHUNK)
    sealed = await stream(ChunkSource(KEY, plan, paths))
    parts = Parts(tmp_path)
    sink = ChunkSink(KEY, plan, parts)
    try:
        for chunk in sealed[:-1]:
            await sink.put(chunk)
        with pytest.raises(c.Truncated):
            await sink.finish()
        assert sink.completed == []
    finally:
        sink.close()
        parts.close()


async def test_a_part_that_cannot_be_written_is_write_failed(tmp_path: Path) -> None:
    paths = sources(tmp_path)
    plan = c.StreamPlan((c.Segment(0, 0, paths[0].stat().st_size),), CHUNK)
    sealed = await stream(ChunkSource(KEY, plan, paths))
    (tmp_path / "part-0").write_bytes(b"")
    parts = Parts(tmp_path, flags=os.O_RDONLY)
    sink = ChunkSink(KEY, plan, parts, depth=2)
    try:
        with pytest.raises(WriteFailed) as caught:
            for chunk in sealed:
                await sink.put(chunk)
            await sink.finish()
        assert caught.value.errno == errno.EBADF
    finally:
        sink.close()
        parts.close()


async def test_a_source_shorter_than_its_segment_is_read_failed(tmp_path: Path) -> None:
    paths = sources(tmp_path)
    plan = c.StreamPlan((c.Segment(2, 0, CHUNK + 1),), CHUNK)
    source = ChunkSource(KEY, plan, paths)
    with pytest.raises(ReadFailed, match="ended at 4096 bytes"):
        await stream(source)
    source.close()
