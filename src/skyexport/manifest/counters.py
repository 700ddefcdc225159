"""Counting the posts of a data file while it is hashed, block by block, one counter per
format (docs/FORMAT.md's layouts); verify.py feeds them."""

from __future__ import annotations

from .._core import CSV_HEADER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    """posts.csv: the BOM and header (the header alone when the manifest says csv_bom
    false: --no-bom), then one record a line; a quoted field may hold newlines, and a `"`
    inside quotes is doubled, so quotes toggle the state."""

    def __init__(self, bom: bool = True, header: bytes | None = None) -> None:
        if header is not None:      # a records file's header
            self.header = (b"\xef\xbb\xbf" if bom else b"") + header
        else:
            self.header = CSV_HEADER if bom else CSV_HEADER[3:]
        self.newlines = 0
        self.quoted = False
        self.head = b""
        self.tail = b""

    @property
    def count(self) -> int:
        return max(self.newlines - 1, 0)

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < len(self.header):
            self.head = (self.head + chunk)[:len(self.header)]
        if not self.quoted and b'"' not in chunk:
            self.newlines += chunk.count(b"\n")
        else:
            parts = chunk.split(b'"')
            self.newlines += sum(p.count(b"\n") for p in parts[self.quoted::2])
            if len(parts) % 2 == 0:
                self.quoted = not self.quoted
        self.tail = chunk[-1:]

    def shape(self) -> str | None:
        if self.head != self.header:
            if self.header is CSV_HEADER:
                return "it does not begin with the BOM and skyexport's header line"
            return ("it does not begin with skyexport's header line without a BOM (the "
                    "manifest says csv_bom false)")
        if self.quoted:
            return "it ends inside a quoted field"
        if self.tail != b"\n":
            return "its last record has no newline"
        return None


_COUNTERS: dict[str, type[_JsonPosts | _JsonlPosts | _CsvPosts]] = {
    "json": _JsonPosts, "jsonl": _JsonlPosts, "csv": _CsvPosts}


def _counter(fmt: str, manifest: dict[str, Any]) -> _JsonPosts | _JsonlPosts | _CsvPosts:
    """The data file's counter; a CSV one expects a BOM unless the manifest says
    `csv_bom: false` (exactly false: anything else, or no key, means the default BOM)."""
    if fmt == "csv":
        return _CsvPosts(bom=manifest.get("csv_bom") is not False)
    return _COUNTERS[fmt]()
