# The writer: pulls rows from the cursor, encodes each one straight into the output buffer,
# and hands the buffer to a sink (the data file's writer thread) at a fixed size.

# Column positions in the SELECT that skyexport.archive builds (COLUMNS there).
cdef enum:
    C_URI, C_CID, C_DID, C_TEXT, C_CREATED, C_INDEXED, C_HAS_MEDIA, C_LIKES, C_REPOSTS
    C_REPLIES, C_QUOTES, C_IS_REPLY, C_REPLY_PARENT, C_EMBED_TYPE, C_EMBED_DATA, C_LABELS
    C_ARCHIVED, N_COLUMNS

cdef enum:
    FMT_JSON, FMT_JSONL, FMT_CSV

# Field names as the archive calls them (for bad-value messages).
COLUMN_NAMES = ("uri", "cid", "did", "text", "created_at", "indexed_at", "has_media",
                "like_count", "repost_count", "reply_count", "quote_count", "is_reply",
                "reply_parent", "embed_type", "embed_data", "labels", "archived_at")

CSV_HEADER = (b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,"
              b"QuoteCount,IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n")


cdef tuple _json_keys(bint pretty):
    """What goes before each field's value, per column; [N_COLUMNS] closes the object."""
    cdef list keys = []
    for i, name in enumerate(COLUMN_NAMES):
        if pretty:
            keys.append(("{" if i == 0 else ",") + '\n    "' + name + '": ')
        else:
            keys.append(("{" if i == 0 else ",") + '"' + name + '":')
    keys.append("\n  }" if pretty else "}\n")
    return tuple(k.encode() for k in keys)


cdef inline bint bytes_view(object v, const unsigned char** p, Py_ssize_t* n):
    """Point at a bytes value; NULL (None) reads as empty.  Returns False for other types."""
    if type(v) is bytes:
        p[0] = <const unsigned char*>PyBytes_AS_STRING(v)
        n[0] = PyBytes_GET_SIZE(v)
        return True
    p[0] = <const unsigned char*>b""
    n[0] = 0
    return v is None


cdef int64_t count_value(object v) except? -1:
    """Counts: INTEGER as stored, REAL truncated (clamped to int64), decimal TEXT, else 0."""
    cdef double d
    cdef const unsigned char* s
    cdef Py_ssize_t n, i
    cdef uint64_t acc = 0, limit
    cdef bint neg = False
    if type(v) is int:
        return PyLong_AsLongLong(v)
    if type(v) is float:
        d = <double>v
        if d != d:
            return 0
        if d >= 9223372036854775807.0:
            return INT64_MAX
        if d <= -9223372036854775808.0:
            return INT64_MIN
        return <int64_t>d
    if type(v) is not bytes:
        return 0
    s = <const unsigned char*>PyBytes_AS_STRING(v)
    n = PyBytes_GET_SIZE(v)
    i = 0
    if n and (s[0] == b'+' or s[0] == b'-'):
        neg = s[0] == b'-'
        i = 1
    if i == n:
        return 0
    limit = (<uint64_t>INT64_MAX) + (1 if neg else 0)
    while i < n:
        if not is_digit(s[i]):
            return 0
        if acc > (limit - (s[i] - 48)) // 10:
            return 0
        acc = acc * 10 + (s[i] - 48)
        i += 1
    if neg:
        return <int64_t>(<uint64_t>0 - acc)
    return <int64_t>acc


cdef bint bool_value(object v) except? -1:
    """Booleans: non-zero numbers, or exactly 1 t T TRUE true True."""
    if type(v) is int:
        return v != 0
    if type(v) is float:
        return <double>v != 0.0
    if type(v) is not bytes:
        return False
    return v in _TRUE_SPELLINGS


_TRUE_SPELLINGS = frozenset((b"1", b"t", b"T", b"TRUE", b"true", b"True"))


@cython.final
cdef class Writer:
    """Encodes rows of the export SELECT into one data file (json, jsonl or csv).

    Rows are pulled from an iterator (the APSW cursor) by `encode`, turned into bytes in
    place, and appended to one buffer that is passed to `sink(bytes)` whenever it passes
    `flush_size`.  Nothing of a row outlives its encoding, so memory is the buffer plus one
    row (plus whatever the sink holds).

    Bad values go to `on_bad(uri, column, value)`: raising stops the export; returning
    means "keep" (the stored text is written as a JSON string / verbatim CSV field).
    """
    cdef OutBuf buf
    cdef int fmt
    cdef object sink
    cdef Py_ssize_t flush_size
    cdef tuple keys
    cdef object on_bad
    cdef list media_posts
    cdef readonly Py_ssize_t rows
    cdef readonly long long bytes_written
    cdef readonly bint exhausted
    cdef bint finished
    cdef bint formula_guard

    def __cinit__(self, sink, str fmt, *, on_bad, bint collect_media=False,
                  Py_ssize_t flush_size=1 << 20, bint formula_guard=False):
        if fmt == "json":
            self.fmt = FMT_JSON
        elif fmt == "jsonl":
            self.fmt = FMT_JSONL
        elif fmt == "csv":
            self.fmt = FMT_CSV
        else:
            raise ValueError(f"unknown format {fmt!r}")
        if flush_size < 1:
            raise ValueError("flush_size must be positive")
        self.sink = sink
        self.flush_size = flush_size
        self.keys = _json_keys(self.fmt == FMT_JSON)
        self.on_bad = on_bad
        self.media_posts = [] if collect_media else None
        self.formula_guard = formula_guard
        ob_init(&self.buf, flush_size + (flush_size >> 2) + 4096)
        if self.fmt == FMT_CSV:
            ob_bytes(&self.buf, CSV_HEADER)

    def __dealloc__(self):
        ob_free(&self.buf)

    @property
    def pending(self):
        """Bytes encoded but not yet handed to the sink."""
        return self.buf.len

    def take_media_posts(self):
        """URIs (bytes) of the posts with has_media encoded since the last call."""
        out = self.media_posts
        if out is not None:
            self.media_posts = []
        return out

    cdef int flush(self) except -1:
        if self.buf.len == 0:
            return 0
        self.sink(PyBytes_FromStringAndSize(self.buf.data, self.buf.len))
        self.bytes_written += self.buf.len
        self.buf.len = 0
        # After a giant row, hand the memory back.
        ob_shrink(&self.buf, self.flush_size + (self.flush_size >> 2) + 4096)
        return 0

    def encode(self, rows, Py_ssize_t max_rows, Py_ssize_t max_bytes):
        """Encode up to `max_rows` rows from the iterator `rows`, stopping early once this
        batch has produced `max_bytes` bytes.  Returns the number of rows encoded; sets
        `exhausted` when the iterator ends."""
        if self.finished:
            raise RuntimeError("writer already finished")
        cdef Py_ssize_t done = 0
        cdef long long start = self.bytes_written + self.buf.len
        it = iter(rows)
        while done < max_rows:
            row = next(it, None)
            if row is None:
                self.exhausted = True
                break
            if self.fmt == FMT_CSV:
                self.csv_row(<tuple>row)
            else:
                self.json_row(<tuple>row)
            done += 1
            self.rows += 1
            if self.buf.len >= self.flush_size:
                self.flush()
            if self.bytes_written + self.buf.len - start >= max_bytes:
                break
        return done

    def finish(self):
        """Close the JSON array (or not, for jsonl/csv) and hand over everything."""
        if not self.finished:
            if self.fmt == FMT_JSON:
                if self.rows == 0:
                    ob_write(&self.buf, b"[]\n", 3)
                else:
                    ob_write(&self.buf, b"\n]\n", 3)
            self.finished = True
        self.flush()
        return self.bytes_written

    # --- one row ------------------------------------------------------------------------

    cdef int bad_value(self, tuple row, int col, object value) except -1:
        """Report a bad value; returns only when the policy is to keep it."""
        uri = row[C_URI]
        self.on_bad(uri if uri is not None else b"", COLUMN_NAMES[col], value)
        return 0

    cdef int json_text(self, object v) except -1:
        cdef const unsigned char* p
        cdef Py_ssize_t n
        if not bytes_view(v, &p, &n):
            # Not a type the SELECT produces for text columns; render what SQLite would.
            v = str(v).encode()
            bytes_view(v, &p, &n)
        return ob_json_str(&self.buf, p, n)

    cdef int json_stamp(self, tuple row, int col) except -1:
        cdef Stamp st
        cdef const unsigned char* p
        cdef Py_ssize_t n
        v = row[col]
        if v is None:
            zero_stamp(&st)
        else:
            if not bytes_view(v, &p, &n):
                v = str(v).encode()
                bytes_view(v, &p, &n)
            if not parse_stamp(p, n, &st):
                self.bad_value(row, col, v)
                return ob_json_str(&self.buf, p, n)
        ob_byte(&self.buf, b'"')
        ob_stamp(&self.buf, &st, True)
        ob_byte(&self.buf, b'"')
        return 0

    cdef int json_raw(self, tuple row, int col) except -1:
        """embed_data / labels: omitted when NULL or empty, else re-formatted JSON."""
        cdef const unsigned char* p
        cdef Py_ssize_t n, mark
        cdef double d
        v = row[col]
        if v is None:
            return 0
        if type(v) is bytes and PyBytes_GET_SIZE(v) == 0:
            return 0
        ob_bytes(&self.buf, <bytes>self.keys[col])
        if type(v) is int:
            return ob_int64(&self.buf, PyLong_AsLongLong(v))
        if type(v) is float:
            d = <double>v
            if d - d == 0.0:
                return ob_bytes(&self.buf, go_format_float(d))
            v = go_format_float(d)
            self.bad_value(row, col, v)
            return ob_json_str(&self.buf, <const unsigned char*>PyBytes_AS_STRING(v),
                               PyBytes_GET_SIZE(v))
        if not bytes_view(v, &p, &n):
            v = str(v).encode()
            bytes_view(v, &p, &n)
        mark = self.buf.len
        if ob_raw_json(&self.buf, p, n, 2, self.fmt == FMT_JSON) == 0:
            return 0
        self.buf.len = mark
        self.bad_value(row, col, v)
        return ob_json_str(&self.buf, p, n)

    cdef int json_row(self, tuple row) except -1:
        cdef OutBuf* b = &self.buf
        cdef tuple keys = self.keys
        cdef bint pretty = self.fmt == FMT_JSON
        cdef bint has_media
        cdef int col
        if pretty:
            if self.rows == 0:
                ob_write(b, b"[\n  ", 4)
            else:
                ob_write(b, b",\n  ", 4)
        for col in range(C_URI, C_INDEXED + 1):
            ob_bytes(b, <bytes>keys[col])
            if col == C_CREATED or col == C_INDEXED:
                self.json_stamp(row, col)
            else:
                self.json_text(row[col])
        has_media = bool_value(row[C_HAS_MEDIA])
        ob_bytes(b, <bytes>keys[C_HAS_MEDIA])
        ob_write(b, b"true", 4) if has_media else ob_write(b, b"false", 5)
        for col in range(C_LIKES, C_QUOTES + 1):
            ob_bytes(b, <bytes>keys[col])
            ob_int64(b, count_value(row[col]))
        ob_bytes(b, <bytes>keys[C_IS_REPLY])
        ob_write(b, b"true", 4) if bool_value(row[C_IS_REPLY]) else ob_write(b, b"false", 5)
        for col in (C_REPLY_PARENT, C_EMBED_TYPE):
            v = row[col]
            if v is not None and not (type(v) is bytes and PyBytes_GET_SIZE(v) == 0):
                ob_bytes(b, <bytes>keys[col])
                self.json_text(v)
        self.json_raw(row, C_EMBED_DATA)
        self.json_raw(row, C_LABELS)
        ob_bytes(b, <bytes>keys[C_ARCHIVED])
        self.json_stamp(row, C_ARCHIVED)
        ob_bytes(b, <bytes>keys[N_COLUMNS])
        if has_media and self.media_posts is not None:
            self.media_posts.append(row[C_URI])
        return 0

    # --- CSV ----------------------------------------------------------------------------

    cdef int csv_text(self, object v) except -1:
        cdef const unsigned char* p
        cdef Py_ssize_t n
        if not bytes_view(v, &p, &n):
            v = str(v).encode()
            bytes_view(v, &p, &n)
        if self.formula_guard and n and (p[0] == b'=' or p[0] == b'+' or p[0] == b'-'
                                         or p[0] == b'@' or p[0] == 9 or p[0] == 13):
            # --csv-formula-guard: a leading ' makes spreadsheets show the text, not run it.
            v = b"'" + PyBytes_FromStringAndSize(<const char*>p, n)
            bytes_view(v, &p, &n)
        return ob_csv_field(&self.buf, p, n)

    cdef int csv_stamp(self, tuple row, int col) except -1:
        cdef Stamp st
        cdef const unsigned char* p
        cdef Py_ssize_t n
        v = row[col]
        if v is None:
            zero_stamp(&st)
        else:
            if not bytes_view(v, &p, &n):
                v = str(v).encode()
                bytes_view(v, &p, &n)
            if not parse_stamp(p, n, &st):
                self.bad_value(row, col, v)
                return ob_csv_field(&self.buf, p, n)
        return ob_stamp(&self.buf, &st, False)

    cdef int csv_row(self, tuple row) except -1:
        cdef OutBuf* b = &self.buf
        cdef bint has_media
        cdef int col
        self.csv_text(row[C_URI])
        ob_byte(b, b',')
        self.csv_text(row[C_CID])
        ob_byte(b, b',')
        self.csv_text(row[C_DID])
        ob_byte(b, b',')
        self.csv_text(row[C_TEXT])
        ob_byte(b, b',')
        self.csv_stamp(row, C_CREATED)
        for col in range(C_LIKES, C_QUOTES + 1):
            ob_byte(b, b',')
            ob_int64(b, count_value(row[col]))
        ob_byte(b, b',')
        ob_write(b, b"true", 4) if bool_value(row[C_IS_REPLY]) else ob_write(b, b"false", 5)
        ob_byte(b, b',')
        self.csv_text(row[C_REPLY_PARENT])
        ob_byte(b, b',')
        has_media = bool_value(row[C_HAS_MEDIA])
        ob_write(b, b"true", 4) if has_media else ob_write(b, b"false", 5)
        ob_byte(b, b',')
        if has_media:
            self.csv_text(media_files(row[C_EMBED_DATA]))
        ob_byte(b, b',')
        self.csv_text(row[C_EMBED_TYPE])
        ob_byte(b, b',')
        self.csv_stamp(row, C_INDEXED)
        ob_byte(b, b'\n')
        if has_media and self.media_posts is not None:
            self.media_posts.append(row[C_URI])
        return 0
