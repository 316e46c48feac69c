/* Which addresses are this host (see dns_self.h), and small IP helpers. */
#include "dns_self.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

struct listen_addr {
    struct ipaddr ip;
    int port;
};

struct dns_self {
    struct ipaddr *ifs;          /* interface addresses */
    size_t nifs;
    bool ifs_valid;
    time_t ifs_time;             /* CLOCK_MONOTONIC seconds of the last read */
    struct ipaddr *named;        /* addresses of the configured hostname */
    size_t nnamed;
    struct listen_addr *listen;  /* specific (not wildcard) listen addresses */
    size_t nlisten;
};

/* ---- addresses ---------------------------------------------------------- */

bool ipaddr_from_sockaddr(struct ipaddr *ip, const struct sockaddr *sa)
{
    memset(ip, 0, sizeof *ip);
    if (sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
        ip->family = AF_INET;
        ip->u.v4 = sin->sin_addr;
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            ip->family = AF_INET;
            memcpy(&ip->u.v4, &sin6->sin6_addr.s6_addr[12], 4);
        } else {
            ip->family = AF_INET6;
            ip->u.v6 = sin6->sin6_addr;
        }
        return true;
    }
    return false;
}

bool ipaddr_parse(struct ipaddr *ip, const char *s)
{
    memset(ip, 0, sizeof *ip);
    if (inet_pton(AF_INET, s, &ip->u.v4) == 1) {
        ip->family = AF_INET;
        return true;
    }
    struct in6_addr a6;
    if (inet_pton(AF_INET6, s, &a6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&a6)) {
            ip->family = AF_INET;
            memcpy(&ip->u.v4, &a6.s6_addr[12], 4);
        } else {
            ip->family = AF_INET6;
            ip->u.v6 = a6;
        }
        return true;
    }
    return false;
}

bool ipaddr_eq(const struct ipaddr *a, const struct ipaddr *b)
{
    if (a->family != b->family)
        return false;
    if (a->family == AF_INET)
        return a->u.v4.s_addr == b->u.v4.s_addr;
    return memcmp(&a->u.v6, &b->u.v6, sizeof a->u.v6) == 0;
}

socklen_t ipaddr_to_sockaddr(const struct ipaddr *ip, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (ip->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)(void *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        sin->sin_addr = ip->u.v4;
        return sizeof *sin;
    }
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    sin6->sin6_addr = ip->u.v6;
    return sizeof *sin6;
}

const char *ipaddr_str(const struct ipaddr *ip, char *buf, size_t len)
{
    if (inet_ntop(ip->family, &ip->u, buf, (socklen_t)len) == NULL)
        snprintf(buf, len, "?");
    return buf;
}

static bool parse_port(const char *s, int *port)
{
    if (*s == '\0' || strlen(s) > 5 || strspn(s, "0123456789") != strlen(s))
        return false;
    int v = atoi(s);
    if (v < 1 || v > 65535)
        return false;
    *port = v;
    return true;
}

bool hostport_split(const char *s, char host[256], int *port)
{
    const char *h, *end, *p = NULL;
    *port = 0;
    if (s[0] == '[') {
        h = s + 1;
        end = strchr(h, ']');
        if (end == NULL || (end[1] != '\0' && end[1] != ':'))
            return false;
        if (end[1] == ':')
            p = end + 2;
    } else {
        h = s;
        const char *colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            end = s + strlen(s);     /* a bare IPv6 address: no port */
        } else {
            end = colon ? colon : s + strlen(s);
            if (colon)
                p = colon + 1;
        }
    }
    size_t n = (size_t)(end - h);
    if (n == 0 || n > 255)
        return false;
    memcpy(host, h, n);
    host[n] = '\0';
    return p == NULL || parse_port(p, port);
}

/* ---- the self set ----------------------------------------------------- */

static time_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

struct dns_self *dns_self_new(const struct strlist *listen)
{
    struct dns_self *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    size_t n = listen ? listen->n : 0;
    if (n > 0) {
        s->listen = calloc(n, sizeof *s->listen);
        if (s->listen == NULL) {
            free(s);
            return NULL;
        }
    }
    for (size_t i = 0; i < n; i++) {
        char host[256];
        int port;
        struct ipaddr ip;
        if (!hostport_split(listen->v[i], host, &port) || port == 0 || !ipaddr_parse(&ip, host))
            continue;
        /* Wildcards are covered by the interface addresses. */
        static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
        if ((ip.family == AF_INET && ip.u.v4.s_addr == htonl(INADDR_ANY)) ||
            (ip.family == AF_INET6 && memcmp(&ip.u.v6, &any6, sizeof any6) == 0))
            continue;
        s->listen[s->nlisten].ip = ip;
        s->listen[s->nlisten].port = port;
        s->nlisten++;
    }
    dns_self_refresh(s, true);
    return s;
}

void dns_self_free(struct dns_self *s)
{
    if (s == NULL)
        return;
    free(s->ifs);
    free(s->named);
    free(s->listen);
    free(s);
}

void dns_self_refresh(struct dns_self *s, bool force)
{
    time_t now = mono_now();
    if (!force && s->ifs_valid && now - s->ifs_time < DNS_SELF_REFRESH)
        return;
    struct ifaddrs *list;
    if (getifaddrs(&list) != 0) {
        log_warn("cannot list the local interface addresses: %s", strerror(errno));
        s->ifs_time = now;       /* keep the old list, try again later */
        return;
    }
    size_t n = 0;
    for (struct ifaddrs *i = list; i != NULL; i = i->ifa_next)
        n++;
    struct ipaddr *v = calloc(n ? n : 1, sizeof *v);
    if (v == NULL) {
        freeifaddrs(list);
        return;
    }
    size_t k = 0;
    for (struct ifaddrs *i = list; i != NULL; i = i->ifa_next) {
        struct ipaddr ip;
        if (!ipaddr_from_sockaddr(&ip, i->ifa_addr))
            continue;
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++)
            dup = ipaddr_eq(&v[j], &ip);
        if (!dup)
            v[k++] = ip;
    }
    freeifaddrs(list);
    free(s->ifs);
    s->ifs = v;
    s->nifs = k;
    s->ifs_valid = true;
    s->ifs_time = now;
}

bool dns_self_set_named(struct dns_self *s, const struct ipaddr *a, size_t n)
{
    struct ipaddr *v = NULL;
    if (n > 0) {
        v = malloc(n * sizeof *v);
        if (v == NULL)
            return false;
        memcpy(v, a, n * sizeof *v);
    }
    free(s->named);
    s->named = v;
    s->nnamed = n;
    return true;
}

bool dns_self_is_me(const struct dns_self *s, const struct ipaddr *ip, int port,
                    const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
    if ((ip->family == AF_INET && ip->u.v4.s_addr == htonl(INADDR_ANY)) ||
        (ip->family == AF_INET6 && memcmp(&ip->u.v6, &any6, sizeof any6) == 0)) {
        *why = "the unspecified address";
        return true;
    }
    for (size_t i = 0; i < s->nifs; i++)
        if (ipaddr_eq(&s->ifs[i], ip)) {
            *why = "a local interface address";
            return true;
        }
    for (size_t i = 0; i < s->nnamed; i++)
        if (ipaddr_eq(&s->named[i], ip)) {
            *why = "an address of my hostname";
            return true;
        }
    for (size_t i = 0; i < s->nlisten; i++)
        if (s->listen[i].port == port && ipaddr_eq(&s->listen[i].ip, ip)) {
            *why = "my listen address";
            return true;
        }
    return false;
}
