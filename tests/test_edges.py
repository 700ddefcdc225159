"""Reading the archive at its edges (issue 8, items 13, 14 and 16): numbers stored in text
columns, archives SQLite cannot open as usual, and single huge values.

Everything is real: SQLite files on disk, `python -m skyexport` in a subprocess, real
directory permissions (a child that drops root), real peak RSS of the exporting process.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import apsw
import pytest
from test_faults import (
    DATA_FILES,
    _post,
    cli,
    export_dirs,
    read_posts,
    unchanged,
)

from archives import _insert, default_row, schema_sql

ROW_SOURCES = ("pipe", "direct", "cursor")
FORMATS = ("json", "csv", "jsonl")


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
