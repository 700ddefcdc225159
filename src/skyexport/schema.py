"""bskyarchive's archive schema, in one place: the posts columns in the order the export
reads them, and the DDL that synth writes, `import` (repository CARs) writes and the tests
build their archives with.

The statements are bskyarchive's own text (as `sqlite3 .dump` shows it in the golden
archive), so `sqlite_schema` of an archive skyexport makes reads like a real one.  The
compiled core has its own copy of the column order (ext/skyexport/rows/rows.pxi, COLUMN_NAMES),
pinned to POST_COLUMNS by tests/unit/test_core_module.py.
"""

from __future__ import annotations

#: The 17 columns of ``posts``, in the order the export SELECT reads them.
POST_COLUMNS = (
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count",
    "repost_count", "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type",
    "embed_data", "labels", "archived_at",
)
#: Schema v1 has no ``quote_count``.
POST_COLUMNS_V1 = tuple(c for c in POST_COLUMNS if c != "quote_count")
MEDIA_COLUMNS = (
    "hash", "post_uri", "mime_type", "file_path", "size_bytes", "width", "height", "alt_text",
    "created_at",
)

POSTS_V2 = (
    "CREATE TABLE posts (uri TEXT PRIMARY KEY, cid TEXT NOT NULL, did TEXT NOT NULL, text TEXT,\n"
    " created_at TIMESTAMP NOT NULL, indexed_at TIMESTAMP NOT NULL, has_media BOOLEAN DEFAULT 0,\n"
    " like_count INTEGER DEFAULT 0, repost_count INTEGER DEFAULT 0,"
    " reply_count INTEGER DEFAULT 0,\n"
    " quote_count INTEGER DEFAULT 0, is_reply BOOLEAN DEFAULT 0, reply_parent TEXT,"
    " embed_type TEXT,\n"
    " embed_data JSON, labels JSON, archived_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
)
POSTS_V1 = POSTS_V2.replace("\n quote_count INTEGER DEFAULT 0,", "\n")
MEDIA = (
    "CREATE TABLE media (hash TEXT PRIMARY KEY, post_uri TEXT NOT NULL, mime_type TEXT NOT NULL,\n"
    " file_path TEXT NOT NULL, size_bytes INTEGER NOT NULL, width INTEGER, height INTEGER,"
    " alt_text TEXT,\n created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
)
FTS = (
    "CREATE VIRTUAL TABLE posts_fts USING fts5(uri UNINDEXED, text, content='posts',"
    " content_rowid='rowid')"
)
INDEXES = (
    "CREATE INDEX idx_posts_did ON posts(did)",
    "CREATE INDEX idx_posts_created_at ON posts(created_at DESC)",
)
TRIGGER = (
    "CREATE TRIGGER posts_ai AFTER INSERT ON posts BEGIN\n"
    " INSERT INTO posts_fts(rowid, uri, text) VALUES (new.rowid, new.uri, new.text); END"
)
INSERT_V2 = "INSERT INTO posts VALUES (" + ",".join("?" * len(POST_COLUMNS)) + ")"
INSERT_V1 = (f"INSERT INTO posts ({', '.join(POST_COLUMNS_V1)}) VALUES ("
             + ",".join("?" * len(POST_COLUMNS_V1)) + ")")
INSERT_MEDIA = "INSERT INTO media VALUES (" + ",".join("?" * len(MEDIA_COLUMNS)) + ")"


def schema_statements(schema_version: int = 2, *, media_table: bool = True,
                      not_null: bool = True) -> list[str]:
    """Every CREATE statement of an archive, in order (indexes and trigger last).
    ``not_null=False`` drops the NOT NULL constraints of ``posts`` (bskyarchive never does
    this; tests use it to store NULL in ``cid``, ``did``, ``created_at``, ``indexed_at``)."""
    if schema_version not in (1, 2):
        raise ValueError(f"unknown schema version {schema_version!r}")
    posts = POSTS_V2 if schema_version == 2 else POSTS_V1
    if not not_null:
        posts = posts.replace(" NOT NULL", "")
    return [posts, *([MEDIA] if media_table else []), FTS, *INDEXES, TRIGGER]
