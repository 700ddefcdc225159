# Repository CARs: the block index, an external sort of (key, offset, length) in a
# scratch file, so that memory does not grow with the CAR.

cdef extern from "sha256.h" nogil:
    # the core's SHA-256 (SHA extensions where the CPU has them, else portable C): the
    # walk hashes each block without a Python call; media/copy.pxi uses it too
    ctypedef struct sx_sha256:
        pass
    int sx_sha256_select(int accelerated)
    void sx_sha256_init(sx_sha256* s)
    void sx_sha256_update(sx_sha256* s, const unsigned char* p, size_t n)
    void sx_sha256_final(sx_sha256* s, unsigned char* out)
    void sx_sha256_pair(sx_sha256* a, const unsigned char* pa, size_t an,
                        const unsigned char** msgs, const size_t* lens, size_t n,
                        unsigned char* out)


# --- the block index: a sorted file of (key, offset, length) ---------------------------
#
# Keys are the last 8 bytes of a block's CID (of its SHA-256 digest: uniformly spread), so
# a directory of 2^bits positions, one per value of the top `bits` key bits, finds the few
# entries (about 16 to 32) a key can be among with one small read.  The directory is the
# only part in RAM: at most 2^IX_DIR_BITS positions (1 MB) whatever the CAR's size.  Equal
# keys (a repeated block, or two CIDs ending alike) sit side by side; the reader compares
# the CID at each one's offset.

cdef packed struct IxEntry:
    uint64_t key
    int64_t off           # the block's CID in the CAR
    uint32_t n            # bytes of CID and data (at most MAX_BLOCK), and a verdict flag


cdef enum:
    IX_RUN = 1 << 17      # entries sorted in RAM at once (2.5 MB)
    IX_MERGE = 256        # entries read ahead per run while merging
    IX_OUT = 4096         # entries written at once
    IX_WINDOW = 64        # entries one lookup reads at most at once
    IX_DIR_BITS = 17
    # A block's verdict, decided once (BlockIndex.decide) and kept in its entry's `n`:
    IX_GOOD = 0x80000000  # its data matches the CID it starts with
    IX_BAD = 0x40000000   # it does not, it cannot be checked, or it repeats a good copy
    IX_LEN = 0x3FFFFFFF


# Entries sort by key, then a verdict decided in the scan (CarScanner's verify) puts bad
# copies after the others (a lookup stops at the first bad one), then by offset.

cdef int ix_cmp(const void* a, const void* b) noexcept nogil:
    cdef const IxEntry* x = <const IxEntry*>a
    cdef const IxEntry* y = <const IxEntry*>b
    cdef uint32_t xb = x.n & IX_BAD, yb = y.n & IX_BAD
    if x.key != y.key:
        return -1 if x.key < y.key else 1
    if xb != yb:
        return -1 if xb < yb else 1
    if x.off != y.off:
        return -1 if x.off < y.off else 1
    return 0


cdef inline bint ix_less(const IxEntry* x, const IxEntry* y) noexcept nogil:
    if x.key != y.key:
        return x.key < y.key
    if (x.n & IX_BAD) != (y.n & IX_BAD):
        return (x.n & IX_BAD) < (y.n & IX_BAD)
    return x.off < y.off


cdef void ix_sort(IxEntry* a, Py_ssize_t n) noexcept nogil:
    if n > 1:
        qsort(a, n, sizeof(IxEntry), ix_cmp)


cdef int pwrite_all(int fd, const void* p, Py_ssize_t n, int64_t off) except -1:
    cdef const char* c = <const char*>p
    cdef ssize_t got
    while n > 0:
        with nogil:
            got = pwrite(fd, c, n, off)
        if got < 0:
            if errno == EINTR:
                continue
            raise ScratchWriteError(errno, strerror(errno).decode("utf-8", "replace"))
        c += got
        n -= got
        off += got
    return 0


cdef int ix_put_run(int fd, IxEntry* a, Py_ssize_t n, int64_t k, Py_ssize_t run) except -1:
    """a's n entries sorted and written to file fd as run k of runs of `run` entries
    (what ix_merge reads)."""
    ix_sort(a, n)
    pwrite_all(fd, a, n * sizeof(IxEntry), k * run * <int64_t>sizeof(IxEntry))
    return 0


cdef Py_ssize_t pread_full(int fd, void* p, Py_ssize_t n, int64_t off) except -1:
    """Bytes read into p: n, or fewer at end of file.  Without the GIL meanwhile (the
    other threads: the file's hash, the archive's inserts)."""
    cdef char* c = <char*>p
    cdef Py_ssize_t done = 0
    cdef ssize_t got
    while done < n:
        with nogil:
            got = pread(fd, c + done, n - done, off + done)
        if got < 0:
            if errno == EINTR:
                continue
            raise OSError(errno, strerror(errno).decode("utf-8", "replace"))
        if got == 0:
            break
        done += got
    return done


cdef int grow_buf(unsigned char** buf, Py_ssize_t* cap, Py_ssize_t n) except -1:
    """buf[0] (cap[0] bytes, PyMem_Raw) grown to hold at least n bytes."""
    cdef unsigned char* grown
    if n > cap[0]:
        grown = <unsigned char*>PyMem_RawRealloc(buf[0], n)
        if grown == NULL:
            raise MemoryError()
        buf[0], cap[0] = grown, n
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class BlockIndex:
    """The block index of a CAR (CarScanner.build_index): `count` entries sorted by key
    in a file, found through a directory in RAM.  `find(key)` lists the (offset, length)
    of the blocks whose CID has index key `key` (cid_index_key)."""
    cdef int fd
    cdef readonly int64_t count
    cdef readonly int64_t size        # bytes of the CAR it indexes
    cdef int bits
    cdef int64_t* dir                 # 2^bits + 1 positions
    cdef IxEntry win[IX_WINDOW]       # entries [win_lo, win_hi) of the file
    cdef int64_t win_lo, win_hi

    def __cinit__(self):
        self.fd = -1
        self.dir = NULL
        self.win_lo = self.win_hi = 0

    def __dealloc__(self):
        PyMem_RawFree(self.dir)

    cdef int setup(self, int fd, int64_t count) except -1:
        self.fd = fd
        self.count = count
        self.bits = 1
        while self.bits < IX_DIR_BITS and (count >> (self.bits + 4)) > 0:
            self.bits += 1
        self.dir = <int64_t*>PyMem_RawMalloc(((1 << self.bits) + 1) * sizeof(int64_t))
        if self.dir == NULL:
            raise MemoryError()
        return 0

    cdef int load(self, int64_t lo, int64_t hi) except -1:
        """Entries [lo, hi) (at most IX_WINDOW) into the window."""
        cdef Py_ssize_t want = <Py_ssize_t>(hi - lo) * sizeof(IxEntry)
        self.win_lo = self.win_hi = 0
        if pread_full(self.fd, self.win, want, lo * <int64_t>sizeof(IxEntry)) != want:
            raise CarFormatError("the block index is cut off (was it changed while "
                                 "reading?)")
        self.win_lo = lo
        self.win_hi = hi
        return 0

    cdef int64_t first(self, uint64_t key, int64_t* stop) except -1:
        """The position of the first entry whose key is >= `key`; every entry with that
        key is before stop[0]."""
        cdef uint64_t b = key >> (64 - self.bits)
        cdef int64_t lo = self.dir[b], hi = self.dir[b + 1], mid
        cdef uint64_t k
        stop[0] = hi
        while hi - lo > IX_WINDOW:  # a crowded bucket (not with SHA-256 digests)
            mid = lo + (hi - lo) // 2
            if pread_full(self.fd, &k, 8, mid * <int64_t>sizeof(IxEntry)) != 8:
                raise CarFormatError("the block index is cut off")
            if k < key:
                lo = mid + 1
            else:
                hi = mid
        if hi > lo and not (self.win_lo <= lo and hi <= self.win_hi):
            self.load(lo, hi)
        while lo < hi and self.win[lo - self.win_lo].key < key:
            lo += 1
        return lo

    cdef int get(self, int64_t i, IxEntry* e) except -1:
        """Entry i (< count)."""
        if not (self.win_lo <= i < self.win_hi):
            self.load(i, min(i + IX_WINDOW, self.count))
        e[0] = self.win[i - self.win_lo]
        return 0

    def find(self, key):
        """[(offset, length)] of the entries with index key `key`."""
        cdef uint64_t k = <uint64_t>(<int64_t>key)
        cdef int64_t stop
        cdef int64_t i = self.first(k, &stop)
        cdef IxEntry e
        out = []
        while i < stop:
            self.get(i, &e)
            if e.key != k:
                break
            out.append((e.off, <int64_t>(e.n & IX_LEN)))
            i += 1
        return out

    cdef uint64_t key_at(self, int64_t i) except? 0:
        cdef IxEntry e
        self.get(i, &e)
        return e.key

    cdef int put(self, int64_t i, const IxEntry* e) except -1:
        """Entry i (< count) rewritten, in the file and the window."""
        pwrite_all(self.fd, e, sizeof(IxEntry), i * <int64_t>sizeof(IxEntry))
        if self.win_lo <= i < self.win_hi:
            self.win[i - self.win_lo] = e[0]
        return 0

    cdef Py_ssize_t decide(self, int fd, uint64_t key, int64_t at, int64_t stop,
                           const unsigned char* want, Py_ssize_t wn, unsigned char** buf,
                           Py_ssize_t* cap, object sha256, int64_t* where) except -2:
        """Decide the verdict of every entry with index key `key` (from position `at`),
        once: each block is read and hashed at most once in the whole walk, however often
        it is looked up.  Good entries are moved before the bad ones, so a lookup stops at
        the first bad one.  Returns the data length if the last block read into buf is
        the good copy of `want`, else -1."""
        cdef IxEntry e, o
        cdef int64_t i = at, w = at
        cdef Py_ssize_t n, c, k, hit = -1, got
        cdef unsigned char head[96]
        cdef uint64_t v, code, dlen
        cdef list good = []
        while i < stop:
            self.get(i, &e)
            if e.key != key:
                break
            n = <Py_ssize_t>(e.n & IX_LEN)
            hit = -1
            got = pread_full(fd, head, min(n, 96), e.off)
            c = cid_len(head, got)
            ok = False
            if 0 < c <= n:
                cid = PyBytes_FromStringAndSize(<const char*>head, c)
                # a SHA-256 multihash: CIDv0, or CIDv1 = version, codec, code, length
                k = 2 if head[0] == 0x12 else 0
                if k == 0:
                    k = uvarint(head, c, &v)
                    k += uvarint(head + k, c - k, &v)
                    k += uvarint(head + k, c - k, &code)
                    k += uvarint(head + k, c - k, &dlen)
                else:
                    code, dlen = 0x12, 32
                if code == 0x12 and dlen == 32 and k + 32 == c and cid not in good:
                    grow_buf(buf, cap, n)
                    if pread_full(fd, buf[0], n, e.off) != n:
                        raise CarFormatError("the CAR changed while it was read (a block "
                                             "is cut off)")
                    digest = sha256(PyMemoryView_FromMemory(<char*>buf[0] + c, n - c,
                                                            PyBUF_READ)).digest()
                    ok = memcmp(PyBytes_AS_STRING(digest), head + k, 32) == 0
                    if ok:
                        good.append(cid)
                        if c == wn and memcmp(head, want, wn) == 0:
                            hit = n - c
                            where[0] = e.off
            e.n = (e.n & IX_LEN) | (IX_GOOD if ok else IX_BAD)
            if ok and i != w:   # entries [w, i) are bad: swap the first of them with i
                self.get(w, &o)
                self.put(w, &e)
                self.put(i, &o)
            else:
                self.put(i, &e)
            if ok:
                w += 1
            i += 1
        return hit

    cdef Py_ssize_t resolve(self, int fd, const unsigned char* cid, Py_ssize_t cn,
                            unsigned char** buf, Py_ssize_t* cap,
                            object sha256, int64_t* where) except -3:
        """The good copy of block `cid` (a SHA-256 CID) read into buf[0] (CID, then
        data; grown as needed), its offset in the CAR in where[0]: returns its data
        length; -1 when no block has that CID, -2 when every copy is damaged."""
        cdef uint64_t key = <uint64_t>cid_key(cid, cn)
        cdef int64_t stop, i
        cdef int64_t at = self.first(key, &stop)
        cdef IxEntry e
        cdef Py_ssize_t n, r
        cdef unsigned char head[96]
        if at >= stop:
            return -1
        self.get(at, &e)
        if e.key != key:
            return -1
        if not (e.n & (IX_GOOD | IX_BAD)):
            if at + 1 >= stop or self.key_at(at + 1) != key:
                # the only entry with this key (the usual case): no verdict to keep, since
                # any answer but its good copy ends the walk
                n = <Py_ssize_t>(e.n & IX_LEN)
                grow_buf(buf, cap, n)
                if pread_full(fd, buf[0], n, e.off) != n:
                    raise CarFormatError("the CAR changed while it was read (a block is "
                                         "cut off)")
                if n < cn or memcmp(buf[0], cid, cn) != 0:
                    return -1
                if block_verdict(cid, cn, buf[0] + cn, n - cn) != IX_GOOD:
                    return -2
                where[0] = e.off
                return n - cn
            r = self.decide(fd, key, at, stop, cid, cn, buf, cap, sha256, where)
            if r >= 0:
                return r
        i = at
        while i < stop:
            self.get(i, &e)
            if e.key != key or (e.n & IX_BAD):
                break
            n = <Py_ssize_t>(e.n & IX_LEN)
            grow_buf(buf, cap, n)
            if pread_full(fd, buf[0], n, e.off) != n:
                raise CarFormatError("the CAR changed while it was read (a block is cut "
                                     "off)")
            if n >= cn and memcmp(buf[0], cid, cn) == 0:
                where[0] = e.off
                return n - cn
            i += 1
        # no good copy: a damaged one, or none at all (read once, just before failing)
        while i < stop:
            self.get(i, &e)
            if e.key != key:
                break
            n = <Py_ssize_t>(e.n & IX_LEN)
            if (n >= cn and pread_full(fd, head, min(cn, 96), e.off) == min(cn, 96)
                    and memcmp(head, cid, cn) == 0):
                return -2
            i += 1
        return -1

    def block(self, int fd, cid):
        """(status, data) of block `cid`: (0, its data, checked), (1, None) missing,
        (2, None) damaged, (3, None) not a SHA-256 CID (it cannot be checked)."""
        cdef bytes c = bytes(cid)
        cdef unsigned char* buf = NULL
        cdef Py_ssize_t cap = 0, r, cn = PyBytes_GET_SIZE(c)
        cdef int64_t where
        if not sha256_cid(<const unsigned char*>PyBytes_AS_STRING(c), cn):
            return 3, None
        import hashlib
        try:
            r = self.resolve(fd, <const unsigned char*>PyBytes_AS_STRING(c), cn, &buf, &cap,
                             hashlib.sha256, &where)
            if r < 0:
                return (1 if r == -1 else 2), None
            return 0, PyBytes_FromStringAndSize(<const char*>buf + cn, r)
        finally:
            PyMem_RawFree(buf)


cdef Py_ssize_t pread_raw(int fd, void* p, Py_ssize_t n, int64_t off) noexcept nogil:
    """pread_full for a thread without the GIL: bytes read (fewer at end of file), -1 on
    an error (the caller's slow path reads again and reports it)."""
    cdef char* c = <char*>p
    cdef Py_ssize_t done = 0
    cdef ssize_t got
    while done < n:
        got = pread(fd, c + done, n - done, off + done)
        if got < 0:
            if errno == EINTR:
                continue
            return -1
        if got == 0:
            break
        done += got
    return done


cdef Py_ssize_t ix_fast(int ixfd, const int64_t* dir, int bits, int fd,
                        const unsigned char* cid, Py_ssize_t cn, IxEntry* win,
                        unsigned char* dst, Py_ssize_t room, int64_t* where,
                        bint good_ok=False) noexcept nogil:
    """BlockIndex.resolve's usual case, without the GIL (the walk's read-ahead thread,
    walk.pxi; the check's, check.pxi): block `cid`, a SHA-256 CID whose index key has
    exactly one entry, with no verdict yet (or, with `good_ok`, a good one: not hashed
    again), of at most `room` bytes, that starts with `cid` and whose data matches it,
    read into dst (CID, then data), its offset in where[0]; returns its data length.
    -1 for anything else: resolve() then reads it with its verdicts and its messages.
    ixfd, dir, bits: the BlockIndex's; `win` holds IX_WINDOW entries.  The index is only
    read: decide() rewrites entries of keys with two or more, which this never accepts,
    and their number per key does not change, so a read racing a rewrite still sees
    two."""
    cdef uint64_t key, b
    cdef int64_t lo, hi, i, k
    cdef Py_ssize_t n, want
    if not sha256_cid(cid, cn):
        return -1
    key = <uint64_t>cid_key(cid, cn)
    b = key >> (64 - bits)
    lo = dir[b]
    hi = dir[b + 1]
    if hi <= lo or hi - lo > IX_WINDOW:
        return -1
    want = <Py_ssize_t>(hi - lo) * sizeof(IxEntry)
    if pread_raw(ixfd, win, want, lo * <int64_t>sizeof(IxEntry)) != want:
        return -1
    k = hi - lo
    i = 0
    while i < k and win[i].key < key:
        i += 1
    if i == k or win[i].key != key or (i + 1 < k and win[i + 1].key == key):
        return -1
    if win[i].n & IX_BAD or (win[i].n & IX_GOOD and not good_ok):
        return -1
    n = <Py_ssize_t>(win[i].n & IX_LEN)
    if n > room or n < cn:
        return -1
    if (pread_raw(fd, dst, n, win[i].off) != n or memcmp(dst, cid, cn) != 0
            or (not (win[i].n & IX_GOOD)
                and block_verdict(cid, cn, dst + cn, n - cn) != IX_GOOD)):
        return -1
    where[0] = win[i].off
    return n - cn


cdef bint sha256_cid(const unsigned char* cid, Py_ssize_t cn) noexcept nogil:
    """Is `cid` a whole CID whose multihash is SHA-256 (so that a block can be checked)?"""
    cdef Py_ssize_t i
    cdef uint64_t v, code, dlen
    if cn > 80 or cid_len(cid, cn) != cn:
        return False
    if cn == 34 and cid[0] == 0x12:
        return True
    i = uvarint(cid, cn, &v)
    i += uvarint(cid + i, cn - i, &v)
    i += uvarint(cid + i, cn - i, &code)
    i += uvarint(cid + i, cn - i, &dlen)
    return code == 0x12 and dlen == 32 and i + 32 == cn


cdef struct IxOut:
    IxEntry* buf          # IX_OUT entries
    Py_ssize_t n          # in buf, not yet written
    int64_t done          # entries written or in buf
    uint64_t bucket       # the next directory slot to fill


cdef int ix_put(BlockIndex ix, IxOut* o, const IxEntry* e) except -1:
    cdef uint64_t b = e.key >> (64 - ix.bits)
    while o.bucket <= b:
        ix.dir[o.bucket] = o.done
        o.bucket += 1
    o.buf[o.n] = e[0]
    o.n += 1
    o.done += 1
    if o.n == IX_OUT:
        pwrite_all(ix.fd, o.buf, o.n * sizeof(IxEntry),
                   (o.done - o.n) * <int64_t>sizeof(IxEntry))
        o.n = 0
    return 0


cdef int ix_end(BlockIndex ix, IxOut* o) except -1:
    if o.n:
        pwrite_all(ix.fd, o.buf, o.n * sizeof(IxEntry),
                   (o.done - o.n) * <int64_t>sizeof(IxEntry))
        o.n = 0
    while o.bucket <= (<uint64_t>1 << ix.bits):
        ix.dir[o.bucket] = o.done
        o.bucket += 1
    if o.done != ix.count:
        raise CarFormatError("the block index is incomplete (an internal error)")
    return 0


cdef int ix_emit_all(BlockIndex ix, IxEntry* a, Py_ssize_t n) except -1:
    cdef IxOut o
    cdef Py_ssize_t i
    o.buf = <IxEntry*>PyMem_RawMalloc(IX_OUT * sizeof(IxEntry))
    if o.buf == NULL:
        raise MemoryError()
    o.n = o.done = o.bucket = 0
    try:
        for i in range(n):
            ix_put(ix, &o, a + i)
        ix_end(ix, &o)
    finally:
        PyMem_RawFree(o.buf)
    return 0


cdef int ix_merge(BlockIndex ix, int src, int64_t runs, Py_ssize_t run) except -1:
    """Merge the `runs` sorted runs of file `src` (run r: entries [r * run, ...)) into
    the index file, with IX_MERGE entries of each in RAM."""
    cdef IxOut o
    cdef IxEntry* bufs = NULL
    cdef int64_t* nxt = NULL          # per run: its next entry in src
    cdef int64_t* end = NULL          # per run: its end in src
    cdef Py_ssize_t* at = NULL        # per run: its current entry in its buffer
    cdef Py_ssize_t* have = NULL      # per run: entries in its buffer
    cdef Py_ssize_t* heap = NULL      # runs by their current entry, smallest first
    cdef Py_ssize_t hn = 0, r, i, c, m
    cdef int64_t total = ix.count
    o.buf = NULL
    o.n = o.done = o.bucket = 0
    try:
        o.buf = <IxEntry*>PyMem_RawMalloc(IX_OUT * sizeof(IxEntry))
        bufs = <IxEntry*>PyMem_RawMalloc(runs * IX_MERGE * sizeof(IxEntry))
        nxt = <int64_t*>PyMem_RawMalloc(runs * sizeof(int64_t))
        end = <int64_t*>PyMem_RawMalloc(runs * sizeof(int64_t))
        at = <Py_ssize_t*>PyMem_RawMalloc(runs * sizeof(Py_ssize_t))
        have = <Py_ssize_t*>PyMem_RawMalloc(runs * sizeof(Py_ssize_t))
        heap = <Py_ssize_t*>PyMem_RawMalloc(runs * sizeof(Py_ssize_t))
        if (o.buf == NULL or bufs == NULL or nxt == NULL or end == NULL or at == NULL
                or have == NULL or heap == NULL):
            raise MemoryError()
        for r in range(runs):
            nxt[r] = r * <int64_t>run
            end[r] = min(nxt[r] + run, total)
            have[r] = at[r] = 0
            if ix_refill(src, bufs + r * IX_MERGE, &nxt[r], end[r], &have[r], &at[r]):
                # sift up
                i = hn
                hn += 1
                while i > 0:
                    c = (i - 1) // 2
                    if not ix_less(bufs + r * IX_MERGE + at[r],
                                   bufs + heap[c] * IX_MERGE + at[heap[c]]):
                        break
                    heap[i] = heap[c]
                    i = c
                heap[i] = r
        while hn:
            r = heap[0]
            ix_put(ix, &o, bufs + r * IX_MERGE + at[r])
            at[r] += 1
            if at[r] == have[r] and not ix_refill(src, bufs + r * IX_MERGE, &nxt[r],
                                                  end[r], &have[r], &at[r]):
                hn -= 1
                r = heap[hn]
                if hn == 0:
                    break
            # sift r down from the top
            i = 0
            while True:
                c = 2 * i + 1
                if c >= hn:
                    break
                m = heap[c]
                if c + 1 < hn and ix_less(bufs + heap[c + 1] * IX_MERGE + at[heap[c + 1]],
                                          bufs + m * IX_MERGE + at[m]):
                    c += 1
                    m = heap[c]
                if not ix_less(bufs + m * IX_MERGE + at[m], bufs + r * IX_MERGE + at[r]):
                    break
                heap[i] = m
                i = c
            heap[i] = r
        ix_end(ix, &o)
    finally:
        PyMem_RawFree(o.buf)
        PyMem_RawFree(bufs)
        PyMem_RawFree(nxt)
        PyMem_RawFree(end)
        PyMem_RawFree(at)
        PyMem_RawFree(have)
        PyMem_RawFree(heap)
    return 0


cdef bint ix_refill(int src, IxEntry* buf, int64_t* nxt, int64_t end, Py_ssize_t* have,
                    Py_ssize_t* at) except -1:
    """The next entries of a run into its buffer: False when the run is used up."""
    cdef Py_ssize_t n = <Py_ssize_t>min(<int64_t>IX_MERGE, end - nxt[0])
    cdef Py_ssize_t want = n * sizeof(IxEntry)
    if n <= 0:
        return False
    if pread_full(src, buf, want, nxt[0] * <int64_t>sizeof(IxEntry)) != want:
        raise CarFormatError("the block index's sorting file is cut off (an internal "
                             "error)")
    nxt[0] += n
    have[0] = n
    at[0] = 0
    return True
