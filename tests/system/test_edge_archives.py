"""Reading the archive at its edges: numbers stored in text
columns, archives SQLite cannot open as usual, and single huge values.

Everything is real: SQLite files on disk, `python -m skyexport` in a subprocess, real
directory permissions (a child that drops root), real peak RSS of the exporting process.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from skyexport.defaults import DATA_FILES

from conftest import FORMATS, ROW_SOURCES
from helpers.archives import _insert, default_row, schema_sql
from helpers.cli import PY, TIMEOUT, assert_failed
from helpers.cli import run as cli
from helpers.outcomes import assert_nothing_left, export_dirs, read_posts, unchanged
from helpers.outcomes import post as _post


def _cli_env(row_source: str) -> dict[str, str]:
    return dict(os.environ, SKYEXPORT_ROW_SOURCE=row_source)


# --- 13. numbers in text columns ------------------------------------------------------------

# Text columns a number can be stored in when the archive's schema gives them no TEXT
# affinity (an archive written by another tool, or an older schema).
TEXT_COLUMNS = ("uri", "cid", "did", "text", "reply_parent", "embed_type")
STAMP_COLUMNS = ("created_at", "indexed_at", "archived_at")


def _untyped_archive(path: Path, rows: list[dict[str, Any]]) -> Path:
    """An archive in bskyarchive's schema except that the posts table's TEXT columns are
    declared without a type (no affinity), so INTEGER and REAL values stay numbers."""
    sql = schema_sql()
    cut = sql.index("CREATE TABLE media")
    sql = sql[:cut].replace(" TEXT", "") + sql[cut:]
    con = sqlite3.connect(path)
    try:
        con.executescript(sql)
        with con:
            for i, row in enumerate(rows):
                values = default_row(i)
                values.update(row)
                _insert(con, "posts", values.keys(), values)
    finally:
        con.close()
    return path


NUMBER_ROWS: list[dict[str, Any]] = [
    {"uri": 42, "cid": 1.5, "did": 1e20, "text": 1.0 / 3, "reply_parent": -7,
     "embed_type": 0.1},
    {"uri": 9007199254740993, "cid": -0.0, "did": 1e-300, "text": 2.5e-5,
     "reply_parent": 123456789012345678.0, "embed_type": -9223372036854775808},
    {"uri": 0.30000000000000004, "text": 0, "reply_parent": 1e15, "embed_type": 100.0},
    {"uri": "at://did:plc:test/app.bsky.feed.post/text", "cid": 7, "text": "plain"},
]


def _cast_text(archive: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """`SELECT CAST(col AS TEXT)` of each column, in the export's order, by the SQLite the
    exporter itself runs on (APSW's)."""
    con = apsw.Connection(str(archive), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        cols = ", ".join(f"coalesce(CAST({c} AS TEXT), '')" for c in columns)
        return [list(r) for r in con.execute(
            f"SELECT {cols} FROM posts ORDER BY created_at DESC, uri ASC")]
    finally:
        con.close()


def _fields(fmt: str, data_file: Path, columns: tuple[str, ...]) -> list[list[str]]:
    posts = read_posts(data_file)
    if fmt == "csv":
        header = [h.lower() for h in posts[0]]  # type: ignore[union-attr]
        names = {"uri": "uri", "cid": "cid", "did": "did", "text": "text",
                 "reply_parent": "replyparent", "embed_type": "embedtype",
                 "created_at": "createdat", "indexed_at": "indexedat"}
        idx = [header.index(names[c]) for c in columns]
        return [[row[i] for i in idx] for row in posts[1:]]  # type: ignore[index]
    return [[p.get(c, "") for c in columns] for p in posts]  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", FORMATS)
def test_numbers_in_text_columns_export_as_sqlite_text(tmp_path: Path, fmt: str) -> None:
    archive = _untyped_archive(tmp_path / "numbers.db", NUMBER_ROWS)
    want = _cast_text(archive, TEXT_COLUMNS)
    assert {"42", "1.5", "1.0e+20", "-7", "0.1", "1.0e-300"} <= {v for r in want for v in r}
    outputs = {}
    for source in ROW_SOURCES:
        out = tmp_path / f"out-{source}"
        with unchanged(archive):
            proc = cli("export", archive, "-o", out, "--format", fmt, env=_cli_env(source))
        assert proc.returncode == 0, f"{source}: {proc.stderr}"
        [done] = export_dirs(out)
        data_file = done / DATA_FILES[fmt]
        assert _fields(fmt, data_file, TEXT_COLUMNS) == want, source
        outputs[source] = data_file.read_bytes()
    assert outputs["pipe"] == outputs["direct"] == outputs["cursor"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_numbers_in_timestamp_columns_kept_as_sqlite_text(tmp_path: Path, fmt: str) -> None:
    """A REAL or INTEGER timestamp is a bad value; kept, it is SQLite's text of it with
    every row source (the direct ones used to render REALs themselves, with 15 digits)."""
    rows = [_post(0, created_at=1.0 / 3, indexed_at=1e20, archived_at=2.5),
            _post(1, created_at=12345, indexed_at=0.1, archived_at=-3),
            _post(2)]
    archive = _untyped_archive(tmp_path / "stamps.db", rows)
    columns = ("created_at", "indexed_at")
    want = _cast_text(archive, columns)
    assert ["0.33333333333333332", "1.0e+20"] in want or \
        ["0.333333333333333", "1.0e+20"] in want        # SQLite >= 3.43 / older
    outputs = {}
    for source in ROW_SOURCES:
        out = tmp_path / f"out-{source}"
        proc = cli("export", archive, "-o", out, "--format", fmt, "--on-bad-value", "keep",
                   env=_cli_env(source))
        assert proc.returncode == 0, f"{source}: {proc.stderr}"
        [done] = export_dirs(out)
        data_file = done / DATA_FILES[fmt]
        got = _fields(fmt, data_file, columns)
        # The good row (first: text sorts after numbers) is rendered as RFC 3339.
        assert got[1:] == want[1:], source
        manifest = json.loads((done / "manifest.json").read_bytes())
        kept = sorted(w["message"] for w in manifest["warnings"] if w["column"] == "archived_at")
        assert kept == ["archived_at '-3' could not be read; exported as text",
                        "archived_at '2.5' could not be read; exported as text"], source
        outputs[source] = data_file.read_bytes()
    assert outputs["pipe"] == outputs["direct"] == outputs["cursor"]


# --- 14. archives SQLite cannot open as usual; synth's directory ---------------------------

def _drop_dac() -> None:
    """preexec_fn: this child and what it runs lose CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so file permissions bind it even when the tests run as root.
    (Dropping to `nobody` instead is no good here: the interpreter under /root could not
    be run.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli_as_user(*args: object) -> subprocess.CompletedProcess[str]:
    """`python -m skyexport ARGS` bound by file permissions (see _drop_dac)."""
    return subprocess.run([PY, "-m", "skyexport", *map(str, args)], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=TIMEOUT, check=False,
                          preexec_fn=_drop_dac if os.geteuid() == 0 else None)


@pytest.fixture
def permissions_bind(tmp_path: Path) -> None:
    """Skip (saying why) where a child cannot be made to obey file permissions."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        proc = subprocess.run(["cat", str(probe)], capture_output=True, check=False,
                              preexec_fn=_drop_dac if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE for a child here: {exc}")
    finally:
        probe.chmod(0o600)
    if proc.returncode == 0:
        pytest.skip("file permissions do not bind a child process here")


def _make_plain(path: Path, n: int = 3) -> Path:
    from helpers.archives import make_archive

    return make_archive(path, [_post(i) for i in range(n)])


def test_without_rowid_posts_table(tmp_path: Path) -> None:
    sql = schema_sql()
    cut = sql.index("CREATE TABLE media")
    posts = sql[:cut].rstrip().rstrip(";") + " WITHOUT ROWID;\n"
    media = sql[cut:sql.index("CREATE VIRTUAL TABLE")]
    archive = tmp_path / "norowid.db"
    con = sqlite3.connect(archive)
    con.executescript(posts + media)
    with con:
        for i in range(3):
            values = default_row(i)
            _insert(con, "posts", values.keys(), values)
    con.close()
    out = tmp_path / "out"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out)
    assert_failed(proc, 1, str(archive), "WITHOUT ROWID")
    assert_nothing_left(out)


def test_synth_into_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "no such dir" / "archive.db"
    proc = cli("synth", "--posts", 3, target)
    assert_failed(proc, 1, str(target), "does not exist")
    assert not target.parent.exists()
    afile = tmp_path / "a file"
    afile.write_text("x")
    proc = cli("synth", "--posts", 3, afile / "archive.db")
    assert_failed(proc, 1, str(afile / "archive.db"), "not a directory")
    assert afile.read_text() == "x"


def test_synth_into_an_unwritable_directory(tmp_path: Path, permissions_bind: None) -> None:
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        proc = cli_as_user("synth", "--posts", 3, "--media", d / "archive.db")
        assert_failed(proc, 1, str(d / "archive.db"), "not writable")
        assert os.listdir(d) == []
    finally:
        d.chmod(0o755)


@pytest.mark.parametrize("mode", [0o000, 0o600, 0o311])
def test_archive_in_a_directory_the_user_cannot_read(tmp_path: Path, mode: int,
                                                    permissions_bind: None) -> None:
    """0o000 and 0o600: the directory cannot be searched; 0o311: it can, but the archive
    file (mode 000) cannot be read."""
    d = tmp_path / "private"
    d.mkdir()
    archive = _make_plain(d / "archive.db")
    out = tmp_path / "out"
    if mode == 0o311:
        archive.chmod(0)
    d.chmod(mode)
    try:
        proc = cli_as_user("export", archive, "-o", out)
    finally:
        d.chmod(0o755)
        archive.chmod(0o644)
    line = assert_failed(proc, 1, str(archive), "permission denied")
    if mode != 0o311:
        assert str(d) in line
    assert_nothing_left(out)


def _wal_archive(d: Path, *, keep_wal: bool) -> Path:
    """A WAL-mode archive in `d` with no -shm; with `keep_wal`, a -wal file holding a
    committed post the main file lacks (what a copy taken while bskyarchive ran has)."""
    d.mkdir()
    archive = _make_plain(d / "archive.db")
    con = sqlite3.connect(archive)
    assert con.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    con.close()                                   # the last close removes -wal and -shm
    if keep_wal:
        con = sqlite3.connect(archive)
        con.execute("PRAGMA wal_autocheckpoint = 0")
        values = default_row(99)
        with con:
            _insert(con, "posts", values.keys(), values)
        copy = d / "copy"
        copy.mkdir()
        for suffix in ("", "-wal"):
            (copy / f"archive.db{suffix}").write_bytes(
                Path(f"{archive}{suffix}").read_bytes())
        con.close()
        for suffix in ("", "-wal"):
            os.replace(copy / f"archive.db{suffix}", f"{archive}{suffix}")
        copy.rmdir()
    companions = sorted(os.listdir(d))
    assert companions == (["archive.db", "archive.db-wal"] if keep_wal else ["archive.db"])
    return archive


def test_wal_archive_without_shm_in_a_read_only_directory(tmp_path: Path,
                                                          permissions_bind: None) -> None:
    """No -wal: nothing to recover, nobody can write meanwhile - exported (immutable=1),
    the same posts as from a writable directory."""
    archive = _wal_archive(tmp_path / "ro", keep_wal=False)
    out = tmp_path / "out"
    archive.parent.chmod(0o555)
    try:
        with unchanged(archive):
            proc = cli_as_user("export", archive, "-o", out, "--format", "jsonl")
    finally:
        archive.parent.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    got = read_posts(done / "posts.jsonl")
    assert [p["uri"] for p in got] == [_post(i)["uri"] for i in range(3)]  # type: ignore[index]


def _export_as_user(archive: Path, out: Path, *, read_only_dir: bool):  # type: ignore[no-untyped-def]
    """`export` as a user file permissions bind, the archive's directory made read-only
    (0555) for it if asked; the archive must come out unchanged."""
    if read_only_dir:
        archive.parent.chmod(0o555)
    try:
        with unchanged(archive):
            return cli_as_user("export", archive, "-o", out)
    finally:
        archive.parent.chmod(0o755)


def test_wal_archive_with_wal_file_in_a_read_only_directory(tmp_path: Path,
                                                            permissions_bind: None) -> None:
    archive = _wal_archive(tmp_path / "ro", keep_wal=True)
    out = tmp_path / "out"
    proc = _export_as_user(archive, out, read_only_dir=True)
    assert_failed(proc, 1, str(archive), "WAL mode", "read-only", "archive.db-wal",
                  "writable")
    assert_nothing_left(out)


def _hot_journal_archive(d: Path) -> Path:
    """An archive with the hot rollback journal a writer killed mid-transaction leaves:
    copies of both files taken while the transaction has spilled pages to the file."""
    d.mkdir()
    live = _make_plain(d / "live.db")
    con = sqlite3.connect(live)
    con.execute("PRAGMA cache_size = 1")        # spill dirty pages before the commit
    con.execute("BEGIN")
    for i in range(300):
        values = default_row(1000 + i)
        values["text"] = "x" * 1000
        _insert(con, "posts", values.keys(), values)
    archive = d / "archive.db"
    archive.write_bytes(live.read_bytes())
    Path(f"{archive}-journal").write_bytes(Path(f"{live}-journal").read_bytes())
    con.rollback()
    con.close()
    live.unlink()
    return archive


@pytest.mark.parametrize("read_only_dir", [False, True])
def test_hot_rollback_journal(tmp_path: Path, read_only_dir: bool,
                              permissions_bind: None) -> None:
    archive = _hot_journal_archive(tmp_path / "arc")
    out = tmp_path / "out"
    proc = _export_as_user(archive, out, read_only_dir=read_only_dir)
    assert_failed(proc, 1, str(archive), "hot rollback journal", "crashed",
                  "archive.db-journal", "then export again")
    assert_nothing_left(out)


# --- 16. a single 200 MB value ----------------------------------------------------------------

HUGE = 200_000_000
PEAK_LIMIT_MB = 300


@pytest.fixture(scope="module")
def huge_archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One post with a 200 MB text, one with an invalid 200 MB embed_data (an unterminated
    string; has_media set, so CSV's MediaFiles looks at it too), each among a few small
    posts."""
    from helpers.archives import make_archive

    d = tmp_path_factory.mktemp("huge")
    small = [_post(i) for i in range(1, 6)]
    archives = {
        "text": make_archive(d / "text.db", [_post(0, text="a" * HUGE), *small]),
        "embed": make_archive(d / "embed.db", [_post(0, has_media=1,
                                                     embed_data='{"a": "' + "b" * HUGE),
                                               *small]),
        # Valid: CSV reads its MediaFiles out of it (in place, not from a copy).
        "validembed": make_archive(d / "validembed.db", [_post(0, has_media=1, embed_data=(
            '{"images":[{"fullsize":"https://c/x/bafkhuge@jpeg"}],"alt":"'
            + "b" * HUGE + '"}')), *small]),
    }
    yield archives
    shutil.rmtree(d, ignore_errors=True)


HUGE_CASES = [("text", fmt, "error") for fmt in FORMATS] + \
    [("embed", fmt, mode) for fmt in FORMATS for mode in ("error", "keep")] + \
    [("validembed", "csv", "error"), ("validembed", "json", "error")]


def _export_huge(archive: Path, out: Path, fmt: str, mode: str, kind: str) -> None:
    import skyexport

    fails = kind == "embed" and mode == "error" and fmt != "csv"  # CSV has no embed_data
    try:
        if fails:
            with pytest.raises(skyexport.BadValueError) as info:
                skyexport.export(archive, out, format=fmt, on_bad_value=mode)  # type: ignore[arg-type]
            shown = info.value.value
            assert shown == '{"a": "' + "b" * 70 + "...", shown
        else:
            result = skyexport.export(archive, out, format=fmt,  # type: ignore[arg-type]
                                      on_bad_value=mode)  # type: ignore[arg-type]
            assert result.post_count == 6
            # CSV has no embed_data column: that export is small.
            assert result.bytes_written > HUGE or (kind != "text" and fmt == "csv")
            if (kind, fmt) == ("validembed", "csv"):
                assert b",true,bafkhuge," in result.data_file.read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.limit_memory(f"{PEAK_LIMIT_MB} MB")
@pytest.mark.parametrize(("kind", "fmt", "mode"), HUGE_CASES)
def test_huge_value_memory_tracked(huge_archives: dict[str, Path], tmp_path: Path,
                                   kind: str, fmt: str, mode: str) -> None:
    """Under `pytest --memray`: every allocation memray sees (SQLite's copy of the value
    included) stays under the limit, with the default row source."""
    _export_huge(huge_archives[kind], tmp_path / "out", fmt, mode, kind)


# A small process that runs the command as its child and reports the child's peak RSS
# (ru_maxrss of RUSAGE_CHILDREN).  Not forked from pytest itself, which holds the test
# archives' values: a child's high-water mark starts at its parent's size at fork.
_CHILD_RSS = r"""
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "skyexport", *sys.argv[1:]],
                      capture_output=True, text=True)
sys.stderr.write(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(proc.returncode)
"""


@pytest.mark.parametrize(("kind", "fmt", "mode", "source"), [
    ("text", "json", "error", "pipe"),
    ("text", "csv", "error", "direct"),
    ("embed", "jsonl", "error", "pipe"),
    ("embed", "csv", "keep", "pipe"),
    ("embed", "json", "keep", "direct"),
    ("validembed", "csv", "error", "pipe"),
])
def test_huge_value_peak_rss(huge_archives: dict[str, Path], tmp_path: Path, kind: str,
                             fmt: str, mode: str, source: str) -> None:
    """The real peak RSS of `python -m skyexport export` (everything: SQLite, Python, the
    writer thread's buffers) is at most PEAK_LIMIT_MB for a single 200 MB value."""
    out = tmp_path / "out"
    proc = subprocess.run([PY, "-c", _CHILD_RSS, "export", huge_archives[kind], "-o", out,
                           "--format", fmt, "--on-bad-value", mode],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=_cli_env(source))
    shutil.rmtree(out, ignore_errors=True)
    peak_mb = int(proc.stdout.split()[-1])
    if kind == "embed" and mode == "error" and fmt != "csv":
        assert proc.returncode == 1
        assert "embed_data holds '{\"a\": \"bbbb" in proc.stderr and "Traceback" not in \
            proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
    assert peak_mb <= PEAK_LIMIT_MB, f"peak RSS {peak_mb} MB > {PEAK_LIMIT_MB} MB"
