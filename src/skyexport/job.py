"""The export job: archive in, a complete export directory out, or nothing at all.

    Archive (one snapshot) -> Writer (compiled core) -> OUTPUT/.skyexport-tmp-*/posts.*
                           -> media/ per batch      -> manifest.json -> rename into place

Everything is built in a hidden temporary directory inside OUTPUT that holds a lock
(flock) while its process lives; it is renamed to `YYYY-MM-DD_HH-MM-SS[-N]` only when
complete, and removed on any failure or interruption.  Temporary directories left by a
killed process (lock free) are removed by the next export into the same OUTPUT.

The lock protocol (no instant in which a live export's directory looks stale): the owner
creates the directory, flocks the directory itself, and only then creates `.lock` (and
flocks that too, for cleaners of earlier versions).  A cleaner removes a directory only if
its lock is free and then either `.lock` exists and its lock is free too, or there is no
`.lock` and the directory is older than STALE_UNLOCKED_S (its owner died between mkdir and
flock).

An interruption after the final rename does not unpublish anything: the exception carries
the published directory as `published_directory`, so that the caller can say so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from . import __version__
from ._core import RowPipe, Statement, Writer, parse_bound, rename_noreplace
from ._record import Record
from .archive import Archive, archive_error
from .errors import ArchiveError, BadValueError, OptionError, OutputError
from .manifest import MANIFEST_VERSION, MEDIA_SUMS, sha256_file, write_manifest
from .progress import ExportProgress, ProgressChannel
from .sink import FileSink

# typing is not imported at run time: start-up is part of every export (SC-006).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

    from .media import MediaCopier, MediaStream

    Format = Literal["json", "csv", "jsonl"]

FORMATS: tuple[str, ...] = ("json", "csv", "jsonl")
DATA_FILES = {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}

DEFAULT_ARCHIVE = "data/archive.db"
DEFAULT_OUTPUT = "exports"
DEFAULT_BATCH = 1000
BATCH_BYTES = 4 << 20      # a batch also ends once it has produced this many bytes
TMP_PREFIX = ".skyexport-tmp-"
LOCK_NAME = ".lock"
STALE_UNLOCKED_S = 60      # a temp dir with no lock file yet is only stale after this
MAX_WARNINGS = 1000        # kept in full in the manifest; the rest are counted


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

    `directory` is the published export directory, `data_file` the posts file in it;
    `post_count` posts, `media_count` distinct media files copied; `bytes_written` and
    `sha256` describe the data file; `warnings` holds the first warnings (a kept bad
    value, a missing media file...) and `warnings_total` counts them all; `duration_s`
    is the export's wall time; `manifest` is the manifest as written.
    """

    __slots__ = ("directory", "format", "data_file", "post_count", "media_count",
                 "bytes_written", "sha256", "warnings", "warnings_total", "duration_s",
                 "manifest")
    directory: Path
    format: str
    data_file: Path
    post_count: int
    media_count: int
    bytes_written: int
    sha256: str
    warnings: tuple[ExportWarning, ...]
    warnings_total: int
    duration_s: float
    manifest: dict[str, Any]

    def __init__(self, directory: Path, format: str, data_file: Path, post_count: int,
                 media_count: int, bytes_written: int, sha256: str,
                 warnings: tuple[ExportWarning, ...], warnings_total: int, duration_s: float,
                 manifest: dict[str, Any]) -> None:
        self._set(directory=directory, format=format, data_file=data_file,
                  post_count=post_count, media_count=media_count,
                  bytes_written=bytes_written, sha256=sha256, warnings=warnings,
                  warnings_total=warnings_total, duration_s=duration_s, manifest=manifest)

    @property
    def checksums(self) -> dict[str, dict[str, Any]]:
        """`{file name: {"sha256": hex, "bytes": n}}` for the data file and, with media,
        `media.sha256` (which holds the SHA-256 of every media file)."""
        return self.manifest["checksums"]  # type: ignore[no-any-return]


def export(
    archive: str | os.PathLike[str] = DEFAULT_ARCHIVE,
    output: str | os.PathLike[str] = DEFAULT_OUTPUT,
    *,
    format: Format = "json",
    did: str | None = None,
    since: str | None = None,
    until: str | None = None,
    media: bool = False,
    media_root: str | os.PathLike[str] | None = None,
    media_any_path: bool = False,
    media_link: Literal["copy", "hardlink"] = "copy",
    batch_size: int = DEFAULT_BATCH,
    on_bad_value: Literal["error", "keep"] = "error",
    on_progress: Callable[[ExportProgress], object] | None = None,
    csv_formula_guard: bool = False,
) -> ExportResult:
    """Export the posts of `archive` into a new directory `output/YYYY-MM-DD_HH-MM-SS/`.

    `archive` may also be a Bluesky repository export (`repo.car`, recognised by its
    content): its posts are imported into a temporary archive inside the export's hidden
    directory first (../shared/CAR.md); `media=True` is then an OptionError.

    The same job as `skyexport export`: `format` is "json", "csv" or "jsonl"; `did`,
    `since` and `until` (YYYY-MM-DD or RFC 3339) select posts; `media=True` copies the
    posts' media files into `media/` (relative paths resolve against `media_root`, default
    the current directory, then the archive's directory and its parent; a file that does
    not resolve under one of those is skipped with a warning unless `media_any_path`;
    `media_link="hardlink"` links instead of copying); `on_bad_value`
    is "error" (stop) or "keep" (export as text, listed in the warnings).
    `csv_formula_guard` prefixes `'` to CSV text fields that a spreadsheet would run as a
    formula (off by default: the default output is byte-exact with bskyarchive).

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
    if format not in FORMATS:
        raise OptionError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch size must be a positive integer, not {batch_size!r}")
    if on_bad_value not in ("error", "keep"):
        raise OptionError(f"on_bad_value must be 'error' or 'keep', not {on_bad_value!r}")
    bounds = []
    for name, text, end in (("since", since, False), ("until", until, True)):
        try:
            bounds.append(parse_bound(text, end) if text is not None else None)
        except ValueError as exc:
            raise OptionError(f"--{name}: {exc}") from None
    lo, hi = bounds
    if lo is not None and hi is not None and lo > hi:
        raise OptionError(f"--since {since} is after --until {until}")
    if media_link not in ("copy", "hardlink"):
        raise OptionError(f"media_link must be 'copy' or 'hardlink', not {media_link!r}")
    if media and media_root is not None and not os.path.isdir(media_root):
        raise OptionError(f"--media-root {os.fspath(media_root)} is not a directory")
    car = _car_source(archive)
    if car is not None and media:
        raise OptionError(f"--media with {car}: a repository CAR holds no media files; "
                          "leave out --media")
    with (Archive(archive) if car is None else _NoArchive()) as arc:
        out, created = _prepare_output(Path(output))
        job = _Job(arc, out, format, did, lo, hi, since, until, media,
                   Path(media_root) if media_root is not None else None, batch_size,
                   on_bad_value, on_progress, csv_formula_guard,
                   media_any_path=media_any_path, media_link=media_link, car=car)
        try:
            return job.run()
        except BaseException:
            if created:
                _rmdir_if_empty(out)
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
    try:
        with open(archive, "rb") as f:
            magic = f.read(len(_SQLITE_MAGIC))
    except OSError:
        return None
    if magic == _SQLITE_MAGIC or not magic:
        return None
    from .car import is_car

    return Path(archive) if is_car(archive) else None


class _Job:
    def __init__(self, arc: Archive, out: Path, fmt: str, did: str | None,
                 lo: tuple[int, int] | None, hi: tuple[int, int] | None,
                 since: str | None, until: str | None, media: bool,
                 media_root: Path | None, batch_size: int, on_bad_value: str,
                 on_progress: Callable[[ExportProgress], object] | None,
                 formula_guard: bool, *, media_any_path: bool = False,
                 media_link: str = "copy", car: Path | None = None) -> None:
        self.arc, self.out, self.fmt, self.did = arc, out, fmt, did
        self.car = car                              # the source, when it is a CAR
        self.car_source: dict[str, Any] | None = None
        self.car_blocks = self.car_bytes = 0        # read of it so far (progress)
        self.lo, self.hi, self.since, self.until = lo, hi, since, until
        self.media, self.media_root, self.batch_size = media, media_root, batch_size
        self.keep_bad = on_bad_value == "keep"
        self.formula_guard = formula_guard
        self.media_any_path, self.media_link = media_any_path, media_link
        self.start = time.monotonic()
        self.phase = "queued"  # "running" once the totals are counted
        self.posts_total = self.media_total = 0
        self.writer: Writer | None = None
        self.copier: MediaCopier | None = None
        self.media_stream: MediaStream | None = None
        self.warnings: list[ExportWarning] = []
        self.warnings_total = 0
        self.channel = (ProgressChannel(on_progress, self.snapshot)
                        if on_progress is not None else None)
        self.published: Path | None = None   # set the instant the export is visible
        self._renaming: Path | None = None   # the name a rename is being tried under

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
        u = uri.decode("utf-8", "replace")
        shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if not self.keep_bad:
            raise BadValueError(u, column, shown)
        self.warn(u, column, f"{column} {shown!r} could not be read; exported as text")

    # --- the job ------------------------------------------------------------------------

    def run(self) -> ExportResult:
        tmp: Path | None = None
        lock_fds: list[int] = []
        try:
            self.emit("queued")
            tmp, lock_fds = _make_temp_dir(self.out)
            if self.car is not None:
                self._open_car(tmp)
            result = self._export(tmp)
            self.emit("completed")
            return result
        except BaseException as exc:
            if self._was_published(tmp):
                # Complete and visible: a signal after the rename does not unpublish it.
                self.emit("completed")
                self._mark(exc)
                raise
            if tmp is not None:
                _rmtree(tmp)
            self.emit("failed", error=_one_line(exc))
            raise
        finally:
            if self.car is not None and self.arc is not None:
                self.arc.close()
            for fd in lock_fds:
                os.close(fd)
            if self.channel is not None:
                try:
                    self.channel.close()  # the final event is delivered before we return
                except BaseException as exc:
                    self._mark(exc)
                    raise

    def _was_published(self, tmp: Path | None) -> bool:
        if self.published is None and self._renaming is not None and tmp is not None \
                and not os.path.lexists(tmp) and os.path.isdir(self._renaming):
            self.published = self._renaming  # interrupted between rename and bookkeeping
        return self.published is not None

    def _mark(self, exc: BaseException) -> None:
        if self.published is not None and not hasattr(exc, "published_directory"):
            try:
                exc.published_directory = self.published  # type: ignore[attr-defined]
            except AttributeError:
                pass

    def _export(self, tmp: Path) -> ExportResult:
        arc = self.arc
        if self.channel is not None:
            arc.set_heartbeat(self.heartbeat)  # counting can take seconds too
        try:
            arc.begin()
            count_sql, rows_sql, args = arc.select(self.did, self.lo, self.hi)
            self.selection = (count_sql, args)  # the media stream selects the same posts
            self.posts_total = arc.count(count_sql, args)
            if self.media:
                self.media_total = arc.count_media(count_sql, args)
            if self.lo is not None or self.hi is not None:
                bad, total = arc.bad_created_at(self.did, MAX_WARNINGS)
                for uri, value in bad:
                    self.warn(uri, "created_at", f"created_at {value!r} cannot be read; "
                              "left out by the date filter")
                self.warnings_total += total - len(bad)
        except apsw.Error as exc:
            raise archive_error(arc.path, exc, "while counting posts") from None
        self.phase = "running"  # the first event with the totals is the first batch's

        data_path = tmp / DATA_FILES[self.fmt]
        fd = _open_new(data_path)
        try:
            return self._write(tmp, data_path, fd, rows_sql, args)
        finally:
            os.close(fd)

    def _write(self, tmp: Path, data_path: Path, fd: int, rows_sql: str,
               args: list[object]) -> ExportResult:
        arc = self.arc
        sink = FileSink(fd)
        try:
            self._encode_all(tmp, sink, rows_sql, args)
            sink.close()
            if self.copier is not None:
                self.copier.finish()
        except OutputError:
            raise  # already says what and where (OutputError is an OSError)
        except OSError as exc:
            raise _output_error(exc, data_path) from None
        finally:
            sink.abort()
            if self.copier is not None:
                self.copier.close()
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
        checksums = {DATA_FILES[self.fmt]: {"sha256": digest, "bytes": writer.bytes_written}}
        if self.copier is not None:
            sums = tmp / MEDIA_SUMS
            digest_sums, size_sums = sha256_file(sums)
            checksums[MEDIA_SUMS] = {"sha256": digest_sums, "bytes": size_sums}
        if self.car is not None:
            self._drop_car(tmp)
        duration = time.monotonic() - self.start
        manifest = self._manifest(checksums, duration)
        try:
            write_manifest(tmp, manifest)
            _fsync_dir(tmp)
            final = _publish(tmp, self.out, self)
        except OutputError:
            raise  # no free export directory name: already one clear line
        except OSError as exc:
            raise _output_error(exc, tmp) from None
        return ExportResult(
            directory=final, format=self.fmt, data_file=final / DATA_FILES[self.fmt],
            post_count=writer.rows, media_count=self.copier.copied if self.copier else 0,
            bytes_written=writer.bytes_written, sha256=digest,
            warnings=tuple(self.warnings), warnings_total=self.warnings_total,
            duration_s=duration, manifest=manifest)

    def _encode_all(self, tmp: Path, sink: FileSink, rows_sql: str,
                    args: list[object]) -> None:
        """The batch loop: encode up to batch_size rows, copy their media, report."""
        arc = self.arc
        self.writer = writer = Writer(sink, self.fmt, on_bad=self.on_bad,
                                      collect_media=self.media,
                                      formula_guard=self.formula_guard)
        if self.media:
            home = Path(os.path.abspath(arc.path)).parent  # `a.db`: its parent is not `.`
            roots = [self.media_root or Path.cwd(), home, home.parent]
            from .media import MediaCopier, MediaStream  # only with --media

            self.copier = MediaCopier(tmp / "media", roots, tmp / MEDIA_SUMS,
                                      any_path=self.media_any_path, link=self.media_link)
            if arc.has_media_table:
                try:
                    self.media_stream = MediaStream(arc.media_rows(*self.selection))
                except apsw.Error as exc:
                    raise archive_error(arc.path, exc, "while reading the media table") \
                        from None
        rows: Any = arc.rows(rows_sql, args)
        encode: Callable[[Any, int, int], int]
        if isinstance(rows, RowPipe):
            encode = writer.encode_pipe
        elif isinstance(rows, Statement):
            encode = writer.encode_stmt
        else:
            encode = writer.encode
        batch = 0
        while not writer.exhausted:
            first = writer.rows + 1
            batch += 1
            try:
                if not encode(rows, self.batch_size, BATCH_BYTES):
                    break  # the end, found on a batch boundary: nothing to report
                if self.media_stream is not None:
                    assert self.copier is not None
                    try:
                        self.copier.copy_rows(
                            self.media_stream.rows_for(writer.take_media_posts()),
                            self.heartbeat)
                    except OSError as exc:  # disk full, file size limit: name media/
                        raise _output_error(exc, Path(self.copier.media_dir)) from None
            except apsw.Error as exc:
                raise archive_error(arc.path, exc, f"in batch {batch} (posts {first}.."
                                    f"{first + self.batch_size - 1})") from None
            self.emit("running")
        if self.media_stream is not None and (left := self.media_stream.leftover()):
            # The core and SQL disagreed about some post's has_media: never silently.
            self.warn("", "media", f"{left} media row(s) matched no exported post with "
                      "has_media and were not copied")
        arc.set_heartbeat(None)
        writer.finish()

    def _manifest(self, checksums: dict[str, dict[str, Any]], duration: float) -> dict[str, Any]:
        w = self.writer
        assert w is not None
        files = [DATA_FILES[self.fmt]]
        if self.copier is not None:
            files.append(f"media/ ({self.copier.copied} files)")
        m: dict[str, Any] = {
            "export_format": self.fmt,
            "export_timestamp": _local_rfc3339(time.time()),
            "post_count": w.rows,
            "media_count": self.copier.copied if self.copier else 0,
        }
        if self.lo is not None or self.hi is not None:
            m["date_range"] = {"start_date": _rfc3339(self.lo), "end_date": _rfc3339(self.hi)}
        m.update({
            "version": MANIFEST_VERSION,
            "files": files,
            "generator": f"skyexport {__version__}",
            "source_archive": str((self.car or self.arc.path).resolve()),
            "schema_version": self.arc.schema_version,
            "did": self.did,
            "batch_size": self.batch_size,
            "csv_formula_guard": self.formula_guard,
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
        return m

    # --- a CAR as the source --------------------------------------------------------------

    def _open_car(self, tmp: Path) -> None:
        """Import the CAR into tmp/.car/archive.db and export from that archive."""
        from .car import CarRepo, build_archive_from

        d = tmp / CAR_DIR
        d.mkdir()

        def on_blocks(blocks: int, offset: int) -> None:
            self.car_blocks, self.car_bytes = blocks, offset
            self.heartbeat()

        try:
            with CarRepo(self.car, d, on_blocks,  # type: ignore[arg-type]
                         verb="exported") as repo:
                self.emit()  # the whole CAR read and indexed
                build_archive_from(repo, d / "archive.db", scratch=True,
                                   on_chunk=self.heartbeat)
                self.car_source = {"sha256": repo.sha256, "rev": repo.rev, "did": repo.did,
                                   "commit_version": repo.version, "bytes": repo.size}
        except OSError as exc:
            raise _output_error(exc, d) from None
        self.arc = Archive(d / "archive.db")

    def _drop_car(self, tmp: Path) -> None:
        """The temporary archive is not part of the export: gone before publishing."""
        self.arc.close()
        _rmtree(tmp / CAR_DIR)


# --- the output directory ---------------------------------------------------------------

def _prepare_output(out: Path) -> tuple[Path, bool]:
    """Make sure OUTPUT is a writable directory; clear stale temp dirs of ours."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a directory; choose another --output")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {out}: {exc.strerror}; choose "
                          "another --output") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {out} is not writable; choose another --output "
                          "or fix its permissions")
    clean_stale_temp_dirs(out)
    return out, created


def clean_stale_temp_dirs(out: Path) -> list[Path]:
    """Remove `.skyexport-tmp-*` dirs in `out` whose owner is gone (their lock is free).
    Returns what was removed.  Never touches anything else."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        fds: list[int] = []
        try:
            try:
                fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                   | os.O_CLOEXEC))
                fcntl.flock(fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # gone, not ours to open, or a live export holds it
            try:
                fds.append(os.open(path / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
            except FileNotFoundError:
                # No .lock: being created this instant, or its owner died before it could
                # lock.  Only age tells them apart.
                try:
                    age = time.time() - entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                if age > STALE_UNLOCKED_S:
                    _rmtree(path)
                    removed.append(path)
                continue
            except OSError:
                continue
            try:
                fcntl.flock(fds[1], fcntl.LOCK_EX | fcntl.LOCK_NB)  # earlier versions' lock
            except OSError:
                continue
            _rmtree(path)
            removed.append(path)
        finally:
            for fd in fds:
                os.close(fd)
    return removed


def _make_temp_dir(out: Path) -> tuple[Path, list[int]]:
    """A new temporary directory in `out`, locked before `.lock` appears in it (see the
    module's docstring), and the descriptors that hold its locks."""
    tmp = out / f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    fds: list[int] = []
    try:
        os.mkdir(tmp)  # mode 0o777 & ~umask, as any directory the user makes
        fds.append(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        fcntl.flock(fds[0], fcntl.LOCK_EX)
        fds.append(os.open(tmp / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600))
        fcntl.flock(fds[1], fcntl.LOCK_EX)
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        _rmtree(tmp)
        if isinstance(exc, OSError):
            raise _output_error(exc, out) from None
        raise
    return tmp, fds


def _publish(tmp: Path, out: Path, job: _Job) -> Path:
    """Rename the finished temp dir to OUTPUT/YYYY-MM-DD_HH-MM-SS (local time), adding
    -2, -3... while the name is taken.  Never replaces anything.  `job.published` is the
    new name from the instant it is visible."""
    os.unlink(tmp / LOCK_NAME)  # the lock stays held through our open fds
    base = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1, 10_000):
        final = out / (base if n == 1 else f"{base}-{n}")
        job._renaming = final
        try:
            rename_noreplace(tmp, final)
        except FileExistsError:
            continue
        except NotImplementedError:
            try:
                os.mkdir(final)      # claim the name, then replace our own empty dir
            except FileExistsError:
                continue
            os.rename(tmp, final)
        job.published = final
        _fsync_dir(out)
        return final
    raise OutputError(f"no free export directory name under {out} for {base}")


def _open_new(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise _output_error(exc, path) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _output_error(exc: OSError, path: Path) -> OutputError:
    path = Path(exc.filename) if exc.filename else path
    if exc.errno == errno.ENOSPC:
        what = "the disk is full (no space left on device)"
        todo = "free some space or choose another --output"
    elif exc.errno == errno.EDQUOT:
        what = "the disk quota is exhausted"
        todo = "free some space or choose another --output"
    elif exc.errno == errno.EFBIG:
        what = "the file size limit was reached (EFBIG: ulimit -f or the filesystem's limit)"
        todo = "raise the limit or choose another --output"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"permission denied ({exc.strerror})"
        todo = "choose another --output or fix its permissions"
    else:
        what = exc.strerror or str(exc)
        todo = "check the output directory"
    err = OutputError(f"writing {path} failed: {what}; {todo}; nothing was exported")
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


def _rmtree(path: Path) -> None:
    """Remove a temporary directory of ours, whatever is in it."""
    import shutil  # only on failure paths: its import costs a small export's time

    shutil.rmtree(path, ignore_errors=True)

