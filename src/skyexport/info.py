"""`skyexport info ARCHIVE`: what an archive holds, without exporting it.

Read from the indexes bskyarchive creates where SQLite allows: the post count per DID from
`idx_posts_did`, the overall first and last `created_at` from `idx_posts_created_at`.  A
DID's own date range reads its rows through the DID index (the DID owning most posts walks
the created_at index from each end instead), so a million-post archive answers in well under
a second.  Dates are `created_at` as stored, first and last in the text order the export
sorts by.
"""

from __future__ import annotations

import os
from typing import Any

import apsw

from .archive import Archive, Selection

# One DID, given as the bytes CAST(did AS BLOB) read: equal to a BLOB-stored value or, cast
# back, to a TEXT one (NULL: the IS NULL branch).  `+did` keeps SQLite on the created_at
# index for the DID that owns most rows.
_SAME_DID = "(did IN (?1, CAST(?1 AS TEXT)) OR (?2 IS NULL AND did IS NULL))"
_SAME_DID_SCAN = "(+did IN (?1, CAST(?1 AS TEXT)) OR (?2 IS NULL AND +did IS NULL))"
_STAMP = "CAST(created_at AS BLOB)"


def archive_info(path: str | os.PathLike[str], *, row_source: str | None = None,
                 busy_timeout_ms: int | None = None) -> dict[str, Any]:
    """A description of the archive at `path` (raises ArchiveError as `export` does)."""
    with Archive(path, row_source=row_source, busy_timeout_ms=busy_timeout_ms) as arc:
        conn = arc.conn
        try:
            posts = arc.snapshot(Selection()).posts_total   # one read transaction
            first_last: Any = conn.execute("SELECT CAST(min(created_at) AS BLOB), "
                                           "CAST(max(created_at) AS BLOB) FROM posts"
                                           ).fetchall()[0]
            # DIDs as bytes, matched back as TEXT or BLOB, whichever it is stored as, so
            # the DID index still serves.
            per_did = arc.did_counts()
            dids = []
            for did, n in per_did:
                if n * 4 >= posts:   # most rows: the created_at index finds its ends at once
                    lo = conn.execute(f"SELECT {_STAMP} FROM posts WHERE {_SAME_DID_SCAN} "
                                      "ORDER BY created_at ASC LIMIT 1", (did, did)).fetchall()
                    hi = conn.execute(f"SELECT {_STAMP} FROM posts WHERE {_SAME_DID_SCAN} "
                                      "ORDER BY created_at DESC LIMIT 1", (did, did)).fetchall()
                    span: Any = (lo[0][0] if lo else None, hi[0][0] if hi else None)
                else:
                    span = conn.execute(f"SELECT CAST(min(created_at) AS BLOB), "
                                        f"CAST(max(created_at) AS BLOB) FROM posts WHERE "
                                        f"{_SAME_DID}", (did, did)).fetchall()[0]
                dids.append({"did": _text(did), "posts": n, "first_created_at": _text(span[0]),
                             "last_created_at": _text(span[1])})
            media_rows = (arc.count("SELECT count(*) FROM media", ())
                          if arc.has_media_table else None)
            journal_mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        except apsw.Error as exc:
            raise arc.error(exc, "while describing it") from None
        size = os.stat(arc.path).st_size
        wal = arc.path.with_name(arc.path.name + "-wal")
        return {
            "archive": str(arc.path),
            "schema_version": arc.schema_version,
            "posts": posts,
            "first_created_at": _text(first_last[0]),
            "last_created_at": _text(first_last[1]),
            "dids": dids,
            "media_rows": media_rows,
            "size_bytes": size,
            "wal_bytes": os.stat(wal).st_size if os.path.isfile(wal) else 0,
            "journal_mode": str(journal_mode),
        }


def _text(value: object) -> str | None:
    """A stored value for display: text as it is, bytes decoded, numbers as SQLite's text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_info(info: dict[str, Any]) -> str:
    """The human form of `archive_info`."""
    mb = info["size_bytes"] / 1e6
    lines = [f"archive: {info['archive']} ({mb:.1f} MB, schema v{info['schema_version']}, "
             f"journal mode {info['journal_mode']})",
             f"posts: {info['posts']}"]
    if info["posts"]:
        lines.append(f"created: {info['first_created_at']} .. {info['last_created_at']}")
    lines.append("media rows: " + ("none (no media table)" if info["media_rows"] is None
                                   else str(info["media_rows"])))
    lines.append(f"DIDs: {len(info['dids'])}")
    width = max((len(d["did"] or "") for d in info["dids"]), default=0)
    for d in info["dids"]:
        lines.append(f"  {d['did'] or '(none)':<{width}}  {d['posts']:>9} posts  "
                     f"{d['first_created_at']} .. {d['last_created_at']}")
    return "\n".join(lines) + "\n"
