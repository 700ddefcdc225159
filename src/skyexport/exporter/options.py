"""The export's options, checked in one place, before anything is opened or created.

`check_options` turns what `skyexport.export()` was given into `Options`, or raises an
OptionError naming the option as the caller wrote it (`since=` from Python, `--since` from
the command line).  It also reads what the kind of input refuses (`Source.refuses`,
sources/__init__.py): the source is recognised by its content first, not opened.

`tuning(...)` is the private seam of the command line and the tests: how options are named
in messages, how rows are read, how long a lock is waited for, how many bytes the writer
gathers before a flush.  None of it is part of `export()`'s signature.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path

from .._core import parse_bound
from ..defaults import FORMATS
from ..errors import OptionError
from ..sources import Extras, Source, source_kind
from ..sources.archive import Selection
from .sink import CODECS, DEFAULT_LEVELS, LEVELS, CodecMissing, compressor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO


class Tuning:
    """The private knobs of an export (see the module docstring).  `option` names an
    option in messages; `flush_size` is how many encoded bytes the writer gathers before
    handing them to the data file (default 1 MiB: a tiny one makes every row, and every
    large value mid-row, cross a flush); `row_source` ("pipe", "direct" or "cursor") and
    `busy_timeout_ms` choose how rows are read and how long a lock is waited for (the CLI
    passes SKYEXPORT_ROW_SOURCE and SKYEXPORT_BUSY_TIMEOUT_MS)."""

    __slots__ = ("option", "flush_size", "row_source", "busy_timeout_ms")

    def __init__(self, option: Callable[[str], str] | None = None,
                 flush_size: int | None = None, row_source: str | None = None,
                 busy_timeout_ms: int | None = None) -> None:
        self.option, self.flush_size = option, flush_size
        self.row_source, self.busy_timeout_ms = row_source, busy_timeout_ms


_TUNING: ContextVar[Tuning | None] = ContextVar("skyexport_tuning", default=None)
_UNTUNED = Tuning()


class tuning:
    """`with tuning(flush_size=..., ...):` every export() in the block uses these knobs."""

    def __init__(self, **knobs: Any) -> None:
        self.value = Tuning(**knobs)

    def __enter__(self) -> Tuning:
        self.token = _TUNING.set(self.value)
        return self.value

    def __exit__(self, *exc: object) -> None:
        _TUNING.reset(self.token)


def current_tuning() -> Tuning:
    return _TUNING.get() or _UNTUNED


class Options:
    """An export's options, checked (check_options)."""

    archive: Path
    kind: type[Source]
    stream: int | BinaryIO | None
    output: Path | None
    format: str
    did: str | None
    since: tuple[int, int] | None
    until: tuple[int, int] | None
    media: bool
    media_root: Path | None
    media_any_path: bool
    media_link: str
    batch_size: int
    keep_bad: bool
    formula_guard: bool
    bom: bool
    compress: str | None
    compress_level: int | None
    layout: str
    extras: Extras
    tuning: Tuning
    opt: Callable[[str], str]

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self, name, value)

    def selection(self, did: str | None) -> Selection:
        return Selection(did, self.since, self.until)


def check_options(archive: str | os.PathLike[str], output: object, *, format: str,
                  did: object, since: object, until: object, media: bool,
                  media_root: str | os.PathLike[str] | None, media_any_path: bool,
                  media_link: str, batch_size: object, on_bad_value: str,
                  csv_formula_guard: object, bom: object, compress: str | None,
                  compress_level: object, layout: str, tuning: Tuning,
                  collections: str | None = None,
                  blobs: str | os.PathLike[str] | None = None) -> Options:
    """Every option checked, in one place (see the module docstring)."""
    # Options are named as the caller wrote them: `since=` here, `--since` from the CLI.
    opt = tuning.option or _api_option
    if format not in FORMATS:
        raise OptionError(f"{opt('format')} {format!r} is not a format; choose one of "
                          f"{', '.join(FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"{opt('batch_size')} must be a positive integer, not "
                          f"{batch_size!r}")
    if on_bad_value not in ("error", "keep"):
        raise OptionError(f"{opt('on_bad_value')} must be 'error' or 'keep', not "
                          f"{on_bad_value!r}")
    if did is not None and not isinstance(did, str):
        raise OptionError(f"{opt('did')} must be a str, not {type(did).__name__}")
    bounds = []
    texts = []
    for name, value, end in (("since", since, False), ("until", until, True)):
        text = _bound_text(opt(name), value)
        texts.append(text)
        try:
            bounds.append(parse_bound(text, end) if text is not None else None)
        except ValueError as exc:
            raise OptionError(f"{opt(name)} {exc}") from None
    lo, hi = bounds
    if lo is not None and hi is not None and lo > hi:
        raise OptionError(f"{opt('since')} {texts[0]} is after {opt('until')} {texts[1]}")
    flush_size = tuning.flush_size
    if flush_size is not None and (isinstance(flush_size, bool)
                                   or not isinstance(flush_size, int) or flush_size < 1):
        raise OptionError(f"tuning(flush_size=) must be a positive integer, not "
                          f"{flush_size!r}")
    if media_link not in ("copy", "hardlink"):
        raise OptionError(f"{opt('media_link')} must be 'copy' or 'hardlink', not "
                          f"{media_link!r}")
    if media and media_root is not None and not os.path.isdir(media_root):
        raise OptionError(f"{opt('media_root')} {os.fspath(media_root)} is not a directory")
    if compress is not None and compress not in CODECS:
        raise OptionError(f"{opt('compress')} must be one of {', '.join(CODECS)}, not "
                          f"{compress!r}")
    if compress_level is not None:
        low, high = LEVELS.get(compress or "", (0, 0))
        if compress is None:
            raise OptionError(f"{opt('compress_level')} needs {opt('compress')}")
        if isinstance(compress_level, bool) or not isinstance(compress_level, int) \
                or not low <= compress_level <= high:
            raise OptionError(f"{opt('compress_level')} for {compress} must be an integer "
                              f"{low}..{high}, not {compress_level!r}")
    if layout not in ("time", "did"):
        raise OptionError(f"{opt('layout')} must be 'time' or 'did', not {layout!r}")
    for flag, on, default in (("csv_formula_guard", csv_formula_guard, False),
                              ("bom", bom, True)):
        if not isinstance(on, bool):
            raise OptionError(f"{opt(flag)} must be True or False, not {on!r}")
        if on != default and format != "csv":
            raise OptionError(f"{opt(flag)} applies to CSV only, not to {opt('format')} "
                              f"{format}; leave it out or export CSV")
    stream = _stream_target(output)
    shown = "-" if tuning.option is not None else repr(output)
    if stream is not None:
        if media:
            raise OptionError(f"{opt('media')} cannot be used with {opt('output')} {shown}: "
                              "a stream holds the data file only; export to a directory "
                              "for media")
        if layout != "time":
            raise OptionError(f"{opt('layout')} {layout} cannot be used with "
                              f"{opt('output')} {shown}: a stream has no directory")
    try:
        compressor(compress)
    except CodecMissing as exc:
        raise OptionError(f"{opt('compress')} {exc}") from None
    wanted: frozenset[str] | None = None
    if collections is not None:
        if stream is not None:
            raise OptionError(f"{opt('collections')} writes records/ files: export to a "
                              "directory, not a stream")
        wanted = parse_collections(collections, opt("collections"))
    if blobs is not None:
        if not media:
            raise OptionError(f"{opt('blobs')} needs {opt('media')} (the blobs are copied "
                              "into media/)")
        if not os.path.isdir(blobs):
            raise OptionError(f"{opt('blobs')} {os.fspath(blobs)!r} is not a directory")

    # What this kind of input cannot do, as it declares (Source.refuses).
    kind = source_kind(archive)
    refuses = {k: v.format(path=archive, media=opt("media"), blobs=opt("blobs"),
                           collections=opt("collections"))
               for k, v in kind.refuses.items()}
    for name, asked in (("collections", collections is not None),
                        ("blobs", blobs is not None)):
        if asked and name in refuses:
            raise OptionError(f"{opt(name)} with {archive}: {refuses[name]}")
    if media and blobs is None and "media" in refuses:
        raise OptionError(f"{opt('media')} with {archive}: {refuses['media']}")
    if stream is not None and "stream" in refuses:
        raise OptionError(f"{opt('output')} {shown} (a stream) with {archive}: "
                          f"{refuses['stream']}")
    if layout == "did" and did is None and "layout_did_without_did" in refuses:
        why = refuses["layout_did_without_did"]
        raise OptionError(f"{opt('layout')} did with {archive} needs {opt('did')} ({why})")
    return Options(
        archive=Path(archive), kind=kind, stream=stream,
        output=None if stream is not None else Path(output),  # type: ignore[arg-type]
        format=format, did=did, since=lo, until=hi, media=media,
        media_root=Path(media_root) if media_root is not None else None,
        media_any_path=media_any_path, media_link=media_link, batch_size=batch_size,
        keep_bad=on_bad_value == "keep", formula_guard=csv_formula_guard, bom=bom,
        compress=compress,
        compress_level=(DEFAULT_LEVELS[compress] if compress and compress_level is None
                        else compress_level),
        layout=layout, tuning=tuning, opt=opt,
        extras=Extras(records=collections is not None, collections=wanted,
                      blobs=Path(blobs) if blobs is not None else None, format=format,
                      keep_bad=on_bad_value == "keep", bom=bool(bom)))


_NSID = re.compile(r"[A-Za-z]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))+")


def parse_collections(value: str, shown: str = "--collections") -> frozenset[str] | None:
    """`collections`: `all` (None: every collection) or NSIDs separated by commas."""
    if value.strip() == "all":
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise OptionError(f"{shown} needs `all` or NSIDs separated by commas "
                          "(e.g. app.bsky.graph.follow,app.bsky.feed.like)")
    for name in names:
        if len(name) > 317 or not _NSID.fullmatch(name) or not name.split(".")[-1][:1].isalpha():
            raise OptionError(f"{shown}: {name!r} is not an NSID (e.g. "
                              "app.bsky.graph.follow); `skyexport info REPO.car` lists a "
                              "repository's collections")
    return frozenset(names)


def did_dirname(did: str, opt: Callable[[str], str]) -> str:
    """`did` as the directory name of `layout="did"`, or an OptionError."""
    if did in ("", ".", "..") or did.startswith(".") or "/" in did or "\0" in did:
        raise OptionError(f"{opt('layout')} did: DID {did!r} cannot be a directory name; "
                          f"use {opt('layout')} time")
    return did


def _api_option(name: str) -> str:
    return f"{name}="


def _stream_target(output: object) -> int | BinaryIO | None:
    """The descriptor or file object an export streams to, or None for a directory."""
    if isinstance(output, bool):
        raise OptionError(f"output must be a directory, a file descriptor or a binary file, "
                          f"not {output!r}")
    if isinstance(output, int):
        return output
    if isinstance(output, (str, os.PathLike)):
        return None
    if not callable(getattr(output, "write", None)):
        raise OptionError(f"output must be a directory, a file descriptor or a binary file, "
                          f"not {type(output).__name__}")
    flush = getattr(output, "flush", None)
    if callable(flush):
        flush()
    try:
        return int(output.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return output  # type: ignore[return-value]


def _bound_text(option: str, value: object) -> str | None:
    """--since/--until as text: a str as given, a date as YYYY-MM-DD, a datetime in RFC
    3339 (naive: UTC, as a zone-less text bound is)."""
    if value is None or isinstance(value, str):
        return value
    import datetime as _dt  # only for the API's date objects: not at every start-up

    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    raise OptionError(f"{option} must be a str, datetime.date or datetime.datetime, not "
                      f"{type(value).__name__}")
