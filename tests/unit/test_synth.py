"""The synthetic-archive writer: schema, realism, determinism, media and file handling.

Every check is a query against a built archive, read the way the exporter reads one (APSW,
read-only).  No timing asserts here: build speed is measured by the benchmarks in perf/.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import itertools
import json
import os
import re
from pathlib import Path

import apsw
import pytest

from skyexport.testing import synth

GO_FORM = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d{1,9})? ([+-])(\d\d)(\d\d) ([A-Z]+)( m=\+\d+\.\d{9})?"
)
RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
SQLITE_TS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
TID = re.compile(r"[234567a-z]{13}")
PLC = re.compile(r"did:plc:[a-z2-7]{24}")


def instant(value: str) -> dt.datetime:
    """The UTC instant of a timestamp in one of the forms the writer produces."""
    if m := GO_FORM.fullmatch(value):
        base = dt.datetime.fromisoformat(m[1])
        frac = int((m[2] or ".0")[1:].ljust(9, "0")) // 1000
        off = dt.timedelta(hours=int(m[4]), minutes=int(m[5])) * (1 if m[3] == "+" else -1)
        return (base + dt.timedelta(microseconds=frac) - off).replace(tzinfo=dt.timezone.utc)
    if m := RFC3339.fullmatch(value):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
    assert SQLITE_TS.fullmatch(value), value
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc)


def connect(path: Path) -> apsw.Connection:
    return apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)


def rows(con: apsw.Connection, sql: str, *args: object) -> list[tuple]:
    return con.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v2") / "archive.db"
    stats = synth.build_archive(path, 3000, seed=7)
    assert stats.posts == 3000 and stats.media_files == 0 and stats.path == str(path)
    return path


@pytest.fixture(scope="module")
def media_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthStats]:
    path = tmp_path_factory.mktemp("media") / "archive.db"
    return path, synth.build_archive(path, 5000, seed=3, media=True)


# --- Schema ---------------------------------------------------------------------------------

V2_COLUMNS = [
    ("uri", "TEXT", 0, None, 1), ("cid", "TEXT", 1, None, 0), ("did", "TEXT", 1, None, 0),
    ("text", "TEXT", 0, None, 0), ("created_at", "TIMESTAMP", 1, None, 0),
    ("indexed_at", "TIMESTAMP", 1, None, 0), ("has_media", "BOOLEAN", 0, "0", 0),
    ("like_count", "INTEGER", 0, "0", 0), ("repost_count", "INTEGER", 0, "0", 0),
    ("reply_count", "INTEGER", 0, "0", 0), ("quote_count", "INTEGER", 0, "0", 0),
    ("is_reply", "BOOLEAN", 0, "0", 0), ("reply_parent", "TEXT", 0, None, 0),
    ("embed_type", "TEXT", 0, None, 0), ("embed_data", "JSON", 0, None, 0),
    ("labels", "JSON", 0, None, 0), ("archived_at", "TIMESTAMP", 0, "CURRENT_TIMESTAMP", 0),
]


def table_info(con: apsw.Connection, table: str) -> list[tuple]:
    return [r[1:] for r in rows(con, f"PRAGMA table_info({table})")]


def test_row_count(archive: Path) -> None:
    con = connect(archive)
    assert rows(con, "SELECT count(*) FROM posts") == [(3000,)]
    assert rows(con, "SELECT count(*) FROM media") == [(0,)]


def test_schema_v2(archive: Path) -> None:
    con = connect(archive)
    assert table_info(con, "posts") == V2_COLUMNS
    assert [r[0] for r in table_info(con, "media")] == [
        "hash", "post_uri", "mime_type", "file_path", "size_bytes", "width", "height",
        "alt_text", "created_at"]
    indexes = dict(rows(con, "SELECT name, sql FROM sqlite_schema WHERE type = 'index'"))
    assert indexes["idx_posts_did"] == "CREATE INDEX idx_posts_did ON posts(did)"
    assert indexes["idx_posts_created_at"] == (
        "CREATE INDEX idx_posts_created_at ON posts(created_at DESC)")
    assert rows(con, "PRAGMA index_xinfo(idx_posts_created_at)")[0][2:4] == ("created_at", 1)
    assert "sqlite_autoindex_posts_1" in indexes  # uri PRIMARY KEY
    fts = rows(con, "SELECT sql FROM sqlite_schema WHERE name = 'posts_fts'")[0][0]
    assert "fts5(uri UNINDEXED, text, content='posts', content_rowid='rowid')" in fts
    triggers = rows(con, "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger'")
    assert [t[:2] for t in triggers] == [("posts_ai", "posts")]
    assert "AFTER INSERT ON posts" in triggers[0][2]
    assert rows(con, "PRAGMA integrity_check") == [("ok",)]
    # A normal rollback-journal database, not WAL: read-only openers need nothing else.
    assert rows(con, "PRAGMA journal_mode") == [("delete",)]


def test_query_plans_use_the_indexes(archive: Path) -> None:
    con = connect(archive)
    plan = " ".join(r[3] for r in rows(
        con, "EXPLAIN QUERY PLAN SELECT uri FROM posts ORDER BY created_at DESC"))
    assert "idx_posts_created_at" in plan
    plan = " ".join(r[3] for r in rows(
        con, "EXPLAIN QUERY PLAN SELECT uri FROM posts WHERE did = ?", "did:plc:x"))
    assert "idx_posts_did" in plan


def test_fts_answers_match(archive: Path) -> None:
    con = connect(archive)
    hits = rows(con, "SELECT p.uri, p.text FROM posts_fts f JOIN posts p ON p.rowid = f.rowid"
                     " WHERE posts_fts MATCH 'coffee'")
    assert len(hits) > 10
    assert all("coffee" in text.lower() for _, text in hits)
    # Every post is in the index itself (counting posts_fts would only count the content table)
    # and the index agrees with the content; integrity-check is spelled as an INSERT, so it
    # needs a writable connection, though it changes nothing.
    assert rows(con, "SELECT count(*) FROM posts_fts_docsize") == [(3000,)]
    writable = apsw.Connection(str(archive))
    assert rows(writable, "INSERT INTO posts_fts(posts_fts, rank) VALUES('integrity-check', 1)"
                ) == []


def test_schema_v1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    synth.build_archive(path, 300, seed=1, schema_version=1)
    con = connect(path)
    assert table_info(con, "posts") == [c for c in V2_COLUMNS if c[0] != "quote_count"]
    assert rows(con, "SELECT count(*) FROM posts") == [(300,)]
    assert rows(con, "SELECT count(*) FROM posts_fts WHERE posts_fts MATCH 'the'")[0][0] > 0
    assert rows(con, "PRAGMA integrity_check") == [("ok",)]


def test_the_trigger_indexes_later_inserts(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    synth.build_archive(path, 50)
    con = apsw.Connection(str(path))
    con.execute("INSERT INTO posts (uri, cid, did, text, created_at, indexed_at)"
                " VALUES ('at://x/app.bsky.feed.post/1', 'c', 'd', 'zebraword', 'a', 'b')")
    assert rows(con, "SELECT uri FROM posts_fts WHERE posts_fts MATCH 'zebraword'") == [
        ("at://x/app.bsky.feed.post/1",)]


# --- Rows -----------------------------------------------------------------------------------


def test_identifiers(archive: Path) -> None:
    con = connect(archive)
    uris = set()
    for uri, cid, did in rows(con, "SELECT uri, cid, did FROM posts"):
        assert PLC.fullmatch(did)
        prefix, tid = uri.rsplit("/", 1)
        assert prefix == f"at://{did}/app.bsky.feed.post" and TID.fullmatch(tid)
        assert re.fullmatch(r"bafyrei[a-h][a-z2-7]{50}[aeimquy4]", cid)
        uris.add(uri)
    assert len(uris) == 3000
    assert len({r[0] for r in rows(con, "SELECT did FROM posts")}) == 1


def test_timestamp_forms(archive: Path) -> None:
    con = connect(archive)
    created = [r[0] for r in rows(con, "SELECT created_at FROM posts")]
    zones = collections.Counter()
    fractions = set()
    forms = collections.Counter()
    for value in created:
        if m := GO_FORM.fullmatch(value):
            forms["go"] += 1
            zones[f"{m[3]}{m[4]}{m[5]} {m[6]}"] += 1
            fractions.add(len(m[2] or ".") - 1)
            forms["mono"] += bool(m[7])
        elif RFC3339.fullmatch(value):
            forms["rfc3339"] += 1
            forms["Z"] += value.endswith("Z")
        else:
            assert SQLITE_TS.fullmatch(value), value
            forms["sqlite"] += 1
    assert set(zones) == {"+0000 UTC", "-0700 PDT", "-0800 PST", "+0900 JST", "+0530 IST"}
    assert {0, 3, 6, 9} <= fractions and len(fractions) >= 6
    assert 0.85 < forms["go"] / 3000 < 0.99
    assert 0.05 < forms["mono"] / forms["go"] < 0.15
    assert forms["rfc3339"] >= 30 and forms["Z"] >= 20 and forms["sqlite"] >= 30
    # PDT only in (northern) summer, PST only in winter, as Go prints America/Los_Angeles.
    for value in created:
        m = GO_FORM.fullmatch(value)
        if m and m[6] in ("PDT", "PST"):
            month = int(value[5:7])
            if 4 <= month <= 10:
                assert m[6] == "PDT", value
            elif month in (12, 1, 2):
                assert m[6] == "PST", value


def test_time_line(archive: Path) -> None:
    con = connect(archive)
    data = rows(con, "SELECT created_at, indexed_at, archived_at FROM posts ORDER BY rowid")
    created = [instant(c) for c, _, _ in data]
    assert max(created) - min(created) > dt.timedelta(days=2.5 * 365)
    for (c, i, a), when in zip(data, created, strict=True):
        assert GO_FORM.fullmatch(i) and i.split(" ")[2:4] == ["+0000", "UTC"], i
        assert SQLITE_TS.fullmatch(a), a
        assert when < instant(i) < when + dt.timedelta(days=2), (c, i)
        assert instant(i) - dt.timedelta(seconds=1) <= instant(a), (i, a)
    # Not inserted in time order, and not simply in reverse time order either.
    ordered = sorted(created)
    assert created != ordered and created != ordered[::-1]
    assert any(a < b for a, b in itertools.pairwise(created))


def test_texts(archive: Path) -> None:
    con = connect(archive)
    texts = [r[0] for r in rows(con, "SELECT text FROM posts")]
    assert all(20 <= len(t.lstrip(" ")) <= 300 for t in texts)

    def share(pred) -> float:
        return sum(map(pred, texts)) / len(texts)

    assert share(lambda t: '"' in t) > 0.02
    assert share(lambda t: "," in t) > 0.3
    assert share(lambda t: "\n" in t) > 0.05
    assert share(lambda t: "<" in t or "&" in t) > 0.02
    assert share(lambda t: any(ord(ch) > 0xFFFF for ch in t)) > 0.05  # emoji
    assert 0.002 < share(lambda t: t.startswith(" ")) < 0.03


def test_counts_are_skewed(archive: Path) -> None:
    con = connect(archive)
    likes = [r[0] for r in rows(con, "SELECT like_count FROM posts")]
    assert sum(v <= 5 for v in likes) / len(likes) > 0.85
    assert max(likes) > 500
    for column in ("repost_count", "reply_count", "quote_count"):
        (low, high) = rows(con, f"SELECT min({column}), max({column}) FROM posts")[0]
        assert low == 0 and high > 5
    assert rows(con, "SELECT count(*) FROM posts WHERE typeof(like_count) != 'integer'"
                     " OR typeof(has_media) != 'integer'") == [(0,)]


def test_replies(archive: Path) -> None:
    con = connect(archive)
    replies = rows(con, "SELECT reply_parent FROM posts WHERE is_reply = 1")
    assert 0.15 < len(replies) / 3000 < 0.25
    assert all(re.fullmatch(r"at://did:[a-z]+:[a-z0-9.]+/app\.bsky\.feed\.post/[a-z2-7]{13}", p)
               for (p,) in replies)
    assert rows(con, "SELECT count(*) FROM posts WHERE is_reply = 0 AND reply_parent != ''") == [
        (0,)]
    # Some answer the archive's own posts (threads), which are then in the archive.
    (own,) = rows(con, "SELECT count(*) FROM posts r JOIN posts p ON p.uri = r.reply_parent")[0]
    assert own > 50


def test_embeds_and_labels(archive: Path) -> None:
    con = connect(archive)
    kinds = {k: (n, m) for k, n, m in rows(
        con, "SELECT embed_type, count(*), sum(has_media) FROM posts GROUP BY embed_type")}
    assert set(kinds) == {"", "images", "external", "record", "record_with_media"}
    assert 0.07 < kinds["images"][0] / 3000 < 0.13
    assert 0.015 < kinds["external"][0] / 3000 < 0.05
    assert 0.015 < kinds["record"][0] / 3000 < 0.05
    assert 0.003 < kinds["record_with_media"][0] / 3000 < 0.02
    assert kinds[""][1] == 0 and kinds["record"][1] == 0
    assert kinds["images"][0] == kinds["images"][1]
    assert rows(con, "SELECT count(*) FROM posts WHERE embed_type = '' AND embed_data IS NOT NULL"
                ) == [(0,)]
    spellings = collections.Counter()
    for etype, data in rows(con, "SELECT embed_type, embed_data FROM posts WHERE embed_type != ''"):
        obj = json.loads(data)
        spellings["indent" if "\n    " in data else "spaced" if '": ' in data else "compact"] += 1
        if etype == "images":
            assert 1 <= len(obj["images"]) <= 4
            for image in obj["images"]:
                assert re.fullmatch(r"https://cdn\.bsky\.app/img/feed_fullsize/plain/did:plc:"
                                    r"[a-z2-7]{24}/bafkrei[a-z2-7]{52}@(jpeg|png)",
                                    image["fullsize"])
                assert "/feed_thumbnail/" in image["thumb"] and "alt" in image
        elif etype == "external":
            assert "/feed_thumbnail/" in obj["external"]["thumb"]
        elif etype == "record":
            assert obj["record"]["uri"].startswith("at://")
        else:
            assert obj["record"]["cid"].startswith("bafyrei") and obj["media"]["images"]
    assert min(spellings.values()) >= 20 and len(spellings) == 3
    labels = [json.loads(r[0]) for r in rows(con, "SELECT labels FROM posts"
                                                  " WHERE labels IS NOT NULL")]
    assert 0.01 < len(labels) / 3000 < 0.035
    assert all(isinstance(lab, list) and lab and "val" in lab[0] for lab in labels)


def test_several_accounts(tmp_path: Path) -> None:
    path = tmp_path / "dids.db"
    synth.build_archive(path, 2000, seed=5, dids=4)
    con = connect(path)
    counts = [n for _, n in rows(con, "SELECT did, count(*) FROM posts GROUP BY did"
                                      " ORDER BY 2 DESC")]
    assert len(counts) == 4 and 0.85 < counts[0] / 2000 < 0.95 and min(counts) > 20
    assert rows(con, "SELECT count(*) FROM posts WHERE uri NOT LIKE 'at://' || did || '/%'") == [
        (0,)]


# --- Determinism ----------------------------------------------------------------------------


def dump(path: Path, table: str, order: str) -> list[tuple]:
    return rows(connect(path), f"SELECT * FROM {table} ORDER BY {order}")


def test_same_seed_same_archive(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"
    synth.build_archive(a, 500, seed=11)
    synth.build_archive(b, 500, seed=11)
    synth.build_archive(c, 500, seed=12)
    assert dump(a, "posts", "uri") == dump(b, "posts", "uri")
    assert dump(a, "posts", "rowid") == dump(b, "posts", "rowid")  # same insertion order too
    assert a.read_bytes() == b.read_bytes()
    assert dump(a, "posts", "uri") != dump(c, "posts", "uri")


def test_media_does_not_change_the_posts(tmp_path: Path) -> None:
    plain, with_media = tmp_path / "plain.db", tmp_path / "media" / "m.db"
    with_media.parent.mkdir()
    synth.build_archive(plain, 800, seed=2)
    synth.build_archive(with_media, 800, seed=2, media=True)
    assert dump(plain, "posts", "rowid") == dump(with_media, "posts", "rowid")
    again = tmp_path / "again"
    again.mkdir()
    synth.build_archive(again / "m.db", 800, seed=2, media=True)
    assert dump(with_media, "media", "hash") == dump(again / "m.db", "media", "hash")


# --- Media ----------------------------------------------------------------------------------


def test_media_rows_and_files(media_archive: tuple[Path, synth.SynthStats]) -> None:
    path, stats = media_archive
    con = connect(path)
    media = rows(con, "SELECT m.hash, m.post_uri, m.mime_type, m.file_path, m.size_bytes,"
                      " m.width, m.height, m.alt_text, m.created_at, p.has_media, p.embed_data"
                      " FROM media m JOIN posts p ON p.uri = m.post_uri")
    assert len(media) == rows(con, "SELECT count(*) FROM media")[0][0] > 500
    present, missing, digests = 0, 0, collections.Counter()
    for h, _uri, mime, file_path, size, width, height, _alt, created, has_media, embed in media:
        assert re.fullmatch(r"bafkrei[a-z2-7]{52}", h) and h in embed and has_media == 1
        assert mime in ("image/jpeg", "image/png", "image/webp")
        assert not os.path.isabs(file_path) and file_path.startswith("media/")
        assert file_path.endswith((".jpg", ".png", ".webp")) and h in file_path
        assert width > 0 and height > 0 and SQLITE_TS.fullmatch(created)
        file = path.parent / file_path
        if file.exists():
            present += 1
            data = file.read_bytes()
            assert len(data) == size and 100 < size < 1000
            assert data[:4] in (b"\xff\xd8\xff\xe0", b"\x89PNG", b"RIFF")
            digests[hashlib.sha256(data).hexdigest()] += 1
        else:
            missing += 1
    assert stats.media_files == present
    assert 0.005 < missing / len(media) < 0.03
    shared = sum(n for n in digests.values() if n > 1)
    assert 0.005 < shared / present < 0.08
    # Every image hash a post's embed lists has its media row.
    (listed,) = rows(con, "SELECT count(*) FROM posts WHERE has_media = 1")[0]
    assert len({m[1] for m in media}) == listed


def test_media_dir_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    path = tmp_path / "db" / "a.db"
    stats = synth.build_archive(path, 400, seed=4, media=True, media_dir=tmp_path / "blobs")
    paths = [r[0] for r in rows(connect(path), "SELECT file_path FROM media")]
    assert paths and all(p.startswith("../blobs/") for p in paths)
    assert sum((path.parent / p).exists() for p in paths) == stats.media_files > 0
    assert not (tmp_path / "db" / "media").exists()


# --- Files ----------------------------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        synth.build_archive(path, 10)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db"]


def test_no_temporary_file_left(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    stats = synth.build_archive(str(path), 100)
    assert stats.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db"]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.db"

    def stop(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.build_archive(path, 100, on_progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_files_it_did_not_create_are_left_alone(tmp_path: Path) -> None:
    # The user's own `a.db.tmp` (the name an earlier version used) is not a leftover to
    # delete, and an existing media directory is not written into.
    path = tmp_path / "a.db"
    Path(str(path) + ".tmp").write_bytes(b"the user's file")
    synth.build_archive(path, 20)
    assert rows(connect(path), "SELECT count(*) FROM posts") == [(20,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "a.db.tmp"]
    assert Path(str(path) + ".tmp").read_bytes() == b"the user's file"
    media = tmp_path / "m" / "media"
    media.mkdir(parents=True)
    (media / "keep.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        synth.build_archive(tmp_path / "m" / "b.db", 20, media=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["media"]
    assert [p.name for p in media.iterdir()] == ["keep.jpg"]


def test_archive_has_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        synth.build_archive(tmp_path / "a.db", 5)
    finally:
        os.umask(old)
    assert (tmp_path / "a.db").stat().st_mode & 0o777 == 0o644


def test_failed_media_build_removes_its_media_dir(tmp_path: Path) -> None:
    def stop(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.build_archive(tmp_path / "a.db", 100, media=True, on_progress=stop)
    assert list(tmp_path.iterdir()) == []


def test_progress(tmp_path: Path) -> None:
    seen: list[int] = []
    synth.build_archive(tmp_path / "a.db", 25_000, on_progress=seen.append)
    assert len(seen) == 3 and seen == sorted(seen) and seen[-1] == 25_000


def test_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    stats = synth.build_archive(path, 0)
    assert stats.posts == 0
    con = connect(path)
    assert rows(con, "SELECT count(*) FROM posts") == [(0,)]
    assert rows(con, "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'idx_posts_%'") == [(2,)]


@pytest.mark.parametrize("kwargs", [{"posts": -1}, {"posts": 5, "schema_version": 3},
                                    {"posts": 5, "dids": 0}])
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        synth.build_archive(tmp_path / "a.db", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- The generator's interface ----------------------------------------------------------------
# Other code builds rows with _Generator directly: its constructor, chunk()'s signature and the
# row shapes (the INSERT's column order) stay as they are.

V2_TYPES = (str, str, str, str, str, str, int, int, int, int, int, int, str, str, (str, None),
            (str, None), str)


def tid_micros(uri: str) -> int:
    value = 0
    for ch in uri.rsplit("/", 1)[1]:
        value = value * 32 + "234567abcdefghijklmnopqrstuvwxyz".index(ch)
    return value >> 10


@pytest.mark.parametrize("version", [1, 2])
def test_generator_chunk_rows(tmp_path: Path, version: int) -> None:
    import random

    writer = synth._MediaWriter(random.Random(1), str(tmp_path / "media"), "media/")
    os.mkdir(writer.media_dir)
    gen = synth._Generator(random.Random(9), 2, version, writer)
    t0 = synth._T_START + 86400
    got = gen.chunk(t0, t0 + 3600, 2500)
    types = V2_TYPES if version == 2 else V2_TYPES[:10] + V2_TYPES[11:]
    assert len(got) == 2500
    for row in got:
        assert len(row) == len(types)
        assert all(isinstance(v, t if isinstance(t, type) else (str, type(None)))
                   for v, t in zip(row, types, strict=True)), row
        assert t0 * 10**6 <= tid_micros(row[0]) < (t0 + 3600) * 10**6
    assert len({row[0] for row in got}) == 2500
    # The media writer saw exactly the images of the posts with has_media, dated by the
    # post's archived_at.
    by_uri = {row[0]: row for row in got}
    assert {m[1] for m in writer.rows} == {row[0] for row in got if row[6] == 1}
    assert all(m[0] in by_uri[m[1]][-3] and m[8] == by_uri[m[1]][-1] for m in writer.rows)
    # The same seed gives the same rows.
    again = synth._Generator(random.Random(9), 2, version, None).chunk(t0, t0 + 3600, 2500)
    assert again == got
