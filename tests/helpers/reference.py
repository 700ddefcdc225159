"""The reference exporter: plain, slow, obviously correct.

Pure Python over the standard library ``sqlite3`` module (deliberately not APSW), written from
``docs/FORMAT.md`` and ``docs/format-decisions.md``. It loads every row, then encodes. The
fast path must match it byte for byte.

Public entry points::

    reference_export(archive_path, fmt, *, did=None, since=None, until=None,
                     on_bad_value="error") -> bytes
    reference_export_with_warnings(...same...) -> tuple[bytes, list[tuple[str, str]]]

``fmt`` is ``"json"``, ``"csv"`` or ``"jsonl"``. With ``on_bad_value="error"`` the first bad
value (rows in export order; in a row, columns in JSON field order) raises
``ReferenceBadValue``; with ``"keep"`` it is written as stored and listed in the warnings as
``(uri, column)``. Rows left out by ``since``/``until`` because their ``created_at`` is a bad
value are listed as ``(uri, "created_at")`` whatever ``on_bad_value`` says.

The helpers (Go-style UTF-8 decoding, JSON string escaping, the JSON tokenizer and
re-indenter, timestamp parsing and rendering, float formatting, CSV quoting, MediaFiles) are
public so tests can pin them with literal bytes.
"""

from __future__ import annotations

import decimal
import json
import math
import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ZERO_TIME",
    "ReferenceBadValue",
    "Timestamp",
    "Val",
    "csv_field",
    "csv_needs_quotes",
    "decode_rune",
    "go_decode",
    "go_format_float",
    "go_unmarshal_object",
    "json_compact",
    "json_indent",
    "json_string",
    "json_tokens",
    "media_files",
    "media_hash",
    "parse_bound",
    "parse_timestamp",
    "reference_export",
    "reference_export_with_warnings",
]

POST_COLUMNS = (
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count",
    "repost_count", "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type",
    "embed_data", "labels", "archived_at",
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Go's encoding/json scanner refuses nesting deeper than this; so do we.
MAX_JSON_DEPTH = 10000

CSV_HEADER = (
    b"URI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,IsReply,"
    b"ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt"
)
UTF8_BOM = b"\xef\xbb\xbf"


class ReferenceBadValue(Exception):
    """A value the export cannot write (on_bad_value="error").

    ``uri`` is the post URI (str), ``column`` the column name, ``value`` the stored value as
    Python sees it (bytes for TEXT/BLOB, int, float).
    """

    def __init__(self, uri: str, column: str, value: Any) -> None:
        super().__init__(f"bad value in post {uri!r}, column {column}: {value!r}")
        self.uri = uri
        self.column = column
        self.value = value


# --------------------------------------------------------------------------------------------
# UTF-8, the way Go's utf8.DecodeRune reads it

# Unicode Table 3-7 (well-formed UTF-8 byte sequences): lead byte range -> ranges of the
# continuation bytes.
_UTF8_TABLE = (
    (0xC2, 0xDF, ((0x80, 0xBF),)),
    (0xE0, 0xE0, ((0xA0, 0xBF), (0x80, 0xBF))),
    (0xE1, 0xEC, ((0x80, 0xBF), (0x80, 0xBF))),
    (0xED, 0xED, ((0x80, 0x9F), (0x80, 0xBF))),
    (0xEE, 0xEF, ((0x80, 0xBF), (0x80, 0xBF))),
    (0xF0, 0xF0, ((0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF))),
    (0xF1, 0xF3, ((0x80, 0xBF), (0x80, 0xBF), (0x80, 0xBF))),
    (0xF4, 0xF4, ((0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF))),
)


def decode_rune(b: bytes, i: int = 0) -> tuple[int, int]:
    """Decode one rune at ``b[i]``: ``(code point, size)``, or ``(-1, 1)`` when Go's
    decoder rejects the byte (it then moves on by exactly one byte)."""
    c0 = b[i]
    if c0 < 0x80:
        return c0, 1
    for lo, hi, conts in _UTF8_TABLE:  # noqa: B007 (used after the break)
        if lo <= c0 <= hi:
            break
    else:
        return -1, 1
    size = 1 + len(conts)
    if len(b) - i < size:
        return -1, 1
    for k, (clo, chi) in enumerate(conts):
        if not clo <= b[i + 1 + k] <= chi:
            return -1, 1
    return ord(b[i:i + size].decode("utf-8")), size


def iter_runes(b: bytes) -> Iterator[tuple[int, int, int]]:
    """Yield ``(offset, code point or -1, size)`` for every rune of ``b``."""
    i = 0
    while i < len(b):
        cp, size = decode_rune(b, i)
        yield i, cp, size
        i += size


def go_decode(b: bytes) -> str:
    """Bytes to str as Go reads them: each rejected byte becomes one U+FFFD."""
    return "".join("\ufffd" if cp < 0 else chr(cp) for _, cp, _ in iter_runes(b))


# --------------------------------------------------------------------------------------------
# JSON strings (Go encoding/json, SetEscapeHTML(false))

_SHORT_ESCAPES = {
    0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r",
    0x09: b"\\t",
}


def json_string(b: bytes) -> bytes:
    """``b`` as a JSON string literal, quotes included, escaped exactly as Go does."""
    out = bytearray(b'"')
    for i, cp, size in iter_runes(b):
        if cp < 0:
            out += b"\\ufffd"
        elif cp < 0x80:
            if cp in _SHORT_ESCAPES:
                out += _SHORT_ESCAPES[cp]
            elif cp < 0x20:
                out += b"\\u00%02x" % cp
            else:
                out.append(cp)
        elif cp in (0x2028, 0x2029):
            out += b"\\u%04x" % cp
        else:
            out += b[i:i + size]
    out += b'"'
    return bytes(out)


# --------------------------------------------------------------------------------------------
# JSON tokens: validation, compaction, indentation (Go's scanner, Compact and Indent)

_JSON_WS = b" \t\r\n"
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX = b"0123456789abcdefABCDEF"
_CLOSER = {ord("{"): b"}", ord("["): b"]"}


def _skip_ws(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _JSON_WS:
        i += 1
    return i


def _scan_string(data: bytes, i: int) -> int:
    """End (exclusive) of the JSON string starting at ``data[i] == '"'``, or -1."""
    n = len(data)
    j = i + 1
    while j < n:
        c = data[j]
        if c == 0x22:
            return j + 1
        if c == 0x5C:
            if j + 1 >= n:
                return -1
            e = data[j + 1]
            if e in b'"\\/bfnrt':
                j += 2
            elif e == ord("u"):
                hexd = data[j + 2:j + 6]
                if len(hexd) != 4 or any(h not in _HEX for h in hexd):
                    return -1
                j += 6
            else:
                return -1
        elif c < 0x20:
            return -1
        else:
            j += 1  # bytes >= 0x80 are not checked
    return -1


def _scan_scalar(data: bytes, i: int) -> int:
    """End of the string, number or literal at ``data[i]``, or -1."""
    c = data[i]
    if c == 0x22:
        return _scan_string(data, i)
    for lit in (b"true", b"false", b"null"):
        if data.startswith(lit, i):
            return i + len(lit)
    m = _NUMBER.match(data, i)
    if m:
        return m.end()
    return -1


def json_tokens(data: bytes, max_depth: int | None = MAX_JSON_DEPTH) -> list[bytes] | None:
    """Split one JSON value into tokens (white space dropped), or None if it is not valid.

    Tokens are ``{ } [ ] : ,`` and whole strings, numbers and literals, as their bytes.
    """
    n = len(data)
    toks: list[bytes] = []
    stack: list[int] = []
    i = _skip_ws(data, 0)
    state = "value"
    while True:
        if state == "value":
            if i >= n:
                return None
            c = data[i]
            if c in _CLOSER:
                if max_depth is not None and len(stack) >= max_depth:
                    return None
                stack.append(c)
                toks.append(data[i:i + 1])
                i = _skip_ws(data, i + 1)
                if i < n and data[i:i + 1] == _CLOSER[c]:
                    toks.append(_CLOSER[c])
                    stack.pop()
                    i += 1
                    state = "after"
                else:
                    state = "key" if c == ord("{") else "value"
                continue
            j = _scan_scalar(data, i)
            if j < 0:
                return None
            toks.append(data[i:j])
            i = j
            state = "after"
        elif state == "key":
            if i >= n or data[i] != 0x22:
                return None
            j = _scan_string(data, i)
            if j < 0:
                return None
            toks.append(data[i:j])
            i = _skip_ws(data, j)
            if i >= n or data[i] != ord(":"):
                return None
            toks.append(b":")
            i = _skip_ws(data, i + 1)
            state = "value"
        else:  # after a value
            i = _skip_ws(data, i)
            if not stack:
                return toks if i == n else None
            if i >= n:
                return None
            c = data[i]
            if c == ord(","):
                toks.append(b",")
                i = _skip_ws(data, i + 1)
                state = "key" if stack[-1] == ord("{") else "value"
            elif data[i:i + 1] == _CLOSER[stack[-1]]:
                toks.append(_CLOSER[stack.pop()])
                i += 1
            else:
                return None


def json_compact(data: bytes) -> bytes | None:
    """Go's json.Compact: the value without white space outside strings; None if invalid."""
    toks = json_tokens(data)
    return None if toks is None else b"".join(toks)


def json_indent(data: bytes, indent: bytes = b"  ", depth: int = 0) -> bytes:
    """Go's json.Indent (prefix "") of a valid JSON value, starting at ``depth``.

    ``{}`` and ``[]`` stay on one line; ``": "`` after keys; one element per line.
    """
    toks = json_tokens(data, max_depth=None)
    if toks is None:
        raise ValueError("json_indent needs valid JSON")
    out = bytearray()
    need_indent = False
    for t in toks:
        if need_indent and t not in (b"}", b"]"):
            need_indent = False
            depth += 1
            out += b"\n" + indent * depth
        if t in (b"{", b"["):
            need_indent = True  # delayed so that empty containers stay {} and []
            out += t
        elif t == b",":
            out += b",\n" + indent * depth
        elif t == b":":
            out += b": "
        elif t in (b"}", b"]"):
            if need_indent:
                need_indent = False
            else:
                depth -= 1
                out += b"\n" + indent * depth
            out += t
        else:
            out += t
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Numbers

def go_format_float(x: float) -> str:
    """Go's ``strconv.FormatFloat(x, 'g', -1, 64)``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    neg = math.copysign(1.0, x) < 0
    sign = "-" if neg else ""
    if x == 0:
        return sign + "0"
    # repr gives the shortest digits that read back the same, as Go's shortest mode does.
    _, digit_tuple, exp = decimal.Decimal(repr(abs(x))).as_tuple()
    digits = list(digit_tuple)
    while len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    nd = len(digits)
    dp = nd + exp  # position of the decimal point relative to the digits
    ds = "".join(str(d) for d in digits)
    e = dp - 1
    if e < -4 or e >= 6:  # shortest 'g' uses precision 6 for this choice
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        esign = "-" if e < 0 else "+"
        return f"{sign}{mant}e{esign}{abs(e):02d}"
    if dp > 0:
        intpart = ds[:dp] + "0" * max(dp - nd, 0)
    else:
        intpart = "0"
    frac_n = max(nd - dp, 0)
    frac = "".join(ds[k] if 0 <= k < nd else "0" for k in range(dp, dp + frac_n))
    return sign + intpart + ("." + frac if frac else "")


# --------------------------------------------------------------------------------------------
# Timestamps

@dataclass(frozen=True)
class Timestamp:
    """A wall-clock time with its UTC offset (seconds east), as read from the archive."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    nanos: int
    offset: int  # seconds east of UTC

    def _base(self) -> str:
        return (f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
                f"T{self.hour:02d}:{self.minute:02d}:{self.second:02d}")

    def _zone(self) -> str:
        if self.offset == 0:
            return "Z"
        sign = "-" if self.offset < 0 else "+"
        m = abs(self.offset) // 60
        return f"{sign}{m // 60:02d}:{m % 60:02d}"

    def rfc3339nano(self) -> str:
        """Go's RFC3339Nano: fraction without trailing zeros, none when zero."""
        frac = ""
        if self.nanos:
            frac = "." + f"{self.nanos:09d}".rstrip("0")
        return self._base() + frac + self._zone()

    def rfc3339(self) -> str:
        """Go's RFC3339: whole seconds."""
        return self._base() + self._zone()

    def instant_ns(self) -> int:
        """Nanoseconds since 1970-01-01T00:00:00Z."""
        secs = (_days_from_civil(self.year, self.month, self.day) * 86400
                + self.hour * 3600 + self.minute * 60 + self.second - self.offset)
        return secs * 1_000_000_000 + self.nanos


#: Go's zero time, what a NULL timestamp reads as.
ZERO_TIME = Timestamp(1, 1, 1, 0, 0, 0, 0, 0)


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)  # proleptic Gregorian; 0 is leap


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if _is_leap(y) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, 0 included)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DATE = rb"([0-9]{4})-([0-9]{2})-([0-9]{2})"
_HMS = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
_ASCII_WS = b" \t\n\x0b\x0c\r"
_FORM1 = re.compile(_DATE + b" " + _HMS + rb" ([+-])([0-9]{2})([0-9]{2}) ([^ \t\n\x0b\x0c\r]+)")
_FORM2_OFFSET = re.compile(_DATE + b"[ T]" + _HMS + rb"([+-])([0-9]{2}):([0-9]{2})")
_FORM2_SECONDS = re.compile(_DATE + b"[ T]" + _HMS)
_FORM2_MINUTES = re.compile(_DATE + rb"[ T]([0-9]{2}):([0-9]{2})")
_FORM2_DATE = re.compile(_DATE)


def _make_time(y: bytes, mo: bytes, d: bytes, h: bytes = b"0", mi: bytes = b"0",
               s: bytes = b"0", frac: bytes | None = None, sign: bytes = b"+",
               oh: bytes = b"0", om: bytes = b"0", utc: bool = False) -> Timestamp | None:
    year, month, day = int(y), int(mo), int(d)
    hour, minute, second = int(h), int(mi), int(s)
    off_h, off_m = int(oh), int(om)
    if not 0 <= year <= 9999 or not 1 <= month <= 12:
        return None
    if not 1 <= day <= _days_in_month(year, month):
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    if off_h > 23 or off_m > 59:
        return None
    nanos = int((frac or b"")[:9].ljust(9, b"0")) if frac else 0
    offset = 0 if utc else (off_h * 3600 + off_m * 60) * (-1 if sign == b"-" else 1)
    return Timestamp(year, month, day, hour, minute, second, nanos, offset)


def parse_timestamp(raw: bytes) -> Timestamp | None:
    """Read a stored timestamp (FORMAT.md "Timestamps"); None for a bad value."""
    # Form 1: Go's time.Time.String(), monotonic suffix cut, white space trimmed.
    s = raw
    cut = s.find(b"m=")
    if cut > 0:
        s = s[:cut]
    s = s.strip(_ASCII_WS)
    m = _FORM1.fullmatch(s)
    if m:
        y, mo, d, h, mi, sec, frac, sign, oh, om, zone = m.groups()
        return _make_time(y, mo, d, h, mi, sec, frac, sign, oh, om, utc=(zone == b"UTC"))
    # Form 2: the SQLite driver's layouts, on the original value less one trailing Z.
    s = raw[:-1] if raw.endswith(b"Z") else raw
    m = _FORM2_OFFSET.fullmatch(s)
    if m:
        y, mo, d, h, mi, sec, frac, sign, oh, om = m.groups()
        return _make_time(y, mo, d, h, mi, sec, frac, sign, oh, om)
    m = _FORM2_SECONDS.fullmatch(s)
    if m:
        y, mo, d, h, mi, sec, frac = m.groups()
        return _make_time(y, mo, d, h, mi, sec, frac)
    m = _FORM2_MINUTES.fullmatch(s)
    if m:
        y, mo, d, h, mi = m.groups()
        return _make_time(y, mo, d, h, mi)
    m = _FORM2_DATE.fullmatch(s)
    if m:
        return _make_time(*m.groups())
    return None


_BOUND_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_BOUND_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))?"
)


def parse_bound(text: str, *, until: bool) -> int:
    """A --since/--until bound as an instant in nanoseconds since the epoch.

    ``YYYY-MM-DD``: since 00:00:00Z, until 23:59:59.999999999Z of that day. Otherwise an
    RFC 3339 date-time; without a zone, UTC. Raises ValueError for anything else.
    """
    m = _BOUND_DATE.fullmatch(text)
    if m:
        b = [g.encode() for g in m.groups()]
        if until:
            ts = _make_time(*b, b"23", b"59", b"59", b"999999999")
        else:
            ts = _make_time(*b)
    else:
        m = _BOUND_DATETIME.fullmatch(text)
        if not m:
            raise ValueError(f"not a date or RFC 3339 date-time: {text!r}")
        y, mo, d, h, mi, s, frac, _z, sign, oh, om = m.groups()
        def enc(g: str | None) -> bytes | None:
            return None if g is None else g.encode()

        ts = _make_time(enc(y), enc(mo), enc(d), enc(h), enc(mi), enc(s), enc(frac),
                        enc(sign or "+"), enc(oh or "0"), enc(om or "0"))
    if ts is None:
        raise ValueError(f"impossible date or time: {text!r}")
    return ts.instant_ns()


# --------------------------------------------------------------------------------------------
# CSV (Go encoding/csv, Comma ',', UseCRLF false)

#: unicode.IsSpace: the Unicode White_Space code points.
_UNICODE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F,
     0x3000] + list(range(0x2000, 0x200B))
)


def csv_needs_quotes(field: bytes) -> bool:
    """Go's csv.Writer.fieldNeedsQuotes."""
    if field == b"":
        return False
    if field == b"\\.":
        return True
    if any(c in field for c in (b",", b'"', b"\r", b"\n")):
        return True
    cp, _ = decode_rune(field, 0)
    return cp in _UNICODE_SPACE


def csv_field(field: bytes) -> bytes:
    """One CSV field as Go writes it: quoted iff needed, ``"`` doubled, all else as is."""
    if not csv_needs_quotes(field):
        return field
    return b'"' + field.replace(b'"', b'""') + b'"'


def media_hash(url: str) -> str:
    """The content hash in a CDN URL: after the last ``/``, cut at the first ``@``."""
    slash = url.rfind("/")
    if slash < 0:
        return ""
    return url[slash + 1:].split("@", 1)[0]


def _no_surrogates(s: str) -> str:
    # Go decodes a \u escape naming a lone surrogate to U+FFFD; Python keeps the surrogate.
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in s)


class _Overflow(Exception):
    pass


def _go_number(text: str) -> float:
    f = float(text)
    if math.isinf(f):  # Go: strconv.ParseFloat range error -> Unmarshal fails
        raise _Overflow(text)
    return f


def go_unmarshal_object(data: bytes) -> dict | None:
    """Go's ``json.Unmarshal(data, &map[string]interface{})``: the map, or None when Go
    fails or yields a nil map (``null``)."""
    if json_tokens(data) is None:
        return None
    text = go_decode(data)  # invalid UTF-8 (only possible inside strings) -> U+FFFD per byte
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, MAX_JSON_DEPTH * 2 + 1000))
    try:
        value = json.loads(text, parse_float=_go_number, parse_int=_go_number)
    except _Overflow:
        return None
    finally:
        sys.setrecursionlimit(old_limit)
    return value if isinstance(value, dict) else None


def media_files(embed: dict | None) -> bytes:
    """The MediaFiles column for a post whose has_media is true."""
    if embed is None:
        return b""
    hashes: list[str] = []

    def add(url: Any) -> None:
        if isinstance(url, str):
            h = media_hash(_no_surrogates(url))
            if h:
                hashes.append(h)

    def add_images(images: Any) -> None:
        if isinstance(images, list):
            for img in images:
                if isinstance(img, dict):
                    add(img.get("fullsize"))

    if embed.get("$type") in RECORD_EMBEDS:
        return _record_media_files(embed)
    add_images(embed.get("images"))
    media = embed.get("media")
    if isinstance(media, dict):
        add_images(media.get("images"))
    external = embed.get("external")
    if isinstance(external, dict):
        add(external.get("thumb"))
    return ";".join(hashes).encode("utf-8")


# CAR.md, "MediaFiles for records": an imported post stores the record's embed.
RECORD_EMBEDS = ("app.bsky.embed.images", "app.bsky.embed.external", "app.bsky.embed.video",
                 "app.bsky.embed.recordWithMedia")


def _record_media_files(embed: dict) -> bytes:
    hashes: list[str] = []

    def obj(v: Any) -> dict:
        return v if isinstance(v, dict) else {}

    def blob(b: Any) -> None:
        b = obj(b)
        link = obj(b.get("ref")).get("$link")
        if not (isinstance(link, str) and link):
            link = b.get("cid")
        if isinstance(link, str) and link:
            hashes.append(_no_surrogates(link))

    def images(v: Any) -> None:
        if isinstance(v, list):
            for img in v:
                blob(obj(img).get("image"))

    media = obj(embed.get("media"))
    images(embed.get("images"))
    images(media.get("images"))
    blob(media.get("video"))
    blob(embed.get("video"))
    blob(obj(embed.get("external")).get("thumb"))
    blob(obj(media.get("external")).get("thumb"))
    return ";".join(hashes).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Column values

@dataclass(frozen=True)
class Val:
    """One stored value: SQLite storage class, ``CAST(col AS BLOB)`` bytes, Python value."""

    type: str  # "null", "integer", "real", "text", "blob"
    raw: bytes | None
    value: Any


def count_value(v: Val) -> int:
    if v.type == "integer":
        return v.value
    if v.type == "real":
        x = v.value
        if math.isnan(x):
            return 0
        if x >= 2.0**63:
            return INT64_MAX
        if x < -(2.0**63):
            return INT64_MIN
        return max(INT64_MIN, min(INT64_MAX, math.trunc(x)))
    if v.type in ("text", "blob"):
        if re.fullmatch(rb"[+-]?[0-9]+", v.raw):
            n = int(v.raw)
            if INT64_MIN <= n <= INT64_MAX:
                return n
        return 0
    return 0


_TRUE_TEXT = frozenset([b"1", b"t", b"T", b"TRUE", b"true", b"True"])


def bool_value(v: Val) -> bool:
    if v.type in ("integer", "real"):
        return v.value != 0
    if v.type in ("text", "blob"):
        return v.raw in _TRUE_TEXT
    return False


def text_value(v: Val) -> bytes:
    return b"" if v.type == "null" else v.raw


def time_value(v: Val) -> Timestamp | None:
    """None for a bad value."""
    if v.type == "null":
        return ZERO_TIME
    return parse_timestamp(v.raw)


def stored_json(v: Val) -> tuple[str, bytes]:
    """A stored JSON column for JSON output: ``("omit", b"")``, ``("ok", compact bytes)``
    or ``("bad", the text to write as a string under keep)``."""
    if v.type == "null":
        return "omit", b""
    if v.type == "integer":
        return "ok", str(v.value).encode()
    if v.type == "real":
        text = go_format_float(v.value).encode()
        if math.isinf(v.value) or math.isnan(v.value):
            return "bad", text
        return "ok", text
    if v.raw == b"":
        return "omit", b""
    compact = json_compact(v.raw)
    if compact is None:
        return "bad", v.raw
    return "ok", compact


# --------------------------------------------------------------------------------------------
# The export

def _read_rows(archive_path: str | os.PathLike[str], did: str | None) -> list[dict[str, Val]]:
    uri = Path(archive_path).resolve().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True)
    try:
        con.text_factory = bytes
        existing = {r[1].decode() for r in con.execute("PRAGMA table_info(posts)")}
        cols = [c for c in POST_COLUMNS if c in existing]
        select = ", ".join(f"typeof({c}), CAST({c} AS BLOB), {c}" for c in cols)
        sql = f"SELECT {select} FROM posts"
        params: tuple = ()
        if did is not None:
            sql += " WHERE did = ?"
            params = (did,)
        sql += " ORDER BY created_at DESC, uri ASC"
        rows = []
        for rec in con.execute(sql, params).fetchall():
            row = {}
            for k, c in enumerate(cols):
                typ, raw, value = rec[3 * k:3 * k + 3]
                row[c] = Val(typ.decode(), raw, value)
            if "quote_count" not in row:  # schema v1
                row["quote_count"] = Val("integer", b"0", 0)
            rows.append(row)
        return rows
    finally:
        con.close()


class _Exporter:
    def __init__(self, fmt: str, on_bad_value: str) -> None:
        if fmt not in ("json", "csv", "jsonl"):
            raise ValueError(f"unknown format {fmt!r}")
        if on_bad_value not in ("error", "keep"):
            raise ValueError(f"unknown on_bad_value {on_bad_value!r}")
        self.fmt = fmt
        self.keep = on_bad_value == "keep"
        self.warnings: list[tuple[str, str]] = []

    def bad(self, uri: str, column: str, v: Val) -> None:
        if not self.keep:
            raise ReferenceBadValue(uri, column, v.value)
        self.warnings.append((uri, column))

    def json_time(self, uri: str, column: str, v: Val) -> bytes:
        ts = time_value(v)
        if ts is None:
            self.bad(uri, column, v)
            return json_string(v.raw)
        return json_string(ts.rfc3339nano().encode())

    def csv_time(self, uri: str, column: str, v: Val) -> bytes:
        ts = time_value(v)
        if ts is None:
            self.bad(uri, column, v)
            return v.raw
        return ts.rfc3339().encode()

    def json_post(self, uri: str, row: dict[str, Val]) -> bytes:
        """One post as compact JSON (Go's Marshal of the Post struct)."""
        fields: list[tuple[str, bytes]] = []
        for c in ("uri", "cid", "did", "text"):
            fields.append((c, json_string(text_value(row[c]))))
        for c in ("created_at", "indexed_at"):
            fields.append((c, self.json_time(uri, c, row[c])))
        fields.append(("has_media", b"true" if bool_value(row["has_media"]) else b"false"))
        for c in ("like_count", "repost_count", "reply_count", "quote_count"):
            fields.append((c, str(count_value(row[c])).encode()))
        fields.append(("is_reply", b"true" if bool_value(row["is_reply"]) else b"false"))
        for c in ("reply_parent", "embed_type"):
            t = text_value(row[c])
            if t:
                fields.append((c, json_string(t)))
        for c in ("embed_data", "labels"):
            kind, data = stored_json(row[c])
            if kind == "ok":
                fields.append((c, data))
            elif kind == "bad":
                self.bad(uri, c, row[c])
                fields.append((c, json_string(data)))
        fields.append(("archived_at", self.json_time(uri, "archived_at", row["archived_at"])))
        return b"{" + b",".join(b'"' + k.encode() + b'":' + v for k, v in fields) + b"}"

    def csv_row(self, uri: str, row: dict[str, Val]) -> bytes:
        created = self.csv_time(uri, "created_at", row["created_at"])
        indexed = self.csv_time(uri, "indexed_at", row["indexed_at"])
        # archived_at is not a CSV column, but bskyarchive reads it for every format.
        self.csv_time(uri, "archived_at", row["archived_at"])
        has_media = bool_value(row["has_media"])
        media = b""
        if has_media and row["embed_data"].type in ("text", "blob"):
            media = media_files(go_unmarshal_object(row["embed_data"].raw))
        fields = [
            text_value(row["uri"]),
            text_value(row["cid"]),
            text_value(row["did"]),
            text_value(row["text"]),
            created,
            str(count_value(row["like_count"])).encode(),
            str(count_value(row["repost_count"])).encode(),
            str(count_value(row["reply_count"])).encode(),
            str(count_value(row["quote_count"])).encode(),
            b"true" if bool_value(row["is_reply"]) else b"false",
            text_value(row["reply_parent"]),
            b"true" if has_media else b"false",
            media,
            text_value(row["embed_type"]),
            indexed,
        ]
        return b",".join(csv_field(f) for f in fields) + b"\n"

    def run(self, rows: list[dict[str, Val]], since_ns: int | None,
            until_ns: int | None) -> bytes:
        pieces: list[bytes] = []
        for row in rows:
            uri = go_decode(text_value(row["uri"]))
            if since_ns is not None or until_ns is not None:
                ts = time_value(row["created_at"])
                if ts is None:
                    self.warnings.append((uri, "created_at"))
                    continue
                instant = ts.instant_ns()
                if since_ns is not None and instant < since_ns:
                    continue
                if until_ns is not None and instant > until_ns:
                    continue
            if self.fmt == "csv":
                pieces.append(self.csv_row(uri, row))
            else:
                pieces.append(self.json_post(uri, row))
        if self.fmt == "csv":
            return UTF8_BOM + CSV_HEADER + b"\n" + b"".join(pieces)
        if self.fmt == "jsonl":
            return b"".join(p + b"\n" for p in pieces)
        return json_indent(b"[" + b",".join(pieces) + b"]") + b"\n"


def reference_export_with_warnings(
    archive_path: str | os.PathLike[str],
    fmt: str,
    *,
    did: str | None = None,
    since: str | None = None,
    until: str | None = None,
    on_bad_value: str = "error",
) -> tuple[bytes, list[tuple[str, str]]]:
    """Export the archive; return the data file's bytes and the ``(uri, column)`` warnings."""
    since_ns = None if since is None else parse_bound(since, until=False)
    until_ns = None if until is None else parse_bound(until, until=True)
    exporter = _Exporter(fmt, on_bad_value)
    rows = _read_rows(archive_path, did)
    data = exporter.run(rows, since_ns, until_ns)
    return data, exporter.warnings


def reference_export(
    archive_path: str | os.PathLike[str],
    fmt: str,
    *,
    did: str | None = None,
    since: str | None = None,
    until: str | None = None,
    on_bad_value: str = "error",
) -> bytes:
    """The bytes of posts.json / posts.csv / posts.jsonl for this archive and these options."""
    data, _ = reference_export_with_warnings(
        archive_path, fmt, did=did, since=since, until=until, on_bad_value=on_bad_value
    )
    return data
