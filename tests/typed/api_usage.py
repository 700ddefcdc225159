"""A user's typed CI script, as the README's Python API section writes it: checked with
`mypy --strict` (tests/unit/test_api.py and `make lint`), never run."""

from __future__ import annotations

import skyexport


def show(ev: skyexport.ExportProgress) -> None:
    print(ev.status, ev.posts_processed, "/", ev.posts_total)


def main() -> None:
    result = skyexport.export("data/archive.db", "exports", format="csv", bom=False,
                              did="did:plc:abc", since="2024-01-01", on_progress=show)
    print(result.directory, result.post_count, result.sha256, result.warnings_total)
    report: skyexport.VerifyReport = skyexport.verify(result)   # the result itself ...
    assert report.ok, report.problems
    assert skyexport.verify("exports/2024-06-01_10-00-00").ok   # ... or a path
    imported: skyexport.ImportResult = skyexport.import_car("repo.car", "data/new.db")
    print(imported.archive, imported.posts, imported.added, imported.did, imported.sha256)
