"""The encrypted chunk stream between the socket and the disk, without the socket: what ``clients/transfer.py``
will call once per chunk (issue 12, step 2).

Receiver::

    view = await websocket.recv()            # a view of the receive buffer (clients.wsclient)
    placed = await sink.put(view)            # authenticate + decrypt into a FileWriter buffer, queue the pwrite
    ...
    await sink.finish()                      # Truncated if the stream stopped early; WriteFailed if a write did

Sender::

    while (sealed := await source.next()) is not None:   # FileReader -> ChunkSealerInto, one reusable buffer
        await websocket.send_binary(sealed)              # masks into its own frame: the buffer is free again

Both sides hold a fixed number of buffers (the writer's or reader's pool plus one), so memory does not depend on
the file sizes. Files are named by their index in the plan; the caller (the store) owns opening, naming and
renaming them, and says which descriptor a file index writes to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from clients import crypto as c
from clients.chunkcrypt import ChunkOpenerInto, ChunkSealerInto, Placed
from clients.diskio import DEFAULT_DEPTH, FileReader, FileWriter

PartFor = Callable[[int], tuple[int, str]]
"""File index -> (open descriptor, path for messages) of the part file the chunks of that file go to."""


class ChunkSink:
    """Receives one epoch's sealed chunks in plan order and writes their plaintext at their offsets."""

    def __init__(self, key: bytes, plan: c.StreamPlan, part_for: PartFor, depth: int = DEFAULT_DEPTH) -> None:
        self._opener = ChunkOpenerInto(key, plan)
        self._writer = FileWriter(max(plan.chunk_size, 1), depth)
        self._part_for = part_for
        self.completed: list[int] = []
        """Indices of the files whose last chunk authenticated (written once :meth:`finish` returned)."""
        self.received = 0
        """Plaintext bytes authenticated so far (for progress)."""

    @property
    def position(self) -> c.ChunkPosition | None:
        """Where the next chunk belongs (its file index tells the caller which part to have open)."""
        return self._opener.position

    async def put(self, sealed: bytes | bytearray | memoryview,
                  observe: Callable[[memoryview], object] | None = None) -> Placed:
        """Authenticate and decrypt the next chunk into a free buffer and queue its write; ``observe`` sees the
        authenticated plaintext first (e.g. a running SHA-256).

        Raises ``crypto.Tampered`` (nothing of that chunk is written) or ``diskio.WriteFailed`` (an earlier write
        failed). Waits while every buffer is being written: that is the receiver's backpressure.
        """
        buffer = await self._writer.acquire()
        try:
            placed = self._opener.open_next_into(sealed, buffer)
        except BaseException:
            self._writer.give_back(buffer)
            raise
        if observe is not None:
            observe(memoryview(buffer)[:placed.length])
        if placed.length:
            fd, path = self._part_for(placed.file)
            self._writer.submit(fd, path, placed.offset, buffer, placed.length)
        else:
            self._writer.give_back(buffer)
            self._part_for(placed.file)  # an empty file still gets its (empty) part
        self.received += placed.length
        if placed.last:
            self.completed.append(placed.file)
        return placed

    @property
    def done(self) -> bool:
        """Every planned chunk authenticated."""
        return self._opener.done

    async def flush(self) -> None:
        """Wait until every queued write is on disk (before renaming a part); raises ``WriteFailed``."""
        await self._writer.flush()

    async def finish(self) -> None:
        """The sender ended the stream: ``Truncated`` if chunks are missing, else wait for every write."""
        self._opener.finish()
        await self._writer.flush()

    def close(self) -> None:
        """Stop the writer thread (after a failure too); the caller closes its part files afterwards."""
        self._writer.close()


class ChunkSource:
    """Reads the plan's files with read-ahead and seals each chunk into one reusable buffer.

    ``paths[i]`` is file ``i`` of the plan. Each segment is read from its ``start`` to its ``end``; a file shorter
    than its segment raises ``diskio.ReadFailed``.
    """

    def __init__(self, key: bytes, plan: c.StreamPlan, paths: Sequence[str | os.PathLike[str]],
                 depth: int = DEFAULT_DEPTH) -> None:
        self._sealer = ChunkSealerInto(key, plan)
        self._plan = plan
        self._paths = paths
        self._segments = iter(plan.segments)
        self._reader: FileReader | None = None
        self._out = bytearray(plan.chunk_size + c.TAG_SIZE)
        self._depth = depth
        self.sent = 0
        """Plaintext bytes sealed so far (for progress)."""

    async def next(self) -> memoryview | None:
        """The next sealed chunk (valid until the next call), or ``None`` after the last."""
        while True:
            if self._reader is None:
                segment = next(self._segments, None)
                if segment is None:
                    return None
                self._reader = FileReader(self._paths[segment.file], segment.end - segment.start,
                                          self._plan.chunk_size, self._depth, start=segment.start)
            data = await self._reader.next()
            if data is None:
                self._reader.close()
                self._reader = None
                continue
            sealed = self._sealer.seal_next_into(data, self._out)
            self.sent += len(data)
            return sealed

    def close(self) -> None:
        """Stop the reader thread, if a file is being read."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
