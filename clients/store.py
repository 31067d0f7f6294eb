"""Writing received files safely under one folder.

Every path from a sender is hostile. Confinement here is by construction, not by string checks alone: each
folder on the way to a file is opened relative to the previous one with ``O_NOFOLLOW``, so a symbolic link
anywhere below the destination (planted before or during the transfer) is refused rather than followed.
Files are written to ``.relay-<random>.part`` beside their final name and renamed only when the whole transfer
has verified; on any failure the parts are deleted, so nothing is ever left under a final name.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from relay import protocol as p
from relay.protocol import ErrorCode, escape_text
from clients.errors import LocalFailure

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


@dataclass(slots=True)
class Part:
    """One file being received: its temporary name, open in the folder (``dir_fd``) it will be renamed in."""

    entry: p.FileEntry
    dir_fd: int
    name: str
    part_name: str
    handle: AsyncBufferedIOBase | None = None
    written: bool = False
    writing: asyncio.Future[int] | None = None  # the one write still in flight, if any


@dataclass(slots=True)
class Destination:
    """The receiver's folder: checks an offer against it, then writes parts and renames them at the end."""

    root: Path
    overwrite: bool = False
    parts: list[Part] = field(default_factory=list)

    def check(self, offer: p.Offer) -> None:
        """Refuse, before accepting, an offer that would overwrite, go through a link, or not fit on disk."""
        if not self.root.is_dir():
            raise LocalFailure(ErrorCode.WRITE_FAILED, f"the output folder does not exist: {self.root}")
        existing = []
        for path in [entry.path for entry in offer.files] + list(offer.dirs):
            target = self.root
            parts = path.split("/")
            for depth, part in enumerate(parts):
                target = target / part
                if target.is_symlink():
                    raise LocalFailure(ErrorCode.UNSAFE_PATH, f"refusing {escape_text(path)}: it goes through a symbolic link")
                last = depth == len(parts) - 1
                if not last and target.exists() and not target.is_dir():
                    raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing {escape_text(path)}: {escape_text(part)} is a file here")
            if path in offer.dirs:
                if target.exists() and not target.is_dir():
                    raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing folder {escape_text(path)}: a file has that name")
            elif target.is_dir():
                raise LocalFailure(ErrorCode.FILE_EXISTS, f"refusing {escape_text(path)}: a folder has that name")
            elif target.exists():
                existing.append(path)
        if existing and not self.overwrite:
            shown = ", ".join(escape_text(x) for x in existing[:3]) + (" ..." if len(existing) > 3 else "")
            raise LocalFailure(ErrorCode.FILE_EXISTS, f"would overwrite {len(existing)} file(s) ({shown}); use --overwrite")
        free = shutil.disk_usage(self.root).free
        if offer.total_size > free:
            raise LocalFailure(
                ErrorCode.DISK_FULL, f"the offer needs {offer.total_size} bytes but only {free} are free in {self.root}"
            )

    def make_dirs(self, dirs: tuple[str, ...]) -> None:
        for path in dirs:
            fd = self._open_folder(path.split("/"), path)
            os.close(fd)

    async def open_part(self, entry: p.FileEntry) -> Part:
        """Create the temporary file for ``entry`` (and the folders above it)."""
        *folders, name = entry.path.split("/")
        dir_fd = self._open_folder(folders, entry.path)
        part_name = f".relay-{secrets.token_hex(6)}.part"
        part = Part(entry, dir_fd, name, part_name)
        self.parts.append(part)
        try:
            part.handle = await aiofiles.open(
                part_name, "wb", opener=lambda n, flags: os.open(n, _PART_FLAGS, 0o644, dir_fd=dir_fd)
            )
        except OSError as exc:
            raise _write_error(entry.path, exc) from exc
        part.written = True
        return part

    async def write(self, part: Part, data: bytes) -> None:
        """Start writing ``data`` after the previous write of this part; the caller may receive meanwhile."""
        assert part.handle is not None
        await self._settle(part)
        part.writing = asyncio.ensure_future(part.handle.write(data))

    async def _settle(self, part: Part) -> None:
        """Wait for the write in flight, raising its error."""
        if part.writing is not None:
            writing, part.writing = part.writing, None
            try:
                await writing
            except OSError as exc:
                raise _write_error(part.entry.path, exc) from exc

    async def finish(self, part: Part) -> None:
        """Flush and close a verified part; it keeps its temporary name until ``commit``."""
        await self._settle(part)
        if part.handle is not None:
            try:
                await part.handle.close()
            except OSError as exc:
                raise _write_error(part.entry.path, exc) from exc
            part.handle = None

    def commit(self) -> None:
        """Give every verified part its final name; without ``overwrite`` an existing file is never replaced."""
        for part in self.parts:
            try:
                if self.overwrite:
                    os.replace(part.part_name, part.name, src_dir_fd=part.dir_fd, dst_dir_fd=part.dir_fd)
                else:
                    _rename_no_clobber(part)
            except FileExistsError as exc:
                raise LocalFailure(ErrorCode.FILE_EXISTS, f"{escape_text(part.entry.path)} appeared meanwhile; not overwritten") from exc
            except OSError as exc:
                raise _write_error(part.entry.path, exc) from exc
            part.written = False
        self.close()

    async def discard(self) -> None:
        """Delete every part not yet committed: a failed transfer leaves nothing under a final name."""
        for part in self.parts:
            try:
                await self._settle(part)
            except LocalFailure:
                pass
            if part.handle is not None:
                try:
                    await part.handle.close()
                except OSError:
                    pass
                part.handle = None
            if part.written:
                try:
                    os.unlink(part.part_name, dir_fd=part.dir_fd)
                except FileNotFoundError:
                    pass
                part.written = False
        self.close()

    def close(self) -> None:
        for part in self.parts:
            if part.dir_fd >= 0:
                os.close(part.dir_fd)
                part.dir_fd = -1
        self.parts.clear()

    def _open_folder(self, folders: list[str], shown: str) -> int:
        """Open (creating as needed) the folder ``root/folders...`` without following any link."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for folder in folders:
                try:
                    os.mkdir(folder, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
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
        return fd


def _rename_no_clobber(part: Part) -> None:
    try:
        os.link(part.part_name, part.name, src_dir_fd=part.dir_fd, dst_dir_fd=part.dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: check, then rename (a small race we accept there).
        try:
            os.stat(part.name, dir_fd=part.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(part.part_name, part.name, src_dir_fd=part.dir_fd, dst_dir_fd=part.dir_fd)
            return
        raise FileExistsError(part.name) from exc
    os.unlink(part.part_name, dir_fd=part.dir_fd)


def _write_error(path: str, exc: OSError) -> LocalFailure:
    code = ErrorCode.DISK_FULL if exc.errno == errno.ENOSPC else ErrorCode.WRITE_FAILED
    return LocalFailure(code, f"cannot write {escape_text(path)}: {exc.strerror or exc}")
