"""CSV MediaFiles for record embeds (CAR.md, "MediaFiles for records"): blob CIDs, in the
contract's order, from the core and from the reference exporter alike; views unchanged."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from skyexport import _core

from helpers import reference

CARS = Path(__file__).parent.parent / "car"


def blob(cid: str) -> dict[str, object]:
    return {"$type": "blob", "ref": {"$link": cid}, "mimeType": "image/jpeg", "size": 1}


def legacy(cid: str) -> dict[str, object]:
    return {"cid": cid, "mimeType": "image/jpeg"}


IMAGES = {"$type": "app.bsky.embed.images",
          "images": [{"alt": "", "image": blob("bafkreia")},
                     {"alt": "", "image": legacy("bafkreib")}]}
VIDEO = {"$type": "app.bsky.embed.video", "video": blob("bafkreiv"), "alt": "x",
         "captions": [{"lang": "en", "file": blob("bafkreicaption")}]}
EXTERNAL = {"$type": "app.bsky.embed.external",
            "external": {"uri": "https://a", "title": "", "description": "",
                         "thumb": blob("bafkreit")}}
RWM_IMAGES = {"$type": "app.bsky.embed.recordWithMedia",
              "record": {"$type": "app.bsky.embed.record", "record": {"uri": "at://x",
                                                                       "cid": "bafyreiq"}},
              "media": IMAGES}
RWM_VIDEO = {"$type": "app.bsky.embed.recordWithMedia", "record": {}, "media": VIDEO}
RWM_EXTERNAL = {"$type": "app.bsky.embed.recordWithMedia", "record": {},
                "media": {"$type": "app.bsky.embed.external",
                          "external": {"uri": "https://a", "thumb": legacy("bafkreimt")}}}
# Not a real shape, but it pins the order: images, media.images, media.video, video,
# external.thumb, media.external.thumb.
ALL = {"$type": "app.bsky.embed.recordWithMedia",
       "images": [{"image": blob("i1")}],
       "media": {"images": [{"image": blob("m1")}, {"image": {"ref": "bad", "cid": "m2"}}],
                 "video": blob("mv"), "external": {"thumb": blob("mt")}},
       "video": blob("v"), "external": {"thumb": legacy("t")}}
VIEW = {"$type": "app.bsky.embed.images#view",
        "images": [{"fullsize": "https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:x/"
                    "bafkreiview@jpeg", "image": blob("ignored")}]}


@pytest.mark.parametrize("embed, expected", [
    (IMAGES, b"bafkreia;bafkreib"),
    (VIDEO, b"bafkreiv"),                    # caption files are not media files
    (EXTERNAL, b"bafkreit"),
    (RWM_IMAGES, b"bafkreia;bafkreib"),
    (RWM_VIDEO, b"bafkreiv"),
    (RWM_EXTERNAL, b"bafkreimt"),
    (ALL, b"i1;m1;m2;mv;v;t;mt"),
    (VIEW, b"bafkreiview"),                  # views: unchanged, blob fields ignored
    ({**VIEW, "$type": "app.bsky.embed.Images"}, b"bafkreiview"),  # not exactly a record type
    ({"$type": "app.bsky.embed.images",      # a record: CDN-URL fields are not read
      "images": [{"fullsize": "https://c/x/bafkreiurl@jpeg"}]}, b""),
    ({"$type": "app.bsky.embed.record", "record": {"uri": "at://x"}}, b""),
    ({"$type": "app.bsky.embed.images", "images": [{"image": {"ref": {"$link": ""}}},
                                                   {"image": {"ref": {"$link": 7}}},
                                                   {"image": "bafkreinot"}, 3]}, b""),
])
def test_record_rule(embed: dict[str, object], expected: bytes) -> None:
    raw = json.dumps(embed).encode()
    assert _core.testing.media_files_of(raw) == expected
    assert reference.media_files(json.loads(raw)) == expected


def test_record_rule_deep_beside_the_fields() -> None:
    """A record embed nesting deeper than the pruning depth elsewhere still gives its
    hashes (the deepest field read, media.images[].image.ref.$link, is six levels in)."""
    deep: object = "x"
    for _ in range(200):
        deep = [deep]
    embed = {**RWM_IMAGES, "extra": deep}
    raw = json.dumps(embed).encode()
    assert _core.testing.media_files_of(raw) == b"bafkreia;bafkreib"
    assert reference.media_files(json.loads(raw)) == b"bafkreia;bafkreib"


def test_csv_of_an_imported_car(tmp_path: Path) -> None:
    car = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"
    run = [sys.executable, "-m", "skyexport"]
    subprocess.run([*run, "import", car, "--archive", tmp_path / "a.db"], check=True,
                   capture_output=True)
    r = subprocess.run([*run, "export", car, "-o", tmp_path / "o", "-f", "csv", "-q"],
                       check=True, capture_output=True, text=True)
    data = (Path(r.stdout.splitlines()[-1]) / "posts.csv").read_text(encoding="utf-8-sig")
    rows = {row["URI"]: row for row in csv.DictReader(io.StringIO(data))}
    con = sqlite3.connect(tmp_path / "a.db")
    with_media = 0
    for uri, has_media, embed in con.execute("SELECT uri, has_media, embed_data FROM posts"):
        got = rows[uri]["MediaFiles"].encode()
        want = reference.media_files(json.loads(embed)) if has_media and embed else b""
        assert got == want, uri
        with_media += bool(got)
    assert with_media == con.execute("SELECT count(*) FROM posts WHERE has_media").fetchone()[0]
    first = rows["at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3jt6walwmos2y"]
    assert first["MediaFiles"] == "bafkreidf3ystxebv33boyb5hr2ggwmlee5x53vubwelsuvmcw3tq4p36pi"
