"""Bluesky repository CARs (``repo.car``, Settings -> Export my data): reading one.
importer.py imports its posts into a bskyarchive-schema archive, info.py describes it,
source.py feeds it to an export.

The contract is docs/CAR.md.  How a CAR is read, in flat memory whatever its size:

1. One sequential pass over the file (the compiled core's CarScanner) frames every block
   and writes its `(key, offset, length)` into the block index, a temporary file on disk
   sorted by key (runs sorted in RAM, merged on disk); the file's SHA-256 is computed
   meanwhile, on a second thread.  No block and no key is kept in RAM: only a directory
   of at most 1 MB.  Only the bytes there when the file was opened are read and hashed.
2. The commit (the header's one root) gives the DID (checked against atproto's syntax),
   version, rev and the MST root.
3. The MST is walked depth-first (memory: the nodes of the path from the root while they
   hold at most 4 MiB, else those nearest the root are dropped and read again when the
   walk comes back to them); every
   MST node is read, checked against its CID (SHA-256) and its keys checked for order and
   bounds, by every command, so `info`, `import` and `export` accept and refuse the same
   files.  Only records of `app.bsky.feed.post` are read.  A block's verdict (its good
   copy, or none) is decided once; the walk reads at most 8 times the file's size.
4. Each post record becomes a posts row (core: post_fields_into), inserted in batches of
   at most ROW_CHUNK rows and about ROW_BYTES: SQLite inserts one batch on a second
   thread, without the GIL, while the walk decodes the next.

Any problem with a block that is used -- missing, damaged, undecodable, beyond atproto's
limits -- is an ArchiveError naming its CID and key; nothing is imported then.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

from ... import _core
from ..._platform import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    set_blocking,
)
from ...errors import ArchiveError

__all__ = ["CarRepo", "is_car"]

POST_COLLECTION = "app.bsky.feed.post"
HEADER_MAX = 1 << 16       # a CARv1 header of one root is under 100 bytes
INDEX_BATCH = 20_000       # blocks between progress reports while indexing
HASH_CHUNK = 1 << 20       # bytes per read while hashing the file
ROW_CHUNK = 2_000          # posts per executemany
ROW_BYTES = 4 << 20        # ... or fewer, once they hold this many bytes
DID_MAX = 2048             # atproto's limit on a DID
# atproto's DID syntax: did:METHOD:ID, METHOD lowercase letters, ID of A-Z a-z 0-9 . _ : % -
# not ending in ':' or '%'
_DID = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._-]\Z")


def _read_header(fd: int) -> tuple[object, int, bytes] | None:
    """(header object, its end offset, the bytes before that), or None when the file does
    not start like a CARv1 (a varint, then a DAG-CBOR map)."""
    head = _core.pread_bytes(fd, 16, 0)
    try:
        length, used = _core.read_uvarint(head)
    except ValueError:
        return None
    if length is None or not 0 < length <= HEADER_MAX:
        return None
    raw = _core.pread_bytes(fd, used + length, 0)
    if len(raw) != used + length:
        return None
    try:
        obj, _ = _core.cbor_to_py(raw[used:])
    except ValueError:
        return None
    return obj, used + length, raw


def _header_roots(obj: object) -> list[object] | None:
    if not isinstance(obj, dict) or obj.get("version") != 1:
        return None
    roots = obj.get("roots")
    if not isinstance(roots, list):
        return None
    return roots


def _open_regular(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(descriptor, size) of `path` opened for reading, when it is a regular file; opened
    without blocking (a FIFO or a device never hangs the open), then checked with fstat.
    Raises OSError, or ValueError for anything but a regular file."""
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        set_blocking(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def one_root(fd: int) -> tuple[_core.CID, int, bytes] | None:
    """(its one root, the header's end offset, the bytes before that) when the file at
    `fd` starts with a CARv1 header with exactly one root, a CID; else None.  (CarRepo
    checks the same, in its own words for each way it can fail.)"""
    found = _read_header(fd)
    roots = _header_roots(found[0]) if found is not None else None
    if found is None or roots is None or len(roots) != 1 \
            or not isinstance(roots[0], _core.CID):
        return None
    return roots[0], found[1], found[2]


def is_car(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a regular file that starts with a CARv1 header with exactly
    one root (recognised by content, never by name)."""
    try:
        fd, _ = _open_regular(path)
    except (OSError, ValueError):
        return False
    try:
        return one_root(fd) is not None
    except OSError:
        return False
    finally:
        os.close(fd)


def _load_core(con: apsw.Connection) -> bool:
    """Load the compiled core as an SQLite extension of `con` (see
    archive.Archive._load_core), so CarWalker can insert rows without Python in between."""
    try:
        con.enable_load_extension(True)
        try:
            con.load_extension(_core.__file__, _core.EXTENSION_ENTRY_POINT)
        finally:
            con.enable_load_extension(False)
    except (apsw.Error, AttributeError):
        return False
    return bool(_core.direct_ready())


class _Insert:
    """RowBatch.insert_into(con) on a thread of its own.  The thread marks its own end
    (`done`), which wait() waits for: Thread.join() interrupted by a signal can take a
    running thread for ended (Python 3.10-3.12), and the batch and the connection must not
    be reused while it inserts."""

    def __init__(self, batch: Any, con: apsw.Connection) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(batch, con),
                                       name="skyexport-car-insert", daemon=True)
        self.thread.start()

    def _run(self, batch: Any, con: apsw.Connection) -> None:
        try:
            batch.insert_into(con)
        except BaseException as exc:  # re-raised by wait() on the walking thread
            self.error = exc
        finally:
            self.done.set()

    def wait(self, raise_error: bool = True) -> None:
        self.done.wait()
        if self.error is not None and raise_error:
            raise self.error


class _Stats:
    __slots__ = ("blocks", "collections")

    def __init__(self) -> None:
        self.blocks = 0
        self.collections: dict[str, int] = {}


def commit_fields(c: object, name: str) -> tuple[str, int, str | None, _core.CID]:
    """(did, version, rev, MST root) of the decoded commit `c` (CID text `name`), checked;
    ValueError with the reason when it is not a repository commit skyexport reads."""
    if not isinstance(c, dict):
        raise ValueError(f"the commit {name} is not a map")
    version = c.get("version")
    if version not in (2, 3) or isinstance(version, bool):
        raise ValueError(f"the commit {name} has version {version!r}; skyexport reads "
                         "repository versions 2 and 3")
    did, data, rev = c.get("did"), c.get("data"), c.get("rev")
    if not isinstance(did, str):
        raise ValueError(f"the commit {name} has no `did`")
    if len(did.encode("utf-8")) > DID_MAX:
        raise ValueError(f"the commit {name} has a `did` of {len(did.encode())} bytes; "
                         f"atproto allows at most {DID_MAX}")
    if not _DID.match(did):
        # ascii(): never a control character or escape sequence on the terminal
        shown = ascii(did[:80]) + ("..." if len(did) > 80 else "")
        raise ValueError(f"the commit {name} has `did` {shown}, not a DID "
                         "(did:METHOD:ID, ASCII letters, digits and ._:%-)")
    if not isinstance(data, _core.CID):
        raise ValueError(f"the commit {name} has no MST root (`data`)")
    if rev is not None and not isinstance(rev, str):
        raise ValueError(f"the commit {name} has a `rev` that is not a string")
    return did, version, rev, data


def scratch_file(directory: Path, name: str) -> int:
    """A new empty file in `directory` (.NAME.<random>.car-index), open for reading and
    writing and already unlinked: nothing is left behind, whatever happens."""
    while True:
        p = directory / f".{name}.{os.urandom(4).hex()}.car-index"
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0o600)
        except FileExistsError:
            continue
        os.unlink(p)
        return fd


class CarRepo:
    """A repository CAR opened for reading, with its block index in a new file in
    `index_dir` (unlinked at once: only its descriptor is kept, closed by close()).  Use
    as a context manager."""

    def __init__(self, path: str | os.PathLike[str], index_dir: str | os.PathLike[str],
                 on_blocks: Callable[[int, int], None] | None = None, *,
                 verb: str = "imported") -> None:
        self.path = Path(path)
        self.verb = verb
        self.fd = -1
        self.index_fd = -1
        self.tap: Any = None   # a _core.RecordTap the next post walk feeds (sources/car/source.py)
        self.index: _core.BlockIndex | None = None
        self.stats = _Stats()
        self._hashing: threading.Thread | None = None
        self._hash: list[str | BaseException] = []
        self._hashed = threading.Event()  # set by the hashing thread as it ends
        self._stop_hashing = False
        try:
            self.fd, self.size_at_open = _open_regular(self.path)
        except OSError as exc:
            raise ArchiveError(f"{self.path}: cannot open it ({exc.strerror}); pass the path "
                               "of a repository export (repo.car)") from None
        except ValueError:
            raise self._fail("not a regular file") from None
        try:
            self._open(Path(index_dir), on_blocks)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> ArchiveError:
        tail = f"; nothing was {self.verb}" if self.verb else ""
        return ArchiveError(f"{self.path}: {what}{tail}")

    def _header(self) -> tuple[int, bytes]:
        """The header checked, its root kept; (its end offset, the bytes before that)."""
        found = _read_header(self.fd)
        roots = _header_roots(found[0]) if found is not None else None
        if found is None or roots is None:
            raise self._fail("not a CAR file (no CARv1 header); pass a repository export "
                             "(Settings -> Export my data: repo.car)")
        if len(roots) != 1 or not isinstance(roots[0], _core.CID):
            raise self._fail(f"the CAR header has {len(roots)} roots; a repository export "
                             "has exactly one (its commit)")
        self.root: _core.CID = roots[0]
        return found[1], found[2]

    def _open(self, index_dir: Path, on_blocks: Callable[[int, int], None] | None) -> None:
        self.index_dir = index_dir
        start, head = self._header()
        # the file's SHA-256 on the second core, while the first indexes and walks it
        self._hashing = threading.Thread(target=self._hash_file, name="skyexport-car-sha256",
                                         daemon=True)
        self._hashing.start()
        self._build_index(index_dir, start, head, on_blocks)
        self._read_commit()

    def _hash_file(self) -> None:
        """The SHA-256 of the file's first size_at_open bytes -- exactly the bytes the
        index frames, even if the file grows meanwhile -- into self._hash, or the exception
        (of any type) that stopped it; `_hashed` is set as the thread ends, whatever ends
        it."""
        try:
            h = hashlib.sha256()
            buf = bytearray(HASH_CHUNK)
            view = memoryview(buf)
            off = 0
            end = self.size_at_open
            while not self._stop_hashing:
                n = os.preadv(self.fd, [view[:min(HASH_CHUNK, end - off)]], off) \
                    if off < end else 0  # both release the GIL
                if not n:
                    if off < end:
                        raise OSError(0, "the file was cut short while it was read")
                    self._hash.append(h.hexdigest())
                    return
                h.update(view[:n])
                off += n
        except BaseException as exc:  # noqa: BLE001 - reported by sha256 on the caller's thread
            self._hash.append(exc)
        finally:
            self._hashed.set()

    def _join_hashing(self) -> None:
        if self._hashing is not None:
            self._hashed.wait()  # not join(): see _Insert
            self._hashing = None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the whole file (hex)."""
        self._join_hashing()
        got = self._hash[0] if self._hash else OSError("not hashed")
        if isinstance(got, OSError):
            raise self._fail(f"reading failed ({got.strerror or got})")
        if isinstance(got, BaseException):
            raise self._fail(f"hashing failed ({type(got).__name__}: {got})") from got
        return got

    def _scratch_fd(self, index_dir: Path) -> int:
        """scratch_file for this CAR's block index; its failure as one line."""
        try:
            return scratch_file(index_dir, self.path.name)
        except OSError as exc:
            raise self._fail(f"cannot create the block index in {index_dir} "
                             f"({exc.strerror})") from None

    def _error(self, exc: ValueError | OSError) -> ArchiveError:
        """The one line for an error of the core's reader: a bad CAR (ValueError), no room
        for the block index (ScratchWriteError: the temporary file and its disk are
        named, not the CAR), or the CAR unreadable (OSError)."""
        if isinstance(exc, _core.ScratchWriteError):
            tail = f"; nothing was {self.verb}" if self.verb else ""
            return ArchiveError(f"writing the block index of {self.path} (a temporary file in "
                                f"{self.index_dir}) failed: {exc.strerror}; free space on "
                                f"that disk{tail}")
        if isinstance(exc, OSError):
            return self._fail(f"reading failed ({exc.strerror})")
        return self._fail(str(exc))

    def _build_index(self, index_dir: Path, start: int, head: bytes,
                     on_blocks: Callable[[int, int], None] | None) -> None:
        self.index_fd = self._scratch_fd(index_dir)
        runs_fd = self._scratch_fd(index_dir)  # sorted runs, merged into the index
        # the size taken at open: bytes appended meanwhile are neither indexed nor hashed
        scanner = _core.CarScanner(self.fd, start, head, None, self.size_at_open)
        try:
            self.index = scanner.build_index(
                self.index_fd, runs_fd, INDEX_BATCH,
                None if on_blocks is None else lambda: on_blocks(scanner.blocks, scanner.pos))
        except (ValueError, OSError) as exc:
            raise self._error(exc) from None
        finally:
            os.close(runs_fd)
        self.stats.blocks = scanner.blocks
        self.size = scanner.size

    # --- blocks -----------------------------------------------------------------------

    def block(self, cid: bytes, what: str) -> bytes:
        """The data of the block `cid`, checked against it.  `what` names it in errors."""
        assert self.index is not None
        name = _core.cid_str(cid)
        try:
            status, data = self.index.block(self.fd, cid)
        except (ValueError, OSError) as exc:
            raise self._error(exc) from None
        if status == 0:
            assert data is not None
            return data
        if status == 3:
            raise self._fail(f"block {name} ({what}) does not use SHA-256; only SHA-256 CIDs "
                             "can be checked")
        if status == 2:
            raise self._fail(f"block {name} ({what}) does not match its CID (the file is "
                             "damaged); download the repository again")
        raise self._fail(f"block {name} ({what}) is missing (a partial CAR?); download the "
                         "whole repository again")

    def _decode(self, cid: bytes, what: str) -> object:
        data = self.block(cid, what)
        try:
            return _core.cbor_to_py(data)[0]
        except ValueError as exc:
            raise self._fail(f"block {_core.cid_str(cid)} ({what}) {exc}") from None

    def _read_commit(self) -> None:
        try:
            self.did, self.version, self.rev, self.data = commit_fields(
                self._decode(self.root, "the commit"), _core.cid_str(self.root))
        except ValueError as exc:
            raise self._fail(str(exc)) from None

    # --- the MST ------------------------------------------------------------------------

    def _walker(self, posts_only: bool) -> Any:
        assert self.index is not None
        try:
            walker = _core.CarWalker(self.fd, self.index, self.data, self.did, posts_only)
        except (ValueError, OSError) as exc:
            raise self._error(exc) from None
        if self.tap is not None:   # the records files, written by the posts' walk
            walker.set_tap(self.tap)
        return walker

    def walk(self) -> Iterator[tuple[str, _core.CID]]:
        """Every (key, record CID) of the MST, in key order (records are not read);
        counts collections."""
        walker = self._walker(False)
        yield from self._drain(walker, lambda: walker.entries(ROW_CHUNK))

    def post_rows(self, archived_at: str, *,
                  posts_only: bool = True) -> Iterator[tuple[object, ...]]:
        """posts rows (17 columns, schema v2 order) of every post record, in batches of
        at most ROW_CHUNK rows and about ROW_BYTES.  `posts_only=False` also counts the
        collections (for `info`)."""
        walker = self._walker(posts_only)
        yield from self._drain(walker, lambda: walker.rows(ROW_CHUNK, archived_at, ROW_BYTES))

    def _drain(self, walker: Any, step: Callable[[], list[Any]]) -> Iterator[Any]:
        """What `step()` gives, batch after batch, until an empty one; a reader error in
        one line; then the walker closed and the collections it counted kept."""
        try:
            while True:
                try:
                    got = step()
                except (ValueError, OSError) as exc:
                    raise self._error(exc) from None
                if not got:
                    break
                yield from got
        finally:
            walker.close()
            self.stats.collections = {k.decode("ascii"): v
                                      for k, v in walker.collections.items()}

    def insert_posts(self, con: apsw.Connection, archived_at: str,
                     on_chunk: Callable[[], None] | None = None) -> int:
        """Insert the posts rows (those of post_rows()) into table posts of `con`, which
        the core is loaded into (_load_core), straight from the core; returns the count.
        The caller holds the transaction.  Two batches take turns: SQLite inserts one on a
        second thread (without the GIL) while the walk decodes the next."""
        walker = self._walker(True)
        batches = [_core.RowBatch(self.did, archived_at) for _ in range(2)]
        n = 0
        pending: _Insert | None = None
        try:
            while True:
                batch = batches[0]  # batches[1]: the one being inserted
                try:
                    k = walker.fill(batch, ROW_CHUNK, ROW_BYTES)
                except (ValueError, OSError) as exc:
                    raise self._error(exc) from None
                finally:
                    if pending is not None:
                        pending.wait()  # its batch is free again; raises its error
                        pending = None
                        if on_chunk is not None:
                            on_chunk()
                if not k:
                    return n
                n += k
                pending = _Insert(batch, con)
                batches.reverse()
        finally:
            if pending is not None:
                pending.wait(raise_error=False)
            walker.close()

    def close(self) -> None:
        if self._hashing is not None:
            self._stop_hashing = True
            self._join_hashing()
        self.index = None
        if self.index_fd >= 0:
            os.close(self.index_fd)
            self.index_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CarRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def car_did(car: str | os.PathLike[str]) -> str:
    """The DID of the repository CAR `car`'s commit (for `export --layout did`), read and
    checked as every command reads it (the block index is built in a temporary directory
    beside the CAR, or the system's when that is not writable).  Raises ArchiveError."""
    import tempfile

    home = Path(car).resolve().parent
    where = home if os.access(home, os.W_OK | os.X_OK) else None
    with tempfile.TemporaryDirectory(prefix=".skyexport-car-", dir=where) as d, \
            CarRepo(car, d, verb="exported") as repo:
        return repo.did
