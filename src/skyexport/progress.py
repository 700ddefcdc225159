"""Progress events and their consumers (the Python callback, the bar, JSON lines).

The export produces an `ExportProgress` after every batch and at least every
`HEARTBEAT_S` seconds in every phase.  Consumers never slow the export down: events go
through a `ProgressChannel`, a bounded mailbox drained by one delivery thread, so a slow
callback only sees fewer (still monotonic) events, never stalls the writer.  The final
event (completed/failed) is always delivered, last.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Literal

import msgspec

Status = Literal["queued", "running", "completed", "failed"]

HEARTBEAT_S = 1.0  # well inside SC-004's 5 s
MAILBOX = 256      # events held for a slow consumer before the oldest are dropped


@dataclass(frozen=True, slots=True)
class ExportProgress:
    """One progress event.  Counts only grow; `posts_total`/`media_total` are exact
    (counted in the export's own snapshot)."""

    status: Status
    posts_processed: int
    posts_total: int
    media_copied: int
    media_total: int
    bytes_written: int
    elapsed_s: float
    error: str | None = None

    @property
    def rate(self) -> float:
        """Posts per second so far."""
        return self.posts_processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def elapsed(self) -> float:
        return self.elapsed_s


class ProgressChannel:
    """Hands events to `callback` on a delivery thread, coalescing under back-pressure."""

    def __init__(self, callback: Callable[[ExportProgress], object]) -> None:
        self._callback = callback
        self._events: collections.deque[ExportProgress] = collections.deque(maxlen=MAILBOX)
        self._cond = threading.Condition()
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="skyexport-progress",
                                        daemon=True)
        self._thread.start()

    def put(self, event: ExportProgress) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify()

    def close(self) -> None:
        """Deliver what is queued (the final event included), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._events and not self._closed:
                    self._cond.wait()
                if not self._events:
                    return
                event = self._events.popleft()
            if self.error is None:
                try:
                    self._callback(event)
                except BaseException as exc:  # reported by the export when it ends
                    self.error = exc


class JsonLinesReporter:
    """`--progress jsonl`: one JSON object per line on stderr (DESIGN.md's keys), at most
    one per `interval_s` except the first and the final one."""

    def __init__(self, stream: IO[str] | None = None, interval_s: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last = -1e9

    def __call__(self, ev: ExportProgress) -> None:
        now = time.monotonic()
        if ev.status == "running" and now - self._last < self.interval_s:
            return
        self._last = now
        line = {
            "status": ev.status, "posts_processed": ev.posts_processed,
            "posts_total": ev.posts_total, "media_copied": ev.media_copied,
            "media_total": ev.media_total, "bytes_written": ev.bytes_written,
            "elapsed_s": round(ev.elapsed_s, 3), "rate": round(ev.rate, 1),
        }
        if ev.error is not None:
            line["error"] = ev.error
        self.stream.write(msgspec.json.encode(line).decode() + "\n")
        self.stream.flush()


class BarReporter:
    """`--progress bar`: a live rich bar (count, rate, ETA, bytes) on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                                   TextColumn, TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9,.0f} posts/s"), TimeRemainingColumn(),
            TextColumn("{task.fields[size]}"),
            console=Console(stderr=True), transient=False, refresh_per_second=8,
        )
        self._DownloadColumn = DownloadColumn
        self._posts = None
        self._media = None
        self._started = False

    def __call__(self, ev: ExportProgress) -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        size = _human(ev.bytes_written)
        if self._posts is None:
            self._posts = self._progress.add_task("posts", total=ev.posts_total or None,
                                                  rate=0.0, size=size)
        self._progress.update(self._posts, completed=ev.posts_processed, rate=ev.rate,
                              size=size)
        if ev.media_total:
            if self._media is None:
                self._media = self._progress.add_task("media", total=ev.media_total,
                                                      rate=0.0, size="")
            self._progress.update(self._media, completed=ev.media_copied)
        if ev.status in ("completed", "failed"):
            self._progress.stop()


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
