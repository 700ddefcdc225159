"""`skyexport verify`: an export directory checked against its manifest, a line per
problem."""

from __future__ import annotations

import argparse
import sys

from .render import EXIT_OK, fail


def run(args: argparse.Namespace) -> int:
    from ..manifest.verify import verify

    def show(problem: str) -> None:   # as found: a long list's problems are not all kept
        sys.stderr.write(f"skyexport: verify: {problem}\n")

    report = verify(args.directory, on_problem=show)
    if not report.ok:
        return fail(f"{args.directory}: {report.problems_total} problem(s) found")
    sys.stdout.write(f"ok: {report.checked} files match the manifest\n")
    return EXIT_OK


