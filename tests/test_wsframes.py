"""clients.wsframes: RFC 6455 headers parsed in place and built for masked client frames (no sockets)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame
from websockets.frames import Opcode as WsOpcode

from clients import wsframes as wf
from clients.wsframes import FrameError, Opcode


def server_frame(opcode: WsOpcode, payload: bytes, fin: bool = True) -> bytes:
    """A frame as a server writes it, serialised by websockets (an independent implementation)."""
    return Frame(opcode, payload, fin).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_a_server_frame_of_any_length_class_parses_to_its_payload(size: int) -> None:
    payload = os.urandom(size)
    data = b"junk" + server_frame(WsOpcode.BINARY, payload)
    header = wf.parse_header(data, 4, len(data), max_size=1 << 20)
    assert header is not None
    assert (header.fin, header.opcode, header.length) == (True, Opcode.BINARY, size)
    assert data[header.payload_start:header.end] == payload


def test_an_incomplete_header_asks_for_more_bytes() -> None:
    data = server_frame(WsOpcode.BINARY, bytes(70000))
    for cut in (0, 1, 2, 9):
        assert wf.parse_header(data, 0, cut, max_size=1 << 20) is None
    assert wf.parse_header(data, 0, 10, max_size=1 << 20) is not None


def test_a_masked_server_frame_is_a_protocol_error() -> None:
    data = Frame(WsOpcode.BINARY, b"abc").serialize(mask=True)
    with pytest.raises(FrameError, match="mask") as caught:
        wf.parse_header(data, 0, len(data), max_size=100)
    assert caught.value.close_code == 1002


def test_a_length_over_the_limit_fails_from_the_header_alone_with_1009() -> None:
    header_only = struct.pack("!BBQ", 0x82, 127, 1 << 40)
    with pytest.raises(FrameError) as caught:
        wf.parse_header(header_only, 0, len(header_only), max_size=1 << 20)
    assert caught.value.close_code == 1009


@pytest.mark.parametrize("raw, why", [
    (bytes([0xC2, 0]), "reserved"),          # RSV1 without permessage-deflate
    (bytes([0x83, 0]), "opcode"),            # opcode 3 is reserved
    (bytes([0x09, 0]), "control"),           # a fragmented ping
    (bytes([0x89, 126, 0, 126]), "control"),  # a 126-byte ping
    (struct.pack("!BBQ", 0x82, 127, 1 << 63), "significant"),
])
def test_hostile_headers_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        wf.parse_header(raw, 0, len(raw), max_size=1 << 62)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 300000])
def test_a_client_frame_is_masked_and_websockets_reads_it_back(size: int) -> None:
    payload = os.urandom(size)
    key = wf.new_mask_key()
    data = wf.client_header(Opcode.BINARY, size, key) + wf.apply_mask(payload, key)
    chunks = [data]

    def read_exact(n: int):  # websockets' parser, fed from our bytes
        head, chunks[0] = chunks[0][:n], chunks[0][n:]
        assert len(head) == n
        return head
        yield

    parser = Frame.parse(read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert (frame.opcode, frame.data, frame.fin) == (WsOpcode.BINARY, payload, True)
    assert chunks[0] == b""


def test_the_pure_python_mask_matches_the_c_helper() -> None:
    data, key = os.urandom(100003), os.urandom(4)
    assert wf.apply_mask_python(data, key) == wf.apply_mask(data, key)
    assert wf.apply_mask_python(wf.apply_mask_python(data, key), key) == data
    assert wf.apply_mask_python(b"", key) == b""


def test_mask_keys_are_fresh() -> None:
    assert len({wf.new_mask_key() for _ in range(64)}) > 60


def test_close_payloads_round_trip_and_bad_ones_are_refused() -> None:
    assert wf.parse_close(wf.close_payload(4001, "bye")) == (4001, "bye")
    assert wf.parse_close(b"") == (None, "")
    long_reason = wf.close_payload(1000, "é" * 200)
    assert len(long_reason) <= 125 and wf.parse_close(long_reason)[1] == "é" * 61
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 1000) + b"\xff"):
        with pytest.raises(FrameError):
            wf.parse_close(bad)


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=1 << 20))
def test_any_bytes_parse_to_a_header_none_or_a_frame_error(data: bytes, max_size: int) -> None:
    try:
        header = wf.parse_header(data, 0, len(data), max_size)
    except FrameError as exc:
        assert exc.close_code in (1002, 1009)
        return
    if header is not None:
        assert 2 <= header.payload_start <= 10 and 0 <= header.length <= max_size


def test_the_c_mask_is_loaded_without_importing_websockets_which_imports_it_as_usual_afterwards() -> None:
    """wsframes takes websockets' C apply_mask from its file (the package's __init__ imports importlib.metadata);
    websockets imported afterwards finds its own submodule, named on the package as usual."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys\nfrom clients import wsframes as wf\n"
             "before = sorted(m for m in sys.modules if m.startswith(('websockets', 'importlib.metadata')))\n"
             "import websockets.speedups, websockets.frames\n"
             "print(before, type(wf._apply_mask_c).__name__, wf.apply_mask(b'abcd', b'1234') == "
             "websockets.speedups.apply_mask(b'abcd', b'1234') == websockets.frames.apply_mask(b'abcd', b'1234'))")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "builtin_function_or_method", "True"]
