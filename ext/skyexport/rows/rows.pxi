# Rows: the 17 columns of the export SELECT as C cells, and RowSource, the one thing
# Writer.encode reads rows from.  Three sources implement it: Statement (the SELECT
# stepped on the encoding thread, rows/sqlite.pxi), RowPipe (stepped on a thread of its
# own, rows/pipe.pxi) and TupleRows (any Python iterable of 17-tuples: an APSW cursor, test data,
# a repository CAR's posts).

# Column positions in the SELECT that src/skyexport/sources/archive.py builds (_columns).
cdef enum:
    C_URI, C_CID, C_DID, C_TEXT, C_CREATED, C_INDEXED, C_HAS_MEDIA, C_LIKES, C_REPOSTS
    C_REPLIES, C_QUOTES, C_IS_REPLY, C_REPLY_PARENT, C_EMBED_TYPE, C_EMBED_DATA, C_LABELS
    C_ARCHIVED, N_COLUMNS

# A cell's storage class (SQLite's, with TEXT and BLOB both read as bytes).  K_LENT is the
# row pipe's own: a giant value left in SQLite's memory while its arena fills (pipe.pxi).
cdef enum:
    K_NULL, K_INT, K_FLOAT, K_BYTES, K_LENT

cdef struct Cell:
    int kind
    int64_t i
    double d
    const unsigned char* p      # K_BYTES: the value's bytes (borrowed, valid for this row)
    Py_ssize_t n

# The columns the archive declares TEXT or TIMESTAMP: a number stored in one is read as its
# text, as SQLite's CAST(x AS TEXT) writes it (the cursor row source casts them in SQL).
cdef bint TEXT_COLUMN[N_COLUMNS]
for _col in (C_URI, C_CID, C_DID, C_TEXT, C_CREATED, C_INDEXED, C_REPLY_PARENT, C_EMBED_TYPE,
             C_ARCHIVED):
    TEXT_COLUMN[_col] = True

# Field names as the archive calls them (for bad-value messages).
COLUMN_NAMES = ("uri", "cid", "did", "text", "created_at", "indexed_at", "has_media",
                "like_count", "repost_count", "reply_count", "quote_count", "is_reply",
                "reply_parent", "embed_type", "embed_data", "labels", "archived_at")


cdef bint bool_value(const Cell* c) noexcept nogil:
    """Booleans: non-zero numbers, or exactly 1 t T TRUE true True."""
    cdef const unsigned char* s = c.p
    if c.kind == K_INT:
        return c.i != 0
    if c.kind == K_FLOAT:
        return c.d != 0.0
    if c.kind != K_BYTES:
        return False
    if c.n == 1:
        return s[0] == b'1' or s[0] == b't' or s[0] == b'T'
    if c.n == 4:
        return (memcmp(s, b"TRUE", 4) == 0 or memcmp(s, b"true", 4) == 0
                or memcmp(s, b"True", 4) == 0)
    return False


# What next_row returns at the end of the rows: a cell of kind -1.
cdef Cell _END_OF_ROWS
_END_OF_ROWS.kind = -1


@cython.auto_pickle(False)
cdef class RowSource:
    """Rows for Writer.encode, one at a time.

    `next_row()` returns the next row's N_COLUMNS cells (valid until the next call), or
    &_END_OF_ROWS; it may be called without the GIL and takes it only if it needs it."""

    cdef const Cell* next_row(self) except NULL nogil:
        with gil:
            raise NotImplementedError("RowSource.next_row")


@cython.final
@cython.auto_pickle(False)
cdef class TupleRows(RowSource):
    """A RowSource over any iterable of 17-tuples (bytes, str, int, float, bool or None
    values).  A str is encoded as UTF-8 (surrogateescape); anything else as its str()."""
    cdef object it
    cdef object current            # the current row: its cells point into its values
    cdef list keep                 # converted values, alive for the current row
    cdef Cell row[N_COLUMNS]

    def __init__(self, rows):
        self.it = iter(rows)

    cdef const Cell* next_row(self) except NULL nogil:
        with gil:
            row = next(self.it, None)
            if row is None:
                self.current = self.keep = None
                return &_END_OF_ROWS
            self.keep = cells_from_tuple(row, self.row)
            self.current = row
        return self.row


@cython.boundscheck(False)  # audited: the tuple's length is checked first
@cython.wraparound(False)
cdef list cells_from_tuple(object row, Cell* cells):
    """Point `cells` at the tuple's values; returns the list of any values it had to
    convert (str -> UTF-8 bytes), which the caller keeps alive for the row."""
    cdef tuple t = <tuple?>row
    cdef list keep = None
    cdef Cell* c
    if len(t) != N_COLUMNS:
        raise ValueError(f"a row must have {N_COLUMNS} values, not {len(t)}")
    for col in range(N_COLUMNS):
        v = t[col]
        c = &cells[col]
        if v is None:
            c.kind = K_NULL
        elif type(v) is bytes:
            c.kind = K_BYTES
            c.p = <const unsigned char*>PyBytes_AS_STRING(v)
            c.n = PyBytes_GET_SIZE(v)
        elif type(v) is int or type(v) is bool:
            c.kind = K_INT
            c.i = PyLong_AsLongLong(v)
        elif type(v) is float:
            c.kind = K_FLOAT
            c.d = v
        else:
            v = (v if type(v) is str else str(v)).encode("utf-8", "surrogateescape")
            if keep is None:
                keep = []
            keep.append(v)
            c.kind = K_BYTES
            c.p = <const unsigned char*>PyBytes_AS_STRING(v)
            c.n = PyBytes_GET_SIZE(v)
    return keep
