"""manifest.json written: bskyarchive's keys plus what lets anyone check the export later
(see verify.py for the check).

An export directory holds the data file, `manifest.json` and, with media, `media/` and
`media.sha256`.  The manifest's `checksums` give the SHA-256 and size of the data file and
of `media.sha256`; that list gives the SHA-256 of every file in `media/`, one line each in
`sha256sum`'s format (`<hex>  media/<name>`).  So one hash chain covers every byte, and
the manifest stays small however many media files there are.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .._core import json_string
from .._platform import fsync

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MANIFEST = "manifest.json"
MEDIA_SUMS = "media.sha256"
MANIFEST_VERSION = "1.0"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` (two-space indent, as bskyarchive's) durably; never replaces
    an existing file."""
    data = encode_json(manifest) + b"\n"
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        fsync(f.fileno())


def encode_json(value: object, level: int = 0) -> bytes:
    """JSON with a two-space indent, `{}`/`[]` when empty: what msgspec.json.format
    writes, without importing msgspec (its import costs more than a small export takes).
    Strings are escaped by the core, as the posts' text fields are."""
    pad = b"\n" + b"  " * (level + 1)
    end = b"\n" + b"  " * level
    if value is None:
        return b"null"
    if value is True or value is False:
        return b"true" if value else b"false"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} has no JSON form")
        return repr(value).encode()
    if isinstance(value, str):
        return json_string(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, dict):
        if not value:
            return b"{}"
        items = [json_string(str(k).encode("utf-8", "surrogateescape")) + b": "
                 + encode_json(v, level + 1) for k, v in value.items()]
        return b"{" + pad + (b"," + pad).join(items) + end + b"}"
    if isinstance(value, (list, tuple)):
        if not value:
            return b"[]"
        return b"[" + pad + (b"," + pad).join(encode_json(v, level + 1) for v in value) \
            + end + b"]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(SHA-256 hex digest, size) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
