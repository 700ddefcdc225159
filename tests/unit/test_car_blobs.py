"""Media from blobs: `export REPO.car --media --blobs DIR` and `import REPO.car --blobs
DIR` find each blob a post references as DIR/<cid> or DIR/<cid>.<ext> -- regular files
only, never a link, each checked against its CID -- and `--media` on an archive whose
has_media posts have no media rows says so."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import apsw
import pytest

from skyexport import export, verify
from skyexport.errors import OptionError
from skyexport.sources.car.importer import import_car
from skyexport.testing.carwrite import cid_for, write_car

from helpers.cli import one_line_failure as assert_one_line_failure
from helpers.cli import run

DID = "did:plc:blobs"


def _cid(data: bytes) -> str:
    from skyexport import _core
    return str(_core.cid_str(bytes(cid_for(data, 0x55))))


def _blob(data: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"$type": "blob", "ref": cid_for(data, 0x55), "mimeType": mime, "size": len(data)}


def _post(i: int, *blobs: bytes, video: bytes | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": f"post {i}",
                           "createdAt": f"2024-01-0{i}T00:00:00Z"}
    if video is not None:
        rec["embed"] = {"$type": "app.bsky.embed.video", "video": _blob(video, "video/mp4"),
                        "alt": "a video", "aspectRatio": {"width": 16, "height": 9}}
    elif blobs:
        rec["embed"] = {"$type": "app.bsky.embed.images", "images": [
            {"alt": f"alt {i}", "image": _blob(b), "aspectRatio": {"width": 4, "height": 3}}
            for b in blobs]}
    return rec


GOOD, PLAIN, BAD, LINKED, FIFO, DIRNAMED, ABSENT, VIDEO = (
    b"good jpeg", b"plain name", b"right bytes", b"linked", b"fifo", b"dir", b"absent",
    b"mp4 bytes")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A CAR of posts with one blob each, and a blobs directory with: a good file with an
    extension, one without, one with the wrong bytes, a symlink to a good file, a FIFO,
    a directory named like a CID, and nothing for one blob."""
    car = tmp_path / "repo.car"
    posts = {f"app.bsky.feed.post/3kaaaaaaaaa{c}2": _post(i + 1, b)
             for i, (c, b) in enumerate(zip("abcdefg", (GOOD, PLAIN, BAD, LINKED, FIFO,
                                                        DIRNAMED, ABSENT), strict=True))}
    posts["app.bsky.feed.post/3kaaaaaaaaah2"] = _post(8, video=VIDEO)
    posts["app.bsky.feed.post/3kaaaaaaaaai2"] = _post(9)
    write_car(car, DID, posts)
    d = tmp_path / "blobs"
    d.mkdir()
    (d / f"{_cid(GOOD)}.jpg").write_bytes(GOOD)
    (d / _cid(PLAIN)).write_bytes(PLAIN)
    (d / f"{_cid(BAD)}.jpg").write_bytes(b"wrong bytes")
    (tmp_path / "elsewhere.jpg").write_bytes(LINKED)
    os.symlink(tmp_path / "elsewhere.jpg", d / f"{_cid(LINKED)}.jpg")
    os.mkfifo(d / f"{_cid(FIFO)}.jpg")
    (d / _cid(DIRNAMED)).mkdir()
    (d / f"{_cid(VIDEO)}.mp4").write_bytes(VIDEO)
    return car, d


def _media(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / "media").iterdir())}


EXPECTED = {f"{_cid(GOOD)}.jpg": GOOD, _cid(PLAIN): PLAIN, f"{_cid(VIDEO)}.mp4": VIDEO}


def test_export_car_media_from_blobs(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """Only the regular files whose bytes match their CID are exported; the wrong bytes,
    the symlink, the FIFO, the directory and the absent blob are one warning each,
    naming the post."""
    car, blobs = setup
    res = export(car, tmp_path / "o", format="jsonl", media=True, blobs=blobs)
    d = res.directory
    assert d is not None
    assert _media(d) == EXPECTED
    assert res.media_count == 3
    by_post = {w.uri.rsplit("/", 1)[1]: w.message for w in res.warnings if w.uri}
    assert "does not match its CID" in by_post["3kaaaaaaaaac2"]
    assert "symbolic link" in by_post["3kaaaaaaaaad2"]
    assert "not a regular file" in by_post["3kaaaaaaaaae2"]
    assert "not a regular file" in by_post["3kaaaaaaaaaf2"]
    assert "is not in" in by_post["3kaaaaaaaaag2"]
    assert set(by_post) == {f"3kaaaaaaaaa{c}2" for c in "cdefg"}
    assert verify(d).ok


def test_import_blobs_then_export_media_equals_direct(setup: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    """import --blobs fills the media table as bskyarchive would (hash = CID, mime type,
    size, width/height from aspectRatio, alt text, a file_path relative to the archive),
    and exporting that archive with --media gives the same media/ as the CAR directly."""
    car, blobs = setup
    r = import_car(car, tmp_path / "data" / "archive.db", blobs=blobs)
    assert r.media_added == 3
    assert {u.rsplit("/", 1)[1] for u, _ in r.warnings} == {f"3kaaaaaaaaa{c}2"
                                                            for c in "cdefg"}
    con = apsw.Connection(str(tmp_path / "data" / "archive.db"))
    rows = con.execute("SELECT hash, post_uri, mime_type, file_path, size_bytes, width, "
                       "height, alt_text FROM media ORDER BY post_uri").fetchall()
    assert rows == [
        (_cid(GOOD), f"at://{DID}/app.bsky.feed.post/3kaaaaaaaaaa2", "image/jpeg",
         f"../blobs/{_cid(GOOD)}.jpg", len(GOOD), 4, 3, "alt 1"),
        (_cid(PLAIN), f"at://{DID}/app.bsky.feed.post/3kaaaaaaaaab2", "image/jpeg",
         f"../blobs/{_cid(PLAIN)}", len(PLAIN), 4, 3, "alt 2"),
        (_cid(VIDEO), f"at://{DID}/app.bsky.feed.post/3kaaaaaaaaah2", "video/mp4",
         f"../blobs/{_cid(VIDEO)}.mp4", len(VIDEO), 16, 9, "a video")]
    via = export(tmp_path / "data" / "archive.db", tmp_path / "o1", media=True).directory
    direct = export(car, tmp_path / "o2", media=True, blobs=blobs).directory
    assert via is not None and direct is not None
    assert _media(via) == _media(direct) == EXPECTED


def test_blobs_options(setup: tuple[Path, Path], tmp_path: Path) -> None:
    car, blobs = setup
    with pytest.raises(OptionError, match="give blobs= DIR"):
        export(car, tmp_path / "o", media=True)
    with pytest.raises(OptionError, match="needs media="):
        export(car, tmp_path / "o", blobs=blobs)
    with pytest.raises(OptionError, match="not a directory"):
        export(car, tmp_path / "o", media=True, blobs=blobs / "nope")
    r = run("import", car, "--archive", tmp_path / "a.db", "--blobs", blobs)
    assert r.returncode == 0, r.stderr
    assert "media: 3 rows" in r.stdout
    assert r.stderr.count("skyexport: warning:") == 5
    r = run("export", car, "-o", tmp_path, "--media")
    assert_one_line_failure(r, "--blobs DIR", code=2, prefix="skyexport export: error: ")


def test_media_without_media_rows_says_so(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """An archive (here imported without --blobs) whose has_media posts have no media
    rows: --media says so once, with the count, instead of exporting nothing silently."""
    car, _ = setup
    import_car(car, tmp_path / "a.db")
    res = export(tmp_path / "a.db", tmp_path / "o", media=True)
    msgs = [w.message for w in res.warnings]
    assert len(msgs) == 1 and msgs[0].startswith("8 exported post(s) have has_media")
    m = json.loads((res.directory / "manifest.json").read_text())  # type: ignore[operator]
    assert m["warnings_total"] == 1


def test_a_backup_directory_is_a_source(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """A directory as `skyexport fetch` leaves it (repo.car, blobs/) is exported, described
    and imported as its repo.car with its blobs/ as --blobs: --media needs nothing more,
    and gives the files the same CAR gives with --blobs."""
    car, blobs = setup
    backup = car.parent
    r = run("export", backup, "-o", tmp_path / "o", "--media", "-q")
    assert r.returncode == 0, r.stderr
    d = Path(r.stdout.strip().splitlines()[-1])
    assert _media(d) == EXPECTED
    assert verify(d).ok
    m = json.loads((d / "manifest.json").read_text())
    assert m["source_archive"] == str(car.resolve()) and m["post_count"] == 9
    res = export(backup, tmp_path / "api", media=True)
    assert _media(res.directory) == EXPECTED  # type: ignore[arg-type]
    r = run("info", backup)
    assert r.returncode == 0 and DID in r.stdout, r.stderr
    r = run("import", backup, "--archive", tmp_path / "a.db")
    assert r.returncode == 0, r.stderr
    assert "media: 3 rows" in r.stdout
    (tmp_path / "nocar").mkdir()
    (tmp_path / "nocar" / "repo.car").mkdir()
    assert_one_line_failure(run("export", tmp_path / "nocar", "-o", tmp_path / "o"),
                            "not a regular file")
