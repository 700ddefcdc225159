"""The repository: `com.atproto.sync.getRepo` streamed to a hidden temporary file in the
backup directory (never held in memory), checked with skyexport's own CAR reader - the
framing of every block, the commit (its DID must be the account's), every MST node and
every record against its CID - then fsync'd and renamed over `repo.car`.  A download that
fails, is cut at the cap or is interrupted leaves the previous `repo.car` as it was."""

from __future__ import annotations

import hashlib
import os
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


_BLOB = b"\x64blob"  # the DAG-CBOR text "blob": a record without it holds no blob ref


def _blob_refs(value: object, out: list[bytes], depth: int = 0) -> None:
    """The `ref` links of the blob objects (`{"$type": "blob", "ref": CID, ...}`) in a
    decoded record."""
    from .. import _core

    if depth > 64:
        return
    if isinstance(value, dict):
        ref = value.get("ref")
        if value.get("$type") == "blob" and isinstance(ref, _core.CID):
            out.append(bytes(ref))
            return
        for v in value.values():
            if isinstance(v, (dict, list)):
                _blob_refs(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                _blob_refs(v, out, depth + 1)


def _records(path: Path, index_dir: Path, check: bool) -> Iterator[tuple[str, bytes]]:
    """(key, record CID) of every record of the CAR at `path`, in key order; with
    `check`, every record's block is read and checked against its CID."""
    from ..sources.car.repo import CarRepo

    with CarRepo(path, index_dir, verb="") as repo:
        for key, cid in repo.walk():
            if check:
                repo.block(cid, key)
            yield key, bytes(cid)


def check_car(path: Path, index_dir: Path, did: str) -> RepoCheck:
    """Check the CAR at `path` whole; FetchError (one line) if it is not a sound repository
    of `did`."""
    from .. import _core
    from ..sources.car.repo import CarRepo

    refs: dict[str, str] = {}
    found: list[bytes] = []
    try:
        with CarRepo(path, index_dir, verb="") as repo:
            if repo.did != did:
                raise FetchError(f"the PDS sent the repository of {repo.did}, not of {did}")
            n = 0
            for key, cid in repo.walk():
                data = repo.block(cid, key)
                n += 1
                if _BLOB in data:
                    try:
                        _blob_refs(_core.cbor_to_py(data)[0], found)
                    except ValueError:
                        pass  # not this check's business: export reports bad records
                    for ref in found:
                        refs.setdefault(_core.cid_str(ref), key)
                    found.clear()
            return RepoCheck(repo.did, repo.rev, repo.sha256, repo.size, repo.stats.blocks,
                             n, dict(sorted(repo.stats.collections.items())), refs)
    except ArchiveError as exc:
        raise FetchError(f"the repository from the PDS is not sound: {exc}") from None


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


def download(client: Client, pds: str, did: str, directory: Path, max_size: int,
             on_bytes: Callable[[int], None]) -> Path:
    """getRepo into a new hidden file in `directory` (fsync'd); its path.  The caller
    renames or removes it."""
    tmp = directory / f".repo.car.{os.urandom(4).hex()}.part"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    ok = False
    try:
        put = write_all(fd)

        def write(chunk: memoryview) -> None:
            put(chunk)
            on_bytes(len(chunk))

        client.get(f"{pds}/xrpc/com.atproto.sync.getRepo", {"did": did},
                   f"getRepo for {did}", write, truncate(fd), max_size,
                   " (--max-repo-size)")
        os.fsync(fd)
        ok = True
        return tmp
    finally:
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
