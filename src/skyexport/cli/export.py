"""`skyexport export`: an archive, a repository CAR or a backup directory exported to a new
export directory (or to stdout, `--output -`), and the summary it prints."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .render import EXIT_OK, fail, reporter, usage

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run(args: argparse.Namespace) -> int:
    from .. import export
    from ..errors import ExportError, OptionError
    from ..exporter.options import tuning

    # `-` is stdout, never a directory named `-` (`./-` writes one, if that is wanted).
    to_stdout = args.output == "-"
    # An explicit --progress holds with -q too; -q's default is none.
    progress = args.progress or ("none" if args.quiet else "auto")
    t0 = time.monotonic()
    env = archive_env()
    try:
        with tuning(option=_cli_option, row_source=env.get("_row_source"),
                    busy_timeout_ms=env.get("_busy_timeout_ms")):
            result = export(args.archive, sys.stdout.fileno() if to_stdout else args.output,
                            format=args.format, did=args.did,
                            since=args.since, until=args.until, media=args.media,
                            media_root=args.media_root, media_any_path=args.media_any_path,
                            media_link=args.media_link, batch_size=args.batch_size,
                            on_bad_value=args.on_bad_value, on_progress=reporter(progress),
                            csv_formula_guard=args.csv_formula_guard, bom=args.bom,
                            compress=args.compress,
                            compress_level=args.compress_level, layout=args.layout,
                            collections=args.collections, blobs=args.blobs)
        args.published = result.directory
        args.streamed = result if to_stdout else None
    except OptionError as exc:
        return usage(args, str(exc))
    except ExportError as exc:
        written = getattr(exc, "stream_bytes", 0)
        if to_stdout and written:
            # What went out cannot be taken back: say so on the same line.
            return fail(f"{exc}; {written} bytes had already gone to stdout: an incomplete "
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


def archive_env() -> dict[str, Any]:
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


