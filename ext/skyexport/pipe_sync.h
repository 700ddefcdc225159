/* A mutex and a condition variable for the row pipe (rows/pipe.pxi): the SQLite stepping
 * thread and the encoding thread hand arenas of rows to each other without the GIL.
 * pthreads on POSIX, SRW locks and condition variables on Windows: see platform.h. */
#ifndef SKYEXPORT_PIPE_SYNC_H
#define SKYEXPORT_PIPE_SYNC_H

#include "platform.h"

#endif
