"""manifest.json: bskyarchive's keys plus what lets anyone check the export later, and
`verify`, which does that check.

An export directory holds the data file, `manifest.json` and, with media, `media/` and
`media.sha256`.  The manifest's `checksums` give the SHA-256 and size of the data file and
of `media.sha256`; that list gives the SHA-256 of every file in `media/`, one line each in
`sha256sum`'s format (`<hex>  media/<name>`).  So one hash chain covers every byte, and
the manifest stays small however many media files there are.  `verify` walks it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path

from ._core import CSV_HEADER, json_string
from ._platform import (
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NONBLOCK,
    fsync,
    open_dir,
    open_nofollow,
    require_dir_fd,
)
from .defaults import DATA_FILES

# typing is not imported at run time: start-up is part of every export (SC-006).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

MANIFEST = "manifest.json"
MEDIA_SUMS = "media.sha256"
MANIFEST_VERSION = "1.0"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` (two-space indent, as bskyarchive's) durably; never replaces
    an existing file."""
    data = encode_json(manifest) + b"\n"
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        fsync(f.fileno())


def encode_json(value: object, level: int = 0) -> bytes:
    """JSON with a two-space indent, `{}`/`[]` when empty: what msgspec.json.format
    writes, without importing msgspec (its import costs more than a small export takes).
    Strings are escaped by the core, as the posts' text fields are."""
    pad = b"\n" + b"  " * (level + 1)
    end = b"\n" + b"  " * level
    if value is None:
        return b"null"
    if value is True or value is False:
        return b"true" if value else b"false"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} has no JSON form")
        return repr(value).encode()
    if isinstance(value, str):
        return json_string(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, dict):
        if not value:
            return b"{}"
        items = [json_string(str(k).encode("utf-8", "surrogateescape")) + b": "
                 + encode_json(v, level + 1) for k, v in value.items()]
        return b"{" + pad + (b"," + pad).join(items) + end + b"}"
    if isinstance(value, (list, tuple)):
        if not value:
            return b"[]"
        return b"[" + pad + (b"," + pad).join(encode_json(v, level + 1) for v in value) \
            + end + b"]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(SHA-256 hex digest, size) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class VerifyReport:
    """What `verify` found: `problems` empty means every byte is as the manifest says;
    `checked` files were hashed."""

    __slots__ = ("directory", "checked", "problems")

    def __init__(self, directory: Path, checked: int = 0,
                 problems: list[str] | None = None) -> None:
        self.directory = directory
        self.checked = checked
        self.problems: list[str] = [] if problems is None else problems

    def __repr__(self) -> str:
        return (f"VerifyReport(directory={self.directory!r}, checked={self.checked!r}, "
                f"problems={self.problems!r})")

    @property
    def ok(self) -> bool:
        return not self.problems


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
# As job.DATA_FILES (job imports this module, not the other way round).
# As sink.SUFFIXES: a compressed data file is posts.<format>.gz / .zst.
_SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}
_FORMAT_OF = {name + suffix: fmt for fmt, name in DATA_FILES.items()
              for suffix in ("", *_SUFFIXES.values())}
_CODEC_OF = {name + suffix: codec for name in DATA_FILES.values()
             for codec, suffix in _SUFFIXES.items()}
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


# --- counting posts while hashing (FORMAT.md's layouts) ----------------------------------------

class _JsonPosts:
    """posts.json: `[`, each post opening on a line that is exactly two spaces and `{`
    (strings hold no raw newline), `}`, newline, `]`, newline; or `[]` and a newline."""

    def __init__(self) -> None:
        self.count = 0
        self.size = 0
        self.head = b""
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        self.count += data.count(b"\n  {\n")
        self.tail = data[-4:]
        if len(self.head) < 8:
            self.head = (self.head + chunk)[:8]
        self.size += len(chunk)

    def shape(self) -> str | None:
        if self.size == 3 and self.head == b"[]\n":
            return None
        if not self.head.startswith(b"[\n  {\n"):
            return "it does not begin with '[' and a post"
        if self.tail != b"}\n]\n":
            return "it does not end with a post and ']'"
        return None


class _JsonlPosts:
    """posts.jsonl: one `{...}` object a line, each line ending in a newline."""

    def __init__(self) -> None:
        self.count = 0    # newlines
        self.starts = 0   # lines that begin with '{'
        self.ends = 0     # lines that end with '}'
        self.size = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if self.size == 0 and chunk[:1] == b"{":
            self.starts += 1
        data = self.tail + chunk
        self.count += chunk.count(b"\n")
        self.starts += data.count(b"\n{")
        self.ends += data.count(b"}\n")
        self.tail = data[-1:]
        self.size += len(chunk)

    def shape(self) -> str | None:
        if self.size == 0:
            return None
        if self.tail != b"\n":
            return "its last line has no newline"
        if self.starts != self.count or self.ends != self.count:
            return "not every line is one JSON object"
        return None


class _CsvPosts:
    """posts.csv: the BOM and header, then one record a line; a quoted field may hold
    newlines, and a `"` inside quotes is doubled, so quotes toggle the state."""

    def __init__(self) -> None:
        self.newlines = 0
        self.quoted = False
        self.head = b""
        self.tail = b""

    @property
    def count(self) -> int:
        return max(self.newlines - 1, 0)

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < len(CSV_HEADER):
            self.head = (self.head + chunk)[:len(CSV_HEADER)]
        if not self.quoted and b'"' not in chunk:
            self.newlines += chunk.count(b"\n")
        else:
            parts = chunk.split(b'"')
            self.newlines += sum(p.count(b"\n") for p in parts[self.quoted::2])
            if len(parts) % 2 == 0:
                self.quoted = not self.quoted
        self.tail = chunk[-1:]

    def shape(self) -> str | None:
        if self.head != CSV_HEADER:
            return "it does not begin with the BOM and skyexport's header line"
        if self.quoted:
            return "it ends inside a quoted field"
        if self.tail != b"\n":
            return "its last record has no newline"
        return None


_COUNTERS: dict[str, type[_JsonPosts | _JsonlPosts | _CsvPosts]] = {
    "json": _JsonPosts, "jsonl": _JsonlPosts, "csv": _CsvPosts}


# --- the manifest, scanned ---------------------------------------------------------------------

# The members verify reads; every other member (warnings, padding...) is skipped unread.
_WANTED = frozenset({"export_format", "post_count", "media_count", "checksums",
                     "compression"})
_MAX_WANTED = 16 << 20   # bytes of one wanted member's value
_MAX_DEPTH = 16          # nesting inside a wanted member's value
_WS = re.compile(rb"[ \t\r\n]*")
_SPECIAL = re.compile(rb'["\[\]{}]')
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")
_QUOTE, _BACKSLASH, _COMMA, _COLON = b'"'[0], b"\\"[0], b","[0], b":"[0]
_OPEN_OF = {b"]"[0]: b"["[0], b"}"[0]: b"{"[0]}


class _BadManifest(Exception):
    """manifest.json is not a valid manifest; the message says why."""


class _Scanner:
    """Streams a JSON object from a descriptor, block by block, and keeps only the raw
    text of the members in `_WANTED`: memory does not grow with the manifest."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.pos = 0
        self.base = 0          # file offset of buf[0]
        self.eof = False
        self.parts: list[bytes] | None = None   # what is being kept
        self.kept_from = 0
        self.kept = 0
        self.limit = 0

    def error(self, expected: str) -> _BadManifest:
        return _BadManifest(f"not valid JSON at byte {self.base + self.pos} "
                            f"(expected {expected})")

    def fill(self) -> bool:
        """Drop what was consumed, read one more block; False at the end of the file."""
        if self.eof:
            return False
        chunk = os.read(self.fd, BLOCK)
        if not chunk:
            self.eof = True
            return False
        if self.parts is not None:
            piece = self.buf[self.kept_from:self.pos]
            self.parts.append(piece)
            self.kept += len(piece)
            if self.kept > self.limit:
                raise _BadManifest(f"a member verify reads is over {self.limit >> 20} MiB")
            self.kept_from = 0
        self.base += self.pos
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def keep(self, scan: Callable[[], None], limit: int) -> bytes:
        """The raw text that `scan` consumes."""
        self.parts, self.kept_from, self.kept, self.limit = [], self.pos, 0, limit
        try:
            scan()
            if self.kept + self.pos - self.kept_from > limit:
                raise _BadManifest(f"a member verify reads is over {limit >> 20} MiB")
            self.parts.append(self.buf[self.kept_from:self.pos])
            return b"".join(self.parts)
        finally:
            self.parts = None

    def next_byte(self) -> int | None:
        """Skip white space; the next byte (not consumed), None at the end."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def string(self) -> None:
        """Skip a string; buf[pos] is its opening quote.  Only quotes and backslashes
        matter; `p` is never inside an escape."""
        p = self.pos + 1
        while True:
            buf = self.buf
            q = buf.find(b'"', p)
            if q >= 0:
                if buf.find(b"\\", p, q) < 0:
                    self.pos = q + 1
                    return
                seg = buf[p:q]
                if (len(seg) - len(seg.rstrip(b"\\"))) % 2 == 0:
                    self.pos = q + 1
                    return
                p = q + 1      # an escaped quote
                continue
            seg = buf[p:]
            p = len(buf) - (len(seg) - len(seg.rstrip(b"\\"))) % 2
            self.pos = p       # keep a dangling backslash with what follows it
            if not self.fill():
                raise self.error("the end of a string")
            p = self.pos

    def container(self, max_depth: int) -> None:
        """Skip an array or object; buf[pos] is its opening bracket."""
        stack = bytearray()
        while True:
            m = _SPECIAL.search(self.buf, self.pos)
            if m is None:
                self.pos = len(self.buf)
                if not self.fill():
                    raise self.error("the end of an array or object")
                continue
            i = m.start()
            c = self.buf[i]
            if c == _QUOTE:
                self.pos = i
                self.string()
                continue
            if c in _OPEN_OF:
                if not stack or stack[-1] != _OPEN_OF[c]:
                    self.pos = i
                    raise self.error("a matching bracket")
                stack.pop()
                self.pos = i + 1
                if not stack:
                    return
            else:
                stack.append(c)
                self.pos = i + 1
                if len(stack) > max_depth:
                    raise _BadManifest(f"nested more than {max_depth} deep at byte "
                                       f"{self.base + i}")

    def value(self, max_depth: int = 1 << 62) -> None:
        c = self.next_byte()
        if c == _QUOTE:
            self.string()
        elif c in _OPEN_OF.values():
            self.container(max_depth)
        else:
            while len(self.buf) - self.pos < 512 and self.fill():
                pass
            m = _SCALAR.match(self.buf, self.pos)
            if m is None:
                raise self.error("a value")
            self.pos = m.end()

    def members(self) -> dict[str, bytes]:
        """The raw text of each wanted member of the top-level object."""
        import msgspec

        c = self.next_byte()
        if c is None:
            raise _BadManifest("the file is empty")
        if c != b"{"[0]:
            raise _BadManifest("not a JSON object")
        self.pos += 1
        found: dict[str, bytes] = {}
        c = self.next_byte()
        if c == b"}"[0]:
            self.pos += 1
        else:
            while True:
                if c != _QUOTE:
                    raise self.error("a member name")
                raw = self.keep(self.string, 1 << 20)
                try:
                    key = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    raise self.error("a valid member name") from None
                if self.next_byte() != _COLON:
                    raise self.error("':'")
                self.pos += 1
                if key in _WANTED:
                    found[key] = self.keep(lambda: self.value(_MAX_DEPTH), _MAX_WANTED)
                else:
                    self.value()
                c = self.next_byte()
                if c == _COMMA:
                    self.pos += 1
                    c = self.next_byte()
                    continue
                if c == b"}"[0]:
                    self.pos += 1
                    break
                raise self.error("',' or '}'")
        if self.next_byte() is not None:
            raise self.error("the end of the file")
        return found


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


# --- the set of media names, in bounded memory ---------------------------------------------------

class _NameSet:
    """The names media.sha256 lists, as 64-bit hashes in one flat array (8 bytes a slot,
    open addressing): a few bytes a name instead of a Python object each.  Python's bytes
    hash is keyed per process, so names cannot be chosen to collide."""

    def __init__(self, expected: int) -> None:
        import array  # verify's alone: not imported by every export

        self.size = max(int(expected / 0.7), 16)
        self.table = array.array("q", [0]) * self.size
        self.n = 0

    @staticmethod
    def _key(name: bytes) -> int:
        return hash(name) or 1   # 0 marks an empty slot

    def _slot(self, h: int) -> int:
        """The slot holding key `h`, or the empty one where it would go (linear probing)."""
        t, size = self.table, self.size
        i = h % size
        while t[i] != 0 and t[i] != h:
            i = i + 1 if i + 1 < size else 0
        return i

    def add(self, name: bytes) -> bool:
        """Add `name`; False if it was there already."""
        if self.n >= self.size * 0.9:
            self._grow()
        h = self._key(name)
        i = self._slot(h)
        if self.table[i] == h:
            return False
        self.table[i] = h
        self.n += 1
        return True

    def __contains__(self, name: bytes) -> bool:
        h = self._key(name)
        return bool(self.table[self._slot(h)] == h)

    def _grow(self) -> None:
        old = self.table
        self.size *= 2
        self.table = type(old)("q", [0]) * self.size
        t, size = self.table, self.size
        for h in old:
            if h:
                i = h % size
                while t[i]:
                    i = i + 1 if i + 1 < size else 0
                t[i] = h


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

def verify(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check an export against its manifest and report every difference: re-hash the data
    file, `media.sha256` and each media file that list names; count the posts in the data
    file against `post_count` and check its name and shape against `export_format`; check
    that media.sha256 lists every file in `media/` once and nothing else (`media_count`
    included); report any file or directory the manifest does not know.

    Only the export is read: a symbolic link is never followed and nothing but a regular
    file is opened (each is reported instead).  The manifest's names are only trusted as
    plain names inside the export directory (`media/<name>` for media); anything else is
    itself reported, never opened.  Memory stays bounded whatever the files' sizes.
    """
    d = Path(directory)
    report = VerifyReport(d)
    require_dir_fd("skyexport verify")
    try:
        dir_fd = open_dir(d, _OPEN_FLAGS, nofollow=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(d)):
            report.problems.append(f"{d} is a symbolic link; verify does not follow it, "
                                   "give it the export directory itself")
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            report.problems.append(f"{d} is not a directory")
        else:
            report.problems.append(f"{d} cannot be opened ({exc.strerror})")
        return report
    try:
        _verify(dir_fd, report)
    except OSError as exc:  # the export changed under verify, or a directory is unreadable
        report.problems.append(f"{_show(exc.filename or str(d))}: cannot be read "
                               f"({exc.strerror})")
    finally:
        os.close(dir_fd)
    return report


def _verify(dir_fd: int, report: VerifyReport) -> None:
    problems = report.problems
    try:
        manifest = _read_manifest(dir_fd)
    except FileNotFoundError:
        problems.append(f"{MANIFEST} is missing; is {report.directory} a skyexport export?")
        return
    except _NotRegular as exc:
        problems.append(_not_regular(MANIFEST, str(exc)))
        return
    except OSError as exc:
        problems.append(f"{MANIFEST} cannot be read ({exc.strerror})")
        return
    except _BadManifest as exc:
        problems.append(f"{MANIFEST} is not a valid manifest: {exc}")
        return
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict) or not checksums:
        problems.append(f"{MANIFEST} has no checksums; was it written by skyexport?")
        return

    expected: dict[str, tuple[str, int | None]] = {}
    uncompressed: dict[str, tuple[str, int]] = {}
    compression = manifest.get("compression")
    if compression is not None and compression not in _SUFFIXES:
        problems.append(f"{MANIFEST}: compression {compression!r} is not one of "
                        f"{', '.join(_SUFFIXES)}")
        compression = None
    for name, info in checksums.items():
        if not _plain_name(name):
            problems.append(f"{MANIFEST} lists {name!r}, which is not a plain file name")
            continue
        digest = info.get("sha256") if isinstance(info, dict) else None
        size = info.get("bytes") if isinstance(info, dict) else None
        if not _is_digest(digest) or not (size is None or isinstance(size, int)):
            problems.append(f"{MANIFEST}: the checksum of {name} is malformed")
            continue
        expected[name] = (digest, size)  # type: ignore[assignment]
        if name in _CODEC_OF:
            udigest = info.get("uncompressed_sha256")
            usize = info.get("uncompressed_bytes")
            if not _is_digest(udigest) or not isinstance(usize, int) \
                    or isinstance(usize, bool):
                problems.append(f"{MANIFEST}: the uncompressed checksum of {name} is "
                                "missing or malformed")
            else:
                uncompressed[name] = (udigest, usize)

    fmt = manifest.get("export_format")
    post_count = manifest.get("post_count")
    data_names = [n for n in expected if n in _FORMAT_OF]
    data_name = None
    if fmt not in DATA_FILES:
        problems.append(f"{MANIFEST}: export_format {fmt!r} is not one of json, csv, jsonl")
    else:
        data_name = DATA_FILES[fmt] + (_SUFFIXES[compression] if compression else "")
        if data_name not in expected:
            found = ", ".join(data_names) or "no data file"
            said = f" and compression {compression}" if compression else ""
            problems.append(f"{MANIFEST} says export_format {fmt}{said}, but its checksums "
                            f"list {found}, not {data_name}")
    if len(data_names) > 1:
        problems.append(f"{MANIFEST} lists {len(data_names)} data files "
                        f"({', '.join(sorted(data_names))}); an export has one")
    if not isinstance(post_count, int) or isinstance(post_count, bool) or post_count < 0:
        problems.append(f"{MANIFEST}: post_count {post_count!r} is not a count of posts")
        post_count = None

    for name in sorted(expected):
        if name == MEDIA_SUMS:
            continue  # below, with the files it lists
        digest, size = expected[name]
        counter = _COUNTERS[_FORMAT_OF[name]]() if name in _FORMAT_OF else None
        feed = counter.feed if counter is not None else None
        unpack = None
        if counter is not None and name in _CODEC_OF:
            try:
                unpack = _Decompressing(_CODEC_OF[name], counter.feed)
            except ImportError:
                problems.append(f"{name}: the uncompressed posts are not checked: zstd "
                                "needs the zstandard package (pip install 'skyexport[zstd]')")
                counter = None
                feed = None
            else:
                feed = unpack.feed
        if not _check_file(dir_fd, name, name, digest, size, feed, report):
            continue
        if unpack is not None:
            why = unpack.finish()
            if why is not None:
                problems.append(f"{name}: not a valid {_CODEC_OF[name]} stream: {why}")
                continue
            if name in uncompressed:
                udigest, usize = uncompressed[name]
                if unpack.size != usize:
                    problems.append(f"{name}: decompresses to {unpack.size} bytes, "
                                    f"{MANIFEST} says {usize}")
                elif unpack.sha256.hexdigest() != udigest:
                    problems.append(f"{name}: decompressed SHA-256 "
                                    f"{unpack.sha256.hexdigest()}, the manifest says "
                                    f"{udigest}")
        if counter is not None:
            why = counter.shape()
            if why is not None:
                problems.append(f"{name}: not a {_FORMAT_OF[name]} export's data file: {why}")
            elif name == data_name and post_count is not None \
                    and counter.count != post_count:
                problems.append(f"{name}: holds {counter.count} posts, {MANIFEST} says "
                                f"post_count {post_count}")

    media_fd, media_kind = _open_media(dir_fd)
    try:
        names = _check_media_list(dir_fd, media_fd, media_kind, expected, manifest, report)
        _unknown_entries(dir_fd, "", lambda n: n in expected or n in (MANIFEST, "media"),
                         problems)
        if media_kind is not None and media_kind != "missing":
            problems.append(f"media: {media_kind}, not a directory (verify neither follows "
                            "nor opens it)")
        if media_fd is not None:
            _unknown_entries(media_fd, "media/", lambda n: os.fsencode(n) in names, problems)
    finally:
        if media_fd is not None:
            os.close(media_fd)


def _check_file(dir_fd: int, name: str | bytes, shown: str, digest: str, size: int | None,
                feed: Callable[[bytes], None] | None, report: VerifyReport) -> bool:
    """Hash one listed file (passing each block to `feed`); report what is wrong.
    True if it could be read."""
    try:
        fd = _open_regular(name, dir_fd)
    except FileNotFoundError:
        report.problems.append(f"{shown}: missing")
        return False
    except _NotRegular as exc:
        report.problems.append(_not_regular(shown, str(exc)))
        return False
    except OSError as exc:
        report.problems.append(f"{shown}: cannot be read ({exc.strerror})")
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
        report.problems.append(f"{shown}: cannot be read ({exc.strerror})")
        return False
    finally:
        os.close(fd)
    report.checked += 1
    if size is not None and got_size != size:
        report.problems.append(f"{shown}: {got_size} bytes, {MANIFEST} says {size}")
    elif h.hexdigest() != digest:
        report.problems.append(f"{shown}: SHA-256 {h.hexdigest()}, the manifest says {digest}")
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


def _check_media_list(dir_fd: int, media_fd: int | None, media_kind: str | None,
                      expected: dict[str, tuple[str, int | None]], manifest: dict[str, Any],
                      report: VerifyReport) -> _NameSet:
    """Hash media.sha256 (counting its lines), then check each media file it lists; the
    names listed, for the scan of media/."""
    problems = report.problems
    if MEDIA_SUMS not in expected:
        return _NameSet(0)
    digest, size = expected[MEDIA_SUMS]
    lines = _LineCount()
    if not _check_file(dir_fd, MEDIA_SUMS, MEDIA_SUMS, digest, size, lines.feed, report):
        return _NameSet(0)
    fd = _open_regular(MEDIA_SUMS, dir_fd)
    names = _NameSet(lines.count + 1)
    listed = 0
    try:
        for n, line in _sum_lines(fd):
            m = _SUM_LINE.fullmatch(line) if line is not None else None
            if m is None or m[2] in (b".", b".."):
                shown = "(over 4 KiB)" if line is None else \
                    repr(_show(line[:120]))
                problems.append(f"{MEDIA_SUMS} line {n} is malformed: {shown}")
                continue
            name = m[2]
            shown = "media/" + _show(name)
            if not names.add(name):
                problems.append(f"{MEDIA_SUMS} line {n} repeats {shown}")
                continue
            listed += 1
            if media_fd is not None:
                _check_file(media_fd, name, shown, m[1].decode(), None, None, report)
            elif media_kind == "missing":
                problems.append(f"{shown}: missing")
            else:
                problems.append(f"{shown}: not checked, media is {media_kind}")
    finally:
        os.close(fd)
    count = manifest.get("media_count")
    if isinstance(count, int) and count != listed:
        problems.append(f"{MEDIA_SUMS} lists {listed} media files, "
                        f"{MANIFEST} says media_count {count}")
    return names


class _Decompressing:
    """Decompresses a data file while it is hashed, in bounded memory (at most BLOCK bytes
    of output at a time, however well a block compresses): hashes and counts the
    uncompressed bytes and passes them on to `out`."""

    def __init__(self, codec: str, out: Callable[[bytes], None]) -> None:
        self.codec, self.out = codec, out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.trailing = 0
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
        self.sha256.update(data)
        self.size += len(data)
        self.out(data)

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
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


class _LineCount:
    """Counts newlines while media.sha256 is hashed (to size the name set)."""

    def __init__(self) -> None:
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        self.count += chunk.count(b"\n")


def _unknown_entries(dir_fd: int, prefix: str, known: Callable[[str], bool],
                     problems: list[str]) -> None:
    """Report every entry of a directory that `known` does not accept (sorted; a directory
    is reported, never descended into)."""
    found = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            if known(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                found.append(f"{_show(prefix + entry.name)}/: a directory the manifest "
                             "does not know")
            else:
                found.append(f"{_show(prefix + entry.name)}: not listed in the manifest")
    problems.extend(sorted(found))
