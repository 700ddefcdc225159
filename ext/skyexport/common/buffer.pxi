# The output buffer: one growing block of bytes that rows are encoded into and that is
# handed to a sink (the file writer) at a fixed size (pgproto's WriteBuffer, msgspec's ×1.5 growth).
#
# Invariant: 0 <= len <= cap, data holds cap bytes.  Encoders reserve the worst case for
# what they are about to write (ob_reserve) and then store through a raw pointer, so the
# inner loops carry no bounds checks; ob_reserve's fast path is one comparison.
#
# Spilling: a row is normally encoded whole before the buffer is flushed, so that a bad
# value can roll back what its field wrote.  While `spill` is set (by the Writer, outside
# such tentative writes) a buffer that would grow past `spill_at` is flushed mid-row
# instead: a post whose encoding is huge (a 10 MB text, deeply nested stored JSON, which
# indenting can blow up a hundredfold) then costs no more memory than a small one.

ctypedef int (*spill_fn)(void* ctx) except -1 nogil

cdef struct OutBuf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap
    spill_fn spill
    void* spill_ctx
    Py_ssize_t spill_at


cdef int ob_init(OutBuf* b, Py_ssize_t cap) except -1 nogil:
    b.data = <char*>PyMem_RawMalloc(cap)
    if b.data == NULL:
        with gil:
            raise MemoryError()
    b.len = 0
    b.cap = cap
    b.spill = NULL
    b.spill_ctx = NULL
    b.spill_at = 0
    return 0


cdef void ob_free(OutBuf* b) noexcept nogil:
    PyMem_RawFree(b.data)
    b.data = NULL
    b.len = 0
    b.cap = 0


cdef int ob_grow(OutBuf* b, Py_ssize_t extra) except -1 nogil:
    # Kept out of line so the inline fast path stays tiny.
    if b.spill != NULL and b.len >= b.spill_at:
        b.spill(b.spill_ctx)
        if b.len + extra <= b.cap:
            return 0
    cdef Py_ssize_t need = b.len + extra
    cdef Py_ssize_t cap = b.cap + (b.cap >> 1)
    if cap < need:
        cap = need
    cdef char* p = <char*>PyMem_RawRealloc(b.data, cap)
    if p == NULL:
        with gil:
            raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef int ob_shrink(OutBuf* b, Py_ssize_t cap) except -1 nogil:
    """Give memory back after a giant row (only called when the buffer is empty)."""
    if b.cap <= cap or b.len > cap:
        return 0
    cdef char* p = <char*>PyMem_RawRealloc(b.data, cap)
    if p == NULL:
        with gil:
            raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int ob_reserve(OutBuf* b, Py_ssize_t extra) except -1 nogil:
    if b.len + extra > b.cap:
        return ob_grow(b, extra)
    return 0


cdef int ob_write_slow(OutBuf* b, const char* p, Py_ssize_t n) except -1 nogil:
    """ob_write past the end of the buffer; while spilling is allowed a huge piece goes
    through in slices instead of growing the buffer to its size."""
    cdef Py_ssize_t k
    while n > 0:
        k = n
        if b.spill != NULL and k > b.spill_at:
            k = b.spill_at
        if b.len + k > b.cap:
            ob_grow(b, k)
        memcpy(b.data + b.len, p, k)
        b.len += k
        p += k
        n -= k
    return 0


cdef inline int ob_write(OutBuf* b, const char* p, Py_ssize_t n) except -1 nogil:
    if b.len + n > b.cap:
        return ob_write_slow(b, p, n)
    memcpy(b.data + b.len, p, n)
    b.len += n
    return 0


cdef inline int ob_byte(OutBuf* b, char c) except -1 nogil:
    if b.len + 1 > b.cap:
        ob_grow(b, 1)
    b.data[b.len] = c
    b.len += 1
    return 0


@cython.cdivision(True)   # audited: C division, as written
cdef int ob_int64(OutBuf* b, int64_t v) except -1 nogil:
    """Decimal, as Go's strconv.FormatInt(v, 10)."""
    cdef char tmp[24]
    cdef int i = 24
    cdef uint64_t u
    cdef bint neg = v < 0
    if neg:
        u = <uint64_t>0 - <uint64_t>v
    else:
        u = <uint64_t>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if neg:
        i -= 1
        tmp[i] = b'-'
    return ob_write(b, tmp + i, 24 - i)
