"""What the fuzz targets do with one input, without atheris: fuzz_car.py and fuzz_json.py
run these under libFuzzer, tests/system/test_fuzz_regressions.py runs them on every input in
fuzz/regressions/ (each crash the fuzzer ever found) and on the seed corpus.

- car(data): the input as a whole CAR -- framing, the block index, CIDs, the commit, the
  MST walk of every command (rows, keys, collections) and the batch insert into SQLite;
  every record read through the walk's read-ahead (a RecordTap of every collection, keep:
  each key the walk counted is encoded once or listed bad);
  `fetch`'s check (the verifying scan's BlockTable, CarCheck), where it proves a CAR
  sound, must find what CarCheck over the plain index finds (where it proves nothing,
  fetch checks as the plain way does) --
  and as one DAG-CBOR block: cbor_to_json and cbor_to_py must agree on whether it is
  valid, post_fields must accept or refuse it.  Bad input raises the reader's own errors
  (ArchiveError, ValueError), caught here; anything else is a finding.
- json(data): the stored-JSON re-indenter (reformat_json, as embed_data and labels are
  written): for valid UTF-8 input, what it returns parses to the input's value."""

from __future__ import annotations

import json as _json
import os
import tempfile
from pathlib import Path

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
        records_walk(path)
        for spill in (False, True):
            fast = check_verified(path, spill)
            assert fast is None or fast == check_plain(path), (spill, fast, check_plain(path))
    finally:
        if fd is not None:
            os.close(fd)


def records_walk(path: str) -> None:
    """Every record of every collection through the walk (its read-ahead thread reads
    the blocks), encoded as jsonl or, not being valid atproto data, kept out and counted:
    either way once, so the two add up to the keys the walk counted."""
    encoded = [0]

    def chunk(nsid: str, n: int, data: bytes) -> None:
        assert data.count(b"\n") == n      # one line a record
        encoded[0] += n

    try:
        with CarRepo(path, SCRATCH, verb="") as repo:
            tap = _core.RecordTap(repo.did, "jsonl", None, True, {}, chunk, 1 << 16)
            repo.tap = tap
            for _ in repo.post_rows("2024-01-01 00:00:00", posts_only=False):
                pass
            tap.finish()
            assert encoded[0] + tap.bad_total == sum(repo.stats.collections.values())
    except ArchiveError:
        pass


def check_plain(path: str) -> tuple[object, ...]:
    """CarCheck over the block index a plain CarRepo builds (no verdicts): what check_car
    falls back to."""
    try:
        with CarRepo(path, SCRATCH, verb="") as repo:
            try:
                c = _core.CarCheck(repo.fd, repo.index, repo.data)
                n = c.run()
            except ValueError as exc:
                return ("refused", str(exc))
            return (n, _colls(c.collections), c.blob_refs, repo.sha256, repo.stats.blocks)
    except ArchiveError as exc:
        return ("unread", str(exc))


def _colls(counts: dict[bytes, int]) -> dict[str, int]:
    return dict(sorted((k.decode("ascii"), v) for k, v in counts.items()))


def check_verified(path: str, spill: bool = False) -> tuple[object, ...] | None:
    """`fetch`'s check through the verifying scan's BlockTable (remote/repo.py
    _check_scanned) -- with `spill`, through the block index it spills to past its limit
    (here 2 entries, runs of 3) --, as check_plain gives its outcome; None where it proves
    nothing (check_car then checks as check_plain does)."""
    from skyexport.remote.repo import _check_scanned
    from skyexport.sources.car.repo import _open_regular, one_root, scratch_file

    fd, size = _open_regular(path)
    try:
        found = one_root(fd)
        if found is None:
            return None
        root, start, head = found
        good_fd, ix_fd, runs_fd = (scratch_file(Path(SCRATCH), "fuzz") for _ in range(3))
        try:
            sc = _core.CarScanner(fd, start, head, None, size, verify=True, good_fd=good_fd)
            try:
                table = (sc.build_table(root, ix_fd, runs_fd, max_entries=2, run=3)
                         if spill else sc.build_table(root))
            except ValueError:
                return None
            if table is None:
                return None
            status, commit = table.block(fd, bytes(root))
            try:
                did = _core.cbor_to_py(commit)[0]["did"] if commit is not None else None
            except (ValueError, TypeError, KeyError):
                did = None
            if not isinstance(did, str):
                return None
            got = _check_scanned(path, Path(SCRATCH), did, root, table, sc.sha256_hex(), sc)
            if got is None:
                return None
            return (got.records, got.collections, got.blob_refs, got.sha256, got.blocks)
        finally:
            for f in (good_fd, ix_fd, runs_fd):
                os.close(f)
    finally:
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
