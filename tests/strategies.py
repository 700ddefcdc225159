"""Hypothesis strategies for archive rows (``rows()`` -> list of row dicts for make_archive).

By default every value is exportable (``allow_bad=False``): no value the export would stop
on. Values still come in every storage class SQLite's affinity leaves them in (a stored
``'42'`` in a JSON column becomes an INTEGER, as in real archives).

- ``rows(allow_bad=True)`` adds, now and then, unreadable timestamps and invalid stored JSON.
- ``rows(not_null=False)`` also puts NULL in ``cid``, ``did``, ``created_at``, ``indexed_at``;
  build those archives with ``make_archive(..., not_null=False)``.
- ``bounds()`` draws ``(since, until)`` pairs (either may be None) around the same dates.
- ``DIDS`` is the pool of DIDs rows take, for ``did=`` filters.
"""

from __future__ import annotations

import calendar

from hypothesis import strategies as st

try:
    from archives import Blob
except ImportError:  # tests/ laid out as a package
    from .archives import Blob

__all__ = [
    "DIDS",
    "TIE_POOL",
    "bad_json",
    "bad_timestamp",
    "booleans",
    "bounds",
    "counts",
    "json_text",
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


@st.composite
def row(draw, *, allow_bad: bool = False, not_null: bool = True) -> dict:
    """One row dict (its uri is only a sort key; ``rows()`` makes uris unique)."""
    did = draw(st.sampled_from(DIDS))
    r = {
        "uri": f"at://{did}/app.bsky.feed.post/{draw(_URI_KEYS)}",
        "cid": draw(text_values(nullable=not not_null)),
        "did": did if draw(st.integers(0, 9)) else draw(text_values(nullable=not not_null)),
        "text": draw(text_values()),
        "created_at": draw(timestamps(nullable=not not_null, allow_bad=allow_bad)),
        "indexed_at": draw(timestamps(nullable=not not_null, allow_bad=allow_bad)),
        "has_media": draw(booleans),
        "like_count": draw(counts),
        "repost_count": draw(counts),
        "reply_count": draw(counts),
        "quote_count": draw(counts),
        "is_reply": draw(booleans),
        "reply_parent": draw(st.one_of(st.just(""), st.none(), text_values())),
        "embed_type": draw(st.one_of(
            st.just(""), st.none(),
            st.sampled_from(["images", "external", "record", "record_with_media", "video"]),
            text_values())),
        "embed_data": draw(stored_json(allow_bad=allow_bad, media=True)),
        "labels": draw(stored_json(allow_bad=allow_bad)),
        "archived_at": draw(timestamps(nullable=True, allow_bad=allow_bad)),
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
