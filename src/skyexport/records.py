"""Every collection of a repository CAR: `records/<nsid>.<ext>` files (docs/CAR.md, "Every
collection").  The core's RecordTap encodes the records as the CAR's walk reads them; this
module names the CSV columns, opens the files and hashes what it writes."""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from . import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RECORDS_DIR = "records"
CHUNK_BYTES = 1 << 20

# The CSV columns of the well-known collections after `uri` and `cid`: (column, path of
# field names into the record).  A strongRef field is split into NAME_uri and NAME_cid;
# any other collection has `uri,cid,json`.
_REF = ("uri", "cid")


def _cols(*spec: str | tuple[str, str]) -> tuple[tuple[str, tuple[bytes, ...]], ...]:
    out: list[tuple[str, tuple[bytes, ...]]] = []
    for item in spec:
        if isinstance(item, tuple):          # (column prefix, field): a strongRef
            prefix, name = item
            out += [(f"{prefix}_{sub}", (name.encode(), sub.encode())) for sub in _REF]
        else:
            column = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", item).lower()
            out.append((column, (item.encode(),)))
    return tuple(out)


COLUMNS: dict[str, tuple[tuple[str, tuple[bytes, ...]], ...]] = {
    "app.bsky.feed.post": _cols("text", "createdAt", "langs", ("reply_root", "reply"),
                                ("reply_parent", "reply"), "embed", "facets", "tags",
                                "labels"),
    "app.bsky.feed.like": _cols(("subject", "subject"), "createdAt", ("via", "via")),
    "app.bsky.feed.repost": _cols(("subject", "subject"), "createdAt", ("via", "via")),
    "app.bsky.graph.follow": _cols("subject", "createdAt", ("via", "via")),
    "app.bsky.graph.block": _cols("subject", "createdAt"),
    "app.bsky.graph.list": _cols("name", "purpose", "description", "descriptionFacets",
                                 "avatar", "labels", "createdAt"),
    "app.bsky.graph.listitem": _cols("subject", "list", "createdAt"),
    "app.bsky.graph.listblock": _cols("subject", "createdAt"),
    "app.bsky.graph.starterpack": _cols("name", "description", "descriptionFacets", "list",
                                        "feeds", "createdAt"),
    "app.bsky.graph.verification": _cols("subject", "handle", "displayName", "createdAt"),
    "app.bsky.actor.profile": _cols("displayName", "description", "avatar", "banner",
                                    "labels", ("joined_via_starter_pack",
                                               "joinedViaStarterPack"),
                                    ("pinned_post", "pinnedPost"), "createdAt"),
    "app.bsky.feed.threadgate": _cols("post", "allow", "hiddenReplies", "createdAt"),
    "app.bsky.feed.postgate": _cols("post", "detachedEmbeddingUris", "embeddingRules",
                                    "createdAt"),
    "app.bsky.feed.generator": _cols("did", "displayName", "description",
                                     "descriptionFacets", "avatar", "acceptsInteractions",
                                     "labels", "contentMode", "createdAt"),
    "app.bsky.labeler.service": _cols("policies", "labels", "createdAt"),
    "chat.bsky.actor.declaration": _cols("allowIncoming"),
}
# the reply's strongRefs are one level deeper: reply.root.uri, reply.parent.cid, ...
COLUMNS["app.bsky.feed.post"] = tuple(
    (c, (b"reply", c.split("_")[1].encode(), c.split("_")[2].encode()))
    if c.startswith("reply_") else (c, p) for c, p in COLUMNS["app.bsky.feed.post"])


def csv_header(nsid: str) -> str:
    """The CSV header line of collection `nsid`'s file."""
    cols = COLUMNS.get(nsid)
    names = ["uri", "cid"] + ([c for c, _ in cols] if cols is not None else ["json"])
    return ",".join(names) + "\n"


_NSID = re.compile(r"[A-Za-z]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))+")


def parse_collections(value: str) -> frozenset[str] | None:
    """--collections: `all` (None: every collection) or NSIDs separated by commas."""
    if value.strip() == "all":
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError("--collections needs `all` or NSIDs separated by commas "
                         "(e.g. app.bsky.graph.follow,app.bsky.feed.like)")
    for name in names:
        if len(name) > 317 or not _NSID.fullmatch(name) or not name.split(".")[-1][:1].isalpha():
            raise ValueError(f"--collections: {name!r} is not an NSID (e.g. "
                             "app.bsky.graph.follow); `skyexport info REPO.car` lists a "
                             "repository's collections")
    return frozenset(names)


class RecordFile:
    """One records file written: its name (records/NSID.EXT), records, bytes, SHA-256."""
    __slots__ = ("name", "records", "size", "sha256")

    def __init__(self, name: str, records: int, size: int, sha256: str) -> None:
        self.name, self.records, self.size, self.sha256 = name, records, size, sha256


class RecordsResult:
    """The files written, and the records left out under keep: (key, CID, what)."""
    __slots__ = ("files", "bad", "bad_total")

    def __init__(self) -> None:
        self.files: list[RecordFile] = []
        self.bad: list[tuple[str, str, str]] = []
        self.bad_total = 0


class _Out:
    """One records file being written: created exclusively, hashed as it is written."""

    def __init__(self, path: Path, name: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                          | getattr(os, "O_BINARY", 0), 0o644)
        self.name = name
        self.h = hashlib.sha256()
        self.size = 0
        self.records = 0

    def write(self, data: bytes) -> None:
        self.h.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> RecordFile:
        os.close(self.fd)
        return RecordFile(self.name, self.records, self.size, self.h.hexdigest())


def _open(out_dir: Path, nsid: str, fmt: str, bom: bool) -> _Out:
    name = f"{RECORDS_DIR}/{nsid}.{fmt}"
    f = _Out(out_dir / name, name)
    if fmt == "json":
        f.write(b"[")
    elif fmt == "csv":
        f.write((b"\xef\xbb\xbf" if bom else b"") + csv_header(nsid).encode("ascii"))
    return f


def _close(f: _Out, fmt: str) -> RecordFile:
    if fmt == "json":
        f.write(b"\n]\n" if f.records else b"]\n")
    return f.close()


class RecordsWriteError(Exception):
    """Writing a records file failed (`error`: the OSError); not an OSError itself, so
    the CAR's reader, which the walk runs inside, does not take it for a read error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class RecordsWriter:
    """records/NSID.FMT in `out_dir` for every collection (wanted None) or each wanted
    NSID: `tap` is the core's RecordTap to give a CarWalker (CarWalker.set_tap, or
    CarRepo.tap before the walk); finish() after the walk closes the files (an empty one
    for a wanted NSID the repository does not hold) and returns what was written."""

    def __init__(self, out_dir: Path, did: str, fmt: str, wanted: frozenset[str] | None, *,
                 keep_bad: bool = False, bom: bool = True,
                 on_chunk: Callable[[], object] | None = None) -> None:
        (out_dir / RECORDS_DIR).mkdir(exist_ok=True)
        self.out_dir, self.fmt, self.wanted, self.bom = out_dir, fmt, wanted, bom
        self.tick = on_chunk
        self.result = RecordsResult()
        self.seen: set[str] = set()
        self.cur: _Out | None = None
        self.cur_nsid = ""
        self.tap = _core.RecordTap(did, fmt, None if wanted is None
                                   else [w.encode("ascii") for w in wanted], keep_bad,
                                   {k: [p for _, p in v] for k, v in COLUMNS.items()},
                                   self._chunk, CHUNK_BYTES)

    def _chunk(self, nsid: str, count: int, data: bytes) -> None:
        try:
            self._write(nsid, count, data)
        except OSError as exc:
            raise RecordsWriteError(exc) from None

    def _write(self, nsid: str, count: int, data: bytes) -> None:
        cur = self.cur
        if cur is None or nsid != self.cur_nsid:
            if cur is not None:
                self.result.files.append(_close(cur, self.fmt))
                self.cur = None
            cur = self.cur = _open(self.out_dir, nsid, self.fmt, self.bom)
            self.cur_nsid = nsid
            self.seen.add(nsid)
        if self.fmt == "json" and count and not cur.records:
            data = b"\n" + data
        if data:
            cur.write(data)
        cur.records += count
        if self.tick is not None:
            self.tick()

    def finish(self) -> RecordsResult:
        self.tap.finish()
        if self.cur is not None:
            self.result.files.append(_close(self.cur, self.fmt))
            self.cur = None
        for nsid in sorted((self.wanted or frozenset()) - self.seen):
            self.result.files.append(_close(_open(self.out_dir, nsid, self.fmt, self.bom),
                                            self.fmt))
        self.result.files.sort(key=lambda f: f.name)
        self.result.bad = list(self.tap.bad)
        self.result.bad_total = self.tap.bad_total
        return self.result

    def abort(self) -> None:
        """Close what is open (after a failure: the export is not published)."""
        if self.cur is not None:
            os.close(self.cur.fd)
            self.cur = None


def write_records(walker: Any, out_dir: Path, fmt: str, wanted: frozenset[str] | None, *,
                  did: str, keep_bad: bool = False, bom: bool = True) -> RecordsResult:
    """RecordsWriter over a walk of its own (`walker`: a fresh _core.CarWalker)."""
    w = RecordsWriter(out_dir, did, fmt, wanted, keep_bad=keep_bad, bom=bom)
    try:
        walker.set_tap(w.tap)
        _core.tap_drain(walker)
        return w.finish()
    finally:
        w.abort()


def nsids_of(files: Iterable[RecordFile]) -> list[str]:
    return [f.name.split("/", 1)[1].rsplit(".", 1)[0] for f in files]
