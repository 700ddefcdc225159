"""What every command shares besides its own result: the exit statuses, the one-line
failure, the usage error found after parsing, SIGTERM as an exception (so that clean-up
runs as for Ctrl-C), and the progress reporter `--progress` picks (export's and fetch's)."""

from __future__ import annotations

import sys

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INT, EXIT_TERM, EXIT_PIPE = 0, 1, 2, 130, 143, 141


def usage_text(parser: argparse.ArgumentParser, message: str) -> str:
    """A usage error as every one is printed, the parser's and skyexport's own checks'
    alike: the command's usage on one line, then `skyexport COMMAND: error: message`."""
    usage = " ".join(parser.format_usage().split())
    return f"{usage}\n{parser.prog}: error: {message}\n"


def usage(args: argparse.Namespace, message: str) -> int:
    """A usage error found by skyexport's own checks (after parsing): exit 2, printed as
    the parser prints its own."""
    sys.stderr.write(usage_text(args.subparser, message))
    return EXIT_USAGE


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


def reporter(mode: str, bar: Callable[[], Any] | None = None) -> Any:
    """The progress callback `--progress MODE` asks for: `bar` (on a terminal, for
    `auto`) draws `bar()` (default: export's bar), `jsonl` writes each event as a JSON
    line on stderr, `none` is None."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "bar":
        if bar is not None:
            return bar()
        from ..exporter.progress import BarReporter
        return BarReporter()
    if mode == "jsonl":
        from ..exporter.progress import JsonLinesReporter
        return JsonLinesReporter(sys.stderr)
    return None


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """The one line of a failure on stderr; returns the exit status."""
    sys.stderr.write(f"skyexport: error: {message}\n")
    return code


