"""Every collection of a repository CAR: `records/<nsid>.<ext>` files (docs/CAR.md, "Every
collection").  The core's RecordTap encodes the records as the CAR's walk reads them; this
module names the CSV columns, opens the files and hashes what it writes."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ... import _core
from ...defaults import RECORD_COLUMNS as COLUMNS
from ...defaults import RECORDS_DIR
from ...defaults import records_csv_header as csv_header

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

CHUNK_BYTES = 1 << 20


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
        self.digest = hashlib.sha256()
        self.size = 0
        self.records = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> RecordFile:
        os.close(self.fd)
        return RecordFile(self.name, self.records, self.size, self.digest.hexdigest())


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


def nsids_of(files: Iterable[RecordFile]) -> list[str]:
    return [f.name.split("/", 1)[1].rsplit(".", 1)[0] for f in files]
