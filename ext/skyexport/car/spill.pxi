# Repository CARs: what `fetch`'s check proves without a lookup per record.  The verifying
# scan (scan.pxi) writes every good block's CID to a Spill, partitioned by its digest's
# first byte; CarCheck (check.pxi) writes every CID the MST references as a record to
# another; then, one partition at a time (a few MB in RAM), each referenced CID must be
# among the good ones -- sequential reads of two scratch files instead of two random reads
# per record.  CIDs compared whole: the 32-byte digest and the codec.  A KeySet holds the
# digests' last 8 bytes of the good blocks holding the text "blob" (the records whose blob
# refs the walk collects).

from libc.stdint cimport UINT32_MAX


cdef enum:
    SP_PARTS = 64             # partitions (the digest's first 6 bits)
    SP_ENTRY = 36             # a CID: its SHA-256 digest, then its codec (4 bytes)
    SP_CHUNK = 1820 * 36      # bytes written at once per partition (about 64 KiB)
    SP_JOIN_MAX = 16 << 20    # the good CIDs of one partition held at once, at most
    KS_MAX = 1 << 21          # slots of a KeySet at most (16 MiB); beyond, it holds "all"


cdef Py_ssize_t sha256_digest_at(const unsigned char* cid, Py_ssize_t cn) noexcept nogil:
    """Where the SHA-256 digest of the whole CID `cid` starts, or -1 when its multihash is
    not SHA-256 (the block cannot be checked)."""
    cdef Py_ssize_t i
    cdef uint64_t v, code, dlen
    if cn == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        return 2
    if cn > 80:
        return -1
    i = uvarint(cid, cn, &v)
    if i <= 0:
        return -1
    i += uvarint(cid + i, cn - i, &v)
    i += uvarint(cid + i, cn - i, &code)
    i += uvarint(cid + i, cn - i, &dlen)
    if code != 0x12 or dlen != 32 or i + 32 != cn:
        return -1
    return i


cdef bint has_blob_text(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Does s hold the DAG-CBOR text "blob" (0x64 'b' 'l' 'o' 'b')?  A record without it
    holds no blob ref."""
    cdef const unsigned char* p = s
    cdef const unsigned char* end = s + n
    while end - p >= 5:
        p = <const unsigned char*>memchr(p, 0x64, end - p - 4)
        if p == NULL:
            return False
        if p[1] == b'b' and p[2] == b'l' and p[3] == b'o' and p[4] == b'b':
            return True
        p += 1
    return False


cdef bint cid_entry(const unsigned char* cid, Py_ssize_t cn, unsigned char* out) noexcept nogil:
    """The spill entry of a whole CID in out (SP_ENTRY bytes): False when it is not a
    SHA-256 CID or its codec does not fit in 32 bits (then it is never proved present)."""
    cdef Py_ssize_t d = sha256_digest_at(cid, cn), k
    cdef uint64_t v, codec
    cdef uint32_t tag
    if d < 0:
        return False
    if d == 2:
        tag = UINT32_MAX                      # CIDv0
    else:
        k = uvarint(cid, cn, &v)
        uvarint(cid + k, cn - k, &codec)
        if codec >= UINT32_MAX:
            return False
        tag = <uint32_t>codec
    memcpy(out, cid + d, 32)
    memcpy(out + 32, &tag, 4)
    return True


cdef struct Spill:
    int fd                    # -1: none
    int err                   # errno of a failed write (reported by the owner), or 0
    int64_t end
    unsigned char* buf        # SP_PARTS chunks
    Py_ssize_t fill[SP_PARTS]
    int64_t count[SP_PARTS]
    int64_t* offs             # every chunk written: offset, length, partition
    Py_ssize_t nchunks
    Py_ssize_t capchunks


cdef int sp_init(Spill* s, int fd) except -1:
    memset(s, 0, sizeof(Spill))
    s.fd = fd
    if fd < 0:
        return 0
    s.buf = <unsigned char*>PyMem_RawMalloc(SP_PARTS * SP_CHUNK)
    if s.buf == NULL:
        raise MemoryError()
    return 0


cdef void sp_free(Spill* s) noexcept nogil:
    PyMem_RawFree(s.buf)
    PyMem_RawFree(s.offs)
    s.buf = NULL
    s.offs = NULL
    s.fd = -1


cdef void sp_write(Spill* s, int p) noexcept nogil:
    cdef const unsigned char* c = s.buf + p * SP_CHUNK
    cdef Py_ssize_t n = s.fill[p], left = n
    cdef int64_t at = s.end
    cdef ssize_t got
    cdef int64_t* grown
    if n == 0 or s.err:
        return
    while left > 0:
        got = pwrite(s.fd, c, left, at)
        if got < 0:
            if errno == EINTR:
                continue
            s.err = errno if errno else EINVAL
            return
        c += got
        left -= got
        at += got
    if s.nchunks == s.capchunks:
        s.capchunks = max(64, s.capchunks * 2)
        grown = <int64_t*>PyMem_RawRealloc(s.offs, s.capchunks * 3 * sizeof(int64_t))
        if grown == NULL:
            s.err = ENOMEM
            return
        s.offs = grown
    s.offs[3 * s.nchunks] = s.end
    s.offs[3 * s.nchunks + 1] = n
    s.offs[3 * s.nchunks + 2] = p
    s.nchunks += 1
    s.end = at
    s.fill[p] = 0


cdef inline void sp_add(Spill* s, const unsigned char* e) noexcept nogil:
    cdef int p = e[0] >> 2
    memcpy(s.buf + p * SP_CHUNK + s.fill[p], e, SP_ENTRY)
    s.fill[p] += SP_ENTRY
    s.count[p] += 1
    if s.fill[p] + SP_ENTRY > SP_CHUNK:
        sp_write(s, p)


cdef void sp_finish(Spill* s) noexcept nogil:
    cdef int p
    for p in range(SP_PARTS):
        sp_write(s, p)


cdef int sp_check(Spill* s, str what) except -1:
    if s.err:
        raise ScratchWriteError(s.err, f"{what}: " + strerror(s.err).decode("utf-8", "replace"))
    return 0


cdef Py_ssize_t sp_load(Spill* s, int p, unsigned char* out, Py_ssize_t cap) except -1:
    """The entries of partition p into out (cap bytes at least): how many bytes."""
    cdef Py_ssize_t i, done = 0, n
    for i in range(s.nchunks):
        if s.offs[3 * i + 2] != p:
            continue
        n = <Py_ssize_t>s.offs[3 * i + 1]
        if done + n > cap or pread_full(s.fd, out + done, n, s.offs[3 * i]) != n:
            raise CarFormatError("a scratch file of the check is cut off (was it changed?)")
        done += n
    return done


cdef inline uint64_t entry_key(const unsigned char* e) noexcept nogil:
    cdef uint64_t k
    memcpy(&k, e + 24, 8)
    return k if k else 1


cdef bint sp_join(Spill* good, Spill* refs) except -1:
    """Is every entry of `refs` among `good`'s?  False when one is not, or when a partition
    of good CIDs would hold more than SP_JOIN_MAX (then nothing is proved: the caller
    looks every record up instead)."""
    cdef int p
    cdef Py_ssize_t gn, rn, i, j, slots, mask, nb
    cdef unsigned char* g = NULL
    cdef unsigned char* r = NULL
    cdef uint32_t* table = NULL
    cdef uint64_t k
    cdef bint found
    try:
        for p in range(SP_PARTS):
            if refs.count[p] == 0:
                continue
            if good.count[p] * SP_ENTRY > SP_JOIN_MAX or refs.count[p] * SP_ENTRY > SP_JOIN_MAX:
                return False
            gn = <Py_ssize_t>good.count[p]
            rn = <Py_ssize_t>refs.count[p]
            PyMem_RawFree(g)
            PyMem_RawFree(r)
            PyMem_RawFree(table)
            g = r = NULL
            table = NULL
            g = <unsigned char*>PyMem_RawMalloc(gn * SP_ENTRY + 1)
            r = <unsigned char*>PyMem_RawMalloc(rn * SP_ENTRY + 1)
            slots = 16
            while slots < 2 * gn:
                slots <<= 1
            mask = slots - 1
            table = <uint32_t*>PyMem_RawMalloc(slots * sizeof(uint32_t))
            if g == NULL or r == NULL or table == NULL:
                raise MemoryError()
            if (sp_load(good, p, g, gn * SP_ENTRY) != gn * SP_ENTRY
                    or sp_load(refs, p, r, rn * SP_ENTRY) != rn * SP_ENTRY):
                raise CarFormatError("a scratch file of the check is incomplete (an internal "
                                     "error)")
            with nogil:
                memset(table, 0xFF, slots * sizeof(uint32_t))
                for i in range(gn):
                    j = <Py_ssize_t>(entry_key(g + i * SP_ENTRY) & mask)
                    while table[j] != UINT32_MAX:
                        j = (j + 1) & mask
                    table[j] = <uint32_t>i
                found = True
                for i in range(rn):
                    k = entry_key(r + i * SP_ENTRY)
                    j = <Py_ssize_t>(k & mask)
                    found = False
                    while table[j] != UINT32_MAX:
                        nb = <Py_ssize_t>table[j]
                        if memcmp(g + nb * SP_ENTRY, r + i * SP_ENTRY, SP_ENTRY) == 0:
                            found = True
                            break
                        j = (j + 1) & mask
                    if not found:
                        break
            if not found:
                return False
        return True
    finally:
        PyMem_RawFree(g)
        PyMem_RawFree(r)
        PyMem_RawFree(table)


cdef struct KeySet:
    uint64_t* slots           # 0: empty
    Py_ssize_t cap            # a power of two, or 0
    Py_ssize_t n
    bint all                  # grew past KS_MAX: every key is taken to be in it


cdef void ks_free(KeySet* s) noexcept nogil:
    PyMem_RawFree(s.slots)
    s.slots = NULL
    s.cap = s.n = 0


cdef void ks_add(KeySet* s, uint64_t k) noexcept nogil:
    cdef Py_ssize_t i, j, old
    cdef uint64_t* grown
    cdef uint64_t* prev
    if s.all:
        return
    if 2 * (s.n + 1) > s.cap:
        old = s.cap
        if old * 2 > KS_MAX:
            s.all = True
            ks_free(s)
            return
        grown = <uint64_t*>PyMem_RawMalloc(max(1024, old * 2) * sizeof(uint64_t))
        if grown == NULL:
            s.all = True
            ks_free(s)
            return
        prev = s.slots
        s.slots = grown
        s.cap = max(1024, old * 2)
        memset(s.slots, 0, s.cap * sizeof(uint64_t))
        s.n = 0
        for i in range(old):
            if prev[i]:
                j = <Py_ssize_t>(prev[i] & (s.cap - 1))
                while s.slots[j]:
                    j = (j + 1) & (s.cap - 1)
                s.slots[j] = prev[i]
                s.n += 1
        PyMem_RawFree(prev)
    j = <Py_ssize_t>(k & (s.cap - 1))
    while s.slots[j]:
        if s.slots[j] == k:
            return
        j = (j + 1) & (s.cap - 1)
    s.slots[j] = k
    s.n += 1


cdef bint ks_has(const KeySet* s, uint64_t k) noexcept nogil:
    cdef Py_ssize_t j
    if s.all:
        return True
    if s.cap == 0:
        return False
    j = <Py_ssize_t>(k & (s.cap - 1))
    while s.slots[j]:
        if s.slots[j] == k:
            return True
        j = (j + 1) & (s.cap - 1)
    return False
