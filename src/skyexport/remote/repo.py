"""The repository: `com.atproto.sync.getRepo` streamed to a hidden temporary file in the
backup directory (never held in memory), checked with skyexport's own CAR reader - the
framing of every block, the commit (its DID must be the account's), every MST node and
every record against its CID - then fsync'd and renamed over `repo.car`.  A download that
fails, is cut at the cap or is interrupted leaves the previous `repo.car` as it was.

The check is in two parts.  While the body arrives, a second thread (_Scan) reads the
growing temporary file up to what has been written, in the core and without the GIL:
every block framed and hashed against its CID, the file's SHA-256, every good block's CID
spilled to a scratch file, and the good blocks the check reads -- the commit, the MST
nodes, the records that may hold blob refs -- kept in a table in RAM by offset (the core's
BlockTable; no block index is built unless there are more of them than the table holds,
about a million posts' worth).  Once the download ends, CarCheck walks the MST through
that table, its nodes read ahead on a thread of the core: every MST node read and
checked, every record the tree references proved to have a good copy (all at once,
against the spilled CIDs), the blob refs of the records holding any collected.  If
anything fails or is not there (a header it cannot read, a block the table lacks, a
record with no good copy, an error), check_car reads the file anew as `export` would,
with a block index, so that every refusal reads as CarRepo and the walk word it."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ArchiveError
from .errors import AccountError, FetchError
from .http import Client, truncate, write_all

DEFAULT_MAX_REPO = 16 * 1000 ** 3


class RepoCheck:
    """What the check of a repository CAR found; `blob_refs`: every blob CID a record
    references, with the key of the first such record."""

    __slots__ = ("did", "rev", "sha256", "size", "blocks", "records", "collections",
                 "blob_refs")

    def __init__(self, did: str, rev: str | None, sha256: str, size: int, blocks: int,
                 records: int, collections: dict[str, int],
                 blob_refs: dict[str, str] | None = None) -> None:
        self.did, self.rev, self.sha256, self.size = did, rev, sha256, size
        self.blocks, self.records, self.collections = blocks, records, collections
        self.blob_refs = blob_refs if blob_refs is not None else {}


def _records(path: Path, index_dir: Path, check: bool) -> Iterator[tuple[str, bytes]]:
    """(key, record CID) of every record of the CAR at `path`, in key order; with
    `check`, every record's block is read and checked against its CID."""
    from ..sources.car.repo import CarRepo

    with CarRepo(path, index_dir, verb="") as repo:
        for key, cid in repo.walk():
            if check:
                repo.block(cid, key)
            yield key, bytes(cid)


SCAN_STEP = 1 << 20          # the pass waits for this many new bytes (or the end) at a time


class _Stopped(Exception):
    """The pass was told to stop (the download restarts, or failed)."""


class _Scan:
    """The pass over the repository as it downloads, on a thread of its own: the core's
    CarScanner (verifying) reads the temporary file `fd` up to what `add()` has counted
    as written, then waits for more; `finish()` says the body is whole.  `result()` is
    (the commit's CID, from the header; the BlockTable -- or, for a repository with more
    blocks to keep than it holds, a BlockIndex of them in a scratch file --; SHA-256; the
    scanner -- its good CIDs for CarCheck --; the descriptors of the good CIDs' and the
    index's scratch files) or None when the pass failed (check_car then reads the file
    anew and words any refusal).  `stop()` ends it early; every exception of the thread is
    kept, none is lost (result() gives None for it)."""

    def __init__(self, fd: int, index_dir: Path) -> None:
        self.fd = fd
        self.index_dir = index_dir
        self.written = 0
        self.given = 0
        self.want = 0
        self.final = False
        self.abort = False
        self.ready = threading.Event()
        self.done = threading.Event()
        self.out: tuple[Any, Any, str, Any, int, int] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="skyexport-repo-scan",
                                       daemon=True)
        self.thread.start()

    def add(self, n: int) -> None:
        self.written += n
        if self.written >= self.want:
            self.ready.set()

    def finish(self) -> None:
        self.final = True
        self.ready.set()

    def stop(self) -> None:
        self.abort = True
        self.ready.set()
        self.done.wait()   # not join(): see sources/car/repo.py _Insert
        if self.out is not None:
            os.close(self.out[4])
            os.close(self.out[5])
            self.out = None

    def result(self) -> tuple[Any, Any, str, Any, int, int] | None:
        """What the pass built, or None when it found the CAR unsound or could not read
        or write (check_car words that, reading anew); any other exception of its thread
        is raised here."""
        self.done.wait()
        if self.error is not None and not isinstance(self.error, (ValueError, OSError)):
            raise self.error
        out, self.out = self.out, None
        return out

    def _wait(self, want: int) -> tuple[int, bool]:
        """(bytes written, final) once `want` bytes are written or the body is whole."""
        while True:
            if self.abort:
                raise _Stopped
            self.want = want
            self.ready.clear()
            final = self.final
            written = self.written
            if final or written >= want:
                return written, final
            self.ready.wait(1.0)

    def _more(self) -> tuple[int, bool]:
        written, final = self._wait(self.given + SCAN_STEP)
        self.given = written
        return written, final

    def _run(self) -> None:
        from .. import _core
        from ..sources.car.repo import HEADER_MAX, one_root, scratch_file

        good_fd = index_fd = runs_fd = -1
        try:
            self.given, _ = self._wait(HEADER_MAX + 32)
            found = one_root(self.fd)
            if found is None:
                return
            root, start, head = found
            good_fd = scratch_file(self.index_dir, "repo.car")
            index_fd = scratch_file(self.index_dir, "repo.car")
            runs_fd = scratch_file(self.index_dir, "repo.car")
            scanner = _core.CarScanner(self.fd, start, head, None, self.given, verify=True,
                                       more=self._more, good_fd=good_fd)
            table = scanner.build_table(root, index_fd, runs_fd)
            if table is not None:
                self.out = (root, table, scanner.sha256_hex(), scanner, good_fd, index_fd)
                good_fd = index_fd = -1
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - kept; check_car reads the file anew
            self.error = exc
        finally:
            for fd in (good_fd, index_fd, runs_fd):
                if fd >= 0:
                    os.close(fd)
            self.done.set()


def check_car(path: Path, index_dir: Path, did: str, scan: _Scan | None = None) -> RepoCheck:
    """Check the CAR at `path` whole; FetchError (one line) if it is not a sound repository
    of `did`.  With `scan` (download()'s pass over the bytes as they arrived), its table,
    spilled good CIDs and SHA-256 are used (_check_scanned); without it, or when that
    does not prove the repository sound, the file is read anew with a block index
    (CarRepo), which words any refusal.  The walk is the core's (CarCheck): every MST node
    read and checked, every record the tree references found with a good copy, the blob
    refs of the records that hold any collected."""
    from .. import _core
    from ..sources.car.repo import CarRepo

    got = scan.result() if scan is not None else None
    if got is not None:
        root, table, sha, scanner, good_fd, index_fd = got
        try:
            found = _check_scanned(path, index_dir, did, root, table, sha, scanner)
        finally:
            os.close(good_fd)
            os.close(index_fd)
        if found is not None:
            return found
    try:
        with CarRepo(path, index_dir, verb="") as repo:
            if repo.did != did:
                raise FetchError(f"the PDS sent the repository of {repo.did}, not of {did}")
            assert repo.index is not None
            try:
                check = _core.CarCheck(repo.fd, repo.index, repo.data)
                n = check.run()
            except (ValueError, OSError) as exc:
                raise repo._error(exc) from None
            return _result(repo.did, repo.rev, repo.sha256, repo.size, repo.stats.blocks,
                           n, check)
    except ArchiveError as exc:
        raise FetchError(f"the repository from the PDS is not sound: {exc}") from None


def _result(did: str, rev: str | None, sha: str, size: int, blocks: int, n: int,
            check: Any) -> RepoCheck:
    collections = {k.decode("ascii"): v for k, v in check.collections.items()}
    return RepoCheck(did, rev, sha, size, blocks, n, dict(sorted(collections.items())),
                     dict(check.blob_refs))


def _check_scanned(path: Path, index_dir: Path, did: str, root: Any, table: Any, sha: str,
                   scanner: Any) -> RepoCheck | None:
    """The check through the scan's BlockTable (or the BlockIndex it spilled to): the
    commit (`root`: the header's, as the scan read it) read from it, the MST walked
    (CarCheck), every record proved present against the scan's good CIDs.  None when this
    does not prove the repository sound -- anything amiss, even a block the table lacks --
    and check_car reads the file anew for the verdict and its words."""
    from .. import _core
    from ..sources.car.repo import _open_regular, commit_fields, scratch_file

    fd = refs_fd = -1
    try:
        fd, _ = _open_regular(path)
        status, commit = table.block(fd, bytes(root))
        if status != 0:
            return None
        got_did, _, rev, data = commit_fields(_core.cbor_to_py(commit)[0],
                                              _core.cid_str(root))
        if got_did != did:
            return None   # check_car says whose repository it is
        refs_fd = scratch_file(index_dir, "repo.car")
        check = _core.CarCheck(fd, table, data, scanner, refs_fd)
        n = check.run()
        if n < 0:
            return None
        return _result(got_did, rev, sha, scanner.size, scanner.blocks, n, check)
    except (ValueError, OSError):
        return None
    finally:
        for f in (fd, refs_fd):
            if f >= 0:
                os.close(f)


def diff_walk(old: Path, new: Path, index_dir: Path) -> tuple[int, int, int]:
    """(added, removed, changed) records from the CAR `old` to `new`: both walked in key
    order side by side, in flat memory.  The reference for diff()."""
    a = _records(old, index_dir, False)
    b = _records(new, index_dir, False)
    added = removed = changed = 0
    x = next(a, None)
    y = next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x[0] < y[0]):
            removed += 1
            x = next(a, None)
        elif x is None or y[0] < x[0]:
            added += 1
            y = next(b, None)
        else:
            changed += x[1] != y[1]
            x, y = next(a, None), next(b, None)
    return added, removed, changed


def _layer(key: bytes) -> int:
    """The MST layer of a key (atproto: leading zero 2-bit groups of its SHA-256)."""
    n = 0
    for byte in hashlib.sha256(key).digest():
        if byte == 0:
            n += 4
            continue
        n += 3 if byte < 4 else 2 if byte < 16 else 1 if byte < 64 else 0
        break
    return n


# An MST walk position: ("t", node CID) a subtree not yet opened, ("k", key, record CID).
_Item = tuple[Any, ...]


def _open_node(repo: Any, cid: bytes) -> tuple[list[_Item], int]:
    """A node's items in key order, and its layer (that of its first key)."""
    from .. import _core

    node = repo._decode(cid, "MST node")
    items: list[_Item] = []
    left = node["l"]
    if left is not None:
        items.append(("t", bytes(left)))
    key = b""
    layer = -1
    for e in node["e"]:
        key = key[:e["p"]] + e["k"]
        if layer < 0:
            layer = _layer(key)
        if not isinstance(e["v"], _core.CID):
            raise ValueError("malformed MST entry")
        items.append(("k", key.decode("ascii"), bytes(e["v"])))
        if e["t"] is not None:
            items.append(("t", bytes(e["t"])))
    return items, max(layer, 0)


def diff(old: Path, new: Path, index_dir: Path) -> tuple[int, int, int]:
    """(added, removed, changed) records from the CAR `old` to `new`, opening only the MST
    nodes that differ: two subtrees with the same CID hold the same records, so they are
    stepped over (atproto's MST diff).  A rerun after a few new records reads a few nodes,
    not both repositories.  Memory: two stacks, as deep as the trees."""
    from ..sources.car.repo import CarRepo

    with CarRepo(old, index_dir, verb="") as ra, CarRepo(new, index_dir, verb="") as rb:
        a: list[_Item] = [("t", bytes(ra.data))]
        b: list[_Item] = [("t", bytes(rb.data))]
        added = removed = changed = 0

        def step_into(stack: list[_Item], repo: Any) -> None:
            items, _ = _open_node(repo, stack.pop()[1])
            stack.extend(reversed(items))

        while a or b:
            x = a[-1] if a else None
            y = b[-1] if b else None
            if x is not None and y is not None and x[0] == "t" and y[0] == "t":
                if x[1] == y[1]:
                    a.pop()
                    b.pop()
                    continue
                xi, xl = _open_node(ra, x[1])
                yi, yl = _open_node(rb, y[1])
                if xl >= yl:  # open the higher (or both, at one layer): they may realign
                    a.pop()
                    a.extend(reversed(xi))
                if yl >= xl:
                    b.pop()
                    b.extend(reversed(yi))
                continue
            if x is not None and x[0] == "t":
                step_into(a, ra)
                continue
            if y is not None and y[0] == "t":
                step_into(b, rb)
                continue
            if y is None or (x is not None and x[1] < y[1]):
                removed += 1
                a.pop()
            elif x is None or y[1] < x[1]:
                added += 1
                b.pop()
            else:
                changed += x[2] != y[2]
                a.pop()
                b.pop()
        return added, removed, changed


class Durable:
    """The fsync of a file on a thread of its own (its own descriptor), so that the
    check reads the file while the disk writes it.  wait() -- before the rename that
    publishes the file -- raises what the fsync raised; a caller that discards the file
    waits with `check=False`.  The thread ends by itself in either case."""

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name="skyexport-repo-fsync", daemon=True).start()

    def _run(self) -> None:
        try:
            os.fsync(self.fd)
        except BaseException as exc:  # noqa: BLE001 - raised by wait() on the caller's thread
            self.error = exc
        finally:
            os.close(self.fd)
            self.done.set()

    def wait(self, check: bool = True) -> None:
        self.done.wait()   # not join(): see sources/car/repo.py _Insert
        if check and self.error is not None:
            raise self.error


def download(client: Client, pds: str, did: str, directory: Path, max_size: int,
             on_bytes: Callable[[int], None],
             index_dir: Path | None = None) -> tuple[Path, _Scan | None, Durable]:
    """getRepo into a new hidden file in `directory`: its path, with `index_dir` the pass
    that read the bytes as they arrived (for check_car; its scratch files are in
    index_dir), and the file's fsync, under way (Durable: wait for it before renaming).
    The caller renames or removes the file."""
    tmp = directory / f".repo.car.{os.urandom(4).hex()}.part"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    ok = False
    scans: list[_Scan] = []
    try:
        put = write_all(fd)
        empty = truncate(fd)
        if index_dir is not None:
            scans.append(_Scan(fd, index_dir))

        def write(chunk: memoryview) -> None:
            put(chunk)
            if scans:
                scans[0].add(len(chunk))
            on_bytes(len(chunk))

        def restart() -> None:  # a new attempt: a new pass over the new bytes
            if scans:
                scans.pop().stop()
            empty()
            if index_dir is not None:
                scans.append(_Scan(fd, index_dir))

        client.get(f"{pds}/xrpc/com.atproto.sync.getRepo", {"did": did},
                   f"getRepo for {did}", write, restart, max_size, " (--max-repo-size)")
        if scans:
            scans[0].finish()
        durable = Durable(fd)
        if scans:
            scans[0].done.wait()   # it reads `fd`, closed below
        ok = True
        return tmp, (scans[0] if scans else None), durable
    finally:
        if not ok and scans:
            scans.pop().stop()
        os.close(fd)
        if not ok:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def latest_rev(client: Client, pds: str, did: str) -> str | None:
    """The head rev the PDS reports (`getLatestCommit`), or None if it does not say."""
    try:
        got = client.get_json(f"{pds}/xrpc/com.atproto.sync.getLatestCommit", {"did": did},
                              f"getLatestCommit for {did}", cap=64 * 1024)
    except FetchError as exc:
        if exc.status == 0 or isinstance(exc, AccountError):
            raise  # unreachable, an account error, or a cap: getRepo would fail alike
        return None  # any other answer (no getLatestCommit here?): the repository is fetched
    rev = got.get("rev") if isinstance(got, dict) else None
    return rev if isinstance(rev, str) else None
