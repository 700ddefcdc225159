"""`skyexport verify` at the edges: names that Python calls line
breaks, FIFOs and symlinks planted in an export, the manifest's own claims, huge manifests and
media lists.  Every check runs the real CLI in a subprocess, with a timeout where a hang is the
failure being guarded against."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skyexport

from helpers.archives import make_archive
from helpers.cli import PEAK_RSS
from helpers.cli import run as cli

URI = "at://did:plc:test/app.bsky.feed.post/{:04d}"
TIMEOUT = 30  # seconds; a verify that follows a FIFO or /dev/zero never finishes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rejected(directory: Path, *needles: str) -> str:
    proc = cli("verify", str(directory))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert "problem(s) found" in lines[-1]
    for needle in needles:
        assert any(needle in line for line in lines[:-1]), (needle, proc.stderr)
    return proc.stderr


def accepted(directory: Path, files: int) -> None:
    proc = cli("verify", str(directory))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"ok: {files} files match the manifest\n"


def media_archive(tmp_path: Path, names: list[str]) -> Path:
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    rows, media = [], []
    for i, name in enumerate(names):
        (data / "media" / name).write_bytes(b"image %d" % i)
        rows.append({"uri": URI.format(i), "has_media": 1,
                     "created_at": f"2024-05-{20 - i:02d} 12:00:00 +0000 UTC"})
        media.append({"hash": f"h{i}", "post_uri": URI.format(i),
                      "file_path": f"media/{name}"})
    return make_archive(data / "archive.db", rows, media_rows=media)


def cli_export(archive: Path, out: Path, *options: str) -> Path:
    proc = cli("export", str(archive), "--output", str(out), "-q", *options,
               cwd=archive.parent.parent)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.splitlines()[-1])


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    archive = media_archive(tmp_path, ["img0.jpg", "img1.jpg"])
    return cli_export(archive, tmp_path / "out", "--media")


def edit_manifest(directory: Path, **changes: object) -> None:
    p = directory / "manifest.json"
    m = json.loads(p.read_bytes())
    m.update(changes)
    p.write_text(json.dumps(m, indent=2))


def set_media_list(directory: Path, lines: list[str]) -> None:
    """Write media.sha256 and make the manifest's claims about it match: only what the
    list names is then wrong."""
    data = "".join(line + "\n" for line in lines).encode()
    (directory / "media.sha256").write_bytes(data)
    m = json.loads((directory / "manifest.json").read_bytes())
    m["checksums"]["media.sha256"] = {"sha256": sha(data), "bytes": len(data)}
    m["media_count"] = len(lines)
    (directory / "manifest.json").write_text(json.dumps(m, indent=2))


# --- item 7: U+2028, U+2029, U+0085 in media names ---------------------------------------------


def test_names_python_calls_line_breaks_verify(tmp_path: Path) -> None:
    names = ["a\u2028b.jpg", "c\u2029d.jpg", "e\u0085f.jpg"]
    export = cli_export(media_archive(tmp_path, names), tmp_path / "out", "--media")
    assert sorted(p.name for p in (export / "media").iterdir()) == sorted(names)
    accepted(export, 2 + len(names))


# --- item 8: nothing followed, nothing but regular files opened ---------------------------------


@pytest.mark.parametrize("name", ["posts.json", "manifest.json", "media/img0.jpg",
                                  "media.sha256"])
def test_fifo_in_the_export(export_dir: Path, name: str) -> None:
    (export_dir / name).unlink()
    os.mkfifo(export_dir / name)
    rejected(export_dir, f"{name}: a FIFO, not a regular file")


def test_media_is_a_link_to_dev(export_dir: Path) -> None:
    for p in (export_dir / "media").iterdir():
        p.unlink()
    (export_dir / "media").rmdir()
    (export_dir / "media").symlink_to("/dev")
    set_media_list(export_dir, [f"{sha(b'')}  media/zero"])
    rejected(export_dir, "media: a symbolic link, not a directory",
             "media/zero: not checked, media is a symbolic link")


def test_media_is_a_link_to_etc(export_dir: Path) -> None:
    for p in (export_dir / "media").iterdir():
        p.unlink()
    (export_dir / "media").rmdir()
    (export_dir / "media").symlink_to("/etc")
    set_media_list(export_dir, ["0" * 64 + "  media/passwd"])
    stderr = rejected(export_dir, "media: a symbolic link", "media/passwd: not checked")
    assert sha(Path("/etc/passwd").read_bytes()) not in stderr


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd", "../posts.json"])
def test_media_file_is_a_link(export_dir: Path, target: str) -> None:
    p = export_dir / "media" / "img1.jpg"
    p.unlink()
    p.symlink_to(target)
    rejected(export_dir, "media/img1.jpg: a symbolic link, not a regular file")


def test_data_file_is_a_link(export_dir: Path) -> None:
    real = export_dir.parent / "posts-copy.json"
    real.write_bytes((export_dir / "posts.json").read_bytes())
    (export_dir / "posts.json").unlink()
    (export_dir / "posts.json").symlink_to(real)
    rejected(export_dir, "posts.json: a symbolic link, not a regular file")


def test_export_dir_is_a_link(export_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(export_dir)
    rejected(link, "is a symbolic link; verify does not follow it")


@pytest.mark.parametrize("entry", ["media/sub/img0.jpg", "media/.", "media/..", "img0.jpg",
                                   "media//img0.jpg"])
def test_listed_names_must_be_media_plain_names(export_dir: Path, entry: str) -> None:
    lines = (export_dir / "media.sha256").read_text().splitlines()
    set_media_list(export_dir, lines + [f"{sha(b'')}  {entry}"])
    rejected(export_dir, "media.sha256 line 3 is malformed")


# --- item 9: post_count and export_format are checked -------------------------------------------


def tricky_archive(tmp_path: Path, n: int) -> Path:
    """Texts with quotes, commas and newlines (CSV quotes them), nested embed_data."""
    rows = [{"uri": URI.format(i), "text": f'line one, "{i}"\n  {{\nline three\r\n',
             "embed_data": '{"a": [1, {"b": "\\n  {\\n"}], "c": {}}',
             "created_at": f"2024-05-{20 - i % 20:02d} 12:00:00 +0000 UTC"} for i in range(n)]
    return make_archive(tmp_path / "a.db", rows)


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_fresh_exports_verify(tmp_path: Path, fmt: str, n: int) -> None:
    export = cli_export(tricky_archive(tmp_path, n), tmp_path / "out", "--format", fmt)
    assert json.loads((export / "manifest.json").read_bytes())["post_count"] == n
    accepted(export, 1)


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
def test_edited_post_count(tmp_path: Path, fmt: str) -> None:
    export = cli_export(tricky_archive(tmp_path, 7), tmp_path / "out", "--format", fmt)
    edit_manifest(export, post_count=8)
    rejected(export, f"posts.{fmt}: holds 7 posts, manifest.json says post_count 8")
    edit_manifest(export, post_count="7")
    rejected(export, "manifest.json: post_count '7' is not a count of posts")


def test_edited_export_format(export_dir: Path) -> None:
    edit_manifest(export_dir, export_format="csv")
    rejected(export_dir, "manifest.json says export_format csv, but its checksums list "
                         "posts.json, not posts.csv")
    edit_manifest(export_dir, export_format="xml")
    rejected(export_dir, "manifest.json: export_format 'xml' is not one of json, csv, jsonl")


@pytest.mark.parametrize(("real", "claimed"), [("json", "csv"), ("csv", "jsonl"),
                                                ("jsonl", "json")])
def test_data_file_renamed_to_another_format(tmp_path: Path, real: str, claimed: str) -> None:
    """The name, the checksums and export_format all say `claimed`: the content does not."""
    export = cli_export(tricky_archive(tmp_path, 3), tmp_path / "out", "--format", real)
    (export / f"posts.{real}").rename(export / f"posts.{claimed}")
    m = json.loads((export / "manifest.json").read_bytes())
    m["checksums"] = {f"posts.{claimed}": m["checksums"][f"posts.{real}"]}
    m["export_format"] = claimed
    (export / "manifest.json").write_text(json.dumps(m))
    rejected(export, f"posts.{claimed}: not a {claimed} export's data file")


# --- item 14 (part) and the scanner: deep and odd manifests -------------------------------------


def test_manifest_nested_100000_deep(export_dir: Path) -> None:
    (export_dir / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    rejected(export_dir, "manifest.json is not a valid manifest: not a JSON object")
    (export_dir / "manifest.json").write_text('{"checksums": ' + "[" * 100_000
                                              + "]" * 100_000 + "}")
    rejected(export_dir, "manifest.json is not a valid manifest: nested more than 16 deep")


def test_deep_member_verify_does_not_read_is_skipped(export_dir: Path) -> None:
    raw = (export_dir / "manifest.json").read_text()
    assert raw.startswith("{")
    deep = "[" * 100_000 + '"\\"]{", {}, {"k": [1, -2.5e3, true, null]}' + "]" * 100_000
    (export_dir / "manifest.json").write_text('{"extra": ' + deep + ", " + raw[1:])
    accepted(export_dir, 4)


@pytest.mark.parametrize("text", ["", "{", '{"checksums"', '{"a": tru}', '{"a": 1,}',
                                  '{"a": "x}', '{"a": [}', '{} {}', '{"a\\q": 1}'])
def test_manifest_not_json(export_dir: Path, text: str) -> None:
    (export_dir / "manifest.json").write_text(text)
    rejected(export_dir, "manifest.json is not a valid manifest: ")


def test_strings_with_escapes_are_skipped_exactly(export_dir: Path) -> None:
    edit_manifest(export_dir, note='say \\"}", then ]] \\\\' * 1000, other=["\\", "\"{["])
    accepted(export_dir, 4)


def test_api_report_for_a_fifo(export_dir: Path) -> None:
    (export_dir / "media" / "img1.jpg").unlink()
    os.mkfifo(export_dir / "media" / "img1.jpg")

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("verify hung on a FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIMEOUT)
    try:
        report = skyexport.verify(export_dir)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert report.problems == ["media/img1.jpg: a FIFO, not a regular file (verify neither "
                               "follows nor opens it)"]


# --- item 10: memory does not grow with the manifest or the media list ---------------------------
#
# The limit_memory marks act only under `pytest --memray` (see test_memory_limits.py);
# without it the tests still check that verify accepts the export.

WARNING = (b'    {\n      "uri": "at://did:plc:test/app.bsky.feed.post/3kxyz",\n'
           b'      "column": "labels",\n      "message": "labels holds \'{not \\"json\', '
           b'kept as text [1] {2}"\n    },\n')


def write_huge_manifest(directory: Path, size: int, listed: int) -> None:
    """The real manifest, `size` bytes in all: a `warnings` list of `listed` bytes spliced
    in front of its members, then white space up to `size` before them."""
    p = directory / "manifest.json"
    raw = p.read_bytes()
    block = WARNING * 4096
    with p.open("wb") as f:
        f.write(b'{\n  "warnings": [\n')
        written = 0
        while written < listed:
            f.write(block)
            written += len(block)
        f.write(WARNING.rstrip(b",\n") + b"\n  ],\n")
        spaces = b" " * len(block)
        while written < size:
            f.write(spaces)
            written += len(spaces)
        f.write(b"  " + raw[1:])


# Measured peaks: 2.4 MiB for the 300 MB manifest (the old verify: 605 MB).  For the media list
# see test_a_3_million_line_media_list_in_bounded_memory below.
#
# The manifest's skipped member is 32 MB of warnings (1.2 million strings), twice the limit, and
# the white space after it the other 268 MB: a verify that kept what it skips (checked: 34 MiB),
# or read the file whole (1.3 GiB), goes over the limit either way.
# Skipping strings costs ~50 ms a MB, white space ~4 ms: with 150 MB of warnings, as at first,
# the test took 10-30 s.
MANIFEST_LIMIT_MB = 16


@pytest.mark.limit_memory(f"{MANIFEST_LIMIT_MB} MB")
def test_a_300_mb_manifest(export_dir: Path) -> None:
    listed = 32 << 20
    assert listed >= 2 * (MANIFEST_LIMIT_MB << 20)
    write_huge_manifest(export_dir, 300 << 20, listed)
    assert (export_dir / "manifest.json").stat().st_size >= 300 << 20
    report = skyexport.verify(export_dir)
    assert report.problems == [] and report.checked == 4


def long_media_list(directory: Path, n: int) -> None:
    """`n` empty media files and their list, written as it goes."""
    media = directory / "media"
    for p in media.iterdir():
        p.unlink()
    digest = sha(b"").encode()
    h = hashlib.sha256()
    size = 0
    media_fd = os.open(media, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with (directory / "media.sha256").open("wb") as f:
            for i in range(n):
                name = b"f%07d.jpg" % i
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=media_fd))
                line = digest + b"  media/" + name + b"\n"
                f.write(line)
                h.update(line)
                size += len(line)
    finally:
        os.close(media_fd)
    m = json.loads((directory / "manifest.json").read_bytes())
    m["checksums"]["media.sha256"] = {"sha256": h.hexdigest(), "bytes": size}
    m["media_count"] = n
    (directory / "manifest.json").write_text(json.dumps(m, indent=2))


@pytest.fixture
def long_list_export(ram_path: Path) -> Path:
    """export_dir with 200,000 media files and their list, made in the fixture: outside the
    test's memray tracking (which counts only verify then, and would slow the 200,000 creates
    down), and on a RAM file system where there is one (conftest.ram_dir): 200,000 files take
    10-90 s of the kernel's time to make on the disk's ext4 under load, 2 s on tmpfs.  verify
    meets the same regular files, directory and list either way."""
    export = cli_export(media_archive(ram_path, ["img0.jpg", "img1.jpg"]), ram_path / "out",
                        "--media")
    long_media_list(export, 200_000)
    return export


@pytest.mark.limit_memory("24 MB")
def test_a_long_media_list(long_list_export: Path) -> None:
    export_dir = long_list_export
    report = skyexport.verify(export_dir)
    assert report.problems == [] and report.checked == 200_002


def test_media_is_a_regular_file(export_dir: Path) -> None:
    for p in (export_dir / "media").iterdir():
        p.unlink()
    (export_dir / "media").rmdir()
    (export_dir / "media").write_bytes(b"")
    rejected(export_dir, "media: a regular file, not a directory",
             "media/img0.jpg: not checked, media is a regular file")


# --- a compressed data file that expands far past the manifest's uncompressed_bytes -------------

BOMB_GIB = 8
# Seconds.  A verify that reads the whole 8 GiB took 12-15 s (an idle machine) to 37 s; one that
# stops takes well under one.  Either way the old verify fails: on the time or on its line.
BOMB_TIMEOUT = 10


def _crc32_of_zeros(n: int) -> int:
    """zlib.crc32 of `n` zero bytes without reading them: a zero byte maps the CRC register
    linearly over GF(2), so the map for `n` bytes is a matrix power (zlib's crc32_combine)."""

    def times(mat: list[int], vec: int) -> int:
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec >>= 1
            i += 1
        return out

    one = [0xEDB88320] + [1 << i for i in range(31)]   # one zero bit, on the reflected register
    power = one
    for _ in range(3):                                    # one zero byte: eight bits
        power = [times(power, power[i]) for i in range(32)]
    reg = 0xFFFFFFFF                                      # crc32's initial register
    while n:
        if n & 1:
            reg = times(power, reg)
        power = [times(power, power[i]) for i in range(32)]
        n >>= 1
    return reg ^ 0xFFFFFFFF


def gzip_bomb(size: int) -> bytes:
    """A valid gzip file of `size` zero bytes (a multiple of 1 MiB), made in milliseconds: after
    a full flush deflate forgets the past, so each further MiB of zeros compresses to the same
    bytes, which are repeated instead of compressed again."""
    import struct
    import zlib

    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    seg = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH) == seg
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()   # an empty final block
    trailer = struct.pack("<II", _crc32_of_zeros(size), size & 0xFFFFFFFF)
    return head + seg * ((size >> 20) - 1) + end + trailer


def zstd_bomb(size: int) -> bytes:
    """A zstd frame of `size` zero bytes, stream-compressed (zeros compress at GB/s)."""
    import zstandard

    c = zstandard.ZstdCompressor(level=1).compressobj()
    block = bytes(16 << 20)
    return b"".join(c.compress(block) for _ in range(size // len(block))) + c.flush()


def test_the_bomb_makers_make_what_they_say() -> None:
    """The bombs are real streams: small ones decompress, with the standard libraries, to
    exactly the zeros they stand for (the gzip one with a right CRC and length)."""
    import gzip

    for n in (1 << 20, 5 << 20):
        assert gzip.decompress(gzip_bomb(n)) == bytes(n)
    import zlib
    assert _crc32_of_zeros(12345) == zlib.crc32(bytes(12345))
    zstandard = pytest.importorskip("zstandard")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zstd_bomb(32 << 20)) \
        == bytes(32 << 20)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_decompression_bomb_stops_at_the_stated_size(tmp_path: Path, codec: str) -> None:
    """A data file that expands to 8 GiB while the manifest says a few KB: verify stops as
    soon as the output passes the stated size, with one line, well inside the time limit
    (reading it all takes half a minute or more)."""
    if codec == "zstd":
        pytest.importorskip("zstandard")
    export = cli_export(tricky_archive(tmp_path, 7), tmp_path / "out", "--compress", codec)
    name = "posts.json" + {"gzip": ".gz", "zstd": ".zst"}[codec]
    stated = json.loads((export / "manifest.json").read_bytes())["checksums"][name][
        "uncompressed_bytes"]
    assert 0 < stated < 1 << 20
    bomb = (gzip_bomb if codec == "gzip" else zstd_bomb)(BOMB_GIB << 30)
    assert len(bomb) < 16 << 20
    (export / name).write_bytes(bomb)
    m = json.loads((export / "manifest.json").read_bytes())
    m["checksums"][name].update(sha256=sha(bomb), bytes=len(bomb))
    (export / "manifest.json").write_text(json.dumps(m, indent=2))
    try:
        proc = subprocess.run([sys.executable, "-m", "skyexport", "verify", str(export)],
                              capture_output=True, text=True, timeout=BOMB_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"verify read the bomb for over {BOMB_TIMEOUT} s")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"skyexport: verify: {name}: decompresses to more than the {stated} bytes "
        "manifest.json says (verify stopped there)",
        f"skyexport: error: {export}: 1 problem(s) found"], proc.stderr


# --- a media list of any length: compared with media/ in bounded memory -------------------------

LIST_LINES = 3_000_000
LIST_LIMIT_MB = 64



def bare_export(directory: Path, lines: list[bytes] | None = None) -> Path:
    """A minimal export by hand: an empty posts.json, an empty media/, and a media.sha256 of
    `lines` (None: no media list) that the manifest's checksums and media_count match."""
    directory.mkdir()
    (directory / "media").mkdir()
    (directory / "posts.json").write_bytes(b"[]\n")
    checksums = {"posts.json": {"sha256": sha(b"[]\n"), "bytes": 3}}
    m: dict[str, object] = {"export_format": "json", "post_count": 0, "checksums": checksums}
    if lines is not None:
        data = b"".join(line + b"\n" for line in lines)
        (directory / "media.sha256").write_bytes(data)
        checksums["media.sha256"] = {"sha256": sha(data), "bytes": len(data)}
        m["media_count"] = len(lines)
    (directory / "manifest.json").write_text(json.dumps(m, indent=2))
    return directory


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_3_million_line_media_list_in_bounded_memory(ram_path: Path) -> None:
    """3,000,000 listed files, none present: every one is reported (streamed to stderr as
    found) and counted, and the real peak RSS of the whole command stays under 64 MB.  The
    list is written straight to a RAM file system (about 300 MB), in 1 MiB pieces."""
    export = bare_export(ram_path / "export")
    digest = sha(b"").encode()
    h = hashlib.sha256()
    size = 0
    with (export / "media.sha256").open("wb") as f:
        for start in range(0, LIST_LINES, 10_000):
            piece = b"".join(b"%s  media/f%08d.jpg\n" % (digest, i)
                             for i in range(start, start + 10_000))
            f.write(piece)
            h.update(piece)
            size += len(piece)
    m = json.loads((export / "manifest.json").read_bytes())
    m["checksums"]["media.sha256"] = {"sha256": h.hexdigest(), "bytes": size}
    m["media_count"] = LIST_LINES
    (export / "manifest.json").write_text(json.dumps(m))
    peak_file = ram_path / "peak"
    env = dict(os.environ, TMPDIR=str(ram_path))   # the sort's runs: RAM, not the disk
    proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS, str(peak_file), "verify",
                             str(export)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    assert proc.stderr is not None
    missing, first, other = 0, None, []
    for raw in proc.stderr:            # counted as they come, not held
        if raw.startswith(b"skyexport: verify: media/f") and raw.endswith(b".jpg: missing\n"):
            missing += 1
            first = first or raw
        else:
            other.append(raw)
    assert proc.wait(timeout=600) == 1
    assert first == b"skyexport: verify: media/f00000000.jpg: missing\n"
    assert missing == LIST_LINES
    assert other == [f"skyexport: error: {export}: {LIST_LINES} problem(s) found\n".encode()]
    peak = int(peak_file.read_text())
    assert peak <= LIST_LIMIT_MB << 20, f"verify peaked at {peak / 2**20:.0f} MiB"


# Names from a small alphabet, so that repeats, shared prefixes, backslashes and newlines (a
# name in media/ may hold one; a listed name cannot) are common.
_NAME = st.binary(min_size=1, max_size=6).map(
    lambda b: bytes(b"ab\\n\n."[x % 6] for x in b)).filter(
    lambda n: n not in (b".", b".."))


def _reference(lines: list[bytes], entries: dict[bytes, str], contents: dict[bytes, bytes],
               media_count: int) -> list[str]:
    """What verify reports about the media list, the obvious way (all in memory): malformed
    lines in line order; then name by name, in the order of the name with backslash and
    newline escaped, the file's check, the lines repeating it, or an entry nobody listed;
    then the media_count line."""
    malformed, first, repeats = [], {}, {}
    for n, line in enumerate(lines, 1):
        digest, sep, name = line.partition(b"  media/")
        if (not sep or len(digest) != 64 or any(c not in b"0123456789abcdef" for c in digest)
                or name in (b"", b".", b"..") or b"/" in name):
            malformed.append(f"media.sha256 line {n} is malformed: "
                             f"{line[:120].decode('utf-8', 'backslashreplace')!r}")
        elif name in first:
            repeats.setdefault(name, []).append(n)
        else:
            first[name] = digest.decode()

    def key(name: bytes) -> bytes:
        return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")

    out = list(malformed)
    for name in sorted(set(first) | set(entries), key=key):
        shown = "media/" + name.decode("utf-8", "backslashreplace")
        if name in first:
            if entries.get(name) is None:
                out.append(f"{shown}: missing")
            elif entries[name] == "dir":
                out.append(f"{shown}: a directory, not a regular file (verify neither "
                           "follows nor opens it)")
            elif sha(contents[name]) != first[name]:
                out.append(f"{shown}: SHA-256 {sha(contents[name])}, the manifest says "
                           f"{first[name]}")
            out.extend(f"media.sha256 line {n} repeats {shown}" for n in repeats.get(name, []))
        elif entries[name] == "dir":
            out.append(f"{shown}/: a directory the manifest does not know")
        else:
            out.append(f"{shown}: not listed in the manifest")
    if media_count != len(first):
        out.append(f"media.sha256 lists {len(first)} media files, manifest.json says "
                   f"media_count {media_count}")
    return out


@st.composite
def media_cases(draw: st.DrawFn) -> tuple[list[bytes], dict[bytes, str],
                                          dict[bytes, bytes], int]:
    listed = draw(st.lists(_NAME.filter(lambda n: b"\n" not in n), max_size=40))
    listed += draw(st.lists(st.sampled_from(listed), max_size=10)) if listed else []
    listed = draw(st.permutations(listed))          # unsorted, repeats anywhere
    contents = {n: draw(st.sampled_from([b"", b"x", b"y"])) for n in set(listed)}
    lines = [sha(contents[n] if draw(st.booleans()) else b"other").encode() + b"  media/" + n
             for n in listed]
    for _ in range(draw(st.integers(0, 3))):        # malformed lines, anywhere
        bad = draw(st.sampled_from([b"", b"x  media/a", b"0" * 64 + b"  media/.",
                                    b"0" * 64 + b"  media/a/b", b"0" * 64 + b" media/a"]))
        lines.insert(draw(st.integers(0, len(lines))), bad)
    entries: dict[bytes, str] = {}
    for n in set(listed):                            # most listed files present
        kind = draw(st.sampled_from(["file", "file", "file", "dir", None]))
        if kind is not None:
            entries[n] = kind
    for n in draw(st.lists(_NAME, max_size=15)):      # and some nobody listed
        entries.setdefault(n, draw(st.sampled_from(["file", "dir"])))
        contents.setdefault(n, b"")
    media_count = len(set(listed)) + draw(st.sampled_from([0, 0, 1]))
    return lines, entries, contents, media_count


@pytest.mark.parametrize("run_bytes", [1 << 20, 300])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=media_cases())
def test_media_comparison_against_a_reference(run_bytes: int, case: tuple) -> None:
    """verify's sorted, side-by-side comparison of media.sha256 with media/ gives exactly the
    reports of an in-memory reference, in its order: with everything in one run, and with
    runs of a few lines merged two at a time over several passes (as a long list is)."""
    import tempfile

    from skyexport.manifest import verify as manifest

    lines, entries, contents, media_count = case
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest._ExternalSort, "RUN_BYTES", run_bytes)
        mp.setattr(manifest._ExternalSort, "FANIN", 2)
        export = bare_export(Path(tmp) / "export", lines)
        edit_manifest(export, media_count=media_count)
        media = os.fsencode(export / "media")
        for name, kind in entries.items():
            if kind == "dir":
                os.mkdir(os.path.join(media, name))
            else:
                with open(os.path.join(media, name), "wb") as f:
                    f.write(contents[name])
        seen: list[str] = []
        report = skyexport.verify(export, on_problem=seen.append)
    expected = _reference(lines, entries, contents, media_count)
    assert seen == expected
    assert report.problems == expected and report.problems_total == len(expected)
    listed_present = {n for n in entries if any(line.endswith(b"  media/" + n)
                                                 and len(line) == 72 + len(n)
                                                 for line in lines)}
    assert report.checked == 2 + sum(entries[n] == "file" for n in listed_present)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n")),
       run_bytes=st.integers(40, 400), fanin=st.integers(2, 5))
def test_external_sort_is_sorted(lines: list[bytes], run_bytes: int, fanin: int) -> None:
    """The external sort gives back exactly the lines given, in sorted order, whatever the
    run size and the merge fan-in (one run in memory, or several merge passes on disk)."""
    from skyexport.manifest import verify as manifest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest._ExternalSort, "RUN_BYTES", run_bytes)
        mp.setattr(manifest._ExternalSort, "FANIN", fanin)
        with manifest._ExternalSort() as s:
            for line in lines:
                s.add(line)
            assert list(s.sorted()) == sorted(lines)


@given(a=st.binary(max_size=8).filter(lambda b: b"\0" not in b),
       b=st.binary(max_size=8).filter(lambda b: b"\0" not in b))
def test_escaped_names_round_trip_and_stay_distinct(a: bytes, b: bytes) -> None:
    from skyexport.manifest.verify import _escape, _unescape

    assert _unescape(_escape(a)) == a
    assert b"\n" not in _escape(a)
    assert (_escape(a) == _escape(b)) == (a == b)


def test_no_room_for_the_sort_is_one_problem(tmp_path: Path) -> None:
    """A media list too long for one run, and a TMPDIR where no temporary file can be made:
    one problem that says where and what to do, no traceback."""
    import tempfile

    from skyexport.manifest import verify as manifest

    lines = [sha(b"").encode() + b"  media/f%03d" % i for i in range(50)]
    export = bare_export(tmp_path / "export", lines)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest._ExternalSort, "RUN_BYTES", 1000)
        mp.setattr(tempfile, "tempdir", str(not_a_dir))
        report = skyexport.verify(export)
    assert report.problems == [f"the temporary files that sort a long media list cannot be "
                               f"written in {not_a_dir} (Not a directory); set TMPDIR to a "
                               "directory with room"]


def test_a_bomb_whose_size_the_manifest_does_not_state_is_not_decompressed(
        tmp_path: Path) -> None:
    """Without uncompressed_bytes there is no size to stop at: the missing member is the one
    problem, and the 8 GiB behind the compressed bytes are never produced."""
    export = cli_export(tricky_archive(tmp_path, 7), tmp_path / "out", "--compress", "gzip")
    bomb = gzip_bomb(BOMB_GIB << 30)
    (export / "posts.json.gz").write_bytes(bomb)
    m = json.loads((export / "manifest.json").read_bytes())
    entry = m["checksums"]["posts.json.gz"]
    entry.update(sha256=sha(bomb), bytes=len(bomb))
    del entry["uncompressed_bytes"]
    (export / "manifest.json").write_text(json.dumps(m, indent=2))
    try:
        proc = subprocess.run([sys.executable, "-m", "skyexport", "verify", str(export)],
                              capture_output=True, text=True, timeout=BOMB_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"verify read the bomb for over {BOMB_TIMEOUT} s")
    assert proc.stderr.splitlines() == [
        "skyexport: verify: manifest.json: the uncompressed checksum of posts.json.gz is "
        "missing or malformed",
        f"skyexport: error: {export}: 1 problem(s) found"], proc.stderr
