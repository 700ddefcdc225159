# Repository CARs: RowBatch, post rows inserted into SQLite in bulk through APSW's own
# connection (sqlite_glue.h).

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
