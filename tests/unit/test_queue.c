/* Unit tests for the Berkeley DB queue: store through a real event loop,
 * reopen, read back byte for byte; ids; group commit counters; read-only
 * opening; orphan bodies; corrupt records; the schedule index; and that
 * every acknowledged message survives a kill -9. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <db.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "queue.h"
#include "queue_private.h"

#define INLINE_MAX (8 * 1024)    /* small, so file bodies stay cheap here */

/* ---- fixtures --------------------------------------------------------- */

struct fix {
    char dir[64];
    struct event_base *base;
};

static int rm_cb(const char *path, const struct stat *st, int flag,
                 struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/test_queue.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->base = event_base_new();
    *state = f;
    return f->base ? 0 : -1;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    event_base_free(f->base);
    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static char *spool_of(struct fix *f)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/spool", f->dir);
    return path;
}

static struct queue *open_rw(struct fix *f)
{
    struct queue_opts o = { .inline_max = INLINE_MAX };
    struct queue *q = queue_open(spool_of(f), &o);
    assert_non_null(q);
    assert_int_equal(queue_attach(q, f->base), 0);
    return q;
}

static struct queue *open_ro(struct fix *f)
{
    struct queue_opts o = { .readonly = true };
    return queue_open(spool_of(f), &o);
}

/* ---- messages made up for the tests ----------------------------------- */

/* Deterministic body of LEN bytes for message number N. */
static struct evbuffer *make_body(unsigned n, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    uint32_t x = 2463534242u + n;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        unsigned char c = (unsigned char)x;
        evbuffer_add(b, &c, 1);
    }
    return b;
}

static size_t body_len(unsigned n)
{
    static const size_t sizes[] = { 0, 1, 1000, INLINE_MAX, INLINE_MAX + 1,
                                    200000, 4096 };
    return sizes[n % (sizeof sizes / sizeof sizes[0])];
}

struct msg {
    struct queue_envelope env;
    struct queue_rcpt rcpt[3];
    char addr[3][64];
    char sender[64];
};

static void make_msg(struct queue *q, struct msg *m, unsigned n)
{
    memset(m, 0, sizeof *m);
    queue_new_id(q, m->env.id);
    if (n % 5)                   /* every fifth has the null sender <> */
        snprintf(m->sender, sizeof m->sender, "s%u@example.net", n);
    m->env.sender = m->sender;
    m->env.helo = n % 4 ? "mx.example.net" : NULL;
    m->env.client_addr = "192.0.2.7";
    m->env.client_name = "unknown";
    m->env.arrival = 1700000000 + n;
    m->env.flags = n & 3;
    m->env.nrcpt = 1 + n % 3;
    m->env.rcpt = m->rcpt;
    for (size_t i = 0; i < m->env.nrcpt; i++) {
        snprintf(m->addr[i], sizeof m->addr[i], "r%zu.%u@example.org", i, n);
        m->rcpt[i].addr = m->addr[i];
        m->rcpt[i].orcpt = i == 1 ? "rfc822;orig@example.org" : NULL;
        m->rcpt[i].state = (enum rcpt_state)((n + i) % 4);
        m->rcpt[i].attempts = (uint32_t)i;
        m->rcpt[i].next_attempt = 1700000000 + (int64_t)(n * 7 % 13);
        m->rcpt[i].last_error = i == 2 ? "451 4.3.0 try later" : NULL;
    }
}

static void assert_str_eq_null(const char *a, const char *b)
{
    if (!a || !b)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void assert_env_eq(const struct queue_envelope *a,
                          const struct queue_envelope *b)
{
    assert_string_equal(a->id, b->id);
    assert_str_eq_null(a->sender, b->sender);
    assert_str_eq_null(a->helo, b->helo);
    assert_str_eq_null(a->client_addr, b->client_addr);
    assert_str_eq_null(a->client_name, b->client_name);
    assert_int_equal(a->arrival, b->arrival);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->nrcpt, b->nrcpt);
    for (size_t i = 0; i < a->nrcpt; i++) {
        assert_string_equal(a->rcpt[i].addr, b->rcpt[i].addr);
        assert_str_eq_null(a->rcpt[i].orcpt, b->rcpt[i].orcpt);
        assert_str_eq_null(a->rcpt[i].last_error, b->rcpt[i].last_error);
        assert_int_equal(a->rcpt[i].state, b->rcpt[i].state);
        assert_int_equal(a->rcpt[i].attempts, b->rcpt[i].attempts);
        assert_int_equal(a->rcpt[i].next_attempt, b->rcpt[i].next_attempt);
    }
}

static void assert_buf_eq(struct evbuffer *a, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(a);
    assert_int_equal(n, evbuffer_get_length(b));
    if (n)
        assert_memory_equal(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n);
}

/* ---- storing ------------------------------------------------------------ */

struct acks {
    int done, errors;
    bool in_store;               /* set while queue_store runs */
};

static void stored_cb(void *arg, int error)
{
    struct acks *a = arg;
    assert_false(a->in_store);   /* never called from inside queue_store */
    a->done++;
    if (error)
        a->errors++;
}

static void store_one(struct queue *q, struct msg *m, unsigned n,
                      struct acks *a)
{
    struct evbuffer *b = make_body(n, body_len(n));
    make_msg(q, m, n);
    a->in_store = true;
    assert_int_equal(queue_store(q, &m->env, b, stored_cb, a), 0);
    a->in_store = false;
    /* Not consumed. */
    assert_int_equal(evbuffer_get_length(b), body_len(n));
    evbuffer_free(b);
}

static void run_until(struct fix *f, struct acks *a, int n)
{
    while (a->done < n)
        assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
}

#define NMSG 60

static void store_many(struct fix *f, struct msg *m, int n)
{
    struct queue *q = open_rw(f);
    struct acks a = { 0 };
    for (int i = 0; i < n; i++)
        store_one(q, &m[i], (unsigned)i, &a);
    assert_int_equal(a.done, 0); /* nothing is acknowledged before a flush */
    run_until(f, &a, n);
    assert_int_equal(a.errors, 0);
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.commits, n);
    assert_int_equal(st.flushes, 1);  /* all in one pass: one flush */
    assert_int_equal(st.max_batch, n);
    queue_close(q);
}

struct walk_state {
    struct msg *m;
    int seen;
    char last[QUEUE_ID_LEN + 1];
};

static int walk_cb(const struct queue_envelope *env, void *arg)
{
    struct walk_state *w = arg;
    assert_true(strcmp(w->last, env->id) < 0);   /* id order */
    strcpy(w->last, env->id);
    assert_env_eq(env, &w->m[w->seen].env);
    assert_int_equal(env->size, body_len((unsigned)w->seen));
    w->seen++;
    return 0;
}

static void check_all(struct queue *q, struct msg *m, int n)
{
    struct walk_state w = { m, 0, "" };
    assert_int_equal(queue_walk(q, walk_cb, &w), 0);
    assert_int_equal(w.seen, n);
    for (int i = 0; i < n; i++) {
        struct queue_envelope env;
        struct evbuffer *got = evbuffer_new();
        struct evbuffer *want = make_body((unsigned)i, body_len((unsigned)i));
        assert_int_equal(queue_get(q, m[i].env.id, &env, got), 0);
        assert_env_eq(&env, &m[i].env);
        assert_buf_eq(got, want);
        queue_envelope_free(&env);
        evbuffer_free(got);
        evbuffer_free(want);
    }
}

static void test_store_reopen(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    store_many(f, m, NMSG);

    struct queue *q = open_rw(f);
    check_all(q, m, NMSG);
    struct queue_envelope env;
    assert_int_equal(queue_get(q, "0000000000000000", &env, NULL), 1);
    assert_int_equal(queue_get(q, "../../etc/passwd", &env, NULL), 1);
    queue_close(q);
}

static void test_readonly(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    assert_null(open_ro(f));     /* nothing there yet */
    store_many(f, m, NMSG);

    struct queue *q = open_ro(f);
    assert_non_null(q);
    check_all(q, m, NMSG);
    assert_int_equal(queue_attach(q, f->base), -1);
    assert_int_equal(errno, EROFS);
    struct evbuffer *b = make_body(0, 10);
    assert_int_equal(queue_store(q, &m[0].env, b, stored_cb, NULL), -1);
    assert_int_equal(errno, EROFS);
    evbuffer_free(b);
    queue_close(q);

    /* Not while the owner has it open, nor a second owner. */
    q = open_rw(f);
    assert_null(open_ro(f));
    struct queue_opts o = { 0 };
    assert_null(queue_open(spool_of(f), &o));
    queue_close(q);
}

/* ---- group commit --------------------------------------------------------- */

struct session {
    struct queue *q;
    struct event *ev;
    struct msg m;
    unsigned n;
    int left, acked;
};

static void session_stored_cb(void *arg, int error);

static void session_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct session *s = arg;
    struct evbuffer *b = make_body(s->n, 100);
    make_msg(s->q, &s->m, s->n);
    assert_int_equal(queue_store(s->q, &s->m.env, b, session_stored_cb, s), 0);
    evbuffer_free(b);
}

/* Like an SMTP session: the next message only after the 250. */
static void session_stored_cb(void *arg, int error)
{
    struct session *s = arg;
    assert_int_equal(error, 0);
    s->acked++;
    if (--s->left > 0)
        event_active(s->ev, EV_READ, 0);
}

static void test_group_commit(void **state)
{
    struct fix *f = *state;
    struct queue *q = open_rw(f);
    enum { NSESS = 10, PER = 5 };
    struct session s[NSESS];
    for (int i = 0; i < NSESS; i++) {
        s[i] = (struct session){ .q = q, .n = (unsigned)i, .left = PER };
        s[i].ev = event_new(f->base, -1, 0, session_cb, &s[i]);
        event_active(s[i].ev, EV_READ, 0);
    }
    /* (The checkpoint timer keeps the loop alive: run it pass by pass.) */
    int acked = 0;
    while (acked < NSESS * PER) {
        assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
        acked = 0;
        for (int i = 0; i < NSESS; i++)
            acked += s[i].acked;
    }
    struct queue_stats st;
    queue_get_stats(q, &st);
    assert_int_equal(st.commits, NSESS * PER);
    /* Every pass commits all sessions, then one flush acknowledges them. */
    assert_int_equal(st.flushes, PER);
    assert_int_equal(st.max_batch, NSESS);
    for (int i = 0; i < NSESS; i++) {
        assert_int_equal(s[i].acked, PER);
        event_free(s[i].ev);
    }
    queue_close(q);
}

/* ---- failures --------------------------------------------------------------- */

static void test_store_errors(void **state)
{
    struct fix *f = *state;
    struct queue_opts o = { .inline_max = INLINE_MAX };
    struct queue *q = queue_open(spool_of(f), &o);
    struct acks a = { 0 };
    struct msg m;
    struct evbuffer *big = make_body(1, INLINE_MAX * 3);
    make_msg(q, &m, 1);
    /* Not attached yet. */
    assert_int_equal(queue_store(q, &m.env, big, stored_cb, &a), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(queue_attach(q, f->base), 0);
    assert_int_equal(queue_attach(q, f->base), -1);

    struct msg bad = m;
    bad.env.nrcpt = 0;
    assert_int_equal(queue_store(q, &bad.env, big, stored_cb, &a), -1);
    assert_int_equal(errno, EINVAL);
    strcpy(bad.env.id, "not/an/id/at/all");
    bad.env.nrcpt = 1;
    assert_int_equal(queue_store(q, &bad.env, big, stored_cb, &a), -1);
    assert_int_equal(errno, EINVAL);

    /* A second store under the same id fails and leaves the first (and its
     * body file) alone. */
    bad = m;
    bad.env.rcpt = bad.rcpt;
    assert_int_equal(queue_store(q, &m.env, big, stored_cb, &a), 0);
    struct evbuffer *small = make_body(2, 10);
    assert_int_equal(queue_store(q, &bad.env, big, stored_cb, &a), -1);
    assert_int_equal(errno, EEXIST);
    assert_int_equal(queue_store(q, &bad.env, small, stored_cb, &a), -1);
    assert_int_equal(errno, EEXIST);
    run_until(f, &a, 1);
    struct queue_envelope env;
    struct evbuffer *got = evbuffer_new();
    assert_int_equal(queue_get(q, m.env.id, &env, got), 0);
    assert_buf_eq(got, big);
    queue_envelope_free(&env);
    evbuffer_free(got);
    evbuffer_free(small);
    evbuffer_free(big);
    queue_close(q);
}

/* A nearly full spool refuses stores with ENOSPC before writing. */
static void test_min_free(void **state)
{
    struct fix *f = *state;
    struct queue_opts o = { .inline_max = INLINE_MAX,
                            .min_free = UINT64_MAX / 2 };
    struct queue *q = queue_open(spool_of(f), &o);
    assert_non_null(q);
    assert_int_equal(queue_attach(q, f->base), 0);
    struct msg m;
    struct evbuffer *big = make_body(1, INLINE_MAX * 3);
    make_msg(q, &m, 1);
    assert_int_equal(queue_store(q, &m.env, big, stored_cb, NULL), -1);
    assert_int_equal(errno, ENOSPC);
    char path[256];
    snprintf(path, sizeof path, "%s/body/%s", spool_of(f), m.env.id);
    assert_int_equal(access(path, F_OK), -1);
    evbuffer_free(big);
    queue_close(q);
}

/* ---- orphans ---------------------------------------------------------------- */

static void test_orphans(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    store_many(f, m, NMSG);
    char path[256];
    snprintf(path, sizeof path, "%s/body/0000000000000000", spool_of(f));
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    snprintf(path, sizeof path, "%s/body/README", spool_of(f));
    fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);

    struct queue *q = open_rw(f);
    snprintf(path, sizeof path, "%s/body/0000000000000000", spool_of(f));
    assert_int_equal(access(path, F_OK), -1);      /* orphan removed */
    snprintf(path, sizeof path, "%s/body/README", spool_of(f));
    assert_int_equal(access(path, F_OK), 0);       /* foreign file kept */
    check_all(q, m, NMSG);                         /* real bodies kept */
    queue_close(q);
}

/* A delivered message's body file must outlive the commit that deletes
 * its record until the log flush that makes that commit durable: a crash
 * in between brings the record back, and it needs its body. */
static void test_body_kept_until_delete_is_durable(void **state)
{
    struct fix *f = *state;
    struct queue *q = open_rw(f);
    struct acks a = { 0 };
    struct msg m[2];
    store_one(q, &m[0], 5, &a);             /* body_len(5) = 200000: a body file */
    store_one(q, &m[1], 12, &a);            /* and one more, deleted outright */
    run_until(f, &a, 2);
    char path[2][256];
    for (int i = 0; i < 2; i++) {
        snprintf(path[i], sizeof path[i], "%.128s/body/%.16s", spool_of(f), m[i].env.id);
        assert_int_equal(access(path[i], F_OK), 0);
    }
    bool gone = false;
    for (uint16_t i = 0; i < m[0].env.nrcpt && !gone; i++) {
        struct queue_rcpt r = m[0].rcpt[i];
        r.state = RCPT_DONE;
        assert_int_equal(queue_rcpt_update(q, m[0].env.id, i, &r, &gone), 0);
    }
    assert_true(gone);
    assert_int_equal(queue_delete(q, m[1].env.id), 0);
    /* committed, not yet flushed: the bodies are still there */
    assert_int_equal(access(path[0], F_OK), 0);
    assert_int_equal(access(path[1], F_OK), 0);
    for (int i = 0; i < 20 && (access(path[0], F_OK) == 0 || access(path[1], F_OK) == 0); i++)
        assert_int_equal(event_base_loop(f->base, EVLOOP_ONCE), 0);
    assert_int_equal(access(path[0], F_OK), -1);
    assert_int_equal(access(path[1], F_OK), -1);
    queue_close(q);
}

static int count_cb(const struct queue_envelope *env, void *arg);

/* Deletions of inline messages (a delivery) park nothing: each loop pass
 * with one used to cost a log flush. They are synced by the update timer
 * (100 ms), one flush for all of them. */
static void test_updates_synced_later(void **state)
{
    struct fix *f = *state;
    enum { N = 20 };
    struct queue *q = open_rw(f);
    struct acks a = { 0 };
    static struct msg m[N];
    for (int i = 0; i < N; i++)
        store_one(q, &m[i], 13, &a);        /* body_len(13): 4096, inline */
    run_until(f, &a, N);
    struct queue_stats st0, st;
    queue_get_stats(q, &st0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(queue_delete(q, m[i].env.id), 0);
        assert_int_equal(q->npark, 0);      /* no flush asked for */
        assert_true(q->dirty);
        assert_true(evtimer_pending(q->sync_ev, NULL));
        assert_true(event_base_loop(f->base, EVLOOP_NONBLOCK) >= 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    queue_get_stats(q, &st);
    /* One flush per pass before (N). Now one per timer period at most; a
     * slow (sanitizer) build may see the timer fire during the loop. */
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(st.flushes - st0.flushes <= (uint64_t)(2 + ms / 100));
    for (int i = 0; i < 200 && (q->dirty || st.flushes == st0.flushes); i++) {
        assert_true(event_base_loop(f->base, EVLOOP_ONCE) >= 0);
        queue_get_stats(q, &st);
    }
    assert_true(st.flushes > st0.flushes);
    assert_false(q->dirty);
    struct queue_envelope env;
    for (int i = 0; i < N; i++)
        assert_int_equal(queue_get(q, m[i].env.id, &env, NULL), 1);
    queue_close(q);
}

/* An update is in the log file when its commit returns: a daemon killed
 * before the sync timer must not bring a delivered message back (it would
 * go out twice). */
static void test_update_survives_kill9(void **state)
{
    struct fix *f = *state;
    struct msg m;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct event_base *base = event_base_new();
        struct queue_opts o = { .inline_max = INLINE_MAX };
        struct queue *q = queue_open(spool_of(f), &o);
        struct acks a = { 0 };
        if (!base || !q || queue_attach(q, base) < 0)
            _exit(2);
        struct evbuffer *b = make_body(13, body_len(13));     /* inline */
        make_msg(q, &m, 13);
        if (queue_store(q, &m.env, b, stored_cb, &a) < 0)
            _exit(3);
        while (a.done < 1)
            event_base_loop(base, EVLOOP_ONCE);
        if (a.errors || queue_delete(q, m.env.id) != 0)
            _exit(4);
        _exit(0);                /* no close, no timer: as SIGKILL would */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    struct queue *q = open_rw(f);
    int seen = 0;
    assert_int_equal(queue_walk(q, count_cb, &seen), 0);
    assert_int_equal(seen, 0);
    queue_close(q);
}

/* ---- records and corruption ------------------------------------------------- */

static void test_ids(void **state)
{
    (void)state;
    struct qid_gen g;
    qid_gen_init(&g);
    char prev[QUEUE_ID_LEN + 1] = "", id[QUEUE_ID_LEN + 1];
    for (int i = 0; i < 100000; i++) {
        qid_next(&g, id);
        assert_true(qid_valid(id));
        assert_true(strcmp(prev, id) < 0);         /* unique and sorted */
        strcpy(prev, id);
    }
    /* An id from the future (clock stepped back): later ids sort after. */
    struct qid_gen g2;
    qid_gen_init(&g2);
    qid_gen_seed(&g2, "Z000000000000000");
    qid_next(&g2, id);
    assert_true(strcmp(id, "Z000000000000000") > 0);
    assert_false(qid_valid("0000000000000O00"));   /* no O */
    assert_false(qid_valid("00000000000000000"));
    assert_false(qid_valid("000000000000000"));
}

static void test_record_truncation(void **state)
{
    (void)state;
    struct queue_envelope env = {
        .sender = "a@b", .helo = "h", .client_addr = NULL,
        .client_name = "unknown", .arrival = -5, .flags = 3,
    };
    size_t hlen = qrec_msg_hlen(&env);
    uint8_t *rec = malloc(hlen);
    struct qmsg_info info = { QBODY_FILE, (uint32_t)hlen, 42, 1 }, got;
    qrec_msg_put_header(rec, hlen, &env, &info);
    struct queue_envelope out;
    assert_int_equal(qrec_msg_decode_header(rec, hlen, &out, &got), 0);
    assert_int_equal(out.arrival, -5);
    assert_null(out.client_addr);
    assert_int_equal(got.size, 42);
    queue_envelope_free(&out);
    for (size_t n = 0; n < hlen; n++) {
        uint8_t *cut = malloc(n ? n : 1);   /* ASan sees any overrun */
        memcpy(cut, rec, n);
        assert_int_equal(qrec_msg_decode_header(cut, n, &out, &got), -1);
        free(cut);
    }
    /* Every single-byte change either decodes or is refused; no crash. */
    for (size_t i = 0; i < hlen; i++) {
        for (int bit = 0; bit < 8; bit++) {
            rec[i] ^= (uint8_t)(1 << bit);
            if (qrec_msg_decode_header(rec, hlen, &out, &got) == 0)
                queue_envelope_free(&out);
            rec[i] ^= (uint8_t)(1 << bit);
        }
    }
    free(rec);

    struct queue_rcpt r = { .addr = "x@y", .orcpt = NULL, .state = RCPT_HELD,
                            .attempts = 7, .next_attempt = -1,
                            .last_error = "550" }, back;
    size_t len;
    uint8_t *rr = qrec_rcpt_encode(&r, &len);
    assert_int_equal(qrec_rcpt_decode(rr, len, &back), 0);
    assert_int_equal(back.next_attempt, -1);
    assert_int_equal(back.state, RCPT_HELD);
    assert_null(back.orcpt);
    qrec_rcpt_free(&back);
    for (size_t n = 0; n < len; n++)
        assert_int_equal(qrec_rcpt_decode(rr, n, &back), -1);
    free(rr);
}

/* Opens SPOOL/db directly, as the daemon does, to play with the files. */
static DB_ENV *raw_env(struct fix *f)
{
    char home[256];
    DB_ENV *e;
    snprintf(home, sizeof home, "%s/db", spool_of(f));
    assert_int_equal(db_env_create(&e, 0), 0);
    assert_int_equal(e->open(e, home, DB_CREATE | DB_INIT_TXN | DB_INIT_LOG |
                             DB_INIT_LOCK | DB_INIT_MPOOL | DB_RECOVER, 0600),
                     0);
    return e;
}

static DB *raw_db(DB_ENV *e, const char *file, u_int32_t flags)
{
    DB *db;
    assert_int_equal(db_create(&db, e, 0), 0);
    if (flags)
        assert_int_equal(db->set_flags(db, flags), 0);
    assert_int_equal(db->open(db, NULL, file, NULL, DB_BTREE, DB_AUTO_COMMIT,
                              0), 0);
    return db;
}

static void raw_put(DB *db, const void *k, size_t klen, const void *d,
                    size_t dlen)
{
    DBT key = { .data = (void *)k, .size = (u_int32_t)klen };
    DBT data = { .data = (void *)d, .size = (u_int32_t)dlen };
    assert_int_equal(db->put(db, NULL, &key, &data, 0), 0);
}

static int count_cb(const struct queue_envelope *env, void *arg)
{
    (void)env;
    (*(int *)arg)++;
    return 0;
}

static void test_corrupt_records(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    store_many(f, m, NMSG);

    DB_ENV *e = raw_env(f);
    DB *msgs = raw_db(e, "messages.db", 0), *rcpts = raw_db(e, "recipients.db", 0);
    raw_put(msgs, m[3].env.id, QUEUE_ID_LEN, "\x01\x00\x00\x00\xff\xff", 6);
    uint8_t k[QREC_RKEY_LEN];
    qrec_rcpt_key(k, m[5].env.id, 0);
    raw_put(rcpts, k, sizeof k, "\x01\x00\x00\x00\x00\x00\x00\x01"
                                "\x00\x00\x00\x00\x00\x00\x00\x00"
                                "\x7f\xff\xff\xff", 20);
    raw_put(msgs, "short", 5, "x", 1);
    msgs->close(msgs, 0);
    rcpts->close(rcpts, 0);
    e->close(e, 0);

    struct queue *q = open_rw(f);
    struct queue_envelope env;
    assert_int_equal(queue_get(q, m[3].env.id, &env, NULL), -1);
    assert_int_equal(queue_get(q, m[5].env.id, &env, NULL), -1);
    assert_int_equal(queue_get(q, m[4].env.id, &env, NULL), 0);
    queue_envelope_free(&env);
    int seen = 0;
    assert_int_equal(queue_walk(q, count_cb, &seen), -1);  /* reported... */
    assert_int_equal(seen, NMSG - 2);                       /* ...and skipped */
    queue_close(q);
}

static u_int32_t msgs_pagesize(struct fix *f)
{
    DB_ENV *e = raw_env(f);
    DB *msgs = raw_db(e, "messages.db", 0);
    u_int32_t size = 0;
    assert_int_equal(msgs->get_pagesize(msgs, &size), 0);
    msgs->close(msgs, 0);
    e->close(e, 0);
    return size;
}

/* A new spool gets 64 KB message pages; one made with another page size
 * keeps it and still works: BDB fixes the size when the file is created. */
static void test_page_size(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    store_many(f, m, NMSG);
    assert_int_equal(msgs_pagesize(f), 64 * 1024);
}

static void test_old_page_size(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    char path[256];
    assert_int_equal(mkdir(spool_of(f), 0700), 0);
    snprintf(path, sizeof path, "%s/db", spool_of(f));
    assert_int_equal(mkdir(path, 0700), 0);
    DB_ENV *e = raw_env(f);
    DB *db;
    assert_int_equal(db_create(&db, e, 0), 0);
    assert_int_equal(db->set_pagesize(db, 4096), 0);
    assert_int_equal(db->open(db, NULL, "messages.db", NULL, DB_BTREE,
                              DB_CREATE | DB_AUTO_COMMIT, 0600), 0);
    db->close(db, 0);
    e->close(e, 0);

    store_many(f, m, NMSG);
    struct queue *q = open_rw(f);
    check_all(q, m, NMSG);
    queue_close(q);
    assert_int_equal(msgs_pagesize(f), 4096);
}

/* The schedule index holds deferred and active recipients only, in time
 * order. */
static void test_schedule_index(void **state)
{
    struct fix *f = *state;
    static struct msg m[NMSG];
    store_many(f, m, NMSG);
    size_t due = 0;
    for (int i = 0; i < NMSG; i++)
        for (size_t j = 0; j < m[i].env.nrcpt; j++)
            due += m[i].rcpt[j].state == RCPT_DEFERRED ||
                   m[i].rcpt[j].state == RCPT_ACTIVE;

    DB_ENV *e = raw_env(f);
    DB *sched = raw_db(e, "schedule.db", DB_DUP | DB_DUPSORT);
    DBC *c;
    assert_int_equal(sched->cursor(sched, NULL, &c, 0), 0);
    DBT key = { .flags = DB_DBT_REALLOC }, data = { .flags = DB_DBT_REALLOC };
    uint8_t prev[8 + QREC_RKEY_LEN] = { 0 }, cur[sizeof prev];
    size_t n = 0;
    while (c->get(c, &key, &data, DB_NEXT) == 0) {
        assert_int_equal(key.size, 8);
        assert_int_equal(data.size, QREC_RKEY_LEN);
        memcpy(cur, key.data, 8);
        memcpy(cur + 8, data.data, QREC_RKEY_LEN);
        assert_true(memcmp(prev, cur, sizeof cur) < 0);
        memcpy(prev, cur, sizeof cur);
        n++;
    }
    assert_int_equal(n, due);
    free(key.data);
    free(data.data);
    c->close(c);
    sched->close(sched, 0);
    e->close(e, 0);
}

/* ---- kill -9 ---------------------------------------------------------------- */

struct crash_writer {
    struct queue *q;
    struct event *ev;
    unsigned n;
};

struct crash_ack {               /* what the child reports per 250 */
    char id[QUEUE_ID_LEN];
    unsigned n;
};

static int crash_fd = -1;

static void crash_stored_cb(void *arg, int error)
{
    struct crash_ack *a = arg;
    if (error == 0 && write(crash_fd, a, sizeof *a) != (ssize_t)sizeof *a)
        _exit(3);
    free(a);
}

static void crash_batch_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct crash_writer *w = arg;
    for (int i = 0; i < 8; i++, w->n++) {
        struct msg m;
        struct evbuffer *b = make_body(w->n, body_len(w->n));
        make_msg(w->q, &m, w->n);
        struct crash_ack *a = malloc(sizeof *a);
        memcpy(a->id, m.env.id, QUEUE_ID_LEN);
        a->n = w->n;
        if (queue_store(w->q, &m.env, b, crash_stored_cb, a) < 0)
            _exit(4);
        evbuffer_free(b);
    }
    /* A zero timer, not event_active: the loop must poll between batches
     * or the flusher's wakeup would never be read. */
    static const struct timeval zero = { 0, 0 };
    event_add(w->ev, &zero);
}

static void crash_child(struct fix *f, int fd)
{
    crash_fd = fd;
    struct event_base *base = event_base_new();
    struct queue_opts o = { .inline_max = INLINE_MAX };
    struct queue *q = queue_open(spool_of(f), &o);
    if (!base || !q || queue_attach(q, base) < 0)
        _exit(2);
    struct crash_writer w = { q, NULL, 0 };
    w.ev = evtimer_new(base, crash_batch_cb, &w);
    event_active(w.ev, EV_TIMEOUT, 0);
    event_base_dispatch(base);
    _exit(5);
}

static void test_kill9(void **state)
{
    struct fix *f = *state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        crash_child(f, p[1]);
    }
    close(p[1]);
    enum { WANT = 300 };
    static struct crash_ack acked[WANT];
    for (int i = 0; i < WANT; i++) {
        size_t got = 0;
        while (got < sizeof acked[i]) {
            ssize_t r = read(p[0], (char *)&acked[i] + got,
                             sizeof acked[i] - got);
            assert_true(r > 0);
            got += (size_t)r;
        }
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(p[0]);

    /* The files lack what is only in the log: offline readers must wait
     * for a recovery. */
    assert_null(open_ro(f));
    struct queue *q = open_rw(f);
    for (int i = 0; i < WANT; i++) {
        char id[QUEUE_ID_LEN + 1];
        memcpy(id, acked[i].id, QUEUE_ID_LEN);
        id[QUEUE_ID_LEN] = '\0';
        struct queue_envelope env;
        struct evbuffer *got = evbuffer_new();
        struct evbuffer *want = make_body(acked[i].n, body_len(acked[i].n));
        assert_int_equal(queue_get(q, id, &env, got), 0);
        assert_buf_eq(got, want);
        queue_envelope_free(&env);
        evbuffer_free(got);
        evbuffer_free(want);
    }
    queue_close(q);
    q = open_ro(f);
    assert_non_null(q);
    int seen = 0;
    assert_int_equal(queue_walk(q, count_cb, &seen), 0);
    assert_true(seen >= WANT);
    queue_close(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_record_truncation),
        cmocka_unit_test_setup_teardown(test_store_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_kept_until_delete_is_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_updates_synced_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_survives_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphans, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_page_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_page_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_schedule_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
