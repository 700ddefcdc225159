"""Hostile repository CARs (tests/helpers/hostile.py builds them): none costs more than its size.
Each runs the real command in a child process that reports its peak RSS (VmHWM) and the
bytes it read (rchar, /proc/self/io): peak <= 64 MB, and the bytes read bounded by a
multiple of the file's size (the work is linear in it; compared at two sizes where a
quadratic reader would show).  Bad input is one line, exit 1, nothing created."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from skyexport import _core
from skyexport.errors import ArchiveError
from skyexport.testing.carwrite import Link, synth_car

from helpers.cli import error_line as one_line
from helpers.cli import run
from helpers.hostile import (
    POST,
    Car,
    big_record,
    control_did,
    damaged_copies,
    deep_record,
    fat_left_path,
    fat_path,
    long_did,
    long_key,
    many_embeds,
    no_t,
    post,
    posts_in_a_left_subtree,
    reused_chain,
    shared_big_record,
    tid,
    unordered_in_node,
)

LINUX = Path("/proc/self/io").exists() and Path("/proc/self/status").exists()
needs_proc = pytest.mark.skipif(not LINUX, reason="reads /proc/self/io and /proc/self/status")
# Under AddressSanitizer (fuzz/run.sh asan-test) memory is ASan's: the peaks are not ours.
PEAK_MB = 64 if not os.environ.get("SKYEXPORT_SANITIZED") else 1 << 20

# The command in a child that reports, on its last stderr line, its peak RSS (kB) and the
# bytes it read after start-up.
CHILD = '''import sys
from skyexport.cli import main
def rchar():
    return int([l for l in open("/proc/self/io") if l.startswith("rchar")][0].split()[1])
r0 = rchar()
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
sys.stderr.write(f"\\n@@ {hwm} {rchar() - r0}\\n")
sys.stderr.flush()
import os
os._exit(rc or 0)
'''


class Run:
    def __init__(self, p: subprocess.CompletedProcess[str]) -> None:
        err, _, tail = p.stderr.rpartition("\n@@ ")
        hwm, read = tail.split()
        self.code = p.returncode
        self.stdout = p.stdout
        self.stderr = err
        self.peak_mb = int(hwm) / 1024
        self.read = int(read)


def measured(*args: object, cwd: Path | None = None) -> Run:
    p = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True,
                       text=True, timeout=300, cwd=cwd)
    assert "\n@@ " in p.stderr, p.stderr
    return Run(p)


def three_commands(car: Path, tmp: Path) -> dict[str, Run]:
    return {"info": measured("info", car),
            "import": measured("import", car, "--archive", tmp / f"{car.stem}.db"),
            "export": measured("export", car, "-o", tmp / f"{car.stem}-out", "--format",
                               "jsonl", "--progress", "none")}


def refused_by_all(car: Path, tmp: Path, *needles: str) -> dict[str, Run]:
    runs = three_commands(car, tmp)
    for cmd, r in runs.items():
        assert r.code == 1, (cmd, r.stderr)
        one_line(r.stderr, *needles)
        assert r.peak_mb <= PEAK_MB, (cmd, r.peak_mb)
    assert not (tmp / f"{car.stem}.db").exists()
    assert not (tmp / f"{car.stem}-out").exists()
    return runs


# --- memory: strings, blocks, batches and paths ----------------------------------------

@needs_proc
@pytest.mark.parametrize("case, needles", [
    ("did", ("`did` of 1048584 bytes", "at most 2048")),
    ("key", ("key of 1048595 bytes", "at most 830")),
    ("block", ("is 20971719 bytes", "at most 5 MiB per block")),
])
def test_amplifying_cars_are_refused_in_flat_memory(case: str, needles: tuple[str, ...],
                                                    tmp_path: Path) -> None:
    """A 1 MiB DID, a 1 MiB MST key whose prefix 300 keys reuse, a 20 MiB record: refused
    in one line by info, import and export, each under 64 MB (an unguarded reader: 280 to
    408 MB)."""
    data = {"did": lambda: long_did(300, 1 << 20), "key": lambda: long_key(300, 1 << 20),
            "block": lambda: big_record(20 << 20)}[case]()
    car = tmp_path / f"{case}.car"
    car.write_bytes(data)
    del data
    refused_by_all(car, tmp_path, *needles)


@needs_proc
@pytest.mark.parametrize("case", ["big", "embeds", "path", "left_path"])
def test_large_records_within_the_limits_stay_flat(case: str, tmp_path: Path) -> None:
    """A post of 900 KB whose embed escapes to 5.4 MB of JSON; 300 posts with 50 KB
    embeds (15 MB of CAR, 90 MB of JSON); an MST path of 40 nodes of 1.2 MB each (47 MB),
    down their last entries or down their left subtrees (the walk comes back to each):
    every command succeeds under 64 MB (batches are sized by bytes as well as rows; the
    walk holds at most 4 MiB of its path, plus the node it reads -- an unguarded reader:
    67 to 114 MB)."""
    car = tmp_path / f"{case}.car"
    car.write_bytes({"big": lambda: big_record(900_000),
                     "embeds": lambda: many_embeds(300, 50_000),
                     "path": lambda: fat_path(40, 1_200_000),
                     "left_path": lambda: fat_left_path(40, 1_200_000)}[case]())
    posts = 300 if case == "embeds" else 1
    runs = three_commands(car, tmp_path)
    for cmd, r in runs.items():
        assert r.code == 0, (cmd, r.stderr)
        assert r.peak_mb <= PEAK_MB, (cmd, r.peak_mb)
    con = sqlite3.connect(tmp_path / f"{case}.db")
    assert con.execute("SELECT count(*) FROM posts").fetchone()[0] == posts
    (out,) = (tmp_path / f"{case}-out").iterdir()
    assert sum(1 for _ in open(out / "posts.jsonl", "rb")) == posts


def test_limits_at_their_edges(tmp_path: Path) -> None:
    """A DID of 2048 bytes, a record key of 512 and a collection of 317 are read; one
    more byte of any is refused; so is a record of more than 1 MiB."""
    def car_with(did: str = "did:plc:x", key: str = POST + "k",
                 rec: dict[str, Any] | None = None) -> Path:
        c = Car()
        link = c.add(rec or post())
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.car"
        path.write_bytes(c.finish(c.node([(key, link, None)]), did=did))
        return path

    ok_did = "did:plc:" + "a" * (2048 - 8)
    r = run("info", "--json", car_with(did=ok_did))
    assert r.returncode == 0 and ok_did in r.stdout, r.stderr
    one_line(run("info", car_with(did=ok_did + "a")).stderr, "2049 bytes", "at most 2048")
    assert run("info", car_with(key=POST + "r" * 512)).returncode == 0
    one_line(run("info", car_with(key=POST + "r" * 513)).stderr, "record key of 1 to 512")
    coll = ".".join(c * 63 for c in "abcd") + ".e" + "e" * 60    # 317 bytes
    assert len(coll) == 317
    assert run("info", car_with(key=coll + "/r")).returncode == 0
    one_line(run("info", car_with(key=coll + "e/r")).stderr, "NSID of 1 to 317")
    one_line(run("info", car_with(key=POST)).stderr, "not COLLECTION/RKEY")
    # atproto's NSID and record-key syntax
    for bad in (POST + "alpha/beta", POST + ".", POST + "..", "a.b/x",
                "1a.b.c/x", "a.b.-c/x", "a.b.1c/x", "a..b.c/x"):
        one_line(run("info", car_with(key=bad)).stderr, "not COLLECTION/RKEY")
    for good in (POST + "a.-_:~Z9", "a-b.c.d/x", "a.b.cD9/..."):
        assert run("info", car_with(key=good)).returncode == 0, good
    big = car_with(rec=post("x" * (1 << 20)))
    one_line(run("import", big, "--archive", tmp_path / "big.db").stderr,
             "atproto records are at most 1 MiB", "record app.bsky.feed.post/k")


# --- work: each block judged once, each node visited a bounded number of times ----------

@needs_proc
def test_damaged_copies_are_judged_once(tmp_path: Path) -> None:
    """n post keys share one record CID, with n damaged copies of its block before the
    good one: each copy is read and hashed once, not once per key (which is n^2)."""
    read = {}
    for n in (300, 600):
        car = tmp_path / f"d{n}.car"
        car.write_bytes(damaged_copies(n))
        r = measured("info", car)
        assert r.code == 0, r.stderr
        assert f"posts: {n}" in r.stdout
        size = car.stat().st_size
        assert r.read <= 4 * size + (4 << 20), (n, r.read, size)
        read[n] = r.read
    # doubling the file at most about doubles the bytes read (a quadratic reader: x4)
    assert read[600] - read[300] <= 1.5 * (read[300] + (1 << 20)), read


@needs_proc
@pytest.mark.parametrize("end_with_key", [False, True])
def test_a_reused_subtree_is_refused_early(end_with_key: bool, tmp_path: Path) -> None:
    """20,000 keys whose right subtrees all point at one chain of 120 empty nodes: an
    empty node below the root is refused where it is first read; a chain ending in a key
    is refused at its second visit (the key repeats).  Bytes read stay within a few
    times the file's size (an unguarded reader walks 2.4 million nodes)."""
    car = tmp_path / "chain.car"
    car.write_bytes(reused_chain(20_000, 120, end_with_key))
    r = measured("info", car)
    assert r.code == 1
    one_line(r.stderr, "out of order" if end_with_key else "empty MST node below the root")
    assert r.read <= 4 * car.stat().st_size + (4 << 20)


@needs_proc
def test_a_record_shared_by_many_keys_has_a_budget(tmp_path: Path) -> None:
    """Keys may share a record (identical records share a CID), but 4,000 keys reading
    one record of 20 KB would read 80 MB from a 300 KB file: the walk stops once it has
    read 8 times the file's size and 8 MiB, and says why.  Honest repositories read each
    block about once (the real ones in tests/car are read whole, above)."""
    car = tmp_path / "shared.car"
    car.write_bytes(shared_big_record(4000, 20_000))
    size = car.stat().st_size
    r = measured("info", car)
    assert r.code == 1
    one_line(r.stderr, "reuses a subtree or a record many times")
    assert r.read <= 8 * size + (8 << 20) + 4 * size + (4 << 20)
    # the budget counts per file: the same sharing in a smaller measure is read
    small = tmp_path / "small.car"
    small.write_bytes(shared_big_record(40, 20_000))
    assert run("info", small).returncode == 0


def test_walk_budget_is_proportional_to_the_file(tmp_path: Path) -> None:
    """The walk's budget (a test hook: CarWalker.budget) is 8 times the file's size and
    8 MiB, and each block read spends its bytes and 64 more; an honest walk spends about
    the file's size."""
    from skyexport.sources.car.repo import CarRepo

    car = tmp_path / "s.car"
    synth_car(car, 200, seed=1)
    with CarRepo(car, tmp_path) as repo:
        assert repo.index is not None
        w = _core.CarWalker(repo.fd, repo.index, repo.data, repo.did, True)
        while w.rows(1000, ""):
            pass
        spent = 8 * car.stat().st_size + (8 << 20) - w.budget
        assert w.blocks_read == 200 + w.nodes_read
        # an honest tree's path fits in memory: no node is read twice
        assert w.nodes_reread == 0
        assert 100 * w.blocks_read < spent <= 2 * car.stat().st_size


def test_walk_reads_again_only_a_path_over_its_bound(tmp_path: Path) -> None:
    """A path of 1.2 MB nodes, each the left subtree of the one above: the walk holds at
    most 4 MiB of the path, so coming back up it reads again (checked, and spending its
    budget) the nodes it dropped -- the ones nearest the root -- and no others."""
    from skyexport.sources.car.repo import CarRepo

    for depth, reread in ((3, 0), (10, 7)):
        car = tmp_path / f"left{depth}.car"
        car.write_bytes(fat_left_path(depth, 1_200_000))
        with CarRepo(car, tmp_path) as repo:
            assert repo.index is not None
            w = _core.CarWalker(repo.fd, repo.index, repo.data, repo.did, False)
            keys = w.entries(1 << 20)
            assert w.entries(10) == []
            assert len(keys) == depth * (1_200_000 // 560) + 1
            assert keys[0][0].startswith("app.bsky.feed.post/")
            assert (w.nodes_read, w.nodes_reread) == (depth + 1, reread)


# --- order: every walk reads every node -----------------------------------------------

@pytest.mark.parametrize("case", ["in_node", "left_subtree"])
def test_no_partial_export_of_a_damaged_tree(case: str, tmp_path: Path) -> None:
    """Keys out of order inside one node (post/3ka, threadgate/x, post/3kz), and posts in
    the left subtree of a node whose first key is a like: info, import and export all
    refuse (none exports some of the posts with exit 0)."""
    car = tmp_path / f"{case}.car"
    car.write_bytes(unordered_in_node() if case == "in_node" else posts_in_a_left_subtree())
    for args in (["info"], ["import", "--archive", tmp_path / "a.db"],
                 ["export", "-o", tmp_path / "out", "--format", "jsonl"]):
        r = run(args[0], car, *args[1:])
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        one_line(r.stderr, "out of order")
    assert not (tmp_path / "a.db").exists() and not (tmp_path / "out").exists()


def test_an_entry_without_t_is_malformed_whatever_the_environment(tmp_path: Path) -> None:
    """atproto's MST entries always carry `t` (null when empty): one without it is
    malformed; there is one MST reader, and the environment variable that once chose a
    second one (SKYEXPORT_CAR_READER=python) changes nothing."""
    car = tmp_path / "not.car"
    car.write_bytes(no_t())
    for env in ({}, {"SKYEXPORT_CAR_READER": "python"}):
        r = run("import", car, "--archive", tmp_path / "a.db",
                env=dict(os.environ, **env))
        one_line(r.stderr, "malformed entry")
        assert not (tmp_path / "a.db").exists()


# --- nesting and the C stack -------------------------------------------------------------

def test_deep_nesting_is_refused_with_a_small_stack(tmp_path: Path) -> None:
    """A record nested 9,990 deep is refused in one line under `ulimit -s 1024` (an
    unguarded recursive decoder crashes there); 60 levels still decode."""
    car = tmp_path / "deep.car"
    car.write_bytes(deep_record(9990))
    r = subprocess.run(["sh", "-c", 'ulimit -s 1024 && exec "$0" -m skyexport info "$1"',
                        sys.executable, str(car)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    one_line(r.stderr, "nests deeper than 64 levels")
    ok = tmp_path / "ok.car"
    ok.write_bytes(deep_record(60))
    assert run("info", ok).returncode == 0


def test_deep_nesting_from_a_thread_with_a_small_stack() -> None:
    """Through the Python API on a thread with a 256 KiB stack: 64 levels decode, 9,990
    are refused (in a child process: a crash must not take the test run with it)."""
    code = '''
import threading
from skyexport import _core
out = []
def work():
    for depth in (63, 9990):
        data = b"\\x81" * depth + b"\\x01"
        try:
            _core.testing.cbor_to_json(data)
            _core.testing.post_fields(b"\\xa1\\x62zz" + data)
            out.append("ok")
        except ValueError as exc:
            out.append(str(exc))
threading.stack_size(256 * 1024)
t = threading.Thread(target=work)
t.start()
t.join()
print(out)
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.strip() == "['ok', 'nests deeper than 64 levels']"


# --- files: FIFOs, growth, full disks, directories ------------------------------------------

@pytest.mark.parametrize("cmd", ["info", "import", "export"])
def test_a_fifo_is_refused_without_hanging(cmd: str, tmp_path: Path) -> None:
    fifo = tmp_path / "repo.car"
    os.mkfifo(fifo)
    args = {"info": [], "import": ["--archive", tmp_path / "a.db"],
            "export": ["-o", tmp_path / "out"]}[cmd]
    r = subprocess.run([sys.executable, "-m", "skyexport", cmd, str(fifo), *map(str, args)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    one_line(r.stderr, str(fifo))
    assert "regular file" in r.stderr or "not a" in r.stderr


def test_a_growing_car_is_hashed_as_indexed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes appended while the CAR is read are neither indexed nor hashed: the size and
    SHA-256 reported are those of the file as it was opened."""
    import skyexport.sources.car.repo as carmod

    car = tmp_path / "g.car"
    synth_car(car, 50, seed=2)
    original = car.read_bytes()
    extra = Car()
    extra.add(post("appended"))
    _, frame = extra.finish(extra.node([])).split(b"version\x01", 1)
    real = carmod._read_header

    def growing(fd: int) -> Any:
        with open(car, "ab") as f:
            f.write(frame * 200)
        return real(fd)

    monkeypatch.setattr(carmod, "_read_header", growing)
    with carmod.CarRepo(car, tmp_path) as repo:
        assert repo.size == len(original)
        assert repo.sha256 == hashlib.sha256(original).hexdigest()
        assert repo.stats.blocks == len(_frames(original))


def _frames(raw: bytes) -> list[int]:
    n, used = _core.read_uvarint(raw)
    pos, out = used + n, []
    while pos < len(raw):
        ln, k = _core.read_uvarint(raw, pos)
        out.append(pos)
        pos += k + ln
    return out


def test_a_full_disk_names_the_block_index(tmp_path: Path) -> None:
    """No space for the block index (RLIMIT_FSIZE, so writes past 32 KiB fail with
    EFBIG) is blamed on the index's temporary file and its disk, not on the CAR."""
    import resource

    car = tmp_path / "repo.car"
    synth_car(car, 1000, seed=4)   # about 3,300 blocks: 66 KB of index

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))

    r = subprocess.run([sys.executable, "-m", "skyexport", "info", str(car)],
                       capture_output=True, text=True, timeout=60, preexec_fn=small_files)
    line = one_line(r.stderr, "block index", "temporary file in", str(tmp_path),
                    "File too large", "free space on that disk")
    assert "reading failed" not in line and r.returncode == 1


def test_a_failed_import_removes_the_directories_it_made(tmp_path: Path) -> None:
    car = tmp_path / "bad.car"
    car.write_bytes(unordered_in_node())
    r = run("import", car, "--archive", tmp_path / "a" / "b" / "c" / "archive.db")
    assert r.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.car"]
    # directories that were there before stay
    (tmp_path / "kept").mkdir()
    r = run("import", car, "--archive", tmp_path / "kept" / "x" / "archive.db")
    assert r.returncode == 1
    assert list((tmp_path / "kept").iterdir()) == []


# --- messages ---------------------------------------------------------------------------

def test_control_characters_in_a_did_are_never_printed(tmp_path: Path) -> None:
    car = tmp_path / "c.car"
    car.write_bytes(control_did("did:plc:\x1b[31mred\nline\x00"))
    for args in (["info"], ["import", "--archive", tmp_path / "a.db"]):
        r = run(args[0], car, *args[1:])
        line = one_line(r.stderr, "not a DID")
        assert "\x1b" not in r.stderr and "\x00" not in r.stderr
        assert "\\x1b[31mred\\nline\\x00" in line
        assert r.stdout == ""
    for bad in ("did:plc:", "did:PLC:x", "did:plc:x%", "did:plc:é", "xdid:plc:x"):
        car.unlink()
        car.write_bytes(control_did(bad))
        one_line(run("info", car).stderr, "not a DID")


def test_merge_into_a_locked_archive_says_it_is_locked(tmp_path: Path) -> None:
    good = tmp_path / "good.car"
    c = Car()
    link = c.add(post())
    good.write_bytes(c.finish(c.node([(POST + tid(1), link, None)])))
    db = tmp_path / "a.db"
    assert run("import", good, "--archive", db).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        r = run("import", good, "--archive", db, "--merge")
        one_line(r.stderr, "is locked by another program", "--merge")
        assert "not a readable SQLite database" not in r.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def big_car(tmp_path_factory: pytest.TempPathFactory) -> Path:
    car = tmp_path_factory.mktemp("term") / "repo.car"
    synth_car(car, 10_000, seed=6)
    return car


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="watches /proc/PID/fd")
@pytest.mark.parametrize("cmd", ["info", "import"])
def test_sigterm_during_import_or_info(cmd: str, big_car: Path, tmp_path: Path) -> None:
    """SIGTERM while the CAR is being read (its block index is open): import says that
    nothing was imported, info only that it was terminated; neither says "exported"."""
    args = ["--archive", str(tmp_path / "a.db")] if cmd == "import" else []
    p = subprocess.Popen([sys.executable, "-m", "skyexport", cmd, str(big_car), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fds = Path(f"/proc/{p.pid}/fd")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if any("car-index" in os.readlink(f) for f in fds.iterdir()):
                break
        except OSError:
            pass
        time.sleep(0.002)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the command finished before the signal")
    assert p.returncode == 143, err
    assert "exported" not in err
    expected = ("skyexport: terminated; nothing was imported (the archive is as it was)\n"
                if cmd == "import" else "skyexport: terminated\n")
    assert err == expected
    assert not (tmp_path / "a.db").exists()


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"),
                                            (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_the_records_are_read_ahead(sig: int, code: int, word: str,
                                                   big_car: Path, tmp_path: Path) -> None:
    """A signal once the records files are open (the walk and its read-ahead thread
    running): the export stops at once with its one line, nothing published, no hidden
    directory left."""
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "skyexport", "export", str(big_car), "-o",
                          str(out), "--format", "jsonl", "--collections", "all", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if any(out.glob("*/records/*.jsonl")) or any(out.glob(".*/records/*.jsonl")):
            break
        time.sleep(0.001)
    p.send_signal(sig)
    t = time.monotonic()
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the export finished before the signal")
    assert p.returncode == code, err
    assert time.monotonic() - t < 5
    assert err == f"skyexport: {word}; nothing was exported\n"
    assert list(out.iterdir()) == []


# --- the posts-only and the full walk agree, on generated trees ---------------------------

COLLS = ["app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.feed.threadgate",
         "app.bsky.graph.follow"]


def _walk_both(car: Path, tmp: Path) -> list[Any]:
    """(posts, or the error) of the posts-only and the full walk."""
    from skyexport.sources.car.repo import CarRepo

    out: list[Any] = []
    for posts_only in (True, False):
        try:
            with CarRepo(car, tmp) as repo:
                out.append(sorted(r[0] for r in repo.post_rows("", posts_only=posts_only)))
        except ArchiveError as exc:
            out.append(str(exc))
    return out


def test_posts_only_and_full_walks_agree_on_generated_trees(tmp_path: Path) -> None:
    """Random two-level trees with keys of four collections, shuffled or not, with posts
    placed anywhere (in left subtrees, between likes): the posts-only walk of import and
    export and the full walk of info accept and refuse the same trees, and read the same
    posts when they accept."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    key = st.tuples(st.sampled_from(COLLS), st.integers(0, 30)).map(
        lambda t: f"{t[0]}/3k{t[1]:03d}")
    counter = iter(range(10**9))

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(top=st.lists(key, min_size=1, max_size=5, unique=True),
           subs=st.lists(st.lists(key, max_size=4, unique=True), min_size=6, max_size=6),
           shuffle=st.booleans(), seed=st.integers(0, 1000))
    def check(top: list[str], subs: list[list[str]], shuffle: bool, seed: int) -> None:
        import random

        rng = random.Random(seed)
        allkeys = set(top)
        if not shuffle:
            top = sorted(top)
        c = Car()
        rec = c.add(post())
        sub_links: list[Link | None] = []
        for s in subs[:len(top) + 1]:
            s = [k for k in s if k not in allkeys]
            allkeys.update(s)
            if not shuffle:
                s = sorted(s)
            sub_links.append(c.node([(k, rec, None) for k in s]) if s and rng.random() < 0.7
                             else None)
        while len(sub_links) < len(top) + 1:
            sub_links.append(None)
        root = c.node([(k, rec, sub_links[i + 1]) for i, k in enumerate(top)],
                      left=sub_links[0])
        car = tmp_path / f"g{next(counter)}.car"
        car.write_bytes(c.finish(root))
        pruned, full = _walk_both(car, tmp_path)
        if isinstance(full, str) or isinstance(pruned, str):
            assert isinstance(full, str) and isinstance(pruned, str), (pruned, full)
        else:
            assert pruned == full
        car.unlink()

    check()
