/* Unit tests for recipient verification by callout (verify.c) and its cache
 * (queue_cache.c): a scripted fake primary listens on 127.0.0.1 in the same
 * event loop, the cache lives in a real queue in a temporary spool.
 *
 * The fake primary answers RCPT by the first letter of the address:
 *   a 250, b 550 5.1.1, c 450, d 250 after 300 ms, e never, other 250. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "queue.h"
#include "verify.h"

/* ---- the fake primary ------------------------------------------------- */

enum greet { GREET_OK, GREET_SPLIT, GREET_REJECT, GREET_SILENT,
             GREET_GARBAGE };

struct fake;

struct later {                   /* a write made after a delay */
    struct later *next;
    struct fconn *c;
    struct event *ev;
    char text[256];
};

struct fconn {
    struct fconn *next;
    struct fake *f;
    struct bufferevent *bev;
    struct later *later;
    bool closing;                /* free once the output is written */
};

struct fake {
    struct event_base *base;
    struct evconnlistener *l;
    int port;
    enum greet greet;
    int conns, rcpts, quits, utf8;
    struct fconn *list;
};

static void fconn_free(struct fconn *c)
{
    struct fconn **p = &c->f->list;
    while (*p != c)
        p = &(*p)->next;
    *p = c->next;
    while (c->later) {
        struct later *l = c->later;
        c->later = l->next;
        event_free(l->ev);
        free(l);
    }
    bufferevent_free(c->bev);
    free(c);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct later *l = arg;
    struct fconn *c = l->c;
    struct later **p = &c->later;
    while (*p != l)
        p = &(*p)->next;
    *p = l->next;
    bufferevent_write(c->bev, l->text, strlen(l->text));
    event_free(l->ev);
    free(l);
}

static void send_later(struct fconn *c, int ms, const char *text)
{
    struct later *l = calloc(1, sizeof *l);
    assert_non_null(l);
    l->c = c;
    snprintf(l->text, sizeof l->text, "%s", text);
    l->ev = evtimer_new(c->f->base, later_cb, l);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(l->ev, &tv);
    l->next = c->later;
    c->later = l;
}

static void say(struct fconn *c, const char *text)
{
    bufferevent_write(c->bev, text, strlen(text));
}

static void fconn_read(struct bufferevent *bev, void *arg)
{
    struct fconn *c = arg;
    char *line;
    size_t n;
    while ((line = evbuffer_readln(bufferevent_get_input(bev), &n,
                                   EVBUFFER_EOL_CRLF))) {
        if (strncasecmp(line, "EHLO ", 5) == 0) {
            if (c->f->greet == GREET_SPLIT) {
                say(c, "250-fake.test\r\n250-PIPE");
                send_later(c, 30, "LINING\r\n250 SMTPUTF8\r\n");
            } else {
                say(c, "250-fake.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
            }
        } else if (strncasecmp(line, "MAIL FROM:<>", 12) == 0) {
            c->f->utf8 += strcmp(line + 12, " SMTPUTF8") == 0;
            say(c, "250 2.1.0 Ok\r\n");
        } else if (strncasecmp(line, "RCPT TO:<", 9) == 0) {
            c->f->rcpts++;
            switch (line[9] | 0x20) {
            case 'b':
                say(c, "550 5.1.1 <b@example.org>: Recipient address "
                       "rejected: User unknown\r\n");
                break;
            case 'c':
                say(c, "450 4.2.0 <c@example.org>: try again later\r\n");
                break;
            case 'd':
                send_later(c, 300, "250 2.1.5 Ok (slowly)\r\n");
                break;
            case 'e':
                break;
            default:
                say(c, "250 2.1.5 Ok\r\n");
            }
        } else if (strcasecmp(line, "QUIT") == 0) {
            c->f->quits++;
            say(c, "221 2.0.0 Bye\r\n");
            c->closing = true;
        } else {
            say(c, "500 5.5.1 what?\r\n");
        }
        free(line);
    }
}

static void fconn_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct fconn *c = arg;
    if (c->closing)
        fconn_free(c);
}

static void fconn_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    fconn_free(arg);
}

static void fake_accept(struct evconnlistener *l, evutil_socket_t fd,
                        struct sockaddr *sa, int len, void *arg)
{
    (void)l;
    (void)sa;
    (void)len;
    struct fake *f = arg;
    struct fconn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->f = f;
    c->bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, fconn_read, fconn_write, fconn_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = f->list;
    f->list = c;
    f->conns++;
    switch (f->greet) {
    case GREET_OK:
        say(c, "220 fake.test ESMTP\r\n");
        break;
    case GREET_SPLIT:            /* one reply in four writes, 30 ms apart */
        say(c, "220-fake.test");
        send_later(c, 30, " ESMTP here\r\n22");
        send_later(c, 60, "0-second line\r\n");
        send_later(c, 90, "220 ready\r\n");
        break;
    case GREET_REJECT:
        say(c, "554 5.3.2 not now\r\n");
        break;
    case GREET_SILENT:
        break;
    case GREET_GARBAGE:
        say(c, "hello there\r\n");
        break;
    }
}

/* Listens on 127.0.0.1:PORT (0 = any free port). */
static struct fake *fake_new(struct event_base *base, enum greet g, int port)
{
    struct fake *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->base = base;
    f->greet = g;
    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    f->l = evconnlistener_new_bind(base, fake_accept, f,
                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                   16, (struct sockaddr *)&sin, sizeof sin);
    assert_non_null(f->l);
    socklen_t sl = sizeof sin;
    getsockname(evconnlistener_get_fd(f->l), (struct sockaddr *)&sin, &sl);
    f->port = ntohs(sin.sin_port);
    return f;
}

/* The primary goes away: listener and connections. */
static void fake_free(struct fake *f)
{
    if (!f)
        return;
    while (f->list)
        fconn_free(f->list);
    evconnlistener_free(f->l);
    free(f);
}

/* A port on which nothing listens (connections are refused). */
static int refused_port(struct event_base *base)
{
    struct fake *f = fake_new(base, GREET_OK, 0);
    int port = f->port;
    fake_free(f);
    return port;
}

/* ---- fixture ----------------------------------------------------------- */

struct fix {
    char dir[64];
    struct event_base *base;
    struct queue *q;
    struct bmx_config cfg;
    struct bmx_domain dom;
    char *prim[3];
    char primbuf[3][64];
    struct verify *v;
    struct event *stop;
    int outstanding;
};

static int rm_cb(const char *path, const struct stat *st, int flag,
                 struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static char *spool_of(struct fix *f)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/spool", f->dir);
    return path;
}

static int setup(void **state)
{
    struct fix *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/test_verify.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    f->base = event_base_new();
    f->stop = evtimer_new(f->base, stop_cb, f->base);
    struct queue_opts o = { .cache_bytes = 1 << 20, .min_free = 1 };
    f->q = queue_open(spool_of(f), &o);
    if (!f->q || queue_attach(f->q, f->base) < 0)
        return -1;
    f->cfg.hostname = "backup.test";
    f->cfg.limits.command_timeout = 2;
    f->cfg.queue.mx_port = 25;
    f->dom.name = "example.org";
    f->dom.verify = true;
    f->dom.verify_ttl = 31 * 86400;
    f->dom.primary.v = f->prim;
    for (int i = 0; i < 3; i++)
        f->prim[i] = f->primbuf[i];
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fix *f = *state;
    verify_free(f->v);
    queue_close(f->q);
    event_free(f->stop);
    event_base_free(f->base);
    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Sets the domain's primaries ("127.0.0.1:PORT" for a number). */
static void primaries(struct fix *f, size_t n, ...)
{
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        const char *s = va_arg(ap, const char *);
        snprintf(f->primbuf[i], sizeof f->primbuf[i], "%s", s);
    }
    va_end(ap);
    f->dom.primary.n = n;
}

static const char *local(int port)
{
    static char buf[4][32];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "127.0.0.1:%d", port);
    return buf[k];
}

static void make_verify(struct fix *f)
{
    f->v = verify_new(f->base, &f->cfg, f->q);
    assert_non_null(f->v);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the loop for MS milliseconds, or until every request started with
 * start() has been answered. */
static void run(struct fix *f, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(f->stop, &tv);
    if (f->outstanding > 0)
        event_base_dispatch(f->base);
    evtimer_del(f->stop);
}

/* Runs the loop for exactly MS milliseconds. */
static void run_for(struct fix *f, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(f->stop, &tv);
    event_base_dispatch(f->base);
    evtimer_del(f->stop);
}

struct res {
    struct fix *f;
    int calls;
    enum verify_result r;
};

static void res_cb(void *arg, enum verify_result r)
{
    struct res *x = arg;
    x->calls++;
    x->r = r;
    if (--x->f->outstanding == 0)
        event_base_loopbreak(x->f->base);
}

static struct verify_req *start(struct fix *f, const char *addr,
                                struct res *x)
{
    memset(x, 0, sizeof *x);
    x->f = f;
    f->outstanding++;
    struct verify_req *r = verify_start(f->v, &f->dom, addr, res_cb, x);
    assert_non_null(r);
    assert_int_equal(x->calls, 0);   /* never from inside verify_start */
    return r;
}

/* Verifies one address and returns the result; *SECS how long it took. */
static enum verify_result check(struct fix *f, const char *addr, double *secs)
{
    struct res x;
    double t0 = now_s();
    start(f, addr, &x);
    run(f, 10000);
    assert_int_equal(x.calls, 1);
    if (secs)
        *secs = now_s() - t0;
    return x.r;
}

static int cached(struct fix *f, const char *key, struct queue_cache_entry *e)
{
    struct queue_cache_entry tmp;
    return queue_cache_get(f->q, key, e ? e : &tmp);
}

static void put(struct fix *f, const char *key, int value, int64_t age,
                int64_t left)
{
    int64_t now = time(NULL);
    struct queue_cache_entry e = { .value = value, .stored = now - age,
                                   .expires = now + left };
    assert_int_equal(queue_cache_put(f->q, key, &e), 0);
}

/* ---- tests ------------------------------------------------------------- */

static void test_verdicts(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    int64_t now = time(NULL);

    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
    assert_int_equal(check(f, "c@example.org", NULL), VERIFY_UNAVAILABLE);
    assert_int_equal(p->rcpts, 3);
    assert_int_equal(p->conns, 3);

    struct queue_cache_entry e;
    assert_int_equal(cached(f, "a@example.org", &e), 0);
    assert_int_equal(e.value, 1);
    assert_true(e.stored >= now && e.stored <= now + 2);
    assert_int_equal(e.expires - e.stored, 31 * 86400);
    assert_int_equal(cached(f, "b@example.org", &e), 0);
    assert_int_equal(e.value, 0);
    assert_int_equal(e.expires - e.stored, 3600);
    assert_int_equal(cached(f, "c@example.org", NULL), 1);

    /* Fresh entries answer at once, in any case of the address. */
    assert_int_equal(check(f, "A@Example.ORG", NULL), VERIFY_OK);
    assert_int_equal(check(f, "b@EXAMPLE.org", NULL), VERIFY_UNKNOWN);
    assert_int_equal(p->rcpts, 3);

    run_for(f, 100);             /* the QUITs */
    assert_int_equal(p->quits, 3);
    assert_null(p->list);        /* every callout connection was closed */
    fake_free(p);
}

static void test_cache_while_down(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
    assert_int_equal(check(f, "c@example.org", NULL), VERIFY_UNAVAILABLE);
    run_for(f, 50);
    fake_free(p);                /* the primary goes down */

    put(f, "old@example.org", 1, 5 * 86400, 20 * 86400);  /* stale, valid */
    double t;
    assert_int_equal(check(f, "a@example.org", &t), VERIFY_OK);
    assert_int_equal(check(f, "b@example.org", &t), VERIFY_UNKNOWN);
    assert_int_equal(check(f, "c@example.org", &t), VERIFY_UNAVAILABLE);
    assert_true(t < 1.0);
    assert_int_equal(check(f, "old@example.org", &t), VERIFY_OK);
    assert_int_equal(check(f, "new@example.org", &t), VERIFY_UNAVAILABLE);
    assert_true(t < 1.0);
}

/* A stale positive entry is checked again, and the primary's word wins. */
static void test_stale_reverified(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    put(f, "a@example.org", 1, 2 * 86400, 10 * 86400);
    put(f, "b@example.org", 1, 2 * 86400, 10 * 86400);
    put(f, "x@example.org", 1, 3600, 10 * 86400);         /* fresh */
    int64_t now = time(NULL);

    assert_int_equal(check(f, "x@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->rcpts, 0);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
    assert_int_equal(p->rcpts, 2);

    struct queue_cache_entry e;
    assert_int_equal(cached(f, "a@example.org", &e), 0);
    assert_true(e.value == 1 && e.stored >= now);
    assert_int_equal(cached(f, "b@example.org", &e), 0);
    assert_true(e.value == 0 && e.expires - e.stored == 3600);
    run_for(f, 50);
    fake_free(p);
}

static void test_expiry(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    f->dom.verify_ttl = 2;
    make_verify(f);
    /* An expired negative entry does not count. */
    put(f, "n@example.org", 0, 7200, -1);
    assert_int_equal(check(f, "n@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->rcpts, 1);

    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->rcpts, 2);
    run_for(f, 50);
    fake_free(p);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    sleep(2);
    run_for(f, 200);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_UNAVAILABLE);
}

/* Refused at once; then no more callouts for a while (down memory). */
static void test_refused_and_down(void **state)
{
    struct fix *f = *state;
    int port = refused_port(f->base);
    primaries(f, 1, local(port));
    make_verify(f);
    double t;
    assert_int_equal(check(f, "a@example.org", &t), VERIFY_UNAVAILABLE);
    assert_true(t < 0.5);

    /* The primary comes back on that port, but we do not ask it yet. */
    struct fake *p = fake_new(f->base, GREET_OK, port);
    assert_int_equal(check(f, "a2@example.org", &t), VERIFY_UNAVAILABLE);
    assert_true(t < 0.5);
    put(f, "a3@example.org", 1, 5 * 86400, 86400);
    assert_int_equal(check(f, "a3@example.org", &t), VERIFY_OK);
    assert_int_equal(p->conns, 0);
    fake_free(p);
}

static void test_no_primary(void **state)
{
    struct fix *f = *state;
    primaries(f, 0);
    make_verify(f);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_UNAVAILABLE);
    put(f, "a@example.org", 1, 5 * 86400, 86400);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    put(f, "b@example.org", 0, 0, 3600);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
}

static void test_failover(void **state)
{
    struct fix *f = *state;
    struct fake *bad = fake_new(f->base, GREET_REJECT, 0);
    struct fake *good = fake_new(f->base, GREET_OK, 0);
    int port = refused_port(f->base);
    primaries(f, 3, local(port), local(bad->port), local(good->port));
    make_verify(f);
    double t;
    assert_int_equal(check(f, "a@example.org", &t), VERIFY_OK);
    assert_true(t < 1.0);
    assert_int_equal(bad->conns, 1);
    assert_int_equal(bad->rcpts, 0);
    assert_int_equal(good->rcpts, 1);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
    assert_int_equal(good->rcpts, 2);
    run_for(f, 50);
    fake_free(bad);
    fake_free(good);
}

/* "[v6]:port" entries parse; a host name is looked up (here in
 * /etc/hosts) and each of its addresses tried. */
static void test_entry_forms(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    char name[64];
    snprintf(name, sizeof name, "localhost:%d", p->port);
    primaries(f, 3, "[::1]:1", "not a host:", name);
    make_verify(f);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->rcpts, 1);
    run_for(f, 50);
    fake_free(p);
}

static void test_split_multiline(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_SPLIT, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(check(f, "b@example.org", NULL), VERIFY_UNKNOWN);
    run_for(f, 50);
    fake_free(p);
}

static void test_garbage(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_GARBAGE, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    put(f, "a@example.org", 1, 5 * 86400, 86400);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->conns, 1);
    assert_int_equal(check(f, "z@example.org", NULL), VERIFY_UNAVAILABLE);
    fake_free(p);
}

/* An 8-bit address goes with SMTPUTF8 when the primary offers it. */
static void test_smtputf8(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    assert_int_equal(check(f, "a@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->utf8, 0);
    assert_int_equal(check(f, "j\xc3\xb6rg@example.org", NULL), VERIFY_OK);
    assert_int_equal(p->utf8, 1);
    run_for(f, 50);
    fake_free(p);
}

/* A primary that never answers: the timeout (command_timeout 1 s here). */
static void test_timeout(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_SILENT, 0);
    primaries(f, 1, local(p->port));
    f->cfg.limits.command_timeout = 1;
    make_verify(f);
    double t;
    assert_int_equal(check(f, "a@example.org", &t), VERIFY_UNAVAILABLE);
    assert_true(t > 0.8 && t < 3.0);
    fake_free(p);
}

/* No answer to RCPT: the waiter is answered at the deadline from the
 * cache, and the callout ends at its reply timeout. */
static void test_rcpt_silent(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    f->cfg.limits.command_timeout = 1;
    make_verify(f);
    put(f, "e@example.org", 1, 5 * 86400, 86400);
    double t;
    assert_int_equal(check(f, "e@example.org", &t), VERIFY_OK);
    assert_true(t > 0.8 && t < 3.0);
    run_for(f, 1500);
    assert_null(p->list);
    fake_free(p);
}

/* Two requests for one address share one callout. */
static void test_coalesce(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    struct res x, y;
    start(f, "d@example.org", &x);
    start(f, "D@example.org", &y);
    run(f, 5000);
    assert_int_equal(x.calls, 1);
    assert_int_equal(y.calls, 1);
    assert_int_equal(x.r, VERIFY_OK);
    assert_int_equal(y.r, VERIFY_OK);
    assert_int_equal(p->conns, 1);
    assert_int_equal(p->rcpts, 1);
    run_for(f, 50);
    fake_free(p);
}

/* Cancelled before the verdict: no callback, the callout still fills the
 * cache. Cancelled after a cache hit: no callback either. */
static void test_cancel(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    struct res x, y, z;
    struct verify_req *r = start(f, "d@example.org", &x);
    struct verify_req *r2 = start(f, "d@example.org", &z);
    run_for(f, 100);
    assert_int_equal(p->rcpts, 1);
    verify_cancel(r);
    verify_cancel(r2);
    f->outstanding -= 2;
    run_for(f, 600);
    assert_int_equal(x.calls, 0);
    assert_int_equal(z.calls, 0);
    assert_int_equal(p->quits, 1);
    struct queue_cache_entry e;
    assert_int_equal(cached(f, "d@example.org", &e), 0);
    assert_int_equal(e.value, 1);

    r = start(f, "d@example.org", &y);    /* a cache hit, not yet delivered */
    verify_cancel(r);
    f->outstanding--;
    run_for(f, 50);
    assert_int_equal(y.calls, 0);
    verify_cancel(NULL);
    fake_free(p);
}

/* verify_free with a callout in flight and requests waiting. */
static void test_free_in_flight(void **state)
{
    struct fix *f = *state;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 1, local(p->port));
    make_verify(f);
    struct res x, y;
    start(f, "d@example.org", &x);
    start(f, "e@example.org", &y);
    run_for(f, 100);
    verify_free(f->v);
    f->v = NULL;
    run_for(f, 400);
    assert_int_equal(x.calls, 0);
    assert_int_equal(y.calls, 0);
    assert_null(p->list);        /* both connections were closed */
    fake_free(p);
}

/* A name server that never answers: a bound UDP socket nobody reads. */
static int mute_dns(int *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t sl = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A lookup that does not finish: the next primary is tried after the
 * timeout; verify_free with a lookup pending leaks nothing. */
static void test_dns_pending(void **state)
{
    struct fix *f = *state;
    int dport;
    int dfd = mute_dns(&dport);
    char ns[32];
    snprintf(ns, sizeof ns, "127.0.0.1:%d", dport);
    char *nsv[1] = { ns };
    f->cfg.resolver.v = nsv;
    f->cfg.resolver.n = 1;
    f->cfg.limits.command_timeout = 1;
    struct fake *p = fake_new(f->base, GREET_OK, 0);
    primaries(f, 2, "mx.example.org", local(p->port));
    make_verify(f);
    double t;
    assert_int_equal(check(f, "a@example.org", &t), VERIFY_OK);
    assert_true(t > 0.8 && t < 3.0);
    assert_int_equal(p->rcpts, 1);

    primaries(f, 1, "mx2.example.org");
    struct res x;
    start(f, "b@example.org", &x);
    run_for(f, 100);
    verify_free(f->v);
    f->v = NULL;
    f->outstanding = 0;
    run_for(f, 100);
    assert_int_equal(x.calls, 0);
    fake_free(p);
    close(dfd);
}

/* The cache itself: replace, purge in steps, read-only queues. */
static void test_cache_store(void **state)
{
    struct fix *f = *state;
    struct queue_cache_entry e = { .value = 1, .stored = 100, .expires = 200 };
    assert_int_equal(queue_cache_put(f->q, "k@x", &e), 0);
    e.value = 0;
    e.expires = -5;
    assert_int_equal(queue_cache_put(f->q, "k@x", &e), 0);
    struct queue_cache_entry g;
    assert_int_equal(queue_cache_get(f->q, "k@x", &g), 0);
    assert_int_equal(g.value, 0);
    assert_int_equal(g.stored, 100);
    assert_int_equal(g.expires, -5);
    assert_int_equal(queue_cache_get(f->q, "K@x", &g), 1);
    assert_int_equal(queue_cache_get(f->q, "", &g), -1);

    int64_t now = 1000000;
    for (int i = 0; i < 20; i++) {
        char k[32];
        snprintf(k, sizeof k, "u%02d@example.org", i);
        e.value = 1;
        e.expires = i % 2 ? now - i : now + 1;
        assert_int_equal(queue_cache_put(f->q, k, &e), 0);
    }
    char *resume = NULL;
    long total = 0, n;
    int steps = 0;
    do {
        n = queue_cache_purge(f->q, now, 3, &resume);
        assert_true(n >= 0);
        total += n;
        steps++;
    } while (resume);
    assert_int_equal(total, 11);   /* ten odd ones and k@x */
    assert_true(steps >= 7);
    for (int i = 0; i < 20; i++) {
        char k[32];
        snprintf(k, sizeof k, "u%02d@example.org", i);
        assert_int_equal(queue_cache_get(f->q, k, &g), i % 2 ? 1 : 0);
    }

    /* It survives a reopen; read-only queues have no cache. */
    queue_close(f->q);
    f->q = queue_open(spool_of(f), NULL);
    assert_non_null(f->q);
    assert_int_equal(queue_cache_get(f->q, "u00@example.org", &g), 0);
    queue_close(f->q);
    struct queue_opts ro = { .readonly = true };
    f->q = queue_open(spool_of(f), &ro);
    assert_non_null(f->q);
    errno = 0;
    assert_int_equal(queue_cache_get(f->q, "u00@example.org", &g), -1);
    assert_int_equal(errno, EROFS);
    assert_int_equal(queue_cache_put(f->q, "u00@example.org", &e), -1);
    assert_int_equal(queue_cache_purge(f->q, now, 10, &resume), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_verdicts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_while_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_reverified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_and_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_primary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_multiline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smtputf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rcpt_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_coalesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dns_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_store, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
