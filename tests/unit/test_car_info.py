"""`skyexport info REPO.car`: DID, commit version and rev, records per collection, posts
and their date range, as text and as JSON (real files from tests/car/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

CARS = Path(__file__).parent.parent / "car"


def info(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skyexport", "info", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_json_of_bsky_app(tmp_path: Path) -> None:
    car = tmp_path / "repo.car"
    shutil.copy(CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car", car)
    r = info(car, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["did"] == "did:plc:z72i7hdynmk6r22z27h6tvur"
    assert (d["commit_version"], d["rev"]) == (3, "3lgqgeqwk7m2a")
    assert d["blocks"] == 768 and d["records"] == 627 and d["posts"] == 494
    assert d["collections"]["app.bsky.feed.post"] == 494
    assert d["collections"]["app.bsky.feed.like"] == 50
    assert sum(d["collections"].values()) == 627
    assert d["dids"] == {"did:plc:z72i7hdynmk6r22z27h6tvur": 494}
    assert d["first_created_at"] == "2023-04-12T17:36:42.427Z"
    assert d["last_created_at"] == "2025-01-27T17:05:29.989Z"
    assert d["media_rows"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo.car"]  # no index left


def test_text_of_a_v2_repository() -> None:
    r = info(CARS / "paul_staging.repo.car")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "did: did:plc:cmpvykrzb2l22kj4ojlv3ox4\n" in out
    assert "commit: version 2, rev - (none in v2)\n" in out
    assert "posts: 101\n" in out
    assert "first created_at: 2022-11-11T20:57:04.320Z\n" in out


def test_offsets_date_range_by_instant() -> None:
    d = json.loads(info(CARS / "offsets.repo.car", "--json").stdout)
    assert d["posts"] == 5 and d["commit_version"] == 2 and d["rev"] is None
    assert d["first_created_at"].endswith("-07:00")


def test_bad_input(tmp_path: Path) -> None:
    r = info(CARS / "repo_slice.car")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "missing" in r.stderr
    (tmp_path / "x").write_text("not a car")
    r = info(tmp_path / "x")
    # neither a CAR nor an archive: the archive branch of `info` says so
    assert r.returncode == 1 and "not a SQLite database" in r.stderr
    assert "Traceback" not in r.stderr
