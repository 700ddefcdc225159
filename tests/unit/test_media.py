"""--media: the media of exported posts copied to EXPORT/media/<basename>,
streamed per batch, duplicates once, misses as warnings, never a byte outside the export
directory whatever `file_path` says."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import skyexport
import skyexport.exporter.media as media_mod
from skyexport import ExportProgress

from helpers.archives import make_archive

URI = "at://did:plc:test/app.bsky.feed.post/{:04d}"


def stamp(i: int) -> str:
    """created_at of post i: post 0 is the newest (exported first)."""
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(1_700_000_000 - i * 86400))


def build(tmp: Path, posts: list[dict[str, Any]], media: list[tuple[int, str]],
          name: str = "archive.db") -> Path:
    """An archive in tmp/data/ with these posts (uri, created_at and has_media=1 filled in
    unless given) and media rows (post index, file_path)."""
    rows = []
    for i, p in enumerate(posts):
        row = {"uri": URI.format(i), "created_at": stamp(i), "has_media": 1}
        row.update(p)
        rows.append(row)
    media_rows = [{"hash": f"bafkrei{k:04d}", "post_uri": URI.format(i), "file_path": fp}
                  for k, (i, fp) in enumerate(media)]
    (tmp / "data").mkdir(exist_ok=True)
    return make_archive(tmp / "data" / name, rows, media_rows=media_rows)


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_files(export_dir: Path) -> dict[str, bytes]:
    d = export_dir / "media"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def sums(export_dir: Path) -> dict[str, str]:
    out = {}
    for line in (export_dir / "media.sha256").read_bytes().decode(
            "utf-8", "surrogateescape").split("\n")[:-1]:
        digest, _, name = line.partition("  ")
        out[name] = digest
    return out


def tree(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
            for f in fs}


def run(archive: Path, out: Path, **options: Any) -> skyexport.ExportResult:
    options.setdefault("media", True)
    result = skyexport.export(archive, out, **options)
    report = skyexport.verify(result.directory)
    assert report.ok, report.problems
    return result


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a directory that holds nothing, so only the archive's roots resolve."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def test_copies_media_of_exported_posts(tmp_path: Path, elsewhere: Path) -> None:
    data = tmp_path / "data"
    a = put(data / "media" / "ab" / "bafkreia.jpg", b"\xff\xd8 image a")
    b = put(data / "media" / "cd" / "bafkreib.png", b"\x89PNG image b")
    c = put(data / "media" / "cd" / "bafkreic.webp", b"RIFF image c")
    arc = build(tmp_path, [{}, {}, {}], [(0, "media/ab/bafkreia.jpg"),
                                         (1, "media/cd/bafkreib.png"),
                                         (1, "media/cd/bafkreic.webp")])
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", on_progress=events.append)
    got = media_files(result.directory)
    assert got == {"bafkreia.jpg": a.read_bytes(), "bafkreib.png": b.read_bytes(),
                   "bafkreic.webp": c.read_bytes()}
    assert sums(result.directory) == {f"media/{n}": sha(v) for n, v in got.items()}
    # the third post has has_media but no media row: said once, with the count
    assert result.media_count == 3 and result.warnings_total == 1
    assert [(w.uri, w.message) for w in result.warnings] == [
        ("", "1 exported post(s) have has_media but no rows in the archive's media "
             "table: their media files are not known, so none was exported for them")]
    m = result.manifest
    assert m["media_count"] == 3 and m["files"] == ["posts.json", "media/ (3 files)"]
    assert events[-1].media_copied == events[-1].media_total == 3
    # Independent copies: editing or chmod-ing the export's file leaves the
    # archive's alone.
    exported = result.directory / "media" / "bafkreia.jpg"
    assert not os.path.samefile(exported, a)
    mode = a.stat().st_mode
    exported.chmod(0o600 if mode & 0o777 != 0o600 else 0o644)
    exported.write_bytes(b"EXIF stripped")
    assert a.read_bytes() == b"\xff\xd8 image a" and a.stat().st_mode == mode


def test_hardlink_on_request(tmp_path: Path, elsewhere: Path) -> None:
    a = put(tmp_path / "data" / "media" / "a.jpg", b"\xff\xd8 a")
    arc = build(tmp_path, [{}], [(0, "media/a.jpg")])
    result = run(arc, tmp_path / "out", media_link="hardlink")
    assert os.path.samefile(result.directory / "media" / "a.jpg", a)
    with pytest.raises(skyexport.OptionError, match="media_link"):
        skyexport.export(arc, tmp_path / "out", media=True, media_link="symlink")  # type: ignore[arg-type]


def test_copies_when_links_are_impossible(tmp_path: Path, elsewhere: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = put(tmp_path / "data" / "media" / "x.jpg", b"x" * 3_000_000)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(media_mod.os, "link", no_link)
    arc = build(tmp_path, [{}], [(0, "media/x.jpg")])
    result = run(arc, tmp_path / "out", media_link="hardlink")
    dst = result.directory / "media" / "x.jpg"
    assert dst.read_bytes() == src.read_bytes()
    assert not os.path.samefile(dst, src)


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths: --media-root (default the current directory), then the archive's
    directory, then its parent; absolute paths as they are."""
    root, cwd, data = tmp_path / "root", tmp_path / "cwd", tmp_path / "data"
    put(root / "m" / "one.jpg", b"from media root")
    put(data / "m" / "one.jpg", b"from archive dir")
    put(cwd / "m" / "two.jpg", b"from cwd")
    put(data / "m" / "two.jpg", b"from archive dir 2")
    put(data / "m" / "three.jpg", b"from archive dir 3")
    put(tmp_path / "m" / "four.jpg", b"from archive parent")
    absolute = put(tmp_path / "abs" / "five.jpg", b"absolute")
    arc = build(tmp_path, [{}] * 5, [(0, "m/one.jpg"), (1, "m/two.jpg"), (2, "m/three.jpg"),
                                     (3, "m/four.jpg"), (4, str(absolute))])
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)

    got = media_files(run(arc, tmp_path / "out1", media_root=root).directory)
    assert got["one.jpg"] == b"from media root"
    assert got["two.jpg"] == b"from archive dir 2"  # --media-root replaces the cwd
    assert got["three.jpg"] == b"from archive dir 3"
    assert got["four.jpg"] == b"from archive parent"
    assert got["five.jpg"] == b"absolute"

    got = media_files(run(arc, tmp_path / "out2").directory)
    assert got["one.jpg"] == b"from archive dir"
    assert got["two.jpg"] == b"from cwd"  # the default root is the current directory


def test_relative_archive_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`skyexport export archive.db` run beside it: the archive's parent is still tried."""
    put(tmp_path / "m" / "p.jpg", b"parent")
    arc = build(tmp_path, [{}], [(0, "m/p.jpg")])
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(arc.parent)
    result = run(Path(arc.name), tmp_path / "out", media_root=tmp_path / "empty")
    assert media_files(result.directory) == {"p.jpg": b"parent"}


def test_two_posts_one_image(tmp_path: Path, elsewhere: Path) -> None:
    put(tmp_path / "data" / "media" / "shared.jpg", b"one image")
    put(tmp_path / "data" / "other" / "shared.jpg", b"one image")  # same name, same bytes
    arc = build(tmp_path, [{}] * 4, [(0, "media/shared.jpg"), (1, "media/shared.jpg"),
                                     (3, "other/shared.jpg")])
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", batch_size=1, on_progress=events.append)
    assert media_files(result.directory) == {"shared.jpg": b"one image"}
    assert result.media_count == 1 and result.warnings_total == 1  # post 2: no media row
    assert result.manifest["files"][1] == "media/ (1 files)"
    assert events[-1].media_copied == events[-1].media_total == 3


def test_same_basename_different_content(tmp_path: Path, elsewhere: Path) -> None:
    """The first file placed (export order: newest post first) keeps the name; another
    gets the first 12 hex digits of its SHA-256 before the extension, with a warning."""
    put(tmp_path / "data" / "a" / "photo.jpg", b"first")
    put(tmp_path / "data" / "b" / "photo.jpg", b"second")
    put(tmp_path / "data" / "c" / "photo.jpg", b"second")  # same as b: no third copy
    put(tmp_path / "data" / "a" / "README", b"no extension 1")
    put(tmp_path / "data" / "b" / "README", b"no extension 2")
    arc = build(tmp_path, [{}] * 4, [(1, "b/photo.jpg"), (0, "a/photo.jpg"),
                                     (2, "c/photo.jpg"), (0, "a/README"), (3, "b/README")])
    result = run(arc, tmp_path / "out", batch_size=1)
    tag2, tagr = sha(b"second")[:12], sha(b"no extension 2")[:12]
    assert media_files(result.directory) == {
        "photo.jpg": b"first", f"photo-{tag2}.jpg": b"second",
        "README": b"no extension 1", f"README-{tagr}": b"no extension 2"}
    assert result.media_count == 4
    messages = [w.message for w in result.warnings]
    assert len(messages) == 2 and result.warnings_total == 2
    assert f"saved as photo-{tag2}.jpg" in messages[0]
    assert all(w.column == "media" for w in result.warnings)
    assert {w.uri for w in result.warnings} == {URI.format(1), URI.format(3)}


def test_missing_and_unusable_files_are_warnings(tmp_path: Path, elsewhere: Path) -> None:
    put(tmp_path / "data" / "media" / "ok.jpg", b"ok")
    (tmp_path / "data" / "media" / "adir.jpg").mkdir()
    os.mkfifo(tmp_path / "data" / "media" / "fifo.jpg")  # opening it would block forever
    arc = build(tmp_path, [{}] * 5, [(0, "media/ok.jpg"), (1, "media/gone.jpg"),
                                     (2, "media/adir.jpg"), (3, "media/fifo.jpg"),
                                     (4, "/nonexistent/abs.jpg")])
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", on_progress=events.append)
    assert media_files(result.directory) == {"ok.jpg": b"ok"}
    assert result.media_count == 1 and result.warnings_total == 4
    by_uri = {w.uri: w.message for w in result.warnings}
    assert "media/gone.jpg not found" in by_uri[URI.format(1)]
    assert str(tmp_path / "data") in by_uri[URI.format(1)]  # says where it looked
    assert "not a regular file" in by_uri[URI.format(2)]
    assert "not a regular file" in by_uri[URI.format(3)]
    assert "/nonexistent/abs.jpg not found" in by_uri[URI.format(4)]
    manifest_warnings = result.manifest["warnings"]
    assert [w["uri"] for w in manifest_warnings] == [w.uri for w in result.warnings]
    assert result.manifest["warnings_total"] == 4
    assert events[-1].media_copied == events[-1].media_total == 5  # every row handled


def test_unreadable_file_is_a_warning(tmp_path: Path, elsewhere: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened (root can read anything, so opening it is made to
    fail): not placed, not listed, a warning."""
    put(tmp_path / "data" / "media" / "secret.jpg", b"secret")
    put(tmp_path / "data" / "media" / "fine.jpg", b"fine")
    real = os.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("secret.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(media_mod.os, "open", deny)
    # The fault is injected into the checked path's open: every file takes that path (the
    # core's copy loop hands any open error but ENOENT to it).
    monkeypatch.setattr(media_mod, "FAST_PATH", False)
    arc = build(tmp_path, [{}, {}], [(0, "media/secret.jpg"), (1, "media/fine.jpg")])
    result = run(arc, tmp_path / "out")
    assert media_files(result.directory) == {"fine.jpg": b"fine"}
    assert result.warnings_total == 1
    assert "could not be opened: Permission denied" in result.warnings[0].message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path: Path, elsewhere: Path) -> None:
    secret = put(tmp_path / "data" / "media" / "secret.jpg", b"secret")
    secret.chmod(0)
    arc = build(tmp_path, [{}], [(0, "media/secret.jpg")])
    result = run(arc, tmp_path / "out")
    assert media_files(result.directory) == {}
    assert result.warnings_total == 1


def test_disk_full_while_copying_fails_the_export(tmp_path: Path, elsewhere: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    put(tmp_path / "data" / "media" / "a.jpg", b"a")

    def full(self: object, fd: int, st: object, src: str, dst: str) -> str:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(media_mod.MediaCopier, "_write", full)
    monkeypatch.setattr(media_mod, "FAST_PATH", False)  # the core's loop: test_faults.py
    arc = build(tmp_path, [{}], [(0, "media/a.jpg")])
    with pytest.raises(skyexport.OutputError, match="disk is full"):
        skyexport.export(arc, tmp_path / "out", media=True)
    assert not (tmp_path / "out").exists()


HOSTILE = [
    ("../../escape.jpg", "escape.jpg"),
    ("media/../../../up.jpg", "up.jpg"),
    ("..\\..\\win.jpg", "win.jpg"),
    ("media\\sub\\back.jpg", "back.jpg"),
]


def test_hostile_paths_stay_inside(tmp_path: Path) -> None:
    """Whatever file_path says, files land as media/<basename>, and nothing is written
    anywhere but the export directory."""
    base = tmp_path / "a" / "b" / "c"
    cwd = base / "cwd"
    cwd.mkdir(parents=True)
    # Sources that the hostile relative paths really reach from the roots.
    put(cwd.parent.parent / "escape.jpg", b"escape")         # cwd/../../escape.jpg
    put(cwd.parent.parent / "up.jpg", b"up")                 # cwd/media/../../../up.jpg
    put(cwd / "..\\..\\win.jpg", b"win")                     # a POSIX name with backslashes
    put(cwd / "media" / "sub" / "back.jpg", b"back")         # Windows separators
    absolute = put(tmp_path / "elsewhere" / "abs.jpg", b"abs")
    put(tmp_path / "etc" / "passwd", b"not really")
    rows = [(i, fp) for i, (fp, _) in enumerate(HOSTILE)]
    rows += [(4, str(absolute)), (5, str(tmp_path / "etc" / "passwd")),
             (6, "media/"), (6, ".."), (6, "media/.."), (6, "."), (6, ""), (6, "\\"),
             (6, "media/new\nline.jpg"), (6, "media/tab\t.jpg")]
    arc = build(tmp_path, [{}] * 7, rows)
    before = tree(tmp_path)
    out = tmp_path / "out"
    result = skyexport.export(arc, out, media=True, media_root=cwd)
    assert skyexport.verify(result.directory).ok
    new = tree(tmp_path) - before
    assert all(p.startswith(os.path.relpath(result.directory, tmp_path) + os.sep)
               for p in new), new
    got = media_files(result.directory)
    assert got == {"escape.jpg": b"escape", "up.jpg": b"up", "win.jpg": b"win",
                   "back.jpg": b"back", "abs.jpg": b"abs", "passwd": b"not really"}
    assert all(p.parent == result.directory / "media"
               for p in (result.directory / "media").iterdir())
    bad = [w.message for w in result.warnings if w.uri == URI.format(6)]
    assert len(bad) == 8 and all("no usable file name" in m for m in bad)


def test_non_utf8_file_name(tmp_path: Path, elsewhere: Path) -> None:
    """A file_path holding bytes that are not UTF-8 names the file by those bytes."""
    raw = b"media/caf\xe9.jpg"
    put(Path(os.fsdecode(os.fsencode(str(tmp_path / "data")) + b"/" + raw)), b"latin-1 name")
    arc = build(tmp_path, [{}], [(0, raw)])  # type: ignore[list-item]
    result = run(arc, tmp_path / "out")
    names = os.listdir(os.fsencode(result.directory / "media"))
    assert names == [b"caf\xe9.jpg"]
    assert (result.directory / "media.sha256").read_bytes() == \
        sha(b"latin-1 name").encode() + b"  media/caf\xe9.jpg\n"


def test_only_media_of_exported_posts(tmp_path: Path, elsewhere: Path) -> None:
    """Posts left out by the DID or date filter, and posts whose has_media is false, have
    their media rows ignored."""
    for name in ("in", "old", "other-did", "no-media", "zero-text", "in2"):
        put(tmp_path / "data" / "media" / f"{name}.jpg", name.encode())
    arc = build(tmp_path, [
        {"created_at": "2024-03-10 12:00:00 +0000 UTC"},
        {"created_at": "2023-01-01 12:00:00 +0000 UTC"},
        {"created_at": "2024-03-10 12:00:00 +0000 UTC", "did": "did:plc:other"},
        {"created_at": "2024-03-10 12:00:00 +0000 UTC", "has_media": 0},
        {"created_at": "2024-03-10 12:00:00 +0000 UTC", "has_media": "no"},
        {"created_at": "2024-03-11 12:00:00 +0000 UTC", "has_media": "true"},
    ], [(0, "media/in.jpg"), (1, "media/old.jpg"), (2, "media/other-did.jpg"),
        (3, "media/no-media.jpg"), (4, "media/zero-text.jpg"), (5, "media/in2.jpg")])
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", did="did:plc:test", since="2024-03-01",
                 until="2024-03-31", on_progress=events.append)
    assert result.post_count == 4
    assert media_files(result.directory) == {"in.jpg": b"in", "in2.jpg": b"in2"}
    assert events[-1].media_total == events[-1].media_copied == 2

    result = run(arc, tmp_path / "out")
    assert set(media_files(result.directory)) == {"in.jpg", "in2.jpg", "old.jpg",
                                                  "other-did.jpg"}


@pytest.mark.parametrize(("value", "copied"), [(1, True), (2, True), (0.5, True),
                                               ("true", True), ("T", True), ("t", True),
                                               (0, False), (0.0, False), (None, False),
                                               ("false", False), ("yes", False)])
def test_has_media_truth_matches_the_data_file(tmp_path: Path, elsewhere: Path,
                                               value: object, copied: bool) -> None:
    """media_total (counted in SQL) and the files copied (chosen by the core) use the same
    truth rules as the exported has_media field."""
    put(tmp_path / "data" / "media" / "f.jpg", b"f")
    arc = build(tmp_path, [{"has_media": value}], [(0, "media/f.jpg")])
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", format="jsonl", on_progress=events.append)
    assert (f'"has_media":{str(copied).lower()}').encode() in result.data_file.read_bytes()
    assert result.media_count == int(copied)
    assert events[-1].media_total == events[-1].media_copied == int(copied)


def test_without_media_option(tmp_path: Path, elsewhere: Path) -> None:
    put(tmp_path / "data" / "media" / "f.jpg", b"f")
    arc = build(tmp_path, [{}], [(0, "media/f.jpg")])
    result = run(arc, tmp_path / "out", media=False)
    assert sorted(p.name for p in result.directory.iterdir()) == ["manifest.json",
                                                                  "posts.json"]
    assert result.manifest["files"] == ["posts.json"]
    assert result.media_count == 0 and "media.sha256" not in result.manifest["checksums"]


def test_archive_without_media_table(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "data").mkdir()
    arc = make_archive(tmp_path / "data" / "a.db", [{"has_media": 1}], with_media_table=False)
    result = run(arc, tmp_path / "out", format="csv")
    assert media_files(result.directory) == {}
    assert result.manifest["files"] == ["posts.csv", "media/ (0 files)"]
    assert (result.directory / "media.sha256").read_bytes() == b""


def test_media_streamed_per_batch(tmp_path: Path, elsewhere: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Media are copied batch by batch, never held to the end: on Linux, each batch's
    files are still being copied while the export reads the next batch (the core's loop,
    media.PIPELINE), and are all placed before the batch after it is handed over; on the
    checked path (any other system), before the next batch is read."""
    n = 40
    for i in range(n):
        put(tmp_path / "data" / "media" / f"{i}.jpg", b"%d" % i)
    arc = build(tmp_path, [{}] * n, [(i, f"media/{i}.jpg") for i in range(n)])
    seen: list[tuple[int, int]] = []
    real = media_mod.MediaCopier.copy_rows

    def spy(self: media_mod.MediaCopier, rows: Any, tick: Any = lambda: None) -> None:
        rows = list(rows)
        seen.append((len(rows), self.copied))
        real(self, rows, tick)

    monkeypatch.setattr(media_mod.MediaCopier, "copy_rows", spy)
    result = run(arc, tmp_path / "out", batch_size=8, format="csv")
    lag = 1 if media_mod.FAST_PATH and media_mod.PIPELINE and sys.platform == "linux" else 0
    assert seen == [(8, 8 * max(0, k - lag)) for k in range(5)]
    assert result.media_count == n


def test_media_pipelined_error_reaches_caller(tmp_path: Path, elsewhere: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that fails in the last batch, settled only after the posts loop has ended
    (media.MediaCopier.drain), still fails the export with one error naming media/, and
    nothing is published."""
    n = 20
    for i in range(n):
        put(tmp_path / "data" / "media" / f"{i}.jpg", b"%d" % i)
    arc = build(tmp_path, [{}] * n, [(i, f"media/{i}.jpg") for i in range(n)])
    real = media_mod.MediaCopier._settle_batch
    calls: list[int] = []

    def failing(self: media_mod.MediaCopier, batch: Any) -> None:
        calls.append(len(batch.rows))
        if len(calls) == 3:  # the last of three batches of 8, 8 and 4 rows
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, batch)

    monkeypatch.setattr(media_mod.MediaCopier, "_settle_batch", failing)
    (tmp_path / "out").mkdir()
    with pytest.raises(skyexport.OutputError, match=r"/media failed: the disk is full"):
        skyexport.export(arc, tmp_path / "out", media=True, batch_size=8)
    assert calls == [8, 8, 4]
    assert list((tmp_path / "out").iterdir()) == []


def test_media_rows_counted_alike_with_and_without_progress(tmp_path: Path,
                                                           elsewhere: Path) -> None:
    """The manifest's media_rows: with a progress consumer it is counted before the first
    batch (the events carry it); without one, from the copy itself.  Both count the media
    rows of the exported posts with has_media: not those of a post without has_media,
    nor those of no post at all; a missing file still counts as a row."""
    for i in range(6):
        put(tmp_path / "data" / "media" / f"{i}.jpg", b"%d" % i)
    posts: list[dict[str, Any]] = [{}] * 5 + [{"has_media": 0}]
    arc = build(tmp_path, posts, [(0, "media/0.jpg"), (0, "media/1.jpg"), (2, "media/2.jpg"),
                                  (3, "media/absent.jpg"), (5, "media/5.jpg"),
                                  (9, "media/4.jpg")])
    events: list[ExportProgress] = []
    watched = run(arc, tmp_path / "a", batch_size=2, on_progress=events.append)
    unwatched = run(arc, tmp_path / "b", batch_size=2)
    for result in (watched, unwatched):
        assert result.media_count == 3
        assert result.manifest is not None and result.manifest["media_rows"] == 4
    assert {e.media_total for e in events[1:]} == {4}


def test_media_flusher_error_fails_the_export(tmp_path: Path, elsewhere: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The syncfs calls that write media/ out while it fills (media._Flusher) are checked
    like the final one: a write-back error met there fails the export, nothing is
    published, and the flusher's thread is gone."""
    from skyexport.exporter import staged

    n = 30
    for i in range(n):
        put(tmp_path / "data" / "media" / f"{i}.jpg", b"%d" % i * 500)
    arc = build(tmp_path, [{}] * n, [(i, f"media/{i}.jpg") for i in range(n)])
    calls: list[str] = []

    def syncfs(fd: int) -> None:
        calls.append(threading.current_thread().name)
        if calls[0] == "skyexport-flush" and len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")  # only the flusher's first

    slow = media_mod.MediaCopier._settle_batch

    def settle(self: media_mod.MediaCopier, batch: Any) -> None:
        time.sleep(0.02)  # the copy takes a while: the flusher runs meanwhile
        slow(self, batch)

    monkeypatch.setattr(staged, "SYNCFS", syncfs)
    monkeypatch.setattr(media_mod, "FLUSH_EVERY", 0.005)
    monkeypatch.setattr(media_mod.MediaCopier, "_settle_batch", settle)
    (tmp_path / "out").mkdir()
    with pytest.raises(skyexport.OutputError, match=r"/media failed: Input/output error"):
        skyexport.export(arc, tmp_path / "out", media=True, batch_size=5)
    assert calls and calls[0] == "skyexport-flush"
    assert list((tmp_path / "out").iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "skyexport-flush"]
    # Without the error, the same export succeeds, and the final syncfs is the caller's.
    calls.clear()
    monkeypatch.setattr(staged, "SYNCFS", lambda fd: calls.append(
        threading.current_thread().name))
    result = skyexport.export(arc, tmp_path / "out", media=True, batch_size=5)
    assert result.media_count == n
    assert calls[-1] != "skyexport-flush" and "skyexport-flush" in calls
    assert not [t for t in threading.enumerate() if t.name == "skyexport-flush"]


def test_failed_export_leaves_no_media(tmp_path: Path, elsewhere: Path) -> None:
    put(tmp_path / "data" / "media" / "a.jpg", b"a")
    arc = build(tmp_path, [{}, {"created_at": "0 not a time"}], [(0, "media/a.jpg")])
    (tmp_path / "out").mkdir()
    with pytest.raises(skyexport.BadValueError):
        skyexport.export(arc, tmp_path / "out", media=True, batch_size=1)
    assert list((tmp_path / "out").iterdir()) == []
    assert (tmp_path / "data" / "media" / "a.jpg").read_bytes() == b"a"


def test_synthetic_archive_media(tmp_path: Path, elsewhere: Path) -> None:
    """A synthetic archive: every media row of an exported post is accounted for, as a
    file in media/ or a warning (synth leaves ~1 % of the files missing on purpose)."""
    from skyexport.testing.synth import build_archive

    arc = tmp_path / "data" / "archive.db"
    arc.parent.mkdir()
    stats = build_archive(arc, 3000, seed=7, media=True)
    events: list[ExportProgress] = []
    result = run(arc, tmp_path / "out", batch_size=250, on_progress=events.append)
    final = events[-1]
    assert final.media_copied == final.media_total > 0
    files = media_files(result.directory)
    assert len(files) == result.media_count == result.manifest["media_count"]
    missing = [w for w in result.warnings if "not found" in w.message]
    assert 0 < len(missing) < final.media_total * 0.05
    assert len(files) + len(missing) <= final.media_total
    assert len(files) <= stats.media_files
    for name, data in files.items():
        assert sums(result.directory)[f"media/{name}"] == sha(data)


def test_cli_media(tmp_path: Path) -> None:
    put(tmp_path / "data" / "media" / "a.jpg", b"a")
    arc = build(tmp_path, [{}, {}], [(0, "media/a.jpg"), (1, "media/missing.jpg")])
    proc = subprocess.run([sys.executable, "-m", "skyexport", "export", str(arc), "--media",
                           "--output", str(tmp_path / "out"), "--progress", "none"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "media files: 1" in lines
    assert any(line.startswith("warnings: 1") for line in lines)
    export_dir = Path(lines[-1])
    assert (export_dir / "media" / "a.jpg").read_bytes() == b"a"


def test_post_uri_not_utf8(tmp_path: Path, elsewhere: Path) -> None:
    """Media rows are matched to posts by the URI's bytes, whatever they are."""
    put(tmp_path / "data" / "media" / "u.jpg", b"u")
    uri = b"at://did:plc:test/app.bsky.feed.post/\xff\xfe"
    (tmp_path / "data").mkdir(exist_ok=True)
    arc = make_archive(tmp_path / "data" / "a.db", [{"uri": uri, "has_media": 1}],
                       media_rows=[{"post_uri": uri, "file_path": "media/u.jpg"}])
    result = run(arc, tmp_path / "out")
    assert media_files(result.directory) == {"u.jpg": b"u"}


def test_disagreement_is_never_silent(tmp_path: Path, elsewhere: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """If SQL and the core ever disagreed about has_media, the media rows the merge could
    not place are reported, not dropped silently."""
    archive_mod = sys.modules["skyexport.sources.archive"]

    put(tmp_path / "data" / "media" / "a.jpg", b"a")
    put(tmp_path / "data" / "media" / "b.jpg", b"b")
    arc = build(tmp_path, [{"has_media": 0}, {}], [(0, "media/a.jpg"), (1, "media/b.jpg")])
    monkeypatch.setattr(archive_mod, "HAS_MEDIA_TRUE", "1")  # SQL: every post has media
    result = skyexport.export(arc, tmp_path / "out", media=True)
    assert [w.message for w in result.warnings] == [
        "1 exported post(s) have has_media but no rows in the archive's media table: their "
        "media files are not known, so none was exported for them",
        "2 media row(s) matched no exported post with has_media and were not copied"]
