"""Progress events and their consumers (the Python callback, the bar, JSON lines).

The export produces an `ExportProgress` after every batch that wrote posts, and at least
every `HEARTBEAT_S` seconds in every phase (counting, a long sort, copying media, syncing the
data file): the export's own thread checks the clock from inside SQLite steps and per media
file, and the delivery thread makes an event of its own whenever none came for
`HEARTBEAT_S` (so even one long system call cannot silence progress).

Consumers never slow the export down.  Events go through a `ProgressChannel`: a bounded
mailbox drained by one delivery thread.  A `running` event that has waited `COALESCE_S`
while a newer one is queued is dropped in favour of the newer one, so a slow callback sees
fewer, fresher events, never a growing backlog, and the writer never waits for it.  A
consumer that keeps up sees every event.  The final event (`completed` or `failed`) is
always delivered, last, before `export()` returns.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import warnings
from collections.abc import Callable

from .._record import Record
from .signals import SHIELD

# typing is not imported at run time: start-up is part of every export.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Literal

    from rich.progress import TaskID

    Status = Literal["queued", "running", "completed", "failed"]

FINAL: tuple[str, ...] = ("completed", "failed")

HEARTBEAT_S = 1.0    # an event at least this often in every phase (5 s is the most allowed)
COALESCE_S = 1.0     # a queued running event this old gives way to a newer one
CLOSE_GRACE_S = 0.5  # at the end, how long a lagging consumer may take to catch up
CLOSE_TIMEOUT_S = 10.0  # ... and how long one callback may block the end of the export
MAILBOX = 1024       # hard bound on queued events (older running events give way)


class ExportProgress(Record):
    """One progress event.

    - `status`: `queued` (the job started; totals not counted yet, both 0), `running`,
      then exactly one of `completed` or `failed` (with `error`, one line), always last.
    - `posts_processed`: posts written so far; `posts_total`: the exact number the export
      will write (counted in the export's own snapshot; 0 while `queued`).
    - `media_copied`: media rows handled so far (copied, found already present, or
      reported missing); `media_total`: the media rows of the exported posts.  Both 0
      without `media=True`.  Files actually copied are `ExportResult.media_count`.
    - `bytes_written`: bytes of the data file produced so far; `elapsed_s`: seconds since
      the export started; `rate`: posts per second so far.

    - `car_blocks`, `car_bytes`: with a repository CAR as the source, the blocks framed and
      the bytes read of it while its posts are imported (status `queued`); 0 otherwise.

    Within one export every count and `elapsed_s` only grow from one event to the next.
    """

    __slots__ = ("status", "posts_processed", "posts_total", "media_copied", "media_total",
                 "bytes_written", "elapsed_s", "error", "car_blocks", "car_bytes")
    status: Status
    posts_processed: int
    posts_total: int
    media_copied: int
    media_total: int
    bytes_written: int
    elapsed_s: float
    error: str | None
    car_blocks: int
    car_bytes: int

    def __init__(self, status: Status, posts_processed: int, posts_total: int,
                 media_copied: int, media_total: int, bytes_written: int, elapsed_s: float,
                 error: str | None = None, car_blocks: int = 0, car_bytes: int = 0) -> None:
        self._set(status=status, posts_processed=posts_processed, posts_total=posts_total,
                  media_copied=media_copied, media_total=media_total,
                  bytes_written=bytes_written, elapsed_s=elapsed_s, error=error,
                  car_blocks=car_blocks, car_bytes=car_bytes)

    @property
    def rate(self) -> float:
        """Posts per second so far."""
        return self.posts_processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """The event as JSON-ready data: the keys README.md's Progress section shows, with
        bytes, rate and error."""
        d: dict[str, object] = {
            "status": self.status, "posts_processed": self.posts_processed,
            "posts_total": self.posts_total, "media_copied": self.media_copied,
            "media_total": self.media_total, "bytes_written": self.bytes_written,
            "elapsed_s": round(self.elapsed_s, 3), "rate": round(self.rate, 1),
        }
        if self.car_blocks:
            d["car_blocks"] = self.car_blocks
            d["car_bytes"] = self.car_bytes
        if self.error is not None:
            d["error"] = self.error
        return d


class ProgressChannel:
    """Hands events to `callback` on a delivery thread, coalescing under back-pressure.

    Invariants: events reach the callback in the order they were put, with counts that
    never decrease; nothing is delivered after the final event; `put` never blocks on
    the consumer.  `snapshot`, when given, makes the current state into an event; the
    delivery thread calls it when nothing was put for `heartbeat_s` seconds.
    """

    def __init__(self, callback: Callable[[ExportProgress], object],
                 snapshot: Callable[[], ExportProgress | None] | None = None,
                 heartbeat_s: float | None = None) -> None:
        self._callback = callback
        self._snapshot = snapshot
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self._queue: collections.deque[tuple[float, ExportProgress]] = collections.deque()
        self._cond = threading.Condition()
        self._last: ExportProgress | None = None  # the last event accepted
        self._last_put = time.monotonic()
        self._final = False    # a completed/failed event was accepted
        self._closing = False  # close() gave up waiting: deliver the final event now
        self.dropped = 0
        self.error: BaseException | None = None    # the callback raised it
        self.failure: BaseException | None = None  # the delivery thread itself stopped on it
        self._shielded = SHIELD.install()  # see signals.py: put and close take the lock
        self._thread = threading.Thread(target=self._run, name="skyexport-progress",
                                        daemon=True)
        self._thread.start()

    def idle_for(self) -> float:
        """Seconds since the last event was accepted."""
        return time.monotonic() - self._last_put

    def put(self, event: ExportProgress) -> None:
        with SHIELD, self._cond:
            self._accept(event)

    def _accept(self, event: ExportProgress) -> None:
        """Queue `event` (the lock is held)."""
        if self._final:
            return
        last = self._last
        if last is not None:
            # Counters read while the writer runs on another thread can be caught half-way
            # through a flush; never let a consumer see one go backwards.
            event = event._replace(
                posts_processed=max(event.posts_processed, last.posts_processed),
                media_copied=max(event.media_copied, last.media_copied),
                bytes_written=max(event.bytes_written, last.bytes_written),
                elapsed_s=max(event.elapsed_s, last.elapsed_s))
        now = time.monotonic()
        if len(self._queue) >= MAILBOX:
            self._drop_oldest_running()
        self._queue.append((now, event))
        self._last = event
        self._last_put = now
        self._final = event.status in FINAL
        self._cond.notify_all()

    def _drop_oldest_running(self) -> None:
        for i, (_t, ev) in enumerate(self._queue):
            if ev.status == "running":
                del self._queue[i]
                self.dropped += 1
                return

    def close(self, grace_s: float = CLOSE_GRACE_S,
              timeout_s: float | None = None) -> None:
        """Wait up to `grace_s` for the consumer to take what is queued; then skip the
        running events it has not reached, deliver the final event, and stop.  A callback
        that raised is reported here, as a RuntimeWarning; so is one still running after
        `timeout_s` (the final event then follows when it returns, still last).  A signal
        that came while the lock was held is raised here, after the handlers are restored."""
        try:
            with SHIELD, self._cond:
                self._cond.wait_for(lambda: not self._queue or self.error is not None
                                    or self.failure is not None, timeout=grace_s)
                self._closing = True
                self._final = True
                self._cond.notify_all()
            self._thread.join(CLOSE_TIMEOUT_S if timeout_s is None else timeout_s)
        finally:
            SHIELD.uninstall(self._shielded)
            self._shielded = False
        if self.failure is not None:
            warnings.warn(f"skyexport: progress delivery stopped on "
                          f"{type(self.failure).__name__}: {self.failure}; later events, the "
                          "final one included, were not delivered", RuntimeWarning,
                          stacklevel=3)
        elif self._thread.is_alive():
            warnings.warn("skyexport: the on_progress callback has not returned for "
                          f"{CLOSE_TIMEOUT_S if timeout_s is None else timeout_s:g} s; "
                          "the export ended without waiting for it", RuntimeWarning,
                          stacklevel=3)
        if self.error is not None:
            warnings.warn(f"skyexport: the on_progress callback raised "
                          f"{type(self.error).__name__}: {self.error}; it was not called "
                          "again", RuntimeWarning, stacklevel=3)

    def _next(self) -> ExportProgress | None:
        """The next event to deliver, waiting for one; None when done (lock held)."""
        while not self._queue:
            if self._closing:
                return None
            if self._final or self._snapshot is None:
                self._cond.wait()
                continue
            wait = self._last_put + max(self.heartbeat_s, 0.01) - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            try:
                event = self._snapshot()  # nothing for heartbeat_s: report the state as is
            except Exception:  # noqa: BLE001 - a heartbeat is best effort
                event = None
            if event is None:
                self._last_put = time.monotonic()
            else:
                self._accept(event)
        now = time.monotonic()
        queue = self._queue
        while len(queue) > 1 and queue[0][1].status == "running" and \
                (self._closing or now - queue[0][0] >= COALESCE_S):
            queue.popleft()
            self.dropped += 1
        event = queue.popleft()[1]
        if not queue:
            self._cond.notify_all()  # close() may be waiting for the consumer to catch up
        return event

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    event = self._next()
                if event is None:
                    return
                if self.error is None:
                    try:
                        self._callback(event)
                    except BaseException as exc:  # noqa: BLE001 - reported by close()
                        with self._cond:
                            self.error = exc
                            self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - never silently: close() reports it
            self.failure = exc
            with self._cond:
                self._cond.notify_all()  # close() may be waiting for the queue to drain


class JsonLinesReporter:
    """`--progress jsonl`: every event as one JSON object per line on `stream` (stderr):
    the keys `status, posts_processed, posts_total, media_copied, media_total,
    elapsed_s`, plus `bytes_written`, `rate` and, on failure, `error`.  The last line has
    status `completed` or `failed`."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, ev: ExportProgress) -> None:
        import msgspec  # only here: its import costs more than a small export takes

        self.stream.write(msgspec.json.encode(ev.to_dict()).decode() + "\n")
        self.stream.flush()


class BarReporter:
    """`--progress bar`: a live rich bar (count, rate, ETA, bytes) on stderr, plus a media
    bar when media is copied."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(file=stream) if stream is not None else Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:>5}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            TextColumn("{task.fields[size]}"),
            console=console, transient=False, refresh_per_second=8,
        )
        self._posts: TaskID | None = None
        self._media: TaskID | None = None
        self._started = False

    def __call__(self, ev: ExportProgress) -> None:
        p = self._progress
        if not self._started:
            p.start()
            self._started = True
        size = _human(ev.bytes_written)
        rate = f"{ev.rate:>9,.0f} posts/s"
        total = ev.posts_total if ev.status != "queued" else None
        if self._posts is None:
            self._posts = p.add_task("posts", total=total, rate=rate, size=size)
        p.update(self._posts, total=total, completed=ev.posts_processed, rate=rate, size=size)
        if ev.media_total:
            if self._media is None:
                self._media = p.add_task("media", total=ev.media_total, rate="", size="")
            p.update(self._media, total=ev.media_total, completed=ev.media_copied)
        if ev.status in FINAL:
            p.stop()  # the error itself is the caller's to report (the CLI prints it)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
