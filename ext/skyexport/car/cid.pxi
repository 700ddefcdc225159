# Repository CARs (docs/CAR.md), part 1: the limits every part shares, the errors,
# multibase (base32, base64, base58) and CIDs' text form, varints and the CID index key.

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
    SCAN_PENDING = 8192       # blocks whose verdict waits for one pass without the GIL
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
