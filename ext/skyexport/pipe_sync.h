/* A mutex and a condition variable for the row pipe (_pipe.pxi): the SQLite stepping
 * thread and the encoding thread hand arenas of rows to each other without the GIL. */
#ifndef SKYEXPORT_PIPE_SYNC_H
#define SKYEXPORT_PIPE_SYNC_H

#include <pthread.h>
#include <time.h>

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
