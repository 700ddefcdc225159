"""Each FORMAT.md rule, pinned with literal expected bytes on the compiled core's own
encoders (the test hooks of skyexport._core) and through whole exports of hand-written
archives.  test_differential.py compares everything with the reference exporter; this file
says, in bytes anyone can read, what the rules are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skyexport import _core

from conftest import export_bytes
from helpers.archives import Blob, make_archive

# --- JSON strings (FORMAT.md "Strings") ---------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    (b'hello <world> & "friends"\n', b'"hello <world> & \\"friends\\"\\n"'),
    (b"back\\slash /", b'"back\\\\slash /"'),
    (b"\n\r\t\x08\x0c", b'"\\n\\r\\t\\b\\f"'),
    (b"\x00\x01\x1b\x1f", b'"\\u0000\\u0001\\u001b\\u001f"'),
    (b"\x7f", b'"\x7f"'),                                     # DEL stays raw
    ("\u2028\u2029".encode(), b'"\\u2028\\u2029"'),
    ("caf\u00e9 \U0001f600".encode(), '"caf\u00e9 \U0001f600"'.encode()),
    (b"\xed\xa0\x80", b'"\\ufffd\\ufffd\\ufffd"'),             # a surrogate: three
    (b"\xc0\xaf", b'"\\ufffd\\ufffd"'),                        # overlong: two
    (b"a\xe2\x80", b'"a\\ufffd\\ufffd"'),                      # cut off: two
    (b"\xf4\x90\x80\x80", b'"\\ufffd\\ufffd\\ufffd\\ufffd"'),  # past U+10FFFF: four
    (b"\xef\xbf\xbd", '"\ufffd"'.encode()),                    # a real U+FFFD stays raw
    (b"", b'""'),
])
def test_json_string(raw: bytes, expected: bytes) -> None:
    assert _core.json_string(raw) == expected


def test_json_string_longer_than_one_escape_chunk() -> None:
    raw = b"\x01" * 40_000 + "\u2028".encode() + b"x" * 40_000
    assert _core.json_string(raw) == (b'"' + b"\\u0001" * 40_000 + b"\\u2028" + b"x" * 40_000
                                      + b'"')


# --- timestamps (FORMAT.md "Timestamps") --------------------------------------------------

@pytest.mark.parametrize(("stored", "json_form", "csv_form"), [
    (b"2024-01-15 10:30:00.120 +0000 UTC", "2024-01-15T10:30:00.12Z", "2024-01-15T10:30:00Z"),
    (b"2024-03-09 23:30:00 -0700 PDT", "2024-03-09T23:30:00-07:00", "2024-03-09T23:30:00-07:00"),
    (b"2024-03-13 10:05", "2024-03-13T10:05:00Z", "2024-03-13T10:05:00Z"),
    (b"2024-01-15 10:30:00.123 -0700 PDT m=+0.001234567", "2024-01-15T10:30:00.123-07:00",
     "2024-01-15T10:30:00-07:00"),
    (b"2024-01-15 19:30:00 +0900 +0900", "2024-01-15T19:30:00+09:00",
     "2024-01-15T19:30:00+09:00"),
    (b"2024-01-15 10:30:00 +0530 UTC", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-01-15 10:30:00 -0000 XYZ", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"  2024-01-15 10:30:00 +0000 UTC  ", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00Z"),
    (b"2024-05-01T12:00:08.5+02:00", "2024-05-01T12:00:08.5+02:00",
     "2024-05-01T12:00:08+02:00"),
    (b"2024-05-01T10:00:07Z", "2024-05-01T10:00:07Z", "2024-05-01T10:00:07Z"),
    (b"2024-05-01 10:00:09", "2024-05-01T10:00:09Z", "2024-05-01T10:00:09Z"),
    (b"2024-05-02", "2024-05-02T00:00:00Z", "2024-05-02T00:00:00Z"),
    (b"2023-12-31 23:59:59.9999999999 +0000 UTC", "2023-12-31T23:59:59.999999999Z",
     "2023-12-31T23:59:59Z"),
    (b"2024-02-29 00:00:00.000 +0000 UTC", "2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
    (b"0000-02-29", "0000-02-29T00:00:00Z", "0000-02-29T00:00:00Z"),
    (None, "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
])
def test_timestamp_renderings(stored: bytes | None, json_form: str, csv_form: str) -> None:
    assert _core.testing.render_timestamp(stored, True) == json_form
    assert _core.testing.render_timestamp(stored, False) == csv_form


@pytest.mark.parametrize("stored", [
    b"2023-02-29", b"2024-02-30", b"2024-01-15 24:00:00 +0000 UTC",
    b"2024-01-15 10:60:00 +0000 UTC", b"2024-01-15 10:30:60 +0000 UTC",
    b"2024-01-15 10:30:00 +2400 X", b"2024-01-15 10:30:00 +0060 X",
    b"2024-01-15T10:30:00+24:00", b"2024-01-15 10:30:00 +0000", b"2024-01-15 10:30:00.",
    b"m=+1.0", b"garbage", b"", b"2024", b"2024-1-15", b"2024-01-15T10:30:00ZZ",
])
def test_bad_timestamps(stored: bytes) -> None:
    assert _core.testing.render_timestamp(stored) is None
    assert _core.is_bad_stamp(stored) == 1


# --- stored JSON (FORMAT.md "embed_data, labels") -----------------------------------------

def test_stored_json_reindented_at_field_depth() -> None:
    stored = b'{"record" : {"n":[0, -1, 2.50, 1e10, -0.0], "s":"caf\\u00e9 \\/"}, "e":{}, "a":[ ]}'
    assert _core.testing.reformat_json(stored, True, 2) == (
        b'{\n'
        b'      "record": {\n'
        b'        "n": [\n'
        b'          0,\n'
        b'          -1,\n'
        b'          2.50,\n'
        b'          1e10,\n'
        b'          -0.0\n'
        b'        ],\n'
        b'        "s": "caf\\u00e9 \\/"\n'
        b'      },\n'
        b'      "e": {},\n'
        b'      "a": []\n'
        b'    }')
    assert _core.testing.reformat_json(stored, False) == (
        b'{"record":{"n":[0,-1,2.50,1e10,-0.0],"s":"caf\\u00e9 \\/"},"e":{},"a":[]}')


def test_stored_json_keeps_raw_u2028_and_unchecked_high_bytes() -> None:
    assert _core.testing.reformat_json('["\u2028", "\xff"]'.encode("utf-8", "surrogateescape")
                               .replace(b"\xc3\xbf", b"\xff"), False) == \
        '["\u2028","'.encode() + b'\xff"]'


@pytest.mark.parametrize("stored", [
    b"{", b"[1,]", b"01", b"1.", b".5", b"+1", b"NaN", b"'x'", b'{"a" 1}', b'{"a":1,}',
    b'"tab\there"', b'"\\x"', b'"\\u12"', b"[1] [2]", b"tru", b"nul", b"\x0b1",
    b"[" * 10_001 + b"]" * 10_001,
])
def test_invalid_stored_json(stored: bytes) -> None:
    assert _core.testing.reformat_json(stored) is None


def test_nesting_limit_is_go_s() -> None:
    assert _core.testing.reformat_json(b"[" * 10_000 + b"]" * 10_000, False) == \
        b"[" * 10_000 + b"]" * 10_000


@pytest.mark.parametrize(("value", "text"), [
    (0.1, b"0.1"), (2.5, b"2.5"), (-2.5, b"-2.5"), (1e21, b"1e+21"), (1e20, b"1e+20"),
    (1e6, b"1e+06"), (123456.0, b"123456"), (1234567.0, b"1.234567e+06"),
    (1.5e-5, b"1.5e-05"), (0.0001, b"0.0001"), (float("inf"), b"+Inf"),
])
def test_real_in_a_json_column(value: float, text: bytes) -> None:
    assert _core.testing.format_real(value) == text


# --- CSV (FORMAT.md "posts.csv") ----------------------------------------------------------

@pytest.mark.parametrize(("field", "expected"), [
    (b"plain", b"plain"), (b"", b""),
    (b"a,b", b'"a,b"'), (b'say "hi"', b'"say ""hi"""'), (b"two\nlines", b'"two\nlines"'),
    (b"cr\rhere", b'"cr\rhere"'), (b"\\.", b'"\\."'), (b"\\.x", b"\\.x"),
    (b" lead", b'" lead"'), (b"\tlead", b'"\tlead"'),
    ("\u00a0nbsp".encode(), '"\u00a0nbsp"'.encode()),
    ("\u3000ideo".encode(), '"\u3000ideo"'.encode()),
    ("\u0085nel".encode(), '"\u0085nel"'.encode()),
    ("\u200bzwsp".encode(), "\u200bzwsp".encode()),            # not Unicode white space
    (b"\xff invalid first byte", b"\xff invalid first byte"),
    (b"nul\x00inside", b"nul\x00inside"),
])
def test_csv_field(field: bytes, expected: bytes) -> None:
    assert _core.testing.csv_field(field) == expected


@pytest.mark.parametrize(("embed", "expected"), [
    (b'{"images":[{"fullsize":"https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:x/bafkreia@jpeg"},'
     b'{"fullsize":"https://cdn/x/bafkreib"}]}', b"bafkreia;bafkreib"),
    (b'{"media":{"images":[{"fullsize":"a/m1@png"}]},"images":[{"fullsize":"a/i1"}],'
     b'"external":{"thumb":"https://t/x/th@jpeg"}}', b"i1;m1;th"),
    (b'{"images":[{"fullsize":"a/first"}],"images":[{"fullsize":"a/last"}]}', b"last"),
    (b'{"Images":[{"fullsize":"a/x"}]}', b""),                  # keys are case-sensitive
    (b'{"images":[{"fullsize":"nourl"},{"fullsize":"a/"},{"fullsize":7},"x",{}]}', b""),
    (b'{"images":[{"fullsize":"a/\\u0062c@d"}]}', b"bc"),       # escapes decoded
    (b'{"images":[{"fullsize":"a/\\ud800x"}]}', "\ufffdx".encode()),
    (b'{"images":[{"fullsize":"a/x"}],"n":1e400}', b""),         # Go's decode fails
    (b'{"record":{"images":[{"fullsize":"a/x"}]}}', b""),
    (b"null", b""), (b"[1]", b""), (b"{bad", b""), (42, b""), (None, b""),
])
def test_media_files(embed: object, expected: bytes) -> None:
    assert _core.testing.media_files_of(embed) == expected


# --- whole exports of hand-written archives -----------------------------------------------

POST = {
    "uri": "at://did:plc:f/app.bsky.feed.post/1", "cid": "bafy1", "did": "did:plc:f",
    "text": "hi", "created_at": "2024-01-15 10:30:00 +0000 UTC",
    "indexed_at": "2024-01-15 10:35:00 +0000 UTC", "has_media": 0, "like_count": 3,
    "repost_count": 0, "reply_count": 1, "quote_count": 0, "is_reply": 0, "reply_parent": "",
    "embed_type": "", "embed_data": None, "labels": "null",
    "archived_at": "2024-02-01 00:00:00 +0900 +0900",
}

JSON_POST = (
    b'  {\n'
    b'    "uri": "at://did:plc:f/app.bsky.feed.post/1",\n'
    b'    "cid": "bafy1",\n'
    b'    "did": "did:plc:f",\n'
    b'    "text": "hi",\n'
    b'    "created_at": "2024-01-15T10:30:00Z",\n'
    b'    "indexed_at": "2024-01-15T10:35:00Z",\n'
    b'    "has_media": false,\n'
    b'    "like_count": 3,\n'
    b'    "repost_count": 0,\n'
    b'    "reply_count": 1,\n'
    b'    "quote_count": 0,\n'
    b'    "is_reply": false,\n'
    b'    "labels": null,\n'
    b'    "archived_at": "2024-02-01T00:00:00+09:00"\n'
    b'  }')


def test_one_post_each_format(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.db", [POST])
    assert export_bytes(archive, tmp_path / "j", "json") == b"[\n" + JSON_POST + b"\n]\n"
    assert export_bytes(archive, tmp_path / "l", "jsonl") == (
        b'{"uri":"at://did:plc:f/app.bsky.feed.post/1","cid":"bafy1","did":"did:plc:f",'
        b'"text":"hi","created_at":"2024-01-15T10:30:00Z","indexed_at":"2024-01-15T10:35:00Z",'
        b'"has_media":false,"like_count":3,"repost_count":0,"reply_count":1,"quote_count":0,'
        b'"is_reply":false,"labels":null,"archived_at":"2024-02-01T00:00:00+09:00"}\n')
    assert export_bytes(archive, tmp_path / "c", "csv") == (
        b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,"
        b"IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n"
        b"at://did:plc:f/app.bsky.feed.post/1,bafy1,did:plc:f,hi,2024-01-15T10:30:00Z,3,0,1,0,"
        b"false,,false,,,2024-01-15T10:35:00Z\n")


def test_no_posts(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.db", [])
    assert export_bytes(archive, tmp_path / "j", "json") == b"[]\n"
    assert export_bytes(archive, tmp_path / "l", "jsonl") == b""
    assert export_bytes(archive, tmp_path / "c", "csv") == (
        b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,"
        b"IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n")


def test_value_rules(tmp_path: Path) -> None:
    """NULLs, storage classes and affinity: counts, booleans, omitted fields."""
    post = dict(POST, text=None, like_count=2.9, repost_count="12abc", reply_count=Blob(b"-7"),
                quote_count=None, has_media="True", is_reply=0.5, reply_parent=None,
                embed_type="images", embed_data="  {\"images\" : []}  ", labels="",
                cid=b"bad\xffutf8")
    archive = make_archive(tmp_path / "a.db", [post], not_null=False)
    assert export_bytes(archive, tmp_path / "l", "jsonl") == (
        b'{"uri":"at://did:plc:f/app.bsky.feed.post/1","cid":"bad\\ufffdutf8",'
        b'"did":"did:plc:f","text":"","created_at":"2024-01-15T10:30:00Z",'
        b'"indexed_at":"2024-01-15T10:35:00Z","has_media":true,"like_count":2,'
        b'"repost_count":0,"reply_count":-7,"quote_count":0,"is_reply":true,'
        b'"embed_type":"images","embed_data":{"images":[]},'
        b'"archived_at":"2024-02-01T00:00:00+09:00"}\n')
    assert export_bytes(archive, tmp_path / "c", "csv").split(b"\n")[1] == (
        b"at://did:plc:f/app.bsky.feed.post/1,bad\xffutf8,did:plc:f,,2024-01-15T10:30:00Z,"
        b"2,0,-7,0,true,,true,,images,2024-01-15T10:35:00Z")


def test_ties_sort_by_uri_and_text_order_decides(tmp_path: Path) -> None:
    """Newest first by SQLite's text order of the stored value (a bare date sorts above
    that day's times, `T` above a space), then uri ascending."""
    tie = "2024-05-01 10:00:00 +0000 UTC"
    rows = [dict(POST, uri=f"at://did:plc:f/app.bsky.feed.post/{k}", created_at=c)
            for k, c in [("b", tie), ("a", tie), ("c", "2024-05-01T09:00:00Z"),
                         ("d", "2024-05-02")]]
    archive = make_archive(tmp_path / "a.db", rows)
    lines = export_bytes(archive, tmp_path / "l", "jsonl").splitlines()
    assert [json.loads(line)["uri"][-1] for line in lines] == ["d", "c", "a", "b"]


# The JSON and CSV scans go 16 bytes at a time (ext/skyexport/scan.h): every byte that needs
# attention, at every offset across two 16-byte blocks and the tail, with non-ASCII beside.
_ATTENTION = [b'"', b"\\", b"\x00", b"\x1f", b"\n", b"\r", b",", b"\x7f", b"\xc3\xa9",
              b"\xe2\x80\xa8", b"\xff", b"\xf0\x9f\x98\x80", b" "]


@pytest.mark.parametrize("special", _ATTENTION)
def test_scans_find_every_byte_at_every_offset(special: bytes) -> None:
    from helpers import reference

    for length in (15, 16, 17, 31, 32, 33, 47):
        for at in range(length):
            field = (b"a" * at + special + b"b" * length)[:length + len(special)]
            assert _core.json_string(field) == reference.json_string(field), (at, length)
            assert _core.testing.csv_field(field) == reference.csv_field(field), (at, length)
            twice = field + b"x" * at + special
            assert _core.json_string(twice) == reference.json_string(twice), (at, length)
            assert _core.testing.csv_field(twice) == reference.csv_field(twice), (at, length)
