# cython: language_level=3, auto_pickle=False
# Checks stay on module-wide; functions audited for C division or unchecked indexing say so
# with their own decorator.
"""skyexport's compiled core: rows of the export SELECT in, bytes of posts.json / .jsonl /
.csv out, per docs/FORMAT.md.

One extension module built from one file per subject (uvloop's and APSW's layout: one
translation unit, so the C compiler sees everything at once and can inline across them):

    common/buffer.pxi   the output buffer
    common/time.pxi     reading stored timestamps, rendering RFC 3339
    common/rename.pxi   the no-replace rename that publishes an export
    encode/json.pxi     JSON string escaping (the export's, and json.Marshal's for CAR
                        records), validating and re-indenting stored JSON
    encode/csv.pxi      Go's CSV quoting, the MediaFiles column
    rows/rows.pxi       the column layout, cells, RowSource (what Writer.encode reads) and
                        TupleRows (a RowSource over Python tuples)
    rows/sqlite.pxi     Statement: the SELECT stepped through APSW's own SQLite
                        (sqlite_glue.h); read_cell, the one SQLite cell decoder
    rows/filter.pxi     --since/--until as SQL functions; parsing the bounds
    encode/writer.pxi   Writer: the per-row encoders and the batch loop
    rows/pipe.pxi       RowPipe: stepping on one thread, encoding on another
    car/cid.pxi         repository CARs (docs/CAR.md): limits, errors, multibase, CIDs, varints
    car/index.pxi       the block index (an external sort in a scratch file)
    car/spill.pxi       fetch's check: the good CIDs and the records' CIDs, joined by partition
    car/scan.pxi        CarScanner: framing every block in one pass
    car/cbor.pxi        DAG-CBOR, strictly validated, to Python objects or compact JSON
    car/post.pxi        a post record's fields
    car/walk.pxi        CarWalker: the MST walk
    car/check.pxi       CarCheck: the whole MST and every record of a fetched repository
    car/insert.pxi      RowBatch: post rows inserted into SQLite in bulk
    car/records.pxi     RecordTap: every record of a CAR as listRecords JSON and CSV rows,
                        as the walk passes it
    media/copy.pxi      MediaBatch: media files found, checked, copied and hashed without
                        the GIL (media_io.h, sha256.h); syncfs
    testing.pxi         test hooks (gathered into `testing`, below)

`__all__` below is the module's production names, the one list of them (_core.pyi types
exactly these); the test hooks live in the `testing` namespace, not among them.

The Python package (src/skyexport) owns everything else: options, the APSW connection and
cursor, files, progress, media, the manifest.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t, uint32_t, uintptr_t, INT64_MAX, INT64_MIN
from libc.string cimport memchr, memcpy, memset, memcmp, strerror, strlen
from libc.errno cimport errno, EINVAL, ENOMEM, ENOSYS
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

include "common/buffer.pxi"
include "common/time.pxi"
include "encode/json.pxi"
include "encode/csv.pxi"
include "rows/rows.pxi"
include "rows/sqlite.pxi"
include "rows/filter.pxi"
include "encode/writer.pxi"
include "rows/pipe.pxi"
include "common/rename.pxi"
include "car/cid.pxi"
include "car/index.pxi"
include "car/table.pxi"
include "car/spill.pxi"
include "car/scan.pxi"
include "car/cbor.pxi"
include "car/post.pxi"
include "car/walk.pxi"
include "car/check.pxi"
include "car/insert.pxi"
include "car/records.pxi"
include "media/copy.pxi"
include "testing.pxi"

init_json_tables()
init_writer_tables()
_apsw_exception_for = apsw.exception_for

# The production names: what the Python package uses, typed by _core.pyi.
__all__ = (
    # writing posts (encode/, rows/)
    "COLUMN_NAMES", "CSV_HEADER", "EXTENSION_ENTRY_POINT", "InstantRange", "RowPipe",
    "RowSource", "Statement", "TupleRows", "Writer", "direct_ready", "is_bad_stamp",
    "is_true", "json_string", "parse_bound", "register_filters",
    # publishing (common/)
    "rename_noreplace",
    # media (media/)
    "MediaBatch", "syncfs",
    # repository CARs (car/)
    "BlockIndex", "BlockTable", "CID", "CarCheck", "CarFormatError", "CarScanner", "CarWalker",
    "RecordTap", "RowBatch", "ScratchWriteError", "cbor_to_py", "cid_str", "pread_bytes",
    "read_uvarint",
)

# Test hooks: reached as _core.testing.<name>, never as module attributes.
_TEST_HOOKS = (
    "reformat_json", "csv_field", "media_files_of", "media_files_exact",
    "media_files_fast_of", "format_real", "parse_timestamp", "render_timestamp",
    "cbor_to_json", "post_fields", "cid_index_key", "sha256_select", "sha256_digest",
    "sha256_pair", "media_classify", "tap_drain", "table_sort",
)


class _Testing:
    """The core's test hooks (testing.pxi, and the CAR parts' decoders one value at a
    time); not part of the production names."""


testing = _Testing()
for _name in _TEST_HOOKS:
    setattr(testing, _name, globals().pop(_name))
testing.RECORD_EMBEDS = _RECORD_EMBEDS
del _name
