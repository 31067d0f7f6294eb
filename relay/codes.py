"""The word list of transfer codes (shared by the server's and the clients' checks; the words of a code are drawn
on the sender's machine by ``clients.crypto.generate_words``)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def wordlist() -> tuple[str, ...]:
    """The 2,048 BIP-39 English words (MIT licence, see relay/wordlist.txt): short, distinct in 4 letters."""
    text = resources.files("relay").joinpath("wordlist.txt").read_text("utf-8")
    words = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(words) == 2048, "relay/wordlist.txt must hold the 2,048 BIP-39 words"
    return words
