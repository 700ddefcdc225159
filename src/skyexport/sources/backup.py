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
    from collections.abc import Callable
    from typing import Any


class BackupSource(CarSource):
    """A backup directory: a CarSource of its repo.car, its blobs/ the media files.

    Its blobs/ is looked at only when the export wants it (`--media` without `--blobs`):
    then a blobs/ that is not a directory (a symlink, never followed; a FIFO; a file) is
    refused, and so is a backup without blobs (no blobs/, or an empty one: fetched with
    --no-blobs) when a post of the repository references a blob; a repository whose posts
    reference none exports with an empty media/."""

    refuses = {k: v for k, v in CarSource.refuses.items() if k != "media"}

    def __init__(self, path: str | os.PathLike[str], **how: Any) -> None:
        parts = backup_parts(path)
        super().__init__(parts.car, **how)
        self.backup = Path(path)
        self.parts = parts
        self.blobs_given = self.extras.blobs is not None
        if not self.blobs_given and parts.usable:
            from . import Extras

            x = self.extras
            self.extras = Extras(records=x.records, collections=x.collections,
                                 blobs=parts.blobs, format=x.format, keep_bad=x.keep_bad,
                                 bom=x.bom)

    def media_files(self) -> tuple[list[Path], Callable[[str], str | None]] | None:
        if not self.blobs_given:
            if self.parts.problem is not None:
                raise ArchiveError(self.parts.problem)
            if not self.parts.usable:
                self._refuse_without_blobs()
        return super().media_files()

    def _refuse_without_blobs(self) -> None:
        """ArchiveError if a post references a blob: the backup holds none of them."""
        import json

        import apsw

        from .car.blobs import blob_refs

        assert self.scratch is not None   # archive() imported the posts there
        n = 0
        con = apsw.Connection(str(self.scratch / "archive.db"),
                              flags=apsw.SQLITE_OPEN_READONLY)
        try:
            for (embed,) in con.execute("SELECT embed_data FROM posts WHERE has_media AND "
                                        "embed_data IS NOT NULL"):
                try:
                    n += bool(blob_refs(json.loads(embed)))
                except ValueError:
                    continue
        finally:
            con.close()
        if not n:
            return
        did = (self.source_car or {}).get("did") or "DID"
        where = f" -o {self.backup.parent}" if self.backup.name == did else ""
        why = ("no blobs/ directory" if self.parts.blobs is None else "blobs/ is empty")
        raise ArchiveError(f"{self.backup}: {n} post(s) reference blobs, but the backup "
                           f"holds none ({why}: fetched with --no-blobs?); run `skyexport "
                           f"fetch {did}{where}` without --no-blobs to download them, or "
                           "leave --media out")


class BackupParts:
    """A backup directory's `car` (its repo.car, checked) and `blobs`: the blobs/
    directory, or None when there is none; `problem`: the one line refusing a blobs/
    that is not a directory (None if it is one, or absent); `usable`: blobs/ is a
    directory holding at least one entry."""

    __slots__ = ("car", "blobs", "problem", "usable")

    def __init__(self, car: Path, blobs: Path | None, problem: str | None,
                 usable: bool) -> None:
        self.car, self.blobs, self.problem, self.usable = car, blobs, problem, usable


def is_backup(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory (not a symlink) holding a `repo.car`, as `fetch`
    makes one; open_backup() then checks it."""
    return _is_backup(path)


def open_backup(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(repo.car, blobs/ or None) of the backup directory `path`, checked: `path` is a
    directory, `repo.car` a regular file and `blobs/` a directory, none of them a symlink
    (not followed).  For `export`/`info`/`import` to take a backup as a source with
    `--blobs`.  Raises ArchiveError (one line)."""
    parts = backup_parts(path)
    if parts.problem is not None:
        raise ArchiveError(parts.problem)
    return parts.car, parts.blobs


def backup_parts(path: str | os.PathLike[str]) -> BackupParts:
    """The parts of the backup directory `path`, each looked at with lstat (nothing
    followed or opened but blobs/, listed when it is a directory).  Raises ArchiveError
    (one line) when `path` is not a directory or its repo.car not a regular file."""
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
        return BackupParts(car, None, None, False)
    if not stat.S_ISDIR(bst.st_mode):
        what = ("a symbolic link (never followed)" if stat.S_ISLNK(bst.st_mode) else
                "a FIFO" if stat.S_ISFIFO(bst.st_mode) else
                "a file" if stat.S_ISREG(bst.st_mode) else "a device or socket")
        return BackupParts(car, blobs, f"{blobs}: not a directory but {what}; a backup's "
                           "blobs/ is a directory: move this away and run `skyexport "
                           "fetch` again to download the blobs, or name them with --blobs "
                           "DIR", False)
    try:
        with os.scandir(blobs) as it:
            usable = next(it, None) is not None
    except OSError as exc:
        raise ArchiveError(f"{blobs}: cannot list it ({exc.strerror})") from None
    return BackupParts(car, blobs, None, usable)
