"""The package's folders are the pipeline's stages, and imports go one way (README, "How it
works"): each module's imports, read from its source, against what its folder may import.
Imports under `if TYPE_CHECKING:` are types only and not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import skyexport

PACKAGE = Path(skyexport.__file__).parent
TOP = {"skyexport._core", "skyexport._platform", "skyexport._record", "skyexport.errors",
       "skyexport.defaults", "skyexport.schema"}
# folder -> the modules (or packages, with everything under them) it may import
MAY_IMPORT = {
    "sources": TOP | {"skyexport.sources"},
    "exporter": TOP | {"skyexport", "skyexport.exporter", "skyexport.manifest.write",
                       "skyexport.sources!", "skyexport.sources.archive"},
    "manifest": TOP | {"skyexport.manifest"},
    "testing": TOP | {"skyexport.testing"},
    "cli": None,  # the command line may import anything
    # `skyexport fetch`: the network's parts; the command itself is cli/fetch.py
    "remote": TOP | {"skyexport", "skyexport.remote", "skyexport.exporter.progress",
                     "skyexport.sources.car.repo"},
    "": TOP,      # the top-level modules import nothing of the folders
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """The skyexport modules `path` imports at run time, as absolute names."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.startswith("skyexport"):
                    subs = {f"{mod}.{a.name}" for a in child.names}
                    real = {s for s in subs if (PACKAGE.parent / s.replace(".", "/")).is_dir()
                            or any((PACKAGE.parent / (s.replace(".", "/") + ext)).is_file()
                                   for ext in (".py", ".pyi"))}
                    found.update(real or {mod})
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("skyexport"))
            visit(child)

    visit(tree)
    return found


def _allowed(target: str, rules: set[str]) -> bool:
    for rule in rules:
        if rule.endswith("!"):           # that module itself, nothing under it
            if target == rule[:-1]:
                return True
        elif target == rule or target.startswith(rule + ".") and rule != "skyexport":
            return True
    return False


def test_every_folder_imports_only_what_it_may() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        rules = MAY_IMPORT[folder]
        if rules is None or rel.name == "__main__.py":  # the entry point runs the CLI
            continue
        for target in sorted(_runtime_imports(path)):
            if not _allowed(target, rules):
                bad.append(f"{rel}: imports {target}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_relative_imports() -> None:
    # exporter/job.py imports its options and the manifest writer relatively.
    found = _runtime_imports(PACKAGE / "exporter" / "job.py")
    assert {"skyexport.exporter.options", "skyexport.manifest.write"} <= found
    assert not _allowed("skyexport.sources.car.source", MAY_IMPORT["exporter"] or set())
    assert not _allowed("skyexport.cli.commands", MAY_IMPORT["sources"] or set())
    assert not _allowed("skyexport.cli.render", MAY_IMPORT["remote"] or set())
