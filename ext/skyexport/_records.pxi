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


cdef class RecordReader:
    """The records of a CarWalker's walk (made with posts_only False), one collection at a
    time: chunk() returns the next records of one collection in key order.  Each record is
    read through the walk (its block checked against its CID; a missing or damaged block,
    like any MST problem, raises CarFormatError) and validated as atproto data (cb_skip, at
    most MAX_RECORD bytes, a map at its top).  One that is not valid data raises
    CarFormatError naming its CID and key, or, with `keep_bad`, is left out and listed in
    `bad` as (key, CID, what is wrong)."""
    cdef CarWalker w
    cdef object wanted          # None: every collection; else a set of bytes
    cdef bint keep_bad
    cdef readonly list bad
    cdef readonly int64_t bad_total
    cdef bytes did
    cdef bytes pkey             # a key read and not written yet (None: none)
    cdef bytes pcid
    cdef bint done
    cdef bytes coll             # the collection of the last chunk
    cdef int64_t in_coll        # records of it written so far

    def __init__(self, CarWalker walker not None, wanted, bint keep_bad):
        if walker.posts_only:
            raise ValueError("RecordReader needs a walker of every collection")
        self.w = walker
        self.wanted = None if wanted is None else {bytes(x) for x in wanted}
        self.keep_bad = keep_bad
        self.bad = []
        self.bad_total = 0
        self.did = walker.did.encode("ascii")
        self.pkey = None
        self.done = False
        self.coll = None
        self.in_coll = 0

    cdef bytes next_wanted(self):
        """The next key of a wanted collection (its record CID in self.pcid), or None."""
        cdef bytes key
        cdef Py_ssize_t slash
        if self.pkey is not None:
            key = self.pkey
            self.pkey = None
            return key
        if self.done:
            return None
        while True:
            key = self.w.next_key()
            if key is None:
                self.done = True
                return None
            if self.wanted is not None:
                slash = key.find(b"/")
                if key[:slash] not in self.wanted:
                    continue
            self.pcid = self.w.value
            return key

    def chunk(self, bint jsonl, bint json, bint csv, dict columns not None,
              Py_ssize_t max_bytes=1 << 20):
        """The next records of one collection, up to about `max_bytes` of output:
        (collection, records, first, jsonl, json, csv) -- `first` when they are the first
        of their collection; the json piece holds the records as posts.json's elements,
        joined (and, unless first, preceded) by `,` and a newline; the csv rows have
        `columns[collection]`'s columns (field paths) after uri and cid, or the record's
        compact JSON when the collection has no entry.  None at the end."""
        cdef bytes key, cid, coll
        cdef Py_ssize_t slash, cn, dn, k
        cdef const unsigned char* s
        cdef OutBuf oj, op, oc, tmp
        cdef int64_t count = 0
        cdef bint first
        cdef list paths
        cdef tuple path
        cdef bytes name
        while True:
            key = self.next_wanted()
            if key is None:
                return None
            slash = key.find(b"/")
            coll = key[:slash]
            if self.coll is None or coll != self.coll:
                self.coll = coll
                self.in_coll = 0
            break
        first = self.in_coll == 0
        paths = columns.get(coll.decode("ascii"))
        ob_init(&oj, 4096)
        ob_init(&op, 4096)
        ob_init(&oc, 4096)
        ob_init(&tmp, 256)
        try:
            while True:
                cid = self.pcid
                cn = PyBytes_GET_SIZE(cid)
                dn = self.w.fetch(<const unsigned char*>PyBytes_AS_STRING(cid), cn, key, None)
                s = self.w.buf + cn
                try:
                    if dn > MAX_RECORD:
                        raise CarFormatError(f"is {dn} bytes; atproto records are at most "
                                             f"{MAX_RECORD >> 20} MiB")
                    if cb_skip(s, 0, dn, 0) != dn:
                        raise CarFormatError("has bytes after its value")
                    if s[0] >> 5 != 5:
                        raise CarFormatError("is not a map (a record is one)")
                except CarFormatError as exc:
                    msg = (f"block {cid_str(cid)} ({self.w.what(key, None)}) {exc}: not "
                           "valid atproto data")
                    if not self.keep_bad:
                        raise CarFormatError(msg) from None
                    self.bad_total += 1
                    if len(self.bad) < 1000:
                        self.bad.append((key.decode("ascii"), cid_str(cid), str(exc)))
                else:
                    if jsonl:
                        ob_write(&oj, b'{"uri":"at://', 13)
                        ob_write(&oj, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
                        ob_byte(&oj, b'/')
                        ob_write(&oj, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                        ob_write(&oj, b'","cid":"', 9)
                        ob_cid(&oj, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
                        ob_write(&oj, b'","value":', 10)
                        rj_value(&oj, s, 0, dn, 0, False)
                        ob_write(&oj, b"}\n", 2)
                    if json:
                        if self.in_coll:
                            ob_write(&op, b",\n", 2)
                        ob_write(&op, b'  {\n    "uri": "at://', 21)
                        ob_write(&op, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
                        ob_byte(&op, b'/')
                        ob_write(&op, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                        ob_write(&op, b'",\n    "cid": "', 15)
                        ob_cid(&op, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
                        ob_write(&op, b'",\n    "value": ', 16)
                        rj_value(&op, s, 0, dn, 2, True)
                        ob_write(&op, b"\n  }", 4)
                    if csv:
                        ob_write(&oc, b"at://", 5)
                        ob_write(&oc, PyBytes_AS_STRING(self.did), PyBytes_GET_SIZE(self.did))
                        ob_byte(&oc, b'/')
                        ob_write(&oc, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                        ob_byte(&oc, b',')
                        ob_cid(&oc, <const unsigned char*>PyBytes_AS_STRING(cid), cn)
                        if paths is None:
                            ob_byte(&oc, b',')
                            tmp.len = 0
                            rj_value(&tmp, s, 0, dn, 0, False)
                            ob_csv_field(&oc, <const unsigned char*>tmp.data, tmp.len)
                        else:
                            for path in paths:
                                ob_byte(&oc, b',')
                                k = 0
                                for name in path:
                                    k = cb_find(s, k, dn, <const char*>name) if k >= 0 else -1
                                rc_cell(&oc, &tmp, s, k, dn)
                        ob_byte(&oc, b'\n')
                    self.in_coll += 1
                    count += 1
                key = self.next_wanted()
                if key is None:
                    break
                if (PyBytes_GET_SIZE(key) <= slash or key[slash] != 0x2f
                        or memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(coll), slash)
                        != 0):
                    self.pkey = key
                    break
                if oj.len + op.len + oc.len >= max_bytes:
                    self.pkey = key
                    break
            return (coll.decode("ascii"), count, first,
                    PyBytes_FromStringAndSize(oj.data, oj.len) if jsonl else None,
                    PyBytes_FromStringAndSize(op.data, op.len) if json else None,
                    PyBytes_FromStringAndSize(oc.data, oc.len) if csv else None)
        finally:
            ob_free(&oj)
            ob_free(&op)
            ob_free(&oc)
            ob_free(&tmp)
