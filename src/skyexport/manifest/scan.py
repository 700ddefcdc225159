"""manifest.json scanned, never loaded whole: verify.py reads only the members it checks,
each bounded in size and nesting, whatever else the file holds."""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

BLOCK = 1 << 20  # bytes read at a time

# The members verify reads; every other member (warnings, padding...) is skipped unread.
_WANTED = frozenset({"export_format", "post_count", "media_count", "checksums",
                     "compression", "csv_bom", "records"})
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
