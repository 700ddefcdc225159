"""Where posts come from.

Every kind of input is a `Source`.  Opened once, before anything is created in OUTPUT, it
gives the export an `Archive` (sources/archive.py) whose `snapshot(selection)` is the one
read transaction every row, count and media row of the export comes from:

    open_source(path) -> ArchiveSource (a bskyarchive archive: the Archive itself)
                      -> CarSource     (a repository CAR, sources/car/: imported into a
                                        temporary archive in the export's hidden directory)

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
    #: error the option checks raise): "media", "stream" (an `output` stream), and
    #: "layout_did_without_did" (`layout="did"` needs `did`; the text is shown in
    #: parentheses and may name the input as `{path}`).
    refuses: ClassVar[dict[str, str]] = {}

    def __init__(self, path: str | os.PathLike[str], *, row_source: str | None = None,
                 busy_timeout_ms: int | None = None, nomutex: bool = False) -> None:
        self.path = Path(path)
        self.row_source = row_source
        self.busy_timeout_ms = busy_timeout_ms
        self.nomutex = nomutex  # nothing but the stepping thread uses the connection

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
                heartbeat: Callable[[], None]) -> Archive:
        """The archive the export takes its snapshot of.  `scratch` is a directory of the
        export's own (removed with it) where a source may build one (None for an export
        to a stream: a source that needs it refuses "stream"); `emit` sends a progress
        event, `heartbeat` one if none went out for a while."""
        raise NotImplementedError

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


def source_kind(path: str | os.PathLike[str]) -> type[Source]:
    """The kind of input `path` holds, by content.  Anything unreadable, or neither an
    SQLite file nor a CAR, is taken for an archive, which reports it in one line."""
    from .archive import ArchiveSource

    if _looks_like_car(path):
        from .car.source import CarSource

        return CarSource
    return ArchiveSource


def open_source(path: str | os.PathLike[str], *, row_source: str | None = None,
                busy_timeout_ms: int | None = None, nomutex: bool = False) -> Source:
    """`path` opened as the kind of input its content says (see `source_kind`)."""
    return source_kind(path)(path, row_source=row_source, busy_timeout_ms=busy_timeout_ms,
                             nomutex=nomutex)


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
