# Repository CARs: CarCheck, the whole check of a repository in the core (`skyexport
# fetch`): every MST node read and checked as CarWalker checks it, every record the tree
# references found in the block index with a good copy, the blob refs of the records
# holding the text "blob" collected -- without a Python object per key.

cdef enum:
    CK_FRAMES = 130           # CarWalker refuses a path of more than 128 levels


cdef struct CkFrame:
    unsigned char* data       # the node's data, or NULL once dropped (PATH_BYTES)
    Py_ssize_t n
    int64_t off               # where the data starts in the CAR
    Py_ssize_t pos            # where its next entry starts
    uint64_t left             # entries left
    Py_ssize_t keyn           # the last key read in it (keys are prefix-compressed per node)
    unsigned char key[MAX_KEY]


cdef str key_text(const unsigned char* s, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char*>s, n).decode("ascii")


cdef int cb_blob_refs(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int depth,
                      list out) except -1:
    """The `ref` links of the blob objects ({"$type": "blob", "ref": CID, ...}) in the
    value at i (validated before: cb_skip), appended to out as CIDs; a blob object is not
    looked into, nor anything nested deeper than 64 levels."""
    cdef Item it
    cdef Py_ssize_t x, start, end
    cdef uint64_t j, count
    if depth > 64:
        return 0
    cb_head(s, i, n, &it)
    count = it.arg
    if it.major == 5:
        x = cb_find(s, i, n, "$type")
        if x >= 0 and cb_text_is(s, x, n, "blob"):
            x = cb_find(s, i, n, "ref")
            if x >= 0:
                cb_head(s, x, n, &it)
                if it.major == 6:
                    end = cb_link(s, x + it.head, n, &start)
                    out.append(CID(PyBytes_FromStringAndSize(<const char*>s + start,
                                                             end - start)))
                    return 0
            cb_head(s, i, n, &it)
        i += it.head
        for j in range(count):
            i = cb_pass(s, i, n)            # the key
            cb_head(s, i, n, &it)
            if it.major == 4 or it.major == 5:
                cb_blob_refs(s, i, n, depth + 1, out)
            i = cb_pass(s, i, n)
    elif it.major == 4:
        i += it.head
        for j in range(count):
            cb_head(s, i, n, &it)
            if it.major == 4 or it.major == 5:
                cb_blob_refs(s, i, n, depth + 1, out)
            i = cb_pass(s, i, n)
    return 0


# --- the MST nodes read ahead (CarCheck.run) ----------------------------------------------

cdef enum:
    NA_ITEMS = 128            # nodes read ahead at most
    NA_BYTES = 8192           # a node bigger than this (CID and data) ends the read-ahead
    NA_STACK = 4096           # links waiting to be opened at most
    NA_CID = 64               # a longer CID ends the read-ahead
    NA_LINKS = 1024           # links of one node at most
    NA_WAKE = 32              # a waiting thread is woken for this many nodes (or slots)


cdef struct NaItem:
    Py_ssize_t cn             # its CID's length (the CID starts buf)
    Py_ssize_t dn             # its data's length (after the CID)
    int64_t where             # where its CID is in the CAR
    unsigned char* buf        # NA_BYTES of the arena


cdef Py_ssize_t nl_head(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int major,
                        uint64_t* v) noexcept nogil:
    """The head of an item of CBOR major type `major` at i (argument in v): the position
    after it, or -1 (another type, an indefinite or 8-byte length, the end)."""
    cdef int ai
    if i >= n or s[i] >> 5 != major:
        return -1
    ai = s[i] & 31
    if ai < 24:
        v[0] = ai
        return i + 1
    if ai == 24 and i + 2 <= n:
        v[0] = s[i + 1]
        return i + 2
    if ai == 25 and i + 3 <= n:
        v[0] = (<uint64_t>s[i + 1] << 8) | s[i + 2]
        return i + 3
    if ai == 26 and i + 5 <= n:
        v[0] = ((<uint64_t>s[i + 1] << 24) | (<uint64_t>s[i + 2] << 16)
                | (<uint64_t>s[i + 3] << 8) | s[i + 4])
        return i + 5
    return -1


cdef Py_ssize_t nl_link(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* at,
                        Py_ssize_t* cn) noexcept nogil:
    """A link (tag 42: bytes 0x00 then the CID) or null at i: the position after it, the
    CID's place in at/cn (cn 0: null); -1 when it is neither."""
    cdef uint64_t v
    cdef Py_ssize_t j
    if i < n and s[i] == 0xf6:
        cn[0] = 0
        return i + 1
    if i + 2 > n or s[i] != 0xd8 or s[i + 1] != 0x2a:
        return -1
    j = nl_head(s, i + 2, n, 2, &v)
    if j < 0 or v < 2 or v > <uint64_t>(n - j) or s[j] != 0:
        return -1
    at[0] = j + 1
    cn[0] = <Py_ssize_t>v - 1
    return j + <Py_ssize_t>v


cdef inline Py_ssize_t nl_key(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                              unsigned char name) noexcept nogil:
    """The one-letter map key `name` at i: the position after it, or -1."""
    if i < 0 or i + 2 > n or s[i] != 0x61 or s[i + 1] != name:
        return -1
    return i + 2


cdef bint entry_fast(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* pp,
                     Py_ssize_t* kp, Py_ssize_t* tp, Py_ssize_t* vp,
                     Py_ssize_t* after) noexcept nogil:
    """Where the values of the MST entry at i start, when it is in canonical DAG-CBOR
    ({"k": bytes, "p": uint, "t": link or null, "v": link or null}, in that order), and
    where it ends: True; False sends CarCheck to its general reading (cb_find), which
    accepts the same entries in any order and words what is wrong."""
    cdef uint64_t v
    cdef Py_ssize_t j, a, c
    if i >= n or s[i] != 0xa4:
        return False
    j = nl_key(s, i + 1, n, b'k')
    kp[0] = j
    j = nl_head(s, j, n, 2, &v) if j >= 0 else -1
    if j < 0 or v > <uint64_t>(n - j):
        return False
    j = nl_key(s, j + <Py_ssize_t>v, n, b'p')
    pp[0] = j
    j = nl_head(s, j, n, 0, &v) if j >= 0 else -1
    j = nl_key(s, j, n, b't')
    tp[0] = j
    j = nl_link(s, j, n, &a, &c) if j >= 0 else -1
    j = nl_key(s, j, n, b'v')
    vp[0] = j
    j = nl_link(s, j, n, &a, &c) if j >= 0 else -1
    after[0] = j
    return j >= 0


cdef Py_ssize_t node_links(const unsigned char* s, Py_ssize_t n, Py_ssize_t* at,
                           Py_ssize_t* cn) noexcept nogil:
    """The subtree links of an MST node in canonical DAG-CBOR ({"e": [{"k", "p", "t",
    "v"}...], "l"}), in the order a depth-first walk opens them: `l` in slot 0 (cn 0 when
    null), then each entry's `t` that is not null.  How many slots, or -1 when s is not
    such a node (or has more than NA_LINKS links).  Only the read-ahead's guide: CarCheck
    checks every node it is given as if it had read it itself."""
    cdef uint64_t count, e
    cdef Py_ssize_t i, k = 1, a, c, pp, kp, tp, vp
    if n < 3 or s[0] != 0xa2 or s[1] != 0x61 or s[2] != 0x65:
        return -1
    i = nl_head(s, 3, n, 4, &count)
    for e in range(count):
        if i < 0 or not entry_fast(s, i, n, &pp, &kp, &tp, &vp, &i):
            return -1
        nl_link(s, tp, n, &a, &c)         # read whole by entry_fast
        if c:
            if k == NA_LINKS:
                return -1
            at[k] = a
            cn[k] = c
            k += 1
    i = nl_key(s, i, n, b'l')
    i = nl_link(s, i, n, &at[0], &cn[0]) if i >= 0 else -1
    return k if i == n else -1


@cython.final
@cython.auto_pickle(False)
cdef class _NodeAhead:
    """CarCheck's read-ahead of MST nodes: a thread of its own walks the tree's links
    depth-first as CarCheck will, from the root -- each node read through the scan's
    table (tb_read_into) or the block index's usual case (ix_fast: one entry for the key,
    its verdict good or its data hashed), its links found by node_links -- and hands the
    nodes over in that order, up to NA_ITEMS ahead, without the GIL.  CarCheck takes the
    next one when it is the node it wants (take), else reads itself from then on.  The
    thread stops at anything unusual (a node the table lacks, one too big, one not in the
    canonical shape, too many links waiting): the nodes after are read by CarCheck.
    Items [consumed, produced) are ready; both counters change only under `sync`.  The
    taking side counts what it took in `took` and publishes it as `consumed` every
    NA_WAKE nodes (or when it waits); a waiting side is woken for NA_WAKE nodes or slots
    at once, not for each."""
    cdef sx_sync sync
    cdef bint sync_ok
    cdef NaItem items[NA_ITEMS]
    cdef unsigned char* arena         # NA_ITEMS * NA_BYTES
    cdef unsigned char* stack         # NA_STACK links of NA_CID bytes: the CIDs to open
    cdef Py_ssize_t* stack_n
    cdef Py_ssize_t depth
    cdef int64_t produced
    cdef int64_t consumed
    cdef int64_t took                 # nodes taken (the taking side's own count)
    cdef int64_t seen                 # `produced` as the taking side last saw it
    cdef bint reader_waits
    cdef bint taker_waits
    cdef bint stop
    cdef bint stopped                 # the thread has ended (no more items)
    cdef BlockTable tab               # where the nodes are found: the scan's table,
    cdef BlockIndex ix                # ... or a block index (ix_fast)
    cdef IxEntry win[IX_WINDOW]
    cdef int fd

    def __cinit__(self):
        self.arena = NULL
        self.stack = NULL
        self.stack_n = NULL
        self.sync_ok = False

    def __init__(self, int fd, BlockTable tab, BlockIndex ix, bytes root not None):
        """Nodes found through `tab`, or when it is None through `ix`."""
        cdef int i
        self.fd = fd
        self.tab, self.ix = tab, ix
        self.arena = <unsigned char*>PyMem_RawMalloc(NA_ITEMS * NA_BYTES)
        self.stack = <unsigned char*>PyMem_RawMalloc(NA_STACK * NA_CID)
        self.stack_n = <Py_ssize_t*>PyMem_RawMalloc(NA_STACK * sizeof(Py_ssize_t))
        if self.arena == NULL or self.stack == NULL or self.stack_n == NULL:
            raise MemoryError()
        for i in range(NA_ITEMS):
            self.items[i].buf = self.arena + i * NA_BYTES
        if sx_sync_init(&self.sync) != 0:
            raise MemoryError()
        self.sync_ok = True
        self.depth = 0
        self.produced = self.consumed = self.took = self.seen = 0
        self.reader_waits = self.taker_waits = False
        self.stop = self.stopped = False
        if not self.push(<const unsigned char*>PyBytes_AS_STRING(root),
                         PyBytes_GET_SIZE(root)):
            self.stopped = True

    def __dealloc__(self):
        PyMem_RawFree(self.arena)
        PyMem_RawFree(self.stack)
        PyMem_RawFree(self.stack_n)
        if self.sync_ok:
            sx_sync_destroy(&self.sync)

    cdef bint push(self, const unsigned char* cid, Py_ssize_t cn) noexcept nogil:
        if self.depth == NA_STACK or cn > NA_CID:
            return False
        memcpy(self.stack + self.depth * NA_CID, cid, cn)
        self.stack_n[self.depth] = cn
        self.depth += 1
        return True

    def serve(self):
        """The reading thread: every node in the walk's order, until the end or stopped."""
        with nogil:
            self.serve_c()

    cdef void serve_c(self) noexcept nogil:
        cdef Py_ssize_t at[NA_LINKS]
        cdef Py_ssize_t cn[NA_LINKS]
        cdef Py_ssize_t k, j, c
        cdef NaItem* it
        cdef bint go = True
        while go and self.depth and not self.stopped:
            sx_lock(&self.sync)
            while self.produced - self.consumed >= NA_ITEMS and not self.stop:
                self.reader_waits = True
                sx_wait_ms(&self.sync, WAIT_MS)
            self.reader_waits = False
            go = not self.stop
            sx_unlock(&self.sync)
            if not go:
                break
            self.depth -= 1
            it = &self.items[self.produced % NA_ITEMS]
            c = self.stack_n[self.depth]
            if self.tab is not None:
                it.dn = tb_read_into(self.tab.ents, self.tab.dir, self.fd,
                                     self.stack + self.depth * NA_CID, c, it.buf, NA_BYTES,
                                     &it.where)
            else:
                it.dn = ix_fast(self.ix.fd, self.ix.dir, self.ix.bits, self.fd,
                                self.stack + self.depth * NA_CID, c, self.win, it.buf,
                                NA_BYTES, &it.where, True)
            if it.dn < 0:
                break
            it.cn = c
            k = node_links(it.buf + c, it.dn, at, cn)
            if k < 0:
                go = False      # handed over; CarCheck finds what is wrong, or reads on
            else:
                for j in range(k - 1, 0, -1):
                    go = go and self.push(it.buf + c + at[j], cn[j])
                if cn[0]:
                    go = go and self.push(it.buf + c + at[0], cn[0])
            sx_lock(&self.sync)
            self.produced += 1
            if self.taker_waits and self.produced - self.consumed >= NA_WAKE:
                sx_broadcast(&self.sync)
            sx_unlock(&self.sync)
        sx_lock(&self.sync)
        self.stopped = True
        sx_broadcast(&self.sync)
        sx_unlock(&self.sync)

    cdef NaItem* take(self, const unsigned char* cid, Py_ssize_t cn) except? NULL:
        """The next node read ahead if it is block `cid` (give it back with done()), else
        NULL: none is left, or the walk went another way (then the thread is stopped)."""
        cdef bint ended = False
        cdef NaItem* it
        while self.took == self.seen:
            with nogil:
                sx_lock(&self.sync)
                self.consumed = self.took
                if self.reader_waits:
                    sx_broadcast(&self.sync)
                if self.produced == self.took and not self.stopped:
                    self.taker_waits = True
                    sx_wait_ms(&self.sync, WAIT_MS)
                    self.taker_waits = False
                self.seen = self.produced
                ended = self.stopped
                sx_unlock(&self.sync)
            if self.took == self.seen:
                if ended:
                    return NULL
                PyErr_CheckSignals()
        it = &self.items[self.took % NA_ITEMS]
        if it.cn != cn or memcmp(it.buf, cid, cn) != 0:
            self.end()
            return NULL
        return it

    cdef void done(self) noexcept:
        """The node take() gave is used: its slot may be read into again."""
        self.took += 1
        if self.took - self.consumed >= NA_WAKE:
            with nogil:
                sx_lock(&self.sync)
                self.consumed = self.took
                if self.reader_waits:
                    sx_broadcast(&self.sync)
                sx_unlock(&self.sync)

    cdef int end(self) except -1:
        """Stop the thread and wait until it has (it is within one node's read)."""
        with nogil:
            sx_lock(&self.sync)
            self.stop = True
            sx_broadcast(&self.sync)
            while not self.stopped:
                sx_wait_ms(&self.sync, WAIT_MS)
            sx_unlock(&self.sync)
        return 0


@cython.final
@cython.auto_pickle(False)
cdef class CarCheck:
    """Checks the MST of a CAR whole: `run()` walks it depth-first in key order, reading
    and checking every MST node exactly as CarWalker does (shape, keys in strictly
    increasing order across the walk, each key COLLECTION/RKEY within atproto's bounds,
    depth, no empty node below the root, the path held up to PATH_BYTES, the same read
    budget), and every record the tree references must have a good copy (data matching
    its CID).  Without `verified`, each record is looked up and read (a verdict the index
    already holds is not hashed again).  With `verified` (the verifying scan, with its
    good CIDs) and `refs_fd` (a scratch file), the records' CIDs are spilled and proved
    present all at once after the walk (spill.pxi); only the records the scan saw holding
    the text "blob" are read.  Those are decoded strictly (cb_skip) and their blob refs
    collected: `blob_refs` is {blob CID text: the first key, in key order, of a record
    referencing it}, one entry per blob however many records share it (a record that
    does not decode gives none: export reports it).  `records`: how many keys;
    `collections`: keys per collection.  Errors raise CarFormatError with the block's CID
    and key, the messages of CarWalker.  `index` is a BlockIndex, or the verifying scan's
    BlockTable (build_table): then a block the table lacks fails the check too (the caller
    checks anew with an index, for the walk's own message)."""
    cdef int fd
    cdef BlockIndex ix                # the block index, or None with ...
    cdef BlockTable tab               # ... the verifying scan's table of the blocks read
    cdef CkFrame* frames
    cdef int depth
    cdef Py_ssize_t held
    cdef readonly int64_t budget
    cdef readonly int64_t records
    cdef readonly int64_t nodes_read
    cdef readonly int64_t nodes_reread
    cdef readonly int64_t blocks_read
    cdef readonly int64_t nodes_ahead     # MST nodes the read-ahead gave (of nodes_read)
    cdef readonly dict collections
    cdef readonly dict blob_refs
    cdef unsigned char last[MAX_KEY]
    cdef Py_ssize_t lastn                 # -1: no key yet
    cdef unsigned char* buf               # the last block fetch() read: CID, then data
    cdef Py_ssize_t cap
    cdef int64_t fetched_at
    cdef object sha256
    cdef bytes root
    cdef _NodeAhead ahead             # the nodes read ahead (run())
    cdef bint ahead_on                # ... still followed
    cdef CarScanner verified          # the verifying scan's good CIDs, or None
    cdef Spill refs                   # with it: every record CID referenced
    cdef bint fast

    def __cinit__(self):
        self.frames = NULL
        self.buf = NULL
        self.cap = 0
        self.depth = 0

    def __init__(self, int fd, index not None, data_cid,
                 CarScanner verified=None, int refs_fd=-1):
        import hashlib
        self.fd = fd
        if isinstance(index, BlockTable):
            self.tab = index
        else:
            self.ix = index
        self.budget = 8 * index.size + (8 << 20)
        self.sha256 = hashlib.sha256
        self.collections = {}
        self.blob_refs = {}
        self.lastn = -1
        self.root = bytes(data_cid)
        self.frames = <CkFrame*>PyMem_RawMalloc(CK_FRAMES * sizeof(CkFrame))
        if self.frames == NULL:
            raise MemoryError()
        self.fast = verified is not None and verified.good.fd >= 0 and refs_fd >= 0
        if self.fast:
            self.verified = verified
            sp_init(&self.refs, refs_fd)

    def __dealloc__(self):
        cdef int i
        sp_free(&self.refs)
        if self.frames != NULL:
            for i in range(self.depth):
                PyMem_RawFree(self.frames[i].data)
            PyMem_RawFree(self.frames)
        PyMem_RawFree(self.buf)

    cdef str last_text(self):
        return PyBytes_FromStringAndSize(<const char*>self.last, self.lastn).decode("ascii")

    cdef str what(self, str key):
        """The block's name in errors: a record by its key ("": the last key read), an
        MST node by the key before."""
        if key is not None:
            return f"record {key or self.last_text()}"
        if self.lastn >= 0:
            return f"MST node after key {self.last_text()}"
        return "MST node before the first key"

    cdef Py_ssize_t fetch(self, const unsigned char* cid, Py_ssize_t cn, str key) except -1:
        """CarWalker.fetch: block `cid` read into self.buf and checked; its data length."""
        cdef Py_ssize_t r, i
        cdef uint64_t v, code = 0
        if not sha256_cid(cid, cn):
            if cn > 80 or cid_len(cid, cn) != cn:
                raise CarFormatError(f"block ({self.what(key)}) has an overlong or "
                                     "malformed CID")
            i = 0 if cid[0] == 0x12 else uvarint(cid, cn, &v)
            if i:
                i += uvarint(cid + i, cn - i, &v)
            uvarint(cid + i, cn - i, &code)
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key)}) "
                                 f"uses hash 0x{code:x}; only SHA-256 CIDs can be checked")
        cdef NaItem* it = NULL
        if key is None and self.ahead_on:
            it = self.ahead.take(cid, cn)
            self.ahead_on = it != NULL
        if it != NULL:
            r = it.dn
            grow_buf(&self.buf, &self.cap, cn + r)
            memcpy(self.buf, it.buf, cn + r)
            self.fetched_at = it.where
            self.ahead.done()
            self.nodes_ahead += 1
        elif self.tab is not None:
            r = self.tab.read(self.fd, cid, cn, &self.buf, &self.cap, &self.fetched_at)
            if r < 0:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key)}) is not "
                                     "among the blocks the scan kept for the check")
        else:
            r = self.ix.resolve(self.fd, cid, cn, &self.buf, &self.cap, self.sha256,
                                &self.fetched_at)
        if r == -2:
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key)}) does "
                                 "not match its CID (the file is damaged); download the "
                                 "repository again")
        if r < 0:
            raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key)}) is "
                                 "missing (a partial CAR?); download the whole repository "
                                 "again")
        self.spend(r + cn, cid, cn, key)
        self.blocks_read += 1
        return r

    cdef int spend(self, Py_ssize_t n, const unsigned char* cid, Py_ssize_t cn,
                   str key) except -1:
        self.budget -= n + FETCH_COST
        if self.budget < 0:
            name = cid_str(cid[:cn]) if cn else ""
            what = self.what(key) if cn else "an MST node read again"
            raise CarFormatError(f"block {name} ({what}): the MST has read "
                                 f"{self.blocks_read} blocks, more than 8 times the file's "
                                 "size in all: it reuses a subtree or a record many times (an "
                                 "honest repository reads each block about once); refused")
        return 0

    cdef void hold(self, Py_ssize_t n) noexcept:
        """CarWalker.hold: n more bytes held, then the nodes nearest the root dropped (not
        the top one) until the path holds at most PATH_BYTES."""
        cdef int i = 0
        self.held += n
        while self.held > PATH_BYTES and i < self.depth - 1:
            if self.frames[i].data != NULL:
                PyMem_RawFree(self.frames[i].data)
                self.frames[i].data = NULL
                self.held -= self.frames[i].n
            i += 1

    cdef void pop(self) noexcept:
        self.depth -= 1
        if self.frames[self.depth].data != NULL:
            PyMem_RawFree(self.frames[self.depth].data)
            self.frames[self.depth].data = NULL
            self.held -= self.frames[self.depth].n

    cdef int reload(self, CkFrame* f) except -1:
        """CarWalker.reload: f's node read again, checked as the first time."""
        cdef unsigned char* p
        self.spend(f.n, NULL, 0, None)
        p = <unsigned char*>PyMem_RawMalloc(f.n if f.n > 0 else 1)
        if p == NULL:
            raise MemoryError()
        if (pread_full(self.fd, p, f.n, f.off) != f.n
                or cb_skip(p, 0, f.n, 0) != f.n):
            PyMem_RawFree(p)
            raise CarFormatError("the CAR changed while it was read (an MST node differs)")
        self.nodes_reread += 1
        f.data = p
        self.hold(f.n)
        return 0

    cdef int push(self, const unsigned char* first, Py_ssize_t first_n) except -1:
        """CarWalker.push: the node `first` on the path, and its leftmost descendants."""
        cdef Item it
        cdef Py_ssize_t n, e, left, start, end, cn = first_n
        cdef const unsigned char* s
        cdef unsigned char cid[256]
        cdef unsigned char* data
        cdef CkFrame* f
        memcpy(cid, first, cn)
        while True:
            n = self.fetch(cid, cn, None)
            self.nodes_read += 1
            s = self.buf + cn
            try:
                if cb_skip(s, 0, n, 0) != n:
                    raise CarFormatError("has bytes after its value")
                cb_head(s, 0, n, &it)
                e = cb_find(s, 0, n, "e")
                left = cb_find(s, 0, n, "l")
                if e < 0 or left < 0 or it.arg != 2:
                    raise CarFormatError("is not an MST node {l, e}")
                cb_head(s, e, n, &it)
                if it.major != 4:
                    raise CarFormatError("has an `e` that is not an array")
            except CarFormatError as exc:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(None)}) "
                                     f"{exc}") from None
            if self.depth > 128:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(None)}) is "
                                     "more than 128 levels deep")
            data = <unsigned char*>PyMem_RawMalloc(n if n > 0 else 1)
            if data == NULL:
                raise MemoryError()
            memcpy(data, s, n)
            f = &self.frames[self.depth]
            f.data = data
            f.n = n
            f.off = self.fetched_at + cn
            f.pos = e + it.head
            f.left = it.arg
            f.keyn = 0
            cb_head(data, left, n, &it)
            if f.left == 0 and it.major == 7 and self.depth:
                PyMem_RawFree(data)
                f.data = NULL
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(None)}) is an "
                                     "empty MST node below the root (the MST is damaged)")
            self.depth += 1
            self.hold(n)
            if it.major == 7 and it.arg == 22:
                return 0
            if it.major != 6:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(None)}) has "
                                     "an `l` that is not a link")
            start = 0
            end = cb_link(data, left + it.head, n, &start)
            cn = end - start
            memcpy(cid, data + start, cn)

    cdef int record(self, const unsigned char* cid, Py_ssize_t cn) except -1:
        """The record of the last key: a good copy must exist; its blob refs kept."""
        cdef Py_ssize_t r
        cdef const unsigned char* s
        cdef list found
        cdef unsigned char e[SP_ENTRY]
        if self.fast and cid_entry(cid, cn, e):
            sp_add(&self.refs, e)     # proved present by run()'s join, not read
            if not ks_has(&self.verified.blobby, entry_key(e)):
                return 0
        r = self.fetch(cid, cn, "")   # "": the key's text is made only for a message
        s = self.buf + cn
        if has_blob_text(s, r):
            key = self.last_text()
            try:
                if cb_skip(s, 0, r, 0) != r:
                    return 0
            except CarFormatError:
                return 0    # not this check's business: export reports bad records
            found = []
            cb_blob_refs(s, 0, r, 0, found)
            for ref in found:
                name = cid_str(ref)
                if name not in self.blob_refs:
                    self.blob_refs[name] = key
        return 0

    cdef int count(self, const unsigned char* coll, Py_ssize_t n, int64_t k) except -1:
        if k:
            name = PyBytes_FromStringAndSize(<const char*>coll, n)
            self.collections[name] = self.collections.get(name, 0) + k
        return 0

    def run(self):
        """Walk the whole tree; returns the number of keys.  With the verifying scan's
        good CIDs, the records are not looked up one by one but proved present all at once
        after the walk; -1 when that proof fails (a record missing or damaged, or a
        partition too big to hold): check again without them for the error.  The MST
        nodes are read ahead (_NodeAhead) on a thread that ends with run()."""
        import threading
        self.ahead = _NodeAhead(self.fd, self.tab, self.ix, self.root)
        thread = threading.Thread(target=self.ahead.serve, name="skyexport-check-ahead",
                                  daemon=True)
        thread.start()
        self.ahead_on = True
        try:
            return self.walk()
        finally:
            self.ahead_on = False
            self.ahead.end()
            thread.join()

    cdef int64_t walk(self) except -2:
        """run()'s walk."""
        cdef CkFrame* f
        cdef const unsigned char* s
        cdef const unsigned char* ks
        cdef Py_ssize_t n, i, pp, kp, vp, tp, start, end, klen, kn, slash, j, vn, tn = 0
        cdef Py_ssize_t after = 0
        cdef Item it
        cdef unsigned char value[256]
        cdef unsigned char sub[256]
        cdef unsigned char coll[MAX_NSID]
        cdef Py_ssize_t colln = -1
        cdef int64_t in_coll = 0
        cdef bint has_sub, fast
        cdef int c
        self.push(<const unsigned char*>PyBytes_AS_STRING(self.root),
                  PyBytes_GET_SIZE(self.root))
        while self.depth:
            f = &self.frames[self.depth - 1]
            if f.left == 0:
                self.pop()
                continue
            if f.data == NULL:
                self.reload(f)
            s = f.data
            n = f.n
            i = f.pos
            try:
                fast = entry_fast(s, i, n, &pp, &kp, &tp, &vp, &after)
                if not fast:
                    cb_head(s, i, n, &it)
                    if it.major != 5:
                        raise CarFormatError("has an entry that is not a map")
                    pp = cb_find(s, i, n, "p")
                    kp = cb_find(s, i, n, "k")
                    vp = cb_find(s, i, n, "v")
                    tp = cb_find(s, i, n, "t")
                    if pp < 0 or kp < 0 or vp < 0 or tp < 0 or it.arg != 4:
                        raise CarFormatError("has a malformed entry (its keys are not p, k, "
                                             "t, v)")
                cb_head(s, pp, n, &it)
                if it.major != 0 or it.arg > <uint64_t>f.keyn:
                    raise CarFormatError("has a malformed entry (p)")
                klen = <Py_ssize_t>it.arg
                cb_head(s, kp, n, &it)
                if it.major != 2:
                    raise CarFormatError("has a malformed entry (k)")
                if it.arg > <uint64_t>(MAX_KEY - klen):
                    raise CarFormatError(f"has a key of {klen + <Py_ssize_t>it.arg} bytes; "
                                         f"atproto keys are at most {MAX_KEY} (a collection "
                                         f"of {MAX_NSID}, '/', a record key of {MAX_RKEY})")
                kn = klen + <Py_ssize_t>it.arg
                memcpy(f.key + klen, s + kp + it.head, <Py_ssize_t>it.arg)
                ks = f.key
                slash = -1
                for j in range(kn):
                    if not 0x21 <= ks[j] <= 0x7e:
                        raise CarFormatError("has a key that is not printable ASCII")
                    if ks[j] == b'/' and slash < 0:
                        slash = j
                if (slash < 1 or slash > MAX_NSID or kn - slash - 1 < 1
                        or kn - slash - 1 > MAX_RKEY or not nsid_ok(ks, slash)
                        or not rkey_ok(ks + slash + 1, kn - slash - 1)):
                    raise CarFormatError(f"has key {key_text(ks, kn)}, "
                                         f"not COLLECTION/RKEY (an NSID of 1 to {MAX_NSID} "
                                         f"bytes, a record key of 1 to {MAX_RKEY} of "
                                         "A-Za-z0-9.-_:~)")
                if self.lastn >= 0:
                    c = memcmp(ks, self.last, kn if kn < self.lastn else self.lastn)
                    if c < 0 or (c == 0 and kn <= self.lastn):
                        raise CarFormatError(f"has key {key_text(ks, kn)} out of order "
                                             "(the MST is damaged)")
                cb_head(s, vp, n, &it)
                if it.major != 6:
                    raise CarFormatError("has a malformed entry (v)")
                end = cb_link(s, vp + it.head, n, &start)
                vn = end - start
                memcpy(value, s + start, vn)
                cb_head(s, tp, n, &it)
                has_sub = False
                if it.major == 6:
                    end = cb_link(s, tp + it.head, n, &start)
                    tn = end - start
                    memcpy(sub, s + start, tn)
                    has_sub = True
                elif not (it.major == 7 and it.arg == 22):
                    raise CarFormatError("has a malformed entry (t)")
            except CarFormatError as exc:
                where = (f"after key {self.last_text()}" if self.lastn >= 0
                         else "before the first key")
                raise CarFormatError(f"MST node ({where}) {exc}") from None
            f.pos = after if fast else cb_pass(s, i, n)
            f.left -= 1
            f.keyn = kn
            memcpy(self.last, ks, kn)
            self.lastn = kn
            self.records += 1
            if colln != slash or memcmp(coll, ks, slash) != 0:
                self.count(coll, colln, in_coll)
                memcpy(coll, ks, slash)
                colln = slash
                in_coll = 0
            in_coll += 1
            if has_sub:
                self.push(sub, tn)
            self.record(value, vn)
        self.count(coll, colln, in_coll)
        if self.fast:
            with nogil:
                sp_finish(&self.refs)
            sp_check(&self.refs, "writing the check's list of records")
            if not sp_join(&self.verified.good, &self.refs):
                return -1
        return self.records
