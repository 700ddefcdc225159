"""A/B of `skyexport fetch --no-blobs` between interpreters (two builds of skyexport), side by
side with `curl -o`, on one loopback server (perf/fetch.py's).

    python perf/fetch_ab.py --posts 1M --variant new=.venv/bin/python \\
        --variant old=/elsewhere/.venv/bin/python [--rounds 4]

A variant is LABEL=PYTHON: that interpreter's skyexport.  Each round runs curl and every
variant once, in an order reversed every other round; each output is deleted right after
its run, its pages still to write back with it (perf/fetch.py syncs instead: a page cache
left to write back slows the writers of later rounds, curl most: perf/README.md).  Prints each
round, the medians, each variant's ratio to curl and to the first variant, and each
variant's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch as F  # noqa: E402 - perf/fetch.py: its server, cache and peak-RSS wrapper


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--posts", default="1M")
    p.add_argument("--variant", action="append", required=True, metavar="LABEL=PYTHON")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    variants = {label: os.path.abspath(py)   # the runs start in the work directory
                for label, py in (v.split("=", 1) for v in args.variant)}
    root = F.build_root(F.parse_size(args.posts), 0, 0)
    work = Path(tempfile.mkdtemp(prefix="fetch-ab-"))
    proc, url = F.serve(root, work)
    did = F.did_of(root / "repo.car")
    times: dict[str, list[float]] = {"curl": [], **{k: [] for k in variants}}
    rss: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for r in range(args.rounds):
            order = ["curl", *variants]
            if r % 2:
                order.reverse()
            for who in order:
                t = time.perf_counter()
                if who == "curl":
                    subprocess.run(["curl", "-sSf", "-o", str(work / "c.car"),
                                    f"{url}/xrpc/com.atproto.sync.getRepo?did={did}"],
                                   check=True)
                    times[who].append(time.perf_counter() - t)
                    os.unlink(work / "c.car")
                    continue
                peak = work / "peak"
                subprocess.run([variants[who], "-c", F.PEAK, str(peak), "fetch", did, "--pds",
                                url, "-o", str(work / "out"), "-q", "--progress", "none",
                                "--no-blobs"], check=True, stdout=subprocess.DEVNULL,
                               cwd=work)
                times[who].append(time.perf_counter() - t)
                rss[who].append(int(peak.read_text()) / 1e6)
                shutil.rmtree(work / "out")
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        first = next(iter(variants))
        print("medians: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()))
        for k in variants:
            print(f"  {k}: {med[k] / med['curl']:.2f}x curl, {med[k] / med[first]:.2f}x {first}, "
                  f"peak RSS {max(rss[k]):.1f} MB")
    finally:
        proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
