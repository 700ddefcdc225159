/* The media copy loop of media/copy.pxi, in C without the GIL: find a source beneath a
 * lookup root, check it, create its copy in media/, copy and hash it (src/skyexport/exporter/media.py
 * says which rules it keeps).  Anything unusual is handed back as SX_SLOW, untouched, to
 * media.py's checked path.  The loop is Linux's (openat2, FICLONE, syncfs, all behind
 * __linux__); elsewhere every job is SX_SLOW at once and syncfs is ENOSYS, so media.py's
 * checked path and its fsync per file do the work. */
#ifndef SKYEXPORT_MEDIA_IO_H
#define SKYEXPORT_MEDIA_IO_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "platform.h"
#include "pipe_sync.h"
#include "sha256.h"

#ifdef __linux__
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef SYS_openat2
#define SYS_openat2 437            /* the same number on every architecture (Linux 5.6) */
#endif
#ifndef SX_FICLONE
#define SX_FICLONE 0x40049409      /* linux/fs.h: _IOW(0x94, 9, int) */
#endif
/* fstat and fcntl through syscall(2) where the kernel's struct stat is glibc's (x86_64,
 * aarch64): glibc 2.33 made fstat a symbol of its own (fstat64@GLIBC_2.33) and 2.28 renamed
 * fcntl (fcntl64@GLIBC_2.28), and either would raise the wheel's glibc floor above
 * manylinux2014's 2.17 (`make wheel` repairs to it, and fails on a newer symbol). */
#if defined(__x86_64__) || defined(__aarch64__)
static inline int sx_fstat(int fd, struct stat *st) { return (int)syscall(SYS_fstat, fd, st); }
static inline int sx_fcntl(int fd, int cmd, long arg)
{
    return (int)syscall(SYS_fcntl, fd, cmd, arg);
}
#else
#define sx_fstat fstat
#define sx_fcntl fcntl
#endif
struct sx_open_how {               /* linux/openat2.h */
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define SX_RESOLVE_NO_MAGICLINKS 0x02
#define SX_RESOLVE_NO_SYMLINKS 0x04
#define SX_RESOLVE_BENEATH 0x08
#endif

enum {
    SX_PLACED = 0,   /* copied (or reflinked) and hashed: digest is set */
    SX_SLOW = 1,     /* nothing done, nothing left behind: media.py's checked path decides */
    SX_SHRANK = 2,   /* the source gave fewer bytes than fstat said; the copy was removed */
    SX_FAILED = 3,   /* err: creating, writing or closing the copy failed; it was removed */
};

#define SX_MAX_ROOTS 8
/* A sleeping serving thread is woken once this many jobs (or second halves) wait for it,
 * not for each one: a wake-up per file costs more than the file's copying. */
#define SX_WAKE_BATCH 8
#define SX_MAX_NOCLONE 8

typedef struct {
    const char *path[2];   /* the spellings of file_path to try, relative */
    int npath;
    const char *name;      /* the name in media/ */
    int status, err;
    int which;             /* path index * nroots + root index that was used */
    int64_t size, done;
    unsigned char digest[32];
    int stage;             /* 0 new, 1 created (its copying to follow), 2 done */
    int src, out;          /* between the halves: the source and its copy */
    dev_t dev;             /* the source's device */
} sx_media_job;

typedef struct {
    int media_fd;
    int root_fd[SX_MAX_ROOTS];
    int nroots;
    const dev_t *pseudo;
    int npseudo;
    int clone;                        /* try FICLONE at all */
    dev_t noclone[SX_MAX_NOCLONE];    /* source devices where FICLONE failed as unsupported */
    int nnoclone;
    int no_openat2;                   /* openat2 itself is unavailable (ENOSYS, EPERM) */
    sx_media_job *jobs;               /* not moved while any job is published */
    long njobs, next, done;           /* published, taken, finished */
    long opened, copying;             /* first halves done; second halves taken */
    int split;                        /* first halves on one thread at a time */
    int opening;                      /* a thread is doing a first half */
    int idle, waiting, stop;          /* serving threads asleep; a waiter; end serving */
    sx_sync sync;
} sx_media_ctx;

#ifdef __linux__

/* 1 when `p` has a ".." component. */
static int sx_has_dotdot(const char *p)
{
    const char *s = p;
    for (;;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.')
            return 1;
        if (!e)
            return 0;
        s = e + 1;
    }
}

/* Open `rel` beneath `dirfd` for reading, with no symlink anywhere on the way and no ".."
 * out of it (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); O_NONBLOCK, so that a FIFO
 * cannot hang.  -1 with errno; ENOSYS where openat2 does not exist. */
static int sx_open_beneath(sx_media_ctx *c, int dirfd, const char *rel)
{
    struct sx_open_how how;
    long fd;
    if (c->no_openat2) {
        errno = ENOSYS;
        return -1;
    }
    memset(&how, 0, sizeof how);
    how.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
    how.resolve = SX_RESOLVE_BENEATH | SX_RESOLVE_NO_SYMLINKS | SX_RESOLVE_NO_MAGICLINKS;
    do {
        fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
    } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    if (fd < 0 && (errno == ENOSYS || errno == EPERM || errno == E2BIG))
        c->no_openat2 = 1;        /* an old kernel, or a sandbox that refuses the call */
    return (int)fd;
}

/* syncfs(2) of the file system holding `fd`: its data and metadata on stable storage.
 * 0, or -1 with errno (ENOSYS where there is no syncfs). */
static int sx_syncfs(int fd)
{
    return syncfs(fd);
}

static int sx_write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Hash (and with `out` >= 0 also copy) the first j->size bytes of `src` from `off`, never
 * reading more: SX_PLACED, SX_SHRANK, or SX_FAILED with j->err. */
static int sx_copy_hash(sx_media_job *j, int src, int out, int64_t off,
                        unsigned char *buf, size_t cap)
{
    sx_sha256 h;
    int64_t left = j->size;
    sx_sha256_init(&h);
    j->done = 0;
    while (left > 0) {
        size_t want = left < (int64_t)cap ? (size_t)left : cap;
        ssize_t n = pread(src, buf, want, (off_t)(off + j->done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {   /* O_NONBLOCK only guarded the open */
                int fl = sx_fcntl(src, F_GETFL, 0);
                if (fl >= 0 && sx_fcntl(src, F_SETFL, fl & ~O_NONBLOCK) == 0)
                    continue;
            }
            j->err = errno;
            return SX_FAILED;
        }
        if (n == 0)
            return SX_SHRANK;
        sx_sha256_update(&h, buf, (size_t)n);
        if (out >= 0 && sx_write_all(out, buf, (size_t)n) != 0) {
            j->err = errno;
            return SX_FAILED;
        }
        j->done += n;
        left -= n;
    }
    sx_sha256_final(&h, j->digest);
    return SX_PLACED;
}

static int sx_noclone_has(sx_media_ctx *c, dev_t dev)
{
    int i;
    for (i = 0; i < c->nnoclone; i++)
        if (c->noclone[i] == dev)
            return 1;
    return 0;
}

/* A job's first half (without the GIL; `c` is shared): find and check the source, create
 * its copy in media/.  1 when the second half (sx_media_copy) is to follow, with the two
 * descriptors in the job; 0 when the job is done (j->status says how). */
static int sx_media_open(sx_media_ctx *c, sx_media_job *j)
{
    int src = -1, out, i, k;
    struct stat sst;
    j->status = SX_SLOW;
    j->err = 0;
    j->which = -1;
    for (i = 0; i < j->npath && src < 0; i++) {
        for (k = 0; k < c->nroots; k++) {
            if (c->root_fd[k] < 0)
                continue;                       /* a root that does not exist */
            src = sx_open_beneath(c, c->root_fd[k], j->path[i]);
            if (src >= 0) {
                j->which = i * c->nroots + k;
                break;
            }
            /* Not there, and no ".." that the checked path could read differently: the
             * checked path would not find it under this root either. */
            if (errno == ENOENT && !sx_has_dotdot(j->path[i]))
                continue;
            return 0;                           /* a symlink, "..", anything else */
        }
    }
    if (src < 0)
        return 0;                               /* not found: said by the checked path */
    if (sx_fstat(src, &sst) != 0 || !S_ISREG(sst.st_mode))
        goto slow;
    for (i = 0; i < c->npseudo; i++)
        if (c->pseudo[i] == sst.st_dev)
            goto slow;
    j->size = (int64_t)sst.st_size;
    j->dev = sst.st_dev;
    out = openat(c->media_fd, j->name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                 0666);
    if (out < 0) {
        if (errno == EEXIST)
            goto slow;                          /* a name collision: the checked path */
        j->err = errno;
        j->status = SX_FAILED;
        close(src);
        return 0;
    }
    j->src = src;
    j->out = out;
    return 1;
slow:
    close(src);
    j->status = SX_SLOW;
    j->which = -1;
    return 0;
}

/* A job's second half: copy (or reflink) and hash the source into its copy; close both. */
static void sx_media_copy(sx_media_ctx *c, sx_media_job *j, unsigned char *buf, size_t cap)
{
    int src = j->src, out = j->out, st = -1;
    struct stat ost;
    if (c->clone && j->size > 0) {
        int skip;
        sx_lock(&c->sync);
        skip = sx_noclone_has(c, j->dev);
        sx_unlock(&c->sync);
        if (!skip) {
            if (ioctl(out, SX_FICLONE, src) == 0) {
                /* Shared blocks: cut to the size fstat gave, hash what the copy holds. */
                if (sx_fstat(out, &ost) != 0
                        || ftruncate(out, ost.st_size < j->size ? ost.st_size : j->size) != 0) {
                    j->err = errno;
                    st = SX_FAILED;
                } else {
                    st = sx_copy_hash(j, out, -1, 0, buf, cap);
                }
            } else if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EXDEV
                       || errno == EINVAL || errno == ENOSYS || errno == EPERM) {
                /* This file system (pair) cannot share blocks: never ask again. */
                sx_lock(&c->sync);
                if (!sx_noclone_has(c, j->dev) && c->nnoclone < SX_MAX_NOCLONE)
                    c->noclone[c->nnoclone++] = j->dev;
                sx_unlock(&c->sync);
            }
        }
    }
    if (st < 0)
        st = sx_copy_hash(j, src, out, 0, buf, cap);
    close(src);
    if (close(out) != 0 && st == SX_PLACED) {
        j->err = errno;
        st = SX_FAILED;
    }
    if (st != SX_PLACED)
        unlinkat(c->media_fd, j->name, 0);
    j->status = st;
}

static int sx_media_first(sx_media_ctx *c, sx_media_job *j)
{
    return sx_media_open(c, j);
}

static void sx_media_second(sx_media_ctx *c, sx_media_job *j, unsigned char *buf, size_t cap)
{
    sx_media_copy(c, j, buf, cap);
}

#else  /* not Linux: no loop here; media.py's checked path does every file */

static int sx_syncfs(int fd)
{
    (void)fd;
    errno = ENOSYS;
    return -1;
}

static int sx_media_first(sx_media_ctx *c, sx_media_job *j)
{
    j->status = SX_SLOW;
    j->which = -1;
    c->no_openat2 = 1;
    return 0;
}

static void sx_media_second(sx_media_ctx *c, sx_media_job *j, unsigned char *buf, size_t cap)
{
    (void)c; (void)j; (void)buf; (void)cap;
}

#endif  /* __linux__ */

/* Job i finished, both halves (c->sync held): counted, and the last one published wakes a
 * waiter. */
static void sx_media_done(sx_media_ctx *c, long i)
{
    c->jobs[i].stage = 2;
    if (++c->done == c->njobs && c->waiting)
        sx_broadcast(&c->sync);
}

/* Take the published jobs' halves, one at a time, until none is left; with `serve`, then
 * sleep until more are published or c->stop is set (the threads that serve a batch for
 * the whole export).  The first halves (the creates in media/) are done by one thread at
 * a time, in order - creates in one directory wait for its lock anyway, and a second
 * creating thread would spin on it - and the second halves (the bytes) by any.  Each
 * finished job is counted in c->done, and the last one published wakes a waiter. */
static void sx_media_take(sx_media_ctx *c, unsigned char *buf, size_t cap, int serve)
{
    sx_lock(&c->sync);
    for (;;) {
        if (!c->split && c->next < c->njobs) {  /* both halves of a job, as they come */
            long i = c->next++;
            sx_unlock(&c->sync);
            if (sx_media_first(c, &c->jobs[i]))
                sx_media_second(c, &c->jobs[i], buf, cap);
            sx_lock(&c->sync);
            sx_media_done(c, i);
            continue;
        }
        if (c->split && !c->opening && c->next < c->njobs) {
            long i = c->next++;
            int more;
            c->opening = 1;
            sx_unlock(&c->sync);
            more = sx_media_first(c, &c->jobs[i]);
            sx_lock(&c->sync);
            c->opening = 0;
            c->jobs[i].stage = more ? 1 : 2;
            c->opened = i + 1;
            if (!more && ++c->done == c->njobs && c->waiting)
                sx_broadcast(&c->sync);
            else if (more && c->idle && c->opened - c->copying >= SX_WAKE_BATCH)
                sx_broadcast(&c->sync);         /* second halves for a sleeping thread */
            continue;
        }
        while (c->copying < c->opened && c->jobs[c->copying].stage != 1)
            c->copying++;
        if (c->copying < c->opened) {
            long i = c->copying++;
            sx_unlock(&c->sync);
            sx_media_second(c, &c->jobs[i], buf, cap);
            sx_lock(&c->sync);
            sx_media_done(c, i);
            continue;
        }
        if (!serve || c->stop)
            break;
        c->idle++;
        sx_wait_ms(&c->sync, 1000);
        c->idle--;
    }
    sx_unlock(&c->sync);
}

/* Take jobs until none are left (any number of threads at once). */
static void sx_media_run(sx_media_ctx *c, unsigned char *buf, size_t cap)
{
    sx_media_take(c, buf, cap, 0);
}

/* Job c->njobs, filled in by the caller, is published (a sleeping server is woken once
 * SX_WAKE_BATCH wait; sx_media_wait wakes it for the rest). */
static void sx_media_publish(sx_media_ctx *c)
{
    sx_lock(&c->sync);
    c->njobs++;
    if (c->idle && c->njobs - c->next >= SX_WAKE_BATCH)
        sx_broadcast(&c->sync);
    sx_unlock(&c->sync);
}

/* Until every published job is finished; with `help`, taking the ones not yet taken on
 * this thread too (so that it ends even with no thread serving). */
static void sx_media_wait(sx_media_ctx *c, unsigned char *buf, size_t cap, int help)
{
    sx_lock(&c->sync);
    if (c->idle)
        sx_broadcast(&c->sync);                 /* whatever is left, fewer than a wake's */
    sx_unlock(&c->sync);
    if (help)
        sx_media_take(c, buf, cap, 0);
    sx_lock(&c->sync);
    c->waiting++;
    while (c->done < c->njobs)
        sx_wait_ms(&c->sync, 1000);
    c->waiting--;
    sx_unlock(&c->sync);
}

/* Serving threads: finish what is taken, then return. */
static void sx_media_stop(sx_media_ctx *c)
{
    sx_lock(&c->sync);
    c->stop = 1;
    sx_broadcast(&c->sync);
    sx_unlock(&c->sync);
}

#endif
