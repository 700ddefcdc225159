"""An account's blobs: `com.atproto.sync.listBlobs` (paged by cursor), then
`com.atproto.sync.getBlob` for every CID not already present and whole in `blobs/`.

A listed CID is untrusted: it becomes a file name only if it parses as a blob CID (CIDv1,
raw codec, SHA-256, base32: `bafkrei...`), which also gives the digest its bytes are
checked against.  Each blob is streamed to a temporary file in the backup's hidden work
directory, hashed as it arrives, and renamed to `blobs/<cid>` only if it matches; a
download that fails or is interrupted leaves nothing in `blobs/`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import AccountError, FetchError
from .http import CapExceeded, Client, Interrupted, clean, truncate, write_all

DEFAULT_JOBS = 4
DEFAULT_MAX_BLOB = 100 * 1000 * 1000
PAGE = 1000
_CID = re.compile(r"^b[a-z2-7]{58}$")
_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32 bytes


def blob_digest(cid: str) -> bytes | None:
    """The SHA-256 a blob CID names, or None if `cid` is not a blob CID (then it must never
    become a file name)."""
    if not isinstance(cid, str) or not _CID.match(cid):
        return None
    raw = base64.b32decode(cid[1:].upper() + "======")
    if len(raw) != 36 or not raw.startswith(_PREFIX):
        return None
    return raw[4:]


def list_blobs(client: Client, pds: str, did: str) -> Iterator[list[str]]:
    """The listed CIDs, page by page (untrusted strings)."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        params = {"did": did, "limit": str(PAGE)}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get_json(f"{pds}/xrpc/com.atproto.sync.listBlobs", params,
                               f"listBlobs for {did}")
        cids = page.get("cids") if isinstance(page, dict) else None
        if not isinstance(cids, list):
            raise FetchError(f"listBlobs for {did}: the answer has no `cids` list")
        yield [c if isinstance(c, str) else repr(c) for c in cids]
        nxt = page.get("cursor")
        if not cids or not isinstance(nxt, str) or not nxt:
            return
        if nxt in seen:
            raise FetchError(f"listBlobs for {did}: the server repeats cursor "
                             f"{clean(nxt)!r} (it would never end)")
        seen.add(nxt)
        cursor = nxt


def file_matches(path: Path, digest: bytes) -> bool:
    """`path` is a regular file (not followed if a symlink) whose SHA-256 is `digest`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return h.digest() == digest
            h.update(chunk)
    except OSError:
        return False
    finally:
        os.close(fd)


class BlobOutcome:
    __slots__ = ("cid", "kind", "size", "why")

    def __init__(self, cid: str, kind: str, size: int = 0, why: str = "") -> None:
        # kind: downloaded, present, missing (not served), bad (wrong bytes, too big),
        # failed (after the retries)
        self.cid, self.kind, self.size, self.why = cid, kind, size, why


def download_blob(client: Client, pds: str, did: str, cid: str, digest: bytes,
                  blobs_dir: Path, work_dir: Path, max_blob: int,
                  on_bytes: Callable[[int], None], ref: str | None = None,
                  maybe_there: bool = True) -> BlobOutcome:
    """One blob into `blobs_dir` (unless already there, whole); `ref`: the key of a
    record that references it, when listBlobs did not list it; `maybe_there`: False when
    blobs/ had no such name as the run began (no need to look)."""
    final = blobs_dir / cid
    if maybe_there and file_matches(final, digest):
        return BlobOutcome(cid, "present")
    tmp = work_dir / f"{cid}.{os.urandom(4).hex()}.part"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    kept = False
    try:
        h = [hashlib.sha256()]
        put = write_all(fd)
        empty = truncate(fd)

        def write(chunk: memoryview) -> None:
            put(chunk)
            h[0].update(chunk)
            on_bytes(len(chunk))

        def restart() -> None:
            empty()
            h[0] = hashlib.sha256()

        try:
            size = client.get(f"{pds}/xrpc/com.atproto.sync.getBlob",
                              {"did": did, "cid": cid}, f"blob {cid}", write, restart,
                              max_blob, " (--max-blob-size)", )
        except CapExceeded as exc:
            return BlobOutcome(cid, "bad", why=str(exc))
        except AccountError:
            raise
        except FetchError as exc:
            if exc.status == 404 or exc.xrpc == "BlobNotFound":
                detail = str(exc).removeprefix(f"blob {cid}: ")
                by = f", referenced by {ref}," if ref is not None else ""
                return BlobOutcome(cid, "missing",
                                   why=f"blob {cid}{by} is not served by the PDS ({detail})")
            return BlobOutcome(cid, "failed", why=str(exc))
        if h[0].digest() != digest:
            return BlobOutcome(cid, "bad", size,
                               f"blob {cid}: its {size:,} bytes do not match its CID "
                               "(SHA-256); discarded")
        if os.path.lexists(final) and not os.path.isfile(final):
            return BlobOutcome(cid, "bad", size, f"blob {cid}: blobs/{cid} exists and is "
                               "not a regular file; left as it is")
        os.rename(tmp, final)  # replaces a file there whose bytes did not match
        kept = True
        return BlobOutcome(cid, "downloaded", size)
    finally:
        os.close(fd)
        if not kept:
            try:
                os.unlink(tmp)
            except OSError:
                pass


class BlobRun:
    """The blob phase's counters (read by the progress snapshot)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listed = 0
        self.done = 0
        self.bytes = 0
        self.outcomes: dict[str, list[BlobOutcome]] = {
            k: [] for k in ("downloaded", "present", "missing", "bad", "failed")}
        self.refused: list[str] = []  # listed strings that are not blob CIDs
        self.listed_cids: set[str] = set()
        self.unlisted_refs: list[str] = []  # referenced by a record, not listed

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes += n


def fetch_blobs(client: Client, pds: str, did: str, blobs_dir: Path, work_dir: Path,
                jobs: int, max_blob: int, run: BlobRun,
                referenced: dict[str, str] | None = None) -> None:
    """Every listed blob into `blobs_dir`, then every blob a record references
    (`referenced`: CID -> record key) that was not listed; outcomes into `run`.  `jobs`
    worker threads take CIDs from a bounded queue (flat memory however many are listed).  Raises
    KeyboardInterrupt or a worker's error (AccountError...) after every worker stopped
    and removed its temporary file."""
    todo: queue.Queue[tuple[str, bytes, str | None] | None] = queue.Queue(maxsize=jobs * 4)
    errors: list[BaseException] = []
    there = set(os.listdir(blobs_dir))  # one listing, not one failed open() per new blob

    def work() -> None:
        try:
            while (item := todo.get()) is not None:
                if client.stop.is_set():
                    continue  # drain: the main thread may be blocked on a full queue
                out = download_blob(client, pds, did, item[0], item[1], blobs_dir, work_dir,
                                    max_blob, run.add_bytes, item[2], item[0] in there)
                with run.lock:
                    run.outcomes[out.kind].append(out)
                    run.done += 1
        except Interrupted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            client.stop.set()
            while todo.get() is not None:  # let the main thread finish putting
                pass

    threads = [threading.Thread(target=work, name=f"skyexport-blob-{i}", daemon=True)
               for i in range(jobs)]
    for t in threads:
        t.start()

    def put(item: tuple[str, bytes, str | None] | None) -> None:
        while True:
            try:
                todo.put(item, timeout=0.2)  # a timeout, so that Ctrl-C gets through
                return
            except queue.Full:
                if errors:
                    raise errors[0] from None

    try:
        for page in list_blobs(client, pds, did):
            for cid in page:
                digest = blob_digest(cid)
                if digest is None:
                    run.refused.append(clean(cid, 80))
                    continue
                if cid in run.listed_cids:
                    continue
                run.listed_cids.add(cid)
                with run.lock:
                    run.listed += 1
                put((cid, digest, None))
                if errors:
                    raise errors[0]
        for cid, key in (referenced or {}).items():
            if cid in run.listed_cids:
                continue
            digest = blob_digest(cid)
            if digest is None:
                run.refused.append(f"{clean(cid, 80)} (referenced by {key})")
                continue
            run.unlisted_refs.append(cid)
            with run.lock:
                run.listed += 1
            put((cid, digest, key))
            if errors:
                raise errors[0]
    except BaseException:
        client.stop.set()  # every worker stops at its next chunk and removes its file
        raise
    finally:
        for _ in threads:
            try:
                todo.put(None, timeout=5)
            except queue.Full:
                pass
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    if errors:
        raise errors[0]


__all__ = ["BlobRun", "DEFAULT_JOBS", "DEFAULT_MAX_BLOB", "Interrupted", "blob_digest",
           "fetch_blobs", "file_matches"]
