"""The cost of --compress: posts/s, MB/s and ratio for each codec and level.

    python perf/compress.py                        # 200k posts, json, 3 runs (~3 min)
    python perf/compress.py --size 100k --formats json,csv --runs 5 --json out.json

Every run is a child process, `skyexport export ARCHIVE -o DIR -f F [--compress C
--compress-level L] --progress none`, on the cached `skyexport synth` archive (see
_harness.py; no media: compression only touches the data file).  Wall time and peak RSS
are the child's own; the table shows medians.  `ratio` is uncompressed / compressed bytes,
from the export's manifest.  Always exits 0: it reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import _harness as h

CASES: list[tuple[str | None, int | None]] = [
    (None, None), ("gzip", 1), ("gzip", 6), ("gzip", 9),
    ("zstd", 1), ("zstd", 3), ("zstd", 9), ("zstd", 19),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="200k", help="posts in the archive (default 200k)")
    ap.add_argument("--formats", default="json", help="comma-separated (default json)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE", help="also write every sample here")
    args = ap.parse_args(argv)
    posts = h.parse_size(args.size)
    info = h.archive(posts, media=False, log=lambda m: print(m, file=sys.stderr))
    work = h.CACHE / "work" / "compress"
    work.mkdir(parents=True, exist_ok=True)
    env = h.environment()
    for line in h.header_lines(env):
        print(line)
    rows: list[dict[str, Any]] = []
    for fmt in args.formats.split(","):
        for codec, level in CASES:
            extra = ["--compress", codec, "--compress-level", str(level)] if codec else []
            walls, rss, sizes = [], [], (0, 0)
            for i in range(args.runs + 1):        # the first is an untimed warm-up
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                argv = [*h.skyexport_argv(), "export", str(info.path), "-o", str(out),
                        "-f", fmt, "--progress", "none", "-q", *extra]
                s = h.run(argv, work / "stdout", work / "stderr")
                if not s.ok:
                    raise SystemExit(f"{' '.join(argv)}: {s.error}")
                d = Path((work / "stdout").read_text().strip())
                m = json.loads((d / "manifest.json").read_text())
                (entry,) = [v for k, v in m["checksums"].items() if k.startswith("posts.")]
                sizes = (entry["bytes"], entry.get("uncompressed_bytes", entry["bytes"]))
                shutil.rmtree(out, ignore_errors=True)
                if i:
                    walls.append(s.wall_s)
                    rss.append(s.rss_kb)
            wall = statistics.median(walls)
            rows.append({"format": fmt, "codec": codec or "none", "level": level,
                         "posts": posts, "wall_s": wall, "walls": walls,
                         "posts_per_s": posts / wall, "mb_per_s": sizes[1] / 1e6 / wall,
                         "bytes": sizes[0], "uncompressed_bytes": sizes[1],
                         "ratio": sizes[1] / sizes[0], "rss_mb": statistics.median(rss) / 1024})
            r = rows[-1]
            print(f"  {fmt} {r['codec']} {level or '-'}: {wall:.2f} s", file=sys.stderr)
    print()
    print("| format | codec | level | wall s | posts/s | MB/s (uncompressed) | file MB | ratio "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['codec']} | {r['level'] or '-'} | {r['wall_s']:.2f} | "
              f"{r['posts_per_s']:,.0f} | {r['mb_per_s']:.0f} | {r['bytes'] / 1e6:.1f} | "
              f"{r['ratio']:.2f} | {r['rss_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
