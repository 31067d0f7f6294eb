"""The pure protocol module: parsing, validation, paths and the chunk stream check, with no sockets."""

from __future__ import annotations

import json

import pytest
import xxhash

from relay import protocol as p
from relay.codes import wordlist
from relay.protocol import ErrorCode


B64 = "QUJD" * 11  # 33 bytes
SEALED = "eHh4" * 8  # 24 bytes


def stream_check(total: int = 10, files: int = 1, chunks: int = 2, size: int = 10 + 32) -> p.StreamCheck:
    check = p.StreamCheck(total, files, max_chunk=64)
    check.stream(p.Stream(0, chunks, size, (SEALED,), (1,)))
    return check


def chunk(data: bytes, epoch: int = 0) -> p.SealedChunk:
    return p.SealedChunk(epoch, len(data), p.chunk_digest(data))


# --- messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        p.Hello(2, "send", 0, 2, 4096, "42"),
        p.Hello(2, "receive", 1, 2, 4096),
        p.PeerJoined(1, 1, 2),
        p.Paired(2),
        p.Pake(B64, to=1),
        p.Pake(B64, peer=1),
        p.Confirm("QUJD" * 10 + "QUI=", to=2),
        p.Key("QUJD" * 16, to=1),
        p.WrongCode(1),
        p.SealedOffer(12, 1, SEALED, 1),
        p.SealedAccept(SEALED, 1),
        p.SealedDecline("disk_full", SEALED, 1),
        p.Start(),
        p.Stream(0, 2, 40, (SEALED, SEALED), (1, 2)),
        p.Stream(0, 2, 40, SEALED),
        p.SealedChunk(0, 16, "0123456789abcdef"),
        p.End(0),
        p.ChunkAck(0, 3, 1),
        p.Sealed(SEALED, to=1),
        p.Verified(2),
        p.Complete(),
        p.SealedCancel(SEALED, 1),
        p.Error("room_full", "full"),
        p.PeerLeft(1, "receive"),
    ],
)
def test_every_message_survives_a_round_trip(message: p.Message) -> None:
    assert p.parse_message(message.to_json()) == message


def test_serialized_messages_carry_only_wire_fields() -> None:
    assert json.loads(p.SealedAccept().to_json()) == {"type": "accept"}
    assert json.loads(p.ChunkAck(1, 2, 3).to_json()) == {"type": "ack", "epoch": 1, "chunks": 2, "peer": 3}


@pytest.mark.parametrize("text", ["", "{", "[]", "3", '"x"', "null", '{"no_type": 1}', '{"type": 5}'])
def test_non_objects_and_missing_type_are_malformed(text: str) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text)


@pytest.mark.parametrize("kind", ["teleport", "file_done", "done", "file_ok"])
def test_unknown_types_and_version_1_messages_are_reported_as_such(kind: str) -> None:
    with pytest.raises(p.UnknownType) as caught:
        p.parse_message(json.dumps({"type": kind}))
    assert caught.value.code is ErrorCode.UNKNOWN_TYPE


def test_only_version_2_is_spoken() -> None:
    assert p.VERSIONS == (p.PROTOCOL_V2,) == (2,)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "chunk", "epoch": -1, "size": 16, "xxh3_64": "0" * 16},
        {"type": "chunk", "epoch": 0, "size": 15, "xxh3_64": "0" * 16},
        {"type": "chunk", "epoch": 0.5, "size": 16, "xxh3_64": "0" * 16},
        {"type": "chunk", "epoch": True, "size": 16, "xxh3_64": "0" * 16},
        {"type": "chunk", "epoch": 0, "size": 16, "xxh3_64": "0" * 15},
        {"type": "chunk", "epoch": 0, "size": 16, "xxh3_64": "G" * 16},
        {"type": "chunk", "epoch": 0, "size": 2**53, "xxh3_64": "0" * 16},
        {"type": "chunk", "file": 0, "offset": 0, "size": 1, "xxh3_64": "0" * 16},  # version 1's header
        {"type": "offer", "files": [{"path": "a", "size": 1}]},  # version 1's offer, in the clear
        {"type": "offer", "to": 1, "total_size": 1, "files": 1, "data": "!!!!"},
        {"type": "decline", "code": "x" * 65},
        {"type": "error", "code": "no_such_code"},
        {"type": "error", "code": "tampered", "message": "x" * 5000},
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


@pytest.mark.parametrize("path", ["a.txt", "folder/sub/file.tar.gz", "ünïcödé/名前.txt", ".hidden", "a b/c d",
                                  "con-fig", "comma,file", "x" * 255])
def test_ordinary_paths_are_allowed(path: str) -> None:
    assert p.check_path(path) == path


@pytest.mark.parametrize("path", WIRE_LEGAL_ELSEWHERE_ILLEGAL)
def test_names_some_file_systems_refuse_are_legal_on_the_wire(path: str) -> None:
    assert p.check_path(path) == path
    assert p.parse_offer(json.dumps({"type": "offer", "files": [{"path": path, "size": 1}]}))


def test_a_hostile_path_inside_an_offer_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.parse_offer(json.dumps({"type": "offer", "files": [{"path": "../x", "size": 1}]}))


def test_a_hostile_empty_folder_inside_an_offer_is_refused() -> None:
    with pytest.raises(p.UnsafePath):
        p.parse_offer(json.dumps({"type": "offer", "files": [], "dirs": ["/abs"]}))


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
        p.parse_offer(offer_json(files, dirs))


@pytest.mark.parametrize(
    "files, dirs",
    [
        (["a/b", "a/c"], ["a"]), (["a/b"], ["a/c"]), (["docs/a", "docs/b"], []), (["ab", "a/b"], []),
        (["a.txt", "a"], []),
    ],
)
def test_names_that_can_exist_side_by_side_are_allowed(files: list[str], dirs: list[str]) -> None:
    assert isinstance(p.parse_offer(offer_json(files, dirs)), p.Offer)


LONE_SURROGATES = [
    '{"type":"cancel","reason":"\\ud800"}',
    '{"type":"decline","code":"declined","reason":"ok \\uDFFF"}',
    '{"type":"error","code":"write_failed","message":"x\\udc00y"}',
    '{"type":"offer","files":[{"path":"a\\ud800","size":1}]}',
    '{"type":"offer","files":[],"dirs":["\\ud83d"]}',
    '{"type":"ack","epoch":0,"chunks":0,"extra":{"deep":[["\\ud800"]]}}',
    '{"type":"start","\\udbff":1}',
    '{"type":"frobnicate\\ud800"}',
]


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_a_lone_surrogate_anywhere_in_a_frame_is_malformed(text: str) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text)
    with pytest.raises(p.MalformedMessage):
        p.parse_message(text.encode("utf-8"))


@pytest.mark.parametrize("text", [t for t in LONE_SURROGATES if '"offer"' in t])
def test_a_lone_surrogate_in_a_sealed_offer_is_malformed_like_in_a_frame(text: str) -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_offer(text)


def test_a_sealed_offer_is_an_object_of_type_offer() -> None:
    for text in ('{"type":"accept"}', "[1]", '{"type":null,"files":[]}', '{"files":[{"path":"a","size":1}]}'):
        with pytest.raises(p.MalformedMessage):
            p.parse_offer(text)


def test_a_string_holding_a_raw_surrogate_is_malformed() -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message('{"type":"cancel","reason":"\ud800"}')


def test_an_escaped_pair_and_an_escaped_backslash_are_fine() -> None:
    text = '{"type":"error","code":"tampered","message":"\\ud83d\\ude00 \\\\ud800"}'
    assert p.parse_message(text) == p.Error("tampered", "\U0001f600 \\ud800")


def test_bytes_that_are_not_utf8_are_malformed() -> None:
    with pytest.raises(p.MalformedMessage):
        p.parse_message(b'{"type":"cancel","reason":"\xed\xa0\x80"}')


def test_every_parsed_message_can_be_encoded_again() -> None:
    p.parse_message('{"type":"error","code":"tampered","message":"\\ud83d\\ude00"}').to_json().encode("utf-8")
    p.parse_offer(offer_json(["é/ü"], ["d"])).to_json().encode("utf-8")


def test_mtime_and_exec_travel_in_the_offer() -> None:
    offer = p.Offer((p.FileEntry("run.sh", 3, 1_700_000_000, True), p.FileEntry("b", 1)))
    assert p.parse_offer(offer.to_json()) == offer
    assert offer.to_dict()["files"][1] == {"path": "b", "size": 1}


@pytest.mark.parametrize(
    "entry",
    [{"mtime": -1}, {"mtime": 253_402_300_800}, {"mtime": 1.5}, {"mtime": "1"}, {"mtime": True},
     {"exec": 1}, {"exec": "yes"}, {"exec": None}],
)
def test_out_of_range_mtime_and_exec_are_malformed(entry: dict[str, object]) -> None:
    text = json.dumps({"type": "offer", "files": [{"path": "a", "size": 1, **entry}]})
    with pytest.raises(p.MalformedMessage):
        p.parse_offer(text)


def test_offer_kinds_round_trip_and_default_to_files() -> None:
    assert p.parse_offer(offer_json(["a"])).kind is p.OfferKind.FILES
    for kind in p.OfferKind:
        offer = p.Offer((p.FileEntry("a", 5),), (), 4, kind)
        assert p.parse_offer(offer.to_json()) == offer
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
        p.parse_offer(json.dumps({"type": "offer", **data}))


def test_a_large_stdin_offer_is_fine() -> None:
    assert p.parse_offer(json.dumps({"type": "offer", "kind": "stdin", "files": [{"path": "stdin", "size": 2**40}]}))


def test_escape_text_makes_control_and_bidi_characters_visible() -> None:
    shown = p.escape_text("ok\x1b[31m\u202eevil\n")
    assert "\x1b" not in shown and "\u202e" not in shown and "\n" not in shown
    assert shown.startswith("ok\\x1b[31m")


# --- codes -------------------------------------------------------------------------------------------------


def test_nameplates_are_one_to_eight_ascii_digits() -> None:
    assert all(p.is_nameplate(n) for n in ("1", "42", "12345678"))
    assert not any(p.is_nameplate(n) for n in ("", "123456789", "4a", "٣", "actor-table", " 1"))


def test_the_word_list_holds_2048_distinct_lowercase_words_of_11_bits_each() -> None:
    words = wordlist()
    assert len(words) == len(set(words)) == 2**11
    assert all(word.isascii() and word.isalpha() and word.islower() for word in words)


# --- the ciphertext stream ---------------------------------------------------------------------------------


def test_a_well_formed_stream_passes_and_counts_chunks_and_bytes() -> None:
    check = stream_check()
    for data in (b"a" * 20, b"b" * 22):
        check.chunk(chunk(data))
        check.payload(data)
    check.end(p.End(0))
    assert check.finished and (check.chunks_done, check.bytes_done) == (2, 42)


def test_xxh3_digests_match_the_reference_library() -> None:
    data = bytes(range(256)) * 10
    assert p.chunk_digest(data) == xxhash.xxh3_64_hexdigest(data)


def test_a_payload_that_does_not_match_its_digest_fails() -> None:
    check = stream_check()
    check.chunk(chunk(b"a" * 20))
    with pytest.raises(p.ChecksumMismatch):
        check.payload(b"b" * 20)


def test_a_payload_of_the_wrong_length_fails() -> None:
    check = stream_check()
    check.chunk(chunk(b"a" * 20))
    with pytest.raises(p.SizeMismatch):
        check.payload(b"a" * 19)


def test_a_payload_without_a_header_is_unexpected() -> None:
    with pytest.raises(p.UnexpectedMessage):
        stream_check().payload(b"a" * 20)


def test_a_chunk_before_the_stream_or_for_another_epoch_is_unexpected() -> None:
    with pytest.raises(p.UnexpectedMessage):
        p.StreamCheck(10, 1).chunk(chunk(b"a" * 20))
    with pytest.raises(p.UnexpectedMessage):
        stream_check().chunk(chunk(b"a" * 20, epoch=1))


def test_a_chunk_over_max_message_fails() -> None:
    with pytest.raises(p.SizeMismatch):
        stream_check(total=100, chunks=1, size=116).chunk(chunk(b"a" * 65))


def test_more_chunks_or_bytes_than_declared_fail() -> None:
    check = stream_check(chunks=1, size=26)
    check.chunk(chunk(b"a" * 26))
    check.payload(b"a" * 26)
    with pytest.raises(p.SizeMismatch):
        check.chunk(chunk(b"a" * 16))
    with pytest.raises(p.SizeMismatch):
        stream_check(chunks=2, size=42).chunk(chunk(b"a" * 43))


def test_an_end_before_every_declared_chunk_fails() -> None:
    check = stream_check()
    check.chunk(chunk(b"a" * 20))
    check.payload(b"a" * 20)
    with pytest.raises(p.SizeMismatch):
        check.end(p.End(0))


@pytest.mark.parametrize("chunks,size", [(12, 12 * 16), (2, 31), (1, 10 + 17), (1, 15)])
def test_stream_totals_that_cannot_carry_the_offer_fail(chunks: int, size: int) -> None:
    with pytest.raises(p.SizeMismatch):
        p.StreamCheck(10, 1).stream(p.Stream(0, chunks, size, (SEALED,), (1,)))


def test_a_second_epoch_is_unexpected_in_this_version() -> None:
    with pytest.raises(p.UnexpectedMessage):
        stream_check().stream(p.Stream(1, 2, 42, (SEALED,), (1,)))


# --- records: what @dataclass(frozen=True, slots=True) gave, without generating code at every start ----------


def _records() -> list[type[p.Record]]:
    found, pending = [], [p.Record]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == p.__name__ and cls not in (p.Record, p.Message):
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__name__)


def _distinct_values(cls: type[p.Record]) -> dict[str, object]:
    return {name: f"{cls.__name__}.{name}" for name in cls.__slots__}


def test_every_message_type_is_a_record() -> None:
    assert set(p.MESSAGE_TYPES_V2.values()) <= set(_records())
    assert {p.FileEntry, p.SeatToken, p.RoomShape} <= set(_records())


@pytest.mark.parametrize("cls", _records(), ids=lambda cls: cls.__name__)
def test_a_record_sets_each_field_from_its_own_argument(cls: type[p.Record]) -> None:
    import inspect

    parameters = list(inspect.signature(cls).parameters)
    assert parameters == list(cls.__slots__) == list(cls.__match_args__)
    values = _distinct_values(cls)
    by_position, by_name = cls(*values.values()), cls(**values)
    for record in (by_position, by_name):
        assert {name: getattr(record, name) for name in cls.__slots__} == values
    assert by_position == by_name and hash(by_position) == hash(by_name)
    assert not hasattr(by_position, "__dict__")


@pytest.mark.parametrize("cls", _records(), ids=lambda cls: cls.__name__)
def test_a_record_is_frozen_compares_by_class_and_fields_and_copies(cls: type[p.Record]) -> None:
    import copy
    import pickle

    values = _distinct_values(cls)
    record = cls(**values)
    for name in [*cls.__slots__, "other"]:
        with pytest.raises(p.FrozenInstanceError):
            setattr(record, name, 1)
        with pytest.raises(AttributeError):
            delattr(record, name)
    assert record == copy.copy(record) == copy.deepcopy(record) == pickle.loads(pickle.dumps(record))
    if cls.__slots__:
        changed = cls(**{**values, cls.__slots__[-1]: "else"})
        assert record != changed and (record == changed) is False
    assert record.__eq__(tuple(values.values())) is NotImplemented
    shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
    assert repr(record) == f"{cls.__qualname__}({shown})"


def test_records_of_different_classes_with_the_same_fields_differ() -> None:
    assert p.Start() != p.Complete() and p.Start() == p.Start()
    assert p.Pake(B64, to=1) != p.Confirm(B64, to=1)


def test_records_keep_their_defaults() -> None:
    assert p.Hello(2, "send", 0, 1, 4096).nameplate is None
    assert p.FileEntry("a", 1) == p.FileEntry("a", 1, None, False)
    assert p.Offer((p.FileEntry("a", 1),)).to_dict()["chunk_size"] == p.DEFAULT_CHUNK_SIZE
    assert p.Error("declined").to_dict() == {"type": "error", "code": "declined", "message": ""}
    assert p.SealedDecline().code == ErrorCode.DECLINED.value


def test_a_record_in_a_match_statement() -> None:
    match p.SealedChunk(3, 20, "0" * 16):
        case p.SealedChunk(epoch, size, digest):
            assert (epoch, size, digest) == (3, 20, "0" * 16)
        case _:
            pytest.fail("a positional class pattern did not match")


# --- the text checks are the patterns they replaced (no regex compiled at import) ------------------------------

TEXTS = ["", "0", "1", "9", "01", "10", "9999", "10000", "12345678", "123456789", "٣", "²", "1\n", "\n1", " 1", "a",
         "0123456789abcdef", "0123456789ABCDEF", "0123456789abcdeg", "QUJD", "QUI=", "QQ==", "Q===", "=", "==",
         "QU=J", "QUJD\n", "+/+/", "-_-_", "QUJ\u00e9", "lone\ud800", "\udfff", "é", "\\ud800", "\\u00e9"]


@pytest.mark.parametrize("text", TEXTS)
def test_the_text_checks_match_the_patterns_of_the_protocol(text: str) -> None:
    import re

    assert p.is_nameplate(text) == bool(re.fullmatch(r"[0-9]{1,8}", text))
    assert p._is_peer_key(text) == bool(re.fullmatch(r"[1-9][0-9]{0,3}", text))
    assert p._is_padded_base64_text(text) == bool(re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text))
    assert p._has_surrogate(text) == bool(re.search(r"[\ud800-\udfff]", text))
    if re.search(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]", text):
        assert p._may_hold_surrogate(text)
    digits = len(text) or 1
    try:
        p._hex_field(text, "x", digits)
    except p.MalformedMessage:
        assert not re.fullmatch(f"[0-9a-f]{{{digits}}}", text)
    else:
        assert re.fullmatch(f"[0-9a-f]{{{digits}}}", text)


def test_every_record_of_the_clients_sets_each_field_from_its_own_argument() -> None:
    """The clients' value classes are Records too (relay/record.py); each ``__init__`` is written by hand."""
    import importlib
    import inspect

    for name in ("clients.connection", "clients.chunkcrypt", "clients.crypto", "clients.offer", "clients.transfer",
                 "clients.wsframes"):
        importlib.import_module(name)
    classes = [cls for cls in _all_records() if cls.__module__.startswith("clients.")]
    assert len(classes) >= 12
    for cls in classes:
        assert list(inspect.signature(cls).parameters) == list(cls.__slots__) == list(cls.__match_args__), cls
        if cls.__name__ == "StreamPlan":  # checks its values (tests/test_crypto.py)
            continue
        values = _distinct_values(cls)
        assert {name: getattr(cls(**values), name) for name in cls.__slots__} == values, cls


def _all_records() -> list[type[p.Record]]:
    found, pending = [], [p.Record]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.append(cls)
    return found
