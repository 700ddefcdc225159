"""Bluesky repository CARs (``repo.car``, Settings -> Export my data): import their posts
into a bskyarchive-schema archive, describe them (``info``), feed them to an export.

The contract is docs/CAR.md.  How a CAR is read, in flat memory whatever its size:

1. One sequential pass over the file (the compiled core's CarScanner) frames every block
   and writes its `(key, offset, length)` into the block index, a temporary file on disk
   sorted by key (runs sorted in RAM, merged on disk); the file's SHA-256 is computed
   meanwhile, on a second thread.  No block and no key is kept in RAM: only a directory
   of at most 1 MB.
2. The commit (the header's one root) gives the DID, version, rev and the MST root.
3. The MST is walked depth-first (memory: one path from the root); every block it uses is
   read by offset through the index and checked against its CID (SHA-256).  Only records
   of `app.bsky.feed.post` are read.  `import` and `export` skip the subtrees whose key
   range cannot hold a post (keys are sorted: likes and follows are never reached);
   `info` walks every key and counts the collections.
4. Each post record becomes a posts row (core: post_fields_into), inserted in batches:
   SQLite inserts one batch on a second thread, without the GIL, while the walk decodes
   the next.

Any problem with a block that is used -- missing, damaged, undecodable -- is an
ArchiveError naming its CID and key; nothing is imported then.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from . import _core
from ._platform import O_CLOEXEC, O_NOFOLLOW, fsync
from .errors import ArchiveError, OptionError

__all__ = ["CarRepo", "ImportResult", "car_info", "import_car", "is_car"]

POST_COLLECTION = "app.bsky.feed.post"
HEADER_MAX = 1 << 16       # a CARv1 header of one root is under 100 bytes
INDEX_BATCH = 20_000       # blocks between progress reports while indexing
HASH_CHUNK = 1 << 20       # bytes per read while hashing the file
ROW_CHUNK = 2_000          # posts per executemany
MST_MAX_DEPTH = 128        # an honest MST of 2^64 keys is 32 levels deep
POST_END = POST_COLLECTION + "0"  # "/" + 1: every post key is in [POST_COLLECTION/, this)


def _may_hold_posts(lo: str | None, hi: str | None) -> bool:
    """Can an MST subtree whose keys are all above lo and below hi (None: no bound) hold
    an app.bsky.feed.post key?"""
    return (lo is None or lo < POST_END) and (hi is None or hi > POST_COLLECTION + "/")


def _peek_key(entries: list[Any], i: int, key: bytes) -> str | None:
    """The key of entries[i] after `key`, or None when it cannot be read (the walk reads
    it properly later, and fails there)."""
    e = entries[i]
    if not isinstance(e, dict):
        return None
    p, k = e.get("p"), e.get("k")
    if (not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= len(key)
            or not isinstance(k, bytes) or isinstance(k, _core.CID)):
        return None
    try:
        return (key[:p] + k).decode("ascii")
    except UnicodeDecodeError:
        return None


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


def is_car(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a file that starts with a CARv1 header with exactly one root
    (recognised by content, never by name)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return False
    try:
        if not os.path.isfile(path):
            return False
        found = _read_header(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    if found is None:
        return False
    roots = _header_roots(found[0])
    return roots is not None and len(roots) == 1 and isinstance(roots[0], _core.CID)


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
    """RowBatch.insert_into(con) on a thread of its own."""

    def __init__(self, batch: Any, con: apsw.Connection) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(batch, con),
                                       name="skyexport-car-insert", daemon=True)
        self.thread.start()

    def _run(self, batch: Any, con: apsw.Connection) -> None:
        try:
            batch.insert_into(con)
        except BaseException as exc:  # re-raised by wait() on the walking thread
            self.error = exc

    def wait(self, raise_error: bool = True) -> None:
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


@dataclass
class _Stats:
    blocks: int = 0
    collections: dict[str, int] = field(default_factory=dict)


class CarRepo:
    """A repository CAR opened for reading, with its block index in a new file in
    `index_dir` (unlinked at once: only its descriptor is kept, closed by close()).  Use
    as a context manager."""

    def __init__(self, path: str | os.PathLike[str], index_dir: str | os.PathLike[str],
                 on_blocks: Callable[[int, int], None] | None = None, *,
                 verb: str = "imported", reader: str = "core") -> None:
        self.path = Path(path)
        self.verb = verb
        self.reader = reader  # "core" (CarWalker) or "python" (the walker below)
        self.fd = -1
        self.index_fd = -1
        self.index: _core.BlockIndex | None = None
        self.stats = _Stats()
        self._hashing: threading.Thread | None = None
        self._hash: list[str | OSError] = []
        self._stop_hashing = False
        try:
            self.fd = os.open(self.path, os.O_RDONLY | O_CLOEXEC)
        except OSError as exc:
            raise ArchiveError(f"{self.path}: cannot open it ({exc.strerror}); pass the path "
                               "of a repository export (repo.car)") from None
        try:
            self._open(Path(index_dir), on_blocks)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> ArchiveError:
        tail = f"; nothing was {self.verb}" if self.verb else ""
        return ArchiveError(f"{self.path}: {what}{tail}")

    def _open(self, index_dir: Path, on_blocks: Callable[[int, int], None] | None) -> None:
        if not os.path.isfile(self.path):
            raise self._fail("not a regular file")
        found = _read_header(self.fd)
        roots = _header_roots(found[0]) if found is not None else None
        if found is None or roots is None:
            raise self._fail("not a CAR file (no CARv1 header); pass a repository export "
                             "(Settings -> Export my data: repo.car)")
        if len(roots) != 1 or not isinstance(roots[0], _core.CID):
            raise self._fail(f"the CAR header has {len(roots)} roots; a repository export "
                             "has exactly one (its commit)")
        self.root: _core.CID = roots[0]
        _, start, head = found
        # the file's SHA-256 on the second core, while the first indexes and walks it
        self._hashing = threading.Thread(target=self._hash_file, name="skyexport-car-sha256",
                                         daemon=True)
        self._hashing.start()
        self._build_index(index_dir, start, head, on_blocks)
        self._read_commit()

    def _hash_file(self) -> None:
        """The file's SHA-256 into self._hash (or the OSError reading it)."""
        h = hashlib.sha256()
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        off = 0
        try:
            while not self._stop_hashing:
                n = os.preadv(self.fd, [buf], off)  # both release the GIL
                if not n:
                    self._hash.append(h.hexdigest())
                    return
                h.update(view[:n])
                off += n
        except OSError as exc:
            self._hash.append(exc)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the whole file (hex)."""
        if self._hashing is not None:
            self._hashing.join()
            self._hashing = None
        got = self._hash[0] if self._hash else OSError("not hashed")
        if isinstance(got, OSError):
            raise self._fail(f"reading failed ({got.strerror or got})")
        return got

    def _scratch_fd(self, index_dir: Path) -> int:
        """A new empty file in index_dir, open for reading and writing and already
        unlinked: nothing is left behind, whatever happens."""
        while True:
            p = index_dir / f".{self.path.name}.{os.urandom(4).hex()}.car-index"
            try:
                fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
                             | O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._fail(f"cannot create the block index in {index_dir} "
                                 f"({exc.strerror})") from None
            os.unlink(p)
            return fd

    def _build_index(self, index_dir: Path, start: int, head: bytes,
                     on_blocks: Callable[[int, int], None] | None) -> None:
        self.index_fd = self._scratch_fd(index_dir)
        runs_fd = self._scratch_fd(index_dir)  # sorted runs, merged into the index
        scanner = _core.CarScanner(self.fd, start, head, None)
        try:
            self.index = scanner.build_index(
                self.index_fd, runs_fd, INDEX_BATCH,
                None if on_blocks is None else lambda: on_blocks(scanner.blocks, scanner.pos))
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        except OSError as exc:
            raise self._fail(f"reading failed ({exc.strerror})") from None
        finally:
            os.close(runs_fd)
        self.stats.blocks = scanner.blocks
        self.size = scanner.size

    # --- blocks -----------------------------------------------------------------------

    def block(self, cid: bytes, what: str) -> bytes:
        """The data of the block `cid`, checked against it.  `what` names it in errors."""
        assert self.index is not None
        name = _core.cid_str(cid)
        n_cid = len(cid)
        damaged = False
        for off, n in self.index.find(_core.cid_index_key(cid)):
            if _core.pread_bytes(self.fd, n_cid, off) != cid:
                continue
            data = _core.pread_bytes(self.fd, n - n_cid, off + n_cid)
            code, digest = _core.cid_digest(cid)
            if code != 0x12 or len(digest) != 32:
                raise self._fail(f"block {name} ({what}) uses hash 0x{code:x}; only "
                                 "SHA-256 CIDs can be checked")
            if hashlib.sha256(data).digest() == digest:
                return data
            damaged = True
        if damaged:
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
        c = self._decode(self.root, "the commit")
        name = _core.cid_str(self.root)
        if not isinstance(c, dict):
            raise self._fail(f"the commit {name} is not a map")
        version = c.get("version")
        if version not in (2, 3) or isinstance(version, bool):
            raise self._fail(f"the commit {name} has version {version!r}; skyexport reads "
                             "repository versions 2 and 3")
        did, data, rev = c.get("did"), c.get("data"), c.get("rev")
        if not isinstance(did, str) or not did.startswith("did:"):
            raise self._fail(f"the commit {name} has no valid `did`")
        if not isinstance(data, _core.CID):
            raise self._fail(f"the commit {name} has no MST root (`data`)")
        if rev is not None and not isinstance(rev, str):
            raise self._fail(f"the commit {name} has a `rev` that is not a string")
        self.did: str = did
        self.version: int = version
        self.rev: str | None = rev
        self.data: _core.CID = data

    # --- the MST ------------------------------------------------------------------------

    def walk(self, posts_only: bool = False) -> Iterator[tuple[str, _core.CID]]:
        """Every (key, record CID) of the MST, in key order; counts collections.  With
        `posts_only`, the subtrees whose key range cannot hold a post are skipped (not
        read, so not checked) and nothing is counted."""
        self._last_key: str | None = None
        return self._walk(self.data, None, 0, None, posts_only)

    def _node_error(self, cid: bytes, prev: str | None, why: str) -> ArchiveError:
        where = f"after key {prev}" if prev is not None else "before the first key"
        return self._fail(f"MST node {_core.cid_str(cid)} ({where}) {why}")

    def _walk(self, cid: _core.CID, prev: str | None, depth: int, hi: str | None,
              posts_only: bool) -> Iterator[tuple[str, _core.CID]]:
        where = f"MST node after key {prev}" if prev is not None else \
            "MST node before the first key"
        if depth > MST_MAX_DEPTH:
            raise self._node_error(cid, prev, f"is more than {MST_MAX_DEPTH} levels deep")
        node = self._decode(cid, where)
        if not isinstance(node, dict) or not isinstance(node.get("e"), list) \
                or "l" not in node:
            raise self._node_error(cid, prev, "is not an MST node {l, e}")
        entries = node["e"]
        left = node["l"]
        if left is not None:
            if not isinstance(left, _core.CID):
                raise self._node_error(cid, prev, "has an `l` that is not a link")
            bound = _peek_key(entries, 0, b"") if entries else hi
            if not posts_only or _may_hold_posts(prev, bound):
                yield from self._walk(left, prev, depth + 1, bound, posts_only)
        key = b""
        counts = self.stats.collections
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise self._node_error(cid, prev, "has an entry that is not a map")
            p, k, v, t = e.get("p"), e.get("k"), e.get("v"), e.get("t")
            if (not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= len(key)
                    or not isinstance(k, bytes) or isinstance(k, _core.CID)
                    or not isinstance(v, _core.CID)
                    or not (t is None or isinstance(t, _core.CID))):
                raise self._node_error(cid, prev, "has a malformed entry")
            key = key[:p] + k
            if not key.isascii() or not all(0x21 <= c <= 0x7E for c in key):
                raise self._node_error(cid, prev, "has a key that is not printable ASCII")
            text = key.decode("ascii")
            if self._last_key is not None and text <= self._last_key:
                raise self._node_error(cid, prev, f"has key {text} out of order (the MST "
                                       "is damaged)")
            self._last_key = text
            if not posts_only:
                coll = text.partition("/")[0]
                counts[coll] = counts.get(coll, 0) + 1
            prev = text
            yield text, v
            if t is not None:
                bound = _peek_key(entries, i + 1, key) if i + 1 < len(entries) else hi
                if not posts_only or _may_hold_posts(text, bound):
                    yield from self._walk(t, prev, depth + 1, bound, posts_only)

    def post_rows(self, archived_at: str, *,
                  posts_only: bool = True) -> Iterator[tuple[object, ...]]:
        """posts rows (17 columns, schema v2 order) of every post record: walked by the
        core (CarWalker), or by the Python walker above with reader="python" (the same
        rows and errors).  `posts_only=False` walks every key (for `info`: every block
        of the tree checked, the collections counted)."""
        if self.reader != "python":
            yield from self._post_rows_core(archived_at, posts_only)
            return
        yield from self._post_rows_py(archived_at, posts_only)

    def _post_rows_core(self, archived_at: str,
                        posts_only: bool) -> Iterator[tuple[object, ...]]:
        assert self.index is not None
        try:
            walker = _core.CarWalker(self.fd, self.index, self.data, self.did, posts_only)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        try:
            while True:
                try:
                    rows = walker.rows(ROW_CHUNK, archived_at)
                except ValueError as exc:
                    raise self._fail(str(exc)) from None
                if not rows:
                    break
                yield from rows
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
        assert self.index is not None
        try:
            walker = _core.CarWalker(self.fd, self.index, self.data, self.did, True)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        batches = [_core.RowBatch(self.did, archived_at) for _ in range(2)]
        n = 0
        pending: _Insert | None = None
        try:
            while True:
                batch = batches[0]  # batches[1]: the one being inserted
                try:
                    k = walker.fill(batch, ROW_CHUNK)
                except ValueError as exc:
                    raise self._fail(str(exc)) from None
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

    def _post_rows_py(self, archived_at: str,
                      posts_only: bool) -> Iterator[tuple[object, ...]]:
        prefix = POST_COLLECTION + "/"
        did = self.did
        for key, cid in self.walk(posts_only):
            if not key.startswith(prefix):
                if posts_only and key >= POST_END:
                    break  # past the posts: nothing after them is used
                continue
            what = f"record {key}"
            data = self.block(cid, what)
            try:
                (text, created, media, reply, parent, etype, edata,
                 labels) = _core.post_fields(data)
            except ValueError as exc:
                raise self._fail(f"block {_core.cid_str(cid)} ({what}) {exc}") from None
            yield (f"at://{did}/{key}", _core.cid_str(cid), did, text, created, created,
                   int(media), 0, 0, 0, 0, int(reply), parent, etype, edata, labels,
                   archived_at)

    def close(self) -> None:
        if self._hashing is not None:
            self._stop_hashing = True
            self._hashing.join()
            self._hashing = None
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


# --- import -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportResult:
    """What `import_car` did: the archive, the CAR's posts, how many were added (all of
    them for a new archive), and the commit's DID and rev and the CAR's SHA-256."""

    archive: Path
    posts: int
    added: int
    did: str
    rev: str | None
    sha256: str
    seconds: float


def _now_sqlite() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def _columns_v2() -> tuple[str, ...]:
    from .schema import POST_COLUMNS

    return POST_COLUMNS


def _fill_new(con: apsw.Connection, repo: CarRepo, archived_at: str, fts: bool = True,
              on_chunk: Callable[[], None] | None = None, did_index: bool = True) -> int:
    """Create bskyarchive's schema (synth's DDL) and insert every post; returns the count.
    Without `fts`, no full-text table and trigger (an export's temporary archive); without
    `did_index`, no index on did (one that selects no DID never reads it)."""
    from .schema import FTS, INDEXES, INSERT_V2, MEDIA, POSTS_V2, TRIGGER

    n = 0
    with con:
        con.execute(POSTS_V2)
        con.execute(MEDIA)
        if fts:
            con.execute(FTS)
        if repo.reader != "python" and _load_core(con):
            n = repo.insert_posts(con, archived_at, on_chunk)
        else:
            chunk: list[tuple[object, ...]] = []
            for row in repo.post_rows(archived_at):
                chunk.append(row)
                if len(chunk) >= ROW_CHUNK:
                    con.executemany(INSERT_V2, chunk)
                    n += len(chunk)
                    chunk.clear()
                    if on_chunk is not None:
                        on_chunk()
            if chunk:
                con.executemany(INSERT_V2, chunk)
                n += len(chunk)
        for sql in INDEXES:
            if did_index or "(did)" not in sql:
                con.execute(sql)
        if fts:
            con.execute("INSERT INTO posts_fts(posts_fts) VALUES('rebuild')")
            con.execute(TRIGGER)
    return n


def build_archive_from(repo: CarRepo, final: Path, *, scratch: bool = False,
                       on_chunk: Callable[[], None] | None = None,
                       did_index: bool = True) -> int:
    """Write a new archive at `final` (which must not exist) from `repo`: built under a
    fresh hidden name beside it, linked into place only when complete, never replacing
    anything.  Returns the number of posts.  `scratch`: an export's temporary archive,
    read once and deleted: no full-text index, no fsync; `did_index=False` (only with
    scratch): no index on did either, for an export that selects no DID."""
    from .synth import _exclusive_temp

    tmp = _exclusive_temp(str(final))
    con = None
    try:
        con = apsw.Connection(tmp)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                       "cache_size=-2048", "temp_store=FILE"):
            con.execute("PRAGMA " + pragma).fetchall()
        n = _fill_new(con, repo, _now_sqlite(), fts=not scratch, on_chunk=on_chunk,
                      did_index=did_index or not scratch)
        con.execute("PRAGMA locking_mode=NORMAL").fetchall()
        con.execute("PRAGMA journal_mode=DELETE").fetchall()
        if not scratch:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                fsync(fd)
            finally:
                os.close(fd)
        con.close()
        try:
            os.link(tmp, final)  # fails if `final` appeared meanwhile
        except FileExistsError:
            raise ArchiveError(f"archive {final} appeared during the import; it was left "
                               "as it is and nothing was imported") from None
        except OSError:  # no hard links here: check, then rename
            if os.path.lexists(final):
                raise ArchiveError(f"archive {final} appeared during the import; nothing "
                                   "was imported") from None
            os.rename(tmp, final)
        else:
            os.unlink(tmp)
    except BaseException:
        if con is not None:
            con.close()
        for leftover in (tmp, tmp + "-journal"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
        raise
    return n


def _merge(repo: CarRepo, final: Path, archived_at: str) -> tuple[int, int]:
    """Insert the posts whose uri is not yet in the archive, in one transaction."""
    try:
        con = apsw.Connection(str(final), flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise ArchiveError(f"archive {final} cannot be opened for --merge: {exc}") from None
    try:
        try:
            con.set_busy_timeout(5000)
            cols = [r[1] for r in con.execute("PRAGMA table_info(posts)")]
        except apsw.Error as exc:
            raise ArchiveError(f"archive {final} is not a readable SQLite database ({exc}); "
                               "--merge needs a bskyarchive archive") from None
        if not cols:
            raise ArchiveError(f"archive {final} has no posts table; --merge needs a "
                               "bskyarchive archive")
        columns = _columns_v2()
        use = [i for i, c in enumerate(columns) if c in cols]
        if len(use) < len(columns) - 1 or "uri" not in cols:
            raise ArchiveError(f"archive {final}: table posts lacks bskyarchive's columns; "
                               "--merge needs a bskyarchive archive")
        names = ", ".join(columns[i] for i in use)
        sql = (f"INSERT INTO posts ({names}) SELECT {', '.join('?' * len(use))} "
               "WHERE NOT EXISTS (SELECT 1 FROM posts WHERE uri = ?1)")
        total = added = 0
        try:
            with con:  # one transaction: all or nothing
                chunk: list[tuple[object, ...]] = []
                before: Any = con.execute("SELECT count(*) FROM posts").fetchall()[0][0]
                for row in repo.post_rows(archived_at):
                    chunk.append(tuple(row[i] for i in use))
                    total += 1
                    if len(chunk) >= ROW_CHUNK:
                        con.executemany(sql, chunk)
                        chunk.clear()
                if chunk:
                    con.executemany(sql, chunk)
                after: Any = con.execute("SELECT count(*) FROM posts").fetchall()[0][0]
                added = after - before
        except apsw.Error as exc:
            raise ArchiveError(f"archive {final}: merging failed ({exc}); nothing was "
                               "changed") from None
        return total, added
    finally:
        con.close()


def import_car(car: str | os.PathLike[str], archive: str | os.PathLike[str] =
               "data/archive.db", *, merge: bool = False,
               on_blocks: Callable[[int, int], None] | None = None,
               reader: str = "core") -> ImportResult:
    """Import the posts of the repository CAR `car` into `archive` (CAR.md, `import`).

    Without `merge` the archive must not exist: it is built under a temporary name and
    renamed into place when complete.  With `merge`, posts whose uri is not in the
    existing archive are added in one transaction; nothing else changes.  Raises
    ArchiveError (one line) when the CAR cannot be read; nothing is imported then.
    `reader="python"` walks the MST in Python rather than in the core (for tests)."""
    started = time.monotonic()
    final = Path(archive)
    if merge:
        if not final.is_file():
            raise OptionError(f"--merge: archive {final} does not exist; leave out --merge "
                              "to create it")
    elif os.path.lexists(final):
        raise ArchiveError(f"archive {final} already exists; pass --merge to add the CAR's "
                          "posts to it, or choose another --archive")
    parent = final.parent if str(final.parent) else Path(".")
    made_parent = False
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
            made_parent = True
        except OSError as exc:
            raise OptionError(f"cannot create {parent} for the archive: "
                              f"{exc.strerror}") from None
    try:
        with CarRepo(car, parent, on_blocks, reader=reader) as repo:
            if merge:
                posts, added = _merge(repo, final, _now_sqlite())
            else:
                posts = added = build_archive_from(repo, final)
            return ImportResult(final, posts, added, repo.did, repo.rev, repo.sha256,
                                time.monotonic() - started)
    except BaseException:
        if made_parent:
            try:
                parent.rmdir()
            except OSError:
                pass
        raise


# --- info -------------------------------------------------------------------------------

def car_info(car: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None,
             *, reader: str = "core") -> dict[str, object]:
    """What `skyexport info REPO.car` prints, as a dict."""
    import tempfile

    from ._core import parse_bound

    first = last = None
    first_t = last_t = None
    posts = 0
    if index_dir is None:
        home = Path(car).resolve().parent
        index_dir = home if os.access(home, os.W_OK | os.X_OK) else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix=".skyexport-info-", dir=index_dir) as tmp, \
            CarRepo(car, tmp, verb="", reader=reader) as repo:
        for row in repo.post_rows("", posts_only=False):
            posts += 1
            created = row[4]
            assert isinstance(created, str)
            try:
                t = parse_bound(created, False)
            except ValueError:
                continue
            if first_t is None or t < first_t:
                first_t, first = t, created
            if last_t is None or t > last_t:
                last_t, last = t, created
        return {
            "source": str(Path(car)),
            "kind": "car",
            "sha256": repo.sha256,
            "bytes": repo.size,
            "blocks": repo.stats.blocks,
            "did": repo.did,
            "commit_version": repo.version,
            "rev": repo.rev,
            "records": sum(repo.stats.collections.values()),
            "collections": dict(sorted(repo.stats.collections.items())),
            "posts": posts,
            "dids": {repo.did: posts} if posts else {},
            "first_created_at": first,
            "last_created_at": last,
            "media_rows": 0,
            "schema_version": None,
        }
