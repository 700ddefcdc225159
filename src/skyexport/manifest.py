"""manifest.json: bskyarchive's keys plus what lets anyone check the export later, and
`verify`, which does that check.

An export directory holds the data file, `manifest.json` and, with media, `media/` and
`media.sha256`.  The manifest's `checksums` give the SHA-256 and size of the data file and
of `media.sha256`; that list gives the SHA-256 of every file in `media/`, one line each in
`sha256sum`'s format (`<hex>  media/<name>`).  So one hash chain covers every byte, and
the manifest stays small however many media files there are.  `verify` walks it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ._core import json_string

# typing is not imported at run time: start-up is part of every export (SC-006).
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
        os.fsync(f.fileno())


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


class VerifyReport:
    """What `verify` found: `problems` empty means every byte is as the manifest says;
    `checked` files were hashed."""

    __slots__ = ("directory", "checked", "problems")

    def __init__(self, directory: Path, checked: int = 0,
                 problems: list[str] | None = None) -> None:
        self.directory = directory
        self.checked = checked
        self.problems: list[str] = [] if problems is None else problems

    def __repr__(self) -> str:
        return (f"VerifyReport(directory={self.directory!r}, checked={self.checked!r}, "
                f"problems={self.problems!r})")

    @property
    def ok(self) -> bool:
        return not self.problems


_HEX = frozenset("0123456789abcdef")


def _plain_name(name: object) -> bool:
    """A file name the manifest may list: one component, nothing that climbs out."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST)
            and "/" not in name and "\\" not in name and "\0" not in name)


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


def verify(directory: str | os.PathLike[str]) -> VerifyReport:
    """Re-hash every file the manifest names (the data file, `media.sha256`, and each
    media file that list names) and report every difference: a changed or missing file,
    a file the manifest does not know, a media list that does not match `media_count`.

    The manifest's names are only trusted as plain names inside the export directory
    (`media/<name>` for media); anything else is itself reported, never opened.
    """
    import msgspec  # only verify reads JSON

    d = Path(directory)
    report = VerifyReport(d)
    problems = report.problems
    if not d.is_dir():
        problems.append(f"{d} is not a directory")
        return report
    try:
        manifest = msgspec.json.decode((d / MANIFEST).read_bytes())
    except FileNotFoundError:
        problems.append(f"{MANIFEST} is missing; is {d} a skyexport export?")
        return report
    except OSError as exc:
        problems.append(f"{MANIFEST} cannot be read ({exc.strerror})")
        return report
    except msgspec.DecodeError as exc:
        problems.append(f"{MANIFEST} is not valid JSON ({exc})")
        return report
    checksums = manifest.get("checksums") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict) or not checksums:
        problems.append(f"{MANIFEST} has no checksums; was it written by skyexport?")
        return report

    expected: dict[str, tuple[str, int | None]] = {}
    for name, info in checksums.items():
        if not _plain_name(name):
            problems.append(f"{MANIFEST} lists {name!r}, which is not a plain file name")
            continue
        digest = info.get("sha256") if isinstance(info, dict) else None
        size = info.get("bytes") if isinstance(info, dict) else None
        if not _is_digest(digest) or not (size is None or isinstance(size, int)):
            problems.append(f"{MANIFEST}: the checksum of {name} is malformed")
            continue
        expected[name] = (digest, size)  # type: ignore[assignment]

    media_listed = 0
    if MEDIA_SUMS in expected:
        # media.sha256 is checked below like any listed file; its lines cover media/.
        try:
            text = (d / MEDIA_SUMS).read_text("utf-8", errors="surrogateescape")
        except OSError:
            text = ""  # reported as missing below
        for n, line in enumerate(text.splitlines(), 1):
            digest, sep, name = line.partition("  ")
            base = name[len("media/"):] if name.startswith("media/") else ""
            if not sep or not _is_digest(digest) or not _plain_name(base):
                problems.append(f"{MEDIA_SUMS} line {n} is malformed: {line[:120]!r}")
            elif name in expected:
                problems.append(f"{MEDIA_SUMS} line {n} repeats {_show(name)}")
            else:
                expected[name] = (digest, None)
                media_listed += 1
        count = manifest.get("media_count")
        if isinstance(count, int) and count != media_listed:
            problems.append(f"{MEDIA_SUMS} lists {media_listed} media files, "
                            f"{MANIFEST} says media_count {count}")

    for name, (digest, size) in sorted(expected.items()):
        path = d / name
        if path.is_symlink():
            problems.append(f"{_show(name)}: a symbolic link, not the exported file")
            continue
        try:
            got, got_size = sha256_file(path)
        except FileNotFoundError:
            problems.append(f"{_show(name)}: missing")
            continue
        except OSError as exc:
            problems.append(f"{_show(name)}: cannot be read ({exc.strerror})")
            continue
        report.checked += 1
        if size is not None and got_size != size:
            problems.append(f"{_show(name)}: {got_size} bytes, {MANIFEST} says {size}")
        elif got != digest:
            problems.append(f"{_show(name)}: SHA-256 {got}, the manifest says {digest}")

    known = set(expected) | {MANIFEST}
    for root, dirs, files in os.walk(d):
        rel_root = os.path.relpath(root, d).replace(os.sep, "/")
        for name in sorted(dirs):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel != "media" or (d / rel).is_symlink():
                problems.append(f"{_show(rel)}/: a directory the manifest does not know")
        dirs[:] = [x for x in dirs if rel_root == "." and x == "media"
                   and not (d / x).is_symlink()]
        for name in sorted(files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel not in known:
                problems.append(f"{_show(rel)}: not listed in the manifest")
    return report


def _show(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "backslashreplace")
