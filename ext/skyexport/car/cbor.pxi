# Repository CARs: DAG-CBOR, strictly validated (docs/CAR.md): decoded to Python objects
# (cb_py) or written as compact JSON (cb_json).

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
        ob_json_str_html(b, s + i, ln)
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
            ob_json_str_html(b, kp, kn)
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
