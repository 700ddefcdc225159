# The SQLite statement the writer steps directly (see sqlite_glue.h for why and how).

cdef extern from "sqlite_glue.h" nogil:
    ctypedef struct sqlite3:
        pass
    ctypedef struct sqlite3_stmt:
        pass
    ctypedef struct sqlite3_value:
        pass
    ctypedef struct sqlite3_context:
        pass
    ctypedef void (*sx_sql_fn)(sqlite3_context*, int, sqlite3_value**) noexcept nogil
    ctypedef long long sqlite3_int64
    enum:
        SQLITE_OK, SQLITE_ROW, SQLITE_DONE
        SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL
    int sx_ready()
    int sx_prepare(sqlite3* db, const char* sql, int n, sqlite3_stmt** st)
    int sx_bind_text(sqlite3_stmt* st, int i, const char* p, int n)
    int sx_bind_int64(sqlite3_stmt* st, int i, sqlite3_int64 v)
    int sx_bind_double(sqlite3_stmt* st, int i, double v)
    int sx_bind_null(sqlite3_stmt* st, int i)
    int sx_step(sqlite3_stmt* st)
    int sx_reset(sqlite3_stmt* st)
    int sx_finalize(sqlite3_stmt* st)
    int sx_column_count(sqlite3_stmt* st)
    int sx_column_bytes(sqlite3_stmt* st, int i)
    sqlite3_int64 sx_column_int64(sqlite3_stmt* st, int i)
    const unsigned char* sx_column_text(sqlite3_stmt* st, int i)
    sqlite3_value* sx_column_value(sqlite3_stmt* st, int i)
    int sx_value_type(sqlite3_value* v)
    sqlite3_int64 sx_value_int64(sqlite3_value* v)
    double sx_value_double(sqlite3_value* v)
    const void* sx_value_blob(sqlite3_value* v)
    int sx_value_bytes(sqlite3_value* v)
    const char* sx_errmsg(sqlite3* db)
    int sx_extended_errcode(sqlite3* db)
    void sx_interrupt(sqlite3* db)
    int sx_create_function(sqlite3* db, const char* name, int nargs, void* data,
                           sx_sql_fn fn, void (*destroy)(void*) noexcept nogil)
    void* sx_user_data(sqlite3_context* c)
    void sx_result_int(sqlite3_context* c, int v)
    const unsigned char* sx_value_text(sqlite3_value* v)


EXTENSION_ENTRY_POINT = "skyexport_sqlite_init"


def direct_ready():
    """True once this module has been loaded as an extension into an APSW connection
    (its SQLite API table is known)."""
    return bool(sx_ready())


cdef int number_as_text(sqlite3_stmt* st, int col, const unsigned char** p,
                        Py_ssize_t* n) except -1 nogil:
    """A number stored in a text column, as SQLite's CAST(x AS TEXT) gives it: the cursor
    row source casts those columns in SQL, the direct ones read the same text here."""
    p[0] = sx_column_text(st, col)
    n[0] = sx_column_bytes(st, col)
    if p[0] == NULL:
        with gil:
            raise MemoryError()
    return 0


cdef object sqlite_error(sqlite3* db, int rc):
    """The APSW exception SQLite's code maps to, with SQLite's message."""
    cdef int code = sx_extended_errcode(db) if db != NULL else rc
    msg = (<bytes>sx_errmsg(db)).decode("utf-8", "replace") if db != NULL else ""
    exc = _apsw_exception_for(code if code else rc)
    exc.args = (f"{type(exc).__name__}: {msg}",)
    return exc


cdef void value_cell(sqlite3_value* v, Cell* c) noexcept nogil:
    """An SQLite value as a cell pointing into SQLite's own memory.  TEXT and BLOB are read
    as their bytes (no conversion; NULs and invalid UTF-8 kept)."""
    cdef int t = sx_value_type(v)
    if t == SQLITE_INTEGER:
        c.kind = K_INT
        c.i = sx_value_int64(v)
    elif t == SQLITE_FLOAT:
        c.kind = K_FLOAT
        c.d = sx_value_double(v)
    elif t == SQLITE_NULL:
        c.kind = K_NULL
    else:
        c.kind = K_BYTES
        c.p = <const unsigned char*>sx_value_blob(v)
        c.n = sx_value_bytes(v)
        if c.p == NULL:          # a zero-length value
            c.p = <const unsigned char*>b""


cdef int read_cell(sqlite3_stmt* st, int col, Cell* c) except -1 nogil:
    """The one cell decoder: column `col` of the current row (valid until the next step),
    as value_cell reads it, except that a number in a text column is read as SQLite's
    text of it (CAST(x AS TEXT))."""
    cdef sqlite3_value* v = sx_column_value(st, col)
    cdef int t = sx_value_type(v)
    if (t == SQLITE_INTEGER or t == SQLITE_FLOAT) and TEXT_COLUMN[col]:
        c.kind = K_BYTES
        number_as_text(st, col, &c.p, &c.n)
    else:
        value_cell(v, c)
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class Statement(RowSource):
    """One prepared SELECT on an APSW connection; as a RowSource, stepped on the thread
    that encodes (a RowPipe steps it on a thread of its own instead).

    Invariant: `stmt` is NULL or a live statement of `conn`; `close()` finalizes it and
    must run before the connection closes (the Archive does this)."""
    cdef sqlite3* db
    cdef sqlite3_stmt* stmt
    cdef object conn
    cdef readonly bint done
    cdef Cell row[N_COLUMNS]

    def __init__(self, conn, str sql, args=()):
        self.close()
        if not sx_ready():
            raise RuntimeError("the SQLite API table is not loaded (load this module as "
                               "an extension first)")
        self.conn = conn
        self.db = <sqlite3*><uintptr_t>conn.sqlite3_pointer()
        cdef bytes q = sql.encode("utf-8")
        cdef const char* qp = q
        cdef int qn = <int>len(q)
        cdef int rc
        with nogil:
            rc = sx_prepare(self.db, qp, qn, &self.stmt)
        if rc != SQLITE_OK:
            raise sqlite_error(self.db, rc)
        if sx_column_count(self.stmt) != N_COLUMNS:
            self.close()
            raise ValueError(f"the SELECT must return {N_COLUMNS} columns")
        cdef bytes b
        for i, a in enumerate(args, 1):
            if a is None:
                rc = sx_bind_null(self.stmt, i)
            elif type(a) is int:
                rc = sx_bind_int64(self.stmt, i, a)
            elif type(a) is float:
                rc = sx_bind_double(self.stmt, i, a)
            else:
                b = a.encode("utf-8", "surrogateescape") if type(a) is str else bytes(a)
                rc = sx_bind_text(self.stmt, i, b, <int>len(b))
            if rc != SQLITE_OK:
                self.close()
                raise sqlite_error(self.db, rc)

    def __dealloc__(self):
        if self.stmt != NULL:
            sx_finalize(self.stmt)

    def close(self):
        if self.stmt != NULL:
            sx_finalize(self.stmt)
            self.stmt = NULL

    cdef int step(self) except -1 nogil:
        """1 when a row is ready, 0 at the end."""
        cdef int rc
        if self.done or self.stmt == NULL:
            return 0
        rc = sx_step(self.stmt)
        if rc == SQLITE_ROW:
            return 1
        if rc == SQLITE_DONE:
            self.done = True
            return 0
        with gil:
            # An exception raised in a Python callback (UDF, progress handler) surfaces
            # here as an SQLite error; the original is already set: keep it.
            if PyErr_Occurred() == NULL:
                raise sqlite_error(self.db, rc)
        return -1

    cdef const Cell* next_row(self) except NULL nogil:
        cdef int col
        if self.step() == 0:
            return &_END_OF_ROWS
        for col in range(N_COLUMNS):
            read_cell(self.stmt, col, &self.row[col])
        return self.row

    cdef void interrupt(self) noexcept nogil:
        """Make a step running on another thread return SQLITE_INTERRUPT soon."""
        if self.db != NULL:
            sx_interrupt(self.db)
