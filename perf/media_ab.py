"""A/B of `skyexport export --media` variants, side by side, against `cp -r --reflink=auto`.

    python perf/media_ab.py ARCHIVE_DIR --variant new=.venv/bin/python \\
        --variant old=/elsewhere/.venv/bin/python --variant one=.venv/bin/python:COPY_THREADS=1
        [--rounds 5] [--nosync] [--keep] [--work DIR] [--no-plain]

ARCHIVE_DIR holds archive.db and media/ (perf/bench.py's cache: perf/.cache/p200000-s1-d3-media).
A variant is LABEL=PYTHON[:NAME=VALUE,...]: that interpreter's skyexport, with constants of
skyexport.exporter.media set first (integers, or floats where the constant is one).  Each
round runs every variant's plain export, its --media export, and `cp -r` once, in an order
rotated each round, each into a fresh directory; nothing is deleted until every round is
done (on ext4 without a journal, a mass delete slows every create for minutes after:
perf/README.md).  Prints the medians of wall and CPU seconds (the child's user + system,
from wait4) and, per variant, the time --media adds to the plain export against cp -r's.
With --nosync every skyexport run (plain too) has its syncs made no-ops, as bench.py's
`nosync` row: cp -r syncs nothing.  The outputs are removed at the end (not with --keep).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import NO_SYNC_PRELUDE  # noqa: E402

RUN = ("import sys\nimport skyexport.exporter.media as m\n"
       "for kv in sys.argv[1].split(','):\n"
       "    if kv:\n"
       "        k, v = kv.split('=')\n"
       "        assert hasattr(m, k), k\n"
       "        setattr(m, k, float(v) if isinstance(getattr(m, k), float) else int(v))\n"
       "from skyexport.cli import main\nsys.exit(main(sys.argv[2:]))\n")


def timed(argv: list[str], stdout: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one child process; fails on a non-zero exit."""
    with open(stdout, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:3])}... exited {proc.returncode}: {err.strip()}")
    return wall, ru.ru_utime + ru.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archive_dir", type=Path)
    p.add_argument("--variant", action="append", required=True, help="LABEL=PYTHON[:K=V,...]")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path(__file__).parent / ".cache" / "ab")
    p.add_argument("--keep", action="store_true",
                   help="leave the outputs in --work (remove them yourself, long before "
                        "the next measurement: a mass delete slows creates for minutes)")
    p.add_argument("--nosync", action="store_true",
                   help="every skyexport run with staged.SYNCFS a no-op (no syncfs, as "
                        "perf/bench.py's `nosync` row): like with like against cp -r")
    p.add_argument("--no-plain", action="store_true",
                   help="skip the plain exports (the added time is then not shown)")
    args = p.parse_args()
    src = args.archive_dir.resolve()
    run = (NO_SYNC_PRELUDE + RUN) if args.nosync else RUN
    cases: dict[str, list[str] | None] = {"cp -r": None}
    plains: dict[str, str] = {}  # interpreter -> its plain export's case
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        python, _, settings = rest.partition(":")
        base = [python, "-c", run, settings, "export", str(src / "archive.db"), "-f", "json",
                "--progress", "none"]
        if not args.no_plain and python not in plains:  # the settings are media's only
            plains[python] = f"{label} plain"
            cases[f"{label} plain"] = [python, "-c", run, "", *base[4:]]
        cases[f"{label} media"] = [*base, "--media", "--media-root", str(src)]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    keys = list(cases)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    try:
        for r in range(args.rounds):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for k in order:
                out = work / f"r{r}-{len(samples[k])}-{k.replace(' ', '_')}"
                out.mkdir()
                argv = cases[k]
                if argv is None:
                    got = timed(["cp", "-r", "--reflink=auto", str(src / "media"),
                                 str(out / "media")], out / "stdout.txt")
                else:
                    got = timed([*argv, "-o", str(out)], out / "stdout.txt")
                samples[k].append(got)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {samples[k][-1][0]:.2f}s/{samples[k][-1][1]:.2f}c" for k in keys),
                file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in samples.items()}
    print(f"{'case':<24} {'wall s':>7} {'cpu s':>7}")
    for k in keys:
        print(f"{k:<24} {med[k][0]:7.3f} {med[k][1]:7.3f}")
    cp_wall, cp_cpu = med["cp -r"]
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        plain = plains.get(rest.partition(":")[0])
        if plain is not None:
            add_w = med[f"{label} media"][0] - med[plain][0]
            add_c = med[f"{label} media"][1] - med[plain][1]
            print(f"{label}: --media adds {add_w:.3f} s wall ({add_w / cp_wall:.2f}x cp -r), "
                  f"{add_c:.3f} CPU s ({add_c / cp_cpu:.2f}x cp -r's)")


if __name__ == "__main__":
    main()
