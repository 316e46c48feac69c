/* Group commit: the log flush that makes parked stores durable.
 *
 * Stores commit with DB_TXN_NOSYNC and park their callback. At the end of
 * the loop pass in which the first one was parked, the parked batch is
 * handed to a flusher thread, which calls log_flush() through its own
 * handle on the environment and wakes the loop through a pipe; only then
 * are the batch's callbacks (the SMTP 250s) run. While the disk syncs, the
 * loop goes on reading and committing the next batch, which is flushed as
 * soon as the current flush returns. A callback is never run before the
 * flush that covers its commit has returned.
 *
 * Measured with smtp-source (20 sessions, 4 KB): the flush in the loop
 * thread blocked it ~45% of the time. If the thread cannot be started the
 * flush runs in the loop, as before.
 *
 * Updates (delivery results, deletions) park nothing: they are written to
 * the log file at commit and only wait for the disk on the sync timer or
 * on the next store's flush, whichever is first. Flushing them at the end
 * of every loop pass, as stores are, cost a flush to a Postfix primary
 * three quarters of the daemon's CPU in fdatasync, against the primary's
 * own fsyncs on the same disk. */
#include "queue_private.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

/* A power loss repeats at most this much of the deliveries (Postfix does
 * not sync its deletions at all); 10 syncs a second cost nothing. */
#define QUEUE_UPDATE_SYNC_MS 100

struct qflusher {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool request;                /* loop -> thread: flush now */
    bool stop;
    int ret;                     /* thread -> loop: log_flush result */
    uint64_t usec;               /* ... and how long it took */
    DB_ENV *env;                 /* the thread's own environment handle */
    int pipefd[2];               /* thread -> loop wakeup */
    struct event *done_ev;
    struct queue_parked *inflight;
    size_t ninflight;
    bool busy;                   /* a flush is under way */
};

static uint64_t now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int flush_errno(int ret)
{
    if (ret == 0)
        return 0;
    return ret == ENOSPC || ret == EDQUOT ? ENOSPC : EIO;
}

static void run_batch(struct queue *q, struct queue_parked *batch, size_t n,
                      int ret, uint64_t usec)
{
    q->st.flush_usec += usec;
    q->st.flushes++;
    if (n > q->st.max_batch)
        q->st.max_batch = n;
    if (ret != 0)
        log_err("queue: log flush for %zu messages failed: %s", n, db_strerror(ret));
    /* After a failed flush some of these may still be on disk: the client
     * then retries and we deliver twice, never lose. */
    for (size_t i = 0; i < n; i++)
        batch[i].cb(batch[i].arg, flush_errno(ret));
}

/* Takes the parked batch (a callback run later may park again: that store
 * belongs to the next flush). */
static struct queue_parked *take_parked(struct queue *q, size_t *n)
{
    struct queue_parked *batch = q->park;
    *n = q->npark;
    q->park = NULL;
    q->npark = q->parkcap = 0;
    return batch;
}

/* A flush covers every commit made before it starts, the updates too. */
static void updates_covered(struct queue *q)
{
    q->dirty = false;
    if (q->sync_ev != NULL)
        event_del(q->sync_ev);
}

static void flush_in_loop(struct queue *q)
{
    size_t n;
    updates_covered(q);
    struct queue_parked *batch = take_parked(q, &n);
    uint64_t t0 = now_usec();
    int ret = q->env->log_flush(q->env, NULL);
    run_batch(q, batch, n, ret, now_usec() - t0);
    free(batch);
}

static void flush_start(struct queue *q)
{
    struct qflusher *f = q->flusher;
    updates_covered(q);
    f->inflight = take_parked(q, &f->ninflight);
    f->busy = true;
    pthread_mutex_lock(&f->mu);
    f->request = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Parked stores, or updates whose sync timer has fired (a pending timer
 * means they may wait). */
static bool flush_wanted(const struct queue *q)
{
    return q->npark > 0 || (q->dirty && !evtimer_pending(q->sync_ev, NULL));
}

/* End of the loop pass in which stores were parked, or the sync timer. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct queue *q = arg;
    if (!flush_wanted(q))
        return;
    if (q->flusher == NULL)
        flush_in_loop(q);
    else if (!q->flusher->busy)
        flush_start(q);
    /* else: flush_done_cb starts the next flush when this one returns */
}

static void flush_done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct queue *q = arg;
    struct qflusher *f = q->flusher;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    if (!f->busy)
        return;
    pthread_mutex_lock(&f->mu);
    int ret = f->ret;
    uint64_t usec = f->usec;
    pthread_mutex_unlock(&f->mu);
    struct queue_parked *batch = f->inflight;
    size_t n = f->ninflight;
    f->inflight = NULL;
    f->ninflight = 0;
    f->busy = false;
    run_batch(q, batch, n, ret, usec);
    free(batch);
    if (q->flusher != NULL && flush_wanted(q))
        flush_start(q);
}

static void *flusher_main(void *arg)
{
    struct qflusher *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->request && !f->stop)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop)
            break;
        f->request = false;
        pthread_mutex_unlock(&f->mu);
        uint64_t t0 = now_usec();
        int ret = f->env->log_flush(f->env, NULL);
        uint64_t usec = now_usec() - t0;
        pthread_mutex_lock(&f->mu);
        f->ret = ret;
        f->usec = usec;
        /* A full pipe already holds a wakeup; nothing is lost. */
        if (write(f->pipefd[1], "f", 1) < 0 && errno != EAGAIN)
            break;
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* Berkeley DB's own words on a failed flush (a full disk): logged, not
 * printed raw on stderr. log_err builds each line whole, so it is safe from
 * this thread. */
static void flusher_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
    (void)env;
    (void)pfx;
    log_err("queue: flusher: bdb: %s", msg);
}

/* The thread gets its own handle, joined to the environment the loop
 * opened: handles are not shared across threads without DB_THREAD. */
static DB_ENV *join_env(struct queue *q)
{
    char home[4096];
    DB_ENV *e;
    if (snprintf(home, sizeof home, "%s/db", q->spool) >= (int)sizeof home
        || db_env_create(&e, 0) != 0)
        return NULL;
    e->set_errcall(e, flusher_errcall);
    int ret = e->open(e, home, DB_INIT_LOG | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_MPOOL, 0600);
    if (ret != 0) {
        queue_db_error("flusher environment join", NULL, ret);
        e->close(e, 0);
        return NULL;
    }
    return e;
}

static void flusher_free(struct qflusher *f)
{
    if (f->done_ev != NULL)
        event_free(f->done_ev);
    if (f->env != NULL)
        f->env->close(f->env, 0);
    for (int i = 0; i < 2; i++)
        if (f->pipefd[i] >= 0)
            close(f->pipefd[i]);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f->inflight);
    free(f);
}

static struct qflusher *flusher_new(struct queue *q)
{
    struct qflusher *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->pipefd[0] = f->pipefd[1] = -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (pipe2(f->pipefd, O_NONBLOCK | O_CLOEXEC) != 0 || (f->env = join_env(q)) == NULL)
        goto fail;
    f->done_ev = event_new(q->base, f->pipefd[0], EV_READ | EV_PERSIST, flush_done_cb, q);
    if (f->done_ev == NULL || event_add(f->done_ev, NULL) != 0)
        goto fail;
    if (pthread_create(&f->thread, NULL, flusher_main, f) != 0)
        goto fail;
    return f;
fail:
    flusher_free(f);
    return NULL;
}

int queue_commit_attach(struct queue *q)
{
    q->flush_ev = event_new(q->base, -1, 0, flush_cb, q);
    q->sync_ev = evtimer_new(q->base, flush_cb, q);
    if (q->flush_ev == NULL || q->sync_ev == NULL)
        return -1;
    q->flusher = flusher_new(q);
    if (q->flusher == NULL)
        log_warn("queue: no flusher thread, log flushes run in the event loop");
    return 0;
}

void queue_commit_detach(struct queue *q)
{
    struct qflusher *f = q->flusher;
    if (f != NULL) {
        pthread_mutex_lock(&f->mu);
        f->stop = true;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
        if (f->ninflight > 0)
            log_warn("queue: closing with %zu stores being flushed", f->ninflight);
        for (size_t i = 0; i < f->ninflight; i++)
            f->inflight[i].cb(f->inflight[i].arg, EIO);
        flusher_free(f);
        q->flusher = NULL;
    }
    if (q->flush_ev)
        event_free(q->flush_ev);
    if (q->sync_ev)
        event_free(q->sync_ev);
    q->flush_ev = q->sync_ev = NULL;
    q->dirty = false;            /* queue_close's checkpoint syncs them */
    /* Never flushed by us: the callers learn it (and free what they
     * parked); queue_close's checkpoint may still make the commits durable. */
    for (size_t i = 0; i < q->npark; i++)
        q->park[i].cb(q->park[i].arg, EIO);
    free(q->park);
    q->park = NULL;
    q->npark = q->parkcap = 0;
}

int queue_park_reserve(struct queue *q)
{
    if (q->npark < q->parkcap)
        return 0;
    size_t cap = q->parkcap ? q->parkcap * 2 : 64;
    struct queue_parked *p = realloc(q->park, cap * sizeof *p);
    if (!p)
        return -1;
    q->park = p;
    q->parkcap = cap;
    return 0;
}

/* Updates need no callback, but should not wait for a checkpoint to
 * reach the disk: each one lost at a power loss is a message delivered
 * twice. */
void queue_sync_later(struct queue *q)
{
    if (q->sync_ev == NULL)
        return;
    q->dirty = true;
    if (evtimer_pending(q->sync_ev, NULL))
        return;
    struct timeval tv = { 0, QUEUE_UPDATE_SYNC_MS * 1000 };
    evtimer_add(q->sync_ev, &tv);
}

void queue_park(struct queue *q, queue_stored_cb cb, void *arg)
{
    if (q->npark == 0)
        event_active(q->flush_ev, EV_TIMEOUT, 0);
    q->park[q->npark].cb = cb;
    q->park[q->npark].arg = arg;
    q->npark++;
}
