"""The data file's writer thread.

The writer core hands over encoded blocks (about 1 MiB each); this thread writes them with
write(2) and feeds them to SHA-256.  Both release the GIL, so on a machine with two cores
the disk and the hash work while the main thread steps SQLite and encodes the next block.

Blocks travel in a fixed pool of POOL_BLOCKS buffers, allocated once and reused: the sink
copies each block into a free buffer (waiting for one while the disk is slower than the
encoder), and the thread hands it back once written.  Memory is the same for ten posts or
a million, and no block is allocated, faulted in and freed per megabyte of output.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

POOL_BLOCKS = 3        # one being filled, two waiting for the disk
SYNC_EVERY = 32 << 20  # bytes written between fdatasyncs on the writer thread


class FileSink:
    """Callable sink: `sink(block)` copies a block (any bytes-like object; it is not kept)
    and queues it; `close()` waits until everything is on disk (fsync'd) and re-raises the
    first write error, if any.

    Invariant: once an error has happened no further block is written, and the error is
    raised by the next call (`__call__` or `close`).  Every buffer is either free, queued,
    or being written: the thread returns each one to `_free` whatever happens to it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.written = 0
        self._synced = 0
        self.error: OSError | None = None
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(POOL_BLOCKS):
            self._free.put(bytearray())
        self._queue: queue.Queue[bytearray | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="skyexport-writer",
                                        daemon=True)
        self._thread.start()

    def __call__(self, block: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            raise self.error
        buf = self._free.get()  # back-pressure: waits while every buffer is queued
        buf[:] = block
        self._queue.put(buf)

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
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            buf = self._queue.get()
            if buf is None:
                return
            try:
                if self.error is None:  # after an error: drain without writing
                    self._write(buf)
            except OSError as exc:
                self.error = exc
            finally:
                self._free.put(buf)

    def _write(self, buf: bytearray) -> None:
        view = memoryview(buf)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.sha256.update(buf)
        self.written += len(buf)
        if self.written - self._synced >= SYNC_EVERY:
            # Flush to disk as we go, on this thread, so that the fsync before publishing
            # has only the tail left to write.
            os.fdatasync(self.fd)
            self._synced = self.written
