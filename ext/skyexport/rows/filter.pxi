# Date filters compare instants (FORMAT.md, Row selection): SQLite calls these per row, as
# functions registered on the connection, so the COUNT and the SELECT agree exactly.
# Where the core is loaded into the connection they are C functions (register_filters);
# InstantRange and is_bad_stamp are the same tests as Python callables, for the cursor
# row source (a SQLite that refuses extensions).

cdef struct Bounds:
    int64_t lo_s
    int lo_ns
    int64_t hi_s
    int hi_ns


cdef bint value_stamp(sqlite3_value* v, Stamp* st) noexcept nogil:
    """Parse a created_at value as SQLite holds it; NULL is Go's zero time, a number is
    read as its text (as the cursor source's str() of it would be)."""
    cdef int t = sx_value_type(v)
    cdef const unsigned char* p
    if t == SQLITE_NULL:
        zero_stamp(st)
        return True
    if t == SQLITE_INTEGER or t == SQLITE_FLOAT:
        p = sx_value_text(v)
    else:
        p = <const unsigned char*>sx_value_blob(v)
    if p == NULL:
        return parse_stamp(<const unsigned char*>b"", 0, st)
    return parse_stamp(p, sx_value_bytes(v), st)


cdef inline bint stamp_in(const Stamp* st, const Bounds* b) noexcept nogil:
    cdef int64_t s = stamp_seconds(st)
    if s < b.lo_s or (s == b.lo_s and st.nsec < b.lo_ns):
        return False
    if s > b.hi_s or (s == b.hi_s and st.nsec > b.hi_ns):
        return False
    return True


cdef void sql_in_range(sqlite3_context* ctx, int argc, sqlite3_value** argv) noexcept nogil:
    cdef Stamp st
    cdef const Bounds* b = <const Bounds*>sx_user_data(ctx)
    sx_result_int(ctx, 1 if value_stamp(argv[0], &st) and stamp_in(&st, b) else 0)


cdef void sql_bad_stamp(sqlite3_context* ctx, int argc, sqlite3_value** argv) noexcept nogil:
    cdef Stamp st
    sx_result_int(ctx, 0 if value_stamp(argv[0], &st) else 1)


cdef void sql_true(sqlite3_context* ctx, int argc, sqlite3_value** argv) noexcept nogil:
    """skyexport_true(x): x as the writer reads a boolean column (has_media), so that the
    media query and the encoder decide has_media by one rule (bool_value)."""
    cdef Cell c
    value_cell(argv[0], &c)
    sx_result_int(ctx, 1 if bool_value(&c) else 0)


def is_true(value):
    """skyexport_true for the cursor row source: bool_value of a Python value."""
    cdef Cell c
    if value is None:
        c.kind = K_NULL
    elif type(value) is int or type(value) is bool:
        c.kind = K_INT
        c.i = PyLong_AsLongLong(value)
    elif type(value) is float:
        c.kind = K_FLOAT
        c.d = value
    else:
        if type(value) is str:
            value = (<str>value).encode("utf-8", "surrogateescape")
        elif type(value) is not bytes:
            value = str(value).encode()
        c.kind = K_BYTES
        c.p = <const unsigned char*>PyBytes_AS_STRING(value)
        c.n = PyBytes_GET_SIZE(value)
    return 1 if bool_value(&c) else 0


cdef void free_bounds(void* p) noexcept nogil:
    PyMem_RawFree(p)


def register_filters(conn, since, until):
    """Register `skyexport_in_range(created_at)` for [since, until] (either None),
    `skyexport_bad_stamp(created_at)` and `skyexport_true(has_media)` as C functions on
    `conn`, an APSW connection this module is loaded into as an extension."""
    if not sx_ready():
        raise RuntimeError("the SQLite API table is not loaded (load this module as an "
                           "extension first)")
    cdef sqlite3* db = <sqlite3*><uintptr_t>conn.sqlite3_pointer()
    cdef Bounds* b = <Bounds*>PyMem_RawMalloc(sizeof(Bounds))
    if b == NULL:
        raise MemoryError()
    b.lo_s, b.lo_ns = since if since is not None else (INT64_MIN, 0)
    b.hi_s, b.hi_ns = until if until is not None else (INT64_MAX, 999999999)
    cdef int rc = sx_create_function(db, b"skyexport_in_range", 1, b, sql_in_range,
                                     free_bounds)   # frees b itself if this fails
    if rc == SQLITE_OK:
        rc = sx_create_function(db, b"skyexport_bad_stamp", 1, NULL, sql_bad_stamp, NULL)
    if rc == SQLITE_OK:
        rc = sx_create_function(db, b"skyexport_true", 1, NULL, sql_true, NULL)
    if rc != SQLITE_OK:
        raise sqlite_error(db, rc)


cdef bint stamp_of(object v, Stamp* st) except -1:
    """Parse a created_at value as the SELECT hands it over; NULL is Go's zero time."""
    cdef const unsigned char* p
    cdef Py_ssize_t n
    if v is None:
        zero_stamp(st)
        return True
    if type(v) is str:
        v = (<str>v).encode("utf-8", "surrogateescape")
    elif type(v) is not bytes:
        v = str(v).encode()
    p = <const unsigned char*>PyBytes_AS_STRING(v)
    n = PyBytes_GET_SIZE(v)
    return parse_stamp(p, n, st)


@cython.final
@cython.auto_pickle(False)
cdef class InstantRange:
    """Callable `(created_at) -> 1 | 0`: is the value's instant inside [since, until]?
    Either bound may be None.  Bad values are never inside."""
    cdef int64_t lo_s, hi_s
    cdef int lo_ns, hi_ns

    def __init__(self, since, until):
        self.lo_s, self.lo_ns = since if since is not None else (INT64_MIN, 0)
        self.hi_s, self.hi_ns = until if until is not None else (INT64_MAX, 999999999)

    def __call__(self, value):
        cdef Stamp st
        if not stamp_of(value, &st):
            return 0
        cdef int64_t s = stamp_seconds(&st)
        if s < self.lo_s or (s == self.lo_s and st.nsec < self.lo_ns):
            return 0
        if s > self.hi_s or (s == self.hi_s and st.nsec > self.hi_ns):
            return 0
        return 1


def is_bad_stamp(value):
    """SQL helper: 1 when a created_at value cannot be read."""
    cdef Stamp st
    return 0 if stamp_of(value, &st) else 1


def parse_bound(str text, bint end_of_day):
    """A --since/--until value -> (unix seconds, nanoseconds), or raise ValueError.

    `YYYY-MM-DD` means the start of that UTC day, or with `end_of_day` its last
    nanosecond; otherwise an RFC 3339 date-time (`T` or space; no zone means UTC)."""
    cdef Stamp st
    cdef bytes raw = text.strip().encode("utf-8", "surrogateescape")
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    if n < 10 or not parse_rfc3339ish(p, n, &st) or (n != 10 and n < 19):
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 date-time "
                         f"(e.g. 2024-01-31T10:00:00Z)")
    if n == 10 and end_of_day:
        return (stamp_seconds(&st) + 86399, 999999999)
    return (stamp_seconds(&st), st.nsec)


def parse_timestamp(value):
    """Test and tooling hook: a stored timestamp -> (year, month, day, hour, minute, second,
    nanosecond, offset_seconds), or None for a bad value."""
    cdef Stamp st
    if not stamp_of(value, &st):
        return None
    return (st.year, st.month, st.day, st.hour, st.minute, st.second, st.nsec, st.offset)


def render_timestamp(value, bint nanos=True):
    """Test and tooling hook: a stored timestamp rendered as the JSON (nanos) or CSV
    column shows it, or None for a bad value."""
    cdef Stamp st
    cdef OutBuf b
    if not stamp_of(value, &st):
        return None
    ob_init(&b, 64)
    try:
        ob_stamp(&b, &st, nanos)
        return PyBytes_FromStringAndSize(b.data, b.len).decode()
    finally:
        ob_free(&b)
