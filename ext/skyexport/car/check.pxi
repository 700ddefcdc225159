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
    cdef readonly dict collections
    cdef readonly dict blob_refs
    cdef unsigned char last[MAX_KEY]
    cdef Py_ssize_t lastn                 # -1: no key yet
    cdef unsigned char* buf               # the last block fetch() read: CID, then data
    cdef Py_ssize_t cap
    cdef int64_t fetched_at
    cdef object sha256
    cdef bytes root
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
            self.budget = 8 * self.tab.size + (8 << 20)
        else:
            self.ix = index
            self.budget = 8 * self.ix.size + (8 << 20)
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
        if self.tab is not None:
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
        partition too big to hold): check again without them for the error."""
        cdef CkFrame* f
        cdef const unsigned char* s
        cdef const unsigned char* ks
        cdef Py_ssize_t n, i, pp, kp, vp, tp, start, end, klen, kn, slash, j, vn, tn = 0
        cdef Item it
        cdef unsigned char value[256]
        cdef unsigned char sub[256]
        cdef unsigned char coll[MAX_NSID]
        cdef Py_ssize_t colln = -1
        cdef int64_t in_coll = 0
        cdef bint has_sub
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
            f.pos = cb_pass(s, i, n)
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
