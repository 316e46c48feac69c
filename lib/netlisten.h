/* Binding "addr:port" / "[v6]:port" listeners for libevent. */
#ifndef BMX_NETLISTEN_H
#define BMX_NETLISTEN_H

#include <stdbool.h>
#include <sys/socket.h>
#include <event2/listener.h>

/* Binds ADDR (before privileges are dropped) and returns a listener that
 * calls CB. IPv6 sockets are v6-only: "[::]:25" must not also take the
 * IPv4 port, which is listed separately. Logs and returns NULL on failure. */
struct evconnlistener *net_listen(struct event_base *base, const char *addr,
                                  evconnlistener_cb cb, void *arg);

/* The textual address of SA (no port) into IP (INET6_ADDRSTRLEN bytes). */
void net_ntop(const struct sockaddr *sa, char *ip, size_t len);

/* ADDR ("addr:port") names a loopback address (127/8 or ::1). */
bool net_is_loopback(const char *addr);

#endif
