"""SPAKE2 over Ed25519, byte for byte the exchange of python-spake2 0.9 (``SPAKE2_A``/``SPAKE2_B``), with libsodium's
group operations (PyNaCl) in place of pure-Python big integers.

Why (docs/design/speed.md section 15): python-spake2 computes its curve parameters and three integer groups it
never uses here at import (217 million instructions) and runs each exchange in Python (about 100 million a side):
a third of a client's start-up, on every transfer. libsodium does the same group operations in microseconds, and in
constant time (python-spake2's timing caveat in docs/security.md). No curve arithmetic is written here: only the
protocol's steps, each python-spake2's.

What stays python-spake2's, so that the page's port (``clients/web/src/crypto.js``) and earlier clients keep
interoperating (tests/test_pake.py checks each against python-spake2 and its published known answers):

- M and N: python-spake2's ``arbitrary_element(b"M")`` and ``arbitrary_element(b"N")``, as constants;
- the password scalar: HKDF-SHA-256 of the password (no salt, info ``SPAKE2 pw``, 48 bytes), big-endian, mod L;
- the secret scalar: 64 bytes of entropy, big-endian, mod L;
- the message: the side byte (``A`` for the first party, ``B`` for the second), then x·G + pw·M (A) or
  y·G + pw·N (B), 33 bytes;
- the key: SHA-256 of SHA-256(pw), SHA-256(idA), SHA-256(idB), A's element, B's element and
  K = x·(Y − pw·N) (A) or y·(X − pw·M) (B).

The peer's element must be a canonical encoding of a point of the prime-order subgroup, not of small order
(libsodium's ``crypto_core_ed25519_is_valid_point``), and not our own element sent back. python-spake2 also takes a
non-canonical encoding of a valid point; no honest party sends one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as sodium
from nacl.exceptions import CryptoError

SIDE_A, SIDE_B = b"A", b"B"
ELEMENT_SIZE = 32
MESSAGE_SIZE = 1 + ELEMENT_SIZE
L = 2**252 + 27742317777372353535851937790883648493  # the order of the prime-order subgroup
# python-spake2 0.9's ParamsEd25519.M and .N (arbitrary_element of the seeds b"M" and b"N"): nobody knows their
# discrete logarithms. tests/test_pake.py derives them again with python-spake2.
M = bytes.fromhex("15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312")
N = bytes.fromhex("f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3")


if not (sodium.has_crypto_core_ed25519 and sodium.has_crypto_scalarmult_ed25519):  # pragma: no cover
    raise ImportError("PyNaCl was built with a minimal libsodium, without the Ed25519 group operations SPAKE2 needs")


class PakeError(ValueError):
    """The peer's message is not one: wrong length or side, not a valid element, our own sent back; or the
    exchange was used twice."""


def password_scalar(password: bytes) -> int:
    """python-spake2's ``password_to_scalar`` for Ed25519: 48 bytes of HKDF-SHA-256, big-endian, mod L."""
    expanded = HKDF(algorithm=hashes.SHA256(), length=48, salt=b"", info=b"SPAKE2 pw").derive(password)
    return int.from_bytes(expanded, "big") % L


def _scalar(value: int) -> bytes:
    return (value % L).to_bytes(32, "little")


class Spake2:
    """One side of one exchange: ``start()`` gives the 33-byte message for the peer, ``finish(peer's message)`` the
    32-byte key. ``side`` is ``SIDE_A`` (the first party, python-spake2's ``SPAKE2_A``) or ``SIDE_B``. Single-use."""

    def __init__(self, side: bytes, password: bytes, id_a: bytes = b"", id_b: bytes = b"",
                 entropy: Callable[[int], bytes] = os.urandom) -> None:
        if side not in (SIDE_A, SIDE_B):
            raise ValueError("the side is A or B")
        self.side = side
        self._password = password
        self._id_a, self._id_b = id_a, id_b
        self._pw = password_scalar(password)
        self._blinding, self._unblinding = (M, N) if side == SIDE_A else (N, M)
        self._entropy = entropy
        self._secret = 0
        self._element = b""
        self._finished = False

    def start(self) -> bytes:
        """The message for the peer: the side byte and x·G + pw·(M or N). Called once."""
        if self._element:
            raise PakeError("start() is called once")
        self._secret = int.from_bytes(self._entropy(64), "big") % L
        try:
            mine = sodium.crypto_scalarmult_ed25519_base_noclamp(_scalar(self._secret))
            blinded = sodium.crypto_core_ed25519_add(
                mine, sodium.crypto_scalarmult_ed25519_noclamp(_scalar(self._pw), self._blinding))
        except CryptoError as error:  # a scalar of 0 mod L: 2**-252 for random ones
            raise PakeError("this exchange cannot start: draw again") from error
        self._element = blinded
        return self.side + blinded

    def finish(self, message: bytes) -> bytes:
        """The shared key from the peer's message; raises :class:`PakeError` if it is not one. Called once."""
        if self._finished or not self._element:
            raise PakeError("finish() is called once, after start()")
        self._finished = True
        if len(message) != MESSAGE_SIZE or message[:1] != (SIDE_B if self.side == SIDE_A else SIDE_A):
            raise PakeError("the message is not 33 bytes from the other side")
        theirs = bytes(message[1:])
        if not sodium.crypto_core_ed25519_is_valid_point(theirs):
            raise PakeError("the element is not a canonical point of the prime-order subgroup")
        if theirs == self._element:
            raise PakeError("the peer sent our own element back")
        try:
            unblinded = sodium.crypto_core_ed25519_sub(
                theirs, sodium.crypto_scalarmult_ed25519_noclamp(_scalar(self._pw), self._unblinding))
            shared = sodium.crypto_scalarmult_ed25519_noclamp(_scalar(self._secret), unblinded)
        except CryptoError as error:  # the unblinded element or the result is the identity
            raise PakeError("the element gives no shared key") from error
        first, second = (self._element, theirs) if self.side == SIDE_A else (theirs, self._element)
        transcript = b"".join((hashlib.sha256(self._password).digest(), hashlib.sha256(self._id_a).digest(),
                               hashlib.sha256(self._id_b).digest(), first, second, shared))
        return hashlib.sha256(transcript).digest()
