"""The data file's writer thread.

The writer core hands over encoded blocks (about 1 MiB each); this thread compresses them
(with --compress), writes them with write(2) and feeds them to SHA-256.  All of that
releases the GIL, so on a machine with two cores the disk, the codec and the hash work
while the main thread steps SQLite and encodes the next block.

Blocks travel in a fixed pool of POOL_BLOCKS buffers, allocated once and reused: the sink
copies each block into a free buffer (waiting for one while the disk is slower than the
encoder), and the thread hands it back once written.  Memory is the same for ten posts or
a million, and no block is allocated, faulted in and freed per megabyte of output; a codec
adds its own fixed window (zlib's 256 KiB, zstd's a few MiB at the default level).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

from .._platform import fdatasync, fsync
from ..defaults import SUFFIXES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, NoReturn

POOL_BLOCKS = 3        # one being filled, two waiting for the disk
SYNC_EVERY = 32 << 20  # bytes written between fdatasyncs on the writer thread
WAIT_S = 0.5           # how often a caller waiting for a free buffer checks the thread

CODECS = tuple(SUFFIXES)
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
LEVELS = {"gzip": (1, 9), "zstd": (1, 22)}


class WriterThreadError(OSError):
    """An exception that was not an OSError on the writer thread (a codec's own error
    type, a bug), raised on the caller's thread as the write failure it is; the original
    is its __cause__."""


class CodecMissing(Exception):
    """The codec's module is not installed (zstd without `zstandard`)."""


def compressor(codec: str | None, level: int | None = None) -> Any:
    """An object with compress(bytes) -> bytes and flush() -> bytes, or None (no codec).
    gzip: one real gzip member (zlib, wbits 31: `gzip -dc` reads it; no name, mtime 0,
    so the same posts give the same bytes); zstd: one frame from `zstandard`."""
    if codec is None:
        return None
    lvl = DEFAULT_LEVELS[codec] if level is None else level
    if codec == "gzip":
        import zlib
        return zlib.compressobj(lvl, zlib.DEFLATED, 31, 9)
    try:
        import zstandard
    except ImportError:
        raise CodecMissing("zstd needs the zstandard package: pip install "
                           "'skyexport[zstd]' (or use --compress gzip)") from None
    return zstandard.ZstdCompressor(level=lvl).compressobj()


class FileSink:
    """Callable sink: `sink(block)` copies a block (any bytes-like object; it is not kept)
    and queues it; `close()` waits until everything is written (fsync'd unless told not
    to) and re-raises the first write error, if any.

    `out` is a file descriptor, or a binary file object without one (its write() is called
    on the writer thread).  `sync=False` never fsyncs (a pipe cannot be).  With `codec`
    ("gzip" or "zstd") the blocks are compressed on the writer thread: `sha256`/`written`
    describe the bytes written, `raw_sha256`/`raw_bytes` the bytes before compression
    (the same when there is no codec).

    Invariant: once an error has happened no further block is written, and the error is
    raised by the next call (`__call__` or `close`).  Every buffer is either free, queued,
    or being written: the thread returns each one to `_free` whatever happens to it.  An
    exception of any type on the thread is such an error (one that is not an OSError or a
    MemoryError reaches the caller as a WriterThreadError, an OSError, chained to it), and
    the thread marks its end itself (`_done`): the callers wait for that, never for
    Thread.join(), which a signal can interrupt into believing that a running thread
    ended (Python 3.10-3.12)."""

    def __init__(self, out: int | BinaryIO, *, sync: bool = True, codec: str | None = None,
                 level: int | None = None) -> None:
        self.fd = out if isinstance(out, int) else -1
        self._file = None if isinstance(out, int) else out
        self.sync = sync and self._file is None
        self._codec = compressor(codec, level)
        self.sha256 = hashlib.sha256()
        self.raw_sha256 = self.sha256 if self._codec is None else hashlib.sha256()
        self.written = 0
        self.raw_bytes = 0
        self._synced = 0
        self.error: BaseException | None = None
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(POOL_BLOCKS):
            self._free.put(bytearray())
        self._queue: queue.Queue[bytearray | None] = queue.Queue()
        self._done = threading.Event()  # set by the thread as it ends, whatever ends it
        self._stopping = False           # the end (None) is queued
        self._thread = threading.Thread(target=self._run, name="skyexport-writer",
                                        daemon=True)
        self._thread.start()

    def __call__(self, block: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            self._raise()
        while True:  # back-pressure: waits while every buffer is queued
            try:
                buf = self._free.get(timeout=WAIT_S)
                break
            except queue.Empty:
                if self._done.is_set():  # the thread is gone: nothing will come back
                    self._raise()
        buf[:] = block
        self._queue.put(buf)

    def _raise(self) -> NoReturn:
        exc = self.error
        if exc is None:  # cannot happen: the thread records why it ended
            exc = self.error = RuntimeError("the writer thread ended early")
        if isinstance(exc, (OSError, MemoryError)):
            raise exc
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else \
            f"{kind.__module__}.{kind.__qualname__}"
        raise WriterThreadError(f"{name}: {exc}") from exc

    def _stop(self) -> None:
        """Queue the end and wait until the thread has ended (a signal may interrupt the
        wait; the thread goes on, and the next call waits again)."""
        if not self._done.is_set():
            if not self._stopping:
                self._stopping = True
                self._queue.put(None)
            self._done.wait()

    def close(self, sync: bool = True) -> None:
        """Drain the queue, end the compressed stream, fsync, and stop the thread
        (idempotent)."""
        self._stop()
        if self.error is not None:
            self._raise()
        if sync and self.sync:
            fsync(self.fd)

    def abort(self) -> None:
        """Stop without writing the blocks still queued (failure path); waits for a write
        in progress, so that `written` counts every byte that went out."""
        if not self._done.is_set():
            self.error = self.error or OSError("export aborted")
            self._stop()

    def _run(self) -> None:
        try:
            while True:
                buf = self._queue.get()
                if buf is None:
                    try:
                        if self.error is None and self._codec is not None:
                            self._emit(self._codec.flush())  # the stream's end
                    except BaseException as exc:  # noqa: BLE001 - raised by close()
                        self.error = exc
                    return
                try:
                    if self.error is None:  # after an error: drain without writing
                        self._write(buf)
                except BaseException as exc:  # noqa: BLE001 - any type: raised by the caller
                    self.error = exc
                finally:
                    self._free.put(buf)
        finally:
            self._done.set()

    def _write(self, buf: bytearray) -> None:
        if self._codec is None:
            self._emit(buf)
        else:
            self.raw_sha256.update(buf)
            self._emit(self._codec.compress(buf))
        self.raw_bytes += len(buf)

    def _emit(self, data: bytes | bytearray) -> None:
        """Write `data` whole and hash it."""
        if not data:
            return
        # Every view is released on the way out, an exception included: the error is kept
        # with its traceback, whose frame must not hold a view of a pooled buffer (the
        # encoder resizes that buffer when it reuses it: BufferError while a view lives).
        with memoryview(data) as whole:
            off, end = 0, len(whole)
            while off < end:
                with whole[off:] as part:
                    if self._file is not None:
                        n = self._file.write(part)
                        off += len(part) if n is None else n
                    else:
                        off += os.write(self.fd, part)
        self.sha256.update(data)
        self.written += len(data)
        if self.sync and self.written - self._synced >= SYNC_EVERY:
            # Flush to disk as we go, on this thread, so that the fsync before publishing
            # has only the tail left to write.
            fdatasync(self.fd)
            self._synced = self.written
