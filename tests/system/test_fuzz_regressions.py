"""The fuzz targets' checks (fuzz/targets.py) on every input the fuzzer ever flagged
(fuzz/regressions/), on the hostile CARs and on the real repositories: each passes, so a
finding once fixed stays fixed.  The fuzzer itself runs in CI over a sanitizer build
(fuzz/run.sh)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers.hostile import CASES

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import targets  # noqa: E402

REGRESSIONS = ROOT / "fuzz" / "regressions"


def _files(kind: str) -> list[Path]:
    return sorted(p for p in (REGRESSIONS / kind).glob("*") if not p.name.startswith("."))


def test_regressions() -> None:
    """Every input in fuzz/regressions/car and fuzz/regressions/json (a .keep file holds an
    empty directory in git)."""
    for path in _files("car"):
        targets.car(path.read_bytes())
    found = _files("json")
    assert found  # the re-indenter's first finding, at least
    for path in found:
        targets.json(path.read_bytes())


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_cases(name: str) -> None:
    targets.car(CASES[name]())


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "car").glob("*.car")),
                         ids=lambda p: p.name)
def test_real_repositories_and_their_heads(path: Path) -> None:
    raw = path.read_bytes()
    targets.car(raw)
    targets.car(raw[:16 << 10])


def test_stored_json_with_invalid_utf8_is_copied_verbatim() -> None:
    """The re-indenter copies stored JSON's strings byte for byte (FORMAT.md), invalid
    UTF-8 included: the fuzzer's first finding was its own oracle assuming otherwise."""
    from skyexport import _core

    assert _core.testing.reformat_json(b'{"a":"\xdc"}', False, 0) == b'{"a":"\xdc"}'
