# Repository CARs: CarScanner, the one sequential pass that frames every block (and
# hashes the file on the way).

# --- the sequential scan -----------------------------------------------------------------

cdef struct ScanPending:
    Py_ssize_t at         # the block's CID in the scanner's buffer
    Py_ssize_t cn         # its CID's length
    Py_ssize_t n          # bytes of CID and data
    Py_ssize_t slot       # its entry in the run being built


cdef uint32_t block_verdict(const unsigned char* cid, Py_ssize_t cn,
                            const unsigned char* data, Py_ssize_t dn) noexcept nogil:
    """IX_GOOD when data's SHA-256 is the digest of `cid`, else IX_BAD."""
    cdef Py_ssize_t d = sha256_digest_at(cid, cn)
    cdef sx_sha256 h
    cdef unsigned char digest[32]
    if d < 0:
        return IX_BAD
    sx_sha256_init(&h)
    sx_sha256_update(&h, data, <size_t>dn)
    sx_sha256_final(&h, digest)
    return IX_GOOD if memcmp(digest, cid + d, 32) == 0 else IX_BAD


@cython.final
@cython.auto_pickle(False)
cdef class CarScanner:
    """Reads a CAR from `fd` once, front to back, from `start` (just after the header):
    `next_batch()` returns up to `n` (key, offset, length) tuples (offset: the block's CID;
    length: CID plus data), [] at the end.  `hasher` (hashlib, or None) is fed every byte
    of the file, the header included (`head` holds the bytes before `start`).

    With `verify`, build_index also decides every block's verdict as it passes (its data
    hashed against its CID: IX_GOOD or IX_BAD in its entry, so the walks never hash it
    again) and the file's SHA-256 is computed in the core (`sha256_hex()`; `hasher` must
    be None), both without the GIL.  With `more` (a callable), the file is one still being
    written: where the bytes end before `limit` says the file does, or at `limit`, more()
    is called -- it waits for more bytes and returns (new limit, final): the file ends at
    the limit once `final` is true; what it raises ends the scan."""
    cdef int fd
    cdef unsigned char* buf
    cdef Py_ssize_t cap, lo, hi       # buf holds file bytes [base + lo, base + hi)
    cdef int64_t base                 # file offset of buf[0]
    cdef readonly int64_t pos         # file offset of the next block
    cdef readonly int64_t blocks, size
    cdef int64_t limit                # bytes of the file read at most (-1: to its end)
    cdef bint eof
    cdef object hasher
    cdef object more                  # None, or the growing file's more()
    cdef bint final                   # more() said the file ends at `limit`
    cdef bint verify
    cdef bint hashing                 # the file's SHA-256 in fsha
    cdef sx_sha256 fsha
    cdef IxEntry* ents                # the run build_index is filling (verify), or NULL
    cdef Py_ssize_t slot              # where in ents the next block's entry goes
    cdef ScanPending* pending
    cdef Py_ssize_t npending
    cdef const unsigned char** msgs   # flush(): the pending blocks' data, their lengths,
    cdef size_t* lens                 # ... and their digests (32 bytes each)
    cdef unsigned char* digests
    cdef int64_t fpos                 # the file's bytes hashed into fsha so far
    cdef Spill good                   # verify with good_fd: every good block's CID
    cdef KeySet blobby                # ... and the good blocks holding the text "blob"
    cdef bint tabling                 # build_table: the check's blocks kept in `tab`,
    cdef TbBuild tab
    cdef bint spilling                # ... or, past its limit, in runs of a block index:
    cdef IxEntry* run                 # the run being filled (TB_RUN + TB_SLACK entries)
    cdef Py_ssize_t run_n
    cdef int64_t runs                 # runs written to the runs file
    cdef Py_ssize_t run_size          # entries of each (TB_RUN; fewer for tests)
    cdef unsigned char rootc[80]      # ... the commit's CID among them (tabling)
    cdef Py_ssize_t rootn
    cdef IxEntry scratch              # the entry verdicts go to when no index is built

    def __cinit__(self):
        self.cap = SCAN_CHUNK
        self.buf = <unsigned char*>PyMem_RawMalloc(self.cap)
        self.pending = NULL
        self.msgs = NULL
        self.lens = NULL
        self.digests = NULL
        self.ents = NULL
        if self.buf == NULL:
            raise MemoryError()

    def __init__(self, int fd, int64_t start, bytes head, hasher, int64_t limit=-1, *,
                 bint verify=False, more=None, int good_fd=-1):
        self.fd = fd
        self.limit = limit
        self.hasher = hasher
        self.more = more
        self.verify = verify
        if more is not None and limit < 0:
            raise ValueError("a growing file needs the limit written so far")
        if verify:
            if hasher is not None:
                raise ValueError("verify computes the file's SHA-256 itself")
            self.pending = <ScanPending*>PyMem_RawMalloc(SCAN_PENDING * sizeof(ScanPending))
            self.msgs = <const unsigned char**>PyMem_RawMalloc(
                SCAN_PENDING * sizeof(const unsigned char*))
            self.lens = <size_t*>PyMem_RawMalloc(SCAN_PENDING * sizeof(size_t))
            self.digests = <unsigned char*>PyMem_RawMalloc(SCAN_PENDING * 32)
            if (self.pending == NULL or self.msgs == NULL or self.lens == NULL
                    or self.digests == NULL):
                raise MemoryError()
            self.hashing = True
            sp_init(&self.good, good_fd)
            sx_sha256_init(&self.fsha)
            sx_sha256_update(&self.fsha, <const unsigned char*>PyBytes_AS_STRING(head),
                             <size_t>PyBytes_GET_SIZE(head))
        if hasher is not None:
            hasher.update(head)
        self.base = self.fpos = len(head)
        self.lo = self.hi = 0
        self.pos = start
        self.size = start
        if start != len(head):
            raise ValueError("head must be the bytes before start")

    def __dealloc__(self):
        PyMem_RawFree(self.buf)
        PyMem_RawFree(self.pending)
        PyMem_RawFree(<void*>self.msgs)
        PyMem_RawFree(self.lens)
        PyMem_RawFree(self.digests)
        sp_free(&self.good)
        ks_free(&self.blobby)
        PyMem_RawFree(self.tab.ents)
        PyMem_RawFree(self.run)

    cdef void keep_good(self, const unsigned char* cid, Py_ssize_t cn, bint blob) noexcept nogil:
        """A good block's CID into the spill (and the set when it may hold a blob ref)."""
        cdef unsigned char e[SP_ENTRY]
        if self.good.fd >= 0 and cid_entry(cid, cn, e):
            sp_add(&self.good, e)
            if blob:
                ks_add(&self.blobby, entry_key(e))

    cdef void keep_for_check(self, const unsigned char* cid, Py_ssize_t cn, int64_t off,
                             Py_ssize_t n, const unsigned char* data, Py_ssize_t dn,
                             bint blob) noexcept nogil:
        """build_table: a good block into the table when the check will read it -- the
        commit, a block shaped as a canonical MST node ({"e": ..., "l": ...}: a2 61 65),
        or one that may hold a blob ref.  `data` NULL: its bytes were not whole at once
        (kept whatever they are)."""
        cdef IxEntry* e
        if not self.tabling:
            return
        if (data == NULL or blob
                or (dn >= 3 and data[0] == 0xa2 and data[1] == 0x61 and data[2] == 0x65)
                or (cn == self.rootn and memcmp(cid, self.rootc, cn) == 0)):
            if self.spilling or (self.run != NULL and off >= (<int64_t>1 << TB_OFF_BITS)):
                if not self.spilling:
                    self.tab.off_over = True   # the loop spills the table
                e = &self.run[self.run_n]
                e.key = <uint64_t>cid_key(cid, cn)
                e.off = off
                e.n = <uint32_t>n | IX_GOOD
                self.run_n += 1
            else:
                tb_add(&self.tab, <uint64_t>cid_key(cid, cn), off, n)

    def sha256_hex(self):
        """The file's SHA-256 (verify), once the scan has reached its end."""
        cdef sx_sha256 h
        cdef unsigned char digest[32]
        if not self.hashing or not self.eof:
            raise ValueError("the file's SHA-256 is computed by a verifying scan, at its end")
        h = self.fsha
        sx_sha256_final(&h, digest)
        return PyBytes_FromStringAndSize(<const char*>digest, 32).hex()

    cdef void flush(self) noexcept nogil:
        """The verdicts of the pending blocks (whole in buf) into their entries, and the
        file's bytes in buf not yet hashed into fsha: the blocks' data hashed beside the
        file's bytes, two streams at once (sx_sha256_pair)."""
        cdef Py_ssize_t i, d
        cdef ScanPending* p
        cdef uint32_t v
        cdef bint blob
        for i in range(self.npending):
            p = &self.pending[i]
            self.msgs[i] = self.buf + p.at + p.cn
            self.lens[i] = <size_t>(p.n - p.cn)
        sx_sha256_pair(&self.fsha, self.buf + (self.fpos - self.base),
                       <size_t>(self.base + self.hi - self.fpos), self.msgs, self.lens,
                       <size_t>self.npending, self.digests)
        self.fpos = self.base + self.hi
        for i in range(self.npending):
            p = &self.pending[i]
            d = sha256_digest_at(self.buf + p.at, p.cn)
            v = (IX_GOOD if d >= 0 and memcmp(self.digests + 32 * i, self.buf + p.at + d, 32) == 0
                 else IX_BAD)
            self.ents[p.slot].n |= v
            if v == IX_GOOD:
                blob = has_blob_text(self.buf + p.at + p.cn, p.n - p.cn)
                self.keep_good(self.buf + p.at, p.cn, blob)
                self.keep_for_check(self.buf + p.at, p.cn, self.base + p.at, p.n,
                                    self.buf + p.at + p.cn, p.n - p.cn, blob)
        self.npending = 0

    cdef inline bint unsettled(self) noexcept nogil:
        """Are there pending verdicts, or file bytes in buf not hashed yet (flush)?"""
        return self.npending > 0 or (self.hashing and self.fpos < self.base + self.hi)

    cdef int wait_more(self) except -1:
        """The growing file's next limit (more())."""
        got = self.more()
        self.limit = max(self.limit, <int64_t>got[0])
        self.final = bool(got[1])
        return 0

    cdef int fill(self) except -1:
        """Read more bytes after buf[hi), keeping [pos, hi); 0 at end of file."""
        cdef Py_ssize_t keep_from = <Py_ssize_t>(self.pos - self.base), want
        cdef ssize_t got
        if self.unsettled():
            with nogil:
                self.flush()
        if keep_from > self.hi:
            keep_from = self.hi
        if keep_from > 0:
            memmove(self.buf, self.buf + keep_from, self.hi - keep_from)
            self.hi -= keep_from
            self.base += keep_from
        self.lo = 0
        while True:
            want = self.cap - self.hi
            if self.limit >= 0 and self.base + self.hi + want > self.limit:
                want = <Py_ssize_t>max(<int64_t>0, self.limit - self.base - self.hi)
            if want == 0:
                if self.more is not None and not self.final:
                    self.wait_more()
                    continue
                self.eof = True
                return 0
            with nogil:
                got = pread(self.fd, self.buf + self.hi, want, self.base + self.hi)
            if got < 0:
                if errno == EINTR:
                    continue
                raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
            if got == 0:
                if self.more is not None and not self.final:
                    self.wait_more()
                    continue
                self.eof = True
                return 0
            break
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
        if self.ents != NULL:
            return self.verify_block(e, at + k, c, off - k)
        # make sure the block's bytes exist (and are hashed), without keeping them
        while self.base + self.hi < self.pos:
            if self.eof or not self.fill():
                raise CarFormatError(f"truncated: the block at byte {off - k} needs "
                                     f"{L} bytes but the file ends at byte {self.size}")
        return 1

    cdef int verify_block(self, IxEntry* e, Py_ssize_t at, Py_ssize_t c,
                          int64_t block_at) except -1:
        """next_block's end when verifying: the block (its CID at buf[at], c bytes) is
        queued for its verdict when it is whole in the buffer, else hashed as it is read
        (its CID copied first: fill() moves the buffer)."""
        cdef ScanPending* p
        cdef unsigned char cid[256]
        cdef Py_ssize_t d, lo, hi
        cdef sx_sha256 h
        cdef unsigned char digest[32]
        if self.base + self.hi >= self.pos:
            if self.npending == SCAN_PENDING:
                with nogil:
                    self.flush()
            p = &self.pending[self.npending]
            p.at = at
            p.cn = c
            p.n = <Py_ssize_t>e.n
            p.slot = self.slot
            self.npending += 1
            return 1
        if c > 256:
            c = 256     # not a SHA-256 CID: its verdict is IX_BAD whatever its data
        memcpy(cid, self.buf + at, c)
        d = sha256_digest_at(cid, c)
        sx_sha256_init(&h)
        lo = at + c
        while True:
            hi = <Py_ssize_t>min(<int64_t>self.hi, self.pos - self.base)
            if d >= 0 and hi > lo:
                with nogil:
                    sx_sha256_update(&h, self.buf + lo, <size_t>(hi - lo))
            if self.base + self.hi >= self.pos:
                break
            if self.eof or not self.fill():
                raise CarFormatError(f"truncated: the block at byte {block_at} needs "
                                     f"{e.n} bytes but the file ends at byte {self.size}")
            lo = 0
        if d < 0:
            e.n |= IX_BAD
            return 1
        sx_sha256_final(&h, digest)
        if memcmp(digest, cid + d, 32) == 0:
            e.n |= IX_GOOD
            self.keep_good(cid, c, True)   # its bytes were not whole at once: may hold "blob"
            self.keep_for_check(cid, c, e.off, <Py_ssize_t>(e.n & IX_LEN), NULL, 0, True)
        else:
            e.n |= IX_BAD
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
        cdef BlockIndex ix
        if not 0 < run <= IX_RUN:
            raise ValueError(f"run must be in 1..{IX_RUN}")
        try:
            while True:
                if used == cap:
                    if cap == run:
                        if self.npending:
                            with nogil:
                                self.flush()
                        ix_put_run(runs_fd, buf, used, runs, run)
                        runs += 1
                        used = 0
                    else:
                        cap = min(max(cap * 2, 4096), run)
                        grown = <IxEntry*>PyMem_RawRealloc(buf, cap * sizeof(IxEntry))
                        if grown == NULL:
                            raise MemoryError()
                        buf = grown
                if self.verify:
                    self.ents = buf
                    self.slot = used
                if not self.next_block(&buf[used]):
                    break
                used += 1
                if on_batch is not None and self.blocks >= report:
                    on_batch()
                    report += every
            if on_batch is not None:
                on_batch()
            if self.unsettled():
                with nogil:
                    self.flush()
            self.ents = NULL
            if self.good.fd >= 0:
                with nogil:
                    sp_finish(&self.good)
                sp_check(&self.good, "writing the check's list of good blocks")
            ix = BlockIndex.__new__(BlockIndex)
            ix.setup(fd, self.blocks)
            ix.size = self.size
            if runs == 0:
                ix_sort(buf, used)
                ix_emit_all(ix, buf, used)
            else:
                ix_put_run(runs_fd, buf, used, runs, run)
                runs += 1
                PyMem_RawFree(buf)
                buf = NULL
                ix_merge(ix, runs_fd, runs, run)
            return ix
        finally:
            self.ents = NULL
            self.npending = 0
            PyMem_RawFree(buf)

    cdef int write_run(self, int runs_fd, Py_ssize_t n) except -1:
        """The first n entries of `run` sorted and written as the next run; the rest moved
        to its start."""
        ix_put_run(runs_fd, self.run, n, self.runs, self.run_size)
        self.runs += 1
        self.run_n -= n
        memmove(self.run, self.run + n, self.run_n * sizeof(IxEntry))
        return 0

    cdef int spill(self, int runs_fd) except -1:
        """The table past its limit: its entries (each block's index key read back from
        the file: the table keeps only its top bits) and every kept block from now on go
        to runs of a block index instead."""
        cdef Py_ssize_t i
        cdef int64_t off
        cdef unsigned char head[96]
        cdef Py_ssize_t got, c
        cdef IxEntry* e
        for i in range(self.tab.n):
            if self.run_n >= self.run_size:
                self.write_run(runs_fd, self.run_size)
            off = <int64_t>(self.tab.ents[i].ko & ((<uint64_t>1 << TB_OFF_BITS) - 1))
            got = pread_full(self.fd, head, min(<Py_ssize_t>self.tab.ents[i].n, 96), off)
            c = cid_len(head, got)
            if c <= 0:
                raise CarFormatError("the CAR changed while it was read (a block's CID)")
            e = &self.run[self.run_n]
            e.key = <uint64_t>cid_key(head, c)
            e.off = off
            e.n = self.tab.ents[i].n | IX_GOOD
            self.run_n += 1
        tb_give_up(&self.tab)
        self.tab.given_up = False
        self.spilling = True
        return 0

    def build_table(self, root, int index_fd=-1, int runs_fd=-1, Py_ssize_t every=20000,
                    on_batch=None, Py_ssize_t max_entries=TB_MAX, Py_ssize_t run=TB_RUN):
        """A verifying scan's other end (`skyexport fetch`): read the rest of the CAR,
        every block's verdict decided and the good ones spilled as build_index does, but
        no block index built; returns the BlockTable of the good blocks CarCheck reads
        (keep_for_check; `root`: the commit's CID).  Past `max_entries` (at most TB_MAX)
        or an offset the table cannot hold, those blocks go to a block index instead, in
        files `index_fd` (empty) and `runs_fd`, and that BlockIndex is returned (its
        verdicts all good; its runs of `run` entries, at most TB_RUN: fewer for tests);
        without those files, or out of memory, None.  Calls on_batch() every `every`
        blocks."""
        cdef IxEntry e
        cdef int64_t report = every
        cdef BlockTable table
        cdef BlockIndex ix
        cdef int more
        cdef int64_t kept
        cdef bytes r = bytes(root)
        cdef bint can_spill = index_fd >= 0 and runs_fd >= 0
        if not self.verify or self.good.fd < 0:
            raise ValueError("build_table needs a verifying scan with its good-blocks file")
        if not 0 <= max_entries <= TB_MAX:
            raise ValueError(f"max_entries must be in 0..{TB_MAX}")
        if not 0 < run <= TB_RUN:
            raise ValueError(f"run must be in 1..{TB_RUN}")
        self.tab.max = max_entries
        self.run_size = run
        if PyBytes_GET_SIZE(r) > 80:
            raise ValueError("the commit's CID is longer than 80 bytes")
        memcpy(self.rootc, PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r))
        self.rootn = PyBytes_GET_SIZE(r)
        if can_spill:
            self.run = <IxEntry*>PyMem_RawMalloc((TB_RUN + TB_SLACK) * sizeof(IxEntry))
            if self.run == NULL:
                raise MemoryError()
        self.tabling = True
        self.ents = &self.scratch     # verdicts are decided, not kept in an index
        self.slot = 0
        try:
            while True:
                more = self.next_block(&e)
                if self.spilling:
                    while self.run_n >= self.run_size:
                        self.write_run(runs_fd, self.run_size)
                elif self.tab.n >= self.tab.max or self.tab.off_over:
                    if not can_spill or self.tab.given_up:
                        self.tabling = False
                        tb_give_up(&self.tab)
                    else:
                        self.spill(runs_fd)
                if not more:
                    break
                if on_batch is not None and self.blocks >= report:
                    on_batch()
                    report += every
            if on_batch is not None:
                on_batch()
            if self.unsettled():
                with nogil:
                    self.flush()
            with nogil:
                sp_finish(&self.good)
            sp_check(&self.good, "writing the check's list of good blocks")
            if self.spilling:
                while self.run_n >= self.run_size:
                    self.write_run(runs_fd, self.run_size)
                kept = self.runs * self.run_size + self.run_n
                if self.run_n:
                    self.write_run(runs_fd, self.run_n)
                ix = BlockIndex.__new__(BlockIndex)
                ix.setup(index_fd, kept)
                ix.size = self.size
                ix_merge(ix, runs_fd, self.runs, self.run_size)
                return ix
            if self.tab.given_up or not self.tabling:
                return None
            table = BlockTable.__new__(BlockTable)
            table.adopt(&self.tab, self.size)
            return table
        finally:
            self.ents = NULL
            self.npending = 0
            self.tabling = self.spilling = False
            PyMem_RawFree(self.run)
            self.run = NULL


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
