"""The exceptions skyexport raises.  Every one is an ExportError; messages are one line that
says what went wrong, where, and what to do about it."""

from __future__ import annotations


class ExportError(Exception):
    """An export did not complete.  Nothing was published."""


class OptionError(ExportError, ValueError):
    """An option value is wrong (bad date, batch size, format...).  The CLI exits 2."""


class SelectionError(ExportError):
    """The options select nothing the archive could hold: a DID it has no post of."""


class ArchiveError(ExportError):
    """The archive cannot be read: missing, not SQLite, no posts table, corrupt, locked."""


class OutputError(ExportError, OSError):
    """The export cannot be written: OUTPUT unusable, disk full, file size limit."""


class BadValueError(ExportError, ValueError):
    """A stored value cannot be exported under --on-bad-value error."""

    def __init__(self, uri: str, column: str, value: str) -> None:
        self.uri = uri
        self.column = column
        self.value = value
        super().__init__(
            f"post {uri}: {column} holds {value!r}, which is "
            + ("not a readable timestamp" if column.endswith("_at") else "not valid JSON")
            + "; rerun with --on-bad-value keep to export it as text and list it in the"
            " manifest's warnings"
        )
