"""The one way the tests run the command line, and the one way they check that a command
failed in one line.

`run(*args)` is `python -m skyexport ARGS` in a subprocess: its output as text (undecodable
bytes replaced) or bytes (`text=False`), a timeout generous for a loaded 2-core machine,
and, unless told otherwise, SIGINT at its default (a shell's background job inherits it
ignored).  `one_line_failure`
is the contract every failure keeps: the exit status, no traceback, exactly one line on
stderr (after the usage line of a usage error), naming what went wrong.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PY = sys.executable
TIMEOUT = 120  # seconds for any one subprocess: generous, a loaded 2-core machine


def child_setup(fsize: int | None = None, umask: int | None = None) -> Callable[[], None]:
    """preexec_fn: Ctrl-C as a user's terminal delivers it (a shell's background job
    inherits SIGINT ignored, and Python then keeps it ignored), plus optional limits."""
    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if umask is not None:
            os.umask(umask)
    return setup


def run(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None, text: bool = True,
        errors: str = "replace", timeout: float = TIMEOUT, stdout: Any = subprocess.PIPE,
        **kw: Any) -> subprocess.CompletedProcess[Any]:
    """`python -m skyexport ARGS` in a subprocess (see the module docstring)."""
    return subprocess.run(
        [PY, "-m", "skyexport", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
        encoding="utf-8" if text else None, errors=errors if text else None,
        timeout=timeout, env=env, cwd=cwd, check=False,
        preexec_fn=preexec_fn or child_setup(), **kw)


def peak_rss_script(prologue: str = "") -> str:
    """A child script: `prologue` (e.g. a resource limit), then the CLI's main() on
    argv[2:], then its own peak RSS (VmHWM) written to the file argv[1]."""
    return prologue + r"""
import sys
from skyexport.cli.commands import main
report = sys.argv.pop(1)
code = main(sys.argv[1:])
sys.stdout.flush()
with open("/proc/self/status") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open(report, "w") as f:
    f.write(str(kb * 1024))
sys.exit(code)
"""


# The CLI's main() in a child that reports its own peak RSS (VmHWM) to a file.
PEAK_RSS = peak_rss_script()


def run_peak_rss(tmp_path: Path, *args: object) -> tuple[subprocess.CompletedProcess[str], int]:
    """`python -m skyexport ARGS` in a subprocess, and its peak RSS in bytes."""
    report = tmp_path / "peak-rss"
    proc = subprocess.run([PY, "-c", PEAK_RSS, str(report), *map(str, args)],
                          capture_output=True, encoding="utf-8", errors="replace",
                          timeout=TIMEOUT, check=False, preexec_fn=child_setup())
    return proc, int(report.read_text())


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def error_line(stderr: str | bytes, *needles: str, prefix: str = "skyexport: error: ") -> str:
    """The one line on `stderr`: it starts with `prefix` and holds every needle."""
    lines = _text(stderr).splitlines()
    assert len(lines) == 1, f"wanted one line on stderr, got:\n{_text(stderr)}"
    line = lines[0]
    assert line.startswith(prefix), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def one_line_failure(proc: subprocess.CompletedProcess[Any] | tuple[int, str, str],
                     *needles: str, code: int = 1, prefix: str = "skyexport: error: ",
                     quiet_stdout: bool = False, progress_lines: bool = False) -> str:
    """Exit status `code`, no traceback, one error line (a usage error: after at most one
    usage line) starting with `prefix` and holding every needle; returns it.
    `quiet_stdout`: nothing on stdout either; `progress_lines`: `--progress jsonl` events
    (lines starting with `{`) may precede it."""
    if isinstance(proc, tuple):
        rc, out, err = proc[0], _text(proc[1]), _text(proc[2])
    else:
        rc, out, err = proc.returncode, _text(proc.stdout), _text(proc.stderr)
    assert rc == code, f"exit {rc}, wanted {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err, err
    if quiet_stdout:
        assert out == "", out
    lines = err.splitlines()
    if progress_lines:
        lines = [line for line in lines if not line.startswith("{")]
    if code == 2 and len(lines) == 2 and lines[0].startswith("usage: "):
        lines = lines[1:]
    return error_line("\n".join(lines), *needles, prefix=prefix)


def assert_failed(proc: subprocess.CompletedProcess[str] | tuple[int, str, str], code: int,
                  *needles: str) -> str:
    """one_line_failure of a command whose progress events may precede the line, with
    nothing on stdout (the fault tests' form)."""
    return one_line_failure(proc, *needles, code=code, prefix="skyexport",
                            quiet_stdout=True, progress_lines=True)
