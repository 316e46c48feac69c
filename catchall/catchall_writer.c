/* The catch-all writer thread. The loop hands it whole messages; it takes
 * everything waiting as one batch: stages every copy (tmp file written,
 * writeback started), syncs them, links them into new/, syncs each new/
 * once, and hands the batch back through a pipe. A message whose copy
 * fails anywhere has all its copies taken back; the others are unharmed.
 * The loop then logs each copy and runs the callbacks (the 250s). */
#include "catchall_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "mailbox.h"
#include "maildir.h"

#define BATCH_COPIES 128        /* files open at once in a batch */

struct job {
    struct job *next;
    char qid[32];
    char *host, *sender, *body;
    size_t blen, n;
    struct ca_copy *copies;
    struct maildir_staged *st;
    int error;
    ca_done_cb cb;
    void *arg;
};

struct ca_writer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *queued, **queued_tail;
    struct job *done, **done_tail;
    bool stop, started;
    int pipefd[2];
    struct event *ev;
};

/* ---- the thread ------------------------------------------------------- */

static void job_abort(struct job *j, size_t upto, int error)
{
    for (size_t i = 0; i < upto; i++)
        maildir_stage_abort(j->copies[i].mb->maildir, &j->st[i]);
    if (j->error == 0)
        j->error = error;
}

static void stage_job(struct job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        char head[1200];
        int hl = snprintf(head, sizeof head, "Return-Path: <%s>\r\nX-Original-To: %s\r\n",
                          j->sender, j->copies[i].rcpt);
        struct iovec iov[2] = { { head, (size_t)hl }, { j->body, j->blen } };
        if (hl < 0 || (size_t)hl >= sizeof head) {
            job_abort(j, i, ENAMETOOLONG);
            return;
        }
        if (maildir_stage(j->copies[i].mb->maildir, j->host, iov, 2, &j->st[i]) < 0) {
            job_abort(j, i, errno);
            return;
        }
    }
}

static void sync_job(struct job *j)
{
    for (size_t i = 0; i < j->n && j->error == 0; i++)
        if (maildir_stage_sync(&j->st[i]) < 0)
            job_abort(j, j->n, errno);
    for (size_t i = 0; i < j->n && j->error == 0; i++)
        if (maildir_stage_publish(j->copies[i].mb->maildir, &j->st[i]) < 0)
            job_abort(j, j->n, errno);
}

static bool job_uses(const struct job *j, const char *dir)
{
    for (size_t i = 0; i < j->n; i++)
        if (strcmp(j->copies[i].mb->maildir, dir) == 0)
            return true;
    return false;
}

/* Each new/ written to in the batch is synced once; a failure takes back
 * every message with a copy there. */
static void sync_dirs(struct job *batch)
{
    const char **dirs = NULL;
    size_t n = 0, cap = 0;
    for (struct job *j = batch; j != NULL; j = j->next) {
        for (size_t i = 0; i < j->n && j->error == 0; i++) {
            const char *dir = j->copies[i].mb->maildir;
            size_t k = 0;
            while (k < n && strcmp(dirs[k], dir) != 0)
                k++;
            if (k < n)
                continue;
            if (n == cap) {
                const char **more = realloc(dirs, (cap ? 2 * cap : 8) * sizeof *dirs);
                if (more == NULL) {
                    job_abort(j, j->n, ENOMEM);
                    break;
                }
                dirs = more;
                cap = cap ? 2 * cap : 8;
            }
            dirs[n++] = dir;
        }
    }
    for (size_t k = 0; k < n; k++) {
        if (maildir_sync_new(dirs[k]) == 0)
            continue;
        int e = errno;
        for (struct job *j = batch; j != NULL; j = j->next)
            if (j->error == 0 && job_uses(j, dirs[k]))
                job_abort(j, j->n, e);
    }
    free(dirs);
}

static void write_batch(struct job *batch)
{
    for (struct job *j = batch; j != NULL; j = j->next)
        stage_job(j);
    for (struct job *j = batch; j != NULL; j = j->next)
        if (j->error == 0)
            sync_job(j);
    sync_dirs(batch);
}

/* Up to BATCH_COPIES copies (at least one message). */
static struct job *take_batch(struct ca_writer *w)
{
    struct job *batch = w->queued, **tail = &batch;
    size_t copies = 0;
    while (*tail != NULL && (copies == 0 || copies + (*tail)->n <= BATCH_COPIES)) {
        copies += (*tail)->n;
        tail = &(*tail)->next;
    }
    w->queued = *tail;
    if (w->queued == NULL)
        w->queued_tail = &w->queued;
    *tail = NULL;
    return batch;
}

static void *writer_main(void *arg)
{
    struct ca_writer *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->queued == NULL && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->queued == NULL)
            break;
        struct job *batch = take_batch(w);
        pthread_mutex_unlock(&w->mu);
        write_batch(batch);
        pthread_mutex_lock(&w->mu);
        *w->done_tail = batch;
        while (*w->done_tail != NULL)
            w->done_tail = &(*w->done_tail)->next;
        ssize_t r = write(w->pipefd[1], "x", 1);
        (void)r;                /* full pipe: a wakeup is pending anyway */
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* ---- the loop's side ---------------------------------------------------- */

static void job_free(struct job *j)
{
    for (size_t i = 0; i < j->n; i++)
        free(j->copies[i].rcpt);
    free(j->copies);
    free(j->st);
    free(j->host);
    free(j->sender);
    free(j->body);
    free(j);
}

static void job_finish(struct job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        const struct ca_copy *c = &j->copies[i];
        if (j->error != 0) {
            log_warn("%s: to=<%s>, relay=local, mailbox=%s, status=deferred (cannot write %s: %s)",
                     j->qid, c->rcpt, c->mb->name, c->mb->maildir, strerror(j->error));
            continue;
        }
        log_info("%s: to=<%s>, relay=local, mailbox=%s, size=%zu, status=sent (delivered to maildir as %s)",
                 j->qid, c->rcpt, c->mb->name, j->blen, j->st[i].name);
        mailbox_notify(c->mb->maildir);
    }
    j->cb(j->arg, j->error);
    job_free(j);
}

static void run_done(struct ca_writer *w)
{
    pthread_mutex_lock(&w->mu);
    struct job *done = w->done;
    w->done = NULL;
    w->done_tail = &w->done;
    pthread_mutex_unlock(&w->mu);
    while (done != NULL) {
        struct job *next = done->next;
        job_finish(done);
        done = next;
    }
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    run_done(arg);
}

struct ca_writer *ca_writer_new(struct event_base *base)
{
    struct ca_writer *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->queued_tail = &w->queued;
    w->done_tail = &w->done;
    w->pipefd[0] = w->pipefd[1] = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pipe2(w->pipefd, O_NONBLOCK | O_CLOEXEC) < 0
        || (w->ev = event_new(base, w->pipefd[0], EV_READ | EV_PERSIST, done_cb, w)) == NULL
        || event_add(w->ev, NULL) < 0
        || pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        log_err("catch-all writer: cannot start: %s", strerror(errno));
        ca_writer_free(w);
        return NULL;
    }
    w->started = true;
    return w;
}

void ca_writer_free(struct ca_writer *w)
{
    if (w == NULL)
        return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    run_done(w);
    if (w->ev != NULL)
        event_free(w->ev);
    for (int i = 0; i < 2; i++)
        if (w->pipefd[i] >= 0)
            close(w->pipefd[i]);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int ca_writer_submit(struct ca_writer *w, const char *host, const char *qid,
                     const char *sender, char *body, size_t blen,
                     struct ca_copy *copies, size_t n, ca_done_cb cb, void *arg)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return -1;
    j->host = strdup(host);
    j->sender = strdup(sender);
    j->st = calloc(n, sizeof *j->st);
    if (j->host == NULL || j->sender == NULL || j->st == NULL) {
        free(j->host);
        free(j->sender);
        free(j->st);
        free(j);
        errno = ENOMEM;
        return -1;
    }
    snprintf(j->qid, sizeof j->qid, "%s", qid);
    j->body = body;
    j->blen = blen;
    j->copies = copies;
    j->n = n;
    j->cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&w->mu);
    *w->queued_tail = j;
    w->queued_tail = &j->next;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}
