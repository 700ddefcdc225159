# The row pipe: one thread steps the SELECT and copies each row into an arena; the writer
# encodes arenas on another.  SQLite's work (page reads, the ORDER BY's sorter) and the
# encoding then run on two cores at once, neither holding the GIL.
#
# Invariants: arenas form a ring of PIPE_ARENAS; the producer owns arena `head` while
# `filled < PIPE_ARENAS`, the consumer owns arena `tail` while `filled > 0`; both indexes,
# `filled` and `held` change only under `sync`.  Memory is bounded: the producer starts a
# new arena only while the filled ones hold less than PIPE_BYTES, and an arena takes at
# most ARENA_ROWS rows and ARENA_BYTES bytes plus one row (a giant row grows its arena,
# which shrinks back once consumed) - so at most one giant row waits at a time.
#
# A value of LEND_BYTES or more is not copied at all: the producer points the cell at
# SQLite's own memory (K_LENT), publishes the arena with that row as its last one, and
# steps again only once the consumer has handed every arena back, i.e. has finished with
# the row.  A 200 MB post then costs SQLite's copy of it and nothing more.

cdef extern from "pipe_sync.h" nogil:
    ctypedef struct sx_sync:
        pass
    int sx_sync_init(sx_sync* s)
    void sx_sync_destroy(sx_sync* s)
    void sx_lock(sx_sync* s)
    void sx_unlock(sx_sync* s)
    void sx_broadcast(sx_sync* s)
    void sx_wait_ms(sx_sync* s, long ms)

cdef enum:
    PIPE_ARENAS = 4
    ARENA_ROWS = 256
    ARENA_BYTES = 1 << 19
    PIPE_BYTES = 1 << 20    # row bytes the filled arenas may hold before the producer waits
    WAIT_MS = 50            # how often a waiting thread looks at signals / cancellation
    LEND_BYTES = 1 << 21    # values this big are lent from SQLite's memory, not copied


cdef struct Arena:
    Cell* cells             # ARENA_ROWS * N_COLUMNS
    char* data              # the bytes of the K_BYTES cells (Cell.p point here when full)
    Py_ssize_t data_len
    Py_ssize_t data_cap
    Py_ssize_t nrows


cdef int arena_init(Arena* a) except -1 nogil:
    a.cells = <Cell*>PyMem_RawMalloc(ARENA_ROWS * N_COLUMNS * sizeof(Cell))
    a.data = <char*>PyMem_RawMalloc(ARENA_BYTES)
    a.data_cap = ARENA_BYTES
    a.data_len = 0
    a.nrows = 0
    if a.cells == NULL or a.data == NULL:
        with gil:
            raise MemoryError()
    return 0


cdef void arena_free(Arena* a) noexcept nogil:
    PyMem_RawFree(a.cells)
    PyMem_RawFree(a.data)
    a.cells = NULL
    a.data = NULL


cdef int arena_add_row(Arena* a, sqlite3_stmt* st) except -1 nogil:
    """Copy the statement's current row into the arena (values as offsets into `data`
    until arena_seal turns them into pointers: `data` may move while it grows).  Returns 1
    when a giant value was lent instead (valid only until the statement steps again)."""
    cdef Cell* c = a.cells + a.nrows * N_COLUMNS
    cdef int col
    cdef int lent = 0
    cdef Py_ssize_t n, cap
    cdef char* grown
    for col in range(N_COLUMNS):
        read_cell(st, col, &c[col])
        if c[col].kind != K_BYTES:
            continue
        n = c[col].n
        if n >= LEND_BYTES:
            c[col].kind = K_LENT         # left in SQLite's memory (p, n as read)
            lent = 1
            continue
        if a.data_len + n > a.data_cap:
            cap = a.data_cap * 2
            if cap < a.data_len + n:
                cap = a.data_len + n
            grown = <char*>PyMem_RawRealloc(a.data, cap)
            if grown == NULL:
                with gil:
                    raise MemoryError()
            a.data = grown
            a.data_cap = cap
        if n:
            memcpy(a.data + a.data_len, c[col].p, n)
        c[col].i = a.data_len            # offset, until sealed
        a.data_len += n
    a.nrows += 1
    return lent


cdef void arena_seal(Arena* a) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(a.nrows * N_COLUMNS):
        if a.cells[k].kind == K_BYTES:
            a.cells[k].p = <const unsigned char*>a.data + a.cells[k].i
        elif a.cells[k].kind == K_LENT:
            a.cells[k].kind = K_BYTES


@cython.final
@cython.auto_pickle(False)
cdef class RowPipe(RowSource):
    """Steps `stmt` on a thread of its own (start()) and hands its rows, in order, as a
    RowSource.  close() stops the thread - interrupting a step in progress, such as a long
    sort - and must run before the statement is finalized; the Archive calls it on every
    path."""
    cdef Statement stmt
    cdef Arena arenas[PIPE_ARENAS]
    cdef sx_sync sync
    cdef bint sync_ready
    cdef int head, tail, filled
    cdef Py_ssize_t held             # data bytes in the filled arenas
    cdef bint filling                # the producer holds a partly filled arena `head`
    cdef bint lending                # a published row points into SQLite's memory
    cdef bint producer_done, cancel
    cdef bint started                # start() ran: a producer will set producer_done
    cdef Py_ssize_t cursor           # next row to encode in arena `tail`
    cdef object error                # an exception the producer met, re-raised in order
    cdef object thread

    def __init__(self, Statement stmt):
        cdef int i
        self.stmt = stmt
        if sx_sync_init(&self.sync) != 0:
            raise MemoryError()
        self.sync_ready = True
        for i in range(PIPE_ARENAS):
            arena_init(&self.arenas[i])

    def __dealloc__(self):
        cdef int i
        if self.sync_ready:
            sx_sync_destroy(&self.sync)
        for i in range(PIPE_ARENAS):
            arena_free(&self.arenas[i])

    def start(self):
        self.thread = threading.Thread(target=self._produce, name="skyexport-sqlite",
                                       daemon=True)
        self.thread.start()
        self.started = True

    def close(self):
        """Stop the producer (if running) and wait for it: for its own producer_done, which
        no signal can fake (Thread.join() interrupted by one can take a running thread for
        ended, Python 3.10-3.12), before the statement may be finalized."""
        cdef bint started = self.started
        with nogil:
            sx_lock(&self.sync)
            self.cancel = True
            if not self.producer_done and started:
                # The producer may be inside one long step (a sort of a million keys):
                # make SQLite return from it now, not when the step ends.
                self.stmt.interrupt()
            sx_broadcast(&self.sync)
            while started and not self.producer_done:
                sx_wait_ms(&self.sync, WAIT_MS)
            sx_unlock(&self.sync)
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _produce(self):
        try:
            with nogil:
                self.produce()
        except BaseException as exc:
            # The rows read before the failure are still exported first, so that the
            # error names the batch it really happened in.
            if self.filling:
                with nogil:
                    self.publish(&self.arenas[self.head])
            self.error = exc
        finally:
            with nogil:
                sx_lock(&self.sync)
                self.producer_done = True
                sx_broadcast(&self.sync)
                sx_unlock(&self.sync)

    @cython.cdivision(True)   # audited: C division, as written
    cdef void publish(self, Arena* a) noexcept nogil:
        """Hand the arena being filled to the consumer."""
        arena_seal(a)
        sx_lock(&self.sync)
        self.filling = False
        self.head = (self.head + 1) % PIPE_ARENAS
        self.filled += 1
        self.held += a.data_len
        sx_broadcast(&self.sync)
        sx_unlock(&self.sync)

    cdef int produce(self) except -1 nogil:
        cdef Arena* a
        cdef int rc, lent
        while True:
            sx_lock(&self.sync)
            while (self.filled == PIPE_ARENAS or (self.filled and self.held >= PIPE_BYTES)
                   or (self.lending and self.filled)) and not self.cancel:
                sx_wait_ms(&self.sync, WAIT_MS)
            self.lending = False             # every arena is back: the lent row is done
            if self.cancel:
                sx_unlock(&self.sync)
                return 0
            a = &self.arenas[self.head]
            self.filling = True
            sx_unlock(&self.sync)
            a.nrows = 0
            a.data_len = 0
            rc = 1
            lent = 0
            while a.nrows < ARENA_ROWS and a.data_len < ARENA_BYTES:
                rc = self.stmt.step()        # raises (with the GIL) on an SQLite error
                if rc == 0:
                    break
                lent = arena_add_row(a, self.stmt.stmt)
                if lent:
                    break                    # not one step more until it is consumed
            if lent:
                self.lending = True          # only this thread reads or writes it
            self.publish(a)
            if rc == 0:
                return 0

    @cython.cdivision(True)   # audited: C division, as written
    cdef const Cell* next_row(self) except NULL nogil:
        """The next row's cells, or a pointer to a cell of kind -1 at the end.  Waits for
        the producer; checks for signals (Ctrl-C) while waiting."""
        cdef Arena* a
        while True:
            sx_lock(&self.sync)
            if self.filled > 0:
                a = &self.arenas[self.tail]
                if self.cursor < a.nrows:
                    sx_unlock(&self.sync)
                    self.cursor += 1
                    return a.cells + (self.cursor - 1) * N_COLUMNS
                # Arena used up: give it back, shrinking it after a giant row.
                if a.data_cap > 4 * ARENA_BYTES:
                    PyMem_RawFree(a.data)
                    a.data = <char*>PyMem_RawMalloc(ARENA_BYTES)
                    a.data_cap = ARENA_BYTES if a.data != NULL else 0
                    if a.data == NULL:
                        sx_unlock(&self.sync)
                        with gil:
                            raise MemoryError()
                self.tail = (self.tail + 1) % PIPE_ARENAS
                self.filled -= 1
                self.held -= a.data_len
                self.cursor = 0
                sx_broadcast(&self.sync)
                sx_unlock(&self.sync)
                continue
            if self.producer_done:
                sx_unlock(&self.sync)
                with gil:
                    if self.error is not None:
                        raise self.error
                return &_END_OF_ROWS
            sx_wait_ms(&self.sync, WAIT_MS)
            sx_unlock(&self.sync)
            with gil:
                PyErr_CheckSignals()
