"""`skyexport synth`: a synthetic archive, or a synthetic repository CAR (`--car N`)."""

from __future__ import annotations

import argparse
import sys
import time

from .render import EXIT_OK, fail, usage


def run(args: argparse.Namespace) -> int:
    if (args.posts is None) == (args.car is None):
        return usage(args, "give exactly one of --posts N (an archive) and --car N (a CAR)")
    if args.car is not None:
        return _synth_car(args)
    from ..testing.synth import build_archive

    try:
        stats = build_archive(args.archive, args.posts, seed=args.seed, media=args.media,
                              schema_version=args.schema, dids=args.dids)
    except FileExistsError:
        return fail(f"{args.archive} already exists; synth never overwrites an archive")
    sys.stdout.write(f"{stats.posts} posts, {stats.media_files} media files in "
                     f"{stats.seconds:.1f} s\n{args.archive}\n")
    return EXIT_OK


def _synth_car(args: argparse.Namespace) -> int:
    from ..testing.carwrite import synth_car

    t0 = time.perf_counter()
    try:
        made = synth_car(args.archive, args.car, seed=args.seed)
    except FileExistsError:
        return fail(f"{args.archive} already exists; synth never overwrites a file")
    except OSError as exc:
        return fail(f"writing {args.archive} failed: {exc.strerror or exc}")
    sys.stdout.write(f"{args.car} posts, {made['records']} records, {made['blocks']} blocks "
                     f"in {time.perf_counter() - t0:.1f} s\n{args.archive}\n")
    return EXIT_OK


