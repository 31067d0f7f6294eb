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
    "x" * 256,
    "é" * 128,
    "/".join(["d"] * 2100),
    "lone\ud800surrogate",
    "dir/\udfffx",
    "a/b\\c",
    "line\u2028sep",
]

# Legal on the wire: a safe relative path that only some file systems cannot store. The receiver maps these
# (clients.store.local_name); the sender's system may hold them, so refusing them would fail whole folders.
WIRE_LEGAL_ELSEWHERE_ILLEGAL = [
    "CON", "con.txt", "dir/Nul", "LPT1.log", "com9", "aux .txt", "aux.c", "a:b.txt", "what?.txt", "star*",
    'quote"', "pipe|", "<angle>", "trailing.", "trailing ", "dir./file", "x" * 255, "é" * 127,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_are_refused(path: str) -> None:
    with pytest.raises(p.UnsafePath):
        p.check_path(path)


@pytest.mark.parametrize("path", ["a.txt", "folder/sub/file.tar.gz", "ünïcödé/名前.txt", ".hidden", "a b/c d", "con-fig", "comma,file", "x" * 255])
def test_ordinary_paths_are_allowed(path: str) -> None:
    assert p.check_path(path) == path


@pytest.mark.parametrize("path", WIRE_LEGAL_ELSEWHERE_ILLEGAL)
def test_names_some_file_systems_refuse_are_legal_on_the_wire(path: str) -> None:
    assert p.check_path(path) == path
    assert p.parse_message(json.dumps({"type": "offer", "files": [{"path": path, "size": 1}]}))


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


def offer_json(files: list[str], dirs: list[str] = ()) -> str:  # type: ignore[assignment]
    return json.dumps({"type": "offer", "files": [{"path": f, "size": 1} for f in files], "dirs": list(dirs)})


@pytest.mark.parametrize(
    "files, dirs",
    [
        (["a"], ["a"]),  # a file and a folder of one name
        (["b", "a"], ["a"]),  # the probe's offer: file b, file a, folder a
        (["a", "a/b"], []),  # a file that is also the folder above another file
        (["x/a"], ["x/a"]),
        (["a"], ["a/b"]),  # a file that is also the folder above an offered folder
        ([], ["d", "d"]),  # a folder listed twice
        ([], ["d", "D"]),
        (["a", "A"], []),  # case twins
        (["caf\u00e9"], ["cafe\u0301"]),
        (["caf\u00e9.txt", "cafe\u0301.txt"], []),  # composed and decomposed é
        (["docs/a", "Docs/b"], []),  # case twins among folders, implied by their files
        ([], ["docs", "Docs"]),
        (["\u00c9t\u00e9/a", "e\u0301te\u0301/b"], []),  # unicode and case twins among folders at once
        (["straße", "STRASSE"], []),  # full case folding, not lower-casing
    ],
)
def test_names_that_cannot_exist_side_by_side_are_refused(files: list[str], dirs: list[str]) -> None:
    with pytest.raises(p.UnsafePath):
        p.parse_message(offer_json(files, dirs))


@pytest.mark.parametrize(
    "files, dirs",
    [
        (["a/b", "a/c"], ["a"]), (["a/b"], ["a/c"]), (["docs/a", "docs/b"], []), (["ab", "a/b"], []),
        (["a.txt", "a"], []),
    ],
)
def test_names_that_can_exist_side_by_side_are_allowed(files: list[str], dirs: list[str]) -> None:
    assert isinstance(p.parse_message(offer_json(files, dirs)), p.Offer)


LONE_SURROGATES = [
    '{"type":"cancel","reason":"\\ud800"}',
    '{"type":"decline","reason":"ok \\uDFFF"}',
    '{"type":"error","code":"write_failed","message":"x\\udc00y"}',
    '{"type":"offer","files":[{"path":"a\\ud800","size":1}]}',
    '{"type":"offer","files":[],"dirs":["\\ud83d"]}',
    '{"type":"ack","file":0,"offset":0,"extra":{"deep":[["\\ud800"]]}}',
    '{"type":"start","\\udbff":1}',
    '{"type":"frobnicate\\ud800"}',
]


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_a_lone_surrogate_anywhere_in_a_frame_is_malformed(text: str) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text)
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text.encode("utf-8"))


def test_a_string_holding_a_raw_surrogate_is_malformed() -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message('{"type":"cancel","reason":"\ud800"}')


def test_an_escaped_pair_and_an_escaped_backslash_are_fine() -> None:
    assert p.parse_message('{"type":"cancel","reason":"\\ud83d\\ude00 \\\\ud800"}') == p.Cancel("\U0001f600 \\ud800")


def test_bytes_that_are_not_utf8_are_malformed() -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(b'{"type":"cancel","reason":"\xed\xa0\x80"}')


def test_every_parsed_message_can_be_encoded_again() -> None:
    for text in ['{"type":"cancel","reason":"\\ud83d\\ude00"}', offer_json(["é/ü"], ["d"])]:
        p.parse_message(text).to_json().encode("utf-8")


def test_mtime_and_exec_travel_in_the_offer() -> None:
    offer = p.Offer((p.FileEntry("run.sh", 3, 1_700_000_000, True), p.FileEntry("b", 1)))
    assert p.parse_message(offer.to_json()) == offer
    assert offer.to_dict()["files"][1] == {"path": "b", "size": 1}


@pytest.mark.parametrize(
    "entry",
    [{"mtime": -1}, {"mtime": 253_402_300_800}, {"mtime": 1.5}, {"mtime": "1"}, {"mtime": True},
     {"exec": 1}, {"exec": "yes"}, {"exec": None}],
)
def test_out_of_range_mtime_and_exec_are_malformed(entry: dict[str, object]) -> None:
    text = json.dumps({"type": "offer", "files": [{"path": "a", "size": 1, **entry}]})
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text)


def test_offer_kinds_round_trip_and_default_to_files() -> None:
    assert p.parse_message(offer_json(["a"])).kind is p.OfferKind.FILES  # type: ignore[attr-defined]
    for kind in p.OfferKind:
        offer = p.Offer((p.FileEntry("a", 5),), (), 4, kind)
        assert p.parse_message(offer.to_json()) == offer
    assert "kind" not in p.Offer((p.FileEntry("a", 5),)).to_dict()


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "texts", "files": [{"path": "a", "size": 1}]},
        {"kind": 1, "files": [{"path": "a", "size": 1}]},
        {"kind": "text", "files": []},
        {"kind": "text", "files": [{"path": "a", "size": 1}, {"path": "b", "size": 1}]},
        {"kind": "text", "files": [{"path": "a", "size": 1}], "dirs": ["d"]},
        {"kind": "text", "files": [{"path": "a", "size": 1024 * 1024 + 1}]},
        {"kind": "stdin", "files": [{"path": "a", "size": 1}], "dirs": ["d"]},
        {"kind": "stdin", "files": []},
    ],
)
def test_text_and_stdin_offers_hold_exactly_one_file(data: dict[str, object]) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(json.dumps({"type": "offer", **data}))


def test_a_large_stdin_offer_is_fine() -> None:
    assert p.parse_message(json.dumps({"type": "offer", "kind": "stdin", "files": [{"path": "stdin", "size": 2**40}]}))


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
