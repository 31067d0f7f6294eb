"""Turning the paths a person names into an offer: files with relative POSIX paths, and empty folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.errors import LocalFailure


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to send: where it is on this machine and the relative path it is offered under."""

    source: Path
    entry: p.FileEntry


@dataclass(frozen=True, slots=True)
class Outgoing:
    files: tuple[LocalFile, ...]
    dirs: tuple[str, ...]

    def offer(self, chunk_size: int) -> p.Offer:
        return p.Offer(tuple(f.entry for f in self.files), self.dirs, chunk_size)

    @property
    def total_size(self) -> int:
        return sum(f.entry.size for f in self.files)


def collect(paths: list[str | os.PathLike[str]]) -> Outgoing:
    """Walk the named files and folders; folders keep their name as the top of their relative paths.

    Symbolic links to files are sent as the file they point to; links to folders are not followed (a link
    loop would never end). Raises ``LocalFailure`` for a missing path or a name a receiver would refuse.
    """
    files: list[LocalFile] = []
    dirs: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LocalFailure(ErrorCode.BAD_REQUEST, f"no such file or folder: {raw}")
        name = path.resolve().name
        if path.is_dir():
            _walk_folder(path, name, files, dirs)
        elif path.is_file():
            files.append(_local_file(path, name))
        else:
            raise LocalFailure(ErrorCode.BAD_REQUEST, f"not a regular file or folder: {raw}")
    outgoing = Outgoing(tuple(files), tuple(dirs))
    try:
        outgoing.offer(p.DEFAULT_CHUNK_SIZE).check_layout()
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"cannot send these paths together: {exc.message}") from exc
    return outgoing


def _walk_folder(root: Path, name: str, files: list[LocalFile], dirs: list[str]) -> None:
    for folder, subdirs, filenames in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root)
        prefix = name if relative == Path(".") else f"{name}/{relative.as_posix()}"
        subdirs.sort()
        kept = [d for d in subdirs if not (Path(folder) / d).is_symlink()]
        subdirs[:] = kept
        entries = sorted(f for f in filenames if (Path(folder) / f).is_file())
        if not entries and not kept:
            dirs.append(_checked(prefix))
        for filename in entries:
            files.append(_local_file(Path(folder) / filename, f"{prefix}/{filename}"))


def _local_file(source: Path, offered_as: str) -> LocalFile:
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise LocalFailure(ErrorCode.BAD_REQUEST, f"cannot read {source}: {exc.strerror}") from exc
    return LocalFile(source, p.FileEntry(_checked(offered_as), size))


def _checked(path: str) -> str:
    try:
        return p.check_path(path)
    except p.ProtocolError as exc:
        raise LocalFailure(ErrorCode.UNSAFE_PATH, f"this name cannot be sent safely: {exc.message}") from exc
