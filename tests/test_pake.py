"""clients/pake.py: SPAKE2 on libsodium, byte for byte python-spake2 0.9's exchange (the page's port is checked
against the same known answers in tests/web/test_crypto_js.py)."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]
from spake2.ed25519_group import Ed25519Group  # type: ignore[import-untyped]
from spake2.parameters.ed25519 import ParamsEd25519  # type: ignore[import-untyped]

from clients import pake


def prg(seed: bytes):
    """python-spake2's test PRG (spake2/test/common.py): blocks of sha256(b"prng-<counter>-" + seed)."""
    blocks = (hashlib.sha256(b"prng-%d-" % counter + seed).digest() for counter in itertools.count())
    stream = (byte for block in blocks for byte in block)
    return lambda count: bytes(next(stream) for _ in range(count))


def fixed(data: bytes):
    return lambda count: data[:count]


def test_python_spake2s_published_known_answers():
    """python-spake2 0.9's tests/test_compat.py values: password "password", PRG seeds "A" and "B"."""
    a = pake.Spake2(pake.SIDE_A, b"password", entropy=prg(b"A"))
    b = pake.Spake2(pake.SIDE_B, b"password", entropy=prg(b"B"))
    m1a, m1b = a.start(), b.start()
    assert m1a.hex() == "416fc960df73c9cf8ed7198b0c9534e2e96a5984bfc5edc023fd24dacf371f2af9"
    assert m1b.hex() == "42354e97b88406922b1df4bea1d7870f17aed3dba7c720b313edae315b00959309"
    assert a.finish(m1b).hex() == b.finish(m1a).hex() == (
        "a480bca13fa04464bb644f10e340125e96c9494f7399fef7c2bda67eb0fdf06d"
    )


def test_the_constants_are_python_spake2s():
    assert pake.M == ParamsEd25519.M.to_bytes() and pake.N == ParamsEd25519.N.to_bytes()
    assert pake.L == Ed25519Group.order()
    for password in (b"", b"password", bytes(range(256))):
        assert pake.password_scalar(password) == Ed25519Group.password_to_scalar(password)


@pytest.mark.parametrize("seed", range(40))
def test_every_message_and_key_is_python_spake2s_and_the_two_interoperate(seed: int):
    rng = random.Random(seed)
    password, id_a, id_b = (rng.randbytes(rng.randrange(40)) for _ in range(3))
    entropy_a, entropy_b = rng.randbytes(64), rng.randbytes(64)
    ours_a = pake.Spake2(pake.SIDE_A, password, id_a, id_b, fixed(entropy_a))
    ours_b = pake.Spake2(pake.SIDE_B, password, id_a, id_b, fixed(entropy_b))
    theirs_a = SPAKE2_A(password, idA=id_a, idB=id_b, entropy_f=fixed(entropy_a))
    theirs_b = SPAKE2_B(password, idA=id_a, idB=id_b, entropy_f=fixed(entropy_b))
    message_a, message_b = ours_a.start(), ours_b.start()
    assert (message_a, message_b) == (theirs_a.start(), theirs_b.start())
    key = ours_a.finish(message_b)
    assert key == ours_b.finish(message_a) == theirs_a.finish(message_b) == theirs_b.finish(message_a)


def test_another_password_gives_another_key():
    a, b = pake.Spake2(pake.SIDE_A, b"ocean-table"), pake.Spake2(pake.SIDE_B, b"ocean-tablf")
    message_a, message_b = a.start(), b.start()
    assert a.finish(message_b) != b.finish(message_a)


def test_bad_messages_are_refused():
    receiver = pake.Spake2(pake.SIDE_B, b"pw")
    element = receiver.start()[1:]
    order_8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    negated_m = pake.M[:-1] + bytes([pake.M[-1] ^ 0x80])  # -M: a valid element, the control below
    bad = [
        b"", b"B" + element[:-1], b"B" + element + b"\0",  # lengths
        b"A" + element,  # the sender's own side
        b"C" + element,  # no side
        b"B" + bytes(32),  # not a point
        b"B" + bytes([1]) + bytes(31),  # the identity
        b"B" + order_8,  # small order
        b"B" + (2**255 - 19 + 1).to_bytes(32, "little"),  # the identity again, encoded non-canonically (y = p + 1)
    ]
    for message in bad:
        sender = pake.Spake2(pake.SIDE_A, b"pw")
        sender.start()
        with pytest.raises(pake.PakeError):
            sender.finish(message)
    control = pake.Spake2(pake.SIDE_A, b"pw")
    control.start()
    assert len(control.finish(b"B" + negated_m)) == 32


def test_our_own_element_sent_back_is_refused():
    sender = pake.Spake2(pake.SIDE_A, b"pw")
    mine = sender.start()
    with pytest.raises(pake.PakeError, match="our own element"):
        sender.finish(b"B" + mine[1:])


def test_an_exchange_is_single_use():
    a, b = pake.Spake2(pake.SIDE_A, b"pw"), pake.Spake2(pake.SIDE_B, b"pw")
    message_a, message_b = a.start(), b.start()
    with pytest.raises(pake.PakeError):
        a.start()
    a.finish(message_b)
    with pytest.raises(pake.PakeError):
        a.finish(message_b)
    fresh = pake.Spake2(pake.SIDE_B, b"pw")
    with pytest.raises(pake.PakeError):  # finish before start
        fresh.finish(message_a)
    assert b.finish(message_a)


def test_fresh_exchanges_draw_fresh_secrets_from_the_system():
    assert len({pake.Spake2(pake.SIDE_A, b"pw").start() for _ in range(20)}) == 20
