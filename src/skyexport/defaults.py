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
