"""The compiled core's CAR reader (ext/skyexport/car/): DAG-CBOR -> JSON as CAR.md
says, everything outside atproto's data model rejected, CAR framing on the real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from skyexport import _core

CARS = Path(__file__).parent.parent / "car"


def head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def text(s: str) -> bytes:
    b = s.encode()
    return head(3, len(b)) + b


def cmap(*pairs: tuple[str, bytes]) -> bytes:
    """A map with its keys in DAG-CBOR's order (shorter first, then bytewise)."""
    return raw_map(*sorted(pairs, key=lambda kv: (len(kv[0].encode()), kv[0].encode())))


def raw_map(*pairs: tuple[str, bytes]) -> bytes:
    """A map with its keys in the order given."""
    return head(5, len(pairs)) + b"".join(text(k) + v for k, v in pairs)


def link(cid: bytes) -> bytes:
    return b"\xd8\x2a" + head(2, len(cid) + 1) + b"\x00" + cid


def dag_cid(data: bytes) -> bytes:
    return b"\x01\x71\x12\x20" + hashlib.sha256(data).digest()


def test_json_forms_and_key_order() -> None:
    cid = dag_cid(b"x")
    block = cmap(("a", head(1, 4)), ("b", head(2, 3) + b"\x01\x02\x03"), ("f", b"\xf4"),
                 ("l", link(cid)), ("n", b"\xf6"), ("t", b"\xf5"), ("z", head(0, 7)),
                 ("arr", head(4, 2) + head(0, 1) + text("x")),
                 ("big", head(0, 2**63 - 1)), ("neg", head(1, 2**63 - 1)))
    out = _core.testing.cbor_to_json(block).decode()
    assert out == ('{"a":-5,"b":{"$bytes":"AQID"},"f":false,"l":{"$link":"'
                   + _core.cid_str(cid) + '"},"n":null,"t":true,"z":7,"arr":[1,"x"],'
                   '"big":9223372036854775807,"neg":-9223372036854775808}')
    assert _core.cid_str(cid).startswith("bafyrei")


def test_go_escaping() -> None:
    s = 'a<b>&"\\\n\t\x01\u2028\u2029é😀'
    out = _core.testing.cbor_to_json(cmap(("k<", text(s)))).decode()
    assert out == ('{"k\\u003c":"a\\u003cb\\u003e\\u0026\\"\\\\\\n\\t\\u0001\\u2028\\u2029'
                   'é😀"}')


@pytest.mark.parametrize("bad, why", [
    (b"\xfb" + b"\x00" * 8, "float"),
    (b"\xf9\x00\x00", "float"),
    (b"\xf7", "undefined"),
    (b"\xc1\x00", "tag 1"),
    (head(5, 1) + head(0, 1) + head(0, 2), "key that is not a text string"),
    (head(3, 2) + b"\xc3\x28", "UTF-8"),
    (head(3, 3) + b"\xed\xa0\x80", "UTF-8"),     # a surrogate
    (b"\x9f\xff", "indefinite"),
    (head(4, 2) + head(0, 1), "ends"),
    (b"\xd8\x2a" + head(2, 3) + b"\x01\x02\x03", "link"),
    (head(0, 1) + head(0, 2), "after"),
    # strict DAG-CBOR and atproto's data model
    (raw_map(("a", head(0, 1)), ("a", head(0, 2))), "repeated or out of DAG-CBOR's order"),
    (raw_map(("b", head(0, 1)), ("a", head(0, 2))), "repeated or out of DAG-CBOR's order"),
    (raw_map(("aa", head(0, 1)), ("b", head(0, 2))), "repeated or out of DAG-CBOR's order"),
    (b"\x18\x05", "non-minimal"),
    (b"\x19\x00\xff", "non-minimal"),
    (b"\x78\x01a", "non-minimal"),
    (b"\x9a\x00\x00\x00\x01\x01", "non-minimal"),
    (head(0, 2**63), "signed 64-bit"),
    (head(1, 2**63), "signed 64-bit"),
    (cmap(("$type", text(""))), "that is not a non-empty string"),
    (cmap(("$type", head(0, 1))), "that is not a non-empty string"),
    (cmap(("ref", link(dag_cid(b"i"))), ("size", head(0, 9)), ("$type", text("blob"))),
     "blob without a `mimeType`"),
    (cmap(("ref", link(dag_cid(b"i"))), ("size", text("9")), ("$type", text("blob")),
          ("mimeType", text("image/png"))), "blob without an integer `size`"),
    (cmap(("ref", text("x")), ("size", head(0, 9)), ("$type", text("blob")),
          ("mimeType", text("image/png"))), "blob without a `ref` link"),
])
def test_rejected(bad: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _core.testing.cbor_to_json(bad)
    with pytest.raises(ValueError):
        _core.testing.post_fields(cmap(("x", bad), ("text", text("t"))) if why != "after" else bad)


def test_post_fields_mapping() -> None:
    thumb = cmap(("$type", text("blob")), ("ref", link(dag_cid(b"t"))),
                 ("mimeType", text("image/jpeg")), ("size", head(0, 10)))
    ext = cmap(("$type", text("app.bsky.embed.external")),
               ("external", cmap(("uri", text("https://a")), ("thumb", thumb))))
    post = cmap(("text", text("hi & <bye>")), ("createdAt", text("2024-01-02T03:04:05Z")),
                ("reply", cmap(("root", cmap(("uri", text("at://r")))),
                               ("parent", cmap(("uri", text("at://p")))))),
                ("embed", ext),
                ("labels", cmap(("values", head(4, 1) + cmap(("val", text("porn")))))))
    (t, created, media, reply, parent, etype, edata, labels) = _core.testing.post_fields(post)
    assert (t, created, media, reply, parent, etype) == (
        "hi & <bye>", "2024-01-02T03:04:05Z", True, True, "at://p", "external")
    assert edata.startswith('{"$type":"app.bsky.embed.external","external":{"uri":')
    assert labels == '{"values":[{"val":"porn"}]}'
    # a link card without a thumbnail is not media; no embed, no reply: the defaults
    plain = cmap(("$type", text("app.bsky.embed.external")),
                 ("external", cmap(("uri", text("https://a")))))
    assert _core.testing.post_fields(cmap(("embed", plain)))[:8] == (
        "", "", False, False, "", "external", _core.testing.cbor_to_json(plain).decode(), None)
    rwm = cmap(("$type", text("app.bsky.embed.recordWithMedia")), ("media", ext))
    assert _core.testing.post_fields(cmap(("embed", rwm)))[2] is True
    assert _core.testing.post_fields(cmap(("embed", rwm)))[5] == "record_with_media"
    other = cmap(("$type", text("com.example.embed")))
    assert _core.testing.post_fields(cmap(("embed", other)))[5] == "com.example.embed"


def test_scanner_frames_every_block() -> None:
    path = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"
    raw = path.read_bytes()
    n, used = _core.read_uvarint(raw)
    start = used + n
    fd = os.open(path, os.O_RDONLY)
    try:
        h = hashlib.sha256()
        sc = _core.CarScanner(fd, start, raw[:start], h)
        rows = []
        while batch := sc.next_batch(100):
            rows += batch
    finally:
        os.close(fd)
    assert len(rows) == 768 and sc.blocks == 768
    assert h.hexdigest() == hashlib.sha256(raw).hexdigest()
    for k, off, length in rows[:50]:
        c = raw[off:off + 36]
        assert _core.testing.cid_index_key(c) == k
        assert hashlib.sha256(raw[off + 36:off + length]).digest() == c[4:]
    assert rows[-1][1] + rows[-1][2] == len(raw)
