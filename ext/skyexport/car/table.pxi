# Repository CARs: BlockTable, the blocks `fetch`'s check reads -- the commit, every MST
# node, the records that may hold blob refs -- found in RAM, without a block index.  The
# verifying scan (scan.pxi, build_table) adds each such block once its data has matched
# its CID; CarCheck (check.pxi) then reads one with a single pread at its offset and
# compares the CID there whole.  A block the table does not hold is not looked for
# anywhere else: the check fails, and remote/repo.py checks the file anew with a block
# index, whose verdicts and messages are the walk's own.
#
# An entry is 12 bytes: the top 64 - TB_OFF_BITS bits of the CID's index key (cid_key:
# the end of its digest, uniformly spread; its tag) above the block's offset, and its
# length.  Sorted, with a directory of 2^TB_DIR_BITS positions by the key's top bits, a
# lookup reads a bucket of a few entries from RAM; an equal tag is only a candidate, the
# CID in the file decides.


cdef packed struct TbEntry:
    uint64_t ko               # the key's tag, then the offset of the block's CID
    uint32_t n                # bytes of CID and data


cdef enum:
    TB_OFF_BITS = 36          # offsets below 64 GiB; a block beyond ends the table
    TB_DIR_BITS = 16          # the directory: 2^16 + 1 positions (256 KiB)
    # entries at most (12 MiB; a 1M-post repository keeps about 985,000); beyond, the
    # scan writes them to a block index
    TB_MAX = 1 << 20
    TB_SLACK = SCAN_PENDING + 2   # entries added past the limit before the scan sees it
    TB_RUN = IX_RUN           # entries of a run of the block index the table spills to


cdef struct TbBuild:
    TbEntry* ents
    Py_ssize_t n
    Py_ssize_t cap
    # entries at most (TB_MAX; fewer for tests); the scan looks after each block, so up
    # to TB_SLACK more may come first
    Py_ssize_t max
    bint off_over             # a block beyond TB_OFF_BITS came (not added): the table ends
    bint given_up             # no memory, or past max + TB_SLACK: the table is given up


cdef void tb_add(TbBuild* t, uint64_t key, int64_t off, Py_ssize_t n) noexcept nogil:
    """One block into the table being built (its memory freed if it is given up)."""
    cdef TbEntry* grown
    cdef Py_ssize_t cap
    if t.given_up:
        return
    if off < 0 or off >= (<int64_t>1 << TB_OFF_BITS):
        t.off_over = True
        return
    if t.n == t.cap:
        cap = min(max(t.cap * 2, <Py_ssize_t>4096), t.max + <Py_ssize_t>TB_SLACK)
        if cap <= t.n:
            tb_give_up(t)
            return
        grown = <TbEntry*>PyMem_RawRealloc(t.ents, cap * sizeof(TbEntry))
        if grown == NULL:
            tb_give_up(t)
            return
        t.ents, t.cap = grown, cap
    t.ents[t.n].ko = (key >> TB_OFF_BITS << TB_OFF_BITS) | <uint64_t>off
    t.ents[t.n].n = <uint32_t>n
    t.n += 1


cdef void tb_give_up(TbBuild* t) noexcept nogil:
    PyMem_RawFree(t.ents)
    t.ents = NULL
    t.n = t.cap = 0
    t.given_up = True


cdef inline Py_ssize_t tb_bucket(const TbEntry* e) noexcept nogil:
    return <Py_ssize_t>(e.ko >> (64 - TB_DIR_BITS))


cdef void tb_sift(TbEntry* a, Py_ssize_t root, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t child
    cdef TbEntry t
    while 2 * root + 1 < n:
        child = 2 * root + 1
        if child + 1 < n and a[child + 1].ko > a[child].ko:
            child += 1
        if a[root].ko >= a[child].ko:
            return
        t = a[root]
        a[root] = a[child]
        a[child] = t
        root = child


cdef void tb_sort_bucket(TbEntry* a, Py_ssize_t n) noexcept nogil:
    """One bucket's entries sorted by `ko`, in place: insertion sort when few (as a
    CID's digest spreads them: about a dozen), heapsort when many (CIDs ground to share
    a bucket cost n log n, not n^2)."""
    cdef Py_ssize_t i, j
    cdef TbEntry t
    if n <= 32:
        for i in range(1, n):
            t = a[i]
            j = i
            while j > 0 and a[j - 1].ko > t.ko:
                a[j] = a[j - 1]
                j -= 1
            a[j] = t
        return
    for i in range(n // 2 - 1, -1, -1):
        tb_sift(a, i, n)
    for i in range(n - 1, 0, -1):
        t = a[0]
        a[0] = a[i]
        a[i] = t
        tb_sift(a, 0, i)


cdef int tb_sort(TbEntry* a, Py_ssize_t n, uint32_t* dir) except -1:
    """a sorted by `ko` in place -- no second copy of the table, which a merge sort
    (qsort) would allocate -- and dir[b] set to where bucket b (the key's top TB_DIR_BITS)
    starts (dir[2^TB_DIR_BITS]: n): the buckets placed by a counting pass and swaps
    (American flag sort), then each sorted."""
    cdef uint32_t* nxt = <uint32_t*>PyMem_RawMalloc((1 << TB_DIR_BITS) * sizeof(uint32_t))
    cdef Py_ssize_t i, b, to
    cdef TbEntry t
    if nxt == NULL:
        raise MemoryError()
    with nogil:
        memset(dir, 0, ((1 << TB_DIR_BITS) + 1) * sizeof(uint32_t))
        for i in range(n):
            dir[tb_bucket(&a[i]) + 1] += 1
        for b in range(1 << TB_DIR_BITS):
            dir[b + 1] += dir[b]
            nxt[b] = dir[b]
        for b in range(1 << TB_DIR_BITS):
            while nxt[b] < dir[b + 1]:
                to = tb_bucket(&a[nxt[b]])
                if to == b:
                    nxt[b] += 1
                else:
                    t = a[nxt[b]]
                    a[nxt[b]] = a[nxt[to]]
                    a[nxt[to]] = t
                    nxt[to] += 1
        for b in range(1 << TB_DIR_BITS):
            tb_sort_bucket(a + dir[b], dir[b + 1] - dir[b])
    PyMem_RawFree(nxt)
    return 0


cdef struct TbCursor:
    Py_ssize_t i              # the next entry to look at
    Py_ssize_t stop           # the end of the key's bucket
    uint64_t tag


cdef void tb_start(const uint32_t* dir, uint64_t key, TbCursor* c) noexcept nogil:
    c.i = dir[key >> (64 - TB_DIR_BITS)]
    c.stop = dir[(key >> (64 - TB_DIR_BITS)) + 1]
    c.tag = key >> TB_OFF_BITS


cdef bint tb_next(const TbEntry* ents, TbCursor* c, int64_t* off,
                  Py_ssize_t* n) noexcept nogil:
    """The next entry of the bucket with the cursor's tag (a candidate: the CID at its
    offset decides): its offset and length; False when there is none."""
    cdef uint64_t ko
    while c.i < c.stop:
        ko = ents[c.i].ko
        c.i += 1
        if ko >> TB_OFF_BITS == c.tag:
            off[0] = <int64_t>(ko & ((<uint64_t>1 << TB_OFF_BITS) - 1))
            n[0] = <Py_ssize_t>ents[c.i - 1].n
            return True
        if ko >> TB_OFF_BITS > c.tag:
            break
    return False


cdef Py_ssize_t tb_read_into(const TbEntry* ents, const uint32_t* dir, int fd,
                             const unsigned char* cid, Py_ssize_t cn, unsigned char* dst,
                             Py_ssize_t cap, int64_t* where) noexcept nogil:
    """BlockTable.read into a fixed buffer, for a thread without the GIL: the block `cid`
    read into dst (its CID, then its data): its data length; -1 when the table lacks it
    or it does not fit in `cap` bytes (the caller reads it itself)."""
    cdef TbCursor c
    cdef int64_t off
    cdef Py_ssize_t n
    tb_start(dir, <uint64_t>cid_key(cid, cn), &c)
    while tb_next(ents, &c, &off, &n):
        if n < cn or n > cap:
            continue
        if (pread_raw(fd, dst, n, off) == n and memcmp(dst, cid, cn) == 0
                and cid_len(dst, n) == cn):
            where[0] = off
            return n - cn
    return -1


@cython.final
@cython.auto_pickle(False)
cdef class BlockTable:
    """The blocks a verifying scan kept for the check (CarScanner.build_table): `count`
    entries; `size`: the CAR's bytes (the check's read budget)."""
    cdef TbEntry* ents
    cdef uint32_t* dir
    cdef readonly Py_ssize_t count
    cdef readonly int64_t size

    def __cinit__(self):
        self.ents = NULL
        self.dir = NULL

    def __dealloc__(self):
        PyMem_RawFree(self.ents)
        PyMem_RawFree(self.dir)

    cdef int adopt(self, TbBuild* t, int64_t size) except -1:
        """Take t's entries over (t is left empty), sort them, build the directory."""
        self.dir = <uint32_t*>PyMem_RawMalloc(((1 << TB_DIR_BITS) + 1) * sizeof(uint32_t))
        if self.dir == NULL:
            raise MemoryError()
        self.ents, self.count = t.ents, t.n
        t.ents = NULL
        t.n = t.cap = 0
        self.size = size
        tb_sort(self.ents, self.count, self.dir)
        return 0

    cdef Py_ssize_t read(self, int fd, const unsigned char* cid, Py_ssize_t cn,
                         unsigned char** buf, Py_ssize_t* cap, int64_t* where) except -2:
        """The block `cid` read into buf[0] (its CID, then its data; grown as needed) and
        its CID's offset into where[0]: its data length, or -1 if the table lacks it."""
        cdef TbCursor c
        cdef Py_ssize_t n
        cdef int64_t off
        tb_start(self.dir, <uint64_t>cid_key(cid, cn), &c)
        while tb_next(self.ents, &c, &off, &n):
            if n < cn:
                continue
            grow_buf(buf, cap, n)
            if pread_full(fd, buf[0], n, off) != n:
                raise CarFormatError("the CAR changed while it was read (a block is cut off)")
            if memcmp(buf[0], cid, cn) == 0 and cid_len(buf[0], n) == cn:
                where[0] = off
                return n - cn
        return -1

    def block(self, int fd, cid):
        """BlockIndex.block's answer for block `cid`: (0, its data), or (1, None) when
        the table does not hold it."""
        cdef bytes c = bytes(cid)
        cdef unsigned char* buf = NULL
        cdef Py_ssize_t cap = 0, r
        cdef int64_t where
        try:
            r = self.read(fd, <const unsigned char*>PyBytes_AS_STRING(c),
                          PyBytes_GET_SIZE(c), &buf, &cap, &where)
            if r < 0:
                return 1, None
            return 0, PyBytes_FromStringAndSize(<const char*>buf + PyBytes_GET_SIZE(c), r)
        finally:
            PyMem_RawFree(buf)


def table_sort(list kos):
    """Test hook: tb_sort over entries with these `ko` values (64-bit ints); returns (the
    values in the order it left them, its directory as a list)."""
    cdef Py_ssize_t i, n = len(kos)
    cdef TbEntry* a = <TbEntry*>PyMem_RawMalloc((n + 1) * sizeof(TbEntry))
    cdef uint32_t* dir = <uint32_t*>PyMem_RawMalloc(((1 << TB_DIR_BITS) + 1) * sizeof(uint32_t))
    try:
        if a == NULL or dir == NULL:
            raise MemoryError()
        for i in range(n):
            a[i].ko = <uint64_t>kos[i]
            a[i].n = <uint32_t>i
        tb_sort(a, n, dir)
        return ([a[i].ko for i in range(n)], [dir[i] for i in range((1 << TB_DIR_BITS) + 1)])
    finally:
        PyMem_RawFree(a)
        PyMem_RawFree(dir)
