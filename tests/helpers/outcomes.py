"""What an export left behind, read the way a user would: export directories, temporary
directories, data files parsed with the standard library, an archive unchanged."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from skyexport.exporter.staged import TMP_PREFIX


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def unchanged(*paths: Path) -> Iterator[None]:
    """The exporter never touches the archive: same bytes, and no journal/WAL left."""
    def companions(p: Path) -> set[str]:   # -journal, -wal, -shm
        return {n for n in os.listdir(p.parent) if n.startswith(p.name) and n != p.name}

    before = {p: (sha256(p), companions(p)) for p in paths}
    yield
    for p in paths:
        assert sha256(p) == before[p][0], f"{p} was modified"
        assert companions(p) == before[p][1], f"files appeared beside {p}"


def visible(out: Path) -> list[str]:
    """What a user sees in OUTPUT (our hidden temporary directories excepted)."""
    if not out.exists():
        return []
    return sorted(n for n in os.listdir(out) if not n.startswith(TMP_PREFIX))


def temps(out: Path) -> list[str]:
    if not out.exists():
        return []
    return sorted(n for n in os.listdir(out) if n.startswith(TMP_PREFIX))


def assert_nothing_left(out: Path, existed: Sequence[str] | None = None) -> None:
    """No export directory and no temporary directory in OUTPUT.  `existed`: what OUTPUT
    held before (None: OUTPUT did not exist, and must not exist now)."""
    if existed is None:
        assert not out.exists(), f"{out} was created: {os.listdir(out)}"
    else:
        assert sorted(os.listdir(out)) == sorted(existed)


def export_dirs(out: Path) -> list[Path]:
    return [out / n for n in visible(out) if (out / n / "manifest.json").is_file()]


def read_posts(path: Path) -> list[dict[str, Any]] | list[list[str]]:
    """Parse a data file with the standard library: JSON objects, or CSV rows (header
    included, BOM stripped, bytes that are not UTF-8 kept as surrogates)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        posts = json.loads(data)
        assert isinstance(posts, list)
        return posts
    if path.suffix == ".jsonl":
        assert data == b"" or data.endswith(b"\n")
        return [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert data.startswith(b"\xef\xbb\xbf")
    text = data[3:].decode("utf-8", "surrogateescape")
    csv.field_size_limit(1 << 30)
    return list(csv.reader(io.StringIO(text, newline="")))


def post(i: int, **values: Any) -> dict[str, Any]:
    """A row for make_archive: post number `i`, plus `values`."""
    row = {"uri": f"at://did:plc:test/app.bsky.feed.post/{i:04d}"}
    row.update(values)
    return row
