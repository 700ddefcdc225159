"""Writing repository CARs, for tests and `synth --car N` (benchmarks): canonical DAG-CBOR,
a correct MST with atproto's key heights, blocks in shuffled order with some duplicates
and some unreachable blocks beside the live tree.  The commit is not signed (its `sig` is
64 zero bytes): skyexport does not verify signatures, and neither does any reader without
the account's DID document.

Memory stays flat for any size: records arrive in key order (an iterator), the MST is
built on its rightmost path only (one open node per layer), blocks are spilled to bucket
files and each bucket is shuffled on its own.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .synth import _tid

__all__ = ["Link", "cid_for", "dag_cbor", "key_height", "post_record", "synth_car",
           "synth_records", "write_car"]


class Link(bytes):
    """A CID (binary) to be encoded as a tag-42 link."""


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 0x100:
        return bytes([major << 5 | 24, n])
    if n < 0x10000:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + n.to_bytes(8, "big")


def _enc(o: Any, out: list[bytes]) -> None:
    if o is None:
        out.append(b"\xf6")
    elif o is True:
        out.append(b"\xf5")
    elif o is False:
        out.append(b"\xf4")
    elif isinstance(o, int):
        out.append(_head(0, o) if o >= 0 else _head(1, -1 - o))
    elif isinstance(o, float):  # not in atproto's data model: for tests that must fail
        out.append(b"\xfb" + struct.pack(">d", o))
    elif isinstance(o, Link):
        out.append(b"\xd8\x2a" + _head(2, len(o) + 1) + b"\x00" + bytes(o))
    elif isinstance(o, bytes):
        out.append(_head(2, len(o)) + o)
    elif isinstance(o, str):
        b = o.encode("utf-8")
        out.append(_head(3, len(b)) + b)
    elif isinstance(o, list | tuple):
        out.append(_head(4, len(o)))
        for v in o:
            _enc(v, out)
    elif isinstance(o, dict):
        items = sorted(((k.encode("utf-8"), v) for k, v in o.items()),
                       key=lambda kv: (len(kv[0]), kv[0]))  # DAG-CBOR's canonical order
        out.append(_head(5, len(items)))
        for k, v in items:
            out.append(_head(3, len(k)) + k)
            _enc(v, out)
    else:
        raise TypeError(f"cannot encode {type(o).__name__}")


def dag_cbor(o: Any) -> bytes:
    """Canonical DAG-CBOR of `o` (dict, list, str, bytes, int, bool, None, Link)."""
    out: list[bytes] = []
    _enc(o, out)
    return b"".join(out)


def cid_for(block: bytes, codec: int = 0x71) -> Link:
    """CIDv1, SHA-256, of a block (dag-cbor by default; 0x55 raw for blobs)."""
    return Link(bytes([1, codec, 0x12, 0x20]) + hashlib.sha256(block).digest())


def key_height(key: str) -> int:
    """atproto's MST layer of a key: leading zero bits of SHA-256(key), in pairs."""
    h = hashlib.sha256(key.encode()).digest()
    n = 0
    for byte in h:
        if byte == 0:
            n += 4
            continue
        for shift in (6, 4, 2, 0):
            if (byte >> shift) & 3:
                return n
            n += 1
    return n


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Blocks:
    """Blocks spilled at random into bucket files, written out bucket by bucket, each
    shuffled in memory: a shuffled CAR of any size in bounded memory."""

    def __init__(self, rng: random.Random, dirname: str, buckets: int) -> None:
        self.rng = rng
        self.files = [tempfile.TemporaryFile(dir=dirname) for _ in range(buckets)]

    def put(self, cid: bytes, data: bytes) -> None:
        f = self.files[self.rng.randrange(len(self.files))]
        f.write(_varint(len(cid) + len(data)) + cid + data)

    def write_to(self, out: Any) -> None:
        for f in self.files:
            f.seek(0)
            raw = f.read()
            f.close()
            frames = []
            pos = 0
            while pos < len(raw):
                n = 0
                shift = 0
                k = pos
                while True:
                    b = raw[k]
                    n |= (b & 0x7F) << shift
                    k += 1
                    if b < 0x80:
                        break
                    shift += 7
                frames.append(raw[pos:k + n])
                pos = k + n
            self.rng.shuffle(frames)
            out.write(b"".join(frames))


class _MstBuilder:
    """Builds the MST from keys in sorted order, keeping only the rightmost path."""

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.open: list[dict[str, Any] | None] = []

    def _node(self) -> dict[str, Any]:
        return {"l": None, "e": []}

    def _attach(self, node: dict[str, Any], sub: Link | None) -> None:
        if sub is None:
            return
        if node["e"]:
            node["e"][-1]["t"] = sub
        else:
            node["l"] = sub

    def _finish(self, node: dict[str, Any]) -> Link:
        prev = b""
        entries = []
        for key, v, t in ((e["key"], e["v"], e["t"]) for e in node["e"]):
            p = 0
            while p < min(len(prev), len(key)) and prev[p] == key[p]:
                p += 1
            entries.append({"p": p, "k": key[p:], "v": v, "t": t})
            prev = key
        block = dag_cbor({"l": node["l"], "e": entries})
        cid = cid_for(block)
        self.emit(cid, block)
        return cid

    def _carry(self, upto: int) -> Link | None:
        carry: Link | None = None
        for layer in range(min(upto, len(self.open))):
            node = self.open[layer]
            if node is None and carry is None:
                continue
            if node is None:
                node = self._node()
            self._attach(node, carry)
            carry = self._finish(node)
            self.open[layer] = None
        return carry

    def add(self, key: str, value: Link) -> None:
        h = key_height(key)
        while len(self.open) <= h:
            self.open.append(None)
        carry = self._carry(h)
        node = self.open[h]
        if node is None:
            node = self.open[h] = self._node()
        self._attach(node, carry)
        node["e"].append({"key": key.encode(), "v": value, "t": None})

    def root(self) -> Link:
        if not self.open:
            return self._finish(self._node())
        carry = self._carry(len(self.open))
        assert carry is not None
        return carry


def post_record(text: str, created_at: str, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": text,
                           "createdAt": created_at}
    extra = fields.pop("extra", None)
    rec.update(fields)
    if extra:
        rec.update(extra)
    return rec


def write_car(path: str | os.PathLike[str], did: str,
              records: Iterable[tuple[str, Any]] | dict[str, Any], *, version: int = 3,
              rev: str = "3lgqgeqwk7m2a", seed: int = 0, duplicates: float = 0.02,
              unreachable: float = 0.02, buckets: int | None = None) -> dict[str, Any]:
    """Write a repository CAR of `records` ((key, record) in key order, or a dict) at
    `path`; returns {"root", "data", "records", "blocks"}."""
    rng = random.Random(seed)
    if os.path.lexists(path):
        raise FileExistsError(f"refusing to overwrite {os.fspath(path)}")
    items: Iterable[tuple[str, Any]] = (sorted(records.items()) if isinstance(records, dict)
                                        else records)
    final = Path(path)
    count = nblocks = 0
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".carwrite-") as tmpd:
        blocks = _Blocks(rng, tmpd, buckets or 1)

        def emit(cid: bytes, data: bytes) -> None:
            nonlocal nblocks
            blocks.put(cid, data)
            nblocks += 1
            if rng.random() < duplicates:
                blocks.put(cid, data)
                nblocks += 1

        mst = _MstBuilder(emit)
        last = None
        for key, rec in items:
            if last is not None and key <= last:
                raise ValueError(f"keys out of order: {key} after {last}")
            last = key
            block = rec if isinstance(rec, bytes) else dag_cbor(rec)
            cid = cid_for(block)
            emit(cid, block)
            mst.add(key, cid)
            count += 1
            if rng.random() < unreachable:  # an older version of a record, deleted since
                old = dag_cbor({"$type": "app.bsky.feed.post", "text": f"old {count}",
                                "createdAt": "2023-01-01T00:00:00Z"})
                blocks.put(cid_for(old), old)
                nblocks += 1
        data = mst.root()
        commit: dict[str, Any] = {"did": did, "version": version, "data": data,
                                  "sig": bytes(64)}
        if version >= 3:
            commit["rev"] = rev
            commit["prev"] = None
        else:
            commit["prev"] = None
        cblock = dag_cbor(commit)
        root = cid_for(cblock)
        emit(root, cblock)
        header = dag_cbor({"roots": [root], "version": 1})
        tmp = final.parent / f".{final.name}.{os.urandom(4).hex()}.tmp"
        try:
            with open(tmp, "xb") as out:
                out.write(_varint(len(header)) + header)
                blocks.write_to(out)
            os.link(tmp, final)  # never replaces: FileExistsError if `final` appeared
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    return {"root": root, "data": data, "records": count, "blocks": nblocks}


# --- synthetic repositories --------------------------------------------------------------

def synth_records(posts: int, *, seed: int = 0, likes_per_post: float = 2.0,
                  follows_per_post: float = 0.2, did: str = "did:plc:synthsynthsynthsynth"
                  ) -> Iterator[tuple[str, Any]]:
    """(key, record) pairs in key order: likes, then posts, then follows (the order of
    their collection names), with TID record keys."""
    rng = random.Random(seed)
    start_us = 1_680_000_000 * 1_000_000
    step = 30_000_000

    def stamp(i: int) -> str:
        s = start_us // 1_000_000 + i * (step // 1_000_000)
        import time
        t = time.gmtime(s)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{i % 1000:03d}Z"

    nlikes = int(posts * likes_per_post)
    for i in range(nlikes):
        yield (f"app.bsky.feed.like/{_tid(start_us + i * step // 2, 1)}", {
            "$type": "app.bsky.feed.like", "createdAt": stamp(i // 2),
            "subject": {"cid": "bafyreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                        "uri": f"at://did:plc:other/app.bsky.feed.post/{_tid(start_us, i)}"}})
    blob = cid_for(b"image", 0x55)
    for i in range(posts):
        rec: dict[str, Any] = {"$type": "app.bsky.feed.post", "createdAt": stamp(i),
                               "text": f"post {i} <&> \u2028 {'é' * rng.randrange(4)}",
                               "langs": ["en"]}
        r = rng.random()
        if r < 0.1:
            rec["embed"] = {"$type": "app.bsky.embed.images", "images": [
                {"alt": "a", "image": {"$type": "blob", "ref": blob, "mimeType": "image/jpeg",
                                       "size": 1234}, "aspectRatio": {"width": 4,
                                                                      "height": 3}}]}
        elif r < 0.13:
            rec["embed"] = {"$type": "app.bsky.embed.external", "external": {
                "uri": "https://example.com/", "title": "t", "description": "d",
                "thumb": {"$type": "blob", "ref": blob, "mimeType": "image/jpeg",
                          "size": 99}}}
        if rng.random() < 0.3:
            parent = f"at://{did}/app.bsky.feed.post/{_tid(start_us, max(0, i - 1))}"
            ref = {"cid": "bafyreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                   "uri": parent}
            rec["reply"] = {"root": ref, "parent": ref}
        yield f"app.bsky.feed.post/{_tid(start_us + i * step, 0)}", rec
    for i in range(int(posts * follows_per_post)):
        yield (f"app.bsky.graph.follow/{_tid(start_us + i * step, 2)}", {
            "$type": "app.bsky.graph.follow", "createdAt": stamp(i),
            "subject": f"did:plc:follow{i:08d}"})


def synth_car(path: str | os.PathLike[str], posts: int, *, seed: int = 0) -> dict[str, Any]:
    """A synthetic repository of `posts` posts, twice as many likes and a fifth as many
    follows (the shape issue 12's benchmark names), in a shuffled CAR at `path`."""
    did = "did:plc:synthsynthsynthsynth"
    est = posts * 3.2 * 300                       # bytes, roughly
    buckets = max(1, int(est // (16 << 20)))      # ~16 MB shuffled in memory at a time
    return write_car(path, did, synth_records(posts, seed=seed, did=did), seed=seed,
                     buckets=buckets)
