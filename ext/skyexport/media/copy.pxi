# The media copy loop (media_io.h): src/skyexport/exporter/media.py hands it a batch of files, it
# finds, checks, copies and hashes them without the GIL, on as many threads as call run().

from posix.types cimport dev_t

cdef extern from "media_io.h" nogil:
    enum:
        SX_PLACED
        SX_SLOW
        SX_SHRANK
        SX_FAILED
        SX_MAX_ROOTS

    ctypedef struct sx_media_job:
        const char* path[2]
        int npath
        const char* name
        int status
        int err
        int which
        int64_t size
        int64_t done
        unsigned char digest[32]

    ctypedef struct sx_media_ctx:
        int media_fd
        int root_fd[8]
        int nroots
        const dev_t* pseudo
        int npseudo
        int clone
        dev_t noclone[8]
        int nnoclone
        int no_openat2
        sx_media_job* jobs
        long njobs
        long next
        long done
        long opened
        long copying
        int split
        int opening
        sx_sync sync

    int sx_syncfs(int fd)
    void sx_media_run(sx_media_ctx* c, unsigned char* buf, size_t cap)
    void sx_media_take(sx_media_ctx* c, unsigned char* buf, size_t cap, int serve)
    void sx_media_publish(sx_media_ctx* c)
    void sx_media_wait(sx_media_ctx* c, unsigned char* buf, size_t cap, int help)
    void sx_media_stop(sx_media_ctx* c)

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

cdef enum:
    MEDIA_CHUNK = 1 << 18   # bytes per read in the copy loop (one buffer per thread)

_SHA_NI = sx_sha256_select(1)


def sha256_select(bint accelerated):
    """Test hook: hash with the SHA extensions where the CPU has them (`accelerated`), or
    with portable C; returns whether the extensions are in use."""
    return bool(sx_sha256_select(accelerated))


def sha256_digest(bytes data):
    """Test hook: SHA-256 of `data` by the copy loop's own implementation."""
    cdef sx_sha256 h
    cdef unsigned char out[32]
    sx_sha256_init(&h)
    sx_sha256_update(&h, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    sx_sha256_final(&h, out)
    return PyBytes_FromStringAndSize(<char*>out, 32)


def sha256_pair(bytes head, bytes stream, list messages):
    """Test hook: the scan's two-stream hashing (sx_sha256_pair, car/scan.pxi flush): a
    running hash fed `head` by itself, then `stream` beside `messages`; returns (the
    running hash's digest, [each message's digest])."""
    cdef sx_sha256 a
    cdef unsigned char out[32]
    cdef Py_ssize_t i, n = len(messages)
    cdef const unsigned char** msgs = <const unsigned char**>PyMem_RawMalloc(
        (n + 1) * sizeof(const unsigned char*))
    cdef size_t* lens = <size_t*>PyMem_RawMalloc((n + 1) * sizeof(size_t))
    cdef unsigned char* digests = <unsigned char*>PyMem_RawMalloc(32 * (n + 1))
    cdef list keep = [bytes(m) for m in messages]
    try:
        if msgs == NULL or lens == NULL or digests == NULL:
            raise MemoryError()
        for i in range(n):
            msgs[i] = <const unsigned char*>PyBytes_AS_STRING(keep[i])
            lens[i] = <size_t>PyBytes_GET_SIZE(keep[i])
        sx_sha256_init(&a)
        sx_sha256_update(&a, <const unsigned char*>PyBytes_AS_STRING(head),
                         PyBytes_GET_SIZE(head))
        sx_sha256_pair(&a, <const unsigned char*>PyBytes_AS_STRING(stream),
                       PyBytes_GET_SIZE(stream), msgs, lens, n, digests)
        sx_sha256_final(&a, out)
        return (PyBytes_FromStringAndSize(<char*>out, 32),
                [PyBytes_FromStringAndSize(<char*>digests + 32 * i, 32) for i in range(n)])
    finally:
        PyMem_RawFree(<void*>msgs)
        PyMem_RawFree(lens)
        PyMem_RawFree(digests)


def syncfs(int fd):
    """syncfs(2): every file's data and metadata on the file system holding `fd` to stable
    storage.  NotImplementedError where the call does not exist (not Linux)."""
    cdef int rc, err = 0
    with nogil:
        rc = sx_syncfs(fd)
        if rc != 0:
            err = errno
    if rc == 0:
        return
    if err == ENOSYS:
        raise NotImplementedError("syncfs is not available here")
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef inline bint _media_hex_tail(const unsigned char* s, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """s[:n] ends with "-" and `k` lowercase hex digits."""
    cdef Py_ssize_t i
    cdef unsigned char ch
    if n < k + 1 or s[n - k - 1] != 45:   # "-"
        return False
    for i in range(n - k, n):
        ch = s[i]
        if not (48 <= ch <= 57 or 97 <= ch <= 102):
            return False
    return True


cdef bint _media_alt_like(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """media.py's _ALT_NAME: a name its checked path could give as an alternative
    (name-<12 or 64 hex digits>, then nothing or one last ".ext")."""
    cdef Py_ssize_t p = n - 1
    if _media_hex_tail(s, n, 12) or _media_hex_tail(s, n, 64):
        return True
    while p >= 0 and s[p] != 46:        # the last "."
        p -= 1
    return p >= 0 and (_media_hex_tail(s, p, 12) or _media_hex_tail(s, p, 64))


cdef tuple _media_classify(bytes raw):
    """(job or None, name) of a file_path, as media.py's _fast_job and _base_name give them:
    the name in media/ is what follows the last "/" or "\\" (b"" for ".", ".." or one with
    a control byte); the job, (path, its spelling with "/" for "\\" or None, name), is None
    for the checked path: empty, absolute, a NUL byte, no usable name, or a name that looks
    like another row's hash-suffixed alternative."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i, start = 0
    cdef bint back = False, nul = False, usable = True
    cdef unsigned char ch
    for i in range(n):
        ch = s[i]
        if ch == 47 or ch == 92:            # "/" or "\\"
            start = i + 1
            if ch == 92:
                back = True
        elif ch == 0:
            nul = True
    if n - start == 1 and s[start] == 46 or n - start == 2 and s[start] == 46 \
            and s[start + 1] == 46:
        usable = False
    for i in range(start, n):
        if s[i] < 32 or s[i] == 127:
            usable = False
            break
    if not usable or start == n:
        return None, b""
    name = raw if start == 0 else PyBytes_FromStringAndSize(<const char*>s + start, n - start)
    if nul or s[0] == 47 or s[0] == 92 or _media_alt_like(s + start, n - start):
        return None, name
    return (raw, raw.replace(b"\\", b"/") if back else None, name), name


def media_classify(path):
    """Test hook: the core's (job or None, name) of a media row's file_path (bytes)."""
    return _media_classify(path)


@cython.final
cdef class MediaBatch:
    """A batch of media files to place into the directory `media_fd`: `add()` each, `run()`
    (from one or more threads at once), then `result(i)` for each.  Sources are looked
    for beneath the directories `root_fds` (-1: a root that does not exist), in order,
    with no symlink or ".." out of them; a source on one of the devices `pseudo_devs`,
    or not a regular file, or anything unusual is left alone (SX_SLOW)."""

    cdef sx_media_ctx ctx
    cdef sx_media_job* jobs
    cdef Py_ssize_t cap
    cdef dev_t* pseudo
    cdef unsigned char* buf      # the waiting thread's, when it helps
    cdef list keep
    cdef readonly list rows      # feed(): (post_uri, file_path, job index or -1, name)
    cdef set names               # the names in `rows`
    cdef bint ready

    def __cinit__(self):
        self.jobs = NULL
        self.pseudo = NULL
        self.buf = NULL
        self.ready = False

    def __init__(self, int media_fd, root_fds, pseudo_devs, bint clone=True,
                 bint split=False):
        cdef Py_ssize_t i
        roots = list(root_fds)
        devs = list(pseudo_devs)
        if len(roots) > SX_MAX_ROOTS:
            raise ValueError(f"at most {SX_MAX_ROOTS} lookup roots")
        memset(&self.ctx, 0, sizeof(sx_media_ctx))
        if sx_sync_init(&self.ctx.sync) != 0:
            raise MemoryError()
        self.ready = True
        self.ctx.media_fd = media_fd
        self.ctx.nroots = <int>len(roots)
        for i in range(len(roots)):
            self.ctx.root_fd[i] = roots[i]
        self.pseudo = <dev_t*>PyMem_RawMalloc(sizeof(dev_t) * (len(devs) + 1))
        if self.pseudo == NULL:
            raise MemoryError()
        for i in range(len(devs)):
            self.pseudo[i] = devs[i]
        self.ctx.pseudo = self.pseudo
        self.ctx.npseudo = <int>len(devs)
        self.ctx.clone = clone
        self.ctx.split = split
        self.keep = []
        self.rows = []
        self.names = set()

    def __dealloc__(self):
        PyMem_RawFree(self.jobs)
        PyMem_RawFree(self.pseudo)
        PyMem_RawFree(self.buf)
        if self.ready:
            sx_sync_destroy(&self.ctx.sync)

    def __len__(self):
        return self.ctx.njobs

    @property
    def openat2(self):
        """False once openat2 turned out to be unavailable (every job is then SX_SLOW)."""
        return not self.ctx.no_openat2

    @property
    def clone_unsupported(self):
        """How many source devices FICLONE failed on as unsupported (never tried again)."""
        return self.ctx.nnoclone

    def add(self, bytes path, bytes alt, bytes name):
        """Queue a file: `path` (and `alt`, another spelling, or None) relative to the
        roots, placed as media/`name`.  No NUL byte in any of them."""
        cdef sx_media_job* j
        if self.ctx.njobs == self.cap:
            self._reserve(self.cap * 2 + 16)
        j = &self.jobs[self.ctx.njobs]
        memset(j, 0, sizeof(sx_media_job))
        j.path[0] = PyBytes_AS_STRING(path)
        j.npath = 1
        if alt is not None:
            j.path[1] = PyBytes_AS_STRING(alt)
            j.npath = 2
        j.name = PyBytes_AS_STRING(name)
        self.keep.append((path, alt, name))
        self.ctx.njobs += 1
        return self.ctx.njobs - 1

    cdef _reserve(self, Py_ssize_t cap):
        """Room for `cap` jobs.  Only while no job is published: the jobs do not move
        while a thread may be working on one."""
        cdef sx_media_job* grown
        if cap <= self.cap:
            return
        if self.ctx.njobs:
            raise RuntimeError("MediaBatch: cannot grow while jobs are published")
        grown = <sx_media_job*>PyMem_RawRealloc(self.jobs, sizeof(sx_media_job) * cap)
        if grown == NULL:
            raise MemoryError()
        sx_lock(&self.ctx.sync)
        self.jobs, self.cap = grown, cap
        self.ctx.jobs = grown
        sx_unlock(&self.ctx.sync)

    def feed(self, rows, tick, Py_ssize_t limit, classify, held=None):
        """Take media rows `(post_uri, hash, file_path)` - first `held`, then from the
        iterator `rows`, calling `tick()` for each row taken from it - into `self.rows`
        until it holds `limit` rows or the next row asks for a name already in it.  Each
        row the loop can do is published at once to the threads serving (serve()).
        Returns the row held back for the next batch, or None once `rows` is exhausted.
        `classify(file_path)` gives (job or None, name) for a file_path that is not bytes."""
        cdef sx_media_job* j
        cdef tuple got, job
        cdef Py_ssize_t index
        cdef list out = self.rows
        cdef set names = self.names
        if limit > self.cap:
            self._reserve(limit)
        self.ctx.jobs = self.jobs
        while True:
            row = held
            if row is None:
                row = next(rows, None)
                if row is None:
                    return None
                tick()
            held = None
            post_uri, _, raw = row
            got = _media_classify(raw) if type(raw) is bytes else tuple(classify(raw))
            name = got[1]
            if len(out) >= limit or (name and name in names):
                return row
            names.add(name)
            index = -1
            if got[0] is not None and self.ctx.njobs < self.cap:
                job = got[0]
                index = self.ctx.njobs
                j = &self.jobs[index]
                memset(j, 0, sizeof(sx_media_job))
                j.path[0] = PyBytes_AS_STRING(job[0])
                j.npath = 1
                if job[1] is not None:
                    j.path[1] = PyBytes_AS_STRING(job[1])
                    j.npath = 2
                    self.keep.append(job[1])
                j.name = PyBytes_AS_STRING(job[2])
                self.keep.append(job)
                sx_media_publish(&self.ctx)
            out.append((post_uri, raw, index, name))

    def serve(self):
        """Do the published jobs as they come, without the GIL, until stop()."""
        cdef unsigned char* buf = <unsigned char*>PyMem_RawMalloc(MEDIA_CHUNK)
        if buf == NULL:
            raise MemoryError()
        with nogil:
            sx_media_take(&self.ctx, buf, MEDIA_CHUNK, 1)
        PyMem_RawFree(buf)

    def stop(self):
        """The threads in serve() return once their job is done."""
        sx_media_stop(&self.ctx)

    def wait(self, bint help=True):
        """Until every published job is done (with `help`, doing the ones not yet taken on
        this thread too, so that it ends even with no thread serving)."""
        if help and self.buf == NULL:
            self.buf = <unsigned char*>PyMem_RawMalloc(MEDIA_CHUNK)
            if self.buf == NULL:
                raise MemoryError()
        with nogil:
            sx_media_wait(&self.ctx, self.buf, MEDIA_CHUNK, help)

    def settle(self, bytearray sums, Py_ssize_t start):
        """After wait(): append to `sums` the media.sha256 line (`<sha256>  media/<name>`)
        of each row of `self.rows` from `start` on that the loop placed, in order, up to
        the first row it did not place.  (That row's position or -1, lines appended.)"""
        cdef Py_ssize_t i, k, at, placed = 0, index, n = len(self.rows)
        cdef sx_media_job* j
        cdef tuple r
        cdef bytes name
        cdef char* o
        cdef const char* hexd = b"0123456789abcdef"
        if self.ctx.done < self.ctx.njobs:
            raise RuntimeError("MediaBatch.settle: jobs are still running")
        for i in range(start, n):
            r = <tuple>self.rows[i]
            index = r[2]
            if index < 0:
                return i, placed
            j = &self.jobs[index]
            if j.status != SX_PLACED:
                return i, placed
            name = r[3]
            at = PyByteArray_GET_SIZE(sums)
            PyByteArray_Resize(sums, at + 64 + 8 + PyBytes_GET_SIZE(name) + 1)
            o = PyByteArray_AS_STRING(sums) + at
            for k in range(32):
                o[2 * k] = hexd[j.digest[k] >> 4]
                o[2 * k + 1] = hexd[j.digest[k] & 15]
            memcpy(o + 64, b"  media/", 8)
            memcpy(o + 72, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            o[72 + PyBytes_GET_SIZE(name)] = 10
            placed += 1
        return -1, placed

    def run(self):
        """Do the queued jobs not yet taken, without the GIL, until none is left."""
        cdef unsigned char* buf = <unsigned char*>PyMem_RawMalloc(MEDIA_CHUNK)
        if buf == NULL:
            raise MemoryError()
        self.ctx.jobs = self.jobs
        with nogil:
            sx_media_run(&self.ctx, buf, MEDIA_CHUNK)
        PyMem_RawFree(buf)

    def result(self, Py_ssize_t i):
        """(status, errno, which, size, done, hex digest or None) of job `i`: status is
        0 placed, 1 left alone, 2 shrank, 3 failed; `which` = spelling * roots + root."""
        if i < 0 or i >= self.ctx.njobs:
            raise IndexError(i)
        cdef sx_media_job* j = &self.jobs[i]
        digest = None
        if j.status == SX_PLACED:
            digest = PyBytes_FromStringAndSize(<char*>j.digest, 32).hex()
        return (j.status, j.err, j.which, j.size, j.done, digest)

    def clear(self):
        """Forget the jobs and rows, once none is running (the FICLONE and openat2
        findings stay)."""
        sx_lock(&self.ctx.sync)
        self.ctx.njobs = 0
        self.ctx.next = 0
        self.ctx.done = 0
        self.ctx.opened = 0
        self.ctx.copying = 0
        sx_unlock(&self.ctx.sync)
        self.keep = []
        self.rows = []
        self.names = set()
