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
        sx_sync sync

    int sx_syncfs(int fd)
    void sx_media_run(sx_media_ctx* c, unsigned char* buf, size_t cap)
    int sx_sha256_select(int accelerated)

    ctypedef struct sx_sha256:
        pass
    void sx_sha256_init(sx_sha256* s)
    void sx_sha256_update(sx_sha256* s, const unsigned char* p, size_t n)
    void sx_sha256_final(sx_sha256* s, unsigned char* out)

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
    cdef list keep
    cdef bint ready

    def __cinit__(self):
        self.jobs = NULL
        self.pseudo = NULL
        self.ready = False

    def __init__(self, int media_fd, root_fds, pseudo_devs, bint clone=True):
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
        self.keep = []

    def __dealloc__(self):
        PyMem_RawFree(self.jobs)
        PyMem_RawFree(self.pseudo)
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
        cdef sx_media_job* grown
        if self.ctx.njobs == self.cap:
            grown = <sx_media_job*>PyMem_RawRealloc(
                self.jobs, sizeof(sx_media_job) * (self.cap * 2 + 16))
            if grown == NULL:
                raise MemoryError()
            self.jobs, self.cap = grown, self.cap * 2 + 16
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

    def sibling(self):
        """A new, empty batch for the same media/, roots and pseudo file systems."""
        roots = [self.ctx.root_fd[i] for i in range(self.ctx.nroots)]
        devs = [self.pseudo[i] for i in range(self.ctx.npseudo)]
        other = MediaBatch(self.ctx.media_fd, roots, devs, self.ctx.clone)
        other.learn(self)
        return other

    def learn(self, MediaBatch other not None):
        """Take what `other` found out: the devices FICLONE is unsupported on, and whether
        openat2 exists.  Not while either runs."""
        cdef int i, k
        cdef bint known
        for i in range(other.ctx.nnoclone):
            known = False
            for k in range(self.ctx.nnoclone):
                if self.ctx.noclone[k] == other.ctx.noclone[i]:
                    known = True
            if not known and self.ctx.nnoclone < 8:
                self.ctx.noclone[self.ctx.nnoclone] = other.ctx.noclone[i]
                self.ctx.nnoclone += 1
        if other.ctx.no_openat2:
            self.ctx.no_openat2 = 1

    def clear(self):
        """Forget the jobs (the FICLONE and openat2 findings stay)."""
        self.ctx.njobs = 0
        self.ctx.next = 0
        self.keep = []
