"""`skyexport info` on archives with many DIDs: the output against an SQL reference (JSON byte
for byte, text with its cut list), a constant number of statements and a number of SQLite VM
steps that grows linearly with the archive (counted, not timed), and the real peak memory of
the command with a 1 MiB DID."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import skyexport.sources.archive_info
from skyexport.cli.commands import main
from skyexport.sources.archive import Archive
from skyexport.testing.synth import build_archive

from helpers.cli import peak_rss_script


def many_dids(path: Path, posts: int, dids: int, *, seed: int = 3) -> Path:
    """A synthetic archive whose first DID keeps three quarters of the posts (as in a real
    archive, one DID owns most) and `dids - 1` others share the rest, round robin."""
    build_archive(path, posts, seed=seed)
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE posts SET did = 'did:plc:other' || (rowid % ?) WHERE rowid % 4 = 0",
                    (dids - 1,))
    con.close()
    return path


def reference(path: Path) -> dict[str, Any]:
    """What `info --json` says, computed the plain way with the sqlite3 module."""
    con = sqlite3.connect(path)
    try:
        (posts, lo, hi), = con.execute("SELECT count(*), min(created_at), max(created_at) "
                                       "FROM posts").fetchall()
        dids = [{"did": d, "posts": n, "first_created_at": a, "last_created_at": b}
                for d, n, a, b in con.execute(
                    "SELECT did, count(*), min(created_at), max(created_at) FROM posts "
                    "GROUP BY did ORDER BY count(*) DESC, did")]
        (media,), = con.execute("SELECT count(*) FROM media").fetchall()
        (mode,), = con.execute("PRAGMA journal_mode").fetchall()
    finally:
        con.close()
    return {"archive": str(path), "schema_version": 2, "posts": posts,
            "first_created_at": lo, "last_created_at": hi, "dids": dids, "media_rows": media,
            "size_bytes": path.stat().st_size, "wal_bytes": 0, "journal_mode": mode}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_dids(tmp_path_factory.mktemp("info") / "archive.db", 6000, 700)


def run_info(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    capsys.readouterr()
    assert main(["info", *map(str, args)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_json_is_exactly_the_reference(archive: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """Every DID, streamed, gives the very bytes json.dumps gives for the whole object."""
    out = run_info(capsys, archive, "--json")
    expected = reference(archive)
    assert len(expected["dids"]) == 700
    assert out == json.dumps(expected, ensure_ascii=False) + "\n"


def test_text_lists_the_first_dids_and_counts_the_rest(archive: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out = run_info(capsys, archive).splitlines()
    dids = reference(archive)["dids"]
    n = skyexport.sources.archive_info.TEXT_DIDS
    start = out.index("DIDs: 700") + 1
    width = max(len(d["did"]) for d in dids[:n])
    assert out[start:] == [
        f"  {d['did']:<{width}}  {d['posts']:>9} posts  {d['first_created_at']} .. "
        f"{d['last_created_at']}" for d in dids[:n]
    ] + [f"  ... and {700 - n} more DIDs (--json lists them all)"]


class _Counted(Archive):
    """An Archive whose connection counts the statements it runs and its VM steps."""

    statements = 0
    steps = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

        def statement(cursor: Any, sql: str, bindings: Any) -> bool:
            _Counted.statements += 1
            return True

        def step() -> bool:
            _Counted.steps += 1
            return False

        self.conn.exec_trace = statement
        self.conn.set_progress_handler(step, 100)


def _count(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           *args: str) -> tuple[int, int]:
    monkeypatch.setattr(skyexport.sources.archive_info, "Archive", _Counted)
    _Counted.statements = _Counted.steps = 0
    run_info(capsys, path, *args)
    return _Counted.statements, _Counted.steps


@pytest.mark.parametrize("mode", [(), ("--json",)])
def test_statements_are_fixed_and_steps_grow_linearly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        mode: tuple[str, ...]) -> None:
    """Four times the posts and the DIDs: the same statements, and about four times the
    SQLite VM steps (a statement per DID, each scanning the table, made it sixteen)."""
    small = many_dids(tmp_path / "small.db", 4000, 500)
    large = many_dids(tmp_path / "large.db", 16000, 2000)
    stmts_small, steps_small = _count(small, capsys, monkeypatch, *mode)
    stmts_large, steps_large = _count(large, capsys, monkeypatch, *mode)
    assert stmts_small == stmts_large <= 12, (stmts_small, stmts_large)
    assert steps_large < 6 * steps_small, (steps_small, steps_large)


_PEAK = peak_rss_script(
    "import resource\n"
    "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway fails, not the host\n")

LONG = 1 << 20


@pytest.fixture(scope="module")
def long_did_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 3,000 DIDs of one or two posts beside the main one; one of 5 posts, the second
    by posts, is 1 MiB long."""
    path = many_dids(tmp_path_factory.mktemp("info-long") / "archive.db", 12000, 3000)
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE posts SET did = 'did:plc:' || replace(hex(zeroblob(?)), '0', 'a') "
                    "WHERE rowid IN (4, 8, 12, 16, 20)", ((LONG - 8) // 2,))
    con.close()
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("as_json", [False, True])
def test_a_1_mib_did_among_3000(long_did_archive: Path, tmp_path: Path,
                                as_json: bool) -> None:
    """The real peak RSS of `info` stays under 64 MB; text cuts the long DID to a bounded
    line, JSON gives it whole."""
    peak_file = tmp_path / "peak"
    args = ["info", str(long_did_archive)] + (["--json"] if as_json else [])
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(peak_file), *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    peak = int(peak_file.read_text())
    assert peak <= 64 << 20, f"info peaked at {peak / 2**20:.0f} MiB"
    long_did = "did:plc:" + "a" * (LONG - 8)
    con = sqlite3.connect(long_did_archive)
    (total,), = con.execute("SELECT count(DISTINCT did) FROM posts").fetchall()
    con.close()
    assert 2990 <= total <= 3000
    if as_json:
        dids = json.loads(proc.stdout)["dids"]
        assert len(dids) == total and dids[1]["did"] == long_did and dids[1]["posts"] == 5
    else:
        lines = proc.stdout.splitlines()
        at = lines.index(f"DIDs: {total}")
        assert max(len(line) for line in lines) < 300
        assert lines[at + 2].startswith(f"  did:plc:{'a' * 48}... ({LONG} characters)  ")


def _shown(value: object) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (
        None if value is None else str(value))


@pytest.mark.parametrize("main_did", [None, b"did:plc:blob", "did:plc:text"])
def test_odd_dids_and_dates_against_the_reference(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  main_did: object) -> None:
    """NULL DIDs, a DID stored as a BLOB beside the same bytes as TEXT, a number, NULL and
    odd dates: each stored DID is one entry whose count and dates are SQL's own, whichever
    DID owns most posts (its dates come from the created_at index, the others' from the
    grouped query)."""
    from helpers.archives import make_archive

    others: list[object] = [None, b"did:plc:blob", "did:plc:blob", "did:plc:text", 5, b"\xff"]
    dids = [main_did] * 12 + [d for d in others for _ in range(2)]
    stamps = ["2024-05-01 10:00:00 +0000 UTC", "2023-01-01T00:00:00Z", None, "x", "",
              "2025-12-31 23:59:59 +0000 UTC", "2024-05-01 10:00:00 +0000 UTC m=+1.5"]
    rows = [{"did": d, "created_at": stamps[i * 5 % len(stamps)]} for i, d in enumerate(dids)]
    path = make_archive(tmp_path / "odd.db", rows, not_null=False)
    con = sqlite3.connect(path)
    with con:   # make_archive stores text: the bytes DIDs become BLOBs here
        con.executemany("UPDATE posts SET did = CAST(did AS BLOB) WHERE rowid = ?",
                        [(i + 1,) for i, d in enumerate(dids) if isinstance(d, bytes)])
    (blobs,), = con.execute("SELECT count(*) FROM posts WHERE typeof(did) = 'blob'").fetchall()
    assert blobs == sum(isinstance(d, bytes) for d in dids)
    con.text_factory = bytes      # stored text may not be UTF-8: shown as info shows it
    expected = [{"did": _shown(d), "posts": n, "first_created_at": _shown(a),
                 "last_created_at": _shown(b)} for d, n, a, b in con.execute(
        "SELECT did, count(*), min(created_at), max(created_at) FROM posts GROUP BY did "
        "ORDER BY count(*) DESC, did")]
    con.close()
    assert len(expected) == 6   # the main DID is also one of the others
    assert json.loads(run_info(capsys, path, "--json"))["dids"] == expected
