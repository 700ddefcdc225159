"""The staged directory: where an export is built, hidden, until it is whole.

    OUTPUT/.skyexport-tmp-<pid>-<random>/   built here, holding a lock while its process
                                            lives; renamed to
    OUTPUT/YYYY-MM-DD_HH-MM-SS[-N]/         only when complete, never replacing anything

StagedDir owns the temporary directory, its lock, the final rename, the fsyncs and the
clean-up on every failure path.  Temporary directories left by a killed process (lock
free) are removed by the next export into the same OUTPUT.

The lock protocol (no instant in which a live export's directory looks stale): the owner
creates the directory, flocks the directory itself, and only then creates `.lock` (and
flocks that too, for cleaners of earlier versions).  A cleaner removes a directory only if
its lock is free and then either `.lock` exists and its lock is free too, or there is no
`.lock` and the directory is older than STALE_UNLOCKED_S (its owner died between mkdir and
flock).

An interruption after the final rename does not unpublish anything: `published` is the
new name from the instant it is visible, and the exception that interrupted carries it as
`published_directory`, so that the caller can say so.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from .._core import rename_noreplace
from .._core import syncfs as _core_syncfs
from .._platform import (
    LOCK_EX,
    LOCK_NB,
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    flock,
    fsync,
    open_dir,
    open_nofollow,
)
from ..errors import OutputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

TMP_PREFIX = ".skyexport-tmp-"
LOCK_NAME = ".lock"
STALE_UNLOCKED_S = 60      # a temp dir with no lock file yet is only stale after this
# syncfs(2), or None to fsync file by file (tests/unit/test_media_sync.py runs both).
SYNCFS: Callable[[int], None] | None = _core_syncfs


class StagedDir:
    """A new hidden directory in `out` to build one export in (a context manager).

    `publish()` renames it to OUTPUT/YYYY-MM-DD_HH-MM-SS (local time; -2, -3... while the
    name is taken) and makes that durable; leaving the `with` block without publishing
    removes it, whatever the exception."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path: Path | None = None
        self.published: Path | None = None   # set the instant the export is visible
        self._renaming: Path | None = None   # the name a rename is being tried under
        self._fds: list[int] = []

    def __enter__(self) -> StagedDir:
        self.path, self._fds = _make_temp_dir(self.out)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None:
                if self.is_published():
                    mark_published(exc, self.published)
                elif self.path is not None:
                    _rmtree(self.path)
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds = []

    def is_published(self) -> bool:
        """Whether the export is visible under its final name (also when an interruption
        came between the rename and the bookkeeping)."""
        if self.published is None and self._renaming is not None and self.path is not None \
                and not os.path.lexists(self.path) and os.path.isdir(self._renaming):
            self.published = self._renaming
        return self.published is not None

    def publish(self) -> Path:
        """Make the finished directory durable, then visible under its final name."""
        tmp = self.path
        assert tmp is not None
        try:
            fsync_dir(tmp)
            os.unlink(tmp / LOCK_NAME)  # the lock stays held through our open fds
            base = time.strftime("%Y-%m-%d_%H-%M-%S")
            for n in range(1, 10_000):
                final = self.out / (base if n == 1 else f"{base}-{n}")
                self._renaming = final
                try:
                    rename_noreplace(tmp, final)
                except FileExistsError:
                    continue
                except NotImplementedError:
                    try:
                        os.mkdir(final)   # claim the name, then replace our own empty dir
                    except FileExistsError:
                        continue
                    os.rename(tmp, final)
                self.published = final
                fsync_dir(self.out)
                return final
        except OSError as exc:
            raise output_error(exc, tmp) from None
        raise OutputError(f"no free export directory name under {self.out} for {base}")


def mark_published(exc: BaseException, directory: Path | None) -> None:
    """Attach the published directory to the exception that interrupted after it."""
    if directory is not None and not hasattr(exc, "published_directory"):
        try:
            exc.published_directory = directory  # type: ignore[attr-defined]
        except AttributeError:
            pass


def prepare_output(out: Path) -> tuple[Path, bool]:
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
                fds.append(open_dir(path, nofollow=True))
                flock(fds[0], LOCK_EX | LOCK_NB)
            except OSError:
                continue  # gone, not ours to open, or a live export holds it
            try:
                fds.append(open_nofollow(path / LOCK_NAME, os.O_RDWR | O_CLOEXEC))
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
                flock(fds[1], LOCK_EX | LOCK_NB)  # earlier versions' lock
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
        fds.append(open_dir(tmp, nofollow=True))
        flock(fds[0], LOCK_EX)
        fds.append(os.open(tmp / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
                           | O_CLOEXEC, 0o600))
        flock(fds[1], LOCK_EX)
    except BaseException as exc:
        for fd in fds:
            os.close(fd)
        _rmtree(tmp)
        if isinstance(exc, OSError):
            raise output_error(exc, out) from None
        raise
    return tmp, fds


def open_new(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise output_error(exc, path) from None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in a directory durable (its entries, not the files' contents)."""
    fd = open_dir(path)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def sync_files(path: str | os.PathLike[str], dir_fd: int = -1) -> None:
    """Make the data of the files in the directory `path` durable: one syncfs(2) of its
    file system where that exists (Linux), else an fsync of each regular file in it.
    `dir_fd`, a descriptor of `path` opened before the files were written, is the one
    syncfs uses (a write-back error is reported only to descriptors older than it)."""
    if SYNCFS is not None:
        fd = dir_fd if dir_fd >= 0 else open_dir(path)
        try:
            SYNCFS(fd)
            return
        except NotImplementedError:
            pass
        finally:
            if fd != dir_fd:
                os.close(fd)
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            f = open_nofollow(entry.path, os.O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            try:
                fsync(f)
            finally:
                os.close(f)


def rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def output_error(exc: OSError, path: Path) -> OutputError:
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


def _rmtree(path: Path) -> None:
    """Remove a temporary directory of ours, whatever is in it."""
    import shutil  # only on failure paths: its import costs a small export's time

    shutil.rmtree(path, ignore_errors=True)
