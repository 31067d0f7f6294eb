"""Disk I/O for the data path: one writer thread and one reader thread, each with a fixed pool of buffers.

Why not ``aiofiles``: it hands every ``write``/``read`` to a thread-pool executor, so each 1 MiB chunk costs a
future, a queue put that wakes a pool thread, and a ``bytes`` object. Measured on today's receiver (``perf``), the
hand-offs and the GIL ping-pong around them are a visible share of its 4.4 CPU-s per GiB. Here:

- :class:`FileWriter`: the event loop ``acquire``s a buffer from the pool (waiting while all are in flight: that
  is the memory bound, ``depth * buffer_size``), fills it (e.g. ``AESGCM.decrypt_into``), and ``submit``s it with
  a file descriptor and an offset. One thread ``os.pwrite``s jobs in order and gives each buffer back. A failed
  write is kept and raised, as :class:`WriteFailed` with the path and ``errno``, by the next ``acquire``,
  ``submit`` or ``flush`` on the loop: the caller learns it at the next chunk, never later than ``flush``.
- :class:`FileReader`: a thread ``readinto``s the first ``size`` bytes of a file into pool buffers, at most
  ``depth`` chunks ahead of the loop; :meth:`FileReader.next` returns the next chunk as a ``memoryview`` that stays
  valid until the following call. A file that shrinks while read raises :class:`ReadFailed`.

Both are sized at construction and never grow, so memory is flat in the file size.

Exceptions::

    DiskError (OSError subclass: callers that catch OSError keep working)
    ├── WriteFailed   a write (or the final fsync-free flush) failed: path, errno, strerror
    └── ReadFailed    a read failed
        └── Shrank    the file was shorter than the size it was offered with
"""

from __future__ import annotations

import asyncio
import errno as errno_module
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass

DEFAULT_DEPTH = 8
_STOP = None


class DiskError(OSError):
    """A disk operation of the data path failed; ``filename`` names the file, ``errno`` says why."""


class WriteFailed(DiskError):
    """Writing a received chunk failed (disk full, file system gone, permissions changed...)."""


class ReadFailed(DiskError):
    """Reading a file to send failed, or the file is shorter than when it was offered."""


class Shrank(ReadFailed):
    """The file ended before the size it was offered with (it shrank since)."""


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less; Windows has no ``pwrite``)."""
    done = 0
    while done < len(data):
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, data[done:], offset + done)
        else:  # pragma: no cover - Windows: seek + write is safe, this thread is the file's only writer
            os.lseek(fd, offset + done, os.SEEK_SET)
            written = os.write(fd, data[done:])
        if written <= 0:
            raise OSError(errno_module.EIO, "the disk accepted no bytes")
        done += written


@dataclass(slots=True)
class _WriteJob:
    fd: int
    path: str
    offset: int
    buffer: bytearray
    first: int
    length: int


class FileWriter:
    """Writes chunks at offsets of open files from one thread; ``depth`` buffers of ``buffer_size`` bytes.

    Use from one event loop: ``buffer = await writer.acquire()``, fill ``buffer[:n]``, then
    ``writer.submit(fd, path, offset, buffer, n)``; ``await writer.flush()`` before closing or renaming the file;
    ``writer.close()`` at the end (also after a failure). The writer never opens or closes files itself: the
    store owns the part files and their names.
    """

    def __init__(self, buffer_size: int, depth: int = DEFAULT_DEPTH) -> None:
        if buffer_size < 1 or depth < 1:
            raise ValueError("buffer size and depth must be positive")
        self.buffer_size = buffer_size
        self.depth = depth
        self._loop = asyncio.get_running_loop()
        self._free: deque[bytearray] = deque(bytearray(buffer_size) for _ in range(depth))
        self._jobs: queue.SimpleQueue[_WriteJob | None] = queue.SimpleQueue()
        self._in_flight = 0
        self._changed = asyncio.Event()  # set whenever a job finished (a buffer came back or a failure)
        self._failure: WriteFailed | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay-writer", daemon=True)
        self._thread.start()

    async def acquire(self) -> bytearray:
        """A free buffer (waits while all ``depth`` are being written); raises an earlier write's failure."""
        while True:
            self._raise_failure()
            if self._free:
                return self._free.popleft()
            self._changed.clear()
            await self._changed.wait()

    def submit(self, fd: int, path: str, offset: int, buffer: bytearray, length: int, first: int = 0) -> None:
        """Queue ``buffer[first:length]`` for writing at ``offset`` of ``fd``; the buffer belongs to the writer now.

        ``first`` lets a receiver skip the start of a chunk it already holds (a resumed stream may start earlier).
        """
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the writer is closed")
        if not 0 <= first <= length <= len(buffer) or offset < 0:
            raise ValueError("length, first or offset out of range")
        self._in_flight += 1
        self._jobs.put(_WriteJob(fd, path, offset, buffer, first, length))

    def give_back(self, buffer: bytearray) -> None:
        """Return an acquired buffer that will not be submitted (its chunk failed or was empty)."""
        self._free.append(buffer)
        self._changed.set()

    async def flush(self) -> None:
        """Wait until every submitted chunk is written; raise :class:`WriteFailed` if one was not."""
        while self._in_flight:
            self._raise_failure()
            self._changed.clear()
            await self._changed.wait()
        self._raise_failure()

    def statistics(self) -> dict[str, int]:
        """Buffers in flight and free: backpressure made visible (trio's ``statistics()`` idea)."""
        return {"in_flight": self._in_flight, "free": len(self._free), "depth": self.depth}

    def close(self) -> None:
        """Stop the thread after the queued jobs (bounded: at most ``depth`` of them); idempotent."""
        if not self._closed:
            self._closed = True
            self._jobs.put(_STOP)
            self._thread.join()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        failed = False
        while (job := self._jobs.get()) is not _STOP:
            error: WriteFailed | None = None
            if not failed:  # after a failure, later jobs are dropped: the transfer is over
                try:
                    _pwrite_all(job.fd, memoryview(job.buffer)[job.first:job.length], job.offset)
                except OSError as exc:
                    failed = True
                    error = WriteFailed(exc.errno or errno_module.EIO, exc.strerror or str(exc), job.path)
                except Exception as exc:  # never let the thread die silently: the loop would wait forever
                    failed = True
                    error = WriteFailed(errno_module.EIO, f"unexpected: {exc!r}", job.path)
            try:
                self._loop.call_soon_threadsafe(self._done, job.buffer, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _done(self, buffer: bytearray, error: WriteFailed | None) -> None:
        self._in_flight -= 1
        self._free.append(buffer)
        if error is not None and self._failure is None:
            self._failure = error
        self._changed.set()


class FileReader:
    """Reads ``size`` bytes of ``path`` from ``start`` in chunks of ``chunk_size``, ``depth`` chunks ahead of the loop.

    ``await reader.next()`` returns the next chunk (the last may be short; an empty file gives one empty chunk,
    as the stream plan wants) and ``None`` after the last; each view is valid until the following ``next``.
    Call :meth:`close` when done or on failure (it stops the thread and closes the file).
    """

    def __init__(self, path: str | os.PathLike[str], size: int, chunk_size: int, depth: int = DEFAULT_DEPTH,
                 start: int = 0) -> None:
        if chunk_size < 1 or depth < 2 or size < 0 or start < 0:
            raise ValueError("chunk size positive, depth at least 2, size and start not negative")
        self.path = os.fspath(path)
        self.start = start
        self.size = size
        self.chunk_size = chunk_size
        self._loop = asyncio.get_running_loop()
        try:
            self._file = open(self.path, "rb", buffering=0)
            self._file.seek(start)
        except OSError as exc:
            raise ReadFailed(exc.errno or errno_module.EIO, exc.strerror or str(exc), self.path) from exc
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put(bytearray(chunk_size))
        self._ready: deque[tuple[bytearray, int] | ReadFailed | None] = deque()
        self._arrived = asyncio.Event()
        self._held: bytearray | None = None
        self._finished = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-reader", daemon=True)
        self._thread.start()

    async def next(self) -> memoryview | None:
        """The next chunk, or ``None`` once ``size`` bytes were returned; raises :class:`ReadFailed`."""
        if self._finished:
            return None
        if self._stop.is_set():
            raise RuntimeError("the reader is closed")
        if self._held is not None:
            self._free.put(self._held)
            self._held = None
        while not self._ready:
            self._arrived.clear()
            await self._arrived.wait()
        item = self._ready.popleft()
        if item is None:
            self._finished = True
            return None
        if isinstance(item, ReadFailed):
            self._finished = True
            raise item
        buffer, length = item
        self._held = buffer
        return memoryview(buffer)[:length]

    def close(self) -> None:
        """Stop reading and close the file; idempotent."""
        self._stop.set()
        self._free.put(None)  # wakes the thread if it waits for a buffer
        self._thread.join()
        self._file.close()

    def _run(self) -> None:
        offset = 0
        try:
            while True:
                buffer = self._free.get()
                if buffer is None or self._stop.is_set():
                    return
                length = min(self.chunk_size, self.size - offset)
                view = memoryview(buffer)[:length]
                got = 0
                while got < length:
                    n = self._file.readinto(view[got:])
                    if not n:
                        raise Shrank(errno_module.EIO, f"the file ended at {self.start + offset + got} bytes, "
                                         f"before the {self.start + self.size} it was offered with", self.path)
                    got += n
                self._post((buffer, length))
                offset += length
                if offset >= self.size:
                    self._post(None)
                    return
        except ReadFailed as exc:
            self._post(exc)
        except OSError as exc:
            self._post(ReadFailed(exc.errno or errno_module.EIO, exc.strerror or str(exc), self.path))
        except Exception as exc:  # never let the thread die silently: next() would wait forever
            self._post(ReadFailed(errno_module.EIO, f"unexpected: {exc!r}", self.path))

    def _post(self, item: tuple[bytearray, int] | ReadFailed | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the loop is closed
            self._stop.set()

    def _deliver(self, item: tuple[bytearray, int] | ReadFailed | None) -> None:
        self._ready.append(item)
        self._arrived.set()
