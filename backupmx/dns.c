/* Next hops by DNS (RFC 5321 5.1) with c-ares inside the libevent loop.
 *
 * Loop integration: c-ares reports each socket it wants watched through the
 * sock-state callback; every socket gets one persistent event that calls
 * ares_process_fd(), and one timer, armed from ares_timeout() after every
 * call into c-ares, drives retransmissions and timeouts.
 *
 * A request owns the c-ares queries it issued (struct dq). Cancelling it
 * detaches them: c-ares still calls back later (or with ARES_EDESTRUCTION
 * from ares_destroy()) and the detached query just frees itself. Results
 * are always handed to the caller from a separate event, never from inside
 * a c-ares call, so callbacks cannot re-enter c-ares.
 *
 * dns_route(): MX query -> sort by preference (random order within one
 * preference) -> A and AAAA of every MX host (ares_query, no /etc/hosts, no
 * search list) -> drop every MX at our own preference or worse, where "us"
 * is decided by address (dns_self.c) and, in addition, by MX name ==
 * hostname. NODATA gives the implicit MX (the domain's own A/AAAA). */
#include "dns.h"

#include <ares.h>
#include <arpa/nameser.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "dns_self.h"
#include "log.h"

#define MAX_MX 32                /* MX records considered, best first */
#define MAX_HOST_ADDRS 32        /* addresses kept per host and family */
#define SELFNAME_TTL 300         /* seconds the hostname's addresses are kept */
#define SELFNAME_RETRY 30        /* ... after a temporary failure */
#define DNS_TIMEOUT_MS 2000      /* first try; c-ares doubles it per round */
#define DNS_TRIES 3

enum qkind { Q_MX, Q_A, Q_AAAA };

struct host {                    /* an MX host, the implicit MX, a dns_host() name */
    char name[256];
    int pref;
    uint32_t rnd;                /* tie breaker within one preference */
    int st4, st6;                /* ares status of the A / AAAA lookups */
    bool self;                   /* this host is me */
    const char *selfwhy;
    struct ipaddr *addrs;        /* v6 and v4, in answer order */
    size_t naddrs;
};

#define ST_NONE INT_MIN          /* lookup not done (or not needed) */

struct dq {                      /* one outstanding c-ares query */
    struct dq *prev, *next;      /* in the owner's list */
    struct dns_req *r;           /* owner; NULL for the hostname lookup */
    struct dns *d;
    struct host *h;              /* for Q_A, Q_AAAA */
    enum qkind kind;
    bool detached;               /* owner gone: drop the answer */
};

struct dns_req {
    struct dns *d;
    struct dns_req *prev, *next;
    bool route;                  /* dns_route() (else dns_host()) */
    char name[256];              /* the domain or host */
    int port;
    dns_route_cb cb;
    void *arg;

    struct dq *queries;
    int pending;                 /* queries out (+1 while issuing) */
    bool wait_self;              /* the hostname lookup is still running */
    bool decided;                /* st and why are final */
    bool scheduled;              /* ev is active */
    bool delivering;
    bool implicit;               /* no MX: the domain itself */

    struct host *hosts;
    size_t nhosts;

    enum dns_status st;
    char why[512];
    struct nexthop *hops;
    size_t nhops;
    struct event *ev;            /* delivers the result */
};

struct sockev {
    struct sockev *next;
    ares_socket_t fd;
    short what;
    struct event *ev;
};

struct dns {
    struct event_base *base;
    ares_channel ch;
    bool ch_ok;
    bool lib_ok;
    struct event *timer;
    struct sockev *socks;
    struct dns_req *reqs;
    struct dns_self *self;
    char *hostname;              /* normalized, or NULL */

    struct host sn;              /* the hostname's own lookup */
    int sn_pending;              /* > 0 while it runs */
    time_t sn_expires;           /* CLOCK_MONOTONIC */
    bool sn_done;                /* at least one result so far */
    int sn_state;                /* of the last lookup, to log changes only */
};

static void progress(struct dns_req *r);

static time_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Lower case, no trailing dot; false when S is not a plausible name. */
static bool normalize_name(const char *s, char out[256])
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f || c == '/' || c == '\\' || c == '[' || c == ']' ||
            c == ':' || c == '@' || (c == '.' && s[i + 1] == '.'))
            return false;
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : (char)c;
    }
    out[n] = '\0';
    return true;
}

static bool perm_status(int st)
{
    return st == ARES_ENOTFOUND || st == ARES_ENODATA || st == ARES_EBADNAME;
}

static const char *status_str(int st)
{
    switch (st) {
    case ST_NONE: return "not looked up";
    case ARES_ENOTFOUND: return "no such domain";
    case ARES_ENODATA: return "no records";
    case ARES_ETIMEOUT: return "timeout";
    case ARES_ESERVFAIL: return "server failure";
    case ARES_EREFUSED: return "refused";
    /* c-ares 1.18 also ends with this when every server said SERVFAIL or
     * REFUSED. */
    case ARES_ECONNREFUSED: return "no usable answer from the resolver";
    default: return ares_strerror(st);
    }
}

/* ---- libevent <-> c-ares ------------------------------------------------ */

static void rearm(struct dns *d)
{
    struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);
    if (tvp != NULL)
        evtimer_add(d->timer, tvp);
    else
        evtimer_del(d->timer);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns *d = arg;
    (void)fd, (void)what;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm(d);
}

static void sock_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns *d = arg;
    ares_process_fd(d->ch, (what & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    rearm(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct sockev **p = &d->socks;
    while (*p != NULL && (*p)->fd != fd)
        p = &(*p)->next;
    struct sockev *se = *p;
    short what = (short)((readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    if (se != NULL && se->what == what)
        return;
    if (se != NULL) {
        event_free(se->ev);
        se->ev = NULL;
    }
    if (what == 0) {
        if (se != NULL) {
            *p = se->next;
            free(se);
        }
        return;
    }
    if (se == NULL) {
        se = calloc(1, sizeof *se);
        if (se == NULL) {
            log_err("DNS: out of memory watching a resolver socket");
            return;              /* the query times out via the timer */
        }
        se->fd = fd;
        se->next = d->socks;
        d->socks = se;
    }
    se->what = what;
    se->ev = event_new(d->base, fd, (short)(what | EV_PERSIST), sock_cb, d);
    if (se->ev == NULL || event_add(se->ev, NULL) != 0)
        log_err("DNS: cannot watch a resolver socket");
}

/* ---- queries ------------------------------------------------------------ */

static void dq_unlink(struct dq *q)
{
    if (q->r == NULL)
        return;
    if (q->prev)
        q->prev->next = q->next;
    else
        q->r->queries = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

static void host_add(struct host *h, const struct ipaddr *ip)
{
    for (size_t i = 0; i < h->naddrs; i++)
        if (ipaddr_eq(&h->addrs[i], ip))
            return;
    if (h->naddrs >= 2 * MAX_HOST_ADDRS)
        return;
    struct ipaddr *v = realloc(h->addrs, (h->naddrs + 1) * sizeof *v);
    if (v == NULL)
        return;
    h->addrs = v;
    h->addrs[h->naddrs++] = *ip;
}

static void host_reset(struct host *h)
{
    free(h->addrs);
    h->addrs = NULL;
    h->naddrs = 0;
    h->st4 = h->st6 = ST_NONE;
    h->self = false;
    h->selfwhy = NULL;
}

static void on_addrs(struct host *h, int family, int status, unsigned char *abuf, int alen)
{
    int st = status;
    if (st == ARES_SUCCESS && family == AF_INET) {
        struct ares_addrttl a[MAX_HOST_ADDRS];
        int n = MAX_HOST_ADDRS;
        st = ares_parse_a_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; st == ARES_SUCCESS && i < n; i++) {
            struct ipaddr ip = { .family = AF_INET };
            ip.u.v4 = a[i].ipaddr;
            host_add(h, &ip);
        }
    } else if (st == ARES_SUCCESS) {
        struct ares_addr6ttl a[MAX_HOST_ADDRS];
        int n = MAX_HOST_ADDRS;
        st = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; st == ARES_SUCCESS && i < n; i++) {
            struct ipaddr ip = { .family = AF_INET6 };
            memcpy(&ip.u.v6, &a[i].ip6addr, sizeof ip.u.v6);
            struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_addr = ip.u.v6 };
            ipaddr_from_sockaddr(&ip, (struct sockaddr *)&sin6); /* v4-mapped -> v4 */
            host_add(h, &ip);
        }
    }
    if (family == AF_INET)
        h->st4 = st;
    else
        h->st6 = st;
}

/* /etc/hosts, for dns_host() names and the hostname. */
static void host_from_file(struct dns *d, struct host *h)
{
    static const int fams[] = { AF_INET6, AF_INET };
    for (size_t f = 0; f < 2; f++) {
        struct hostent *he = NULL;
        if (ares_gethostbyname_file(d->ch, h->name, fams[f], &he) != ARES_SUCCESS || he == NULL)
            continue;
        for (char **a = he->h_addr_list; a != NULL && *a != NULL; a++) {
            struct ipaddr ip = { .family = he->h_addrtype };
            if (he->h_addrtype == AF_INET)
                memcpy(&ip.u.v4, *a, 4);
            else if (he->h_addrtype == AF_INET6)
                memcpy(&ip.u.v6, *a, 16);
            else
                continue;
            host_add(h, &ip);
        }
        ares_free_hostent(he);
    }
}

static void query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen);

/* Sends one query for R (or for the hostname when R is NULL). */
static bool issue(struct dns *d, struct dns_req *r, enum qkind kind, struct host *h,
                  const char *name, bool search)
{
    struct dq *q = calloc(1, sizeof *q);
    if (q == NULL)
        return false;
    q->d = d;
    q->r = r;
    q->h = h;
    q->kind = kind;
    if (r != NULL) {
        q->next = r->queries;
        if (r->queries)
            r->queries->prev = q;
        r->queries = q;
        r->pending++;
    } else {
        d->sn_pending++;
    }
    int type = kind == Q_MX ? ns_t_mx : kind == Q_A ? ns_t_a : ns_t_aaaa;
    if (search)
        ares_search(d->ch, name, ns_c_in, type, query_cb, q);
    else
        ares_query(d->ch, name, ns_c_in, type, query_cb, q);
    return true;
}

static void host_lookup(struct dns *d, struct dns_req *r, struct host *h, bool search)
{
    if (!issue(d, r, Q_A, h, h->name, search))
        h->st4 = ARES_ENOMEM;
    if (!issue(d, r, Q_AAAA, h, h->name, search))
        h->st6 = ARES_ENOMEM;
}

static void decide(struct dns_req *r, enum dns_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void decide(struct dns_req *r, enum dns_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->st = st;
    r->decided = true;
}

/* ---- the hostname's addresses ------------------------------------------ */

static void selfname_done(struct dns *d)
{
    struct host *h = &d->sn;
    time_t now = mono_now();
    int state;                   /* 1 found, 2 has no address, 3 lookup failed */
    if (h->naddrs > 0 || (perm_status(h->st4) && perm_status(h->st6))) {
        if (!dns_self_set_named(d->self, h->addrs, h->naddrs))
            log_warn("DNS: out of memory storing the addresses of %s", d->hostname);
        state = h->naddrs > 0 ? 1 : 2;
        d->sn_expires = now + SELFNAME_TTL;
        d->sn_done = true;
    } else {
        state = 3;
        d->sn_expires = now + SELFNAME_RETRY;
    }
    /* Warn when the state changes, not at every refresh. */
    if (state != d->sn_state && state == 2)
        log_warn("DNS: my hostname %s has no address; detecting myself by "
                 "interface address only", d->hostname);
    else if (state != d->sn_state && state == 3)
        log_warn("DNS: cannot look up my hostname %s (%s); using %s", d->hostname,
                 status_str(h->st4 != ARES_SUCCESS && !perm_status(h->st4) ? h->st4 : h->st6),
                 d->sn_done ? "its previous addresses" : "interface addresses only");
    d->sn_state = state;
    if (log_verbose()) {
        char list[512] = "", buf[INET6_ADDRSTRLEN];
        size_t len = 0;
        for (size_t i = 0; i < h->naddrs && len < sizeof list - 64; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, " %s",
                                    ipaddr_str(&h->addrs[i], buf, sizeof buf));
        log_debug("DNS: my hostname %s is%s", d->hostname, len ? list : " (none)");
    }
    for (struct dns_req *r = d->reqs; r != NULL; r = r->next)
        if (r->wait_self) {
            r->wait_self = false;
            progress(r);
        }
}

/* Starts the hostname lookup when its result is missing or old. */
static void selfname_start(struct dns *d)
{
    if (d->hostname == NULL || d->sn_pending > 0 || mono_now() < d->sn_expires)
        return;
    host_reset(&d->sn);
    host_from_file(d, &d->sn);
    if (d->sn.naddrs > 0) {
        selfname_done(d);
        return;
    }
    d->sn_pending++;             /* guard: answers may come synchronously */
    host_lookup(d, NULL, &d->sn, true);
    if (--d->sn_pending == 0)
        selfname_done(d);
}

/* ---- MX answers ------------------------------------------------------- */

static int host_cmp(const void *a, const void *b)
{
    const struct host *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return x->rnd < y->rnd ? -1 : x->rnd > y->rnd;
}

static bool is_hostname(const struct dns *d, const char *name)
{
    return d->hostname != NULL && strcmp(d->hostname, name) == 0;
}

static void start_hosts(struct dns_req *r)
{
    for (size_t i = 0; i < r->nhosts; i++) {
        struct host *h = &r->hosts[i];
        if (is_hostname(r->d, h->name)) {
            h->self = true;      /* no need to look up our own name */
            h->selfwhy = "my hostname";
            continue;
        }
        host_lookup(r->d, r, h, false);
    }
}

static void on_mx(struct dns_req *r, int status, unsigned char *abuf, int alen)
{
    struct ares_mx_reply *list = NULL;
    if (status == ARES_SUCCESS) {
        status = ares_parse_mx_reply(abuf, alen, &list);
        if (status != ARES_SUCCESS && status != ARES_ENODATA) {
            decide(r, DNS_TEMPFAIL, "bad MX answer for %s: %s", r->name, ares_strerror(status));
            return;
        }
    }
    if (status == ARES_ENODATA) {
        /* RFC 5321 5.1: no MX, so the domain itself is the implicit MX. */
        r->hosts = calloc(1, sizeof *r->hosts);
        if (r->hosts == NULL) {
            decide(r, DNS_TEMPFAIL, "out of memory");
            return;
        }
        r->nhosts = 1;
        r->implicit = true;
        snprintf(r->hosts[0].name, sizeof r->hosts[0].name, "%s", r->name);
        r->hosts[0].pref = -1;
        r->hosts[0].st4 = r->hosts[0].st6 = ST_NONE;
        start_hosts(r);
        return;
    }
    if (status == ARES_ENOTFOUND || status == ARES_EBADNAME) {
        decide(r, DNS_NOTFOUND, "domain %s does not exist", r->name);
        return;
    }
    if (status != ARES_SUCCESS) {
        decide(r, DNS_TEMPFAIL, "MX lookup for %s failed: %s", r->name, status_str(status));
        return;
    }

    size_t n = 0;
    for (struct ares_mx_reply *m = list; m != NULL; m = m->next)
        n++;
    if (n == 1 && (list->host[0] == '\0' || strcmp(list->host, ".") == 0)) {
        ares_free_data(list);
        decide(r, DNS_NOTFOUND, "domain %s accepts no mail (null MX)", r->name);
        return;
    }
    r->hosts = calloc(n, sizeof *r->hosts);
    if (r->hosts == NULL) {
        ares_free_data(list);
        decide(r, DNS_TEMPFAIL, "out of memory");
        return;
    }
    size_t k = 0;
    for (struct ares_mx_reply *m = list; m != NULL; m = m->next) {
        struct host *h = &r->hosts[k];
        if (!normalize_name(m->host, h->name))
            continue;            /* "." among other MXs, or junk */
        h->pref = m->priority;
        h->rnd = arc4random();
        h->st4 = h->st6 = ST_NONE;
        k++;
    }
    ares_free_data(list);
    if (k == 0) {
        decide(r, DNS_NOTFOUND, "domain %s accepts no mail (null MX)", r->name);
        return;
    }
    qsort(r->hosts, k, sizeof *r->hosts, host_cmp);
    /* The same name twice: keep the best preference. */
    size_t u = 0;
    for (size_t i = 0; i < k && u < MAX_MX; i++) {
        bool dup = false;
        for (size_t j = 0; j < u && !dup; j++)
            dup = strcmp(r->hosts[j].name, r->hosts[i].name) == 0;
        if (!dup)
            r->hosts[u++] = r->hosts[i];
    }
    r->nhosts = u;
    start_hosts(r);
}

static void query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct dq *q = arg;
    (void)timeouts;
    if (status == ARES_EDESTRUCTION || q->detached) {
        free(q);
        return;
    }
    struct dns_req *r = q->r;
    struct dns *d = q->d;
    dq_unlink(q);
    if (q->kind == Q_MX)
        on_mx(r, status, abuf, alen);
    else
        on_addrs(q->h, q->kind == Q_A ? AF_INET : AF_INET6, status, abuf, alen);
    free(q);
    if (r != NULL) {
        r->pending--;
        progress(r);
    } else if (--d->sn_pending == 0) {
        selfname_done(d);
    }
}

/* ---- results ------------------------------------------------------------ */

static bool add_hop(struct dns_req *r, const struct host *h, const struct ipaddr *ip)
{
    if (r->nhops >= DNS_MAX_HOPS)
        return false;
    for (size_t i = 0; i < r->nhops; i++) {
        struct ipaddr seen;
        ipaddr_from_sockaddr(&seen, (const struct sockaddr *)&r->hops[i].addr);
        if (ipaddr_eq(&seen, ip))
            return true;         /* a second name for the same address */
    }
    struct nexthop *nh = &r->hops[r->nhops++];
    memset(nh, 0, sizeof *nh);
    snprintf(nh->host, sizeof nh->host, "%s", h->name);
    nh->pref = h->pref;
    nh->addrlen = ipaddr_to_sockaddr(ip, r->port, &nh->addr);
    return true;
}

/* The host's addresses, IPv6 and IPv4 alternating. */
static void add_host_hops(struct dns_req *r, const struct host *h)
{
    size_t i6 = 0, i4 = 0;
    for (;;) {
        while (i6 < h->naddrs && h->addrs[i6].family != AF_INET6)
            i6++;
        while (i4 < h->naddrs && h->addrs[i4].family != AF_INET)
            i4++;
        if (i6 >= h->naddrs && i4 >= h->naddrs)
            return;
        if (i6 < h->naddrs && !add_hop(r, h, &h->addrs[i6++]))
            return;
        if (i4 < h->naddrs && !add_hop(r, h, &h->addrs[i4++]))
            return;
    }
}

static int host_status(const struct host *h)
{
    if (h->st4 != ARES_SUCCESS && h->st4 != ST_NONE && !perm_status(h->st4))
        return h->st4;
    if (h->st6 != ARES_SUCCESS && h->st6 != ST_NONE && !perm_status(h->st6))
        return h->st6;
    return h->st4 == ARES_ENOTFOUND || h->st6 == ARES_ENOTFOUND ? ARES_ENOTFOUND
                                                                : ARES_ENODATA;
}

static void route_finish(struct dns_req *r)
{
    struct dns *d = r->d;
    dns_self_refresh(d->self, false);
    int selfpref = INT_MAX;
    const struct host *selfhost = NULL;
    for (size_t i = 0; i < r->nhosts; i++) {
        struct host *h = &r->hosts[i];
        for (size_t j = 0; j < h->naddrs && !h->self; j++)
            h->self = dns_self_is_me(d->self, &h->addrs[j], r->port, &h->selfwhy);
        if (h->self && h->pref < selfpref) {
            selfpref = h->pref;
            selfhost = h;
        }
    }
    size_t keep = 0;
    while (keep < r->nhosts && r->hosts[keep].pref < selfpref)
        keep++;
    if (keep == 0) {
        if (r->implicit)
            decide(r, DNS_SELF, "mail for %s loops back to myself (no MX, and %s is %s)",
                   r->name, r->name, selfhost->selfwhy);
        else
            decide(r, DNS_SELF, "mail for %s loops back to myself (best MX %s is %s)",
                   r->name, selfhost->name, selfhost->selfwhy);
        return;
    }
    if (selfhost != NULL)
        log_debug("DNS: %s: I am MX %s (preference %d, %s); %zu better MX left",
                  r->name, selfhost->name, selfpref, selfhost->selfwhy, keep);

    r->hops = calloc(DNS_MAX_HOPS, sizeof *r->hops);
    if (r->hops == NULL) {
        decide(r, DNS_TEMPFAIL, "out of memory");
        return;
    }
    for (size_t i = 0; i < keep && r->nhops < DNS_MAX_HOPS; i++)
        add_host_hops(r, &r->hosts[i]);
    if (r->nhops > 0) {
        decide(r, DNS_OK, "%s", "");
        return;
    }
    if (r->implicit) {
        int st = host_status(&r->hosts[0]);
        if (perm_status(st))
            decide(r, DNS_NOTFOUND, "domain %s has no MX and no address records", r->name);
        else
            decide(r, DNS_TEMPFAIL, "address lookup for %s failed: %s", r->name, status_str(st));
        return;
    }
    /* No MX host resolves: say why for the first few. */
    int len = snprintf(r->why, sizeof r->why, "no MX host of %s resolves:", r->name);
    for (size_t i = 0; i < keep && len > 0 && (size_t)len < sizeof r->why - 1; i++)
        len += snprintf(r->why + len, sizeof r->why - (size_t)len, "%s %s (%s)",
                        i ? "," : "", r->hosts[i].name, status_str(host_status(&r->hosts[i])));
    r->st = DNS_TEMPFAIL;
    r->decided = true;
}

static void host_finish(struct dns_req *r)
{
    struct host *h = &r->hosts[0];
    r->hops = calloc(DNS_MAX_HOPS, sizeof *r->hops);
    if (r->hops == NULL) {
        decide(r, DNS_TEMPFAIL, "out of memory");
        return;
    }
    add_host_hops(r, h);
    if (r->nhops > 0) {
        decide(r, DNS_OK, "%s", "");
        return;
    }
    int st = host_status(h);
    if (st == ARES_ENOTFOUND)
        decide(r, DNS_NOTFOUND, "host %s does not exist", h->name);
    else if (perm_status(st))
        decide(r, DNS_NOTFOUND, "host %s has no address records", h->name);
    else
        decide(r, DNS_TEMPFAIL, "address lookup for %s failed: %s", h->name, status_str(st));
}

static void detach_all(struct dns_req *r)
{
    while (r->queries != NULL) {
        struct dq *q = r->queries;
        r->queries = q->next;
        q->detached = true;
        q->r = NULL;
        q->h = NULL;
        q->prev = q->next = NULL;
    }
    r->pending = 0;
}

static void progress(struct dns_req *r)
{
    if (r->scheduled)
        return;
    if (!r->decided) {
        if (r->pending > 0 || r->wait_self)
            return;
        if (r->route)
            route_finish(r);
        else
            host_finish(r);
    }
    detach_all(r);
    r->scheduled = true;
    event_active(r->ev, EV_TIMEOUT, 1);
}

static void req_unlink(struct dns_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->d->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(struct dns_req *r)
{
    if (r->ev)
        event_free(r->ev);
    for (size_t i = 0; i < r->nhosts; i++)
        free(r->hosts[i].addrs);
    free(r->hosts);
    free(r->hops);
    free(r);
}

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_req *r = arg;
    (void)fd, (void)what;
    req_unlink(r);
    r->delivering = true;
    if (log_verbose() && r->st != DNS_OK)
        log_debug("DNS: %s: %s", r->name, r->why);
    r->cb(r->arg, r->st, r->st == DNS_OK ? r->hops : NULL, r->st == DNS_OK ? r->nhops : 0,
          r->why);
    req_free(r);                 /* R's dns may be gone by now: no r->d */
}

static struct dns_req *req_new(struct dns *d, bool route, int port, dns_route_cb cb,
                               void *arg)
{
    struct dns_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->ev = event_new(d->base, -1, 0, deliver_cb, r);
    if (r->ev == NULL) {
        free(r);
        return NULL;
    }
    r->d = d;
    r->route = route;
    r->port = port;
    r->cb = cb;
    r->arg = arg;
    r->next = d->reqs;
    if (d->reqs)
        d->reqs->prev = r;
    d->reqs = r;
    return r;
}

/* ---- API ---------------------------------------------------------------- */

struct dns_req *dns_route(struct dns *d, const char *domain, int port, dns_route_cb cb,
                          void *arg)
{
    struct dns_req *r = req_new(d, true, port, cb, arg);
    if (r == NULL)
        return NULL;
    char name[256];
    if (!normalize_name(domain, name)) {
        snprintf(r->name, sizeof r->name, "%s", domain);
        decide(r, DNS_NOTFOUND, "'%s' is not a domain name", r->name);
        progress(r);
        return r;
    }
    memcpy(r->name, name, sizeof name);
    r->pending++;                /* guard: answers may come synchronously */
    selfname_start(d);
    r->wait_self = d->sn_pending > 0;
    if (!issue(d, r, Q_MX, NULL, r->name, false))
        decide(r, DNS_TEMPFAIL, "out of memory");
    r->pending--;
    progress(r);
    rearm(d);
    return r;
}

struct dns_req *dns_host(struct dns *d, const char *hostport, int defport, dns_route_cb cb,
                         void *arg)
{
    struct dns_req *r = req_new(d, false, defport, cb, arg);
    if (r == NULL)
        return NULL;
    char host[256];
    int port;
    struct ipaddr ip;
    snprintf(r->name, sizeof r->name, "%s", hostport);
    r->hosts = calloc(1, sizeof *r->hosts);
    if (r->hosts == NULL) {
        req_unlink(r);
        req_free(r);
        return NULL;
    }
    r->nhosts = 1;
    struct host *h = &r->hosts[0];
    h->st4 = h->st6 = ST_NONE;
    if (!hostport_split(hostport, host, &port)) {
        decide(r, DNS_NOTFOUND, "'%s' is not HOST[:PORT]", hostport);
    } else if (port != 0) {
        r->port = port;
    }
    if (r->decided) {
        /* reported below */
    } else if (ipaddr_parse(&ip, host)) {
        snprintf(h->name, sizeof h->name, "%s", host);
        host_add(h, &ip);
    } else if (!normalize_name(host, host)) {
        decide(r, DNS_NOTFOUND, "'%s' is not a host name or address", hostport);
    } else {
        snprintf(h->name, sizeof h->name, "%s", host);
        host_from_file(d, h);
        if (h->naddrs == 0) {
            r->pending++;        /* guard */
            host_lookup(d, r, h, true);
            r->pending--;
        }
    }
    progress(r);
    rearm(d);
    return r;
}

void dns_cancel(struct dns_req *r)
{
    if (r == NULL || r->delivering)
        return;
    req_unlink(r);
    detach_all(r);
    req_free(r);
}

static bool set_servers(struct dns *d, const struct strlist *list)
{
    struct ares_addr_port_node *nodes = calloc(list->n, sizeof *nodes);
    if (nodes == NULL)
        return false;
    size_t k = 0;
    for (size_t i = 0; i < list->n; i++) {
        char host[256];
        int port;
        struct ipaddr ip;
        if (!hostport_split(list->v[i], host, &port) || !ipaddr_parse(&ip, host)) {
            log_err("DNS: resolver '%s' is not IP[:PORT]", list->v[i]);
            continue;
        }
        struct ares_addr_port_node *n = &nodes[k];
        n->family = ip.family;
        if (ip.family == AF_INET)
            n->addr.addr4 = ip.u.v4;
        else
            memcpy(&n->addr.addr6, &ip.u.v6, sizeof n->addr.addr6);
        n->udp_port = n->tcp_port = port ? port : NAMESERVER_PORT;
        if (k > 0)
            nodes[k - 1].next = n;
        k++;
    }
    int rc = k > 0 ? ares_set_servers_ports(d->ch, nodes) : ARES_EBADSTR;
    free(nodes);
    if (rc != ARES_SUCCESS) {
        log_err("DNS: cannot use the configured resolvers: %s", ares_strerror(rc));
        return false;
    }
    return true;
}

struct dns *dns_new(struct event_base *base, const struct bmx_config *cfg)
{
    struct dns *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->base = base;
    d->sn.st4 = d->sn.st6 = ST_NONE;
    if (cfg->hostname != NULL && cfg->hostname[0] != '\0') {
        char name[256];
        if (normalize_name(cfg->hostname, name))
            d->hostname = strdup(name);
        else
            log_warn("DNS: hostname '%s' is not a host name; detecting myself by "
                     "address only", cfg->hostname);
    }
    snprintf(d->sn.name, sizeof d->sn.name, "%s", d->hostname ? d->hostname : "");
    d->self = dns_self_new(&cfg->listen);
    d->timer = evtimer_new(base, timer_cb, d);
    if (d->self == NULL || d->timer == NULL) {
        log_err("DNS: out of memory");
        goto fail;
    }
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        log_err("DNS: cannot initialise c-ares: %s", ares_strerror(rc));
        goto fail;
    }
    d->lib_ok = true;
    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.timeout = DNS_TIMEOUT_MS;
    o.tries = DNS_TRIES;
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = d;
    rc = ares_init_options(&d->ch, &o,
                           ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB);
    if (rc != ARES_SUCCESS) {
        log_err("DNS: cannot initialise the resolver: %s", ares_strerror(rc));
        goto fail;
    }
    d->ch_ok = true;
    if (cfg->resolver.n > 0 && !set_servers(d, &cfg->resolver))
        goto fail;
    return d;
fail:
    dns_free(d);
    return NULL;
}

void dns_free(struct dns *d)
{
    if (d == NULL)
        return;
    while (d->reqs != NULL)
        dns_cancel(d->reqs);
    if (d->ch_ok)
        ares_destroy(d->ch);     /* EDESTRUCTION callbacks; sock-state (fd, 0, 0) */
    while (d->socks != NULL) {
        struct sockev *se = d->socks;
        d->socks = se->next;
        if (se->ev)
            event_free(se->ev);
        free(se);
    }
    if (d->timer)
        event_free(d->timer);
    if (d->lib_ok)
        ares_library_cleanup();
    host_reset(&d->sn);
    dns_self_free(d->self);
    free(d->hostname);
    free(d);
}
