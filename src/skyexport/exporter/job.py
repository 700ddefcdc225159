"""The export job: a short pump from one source's snapshot to one published directory.

    check_options -> Source (sources/) -> Archive.snapshot(Selection) -> Snapshot.rows()
      -> Writer (the core) -> StagedDir/posts.*, media/ per batch, manifest.json
      -> StagedDir.publish()

Every option is checked first (options.py); then the source is opened (nothing is created
in OUTPUT for a bad input); the staged directory (staged.py) holds everything until
publish() renames it into place, and removes it on any failure or interruption.  The job
knows a source only through `Source` (sources/__init__.py): which kind of input it is,
and what that kind needs, is the source's business.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from .. import __version__
from .._core import Writer
from .._record import Record
from ..defaults import (
    DATA_FILES,
    DEFAULT_ARCHIVE,
    DEFAULT_BATCH,
    DEFAULT_OUTPUT,
    MAX_WARNINGS,
    SUFFIXES,
)
from ..errors import ArchiveError, BadValueError, OutputError
from ..manifest.write import MANIFEST_VERSION, MEDIA_SUMS, sha256_file, write_manifest
from ..sources import Warn
from .options import Options, check_options, current_tuning, did_dirname
from .progress import ExportProgress, ProgressChannel
from .sink import FileSink
from .staged import (
    StagedDir,
    mark_published,
    open_new,
    output_error,
    prepare_output,
    rmdir_if_empty,
)

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any, BinaryIO, Literal

    from ..sources import Source
    from ..sources.archive import Archive, Selection, Snapshot
    from .media import MediaCopier

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
) -> ExportResult:
    """Export the posts of `archive` into a new directory `output/YYYY-MM-DD_HH-MM-SS/`.

    `archive` may also be a Bluesky repository export (`repo.car`, recognised by its
    content): its posts are imported into a temporary archive first (docs/CAR.md).
    `collections` ("all", or NSIDs separated by commas) also writes its other
    collections' records as `records/<nsid>.<format>` files; `media=True` needs `blobs`,
    the directory of its blobs named by their CID (each checked against its CID as it is
    copied).  Both are an OptionError with an archive.  A backup directory of `skyexport
    fetch` is its repo.car with its blobs/ as `blobs`.

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
    options = check_options(
        archive, output, format=format, did=did, since=since, until=until, media=media,
        media_root=media_root, media_any_path=media_any_path, media_link=media_link,
        batch_size=batch_size, on_bad_value=on_bad_value,
        csv_formula_guard=csv_formula_guard, bom=bom, compress=compress,
        compress_level=compress_level, layout=layout, tuning=current_tuning(),
        collections=collections, blobs=blobs)
    return _run(options, on_progress)


def _run(o: Options, on_progress: Callable[[ExportProgress], object] | None) -> ExportResult:
    """The checked options' export: open the source, name the directory, run the job."""
    t = o.tuning
    job: _Job | None = None
    try:
        # Without --media nothing else uses the connection while the pipe steps it.
        with o.kind(o.archive, row_source=t.row_source, busy_timeout_ms=t.busy_timeout_ms,
                    nomutex=not o.media, extras=o.extras) as source:
            did = o.did
            if o.layout == "did":
                did = did_dirname(source.layout_did(did, o.opt), o.opt)
            if o.stream is not None:
                job = _Job(source, None, o, o.selection(did), on_progress)
                return job.run()
            base = o.output
            assert base is not None
            if o.layout == "did":
                assert did is not None
                created_base = not base.exists()
                target = base / did
            else:
                created_base, target = False, base
            out, created = prepare_output(target)
            job = _Job(source, out, o, o.selection(did), on_progress)
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


def _value_shown(value: bytes | float | None) -> str:
    """A stored value as a message shows it: decoded, at most 80 characters."""
    shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


class _Job:
    """One export: run() pumps the snapshot's rows through the writer into a staged
    directory, copies media per batch, writes the manifest and publishes."""

    def __init__(self, source: Source, out: Path | None, o: Options, selection: Selection,
                 on_progress: Callable[[ExportProgress], object] | None) -> None:
        self.source, self.out, self.fmt, self.selection = source, out, o.format, selection
        self.arc: Archive | None = None  # the source's archive, once run() has it
        self.flush_size = o.tuning.flush_size
        self.stream = o.stream
        self.compress, self.compress_level = o.compress, o.compress_level
        self.data_name = DATA_FILES[o.format] + (SUFFIXES[o.compress] if o.compress else "")
        self.media, self.media_root, self.batch_size = o.media, o.media_root, o.batch_size
        self.keep_bad = o.keep_bad
        self.formula_guard = o.formula_guard
        self.bom = o.bom
        self.media_any_path, self.media_link = o.media_any_path, o.media_link
        self.start = time.monotonic()
        self.phase = "queued"  # "running" once the totals are counted
        self.posts_total = self.media_total = 0
        self.writer: Writer | None = None
        self.copier: MediaCopier | None = None
        self.warnings: list[ExportWarning] = []
        self.warnings_total = 0
        self.no_media_rows = 0  # exported posts with has_media and no media rows
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
            **self.source.progress())

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

    def _source_warn(self) -> Warn:
        def more(n: int) -> None:
            self.warnings_total += n

        return Warn(self.warn, more)

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
            if self.stream is not None:
                self.arc = self.source.archive(None, selection=self.selection,
                                               emit=self.emit, heartbeat=self.heartbeat,
                                               warn=self._source_warn())
                result = self._export_stream(self.stream)
                self.streamed = result
            else:
                assert self.out is not None
                with StagedDir(self.out) as staged:
                    self.staged = staged
                    assert staged.path is not None
                    try:
                        self.arc = self.source.archive(
                            staged.path, selection=self.selection, emit=self.emit,
                            heartbeat=self.heartbeat, warn=self._source_warn())
                    except OutputError:
                        raise
                    except OSError as exc:
                        raise output_error(exc, staged.path) from None
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
            if self.channel is not None:
                try:
                    self.channel.close()  # the final event is delivered before we return
                except BaseException as exc:
                    self.mark(exc)
                    raise

    def _export(self, staged: StagedDir) -> ExportResult:
        arc, tmp = self.arc, staged.path
        assert arc is not None and tmp is not None
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
                    try:
                        self.copier.finish()
                    except OutputError:
                        raise
                    except OSError as exc:  # the last batch's copy, or media/ not durable
                        raise output_error(exc, Path(self.copier.media_dir)) from None
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
        manifest_source = self.source.manifest(arc)
        self.source.release()  # what the source built in tmp is not part of the export
        duration = time.monotonic() - self.start
        manifest = self._manifest(checksums, duration, manifest_source)
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
            assert self.arc is not None
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
        assert arc is not None
        try:
            snap = arc.snapshot(sel)
            if sel.did is not None and not snap.did_posts:
                raise arc.unknown_did(sel.did)
            self.posts_total = snap.posts_total
            if self.media and self.channel is not None:
                # for the progress events (the manifest's count comes from the copy
                # itself: no query before the first batch when nobody watches)
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
        assert arc is not None
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
            any_path, digest_of_name = self.media_any_path, None
            own = self.source.media_files()  # the source's own place for them, if any
            if own is not None:
                roots, digest_of_name = own
                any_path = False
            from .media import MediaCopier, MediaStream  # only with --media

            assert tmp is not None
            self.copier = MediaCopier(tmp / "media", roots, tmp / MEDIA_SUMS,
                                      any_path=any_path, link=self.media_link,
                                      digest_of_name=digest_of_name)
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
        left = 0
        if stream is not None:
            left = stream.leftover()
            self.media_total = stream.rows + left  # the same join the count runs
        if left:
            # One rule decides has_media on both sides (skyexport_true), so this cannot
            # happen; were it ever to, it is said, never silent.
            self.warn("", "media", f"{left} media row(s) matched no exported post with "
                      "has_media and were not copied")
        arc.set_heartbeat(None)
        writer.finish()

    def _manifest(self, checksums: dict[str, dict[str, Any]], duration: float,
                  source: dict[str, Any]) -> dict[str, Any]:
        w = self.writer
        assert w is not None
        files = [self.data_name]
        if self.copier is not None:
            files.append(f"media/ ({self.copier.copied} files)")
        files += list(self.source.files())  # what the source wrote besides (Source.files)
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
            "source_archive": source.pop("source_archive"),
            "schema_version": source.pop("schema_version"),
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
        m.update(source)  # any further keys the source adds (Source.manifest)
        return m


# --- small helpers ----------------------------------------------------------------------

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


