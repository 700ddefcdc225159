"""Copying the media files of exported posts into EXPORT/media/ (FR-007).

Streamed per batch: the writer core hands over the URIs of the batch's posts with
`has_media`; their `media` rows are read in the export's snapshot and each file is placed
at `media/<basename>`.  Nothing is remembered across batches: a file already present at
its destination with the same size and content is the same file (bskyarchive names media
by content hash), so duplicates are found on disk, not in a map.

Safety: the destination is always `media/` + a single path component taken from the last
`/` or `\\` of `file_path`; `..`, `.`, empty names are refused, so nothing can be written
outside the export directory.  Destinations are created with O_EXCL / link(2), which never
follow or replace an existing entry.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (copy-on-write filesystems)


class MediaCopier:
    """Places media files into `media_dir`; counts, and reports misses as warnings."""

    def __init__(self, media_dir: Path, roots: list[Path], sums_file: Path) -> None:
        self.media_dir = media_dir
        self.roots = roots
        self.copied = 0       # distinct files now in media/
        self.seen = 0         # media rows handled
        self.warnings: list[tuple[str, str]] = []  # (post uri, message), capped by caller
        self.warnings_total = 0
        media_dir.mkdir()
        # "<sha256>  media/<name>" per file: the manifest hashes this list, verify checks it.
        self._sums = open(sums_file, "w", encoding="utf-8", newline="\n")

    def close(self) -> None:
        if not self._sums.closed:
            self._sums.close()

    def _warn(self, uri: str, message: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < 1000:
            self.warnings.append((uri, message))

    def _resolve(self, file_path: str) -> Path | None:
        p = Path(file_path)
        candidates = [p] if p.is_absolute() else [root / p for root in self.roots]
        for c in candidates:
            try:
                if c.is_file():
                    return c
            except OSError:
                continue
        return None

    def copy_rows(self, rows: Iterable[tuple[bytes, bytes, bytes]],
                  tick: Callable[[], None] = lambda: None) -> None:
        for post_uri, _hash, raw_path in rows:
            self.seen += 1
            tick()
            uri = post_uri.decode("utf-8", "replace")
            file_path = os.fsdecode(raw_path) if raw_path else ""
            name = file_path.replace("\\", "/").rsplit("/", 1)[-1]
            if name in ("", ".", ".."):
                self._warn(uri, f"media file_path {file_path!r} has no file name; skipped")
                continue
            src = self._resolve(file_path)
            if src is None:
                self._warn(uri, f"media file {file_path} not found (looked in "
                                + ", ".join(str(r) for r in self.roots) + ")")
                continue
            try:
                self._place(src, name, uri)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise
                self._warn(uri, f"media file {src} could not be copied: {exc.strerror}")

    def _place(self, src: Path, name: str, uri: str) -> None:
        dst = self.media_dir / name
        if os.path.lexists(dst):
            if not dst.is_symlink() and _same_content(src, dst):
                return  # the same file again (two posts, one image)
            stem, dot, ext = name.rpartition(".")
            digest = _sha256_file(src)[:12]
            name = f"{stem}-{digest}.{ext}" if dot and stem else f"{name}-{digest}"
            dst = self.media_dir / name
            if os.path.lexists(dst):
                return
            self._warn(uri, f"media name {src.name} taken by other content; saved as {name}")
        _link_or_copy(src, dst)
        self.copied += 1
        self._sums.write(f"{_sha256_file(dst)}  media/{name}\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no bytes copied; media files are immutable, named by content), else a
    reflink, else a byte copy.  Never follows or replaces an existing `dst`."""
    try:
        os.link(src, dst, follow_symlinks=True)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # another filesystem (EXDEV), or links not allowed: copy instead
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            except OSError:
                shutil.copyfileobj(fin, fout, 1 << 20)
    except BaseException:
        os.unlink(dst)
        raise


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _same_content(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
    except OSError:
        return False
    return _sha256_file(a) == _sha256_file(b)
