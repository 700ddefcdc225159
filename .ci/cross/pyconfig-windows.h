/* pyconfig.h for COMPILING (never linking or running) skyexport's core against CPython's
 * own headers for 64-bit Windows (LLP64: long is 4 bytes), with `zig cc -target
 * x86_64-windows-gnu -c` (.ci/cross-compile).  A Windows CPython ships its own pyconfig.h
 * (PC/pyconfig.h in CPython's sources, written by hand for MSVC); there is none on this
 * Linux machine, and the host's Linux one states the wrong type sizes (long = 8) and claims
 * POSIX headers Windows lacks.  This states only what the headers need: MS_WINDOWS/
 * MS_WIN64, the DLL import convention of a python3XX.dll, the LLP64 sizes, and the few
 * features a Windows build has.  Everything else in CPython's headers is platform-neutral,
 * so the compile checks the core's own C against the MinGW-w64 Windows headers zig
 * carries.  (A release build uses MSVC or MinGW with the real headers: .github/workflows/
 * wheels.yml, not run here.) */
#ifndef Py_CONFIG_H
#define Py_CONFIG_H

#define MS_WIN32
#define MS_WIN64
#define MS_WINDOWS
#define NT_THREADS
#define WITH_THREAD
#define Py_ENABLE_SHARED 1
#define HAVE_DECLSPEC_DLL
#define PY_SUPPORT_TIER 1

#include <io.h>
#include <basetsd.h>
#include <stdio.h>
#include <float.h>

#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_UINTPTR_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_PID_T 4
#define SIZEOF_WCHAR_T 2
#define SIZEOF_FLOAT 4
#define SIZEOF_DOUBLE 8
#define SIZEOF__BOOL 1
#define SIZEOF_HKEY 8
#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1

typedef long long Py_ssize_t;
typedef long long Py_hash_t;
typedef unsigned long long Py_uhash_t;
#define PY_SSIZE_T_MAX LLONG_MAX
#define HAVE_PY_SSIZE_T 1

#define STDC_HEADERS 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_FCNTL_H 1
#define HAVE_STDDEF_H 1
#define HAVE_WCHAR_H 1
#define HAVE_SIGNAL_H 1
#define HAVE_DYNAMIC_LOADING 1
#define HAVE_LONG_DOUBLE 1
#define WITH_DOC_STRINGS 1
#define WITH_PYMALLOC 1
#define WITH_FREELISTS 1

#endif
