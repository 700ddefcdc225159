"""The CAR writer (skyexport.testing.carwrite, `synth --car N`) checked against independent readers
from PyPI: one test body, two implementations (libipld; atmst, with cbrrr)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from skyexport import _core
from skyexport.sources.car.repo import CarRepo
from skyexport.testing.carwrite import dag_cbor, key_height, synth_car, write_car

libipld = pytest.importorskip("libipld", reason="libipld (test extra) is not installed")
atmst = pytest.importorskip("atmst", reason="atmst (test extra) is not installed")


def _walk_libipld(path: Path) -> tuple[str, list[tuple[str, str]]]:
    header, blocks = libipld.decode_car(path.read_bytes())
    root = header["roots"][0]
    commit = blocks[root]
    out: list[tuple[str, str]] = []

    def walk(cid: bytes) -> None:
        node = blocks[cid]
        if node["l"] is not None:
            walk(node["l"])
        key = b""
        for e in node["e"]:
            key = key[: e["p"]] + e["k"]
            out.append((key.decode(), _core.cid_str(e["v"])))
            if e["t"] is not None:
                walk(e["t"])

    walk(commit["data"])
    return commit["did"], out


def _walk_atmst(path: Path) -> tuple[str, list[tuple[str, str]]]:
    from atmst.blockstore.car_file import ReadOnlyCARBlockStore
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_walker import NodeWalker
    from cbrrr import decode_dag_cbor

    with open(path, "rb") as f:
        bs = ReadOnlyCARBlockStore(f)
        commit = decode_dag_cbor(bs.get_block(bytes(bs.car_root)))
        kv = [(k, v.encode("base32")) for k, v in
              NodeWalker(NodeStore(bs), commit["data"]).iter_kv()]
    return commit["did"], kv


READERS: dict[str, Callable[[Path], tuple[str, list[tuple[str, str]]]]] = {
    "libipld": _walk_libipld, "atmst": _walk_atmst}


def _ours(path: Path, tmp: Path) -> tuple[str, list[tuple[str, str]]]:
    with CarRepo(path, tmp) as repo:
        return repo.did, [(k, _core.cid_str(v)) for k, v in repo.walk()]


@pytest.mark.parametrize("reader", sorted(READERS))
def test_synthetic_repository_reads_the_same(reader: str, tmp_path: Path) -> None:
    car = tmp_path / "s.car"
    made = synth_car(car, 1500, seed=3)
    did, kv = READERS[reader](car)
    assert (did, kv) == _ours(car, tmp_path)
    assert len(kv) == made["records"] == 1500 * 3.2
    assert [k for k, _ in kv] == sorted(k for k, _ in kv)
    assert sum(k.startswith("app.bsky.feed.post/") for k, _ in kv) == 1500
    assert made["blocks"] > len(kv)  # MST nodes, duplicates and unreachable blocks too


@pytest.mark.parametrize("reader", sorted(READERS))
def test_real_repositories_read_the_same(reader: str, tmp_path: Path) -> None:
    for name in ("bsky-app.z72i7hdynmk6r22z27h6tvur.car",
                 "bnewbold.robocracy.org.20250310005405.car"):
        car = Path(__file__).parent.parent / "car" / name
        assert READERS[reader](car) == _ours(car, tmp_path)


def test_mst_is_atmsts_and_blocks_canonical(tmp_path: Path) -> None:
    """The MST root equals the one atmst builds by inserting the same keys (so the key
    heights and the tree shape are atproto's); every block re-encodes to itself."""
    from atmst.blockstore import MemoryBlockStore
    from atmst.mst.node import MSTNode
    from atmst.mst.node_store import NodeStore
    from atmst.mst.node_wrangler import NodeWrangler
    from cbrrr import CID

    car = tmp_path / "w.car"
    recs = {f"app.bsky.feed.post/3k{i:011d}": {"$type": "app.bsky.feed.post", "text": str(i),
                                               "createdAt": "2024-01-01T00:00:00Z"}
            for i in range(600)}
    recs.update({f"app.bsky.feed.like/3k{i:011d}": {"n": i} for i in range(300)})
    made = write_car(car, "did:plc:w", recs, seed=1)
    ns = NodeStore(MemoryBlockStore())
    wrangler = NodeWrangler(ns)
    root = ns.get_node(None).cid
    for key, rec in recs.items():
        root = wrangler.put_record(root, key, CID(bytes(_cid(dag_cbor(rec)))))
    assert bytes(root) == bytes(made["data"])
    assert all(key_height(k) == MSTNode.key_height(k) for k in recs)
    header, blocks = libipld.decode_car(car.read_bytes())
    with CarRepo(car, car.parent) as repo:   # one index of the CAR for all its blocks
        for cid, obj in blocks.items():
            assert libipld.encode_dag_cbor(obj) == repo.block(cid, "test")


def _cid(block: bytes) -> bytes:
    from skyexport.testing.carwrite import cid_for

    return cid_for(block)


def test_synth_car_command(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "skyexport", "synth", tmp_path / "r.car", "--car", "200"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = subprocess.run([sys.executable, "-m", "skyexport", "export", tmp_path / "r.car",
                        "-o", tmp_path / "o", "--progress", "none"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "posts: 200" in r.stdout
