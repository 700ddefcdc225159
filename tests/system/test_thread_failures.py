"""Helper threads never die silently and never strand the thread that waits for them: an
exception of any type on the data file's writer thread, the CAR's hashing thread or the
progress delivery thread reaches the caller as a failure with one line.  The faults are
real exceptions raised where the real code runs (a codec, fdatasync, preadv, a progress
snapshot); every wait is bounded, so a hang fails the test instead of blocking it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import pytest

import skyexport
from skyexport.exporter.progress import ExportProgress, ProgressChannel
from skyexport.exporter.sink import POOL_BLOCKS, FileSink, WriterThreadError
from skyexport.testing.synth import build_archive

PY = sys.executable
HANG_S = 60  # an export of these archives takes about a second; this long is a hang


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 7.5 MB of JSON: more 1 MiB blocks than the writer's pool holds, so a dead
    writer thread would leave the encoder waiting for a free buffer."""
    path = tmp_path_factory.mktemp("threads") / "archive.db"
    build_archive(path, 10_000, seed=3)
    return path


# The child: `PRELUDE` runs first (it breaks something), then the skyexport command.
CHILD = """\
import os, sys, zlib
{prelude}
from skyexport.cli.commands import run
sys.argv = ["skyexport", *sys.argv[1:]]
run()
"""

BROKEN_CODEC = """\
class Broken:
    def compress(self, data): raise zlib.error("injected: the codec failed")
    def flush(self): return b""
zlib.compressobj = lambda *args, **kwargs: Broken()
"""

BROKEN_FDATASYNC = """\
def fdatasync(fd): raise RuntimeError("injected: fdatasync failed")
os.fdatasync = fdatasync
import skyexport.exporter.sink
skyexport.exporter.sink.SYNC_EVERY = 1  # a data sync after every block
"""

NO_FDATASYNC = """\
del os.fdatasync  # as on macOS
import skyexport.exporter.sink
skyexport.exporter.sink.SYNC_EVERY = 1
"""


def _child(prelude: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-c", CHILD.format(prelude=prelude), *map(str, args)],
                          capture_output=True, timeout=HANG_S, cwd=cwd, check=False)


@pytest.mark.parametrize(("prelude", "args", "says"), [
    (BROKEN_CODEC, ["--compress", "gzip"], "zlib.error: injected: the codec failed"),
    (BROKEN_FDATASYNC, [], "RuntimeError: injected: fdatasync failed"),
], ids=["codec", "fdatasync"])
def test_writer_thread_exception_fails_the_export(archive: Path, tmp_path: Path,
                                                  prelude: str, args: list[str],
                                                  says: str) -> None:
    out = tmp_path / "out"
    proc = _child(prelude, "export", archive, "-o", out, *args, cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    (line,) = err.splitlines()
    assert line.startswith("skyexport: error: writing ") and says in line, line
    assert "nothing was exported" in line
    assert not out.exists() or list(out.iterdir()) == []  # nothing published, no temp dir


def test_writer_thread_exception_on_a_stream(archive: Path, tmp_path: Path) -> None:
    proc = _child(BROKEN_CODEC, "export", archive, "-o", "-", "--compress", "gzip",
                  cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    (line,) = err.splitlines()
    assert "writing to stdout failed: zlib.error: injected: the codec failed" in line, line
    assert proc.stdout == b""  # the codec never produced a byte


def test_no_fdatasync_falls_back_to_fsync(archive: Path, tmp_path: Path) -> None:
    """Where os has no fdatasync (macOS) the export syncs with fsync, and succeeds."""
    proc = _child(NO_FDATASYNC, "export", archive, "-o", tmp_path / "out", "-q",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert skyexport.verify(proc.stdout.decode().strip()).ok


class _Broken:
    def compress(self, data: bytes) -> bytes:
        raise zlib.error("injected")

    def flush(self) -> bytes:
        return b""


def test_file_sink_raises_what_its_thread_met(tmp_path: Path) -> None:
    """FileSink itself: the producer sees the thread's exception (as a WriterThreadError
    chained to it) on a later call or at close(), never waits forever for a buffer."""
    fd = os.open(tmp_path / "data", os.O_WRONLY | os.O_CREAT)
    raised: list[BaseException] = []

    def produce() -> None:
        sink = FileSink(fd)
        sink._codec = _Broken()
        try:
            for _ in range(20):  # more blocks than the pool holds
                sink(b"x" * (1 << 20))
            sink.close()
        except BaseException as exc:  # noqa: BLE001 - inspected below
            raised.append(exc)
        finally:
            sink.abort()

    try:
        t = threading.Thread(target=produce, daemon=True)
        t.start()
        t.join(HANG_S)
        assert not t.is_alive(), "the producer is stranded waiting for the writer thread"
    finally:
        os.close(fd)
    (exc,) = raised
    assert isinstance(exc, WriterThreadError) and isinstance(exc, OSError)
    assert isinstance(exc.__cause__, zlib.error) and str(exc) == "zlib.error: injected"
    assert os.path.getsize(tmp_path / "data") == 0


def test_car_hashing_thread_exception_is_reported(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The CAR's SHA-256 is computed on a thread of its own (the only os.preadv user): an
    exception of any type there is the import's one-line error."""
    from skyexport.testing.carwrite import synth_car

    car = tmp_path / "repo.car"
    synth_car(car, 50, seed=1)

    def preadv(*args: object) -> int:
        raise RuntimeError("injected: preadv failed")

    monkeypatch.setattr(os, "preadv", preadv)
    with pytest.raises(skyexport.ArchiveError) as info:
        skyexport.import_car(car, tmp_path / "archive.db")
    assert "hashing failed (RuntimeError: injected: preadv failed)" in str(info.value)
    assert not (tmp_path / "archive.db").exists()


class _Boom(BaseException):
    """Not an Exception: what a bare `except Exception` lets through."""


def test_progress_thread_failure_is_reported() -> None:
    """The delivery thread stopping on an exception of its own (here from the heartbeat's
    snapshot) is said when the channel closes, not lost with the thread."""
    seen: list[str] = []

    def snapshot() -> ExportProgress:
        raise _Boom("injected: snapshot failed")

    ch = ProgressChannel(lambda ev: seen.append(ev.status), snapshot, heartbeat_s=0.01)
    ch.put(ExportProgress("running", 1, 10, 0, 0, 100, 0.1))
    deadline = threading.Event()
    deadline.wait(0.3)  # several heartbeats: the snapshot has been called
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ch.close(timeout_s=HANG_S)
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert any("progress delivery stopped on _Boom: injected: snapshot failed" in m
               for m in messages), messages
    assert seen == ["running"]


def test_a_failed_write_leaves_no_buffer_exported(tmp_path: Path) -> None:
    """After a write fails, every pooled buffer can be reused: the stored error's traceback
    must not keep a memoryview of the buffer alive, or the encoder's next `buf[:] = block`
    (it may take a buffer between the failure and its own check of the error) raises
    BufferError, which reached the user as an "unexpected" error under `ulimit -f`."""
    path = tmp_path / "readonly"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # write(2) fails with EBADF on the writer thread
    try:
        sink = FileSink(fd, sync=False)
        sink(b"x" * 1000)
        deadline = threading.Event()
        for _ in range(HANG_S * 100):
            if sink.error is not None and sink._free.qsize() == POOL_BLOCKS:
                break
            deadline.wait(0.01)
        assert isinstance(sink.error, OSError), sink.error
        assert sink.error.__traceback__ is not None  # the traceback is kept for the caller
        buffers = []
        while not sink._free.empty():
            buffers.append(sink._free.get_nowait())
        assert buffers, "no buffer came back to the pool"
        for buf in buffers:
            buf[:] = b"y" * 5000  # a resize: BufferError while any view of it is alive
        with pytest.raises(OSError):
            sink.close(sync=False)
    finally:
        os.close(fd)
