# The writer: takes rows one at a time from a RowSource (rows/rows.pxi) - the SQLite statement
# stepped directly or on its own thread, or any iterable of tuples - as C cells, encodes
# them straight into the output buffer, and hands the buffer to a sink (the data file's
# writer thread) at a fixed size.

cdef enum:
    FMT_JSON, FMT_JSONL, FMT_CSV

CSV_HEADER = (b"\xef\xbb\xbfURI,CID,DID,Text,CreatedAt,LikeCount,RepostCount,ReplyCount,"
              b"QuoteCount,IsReply,ReplyParent,HasMedia,MediaFiles,EmbedType,IndexedAt\n")

# What goes before each JSON field's value; [N_COLUMNS] closes the object.
cdef struct KeyText:
    const char* p
    Py_ssize_t n

cdef KeyText KEYS_PRETTY[N_COLUMNS + 1]
cdef KeyText KEYS_COMPACT[N_COLUMNS + 1]
cdef list _key_storage = []     # owns the bytes the tables above point into


cdef void _fill_keys(KeyText* table, bint pretty) except *:
    for i, name in enumerate(COLUMN_NAMES):
        if pretty:
            text = ("{" if i == 0 else ",") + '\n    "' + name + '": '
        else:
            text = ("{" if i == 0 else ",") + '"' + name + '":'
        b = text.encode()
        _key_storage.append(b)
        table[i].p = PyBytes_AS_STRING(b)
        table[i].n = PyBytes_GET_SIZE(b)
    b = b"\n  }" if pretty else b"}\n"
    _key_storage.append(b)
    table[N_COLUMNS].p = PyBytes_AS_STRING(b)
    table[N_COLUMNS].n = PyBytes_GET_SIZE(b)


cdef void init_writer_tables() except *:
    _fill_keys(KEYS_PRETTY, True)
    _fill_keys(KEYS_COMPACT, False)


cdef inline bint is_empty(const Cell* c) noexcept nogil:
    """NULL or a zero-length string: what Go's omitempty leaves out."""
    return c.kind == K_NULL or (c.kind == K_BYTES and c.n == 0)


@cython.cdivision(True)   # audited: C division, as written
cdef int64_t count_value(const Cell* c) noexcept nogil:
    """Counts: INTEGER as stored, REAL truncated (clamped to int64), decimal TEXT, else 0."""
    cdef Py_ssize_t i = 0, n
    cdef uint64_t acc = 0, limit
    cdef bint neg = False
    cdef const unsigned char* s
    if c.kind == K_INT:
        return c.i
    if c.kind == K_FLOAT:
        if c.d != c.d:
            return 0
        if c.d >= 9223372036854775807.0:
            return INT64_MAX
        if c.d <= -9223372036854775808.0:
            return INT64_MIN
        return <int64_t>c.d
    if c.kind != K_BYTES:
        return 0
    s = c.p
    n = c.n
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


cdef object cell_object(const Cell* c):
    """The cell as a Python value (bytes, int, float or None), for the rare slow paths."""
    if c.kind == K_BYTES:
        return PyBytes_FromStringAndSize(<const char*>c.p, c.n)
    if c.kind == K_INT:
        return c.i
    if c.kind == K_FLOAT:
        return c.d
    return None


cdef bytes sqlite_real_text(double d):
    """REAL as SQLite's CAST(x AS TEXT) writes it ("%!.15g": always a decimal point)."""
    if d != d:
        return b""
    if d - d != 0.0:
        return b"Inf" if d > 0 else b"-Inf"
    cdef str s = "%.15g" % d
    if "e" in s:
        if "." not in s:
            s = s.replace("e", ".0e")
    elif "." not in s:
        s += ".0"
    return s.encode()


cdef bytes cell_text(const Cell* c):
    """The cell as SQLite's text of it: what a kept bad timestamp is written as."""
    if c.kind == K_BYTES:
        return PyBytes_FromStringAndSize(<const char*>c.p, c.n)
    if c.kind == K_INT:
        return str(c.i).encode()
    if c.kind == K_FLOAT:
        return sqlite_real_text(c.d)
    return b""


# The most of a bad value's bytes handed to `on_bad`: at least 128 characters however it
# decodes (4 bytes at most each), so a message cut to 80 shows exactly what the whole
# value's first characters are.
cdef enum:
    BAD_VALUE_PREFIX = 512


# Stored JSON longer than this is validated before it is written (see json_raw).  Below
# it, indenting can blow a value up at most about LARGE_JSON**2 bytes (every byte a
# bracket), which is what a tentative write may hold in memory.
cdef enum:
    LARGE_JSON = 1024


cdef int writer_spill(void* ctx) except -1 nogil:
    """OutBuf's spill hook: flush the writer's buffer mid-row."""
    with gil:
        (<Writer>ctx).flush()
    return 0


@cython.final
@cython.auto_pickle(False)
cdef class Writer:
    """Encodes rows of the export SELECT into one data file's bytes (json, jsonl or csv).

    Each row is encoded the moment it is read and nothing of it is kept, so memory is the
    output buffer plus one row plus whatever the sink holds.  Whenever the buffer passes
    `flush_size`, `sink(view)` gets a read-only memoryview of it, valid only during the
    call: a sink copies what it keeps.

    Bad values go to `on_bad(uri, column, value)`: raising stops the export; returning
    means "keep" (the stored text is written as a JSON string / verbatim CSV field).
    With `collect_media`, the URIs of posts with has_media are gathered per batch
    (`take_media_posts`).

    With `on_unreadable_date(uri, value)`, a row whose created_at is text FORMAT.md cannot
    read is left out (not encoded, not counted in `rows`; counted in `dropped`) and
    reported there: what a date filter does with it, for a filter that the SQL leaves out
    because it holds every readable stored date (archive.Snapshot).
    """
    cdef OutBuf buf
    cdef OutBuf media_buf     # a CSV row's MediaFiles, before it is quoted as a field
    cdef Cell row[N_COLUMNS]
    cdef int fmt
    cdef KeyText* keys
    cdef Py_ssize_t flush_size
    cdef object sink
    cdef object on_bad
    cdef list media_posts
    cdef bint collect_media
    cdef bint formula_guard
    cdef bint finished
    cdef object on_unreadable_date
    cdef readonly Py_ssize_t rows
    cdef readonly Py_ssize_t dropped
    cdef readonly long long bytes_written
    cdef readonly bint exhausted

    def __init__(self, sink, str fmt, *, on_bad, bint collect_media=False,
                 Py_ssize_t flush_size=1 << 20, bint formula_guard=False,
                 on_unreadable_date=None, bint bom=True):
        cdef Py_ssize_t skip
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
        if self.fmt == FMT_JSON:
            self.keys = &KEYS_PRETTY[0]
        else:
            self.keys = &KEYS_COMPACT[0]
        self.sink = sink
        self.flush_size = flush_size
        self.on_bad = on_bad
        self.collect_media = collect_media
        self.media_posts = []
        self.formula_guard = formula_guard
        self.on_unreadable_date = on_unreadable_date
        ob_free(&self.buf)
        ob_init(&self.buf, flush_size + (flush_size >> 2) + 4096)
        self.buf.spill = writer_spill
        self.buf.spill_ctx = <void*>self
        self.buf.spill_at = flush_size
        if self.fmt == FMT_CSV:
            # bom=False (--no-bom): the header without its 3-byte UTF-8 byte-order mark.
            skip = 0 if bom else 3
            ob_write(&self.buf, PyBytes_AS_STRING(CSV_HEADER) + skip,
                     PyBytes_GET_SIZE(CSV_HEADER) - skip)

    def __dealloc__(self):
        ob_free(&self.buf)
        ob_free(&self.media_buf)

    @property
    def pending(self):
        """Bytes encoded but not yet handed to the sink."""
        return self.buf.len

    def take_media_posts(self):
        """URIs (bytes) of the posts with has_media encoded since the last call."""
        out = self.media_posts
        self.media_posts = []
        return out

    # --- the batch loops ----------------------------------------------------------------

    cdef long long batch_end(self, Py_ssize_t max_bytes) except -1:
        """Where a batch that may produce `max_bytes` bytes ends; refuses a finished
        writer."""
        if self.finished:
            raise RuntimeError("writer already finished")
        return self.bytes_written + self.buf.len + max_bytes

    cdef int row_encoded(self, long long stop) except -1 nogil:
        """Encode the row in `self.row`, count it, flush a full buffer.  1 when the batch
        has reached `stop` bytes (the caller ends the batch), else 0."""
        if self.on_unreadable_date is not None and self.created_unreadable():
            self.dropped += 1
            return 0
        self.encode_row()
        self.rows += 1
        if self.buf.len >= self.flush_size:
            self.flush()
        return self.bytes_written + self.buf.len >= stop

    def encode(self, rows, Py_ssize_t max_rows, Py_ssize_t max_bytes):
        """Encode up to `max_rows` rows from `rows` (a RowSource, or any iterable of
        17-tuples, wrapped in a TupleRows), stopping early once this batch has produced
        `max_bytes` bytes.  Runs without the GIL except for sink calls, rare values and
        Python sources.  Returns the rows read (encoded or left out); sets `exhausted` at
        the end."""
        cdef RowSource source = rows if isinstance(rows, RowSource) else TupleRows(rows)
        cdef long long stop = self.batch_end(max_bytes)
        cdef Py_ssize_t done = 0
        cdef const Cell* r
        with nogil:
            while done < max_rows:
                r = source.next_row()
                if r.kind < 0:
                    self.exhausted = True
                    break
                memcpy(&self.row[0], r, N_COLUMNS * sizeof(Cell))
                done += 1
                if self.row_encoded(stop):
                    break
        return done

    def finish(self):
        """Close the JSON array (json only) and hand over everything."""
        if not self.finished:
            if self.fmt == FMT_JSON:
                if self.rows == 0:
                    ob_write(&self.buf, b"[]\n", 3)
                else:
                    ob_write(&self.buf, b"\n]\n", 3)
            self.finished = True
        self.flush()
        return self.bytes_written

    cdef int flush(self) except -1 nogil:
        if self.buf.len == 0:
            return 0
        with gil:
            # A view of our own buffer: the sink copies what it keeps (FileSink into a
            # pooled buffer), so no block is allocated per flush.  Released after the call:
            # a sink that kept it gets an error on use, never bytes that changed or memory
            # that was freed.
            view = PyMemoryView_FromMemory(self.buf.data, self.buf.len, PyBUF_READ)
            try:
                self.sink(view)
            finally:
                view.release()
        self.bytes_written += self.buf.len
        self.buf.len = 0
        # After a giant row, hand the memory back.
        return ob_shrink(&self.buf, self.flush_size + (self.flush_size >> 2) + 4096)

    # --- one row ------------------------------------------------------------------------

    cdef int encode_row(self) except -1 nogil:
        cdef bint has_media = bool_value(&self.row[C_HAS_MEDIA])
        if self.fmt == FMT_CSV:
            self.csv_row(has_media)
        else:
            self.json_row(has_media)
        if has_media and self.collect_media:
            with gil:
                self.media_posts.append(cell_object(&self.row[C_URI]))
        return 0

    cdef bint created_unreadable(self) except -1 nogil:
        """created_at is text that cannot be read (reported to on_unreadable_date)."""
        cdef const Cell* c = &self.row[C_CREATED]
        cdef Stamp st
        if c.kind != K_BYTES or parse_stamp(c.p, c.n, &st):
            return 0
        with gil:
            self.report_unreadable_date()
        return 1

    cdef int report_unreadable_date(self) except -1:
        cdef Cell shown = self.row[C_CREATED]
        if shown.n > BAD_VALUE_PREFIX:
            shown.n = BAD_VALUE_PREFIX
        uri = cell_object(&self.row[C_URI])
        self.on_unreadable_date(uri if uri is not None else b"", cell_text(&shown))
        return 0

    cdef int bad_value(self, int col) except -1 nogil:
        """Report a bad value; returns only when the policy is to keep it.  `on_bad` gets at
        most the first BAD_VALUE_PREFIX bytes of the value's text: a message shows 80
        characters, and a 200 MB value is never copied to show them."""
        cdef Cell shown = self.row[col]
        if shown.kind == K_BYTES and shown.n > BAD_VALUE_PREFIX:
            shown.n = BAD_VALUE_PREFIX
        with gil:
            uri = cell_object(&self.row[C_URI])
            self.on_bad(uri if uri is not None else b"", COLUMN_NAMES[col], cell_text(&shown))
        return 0

    cdef int key(self, int col) except -1 nogil:
        return ob_write(&self.buf, self.keys[col].p, self.keys[col].n)

    cdef int text_value(self, const Cell* c, const unsigned char** p,
                        Py_ssize_t* n) except -1 nogil:
        """A text column's bytes.  Every row source hands numbers in text columns over as
        SQLite's text of them (CAST AS BLOB in the cursor's SELECT, number_as_text in the
        direct ones), so numbers only arrive through `encode` with odd tuples."""
        if c.kind == K_BYTES:
            p[0] = c.p
            n[0] = c.n
        elif c.kind == K_NULL:
            p[0] = <const unsigned char*>b""
            n[0] = 0
        else:
            with gil:
                raise TypeError("text columns must be bytes or None")
        return 0

    cdef int stamp(self, int col, bint nanos) except -1 nogil:
        """A timestamp column: 1 when written, 0 when the value is bad (reported; the
        caller writes the kept text)."""
        cdef Stamp st
        cdef const Cell* c = &self.row[col]
        if c.kind == K_NULL:
            zero_stamp(&st)
        elif c.kind != K_BYTES or not parse_stamp(c.p, c.n, &st):
            self.bad_value(col)
            return 0
        if nanos:
            ob_byte(&self.buf, b'"')
            ob_stamp(&self.buf, &st, True)
            ob_byte(&self.buf, b'"')
        else:
            ob_stamp(&self.buf, &st, False)
        return 1

    cdef int json_kept(self, const Cell* c, bint stored_json) except -1 nogil:
        """A kept bad value as a JSON string of its stored text (for a non-finite REAL in
        a JSON column, Go's text of it: +Inf)."""
        if c.kind == K_BYTES:
            return ob_json_str(&self.buf, c.p, c.n)
        with gil:
            self.json_bytes(go_format_float(c.d) if stored_json and c.kind == K_FLOAT
                            else cell_text(c))
        return 0

    cdef int json_raw(self, int col) except -1 nogil:
        """embed_data / labels: omitted when NULL or empty, else re-formatted JSON."""
        cdef const Cell* c = &self.row[col]
        cdef Py_ssize_t mark
        cdef spill_fn spill = self.buf.spill
        cdef int invalid
        if is_empty(c):
            return 0
        self.key(col)
        if c.kind == K_INT:
            return ob_int64(&self.buf, c.i)
        if c.kind == K_FLOAT:
            if c.d - c.d == 0.0:          # finite
                with gil:
                    self.raw_bytes(go_format_float(c.d))
                return 0
            self.bad_value(col)
            return self.json_kept(c, True)
        if c.n > LARGE_JSON:
            # Validate first, then write with spilling on: however much indenting blows
            # it up, a large value never sits in memory whole.
            invalid = ob_raw_json(NULL, c.p, c.n, 2, False)
            if not invalid:
                return ob_raw_json(&self.buf, c.p, c.n, 2, self.fmt == FMT_JSON)
        else:
            # Small: write tentatively (no spilling, so it can be taken back).
            mark = self.buf.len
            self.buf.spill = NULL
            try:
                invalid = ob_raw_json(&self.buf, c.p, c.n, 2, self.fmt == FMT_JSON)
            finally:
                self.buf.spill = spill
            if not invalid:
                return 0
            self.buf.len = mark
        self.bad_value(col)
        return self.json_kept(c, True)

    cdef int json_row(self, bint has_media) except -1 nogil:
        cdef OutBuf* b = &self.buf
        cdef const unsigned char* p
        cdef Py_ssize_t n
        cdef int col
        if self.fmt == FMT_JSON:
            ob_write(b, "[\n  " if self.rows == 0 else ",\n  ", 4)
        for col in range(C_URI, C_TEXT + 1):
            self.key(col)
            self.text_value(&self.row[col], &p, &n)
            ob_json_str(b, p, n)
        for col in range(C_CREATED, C_INDEXED + 1):
            self.key(col)
            if not self.stamp(col, True):
                self.json_kept(&self.row[col], False)
        self.key(C_HAS_MEDIA)
        ob_write(b, "true", 4) if has_media else ob_write(b, "false", 5)
        for col in range(C_LIKES, C_QUOTES + 1):
            self.key(col)
            ob_int64(b, count_value(&self.row[col]))
        self.key(C_IS_REPLY)
        ob_write(b, "true", 4) if bool_value(&self.row[C_IS_REPLY]) else ob_write(b, "false", 5)
        for col in range(C_REPLY_PARENT, C_EMBED_TYPE + 1):
            if not is_empty(&self.row[col]):
                self.key(col)
                self.text_value(&self.row[col], &p, &n)
                ob_json_str(b, p, n)
        self.json_raw(C_EMBED_DATA)
        self.json_raw(C_LABELS)
        self.key(C_ARCHIVED)
        if not self.stamp(C_ARCHIVED, True):
            self.json_kept(&self.row[C_ARCHIVED], False)
        return self.key(N_COLUMNS)

    # --- CSV ----------------------------------------------------------------------------

    cdef int csv_text(self, const unsigned char* p, Py_ssize_t n) except -1 nogil:
        if self.formula_guard and n and (p[0] == b'=' or p[0] == b'+' or p[0] == b'-'
                                         or p[0] == b'@' or p[0] == 9 or p[0] == 13):
            # --csv-formula-guard: a leading ' makes spreadsheets show the text, not run it.
            with gil:
                self.csv_bytes(b"'" + PyBytes_FromStringAndSize(<const char*>p, n), False)
            return 0
        return ob_csv_field(&self.buf, p, n)

    # The per-row functions are nogil and hold no Python object in a named local: Cython
    # takes the GIL on every return of a nogil function that has one, to release it.  What
    # needs Python (rare values) is a temporary handed to one of these, the GIL held.

    cdef int csv_bytes(self, bytes v, bint guarded) except -1:
        """v as one CSV field: through csv_text (formula-guarded), or as it is."""
        if guarded:
            return self.csv_text(<const unsigned char*>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
        return ob_csv_field(&self.buf, <const unsigned char*>PyBytes_AS_STRING(v),
                            PyBytes_GET_SIZE(v))

    cdef int raw_bytes(self, bytes v) except -1:
        """v as it is."""
        return ob_write(&self.buf, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))

    cdef int json_bytes(self, bytes v) except -1:
        """v as a JSON string."""
        return ob_json_str(&self.buf, <const unsigned char*>PyBytes_AS_STRING(v),
                           PyBytes_GET_SIZE(v))

    cdef int csv_cell(self, int col) except -1 nogil:
        cdef const unsigned char* p
        cdef Py_ssize_t n
        self.text_value(&self.row[col], &p, &n)
        return self.csv_text(p, n)

    cdef int csv_stamp(self, int col) except -1 nogil:
        cdef const Cell* c = &self.row[col]
        if self.stamp(col, False):
            return 0
        # Kept: the stored text, verbatim (formula-guarded like any text field).
        if c.kind == K_BYTES:
            return self.csv_text(c.p, c.n)
        with gil:
            self.csv_bytes(cell_text(c), True)
        return 0

    cdef int csv_media(self, const Cell* embed) except -1 nogil:
        """The MediaFiles field of a has_media post: read in C where media_files_fast can
        (no GIL), else by the exact path (media_files_at).  Invalid stored JSON has none."""
        cdef OutBuf* m = &self.media_buf
        if m.data == NULL:
            ob_init(m, 256)
        if media_files_into(m, embed.p, embed.n) == 0:
            self.csv_text(<const unsigned char*>m.data, m.len)
        else:
            with gil:
                self.csv_bytes(media_files_at(embed.p, embed.n), True)
        if m.cap > 1 << 16:
            ob_free(m)      # a huge embed's list is not kept for the rest of the export
        return 0

    cdef int csv_row(self, bint has_media) except -1 nogil:
        cdef OutBuf* b = &self.buf
        cdef int col
        cdef Stamp st
        cdef const Cell* arch
        cdef const Cell* embed
        for col in range(C_URI, C_TEXT + 1):
            self.csv_cell(col)
            ob_byte(b, b',')
        self.csv_stamp(C_CREATED)
        for col in range(C_LIKES, C_QUOTES + 1):
            ob_byte(b, b',')
            ob_int64(b, count_value(&self.row[col]))
        ob_byte(b, b',')
        ob_write(b, "true", 4) if bool_value(&self.row[C_IS_REPLY]) else ob_write(b, "false", 5)
        ob_byte(b, b',')
        self.csv_cell(C_REPLY_PARENT)
        ob_byte(b, b',')
        ob_write(b, "true", 4) if has_media else ob_write(b, "false", 5)
        ob_byte(b, b',')
        embed = &self.row[C_EMBED_DATA]
        # Read from the cell's own memory, never copied: a 200 MB embed stays one copy.
        if has_media and embed.kind == K_BYTES:
            self.csv_media(embed)
        ob_byte(b, b',')
        self.csv_cell(C_EMBED_TYPE)
        ob_byte(b, b',')
        self.csv_stamp(C_INDEXED)
        ob_byte(b, b'\n')
        # archived_at has no CSV column, but bskyarchive reads it for every format: an
        # unreadable one is a bad value here too (docs/format-decisions.md).
        arch = &self.row[C_ARCHIVED]
        if arch.kind != K_NULL and (arch.kind != K_BYTES or not parse_stamp(arch.p, arch.n, &st)):
            self.bad_value(C_ARCHIVED)
        return 0
