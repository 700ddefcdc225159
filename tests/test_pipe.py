"""Issue 10: `--output -` (stdout), `--compress gzip|zstd` and `--layout did`, run as a user
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
from skyexport.synth import build_archive

from archives import make_archive
from conftest import DATA_FILES

PY = sys.executable
TIMEOUT = 120


def run(*args: object, cwd: Path | None = None, stdout: object = subprocess.PIPE
        ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-m", "skyexport", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, timeout=TIMEOUT, cwd=cwd, check=False)


def err_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode().splitlines()


def one_error(proc: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    """Exit `code`, no traceback, one error line (after at most a usage line)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = err_lines(proc)
    assert "Traceback" not in proc.stderr.decode()
    if lines and lines[0].startswith("usage: "):
        lines = lines[1:]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


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
