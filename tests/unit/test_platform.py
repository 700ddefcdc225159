"""Every portability fallback of src/skyexport/_platform.py (and the core's no-replace
rename) runs here, on Linux, by taking the feature away: each alternative path either keeps
the same guarantee (checked with real symlinks, FIFOs, /proc files and exports) or refuses
with one clear line, exit 1, nothing published.

Whole commands run in a subprocess whose prelude removes the feature before skyexport is
imported (`del os.O_NOFOLLOW`, no `fcntl` module, no dir_fd support...), so that every call
site takes the fallback, as it would on a platform that lacks it."""

from __future__ import annotations

import errno
import json
import os
import resource
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from skyexport import _platform
from skyexport._core import rename_noreplace

from helpers.archives import make_archive
from helpers.cli import one_line_failure as _one_line_failure


def one_line_failure(proc: subprocess.CompletedProcess[str], words: str) -> None:
    _one_line_failure(proc, words, prefix="skyexport: ")


TIMEOUT = 60
URI = "at://did:plc:platform/app.bsky.feed.post/{:04d}"

# What each named feature's removal does, run before skyexport is imported.
PRELUDES = {
    "O_NOFOLLOW": "import os; del os.O_NOFOLLOW",
    "O_DIRECTORY": "import os; del os.O_DIRECTORY",
    "O_NONBLOCK": "import os; del os.O_NONBLOCK",
    "fdatasync": "import os; del os.fdatasync",
    "fcntl": "import sys; sys.modules['fcntl'] = None",
    "resource": "import sys; sys.modules['resource'] = None",
    "dir_fd": "import os; os.supports_dir_fd = set()",
    # FICLONE refused as by a file system without reflinks (ext4, tmpfs)
    "ioctl": ("import fcntl, errno\n"
              "def _no(*a):\n    raise OSError(errno.EOPNOTSUPP, 'Operation not supported')\n"
              "fcntl.ioctl = _no"),
    # /proc unreadable, as where there is none (macOS) or in a jail
    "proc_files": ("import builtins, io\n_open = builtins.open\n"
                   "def _o(f, *a, **k):\n"
                   "    if str(f).startswith('/proc/'):\n"
                   "        raise FileNotFoundError(2, 'No such file or directory', str(f))\n"
                   "    return _open(f, *a, **k)\n"
                   "builtins.open = _o"),
}


def run(without: tuple[str, ...], *args: object, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:
    prelude = "\n".join(PRELUDES[w] for w in without)
    code = (f"{prelude}\nimport sys\nfrom skyexport.cli.commands import main\n"
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd, check=False)


def media_world(tmp_path: Path) -> tuple[Path, list[str]]:
    """An archive whose media paths are a regular file, a symlink to one, a FIFO, a symlink
    to a FIFO, a directory and /proc files."""
    home = tmp_path / "home"
    (home / "media").mkdir(parents=True)
    (home / "media" / "ok.jpg").write_bytes(b"ok bytes")
    os.symlink("ok.jpg", home / "media" / "link.jpg")
    os.mkfifo(home / "media" / "fifo.jpg")
    os.symlink("fifo.jpg", home / "media" / "to-fifo.jpg")
    (home / "media" / "dir.jpg").mkdir()
    paths = ["media/ok.jpg", "media/link.jpg", "media/fifo.jpg", "media/to-fifo.jpg",
             "media/dir.jpg", "/proc/self/environ", "/proc/self/maps"]
    rows = [{"uri": URI.format(i), "created_at": f"2024-01-01 00:{59 - i:02d}:00 +0000 UTC",
             "has_media": 1} for i in range(len(paths))]
    media = [{"post_uri": URI.format(i), "file_path": p} for i, p in enumerate(paths)]
    return make_archive(home / "archive.db", rows, media_rows=media), paths


def export_media(without: tuple[str, ...], archive: Path, out: Path,
                 ) -> tuple[Path, dict[str, Any]]:
    proc = run(without, "export", archive, "-o", out, "--media", "--media-any-path", "-q",
               cwd=archive.parent)
    assert proc.returncode == 0, proc.stderr
    directory = Path(proc.stdout.splitlines()[-1])
    return directory, json.loads((directory / "manifest.json").read_bytes())


@pytest.mark.parametrize("without", [(), ("O_NOFOLLOW",), ("O_DIRECTORY",), ("fdatasync",),
                                     ("ioctl",), ("proc_files",),
                                     ("O_NOFOLLOW", "O_DIRECTORY", "fdatasync", "ioctl")],
                         ids=lambda w: "+".join(w) or "all-present")
def test_media_export_keeps_its_rules_without_the_feature(tmp_path: Path,
                                                          without: tuple[str, ...]) -> None:
    """The media copier copies the regular file (and, under the link's name, the file a
    symlink resolves to: a regular file, opened by its resolved path), skips the FIFOs
    without hanging, the directory and the /proc files, and the export verifies - with the
    feature or by its fallback."""
    archive, paths = media_world(tmp_path)
    directory, manifest = export_media(without, archive, tmp_path / "out")
    media = {e.name: Path(e.path).read_bytes() for e in os.scandir(directory / "media")
             if e.is_file(follow_symlinks=False)}
    assert media == {"ok.jpg": b"ok bytes", "link.jpg": b"ok bytes"}
    warned = {w["uri"]: w["message"] for w in manifest["warnings"]}
    assert "a FIFO" in warned[URI.format(2)] and "a FIFO" in warned[URI.format(3)]
    assert "a directory" in warned[URI.format(4)]
    for i in (5, 6):
        assert "pseudo file system" in warned[URI.format(i)], warned[URI.format(i)]
    check = run(without, "verify", directory)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("without", [(), ("O_NOFOLLOW",), ("O_DIRECTORY",)],
                         ids=lambda w: "+".join(w) or "all-present")
def test_verify_never_follows_a_link_without_the_feature(tmp_path: Path,
                                                         without: tuple[str, ...]) -> None:
    """verify reports a data file replaced by a symlink (to an identical copy: following it
    would pass), an export directory given as a symlink, and a file given as the
    directory, with or without O_NOFOLLOW / O_DIRECTORY."""
    archive = make_archive(tmp_path / "a.db", [{"uri": URI.format(0)}])
    proc = run(without, "export", archive, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr
    directory = Path(proc.stdout.splitlines()[-1])
    assert run(without, "verify", directory).returncode == 0

    os.symlink(directory, tmp_path / "link-to-export")
    check = run(without, "verify", tmp_path / "link-to-export")
    assert check.returncode == 1 and "symbolic link" in check.stderr, check.stderr
    check = run(without, "verify", directory / "posts.json")
    assert check.returncode == 1 and "not a directory" in check.stderr, check.stderr

    data = directory / "posts.json"
    copy = tmp_path / "copy.json"
    copy.write_bytes(data.read_bytes())
    data.unlink()
    os.symlink(copy, data)
    check = run(without, "verify", directory)
    assert check.returncode == 1 and "symbolic link" in check.stderr, check.stderr


def test_no_flock_refuses_the_export_in_one_line(tmp_path: Path) -> None:
    """Without flock (no `fcntl` module), an export would have no lock that ends with its
    process: refused, one line, exit 1, nothing left in OUTPUT."""
    archive = make_archive(tmp_path / "a.db", [{"uri": URI.format(0)}])
    out = tmp_path / "out"
    out.mkdir()
    proc = run(("fcntl",), "export", archive, "-o", out)
    one_line_failure(proc, "no flock(2)")
    assert list(out.iterdir()) == []
    # --output - needs no staged directory, and works.
    proc = run(("fcntl",), "export", archive, "-o", "-", "-q")
    assert proc.returncode == 0 and b"at://" in proc.stdout.encode()


def test_no_nonblock_refuses_to_open_media(tmp_path: Path) -> None:
    """Where FIFOs exist but O_NONBLOCK does not, opening a media file could hang: refused
    in one line rather than risked; an export without media still works."""
    archive, _ = media_world(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = run(("O_NONBLOCK",), "export", archive, "-o", out, "--media", "--media-any-path",
               cwd=archive.parent)
    one_line_failure(proc, "no O_NONBLOCK")
    assert list(out.iterdir()) == []
    proc = run(("O_NONBLOCK",), "export", archive, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr


def test_no_dir_fd_refuses_verify_in_one_line(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a.db", [{"uri": URI.format(0)}])
    proc = run((), "export", archive, "-o", tmp_path / "out", "-q")
    directory = Path(proc.stdout.splitlines()[-1])
    one_line_failure(run(("dir_fd",), "verify", directory), "dir_fd")


def test_the_package_imports_without_fcntl_or_resource() -> None:
    """Windows has neither module: importing skyexport and its command line must not need
    them (the features that do refuse when used, above)."""
    code = (PRELUDES["fcntl"] + "\n" + PRELUDES["resource"] + "\n"
            "import skyexport, skyexport.cli.commands, skyexport.exporter.staged, "
            "skyexport.exporter.media, skyexport.manifest.verify, skyexport.exporter.sink, "
            "skyexport.exporter.job, skyexport.sources.car.importer\n"
            "from skyexport._platform import peak_rss_bytes\n"
            "assert peak_rss_bytes() is None\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


# --- the functions themselves, on real files ----------------------------------------------

def test_open_nofollow_fallback_refuses_links_and_swaps(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "O_NOFOLLOW", 0)
    target = tmp_path / "target"
    target.write_bytes(b"t")
    os.symlink(target, tmp_path / "link")
    with pytest.raises(OSError) as info:
        _platform.open_nofollow(tmp_path / "link", os.O_RDONLY | os.O_NONBLOCK)
    assert info.value.errno == errno.ELOOP
    fd = _platform.open_nofollow(target, os.O_RDONLY | os.O_NONBLOCK)
    assert os.read(fd, 10) == b"t"
    os.close(fd)
    # Exclusive create of a new name works; over a dangling link it fails, creating nothing.
    fd = _platform.open_nofollow(tmp_path / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(FileExistsError):
        _platform.open_nofollow(tmp_path / "dangling", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert not (tmp_path / "nowhere").exists()

    # The name is swapped for a link between the lstat and the open: refused, fd closed.
    real_open = os.open

    def swapping_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path) == tmp_path / "victim":
            os.unlink(path)
            os.symlink(target, path)
        return real_open(path, *args, **kwargs)

    (tmp_path / "victim").write_bytes(b"v")
    fds_before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(OSError) as info:
        _platform.open_nofollow(tmp_path / "victim", os.O_RDONLY | os.O_NONBLOCK)
    monkeypatch.undo()
    assert info.value.errno == errno.ELOOP
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def test_open_dir_fallback_refuses_non_directories(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "O_DIRECTORY", 0)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        _platform.open_dir(tmp_path / "f")
    fd = _platform.open_dir(tmp_path)
    assert stat.S_ISDIR(os.fstat(fd).st_mode)
    os.close(fd)


def test_set_blocking_clears_o_nonblock_on_a_real_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert not os.get_blocking(fd)
        _platform.set_blocking(fd)
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


class _FakeFcntl(types.SimpleNamespace):
    """fcntl as on macOS: F_FULLFSYNC, which fails where `refuse` is set."""

    F_FULLFSYNC = 51

    def __init__(self, refuse: bool) -> None:
        super().__init__(calls=[], refuse=refuse)

    def fcntl(self, fd: int, op: int) -> int:
        self.calls.append((fd, op))
        if self.refuse:
            raise OSError(errno.ENOTSUP, "not supported")
        return 0


@pytest.mark.parametrize("name", ["fdatasync", "fsync"])
@pytest.mark.parametrize("platform", ["linux", "macos", "macos-refused", "no-fdatasync"])
def test_sync_uses_the_strongest_call_there_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               name: str, platform: str) -> None:
    """Linux: fdatasync / fsync.  macOS: F_FULLFSYNC (its fsync does not flush the drive's
    cache), fsync where the file system refuses it.  No fdatasync: fsync."""
    calls: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "fdatasync",
                        lambda fd: (calls.append("fdatasync"), real_fdatasync(fd))[1])
    fake = None
    if platform.startswith("macos"):
        fake = _FakeFcntl(refuse=platform == "macos-refused")
        monkeypatch.setattr(_platform, "fcntl", fake)
    if platform != "linux":
        monkeypatch.delattr(os, "fdatasync")  # CPython has none on macOS either
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"data")
        getattr(_platform, name)(fd)
    finally:
        os.close(fd)
    expected = {
        "linux": [name],
        "macos": [],
        "macos-refused": ["fsync"],
        "no-fdatasync": ["fsync"],
    }[platform]
    assert calls == expected
    if fake is not None:
        assert [op for _, op in fake.calls] == [_FakeFcntl.F_FULLFSYNC]


def test_peak_rss_is_bytes_on_every_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    """ru_maxrss is KiB on Linux, bytes on macOS; peak_rss_bytes is bytes on both."""
    got = _platform.peak_rss_bytes()
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert got is not None and raw * 1024 <= got <= (raw + 4096) * 1024
    monkeypatch.setattr(sys, "platform", "darwin")
    got = _platform.peak_rss_bytes()
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert got is not None and raw <= got <= raw + 4096 * 1024


def test_demo_peak_memory_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's peak-RSS line reads /proc/self/status; without /proc it falls back to
    getrusage, in MB all the same."""
    import builtins

    from skyexport.cli import demo
    with_proc = demo.own_peak_rss_mb()
    real_open = builtins.open

    def no_proc(f: Any, *a: Any, **k: Any) -> Any:
        if str(f).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(f))
        return real_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    without = demo.own_peak_rss_mb()
    peak = _platform.peak_rss_bytes()
    assert with_proc is not None and without is not None and peak is not None
    assert abs(without - peak / (1 << 20)) < 64
    assert 0.5 * with_proc < without < 4 * with_proc + 64


def test_reflink_is_refused_off_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    a = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT)
    b = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            _platform.reflink(b, a)
        assert info.value.errno == errno.ENOTSUP
    finally:
        os.close(a)
        os.close(b)


# --- the core's rename without replacing ----------------------------------------------------

def test_rename_noreplace_never_replaces(tmp_path: Path) -> None:
    """An existing empty directory (which rename(2) would replace) or file is never
    replaced; a free name is taken atomically."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "inside").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_bytes(b"f")
    for taken in ("empty", "file"):
        with pytest.raises(FileExistsError):
            rename_noreplace(src, tmp_path / taken)
    assert (src / "inside").read_bytes() == b"x"
    assert list((tmp_path / "empty").iterdir()) == []
    rename_noreplace(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "inside").read_bytes() == b"x" and not src.exists()
    with pytest.raises(FileNotFoundError):
        rename_noreplace(src, tmp_path / "again")


def test_publish_without_rename_noreplace_never_replaces(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform or file system has no rename without replace, publishing claims
    the name with mkdir first: an existing export directory of the same second is never
    replaced (-2 instead)."""
    import time

    from skyexport.exporter import staged

    def unsupported(src: Any, dst: Any) -> None:
        raise NotImplementedError("no rename without replace on this platform or file system")

    monkeypatch.setattr(staged, "rename_noreplace", unsupported)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "2024-01-01_00-00-00")
    out = tmp_path / "out"
    out.mkdir()
    (out / "2024-01-01_00-00-00").mkdir()  # an empty directory: rename(2) would replace it
    with staged.StagedDir(out) as sd:
        assert sd.path is not None
        (sd.path / "posts.json").write_bytes(b"[]")
        final = sd.publish()
    assert final == out / "2024-01-01_00-00-00-2"
    assert (final / "posts.json").read_bytes() == b"[]"
    assert list((out / "2024-01-01_00-00-00").iterdir()) == []
