# Repository CARs: CarWalker, the MST walk in the core (key syntax, work budget).

# --- the MST walk, in the core ---------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class _Frame:
    """One MST node on the walk's path: its data (None once the path's nodes hold more than
    PATH_BYTES: the nodes nearest the root are dropped first and read again from the CAR
    when the walk comes back to them), where that is in the CAR, where its next entry
    starts, how many entries are left, and the last key read in it (keys are
    prefix-compressed per node)."""
    cdef bytes data
    cdef int64_t off
    cdef Py_ssize_t n
    cdef Py_ssize_t pos
    cdef uint64_t left
    cdef bytes key


_POST_PREFIX = b"app.bsky.feed.post/"
_POST_END = b"app.bsky.feed.post0"    # "/" + 1: every post key is in [_POST_PREFIX, _POST_END)


cdef inline bint alnum(unsigned char c) noexcept nogil:
    return (b'a' <= c <= b'z') or (b'A' <= c <= b'Z') or (b'0' <= c <= b'9')


cdef bint nsid_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """atproto's NSID syntax: at least three segments separated by '.', each 1-63 bytes;
    the domain segments of letters, digits and '-' (not at either end; the first not
    starting with a digit), the name of letters and digits starting with a letter."""
    cdef Py_ssize_t i = 0, start = 0, segs = 0, last = 0
    cdef unsigned char c
    while True:
        start = i
        while i < n and s[i] != b'.':
            i += 1
        if i == start or i - start > 63:
            return False
        segs += 1
        last = start
        if i == n:
            break
        # a domain segment
        if s[start] == b'-' or s[i - 1] == b'-' or (segs == 1 and b'0' <= s[start] <= b'9'):
            return False
        for start in range(start, i):
            c = s[start]
            if not (alnum(c) or c == b'-'):
                return False
        i += 1
    if segs < 3 or b'0' <= s[last] <= b'9':
        return False
    for i in range(last, n):
        if not alnum(s[i]):
            return False
    return True


cdef bint rkey_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """atproto's record key syntax: 1-512 of A-Za-z0-9 . - _ : ~, not "." or ".."."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n < 1 or n > MAX_RKEY:
        return False
    if s[0] == b'.' and (n == 1 or (n == 2 and s[1] == b'.')):
        return False
    for i in range(n):
        c = s[i]
        if not (alnum(c) or c == b'.' or c == b'-' or c == b'_' or c == b':' or c == b'~'):
            return False
    return True


cdef int bytes_cmp(bytes a, bytes b) noexcept:
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b)
    cdef int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), na if na < nb else nb)
    if c != 0:
        return c
    return (na > nb) - (na < nb)


cdef enum:
    ROW_BYTES = 4 << 20       # a batch of rows ends once it holds this many bytes
    PATH_BYTES = 4 << 20      # the path's nodes held at most (an honest node: a few KB)


cdef enum:
    AHEAD_KEYS = 512         # keys a read-ahead batch holds at most
    AHEAD_BYTES = 1 << 19     # the blocks it holds; a bigger one is left to the walk
    AHEAD_RING = 4            # batches: the one being used, and up to three read ahead


cdef struct AheadKey:
    const unsigned char* cid  # the record's CID (a bytes object of the batch's `cids`)
    Py_ssize_t cn
    Py_ssize_t got            # its data length, read ahead; -1: the walk reads it itself
    Py_ssize_t at             # where its CID and data are in the arena
    int64_t where             # where its block starts in the CAR


cdef struct AheadBatch:
    Py_ssize_t n
    AheadKey* k               # AHEAD_KEYS
    unsigned char* arena      # AHEAD_BYTES


@cython.final
@cython.auto_pickle(False)
cdef class _AheadRing:
    """The walk's read-ahead (CarWalker.next_ahead): batches of the walk's next keys whose
    records are needed (posts, and the tap's collections), in key order.  A thread of its
    own reads each batch's blocks through the index's usual case (ix_fast, each checked
    against its CID) into the batch's arena, without the GIL, while the walking thread
    decodes and encodes the batch before.  A key whose block was not read ahead (got -1:
    an unusual index entry, a big block, a damaged one) is read by the walk itself, with
    its messages.

    Batch number q is in slot q % AHEAD_RING; the walking thread fills batches and counts
    them in `submitted`, the reading thread counts those it has read in `finished`; both
    change only under `sync`, and a batch is the reading thread's from its submission
    until it is counted finished."""
    cdef sx_sync sync
    cdef bint sync_ok
    cdef AheadBatch b[AHEAD_RING]
    cdef list keys            # per slot: its keys (bytes)
    cdef list cids            # per slot: their record CIDs (bytes; AheadKey.cid points in)
    cdef int64_t submitted
    cdef int64_t finished
    cdef bint stop
    cdef bint stopped
    cdef BlockIndex ix
    cdef int fd
    cdef IxEntry win[IX_WINDOW]

    def __cinit__(self):
        cdef int i
        for i in range(AHEAD_RING):
            self.b[i].k = NULL
            self.b[i].arena = NULL
        self.sync_ok = False

    def __init__(self, int fd, BlockIndex ix not None):
        cdef int i
        self.fd = fd
        self.ix = ix
        self.keys = [[] for _ in range(AHEAD_RING)]
        self.cids = [[] for _ in range(AHEAD_RING)]
        for i in range(AHEAD_RING):
            self.b[i].n = 0
            self.b[i].k = <AheadKey*>PyMem_RawMalloc(AHEAD_KEYS * sizeof(AheadKey))
            self.b[i].arena = <unsigned char*>PyMem_RawMalloc(AHEAD_BYTES)
            if self.b[i].k == NULL or self.b[i].arena == NULL:
                raise MemoryError()
        if sx_sync_init(&self.sync) != 0:
            raise MemoryError()
        self.sync_ok = True
        self.submitted = self.finished = 0
        self.stop = self.stopped = False

    def __dealloc__(self):
        cdef int i
        for i in range(AHEAD_RING):
            PyMem_RawFree(self.b[i].k)
            PyMem_RawFree(self.b[i].arena)
        if self.sync_ok:
            sx_sync_destroy(&self.sync)

    cdef void read(self, AheadBatch* b) noexcept nogil:
        cdef Py_ssize_t i, pos = 0
        cdef AheadKey* k
        for i in range(b.n):
            k = &b.k[i]
            k.got = ix_fast(self.ix.fd, self.ix.dir, self.ix.bits, self.fd, k.cid, k.cn,
                            self.win, b.arena + pos, AHEAD_BYTES - pos, &k.where)
            if k.got >= 0:
                k.at = pos
                pos += k.cn + k.got

    def serve(self):
        """The reading thread: every batch submitted, in order, until stopped."""
        with nogil:
            self.serve_c()

    cdef void serve_c(self) noexcept nogil:
        cdef int64_t q = 0
        while True:
            sx_lock(&self.sync)
            while q >= self.submitted and not self.stop:
                sx_wait_ms(&self.sync, WAIT_MS)
            if self.stop:
                self.stopped = True
                sx_broadcast(&self.sync)
                sx_unlock(&self.sync)
                return
            sx_unlock(&self.sync)
            self.read(&self.b[q % AHEAD_RING])
            q += 1
            sx_lock(&self.sync)
            self.finished = q
            sx_broadcast(&self.sync)
            sx_unlock(&self.sync)

    cdef int submit(self) except -1:
        sx_lock(&self.sync)
        self.submitted += 1
        sx_broadcast(&self.sync)
        sx_unlock(&self.sync)
        return 0

    cdef int wait(self, int64_t q) except -1:
        """Until batch q is read (signals are looked at meanwhile)."""
        cdef bint done = False
        while not done:
            with nogil:
                sx_lock(&self.sync)
                if self.finished <= q:
                    sx_wait_ms(&self.sync, WAIT_MS)
                done = self.finished > q
                sx_unlock(&self.sync)
            if not done:
                PyErr_CheckSignals()
        return 0

    cdef void request_stop(self) noexcept:
        with nogil:
            sx_lock(&self.sync)
            self.stop = True
            sx_broadcast(&self.sync)
            sx_unlock(&self.sync)

    cdef int end(self) except -1:
        """Stop the reading thread and wait until it has (it is between two batches
        within one batch's time)."""
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
cdef class CarWalker:
    """The MST of a CAR walked depth-first in key order, every block it uses read through
    the block index and checked against its CID.  `rows(n, archived_at)` returns up to n
    posts rows (17 columns, schema v2 order), [] at the end.  Every MST node is read and
    checked (its keys in order, each key within atproto's bounds), whatever is exported,
    so every walk accepts and refuses the same files; only the records of
    app.bsky.feed.post (and of the tap's collections, set_tap) are read.  Without
    `posts_only`, `collections` counts the keys by collection.  The walk reads at most
    `budget` bytes of blocks (8 times the file's size and 8 MiB, each read counting
    FETCH_COST more): an honest tree reads each block once, a tree that reuses a subtree
    or a record many times is refused.  Errors raise
    CarFormatError with the block's CID and key.  rows() and fill() read the records
    (posts, and the tap's collections) ahead, on a thread of their own (_AheadRing) that
    close() ends: close every walker that was read."""
    cdef int fd
    cdef BlockIndex ix
    cdef list stack
    cdef readonly dict collections
    cdef readonly int64_t blocks_read     # block reads (nodes and records)
    cdef readonly int64_t nodes_read
    cdef readonly int64_t nodes_reread    # nodes read again when the walk came back up
    cdef readonly int64_t budget          # bytes the walk may still read
    cdef Py_ssize_t held                  # the bytes of the path's nodes held in memory
    cdef readonly bint posts_only
    cdef str did
    cdef object sha256
    cdef bytes last_key
    cdef bytes value          # the record CID of the key next_key() returned
    cdef unsigned char* buf   # the last block fetch() read: its CID, then its data
    cdef Py_ssize_t cap
    cdef Py_ssize_t dn        # the data length of the record next_post() read
    cdef int64_t fetched_at   # where the block fetch() read starts in the CAR (its CID)
    cdef object tap           # a RecordTap (records.pxi) given every record, or None
    # The read-ahead (next_post): batches of keys whose records another thread reads.
    cdef _AheadRing ring      # None until next_post starts it
    cdef object ring_thread
    cdef int64_t used         # the batch being used (its number), -1 before the first
    cdef Py_ssize_t cur_i     # its next key
    cdef object walk_err      # the walk's error after the last filled batch's keys
    cdef bint walk_done       # the last batch is filled
    cdef int64_t walk_last    # its number
    cdef AheadKey* pf         # the entry of the key next_ahead() returned
    cdef object later         # entries(): the error met after the keys it returned

    def __cinit__(self):
        self.buf = NULL
        self.cap = 0
        self.pf = NULL

    def __init__(self, int fd, BlockIndex index not None, data_cid, str did,
                 bint posts_only=False):
        self.fd = fd
        self.ix = index
        import hashlib
        self.sha256 = hashlib.sha256
        self.did = did
        self.posts_only = posts_only
        self.collections = {}
        self.stack = []
        self.held = 0
        self.last_key = None
        self.tap = None
        self.budget = 8 * index.size + (8 << 20)
        self.push(bytes(data_cid), None)

    def __dealloc__(self):
        PyMem_RawFree(self.buf)
        if self.ring is not None:   # not closed: the thread ends on its own
            self.ring.request_stop()

    def close(self):
        """The path dropped and the read-ahead thread ended (waited for)."""
        self.stack = []
        self.held = 0
        self.pf = NULL
        if self.ring is not None:
            ring, self.ring = self.ring, None
            ring.end()
            self.ring_thread.join()
            self.ring_thread = None

    cdef void hold(self, Py_ssize_t n) noexcept:
        """Count n more bytes of the path held, then drop the nodes nearest the root (not
        the top one, the node being read) until the path holds at most PATH_BYTES."""
        cdef Py_ssize_t i = 0, top = len(self.stack) - 1
        cdef _Frame f
        self.held += n
        while self.held > PATH_BYTES and i < top:
            f = <_Frame>self.stack[i]
            if f.data is not None:
                f.data = None
                self.held -= f.n
            i += 1

    cdef void pop(self) noexcept:
        cdef _Frame f = <_Frame>self.stack.pop()
        if f.data is not None:
            self.held -= f.n

    def set_tap(self, tap):
        """Hand every record of the tap's collections to it as the walk passes it
        (next_post: the posts rows and the records files read the CAR once)."""
        if not isinstance(tap, RecordTap):
            raise TypeError("a RecordTap")
        self.tap = tap

    cdef str what(self, bytes key, bytes prev):
        """The block's name in errors: a record by its key, an MST node by the key before."""
        if key is not None:
            return f"record {key.decode('ascii')}"
        if prev is not None:
            return f"MST node after key {prev.decode('ascii')}"
        return "MST node before the first key"

    cdef Py_ssize_t fetch(self, const unsigned char* cid, Py_ssize_t cn, bytes key,
                          bytes prev) except -1:
        """Reads block `cid` (the record of `key`, or the MST node after key `prev`) into
        self.buf and checks it: returns the length of its data (at self.buf + cn)."""
        cdef Py_ssize_t r
        cdef uint64_t v, code = 0
        cdef Py_ssize_t i
        cdef AheadKey* k = self.pf
        self.pf = NULL
        if k != NULL and k.got >= 0 and k.cn == cn and memcmp(k.cid, cid, cn) == 0:
            r = k.got   # read ahead (next_ahead), checked as resolve() checks
            grow_buf(&self.buf, &self.cap, cn + r)
            memcpy(self.buf, self.ring.b[self.used % AHEAD_RING].arena + k.at, cn + r)
            self.fetched_at = k.where
        else:
            if not sha256_cid(cid, cn):
                if cn > 80 or cid_len(cid, cn) != cn:
                    raise CarFormatError(f"block ({self.what(key, prev)}) has an overlong "
                                         "or malformed CID")
                i = 0 if cid[0] == 0x12 else uvarint(cid, cn, &v)
                if i:
                    i += uvarint(cid + i, cn - i, &v)
                uvarint(cid + i, cn - i, &code)
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) "
                                     f"uses hash 0x{code:x}; only SHA-256 CIDs can be "
                                     "checked")
            r = self.ix.resolve(self.fd, cid, cn, &self.buf, &self.cap, self.sha256,
                                &self.fetched_at)
            if r == -2:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) "
                                     "does not match its CID (the file is damaged); "
                                     "download the repository again")
            if r < 0:
                raise CarFormatError(f"block {cid_str(cid[:cn])} ({self.what(key, prev)}) "
                                     "is missing (a partial CAR?); download the whole "
                                     "repository again")
        if self.budget < r + cn + FETCH_COST:   # the message only when it is needed
            self.spend(r + cn, cid_str(cid[:cn]), self.what(key, prev))
        else:
            self.budget -= r + cn + FETCH_COST
        self.blocks_read += 1
        return r

    cdef int spend(self, Py_ssize_t n, str name, str what) except -1:
        self.budget -= n + FETCH_COST
        if self.budget < 0:
            raise CarFormatError(f"block {name} ({what}): the MST has read "
                                 f"{self.blocks_read} blocks, more than 8 times the file's "
                                 "size in all: it reuses a subtree or a record many times (an "
                                 "honest repository reads each block about once); refused")
        return 0

    cdef int reload(self, _Frame f) except -1:
        """Read f's node again (the walk comes back to it from a subtree), checked as
        the first time (not hashed again: the walk read it whole moments ago)."""
        cdef bytes data = PyBytes_FromStringAndSize(NULL, f.n)
        self.spend(f.n, "", "an MST node read again")
        if (pread_full(self.fd, PyBytes_AS_STRING(data), f.n, f.off) != f.n
                or cb_skip(<const unsigned char*>PyBytes_AS_STRING(data), 0, f.n, 0) != f.n):
            raise CarFormatError("the CAR changed while it was read (an MST node differs)")
        self.nodes_reread += 1
        f.data = data
        self.hold(f.n)
        return 0

    cdef int push(self, bytes cid, bytes prev) except -1:
        """Put the node `cid` on the path, and its leftmost descendants after it."""
        cdef Item it
        cdef Py_ssize_t n, e, left, start, end, cn
        cdef const unsigned char* s
        cdef _Frame f
        while True:
            cn = PyBytes_GET_SIZE(cid)
            n = self.fetch(<const unsigned char*>PyBytes_AS_STRING(cid), cn, None, prev)
            self.nodes_read += 1
            data = PyBytes_FromStringAndSize(<const char*>self.buf + cn, n)
            s = <const unsigned char*>PyBytes_AS_STRING(data)
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
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) "
                                     f"{exc}") from None
            if len(self.stack) > 128:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) is "
                                     "more than 128 levels deep")
            f = _Frame.__new__(_Frame)
            f.data = data
            f.off = self.fetched_at + cn
            f.n = n
            f.pos = e + it.head
            f.left = it.arg
            f.key = b""
            cb_head(s, left, n, &it)
            if f.left == 0 and it.major == 7 and self.stack:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) is an "
                                     "empty MST node below the root (the MST is damaged)")
            self.stack.append(f)
            self.hold(n)
            if it.major == 7 and it.arg == 22:
                return 0
            if it.major != 6:
                raise CarFormatError(f"block {cid_str(cid)} ({self.what(None, prev)}) has "
                                     "an `l` that is not a link")
            start = 0
            end = cb_link(s, left + it.head, n, &start)
            cid = PyBytes_FromStringAndSize(<const char*>s + start, end - start)

    cdef bytes next_key(self):
        """The next key of the walk (its record CID in self.value), None at the end."""
        cdef _Frame f
        cdef const unsigned char* s
        cdef const unsigned char* ks
        cdef Py_ssize_t n, i, pp, kp, vp, tp, start, end, klen, kn, slash, j
        cdef Item it
        cdef bytes key, sub
        while self.stack:
            f = <_Frame>self.stack[len(self.stack) - 1]
            if f.left == 0:
                self.pop()
                continue
            if f.data is None:
                self.reload(f)
            s = <const unsigned char*>PyBytes_AS_STRING(f.data)
            n = PyBytes_GET_SIZE(f.data)
            i = f.pos
            cb_head(s, i, n, &it)
            try:
                if it.major != 5:
                    raise CarFormatError("has an entry that is not a map")
                pp = cb_find(s, i, n, "p")
                kp = cb_find(s, i, n, "k")
                vp = cb_find(s, i, n, "v")
                tp = cb_find(s, i, n, "t")
                if pp < 0 or kp < 0 or vp < 0 or tp < 0 or it.arg != 4:
                    raise CarFormatError("has a malformed entry (its keys are not p, k, t, v)")
                cb_head(s, pp, n, &it)
                if it.major != 0 or it.arg > <uint64_t>PyBytes_GET_SIZE(f.key):
                    raise CarFormatError("has a malformed entry (p)")
                klen = <Py_ssize_t>it.arg
                cb_head(s, kp, n, &it)
                if it.major != 2:
                    raise CarFormatError("has a malformed entry (k)")
                if it.arg > <uint64_t>(MAX_KEY - klen):
                    raise CarFormatError(f"has a key of {klen + <Py_ssize_t>it.arg} bytes; "
                                         f"atproto keys are at most {MAX_KEY} (a collection "
                                         f"of {MAX_NSID}, '/', a record key of {MAX_RKEY})")
                key = f.key[:klen] + PyBytes_FromStringAndSize(<const char*>s + kp + it.head,
                                                               <Py_ssize_t>it.arg)
                ks = <const unsigned char*>PyBytes_AS_STRING(key)
                kn = PyBytes_GET_SIZE(key)
                slash = -1
                for j in range(kn):
                    if not 0x21 <= ks[j] <= 0x7e:
                        raise CarFormatError("has a key that is not printable ASCII")
                    if ks[j] == b'/' and slash < 0:
                        slash = j
                if (slash < 1 or slash > MAX_NSID or kn - slash - 1 < 1
                        or kn - slash - 1 > MAX_RKEY or not nsid_ok(ks, slash)
                        or not rkey_ok(ks + slash + 1, kn - slash - 1)):
                    raise CarFormatError(f"has key {key.decode('ascii')}, not COLLECTION/RKEY "
                                         f"(an NSID of 1 to {MAX_NSID} bytes, a record "
                                         f"key of 1 to {MAX_RKEY} of A-Za-z0-9.-_:~)")
                if self.last_key is not None and bytes_cmp(key, self.last_key) <= 0:
                    raise CarFormatError(f"has key {key.decode('ascii')} out of order (the "
                                         "MST is damaged)")
                cb_head(s, vp, n, &it)
                if it.major != 6:
                    raise CarFormatError("has a malformed entry (v)")
                end = cb_link(s, vp + it.head, n, &start)
                self.value = PyBytes_FromStringAndSize(<const char*>s + start, end - start)
                cb_head(s, tp, n, &it)
                sub = None
                if it.major == 6:
                    end = cb_link(s, tp + it.head, n, &start)
                    sub = PyBytes_FromStringAndSize(<const char*>s + start, end - start)
                elif not (it.major == 7 and it.arg == 22):
                    raise CarFormatError("has a malformed entry (t)")
            except CarFormatError as exc:
                prev = self.last_key
                where = (f"after key {prev.decode('ascii')}" if prev is not None
                         else "before the first key")
                raise CarFormatError(f"MST node ({where}) {exc}") from None
            f.pos = cb_pass(s, i, n)
            f.left -= 1
            f.key = key
            self.last_key = key
            if not self.posts_only:
                coll = key[:slash]
                self.collections[coll] = self.collections.get(coll, 0) + 1
            if sub is not None:
                self.push(sub, key)
            return key
        return None

    cdef bint needs(self, bytes key):
        """Is key's record read: a post, or a record of the tap's collections?"""
        cdef bytes prefix = _POST_PREFIX
        cdef Py_ssize_t pn = PyBytes_GET_SIZE(prefix)
        if (PyBytes_GET_SIZE(key) > pn
                and memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), pn) == 0):
            return True
        return self.tap is not None and tap_wants(self, key)

    cdef int fill_ahead(self) except -1:
        """The walk's next keys whose records are needed, as the next batch (up to
        AHEAD_KEYS), given to the read-ahead thread.  An error of the walk ends the
        batch and is raised after its keys: the errors come in the walk's order, as
        without the read-ahead."""
        cdef _AheadRing r = self.ring
        cdef int64_t q = r.submitted
        cdef int slot = q % AHEAD_RING
        cdef AheadBatch* b = &r.b[slot]
        cdef AheadKey* k
        cdef list keys = [], cids = []
        cdef bytes key, cid
        r.keys[slot] = keys
        r.cids[slot] = cids
        b.n = 0
        try:
            while b.n < AHEAD_KEYS:
                key = self.next_key()
                if key is None:
                    self.walk_done = True
                    break
                if self.needs(key):
                    cid = self.value
                    keys.append(key)
                    cids.append(cid)
                    k = &b.k[b.n]
                    k.cid = <const unsigned char*>PyBytes_AS_STRING(cid)
                    k.cn = PyBytes_GET_SIZE(cid)
                    k.got = -1
                    b.n += 1
        except Exception as exc:
            self.walk_err = exc
            self.walk_done = True
        if self.walk_done:
            self.walk_last = q
        r.submit()
        return 0

    cdef int advance(self) except -1:
        """The next batch to use (self.used): the read-ahead thread (started the first
        time) is given batches until three are ahead or the walk has ended, then the
        next one is waited for."""
        cdef _AheadRing ring
        if self.ring is None:
            ring = _AheadRing(self.fd, self.ix)
            thread = threading.Thread(target=ring.serve, name="skyexport-car-ahead",
                                      daemon=True)
            thread.start()
            self.ring, self.ring_thread = ring, thread
            self.used = -1
            self.walk_done = False
            self.walk_err = None
        self.pf = NULL
        self.used += 1
        while not self.walk_done and self.ring.submitted - self.used < AHEAD_RING:
            self.fill_ahead()
        self.ring.wait(self.used)
        self.cur_i = 0
        return 0

    cdef bytes next_ahead(self):
        """next_key() through the read-ahead: the next key whose record is needed (its
        CID in self.value, its block read ahead in self.pf for fetch()), None at the end."""
        cdef _AheadRing r
        cdef AheadBatch* b
        cdef Py_ssize_t i
        cdef int slot
        self.pf = NULL
        while True:
            r = self.ring
            if r is not None and self.used >= 0:
                slot = self.used % AHEAD_RING
                b = &r.b[slot]
                if self.cur_i < b.n:
                    i = self.cur_i
                    self.cur_i += 1
                    self.value = <bytes>(<list>r.cids[slot])[i]
                    self.pf = &b.k[i]
                    return <bytes>(<list>r.keys[slot])[i]
                if self.walk_done and self.used == self.walk_last:
                    if self.walk_err is not None:
                        err, self.walk_err = self.walk_err, None
                        raise err
                    return None
            self.advance()

    cdef bytes next_post(self):
        """The next post's key, its record read and checked (data at self.buf + len(cid),
        self.dn bytes; the CID in self.value); None at the end."""
        cdef bytes key
        cdef Py_ssize_t cn
        cdef bytes prefix = _POST_PREFIX
        cdef Py_ssize_t pn = PyBytes_GET_SIZE(prefix)
        while True:
            key = self.next_ahead()
            if key is None:
                return None
            if (PyBytes_GET_SIZE(key) <= pn
                    or memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), pn) != 0):
                if self.tap is not None:
                    tap_key(self, key, False)
                continue
            cn = PyBytes_GET_SIZE(self.value)
            self.dn = self.fetch(<const unsigned char*>PyBytes_AS_STRING(self.value), cn,
                                 key, None)
            if self.dn > MAX_RECORD:
                raise CarFormatError(f"block {cid_str(self.value)} ({self.what(key, None)}) "
                                     f"is {self.dn} bytes; atproto records are at most "
                                     f"{MAX_RECORD >> 20} MiB")
            if self.tap is not None:
                tap_key(self, key, True)
            return key

    def entries(self, Py_ssize_t limit):
        """Up to `limit` (key, record CID) of the walk, in key order; [] at the end.  (No
        record is read.)  An error of the walk is raised after the keys before it: the
        batch ends there, and the next call raises it -- a caller reading each record
        meets a problem of an earlier record first."""
        cdef list out = []
        cdef bytes key
        if self.later is not None:
            err, self.later = self.later, None
            raise err
        while len(out) < limit:
            try:
                key = self.next_key()
            except (ValueError, OSError) as exc:
                if not out:
                    raise
                self.later = exc
                break
            if key is None:
                break
            out.append((key.decode("ascii"), CID(self.value)))
        return out

    def rows(self, Py_ssize_t limit, str archived_at, Py_ssize_t max_bytes=ROW_BYTES):
        """Up to `limit` posts rows, fewer once they hold `max_bytes` of text; [] at the
        end."""
        cdef list out = []
        cdef bytes key, value
        cdef Py_ssize_t held = 0
        did = self.did
        while len(out) < limit and held < max_bytes:
            key = self.next_post()
            if key is None:
                break
            value = self.value
            try:
                (text, created, media, reply, parent, etype, edata,
                 labels) = post_fields_c(self.buf + PyBytes_GET_SIZE(value), self.dn)
            except CarFormatError as exc:
                raise CarFormatError(f"block {cid_str(value)} ({self.what(key, None)}) "
                                     f"{exc}") from None
            skey = key.decode("ascii")
            held += (len(text) + len(created) + len(parent) + len(etype) + len(did)
                     + 2 * len(skey) + (len(edata) if edata is not None else 0)
                     + (len(labels) if labels is not None else 0) + 200)
            out.append((f"at://{did}/{skey}", cid_str(value), did, text, created, created,
                        int(media), 0, 0, 0, 0, int(reply), parent, etype, edata, labels,
                        archived_at))
        return out

    def fill(self, RowBatch batch not None, Py_ssize_t limit,
             Py_ssize_t max_bytes=ROW_BYTES):
        """Decode up to `limit` posts rows (those rows() returns) into `batch`, replacing
        what it held, fewer once they hold `max_bytes`; returns how many: 0 at the end."""
        cdef bytes key, value
        cdef PostFields f
        cdef OutBuf embed, labels
        cdef Py_ssize_t cn, r
        cdef OutBuf* a = &batch.arena
        cdef int64_t* x
        if limit > batch.cap:
            batch.grow(limit)
        a.len = 0
        batch.n = 0
        ob_init(&embed, 256)
        ob_init(&labels, 64)
        try:
            while batch.n < limit and a.len < max_bytes:
                key = self.next_post()
                if key is None:
                    break
                value = self.value
                cn = PyBytes_GET_SIZE(value)
                embed.len = labels.len = 0
                try:
                    post_fields_into(self.buf + cn, self.dn, &f, &embed, &labels)
                except CarFormatError as exc:
                    raise CarFormatError(f"block {cid_str(value)} ({self.what(key, None)}) "
                                         f"{exc}") from None
                x = batch.fields + batch.n * RB_FIELDS
                x[0] = a.len                                   # uri
                ob_write(a, "at://", 5)
                ob_write(a, PyBytes_AS_STRING(batch.did), PyBytes_GET_SIZE(batch.did))
                ob_byte(a, b"/")
                ob_write(a, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
                x[1] = a.len                                   # cid
                ob_cid(a, <const unsigned char*>PyBytes_AS_STRING(value), cn)
                x[2] = a.len                                   # text
                ob_put(a, f.text, f.text_n)
                x[3] = a.len                                   # created_at
                ob_put(a, f.created, f.created_n)
                x[4] = a.len                                   # reply_parent
                ob_put(a, f.parent, f.parent_n)
                x[5] = a.len                                   # embed_type
                ob_put(a, f.etype, f.etype_n)
                x[6] = a.len                                   # embed_data
                if f.has_embed:
                    ob_write(a, embed.data, embed.len)
                x[7] = a.len                                   # labels
                if f.has_labels:
                    ob_write(a, labels.data, labels.len)
                x[8] = a.len                                   # the end
                x[9] = (f.has_media | (f.is_reply << 1) | (f.has_embed << 2)
                        | (f.has_labels << 3))
                batch.n += 1
            return batch.n
        finally:
            ob_free(&embed)
            ob_free(&labels)
