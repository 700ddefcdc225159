"""Hand-made hostile repository CARs: each small file costs an unguarded reader far more
than its size in time or memory, or hides posts from a reader that skips parts of the MST.
Used by test_car_hostile.py and as seeds of the fuzz corpus (fuzz/seeds.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyexport.testing.carwrite import Link, _varint, cid_for, dag_cbor, post_record

POST = "app.bsky.feed.post/"
DID = "did:plc:hostile"


class Car:
    """Blocks in file order, then a commit over MST root `data`: `bytes()` is the CAR."""

    def __init__(self) -> None:
        self.blocks: list[tuple[bytes, bytes]] = []

    def add(self, obj: Any) -> Link:
        data = obj if isinstance(obj, bytes) else dag_cbor(obj)
        cid = cid_for(data)
        self.blocks.append((cid, data))
        return cid

    def add_raw(self, cid: bytes, data: bytes) -> None:
        """A block whose data need not match its CID (a damaged copy)."""
        self.blocks.append((cid, data))

    def node(self, entries: list[tuple[str, Link, Link | None]], left: Link | None = None,
             compress: bool = True) -> Link:
        """An MST node of (key, value, right subtree) entries as given (unchecked)."""
        es = []
        prev = b""
        for key, v, t in entries:
            k = key.encode()
            p = len(os.path.commonprefix([prev, k])) if compress else 0
            es.append({"p": p, "k": k[p:], "v": v, "t": t})
            prev = k
        return self.add({"l": left, "e": es})

    def finish(self, data: Link, did: str = DID) -> bytes:
        commit = dag_cbor({"did": did, "version": 3, "data": data, "rev": "3k",
                           "sig": bytes(64), "prev": None})
        root = cid_for(commit)
        blocks = [*self.blocks, (root, commit)]
        header = dag_cbor({"roots": [root], "version": 1})
        out = [_varint(len(header)), header]
        for c, d in blocks:
            out += [_varint(len(c) + len(d)), bytes(c), d]
        return b"".join(out)


def post(text: str = "hi", **fields: Any) -> dict[str, Any]:
    return post_record(text, "2024-01-01T00:00:00Z", **fields)


def tid(i: int) -> str:
    return f"3k{i:011d}"


# --- the cases ----------------------------------------------------------------------------

def damaged_copies(n: int) -> bytes:
    """n post keys pointing at one record (identical records share a CID), with n damaged
    copies of that block in the file before the good one."""
    car = Car()
    rec = dag_cbor(post("same " * 40))
    cid = cid_for(rec)
    for i in range(n):
        car.add_raw(cid, rec[:-1] + bytes([rec[-1] ^ (1 + i % 250)]))
    car.add_raw(cid, rec)
    node = car.node([(POST + tid(i), cid, None) for i in range(n)])
    return car.finish(node)


def reused_chain(keys: int, chain: int = 120, end_with_key: bool = False) -> bytes:
    """`keys` posts whose right subtrees all point at one chain of `chain` empty nodes
    (each only a left link); the last holds nothing, or (end_with_key) one key."""
    car = Car()
    rec = car.add(post())
    if end_with_key:
        link = car.node([("zzz.last.x/x", rec, None)])
    else:
        link = car.node([])
    for _ in range(chain - 1):
        link = car.node([], left=link)
    node = car.node([(POST + tid(i), rec, link) for i in range(keys)])
    return car.finish(node)


def shared_big_record(keys: int, size: int = 1000_000) -> bytes:
    """`keys` post keys pointing at one record of about `size` bytes: legal (identical
    records share a CID), but each key is another read of the whole record."""
    car = Car()
    rec = car.add(post("x" * size))
    node = car.node([(POST + tid(i), rec, None) for i in range(keys)])
    return car.finish(node)


def long_did(posts: int = 300, size: int = 1 << 20) -> bytes:
    car = Car()
    rec = car.add(post())
    node = car.node([(POST + tid(i), rec, None) for i in range(posts)])
    return car.finish(node, did="did:plc:" + "a" * size)


def long_key(posts: int = 300, size: int = 1 << 20) -> bytes:
    """One MST key of `size` bytes whose prefix the other entries reuse."""
    car = Car()
    rec = car.add(post())
    long = (POST + "a" * size).encode()
    es = [{"p": 0, "k": long, "v": rec, "t": None}]
    es += [{"p": len(long), "k": tid(i).encode(), "v": rec, "t": None} for i in range(posts)]
    return car.finish(car.add({"l": None, "e": es}))


def big_record(size: int, escaped: bool = True) -> bytes:
    """One post whose embed holds `size` bytes of text (`<`: escaped 6 times longer in
    JSON when `escaped`)."""
    car = Car()
    body = ("<" if escaped else "a") * size
    rec = car.add(post("big", embed={"$type": "app.bsky.embed.external", "external": {
        "uri": "https://example.com/", "title": "t", "description": body}}))
    return car.finish(car.node([(POST + tid(0), rec, None)]))


def many_embeds(posts: int, size: int) -> bytes:
    """`posts` posts with embeds of `size` bytes (escaped 6 times longer in JSON)."""
    car = Car()
    entries = []
    for i in range(posts):
        rec = car.add(post(f"p{i}", embed={"$type": "app.bsky.embed.external", "external": {
            "uri": "https://example.com/", "title": str(i), "description": "<" * size}}))
        entries.append((POST + tid(i), rec, None))
    return car.finish(car.node(entries))


def fat_path(depth: int, node_bytes: int) -> bytes:
    """A valid MST path of `depth` nodes of about `node_bytes` each (entries with record
    keys of 500 bytes, uncompressed), each node's last entry leading to the next, down
    to one post."""
    car = Car()
    rec = car.add(post())
    fill = max(1, node_bytes // 560)
    link = car.node([(POST + tid(0), rec, None)])
    for d in reversed(range(depth)):
        keys = [f"a.b.c/{d:04d}{j:05d}" + "k" * 490 for j in range(fill)]
        entries: list[tuple[str, Link, Link | None]] = [(k, rec, None) for k in keys]
        entries[-1] = (keys[-1], rec, link)
        link = car.node(entries, compress=False)
    return car.finish(link)


def deep_record(depth: int) -> bytes:
    """A post whose embed nests `depth` arrays deep."""
    car = Car()
    nested = b"\x81" * depth + b"\x01"
    rec = dag_cbor(post("deep"))
    # splice the nesting in as the value of one more key ("z": shortest, so first)
    body = bytes([rec[0] + 1]) + b"\x61z" + nested + rec[1:]
    cid = cid_for(body)
    car.add_raw(cid, body)
    return car.finish(car.node([(POST + tid(0), cid, None)]))


def unordered_in_node() -> bytes:
    """Keys out of order inside one node: post/3ka, feed.threadgate/x, post/3kz."""
    car = Car()
    rec = car.add(post())
    return car.finish(car.node([(POST + "3ka", rec, None),
                                ("app.bsky.feed.threadgate/x", rec, None),
                                (POST + "3kz", rec, None)]))


def posts_in_a_left_subtree() -> bytes:
    """Posts hidden in the left subtree of a node whose first key is a like (it sorts
    before every post): a walk that trusts the order skips them."""
    car = Car()
    rec = car.add(post())
    hidden = car.node([(POST + "3ka", rec, None), (POST + "3kb", rec, None)])
    return car.finish(car.node([("app.bsky.feed.like/x", rec, None),
                                (POST + "3kz", rec, None)], left=hidden))


def no_t(post_count: int = 2) -> bytes:
    """An entry without its `t` key (atproto requires it, null when empty)."""
    car = Car()
    rec = car.add(post())
    es = [{"p": 0, "k": (POST + tid(i)).encode(), "v": rec} for i in range(post_count)]
    return car.finish(car.add({"l": None, "e": es}))


def control_did(did: str) -> bytes:
    car = Car()
    rec = car.add(post())
    return car.finish(car.node([(POST + tid(0), rec, None)]), did=did)


CASES: dict[str, Callable[[], bytes]] = {
    "damaged_copies": lambda: damaged_copies(60),
    "reused_chain": lambda: reused_chain(200, 20),
    "reused_chain_key": lambda: reused_chain(200, 20, True),
    "shared_big_record": lambda: shared_big_record(40, 20_000),
    "long_did": lambda: long_did(3, 3000),
    "long_key": lambda: long_key(3, 2000),
    "big_record": lambda: big_record(2000),
    "deep_record": lambda: deep_record(100),
    "unordered_in_node": unordered_in_node,
    "posts_in_a_left_subtree": posts_in_a_left_subtree,
    "no_t": no_t,
    "control_did": lambda: control_did("did:plc:\x1b[31mred\nline\x00"),
}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frames(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, cid) of every block of a CAR (CIDv1 sha256 dag-cbor: 36 bytes)."""
    from skyexport import _core

    n, used = _core.read_uvarint(raw)
    pos = used + n
    out = []
    while pos < len(raw):
        ln, k = _core.read_uvarint(raw, pos)
        out.append((pos, pos + k + ln, raw[pos + k:pos + k + 36]))
        pos += k + ln
    return out
