"""The exporter reproduces bskyarchive's own output (tests/golden/) byte for byte, through
the API and through the command line, with both row sources and every batch size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BATCH_SIZES, DATA_FILES, export_bytes
from helpers.archives import GOLDEN_DIR

# (golden file, format, options) - the filters are those of tests/golden/README.md.
CASES = [
    ("posts.json", "json", {}),
    ("posts.csv", "csv", {}),
    ("posts.jsonl", "jsonl", {}),
    ("posts.did-range.json", "json", {"did": "did:web:golden.example",
                                      "since": "2024-04-05T00:00:00Z",
                                      "until": "2024-05-01T10:00:12Z"}),
    ("posts.did-range.csv", "csv", {"did": "did:plc:golden00000000000000000",
                                    "since": "2024-04-01T00:00:00Z",
                                    "until": "2024-04-30T23:59:59Z"}),
]


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize(("golden", "fmt", "options"), CASES, ids=[c[0] for c in CASES])
def test_api_matches_golden(golden_db: Path, tmp_path: Path, row_source: str, golden: str,
                            fmt: str, options: dict, batch_size: int) -> None:
    got = export_bytes(golden_db, tmp_path, fmt, batch_size=batch_size, **options)
    assert got == (GOLDEN_DIR / golden).read_bytes()


@pytest.mark.parametrize(("golden", "fmt", "options"), CASES, ids=[c[0] for c in CASES])
def test_cli_matches_golden(golden_db: Path, tmp_path: Path, golden: str, fmt: str,
                            options: dict) -> None:
    args = [sys.executable, "-m", "skyexport", "export", str(golden_db), "--output",
            str(tmp_path / "out"), "--format", fmt, "--progress", "none"]
    for key, value in options.items():
        args += [f"--{key}", value]
    proc = subprocess.run(args, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    export_dir = Path(proc.stdout.decode().splitlines()[-1])
    assert export_dir.parent == tmp_path / "out"
    assert (export_dir / DATA_FILES[fmt]).read_bytes() == (GOLDEN_DIR / golden).read_bytes()
    assert sorted(p.name for p in export_dir.iterdir()) == sorted([DATA_FILES[fmt],
                                                                   "manifest.json"])
