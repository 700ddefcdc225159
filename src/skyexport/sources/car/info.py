"""`skyexport info REPO.car`: what a repository CAR holds, read as an import reads it."""

from __future__ import annotations

import os
from pathlib import Path

from .repo import (
    CarRepo,
)

__all__ = ["car_info"]


def car_info(car: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None,
             ) -> dict[str, object]:
    """What `skyexport info REPO.car` prints, as a dict."""
    import tempfile

    from ..._core import parse_bound

    first = last = None
    first_t = last_t = None
    posts = 0
    if index_dir is None:
        home = Path(car).resolve().parent
        index_dir = home if os.access(home, os.W_OK | os.X_OK) else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix=".skyexport-info-", dir=index_dir) as tmp, \
            CarRepo(car, tmp, verb="") as repo:
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
