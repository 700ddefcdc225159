"""Reading a bskyarchive archive with APSW: one read-only connection, one read transaction,
one SELECT stepped once (README.md, How it works).

The SELECT hands the writer core exactly the Python types it expects: text and timestamp
columns as bytes (CAST AS BLOB: no decoding cost, and invalid UTF-8 cannot raise), numeric
columns as int/float/bytes/None, stored JSON as int/float (a number, by SQLite's affinity)
or bytes.  The column order is the core's (`C_URI`... in ext/skyexport/rows/rows.pxi).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import apsw

from .. import _core
from .._core import (
    InstantRange,
    RowPipe,
    RowSource,
    Statement,
    TupleRows,
    is_bad_stamp,
    is_true,
    register_filters,
)
from .._record import Record
from ..errors import ArchiveError, OptionError, SelectionError
from ..schema import POST_COLUMNS, POST_COLUMNS_V1
from . import Source

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import Warn

REQUIRED_COLUMNS = POST_COLUMNS_V1   # quote_count is optional (schema v1 lacks it)

# A numeric-affinity column: numbers as they are, text as bytes (see module docstring).
_NUM = "CASE WHEN typeof({0}) = 'text' THEN CAST({0} AS BLOB) ELSE {0} END"
_TXT = "CAST({0} AS BLOB)"

# Pages SQLite may keep in memory (negative = KiB): small, so memory stays flat.
CACHE_KIB = 4096
# How long a writer holding a lock is waited for (the CLI's SKYEXPORT_BUSY_TIMEOUT_MS, or
# export(_busy_timeout_ms=...), overrides it).  Nothing in the library reads the environment.
BUSY_TIMEOUT_MS = 10_000
# Where rows come from (see Archive.row_source); tests switch it here.
ROW_SOURCES = ("pipe", "direct", "cursor")
DEFAULT_ROW_SOURCE = "pipe"


def _busy_handler(timeout_ms: int) -> Callable[[int], bool]:
    """SQLite's busy handler: retry every few milliseconds for `timeout_ms`.  In Python
    rather than set_busy_timeout's sleep in C, so that Ctrl-C and SIGTERM act at once while
    another process holds the archive locked (not after the whole timeout)."""
    started = [0.0]

    def handler(tries: int) -> bool:
        now = time.monotonic()
        if tries == 0:
            started[0] = now
        left = timeout_ms / 1000 - (now - started[0])
        if left <= 0:
            return False
        time.sleep(min(0.02, left))
        return True
    return handler


# has_media is true, by the writer core's own rule (bool_value), as an SQL function: the
# media query and the encoder cannot disagree.  Looked up at call time (a test replaces it).
HAS_MEDIA_TRUE = "skyexport_true(has_media)"
# SQLite VM steps between progress-handler calls (heartbeat while a step runs long).
HEARTBEAT_STEPS = 200_000


def _columns(has_quote_count: bool, direct: bool) -> str:
    """The 17 columns in the core's order.  The direct path reads each value's storage
    class and bytes itself; the cursor path needs CASTs so that APSW hands over bytes, not
    str (see the module docstring)."""
    names = [c if c != "quote_count" or has_quote_count else "0" for c in POST_COLUMNS]
    if direct:
        return ", ".join(names)
    numeric = {"has_media", "like_count", "repost_count", "reply_count", "quote_count",
               "is_reply", "embed_data", "labels"}
    return ", ".join(name if name == "0" else (_NUM if name in numeric else _TXT).format(name)
                     for name in names)


def _day_before(bound: tuple[int, int], days: int) -> str:
    """'YYYY-MM-DD' of the UTC day `days` away from an instant (text prefilter bounds)."""
    secs = bound[0] + days * 86400
    secs = min(max(secs, -62135596800), 253402214400)  # 0001-01-01 .. 9999-12-31
    return time.strftime("%Y-%m-%d", time.gmtime(secs))


class Archive:
    """An archive opened for one export.  Use as a context manager.

    Invariant: after `begin()`, every query (count, rows, media) reads the same snapshot,
    until `close()`.
    """

    def __init__(self, path: str | os.PathLike[str], *, row_source: str | None = None,
                 busy_timeout_ms: int | None = None, nomutex: bool = False) -> None:
        source = row_source or DEFAULT_ROW_SOURCE
        # SQLITE_OPEN_NOMUTEX: no lock taken and released by every step and every column
        # read (34 per row).  Only for a user of the connection that never touches it while
        # a RowPipe steps it on its thread (an export without --media: the media cursor is
        # stepped on the main thread beside the pipe); close() stops pipes first.
        self.nomutex = nomutex
        if source not in ROW_SOURCES:
            raise ValueError(f"row source must be one of {', '.join(ROW_SOURCES)}, not "
                             f"{source!r}")
        self.path = Path(path)
        self.busy_timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            raise ArchiveError(f"archive {self.path} does not exist; pass the path of "
                               "bskyarchive's archive.db (default ./data/archive.db) or of a "
                               "repository export (repo.car)") from None
        except PermissionError:
            raise ArchiveError(f"archive {self.path} cannot be read: permission denied "
                               f"(directory {_blocking_dir(self.path)} cannot be searched by "
                               "this user); fix its permissions or run skyexport as a user "
                               "who can read it") from None
        except OSError as exc:
            raise ArchiveError(f"archive {self.path} cannot be opened ({exc.strerror}); "
                               "check that it exists and is readable") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"archive {self.path} is not a file; pass the path of "
                               "bskyarchive's archive.db")
        try:
            cols, tables, rowid = self._open(immutable=False)
        except apsw.Error as exc:
            self.close()
            if not _wal_readable_immutable(self.path, exc):
                raise self.error(exc) from None
            # A WAL archive in a directory we cannot write, with no -wal file: SQLite
            # cannot create the -shm it wants, but there is nothing to recover and nobody
            # can write the archive meanwhile (no -wal can be created): read it immutable.
            try:
                cols, tables, rowid = self._open(immutable=True)
            except apsw.Error as exc2:
                self.close()
                raise self.error(exc2) from None
        if "posts" not in tables:
            self.close()
            raise ArchiveError(f"archive {self.path} has no posts table; is it a bskyarchive "
                               "archive?")
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            self.close()
            raise ArchiveError(f"archive {self.path}: table posts lacks column(s) "
                               f"{', '.join(missing)}; is it a bskyarchive archive?")
        if not rowid:
            self.close()
            raise ArchiveError(f"archive {self.path}: table posts is declared WITHOUT ROWID, "
                               "which bskyarchive never does; is it a bskyarchive archive? "
                               "(to export it, copy its rows into an ordinary posts table "
                               "in a copy of the archive)")
        self.has_quote_count = "quote_count" in cols
        self.has_media_table = "media" in tables
        self.schema_version = 2 if self.has_quote_count else 1
        # Where rows come from: "pipe" (default: the core steps SQLite on a thread of its
        # own), "direct" (the core steps the same Statement on the encoding thread: one
        # core, and the check that both RowSources give the same bytes), "cursor" (an
        # APSW cursor; also what happens where the core cannot load as an extension).
        self.row_source = source
        self.direct = self.row_source != "cursor" and self._load_core()
        if not self.direct:
            self.row_source = "cursor"
        self._statements: list[Statement] = []
        self._pipes: list[RowPipe] = []

    def _open(self, immutable: bool) -> tuple[set[str], set[str], bool]:
        """Open the connection; (posts' columns, table names, posts has a rowid)."""
        if immutable:
            name = self.path.resolve().as_uri() + "?immutable=1"
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        else:
            name, flags = str(self.path), apsw.SQLITE_OPEN_READONLY
        if self.nomutex:
            flags |= apsw.SQLITE_OPEN_NOMUTEX
        self.conn = apsw.Connection(name, flags=flags)
        self.conn.set_busy_handler(_busy_handler(self.busy_timeout_ms))
        for pragma in (f"cache_size = -{CACHE_KIB}", "temp_store = FILE", "mmap_size = 0",
                       "query_only = 1"):
            self.conn.execute(f"PRAGMA {pragma}")
        cols = {row[1] for row in self.conn.execute("PRAGMA table_info(posts)")}
        tables = {row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table'")}
        # table_list's `wr`: 1 for a WITHOUT ROWID table (the SELECT sorts by rowid).
        rowid = all(not row[4] for row in self.conn.execute("PRAGMA main.table_list(posts)"))
        return cols, tables, rowid

    def _load_core(self) -> bool:
        """Load the compiled core as an SQLite extension of this connection, so the writer
        can step the SELECT itself (ext/skyexport/sqlite_glue.h).  False where APSW's
        SQLite refuses extensions: the export then reads rows through the APSW cursor."""
        try:
            self.conn.enable_load_extension(True)
            try:
                self.conn.load_extension(_core.__file__, _core.EXTENSION_ENTRY_POINT)
            finally:
                self.conn.enable_load_extension(False)
        except (apsw.Error, AttributeError):
            return False
        return _core.direct_ready()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pipe in getattr(self, "_pipes", ()):
            pipe.close()         # the stepping thread ends before its statement does
        for stmt in getattr(self, "_statements", ()):
            stmt.close()
        conn = getattr(self, "conn", None)
        if conn is not None:
            try:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
            except apsw.Error:
                pass
            conn.close(True)
            self.conn = None  # type: ignore[assignment]

    def error(self, exc: BaseException, where: str = "") -> ArchiveError:
        """An SQLite error of this archive as one clear line (archive_error)."""
        return archive_error(self.path, exc, where, self.busy_timeout_ms)

    def snapshot(self, selection: Selection) -> Snapshot:
        """Open the read transaction every query of one export reads from, for the posts
        `selection` selects."""
        return Snapshot(self, selection)

    def set_heartbeat(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` every HEARTBEAT_STEPS SQLite VM steps (a long sort, a slow
        page read): lets progress keep flowing while one step takes seconds."""
        if callback is None:
            self.conn.set_progress_handler(None)
        else:
            def handler() -> bool:
                callback()
                return False  # False: do not interrupt the query
            self.conn.set_progress_handler(handler, HEARTBEAT_STEPS)

    def did_counts(self, limit: int = -1) -> list[tuple[bytes | None, int]]:
        """(DID, posts) for the DIDs the archive holds, most posts first (at most `limit`).
        DIDs as bytes (a stored one may not be valid UTF-8), None for a NULL one."""
        rows: Any = self.conn.execute(
            "SELECT CAST(did AS BLOB), count(*) FROM posts GROUP BY did "
            "ORDER BY count(*) DESC, did LIMIT ?", (limit,)).fetchall()
        return [(bytes(d) if d is not None else None, int(n)) for d, n in rows]

    def unknown_did(self, did: str) -> SelectionError:
        """A DID the archive holds no post of is a mistake (a typo, another account),
        not an empty export: say which DIDs it does hold."""
        held = self.did_counts(limit=6)
        if not held:
            listed = "it holds no posts at all"
        else:
            shown = ", ".join(f"{_shown(d)} ({n} posts)" for d, n in held[:5])
            listed = f"it holds {shown}{', ...' if len(held) > 5 else ''}"
        return SelectionError(f"archive {self.path} holds no post of DID {did}; {listed}; "
                              f"`skyexport info {self.path}` lists them all")

    def count(self, sql: str, args: Sequence[object] = ()) -> int:
        value: Any = self.conn.execute(sql, args).fetchall()[0][0]
        return int(value)

    def _register_functions(self, since: tuple[int, int] | None,
                            until: tuple[int, int] | None) -> None:
        """skyexport_in_range(created_at), skyexport_bad_stamp(created_at) and
        skyexport_true(has_media): C functions where the core is loaded into the connection
        (no Python call per row, nothing for the stepping thread to wait for), else the
        same tests in Python."""
        if self.direct:
            register_filters(self.conn, since, until)
            return
        funcs: list[tuple[str, Any]] = [("skyexport_in_range", InstantRange(since, until)),
                                        ("skyexport_bad_stamp", is_bad_stamp),
                                        ("skyexport_true", is_true)]
        for name, fn in funcs:
            self.conn.create_scalar_function(name, fn, 1, deterministic=True)

    def _statement(self, sql: str, args: Sequence[object]) -> RowSource:
        """`sql` as a RowSource for Writer.encode (see row_source)."""
        if not self.direct:
            return TupleRows(self.conn.execute(sql, args))
        stmt = Statement(self.conn, sql, list(args))
        self._statements.append(stmt)
        if self.row_source == "direct":
            return stmt
        pipe = RowPipe(stmt)
        self._pipes.append(pipe)
        pipe.start()
        return pipe


class Selection(Record):
    """Which posts an export takes: a DID (None: all) and an instant range [since, until]
    as (unix seconds, nanoseconds), either end open (None).  A value: the SQL for it is
    built once, by Snapshot."""

    __slots__ = ("did", "since", "until")
    did: str | None
    since: tuple[int, int] | None
    until: tuple[int, int] | None

    def __init__(self, did: str | None = None, since: tuple[int, int] | None = None,
                 until: tuple[int, int] | None = None) -> None:
        self._set(did=did, since=since, until=until)

    @property
    def dated(self) -> bool:
        return self.since is not None or self.until is not None


class Snapshot:
    """One read transaction of an archive, and the posts one Selection takes from it.

    Every query - the totals, the rows, the media rows, the unreadable dates - reads this
    same snapshot and the same WHERE clause, built once here: one rule per filter.
    Invariant: valid until the Archive closes."""

    def __init__(self, arc: Archive, selection: Selection) -> None:
        self.arc = arc
        self.selection = selection
        arc._register_functions(selection.since, selection.until)
        arc.conn.execute("BEGIN")
        clauses: list[str] = []
        args: list[object] = []
        self.did_posts = 0   # posts of the selected DID, whatever the dates
        if selection.did is not None:
            # '+did' keeps SQLite on the created_at index when one DID owns most rows (it
            # always does in a real archive): the did index would force a sort of them all.
            total = arc.count("SELECT count(*) FROM posts")
            self.did_posts = arc.count("SELECT count(*) FROM posts WHERE did = ?",
                                       (selection.did,))
            clauses.append("+did = ?" if self.did_posts * 4 >= total else "did = ?")
            args.append(selection.did)
        self._posts_total: int | None = None
        self._bad_total: int | None = None
        # When every stored date lies far enough inside the range, the filter can only
        # leave out unreadable ones: no SQL filter then (no test per row, a plain count),
        # and the writer leaves out and reports any unreadable date it meets
        # (`drop_unreadable`; each one lowers posts_total by one).
        self.drop_unreadable = selection.dated and self._dates_cover_all()
        self.dates_filter = selection.dated and not self.drop_unreadable
        if self.dates_filter:
            # A text prefilter on the date prefix (offsets are under 24 h, so the instant's
            # day is within one of the stored day), checked on the created_at index before
            # any table row is read; the SQL function then decides exactly, by instant.
            # Let through to the exact test what the prefix cannot judge: text with leading
            # white space (form 1 trims it) and numbers (both sort before '0-'; not '0',
            # which the column's NUMERIC affinity would turn into the number 0), BLOBs
            # (after all text), NULL (Go's zero time).
            clauses.append("((created_at >= ? AND created_at < ?) OR created_at < '0-' "
                           "OR created_at >= X'' OR created_at IS NULL)")
            args.append(_day_before(selection.since, -1)
                        if selection.since is not None else "")
            args.append(_day_before(selection.until, 2)
                        if selection.until is not None else "\uffff")
            clauses.append("skyexport_in_range(created_at)")
        self.where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        self.args = args

    def _dates_cover_all(self) -> bool:
        """Whether [since, until] holds every readable created_at: all are text (no NULL -
        Go's zero time -, number or BLOB) and the earliest and latest lie two days inside
        the range (offsets are under 24 h), so that the filter could only leave out the
        unreadable ones.  From the created_at index: its two ends and a NULL lookup."""
        sel, conn = self.selection, self.arc.conn
        ends = []
        for agg in ("min", "max"):   # one aggregate a query: each is an index lookup
            row: Any = conn.execute(
                f"SELECT typeof(v), CAST(v AS BLOB) FROM (SELECT {agg}(created_at) AS v "
                "FROM posts)").fetchall()[0]
            kind, value = row
            if kind != "text":       # a number, a BLOB, or no posts at all
                return False
            ends.append(bytes(value))
        lo, hi = ends
        if lo < b"0-":
            return False
        if sel.since is not None and lo < _day_before(sel.since, 2).encode():
            return False
        if sel.until is not None and hi >= _day_before(sel.until, -1).encode():
            return False
        return not conn.execute(
            "SELECT 1 FROM posts WHERE created_at IS NULL LIMIT 1").fetchall()

    def _with_media(self, columns: str) -> str:
        """The selected posts whose has_media is true (skyexport_true: the writer core's
        own rule), as a SELECT of `columns`."""
        where = self.where + (" AND " if self.where else " WHERE ") + HAS_MEDIA_TRUE
        return f"SELECT {columns} FROM posts{where}"

    @property
    def posts_total(self) -> int:
        """The number of posts selected (counted once)."""
        if self._posts_total is None:
            if self.dates_filter:
                self._count_dated()
            elif self.selection.did is not None:
                self._posts_total = self.did_posts  # counted on the did index already
            else:
                self._posts_total = self.arc.count("SELECT count(*) FROM posts")
        assert self._posts_total is not None
        return self._posts_total

    def _bad_where(self) -> tuple[str, list[object]]:
        did = self.selection.did
        where = "skyexport_bad_stamp(created_at)" + (" AND did = ?" if did is not None else "")
        return where, [did] if did is not None else []

    def _count_dated(self) -> None:
        """With a date filter: the posts selected and the unreadable dates it leaves out,
        counted in one pass (without a DID, over the created_at index alone)."""
        bad, bad_args = self._bad_where()
        where = self.where[len(" WHERE "):]
        row: Any = self.arc.conn.execute(
            f"SELECT count(*) FILTER (WHERE {where}), count(*) FILTER (WHERE {bad}) "
            "FROM posts", [*self.args, *bad_args]).fetchall()[0]
        self._posts_total, self._bad_total = int(row[0]), int(row[1])

    def media_total(self) -> int:
        """Media rows of the selected posts with has_media."""
        if not self.arc.has_media_table:
            return 0
        # media_rows()'s join, counted: one search by primary key per media row (an IN
        # list would test every selected post), and the same rows by construction
        posts = self._with_media("uri")
        return self.arc.count(f"SELECT count(*) FROM ({posts}) AS p JOIN media AS m "
                              "ON m.post_uri = p.uri", self.args)

    def rows(self) -> RowSource:
        """The selected posts in the export's order, as a RowSource.

        The sort (the uri tie-break, or all of it on the did index) holds only the keys
        and rowid; each row's values are read once, after it.  Sorting whole rows kept
        several copies of a giant post in SQLite's sorter (tests/system/test_faults.py, huge
        values).  SQLite takes the co-routine's order for the outer ORDER BY: no re-sort."""
        arc = self.arc
        sql = (f"SELECT {_columns(arc.has_quote_count, arc.direct)} FROM "
               "(SELECT rowid AS r, created_at AS c, uri AS u FROM posts"
               f"{self.where} ORDER BY created_at DESC, uri ASC LIMIT -1) AS o "
               "CROSS JOIN posts ON posts.rowid = o.r ORDER BY o.c DESC, o.u ASC")
        return arc._statement(sql, self.args)

    def media_rows(self) -> Iterator[tuple[bytes, bytes, bytes]]:
        """(post_uri, hash, file_path) of the media of the selected posts with has_media,
        in the export's own order (`created_at DESC, uri ASC`).

        One statement for the whole export, merged with the posts batch by batch
        (media.MediaStream): the media table has no index on `post_uri`, so a lookup per
        batch would scan it once per batch.  SQLite searches posts by its primary key per
        media row and sorts the matches once (in a temporary file: temp_store=FILE)."""
        if not self.arc.has_media_table:
            return iter(())
        posts = self._with_media("uri, created_at")
        return self.arc.conn.execute(
            "SELECT CAST(m.post_uri AS BLOB), CAST(m.hash AS BLOB), CAST(m.file_path AS BLOB) "
            f"FROM ({posts}) AS p JOIN media AS m ON m.post_uri = p.uri "
            "ORDER BY p.created_at DESC, p.uri ASC, m.file_path ASC", self.args)

    def bad_created_at(self, limit: int) -> tuple[list[tuple[str, str]], int]:
        """Posts of the selected DID (all with None) whose created_at cannot be read - the
        ones a date filter leaves out: (the first `limit` of them, their total).  None
        with drop_unreadable: the writer meets and reports them."""
        if self.drop_unreadable:
            return [], 0
        where, args = self._bad_where()
        # Counted first (with the posts total, in one pass); the posts themselves are
        # looked up only when there are any.
        if self._bad_total is None:
            if self.dates_filter:
                self._count_dated()
            else:
                self._bad_total = self.arc.count(f"SELECT count(*) FROM posts WHERE {where}",
                                                 args)
        total = self._bad_total
        assert total is not None
        if not total:
            return [], 0
        found = [(str(u), str(c)) for u, c in self.arc.conn.execute(
            f"SELECT uri, created_at FROM posts WHERE {where} ORDER BY uri LIMIT ?",
            [*args, limit])]
        return found, total


# SQLite's extended result codes for a read-only connection that would have to write.
SQLITE_READONLY_ROLLBACK = 776     # a hot journal needs rolling back
SQLITE_READONLY_DIRECTORY = 1544   # WAL: the -shm cannot be created in the directory


def _is_wal(path: Path) -> bool:
    """The database header says WAL mode (file format versions 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[:16] == b"SQLite format 3\x00" and \
        (header[18] == 2 or header[19] == 2)


def _companion_size(path: Path, suffix: str) -> int:
    """Size of `path` + suffix (-wal, -shm, -journal); -1 when there is none."""
    try:
        return os.stat(f"{path}{suffix}").st_size
    except OSError:
        return -1


def _dir_read_only(path: Path) -> bool:
    return not os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK | os.X_OK)


def _wal_readable_immutable(path: Path, exc: apsw.Error) -> bool:
    """A WAL archive without -shm in a read-only directory and no WAL content to read."""
    return (isinstance(exc, (apsw.ReadOnlyError, apsw.CantOpenError)) and _is_wal(path)
            and _companion_size(path, "-shm") < 0 and _companion_size(path, "-wal") <= 0
            and _dir_read_only(path))


def _blocking_dir(path: Path) -> Path:
    """The nearest directory on the way to `path` this user cannot search."""
    parent = Path(os.path.abspath(path)).parent
    chain = [parent, *parent.parents][::-1]
    for d in chain:
        if not os.access(d, os.X_OK):
            return d
    return parent


def archive_error(path: Path, exc: BaseException, where: str = "",
                  busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> ArchiveError:
    """One clear line for an SQLite failure."""
    at = f" {where}" if where else ""
    code = getattr(exc, "extendedresult", 0)
    if isinstance(exc, (apsw.ReadOnlyError, apsw.CantOpenError)):
        if code == SQLITE_READONLY_ROLLBACK or (code & 0xff == 8 and
                                               _companion_size(path, "-journal") > 0):
            return ArchiveError(
                f"archive {path} has a hot rollback journal ({path.name}-journal): a writer "
                "crashed mid-transaction and the archive cannot be read until SQLite rolls "
                "it back, which a read-only export never does; open it once with write "
                f"access (sqlite3 '{path}' 'PRAGMA quick_check;', or start bskyarchive) in a "
                "writable directory, then export again")
        if _is_wal(path) and _companion_size(path, "-shm") < 0 and _dir_read_only(path):
            return ArchiveError(
                f"archive {path} is in WAL mode and its directory is read-only, so SQLite "
                f"cannot create {path.name}-shm to read the changes in {path.name}-wal; make "
                "the directory writable, or copy the archive with its -wal file to a "
                "writable directory, then export again")
    if isinstance(exc, apsw.CantOpenError) and not os.access(path, os.R_OK):
        return ArchiveError(f"archive {path} cannot be read: permission denied; fix its "
                            "permissions or run skyexport as a user who can read it")
    if isinstance(exc, apsw.NotADBError):
        return ArchiveError(f"archive {path} is not a SQLite database (or is encrypted); "
                            "pass bskyarchive's archive.db")
    if isinstance(exc, apsw.CorruptError):
        return ArchiveError(f"archive {path} is corrupt{at} ({exc}); restore it from a "
                            "backup or run sqlite3 '.recover' on a copy")
    if isinstance(exc, apsw.BusyError):
        return ArchiveError(f"archive {path} is locked by another process{at} and was not "
                            f"released within {busy_timeout_ms / 1000:g} s; retry when the "
                            "archiver is done")
    if isinstance(exc, apsw.CantOpenError):
        return ArchiveError(f"archive {path} cannot be opened ({exc}); check that it exists "
                            "and is readable")
    return ArchiveError(f"reading archive {path} failed{at}: {exc}")


class ArchiveSource(Source):
    """A bskyarchive archive as the source of an export: the Archive, opened at once (a
    bad archive is reported before anything is created in OUTPUT)."""

    refuses = {
        "collections": "an archive holds posts only; {collections} needs a repository CAR",
        "blobs": "an archive's media files are found through its media table; {blobs} "
                 "needs a repository CAR",
    }

    def __init__(self, path: str | os.PathLike[str], **how: Any) -> None:
        super().__init__(path, **how)
        self.arc = self.open_archive(self.path)

    def layout_did(self, did: str | None, opt: Callable[[str], str]) -> str:
        arc = self.arc
        try:
            if did is None:
                held = arc.conn.execute("SELECT DISTINCT CAST(did AS BLOB) FROM posts "
                                        "LIMIT 2").fetchall()
                if len(held) != 1 or held[0][0] is None:
                    what = ("holds no posts" if not held else
                            "holds posts of several DIDs" if len(held) > 1 else
                            "holds posts without a DID")
                    raise OptionError(f"{opt('layout')} did needs {opt('did')}: archive "
                                      f"{arc.path} {what}; give {opt('did')} DID (`skyexport "
                                      f"info {arc.path}` lists them)")
                raw = held[0][0]
                assert isinstance(raw, bytes)
                try:
                    did = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise OptionError(f"{opt('layout')} did: the archive's DID "
                                      f"{_shown(raw)} is not valid UTF-8, so it cannot name "
                                      f"a directory; use {opt('layout')} time") from None
            elif not arc.conn.execute("SELECT 1 FROM posts WHERE did = ? LIMIT 1",
                                      (did,)).fetchall():
                raise arc.unknown_did(did)
        except apsw.Error as exc:
            raise arc.error(exc, "while reading its DIDs") from None
        return did

    def archive(self, scratch: Path | None, *, selection: Selection, emit: Callable[[], None],
                heartbeat: Callable[[], None], warn: Warn | None = None) -> Archive:
        return self.arc

    def close(self) -> None:
        self.arc.close()


def _shown(value: object) -> str:
    """A stored value for a message: bytes as UTF-8 (escaped where invalid)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "(none)" if value is None else str(value)
