"""Copying the media files of exported posts into EXPORT/media/.

Streamed per batch: the writer core hands over the URIs of the batch's posts with
`has_media`; their `media` rows are read in the export's snapshot and each file is placed
at `media/<basename>`.  Nothing is remembered across batches but a bounded cache of the
digests of files already placed: a file already present at its destination with the same
content is the same file (bskyarchive names media by content hash).

An archive's `file_path` values are untrusted input (an archive can come from anyone):

* Where the source is looked for (FORMAT.md): an absolute `file_path` as it is; a relative
  one against each root in turn (`--media-root`, default the current directory, then the
  archive's directory and its parent).  A path written with `\\` separators (an archive
  made on Windows) is also tried with `/`.
* Confinement: a source is used only if it resolves (symlinks included) to a path under
  one of those roots; anything else - `/etc/shadow`, `../../../etc/passwd`, a symlink out
  of the archive - is skipped with a warning, unless `any_path` (`--media-any-path`).
  Two ways to get there, one outcome (tests/unit/test_media_copy_loop.py compares them):
  - the core's copy loop (_core.MediaBatch, Linux >= 5.6): a relative path is opened with
    openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) beneath each root's descriptor in turn,
    which the kernel confines; a path with no such file under a root is not under it;
  - the checked path (_copy_one): everything the loop hands back - a symlink or `..` on
    the way, a name already taken, a file that is not regular - and absolute paths,
    `hardlink`, and systems without openat2: realpath, then the check against the roots.
* Only regular files on real file systems: each source is opened once, with O_NOFOLLOW
  and O_NONBLOCK (a FIFO never hangs), and `fstat`ed; a directory, device, FIFO, socket,
  or a file on a pseudo file system (/proc, /sys, ...) is skipped with a warning.  Its
  bytes are copied and hashed from that one descriptor, never more than the size `fstat`
  gave; a file that shrinks meanwhile is a warning and is not exported.
* Copies, not aliases: by default `media/` gets an independent copy - a reflink (FICLONE)
  where the file system shares blocks copy-on-write (not tried again on a source device
  where it failed as unsupported), else a byte copy - so editing an exported file never
  changes the archive.  The loop works without the GIL on two threads of its own that
  serve the whole export (and on the thread feeding it, once fed): the core takes each
  batch's rows, sends each it can do to them at once, and writes their media.sha256 lines;
  the creates in media/ are made by one thread at a time, in row order (they wait for the
  directory's lock anyway), the bytes are copied and hashed by any.
  `link="hardlink"` (`--media-link hardlink`) hard-links instead (no space used; the
  export then *is* the archive's file).

Names: the destination is `media/` + the last component of `file_path` (after the last
`/` or `\\`).  An empty name, `.`, `..`, or one holding an ASCII control character is refused
(warning), so nothing can be written outside the export directory and `media.sha256`
stays one line per file.  When two *different* files share a basename, the first one
placed keeps it and each other gets the first 12 hex digits of its SHA-256 before the
extension (`photo.jpg` -> `photo-0123456789ab.jpg`), then the whole digest if that is taken
too, with a warning: every media row is either exported or warned about.  Destinations are
created with O_EXCL or link(2), which never follow or replace an existing entry.

Every file placed gets a line `<sha256>  media/<name>` in `media.sha256` (the format of
`sha256sum`, so `sha256sum -c media.sha256` works too); the manifest covers that list.
Within one batch of the loop no two rows ask for one name, a name that looks like a
hash-suffixed alternative takes the checked path, and rows are booked in order: so every
name comes out as a one-by-one copy in row order would give it.  `finish()` makes the files'
data durable (staged.sync_files: one syncfs) before the export can be published.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from .. import _core
from .._platform import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    fsync,
    open_dir,
    open_nofollow,
    reflink,
    set_blocking,
)
from ..defaults import MAX_WARNINGS
from . import staged
from .staged import fsync_dir

# Paths are plain str inside: pathlib would intern every file name it parses (a churn of
# tens of thousands of names in the interpreter's interned-string table per export).
StrPath = str | os.PathLike[str]

HASH_PREFIX = 12      # hex digits of SHA-256 that tell apart two files of one basename
CHUNK = 1 << 20       # bytes per read when copying
SUMS_BUFFER = 1 << 16  # media.sha256 is written in pieces of about this size
DIGEST_CACHE = 4096   # digests of files the checked path placed (others are re-read if needed)
LINK_MODES = ("copy", "hardlink")
# Errors that mean the export cannot be written at all: they fail the export.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # no such byte in a name: one line per file
_CONTROL_BYTES = re.compile(b"[\x00-\x1f\x7f]")
# A name _place could give as an alternative (name-<12 or 64 hex digits>[.ext]).
_ALT_NAME = re.compile(rb"-(?:[0-9a-f]{12}|[0-9a-f]{64})(?:\.[^.]*)?$")
_OPEN_SOURCE = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC  # with open_nofollow
# FICLONE errors that mean "this file system (pair) cannot share blocks": not tried again.
_NO_CLONE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                              errno.ENOSYS, errno.EPERM})
# The core's copy loop (_core.MediaBatch): files handed to it at a time, and threads (each
# copies one file at a time).  FAST_PATH False sends every file through the checked Python
# path (_copy_one) - what the loop hands back anything unusual to anyway.
FAST_PATH = True
BATCH_FILES = 1024  # more than an export batch (1,000 posts) usually has: one batch a call
COPY_THREADS = 2    # serving the batch for the whole export
SPLIT = True        # the creates in media/ on one thread at a time, the bytes on any
PIPELINE = True     # a call's last batch is copied while the export reads on
FLUSH_EVERY = 0.05  # seconds between the syncfs calls writing media/ out as it fills (0: none)
_PLACED, _SLOW, _SHRANK, _FAILED = 0, 1, 2, 3
# File systems whose "files" are views of the kernel or of processes, not stored data.
PSEUDO_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup",
    "cgroup2", "pstore", "bpf", "configfs", "fusectl", "efivarfs", "hugetlbfs", "mqueue",
    "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "selinuxfs", "smackfs",
})


class _Skip(Exception):
    """This source cannot be used; the message says why (it becomes a warning)."""


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
        self.without_rows = 0   # posts with has_media that have no media row
        self.rows = 0           # rows handed out

    def rows_for(self, uris: Iterable[bytes]) -> Iterator[tuple[bytes, bytes, bytes]]:
        rows = self._rows
        for uri in uris:
            found = False
            while self._head is not None and self._head[0] == uri:
                found = True
                self.rows += 1
                yield self._head
                self._head = next(rows, None)
            if not found:
                self.without_rows += 1

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
                 sums_file: StrPath, *, any_path: bool = False, link: str = "copy",
                 digest_of_name: Callable[[str], str | None] | None = None) -> None:
        if link not in LINK_MODES:
            raise ValueError(f"link must be one of {', '.join(LINK_MODES)}, not {link!r}")
        self.media_dir = os.fspath(media_dir)
        self.roots: list[str] = []
        for root in roots:
            r = os.path.abspath(root)
            if r not in self.roots:
                self.roots.append(r)
        # Where sources may be: the roots as they really are (symlinks resolved).
        self._real_roots = [os.path.realpath(r) for r in self.roots]
        self.any_path = any_path
        self.link = link
        # Files named by their content (Source.media_files: a blobs directory): each row's
        # hash is the name, whose SHA-256 this gives, checked against the bytes as they
        # are copied; a mismatch is a warning, never exported
        self.digest_of_name = digest_of_name
        self.copied = 0       # distinct files now in media/
        self.seen = 0         # media rows handled (copied, already there, or a warning)
        self.warnings: list[tuple[str, str]] = []  # (post uri, message), the first ones
        self.warnings_total = 0
        self._digests: OrderedDict[str, str] = OrderedDict()  # name in media/ -> sha256
        self._pseudo_devs: set[int] | None = None
        self._no_clone: set[int] = set()  # source devices where FICLONE is unsupported
        os.mkdir(self.media_dir)
        self._sums_fd = os.open(sums_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                | O_NOFOLLOW | O_CLOEXEC, 0o666)
        self._sums_buf = bytearray()
        self._fds: list[int] = []       # media/ and the roots, for the core's copy loop
        self._batch: _core.MediaBatch | None = None
        self._servers: _Servers | None = None  # its threads, from the first copy_rows
        self._pending = False  # the last batch copy_rows fed is still being copied
        self._flusher: _Flusher | None = None  # from the first copy_rows
        # media/'s descriptor for syncfs, opened before any file is written in it
        try:
            self._sync_fd = open_dir(self.media_dir, nofollow=True)
        except BaseException:
            os.close(self._sums_fd)
            raise
        if FAST_PATH and link == "copy" and len(self.roots) <= 8 \
                and sys.platform.startswith("linux"):  # the loop is Linux's (media_io.h)
            self._start_batch()

    def _start_batch(self) -> None:
        """The core's copy loop, given media/ and each root as a descriptor (O_PATH: a
        root that can be searched but not listed still counts; -1: a root that cannot be
        resolved, where the checked path finds nothing either)."""
        try:
            media_fd = open_dir(self.media_dir, nofollow=True)
        except OSError:
            return
        self._fds.append(media_fd)
        roots = []
        for root in self.roots:
            try:
                fd = open_dir(root, getattr(os, "O_PATH", os.O_RDONLY))
            except OSError:
                fd = -1
            else:
                self._fds.append(fd)
            roots.append(fd)
        self._batch = _core.MediaBatch(media_fd, roots, sorted(self._pseudo()),
                                       split=bool(SPLIT))

    def _close_fds(self) -> None:
        servers, self._servers, self._batch = self._servers, None, None
        try:
            if servers is not None:
                servers.stop()
        finally:
            while self._fds:
                os.close(self._fds.pop())

    def _stop_flusher(self, report: bool = True) -> None:
        """End the flusher; with `report`, raise the first error its syncfs met."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.stop()
            if report and flusher.error is not None:
                raise flusher.error

    # --- the list file ---------------------------------------------------------------

    def _sums_line(self, digest: str, name: str) -> None:
        # Names are str decoded with surrogateescape: write their original bytes back.
        self._sums_buf += f"{digest}  media/".encode() + os.fsencode(name) + b"\n"
        if len(self._sums_buf) >= SUMS_BUFFER:
            self._flush_sums()

    def _flush_sums(self) -> None:
        view = memoryview(self._sums_buf)
        try:
            while view:
                view = view[os.write(self._sums_fd, view):]
        finally:
            view.release()
        self._sums_buf.clear()

    def finish(self) -> None:
        """Make media.sha256 and the files in media/, their data and names, durable."""
        self.drain()
        self._stop_flusher()
        self._flush_sums()
        # The copies' data: without this, a power loss soon after the export is published
        # can leave them empty (delayed allocation), though their names and list survive.
        staged.sync_files(self.media_dir, self._sync_fd)
        fsync(self._sums_fd)
        os.close(self._sums_fd)
        self._sums_fd = -1
        fsync_dir(self.media_dir)
        self._close_fds()

    def close(self) -> None:
        """Release the list file (idempotent).  On failure paths nothing is written or
        synced: an error here must never replace the one that failed the export."""
        if self._sums_fd >= 0:
            os.close(self._sums_fd)
            self._sums_fd = -1
        self._sums_buf.clear()
        try:
            self._stop_flusher(report=False)  # its error is not this path's to report
            self._close_fds()
        finally:
            if self._sync_fd >= 0:
                os.close(self._sync_fd)
                self._sync_fd = -1

    # --- rows ------------------------------------------------------------------------

    def _warn(self, uri: str, message: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append((uri, message))

    def copy_rows(self, rows: Iterable[tuple[bytes, bytes, bytes]],
                  tick: Callable[[], None] = lambda: None) -> None:
        """Place the files of these `(post_uri, hash, file_path)` media rows; `tick` is
        called once per row (the export's heartbeat).

        Relative paths with a usable name go to the core's copy loop, BATCH_FILES at a
        time (never two of one name in a batch); everything else, and whatever the loop
        hands back, takes the checked path (_copy_one), in row order.  The loop's last
        batch may still be copying when this returns: the next call, drain() or finish()
        settles it (counts, warnings, errors)."""
        if self._flusher is None and FLUSH_EVERY > 0 and staged.SYNCFS is not None \
                and self._sync_fd >= 0:
            self._flusher = _Flusher(self._sync_fd, FLUSH_EVERY)
        batch = self._batch
        if batch is None or self.digest_of_name is not None:  # the checked path checks names
            for post_uri, hash_, raw_path in rows:
                tick()
                try:
                    self._copy_one(_uri(post_uri), raw_path, hash_)
                finally:
                    self.seen += 1
            return
        # The core takes the rows (classifies them, and books their names) and publishes
        # each one it can do to the threads serving the batch, which copy while this
        # thread reads on; a batch is settled (booked, its checked-path rows placed, in
        # row order) before the next one starts.  The last batch of a call is left
        # copying while the export encodes its next posts: the next call, or drain(),
        # settles it first.
        self.drain()
        batch = self._batch
        if batch is None:  # drain() found no openat2: the checked path
            self.copy_rows(rows, tick)
            return
        if self._servers is None:
            self._servers = _Servers(batch, COPY_THREADS)
        it = iter(rows)
        held: tuple[bytes, bytes, bytes] | None = None
        try:
            while True:
                held = batch.feed(it, tick, BATCH_FILES, _classify, held)
                if held is None:
                    self._pending = True
                    if not PIPELINE:
                        self.drain()
                    return
                batch.wait()  # taking jobs too: it ends even if no thread serves
                self._servers.check()
                self._settle_batch(batch)
        except BaseException:
            batch.wait()  # no job left running
            batch.clear()
            raise

    def drain(self) -> None:
        """Wait for the batch copy_rows left copying, and settle it: its files booked,
        its warnings said, the first exception of a serving thread raised."""
        if not self._pending:
            return
        self._pending = False
        batch, servers = self._batch, self._servers
        assert batch is not None and servers is not None
        try:
            batch.wait()  # taking jobs too: it ends even if no thread serves
            servers.check()
            self._settle_batch(batch)
        finally:
            batch.wait()  # an exception here: no job left running
            batch.clear()
        if not batch.openat2:
            self._close_fds()  # this kernel has no openat2: the checked path from now on

    def _settle_batch(self, batch: _core.MediaBatch) -> None:
        """Book each row of a batch whose copying has ended, in order: the core writes
        the media.sha256 lines of the files it placed, this the rest."""
        rows = batch.rows
        try:
            i = 0
            while True:
                i, placed = batch.settle(self._sums_buf, i)
                self.copied += placed
                self.seen += placed
                if i < 0:
                    break
                post_uri, raw_path, index, name = rows[i]
                uri = _uri(post_uri)
                try:
                    if index < 0:
                        self._copy_one(uri, raw_path)
                    else:
                        self._settle(uri, raw_path, os.fsdecode(name), batch.result(index))
                finally:
                    self.seen += 1
                i += 1
            if len(self._sums_buf) >= SUMS_BUFFER:
                self._flush_sums()
        finally:
            batch.clear()

    def _settle(self, uri: str, raw_path: object, name: str,
                result: tuple[int, int, int, int, int, str | None]) -> None:
        """Book one file the core's copy loop handled, or hand it to the checked path."""
        status, err, which, size, done, digest = result
        if status == _PLACED:
            assert digest is not None
            self._remember(name, digest)
            self._sums_line(digest, name)
            self.copied += 1
            return
        if status == _SLOW:
            self._copy_one(uri, raw_path)
            return
        # The source as the checked path names it: no symlink led to it (openat2).
        job = _fast_job(raw_path)
        assert job is not None and which >= 0
        spelling = os.fsdecode(job[0] if which < len(self.roots) else job[1] or job[0])
        src = os.path.join(self._real_roots[which % len(self.roots)],
                           os.path.normpath(spelling))
        if status == _SHRANK:
            self._warn(uri, f"media file {_show(src)} shrank while it was being copied "
                            f"({done} of {size} bytes); skipped")
            return
        if err in FATAL_ERRNOS:
            raise OSError(err, os.strerror(err), os.path.join(self.media_dir, name))
        self._warn(uri, f"media file {_show(src)} could not be copied: {os.strerror(err)}; "
                        "skipped")

    def _copy_one(self, uri: str, raw_path: object, hash_: object = None) -> None:
        if isinstance(raw_path, bytes):
            file_path = os.fsdecode(raw_path)
        else:
            file_path = "" if raw_path is None else str(raw_path)
        name = file_path.replace("\\", "/").rsplit("/", 1)[-1]
        if name in ("", ".", "..") or _CONTROL.search(name):
            self._warn(uri, f"media file_path {_show(file_path)} has no usable file name; "
                            "skipped")
            return
        try:
            fd, st, src = self._open_source(file_path)
        except _Skip as why:
            self._warn(uri, f"media file {_show(file_path)} {why}; skipped")
            return
        try:
            self._place(fd, st, src, name, uri, hash_)
        except _Skip as why:
            self._warn(uri, f"media file {_show(src)} {why}; skipped")
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
            self._warn(uri, f"media file {_show(src)} could not be copied: "
                            f"{exc.strerror or exc}; skipped")
        finally:
            os.close(fd)

    # --- finding and opening the source ----------------------------------------------

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

    def _inside_roots(self, real: str) -> bool:
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep)
                   for r in self._real_roots)

    def _open_source(self, file_path: str) -> tuple[int, os.stat_result, str]:
        """(descriptor, its fstat, resolved path) of the regular file `file_path` names,
        or _Skip saying why there is none."""
        why = "not found"
        where = "" if os.path.isabs(file_path) else \
            " (looked in " + ", ".join(_show(r) for r in self.roots) + ")"
        for c in self._candidates(file_path):
            try:
                real = os.path.realpath(c)
                os.lstat(real)
            except (OSError, ValueError):
                continue
            if not self.any_path and not self._inside_roots(real):
                why = (f"resolves to {_show(real)}, outside the lookup roots "
                       f"({', '.join(_show(r) for r in self.roots)}); --media-root names "
                       "another root, --media-any-path allows any path")
                where = ""
                continue
            try:
                fd = open_nofollow(real, _OPEN_SOURCE)
            except OSError as exc:
                # ELOOP: the last component became a symlink after realpath (a race).
                why = f"could not be opened: {exc.strerror or exc}"
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _Skip(f"is not a regular file ({_show(real)}: {_kind(st)})")
                if st.st_dev in self._pseudo():
                    raise _Skip(f"is on a pseudo file system ({_show(real)}), not a "
                                "stored file")
                # Reads from here on block normally (O_NONBLOCK only guarded the open).
                set_blocking(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd, st, real
        raise _Skip(why + where)

    def _pseudo(self) -> set[int]:
        """Device numbers of the mounted pseudo file systems (from /proc/self/mountinfo)."""
        if self._pseudo_devs is None:
            devs: set[int] = set()
            try:
                with open("/proc/self/mountinfo", "rb") as f:
                    for line in f:
                        left, _, right = line.partition(b" - ")
                        fields, fstype = left.split(), right.split(b" ", 1)[0]
                        if len(fields) > 2 and fstype.decode("ascii", "replace") in PSEUDO_FS:
                            major, _, minor = fields[2].partition(b":")
                            devs.add(os.makedev(int(major), int(minor)))
            except (OSError, ValueError):
                pass
            # /proc itself, whatever the mount table says (it is unreadable in some jails).
            for pseudo in ("/proc/self", "/sys/kernel"):
                try:
                    devs.add(os.stat(pseudo).st_dev)
                except OSError:
                    pass
            self._pseudo_devs = devs
        return self._pseudo_devs

    # --- placing ---------------------------------------------------------------------

    def _place(self, fd: int, st: os.stat_result, src: str, name: str, uri: str,
               hash_: object = None) -> None:
        dst = os.path.join(self.media_dir, name)
        if os.path.lexists(dst):
            digest = _hash_fd(fd, st.st_size)
            if self._digest_of(name) == digest:
                return  # the same file again (two posts, one image)
            stem, dot, ext = name.rpartition(".")
            for tag in (digest[:HASH_PREFIX], digest):
                alt = f"{stem}-{tag}.{ext}" if dot and stem else f"{name}-{tag}"
                if not os.path.lexists(os.path.join(self.media_dir, alt)):
                    break
                if self._digest_of(alt) == digest:
                    return  # this content already got its own name
            else:
                raise _Skip(f"could not be given a name: {_show(name)} and its hash-suffixed "
                            "alternatives hold other files")
            self._warn(uri, f"media name {_show(name)} is taken by a different file; "
                            f"{_show(src)} saved as {_show(alt)}")
            name, dst = alt, os.path.join(self.media_dir, alt)
            os.lseek(fd, 0, os.SEEK_SET)
        digest = self._write(fd, st, src, dst)
        if self.digest_of_name is not None:
            cid = hash_.decode("ascii", "replace") if isinstance(hash_, bytes) else str(hash_)
            if self.digest_of_name(cid) != digest:
                os.unlink(dst)
                raise _Skip(f"does not match its CID {cid} (SHA-256 {digest})")
        self._remember(name, digest)
        self._sums_line(digest, name)
        self.copied += 1

    def _write(self, fd: int, st: os.stat_result, src: str, dst: str) -> str:
        """Make `dst` (new) hold the `st.st_size` bytes of `fd`; their SHA-256."""
        if self.link == "hardlink":
            try:
                return self._hardlink(fd, st, src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                # Another file system, or links refused: an independent copy instead.
        out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      0o666)
        try:
            try:
                if st.st_dev in self._no_clone:
                    raise OSError(errno.EOPNOTSUPP, "FICLONE failed here before")
                reflink(out, fd)
            except OSError as exc:
                if exc.errno in _NO_CLONE_ERRNOS:
                    self._no_clone.add(st.st_dev)
                digest = _copy_fd(fd, out, st.st_size)
            else:
                # Shared blocks: cut to the size fstat gave, hash what the copy holds.
                os.ftruncate(out, min(st.st_size, os.fstat(out).st_size))
                digest = _hash_fd(out, st.st_size, whole=True)
        except BaseException:
            os.close(out)
            os.unlink(dst)
            raise
        os.close(out)
        return digest

    def _hardlink(self, fd: int, st: os.stat_result, src: str, dst: str) -> str:
        os.link(src, dst, follow_symlinks=False)
        try:
            got = os.lstat(dst)
            if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
                raise _Skip("changed while it was being exported")
            return _hash_fd(fd, st.st_size, whole=True)
        except BaseException:
            os.unlink(dst)
            raise

    def _remember(self, name: str, digest: str) -> None:
        self._digests[name] = digest
        if len(self._digests) > DIGEST_CACHE:
            self._digests.popitem(last=False)

    def _digest_of(self, name: str) -> str | None:
        """The SHA-256 of media/<name> (a file this copier placed)."""
        digest = self._digests.get(name)
        if digest is not None:
            return digest
        try:
            fd = open_nofollow(os.path.join(self.media_dir, name), _OPEN_SOURCE)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            digest = _hash_fd(fd, st.st_size, whole=True)
        finally:
            os.close(fd)
        self._remember(name, digest)
        return digest


def _uri(post_uri: object) -> str:
    return post_uri.decode("utf-8", "replace") if isinstance(post_uri, bytes) \
        else str(post_uri)


def _fast_job(raw_path: object) -> tuple[bytes, bytes | None, bytes] | None:
    """(path, its spelling with `/` for `\\` or None, name) for the core's copy loop, or
    None for the checked path: an absolute path, an unusable name, a NUL byte."""
    if isinstance(raw_path, str):
        raw_path = os.fsencode(raw_path)
    if not isinstance(raw_path, bytes) or not raw_path or b"\0" in raw_path \
            or raw_path.startswith(b"/"):
        return None
    alt = None
    if b"\\" in raw_path:
        alt = raw_path.replace(b"\\", b"/")
        if alt.startswith(b"/"):
            return None
    name = _base_name(alt or raw_path)
    if not name or _ALT_NAME.search(name):
        return None  # unusable, or another row's alternative name: in row order
    return raw_path, alt, name


def _classify(raw_path: object) -> tuple[tuple[bytes, bytes | None, bytes] | None, bytes]:
    """(_fast_job, the name in media/) of a file_path: the core's own for bytes
    (_core.testing.media_classify), this for anything else."""
    job = _fast_job(raw_path)
    return job, job[2] if job is not None else _base_name(raw_path)


def _base_name(raw_path: object) -> bytes:
    """The name in media/ that `file_path` asks for, as bytes; b"" for an unusable one."""
    if isinstance(raw_path, str):
        raw_path = os.fsencode(raw_path)
    if not isinstance(raw_path, bytes):
        return b""
    name = raw_path.replace(b"\\", b"/").rsplit(b"/", 1)[-1]
    if name in (b".", b"..") or _CONTROL_BYTES.search(name):
        return b""
    return name


class _Servers:
    """`threads` threads of their own serving the core's batch (MediaBatch.serve) for as
    long as the copier lives."""

    def __init__(self, batch: _core.MediaBatch, threads: int) -> None:
        self.batch = batch
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        try:
            for _ in range(threads):
                t = threading.Thread(target=self._work, name="skyexport-media", daemon=True)
                t.start()
                self.threads.append(t)
        except BaseException:
            self.stop()
            raise

    def _work(self) -> None:
        try:
            self.batch.serve()
        except BaseException as exc:  # handed to the copying thread (check)
            self.errors.append(exc)

    def check(self) -> None:
        """Raise the first exception a serving thread met."""
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        """End the threads and wait for them (never leaving one using media/'s
        descriptor, even when interrupted); then raise the interruption, if any."""
        self.batch.stop()
        threads, self.threads = self.threads, []
        _join_all(threads)


def _join_all(threads: list[threading.Thread]) -> None:
    """Wait for every thread to end, even when interrupted meanwhile; then raise the
    interruption, if any."""
    interrupted: BaseException | None = None
    for t in threads:
        while t.is_alive():
            try:
                t.join()
            except BaseException as exc:
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class _Flusher:
    """A thread that has media/'s files written out while they are being copied: a
    syncfs(2) of its file system every `every` seconds, so that the one before the export
    is published waits for little more than the last files' writes (the device works
    while the copy goes on).  Its first error is kept for MediaCopier.finish to raise (a
    write-back error is reported once to each descriptor: the final syncfs, on the same
    descriptor, would not see it again)."""

    def __init__(self, fd: int, every: float) -> None:
        self.fd = fd
        self.every = every
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="skyexport-flush", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sync = staged.SYNCFS
        try:
            while sync is not None and not self._stop.wait(self.every):
                sync(self.fd)
        except NotImplementedError:
            pass  # no syncfs here: the final sync fsyncs file by file
        except BaseException as exc:  # handed to finish()
            self.error = exc

    def stop(self) -> None:
        """End the thread and wait for it; then raise the interruption, if any."""
        self._stop.set()
        _join_all([self.thread])


def _show(path: str) -> str:
    """A path for a message: its bytes as UTF-8, anything else escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return word
    return "not a file"


def _copy_fd(src: int, dst: int, size: int) -> str:
    """Copy `size` bytes from `src` to `dst`, hashing them as they pass: one read."""
    h = hashlib.sha256()
    left = size
    while left > 0:
        chunk = os.read(src, min(CHUNK, left))
        if not chunk:
            raise _Skip(f"shrank while it was being copied ({size - left} of {size} bytes)")
        h.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        left -= len(chunk)
    return h.hexdigest()


def _hash_fd(fd: int, size: int, whole: bool = False) -> str:
    """SHA-256 of the first `size` bytes of `fd` from its current offset (from the start
    with `whole`), never reading more."""
    h = hashlib.sha256()
    pos = 0 if whole else os.lseek(fd, 0, os.SEEK_CUR)
    left = size
    while left > 0:
        chunk = os.pread(fd, min(CHUNK, left), pos)
        if not chunk:
            raise _Skip(f"shrank while it was being copied ({size - left} of {size} bytes)")
        h.update(chunk)
        pos += len(chunk)
        left -= len(chunk)
    if not whole:
        os.lseek(fd, pos, os.SEEK_SET)
    return h.hexdigest()
