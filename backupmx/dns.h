/* Next hops for a domain: RFC 5321 5.1 MX resolution inside the event loop
 * (c-ares), with the backup-MX rule: find our own preference by ADDRESS
 * (any local interface address, or an address of `hostname`) and drop every
 * MX at that preference or worse; randomise equal preferences; fall back to
 * the domain's A/AAAA records when it has no MX. */
#ifndef BMX_DNS_H
#define BMX_DNS_H

#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

struct event_base;
struct dns;
struct dns_req;

#define DNS_MAX_HOPS 16          /* at most this many hops per answer */

struct nexthop {
    char host[256];              /* MX (or domain) name, for logs and TLS */
    int pref;                    /* MX preference; -1 for implicit MX,
                                    0 for dns_host() */
    struct sockaddr_storage addr;/* with the port already set */
    socklen_t addrlen;
};

enum dns_status {
    DNS_OK = 0,                  /* hops[0..n) in the order to try */
    DNS_TEMPFAIL,                /* SERVFAIL, timeout, no server: retry later */
    DNS_NOTFOUND,                /* NXDOMAIN or no MX/A/AAAA: permanent */
    DNS_SELF,                    /* we are the best MX left: a loop, keep queued */
};

/* HOPS is only valid during the call. WHY explains non-OK statuses ("" with
 * DNS_OK; never NULL). The request is freed when the callback returns: do
 * not dns_cancel() it from there (other requests, dns_route() and even
 * dns_free() are fine). */
typedef void (*dns_route_cb)(void *arg, enum dns_status st,
                             const struct nexthop *hops, size_t n, const char *why);

/* Uses cfg->resolver when set (else /etc/resolv.conf), cfg->hostname and
 * the machine's interface addresses for self-detection (also cfg->listen:
 * an MX address:port we listen on is us). Copies what it needs from CFG.
 * NULL on failure (logged). */
struct dns *dns_new(struct event_base *base, const struct bmx_config *cfg);
/* Cancels every request (no callbacks) and closes the resolver. */
void dns_free(struct dns *d);

/* Resolves DOMAIN's next hops, each with port PORT. CB is always called
 * later from the loop, exactly once, unless cancelled. NULL on ENOMEM. */
struct dns_req *dns_route(struct dns *d, const char *domain, int port,
                          dns_route_cb cb, void *arg);

/* Resolves a fixed "host[:port]" / "[v6]:port" / "1.2.3.4" entry (port
 * default DEFPORT) to addresses (A/AAAA for names; no MX, no self rule).
 * Names are looked up in /etc/hosts first, then in the DNS with the search
 * list; numeric entries need no lookup but are still delivered from the loop. */
struct dns_req *dns_host(struct dns *d, const char *hostport, int defport,
                         dns_route_cb cb, void *arg);

/* Forgets R: its callback will not be called. NULL is ignored; R must not
 * have been delivered already. */
void dns_cancel(struct dns_req *r);

#endif
