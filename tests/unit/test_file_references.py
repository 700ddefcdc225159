"""Every file a comment, docstring or document names exists: paths such as
`exporter/job.py`, `rows/pipe.pxi` or `docs/CAR.md` in src/, ext/, tests/, perf/, docs/,
fuzz/, .ci/, tools/ and the README.  A file moved or removed must take its mentions with it.

A reference with a folder must exist from the repository's root, from the referring file's
folder, or under src/skyexport/, ext/skyexport/ or tests/ (how the code names its own
files); a bare
file name must be the name of some file in the repository.  System and Python headers and
files a test creates are not references to the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
REF = re.compile(r"(?<![\w.:/$-])((?:\.\./|[\w.-]+/)*[\w-][\w.-]*"
                 r"\.(?:py|pxi|pyx|pyi|md|h|toml|sh|yml))\b")
# Headers of the C library, the OS and Python's build: not files of this repository.
INCLUDE = re.compile(r"#\s*include\s*<")
EXTERNAL = {"Python.h", "pyconfig.h", "PC/pyconfig.h", "pyinc/pyconfig.h", "linux/fs.h",
            "linux/openat2.h"}
SCANNED = ("src/", "ext/skyexport/", "tests/", "perf/", "docs/", "fuzz/", ".ci/", "tools/")
TOP = ("README.md", "Makefile", "CMakeLists.txt", "pyproject.toml")


def _repository_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _dangling(scanned: list[str], files: list[str]) -> list[str]:
    names = {Path(f).name for f in files}
    bad = []
    for f in scanned:
        if not (f.startswith(SCANNED) or f in TOP) or f.startswith(("tests/golden/",
                                                                     "tests/car/")):
            continue
        try:
            text = (ROOT / f).read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if INCLUDE.search(line) or ".write_text(" in line or "tmp_path /" in line:
                continue
            for ref in REF.findall(line):
                if ref in EXTERNAL:
                    continue
                if "/" not in ref:
                    ok = ref in names
                else:
                    ok = any((base / ref).is_file() for base in (
                        ROOT, (ROOT / f).parent, ROOT / "src/skyexport", ROOT / "ext/skyexport",
                        ROOT / "tests"))
                if not ok:
                    bad.append(f"{f}:{n}: {ref}")
    return bad


def test_every_file_named_in_the_repository_exists() -> None:
    files = _repository_files()
    bad = _dangling(files, files)
    assert not bad, "files named but not in the repository:\n" + "\n".join(bad)


def test_a_dangling_reference_is_found(tmp_path: Path) -> None:
    # The checker itself: a name that exists passes, one that does not is reported.
    files = _repository_files()
    assert "src/skyexport/exporter/job.py" in files
    assert _dangling(["README.md"], files) == []
    probe = ROOT / "docs" / f".probe-{tmp_path.name}.md"
    missing = "exporter/no_such_module" + ".py"
    probe.write_text(f"see `exporter/job.py` and `{missing}`\n")
    try:
        assert _dangling([str(probe.relative_to(ROOT))], files) == [
            f"docs/{probe.name}:1: {missing}"]
    finally:
        probe.unlink()
