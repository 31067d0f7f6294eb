"""Transfer codes: four words from the BIP-39 English list, made from the OS's secure random source."""

from __future__ import annotations

import math
import secrets
from functools import cache
from importlib import resources

WORDS_PER_CODE = 4


@cache
def wordlist() -> tuple[str, ...]:
    """The 2,048 BIP-39 English words (MIT licence, see relay/wordlist.txt): short, distinct in 4 letters."""
    text = resources.files("relay").joinpath("wordlist.txt").read_text("utf-8")
    words = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(words) == 2048, "relay/wordlist.txt must hold the 2,048 BIP-39 words"
    return words


def generate_code(words: int = WORDS_PER_CODE) -> str:
    """A fresh random code such as ``actor-table-ocean-ring``."""
    choices = wordlist()
    return "-".join(secrets.choice(choices) for _ in range(words))


def code_entropy_bits(words: int = WORDS_PER_CODE) -> float:
    """Bits of entropy in a generated code: 11 per word."""
    return words * math.log2(len(wordlist()))
