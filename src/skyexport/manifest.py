"""manifest.json: bskyarchive's keys plus what lets anyone check the export later, and
`verify`, which does that check."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

MANIFEST = "manifest.json"
MEDIA_SUMS = "media.sha256"
MANIFEST_VERSION = "1.0"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    data = msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass
class VerifyReport:
    """What `verify` found: `problems` empty means every byte is as the manifest says."""

    directory: Path
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(directory: str | os.PathLike[str]) -> VerifyReport:
    """Re-hash every file the manifest names (data file, media list, each media file) and
    report any difference, missing file or file the manifest does not know."""
    d = Path(directory)
    report = VerifyReport(d)
    try:
        manifest = msgspec.json.decode((d / MANIFEST).read_bytes())
    except FileNotFoundError:
        report.problems.append(f"{d / MANIFEST} does not exist; is {d} a skyexport export?")
        return report
    except msgspec.DecodeError as exc:
        report.problems.append(f"{d / MANIFEST} is not valid JSON ({exc})")
        return report
    checksums = manifest.get("checksums") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict):
        report.problems.append(f"{d / MANIFEST} has no checksums; was it written by skyexport?")
        return report
    expected: dict[str, tuple[str, int | None]] = {}
    for name, info in checksums.items():
        expected[name] = (info.get("sha256", ""), info.get("bytes"))
    # The media list is itself covered by the manifest; its lines cover media/.
    sums = d / MEDIA_SUMS
    if MEDIA_SUMS in expected and sums.is_file():
        for line in sums.read_text("utf-8").splitlines():
            digest, _, name = line.partition("  ")
            expected[name] = (digest, None)
    for name, (digest, size) in sorted(expected.items()):
        path = d / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        got, got_size = sha256_file(path)
        report.checked += 1
        if size is not None and got_size != size:
            report.problems.append(f"{name}: {got_size} bytes, manifest says {size}")
        elif got != digest:
            report.problems.append(f"{name}: SHA-256 {got}, manifest says {digest}")
    known = set(expected) | {MANIFEST}
    for root, _dirs, files in os.walk(d):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/")
            if rel not in known:
                report.problems.append(f"{rel}: not listed in the manifest")
    return report
