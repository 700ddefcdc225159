# Every record of a repository CAR, as com.atproto.repo.listRecords returns it (CAR.md's
# "Every collection"): one collection at a time in MST key order, each record read through
# the walk (checked against its CID), validated as atproto data, and written as a jsonl
# line, a posts.json-style indented object, and a CSV row of named columns.

cdef int ob_json_text(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1:
    return ob_json_str(b, s, n)


cdef int rj_open(OutBuf* b, bint pretty, int level, const char* key, Py_ssize_t kn) except -1:
    """`{` and the one key of a `$link`/`$bytes` object, up to its value."""
    ob_byte(b, b'{')
    if pretty:
        ob_newline(b, level + 1)
    ob_byte(b, b'"')
    ob_write(b, key, kn)
    ob_write(b, b'": ' if pretty else b'":', 3 if pretty else 2)
    return 0


cdef int rj_close(OutBuf* b, bint pretty, int level) except -1:
    if pretty:
        ob_newline(b, level)
    ob_byte(b, b'}')
    return 0


cdef Py_ssize_t rj_value(OutBuf* b, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                         int level, bint pretty) except -1:
    """The validated item at i (cb_skip) in atproto's JSON form: compact, or indented as
    posts.json is (two spaces a level, `": "` after keys, `{}`/`[]` when empty).  Strings
    are escaped as posts.json's text; returns the offset after the item."""
    cdef Item it
    cdef Py_ssize_t ln, start
    cdef uint64_t j
    cdef const unsigned char* kp
    cdef Py_ssize_t kn
    cb_head(s, i, n, &it)
    i += it.head
    if it.major == 0:
        ob_uint64(b, it.arg)
        return i
    if it.major == 1:
        ob_byte(b, b'-')
        ob_uint64(b, it.arg + 1)   # validated: arg <= INT64_MAX
        return i
    if it.major == 2:
        ln = cb_len(s, i, n, it.arg)
        rj_open(b, pretty, level, "$bytes", 6)
        ob_byte(b, b'"')
        ob_base64(b, s + i, ln)
        ob_byte(b, b'"')
        rj_close(b, pretty, level)
        return i + ln
    if it.major == 3:
        ln = cb_len(s, i, n, it.arg)
        ob_json_text(b, s + i, ln)
        return i + ln
    if it.major == 4:
        if it.arg == 0:
            ob_write(b, b"[]", 2)
            return i
        ob_byte(b, b'[')
        for j in range(it.arg):
            if j:
                ob_byte(b, b',')
            if pretty:
                ob_newline(b, level + 1)
            i = rj_value(b, s, i, n, level + 1, pretty)
        if pretty:
            ob_newline(b, level)
        ob_byte(b, b']')
        return i
    if it.major == 5:
        if it.arg == 0:
            ob_write(b, b"{}", 2)
            return i
        ob_byte(b, b'{')
        for j in range(it.arg):
            if j:
                ob_byte(b, b',')
            if pretty:
                ob_newline(b, level + 1)
            i = cb_key(s, i, n, &kp, &kn)
            ob_json_text(b, kp, kn)
            if pretty:
                ob_write(b, b": ", 2)
            else:
                ob_byte(b, b':')
            i = rj_value(b, s, i, n, level + 1, pretty)
        if pretty:
            ob_newline(b, level)
        ob_byte(b, b'}')
        return i
    if it.major == 6:
        ln = cb_link(s, i, n, &start)
        rj_open(b, pretty, level, "$link", 5)
        ob_byte(b, b'"')
        ob_cid(b, s + start, ln - start)
        ob_byte(b, b'"')
        rj_close(b, pretty, level)
        return ln
    if it.arg == 20:
        ob_write(b, b"false", 5)
    elif it.arg == 21:
        ob_write(b, b"true", 4)
    else:
        ob_write(b, b"null", 4)
    return i


cdef int rc_cell(OutBuf* b, OutBuf* tmp, const unsigned char* s, Py_ssize_t i,
                 Py_ssize_t n) except -1:
    """One CSV cell for the validated item at i (-1: absent): text as it is, integers in
    decimal, true/false, null and absent empty, a link or a blob as its CID, anything else
    (arrays, other maps, bytes) as compact JSON; quoted as Go's encoding/csv would."""
    cdef Item it
    cdef Py_ssize_t ln, start, x
    if i < 0:
        return 0
    cb_head(s, i, n, &it)
    if it.major == 3:
        ln = cb_len(s, i + it.head, n, it.arg)
        return ob_csv_field(b, s + i + it.head, ln)
    if it.major == 7:
        if it.arg == 20:
            ob_write(b, b"false", 5)
        elif it.arg == 21:
            ob_write(b, b"true", 4)
        return 0
    tmp.len = 0
    if it.major == 6:
        ln = cb_link(s, i + it.head, n, &start)
        ob_cid(b, s + start, ln - start)
        return 0
    if it.major == 5 and is_blob(s, i, n):
        x = cb_find(s, i, n, "ref")
        if x >= 0:
            return rc_cell(b, tmp, s, x, n)
        return rc_cell(b, tmp, s, cb_find(s, i, n, "cid"), n)   # a legacy blob
    rj_value(tmp, s, i, n, 0, False)
    return ob_csv_field(b, <const unsigned char*>tmp.data, tmp.len)


cdef class RecordTap:
    """Every record of the wanted collections, encoded as a CarWalker's walk reads it (set
    with CarWalker.set_tap: the posts import and the records files share one walk).  Each
    record was read through the walk (its block checked against its CID); here it is
    validated as atproto data (cb_skip, at most MAX_RECORD bytes, a map at its top).  One
    that is not valid data raises CarFormatError naming its CID and key, or, with
    `keep_bad`, is left out and listed in `bad` as (key, CID, what is wrong).

    Output goes to `on_chunk(collection, records, data)`, one collection at a time in key
    order (keys of a collection are contiguous in the MST), about `max_bytes` at a time:
    for fmt "jsonl" a line per record; "json" posts.json's elements, joined (and, unless
    they are a collection's first, preceded) by `,` and a newline; "csv" rows with
    `columns[collection]`'s columns (field paths) after uri and cid, or the record's
    compact JSON when the collection has no entry.  finish() flushes the last chunk."""
    cdef object wanted          # None: every collection; else a set of bytes
    cdef bint keep_bad
    cdef readonly list bad
    cdef readonly int64_t bad_total
    cdef bytes did
    cdef int fmt                # 0 jsonl, 1 json, 2 csv
    cdef dict columns
    cdef object on_chunk
    cdef Py_ssize_t max_bytes
    cdef bytes coll             # the collection being written
    cdef list paths             # its CSV columns (None: uri,cid,json)
    cdef int64_t in_coll        # records of it written so far
    cdef int64_t pending        # records in out
    cdef OutBuf out
    cdef OutBuf tmp
    cdef readonly int64_t records

    def __cinit__(self):
        ob_init(&self.out, 1 << 16)
        ob_init(&self.tmp, 256)

    def __dealloc__(self):
        ob_free(&self.out)
        ob_free(&self.tmp)

    def __init__(self, str did, str fmt, wanted, bint keep_bad, dict columns not None,
                 on_chunk, Py_ssize_t max_bytes=1 << 20):
        self.did = did.encode("ascii")
        self.fmt = ("jsonl", "json", "csv").index(fmt)
        self.wanted = None if wanted is None else {bytes(x) for x in wanted}
        self.keep_bad = keep_bad
        self.bad = []
        self.bad_total = 0
        self.columns = columns
        self.on_chunk = on_chunk
        self.max_bytes = max_bytes
        self.coll = None
        self.paths = None
        self.in_coll = self.pending = self.records = 0

    cdef bint wants(self, bytes key, Py_ssize_t slash):
        """Is key's collection wanted (slash: the offset of its `/`)?"""
        cdef Py_ssize_t cn
        if self.coll is not None:
            cn = PyBytes_GET_SIZE(self.coll)
            if cn == slash and memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.coll),
                                      cn) == 0:
                return True
        return self.wanted is None or key[:slash] in self.wanted

    cdef int flush(self) except -1:
        if self.coll is None or (self.pending == 0 and self.out.len == 0):
            return 0
        data = PyBytes_FromStringAndSize(self.out.data, self.out.len)
        n = self.pending
        self.out.len = 0
        self.pending = 0
        self.on_chunk(self.coll.decode("ascii"), n, data)
        if self.out.cap > 4 * self.max_bytes:
            ob_shrink(&self.out, 1 << 16)
        return 0

    def finish(self):
        """Write what is held (the last records)."""
        self.flush()

    cdef int add(self, bytes key, Py_ssize_t slash, bytes cid, const unsigned char* s,
                 Py_ssize_t dn) except -1:
        """Validate and encode one record (key's collection is wanted)."""
        cdef Py_ssize_t cn = PyBytes_GET_SIZE(cid), k
        cdef OutBuf* o = &self.out
        cdef tuple path
        cdef bytes name
        if self.coll is None or PyBytes_GET_SIZE(self.coll) != slash or memcmp(
                PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.coll), slash) != 0:
            self.flush()
            self.coll = key[:slash]
            self.paths = self.columns.get(self.coll.decode("ascii"))
            self.in_coll = 0
            self.on_chunk(self.coll.decode("ascii"), 0, b"")   # a new file, even if empty
        try:
            if dn > MAX_RECORD:
                raise CarFormatError(f"is {dn} bytes; atproto records are at most "
                                     f"{MAX_RECORD >> 20} MiB")
            if cb_skip(s, 0, dn, 0) != dn:
                raise CarFormatError("has bytes after its value")
            if s[0] >> 5 != 5:
                raise CarFormatError("is not a map (a record is one)")
        except CarFormatError as exc:
            msg = (f"block {cid_str(cid)} (record {key.decode('ascii')}) {exc}: not valid "
                   "atproto data")
            if not self.keep_bad:
                raise CarFormatError(msg) from None
            self.bad_total += 1
            if len(self.bad) < 1000:
                self.bad.append((key.decode("ascii"), cid_str(cid), str(exc)))
            return 0
        if self.fmt == 0:
            ob_write(o, b'{"uri":"at://', 13)
            ob_write(o, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
            ob_byte(o, b'/')
            ob_write(o, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            ob_write(o, b'","cid":"', 9)
            ob_cid(o, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
            ob_write(o, b'","value":', 10)
            rj_value(o, s, 0, dn, 0, False)
            ob_write(o, b"}\n", 2)
        elif self.fmt == 1:
            if self.in_coll:
                ob_write(o, b",\n", 2)
            ob_write(o, b'  {\n    "uri": "at://', 21)
            ob_write(o, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
            ob_byte(o, b'/')
            ob_write(o, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            ob_write(o, b'",\n    "cid": "', 15)
            ob_cid(o, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
            ob_write(o, b'",\n    "value": ', 16)
            rj_value(o, s, 0, dn, 2, True)
            ob_write(o, b"\n  }", 4)
        else:
            ob_write(o, b"at://", 5)
            ob_write(o, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
            ob_byte(o, b'/')
            ob_write(o, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            ob_byte(o, b',')
            ob_cid(o, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
            if self.paths is None:
                ob_byte(o, b',')
                self.tmp.len = 0
                rj_value(&self.tmp, s, 0, dn, 0, False)
                ob_csv_field(o, <const unsigned char*>self.tmp.data, self.tmp.len)
            else:
                for path in self.paths:
                    ob_byte(o, b',')
                    k = 0
                    for name in path:
                        k = cb_find(s, k, dn, <const char*>name) if k >= 0 else -1
                    rc_cell(o, &self.tmp, s, k, dn)
            ob_byte(o, b'\n')
        self.in_coll += 1
        self.pending += 1
        self.records += 1
        if o.len >= self.max_bytes:
            self.flush()
        return 0


cdef bint tap_wants(CarWalker w, bytes key) except -1:
    """Is key's collection one the walker's tap wants?"""
    return (<RecordTap>w.tap).wants(key, key.find(b"/"))


cdef int tap_key(CarWalker w, bytes key, bint fetched) except -1:
    """The walk passed `key` (record CID in w.value): hand its record to the walker's tap
    if its collection is wanted, reading it first unless `fetched` (a post, read by
    next_post into w.buf, w.dn bytes)."""
    cdef RecordTap tap = <RecordTap>w.tap
    cdef Py_ssize_t slash = key.find(b"/"), cn, dn
    if not tap.wants(key, slash):
        return 0
    cid = w.value
    cn = PyBytes_GET_SIZE(cid)
    if fetched:
        dn = w.dn
    else:
        dn = w.fetch(<const unsigned char*>PyBytes_AS_STRING(cid), cn, key, None)
    tap.add(key, slash, cid, w.buf + cn, dn)
    return 0


def tap_drain(CarWalker walker not None):
    """Walk to the end, for the tap alone (no posts rows are made)."""
    while walker.next_post() is not None:
        pass
