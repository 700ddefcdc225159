"""`--output -` (stdout), `--compress gzip|zstd` and `--layout did`, run as a user
runs them: `python -m skyexport ...` in a subprocess, on real SQLite archives, through real
pipes; the bytes are checked against the plain directory export, byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import skyexport
from skyexport.testing.synth import build_archive

from conftest import DATA_FILES
from helpers.archives import make_archive
from helpers.cli import one_line_failure
from helpers.cli import run as _run


def run(*args: object, **kw: object) -> subprocess.CompletedProcess[bytes]:
    """The CLI with its output as bytes (what a pipe carries)."""
    return _run(*args, text=False, **kw)  # type: ignore[arg-type]


def one_error(proc: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    return one_line_failure(proc, *needles, code=code, prefix="")


PY = sys.executable
TIMEOUT = 120


def err_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode().splitlines()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "archive.db"
    build_archive(path, 4000, seed=7, dids=2)
    return path


@pytest.fixture(scope="module")
def plain(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The plain directory export of every format, made by the command line."""
    out = tmp_path_factory.mktemp("plain")
    found = {}
    for fmt in DATA_FILES:
        proc = run("export", archive, "-o", out / fmt, "-f", fmt, "-q")
        assert proc.returncode == 0, proc.stderr
        found[fmt] = (Path(proc.stdout.decode().strip()) / DATA_FILES[fmt]).read_bytes()
    return found


# --- 1. --output - ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(DATA_FILES))
def test_stdout_is_the_data_file(archive: Path, plain: dict[str, bytes], tmp_path: Path,
                                 fmt: str) -> None:
    proc = run("export", archive, "-o", "-", "-f", fmt, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == plain[fmt]
    assert list(tmp_path.iterdir()) == []          # no directory, manifest, no `./-`
    last = err_lines(proc)[-1]
    digest = hashlib.sha256(plain[fmt]).hexdigest()
    assert last == (f"skyexport: wrote 4000 posts to stdout: {len(plain[fmt])} bytes, "
                    f"sha256 {digest}"), last


def test_stdout_redirected_to_a_file(archive: Path, plain: dict[str, bytes],
                                     tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with open(target, "wb") as f:
        proc = run("export", archive, "-o", "-", "-q", stdout=f)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr   # -q: nothing at all
    assert target.read_bytes() == plain["json"]


def test_closed_pipe_exits_141_quietly(archive: Path, tmp_path: Path) -> None:
    # `skyexport export -o - | head -c 100`, with a real pipe and a reader that goes away.
    p = subprocess.Popen([PY, "-m", "skyexport", "export", archive, "-o", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert p.stdout is not None and p.stderr is not None
    head = p.stdout.read(100)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(TIMEOUT) == 141
    assert head.startswith(b"[\n  {")
    assert err == b""
    assert list(tmp_path.iterdir()) == []


def test_closed_pipe_through_a_shell(archive: Path) -> None:
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {PY} -m skyexport export "
                           f"'{archive}' -o - -f jsonl | head -n 2"],
                          capture_output=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == b""
    assert len(proc.stdout.splitlines()) == 2


def test_media_with_stdout_is_a_usage_error(archive: Path, tmp_path: Path) -> None:
    proc = run("export", archive, "-o", "-", "--media", cwd=tmp_path)
    one_error(proc, 2, "--media", "--output -")
    assert proc.stdout == b"" and list(tmp_path.iterdir()) == []


def test_failure_mid_stream_exits_1_with_one_line(tmp_path: Path) -> None:
    # The oldest post (exported last) holds invalid stored JSON: megabytes are out already.
    rows = [{"text": "x" * 1000, "created_at": f"2024-01-01 00:{i // 60 % 60:02d}:"
             f"{i % 60:02d} +0000 UTC", "uri": f"at://did:plc:test/app.bsky.feed.post/{i:05d}"}
            for i in range(1, 6000)]
    rows.append({"created_at": "2020-01-01 00:00:00 +0000 UTC", "embed_data": "{bad",
                 "uri": "at://did:plc:test/app.bsky.feed.post/bad"})
    arc = make_archive(tmp_path / "bad.db", rows)
    proc = run("export", arc, "-o", "-", "-f", "jsonl", cwd=tmp_path)
    line = one_error(proc, 1, "post at://did:plc:test/app.bsky.feed.post/bad", "embed_data",
                     "already gone to stdout", "incomplete")
    n = int(re.search(r"; (\d+) bytes had already", line)[1])  # type: ignore[index]
    assert n == len(proc.stdout) and n > 1 << 20


def test_dash_directory_is_still_possible(archive: Path, tmp_path: Path) -> None:
    # `./-` is a directory named `-`, if that is really wanted.
    proc = run("export", archive, "-o", "./-", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "-").is_dir()


def test_api_streams_to_fd_and_file_objects(archive: Path, plain: dict[str, bytes],
                                            tmp_path: Path) -> None:
    buf = io.BytesIO()                                  # no fileno(): write() calls
    r = skyexport.export(archive, buf, format="csv")
    assert buf.getvalue() == plain["csv"]
    assert r.directory is None and r.data_file is None and r.manifest is None
    assert r.post_count == 4000 and r.bytes_written == len(plain["csv"])
    assert r.sha256 == r.uncompressed_sha256 == hashlib.sha256(plain["csv"]).hexdigest()
    with open(tmp_path / "f.jsonl", "wb") as f:         # a file object with a descriptor
        f.write(b"")
        skyexport.export(archive, f, format="jsonl")
    assert (tmp_path / "f.jsonl").read_bytes() == plain["jsonl"]
    fd = os.open(tmp_path / "fd.json", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        skyexport.export(archive, fd)
    finally:
        os.close(fd)
    assert (tmp_path / "fd.json").read_bytes() == plain["json"]
    with pytest.raises(skyexport.OptionError, match="media="):
        skyexport.export(archive, io.BytesIO(), media=True)


# --- 2. --compress ------------------------------------------------------------------------


def decompress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        import gzip
        return gzip.decompress(data)
    import zstandard as zstd
    return zstd.ZstdDecompressor().decompressobj().decompress(data)


CODECS = ("gzip", "zstd")
SUFFIX = {"gzip": ".gz", "zstd": ".zst"}


def _need(codec: str) -> None:
    if codec == "zstd":
        pytest.importorskip("zstandard")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", list(DATA_FILES))
def test_compressed_export_is_the_plain_export(archive: Path, plain: dict[str, bytes],
                                               tmp_path: Path, fmt: str, codec: str) -> None:
    _need(codec)
    proc = run("export", archive, "-o", tmp_path, "-f", fmt, "--compress", codec, "-q")
    assert proc.returncode == 0, proc.stderr
    d = Path(proc.stdout.decode().strip())
    name = DATA_FILES[fmt] + SUFFIX[codec]
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", name]
    packed = (d / name).read_bytes()
    assert decompress(codec, packed) == plain[fmt]
    import json
    m = json.loads((d / "manifest.json").read_text())
    assert m["compression"] == codec and m["files"] == [name]
    assert m["checksums"][name] == {
        "sha256": hashlib.sha256(packed).hexdigest(), "bytes": len(packed),
        "uncompressed_sha256": hashlib.sha256(plain[fmt]).hexdigest(),
        "uncompressed_bytes": len(plain[fmt])}
    assert run("verify", d).returncode == 0
    # The other tools read it: gzip -dc, zstd -dc.
    tool = "gzip" if codec == "gzip" else "zstd"
    if subprocess.run(["which", tool], capture_output=True).returncode == 0:
        out = subprocess.run([tool, "-dc", str(d / name)], capture_output=True, check=True)
        assert out.stdout == plain[fmt]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fmt", list(DATA_FILES))
def test_compressed_stdout_is_the_plain_export(archive: Path, plain: dict[str, bytes],
                                               tmp_path: Path, fmt: str, codec: str) -> None:
    _need(codec)
    proc = run("export", archive, "-o", "-", "-f", fmt, "--compress", codec,
               "--compress-level", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert decompress(codec, proc.stdout) == plain[fmt]
    assert list(tmp_path.iterdir()) == []
    last = err_lines(proc)[-1]
    assert f"{len(proc.stdout)} bytes, sha256 {hashlib.sha256(proc.stdout).hexdigest()}" \
        in last
    assert (f"({codec}; uncompressed {len(plain[fmt])} bytes, sha256 "
            f"{hashlib.sha256(plain[fmt]).hexdigest()})") in last


def test_gzip_is_one_deterministic_member(archive: Path, tmp_path: Path) -> None:
    a = run("export", archive, "-o", "-", "--compress", "gzip").stdout
    b = run("export", archive, "-o", "-", "--compress", "gzip").stdout
    assert a == b and a[:2] == b"\x1f\x8b"            # no name, no time: same bytes


def test_bad_compress_options_are_usage_errors(archive: Path, tmp_path: Path) -> None:
    one_error(run("export", archive, "-o", tmp_path, "--compress-level", "3"), 2,
              "--compress-level needs --compress")
    one_error(run("export", archive, "-o", tmp_path, "--compress", "gzip",
                  "--compress-level", "12"), 2, "--compress-level", "1..9")
    one_error(run("export", archive, "-o", tmp_path, "--compress", "xz"), 2, "--compress")
    assert list(tmp_path.iterdir()) == []


def _no_zstandard(tmp_path: Path) -> dict[str, str]:
    """An environment where `import zstandard` fails, as where the extra is not installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "zstandard.py").write_text("raise ImportError('No module named zstandard')\n")
    return {**os.environ, "PYTHONPATH": str(shadow)}


def test_zstd_without_zstandard_says_so(archive: Path, tmp_path: Path) -> None:
    env = _no_zstandard(tmp_path)
    proc = subprocess.run([PY, "-m", "skyexport", "export", str(archive), "-o",
                           str(tmp_path / "out"), "--compress", "zstd"], capture_output=True,
                          env=env, timeout=TIMEOUT, check=False)
    one_error(proc, 2, "zstandard", "pip install 'skyexport[zstd]'")
    assert not (tmp_path / "out").exists()
    # gzip needs nothing beyond the standard library.
    proc = subprocess.run([PY, "-m", "skyexport", "export", str(archive), "-o", "-",
                           "--compress", "gzip", "-q"], capture_output=True, env=env,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr


def _rewrite_data(d: Path, name: str, data: bytes, **uncompressed: object) -> None:
    """Replace the data file and make the manifest's compressed checksum match it."""
    import json
    (d / name).write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["checksums"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                                **uncompressed)
    (d / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


@pytest.mark.parametrize("codec", CODECS)
def test_verify_checks_the_uncompressed_bytes(archive: Path, tmp_path: Path,
                                              codec: str) -> None:
    _need(codec)
    proc = run("export", archive, "-o", tmp_path, "-f", "jsonl", "--compress", codec, "-q")
    d = Path(proc.stdout.decode().strip())
    name = "posts.jsonl" + SUFFIX[codec]
    packed = (d / name).read_bytes()
    # A manifest whose uncompressed SHA-256 is wrong, the compressed one right.
    _rewrite_data(d, name, packed, uncompressed_sha256="0" * 64)
    proc = run("verify", d)
    assert proc.returncode == 1
    assert f"{name}: decompressed SHA-256 " in proc.stderr.decode()
    # Posts dropped (re-compressed, both compressed checksums right): the count says so.
    lines = decompress(codec, packed).splitlines(keepends=True)
    fewer = b"".join(lines[:-1])
    repacked = (__import__("gzip").compress(fewer) if codec == "gzip"
                else __import__("zstandard").ZstdCompressor().compress(fewer))
    _rewrite_data(d, name, repacked, uncompressed_sha256=hashlib.sha256(fewer).hexdigest(),
                  uncompressed_bytes=len(fewer))
    proc = run("verify", d)
    assert proc.returncode == 1
    assert f"{name}: holds 3999 posts, manifest.json says post_count 4000" \
        in proc.stderr.decode()


def test_verify_gzip_trailing_and_truncated(archive: Path, tmp_path: Path) -> None:
    proc = run("export", archive, "-o", tmp_path, "--compress", "gzip", "-q")
    d = Path(proc.stdout.decode().strip())
    name = "posts.json.gz"
    packed = (d / name).read_bytes()
    _rewrite_data(d, name, packed + b"junk")
    assert "4 bytes follow the end of the gzip stream" in run("verify", d).stderr.decode()
    _rewrite_data(d, name, packed[:-100])
    assert "truncated" in run("verify", d).stderr.decode()


from helpers.cli import PEAK_RSS as _PEAK_RSS  # noqa: E402 - the CLI's main() and its own VmHWM


def _peak_rss(tmp_path: Path, *args: object) -> tuple[int, int]:
    """(exit status, peak RSS in bytes) of the command line's main() in a child process:
    its own VmHWM (ru_maxrss would include this process's peak, inherited through exec)."""
    report = tmp_path / "peak-rss"
    proc = subprocess.run([PY, "-c", _PEAK_RSS, str(report), *map(str, args)],
                          capture_output=True, timeout=TIMEOUT, check=False)
    return proc.returncode, int(report.read_text())


@pytest.mark.parametrize("codec", CODECS)
def test_verify_of_a_bomb_stays_in_bounded_memory(archive: Path, tmp_path: Path,
                                                  codec: str) -> None:
    _need(codec)
    proc = run("export", archive, "-o", tmp_path, "--compress", codec, "-q")
    d = Path(proc.stdout.decode().strip())
    name = "posts.json" + SUFFIX[codec]
    zeros = 400 << 20     # 400 MiB of zeros: a few hundred KiB compressed
    if codec == "gzip":
        import zlib
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = bytes(1 << 20)
        bomb = b"".join(c.compress(block) for _ in range(zeros >> 20)) + c.flush()
    else:
        import zstandard as zstd
        c = zstd.ZstdCompressor(level=19).compressobj()
        block = bytes(1 << 20)
        bomb = b"".join(c.compress(block) for _ in range(zeros >> 20)) + c.flush()
    assert len(bomb) < 1 << 20                          # one read block of verify
    _rewrite_data(d, name, bomb)
    code, peak = _peak_rss(tmp_path, "verify", d)
    assert code == 1
    assert peak < 60 << 20, f"verify peaked at {peak >> 20} MiB"


def test_compressed_export_memory_is_flat(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    arc = tmp_path / "big.db"
    build_archive(arc, 30_000, seed=3)
    peaks = {}
    for codec in (None, "gzip", "zstd"):
        extra = ("--compress", codec) if codec else ()
        code, peaks[codec] = _peak_rss(tmp_path, "export", arc, "-o", tmp_path / "o", *extra)
        assert code == 0
    # A codec adds its own fixed window (zstd level 3: a few MiB), nothing per post.
    assert peaks["gzip"] < peaks[None] + (8 << 20), peaks
    assert peaks["zstd"] < peaks[None] + (24 << 20), peaks


# --- 5. --layout did ----------------------------------------------------------------------

def _dids(archive: Path) -> list[str]:
    import sqlite3
    with sqlite3.connect(archive) as con:
        return [d for (d,) in con.execute("SELECT did FROM posts GROUP BY did "
                                          "ORDER BY count(*) DESC")]


def test_layout_did_with_did(archive: Path, tmp_path: Path) -> None:
    did = _dids(archive)[1]
    out = tmp_path / "exports"
    proc = run("export", archive, "-o", out, "--layout", "did", "--did", did, "-q")
    assert proc.returncode == 0, proc.stderr
    d = Path(proc.stdout.decode().strip())
    assert d.parent == out / did and re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", d.name)
    flat = run("export", archive, "-o", tmp_path / "flat", "--did", did, "-q")
    assert (d / "posts.json").read_bytes() == \
        (Path(flat.stdout.decode().strip()) / "posts.json").read_bytes()
    assert run("verify", d).returncode == 0
    # The same DID again: a second export beside the first, in the same DID directory.
    again = run("export", archive, "-o", out, "--layout", "did", "--did", did, "-q")
    assert Path(again.stdout.decode().strip()).parent == out / did


def test_layout_did_takes_the_only_did(tmp_path: Path) -> None:
    arc = tmp_path / "one.db"
    build_archive(arc, 500, seed=2, dids=1)
    (did,) = _dids(arc)
    proc = run("export", arc, "-o", tmp_path / "x", "--layout", "did", "--compress", "gzip",
               "-q")
    assert proc.returncode == 0, proc.stderr
    d = Path(proc.stdout.decode().strip())
    assert d.parent == tmp_path / "x" / did and (d / "posts.json.gz").is_file()
    import json
    assert json.loads((d / "manifest.json").read_text())["did"] == did


def test_layout_did_needs_did_when_several(archive: Path, tmp_path: Path) -> None:
    proc = run("export", archive, "-o", tmp_path / "x", "--layout", "did")
    one_error(proc, 2, "--layout did needs --did", "several DIDs", "skyexport info")
    assert not (tmp_path / "x").exists()


def test_layout_did_unknown_did_creates_nothing(archive: Path, tmp_path: Path) -> None:
    proc = run("export", archive, "-o", tmp_path / "x", "--layout", "did", "--did",
               "did:plc:nobody")
    one_error(proc, 1, "holds no post of DID did:plc:nobody", _dids(archive)[0])
    assert not (tmp_path / "x").exists()


def test_layout_did_refuses_a_did_that_is_no_directory_name(tmp_path: Path) -> None:
    arc = make_archive(tmp_path / "odd.db", [{"did": "did:web:a/../../b"}])
    proc = run("export", arc, "-o", tmp_path / "x", "--layout", "did")
    one_error(proc, 2, "cannot be a directory name", "--layout time")
    assert not (tmp_path / "x").exists()


def test_layout_did_with_stdout_is_a_usage_error(archive: Path, tmp_path: Path) -> None:
    did = _dids(archive)[0]
    proc = run("export", archive, "-o", "-", "--layout", "did", "--did", did, cwd=tmp_path)
    one_error(proc, 2, "--layout did", "--output -")
    assert proc.stdout == b"" and list(tmp_path.iterdir()) == []


def test_interrupted_stream_says_what_went_out(archive: Path, tmp_path: Path) -> None:
    import signal
    big = tmp_path / "big.db"
    build_archive(big, 60_000, seed=5)
    p = subprocess.Popen([PY, "-m", "skyexport", "export", big, "-o", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout is not None
    got = p.stdout.read(1 << 20)   # the export is under way; the pipe is full behind this
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 130, err
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.decode(), lines
    n = int(re.search(r"interrupted; (\d+) bytes had already gone to stdout", lines[0])[1])  # type: ignore[index]
    assert n == len(got) + len(rest) and "incomplete export" in lines[0]


def test_verify_zstd_without_zstandard_says_so(archive: Path, tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    proc = run("export", archive, "-o", tmp_path / "x", "--compress", "zstd", "-q")
    d = proc.stdout.decode().strip()
    env = _no_zstandard(tmp_path)
    done = subprocess.run([PY, "-m", "skyexport", "verify", d], capture_output=True,
                          env=env, timeout=TIMEOUT, check=False)
    assert done.returncode == 1 and b"Traceback" not in done.stderr
    assert (b"posts.json.zst: the uncompressed posts are not checked: zstd needs the "
            b"zstandard package (pip install 'skyexport[zstd]')") in done.stderr
    # The compressed file's own checksum is still checked.
    (Path(d) / "posts.json.zst").write_bytes(b"x")
    done = subprocess.run([PY, "-m", "skyexport", "verify", d], capture_output=True,
                          env=env, timeout=TIMEOUT, check=False)
    assert b"posts.json.zst: 1 bytes, manifest.json says" in done.stderr


def _read_raw(fd: int, n: int | None = None) -> bytes:
    """Exactly n bytes from a raw descriptor (None: to EOF); no buffer reads ahead."""
    got = bytearray()
    while n is None or len(got) < n:
        chunk = os.read(fd, 65536 if n is None else min(65536, n - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("posts", [400, 5000])
def test_sigterm_on_a_stream_says_what_went_out(tmp_path: Path, posts: int) -> None:
    """A real SIGTERM to an export writing to a real pipe, once 200,000 bytes have been
    read: its one line says how many bytes had gone out, and that is what the reader got.
    400 posts are one write(2) of ~300 KB that the signal lands in; 5000 posts, several.
    Three rounds each: where the signal lands varies."""
    import signal
    arc = tmp_path / "a.db"
    build_archive(arc, posts, seed=5)
    for _ in range(3):
        p = subprocess.Popen([PY, "-m", "skyexport", "export", arc, "-o", "-"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stderr is not None
        got = _read_raw(p.stdout.fileno(), 200_000)
        p.send_signal(signal.SIGTERM)
        got += _read_raw(p.stdout.fileno())
        err = p.stderr.read().decode()
        assert p.wait(TIMEOUT) == 143, err
        (line,) = err.splitlines()
        done = re.fullmatch(r"skyexport: terminated after the export was complete; all "
                            r"(\d+) bytes had gone to stdout, sha256 ([0-9a-f]{64})", line)
        if done:
            assert int(done[1]) == len(got)
            assert done[2] == hashlib.sha256(got).hexdigest()
        else:
            cut = re.fullmatch(r"skyexport: terminated; (\d+) bytes had already gone to "
                               r"stdout: an incomplete export, discard them", line)
            assert cut, line
            assert int(cut[1]) == len(got) >= 200_000


# --- CSV without the byte-order mark: --no-bom ------------------------------------------------

CSV_NO_BOM = (
    b"URI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,QuoteCount,IsReply,"
    b"ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n"
    b'at://did:plc:test/app.bsky.feed.post/0000,bafyreitest0000,did:plc:test,"a, ""b""",'
    b"2024-01-01T00:00:00Z,0,0,0,0,false,,false,,,2024-01-01T00:00:00Z\n"
    b"at://did:plc:test/app.bsky.feed.post/0001,bafyreitest0001,did:plc:test,=1+2,"
    b"2024-01-01T00:00:00Z,0,0,0,0,false,,false,,,2024-01-01T00:00:00Z\n")


def test_no_bom_bytes(tmp_path: Path) -> None:
    """--no-bom leaves out exactly the three bytes EF BB BF before the header; the default
    keeps them (bskyarchive's bytes)."""
    arc = make_archive(tmp_path / "a.db", [{"text": 'a, "b"'}, {"text": "=1+2"}])
    plain = run("export", arc, "-f", "csv", "--no-bom", "-o", "-")
    assert (plain.returncode, plain.stdout) == (0, CSV_NO_BOM), plain.stderr
    with_bom = run("export", arc, "-f", "csv", "-o", "-")
    assert with_bom.stdout == b"\xef\xbb\xbf" + CSV_NO_BOM
    out = io.BytesIO()
    skyexport.export(arc, out, format="csv", bom=False)
    assert out.getvalue() == CSV_NO_BOM


def test_no_bom_reads_in_any_csv_reader(archive: Path) -> None:
    """Python's csv module on the far end of a real pipe: with the BOM the first column is
    named '\\ufeffURI' (the reason for --no-bom), without it 'URI'."""
    reader = ("import csv, sys; rows = list(csv.DictReader(sys.stdin)); "
              "print(len(rows), 'URI' in rows[0], rows[0].get('URI', '')[:5])")
    shown = {}
    for flags in ((), ("--no-bom",)):
        cmd = f"{PY} -m skyexport export {archive} -f csv -o - {' '.join(flags)} | " \
              f"{PY} -c {reader!r}"
        done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, done.stderr
        shown[flags] = done.stdout
    assert shown[()] == "4000 False \n"
    assert shown[("--no-bom",)] == "4000 True at://\n"


def test_no_bom_export_is_recorded_and_verifies(archive: Path, tmp_path: Path) -> None:
    plain = skyexport.export(archive, tmp_path / "a", format="csv")
    bare = skyexport.export(archive, tmp_path / "b", format="csv", bom=False)
    assert plain.data_file is not None and bare.data_file is not None
    assert bare.data_file.read_bytes() == plain.data_file.read_bytes()[3:]
    assert plain.manifest is not None and bare.manifest is not None
    assert (plain.manifest["csv_bom"], bare.manifest["csv_bom"]) == (True, False)
    assert skyexport.verify(bare.directory).ok and skyexport.verify(plain.directory).ok
    # Each checks the header against what its manifest says, not against either form.
    assert bare.directory is not None and plain.directory is not None
    _rewrite_data(bare.directory, "posts.csv", b"\xef\xbb\xbf" + bare.data_file.read_bytes())
    _rewrite_data(plain.directory, "posts.csv", plain.data_file.read_bytes()[3:])
    (bad,) = skyexport.verify(bare.directory).problems
    assert "without a BOM (the manifest says csv_bom false)" in bad, bad
    (bad,) = skyexport.verify(plain.directory).problems
    assert "does not begin with the BOM and skyexport's header line" in bad, bad
    json_export = skyexport.export(archive, tmp_path / "c", format="json")
    assert json_export.manifest is not None and "csv_bom" not in json_export.manifest


@pytest.mark.parametrize("flag", ["--no-bom", "--csv-formula-guard"])
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_csv_options_with_another_format_are_usage_errors(archive: Path, tmp_path: Path,
                                                         flag: str, fmt: str) -> None:
    proc = run("export", archive, "-o", tmp_path / "x", "-f", fmt, flag)
    usage, line = err_lines(proc)
    assert proc.returncode == 2 and usage.startswith("usage: skyexport export ")
    assert line == (f"skyexport export: error: {flag} applies to CSV only, not to "
                    f"--format {fmt}; leave it out or export CSV")
    assert not (tmp_path / "x").exists()
    name = "bom" if flag == "--no-bom" else "csv_formula_guard"
    with pytest.raises(skyexport.OptionError, match=f"^{name}= applies to CSV only"):
        skyexport.export(archive, tmp_path / "x", format=fmt,  # type: ignore[arg-type]
                         **{name: flag != "--no-bom"})
