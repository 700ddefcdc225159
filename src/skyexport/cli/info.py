"""`skyexport info`: what an archive, a repository CAR or a backup directory holds."""

from __future__ import annotations

import argparse
import sys

from .render import EXIT_OK

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..sources.backup import backup_parts, is_backup
    from ..sources.car.info import car_info
    from ..sources.car.repo import is_car
    from .export import archive_env

    env = archive_env()
    # a backup directory: its repo.car (its blobs/ is not looked at)
    car = str(backup_parts(args.archive).car) if is_backup(args.archive) else args.archive
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


