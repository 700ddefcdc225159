#!/usr/bin/env python3
"""Peer exporters for perf/bench.py --peers: the tools a user would pick instead, dumping the
same 17 columns in the same order (created_at DESC, uri ASC) to a file.

    python perf/peers.py duckdb ARCHIVE json|csv|jsonl OUT
    python perf/peers.py polars ARCHIVE json|csv|jsonl OUT

duckdb: DuckDB with its sqlite_scanner extension, loaded from the PyPI package
`duckdb-extension-sqlite-scanner` (no download), `COPY (SELECT ...) TO OUT`.
polars: `polars.read_database_uri` through ADBC (`adbc-driver-sqlite`), then `write_*`.
Both from the optional `perf` extra.  Neither promises byte-exactness with bskyarchive;
the rows and their order are the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import COLUMNS, ORDER  # noqa: E402


def duckdb_export(archive: str, fmt: str, out: str) -> None:
    import duckdb
    import duckdb_extension_sqlite_scanner as ext

    version = duckdb.__version__
    path = Path(ext.__file__).parent / "extensions" / f"v{version}" / \
        "sqlite_scanner.duckdb_extension"
    con = duckdb.connect()
    con.execute(f"LOAD '{path}'")
    # Go-style timestamps are not DuckDB's: read every column as text, as stored.
    con.execute("SET sqlite_all_varchar = true")
    select = (f"SELECT {COLUMNS} FROM sqlite_scan('{archive}', 'posts'){ORDER}")
    options = {"json": "FORMAT JSON, ARRAY true", "jsonl": "FORMAT JSON",
               "csv": "FORMAT CSV, HEADER true"}[fmt]
    con.execute(f"COPY ({select}) TO '{out}' ({options})")


def polars_export(archive: str, fmt: str, out: str) -> None:
    import polars as pl

    frame = pl.read_database_uri(f"SELECT {COLUMNS} FROM posts{ORDER}",
                                 uri=f"sqlite:///{archive}", engine="adbc")
    if fmt == "json":
        frame.write_json(out)
    elif fmt == "jsonl":
        frame.write_ndjson(out)
    else:
        frame.write_csv(out)


def main() -> int:
    tool, archive, fmt, out = sys.argv[1:5]
    {"duckdb": duckdb_export, "polars": polars_export}[tool](archive, fmt, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
