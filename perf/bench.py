#!/usr/bin/env python3
"""skyexport against SQLite's own shell and the naive Python exporter, on synthetic archives.

    python perf/bench.py                      # 10k, 100k, 200k, 1M posts, 5 runs each (slow)
    python perf/bench.py --sizes 10k,100k     # choose the sizes
    python perf/bench.py --quick              # 10k and 100k, 3 runs: a smoke run
    python perf/bench.py --json perf/results.json

For every archive size it runs, each as a child process:

* ``skyexport export --format json|csv|jsonl`` (the console script of this interpreter);
* ``sqlite3 -json`` and ``sqlite3 -csv`` (Debian's shell) on the same 17 columns in the same
  order, writing to a file: the competitor;
* the same with ``--did`` / ``WHERE did = '...'`` for the DID that owns ~90 % of the posts
  (bskyarchive always exports one DID), plus ``sqlite3 -json`` with ``WHERE +did = ...``,
  which lets the shell keep the created_at index the way skyexport does;
* ``skyexport export --media`` (the archives have media files; they are copied, reflinked
  where the file system can) and ``cp -r --reflink=auto`` of the same media directory (and
  ``cp`` of its files into one directory, the layout of an export's media/);
* the read floor (the shell stepping the same SELECT, summing every column's bytes), a
  filtered export whose range holds every post, and each format with one core kept busy;
* with ``--peers``, DuckDB and polars (perf/peers.py) on the same rows;
* the reference exporter of tests/helpers/reference.py (pure Python, loads everything) on the small
  sizes only.

One untimed warm-up of each puts the archive in the page cache; then the commands run in
alternating rounds (the order rotated each round) and the table shows medians.  Peak RSS is
that child's own ``ru_maxrss`` from ``os.wait4`` (see perf/_harness.py).  The derived
checks compare with the targets of issue 5.  Always exits 0: the benchmark reports, the
gate (perf/gate.py) enforces.  Never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

PERF_DIR = h.PERF_DIR

# The wall-time targets, as ratios to the sqlite3 shell on the same rows.
TARGETS = {"json": 0.8, "csv": 0.8, "jsonl": 0.7}
# ...which it sets for these sizes; smaller archives are dominated by start-up.
TARGET_SIZES = (200_000, 1_000_000)
RSS_LIMIT_MB = 48.0       # peak RSS of a 1M-post JSON or CSV export
RSS_GROWTH_MB = 4.0       # from 10k to 1M posts
LINEAR_SLACK = 1.1        # time(1M)/time(100k) <= 11 = 1.1 x 10
STARTUP_RATIO = 4.0       # `skyexport export` of 500 posts vs `python3 -c pass`
STARTUP_POSTS = 500
# Issue 11 (at 1M posts; media at 200k) and issue 13.2:
FLOOR_RATIO = 1.15        # wall vs the read floor (the shell stepping the SELECT, summing bytes)
CPU_RATIO = 0.8           # CPU (user + sys) vs the sqlite3 shell's for the same format
LOADED_RATIO = 0.9        # wall vs the shell, both with one core kept busy
MEDIA_RATIO = 1.0         # --media added wall vs `cp -r` of the files (each: durable or not)
FILTER_RATIO = 1.05       # --since 1970 --until 2100 (all rows match) vs no filter
ALL_DATES = ["--since", "1970-01-01", "--until", "2100-12-31"]

# Which sqlite3 run each format is compared with.
SHELL_FORMAT = {"json": "json", "csv": "csv", "jsonl": "json"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def media_cases(info: h.ArchiveInfo, plain: bool = True) -> list[h.Case]:
    """The plain json export, the same with --media, the same without the media files'
    final sync, and `cp -r` of the media files.  Their outputs are kept until the end: no
    deletes between timed runs (perf/README.md says why)."""
    cases = [h.skyexport_case("skyexport json all", info, "json")] if plain else []
    c = h.skyexport_case("skyexport json all +media", info, "json", media=True)
    c.baseline = "sqlite3 json all"
    n = h.skyexport_case("skyexport json all +media nosync", info, "json", media=True,
                         no_sync=True)
    n.baseline = "skyexport json all +media"
    cp = h.copy_media_case("cp -r media", info)
    cps = h.copy_media_case("cp -r media +sync", info, sync=True)
    flat = h.copy_media_case("cp media flat", info, flat=True)
    for case in (c, n, cp, cps, flat):
        case.keep_output = True
    return [*cases, c, n, cp, cps, flat]


def cases_for(info: h.ArchiveInfo, *, did: bool, media: bool, reference: bool,
              media_only: bool = False) -> list[h.Case]:
    if media_only:
        return media_cases(info) if info.media_files else []
    cases: list[h.Case] = []
    for fmt in ("json", "csv"):
        cases.append(h.sqlite3_case(f"sqlite3 {fmt} all", info, fmt))
    cases.append(h.floor_case("sqlite3 read floor", info))
    c = h.skyexport_case("skyexport json dated", info, "json", extra=ALL_DATES, rows="dated")
    c.baseline, c.target = "skyexport json all", FILTER_RATIO
    cases.append(c)
    for fmt in ("json", "csv", "jsonl"):
        c = h.skyexport_case(f"skyexport {fmt} all", info, fmt)
        c.baseline, c.target = f"sqlite3 {SHELL_FORMAT[fmt]} all", TARGETS[fmt]
        cases.append(c)
    if did:
        d, n = info.major_did
        lit = h.sql_literal(d)
        for fmt in ("json", "csv"):
            cases.append(h.sqlite3_case(f"sqlite3 {fmt} did", info, fmt,
                                        where=f" WHERE did = {lit}", rows="did", posts=n))
        c = h.sqlite3_case("sqlite3 json +did", info, "json", where=f" WHERE +did = {lit}",
                           rows="+did", posts=n)
        c.baseline = "sqlite3 json did"
        cases.append(c)
        for fmt in ("json", "csv", "jsonl"):
            c = h.skyexport_case(f"skyexport {fmt} did", info, fmt, did=d, posts=n, rows="did")
            c.baseline, c.target = f"sqlite3 {SHELL_FORMAT[fmt]} did", TARGETS[fmt]
            cases.append(c)
    if media and info.media_files:
        cases += media_cases(info, plain=False)
    if reference:
        for fmt in ("json", "csv", "jsonl"):
            c = h.reference_case(f"reference {fmt} all", info, fmt)
            c.baseline = f"sqlite3 {SHELL_FORMAT[fmt]} all"
            cases.append(c)
    return cases


# Issue 12's targets for a repository CAR (1M posts, 2M likes, 200k follows).
CAR_TARGET = 0.5           # export REPO.car --format jsonl vs libipld.decode_car + MST walk
CAR_RSS_LIMIT_MB = 64.0    # its peak RSS at 1M posts
CAR_RSS_GROWTH_MB = 8.0    # from 10k posts
# Issue 22's: export REPO.car --collections all vs libipld.decode_car + a walk touching
# every record; the same RSS limits.
CAR_ALL_TARGET = 0.5


def car_cases(info: h.CarInfo) -> list[h.Case]:
    """libipld's reader, `export REPO.car --format jsonl`, `import REPO.car`, and the
    export of the archive that import writes (for the import-vs-export report)."""
    walk = h.libipld_case("libipld car walk", info)
    c = h.car_export_case("skyexport jsonl car", info, "jsonl")
    c.baseline, c.target = "libipld car walk", CAR_TARGET
    imp = h.car_import_case("skyexport import car", info)
    imp.baseline = "libipld car walk"
    walk_all = h.libipld_case("libipld car walk all", info, every=True)
    a = h.car_records_case("skyexport jsonl car all", info, "jsonl")
    a.baseline, a.target = "libipld car walk all", CAR_ALL_TARGET
    return [walk, c, imp, walk_all, a]


def loaded_cases(info: h.ArchiveInfo) -> list[h.Case]:
    """Each format and its shell again, run while one core is kept busy (issue 13.2)."""
    cases: list[h.Case] = []
    for fmt in ("json", "csv"):
        cases.append(h.sqlite3_case(f"sqlite3 {fmt} all busy-core", info, fmt,
                                    rows="all, 1 core busy"))
    for fmt in ("json", "csv", "jsonl"):
        c = h.skyexport_case(f"skyexport {fmt} all busy-core", info, fmt,
                             rows="all, 1 core busy")
        c.baseline, c.target = f"sqlite3 {SHELL_FORMAT[fmt]} all busy-core", LOADED_RATIO
        cases.append(c)
    return cases


def peer_cases(info: h.ArchiveInfo) -> tuple[list[h.Case], list[str]]:
    """DuckDB (sqlite_scanner) and polars (ADBC) dumping the same rows in the same order,
    where installed (the `perf` extra); notes for those that are not."""
    import importlib.util

    cases, notes = [], []
    py = sys.executable
    if importlib.util.find_spec("duckdb") and importlib.util.find_spec(
            "duckdb_extension_sqlite_scanner"):
        for fmt in ("json", "csv", "jsonl"):
            cases.append(h.script_case(f"duckdb {fmt} all", "duckdb", fmt, info,
                                       [py, str(PERF_DIR / "peers.py"), "duckdb"]))
    else:
        notes.append("duckdb: not installed (pip install -e '.[perf]')")
    if importlib.util.find_spec("polars") and importlib.util.find_spec("adbc_driver_sqlite"):
        for fmt in ("json", "csv", "jsonl"):
            cases.append(h.script_case(f"polars {fmt} all", "polars", fmt, info,
                                       [py, str(PERF_DIR / "peers.py"), "polars"]))
    else:
        notes.append("polars: not installed (pip install -e '.[perf]')")
    for c in cases:
        c.baseline = f"sqlite3 {SHELL_FORMAT[c.fmt]} all"
    return cases, notes


def summarize(size: int, cases: list[h.Case]) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in cases}
    out = []
    for c in cases:
        wall = c.median()
        base = by_key.get(c.baseline or "")
        base_wall = base.median() if base is not None else (wall if c.tool == "sqlite3"
                                                             else None)
        ratio = wall / base_wall if wall and base_wall else None
        cpu = c.median("cpu_s")
        base_cpu = base.median("cpu_s") if base is not None else (cpu if c.tool == "sqlite3"
                                                                  else None)
        bytes_ = c.median("out_bytes")
        status = ""
        if c.target is not None and ratio is not None:
            status = ("PASS" if ratio <= c.target else "FAIL") if size in TARGET_SIZES else "-"
            if c.fmt.endswith(" car"):
                status = ("PASS" if ratio <= c.target else "FAIL") if size == 1_000_000 \
                    else "-"
        out.append({
            "size": size, "key": c.key, "tool": c.tool, "format": c.fmt, "rows": c.rows,
            "posts": c.posts, "wall_s": wall, "spread": c.spread(),
            "posts_per_s": c.posts / wall if wall else None,
            "mb_per_s": bytes_ / 1e6 / wall if wall and bytes_ else None,
            "out_bytes": bytes_, "peak_rss_mb": c.peak_rss_mb(),
            "median_rss_mb": c.median_rss_mb(), "cpu_s": cpu,
            "cpu_ratio": cpu / base_cpu if cpu and base_cpu else None,
            "others_cores": c.others_cores(), "archive_cached": c.cached(),
            "baseline": c.baseline, "ratio": ratio, "target": c.target, "status": status,
            "runs_ok": len(c.good()), "errors": c.errors(),
            "warmup": vars(c.warmup) if c.warmup else None,
            "samples": [vars(s) for s in c.samples],
        })
    return out


def _f(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("archive", "tool", "format", "rows", "posts", "wall s", "spread", "posts/s",
            "MB/s", "peak RSS MB", "cpu s", "others", "cached", "ratio", "cpu ratio", "target",
            "failed")
    body = []
    for r in rows:
        target = ""
        if r["target"] is not None:
            target = f"<={r['target']:.2f} {r['status']}".rstrip()
        elif r["tool"] == "sqlite3" and r["rows"] != "+did":
            target = "(baseline)"
        body.append((
            h.size_label(r["size"]), r["tool"], r["format"], r["rows"], f"{r['posts']:,}",
            _f(r["wall_s"], ".3f"),
            _f(None if r["spread"] is None else 100 * r["spread"], ".0f") + "%",
            _f(r["posts_per_s"], ",.0f"), _f(r["mb_per_s"], ".1f"),
            _f(r["peak_rss_mb"], ".1f"), _f(r["cpu_s"], ".2f"), _f(r["others_cores"], ".1f"),
            _f(None if r["archive_cached"] is None else 100 * r["archive_cached"], ".0f") + "%",
            _f(r["ratio"], ".2f"), _f(r["cpu_ratio"], ".2f"), target,
            f"{len(r['errors'])}/{len(r['errors']) + r['runs_ok']}" if r["errors"] else ""))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    right = set(range(4, 15)) | {0}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [line(head), line(tuple("-" * w for w in widths))]
    last_size = None
    for r, cells in zip(rows, body, strict=True):
        if last_size is not None and r["size"] != last_size:
            lines.append("")
        last_size = r["size"]
        lines.append(line(cells))
    errors: dict[str, list[str]] = {}
    for r in rows:
        for e in r["errors"]:
            errors.setdefault(e, []).append(f"{h.size_label(r['size'])} {r['key']}")
    if errors:
        lines += ["", "failed runs (left out of the medians):"]
        for e, where in errors.items():
            lines.append(f"  {len(where)}x {e}  [{', '.join(dict.fromkeys(where))}]")
    return lines


def check(name: str, value: float | None, target: float | None, unit: str = "",
          detail: str = "", info: bool = False) -> dict[str, Any]:
    if value is None:
        status = "N/A"
    elif info or target is None:
        status = "INFO"
    else:
        status = "PASS" if value <= target else "FAIL"
    return {"check": name, "value": value, "target": target, "unit": unit,
            "status": status, "detail": detail}


def derived_checks(results: list[dict[str, Any]], startup: dict[str, Any] | None,
                   sizes: list[int]) -> list[dict[str, Any]]:
    def get(size: int, key: str) -> dict[str, Any] | None:
        for r in results:
            if r["size"] == size and r["key"] == key:
                return r
        return None

    checks = []
    for size in [s for s in sizes if s in TARGET_SIZES]:
        for rows in ("all", "did"):
            for fmt in ("json", "csv", "jsonl"):
                r = get(size, f"skyexport {fmt} {rows}")
                if r is None:
                    continue
                shell = f"sqlite3 -{SHELL_FORMAT[fmt]}"
                checks.append(check(
                    f"{fmt} {h.size_label(size)}{' --did' if rows == 'did' else ''} "
                    f"wall vs {shell}", r["ratio"], TARGETS[fmt], "x"))
    big, small = max(sizes), min(sizes)
    scope = "" if big == 1_000_000 else f" (target is for 1M; measured at {h.size_label(big)})"
    for fmt in ("json", "csv"):
        r = get(big, f"skyexport {fmt} all")
        checks.append(check(f"peak RSS {fmt} {h.size_label(big)}{scope}",
                            r["peak_rss_mb"] if r else None, RSS_LIMIT_MB, "MB"))
    if big > small:
        # Medians of the runs' peaks: a threaded exporter's peak moves by a few MB from run to
        # run (how many batches wait between threads depends on scheduling); the highest
        # peaks' difference is in the detail.
        for fmt in ("json", "csv"):
            a, b = get(small, f"skyexport {fmt} all"), get(big, f"skyexport {fmt} all")
            growth = detail = None
            if a and b and a["median_rss_mb"] is not None and b["median_rss_mb"] is not None:
                growth = b["median_rss_mb"] - a["median_rss_mb"]
                detail = (f"median peak {a['median_rss_mb']:.1f} -> {b['median_rss_mb']:.1f} MB; "
                          f"highest {a['peak_rss_mb']:.1f} -> {b['peak_rss_mb']:.1f} MB")
            checks.append(check(
                f"RSS growth {fmt} {h.size_label(small)}->{h.size_label(big)}"
                + ("" if (small, big) == (10_000, 1_000_000) else " (target is 10k->1M)"),
                growth, RSS_GROWTH_MB, "MB", detail or ""))
    if 100_000 in sizes and big > 100_000:
        limit = LINEAR_SLACK * big / 100_000
        for fmt in ("json", "csv", "jsonl"):
            a, b = get(100_000, f"skyexport {fmt} all"), get(big, f"skyexport {fmt} all")
            value = b["wall_s"] / a["wall_s"] if a and b and a["wall_s"] and b["wall_s"] \
                else None
            checks.append(check(f"linearity {fmt}: time({h.size_label(big)})/time(100k)",
                                value, limit, "x", f"{big // 100_000}x the posts"))
    for size in [s for s in sizes if s in TARGET_SIZES]:
        label = h.size_label(size)
        floor = get(size, "sqlite3 read floor")
        for fmt in ("json", "csv", "jsonl"):
            r = get(size, f"skyexport {fmt} all")
            if r is None:
                continue
            if floor is not None and floor["wall_s"] and r["wall_s"]:
                checks.append(check(f"{fmt} {label} wall vs the read floor",
                                    r["wall_s"] / floor["wall_s"], FLOOR_RATIO, "x"))
            checks.append(check(f"{fmt} {label} CPU vs sqlite3 -{SHELL_FORMAT[fmt]}",
                                r["cpu_ratio"], CPU_RATIO, "x"))
            busy = get(size, f"skyexport {fmt} all busy-core")
            if busy is not None:
                checks.append(check(f"{fmt} {label} wall vs sqlite3 -{SHELL_FORMAT[fmt]}, "
                                    "one core busy", busy["ratio"], LOADED_RATIO, "x"))
        dated = get(size, "skyexport json dated")
        if dated is not None:
            checks.append(check(f"json {label} --since 1970 --until 2100 vs no filter",
                                dated["ratio"], FILTER_RATIO, "x"))
    for size in sizes:
        # The media cost targets compare like with like: --media makes the copies durable
        # (syncfs before publishing), cp -r does not, and `sync -f` after it does.  Both
        # are targets; durable --media against plain cp -r, which mostly measures how
        # fast the disk writes, is shown too.
        m, plain = get(size, "skyexport json all +media"), get(size, "skyexport json all")
        nosync = get(size, "skyexport json all +media nosync")
        cp, cps = get(size, "cp -r media"), get(size, "cp -r media +sync")
        note = "" if size == 200_000 else " (target is for 200k)"

        def cost(name: str, media: dict[str, Any] | None, ref: dict[str, Any] | None,
                 target: float | None, plain: dict[str, Any] | None = plain) -> None:
            """The wall time `media` adds to the plain export, against `ref`'s."""
            if media and plain and ref and media["wall_s"] and plain["wall_s"] \
                    and ref["wall_s"]:
                added = media["wall_s"] - plain["wall_s"]
                checks.append(check(name, added / ref["wall_s"], target, "x",
                                    f"{added:.2f} s vs {ref['wall_s']:.2f} s",
                                    info=target is None))

        label = h.size_label(size)
        cost(f"--media cost without its syncs vs cp -r --reflink=auto, {label}" + note,
             nosync, cp, MEDIA_RATIO)
        cost(f"--media cost vs cp -r + sync -f (both durable), {label}" + note, m, cps,
             MEDIA_RATIO)
        cost(f"--media cost (durable) vs cp -r (not), {label}", m, cp, None)
        # cp -r makes the source's tree (bskyarchive's: 256 directories); --media writes
        # every file into media/ itself, and creates in one large directory cost more.
        # The same files copied into one directory show what that layout costs.
        flat = get(size, "cp media flat")
        cost(f"--media cost without its syncs vs cp into one directory, {label}",
             nosync, flat, None)
        if cp and flat and cp["wall_s"] and flat["wall_s"]:
            checks.append(check(f"cp into one directory vs cp -r, {label}",
                                flat["wall_s"] / cp["wall_s"], None, "x",
                                f"{flat['wall_s']:.2f} s vs {cp['wall_s']:.2f} s", info=True))
        if m and nosync and cp and m["wall_s"] and nosync["wall_s"] and cp["wall_s"]:
            checks.append(check(
                f"the media files' syncfs before publishing, {h.size_label(size)}",
                m["wall_s"] - nosync["wall_s"], None, " s",
                f"--media {m['wall_s']:.2f} s, without the sync {nosync['wall_s']:.2f} s; "
                f"{(m['wall_s'] - nosync['wall_s']) / cp['wall_s']:.2f}x cp -r", info=True))
    checks += car_checks(results)
    if startup is not None:
        checks.append(check(f"start-up: skyexport export of {STARTUP_POSTS} posts vs "
                            "python -c pass", startup["ratio"], STARTUP_RATIO, "x",
                            f"{_f(startup['export_s'], '.3f')} s vs "
                            f"{_f(startup['python_s'], '.3f')} s"))
    m, plain = get(big, "skyexport json all +media"), get(big, "skyexport json all")
    if m and plain and m["wall_s"] and plain["wall_s"]:
        files = m.get("media_files")
        checks.append(check(f"--media vs without, json {h.size_label(big)}"
                            + (f" ({files:,} files)" if files else ""),
                            m["wall_s"] / plain["wall_s"], None, "x",
                            f"{m['wall_s']:.2f} s vs {plain['wall_s']:.2f} s", info=True))
    ref, fast = get(small, "reference json all"), get(small, "skyexport json all")
    if ref and fast and ref["wall_s"] and fast["wall_s"]:
        checks.append(check(f"reference exporter / skyexport, json {h.size_label(small)}",
                            ref["wall_s"] / fast["wall_s"], None, "x",
                            "how much faster than naive Python", info=True))
    return checks


def car_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 12's targets, on the CAR rows (sizes marked `car` in the table)."""
    rows = {(r["size"], r["key"]): r for r in results if r.get("source") == "car"}
    sizes = sorted({s for s, _ in rows})
    checks: list[dict[str, Any]] = []
    if not sizes:
        return checks
    big, small = sizes[-1], sizes[0]
    scope = "" if big == 1_000_000 else f" (target is for 1M; measured at {h.size_label(big)})"
    e = rows.get((big, "skyexport jsonl car"))
    checks.append(check(f"CAR {h.size_label(big)} export jsonl vs libipld walk{scope}",
                        e["ratio"] if e else None, CAR_TARGET, "x"))
    checks.append(check(f"CAR {h.size_label(big)} export jsonl peak RSS{scope}",
                        e["peak_rss_mb"] if e else None, CAR_RSS_LIMIT_MB, "MB"))
    if big > small:
        a = rows.get((small, "skyexport jsonl car"))
        growth = (e["median_rss_mb"] - a["median_rss_mb"]) if a and e and \
            a["median_rss_mb"] is not None and e["median_rss_mb"] is not None else None
        checks.append(check(f"CAR RSS growth {h.size_label(small)}->{h.size_label(big)}",
                            growth, CAR_RSS_GROWTH_MB, "MB"))
    e = rows.get((big, "skyexport jsonl car all"))
    checks.append(check(f"CAR {h.size_label(big)} export --collections all jsonl vs libipld "
                        f"walk of every record{scope}", e["ratio"] if e else None,
                        CAR_ALL_TARGET, "x"))
    checks.append(check(f"CAR {h.size_label(big)} export --collections all peak RSS{scope}",
                        e["peak_rss_mb"] if e else None, CAR_RSS_LIMIT_MB, "MB"))
    if big > small:
        a = rows.get((small, "skyexport jsonl car all"))
        growth = (e["median_rss_mb"] - a["median_rss_mb"]) if a and e and \
            a["median_rss_mb"] is not None and e["median_rss_mb"] is not None else None
        checks.append(check(f"CAR --collections all RSS growth "
                            f"{h.size_label(small)}->{h.size_label(big)}",
                            growth, CAR_RSS_GROWTH_MB, "MB"))
    imp, exp = rows.get((big, "skyexport import car")), rows.get((big, "skyexport jsonl car"))
    if imp and exp and imp["wall_s"] and exp["wall_s"]:
        checks.append(check(f"CAR {h.size_label(big)} import vs export REPO.car",
                            imp["wall_s"] / exp["wall_s"], None, "x",
                            f"{imp['wall_s']:.2f} s vs {exp['wall_s']:.2f} s", info=True))
    return checks


def measure_startup(runs: int, work: Path) -> dict[str, Any]:
    """`skyexport export` of a tiny archive against the interpreter's bare start-up; both
    started directly (no sh in between) so the ratio is not diluted."""
    info = h.archive(STARTUP_POSTS, log=log)
    py = sys.executable
    cases = [
        h.command_case("python -c pass", "python", [py, "-c", "pass"]),
        h.command_case("python -c 'import apsw'", "python", [py, "-c", "import apsw"]),
        h.command_case("python -c 'import skyexport'", "python", [py, "-c", "import skyexport"]),
        h.command_case("skyexport --version", "skyexport", [*h.skyexport_argv(), "--version"]),
    ]
    export = h.skyexport_case(f"skyexport export ({STARTUP_POSTS} posts, json)", info, "json")
    export.exact_rss = False
    cases.append(export)
    h.alternate(cases, runs, work)
    medians = {c.key: c.median() for c in cases}
    base, exp = medians["python -c pass"], medians[export.key]
    return {"python_s": base, "export_s": exp,
            "ratio": exp / base if exp and base else None,
            "medians_s": medians, "errors": {c.key: c.errors() for c in cases if c.errors()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="comma-separated archive sizes (default 10k,100k,200k,1M)")
    p.add_argument("--quick", action="store_true",
                   help="10k and 100k posts, 3 runs, no reference exporter (unless given)")
    p.add_argument("--runs", type=int, help="timed runs per command (default 5)")
    p.add_argument("--reference-max", default="10k",
                   help="largest size the reference exporter runs on (default 10k; 0: never)")
    p.add_argument("--no-did", action="store_true", help="skip the --did / WHERE did variants")
    p.add_argument("--no-media", action="store_true", help="skip the --media runs")
    p.add_argument("--media-only", action="store_true",
                   help="only the --media check: json with and without --media, and cp -r "
                        "of the same files, alone and followed by sync -f (no start-up or "
                        "one-core-busy runs)")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up check")
    p.add_argument("--no-busy-core", action="store_true",
                   help="skip the runs with one core kept busy")
    p.add_argument("--peers", action="store_true",
                   help="also DuckDB (sqlite_scanner) and polars (ADBC), where installed")
    p.add_argument("--startup-runs", type=int, default=15)
    p.add_argument("--settle", type=float, default=0.5, metavar="CORES",
                   help="before each round, wait until other processes use fewer than CORES "
                        "cores (default 0.5; a negative value: never wait)")
    p.add_argument("--settle-max", type=float, default=20.0, metavar="S",
                   help="wait at most S seconds per round for that (default 20)")
    p.add_argument("--cold", action="store_true",
                   help="evict the archive from the OS page cache before every run "
                        "(posix_fadvise DONTNEED on that file only): cold-read numbers")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached archives")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run (default 1200)")
    p.add_argument("--work", type=Path, default=h.CACHE / "work",
                   help="where exports are written and removed (default perf/.cache/work; "
                        "on the archives' file system, so that --media can reflink where it can)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all results to FILE")
    p.add_argument("--car", metavar="SIZES", default="",
                   help="also repository CARs of these sizes (e.g. 10k,1M: posts, with 2x "
                        "likes and 0.2x follows): export REPO.car vs libipld (issue 12)")
    p.add_argument("--fetch", action="store_true",
                   help="only `skyexport fetch` vs curl on loopback (perf/fetch.py, its defaults; "
                        "run perf/fetch.py itself for other sizes)")
    args = p.parse_args(argv)
    if args.fetch:
        return subprocess.call([sys.executable, str(Path(__file__).with_name("fetch.py"))])
    if args.media_only:
        args.no_startup = args.no_busy_core = True

    sizes = sorted({h.parse_size(s) for s in (args.sizes or (
        "10k,100k" if args.quick else "10k,100k,200k,1M")).split(",") if s.strip()})
    runs = args.runs or (3 if args.quick else 5)
    ref_max = h.parse_size(args.reference_max) if args.reference_max not in ("0", "") else 0
    if args.quick and args.reference_max == p.get_default("reference_max"):
        ref_max = 0

    env = h.environment()
    for line in h.header_lines(env):
        print(line)
    print(f"sizes     {', '.join(h.size_label(s) for s in sizes)}; {runs} timed runs each "
          "after one warm-up, alternating; medians; "
          + ("COLD page cache (archive evicted before every run)" if args.cold
             else "warm page cache"))
    print(flush=True)
    if h.sqlite3_shell() is None:
        log("sqlite3 shell not found: the competitor rows will be errors")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    infos = {}
    log("archives:")
    for size in sizes:
        infos[size] = h.archive(size, rebuild=args.rebuild, log=log)
    startup = None
    if not args.no_startup:
        log("start-up:")
        startup = measure_startup(max(args.startup_runs, runs), work)

    results: list[dict[str, Any]] = []
    code_changes = []
    for size in sizes:
        before = h.code_fingerprint()
        info = infos[size]
        log(f"{h.size_label(size)} posts ({info.size_bytes / 1e6:.0f} MB archive, "
            f"{info.media_files:,} media files):")
        cases = cases_for(info, did=not args.no_did, media=not args.no_media,
                          reference=0 < size <= ref_max, media_only=args.media_only)
        for c in cases:
            c.cold = args.cold
        if args.peers:
            peers, notes = peer_cases(info)
            cases += peers
            for note in notes:
                log(f"  peers: {note}")
        h.alternate(cases, runs, work, timeout=args.timeout, log=log,
                    settle_cores=args.settle if args.settle >= 0 else None,
                    settle_max_s=args.settle_max)
        if not args.no_busy_core and size in TARGET_SIZES:
            # One core kept busy by the benchmark itself (no settling: it is the load).
            busy = loaded_cases(info)
            with h.BusyCore():
                h.alternate(busy, runs, work, timeout=args.timeout, log=log)
            cases += busy
        after = h.code_fingerprint()
        if after != before or before != env["skyexport_code"]:
            code_changes.append(size)
        rows = summarize(size, cases)
        for r in rows:
            if "+media" in r["format"]:
                r["media_files"] = info.media_files
        results.extend(rows)
    for size in sorted({h.parse_size(x) for x in args.car.split(",") if x.strip()}):
        cinfo = h.car(size, rebuild=args.rebuild, log=log)
        log(f"CAR {h.size_label(size)} posts ({cinfo.size_bytes / 1e6:.0f} MB):")
        cases = car_cases(cinfo)
        for c in cases:
            c.cold = args.cold
        h.alternate(cases, runs, work, timeout=args.timeout, log=log,
                    settle_cores=args.settle if args.settle >= 0 else None,
                    settle_max_s=args.settle_max)
        for r in summarize(size, cases):
            r["source"] = "car"
            results.append(r)

    print("\n".join(table(results)))
    if code_changes:
        print(f"\nWARNING: skyexport's installed files changed during the benchmark (at "
              f"{', '.join(h.size_label(s) for s in code_changes)} posts; code "
              f"{env['skyexport_code']} at start, {h.code_fingerprint()} at end): the numbers "
              "mix versions")
    checks = derived_checks(results, startup, sizes)
    if args.media_only:  # the checks of the cases it did not run
        checks = [ck for ck in checks if ck["status"] != "N/A"]
    print()
    print("derived checks")
    width = max(len(ck["check"]) for ck in checks) if checks else 0
    for ck in checks:
        value = _f(ck["value"], ".2f") + ck["unit"]
        target = f"<= {ck['target']:g}{ck['unit']}" if ck["target"] is not None else ""
        print(f"  {ck['check'].ljust(width)}  {value:>9}  {target:>10}  {ck['status']:<4}"
              + (f"  {ck['detail']}" if ck["detail"] else ""))
    if startup is not None:
        print()
        print("start-up (median wall s, started directly): " + ", ".join(
            f"{k} {_f(v, '.3f')}" for k, v in startup["medians_s"].items()))
    plans = h.query_plans(infos[max(sizes)])
    print()
    print(f"query plans ({h.size_label(max(sizes))} archive)")
    for label, lines in plans.items():
        print(f"  {label}: " + " | ".join(lines))
    for size, info in infos.items():
        if info.build_s:
            print(f"built the {h.size_label(size)} archive in {info.build_s:.1f} s")
    end_load = h.loadavg()
    print(f"load at end {end_load[0]} {end_load[1]} {end_load[2]}; "
          f"benchmark took {time.perf_counter() - t_start:.0f} s")

    if args.json:
        doc = {"environment": env, "sizes": sizes, "runs": runs, "results": results,
               "code_changed_at": code_changes, "code_at_end": h.code_fingerprint(),
               "checks": checks, "startup": startup, "query_plans": plans,
               "archives": {str(s): {"path": str(i.path), "posts": i.posts,
                                     "dids": i.dids, "media_files": i.media_files,
                                     "size_bytes": i.size_bytes, "build_s": i.build_s}
                            for s, i in infos.items()},
               "loadavg_end": end_load}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        log(f"results written to {args.json}")
    # Last: removing the kept media trees can take minutes (perf/README.md).
    log(f"removing {work} ...")
    sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
