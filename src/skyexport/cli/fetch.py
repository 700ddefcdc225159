"""`skyexport fetch`: an account backed up from the network (remote/), and what it
prints: the account, the PDS, what changed, the blobs' problems, the backup directory."""

from __future__ import annotations

import argparse
import sys

from .render import EXIT_INT, EXIT_OK, EXIT_TERM, EXIT_USAGE, Terminated, fail, reporter

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FetchBar:
    """`--progress bar`: the repository's bytes, then the blobs, with rate and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bytes = Progress(TextColumn("[bold]{task.description:>5}"), BarColumn(),
                               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True), refresh_per_second=8)
        self._repo: Any = None
        self._blobs: Any = None

    def __call__(self, ev: Any) -> None:
        p = self._bytes
        if self._repo is None:
            p.start()
            self._repo = p.add_task("repo", total=None)
        p.update(self._repo, completed=ev.repo_bytes,
                 total=ev.repo_bytes if ev.phase not in ("resolve", "repo") else None)
        if ev.phase in ("blobs", "done") or ev.blobs_total:
            if self._blobs is None:
                self._blobs = p.add_task("blobs", total=None)
            p.update(self._blobs, completed=ev.blob_bytes,
                     description=f"blobs {ev.blobs_done}/{ev.blobs_total}")
        if ev.status in ("completed", "failed"):
            p.stop()


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..remote.backup import fetch

    out, err = sys.stdout, sys.stderr
    try:
        r = fetch(args.who, args.output, pds=args.pds, blobs=not args.no_blobs,
                  jobs=args.jobs, max_repo_size=args.max_repo_size,
                  max_blob_size=args.max_blob_size,
                  on_progress=reporter("none" if args.quiet else args.progress, FetchBar))
    except OptionError as exc:
        return fail(str(exc), EXIT_USAGE)
    except (KeyboardInterrupt, Terminated) as exc:
        word, code = (("interrupted", EXIT_INT) if isinstance(exc, KeyboardInterrupt)
                      else ("terminated", EXIT_TERM))
        err.write(f"skyexport: {word}; the backup keeps its previous repo.car and every blob "
                  "downloaded whole; run the same command again to resume\n")
        return code
    problems = [("not served by the PDS", r.blobs_missing),
                ("discarded (wrong bytes or too big)", r.blobs_bad),
                ("refused (not a blob CID)", r.blobs_refused)]
    for what, items in problems:
        if items:
            err.write(f"skyexport: warning: {len(items)} blob(s) {what}"
                      + (f"; first: {items[0]}" if not args.verbose else "") + "\n")
            if args.verbose:
                for line in items[:100]:
                    err.write(f"  {line}\n")
    if args.quiet:
        out.write(f"{r.directory}\n")
        return EXIT_OK
    who = f"{r.handle} ({r.did})" if r.handle else r.did
    out.write(f"account: {who}\n")
    if args.verbose or r.pds_from == "--pds":
        given = r.pds_from == "--pds"
        out.write(f"pds: {r.pds} (from {'--pds' if given else 'the DID document'})\n")
    if args.verbose:
        out.write(f"rev: {r.rev or '-'}\ntime: {r.elapsed_s:.2f} s, {r.retries} retries\n")
    if r.repo_changed:
        out.write(f"repo.car: {r.repo_bytes:,} bytes, {r.records:,} records (+{r.records_added}"
                  f" -{r.records_removed} ~{r.records_changed}), sha256 {r.repo_sha256}\n")
    else:
        out.write(f"repo.car: unchanged (rev {r.rev}), {r.records:,} records\n")
    if not args.no_blobs:
        out.write(f"blobs: {r.blobs_listed:,} listed, {r.blobs_downloaded:,} downloaded "
                  f"({r.blob_bytes:,} bytes), {r.blobs_present:,} already there"
                  + (f", {r.blobs_unlisted} no longer listed (kept)" if r.blobs_unlisted
                     else "") + "\n")
    out.write(f"{r.directory}\n")
    return EXIT_OK
