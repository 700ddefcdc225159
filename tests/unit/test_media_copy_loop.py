"""The core's media copy loop (_core.MediaBatch) against the checked Python path it stands
in for, and its own SHA-256 against hashlib.

The loop finds a source with one openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) per root,
copies and hashes it without the GIL on two threads, and hands anything unusual (a symlink,
"..", a FIFO, a device, a name already taken, a missing file) back untouched.  So an export
must come out the same with the loop as without it (FAST_PATH False): the same files in
media/, the same media.sha256, the same warnings - on real symlinks, FIFOs, directories,
duplicates and name collisions.  strace shows the real system calls: openat2 per file, and
FICLONE tried once on a file system that cannot share blocks.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyexport import _core
from skyexport.exporter import media as media_mod

from helpers.archives import make_archive

LINUX = sys.platform.startswith("linux")


@pytest.mark.parametrize("accelerated", [True, False])
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), repeat=st.integers(1, 40))
def test_sha256_matches_hashlib(accelerated: bool, data: bytes, repeat: int) -> None:
    _core.testing.sha256_select(accelerated)
    try:
        blob = data * repeat
        assert _core.testing.sha256_digest(blob) == hashlib.sha256(blob).digest()
    finally:
        _core.testing.sha256_select(True)


@pytest.mark.parametrize("accelerated", [True, False])
@settings(max_examples=200, deadline=None)
@given(head=st.binary(max_size=200), stream=st.binary(max_size=3000),
       messages=st.lists(st.binary(max_size=300), max_size=12), big=st.integers(0, 3))
def test_sha256_pair_matches_hashlib(accelerated: bool, head: bytes, stream: bytes,
                                     messages: list[bytes], big: int) -> None:
    """The scan's two-stream hashing (the file's bytes beside each block's): a running
    hash left mid-block by `head`, any stream length, messages of any length (each
    message's padding at the 56-byte edge, the stream shorter or longer than the
    messages), with both block functions: the digests hashlib gives."""
    _core.testing.sha256_select(accelerated)
    try:
        stream = stream * (1 + big * 40)
        got, each = _core.testing.sha256_pair(head, stream, messages)
        assert got == hashlib.sha256(head + stream).digest()
        assert each == [hashlib.sha256(m).digest() for m in messages]
    finally:
        _core.testing.sha256_select(True)


def test_sha256_pair_block_edges() -> None:
    """The two-stream hashing with a message of every length up to 130 bytes (each
    padding edge: 55, 56, 63, 64 ...), beside streams shorter and longer than all of
    them, with both block functions."""
    blob = os.urandom(1 << 16)
    messages = [blob[i:i + n] for i, n in enumerate(range(131))]
    for accelerated in (True, False):
        _core.testing.sha256_select(accelerated)
        try:
            for head, n in [(b"", 0), (b"h", 100), (blob[:63], 64 * 40 + 5), (b"", len(blob))]:
                got, each = _core.testing.sha256_pair(head, blob[:n], messages)
                assert got == hashlib.sha256(head + blob[:n]).digest()
                assert each == [hashlib.sha256(m).digest() for m in messages]
        finally:
            _core.testing.sha256_select(True)


def test_sha256_large_and_block_edges() -> None:
    """Lengths around the 64-byte block and the 56-byte padding edge, and a large input,
    with both block functions (the SHA extensions where the CPU has them)."""
    blob = os.urandom(3 << 20)
    for accelerated in (True, False):
        _core.testing.sha256_select(accelerated)
        try:
            for n in [*range(0, 130), 1000, 4095, 4096, 4097, len(blob)]:
                assert _core.testing.sha256_digest(blob[:n]) == hashlib.sha256(blob[:n]).digest(), n
        finally:
            _core.testing.sha256_select(True)


# The bytes a file_path's name and job turn on: separators, dots, hex digits and the
# hyphen of a hash-suffixed alternative, control bytes, NUL, and a non-ASCII byte.
_PATH_BYTES = st.sampled_from(list(b"/\\.-0123456789abcdefgx") + [0, 1, 10, 31, 127, 255])


def _alternative_like() -> st.SearchStrategy[bytes]:
    """Names shaped like _place's alternatives (name-<12 or 64 hex>[.ext]), and near misses."""
    hexes = st.sampled_from(list(b"0123456789abcdef") + [ord("A"), ord("g")])
    return st.builds(
        lambda pre, stem, digits, ext: pre + stem + b"-" + digits + ext,
        st.sampled_from([b"", b"media/x/", b"a\\b\\", b"/abs/", b"\\lead"]),
        st.binary(max_size=4),
        st.one_of(*(st.lists(hexes, min_size=n, max_size=n).map(bytes)
                    for n in (11, 12, 13, 63, 64, 65))),
        st.sampled_from([b"", b".jpg", b".", b".a.b", b".j\\p", b"\n", b".jpg\n"]))


@settings(max_examples=3000, deadline=None)
@given(path=st.one_of(st.lists(_PATH_BYTES, max_size=24).map(bytes), _alternative_like(),
                      st.binary(max_size=40)))
def test_core_classifies_paths_as_the_python_reference(path: bytes) -> None:
    """The core's reading of a file_path (which rows its loop may take, from which
    spellings, and the name each asks for in media/) is media.py's _fast_job and
    _base_name, byte for byte."""
    job, name = _core.testing.media_classify(path)
    assert job == media_mod._fast_job(path)
    assert name == media_mod._base_name(path)
    assert (job, name) == media_mod._classify(path)


# --- one world of sources, placed with and without the loop ----------------------------

def _world(root: Path, outside: Path) -> list[str]:
    """Sources of every kind under `root`; the media rows' file_path values, in order."""
    def put(rel: str, data: bytes) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    put("media/ab/plain.jpg", b"plain" * 1000)
    put("media/cd/plain2.png", b"")                      # empty
    put("media/ef/big.webp", os.urandom(600_000))        # more than one read
    put("other/plain.jpg", b"another file, same name")   # a collision
    put("media/ab/dup.jpg", b"same bytes")
    put("media/cd/dup.jpg", b"same bytes")               # the same file again
    put("media/win/back.jpg", b"backslashes")
    # named as other/plain.jpg's hash-suffixed alternative would be, with other bytes
    tag = hashlib.sha256(b"another file, same name").hexdigest()[:12]
    put(f"media/alt/plain-{tag}.jpg", b"not that file")
    put("real/target.jpg", b"through a symlink")
    (outside / "secret").write_bytes(b"secret")
    os.symlink("../real/target.jpg", root / "media" / "in.jpg")
    os.symlink(outside / "secret", root / "media" / "out.jpg")
    os.symlink(root / "real", root / "media" / "dirlink")
    os.mkfifo(root / "media" / "fifo.jpg")
    os.mkdir(root / "media" / "adir.jpg")
    return ["media/ab/plain.jpg", "media/cd/plain2.png", "media/ef/big.webp",
            "other/plain.jpg", "media/ab/dup.jpg", "media/cd/dup.jpg", "media\\win\\back.jpg",
            "media/in.jpg", "media/out.jpg", "media/dirlink/target.jpg", "media/fifo.jpg",
            "media/adir.jpg", "media/missing.jpg", "media/../media/ab/plain.jpg",
            "nothere/../media/cd/plain2.png", "media/./ef/big.webp", "/dev/zero",
            str(root / "media" / "ab" / "plain.jpg"), "media/ab/", "media/a\x01b.jpg",
            "media//ab//plain.jpg", "../" * 30 + "etc/passwd", "media/ab/dup.jpg",
            f"media/alt/plain-{tag}.jpg"]


def _place(tmp: Path, roots: list[Path], paths: list[str], fast: bool,
           monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, bytes], bytes, list[tuple[str, str]],
                                                     int]:
    monkeypatch.setattr(media_mod, "FAST_PATH", fast)
    out = tmp / ("fast" if fast else "slow")
    out.mkdir()
    copier = media_mod.MediaCopier(out / "media", roots, out / "media.sha256")
    try:
        assert (copier._batch is not None) == (fast and LINUX)
        rows = [(f"at://p/{i}".encode(), b"h", os.fsencode(p)) for i, p in enumerate(paths)]
        copier.copy_rows(rows)
        copier.finish()
    finally:
        copier.close()
    files = {}
    for entry in os.scandir(out / "media"):
        assert entry.is_file(follow_symlinks=False), entry.name
        files[entry.name] = Path(entry.path).read_bytes()
    warnings = [(u, m.replace(str(out), "OUT")) for u, m in copier.warnings]
    return files, (out / "media.sha256").read_bytes(), warnings, copier.copied


def test_the_loop_places_what_the_checked_path_places(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    paths = _world(root, outside)
    roots = [tmp_path / "cwd-nothing", root]
    fast = _place(tmp_path, roots, paths, True, monkeypatch)
    slow = _place(tmp_path, roots, paths, False, monkeypatch)
    assert fast == slow
    files, sums, warnings, copied = fast
    assert files["plain.jpg"] == b"plain" * 1000
    assert files["target.jpg"] == b"through a symlink" and files["in.jpg"] == files["target.jpg"]
    assert "out.jpg" not in files and "fifo.jpg" not in files and "adir.jpg" not in files
    assert len(sums.splitlines()) == copied == len(files)
    for line in sums.splitlines():
        digest, _, name = line.partition(b"  ")
        assert hashlib.sha256(files[os.fsdecode(name)[len("media/"):]]).hexdigest() == \
            digest.decode()
    assert len(warnings) >= 8


def test_a_name_taken_in_the_batch_before_its_alternative(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """other/plain.jpg finds plain.jpg taken (an earlier batch) and would take
    plain-<tag>.jpg; a later row of its batch is literally named plain-<tag>.jpg.  One by
    one in row order, the first gets that name and the second an alternative of its own."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    paths = _world(root, outside)
    chosen = [paths[0], paths[3], paths[23]]
    monkeypatch.setattr(media_mod, "BATCH_FILES", 3)
    fast = _place(tmp_path, [root], chosen, True, monkeypatch)
    assert fast == _place(tmp_path, [root], chosen, False, monkeypatch)
    tag = hashlib.sha256(b"another file, same name").hexdigest()[:12]
    assert fast[0][f"plain-{tag}.jpg"] == b"another file, same name"


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, 23), min_size=1, max_size=40))
def test_any_order_of_rows_is_placed_alike(tmp_path_factory: pytest.TempPathFactory,
                                           monkeypatch: pytest.MonkeyPatch,
                                           picks: list[int]) -> None:
    """Rows in any order and repetition (collisions between batches and inside one; a
    batch of 3 so that rows cross batch boundaries): the same outcome either way."""
    tmp = tmp_path_factory.mktemp("order")
    root, outside = tmp / "root", tmp / "outside"
    root.mkdir()
    outside.mkdir()
    paths = _world(root, outside)
    chosen = [paths[i] for i in picks]
    monkeypatch.setattr(media_mod, "BATCH_FILES", 3)
    assert _place(tmp, [root], chosen, True, monkeypatch) == \
        _place(tmp, [root], chosen, False, monkeypatch)
    shutil.rmtree(tmp)


@pytest.mark.skipif(not LINUX, reason="openat2 and FICLONE are Linux calls")
def test_core_statuses(tmp_path: Path) -> None:
    """What the loop does itself (0: placed) and what it hands back (1), file by file."""
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (root / "m" / "a.jpg").write_bytes(b"a" * 5000)
    os.symlink("a.jpg", root / "m" / "link.jpg")
    os.mkfifo(root / "m" / "fifo.jpg")
    media = tmp_path / "media"
    media.mkdir()
    (media / "taken.jpg").write_bytes(b"x")
    mfd = os.open(media, os.O_RDONLY | os.O_DIRECTORY)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        batch = _core.MediaBatch(mfd, [-1, rfd], [])
        jobs = {
            "placed": batch.add(b"m/a.jpg", None, b"a.jpg"),
            "backslash": batch.add(b"m\\a.jpg", b"m/a.jpg", b"b.jpg"),
            "symlink": batch.add(b"m/link.jpg", None, b"link.jpg"),
            "fifo": batch.add(b"m/fifo.jpg", None, b"fifo.jpg"),
            "dir": batch.add(b"m", None, b"m"),
            "missing": batch.add(b"m/none.jpg", None, b"none.jpg"),
            "dotdot": batch.add(b"m/../m/a.jpg", None, b"c.jpg"),
            "escape": batch.add(b"../root/m/a.jpg", None, b"d.jpg"),
            "taken": batch.add(b"m/a.jpg", None, b"taken.jpg"),
        }
        batch.run()
        got = {k: batch.result(i) for k, i in jobs.items()}
    finally:
        os.close(mfd)
        os.close(rfd)
    digest = hashlib.sha256(b"a" * 5000).hexdigest()
    assert got["placed"] == (0, 0, 1, 5000, 5000, digest)
    assert got["backslash"] == (0, 0, 3, 5000, 5000, digest)   # spelling 1, root 1
    assert got["dotdot"][0] == 0 and got["dotdot"][5] == digest  # beneath the root
    for k in ("symlink", "fifo", "dir", "missing", "escape", "taken"):
        assert got[k][0] == 1 and got[k][5] is None, (k, got[k])
    assert sorted(os.listdir(media)) == ["a.jpg", "b.jpg", "c.jpg", "taken.jpg"]
    assert (media / "taken.jpg").read_bytes() == b"x"


STRACE = shutil.which("strace")


@pytest.mark.skipif(STRACE is None or not LINUX, reason="needs strace (.ci/run installs it)")
def test_one_openat2_per_file_and_ficlone_tried_once(tmp_path: Path) -> None:
    """The export's real system calls: each source opened once with openat2 beneath its
    root (no realpath, no lstat walk); on a file system without reflinks (tmp: ext4 or
    tmpfs), FICLONE fails once and is not tried again."""
    home = tmp_path / "home"
    (home / "media" / "s").mkdir(parents=True)
    n = 30
    rows, media = [], []
    for i in range(n):
        (home / "media" / "s" / f"{i}.jpg").write_bytes(b"%d" % i * 100)
        uri = f"at://did:plc:x/app.bsky.feed.post/{i:04d}"
        rows.append({"uri": uri, "created_at": f"2024-01-01 00:{59 - i:02d}:00 +0000 UTC",
                     "has_media": 1})
        media.append({"post_uri": uri, "file_path": f"media/s/{i}.jpg"})
    make_archive(home / "archive.db", rows, media_rows=media)
    log = tmp_path / "trace.txt"
    assert STRACE is not None
    proc = subprocess.run(
        [STRACE, "-f", "-qq", "-o", str(log), "-e", "trace=openat2,ioctl,readlink,lstat,"
         "newfstatat", sys.executable, "-m", "skyexport", "export", str(home / "archive.db"),
         "-o", str(tmp_path / "out"), "--media", "--media-root", str(home), "-q"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    opened = [x for x in lines if "openat2(" in x and "/s/" in x]
    assert len(opened) == n, "\n".join(opened)
    assert all("RESOLVE_BENEATH" in x and "RESOLVE_NO_SYMLINKS" in x for x in opened)
    clones = [x for x in lines if re.search(r"ioctl\(\d+, (FICLONE|0x40049409)", x)]
    copies = len(os.listdir(Path(proc.stdout.splitlines()[-1]) / "media"))
    assert copies == n
    assert len(clones) <= 1 or all("= 0" in x for x in clones), "\n".join(clones)
    # No per-file path walk: nothing stats the sources one component at a time.
    assert not [x for x in lines if "/media/s/" in x and ("lstat" in x or "newfstatat" in x)]


def _media_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "skyexport-media"]


def test_serving_threads_end_with_the_copier(tmp_path: Path) -> None:
    """The loop's threads serve from the first batch to the end of the copier, finished or
    closed after a failure (a row iterator that raises mid-batch): none outlives it, and
    what was placed before the failure is complete."""
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    for i in range(50):
        (root / "m" / f"{i}.jpg").write_bytes(b"%d" % i * 3000)
    before = len(_media_threads())

    def rows(fail_at: int | None) -> Any:
        for i in range(50):
            if i == fail_at:
                raise RuntimeError("the archive went away")
            yield (b"at://p/%d" % i, b"h", b"m/%d.jpg" % i)

    for fail_at in (None, 30):
        out = tmp_path / f"out{fail_at}"
        out.mkdir()
        copier = media_mod.MediaCopier(out / "media", [root], out / "media.sha256")
        try:
            if fail_at is None:
                copier.copy_rows(rows(None))
                copier.finish()
            else:
                with pytest.raises(RuntimeError, match="went away"):
                    copier.copy_rows(rows(fail_at))
        finally:
            copier.close()
        assert len(_media_threads()) == before
        for entry in os.scandir(out / "media"):
            i = int(entry.name.split(".")[0])
            assert Path(entry.path).read_bytes() == b"%d" % i * 3000
        if fail_at is None:
            sums = (out / "media.sha256").read_bytes().splitlines()
            assert copier.copied == len(sums) == 50
