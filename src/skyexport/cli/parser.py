"""The command line's parser: every command's arguments, their checks and help (each
command's help ends with examples), and how a usage error is printed.  Built on every run,
so it imports nothing but argparse: the commands themselves are other modules of cli/,
loaded only for the command run (cli/commands.py)."""

from __future__ import annotations

import argparse
import os

from ..defaults import DEFAULT_ARCHIVE, DEFAULT_BATCH, DEFAULT_OUTPUT, FORMATS
from .render import EXIT_USAGE, usage_text

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the terminal width up front: asking for it itself, it
    imports shutil on every add_argument, a tenth of a small export's whole time.  The
    epilog (the examples) is printed as written."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
        except (ValueError, OSError):
            width = 80
        super().__init__(prog, width=max(width - 2, 40))


class _Parser(argparse.ArgumentParser):
    """Usage errors in two lines, the usage joined into one (argparse wraps it over many),
    then the error: `stderr` stays greppable, as for every other failure.  An unknown
    option gets a suggestion (`--sinse`: did you mean `--since`?)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        # No abbreviations: `--med` working today would break scripts the day another
        # --med... option appears.  A typo gets a suggestion instead.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, usage_text(self, message))

    def unknown(self, extras: list[str]) -> NoReturn:
        """Arguments this (sub)command does not take, with the closest option named."""
        import difflib

        options = [o for action in self._actions for o in action.option_strings
                   if o.startswith("--")]
        message = f"unrecognized arguments: {' '.join(extras)}"
        for extra in extras:
            if extra.startswith("-"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1,
                                                  cutoff=0.6)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.error(message)


class _Once(argparse.Action):
    """An option that may be given once: a second value is a usage error, never a silent
    "last one wins"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and "
                         f"{values}); give it once")
        setattr(namespace, self.dest, values)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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


EXPORT_EXAMPLES = """\
examples:
  skyexport export                                  # data/archive.db -> exports/<time>/
  skyexport export archive.db -f csv -o ~/backup    # Excel-friendly CSV
  skyexport export archive.db -f jsonl --since 2024-01-01 --until 2024-06-30 -q
  skyexport export archive.db --media --media-root ~/bskyarchive
  skyexport export archive.db -f jsonl -o - | jq -r .text   # stdout, summary on stderr
  skyexport export archive.db --compress zstd --layout did  # exports/<did>/<time>/
"""
VERIFY_EXAMPLES = """\
examples:
  skyexport verify exports/2024-06-01_10-00-00
  skyexport verify "$(skyexport export -q)"         # export, then check it
"""
SYNTH_EXAMPLES = """\
examples:
  skyexport synth /tmp/big.db --posts 1000000
  skyexport synth /tmp/m/archive.db --posts 5000 --media --dids 3
"""
DEMO_EXAMPLES = """\
examples:
  skyexport demo                                    # 50,000 posts in a temporary directory
  skyexport demo --posts 200000 --keep
  skyexport demo --output ./demo                    # a new directory, kept
"""
INFO_EXAMPLES = """\
examples:
  skyexport info data/archive.db
  skyexport info data/archive.db --json | jq '.dids[0]'
  skyexport info repo.car                           # a Bluesky repository export
"""
IMPORT_EXAMPLES = """\
examples:
  skyexport import repo.car                         # a new data/archive.db
  skyexport import repo.car --archive data/archive.db --merge
"""
COMPLETION_EXAMPLES = """\
examples:
  source <(skyexport completion bash)               # this shell
  skyexport completion bash > ~/.local/share/bash-completion/completions/skyexport
  skyexport completion zsh > "${fpath[1]}/_skyexport"
"""


PROGRESS_HELP = "progress on stderr: a bar (default on a terminal), JSON lines, or nothing"


def _add_progress(p: Any, help: str = PROGRESS_HELP, default: str | None = "auto") -> None:
    p.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default=default,
                   help=help)


class _NoGettext:
    """argparse looks up a translation (gettext: the locale module, a search for .mo files)
    for each of its ~24 strings as the parser is built - more than a third of building
    it, on every run.  CPython ships no argparse translations and skyexport's own text is
    English: while build_parser runs, argparse's strings are taken as they are (restored
    after; errors and help later translate as usual)."""

    def __enter__(self) -> None:
        self.saved = argparse._  # type: ignore[attr-defined]
        argparse._ = str  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        argparse._ = self.saved  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    with _NoGettext():
        return _build_parser()


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="skyexport",
        description="Export Bluesky post archives (the SQLite files bskyarchive writes) to "
                    "JSON, CSV or JSON Lines, byte-exact and in flat memory.",
        epilog="Run `skyexport COMMAND --help` for a command's options and examples.")
    p.add_argument("--version", "-V", action="version", version=f"skyexport {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    _add_export(sub)
    _add_import(sub)
    _add_verify(sub)
    _add_synth(sub)
    _add_demo(sub)
    _add_info(sub)
    _add_fetch(sub)
    _add_completion(sub)
    return p


def _add_export(sub: Any) -> None:
    e = sub.add_parser("export", help="export an archive's posts", epilog=EXPORT_EXAMPLES,
                       description="Export posts into a new OUTPUT/YYYY-MM-DD_HH-MM-SS/ "
                                   "directory; the last line printed is its path.")
    e.add_argument("archive", nargs="?", default=DEFAULT_ARCHIVE, metavar="ARCHIVE",
                   help="the archive (default: ./data/archive.db), a repository export "
                        "(repo.car: Settings -> Export my data), or a backup directory of "
                        "`skyexport fetch` (--media takes its blobs/)")
    e.add_argument("--format", "-f", choices=FORMATS, default="json",
                   help="posts.json (default), posts.csv or posts.jsonl")
    e.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="DIR",
                   help="where export directories are created (default: ./exports); `-` "
                        "writes the data file alone to stdout (summary on stderr)")
    e.add_argument("--compress", choices=("gzip", "zstd"),
                   help="compress the data file: posts.*.gz (gzip -dc reads it) or "
                        "posts.*.zst (needs skyexport[zstd]); also with --output -")
    e.add_argument("--compress-level", type=int, metavar="N",
                   help="gzip 1-9 (default 6), zstd 1-22 (default 3)")
    e.add_argument("--blobs", action=_Once, metavar="DIR",
                   help="with a repository CAR and --media: the blob files, named by their "
                        "CID (DIR/<cid> or DIR/<cid>.<ext>), each checked against its CID")
    e.add_argument("--collections", action=_Once, metavar="all|NSID,...",
                   help="with a repository CAR: also write records/<nsid>.<format> for every "
                        "collection (all) or the NSIDs given, e.g. "
                        "app.bsky.graph.follow,app.bsky.feed.like (default: posts only)")
    e.add_argument("--layout", choices=("time", "did"), default="time",
                   help="time: OUTPUT/YYYY-MM-DD_HH-MM-SS/ (default); did: "
                        "OUTPUT/<did>/YYYY-MM-DD_HH-MM-SS/, bskyarchive's current layout "
                        "(the --did given, or the archive's only DID)")
    e.add_argument("--did", action=_Once, help="only posts of this DID (once; `skyexport "
                   "info` lists an archive's DIDs)")
    e.add_argument("--since", action=_Once, metavar="DATE",
                   help="only posts created at or after DATE (YYYY-MM-DD or RFC 3339, e.g. "
                        "2024-01-31T10:00:00Z; no zone = UTC)")
    e.add_argument("--until", action=_Once, metavar="DATE",
                   help="only posts created at or before DATE (a bare date includes the "
                        "whole day, UTC)")
    e.add_argument("--media", action="store_true",
                   help="copy the posts' media files into media/ (listed in media.sha256)")
    e.add_argument("--media-root", metavar="DIR", help="resolve relative media paths "
                   "against DIR first (default: the current directory), then the archive's "
                   "directory and its parent; files outside these are skipped")
    e.add_argument("--media-any-path", action="store_true",
                   help="also copy media files that resolve outside those roots (an "
                        "archive's paths are untrusted: only for archives you made)")
    e.add_argument("--media-link", choices=("copy", "hardlink"), default="copy",
                   help="copy: independent copies, reflinked where the file system can "
                        "(default); hardlink: no space used, but the export's files ARE the "
                        "archive's (editing one changes the other)")
    e.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH, metavar="N",
                   help="posts per batch: progress and media copying step (default 1000); "
                        "memory hardly depends on it")
    e.add_argument("--on-bad-value", choices=("error", "keep"), default="error",
                   help="unreadable timestamp or invalid stored JSON: stop (default) or "
                        "export it as text and list it in the manifest")
    e.add_argument("--csv-formula-guard", action="store_true",
                   help="CSV only: prefix ' to text fields starting with = + - @ tab or CR, "
                        "so spreadsheets show them instead of running them (changes bytes)")
    e.add_argument("--no-bom", dest="bom", action="store_false",
                   help="CSV only: leave out the byte-order mark that begins posts.csv "
                        "(there for Excel; other CSV readers take it for part of `URI`)")
    _add_progress(e, f"{PROGRESS_HELP}; given, it holds with --quiet too", default=None)
    talk = e.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true",
                      help="print only the export directory; no progress unless "
                           "--progress is given")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="also print the archive, the filters, the time taken and the "
                           "first warnings")


def _add_import(sub: Any) -> None:
    m = sub.add_parser("import", help="import a Bluesky repository export (repo.car) into "
                       "an archive", epilog=IMPORT_EXAMPLES,
                       description="Read the posts of a repository CAR (Settings -> Export "
                                   "my data) into a bskyarchive-schema archive.")
    m.add_argument("car", metavar="REPO.car", help="the repository export, or a backup "
                   "directory of `skyexport fetch` (its repo.car, its blobs/ as --blobs)")
    m.add_argument("--archive", default=DEFAULT_ARCHIVE, metavar="ARCHIVE",
                   help="the archive to create (default: ./data/archive.db); it must not "
                        "exist unless --merge")
    m.add_argument("--merge", action="store_true",
                   help="add the posts not yet in an existing archive (one transaction); "
                        "rows already there are left as they are")
    m.add_argument("--blobs", metavar="DIR",
                   help="fill the media table from the blob files in DIR (named by their "
                        "CID: DIR/<cid> or DIR/<cid>.<ext>), each checked against its CID")
    _add_progress(m, "progress on stderr while the CAR is read: a line (default on a "
                     "terminal), JSON lines, or nothing")


def _add_verify(sub: Any) -> None:
    v = sub.add_parser("verify", help="re-hash an export against its manifest",
                       epilog=VERIFY_EXAMPLES,
                       description="Check an export directory against its manifest.json; "
                                   "exit 1 with one line per problem.")
    v.add_argument("directory", metavar="EXPORT_DIR",
                   help="an export directory (OUTPUT/YYYY-MM-DD_HH-MM-SS)")


def _add_synth(sub: Any) -> None:
    s = sub.add_parser("synth", help="write a synthetic archive in bskyarchive's schema",
                       epilog=SYNTH_EXAMPLES,
                       description="Write a realistic synthetic archive (for trying and "
                                   "benchmarking); never replaces an existing file.")
    s.add_argument("archive", metavar="ARCHIVE", help="the new archive's path (must not exist)")
    s.add_argument("--posts", type=_positive_int, metavar="N",
                   help="number of posts")
    s.add_argument("--car", type=_positive_int, metavar="N",
                   help="instead: a repository CAR with N posts, 2N likes and N/5 follows "
                        "(shuffled blocks, some duplicate and unreachable)")
    s.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed: the same arguments always give the same file "
                        "(default 0)")
    s.add_argument("--media", action="store_true",
                   help="also a media table and small image files in a new media/ "
                        "directory beside the archive")
    s.add_argument("--schema", type=int, choices=(1, 2), default=2,
                   help="schema version (default 2; 1 lacks quote_count)")
    s.add_argument("--dids", type=_positive_int, default=1, metavar="K",
                   help="number of accounts owning the posts (default 1)")


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="build a synthetic archive, export it, show numbers",
                       epilog=DEMO_EXAMPLES,
                       description="Build a synthetic archive with media, export it as "
                                   "JSON (with media) and CSV, and print posts/s, sizes and "
                                   "peak memory.")
    d.add_argument("--posts", type=_positive_int, default=50_000, metavar="N",
                   help="posts in the synthetic archive (default 50000)")
    d.add_argument("--output", metavar="DIR", help="a new (or empty) directory to put the "
                   "demo in, kept (default: a temporary directory, removed at the end)")
    d.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (its path is the last line)")
    _add_progress(d)


def _add_info(sub: Any) -> None:
    i = sub.add_parser("info", help="what an archive holds: posts, DIDs, dates, media",
                       epilog=INFO_EXAMPLES,
                       description="Describe an archive without exporting it: schema "
                                   "version, posts, each DID's posts and date range, media "
                                   "rows, file size, journal mode.")
    i.add_argument("archive", nargs="?", default=DEFAULT_ARCHIVE, metavar="ARCHIVE",
                   help="the archive (default: ./data/archive.db), a repository CAR, or a "
                        "backup directory of `skyexport fetch`")
    i.add_argument("--json", action="store_true", help="one JSON object, for machines")


def _add_fetch(sub: Any) -> None:
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
    _add_progress(f)
    talk = f.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true",
                      help="print only the backup directory; no progress")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="also print the PDS, the rev and each blob problem")


def _add_completion(sub: Any) -> None:
    c = sub.add_parser("completion", help="print a shell completion script",
                       epilog=COMPLETION_EXAMPLES,
                       description="Print a completion script for bash or zsh on stdout.")
    c.add_argument("shell", choices=("bash", "zsh"), help="the shell")


def subparser(parser: argparse.ArgumentParser, name: str) -> _Parser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[name]
            assert isinstance(sub, _Parser)
            return sub
    raise LookupError(name)


def _version() -> str:
    from .. import __version__
    return __version__
