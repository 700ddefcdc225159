"""`skyexport fetch HANDLE|DID`: the subcommand's options and what it prints.  Loaded by
cli.py only to build its parser (this module imports nothing heavy) and to run it."""

from __future__ import annotations

import argparse
import sys

# typing is not imported at run time: this module is loaded to build every parser.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FETCH_EXAMPLES = """\
examples:
  skyexport fetch alice.bsky.social                 # -> backups/did:plc:.../
  skyexport fetch did:plc:ewvi7nxzyoun6zhxrhs64oiz --no-blobs
  skyexport fetch alice.example.com --pds https://pds.example.com --jobs 8
  skyexport fetch alice.bsky.social -q && skyexport info backups/did:plc:.../repo.car
"""

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "t": 1000 ** 4, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def parse_size(text: str) -> int:
    """`16GB`, `500MB`, `100M`, `2GiB`, `1000` (bytes) -> bytes."""
    t = text.strip().lower().replace(" ", "")
    i = len(t)
    while i and not t[i - 1].isdigit():
        i -= 1
    num, unit = t[:i], t[i:]
    if not num.isdigit() or unit not in _UNITS or int(num) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 16GB, 500MB, 2GiB)")
    return int(num) * _UNITS[unit]


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 64")
    return int(text)


def add_parser(sub: Any) -> None:
    f = sub.add_parser("fetch", help="back up an account from the network: its repository "
                       "and blobs", epilog=FETCH_EXAMPLES,
                       description="Download an account's repository (repo.car, checked) "
                                   "and its blobs (each checked against its CID) into "
                                   "OUTPUT/<did>/; a rerun downloads only what is new.  "
                                   "The last line printed is the backup directory.")
    f.add_argument("who", metavar="HANDLE|DID", help="the account: alice.bsky.social or a DID")
    f.add_argument("--output", "-o", default="backups", metavar="DIR",
                   help="where backups go (default: ./backups); this one in DIR/<did>/")
    f.add_argument("--pds", metavar="URL",
                   help="the account's PDS, instead of the one its DID document names (a "
                        "handle is still checked against that document)")
    f.add_argument("--no-blobs", action="store_true", help="only the repository")
    f.add_argument("--jobs", "-j", type=_jobs, default=4, metavar="N",
                   help="blobs downloaded at once (default 4)")
    f.add_argument("--max-repo-size", type=parse_size, default="16GB", metavar="SIZE",
                   help="refuse a larger repository (default 16GB)")
    f.add_argument("--max-blob-size", type=parse_size, default="100MB", metavar="SIZE",
                   help="skip (and report) a larger blob (default 100MB)")
    f.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                   help="progress on stderr: a bar (default on a terminal), JSON lines, "
                        "or nothing")
    talk = f.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true",
                      help="print only the backup directory; no progress")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="also print the PDS, the rev and each blob problem")


class BarReporter:
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


def _reporter(mode: str) -> Any:
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "bar":
        return BarReporter()
    if mode == "jsonl":
        from ..exporter.progress import JsonLinesReporter
        return JsonLinesReporter(sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    from ..cli.commands import EXIT_INT, EXIT_OK, EXIT_TERM, EXIT_USAGE, _fail, _Terminated
    from ..errors import OptionError
    from .backup import fetch

    out, err = sys.stdout, sys.stderr
    try:
        r = fetch(args.who, args.output, pds=args.pds, blobs=not args.no_blobs,
                  jobs=args.jobs, max_repo_size=args.max_repo_size,
                  max_blob_size=args.max_blob_size,
                  on_progress=_reporter("none" if args.quiet else args.progress))
    except OptionError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (KeyboardInterrupt, _Terminated) as exc:
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
