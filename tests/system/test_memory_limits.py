"""Memory stays flat with the whole job on: media copying and a progress consumer, on
synthetic archives of 20k and 200k posts, under the same limit.

The `limit_memory` marks act only under `pytest --memray` (pytest-memray counts every
allocation made while the test runs, native ones included: SQLite's page cache, the
writer's buffer, the writer thread's queue).  Run them with

    python -m pytest tests/system/test_memory_limits.py --memray -q

Without --memray the tests still run the exports and check their results.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import skyexport
from skyexport.testing.synth import build_archive

from conftest import ram_dir

SIZES = (20_000, 200_000)
# One limit for every size: memory must not grow with the archive.  The issue asks for
# 64 MB; measured peaks are about 16 MB, so half that catches a regression early.
LIMIT = "32 MB"
FLAT_MB = 4  # peak growth allowed from 20k to 200k posts (perf/bench.py checks 10k to 1M)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Path]]:
    """Synthetic archives with media files, built once per session (a few seconds), on a
    RAM file system where there is one (conftest.ram_dir: 52k media files)."""
    with ram_dir(tmp_path_factory.mktemp("memory")) as root:
        out = {}
        for n in SIZES:
            arc = root / f"posts-{n}" / "archive.db"
            arc.parent.mkdir()
            build_archive(arc, n, seed=11, media=True)
            out[n] = arc
        yield out


class Consumer:
    """Keeps the last event and a count, as a progress bar would (not every event)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: skyexport.ExportProgress | None = None

    def __call__(self, ev: skyexport.ExportProgress) -> None:
        self.count += 1
        self.last = ev


def run_export(archive: Path, out: Path, fmt: str) -> tuple[skyexport.ExportResult, Consumer]:
    consumer = Consumer()
    result = skyexport.export(archive, out, format=fmt, media=True, on_progress=consumer)
    return result, consumer


def check(result: skyexport.ExportResult, consumer: Consumer, n: int) -> None:
    assert result.post_count == n
    assert consumer.last is not None and consumer.last.status == "completed"
    assert consumer.last.posts_processed == consumer.last.posts_total == n
    assert consumer.last.media_copied == consumer.last.media_total > 0
    assert result.media_count > 0
    assert consumer.count >= n // 1000  # an event per batch


@pytest.mark.limit_memory(LIMIT)
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_200k_with_media_and_progress(synthetic: dict[int, Path], ram_path: Path,
                                      fmt: str) -> None:
    result, consumer = run_export(synthetic[200_000], ram_path / "out", fmt)
    check(result, consumer, 200_000)


@pytest.mark.limit_memory(LIMIT)
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_20k_with_media_and_progress(synthetic: dict[int, Path], ram_path: Path,
                                     fmt: str) -> None:
    """The same limit as for ten times the posts: a flat profile, not one that merely
    fits."""
    result, consumer = run_export(synthetic[20_000], ram_path / "out", fmt)
    check(result, consumer, 20_000)


PEAK_SCRIPT = """
import sys, tempfile, memray
import skyexport
archive, fmt, tmp, media = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "media"
with tempfile.TemporaryDirectory(dir=tmp) as out, tempfile.TemporaryDirectory(dir=tmp) as cap:
    path = cap + "/capture.bin"
    with memray.Tracker(path, native_traces=False):
        skyexport.export(archive, out, format=fmt, media=media, on_progress=lambda ev: None)
    print(memray.FileReader(path).metadata.peak_memory)
"""


@pytest.mark.parametrize(("fmt", "media"), [("json", "media"), ("csv", "no-media")])
def test_peak_does_not_grow_with_the_archive(synthetic: dict[int, Path], ram_path: Path,
                                            fmt: str, media: str) -> None:
    """The peak, measured by memray in a process of its own (pytest-memray may be tracking
    this one), for 20k and for 200k posts: within FLAT_MB of each other.  The media copier
    is the same whatever the format, so it is measured once (with json; 47k files cost
    most of this test's time); csv's own writer path without it.  Both formats with media
    are held to LIMIT at both sizes by the tests above."""
    import subprocess
    import sys

    peaks = {}
    for n in SIZES:
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(synthetic[n]), fmt,
                               str(ram_path), media],
                              capture_output=True, text=True, check=True)
        peaks[n] = int(proc.stdout.split()[-1])
    growth = peaks[200_000] - peaks[20_000]
    assert growth <= FLAT_MB << 20, f"peak grew by {growth / 2**20:.1f} MiB: {peaks}"
    assert peaks[200_000] <= 32 << 20, peaks
