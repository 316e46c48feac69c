/* Private to dns.c: IP address helpers and the answer to "is this address
 * me?" for the backup-MX rule.
 *
 * An address is this host when it is
 *   - an address of a local interface, exactly (getifaddrs(3), reread when
 *     older than DNS_SELF_REFRESH seconds; note that 127.0.0.1/8 on lo is the
 *     one address 127.0.0.1, so 127.0.0.2 is NOT me unless an interface has it),
 *   - an address that the configured hostname resolves to (dns.c looks it up
 *     and hands the result over with dns_self_set_named()),
 *   - one of our own listen addresses with the same port, or
 *   - 0.0.0.0 or ::, which connect(2) sends to this host.
 * IPv4-mapped IPv6 addresses count as the IPv4 address. */
#ifndef BMX_DNS_SELF_H
#define BMX_DNS_SELF_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

#define DNS_SELF_REFRESH 60

struct ipaddr {
    int family;                  /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } u;
};

/* False for families other than IPv4 and IPv6. */
bool ipaddr_from_sockaddr(struct ipaddr *ip, const struct sockaddr *sa);
/* A numeric IPv4 or IPv6 address without brackets. */
bool ipaddr_parse(struct ipaddr *ip, const char *s);
bool ipaddr_eq(const struct ipaddr *a, const struct ipaddr *b);
/* Returns the length of the sockaddr written to SS. */
socklen_t ipaddr_to_sockaddr(const struct ipaddr *ip, int port, struct sockaddr_storage *ss);
/* BUF must have room for INET6_ADDRSTRLEN bytes. */
const char *ipaddr_str(const struct ipaddr *ip, char *buf, size_t len);

/* Splits "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address.
 * HOST gets the name or address without brackets, *PORT the port or 0 when
 * none was given. False when S is malformed (bad brackets or port). */
bool hostport_split(const char *s, char host[256], int *port);

struct dns_self;

/* LISTEN: the daemon's "addr:port" entries. NULL on ENOMEM. */
struct dns_self *dns_self_new(const struct strlist *listen);
void dns_self_free(struct dns_self *s);

/* Rereads the interface addresses when FORCE or when the list is older
 * than DNS_SELF_REFRESH seconds. */
void dns_self_refresh(struct dns_self *s, bool force);

/* Replaces the addresses of the configured hostname. False on ENOMEM (the
 * old list is kept). */
bool dns_self_set_named(struct dns_self *s, const struct ipaddr *a, size_t n);

/* Whether IP (connected to on PORT) is this host; *WHY (may be NULL) says
 * which rule matched. */
bool dns_self_is_me(const struct dns_self *s, const struct ipaddr *ip, int port,
                    const char **why);

#endif
