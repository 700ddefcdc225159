"""Faults and bad input: never a partial export, never a traceback, never a lost
post.

Every case is real: SQLite files on disk, the command line in a subprocess, real signals,
a real RLIMIT_FSIZE, a real full (tmpfs) filesystem, a real concurrent writer.  For each
failure the test checks the exit status, that stderr is one line (after an optional usage
line for exit 2) naming what and where, that nothing is visible in OUTPUT and no temporary
directory is left (except after kill -9), and that the archive is byte-for-byte unchanged.

Runs with a mid-export pause use SIGSTOP: the test waits for a `running` progress event,
stops the exporter, checks that it really is half-way (its temporary directory exists,
nothing is published), and only then sends the signal or truncates the archive, so the
fault lands mid-export however loaded the machine is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skyexport.defaults import DATA_FILES
from skyexport.exporter.staged import TMP_PREFIX
from skyexport.testing.synth import build_archive

from helpers.archives import make_archive, schema_sql
from helpers.cli import PY, TIMEOUT, assert_failed, run, run_peak_rss
from helpers.cli import child_setup as _child_setup
from helpers.outcomes import (
    assert_nothing_left,
    export_dirs,
    read_posts,
    sha256,
    temps,
    unchanged,
    visible,
)
from helpers.outcomes import post as _post

cli = run
cli_peak_rss = run_peak_rss

BIG_POSTS = 200_000    # --batch-size 1 --progress jsonl on this takes a few seconds
MID_POSTS = 20_000     # about 15 MB of posts.json
BATCH_RE = re.compile(r"batch \d+ \(posts \d+\.\.\d+\)")


# --- helpers --------------------------------------------------------------------------------

def error_lines(stderr: str) -> list[str]:
    """stderr without `--progress jsonl` event lines."""
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def proc_state(pid: int) -> str:
    """The kernel's one-letter state of a process (T stopped, Z exited), '' if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def poll(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


class Exporter:
    """`skyexport export ... --progress jsonl` in a subprocess, its stderr read by a
    thread so the test can wait for progress events."""

    def __init__(self, archive: Path, out: Path, *extra: object,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "skyexport", "export", str(archive), "--output", str(out),
             "--progress", "jsonl", *map(str, extra)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=_child_setup())  # noqa: PLW1509
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.stderr.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_event(self, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 60.0) -> dict[str, Any] | None:
        """The first progress event matching `pred`; None if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no matching progress event within {timeout} s: "
                            f"{''.join(self.stderr)}")
            if line is None:
                return None
            if line.startswith("{"):
                event = json.loads(line)
                if pred(event):
                    return event

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        self._pump.join(timeout)
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read().decode("utf-8", "replace")
        self.proc.stdout.close()
        return rc, stdout, "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


def stopped_mid_export(archive: Path, out: Path, *extra: object,
                       attempts: int = 3) -> Exporter:
    """Start an export, wait for a `running` event half-way, SIGSTOP it, and make sure
    it is really mid-export: stopped, its temporary directory present, nothing
    published.  Retries if the export finished before it could be stopped."""
    for _ in range(attempts):
        exp = Exporter(archive, out, "--batch-size", 1, *extra)
        ev = exp.wait_event(lambda e: e["status"] == "running"
                            and 0 < e["posts_processed"] < e["posts_total"])
        if ev is not None:
            os.kill(exp.pid, signal.SIGSTOP)
            poll(lambda pid=exp.pid: proc_state(pid) in ("T", "t", "Z", "X", ""), 10,
                 "the exporter to stop")
            if proc_state(exp.pid) in ("T", "t") and temps(out) and not visible(out):
                return exp
            os.kill(exp.pid, signal.SIGCONT)
        exp.kill()
        shutil.rmtree(out, ignore_errors=True)
    pytest.fail(f"the export of {archive} always finished before it could be stopped")


# Runs the CLI's main(ARGS) and, when it returns, writes the process's peak RSS (VmHWM) to
# a file (the `skyexport` command itself ends with os._exit, which skips atexit).  Not
# ru_maxrss: Linux carries the forked child's pre-exec high-water mark (the size of this
# pytest process) across exec() into it.
# --- archives -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archives_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-archives")


@pytest.fixture(scope="module")
def big_archive(archives_dir: Path) -> Path:
    """BIG_POSTS synthetic posts (about 165 MB): an export that lasts seconds."""
    path = archives_dir / "big.db"
    build_archive(path, BIG_POSTS, seed=4)
    return path


@pytest.fixture(scope="module")
def mid_archive(archives_dir: Path) -> Path:
    path = archives_dir / "mid.db"
    build_archive(path, MID_POSTS, seed=44)
    return path


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A genuinely small filesystem (a 2 MiB tmpfs); skipped where mounting is refused."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


# --- 1. disk full -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_file_size_limit(mid_archive: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    limit = 2 << 20   # posts.* of the mid archive is ~15 MB
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "--output", out, "--format", fmt,
                   preexec_fn=_child_setup(fsize=limit))
    line = assert_failed(proc, 1, "file size limit", str(out), DATA_FILES[fmt])
    assert "nothing was exported" in line
    assert_nothing_left(out)   # OUTPUT was created by the export, and removed again


def test_file_size_limit_existing_output(mid_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "-o", out, preexec_fn=_child_setup(fsize=1 << 20))
    assert_failed(proc, 1, "file size limit", str(out))
    assert_nothing_left(out, ["keep.txt"])
    assert (out / "keep.txt").read_text() == "mine"


def test_disk_full(mid_archive: Path, small_fs: Path) -> None:
    out = small_fs / "exports"
    free = os.statvfs(small_fs).f_bfree
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "-o", out)
    assert_failed(proc, 1, "disk is full", str(out))
    assert_nothing_left(out)
    assert os.statvfs(small_fs).f_bfree == free, "the partial file's space was not freed"


def test_disk_full_while_copying_media(tmp_path: Path, small_fs: Path) -> None:
    root = tmp_path / "arc"
    (root / "media").mkdir(parents=True)
    rows, media = [], []
    for i in range(4):
        (root / "media" / f"img{i}.jpg").write_bytes(os.urandom(700_000))
        rows.append(_post(i, has_media=1))
        media.append({"post_uri": rows[-1]["uri"], "file_path": f"media/img{i}.jpg",
                      "size_bytes": 700_000})
    archive = make_archive(root / "archive.db", rows, media_rows=media)
    out = small_fs / "exports"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--media", "--media-root", root)
    line = assert_failed(proc, 1, "disk is full", str(out))
    assert "/media" in line and "posts.json" not in line, line
    assert_nothing_left(out)


def test_disk_full_while_listing_media(tmp_path: Path, small_fs: Path) -> None:
    # Many small media files fill the disk; the list file's buffered lines,
    # flushed again on the way out, replaced the disk-full line with "unexpected OSError".
    root = tmp_path / "arc"
    rows, media = [], []
    for i in range(700):
        name = f"m/{i:04d}-" + "n" * 180 + ".jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(4096))
        rows.append(_post(i, has_media=1))
        media.append({"post_uri": rows[-1]["uri"], "file_path": name})
    archive = make_archive(root / "archive.db", rows, media_rows=media)
    out = small_fs / "exports"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--media", "--media-root", root)
    assert_failed(proc, 1, "disk is full", str(out))
    assert_nothing_left(out)


# --- 2, 3. signals ----------------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_mid_export(big_archive: Path, tmp_path: Path, sig: int, code: int,
                           word: str) -> None:
    out = tmp_path / "out"
    with unchanged(big_archive):
        exp = stopped_mid_export(big_archive, out)
        os.kill(exp.pid, sig)
        os.kill(exp.pid, signal.SIGCONT)
        result = exp.finish()
    assert_failed(result, code, word, "nothing was exported")
    events = [json.loads(x) for x in result[2].splitlines() if x.startswith("{")]
    assert events[-1]["status"] == "failed"
    assert_nothing_left(out)


# A child that runs the real command, and sends itself a real signal while the export's
# final directory fsync runs - after the rename, when the export is already visible.
_SIGNAL_AFTER_RENAME = """
import os, signal, sys
from pathlib import Path
import skyexport.exporter.staged as job
from skyexport.cli.commands import main
out, sig = Path(sys.argv[1]).resolve(), int(sys.argv[2])
real = job.fsync_dir
def fsync_dir(path):
    if Path(path).resolve() == out:
        os.kill(os.getpid(), sig)
    real(path)
job.fsync_dir = fsync_dir
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_after_the_final_rename(mid_archive: Path, tmp_path: Path, sig: int,
                                       code: int, word: str) -> None:
    # The export was published and complete, yet the message said "nothing
    # was exported".  Status and message must agree with what is on disk.
    out = tmp_path / "out"
    with unchanged(mid_archive):
        proc = subprocess.run(
            [PY, "-c", _SIGNAL_AFTER_RENAME, str(out), str(int(sig)), "export",
             str(mid_archive), "-o", str(out), "--progress", "jsonl"],
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
            preexec_fn=_child_setup())
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    [done] = export_dirs(out)
    assert line == (f"skyexport: {word} after the export was complete; it is published, "
                    f"whole, at {done}")
    assert proc.stdout.splitlines()[-1] == str(done)
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert events[-1]["status"] == "completed"
    assert temps(out) == []
    check = cli("verify", done)
    assert check.returncode == 0, check.stderr


# The real temp-directory maker, paused just before each flock(2) it makes, so that the
# cleaner runs in exactly the instants a race would hit.
_PAUSED_MAKER = """
import fcntl, sys
from pathlib import Path
import skyexport.exporter.staged as job
def pause(frame, event, arg):
    if event == "c_call" and arg is fcntl.flock:
        print("flock", flush=True)
        sys.stdin.readline()
sys.setprofile(pause)
made = job._make_temp_dir(Path(sys.argv[1]))
sys.setprofile(None)
print("made", made[0], flush=True)
sys.stdin.readline()
"""


def test_cleaner_never_takes_a_directory_being_created(tmp_path: Path) -> None:
    from skyexport.exporter.staged import STALE_UNLOCKED_S, clean_stale_temp_dirs

    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([PY, "-c", _PAUSED_MAKER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    pauses = 0
    try:
        while True:
            line = child.stdout.readline()
            assert line, "the child died"
            [tmp] = temps(out)
            if pauses > 0:
                # Once the directory is locked, however old it looks, it is never removed
                # (before that, at the first pause, only its real, young age protects it).
                old = time.time() - 10 * STALE_UNLOCKED_S
                os.utime(out / tmp, (old, old))
            assert clean_stale_temp_dirs(out) == [], f"removed at pause {pauses}"
            assert temps(out) == [tmp]
            child.stdin.write("\n")
            child.stdin.flush()
            if line.startswith("made"):
                break
            pauses += 1
        assert pauses >= 1
    finally:
        child.stdin.close()
        child.wait(timeout=TIMEOUT)
    # Its owner gone, the same directory is stale and is removed.
    assert [p.name for p in clean_stale_temp_dirs(out)] == [tmp]
    assert temps(out) == []


def _hold_lock(path: Path) -> int:
    path.mkdir()
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_kill9_then_next_export_cleans_up(big_archive: Path, mid_archive: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    with unchanged(big_archive):
        exp = stopped_mid_export(big_archive, out)
        os.kill(exp.pid, signal.SIGKILL)
        rc, _, _ = exp.finish()
    assert rc == -signal.SIGKILL
    assert visible(out) == []
    [stale] = temps(out)
    assert stale.startswith(f"{TMP_PREFIX}{exp.pid}-")
    assert (out / stale / ".lock").is_file()
    assert (out / stale / "posts.json").is_file()   # the partial data file

    # Beside it: a temporary dir of a live export (its lock held, here by this process),
    # one just being created (no lock yet), one abandoned long ago without a lock,
    # a symlink that looks like ours, and things of the user's.
    live = out / f"{TMP_PREFIX}{os.getpid()}-0badcafe"
    lock_fd = _hold_lock(live)
    fresh = out / f"{TMP_PREFIX}1-fresh"
    fresh.mkdir()
    old = out / f"{TMP_PREFIX}1-old"
    old.mkdir()
    (old / "posts.json").write_text("[")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    (out / f"{TMP_PREFIX}link").symlink_to(victim)
    (out / ".skyexport-mine").mkdir()
    (out / "notes.txt").write_text("notes")
    try:
        with unchanged(mid_archive):
            proc = cli("export", mid_archive, "-o", out, "--format", "csv")
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        assert not (out / stale).exists()
        assert not old.exists()
        assert (live / ".lock").is_file()
        assert fresh.is_dir()
        assert (victim / "data.txt").read_text() == "precious"
        assert (out / f"{TMP_PREFIX}link").is_symlink()
        assert (out / "notes.txt").read_text() == "notes"
        [done] = export_dirs(out)
        assert proc.stdout.splitlines()[-1] == str(done)
        assert json.loads((done / "manifest.json").read_bytes())["post_count"] == MID_POSTS
        assert len(read_posts(done / "posts.csv")) == MID_POSTS + 1
        assert sorted(temps(out)) == sorted([live.name, fresh.name, f"{TMP_PREFIX}link"])
    finally:
        os.close(lock_fd)
    # Its owner gone (lock released), the next export removes it too.
    proc = cli("export", mid_archive, "-o", out, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert not live.exists()
    assert len(export_dirs(out)) == 2


# --- 4. corrupt and truncated archives ---------------------------------------------------------

def _archive_in_export_order(path: Path, n: int) -> Path:
    """An archive whose rowid order is its export order (distinct created_at, newest
    first), so that a leaf page of `posts` holds a known range of export positions."""
    t0 = dt.datetime(2024, 6, 1)
    return make_archive(path, [
        _post(i, text=f"post number {i} " * 20,
              created_at=(t0 - dt.timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S +0000 UTC"))
        for i in range(n)])


@pytest.mark.parametrize("row_source", ["pipe", "direct", "cursor"])
def test_corrupt_pages_name_the_failing_batch(tmp_path: Path, row_source: str) -> None:
    archive = _archive_in_export_order(tmp_path / "corrupt.db", 5000)
    con = sqlite3.connect(archive)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        leaves = con.execute("SELECT pageno, ncell FROM dbstat WHERE name = 'posts' AND "
                             "pagetype = 'leaf' ORDER BY path").fetchall()
    finally:
        con.close()
    first = [sum(n for _, n in leaves[:k]) for k in range(len(leaves))]  # export positions
    # A leaf in the middle whose first row is not the first or second of a batch (SQLite
    # may read one row ahead of the one it hands out).
    k = next(k for k in range(len(leaves) // 2, len(leaves)) if first[k] % 100 >= 2)
    with open(archive, "r+b") as f:
        f.seek((leaves[k][0] - 1) * page_size)
        f.write((b"\xde\xad\xbe\xef garbage " * page_size)[:page_size])
    batch = first[k] // 100 + 1
    out = tmp_path / "out"
    env = dict(os.environ, SKYEXPORT_ROW_SOURCE=row_source)
    for fmt in ("json", "csv"):
        with unchanged(archive):
            proc = cli("export", archive, "-o", out, "--format", fmt, "--batch-size", 100,
                       env=env)
        assert_failed(proc, 1, str(archive), "corrupt",
                      f"batch {batch} (posts {batch * 100 - 99}..{batch * 100})")
        assert_nothing_left(out)


def test_archive_truncated_mid_export(big_archive: Path, tmp_path: Path) -> None:
    archive = tmp_path / "truncated.db"
    shutil.copyfile(big_archive, archive)
    out = tmp_path / "out"
    exp = stopped_mid_export(archive, out)
    size = archive.stat().st_size
    os.truncate(archive, size // 10 // 4096 * 4096)
    os.kill(exp.pid, signal.SIGCONT)
    line = assert_failed(exp.finish(), 1, str(archive))
    assert BATCH_RE.search(line), line
    assert "corrupt" in line or "disk I/O" in line, line
    assert_nothing_left(out)


# --- 5. concurrent writers ---------------------------------------------------------------------

WRITER = r"""
import os, sqlite3, sys, time
db, mode, ready, stop = sys.argv[1:5]
con = sqlite3.connect(db, timeout=60, isolation_level=None)
con.execute("PRAGMA synchronous=OFF")
if mode == "hold":
    con.execute("BEGIN EXCLUSIVE")
    open(ready, "w").close()
    while not os.path.exists(stop):
        time.sleep(0.01)
    con.execute("ROLLBACK")
    sys.exit(0)
i = 0
while not os.path.exists(stop):
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at) "
        "VALUES (?, 'bafyw', 'did:plc:writer', 'new', ?, ?)",
        (f"at://did:plc:writer/app.bsky.feed.post/w{i:07d}",
         f"2024-{1 + i % 12:02d}-15 10:{i % 60:02d}:00 +0000 UTC", "2024-12-31 00:00:00"))
    con.execute("COMMIT")
    i += 1
    if i == 20:
        open(ready, "w").close()
print(i)
"""


@contextlib.contextmanager
def writer_process(archive: Path, mode: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    ready, stop = tmp_path / f"ready-{mode}", tmp_path / f"stop-{mode}"
    proc = subprocess.Popen([PY, "-c", WRITER, str(archive), mode, str(ready), str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: ready.exists() or proc.poll() is not None, 60, "the writer to start")
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        stop.touch()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_concurrent_writer_one_snapshot(mid_archive: Path, tmp_path: Path,
                                        journal: str) -> None:
    archive = tmp_path / f"live-{journal}.db"
    shutil.copyfile(mid_archive, archive)
    con = sqlite3.connect(archive)
    assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
    before = {u for (u,) in con.execute("SELECT uri FROM posts")}
    con.close()
    out = tmp_path / "out"
    with writer_process(archive, "insert", tmp_path) as writer:
        proc = cli("export", archive, "-o", out, "--format", "jsonl", "--batch-size", 1)
        assert proc.returncode == 0, proc.stderr
        [done] = export_dirs(out)
        posts = read_posts(done / "posts.jsonl")
        uris = [p["uri"] for p in posts]  # type: ignore[index]
        exported_new = len(set(uris) - before)

        def writer_rows() -> int:
            con = sqlite3.connect(archive, timeout=60)
            try:
                return con.execute("SELECT count(*) FROM posts WHERE did = 'did:plc:writer'"
                                   ).fetchone()[0]
            finally:
                con.close()
        poll(lambda: writer_rows() > exported_new, 60, "the writer to go on writing")
    assert writer.stdout is not None
    inserted_total = int(writer.stdout.read())
    manifest = json.loads((done / "manifest.json").read_bytes())
    assert manifest["post_count"] == len(uris)
    assert len(set(uris)) == len(uris), "a post was exported twice"
    assert before <= set(uris), "a post that existed before the export was lost"
    new = sorted(int(u.rsplit("/w", 1)[1]) for u in set(uris) - before)
    # One snapshot: the writer's first k rows, for some k, and nothing else.
    assert new == list(range(len(new)))
    assert len(new) >= 20          # the writer was running before the export started
    assert inserted_total > len(new)  # and went on after its snapshot


def test_exclusive_lock_times_out(mid_archive: Path, tmp_path: Path) -> None:
    archive = tmp_path / "locked.db"
    shutil.copyfile(mid_archive, archive)
    out = tmp_path / "out"
    env = dict(os.environ, SKYEXPORT_BUSY_TIMEOUT_MS="500")
    digest = sha256(archive)
    with writer_process(archive, "hold", tmp_path):
        proc = cli("export", archive, "-o", out, env=env)
    assert_failed(proc, 1, str(archive), "locked by another process", "0.5 s")
    assert_nothing_left(out)
    assert sha256(archive) == digest
    # Once the writer lets go, the same export works.
    proc = cli("export", archive, "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(export_dirs(out)) == 1


def test_lock_is_waited_for(mid_archive: Path, tmp_path: Path) -> None:
    """Within the busy timeout the export waits for the lock, and goes on once the writer
    lets go (order, not time: the lock is released only after the exporter has opened the
    archive, and the export then succeeds)."""
    archive = tmp_path / "locked.db"
    shutil.copyfile(mid_archive, archive)
    out = tmp_path / "out"
    env = dict(os.environ, SKYEXPORT_BUSY_TIMEOUT_MS="3600000")
    with writer_process(archive, "hold", tmp_path) as writer:
        proc = subprocess.Popen([PY, "-m", "skyexport", "export", str(archive), "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        poll(lambda: _has_open(proc.pid, archive) or proc.poll() is not None, 60,
             "the exporter to open the archive")
        time.sleep(0.2)  # into SQLite's busy wait
        assert proc.poll() is None, proc.communicate()  # waiting, not failed
        (tmp_path / "stop-hold").touch()  # the writer lets go
        writer.wait(timeout=TIMEOUT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    [done] = export_dirs(out)
    assert json.loads((done / "manifest.json").read_bytes())["post_count"] == MID_POSTS


def _has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
    return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_while_waiting_for_a_lock(mid_archive: Path, tmp_path: Path, sig: int,
                                         code: int) -> None:
    """Ctrl-C acts at once while the archive is locked, not after the busy timeout."""
    archive = tmp_path / "locked.db"
    shutil.copyfile(mid_archive, archive)
    out = tmp_path / "out"
    # A busy timeout far beyond TIMEOUT: a signal that only acted once the wait ended would
    # leave communicate() to time out.
    env = dict(os.environ, SKYEXPORT_BUSY_TIMEOUT_MS="3600000")
    with writer_process(archive, "hold", tmp_path) as writer, unchanged(archive):
        proc = subprocess.Popen([PY, "-m", "skyexport", "export", str(archive), "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, preexec_fn=_child_setup())  # noqa: PLW1509
        poll(lambda: _has_open(proc.pid, archive) or proc.poll() is not None, 60,
             "the exporter to open the archive")
        time.sleep(0.2)  # inside SQLite's busy wait
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        # The exporter ended while the writer still held the lock: inside the busy wait.
        assert writer.poll() is None and not (tmp_path / "stop-hold").exists()
    assert_failed((proc.returncode, stdout, stderr), code, "nothing was exported")
    assert_nothing_left(out)


def test_exclusive_writer_does_not_block_wal_reader(mid_archive: Path, tmp_path: Path) -> None:
    archive = tmp_path / "wal.db"
    shutil.copyfile(mid_archive, archive)
    con = sqlite3.connect(archive)
    con.execute("PRAGMA journal_mode=wal")
    con.close()
    out = tmp_path / "out"
    env = dict(os.environ, SKYEXPORT_BUSY_TIMEOUT_MS="500")
    with writer_process(archive, "hold", tmp_path):
        proc = cli("export", archive, "-o", out, "--format", "csv", env=env)
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    assert len(read_posts(done / "posts.csv")) == MID_POSTS + 1


# --- 6. output problems ------------------------------------------------------------------------

def test_output_is_a_file(mid_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a dir")
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "-o", out)
    assert_failed(proc, 1, str(out), "is a file")
    assert out.read_text() == "not a dir"
    # A parent that is a file:
    proc = cli("export", mid_archive, "-o", out / "sub")
    assert_failed(proc, 1, str(out / "sub"))
    assert out.read_text() == "not a dir"


def test_output_read_only_filesystem(mid_archive: Path, small_fs: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only ({r.stderr.strip()})")
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "-o", small_fs)
        assert_failed(proc, 1, str(small_fs), "not writable")
        proc = cli("export", mid_archive, "-o", small_fs / "new")
        assert_failed(proc, 1, str(small_fs / "new"), "cannot create")
    assert os.listdir(small_fs) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (the "
                    "read-only filesystem test covers this case)")
def test_output_not_writable(mid_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = cli("export", mid_archive, "-o", out)
        assert_failed(proc, 1, str(out), "not writable")
        assert os.listdir(out) == []
    finally:
        out.chmod(0o755)


def test_export_dir_name_taken(mid_archive: Path, tmp_path: Path) -> None:
    """Never replace an existing directory, even an empty one (rename(2) would):
    take the next free -N suffix."""
    import skyexport

    archive = make_archive(tmp_path / "small.db", [_post(i) for i in range(3)])
    out = tmp_path / "out"
    out.mkdir()
    now = dt.datetime.now()
    taken = []
    for s in range(-2, 120):  # every name this test could pick in the next two minutes
        base = (now + dt.timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S")
        (out / base).mkdir()
        (out / base / "posts.json").write_text("someone else's")
        (out / f"{base}-2").mkdir()  # empty
        taken.append(base)
    result = skyexport.export(archive, out)
    base, _, n = result.directory.name.rpartition("-")
    assert base in taken and n == "3", result.directory.name
    assert result.post_count == 3
    for b in taken:
        assert (out / b / "posts.json").read_text() == "someone else's"
        assert os.listdir(out / b) == ["posts.json"]
        assert os.listdir(out / f"{b}-2") == []
    # Back to back into a fresh OUTPUT: two whole, distinct export directories.
    out2 = tmp_path / "out2"
    first = skyexport.export(archive, out2)
    second = skyexport.export(archive, out2)
    assert first.directory != second.directory
    if second.directory.name.startswith(first.directory.name):
        assert second.directory.name == first.directory.name + "-2"
    for r in (first, second):
        assert len(read_posts(r.data_file)) == 3
    assert temps(out2) == []


# --- 7. bad input that must succeed ------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_nulls_invalid_utf8_empty_json(tmp_path: Path, fmt: str) -> None:
    nullable_all = {c: None for c in (
        "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count",
        "repost_count", "reply_count", "quote_count", "is_reply", "reply_parent",
        "embed_type", "embed_data", "labels", "archived_at")}
    rows = [
        nullable_all,
        _post(1, text=b"bad \xff\xfe utf-8 \xc0\xaf \xed\xa0\x80 cut \xe2\x80",
              reply_parent=b"\xff", embed_type=b"\x80x", cid=b"\xfe"),
        _post(2, embed_data="", labels=""),
        _post(3, text=b"nul\x00byte", has_media=None, like_count=None, is_reply=None),
        _post(4, did=None, cid=None, created_at=None, indexed_at=None, archived_at=None),
    ]
    archive = make_archive(tmp_path / "nulls.db", rows, not_null=False)
    out = tmp_path / "out"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--format", fmt, "--media")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    [done] = export_dirs(out)
    posts = read_posts(done / DATA_FILES[fmt])
    assert len(posts) == len(rows) + (fmt == "csv")
    if fmt != "csv":
        by_uri = {p["uri"]: p for p in posts}  # type: ignore[index]
        assert by_uri[""]["created_at"] == "0001-01-01T00:00:00Z"
        assert "\ufffd" in by_uri[rows[1]["uri"]]["text"]
        assert "embed_data" not in by_uri[rows[2]["uri"]]
        assert by_uri[rows[3]["uri"]]["text"] == "nul\x00byte"
    assert json.loads((done / "manifest.json").read_bytes())["post_count"] == len(rows)


@pytest.mark.parametrize(("schema_version", "media_table"), [(1, True), (2, False)],
                         ids=["schema-v1", "no-media-table"])
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_old_and_partial_schemas(tmp_path: Path, schema_version: int, media_table: bool,
                                 fmt: str) -> None:
    rows = [_post(i, has_media=i % 2, quote_count=7) for i in range(5)]
    archive = make_archive(tmp_path / "old.db", rows, schema_version=schema_version,
                           with_media_table=media_table)
    out = tmp_path / "out"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--format", fmt, "--media")
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    posts = read_posts(done / DATA_FILES[fmt])
    assert len(posts) == 5 + (fmt == "csv")
    want = 0 if schema_version == 1 else 7   # v1 has no quote_count: read as 0
    if fmt == "json":
        assert {p["quote_count"] for p in posts} == {want}  # type: ignore[index]
    else:
        assert {r[8] for r in posts[1:]} == {str(want)}


def _big_json(size: int) -> str:
    """Valid stored JSON of about `size` bytes whose re-indented form is about as big."""
    chunk = "x" * 10_000
    n = size // (len(chunk) + 3)
    return '{"images": [' + ", ".join(f'"{chunk}"' for _ in range(n)) + '], "n": 1}'


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_huge_values_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    text = "long text " * ((5 << 20) // 10)      # 5 MB
    embed = _big_json(10 << 20)                   # 10 MB
    rows = [_post(0, text=text), _post(1, embed_data=embed, embed_type="app.bsky.embed.x"),
            _post(2, text=text, embed_data=embed)] + [_post(i) for i in range(3, 50)]
    archive = make_archive(tmp_path / "huge.db", rows)
    out = tmp_path / "out"
    with unchanged(archive):
        proc, peak = cli_peak_rss(tmp_path, "export", archive, "-o", out, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    data = done / DATA_FILES[fmt]
    posts = read_posts(data)
    assert len(posts) == len(rows) + (fmt == "csv")
    largest_row = len(text) + len(embed)
    limit = (64 << 20) + 3 * largest_row
    assert peak < limit, f"peak RSS {peak / 1e6:.0f} MB >= {limit / 1e6:.0f} MB"
    if fmt != "csv":
        by_uri = {p["uri"]: p for p in posts}  # type: ignore[index]
        assert by_uri[rows[0]["uri"]]["text"] == text
        assert by_uri[rows[1]["uri"]]["embed_data"] == json.loads(embed)


# --- 8. bad values ----------------------------------------------------------------------------

BAD_VALUES = [
    ("created_at", "yesterday at noon", "yesterday at noon"),
    ("indexed_at", "2024-02-30 10:00:00", "2024-02-30 10:00:00"),
    ("archived_at", "2024-01-01 24:00:00", "2024-01-01 24:00:00"),
    ("created_at", 12345, "12345"),
    ("created_at", "not a date " * 20, "not a date not a date"),   # shortened
    ("embed_data", '{"images": [', '{"images": ['),
    ("labels", "[1, 2,]", "[1, 2,]"),
]


@pytest.mark.parametrize(("column", "value", "shown"), BAD_VALUES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_VALUES)])
def test_bad_value_stops_the_export(tmp_path: Path, column: str, value: object,
                                    shown: str) -> None:
    rows = [_post(i) for i in range(5)]
    rows[3][column] = value
    archive = make_archive(tmp_path / "bad.db", rows)
    out = tmp_path / "out"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--format", "jsonl", "--batch-size", 2)
    line = assert_failed(proc, 1, rows[3]["uri"], column, shown, "--on-bad-value keep")
    assert len(line) < 500
    assert_nothing_left(out)


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_bad_values_kept(tmp_path: Path, fmt: str) -> None:
    rows = [_post(i) for i in range(10)]
    for i, (column, value, _) in enumerate(BAD_VALUES):
        rows[i][column] = value
    archive = make_archive(tmp_path / "bad.db", rows)
    out = tmp_path / "out"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--format", fmt, "--on-bad-value", "keep")
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    posts = read_posts(done / DATA_FILES[fmt])
    assert len(posts) == len(rows) + (fmt == "csv")
    manifest = json.loads((done / "manifest.json").read_bytes())
    got = {(w["uri"], w["column"]) for w in manifest["warnings"]}
    want = {(rows[i]["uri"], column) for i, (column, _, _) in enumerate(BAD_VALUES)
            if fmt != "csv" or column.endswith("_at")}  # CSV does not check stored JSON
    assert got == want
    assert manifest["warnings_total"] == len(want)
    if fmt == "json":
        kept = {p["uri"]: p["created_at"] for p in posts}  # type: ignore[index]
        assert kept[rows[0]["uri"]] == "yesterday at noon"
        assert kept[rows[3]["uri"]] == "12345"


# --- 9. not an archive -------------------------------------------------------------------------

def _not_archives(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    d = tmp_path / "inputs"
    d.mkdir()
    cases: dict[str, tuple[Path, str]] = {}
    cases["directory"] = (d / "a dir.db", "not a file")
    (d / "a dir.db").mkdir()
    cases["missing"] = (d / "missing.db", "does not exist")
    (d / "random.db").write_bytes(os.urandom(64 << 10))
    cases["random bytes"] = (d / "random.db", "not a SQLite database")
    (d / "text.db").write_text("this is not a database\n" * 100)
    cases["text file"] = (d / "text.db", "not a SQLite database")
    (d / "empty.db").write_bytes(b"")
    cases["empty file"] = (d / "empty.db", "no posts table")
    con = sqlite3.connect(d / "other.db")
    con.executescript("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);"
                      "INSERT INTO accounts (name) VALUES ('x');")
    con.close()
    cases["other tables"] = (d / "other.db", "no posts table")
    encrypted = bytearray((d / "other.db").read_bytes())
    encrypted[:100] = os.urandom(100)       # what an encrypted (SQLCipher) file looks like
    (d / "encrypted.db").write_bytes(bytes(encrypted))
    cases["encrypted"] = (d / "encrypted.db", "not a SQLite database")
    con = sqlite3.connect(d / "nocreated.db")
    con.executescript(schema_sql().replace("created_at TIMESTAMP NOT NULL,", "", 1)
                      .replace("CREATE INDEX idx_posts_created_at", "-- ", 1))
    con.close()
    cases["wrong columns"] = (d / "nocreated.db", "lacks column(s) created_at;")
    con = sqlite3.connect(d / "view.db")
    con.executescript("CREATE TABLE t (x); CREATE VIEW posts AS SELECT x AS uri FROM t;")
    con.close()
    cases["posts is a view"] = (d / "view.db", "posts")
    weird = d / "spaces and ünïcødé ✓"
    weird.mkdir()
    (weird / "broken archive ✓.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 84)
    cases["non-ASCII path"] = (weird / "broken archive ✓.db", "")
    return cases


def test_not_an_archive(tmp_path: Path) -> None:
    out = tmp_path / "out dir ✓"
    for name, (path, needle) in _not_archives(tmp_path).items():
        with unchanged(path) if path.is_file() else contextlib.nullcontext():
            proc = cli("export", path, "-o", out)
        assert_failed(proc, 1, str(path), needle)
        assert not out.exists(), f"{name}: OUTPUT was created"


def test_unusual_path_that_is_valid(tmp_path: Path) -> None:
    d = tmp_path / "my archives ✓" / "ünïcødé dir"
    d.mkdir(parents=True)
    archive = make_archive(d / "archive (copy) ✓.db", [_post(i) for i in range(7)])
    out = tmp_path / "exports ✓ here"
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    assert proc.stdout.splitlines()[-1] == str(done)
    assert len(read_posts(done / "posts.csv")) == 8
    manifest = json.loads((done / "manifest.json").read_bytes())
    assert manifest["source_archive"] == str(archive.resolve())


# --- 10. argument errors -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--since", "2024-03-01", "--until", "2024-02-01"],
    ["--since", "2024-13-01"],
    ["--until", "yesterday"],
    ["--since", "2024-02-30"],
    ["--batch-size", "0"],
    ["--batch-size", "-5"],
    ["--batch-size", "abc"],
    ["--format", "xml"],
    ["--on-bad-value", "ignore"],
    ["--progress", "loud"],
    ["--no-such-option"],
], ids=lambda a: " ".join(a))
def test_argument_errors(mid_archive: Path, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "-o", out, *args)
    line = assert_failed(proc, 2)
    assert proc.stderr.startswith("usage: skyexport"), proc.stderr
    option = next(a for a in args if a.startswith("--"))
    assert option in line or args[1] in line, line
    assert not out.exists()


def test_output_dash_is_stdout_not_created(mid_archive: Path, tmp_path: Path) -> None:
    # `--output -` made a directory named `-` in the current directory.  Now
    # it is stdout (tests/cli/test_stdout_output.py checks the bytes); never a directory.
    with unchanged(mid_archive):
        proc = cli("export", mid_archive, "--output", "-", "-f", "jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('{"uri":'), proc.stdout[:100]
    assert proc.stderr.splitlines()[-1].startswith(f"skyexport: wrote {MID_POSTS} posts "
                                                   "to stdout: ")
    assert list(tmp_path.iterdir()) == []


# --- 11. security ------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, str]:
    """Every file and symlink under `root`: relative path -> content hash (or link)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath,
                                                                                      n))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            found[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else sha256(p)
    return found


def test_media_paths_cannot_escape(tmp_path: Path) -> None:
    world = tmp_path / "world"
    media_root = world / "root" / "a" / "b"
    media_root.mkdir(parents=True)
    (world / "root" / "x").write_bytes(b"x file")                 # ../../x
    (world / "root" / "manifest.json").write_bytes(b"not ours")   # ../../manifest.json
    elsewhere = world / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_bytes(b"root:x:0:0\n")           # an absolute path
    (media_root / "ok.jpg").write_bytes(b"\xff\xd8 ok")
    paths = ["../../x", str(elsewhere / "passwd"), "media/../../../x", "../../manifest.json",
             "..", ".", "", "dir/", "..\\..\\x", "ok.jpg", "/nonexistent/../../etc/shadow",
             "a\x00b"]
    rows = [_post(i, has_media=1) for i in range(len(paths))]
    media = [{"post_uri": rows[i]["uri"], "file_path": p} for i, p in enumerate(paths)]
    archive = make_archive(world / "archive.db", rows, media_rows=media)
    out = world / "out"
    before = _tree(tmp_path)
    with unchanged(archive):
        proc = cli("export", archive, "-o", out, "--media", "--media-root", media_root,
                   cwd=media_root)
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    after = _tree(tmp_path)
    new = set(after) - set(before)
    prefix = str(done.relative_to(tmp_path)) + os.sep
    assert all(p.startswith(prefix) for p in new), sorted(new)
    assert {k: v for k, v in after.items() if k in before} == before
    media_dir = done / "media"
    assert sorted(os.listdir(media_dir)) == ["manifest.json", "ok.jpg", "passwd", "x"]
    assert (media_dir / "x").read_bytes() == b"x file"
    assert (done / "manifest.json").read_bytes() != b"not ours"
    manifest = json.loads((done / "manifest.json").read_bytes())
    assert manifest["media_count"] == 4
    assert manifest["post_count"] == len(paths)


def test_placing_never_follows_a_symlink(tmp_path: Path) -> None:
    from skyexport.exporter import media as media_mod

    src = tmp_path / "src.jpg"
    src.write_bytes(b"new content")
    target = tmp_path / "target.txt"
    target.write_bytes(b"precious")
    for link in media_mod.LINK_MODES:
        export_dir = tmp_path / f"export-{link}"
        export_dir.mkdir()
        copier = media_mod.MediaCopier(export_dir / "media", [tmp_path], export_dir / "sums",
                                       link=link)
        try:
            for dangling in (False, True):
                dst = export_dir / "media" / f"dst-{dangling}.jpg"
                dst.symlink_to(tmp_path / "nowhere" if dangling else target)
                fd = os.open(src, os.O_RDONLY)
                try:
                    with pytest.raises(FileExistsError):
                        copier._write(fd, os.fstat(fd), str(src), str(dst))
                finally:
                    os.close(fd)
                assert dst.is_symlink()
                assert target.read_bytes() == b"precious"
                assert not (tmp_path / "nowhere").exists()
        finally:
            copier.close()

    # Through the copier: a symlink planted at media/<name> is left alone.
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    copier = media_mod.MediaCopier(export_dir / "media", [tmp_path], export_dir / "sums")
    try:
        (export_dir / "media" / "src.jpg").symlink_to(target)
        copier.copy_rows([(b"at://p", b"h", os.fsencode(src))])
        copier.drain()  # the rows' files are placed by now
    finally:
        copier.close()
    assert target.read_bytes() == b"precious"
    assert (export_dir / "media" / "src.jpg").is_symlink()
    placed = [n for n in os.listdir(export_dir / "media") if n != "src.jpg"]
    assert len(placed) == 1 and (export_dir / "media" / placed[0]).read_bytes() == b"new content"


def test_export_respects_umask(tmp_path: Path) -> None:
    root = tmp_path / "arc"
    (root / "media").mkdir(parents=True)
    (root / "media" / "a.jpg").write_bytes(b"\xff\xd8 a")
    row = _post(0, has_media=1)
    archive = make_archive(root / "archive.db", [row],
                           media_rows=[{"post_uri": row["uri"], "file_path": "media/a.jpg"}])
    out = tmp_path / "out"
    proc = cli("export", archive, "-o", out, "--media", "--media-root", root,
               preexec_fn=_child_setup(umask=0o027))
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    assert mode(out) == 0o750
    assert mode(done) == 0o750
    assert mode(done / "media") == 0o750
    for name in ("posts.json", "manifest.json", "media.sha256"):
        assert mode(done / name) == 0o640, name


# --- 12. --csv-formula-guard -------------------------------------------------------------------

def test_csv_formula_guard_covers_kept_bad_timestamps(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.db", [_post(0, text="t", created_at="=HYPERLINK(1)",
                                                     indexed_at="@x")])
    out = tmp_path / "out"
    proc = cli("export", archive, "-o", out, "--format", "csv", "--on-bad-value", "keep",
               "--csv-formula-guard")
    assert proc.returncode == 0, proc.stderr
    [done] = export_dirs(out)
    assert (done / "posts.csv").read_bytes().endswith(
        b",t,'=HYPERLINK(1),0,0,0,0,false,,false,,,'@x\n")


def test_csv_formula_guard(tmp_path: Path) -> None:
    texts = ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tTab", "\rCR", "plain", "'quoted", "a=b", ""]
    rows = [_post(i, text=t) for i, t in enumerate(texts)]
    rows.append(_post(len(texts), cid="=cid", did="+did", reply_parent="-parent",
                      embed_type="@embed", text="ok"))
    archive = make_archive(tmp_path / "formula.db", rows)
    header = (b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,"
              b"QuoteCount,IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n")
    t = b"2024-01-01T00:00:00Z"

    def line(i: int, text: bytes, cid: bytes | None = None, did: bytes = b"did:plc:test",
             parent: bytes = b"", embed: bytes = b"") -> bytes:
        return (b"at://did:plc:test/app.bsky.feed.post/%04d," % i
                + (cid if cid is not None else b"bafyreitest%04d" % i) + b"," + did + b","
                + text + b"," + t + b",0,0,0,0,false," + parent + b",false,," + embed + b","
                + t + b"\n")

    default = header + b"".join([
        line(0, b"=1+1"), line(1, b"+cmd"), line(2, b"-2"), line(3, b"@SUM(A1)"),
        line(4, b'"\tTab"'), line(5, b'"\rCR"'), line(6, b"plain"), line(7, b"'quoted"),
        line(8, b"a=b"), line(9, b""),
        line(10, b"ok", cid=b"=cid", did=b"+did", parent=b"-parent", embed=b"@embed"),
    ])
    guarded = header + b"".join([
        line(0, b"'=1+1"), line(1, b"'+cmd"), line(2, b"'-2"), line(3, b"'@SUM(A1)"),
        line(4, b"'\tTab"), line(5, b"\"'\rCR\""), line(6, b"plain"), line(7, b"'quoted"),
        line(8, b"a=b"), line(9, b""),
        line(10, b"ok", cid=b"'=cid", did=b"'+did", parent=b"'-parent", embed=b"'@embed"),
    ])
    for extra, want in (((), default), (("--csv-formula-guard",), guarded)):
        out = tmp_path / f"out{len(extra)}"
        proc = cli("export", archive, "-o", out, "--format", "csv", *extra)
        assert proc.returncode == 0, proc.stderr
        [done] = export_dirs(out)
        assert (done / "posts.csv").read_bytes() == want
        assert json.loads((done / "manifest.json").read_bytes())["csv_formula_guard"] == \
            bool(extra)
    # The guard is for CSV only: with JSON it is a usage error, not silently ignored.
    out = tmp_path / "json"
    assert cli("export", archive, "-o", out, "--csv-formula-guard").returncode == 2
    assert not out.exists()
