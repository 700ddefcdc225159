"""The copied media files' data is on stable storage before the export is published.

A power loss right after the final rename must not leave media files of length 0 (ext4's
delayed allocation writes data later than names).  The export runs in a subprocess under
strace, which records the real system calls with the paths of their descriptors (`-y`): one
syncfs(2) of the export's file system before the rename where it exists, else an fsync of
every media file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.archives import make_archive

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed "
                                "(.ci/run installs it)")

URI = "at://did:plc:sync/app.bsky.feed.post/{:04d}"
FILES = 12
# Runs the command line in this interpreter; the argument `fallback` first takes syncfs
# away (as on a system without it), so that the file-by-file path runs.
DRIVER = ("import sys\n"
          "import skyexport.exporter.staged as staged\n"
          "if sys.argv[1] == 'fallback':\n"
          "    staged.SYNCFS = None\n"
          "from skyexport.cli import main\n"
          "sys.exit(main(sys.argv[2:]))\n")


def _world(tmp_path: Path) -> tuple[Path, list[str]]:
    home = tmp_path / "home"
    (home / "media").mkdir(parents=True)
    names = []
    for i in range(FILES):
        name = f"img{i:02d}.jpg"
        (home / "media" / name).write_bytes(bytes([i]) * (1000 + 4096 * i))
        names.append(name)
    rows = [{"uri": URI.format(i), "created_at": f"2024-01-01 00:{59 - i:02d}:00 +0000 UTC",
             "has_media": 1} for i in range(FILES)]
    media = [{"post_uri": URI.format(i), "file_path": f"media/{n}"}
             for i, n in enumerate(names)]
    make_archive(home / "archive.db", rows, media_rows=media)
    return home, names


def _traced(tmp_path: Path, mode: str) -> tuple[Path, list[str]]:
    home, names = _world(tmp_path)
    out = tmp_path / "out"
    log = tmp_path / f"strace-{mode}.txt"
    assert STRACE is not None
    proc = subprocess.run(
        [STRACE, "-f", "-y", "-qq", "-o", str(log), "-e",
         "trace=syncfs,fsync,fdatasync,rename,renameat,renameat2,openat",
         sys.executable, "-c", DRIVER, mode, "export", str(home / "archive.db"), "-o", str(out),
         "--media", "--media-root", str(home), "-q"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    directory = Path(proc.stdout.splitlines()[-1])
    assert sorted(p.name for p in (directory / "media").iterdir()) == names
    return directory, log.read_text().splitlines()


def _publish_index(lines: list[str], directory: Path) -> int:
    """The line of the rename that published `directory`."""
    for i, line in enumerate(lines):
        if re.search(r"\brename(at2?)?\(", line) and str(directory) in line and "= 0" in line:
            return i
    raise AssertionError("no rename to the export directory:\n" + "\n".join(lines))


def test_syncfs_before_the_rename(tmp_path: Path) -> None:
    directory, lines = _traced(tmp_path, "syncfs")
    publish = _publish_index(lines, directory)
    synced = [i for i, line in enumerate(lines)
              if re.search(r"\bsyncfs\(\d+<[^>]*/media>\) = 0", line)]
    assert synced and synced[0] < publish, "\n".join(lines)
    # The last syncfs before the rename comes after every media file was created (the
    # ones media.MediaCopier's flusher makes while the files are copied do not count).
    created = [i for i, line in enumerate(lines)
               if re.search(r'openat\(\d+<[^>]*/media>, "img\d\d\.jpg", [^)]*O_CREAT', line)]
    assert len(created) == FILES, "\n".join(lines)
    assert max(i for i in synced if i < publish) > max(created), "\n".join(lines)
    # One call for the whole file system: no file-by-file fsync of the media files.
    assert not [line for line in lines if re.search(r"fsync\(\d+<[^>]*/media/img", line)]


def test_without_syncfs_every_media_file_is_fsynced(tmp_path: Path) -> None:
    directory, lines = _traced(tmp_path, "fallback")
    publish = _publish_index(lines, directory)
    assert not [line for line in lines if "syncfs(" in line]
    synced = set()
    for line in lines[:publish]:
        m = re.search(r"\bfsync\(\d+<[^>]*/media/(img\d\d\.jpg)>\) = 0", line)
        if m:
            synced.add(m.group(1))
    assert synced == {f"img{i:02d}.jpg" for i in range(FILES)}, "\n".join(lines)
