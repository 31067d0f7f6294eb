"""The per-chunk fast path in relay/rooms.py gives exactly what the general path gives.

A chunk header in its canonical form is read with a regular expression instead of the JSON decoder, and the
header forwarded to receivers is formatted directly; any other spelling takes ``parse_message`` as before.
"""

from __future__ import annotations

import pytest

from relay import protocol as p
from relay.rooms import chunk_json, parse_frame

DIGEST = "0123456789abcdef"


@pytest.mark.parametrize("header", [
    p.SealedChunk(0, 16, DIGEST),
    p.SealedChunk(7, 1 << 20, "ffffffffffffffff"),
    p.SealedChunk(p.MAX_EPOCH, 2**53 - 1, "0000000000000000"),
])
def test_the_forwarded_header_is_the_canonical_json(header: p.SealedChunk) -> None:
    assert chunk_json(header) == header.to_json()


@pytest.mark.parametrize("text", [
    p.SealedChunk(0, 16, DIGEST).to_json(),
    p.SealedChunk(3, 65552, DIGEST).to_json(),
    '{"type":"chunk","epoch":0,"size":65552,"xxh3_64":"' + DIGEST + '"}',
    '{"type": "chunk", "epoch": 0, "size": 65552, "xxh3_64": "' + DIGEST + '"}',  # spaces: the general path
    '{"size":65552,"type":"chunk","epoch":0,"xxh3_64":"' + DIGEST + '"}',  # another key order
    '{"type":"ack","epoch":0,"chunks":3}',
])
def test_a_well_formed_frame_parses_as_parse_message_parses_it(text: str) -> None:
    assert parse_frame(text) == p.parse_message(text, p.PROTOCOL_V2)


@pytest.mark.parametrize("text", [
    '{"type":"chunk","epoch":0,"size":15,"xxh3_64":"' + DIGEST + '"}',  # shorter than a tag
    '{"type":"chunk","epoch":4294967296,"size":16,"xxh3_64":"' + DIGEST + '"}',  # past MAX_EPOCH
    '{"type":"chunk","epoch":0,"size":99999999999999999,"xxh3_64":"' + DIGEST + '"}',  # past 2**53 - 1
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"0123456789ABCDEF"}',  # upper case
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"0123456789abcde"}',  # 15 digits
    '{"type":"chunk","epoch":01,"size":16,"xxh3_64":"' + DIGEST + '"}',  # not JSON
    '{"type":"chunk","epoch":0,"size":16.0,"xxh3_64":"' + DIGEST + '"}',  # not an integer
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"' + DIGEST + '"} ',  # trailing space: still JSON
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"' + DIGEST + '"}x',  # trailing garbage
])
def test_a_bad_header_is_refused_as_parse_message_refuses_it(text: str) -> None:
    try:
        expected: object = p.parse_message(text, p.PROTOCOL_V2)
    except p.ProtocolError as exc:
        expected = (type(exc), exc.code)
    try:
        got: object = parse_frame(text)
    except p.ProtocolError as exc:
        got = (type(exc), exc.code)
    assert got == expected
