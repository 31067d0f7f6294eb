"""clients.chunkcrypt: the same STREAM chunks as clients.crypto, sealed and opened into preallocated buffers."""

from __future__ import annotations

import os

import pytest

from clients import crypto as c
from clients.chunkcrypt import HAS_INTO, ChunkOpenerInto, ChunkSealerInto

KEY = bytes(range(32))
PLAN = c.StreamPlan((c.Segment(0, 0, 2500), c.Segment(1, 0, 0), c.Segment(2, 0, 1000)), chunk_size=1000)
FILES = {0: os.urandom(2500), 1: b"", 2: os.urandom(1000)}
MODES = [True, False] if HAS_INTO else [False]


def plaintext_chunks() -> list[bytes]:
    return [FILES[p.file][p.offset:p.offset + p.length] for p in PLAN.positions()]


def sealed_by_crypto() -> list[bytes]:
    sealer = c.StreamSealer(KEY, PLAN)
    return [sealer.seal_next(chunk) for chunk in plaintext_chunks()]


@pytest.mark.parametrize("use_into", MODES)
def test_chunks_sealed_by_crypto_open_into_a_reused_buffer(use_into: bool) -> None:
    opener = ChunkOpenerInto(KEY, PLAN, use_into=use_into)
    out = bytearray(PLAN.chunk_size)
    files: dict[int, bytearray] = {0: bytearray(), 1: bytearray(), 2: bytearray()}
    lasts = []
    for sealed in sealed_by_crypto():
        placed = opener.open_next_into(memoryview(sealed), out)
        assert len(files[placed.file]) == placed.offset
        files[placed.file] += out[:placed.length]
        lasts.append(placed.last)
    opener.finish()
    assert {k: bytes(v) for k, v in files.items()} == FILES
    assert lasts == [False, False, True, True, True]


@pytest.mark.parametrize("use_into", MODES)
def test_chunks_sealed_into_a_buffer_open_with_crypto(use_into: bool) -> None:
    sealer = ChunkSealerInto(KEY, PLAN, use_into=use_into)
    opener = c.StreamOpener(KEY, PLAN)
    out = bytearray(PLAN.chunk_size + c.TAG_SIZE)
    for chunk in plaintext_chunks():
        sealed = sealer.seal_next_into(memoryview(chunk), out)
        assert opener.open_next(bytes(sealed)).plaintext == chunk
    assert sealer.done and opener.done


@pytest.mark.parametrize("use_into", MODES)
def test_an_altered_or_reordered_chunk_is_tampered(use_into: bool) -> None:
    sealed = sealed_by_crypto()
    altered = bytearray(sealed[0])
    altered[5] ^= 1
    out = bytearray(PLAN.chunk_size)
    with pytest.raises(c.Tampered):
        ChunkOpenerInto(KEY, PLAN, use_into=use_into).open_next_into(altered, out)
    with pytest.raises(c.Tampered):
        ChunkOpenerInto(KEY, PLAN, use_into=use_into).open_next_into(sealed[1], out)
    with pytest.raises(c.Tampered, match="wrong length"):
        ChunkOpenerInto(KEY, PLAN, use_into=use_into).open_next_into(sealed[0][:-1], out)


def test_a_stream_cut_short_is_truncated_and_a_chunk_past_the_end_is_tampered() -> None:
    sealed = sealed_by_crypto()
    opener = ChunkOpenerInto(KEY, PLAN)
    out = bytearray(PLAN.chunk_size)
    for chunk in sealed[:-1]:
        opener.open_next_into(chunk, out)
    with pytest.raises(c.Truncated):
        opener.finish()
    opener.open_next_into(sealed[-1], out)
    with pytest.raises(c.Tampered, match="after the end"):
        opener.open_next_into(sealed[-1], out)


def test_buffers_too_small_and_wrong_plaintext_lengths_are_caller_errors() -> None:
    with pytest.raises(ValueError):
        ChunkOpenerInto(KEY, PLAN).open_next_into(sealed_by_crypto()[0], bytearray(10))
    with pytest.raises(ValueError):
        ChunkSealerInto(KEY, PLAN).seal_next_into(b"short", bytearray(2000))
    with pytest.raises(ValueError):
        ChunkSealerInto(KEY, PLAN).seal_next_into(plaintext_chunks()[0], bytearray(1000))
