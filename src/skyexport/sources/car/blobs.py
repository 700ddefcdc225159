"""Media from blobs (docs/CAR.md, "Media from blobs"): a repository holds blob references,
not their bytes; `--blobs DIR` finds each blob a post references as `DIR/<cid>` or
`DIR/<cid>.<ext>` and fills the archive's `media` table with it, as bskyarchive would.

Only the DIR's own entries are looked at (no path from the repository is ever joined but a
CID, which is base32 letters and digits); a symbolic link, a FIFO, a directory or anything
but a regular file is not a blob and is reported.  Whether a file's bytes match its CID is
checked when it is read: by `import` here (hashing each file once), by the export's media
copier while it copies (MediaCopier's check_cid)."""
from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from ..._platform import sha256_regular

TYPE_CHECKING = False
if TYPE_CHECKING:
    import apsw

# a CIDv1 in base32 as atproto writes blob refs: `b`, then lowercase base32
_CID = re.compile(r"b[a-z2-7]{20,120}\Z")
# extensions a blob file may carry, by MIME type (the CID alone is tried first)
EXTENSIONS = {
    "image/jpeg": ("jpg", "jpeg"), "image/png": ("png",), "image/webp": ("webp",),
    "image/gif": ("gif",), "image/heic": ("heic",), "image/avif": ("avif",),
    "video/mp4": ("mp4",), "video/quicktime": ("mov",), "video/webm": ("webm",),
}


def cid_sha256(cid: str) -> str | None:
    """The hex SHA-256 digest a CIDv1 string (base32, `b…`) names, or None when it is not
    one (or its hash is not SHA-256)."""
    if not _CID.match(cid):
        return None
    raw = cid[1:].upper()
    try:
        b = base64.b32decode(raw + "=" * (-len(raw) % 8))
    except ValueError:
        return None
    # version 1, a one-byte codec (raw 0x55, dag-cbor 0x71), sha2-256 (0x12), 32 bytes
    if len(b) != 36 or b[0] != 1 or b[1] not in (0x55, 0x71) or b[2:4] != b"\x12\x20":
        return None
    return b[4:].hex()


def _blob(obj: object) -> tuple[str, str, int | None] | None:
    """(CID, mimeType, size) of a blob reference (or a legacy {cid, mimeType})."""
    if not isinstance(obj, dict):
        return None
    ref = obj.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else obj.get("cid")
    mime = obj.get("mimeType")
    size = obj.get("size")
    if not isinstance(cid, str) or not isinstance(mime, str):
        return None
    return cid, mime, size if isinstance(size, int) and not isinstance(size, bool) else None


def _ratio(obj: object) -> tuple[int | None, int | None]:
    ar = obj.get("aspectRatio") if isinstance(obj, dict) else None
    if not isinstance(ar, dict):
        return None, None
    w, h = ar.get("width"), ar.get("height")
    return (w if isinstance(w, int) else None), (h if isinstance(h, int) else None)


Ref = tuple[str, str, "int | None", "int | None", "int | None", "str | None"]


def blob_refs(embed: object) -> list[Ref]:
    """(cid, mime, size, width, height, alt) of each blob a post record's embed
    references, in CAR.md's MediaFiles order: images, recordWithMedia's images, video,
    external thumb, recordWithMedia's external thumb."""
    out: list[Ref] = []
    if not isinstance(embed, dict):
        return out
    media = embed.get("media") if isinstance(embed.get("media"), dict) else {}

    def images(holder: object) -> None:
        imgs = holder.get("images") if isinstance(holder, dict) else None
        for img in imgs if isinstance(imgs, list) else []:
            if isinstance(img, dict) and (b := _blob(img.get("image"))) is not None:
                alt = img.get("alt")
                out.append((*b, *_ratio(img), alt if isinstance(alt, str) else None))

    def video(holder: object) -> None:
        if isinstance(holder, dict) and (b := _blob(holder.get("video"))) is not None:
            alt = holder.get("alt")
            out.append((*b, *_ratio(holder), alt if isinstance(alt, str) else None))

    def thumb(holder: object) -> None:
        ext = holder.get("external") if isinstance(holder, dict) else None
        if isinstance(ext, dict) and (b := _blob(ext.get("thumb"))) is not None:
            out.append((*b, None, None, None))

    images(embed)
    images(media)
    video(media)
    video(embed)
    thumb(embed)
    thumb(media)
    return out


class BlobDir:
    """The blobs directory: find(cid, mime) -> (path, None) or (None, why not)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        st = os.stat(self.path)           # the directory itself, as named
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"--blobs {self.path}: not a directory")

    def find(self, cid: str, mime: str) -> tuple[Path | None, str | None]:
        if not _CID.match(cid):
            return None, f"blob {cid!r} is not a CID"
        why = None
        for name in (cid, *(f"{cid}.{ext}" for ext in EXTENSIONS.get(mime, ()))):
            p = self.path / name
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            except OSError as exc:
                why = f"blob file {p} cannot be read ({exc.strerror})"
                continue
            if stat.S_ISLNK(st.st_mode):
                why = f"blob file {p} is a symbolic link (not followed)"
            elif not stat.S_ISREG(st.st_mode):
                why = f"blob file {p} is not a regular file"
            else:
                return p, None
        return None, why or (f"blob {cid} is not in {self.path} (as {cid} or "
                             f"{cid}.<ext>)")


def _posts_with_media(con: apsw.Connection) -> Iterator[tuple[str, str]]:
    yield from con.cursor().execute(
        "SELECT p.uri, p.embed_data FROM posts p WHERE p.has_media AND p.embed_data "
        "IS NOT NULL AND NOT EXISTS (SELECT 1 FROM media m WHERE m.post_uri = p.uri) "
        "ORDER BY p.rowid")


def fill_media(con: apsw.Connection, blobs: BlobDir, *, verify: bool,
               relative_to: Path | None,
               warn: Callable[[str, str], None]) -> int:
    """Insert a `media` row (hash = blob CID, post_uri, mime_type, file_path, size_bytes,
    width and height from aspectRatio, alt_text) for each blob of each post with
    has_media and no media rows yet, whose file is in `blobs`; returns the rows added.
    An absent blob, or one that is not a regular file, is a warning naming the post; with
    `verify` a file whose SHA-256 does not match its CID is one too, and gets no row.
    file_path is relative to `relative_to` (the archive's directory) when given, else
    absolute.  The rows are added in one transaction."""
    added = 0
    insert = ("INSERT OR IGNORE INTO media (hash, post_uri, mime_type, file_path, "
              "size_bytes, width, height, alt_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    with con:
        for uri, embed_data in _posts_with_media(con):
            try:
                embed = json.loads(embed_data)
            except ValueError:
                continue
            for cid, mime, size, width, height, alt in blob_refs(embed):
                path, why = blobs.find(cid, mime)
                if path is None:
                    warn(uri, f"{why}; not exported")
                    continue
                got_size = size if size is not None else 0
                if verify:
                    got = sha256_regular(path)
                    if got is None:
                        warn(uri, f"blob file {path} is not a regular file; not exported")
                        continue
                    if got[0] != cid_sha256(cid):
                        warn(uri, f"blob file {path} does not match its CID {cid} (SHA-256 "
                                  f"{got[0]}); not exported")
                        continue
                    got_size = got[1]
                else:
                    try:
                        got_size = os.lstat(path).st_size
                    except OSError:
                        pass
                fp = (os.path.relpath(os.path.abspath(path), relative_to)
                      if relative_to is not None else os.path.abspath(path))
                con.execute(insert, (cid, uri, mime, fp, got_size, width, height, alt))
                added += con.changes()
    return added
