"""What the file-safety rules need from the operating system, and how each is had where the
usual call is missing.  Everything else imports these instead of `fcntl`, `resource` or the
`os.O_*` flags, so that the package imports on any platform and each rule is either kept
another way or refused with one clear line (PlatformError) - never silently weakened.

    need                   Linux             macOS                 elsewhere
    fdatasync(fd)          os.fdatasync      fcntl F_FULLFSYNC     os.fsync
    fsync(fd)              os.fsync          fcntl F_FULLFSYNC     os.fsync
    open_nofollow(...)     O_NOFOLLOW        O_NOFOLLOW            lstat, open, fstat: same
                                                                   file or ELOOP
    open_dir(...)          O_DIRECTORY       O_DIRECTORY           open, fstat: S_ISDIR or
                                                                   ENOTDIR
    O_NONBLOCK             os.O_NONBLOCK     os.O_NONBLOCK         0 where there are no FIFOs
                                                                   (Windows); else reading
                                                                   a name is PlatformError
    flock(fd, ...)         fcntl.flock       fcntl.flock           PlatformError
    reflink(dst, src)      ioctl FICLONE     OSError(ENOTSUP)      OSError(ENOTSUP): the
                                                                   caller copies
    require_dir_fd(what)   ok                ok                    PlatformError
    peak_rss_bytes()       ru_maxrss KiB     ru_maxrss bytes       None (no `resource`)

F_FULLFSYNC: macOS's fsync(2) hands the data to the drive but not through its cache;
F_FULLFSYNC does, which is what fdatasync promises on Linux.  Where a file system refuses
it (some network file systems), fsync is all that file system offers and is used.
O_CREAT|O_EXCL never follows a symbolic link (POSIX), so an exclusive create needs no
O_NOFOLLOW: O_NOFOLLOW below is 0 where the platform lacks it, for those calls only.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .errors import ExportError

__all__ = ["FICLONE", "HAVE_DIR_FD", "LOCK_EX", "LOCK_NB", "O_CLOEXEC", "O_DIRECTORY",
           "O_NOFOLLOW", "O_NONBLOCK", "PlatformError", "exclusive_temp", "fdatasync", "flock",
           "fsync", "open_dir", "open_nofollow", "peak_rss_bytes", "reflink",
           "require_dir_fd", "set_blocking"]

O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)  # Windows: descriptors are not inherited anyway
FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (copy-on-write file systems)
HAVE_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
LOCK_EX: int = getattr(fcntl, "LOCK_EX", 2)
LOCK_NB: int = getattr(fcntl, "LOCK_NB", 4)


class PlatformError(ExportError):
    """This platform lacks something a safety rule needs, and nothing else keeps it."""


def _full_fsync(fd: int) -> bool:
    """F_FULLFSYNC where there is one (macOS); False where not or refused."""
    op = getattr(fcntl, "F_FULLFSYNC", None)
    if op is None:
        return False
    try:
        fcntl.fcntl(fd, op)
    except OSError:
        return False
    return True


def fdatasync(fd: int) -> None:
    """The file's data on stable storage (its size too, not necessarily its times)."""
    if _full_fsync(fd):
        return
    sync = getattr(os, "fdatasync", None)
    if sync is not None:
        sync(fd)
    else:
        os.fsync(fd)


def fsync(fd: int) -> None:
    """The file's data and metadata on stable storage (a directory's entries, for one)."""
    if not _full_fsync(fd):
        os.fsync(fd)


def open_nofollow(path: str | bytes | os.PathLike[str], flags: int, mode: int = 0o777, *,
                  dir_fd: int | None = None) -> int:
    """os.open that never follows a symbolic link in the last component: OSError(ELOOP) if it
    is one.  With O_NOFOLLOW where there is one; else the name is lstat'ed, opened and the
    descriptor fstat'ed, and anything but the same file (a link, or a swap in between) is
    closed again and refused with ELOOP."""
    if (not O_NONBLOCK and hasattr(os, "mkfifo") and not flags & (os.O_WRONLY | os.O_RDWR)
            and not flags & O_DIRECTORY):
        # Reading a name that may be (or become) a FIFO would hang without O_NONBLOCK.
        raise PlatformError(f"this platform ({sys.platform}) has FIFOs but no O_NONBLOCK, "
                            "so skyexport cannot open a file it is given without risking a "
                            "hang; use Linux or macOS")
    if O_NOFOLLOW:
        return os.open(path, flags | O_NOFOLLOW, mode, dir_fd=dir_fd)
    if flags & os.O_CREAT and flags & os.O_EXCL:
        return os.open(path, flags, mode, dir_fd=dir_fd)  # O_EXCL follows nothing
    before = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(before.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(path))
    fd = os.open(path, flags, mode, dir_fd=dir_fd)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(path))
    return fd


def open_dir(path: str | bytes | os.PathLike[str], flags: int = os.O_RDONLY, *,
             dir_fd: int | None = None, nofollow: bool = False) -> int:
    """A descriptor on the directory `path`: OSError(ENOTDIR) if it is anything else (with
    O_DIRECTORY where there is one, else by fstat)."""
    flags |= O_DIRECTORY | O_CLOEXEC
    fd = (open_nofollow(path, flags, dir_fd=dir_fd) if nofollow
          else os.open(path, flags, dir_fd=dir_fd))
    if not O_DIRECTORY and not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fsdecode(path))
    return fd


def sha256_regular(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """(SHA-256 hex digest, size) of `path` if it is a regular file, opened without
    following a symbolic link (open_nofollow) or blocking on a FIFO; None when it cannot
    be opened or is anything but a regular file.  An error while reading raises OSError.
    For files named by untrusted input: a blob, a backup's repo.car."""
    import hashlib

    try:
        fd = open_nofollow(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK
                           | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def exclusive_temp(final: str) -> str:
    """Create (O_EXCL, the umask's permissions) and return a fresh hidden name beside
    `final`, for a file built there and linked into place when complete."""
    head, base = os.path.split(final)
    while True:
        tmp = os.path.join(head, f".{base}.{os.urandom(4).hex()}.synth-tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o666))
        except FileExistsError:
            continue
        return tmp


def set_blocking(fd: int) -> None:
    """Reads from here on block normally (O_NONBLOCK only guarded the open)."""
    if O_NONBLOCK:
        os.set_blocking(fd, True)


def flock(fd: int, operation: int) -> None:
    """fcntl.flock(fd, operation): the lock that tells a live export's staged directory from
    a dead one's (exporter/staged.py).  Refused where there is no flock: a lock that does not end
    with its process would let a cleaner remove a live export, or never remove a dead one."""
    lock = getattr(fcntl, "flock", None)
    if lock is None:
        raise PlatformError(f"this platform ({sys.platform}) has no flock(2), which skyexport "
                            "needs to lock an export while it is built; use Linux or macOS "
                            "(on Windows: WSL)")
    lock(fd, operation)


def reflink(dst_fd: int, src_fd: int) -> None:
    """Make `dst_fd` share `src_fd`'s blocks (FICLONE: Btrfs, XFS, bcachefs); OSError where
    the platform or file system cannot, and the caller copies instead."""
    ioctl = getattr(fcntl, "ioctl", None)
    if ioctl is None or not sys.platform.startswith("linux"):
        raise OSError(errno.ENOTSUP, "no FICLONE on this platform")
    ioctl(dst_fd, FICLONE, src_fd)


def require_dir_fd(what: str) -> None:
    """Refuse `what` where names cannot be opened relative to a directory descriptor (it is
    how `what` avoids following a link swapped in between two calls)."""
    if not HAVE_DIR_FD:
        raise PlatformError(f"{what} needs files opened relative to a directory (dir_fd), "
                            f"which this platform ({sys.platform}) lacks; run it on Linux or "
                            "macOS")


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size in bytes (getrusage: KiB on Linux, bytes on
    macOS), or None where there is no `resource` module."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
