"""What the fuzz targets do with one input, without atheris: fuzz_car.py and fuzz_json.py
run these under libFuzzer, tests/system/test_fuzz_regressions.py runs them on every input in
fuzz/regressions/ (each crash the fuzzer ever found) and on the seed corpus.

- car(data): the input as a whole CAR -- framing, the block index, CIDs, the commit, the
  MST walk of every command (rows, keys, collections) and the batch insert into SQLite --
  and as one DAG-CBOR block: cbor_to_json and cbor_to_py must agree on whether it is
  valid, post_fields must accept or refuse it.  Bad input raises the reader's own errors
  (ArchiveError, ValueError), caught here; anything else is a finding.
- json(data): the stored-JSON re-indenter (reformat_json, as embed_data and labels are
  written): for valid UTF-8 input, what it returns parses to the input's value."""

from __future__ import annotations

import json as _json
import os
import tempfile

import apsw

from skyexport import _core
from skyexport.errors import ArchiveError
from skyexport.sources.car.importer import _fill_new
from skyexport.sources.car.repo import CarRepo

SCRATCH = tempfile.mkdtemp(prefix="skyexport-fuzz-",
                           dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def read_car(data: bytes) -> None:
    fd = os.memfd_create("car") if hasattr(os, "memfd_create") else None
    path = f"/proc/self/fd/{fd}" if fd is not None else os.path.join(SCRATCH, "in.car")
    try:
        if fd is not None:
            os.write(fd, data)
        else:
            with open(path, "wb") as f:
                f.write(data)
        try:
            with CarRepo(path, SCRATCH, verb="") as repo:
                for _ in repo.post_rows("2024-01-01 00:00:00", posts_only=False):
                    pass
                con = apsw.Connection(":memory:")
                try:
                    _fill_new(con, repo, "2024-01-01 00:00:00", fts=False)
                finally:
                    con.close()
                assert len(repo.sha256) == 64
        except ArchiveError:
            pass
    finally:
        if fd is not None:
            os.close(fd)


def read_block(data: bytes) -> None:
    verdicts = []
    for f in (_core.testing.cbor_to_json, _core.cbor_to_py):
        try:
            f(data)
            verdicts.append(True)
        except ValueError:
            verdicts.append(False)
    assert verdicts[0] == verdicts[1], (verdicts, data[:64])
    try:
        _core.testing.post_fields(data)
    except ValueError:
        pass


def car(data: bytes) -> None:
    read_block(data)
    read_car(data)


def json(data: bytes) -> None:
    if not data:
        return
    pretty = bool(data[0] & 1)
    level = data[0] >> 1 & 7
    value = data[1:]
    out = _core.testing.reformat_json(value, pretty, level)
    if out is None:
        return
    try:
        # stored JSON is copied verbatim (FORMAT.md): invalid UTF-8 in it stays invalid,
        # so only valid UTF-8 input is compared
        want = _json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return
    got = _json.loads(out.decode("utf-8"))
    assert got == want or got != got or want != want, (value[:200], out[:200])
