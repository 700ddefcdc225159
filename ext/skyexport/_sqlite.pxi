# The SQLite statement the writer steps directly (see sqlite_glue.h for why and how).

cdef extern from "sqlite_glue.h" nogil:
    ctypedef struct sqlite3:
        pass
    ctypedef struct sqlite3_stmt:
        pass
    ctypedef struct sqlite3_value:
        pass
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
    int sx_column_type(sqlite3_stmt* st, int i)
    sqlite3_int64 sx_column_int64(sqlite3_stmt* st, int i)
    double sx_column_double(sqlite3_stmt* st, int i)
    const void* sx_column_blob(sqlite3_stmt* st, int i)
    int sx_column_bytes(sqlite3_stmt* st, int i)
    sqlite3_value* sx_column_value(sqlite3_stmt* st, int i)
    int sx_value_type(sqlite3_value* v)
    sqlite3_int64 sx_value_int64(sqlite3_value* v)
    double sx_value_double(sqlite3_value* v)
    const void* sx_value_blob(sqlite3_value* v)
    int sx_value_bytes(sqlite3_value* v)
    const char* sx_errmsg(sqlite3* db)
    int sx_extended_errcode(sqlite3* db)


EXTENSION_ENTRY_POINT = "skyexport_sqlite_init"


def direct_ready():
    """True once this module has been loaded as an extension into an APSW connection
    (its SQLite API table is known)."""
    return bool(sx_ready())


cdef object sqlite_error(sqlite3* db, int rc):
    """The APSW exception SQLite's code maps to, with SQLite's message."""
    cdef int code = sx_extended_errcode(db) if db != NULL else rc
    msg = (<bytes>sx_errmsg(db)).decode("utf-8", "replace") if db != NULL else ""
    exc = _apsw_exception_for(code if code else rc)
    exc.args = (f"{type(exc).__name__}: {msg}",)
    return exc


@cython.final
@cython.auto_pickle(False)
cdef class Statement:
    """One prepared SELECT on an APSW connection, stepped by Writer.encode_stmt.

    Invariant: `stmt` is NULL or a live statement of `conn`; `close()` finalizes it and
    must run before the connection closes (the Archive does this)."""
    cdef sqlite3* db
    cdef sqlite3_stmt* stmt
    cdef object conn
    cdef readonly bint done

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
