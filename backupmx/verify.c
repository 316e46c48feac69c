/* Recipient verification by callout to the primary.
 *
 * Cache policy (verify.db in the queue's environment, key = the address in
 * lower case, see queue_cache.c):
 *   - the primary said 2xx to RCPT: positive entry for the domain's
 *     verify_ttl (default 31 days);
 *   - it said 5xx to RCPT: negative entry for one hour;
 *   - anything else (4xx, a failed greeting/EHLO/MAIL, timeout, refused
 *     connection, garbage) leaves the cache alone.
 * On a request:
 *   1. an unexpired negative entry answers UNKNOWN at once;
 *   2. an unexpired positive entry younger than VERIFY_FRESH (one day, or
 *      the whole verify_ttl when that is shorter) answers OK at once;
 *   3. otherwise the primary is asked. Its verdict wins (a recipient removed
 *      at the primary turns UNKNOWN within a day); when it gives none, an
 *      unexpired positive entry still answers OK (this is what keeps mail
 *      flowing while the primary is down), else UNAVAILABLE.
 * While every primary of a domain failed less than VERIFY_DOWN seconds ago,
 * or when the domain has no primary configured (MX lookup is not built
 * yet), step 3 answers from the cache without a callout.
 *
 * The callout: connect to the domain's primary entries in order (numeric
 * addresses directly, names through evdns, every address of a name in
 * turn), read the 220 greeting, EHLO, MAIL FROM:<>, RCPT TO:<addr>, QUIT.
 * Any failure before the RCPT reply moves on to the next address/entry.
 * Concurrent requests for one address share one callout. Waiting requests
 * are answered from the cache when no verdict came within the answer
 * deadline; the callout itself goes on and still updates the cache, as it
 * does when its requests are cancelled.
 *
 * Every result reaches its caller through an event made active on the
 * loop, never from inside verify_start(). A request is freed when its
 * callback is called: cancel it only before. verify_free() drops the
 * requests still pending (no callbacks) and closes the callouts; call it
 * before queue_close() and event_base_free(). */
#include "verify.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "log.h"
#include "queue.h"

#define VERIFY_NEG_TTL 3600          /* negative entries */
#define VERIFY_FRESH 86400           /* positive entries trusted without asking */
#define VERIFY_DOWN 60               /* no callouts after all primaries failed */
#define VERIFY_CONNECT_TIMEOUT 10
#define VERIFY_REPLY_TIMEOUT 30
#define VERIFY_ANSWER_DEADLINE 60    /* waiting requests answered from the cache */
#define VERIFY_QUIT_TIMEOUT 5
#define VERIFY_LINE_MAX 4096         /* longest reply line we wait for */
#define VERIFY_REPLY_LINES 100
#define VERIFY_TEXT_MAX 200          /* reply text kept for the log */
#define VERIFY_PURGE_EVERY 600       /* seconds between purge steps */
#define VERIFY_PURGE_STEP 2000       /* entries looked at per step */

enum jstate { J_IDLE, J_RESOLVE, J_CONNECT, J_GREETING, J_EHLO, J_MAIL,
              J_RCPT, J_QUIT };

static const char *const state_names[] = {
    [J_IDLE] = "idle", [J_RESOLVE] = "lookup", [J_CONNECT] = "connect",
    [J_GREETING] = "greeting", [J_EHLO] = "EHLO", [J_MAIL] = "MAIL FROM",
    [J_RCPT] = "RCPT TO", [J_QUIT] = "QUIT",
};

/* The evdns base outlives verify_free() while lookups it cancelled have
 * not called back yet: libevent still touches it then. */
struct vresolver {
    struct event_base *base;
    struct evdns_base *dns;
    unsigned pending;            /* lookups whose callback is still due */
    bool orphan;                 /* verify_free() was called */
};

struct vjob;

struct vdnsctx {                 /* one lookup; freed by its callback */
    struct vresolver *res;
    struct vjob *job;            /* NULL once the job gave it up */
};

struct vdown {                   /* a domain whose primaries all failed */
    struct vdown *next;
    int64_t until;               /* monotonic seconds */
    char domain[];
};

struct verify {
    struct event_base *base;
    const struct bmx_config *cfg;
    struct queue *q;
    struct vresolver *res;       /* made on the first host name */
    struct vjob *jobs;
    struct verify_req *reqs;     /* every request not yet delivered */
    struct vdown *down;
    struct event *purge_ev;
    char *purge_resume;
    struct timeval connect_tv, reply_tv, deadline_tv, quit_tv;
};

struct verify_req {
    struct verify *v;
    struct verify_req *prev, *next;  /* v->reqs */
    struct vjob *job;            /* the callout it waits for, or NULL */
    struct verify_req *wnext;    /* job->waiters */
    struct event *ev;            /* delivers the result */
    enum verify_result result;
    verify_cb cb;
    void *arg;
};

struct vjob {
    struct verify *v;
    struct vjob *prev, *next;    /* v->jobs */
    char *addr;                  /* as given, for RCPT TO */
    char *key;                   /* lower case, for the cache */
    char *domain;
    char **prim;                 /* copies of the domain's primary entries */
    size_t nprim, iprim;
    int64_t ttl;
    struct verify_req *waiters;
    bool answered;               /* the waiters have their result */
    bool verdict;                /* the primary answered RCPT */
    bool utf8;                   /* the address has 8-bit characters */
    bool srv_utf8;               /* the primary announced SMTPUTF8 */
    enum jstate state;
    char host[256];              /* current entry's host and port */
    int port;
    char label[320];             /* "host[ip]:port" for the log */
    struct evutil_addrinfo *ai, *ai_cur;
    struct vdnsctx *dns;
    struct evdns_getaddrinfo_request *dnsreq;
    bool dns_sync, dns_done;
    int dns_err;
    struct bufferevent *bev;
    struct event *timer;         /* connect, reply and QUIT timeouts */
    struct event *deadline;
    int rcode;                   /* the reply being read */
    unsigned rlines;
    char rtext[VERIFY_TEXT_MAX + 1];
};

/* ---- helpers -------------------------------------------------------------- */

static int64_t now_wall(void)
{
    return (int64_t)time(NULL);
}

static int64_t now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

static char *lower_dup(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return d;
}

/* Timeouts come from the defaults above, capped by command_timeout (three
 * times it for the answer deadline), which also makes them test-friendly. */
static struct timeval capped(int64_t def, int64_t cap)
{
    struct timeval tv = { (time_t)(cap > 0 && cap < def ? cap : def), 0 };
    return tv;
}

/* ---- the cache ------------------------------------------------------------ */

enum cached { CACHED_NONE, CACHED_POSITIVE, CACHED_NEGATIVE };

/* The unexpired entry for KEY, if any. */
static enum cached cache_lookup(struct verify *v, const char *key,
                                struct queue_cache_entry *e)
{
    if (!v->q || queue_cache_get(v->q, key, e) != 0 || e->expires <= now_wall())
        return CACHED_NONE;
    return e->value ? CACHED_POSITIVE : CACHED_NEGATIVE;
}

/* What the cache says when the primary gives no verdict; WHY for the log. */
static enum verify_result fallback(struct verify *v, const char *key,
                                   const char **why)
{
    struct queue_cache_entry e;
    switch (cache_lookup(v, key, &e)) {
    case CACHED_POSITIVE:
        *why = "cached positive: accepted";
        return VERIFY_OK;
    case CACHED_NEGATIVE:
        *why = "cached negative: unknown";
        return VERIFY_UNKNOWN;
    default:
        *why = "nothing cached: unavailable";
        return VERIFY_UNAVAILABLE;
    }
}

static const char *cache_store(struct verify *v, const char *key, int value,
                               int64_t ttl)
{
    int64_t now = now_wall();
    struct queue_cache_entry e = { .value = value, .stored = now,
                                   .expires = now + ttl };
    if (!v->q || queue_cache_put(v->q, key, &e) < 0)
        return "not cached";
    return value ? "cached positive" : "cached negative";
}

static void purge_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct verify *v = arg;
    long n = queue_cache_purge(v->q, now_wall(), VERIFY_PURGE_STEP,
                               &v->purge_resume);
    if (n > 0)
        log_debug("verify: removed %ld expired cache entries", n);
}

/* ---- primaries that are down ---------------------------------------------- */

static struct vdown **down_find(struct verify *v, const char *domain)
{
    struct vdown **p = &v->down;
    while (*p && strcmp((*p)->domain, domain) != 0)
        p = &(*p)->next;
    return p;
}

static bool down_now(struct verify *v, const char *domain)
{
    struct vdown **p = down_find(v, domain);
    if (!*p)
        return false;
    if ((*p)->until > now_mono())
        return true;
    struct vdown *d = *p;
    *p = d->next;
    free(d);
    return false;
}

static void down_mark(struct verify *v, const char *domain)
{
    struct vdown **p = down_find(v, domain);
    if (!*p) {
        size_t n = strlen(domain) + 1;
        struct vdown *d = malloc(sizeof *d + n);
        if (!d)
            return;
        memcpy(d->domain, domain, n);
        d->next = NULL;
        *p = d;
        log_warn("verify: %s: no primary answers; callouts suspended for %ds",
                 domain, VERIFY_DOWN);
    }
    (*p)->until = now_mono() + VERIFY_DOWN;
}

static void down_clear(struct verify *v, const char *domain)
{
    struct vdown **p = down_find(v, domain);
    if (*p) {
        struct vdown *d = *p;
        *p = d->next;
        free(d);
    }
}

/* ---- requests ------------------------------------------------------------- */

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct verify_req *r = arg;
    struct verify *v = r->v;
    verify_cb cb = r->cb;
    void *cbarg = r->arg;
    enum verify_result res = r->result;
    if (r->prev)
        r->prev->next = r->next;
    else
        v->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    event_free(r->ev);
    free(r);
    cb(cbarg, res);              /* last: it may free the session, or more */
}

static void req_finish(struct verify_req *r, enum verify_result res)
{
    r->job = NULL;
    r->wnext = NULL;
    r->result = res;
    event_active(r->ev, EV_TIMEOUT, 1);
}

/* ---- the callout ---------------------------------------------------------- */

static void next_target(struct vjob *j);
static void read_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static void job_answer(struct vjob *j, enum verify_result res)
{
    if (j->answered)
        return;
    j->answered = true;
    event_del(j->deadline);
    struct verify_req *w = j->waiters;
    j->waiters = NULL;
    while (w) {
        struct verify_req *next = w->wnext;
        req_finish(w, res);
        w = next;
    }
}

static void job_drop_dns(struct vjob *j)
{
    if (!j->dns)
        return;
    j->dns->job = NULL;          /* its callback only frees it now */
    j->dns = NULL;
    if (j->dnsreq)
        evdns_getaddrinfo_cancel(j->dnsreq);
    j->dnsreq = NULL;
}

static void job_free(struct vjob *j)
{
    struct verify *v = j->v;
    if (j->prev)
        j->prev->next = j->next;
    else
        v->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    job_drop_dns(j);
    if (j->bev)
        bufferevent_free(j->bev);
    if (j->ai)
        evutil_freeaddrinfo(j->ai);
    if (j->timer)
        event_free(j->timer);
    if (j->deadline)
        event_free(j->deadline);
    for (size_t i = 0; i < j->nprim; i++)
        free(j->prim[i]);
    free(j->prim);
    free(j->addr);
    free(j->key);
    free(j->domain);
    free(j);
}

/* No primary gave a verdict: answer from the cache. */
static void job_give_up(struct vjob *j)
{
    const char *why;
    enum verify_result res = fallback(j->v, j->key, &why);
    if (!j->answered)
        log_info("verify: %s: no verdict from a primary of %s; %s", j->addr,
                 j->domain, why);
    down_mark(j->v, j->domain);
    job_answer(j, res);
    job_free(j);
}

static void close_conn(struct vjob *j)
{
    if (j->bev)
        bufferevent_free(j->bev);
    j->bev = NULL;
    evtimer_del(j->timer);
    j->state = J_IDLE;
}

/* This address or entry could not give a verdict: log and try the next. */
static void conn_failed(struct vjob *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn_failed(struct vjob *j, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_warn("verify: %s: primary %s: %s", j->addr, j->label, msg);
    close_conn(j);
    next_target(j);
}

static void arm(struct vjob *j, const struct timeval *tv)
{
    evtimer_add(j->timer, tv);
}

static void reply_reset(struct vjob *j)
{
    j->rcode = 0;
    j->rlines = 0;
    j->rtext[0] = '\0';
}

/* Sends a command and waits for its reply. -1 when it could not be sent. */
static int send_cmd(struct vjob *j, enum jstate next, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int send_cmd(struct vjob *j, enum jstate next, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = evbuffer_add_vprintf(bufferevent_get_output(j->bev), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    j->state = next;
    reply_reset(j);
    arm(j, next == J_QUIT ? &j->v->quit_tv : &j->v->reply_tv);
    return 0;
}

static void label_for(struct vjob *j, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a = sa->sa_family == AF_INET6
        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    evutil_inet_ntop(sa->sa_family, a, ip, sizeof ip);
    bool numeric = strcmp(ip, j->host) == 0;
    bool v6 = sa->sa_family == AF_INET6;
    if (numeric)
        snprintf(j->label, sizeof j->label, v6 ? "[%s]:%d" : "%s:%d", ip,
                 j->port);
    else
        snprintf(j->label, sizeof j->label, "%s[%s]:%d", j->host, ip, j->port);
}

/* 0 when a connection is under way, -1 (logged) when it failed at once. */
static int connect_to(struct vjob *j, const struct sockaddr *sa, int len)
{
    label_for(j, sa);
    j->bev = bufferevent_socket_new(j->v->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!j->bev) {
        log_warn("verify: %s: primary %s: out of memory", j->addr, j->label);
        return -1;
    }
    bufferevent_setcb(j->bev, read_cb, NULL, event_cb, j);
    /* A refusal found at once is still reported through event_cb, later. */
    if (bufferevent_socket_connect(j->bev, sa, len) < 0) {
        int err = EVUTIL_SOCKET_ERROR();
        log_warn("verify: %s: primary %s: connect: %s", j->addr, j->label,
                 evutil_socket_error_to_string(err));
        bufferevent_free(j->bev);
        j->bev = NULL;
        return -1;
    }
    bufferevent_enable(j->bev, EV_READ | EV_WRITE);
    j->state = J_CONNECT;
    reply_reset(j);
    arm(j, &j->v->connect_tv);
    log_debug("verify: %s: connecting to %s", j->addr, j->label);
    return 0;
}

/* "host", "host:port", "[v6]", "[v6]:port" or a bare v6 address. */
static int parse_entry(const char *s, int defport, char host[256], int *port)
{
    const char *end, *p = NULL;
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (!end || (end[1] && end[1] != ':'))
            return -1;
        s++;
        p = end[1] ? end + 2 : NULL;
    } else if (strchr(s, ':') != strrchr(s, ':')) {
        end = s + strlen(s);     /* bare IPv6, no port */
    } else {
        end = strchr(s, ':');
        p = end ? end + 1 : NULL;
        end = end ? end : s + strlen(s);
    }
    size_t n = (size_t)(end - s);
    if (n == 0 || n > 255)
        return -1;
    memcpy(host, s, n);
    host[n] = '\0';
    *port = defport;
    if (p) {
        char *e;
        long v = strtol(p, &e, 10);
        if (*p < '0' || *p > '9' || *e || v < 1 || v > 65535)
            return -1;
        *port = (int)v;
    }
    return 0;
}

static bool numeric_addr(const char *host, int port,
                         struct sockaddr_storage *ss, int *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (evutil_inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *len = sizeof *s4;
        return true;
    }
    if (evutil_inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof *s6;
        return true;
    }
    return false;
}

static void resolver_free(struct vresolver *res)
{
    evdns_base_free(res->dns, 0);
    free(res);
}

static void resolver_free_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    resolver_free(arg);
}

static struct vresolver *resolver_get(struct verify *v)
{
    if (v->res)
        return v->res;
    const struct strlist *ns = &v->cfg->resolver;
    struct vresolver *res = calloc(1, sizeof *res);
    if (!res)
        return NULL;
    res->base = v->base;
    /* Inactive, it must not keep the loop alive. */
    int flags = EVDNS_BASE_DISABLE_WHEN_INACTIVE |
                (ns->n ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS);
    res->dns = evdns_base_new(v->base, flags);
    if (!res->dns) {
        free(res);
        return NULL;
    }
    if (ns->n) {
        for (size_t i = 0; i < ns->n; i++)
            if (evdns_base_nameserver_ip_add(res->dns, ns->v[i]) != 0)
                log_warn("verify: resolver %s: cannot use it", ns->v[i]);
        evdns_base_load_hosts(res->dns, NULL);
    }
    v->res = res;
    return res;
}

static void dns_cb(int err, struct evutil_addrinfo *ai, void *arg)
{
    struct vdnsctx *ctx = arg;
    struct vresolver *res = ctx->res;
    struct vjob *j = ctx->job;
    free(ctx);
    if (--res->pending == 0 && res->orphan) {
        /* Not from inside evdns's own callback. */
        if (event_base_once(res->base, -1, EV_TIMEOUT, resolver_free_cb, res,
                            NULL) < 0)
            log_warn("verify: cannot free the resolver");
    }
    if (!j) {
        if (ai)
            evutil_freeaddrinfo(ai);
        return;
    }
    j->dns = NULL;
    j->dnsreq = NULL;
    j->ai = err ? NULL : ai;
    j->ai_cur = j->ai;
    if (err && ai)
        evutil_freeaddrinfo(ai);
    if (err)
        log_warn("verify: %s: primary %s: lookup: %s", j->addr, j->host,
                 evutil_gai_strerror(err));
    if (j->dns_sync) {           /* still inside evdns_getaddrinfo() */
        j->dns_done = true;
        j->dns_err = err;
        return;
    }
    evtimer_del(j->timer);
    j->state = J_IDLE;
    next_target(j);
}

/* Looks up j->host. 0 while the lookup runs (dns_cb goes on), -1 when it
 * is over already (j->ai holds what it found, if anything). */
static int resolve(struct vjob *j)
{
    struct vresolver *res = resolver_get(j->v);
    struct vdnsctx *ctx = res ? calloc(1, sizeof *ctx) : NULL;
    if (!ctx) {
        log_warn("verify: %s: primary %s: no resolver", j->addr, j->host);
        return -1;
    }
    ctx->res = res;
    ctx->job = j;
    res->pending++;
    char port[8];
    snprintf(port, sizeof port, "%d", j->port);
    struct evutil_addrinfo hints = { .ai_family = AF_UNSPEC,
                                     .ai_socktype = SOCK_STREAM,
                                     .ai_protocol = IPPROTO_TCP };
    j->dns = ctx;
    j->dns_sync = true;
    j->dns_done = false;
    snprintf(j->label, sizeof j->label, "%s", j->host);
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(res->dns, j->host, port, &hints, dns_cb, ctx);
    j->dns_sync = false;
    if (j->dns_done)
        return -1;
    if (!req) {                  /* no callback came: should not happen */
        j->dns = NULL;
        res->pending--;
        free(ctx);
        log_warn("verify: %s: primary %s: lookup failed", j->addr, j->host);
        return -1;
    }
    j->dnsreq = req;
    j->state = J_RESOLVE;
    arm(j, &j->v->connect_tv);
    return 0;
}

/* Moves on to the next address of the current entry, or the next entry;
 * gives up when there is none. J may be gone on return. */
static void next_target(struct vjob *j)
{
    for (;;) {
        if (j->ai_cur) {
            struct evutil_addrinfo *a = j->ai_cur;
            j->ai_cur = a->ai_next;
            if (connect_to(j, a->ai_addr, (int)a->ai_addrlen) == 0)
                return;
            continue;
        }
        if (j->ai)
            evutil_freeaddrinfo(j->ai);
        j->ai = NULL;
        if (j->iprim == j->nprim) {
            job_give_up(j);
            return;
        }
        const char *entry = j->prim[j->iprim++];
        int defport = j->v->cfg->queue.mx_port > 0 ? j->v->cfg->queue.mx_port
                                                   : 25;
        if (parse_entry(entry, defport, j->host, &j->port) < 0) {
            log_warn("verify: %s: bad primary \"%s\" ignored", j->domain,
                     entry);
            continue;
        }
        struct sockaddr_storage ss;
        int len;
        if (numeric_addr(j->host, j->port, &ss, &len)) {
            if (connect_to(j, (struct sockaddr *)&ss, len) == 0)
                return;
            continue;
        }
        if (resolve(j) == 0)
            return;
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct vjob *j = arg;
    switch (j->state) {
    case J_QUIT:
        job_free(j);
        return;
    case J_RESOLVE:
        job_drop_dns(j);
        log_warn("verify: %s: primary %s: lookup timed out", j->addr,
                 j->host);
        j->state = J_IDLE;
        next_target(j);
        return;
    case J_CONNECT:
        conn_failed(j, "connect timed out");
        return;
    default:
        conn_failed(j, "timed out waiting for the %s reply",
                    state_names[j->state]);
        return;
    }
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct vjob *j = arg;
    const char *why;
    enum verify_result res = fallback(j->v, j->key, &why);
    log_info("verify: %s: no verdict within %lds; %s", j->addr,
             (long)j->v->deadline_tv.tv_sec, why);
    job_answer(j, res);          /* the callout goes on for the cache */
}

/* Adds a reply line to the reply being read: 1 when it was the last line,
 * 0 when more follow, -1 when it is not an SMTP reply line. */
static int reply_line(struct vjob *j, const char *line, size_t n)
{
    if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' ||
        line[1] > '9' || line[2] < '0' || line[2] > '9' ||
        (n > 3 && line[3] != '-' && line[3] != ' ') ||
        memchr(line, '\0', n) || ++j->rlines > VERIFY_REPLY_LINES)
        return -1;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (j->rlines > 1 && code != j->rcode)
        return -1;
    j->rcode = code;
    /* For the log: the first line whole, then the others' text. */
    size_t have = strlen(j->rtext);
    const char *src = j->rlines == 1 ? line : line + (n > 3 ? 4 : 3);
    if (j->rlines > 1 && have < VERIFY_TEXT_MAX)
        j->rtext[have++] = ' ';
    for (; *src && have < VERIFY_TEXT_MAX; src++)
        j->rtext[have++] = (unsigned char)*src < 0x20 || *src == 0x7f ? '?'
                                                                      : *src;
    j->rtext[have] = '\0';
    if (j->state == J_EHLO && j->rlines > 1 && n >= 12 &&
        evutil_ascii_strncasecmp(line + 4, "SMTPUTF8", 8) == 0 &&
        (n == 12 || line[12] == ' '))
        j->srv_utf8 = true;
    return n == 3 || line[3] == ' ';
}

/* The RCPT reply. */
static void verdict(struct vjob *j)
{
    struct verify *v = j->v;
    const char *why;
    enum verify_result res;
    switch (j->rcode / 100) {
    case 2:
        why = cache_store(v, j->key, 1, j->ttl);
        log_info("verify: %s: primary %s said %s; %s for %llds", j->addr,
                 j->label, j->rtext, why, (long long)j->ttl);
        res = VERIFY_OK;
        break;
    case 5:
        why = cache_store(v, j->key, 0, VERIFY_NEG_TTL);
        log_info("verify: %s: primary %s said %s; %s for %ds", j->addr,
                 j->label, j->rtext, why, VERIFY_NEG_TTL);
        res = VERIFY_UNKNOWN;
        break;
    default:
        res = fallback(v, j->key, &why);
        log_info("verify: %s: primary %s said %s; %s", j->addr, j->label,
                 j->rtext, why);
        break;
    }
    j->verdict = true;
    down_clear(v, j->domain);
    job_answer(j, res);
}

/* Acts on a complete reply. Returns false when the connection is gone
 * (closed, replaced, or the job freed). */
static bool on_reply(struct vjob *j)
{
    int cls = j->rcode / 100;
    switch (j->state) {
    case J_GREETING:
        if (cls != 2)
            break;
        if (send_cmd(j, J_EHLO, "EHLO %s\r\n",
                     j->v->cfg->hostname ? j->v->cfg->hostname : "localhost") < 0)
            goto nomem;
        return true;
    case J_EHLO:
        if (cls != 2)
            break;
        if (send_cmd(j, J_MAIL, "MAIL FROM:<>%s\r\n",
                     j->utf8 && j->srv_utf8 ? " SMTPUTF8" : "") < 0)
            goto nomem;
        return true;
    case J_MAIL:
        if (cls != 2)
            break;
        if (send_cmd(j, J_RCPT, "RCPT TO:<%s>\r\n", j->addr) < 0)
            goto nomem;
        return true;
    case J_RCPT:
        if (j->rcode == 421)     /* closing down: not about the address */
            break;
        verdict(j);
        if (send_cmd(j, J_QUIT, "QUIT\r\n") < 0) {
            job_free(j);
            return false;
        }
        return true;
    case J_QUIT:
        job_free(j);
        return false;
    default:
        conn_failed(j, "unexpected reply %s", j->rtext);
        return false;
    }
    if (j->state == J_GREETING)
        conn_failed(j, "greeting was %s", j->rtext);
    else
        conn_failed(j, "said %s to %s", j->rtext, state_names[j->state]);
    return false;
nomem:
    conn_failed(j, "out of memory");
    return false;
}

/* The greeting may be read before libevent reports the connection. */
static void connected(struct vjob *j)
{
    if (j->state != J_CONNECT)
        return;
    j->state = J_GREETING;
    reply_reset(j);
    arm(j, &j->v->reply_tv);
    log_debug("verify: %s: connected to %s", j->addr, j->label);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct vjob *j = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    connected(j);
    for (;;) {
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (!line) {
            if (evbuffer_get_length(in) > VERIFY_LINE_MAX) {
                if (j->state == J_QUIT)
                    job_free(j);
                else
                    conn_failed(j, "reply line too long");
            }
            return;
        }
        int r = reply_line(j, line, n);
        if (r < 0 && j->state == J_QUIT) {
            free(line);
            job_free(j);
            return;
        }
        if (r < 0) {
            char shown[64];
            size_t k;
            for (k = 0; k < n && k < sizeof shown - 1; k++)
                shown[k] = (unsigned char)line[k] < 0x20 ||
                           (unsigned char)line[k] >= 0x7f ? '?' : line[k];
            shown[k] = '\0';
            free(line);
            conn_failed(j, "garbage in the %s reply: \"%s\"",
                        state_names[j->state], shown);
            return;
        }
        free(line);
        if (r == 1 && !on_reply(j))
            return;
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct vjob *j = arg;
    if (what & BEV_EVENT_CONNECTED) {
        connected(j);
        return;
    }
    if (j->state == J_QUIT) {
        job_free(j);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        conn_failed(j, "connection closed during the %s",
                    state_names[j->state]);
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    conn_failed(j, "%s: %s", j->state == J_CONNECT ? "connect" : "read",
                err ? evutil_socket_error_to_string(err) : "error");
}

/* ---- the API -------------------------------------------------------------- */

struct verify *verify_new(struct event_base *base, const struct bmx_config *cfg,
                          struct queue *q)
{
    struct verify *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->base = base;
    v->cfg = cfg;
    v->q = q;
    int64_t cap = cfg->limits.command_timeout;
    v->connect_tv = capped(VERIFY_CONNECT_TIMEOUT, cap);
    v->reply_tv = capped(VERIFY_REPLY_TIMEOUT, cap);
    /* Room for a second primary after a first one timed out. */
    v->deadline_tv = capped(VERIFY_ANSWER_DEADLINE, cap > 0 ? 3 * cap : 0);
    v->quit_tv = capped(VERIFY_QUIT_TIMEOUT, cap);
    if (q) {
        struct timeval every = { VERIFY_PURGE_EVERY, 0 };
        v->purge_ev = event_new(base, -1, EV_PERSIST, purge_cb, v);
        if (!v->purge_ev || event_add(v->purge_ev, &every) < 0) {
            verify_free(v);
            return NULL;
        }
    }
    return v;
}

void verify_free(struct verify *v)
{
    if (!v)
        return;
    for (struct vjob *j = v->jobs; j; j = j->next)
        j->waiters = NULL;
    while (v->reqs) {            /* their callbacks are not called */
        struct verify_req *r = v->reqs;
        v->reqs = r->next;
        event_free(r->ev);
        free(r);
    }
    while (v->jobs)
        job_free(v->jobs);
    while (v->down) {
        struct vdown *d = v->down;
        v->down = d->next;
        free(d);
    }
    if (v->purge_ev)
        event_free(v->purge_ev);
    free(v->purge_resume);
    if (v->res && v->res->pending)
        v->res->orphan = true;   /* freed once its last callback ran */
    else if (v->res)
        resolver_free(v->res);
    free(v);
}

static bool addr_ok(const char *a)
{
    const char *at = strrchr(a, '@');
    if (!at || at == a || !at[1] || strlen(a) > 1000)
        return false;
    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static struct vjob *job_new(struct verify *v, const struct bmx_domain *d,
                            const char *addr, char *key)
{
    struct vjob *j = calloc(1, sizeof *j);
    if (!j) {
        free(key);
        return NULL;
    }
    j->v = v;
    j->key = key;
    j->addr = strdup(addr);
    j->domain = strdup(d->name ? d->name : "");
    j->prim = calloc(d->primary.n, sizeof *j->prim);
    j->timer = evtimer_new(v->base, timer_cb, j);
    j->deadline = evtimer_new(v->base, deadline_cb, j);
    bool ok = j->addr && j->domain && j->prim && j->timer && j->deadline;
    for (size_t i = 0; ok && i < d->primary.n; i++, j->nprim++)
        ok = (j->prim[i] = strdup(d->primary.v[i])) != NULL;
    if (ok)
        ok = evtimer_add(j->deadline, &v->deadline_tv) == 0;
    j->ttl = d->verify_ttl > 0 ? d->verify_ttl : 31 * 86400;
    for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
        j->utf8 |= *p >= 0x80;
    j->next = v->jobs;
    if (v->jobs)
        v->jobs->prev = j;
    v->jobs = j;
    if (!ok) {
        job_free(j);
        return NULL;
    }
    return j;
}

struct verify_req *verify_start(struct verify *v, const struct bmx_domain *d,
                                const char *addr, verify_cb cb, void *arg)
{
    struct verify_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->v = v;
    r->cb = cb;
    r->arg = arg;
    r->ev = event_new(v->base, -1, 0, deliver_cb, r);
    char *key = lower_dup(addr);
    if (!r->ev || !key) {
        if (r->ev)
            event_free(r->ev);
        free(r);
        free(key);
        return NULL;
    }
    r->next = v->reqs;
    if (v->reqs)
        v->reqs->prev = r;
    v->reqs = r;

    if (!addr_ok(addr)) {
        log_warn("verify: cannot verify a malformed address");
        free(key);
        req_finish(r, VERIFY_UNAVAILABLE);
        return r;
    }
    struct queue_cache_entry e;
    enum cached c = cache_lookup(v, key, &e);
    int64_t fresh = d->verify_ttl < VERIFY_FRESH ? d->verify_ttl : VERIFY_FRESH;
    if (c == CACHED_NEGATIVE ||
        (c == CACHED_POSITIVE && now_wall() - e.stored < fresh)) {
        log_debug("verify: %s: cached %s", addr,
                  c == CACHED_NEGATIVE ? "negative" : "positive");
        free(key);
        req_finish(r, c == CACHED_NEGATIVE ? VERIFY_UNKNOWN : VERIFY_OK);
        return r;
    }
    if (d->primary.n == 0 || down_now(v, d->name ? d->name : "")) {
        const char *why;
        enum verify_result res = fallback(v, key, &why);
        log_debug("verify: %s: %s; %s", addr,
                  d->primary.n ? "primary down" : "no primary configured", why);
        free(key);
        req_finish(r, res);
        return r;
    }
    struct vjob *j;
    for (j = v->jobs; j; j = j->next)
        if (!j->verdict && strcmp(j->key, key) == 0)
            break;
    if (j && j->answered) {      /* past its deadline: answer as it did */
        const char *why;
        free(key);
        req_finish(r, fallback(v, j->key, &why));
        return r;
    }
    bool started = j != NULL;
    if (j) {
        free(key);
    } else if (!(j = job_new(v, d, addr, key))) {
        verify_cancel(r);
        return NULL;
    }
    r->job = j;
    r->wnext = j->waiters;
    j->waiters = r;
    if (!started)
        next_target(j);          /* answers only through events: r stays */
    return r;
}

void verify_cancel(struct verify_req *r)
{
    if (!r)
        return;
    struct verify *v = r->v;
    if (r->job) {
        struct verify_req **p = &r->job->waiters;
        while (*p && *p != r)
            p = &(*p)->wnext;
        if (*p)
            *p = r->wnext;
    }
    if (r->prev)
        r->prev->next = r->next;
    else
        v->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    event_free(r->ev);
    free(r);
}
