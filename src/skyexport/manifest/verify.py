"""`verify`: an export checked against its manifest (write.py says what the manifest
holds).  The manifest is scanned (scan.py), the data file hashed and its posts counted
(counters.py), media.sha256 and media/ sorted in bounded memory and walked side by side.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path

from .._platform import (
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NONBLOCK,
    open_dir,
    open_nofollow,
    require_dir_fd,
)
from ..defaults import DATA_FILES, MAX_WARNINGS, RECORDS_DIR, SUFFIXES, records_csv_header
from .counters import _COUNTERS, _counter, _CsvPosts, _JsonlPosts, _JsonPosts
from .scan import _BadManifest, _Scanner
from .write import MANIFEST, MEDIA_SUMS

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from ..exporter.job import ExportResult

class VerifyReport:
    """What `verify` found: `problems_total` 0 (`ok`) means every byte is as the manifest
    says; `problems` holds the first MAX_WARNINGS (1000) problems, in the order they were
    found (`verify`'s `on_problem` sees them all); `checked` files were hashed."""

    __slots__ = ("directory", "checked", "problems", "problems_total", "_on_problem")

    def __init__(self, directory: Path, checked: int = 0,
                 problems: list[str] | None = None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.checked = checked
        self.problems: list[str] = [] if problems is None else problems
        self.problems_total = len(self.problems)
        self._on_problem = on_problem

    def __repr__(self) -> str:
        return (f"VerifyReport(directory={self.directory!r}, checked={self.checked!r}, "
                f"problems={self.problems!r}, problems_total={self.problems_total!r})")

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def _add(self, problem: str) -> None:
        self.problems_total += 1
        if len(self.problems) < MAX_WARNINGS:
            self.problems.append(problem)
        if self._on_problem is not None:
            self._on_problem(problem)


# --- verify -----------------------------------------------------------------------------------
#
# verify reads only the export.  The export directory is opened with O_NOFOLLOW and every
# name in it is opened relative to that descriptor (media files relative to media/'s own
# descriptor, itself opened with O_NOFOLLOW), after an lstat that says it is a regular file,
# and checked again with fstat on the open descriptor: a symbolic link is never followed and
# a FIFO or device is never opened.  Everything is streamed in BLOCK-sized reads: the
# manifest is scanned, never loaded whole, and media.sha256 is read line by line.

BLOCK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC  # with open_nofollow
_DIR_FLAGS = _OPEN_FLAGS | O_DIRECTORY  # (open_dir adds O_DIRECTORY itself)

_FORMAT_OF = {name + suffix: fmt for fmt, name in DATA_FILES.items()
              for suffix in ("", *SUFFIXES.values())}
_CODEC_OF = {name + suffix: codec for name in DATA_FILES.values()
             for codec, suffix in SUFFIXES.items()}
_HEX = frozenset("0123456789abcdef")
_SUM_LINE = re.compile(rb"([0-9a-f]{64})  media/([^/\x00]+)")
_MAX_LINE = 64 + 2 + len("media/") + 4096


def _plain_name(name: object) -> bool:
    """A file name the manifest may list: one component, nothing that climbs out."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST)
            and "/" not in name and "\\" not in name and "\0" not in name)


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


def _show(name: str | bytes) -> str:
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    return raw.decode("utf-8", "backslashreplace")


class _NotRegular(Exception):
    """A name in the export that is not a regular file; the message says what it is."""


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "a special file"


def _not_regular(shown: str, kind: str) -> str:
    return f"{shown}: {kind}, not a regular file (verify neither follows nor opens it)"


def _open_regular(name: str | bytes, dir_fd: int) -> int:
    """A descriptor on the regular file `name` in `dir_fd`; never follows a link, never
    opens anything else (lstat first, fstat after)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(_kind(st.st_mode))
    try:
        fd = open_nofollow(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
            raise _NotRegular("a symbolic link") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _NotRegular(_kind(st.st_mode))
    return fd


def _blocks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, BLOCK):
        yield chunk


def _read_manifest(dir_fd: int) -> dict[str, Any]:
    """The members of manifest.json verify reads, decoded; raises _BadManifest,
    _NotRegular, OSError."""
    import msgspec

    fd = _open_regular(MANIFEST, dir_fd)
    try:
        raw = _Scanner(fd).members()
    finally:
        os.close(fd)
    try:
        return {k: msgspec.json.decode(v) for k, v in raw.items()}
    except (msgspec.DecodeError, RecursionError) as exc:  # depth is bounded: no recursion
        raise _BadManifest(f"not valid JSON ({exc})") from None


def _sum_lines(fd: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) of media.sha256 from its start, split on b"\\n" only (a name may
    hold U+2028, U+2029, U+0085); a line longer than _MAX_LINE comes as None, unheld."""
    os.lseek(fd, 0, os.SEEK_SET)
    rest, n, overlong = b"", 0, False
    for chunk in _blocks(fd):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            n += 1
            yield n, None if overlong or len(line) > _MAX_LINE else line
            overlong = False
        if len(rest) > _MAX_LINE:
            rest, overlong = b"", True
    if rest or overlong:
        yield n + 1, None if overlong else rest


# --- verify itself -------------------------------------------------------------------------------

def verify(directory: str | os.PathLike[str] | ExportResult, *,
           on_problem: Callable[[str], None] | None = None) -> VerifyReport:
    """Check an export against its manifest and report every difference: re-hash the data
    file, `media.sha256` and each media file that list names; count the posts in the data
    file against `post_count` and check its name and shape against `export_format`; check
    that media.sha256 lists every file in `media/` once and nothing else (`media_count`
    included); report any file or directory the manifest does not know.

    Only the export is read: a symbolic link is never followed and nothing but a regular
    file is opened (each is reported instead).  The manifest's names are only trusted as
    plain names inside the export directory (`media/<name>` for media); anything else is
    itself reported, never opened.  Memory stays bounded whatever the files' sizes and
    however long the media list (a long one is sorted through temporary files in TMPDIR).

    `directory` is the export directory, or the ExportResult that `export()` returned
    (its `directory`); a result of an export to a stream has none: OptionError.
    `on_problem` is called with each problem as it is found; the report keeps the first
    1000 and counts them all (`problems_total`).
    """
    if isinstance(directory, (str, os.PathLike)):
        d = Path(directory)
    else:
        where = getattr(directory, "directory", None)
        if where is None:
            from ..errors import OptionError

            raise OptionError("verify needs an export directory, and this ExportResult has "
                              "none (its export went to a stream, with no manifest)")
        d = Path(where)
    report = VerifyReport(d, on_problem=on_problem)
    require_dir_fd("skyexport verify")
    try:
        dir_fd = open_dir(d, _OPEN_FLAGS, nofollow=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(d)):
            report._add(f"{d} is a symbolic link; verify does not follow it, "
                                   "give it the export directory itself")
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            report._add(f"{d} is not a directory")
        else:
            report._add(f"{d} cannot be opened ({exc.strerror})")
        return report
    try:
        _verify(dir_fd, report)
    except OSError as exc:  # the export changed under verify, or a directory is unreadable
        report._add(f"{_show(exc.filename or str(d))}: cannot be read "
                               f"({exc.strerror})")
    finally:
        os.close(dir_fd)
    return report


def _verify(dir_fd: int, report: VerifyReport) -> None:
    try:
        manifest = _read_manifest(dir_fd)
    except FileNotFoundError:
        report._add(f"{MANIFEST} is missing; is {report.directory} a skyexport export?")
        return
    except _NotRegular as exc:
        report._add(_not_regular(MANIFEST, str(exc)))
        return
    except OSError as exc:
        report._add(f"{MANIFEST} cannot be read ({exc.strerror})")
        return
    except _BadManifest as exc:
        report._add(f"{MANIFEST} is not a valid manifest: {exc}")
        return
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict) or not checksums:
        report._add(f"{MANIFEST} has no checksums; was it written by skyexport?")
        return

    expected: dict[str, tuple[str, int | None]] = {}
    uncompressed: dict[str, tuple[str, int]] = {}
    compression = manifest.get("compression")
    if compression is not None and compression not in SUFFIXES:
        report._add(f"{MANIFEST}: compression {compression!r} is not one of "
                    f"{', '.join(SUFFIXES)}")
        compression = None
    for name, info in checksums.items():
        if not _plain_name(name):
            report._add(f"{MANIFEST} lists {name!r}, which is not a plain file name")
            continue
        digest = info.get("sha256") if isinstance(info, dict) else None
        size = info.get("bytes") if isinstance(info, dict) else None
        if not _is_digest(digest) or not (size is None or isinstance(size, int)):
            report._add(f"{MANIFEST}: the checksum of {name} is malformed")
            continue
        expected[name] = (digest, size)  # type: ignore[assignment]
        if name in _CODEC_OF:
            udigest = info.get("uncompressed_sha256")
            usize = info.get("uncompressed_bytes")
            if not _is_digest(udigest) or not isinstance(usize, int) \
                    or isinstance(usize, bool):
                report._add(f"{MANIFEST}: the uncompressed checksum of {name} is "
                            "missing or malformed")
            else:
                uncompressed[name] = (udigest, usize)

    fmt = manifest.get("export_format")
    post_count = manifest.get("post_count")
    data_names = [n for n in expected if n in _FORMAT_OF]
    data_name = None
    if fmt not in DATA_FILES:
        report._add(f"{MANIFEST}: export_format {fmt!r} is not one of json, csv, jsonl")
    else:
        data_name = DATA_FILES[fmt] + (SUFFIXES[compression] if compression else "")
        if data_name not in expected:
            found = ", ".join(data_names) or "no data file"
            said = f" and compression {compression}" if compression else ""
            report._add(f"{MANIFEST} says export_format {fmt}{said}, but its checksums "
                        f"list {found}, not {data_name}")
    if len(data_names) > 1:
        report._add(f"{MANIFEST} lists {len(data_names)} data files "
                    f"({', '.join(sorted(data_names))}); an export has one")
    if not isinstance(post_count, int) or isinstance(post_count, bool) or post_count < 0:
        report._add(f"{MANIFEST}: post_count {post_count!r} is not a count of posts")
        post_count = None

    for name in sorted(expected):
        if name == MEDIA_SUMS:
            continue  # below, with the files it lists
        digest, size = expected[name]
        counter = _counter(_FORMAT_OF[name], manifest) if name in _FORMAT_OF else None
        feed = counter.feed if counter is not None else None
        unpack = None
        if counter is not None and name in _CODEC_OF and name not in uncompressed:
            counter = None  # no size to stop at: reported above, not decompressed
            feed = None
        elif counter is not None and name in _CODEC_OF:
            try:
                unpack = _Decompressing(_CODEC_OF[name], counter.feed, uncompressed[name][1])
            except ImportError:
                report._add(f"{name}: the uncompressed posts are not checked: zstd "
                            "needs the zstandard package (pip install 'skyexport[zstd]')")
                counter = None
                feed = None
            else:
                feed = unpack.feed
        if not _check_file(dir_fd, name, name, digest, size, feed, report):
            continue
        if unpack is not None:
            if unpack.over:
                report._add(f"{name}: decompresses to more than the "
                            f"{unpack.limit} bytes {MANIFEST} says (verify stopped there)")
                continue
            why = unpack.finish()
            if why is not None:
                report._add(f"{name}: not a valid {_CODEC_OF[name]} stream: {why}")
                continue
            udigest, usize = uncompressed[name]
            if unpack.size != usize:
                report._add(f"{name}: decompresses to {unpack.size} bytes, "
                            f"{MANIFEST} says {usize}")
            elif unpack.sha256.hexdigest() != udigest:
                report._add(f"{name}: decompressed SHA-256 "
                            f"{unpack.sha256.hexdigest()}, the manifest says "
                            f"{udigest}")
        if counter is not None:
            why = counter.shape()
            if why is not None:
                report._add(f"{name}: not a {_FORMAT_OF[name]} export's data file: {why}")
            elif name == data_name and post_count is not None \
                    and counter.count != post_count:
                report._add(f"{name}: holds {counter.count} posts, {MANIFEST} says "
                            f"post_count {post_count}")

    records = manifest.get("records")
    if records is not None:
        _check_records(dir_fd, records, fmt, manifest, report)
    media_fd, media_kind = _open_media(dir_fd)
    try:
        _check_media(dir_fd, media_fd, media_kind, expected, manifest, report)
        _unknown_entries(dir_fd, "", lambda n: n in expected or n in (MANIFEST, "media")
                         or (records is not None and n == RECORDS_DIR), report)
        if media_kind is not None and media_kind != "missing":
            report._add(f"media: {media_kind}, not a directory (verify neither follows "
                        "nor opens it)")
    except _SortError as exc:
        report._add(str(exc))
    finally:
        if media_fd is not None:
            os.close(media_fd)


def _check_records(dir_fd: int, records: object, fmt: object, manifest: dict[str, Any],
                   report: VerifyReport) -> None:
    """The records/ files the manifest lists (a CAR's other collections): each one's
    SHA-256, size, shape and record count; nothing else in records/."""
    if not isinstance(records, dict) or fmt not in DATA_FILES:
        report._add(f"{MANIFEST}: `records` is not a map of records files")
        return
    try:
        st = os.stat(RECORDS_DIR, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            report._add(f"{RECORDS_DIR}: {_kind(st.st_mode)}, not a directory (verify "
                        "neither follows nor opens it)")
            return
        rec_fd = open_dir(RECORDS_DIR, _OPEN_FLAGS, dir_fd=dir_fd, nofollow=True)
    except FileNotFoundError:
        if records:
            report._add(f"{RECORDS_DIR}/: missing")
        return
    except OSError as exc:
        report._add(f"{RECORDS_DIR}/: cannot be read ({exc.strerror})")
        return
    try:
        for name in sorted(records):
            info = records[name]
            base = name[len(RECORDS_DIR) + 1:] if isinstance(name, str) else ""
            if not (name.startswith(RECORDS_DIR + "/") and _plain_name(base)
                    and base.endswith("." + str(fmt))):
                report._add(f"{MANIFEST}: `records` lists {name!r}, not "
                            f"{RECORDS_DIR}/NSID.{fmt}")
                continue
            digest = info.get("sha256") if isinstance(info, dict) else None
            size = info.get("bytes") if isinstance(info, dict) else None
            count = info.get("records") if isinstance(info, dict) else None
            if not _is_digest(digest) or not isinstance(size, int) \
                    or not isinstance(count, int) or isinstance(count, bool):
                report._add(f"{MANIFEST}: the checksum of {name} is malformed")
                continue
            nsid = base[:-len(str(fmt)) - 1]
            counter: _JsonPosts | _JsonlPosts | _CsvPosts
            if fmt == "csv":
                counter = _CsvPosts(bom=manifest.get("csv_bom") is not False,
                                    header=records_csv_header(nsid).encode("ascii"))
            else:
                counter = _COUNTERS[str(fmt)]()
            if not _check_file(rec_fd, base, name, str(digest), size, counter.feed, report):
                continue
            why = counter.shape()
            if why is not None:
                report._add(f"{name}: not a {fmt} records file: {why}")
            elif counter.count != count:
                report._add(f"{name}: holds {counter.count} records, {MANIFEST} says {count}")
        _unknown_entries(rec_fd, RECORDS_DIR + "/",
                         lambda n: f"{RECORDS_DIR}/{n}" in records, report)
    except _SortError as exc:
        report._add(str(exc))
    finally:
        os.close(rec_fd)



def _check_file(dir_fd: int, name: str | bytes, shown: str, digest: str, size: int | None,
                feed: Callable[[bytes], None] | None, report: VerifyReport) -> bool:
    """Hash one listed file (passing each block to `feed`); report what is wrong.
    True if it could be read."""
    try:
        fd = _open_regular(name, dir_fd)
    except FileNotFoundError:
        report._add(f"{shown}: missing")
        return False
    except _NotRegular as exc:
        report._add(_not_regular(shown, str(exc)))
        return False
    except OSError as exc:
        report._add(f"{shown}: cannot be read ({exc.strerror})")
        return False
    h = hashlib.sha256()
    got_size = 0
    try:
        for chunk in _blocks(fd):
            h.update(chunk)
            got_size += len(chunk)
            if feed is not None:
                feed(chunk)
    except OSError as exc:
        report._add(f"{shown}: cannot be read ({exc.strerror})")
        return False
    finally:
        os.close(fd)
    report.checked += 1
    if size is not None and got_size != size:
        report._add(f"{shown}: {got_size} bytes, {MANIFEST} says {size}")
    elif h.hexdigest() != digest:
        report._add(f"{shown}: SHA-256 {h.hexdigest()}, the manifest says {digest}")
    return True


def _open_media(dir_fd: int) -> tuple[int | None, str | None]:
    """(descriptor of media/, None), or (None, what media is instead: "missing", a kind)."""
    try:
        st = os.stat("media", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None, "missing"
    if not stat.S_ISDIR(st.st_mode):
        return None, _kind(st.st_mode)
    try:
        return open_dir("media", _OPEN_FLAGS, dir_fd=dir_fd, nofollow=True), None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None, "a symbolic link"
        return None, f"unreadable ({exc.strerror})"


def _check_media(dir_fd: int, media_fd: int | None, media_kind: str | None,
                 expected: dict[str, tuple[str, int | None]], manifest: dict[str, Any],
                 report: VerifyReport) -> None:
    """Hash media.sha256, then check each media file it lists once, report its repeated
    names, and (media/ being a directory) every entry of media/ it does not list.

    The list and the listing of media/ are each sorted in bounded memory (_ExternalSort)
    and walked side by side, so memory does not grow with either.  Reports come in a stable
    order: malformed lines in line order, then, name by name (in the order of their escaped
    bytes), the file's own check, the lines that repeat it, an entry of media/ not listed."""
    if MEDIA_SUMS not in expected:
        if media_fd is not None:
            _unknown_entries(media_fd, "media/", lambda n: False, report)
        return
    digest, size = expected[MEDIA_SUMS]
    if not _check_file(dir_fd, MEDIA_SUMS, MEDIA_SUMS, digest, size, None, report):
        if media_fd is not None:
            _unknown_entries(media_fd, "media/", lambda n: False, report)
        return
    with _ExternalSort() as listed_sort, _ExternalSort() as entries_sort:
        fd = _open_regular(MEDIA_SUMS, dir_fd)
        try:
            for n, line in _sum_lines(fd):
                m = _SUM_LINE.fullmatch(line) if line is not None else None
                if m is None or m[2] in (b".", b".."):
                    shown = "(over 4 KiB)" if line is None else repr(_show(line[:120]))
                    report._add(f"{MEDIA_SUMS} line {n} is malformed: {shown}")
                    continue
                listed_sort.add(b"%s\0%012d%s\n" % (_escape(m[2]), n, m[1]))
        finally:
            os.close(fd)
        listed_sort.seal()   # a long list's last run goes to disk before media/ is listed
        if media_fd is not None:
            _list_entries(media_fd, entries_sort)
        listed = _walk_media(listed_sort.sorted(), entries_sort.sorted(), media_fd,
                             media_kind, report)
    count = manifest.get("media_count")
    if isinstance(count, int) and count != listed:
        report._add(f"{MEDIA_SUMS} lists {listed} media files, "
                    f"{MANIFEST} says media_count {count}")


def _walk_media(listed: Iterator[bytes], entries: Iterator[bytes], media_fd: int | None,
                media_kind: str | None, report: VerifyReport) -> int:
    """Walk the sorted list records (`name\\0line digest`) and the sorted entries of
    media/ (`name\\0kind`) side by side; the number of names listed (each counted once)."""
    unique = 0
    last = None
    entry = next(entries, None)
    for record in listed:
        key, rest = record.split(b"\0", 1)
        while entry is not None and entry.split(b"\0", 1)[0] < key:
            _report_entry(entry, report)
            entry = next(entries, None)
        present = entry is not None and entry.split(b"\0", 1)[0] == key
        if present:
            entry = next(entries, None)
        name = _unescape(key)
        shown = "media/" + _show(name)
        if key == last:
            report._add(f"{MEDIA_SUMS} line {int(rest[:12])} repeats {shown}")
            continue
        last = key
        unique += 1
        if media_fd is not None:
            if present:
                _check_file(media_fd, name, shown, rest[12:76].decode(), None, None, report)
            else:   # not in the listing of media/: no need to look it up
                report._add(f"{shown}: missing")
        elif media_kind == "missing":
            report._add(f"{shown}: missing")
        else:
            report._add(f"{shown}: not checked, media is {media_kind}")
    while entry is not None:
        _report_entry(entry, report)
        entry = next(entries, None)
    return unique


def _list_entries(dir_fd: int, into: _ExternalSort,
                  known: Callable[[str], bool] | None = None) -> None:
    """Add each entry of a directory that `known` does not accept (all without it) to
    `into`, as `escaped name\\0kind` (kind d: a directory, f: anything else)."""
    with os.scandir(dir_fd) as it:
        for entry in it:
            if known is not None and known(entry.name):
                continue
            kind = b"d" if entry.is_dir(follow_symlinks=False) else b"f"
            into.add(_escape(os.fsencode(entry.name)) + b"\0" + kind + b"\n")


def _report_entry(entry: bytes, report: VerifyReport, prefix: str = "media/") -> None:
    key, kind = entry.split(b"\0", 1)
    shown = _show(os.fsencode(prefix) + _unescape(key))
    if kind.startswith(b"d"):
        report._add(f"{shown}/: a directory the manifest does not know")
    else:
        report._add(f"{shown}: not listed in the manifest")


def _escape(name: bytes) -> bytes:
    """A name as one line of a sort's temporary file: backslash and newline escaped (a name
    holds no NUL, which ends it).  One-to-one, so equal names give equal keys."""
    if b"\\" in name:
        name = name.replace(b"\\", b"\\\\")
    if b"\n" in name:
        name = name.replace(b"\n", b"\\n")
    return name


def _unescape(key: bytes) -> bytes:
    if b"\\" not in key:
        return key
    return b"\\".join(part.replace(b"\\n", b"\n") for part in key.split(b"\\\\"))


class _SortError(Exception):
    """The temporary files of a sort could not be written; the message says where."""


class _ExternalSort:
    """Sorts lines (bytes, each ending in a newline) in bounded memory: up to RUN_BYTES of
    them are sorted in memory; past that, each such run is written to a temporary file
    (tempfile.TemporaryFile in TMPDIR: it has no name on POSIX systems, so nothing is left
    behind even if the process is killed) and the runs are merged, at most FANIN at a
    time, through 64 KiB buffers (4 MiB in all).  A list that fits in one run never touches
    the disk."""

    RUN_BYTES = 8 << 20     # counted with each bytes object's own overhead
    FANIN = 64
    _OVERHEAD = 41          # a bytes object's header and the list's pointer to it

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.held = 0
        self.runs: list[Any] = []

    def __enter__(self) -> _ExternalSort:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.runs:
            f.close()
        self.runs = []
        self.lines = []

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.held += len(line) + self._OVERHEAD
        if self.held >= self.RUN_BYTES:
            self._spill(sorted(self.lines))
            self.lines, self.held = [], 0

    def _temp(self) -> Any:
        import tempfile
        try:
            return tempfile.TemporaryFile(buffering=1 << 16)
        except OSError as exc:
            raise self._error(exc) from None

    @staticmethod
    def _error(exc: OSError) -> _SortError:
        import tempfile
        return _SortError(f"the temporary files that sort a long media list cannot be "
                          f"written in {tempfile.gettempdir()} ({exc.strerror}); set "
                          "TMPDIR to a directory with room")

    def _spill(self, lines: Iterable[bytes]) -> None:
        f = self._temp()
        self.runs.append(f)
        try:
            f.writelines(lines)
            f.flush()
            f.seek(0)
        except OSError as exc:
            raise self._error(exc) from None

    def seal(self) -> None:
        """Once runs are on disk, write the last one too (it then holds no memory)."""
        if self.runs and self.lines:
            self.lines.sort()
            self._spill(self.lines)
            self.lines, self.held = [], 0

    def sorted(self) -> Iterator[bytes]:
        """The lines added, in order (each run is read once: call it once)."""
        import heapq

        self.seal()
        if not self.runs:
            self.lines.sort()
            lines, self.lines = self.lines, []
            return iter(lines)
        while len(self.runs) > self.FANIN:
            group, self.runs = self.runs[:self.FANIN], self.runs[self.FANIN:]
            self._spill(heapq.merge(*group))
            for f in group:
                f.close()
        return heapq.merge(*self.runs)


class _TooLarge(Exception):
    """The decompressed stream went past the size the manifest states."""


class _Decompressing:
    """Decompresses a data file while it is hashed, in bounded memory (at most BLOCK bytes
    of output at a time, however well a block compresses): hashes and counts the
    uncompressed bytes and passes them on to `out`.  It stops as soon as the output passes
    `limit` bytes (the manifest's `uncompressed_bytes`): a small file that expands to
    gigabytes costs no more than the size the manifest states (`over` is then True)."""

    def __init__(self, codec: str, out: Callable[[bytes], None], limit: int) -> None:
        self.codec, self.out, self.limit = codec, out, limit
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.trailing = 0
        self.over = False
        self.error: str | None = None
        if codec == "gzip":
            import zlib
            self._z: Any = zlib.decompressobj(31)
            self._zerror: Any = zlib.error
        else:
            import zstandard
            # stream_writer hands the output on in write_size pieces as it decompresses.
            self._z = zstandard.ZstdDecompressor().stream_writer(
                self, write_size=BLOCK, write_return_read=True,  # type: ignore[arg-type]
                closefd=False)
            self._zerror = zstandard.ZstdError

    def write(self, data: bytes) -> int:   # zstandard's output side
        self._take(bytes(data))
        return len(data)

    def _take(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            self.over = True
            raise _TooLarge
        self.sha256.update(data)
        self.size += len(data)
        self.out(data)

    def feed(self, chunk: bytes) -> None:
        if self.error is not None or self.over:
            return
        try:
            if self.codec == "zstd":
                self._z.write(chunk)
                return
            z = self._z
            if z.eof:
                self.trailing += len(chunk)
                return
            data = chunk
            while True:
                piece = z.decompress(data, BLOCK)
                self._take(piece)
                data = z.unconsumed_tail
                if z.eof:
                    self.trailing += len(z.unused_data)  # the rest of this chunk
                    return
                if not data and len(piece) < BLOCK:
                    return
        except _TooLarge:
            pass
        except self._zerror as exc:
            self.error = str(exc)

    def finish(self) -> str | None:
        """Why the stream is not one whole, valid stream; None if it is."""
        if self.error is not None:
            return self.error
        if self.codec == "gzip":
            if not self._z.eof:
                return "it ends before the end of the gzip stream (truncated)"
            if self.trailing:
                return f"{self.trailing} bytes follow the end of the gzip stream"
        else:
            try:
                self._z.flush()
            except self._zerror as exc:
                return str(exc)
        return None


def _unknown_entries(dir_fd: int, prefix: str, known: Callable[[str], bool],
                     report: VerifyReport) -> None:
    """Report every entry of a directory that `known` does not accept, in the order of
    their escaped names (a directory is reported, never descended into); sorted in bounded
    memory however many there are."""
    with _ExternalSort() as found:
        _list_entries(dir_fd, found, known)
        for line in found.sorted():
            _report_entry(line, report, prefix)
