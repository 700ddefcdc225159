"""The block index of a CAR (a sorted file of (key, offset, length) found through a small
directory in RAM) and the MST walk: lookups return every block whose CID ends alike
(repeats, collisions of the 8-byte key, crowded directory buckets), sorted runs merge into
the same index as one run, and every command's walk reads every MST node (so a missing
node fails them all) but only the post records."""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from skyexport import _core
from skyexport.sources.car.repo import CarRepo
from skyexport.testing.carwrite import Link, _varint, cid_for, dag_cbor, post_record, synth_car

from helpers.cli import one_line_failure, run
from helpers.hostile import frames

POSTS = "app.bsky.feed.post/"


def car_bytes(root: bytes, blocks: list[tuple[bytes, bytes]]) -> bytes:
    header = dag_cbor({"roots": [Link(root)], "version": 1})
    out = [_varint(len(header)), header]
    for c, d in blocks:
        out += [_varint(len(c) + len(d)), bytes(c), d]
    return b"".join(out)


def without(raw: bytes, drop: set[bytes]) -> bytes:
    fs = frames(raw)
    return raw[:fs[0][0]] + b"".join(raw[s:e] for s, e, c in fs if c not in drop)


# --- the index on its own --------------------------------------------------------------

def crafted_cid(rng: random.Random, tail: bytes) -> bytes:
    """A CIDv1 (dag-cbor, sha256) whose digest ends with `tail` (the index key's bytes);
    the scanner frames blocks without checking them."""
    return b"\x01\x71\x12\x20" + rng.randbytes(32 - len(tail)) + tail


def build(path: Path, tmp: Path, run_size: int | None) -> tuple[Any, list[Any]]:
    raw = path.read_bytes()
    n, used = _core.read_uvarint(raw)
    start = used + n
    fd = os.open(path, os.O_RDONLY)
    ix_fd = os.open(tmp / f"ix{run_size}", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    runs_fd = os.open(tmp / f"runs{run_size}", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        sc = _core.CarScanner(fd, start, raw[:start], hashlib.sha256())
        ix = (sc.build_index(ix_fd, runs_fd) if run_size is None
              else sc.build_index(ix_fd, runs_fd, run=run_size))
        sc2 = _core.CarScanner(fd, start, raw[:start], hashlib.sha256())
        every = []
        while batch := sc2.next_batch(1000):
            every += batch
    finally:
        os.close(fd)
        os.close(runs_fd)
    return (ix, ix_fd), every


@pytest.mark.parametrize("run_size", [None, 1, 97, 4096])
def test_lookups_find_every_block(tmp_path: Path, run_size: int | None) -> None:
    """Random keys, the two extreme keys, a repeated block, two CIDs whose last 8 bytes
    collide, and 300 keys sharing their top 24 bits (a directory bucket far over the 64
    entries one read takes): each lookup lists exactly the blocks of its key, by
    offset; a missing key lists none.  One run, or many merged."""
    rng = random.Random(7)
    blocks = [(crafted_cid(rng, rng.randbytes(8)), rng.randbytes(rng.randrange(1, 60)))
              for _ in range(3000)]
    blocks.append((crafted_cid(rng, bytes(8)), b"lowest"))
    blocks.append((crafted_cid(rng, b"\xff" * 8), b"highest"))
    twin = crafted_cid(rng, b"\x12\x34\x56\x78\x9a\xbc\xde\xf0")
    blocks += [(twin, b"first"), (twin, b"again"), (twin, b"third")]
    blocks.append((crafted_cid(rng, b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"), b"collides"))
    crowd = b"\x80\x00\x01"
    blocks += [(crafted_cid(rng, crowd + rng.randbytes(5)), b"c") for _ in range(300)]
    rng.shuffle(blocks)
    car = tmp_path / "x.car"
    car.write_bytes(car_bytes(blocks[0][0], blocks))
    (ix, ix_fd), every = build(car, tmp_path, run_size)
    try:
        assert ix.count == len(blocks) == len(every)
        want: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for k, off, n in every:
            want[k].append((off, n))
        for k, hits in want.items():
            assert ix.find(k) == sorted(hits), k
        assert len(ix.find(_core.testing.cid_index_key(twin))) == 4
        assert ix.find(_core.testing.cid_index_key(bytes(8))) != []
        assert ix.find(-1) != []  # 0xff..ff as a signed 64-bit key
        absent = [k for k in (rng.getrandbits(64) - (1 << 63) for _ in range(2000))
                  if k not in want]
        assert absent and all(ix.find(k) == [] for k in absent)
        # the crowded bucket: every key of it, and keys between them, found or not
        crowded = sorted(k for k in want if (k & ((1 << 64) - 1)) >> 40 == 0x800001)
        assert len(crowded) == 300
        for a, b in zip(crowded, crowded[1:], strict=False):
            assert ix.find(a) == sorted(want[a])
            if b - a > 1:
                assert ix.find(a + 1) == []
    finally:
        os.close(ix_fd)


def test_merged_index_file_equals_one_run(tmp_path: Path) -> None:
    rng = random.Random(3)
    blocks = [(crafted_cid(rng, rng.randbytes(8)), b"d") for _ in range(5000)]
    blocks += blocks[:50]  # repeats
    car = tmp_path / "x.car"
    car.write_bytes(car_bytes(blocks[0][0], blocks))
    (_, a), _ = build(car, tmp_path, None)
    (_, b), _ = build(car, tmp_path, 64)
    os.close(a)
    os.close(b)
    one, merged = (tmp_path / "ixNone").read_bytes(), (tmp_path / "ix64").read_bytes()
    assert one == merged and len(one) == 20 * 5050


def test_a_block_whose_key_collides_is_passed_over(tmp_path: Path) -> None:
    """A block before the real record whose CID ends like the record's (same index key)
    is not taken for it; without the real record, the record is missing."""
    rec = dag_cbor(post_record("hello", "2024-01-01T00:00:00Z"))
    rcid = cid_for(rec)
    decoy = bytes(rcid[:10]) + bytes([rcid[10] ^ 0xFF]) + bytes(rcid[11:])
    node = dag_cbor({"l": None, "e": [{"p": 0, "k": (POSTS + "3kaaa").encode(), "v": rcid,
                                       "t": None}]})
    commit = dag_cbor({"did": "did:plc:raw", "version": 3, "data": cid_for(node),
                       "rev": "3k", "sig": bytes(64), "prev": None})
    blocks = [(decoy, b"\xa0"), (rcid, rec), (cid_for(node), node), (cid_for(commit), commit)]
    car = tmp_path / "c.car"
    car.write_bytes(car_bytes(cid_for(commit), blocks))
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert r.returncode == 0, r.stderr
    import sqlite3
    con = sqlite3.connect(tmp_path / "a.db")
    assert con.execute("SELECT text, cid FROM posts").fetchall() == [
        ("hello", _core.cid_str(rcid))]
    con.close()
    car.write_bytes(car_bytes(cid_for(commit), [b for b in blocks if b[0] != rcid]))
    r = run("import", car, "--archive", tmp_path / "b.db")
    one_line_failure(r, _core.cid_str(rcid), f"record {POSTS}3kaaa", "missing")


# --- the walk ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic repository (300 posts, 600 likes, 60 follows) and its MST: for every
    node, the smallest and largest key under it."""
    car = tmp_path_factory.mktemp("prune") / "repo.car"
    synth_car(car, 300, seed=11)
    raw = car.read_bytes()
    blocks = {bytes(c): raw[s:e] for s, e, c in frames(raw)}
    hn, used = _core.read_uvarint(raw)
    header, _ = _core.cbor_to_py(raw[used:used + hn])

    def data(cid: bytes) -> Any:
        frame = blocks[bytes(cid)]
        _, k = _core.read_uvarint(frame)
        return _core.cbor_to_py(frame[k + 36:])[0]

    spans: dict[bytes, tuple[str, str]] = {}

    def walk(cid: bytes) -> tuple[str, str]:
        node = data(cid)
        lo = hi = None
        if node["l"] is not None:
            lo, hi = walk(node["l"])
        key = b""
        for e in node["e"]:
            key = key[:e["p"]] + e["k"]
            k = key.decode()
            lo = lo or k
            hi = k
            if e["t"] is not None:
                hi = walk(e["t"])[1]
        assert lo is not None and hi is not None
        spans[bytes(cid)] = (lo, hi)
        return lo, hi

    root = data(header["roots"][0])["data"]
    walk(root)
    keys = sorted(k.decode() for k in _all_keys(data, root))
    return {"car": car, "raw": raw, "spans": spans, "root": bytes(root), "keys": keys}


def _all_keys(data: Any, cid: bytes) -> list[bytes]:
    node = data(cid)
    out = _all_keys(data, node["l"]) if node["l"] is not None else []
    key = b""
    for e in node["e"]:
        key = key[:e["p"]] + e["k"]
        out.append(key)
        if e["t"] is not None:
            out += _all_keys(data, e["t"])
    return out


def _outside_posts(repo: dict[str, Any]) -> set[bytes]:
    """The MST nodes whose neighbouring keys (the one before the smallest key under them,
    the one after the largest) enclose no post key: they hold only likes or only follows."""
    keys = repo["keys"]
    out = set()
    for cid, (lo, hi) in repo["spans"].items():
        i, j = keys.index(lo), keys.index(hi)
        before = keys[i - 1] if i else None
        after = keys[j + 1] if j + 1 < len(keys) else None
        if (before is not None and before >= POSTS[:-1] + "0") or \
                (after is not None and after < POSTS):
            out.add(cid)
    return out


def test_every_command_reads_every_node(repo: dict[str, Any], tmp_path: Path) -> None:
    """Drop one MST node outside the post range (it holds only likes or only follows):
    import, export and info all fail naming it -- every walk reads and checks every
    node, so they accept and refuse the same files."""
    drop = sorted(_outside_posts(repo))
    assert len(drop) >= 10
    for i, cid in enumerate((drop[0], drop[-1])):
        car = tmp_path / f"cut{i}.car"
        car.write_bytes(without(repo["raw"], {cid}))
        name = _core.cid_str(cid)
        one_line_failure(run("import", car, "--archive", tmp_path / f"a{i}.db"), name,
                         "missing", "MST node", "nothing was imported")
        one_line_failure(run("export", car, "-o", tmp_path / f"o{i}", "--format", "jsonl",
                             "--progress", "none"), name, "missing")
        one_line_failure(run("info", car), name, "missing", "MST node")
    # and the whole CAR: info counts every collection
    r = run("info", repo["car"], "--json")
    assert r.returncode == 0, r.stderr
    import json
    assert json.loads(r.stdout)["collections"] == {
        "app.bsky.feed.like": 600, "app.bsky.feed.post": 300, "app.bsky.graph.follow": 60}


def test_a_missing_node_in_the_post_range_still_fails(repo: dict[str, Any], tmp_path: Path,
                                                      ) -> None:
    outside = _outside_posts(repo)
    inside = [c for c, (lo, hi) in repo["spans"].items()
              if c not in outside and c != repo["root"]
              and lo.startswith(POSTS) and hi.startswith(POSTS)]
    assert inside
    for i, cid in enumerate(inside[:3]):
        car = tmp_path / f"cut{i}.car"
        car.write_bytes(without(repo["raw"], {cid}))
        r = run("import", car, "--archive", tmp_path / f"a{i}.db")
        one_line_failure(r, _core.cid_str(cid), "missing", "MST node", "nothing was imported")
        r = run("export", car, "-o", tmp_path / f"o{i}", "--format", "jsonl")
        one_line_failure(r, _core.cid_str(cid), "missing")
        assert not (tmp_path / f"a{i}.db").exists()


def test_the_walk_reads_every_node_and_only_post_records(repo: dict[str, Any],
                                                         tmp_path: Path) -> None:
    with CarRepo(repo["car"], tmp_path) as r:
        assert r.index is not None
        for posts_only in (True, False):
            w = _core.CarWalker(r.fd, r.index, r.data, r.did, posts_only)
            n = 0
            while rows := w.rows(100, ""):
                n += len(rows)
            assert n == 300
            nodes = len(repo["spans"])
            assert w.nodes_read == nodes
            assert w.blocks_read == 300 + nodes  # the post records and every node
