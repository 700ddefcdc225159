"""A repository CAR as the source of an export (docs/CAR.md).

Its posts are imported into a temporary archive in the export's hidden directory (CAR_DIR,
removed before publishing); from then on the export is the ordinary archive export.
"""

from __future__ import annotations

import os
import shutil

from .. import Source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from ..archive import Archive, Selection

CAR_DIR = ".car"


class CarSource(Source):
    """A repository CAR: read, checked and imported into a scratch archive by archive()."""

    refuses = {
        "media": "a repository CAR holds no media files; leave it out",
        "stream": "a repository CAR is exported into a directory only (for now)",
        "layout_did_without_did": "the repository's DID: `skyexport info {path}`",
    }

    def __init__(self, path: str | os.PathLike[str], **how: Any) -> None:
        super().__init__(path, **how)
        self.arc: Archive | None = None
        self.scratch: Path | None = None
        self.blocks = self.bytes = 0  # read of it so far (progress)
        self.source_car: dict[str, Any] | None = None

    def layout_did(self, did: str | None, opt: Callable[[str], str]) -> str:
        assert did is not None  # refused without one (refuses["layout_did_without_did"])
        return did

    def archive(self, scratch: Path | None, *, selection: Selection, emit: Callable[[], None],
                heartbeat: Callable[[], None]) -> Archive:
        from .importer import build_archive_from
        from .repo import CarRepo

        assert scratch is not None  # refuses["stream"]
        d = self.scratch = scratch / CAR_DIR
        d.mkdir()

        def on_blocks(blocks: int, offset: int) -> None:
            self.blocks, self.bytes = blocks, offset
            heartbeat()

        with CarRepo(self.path, d, on_blocks, verb="exported") as repo:
            emit()  # the whole CAR read and indexed
            build_archive_from(repo, d / "archive.db", scratch=True, on_chunk=heartbeat,
                               did_index=selection.did is not None)
            self.source_car = {"sha256": repo.sha256, "rev": repo.rev, "did": repo.did,
                               "commit_version": repo.version, "bytes": repo.size}
        self.arc = self.open_archive(d / "archive.db")
        return self.arc

    def release(self) -> None:
        """The temporary archive is not part of the export: gone before publishing."""
        self.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def manifest(self, arc: Archive) -> dict[str, Any]:
        return {**super().manifest(arc), "source_car": self.source_car}

    def progress(self) -> dict[str, int]:
        return {"car_blocks": self.blocks, "car_bytes": self.bytes}

    def close(self) -> None:
        if self.arc is not None:
            self.arc.close()
