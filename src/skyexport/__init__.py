"""skyexport: byte-exact, memory-flat exports of bskyarchive post archives to JSON, CSV and
JSON Lines.

    >>> import skyexport
    >>> result = skyexport.export("data/archive.db", "exports", format="csv")
    >>> result.directory, result.post_count, result.sha256

See README.md for the command line and the byte contract.  The names below are loaded on
first use, so that `skyexport --help` and small exports start fast.
"""

__version__ = "0.1.0"

__all__ = [
    "ArchiveError", "BadValueError", "ExportError", "ExportProgress", "ExportResult",
    "ExportWarning", "FetchError", "FetchProgress", "FetchResult", "ImportResult",
    "OptionError", "OutputError", "SelectionError",
    "VerifyReport", "export", "fetch", "import_car", "open_backup", "verify", "__version__",
]

_WHERE = {
    "ArchiveError": "errors", "BadValueError": "errors", "ExportError": "errors",
    "OptionError": "errors", "OutputError": "errors", "SelectionError": "errors",
    "ExportResult": "exporter.job", "ExportWarning": "exporter.job", "export": "exporter.job",
    "VerifyReport": "manifest.verify", "verify": "manifest.verify",
    "ExportProgress": "exporter.progress",
    "ImportResult": "sources.car.importer", "import_car": "sources.car.importer",
    "FetchError": "remote.errors", "FetchProgress": "remote.backup",
    "FetchResult": "remote.backup", "fetch": "remote.backup", "open_backup": "sources.backup",
}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .errors import (
        ArchiveError,
        BadValueError,
        ExportError,
        OptionError,
        OutputError,
        SelectionError,
    )
    from .exporter.job import ExportResult, ExportWarning, export
    from .exporter.progress import ExportProgress
    from .manifest.verify import VerifyReport, verify
    from .remote.backup import FetchProgress, FetchResult, fetch
    from .remote.errors import FetchError
    from .sources.backup import open_backup
    from .sources.car.importer import ImportResult, import_car


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'skyexport' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"skyexport.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
