"""Where posts come from.

Every kind of input is a `Source`.  Opened once, before anything is created in OUTPUT, it
gives the export an `Archive` (sources/archive.py) whose `snapshot(selection)` is the one
read transaction every row, count and media row of the export comes from:

    open_source(path) -> ArchiveSource (a bskyarchive archive: the Archive itself)
                      -> CarSource     (a repository CAR, sources/car/: imported into a
                                        temporary archive in the export's hidden directory)
                      -> BackupSource  (a backup directory of `skyexport fetch`, backup.py:
                                        its repo.car, its blobs/ the media files)

The kind is picked by the file's content, never by its name.  A new kind of input is a new
module here with a `Source` subclass (and a line in `source_kind`); the export (exporter/)
knows only this base class.  What a kind cannot do is declared in `refuses`, which the
export's option checks read (exporter/options.py), so that every option is checked in one
place, before anything is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._platform import O_CLOEXEC, O_NONBLOCK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar

    from .archive import Archive, Selection

SQLITE_MAGIC = b"SQLite format 3\x00"


class Source:
    """One input of posts, opened.  Use as a context manager (close() at the end)."""

    #: Export options this kind of input cannot take, and why (the end of the one-line
    #: error the option checks raise): "media" (without `blobs`), "stream" (an `output`
    #: stream), "layout_did_without_did" (`layout="did"` needs `did`; the text is shown in
    #: parentheses), "collections" (records files of the other collections) and "blobs"
    #: (media files from a directory of blobs).  A text may name the input as `{path}`
    #: and the options as `{media}`, `{blobs}`, `{collections}`.
    refuses: ClassVar[dict[str, str]] = {}

    def __init__(self, path: str | os.PathLike[str], *, row_source: str | None = None,
                 busy_timeout_ms: int | None = None, nomutex: bool = False,
                 extras: Extras | None = None) -> None:
        self.path = Path(path)
        self.row_source = row_source
        self.busy_timeout_ms = busy_timeout_ms
        self.nomutex = nomutex  # nothing but the stepping thread uses the connection
        self.extras = extras or Extras()

    def open_archive(self, path: Path) -> Archive:
        """An archive opened for the export, as this source was asked to open it."""
        from .archive import Archive

        return Archive(path, row_source=self.row_source,
                       busy_timeout_ms=self.busy_timeout_ms, nomutex=self.nomutex)

    def layout_did(self, did: str | None, opt: Callable[[str], str]) -> str:
        """The DID that names OUTPUT/<did>/ (`layout="did"`): `did` if given, checked
        against the posts where they can be read now, else the one DID of the posts.
        Raises OptionError or SelectionError."""
        raise NotImplementedError

    def archive(self, scratch: Path | None, *, selection: Selection, emit: Callable[[], None],
                heartbeat: Callable[[], None], warn: Warn | None = None) -> Archive:
        """The archive the export takes its snapshot of.  `scratch` is the export's own
        directory (None for an export to a stream): a source may build its archive in a
        directory of its own inside it (removed by release()), and writes the files of
        `extras` there (listed by files()).  `emit` sends a progress event, `heartbeat`
        one if none went out for a while; `warn` reports what it left out (Warn)."""
        raise NotImplementedError

    def files(self) -> dict[str, dict[str, Any]]:
        """The files archive() wrote into the export besides the posts (extras), by their
        name in it: {"sha256", "bytes", "records"}; listed in manifest.json."""
        return {}

    def media_files(self) -> tuple[list[Path], Callable[[str], str | None]] | None:
        """Where the media rows' files are when not beside the archive (the only roots,
        any_path off) and the SHA-256 each file's name promises (checked as it is
        copied); None: the archive's own media files."""
        return None

    def release(self) -> None:
        """The rows and media have been read: drop what `archive()` built, before the
        manifest is written and the export published."""

    def manifest(self, arc: Archive) -> dict[str, Any]:
        """This source's keys in manifest.json."""
        return {"source_archive": str(self.path.resolve()),
                "schema_version": arc.schema_version}

    def progress(self) -> dict[str, int]:
        """This source's fields of an ExportProgress event (how much of it was read)."""
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Extras:
    """What an export asks of its source besides the posts (checked by the option checks
    against `refuses`): `collections` (records files: None for every collection, else
    the names; `records` says whether any were asked for) and `blobs` (a directory of
    files named by their content, the media rows' files)."""

    __slots__ = ("records", "collections", "blobs", "format", "keep_bad", "bom")

    def __init__(self, *, records: bool = False, collections: frozenset[str] | None = None,
                 blobs: Path | None = None, format: str = "json", keep_bad: bool = False,
                 bom: bool = True) -> None:
        self.records, self.collections, self.blobs = records, collections, blobs
        self.format, self.keep_bad, self.bom = format, keep_bad, bom


class Warn:
    """How a source reports what it left out: `add(uri, column, message)` one warning,
    `more(n)` n further ones counted only (past the kept ones)."""

    def __init__(self, add: Callable[[str, str, str], None],
                 more: Callable[[int], None]) -> None:
        self.add, self.more = add, more


def source_kind(path: str | os.PathLike[str]) -> type[Source]:
    """The kind of input `path` holds, by content.  Anything unreadable, or neither an
    SQLite file, a CAR nor a directory holding a repo.car, is taken for an archive, which
    reports it in one line."""
    from .archive import ArchiveSource

    if _is_backup(path):
        from .backup import BackupSource

        return BackupSource
    if _looks_like_car(path):
        from .car.source import CarSource

        return CarSource
    return ArchiveSource


def open_source(path: str | os.PathLike[str], *, row_source: str | None = None,
                busy_timeout_ms: int | None = None, nomutex: bool = False) -> Source:
    """`path` opened as the kind of input its content says (see `source_kind`)."""
    return source_kind(path)(path, row_source=row_source, busy_timeout_ms=busy_timeout_ms,
                             nomutex=nomutex)


def _is_backup(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory (not a symlink) holding a `repo.car`, as `skyexport
    fetch` makes one (backup.py's open_backup() then checks it)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and \
            os.path.lexists(os.path.join(path, "repo.car"))
    except OSError:
        return False


def _looks_like_car(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a regular file that begins as a repository CAR.  Read without
    blocking, so a FIFO never hangs the check (the archive's own checks refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        magic = os.read(fd, len(SQLITE_MAGIC))
    except OSError:
        return False
    finally:
        os.close(fd)
    if magic == SQLITE_MAGIC or not magic:
        return False
    from .car.repo import is_car

    return is_car(path)
