"""The `skyexport` command: export, import, info, verify, synth, demo, fetch, completion.

Results go to stdout (the last line of `export` is the export directory), progress and
errors to stderr.  Exit status: 0 done, 1 failed (one line, no traceback), 2 usage,
130 interrupted (SIGINT), 143 terminated (SIGTERM), 141 stdout closed early (`| head`).
Imports are lazy so that start-up stays close to the interpreter's own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from ..defaults import DEFAULT_ARCHIVE, DEFAULT_BATCH, DEFAULT_OUTPUT, FORMATS

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, TextIO
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INT, EXIT_TERM, EXIT_PIPE = 0, 1, 2, 130, 143, 141


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
        self.exit(EXIT_USAGE, _usage_text(self, message))

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


def _usage_text(parser: argparse.ArgumentParser, message: str) -> str:
    """A usage error as every one is printed, the parser's and skyexport's own checks'
    alike: the command's usage on one line, then `skyexport COMMAND: error: message`."""
    usage = " ".join(parser.format_usage().split())
    return f"{usage}\n{parser.prog}: error: {message}\n"


def _usage(args: argparse.Namespace, message: str) -> int:
    """A usage error found by skyexport's own checks (after parsing): exit 2, printed as
    the parser prints its own."""
    sys.stderr.write(_usage_text(args.subparser, message))
    return EXIT_USAGE


class _Once(argparse.Action):
    """An option that may be given once: a second value is a usage error, never a silent
    "last one wins"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and "
                         f"{values}); give it once")
        setattr(namespace, self.dest, values)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


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
    e.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"),
                   help="progress on stderr: a bar (default on a terminal), JSON lines, "
                        "or nothing; given, it holds with --quiet too")
    talk = e.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true",
                      help="print only the export directory; no progress unless "
                           "--progress is given")
    talk.add_argument("--verbose", "-v", action="store_true",
                      help="also print the archive, the filters, the time taken and the "
                           "first warnings")

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
    m.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                   help="progress on stderr while the CAR is read: a line (default on a "
                        "terminal), JSON lines, or nothing")

    v = sub.add_parser("verify", help="re-hash an export against its manifest",
                       epilog=VERIFY_EXAMPLES,
                       description="Check an export directory against its manifest.json; "
                                   "exit 1 with one line per problem.")
    v.add_argument("directory", metavar="EXPORT_DIR",
                   help="an export directory (OUTPUT/YYYY-MM-DD_HH-MM-SS)")

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
    d.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                   help="progress on stderr: a bar (default on a terminal), JSON lines, "
                        "or nothing")

    i = sub.add_parser("info", help="what an archive holds: posts, DIDs, dates, media",
                       epilog=INFO_EXAMPLES,
                       description="Describe an archive without exporting it: schema "
                                   "version, posts, each DID's posts and date range, media "
                                   "rows, file size, journal mode.")
    i.add_argument("archive", nargs="?", default=DEFAULT_ARCHIVE, metavar="ARCHIVE",
                   help="the archive (default: ./data/archive.db), a repository CAR, or a "
                        "backup directory of `skyexport fetch`")
    i.add_argument("--json", action="store_true", help="one JSON object, for machines")

    from ..remote.command import add_parser as add_fetch  # `skyexport fetch`: its own module

    add_fetch(sub)
    c = sub.add_parser("completion", help="print a shell completion script",
                       epilog=COMPLETION_EXAMPLES,
                       description="Print a completion script for bash or zsh on stdout.")
    c.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    return p


def _subparser(parser: argparse.ArgumentParser, name: str) -> _Parser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[name]
            assert isinstance(sub, _Parser)
            return sub
    raise LookupError(name)


def _version() -> str:
    from .. import __version__
    return __version__


def _reporter(mode: str) -> Any:
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "bar":
        from ..exporter.progress import BarReporter
        return BarReporter()
    if mode == "jsonl":
        from ..exporter.progress import JsonLinesReporter
        return JsonLinesReporter(sys.stderr)
    return None


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"skyexport: error: {message}\n")
    return code


def _fill_closed_descriptors() -> None:
    """Standard descriptors closed at start (`skyexport info >&-`) are opened on the null
    device, as daemons do: else the next file opened (the data file, the archive) would
    take the number, and a stray write to "stdout" or "stderr" would land in it.  Python
    has already set sys.stdout/sys.stderr to None for them; main() reads that."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _closed_streams() -> tuple[bool, bool]:
    """Whether stdout and stderr were closed, each replaced by a writer to the null device
    (a closed stderr loses the messages, never the result; a closed stdout is checked by
    the commands whose result it carries)."""
    closed = []
    for name in ("stdout", "stderr"):
        gone = getattr(sys, name) is None
        if gone:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
        closed.append(gone)
    return closed[0], closed[1]


# The commands whose result is what they print on stdout; with stdout closed they fail at
# once (exit 1), before doing any work.  The others deliver a file (export to a directory,
# import, synth) or an exit status (verify): they run, and their lines are lost.
_PRINTS_ITS_RESULT = {"info": "its answer", "completion": "the script",
                      "demo": "the numbers it measures"}


def cmd_export(args: argparse.Namespace) -> int:
    from .. import export
    from ..errors import ExportError, OptionError
    from ..exporter.options import tuning

    # `-` is stdout, never a directory named `-` (`./-` writes one, if that is wanted).
    to_stdout = args.output == "-"
    # An explicit --progress holds with -q too; -q's default is none.
    progress = args.progress or ("none" if args.quiet else "auto")
    t0 = time.monotonic()
    env = _archive_env()
    try:
        with tuning(option=_cli_option, row_source=env.get("_row_source"),
                    busy_timeout_ms=env.get("_busy_timeout_ms")):
            result = export(args.archive, sys.stdout.fileno() if to_stdout else args.output,
                            format=args.format, did=args.did,
                            since=args.since, until=args.until, media=args.media,
                            media_root=args.media_root, media_any_path=args.media_any_path,
                            media_link=args.media_link, batch_size=args.batch_size,
                            on_bad_value=args.on_bad_value, on_progress=_reporter(progress),
                            csv_formula_guard=args.csv_formula_guard, bom=args.bom,
                            compress=args.compress,
                            compress_level=args.compress_level, layout=args.layout,
                            collections=args.collections, blobs=args.blobs)
        args.published = result.directory
        args.streamed = result if to_stdout else None
    except OptionError as exc:
        return _usage(args, str(exc))
    except ExportError as exc:
        written = getattr(exc, "stream_bytes", 0)
        if to_stdout and written:
            # What went out cannot be taken back: say so on the same line.
            return _fail(f"{exc}; {written} bytes had already gone to stdout: an incomplete "
                         "export, discard them")
        raise
    if result.post_count == 0 and (args.since or args.until):
        sys.stderr.write("skyexport: note: no post was created in the range given by "
                         "--since/--until; the export is empty\n")
    if to_stdout:
        return _stream_summary(args, result, time.monotonic() - t0)
    assert result.directory is not None and result.data_file is not None
    out = sys.stdout
    if args.quiet:
        out.write(f"{result.directory}\n")
        return EXIT_OK
    if args.verbose:
        secs = time.monotonic() - t0
        m = result.manifest
        assert m is not None
        out.write(f"archive: {args.archive}\n")
        filters = [f"{k} {v}" for k, v in (("--did", args.did), ("--since", args.since),
                                            ("--until", args.until)) if v is not None]
        out.write(f"filters: {', '.join(filters) or 'none'}\n")
        if "date_range" in m:
            r = m["date_range"]
            out.write(f"date range (UTC): {r['start_date']} .. {r['end_date']}\n")
        out.write(f"time: {secs:.2f} s ({result.post_count / max(secs, 1e-9):,.0f} posts/s)\n")
    out.write(f"posts: {result.post_count}\n")
    if args.media:
        out.write(f"media files: {result.media_count}\n")
    out.write(f"{result.data_file.name}: {result.bytes_written} bytes, sha256 "
              f"{result.sha256}\n")
    if result.compression:
        out.write(f"uncompressed: {result.uncompressed_bytes} bytes, sha256 "
                  f"{result.uncompressed_sha256}\n")
    if result.warnings_total:
        out.write(f"warnings: {result.warnings_total} (listed in manifest.json)\n")
        if args.verbose:
            for w in result.warnings[:20]:
                out.write(f"  {w.uri or '-'}: {w.message}\n")
            if result.warnings_total > 20:
                out.write(f"  ... and {result.warnings_total - 20} more\n")
    out.write(f"{result.directory}\n")
    return EXIT_OK


def _archive_env() -> dict[str, Any]:
    """The environment's say in how an archive is read - read here, the library reads no
    environment: SKYEXPORT_ROW_SOURCE (pipe, direct, cursor; for testing and diagnosis)
    and SKYEXPORT_BUSY_TIMEOUT_MS (how long a writer's lock is waited for)."""
    out: dict[str, Any] = {}
    source = os.environ.get("SKYEXPORT_ROW_SOURCE", "")
    if source in ("pipe", "direct", "cursor"):
        out["_row_source"] = source
    timeout = os.environ.get("SKYEXPORT_BUSY_TIMEOUT_MS", "").strip()
    if timeout.isdigit():
        out["_busy_timeout_ms"] = int(timeout)
    return out


def _stream_summary(args: argparse.Namespace, result: Any, secs: float) -> int:
    """`--output -`: stdout holds the data alone; the summary goes to stderr, its last line
    the posts, bytes and SHA-256 of what was written.  `-q`: nothing."""
    if args.quiet:
        return EXIT_OK
    err = sys.stderr
    if args.verbose:
        err.write(f"skyexport: archive {args.archive}, {secs:.2f} s "
                  f"({result.post_count / max(secs, 1e-9):,.0f} posts/s)\n")
    if result.warnings_total:
        err.write(f"skyexport: {result.warnings_total} warnings (no manifest on stdout; "
                  "export to a directory to have them listed)\n")
        for w in result.warnings[:20 if args.verbose else 5]:
            err.write(f"  {w.uri or '-'}: {w.message}\n")
    codec = ""
    if result.compression:
        codec = (f" ({result.compression}; uncompressed {result.uncompressed_bytes} bytes, "
                 f"sha256 {result.uncompressed_sha256})")
    err.write(f"skyexport: wrote {result.post_count} posts to stdout: {result.bytes_written} "
              f"bytes, sha256 {result.sha256}{codec}\n")
    return EXIT_OK


def _cli_option(name: str) -> str:
    """An export() option as the command line spells it: media_root -> --media-root."""
    if name == "bom":
        return "--no-bom"
    return "--" + name.replace("_", "-")


def cmd_info(args: argparse.Namespace) -> int:
    from ..sources.car.info import car_info
    from ..sources.car.repo import is_car

    env = _archive_env()
    car = _backup_car(args.archive, "")[0]   # its repo.car: blobs/ is not looked at
    if is_car(car):
        cinfo = car_info(car)
        if args.json:
            import json
            sys.stdout.write(json.dumps(cinfo, indent=2) + "\n")
        else:
            _print_car_info(cinfo)
        return EXIT_OK
    from ..sources.archive_info import write_info

    write_info(args.archive, sys.stdout, as_json=args.json, row_source=env.get("_row_source"),
               busy_timeout_ms=env.get("_busy_timeout_ms"))
    return EXIT_OK


def _print_car_info(info: dict[str, Any]) -> None:
    w = sys.stdout.write
    w(f"source: {info['source']} (repository CAR, {info['bytes']} bytes, "
      f"{info['blocks']} blocks, sha256 {info['sha256']})\n")
    w(f"did: {info['did']}\n")
    w(f"commit: version {info['commit_version']}, rev {info['rev'] or '- (none in v2)'}\n")
    w(f"records: {info['records']}\n")
    width = max((len(c) for c in info["collections"]), default=0)
    for coll, count in info["collections"].items():
        w(f"  {coll:<{width}}  {count}\n")
    w(f"posts: {info['posts']}\n")
    for did, count in info["dids"].items():
        w(f"  {did}  {count}\n")
    w(f"first created_at: {info['first_created_at'] or '-'}\n")
    w(f"last created_at: {info['last_created_at'] or '-'}\n")
    w(f"media rows: {info['media_rows']} (a CAR holds no media files)\n")


def cmd_import(args: argparse.Namespace) -> int:
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
        return _usage(args, str(exc))
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


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..remote.command import run as fetch_command
    return fetch_command(args)


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from ..manifest.verify import verify

    def show(problem: str) -> None:   # as found: a long list's problems are not all kept
        sys.stderr.write(f"skyexport: verify: {problem}\n")

    report = verify(args.directory, on_problem=show)
    if not report.ok:
        return _fail(f"{args.directory}: {report.problems_total} problem(s) found")
    sys.stdout.write(f"ok: {report.checked} files match the manifest\n")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    if (args.posts is None) == (args.car is None):
        return _usage(args, "give exactly one of --posts N (an archive) and --car N (a CAR)")
    if args.car is not None:
        return _synth_car(args)
    from ..testing.synth import build_archive

    try:
        stats = build_archive(args.archive, args.posts, seed=args.seed, media=args.media,
                              schema_version=args.schema, dids=args.dids)
    except FileExistsError:
        return _fail(f"{args.archive} already exists; synth never overwrites an archive")
    sys.stdout.write(f"{stats.posts} posts, {stats.media_files} media files in "
                     f"{stats.seconds:.1f} s\n{args.archive}\n")
    return EXIT_OK


def _synth_car(args: argparse.Namespace) -> int:
    from ..testing.carwrite import synth_car

    t0 = time.perf_counter()
    try:
        made = synth_car(args.archive, args.car, seed=args.seed)
    except FileExistsError:
        return _fail(f"{args.archive} already exists; synth never overwrites a file")
    except OSError as exc:
        return _fail(f"writing {args.archive} failed: {exc.strerror or exc}")
    sys.stdout.write(f"{args.car} posts, {made['records']} records, {made['blocks']} blocks "
                     f"in {time.perf_counter() - t0:.1f} s\n{args.archive}\n")
    return EXIT_OK


# The demo's export, in a process of its own: the export as a user runs it, then its peak
# RSS on the last line.  Read in the child itself: a child's getrusage/wait4 maxrss also
# counts the parent's memory it was forked from (Linux carries it across exec).
_EXPORT_CHILD = """\
import sys
from skyexport.cli.commands import main, _own_peak_rss_mb
code = main(sys.argv[1:])
sys.stdout.write(f"peak {_own_peak_rss_mb()}\\n")
sys.exit(code)
"""


def _own_peak_rss_mb() -> float | None:
    """This process's peak RSS in MB: VmHWM (Linux: this program's own, since its exec),
    else getrusage where it exists (kilobytes; bytes on macOS); None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    from .._platform import peak_rss_bytes

    peak = peak_rss_bytes()
    return None if peak is None else peak / (1 << 20)


def _export_child(argv: list[str]) -> tuple[str, float | None]:
    """Run `skyexport export ARGV` as a process of its own (stderr shared: its progress
    bar draws here) and return the export directory it printed and its own peak RSS in
    MB (None where the system does not say): nothing this process did before (building
    the archive) counted in."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, "export", *argv],
                          stdout=subprocess.PIPE, text=True, check=False)
    *lines, last = done.stdout.splitlines() or [""]
    if done.returncode != 0 or not lines or not last.startswith("peak "):
        from ..errors import ExportError

        raise ExportError(f"demo: the export failed (exit {done.returncode}; its message "
                          "is above)")
    peak = last.split()[1]
    return lines[-1], None if peak == "None" else float(peak)


def _demo_root(output: str | None) -> tuple[str, bool]:
    """The demo's own directory, and whether it is a temporary one.  demo writes only into a
    directory it creates (or an empty one it is given): never next to someone's archive."""
    import tempfile

    from ..errors import OptionError

    if output is None:
        return tempfile.mkdtemp(prefix="skyexport-demo-"), True
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.mkdir(output)
    except FileExistsError:
        if not os.path.isdir(output) or os.path.islink(output) or os.listdir(output):
            raise OptionError(f"demo --output {output}: already exists and is not an empty "
                              "directory; demo writes only into a new (or empty) directory, "
                              "so name one that does not exist") from None
    except OSError as exc:
        raise OptionError(f"demo --output {output}: cannot create it: "
                          f"{exc.strerror or exc}") from None
    return output, False


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from ..errors import OptionError

    try:
        root, temporary = _demo_root(args.output)
    except OptionError as exc:
        return _usage(args, str(exc))
    keep = args.keep or not temporary
    try:
        last = _demo(root, args)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    out = sys.stdout
    if keep:
        out.write(f"{last}\n")
    else:
        out.write(f"removed the temporary directory {root} (--keep keeps it)\n")
    return EXIT_OK


def _read_manifest(directory: str) -> dict[str, Any]:
    import json

    with open(os.path.join(directory, "manifest.json"), "rb") as f:
        manifest: dict[str, Any] = json.load(f)
    return manifest


def _demo(root: str, args: argparse.Namespace) -> str:
    from ..testing.synth import build_archive

    data = os.path.join(root, "data")
    os.mkdir(data)
    archive = os.path.join(data, "archive.db")
    out = sys.stdout
    out.write(f"building a synthetic archive of {args.posts} posts with media in {root} ...\n")
    out.flush()
    stats = build_archive(archive, args.posts, seed=1, media=True)
    out.write(f"  {stats.posts} posts, {stats.media_files} media files, "
              f"{os.path.getsize(archive) / 1e6:.1f} MB in {stats.seconds:.1f} s\n")
    last = ""
    for fmt in ("json", "csv"):
        out.write(f"exporting as {fmt}{' with media' if fmt == 'json' else ''} ...\n")
        out.flush()
        # In a process of its own, as a user runs it: its peak memory is the export's own.
        argv = [archive, "-o", os.path.join(root, "exports"), "-f", fmt, "-q",
                "--progress", args.progress]
        if fmt == "json":
            argv += ["--media", "--media-root", data]
        directory, peak = _export_child(argv)
        m = _read_manifest(directory)
        (name,) = (n for n in m["checksums"] if n != "media.sha256")
        size, digest = m["checksums"][name]["bytes"], m["checksums"][name]["sha256"]
        secs = max(m["duration_s"], 1e-3)
        out.write(f"  {m['post_count']} posts -> {os.path.join(directory, name)} "
                  f"({size / 1e6:.1f} MB)\n"
                  f"  {m['post_count'] / secs:,.0f} posts/s, "
                  f"{size / 1e6 / secs:.1f} MB/s, {secs:.2f} s\n"
                  f"  manifest: {m['post_count']} posts, {m['media_count']} media files, "
                  f"sha256 {digest[:16]}...\n")
        if m["warnings_total"]:
            out.write(f"  {m['warnings_total']} warnings: the media files the synthetic "
                      "archive leaves out on purpose (about 1 %), as a real archive's failed "
                      "downloads\n")
        if peak is None:
            out.write("  peak memory (RSS): not measured on this system\n")
        else:
            out.write(f"  peak memory (RSS), the export's own process: {peak:.0f} MB\n")
        last = directory
    return last


class _StdoutFailed(Exception):
    """Writing a command's result to stdout failed (a full disk, an I/O error): the one
    line says so, whatever the command; a closed pipe stays BrokenPipeError."""


class _GuardedStdout:
    """sys.stdout while a command runs: a write or flush that fails, other than with
    BrokenPipeError, raises _StdoutFailed, so that main() can tell stdout's failure from
    an OSError of the command's own (the archive, the output directory)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(exc.strerror or str(exc)) from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    stream = sys.stdout
    if stream is None or isinstance(stream, _GuardedStdout):
        return _main(argv)
    sys.stdout = _GuardedStdout(stream)
    try:
        return _main(argv)
    finally:
        sys.stdout = stream


def _main(argv: Sequence[str] | None) -> int:
    stdout_closed, _ = _closed_streams()
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Reported by the subcommand, with its usage and the closest option it has.
        sub = _subparser(parser, args.command)
        sub.unknown(extras)
    args.subparser = _subparser(parser, args.command)
    from ..errors import ExportError

    if stdout_closed and (args.command in _PRINTS_ITS_RESULT or (
            args.command == "export" and args.output == "-")):
        what = _PRINTS_ITS_RESULT.get(args.command, "the data file (--output -)")
        return _fail(f"stdout is closed, and `skyexport {args.command}` writes "
                     f"{what} there; nothing was done (redirect it to a file instead)")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return {"export": cmd_export, "verify": cmd_verify, "synth": cmd_synth,
                "demo": cmd_demo, "info": cmd_info, "import": cmd_import,
                "completion": cmd_completion, "fetch": cmd_fetch}[args.command](args)
    except ExportError as exc:
        return _fail(str(exc))
    except (KeyboardInterrupt, _Terminated) as exc:
        word, code = (("interrupted", EXIT_INT) if isinstance(exc, KeyboardInterrupt)
                      else ("terminated", EXIT_TERM))
        published = getattr(exc, "published_directory", None) or getattr(
            args, "published", None)
        done = getattr(args, "streamed", None)  # export -o - returned: all of it went out
        streamed = done.bytes_written if done else getattr(exc, "stream_bytes", 0)
        sha256 = done.sha256 if done else getattr(exc, "stream_sha256", None)
        if sha256 is not None:
            sys.stderr.write(f"skyexport: {word} after the export was complete; all "
                             f"{streamed} bytes had gone to stdout, sha256 {sha256}\n")
        elif streamed:
            sys.stderr.write(f"skyexport: {word}; {streamed} bytes had already gone to "
                             "stdout: an incomplete export, discard them\n")
        elif published is None:
            # what was left undone, by command: info changes nothing at all
            undone = {"import": "; nothing was imported (the archive is as it was)",
                      "info": ""}.get(args.command, "; nothing was exported")
            sys.stderr.write(f"skyexport: {word}{undone}\n")
        else:
            # The signal came after the final rename: the export is whole and visible.
            sys.stderr.write(f"skyexport: {word} after the export was complete; it is "
                             f"published, whole, at {published}\n")
            try:
                sys.stdout.write(f"{published}\n")
            except (OSError, ValueError):
                pass
        return code
    except _StdoutFailed as exc:
        return _fail(f"writing to stdout failed: {exc}; what was printed is incomplete")
    except MemoryError:
        return _fail("out of memory; lower --batch-size or free memory")
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error of ours; quiet, as a program killed
        # by SIGPIPE, with its status (128 + 13).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:
        # A bug of ours, not bad input: still one line, unless asked for the traceback.
        if os.environ.get("SKYEXPORT_TRACEBACK"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (set SKYEXPORT_TRACEBACK=1 "
                     "for details and please report it)")
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The `skyexport` command: main(), then exit at once.  By then every file is closed
    and fsync'd and every thread joined; skipping the interpreter's orderly teardown saves
    a tenth of a small export's time."""
    _fill_closed_descriptors()
    code = main()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    except OSError as exc:  # /dev/full, an I/O error: what was printed did not arrive
        code = _fail(f"writing to stdout failed: {exc.strerror or exc}") if code == 0 \
            else code
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a message lost never changes the outcome
    os._exit(code)


if __name__ == "__main__":
    run()
