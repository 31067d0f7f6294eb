"""Writing received files safely under one folder.

Every path from a sender is hostile. Confinement here is by construction, not by string checks alone: each
folder on the way to a file is opened relative to the previous one with ``O_NOFOLLOW``, so a symbolic link
anywhere below the destination (planted before or during the transfer) is refused rather than followed.

Files are written to ``.relay-<attempt id><count>.part`` beside their final name and renamed only when the whole
transfer has verified. Every temporary name carries the attempt's id, which the state file records before the
first part exists: a later attempt finds and removes whatever a killed one left (docs/protocol.md section 10.3).
The commit is all-or-nothing: if the k-th rename fails, the k-1 files already renamed are removed again (a file
they replaced under ``overwrite`` is put back), every part is deleted and every folder this transfer created is
removed, so nothing is ever left under a final name.

Descriptors are bounded by a small constant whatever the number of files and folders: a part remembers the
names of its folders, not an open descriptor; the one folder used last stays open (files usually arrive folder
by folder), and any other is opened by a fresh no-follow walk from the root when it is needed and closed after.

Names: the wire carries any safe relative path (``relay.protocol.check_path``); ``local_name`` maps what this
platform's file system cannot store (Windows: forbidden characters, reserved device names, trailing dots and
spaces), and the mappings are reported to the user.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from relay import protocol as p
from relay.protocol import ErrorCode, escape_text
from clients import diskio
from clients.diskio import DIRECT_FROM, Target, open_direct
from clients.errors import LocalFailure

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW

# --- resume by hand: the state file beside the parts (docs/protocol.md section 10.3) ----------------------

STATE_NAME = ".relay-state.json"
STATE_VERSION = 2
MAX_STATE_BYTES = 4 * 1024 * 1024  # a state file is read whole: bounded, whatever an earlier run or a stranger left
ATTEMPT_ID = re.compile(r"[0-9a-f]{8}")  # one attempt's id: its parts, backups and state temporaries carry it
# What ``open_part`` makes: the attempt's id, then its count of names drawn (4 to 8 hex digits; at most
# 2 x MAX_FILES names per attempt). Nothing else is ever opened as a part.
PART_NAME = re.compile(r"\.relay-[0-9a-f]{12,16}\.part")
_READ_BLOCK = 1024 * 1024


def made_by(attempt: str, name: str) -> bool:
    """Whether ``name`` is one of the names attempt ``attempt`` makes (a part, a backup kept under overwrite, a
    state file's temporary). ``attempt`` must match ``ATTEMPT_ID``; it is only ever compared, never put in a
    path."""
    if ATTEMPT_ID.fullmatch(attempt) is None:
        raise ValueError("not an attempt id")
    if name == f".relay-state-{attempt}.tmp":
        return True
    stem, dot, suffix = name.rpartition(".")
    return (dot == "." and suffix in ("part", "old") and stem.startswith(f".relay-{attempt}")
            and re.fullmatch(r"[0-9a-f]{4,8}", stem[len(".relay-") + 8:]) is not None)


class BadState(ValueError):
    """A state file that cannot be trusted (too big, not JSON, a field out of range): it is ignored."""


@dataclass(frozen=True, slots=True)
class Held:
    """What an earlier attempt left of one file: offered path, size and mtime, its part file and bytes written."""

    path: str
    size: int
    mtime: int | None
    part: str
    have: int


@dataclass(frozen=True, slots=True)
class State:
    """A state file: the id of the attempt that wrote it and what it held of each file."""

    attempt: str
    files: list[Held]


def parse_state(raw: bytes) -> State:
    """A state file, checked like a peer's message (it is hostile input: anyone who could write into the folder
    may have written it). Raises ``BadState``."""
    if len(raw) > MAX_STATE_BYTES:
        raise BadState(f"it is over {MAX_STATE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadState("it is not JSON") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("files"), list):
        raise BadState("it is not a state file of this version")
    attempt = data.get("attempt")
    if not isinstance(attempt, str) or ATTEMPT_ID.fullmatch(attempt) is None:
        raise BadState("it has a bad attempt id")
    files = data["files"]
    if len(files) > p.MAX_FILES:
        raise BadState("it lists too many files")
    held = []
    for item in files:
        if not isinstance(item, dict):
            raise BadState("an entry is not an object")
        path, size, mtime, part, have = (item.get(k) for k in ("path", "size", "mtime", "part", "have"))
        if not isinstance(path, str) or not isinstance(part, str) or PART_NAME.fullmatch(part) is None:
            raise BadState("an entry has a bad path or part name")
        try:
            p.check_path(path)
        except p.ProtocolError as exc:
            raise BadState("an entry has an unsafe path") from exc
        if (type(size) is not int or not 0 <= size <= p.MAX_SAFE_INT or type(have) is not int
                or not 0 <= have <= size or not (mtime is None or type(mtime) is int and 0 <= mtime <= p.MAX_MTIME)):
            raise BadState("an entry has a size, mtime or count out of range")
        held.append(Held(path, size, mtime, part, have))
    return State(attempt, held)


@dataclass(frozen=True, slots=True)
class Claim:
    """A file of the new offer this receiver already holds the first ``have`` bytes of (their SHA-256)."""

    file: int
    have: int
    sha256: str
    part: str

# --- names this file system cannot store -------------------------------------------------------------------

_WINDOWS_RESERVED = (
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{device}{digit}" for device in ("com", "lpt") for digit in "123456789\u00b9\u00b2\u00b3"}
)
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')


def local_name(segment: str, platform: str = sys.platform) -> str:
    """The name one path segment is stored under on ``platform`` (docs/protocol.md section 5.2, "Receivers").

    On Windows (``platform == "win32"``) each of ``<>:"|?*`` becomes ``_``; a reserved device name (``CON``,
    ``aux.c``, ``COM1 .txt``, any case) gets ``_`` after its stem (``CON_``, ``aux_.c``); a name ending in a dot
    or a space gets ``_`` appended. Elsewhere the name is stored as it is. Pure, so it is tested on any system.
    """
    if platform != "win32":
        return segment
    name = "".join("_" if char in _WINDOWS_FORBIDDEN else char for char in segment)
    stem, dot, rest = name.partition(".")
    device = stem.rstrip(" ")
    if device.casefold() in _WINDOWS_RESERVED:
        name = f"{device}_{stem[len(device):]}{dot}{rest}"
    if name[-1] in ". ":
        name += "_"
    return name


def local_path(path: str, platform: str = sys.platform) -> str:
    """``path`` (already checked by ``check_path``) with every segment mapped by ``local_name``."""
    return "/".join(local_name(segment, platform) for segment in path.split("/"))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# --- the destination folder --------------------------------------------------------------------------------


@dataclass(slots=True)
class Part:
    """One file being received: its folder and names (local spelling), and its temporary file while open."""

    entry: p.FileEntry
    folders: tuple[str, ...]
    name: str
    part_name: str
    handle: AsyncBufferedIOBase | None = None
    written: bool = False  # the temporary file exists
    committed: bool = False  # renamed to ``name``
    backup: str | None = None  # under overwrite: the replaced file, kept under a temporary name until the end
    have: int = 0  # bytes of it written and flushed, as the state file says (resume by hand)
    target: Target | None = None  # what the data path's writer writes through (``Destination.target``)


@dataclass(slots=True)
class Destination:
    """The receiver's folder: checks an offer against it, then writes parts and renames them at the end.

    ``mappings`` lists ``(offered path, local path)`` for each name ``local_name`` changed on this platform.
    ``direct``: write parts of at least ``DIRECT_FROM`` bytes with ``O_DIRECT`` too (``clients.diskio.direct_writes``
    chooses it for the machine); ``direct_opener`` opens that second descriptor (``os.open``'s signature).
    """

    root: Path
    overwrite: bool = False
    platform: str = sys.platform
    attempt: str = field(default_factory=lambda: secrets.token_hex(4))  # ATTEMPT_ID: names what this one makes
    parts: list[Part] = field(default_factory=list)
    mappings: list[tuple[str, str]] = field(default_factory=list)
    created: list[tuple[str, ...]] = field(default_factory=list)  # folders this transfer made, in order
    _local: dict[str, str] = field(default_factory=dict)
    _file_folders: set[tuple[str, ...]] = field(default_factory=set)  # the offer's files' folders (local)
    _open: tuple[tuple[str, ...], int] | None = None  # the folder used last, still open
    _names: int = 0  # names drawn from ``attempt`` so far
    # Resume by hand (section 10.3): the state file found here, the parts of it taken back and not yet reopened
    # (by folder and name), whether that file was looked at (then it is ours to replace and remove), whether
    # the earlier attempt's leftovers were removed, and whether the state file names this attempt yet.
    _earlier: State | None = None
    _kept: dict[tuple[tuple[str, ...], str], Held] = field(default_factory=dict)
    _read_state: bool = False
    _swept: bool = False
    _begun: bool = False
    _lock: int | None = None  # the output folder, open and locked (flock): its state file is this attempt's
    _shared: bool = False  # another attempt holds that lock: this one neither reads nor writes the state file
    direct: bool = field(default_factory=lambda: diskio.DIRECT_WRITES)  # the machine's choice, read at creation
    direct_opener: Callable[[str, int], int] = os.open

    def check(self, offer: p.Offer) -> None:
        """Refuse, before accepting, an offer that would overwrite, go through a link, or not fit on disk."""
        if not self.root.is_dir():
            raise LocalFailure(ErrorCode.WRITE_FAILED, f"the output folder does not exist: {self.root}")
        self._map_names(offer)
        self._file_folders = {self._folder_of(entry.path) for entry in offer.files}
        dirs = {self._local[path] for path in offer.dirs}
        existing = []
        for path in [self._local[entry.path] for entry in offer.files] + sorted(dirs):
            target = self.root
            parts = path.split("/")
            for depth, part in enumerate(parts):
                target = target / part
                shown = escape_text(path)
                if target.is_symlink():
                    raise LocalFailure(ErrorCode.UNSAFE_PATH, f"refusing {shown}: it goes through a symbolic link")
                last = depth == len(parts) - 1
                if not last and target.exists() and not target.is_dir():
                    raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing {shown}: {escape_text(part)} is a file here")
            if path in dirs:
                if target.exists() and not target.is_dir():
                    raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing folder {shown}: a file has that name")
            elif target.is_dir():
                raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing {shown}: a folder has that name")
            elif target.exists():
                existing.append(path)
        if existing and not self.overwrite:
            listed = ", ".join(escape_text(x) for x in existing[:3]) + (" ..." if len(existing) > 3 else "")
            raise LocalFailure(
                ErrorCode.FILE_EXISTS, f"would overwrite {len(existing)} file(s) ({listed}); use --overwrite"
            )
        free = shutil.disk_usage(self.root).free
        if offer.total_size > free:
            raise LocalFailure(
                ErrorCode.DISK_FULL, f"the offer needs {offer.total_size} bytes but only {free} are free in {self.root}"
            )

    def _map_names(self, offer: p.Offer) -> None:
        """Give every offered path its local spelling; refuse an offer whose mapped names collide."""
        self._local.clear()
        self.mappings.clear()
        for path in [entry.path for entry in offer.files] + list(offer.dirs):
            local = local_path(path, self.platform)
            self._local[path] = local
            if local != path:
                self.mappings.append((path, local))
        if not self.mappings:
            return
        mapped = p.Offer(
            tuple(p.FileEntry(self._local[entry.path], entry.size) for entry in offer.files),
            tuple(self._local[path] for path in offer.dirs),
        )
        try:
            mapped.check_layout()
        except p.ProtocolError as exc:
            raise LocalFailure(
                ErrorCode.UNSAFE_PATH, f"names this system cannot store collide once renamed: {exc.message}"
            ) from exc

    def local(self, path: str) -> str:
        """The local spelling of an offered path (after ``check``)."""
        return self._local.get(path) or local_path(path, self.platform)

    def _folder_of(self, path: str) -> tuple[str, ...]:
        return tuple(self.local(path).split("/")[:-1])

    def _name(self, suffix: str) -> str:
        """A new temporary name of this attempt: ``.relay-<attempt><count, 4+ hex>.<suffix>``."""
        self._names += 1
        return f".relay-{self.attempt}{self._names - 1:04x}.{suffix}"

    def make_dirs(self, dirs: tuple[str, ...]) -> None:
        """Create the offer's folders (the empty ones and their parents)."""
        for path in dirs:
            self._folder(tuple(self.local(path).split("/")), path)

    async def open_part(self, entry: p.FileEntry) -> Part:
        """Create the temporary file for ``entry`` (and the folders above it). The first part of an attempt is
        created only once the state file names the attempt: a kill at any moment after leaves nothing that the
        next attempt would not find by that id."""
        if not self._begun:
            self.save_state()
        *folders, name = self.local(entry.path).split("/")
        dir_fd = self._folder(tuple(folders), entry.path)
        part = Part(entry, tuple(folders), name, self._name("part"))
        self.parts.append(part)
        try:
            part.handle = await aiofiles.open(
                part.part_name, "wb", opener=lambda n, flags: os.open(n, _PART_FLAGS, 0o644, dir_fd=dir_fd)
            )
        except OSError as exc:
            raise _write_error(entry.path, exc) from exc
        part.written = True
        return part

    # --- resume by hand (docs/protocol.md section 10.3) ------------------------------------------------------

    def load_state(self) -> list[Held]:
        """The state file an earlier attempt left in the folder ([] if none). Opened without following a link,
        read up to its bound; raises ``BadState`` for one that cannot be trusted (the caller warns and ignores
        it). Once looked at, the state file is this attempt's to replace and, at the end, to remove; what the
        earlier attempt made and this one does not take back is removed before this one's first record."""
        if not self._own_state():
            return []
        self._read_state = True
        try:
            fd = os.open(STATE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._folder((), "", False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BadState(f"it cannot be opened ({exc.strerror or exc})") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadState("it is not a regular file")
            raw = os.read(fd, MAX_STATE_BYTES + 1)
        finally:
            os.close(fd)
        state = parse_state(raw)
        while self.attempt == state.attempt:  # never the id of what is to be removed
            self.attempt = secrets.token_hex(4)
        self._earlier = state
        return state.files

    def claims(self, offer: p.Offer, held: list[Held]) -> tuple[list[Claim], list[str]]:
        """What this receiver can prove it holds of ``offer``: per file matching an entry of ``held`` by path, size
        and mtime, the SHA-256 of the first ``have`` bytes of its part, read again from disk now. Also the offered
        paths an earlier attempt held under another size or mtime (changed since: received again). Every part
        is opened relative to its folder without following links; one that is missing, short or not a regular
        file is simply not claimed. Blocking: run it in a thread."""
        by_path = {entry.path: entry for entry in held}
        claims, changed = [], []
        self._kept.clear()
        for index, entry in enumerate(offer.files):
            earlier = by_path.pop(entry.path, None)
            if earlier is None or earlier.have == 0:
                continue
            if (earlier.size, earlier.mtime) != (entry.size, entry.mtime):
                changed.append(entry.path)
                continue
            digest = self._digest(entry.path, earlier.part, earlier.have)
            if digest is not None:
                claims.append(Claim(index, earlier.have, digest, earlier.part))
                self._kept[(self._folder_of(entry.path), earlier.part)] = earlier
        return claims, changed

    def refused(self, path: str, part_name: str) -> None:
        """The sender did not agree to a claim (its file changed): that part is not taken back (it is removed
        with the earlier attempt's other leftovers)."""
        self._kept.pop((self._folder_of(path), part_name), None)

    def _digest(self, path: str, part_name: str, have: int) -> str | None:
        *folders, _ = self.local(path).split("/")
        try:
            fd = os.open(part_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=self._folder(tuple(folders), path, create=False))
        except (OSError, LocalFailure):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size < have:
                return None
            digest, left = hashlib.sha256(), have
            while left:
                block = os.read(fd, min(_READ_BLOCK, left))
                if not block:
                    return None
                digest.update(block)
                left -= len(block)
            return digest.hexdigest()
        except OSError:
            return None
        finally:
            os.close(fd)

    async def reopen_part(self, entry: p.FileEntry, part_name: str, have: int) -> Part:
        """Take an earlier attempt's part of ``entry`` back, cut to the ``have`` bytes the sender agreed to, and
        write on from there. ``part_name`` comes from the state file: it matches ``PART_NAME`` and is opened
        relative to its folder, without following links, and only if it is a regular file."""
        if PART_NAME.fullmatch(part_name) is None:
            raise LocalFailure(ErrorCode.WRITE_FAILED, f"{escape_text(entry.path)}: not a part file name")
        if not self._begun:
            self.save_state()
        *folders, name = self.local(entry.path).split("/")
        dir_fd = self._folder(tuple(folders), entry.path)
        part = Part(entry, tuple(folders), name, part_name, have=have)

        def opener(n: str, flags: int) -> int:
            fd = os.open(n, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "not a regular file")
            os.set_blocking(fd, True)
            os.ftruncate(fd, have)
            return fd

        try:
            part.handle = await aiofiles.open(part_name, "r+b", opener=opener)
            await part.handle.seek(have)
        except OSError as exc:
            raise _write_error(entry.path, exc) from exc
        part.written = True
        self.parts.append(part)
        self._kept.pop((part.folders, part_name), None)
        return part

    def checkpoint(self, part: Part, have: int) -> int:
        """Record in the state file that the first ``have`` bytes of ``part`` are written (authenticated chunks
        only: the caller calls this once the data path's writer flushed them; they go by ``pwrite``, never
        through ``part.handle``'s buffer)."""
        part.have = have
        return self.save_state()

    def save_state(self) -> int:
        """Write the state file: this attempt's id, every part not yet committed with its bytes written, and every
        part of the earlier attempt taken back and not yet reopened. It goes under a temporary name and is renamed
        over the last one, so that a kill at any moment leaves a whole state file or the previous one.

        The first record of an attempt first removes what the earlier attempt left and this one does not take
        back, then names this attempt. Its temporary is named from the earlier attempt's id (whose leftovers the
        next attempt removes as long as the state file names it); with no trusted state file here, the state
        file is created directly (a kill halfway leaves a state file that is ignored and removed next time, and
        no part yet). Later records use this attempt's id. So no temporary name is ever left that the state file
        on disk does not lead to. Returns the size (the caller spaces the writes so that they stay a small share
        of the data written)."""
        files = [{"path": part.entry.path, "size": part.entry.size, "mtime": part.entry.mtime,
                  "part": part.part_name, "have": part.have} for part in self.parts if part.written]
        files += [{"path": held.path, "size": held.size, "mtime": held.mtime, "part": held.part, "have": held.have}
                  for held in self._kept.values()]
        record = {"version": STATE_VERSION, "attempt": self.attempt, "files": files}
        data = json.dumps(record, separators=(",", ":")).encode()
        size = len(data)  # what the caller spaces the next record by, even when it is not written whole
        if size > MAX_STATE_BYTES:  # too many files to resume by hand: the next attempt starts again, but
            record["files"] = []  # still finds (and removes) what this one made by its id
            data = json.dumps(record, separators=(",", ":")).encode()
        if not self._own_state():
            return size
        first = not self._begun
        if first:
            self._forget_earlier()
        root_fd = self._folder((), "", create=False)
        if first and self._earlier is None:
            if self._read_state:  # one that could not be trusted: ignored, now replaced
                with contextlib.suppress(OSError):
                    os.unlink(STATE_NAME, dir_fd=root_fd)
            try:
                _write_new(root_fd, STATE_NAME, data)
            except FileExistsError:
                pass  # a state file this attempt did not read (none was looked for): replaced whole below
            except OSError as exc:
                raise _write_error(STATE_NAME, exc) from exc
            else:
                self._begun = True
                return size
        named = self._earlier.attempt if first and self._earlier is not None else self.attempt
        temporary = f".relay-state-{named}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):  # one a kill left halfway: this attempt's to replace
                os.unlink(temporary, dir_fd=root_fd)
            _write_new(root_fd, temporary, data)
            os.replace(temporary, STATE_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=root_fd)
            raise _write_error(STATE_NAME, exc) from exc
        self._begun = True
        return size

    def _forget_earlier(self) -> None:
        """Remove what the earlier attempt (the state file found here) left and this one does not take back: the
        parts its state file lists, and every file in the offer's folders and in the folders its state file
        names whose name it made (``made_by`` its id: parts it created before it could record them, backups, its
        state file's temporaries). Only names of that id: another attempt's files, even one writing here now,
        stay. Bounded by the offer's and the state file's folders; done once."""
        if self._earlier is None or self._swept:
            return
        self._swept = True
        keep = set(self._kept) | {(part.folders, part.part_name) for part in self.parts}
        for held in self._earlier.files:
            listed = (self._folder_of(held.path), held.part)
            if listed not in keep:
                self._unlink(*listed)
        folders = {()} | self._file_folders | {self._folder_of(held.path) for held in self._earlier.files}
        for folder in sorted(folders):
            try:
                names = os.listdir(self._folder(folder, "/".join(folder), create=False))
            except (OSError, LocalFailure):
                continue  # not there (or a link): nothing of ours in it
            for name in names:
                if made_by(self._earlier.attempt, name) and (folder, name) not in keep:
                    self._unlink(folder, name)

    def remove_state(self) -> None:
        """Forget the earlier attempt and this one's record: what the earlier attempt left (parts taken back and
        never reopened too) and the state file, if this attempt looked at it or wrote it (one it never read, as
        after a wrong code, belongs to an attempt still to be resumed: it stays)."""
        for folders, name in self._kept:
            self._unlink(folders, name)
        self._kept.clear()
        self._forget_earlier()
        if self._read_state or self._begun:
            self._unlink((), STATE_NAME)
        self._earlier, self._read_state, self._begun = None, False, False
        self._release()

    def _own_state(self) -> bool:
        """Whether this attempt may read and write the folder's state file: only while it holds an exclusive lock
        (``flock``) on the output folder, taken at its first use and held until it ends (a killed process's lock
        goes with it). Another ``relay receive`` writing into the same folder at the same time holds it: this
        one then neither resumes from nor records into the state file, and removes nothing of the other's."""
        if self._lock is not None:
            return True
        if self._shared:
            return False
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._shared = True
            return False
        self._lock = fd
        return True

    def __del__(self) -> None:  # a destination dropped unfinished lets go of the folder, as a process that ends
        for part in self.parts:
            _close_direct(part)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # and with it the lock
            self._lock = None

    def part_fd(self, part: Part) -> tuple[int, str]:
        """The open part's descriptor, for writes at offsets from the data path's writer thread
        (``clients.diskio.FileWriter``, flushed before :meth:`finish`), and the offered path to name in messages."""
        assert part.handle is not None
        return part.handle.fileno(), part.entry.path

    def target(self, part: Part) -> Target:
        """What the data path's writer (``clients.diskio.FileWriter``, flushed before :meth:`finish`) writes ``part``
        through: its descriptor, the offered path to name in messages and, where ``direct`` and at least
        ``DIRECT_FROM`` bytes of the file are still to come, a second descriptor of the part opened with
        ``O_DIRECT`` (``clients.diskio.open_direct``: reopened through the open file, never by its name again; -1
        where the file system refuses it). Made at the first call; the second descriptor is closed with the part
        (:meth:`finish`, :meth:`discard`, :meth:`keep`)."""
        if part.target is None:
            fd, shown = self.part_fd(part)
            big = part.entry.size - part.have >= DIRECT_FROM
            part.target = Target(fd, shown, open_direct(fd, self.direct_opener) if self.direct and big else -1)
        return part.target

    async def finish(self, part: Part) -> None:
        """Flush a verified part, give it the offered mode and mtime, and close it; it keeps its temporary name."""
        _close_direct(part)
        if part.handle is not None:
            try:
                await part.handle.flush()
                _apply_metadata(part.handle.fileno(), part.entry)
                await part.handle.close()
            except OSError as exc:
                raise _write_error(part.entry.path, exc) from exc
            part.handle = None
        part.have = part.entry.size

    def commit(self) -> None:
        """Give every verified part its final name, all or nothing.

        Without ``overwrite`` an existing file is never replaced. With it, a replaced file is kept under a
        temporary name until every rename succeeded. If any rename fails, the files renamed so far are removed
        (replaced ones put back), every part is deleted and the folders this transfer created are removed.
        """
        try:
            for part in self.parts:
                dir_fd = self._folder(part.folders, part.entry.path, create=False)
                try:
                    if self.overwrite:
                        part.backup = _keep_aside(dir_fd, part.name, self._name("old"))
                        os.replace(part.part_name, part.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    else:
                        _rename_no_clobber(dir_fd, part.part_name, part.name)
                except FileExistsError as exc:
                    raise LocalFailure(
                        ErrorCode.FILE_EXISTS, f"{escape_text(part.entry.path)} appeared meanwhile; not overwritten"
                    ) from exc
                except OSError as exc:
                    raise _write_error(part.entry.path, exc) from exc
                part.written = False
                part.committed = True
        except BaseException:
            self._roll_back()
            raise
        for part in self.parts:
            if part.backup is not None:
                self._unlink(part.folders, part.backup)
        self.remove_state()
        self.created.clear()
        self.parts.clear()
        self.close()

    def _roll_back(self) -> None:
        """Undo a commit that failed halfway, then remove what the transfer made: no final name is left."""
        for part in reversed(self.parts):
            if not part.committed:
                continue
            try:
                dir_fd = self._folder(part.folders, part.entry.path, create=False)
                if part.backup is not None:
                    os.replace(part.backup, part.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    part.backup = None
                else:
                    os.unlink(part.name, dir_fd=dir_fd)
            except (OSError, LocalFailure):
                pass
            part.committed = False
        self._remove_leftovers()

    async def discard(self) -> None:
        """Delete every part not yet committed and every folder made for it: a failed transfer leaves nothing."""
        for part in self.parts:
            _close_direct(part)
            if part.handle is not None:
                try:
                    await part.handle.close()
                except OSError:
                    pass
                part.handle = None
        self._remove_leftovers()
        self.remove_state()

    async def keep(self) -> None:
        """Stop without committing and without removing anything: the parts, the state file (written by the
        caller with what they hold) and the folders made for them stay, for resume by hand (docs/protocol.md
        section 10.3: a receiver the relay dropped). Nothing gets a final name."""
        for part in self.parts:
            _close_direct(part)
            if part.handle is not None:
                with contextlib.suppress(OSError):
                    await part.handle.close()
                part.handle = None
        self.close()
        self._release()

    def _remove_leftovers(self) -> None:
        for part in self.parts:
            if part.written:
                self._unlink(part.folders, part.part_name)
                part.written = False
            if part.backup is not None:  # only when putting it back failed: keep the user's file, never delete it
                part.backup = None
        self.parts.clear()
        self.close()
        for folder in reversed(self.created):  # deepest last-made first; a folder someone filled meanwhile stays
            try:
                parent_fd = self._folder(folder[:-1], "/".join(folder), create=False)
                os.rmdir(folder[-1], dir_fd=parent_fd)
            except (OSError, LocalFailure):
                pass
            self.close()  # never keep a removed folder (or its parent) open
        self.created.clear()

    def _unlink(self, folders: tuple[str, ...], name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._folder(folders, name, create=False))
        except (OSError, LocalFailure):
            pass

    def close(self) -> None:
        """Close the one folder descriptor kept open."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def _folder(self, folders: tuple[str, ...], shown: str, create: bool = True) -> int:
        """A descriptor of ``root/folders...`` (creating folders as needed), reached without following any link.

        The descriptor stays owned by the destination (it is the one kept open) and must not be closed by the
        caller; it is valid until the next call.
        """
        if self._open is not None and self._open[0] == folders:
            return self._open[1]
        self.close()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for depth, folder in enumerate(folders):
                if create:
                    try:
                        os.mkdir(folder, 0o755, dir_fd=fd)
                        self.created.append(folders[: depth + 1])
                    except FileExistsError:
                        pass
                    except OSError as exc:
                        raise _write_error(shown, exc) from exc
                try:
                    next_fd = os.open(folder, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LocalFailure(
                            ErrorCode.UNSAFE_PATH,
                            f"refusing {escape_text(shown)}: {escape_text(folder)} is a link or a file here",
                        ) from exc
                    raise _write_error(shown, exc) from exc
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        self._open = (folders, fd)
        return fd


def _close_direct(part: Part) -> None:
    """Close ``part``'s ``O_DIRECT`` descriptor, if it has one (the writer has finished with it: the receiver
    flushes or closes its writer first). The buffered descriptor is the handle's, closed with it."""
    if part.target is not None and part.target.direct >= 0:
        with contextlib.suppress(OSError):
            os.close(part.target.direct)
        part.target.direct = -1


def _apply_metadata(fd: int, entry: p.FileEntry) -> None:
    """The offered executable bit (0o755 or 0o644, after umask: never setuid/setgid/sticky) and mtime."""
    if entry.exec:
        os.fchmod(fd, 0o755 & ~_UMASK)
    if entry.mtime is not None and os.utime in os.supports_fd:
        os.utime(fd, ns=(time.time_ns(), entry.mtime * 1_000_000_000))


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Create ``name`` (never an existing file, never through a link) holding ``data``."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _keep_aside(dir_fd: int, name: str, backup: str) -> str | None:
    """Under overwrite: link the file about to be replaced to the temporary name ``backup`` (one of this attempt)
    so a failed commit can restore it."""
    try:
        os.link(name, backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            return None  # no hard links here: the replaced file cannot be kept (documented in security.md)
        raise
    return backup


def _rename_no_clobber(dir_fd: int, part_name: str, name: str) -> None:
    try:
        os.link(part_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: check, then rename (a small race we accept there).
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(part_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise FileExistsError(name) from exc
    os.unlink(part_name, dir_fd=dir_fd)


def write_error(path: str, exc: OSError) -> LocalFailure:
    """What a failed write of ``path`` is to the user: ``disk_full`` for ENOSPC, else ``write_failed``."""
    return _write_error(path, exc)


def _write_error(path: str, exc: OSError) -> LocalFailure:
    code = ErrorCode.DISK_FULL if exc.errno == errno.ENOSPC else ErrorCode.WRITE_FAILED
    return LocalFailure(code, f"cannot write {escape_text(path)}: {exc.strerror or exc}")
