# cython: language_level=3, auto_pickle=False
# Checks stay on module-wide; functions audited for C division or unchecked indexing say so
# with their own decorator.
"""skyexport's compiled core: rows of the export SELECT in, bytes of posts.json / .jsonl /
.csv out, per ../shared/FORMAT.md.

One extension module built from one file per concern (uvloop's layout, so the C compiler
sees everything at once and can inline across them):

    _buffer.pxi   the output buffer
    _time.pxi     reading stored timestamps, rendering RFC 3339
    _json.pxi     JSON string escaping, validating and re-indenting stored JSON
    _csv.pxi      Go's CSV quoting, the MediaFiles column
    _rows.pxi     the column layout, cells, RowSource (what Writer.encode reads) and
                  TupleRows (a RowSource over Python tuples)
    _sqlite.pxi   Statement: the SELECT stepped through APSW's own SQLite (sqlite_glue.h);
                  read_cell, the one SQLite cell decoder
    _filter.pxi   --since/--until as SQL functions; parsing the bounds
    _writer.pxi   Writer: the per-row encoders and the batch loop
    _pipe.pxi     RowPipe: stepping on one thread, encoding on another
    _car.pxi      repository CARs: framing, DAG-CBOR, post records (CAR.md)
    _records.pxi  every record of a CAR as listRecords JSON and CSV rows (CAR.md)
    _media.pxi    the media copy loop: find, check, copy and hash files without the GIL

The Python package (src/skyexport) owns everything else: options, the APSW connection and
cursor, files, progress, media, the manifest.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t, uint32_t, uintptr_t, INT64_MAX, INT64_MIN
from libc.string cimport memchr, memcpy, memset, memcmp, strerror, strlen
from libc.errno cimport errno, EINVAL, ENOSYS
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_AsLongLong
from cpython.mem cimport PyMem_RawMalloc, PyMem_RawRealloc, PyMem_RawFree
from cpython.exc cimport PyErr_Occurred, PyErr_CheckSignals
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ

import math
import os
import threading

import apsw

include "_buffer.pxi"
include "_time.pxi"
include "_json.pxi"
include "_csv.pxi"
include "_rows.pxi"
include "_sqlite.pxi"
include "_filter.pxi"
include "_writer.pxi"
include "_pipe.pxi"
include "_car.pxi"
include "_records.pxi"
include "_media.pxi"

init_json_tables()
init_writer_tables()
_apsw_exception_for = apsw.exception_for


def json_string(bytes value):
    """`value` encoded as a JSON string, as the text column is: the core's one JSON string
    encoder, also used by the manifest writer (manifest.py) so that both escape alike."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        ob_json_str(&b, <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


def reformat_json(bytes value, bint pretty=True, int level=2):
    """Test hook: stored JSON re-formatted as the embed_data/labels fields are, or None
    when it is not valid JSON."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        if ob_raw_json(&b, <const unsigned char*>PyBytes_AS_STRING(value),
                       PyBytes_GET_SIZE(value), level, pretty):
            return None
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


def csv_field(bytes value):
    """Test hook: `value` as one CSV field."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        ob_csv_field(&b, <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


def media_files_of(embed_data):
    """Test hook: the MediaFiles column for a has_media post with this embed_data, as the
    CSV writer computes it (media_files_fast where it can, else the exact path)."""
    if type(embed_data) is not bytes:
        return b""
    cdef OutBuf m
    ob_init(&m, 64)
    try:
        if media_files_into(&m, <const unsigned char*>PyBytes_AS_STRING(embed_data),
                            PyBytes_GET_SIZE(embed_data)) == 0:
            return PyBytes_FromStringAndSize(m.data, m.len)
    finally:
        ob_free(&m)
    return media_files(embed_data)


def media_files_exact(bytes embed_data):
    """Test hook: MediaFiles by the exact path alone (Go's decoder as msgspec/json)."""
    return media_files(embed_data)


def media_files_fast_of(bytes embed_data):
    """Test hook: MediaFiles by media_files_fast alone (valid JSON only), or None where it
    leaves the answer to the exact path."""
    cdef OutBuf m
    ob_init(&m, 64)
    try:
        if media_files_fast(&m, <const unsigned char*>PyBytes_AS_STRING(embed_data),
                            PyBytes_GET_SIZE(embed_data)) == 0:
            return PyBytes_FromStringAndSize(m.data, m.len)
        return None
    finally:
        ob_free(&m)


def format_real(double value):
    """Test hook: a REAL stored in a JSON column, as it is written."""
    return go_format_float(value)


cdef extern from "platform.h" nogil:
    int sx_rename_noreplace(const char* oldpath, const char* newpath)


def rename_noreplace(src, dst):
    """Rename `src` to `dst` atomically, failing with FileExistsError if `dst` exists (even
    as an empty directory, which plain rename(2) would silently replace).  Raises
    NotImplementedError where the platform or file system cannot (platform.h:
    renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on macOS, MoveFileExW on
    Windows)."""
    cdef bytes s = os.fsencode(src), d = os.fsencode(dst)
    cdef const char* sp = s
    cdef const char* dp = d
    cdef int rc, err = 0
    with nogil:
        rc = sx_rename_noreplace(sp, dp)
        if rc != 0:
            err = errno
    if rc == 0:
        return
    if err == EINVAL or err == ENOSYS:
        raise NotImplementedError("no rename without replace on this platform or file system")
    raise OSError(err, strerror(err).decode("utf-8", "replace"), os.fsdecode(src), None,
                  os.fsdecode(dst))
