"""skyexport: byte-exact, memory-flat exports of bskyarchive post archives to JSON, CSV and
JSON Lines.

    >>> import skyexport
    >>> result = skyexport.export("data/archive.db", "exports", format="csv")
    >>> result.directory, result.post_count, result.sha256

See README.md for the command line and the byte contract.
"""

__version__ = "0.1.0"

from .errors import (
    ArchiveError,
    BadValueError,
    ExportError,
    OptionError,
    OutputError,
)
from .export import ExportResult, ExportWarning, export
from .manifest import VerifyReport, verify
from .progress import ExportProgress

__all__ = [
    "ArchiveError",
    "BadValueError",
    "ExportError",
    "ExportProgress",
    "ExportResult",
    "ExportWarning",
    "OptionError",
    "OutputError",
    "VerifyReport",
    "__version__",
    "export",
    "verify",
]
