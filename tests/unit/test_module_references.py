"""Every `skyexport.*` module, and every test helper (`helpers.*`, tests/helpers/), that
perf/, fuzz/, tools/ and .ci/ import - in their own import lines and in the scripts they
hand to a child interpreter as strings - exists.  A module moved by a layout change must
take those imports with it (perf/_harness.py's no-sync variant and its reference exporter
once imported modules that had moved, and every benchmark run of them failed in its
child)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# `import skyexport.a.b`, `from skyexport.a import x`, also inside string literals (where
# a line may follow a `\n`, so no word boundary is asked for before `import`).
IMPORT = re.compile(r"(?:import|from)\s+((?:skyexport|helpers)(?:\.\w+)+)")
SCANNED = ("perf", "fuzz", "tools", ".ci")


def _imports() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for folder in SCANNED:
        for top, dirs, files in os.walk(ROOT / folder):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            paths = [Path(top, f) for f in sorted(files)]
            for path in paths:
                if path.suffix in ("", ".py", ".sh") and path.is_file():
                    _scan(path, found)
    return found


def _scan(path: Path, found: dict[str, list[str]]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    for name in IMPORT.findall(text):
        found.setdefault(name, []).append(str(path.relative_to(ROOT)))


def _exists(name: str) -> bool:
    if name.startswith("helpers."):
        return (ROOT / "tests" / (name.replace(".", "/") + ".py")).is_file()
    return importlib.util.find_spec(name) is not None


def test_the_scan_finds_imports() -> None:
    """The scan itself works: perf/ is known to import from the package and the tests'
    helpers."""
    found = _imports()
    assert "skyexport.schema" in found and "helpers.reference" in found


def test_every_imported_module_exists() -> None:
    missing = {name: where for name, where in _imports().items()
               if not _exists(name)}
    assert not missing, f"imports of modules that do not exist: {missing}"
