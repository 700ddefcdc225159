/* pyconfig.h for COMPILING (never linking or running) skyexport's core against CPython's
 * own headers for a 64-bit Unix other than Linux/glibc: macOS arm64 and x86_64, and
 * FreeBSD x86_64 (all LP64, little-endian), with `zig cc -target aarch64-macos -c` and so on
 * (.ci/cross-compile).  CPython's configure writes the real one on such a machine; there is
 * none on this Linux machine, and the host's Linux pyconfig.h would claim glibc
 * (_GNU_SOURCE, _POSIX_C_SOURCE, which hide macOS's own API such as renamex_np).  So this
 * states only what the headers need: the type sizes of the target and the feature macros a
 * macOS build of CPython 3.10-3.13 defines (_DARWIN_C_SOURCE means nothing elsewhere).
 * Everything else in CPython's headers is platform-neutral, so the compile checks the
 * core's own C against the SDK / libc headers zig carries for the target. */
#ifndef Py_PYCONFIG_H
#define Py_PYCONFIG_H

#define _DARWIN_C_SOURCE 1

#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 8
#define SIZEOF_LONG_LONG 8
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_UINTPTR_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 8
#define SIZEOF_FPOS_T 8
#define SIZEOF_PID_T 4
#define SIZEOF_WCHAR_T 4
#define SIZEOF_FLOAT 4
#define SIZEOF_DOUBLE 8
#define SIZEOF__BOOL 1
#define SIZEOF_PTHREAD_T 8
#define SIZEOF_PTHREAD_KEY_T 8
#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1

#define STDC_HEADERS 1
#define HAVE_UNISTD_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TIME_H 1
#define HAVE_FCNTL_H 1
#define HAVE_STDINT_H 1
#define HAVE_INTTYPES_H 1
#define HAVE_WCHAR_H 1
#define HAVE_PTHREAD_H 1
#define HAVE_SSIZE_T 1
#define HAVE_STD_ATOMIC 1
#define HAVE_BUILTIN_ATOMIC 1
#define HAVE_CLOCK_GETTIME 1
#define HAVE_DYNAMIC_LOADING 1
#define HAVE_LONG_DOUBLE 1
#define HAVE_SIGNAL_H 1
#define TIME_WITH_SYS_TIME 1
#define WITH_DOC_STRINGS 1
#define WITH_PYMALLOC 1
#define WITH_FREELISTS 1
#define PY_SUPPORT_TIER 1

#endif
