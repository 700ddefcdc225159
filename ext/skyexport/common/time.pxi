# Timestamps: the reader for the forms FORMAT.md lists, and the two renderers
# (RFC3339Nano for JSON, whole-second RFC 3339 for CSV).  Everything works on raw bytes.

cdef struct Stamp:
    int year, month, day, hour, minute, second
    int nsec            # 0..999999999
    int offset          # seconds east of UTC


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint is_space(unsigned char c) noexcept nogil:
    # ASCII white space, as docs/format-decisions.md defines it for trimming.
    return c == 32 or 9 <= c <= 13


cdef inline int num2(const unsigned char* p) noexcept nogil:
    """Two ASCII digits -> 0..99, or -1."""
    if is_digit(p[0]) and is_digit(p[1]):
        return (p[0] - 48) * 10 + (p[1] - 48)
    return -1


@cython.cdivision(True)   # audited: C division, as written
cdef inline int days_in_month(int year, int month) noexcept nogil:
    if month == 2:
        if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0:
            return 29
        return 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef bint parse_date(const unsigned char* p, Stamp* st) noexcept nogil:
    """YYYY-MM-DD at p (10 bytes available), range-checked."""
    cdef int hi = num2(p), lo = num2(p + 2)
    if hi < 0 or lo < 0 or p[4] != b'-' or p[7] != b'-':
        return False
    st.year = hi * 100 + lo
    st.month = num2(p + 5)
    st.day = num2(p + 8)
    if st.month < 1 or st.month > 12 or st.day < 1:
        return False
    return st.day <= days_in_month(st.year, st.month)


cdef bint parse_hms(const unsigned char* p, Stamp* st, bint seconds) noexcept nogil:
    """HH:MM[:SS] at p (5 or 8 bytes available)."""
    st.hour = num2(p)
    st.minute = num2(p + 3)
    if p[2] != b':' or st.hour < 0 or st.hour > 23 or st.minute < 0 or st.minute > 59:
        return False
    if not seconds:
        st.second = 0
        return True
    st.second = num2(p + 6)
    return p[5] == b':' and 0 <= st.second <= 59


@cython.cdivision(True)   # audited: C division, as written
cdef Py_ssize_t parse_fraction(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                               Stamp* st) noexcept nogil:
    """An optional `.digits` at s[i]; digits past the ninth are dropped.  Returns the new
    index, or -1 for a `.` without digits."""
    st.nsec = 0
    if i >= n or s[i] != b'.':
        return i
    i += 1
    cdef Py_ssize_t start = i
    cdef int scale = 100000000
    while i < n and is_digit(s[i]):
        if scale:
            st.nsec += (s[i] - 48) * scale
            scale //= 10
        i += 1
    if i == start:
        return -1
    return i


cdef bint parse_go_string(const unsigned char* s, Py_ssize_t n, Stamp* st) noexcept nogil:
    """Form 1: `YYYY-MM-DD HH:MM:SS[.f] ±hhmm ZONE` (Go's time.Time.String())."""
    cdef Py_ssize_t i
    # Cut from the first "m=" unless it is at the very start (Go's monotonic reading).
    for i in range(1, n - 1):
        if s[i] == b'm' and s[i + 1] == b'=':
            n = i
            break
    while n > 0 and is_space(s[n - 1]):
        n -= 1
    while n > 0 and is_space(s[0]):
        s += 1
        n -= 1
    # date(10) SP time(8) [.f] SP sign hhmm(5) SP zone(>=1)
    if n < 27 or s[10] != b' ':
        return False
    if not parse_date(s, st) or not parse_hms(s + 11, st, True):
        return False
    i = parse_fraction(s, 19, n, st)
    if i < 0 or i + 8 > n or s[i] != b' ' or (s[i + 1] != b'+' and s[i + 1] != b'-'):
        return False
    cdef int oh = num2(s + i + 2), om = num2(s + i + 4)
    if oh < 0 or om < 0 or oh > 23 or om > 59 or s[i + 6] != b' ':
        return False
    st.offset = (oh * 3600 + om * 60) * (-1 if s[i + 1] == b'-' else 1)
    cdef Py_ssize_t z = i + 7
    if z >= n:
        return False
    for i in range(z, n):
        if is_space(s[i]):
            return False
    if n - z == 3 and s[z] == b'U' and s[z + 1] == b'T' and s[z + 2] == b'C':
        st.offset = 0
    return True


cdef bint parse_rfc3339ish(const unsigned char* s, Py_ssize_t n, Stamp* st) noexcept nogil:
    """Form 2, after one trailing Z is removed: date[ T]time[.f][±hh:mm], date[ T]HH:MM,
    date."""
    if n > 0 and s[n - 1] == b'Z':
        n -= 1
    if n < 10 or not parse_date(s, st):
        return False
    st.hour = st.minute = st.second = st.nsec = st.offset = 0
    if n == 10:
        return True
    if s[10] != b' ' and s[10] != b'T':
        return False
    if n == 16:
        return parse_hms(s + 11, st, False)
    if n < 19 or not parse_hms(s + 11, st, True):
        return False
    cdef Py_ssize_t i = parse_fraction(s, 19, n, st)
    if i < 0:
        return False
    if i == n:
        return True
    if i + 6 != n or (s[i] != b'+' and s[i] != b'-') or s[i + 3] != b':':
        return False
    cdef int oh = num2(s + i + 1), om = num2(s + i + 4)
    if oh < 0 or om < 0 or oh > 23 or om > 59:
        return False
    st.offset = (oh * 3600 + om * 60) * (-1 if s[i] == b'-' else 1)
    return True


cdef bint parse_stamp(const unsigned char* s, Py_ssize_t n, Stamp* st) noexcept nogil:
    """Read a stored timestamp; False for a bad value (FORMAT.md, Timestamps)."""
    return parse_go_string(s, n, st) or parse_rfc3339ish(s, n, st)


cdef inline void zero_stamp(Stamp* st) noexcept nogil:
    # Go's zero time, what a NULL timestamp scans to.
    st.year = 1
    st.month = 1
    st.day = 1
    st.hour = st.minute = st.second = st.nsec = st.offset = 0


@cython.cdivision(True)   # audited: C division, as written
cdef int64_t days_from_civil(int y, int m, int d) noexcept nogil:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's)."""
    if m <= 2:
        y -= 1
    cdef int era = (y if y >= 0 else y - 399) // 400
    cdef int yoe = y - era * 400
    cdef int mp = (m + 9) % 12
    cdef int doy = (153 * mp + 2) // 5 + d - 1
    cdef int doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return <int64_t>era * 146097 + doe - 719468


cdef inline int64_t stamp_seconds(const Stamp* st) noexcept nogil:
    """The instant, in seconds since the Unix epoch (nsec kept apart)."""
    return (days_from_civil(st.year, st.month, st.day) * 86400
            + st.hour * 3600 + st.minute * 60 + st.second - st.offset)


@cython.cdivision(True)   # audited: C division, as written
cdef inline void put2(char* p, int v) noexcept nogil:
    p[0] = <char>(48 + v // 10)
    p[1] = <char>(48 + v % 10)


@cython.cdivision(True)   # audited: C division, as written
cdef int ob_stamp(OutBuf* b, const Stamp* st, bint nanos) except -1 nogil:
    """Go's RFC3339Nano (nanos=True) or RFC3339 in the value's own offset."""
    ob_reserve(b, 36)
    cdef char* p = b.data + b.len
    put2(p, st.year // 100)
    put2(p + 2, st.year % 100)
    p[4] = b'-'
    put2(p + 5, st.month)
    p[7] = b'-'
    put2(p + 8, st.day)
    p[10] = b'T'
    put2(p + 11, st.hour)
    p[13] = b':'
    put2(p + 14, st.minute)
    p[16] = b':'
    put2(p + 17, st.second)
    cdef int k = 19, digits, f, off, i
    if nanos and st.nsec:
        f = st.nsec
        digits = 9
        while f % 10 == 0:
            f //= 10
            digits -= 1
        p[k] = b'.'
        for i in range(digits, 0, -1):
            p[k + i] = <char>(48 + f % 10)
            f //= 10
        k += digits + 1
    off = st.offset
    if off == 0:
        p[k] = b'Z'
        k += 1
    else:
        if off < 0:
            p[k] = b'-'
            off = -off
        else:
            p[k] = b'+'
        put2(p + k + 1, off // 3600)
        p[k + 3] = b':'
        put2(p + k + 4, (off // 60) % 60)
        k += 6
    b.len += k
    return 0
