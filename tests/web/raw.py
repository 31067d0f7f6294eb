"""Raw protocol-2 parties for the page tests: a sender or a receiver on the real relay that keys with the page for
real (clients.crypto through tests.peers) and then does what a hostile or stalling peer would.
"""

from __future__ import annotations

from dataclasses import dataclass

from clients import crypto as c
from relay import protocol as p
from tests.peers import RawPeer, b64, key_as_receiver, key_as_sender, raw_sides, seal_json

WORDS = "ocean-table-actor"


@dataclass
class RawSender:
    """A raw sender: its socket, the code a page must type, and (once keyed) its channel and content key."""

    peer: RawPeer
    code: str
    channel: c.ControlChannel | None = None
    content_key: bytes = b""

    @classmethod
    async def open(cls, ws_url: str, words: str = WORDS) -> RawSender:
        peer = await RawPeer.connect_v2(ws_url, None, "send", receivers=1)
        hello = await peer.expect("hello")
        return cls(peer, f"{hello['nameplate']}-{words}")

    @property
    def nameplate(self) -> str:
        return self.code.split("-", 1)[0]

    async def key(self) -> None:
        """Wait for the receiver, key with it, and read `paired`."""
        await self.peer.expect("peer_joined")
        send, recv = raw_sides(self.peer)
        self.channel, self.content_key = await key_as_sender(send, recv, self.code, 1)
        await self.peer.expect("paired")

    async def offer(self, offer: p.Offer) -> None:
        assert self.channel is not None
        await self.peer.send({"type": "offer", "to": 1, "total_size": offer.total_size, "files": len(offer.files),
                              "data": b64(self.channel.seal(offer.to_json().encode()))})

    async def stream(self, sizes: list[int], chunk_size: int) -> c.StreamSealer:
        """After `start`: open epoch 0 with a sealed plan of whole files; return the sealer of its chunks."""
        assert self.channel is not None
        salt = c.new_epoch_salt()
        plan = c.StreamPlan(tuple(c.Segment(i, 0, size) for i, size in enumerate(sizes)), chunk_size)
        sealed = seal_json(self.channel, {"salt": b64(salt), "chunk_size": chunk_size,
                                          "segments": [[s.file, s.start, s.end] for s in plan.segments]})
        await self.peer.send({"type": "stream", "epoch": 0, "to": [1], "chunks": plan.chunk_count(),
                              "bytes": plan.ciphertext_size(), "data": [sealed]})
        return c.StreamSealer(c.data_key(self.content_key, salt), plan)


async def join_as_receiver(ws_url: str, code: str) -> tuple[RawPeer, c.ControlChannel, bytes]:
    """A raw receiver in the room of `code`, keyed with the (page) sender: its socket, channel and content key."""
    peer = await RawPeer.connect_v2(ws_url, code.split("-", 1)[0], "receive")
    await peer.expect("hello")
    send, recv = raw_sides(peer)
    channel, content_key = await key_as_receiver(send, recv, code)
    return peer, channel, content_key
