"""`skyexport import`: a repository CAR (or a backup directory's) into an archive in
bskyarchive's schema, with its progress line."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .render import EXIT_OK, usage

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..sources.car.importer import import_car

    try:
        car, blobs = _backup_car(args.car, args.blobs)
        on_blocks = _import_progress(args.progress, car)
        try:
            r = import_car(car, args.archive, merge=args.merge, on_blocks=on_blocks,
                           blobs=blobs)
        finally:
            if getattr(on_blocks, "bar", False):
                sys.stderr.write("\n")
    except OptionError as exc:
        return usage(args, str(exc))
    out = sys.stdout
    out.write(f"posts: {r.posts} in the CAR ({r.did}, rev {r.rev or '-'})\n")
    if args.merge:
        out.write(f"added: {r.added} (already there: {r.posts - r.added})\n")
    if blobs is not None:
        out.write(f"media: {r.media_added} rows from {blobs}\n")
        for uri, message in r.warnings[:10]:
            sys.stderr.write(f"skyexport: warning: {uri}: {message}\n")
        if len(r.warnings) > 10:
            sys.stderr.write(f"skyexport: warning: ... {len(r.warnings) - 10} more\n")
    out.write(f"{r.archive}\n")
    return EXIT_OK


def _backup_car(path: str, blobs: str | None = None) -> tuple[str, str | None]:
    """A backup directory of `skyexport fetch` read as its repo.car and its blobs/ (None
    if it has none, or `blobs` is given: that one instead; a blobs/ that is not a
    directory is refused); any other path as itself, with `blobs`."""
    from ..errors import ArchiveError
    from ..sources.backup import backup_parts, is_backup

    if not is_backup(path):
        return path, blobs
    parts = backup_parts(path)
    if blobs is None and parts.problem is not None:
        raise ArchiveError(parts.problem)
    if blobs is None and parts.blobs is not None:
        blobs = str(parts.blobs)
    return str(parts.car), blobs


def _import_progress(mode: str, car: str) -> Any:
    """import's on_blocks: the CAR's blocks and bytes read, at most twice a second, as a
    line rewritten in place (bar) or JSON lines on stderr; None for none."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "none":
        return None
    try:
        total = os.stat(car).st_size
    except OSError:
        total = 0
    last = [0.0]

    def on_blocks(blocks: int, offset: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and offset < total:
            return
        last[0] = now
        if mode == "jsonl":
            sys.stderr.write(f'{{"status":"running","blocks":{blocks},"bytes":{offset},'
                             f'"total_bytes":{total}}}\n')
        else:
            pct = f" ({100 * offset // total}%)" if total else ""
            sys.stderr.write(f"\rreading the CAR: {blocks} blocks, {offset >> 20} of "
                             f"{total >> 20} MiB{pct}")
        sys.stderr.flush()
    on_blocks.bar = mode == "bar"  # type: ignore[attr-defined]
    return on_blocks


