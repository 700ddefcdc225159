"""Hypothesis strategies for archive rows (``rows()`` -> list of row dicts for make_archive).

By default every value is exportable (``allow_bad=False``): no value the export would stop
on. Values still come in every storage class SQLite's affinity leaves them in (a stored
``'42'`` in a JSON column becomes an INTEGER, as in real archives).

- ``rows(allow_bad=True)`` adds, now and then, unreadable timestamps and invalid stored JSON.
- ``rows(not_null=False)`` also puts NULL in ``cid``, ``did``, ``created_at``, ``indexed_at``;
  build those archives with ``make_archive(..., not_null=False)``.
- ``bounds()`` draws ``(since, until)`` pairs (either may be None) around the same dates.
- ``large_rows()`` draws archives that cross the core's size thresholds: values around 1 KiB,
  16 KiB, 512 KiB, 1 MiB, 2 MiB and 4 MiB (``LARGE_SIZES``) and runs of 255-700 rows.
- ``DIDS`` is the pool of DIDs rows take, for ``did=`` filters.
"""

from __future__ import annotations

import calendar
import functools

from hypothesis import strategies as st

try:
    from helpers.archives import Blob
except ImportError:  # tests/ laid out as a package
    from .archives import Blob

__all__ = [
    "DIDS",
    "TIE_POOL",
    "bad_json",
    "bad_timestamp",
    "booleans",
    "bounds",
    "big_json",
    "big_text",
    "counts",
    "json_text",
    "large_rows",
    "media_embed",
    "row",
    "rows",
    "stored_json",
    "text_bytes",
    "text_values",
    "timestamp_text",
    "timestamps",
]

DIDS = ("did:plc:alice", "did:plc:bob", "did:web:example.com")

#: Timestamps drawn often, so that rows tie on created_at (and then sort by uri).
TIE_POOL = (
    "2024-01-15 10:30:00 +0000 UTC",
    "2024-01-15 10:30:00.5 +0000 UTC",
    "2024-01-15 03:30:00 -0700 PDT m=+0.001234567",
    "2024-01-15T10:30:00Z",
    "2024-01-15 10:30:00",
    "2024-01-15",
)

# --------------------------------------------------------------------------------------------
# text

_TRICKY = (
    "\u2028", "\u2029", "\x00", '"', ",", "\\", "\n", "\r", "\r\n", "\t", " ", "\u00a0",
    "\u3000", "\u0085", "\u1680", "\u2000", "\u200b", "\x7f", "\x08", "\x0c", "\x1b", "\x1f",
    "\U0001f600", "\U0001f1eb\U0001f1f7", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "<b>&amp;</b>", "caf\u00e9", "e\u0301", "\ufffd", "\ufeff", "\\.", "'", "=1+2", "\U0010ffff",
)

_INVALID_UTF8 = (
    b"\xff", b"\xfe", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x80", b"\xf4\x90\x80\x80",
    b"\xf0\x9f\x98", b"\xc3", b"\xe0\x80\x80", b"\xf8\x88\x80\x80\x80",
)

#: Any Unicode text, biased towards the characters the format treats specially.
text_str = st.lists(
    st.one_of(st.text(max_size=6), st.sampled_from(_TRICKY)), max_size=6
).map("".join)

#: Bytes that are mostly UTF-8 with invalid sequences mixed in.
text_bytes = st.lists(
    st.one_of(text_str.map(lambda s: s.encode("utf-8")), st.sampled_from(_INVALID_UTF8)),
    min_size=1, max_size=6,
).map(b"".join)


def text_values(*, nullable: bool = True) -> st.SearchStrategy:
    """A TEXT column value: str, raw bytes stored as TEXT, a BLOB, or NULL."""
    options = [
        text_str, text_str, text_str,
        text_bytes,
        text_bytes.map(Blob),
        st.sampled_from(["", "\\.", " lead", "\u00a0lead", "\u3000lead", "a,b", 'q"q']),
    ]
    if nullable:
        options.append(st.none())
    return st.one_of(*options)


# --------------------------------------------------------------------------------------------
# timestamps

_YEARS = (2024, 2024, 2024, 2023, 2025, 1970, 2000, 0, 1, 9999)
_ZONES = (  # (offset, zone name) as Go's time.Time.String() writes them
    ("+0000", "UTC"), ("-0700", "PDT"), ("-0700", "MST"), ("+0900", "+0900"),
    ("+0900", "JST"), ("+0530", "IST"), ("+0000", "GMT"), ("-0000", "UTC"),
    ("+0900", "UTC"), ("+0100", "CET"), ("-0930", "-0930"), ("+2300", "X"),
)
_MONOTONIC = (" m=+0.001234567", " m=-12.5", " m=+3600.000000001", " m=+0")
_OFFSETS = ("+00:00", "-00:00", "+05:30", "-07:00", "+09:00", "+23:59", "-12:00")


@st.composite
def _date(draw) -> str:
    year = draw(st.sampled_from(_YEARS))
    month = draw(st.integers(1, 12))
    # calendar.monthrange has no year 0; 0 is a leap year like 2000.
    last = calendar.monthrange(year if year else 2000, month)[1]
    day = draw(st.integers(1, last))
    return f"{year:04d}-{month:02d}-{day:02d}"


@st.composite
def _clock(draw, *, seconds: bool = True) -> str:
    h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    text = f"{h:02d}:{m:02d}"
    if seconds:
        text += f":{s:02d}"
        if draw(st.booleans()):
            text += "." + draw(st.text("0123456789", min_size=1, max_size=12))
    return text


@st.composite
def timestamp_text(draw) -> str:
    """A readable timestamp in one of the forms archives hold."""
    form = draw(st.integers(0, 6))
    if form <= 1:  # Go's time.Time.String()
        offset, zone = draw(st.sampled_from(_ZONES))
        text = f"{draw(_date())} {draw(_clock())} {offset} {zone}"
        if draw(st.booleans()):
            text += draw(st.sampled_from(_MONOTONIC))
        if draw(st.integers(0, 9)) == 0:
            text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(
                st.sampled_from([" ", "\t", "\r\n"]))
        return text
    if form == 2:  # SQLite CURRENT_TIMESTAMP
        return f"{draw(_date())} {draw(_clock()).split('.')[0]}"
    sep = draw(st.sampled_from([" ", "T"]))
    z = draw(st.sampled_from(["", "", "Z"]))
    if form == 3:
        return f"{draw(_date())}{sep}{draw(_clock())}{draw(st.sampled_from(_OFFSETS))}{z}"
    if form == 4:
        return f"{draw(_date())}{sep}{draw(_clock())}{z}"
    if form == 5:
        return f"{draw(_date())}{sep}{draw(_clock(seconds=False))}{z}"
    return f"{draw(_date())}{z}"


#: Timestamps no export can read.
bad_timestamp = st.sampled_from([
    "garbage", "2024-02-30 10:00:00", "2023-02-29", "2024-01-01 24:00:00 +0000 UTC",
    "2024-01-01 10:00:60", "2024-01-01T00:00:00+24:00", "2024-01-01 00:00:00 +0060 X",
    " 2024-01-01", "2024-01-01 10:00:00 +0000", "Mon Jan 15 2024", "", "2024-1-5",
    "2024-01-01  10:00:00", "2024-01-01 10:00:00 +0000 UTC m", b"\xff2024-01-01",
    2024, 2024.5, -1, Blob(b"not a time"),
])


def timestamps(*, nullable: bool = False, allow_bad: bool = False) -> st.SearchStrategy:
    """A timestamp column value (pool values often, for ties)."""
    options = [
        st.sampled_from(TIE_POOL), st.sampled_from(TIE_POOL),
        timestamp_text(), timestamp_text(),
        timestamp_text().map(lambda s: s.encode()),
        timestamp_text().map(lambda s: Blob(s.encode())),
    ]
    if nullable:
        options.append(st.none())
    good = st.one_of(*options)
    if not allow_bad:
        return good
    return st.integers(0, 14).flatmap(lambda k: bad_timestamp if k == 0 else good)


# --------------------------------------------------------------------------------------------
# counts and booleans

#: Count column values in every storage class.
counts = st.one_of(
    st.integers(0, 1000),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**40, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=True),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["+5", "-0", "007", " 5", "5 ", "5x", "", "abc", "1e3", "1.9", "-2.5",
                     "99999999999999999999", "-9223372036854775809", "9223372036854775807",
                     "\u0665", b"12", Blob(b"12"), Blob(b"-3"), Blob(b"x")]),
    st.none(),
)

#: Boolean column values in many spellings.
booleans = st.sampled_from([
    0, 1, 2, -1, 0.0, 0.5, -0.0, 1e300, "1", "0", "t", "T", "TRUE", "true", "True", "f",
    "false", "FALSE", "yes", "", " 1", "1 ", "tRUE", None, Blob(b"1"), Blob(b"true"),
    Blob(b"0"), b"True", b"t\x00",
])


# --------------------------------------------------------------------------------------------
# stored JSON

_WS = (b"", b"", b"", b"", b" ", b"  ", b"\n", b"\t", b"\r\n", b"\n    ")
_NUMBERS = (
    b"0", b"-0", b"-0.0", b"1", b"-1", b"2.50", b"1e10", b"1E+2", b"6.02E+23", b"1e-7",
    b"123456789012345678901234567890", b"9007199254740993", b"0.1", b"-12.5e-3",
    b"1e400", b"-1e400", b"1e-400",
)
_STRING_PIECES = (
    b'\\"', b"\\\\", b"\\/", b"\\b", b"\\f", b"\\n", b"\\r", b"\\t", b"\\u2028", b"\\u2029",
    b"\\u00e9", b"\\u00E9", b"\\ud83d\\ude00", b"\\ud800", b"\\udc00x", b"\\u0000",
    b"\\u001F", "\u2028".encode(), "\u2029".encode(), b"<>&", b"/", b",", b" ",
) + _INVALID_UTF8


@st.composite
def _json_string(draw) -> bytes:
    pieces = draw(st.lists(st.one_of(
        st.text(st.characters(exclude_characters='"\\',
                              exclude_categories=("Cs", "Cc")), max_size=6)
        .map(lambda s: s.encode()),
        st.sampled_from(_STRING_PIECES),
        st.integers(0, 0xFFFF).map(lambda n: b"\\u%04x" % n),
        st.integers(0, 0xFFFF).map(lambda n: b"\\u%04X" % n),
    ), max_size=5))
    return b'"' + b"".join(pieces) + b'"'


def _ws(draw) -> bytes:
    return draw(st.sampled_from(_WS))


@st.composite
def json_text(draw, depth: int = 3, keys: tuple[str, ...] = ()) -> bytes:
    """A valid JSON value (Go's scanner) as bytes, with odd spacing and spellings."""
    kinds = ["str", "num", "lit"] + (["obj", "arr", "obj", "arr"] if depth > 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "str":
        return draw(_json_string())
    if kind == "num":
        return draw(st.sampled_from(_NUMBERS))
    if kind == "lit":
        return draw(st.sampled_from([b"true", b"false", b"null"]))
    n = draw(st.integers(0, 4))
    if kind == "arr":
        items = [draw(json_text(depth - 1, keys)) for _ in range(n)]
        if not items:
            return b"[" + _ws(draw) + b"]"
        return b"[" + b",".join(_ws(draw) + v + _ws(draw) for v in items) + b"]"
    members = []
    for _ in range(n):
        if keys and draw(st.booleans()):
            key = b'"' + draw(st.sampled_from(keys)).encode() + b'"'
        else:
            key = draw(_json_string())
        members.append(_ws(draw) + key + _ws(draw) + b":" + _ws(draw)
                       + draw(json_text(depth - 1, keys)) + _ws(draw))
    if not members:
        return b"{" + _ws(draw) + b"}"
    return b"{" + b",".join(members) + b"}"


_MEDIA_URLS = (
    "https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:alice/bafkreiaaa@jpeg",
    "https://cdn.bsky.app/img/feed_thumbnail/plain/did:plc:alice/bafkreibbb@png",
    "https://cdn.example/x/bafkreiccc",
    "https://cdn.example/x/@jpeg",
    "https://cdn.example/x/",
    "nourl",
    "",
    "a/b@c/d@e",
    "https://cdn.example/x/has,comma@jpeg",
    'https://cdn.example/x/has"quote',
    "https://cdn.example/x/ lead",
    "https://cdn.example/x/\u00e9t\u00e9@jpeg",
    "https://cdn.example/x/\\u00e9sc\\/aped@jpeg",  # written with JSON escapes below
    "https://cdn.example/x/\\ud800lone",
    "https://cdn.example/x/nl\\nin",
)


def _url_literal(url: str) -> bytes:
    # The strings are written raw except for '"', which is escaped; "\\u..." in the pool
    # above stays a JSON escape.
    return b'"' + url.replace('"', '\\"').encode() + b'"'


@st.composite
def media_embed(draw) -> bytes:
    """embed_data holding images / media.images / external.thumb URLs (and some wrong types)."""
    def image() -> bytes:
        choice = draw(st.integers(0, 7))
        if choice == 0:
            return b'{"alt":"no fullsize"}'
        if choice == 1:
            return b'{"fullsize":5}'
        if choice == 2:
            return b"null"
        extra = draw(st.sampled_from([b"", b',"alt":"x"', b',"thumb":"https://t/x/th@jpeg"',
                                      b',"Fullsize":"https://c/x/caseonly"']))
        return b'{"fullsize":' + _url_literal(draw(st.sampled_from(_MEDIA_URLS))) + extra + b"}"

    def images() -> bytes:
        if draw(st.integers(0, 9)) == 0:
            return draw(st.sampled_from([b"{}", b'"x"', b"null", b"[]"]))
        return b"[" + b",".join(image() for _ in range(draw(st.integers(0, 3)))) + b"]"

    members = []
    if draw(st.booleans()):
        members.append(b'"images":' + images())
    if draw(st.booleans()):
        members.append(b'"media":{"images":' + images() + b"}")
    if draw(st.booleans()):
        thumb = draw(st.sampled_from([None, 5]) | st.sampled_from(_MEDIA_URLS))
        thumb_lit = b"5" if thumb == 5 else (b"null" if thumb is None else _url_literal(thumb))
        members.append(b'"external":{"uri":"https://example.org/a?b=1&c=2","thumb":'
                       + thumb_lit + b"}")
    if draw(st.integers(0, 5)) == 0:  # a repeated key: the last one counts
        members.append(draw(st.sampled_from([b'"images":[]', b'"external":null',
                                             b'"images":[{"fullsize":"x/last"}]'])))
    if draw(st.integers(0, 5)) == 0:
        members.append(b'"big":[1e400]')  # Go's Unmarshal fails: no media files
    if draw(st.integers(0, 5)) == 0:
        members.append(b'"record":{"uri":"at://x/app.bsky.feed.post/1","cid":"bafyq"}')
    order = draw(st.permutations(members))
    sep = draw(st.sampled_from([b",", b", ", b",\n  "]))
    return b"{" + sep.join(order) + b"}"


#: A whole stored value of 1e400 becomes REAL Inf through SQLite's NUMERIC affinity, which is
#: a bad value; so exportable top-level numbers stay in range (nested ones need not).
_SAFE_TOP_NUMBERS = tuple(n for n in _NUMBERS if n not in (b"1e400", b"-1e400"))

bad_json = st.sampled_from([
    "{bad", "[1,]", "{'a':1}", "NaN", "undefined", '{"a":1} x', b'"\x01"', "   ", "[", "01",
    "1.", '{"a" 1}', '"\\x"', "\ufeff{}", "[1]]", float("inf"), float("-inf"), Blob(b"{"),
    "[" * 10001 + "]" * 10001,
])


def stored_json(*, allow_bad: bool = False, media: bool = False) -> st.SearchStrategy:
    """An embed_data / labels column value (``media=True`` mixes in media embeds)."""
    top = json_text(keys=("images", "media", "external", "fullsize", "thumb", "val"))
    top = top.filter(lambda b: b.strip(b" \t\r\n") not in (b"1e400", b"-1e400"))
    options = [
        st.none(), st.none(), st.just(""), st.sampled_from(["null", "[]", "{}", " {} "]),
        top, top,
        top.map(Blob),
        st.sampled_from(_SAFE_TOP_NUMBERS).map(bytes.decode),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
    ]
    if media:
        options += [media_embed(), media_embed(), media_embed()]
    good = st.one_of(*options)
    if not allow_bad:
        return good
    return st.integers(0, 14).flatmap(lambda k: bad_json if k == 0 else good)


# --------------------------------------------------------------------------------------------
# rows

_URI_KEYS = st.one_of(
    st.text("abcxyz3k", max_size=3),
    st.sampled_from(["\u00e9", "\u2028", ",", "A", "~", " "]),
)


@functools.cache
def _row_strategies(allow_bad: bool, not_null: bool) -> dict[str, st.SearchStrategy]:
    """The strategies row() draws its columns from, built once for each (allow_bad,
    not_null).  Built anew for every row, as they were, each new strategy object was
    validated again by hypothesis at its first draw: most of a differential test's time."""
    return {
        "cid": text_values(nullable=not not_null),
        "did": text_values(nullable=not not_null),
        "text": text_values(),
        "stamp": timestamps(nullable=not not_null, allow_bad=allow_bad),
        "reply_parent": st.one_of(st.just(""), st.none(), text_values()),
        "embed_type": st.one_of(
            st.just(""), st.none(),
            st.sampled_from(["images", "external", "record", "record_with_media", "video"]),
            text_values()),
        "embed_data": stored_json(allow_bad=allow_bad, media=True),
        "labels": stored_json(allow_bad=allow_bad),
        "archived_at": timestamps(nullable=True, allow_bad=allow_bad),
    }


@st.composite
def row(draw, *, allow_bad: bool = False, not_null: bool = True) -> dict:
    """One row dict (its uri is only a sort key; ``rows()`` makes uris unique)."""
    s = _row_strategies(allow_bad, not_null)
    did = draw(st.sampled_from(DIDS))
    r = {
        "uri": f"at://{did}/app.bsky.feed.post/{draw(_URI_KEYS)}",
        "cid": draw(s["cid"]),
        "did": did if draw(st.integers(0, 9)) else draw(s["did"]),
        "text": draw(s["text"]),
        "created_at": draw(s["stamp"]),
        "indexed_at": draw(s["stamp"]),
        "has_media": draw(booleans),
        "like_count": draw(counts),
        "repost_count": draw(counts),
        "reply_count": draw(counts),
        "quote_count": draw(counts),
        "is_reply": draw(booleans),
        "reply_parent": draw(s["reply_parent"]),
        "embed_type": draw(s["embed_type"]),
        "embed_data": draw(s["embed_data"]),
        "labels": draw(s["labels"]),
        "archived_at": draw(s["archived_at"]),
    }
    return r


def _unique_uris(rs: list[dict]) -> list[dict]:
    for i, r in enumerate(rs):
        r["uri"] = f"{r['uri']}~{i:03d}"
    return rs


def rows(*, allow_bad: bool = False, not_null: bool = True, min_size: int = 0,
         max_size: int = 40) -> st.SearchStrategy[list[dict]]:
    """Lists of row dicts for ``make_archive`` (unique uris, 0-40 rows by default)."""
    return st.lists(row(allow_bad=allow_bad, not_null=not_null), min_size=min_size,
                    max_size=max_size).map(_unique_uris)


# --------------------------------------------------------------------------------------------
# date bounds

@st.composite
def _bound(draw) -> str:
    year = draw(st.sampled_from([2023, 2024, 2024, 2024, 2025]))
    month = draw(st.sampled_from([1, 1, 1, 2, 6, 12]))
    day = draw(st.sampled_from([1, 14, 15, 16, 28]))
    date = f"{year:04d}-{month:02d}-{day:02d}"
    if draw(st.booleans()):
        return date
    h = draw(st.sampled_from([0, 3, 10, 17, 23]))
    m = draw(st.sampled_from([0, 30, 59]))
    sec = draw(st.sampled_from([0, 59]))
    clock = f"{h:02d}:{m:02d}:{sec:02d}"
    zone = draw(st.sampled_from(["Z", "Z", "", "+02:00", "-07:00"]))
    return f"{date}T{clock}{zone}"


def bounds() -> st.SearchStrategy[tuple[str | None, str | None]]:
    """``(since, until)`` pairs; either may be None (both None now and then)."""
    return st.tuples(st.none() | _bound(), st.none() | _bound())


# --------------------------------------------------------------------------------------------
# large archives: across the core's thresholds

KIB, MIB = 1 << 10, 1 << 20
ESC_CHUNK = 16 * KIB  # encode/json.pxi: text is escaped this many input bytes at a time

#: Sizes at and around each threshold: LARGE_JSON (1 KiB, stored JSON validated first),
#: ESC_CHUNK, ARENA_BYTES (512 KiB), the flush (1 MiB), LEND_BYTES (2 MiB, lent from
#: SQLite's memory), BATCH_BYTES (4 MiB).
MEDIUM_SIZES = (KIB - 1, KIB, KIB + 1, ESC_CHUNK - 1, ESC_CHUNK, ESC_CHUNK + 1,
                2 * ESC_CHUNK + 5)
HUGE_SIZES = (512 * KIB - 1, 512 * KIB + 1, MIB - 1, MIB + 1, 2 * MIB - 1, 2 * MIB,
              2 * MIB + 1, 4 * MIB - 1, 4 * MIB + 1)
LARGE_SIZES = MEDIUM_SIZES + HUGE_SIZES

#: The most bytes of large values one drawn archive holds (so the reference, which is pure
#: Python, stays at a second or two per archive).
LARGE_BUDGET = 4 * MIB + 64 * KIB

#: Spliced in at chunk edges: escapes, multi-byte and invalid sequences that straddle them.
_EDGE_PIECES = (
    b'"', b"\\", b"\x00", b"\n", b"\x1f", "\u00e9".encode(), "\u2028".encode(),
    "\u2029".encode(), "\U0001f600".encode(), "\ufffd".encode(), b"\xff", b"\xe2\x80",
    b"\xf0\x9f\x98", b"\xed\xa0\x80", b"<&>",
)

_UNITS = st.one_of(
    st.sampled_from([b"a", b"post text ", "caf\u00e9 ".encode(), "\U0001f600".encode(),
                     b'"\\', b"\n\t", "\u2028".encode(), b"\xff"]),
    text_bytes.map(lambda b: b or b"z"),
)


def _fill(unit: bytes, size: int) -> bytearray:
    """`unit` repeated to exactly `size` bytes (the last copy cut short)."""
    return bytearray((unit * (size // len(unit) + 1))[:size])


def _edges(size: int) -> list[int]:
    """Offsets worth putting something tricky at: the first chunk edges, the last one, the
    end."""
    edges = [k * ESC_CHUNK for k in range(1, min(3, size // ESC_CHUNK) + 1)]
    edges += [size // ESC_CHUNK * ESC_CHUNK, size]
    return sorted({e for e in edges if 0 < e <= size})


def _splice_edges(draw, buf: bytearray, pieces: tuple[bytes, ...] = _EDGE_PIECES) -> None:
    for edge in _edges(len(buf)):
        for delta, piece in draw(st.lists(st.tuples(st.integers(-4, 1), st.sampled_from(pieces)),
                                          max_size=2)):
            at = max(0, min(edge + delta, len(buf) - len(piece)))
            buf[at:at + len(piece)] = piece


@st.composite
def big_text(draw, sizes: tuple[int, ...] = LARGE_SIZES) -> bytes:
    """Exactly one of `sizes` bytes of text, built by repeating a drawn unit, with escapes
    and multi-byte / invalid UTF-8 spliced in around the 16 KiB escape-chunk edges."""
    size = draw(st.sampled_from(sizes))
    buf = _fill(draw(_UNITS), size)
    _splice_edges(draw, buf)
    return bytes(buf)


#: Pieces safe inside a JSON string (a valid string stays valid wherever they land).
_JSON_STRING_EDGE = (b"\\n", b"\\u2028", b"\\ud83d\\ude00", b"\\\\", b'\\"', "\u00e9".encode(),
                     "\u2028".encode(), b"\xff", b"<&>", b"/")


@st.composite
def big_json(draw, sizes: tuple[int, ...] = LARGE_SIZES, *, allow_bad: bool = False) -> bytes:
    """Stored JSON of exactly one of `sizes` bytes: a long array of drawn values, a media
    embed around one, or one long string; padded with white space to the size.  With
    `allow_bad`, now and then made invalid at its end."""
    size = draw(st.sampled_from(sizes))
    kind = draw(st.sampled_from(["array", "embed", "string"]))
    if kind == "string":
        # Whole escapes only, so cutting at `size` never splits one: spaces make up the rest.
        unit = draw(st.sampled_from([b"x", b"ab\\n", b"\\u00e9", "caf\u00e9".encode(),
                                     b"\\ud83d\\ude00 ", b"\\\\/"]))
        body = bytearray(unit * ((size - 2) // len(unit)))
        body += b" " * (size - 2 - len(body))
        for edge in _edges(len(body)):
            for delta, piece in draw(st.lists(st.tuples(
                    st.integers(-4, 1), st.sampled_from(_JSON_STRING_EDGE)), max_size=1)):
                at = max(0, min(edge + delta, len(body) - len(piece)))
                # Only over plain spaces or a unit boundary would keep escapes whole; simpler:
                # write it where the bytes it covers hold no backslash and end no escape.
                if b"\\" not in body[max(0, at - 12):at + len(piece) + 1]:
                    body[at:at + len(piece)] = piece
        value = b'"' + bytes(body) + b'"'
    else:
        # Nesting only in the smaller values: indenting a few MiB of nested arrays would
        # make tens of MiB for the (pure Python) reference to check.
        depth = 2 if size <= 4 * ESC_CHUNK else 1
        items = draw(st.lists(json_text(depth=depth, keys=("images", "fullsize", "val")),
                              min_size=1, max_size=3))
        sep = draw(st.sampled_from([b",", b", ", b",\n  "]))
        block = sep.join(items)
        head = b"["
        tail = b"]"
        if kind == "embed":
            head = (b'{"images":[{"fullsize":"https://c/x/big1@jpeg"}],'
                    b'"external":{"thumb":"https://c/x/big2@png"},"val":[')
            tail = b"]}"
        room = size - len(head) - len(tail)
        reps = max(0, (room + len(sep)) // (len(block) + len(sep)))
        body = sep.join([block] * reps) if reps else b""
        value = head + body + b" " * max(0, room - len(body)) + tail
    if allow_bad and draw(st.integers(0, 5)) == 0:
        value = draw(st.sampled_from([value[:-1], value + b" x", value[:-1] + b",]"
                                      if value.endswith(b"]") else value + b"}"]))
    return value


def _as_stored(draw, value: bytes) -> object:
    """Raw TEXT mostly; a BLOB or a str (when it decodes) now and then."""
    how = draw(st.integers(0, 5))
    if how == 0:
        return Blob(value)
    if how == 1:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return value


_LARGE_COLUMNS = ("text", "text", "text", "embed_data", "embed_data", "labels", "reply_parent",
                  "cid")


@st.composite
def large_rows(draw, *, allow_bad: bool = False) -> list[dict]:
    """An archive's rows that cross the core's thresholds: a run of 1-700 rows (copies of a
    few drawn ones, so 300+ cost little to draw) crossing ARENA_ROWS (256), medium values on
    the run now and then (many rows crossing ARENA_BYTES), and up to two large values
    (LARGE_SIZES, at most LARGE_BUDGET bytes in all) in rows at the arena edges."""
    templates = draw(st.lists(row(allow_bad=allow_bad), min_size=1, max_size=4))
    n = draw(st.sampled_from([1, 2, 3, 255, 256, 257, 300, 513, 700]))
    rs = [dict(templates[i % len(templates)]) for i in range(n)]
    if n > 200 and draw(st.booleans()):
        col = draw(st.sampled_from(["text", "embed_data"]))
        step = draw(st.sampled_from([1, 2, 3]))
        if col == "text":
            medium = draw(big_text(sizes=(KIB - 1, KIB + 1, 2 * KIB + 5)))
        else:
            medium = draw(big_json(sizes=(KIB, KIB + 1, 3 * KIB), allow_bad=allow_bad))
        for r in rs[::step]:
            r[col] = _as_stored(draw, medium)
    budget = LARGE_BUDGET
    for _ in range(draw(st.integers(0 if n > 200 else 1, 2))):
        col = draw(st.sampled_from(_LARGE_COLUMNS))
        sizes = tuple(z for z in LARGE_SIZES if z <= budget) or MEDIUM_SIZES[:3]
        if col in ("embed_data", "labels"):
            value = draw(big_json(sizes, allow_bad=allow_bad))
        else:
            value = draw(big_text(sizes))
        budget -= len(value)
        at = draw(st.sampled_from([0, 1, 254, 255, 256, n - 1]))
        rs[min(at, n - 1)][col] = _as_stored(draw, value)
    return _unique_uris(rs)
