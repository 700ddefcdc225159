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
    refused, and so is a backup without blobs (no blobs/, or an empty one that fetch.json
    does not say was fetched: `fetch --no-blobs` records `"blobs": null`) when a post of
    the repository references a blob; a repository whose posts reference none exports with
    an empty media/.  An empty blobs/ that fetch did fill (the PDS served none of them) is
    exported like any other: each post's missing blob is a warning."""

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
        how = ("fetched with --no-blobs" if self.parts.no_blobs else
               "fetched with --no-blobs?")
        raise ArchiveError(f"{self.backup}: {n} post(s) reference blobs, but the backup "
                           f"holds none ({why}: {how}); run `skyexport "
                           f"fetch {did}{where}` without --no-blobs to download them, or "
                           "leave --media out")


class BackupParts:
    """A backup directory's `car` (its repo.car, checked) and `blobs`: the blobs/
    directory, or None when there is none; `problem`: the one line refusing a blobs/
    that is not a directory (None if it is one, or absent); `usable`: blobs/ is a
    directory holding at least one entry, or an empty one that fetch.json says fetch filled
    (the PDS served none of the blobs: each is then a missing-media warning); `no_blobs`:
    fetch.json says the backup was fetched with --no-blobs."""

    __slots__ = ("car", "blobs", "problem", "usable", "no_blobs")

    def __init__(self, car: Path, blobs: Path | None, problem: str | None,
                 usable: bool, no_blobs: bool = False) -> None:
        self.car, self.blobs, self.problem, self.usable = car, blobs, problem, usable
        self.no_blobs = no_blobs  # fetch.json says: fetched with --no-blobs


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
    followed or opened but blobs/, listed when it is a directory, and fetch.json, read
    when blobs/ is empty or absent).  Raises ArchiveError
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
        return BackupParts(car, None, None, False,
                           _fetch_json_blobs(p / "fetch.json") is False)
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
    fetched = _fetch_json_blobs(p / "fetch.json") if not usable else None
    return BackupParts(car, blobs, None, usable or fetched is True, fetched is False)


FETCH_JSON_MAX = 1 << 20  # fetch.json is a few KB; anything far larger is not fetch's


def _fetch_json_blobs(path: Path) -> bool | None:
    """What fetch.json says of the blobs: True if fetch downloaded them (`"blobs"` an
    object), False if it was told not to (`"blobs": null`), None if it does not say (no
    such regular file, unreadable, too large, not fetch's JSON).  Never follows a symlink
    or opens anything but a regular file."""
    import json

    from .._platform import O_CLOEXEC, O_NONBLOCK, open_nofollow

    try:
        fd = open_nofollow(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > FETCH_JSON_MAX:
            return None
        data = os.read(fd, FETCH_JSON_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict) or "blobs" not in meta:
        return None
    blobs = meta["blobs"]
    return True if isinstance(blobs, dict) else False if blobs is None else None
