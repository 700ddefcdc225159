# Reading a Bluesky repository CAR (../shared/CAR.md): CARv1 framing, the atproto
# DAG-CBOR data model, and post records as posts rows.
#
#   car_header(bytes)       the header block -> (version, roots)
#   CarScanner              one sequential pass: (key, offset, length) of every block, in
#                           batches for the on-disk index; the file's SHA-256 on the way
#   cbor_to_py(bytes)       a small block (commit, MST node) as Python objects; links as CID
#   post_row(bytes)         a post record -> the fields of its posts row, its embed and
#                           labels as JSON exactly as CAR.md says
#   cid_str(bytes)          a CID's text form (base32, "b..." for v1)
#
# Every decoder validates the whole block: floats, undefined, tags other than 42,
# indefinite lengths, non-string map keys and invalid UTF-8 raise CarFormatError.

from libc.errno cimport EINTR
from libc.string cimport memmove, strlen

from libc.stdlib cimport qsort
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "platform.h" nogil:
    ssize_t pread "sx_pread"(int fd, void* buf, size_t count, long long offset)
    ssize_t pwrite "sx_pwrite"(int fd, const void* buf, size_t count, long long offset)

cdef enum:
    # Nesting: atproto records are shallow (a post's deepest value is about 6 levels); 64
    # levels of the recursive decoders need well under 64 KiB of C stack.
    CBOR_MAX_DEPTH = 64
    SCAN_CHUNK = 1 << 20
    MAX_BLOCK = 5 << 20       # any block (indigo's limit for a CBOR object)
    MAX_RECORD = 1 << 20      # a record's block (atproto's record limit)
    MAX_DID = 2048
    MAX_NSID = 317
    MAX_RKEY = 512
    MAX_KEY = MAX_NSID + 1 + MAX_RKEY
    FETCH_COST = 64           # what one block read costs the walk's budget beside its bytes


class CarFormatError(ValueError):
    """A CAR or a block in it is not what CAR.md allows; the message says what."""


class ScratchWriteError(OSError):
    """Writing the block index (a temporary file of ours, not the CAR) failed."""


class CID(bytes):
    """The binary form of a CID that a tag-42 link holds (without the 0x00 prefix)."""

    def __str__(self):
        return cid_str(self)

    def __repr__(self):
        return f"CID({cid_str(self)})"


cdef const char* B32 = b"abcdefghijklmnopqrstuvwxyz234567"
cdef const char* B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char* B58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


cdef int ob_base32(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1 nogil:
    cdef Py_ssize_t i
    cdef uint64_t acc = 0
    cdef int bits = 0
    ob_reserve(b, n * 8 // 5 + 2)
    for i in range(n):
        acc = (acc << 8) | s[i]
        bits += 8
        while bits >= 5:
            bits -= 5
            b.data[b.len] = B32[(acc >> bits) & 31]
            b.len += 1
    if bits:
        b.data[b.len] = B32[(acc << (5 - bits)) & 31]
        b.len += 1
    return 0


cdef int ob_base64(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1 nogil:
    """Standard alphabet, no padding (atproto's $bytes)."""
    cdef Py_ssize_t i = 0
    cdef uint32_t v
    ob_reserve(b, (n + 2) // 3 * 4 + 1)
    while i + 3 <= n:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8) | s[i + 2]
        b.data[b.len] = B64[v >> 18]
        b.data[b.len + 1] = B64[(v >> 12) & 63]
        b.data[b.len + 2] = B64[(v >> 6) & 63]
        b.data[b.len + 3] = B64[v & 63]
        b.len += 4
        i += 3
    if n - i == 1:
        v = <uint32_t>s[i] << 16
        b.data[b.len] = B64[v >> 18]
        b.data[b.len + 1] = B64[(v >> 12) & 63]
        b.len += 2
    elif n - i == 2:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8)
        b.data[b.len] = B64[v >> 18]
        b.data[b.len + 1] = B64[(v >> 12) & 63]
        b.data[b.len + 2] = B64[(v >> 6) & 63]
        b.len += 3
    return 0


cdef int ob_cid(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1:
    """A CID's string form: base58btc for v0 (`Qm...`), else multibase base32 (`b...`)."""
    if n == 34 and s[0] == 0x12 and s[1] == 0x20:
        t = base58(s, n)
        ob_write(b, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t))
        return 0
    ob_byte(b, b'b')
    ob_base32(b, s, n)
    return 0


cdef bytes base58(const unsigned char* s, Py_ssize_t n):
    cdef object v = int.from_bytes(PyBytes_FromStringAndSize(<const char*>s, n), "big")
    out = bytearray()
    while v:
        v, r = divmod(v, 58)
        out.append(B58[r])
    cdef Py_ssize_t i = 0
    while i < n and s[i] == 0:
        out.append(B58[0])
        i += 1
    out.reverse()
    return bytes(out)


def cid_str(cid):
    """The text form of a binary CID."""
    cdef bytes c = bytes(cid)
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        ob_cid(&b, <const unsigned char*>PyBytes_AS_STRING(c), PyBytes_GET_SIZE(c))
        return b.data[:b.len].decode("ascii")
    finally:
        ob_free(&b)


# --- varints and CIDs ------------------------------------------------------------------

cdef inline Py_ssize_t uvarint(const unsigned char* s, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """Bytes used by the unsigned LEB128 varint at s (at most 9), 0 if incomplete, -1 if
    invalid (too long or not minimal)."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i = 0
    cdef int shift = 0
    while i < n:
        if i >= 9:
            return -1
        v |= (<uint64_t>(s[i] & 0x7F)) << shift
        if s[i] < 0x80:
            if i > 0 and s[i] == 0:
                return -1
            out[0] = v
            return i + 1
        shift += 7
        i += 1
    return 0


cdef Py_ssize_t cid_len(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Length of the binary CID at s, 0 if incomplete, -1 if it is not one."""
    cdef uint64_t version, codec, code, dlen
    cdef Py_ssize_t i = 0, k
    if n >= 2 and s[0] == 0x12 and s[1] == 0x20:
        return 34 if n >= 34 else 0
    k = uvarint(s, n, &version)
    if k <= 0:
        return k
    if version != 1:
        return -1
    i += k
    k = uvarint(s + i, n - i, &codec)
    if k <= 0:
        return k
    i += k
    k = uvarint(s + i, n - i, &code)
    if k <= 0:
        return k
    i += k
    k = uvarint(s + i, n - i, &dlen)
    if k <= 0:
        return k
    i += k
    if dlen > 128:
        return -1
    if i + <Py_ssize_t>dlen > n:
        return 0
    return i + <Py_ssize_t>dlen


cdef inline int64_t cid_key(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """The index key of a CID: its last 8 bytes (the end of its digest) as an integer."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i = n - 8 if n > 8 else 0
    while i < n:
        v = (v << 8) | s[i]
        i += 1
    return <int64_t>v


def cid_index_key(cid):
    cdef bytes c = bytes(cid)
    return cid_key(<const unsigned char*>PyBytes_AS_STRING(c), PyBytes_GET_SIZE(c))


def cid_digest(cid):
    """(hash code, digest) of a binary CID."""
    cdef bytes c = bytes(cid)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(c)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(c), i = 0, k
    cdef uint64_t v
    if n == 34 and s[0] == 0x12 and s[1] == 0x20:
        return 0x12, c[2:]
    for _ in range(2):  # version, codec
        k = uvarint(s + i, n - i, &v)
        if k <= 0:
            raise CarFormatError("not a CID")
        i += k
    k = uvarint(s + i, n - i, &v)
    if k <= 0:
        raise CarFormatError("not a CID")
    i += k
    code = v
    k = uvarint(s + i, n - i, &v)
    if k <= 0:
        raise CarFormatError("not a CID")
    i += k
    return code, c[i:]


def read_uvarint(bytes data, Py_ssize_t pos=0):
    """(value, bytes used) of the varint at data[pos:]; (None, 0) if incomplete."""
    cdef uint64_t v
    cdef Py_ssize_t k
    if pos < 0 or pos > PyBytes_GET_SIZE(data):
        raise ValueError("pos")
    k = uvarint(<const unsigned char*>PyBytes_AS_STRING(data) + pos,
                PyBytes_GET_SIZE(data) - pos, &v)
    if k < 0:
        raise CarFormatError("invalid varint")
    if k == 0:
        return None, 0
    return v, k


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


cdef int ix_cmp(const void* a, const void* b) noexcept nogil:
    cdef const IxEntry* x = <const IxEntry*>a
    cdef const IxEntry* y = <const IxEntry*>b
    if x.key != y.key:
        return -1 if x.key < y.key else 1
    if x.off != y.off:
        return -1 if x.off < y.off else 1
    return 0


cdef inline bint ix_less(const IxEntry* x, const IxEntry* y) noexcept nogil:
    return x.key < y.key or (x.key == y.key and x.off < y.off)


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
        cdef unsigned char* grown
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
                    if n > cap[0]:
                        grown = <unsigned char*>PyMem_RawRealloc(buf[0], n)
                        if grown == NULL:
                            raise MemoryError()
                        buf[0], cap[0] = grown, n
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
        cdef unsigned char* grown
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
                if n > cap[0]:
                    grown = <unsigned char*>PyMem_RawRealloc(buf[0], n)
                    if grown == NULL:
                        raise MemoryError()
                    buf[0], cap[0] = grown, n
                if pread_full(fd, buf[0], n, e.off) != n:
                    raise CarFormatError("the CAR changed while it was read (a block is "
                                         "cut off)")
                if n < cn or memcmp(buf[0], cid, cn) != 0:
                    return -1
                digest = sha256(PyMemoryView_FromMemory(<char*>buf[0] + cn, n - cn,
                                                        PyBUF_READ)).digest()
                if memcmp(PyBytes_AS_STRING(digest), cid + cn - 32, 32) != 0:
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
            if n > cap[0]:
                grown = <unsigned char*>PyMem_RawRealloc(buf[0], n)
                if grown == NULL:
                    raise MemoryError()
                buf[0], cap[0] = grown, n
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


cdef bint sha256_cid(const unsigned char* cid, Py_ssize_t cn) noexcept:
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


# --- DAG-CBOR ----------------------------------------------------------------------------

cdef struct Item:
    int major
    uint64_t arg           # the value, length or count
    Py_ssize_t head        # bytes of the initial byte and its argument


cdef inline int cb_head(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Item* it) except -1:
    cdef unsigned char b
    cdef int info, k, j
    cdef uint64_t v
    if i >= n:
        raise CarFormatError("ends in the middle of a value")
    b = s[i]
    it.major = b >> 5
    info = b & 31
    if info < 24:
        it.arg = info
        it.head = 1
        return 0
    if info > 27:
        if info == 31:
            raise CarFormatError("has an indefinite-length item (not DAG-CBOR)")
        raise CarFormatError(f"has a reserved CBOR byte 0x{b:02x}")
    if it.major == 7:
        if info == 24:
            raise CarFormatError("has a CBOR simple value (not DAG-CBOR)")
        raise CarFormatError("has a float (not allowed in atproto records)")
    k = 1 << (info - 24)
    if i + 1 + k > n:
        raise CarFormatError("ends in the middle of a value")
    v = 0
    for j in range(k):
        v = (v << 8) | s[i + 1 + j]
    # DAG-CBOR: every argument in its shortest form
    if v < (<uint64_t>24 if k == 1 else (<uint64_t>1) << (4 * k)):
        raise CarFormatError("has a non-minimal CBOR integer or length (not DAG-CBOR)")
    it.arg = v
    it.head = 1 + k
    return 0


cdef bint utf8_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:
            return False
        elif c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= n or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80:
                return False
            if c == 0xE0 and s[i + 1] < 0xA0:
                return False
            if c == 0xED and s[i + 1] >= 0xA0:
                return False
            i += 3
        elif c < 0xF5:
            if (i + 3 >= n or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80
                    or (s[i + 3] & 0xC0) != 0x80):
                return False
            if c == 0xF0 and s[i + 1] < 0x90:
                return False
            if c == 0xF4 and s[i + 1] >= 0x90:
                return False
            i += 4
        else:
            return False
    return True


cdef Py_ssize_t cb_len(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, uint64_t arg) except -1:
    if arg > <uint64_t>(n - i):
        raise CarFormatError("ends in the middle of a value")
    return <Py_ssize_t>arg


cdef Py_ssize_t cb_link(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                        Py_ssize_t* start) except -1:
    """At tag 42's content (i just after the tag): checks the byte string is 0x00 + CID;
    returns the offset after it, the CID's start in start[0]."""
    cdef Item it
    cdef Py_ssize_t ln, c
    cb_head(s, i, n, &it)
    if it.major != 2:
        raise CarFormatError("has a tag-42 link that is not a byte string")
    i += it.head
    ln = cb_len(s, i, n, it.arg)
    if ln < 2 or s[i] != 0:
        raise CarFormatError("has a malformed tag-42 link")
    c = cid_len(s + i + 1, ln - 1)
    if c != ln - 1:
        raise CarFormatError("has a tag-42 link that is not a CID")
    start[0] = i + 1
    return i + ln


cdef inline bint key_before(const unsigned char* a, Py_ssize_t an,
                            const unsigned char* b, Py_ssize_t bn) noexcept nogil:
    """DAG-CBOR's map key order: shorter first, then bytewise."""
    if an != bn:
        return an < bn
    return memcmp(a, b, an) < 0


cdef bint cb_type_is_blob(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) except -1:
    """Checks the value of a `$type` key (a non-empty string): is it "blob"?"""
    cdef Item it
    cb_head(s, i, n, &it)
    if it.major != 3 or it.arg == 0:
        raise CarFormatError("has a `$type` that is not a non-empty string")
    return it.arg == 4 and i + 5 <= n and memcmp(s + i + 1, b"blob", 4) == 0


cdef int cb_check_blob(const unsigned char* s, Py_ssize_t m, Py_ssize_t n) except -1:
    """A validated map at m whose `$type` is "blob": a `ref` link, a non-empty `mimeType`
    string and an integer `size` >= 0 (atproto's data model)."""
    cdef Item it
    cdef Py_ssize_t x = cb_find(s, m, n, "ref")
    if x >= 0:
        cb_head(s, x, n, &it)
    if x < 0 or it.major != 6:
        raise CarFormatError("has a blob without a `ref` link")
    x = cb_find(s, m, n, "mimeType")
    if x >= 0:
        cb_head(s, x, n, &it)
    if x < 0 or it.major != 3 or it.arg == 0:
        raise CarFormatError("has a blob without a `mimeType`")
    x = cb_find(s, m, n, "size")
    if x >= 0:
        cb_head(s, x, n, &it)
    if x < 0 or it.major != 0:
        raise CarFormatError("has a blob without an integer `size`")
    return 0


cdef Py_ssize_t cb_skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int depth) except -1:
    """Validates the item at i as atproto's data model in DAG-CBOR; returns the offset
    after it.  Beside what cb_head refuses (floats, simple values, indefinite lengths,
    non-minimal arguments): integers outside the signed 64-bit range, tags but 42, links
    that are not CIDs, invalid UTF-8, non-string map keys, map keys repeated or out of
    DAG-CBOR's order, a `$type` that is not a non-empty string, a blob without its `ref`,
    `mimeType` and integer `size`; nesting deeper than CBOR_MAX_DEPTH."""
    cdef Item it
    cdef Py_ssize_t ln, start, m = i, kn, pn = 0
    cdef const unsigned char* kp
    cdef const unsigned char* pk = NULL
    cdef uint64_t j
    cdef bint blob = False
    if depth > CBOR_MAX_DEPTH:
        raise CarFormatError(f"nests deeper than {CBOR_MAX_DEPTH} levels")
    cb_head(s, i, n, &it)
    i += it.head
    if it.major <= 1:
        if it.arg > <uint64_t>0x7FFFFFFFFFFFFFFF:
            raise CarFormatError("has an integer outside the signed 64-bit range")
        return i
    if it.major == 2:
        return i + cb_len(s, i, n, it.arg)
    if it.major == 3:
        ln = cb_len(s, i, n, it.arg)
        if not utf8_ok(s + i, ln):
            raise CarFormatError("has a text string that is not valid UTF-8")
        return i + ln
    if it.major == 4:
        cb_len(s, i, n, it.arg)  # each item takes at least one byte
        for j in range(it.arg):
            i = cb_skip(s, i, n, depth + 1)
        return i
    if it.major == 5:
        cb_len(s, i, n, it.arg)
        for j in range(it.arg):
            i = cb_key(s, i, n, &kp, &kn)
            if j and not key_before(pk, pn, kp, kn):
                raise CarFormatError("has map keys repeated or out of DAG-CBOR's order")
            pk, pn = kp, kn
            if kn == 5 and memcmp(kp, b"$type", 5) == 0:
                blob = cb_type_is_blob(s, i, n)
            i = cb_skip(s, i, n, depth + 1)
        if blob:
            cb_check_blob(s, m, n)
        return i
    if it.major == 6:
        if it.arg != 42:
            raise CarFormatError(f"has CBOR tag {it.arg} (only 42, links, is allowed)")
        return cb_link(s, i, n, &start)
    # major 7, no argument bytes: false, true, null only
    if it.arg == 20 or it.arg == 21 or it.arg == 22:
        return i
    if it.arg == 23:
        raise CarFormatError("has `undefined` (not DAG-CBOR)")
    raise CarFormatError("has a CBOR simple value (not DAG-CBOR)")


cdef Py_ssize_t cb_key(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                       const unsigned char** kp, Py_ssize_t* kn) except -1:
    """A map key (a text string) at i: offset after it; its bytes in kp/kn if given."""
    cdef Item it
    cdef Py_ssize_t ln
    cb_head(s, i, n, &it)
    if it.major != 3:
        raise CarFormatError("has a map key that is not a text string")
    i += it.head
    ln = cb_len(s, i, n, it.arg)
    if not utf8_ok(s + i, ln):
        raise CarFormatError("has a map key that is not valid UTF-8")
    if kp != NULL:
        kp[0] = s + i
        kn[0] = ln
    return i + ln


cdef Py_ssize_t cb_pass(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) except -1:
    """The offset after the item at i, which was validated before (cb_skip): nothing is
    checked again, but no byte outside [0, n) is read whatever s holds."""
    cdef Item it
    cdef uint64_t j
    cb_head(s, i, n, &it)
    i += it.head
    if it.major == 2 or it.major == 3:
        return i + cb_len(s, i, n, it.arg)
    if it.major == 4:
        for j in range(it.arg):
            i = cb_pass(s, i, n)
        return i
    if it.major == 5:
        for j in range(it.arg):
            i = cb_pass(s, i, n)
            i = cb_pass(s, i, n)
        return i
    if it.major == 6:
        return cb_pass(s, i, n)
    return i


cdef Py_ssize_t cb_find(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                        const char* key) except -2:
    """The offset of `key`'s value if the item at i is a map holding it, else -1.
    (The item was validated before: keys and values are not checked again.)"""
    cdef Item it
    cdef Py_ssize_t klen = <Py_ssize_t>strlen(key)
    cdef uint64_t j
    cb_head(s, i, n, &it)
    if it.major != 5:
        return -1
    i += it.head
    for j in range(it.arg):
        cb_head(s, i, n, &it)
        i += it.head
        if (it.major == 3 and it.arg == <uint64_t>klen and i + klen <= n
                and memcmp(s + i, key, klen) == 0):
            return i + klen
        i = cb_pass(s, cb_pass(s, i - it.head, n), n)
    return -1


cdef bint cb_text_at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                     const unsigned char** tp, Py_ssize_t* tn) except -1:
    """True and the text if the item at i (i >= 0) is a text string."""
    cdef Item it
    if i < 0:
        return False
    cb_head(s, i, n, &it)
    if it.major != 3:
        return False
    tp[0] = s + i + it.head
    tn[0] = <Py_ssize_t>it.arg
    return True


cdef bint cb_text_is(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                     const char* want) except -1:
    cdef const unsigned char* tp
    cdef Py_ssize_t tn
    if not cb_text_at(s, i, n, &tp, &tn):
        return False
    return tn == <Py_ssize_t>strlen(want) and memcmp(tp, want, tn) == 0


cdef int ob_json_str_go(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1:
    """A validated UTF-8 string as Go's json.Marshal writes it (HTML-safe: < > & escaped,
    U+2028/U+2029 too)."""
    cdef Py_ssize_t i, run = 0
    cdef unsigned char c
    ob_byte(b, b'"')
    i = 0
    while i < n:
        c = s[i]
        if c < 0x80:
            if c < 0x20 or c == b'"' or c == b'\\' or c == b'<' or c == b'>' or c == b'&':
                if c == b'"':
                    ob_write(b, b'\\"', 2)
                elif c == b'\\':
                    ob_write(b, b'\\\\', 2)
                elif c == b'\n':
                    ob_write(b, b'\\n', 2)
                elif c == b'\r':
                    ob_write(b, b'\\r', 2)
                elif c == b'\t':
                    ob_write(b, b'\\t', 2)
                else:
                    ob_reserve(b, 6)
                    memcpy(b.data + b.len, b"\\u00", 4)
                    b.data[b.len + 4] = HEX[c >> 4]
                    b.data[b.len + 5] = HEX[c & 15]
                    b.len += 6
            else:
                ob_byte(b, <char>c)
            i += 1
        elif (c == 0xE2 and i + 2 < n and s[i + 1] == 0x80
              and (s[i + 2] == 0xA8 or s[i + 2] == 0xA9)):
            ob_write(b, b"\\u2028" if s[i + 2] == 0xA8 else b"\\u2029", 6)
            i += 3
        else:
            ob_byte(b, <char>c)
            i += 1
    ob_byte(b, b'"')
    return 0


cdef int ob_uint64(OutBuf* b, uint64_t v) except -1:
    cdef char tmp[24]
    cdef int k = 0
    if v == 0:
        return ob_byte(b, b'0')
    while v:
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        k += 1
    ob_reserve(b, k)
    while k:
        k -= 1
        b.data[b.len] = tmp[k]
        b.len += 1
    return 0


cdef Py_ssize_t cb_json(OutBuf* b, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                        int depth) except -1:
    """The validated item at i as compact JSON (CAR.md); returns the offset after it."""
    cdef Item it
    cdef Py_ssize_t ln, start
    cdef uint64_t j
    cdef const unsigned char* kp
    cdef Py_ssize_t kn
    if depth > CBOR_MAX_DEPTH:
        raise CarFormatError(f"nests deeper than {CBOR_MAX_DEPTH} levels")
    cb_head(s, i, n, &it)
    i += it.head
    if it.major == 0:
        ob_uint64(b, it.arg)
        return i
    if it.major == 1:
        ob_byte(b, b'-')
        if it.arg == <uint64_t>0xFFFFFFFFFFFFFFFF:
            ob_write(b, b"18446744073709551616", 20)
        else:
            ob_uint64(b, it.arg + 1)
        return i
    if it.major == 2:
        ln = cb_len(s, i, n, it.arg)
        ob_write(b, b'{"$bytes":"', 11)
        ob_base64(b, s + i, ln)
        ob_write(b, b'"}', 2)
        return i + ln
    if it.major == 3:
        ln = cb_len(s, i, n, it.arg)
        if not utf8_ok(s + i, ln):
            raise CarFormatError("has a text string that is not valid UTF-8")
        ob_json_str_go(b, s + i, ln)
        return i + ln
    if it.major == 4:
        cb_len(s, i, n, it.arg)
        ob_byte(b, b'[')
        for j in range(it.arg):
            if j:
                ob_byte(b, b',')
            i = cb_json(b, s, i, n, depth + 1)
        ob_byte(b, b']')
        return i
    if it.major == 5:
        cb_len(s, i, n, it.arg)
        ob_byte(b, b'{')
        for j in range(it.arg):
            if j:
                ob_byte(b, b',')
            i = cb_key(s, i, n, &kp, &kn)
            ob_json_str_go(b, kp, kn)
            ob_byte(b, b':')
            i = cb_json(b, s, i, n, depth + 1)
        ob_byte(b, b'}')
        return i
    if it.major == 6:
        if it.arg != 42:
            raise CarFormatError(f"has CBOR tag {it.arg} (only 42, links, is allowed)")
        ln = cb_link(s, i, n, &start)
        ob_write(b, b'{"$link":"', 10)
        ob_cid(b, s + start, ln - start)
        ob_write(b, b'"}', 2)
        return ln
    if it.arg == 20:
        ob_write(b, b"false", 5)
    elif it.arg == 21:
        ob_write(b, b"true", 4)
    elif it.arg == 22:
        ob_write(b, b"null", 4)
    elif it.arg == 23:
        raise CarFormatError("has `undefined` (not DAG-CBOR)")
    else:
        raise CarFormatError("has a CBOR simple value (not DAG-CBOR)")
    return i


cdef object cb_py(const unsigned char* s, Py_ssize_t* pi, Py_ssize_t n, int depth):
    """The item at pi[0] as Python objects (links as CID, bytes as bytes)."""
    cdef Item it
    cdef Py_ssize_t i = pi[0], ln, start
    cdef uint64_t j
    cdef const unsigned char* kp
    cdef Py_ssize_t kn
    if depth > 64:
        raise CarFormatError("nests too deep for a commit or MST node")
    cb_head(s, i, n, &it)
    i += it.head
    if it.major == 0:
        pi[0] = i
        return it.arg
    if it.major == 1:
        pi[0] = i
        return -1 - <object>it.arg
    if it.major == 2 or it.major == 3:
        ln = cb_len(s, i, n, it.arg)
        pi[0] = i + ln
        v = PyBytes_FromStringAndSize(<const char*>s + i, ln)
        if it.major == 3:
            if not utf8_ok(s + i, ln):
                raise CarFormatError("has a text string that is not valid UTF-8")
            return v.decode("utf-8")
        return v
    if it.major == 4:
        cb_len(s, i, n, it.arg)
        out = []
        pi[0] = i
        for j in range(it.arg):
            out.append(cb_py(s, pi, n, depth + 1))
        return out
    if it.major == 5:
        cb_len(s, i, n, it.arg)
        d = {}
        for j in range(it.arg):
            i = cb_key(s, i, n, &kp, &kn)
            k = PyBytes_FromStringAndSize(<const char*>kp, kn).decode("utf-8")
            pi[0] = i
            d[k] = cb_py(s, pi, n, depth + 1)
            i = pi[0]
        pi[0] = i
        return d
    if it.major == 6:
        if it.arg != 42:
            raise CarFormatError(f"has CBOR tag {it.arg} (only 42, links, is allowed)")
        ln = cb_link(s, i, n, &start)
        pi[0] = ln
        return CID(PyBytes_FromStringAndSize(<const char*>s + start, ln - start))
    pi[0] = i
    if it.arg == 20:
        return False
    if it.arg == 21:
        return True
    if it.arg == 22:
        return None
    if it.arg == 23:
        raise CarFormatError("has `undefined` (not DAG-CBOR)")
    raise CarFormatError("has a CBOR simple value (not DAG-CBOR)")


def cbor_to_py(data, Py_ssize_t pos=0, bint whole=True):
    """Decode one DAG-CBOR item at data[pos:] -> (object, offset after it).  With `whole`,
    nothing may follow it."""
    cdef bytes d = bytes(data)
    cdef Py_ssize_t i = pos, n = PyBytes_GET_SIZE(d)
    if not 0 <= pos <= n:
        raise ValueError("pos")
    cb_skip(<const unsigned char*>PyBytes_AS_STRING(d), pos, n, 0)
    v = cb_py(<const unsigned char*>PyBytes_AS_STRING(d), &i, n, 0)
    if whole and i != n:
        raise CarFormatError("has bytes after its value")
    return v, i


def cbor_to_json(data):
    """One DAG-CBOR block as compact JSON bytes (CAR.md's DAG-CBOR -> JSON)."""
    cdef bytes d = bytes(data)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(d)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d), end
    cdef OutBuf b
    cb_skip(s, 0, n, 0)
    ob_init(&b, n * 2 + 16)
    try:
        end = cb_json(&b, s, 0, n, 0)
        if end != n:
            raise CarFormatError("has bytes after its value")
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


cdef object cb_json_at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n):
    cdef OutBuf b
    ob_init(&b, 256)
    try:
        cb_json(&b, s, i, n, 0)
        return PyBytes_FromStringAndSize(b.data, b.len).decode("utf-8")
    finally:
        ob_free(&b)


cdef bint is_blob(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) except -1:
    """A blob reference: {"$type": "blob", "ref": link, ...} or legacy {"cid", "mimeType"}."""
    if i < 0:
        return False
    if cb_text_is(s, cb_find(s, i, n, "$type"), n, "blob"):
        return True
    cdef const unsigned char* tp
    cdef Py_ssize_t tn
    return (cb_text_at(s, cb_find(s, i, n, "cid"), n, &tp, &tn)
            and cb_find(s, i, n, "mimeType") >= 0)


cdef bint is_media_embed(const unsigned char* s, Py_ssize_t e, Py_ssize_t n) except -1:
    cdef Py_ssize_t t = cb_find(s, e, n, "$type"), x
    if cb_text_is(s, t, n, "app.bsky.embed.images") or cb_text_is(s, t, n, "app.bsky.embed.video"):
        return True
    if cb_text_is(s, t, n, "app.bsky.embed.external"):
        x = cb_find(s, e, n, "external")
        return x >= 0 and is_blob(s, cb_find(s, x, n, "thumb"), n)
    return False


EMBED_TYPES = {
    "app.bsky.embed.images": "images",
    "app.bsky.embed.external": "external",
    "app.bsky.embed.record": "record",
    "app.bsky.embed.recordWithMedia": "record_with_media",
    "app.bsky.embed.video": "video",
}


def post_fields(data):
    """A post record's posts-row fields (CAR.md's table):
    (text, created_at, has_media, is_reply, reply_parent, embed_type, embed_data, labels).
    Raises CarFormatError if the block is not valid atproto DAG-CBOR or not a map."""
    cdef bytes d = bytes(data)
    return post_fields_c(<const unsigned char*>PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d))


cdef struct PostFields:
    # text fields point into the record (checked UTF-8); NULL: absent ('')
    const unsigned char* text
    Py_ssize_t text_n
    const unsigned char* created
    Py_ssize_t created_n
    const unsigned char* parent
    Py_ssize_t parent_n
    const char* etype                 # embed_type: EMBED_TYPES' short name, or the $type
    Py_ssize_t etype_n
    bint has_media
    bint is_reply
    bint has_embed                    # embed_data, as JSON, in the `embed` OutBuf
    bint has_labels                   # labels, as JSON, in the `labels` OutBuf


cdef const char* embed_short(const unsigned char* tp, Py_ssize_t tn) noexcept:
    """EMBED_TYPES' name for an embed $type, NULL for any other."""
    if tn == 21 and memcmp(tp, b"app.bsky.embed.images", 21) == 0:
        return "images"
    if tn == 23 and memcmp(tp, b"app.bsky.embed.external", 23) == 0:
        return "external"
    if tn == 21 and memcmp(tp, b"app.bsky.embed.record", 21) == 0:
        return "record"
    if tn == 30 and memcmp(tp, b"app.bsky.embed.recordWithMedia", 30) == 0:
        return "record_with_media"
    if tn == 20 and memcmp(tp, b"app.bsky.embed.video", 20) == 0:
        return "video"
    return NULL


cdef int post_fields_into(const unsigned char* s, Py_ssize_t n, PostFields* f,
                          OutBuf* embed, OutBuf* labels) except -1:
    """The posts-row fields of the post record s[:n] (CAR.md's table) into f; embed_data
    and labels as JSON appended to `embed` and `labels`."""
    cdef Py_ssize_t i, v = -1, c = -1, e = -1, r = -1, lb = -1, t, x
    cdef const unsigned char* tp
    cdef Py_ssize_t tn
    cdef const char* short
    cdef Item it
    cdef uint64_t j
    if cb_skip(s, 0, n, 0) != n:
        raise CarFormatError("has bytes after its value")
    cb_head(s, 0, n, &it)
    if it.major != 5:
        raise CarFormatError("is not a map")
    # one pass over the top-level keys (the first of a repeated key counts, as cb_find)
    i = it.head
    for j in range(it.arg):
        cb_head(s, i, n, &it)
        i += it.head
        x = <Py_ssize_t>it.arg
        tp = s + i
        i += x
        if x == 4 and memcmp(tp, b"text", 4) == 0:
            if v < 0:
                v = i
        elif x == 9 and memcmp(tp, b"createdAt", 9) == 0:
            if c < 0:
                c = i
        elif x == 5 and memcmp(tp, b"embed", 5) == 0:
            if e < 0:
                e = i
        elif x == 5 and memcmp(tp, b"reply", 5) == 0:
            if r < 0:
                r = i
        elif x == 6 and memcmp(tp, b"labels", 6) == 0:
            if lb < 0:
                lb = i
        i = cb_pass(s, i, n)
    f.text = f.created = f.parent = NULL
    f.text_n = f.created_n = f.parent_n = 0
    if v >= 0 and not cb_text_at(s, v, n, &f.text, &f.text_n):
        raise CarFormatError("has a `text` that is not a string")
    if c >= 0 and not cb_text_at(s, c, n, &f.created, &f.created_n):
        raise CarFormatError("has a `createdAt` that is not a string")
    f.has_media = False
    f.etype = NULL
    f.etype_n = 0
    f.has_embed = e >= 0
    if e >= 0:
        cb_json(embed, s, e, n, 0)
        t = cb_find(s, e, n, "$type")
        if cb_text_at(s, t, n, &tp, &tn):
            short = embed_short(tp, tn)
            if short != NULL:
                f.etype, f.etype_n = short, <Py_ssize_t>strlen(short)
            else:
                f.etype, f.etype_n = <const char*>tp, tn
        f.has_media = is_media_embed(s, e, n)
        if not f.has_media and cb_text_is(s, t, n, "app.bsky.embed.recordWithMedia"):
            f.has_media = is_media_embed(s, cb_find(s, e, n, "media"), n)
    f.is_reply = r >= 0
    if r >= 0:
        x = cb_find(s, r, n, "parent")
        if x >= 0 and not cb_text_at(s, cb_find(s, x, n, "uri"), n, &f.parent, &f.parent_n):
            f.parent = NULL
            f.parent_n = 0
    f.has_labels = lb >= 0
    if lb >= 0:
        cb_json(labels, s, lb, n, 0)
    return 0


cdef inline str utf8_str(const void* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char*>p, n, NULL) if n else ""


cdef tuple post_fields_c(const unsigned char* s, Py_ssize_t n):
    cdef PostFields f
    cdef OutBuf embed, labels
    ob_init(&embed, 256)
    try:
        ob_init(&labels, 64)
        try:
            post_fields_into(s, n, &f, &embed, &labels)
            return (utf8_str(f.text, f.text_n), utf8_str(f.created, f.created_n),
                    bool(f.has_media), bool(f.is_reply), utf8_str(f.parent, f.parent_n),
                    utf8_str(f.etype, f.etype_n),
                    utf8_str(embed.data, embed.len) if f.has_embed else None,
                    utf8_str(labels.data, labels.len) if f.has_labels else None)
        finally:
            ob_free(&labels)
    finally:
        ob_free(&embed)


# --- the MST walk, in the core ---------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class _Frame:
    """One MST node on the walk's path: its data (None while the walk is below it: only
    the node being read is held, the others are read again from the CAR when the walk
    comes back to them), where that is in the CAR, where its next entry starts, how many
    entries are left, and the last key read in it (keys are prefix-compressed per node)."""
    cdef bytes data
    cdef int64_t off
    cdef Py_ssize_t n
    cdef Py_ssize_t pos
    cdef uint64_t left
    cdef bytes key


POST_PREFIX = b"app.bsky.feed.post/"
POST_END = b"app.bsky.feed.post0"    # "/" + 1: every post key is in [POST_PREFIX, POST_END)


cdef inline bint alnum(unsigned char c) noexcept nogil:
    return (b'a' <= c <= b'z') or (b'A' <= c <= b'Z') or (b'0' <= c <= b'9')


cdef bint nsid_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """atproto's NSID syntax: at least three segments separated by '.', each 1-63 bytes;
    the domain segments of letters, digits and '-' (not at either end; the first not
    starting with a digit), the name of letters and digits starting with a letter."""
    cdef Py_ssize_t i = 0, start = 0, segs = 0, last = 0
    cdef unsigned char c
    while True:
        start = i
        while i < n and s[i] != b'.':
            i += 1
        if i == start or i - start > 63:
            return False
        segs += 1
        last = start
        if i == n:
            break
        # a domain segment
        if s[start] == b'-' or s[i - 1] == b'-' or (segs == 1 and b'0' <= s[start] <= b'9'):
            return False
        for start in range(start, i):
            c = s[start]
            if not (alnum(c) or c == b'-'):
                return False
        i += 1
    if segs < 3 or b'0' <= s[last] <= b'9':
        return False
    for i in range(last, n):
        if not alnum(s[i]):
            return False
    return True


cdef bint rkey_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """atproto's record key syntax: 1-512 of A-Za-z0-9 . - _ : ~, not "." or ".."."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n < 1 or n > MAX_RKEY:
        return False
    if s[0] == b'.' and (n == 1 or (n == 2 and s[1] == b'.')):
        return False
    for i in range(n):
        c = s[i]
        if not (alnum(c) or c == b'.' or c == b'-' or c == b'_' or c == b':' or c == b'~'):
            return False
    return True


cdef int bytes_cmp(bytes a, bytes b) noexcept:
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b)
    cdef int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), na if na < nb else nb)
    if c != 0:
        return c
    return (na > nb) - (na < nb)


cdef enum:
    ROW_BYTES = 4 << 20       # a batch of rows ends once it holds this many bytes


@cython.final
@cython.auto_pickle(False)
cdef class CarWalker:
    """The MST of a CAR walked depth-first in key order, every block it uses read through
    the block index and checked against its CID.  `rows(n, archived_at)` returns up to n
    posts rows (17 columns, schema v2 order), [] at the end.  Every MST node is read and
    checked (its keys in order, each key within atproto's bounds), whatever is exported,
    so every walk accepts and refuses the same files; only the records of
    app.bsky.feed.post are read.  Without `posts_only`, `collections` counts the keys by
    collection.  The walk reads at most `budget` bytes of blocks (8 times the file's size
    and 8 MiB, each read counting FETCH_COST more): an honest tree reads each block once,
    a tree that reuses a subtree or a record many times is refused.  Errors raise
    CarFormatError with the block's CID and key."""
    cdef int fd
    cdef BlockIndex ix
    cdef list stack
    cdef readonly dict collections
    cdef readonly int64_t blocks_read     # block reads (nodes and records)
    cdef readonly int64_t nodes_read
    cdef readonly int64_t nodes_reread    # nodes read again when the walk came back up
    cdef readonly int64_t budget          # bytes the walk may still read
    cdef readonly bint posts_only
    cdef str did
    cdef object sha256
    cdef bytes last_key
    cdef bytes value          # the record CID of the key next_key() returned
    cdef unsigned char* buf   # the last block fetch() read: its CID, then its data
    cdef Py_ssize_t cap
    cdef Py_ssize_t dn        # the data length of the record next_post() read
    cdef int64_t fetched_at   # where the block fetch() read starts in the CAR (its CID)
    cdef object tap           # a RecordTap (_records.pxi) given every record, or None

    def __cinit__(self):
        self.buf = NULL
        self.cap = 0

    def __init__(self, int fd, BlockIndex index not None, data_cid, str did,
                 bint posts_only=False):
        self.fd = fd
        self.ix = index
        import hashlib
        self.sha256 = hashlib.sha256
        self.did = did
        self.posts_only = posts_only
        self.collections = {}
        self.stack = []
        self.last_key = None
        self.tap = None
        self.budget = 8 * index.size + (8 << 20)
        self.push(bytes(data_cid), None)

    def __dealloc__(self):
        PyMem_RawFree(self.buf)

    def close(self):
        self.stack = []

    def set_tap(self, tap):
        """Hand every record of the tap's collections to it as the walk passes it
        (next_post: the posts rows and the records files read the CAR once)."""
        if not isinstance(tap, RecordTap):
            raise TypeError("a RecordTap")
        self.tap = tap

    cdef str what(self, bytes key, bytes prev):
        """The block's name in errors: a record by its key, an MST node by the key before."""
        if key is not None:
            return f"record {key.decode('ascii')}"
        if prev is not None:
            return f"MST node after key {prev.decode('ascii')}"
        return "MST node before the first key"

    cdef Py_ssize_t fetch(self, const unsigned char* cid, Py_ssize_t cn, bytes key,
                          bytes prev) except -1:
        """Reads block `cid` (the record of `key`, or the MST node after key `prev`) into
        self.buf and checks it: returns the length of its data (at self.buf + cn)."""
        cdef Py_ssize_t r
        cdef uint64_t v, code = 0
        cdef Py_ssize_t i
        if not sha256_cid(cid, cn):
            if cn > 80 or cid_len(cid, cn) != cn:
                raise CarFormatError(f"block ({self.what(key, prev)}) has an overlong or "
                                     "malformed CID")
            i = 0 if cid[0] == 0x12 else uvarint(cid, cn, &v)
            if i:
                i += uvarint(cid + i, cn - i, &v)
            uvarint(cid + i, cn - i, &code)
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) "
                                 f"uses hash 0x{code:x}; only SHA-256 CIDs can be checked")
        r = self.ix.resolve(self.fd, cid, cn, &self.buf, &self.cap, self.sha256,
                            &self.fetched_at)
        if r == -2:
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) does "
                                 "not match its CID (the file is damaged); download the "
                                 "repository again")
        if r < 0:
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) is "
                                 "missing (a partial CAR?); download the whole repository "
                                 "again")
        if self.budget < r + cn + FETCH_COST:   # the message only when it is needed
            self.spend(r + cn, cid_str(cid[:cn]), self.what(key, prev))
        else:
            self.budget -= r + cn + FETCH_COST
        self.blocks_read += 1
        return r

    cdef int spend(self, Py_ssize_t n, str name, str what) except -1:
        self.budget -= n + FETCH_COST
        if self.budget < 0:
            raise CarFormatError(f"block {name} ({what}): the MST has read "
                                 f"{self.blocks_read} blocks, more than 8 times the file's "
                                 "size in all: it reuses a subtree or a record many times (an "
                                 "honest repository reads each block about once); refused")
        return 0

    cdef int reload(self, _Frame f) except -1:
        """Read f's node again (the walk comes back to it from a subtree), checked as
        the first time (not hashed again: the walk read it whole moments ago)."""
        cdef bytes data = PyBytes_FromStringAndSize(NULL, f.n)
        self.spend(f.n, "", "an MST node read again")
        if (pread_full(self.fd, PyBytes_AS_STRING(data), f.n, f.off) != f.n
                or cb_skip(<const unsigned char*>PyBytes_AS_STRING(data), 0, f.n, 0) != f.n):
            raise CarFormatError("the CAR changed while it was read (an MST node differs)")
        self.nodes_reread += 1
        f.data = data
        return 0

    cdef int push(self, bytes cid, bytes prev) except -1:
        """Put the node `cid` on the path, and its leftmost descendants after it."""
        cdef Item it
        cdef Py_ssize_t n, e, left, start, end, cn
        cdef const unsigned char* s
        cdef _Frame f
        while True:
            if self.stack:   # one node held at a time: the parent is read again later
                (<_Frame>self.stack[len(self.stack) - 1]).data = None
            cn = PyBytes_GET_SIZE(cid)
            n = self.fetch(<const unsigned char*>PyBytes_AS_STRING(cid), cn, None, prev)
            self.nodes_read += 1
            data = PyBytes_FromStringAndSize(<const char*>self.buf + cn, n)
            s = <const unsigned char*>PyBytes_AS_STRING(data)
            try:
                if cb_skip(s, 0, n, 0) != n:
                    raise CarFormatError("has bytes after its value")
                cb_head(s, 0, n, &it)
                e = cb_find(s, 0, n, "e")
                left = cb_find(s, 0, n, "l")
                if e < 0 or left < 0 or it.arg != 2:
                    raise CarFormatError("is not an MST node {l, e}")
                cb_head(s, e, n, &it)
                if it.major != 4:
                    raise CarFormatError("has an `e` that is not an array")
            except CarFormatError as exc:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) "
                                     f"{exc}") from None
            if len(self.stack) > 128:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) is "
                                     "more than 128 levels deep")
            f = _Frame.__new__(_Frame)
            f.data = data
            f.off = self.fetched_at + cn
            f.n = n
            f.pos = e + it.head
            f.left = it.arg
            f.key = b""
            cb_head(s, left, n, &it)
            if f.left == 0 and it.major == 7 and self.stack:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) is an "
                                     "empty MST node below the root (the MST is damaged)")
            self.stack.append(f)
            if it.major == 7 and it.arg == 22:
                return 0
            if it.major != 6:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) has "
                                     "an `l` that is not a link")
            start = 0
            end = cb_link(s, left + it.head, n, &start)
            cid = PyBytes_FromStringAndSize(<const char*>s + start, end - start)

    cdef bytes next_key(self):
        """The next key of the walk (its record CID in self.value), None at the end."""
        cdef _Frame f
        cdef const unsigned char* s
        cdef const unsigned char* ks
        cdef Py_ssize_t n, i, pp, kp, vp, tp, start, end, klen, kn, slash, j
        cdef Item it
        cdef bytes key, sub
        while self.stack:
            f = <_Frame>self.stack[len(self.stack) - 1]
            if f.left == 0:
                self.stack.pop()
                continue
            if f.data is None:
                self.reload(f)
            s = <const unsigned char*>PyBytes_AS_STRING(f.data)
            n = PyBytes_GET_SIZE(f.data)
            i = f.pos
            cb_head(s, i, n, &it)
            try:
                if it.major != 5:
                    raise CarFormatError("has an entry that is not a map")
                pp = cb_find(s, i, n, "p")
                kp = cb_find(s, i, n, "k")
                vp = cb_find(s, i, n, "v")
                tp = cb_find(s, i, n, "t")
                if pp < 0 or kp < 0 or vp < 0 or tp < 0 or it.arg != 4:
                    raise CarFormatError("has a malformed entry (its keys are not p, k, t, v)")
                cb_head(s, pp, n, &it)
                if it.major != 0 or it.arg > <uint64_t>PyBytes_GET_SIZE(f.key):
                    raise CarFormatError("has a malformed entry (p)")
                klen = <Py_ssize_t>it.arg
                cb_head(s, kp, n, &it)
                if it.major != 2:
                    raise CarFormatError("has a malformed entry (k)")
                if it.arg > <uint64_t>(MAX_KEY - klen):
                    raise CarFormatError(f"has a key of {klen + <Py_ssize_t>it.arg} bytes; "
                                         f"atproto keys are at most {MAX_KEY} (a collection "
                                         f"of {MAX_NSID}, '/', a record key of {MAX_RKEY})")
                key = f.key[:klen] + PyBytes_FromStringAndSize(<const char*>s + kp + it.head,
                                                               <Py_ssize_t>it.arg)
                ks = <const unsigned char*>PyBytes_AS_STRING(key)
                kn = PyBytes_GET_SIZE(key)
                slash = -1
                for j in range(kn):
                    if not 0x21 <= ks[j] <= 0x7e:
                        raise CarFormatError("has a key that is not printable ASCII")
                    if ks[j] == b'/' and slash < 0:
                        slash = j
                if (slash < 1 or slash > MAX_NSID or kn - slash - 1 < 1
                        or kn - slash - 1 > MAX_RKEY or not nsid_ok(ks, slash)
                        or not rkey_ok(ks + slash + 1, kn - slash - 1)):
                    raise CarFormatError(f"has key {key.decode('ascii')}, not COLLECTION/RKEY "
                                         f"(an NSID of 1 to {MAX_NSID} bytes, a record "
                                         f"key of 1 to {MAX_RKEY} of A-Za-z0-9.-_:~)")
                if self.last_key is not None and bytes_cmp(key, self.last_key) <= 0:
                    raise CarFormatError(f"has key {key.decode('ascii')} out of order (the "
                                         "MST is damaged)")
                cb_head(s, vp, n, &it)
                if it.major != 6:
                    raise CarFormatError("has a malformed entry (v)")
                end = cb_link(s, vp + it.head, n, &start)
                self.value = PyBytes_FromStringAndSize(<const char*>s + start, end - start)
                cb_head(s, tp, n, &it)
                sub = None
                if it.major == 6:
                    end = cb_link(s, tp + it.head, n, &start)
                    sub = PyBytes_FromStringAndSize(<const char*>s + start, end - start)
                elif not (it.major == 7 and it.arg == 22):
                    raise CarFormatError("has a malformed entry (t)")
            except CarFormatError as exc:
                prev = self.last_key
                where = (f"after key {prev.decode('ascii')}" if prev is not None
                         else "before the first key")
                raise CarFormatError(f"MST node ({where}) {exc}") from None
            f.pos = cb_pass(s, i, n)
            f.left -= 1
            f.key = key
            self.last_key = key
            if not self.posts_only:
                coll = key[:slash]
                self.collections[coll] = self.collections.get(coll, 0) + 1
            if sub is not None:
                self.push(sub, key)
            return key
        return None

    cdef bytes next_post(self):
        """The next post's key, its record read and checked (data at self.buf + len(cid),
        self.dn bytes; the CID in self.value); None at the end."""
        cdef bytes key
        cdef Py_ssize_t cn
        cdef bytes prefix = POST_PREFIX
        cdef Py_ssize_t pn = PyBytes_GET_SIZE(prefix)
        while True:
            key = self.next_key()
            if key is None:
                return None
            if (PyBytes_GET_SIZE(key) <= pn
                    or memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), pn) != 0):
                if self.tap is not None:
                    tap_key(self, key, False)
                continue
            cn = PyBytes_GET_SIZE(self.value)
            self.dn = self.fetch(<const unsigned char*>PyBytes_AS_STRING(self.value), cn,
                                 key, None)
            if self.dn > MAX_RECORD:
                raise CarFormatError(f"block {cid_str(self.value)} ({self.what(key, None)}) "
                                     f"is {self.dn} bytes; atproto records are at most "
                                     f"{MAX_RECORD >> 20} MiB")
            if self.tap is not None:
                tap_key(self, key, True)
            return key

    def entries(self, Py_ssize_t limit):
        """Up to `limit` (key, record CID) of the walk, in key order; [] at the end.  (No
        record is read.)"""
        cdef list out = []
        cdef bytes key
        while len(out) < limit:
            key = self.next_key()
            if key is None:
                break
            out.append((key.decode("ascii"), CID(self.value)))
        return out

    def rows(self, Py_ssize_t limit, str archived_at, Py_ssize_t max_bytes=ROW_BYTES):
        """Up to `limit` posts rows, fewer once they hold `max_bytes` of text; [] at the
        end."""
        cdef list out = []
        cdef bytes key, value
        cdef Py_ssize_t held = 0
        did = self.did
        while len(out) < limit and held < max_bytes:
            key = self.next_post()
            if key is None:
                break
            value = self.value
            try:
                (text, created, media, reply, parent, etype, edata,
                 labels) = post_fields_c(self.buf + PyBytes_GET_SIZE(value), self.dn)
            except CarFormatError as exc:
                raise CarFormatError(f"block {cid_str(value)} ({self.what(key, None)}) "
                                     f"{exc}") from None
            skey = key.decode("ascii")
            held += (len(text) + len(created) + len(parent) + len(etype) + len(did)
                     + 2 * len(skey) + (len(edata) if edata is not None else 0)
                     + (len(labels) if labels is not None else 0) + 200)
            out.append((f"at://{did}/{skey}", cid_str(value), did, text, created, created,
                        int(media), 0, 0, 0, 0, int(reply), parent, etype, edata, labels,
                        archived_at))
        return out

    def fill(self, RowBatch batch not None, Py_ssize_t limit,
             Py_ssize_t max_bytes=ROW_BYTES):
        """Decode up to `limit` posts rows (those rows() returns) into `batch`, replacing
        what it held, fewer once they hold `max_bytes`; returns how many: 0 at the end."""
        cdef bytes key, value
        cdef PostFields f
        cdef OutBuf embed, labels
        cdef Py_ssize_t cn, r
        cdef OutBuf* a = &batch.arena
        cdef int64_t* x
        if limit > batch.cap:
            batch.grow(limit)
        a.len = 0
        batch.n = 0
        ob_init(&embed, 256)
        ob_init(&labels, 64)
        try:
            while batch.n < limit and a.len < max_bytes:
                key = self.next_post()
                if key is None:
                    break
                value = self.value
                cn = PyBytes_GET_SIZE(value)
                embed.len = labels.len = 0
                try:
                    post_fields_into(self.buf + cn, self.dn, &f, &embed, &labels)
                except CarFormatError as exc:
                    raise CarFormatError(f"block {cid_str(value)} ({self.what(key, None)}) "
                                         f"{exc}") from None
                x = batch.fields + batch.n * RB_FIELDS
                x[0] = a.len                                   # uri
                ob_write(a, "at://", 5)
                ob_write(a, PyBytes_AS_STRING(batch.did), PyBytes_GET_SIZE(batch.did))
                ob_byte(a, b"/")
                ob_write(a, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                x[1] = a.len                                   # cid
                ob_cid(a, <const unsigned char*>PyBytes_AS_STRING(value), cn)
                x[2] = a.len                                   # text
                ob_put(a, f.text, f.text_n)
                x[3] = a.len                                   # created_at
                ob_put(a, f.created, f.created_n)
                x[4] = a.len                                   # reply_parent
                ob_put(a, f.parent, f.parent_n)
                x[5] = a.len                                   # embed_type
                ob_put(a, f.etype, f.etype_n)
                x[6] = a.len                                   # embed_data
                if f.has_embed:
                    ob_write(a, embed.data, embed.len)
                x[7] = a.len                                   # labels
                if f.has_labels:
                    ob_write(a, labels.data, labels.len)
                x[8] = a.len                                   # the end
                x[9] = (f.has_media | (f.is_reply << 1) | (f.has_embed << 2)
                        | (f.has_labels << 3))
                batch.n += 1
            return batch.n
        finally:
            ob_free(&embed)
            ob_free(&labels)


cdef inline int ob_put(OutBuf* b, const void* p, Py_ssize_t n) except -1:
    """ob_write, for a pointer that is NULL when n is 0."""
    if n > 0:
        ob_write(b, <const char*>p, n)
    return 0


cdef enum:
    RB_FIELDS = 10   # per row: 9 offsets into the arena (8 values and the end), flags


@cython.final
@cython.auto_pickle(False)
cdef class RowBatch:
    """posts rows decoded by CarWalker.fill, held in C memory, and inserted by
    insert_into() without the GIL: the walk fills the next batch meanwhile."""
    cdef OutBuf arena
    cdef int64_t* fields
    cdef Py_ssize_t cap, n
    cdef bytes did, archived_at

    def __cinit__(self):
        self.fields = NULL
        self.cap = self.n = 0
        ob_init(&self.arena, 1 << 16)

    def __init__(self, str did, str archived_at):
        self.did = did.encode("utf-8")
        self.archived_at = archived_at.encode("utf-8")

    def __dealloc__(self):
        ob_free(&self.arena)
        PyMem_RawFree(self.fields)

    cdef int grow(self, Py_ssize_t cap) except -1:
        cdef int64_t* f = <int64_t*>PyMem_RawRealloc(self.fields,
                                                     cap * RB_FIELDS * sizeof(int64_t))
        if f == NULL:
            raise MemoryError()
        self.fields, self.cap = f, cap
        return 0

    def __len__(self):
        return self.n

    def insert_into(self, conn):
        """Insert the rows into table `posts` of `conn` (schema v2; an APSW connection
        this module is loaded into as an extension; the caller holds the transaction and
        uses the connection for nothing else meanwhile).  SQLite runs without the GIL."""
        if not sx_ready():
            raise RuntimeError("the SQLite API table is not loaded")
        cdef sqlite3* db = <sqlite3*><uintptr_t>conn.sqlite3_pointer()
        cdef sqlite3_stmt* ins = NULL
        cdef bytes q = ("INSERT INTO posts VALUES (" + ",".join(["?"] * 17) + ")").encode()
        cdef Py_ssize_t i
        cdef const int64_t* x
        cdef int rc = sx_prepare(db, q, <int>len(q), &ins)
        if rc != SQLITE_OK:
            raise sqlite_error(db, rc)
        for i in range(self.n):
            x = self.fields + i * RB_FIELDS
            if x[8] - x[0] > 0x7FFFFFFF:
                sx_finalize(ins)
                raise CarFormatError("has a value too long for SQLite")
        cdef const char* did = PyBytes_AS_STRING(self.did)
        cdef Py_ssize_t did_n = PyBytes_GET_SIZE(self.did)
        cdef const char* at = PyBytes_AS_STRING(self.archived_at)
        cdef Py_ssize_t at_n = PyBytes_GET_SIZE(self.archived_at)
        try:
            with nogil:
                rc = rb_insert(ins, self.arena.data, self.fields, self.n, did, did_n, at,
                               at_n)
            if rc != SQLITE_DONE:
                raise sqlite_error(db, rc)
        finally:
            sx_finalize(ins)


cdef int rb_insert(sqlite3_stmt* ins, const char* a, const int64_t* fields, Py_ssize_t n,
                   const char* did, Py_ssize_t did_n, const char* at,
                   Py_ssize_t at_n) noexcept nogil:
    """Bind and step every row; SQLITE_DONE, or the first failing step's code."""
    cdef Py_ssize_t i
    cdef const int64_t* x
    cdef int rc
    for i in range(n):
        x = fields + i * RB_FIELDS
        sx_bind_text(ins, 1, a + x[0], <int>(x[1] - x[0]))
        sx_bind_text(ins, 2, a + x[1], <int>(x[2] - x[1]))
        sx_bind_text(ins, 3, did, <int>did_n)
        sx_bind_text(ins, 4, a + x[2], <int>(x[3] - x[2]))
        sx_bind_text(ins, 5, a + x[3], <int>(x[4] - x[3]))
        sx_bind_text(ins, 6, a + x[3], <int>(x[4] - x[3]))
        sx_bind_int64(ins, 7, x[9] & 1)
        sx_bind_int64(ins, 8, 0)
        sx_bind_int64(ins, 9, 0)
        sx_bind_int64(ins, 10, 0)
        sx_bind_int64(ins, 11, 0)
        sx_bind_int64(ins, 12, (x[9] >> 1) & 1)
        sx_bind_text(ins, 13, a + x[4], <int>(x[5] - x[4]))
        sx_bind_text(ins, 14, a + x[5], <int>(x[6] - x[5]))
        if x[9] & 4:
            sx_bind_text(ins, 15, a + x[6], <int>(x[7] - x[6]))
        else:
            sx_bind_null(ins, 15)
        if x[9] & 8:
            sx_bind_text(ins, 16, a + x[7], <int>(x[8] - x[7]))
        else:
            sx_bind_null(ins, 16)
        sx_bind_text(ins, 17, at, <int>at_n)
        rc = sx_step(ins)
        sx_reset(ins)
        if rc != SQLITE_DONE:
            return rc
    return SQLITE_DONE
