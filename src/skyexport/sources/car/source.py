"""A repository CAR as the source of an export (docs/CAR.md).

Its posts are imported into a temporary archive (CAR_DIR in the export's hidden directory,
or a temporary directory beside the CAR for an export to a stream), removed before
publishing; from then on the export is the ordinary archive export.  The same walk writes
the records files of the other collections (`Extras.collections`, records.py), and a
blobs directory (`Extras.blobs`, blobs.py) becomes the temporary archive's media table.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import Source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .. import Warn
    from ..archive import Archive, Selection
    from .records import RecordsResult

CAR_DIR = ".car"


class CarSource(Source):
    """A repository CAR: read, checked and imported into a scratch archive by archive()."""

    refuses = {
        "media": "a repository CAR holds blob references, not the files; give {blobs} DIR "
                 "(the blobs, named by their CID), or leave {media} out",
    }

    def __init__(self, path: str | os.PathLike[str], **how: Any) -> None:
        super().__init__(path, **how)
        self.arc: Archive | None = None
        self.scratch: Path | None = None
        self._temp: Any = None     # a TemporaryDirectory, for an export to a stream
        self.blocks = self.bytes = 0  # read of it so far (progress)
        self.source_car: dict[str, Any] | None = None
        self.records: RecordsResult | None = None

    def layout_did(self, did: str | None, opt: Callable[[str], str]) -> str:
        if did is not None:
            return did
        from .repo import car_did

        return car_did(self.path)   # the repository's own DID, from its commit

    def archive(self, scratch: Path | None, *, selection: Selection, emit: Callable[[], None],
                heartbeat: Callable[[], None], warn: Warn | None = None) -> Archive:
        from ...defaults import RECORDS_DIR
        from .importer import build_archive_from
        from .records import RecordsWriteError
        from .repo import CarRepo

        if scratch is None:   # a stream: the block index and archive in a directory of ours
            d = self.scratch = Path(self._temp_dir())
        else:
            d = self.scratch = scratch / CAR_DIR
            d.mkdir()

        def on_blocks(blocks: int, offset: int) -> None:
            self.blocks, self.bytes = blocks, offset
            heartbeat()

        try:
            with CarRepo(self.path, d, on_blocks, verb="exported") as repo:
                emit()  # the whole CAR read and indexed
                writer = None
                if self.extras.records:
                    assert scratch is not None  # refused with a stream (exporter/options.py)
                    writer = self._records_writer(repo.did, scratch, heartbeat)
                    repo.tap = writer.tap
                try:
                    build_archive_from(repo, d / "archive.db", scratch=True,
                                       on_chunk=heartbeat,
                                       did_index=selection.did is not None)
                except RecordsWriteError as exc:
                    assert scratch is not None
                    raise _at(exc.error, scratch / RECORDS_DIR) from None
                except BaseException:
                    if writer is not None:
                        writer.abort()
                    raise
                finally:
                    repo.tap = None
                if writer is not None:
                    assert scratch is not None
                    self._records_done(writer, repo.did, scratch, warn)
                if self.extras.blobs is not None:
                    self._fill_blobs(d / "archive.db", warn)
                self.source_car = {"sha256": repo.sha256, "rev": repo.rev, "did": repo.did,
                                   "commit_version": repo.version, "bytes": repo.size}
        except OSError as exc:
            raise _at(exc, d) from None
        self.arc = self.open_archive(d / "archive.db")
        return self.arc

    def _temp_dir(self) -> str:
        """A temporary directory for a streamed export's block index and posts archive:
        beside the CAR when that directory is writable (as `info` does), else the
        system's."""
        import tempfile

        home = self.path.resolve().parent
        where = home if os.access(home, os.W_OK | os.X_OK) else None
        self._temp = tempfile.TemporaryDirectory(prefix=".skyexport-car-", dir=where)
        return str(self._temp.name)

    def _fill_blobs(self, archive: Path, warn: Warn | None) -> None:
        """The temporary archive's media table, from the blobs directory (each file's
        bytes are checked against its CID as media/ gets them)."""
        import apsw

        from .blobs import BlobDir, fill_media

        assert self.extras.blobs is not None
        con = apsw.Connection(str(archive))
        try:
            fill_media(con, BlobDir(self.extras.blobs), verify=False, relative_to=None,
                       warn=lambda uri, msg: warn.add(uri, "media", msg) if warn else None)
        finally:
            con.close()

    def _records_writer(self, did: str, out: Path, heartbeat: Callable[[], None]) -> Any:
        """records/NSID.EXT of the collections asked for (docs/CAR.md), written by the
        walk that imports the posts (CarRepo.tap)."""
        from ...defaults import RECORDS_DIR
        from .records import RecordsWriter

        x = self.extras
        try:
            return RecordsWriter(out, did, x.format, x.collections, keep_bad=x.keep_bad,
                                 bom=x.bom, on_chunk=heartbeat)
        except OSError as exc:
            raise _at(exc, out / RECORDS_DIR) from None

    def _records_done(self, writer: Any, did: str, out: Path, warn: Warn | None) -> None:
        from ...defaults import RECORDS_DIR

        try:
            self.records = records = writer.finish()
        except OSError as exc:
            raise _at(exc, out / RECORDS_DIR) from None
        if warn is not None:
            for key, cid, what in records.bad:
                warn.add(f"at://{did}/{key}", "record",
                         f"record {cid} left out: {what}; not valid atproto data")
            warn.more(records.bad_total - len(records.bad))

    def files(self) -> dict[str, dict[str, Any]]:
        if self.records is None:
            return {}
        return {f.name: {"sha256": f.sha256, "bytes": f.size, "records": f.records}
                for f in self.records.files}

    def media_files(self) -> tuple[list[Path], Callable[[str], str | None]] | None:
        if self.extras.blobs is None:
            return None
        from .blobs import cid_sha256

        return [self.extras.blobs], cid_sha256

    def release(self) -> None:
        """The temporary archive is not part of the export: gone before publishing."""
        self.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def manifest(self, arc: Archive) -> dict[str, Any]:
        m = {**super().manifest(arc), "source_car": self.source_car}
        if self.records is not None:
            m["records"] = self.files()
        return m

    def progress(self) -> dict[str, int]:
        return {"car_blocks": self.blocks, "car_bytes": self.bytes}

    def close(self) -> None:
        if self.arc is not None:
            self.arc.close()
        if self._temp is not None:   # an export to a stream: its block index and archive
            self._temp.cleanup()
            self._temp = None


def _at(exc: OSError, path: Path) -> OSError:
    """`exc` naming `path` if it names no file (the export reports it as a write there)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))
