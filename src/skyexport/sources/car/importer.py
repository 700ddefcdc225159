"""A repository CAR's posts imported into a bskyarchive-schema archive: a new one
(`skyexport import`, and the scratch archive of an export of a CAR), or merged into an
existing one (`--merge`).  docs/CAR.md is the contract."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from ..._platform import (
    exclusive_temp,
    fsync,
)
from ..._record import Record
from ...errors import ArchiveError, OptionError
from .repo import (
    ROW_BYTES,
    ROW_CHUNK,
    CarRepo,
    _load_core,
)

__all__ = ["ImportResult", "build_archive_from", "import_car"]


class ImportResult(Record):
    """What `import_car` did: the archive, the CAR's posts, how many were added (all of
    them for a new archive), and the commit's DID and rev and the CAR's SHA-256."""

    __slots__ = ("archive", "posts", "added", "did", "rev", "sha256", "seconds",
                 "media_added", "warnings")
    archive: Path
    posts: int
    added: int
    did: str
    rev: str | None
    sha256: str
    seconds: float
    media_added: int
    warnings: tuple[tuple[str, str], ...]   # (post uri, message): blobs not used

    def __init__(self, archive: Path, posts: int, added: int, did: str, rev: str | None,
                 sha256: str, seconds: float, media_added: int = 0,
                 warnings: tuple[tuple[str, str], ...] = ()) -> None:
        self._set(archive=archive, posts=posts, added=added, did=did, rev=rev,
                  sha256=sha256, seconds=seconds, media_added=media_added,
                  warnings=warnings)


def _now_sqlite() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def _columns_v2() -> tuple[str, ...]:
    from ...schema import POST_COLUMNS

    return POST_COLUMNS


def _row_bytes(row: tuple[object, ...]) -> int:
    """About the memory a posts row holds: its strings' lengths."""
    return sum(len(v) for v in row if isinstance(v, str)) + 200


def _fill_new(con: apsw.Connection, repo: CarRepo, archived_at: str, fts: bool = True,
              on_chunk: Callable[[], None] | None = None, did_index: bool = True) -> int:
    """Create bskyarchive's schema (synth's DDL) and insert every post; returns the count.
    Without `fts`, no full-text table and trigger (an export's temporary archive); without
    `did_index`, no index on did (one that selects no DID never reads it)."""
    from ...schema import FTS, INDEXES, INSERT_V2, MEDIA, POSTS_V2, TRIGGER

    n = 0
    with con:
        con.execute(POSTS_V2)
        con.execute(MEDIA)
        if fts:
            con.execute(FTS)
        if _load_core(con):
            n = repo.insert_posts(con, archived_at, on_chunk)
        else:
            chunk: list[tuple[object, ...]] = []
            held = 0
            for row in repo.post_rows(archived_at):
                chunk.append(row)
                held += _row_bytes(row)
                if len(chunk) >= ROW_CHUNK or held >= ROW_BYTES:
                    held = 0
                    con.executemany(INSERT_V2, chunk)
                    n += len(chunk)
                    chunk.clear()
                    if on_chunk is not None:
                        on_chunk()
            if chunk:
                con.executemany(INSERT_V2, chunk)
                n += len(chunk)
        for sql in INDEXES:
            if did_index or "(did)" not in sql:
                con.execute(sql)
        if fts:
            con.execute("INSERT INTO posts_fts(posts_fts) VALUES('rebuild')")
            con.execute(TRIGGER)
    return n


def build_archive_from(repo: CarRepo, final: Path, *, scratch: bool = False,
                       on_chunk: Callable[[], None] | None = None,
                       did_index: bool = True,
                       after_fill: Callable[[apsw.Connection], None] | None = None) -> int:
    """Write a new archive at `final` (which must not exist) from `repo`: built under a
    fresh hidden name beside it, linked into place only when complete, never replacing
    anything.  Returns the number of posts.  `scratch`: an export's temporary archive,
    read once and deleted: no full-text index, no fsync; `did_index=False` (only with
    scratch): no index on did either, for an export that selects no DID."""
    tmp = exclusive_temp(str(final))
    con = None
    try:
        con = apsw.Connection(tmp)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "cache_size=-2048", "temp_store=FILE"):
            con.execute("PRAGMA " + pragma).fetchall()
        n = _fill_new(con, repo, _now_sqlite(), fts=not scratch, on_chunk=on_chunk,
                      did_index=did_index or not scratch)
        if after_fill is not None:   # the media table, from blobs, before it is in place
            after_fill(con)
        con.execute("PRAGMA locking_mode=NORMAL").fetchall()
        con.execute("PRAGMA journal_mode=DELETE").fetchall()
        if not scratch:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                fsync(fd)
            finally:
                os.close(fd)
        con.close()
        try:
            os.link(tmp, final)  # fails if `final` appeared meanwhile
        except FileExistsError:
            raise ArchiveError(f"archive {final} appeared during the import; it was left "
                               "as it is and nothing was imported") from None
        except OSError:  # no hard links here: check, then rename
            if os.path.lexists(final):
                raise ArchiveError(f"archive {final} appeared during the import; nothing "
                                   "was imported") from None
            os.rename(tmp, final)
        else:
            os.unlink(tmp)
    except BaseException:
        if con is not None:
            con.close()
        for leftover in (tmp, tmp + "-journal"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
        raise
    return n


def _locked(final: Path, what: str) -> ArchiveError:
    """The one line for an archive another program holds locked during --merge."""
    return ArchiveError(f"archive {final} is locked by another program (is bskyarchive "
                        "writing to it?); try --merge again when it is done; nothing was "
                        f"{what}")


def _merge(repo: CarRepo, final: Path, archived_at: str) -> tuple[int, int]:
    """Insert the posts whose uri is not yet in the archive, in one transaction."""
    try:
        con = apsw.Connection(str(final), flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise ArchiveError(f"archive {final} cannot be opened for --merge: {exc}") from None
    try:
        try:
            con.set_busy_timeout(5000)
            cols = [r[1] for r in con.execute("PRAGMA table_info(posts)")]
        except (apsw.BusyError, apsw.LockedError):
            raise _locked(final, "imported") from None
        except apsw.Error as exc:
            raise ArchiveError(f"archive {final} is not a readable SQLite database ({exc}); "
                               "--merge needs a bskyarchive archive") from None
        if not cols:
            raise ArchiveError(f"archive {final} has no posts table; --merge needs a "
                               "bskyarchive archive")
        columns = _columns_v2()
        use = [i for i, c in enumerate(columns) if c in cols]
        if len(use) < len(columns) - 1 or "uri" not in cols:
            raise ArchiveError(f"archive {final}: table posts lacks bskyarchive's columns; "
                               "--merge needs a bskyarchive archive")
        names = ", ".join(columns[i] for i in use)
        sql = (f"INSERT INTO posts ({names}) SELECT {', '.join('?' * len(use))} "
               "WHERE NOT EXISTS (SELECT 1 FROM posts WHERE uri = ?1)")
        total = added = 0
        try:
            with con:  # one transaction: all or nothing
                chunk: list[tuple[object, ...]] = []
                before: Any = con.execute("SELECT count(*) FROM posts").fetchall()[0][0]
                held = 0
                for row in repo.post_rows(archived_at):
                    chunk.append(tuple(row[i] for i in use))
                    total += 1
                    held += _row_bytes(row)
                    if len(chunk) >= ROW_CHUNK or held >= ROW_BYTES:
                        con.executemany(sql, chunk)
                        chunk.clear()
                        held = 0
                if chunk:
                    con.executemany(sql, chunk)
                after: Any = con.execute("SELECT count(*) FROM posts").fetchall()[0][0]
                added = after - before
        except (apsw.BusyError, apsw.LockedError):
            raise _locked(final, "changed") from None
        except apsw.Error as exc:
            raise ArchiveError(f"archive {final}: merging failed ({exc}); nothing was "
                               "changed") from None
        return total, added
    finally:
        con.close()


def import_car(car: str | os.PathLike[str], archive: str | os.PathLike[str] =
               "data/archive.db", *, merge: bool = False,
               on_blocks: Callable[[int, int], None] | None = None,
               blobs: str | os.PathLike[str] | None = None) -> ImportResult:
    """Import the posts of the repository CAR `car` into `archive` (CAR.md, `import`).

    Without `merge` the archive must not exist: it is built under a temporary name and
    renamed into place when complete.  With `merge`, posts whose uri is not in the
    existing archive are added in one transaction; nothing else changes.  Raises
    ArchiveError (one line) when the CAR cannot be read; nothing is imported then.
    Directories created for the archive are removed again when the import fails."""
    started = time.monotonic()
    final = Path(archive)
    blob_dir = None
    if blobs is not None:
        from .blobs import BlobDir

        try:
            blob_dir = BlobDir(blobs)
        except OSError as exc:
            raise OptionError(f"--blobs {os.fspath(blobs)!r}: "
                              f"{exc.strerror or 'not a directory'}") from None
    warnings: list[tuple[str, str]] = []
    media_added = [0]

    def fill(con: apsw.Connection) -> None:
        from .blobs import fill_media

        if blob_dir is not None:
            media_added[0] = fill_media(
                con, blob_dir, verify=True,
                relative_to=Path(os.path.abspath(final)).parent,
                warn=lambda uri, msg: warnings.append((uri, msg)))

    if merge:
        if not final.is_file():
            raise OptionError(f"--merge: archive {final} does not exist; leave out --merge "
                              "to create it")
    elif os.path.lexists(final):
        raise ArchiveError(f"archive {final} already exists; pass --merge to add the CAR's "
                          "posts to it, or choose another --archive")
    parent = final.parent if str(final.parent) else Path(".")
    made: list[Path] = []  # the directories this import creates, outermost first
    missing = parent
    while not os.path.lexists(missing) and missing != missing.parent:
        made.insert(0, missing)
        missing = missing.parent
    try:
        for d in made:
            d.mkdir()
    except OSError as exc:
        _remove_dirs(made)
        raise OptionError(f"cannot create {parent} for the archive: "
                          f"{exc.strerror}") from None
    try:
        with CarRepo(car, parent, on_blocks) as repo:
            sha256 = repo.sha256  # a failure to hash it fails the import before it is made
            if merge:
                posts, added = _merge(repo, final, _now_sqlite())
                if blob_dir is not None:
                    con = apsw.Connection(str(final), flags=apsw.SQLITE_OPEN_READWRITE)
                    try:
                        fill(con)
                    finally:
                        con.close()
            else:
                posts = added = build_archive_from(repo, final, after_fill=fill)
            return ImportResult(final, posts, added, repo.did, repo.rev, sha256,
                                time.monotonic() - started, media_added[0],
                                tuple(warnings))
    except BaseException:
        _remove_dirs(made)
        raise


def _remove_dirs(made: list[Path]) -> None:
    """Remove the directories `made` (outermost first) that are still empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return
