"""Reading a repository CAR in flat memory (CAR.md: no map of all blocks, no list of all
keys): `import` and `export REPO.car` of a synthetic CAR of 50k posts (with twice as many
likes and a fifth as many follows) peak under the archive export's limit, and the import's
peak is the same for 5k and 50k posts.  The `limit_memory` marks act under `pytest --memray`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import skyexport
from skyexport.sources.car.importer import import_car
from skyexport.testing.carwrite import synth_car

SIZES = (5_000, 50_000)
LIMIT = "32 MB"
FLAT_MB = 4


@pytest.fixture(scope="session")
def cars(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("car-memory")
    out = {}
    for n in SIZES:
        out[n] = root / f"repo-{n}.car"
        synth_car(out[n], n, seed=5)
    return out


@pytest.mark.limit_memory(LIMIT)
def test_import_50k(cars: dict[int, Path], tmp_path: Path) -> None:
    r = import_car(cars[50_000], tmp_path / "a.db")
    assert r.posts == 50_000


@pytest.mark.limit_memory(LIMIT)
def test_export_50k(cars: dict[int, Path], tmp_path: Path) -> None:
    r = skyexport.export(cars[50_000], tmp_path / "o", format="jsonl")
    assert r.post_count == 50_000


PEAK = """
import sys, tempfile, memray
import skyexport
from skyexport.sources.car.importer import import_car
car, what = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as out, tempfile.TemporaryDirectory() as cap:
    path = cap + "/capture.bin"
    with memray.Tracker(path, native_traces=False):
        if what == "import":
            import_car(car, out + "/a.db")
        else:
            skyexport.export(car, out, format="jsonl")
    print(memray.FileReader(path).metadata.peak_memory)
"""


@pytest.mark.parametrize("what", ["import"])
def test_peak_does_not_grow_with_the_car(cars: dict[int, Path], what: str,
                                         tmp_path: Path) -> None:
    """The CAR phase (index, MST walk, archive build).  The archive export after it has
    its own flatness tests (test_memory_limits.py): its SQLite cache fills up to its fixed size
    between 5k and 50k posts, which is not growth with the CAR."""
    peaks = {}
    for n in SIZES:
        proc = subprocess.run([sys.executable, "-c", PEAK, str(cars[n]), what, str(tmp_path)],
                              capture_output=True, text=True, check=True)
        peaks[n] = int(proc.stdout.split()[-1])
    growth = peaks[50_000] - peaks[5_000]
    assert growth <= FLAT_MB << 20, f"peak grew by {growth / 2**20:.1f} MiB: {peaks}"
    assert peaks[50_000] <= 32 << 20, peaks
