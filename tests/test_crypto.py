"""clients/crypto.py: codes, the SPAKE2 exchange, key confirmation, sealed control messages, the chunk stream.

Pure functions and objects, no sockets. Each attack of issue 10 (altered byte, reordered chunks, replayed chunk,
dropped last chunk, chunks swapped between files, reused nonces across epochs) has its own test.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]
from spake2.parameters.ed25519 import ParamsEd25519  # type: ignore[import-untyped]

from clients import crypto as c

CODE = "42-ocean-table-actor"


def prg(seed: bytes):
    """python-spake2's test PRG (spake2/test/common.py): blocks of sha256(b"prng-<counter>-" + seed)."""
    blocks = (hashlib.sha256(b"prng-%d-" % counter + seed).digest() for counter in itertools.count())
    stream = (byte for block in blocks for byte in block)
    return lambda count: bytes(next(stream) for _ in range(count))


def pair(sender_code: str = CODE, receiver_code: str = CODE) -> tuple[c.PairKeys, c.PairKeys]:
    sender, receiver = c.Pake(c.Role.SENDER, sender_code), c.Pake(c.Role.RECEIVER, receiver_code)
    return sender.finish(receiver.outbound), receiver.finish(sender.outbound)


# --- codes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("42-ocean-table-actor", "42-ocean-table-actor"),
        ("  42 Ocean_Table.ACTOR ", "42-ocean-table-actor"),
        ("42--ocean - table", "42-ocean-table"),
        ("\uff14\uff12\u3000\uff4f\uff43\uff45\uff41\uff4e", "42-ocean"),  # full-width, ideographic space
        ("42\u00a0ocean\u2003table", "42-ocean-table"),
        ("42\u2028ocean", "42-ocean"),
        ("-42-ocean-", "42-ocean"),
    ],
)
def test_normalize_code_folds_what_people_type(typed, normalized):
    assert c.normalize_code(typed) == normalized


@pytest.mark.parametrize(
    "code", ["", "42", "ocean-table", "42-", "42-Ocean", "123456789-ocean", "42-océan", "42-ocean_table",
             "42-" + "a" * 126, "4\ud8002-ocean"],
)
def test_split_code_refuses_anything_but_nameplate_and_words(code):
    with pytest.raises(c.InvalidCode):
        c.split_code(code)


def test_split_code_separates_nameplate_from_words():
    assert c.split_code("042-ocean-table-actor") == ("042", "ocean-table-actor")
    assert c.split_code("7-x") == ("7", "x")


def test_pake_password_binds_label_nameplate_and_words_unambiguously():
    password = c.pake_password("42", "ocean-table")
    assert password == b"\0\0\0\x0drelay-v2 code" + b"\0\0\0\x0242" + b"\0\0\0\x0bocean-table"
    assert c.pake_password("4", "2-ocean-table") != c.pake_password("42", "ocean-table")


def test_generate_words_draws_from_the_list():
    words = ["alpha", "bravo", "charlie", "delta"]
    drawn = c.generate_words(words, 3).split("-")
    assert len(drawn) == 3 and set(drawn) <= set(words)
    assert len({c.generate_words(words * 512, 3) for _ in range(50)}) > 1


# --- SPAKE2 --------------------------------------------------------------------------------------------------


def test_python_spake2_still_gives_its_published_known_answers():
    """The known-answer values of python-spake2 0.9's own tests/test_compat.py, which the JS port reproduces."""
    a, b = SPAKE2_A(b"password", entropy_f=prg(b"A")), SPAKE2_B(b"password", entropy_f=prg(b"B"))
    m1a, m1b = a.start(), b.start()
    assert m1a.hex() == "416fc960df73c9cf8ed7198b0c9534e2e96a5984bfc5edc023fd24dacf371f2af9"
    assert m1b.hex() == "42354e97b88406922b1df4bea1d7870f17aed3dba7c720b313edae315b00959309"
    assert a.finish(m1b).hex() == b.finish(m1a).hex() == (
        "a480bca13fa04464bb644f10e340125e96c9494f7399fef7c2bda67eb0fdf06d"
    )
    assert ParamsEd25519.M.to_bytes().hex() == "15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312"


def test_same_code_gives_same_keys_and_confirmations_check_both_ways():
    sender, receiver = pair()
    assert sender.transcript == receiver.transcript
    assert sender.control_sender_to_receiver == receiver.control_sender_to_receiver
    receiver.check_confirmation(c.Role.SENDER, sender.confirmation(c.Role.SENDER))
    sender.check_confirmation(c.Role.RECEIVER, receiver.confirmation(c.Role.RECEIVER))


def test_confirmations_of_the_two_directions_differ():
    sender, _ = pair()
    assert sender.confirmation(c.Role.SENDER) != sender.confirmation(c.Role.RECEIVER)
    with pytest.raises(c.WrongCode):  # a reflected confirmation is not the peer's
        sender.check_confirmation(c.Role.RECEIVER, sender.confirmation(c.Role.SENDER))


@pytest.mark.parametrize("other", ["42-ocean-table-actos", "43-ocean-table-actor", "42-ocean-table"])
def test_a_wrong_code_gives_other_keys_and_fails_confirmation_on_both_sides(other):
    sender, receiver = pair(CODE, other)
    assert sender.control_sender_to_receiver != receiver.control_sender_to_receiver
    assert sender.content_key_wrap != receiver.content_key_wrap
    with pytest.raises(c.WrongCode, match="the code was wrong; nothing was sent; start again with a new code"):
        receiver.check_confirmation(c.Role.SENDER, sender.confirmation(c.Role.SENDER))
    with pytest.raises(c.ConfirmationFailed):
        sender.check_confirmation(c.Role.RECEIVER, receiver.confirmation(c.Role.RECEIVER))


def test_each_receiver_gets_its_own_pair_keys():
    sender_1, sender_2 = c.Pake(c.Role.SENDER, CODE), c.Pake(c.Role.SENDER, CODE)
    receiver_1, receiver_2 = c.Pake(c.Role.RECEIVER, CODE), c.Pake(c.Role.RECEIVER, CODE)
    keys_1, keys_2 = sender_1.finish(receiver_1.outbound), sender_2.finish(receiver_2.outbound)
    assert keys_1.content_key_wrap != keys_2.content_key_wrap
    assert keys_1.resume_token(c.Role.RECEIVER) != keys_2.resume_token(c.Role.RECEIVER)


def test_pake_messages_from_the_wire_are_checked():
    sender, receiver = c.Pake(c.Role.SENDER, CODE), c.Pake(c.Role.RECEIVER, CODE)
    element = receiver.outbound[1:]
    bad = [
        b"", receiver.outbound[:-1], receiver.outbound + b"\0",  # lengths
        b"A" + element,  # the sender's own side
        b"B" + bytes(32),  # not a point
        b"B" + bytes([1]) + bytes(31),  # the identity
        b"B" + bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    ]
    for message in bad:
        with pytest.raises(c.BadPakeMessage):
            c.Pake(c.Role.SENDER, CODE).finish(message)
    with pytest.raises(c.BadPakeMessage):  # our own element, reflected back with the other side's byte
        sender.finish(b"B" + sender.outbound[1:])


def test_a_pake_is_single_use():
    sender, receiver = c.Pake(c.Role.SENDER, CODE), c.Pake(c.Role.RECEIVER, CODE)
    sender.finish(receiver.outbound)
    with pytest.raises(c.BadPakeMessage):
        sender.finish(receiver.outbound)


def test_pair_keys_never_show_in_a_repr():
    sender, _ = pair()
    assert sender.control_sender_to_receiver.hex() not in repr(sender)


# --- the content key and control messages --------------------------------------------------------------------


def test_content_key_is_sealed_to_each_receiver_and_only_opens_there():
    content_key = c.new_content_key()
    sender_1, receiver_1 = pair()
    sender_2, receiver_2 = pair()
    sealed_1, sealed_2 = sender_1.seal_content_key(content_key), sender_2.seal_content_key(content_key)
    assert sealed_1 != sealed_2 and len(sealed_1) == c.SEALED_CONTENT_KEY_SIZE
    assert receiver_1.open_content_key(sealed_1) == receiver_2.open_content_key(sealed_2) == content_key
    with pytest.raises(c.Tampered):
        receiver_1.open_content_key(sealed_2)
    flipped = bytearray(sealed_1)
    flipped[0] ^= 1
    with pytest.raises(c.Tampered):
        receiver_1.open_content_key(bytes(flipped))


def test_control_messages_flow_in_both_directions_in_order():
    sender_keys, receiver_keys = pair()
    sender, receiver = sender_keys.control_channel(c.Role.SENDER), receiver_keys.control_channel(c.Role.RECEIVER)
    for text in (b'{"type":"offer"}', b"", b"x" * 5000):
        assert receiver.open(sender.seal(text)) == text
        assert sender.open(receiver.seal(text)) == text


def test_control_messages_cannot_be_dropped_replayed_reordered_or_reflected():
    sender_keys, receiver_keys = pair()
    sender = sender_keys.control_channel(c.Role.SENDER)
    first, second, third = (sender.seal(b"%d" % n) for n in range(3))
    for attack in ([second], [first, first], [first, third], [first, third, second]):
        receiver = receiver_keys.control_channel(c.Role.RECEIVER)
        with pytest.raises(c.Tampered):
            for message in attack:
                receiver.open(message)
    with pytest.raises(c.Tampered):  # the sender's own message handed back to it
        sender_keys.control_channel(c.Role.SENDER).open(first)


def test_after_a_reconnection_the_control_channel_has_fresh_keys():
    sender_keys, receiver_keys = pair()
    old = sender_keys.control_channel(c.Role.SENDER)
    lost = old.seal(b"sent just before the connection dropped")
    resync = c.new_resync_half() + c.new_resync_half()
    new_sender = sender_keys.control_channel(c.Role.SENDER, resync)
    new_receiver = receiver_keys.control_channel(c.Role.RECEIVER, resync)
    with pytest.raises(c.Tampered):  # a message of the old connection cannot be replayed into the new one
        new_receiver.open(lost)
    first = new_sender.seal(b"resync")
    assert first != sender_keys.control_channel(c.Role.SENDER).seal(b"resync")  # counter 0 again, another key
    assert new_receiver.open(first) == b"resync"
    assert new_sender.open(new_receiver.seal(b"ok")) == b"ok"
    with pytest.raises(ValueError):
        sender_keys.control_channel(c.Role.SENDER, resync[:16])


def test_a_party_whose_own_resync_half_is_fresh_never_reuses_a_sending_key():
    """A relay that repeats the receiver's half from an earlier reconnection cannot make the sender reuse a key."""
    sender_keys, _ = pair()
    replayed_receiver_half = c.new_resync_half()
    first = sender_keys.control_channel(c.Role.SENDER, c.new_resync_half() + replayed_receiver_half)
    second = sender_keys.control_channel(c.Role.SENDER, c.new_resync_half() + replayed_receiver_half)
    assert first.seal(b"same") != second.seal(b"same")


def test_control_nonces_are_the_counter():
    assert c._control_nonce(0) == bytes(12)
    assert c._control_nonce(258) == bytes(10) + b"\x01\x02"
    with pytest.raises(c.LimitExceeded):
        c._control_nonce(2**64)


# --- the chunk stream ----------------------------------------------------------------------------------------

FILES = [os.urandom(2500), b"", os.urandom(1000), os.urandom(1)]
CHUNK = 1000


def plan_for(files=FILES, chunk_size=CHUNK) -> c.StreamPlan:
    return c.StreamPlan(tuple(c.Segment(i, 0, len(data)) for i, data in enumerate(files)), chunk_size)


def seal_all(key: bytes, plan: c.StreamPlan, files=FILES) -> list[bytes]:
    sealer = c.StreamSealer(key, plan)
    sealed = [sealer.seal_next(files[p.file][p.offset:p.offset + p.length]) for p in plan.positions()]
    assert sealer.done
    return sealed


def open_all(key: bytes, plan: c.StreamPlan, chunks: list[bytes]) -> dict[int, bytearray]:
    opener, files = c.StreamOpener(key, plan), {}
    for chunk in chunks:
        opened = opener.open_next(chunk)
        end = opened.offset + len(opened.plaintext)
        files.setdefault(opened.file, bytearray())[opened.offset:end] = opened.plaintext
    opener.finish()
    return files


@pytest.fixture
def key() -> bytes:
    return c.data_key(c.new_content_key(), c.new_epoch_salt())


def test_plan_cuts_files_into_chunks_with_one_authenticated_last_chunk_each():
    plan = plan_for()
    assert [(p.file, p.chunk, p.offset, p.length, p.last) for p in plan.positions()] == [
        (0, 0, 0, 1000, False), (0, 1, 1000, 1000, False), (0, 2, 2000, 500, True),
        (1, 0, 0, 0, True),
        (2, 0, 0, 1000, True),
        (3, 0, 0, 1, True),
    ]
    assert plan.chunk_count() == 6
    assert plan.ciphertext_size() == 3501 + 6 * c.TAG_SIZE


def test_a_resumed_segment_starts_at_its_offset_with_chunk_index_zero():
    plan = c.StreamPlan((c.Segment(5, 1500, 3000),), 1000)
    assert [(p.chunk, p.offset, p.length, p.last) for p in plan.positions()] == [
        (0, 1500, 1000, False), (1, 2500, 500, True),
    ]


def test_plan_refuses_a_file_twice_and_layouts_beyond_the_nonce():
    with pytest.raises(ValueError):
        c.StreamPlan((c.Segment(0, 0, 1), c.Segment(0, 1, 2)), 10)
    with pytest.raises(c.LimitExceeded):
        c.StreamPlan((c.Segment(2**32, 0, 1),), 10)
    with pytest.raises(c.LimitExceeded):
        c.StreamPlan((c.Segment(0, 0, 2**57),), 1)


def test_stream_round_trip(key):
    plan = plan_for()
    files = open_all(key, plan, seal_all(key, plan))
    assert [bytes(files[i]) for i in range(len(FILES))] == FILES


def test_ciphertext_is_plaintext_plus_tag_and_hides_it(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    assert [len(s) for s in sealed] == [p.length + c.TAG_SIZE for p in plan.positions()]
    assert FILES[0][:100] not in b"".join(sealed)


def test_an_altered_byte_is_detected(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    for index, position in itertools.product(range(len(sealed)), (0, -1)):
        chunks = list(sealed)
        altered = bytearray(chunks[index])
        altered[position] ^= 0x80
        chunks[index] = bytes(altered)
        with pytest.raises(c.Tampered):
            open_all(key, plan, chunks)


def test_reordered_chunks_are_detected(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    with pytest.raises(c.Tampered):
        open_all(key, plan, [sealed[1], sealed[0], *sealed[2:]])


def test_a_replayed_chunk_is_detected(key):
    plan = plan_for([os.urandom(3000)])
    sealed = seal_all(key, plan, [b"\0" * 3000])  # equal plaintext chunks: the position alone must tell them apart
    with pytest.raises(c.Tampered):
        open_all(key, plan, [sealed[0], sealed[0], sealed[2]])


def test_a_dropped_last_chunk_is_detected_mid_stream_and_at_the_end(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    with pytest.raises(c.Tampered):  # file 0's last chunk dropped: file 1's chunk arrives where it was expected
        open_all(key, plan, [sealed[0], sealed[1], *sealed[3:]])
    with pytest.raises(c.Truncated):  # the stream's last chunk dropped
        open_all(key, plan, sealed[:-1])
    with pytest.raises(c.Truncated):  # an empty file's only chunk dropped at the end
        one = c.StreamPlan((c.Segment(0, 0, 0),), CHUNK)
        open_all(key, one, [])


def test_a_shortened_file_cannot_pass_off_a_middle_chunk_as_its_last(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    short = c.StreamPlan((c.Segment(0, 0, 2000),), CHUNK)  # a relay that also rewrote the size it could see
    with pytest.raises(c.Tampered):
        open_all(key, short, sealed[:2])


def test_chunks_swapped_between_files_are_detected(key):
    files = [b"\1" * 1000, b"\1" * 1000]  # same bytes, same length, same chunk index: only the file differs
    plan = plan_for(files)
    sealed = seal_all(key, plan, files)
    with pytest.raises(c.Tampered):
        open_all(key, plan, [sealed[1], sealed[0]])


def test_chunks_from_another_epoch_or_transfer_are_detected():
    content_key = c.new_content_key()
    old, new = c.data_key(content_key, c.new_epoch_salt()), c.data_key(content_key, c.new_epoch_salt())
    plan = plan_for()
    old_chunks, new_chunks = seal_all(old, plan), seal_all(new, plan)
    with pytest.raises(c.Tampered):
        open_all(new, plan, [old_chunks[0], *new_chunks[1:]])
    other_transfer = c.data_key(c.new_content_key(), c.new_epoch_salt())
    with pytest.raises(c.Tampered):
        open_all(other_transfer, plan, new_chunks)


def test_a_chunk_after_the_end_is_refused(key):
    plan = plan_for()
    sealed = seal_all(key, plan)
    with pytest.raises(c.Tampered):
        open_all(key, plan, [*sealed, sealed[-1]])


def test_nonces_never_repeat_within_an_epoch_and_epochs_get_fresh_keys():
    plan = plan_for([b"x" * 10_000, b"", b"y" * 3])
    nonces = [c.chunk_nonce(p.file, p.chunk, p.last) for p in plan.positions()]
    assert len(set(nonces)) == len(nonces)
    # A resumed stream restarts at chunk index 0 of a file, so it reuses nonces: the key must be new instead.
    resumed = c.StreamPlan((c.Segment(0, 5000, 10_000),), 1000)
    assert {c.chunk_nonce(p.file, p.chunk, p.last) for p in resumed.positions()} & set(nonces)
    content_key = c.new_content_key()
    keys = {c.data_key(content_key, c.new_epoch_salt()) for _ in range(100)}
    assert len(keys) == 100


def test_resumed_bytes_under_a_fresh_epoch_never_meet_a_used_key_and_nonce():
    """A file changed between two epochs: same positions, different bytes, so (key, nonce) must differ."""
    content_key = c.new_content_key()
    plan = c.StreamPlan((c.Segment(0, 0, 2000),), 1000)
    used: set[tuple[bytes, bytes]] = set()
    for _epoch in range(3):
        key = c.data_key(content_key, c.new_epoch_salt())
        for p in plan.positions():
            pair_ = (key, c.chunk_nonce(p.file, p.chunk, p.last))
            assert pair_ not in used
            used.add(pair_)


def test_chunk_nonce_and_associated_data_layout():
    assert c.chunk_nonce(1, 2, True) == bytes.fromhex("00000001" "00000000000002" "01")
    assert c.chunk_nonce(2**32 - 1, 2**56 - 1, False) == bytes.fromhex("ffffffff" "ffffffffffffff" "00")
    assert c.chunk_aad(1, 1 << 40, False) == b"relay-v2 chunk" + bytes.fromhex("00000001" "0000010000000000" "00")
    with pytest.raises(c.LimitExceeded):
        c.chunk_nonce(0, 2**56, False)
    with pytest.raises(c.LimitExceeded):
        c.chunk_aad(0, 2**64, False)


def test_sealer_insists_on_the_planned_lengths(key):
    sealer = c.StreamSealer(key, plan_for())
    with pytest.raises(ValueError):
        sealer.seal_next(b"short")
    opener = c.StreamOpener(key, plan_for())
    with pytest.raises(c.Tampered):
        opener.open_next(b"x" * 17)


def test_data_key_depends_on_content_key_and_salt():
    content_key, salt = c.new_content_key(), c.new_epoch_salt()
    assert c.data_key(content_key, salt) == c.data_key(content_key, salt)
    assert c.data_key(content_key, salt) != c.data_key(c.new_content_key(), salt)
    with pytest.raises(ValueError):
        c.data_key(content_key, salt[:16])


# --- the value classes are Records (relay/record.py): fields by name and position, frozen, keys never shown ------


@pytest.mark.parametrize(("cls", "values"), [
    (c.Segment, {"file": 1, "start": 2, "end": 3}),
    (c.ChunkPosition, {"file": 1, "chunk": 2, "offset": 3, "length": 4, "last": True}),
    (c.StreamPlan, {"segments": (c.Segment(0, 0, 5),), "chunk_size": 2}),
    (c.OpenedChunk, {"file": 1, "offset": 2, "plaintext": b"x", "last": False}),
    (c.PairKeys, {name: name.encode() for name in c.PairKeys.__slots__}),
], ids=lambda value: getattr(value, "__name__", ""))
def test_a_value_class_sets_each_field_from_its_own_argument_and_is_frozen(cls, values) -> None:
    import inspect

    from relay.record import FrozenInstanceError

    assert list(inspect.signature(cls).parameters) == list(cls.__slots__) == list(values)
    record = cls(**values)
    assert record == cls(*values.values()) and hash(record) == hash(cls(*values.values()))
    assert {name: getattr(record, name) for name in values} == values
    with pytest.raises(FrozenInstanceError):
        record.file = 9
    if cls is c.PairKeys:
        assert repr(record) == "PairKeys(<secret>)"


def test_a_stream_plan_still_refuses_what_it_refused() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        c.StreamPlan((), 0)
    with pytest.raises(ValueError, match="twice"):
        c.StreamPlan((c.Segment(0, 0, 1), c.Segment(0, 1, 2)), 1)
