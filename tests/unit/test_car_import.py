"""`skyexport import REPO.car`: the real repository files in tests/car/ (copied from
tests/car/, counts from its README) become bskyarchive-schema archives; every kind of
bad CAR fails with one line, exit 1, nothing created."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from skyexport import _core
from skyexport.testing.synth import build_archive

from helpers.cli import one_line_failure as assert_one_line_failure
from helpers.cli import run
from helpers.hostile import frames as car_frames

CARS = Path(__file__).parent.parent / "car"
BSKY = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"
PAUL = CARS / "paul_staging.repo.car"
BNEW = CARS / "bnewbold.robocracy.org.20250310005405.car"
OFFS = CARS / "offsets.repo.car"
SLICE = CARS / "repo_slice.car"


def imported(car: Path, tmp: Path, name: str = "a.db") -> sqlite3.Connection:
    r = run("import", car, "--archive", tmp / name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == str(tmp / name)
    return sqlite3.connect(tmp / name)


@pytest.mark.parametrize("car, posts", [(BSKY, 494), (PAUL, 101), (BNEW, 23), (OFFS, 5)])
def test_post_counts(car: Path, posts: int, tmp_path: Path) -> None:
    con = imported(car, tmp_path)
    assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == posts
    # the full-text index is filled, as bskyarchive's trigger would have
    assert con.execute("SELECT count(*) FROM posts_fts").fetchone()[0] == posts
    assert not [p for p in tmp_path.iterdir() if p.name != "a.db"]  # no temp files left


def test_bsky_app_embeds_and_replies(tmp_path: Path) -> None:
    con = imported(BSKY, tmp_path)
    kinds = dict(con.execute("SELECT embed_type, count(*) FROM posts GROUP BY 1"))
    assert kinds == {"": 266, "images": 106, "external": 73, "record": 43, "video": 6}
    assert con.execute("SELECT count(*) FROM posts WHERE is_reply = 1 "
                       "AND reply_parent LIKE 'at://%'").fetchone()[0] == 308
    assert con.execute("SELECT count(*) FROM posts WHERE is_reply = 0 "
                       "AND reply_parent = ''").fetchone()[0] == 494 - 308
    # media: every image and video post, link cards with a thumbnail blob, nothing else
    assert con.execute("SELECT count(*) FROM posts WHERE has_media = 1 AND embed_type "
                       "NOT IN ('images', 'video', 'external')").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM posts WHERE has_media = 1 AND embed_type "
                       "IN ('images', 'video')").fetchone()[0] == 112
    cards = con.execute("SELECT has_media, embed_data FROM posts "
                        "WHERE embed_type = 'external'").fetchall()
    for media, data in cards:
        assert media == ('"thumb":{' in data)


def test_fields_as_car_md_maps_them(tmp_path: Path) -> None:
    con = imported(BSKY, tmp_path)
    con.row_factory = sqlite3.Row
    row = con.execute("SELECT * FROM posts WHERE uri = ?", (
        "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3jt6walwmos2y",)).fetchone()
    assert row["cid"] == "bafyreih2ppgdoc5jhjsbj5yxvqezymbndbe522vexpiic6l72o3ge7tswy"
    assert row["did"] == "did:plc:z72i7hdynmk6r22z27h6tvur"
    assert row["text"] == "How it started:"
    assert row["created_at"] == row["indexed_at"] == "2023-04-12T17:36:42.427Z"
    assert (row["has_media"], row["is_reply"], row["reply_parent"]) == (1, 0, "")
    assert [row[c] for c in ("like_count", "repost_count", "reply_count",
                             "quote_count")] == [0, 0, 0, 0]
    assert row["embed_type"] == "images"
    assert row["embed_data"] == (
        '{"$type":"app.bsky.embed.images","images":[{"alt":"","image":{"ref":{"$link":'
        '"bafkreidf3ystxebv33boyb5hr2ggwmlee5x53vubwelsuvmcw3tq4p36pi"},"size":148647,'
        '"$type":"blob","mimeType":"image/jpeg"}}]}')
    assert row["labels"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row["archived_at"])
    # a post with no embed: embed_type '' and embed_data NULL
    none = con.execute("SELECT embed_data FROM posts WHERE embed_type = ''").fetchall()
    assert none and all(r[0] is None for r in none)
    # the cid column is each record's CID: the SHA-256 of the record block hashes to it
    assert all(c.startswith("bafyrei") for (c,) in con.execute("SELECT cid FROM posts"))


def test_offsets_and_legacy_blobs(tmp_path: Path) -> None:
    con = imported(OFFS, tmp_path)
    assert {r[0][-6:] for r in con.execute("SELECT created_at FROM posts")} == {"-07:00"}
    con = imported(PAUL, tmp_path, "p.db")
    legacy = con.execute("SELECT count(*) FROM posts WHERE has_media = 1 AND embed_data "
                         "LIKE '%\"cid\":%' AND embed_data NOT LIKE '%\"ref\":%'").fetchone()
    assert legacy[0] > 0  # legacy {"cid", "mimeType"} image blobs are media too


def test_schema_is_synths(tmp_path: Path) -> None:
    con = imported(BNEW, tmp_path)
    build_archive(tmp_path / "s.db", 3)
    synth = sqlite3.connect(tmp_path / "s.db")
    q = "SELECT type, name, sql FROM sqlite_schema ORDER BY name"
    assert con.execute(q).fetchall() == synth.execute(q).fetchall()


def test_text_is_go_escaped_json_in_embeds(tmp_path: Path) -> None:
    con = imported(BSKY, tmp_path)
    for (data,) in con.execute("SELECT embed_data FROM posts WHERE embed_data IS NOT NULL"):
        assert "<" not in data and ">" not in data and "&" not in data
        json.loads(data)


# --- bad input --------------------------------------------------------------------------

def test_partial_car_fails_naming_cid_and_key(tmp_path: Path) -> None:
    r = run("import", SLICE, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "repo_slice.car", "missing", "nothing was imported")
    assert re.search(r"bafyrei[a-z2-7]{52}", r.stderr)
    assert re.search(r"\((MST node (before the first key|after key \S+)|record \S+)\)",
                     r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_missing_record_names_its_key(tmp_path: Path) -> None:
    """Drop one post record's block from a real CAR: the error names its CID and key."""
    raw = BNEW.read_bytes()
    blocks = car_frames(raw)
    con = imported(BNEW, tmp_path)
    uri, cid = con.execute("SELECT uri, cid FROM posts ORDER BY uri LIMIT 1").fetchone()
    con.close()
    (tmp_path / "a.db").unlink()
    bad = _without(raw, blocks, cid)
    car = tmp_path / "cut.car"
    car.write_bytes(bad)
    r = run("import", car, "--archive", tmp_path / "a.db")
    key = uri.split("/", 3)[3]
    assert_one_line_failure(r, cid, f"record {key}", "missing")
    assert not (tmp_path / "a.db").exists()


def _without(raw: bytes, blocks: list[tuple[int, int, bytes]], cid: str) -> bytes:
    keep = [raw[:blocks[0][0]]]
    keep += [raw[s:e] for s, e, c in blocks if _core.cid_str(c) != cid]
    return b"".join(keep)


def test_truncated_car(tmp_path: Path) -> None:
    raw = BSKY.read_bytes()
    car = tmp_path / "t.car"
    car.write_bytes(raw[: len(raw) - 100])
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "t.car", "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.car"]


def test_flipped_byte_in_used_block(tmp_path: Path) -> None:
    raw = bytearray(BNEW.read_bytes())
    con = imported(BNEW, tmp_path)
    (cid,) = con.execute("SELECT cid FROM posts LIMIT 1").fetchone()
    con.close()
    (tmp_path / "a.db").unlink()
    for _s, e, c in car_frames(bytes(raw)):
        if _core.cid_str(c) == cid:
            raw[e - 3] ^= 0x01
    car = tmp_path / "f.car"
    car.write_bytes(bytes(raw))
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, cid, "does not match its CID")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.car"]


def test_damaged_unreachable_block_is_ignored(tmp_path: Path) -> None:
    """A block the tree does not reach, with bytes that match neither its CID nor
    DAG-CBOR, does not stop the import."""
    junk = b"\xff\xfe not cbor"
    cid = b"\x01\x71\x12\x20" + hashlib.sha256(b"something else").digest()
    frame = bytes([len(cid) + len(junk)]) + cid + junk
    car = tmp_path / "j.car"
    car.write_bytes(BNEW.read_bytes() + frame)
    con = imported(car, tmp_path)
    assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == 23


@pytest.mark.parametrize("content", [b"", b"hello, world\n", b"SQLite format 3\x00" + b"\0" * 200,
                                     b"\x0a\xa2ab\x01"])
def test_not_a_car(content: bytes, tmp_path: Path) -> None:
    car = tmp_path / "x.car"
    car.write_bytes(content)
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "x.car", "not a CAR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.car"]


def test_missing_file(tmp_path: Path) -> None:
    r = run("import", tmp_path / "nope.car", "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "nope.car")
    assert list(tmp_path.iterdir()) == []


def test_float_in_record(tmp_path: Path) -> None:
    """A post record holding a float: undecodable, named by CID and key."""
    from skyexport.testing.carwrite import post_record, write_car

    car = tmp_path / "fl.car"
    recs = {"app.bsky.feed.post/3kaaaaaaaaa22": post_record("ok", "2024-01-01T00:00:00Z"),
            "app.bsky.feed.post/3kaaaaaaaaa23": post_record("bad", "2024-01-01T00:00:01Z",
                                                             extra={"score": 1.5})}
    write_car(car, "did:plc:test", recs)
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "record app.bsky.feed.post/3kaaaaaaaaa23", "float")


def test_unknown_commit_version(tmp_path: Path) -> None:
    from skyexport.testing.carwrite import post_record, write_car

    car = tmp_path / "v.car"
    write_car(car, "did:plc:test", {"app.bsky.feed.post/3kaaaaaaaaa22":
                                    post_record("x", "2024-01-01T00:00:00Z")}, version=4)
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "version 4", "2 and 3")


# --- never replacing, --merge ---------------------------------------------------------

def test_existing_archive_is_never_replaced(tmp_path: Path) -> None:
    imported(BNEW, tmp_path).close()
    before = (tmp_path / "a.db").read_bytes()
    r = run("import", BSKY, "--archive", tmp_path / "a.db")
    assert_one_line_failure(r, "already exists", "--merge")
    assert (tmp_path / "a.db").read_bytes() == before


def test_default_archive_path(tmp_path: Path) -> None:
    r = run("import", BNEW, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "archive.db").is_file()


def test_merge_adds_only_missing_posts(tmp_path: Path) -> None:
    con = imported(BSKY, tmp_path)
    uris = [u for (u,) in con.execute("SELECT uri FROM posts ORDER BY uri LIMIT 3")]
    con.execute("UPDATE posts SET like_count = 42, archived_at = '2020-01-01 00:00:00' "
                "WHERE uri = ?", (uris[0],))
    con.execute("DELETE FROM posts WHERE uri IN (?, ?)", uris[1:])
    con.commit()
    kept = con.execute("SELECT * FROM posts WHERE uri = ?", (uris[0],)).fetchone()
    con.close()
    r = run("import", BSKY, "--archive", tmp_path / "a.db", "--merge")
    assert r.returncode == 0, r.stderr
    assert "added: 2 " in r.stdout
    con = sqlite3.connect(tmp_path / "a.db")
    assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == 494
    assert con.execute("SELECT * FROM posts WHERE uri = ?", (uris[0],)).fetchone() == kept
    # a second, different repository merges in beside it
    r = run("import", PAUL, "--archive", tmp_path / "a.db", "--merge")
    assert r.returncode == 0, r.stderr
    assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == 595
    assert con.execute("SELECT count(*) FROM posts_fts WHERE posts_fts MATCH 'started'"
                       ).fetchone()[0] >= 1


def test_failed_merge_changes_nothing(tmp_path: Path) -> None:
    imported(BNEW, tmp_path).close()
    before = (tmp_path / "a.db").read_bytes()
    raw = bytearray(BSKY.read_bytes())
    frames = car_frames(bytes(raw))
    s, e, c = frames[len(frames) // 2]
    raw[e - 2] ^= 0x40
    car = tmp_path / "d.car"
    car.write_bytes(bytes(raw))
    # Either that block is used (an error) or not; make sure one used block is damaged by
    # also dropping the last post record: the merge must fail and leave the archive as is.
    con = imported(BSKY, tmp_path, "ref.db")
    (cid,) = con.execute("SELECT cid FROM posts ORDER BY uri DESC LIMIT 1").fetchone()
    con.close()
    car.write_bytes(_without(bytes(raw), frames, cid))
    r = run("import", car, "--archive", tmp_path / "a.db", "--merge")
    assert r.returncode == 1 and "nothing was imported" in r.stderr
    assert (tmp_path / "a.db").read_bytes() == before


def test_merge_needs_an_archive(tmp_path: Path) -> None:
    r = run("import", BNEW, "--archive", tmp_path / "none.db", "--merge")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_read_only_car_directory(tmp_path: Path) -> None:
    """The block index is written beside the archive, never beside the CAR."""
    d = tmp_path / "ro"
    d.mkdir()
    shutil.copy(BNEW, d / "r.car")
    os.chmod(d, 0o555)
    try:
        imported(d / "r.car", tmp_path)
    finally:
        os.chmod(d, 0o755)


def _raw_car(path: Path, entries: list[tuple[str, object]], version: int = 3) -> None:
    """A one-node MST holding `entries` as given (in that order, unchecked)."""
    from skyexport.testing.carwrite import _varint, cid_for, dag_cbor

    blocks = []
    es = []
    for key, rec in entries:
        data = dag_cbor(rec)
        blocks.append((cid_for(data), data))
        es.append({"p": 0, "k": key.encode(), "v": cid_for(data), "t": None})
    node = dag_cbor({"l": None, "e": es})
    blocks.append((cid_for(node), node))
    commit = dag_cbor({"did": "did:plc:raw", "version": version, "data": cid_for(node),
                       "rev": "3k", "sig": bytes(64), "prev": None})
    blocks.append((cid_for(commit), commit))
    header = dag_cbor({"roots": [cid_for(commit)], "version": 1})
    out = _varint(len(header)) + header
    for c, d in blocks:
        out += _varint(len(c) + len(d)) + bytes(c) + d
    path.write_bytes(out)


def test_repeated_or_unsorted_keys(tmp_path: Path) -> None:
    """A damaged MST whose keys repeat or go backwards: one line naming the key, nothing
    imported (without the check the same post would be inserted twice)."""
    from skyexport.testing.carwrite import post_record

    rec = post_record("x", "2024-01-01T00:00:00Z")
    for name, keys in (("dup", ["app.bsky.feed.post/3kb", "app.bsky.feed.post/3kb"]),
                       ("back", ["app.bsky.feed.post/3kb", "app.bsky.feed.post/3ka"])):
        car = tmp_path / f"{name}.car"
        _raw_car(car, [(k, rec) for k in keys])
        r = run("import", car, "--archive", tmp_path / f"{name}.db")
        assert_one_line_failure(r, f"{keys[1]} out of order", "MST node")
        assert not (tmp_path / f"{name}.db").exists()
    good = tmp_path / "good.car"
    _raw_car(good, [("app.bsky.feed.post/3ka", rec), ("app.bsky.feed.post/3kb", rec)])
    assert imported(good, tmp_path).execute("SELECT count(*) FROM posts").fetchone()[0] == 2
