"""What perf/bench.py and perf/gate.py share: the environment header, the archive cache,
the competitors' command lines, and a child runner that measures one process exactly.

Measuring a child's peak RSS: ``os.wait4`` returns the child's ``ru_maxrss``, but on Linux
that value starts from the *parent's* memory.  ``subprocess`` starts children with vfork and
exec, and exec records the old address space's high-water mark (here: the benchmark's own
Python process) in the child's ``maxrss``; a plain fork copies it.  So a child started
directly from this script never reports less than this script's RSS (~11 MB for
``true``, 300 MB if the script held 300 MB).  The runner therefore makes this process a
child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) and starts each command from a tiny
``/bin/sh`` that forks it into the background and exits: the command is forked from sh's
~1 MB address space, is re-parented to us, and ``os.wait4(pid)`` returns exactly its own
peak (``true`` reports ~0.7 MB, the sqlite3 shell ~4 MB).  The wall time includes that
sh's start-up (~2 ms), the same for every tool.  Without prctl (not Linux) children are
started directly and the RSS column carries the parent's share; the header says so.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyexport.schema import POST_COLUMNS

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent
# SKYEXPORT_PERF_CACHE moves the archive cache (and the scratch exports) elsewhere.
CACHE = Path(os.environ.get("SKYEXPORT_PERF_CACHE") or PERF_DIR / ".cache")
TESTS_DIR = REPO / "tests"

COLUMNS = ", ".join(POST_COLUMNS)  # the export's 17 columns, in its order
ORDER = " ORDER BY created_at DESC, uri ASC"

# Every archive the benchmarks use comes from `skyexport synth` with these settings: three
# DIDs, the first owning ~90 % of the posts (bskyarchive always exports one DID), and media
# files, so the same archive serves the --media comparison.  Media never changes the posts.
SEED = 1
DIDS = 3
MEDIA = True


def parse_size(text: str) -> int:
    """'10k' -> 10000, '1M' -> 1000000, '500' -> 500."""
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    value = int(float(t) * mult)
    if value < 1:
        raise ValueError(f"size must be at least 1 post, not {text!r}")
    return value


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def select_sql(where: str = "") -> str:
    """The export SELECT as the competitor runs it (the 17 columns, export order)."""
    return f"SELECT {COLUMNS} FROM posts{where}{ORDER}"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- environment

def _cmd_output(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def code_fingerprint() -> str:
    """A hash of skyexport's installed files (names, sizes, modification times of the .py
    and compiled modules): tells whether the code changed while a benchmark ran (others may
    be editing an editable install).  Found without importing skyexport."""
    spec = importlib.util.find_spec("skyexport")
    if spec is None:
        return "not installed"
    places = {Path(spec.origin).parent} if spec.origin else set()
    places |= {Path(p) for p in spec.submodule_search_locations or ()}
    digest = hashlib.sha256()
    for place in sorted(places):
        for path in sorted(place.glob("*")):
            if path.suffix in (".py", ".so", ".pyd"):
                try:
                    st = path.stat()
                except OSError:
                    continue
                digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def skyexport_argv() -> list[str]:
    """The `skyexport` console script of this interpreter's environment (what users run),
    or `python -m skyexport` where there is none."""
    script = Path(sys.executable).parent / "skyexport"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "skyexport"]


def sqlite3_shell() -> str | None:
    return shutil.which("sqlite3")


def environment() -> dict[str, Any]:
    """Machine, versions and load: the benchmark's header."""
    apsw_version = apsw_sqlite = "not installed"
    try:
        import apsw
        apsw_version, apsw_sqlite = apsw.apswversion(), apsw.sqlite_lib_version()
    except ImportError:
        pass
    shell = sqlite3_shell()
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(_ram_gb(), 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "skyexport": _dist_version("skyexport"),
        "skyexport_command": " ".join(skyexport_argv()),
        "skyexport_code": code_fingerprint(),
        "skyexport_row_source": os.environ.get("SKYEXPORT_ROW_SOURCE", "pipe (default)"),
        "apsw": apsw_version,
        "apsw_sqlite": apsw_sqlite,
        "msgspec": _dist_version("msgspec"),
        "cython": _dist_version("cython"),
        "sqlite3_shell": shell or "not found",
        "sqlite3_shell_version": _cmd_output([shell, "--version"]).split(" ")[0] if shell else "",
        "python_stdlib_sqlite": sqlite3.sqlite_version,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "rss_method": "os.wait4 via sh + PR_SET_CHILD_SUBREAPER (exact child peak)"
                      if SUBREAPER else "os.wait4 on a direct child (includes parent's RSS)",
    }
    return env


def header_lines(env: dict[str, Any]) -> list[str]:
    load = env["loadavg_start"]
    return [
        f"date      {env['date']}",
        (f"machine   {env['cpu']}, {env['cores']} cores, {env['ram_gb']} GB RAM, "
         f"{env['kernel']}"),
        f"python    {env['python']} ({env['python_executable']})",
        (f"skyexport {env['skyexport']} ({env['skyexport_command']}, code "
         f"{env['skyexport_code']}), row source "
         f"{env['skyexport_row_source']}; apsw {env['apsw']} with SQLite "
         f"{env['apsw_sqlite']}; msgspec {env['msgspec']}; cython {env['cython']}"),
        (f"sqlite3   shell {env['sqlite3_shell_version']} ({env['sqlite3_shell']}); reference "
         f"exporter tests/helpers/reference.py on stdlib sqlite3 (SQLite "
         f"{env['python_stdlib_sqlite']})"),
        f"load      {load[0]} {load[1]} {load[2]} (1/5/15 min) at start",
        f"rss       {env['rss_method']}",
    ]


# ------------------------------------------------------------------------ archive cache

@dataclass
class ArchiveInfo:
    path: Path
    posts: int
    build_s: float               # 0.0 when it came from the cache
    dids: list[tuple[str, int]]  # (did, posts), most posts first
    media_files: int
    size_bytes: int

    @property
    def major_did(self) -> tuple[str, int]:
        return self.dids[0]


def _synth_fingerprint() -> str:
    """A hash of the installed synth.py: a changed generator means rebuilt archives.
    Found without importing skyexport (whose core may be mid-rebuild)."""
    spec = importlib.util.find_spec("skyexport")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("skyexport is not installed in this interpreter's environment")
    places = [Path(spec.origin).parent] if spec.origin else []
    places += [Path(p) for p in spec.submodule_search_locations]
    for place in places:  # an editable install lists the build tree too
        synth = place / "testing" / "synth.py"
        if synth.exists():
            return hashlib.sha256(synth.read_bytes()).hexdigest()[:16]
    raise SystemExit(f"testing/synth.py not found in {', '.join(map(str, places))}")


def _build(folder: Path, argv: list[str]) -> float:
    """Run the `skyexport synth` command `argv` into a fresh `folder`; its wall time."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"{' '.join(argv[-6:])} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-300:]}")
    return time.perf_counter() - t0


def _stamp_matches(stamp: Path, key: str, fingerprint: str) -> bool:
    """A cached build's build.json says it was made by this version of its builder."""
    try:
        return bool(json.loads(stamp.read_text()).get(key) == fingerprint)
    except (OSError, ValueError):
        return False


def archive(posts: int, *, seed: int = SEED, dids: int = DIDS, media: bool = MEDIA,
            rebuild: bool = False, log: Callable[[str], None] = print) -> ArchiveInfo:
    """The cached archive `perf/.cache/p<posts>-s<seed>-d<dids>[-media]/archive.db`, built by
    `skyexport synth` (a child process) when missing or when synth.py changed."""
    name = f"p{posts}-s{seed}-d{dids}" + ("-media" if media else "")
    folder = CACHE / name
    db = folder / "archive.db"
    stamp = folder / "build.json"
    fingerprint = _synth_fingerprint()
    ok = db.exists() and stamp.exists() and not rebuild
    if ok:
        ok = _stamp_matches(stamp, "synth", fingerprint)
        if not ok:
            log(f"  {name}: synth.py changed since it was built; rebuilding")
    build_s = 0.0
    if not ok:
        log(f"  building {size_label(posts)}-post archive ({name}) ...")
        build_s = _build(folder, [*skyexport_argv(), "synth", str(db), "--posts", str(posts),
                                  "--seed", str(seed), "--dids", str(dids)]
                         + (["--media"] if media else []))
        stamp.write_text(json.dumps({"synth": fingerprint, "posts": posts, "seed": seed,
                                     "dids": dids, "media": media, "build_s": build_s}))
        log(f"  built in {build_s:.1f} s")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        by_did = con.execute("SELECT did, count(*) FROM posts GROUP BY did "
                             "ORDER BY 2 DESC, 1").fetchall()
        try:
            media_files = con.execute("SELECT count(DISTINCT file_path) FROM media").fetchone()[0]
        except sqlite3.Error:
            media_files = 0
    finally:
        con.close()
    total = sum(n for _, n in by_did)
    if total != posts:
        raise SystemExit(f"{db}: {total} posts, expected {posts}; delete {folder}")
    return ArchiveInfo(db, posts, build_s, [(d, n) for d, n in by_did], media_files,
                       db.stat().st_size)


# ------------------------------------------------------------------------------ running

def _set_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


SUBREAPER = _set_subreaper()

# Start "$@" in the background with its output in files and print its pid: the command is
# forked from this small shell, not from the benchmark's Python (see the module docstring).
_LAUNCH = 'o=$1 e=$2; shift 2; "$@" >"$o" 2>"$e" </dev/null & echo $!'


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq,
    steal; not idle or iowait), from /proc/stat; NaN where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def others_busy_cores(seconds: float = 0.5) -> float:
    """Cores kept busy by other processes over `seconds` while we run nothing."""
    a = cpu_busy_s()
    time.sleep(seconds)
    return (cpu_busy_s() - a) / seconds


def settle(threshold: float, max_wait: float, log: Callable[[str], None] | None = None) -> float:
    """Wait (at most `max_wait` s) until other processes use less than `threshold` cores;
    returns the last measurement.  Lowers the noise on a shared machine, cannot remove it."""
    deadline = time.monotonic() + max_wait
    busy = others_busy_cores()
    waited = False
    while busy > threshold and time.monotonic() < deadline:
        if not waited and log:
            log(f"    waiting for other processes to settle ({busy:.1f} cores busy) ...")
        waited = True
        busy = others_busy_cores(1.0)
    return busy


class _Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Timeout()


@dataclass
class Sample:
    """One run of one command."""

    wall_s: float
    rss_kb: int
    cpu_s: float
    returncode: int
    error: str = ""
    out_bytes: int = 0
    posts: int | None = None
    # CPU cores that *other* processes kept busy, on average, while this run lasted
    # (machine-wide busy time from /proc/stat minus this child's): contention.
    others_cores: float | None = None
    # Fraction of the archive's pages in the OS page cache just before the run.
    archive_cached: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error


def run(argv: Sequence[str], stdout: Path, stderr: Path, *, timeout: float = 900.0,
        exact_rss: bool = True) -> Sample:
    """Run `argv` with stdout and stderr in files; wall time, peak RSS and CPU time of that
    child alone.  `exact_rss=False` starts it directly (lowest start-up overhead, RSS
    includes this process's)."""
    busy0 = cpu_busy_s()
    t0 = time.perf_counter()
    if SUBREAPER and exact_rss:
        sh = subprocess.Popen(["/bin/sh", "-c", _LAUNCH, "sh", str(stdout), str(stderr), *argv],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert sh.stdout is not None
        text = sh.stdout.read()
        sh.wait()
        pid = int(text)
    else:
        with open(stdout, "wb") as o, open(stderr, "wb") as e:
            child = subprocess.Popen(list(argv), stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        pid = child.pid
        child.returncode = 0  # reaped below by os.wait4, not by Popen
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    timed_out = False
    try:
        _, status, ru = os.wait4(pid, 0)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status, ru = os.wait4(pid, 0)
        if not isinstance(exc, _Timeout):
            raise
        timed_out = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    wall = time.perf_counter() - t0
    busy = cpu_busy_s() - busy0
    code = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    sample = Sample(wall, ru.ru_maxrss, cpu, code)
    if not math.isnan(busy) and wall > 0:  # /proc/stat was readable
        sample.others_cores = max(0.0, busy - cpu) / wall
    if timed_out:
        sample.error = f"timed out after {timeout:.0f} s"
    elif code != 0:
        last = ""
        try:
            lines = stderr.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
        except OSError:
            pass
        sample.error = f"exit {code}: {last}"[:200]
    return sample


@dataclass
class Case:
    """One command to time: a tool, a format, a row selection.

    `build(out_dir)` returns (argv, stdout file); `collect(out_dir, sample)` fills in the
    output bytes (and the post count where the tool prints one) after a run."""

    key: str
    tool: str
    fmt: str
    rows: str
    posts: int
    build: Callable[[Path], tuple[list[str], Path]]
    collect: Callable[[Path, Sample], None]
    baseline: str | None = None     # key of the sqlite3 case this one is compared with
    target: float | None = None     # wall-time ratio target (the issue's), if any
    exact_rss: bool = True          # False: started directly, for the lowest overhead
    archive: Path | None = None     # the archive it reads (page-cache bookkeeping)
    cold: bool = False              # evict the archive from the page cache before each run
    # Keep each run's output until the benchmark ends (cases that create many files): a
    # delete between timed runs slows the next runs' file creation (see perf/README.md).
    keep_output: bool = False
    samples: list[Sample] = field(default_factory=list)
    warmup: Sample | None = None

    def good(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def median(self, attr: str = "wall_s") -> float | None:
        good = self.good()
        return statistics.median(getattr(s, attr) for s in good) if good else None

    def peak_rss_mb(self) -> float | None:
        """The highest peak RSS of any run, in MiB."""
        good = self.good()
        return max(s.rss_kb for s in good) / 1024 if good else None

    def median_rss_mb(self) -> float | None:
        m = self.median("rss_kb")
        return None if m is None else m / 1024

    def others_cores(self) -> float | None:
        """Median contention (cores busy with other processes) during the good runs."""
        values = [s.others_cores for s in self.good() if s.others_cores is not None]
        return statistics.median(values) if values else None

    def cached(self) -> float | None:
        """Median fraction of the archive in the page cache before the good runs."""
        values = [s.archive_cached for s in self.good() if s.archive_cached is not None]
        return statistics.median(values) if values else None

    def spread(self) -> float | None:
        """(slowest - fastest) / median wall time of the good runs."""
        good, m = self.good(), self.median()
        if not good or not m:
            return None
        walls = [s.wall_s for s in good]
        return (max(walls) - min(walls)) / m

    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]


# skyexport's command line with the media files' final sync left out (staged.SYNCFS a
# no-op): what that sync costs, measured beside the real thing.  NO_SYNC_PRELUDE is the
# part that leaves it out, for scripts that run skyexport their own way (media_ab.py).
NO_SYNC_PRELUDE = "import skyexport.exporter.staged as staged\nstaged.SYNCFS = lambda fd: None\n"
_NO_SYNC = ("import sys\n" + NO_SYNC_PRELUDE
            + "from skyexport.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def skyexport_case(key: str, info: ArchiveInfo, fmt: str, *, did: str | None = None,
                   posts: int | None = None, media: bool = False, rows: str = "all",
                   extra: Sequence[str] = (), no_sync: bool = False) -> Case:
    def build(out: Path) -> tuple[list[str], Path]:
        prog = [sys.executable, "-c", _NO_SYNC] if no_sync else skyexport_argv()
        argv = [*prog, "export", str(info.path), "--output", str(out / "exports"),
                "--format", fmt, "--progress", "none", *extra]
        if did is not None:
            argv += ["--did", did]
        if media:
            argv += ["--media", "--media-root", str(info.path.parent)]
        return argv, out / "stdout.txt"

    def collect(out: Path, s: Sample) -> None:
        lines = (out / "stdout.txt").read_text(errors="replace").splitlines()
        if not lines:
            s.error = s.error or "no output on stdout"
            return
        data = Path(lines[-1]) / f"posts.{fmt}"
        s.out_bytes = data.stat().st_size if data.exists() else 0
        for line in lines:
            if line.startswith("posts: "):
                s.posts = int(line.split()[1])
        expected = posts if posts is not None else info.posts
        if s.ok and s.posts != expected:
            s.error = f"exported {s.posts} posts, expected {expected}"

    return Case(key, "skyexport", fmt + (" +media" if media else "")
                + (" nosync" if no_sync else ""), rows,
                posts if posts is not None else info.posts, build, collect, archive=info.path)


def sqlite3_case(key: str, info: ArchiveInfo, fmt: str, *, where: str = "", rows: str = "all",
                 posts: int | None = None) -> Case:
    shell = sqlite3_shell() or "sqlite3"
    sql = select_sql(where)

    def build(out: Path) -> tuple[list[str], Path]:
        return [shell, "-" + fmt, str(info.path), sql], out / f"posts.{fmt}"

    def collect(out: Path, s: Sample) -> None:
        data = out / f"posts.{fmt}"
        s.out_bytes = data.stat().st_size if data.exists() else 0

    return Case(key, "sqlite3", fmt, rows, posts if posts is not None else info.posts,
                build, collect, archive=info.path)


_REFERENCE = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from helpers.reference import reference_export; "
              "data = reference_export(sys.argv[2], sys.argv[3], did=sys.argv[4] or None); "
              "open(sys.argv[5], 'wb').write(data)")


def reference_case(key: str, info: ArchiveInfo, fmt: str, *, did: str | None = None,
                   rows: str = "all", posts: int | None = None) -> Case:
    def build(out: Path) -> tuple[list[str], Path]:
        return ([sys.executable, "-c", _REFERENCE, str(TESTS_DIR), str(info.path), fmt,
                 did or "", str(out / f"posts.{fmt}")], out / "stdout.txt")

    def collect(out: Path, s: Sample) -> None:
        data = out / f"posts.{fmt}"
        s.out_bytes = data.stat().st_size if data.exists() else 0

    return Case(key, "reference", fmt, rows, posts if posts is not None else info.posts,
                build, collect, archive=info.path)


def run_case(case: Case, work: Path, *, timeout: float = 900.0, record: bool = True) -> Sample:
    """One run of `case` in a fresh output directory under `work`, removed afterwards
    (outside the timing) - unless the case keeps its outputs, which then stay in
    `work/kept-N` until whoever made `work` removes it, after the last timed run."""
    if case.keep_output:
        work.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            out = work / f"kept-{n}"
            try:
                out.mkdir()
                break
            except FileExistsError:
                n += 1
    else:
        out = work / "run"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    argv, stdout = case.build(out)
    cached = None
    if case.archive is not None:
        if case.cold:
            evict(case.archive)
        cached = cached_fraction(case.archive)
    sample = run(argv, stdout, out / "stderr.txt", timeout=timeout, exact_rss=case.exact_rss)
    sample.archive_cached = cached
    try:
        case.collect(out, sample)
    except (OSError, ValueError) as exc:
        sample.error = sample.error or f"could not read its output: {exc}"
    if not case.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    if record:
        case.samples.append(sample)
    return sample


def alternate(cases: Sequence[Case], runs: int, work: Path, *, warmup: bool = True,
              timeout: float = 900.0, log: Callable[[str], None] | None = None,
              settle_cores: float | None = None, settle_max_s: float = 30.0) -> None:
    """One untimed warm-up of each case (the archive into the page cache, the interpreter's
    files too), then `runs` rounds of every case, the order rotated each round so that no
    tool always runs right after another.  With `settle_cores`, each round first waits
    (at most `settle_max_s`) for other processes to use fewer cores than that."""
    if warmup:
        for case in cases:
            s = case.warmup = run_case(case, work, timeout=timeout, record=False)
            if log:
                log(f"    warm-up {case.key}: {s.wall_s:.2f} s" + (f"  [{s.error}]" if s.error
                                                                   else ""))
    for r in range(runs):
        if settle_cores is not None:
            settle(settle_cores, settle_max_s, log)
        order = list(cases[r % len(cases):]) + list(cases[:r % len(cases)])
        for case in order:
            run_case(case, work, timeout=timeout)
        if log:
            log(f"    round {r + 1}/{runs} done")


def query_plans(info: ArchiveInfo) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of the export SELECT and its DID variants, in the sqlite3 shell
    (what the competitor runs) and in APSW's SQLite (what skyexport runs)."""
    did = sql_literal(info.major_did[0])
    queries = {"all rows": "", f"did = {did[:20]}...'": f" WHERE did = {did}",
               f"+did = {did[:20]}...'": f" WHERE +did = {did}"}
    plans: dict[str, list[str]] = {}
    shell = sqlite3_shell()
    for label, where in queries.items():
        sql = "EXPLAIN QUERY PLAN " + select_sql(where)
        if shell:
            text = _cmd_output([shell, str(info.path), sql])
            plans[f"sqlite3 shell, {label}"] = [ln.lstrip("|`- ") for ln in text.splitlines()
                                                if ln.strip() and ln != "QUERY PLAN"]
        try:
            import apsw
            con = apsw.Connection(str(info.path), flags=apsw.SQLITE_OPEN_READONLY)
            try:
                rows = con.execute(sql).fetchall()
            finally:
                con.close()
            plans[f"apsw, {label}"] = [str(r[3]) for r in rows]
        except ImportError:
            pass
    return plans


def evict(path: Path) -> None:
    """Drop one file's clean pages from the OS page cache (posix_fadvise DONTNEED): a cold
    read of that file only, without touching anyone else's cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float | None:
    """The fraction of `path`'s pages resident in the OS page cache (mincore(2) over a
    read-only mapping, which itself reads nothing); None where that is unavailable."""
    try:
        size = path.stat().st_size
        if size == 0:
            return 1.0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        page = os.sysconf("SC_PAGE_SIZE")
        pages = (size + page - 1) // page
        vec = (ctypes.c_ubyte * pages)()
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                if libc.mincore(addr, size, vec) != 0:
                    return None
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
        return sum(v & 1 for v in vec) / pages
    except (OSError, ValueError, AttributeError):
        return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def floor_case(key: str, info: ArchiveInfo, *, where: str = "") -> Case:
    """The read floor: the sqlite3 shell stepping the export's SELECT and only summing the
    bytes of every column - where an exporter that hid all of its encoding behind the
    stepping thread would land."""
    shell = sqlite3_shell() or "sqlite3"
    total = " + ".join(f"ifnull(length(CAST({c.strip()} AS BLOB)), 0)"
                       for c in COLUMNS.split(","))
    sql = f"SELECT sum({total}) FROM ({select_sql(where)})"

    def build(out: Path) -> tuple[list[str], Path]:
        return [shell, str(info.path), sql], out / "stdout.txt"

    def collect(out: Path, s: Sample) -> None:
        text = (out / "stdout.txt").read_text().strip()
        s.out_bytes = int(text) if text.isdigit() else 0

    return Case(key, "sqlite3", "floor", "all", info.posts, build, collect, archive=info.path)


def copy_media_case(key: str, info: ArchiveInfo, sync: bool = False,
                    flat: bool = False) -> Case:
    """`cp -r --reflink=auto` of the archive's media files: what --media competes with.
    With `sync`, followed by `sync -f` of the copy's file system (one syncfs, as --media
    makes its files durable): the same copy made durable.  With `flat`, the files are
    copied into one directory, as --media places them in media/ (`find -exec cp -t`)."""
    src = info.path.parent / "media"

    def build(out: Path) -> tuple[list[str], Path]:
        dst = str(out / "media-copy")
        if flat:
            return ["sh", "-c", 'mkdir "$2" && exec find "$1" -type f -exec '
                    'cp --reflink=auto -t "$2" {} +', "sh", str(src), dst], \
                out / "stdout.txt"
        if sync:
            return ["sh", "-c", 'cp -r --reflink=auto "$1" "$2" && exec sync -f "$2"', "sh",
                    str(src), dst], out / "stdout.txt"
        return ["cp", "-r", "--reflink=auto", str(src), dst], out / "stdout.txt"

    def collect(out: Path, s: Sample) -> None:
        pass

    return Case(key, "cp", "media +sync" if sync else "media flat" if flat else "media",
                "all", info.posts, build,
                collect, archive=info.path, keep_output=True)


class BusyCore:
    """One core kept busy by a child process for the duration of a `with` block (the
    benchmark's own, bounded: it is killed on exit and after `limit_s` at the latest)."""

    def __init__(self, limit_s: float = 3600.0) -> None:
        self.limit_s = limit_s
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BusyCore:
        code = f"import time\nend = time.monotonic() + {self.limit_s}\n" \
               "while time.monotonic() < end:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def script_case(key: str, tool: str, fmt: str, info: ArchiveInfo, argv: Sequence[str]) -> Case:
    """A peer exporter script (perf/peers.py): `argv + [archive, format, output file]`."""
    ext = {"json": "json", "csv": "csv", "jsonl": "jsonl"}[fmt]

    def build(out: Path) -> tuple[list[str], Path]:
        return [*argv, str(info.path), fmt, str(out / f"posts.{ext}")], out / "stdout.txt"

    def collect(out: Path, s: Sample) -> None:
        data = out / f"posts.{ext}"
        s.out_bytes = data.stat().st_size if data.exists() else 0

    return Case(key, tool, fmt, "all", info.posts, build, collect, archive=info.path)


def command_case(key: str, tool: str, argv: Sequence[str], *, exact_rss: bool = False) -> Case:
    """A command whose output does not matter (start-up measurements)."""
    def build(out: Path) -> tuple[list[str], Path]:
        return list(argv), out / "stdout.txt"

    def collect(out: Path, s: Sample) -> None:
        pass

    return Case(key, tool, "-", "-", 0, build, collect, exact_rss=exact_rss)


# ------------------------------------------------------------------------ repository CARs

@dataclass
class CarInfo:
    path: Path
    posts: int
    build_s: float
    size_bytes: int


def car(posts: int, *, seed: int = SEED, rebuild: bool = False,
        log: Callable[[str], None] = print) -> CarInfo:
    """The cached synthetic repository `perf/.cache/car-p<posts>-s<seed>/repo.car` (posts,
    2x likes, 0.2x follows; `skyexport synth --car`), rebuilt when carwrite.py changed."""
    folder = CACHE / f"car-p{posts}-s{seed}"
    path = folder / "repo.car"
    stamp = folder / "build.json"
    spec = importlib.util.find_spec("skyexport.testing.carwrite")
    fingerprint = (hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]
                   if spec and spec.origin else "?")
    ok = path.exists() and not rebuild and _stamp_matches(stamp, "carwrite", fingerprint)
    build_s = 0.0
    if not ok:
        log(f"  building {size_label(posts)}-post repository CAR ...")
        build_s = _build(folder, [*skyexport_argv(), "synth", str(path), "--car", str(posts),
                                  "--seed", str(seed)])
        stamp.write_text(json.dumps({"carwrite": fingerprint, "posts": posts, "seed": seed,
                                     "build_s": build_s}))
        log(f"  built in {build_s:.1f} s")
    return CarInfo(path, posts, build_s, path.stat().st_size)


def car_export_case(key: str, info: CarInfo, fmt: str) -> Case:
    as_archive = ArchiveInfo(info.path, info.posts, 0.0, [], 0, info.size_bytes)
    c = skyexport_case(key, as_archive, fmt)
    c.fmt = f"{fmt} car"
    return c


def car_records_case(key: str, info: CarInfo, fmt: str) -> Case:
    """`export REPO.car --collections all`: posts.FMT and records/NSID.FMT of every
    collection; the records written are checked against the repository's count."""
    as_archive = ArchiveInfo(info.path, info.posts, 0.0, [], 0, info.size_bytes)
    c = skyexport_case(key, as_archive, fmt, extra=["--collections", "all"])
    inner = c.collect
    want = info.posts + int(info.posts * 2.0) + int(info.posts * 0.2)

    def collect(out: Path, s: Sample) -> None:
        inner(out, s)
        lines = (out / "stdout.txt").read_text(errors="replace").splitlines()
        if not s.ok or not lines:
            return
        m = json.loads((Path(lines[-1]) / "manifest.json").read_text())
        got = sum(v["records"] for v in m.get("records", {}).values())
        s.out_bytes += sum(v["bytes"] for v in m.get("records", {}).values())
        if got != want:
            s.error = f"wrote {got} records, expected {want}"

    c.collect = collect
    c.fmt = f"{fmt} car all"
    return c


def car_import_case(key: str, info: CarInfo) -> Case:
    def build(out: Path) -> tuple[list[str], Path]:
        return ([*skyexport_argv(), "import", str(info.path), "--archive",
                 str(out / "archive.db")], out / "stdout.txt")

    def collect(out: Path, s: Sample) -> None:
        for line in (out / "stdout.txt").read_text(errors="replace").splitlines():
            if line.startswith("posts: "):
                s.posts = int(line.split()[1])
        db = out / "archive.db"
        s.out_bytes = db.stat().st_size if db.exists() else 0
        if s.ok and s.posts != info.posts:
            s.error = f"imported {s.posts} posts, expected {info.posts}"

    return Case(key, "skyexport", "import car", "all", info.posts, build, collect,
                archive=info.path)


# The competitor of issue 12: the whole CAR read with libipld.decode_car, then the MST walked
# from the commit and every post record's fields taken, as a script would.
_LIBIPLD = r"""
import sys, libipld
header, blocks = libipld.decode_car(open(sys.argv[1], 'rb').read())
commit = blocks[header['roots'][0]]
posts = 0
stack = [commit['data']]
while stack:
    node = blocks[stack.pop()]
    if node['l'] is not None:
        stack.append(node['l'])
    key = b''
    for e in node['e']:
        key = key[:e['p']] + e['k']
        if key.startswith(b'app.bsky.feed.post/'):
            rec = blocks[e['v']]
            posts += bool(rec.get('createdAt') is not None or rec.get('text') is not None)
        if e['t'] is not None:
            stack.append(e['t'])
print(f'posts: {posts}')
"""


# The competitor for every collection: decode_car (which decodes every block), then the
# MST walked and every record touched (its $type read), as a script listing them would.
_LIBIPLD_ALL = r"""
import sys, libipld
header, blocks = libipld.decode_car(open(sys.argv[1], 'rb').read())
commit = blocks[header['roots'][0]]
posts = records = 0
stack = [commit['data']]
while stack:
    node = blocks[stack.pop()]
    if node['l'] is not None:
        stack.append(node['l'])
    key = b''
    for e in node['e']:
        key = key[:e['p']] + e['k']
        rec = blocks[e['v']]
        records += rec.get('$type') is not None
        posts += key.startswith(b'app.bsky.feed.post/')
        if e['t'] is not None:
            stack.append(e['t'])
print(f'posts: {posts}')
print(f'records: {records}')
"""


def libipld_case(key: str, info: CarInfo, every: bool = False) -> Case:
    def build(out: Path) -> tuple[list[str], Path]:
        return ([sys.executable, "-c", _LIBIPLD_ALL if every else _LIBIPLD, str(info.path)],
                out / "stdout.txt")

    def collect(out: Path, s: Sample) -> None:
        for line in (out / "stdout.txt").read_text(errors="replace").splitlines():
            if line.startswith("posts: "):
                s.posts = int(line.split()[1])
        if s.ok and s.posts != info.posts:
            s.error = f"walked {s.posts} posts, expected {info.posts}"

    return Case(key, "libipld", "car walk all" if every else "car walk", "all", info.posts,
                build, collect, archive=info.path)
