"""Disk I/O for the data path: one writer thread and one reader thread, each with a fixed pool of buffers.

Why not ``aiofiles``: it hands every ``write``/``read`` to a thread-pool executor, so each 1 MiB chunk costs a
future, a queue put that wakes a pool thread, and a ``bytes`` object. Measured on today's receiver (``perf``), the
hand-offs and the GIL ping-pong around them are a visible share of its 4.4 CPU-s per GiB. Here the process has
one writer thread and one reader thread, started on first use and shared by every writer and reader (a process
running hundreds of transfers, as tests/hardening/test_load.py does, must not run hundreds of threads competing
for the GIL with its event loop):

- :class:`FileWriter`: the event loop ``acquire``s a buffer from the pool (waiting while all are in flight: that
  is the memory bound, ``depth * buffer_size``), fills it (e.g. ``AESGCM.decrypt_into``), and ``submit``s it with
  a :class:`Target` (the file's descriptors) and an offset. The writer thread ``os.pwrite``s jobs in order and
  gives each buffer back. A failed write is kept and raised, as :class:`WriteFailed` with the path and ``errno``,
  by the next ``acquire``, ``submit`` or ``flush`` on the loop: the caller learns it at the next chunk, never
  later than ``flush``.
- :class:`FileReader`: the reader thread ``readinto``s the first ``size`` bytes of a file into pool buffers, at most
  ``depth`` chunks ahead of the loop; :meth:`FileReader.next` returns the next chunk as a ``memoryview`` that stays
  valid until the following call. A file that shrinks while read raises :class:`ReadFailed`.

- Direct writes (Linux, where :data:`DIRECT_WRITES`, :func:`direct_writes` says why): a part's :class:`Target`
  may carry a second descriptor of the same file opened with ``O_DIRECT`` (:func:`open_direct`); the writer
  sends each chunk's aligned middle through it, past the page cache, and the rest (an unaligned head or tail)
  through the ordinary descriptor.

- :func:`preallocate`: reserve a new part's blocks at its offered size before the first write (Linux
  ``fallocate(FALLOC_FL_KEEP_SIZE)``, best effort): ext4's delayed allocation otherwise reserves and maps blocks
  inside every ``pwrite``.

Both are sized at construction and never grow, so memory is flat in the file size.

Exceptions::

    DiskError (OSError subclass: callers that catch OSError keep working)
    ├── WriteFailed   a write (or the final fsync-free flush) failed: path, errno, strerror
    └── ReadFailed    a read failed
        └── Shrank    the file was shorter than the size it was offered with
"""

from __future__ import annotations

import asyncio
import ctypes
import errno as errno_module
import mmap
import os
import queue
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import cast

DEFAULT_DEPTH = 8
FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h: allocate blocks without changing the file's size
BALLOON_DRIVERS = "/sys/bus/virtio/drivers/virtio_balloon"
BALLOON_REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING: the guest reports free pages, the host takes them back
SMALL_PIECE, LARGE_PIECE = 16 * 1024, 256 * 1024  # _pwrite_all, write_piece
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux (and a few others); 0 where the platform has none
# What O_DIRECT needs aligned: a write's file offset, length and memory address. 4096 is the logical block size
# of nearly every disk and a multiple of the rest (512); a device or file system that needs more refuses the
# write with EINVAL, and that file falls back to buffered writes.
ALIGN = 4096
DIRECT_FROM = 8 * 1024 * 1024  # a part with fewer bytes still to come is written through the page cache only
_REFUSED = frozenset({errno_module.EINVAL, errno_module.EOPNOTSUPP})  # how a file system says "no O_DIRECT"


def free_pages_go_to_the_host(drivers: str = BALLOON_DRIVERS) -> bool:
    """Whether this is a virtual machine whose balloon reports free memory to its host (Linux: a virtio balloon
    device with feature bit ``VIRTIO_BALLOON_F_REPORTING``; its ``features`` file is one character per bit)."""
    try:
        devices = os.listdir(drivers)
    except OSError:
        return False
    for device in devices:
        try:
            with open(os.path.join(drivers, device, "features"), encoding="ascii") as features:
                bits = features.read(64).strip()
        except (OSError, ValueError):
            continue
        if len(bits) > BALLOON_REPORTING_BIT and bits[BALLOON_REPORTING_BIT] == "1":
            return True
    return False


def write_piece(memory_goes_back: bool) -> int:
    """The most one ``pwrite`` carries (docs/design/speed.md section 15): 16 KiB where free memory goes back to the
    host, 256 KiB elsewhere. Small writes dodge the host's faults (``_pwrite_all``) but cost the kernel more per
    byte: in warm memory a receiver paid about 0.2 CPU-s/GiB more with 16 KiB pieces than with 256 KiB ones."""
    return SMALL_PIECE if memory_goes_back else LARGE_PIECE


def direct_writes(memory_goes_back: bool, platform: str = sys.platform) -> bool:
    """Whether the receiver writes big parts with ``O_DIRECT`` (docs/design/speed.md section 17): on Linux, where
    free memory goes back to the host, and nowhere else.

    Where free memory goes back to the host, every page-cache page a write fills may cost a host fault, charged
    to the writer as system time (sections 11 and 15): 1 GiB in 16 KiB buffered pieces cost 0.78-0.85 s of
    system time there, the same bytes with ``O_DIRECT`` from one aligned buffer 0.10-0.12 s. Elsewhere the page
    cache stays: a buffered write returns once its bytes are in memory, so a burst faster than the disk is
    absorbed and written back later, while ``O_DIRECT`` waits for the device at every write and would cap a
    transfer at the disk's speed (a slow USB disk or network share: a fraction of the network's).
    """
    return memory_goes_back and platform.startswith("linux") and O_DIRECT != 0


MEMORY_GOES_BACK = free_pages_go_to_the_host()
WRITE_PIECE = write_piece(MEMORY_GOES_BACK)
DIRECT_WRITES = direct_writes(MEMORY_GOES_BACK)  # the default of ``clients.store.Destination.direct``


class DiskError(OSError):
    """A disk operation of the data path failed; ``filename`` names the file, ``errno`` says why."""


class WriteFailed(DiskError):
    """Writing a received chunk failed (disk full, file system gone, permissions changed...)."""


class ReadFailed(DiskError):
    """Reading a file to send failed, or the file is shorter than when it was offered."""


class Shrank(ReadFailed):
    """The file ended before the size it was offered with (it shrank since)."""


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` in calls of at most :data:`WRITE_PIECE` bytes (``os.pwrite`` may write
    less; Windows has no ``pwrite``).

    Why pieces (docs/design/speed.md sections 11 and 15): on a VM whose balloon hands free memory back to the
    host (the benchmark machine), the kernel's copy into the page cache costs a host fault per page of memory the
    host took back, and the size of a write decides which memory the kernel takes: a large write gets large
    page-cache folios, carved from the big free blocks, which are the ones handed back; small writes get small
    folios, which (our reading) come first from memory freed moments ago, such as the socket buffers'. A 1 GiB
    receiver there, interleaved: 256 KiB pieces 1.3-3.6 CPU-s/GiB, 16 KiB pieces 0.8-0.9. Where memory stays
    the guest's, the 65,536 small writes per GiB cost about 0.2 CPU-s more than 4,096 of 256 KiB: see
    :func:`write_piece`.
    """
    done = 0
    while done < len(data):
        piece = data[done:done + WRITE_PIECE]
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, piece, offset + done)
        else:  # pragma: no cover - Windows: seek + write is safe, this thread is the file's only writer
            os.lseek(fd, offset + done, os.SEEK_SET)
            written = os.write(fd, piece)
        if written <= 0:
            raise OSError(errno_module.EIO, "the disk accepted no bytes")
        done += written


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate  # the C library the interpreter already loaded
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_FALLOCATE = _load_fallocate()


def preallocate(fd: int, start: int, end: int) -> bool:
    """Reserve the blocks of bytes ``start`` to ``end`` of ``fd`` without changing its size; True if done.

    Why: on ext4 (this machine's ``/tmp`` and home) a ``pwrite`` past what is allocated reserves and maps blocks
    as it goes (delayed allocation: ``ext4_da_get_block_prep``, extent-status updates), per page. Copying 1 GiB
    into a new file in 256 KiB ``pwrite`` calls cost 0.34-1.38 s of system time (median 0.40, 12 runs) and
    0.26-0.37 (median 0.28) into a file reserved first (docs/design/speed.md section 12). The size stays as
    written (``KEEP_SIZE``), so a part still says how much of the file it holds. Best effort: a file system
    without ``fallocate``, a full disk (the writes report it as they always did) or another platform leave the
    file as it was.
    """
    if _FALLOCATE is None or end <= start:
        return False
    return _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, start, end - start) == 0


def open_direct(fd: int, opener: Callable[[str, int], int] = os.open) -> int:
    """A second descriptor of ``fd``'s file, opened for writing with ``O_DIRECT``; -1 where that is refused.

    The file is reopened through ``/proc/self/fd/<fd>``: the kernel goes straight to the open file's inode, so no
    path is resolved again (a name replaced meanwhile in the folder cannot redirect the writes), and the result is
    checked to be the same regular file. Refused silently (-1, the part is written buffered as before): a
    platform without ``O_DIRECT``, no ``/proc``, a file system that does not do direct I/O (``EINVAL``), any
    other error. ``opener`` is ``os.open``'s signature (tests inject a refusing one).
    """
    if not O_DIRECT:
        return -1
    try:
        direct = opener(f"/proc/self/fd/{fd}", os.O_WRONLY | O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return -1
    try:
        mine, reopened = os.fstat(fd), os.fstat(direct)
        if stat.S_ISREG(reopened.st_mode) and (mine.st_dev, mine.st_ino) == (reopened.st_dev, reopened.st_ino):
            return direct
    except OSError:
        pass
    os.close(direct)
    return -1


class Target:
    """A file the writer writes into: its descriptor, the path to name in errors and, for direct writes, a second
    descriptor of the same file opened with ``O_DIRECT`` (-1 for none; see :func:`open_direct`).

    The owner of the file (``clients.store``) opens and closes both descriptors; the writer only writes. The
    writer thread sets ``refused`` when the file system refuses a direct write (``EINVAL``): that write and
    every later one of the file then go through ``fd``.
    """

    __slots__ = ("fd", "path", "direct", "refused")

    def __init__(self, fd: int, path: str, direct: int = -1) -> None:
        self.fd = fd
        self.path = path
        self.direct = direct
        self.refused = False

    @property
    def writes_direct(self) -> bool:
        """Whether aligned writes still go through the ``O_DIRECT`` descriptor."""
        return self.direct >= 0 and not self.refused


def _write_direct(target: Target, data: memoryview, offset: int, address: int | None) -> None:
    """Write ``data`` at ``offset`` of ``target``: its aligned middle through the ``O_DIRECT`` descriptor, the
    rest through the buffered one. ``address``: where ``data`` starts in memory, modulo ALIGN (``None``: unknown,
    then nothing goes direct).

    O_DIRECT takes a write only if its file offset, length and memory address are multiples of the alignment, so
    a chunk splits into a buffered head up to the first aligned offset (after a resume from an odd count), the
    direct middle and a buffered tail (a file's last bytes, an odd chunk size). The middle can go direct only if
    its address and its offset are aligned together: where they are not, the whole chunk goes buffered. Mixing
    the two on one file is coherent in Linux: a direct write first writes back and drops the cached pages of its
    range (and with 4 KiB pages a buffered piece never shares a page with a direct range: both are cut at ALIGN
    boundaries). Reads of the part afterwards (resume's digest) see the bytes either way.
    """
    head = -offset % ALIGN
    body = (len(data) - head) // ALIGN * ALIGN
    if address is None or (address + head) % ALIGN or body <= 0:
        _pwrite_all(target.fd, data, offset)
        return
    if head:
        _pwrite_all(target.fd, data[:head], offset)
    done = 0
    while done < body:
        try:
            written = os.pwrite(target.direct, data[head + done:head + body], offset + head + done)
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
            target.refused = True  # this file system does not do it (EINVAL writes nothing): buffered from here
            break
        if written <= 0:
            raise OSError(errno_module.EIO, "the disk accepted no bytes")
        done += written
        if written % ALIGN:  # a short write at an odd count: what is left is no longer aligned
            break
    _pwrite_all(target.fd, data[head + done:], offset + head + done)


class _Worker:
    """One daemon thread running jobs (callables) in order, shared by every writer (or reader) of the process."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            self._jobs.get()()  # each job catches its own errors and reports them to its loop


_WRITER = _Worker("relay-writer")
_READER = _Worker("relay-reader")


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class FileWriter:
    """Writes chunks at offsets of open files on the writer thread; ``depth`` buffers of ``buffer_size`` bytes.

    Use from one event loop: ``buffer = await writer.acquire()``, fill ``buffer[:n]``, then
    ``writer.submit(target, offset, buffer, n)``; ``await writer.flush()`` before closing or renaming the file;
    ``writer.close()`` at the end (also after a failure: queued writes not yet started are dropped, and none runs
    after it returns). The writer never opens or closes files itself: the store owns the part files and names.

    The buffers are slices of one anonymous ``mmap``, each starting on a page boundary, so that a chunk can go to
    an ``O_DIRECT`` descriptor straight from its buffer (:func:`_write_direct`). Anonymous memory is also zeroed
    lazily, page by page as a chunk first fills it: constructing the pool costs nothing, where ``depth``
    bytearrays of 1 MiB were zeroed up front (~9 ms at start-up). The mapping is unmapped once the writer and
    every buffer it handed out are gone.
    """

    def __init__(self, buffer_size: int, depth: int = DEFAULT_DEPTH) -> None:
        if buffer_size < 1 or depth < 1:
            raise ValueError("buffer size and depth must be positive")
        self.buffer_size = buffer_size
        self.depth = depth
        self._loop = asyncio.get_running_loop()
        stride = -(-buffer_size // max(mmap.PAGESIZE, ALIGN)) * max(mmap.PAGESIZE, ALIGN)
        memory = mmap.mmap(-1, stride * depth)
        buffers = [memoryview(memory)[index * stride:index * stride + buffer_size] for index in range(depth)]
        self._ours = {id(buffer): buffer for buffer in buffers}  # their addresses are multiples of ALIGN
        self._free: deque[memoryview] = deque(buffers)
        self._in_flight = 0
        self._changed = asyncio.Event()  # set whenever a job finished (a buffer came back or a failure)
        self._failure: WriteFailed | None = None
        self._closed = False
        self._lock = threading.Lock()  # held by the writer thread around each write; close() takes it too
        self._stopped = False  # under _lock: the thread skips this writer's jobs
        self._failed = False  # thread side: after a failure, later jobs are dropped (the transfer is over)

    async def acquire(self) -> memoryview:
        """A free buffer (waits while all ``depth`` are being written); raises an earlier write's failure."""
        while True:
            self._raise_failure()
            if self._free:
                return self._free.popleft()
            self._changed.clear()
            await self._changed.wait()

    def submit(self, target: Target, offset: int, buffer: memoryview, length: int, first: int = 0) -> None:
        """Queue ``buffer[first:length]`` for writing at ``offset`` of ``target``; the buffer belongs to the writer
        now. Its aligned middle goes through ``target.direct`` if the target has one (:func:`_write_direct`).

        ``first`` lets a receiver skip the start of a chunk it already holds (a resumed stream may start earlier).
        """
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the writer is closed")
        if not 0 <= first <= length <= len(buffer) or offset < 0:
            raise ValueError("length, first or offset out of range")
        self._in_flight += 1
        _WRITER.put(lambda: self._write(target, offset, buffer, first, length))

    def give_back(self, buffer: memoryview) -> None:
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
        """No write of this writer runs after this returns (waits for the one under way, at most one chunk);
        writes still queued are dropped. Idempotent."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._stopped = True

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write(self, target: Target, offset: int, buffer: memoryview, first: int, length: int) -> None:
        """On the writer thread."""
        path = target.path
        error: WriteFailed | None = None
        with self._lock:
            if self._stopped:
                return
            if not self._failed:
                try:
                    data = memoryview(buffer)[first:length]
                    if target.writes_direct:
                        ours = self._ours.get(id(buffer)) is buffer
                        _write_direct(target, data, offset, first % ALIGN if ours else None)
                    else:
                        _pwrite_all(target.fd, data, offset)
                except OSError as exc:
                    self._failed = True
                    error = WriteFailed(exc.errno or errno_module.EIO, exc.strerror or str(exc), path)
                except Exception as exc:  # never lose a job silently: the loop would wait forever
                    self._failed = True
                    error = WriteFailed(errno_module.EIO, f"unexpected: {exc!r}", path)
        _post(self._loop, self._done, buffer, error)

    def _done(self, buffer: memoryview, error: WriteFailed | None) -> None:
        self._in_flight -= 1
        self._free.append(buffer)
        if error is not None and self._failure is None:
            self._failure = error
        self._changed.set()


class FileReader:
    """Reads ``size`` bytes of ``path`` from ``start`` in chunks of ``chunk_size``, ``depth`` chunks ahead of the loop.

    ``await reader.next()`` returns the next chunk (the last may be short; an empty file gives one empty chunk,
    as the stream plan wants) and ``None`` after the last; each view is valid until the following ``next``.
    Call :meth:`close` when done or on failure (it closes the file once no read of it is under way).
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
        self._ready: deque[tuple[bytearray, int] | ReadFailed | None] = deque()
        self._arrived = asyncio.Event()
        self._held: bytearray | None = None
        self._finished = False
        self._closed = False
        self._lock = threading.Lock()  # held by the reader thread around each read; close() takes it too
        self._offset = 0  # reader thread side: bytes read so far
        self._ended = False  # reader thread side: the last chunk (or a failure) was posted
        # Buffers for what the file needs, not more: the sender makes one reader per file, and a folder of small
        # files would otherwise allocate (and zero) depth x chunk_size bytes for each of them.
        chunks = max(1, -(-size // chunk_size))
        for _ in range(min(depth, chunks)):
            self._request(bytearray(min(chunk_size, size)))

    async def next(self) -> memoryview | None:
        """The next chunk, or ``None`` once ``size`` bytes were returned; raises :class:`ReadFailed`."""
        if self._finished:
            return None
        if self._closed:
            raise RuntimeError("the reader is closed")
        if self._held is not None:
            self._request(self._held)
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
        """Stop reading and close the file (after the read under way, if any); idempotent."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._ended = True
                self._file.close()

    def _request(self, buffer: bytearray) -> None:
        _READER.put(lambda: self._read_into(buffer))

    def _read_into(self, buffer: bytearray) -> None:
        """On the reader thread: fill ``buffer`` with the next chunk and hand it to the loop."""
        item: tuple[bytearray, int] | ReadFailed
        with self._lock:
            if self._ended:
                return
            length = min(self.chunk_size, self.size - self._offset)
            view = memoryview(buffer)[:length]
            got = 0
            try:
                while got < length:
                    n = self._file.readinto(view[got:])
                    if not n:
                        raise Shrank(errno_module.EIO, f"the file ended at {self.start + self._offset + got} bytes, "
                                     f"before the {self.start + self.size} it was offered with", self.path)
                    got += n
                item = (buffer, length)
                self._offset += length
                last = self._offset >= self.size
            except ReadFailed as exc:
                item, last = exc, True
            except OSError as exc:
                item, last = ReadFailed(exc.errno or errno_module.EIO, exc.strerror or str(exc), self.path), True
            except Exception as exc:  # never lose a read silently: next() would wait forever
                item, last = ReadFailed(errno_module.EIO, f"unexpected: {exc!r}", self.path), True
            self._ended = last
        _post(self._loop, self._deliver, item)
        if last and not isinstance(item, ReadFailed):
            _post(self._loop, self._deliver, None)

    def _deliver(self, item: tuple[bytearray, int] | ReadFailed | None) -> None:
        self._ready.append(item)
        self._arrived.set()
