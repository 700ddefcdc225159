# JSON encoding of text and stored JSON, as Go's encoding/json writes it with
# SetEscapeHTML(false) (FORMAT.md, posts.json).

cdef extern from "scan.h" nogil:
    Py_ssize_t sx_json_plain(const unsigned char* s, Py_ssize_t n)
    Py_ssize_t sx_csv_plain(const unsigned char* s, Py_ssize_t n)

cdef const char* HEX = b"0123456789abcdef"

# What each ASCII byte becomes inside a JSON string: 0 = itself, 'u' = \u00XX, else the
# letter after a backslash.  Filled in once at import (init_tables).
cdef unsigned char JSON_ESC[128]

# Bytes of input handled per reservation: bounds the buffer growth a huge text causes to
# 6x this, not 6x the text.
cdef enum:
    ESC_CHUNK = 16384
    JSON_MAX_DEPTH = 10000


cdef void init_json_tables() noexcept:
    cdef int c
    for c in range(128):
        JSON_ESC[c] = 0
    for c in range(32):
        JSON_ESC[c] = b'u'
    JSON_ESC[8] = b'b'
    JSON_ESC[9] = b't'
    JSON_ESC[10] = b'n'
    JSON_ESC[12] = b'f'
    JSON_ESC[13] = b'r'
    JSON_ESC[34] = b'"'
    JSON_ESC[92] = b'\\'


cdef inline int utf8_seq_len(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Length of the well-formed UTF-8 sequence at s (first byte >= 0x80), 0 if Go's
    utf8.DecodeRune would reject it (it then consumes one byte)."""
    cdef unsigned char c = s[0], lo = 0x80, hi = 0xBF
    cdef int k
    if 0xC2 <= c <= 0xDF:
        k = 2
    elif 0xE0 <= c <= 0xEF:
        k = 3
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif 0xF0 <= c <= 0xF4:
        k = 4
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if n < k or s[1] < lo or s[1] > hi:
        return 0
    if k >= 3 and (s[2] & 0xC0) != 0x80:
        return 0
    if k == 4 and (s[3] & 0xC0) != 0x80:
        return 0
    return k


cdef int ob_json_str(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1 nogil:
    """`"..."` with Go's escaping: short escapes, \\u00XX for other controls, \\u2028/9,
    one \\ufffd per byte Go's UTF-8 decoder rejects, everything else raw."""
    cdef Py_ssize_t i = 0, stop, run
    cdef unsigned char c, e
    cdef int k
    cdef unsigned char* o
    ob_byte(b, b'"')
    while i < n:
        stop = i + ESC_CHUNK
        if stop > n:
            stop = n
        # Worst case 6 output bytes per input byte, plus a sequence straddling `stop`.
        ob_reserve(b, (stop - i) * 6 + 24)
        o = <unsigned char*>b.data + b.len
        while i < stop:
            # the run written as it is, found 16 bytes at a time (scan.h)
            run = sx_json_plain(s + i, stop - i)
            if run:
                memcpy(o, s + i, run)
                o += run
                i += run
                if i >= stop:
                    break
            c = s[i]
            if c < 0x80:
                e = JSON_ESC[c]
                if e == 0:
                    o[0] = c
                    o += 1
                    i += 1
                    continue
                o[0] = b'\\'
                if e == b'u':
                    o[1] = b'u'
                    o[2] = b'0'
                    o[3] = b'0'
                    o[4] = HEX[c >> 4]
                    o[5] = HEX[c & 15]
                    o += 6
                else:
                    o[1] = e
                    o += 2
                i += 1
                continue
            k = utf8_seq_len(s + i, n - i)
            if k == 0:
                memcpy(o, b"\\ufffd", 6)
                o += 6
                i += 1
            elif (k == 3 and c == 0xE2 and s[i + 1] == 0x80
                  and (s[i + 2] == 0xA8 or s[i + 2] == 0xA9)):
                memcpy(o, b"\\u2028" if s[i + 2] == 0xA8 else b"\\u2029", 6)
                o += 6
                i += 3
            else:
                memcpy(o, s + i, k)
                o += k
                i += k
        b.len = <char*>o - b.data
    ob_byte(b, b'"')
    return 0


cdef inline Py_ssize_t skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef inline bint is_hex(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (97 <= c <= 102) or (65 <= c <= 70)


cdef Py_ssize_t scan_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """s[i] is '"': index just past the closing quote, or -1 if the string is invalid."""
    cdef unsigned char c
    i += 1
    while i < n:
        c = s[i]
        if c == b'"':
            return i + 1
        if c == b'\\':
            if i + 1 >= n:
                return -1
            c = s[i + 1]
            if c == b'u':
                if i + 5 >= n or not (is_hex(s[i + 2]) and is_hex(s[i + 3])
                                      and is_hex(s[i + 4]) and is_hex(s[i + 5])):
                    return -1
                i += 6
            elif (c == b'"' or c == b'\\' or c == b'/' or c == b'b' or c == b'f'
                  or c == b'n' or c == b'r' or c == b't'):
                i += 2
            else:
                return -1
        elif c < 0x20:
            return -1
        else:
            i += 1
    return -1


cdef Py_ssize_t scan_number(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """JSON number grammar from s[i]: index past it, or -1."""
    if i < n and s[i] == b'-':
        i += 1
    if i >= n:
        return -1
    if s[i] == b'0':
        i += 1
    elif 49 <= s[i] <= 57:
        while i < n and is_digit(s[i]):
            i += 1
    else:
        return -1
    if i < n and s[i] == b'.':
        i += 1
        if i >= n or not is_digit(s[i]):
            return -1
        while i < n and is_digit(s[i]):
            i += 1
    if i < n and (s[i] == b'e' or s[i] == b'E'):
        i += 1
        if i < n and (s[i] == b'+' or s[i] == b'-'):
            i += 1
        if i >= n or not is_digit(s[i]):
            return -1
        while i < n and is_digit(s[i]):
            i += 1
    return i


cdef int ob_newline(OutBuf* b, int level) except -1 nogil:
    ob_reserve(b, 1 + 2 * level)
    b.data[b.len] = b'\n'
    memset(b.data + b.len + 1, 32, 2 * level)
    b.len += 1 + 2 * level
    return 0


# Writers for ob_raw_json that do nothing when it only validates (b == NULL).
cdef inline int jw_write(OutBuf* b, const char* p, Py_ssize_t n) except -1 nogil:
    return ob_write(b, p, n) if b != NULL else 0


cdef inline int jw_byte(OutBuf* b, char c) except -1 nogil:
    return ob_byte(b, c) if b != NULL else 0


cdef inline int jw_newline(OutBuf* b, int level) except -1 nogil:
    return ob_newline(b, level) if b != NULL else 0


cdef int ob_raw_json(OutBuf* b, const unsigned char* s, Py_ssize_t n, int level,
                     bint pretty) except -1 nogil:
    """Validate stored JSON and append it re-formatted: indented as Go's json.Indent would
    at nesting `level` (pretty) or compacted.  Strings, numbers and literals are copied
    byte for byte.  Returns 0 when written, 1 when the text is not valid JSON (the caller
    truncates whatever was appended).  With `b` NULL it only validates."""
    # stack[d] is the container opened at depth d+1: '{' or '['.
    cdef unsigned char* stack = NULL
    cdef int depth = 0, cap = 0
    cdef Py_ssize_t i = skip_ws(s, 0, n), j
    cdef unsigned char c
    cdef bint want_key = False
    cdef int result = 1
    try:
        while True:
            # --- one value (or, in an object, one "key": value) ---
            i = skip_ws(s, i, n)
            if i >= n:
                return 1
            if want_key:
                if s[i] != b'"':
                    return 1
                j = scan_string(s, i, n)
                if j < 0:
                    return 1
                jw_write(b, <const char*>s + i, j - i)
                i = skip_ws(s, j, n)
                if i >= n or s[i] != b':':
                    return 1
                if pretty:
                    jw_write(b, b": ", 2)
                else:
                    jw_byte(b, b':')
                i = skip_ws(s, i + 1, n)
                if i >= n:
                    return 1
            c = s[i]
            if c == b'{' or c == b'[':
                j = skip_ws(s, i + 1, n)
                if depth >= JSON_MAX_DEPTH:         # Go's scanner: maxNestingDepth
                    return 1
                if j < n and s[j] == c + 2:       # '{'+2 == '}', '['+2 == ']'
                    jw_byte(b, <char>c)
                    jw_byte(b, <char>(c + 2))
                    i = j + 1
                else:
                    if depth == cap:
                        cap = cap * 2 + 16
                        stack = <unsigned char*>PyMem_RawRealloc(stack, cap)
                        if stack == NULL:
                            with gil:
                                raise MemoryError()
                    stack[depth] = c
                    depth += 1
                    jw_byte(b, <char>c)
                    if pretty:
                        jw_newline(b, level + depth)
                    want_key = c == b'{'
                    i = j
                    continue
            elif c == b'"':
                j = scan_string(s, i, n)
                if j < 0:
                    return 1
                jw_write(b, <const char*>s + i, j - i)
                i = j
            elif c == b'-' or is_digit(c):
                j = scan_number(s, i, n)
                if j < 0:
                    return 1
                jw_write(b, <const char*>s + i, j - i)
                i = j
            elif c == b't' and n - i >= 4 and memcmp(s + i, b"true", 4) == 0:
                jw_write(b, b"true", 4)
                i += 4
            elif c == b'f' and n - i >= 5 and memcmp(s + i, b"false", 5) == 0:
                jw_write(b, b"false", 5)
                i += 5
            elif c == b'n' and n - i >= 4 and memcmp(s + i, b"null", 4) == 0:
                jw_write(b, b"null", 4)
                i += 4
            else:
                return 1
            # --- after a value: a comma, a closing bracket, or the end ---
            while True:
                i = skip_ws(s, i, n)
                if depth == 0:
                    result = 0 if i == n else 1
                    return result
                if i >= n:
                    return 1
                c = s[i]
                if c == b',':
                    jw_byte(b, b',')
                    if pretty:
                        jw_newline(b, level + depth)
                    want_key = stack[depth - 1] == b'{'
                    i += 1
                    break
                if c != stack[depth - 1] + 2:
                    return 1
                depth -= 1
                if pretty:
                    jw_newline(b, level + depth)
                jw_byte(b, <char>c)
                i += 1
    finally:
        PyMem_RawFree(stack)


cdef bytes go_format_float(double v):
    """strconv.FormatFloat(v, 'g', -1, 64): shortest digits that read back, %e when the
    decimal exponent is < -4 or >= 6 (two-digit minimum exponent); +Inf, -Inf, NaN."""
    if v != v:
        return b"NaN"
    if v - v != 0.0:
        return b"+Inf" if v > 0 else b"-Inf"
    cdef str r = repr(abs(v))
    cdef str mant, digits
    cdef int dp, exp
    if "e" in r:
        mant, e = r.split("e")
        dp = int(e) + (mant.index(".") if "." in mant else len(mant))
        digits = mant.replace(".", "")
    else:
        mant, frac = r.split(".")
        digits = mant + frac
        dp = len(mant)
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    if not digits:
        return (sign + "0").encode()
    exp = dp - 1
    if exp < -4 or exp >= 6:
        out = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        out += "e" + ("-" if exp < 0 else "+") + "%02d" % abs(exp)
    elif dp <= 0:
        out = "0." + "0" * (-dp) + digits
    elif dp >= len(digits):
        out = digits + "0" * (dp - len(digits))
    else:
        out = digits[:dp] + "." + digits[dp:]
    return (sign + out).encode()


cdef int ob_json_str_html(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1:
    """A validated UTF-8 string as Go's json.Marshal writes it: the escaper of a CAR
    record's embed and labels JSON (docs/CAR.md).  Not ob_json_str: json.Marshal escapes
    < > & (HTML-safe) and writes \\b and \\f as \\u0008 and \\u000c, where the export's
    json.Encoder (SetEscapeHTML(false)) does neither; its input is already valid UTF-8."""
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


def json_string(bytes value):
    """`value` encoded as a JSON string, as the text column is (ob_json_str), also used by
    the manifest writer (src/skyexport/manifest/write.py) so that both escape alike."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        ob_json_str(&b, <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)
