"""The `skyexport` command: export, import, info, verify, synth, demo.

Results go to stdout (the last line of `export` is the export directory), progress and
errors to stderr.  Exit status: 0 done, 1 failed (one line, no traceback), 2 usage,
130 interrupted (SIGINT), 143 terminated (SIGTERM).  Imports are lazy so that start-up
stays close to the interpreter's own.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

# typing is not imported at run time: start-up is part of every export (SC-006).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INT, EXIT_TERM = 0, 1, 2, 130, 143


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal width up front: asking for it itself, it
    imports shutil on every add_argument, a tenth of a small export's whole time."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
        except (ValueError, OSError):
            width = 80
        super().__init__(prog, width=max(width - 2, 40))


class _Parser(argparse.ArgumentParser):
    """Usage errors in two lines, the usage joined into one (argparse wraps it over many),
    then the error: `stderr` stays greppable, as for every other failure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split())
        self.exit(EXIT_USAGE, f"{usage}\n{self.prog}: error: {message}\n")


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="skyexport",
        description="Export bskyarchive post archives to JSON, CSV or JSON Lines, "
                    "byte-exact and in flat memory.")
    p.add_argument("--version", action="version", version=f"skyexport {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    e = sub.add_parser("export", help="export an archive's posts",
                       description="Export posts into a new OUTPUT/YYYY-MM-DD_HH-MM-SS/ "
                                   "directory; the last line printed is its path.")
    e.add_argument("archive", nargs="?", default="data/archive.db", metavar="ARCHIVE",
                   help="the archive (default: ./data/archive.db)")
    e.add_argument("--format", "-f", choices=("json", "csv", "jsonl"), default="json",
                   help="posts.json (default), posts.csv or posts.jsonl")
    e.add_argument("--output", "-o", default="exports", metavar="DIR",
                   help="where export directories are created (default: ./exports)")
    e.add_argument("--did", help="only posts of this DID")
    e.add_argument("--since", metavar="DATE", help="only posts created at or after DATE "
                   "(YYYY-MM-DD or RFC 3339, e.g. 2024-01-31T10:00:00Z)")
    e.add_argument("--until", metavar="DATE", help="only posts created at or before DATE "
                   "(a bare date includes the whole day, UTC)")
    e.add_argument("--media", action="store_true", help="copy the posts' media files")
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
    e.add_argument("--batch-size", type=_positive_int, default=1000, metavar="N",
                   help="posts per batch (default 1000)")
    e.add_argument("--on-bad-value", choices=("error", "keep"), default="error",
                   help="unreadable timestamp or invalid stored JSON: stop (default) or "
                        "export it as text and list it in the manifest")
    e.add_argument("--csv-formula-guard", action="store_true",
                   help="prefix ' to CSV text fields starting with = + - @ tab or CR, so "
                        "spreadsheets show them instead of running them (changes bytes)")
    e.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
                   help="progress on stderr: a bar (default on a terminal), JSON lines, "
                        "or nothing")
    e.add_argument("--quiet", "-q", action="store_true", help="same as --progress none")

    i = sub.add_parser("import", help="import a Bluesky repository export (repo.car) into "
                       "an archive", description="Read the posts of a repository CAR "
                       "(Settings -> Export my data) into a bskyarchive-schema archive.")
    i.add_argument("car", metavar="REPO.car")
    i.add_argument("--archive", default="data/archive.db", metavar="ARCHIVE",
                   help="the archive to create (default: ./data/archive.db); it must not "
                        "exist unless --merge")
    i.add_argument("--merge", action="store_true",
                   help="add the posts not yet in an existing archive (one transaction); "
                        "rows already there are left as they are")

    n = sub.add_parser("info", help="describe a repository CAR: DID, commit, records, posts",
                       description="Print what a repository CAR holds: its DID, commit "
                                   "version and rev, records per collection, posts and "
                                   "their date range.")
    n.add_argument("source", metavar="REPO.car")
    n.add_argument("--json", action="store_true", help="one JSON object, for machines")

    v = sub.add_parser("verify", help="re-hash an export against its manifest")
    v.add_argument("directory", metavar="EXPORT_DIR")

    s = sub.add_parser("synth", help="write a synthetic archive in bskyarchive's schema")
    s.add_argument("archive", metavar="ARCHIVE")
    s.add_argument("--posts", type=_positive_int, metavar="N")
    s.add_argument("--car", type=_positive_int, metavar="N",
                   help="instead: a repository CAR with N posts, 2N likes and N/5 follows "
                        "(shuffled blocks, some duplicate and unreachable)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--media", action="store_true", help="also a media table and files")
    s.add_argument("--schema", type=int, choices=(1, 2), default=2,
                   help="schema version (1 lacks quote_count)")
    s.add_argument("--dids", type=_positive_int, default=1, help="number of DIDs")

    d = sub.add_parser("demo", help="build a synthetic archive, export it, show numbers")
    d.add_argument("--posts", type=_positive_int, default=50_000, metavar="N")
    d.add_argument("--output", metavar="DIR", help="a new (or empty) directory to put the "
                   "demo in, kept (default: a temporary directory, removed at the end)")
    d.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (its path is the last line)")
    d.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")
    return p


def _version() -> str:
    from . import __version__
    return __version__


def _reporter(mode: str) -> Any:
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "bar":
        from .progress import BarReporter
        return BarReporter()
    if mode == "jsonl":
        from .progress import JsonLinesReporter
        return JsonLinesReporter(sys.stderr)
    return None


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    sys.stderr.write(f"skyexport: error: {message}\n")
    return code


def cmd_export(args: argparse.Namespace) -> int:
    from . import export
    from .errors import OptionError

    if args.output == "-":
        # Not yet a way to write to stdout (issue 10): refuse rather than create `./-`.
        sys.stderr.write("usage: skyexport export [ARCHIVE] [options]  (see --help)\n")
        return _fail("--output - (stdout) is not supported yet; give a directory, e.g. "
                     "--output ./exports", EXIT_USAGE)
    progress = "none" if args.quiet else args.progress
    try:
        result = export(args.archive, args.output, format=args.format, did=args.did,
                        since=args.since, until=args.until, media=args.media,
                        media_root=args.media_root, media_any_path=args.media_any_path,
                        media_link=args.media_link, batch_size=args.batch_size,
                        on_bad_value=args.on_bad_value, on_progress=_reporter(progress),
                        csv_formula_guard=args.csv_formula_guard)
        args.published = result.directory
    except OptionError as exc:
        sys.stderr.write("usage: skyexport export [ARCHIVE] [options]  (see --help)\n")
        return _fail(str(exc), EXIT_USAGE)
    out = sys.stdout
    out.write(f"posts: {result.post_count}\n")
    if args.media:
        out.write(f"media files: {result.media_count}\n")
    out.write(f"{result.data_file.name}: {result.bytes_written} bytes, sha256 "
              f"{result.sha256}\n")
    if result.warnings_total:
        out.write(f"warnings: {result.warnings_total} (listed in manifest.json)\n")
    out.write(f"{result.directory}\n")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from .car import import_car
    from .errors import OptionError

    try:
        r = import_car(args.car, args.archive, merge=args.merge)
    except OptionError as exc:
        return _fail(str(exc), EXIT_USAGE)
    out = sys.stdout
    out.write(f"posts: {r.posts} in the CAR ({r.did}, rev {r.rev or '-'})\n")
    if args.merge:
        out.write(f"added: {r.added} (already there: {r.posts - r.added})\n")
    out.write(f"{r.archive}\n")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .car import car_info, is_car

    if is_car(args.source):
        info = car_info(args.source)
    else:
        # `info ARCHIVE.db` (CAR.md) would be a branch of its own here.
        return _fail(f"{args.source}: not a repository CAR (a CARv1 file with one root); "
                     "info reads repository exports (repo.car)")
    if args.json:
        import json

        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return EXIT_OK
    _print_car_info(info)
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


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import verify

    report = verify(args.directory)
    for problem in report.problems:
        sys.stderr.write(f"skyexport: verify: {problem}\n")
    if not report.ok:
        return _fail(f"{args.directory}: {len(report.problems)} problem(s) found")
    sys.stdout.write(f"ok: {report.checked} files match the manifest\n")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    if (args.posts is None) == (args.car is None):
        sys.stderr.write("usage: skyexport synth ARCHIVE (--posts N | --car N)\n")
        return _fail("give exactly one of --posts N (an archive) and --car N (a CAR)",
                     EXIT_USAGE)
    if args.car is not None:
        return _synth_car(args)
    from .synth import build_archive

    try:
        stats = build_archive(args.archive, args.posts, seed=args.seed, media=args.media,
                              schema_version=args.schema, dids=args.dids)
    except FileExistsError:
        return _fail(f"{args.archive} already exists; synth never overwrites an archive")
    sys.stdout.write(f"{stats.posts} posts, {stats.media_files} media files in "
                     f"{stats.seconds:.1f} s\n{args.archive}\n")
    return EXIT_OK


def _synth_car(args: argparse.Namespace) -> int:
    from .carwrite import synth_car

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


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: /proc/self/clear_refs), so that the next
    reading is one step's own peak; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), else since start (getrusage)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _demo_root(output: str | None) -> tuple[str, bool]:
    """The demo's own directory, and whether it is a temporary one.  demo writes only into a
    directory it creates (or an empty one it is given): never next to someone's archive."""
    import tempfile

    from .errors import OptionError

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

    from .errors import OptionError

    try:
        root, temporary = _demo_root(args.output)
    except OptionError as exc:
        return _fail(str(exc), EXIT_USAGE)
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


def _demo(root: str, args: argparse.Namespace) -> str:
    from . import export
    from .synth import build_archive

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
        own_peak = _reset_peak_rss()
        t0 = time.perf_counter()
        result = export(archive, os.path.join(root, "exports"), format=fmt,
                        media=fmt == "json", media_root=data,
                        on_progress=_reporter(args.progress))
        secs = time.perf_counter() - t0
        m = result.manifest
        out.write(f"  {result.post_count} posts -> {result.data_file} "
                  f"({result.bytes_written / 1e6:.1f} MB)\n"
                  f"  {result.post_count / secs:,.0f} posts/s, "
                  f"{result.bytes_written / 1e6 / secs:.1f} MB/s, {secs:.2f} s\n"
                  f"  manifest: {m['post_count']} posts, {m['media_count']} media files, "
                  f"sha256 {result.sha256[:16]}...\n")
        if m["warnings_total"]:
            out.write(f"  {m['warnings_total']} warnings: the media files the synthetic "
                      "archive leaves out on purpose (about 1 %), as a real archive's failed "
                      "downloads\n")
        peak = "the export's own" if own_peak else "this process's (archive build included)"
        out.write(f"  peak memory (RSS), {peak}: {_peak_rss_mb():.0f} MB\n")
        last = str(result.directory)
    return last


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import ExportError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return {"export": cmd_export, "verify": cmd_verify, "synth": cmd_synth,
                "demo": cmd_demo, "import": cmd_import, "info": cmd_info}[args.command](args)
    except ExportError as exc:
        return _fail(str(exc))
    except (KeyboardInterrupt, _Terminated) as exc:
        word, code = (("interrupted", EXIT_INT) if isinstance(exc, KeyboardInterrupt)
                      else ("terminated", EXIT_TERM))
        published = getattr(exc, "published_directory", None) or getattr(
            args, "published", None)
        if published is None:
            sys.stderr.write(f"skyexport: {word}; nothing was exported\n")
        else:
            # The signal came after the final rename: the export is whole and visible.
            sys.stderr.write(f"skyexport: {word} after the export was complete; it is "
                             f"published, whole, at {published}\n")
            try:
                sys.stdout.write(f"{published}\n")
            except (OSError, ValueError):
                pass
        return code
    except MemoryError:
        return _fail("out of memory; lower --batch-size or free memory")
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
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
    a tenth of a small export's time (SC-006)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
