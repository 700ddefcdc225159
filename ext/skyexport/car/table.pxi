# Repository CARs: BlockTable, the blocks `fetch`'s check reads -- the commit, every MST
# node, the records that may hold blob refs -- found in RAM, without a block index.  The
# verifying scan (scan.pxi, build_table) adds each such block once its data has matched
# its CID; CarCheck (check.pxi) then reads one with a single pread at its offset and
# compares the CID there whole.  A block the table does not hold is not looked for
# anywhere else: the check fails, and remote/repo.py checks the file anew with a block
# index, whose verdicts and messages are the walk's own.
#
# An entry is 12 bytes: the top TB_TAG_BITS of the CID's index key (cid_key: the end of
# its digest, uniformly spread) above the block's offset, and its length.  Sorted, with a
# directory of 2^TB_DIR_BITS positions by the key's top bits, a lookup reads a bucket of
# a few entries from RAM; an equal tag is only a candidate, the CID in the file decides.


cdef packed struct TbEntry:
    uint64_t ko               # the key's top TB_TAG_BITS, then the offset of the block's CID
    uint32_t n                # bytes of CID and data


cdef enum:
    TB_OFF_BITS = 36          # offsets below 64 GiB; a block beyond gives the table up
    TB_DIR_BITS = 16          # the directory: 2^16 + 1 positions (256 KiB)
    TB_MAX = 2 << 20          # entries at most (24 MiB); beyond, the table is given up


cdef struct TbBuild:
    TbEntry* ents
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t max            # entries at most (TB_MAX; fewer for tests)
    bint given_up             # too many entries, an offset too far, or no memory


cdef void tb_add(TbBuild* t, uint64_t key, int64_t off, Py_ssize_t n) noexcept nogil:
    """One block into the table being built (its memory freed if it is given up)."""
    cdef TbEntry* grown
    cdef Py_ssize_t cap
    if t.given_up:
        return
    if off < 0 or off >= (<int64_t>1 << TB_OFF_BITS) or t.n >= t.max:
        tb_give_up(t)
        return
    if t.n == t.cap:
        cap = min(max(t.cap * 2, <Py_ssize_t>4096), <Py_ssize_t>TB_MAX)
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


cdef int tb_cmp(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const TbEntry*>a).ko, y = (<const TbEntry*>b).ko
    return -1 if x < y else (1 if x > y else 0)


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
    entries; `size` and `blocks`: the CAR's bytes and blocks (the check's read budget)."""
    cdef TbEntry* ents
    cdef uint32_t* dir
    cdef readonly Py_ssize_t count
    cdef readonly int64_t size
    cdef readonly int64_t blocks

    def __cinit__(self):
        self.ents = NULL
        self.dir = NULL

    def __dealloc__(self):
        PyMem_RawFree(self.ents)
        PyMem_RawFree(self.dir)

    cdef int adopt(self, TbBuild* t, int64_t size, int64_t blocks) except -1:
        """Take t's entries over (t is left empty), sort them, build the directory."""
        cdef Py_ssize_t i, b = 0
        self.dir = <uint32_t*>PyMem_RawMalloc(((1 << TB_DIR_BITS) + 1) * sizeof(uint32_t))
        if self.dir == NULL:
            raise MemoryError()
        self.ents, self.count = t.ents, t.n
        t.ents = NULL
        t.n = t.cap = 0
        self.size, self.blocks = size, blocks
        with nogil:
            if self.count > 1:
                qsort(self.ents, self.count, sizeof(TbEntry), tb_cmp)
            for i in range(self.count):
                while b <= <Py_ssize_t>(self.ents[i].ko >> (64 - TB_DIR_BITS)):
                    self.dir[b] = <uint32_t>i
                    b += 1
            while b <= (1 << TB_DIR_BITS):
                self.dir[b] = <uint32_t>self.count
                b += 1
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
        """The data of block `cid` (bytes), or None if the table does not hold it."""
        cdef bytes c = bytes(cid)
        cdef unsigned char* buf = NULL
        cdef Py_ssize_t cap = 0, r
        cdef int64_t where
        try:
            r = self.read(fd, <const unsigned char*>PyBytes_AS_STRING(c),
                          PyBytes_GET_SIZE(c), &buf, &cap, &where)
            if r < 0:
                return None
            return PyBytes_FromStringAndSize(<const char*>buf + PyBytes_GET_SIZE(c), r)
        finally:
            PyMem_RawFree(buf)
