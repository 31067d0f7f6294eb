"""Turning the paths a person names into an offer: files with relative POSIX paths, and empty folders.

Nothing is left out silently: whatever cannot be read (a folder that cannot be listed, a file that cannot be
opened) stops the send before anything is offered, naming each one, unless ``skip_unreadable`` is set, in which
case each is listed in ``Outgoing.left_out``. Links to folders and special files (pipes, sockets, devices) are
never sent and are always listed there.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from relay import protocol as p
from relay.protocol import ErrorCode
from relay.record import Record, set_field
from clients.errors import LocalFailure

SHOWN_UNREADABLE = 5  # how many unreadable paths the error names before "and N more"


class Unreadable(LocalFailure):
    """Some of the named files or folders cannot be read; ``paths`` lists each with the reason."""

    def __init__(self, paths: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"{path} ({why})" for path, why in paths[:SHOWN_UNREADABLE])
        more = f" and {len(paths) - SHOWN_UNREADABLE} more" if len(paths) > SHOWN_UNREADABLE else ""
        super().__init__(
            ErrorCode.BAD_REQUEST,
            f"cannot read {len(paths)} file(s) or folder(s): {shown}{more}; nothing was sent "
            "(fix their permissions, or skip them with --skip-unreadable)",
        )
        self.paths = paths


class LocalFile(Record):
    """A file to send: where it is on this machine and the relative path it is offered under."""

    __slots__ = ("source", "entry")
    source: Path
    entry: p.FileEntry

    def __init__(self, source: Path, entry: p.FileEntry) -> None:
        set_field(self, "source", source)
        set_field(self, "entry", entry)


class Outgoing(Record):
    """What will be offered, and what was left out: ``(local path, why)`` for each thing not sent."""

    __slots__ = ("files", "dirs", "left_out")
    files: tuple[LocalFile, ...]
    dirs: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]

    def __init__(self, files: tuple[LocalFile, ...], dirs: tuple[str, ...],
                 left_out: tuple[tuple[str, str], ...] = ()) -> None:
        set_field(self, "files", files)
        set_field(self, "dirs", dirs)
        set_field(self, "left_out", left_out)

    def offer(self, chunk_size: int, kind: p.OfferKind = p.OfferKind.FILES) -> p.Offer:
        return p.Offer(tuple(f.entry for f in self.files), self.dirs, chunk_size, kind)

    @property
    def total_size(self) -> int:
        return sum(f.entry.size for f in self.files)


@dataclass(slots=True, eq=False, repr=False)  # state: by identity (start-up, docs/design/speed.md 16)
class _Walk:
    """What a walk has found so far."""

    files: list[LocalFile]
    dirs: list[str]
    unreadable: list[tuple[str, str]]
    left_out: list[tuple[str, str]]


def collect(paths: list[str | os.PathLike[str]], skip_unreadable: bool = False) -> Outgoing:
    """Walk the named files and folders; folders keep their name as the top of their relative paths.

    Symbolic links to files are sent as the file they point to; links to folders are not followed (a link
    loop would never end) and are listed in ``left_out``. Raises ``Unreadable`` when something cannot be read
    (unless ``skip_unreadable``), and ``LocalFailure`` for a missing path or paths that cannot be sent together.
    """
    walk = _Walk([], [], [], [])
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LocalFailure(ErrorCode.BAD_REQUEST, f"no such file or folder: {raw}")
        name = path.resolve().name
        if path.is_dir():
            _walk_folder(path, name, walk)
        elif path.is_file():
            _add_file(path, name, walk)
        else:
            raise LocalFailure(ErrorCode.BAD_REQUEST, f"not a regular file or folder: {raw}")
    if walk.unreadable and not skip_unreadable:
        raise Unreadable(walk.unreadable)
    outgoing = Outgoing(tuple(walk.files), tuple(walk.dirs), tuple(walk.unreadable + walk.left_out))
    try:
        outgoing.offer(p.DEFAULT_CHUNK_SIZE).check_layout()
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"cannot send these paths together: {exc.message}") from exc
    return outgoing


def _walk_folder(root: Path, name: str, walk: _Walk) -> None:
    def unreadable_folder(error: OSError) -> None:
        walk.unreadable.append((str(error.filename or root), error.strerror or str(error)))

    for folder, subdirs, filenames in os.walk(root, onerror=unreadable_folder, followlinks=False):
        here = Path(folder)
        relative = here.relative_to(root)
        prefix = name if relative == Path(".") else f"{name}/{relative.as_posix()}"
        kept = []
        for subdir in sorted(subdirs):
            if (here / subdir).is_symlink():
                walk.left_out.append((str(here / subdir), "a link to a folder (not followed)"))
            else:
                kept.append(subdir)
        subdirs[:] = kept
        sent = 0
        for filename in sorted(filenames):
            source = here / filename
            try:
                mode = source.stat().st_mode
            except OSError as exc:
                walk.unreadable.append((str(source), exc.strerror or str(exc)))
                continue
            if not stat.S_ISREG(mode):
                walk.left_out.append((str(source), "not a regular file"))
                continue
            if _add_file(source, f"{prefix}/{filename}", walk):
                sent += 1
        if not sent and not kept:
            walk.dirs.append(_checked(prefix))


def _add_file(source: Path, offered_as: str, walk: _Walk) -> bool:
    """Add ``source`` if it can be opened for reading; otherwise note it as unreadable."""
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            status = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        walk.unreadable.append((str(source), exc.strerror or str(exc)))
        return False
    mtime = int(status.st_mtime)
    walk.files.append(LocalFile(source, p.FileEntry(
        _checked(offered_as),
        status.st_size,
        mtime if 0 <= mtime <= p.MAX_MTIME else None,
        bool(status.st_mode & stat.S_IXUSR),
    )))
    return True


def _checked(path: str) -> str:
    try:
        return p.check_path(path)
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.UNSAFE_PATH, f"this name cannot be sent safely: {exc.message}") from exc
