"""The Python API: `skyexport.export(...) -> ExportResult`, which agrees with the manifest
and the files, and one ExportError subclass per cause; plus the `synth` and `demo`
commands that put the whole job together."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import skyexport
from skyexport import (
    ArchiveError,
    BadValueError,
    ExportError,
    ExportResult,
    OptionError,
    OutputError,
)
from skyexport.exporter.options import tuning

from helpers.archives import make_archive

URI = "at://did:plc:test/app.bsky.feed.post/{:04d}"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    rows, media = [], []
    for i in range(25):
        has = i % 5 == 0
        rows.append({"uri": URI.format(i), "has_media": int(has),
                     "created_at": f"2024-02-{i + 1:02d} 09:00:00 +0000 UTC"})
        if has:
            if i != 10:
                (data / "media" / f"f{i}.jpg").write_bytes(b"media %d" % i)
            media.append({"hash": f"h{i}", "post_uri": URI.format(i),
                          "file_path": f"media/f{i}.jpg"})
    return make_archive(data / "archive.db", rows, media_rows=media)


def test_result_agrees_with_manifest_and_files(archive: Path, tmp_path: Path) -> None:
    result = skyexport.export(archive, tmp_path / "out", media=True, batch_size=7)
    assert isinstance(result, ExportResult)
    d = result.directory
    assert d.parent == tmp_path / "out" and d.is_dir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(-\d+)?", d.name)
    assert result.data_file == d / "posts.json" and result.format == "json"
    data = result.data_file.read_bytes()
    posts = json.loads(data)
    manifest = json.loads((d / "manifest.json").read_bytes())
    assert result.manifest == manifest
    assert result.post_count == len(posts) == manifest["post_count"] == 25
    assert result.bytes_written == len(data) == manifest["checksums"]["posts.json"]["bytes"]
    assert result.sha256 == hashlib.sha256(data).hexdigest() == \
        manifest["checksums"]["posts.json"]["sha256"]
    assert result.checksums == manifest["checksums"]
    media_files = sorted(p.name for p in (d / "media").iterdir())
    assert media_files == ["f0.jpg", "f15.jpg", "f20.jpg", "f5.jpg"]
    assert result.media_count == len(media_files) == manifest["media_count"]
    assert manifest["files"] == ["posts.json", "media/ (4 files)"]
    assert result.warnings_total == manifest["warnings_total"] == 1
    assert [w._asdict() for w in result.warnings] == manifest["warnings"]
    assert result.warnings[0].uri == URI.format(10) and result.warnings[0].column == "media"
    assert result.duration_s >= 0
    assert manifest["duration_s"] == round(result.duration_s, 3)
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "media", "media.sha256",
                                                   "posts.json"]
    with pytest.raises(AttributeError, match="immutable"):
        result.post_count = 0  # type: ignore[misc]


def test_each_export_gets_its_own_directory(archive: Path, tmp_path: Path) -> None:
    results = [skyexport.export(archive, tmp_path / "out", format=f)
               for f in ("json", "csv", "jsonl", "json")]
    dirs = [r.directory for r in results]
    assert len(set(dirs)) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(d.name for d in dirs)
    assert [r.data_file.name for r in results] == ["posts.json", "posts.csv", "posts.jsonl",
                                                   "posts.json"]
    assert results[0].data_file.read_bytes() == results[3].data_file.read_bytes()


def test_public_names() -> None:
    for name in ("export", "verify", "ExportResult", "ExportProgress", "ExportWarning",
                 "VerifyReport", "ExportError", "OptionError", "ArchiveError",
                 "BadValueError", "OutputError", "__version__"):
        assert name in skyexport.__all__ and hasattr(skyexport, name)
    doc = skyexport.export.__doc__ or ""
    assert ">>> result = skyexport.export(" in doc and "on_progress" in doc
    for cls in (OptionError, ArchiveError, BadValueError, OutputError):
        assert issubclass(cls, ExportError)
    assert issubclass(OptionError, ValueError) and issubclass(BadValueError, ValueError)
    assert issubclass(OutputError, OSError)


# --- one error class per cause --------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(("options", "needle"), [
    ({"format": "xml"}, "format= 'xml' is not a format"),
    ({"batch_size": 0}, "batch_size= must be a positive integer"),
    ({"batch_size": -5}, "batch_size= must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size= must be a positive integer"),
    ({"batch_size": True}, "batch_size= must be a positive integer"),
    ({"on_bad_value": "ignore"}, "on_bad_value= must be 'error' or 'keep'"),
    ({"since": "yesterday"}, "since="),
    ({"until": "2024-13-01"}, "until="),
    ({"since": "2024-03-01", "until": "2024-02-01"}, "is after until="),
    ({"media": True, "media_root": "/nonexistent/media"}, "media_root="),
    ({"flush_size": 0}, "tuning(flush_size=) must be a positive integer"),
    ({"flush_size": True}, "tuning(flush_size=) must be a positive integer"),
])
def test_option_error(archive: Path, tmp_path: Path, options: dict, needle: str) -> None:
    knobs = {"flush_size": options.pop("flush_size")} if "flush_size" in options else {}
    with pytest.raises(OptionError) as info, tuning(**knobs):
        skyexport.export(archive, tmp_path / "out", **options)
    assert needle in one_line(info.value)
    assert not (tmp_path / "out").exists()


def test_export_signature_has_only_public_parameters() -> None:
    # What help() and an IDE show: no private knob among export()'s parameters; the tests
    # and the command line tune an export through exporter.options.tuning instead.
    import inspect

    params = inspect.signature(skyexport.export).parameters
    assert [p for p in params if p.startswith("_")] == []
    assert {"archive", "output", "format", "did", "since", "until", "media", "layout",
            "compress", "on_progress"} <= set(params)


def test_tuning_holds_only_inside_its_block(archive: Path, tmp_path: Path) -> None:
    # The knob applies to the exports inside the `with`, and is gone after it.
    with pytest.raises(OptionError, match="flush_size"), tuning(flush_size=0):
        skyexport.export(archive, tmp_path / "a")
    assert skyexport.export(archive, tmp_path / "b").post_count > 0


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_tiny_flush_size_gives_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    # The private flush size (tuning) reaches the writer: flushing after every few bytes (and
    # mid-row inside a 3 MiB text and a 40 KiB embed_data) changes nothing in the file.
    rows = [{"uri": URI.format(i), "text": f"post {i} \u00e9\n" * (i % 9)} for i in range(300)]
    rows.append({"uri": URI.format(999), "text": ("\u2028x\"\u00e9" * 600_000).encode(),
                 "embed_data": "[" + ",".join(['{"k": "v\\n"}'] * 3000) + "]"})
    archive = make_archive(tmp_path / "a.db", rows)
    want = skyexport.export(archive, tmp_path / "default", format=fmt).data_file.read_bytes()
    for size in (1, 4097, 16385):
        with tuning(flush_size=size):
            got = skyexport.export(archive, tmp_path / f"f{size}", format=fmt)
        assert got.data_file.read_bytes() == want, size
        assert got.bytes_written == len(want)


def test_archive_error(tmp_path: Path) -> None:
    cases = {}
    cases["missing"] = (tmp_path / "missing.db", "does not exist")
    (tmp_path / "adir").mkdir()
    cases["directory"] = (tmp_path / "adir", "is not a file")
    (tmp_path / "text.db").write_text("hello, I am not a database " * 100)
    cases["not sqlite"] = (tmp_path / "text.db", "is not a SQLite database")
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE notes (x)")
    con.close()
    cases["no posts table"] = (tmp_path / "other.db", "has no posts table")
    con = sqlite3.connect(tmp_path / "short.db")
    con.execute("CREATE TABLE posts (uri TEXT, cid TEXT)")
    con.close()
    cases["missing columns"] = (tmp_path / "short.db", "lacks column(s)")
    for what, (path, needle) in cases.items():
        with pytest.raises(ArchiveError) as info:
            skyexport.export(path, tmp_path / "out")
        assert needle in one_line(info.value), what
        assert str(path) in str(info.value), what
    assert not (tmp_path / "out").exists()


def test_bad_value_error(tmp_path: Path) -> None:
    arc = make_archive(tmp_path / "a.db", [
        {"uri": URI.format(0)},
        {"uri": URI.format(1), "created_at": "15/01/2024 10:30"},
    ])
    (tmp_path / "out").mkdir()
    with pytest.raises(BadValueError) as info:
        skyexport.export(arc, tmp_path / "out")
    err = info.value
    assert (err.uri, err.column, err.value) == (URI.format(1), "created_at", "15/01/2024 10:30")
    text = one_line(err)
    assert URI.format(1) in text and "created_at" in text and "--on-bad-value keep" in text
    assert list((tmp_path / "out").iterdir()) == []  # nothing published, no temp dir

    arc2 = make_archive(tmp_path / "b.db", [{"uri": URI.format(2), "embed_data": "{oops"}])
    for fmt in ("json", "jsonl"):
        with pytest.raises(BadValueError) as info:
            skyexport.export(arc2, tmp_path / "out", format=fmt)
        assert info.value.column == "embed_data"
    # CSV does not read stored JSON: the same archive exports.
    assert skyexport.export(arc2, tmp_path / "out", format="csv").post_count == 1
    # And with on_bad_value="keep" everything exports, with warnings.
    kept = skyexport.export(arc, tmp_path / "out", on_bad_value="keep")
    assert kept.post_count == 2 and kept.warnings_total == 1


def test_output_error(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("occupied")
    with pytest.raises(OutputError) as info:
        skyexport.export(archive, target)
    assert "is a file, not a directory" in one_line(info.value)
    assert isinstance(info.value, OSError)
    assert target.read_text() == "occupied"
    with pytest.raises(OutputError):
        skyexport.export(archive, target / "below")


def test_cli_exit_codes(archive: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "skyexport", *args],
                              capture_output=True, text=True, check=False)

    (tmp_path / "file").write_text("x")
    for args, code, needle in [
        (["export", str(tmp_path / "missing.db"), "-q"], 1, "does not exist"),
        (["export", str(archive), "--output", str(tmp_path / "file"), "-q"], 1, "is a file"),
        (["export", str(archive), "--since", "soon", "-q"], 2, "--since"),
        (["export", str(archive), "--batch-size", "0"], 2, "must be at least 1"),
    ]:
        proc = cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout == ""


# --- synth and demo -------------------------------------------------------------------------


def test_synth_media(tmp_path: Path) -> None:
    arc = tmp_path / "data" / "archive.db"
    arc.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "skyexport", "synth", str(arc),
                           "--posts", "500", "--media", "--seed", "3"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == str(arc)
    files = [p for p in (arc.parent / "media").rglob("*") if p.is_file()]
    assert files
    con = sqlite3.connect(arc)
    (rows,) = con.execute("SELECT count(*) FROM media").fetchone()
    con.close()
    assert rows >= len(files)
    result = skyexport.export(arc, tmp_path / "out", media=True)
    assert 0 < result.media_count <= len(files)
    assert skyexport.verify(result.directory).ok


def test_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "skyexport", "demo", "--posts", "2000",
                           "--output", str(out), "--progress", "none"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    last = Path(lines[-1])
    assert last.is_dir() and last.parent == out / "exports"
    verify = subprocess.run([sys.executable, "-m", "skyexport", "verify", str(last)],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert any("manifest:" in line and "2000 posts" in line for line in lines)
    exports = sorted((out / "exports").iterdir())
    with_media = [d for d in exports if (d / "media").is_dir()]
    assert with_media and any((with_media[0] / "media").iterdir())
    for d in exports:
        assert skyexport.verify(d).ok


def test_demo_shows_progress(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "skyexport", "demo", "--posts", "1500",
                           "--output", str(tmp_path / "demo"), "--progress", "jsonl"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [e["status"] for e in events].count("completed") == 2
    assert any(e["media_total"] > 0 for e in events)
    assert events[-1]["posts_processed"] == 1500


def _demo(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skyexport", "demo", "--posts", "500",
                           "--progress", "none", *argv], capture_output=True, text=True,
                          check=False, timeout=300, env=env)


@pytest.mark.parametrize("layout", ["archive", "file", "symlink"])
def test_demo_never_replaces_what_is_there(tmp_path: Path, layout: str) -> None:
    # `demo --output DIR` used to delete DIR/data/archive.db (bskyarchive's own
    # place for the archive) and write a synthetic one over it.
    target = tmp_path / "home"
    if layout == "archive":
        (target / "data").mkdir(parents=True)
        (target / "data" / "archive.db").write_bytes(b"a year of posts")
    elif layout == "file":
        target.write_bytes(b"not a directory")
    else:
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    before = sorted((str(p), p.is_symlink() or p.read_bytes() if p.is_file() else None)
                    for p in tmp_path.rglob("*"))
    proc = _demo("--output", str(target))
    assert proc.returncode == 2, proc.stderr
    usage, line = proc.stderr.splitlines()  # a usage error, printed as the parser's own
    assert usage.startswith("usage: skyexport demo ")
    assert line.startswith("skyexport demo: error: demo --output ") and "already exists" in line
    assert sorted((str(p), p.is_symlink() or p.read_bytes() if p.is_file() else None)
                  for p in tmp_path.rglob("*")) == before


def test_demo_into_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    proc = _demo("--output", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[-1]).parent == tmp_path / "d" / "exports"


def test_demo_removes_its_temporary_directory(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = _demo(env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert proc.stdout.splitlines()[-1].startswith("removed the temporary directory ")
    assert "warnings: the media files the synthetic archive leaves out on purpose" \
        in proc.stdout
    assert "peak memory (RSS), the export's own process:" in proc.stdout
    proc = _demo("--keep", env=env)
    assert proc.returncode == 0, proc.stderr
    (kept,) = tmp_path.iterdir()
    last = Path(proc.stdout.splitlines()[-1])
    assert last.parent == kept / "exports" and skyexport.verify(last).ok


def test_connection_lock_only_where_two_threads_share_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --media only the stepping thread uses the connection while rows flow: it
    is opened without SQLite's per-connection mutex (SQLITE_OPEN_NOMUTEX; two lock round
    trips per column read otherwise).  --media steps a second cursor on the main thread
    beside the pipe: that export keeps the mutex.  Both give the same posts."""
    import apsw

    from skyexport.sources import archive as archive_mod

    flags: list[int] = []

    class Recording(archive_mod.Archive):
        def _open(self, immutable: bool) -> tuple[set[str], set[str], bool]:
            found = super()._open(immutable)
            flags.append(self.conn.open_flags)
            return found

    monkeypatch.setattr(archive_mod, "Archive", Recording)
    db = make_archive(tmp_path / "a.db", [{"has_media": 1} for _ in range(300)])
    plain = skyexport.export(db, tmp_path / "plain", format="jsonl")
    assert flags and flags[-1] & apsw.SQLITE_OPEN_NOMUTEX
    with_media = skyexport.export(db, tmp_path / "media", format="jsonl", media=True)
    assert not flags[-1] & apsw.SQLITE_OPEN_NOMUTEX
    assert plain.post_count == with_media.post_count == 300
    assert plain.sha256 == with_media.sha256


def test_api_is_typed_for_mypy_strict(tmp_path: Path) -> None:
    """tests/typed/api_usage.py, a typed script using the API as the README does
    (`skyexport.verify(result)` included), passes `mypy --strict`; and a type error in
    such a script is caught (the check can fail)."""
    pytest.importorskip("mypy")
    script = Path(__file__).parent.parent / "typed" / "api_usage.py"
    wrong = tmp_path / "wrong.py"
    wrong.write_text("import skyexport\n\nskyexport.verify(42)\n")
    outcome = {}
    for path in (script, wrong):
        done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                               "--cache-dir", os.devnull, str(path)],
                              capture_output=True, text=True, timeout=300, check=False)
        outcome[path] = (done.returncode, done.stdout)
    assert outcome[script] == (0, outcome[script][1]), outcome[script][1]
    assert outcome[script][1].startswith("Success: no issues found in 1 source file")
    assert outcome[wrong][0] == 1 and 'Argument 1 to "verify" has incompatible type "int"' \
        in outcome[wrong][1], outcome[wrong][1]


def test_verify_takes_an_export_result(tmp_path: Path) -> None:
    arc = make_archive(tmp_path / "a.db", [{}, {}])
    result = skyexport.export(arc, tmp_path / "out", format="jsonl")
    report = skyexport.verify(result)
    assert report.ok and report.checked == 1 and report.directory == result.directory
    streamed = skyexport.export(arc, io.BytesIO())
    with pytest.raises(skyexport.OptionError, match="this ExportResult has none"):
        skyexport.verify(streamed)


# A fresh small launcher runs the export and reads its peak from wait4: the export's maxrss
# then starts from the launcher's few MB, not from the memory of whoever started it.
_LAUNCH = """\
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
print(usage.ru_maxrss / 1024)
"""


def test_demo_peak_memory_is_the_exports_own(tmp_path: Path) -> None:
    """The peak memory demo prints for each export is a standalone export's (the same
    archive, the same options), within a generous tolerance: building the synthetic
    archive first, in demo's own process, does not count."""
    if not hasattr(os, "wait4"):
        pytest.skip("no os.wait4 here")
    proc = subprocess.run([sys.executable, "-m", "skyexport", "demo", "--posts", "20000",
                           "--progress", "none", "--output", str(tmp_path / "d")],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shown = [float(m) for m in re.findall(
        r"peak memory \(RSS\), the export's own(?: process)?: (\d+) MB", proc.stdout)]
    assert len(shown) == 2, proc.stdout
    data = tmp_path / "d" / "data"
    standalone = []
    for extra in (["--media", "--media-root", str(data)], ["-f", "csv"]):
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCH, sys.executable, "-m", "skyexport", "export",
             str(data / "archive.db"), "-o", str(tmp_path / "alone"), "-q", *extra],
            capture_output=True, text=True, check=True, timeout=300)
        standalone.append(float(done.stdout))
    for demo_mb, alone_mb in zip(shown, standalone, strict=True):
        assert abs(demo_mb - alone_mb) <= max(6.0, 0.2 * alone_mb), (shown, standalone)
