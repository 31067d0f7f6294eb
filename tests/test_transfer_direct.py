"""A real transfer (relay, sender, receivers, files on disk) with the receiver's direct writes on and off: the
machine's choice (``clients.diskio.DIRECT_WRITES``) is injected both ways; which descriptor each write went
through is read from the descriptor (tests/test_diskio_direct.py's recorder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from clients import diskio
from clients.diskio import ALIGN, DIRECT_FROM, open_direct
from tests.test_diskio_direct import Recorder, check_direct_calls
from tests.test_transfer import code, digest, make_file, transfer

__all__ = ["code"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_DIRECT as Linux does it")


def refuses_direct(folder: Path) -> bool:
    probe = folder / ".probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        direct = open_direct(fd)
        if direct >= 0:
            os.close(direct)
        return direct < 0
    finally:
        os.close(fd)
        probe.unlink()


@pytest.mark.parametrize("chosen", [True, False])
async def test_a_big_file_arrives_intact_written_direct_where_the_machine_chooses_it(
        relay_server, code, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: bool) -> None:
    source = make_file(tmp_path / "in" / "big.bin", DIRECT_FROM + 3 * 1024 * 1024 + 4321)
    small = make_file(tmp_path / "in" / "small.bin", 70_000)
    outputs = [tmp_path / "out1", tmp_path / "out2"]
    for output in outputs:
        output.mkdir()
    if chosen and refuses_direct(outputs[0]):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    monkeypatch.setattr(diskio, "DIRECT_WRITES", chosen)
    recorder = Recorder()
    monkeypatch.setattr(diskio.os, "pwrite", recorder)
    await transfer(relay_server, code, [source, small], outputs)
    for output in outputs:
        assert digest(output / "big.bin") == digest(source) and digest(output / "small.bin") == digest(small)
        assert sorted(path.name for path in output.iterdir()) == ["big.bin", "small.bin"]
    direct = recorder.direct()
    if chosen:  # both receivers' big parts: everything but the last partial page
        check_direct_calls(direct)
        assert sum(call.length for call in direct) == 2 * (source.stat().st_size // ALIGN * ALIGN)
    else:
        assert direct == []
