"""Record: the base of skyexport's small immutable result types (ExportProgress,
ExportWarning, ExportResult, ImportResult).  It gives them repr, equality, hashing, `_asdict()` and
`_replace()` from their `__slots__`.

Not dataclasses: importing that module costs more start-up time than a whole small
export takes, and start-up is part of every export (perf/README.md)."""

from __future__ import annotations

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Record"]


class Record:
    """Immutable: attributes are set once, by `__init__` through `_set`."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def _replace(self, **changes: object) -> Any:
        values = self._asdict()
        values.update(changes)
        new = object.__new__(type(self))
        Record._set(new, **values)
        return new

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))
