"""Shared fixtures.  Archives are real SQLite files (tests/helpers/archives.py); the reference
exporter (tests/helpers/reference.py) is the oracle the compiled fast path is compared with."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyexport
from skyexport.defaults import DATA_FILES, FORMATS  # noqa: F401 - shared with the tests

from helpers.archives import load_golden

# Around the default 1000 and the edges: one row per batch, batches larger than any archive.
BATCH_SIZES = (1, 7, 999, 1000, 1001, 1_000_000)


# pytest-memray's markers: the tests that state a memory limit.
MEMRAY_MARKERS = ("limit_memory", "limit_leaks", "limit_leaked_objects")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> object:
    """Under `--memray`, pytest-memray runs every test inside a memray Tracker, which about
    doubles the time of Python-heavy tests (the reference exporter, hypothesis).  Only the
    tests with a memray marker assert anything about memory (the other peaks feed just the
    summary, hidden by addopts' --hide-memray-summary): those are still tracked, the others
    run untracked.  The option is switched off around the call of an unmarked test only."""
    option = pyfuncitem.config.option
    marked = any(m.name in MEMRAY_MARKERS for m in pyfuncitem.iter_markers())
    if marked or not getattr(option, "memray", False):
        return (yield)
    option.memray = False
    try:
        return (yield)
    finally:
        option.memray = True


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


ROW_SOURCES = ("pipe", "direct", "cursor")


@pytest.fixture(params=ROW_SOURCES)
def row_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each way rows reach the encoders - SQLite stepped on its own thread
    (the default), on the encoding thread, or through an APSW cursor: all must give the
    same bytes.  In this process through the library's default, in a child through the
    CLI's SKYEXPORT_ROW_SOURCE."""
    import skyexport.sources.archive

    monkeypatch.setattr(skyexport.sources.archive, "DEFAULT_ROW_SOURCE", request.param)
    monkeypatch.setenv("SKYEXPORT_ROW_SOURCE", request.param)
    return request.param


# --- a RAM file system for tests that make tens of thousands of files ----------------------------
#
# Creating files on the disk's ext4 costs the kernel 50-450 us each under load (a 200k-post
# export with its 47k media files: 11 s of system time on ext4, next to none on tmpfs).  What
# those tests check (an export's bytes, its peak memory as memray counts it, verify's answers)
# does not depend on the file system: the files, directories and links are the same kinds.


RAM_MIN_FREE = 2 << 30  # the largest user (200k posts, 47k media files, an export) is ~0.5 GB,
                        # and each of the suite's two workers may hold one


def _ram_base() -> Path | None:
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return None
    st = os.statvfs(shm)
    return shm if st.f_bavail * st.f_frsize >= RAM_MIN_FREE else None  # a small /dev/shm: disk


@contextlib.contextmanager
def ram_dir(fallback: Path) -> Iterator[Path]:
    """A new, empty directory on /dev/shm (tmpfs) where there is one, removed at the end;
    `fallback` (a pytest tmp_path, left to pytest) where there is none."""
    base = _ram_base()
    if base is None:
        yield fallback
        return
    d = Path(tempfile.mkdtemp(prefix="skyexport-test-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ram_path(tmp_path: Path) -> Iterator[Path]:
    """Like tmp_path, on a RAM file system where there is one (see ram_dir)."""
    with ram_dir(tmp_path) as d:
        yield d


@pytest.fixture(scope="session")
def golden_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load_golden(tmp_path_factory.mktemp("golden") / "golden.db")


def export_bytes(archive: os.PathLike[str] | str, out: os.PathLike[str] | str, fmt: str,
                 **options: object) -> bytes:
    """Run the real export into `out` and return the data file's bytes."""
    result = skyexport.export(archive, out, format=fmt, **options)  # type: ignore[arg-type]
    assert result.data_file.name == DATA_FILES[fmt]
    return result.data_file.read_bytes()
