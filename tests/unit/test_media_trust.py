"""An archive's media paths are untrusted input.

Every case is the real thing: real symlinks, FIFOs, /dev and /proc files, run through the
command line in a subprocess with a timeout (a hang fails the test, it does not stall it).
After each export: `media/` holds only regular files, each with the bytes of the regular
source file it came from, and the export verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import skyexport

from helpers.archives import make_archive

URI = "at://did:plc:trust/app.bsky.feed.post/{:04d}"
TIMEOUT = 60


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def archive_with(home: Path, paths: list[str]) -> Path:
    """home/archive.db with one post per media path, exported in this order (newest
    first)."""
    rows = [{"uri": URI.format(i), "created_at": f"2024-01-01 00:{59 - i:02d}:00 +0000 UTC",
             "has_media": 1} for i in range(len(paths))]
    media = [{"post_uri": URI.format(i), "file_path": p} for i, p in enumerate(paths)]
    return make_archive(home / "archive.db", rows, media_rows=media)


def export(archive: Path, out: Path, *extra: str, cwd: Path) -> tuple[Path, dict[str, Any]]:
    """`skyexport export --media` in a subprocess: (export dir, manifest)."""
    proc = subprocess.run([sys.executable, "-m", "skyexport", "export", str(archive), "-o",
                           str(out), "--media", "-q", *extra], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    directory = Path(proc.stdout.splitlines()[-1])
    manifest = json.loads((directory / "manifest.json").read_bytes())
    return directory, manifest


def media_of(directory: Path) -> dict[str, bytes]:
    """media/ as name -> bytes; every entry must be a regular file (not a link)."""
    out = {}
    for entry in os.scandir(directory / "media"):
        st = entry.stat(follow_symlinks=False)
        assert stat.S_ISREG(st.st_mode), f"{entry.name} is not a regular file"
        out[entry.name] = Path(entry.path).read_bytes()
    return out


def warnings_for(manifest: dict[str, Any]) -> dict[str, str]:
    return {w["uri"]: w["message"] for w in manifest["warnings"]}


def check_verifies(directory: Path) -> None:
    report = skyexport.verify(directory)
    assert report.ok, report.problems
    lines = (directory / "media.sha256").read_bytes().split(b"\n")[:-1]
    for line in lines:
        digest, _, name = line.partition(b"  ")
        data = (directory / os.fsdecode(name)).read_bytes()
        assert hashlib.sha256(data).hexdigest().encode() == digest


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """home/ holds the archive and its media; outside/ is somewhere else entirely; the
    exporter runs from cwd/, which holds nothing."""
    home, outside, cwd = tmp_path / "w" / "home", tmp_path / "outside", tmp_path / "cwd"
    for d in (home, outside, cwd):
        d.mkdir(parents=True)
    return {"home": home, "outside": outside, "cwd": cwd, "out": tmp_path / "out"}


def test_symlinked_sources(world: dict[str, Path]) -> None:
    home, outside = world["home"], world["outside"]
    put(home / "real" / "a.jpg", b"real a")
    os.makedirs(home / "media")
    os.symlink("../real/a.jpg", home / "media" / "rel.jpg")        # relative, inside
    os.symlink(home / "real" / "a.jpg", home / "media" / "abs.jpg")  # absolute, inside
    put(outside / "secret.txt", b"private")
    os.symlink(outside / "secret.txt", home / "media" / "out.jpg")  # points outside
    os.symlink("../posts.json", home / "media" / "evil.jpg")       # the export's own file
    archive = archive_with(home, ["media/rel.jpg", "media/abs.jpg", "media/out.jpg",
                                  "media/evil.jpg"])
    directory, manifest = export(archive, world["out"], "--media-root", str(home),
                                 cwd=world["cwd"])
    assert media_of(directory) == {"rel.jpg": b"real a", "abs.jpg": b"real a"}
    warned = warnings_for(manifest)
    assert "outside the lookup roots" in warned[URI.format(2)]
    assert "not found" in warned[URI.format(3)]
    assert manifest["media_count"] == 2 and manifest["warnings_total"] == 2
    check_verifies(directory)


def test_devices_fifos_and_pseudo_files_never_hang(world: dict[str, Path]) -> None:
    home = world["home"]
    os.makedirs(home / "media")
    os.symlink("/dev/zero", home / "media" / "zero.jpg")
    os.mkfifo(home / "media" / "fifo.jpg")
    os.symlink("fifo.jpg", home / "media" / "to-fifo.jpg")
    os.mkdir(home / "media" / "dir.jpg")
    put(home / "media" / "ok.jpg", b"ok")
    paths = ["media/zero.jpg", "media/fifo.jpg", "media/to-fifo.jpg", "media/dir.jpg",
             "/dev/zero", "/proc/self/environ", "/proc/self/pagemap", "/proc/self/maps",
             "/sys/kernel/mm/transparent_hugepage/enabled", "media/ok.jpg"]
    archive = archive_with(home, paths)
    # --media-any-path: the roots do not protect; the file type and file system checks must.
    directory, manifest = export(archive, world["out"], "--media-any-path",
                                 cwd=world["cwd"])
    assert media_of(directory) == {"ok.jpg": b"ok"}
    warned = warnings_for(manifest)
    for i in (0, 4):
        assert "is not a regular file" in warned[URI.format(i)] and \
            "character device" in warned[URI.format(i)]
    assert "a FIFO" in warned[URI.format(1)] and "a FIFO" in warned[URI.format(2)]
    assert "a directory" in warned[URI.format(3)]
    for i in (5, 6, 7):
        assert "pseudo file system" in warned[URI.format(i)], warned[URI.format(i)]
    if Path(paths[8]).exists():
        assert "pseudo file system" in warned[URI.format(8)]
    assert manifest["warnings_total"] == len(paths) - 1
    assert os.environ.get("HOME", "\0") not in (directory / "media.sha256").read_text()
    check_verifies(directory)


def test_confined_to_the_lookup_roots(world: dict[str, Path]) -> None:
    home, outside = world["home"], world["outside"]
    put(outside / "id_ed25519", b"-----BEGIN OPENSSH PRIVATE KEY-----")
    (outside / "id_ed25519").chmod(0o600)
    put(home / "media" / "fine.jpg", b"fine")
    put(home.parent / "beside.jpg", b"in the archive's parent")
    depth = len(home.parts)
    paths = ["/etc/passwd", "../" * depth + "etc/passwd", str(outside / "id_ed25519"),
             "media/../../../outside/id_ed25519", "media/fine.jpg", "../beside.jpg"]
    archive = archive_with(home, paths)
    directory, manifest = export(archive, world["out"], cwd=world["cwd"])
    assert media_of(directory) == {"fine.jpg": b"fine", "beside.jpg": b"in the archive's parent"}
    warned = warnings_for(manifest)
    for i in range(4):
        message = warned[URI.format(i)]
        assert "outside the lookup roots" in message and "--media-any-path" in message
    assert "/etc/passwd" in warned[URI.format(0)]
    check_verifies(directory)
    # Opting in copies them (as regular files, still never a link or a device).
    directory, manifest = export(archive, world["out"], "--media-any-path", cwd=world["cwd"])
    got = media_of(directory)
    assert got["id_ed25519"].startswith(b"-----BEGIN") and "passwd" in got
    assert manifest["warnings_total"] == 0 or all(
        "taken by a different file" in w["message"] for w in manifest["warnings"])
    check_verifies(directory)


def test_media_root_symlink_resolves_like_any_root(world: dict[str, Path]) -> None:
    # A root given through a symlink (a common ~/archive -> /mnt/disk/archive) still counts.
    real = world["outside"] / "disk"
    put(real / "media" / "a.jpg", b"on the disk")
    link = world["cwd"] / "archive-link"
    os.symlink(real, link)
    archive = archive_with(world["home"], ["media/a.jpg"])
    directory, manifest = export(archive, world["out"], "--media-root", str(link),
                                 cwd=world["cwd"])
    assert media_of(directory) == {"a.jpg": b"on the disk"}
    assert manifest["warnings_total"] == 0


def test_every_row_is_exported_or_warned(world: dict[str, Path]) -> None:
    # When `photo.jpg` is taken by another file and so is its hash-suffixed
    # alternative, the file was dropped without a word.
    home = world["home"]
    b = b"content B"
    tag = hashlib.sha256(b).hexdigest()
    put(home / "a" / "photo.jpg", b"content A")
    put(home / "c" / f"photo-{tag[:12]}.jpg", b"content C, unrelated")
    put(home / "b" / "photo.jpg", b)
    put(home / "d" / "photo.jpg", b)             # B again: the same file, nothing to say
    archive = archive_with(home, ["a/photo.jpg", f"c/photo-{tag[:12]}.jpg", "b/photo.jpg",
                                  "d/photo.jpg"])
    directory, manifest = export(archive, world["out"], "--media-root", str(home),
                                 cwd=world["cwd"])
    got = media_of(directory)
    assert got == {"photo.jpg": b"content A", f"photo-{tag[:12]}.jpg": b"content C, unrelated",
                   f"photo-{tag}.jpg": b}
    assert manifest["media_count"] == 3
    (warning,) = manifest["warnings"]
    assert warning["uri"] == URI.format(2) and f"photo-{tag}.jpg" in warning["message"]
    check_verifies(directory)


def test_never_more_than_fstat_said(tmp_path: Path) -> None:
    # A source that grows while it is copied: the copy holds the size fstat gave, and its
    # digest is of those bytes.  (A real growing file: another process appends to it.)
    from skyexport.exporter.media import MediaCopier

    src = put(tmp_path / "grow.jpg", b"x" * 100)
    export_dir = tmp_path / "e"
    export_dir.mkdir()
    copier = MediaCopier(export_dir / "media", [tmp_path], export_dir / "sums")
    fd, st, real = copier._open_source(str(src))
    try:
        with open(src, "ab") as f:
            f.write(b"y" * 5000)
        copier._place(fd, st, real, "grow.jpg", "at://p")
    finally:
        os.close(fd)
        copier.finish()
    assert (export_dir / "media" / "grow.jpg").read_bytes() == b"x" * 100
    line = (export_dir / "sums").read_bytes()
    assert line == hashlib.sha256(b"x" * 100).hexdigest().encode() + b"  media/grow.jpg\n"
