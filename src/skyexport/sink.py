"""The data file's writer thread.

The writer core hands over encoded blocks (about 1 MiB each); this thread writes them with
write(2) and feeds them to SHA-256.  Both release the GIL, so on a machine with two cores
the disk and the hash work while the main thread steps SQLite and encodes the next block.
The queue is bounded: at most QUEUE_BLOCKS blocks wait, so memory stays flat if the disk is
slower than the encoder (the encoder then waits on `put`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

QUEUE_BLOCKS = 2
SYNC_EVERY = 32 << 20  # bytes written between fdatasyncs on the writer thread


class FileSink:
    """Callable sink: `sink(block)` queues a block; `close()` waits until everything is
    on disk (fsync'd) and re-raises the first write error, if any.

    Invariant: once an error has happened no further block is written, and the error is
    raised by the next call (`__call__` or `close`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.written = 0
        self._synced = 0
        self.error: OSError | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_BLOCKS)
        self._thread = threading.Thread(target=self._run, name="skyexport-writer",
                                        daemon=True)
        self._thread.start()

    def __call__(self, block: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(block)

    def close(self, sync: bool = True) -> None:
        """Drain the queue, fsync, and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error
        if sync:
            os.fsync(self.fd)

    def abort(self) -> None:
        """Stop without waiting for queued blocks to reach the disk (failure path)."""
        if self._thread.is_alive():
            self.error = self.error or OSError("export aborted")
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is None:
                return
            if self.error is not None:
                continue  # drain without writing
            try:
                view = memoryview(block)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                self.sha256.update(block)
                self.written += len(block)
                if self.written - self._synced >= SYNC_EVERY:
                    # Flush to disk as we go, on this thread, so that the fsync before
                    # publishing has only the tail left to write.
                    os.fdatasync(self.fd)
                    self._synced = self.written
            except OSError as exc:
                self.error = exc
