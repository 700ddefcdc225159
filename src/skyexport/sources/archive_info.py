"""`skyexport info ARCHIVE`: what an archive holds, without exporting it.

Read from the indexes bskyarchive creates where SQLite allows, in time linear in the posts
and memory that does not grow with the DIDs:

- the number of DIDs, and those that own a quarter of the posts or more (at most four): one
  pass over `idx_posts_did`, which holds the DIDs alone;
- the date range of each such DID: `idx_posts_created_at` walked from each end (in a real
  archive one DID owns nearly every post, and its range is found at once);
- every DID with its posts and date range: ONE grouped query over `idx_posts_did`, which
  reads a post's row only for a DID that is not one of those (`_DIDS_SQL`), streamed to the
  output in order of post count (SQLite sorts the groups, spilling to temporary files past
  its cache), never built as one list;
- the overall first and last `created_at` from the ends of `idx_posts_created_at`.

Dates are `created_at` as stored, first and last in the text order the export sorts by.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import apsw

from .archive import Archive, Selection

TEXT_DIDS = 20          # DIDs the text form lists (--json lists them all)
TEXT_DID_CHARS = 80     # a longer DID is cut, in the text form only
_STAMP = "CAST(created_at AS BLOB)"


def _dids_sql(big: int, limit: bool) -> str:
    """Every DID (raw, and as bytes), its posts, its first and last created_at, most posts
    first.  The first `big` parameters are DIDs whose dates come from the created_at index:
    for their posts the CASE never reads created_at, so SQLite never visits their rows
    (it reads `did` from idx_posts_did alone)."""
    stamp = "created_at"
    if big:
        alike = " OR ".join(f"did IS ?{i + 1}" for i in range(big))
        stamp = f"CASE WHEN {alike} THEN NULL ELSE created_at END"
    return (f"SELECT did, CAST(did AS BLOB), count(*), CAST(min({stamp}) AS BLOB), "
            f"CAST(max({stamp}) AS BLOB) FROM posts GROUP BY did ORDER BY count(*) DESC, did"
            + (f" LIMIT ?{big + 1}" if limit else ""))


class ArchiveInfo:
    """What `describe` found: `summary` (every member of `info --json` but `dids`, in its
    order) and `dids_total`; `dids()` streams the DIDs, most posts first."""

    def __init__(self, arc: Archive, summary: dict[str, Any], dids_total: int,
                 spans: dict[tuple[type, Any], tuple[Any, Any]]) -> None:
        self._arc = arc
        self.summary = summary
        self.dids_total = dids_total
        self._spans = spans

    def dids(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """{did, posts, first_created_at, last_created_at} per DID, most posts first (the
        first `limit` of them; all with None), read from ONE query as they are wanted."""
        big = list(self._spans)
        args: list[Any] = [value for _kind, value in big]
        if limit is not None:
            args.append(limit)
        try:
            cursor = self._arc.conn.execute(_dids_sql(len(big), limit is not None), args)
            for raw, did, n, lo, hi in cursor:
                span = self._spans.get((type(raw), raw))
                if span is not None:
                    lo, hi = span
                yield {"did": _text(did), "posts": n, "first_created_at": _text(lo),
                       "last_created_at": _text(hi)}
        except apsw.Error as exc:
            raise self._arc.error(exc, "while describing it") from None


@contextmanager
def describe(path: str | os.PathLike[str], *, row_source: str | None = None,
             busy_timeout_ms: int | None = None) -> Iterator[ArchiveInfo]:
    """The archive at `path`, described (raises ArchiveError as `export` does); `dids()`
    streams from the archive while the context is open, in the same read transaction."""
    with Archive(path, row_source=row_source, busy_timeout_ms=busy_timeout_ms) as arc:
        conn = arc.conn
        try:
            posts = arc.snapshot(Selection()).posts_total   # one read transaction
            # One aggregate a query: SQLite then reads just one end of the created_at index.
            first_last = [conn.execute(f"SELECT CAST({end}(created_at) AS BLOB) FROM posts"
                                       ).fetchall()[0][0] for end in ("min", "max")]
            # One pass over the DID index: how many DIDs, and which own a quarter of the
            # posts or more (at most four; only those are kept).
            dids_total = 0
            big = []
            for raw, n in conn.execute("SELECT did, count(*) FROM posts GROUP BY did"):
                dids_total += 1
                if n * 4 >= posts:
                    big.append(raw)
            spans = {}
            for raw in big:
                # Many posts each: the created_at index finds their ends at once.
                lo = conn.execute(f"SELECT {_STAMP} FROM posts WHERE +did IS ?1 AND "
                                  "created_at IS NOT NULL ORDER BY created_at ASC LIMIT 1",
                                  (raw,)).fetchall()
                hi = conn.execute(f"SELECT {_STAMP} FROM posts WHERE +did IS ?1 AND "
                                  "created_at IS NOT NULL ORDER BY created_at DESC LIMIT 1",
                                  (raw,)).fetchall()
                spans[(type(raw), raw)] = (lo[0][0] if lo else None, hi[0][0] if hi else None)
            media_rows = (arc.count("SELECT count(*) FROM media", ())
                          if arc.has_media_table else None)
            journal_mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        except apsw.Error as exc:
            raise arc.error(exc, "while describing it") from None
        size = os.stat(arc.path).st_size
        wal = arc.path.with_name(arc.path.name + "-wal")
        summary = {
            "archive": str(arc.path),
            "schema_version": arc.schema_version,
            "posts": posts,
            "first_created_at": _text(first_last[0]),
            "last_created_at": _text(first_last[1]),
            "media_rows": media_rows,
            "size_bytes": size,
            "wal_bytes": os.stat(wal).st_size if os.path.isfile(wal) else 0,
            "journal_mode": str(journal_mode),
        }
        yield ArchiveInfo(arc, summary, dids_total, spans)


def _ordered(summary: dict[str, Any], dids: Any) -> dict[str, Any]:
    """The summary with `dids` in its place, after last_created_at."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        out[key] = value
        if key == "last_created_at":
            out["dids"] = dids
    return out


def write_info(path: str | os.PathLike[str], out: IO[str], *, as_json: bool = False,
               row_source: str | None = None, busy_timeout_ms: int | None = None) -> None:
    """Write `info` of the archive at `path` to `out`: text (the TEXT_DIDS DIDs with most
    posts, each cut to TEXT_DID_CHARS) or one line of JSON (every DID, in full), written
    DID by DID as the query yields them."""
    with describe(path, row_source=row_source, busy_timeout_ms=busy_timeout_ms) as info:
        if as_json:
            _write_json(info, out)
        else:
            out.write(format_info(info.summary, info.dids_total, info.dids(TEXT_DIDS)))


def _write_json(info: ArchiveInfo, out: IO[str]) -> None:
    """The same bytes as json.dumps of the whole object (ensure_ascii=False), streamed."""
    marker = "\0dids\0"
    whole = json.dumps(_ordered(info.summary, marker), ensure_ascii=False)
    head, tail = whole.split(json.dumps(marker), 1)
    out.write(head + "[")
    for i, did in enumerate(info.dids()):
        out.write((", " if i else "") + json.dumps(did, ensure_ascii=False))
    out.write("]" + tail + "\n")


def _text(value: object) -> str | None:
    """A stored value for display: text as it is, bytes decoded, numbers as SQLite's text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _cut(text: str | None, none: str = "(none)") -> str:
    """A DID or a date for the text form: at most TEXT_DID_CHARS and a note of the length."""
    if text is None:
        return none
    if len(text) <= TEXT_DID_CHARS:
        return text
    return f"{text[:TEXT_DID_CHARS - 24]}... ({len(text)} characters)"


def format_info(summary: dict[str, Any], dids_total: int,
                dids: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> str:
    """The human form: the summary and the DIDs given (at most TEXT_DIDS are expected),
    and how many more there are."""
    mb = summary["size_bytes"] / 1e6
    lines = [f"archive: {summary['archive']} ({mb:.1f} MB, schema v"
             f"{summary['schema_version']}, journal mode {summary['journal_mode']})",
             f"posts: {summary['posts']}"]
    if summary["posts"]:
        lines.append(f"created: {_cut(summary['first_created_at'], 'None')} .. "
                     f"{_cut(summary['last_created_at'], 'None')}")
    lines.append("media rows: " + ("none (no media table)" if summary["media_rows"] is None
                                   else str(summary["media_rows"])))
    lines.append(f"DIDs: {dids_total}")
    shown = [(_cut(d["did"]), d["posts"], _cut(d["first_created_at"], "None"),
              _cut(d["last_created_at"], "None")) for d in dids]   # only the cut text kept
    width = max((len(row[0]) for row in shown), default=0)
    for name, posts, first, last in shown:
        lines.append(f"  {name:<{width}}  {posts:>9} posts  {first} .. {last}")
    if dids_total > len(shown):
        lines.append(f"  ... and {dids_total - len(shown)} more DIDs "
                     "(--json lists them all)")
    return "\n".join(lines) + "\n"
