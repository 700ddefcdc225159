/* Everything the core needs from the operating system or the compiler that differs between
 * Linux, macOS and Windows, in one place:
 *
 *   SX_EXPORT            a symbol the module exports besides PyInit__core
 *   sx_ctz               index of the lowest set bit (the SIMD scans of scan.h)
 *   sx_pread, sx_pwrite  positioned I/O on a descriptor (car/index.pxi, car/scan.pxi)
 *   sx_rename_noreplace  rename that never replaces an existing name (common/rename.pxi)
 *   sx_sync ...          a mutex and a condition variable (pipe_sync.h, rows/pipe.pxi)
 *
 * Linux is built and tested; macOS (aarch64/x86_64), Windows (x86_64, MinGW-w64; MSVC is
 * written for, not compiled here) and FreeBSD (x86_64, the generic paths) are compiled by
 * .ci/run with `zig cc -c` (.ci/cross-compile), not run.  Anything else POSIX gets the
 * portable path of each, and a clear refusal where there is none
 * (sx_rename_noreplace: ENOSYS, which the Python side answers with its mkdir+rename). */
#ifndef SKYEXPORT_PLATFORM_H
#define SKYEXPORT_PLATFORM_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#  include <io.h>
#  if defined(_MSC_VER)
#    include <intrin.h>
#  endif
#else
#  include <pthread.h>
#  include <stdio.h>
#  include <time.h>
#  include <unistd.h>
#  if defined(__linux__)
#    include <sys/syscall.h>
#  endif
#endif

/* ssize_t: MinGW and POSIX have it; MSVC does not. */
#if defined(_MSC_VER) && !defined(SX_HAVE_SSIZE_T)
#  include <BaseTsd.h>
typedef SSIZE_T ssize_t;
#endif

/* ---- exported symbols ---------------------------------------------------------------- */
#if defined(_WIN32)
#  define SX_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#  define SX_EXPORT __attribute__((visibility("default")))
#else
#  define SX_EXPORT
#endif

/* ---- bit scan ------------------------------------------------------------------------ */
/* Index of the lowest set bit of x; x must not be 0. */
static inline int sx_ctz(unsigned x)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(x);
#elif defined(_MSC_VER)
    unsigned long i;
    _BitScanForward(&i, x);
    return (int)i;
#else
    int i = 0;
    while (!(x & 1u)) {
        x >>= 1;
        i++;
    }
    return i;
#endif
}

/* ---- positioned I/O ------------------------------------------------------------------- */
/* As POSIX pread/pwrite (-1 and errno on failure; short counts possible).  On Windows
 * through ReadFile/WriteFile with an OVERLAPPED offset on the descriptor's handle, which
 * also moves the descriptor's file position (no caller relies on it: the core only ever
 * reads and writes its files at explicit offsets). */
#if defined(_WIN32)
static inline ssize_t sx_win_rw(int fd, void *buf, size_t n, long long off, int write)
{
    HANDLE h = (HANDLE)_get_osfhandle(fd);
    OVERLAPPED ov;
    DWORD done = 0;
    DWORD want = n > 0x40000000u ? 0x40000000u : (DWORD)n;
    BOOL ok;
    if (h == INVALID_HANDLE_VALUE) {
        errno = EBADF;
        return -1;
    }
    if (off < 0) {
        errno = EINVAL;
        return -1;
    }
    memset(&ov, 0, sizeof ov);
    ov.Offset = (DWORD)((unsigned long long)off & 0xffffffffu);
    ov.OffsetHigh = (DWORD)((unsigned long long)off >> 32);
    ok = write ? WriteFile(h, buf, want, &done, &ov) : ReadFile(h, buf, want, &done, &ov);
    if (!ok) {
        DWORD e = GetLastError();
        if (e == ERROR_HANDLE_EOF)
            return 0;
        errno = e == ERROR_ACCESS_DENIED ? EACCES : e == ERROR_DISK_FULL ? ENOSPC : EIO;
        return -1;
    }
    return (ssize_t)done;
}
static inline ssize_t sx_pread(int fd, void *buf, size_t n, long long off)
{
    return sx_win_rw(fd, buf, n, off, 0);
}
static inline ssize_t sx_pwrite(int fd, const void *buf, size_t n, long long off)
{
    return sx_win_rw(fd, (void *)buf, n, off, 1);
}
#else
static inline ssize_t sx_pread(int fd, void *buf, size_t n, long long off)
{
    return pread(fd, buf, n, (off_t)off);
}
static inline ssize_t sx_pwrite(int fd, const void *buf, size_t n, long long off)
{
    return pwrite(fd, buf, n, (off_t)off);
}
#endif

/* ---- rename without replacing ----------------------------------------------------------- */
/* Rename `from` to `to` atomically, failing with EEXIST if `to` exists in any form (an
 * empty directory included, which rename(2) would replace).  ENOSYS (or EINVAL from a
 * file system without the flag) when this platform or file system cannot promise that:
 * the caller then claims the name by other means, never by a plain rename.
 *   Linux:   renameat2(RENAME_NOREPLACE) through syscall(2), so the module needs no
 *            glibc 2.28 symbol (the wheel's manylinux tag stays old).
 *   macOS:   renamex_np(RENAME_EXCL) (10.12+); ENOTSUP from the file system -> ENOSYS.
 *   Windows: MoveFileExW without MOVEFILE_REPLACE_EXISTING, which fails if `to` exists;
 *            `from` and `to` are UTF-8 (os.fsencode's encoding there).
 *   other:   ENOSYS. */
#if defined(__APPLE__)
#  ifndef RENAME_EXCL
#    define RENAME_EXCL 0x00000004
#  endif
int renamex_np(const char *, const char *, unsigned int);
#endif

static inline int sx_rename_noreplace(const char *from, const char *to)
{
#if defined(__linux__) && defined(SYS_renameat2)
    /* AT_FDCWD is -100 and RENAME_NOREPLACE 1 in the kernel's ABI */
    return (int)syscall(SYS_renameat2, -100, from, -100, to, 1u);
#elif defined(__APPLE__)
    int rc = renamex_np(from, to, RENAME_EXCL);
    if (rc != 0 && errno == ENOTSUP)
        errno = ENOSYS;
    return rc;
#elif defined(_WIN32)
    wchar_t *wf = NULL, *wt = NULL;
    int nf = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, from, -1, NULL, 0);
    int nt = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, to, -1, NULL, 0);
    int rc = -1;
    if (nf <= 0 || nt <= 0) {
        errno = EINVAL;
        return -1;
    }
    wf = (wchar_t *)HeapAlloc(GetProcessHeap(), 0, (size_t)nf * sizeof(wchar_t));
    wt = (wchar_t *)HeapAlloc(GetProcessHeap(), 0, (size_t)nt * sizeof(wchar_t));
    if (!wf || !wt) {
        errno = ENOMEM;
    } else {
        MultiByteToWideChar(CP_UTF8, 0, from, -1, wf, nf);
        MultiByteToWideChar(CP_UTF8, 0, to, -1, wt, nt);
        if (MoveFileExW(wf, wt, 0)) {
            rc = 0;
        } else {
            DWORD e = GetLastError();
            errno = (e == ERROR_ALREADY_EXISTS || e == ERROR_FILE_EXISTS) ? EEXIST
                  : (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND) ? ENOENT
                  : e == ERROR_ACCESS_DENIED ? EACCES
                  : e == ERROR_NOT_SAME_DEVICE ? EXDEV : EIO;
        }
    }
    if (wf)
        HeapFree(GetProcessHeap(), 0, wf);
    if (wt)
        HeapFree(GetProcessHeap(), 0, wt);
    return rc;
#else
    (void)from;
    (void)to;
    errno = ENOSYS;
    return -1;
#endif
}

/* ---- a mutex and a condition variable ---------------------------------------------------- */
#if defined(_WIN32)
typedef struct {
    SRWLOCK mu;
    CONDITION_VARIABLE cv;
} sx_sync;

static inline int sx_sync_init(sx_sync *s)
{
    InitializeSRWLock(&s->mu);
    InitializeConditionVariable(&s->cv);
    return 0;
}
static inline void sx_sync_destroy(sx_sync *s) { (void)s; }
static inline void sx_lock(sx_sync *s) { AcquireSRWLockExclusive(&s->mu); }
static inline void sx_unlock(sx_sync *s) { ReleaseSRWLockExclusive(&s->mu); }
static inline void sx_broadcast(sx_sync *s) { WakeAllConditionVariable(&s->cv); }
/* Wait (lock held) for a broadcast or `ms` milliseconds, whichever comes first. */
static inline void sx_wait_ms(sx_sync *s, long ms)
{
    SleepConditionVariableSRW(&s->cv, &s->mu, (DWORD)ms, 0);
}
#else
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
} sx_sync;

static inline int sx_sync_init(sx_sync *s)
{
    if (pthread_mutex_init(&s->mu, 0) != 0)
        return -1;
    if (pthread_cond_init(&s->cv, 0) != 0) {
        pthread_mutex_destroy(&s->mu);
        return -1;
    }
    return 0;
}

static inline void sx_sync_destroy(sx_sync *s)
{
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

static inline void sx_lock(sx_sync *s) { pthread_mutex_lock(&s->mu); }
static inline void sx_unlock(sx_sync *s) { pthread_mutex_unlock(&s->mu); }
static inline void sx_broadcast(sx_sync *s) { pthread_cond_broadcast(&s->cv); }

/* Wait (mutex held) for a broadcast or `ms` milliseconds, whichever comes first. */
static inline void sx_wait_ms(sx_sync *s, long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec += 1;
        t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->cv, &s->mu, &t);
}
#endif

#endif
