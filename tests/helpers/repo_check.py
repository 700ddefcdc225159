"""The slow reference for `skyexport fetch`'s repository check (remote/repo.py check_car):
the check as it was written first, in Python -- the MST walked through CarRepo, every
record read back through the block index and hashed against its CID, the records holding
the text "blob" decoded (cbor_to_py) and their blob refs collected.  The core's check
(CarCheck, and the verdicts of the pass that indexes the download) must accept and refuse
the same files and find the same blob refs."""

from __future__ import annotations

from pathlib import Path

from skyexport import _core
from skyexport.errors import ArchiveError
from skyexport.remote.errors import FetchError
from skyexport.remote.repo import RepoCheck
from skyexport.sources.car.repo import CarRepo

_BLOB = b"\x64blob"  # the DAG-CBOR text "blob": a record without it holds no blob ref


def _blob_refs(value: object, out: list[bytes], depth: int = 0) -> None:
    """The `ref` links of the blob objects (`{"$type": "blob", "ref": CID, ...}`) in a
    decoded record."""
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


def reference_check_car(path: Path, index_dir: Path, did: str) -> RepoCheck:
    """Check the CAR at `path` whole; FetchError (one line) if it is not a sound repository
    of `did`."""
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
