"""Holding SIGINT and SIGTERM back while the export's own thread holds a lock.

Python runs a signal's handler in the main thread between any two bytecodes, and the
handlers that matter here raise: KeyboardInterrupt, and the CLI's exception for SIGTERM.
Raised inside `Condition.__enter__` just after its lock was taken, and before the `with`
that releases it began, the exception leaves the lock held for good.
The thread on the other side (progress delivery) then waits for it forever, and so does the
cleanup that follows the interruption: the final `failed` event was lost behind a 10 s
timeout.

So where the main thread takes such a lock (`ProgressChannel.put` and `close`) it runs
`with SHIELD:`.  While the shield is up a signal is only recorded; its handler runs, and
raises, as the shield comes down, when no lock is held.  The handlers are wrapped once, by
`install()` (when a channel starts), not per use: `with SHIELD` is a counter, cheap enough
for every batch.
"""

from __future__ import annotations

import signal
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    Handler = Callable[[int, FrameType | None], object]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Shield:
    """Wraps the Python handlers of SIGNALS while anything has it installed (a count), and
    holds signals back while the main thread is inside `with shield:` (a depth).  Only the
    main thread runs Python signal handlers, so on other threads all of it is a no-op."""

    def __init__(self) -> None:
        self.users = 0
        self.depth = 0
        self.pending: list[int] = []
        self.saved: dict[int, Handler] = {}

    @staticmethod
    def _on_main() -> bool:
        return threading.get_ident() == threading.main_thread().ident

    def install(self) -> bool:
        """Start holding signals back inside `with shield:`; returns whether it did (on the
        main thread), to be passed to `uninstall`."""
        if not self._on_main():
            return False
        self.users += 1
        if self.users == 1 and not self.saved:  # (saved: still ours, left off the main thread)
            for sig in SIGNALS:
                handler = signal.getsignal(sig)
                if callable(handler):  # SIG_DFL and SIG_IGN never raise in Python
                    self.saved[sig] = handler
                    signal.signal(sig, self._handler)
        return True

    def uninstall(self, installed: bool) -> None:
        """Undo one `install()`; with the last, put the original handlers back (unless
        something replaced ours meanwhile) and run any signal still held back."""
        if not installed:
            return
        self.users -= 1
        if self.users or not self._on_main():
            return  # off the main thread no handler can be set: ours stays, forwarding
        saved, self.saved = self.saved, {}
        for sig, handler in saved.items():
            if signal.getsignal(sig) == self._handler:
                signal.signal(sig, handler)
        self._release(saved)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending.append(signum)
        else:
            self.saved[signum](signum, frame)

    def __enter__(self) -> None:
        if self._on_main():
            self.depth += 1

    def __exit__(self, *exc: object) -> None:
        if self._on_main():
            self.depth -= 1
            if not self.depth and self.pending:
                self._release(self.saved)

    def _release(self, handlers: dict[int, Handler]) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            handler = handlers.get(signum)
            if handler is not None:
                handler(signum, None)  # raises, as it would have where it was held back


SHIELD = Shield()
