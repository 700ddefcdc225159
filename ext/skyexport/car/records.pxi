# Every record of a repository CAR, as com.atproto.repo.listRecords returns it (CAR.md's
# "Every collection"): one collection at a time in MST key order, each record read through
# the walk (checked against its CID), validated as atproto data, and written as a jsonl
# line, a posts.json-style indented object, and a CSV row of named columns.

cdef int ob_json_text(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1 nogil:
    return ob_json_str(b, s, n)


cdef int rj_open(OutBuf* b, bint pretty, int level, const char* key, Py_ssize_t kn) except -1 nogil:
    """`{` and the one key of a `$link`/`$bytes` object, up to its value."""
    ob_byte(b, b'{')
    if pretty:
        ob_newline(b, level + 1)
    ob_byte(b, b'"')
    ob_write(b, key, kn)
    ob_write(b, b'": ' if pretty else b'":', 3 if pretty else 2)
    return 0


cdef int rj_close(OutBuf* b, bint pretty, int level) except -1 nogil:
    if pretty:
        ob_newline(b, level)
    ob_byte(b, b'}')
    return 0


cdef Py_ssize_t rj_value(OutBuf* b, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                         int level, bint pretty) except -1 nogil:
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
                 Py_ssize_t n) except -1 nogil:
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


cdef Py_ssize_t read_at(int fd, void* p, Py_ssize_t n, int64_t off) noexcept nogil:
    """pread_full without the GIL and without raising: bytes read, -1 on an error."""
    cdef char* c = <char*>p
    cdef Py_ssize_t done = 0
    cdef ssize_t got
    while done < n:
        got = pread(fd, c + done, n - done, off + done)
        if got < 0:
            if errno == EINTR:
                continue
            return -1
        if got == 0:
            break
        done += got
    return done


cdef bint is_sha256_cid(const unsigned char* cid, Py_ssize_t cn) noexcept nogil:
    """sha256_cid (index.pxi), without the GIL."""
    cdef Py_ssize_t i
    cdef uint64_t v, code, dlen
    if cn > 80 or cid_len(cid, cn) != cn:
        return False
    if cn == 34 and cid[0] == 0x12:
        return True
    i = uvarint(cid, cn, &v)
    i += uvarint(cid + i, cn - i, &v)
    i += uvarint(cid + i, cn - i, &code)
    i += uvarint(cid + i, cn - i, &dlen)
    return code == 0x12 and dlen == 32 and i + 32 == cn


cdef packed struct Staged:
    # a record staged for the encoding thread, followed by its key, CID and data
    int32_t kn            # key bytes
    int32_t slash         # the offset of the key's `/`
    int32_t cn            # CID bytes
    int32_t dn            # data bytes; -1: none, the encoding side reads the block


cdef enum:
    TAP_BATCH = 1 << 19   # staged bytes handed to the encoding thread at once, at most
    TAP_RECORDS = 4096    # ... and records


cdef class RecordTap:
    """Every record of the wanted collections, encoded as a CarWalker's walk reads it (set
    with CarWalker.set_tap: the posts import and the records files share one walk).  Each
    record was read through the walk (its block checked against its CID); here it is
    validated as atproto data (cb_skip, at most MAX_RECORD bytes, a map at its top).  One
    that is not valid data raises CarFormatError naming its CID and key, or, with
    `keep_bad`, is left out and listed in `bad` as (key, CID, what is wrong).

    The walk stages the records it passes (posts with their data, which it read; others
    by key and CID), and hands them over TAP_RECORDS or about TAP_BATCH bytes at a time
    to a second thread (one for the walk, ended by finish(), settle() or close()), which
    reads the others' blocks (read_block), validates and encodes each batch without the
    GIL while the walk goes on, so the two cores share the work.  Batches are encoded
    one at a time in key order, and an error is raised on the walking thread: the next
    batch handed over, finish(), or, when the walk itself fails, settle() (the records
    before the walk's error are checked first, so the first error in key order is the
    one raised, as if one thread did everything).  close() ends the thread (after a
    failure).

    Output goes to `on_chunk(collection, records, data)` (on the encoding thread), one
    collection at a time in key order (keys of a collection are contiguous in the MST),
    about `max_bytes` at a time: for fmt "jsonl" a line per record; "json" posts.json's
    elements, joined (and, unless they are a collection's first, preceded) by `,` and a
    newline; "csv" rows with `columns[collection]`'s columns (field paths) after uri and
    cid, or the record's compact JSON when the collection has no entry.  `on_batch()`,
    if given, is called on the walking thread as each batch is handed over (progress).
    finish() encodes and flushes the last records."""
    cdef object wanted          # None: every collection; else a set of bytes
    cdef bint keep_bad
    cdef readonly list bad
    cdef readonly int64_t bad_total
    cdef bytes did
    cdef int fmt                # 0 jsonl, 1 json, 2 csv
    cdef dict columns
    cdef object on_chunk
    cdef object on_batch
    cdef Py_ssize_t max_bytes
    # the walking thread's side
    cdef bytes mcoll            # the collection last found wanted (wants())
    cdef OutBuf staged[2]       # records staged: one being filled, one being encoded
    cdef int cur                # the one being filled
    cdef Py_ssize_t nstaged     # records in it
    cdef readonly int64_t batches   # batches handed to the encoding thread so far
    cdef object thread          # the encoding thread, once started (one for the walk)
    cdef object go              # a threading.Event: a batch is ready, or `stopping`
    cdef object done            # ... the batch is done
    cdef object ended           # ... the thread has ended
    cdef bint stopping
    cdef bint busy              # a batch is being encoded
    cdef object error           # what stopped the encoding thread
    cdef bint failed            # an error was raised: nothing more is encoded
    # the encoding side (one batch at a time: the thread, or finish()/settle())
    cdef bytes coll             # the collection being written
    cdef char ccoll[MAX_NSID]   # ... its name for the encoding loop
    cdef Py_ssize_t ccoll_n     # ... and its length (-1: none yet)
    cdef const char* didp       # the DID (did's bytes) and its length
    cdef Py_ssize_t didn
    cdef list paths             # its CSV columns (None: uri,cid,json)
    cdef const char** names     # the names of paths' columns, one after another
    cdef int* depth             # names per column
    cdef Py_ssize_t ncols
    cdef bint checking          # validating a record (its errors are the record's)
    cdef int64_t in_coll        # records of it written so far
    cdef int64_t pending        # records in out
    cdef OutBuf out
    cdef OutBuf tmp
    cdef readonly int64_t records
    # reading blocks on the encoding side (read_block)
    cdef CarWalker walker       # the walk feeding the tap: its CAR and block index
    cdef int carfd, ixfd, ixbits
    cdef const int64_t* ixdir
    cdef unsigned char* fbuf    # the block read (CID, then data)
    cdef Py_ssize_t fcap
    cdef int64_t spent          # bytes read so far, counted as the walk's budget counts
    cdef int64_t nread          # ... in this many block reads
    cdef int64_t limit          # what the walk's budget allowed when the batch began
    cdef int working            # the batch the thread was given
    cdef Py_ssize_t resume      # -1, or where the thread left that batch to the walker

    def __cinit__(self):
        ob_init(&self.out, 1 << 16)
        ob_init(&self.tmp, 256)
        ob_init(&self.staged[0], 1 << 16)
        ob_init(&self.staged[1], 1 << 16)
        self.names = NULL
        self.depth = NULL
        self.fbuf = NULL
        self.fcap = 0

    def __dealloc__(self):
        ob_free(&self.out)
        ob_free(&self.tmp)
        ob_free(&self.staged[0])
        ob_free(&self.staged[1])
        PyMem_RawFree(self.names)
        PyMem_RawFree(self.depth)
        PyMem_RawFree(self.fbuf)

    def __init__(self, str did, str fmt, wanted, bint keep_bad, dict columns not None,
                 on_chunk, Py_ssize_t max_bytes=1 << 20, on_batch=None):
        self.did = did.encode("ascii")
        self.didp = PyBytes_AS_STRING(self.did)
        self.didn = PyBytes_GET_SIZE(self.did)
        self.fmt = ("jsonl", "json", "csv").index(fmt)
        self.wanted = None if wanted is None else {bytes(x) for x in wanted}
        self.keep_bad = keep_bad
        self.bad = []
        self.bad_total = 0
        self.columns = columns
        self.on_chunk = on_chunk
        self.on_batch = on_batch
        self.max_bytes = max_bytes
        self.mcoll = None
        self.coll = None
        self.ccoll_n = -1
        self.paths = None
        self.cur = 0
        self.nstaged = 0
        self.batches = 0
        self.thread = None
        self.go = threading.Event()
        self.done = threading.Event()
        self.ended = threading.Event()
        self.busy = self.failed = self.stopping = False
        self.error = None
        self.in_coll = self.pending = self.records = 0
        self.walker = None
        self.spent = self.nread = self.limit = 0
        self.working = 0
        self.resume = -1

    cdef int attach(self, CarWalker walker) except -1:
        """The walk that feeds the tap (CarWalker.set_tap): records it does not read are
        read here, from its CAR through its block index."""
        if self.busy:
            raise RuntimeError("the tap is in use")
        self.walker = walker
        self.carfd = walker.fd
        self.ixfd = walker.ix.fd
        self.ixbits = walker.ix.bits
        self.ixdir = walker.ix.dir
        return 0

    cdef bint wants(self, bytes key, Py_ssize_t slash):
        """Is key's collection wanted (slash: the offset of its `/`)?"""
        cdef Py_ssize_t cn
        if self.mcoll is not None:
            cn = PyBytes_GET_SIZE(self.mcoll)
            if cn == slash and memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(self.mcoll),
                                      cn) == 0:
                return True
        if self.wanted is None or key[:slash] in self.wanted:
            self.mcoll = key[:slash]
            return True
        return False

    # --- the walking thread ---------------------------------------------------------

    cdef int stage(self, bytes key, Py_ssize_t slash, bytes cid, const unsigned char* s,
                   Py_ssize_t dn) except -1:
        """Stage one record (key's collection is wanted) for the encoding thread."""
        cdef OutBuf* a = &self.staged[self.cur]
        cdef Staged h
        h.kn = <int32_t>PyBytes_GET_SIZE(key)
        h.slash = <int32_t>slash
        h.cn = <int32_t>PyBytes_GET_SIZE(cid)
        h.dn = <int32_t>dn
        ob_write(a, <const char*>&h, sizeof(Staged))
        ob_write(a, PyBytes_AS_STRING(key), h.kn)
        ob_write(a, PyBytes_AS_STRING(cid), h.cn)
        if dn > 0:
            ob_write(a, <const char*>s, dn)
        self.nstaged += 1
        if a.len >= TAP_BATCH or self.nstaged >= TAP_RECORDS:
            self.hand_over()
        return 0

    cdef int join(self) except -1:
        """Wait for the batch being encoded, if any (its error is kept)."""
        if self.busy:
            self.done.wait()
            self.busy = False
        return 0

    cdef int merge(self) except -1:
        """Count the blocks read on the encoding side in the walk's budget (the walk
        refuses a tree that reads more than its budget, whichever side read it)."""
        cdef CarWalker w = self.walker
        if w is None or not self.nread:
            return 0
        w.budget -= self.spent
        w.blocks_read += self.nread
        self.spent = self.nread = 0
        if w.budget < 0:
            raise CarFormatError(f"records: the MST has read {w.blocks_read} blocks, more "
                                 "than 8 times the file's size in all: it reuses a subtree "
                                 "or a record many times (an honest repository reads each "
                                 "block about once); refused")
        return 0

    cdef int wait(self) except -1:
        """Wait for the batch being encoded; raise its error; encode here what the thread
        left to the walking thread (a block it could not read and check alone)."""
        cdef Py_ssize_t p
        self.join()
        if self.error is not None:
            exc, self.error = self.error, None
            self.failed = True
            raise exc
        try:
            self.merge()
            if self.resume >= 0:
                p, self.resume = self.resume, -1
                self.encode_all(&self.staged[self.working], p, True)
        except BaseException:
            self.failed = True
            raise
        return 0

    cdef int hand_over(self) except -1:
        """Hand the staged records to a new encoding thread (once the last one is done)."""
        cdef int which = self.cur
        self.wait()
        if self.staged[which].len == 0:
            return 0
        self.cur = 1 - which
        self.staged[self.cur].len = 0
        self.nstaged = 0
        self.batches += 1
        self.working = which
        self.resume = -1
        self.limit = self.walker.budget if self.walker is not None else 0
        self.done.clear()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name="skyexport-car-records")
            self.thread.start()
        self.busy = True
        self.go.set()
        if self.on_batch is not None:
            self.on_batch()
        return 0

    def _run(self):
        """The encoding thread: batch after batch (`working`), until `stopping`."""
        try:
            while True:
                self.go.wait()
                self.go.clear()
                if self.stopping:
                    return
                try:
                    self.encode_all(&self.staged[self.working], 0, False)
                except BaseException as exc:  # raised on the walking thread by wait()
                    self.error = exc
                finally:
                    self.done.set()
        finally:
            self.ended.set()

    cdef int stop(self) except -1:
        """End the encoding thread (its batch done first), if it was started."""
        self.join()
        if self.thread is not None:
            self.stopping = True
            self.go.set()
            self.ended.wait()   # not join(): see sources/car/repo.py's _Insert
            self.thread = None
        return 0

    def settle(self):
        """After the walk failed: check the records staged before its error (raising the
        first of their errors, which comes before the walk's in key order)."""
        try:
            if not self.failed:
                self.wait()
                self.encode_all(&self.staged[self.cur], 0, True)
                self.merge()
        except BaseException:
            self.failed = True
            raise
        finally:
            self.stop()   # the walk is over

    def finish(self):
        """Encode and write what is staged and held (the last records)."""
        if self.failed:
            self.stop()
            raise CarFormatError("the records were not all written (an earlier error)")
        try:
            self.wait()
            self.encode_all(&self.staged[self.cur], 0, True)
            self.merge()
            self.flush()
        except BaseException:
            self.failed = True
            raise
        finally:
            self.stop()   # the walk is over

    def close(self):
        """End the encoding thread, if one is running (after a failure; its error is
        dropped: the walk's own error is the one reported)."""
        self.failed = True
        self.stop()

    # --- the encoding side ----------------------------------------------------------

    cdef int encode_all(self, OutBuf* a, Py_ssize_t p, bint on_main) except -1:
        """Validate and encode the records staged in `a` from offset p, without the GIL
        but for callbacks and errors; `a` is emptied.  On the encoding thread (not
        `on_main`), a block it cannot read and check alone (missing, damaged, a copy of
        several, past the budget: rare) ends the batch there (`resume`); the walking
        thread reads it as the walk reads every block, errors and all."""
        cdef Staged h
        cdef const unsigned char* x
        while True:
            try:
                with nogil:
                    self.encode_from(a, &p, on_main)
                break
            except CarFormatError as exc:
                if not self.checking:
                    raise
                self.checking = False
                memcpy(&h, a.data + p, sizeof(Staged))
                x = <const unsigned char*>a.data + p + sizeof(Staged)
                key = PyBytes_FromStringAndSize(<const char*>x, h.kn).decode("ascii")
                cid = cid_str(PyBytes_FromStringAndSize(<const char*>x + h.kn, h.cn))
                if not self.keep_bad:
                    raise CarFormatError(f"block {cid} (record {key}) {exc}: not valid "
                                         "atproto data") from None
                self.bad_total += 1
                if len(self.bad) < 1000:
                    self.bad.append((key, cid, str(exc)))
                p += sizeof(Staged) + h.kn + h.cn + (h.dn if h.dn > 0 else 0)
        if self.resume < 0:
            a.len = 0
        return 0

    cdef int encode_from(self, OutBuf* a, Py_ssize_t* pp, bint on_main) except -1 nogil:
        """Records of `a` from pp[0] on: read (when staged without data), validated and
        encoded, pp[0] after each; a record's validation error is raised with `checking`
        set (encode_all)."""
        cdef Staged h
        cdef const unsigned char* x
        cdef const unsigned char* s
        cdef Py_ssize_t dn
        while pp[0] < a.len:
            memcpy(&h, a.data + pp[0], sizeof(Staged))
            x = <const unsigned char*>a.data + pp[0] + sizeof(Staged)
            s = x + h.kn + h.cn
            dn = h.dn
            if self.ccoll_n != h.slash or memcmp(x, self.ccoll, h.slash) != 0:
                with gil:
                    self.switch(PyBytes_FromStringAndSize(<const char*>x, h.slash))
            if dn < 0:
                dn = self.read_block(x + h.kn, h.cn)
                if dn < 0:
                    if not on_main:
                        self.resume = pp[0]
                        return 0
                    with gil:
                        dn = self.read_on_main(x, h.kn, x + h.kn, h.cn)
                s = self.fbuf + h.cn
            self.checking = True
            if dn > MAX_RECORD:
                with gil:
                    raise CarFormatError(f"is {dn} bytes; atproto records are at most "
                                         f"{MAX_RECORD >> 20} MiB")
            if cb_skip(s, 0, dn, 0) != dn:
                with gil:
                    raise CarFormatError("has bytes after its value")
            if s[0] >> 5 != 5:
                with gil:
                    raise CarFormatError("is not a map (a record is one)")
            self.checking = False
            self.add(x, h.kn, x + h.kn, h.cn, s, dn)
            pp[0] += sizeof(Staged) + h.kn + h.cn + (h.dn if h.dn > 0 else 0)
        return 0

    cdef Py_ssize_t read_block(self, const unsigned char* cid, Py_ssize_t cn) noexcept nogil:
        """Block `cid` read into fbuf and checked against its CID, without the GIL,
        through the block index of the walk (only reading it: the verdicts the walk keeps
        there are its own): the length of its data, or -1 when it is not found here, no
        copy matches its CID, the index is crowded there, or the budget is spent -- the
        walking thread's fetch then decides, as for any block."""
        cdef uint64_t key, b
        cdef int64_t lo, hi, j, m
        cdef IxEntry win[IX_WINDOW]
        cdef Py_ssize_t n
        cdef int tries = 0
        cdef unsigned char* grown
        cdef unsigned char digest[32]
        cdef sx_sha256 sh
        if self.walker is None or not is_sha256_cid(cid, cn):
            return -1
        key = <uint64_t>cid_key(cid, cn)
        b = key >> (64 - self.ixbits)
        lo = self.ixdir[b]
        hi = self.ixdir[b + 1]
        m = hi - lo
        if m <= 0 or m > IX_WINDOW:
            return -1
        if read_at(self.ixfd, win, m * <Py_ssize_t>sizeof(IxEntry),
                   lo * <int64_t>sizeof(IxEntry)) != m * <Py_ssize_t>sizeof(IxEntry):
            return -1
        j = 0
        while j < m and win[j].key < key:
            j += 1
        while j < m and win[j].key == key and tries < 8:
            tries += 1
            n = <Py_ssize_t>(win[j].n & IX_LEN)
            if n >= cn and n <= MAX_BLOCK + 128:
                if self.spent + n + FETCH_COST > self.limit:
                    return -1
                if n > self.fcap:
                    grown = <unsigned char*>PyMem_RawRealloc(self.fbuf, n)
                    if grown == NULL:
                        return -1
                    self.fbuf, self.fcap = grown, n
                if read_at(self.carfd, self.fbuf, n, win[j].off) != n:
                    return -1
                self.spent += n + FETCH_COST
                self.nread += 1
                if memcmp(self.fbuf, cid, cn) == 0:
                    sx_sha256_init(&sh)
                    sx_sha256_update(&sh, self.fbuf + cn, <size_t>(n - cn))
                    sx_sha256_final(&sh, digest)
                    if memcmp(digest, cid + cn - 32, 32) == 0:
                        return n - cn
            j += 1
        return -1

    cdef Py_ssize_t read_on_main(self, const unsigned char* key, Py_ssize_t kn,
                                 const unsigned char* cid, Py_ssize_t cn) except -1:
        """The walk's own fetch of a record's block into fbuf, on the walking thread (the
        encoding thread is idle): its errors are the walk's."""
        cdef int64_t where = 0
        if self.walker is None:
            raise CarFormatError("a record was staged without its block (an internal error)")
        return self.walker.fetch_into(cid, cn,
                                      PyBytes_FromStringAndSize(<const char*>key, kn), None,
                                      &self.fbuf, &self.fcap, &where)

    cdef int switch(self, bytes coll) except -1:
        """The records of a new collection start: the last one's are written, and a new
        file begun, even if it stays empty."""
        cdef Py_ssize_t k = 0, total = 0
        cdef tuple path
        cdef bytes name
        self.flush()
        if PyBytes_GET_SIZE(coll) > MAX_NSID:   # the walk checked the key: never
            raise CarFormatError("a collection name is too long")
        self.coll = coll
        memcpy(self.ccoll, PyBytes_AS_STRING(coll), PyBytes_GET_SIZE(coll))
        self.ccoll_n = PyBytes_GET_SIZE(coll)
        self.paths = self.columns.get(coll.decode("ascii"))
        PyMem_RawFree(self.names)
        PyMem_RawFree(self.depth)
        self.names = NULL
        self.depth = NULL
        self.ncols = 0
        if self.paths is not None:
            for path in self.paths:
                total += len(path)
            self.names = <const char**>PyMem_RawMalloc((total + 1) * sizeof(const char*))
            self.depth = <int*>PyMem_RawMalloc((len(self.paths) + 1) * sizeof(int))
            if self.names == NULL or self.depth == NULL:
                raise MemoryError()
            for path in self.paths:
                self.depth[self.ncols] = len(path)
                self.ncols += 1
                for name in path:
                    self.names[k] = PyBytes_AS_STRING(name)
                    k += 1
        self.in_coll = 0
        self.on_chunk(coll.decode("ascii"), 0, b"")   # a new file, even if empty
        return 0

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

    cdef int add(self, const unsigned char* key, Py_ssize_t kn, const unsigned char* cid,
                 Py_ssize_t cn, const unsigned char* s, Py_ssize_t dn) except -1 nogil:
        """Encode one validated record of the collection being written."""
        cdef Py_ssize_t c, j, k, q
        cdef OutBuf* o = &self.out
        cdef const char* did = self.didp
        cdef Py_ssize_t didn = self.didn
        if self.fmt == 0:
            ob_write(o, b'{"uri":"at://', 13)
            ob_write(o, did, didn)
            ob_byte(o, b'/')
            ob_write(o, <const char*>key, kn)
            ob_write(o, b'","cid":"', 9)
            ob_cid(o, cid, cn)
            ob_write(o, b'","value":', 10)
            rj_value(o, s, 0, dn, 0, False)
            ob_write(o, b"}\n", 2)
        elif self.fmt == 1:
            if self.in_coll:
                ob_write(o, b",\n", 2)
            ob_write(o, b'  {\n    "uri": "at://', 21)
            ob_write(o, did, didn)
            ob_byte(o, b'/')
            ob_write(o, <const char*>key, kn)
            ob_write(o, b'",\n    "cid": "', 15)
            ob_cid(o, cid, cn)
            ob_write(o, b'",\n    "value": ', 16)
            rj_value(o, s, 0, dn, 2, True)
            ob_write(o, b"\n  }", 4)
        else:
            ob_write(o, b"at://", 5)
            ob_write(o, did, didn)
            ob_byte(o, b'/')
            ob_write(o, <const char*>key, kn)
            ob_byte(o, b',')
            ob_cid(o, cid, cn)
            if self.names == NULL:
                ob_byte(o, b',')
                self.tmp.len = 0
                rj_value(&self.tmp, s, 0, dn, 0, False)
                ob_csv_field(o, <const unsigned char*>self.tmp.data, self.tmp.len)
            else:
                q = 0
                for c in range(self.ncols):
                    ob_byte(o, b',')
                    k = 0
                    for j in range(self.depth[c]):
                        k = cb_find(s, k, dn, self.names[q + j]) if k >= 0 else -1
                    q += self.depth[c]
                    rc_cell(o, &self.tmp, s, k, dn)
            ob_byte(o, b'\n')
        self.in_coll += 1
        self.pending += 1
        self.records += 1
        if o.len >= self.max_bytes:
            with gil:
                self.flush()
        return 0


cdef int tap_key(CarWalker w, bytes key, bint fetched) except -1:
    """The walk passed `key` (record CID in w.value): stage its record for the walker's
    tap if its collection is wanted: with its data if `fetched` (a post, read by next_post
    into w.buf, w.dn bytes), else to be read on the encoding side."""
    cdef RecordTap tap = <RecordTap>w.tap
    cdef Py_ssize_t slash = key.find(b"/"), cn, dn
    if not tap.wants(key, slash):
        return 0
    cid = w.value
    cn = PyBytes_GET_SIZE(cid)
    if fetched:
        tap.stage(key, slash, cid, w.buf + cn, w.dn)
    else:   # read on the encoding side
        tap.stage(key, slash, cid, NULL, -1)
    return 0


def tap_drain(CarWalker walker not None):
    """Walk to the end, for the tap alone (no posts rows are made)."""
    while walker.next_post() is not None:
        pass
