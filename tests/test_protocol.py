"""The pure protocol module: parsing, validation, paths and the chunk stream check, with no sockets."""

from __future__ import annotations

import json

import pytest
import xxhash

from relay import protocol as p
from relay.codes import code_entropy_bits, generate_code, wordlist
from relay.protocol import ErrorCode


def offer_of(*sizes: int, chunk_size: int = 4) -> p.Offer:
    return p.Offer(tuple(p.FileEntry(f"f{i}", size) for i, size in enumerate(sizes)), (), chunk_size)


def chunk(file: int, offset: int, data: bytes) -> p.Chunk:
    return p.Chunk(file, offset, len(data), p.chunk_digest(data))


def file_digest(data: bytes) -> str:
    digest = p.FileDigest()
    digest.update(data)
    return digest.hexdigest()


# --- messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        p.Hello(1, "send", 0, 2, 4096),
        p.PeerJoined(1, 1, 2),
        p.Paired(2),
        p.Offer((p.FileEntry("a/b.txt", 12),), ("empty",), 1024),
        p.Accept(),
        p.Decline("no thanks"),
        p.Start(),
        p.Chunk(0, 0, 3, "0123456789abcdef"),
        p.FileDone(0, 3, "0123456789abcdef0123456789abcdef"),
        p.Done(),
        p.Ack(0, 3, 1),
        p.FileOk(0),
        p.Verified(2),
        p.Complete(),
        p.Cancel("bored", 0),
        p.Error("room_full", "full"),
        p.PeerLeft(1, "receive"),
    ],
)
def test_every_message_survives_a_round_trip(message: p.Message) -> None:
    assert p.parse_message(message.to_json()) == message


def test_serialized_messages_carry_only_wire_fields() -> None:
    assert json.loads(p.Accept().to_json()) == {"type": "accept"}
    assert json.loads(p.Ack(1, 2, 3).to_json()) == {"type": "ack", "file": 1, "offset": 2, "peer": 3}


@pytest.mark.parametrize("text", ["", "{", "[]", "3", '"x"', "null", '{"no_type": 1}', '{"type": 5}'])
def test_non_objects_and_missing_type_are_malformed(text: str) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text)


def test_unknown_type_is_reported_as_such() -> None:
    with pytest.raises(p.UnknownType) as caught:
        p.parse_message('{"type": "teleport"}')
    assert caught.value.code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize(
    "data",
    [
        {"type": "chunk", "file": -1, "offset": 0, "size": 1, "xxh3_64": "0" * 16},
        {"type": "chunk", "file": 0, "offset": 0, "size": 0, "xxh3_64": "0" * 16},
        {"type": "chunk", "file": 0, "offset": 0.5, "size": 1, "xxh3_64": "0" * 16},
        {"type": "chunk", "file": True, "offset": 0, "size": 1, "xxh3_64": "0" * 16},
        {"type": "chunk", "file": 0, "offset": 0, "size": 1, "xxh3_64": "0" * 15},
        {"type": "chunk", "file": 0, "offset": 0, "size": 1, "xxh3_64": "G" * 16},
        {"type": "chunk", "file": 0, "offset": 2**53, "size": 1, "xxh3_64": "0" * 16},
        {"type": "file_done", "file": 0, "size": 1, "xxh3_128": "0" * 16},
        {"type": "offer", "files": "a"},
        {"type": "offer", "files": [{"path": "a", "size": -5}]},
        {"type": "offer", "files": [{"path": 5, "size": 1}]},
        {"type": "offer", "files": [["a", 1]]},
        {"type": "offer", "files": [], "chunk_size": 0},
        {"type": "decline", "reason": "x" * 5000},
        {"type": "error", "code": "no_such_code"},
    ],
)
def test_fields_of_the_wrong_type_or_range_are_malformed(data: dict[str, object]) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps(data))


def test_unknown_extra_fields_are_dropped() -> None:
    message = p.parse_message('{"type": "accept", "evil": "<script>"}')
    assert json.loads(message.to_json()) == {"type": "accept"}


def test_every_error_code_has_a_distinct_close_code() -> None:
    closes = [code.close_code for code in ErrorCode]
    assert len(closes) == len(set(closes))
    assert all(ErrorCode.from_close_code(code.close_code) is code for code in ErrorCode)


def test_every_error_code_is_documented_in_the_protocol_spec() -> None:
    from pathlib import Path

    spec = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` | {code.close_code} |" in spec, code


# --- paths -------------------------------------------------------------------------------------------------

HOSTILE_PATHS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "a/..",
    "a//b",
    "./a",
    "a/./b",
    "a/",
    "a\\..\\b",
    "C:\\Windows",
    "a\x00b",
    "evil\x1b[2Jname",
    "bell\x07",
    "del\x7f",
    "c1\x85",
    "CON",
    "con.txt",
    "dir/Nul",
    "LPT1.log",
    "com9",
    "aux .txt",
    "a:b",
    "what?",
    "star*",
    'quote"',
    "pipe|",
    "<angle>",
    "trailing.",
    "trailing ",
    "x" * 256,
    "/".join(["d"] * 2100),
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_refused(path: str) -> None:
    with pytest.raises(p.UnsafePath):
        p.check_path(path)


@pytest.mark.parametrize("path", ["a.txt", "folder/sub/file.tar.gz", "ünïcödé/名前.txt", ".hidden", "a b/c d", "con-fig", "comma,file", "x" * 255])
def test_ordinary_paths_are_allowed(path: str) -> None:
    assert p.check_path(path) == path


def test_a_hostile_path_inside_an_offer_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.parse_message(json.dumps({"type": "offer", "files": [{"path": "../x", "size": 1}]}))


def test_a_hostile_empty_folder_inside_an_offer_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.parse_message(json.dumps({"type": "offer", "files": [], "dirs": ["/abs"]}))


def test_the_same_path_offered_twice_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.Offer((p.FileEntry("a", 1), p.FileEntry("A", 1))).check_layout()


def test_a_file_that_is_also_a_folder_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.Offer((p.FileEntry("a", 1), p.FileEntry("a/b", 1))).check_layout()


def test_escape_text_makes_control_and_bidi_characters_visible() -> None:
    shown = p.escape_text("ok\x1b[31m\u202eevil\n")
    assert "\x1b" not in shown and "\u202e" not in shown and "\n" not in shown
    assert shown.startswith("ok\\x1b[31m")


# --- codes -------------------------------------------------------------------------------------------------


def test_codes_are_normalised_from_what_people_type() -> None:
    assert p.normalize_code("  Actor Table_ocean.RING ") == "actor-table-ocean-ring"


@pytest.mark.parametrize("code", ["", "-lead", "UPPER", "a/b", "a b", "x" * 129, "é"])
def test_invalid_codes_are_rejected(code: str) -> None:
    assert not p.is_valid_code(code)


def test_generated_codes_are_four_known_words_with_44_bits() -> None:
    code = generate_code()
    words = code.split("-")
    assert len(words) == 4 and all(word in wordlist() for word in words)
    assert p.is_valid_code(code)
    assert code_entropy_bits() == 44


# --- the chunk stream --------------------------------------------------------------------------------------


def test_a_well_formed_stream_passes_and_counts_bytes() -> None:
    check = p.TransferCheck(offer_of(6, 0), hash_files=True)
    data = b"abcdef"
    check.chunk(chunk(0, 0, data[:4]))
    check.payload(data[:4])
    check.chunk(chunk(0, 4, data[4:]))
    check.payload(data[4:])
    check.file_done(p.FileDone(0, 6, file_digest(data)))
    check.file_done(p.FileDone(1, 0, file_digest(b"")))
    check.done()
    assert check.finished and check.bytes_done == 6


def test_xxh3_digests_match_the_reference_library() -> None:
    data = bytes(range(256)) * 10
    assert p.chunk_digest(data) == xxhash.xxh3_64_hexdigest(data)
    assert file_digest(data) == xxhash.xxh3_128_hexdigest(data)


def test_a_payload_that_does_not_match_its_digest_fails() -> None:
    check = p.TransferCheck(offer_of(4))
    check.chunk(chunk(0, 0, b"abcd"))
    with pytest.raises(p.ChecksumMismatch):
        check.payload(b"abce")


def test_a_wrong_whole_file_digest_fails_when_files_are_hashed() -> None:
    check = p.TransferCheck(offer_of(4), hash_files=True)
    check.chunk(chunk(0, 0, b"abcd"))
    check.payload(b"abcd")
    with pytest.raises(p.ChecksumMismatch):
        check.file_done(p.FileDone(0, 4, file_digest(b"abce")))


def test_a_payload_of_the_wrong_length_fails() -> None:
    check = p.TransferCheck(offer_of(4))
    check.chunk(chunk(0, 0, b"abcd"))
    with pytest.raises(p.SizeMismatch):
        check.payload(b"abc")


def test_a_payload_without_a_header_is_unexpected() -> None:
    with pytest.raises(p.UnexpectedMessage):
        p.TransferCheck(offer_of(4)).payload(b"abcd")


def test_a_chunk_at_the_wrong_offset_is_unexpected() -> None:
    check = p.TransferCheck(offer_of(8))
    with pytest.raises(p.UnexpectedMessage):
        check.chunk(chunk(0, 4, b"abcd"))


def test_a_chunk_for_another_file_is_unexpected() -> None:
    check = p.TransferCheck(offer_of(4, 4))
    with pytest.raises(p.UnexpectedMessage):
        check.chunk(chunk(1, 0, b"abcd"))


def test_a_chunk_past_the_end_of_its_file_fails() -> None:
    check = p.TransferCheck(offer_of(3))
    with pytest.raises(p.SizeMismatch):
        check.chunk(chunk(0, 0, b"abcd"))


def test_a_chunk_over_the_offered_chunk_size_fails() -> None:
    check = p.TransferCheck(offer_of(10, chunk_size=4))
    with pytest.raises(p.SizeMismatch):
        check.chunk(chunk(0, 0, b"abcdef"))


def test_file_done_before_all_bytes_fails() -> None:
    check = p.TransferCheck(offer_of(4))
    with pytest.raises(p.SizeMismatch):
        check.file_done(p.FileDone(0, 4, "0" * 32))


def test_done_before_every_file_is_unexpected() -> None:
    check = p.TransferCheck(offer_of(0, 0))
    check.file_done(p.FileDone(0, 0, file_digest(b"")))
    with pytest.raises(p.UnexpectedMessage):
        check.done()


def test_data_after_the_last_file_is_unexpected() -> None:
    check = p.TransferCheck(offer_of(0))
    check.file_done(p.FileDone(0, 0, file_digest(b"")))
    with pytest.raises(p.UnexpectedMessage):
        check.chunk(chunk(0, 0, b"a"))
