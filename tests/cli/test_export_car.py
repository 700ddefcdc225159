"""`skyexport export REPO.car`: a CAR is recognised by content, imported into a temporary
archive inside the export's hidden directory, then exported as any archive; the result is
the bytes of `import` + `export` of the archive (but for archived_at, CAR.md)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from skyexport.testing.carwrite import post_record, write_car

from helpers.cli import run

CARS = Path(__file__).parent.parent / "car"
BSKY = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"
PAUL = CARS / "paul_staging.repo.car"
OFFS = CARS / "offsets.repo.car"
SLICE = CARS / "repo_slice.car"
DATA = {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}


def export(src: Path, out: Path, *opts: object) -> Path:
    r = run("export", src, "--output", out, "--quiet", *opts)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.splitlines()[-1])


def without_archived_at(data: bytes, fmt: str) -> list[object]:
    text = data.decode()
    if fmt == "csv":  # no archived_at column: the same bytes
        assert "ArchivedAt" not in next(csv.reader(io.StringIO(text)))
        return [text]
    assert text.count('"archived_at"') >= 1 or text in ("[]", "[]\n", "")
    return [re.sub(r'("archived_at": ?)"[^"]*"', r'\1""', text)]


@pytest.mark.parametrize("car", [BSKY, PAUL, OFFS])
@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_direct_equals_import_then_export(car: Path, fmt: str, tmp_path: Path) -> None:
    r = run("import", car, "--archive", tmp_path / "a.db")
    assert r.returncode == 0, r.stderr
    via_archive = export(tmp_path / "a.db", tmp_path / "o1", "--format", fmt)
    direct = export(car, tmp_path / "o2", "--format", fmt)
    a = (via_archive / DATA[fmt]).read_bytes()
    b = (direct / DATA[fmt]).read_bytes()
    assert without_archived_at(a, fmt) == without_archived_at(b, fmt)
    assert sorted(p.name for p in direct.iterdir()) == ["manifest.json", DATA[fmt]]


def test_filters_apply_as_for_an_archive(tmp_path: Path) -> None:
    run("import", BSKY, "--archive", tmp_path / "a.db")
    opts = ("--format", "jsonl", "--since", "2024-01-01", "--until", "2024-06-30",
            "--did", "did:plc:z72i7hdynmk6r22z27h6tvur")
    a = (export(tmp_path / "a.db", tmp_path / "o1", *opts) / "posts.jsonl").read_bytes()
    b = (export(BSKY, tmp_path / "o2", *opts) / "posts.jsonl").read_bytes()
    assert 0 < a.count(b"\n") < 494
    assert without_archived_at(a, "jsonl") == without_archived_at(b, "jsonl")


def test_manifest_names_the_car(tmp_path: Path) -> None:
    d = export(BSKY, tmp_path / "o")
    m = json.loads((d / "manifest.json").read_text())
    import hashlib

    assert m["source_archive"] == str(BSKY.resolve())
    assert m["source_car"]["sha256"] == hashlib.sha256(BSKY.read_bytes()).hexdigest()
    assert m["source_car"]["rev"] == "3lgqgeqwk7m2a"
    assert m["source_car"]["did"] == "did:plc:z72i7hdynmk6r22z27h6tvur"
    assert m["post_count"] == 494
    assert run("verify", d).returncode == 0
    # v2: no rev
    m2 = json.loads((export(PAUL, tmp_path / "p") / "manifest.json").read_text())
    assert m2["source_car"]["rev"] is None and m2["source_car"]["commit_version"] == 2
    # nothing but the export in OUTPUT: the temporary archive went with the temp dir
    assert [p.name for p in (tmp_path / "o").iterdir()] == [d.name]


def test_recognised_by_content_not_name(tmp_path: Path) -> None:
    shutil.copy(BSKY, tmp_path / "archive.db")
    d = export(tmp_path / "archive.db", tmp_path / "o")
    assert json.loads((d / "manifest.json").read_text())["post_count"] == 494
    run("import", OFFS, "--archive", tmp_path / "real.car")  # an SQLite file named .car
    d = export(tmp_path / "real.car", tmp_path / "o2")
    m = json.loads((d / "manifest.json").read_text())
    assert m["post_count"] == 5 and "source_car" not in m


def test_media_with_a_car_is_a_usage_error(tmp_path: Path) -> None:
    """--media with a CAR needs --blobs (the CAR holds blob references, not files)."""
    r = run("export", BSKY, "--output", tmp_path / "o", "--media")
    assert r.returncode == 2
    assert "--media" in r.stderr and "--blobs DIR" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_bad_car_publishes_nothing(tmp_path: Path) -> None:
    r = run("export", SLICE, "--output", tmp_path / "o")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "nothing was exported" in lines[0]
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
    raw = BSKY.read_bytes()
    (tmp_path / "t.car").write_bytes(raw[:-10])
    (tmp_path / "o").mkdir(exist_ok=True)
    r = run("export", tmp_path / "t.car", "--output", tmp_path / "o")
    assert r.returncode == 1 and "truncated" in r.stderr
    assert list((tmp_path / "o").iterdir()) == []


def test_unreadable_created_at_is_a_bad_value(tmp_path: Path) -> None:
    car = tmp_path / "b.car"
    write_car(car, "did:plc:test", {
        "app.bsky.feed.post/3kaaaaaaaaa22": post_record("ok", "2024-01-01T00:00:00Z"),
        "app.bsky.feed.post/3kaaaaaaaaa23": post_record("bad", "last tuesday")})
    r = run("export", car, "--output", tmp_path / "o", "--format", "jsonl")
    assert r.returncode == 1 and "created_at" in r.stderr and "last tuesday" in r.stderr
    assert "--on-bad-value keep" in r.stderr
    d = export(car, tmp_path / "o", "--format", "jsonl", "--on-bad-value", "keep")
    assert b"last tuesday" in (d / "posts.jsonl").read_bytes()
    warnings = json.loads((d / "manifest.json").read_text())["warnings"]
    assert sorted(w["column"] for w in warnings) == ["created_at", "indexed_at"]


def test_progress_covers_the_import_phase(tmp_path: Path) -> None:
    import skyexport

    events: list[skyexport.ExportProgress] = []
    r = skyexport.export(BSKY, tmp_path / "o", format="jsonl", on_progress=events.append)
    assert r.post_count == 494
    car = [e for e in events if e.car_blocks]
    assert car and car[0].status == "queued"
    assert events[-1].status == "completed"
    assert events[-1].car_blocks == 768 and events[-1].car_bytes == BSKY.stat().st_size
    blocks = [e.car_blocks for e in events]
    assert blocks == sorted(blocks)
    assert events[-1].to_dict()["car_blocks"] == 768


def test_stream_and_layout_did_with_a_car(tmp_path: Path) -> None:
    """A CAR streams to stdout (the posts of the directory export, but for archived_at,
    no temporary file left beside the CAR), and --layout did takes the repository's DID
    when --did is not given."""
    car = tmp_path / "r.car"
    shutil.copyfile(BSKY, car)
    for fmt in ("jsonl", "csv"):
        r = run("export", car, "--output", "-", "--format", fmt, "--quiet", text=False)
        assert r.returncode == 0, r.stderr
        d = export(car, tmp_path / f"d{fmt}", "--format", fmt)
        assert without_archived_at(r.stdout, fmt) == \
            without_archived_at((d / DATA[fmt]).read_bytes(), fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcsv", "djsonl", "r.car"]
    d = export(BSKY, tmp_path / "o", "--layout", "did")
    assert d.parent.name == "did:plc:z72i7hdynmk6r22z27h6tvur"
    d = export(BSKY, tmp_path / "o", "--layout", "did", "--did",
               "did:plc:z72i7hdynmk6r22z27h6tvur")
    assert d.parent.name == "did:plc:z72i7hdynmk6r22z27h6tvur"
