"""The defaults and names every part of skyexport agrees on, in one place.  No imports:
the command line reads these before anything heavy is loaded (start-up is part of every
export)."""

from __future__ import annotations

FORMATS: tuple[str, ...] = ("json", "csv", "jsonl")
#: The data file of each format (before a compression suffix).
DATA_FILES = {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}
#: A compressed data file's suffix, by codec: posts.<format>.gz / .zst.
SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}
DEFAULT_ARCHIVE = "data/archive.db"   # where bskyarchive keeps its archive
DEFAULT_OUTPUT = "exports"
DEFAULT_BATCH = 1000
#: Warnings kept word for word (in the manifest, and by the media copier); the rest are
#: only counted.
MAX_WARNINGS = 1000

#: A repository CAR's other collections, one file each: records/<nsid>.<format>
#: (docs/CAR.md, "Every collection"): the directory, and the CSV columns.
RECORDS_DIR = "records"

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
            column = "".join("_" + c.lower() if c.isupper() and i and item[i - 1].islower()
                             or c.isupper() and i and item[i - 1].isdigit() else c.lower()
                             for i, c in enumerate(item))
            out.append((column, (item.encode(),)))
    return tuple(out)


RECORD_COLUMNS: dict[str, tuple[tuple[str, tuple[bytes, ...]], ...]] = {
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
RECORD_COLUMNS["app.bsky.feed.post"] = tuple(
    (c, (b"reply", c.split("_")[1].encode(), c.split("_")[2].encode()))
    if c.startswith("reply_") else (c, p) for c, p in RECORD_COLUMNS["app.bsky.feed.post"])


def records_csv_header(nsid: str) -> str:
    """The CSV header line of collection `nsid`'s file."""
    cols = RECORD_COLUMNS.get(nsid)
    names = ["uri", "cid"] + ([c for c, _ in cols] if cols is not None else ["json"])
    return ",".join(names) + "\n"
