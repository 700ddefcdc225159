"""`skyexport info` on archives with many DIDs: time and memory must grow linearly.

    python perf/info_scaling.py                  # 10k and 40k DIDs, 3 rounds (~1 min + builds)
    python perf/info_scaling.py --dids 20k,80k --runs 5

Builds (once, cached in perf/.cache/info-d<DIDs>/) a synthetic archive per size with ten
posts a DID: the first DID keeps three quarters of the posts, as in a real archive, and the
others share the rest.  Then runs `skyexport info` and `skyexport info --json` on each, as
child processes, alternating sizes round by round after one untimed warm-up, and compares
the medians side by side: four times the DIDs (and posts) must take at most 8x the wall time
(linear is about 4x; the statement-per-DID info of before was about 16x) and at most 8 MB
more peak RSS.  Exit 1 with one line per failed check.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
from pathlib import Path

import _harness as h

MAX_RATIO = 8.0
MAX_GROWTH_MB = 8.0
POSTS_PER_DID = 10


def build(dids: int) -> Path:
    folder = h.CACHE / f"info-d{dids}"
    path = folder / "archive.db"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "building.db"
    tmp.unlink(missing_ok=True)
    from skyexport.testing.synth import build_archive

    build_archive(tmp, dids * POSTS_PER_DID, seed=h.SEED)
    con = sqlite3.connect(tmp)
    with con:
        con.execute("UPDATE posts SET did = 'did:plc:other' || (rowid % ?) "
                    "WHERE rowid % 4 = 0", (dids - 1,))
    con.close()
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dids", default="10k,40k", help="two sizes, the second 4x the first")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [h.parse_size(s) for s in args.dids.split(",")]
    if len(sizes) != 2:
        raise SystemExit("--dids takes two sizes")
    env = h.environment()
    for line in h.header_lines(env):
        print(line)
    paths = {n: build(n) for n in sizes}
    work = h.CACHE / "work" / "info"
    work.mkdir(parents=True, exist_ok=True)
    failures = []
    print("\n| mode | DIDs | wall s (median) | peak RSS MB (median) |\n|---|---|---|---|")
    for mode in ([], ["--json"]):
        walls: dict[int, list[float]] = {n: [] for n in sizes}
        rss: dict[int, list[float]] = {n: [] for n in sizes}
        for i in range(args.runs + 1):             # the first round is an untimed warm-up
            for n in sizes:
                cmd = [*h.skyexport_argv(), "info", str(paths[n]), *mode]
                s = h.run(cmd, work / "stdout", work / "stderr", timeout=600)
                if not s.ok:
                    raise SystemExit(f"{' '.join(cmd)}: {s.error}")
                if i:
                    walls[n].append(s.wall_s)
                    rss[n].append(s.rss_kb / 1024)
        name = "json" if mode else "text"
        for n in sizes:
            print(f"| {name} | {n:,} | {statistics.median(walls[n]):.3f} | "
                  f"{statistics.median(rss[n]):.1f} |")
        small, large = sizes
        ratio = statistics.median(walls[large]) / statistics.median(walls[small])
        growth = statistics.median(rss[large]) - statistics.median(rss[small])
        verdict = "PASS" if ratio <= MAX_RATIO and growth <= MAX_GROWTH_MB else "FAIL"
        print(f"| {name}: {large:,} / {small:,} DIDs | wall {ratio:.2f}x (<= {MAX_RATIO}x) | "
              f"RSS {growth:+.1f} MB (<= {MAX_GROWTH_MB}) | {verdict} |")
        if ratio > MAX_RATIO:
            failures.append(f"info {name}: {large} DIDs take {ratio:.1f}x the time of {small}")
        if growth > MAX_GROWTH_MB:
            failures.append(f"info {name}: peak RSS grows {growth:.1f} MB from {small} to "
                            f"{large} DIDs")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
