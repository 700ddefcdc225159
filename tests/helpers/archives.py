"""Build real bskyarchive SQLite archives for tests.

Archives are written with the standard library ``sqlite3`` module, in the schema bskyarchive
creates (FORMAT.md "The archive"): the ``posts`` table, the ``media`` table, the external-content
FTS5 table ``posts_fts`` with its insert trigger, and the two indexes.

Row values (``make_archive(rows=...)``) are inserted through parameters, so SQLite's column
affinity applies exactly as it does for bskyarchive: a ``'42'`` stored in a ``TIMESTAMP``,
``BOOLEAN`` or ``JSON`` column (all NUMERIC) becomes the integer 42.

- ``str``, ``int``, ``float``, ``None``: bound as they are.
- ``bytes``: "store these exact bytes as TEXT" -- bound as a blob and inserted through
  ``CAST(? AS TEXT)``, so invalid UTF-8 and NUL bytes survive as TEXT (affinity still applies).
- ``Blob(b'...')``: stored as a real BLOB (no affinity conversion).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyexport.schema import MEDIA_COLUMNS, POST_COLUMNS, POST_COLUMNS_V1, schema_statements

__all__ = [
    "GOLDEN_DIR",
    "POST_COLUMNS",
    "POST_COLUMNS_V1",
    "SCHEMA_V1",
    "SCHEMA_V2",
    "Blob",
    "default_row",
    "load_golden",
    "make_archive",
    "schema_sql",
]

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"


@dataclass(frozen=True)
class Blob:
    """A value to store as a real SQLite BLOB (not TEXT)."""

    data: bytes


# The schema is skyexport's own single definition (src/skyexport/schema.py): the tests,
# synth and `import` build archives from the same statements.
SCHEMA_V2 = ";\n".join(schema_statements(2)) + ";\n"
SCHEMA_V1 = ";\n".join(schema_statements(1)) + ";\n"

DEFAULT_TIME = "2024-01-01 00:00:00 +0000 UTC"


def schema_sql(schema_version: int = 2, *, with_media_table: bool = True,
               not_null: bool = True) -> str:
    """The CREATE statements for an archive.

    ``not_null=False`` drops the NOT NULL constraints of ``posts`` (bskyarchive never does
    this) so tests can store NULL in ``cid``, ``did``, ``created_at`` and ``indexed_at``.
    """
    return ";\n".join(schema_statements(schema_version, media_table=with_media_table,
                                         not_null=not_null)) + ";\n"


def default_row(i: int) -> dict[str, Any]:
    """The values a row takes for the columns it does not give (``i`` is its index)."""
    return {
        "uri": f"at://did:plc:test/app.bsky.feed.post/{i:04d}",
        "cid": f"bafyreitest{i:04d}",
        "did": "did:plc:test",
        "text": f"post {i}",
        "created_at": DEFAULT_TIME,
        "indexed_at": DEFAULT_TIME,
        "has_media": 0,
        "like_count": 0,
        "repost_count": 0,
        "reply_count": 0,
        "quote_count": 0,
        "is_reply": 0,
        "reply_parent": "",
        "embed_type": "",
        "embed_data": None,
        "labels": None,
        "archived_at": "2024-01-02 00:00:00",
    }


def _default_media(i: int) -> dict[str, Any]:
    return {
        "hash": f"bafkreimedia{i:04d}",
        "post_uri": f"at://did:plc:test/app.bsky.feed.post/{i:04d}",
        "mime_type": "image/jpeg",
        "file_path": f"media/bafkreimedia{i:04d}.jpg",
        "size_bytes": 0,
        "width": None,
        "height": None,
        "alt_text": None,
        "created_at": "2024-01-02 00:00:00",
    }


def _bind(value: Any) -> tuple[str, Any]:
    """SQL placeholder and parameter for one value (see the module docstring)."""
    if isinstance(value, Blob):
        return "?", bytes(value.data)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "CAST(? AS TEXT)", bytes(value)
    if value is None or isinstance(value, (str, int, float)):
        return "?", value
    raise TypeError(f"unsupported value type {type(value).__name__}: {value!r}")


def _insert(con: sqlite3.Connection, table: str, columns: Iterable[str],
            values: Mapping[str, Any]) -> None:
    cols = list(columns)
    marks = []
    params = []
    for c in cols:
        mark, param = _bind(values[c])
        marks.append(mark)
        params.append(param)
    con.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(marks)})", params
    )


def make_archive(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    schema_version: int = 2,
    media_rows: Iterable[Mapping[str, Any]] = (),
    with_media_table: bool = True,
    not_null: bool = True,
) -> Path:
    """Write a new archive at ``path`` holding ``rows`` (and ``media_rows``); return its path.

    Each row is a mapping column -> value; missing columns take ``default_row(i)``. For a v1
    archive a ``quote_count`` in a row is ignored (the column does not exist). Unknown column
    names raise ``KeyError``. ``path`` must not exist yet.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    columns = POST_COLUMNS if schema_version == 2 else POST_COLUMNS_V1
    con = sqlite3.connect(path)
    try:
        # Test archives need no durability: skip the fsyncs (the file format is the same).
        con.execute("PRAGMA synchronous = OFF")
        con.executescript(schema_sql(schema_version, with_media_table=with_media_table,
                                     not_null=not_null))
        with con:
            for i, row in enumerate(rows):
                unknown = set(row) - set(POST_COLUMNS)
                if unknown:
                    raise KeyError(f"unknown posts columns: {sorted(unknown)}")
                values = default_row(i)
                values.update(row)
                _insert(con, "posts", columns, values)
            media = list(media_rows)
            if media and not with_media_table:
                raise ValueError("media_rows given but with_media_table=False")
            for i, mrow in enumerate(media):
                unknown = set(mrow) - set(MEDIA_COLUMNS)
                if unknown:
                    raise KeyError(f"unknown media columns: {sorted(unknown)}")
                values = _default_media(i)
                values.update(mrow)
                _insert(con, "media", MEDIA_COLUMNS, values)
    finally:
        con.close()
    return path


def load_golden(path: str | os.PathLike[str]) -> Path:
    """Build the golden archive (``tests/golden/archive.sql``) at ``path``; return its path."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    script = (GOLDEN_DIR / "archive.sql").read_text(encoding="utf-8")
    con = sqlite3.connect(path)
    try:
        con.executescript(script)
    finally:
        con.close()
    con = sqlite3.connect(path)
    try:
        # writable_schema inserts only take effect for new connections: check both tables.
        (n,) = con.execute("SELECT count(*) FROM posts").fetchone()
        if n != 54:
            raise RuntimeError(f"golden archive has {n} posts, expected 54")
        con.execute("SELECT count(*) FROM posts_fts WHERE posts_fts MATCH 'tie'").fetchone()
    finally:
        con.close()
    return path
