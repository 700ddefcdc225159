/* Direct access to the SQLite library inside APSW.
 *
 * APSW embeds its own SQLite and exports no C API.  SQLite hands every loadable extension
 * a table of its API functions, though: the Python package loads this very module as an
 * extension on its APSW connection (Connection.load_extension(_core.__file__,
 * "skyexport_sqlite_init")), the entry point below keeps the table, and the writer core
 * then steps its SELECT through it on APSW's own connection and transaction, reading
 * column bytes in place: no Python object per row.
 *
 * Included by _core.pyx only (one translation unit), so SQLITE_EXTENSION_INIT1 is
 * defined once.  Only functions present since SQLite 3.7 are used, so the header of any
 * recent SQLite matches the table of APSW's newer library (the table only grows).
 */
#ifndef SKYEXPORT_SQLITE_GLUE_H
#define SKYEXPORT_SQLITE_GLUE_H

#include <sqlite3ext.h>
#include "platform.h"
SQLITE_EXTENSION_INIT1

SX_EXPORT
int skyexport_sqlite_init(sqlite3 *db, char **err, const sqlite3_api_routines *api)
{
    (void)db;
    (void)err;
    SQLITE_EXTENSION_INIT2(api);
    return SQLITE_OK;
}

static inline int sx_ready(void) { return sqlite3_api != 0; }

static inline int sx_prepare(sqlite3 *db, const char *sql, int n, sqlite3_stmt **st)
{
    return sqlite3_prepare_v2(db, sql, n, st, 0);
}

static inline int sx_bind_text(sqlite3_stmt *st, int i, const char *p, int n)
{
    return sqlite3_bind_text(st, i, p, n, SQLITE_TRANSIENT);
}

static inline int sx_bind_int64(sqlite3_stmt *st, int i, sqlite3_int64 v)
{
    return sqlite3_bind_int64(st, i, v);
}

static inline int sx_bind_double(sqlite3_stmt *st, int i, double v)
{
    return sqlite3_bind_double(st, i, v);
}

static inline int sx_bind_null(sqlite3_stmt *st, int i) { return sqlite3_bind_null(st, i); }
static inline int sx_step(sqlite3_stmt *st) { return sqlite3_step(st); }
static inline int sx_reset(sqlite3_stmt *st) { return sqlite3_reset(st); }
static inline int sx_finalize(sqlite3_stmt *st) { return sqlite3_finalize(st); }
static inline int sx_column_count(sqlite3_stmt *st) { return sqlite3_column_count(st); }
static inline int sx_column_bytes(sqlite3_stmt *st, int i) { return sqlite3_column_bytes(st, i); }
static inline sqlite3_int64 sx_column_int64(sqlite3_stmt *st, int i)
{
    return sqlite3_column_int64(st, i);
}
/* A number as text by SQLite's own rules (exactly CAST(x AS TEXT)); valid until the next
 * step.  Only for the rare number stored in a text column. */
static inline const unsigned char *sx_column_text(sqlite3_stmt *st, int i)
{
    return sqlite3_column_text(st, i);
}
/* One db-mutex round trip per column (sqlite3_column_value) instead of one per accessor:
 * the sqlite3_value_* readers take no lock.  Safe because the value belongs to this
 * statement's current row and only the thread stepping the statement reads it.  Another
 * thread may step another statement of the connection meanwhile (with --media, the media
 * rows' cursor; the connection is then opened with its mutex, sources/archive.py): its
 * calls take that mutex and do not touch this row. */
static inline sqlite3_value *sx_column_value(sqlite3_stmt *st, int i)
{
    return sqlite3_column_value(st, i);
}
static inline int sx_value_type(sqlite3_value *v) { return sqlite3_value_type(v); }
static inline sqlite3_int64 sx_value_int64(sqlite3_value *v) { return sqlite3_value_int64(v); }
static inline double sx_value_double(sqlite3_value *v) { return sqlite3_value_double(v); }
static inline const void *sx_value_blob(sqlite3_value *v) { return sqlite3_value_blob(v); }
static inline int sx_value_bytes(sqlite3_value *v) { return sqlite3_value_bytes(v); }
static inline const char *sx_errmsg(sqlite3 *db) { return sqlite3_errmsg(db); }
static inline int sx_extended_errcode(sqlite3 *db) { return sqlite3_extended_errcode(db); }
/* SQL functions in C (the date filter): no Python call per row, no GIL on the stepping
 * thread.  `data` is owned by the connection from here on (freed with `destroy`). */
typedef void (*sx_sql_fn)(sqlite3_context *, int, sqlite3_value **);
static inline int sx_create_function(sqlite3 *db, const char *name, int nargs, void *data,
                                     sx_sql_fn fn, void (*destroy)(void *))
{
    return sqlite3_create_function_v2(db, name, nargs, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                      data, fn, 0, 0, destroy);
}
static inline void *sx_user_data(sqlite3_context *c) { return sqlite3_user_data(c); }
static inline void sx_result_int(sqlite3_context *c, int v) { sqlite3_result_int(c, v); }
static inline const unsigned char *sx_value_text(sqlite3_value *v) { return sqlite3_value_text(v); }

/* Safe from any thread: a running step returns SQLITE_INTERRUPT at its next check. */
static inline void sx_interrupt(sqlite3 *db) { sqlite3_interrupt(db); }

#endif
