"""An account's blobs: `com.atproto.sync.listBlobs` (paged by cursor), then
`com.atproto.sync.getBlob` for every CID not already present and whole in `blobs/`.

A listed CID is untrusted: it becomes a file name only if it parses as a blob CID (CIDv1,
raw codec, SHA-256, base32: `bafkrei...`), which also gives the digest its bytes are
checked against.  Each blob is streamed to a temporary file in the backup's hidden work
directory, hashed as it arrives, and renamed to `blobs/<cid>` only if it matches; a
download that fails or is interrupted leaves nothing in `blobs/`.  The downloads run on
one thread that drives `--jobs` connections at once (_Multiplexer, below).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import os
import queue
import re
import selectors
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._platform import sha256_regular
from .errors import AccountError, FetchError
from .http import (
    ERROR_BODY_CAP,
    HEAD_CAP,
    RETRY_STATUSES,
    CapExceeded,
    Client,
    Interrupted,
    RedirectRefused,
    Response,
    _Conn,
    _retry_after,
    _Transport,
    clean,
    truncate,
    write_all,
)

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
    got = sha256_regular(path)
    return got is not None and got[0] == digest.hex()


def _refused(exc: FetchError, cid: str, ref: str | None) -> BlobOutcome:
    """The outcome of a blob the server answered with an error: missing (404 or
    BlobNotFound: reported, with the record that references it), else failed."""
    if exc.status == 404 or exc.xrpc == "BlobNotFound":
        detail = str(exc).removeprefix(f"blob {cid}: ")
        by = f", referenced by {ref}," if ref is not None else ""
        return BlobOutcome(cid, "missing",
                           why=f"blob {cid}{by} is not served by the PDS ({detail})")
    return BlobOutcome(cid, "failed", why=str(exc),
                       permanent=isinstance(exc, RedirectRefused))


class BlobOutcome:
    __slots__ = ("cid", "kind", "size", "why", "permanent")

    def __init__(self, cid: str, kind: str, size: int = 0, why: str = "",
                 permanent: bool = False) -> None:
        # kind: downloaded, present, missing (not served), bad (wrong bytes, too big),
        # failed (after the retries; `permanent`: a redirect refused, which a rerun
        # meets again)
        self.cid, self.kind, self.size, self.why = cid, kind, size, why
        self.permanent = permanent


def download_blob(client: Client, pds: str, did: str, cid: str, digest: bytes,
                  blobs_dir: Path, work_dir: Path, max_blob: int,
                  on_bytes: Callable[[int], None], ref: str | None = None,
                  maybe_there: bool = True, tried: int = 0, last: str = "") -> BlobOutcome:
    """One blob into `blobs_dir` (unless already there, whole); `ref`: the key of a
    record that references it, when listBlobs did not list it; `maybe_there`: False when
    blobs/ had no such name as the run began (no need to look); `tried`, `last`: the
    attempts already made (Client.get)."""
    final = blobs_dir / cid
    if maybe_there and file_matches(final, digest):
        return BlobOutcome(cid, "present")
    tmp = work_dir / f"{cid}.{os.getpid()}.{next(_TMP_SEQ)}.{os.urandom(3).hex()}.part"
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
                              max_blob, " (--max-blob-size)", tried=tried, last=last)
        except CapExceeded as exc:
            return BlobOutcome(cid, "bad", why=str(exc))
        except AccountError:
            raise
        except FetchError as exc:
            return _refused(exc, cid, ref)
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
    (`referenced`: CID -> record key) that was not listed; outcomes into `run`.  This
    thread lists them and hands them, a page at a time, through a bounded queue (flat
    memory however many are listed) to one thread that fetches `jobs` at once
    (_Multiplexer).  Raises KeyboardInterrupt or that thread's error (AccountError...)
    after it stopped and removed its temporary files."""
    Item = tuple[str, bytes, str | None]
    pages: queue.Queue[list[Item] | None] = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    there = set(os.listdir(blobs_dir))  # one listing, not one failed open() per new blob

    def slow(item: Item, tried: int, last: str) -> BlobOutcome:
        return download_blob(client, pds, did, item[0], item[1], blobs_dir, work_dir,
                             max_blob, run.add_bytes, item[2], False, tried, last)

    mux = _Multiplexer(client, pds, did, blobs_dir, work_dir, jobs, max_blob, run, there,
                       slow, pages)

    def work() -> None:
        try:
            mux.run_all()
        except Interrupted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            client.stop.set()
        finally:
            finished.set()
            while True:  # let the main thread finish putting
                try:
                    pages.get_nowait()
                except queue.Empty:
                    break

    # Waited for with an Event, not join(): a join that Ctrl-C interrupts can leave the
    # thread marked as stopped while it still runs (CPython 3.11).
    finished = threading.Event()
    thread = threading.Thread(target=work, name="skyexport-blobs", daemon=True)
    thread.start()

    def put(item: list[Item] | None) -> None:
        while True:
            if errors:
                raise errors[0]
            if finished.is_set():
                return  # stopped (interrupted): nothing more to hand it
            try:
                pages.put(item, timeout=0.2)  # a timeout, so that Ctrl-C gets through
                return
            except queue.Full:
                pass

    try:
        for page in list_blobs(client, pds, did):
            batch: list[Item] = []
            for cid in page:
                digest = blob_digest(cid)
                if digest is None:
                    run.refused.append(clean(cid, 80))
                    continue
                if cid in run.listed_cids:
                    continue
                run.listed_cids.add(cid)
                batch.append((cid, digest, None))
            with run.lock:
                run.listed += len(batch)
            put(batch)
        batch = []
        for cid, key in (referenced or {}).items():
            if cid in run.listed_cids:
                continue
            digest = blob_digest(cid)
            if digest is None:
                run.refused.append(f"{clean(cid, 80)} (referenced by {key})")
                continue
            run.unlisted_refs.append(cid)
            batch.append((cid, digest, key))
            if len(batch) == PAGE:
                with run.lock:
                    run.listed += len(batch)
                put(batch)
                batch = []
        with run.lock:
            run.listed += len(batch)
        put(batch)
        put(None)
        while not finished.wait(0.2):  # here, not in a finally: Ctrl-C meanwhile stops it
            pass
    except BaseException:
        client.stop.set()  # the fetching thread stops and removes its files
        while not finished.wait(0.2):
            pass
        raise
    if errors:
        raise errors[0]


# --- the downloads, multiplexed -----------------------------------------------------------
#
# One thread drives the `jobs` connections with a selector (epoll, kqueue...), as curl
# --parallel does: threads of one interpreter would hand its lock to each other several
# times a blob (each send, receive and file call), and that costs more than the blob.
# Only the plain case is done here: a 200 answer with a Content-Length no larger than the
# cap, on a connection that stays up.  Anything else (another status, a redirect, a
# chunked or encoded body, a dropped connection, a timeout) gives the blob to
# download_blob, the blocking path with the whole policy (retries, 429 waits, redirects,
# one-line errors); a failed attempt here counts as one of its attempts.

_IDLE, _WAIT = 0, 1
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_TMP_SEQ = itertools.count()


class _Slot:
    """One connection of the multiplexer and the blob it is fetching."""

    __slots__ = ("conn", "request", "state", "item", "resp", "fd", "tmp", "hasher", "size",
                 "deadline", "reused", "error")

    def __init__(self) -> None:
        self.conn: _Conn | None = None
        self.request = b""
        self.state = _IDLE
        self.item: tuple[str, bytes, str | None] | None = None
        self.resp: Response | None = None
        self.fd = -1
        self.tmp = ""
        self.hasher: Any = None
        self.size = 0
        self.deadline = 0.0
        self.reused = False
        self.error = False  # the answer is an error whose (small) body is awaited


class _Multiplexer:
    def __init__(self, client: Client, pds: str, did: str, blobs_dir: Path, work_dir: Path,
                 jobs: int, max_blob: int, run: BlobRun, there: set[str],
                 slow: Callable[[tuple[str, bytes, str | None], int, str], BlobOutcome],
                 pages: queue.Queue[list[tuple[str, bytes, str | None]] | None]) -> None:
        self.client, self.did, self.max_blob, self.run = client, did, max_blob, run
        self.url = f"{pds}/xrpc/com.atproto.sync.getBlob"
        self.blobs_dir, self.work_dir = str(blobs_dir), str(work_dir)
        self.there = there
        self.slow = slow
        self.sel = selectors.DefaultSelector()
        self.slots = [_Slot() for _ in range(jobs)]
        self.timeout = client.policy.read_timeout_s
        self.prefix = f"{os.getpid()}.{os.urandom(3).hex()}"
        self.pages = pages
        self.pending: collections.deque[tuple[str, bytes, str | None]] = collections.deque()
        self.ended = False

    # --- one blob ------------------------------------------------------------------

    def start(self, s: _Slot, item: tuple[str, bytes, str | None]) -> None:
        cid, digest, ref = item
        if cid in self.there and file_matches(Path(self.blobs_dir, cid), digest):
            self.done(BlobOutcome(cid, "present"))
            return
        url = f"{self.url}?{urllib.parse.urlencode({'did': self.did, 'cid': cid})}"
        s.item = item
        if s.conn is None:
            try:
                s.conn, s.request = self.client.connection(url, f"blob {cid}")
                s.conn.sock.setblocking(False)
                self.sel.register(s.conn.sock, selectors.EVENT_READ, s)
            except (OSError, _Transport, FetchError):
                self.close(s)  # the blocking path connects again, and says why it fails
                self.fall_back(s, 0, "")
                return
            s.reused = False
        else:
            s.request = self.client.request(url, f"blob {cid}")
            s.reused = True
        assert s.conn is not None
        try:
            sent = s.conn.sock.send(s.request)
        except (OSError, *_WOULD_BLOCK):
            sent = -1
        if sent != len(s.request):
            silent = s.reused
            self.close(s)
            self.fall_back(s, 0 if silent else 1, "the request could not be sent")
            return
        s.state = _WAIT
        s.resp = None
        s.error = False
        s.size = 0
        s.deadline = time.monotonic() + self.timeout

    def readable(self, s: _Slot) -> None:
        c = s.conn
        assert c is not None
        if s.state == _IDLE:  # an idle connection the server closed (or wrote to)
            self.close(s)
            return
        while True:
            try:
                got = c.fill()
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                got = -1
                why = str(exc) or type(exc).__name__
                reset = isinstance(exc, (ConnectionResetError, BrokenPipeError))
            else:
                why = "the connection closed mid-answer"
                reset = True
            if got <= 0:
                if reset and s.reused and s.resp is None and c.pos == c.end:
                    self.close(s)  # a kept-alive connection the server had closed:
                    self.fall_back(s, 0, "")  # asked again, not counted (as Client._send)
                else:
                    self.failed(s, why)
                return
            s.deadline = time.monotonic() + self.timeout
            if not self.consume(s) or not isinstance(c.sock, ssl.SSLSocket) \
                    or not c.sock.pending():
                return

    def consume(self, s: _Slot) -> bool:
        """Take what arrived; False once the slot has no more use for its data."""
        c = s.conn
        assert c is not None and s.item is not None
        r = s.resp
        if r is None:
            if c.buf.find(b"\r\n\r\n", c.pos, c.end) < 0 and \
                    c.buf.find(b"\n\n", c.pos, c.end) < 0:
                if c.end - c.pos > HEAD_CAP:
                    self.failed(s, "the answer's header is too long")
                    return False
                return True
            try:
                r = s.resp = Response(c)
            except (_Transport, *_WOULD_BLOCK, OSError) as exc:
                self.failed(s, str(exc) or type(exc).__name__)
                return False
            if r.status != 200 or not r.plain or r.left > self.max_blob:
                if not (400 <= r.status and r.status not in RETRY_STATUSES and r.plain
                        and r.left <= ERROR_BODY_CAP):
                    self.odd(s, r)
                    return False
                s.error = True  # BlobNotFound...: the outcome, once its body is here
        if s.error:
            if r.left > c.end - c.pos:
                return True
            self.refused(s, r)
            return False
        if s.fd < 0:
            cid = s.item[0]
            s.tmp = os.path.join(self.work_dir, f"{cid}.{self.prefix}.{next(_TMP_SEQ)}.part")
            s.fd = os.open(s.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o644)
            s.hasher = hashlib.sha256()
        view = r.buffered()
        if view:
            n = len(view)
            s.hasher.update(view)
            while view:
                view = view[os.write(s.fd, view):]
            s.size += n
            self.run.add_bytes(n)
        if not r.done:
            return True
        self.finish(s, r)
        return False

    def finish(self, s: _Slot, r: Response) -> None:
        c = s.conn
        assert c is not None and s.item is not None
        cid, digest, _ = s.item
        fd, s.fd = s.fd, -1
        os.close(fd)
        if r.will_close or c.pos != c.end:
            self.close(s)
        s.state = _IDLE
        if s.hasher.digest() != digest:
            self.discard(s)
            self.done(BlobOutcome(cid, "bad", s.size,
                                  f"blob {cid}: its {s.size:,} bytes do not match its CID "
                                  "(SHA-256); discarded"))
            return
        final = os.path.join(self.blobs_dir, cid)
        try:
            if cid in self.there and os.path.lexists(final) and not os.path.isfile(final):
                raise IsADirectoryError
            os.rename(s.tmp, final)
        except (IsADirectoryError, NotADirectoryError):
            self.discard(s)
            self.done(BlobOutcome(cid, "bad", s.size, f"blob {cid}: blobs/{cid} exists "
                                  "and is not a regular file; left as it is"))
            return
        s.tmp = ""
        self.done(BlobOutcome(cid, "downloaded", s.size))

    def discard(self, s: _Slot) -> None:
        if s.fd >= 0:
            os.close(s.fd)
            s.fd = -1
        if s.tmp:
            try:
                os.unlink(s.tmp)
            except OSError:
                pass
            s.tmp = ""
        s.hasher = None

    def refused(self, s: _Slot, r: Response) -> None:
        """An error answer (BlobNotFound...), its body all received: the blob's outcome,
        as on the blocking path."""
        c = s.conn
        assert c is not None and s.item is not None
        cid, _, ref = s.item
        err = self.client._error(r, f"blob {cid}")  # reads only what is buffered
        if not r.done or r.will_close or c.pos != c.end:
            self.close(s)
        s.item, s.resp, s.state, s.error = None, None, _IDLE, False
        if isinstance(err, AccountError):
            raise err
        self.done(_refused(err, cid, ref))

    def odd(self, s: _Slot, r: Response) -> None:
        """Neither a plain 200 nor an error with a small body: the blocking path asks
        again (a 429 or 5xx counts as a failed attempt, and its wait is honoured
        first)."""
        self.close(s)
        if r.status in RETRY_STATUSES:
            wait = _retry_after(r) if r.status in (429, 503) else None
            if wait is not None and wait > self.client.policy.max_wait_s:
                self.fall_back(s, 0, "")  # it asks again, and gives up with one line
                return
            self.fall_back(s, 1, f"HTTP {r.status}", wait)
        else:
            self.fall_back(s, 0, "")

    def failed(self, s: _Slot, why: str) -> None:
        self.close(s)
        self.fall_back(s, 1, clean(why))

    def fall_back(self, s: _Slot, tried: int, last: str, wait: float | None = None) -> None:
        item, s.item = s.item, None
        assert item is not None
        self.discard(s)
        s.state = _IDLE
        s.resp = None
        if tried:
            with self.client._lock:
                self.client.retries += 1
            self.client._pause(wait if wait is not None else self.client.backoff(tried))
        self.done(self.slow(item, tried, last))

    def done(self, out: BlobOutcome) -> None:
        with self.run.lock:
            self.run.outcomes[out.kind].append(out)
            self.run.done += 1

    def close(self, s: _Slot) -> None:
        if s.conn is not None:
            try:
                self.sel.unregister(s.conn.sock)
            except (KeyError, ValueError):
                pass
            s.conn.close()
            s.conn = None

    # --- the loop ------------------------------------------------------------------

    def next(self, block: bool) -> tuple[str, bytes, str | None] | None:
        """The next blob to fetch; None at the end, or when none is ready (waiting up to
        0.2 s for the next page if `block`)."""
        if self.pending:
            return self.pending.popleft()
        while not self.ended:
            try:
                page = self.pages.get(block, 0.2)
            except queue.Empty:
                return None
            if page is None:
                self.ended = True
            elif page:
                self.pending.extend(page)
                return self.pending.popleft()
        return None

    def run_all(self) -> None:
        """Fetch every blob of every page, `jobs` at once; raises Interrupted when the
        client is stopped."""
        stop = self.client.stop
        slots = self.slots
        try:
            while True:
                if stop.is_set():
                    raise Interrupted
                for s in slots:
                    while s.state == _IDLE:
                        if stop.is_set():  # many blobs already there: each is hashed
                            raise Interrupted
                        item = self.next(False)
                        if item is None:
                            break
                        self.start(s, item)  # it may be done at once (present, fallen back)
                busy = [s for s in slots if s.state == _WAIT]
                if not busy:
                    if self.ended and not self.pending:
                        return
                    item = self.next(True)
                    if item is not None:
                        self.pending.appendleft(item)
                    continue
                wait = min(s.deadline for s in busy) - time.monotonic()
                for key, _ in self.sel.select(max(0.0, min(wait, 0.2))):
                    self.readable(key.data)
                now = time.monotonic()
                for s in busy:
                    if s.state == _WAIT and s.deadline <= now:
                        self.failed(s, "timed out")
        finally:
            for s in slots:
                self.discard(s)
                self.close(s)
            self.sel.close()


__all__ = ["BlobRun", "DEFAULT_JOBS", "DEFAULT_MAX_BLOB", "Interrupted", "blob_digest",
           "fetch_blobs", "file_matches"]
