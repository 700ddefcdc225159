"""The repository check of `skyexport fetch` (remote/repo.py): the pass that reads the
temporary file as the body arrives (_Scan: the core's verifying CarScanner) and the walk
in the core (CarCheck) must accept and refuse exactly what the slow reference check
(tests/helpers/repo_check.py: the first, Python version) does, name the same block when
they refuse, and find the same blob refs -- on the real CARs of tests/car/, on altered
copies of them (a record's bytes changed, a record block missing, an MST node damaged or
out of order, a body cut mid-block, another account's DID) and on the hostile CARs."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skyexport import _core
from skyexport.remote import repo as rrepo
from skyexport.remote.errors import FetchError
from skyexport.sources.car.repo import CarRepo

from helpers.hostile import CASES, frames, unordered_in_node
from helpers.repo_check import reference_check_car

CARS = Path(__file__).resolve().parent.parent / "car"
REAL = sorted(p.name for p in CARS.glob("*.car"))
BSKY = CARS / "bsky-app.z72i7hdynmk6r22z27h6tvur.car"


def _did(raw: bytes, tmp: Path) -> str:
    p = tmp / "did.car"
    p.write_bytes(raw)
    try:
        with CarRepo(p, tmp, verb="") as repo:
            return repo.did
    except Exception:  # noqa: BLE001 - no readable commit: any DID will do
        return "did:plc:nobody"


def _outcome(fn: Callable[[], rrepo.RepoCheck], path: Path) -> tuple[str, object]:
    """("ok", every field) or ("refused", the message, with the file's path as "CAR" and
    the word "record" before a key taken out: the reference names a record by its key
    alone)."""
    try:
        r = fn()
    except FetchError as exc:
        return "refused", re.sub(r"\(record ", "(", str(exc).replace(str(path), "CAR"))
    return "ok", {k: getattr(r, k) for k in r.__slots__}


def _grown(raw: bytes, path: Path, work: Path, did: str, chunk: int,
           stall: bool = False) -> rrepo.RepoCheck:
    """check_car after a pass over `raw` written to `path` `chunk` bytes at a time, as
    download() writes the body (with `stall`, the writer waits for the pass to catch up
    with each chunk, so the pass waits for bytes every time)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        scan = rrepo._Scan(fd, work)
        for at in range(0, len(raw), chunk):
            os.write(fd, raw[at:at + chunk])
            scan.add(len(raw[at:at + chunk]))
            if stall:
                scan.ready.wait(0.01)
        scan.finish()
        scan.done.wait()
    finally:
        os.close(fd)
    return rrepo.check_car(path, work, did, scan)


def _compare(raw: bytes, tmp: Path, did: str | None = None, chunk: int = 4096,
             stall: bool = False) -> tuple[str, object]:
    """The reference's outcome, after checking that the pass-and-walk's and check_car's
    own (no pass: the file read anew) are the same."""
    did = did or _did(raw, tmp)
    ref_path, new_path, plain_path = tmp / "ref.car", tmp / "new.car", tmp / "plain.car"
    ref_path.write_bytes(raw)
    plain_path.write_bytes(raw)
    want = _outcome(lambda: reference_check_car(ref_path, tmp, did), ref_path)
    got = _outcome(lambda: _grown(raw, new_path, tmp, did, chunk, stall), new_path)
    plain = _outcome(lambda: rrepo.check_car(plain_path, tmp, did), plain_path)
    assert got == want
    assert plain == want
    assert sorted(os.listdir(tmp)) == ["did.car", "new.car", "plain.car", "ref.car"] or \
        sorted(os.listdir(tmp)) == ["new.car", "plain.car", "ref.car"]
    return want


def test_a_record_missing_before_a_damaged_node(tmp_path: Path) -> None:
    """A record block missing (key app.bsky.feed.post/3ka) before an MST node whose keys
    are out of order (found by the fuzzer): the table path meets the damaged node first,
    since it does not look records up, and proves nothing; check_car then reads the file
    anew and walks record by record, so with or without the download's pass the refusal
    is the same and names the first problem in key order, the missing record -- as the
    reference does now that CarRepo.walk() gives the keys before an error first."""
    raw = (CARS.parent.parent / "fuzz" / "regressions" / "car" /
           "crash-2272b394f994da9ebe1484d1c224edab04831411").read_bytes()
    kind, message = _compare(raw, tmp_path)
    assert kind == "refused" and "app.bsky.feed.post/3ka" in str(message) \
        and "is missing" in str(message), message


@pytest.mark.parametrize("name", REAL)
def test_real_cars_as_the_reference(name: str, tmp_path: Path) -> None:
    """Every real CAR: the same verdict, counts, collections, SHA-256 and blob refs."""
    outcome, value = _compare((CARS / name).read_bytes(), tmp_path)
    if name == "repo_slice.car":
        assert outcome == "refused" and "is missing" in str(value)
    else:
        assert outcome == "ok"
        assert isinstance(value, dict) and value["records"] > 0


def test_blob_refs_of_the_real_cars(tmp_path: Path) -> None:
    """The blob refs are found (not merely equal when there are none): the @bsky.app
    repository references 190 blobs, the staging one 6 (beside legacy refs it skips)."""
    found = {}
    for name in ("bsky-app.z72i7hdynmk6r22z27h6tvur.car", "paul_staging.repo.car"):
        raw = (CARS / name).read_bytes()
        p = tmp_path / name
        p.write_bytes(raw)
        found[name] = rrepo.check_car(p, tmp_path, _did(raw, tmp_path)).blob_refs
    assert len(found["bsky-app.z72i7hdynmk6r22z27h6tvur.car"]) == 190
    assert len(found["paul_staging.repo.car"]) == 6
    for refs in found.values():
        assert all(k.startswith("b") and "/" in v for k, v in refs.items())


def _record_and_node(raw: bytes, tmp: Path) -> tuple[bytes, bytes]:
    """The CID of a record the tree references, and of an MST node below the root."""
    p = tmp / "pick.car"
    p.write_bytes(raw)
    with CarRepo(p, tmp, verb="") as repo:
        rec = bytes(next(iter(repo.walk()))[1])
        root = repo._decode(repo.data, "MST root")
        assert isinstance(root, dict)
        node = bytes(root["l"] or root["e"][0]["t"])
    p.unlink()
    return rec, node


def _frame_of(raw: bytes, cid: bytes) -> tuple[int, int]:
    starts = [(s, e) for s, e, c in frames(raw) if c == cid]
    assert len(starts) == 1
    return starts[0]


def test_record_bytes_altered(tmp_path: Path) -> None:
    raw = BSKY.read_bytes()
    rec, _ = _record_and_node(raw, tmp_path)
    _, end = _frame_of(raw, rec)
    bad = bytearray(raw)
    bad[end - 2] ^= 0x01
    outcome, msg = _compare(bytes(bad), tmp_path)
    assert outcome == "refused"
    assert f"block {_core.cid_str(rec)} (" in str(msg) and "does not match its CID" in str(msg)


def test_record_block_missing(tmp_path: Path) -> None:
    raw = BSKY.read_bytes()
    rec, _ = _record_and_node(raw, tmp_path)
    start, end = _frame_of(raw, rec)
    outcome, msg = _compare(raw[:start] + raw[end:], tmp_path)
    assert outcome == "refused"
    assert f"block {_core.cid_str(rec)} (" in str(msg) and "is missing" in str(msg)


def test_mst_node_damaged(tmp_path: Path) -> None:
    raw = BSKY.read_bytes()
    _, node = _record_and_node(raw, tmp_path)
    _, end = _frame_of(raw, node)
    bad = bytearray(raw)
    bad[end - 1] ^= 0x40
    outcome, msg = _compare(bytes(bad), tmp_path)
    assert outcome == "refused"
    assert f"block {_core.cid_str(node)} (MST node" in str(msg)


def test_mst_node_out_of_order(tmp_path: Path) -> None:
    outcome, msg = _compare(unordered_in_node(), tmp_path)
    assert outcome == "refused" and "out of order (the MST is damaged)" in str(msg)


@pytest.mark.parametrize("where", ["header", "first block", "middle block", "last block"])
def test_body_cut_mid_block(where: str, tmp_path: Path) -> None:
    raw = BSKY.read_bytes()
    fr = frames(raw)
    cut = {"header": 5, "first block": (fr[0][0] + fr[0][1]) // 2,
           "middle block": (fr[len(fr) // 2][0] + fr[len(fr) // 2][1]) // 2,
           "last block": fr[-1][1] - 1}[where]
    outcome, msg = _compare(raw[:cut], tmp_path, did="did:plc:z72i7hdynmk6r22z27h6tvur")
    assert outcome == "refused"
    assert ("truncated" in str(msg)) or ("not a CAR file" in str(msg))


def test_another_accounts_repository(tmp_path: Path) -> None:
    outcome, msg = _compare(BSKY.read_bytes(), tmp_path, did="did:plc:someoneelse")
    assert outcome == "refused"
    assert msg == ("the PDS sent the repository of did:plc:z72i7hdynmk6r22z27h6tvur, not of "
                   "did:plc:someoneelse")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_cars_as_the_reference(name: str, tmp_path: Path) -> None:
    """The hostile CARs (tests/helpers/hostile.py): the same verdict and message."""
    _compare(CASES[name](), tmp_path)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536, 1 << 20])
def test_the_pass_waits_for_bytes(chunk: int, tmp_path: Path) -> None:
    """Written a byte, 7 bytes or a chunk at a time (from 4096 on, with the pass caught
    up and waiting each time): the same result as the file read whole."""
    if chunk < 4096:
        raw = (CARS / "bnewbold.robocracy.org.20250310005405.car").read_bytes()
        assert _compare(raw, tmp_path, chunk=chunk)[0] == "ok"
    else:
        assert _compare(BSKY.read_bytes(), tmp_path, chunk=chunk, stall=True)[0] == "ok"


def test_a_restarted_download_starts_a_new_pass(tmp_path: Path) -> None:
    """download()'s restart: the pass over the first attempt's bytes is stopped (its
    thread ends, its block index closed), the file emptied, a new pass reads the new
    attempt's bytes."""
    raw = BSKY.read_bytes()
    path = tmp_path / "r.car"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        first = rrepo._Scan(fd, tmp_path)
        os.write(fd, raw[:len(raw) // 2])
        first.add(len(raw) // 2)
        first.stop()
        assert first.done.is_set() and not first.thread.is_alive()
        assert first.result() is None
        os.ftruncate(fd, 0)
        second = rrepo._Scan(fd, tmp_path)
        os.pwrite(fd, raw, 0)
        second.add(len(raw))
        second.finish()
        second.done.wait()
    finally:
        os.close(fd)
    got = rrepo.check_car(path, tmp_path, "did:plc:z72i7hdynmk6r22z27h6tvur", second)
    want = reference_check_car(path, tmp_path, "did:plc:z72i7hdynmk6r22z27h6tvur")
    assert {k: getattr(got, k) for k in got.__slots__} == \
        {k: getattr(want, k) for k in want.__slots__}
    assert sorted(os.listdir(tmp_path)) == ["r.car"]


def test_verdicts_put_the_good_copy_first(tmp_path: Path) -> None:
    """The verifying scan decides each block's verdict as it passes: a good copy after 60
    damaged ones of the same CID is the first entry its key lists, so the walk finds it
    without hashing a copy again; the file's SHA-256 is the whole file's."""
    import hashlib

    raw = CASES["damaged_copies"]()
    p = tmp_path / "d.car"
    p.write_bytes(raw)
    n, used = _core.read_uvarint(raw)
    start = used + n
    fd = os.open(p, os.O_RDONLY)
    ix_fd = os.open(tmp_path / "ix", os.O_RDWR | os.O_CREAT, 0o600)
    runs_fd = os.open(tmp_path / "runs", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sc = _core.CarScanner(fd, start, raw[:start], None, len(raw), verify=True)
        ix = sc.build_index(ix_fd, runs_fd)
        assert sc.sha256_hex() == hashlib.sha256(raw).hexdigest()
        rec = frames(raw)[0][2]
        entries = ix.find(_core.testing.cid_index_key(rec))
        assert len(entries) == 61
        good = max(s for s, _, c in frames(raw) if c == rec)
        assert entries[0][0] == good + 2   # the CID, after its 2-byte length varint
        assert ix.block(fd, rec)[0] == 0
    finally:
        for f in (fd, ix_fd, runs_fd):
            os.close(f)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_cut_or_flipped_byte_as_the_reference(tmp_path: Path, data: st.DataObject) -> None:
    """A real CAR cut anywhere, or with any one byte changed: the same outcome and the
    same message as the reference."""
    raw = (CARS / "bnewbold.robocracy.org.20250310005405.car").read_bytes()
    for f in os.listdir(tmp_path):
        os.unlink(tmp_path / f)
    at = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        body = raw[:at]
    else:
        b = bytearray(raw)
        b[at] ^= data.draw(st.integers(1, 255))
        body = bytes(b)
    chunk = data.draw(st.sampled_from([3, 500, 1 << 16]))
    _compare(body, tmp_path, did="did:plc:nhxcyu4ewwhl5pqil4dotqjo", chunk=chunk)


def test_a_cut_body_names_the_first_problem_in_key_order(tmp_path: Path) -> None:
    """Cut where a record (app.bsky.actor.profile/self) and, later in key order, an MST
    node are both lost, in one batch of the walk's keys: every check names the record.
    (The reference read the keys through CarRepo.walk(), which dropped the batch's keys
    before the node's error and so named the node: found by the test above.)"""
    raw = (CARS / "bnewbold.robocracy.org.20250310005405.car").read_bytes()[:8482]
    kind, message = _compare(raw, tmp_path, did="did:plc:nhxcyu4ewwhl5pqil4dotqjo")
    assert kind == "refused"
    assert "(app.bsky.actor.profile/self) is missing" in str(message)


def test_no_thread_is_left_running() -> None:
    """Every pass above ended: no skyexport-repo-scan thread outlives its download."""
    assert not [t for t in threading.enumerate() if t.name == "skyexport-repo-scan"]


def _scan_table(raw: bytes, tmp: Path, **kw: Any) -> tuple[Any, Any, int, int, Path]:
    """(the verifying scan's BlockTable or None, the scanner, the CAR's descriptor, the
    good CIDs' descriptor, the CAR's path): the pass of `fetch` over the whole of `raw`."""
    p = tmp / "v.car"
    p.write_bytes(raw)
    n, used = _core.read_uvarint(raw)
    start = used + n
    good = os.open(tmp / "g", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    fd = os.open(p, os.O_RDONLY)
    sc = _core.CarScanner(fd, start, raw[:start], None, len(raw), verify=True, good_fd=good)
    with CarRepo(p, tmp, verb="") as repo:
        root = repo.root
    return sc.build_table(root, **kw), sc, fd, good, p


def _verified_check(raw: bytes, tmp: Path) -> tuple[int, Any, Any]:
    """(what CarCheck.run returns through the verifying scan's table and good CIDs, the
    check, the scanner)."""
    table, sc, fd, good, p = _scan_table(raw, tmp)
    refs = os.open(tmp / "f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with CarRepo(p, tmp, verb="") as repo:
            data = repo.data
        check = _core.CarCheck(fd, table, data, sc, refs)
        return check.run(), check, sc
    finally:
        for f in (fd, good, refs):
            os.close(f)


@pytest.mark.parametrize("name", REAL)
def test_the_scans_table_proves_the_real_cars(name: str, tmp_path: Path) -> None:
    """Through the scan's BlockTable (no block index), every real CAR the reference
    accepts is proved sound, with every field the reference finds; one it refuses is not
    proved (check_car then reads it anew and words the refusal)."""
    raw = (CARS / name).read_bytes()
    did = _did(raw, tmp_path)
    want = _outcome(lambda: reference_check_car(CARS / name, tmp_path, did), CARS / name)
    table, sc, fd, good, p = _scan_table(raw, tmp_path)
    try:
        assert table is not None
        got = rrepo._check_scanned(p, tmp_path, did, _core.CID(_root(raw)), table,
                                   sc.sha256_hex(), sc)
    finally:
        os.close(fd)
        os.close(good)
    _as_the_reference(want, got)


def _as_the_reference(want: tuple[str, object], got: rrepo.RepoCheck | None) -> None:
    """The table path proved sound what the reference accepts, with its every field, and
    nothing it refuses (check_car then reads anew and words the refusal)."""
    if want[0] == "ok":
        assert got is not None
        assert {k: getattr(got, k) for k in got.__slots__} == want[1]
    else:
        assert got is None


def _root(raw: bytes) -> bytes:
    n, used = _core.read_uvarint(raw)
    roots = _core.cbor_to_py(raw[used:used + n])[0]["roots"]
    return bytes(roots[0])


def _blocks(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(CID, data) of every block."""
    out = []
    for s, e, cid in frames(raw):
        k = _core.read_uvarint(raw, s)[1]
        out.append((cid, raw[s + k + len(cid):e]))
    return out


def test_the_table_holds_the_blocks_the_check_reads(tmp_path: Path) -> None:
    """The table keeps the commit, every block shaped as an MST node (a2 61 65: {"e":
    ..., "l": ...}) and every block holding the text "blob" -- no other -- and finds each
    by its CID."""
    raw = BSKY.read_bytes()
    table, _, fd, good, _ = _scan_table(raw, tmp_path)
    try:
        kept = [(c, d) for c, d in _blocks(raw)
                if d[:3] == b"\xa2\x61\x65" or b"\x64blob" in d or c == _root(raw)]
        left = [c for c, d in _blocks(raw) if (c, d) not in kept]
        assert table.count == len(kept) and kept and left
        for cid, data in kept:
            assert table.block(fd, cid) == (0, data)
        for cid in left:
            assert table.block(fd, cid) == (1, None)
    finally:
        os.close(fd)
        os.close(good)


def test_a_lookup_compares_the_whole_cid(tmp_path: Path) -> None:
    """A CID that ends like a kept block's (the same index key, so the same tag and
    bucket) but differs before: not that block."""
    raw = BSKY.read_bytes()
    table, _, fd, good, _ = _scan_table(raw, tmp_path)
    try:
        node = next(c for c, d in _blocks(raw) if d[:3] == b"\xa2\x61\x65")
        assert table.block(fd, node)[0] == 0
        twin = node[:10] + bytes([node[10] ^ 0xFF]) + node[11:]
        assert twin[-8:] == node[-8:]
        assert table.block(fd, twin) == (1, None)
    finally:
        os.close(fd)
        os.close(good)


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize(("limit", "run"), [(0, 1 << 17), (10, 1 << 17), (10, 7)])
def test_a_table_too_big_spills_to_a_block_index(name: str, limit: int, run: int,
                                                 tmp_path: Path) -> None:
    """More blocks to keep than the table may hold (a repository bigger than a million
    posts; here a limit of 0 or 10): they go to a block index on disk instead (sorted
    runs merged; runs of 7 entries for many of them), with good verdicts, and the check
    through it finds what the reference finds."""
    raw = (CARS / name).read_bytes()
    did = _did(raw, tmp_path)
    want = _outcome(lambda: reference_check_car(CARS / name, tmp_path, did), CARS / name)
    ix_fd = os.open(tmp_path / "ix", os.O_RDWR | os.O_CREAT, 0o600)
    runs_fd = os.open(tmp_path / "runs", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        index, sc, fd, good, p = _scan_table(raw, tmp_path, index_fd=ix_fd, runs_fd=runs_fd,
                                             max_entries=limit, run=run)
        try:
            kept = [c for c, d in _blocks(raw)
                    if d[:3] == b"\xa2\x61\x65" or b"\x64blob" in d or c == _root(raw)]
            if len(kept) <= limit:    # fits: the table
                assert isinstance(index, _core.BlockTable) and index.count == len(kept)
            else:
                assert isinstance(index, _core.BlockIndex) and index.count == len(kept)
                for cid in kept:
                    assert index.block(fd, cid)[0] == 0
            got = rrepo._check_scanned(p, tmp_path, did, _core.CID(_root(raw)), index,
                                       sc.sha256_hex(), sc)
        finally:
            os.close(fd)
            os.close(good)
    finally:
        os.close(ix_fd)
        os.close(runs_fd)
    _as_the_reference(want, got)


def test_a_table_too_big_is_given_up(tmp_path: Path) -> None:
    """More blocks to keep than the table may hold, and no files to spill them to: the
    scan still decides every verdict and hashes the file, but gives no table (fetch then
    checks with a block index, reading the file anew)."""
    raw = BSKY.read_bytes()
    table, sc, fd, good, _ = _scan_table(raw, tmp_path, max_entries=10)
    os.close(fd)
    os.close(good)
    assert table is None
    import hashlib
    assert sc.sha256_hex() == hashlib.sha256(raw).hexdigest()
    assert sc.blocks == len(frames(raw))


def test_records_proved_present_without_reading_them(tmp_path: Path) -> None:
    """With the scan's good CIDs, CarCheck reads the MST nodes and only the records that
    may hold blob refs (their bytes hold the text "blob"), yet finds all 190 blob refs;
    the records are proved present by the join."""
    raw = BSKY.read_bytes()
    n, check, _ = _verified_check(raw, tmp_path)
    assert n == 627 == check.records
    records_read = check.blocks_read - check.nodes_read
    holding_blob = sum(1 for s, e, _ in frames(raw) if b"\x64blob" in raw[s:e])
    assert 0 < records_read <= holding_blob < 627
    assert len(check.blob_refs) == 190


@pytest.mark.parametrize("change", ["drop", "flip"])
def test_a_missing_or_damaged_record_fails_the_proof(change: str, tmp_path: Path) -> None:
    """A record dropped from the file, or its bytes changed: the join does not prove the
    records present (run() gives -1; check_car then checks record by record for the
    error, as test_record_block_missing shows)."""
    raw = BSKY.read_bytes()
    rec, _ = _record_and_node(raw, tmp_path)
    start, end = _frame_of(raw, rec)
    if change == "drop":
        body = raw[:start] + raw[end:]
    else:
        b = bytearray(raw)
        b[end - 3] ^= 0x10
        body = bytes(b)
    assert _verified_check(body, tmp_path)[0] == -1


def test_an_unexpected_error_of_the_pass_reaches_the_caller(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass's thread dies of something that is not a CAR or I/O problem: check_car
    raises it, rather than quietly reading the file anew."""
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the pass")

    monkeypatch.setattr(_core, "CarScanner", broken)
    raw = BSKY.read_bytes()
    with pytest.raises(RuntimeError, match="a bug in the pass"):
        _grown(raw, tmp_path / "x.car", tmp_path, "did:plc:z72i7hdynmk6r22z27h6tvur", 1 << 16)


def test_the_fsync_under_way_reports_its_error(tmp_path: Path) -> None:
    """download()'s fsync runs on a thread while the check reads the file; what it
    raises reaches wait() -- here a real EINVAL (a pipe cannot be fsync'd) -- and the
    thread is gone after it; wait(check=False), for a file being discarded, does not
    raise."""
    import errno

    r, w = os.pipe()
    try:
        durable = rrepo.Durable(w)
        with pytest.raises(OSError) as info:
            durable.wait()
        assert info.value.errno == errno.EINVAL
        rrepo.Durable(w).wait(check=False)
        f = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT, 0o600)
        os.write(f, b"x" * 4096)
        rrepo.Durable(f).wait()
        os.close(f)
    finally:
        os.close(r)
        os.close(w)
    assert not [t for t in threading.enumerate() if t.name == "skyexport-repo-fsync"]


def _ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "skyexport-check-ahead"]


def test_the_nodes_are_read_ahead(tmp_path: Path) -> None:
    """With the scan's table, every MST node CarCheck checks was read ahead by its thread
    (in the walk's order), the outcome is the plain check's, and the thread is gone once
    run() returns."""
    raw = BSKY.read_bytes()
    n, check, _ = _verified_check(raw, tmp_path)
    assert n == 627
    assert check.nodes_ahead == check.nodes_read > 100
    assert not _ahead_threads()


def test_the_nodes_are_read_ahead_through_a_block_index(tmp_path: Path) -> None:
    """Through a block index -- check_car's own reading of the file, with no verdicts
    yet (each node hashed by the read-ahead), or the one the scan spills to (verdicts
    good) -- the nodes are read ahead too, with the same outcome."""
    raw = BSKY.read_bytes()
    with CarRepo(BSKY, tmp_path, verb="") as repo:
        plain = _core.CarCheck(repo.fd, repo.index, repo.data)
        assert plain.run() == 627
        assert plain.nodes_ahead == plain.nodes_read > 100
    ix_fd = os.open(tmp_path / "ix", os.O_RDWR | os.O_CREAT, 0o600)
    runs_fd = os.open(tmp_path / "runs", os.O_RDWR | os.O_CREAT, 0o600)
    refs = os.open(tmp_path / "refs", os.O_RDWR | os.O_CREAT, 0o600)
    index, sc, fd, good, _ = _scan_table(raw, tmp_path, index_fd=ix_fd, runs_fd=runs_fd,
                                         max_entries=0)
    try:
        assert isinstance(index, _core.BlockIndex)
        check = _core.CarCheck(fd, index, _core.CID(_blocks_root_data(raw)), sc, refs)
        assert check.run() == 627
        assert check.nodes_ahead == check.nodes_read == plain.nodes_read
        assert check.collections == plain.collections and check.blob_refs == plain.blob_refs
    finally:
        for f in (fd, good, ix_fd, runs_fd, refs):
            os.close(f)
    assert not _ahead_threads()


def _blocks_root_data(raw: bytes) -> bytes:
    """The MST root of the CAR's commit."""
    commit = dict(_blocks(raw))[_root(raw)]
    return bytes(_core.cbor_to_py(commit)[0]["data"])


def test_a_node_too_big_to_read_ahead(tmp_path: Path) -> None:
    """A small root over a node of about 20 KB (more than the read-ahead holds) over a
    small one: the root is read ahead, then the read-ahead ends and CarCheck reads the
    rest itself, with the same outcome as without any read-ahead."""
    from helpers.hostile import POST, Car, post, tid

    car = Car()
    rec = car.add(post())
    low = car.node([(POST + tid(9), rec, None)])
    fat = car.node([(f"a.b.c/{j:05d}" + "k" * 490, rec, None) for j in range(36)]
                   + [("a.b.c/zz", rec, low)], compress=False)
    root = car.node([("a.b.a/x", rec, fat)])
    raw = car.finish(root)
    n, check, _ = _verified_check(raw, tmp_path)
    assert (n, check.nodes_read, check.nodes_ahead) == (39, 3, 1)
    plain = tmp_path / "plain.car"
    plain.write_bytes(raw)
    with CarRepo(plain, tmp_path, verb="") as repo:
        ref = _core.CarCheck(repo.fd, repo.index, repo.data)
        assert ref.run() == n and ref.collections == check.collections
    assert not _ahead_threads()


def test_the_read_ahead_ends_with_a_failed_check(tmp_path: Path) -> None:
    """A node whose keys are out of order: run() raises, and the read-ahead's thread is
    stopped and gone by then."""
    raw = unordered_in_node()
    with pytest.raises(ValueError, match="out of order"):
        _verified_check(raw, tmp_path)
    assert not _ahead_threads()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 0xFFFF, 0x1234]), st.integers(0, (1 << 48) - 1)),
                max_size=400) | st.lists(st.tuples(st.just(7), st.integers(0, 1 << 20)),
                                         min_size=33, max_size=300))
@example([(b % 3, (b * 7919) % 1000) for b in range(2000)])
def test_the_tables_sort(keys: list[tuple[int, int]]) -> None:
    """The table's in-place sort (no second copy): entries crowded into a few buckets
    of the directory, as CIDs ground to share one would be (a big bucket is heap-sorted,
    a small one insertion-sorted), come out in order, and the directory points at each
    bucket's first entry."""
    kos = [(b << 48) | rest for b, rest in keys]
    got, directory = _core.testing.table_sort(kos)
    assert got == sorted(kos)
    assert directory[-1] == len(kos) and directory[0] == 0
    for b in (0, 1, 2, 7, 0x1234, 0xFFFF):
        assert directory[b] == sum(1 for k in kos if k >> 48 < b)
        assert directory[b + 1] - directory[b] == sum(1 for k in kos if k >> 48 == b)
