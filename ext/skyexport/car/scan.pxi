# Repository CARs: CarScanner, the one sequential pass that frames every block (and
# hashes the file on the way).

# --- the sequential scan -----------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class CarScanner:
    """Reads a CAR from `fd` once, front to back, from `start` (just after the header):
    `next_batch()` returns up to `n` (key, offset, length) tuples (offset: the block's CID;
    length: CID plus data), [] at the end.  `hasher` (hashlib, or None) is fed every byte
    of the file, the header included (`head` holds the bytes before `start`)."""
    cdef int fd
    cdef unsigned char* buf
    cdef Py_ssize_t cap, lo, hi       # buf holds file bytes [base + lo, base + hi)
    cdef int64_t base                 # file offset of buf[0]
    cdef readonly int64_t pos         # file offset of the next block
    cdef readonly int64_t blocks, size
    cdef int64_t limit                # bytes of the file read at most (-1: to its end)
    cdef bint eof
    cdef object hasher

    def __cinit__(self):
        self.cap = SCAN_CHUNK
        self.buf = <unsigned char*>PyMem_RawMalloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()

    def __init__(self, int fd, int64_t start, bytes head, hasher, int64_t limit=-1):
        self.fd = fd
        self.limit = limit
        self.hasher = hasher
        if hasher is not None:
            hasher.update(head)
        self.base = len(head)
        self.lo = self.hi = 0
        self.pos = start
        self.size = start
        if start != len(head):
            raise ValueError("head must be the bytes before start")

    def __dealloc__(self):
        PyMem_RawFree(self.buf)

    cdef int fill(self) except -1:
        """Read more bytes after buf[hi), keeping [pos, hi); 0 at end of file."""
        cdef Py_ssize_t keep_from = <Py_ssize_t>(self.pos - self.base), want
        cdef ssize_t got
        if keep_from > self.hi:
            keep_from = self.hi
        if keep_from > 0:
            memmove(self.buf, self.buf + keep_from, self.hi - keep_from)
            self.hi -= keep_from
            self.base += keep_from
        self.lo = 0
        want = self.cap - self.hi
        if self.limit >= 0 and self.base + self.hi + want > self.limit:
            want = <Py_ssize_t>max(<int64_t>0, self.limit - self.base - self.hi)
        if want == 0:
            self.eof = True
            return 0
        with nogil:
            got = pread(self.fd, self.buf + self.hi, want, self.base + self.hi)
        if got < 0:
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
        if got == 0:
            self.eof = True
            return 0
        if self.hasher is not None:
            self.hasher.update(PyMemoryView_FromMemory(<char*>self.buf + self.hi, got,
                                                       PyBUF_READ))
        self.hi += got
        self.size = self.base + self.hi
        return 1

    cdef int next_block(self, IxEntry* e) except -1:
        """The next block's (key, offset, length) in e: 1, or 0 at a clean end."""
        cdef uint64_t L
        cdef Py_ssize_t k, c, at
        cdef int64_t off
        # the bytes of the next block header (varint + CID) must be in the buffer
        while True:
            at = <Py_ssize_t>(self.pos - self.base)
            if at < self.hi:
                k = uvarint(self.buf + at, self.hi - at, &L)
                if k > 0:
                    c = cid_len(self.buf + at + k, self.hi - at - k)
                    if c > 0 or c < 0:
                        break
                elif k < 0:
                    raise CarFormatError(f"invalid block length varint at byte {self.pos}")
            if self.eof or not self.fill():
                if self.pos == self.size:
                    return 0  # a clean end
                raise CarFormatError(f"truncated: the block at byte {self.pos} is cut "
                                     f"off (the file ends at byte {self.size})")
        if c < 0:
            raise CarFormatError(f"the block at byte {self.pos} does not start with a CID")
        if L < <uint64_t>c:
            raise CarFormatError(f"the block at byte {self.pos} has an impossible length "
                                 f"{L}")
        if L > MAX_BLOCK:
            raise CarFormatError(f"the block at byte {self.pos} is {L} bytes; atproto allows "
                                 f"at most {MAX_BLOCK >> 20} MiB per block")
        off = self.pos + k
        e.key = <uint64_t>cid_key(self.buf + at + k, c)
        e.off = off
        e.n = <uint32_t>L
        self.blocks += 1
        self.pos = off + <int64_t>L
        # make sure the block's bytes exist (and are hashed), without keeping them
        while self.base + self.hi < self.pos:
            if self.eof or not self.fill():
                raise CarFormatError(f"truncated: the block at byte {off - k} needs "
                                     f"{L} bytes but the file ends at byte {self.size}")
        return 1

    def next_batch(self, Py_ssize_t n):
        """Up to n (key, offset, length) tuples of the next blocks, [] at the end."""
        out = []
        cdef IxEntry e
        while len(out) < n and self.next_block(&e):
            out.append((<int64_t>e.key, e.off, <int64_t>e.n))
        return out

    def build_index(self, int fd, int runs_fd, Py_ssize_t every=20000, on_batch=None,
                    Py_ssize_t run=IX_RUN):
        """Read the rest of the CAR and write its block index into file `fd` (empty, read
        and written by offset): every block's (key, offset, length) sorted by key.  Runs
        of up to `run` entries (at most IX_RUN; fewer for tests) are sorted in RAM; when
        there is more than one they go to file `runs_fd` and are merged from there.  Calls
        on_batch() every `every` blocks.  Returns the BlockIndex over `fd`."""
        cdef IxEntry* buf = NULL
        cdef IxEntry* grown
        cdef Py_ssize_t cap = 0, used = 0
        cdef int64_t runs = 0, report = every
        cdef IxEntry e
        cdef BlockIndex ix
        if not 0 < run <= IX_RUN:
            raise ValueError(f"run must be in 1..{IX_RUN}")
        try:
            while self.next_block(&e):
                if used == cap:
                    if cap == run:
                        ix_sort(buf, used)
                        pwrite_all(runs_fd, buf, used * sizeof(IxEntry),
                                   runs * run * <int64_t>sizeof(IxEntry))
                        runs += 1
                        used = 0
                    else:
                        cap = min(max(cap * 2, 4096), run)
                        grown = <IxEntry*>PyMem_RawRealloc(buf, cap * sizeof(IxEntry))
                        if grown == NULL:
                            raise MemoryError()
                        buf = grown
                buf[used] = e
                used += 1
                if on_batch is not None and self.blocks >= report:
                    on_batch()
                    report += every
            if on_batch is not None:
                on_batch()
            ix_sort(buf, used)
            ix = BlockIndex.__new__(BlockIndex)
            ix.setup(fd, self.blocks)
            ix.size = self.size
            if runs == 0:
                ix_emit_all(ix, buf, used)
            else:
                pwrite_all(runs_fd, buf, used * sizeof(IxEntry),
                           runs * run * <int64_t>sizeof(IxEntry))
                runs += 1
                PyMem_RawFree(buf)
                buf = NULL
                ix_merge(ix, runs_fd, runs, run)
            return ix
        finally:
            PyMem_RawFree(buf)


def pread_bytes(int fd, Py_ssize_t n, int64_t off):
    """Exactly n bytes of fd at off, or fewer at end of file."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* p = PyBytes_AS_STRING(out)
    cdef Py_ssize_t done = 0
    cdef ssize_t got
    while done < n:
        with nogil:
            got = pread(fd, p + done, n - done, off + done)
        if got < 0:
            if errno == EINTR:
                continue
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
        if got == 0:
            return out[:done]
        done += got
    return out
