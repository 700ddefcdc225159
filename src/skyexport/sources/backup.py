"""A backup directory made by `skyexport fetch` (`repo.car`, `blobs/<cid>`, `fetch.json`) as
the source of an export, `info` and `import`: its repository CAR, with the blobs directory
as `--blobs` unless one is given, so `--media` needs no more options."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ArchiveError
from . import _is_backup
from .car.source import CarSource

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

class BackupSource(CarSource):
    """A backup directory: a CarSource of its repo.car, its blobs/ the media files."""

    refuses = {k: v for k, v in CarSource.refuses.items() if k != "media"}

    def __init__(self, path: str | os.PathLike[str], **how: Any) -> None:
        car, blobs = open_backup(path)
        super().__init__(car, **how)
        self.backup = Path(path)
        if self.extras.blobs is None and blobs is not None:
            from . import Extras

            x = self.extras
            self.extras = Extras(records=x.records, collections=x.collections, blobs=blobs,
                                 format=x.format, keep_bad=x.keep_bad, bom=x.bom)


def is_backup(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory (not a symlink) holding a `repo.car`, as `fetch`
    makes one; open_backup() then checks it."""
    return _is_backup(path)


def open_backup(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(repo.car, blobs/ or None) of the backup directory `path`, checked: `path` is a
    directory, `repo.car` a regular file and `blobs/` a directory, none of them a symlink
    (not followed).  For `export`/`info`/`import` to take a backup as a source with
    `--blobs`.  Raises ArchiveError (one line)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except OSError as exc:
        raise ArchiveError(f"{p}: cannot open it ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"{p}: not a backup directory (not a directory, or a symlink)")
    car = p / "repo.car"
    try:
        cst = os.lstat(car)
    except OSError:
        raise ArchiveError(f"{p}: not a backup directory (no repo.car); make one with "
                           "`skyexport fetch HANDLE`") from None
    if not stat.S_ISREG(cst.st_mode):
        raise ArchiveError(f"{car}: not a regular file (a symlink, FIFO or directory); a "
                           "backup's repo.car is never one")
    blobs = p / "blobs"
    try:
        bst = os.lstat(blobs)
    except OSError:
        return car, None
    if not stat.S_ISDIR(bst.st_mode):
        raise ArchiveError(f"{blobs}: not a directory (a symlink or a file)")
    return car, blobs
