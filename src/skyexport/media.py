"""Copying the media files of exported posts into EXPORT/media/ (FR-007).

Streamed per batch: the writer core hands over the URIs of the batch's posts with
`has_media`; their `media` rows are read in the export's snapshot and each file is placed
at `media/<basename>`.  Nothing is remembered across batches: a file already present at
its destination with the same content is the same file (bskyarchive names media by
content hash), so duplicates are found on disk, not in a map.

Where the source is found (FORMAT.md): an absolute `file_path` as it is; a relative one
against each root in turn (`--media-root`, default the current directory, then the
archive's directory and its parent).  A path written with `\\` separators (an archive
made on Windows) is also tried with `/`.  Only regular files are copied: a missing file,
a directory, a FIFO or an unreadable file is a warning, never a failure and never a hang.

Names: the destination is `media/` + the last component of `file_path` (after the last
`/` or `\\`).  An empty name, `.`, `..`, or one holding a control character is refused
(warning), so nothing can be written outside the export directory and `media.sha256`
stays one line per file.  When two *different* files share a basename, the first one
placed keeps it and each other gets the first 12 hex digits of its SHA-256 before the
extension (`photo.jpg` -> `photo-0123456789ab.jpg`), with a warning.  Destinations are
created with link(2) or O_EXCL, which never follow or replace an existing entry.

Every file placed gets a line `<sha256>  media/<name>` in `media.sha256` (the format of
`sha256sum`, so `sha256sum -c media.sha256` works too); the manifest covers that list.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator

from .manifest import sha256_file

# Paths are plain str inside: pathlib would intern every file name it parses (a churn of
# tens of thousands of names in the interpreter's interned-string table per export).
StrPath = str | os.PathLike

FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (copy-on-write filesystems)
MAX_WARNINGS = 1000   # kept word for word; the rest are only counted
HASH_PREFIX = 12      # hex digits of SHA-256 that tell apart two files of one basename
# Errors that mean the export cannot be written at all: they fail the export.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # no such byte in a name: one line per file


class MediaStream:
    """Media rows in the export's order, handed out batch by batch.

    `rows_for(uris)` yields the rows of these posts (the batch's posts with has_media, in
    export order, as the writer core reports them).  Both sides follow one order, so this
    is a merge: each row is read once, and nothing is held but the next row.  Rows the
    merge never reached (a post SQLite and the core disagree about) are `leftover()`.
    """

    def __init__(self, rows: Iterator[tuple[bytes, bytes, bytes]]) -> None:
        self._rows = rows
        self._head = next(rows, None)

    def rows_for(self, uris: Iterable[bytes]) -> Iterator[tuple[bytes, bytes, bytes]]:
        rows = self._rows
        for uri in uris:
            while self._head is not None and self._head[0] == uri:
                yield self._head
                self._head = next(rows, None)

    def leftover(self) -> int:
        n = 0
        while self._head is not None:
            n += 1
            self._head = next(self._rows, None)
        return n


class MediaCopier:
    """Places media files into `media_dir`; counts, and reports misses as warnings.

    Invariant: every file in `media_dir` has exactly one line in the sums file, written
    after the file is complete; `copied` is the number of those files.
    """

    def __init__(self, media_dir: StrPath, roots: Iterable[StrPath],
                 sums_file: StrPath) -> None:
        self.media_dir = os.fspath(media_dir)
        self.roots: list[str] = []
        for root in roots:
            r = os.path.abspath(root)
            if r not in self.roots:
                self.roots.append(r)
        self.copied = 0       # distinct files now in media/
        self.seen = 0         # media rows handled (copied, already there, or a warning)
        self.warnings: list[tuple[str, str]] = []  # (post uri, message), the first ones
        self.warnings_total = 0
        os.mkdir(self.media_dir)
        # Names are str decoded with surrogateescape: write their original bytes back.
        self._sums = open(  # noqa: SIM115 - open for the copier's whole life
            sums_file, "w", encoding="utf-8", errors="surrogateescape", newline="\n")

    def finish(self) -> None:
        """Make media.sha256 and the names in media/ durable (the files themselves are
        hard links to durable files, or copies that `verify` can check)."""
        self._sums.flush()
        os.fsync(self._sums.fileno())
        self._sums.close()
        fd = os.open(self.media_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the list file (idempotent; on failure paths nothing is synced)."""
        if not self._sums.closed:
            self._sums.close()

    def _warn(self, uri: str, message: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append((uri, message))

    def _candidates(self, file_path: str) -> list[str]:
        spellings = [file_path]
        if "\\" in file_path:
            spellings.append(file_path.replace("\\", "/"))
        out: list[str] = []
        for s in spellings:
            for c in ([s] if os.path.isabs(s) else
                      [os.path.join(root, s) for root in self.roots]):
                if c not in out:
                    out.append(c)
        return out

    def _resolve(self, file_path: str) -> tuple[str | None, str]:
        """(the regular file `file_path` names, "") or (None, why not)."""
        why = "not found"
        for c in self._candidates(file_path):
            try:
                st = os.stat(c)
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                return c, ""
            why = f"not a regular file ({_show(c)})"
        return None, why

    def copy_rows(self, rows: Iterable[tuple[bytes, bytes, bytes]],
                  tick: Callable[[], None] = lambda: None) -> None:
        """Place the files of these `(post_uri, hash, file_path)` media rows; `tick` is
        called once per row (the export's heartbeat)."""
        for post_uri, _hash, raw_path in rows:
            tick()
            uri = post_uri.decode("utf-8", "replace") if isinstance(post_uri, bytes) \
                else str(post_uri)
            try:
                self._copy_one(uri, raw_path)
            finally:
                self.seen += 1

    def _copy_one(self, uri: str, raw_path: object) -> None:
        if isinstance(raw_path, bytes):
            file_path = os.fsdecode(raw_path)
        else:
            file_path = "" if raw_path is None else str(raw_path)
        name = file_path.replace("\\", "/").rsplit("/", 1)[-1]
        if name in ("", ".", "..") or _CONTROL.search(name):
            self._warn(uri, f"media file_path {_show(file_path)} has no usable file name; "
                            "skipped")
            return
        src, why = self._resolve(file_path)
        if src is None:
            where = "" if os.path.isabs(file_path) else \
                " (looked in " + ", ".join(_show(r) for r in self.roots) + ")"
            self._warn(uri, f"media file {_show(file_path)} {why}{where}; skipped")
            return
        try:
            self._place(src, name, uri)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
            self._warn(uri, f"media file {_show(src)} could not be copied: "
                            f"{exc.strerror or exc}; skipped")

    def _place(self, src: str, name: str, uri: str) -> None:
        dst = os.path.join(self.media_dir, name)
        if os.path.lexists(dst):
            if _same_content(src, dst):
                return  # the same file again (two posts, one image)
            digest = _sha256_file(src)
            stem, dot, ext = name.rpartition(".")
            tag = digest[:HASH_PREFIX]
            alt = f"{stem}-{tag}.{ext}" if dot and stem else f"{name}-{tag}"
            if os.path.lexists(os.path.join(self.media_dir, alt)):
                return  # this content already got its own name
            self._warn(uri, f"media name {_show(name)} is taken by a different file; "
                            f"{_show(src)} saved as {_show(alt)}")
            name, dst = alt, os.path.join(self.media_dir, alt)
        _link_or_copy(src, dst)
        try:
            digest = _sha256_file(dst)  # reading it back: an unreadable source fails here
        except BaseException:
            os.unlink(dst)
            raise
        self._sums.write(f"{digest}  media/{name}\n")
        self.copied += 1


def _show(path: str) -> str:
    """A path for a message: its bytes as UTF-8, anything else escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _link_or_copy(src: StrPath, dst: StrPath) -> None:
    """Hard link (no bytes copied; media files are immutable, named by content), else a
    reflink, else a byte copy.  Never follows or replaces an existing `dst`."""
    try:
        os.link(src, dst, follow_symlinks=True)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # another filesystem (EXDEV), or links not allowed: copy instead
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as fout:
                try:
                    fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                except OSError:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        except BaseException:
            os.unlink(dst)
            raise


def _sha256_file(path: StrPath) -> str:
    return sha256_file(path)[0]


def _same_content(a: StrPath, b: StrPath) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if os.stat(a).st_size != os.stat(b).st_size:
            return False
    except OSError:
        return False
    return _sha256_file(a) == _sha256_file(b)
