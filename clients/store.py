"""Writing received files safely under one folder.

Every path from a sender is hostile. Confinement here is by construction, not by string checks alone: each
folder on the way to a file is opened relative to the previous one with ``O_NOFOLLOW``, so a symbolic link
anywhere below the destination (planted before or during the transfer) is refused rather than followed.

Files are written to ``.relay-<random>.part`` beside their final name and renamed only when the whole transfer
has verified. The commit is all-or-nothing: if the k-th rename fails, the k-1 files already renamed are removed
again (a file they replaced under ``overwrite`` is put back), every part is deleted and every folder this
transfer created is removed, so nothing is ever left under a final name.

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
import hashlib
import json
import os
import re
import secrets
import stat
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from relay import protocol as p
from relay.protocol import ErrorCode, escape_text
from clients.errors import LocalFailure

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW

# --- resume by hand: the state file beside the parts (docs/protocol.md section 10.3) ----------------------

STATE_NAME = ".relay-state.json"
STATE_VERSION = 1
MAX_STATE_BYTES = 4 * 1024 * 1024  # a state file is read whole: bounded, whatever an earlier run or a stranger left
PART_NAME = re.compile(r"\.relay-[0-9a-f]{12}\.part")  # what ``open_part`` makes; nothing else is ever opened
_READ_BLOCK = 1024 * 1024


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


def parse_state(raw: bytes) -> list[Held]:
    """The entries of a state file, checked like a peer's message (it is hostile input: anyone who could write
    into the folder may have written it). Raises ``BadState``."""
    if len(raw) > MAX_STATE_BYTES:
        raise BadState(f"it is over {MAX_STATE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadState("it is not JSON") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("files"), list):
        raise BadState("it is not a state file of this version")
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
    return held


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


@dataclass(slots=True)
class Destination:
    """The receiver's folder: checks an offer against it, then writes parts and renames them at the end.

    ``mappings`` lists ``(offered path, local path)`` for each name ``local_name`` changed on this platform.
    """

    root: Path
    overwrite: bool = False
    platform: str = sys.platform
    parts: list[Part] = field(default_factory=list)
    mappings: list[tuple[str, str]] = field(default_factory=list)
    created: list[tuple[str, ...]] = field(default_factory=list)  # folders this transfer made, in order
    stale: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # an earlier attempt's unused parts
    _local: dict[str, str] = field(default_factory=dict)
    _open: tuple[tuple[str, ...], int] | None = None  # the folder used last, still open

    def check(self, offer: p.Offer) -> None:
        """Refuse, before accepting, an offer that would overwrite, go through a link, or not fit on disk."""
        if not self.root.is_dir():
            raise LocalFailure(ErrorCode.WRITE_FAILED, f"the output folder does not exist: {self.root}")
        self._map_names(offer)
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

    def make_dirs(self, dirs: tuple[str, ...]) -> None:
        """Create the offer's folders (the empty ones and their parents)."""
        for path in dirs:
            self._folder(tuple(self.local(path).split("/")), path)

    async def open_part(self, entry: p.FileEntry) -> Part:
        """Create the temporary file for ``entry`` (and the folders above it)."""
        *folders, name = self.local(entry.path).split("/")
        dir_fd = self._folder(tuple(folders), entry.path)
        part = Part(entry, tuple(folders), name, f".relay-{secrets.token_hex(6)}.part")
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
        it)."""
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
        return parse_state(raw)

    def claims(self, offer: p.Offer, held: list[Held]) -> tuple[list[Claim], list[str]]:
        """What this receiver can prove it holds of ``offer``: per file matching an entry of ``held`` by path, size
        and mtime, the SHA-256 of the first ``have`` bytes of its part, read again from disk now. Also the offered
        paths an earlier attempt held under another size or mtime (changed since: received again). Every part
        is opened relative to its folder without following links; one that is missing, short or not a regular
        file is simply not claimed. Blocking: run it in a thread."""
        by_path = {entry.path: entry for entry in held}
        claims, changed = [], []
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
        claimed = {(offer.files[c.file].path, c.part) for c in claims}
        self.stale = [(tuple(self.local(entry.path).split("/")[:-1]), entry.part)
                      for entry in held if (entry.path, entry.part) not in claimed]
        return claims, changed

    def refused(self, path: str, part_name: str) -> None:
        """The sender did not agree to a claim (its file changed): that part is removed with the state file."""
        self.stale.append((tuple(self.local(path).split("/")[:-1]), part_name))

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
        self.stale = [(f, n) for f, n in self.stale if (f, n) != (part.folders, part_name)]
        return part

    def checkpoint(self, part: Part, have: int) -> int:
        """Record in the state file that the first ``have`` bytes of ``part`` are written (authenticated chunks
        only: the caller calls this once the data path's writer flushed them; they go by ``pwrite``, never
        through ``part.handle``'s buffer)."""
        part.have = have
        return self.save_state()

    def save_state(self) -> int:
        """Write the state file (every part not yet committed, with its bytes written) under a temporary name and
        rename it over the last one, so that a kill at any moment leaves a whole state file or the previous one.
        Returns its size (the caller spaces the writes so that they stay a small share of the data written)."""
        files = [{"path": part.entry.path, "size": part.entry.size, "mtime": part.entry.mtime,
                  "part": part.part_name, "have": part.have} for part in self.parts if part.written]
        data = json.dumps({"version": STATE_VERSION, "files": files}, separators=(",", ":")).encode()
        if len(data) > MAX_STATE_BYTES:
            return len(data)  # too many files to resume by hand: the next attempt starts again
        root_fd = self._folder((), "", create=False)
        temporary = f".relay-state-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=root_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, STATE_NAME, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=root_fd)
            raise _write_error(STATE_NAME, exc) from exc
        return len(data)

    def remove_state(self) -> None:
        """Forget the earlier attempt: the state file and the parts of it this transfer did not use."""
        for folders, name in self.stale:
            self._unlink(folders, name)
        self.stale.clear()
        self._unlink((), STATE_NAME)

    def part_fd(self, part: Part) -> tuple[int, str]:
        """The open part's descriptor, for writes at offsets from the data path's writer thread
        (``clients.diskio.FileWriter``, flushed before :meth:`finish`), and the offered path to name in messages."""
        assert part.handle is not None
        return part.handle.fileno(), part.entry.path

    async def finish(self, part: Part) -> None:
        """Flush a verified part, give it the offered mode and mtime, and close it; it keeps its temporary name."""
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
                        part.backup = _keep_aside(dir_fd, part.name)
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
            if part.handle is not None:
                with contextlib.suppress(OSError):
                    await part.handle.close()
                part.handle = None
        self.close()

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


def _apply_metadata(fd: int, entry: p.FileEntry) -> None:
    """The offered executable bit (0o755 or 0o644, after umask: never setuid/setgid/sticky) and mtime."""
    if entry.exec:
        os.fchmod(fd, 0o755 & ~_UMASK)
    if entry.mtime is not None and os.utime in os.supports_fd:
        os.utime(fd, ns=(time.time_ns(), entry.mtime * 1_000_000_000))


def _keep_aside(dir_fd: int, name: str) -> str | None:
    """Under overwrite: link the file about to be replaced to a temporary name so a failed commit can restore it."""
    backup = f".relay-{secrets.token_hex(6)}.old"
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
