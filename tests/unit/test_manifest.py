"""manifest.json (bskyarchive's keys plus checksums and provenance) and `skyexport verify`,
which re-hashes an export and reports every difference."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import skyexport

from helpers.archives import make_archive
from helpers.cli import run


def cli_verify(directory: Path | str) -> subprocess.CompletedProcess[str]:
    return run("verify", directory)


URI = "at://did:plc:test/app.bsky.feed.post/{:04d}"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
BSKYARCHIVE_KEYS = ["export_format", "export_timestamp", "post_count", "media_count",
                    "version", "files"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Ten posts over ten days, two DIDs, six with media (one file missing)."""
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    rows, media = [], []
    for i in range(10):
        rows.append({"uri": URI.format(i), "did": "did:plc:test" if i < 8 else "did:plc:x",
                     "created_at": f"2024-05-{20 - i:02d} 12:00:00 +0000 UTC",
                     "has_media": int(i % 2 == 0 or i == 9)})
        if i % 2 == 0 or i == 9:
            if i != 4:
                (data / "media" / f"img{i}.jpg").write_bytes(b"image %d" % i)
            media.append({"hash": f"h{i}", "post_uri": URI.format(i),
                          "file_path": f"media/img{i}.jpg"})
    return make_archive(data / "archive.db", rows, media_rows=media)


@pytest.fixture
def export_dir(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return skyexport.export(archive, tmp_path / "out", media=True).directory


def assert_rejected(directory: Path, *needles: str) -> str:
    proc = cli_verify(directory)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("skyexport: error: ") and "problem(s) found" in lines[-1]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert any(needle in line for line in lines[:-1]), (needle, proc.stderr)
    return proc.stderr


# --- what the manifest holds ----------------------------------------------------------------


def test_manifest_keys(export_dir: Path, archive: Path) -> None:
    raw = (export_dir / "manifest.json").read_bytes()
    assert raw.endswith(b"}\n") and raw.startswith(b"{\n  \"export_format\"")
    m = json.loads(raw)
    assert list(m)[:6] == BSKYARCHIVE_KEYS[:4] + ["version", "files"]
    assert "date_range" not in m  # no filter: omitted, as bskyarchive does
    assert m["export_format"] == "json"
    assert RFC3339.match(m["export_timestamp"]), m["export_timestamp"]
    stamp = dt.datetime.fromisoformat(m["export_timestamp"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 120
    assert m["post_count"] == 10
    assert m["media_count"] == 5
    assert m["files"] == ["posts.json", "media/ (5 files)"]
    assert m["generator"] == f"skyexport {skyexport.__version__}"
    assert m["source_archive"] == str(archive.resolve())
    assert m["did"] is None and m["batch_size"] == 1000
    assert isinstance(m["duration_s"], float) and m["duration_s"] >= 0
    assert m["warnings_total"] == 1 and len(m["warnings"]) == 1
    w = m["warnings"][0]
    assert w["uri"] == URI.format(4) and w["column"] == "media"
    assert "img4.jpg not found" in w["message"]


def test_checksums_cover_every_file(export_dir: Path) -> None:
    m = json.loads((export_dir / "manifest.json").read_bytes())
    checksums = m["checksums"]
    assert set(checksums) == {"posts.json", "media.sha256"}
    for name, info in checksums.items():
        data = (export_dir / name).read_bytes()
        assert info == {"sha256": sha(data), "bytes": len(data)}
    lines = (export_dir / "media.sha256").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    media = sorted((export_dir / "media").iterdir())
    assert listed == {f"media/{p.name}": sha(p.read_bytes()) for p in media}
    assert len(media) == m["media_count"]
    if shutil.which("sha256sum"):  # the list is in sha256sum's own format
        subprocess.run(["sha256sum", "--check", "--quiet", "media.sha256"], cwd=export_dir,
                       check=True)


def test_filters_in_the_manifest(archive: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = skyexport.export(archive, tmp_path / "out", format="csv", did="did:plc:test",
                         since="2024-05-13", until="2024-05-18T06:00:00+02:00", batch_size=3)
    m = r.manifest
    assert json.loads((r.directory / "manifest.json").read_bytes()) == m
    assert list(m)[:5] == ["export_format", "export_timestamp", "post_count", "media_count",
                           "date_range"]
    assert m["date_range"] == {"start_date": "2024-05-13T00:00:00Z",
                               "end_date": "2024-05-18T04:00:00Z"}
    assert m["post_count"] == 5 and m["did"] == "did:plc:test" and m["batch_size"] == 3
    assert m["files"] == ["posts.csv"] and m["media_count"] == 0
    assert set(m["checksums"]) == {"posts.csv"}

    r = skyexport.export(archive, tmp_path / "out", until="2024-05-12")
    assert r.manifest["date_range"] == {"start_date": None,
                                        "end_date": "2024-05-12T23:59:59.999999999Z"}


def test_kept_bad_values_are_warnings(tmp_path: Path) -> None:
    arc = make_archive(tmp_path / "a.db", [{"uri": URI.format(0)},
                                           {"uri": URI.format(1), "labels": "{not json"}])
    r = skyexport.export(arc, tmp_path / "out", on_bad_value="keep")
    m = r.manifest
    assert m["warnings_total"] == 1
    assert m["warnings"][0]["uri"] == URI.format(1)
    assert m["warnings"][0]["column"] == "labels"
    assert skyexport.verify(r.directory).ok


# --- verify ---------------------------------------------------------------------------------


def test_verify_accepts_an_untouched_export(export_dir: Path) -> None:
    proc = cli_verify(export_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == "ok: 7 files match the manifest\n"  # posts.json, the list, 5 media
    report = skyexport.verify(export_dir)
    assert report.ok and report.checked == 7 and report.problems == []


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_verify_each_format(archive: Path, tmp_path: Path, fmt: str) -> None:
    r = skyexport.export(archive, tmp_path / "out", format=fmt)
    assert cli_verify(r.directory).returncode == 0
    assert cli_verify(r.directory).stdout == "ok: 1 files match the manifest\n"


def test_changed_byte_in_posts(export_dir: Path) -> None:
    p = export_dir / "posts.json"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    assert_rejected(export_dir, "posts.json: SHA-256")


def test_truncated_posts(export_dir: Path) -> None:
    p = export_dir / "posts.json"
    p.write_bytes(p.read_bytes()[:-1])
    assert_rejected(export_dir, "posts.json: ", "bytes")


def test_missing_posts(export_dir: Path) -> None:
    (export_dir / "posts.json").unlink()
    assert_rejected(export_dir, "posts.json: missing")


def test_changed_media_file(export_dir: Path) -> None:
    p = export_dir / "media" / "img2.jpg"
    data = p.read_bytes()
    p.unlink()  # a hard link: write a new file, not through the link into the archive
    p.write_bytes(data[:-1] + b"X")
    assert_rejected(export_dir, "media/img2.jpg: SHA-256")


def test_missing_media_file(export_dir: Path) -> None:
    (export_dir / "media" / "img6.jpg").unlink()
    assert_rejected(export_dir, "media/img6.jpg: missing")


def test_extra_media_file(export_dir: Path) -> None:
    (export_dir / "media" / "intruder.jpg").write_bytes(b"?")
    assert_rejected(export_dir, "media/intruder.jpg: not listed in the manifest")


def test_extra_file_and_directory(export_dir: Path) -> None:
    (export_dir / "notes.txt").write_text("hi")
    (export_dir / "media" / "sub").mkdir()
    (export_dir / "media" / "sub" / "x.jpg").write_bytes(b"x")
    (export_dir / "stray").mkdir()
    stderr = assert_rejected(export_dir, "notes.txt: not listed in the manifest",
                             "media/sub/: a directory the manifest does not know",
                             "stray/: a directory the manifest does not know")
    assert "x.jpg" not in stderr  # an unknown directory is reported, not descended into


def test_media_replaced_by_a_symlink(export_dir: Path) -> None:
    p = export_dir / "media" / "img0.jpg"
    copy = export_dir.parent / "img0-copy.jpg"
    copy.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(copy)
    assert_rejected(export_dir, "media/img0.jpg: a symbolic link")


def test_missing_manifest(export_dir: Path) -> None:
    (export_dir / "manifest.json").unlink()
    assert_rejected(export_dir, "manifest.json is missing")


def test_not_a_directory(tmp_path: Path) -> None:
    assert_rejected(tmp_path / "nope", "is not a directory")


def test_manifest_not_json(export_dir: Path) -> None:
    (export_dir / "manifest.json").write_text("{ not json")
    assert_rejected(export_dir, "manifest.json is not a valid manifest: not valid JSON at byte 2")


def test_manifest_without_checksums(export_dir: Path) -> None:
    m = json.loads((export_dir / "manifest.json").read_bytes())
    del m["checksums"]
    (export_dir / "manifest.json").write_text(json.dumps(m))
    assert_rejected(export_dir, "has no checksums")


def test_changed_checksum_in_manifest(export_dir: Path) -> None:
    m = json.loads((export_dir / "manifest.json").read_bytes())
    m["checksums"]["posts.json"]["sha256"] = "0" * 64
    (export_dir / "manifest.json").write_text(json.dumps(m))
    assert_rejected(export_dir, "posts.json: SHA-256")


def test_edited_media_list(export_dir: Path) -> None:
    """Dropping a line from media.sha256 is caught twice: the list's own checksum, and the
    file it no longer covers."""
    p = export_dir / "media.sha256"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[1:]))
    dropped = lines[0].split("  ")[1].strip()
    assert_rejected(export_dir, "media.sha256: ", f"{dropped}: not listed in the manifest",
                    "lists 4 media files, manifest.json says media_count 5")


def test_manifest_names_outside_the_export(export_dir: Path, tmp_path: Path) -> None:
    """Names that climb out of the export directory are reported, never opened."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    m = json.loads((export_dir / "manifest.json").read_bytes())
    m["checksums"]["../../secret"] = {"sha256": sha(b"s"), "bytes": 1}
    m["checksums"]["/etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}
    (export_dir / "manifest.json").write_text(json.dumps(m))
    with (export_dir / "media.sha256").open("a") as f:
        f.write(f"{sha(b's')}  media/../../secret\n")
    assert_rejected(export_dir, "'../../secret', which is not a plain file name",
                    "'/etc/hostname', which is not a plain file name",
                    "media.sha256 line 6 is malformed")


def test_verify_api_report(export_dir: Path) -> None:
    (export_dir / "media" / "img8.jpg").unlink()
    (export_dir / "extra").write_bytes(b"")
    report = skyexport.verify(export_dir)
    assert not report.ok
    assert report.problems == ["media/img8.jpg: missing", "extra: not listed in the manifest"]
    assert report.directory == export_dir


def test_verify_on_the_result_of_a_cli_export(archive: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "skyexport", "export", str(archive),
                           "--media", "--output", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    export_dir = proc.stdout.splitlines()[-1]
    assert cli_verify(export_dir).returncode == 0
    assert os.path.isdir(os.path.join(export_dir, "media"))
