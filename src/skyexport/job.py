"""The export job: a short pump from one archive snapshot to one published directory.

    Selection -> Archive.snapshot -> Snapshot.rows() (a RowSource) -> Writer (the core)
              -> StagedDir/posts.*, media/ per batch, manifest.json -> StagedDir.publish()

Options are checked and turned into a Selection first; the archive is opened (nothing is
created in OUTPUT for a bad archive); the staged directory (staged.py) holds everything
until publish() renames it into place, and removes it on any failure or interruption.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from . import __version__
from ._core import Writer, parse_bound
from ._record import Record
from .archive import Archive, Selection, Snapshot
from .defaults import (
    DATA_FILES,
    DEFAULT_ARCHIVE,
    DEFAULT_BATCH,
    DEFAULT_OUTPUT,
    FORMATS,
    MAX_WARNINGS,
)
from .errors import ArchiveError, BadValueError, OptionError, OutputError, SelectionError
from .manifest import MANIFEST_VERSION, MEDIA_SUMS, sha256_file, write_manifest
from .progress import ExportProgress, ProgressChannel
from .sink import CODECS, DEFAULT_LEVELS, LEVELS, SUFFIXES, CodecMissing, FileSink, compressor
from .staged import (
    StagedDir,
    mark_published,
    open_new,
    output_error,
    prepare_output,
    rmdir_if_empty,
)

# typing is not imported at run time: start-up is part of every export (SC-006).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any, BinaryIO, Literal

    from .car import CarRepo
    from .media import MediaCopier
    from .records import RecordsResult, RecordsWriter

    Format = Literal["json", "csv", "jsonl"]


BATCH_BYTES = 4 << 20      # a batch also ends once it has produced this many bytes


class ExportWarning(Record):
    """Something exported with a caveat (a kept bad value, a missing media file...)."""

    __slots__ = ("uri", "column", "message")
    uri: str
    column: str
    message: str

    def __init__(self, uri: str, column: str, message: str) -> None:
        self._set(uri=uri, column=column, message=message)


class ExportResult(Record):
    """What a finished export produced; everything here is also in `manifest.json`.

    `directory` is the published export directory, `data_file` the posts file in it (both
    None for an export to a stream, which has no directory and no manifest);
    `post_count` posts, `media_count` distinct media files copied; `bytes_written` and
    `sha256` describe the data file as written (compressed, with `compression`);
    `uncompressed_bytes` and `uncompressed_sha256` the posts before compression (equal to
    the former without it); `warnings` holds the first warnings (a kept bad
    value, a missing media file...) and `warnings_total` counts them all; `duration_s`
    is the export's wall time; `manifest` is the manifest as written (None for a stream).
    """

    __slots__ = ("directory", "format", "data_file", "post_count", "media_count",
                 "bytes_written", "sha256", "warnings", "warnings_total", "duration_s",
                 "manifest", "compression", "uncompressed_bytes", "uncompressed_sha256")
    directory: Path | None
    format: str
    data_file: Path | None
    post_count: int
    media_count: int
    bytes_written: int
    sha256: str
    warnings: tuple[ExportWarning, ...]
    warnings_total: int
    duration_s: float
    manifest: dict[str, Any] | None
    compression: str | None
    uncompressed_bytes: int
    uncompressed_sha256: str

    def __init__(self, directory: Path | None, format: str, data_file: Path | None,
                 post_count: int, media_count: int, bytes_written: int, sha256: str,
                 warnings: tuple[ExportWarning, ...], warnings_total: int, duration_s: float,
                 manifest: dict[str, Any] | None, compression: str | None = None,
                 uncompressed_bytes: int | None = None,
                 uncompressed_sha256: str | None = None) -> None:
        self._set(directory=directory, format=format, data_file=data_file,
                  post_count=post_count, media_count=media_count,
                  bytes_written=bytes_written, sha256=sha256, warnings=warnings,
                  warnings_total=warnings_total, duration_s=duration_s, manifest=manifest,
                  compression=compression,
                  uncompressed_bytes=(bytes_written if uncompressed_bytes is None
                                      else uncompressed_bytes),
                  uncompressed_sha256=(sha256 if uncompressed_sha256 is None
                                       else uncompressed_sha256))

    @property
    def checksums(self) -> dict[str, dict[str, Any]]:
        """`{file name: {"sha256": hex, "bytes": n}}` for the data file and, with media,
        `media.sha256` (which holds the SHA-256 of every media file); empty for a
        stream."""
        if self.manifest is None:
            return {}
        return self.manifest["checksums"]  # type: ignore[no-any-return]


def export(
    archive: str | os.PathLike[str] = DEFAULT_ARCHIVE,
    output: str | os.PathLike[str] | int | BinaryIO = DEFAULT_OUTPUT,
    *,
    format: Format = "json",
    did: str | None = None,
    since: str | _dt.date | None = None,
    until: str | _dt.date | None = None,
    media: bool = False,
    media_root: str | os.PathLike[str] | None = None,
    media_any_path: bool = False,
    media_link: Literal["copy", "hardlink"] = "copy",
    batch_size: int = DEFAULT_BATCH,
    on_bad_value: Literal["error", "keep"] = "error",
    on_progress: Callable[[ExportProgress], object] | None = None,
    csv_formula_guard: bool = False,
    bom: bool = True,
    compress: Literal["gzip", "zstd"] | None = None,
    compress_level: int | None = None,
    layout: Literal["time", "did"] = "time",
    collections: str | None = None,
    blobs: str | os.PathLike[str] | None = None,
    _option: Callable[[str], str] | None = None,
    _flush_size: int | None = None,
    _row_source: str | None = None,
    _busy_timeout_ms: int | None = None,
) -> ExportResult:
    """Export the posts of `archive` into a new directory `output/YYYY-MM-DD_HH-MM-SS/`.

    `archive` may also be a Bluesky repository export (`repo.car`, recognised by its
    content): its posts are imported into a temporary archive inside the export's hidden
    directory first (docs/CAR.md); `media=True` is then an OptionError, and so are a
    stream `output` and `layout="did"` without `did` (not supported with a CAR yet).

    The same job as `skyexport export`: `format` is "json", "csv" or "jsonl"; `did`,
    `since` and `until` (YYYY-MM-DD or RFC 3339 text, or a `datetime.date`, or a
    `datetime.datetime`: naive means UTC) select posts; a `did` the archive holds no post of
    raises SelectionError; `media=True` copies the
    posts' media files into `media/` (relative paths resolve against `media_root`, default
    the current directory, then the archive's directory and its parent; a file that does
    not resolve under one of those is skipped with a warning unless `media_any_path`;
    `media_link="hardlink"` links instead of copying); `on_bad_value`
    is "error" (stop) or "keep" (export as text, listed in the warnings).
    `csv_formula_guard` prefixes `'` to CSV text fields that a spreadsheet would run as a
    formula (off by default: the default output is byte-exact with bskyarchive).
    `bom=False` leaves out the UTF-8 byte-order mark that begins posts.csv (there for
    Excel; every other CSV reader takes it for part of the first column's name).  Both are
    for format="csv" only: with another format they are an OptionError.
    `_flush_size` (private, for tests) is how many encoded bytes the writer gathers before
    handing them to the data file (default 1 MiB): a tiny one makes every row, and every
    large value mid-row, cross a flush.  `_row_source` ("pipe", "direct" or "cursor") and
    `_busy_timeout_ms` (private; the CLI passes SKYEXPORT_ROW_SOURCE and
    SKYEXPORT_BUSY_TIMEOUT_MS) choose how rows are read and how long a lock is waited for.

    `output` may also be a stream: an int file descriptor or a binary file object (one
    with a fileno() is flushed, then written through its descriptor; others get write()
    calls from the writer thread).  Only the data file's bytes go there: no directory,
    manifest or media (`media=True` is an OptionError); the result's `directory`,
    `data_file` and `manifest` are None.  Bytes written before a failure stay written.
    `compress` ("gzip" or "zstd", at `compress_level`: gzip 1-9, default 6; zstd 1-22,
    default 3) compresses the data file: posts.json.gz / posts.json.zst, or a compressed
    stream.  `layout="did"` puts the export in `output/<did>/YYYY-MM-DD_HH-MM-SS/`
    (bskyarchive's current layout): the `did` given, or the one DID that owns every post.

    `on_progress` is called with an ExportProgress after every batch and at least every
    second, on a thread of its own: a slow callback sees fewer events but never slows the
    export.  The last call, before `export` returns or raises, has status "completed" or
    "failed".  A callback that raises is not called again (a RuntimeWarning says why).

    Returns an ExportResult.  Raises an ExportError subclass with a one-line message, and
    then nothing was published: OptionError (a bad option), ArchiveError (the archive is
    missing, not SQLite, not bskyarchive's, corrupt or locked), BadValueError (a stored
    value that cannot be exported under on_bad_value="error"), OutputError (`output` is
    unusable, the disk is full...).

    Example::

        >>> import skyexport
        >>> def show(p: skyexport.ExportProgress) -> None:
        ...     print(f"{p.status}: {p.posts_processed}/{p.posts_total} posts")
        >>> result = skyexport.export("data/archive.db", "exports", format="json",
        ...                           media=True, since="2024-01-01", on_progress=show)
        queued: 0/0 posts
        running: 1000/2345 posts
        running: 2000/2345 posts
        running: 2345/2345 posts
        completed: 2345/2345 posts
        >>> result.post_count, result.media_count, result.warnings_total
        (2345, 412, 3)
        >>> result.data_file.name, len(result.sha256), result.manifest["post_count"]
        ('posts.json', 64, 2345)
        >>> skyexport.verify(result.directory).ok
        True
    """
    # Options are named as the caller wrote them: `since=` here, `--since` from the CLI.
    opt = _option or _api_option
    if format not in FORMATS:
        raise OptionError(f"{opt('format')} {format!r} is not a format; choose one of "
                          f"{', '.join(FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"{opt('batch_size')} must be a positive integer, not "
                          f"{batch_size!r}")
    if on_bad_value not in ("error", "keep"):
        raise OptionError(f"{opt('on_bad_value')} must be 'error' or 'keep', not "
                          f"{on_bad_value!r}")
    if did is not None and not isinstance(did, str):
        raise OptionError(f"{opt('did')} must be a str, not {type(did).__name__}")
    bounds = []
    texts = []
    for name, value, end in (("since", since, False), ("until", until, True)):
        text = _bound_text(opt(name), value)
        texts.append(text)
        try:
            bounds.append(parse_bound(text, end) if text is not None else None)
        except ValueError as exc:
            raise OptionError(f"{opt(name)} {exc}") from None
    lo, hi = bounds
    since, until = texts
    if lo is not None and hi is not None and lo > hi:
        raise OptionError(f"{opt('since')} {since} is after {opt('until')} {until}")
    if _flush_size is not None and (isinstance(_flush_size, bool)
                                    or not isinstance(_flush_size, int) or _flush_size < 1):
        raise OptionError(f"_flush_size= must be a positive integer, not {_flush_size!r}")
    if media_link not in ("copy", "hardlink"):
        raise OptionError(f"{opt('media_link')} must be 'copy' or 'hardlink', not "
                          f"{media_link!r}")
    if media and media_root is not None and not os.path.isdir(media_root):
        raise OptionError(f"{opt('media_root')} {os.fspath(media_root)} is not a directory")
    if compress is not None and compress not in CODECS:
        raise OptionError(f"{opt('compress')} must be one of {', '.join(CODECS)}, not "
                          f"{compress!r}")
    if compress_level is not None:
        low, high = LEVELS.get(compress or "", (0, 0))
        if compress is None:
            raise OptionError(f"{opt('compress_level')} needs {opt('compress')}")
        if isinstance(compress_level, bool) or not isinstance(compress_level, int) \
                or not low <= compress_level <= high:
            raise OptionError(f"{opt('compress_level')} for {compress} must be an integer "
                              f"{low}..{high}, not {compress_level!r}")
    if layout not in ("time", "did"):
        raise OptionError(f"{opt('layout')} must be 'time' or 'did', not {layout!r}")
    for flag, on, default in (("csv_formula_guard", csv_formula_guard, False),
                              ("bom", bom, True)):
        if not isinstance(on, bool):
            raise OptionError(f"{opt(flag)} must be True or False, not {on!r}")
        if on != default and format != "csv":
            raise OptionError(f"{opt(flag)} applies to CSV only, not to {opt('format')} "
                              f"{format}; leave it out or export CSV")
    stream = _stream_target(output)
    if stream is not None:
        shown = "-" if _option is not None else repr(output)
        if media:
            raise OptionError(f"{opt('media')} cannot be used with {opt('output')} {shown}: "
                              "a stream holds the data file only; export to a directory "
                              "for media")
        if layout != "time":
            raise OptionError(f"{opt('layout')} {layout} cannot be used with "
                              f"{opt('output')} {shown}: a stream has no directory")
    try:
        compressor(compress)
    except CodecMissing as exc:
        raise OptionError(f"{opt('compress')} {exc}") from None

    def open_archive(path: str | os.PathLike[str]) -> Archive:
        # Without --media nothing else uses the connection while the pipe steps it.
        return Archive(path, row_source=_row_source, busy_timeout_ms=_busy_timeout_ms,
                       nomutex=not media)

    car = _car_source(archive)
    wanted: frozenset[str] | None = None
    if collections is not None:
        if car is None:
            raise OptionError(f"{opt('collections')} needs a repository CAR (an archive "
                              "holds posts only)")
        if stream is not None:
            raise OptionError(f"{opt('collections')} writes records/ files: export to a "
                              "directory, not a stream")
        from .records import parse_collections

        try:
            wanted = parse_collections(collections)
        except ValueError as exc:
            raise OptionError(str(exc).replace("--collections", opt("collections"))) from None
    if blobs is not None:
        if car is None:
            raise OptionError(f"{opt('blobs')} needs a repository CAR: an archive's media "
                              "files are found through its media table")
        if not media:
            raise OptionError(f"{opt('blobs')} needs {opt('media')} (the blobs are copied "
                              "into media/)")
        if not os.path.isdir(blobs):
            raise OptionError(f"{opt('blobs')} {os.fspath(blobs)!r} is not a directory")
    if car is not None:
        if media and blobs is None:
            raise OptionError(f"{opt('media')} with {car}: a repository CAR holds blob "
                              f"references, not the files; give {opt('blobs')} DIR (the "
                              f"blobs, named by their CID), or leave {opt('media')} out")
        if layout == "did" and did is None:
            from .car import car_did

            did = car_did(car)   # the repository's own DID, from its commit
        if layout == "did" and did is not None and (did in ("", ".", "..")
                                                    or did.startswith(".") or "/" in did
                                                    or "\0" in did):
            raise OptionError(f"{opt('layout')} did: DID {did!r} cannot be a directory "
                              f"name; use {opt('layout')} time")
    job: _Job | None = None
    try:
        with (open_archive(archive) if car is None else _NoArchive()) as arc:
            if layout == "did" and car is None:
                did = _layout_did(arc, did, opt)
            selection = Selection(did, lo, hi)
            mroot = Path(media_root) if media_root is not None else None
            if stream is not None:
                job = _Job(arc, None, format, selection, False, None, batch_size,
                           on_bad_value, on_progress, csv_formula_guard, bom=bom,
                           stream=stream, compress=compress, compress_level=compress_level,
                           flush_size=_flush_size, car=car, open_archive=open_archive)
                return job.run()
            base = Path(output)  # type: ignore[arg-type]
            if layout == "did":
                assert did is not None
                created_base = not base.exists()
                target = base / did
            else:
                created_base, target = False, base
            out, created = prepare_output(target)
            job = _Job(arc, out, format, selection, media, mroot, batch_size,
                       on_bad_value, on_progress, csv_formula_guard, bom=bom,
                       media_any_path=media_any_path, media_link=media_link,
                       compress=compress, compress_level=compress_level, flush_size=_flush_size,
                       car=car, open_archive=open_archive,
                       collections=(collections is not None, wanted),
                       blobs=Path(blobs) if blobs is not None else None)
            try:
                return job.run()
            except BaseException:
                if created:
                    rmdir_if_empty(out)
                    if created_base:
                        rmdir_if_empty(base)
                raise
    except BaseException as exc:
        if job is not None:
            job.mark(exc)  # a signal after the end (closing the archive): say so
        raise


# --- a repository CAR as the source (CAR.md) --------------------------------------------
# The CAR's posts are imported into a temporary archive in the export's hidden directory
# (CAR_DIR, removed before publishing); from then on it is the ordinary archive export.

CAR_DIR = ".car"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class _NoArchive:
    """Stands in for the Archive until the CAR has been imported (_Job._open_car)."""

    def __enter__(self) -> Any:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


def _car_source(archive: str | os.PathLike[str]) -> Path | None:
    """`archive` as a Path when it is a repository CAR by content, else None (SQLite files
    and anything unreadable go the archive way, which reports them)."""
    from ._platform import O_CLOEXEC, O_NONBLOCK

    try:  # without blocking: a FIFO never hangs the open (the archive check refuses it)
        fd = os.open(archive, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        magic = os.read(fd, len(_SQLITE_MAGIC))
    except OSError:
        return None
    finally:
        os.close(fd)
    if magic == _SQLITE_MAGIC or not magic:
        return None
    from .car import is_car

    return Path(archive) if is_car(archive) else None


def _stream_target(output: object) -> int | BinaryIO | None:
    """The descriptor or file object an export streams to, or None for a directory."""
    if isinstance(output, bool):
        raise OptionError(f"output must be a directory, a file descriptor or a binary file, "
                          f"not {output!r}")
    if isinstance(output, int):
        return output
    if isinstance(output, (str, os.PathLike)):
        return None
    if not callable(getattr(output, "write", None)):
        raise OptionError(f"output must be a directory, a file descriptor or a binary file, "
                          f"not {type(output).__name__}")
    flush = getattr(output, "flush", None)
    if callable(flush):
        flush()
    try:
        return int(output.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return output  # type: ignore[return-value]


def _layout_did(arc: Archive, did: str | None, opt: Callable[[str], str]) -> str:
    """The DID that names OUTPUT/<did>/: `did`, or the only DID the archive's posts have.
    Checked before anything is created in OUTPUT."""
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
                                  f"{_shown(raw)} is not valid UTF-8, so it cannot name a "
                                  f"directory; use {opt('layout')} time") from None
        elif not arc.conn.execute("SELECT 1 FROM posts WHERE did = ? LIMIT 1",
                                  (did,)).fetchall():
            raise _unknown_did(arc, did)
    except apsw.Error as exc:
        raise arc.error(exc, "while reading its DIDs") from None
    if did in ("", ".", "..") or did.startswith(".") or "/" in did or "\0" in did:
        raise OptionError(f"{opt('layout')} did: DID {did!r} cannot be a directory name; "
                          f"use {opt('layout')} time")
    return did


def _shown(value: object) -> str:
    """A stored value for a message: bytes as UTF-8 (escaped where invalid)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "(none)" if value is None else str(value)


def _api_option(name: str) -> str:
    return f"{name}="


def _value_shown(value: bytes | float | None) -> str:
    """A stored value as a message shows it: decoded, at most 80 characters."""
    shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _bound_text(option: str, value: object) -> str | None:
    """--since/--until as text: a str as given, a date as YYYY-MM-DD, a datetime in RFC
    3339 (naive: UTC, as a zone-less text bound is)."""
    if value is None or isinstance(value, str):
        return value
    import datetime as _dt  # only for the API's date objects: not at every start-up

    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    raise OptionError(f"{option} must be a str, datetime.date or datetime.datetime, not "
                      f"{type(value).__name__}")


class _Job:
    """One export: run() pumps the snapshot's rows through the writer into a staged
    directory, copies media per batch, writes the manifest and publishes."""

    def __init__(self, arc: Archive, out: Path | None, fmt: str, selection: Selection,
                 media: bool, media_root: Path | None, batch_size: int, on_bad_value: str,
                 on_progress: Callable[[ExportProgress], object] | None,
                 formula_guard: bool, *, bom: bool = True, media_any_path: bool = False,
                 media_link: str = "copy", stream: int | BinaryIO | None = None,
                 compress: str | None = None, compress_level: int | None = None,
                 flush_size: int | None = None, car: Path | None = None,
                 open_archive: Callable[[Path], Archive] | None = None,
                 collections: tuple[bool, frozenset[str] | None] = (False, None),
                 blobs: Path | None = None) -> None:
        self.arc, self.out, self.fmt, self.selection = arc, out, fmt, selection
        self.flush_size = flush_size
        self.car = car  # the source, when it is a CAR
        self.open_archive = open_archive or Archive
        self.car_source: dict[str, Any] | None = None
        self.car_blocks = self.car_bytes = 0        # read of it so far (progress)
        self.collections = collections  # (records asked for, the NSIDs or None: all)
        self.records: RecordsResult | None = None
        self.blobs = blobs              # a CAR's blobs directory (media from blobs)
        self.no_media_rows = 0          # exported posts with has_media and no media rows
        self.stream = stream
        self.compress = compress
        self.compress_level = (DEFAULT_LEVELS[compress] if compress and compress_level is None
                               else compress_level)
        self.data_name = DATA_FILES[fmt] + (SUFFIXES[compress] if compress else "")
        self.media, self.media_root, self.batch_size = media, media_root, batch_size
        self.keep_bad = on_bad_value == "keep"
        self.formula_guard = formula_guard
        self.bom = bom
        self.media_any_path, self.media_link = media_any_path, media_link
        self.start = time.monotonic()
        self.phase = "queued"  # "running" once the totals are counted
        self.posts_total = self.media_total = 0
        self.writer: Writer | None = None
        self.copier: MediaCopier | None = None
        self.warnings: list[ExportWarning] = []
        self.warnings_total = 0
        self.channel = (ProgressChannel(on_progress, self.snapshot)
                        if on_progress is not None else None)
        self.staged: StagedDir | None = None
        self.streamed: ExportResult | None = None  # the stream's result, once complete

    # --- progress -----------------------------------------------------------------------

    def snapshot(self, status: str | None = None, error: str | None = None) -> ExportProgress:
        """The job's state as an event (also called from the progress delivery thread)."""
        w, c = self.writer, self.copier
        return ExportProgress(
            status=status or self.phase,  # type: ignore[arg-type]
            posts_processed=w.rows if w else 0, posts_total=self.posts_total,
            media_copied=c.seen if c else 0, media_total=self.media_total,
            bytes_written=(w.bytes_written + w.pending) if w else 0,
            elapsed_s=time.monotonic() - self.start, error=error,
            car_blocks=self.car_blocks, car_bytes=self.car_bytes)

    def emit(self, status: str | None = None, error: str | None = None) -> None:
        if self.channel is not None:
            self.channel.put(self.snapshot(status, error))

    def heartbeat(self) -> None:
        """Called from inside long SQLite steps and per media file: an event if none went
        out for HEARTBEAT_S (the delivery thread does the same for one long call)."""
        ch = self.channel
        if ch is not None and ch.idle_for() >= ch.heartbeat_s:
            self.emit()

    def warn(self, uri: str, column: str, message: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(ExportWarning(uri, column, message))

    def on_bad(self, uri: bytes, column: str, value: bytes | float | None) -> None:
        """The writer core's bad-value callback: raise, or record a warning and keep."""
        u = uri.decode("utf-8", "replace")
        shown = _value_shown(value)
        if not self.keep_bad:
            raise BadValueError(u, column, shown)
        self.warn(u, column, f"{column} {shown!r} could not be read; exported as text")

    def on_unreadable_date(self, uri: bytes, value: bytes) -> None:
        """The writer left out a post whose created_at cannot be read (a date filter the
        SQL left out: Snapshot.drop_unreadable): one post fewer selected, and said."""
        self.posts_total -= 1
        self.warn(uri.decode("utf-8", "replace"), "created_at",
                  f"created_at {_value_shown(value)!r} cannot be read; left out by the date filter")

    def mark(self, exc: BaseException) -> None:
        """Attach to an exception (a signal) that came after the export was complete what
        it had done: the published directory, or the stream's bytes and SHA-256."""
        mark_published(exc, self.staged.published if self.staged else None)
        streamed = self.streamed
        if streamed is not None:
            try:
                exc.stream_bytes = streamed.bytes_written  # type: ignore[attr-defined]
                exc.stream_sha256 = streamed.sha256  # type: ignore[attr-defined]
            except AttributeError:
                pass

    # --- the pump -----------------------------------------------------------------------

    def run(self) -> ExportResult:
        try:
            self.emit("queued")
            if self.stream is not None and self.car is not None:
                with _car_scratch(self.car) as scratch:
                    self._open_car(Path(scratch))
                    result = self._export_stream(self.stream)
                    self.arc.close()
                self.streamed = result
            elif self.stream is not None:
                result = self._export_stream(self.stream)
                self.streamed = result
            else:
                assert self.out is not None
                with StagedDir(self.out) as staged:
                    self.staged = staged
                    if self.car is not None:
                        assert staged.path is not None
                        self._open_car(staged.path)
                    result = self._export(staged)
            self.emit("completed")
            return result
        except BaseException as exc:
            if (self.staged is not None and self.staged.is_published()) \
                    or self.streamed is not None:
                # Complete (and visible): a signal after the rename, or after the last
                # byte went out, does not undo the export.
                self.mark(exc)
                self.emit("completed")
                raise
            self.emit("failed", error=_one_line(exc))
            raise
        finally:
            if self.car is not None and self.arc is not None:
                self.arc.close()
            if self.channel is not None:
                try:
                    self.channel.close()  # the final event is delivered before we return
                except BaseException as exc:
                    self.mark(exc)
                    raise

    def _export(self, staged: StagedDir) -> ExportResult:
        arc, tmp = self.arc, staged.path
        assert tmp is not None
        if self.channel is not None:
            arc.set_heartbeat(self.heartbeat)  # counting can take seconds too
        snap = self._totals()
        self.phase = "running"  # the first event with the totals is the first batch's
        data_path = tmp / self.data_name
        fd = open_new(data_path)
        try:
            sink = FileSink(fd, codec=self.compress, level=self.compress_level)
            try:
                self._pump(snap, tmp, sink)
                sink.close()
                if self.copier is not None:
                    self.copier.finish()
            except OutputError:
                raise  # already says what and where (OutputError is an OSError)
            except OSError as exc:
                raise output_error(exc, data_path) from None
            finally:
                sink.abort()
                if self.copier is not None:
                    self.copier.close()
        finally:
            os.close(fd)
        writer = self.writer
        assert writer is not None
        if writer.rows != self.posts_total:
            # One snapshot makes this impossible; if it ever happens, do not publish.
            raise ArchiveError(f"archive {arc.path}: counted {self.posts_total} posts but "
                               f"read {writer.rows}; nothing was exported")
        if self.copier is not None:
            for uri, message in self.copier.warnings:
                self.warn(uri, "media", message)
            self.warnings_total += self.copier.warnings_total - len(self.copier.warnings)
        digest = sink.sha256.hexdigest()
        raw_digest = sink.raw_sha256.hexdigest()
        assert sink.raw_bytes == writer.bytes_written
        data_sum: dict[str, Any] = {"sha256": digest, "bytes": sink.written}
        if self.compress is not None:
            data_sum.update({"uncompressed_sha256": raw_digest,
                             "uncompressed_bytes": sink.raw_bytes})
        checksums = {self.data_name: data_sum}
        if self.copier is not None:
            digest_sums, size_sums = sha256_file(tmp / MEDIA_SUMS)
            checksums[MEDIA_SUMS] = {"sha256": digest_sums, "bytes": size_sums}
        if self.car is not None:
            self._drop_car(tmp)
        duration = time.monotonic() - self.start
        manifest = self._manifest(checksums, duration)
        try:
            write_manifest(tmp, manifest)
        except OSError as exc:
            raise output_error(exc, tmp) from None
        final = staged.publish()
        return ExportResult(
            directory=final, format=self.fmt, data_file=final / self.data_name,
            post_count=writer.rows, media_count=self.copier.copied if self.copier else 0,
            bytes_written=sink.written, sha256=digest,
            warnings=tuple(self.warnings), warnings_total=self.warnings_total,
            duration_s=duration, manifest=manifest, compression=self.compress,
            uncompressed_bytes=sink.raw_bytes, uncompressed_sha256=raw_digest)

    def _export_stream(self, stream: int | BinaryIO) -> ExportResult:
        """The data file's bytes to a descriptor or file object: no directory, manifest or
        media.  What was written before a failure stays written (the exception carries
        its count as `stream_bytes`)."""
        snap = self._totals()
        self.phase = "running"
        regular = False
        if isinstance(stream, int):
            try:
                regular = stat.S_ISREG(os.fstat(stream).st_mode)
            except OSError as exc:
                raise OutputError(f"output file descriptor {stream} cannot be used: "
                                  f"{exc.strerror}; give a directory or an open "
                                  "descriptor") from None
        # A pipe cannot be fsync'd; a file stdout was redirected to can.
        sink = FileSink(stream, sync=regular, codec=self.compress, level=self.compress_level)
        try:
            self._pump(snap, None, sink)
            sink.close()
        except BaseException as exc:
            sink.abort()
            if not hasattr(exc, "stream_bytes"):
                try:
                    exc.stream_bytes = sink.written  # type: ignore[attr-defined]
                except AttributeError:
                    pass
            if isinstance(exc, OSError) and not isinstance(exc, (OutputError,
                                                                 BrokenPipeError)):
                err = _stream_error(exc, stream)
                err.stream_bytes = sink.written  # type: ignore[attr-defined]
                raise err from None
            raise
        writer = self.writer
        assert writer is not None
        if writer.rows != self.posts_total:
            raise ArchiveError(f"archive {self.arc.path}: counted {self.posts_total} posts "
                               f"but read {writer.rows}; the output is incomplete")
        return ExportResult(
            directory=None, format=self.fmt, data_file=None, post_count=writer.rows,
            media_count=0, bytes_written=sink.written, sha256=sink.sha256.hexdigest(),
            warnings=tuple(self.warnings), warnings_total=self.warnings_total,
            duration_s=time.monotonic() - self.start, manifest=None,
            compression=self.compress, uncompressed_bytes=sink.raw_bytes,
            uncompressed_sha256=sink.raw_sha256.hexdigest())

    def _totals(self) -> Snapshot:
        """Open the snapshot; count what it selects; warn about the dates it cannot read."""
        arc, sel = self.arc, self.selection
        try:
            snap = arc.snapshot(sel)
            if sel.did is not None and not snap.did_posts:
                raise _unknown_did(arc, sel.did)
            self.posts_total = snap.posts_total
            if self.media:
                self.media_total = snap.media_total()
            if sel.dated:
                bad, total = snap.bad_created_at(MAX_WARNINGS)
                for uri, value in bad:
                    self.warn(uri, "created_at", f"created_at {value!r} cannot be read; "
                              "left out by the date filter")
                self.warnings_total += total - len(bad)
        except apsw.Error as exc:
            raise arc.error(exc, "while counting posts") from None
        return snap

    def _pump(self, snap: Snapshot, tmp: Path | None, sink: FileSink) -> None:
        """The batch loop: encode up to batch_size rows, copy their media, report."""
        arc = self.arc
        sizing = {} if self.flush_size is None else {"flush_size": self.flush_size}
        self.writer = writer = Writer(
            sink, self.fmt, on_bad=self.on_bad, collect_media=self.media,
            formula_guard=self.formula_guard, bom=self.bom,
            on_unreadable_date=self.on_unreadable_date if snap.drop_unreadable else None,
            **sizing)
        stream = None
        if self.media:
            home = Path(os.path.abspath(arc.path)).parent  # `a.db`: its parent is not `.`
            roots = [self.media_root or Path.cwd(), home, home.parent]
            if self.blobs is not None:  # a CAR's media: only in the blobs directory
                roots = [self.blobs]
            from .media import MediaCopier, MediaStream  # only with --media

            assert tmp is not None
            self.copier = MediaCopier(tmp / "media", roots, tmp / MEDIA_SUMS,
                                      any_path=self.media_any_path and self.blobs is None,
                                      link=self.media_link,
                                      check_cid=self.blobs is not None)
            if arc.has_media_table:
                try:
                    stream = MediaStream(snap.media_rows())
                except apsw.Error as exc:
                    raise arc.error(exc, "while reading the media table") \
                        from None
        rows = snap.rows()
        batch = 0
        while not writer.exhausted:
            first = writer.rows + 1
            batch += 1
            try:
                if not writer.encode(rows, self.batch_size, BATCH_BYTES):
                    break  # the end, found on a batch boundary: nothing to report
                if stream is not None:
                    assert self.copier is not None
                    try:
                        self.copier.copy_rows(stream.rows_for(writer.take_media_posts()),
                                              self.heartbeat)
                    except OSError as exc:  # disk full, file size limit: name media/
                        raise output_error(exc, Path(self.copier.media_dir)) from None
                elif self.media:
                    self.no_media_rows += len(writer.take_media_posts())
            except apsw.Error as exc:
                raise arc.error(exc, f"in batch {batch} (posts {first}.."
                                    f"{first + self.batch_size - 1})") from None
            self.emit("running")
        if stream is not None:
            self.no_media_rows += stream.without_rows
        if self.no_media_rows:
            self.warn("", "media", f"{self.no_media_rows} exported post(s) have has_media but "
                      "no rows in the archive's media table: their media files are not "
                      "known, so none was exported for them")
        if stream is not None and (left := stream.leftover()):
            # One rule decides has_media on both sides (skyexport_true), so this cannot
            # happen; were it ever to, it is said, never silent.
            self.warn("", "media", f"{left} media row(s) matched no exported post with "
                      "has_media and were not copied")
        arc.set_heartbeat(None)
        writer.finish()

    def _manifest(self, checksums: dict[str, dict[str, Any]], duration: float) -> dict[str, Any]:
        w = self.writer
        assert w is not None
        files = [self.data_name]
        if self.copier is not None:
            files.append(f"media/ ({self.copier.copied} files)")
        m: dict[str, Any] = {
            "export_format": self.fmt,
            "export_timestamp": _local_rfc3339(time.time()),
            "post_count": w.rows,
            "media_count": self.copier.copied if self.copier else 0,
        }
        sel = self.selection
        if sel.dated:
            m["date_range"] = {"start_date": _rfc3339(sel.since),
                               "end_date": _rfc3339(sel.until)}
        m.update({
            "version": MANIFEST_VERSION,
            "files": files,
            "generator": f"skyexport {__version__}",
            "source_archive": str((self.car or self.arc.path).resolve()),
            "schema_version": self.arc.schema_version,
            "did": sel.did,
            "batch_size": self.batch_size,
            "csv_formula_guard": self.formula_guard,
            **({"csv_bom": self.bom} if self.fmt == "csv" else {}),
            **({"compression": self.compress,
                "compression_level": self.compress_level} if self.compress else {}),
            "duration_s": round(duration, 3),
            "checksums": checksums,
            "warnings": [{"uri": x.uri, "column": x.column, "message": x.message}
                         for x in self.warnings],
            "warnings_total": self.warnings_total,
        })
        if self.copier is not None:
            m["media_rows"] = self.media_total
        if self.car_source is not None:
            m["source_car"] = self.car_source
        if self.records is not None:
            m["records"] = {f.name: {"sha256": f.sha256, "bytes": f.size, "records": f.records}
                            for f in self.records.files}
            files += [f.name for f in self.records.files]
        return m

    # --- a CAR as the source --------------------------------------------------------------

    def _open_car(self, tmp: Path) -> None:
        """Import the CAR into tmp/.car/archive.db and export from that archive."""
        from .car import CarRepo, build_archive_from
        from .records import RECORDS_DIR, RecordsWriteError

        assert self.car is not None
        d = tmp / CAR_DIR
        d.mkdir()

        def on_blocks(blocks: int, offset: int) -> None:
            self.car_blocks, self.car_bytes = blocks, offset
            self.heartbeat()

        try:
            with CarRepo(self.car, d, on_blocks, verb="exported") as repo:
                self.emit()  # the whole CAR read and indexed
                writer = self._records_writer(repo, tmp) if self.collections[0] else None
                if writer is not None:
                    repo.tap = writer.tap
                try:
                    build_archive_from(repo, d / "archive.db", scratch=True,
                                       on_chunk=self.heartbeat,
                                       did_index=self.selection.did is not None)
                except RecordsWriteError as exc:
                    raise output_error(exc.error, tmp / RECORDS_DIR) from None
                except BaseException:
                    if writer is not None:
                        writer.abort()
                    raise
                finally:
                    repo.tap = None
                if writer is not None:
                    self._records_done(writer, repo.did, tmp)
                if self.blobs is not None:
                    self._fill_blobs(d / "archive.db")
                self.car_source = {"sha256": repo.sha256, "rev": repo.rev, "did": repo.did,
                                   "commit_version": repo.version, "bytes": repo.size}
        except OSError as exc:
            raise output_error(exc, d) from None
        self.arc = self.open_archive(d / "archive.db")

    def _fill_blobs(self, archive: Path) -> None:
        """The temporary archive's media table, from the blobs directory (each file's
        bytes are checked against its CID as media/ gets them)."""
        from .blobs import BlobDir, fill_media

        assert self.blobs is not None
        con = apsw.Connection(str(archive))
        try:
            fill_media(con, BlobDir(self.blobs), verify=False, relative_to=None,
                       warn=lambda uri, msg: self.warn(uri, "media", msg))
        finally:
            con.close()

    def _records_writer(self, repo: CarRepo, tmp: Path) -> RecordsWriter:
        """records/NSID.EXT of the collections asked for (docs/CAR.md), written by the
        walk that imports the posts (repo.tap)."""
        from .records import RECORDS_DIR, RecordsWriter

        try:
            return RecordsWriter(tmp, repo.did, self.fmt, self.collections[1],
                                 keep_bad=self.keep_bad, bom=self.bom,
                                 on_chunk=self.heartbeat)
        except OSError as exc:
            raise output_error(exc, tmp / RECORDS_DIR) from None

    def _records_done(self, writer: RecordsWriter, did: str, tmp: Path) -> None:
        from .records import RECORDS_DIR

        try:
            self.records = writer.finish()
        except OSError as exc:
            raise output_error(exc, tmp / RECORDS_DIR) from None
        for key, cid, what in self.records.bad:
            self.warn(f"at://{did}/{key}", "record",
                      f"record {cid} left out: {what}; not valid atproto data")
        self.warnings_total += self.records.bad_total - len(self.records.bad)

    def _drop_car(self, tmp: Path) -> None:
        """The temporary archive is not part of the export: gone before publishing."""
        import shutil

        self.arc.close()
        shutil.rmtree(tmp / CAR_DIR, ignore_errors=True)


# --- small helpers ----------------------------------------------------------------------

def _car_scratch(car: Path) -> Any:
    """A temporary directory for a streamed CAR export's block index and posts archive:
    beside the CAR when that directory is writable (as `info` does), else the system's."""
    import tempfile

    home = car.resolve().parent
    where = home if os.access(home, os.W_OK | os.X_OK) else None
    return tempfile.TemporaryDirectory(prefix=".skyexport-car-", dir=where)


def _unknown_did(arc: Archive, did: str) -> SelectionError:
    """A DID the archive holds no post of is a mistake (a typo, another account),
    not an empty export: say which DIDs it does hold."""
    held = arc.did_counts(limit=6)
    if not held:
        listed = "it holds no posts at all"
    else:
        shown = ", ".join(f"{_shown(d)} ({n} posts)" for d, n in held[:5])
        listed = f"it holds {shown}{', ...' if len(held) > 5 else ''}"
    return SelectionError(f"archive {arc.path} holds no post of DID {did}; {listed}; "
                          f"`skyexport info {arc.path}` lists them all")


def _stream_error(exc: OSError, stream: object) -> OutputError:
    """A write to the output stream failed (not a closed pipe: that is BrokenPipeError)."""
    where = ("stdout" if stream == 1 else f"file descriptor {stream}"
             if isinstance(stream, int) else "the output stream")
    err = OutputError(f"writing to {where} failed: {exc.strerror or exc}; the bytes "
                      "already written are an incomplete export: discard them")
    err.errno = exc.errno
    return err


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit):
        return f"terminated (exit {exc.code})"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _rfc3339(bound: tuple[int, int] | None) -> str | None:
    """A --since/--until instant as RFC 3339 in UTC (years 0000-9999)."""
    if bound is None:
        return None
    t = time.gmtime(bound[0])
    frac = f".{bound[1]:09d}".rstrip("0") if bound[1] else ""
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:"
            f"{t.tm_min:02d}:{t.tm_sec:02d}{frac}Z")


def _local_rfc3339(when: float) -> str:
    """Local time with its offset, to the second: `2024-06-01T10:00:00+02:00`."""
    t = time.localtime(when)
    off = t.tm_gmtoff or 0
    sign = "-" if off < 0 else "+"
    off = abs(off)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", t)
            + f"{sign}{off // 3600:02d}:{off // 60 % 60:02d}")


