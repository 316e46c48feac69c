/* Unit tests for next-hop resolution (dns.c, dns_self.c) against a real
 * dnsmasq on 127.0.0.1:<free port>, started here with its whole zone on the
 * command line and stopped by PID. If dnsmasq cannot be started every test
 * fails (it is a required test dependency, see tests/install-deps.sh).
 *
 * Addresses: the "other hosts" live on 127.0.0.x with x >= 11, which are NOT
 * interface addresses here (lo lists 127.0.0.1/8 as the single address
 * 127.0.0.1); SELF_IP is a real interface address found with getifaddrs(). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "dns.h"

#define DNSMASQ "/usr/sbin/dnsmasq"

static pid_t dm_pid = -1;
static int dm_port;
static char dm_log[64];
static char self_ip[INET_ADDRSTRLEN];   /* an interface address (IPv4) */

/* ---- dnsmasq -------------------------------------------------------------- */

static int free_port(void)
{
    for (int tries = 0; tries < 20; tries++) {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        int t = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof a;
        int port = -1;
        if (u >= 0 && t >= 0 && bind(u, (struct sockaddr *)&a, sizeof a) == 0 &&
            getsockname(u, (struct sockaddr *)&a, &len) == 0 && ntohs(a.sin_port) >= 1024 &&
            bind(t, (struct sockaddr *)&a, sizeof a) == 0)
            port = ntohs(a.sin_port);
        if (u >= 0)
            close(u);
        if (t >= 0)
            close(t);
        if (port > 0)
            return port;
    }
    return -1;
}

/* Sends an A query for mx1.example.test; true when dnsmasq answers. When
 * ANSWER is given, copies the response there (for the raw order check). */
static int raw_query(int port, const char *name, int type, unsigned char *answer, size_t cap)
{
    unsigned char q[300];
    size_t n = 0;
    static const unsigned char hdr[12] = { 0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };
    memcpy(q, hdr, sizeof hdr);
    n = sizeof hdr;
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        q[n++] = (unsigned char)l;
        memcpy(q + n, p, l);
        n += l;
        p += l + (dot ? 1 : 0);
    }
    q[n++] = 0;
    q[n++] = 0;
    q[n++] = (unsigned char)type;
    q[n++] = 0;
    q[n++] = 1;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int got = -1;
    if (sendto(s, q, n, 0, (struct sockaddr *)&a, sizeof a) == (ssize_t)n) {
        struct pollfd pfd = { .fd = s, .events = POLLIN };
        if (poll(&pfd, 1, 300) == 1) {
            unsigned char buf[4096];
            ssize_t r = recv(s, buf, sizeof buf, 0);
            if (r >= 12) {
                got = (int)r;
                if (answer != NULL)
                    memcpy(answer, buf, (size_t)r < cap ? (size_t)r : cap);
            }
        }
    }
    close(s);
    return got;
}

static bool find_self_ip(void)
{
    struct ifaddrs *list;
    if (getifaddrs(&list) != 0)
        return false;
    bool found = false;
    for (struct ifaddrs *i = list; i != NULL && !found; i = i->ifa_next)
        if (i->ifa_addr != NULL && i->ifa_addr->sa_family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)(void *)i->ifa_addr;
            inet_ntop(AF_INET, &sin->sin_addr, self_ip, sizeof self_ip);
            found = true;
        }
    freeifaddrs(list);
    return found;
}

static void dm_stop(void)
{
    if (dm_pid > 0) {
        kill(dm_pid, SIGTERM);
        int st;
        while (waitpid(dm_pid, &st, 0) < 0 && errno == EINTR)
            ;
        dm_pid = -1;
    }
}

static void dm_show_log(void)
{
    FILE *f = fopen(dm_log, "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "# dnsmasq: %s", line);
    fclose(f);
}

#define MAXARGS 200

static bool dm_start(void)
{
    if (!find_self_ip()) {
        fprintf(stderr, "# no IPv4 interface address found\n");
        return false;
    }
    snprintf(dm_log, sizeof dm_log, "/tmp/test_dns-dnsmasq.%d.log", (int)getpid());
    static char bufs[MAXARGS][128];
    for (int attempt = 0; attempt < 5; attempt++) {
        dm_port = free_port();
        if (dm_port < 0)
            return false;
        char *argv[MAXARGS + 1];
        int n = 0;
#define ARG(...) (snprintf(bufs[n], sizeof bufs[n], __VA_ARGS__), argv[n] = bufs[n], n++)
        ARG(DNSMASQ);
        /* Not --no-daemon: in that mode dnsmasq serves TCP inline and
         * answers no UDP while a TCP connection is open. */
        ARG("--keep-in-foreground");
        ARG("--log-facility=-");
        ARG("--conf-file=/dev/null");
        ARG("--no-resolv");
        ARG("--no-hosts");
        ARG("--no-poll");
        ARG("--listen-address=127.0.0.1");
        ARG("--port=%d", dm_port);
        ARG("--bind-interfaces");
        ARG("--user=root");
        ARG("--group=root");
        ARG("--pid-file=");
        ARG("--local=/test/");
        /* MX answers come unsorted: dnsmasq gives the last one configured first. */
        ARG("--mx-host=example.test,mx1.example.test,10");
        ARG("--mx-host=example.test,mx2.example.test,20");
        ARG("--mx-host=example.test,mx3.example.test,5");
        ARG("--host-record=mx1.example.test,127.0.0.11");
        ARG("--host-record=mx2.example.test,127.0.0.12,fd00:db8::12");
        ARG("--host-record=mx3.example.test,127.0.0.13");
        ARG("--host-record=me.example.test,127.0.0.12,fd00:db8::12"); /* our hostname */
        /* Backup rule on the hostname's address: only us. */
        ARG("--mx-host=selfonly.test,mail.selfonly.test,10");
        ARG("--host-record=mail.selfonly.test,127.0.0.12");
        /* Self by interface address under another name. */
        ARG("--mx-host=ifself.test,a.ifself.test,10");
        ARG("--mx-host=ifself.test,other-name.ifself.test,20");
        ARG("--mx-host=ifself.test,c.ifself.test,30");
        ARG("--host-record=a.ifself.test,127.0.0.21");
        ARG("--host-record=other-name.ifself.test,%s", self_ip);
        ARG("--host-record=c.ifself.test,127.0.0.23");
        ARG("--mx-host=ifbest.test,other-name.ifself.test,10");
        ARG("--mx-host=ifbest.test,a.ifself.test,20");
        /* Equal preferences. */
        ARG("--mx-host=rand.test,r0.rand.test,5");
        ARG("--mx-host=rand.test,r1.rand.test,10");
        ARG("--mx-host=rand.test,r2.rand.test,10");
        ARG("--mx-host=rand.test,r3.rand.test,20");
        ARG("--host-record=r0.rand.test,127.0.0.30");
        ARG("--host-record=r1.rand.test,127.0.0.31");
        ARG("--host-record=r2.rand.test,127.0.0.32");
        ARG("--host-record=r3.rand.test,127.0.0.33");
        /* No MX: implicit MX from A/AAAA; a name with neither. */
        ARG("--host-record=nomx.test,127.0.0.40,fd00:db8::40");
        ARG("--txt-record=noaddr.test,nothing here");
        /* Null MX (RFC 7505): preference 0, target "." */
        ARG("--dns-rr=nullmx.test,15,000000");
        /* MX hosts that do not resolve. */
        ARG("--mx-host=dangling.test,ghost.dangling.test,10");
        ARG("--mx-host=partial.test,ghost.partial.test,10");
        ARG("--mx-host=partial.test,mx1.example.test,20");
        /* Listen address (with port) is us. */
        ARG("--mx-host=listen.test,l1.listen.test,10");
        ARG("--mx-host=listen.test,l2.listen.test,20");
        ARG("--host-record=l1.listen.test,127.0.0.51");
        ARG("--host-record=l2.listen.test,127.0.0.52");
        /* Too many MX for UDP: truncated, c-ares retries over TCP. */
        for (int i = 1; i <= 30; i++) {
            ARG("--mx-host=big.test,m%d.big.test,%d", i, i);
            ARG("--host-record=m%d.big.test,127.0.1.%d", i, i);
        }
#undef ARG
        argv[n] = NULL;

        pid_t pid = fork();
        if (pid < 0)
            return false;
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            int fd = open(dm_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
            execv(DNSMASQ, argv);
            fprintf(stderr, "exec %s: %s\n", DNSMASQ, strerror(errno));
            _exit(127);
        }
        dm_pid = pid;
        for (int i = 0; i < 50; i++) {     /* up to ~5 s */
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                dm_pid = -1;
                break;
            }
            if (raw_query(dm_port, "mx1.example.test", 1, NULL, 0) > 0)
                return true;
            usleep(100 * 1000);
        }
        dm_show_log();
        dm_stop();
    }
    return false;
}

static bool dm_ok;

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    dm_ok = dm_start();
    if (!dm_ok)
        fprintf(stderr, "# could not start %s: every test fails\n", DNSMASQ);
    return 0;                    /* the tests themselves fail */
}

static int group_teardown(void **state)
{
    (void)state;
    dm_stop();
    if (dm_log[0])
        unlink(dm_log);
    return 0;
}

/* ---- fixture ------------------------------------------------------------- */

struct result {
    int called;
    enum dns_status st;
    struct nexthop hops[DNS_MAX_HOPS];
    size_t n;
    char why[512];
};

struct fx {
    struct event_base *base;
    struct bmx_config cfg;
    char resolver[64];
    char *resolvers[1];
    char *listen[1];
    struct dns *d;
    int done;
    bool timed_out;
};

static void result_cb(void *arg, enum dns_status st, const struct nexthop *hops, size_t n,
                      const char *why)
{
    struct result *r = arg;
    r->called++;
    r->st = st;
    r->n = n;
    assert_true(n <= DNS_MAX_HOPS);
    assert_non_null(why);
    if (n)
        memcpy(r->hops, hops, n * sizeof *hops);
    snprintf(r->why, sizeof r->why, "%s", why);
}

/* Makes a dns with hostname HOST and the test resolver (or RESOLVER). */
static struct fx *fx_new(const char *hostname, const char *resolver, const char *listen)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->base = event_base_new();
    assert_non_null(f->base);
    if (resolver)
        snprintf(f->resolver, sizeof f->resolver, "%s", resolver);
    else
        snprintf(f->resolver, sizeof f->resolver, "127.0.0.1:%d", dm_port);
    f->resolvers[0] = f->resolver;
    f->cfg.resolver.v = f->resolvers;
    f->cfg.resolver.n = 1;
    f->cfg.hostname = (char *)hostname;
    if (listen) {
        f->listen[0] = (char *)listen;
        f->cfg.listen.v = f->listen;
        f->cfg.listen.n = 1;
    }
    f->cfg.queue.mx_port = 25;
    f->d = dns_new(f->base, &f->cfg);
    assert_non_null(f->d);
    return f;
}

static void fx_free(struct fx *f)
{
    dns_free(f->d);
    event_base_free(f->base);
    free(f);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    *(bool *)arg = true;
}

/* Runs the loop until every result in RS[0..n) was called or MS passed. */
static void run_for(struct fx *f, struct result **rs, size_t n, int ms)
{
    bool timed_out = false;
    struct event *t = evtimer_new(f->base, timeout_cb, &timed_out);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(t, &tv);
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < n; i++)
            done += rs[i]->called > 0;
        if ((n > 0 && done == n) || timed_out)
            break;
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    event_free(t);
}

static void route(struct fx *f, const char *domain, int port, struct result *r)
{
    memset(r, 0, sizeof *r);
    struct dns_req *q = dns_route(f->d, domain, port, result_cb, r);
    assert_non_null(q);
    assert_int_equal(r->called, 0);       /* never from inside the call */
    struct result *rs[] = { r };
    run_for(f, rs, 1, 20000);
    assert_int_equal(r->called, 1);
}

static void host(struct fx *f, const char *hostport, int defport, struct result *r)
{
    memset(r, 0, sizeof *r);
    struct dns_req *q = dns_host(f->d, hostport, defport, result_cb, r);
    assert_non_null(q);
    assert_int_equal(r->called, 0);
    struct result *rs[] = { r };
    run_for(f, rs, 1, 20000);
    assert_int_equal(r->called, 1);
}

static const char *hop_ip(const struct nexthop *h, char *buf, size_t len)
{
    const struct sockaddr *sa = (const struct sockaddr *)&h->addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf,
                  (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf,
                  (socklen_t)len);
    else
        snprintf(buf, len, "family %d", sa->sa_family);
    return buf;
}

static int hop_port(const struct nexthop *h)
{
    const struct sockaddr *sa = (const struct sockaddr *)&h->addr;
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
}

static void assert_hop(const struct nexthop *h, const char *name, int pref, const char *ip,
                       int port)
{
    char buf[INET6_ADDRSTRLEN];
    assert_string_equal(h->host, name);
    assert_int_equal(h->pref, pref);
    assert_string_equal(hop_ip(h, buf, sizeof buf), ip);
    assert_int_equal(hop_port(h), port);
    assert_int_equal(h->addrlen, ((const struct sockaddr *)&h->addr)->sa_family == AF_INET
                                     ? sizeof(struct sockaddr_in)
                                     : sizeof(struct sockaddr_in6));
}

static void print_result(const struct result *r)
{
    char buf[INET6_ADDRSTRLEN];
    fprintf(stderr, "# status %d, why \"%s\", %zu hops\n", r->st, r->why, r->n);
    for (size_t i = 0; i < r->n; i++)
        fprintf(stderr, "#   %s pref %d %s port %d\n", r->hops[i].host, r->hops[i].pref,
                hop_ip(&r->hops[i], buf, sizeof buf), hop_port(&r->hops[i]));
}

#define NEED_DNSMASQ() assert_true(dm_ok)

static size_t skip_name(const unsigned char *m, size_t len, size_t off)
{
    while (off < len) {
        if ((m[off] & 0xc0) == 0xc0)
            return off + 2;
        if (m[off] == 0)
            return off + 1;
        off += 1u + m[off];
    }
    return len;
}

/* The MX preferences of NAME in the order dnsmasq sends them. */
static size_t mx_prefs_raw(const char *name, int *prefs, size_t cap)
{
    unsigned char m[4096];
    int len = raw_query(dm_port, name, 15, m, sizeof m);
    if (len < 12)
        return 0;
    size_t an = (size_t)(m[6] << 8 | m[7]), off = skip_name(m, (size_t)len, 12) + 4, k = 0;
    for (size_t i = 0; i < an && off + 10 <= (size_t)len; i++) {
        off = skip_name(m, (size_t)len, off);
        if (off + 10 > (size_t)len)
            break;
        int type = m[off] << 8 | m[off + 1];
        size_t rdlen = (size_t)(m[off + 8] << 8 | m[off + 9]);
        off += 10;
        if (type == 15 && off + 2 <= (size_t)len && k < cap)
            prefs[k++] = m[off] << 8 | m[off + 1];
        off += rdlen;
    }
    return k;
}

/* ---- tests ------------------------------------------------------------ */

static void test_mx_sorted(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    /* The fixture must really answer unsorted, else this proves nothing. */
    int prefs[8];
    size_t n = mx_prefs_raw("example.test", prefs, 8);
    assert_int_equal(n, 3);
    assert_false(prefs[0] <= prefs[1] && prefs[1] <= prefs[2]);

    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "example.test", 2525, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_string_equal(r.why, "");
    assert_int_equal(r.n, 4);
    assert_hop(&r.hops[0], "mx3.example.test", 5, "127.0.0.13", 2525);
    assert_hop(&r.hops[1], "mx1.example.test", 10, "127.0.0.11", 2525);
    /* One host's addresses follow each other, any order. */
    assert_string_equal(r.hops[2].host, "mx2.example.test");
    assert_string_equal(r.hops[3].host, "mx2.example.test");
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    hop_ip(&r.hops[2], a, sizeof a);
    hop_ip(&r.hops[3], b, sizeof b);
    assert_true((strcmp(a, "127.0.0.12") == 0 && strcmp(b, "fd00:db8::12") == 0) ||
                (strcmp(b, "127.0.0.12") == 0 && strcmp(a, "fd00:db8::12") == 0));
    assert_int_equal(hop_port(&r.hops[3]), 2525);

    /* Case and a trailing dot do not matter. */
    route(f, "Example.TEST.", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 4);
    assert_hop(&r.hops[0], "mx3.example.test", 5, "127.0.0.13", 25);
    fx_free(f);
}

static void test_backup_by_hostname_address(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    /* me.example.test has mx2's addresses: we are MX 20 by address. */
    struct fx *f = fx_new("me.example.test", NULL, NULL);
    struct result r;
    route(f, "example.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 2);
    assert_hop(&r.hops[0], "mx3.example.test", 5, "127.0.0.13", 25);
    assert_hop(&r.hops[1], "mx1.example.test", 10, "127.0.0.11", 25);
    /* Twice: the second time from the cached hostname addresses. */
    route(f, "example.test", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 2);
    fx_free(f);

    /* By name as well. */
    f = fx_new("MX1.example.test.", NULL, NULL);
    route(f, "example.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "mx3.example.test", 5, "127.0.0.13", 25);
    fx_free(f);
}

static void test_only_self(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("me.example.test", NULL, NULL);
    struct result r;
    route(f, "selfonly.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_SELF);
    assert_int_equal(r.n, 0);
    assert_non_null(strstr(r.why, "mail for selfonly.test loops back to myself"));

    f->cfg.hostname = NULL;      /* dns copied it: no effect */
    route(f, "selfonly.test", 25, &r);
    assert_int_equal(r.st, DNS_SELF);
    fx_free(f);

    /* The best MX is us by name. */
    f = fx_new("mx3.example.test", NULL, NULL);
    route(f, "example.test", 25, &r);
    assert_int_equal(r.st, DNS_SELF);
    assert_non_null(strstr(r.why, "loops back to myself"));
    fx_free(f);
}

static void test_self_by_interface_address(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    /* The hostname resolves to nothing: only the interface address
     * (SELF_IP, the A record of "other-name") can tell that MX 20 is us. */
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "ifself.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "a.ifself.test", 10, "127.0.0.21", 25);

    route(f, "ifbest.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_SELF);
    assert_non_null(strstr(r.why, "mail for ifbest.test loops back to myself"));
    assert_non_null(strstr(r.why, "other-name.ifself.test"));
    fx_free(f);

    /* Without a hostname at all. */
    f = fx_new(NULL, NULL, NULL);
    route(f, "ifbest.test", 25, &r);
    assert_int_equal(r.st, DNS_SELF);
    route(f, "example.test", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 4);
    fx_free(f);
}

static void test_self_by_listen_address(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, "127.0.0.51:2600");
    struct result r;
    route(f, "listen.test", 2600, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_SELF);
    /* Another port on that address is somebody else. */
    route(f, "listen.test", 2601, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 2);
    assert_hop(&r.hops[0], "l1.listen.test", 10, "127.0.0.51", 2601);
    assert_hop(&r.hops[1], "l2.listen.test", 20, "127.0.0.52", 2601);
    fx_free(f);
}

static void test_equal_preference_random(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    int r1_first = 0, r2_first = 0;
    for (int i = 0; i < 40; i++) {
        struct result r;
        route(f, "rand.test", 25, &r);
        assert_int_equal(r.st, DNS_OK);
        assert_int_equal(r.n, 4);
        assert_hop(&r.hops[0], "r0.rand.test", 5, "127.0.0.30", 25);
        assert_hop(&r.hops[3], "r3.rand.test", 20, "127.0.0.33", 25);
        assert_int_equal(r.hops[1].pref, 10);
        assert_int_equal(r.hops[2].pref, 10);
        if (strcmp(r.hops[1].host, "r1.rand.test") == 0) {
            assert_string_equal(r.hops[2].host, "r2.rand.test");
            r1_first++;
        } else {
            assert_string_equal(r.hops[1].host, "r2.rand.test");
            assert_string_equal(r.hops[2].host, "r1.rand.test");
            r2_first++;
        }
    }
    fprintf(stderr, "# r1 first %d times, r2 first %d times\n", r1_first, r2_first);
    assert_true(r1_first > 0);
    assert_true(r2_first > 0);
    fx_free(f);
}

static void test_implicit_mx(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "nomx.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(r.hops[i].host, "nomx.test");
        assert_int_equal(r.hops[i].pref, -1);
        assert_int_equal(hop_port(&r.hops[i]), 25);
    }
    char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
    hop_ip(&r.hops[0], a, sizeof a);
    hop_ip(&r.hops[1], b, sizeof b);
    assert_true((strcmp(a, "127.0.0.40") == 0 && strcmp(b, "fd00:db8::40") == 0) ||
                (strcmp(b, "127.0.0.40") == 0 && strcmp(a, "fd00:db8::40") == 0));

    /* The name exists but has neither MX nor A/AAAA. */
    route(f, "noaddr.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    fx_free(f);

    /* An implicit MX that is us: a loop. */
    f = fx_new("unrelated.test", NULL, NULL);
    route(f, "other-name.ifself.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_SELF);
    fx_free(f);
}

static void test_nxdomain(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "nosuch.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    assert_non_null(strstr(r.why, "nosuch.test"));
    route(f, "not a domain", 25, &r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    route(f, "", 25, &r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    route(f, "a..b.test", 25, &r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    fx_free(f);
}

static void test_null_mx(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "nullmx.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    assert_non_null(strstr(r.why, "accepts no mail"));
    fx_free(f);
}

static void test_unresolvable_mx_hosts(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "dangling.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_TEMPFAIL);
    assert_non_null(strstr(r.why, "ghost.dangling.test"));
    route(f, "partial.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "mx1.example.test", 20, "127.0.0.11", 25);
    fx_free(f);
}

static void test_many_mx_over_tcp(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    route(f, "big.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, DNS_MAX_HOPS);
    for (int i = 0; i < DNS_MAX_HOPS; i++) {
        char name[64], ip[32];
        snprintf(name, sizeof name, "m%d.big.test", i + 1);
        snprintf(ip, sizeof ip, "127.0.1.%d", i + 1);
        assert_hop(&r.hops[i], name, i + 1, ip, 25);
    }
    fx_free(f);
}

static void test_dead_resolver(void **state)
{
    (void)state;
    int port = free_port();
    assert_true(port > 0);
    char res[64];
    snprintf(res, sizeof res, "127.0.0.1:%d", port);
    struct fx *f = fx_new("unrelated.test", res, NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct result r;
    route(f, "example.test", 25, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_result(&r);
    assert_int_equal(r.st, DNS_TEMPFAIL);
    assert_true(t1.tv_sec - t0.tv_sec < 3);
    /* Not dns_host() here: with A and AAAA sent back to back, c-ares 1.18
     * can lose the ICMP error to the second send() and then waits for its
     * timeouts (several seconds, still TEMPFAIL). test_servfail covers it. */
    fx_free(f);
}

/* A resolver answering SERVFAIL to everything, in the same loop. */
static void servfail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what, (void)arg;
    unsigned char buf[512];
    struct sockaddr_storage from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    if (n < 12)
        return;
    buf[2] |= 0x80;                       /* QR */
    buf[3] = (unsigned char)((buf[3] & 0xf0) | 2);   /* RCODE SERVFAIL */
    sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
}

static void test_servfail(void **state)
{
    (void)state;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(s >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &alen), 0);
    char res[64];
    snprintf(res, sizeof res, "127.0.0.1:%d", ntohs(a.sin_port));
    struct fx *f = fx_new("unrelated.test", res, NULL);
    struct event *ev = event_new(f->base, s, EV_READ | EV_PERSIST, servfail_cb, NULL);
    event_add(ev, NULL);
    struct result r, h;
    route(f, "example.test", 25, &r);
    host(f, "mx1.example.test:26", 25, &h);
    print_result(&r);
    print_result(&h);
    assert_int_equal(r.st, DNS_TEMPFAIL);
    assert_int_equal(h.st, DNS_TEMPFAIL);
    event_free(ev);
    close(s);
    fx_free(f);
}

static void test_host_numeric(void **state)
{
    (void)state;
    /* Numeric entries need no resolver at all. */
    struct fx *f = fx_new(NULL, "127.0.0.1:9", NULL);
    struct result r;
    host(f, "192.0.2.7", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "192.0.2.7", 0, "192.0.2.7", 25);
    host(f, "192.0.2.7:2525", 25, &r);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "192.0.2.7", 0, "192.0.2.7", 2525);
    host(f, "[2001:db8::7]:2526", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_hop(&r.hops[0], "2001:db8::7", 0, "2001:db8::7", 2526);
    host(f, "2001:db8::7", 587, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_hop(&r.hops[0], "2001:db8::7", 0, "2001:db8::7", 587);
    host(f, "[::1]", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_hop(&r.hops[0], "::1", 0, "::1", 25);
    host(f, "::ffff:192.0.2.8", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_hop(&r.hops[0], "::ffff:192.0.2.8", 0, "192.0.2.8", 25);
    /* localhost comes from /etc/hosts, no DNS needed. */
    host(f, "localhost:2527", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_OK);
    assert_true(r.n >= 1);
    assert_int_equal(hop_port(&r.hops[0]), 2527);

    const char *bad[] = { "192.0.2.7:0", "192.0.2.7:65536", "192.0.2.7:x", "[2001:db8::7",
                          "[2001:db8::7]x", "", ":25", "a b:25", "192.0.2.7:" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        host(f, bad[i], 25, &r);
        if (r.st != DNS_NOTFOUND)
            fprintf(stderr, "# '%s' was accepted\n", bad[i]);
        assert_int_equal(r.st, DNS_NOTFOUND);
        assert_true(r.why[0] != '\0');
    }
    fx_free(f);
}

static void test_host_names(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct result r;
    host(f, "mx1.example.test:2525", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_hop(&r.hops[0], "mx1.example.test", 0, "127.0.0.11", 2525);
    host(f, "mx2.example.test", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 2);
    /* No self rule for fixed hosts. */
    host(f, "other-name.ifself.test", 25, &r);
    assert_int_equal(r.st, DNS_OK);
    assert_int_equal(r.n, 1);
    host(f, "nosuch.test", 25, &r);
    print_result(&r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    host(f, "noaddr.test", 25, &r);
    assert_int_equal(r.st, DNS_NOTFOUND);
    fx_free(f);
}

static void test_cancel(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("me.example.test", NULL, NULL);
    struct result a, b, c, h;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    memset(&h, 0, sizeof h);
    struct dns_req *ra = dns_route(f->d, "example.test", 25, result_cb, &a);
    struct dns_req *rb = dns_route(f->d, "rand.test", 25, result_cb, &b);
    struct dns_req *rc = dns_host(f->d, "192.0.2.1", 25, result_cb, &c);
    struct dns_req *rh = dns_host(f->d, "mx2.example.test", 25, result_cb, &h);
    assert_non_null(ra);
    assert_non_null(rb);
    assert_non_null(rc);
    assert_non_null(rh);
    dns_cancel(rb);
    dns_cancel(rc);              /* numeric: already decided, not yet delivered */
    dns_cancel(NULL);
    struct result *rs[] = { &a, &h };
    run_for(f, rs, 2, 10000);
    assert_int_equal(a.called, 1);
    assert_int_equal(h.called, 1);
    /* Give anything stray a chance to show up. */
    run_for(f, NULL, 0, 300);
    assert_int_equal(b.called, 0);
    assert_int_equal(c.called, 0);
    assert_int_equal(a.st, DNS_OK);
    assert_int_equal(a.n, 2);

    /* Cancel half way: after the MX answer, while the A/AAAA are out. */
    memset(&b, 0, sizeof b);
    rb = dns_route(f->d, "big.test", 25, result_cb, &b);
    assert_non_null(rb);
    event_base_loop(f->base, EVLOOP_ONCE);
    dns_cancel(rb);
    run_for(f, NULL, 0, 500);
    assert_int_equal(b.called, 0);
    fx_free(f);
}

/* dns_free() with everything in flight: no callbacks, no leaks. */
static void test_free_in_flight(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct result r[6];
    memset(r, 0, sizeof r);
    for (int round = 0; round < 4; round++) {
        struct fx *f = fx_new("me.example.test", NULL, NULL);
        assert_non_null(dns_route(f->d, "example.test", 25, result_cb, &r[0]));
        assert_non_null(dns_route(f->d, "big.test", 25, result_cb, &r[1]));
        assert_non_null(dns_route(f->d, "nomx.test", 25, result_cb, &r[2]));
        assert_non_null(dns_host(f->d, "mx2.example.test", 25, result_cb, &r[3]));
        assert_non_null(dns_host(f->d, "192.0.2.1", 25, result_cb, &r[4]));
        assert_non_null(dns_route(f->d, "nosuch.test", 25, result_cb, &r[5]));
        for (int i = 0; i < round; i++)  /* stop at different stages */
            event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        if (round == 3)
            usleep(50 * 1000), event_base_loop(f->base, EVLOOP_NONBLOCK);
        int before = 0;
        for (int i = 0; i < 6; i++)
            before += r[i].called;
        dns_free(f->d);
        f->d = NULL;
        run_for(f, NULL, 0, 200);
        int after = 0;
        for (int i = 0; i < 6; i++)
            after += r[i].called;
        assert_int_equal(before, after);
        event_base_free(f->base);
        free(f);
        memset(r, 0, sizeof r);
    }
}

/* A callback may free the whole resolver. */
struct free_ctx {
    struct fx *f;
    struct result r;
};

static void free_from_cb(void *arg, enum dns_status st, const struct nexthop *hops, size_t n,
                         const char *why)
{
    struct free_ctx *c = arg;
    result_cb(&c->r, st, hops, n, why);
    dns_free(c->f->d);
    c->f->d = NULL;
}

static void test_free_from_callback(void **state)
{
    (void)state;
    NEED_DNSMASQ();
    struct fx *f = fx_new("unrelated.test", NULL, NULL);
    struct free_ctx c = { .f = f };
    struct result other;
    memset(&other, 0, sizeof other);
    assert_non_null(dns_host(f->d, "192.0.2.1", 25, free_from_cb, &c));
    assert_non_null(dns_route(f->d, "big.test", 25, result_cb, &other));
    struct result *rs[] = { &c.r };
    run_for(f, rs, 1, 5000);
    assert_int_equal(c.r.called, 1);
    assert_null(f->d);
    run_for(f, NULL, 0, 300);
    assert_int_equal(other.called, 0);
    event_base_free(f->base);
    free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mx_sorted),
        cmocka_unit_test(test_backup_by_hostname_address),
        cmocka_unit_test(test_only_self),
        cmocka_unit_test(test_self_by_interface_address),
        cmocka_unit_test(test_self_by_listen_address),
        cmocka_unit_test(test_equal_preference_random),
        cmocka_unit_test(test_implicit_mx),
        cmocka_unit_test(test_nxdomain),
        cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_unresolvable_mx_hosts),
        cmocka_unit_test(test_many_mx_over_tcp),
        cmocka_unit_test(test_dead_resolver),
        cmocka_unit_test(test_servfail),
        cmocka_unit_test(test_host_numeric),
        cmocka_unit_test(test_host_names),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_free_in_flight),
        cmocka_unit_test(test_free_from_callback),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
