"""The reference exporter reproduces bskyarchive's golden files, and its helpers follow
FORMAT.md / docs/format-decisions.md to the byte."""

from __future__ import annotations

import pytest

from helpers.archives import GOLDEN_DIR, Blob, load_golden, make_archive
from helpers.reference import (
    ZERO_TIME,
    ReferenceBadValue,
    csv_field,
    go_decode,
    go_format_float,
    go_unmarshal_object,
    json_compact,
    json_indent,
    json_string,
    media_files,
    media_hash,
    parse_bound,
    parse_timestamp,
    reference_export,
    reference_export_with_warnings,
)

GOLDEN_CASES = [
    ("posts.json", "json", {}),
    ("posts.csv", "csv", {}),
    ("posts.jsonl", "jsonl", {}),
    ("posts.did-range.json", "json",
     {"did": "did:web:golden.example", "since": "2024-04-05T00:00:00Z",
      "until": "2024-05-01T10:00:12Z"}),
    ("posts.did-range.csv", "csv",
     {"did": "did:plc:golden00000000000000000", "since": "2024-04-01T00:00:00Z",
      "until": "2024-04-30T23:59:59Z"}),
]


@pytest.fixture(scope="module")
def golden_archive(tmp_path_factory):
    return load_golden(tmp_path_factory.mktemp("golden") / "golden.db")


@pytest.mark.parametrize("name,fmt,options", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden(golden_archive, name, fmt, options):
    expected = (GOLDEN_DIR / name).read_bytes()
    got, warnings = reference_export_with_warnings(golden_archive, fmt, **options)
    assert got == expected
    assert warnings == []


def test_golden_archive_loads(golden_archive):
    import sqlite3

    con = sqlite3.connect(golden_archive)
    try:
        assert con.execute("SELECT count(*) FROM posts").fetchone() == (54,)
        hits = con.execute("SELECT count(*) FROM posts_fts WHERE posts_fts MATCH 'tie'")
        assert hits.fetchone() == (5,)
    finally:
        con.close()


# --- strings ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    (b"\xed\xa0\x80", b'"\\ufffd\\ufffd\\ufffd"'),
    (b"\xc0\xaf", b'"\\ufffd\\ufffd"'),
    (b"a\xe2\x80", b'"a\\ufffd\\ufffd"'),
    (b"\xf4\x90\x80\x80", b'"\\ufffd\\ufffd\\ufffd\\ufffd"'),
    (b"\xef\xbf\xbd", b'"\xef\xbf\xbd"'),  # a real U+FFFD stays raw
    (b"\xf0\x9f\x98\x80", b'"\xf0\x9f\x98\x80"'),
])
def test_json_string_invalid_utf8(raw, expected):
    assert json_string(raw) == expected


def test_go_decode_differs_from_python_replace():
    assert go_decode(b"\xed\xa0\x80") == "\ufffd" * 3
    # a cut-off sequence: Python replaces it once, Go once per byte
    assert b"\xe2\x80x".decode("utf-8", "replace") == "\ufffdx"
    assert go_decode(b"\xe2\x80x") == "\ufffd\ufffdx"


def test_json_string_escapes():
    raw = b'"\\\n\r\t\x08\x0c\x00\x07\x1f\x7f<>&\xe2\x80\xa8\xe2\x80\xa9'
    assert json_string(raw) == (
        b'"\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u0007\\u001f\x7f<>&\\u2028\\u2029"'
    )


# --- timestamps ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw,nano,secs", [
    (b"2024-01-15 10:30:00.120 +0000 UTC", "2024-01-15T10:30:00.12Z", "2024-01-15T10:30:00Z"),
    (b"2024-03-09 23:30:00 -0700 PDT", "2024-03-09T23:30:00-07:00", "2024-03-09T23:30:00-07:00"),
    (b"2024-03-13 10:05", "2024-03-13T10:05:00Z", "2024-03-13T10:05:00Z"),
    (b"2024-01-15 10:30:00.123 -0700 PDT m=+0.001234567",
     "2024-01-15T10:30:00.123-07:00", "2024-01-15T10:30:00-07:00"),
    (b"2024-01-15 19:30:00 +0900 +0900", "2024-01-15T19:30:00+09:00", "2024-01-15T19:30:00+09:00"),
    (b"2024-01-15 10:30:00 +0900 UTC", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-01-15 10:30:00 -0000 GMT", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-01-15 10:30:00", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-01-15T10:30:00.5+05:30", "2024-01-15T10:30:00.5+05:30", "2024-01-15T10:30:00+05:30"),
    (b"2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-01-15", "2024-01-15T00:00:00Z", "2024-01-15T00:00:00Z"),
    (b"2024-01-15 10:30:00.1234567891", "2024-01-15T10:30:00.123456789Z",
     "2024-01-15T10:30:00Z"),
    (b"0000-02-29 00:00:00", "0000-02-29T00:00:00Z", "0000-02-29T00:00:00Z"),
])
def test_timestamps(raw, nano, secs):
    ts = parse_timestamp(raw)
    assert ts is not None
    assert ts.rfc3339nano() == nano
    assert ts.rfc3339() == secs


@pytest.mark.parametrize("raw", [
    b"2023-02-29", b"2024-02-30 00:00:00", b"2024-01-01 24:00:00", b"2024-01-01 00:60:00",
    b"2024-01-01 00:00:60", b"2024-01-01 00:00:00 +2400 X", b"2024-01-01T00:00:00+01:60",
    b"2024-13-01", b"2024", b"", b"yesterday", b"2024-01-01 00:00:00 +0000",
    b"2024-01-01  00:00:00", b" 2024-01-01",
])
def test_bad_timestamps(raw):
    assert parse_timestamp(raw) is None


def test_zero_time_and_bounds():
    assert ZERO_TIME.rfc3339nano() == "0001-01-01T00:00:00Z"
    day = 86400 * 10**9
    since = parse_bound("2024-01-02", until=False)
    until = parse_bound("2024-01-02", until=True)
    assert until - since == day - 1
    assert parse_bound("2024-01-02T00:00:00Z", until=False) == since
    assert parse_bound("2024-01-02T02:00:00+02:00", until=False) == since
    assert parse_bound("2024-01-02T00:00:00", until=True) == since
    with pytest.raises(ValueError):
        parse_bound("2024-02-30", until=False)


# --- CSV ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    (b"\\.", b'"\\."'),
    (b"\\.x", b"\\.x"),
    (b"\xc2\xa0starts with nbsp", b'"\xc2\xa0starts with nbsp"'),
    ("\u3000ideographic".encode(), '"\u3000ideographic"'.encode()),
    (b"\xc2\x85nel", b'"\xc2\x85nel"'),
    (b"\xffbad first byte", b"\xffbad first byte"),
    (b"", b""),
    (b"a,b", b'"a,b"'),
    (b'say "hi"', b'"say ""hi"""'),
    (b"cr\rlf\n", b'"cr\rlf\n"'),
    (b"nul\x00 inside", b"nul\x00 inside"),
    (b"trailing space ", b"trailing space "),
])
def test_csv_quoting(raw, expected):
    assert csv_field(raw) == expected


def test_media_files():
    embed = (b'{"images":[{"fullsize":"https://cdn/x/bafkone@jpeg"},{"alt":"none"},'
             b'{"fullsize":"nourl"},{"fullsize":"https://cdn/x/@jpeg"}],'
             b'"media":{"images":[{"fullsize":"https://cdn/y/bafktwo"}]},'
             b'"external":{"thumb":"https://cdn/z/bafkthree@png"}}')
    assert media_files(go_unmarshal_object(embed)) == b"bafkone;bafktwo;bafkthree"
    assert media_files(go_unmarshal_object(b"null")) == b""
    assert media_files(go_unmarshal_object(b"[1]")) == b""
    assert media_files(go_unmarshal_object(b'{"external":{"thumb":"a/b"},"external":{}}')) == b""
    assert media_files(go_unmarshal_object(b'{"external":{"thumb":"a/\\ud800x"}}')) == (
        "\ufffdx".encode()
    )
    assert media_hash("https://cdn/did:plc:x/bafkreiabc@jpeg") == "bafkreiabc"


# --- numbers and stored JSON --------------------------------------------------------------

@pytest.mark.parametrize("x,expected", [
    (1e6, "1e+06"), (1e21, "1e+21"), (0.1, "0.1"), (2.5, "2.5"), (123456.0, "123456"),
    (1.5e-05, "1.5e-05"), (-2.5, "-2.5"), (1234567.0, "1.234567e+06"), (0.0001, "0.0001"),
    (-0.0, "-0"), (float("inf"), "+Inf"),
])
def test_go_format_float(x, expected):
    assert go_format_float(x) == expected


def test_stored_json_compact_and_indent():
    stored = b' {"a" : [1, 2.50, -0.0, 1E+2, {}, [ ], "\\/\xe2\x80\xa8"],\r\n\t"b":null} '
    compact = json_compact(stored)
    assert compact == b'{"a":[1,2.50,-0.0,1E+2,{},[],"\\/\xe2\x80\xa8"],"b":null}'
    assert json_indent(compact, depth=2) == (
        b'{\n      "a": [\n        1,\n        2.50,\n        -0.0,\n        1E+2,\n'
        b'        {},\n        [],\n        "\\/\xe2\x80\xa8"\n      ],\n'
        b'      "b": null\n    }'
    )
    for bad in (b"", b"{", b"[1,]", b"01", b"1.", b'"\x01"', b"\x0c1", b"nul", b'"\\x"',
                b"{} {}", b"NaN", b"[" * 10001 + b"]" * 10001):
        assert json_compact(bad) is None, bad
    assert json_compact(b"[" * 10000 + b"]" * 10000) is not None


# --- small archives -----------------------------------------------------------------------

def test_empty_exports(tmp_path):
    path = make_archive(tmp_path / "empty.db", [])
    assert reference_export(path, "json") == b"[]\n"
    assert reference_export(path, "jsonl") == b""
    assert reference_export(path, "csv") == (
        b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,"
        b"IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n"
    )


def test_values_by_storage_class(tmp_path):
    path = make_archive(tmp_path / "a.db", [{
        "text": b"nul\x00\xff", "like_count": "+5", "repost_count": 2.9, "reply_count": "x",
        "quote_count": -3.9, "has_media": Blob(b"True"), "is_reply": "yes",
        "embed_data": "1000000.0", "labels": 0.1, "archived_at": None,
    }])
    assert reference_export(path, "jsonl") == (
        b'{"uri":"at://did:plc:test/app.bsky.feed.post/0000","cid":"bafyreitest0000",'
        b'"did":"did:plc:test","text":"nul\\u0000\\ufffd","created_at":"2024-01-01T00:00:00Z",'
        b'"indexed_at":"2024-01-01T00:00:00Z","has_media":true,"like_count":5,'
        b'"repost_count":2,"reply_count":0,"quote_count":-3,"is_reply":false,'
        b'"embed_data":1000000,"labels":0.1,"archived_at":"0001-01-01T00:00:00Z"}\n'
    )


def test_v1_archive_reads_quote_count_zero(tmp_path):
    path = make_archive(tmp_path / "v1.db", [{"like_count": 1}], schema_version=1)
    assert b'"quote_count":0,' in reference_export(path, "jsonl")


def test_bad_values(tmp_path):
    path = make_archive(tmp_path / "bad.db", [
        {"uri": "at://a", "created_at": "2024-02-30", "labels": "{bad"},
        {"uri": "at://b", "created_at": "2024-01-01", "embed_data": "[1,]"},
    ])
    with pytest.raises(ReferenceBadValue) as info:
        reference_export(path, "json")
    assert (info.value.uri, info.value.column, info.value.value) == (
        "at://a", "created_at", b"2024-02-30")
    data, warnings = reference_export_with_warnings(path, "jsonl", on_bad_value="keep")
    assert b'"created_at":"2024-02-30"' in data and b'"labels":"{bad"' in data
    assert b'"embed_data":"[1,]"' in data
    assert warnings == [("at://a", "created_at"), ("at://a", "labels"), ("at://b", "embed_data")]
    # CSV checks timestamps only
    data, warnings = reference_export_with_warnings(path, "csv", on_bad_value="keep")
    assert b",2024-02-30," in data
    assert warnings == [("at://a", "created_at")]
    # with a date bound, a bad created_at is left out whatever on_bad_value says
    data, warnings = reference_export_with_warnings(path, "csv", since="2000-01-01")
    assert b"at://a" not in data and b"at://b" in data
    assert warnings == [("at://a", "created_at")]
